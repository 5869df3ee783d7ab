/* batch.h — the row ring of a gateway shard: decoded packets encoded as COPY BINARY tuples
 * straight into the filling batch, sealed at batch_rows or batch_ms, committed one transaction
 * per batch together with the device_state rows of its devices, and acknowledged after COMMIT.
 *
 * struct batches is this module's; the shard's thread only. The ring is bounded (cfg->batches,
 * 2..BATCHES_MAX): when every batch is sealed or in flight, batch_take says so and the shard
 * pauses its connections (TCP backpressure) until one commits. */
#ifndef AVLGATE_GATEWAY_BATCH_H
#define AVLGATE_GATEWAY_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/dedup.h"
#include "gateway/pgsink.h"
#include "gateway/ratelimit.h"
#include "gateway/shard_state.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dev;

enum {
    BATCHES_MAX = 16,
    DEFERRALS_MAX = 32,           /* devices remembered as deferred, per shard */
    DEFER_BACKOFF_MAX_MS = 30000, /* the longest a deferred device is refused */
    SPLIT_TIMEOUTS_MAX = 3,       /* split transactions in a row that time out: the rest of the
                                     batch is deferred untried (the database itself is stalled) */
    ROW_BYTES_PLANNED =
        768, /* typical row (arrays: ~670 B with 25 IO elements); sizes the COPY buffer */
    STATE_PARAMS = 9,
    /* The state statement's parameters in binary format (batch.c build_state_params): per
     * device one element of each array, imei, last_ts, received (int8, or NULL), lon, lat (int4,
     * or NULL), its dedup (bytea, 8 bytes per fingerprint) and its owner token (int8); per batch
     * the seven array headers and the shard (int4). */
    DEDUP_PARAM_BYTES = PGSINK_ARRAY_ELEM_BYTES + 8 * DEDUP_FP_MAX,
    DEV_PARAM_BYTES = 4 * PGSINK_ARRAY_INT8_BYTES + 2 * PGSINK_ARRAY_INT4_BYTES + DEDUP_PARAM_BYTES,
    STATE_FIXED_BYTES = 7 * PGSINK_ARRAY_HEADER_BYTES + 4,
};

_Static_assert((int)PGSINK_ARRAY_NULL_BYTES <= (int)PGSINK_ARRAY_INT4_BYTES,
               "NULL fits in an int4");
_Static_assert((int)STATE_PARAMS <= (int)PGSINK_STATE_PARAMS_MAX,
               "the sink takes the state parameters");

/* The state statement's error when a device of the batch is owned by another token now
 * (schema 007: it moved to another connection, most likely another instance). */
#define SQLSTATE_DEVICE_MOVED "23AV0"

enum batch_state { BATCH_FREE = 0, BATCH_FILLING, BATCH_SEALED, BATCH_INFLIGHT };

/* A packet taken into a batch: what its ACK needs, and where its rows and fingerprints are. */
struct pkt_ref {
    uint32_t slot, gen, records;
    uint32_t copy_off, copy_len; /* its tuples in the batch's COPY buffer */
    uint32_t fp_off, fp_len;     /* fingerprints of its stored records in the batch's fps */
    uint32_t dev;                /* index into the batch's devs */
    uint64_t taken_ns;           /* engine time it was taken (ACK latency) */
    bool rejected;               /* settled in split mode: committed alone, or refused */
    bool refused;                /* the database refused its rows (never stored) */
    bool udp;                    /* came as a datagram: its ACK is the batch's replies[i] */
};

/* Where and how a datagram's packet is acknowledged (the ACK goes to the address the datagram
 * came from, whatever address the device uses later). */
struct udp_reply {
    struct sockaddr_in6 to; /* or a sockaddr_in */
    socklen_t to_len;
    uint16_t packet_id;
    uint8_t avl_packet_id;
};

/* A device of a batch: its device_state row as of its last packet in the batch. */
struct bdev {
    uint64_t imei;
    int64_t last_ts_ms;  /* newest stored record of the batch, or -1 */
    int64_t received_ms; /* when its newest packet arrived */
    int32_t lon_e7, lat_e7;
    /* The owner token its rows are written under (schema 007): the device's when its first
     * packet came into the batch. A packet of the device under another token (it was taken over
     * since) goes to a later batch. */
    int64_t owner;
    struct dedup dedup; /* the device's window after its last packet in this batch */
};

struct batch {
    enum batch_state state;
    uint32_t seq;
    uint64_t opened_ns;
    uint64_t sealed_ns;    /* engine time it was sealed */
    uint64_t submitted_ns; /* engine time of its (last) submit: COPY duration */
    uint8_t *copy;         /* header, tuples; the trailer is appended at seal */
    size_t copy_len, copy_cap;
    uint32_t rows;
    struct pkt_ref *pkts;
    uint32_t pkts_len, pkts_cap;
    struct udp_reply *replies; /* pkts_cap: replies[i] is pkts[i]'s when pkts[i].udp */
    uint64_t *fps;             /* fingerprints of the stored records, packet after packet */
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
    /* Split mode after a data error or a timeout: one transaction per packet, from split_next
     * on; split_timeouts counts the packets in a row whose transaction timed out. */
    bool split;
    uint32_t split_next;
    uint32_t split_timeouts;
};

/* A device whose rows could not be written in time (its device_state row locked elsewhere): its
 * packets are refused until until_ms, then tried again; each new timeout doubles backoff_ms. */
struct deferral {
    uint64_t imei;
    uint64_t until_ms; /* shard_now_ms */
    uint32_t backoff_ms;
};

struct batches {
    struct batch batches[BATCHES_MAX];
    uint32_t nbatches;
    uint32_t fill;   /* index of the batch being filled */
    uint32_t oldest; /* index of the oldest batch not free */
    uint32_t next_seq;
    struct ratelimit log_rejected;  /* "packet rejected by the database" */
    struct ratelimit log_timed_out; /* "batch timed out; retrying it split" */
    struct ratelimit log_deferred;  /* "packet deferred: its rows could not be written in time" */
    /* Devices deferred: kept until a packet of theirs commits (or the slot is needed). */
    struct deferral deferred[DEFERRALS_MAX];
    uint32_t deferred_len;
    /* Split mode: the one packet's COPY stream and state parameters. */
    uint8_t header[COPYENC_HEADER_BYTES];
    uint8_t trailer[COPYENC_TRAILER_BYTES];
    uint8_t split_params[DEV_PARAM_BYTES + STATE_FIXED_BYTES];
    struct bdev split_dev;
    uint32_t last_stored; /* records of the packet batch_take took last not already stored */
};

int batch_setup(struct shard *s, char *err, size_t cap);
void batch_teardown(struct shard *s);

/* Takes one decoded packet of the device on (slot, gen) into the filling batch: its records not
 * already in the device's window become tuples (an angle or speed smallint cannot hold stored
 * NULL, counted), the window grows, and the packet waits for its ACK (d->unacked). reply: NULL
 * for a packet of the TCP connection, else the datagram's (copied). Returns 1 when taken, 0
 * when the ring is full (the caller pauses the connection), or -EAGAIN when the device is
 * deferred (counted; nothing was taken: the caller closes the connection, or drops the
 * datagram, and the device re-sends later). */
int batch_take(struct shard *s, uint32_t slot, uint32_t gen, struct dev *d,
               const struct avl_packet *pkt, const struct avl_record *recs,
               const struct udp_reply *reply);

/* Seals the filling batch once batch_ms is up and nothing is ahead of it on the data link (or
 * when draining), and submits the oldest sealed one when the sink is free. Returns the engine
 * ns at which the filling batch is due, or 0 (nothing to fill, or due and waiting for the
 * link, whose next outcome runs the tick again). */
uint64_t batch_tick(struct shard *s, uint64_t now_ns);

/* The sink's answer for a transaction batch_tick submitted (cookie: the batch). */
void batch_on_txn_done(struct shard *s, void *cookie, const struct pgsink_txn_result *res);

/* The newest snapshot of imei's window held by an uncommitted batch under owner token `owner`
 * (a batch under another token will not commit: schema 007), or NULL. */
const struct dedup *batch_pending_dedup(const struct shard *s, uint64_t imei, uint64_t owner);
/* The owner token the newest uncommitted batch holding imei carries for it; 0 when none holds
 * it. */
uint64_t batch_pending_owner(const struct shard *s, uint64_t imei);

/* Whether packets are held (filling, sealed or in flight): the drain waits for them. */
bool batch_holding(const struct shard *s);
/* Batches holding packets, for the ring_busy gauge. */
uint32_t batch_busy(const struct shard *s);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_BATCH_H */
