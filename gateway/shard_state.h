/* shard_state.h — what the modules of one gateway shard share: struct shard, the context every
 * module's functions take, and a few clocks. Internal to the gateway shard; the shard's thread
 * only (nothing here is thread-safe).
 *
 * A shard is one engine (shard/engine.h) and these modules, each in its own file and each the
 * only writer of its own state:
 *
 *   shard.c     the wiring: the engine's ops table (bytes -> frames -> the modules), the sink's
 *               callbacks and polls, the tick, the drain, partition maintenance, start-up
 *   session.c   the device on each connection: handshake, owner and handoff, replacement,
 *               state loads, the allow-list walk, idle windows released
 *   batch.c     the row ring: packets into COPY batches, submit, the outcomes, ACKs
 *   dedup.c     duplicate-detection windows (no shard state of its own: the pool is session's)
 *   delivery.c  outbound commands: the current command of each device, written, answered,
 *               recorded; wake-ups and the sweep
 *   registry.c  the Redis registry of connected devices, on the shard's registry link (which
 *               also carries delivery's replies and XACKs)
 *   intake.c    shard 0: the instance's command stream, read and routed to the owner shards
 *   udp.c       datagrams: decoded, routed to the owner shard, taken or held until they can be
 *   proxy.c     the PROXY protocol header before the handshake, the client's real address
 *
 * Each module's state is behind its pointer below (created by its *_setup, freed by its
 * *_teardown) and its header says what it holds. The fields of struct shard itself are set up
 * by shard.c and written as noted. */
#ifndef AVLGATE_GATEWAY_SHARD_STATE_H
#define AVLGATE_GATEWAY_SHARD_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "codec/avl.h"
#include "gateway/shared.h"
#include "gateway/linkpoll.h"
#include "gateway/pgsink.h"
#include "shard/engine.h"
#include "shard/stat.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sessions;
struct batches;
struct delivery;
struct registry;
struct intake;
struct metrics;
struct udp;
struct proxy;

struct shard {
    /* Set by shard.c before the loop, read-only after. */
    struct ingest_shared *sh;
    const struct ingest_config *cfg;
    unsigned id;
    struct engine *e;
    struct pgsink *sink;
    struct ingest_stats *st; /* counters: every module adds to its own (stat_add) */

    /* The modules' states. */
    struct sessions *sess;   /* session.c */
    struct batches *ring;    /* batch.c */
    struct delivery *cmds;   /* delivery.c */
    struct registry *reg;    /* registry.c */
    struct intake *intake;   /* intake.c: shard 0 with Redis configured; NULL elsewhere */
    struct metrics *metrics; /* metrics.c: shard 0 with --metrics; NULL elsewhere */
    struct udp *udp;         /* udp.c: with cfg->udp; NULL without */
    struct proxy *proxy;     /* proxy.c: with cfg->proxy_protocol; NULL without */

    /* The connections are paused for room in the ring: set by shard.c (a packet found no room),
     * cleared by batch.c when a batch comes free (it resumes the engine). Read by delivery.c: no
     * command is written meanwhile (a paused connection may hold a packet not yet taken). */
    bool paused;
    /* Written by shard.c only. draining: stopping (no new commands; the ring is flushed);
     * closing: the engine is gone, the sink's and links' callbacks act on nothing. */
    bool draining;
    bool closing;
    uint64_t drain_deadline_ns;
    uint64_t next_partitions_ms;
    struct linkpoll pg_poll[PGSINK_LINKS];
    struct avl_record recs[AVL_RECORDS_MAX]; /* the packet on_data decodes, until taken */
};

static inline uint64_t shard_now_ms(const struct shard *s)
{
    return engine_now_ns(s->e) / 1000000u;
}

static inline uint32_t shard_now_s(const struct shard *s)
{
    return (uint32_t)(engine_now_ns(s->e) / 1000000000u);
}

static inline int64_t wall_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t wall_clock_ms(void)
{
    return wall_clock_us() / 1000;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_SHARD_STATE_H */
