/* commands.h — outbound commands (Codec 12) on a gateway shard, the Redis device registry and
 * the command intake. Runs on the shard's thread, beside gateway/ingest.c, on the same state
 * (gateway/ingest_shard.h). See commands.c for the design.
 *
 * ingest.c calls in at these points of a connection's life: the owner shard took its handshake
 * (cmds_on_handshake), the handshake was accepted (cmds_on_device_open: registry, and the fetch
 * when the state load saw open commands), a packet of the connection was acknowledged
 * (cmds_on_acked), a GPRS frame arrived (cmds_on_frame), the connection closes
 * (cmds_on_close); and for the shard: control-query answers whose cookie is a command one,
 * polls with a Redis tag, mail, the end of a pause, every loop turn (cmds_tick). */
#ifndef AVLGATE_GATEWAY_COMMANDS_H
#define AVLGATE_GATEWAY_COMMANDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

struct shard;
struct engine;

/* Control-query cookies of this module have the top bit set (state loads never do) and are
 * never UINT64_MAX (ingest's maintenance cookie). */
static inline bool cmds_query_cookie(uint64_t cookie)
{
    return (cookie >> 63) != 0 && cookie != UINT64_MAX;
}

/* Poll tags from this one on are the Redis links' (tag & 0xFF). */
enum { CMDS_POLL_TAG_FIRST = 2 };

int cmds_setup(struct shard *s, char *err, size_t cap);
/* Closes the Redis links (their outstanding commands are dropped) and frees the pool. Call
 * after pgsink_destroy (which reports this module's queries as cancelled). */
void cmds_teardown(struct shard *s);

void cmds_on_handshake(struct shard *s, uint32_t slot);
void cmds_on_device_open(struct shard *s, uint32_t slot, bool has_commands);
void cmds_on_acked(struct shard *s, uint32_t slot);
void cmds_on_frame(struct shard *s, uint32_t slot, const uint8_t *frame, size_t len);
void cmds_on_close(struct shard *s, uint32_t slot);
void cmds_on_resume(struct shard *s);
/* Whether an answer or outcome still waits to be recorded (the drain waits for it). */
bool cmds_busy(const struct shard *s);
void cmds_on_query_done(struct shard *s, uint64_t cookie, const PGresult *res, int err);
void cmds_on_poll(struct shard *s, uint64_t tag, int revents);
uint64_t cmds_tick(struct shard *s, uint64_t now_ns); /* the ns it wants to run again, or 0 */

/* engine_ops callbacks (app is the shard). */
void cmds_on_sent(void *app, struct engine *e, uint32_t slot, uint32_t gen, int status);
void cmds_on_mail(void *app, struct engine *e, unsigned from, const void *msg);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_COMMANDS_H */
