/* delivery.h — outbound commands (Codec 12) on a gateway shard: the current command of each of
 * its devices, fetched from PostgreSQL (the queue), written to the device's socket, matched to
 * its answer and its outcome recorded; wake-ups from the instance's stream and the sweep.
 *
 * ARCHITECTURE.md's "Outbound commands" and delivery.c's opening say how. struct delivery is
 * this module's, with a small per-connection state (struct cmd_conn, indexed by engine slot) and
 * a pool of command slots (the command itself: frame, answer, outcome). The shard's thread
 * only. */
#ifndef AVLGATE_GATEWAY_DELIVERY_H
#define AVLGATE_GATEWAY_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "codec/avl.h"
#include "gateway/ratelimit.h"
#include "gateway/shard_state.h"
#include "gateway/tags.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CMD_PAYLOAD_MAX = 1024,               /* longer commands fail (cmd_payload_too_long) */
    CMD_FRAME_MAX = CMD_PAYLOAD_MAX + 32, /* the Codec 12 frame around it */
    CMD_RESPONSE_MAX = 4096,              /* answer bytes kept; the rest is cut (counted) */
    CMD_ENTRIES_MAX = 1024,               /* stream entries awaiting their command's outcome */
    CMD_ENTRY_ID_BYTES = 48,              /* a stream entry id, NUL included */
    CMD_SWEEP_CHUNK = 2048,               /* IMEIs per sweep query */
};

/* Where a connection's fetch of its current command stands. */
enum cmd_fetch {
    FETCH_NONE = 0,  /* none in flight, none owed */
    FETCH_IN_FLIGHT, /* a fetch is in flight */
    FETCH_AGAIN,     /* in flight, and a wake-up came meanwhile: fetch again after it */
    FETCH_OWED,      /* one could not be sent, failed or had to wait: the walk asks again */
};

/* A connection's command state (8 bytes: every connection has one). */
struct cmd_conn {
    uint32_t cmd;  /* its current command, pool index + 1; 0: none */
    uint8_t fetch; /* enum cmd_fetch */
    bool fresh;    /* handshake accepted, no packet acknowledged yet: the first write waits */
    bool grace;    /* the last command ended unanswered, or was written more than once: the
                      next one waits (a late answer must not be taken for it) */
};

enum cmd_state {
    CMD_FREE = 0,
    CMD_READY,     /* fetched, waiting for a moment the connection may take it */
    CMD_WRITING,   /* the engine holds the frame */
    CMD_AWAITING,  /* written, waiting for the answer */
    CMD_RECORD,    /* outcome decided, its UPDATE not sent yet (control link down or full) */
    CMD_RECORDING, /* its UPDATE is in flight */
};

enum cmd_outcome { OUT_NONE = 0, OUT_ANSWERED, OUT_FAILED, OUT_EXPIRED };

/* A command slot: the current command of one connection, or an outcome still being recorded
 * after its connection closed (detached). */
struct cmd {
    uint8_t state;      /* enum cmd_state */
    uint8_t outcome;    /* enum cmd_outcome */
    bool detached;      /* its connection closed: record the outcome (if any), then free */
    bool response_hex;  /* the answer is not valid UTF-8 */
    bool retried;       /* its outcome's UPDATE is being sent again */
    uint8_t writes;     /* writes on this connection */
    uint32_t slot, gen; /* the connection it is for */
    int64_t id;
    uint64_t imei;
    uint32_t attempts;      /* writes, counting those of earlier connections (the row's attempts) */
    uint64_t expires_ns;    /* engine (monotonic) time; UINT64_MAX: never */
    uint64_t sent_ns;       /* engine time of the last write */
    uint64_t not_before_ns; /* no write before this engine time */
    uint32_t frame_len, response_len;
    uint8_t frame[CMD_FRAME_MAX];
    uint8_t response[CMD_RESPONSE_MAX];
};

/* A wake-up: the stream entry `id` says device imei may have command cmd_id. Mail from the intake
 * shard (engine_mail), or a call on shard 0. */
struct cmd_wake {
    uint64_t imei;
    int64_t cmd_id;
    char id[CMD_ENTRY_ID_BYTES];
};
_Static_assert(sizeof(struct cmd_wake) <= ENGINE_MAIL_BYTES, "a wake-up fits in one mail");

/* A stream entry whose command has no outcome yet (XACKed when it has). */
struct cmd_entry {
    int64_t cmd_id;
    uint64_t imei;
    char id[CMD_ENTRY_ID_BYTES];
};

struct delivery {
    struct cmd_conn *conns; /* conns_max, indexed by engine slot */
    /* 2 x conns_max slots: one per connection slot, and as many for outcomes still being
     * recorded after their connection closed (detached; one per IMEI, see on_fetch). Mapped
     * without reserve: only slots in use are resident. */
    struct cmd *pool;
    uint32_t pool_len;
    uint32_t *free_list;
    uint32_t free_len;
    uint32_t hw;        /* slots [0, hw) have been used */
    uint32_t detached;  /* detached slots in use */
    uint32_t pool_full; /* fetch answers dropped for want of a slot (the sweep asks again) */

    struct cmd_entry entries[CMD_ENTRIES_MAX];
    uint32_t entries_len;

    uint64_t next_walk_ms;
    /* The sweep: slots [sweep_cursor, conns_max) still to ask about in this round. */
    uint32_t sweep_cursor;
    uint64_t next_sweep_ms;
    bool sweep_in_flight;
    struct ratelimit log_refused, log_cut; /* repeated warnings */

    char scratch[2 * CMD_RESPONSE_MAX + 1];     /* an answer as text or hex */
    char sweep_imeis[CMD_SWEEP_CHUNK * 18 + 4]; /* "{imei,imei,...}" */
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
};

int delivery_setup(struct shard *s, char *err, size_t cap);
void delivery_teardown(struct shard *s);

/* The owner shard took the device's handshake on slot (its state load is on its way). */
void delivery_on_handshake(struct shard *s, uint32_t slot);
/* Its handshake was accepted; has_commands: the state load saw open commands (fetched now). */
void delivery_on_open(struct shard *s, uint32_t slot, bool has_commands);
/* The connection's last un-ACKed packet was acknowledged: a command may go now. */
void delivery_on_acked(struct shard *s, uint32_t slot);
/* The shard's connections resumed after a pause. */
void delivery_on_resume(struct shard *s);
/* A GPRS frame (codec 12/13/14/15) arrived on slot: a Codec 12 answer is matched. */
void delivery_on_frame(struct shard *s, uint32_t slot, const uint8_t *frame, size_t len);
/* The connection of an owned device closes (before session_on_close). */
void delivery_on_close(struct shard *s, uint32_t slot);
/* engine_ops.on_sent: the frame written from slot's command is the engine's no more. */
void delivery_on_sent(struct shard *s, uint32_t slot, int status);
/* A wake-up, from the mailbox or from the intake on this shard. */
void delivery_wake(struct shard *s, const struct cmd_wake *w);
/* The answer of a control query of kind Q_FETCH, Q_MARK_SENT, Q_RECORD or Q_SWEEP. */
void delivery_on_query(struct shard *s, enum query_kind kind, uint64_t payload,
                       const PGresult *res);
/* Whether an answer or outcome still waits to be recorded (the drain waits for it). */
bool delivery_busy(const struct shard *s);
/* Timeouts, expiry, outcomes to record again, the sweep. The engine ns by which it wants to run
 * again. */
uint64_t delivery_tick(struct shard *s, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_DELIVERY_H */
