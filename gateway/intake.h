/* intake.h — shard 0's reading of the instance's command stream (avlgate:cmd:<instance>): one
 * entry per command the business plane routed here, read with the consumer group REDIS_GROUP
 * (consumer = the instance) on a link of its own (XREADGROUP ... BLOCK needs one), and each
 * entry routed with router_owner() — the function that placed the device's connection — to the
 * owner shard's mailbox as a wake-up (delivery.h struct cmd_wake), or handled here when shard 0
 * owns the device.
 *
 * At every start and reconnect the group is created if missing (from the stream's start, MKSTREAM)
 * and the consumer's own pending entries are read again first, then new ones. An entry it cannot
 * use is XACKed at once; one the owner's mailbox cannot take stays pending (the sweep delivers the
 * command). Redis down: telemetry is untouched; the sweep and the fetch on connect deliver what
 * waits.
 *
 * struct intake is this module's: shard 0 with Redis configured (s->intake NULL elsewhere; every
 * function here is a no-op then). The shard's thread only. */
#ifndef AVLGATE_GATEWAY_INTAKE_H
#define AVLGATE_GATEWAY_INTAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/delivery.h"
#include "gateway/linkpoll.h"
#include "gateway/shard_state.h"

#ifdef __cplusplus
extern "C" {
#endif

struct redislink;

enum {
    INTAKE_RETRY_MS = 1000, /* after an intake error */
    INTAKE_COUNT = 128,     /* entries per XREADGROUP */
    INTAKE_BLOCK_MS = 2000,
};

enum intake_phase { IN_DOWN = 0, IN_GROUP, IN_PENDING, IN_NEW };

struct intake {
    struct redislink *link;
    struct linkpoll poll;
    enum intake_phase phase;
    char from[CMD_ENTRY_ID_BYTES]; /* the pending re-read's position */
    bool reading;                  /* an XREADGROUP is outstanding */
    uint64_t next_start_ms;        /* no start before (after an error) */
};

/* Creates the intake on shard 0 when Redis is configured. */
int intake_setup(struct shard *s, char *err, size_t cap);
void intake_teardown(struct shard *s);

void intake_on_poll(struct shard *s, uint64_t tag, int revents);
void intake_arm(struct shard *s);
/* The link's timers; starts or goes on reading; the gauge. The engine ns by which it wants to run
 * again, or 0. */
uint64_t intake_tick(struct shard *s, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_INTAKE_H */
