/* ingest_shard.h — the state of one gateway shard, shared by the two halves that run on its
 * thread: gateway/ingest.c (sessions, telemetry batches, ACKs) and gateway/commands.c (Codec 12
 * commands, the Redis registry and intake). Internal to the gateway; nothing here is
 * thread-safe, and every function is for the shard's own thread. */
#ifndef AVLGATE_GATEWAY_INGEST_SHARD_H
#define AVLGATE_GATEWAY_INGEST_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <xxhash.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/ingest.h"
#include "gateway/pgsink.h"
#include "gateway/ratelimit.h"
#include "shard/engine.h"
#include "shard/stat.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DEDUP_FP_MAX = 64,
    BATCHES_MAX = 16,
    ROW_BYTES_PLANNED = 512, /* typical row with its jsonb; sizes the COPY buffer */
    STATE_PARAMS = 8,
    RELEASE_EVERY_MS = 5000, /* how often idle devices' windows are looked for */
    /* The state statement's parameters in binary format (build_state_params): per device one
     * element of each array, imei, last_ts, received (int8, or NULL), lon, lat (int4, or
     * NULL) and its dedup (bytea, 8 bytes per fingerprint); per batch the six array headers
     * and the shard (int4). */
    DEDUP_PARAM_BYTES = PGSINK_ARRAY_ELEM_BYTES + 8 * DEDUP_FP_MAX,
    DEV_PARAM_BYTES = 3 * PGSINK_ARRAY_INT8_BYTES + 2 * PGSINK_ARRAY_INT4_BYTES + DEDUP_PARAM_BYTES,
    STATE_FIXED_BYTES = 6 * PGSINK_ARRAY_HEADER_BYTES + 4,
    ALLOW_CHUNK = 2048, /* IMEIs per allow-list query after SIGHUP */
};

_Static_assert((int)PGSINK_ARRAY_NULL_BYTES <= (int)PGSINK_ARRAY_INT4_BYTES,
               "NULL fits in an int4");
_Static_assert(DEDUP_FP_MAX <= UINT8_MAX, "struct dedup counts in uint8_t");
_Static_assert((int)STATE_PARAMS <= (int)PGSINK_STATE_PARAMS_MAX,
               "the sink takes the state parameters");

/* ---------------------------------------------------------------------------------------------
 * Sessions
 * ------------------------------------------------------------------------------------------- */

/* DEV_LOADING: handshake in, state load in flight, not answered yet. DEV_RELOADING: an open
 * device whose window was released while it was quiet sent a packet; the connection is held
 * (ENGINE_HOLD, the bytes kept by the engine) until its state is loaded again. */
enum dev_state { DEV_FREE = 0, DEV_HANDSHAKE, DEV_LOADING, DEV_OPEN, DEV_RELOADING };

struct dedup {
    uint8_t len;  /* fingerprints held, <= DEDUP_FP_MAX */
    uint8_t head; /* index of the oldest */
    uint64_t fp[DEDUP_FP_MAX];
};

/* A connection's session. Small on purpose (an idle connection costs this, its engine slot
 * and its IMEI map cell): the duplicate-detection window lives in the shard's pool and only a
 * device with fingerprints holds one. */
struct dev {
    uint32_t gen;
    uint8_t state;
    bool load_queued : 1;
    bool load_stale : 1; /* a batch of this device committed while its load was in flight */
    bool dormant : 1;  /* open, window released after state_idle_s quiet: reload before a packet */
    uint8_t cmd_flags; /* commands.c's CMDF_* */
    uint32_t win;      /* its window in the shard's pool, index + 1; 0: none (no fingerprints) */
    uint32_t last_packet_s; /* engine seconds of its last packet taken */
    uint64_t imei;
    uint32_t unacked; /* packets taken on this connection and not yet acknowledged */
    uint32_t cmd;     /* its current command in commands.c's pool, index + 1; 0: none */
    uint64_t epoch;   /* registry epoch: wall-clock ms of the accepted handshake */
};
_Static_assert(sizeof(struct dev) == 40, "a connection's session stays small");

static inline bool dev_loading(const struct dev *d)
{
    return d->state == DEV_LOADING || d->state == DEV_RELOADING;
}

/* IMEI -> slot, open addressing with linear probing and backward-shift deletion. Keys are
 * stored as imei + 1 so that 0 marks an empty cell. */
struct imap {
    uint64_t *keys;
    uint32_t *slots;
    uint32_t mask;
};

static inline uint32_t imap_home(const struct imap *m, uint64_t imei)
{
    return (uint32_t)XXH3_64bits(&imei, sizeof imei) & m->mask;
}

static inline int64_t imap_get(const struct imap *m, uint64_t imei)
{
    for (uint32_t i = imap_home(m, imei);; i = (i + 1) & m->mask) {
        if (m->keys[i] == 0)
            return -1;
        if (m->keys[i] == imei + 1)
            return m->slots[i];
    }
}

static inline void imap_put(struct imap *m, uint64_t imei, uint32_t slot)
{
    for (uint32_t i = imap_home(m, imei);; i = (i + 1) & m->mask) {
        if (m->keys[i] == 0 || m->keys[i] == imei + 1) {
            m->keys[i] = imei + 1;
            m->slots[i] = slot;
            return;
        }
    }
}

static inline void imap_del(struct imap *m, uint64_t imei)
{
    uint32_t i = imap_home(m, imei);
    while (m->keys[i] != imei + 1) {
        if (m->keys[i] == 0)
            return;
        i = (i + 1) & m->mask;
    }
    /* Backward shift: pull later members of the probe run into the hole. */
    for (uint32_t j = (i + 1) & m->mask;; j = (j + 1) & m->mask) {
        if (m->keys[j] == 0)
            break;
        uint32_t home = imap_home(m, m->keys[j] - 1);
        bool movable = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->keys[i] = m->keys[j];
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->keys[i] = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Batches and the shard
 * ------------------------------------------------------------------------------------------- */

enum batch_state { BATCH_FREE = 0, BATCH_FILLING, BATCH_SEALED, BATCH_INFLIGHT };

struct pkt_ref {
    uint32_t slot, gen, records;
    uint32_t copy_off, copy_len; /* its tuples in the batch's COPY buffer */
    uint32_t fp_off, fp_len;     /* fingerprints of its stored records in the batch's fps */
    uint32_t dev;                /* index into the batch's devs */
    uint64_t taken_ns;           /* engine time it was taken (ACK latency) */
    bool rejected;               /* settled in split mode: committed alone, or refused */
    bool refused;                /* the database refused its rows (never stored) */
};

struct bdev {
    uint64_t imei;
    int64_t last_ts_ms;  /* newest stored record of the batch, or -1 */
    int64_t received_ms; /* when its newest packet arrived */
    int32_t lon_e7, lat_e7;
    struct dedup dedup; /* the device's state after its last packet in this batch */
};

struct batch {
    enum batch_state state;
    uint32_t seq;
    uint64_t opened_ns;
    uint64_t submitted_ns; /* engine time of its (last) submit: COPY duration */
    uint8_t *copy;         /* header, tuples; the trailer is appended at seal */
    size_t copy_len, copy_cap;
    uint32_t rows;
    struct pkt_ref *pkts;
    uint32_t pkts_len, pkts_cap;
    uint64_t *fps; /* fingerprints of the stored records, packet after packet */
    uint32_t fps_len, fps_cap;
    struct bdev *devs;
    uint32_t devs_len, devs_cap;
    uint32_t *dev_map; /* imei hash -> devs index + 1 */
    uint32_t dev_map_mask;
    uint8_t *params_buf; /* the binary state parameters (build_state_params) */
    size_t params_cap;
    const char *params[STATE_PARAMS];
    int params_len[STATE_PARAMS];
    struct iovec iov[3];
    /* Split mode after a data error: one transaction per packet, from split_next on. */
    bool split;
    uint32_t split_next;
};

struct shard {
    struct ingest_shared *sh;
    const struct ingest_config *cfg;
    unsigned id;
    struct engine *e;
    struct pgsink *sink;
    struct ingest_stats *st;

    struct dev *devs; /* conns_max, indexed by engine slot */
    struct imap owned;

    struct batch batches[BATCHES_MAX];
    uint32_t nbatches;
    uint32_t fill;   /* index of the batch being filled */
    uint32_t oldest; /* index of the oldest batch not free */
    uint32_t next_seq;
    bool paused;

    /* Polls of the sink's two links (tag: link | epoch << 8; commands.c polls its Redis links
     * with tags from PGSINK_LINKS on). */
    bool poll_armed[PGSINK_LINKS];
    uint32_t poll_epoch[PGSINK_LINKS];
    short poll_events[PGSINK_LINKS];

    /* Duplicate-detection windows, one per device that has fingerprints (conns_max of them,
     * mapped without reserve: only windows in use are resident); free ones LIFO. */
    struct dedup *wins;
    uint32_t *wins_free;
    uint32_t wins_free_len;

    /* Devices waiting for their state load to be sent (control link down or full). */
    uint64_t *load_queue; /* slot << 32 | gen */
    uint32_t load_head, load_len;

    bool draining;
    bool closing; /* shard_teardown: the engine is gone, sink callbacks do nothing */
    struct ratelimit log_rejected; /* "packet rejected by the database" */
    /* The allow-list walk after SIGHUP (--devices known): slots [allow_cursor, conns_max) still
     * to check, one query of up to ALLOW_CHUNK IMEIs in flight. */
    unsigned allow_gen;
    uint32_t allow_cursor, allow_checked;
    uint64_t allow_closed;
    bool allow_in_flight;
    char allow_imeis[ALLOW_CHUNK * 18 + 4];
    uint64_t next_partitions_ms;
    uint64_t next_release_ms; /* release_idle_windows */
    uint64_t drain_deadline_ns;

    struct cmds *cmds;       /* gateway/commands.c */
    struct metrics *metrics; /* gateway/metrics.c: shard 0 only, with --metrics */

    struct avl_record recs[AVL_RECORDS_MAX];
    uint8_t header[COPYENC_HEADER_BYTES];
    uint8_t trailer[COPYENC_TRAILER_BYTES];
    uint8_t split_params[DEV_PARAM_BYTES + STATE_FIXED_BYTES];
    struct bdev split_dev;
};

/* The slot of the connection this shard owns for the IMEI in row `row`, column 0, of a query's
 * answer; -1 when none is connected here (any more). */
static inline int64_t owned_slot_of_row(const struct shard *s, const PGresult *res, int row)
{
    return imap_get(&s->owned, strtoull(PQgetvalue(res, row, 0), NULL, 10));
}

static inline uint64_t now_ms(const struct shard *s)
{
    return engine_now_ns(s->e) / 1000000u;
}

static inline uint32_t now_s(const struct shard *s)
{
    return (uint32_t)(engine_now_ns(s->e) / 1000000000u);
}

static inline int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_INGEST_SHARD_H */
