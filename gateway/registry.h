/* registry.h — the Redis side every gateway shard has: the registry of its connected devices and
 * the shard's registry link.
 *
 * The registry: avlgate:dev:{imei} = instance, shard, epoch (the device's owner token, schema
 * 007: from a database sequence, larger for every takeover, so the newest connection's is the
 * largest whatever the instances' clocks say), conn (wall ms of the accepted handshake: tells a
 * shard's connections of one token apart), with a TTL refreshed every third of it by a walk over
 * the shard's devices (at most REGISTRY_IN_FLIGHT_MAX writes awaiting their reply, so the link's
 * other traffic never queues behind a whole round); written by a script that keeps a newer epoch (a
 * device that moved to another instance while its old connection here lingers), and deleted on
 * close only if it still names this connection (instance, epoch and conn). A write that finds a
 * newer epoch closes its connection here: a device that moved is let go within a third of the TTL.
 * A round starts at once when the link comes (back) up: Redis may have restarted empty.
 *
 * The registry link is the shard's one Redis connection for commands that answer at once: it
 * also carries delivery.c's replies (XADD avlgate:replies) and the XACKs of the instance's
 * command stream (registry_xack). Without Redis configured the link is NULL and every send says
 * -ENOTCONN. The names of the instance's Redis data (the stream, its group) live here too.
 *
 * struct registry is this module's; the shard's thread only. */
#ifndef AVLGATE_GATEWAY_REGISTRY_H
#define AVLGATE_GATEWAY_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/linkpoll.h"
#include "gateway/redislink.h"
#include "gateway/ratelimit.h"
#include "gateway/shard_state.h"
#include "gateway/tags.h"

#ifdef __cplusplus
extern "C" {
#endif

#define REDIS_GROUP   "avlgate"         /* the consumer group of every instance's stream */
#define REDIS_REPLIES "avlgate:replies" /* outcomes, for the business plane */

enum {
    REGISTRY_IN_FLIGHT_MAX = 1024, /* registry writes awaiting their reply */
    REDIS_STREAM_BYTES = 128,
};

struct registry {
    struct redislink *link; /* NULL without Redis */
    struct linkpoll poll;
    uint64_t *registered; /* bit per connection slot: written to the registry, delete on close */
    /* The refresh walk: slots [cursor, conns_max) still to write in this round. */
    uint32_t cursor;
    uint32_t in_flight; /* registry writes awaiting their reply */
    uint64_t next_round_ms;
    struct ratelimit log_redis;      /* "redis command failed" */
    struct ratelimit log_moved;      /* "device connected to another instance" */
    char stream[REDIS_STREAM_BYTES]; /* avlgate:cmd:<instance>: this instance's commands */
};

int registry_setup(struct shard *s, char *err, size_t cap);
/* Closes the link (its outstanding commands are dropped). After pgsink_destroy. */
void registry_teardown(struct shard *s);

/* The one log line of a Redis link's event (up, down, unreachable), for the links' owners. */
void registry_log_link(const struct redislink *l, enum redislink_event ev);

/* Whether the registry link is up. */
bool registry_up(const struct shard *s);
/* Sends a command on the registry link (redislink_command's argv and lens); kind names the reply
 * (tags.h). 0, or -ENOTCONN (no link, or down: nothing is queued), -ENOBUFS... */
int registry_send(struct shard *s, int argc, const char *const *argv, const size_t *lens,
                  enum redis_kind kind);
/* XACK of entry id of the instance's command stream. */
void registry_xack(struct shard *s, const char *id);

/* The device on slot was accepted (its epoch is dev.accepted_ms): written. */
void registry_on_open(struct shard *s, uint32_t slot);
/* The device on slot is going: its entry deleted if this connection wrote it. */
void registry_on_close(struct shard *s, uint32_t slot);

/* The link's poll fired (owner POLL_REDIS_REGISTRY); then call registry_arm (and intake_arm). */
void registry_on_poll(struct shard *s, uint64_t tag, int revents);
/* Arms the link's poll for what it wants now. */
void registry_arm(struct shard *s);
/* The link's timers, the refresh walk, the gauges. Returns the engine ns by which it wants to run
 * again, or 0. */
uint64_t registry_tick(struct shard *s, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_REGISTRY_H */
