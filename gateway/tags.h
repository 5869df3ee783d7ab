/* tags.h — every name a gateway shard gives a request that answers later, in one place: the
 * tags of its readiness polls (engine_poll), the cookies of its control queries
 * (pgsink_query) and of its Redis commands (redislink_command).
 *
 * A poll tag is owner (8 bits) | payload << 8, within the engine's ENGINE_KEY_BITS; the owner
 * says which module's link or socket fired, the payload is that module's (a link's socket
 * epoch, an HTTP slot and its generation). A query cookie is kind (8 bits) << 56 | payload
 * (an engine_key, a command slot, or 0). Pure functions; any thread. */
#ifndef AVLGATE_GATEWAY_TAGS_H
#define AVLGATE_GATEWAY_TAGS_H

#include <assert.h>
#include <stdint.h>

#include "gateway/pgsink.h"
#include "shard/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whose poll fired. The PostgreSQL links' owners are their pgsink_link values. */
enum poll_owner {
    POLL_PG_DATA = PGSINK_LINK_DATA,
    POLL_PG_CONTROL = PGSINK_LINK_CONTROL,
    POLL_REDIS_REGISTRY, /* the registry link (gateway/registry.c) */
    POLL_REDIS_INTAKE,   /* the intake link (gateway/intake.c, shard 0) */
    POLL_METRICS,        /* the metrics endpoint's sockets (gateway/metrics.c, shard 0) */
    POLL_OWNERS,
};
_Static_assert(PGSINK_LINKS == 2, "one poll owner per PostgreSQL link");

enum { POLL_PAYLOAD_BITS = ENGINE_KEY_BITS - 8 };

static inline uint64_t poll_tag(enum poll_owner owner, uint64_t payload)
{
    assert(payload < (UINT64_C(1) << POLL_PAYLOAD_BITS));
    return (uint64_t)owner | payload << 8;
}

static inline enum poll_owner poll_tag_owner(uint64_t tag)
{
    return (enum poll_owner)(tag & 0xFF);
}

static inline uint64_t poll_tag_payload(uint64_t tag)
{
    return tag >> 8;
}

/* What a control query was for. */
enum query_kind {
    Q_STATE_LOAD = 1, /* a device's state at its handshake (session.c); payload: engine_key */
    Q_MAINTENANCE,    /* partitions, ending a backend (shard.c); payload 0 */
    Q_ALLOWLIST,      /* a chunk of the allow-list walk (session.c); payload 0 */
    Q_FETCH,          /* a device's current command (delivery.c); payload: engine_key */
    Q_MARK_SENT,      /* a command written (delivery.c); payload 0 */
    Q_RECORD,         /* a command's outcome (delivery.c); payload: its pool index */
    Q_SWEEP,          /* a chunk of the sweep (delivery.c); payload 0 */
};

static inline void *query_cookie(enum query_kind kind, uint64_t payload)
{
    assert(payload <= ENGINE_KEY_MAX);
    return (void *)(uintptr_t)((uint64_t)kind << 56 | payload);
}

static inline enum query_kind query_cookie_kind(const void *cookie)
{
    return (enum query_kind)((uint64_t)(uintptr_t)cookie >> 56);
}

static inline uint64_t query_cookie_payload(const void *cookie)
{
    return (uint64_t)(uintptr_t)cookie & ENGINE_KEY_MAX;
}

_Static_assert(sizeof(void *) == 8, "a cookie carries 64 bits");

/* What a Redis command was for (its reply's cookie). */
enum redis_kind {
    R_REGISTRY = 1, /* a registry delete (registry.c) */
    R_REGISTER,     /* a registry write of the connection in the payload's engine key */
    R_REPLY,        /* an outcome on avlgate:replies (delivery.c) */
    R_BUS,          /* a Directus bus event for a commands row (delivery.c, --directus-bus) */
    R_XACK,         /* a stream entry acknowledged (delivery.c, intake.c) */
    R_GROUP,        /* XGROUP CREATE (intake.c) */
    R_READ,         /* XREADGROUP (intake.c) */
};

/* A Redis command's cookie: its kind, and a payload of at most ENGINE_KEY_MAX (an engine key). */
static inline void *redis_cookie_with(enum redis_kind kind, uint64_t payload)
{
    assert(payload <= ENGINE_KEY_MAX);
    return (void *)(uintptr_t)((uint64_t)kind << 56 | payload);
}

static inline void *redis_cookie(enum redis_kind kind)
{
    return redis_cookie_with(kind, 0);
}

static inline enum redis_kind redis_cookie_kind(const void *cookie)
{
    return (enum redis_kind)((uint64_t)(uintptr_t)cookie >> 56);
}

static inline uint64_t redis_cookie_payload(const void *cookie)
{
    return (uint64_t)(uintptr_t)cookie & ENGINE_KEY_MAX;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_TAGS_H */
