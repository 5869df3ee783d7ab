/* loadgen.c — avlgate-loadgen: simulates a fleet of Teltonika trackers against a gateway, on
 * the shard engine (shard/engine.h), up to 100,000 devices from one process.
 *
 * Threads: the main thread parses options, starts T worker threads, prints one progress line a
 * second, stops the run and writes the summary (and --json, --verify). Each worker owns an
 * engine (its own io_uring, listen == false: it only dials), a contiguous block of devices,
 * their timers (a binary heap), a connect queue with a token bucket, a packet buffer arena and
 * its counters and histograms. Workers share nothing on the hot path; once a second each one
 * adds its interval to a small ring of per-second slots under a mutex, and the main thread
 * reads a slot once every worker has had the chance to add to it. Totals are read after join.
 *
 * A device (struct dev, 48 bytes) walks IDLE -> DIALING -> HANDSHAKE -> READY <-> PACKET
 * (-> DONE with --packets) and back to IDLE when its connection closes (dev_drop / on_close:
 * the one place a connection ends). It holds one packet in flight: the next only after the ACK
 * whose value equals the record count. A packet's bytes are not kept: they are regenerated
 * from (seed, device, packets acknowledged, records acknowledged), so a packet re-sent after a
 * reconnect is byte-identical, as a tracker's flash keeps it. While its bytes are being written
 * they live in a chunk of the worker's arena, sent by reference (engine_send_ref); the chunk
 * goes back when the last byte went (on_sent) or the connection died.
 *
 * Invariants: a device is in the connect queue at most once (DF_QUEUED) and has at most one
 * timer; at most one reference per connection is pending (slotinfo.ref), so a command reply
 * never lands between the pieces of a packet; a chunk belongs to exactly one slot. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "loadgen/hist.h"
#include "loadgen/packetgen.h"
#include "loadgen/verify.h"
#include "shard/engine.h"

/* ---------------------------------------------------------------------------------------------
 * Limits
 * ------------------------------------------------------------------------------------------- */

#define NS_PER_S  UINT64_C(1000000000)
#define NS_PER_MS UINT64_C(1000000)

enum {
    RING_DEVICES_MAX = 18000, /* default: devices per worker ring */
    /* Default connections per source address. One address has ~28k ephemeral ports for one
     * destination, but the kernel's port search at connect gets slow as they fill: measured
     * here, 20k connections from one address cost 4.5 s more kernel CPU than from four,
     * 10k from one 0.5 s more. */
    SRC_DEVICES = 10000,
    SERVER_FRAME_BYTES_MAX = 16384, /* the largest frame accepted from the gateway */
    CHUNKS_MAX = 8192,              /* packet buffers per worker */
    TIMERS_PER_TICK = 4096,         /* timers handled per loop turn, so I/O is never starved */
    RECORD_SEQ_BYTES = 10,          /* the sequence element of a record: id u16 + u64 at most */
    DEVICE_TEMPLATES = 64,          /* packetgen devices (IO id orders) the fleet is made of */
    SLOW_PIECE_BYTES_MAX = 32,      /* a slow device writes 4..32 bytes at a time */
    STATS_RING = 4,                 /* per-second slots between the workers and the main thread */
    FINALIZE_MS = 300,              /* the main thread reads second k at k + 1 s + this */
    REPLY_TEXT_MAX = 4096,
    CMDLOG_TEXT_MAX = 512,
};

_Static_assert(RING_DEVICES_MAX < 20000, "a ring's fixed file table is capped at RLIMIT_NOFILE");
_Static_assert(SERVER_FRAME_BYTES_MAX >= REPLY_TEXT_MAX + 64, "a reply fits a server frame");

/* ---------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------- */

enum pacing { PACE_DRAIN, PACE_RATE, PACE_PERIOD, PACE_IDLE };

struct options {
    const char *target;
    uint32_t devices;
    uint32_t threads; /* 0: enough for RING_DEVICES_MAX per ring */
    uint32_t src_ips; /* UINT32_MAX: automatic */
    const char *src_base;
    uint64_t imei_base;
    uint32_t records;
    uint32_t packet_bytes_max; /* 0: automatic */
    enum pacing pacing;
    double rate;     /* records/s, all devices */
    double period_s; /* per device */
    double duration_s;
    double warmup_s; /* ACKs in the first warmup_s are not in the summary percentiles */
    uint32_t packets;
    double connect_rate;
    double ramp_s;
    uint32_t connect_inflight;
    double connect_timeout_s;
    double ack_timeout_s;
    uint32_t reconnect_ms;
    double fragment;
    bool newest_first;
    double storm_every_s, storm_fraction;
    double slow;
    double malformed;
    uint64_t seed;
    bool verify;
    const char *pg;
    const char *command_reply;
    const char *command_log;
    bool progress;
    const char *json;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: avlgate-loadgen [options]\n"
            "  --connect HOST:PORT        gateway (default 127.0.0.1:5027)\n"
            "  --devices N                simulated trackers (default 100)\n"
            "  --threads T                engines, one ring each (default: <= 18000 devices per "
            "ring)\n"
            "  --src-ips K                bind to K consecutive addresses from --src-base\n"
            "                             (default for a 127.x target: one per 10000 devices)\n"
            "  --src-base ADDR            first source address (default 127.0.0.1)\n"
            "  --imei-base B              IMEI of device 0 (default 350000000000000)\n"
            "  --records K                records per packet (default 10)\n"
            "  --packet-bytes-max B       largest packet; fewer records when they do not fit\n"
            "                             (default max(1024, 400 x K))\n"
            "pacing (default --drain):\n"
            "  --drain                    each packet as soon as the last one was acknowledged\n"
            "  --rate R                   R records/s in all, each device on its own schedule\n"
            "  --period-s P               one packet per device every P s\n"
            "  --idle                     connect, handshake, then stay silent (memory per\n"
            "                             connection: bench/connections)\n"
            "  --duration-s D             stop after D s (default 30; 0: no limit)\n"
            "  --warmup-s W               leave the ACKs of the first W s out of the summary's\n"
            "                             latency percentiles (the timeline keeps them)\n"
            "  --packets M                stop when every device has M packets acknowledged\n"
            "connections:\n"
            "  --connect-rate R           new connections per second (default unlimited)\n"
            "  --ramp-s S                 spread the first connections over S s\n"
            "  --connect-inflight N       dials and handshakes in progress at most (4096)\n"
            "  --connect-timeout-s S      a dial fails after S s (default 10)\n"
            "  --ack-timeout-s S          reconnect when an ACK or the handshake's answer takes\n"
            "                             longer (default 60)\n"
            "  --reconnect-ms MS          backoff after a failure, doubling to 30 s (1000)\n"
            "faults:\n"
            "  --fragment P               write a packet in 2..4 pieces with probability P\n"
            "  --slow F                   fraction F of devices write a few bytes at a time, ~1 s\n"
            "  --malformed P              corrupt the CRC of a packet's first attempt with "
            "probability P\n"
            "  --reconnect-storm E:F      every E s a fraction F of devices drop and reconnect\n"
            "  --newest-first             records in descending time order\n"
            "  --seed S                   packets and choices (default 1)\n"
            "commands (Codec 12):\n"
            "  --command-reply TEXT       the answer to every command (default OK)\n"
            "  --command-log FILE         append 'wall_ns imei text' per command received\n"
            "output:\n"
            "  --progress                 one line a second on stderr (default: if a terminal)\n"
            "  --json FILE                the summary and a per-second timeline\n"
            "  --verify --pg CONNINFO     check every acknowledged record is stored exactly "
            "once\n"
            "exit status: 0 the run completed (and verified); 1 nothing connected, verify failed\n"
            "or the gateway acknowledged a malformed packet; 2 usage.\n");
}

/* ---------------------------------------------------------------------------------------------
 * Devices, workers, the run
 * ------------------------------------------------------------------------------------------- */

enum dev_state {
    DEV_IDLE = 0,  /* not connected: a timer (backoff, ramp) or the connect queue */
    DEV_DIALING,   /* engine_connect issued */
    DEV_HANDSHAKE, /* IMEI sent, waiting for 0x01 */
    DEV_READY,     /* accepted, no packet in flight: waits for its schedule */
    DEV_PACKET,    /* a packet in flight: being written, then waiting for its ACK */
    DEV_DONE,      /* --packets reached: stays connected, answers commands */
    DEV_STOPPED,   /* the run ended */
};

enum dev_flag {
    DF_QUEUED = 1 << 0,     /* in the connect queue */
    DF_ATTEMPTED = 1 << 1,  /* the packet in flight went out before: this is a re-send */
    DF_CORRUPT = 1 << 2,    /* this attempt carries a corrupted CRC */
    DF_PIECE_WAIT = 1 << 3, /* the timer writes the next piece */
    DF_SLOW = 1 << 4,       /* this packet is written a few bytes at a time */
    DF_EVER = 1 << 5,       /* has been accepted at least once */
};

/* Why the device's connection is being closed; set before engine_close, read in on_close. */
enum cause {
    CAUSE_NONE = 0, /* the gateway closed it (or a socket error) */
    CAUSE_REJECTED,
    CAUSE_BAD_ACK,
    CAUSE_BAD_FRAME,
    CAUSE_ACK_TIMEOUT, /* no ACK, or no answer to the handshake, within --ack-timeout-s */
    CAUSE_STORM,
    CAUSE_MALFORMED_ACKED,
};

struct dev {
    uint32_t slot, gen;  /* the connection, from on_open until on_close */
    uint32_t pkt_acked;  /* packets acknowledged */
    uint32_t rec_acked;  /* records acknowledged: the first record of the packet in flight */
    uint64_t t_ns;       /* DIALING, HANDSHAKE: when the dial began; PACKET: when it was written */
    uint32_t timer;      /* heap position + 1; 0: none */
    uint32_t pkt_bytes;  /* the packet in flight (0: none generated) */
    uint32_t write_off;  /* its bytes handed to the engine */
    uint8_t state;       /* enum dev_state */
    uint8_t flags;       /* enum dev_flag */
    uint8_t cause;       /* enum cause */
    uint8_t pkt_records; /* records of the packet in flight */
    uint8_t pieces_left; /* pieces still to write (fragmented); 0 with DF_SLOW */
    uint8_t fails;       /* consecutive failed connections, for the backoff */
    uint8_t replies;     /* command replies still to write */
};

_Static_assert(sizeof(struct dev) <= 64, "per-device state stays small");

enum ref_kind { REF_NONE = 0, REF_PACKET, REF_REPLY };

/* Per engine slot: whose connection it is, the chunk being written on it, the pending
 * reference. Outlives the connection until on_sent gave the reference back. */
struct slotinfo {
    uint32_t dev;
    uint32_t chunk; /* index + 1; 0: none */
    uint8_t ref;    /* enum ref_kind */
};

struct timer {
    uint64_t at_ns;
    uint32_t dev;
};

enum conn_err { CE_REFUSED, CE_TIMEOUT, CE_ADDRNOTAVAIL, CE_OTHER, CE_KINDS };

struct counters {
    uint64_t dials, handshakes, rejected, connect_failed[CE_KINDS];
    uint64_t packets_sent, resends, packets_acked, records_acked;
    uint64_t bad_ack, bad_frame, unexpected_close, ack_timeout, handshake_timeout;
    uint64_t malformed_sent, malformed_closed, malformed_acked;
    uint64_t storm_drops, commands, replies, gprs_other, arena_waits, dial_slot_waits;
};

static void counters_add(struct counters *sum, const struct counters *c)
{
    sum->dials += c->dials;
    sum->handshakes += c->handshakes;
    sum->rejected += c->rejected;
    for (int k = 0; k < CE_KINDS; k++)
        sum->connect_failed[k] += c->connect_failed[k];
    sum->packets_sent += c->packets_sent;
    sum->resends += c->resends;
    sum->packets_acked += c->packets_acked;
    sum->records_acked += c->records_acked;
    sum->bad_ack += c->bad_ack;
    sum->bad_frame += c->bad_frame;
    sum->unexpected_close += c->unexpected_close;
    sum->ack_timeout += c->ack_timeout;
    sum->handshake_timeout += c->handshake_timeout;
    sum->malformed_sent += c->malformed_sent;
    sum->malformed_closed += c->malformed_closed;
    sum->malformed_acked += c->malformed_acked;
    sum->storm_drops += c->storm_drops;
    sum->commands += c->commands;
    sum->replies += c->replies;
    sum->gprs_other += c->gprs_other;
    sum->arena_waits += c->arena_waits;
    sum->dial_slot_waits += c->dial_slot_waits;
}

static uint64_t errors_of(const struct counters *c)
{
    uint64_t n = c->rejected + c->bad_ack + c->bad_frame + c->unexpected_close + c->ack_timeout +
                 c->handshake_timeout + c->malformed_acked;
    for (int k = 0; k < CE_KINDS; k++)
        n += c->connect_failed[k];
    return n;
}

struct worker {
    unsigned id;
    struct engine *e;
    pthread_t thread;
    int rc;
    char err[256];

    uint32_t base, devs_len; /* global index of its first device; its devices */
    struct dev *devs;
    struct timer *heap;
    uint32_t heap_len;
    uint32_t *cq; /* connect queue: a ring of devs_len */
    uint32_t cq_head, cq_len;
    struct slotinfo *slots;
    uint32_t slots_len;
    uint8_t *chunks; /* the arena: chunks_len x run.chunk_bytes */
    uint32_t *chunk_free, chunk_free_len, chunks_len;

    uint32_t inflight, inflight_max; /* DIALING + HANDSHAKE */
    double tokens, tokens_per_ns, tokens_max;
    uint64_t tokens_ns;
    uint64_t rnd; /* xorshift state for choices that need not be reproducible */
    uint64_t next_pub_ns, next_storm_ns;

    uint32_t connected; /* READY, PACKET or DONE */
    uint32_t ever;      /* devices accepted at least once */
    uint64_t all_connected_ns;
    struct counters c, c_pub; /* totals; totals at the last publication */
    struct hist ack, ack_sec, connect;

    struct pktgen gen;
    struct pktgen *templates; /* DEVICE_TEMPLATES, the same in every worker */
    struct pktgen_packet *pkt;
    struct avl_io_elem io[PKTGEN_IO_MAX + AVL_RECORDS_MAX];
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
};

/* One second of the timeline as the workers add to it. */
struct sec_slot {
    int64_t sec;
    bool final;
    unsigned publishers;
    uint64_t connected, packets, records, errors;
    struct hist ack;
};

struct sample {
    double t_s;
    uint64_t connected, packets, records, errors;
    double ack_p50_ms, ack_p99_ms;
};

static struct {
    struct options o;
    struct sockaddr_storage dst;
    socklen_t dst_len;
    uint32_t src_ips, src_base; /* host order */
    uint32_t threads;
    uint64_t t0_ns, t0_wall_ms;
    uint64_t warmup_ns; /* o.warmup_s */
    uint64_t nonce;
    uint64_t period_ns; /* 0: drain */
    uint64_t step_ms;   /* between two records of a device */
    uint32_t chunk_bytes, pkt_budget;
    uint64_t ack_timeout_ns, storm_every_ns;
    uint8_t *reply;
    size_t reply_len;
    FILE *cmdlog;
    atomic_bool stop, abort;
    atomic_uint devices_done;
    pthread_barrier_t ready, go;
    pthread_mutex_t mu;
    struct sec_slot ring[STATS_RING];
    struct worker *workers;
} run;

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

static uint64_t rnd_next(struct worker *w)
{
    uint64_t x = w->rnd;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->rnd = x;
}

static uint32_t rnd_below(struct worker *w, uint32_t n)
{
    return (uint32_t)(((rnd_next(w) >> 32) * n) >> 32);
}

/* True with probability p (0..1). */
static bool rnd_chance(struct worker *w, double p)
{
    return p > 0 && (double)(rnd_next(w) >> 11) * 0x1p-53 < p;
}

static uint32_t gidx(const struct worker *w, uint32_t di)
{
    return w->base + di;
}

static bool dev_is_slow(uint32_t g)
{
    return run.o.slow > 0 &&
           (double)(mix64(run.o.seed ^ UINT64_C(0x51077) ^ g) >> 11) * 0x1p-53 < run.o.slow;
}

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---------------------------------------------------------------------------------------------
 * Timers: a binary min-heap of (deadline, device), at most one entry per device
 * ------------------------------------------------------------------------------------------- */

static void heap_put(struct worker *w, uint32_t i, struct timer t)
{
    w->heap[i] = t;
    w->devs[t.dev].timer = i + 1;
}

static uint32_t heap_up(struct worker *w, uint32_t i)
{
    struct timer t = w->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (w->heap[parent].at_ns <= t.at_ns)
            break;
        heap_put(w, i, w->heap[parent]);
        i = parent;
    }
    heap_put(w, i, t);
    return i;
}

static void heap_down(struct worker *w, uint32_t i)
{
    struct timer t = w->heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= w->heap_len)
            break;
        if (child + 1 < w->heap_len && w->heap[child + 1].at_ns < w->heap[child].at_ns)
            child++;
        if (w->heap[child].at_ns >= t.at_ns)
            break;
        heap_put(w, i, w->heap[child]);
        i = child;
    }
    heap_put(w, i, t);
}

static void timer_set(struct worker *w, uint32_t di, uint64_t at_ns)
{
    struct dev *d = &w->devs[di];
    if (d->timer) {
        uint32_t i = d->timer - 1;
        w->heap[i].at_ns = at_ns;
        heap_down(w, heap_up(w, i));
        return;
    }
    assert(w->heap_len < w->devs_len); /* one entry per device */
    uint32_t i = w->heap_len++;
    heap_put(w, i, (struct timer){at_ns, di});
    heap_up(w, i);
}

static void timer_cancel(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    if (!d->timer)
        return;
    uint32_t i = d->timer - 1;
    d->timer = 0;
    uint32_t last = --w->heap_len;
    if (i != last) {
        heap_put(w, i, w->heap[last]);
        heap_down(w, heap_up(w, i));
    }
}

/* ---------------------------------------------------------------------------------------------
 * The packet arena and the connect queue
 * ------------------------------------------------------------------------------------------- */

static uint8_t *chunk_ptr(struct worker *w, uint32_t chunk)
{
    assert(chunk > 0 && chunk <= w->chunks_len);
    return w->chunks + (size_t)(chunk - 1) * run.chunk_bytes;
}

/* A free chunk (index + 1), or 0 when every one is being written. */
static uint32_t chunk_take(struct worker *w)
{
    return w->chunk_free_len ? w->chunk_free[--w->chunk_free_len] : 0;
}

static void chunk_give(struct worker *w, uint32_t chunk)
{
    assert(chunk > 0 && w->chunk_free_len < w->chunks_len);
    /* LIFO: the chunks in use stay the few whose pages are resident. */
    w->chunk_free[w->chunk_free_len++] = chunk;
}

static void cq_push(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    if (d->flags & DF_QUEUED)
        return;
    assert(w->cq_len < w->devs_len);
    d->flags |= DF_QUEUED;
    w->cq[(w->cq_head + w->cq_len++) % w->devs_len] = di;
}

static uint32_t cq_pop(struct worker *w)
{
    assert(w->cq_len > 0);
    uint32_t di = w->cq[w->cq_head];
    w->cq_head = (w->cq_head + 1) % w->devs_len;
    w->cq_len--;
    w->devs[di].flags &= (uint8_t)~DF_QUEUED;
    return di;
}

/* ---------------------------------------------------------------------------------------------
 * Packets: regenerated from (seed, device, packets and records acknowledged)
 * ------------------------------------------------------------------------------------------- */

/* The time of the device's record `rec`: a day of backlog before the start when draining,
 * live from the start when paced, or going back in time (--newest-first). Strictly monotonic
 * per device, so every record differs from the others of its device. */
static uint64_t record_ts_ms(uint32_t g, uint32_t rec)
{
    uint64_t offset = mix64(run.o.seed ^ g) % run.step_ms;
    uint64_t span = (uint64_t)rec * run.step_ms + offset;
    if (run.o.newest_first)
        return run.t0_wall_ms - span;
    uint64_t start = run.period_ns ? run.t0_wall_ms : run.t0_wall_ms - 86400000u;
    return start + span;
}

static int32_t clamp_lat(int64_t v)
{
    return (int32_t)(v > 850000000 ? 850000000 : v < -850000000 ? -850000000 : v);
}

static int32_t wrap_lon(int64_t v)
{
    while (v > 1800000000)
        v -= 3600000000;
    while (v < -1800000000)
        v += 3600000000;
    return (int32_t)v;
}

/* Writes the device's packet in flight into out (cap bytes): realistic records from
 * packetgen (codecs 8, 8E, 16 in turn), moved to the device's home area, stamped with the
 * device's record times and, with --verify, the sequence element. Returns the frame's bytes
 * and *records, or an avl_err. */
static int make_packet(struct worker *w, uint32_t di, uint8_t *out, size_t cap, uint8_t *records)
{
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    const struct dev *d = &w->devs[di];
    uint32_t g = gidx(w, di);
    /* A template device with this device's own salt (its static IO values), its stream
     * seeded by the packet's number: the same bytes whenever this packet is made. */
    w->gen = w->templates[g % DEVICE_TEMPLATES];
    w->gen.device_salt = mix64(run.o.seed ^ UINT64_C(0x5A17) ^ g);
    pktgen_reseed(&w->gen, mix64(run.o.seed ^ mix64((uint64_t)g << 32 | d->pkt_acked)));
    uint8_t codec = codecs[(g + d->pkt_acked) % 3];
    struct pktgen_packet *pkt = w->pkt;
    unsigned n = pktgen_fill(&w->gen, PKTGEN_REALISTIC, codec, run.o.records, run.pkt_budget, pkt);
    if (n == 0)
        return AVL_E_NO_SPACE;
    uint64_t home = mix64(run.o.seed ^ UINT64_C(0x40E) ^ g);
    int64_t home_lon = (int64_t)(home % 3600000000u) - 1800000000;
    int64_t home_lat = (int64_t)((home >> 32) % 1400000000u) - 700000000;
    int64_t dlon = home_lon - pkt->recs[0].rec.lon_e7, dlat = home_lat - pkt->recs[0].rec.lat_e7;
    uint32_t io_used = 0;
    for (unsigned i = 0; i < n; i++) {
        struct avl_record_src *src = &pkt->recs[i];
        uint32_t rec = d->rec_acked + i;
        src->rec.ts_ms = record_ts_ms(g, rec);
        src->rec.lon_e7 = wrap_lon(src->rec.lon_e7 + dlon);
        src->rec.lat_e7 = clamp_lat(src->rec.lat_e7 + dlat);
        if (!run.o.verify)
            continue;
        /* The record's IO without any element of the sequence id, then the sequence in the
         * 8-byte group: packetgen's own output stays as it is for its other callers. */
        struct avl_io_elem *io = w->io + io_used;
        uint16_t k = 0;
        for (uint16_t j = 0; j < src->io_len; j++)
            if (src->io[j].id != VERIFY_IO_ID)
                io[k++] = src->io[j];
        io[k++] = (struct avl_io_elem){
            .id = VERIFY_IO_ID, .width = 8, .value = verify_seq(run.nonce, g, rec)};
        src->io = io;
        src->io_len = k;
        io_used += k;
    }
    *records = (uint8_t)n;
    return avl_encode_tcp(out, cap, codec, pkt->recs, n);
}

/* ---------------------------------------------------------------------------------------------
 * Device transitions
 * ------------------------------------------------------------------------------------------- */

static void dev_pump(struct worker *w, uint32_t di);

static uint64_t now_of(const struct worker *w)
{
    return engine_now_ns(w->e);
}

/* When packet number pkt_acked is due: never before its place on the device's schedule
 * (phases spread uniformly over the period); with --drain at once. */
static uint64_t dev_due_ns(const struct worker *w, uint32_t di)
{
    if (!run.period_ns)
        return 0;
    uint32_t g = gidx(w, di);
    uint64_t phase = (uint64_t)((double)run.period_ns * g / run.o.devices);
    return run.t0_ns + phase + (uint64_t)w->devs[di].pkt_acked * run.period_ns;
}

/* Exponential backoff with jitter: reconnect_ms doubling per consecutive failure, to 30 s. */
static uint64_t backoff_ns(struct worker *w, struct dev *d)
{
    unsigned shift = d->fails < 5 ? d->fails : 5;
    if (d->fails < UINT8_MAX)
        d->fails++;
    uint64_t ns = (uint64_t)run.o.reconnect_ms * NS_PER_MS << shift;
    if (ns > 30 * NS_PER_S)
        ns = 30 * NS_PER_S;
    return ns / 2 + (ns > 1 ? (rnd_next(w) % ns) : 0);
}

/* The device is offline: it connects again after delay_ns (0: through the queue at once). */
static void dev_reconnect(struct worker *w, uint32_t di, uint64_t delay_ns)
{
    struct dev *d = &w->devs[di];
    d->state = DEV_IDLE;
    if (delay_ns == 0)
        cq_push(w, di);
    else
        timer_set(w, di, now_of(w) + delay_ns);
}

/* Ends the device's connection for `cause`; on_close (called inside) does the rest. */
static void dev_drop(struct worker *w, uint32_t di, enum cause cause)
{
    struct dev *d = &w->devs[di];
    d->cause = (uint8_t)cause;
    int rc = engine_close(w->e, d->slot, d->gen);
    assert(rc == 0);
    (void)rc;
}

static void dev_dial(struct worker *w, uint32_t di, uint64_t now)
{
    struct dev *d = &w->devs[di];
    assert(d->state == DEV_IDLE);
    struct sockaddr_in src = {.sin_family = AF_INET};
    uint32_t g = gidx(w, di);
    if (run.src_ips)
        src.sin_addr.s_addr = htonl(run.src_base + g % run.src_ips);
    int rc = engine_connect(w->e, (const struct sockaddr *)&run.dst, run.dst_len,
                            run.src_ips ? (const struct sockaddr *)&src : NULL, sizeof src, di);
    if (rc == -ENFILE) {
        /* Every slot is taken, some by connections still closing: try again shortly. */
        w->c.dial_slot_waits++;
        timer_set(w, di, now + NS_PER_MS);
        return;
    }
    if (rc == -ESHUTDOWN)
        return;
    if (rc < 0) {
        w->c.connect_failed[rc == -EADDRNOTAVAIL ? CE_ADDRNOTAVAIL : CE_OTHER]++;
        dev_reconnect(w, di, backoff_ns(w, d));
        return;
    }
    d->state = DEV_DIALING;
    d->t_ns = now;
    w->inflight++;
    w->c.dials++;
}

/* The gateway answered the handshake with 0x01. */
static void dev_accepted(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    uint64_t now = now_of(w);
    assert(d->state == DEV_HANDSHAKE && w->inflight > 0);
    timer_cancel(w, di); /* the handshake's timeout */
    w->inflight--;
    w->connected++;
    w->c.handshakes++;
    d->fails = 0;
    hist_record(&w->connect, (now - d->t_ns) / 1000);
    if (!(d->flags & DF_EVER)) {
        d->flags |= DF_EVER;
        if (++w->ever == w->devs_len)
            w->all_connected_ns = now;
    }
    d->state = run.o.packets && d->pkt_acked >= run.o.packets ? DEV_DONE : DEV_READY;
    dev_pump(w, di);
}

/* Hands the next piece of the packet in flight to the engine. */
static void write_next(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    struct slotinfo *si = &w->slots[d->slot];
    assert(d->state == DEV_PACKET && si->chunk && si->ref == REF_NONE);
    uint32_t rest = d->pkt_bytes - d->write_off, len = rest;
    if (d->flags & DF_SLOW) {
        uint32_t piece = 4 + rnd_below(w, SLOW_PIECE_BYTES_MAX - 3);
        len = piece < rest ? piece : rest;
    } else if (d->pieces_left > 1) {
        len = 1 + rnd_below(w, rest - (d->pieces_left - 1)); /* every later piece gets a byte */
    }
    if (d->pieces_left)
        d->pieces_left--;
    int rc = engine_send_ref(w->e, d->slot, d->gen, chunk_ptr(w, si->chunk) + d->write_off, len);
    assert(rc == 0);
    (void)rc;
    si->ref = REF_PACKET;
    d->write_off += len;
    if (d->write_off == d->pkt_bytes)
        d->t_ns = now_of(w); /* on_sent refines it; an early ACK still measures from here */
}

/* Generates the packet in flight (a re-send is the same bytes) and starts writing it. */
static void packet_start(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    uint32_t chunk = chunk_take(w);
    if (!chunk) {
        w->c.arena_waits++;
        timer_set(w, di, now_of(w) + NS_PER_MS);
        return;
    }
    uint8_t *buf = chunk_ptr(w, chunk);
    uint8_t records = 0;
    int n = make_packet(w, di, buf, run.chunk_bytes, &records);
    assert(n > 0 && (uint32_t)n <= run.chunk_bytes);
    d->pkt_bytes = (uint32_t)n;
    d->pkt_records = records;
    d->write_off = 0;
    d->flags &= (uint8_t) ~(DF_CORRUPT | DF_PIECE_WAIT | DF_SLOW);
    if (d->flags & DF_ATTEMPTED) {
        w->c.resends++;
    } else {
        d->flags |= DF_ATTEMPTED;
        w->c.packets_sent++;
        /* Only a first attempt is corrupted: the re-send after the close is the real one. */
        if (rnd_chance(w, run.o.malformed)) {
            d->flags |= DF_CORRUPT;
            w->c.malformed_sent++;
        }
    }
    if (d->flags & DF_CORRUPT)
        buf[n - 1] ^= 0x5A; /* the CRC's low byte */
    if (dev_is_slow(gidx(w, di))) {
        d->flags |= DF_SLOW;
        d->pieces_left = 0;
    } else {
        d->pieces_left = (uint8_t)(rnd_chance(w, run.o.fragment) ? 2 + rnd_below(w, 3) : 1);
    }
    w->slots[d->slot].chunk = chunk;
    d->state = DEV_PACKET;
    write_next(w, di);
}

/* The one place that decides what a connected device writes next: the rest of its packet, a
 * command reply, or its next packet when due. Nothing while a reference is pending (on_sent
 * calls here again) or a piece waits for its timer. */
static void dev_pump(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    if ((d->state != DEV_READY && d->state != DEV_PACKET && d->state != DEV_DONE) ||
        atomic_load_explicit(&run.stop, memory_order_relaxed))
        return;
    struct slotinfo *si = &w->slots[d->slot];
    if (si->ref != REF_NONE)
        return;
    if (d->state == DEV_PACKET && d->write_off < d->pkt_bytes) {
        if (!(d->flags & DF_PIECE_WAIT))
            write_next(w, di);
        return;
    }
    if (d->replies > 0) {
        int rc = engine_send_ref(w->e, d->slot, d->gen, run.reply, run.reply_len);
        assert(rc == 0);
        (void)rc;
        si->ref = REF_REPLY;
        d->replies--;
        w->c.replies++;
        return;
    }
    if (d->state != DEV_READY || run.o.pacing == PACE_IDLE)
        return; /* --idle: connected and silent */
    uint64_t due = dev_due_ns(w, di);
    if (due > now_of(w)) {
        timer_set(w, di, due);
        return;
    }
    packet_start(w, di);
}

/* An ACK arrived. Returns false when the device dropped the connection. */
static bool dev_ack(struct worker *w, uint32_t di, uint32_t value)
{
    struct dev *d = &w->devs[di];
    if (d->state != DEV_PACKET || d->write_off != d->pkt_bytes) {
        w->c.bad_ack++; /* nothing of ours awaited it */
        dev_drop(w, di, CAUSE_BAD_ACK);
        return false;
    }
    if (d->flags & DF_CORRUPT) {
        w->c.malformed_acked++;
        dev_drop(w, di, CAUSE_MALFORMED_ACKED);
        return false;
    }
    if (value != d->pkt_records) {
        w->c.bad_ack++; /* a tracker re-sends the whole packet */
        dev_drop(w, di, CAUSE_BAD_ACK);
        return false;
    }
    uint64_t now = now_of(w), us = now > d->t_ns ? (now - d->t_ns) / 1000 : 0;
    /* The run's percentiles leave out the warm-up (connections, first state loads); the
     * per-second timeline keeps everything. */
    if (now >= run.t0_ns + run.warmup_ns)
        hist_record(&w->ack, us);
    hist_record(&w->ack_sec, us);
    w->c.packets_acked++;
    w->c.records_acked += value;
    d->pkt_acked++;
    d->rec_acked += value;
    d->pkt_records = 0;
    d->pkt_bytes = d->write_off = 0;
    d->flags &= (uint8_t) ~(DF_ATTEMPTED | DF_SLOW);
    timer_cancel(w, di); /* the ACK timeout */
    if (run.o.packets && d->pkt_acked >= run.o.packets) {
        d->state = DEV_DONE;
        atomic_fetch_add_explicit(&run.devices_done, 1, memory_order_relaxed);
    } else {
        d->state = DEV_READY;
    }
    dev_pump(w, di);
    return true;
}

/* Writes one command-log line: wall-clock ns, IMEI, the command with bytes outside printable
 * ASCII (and the backslash) as \xNN. */
static void log_command(uint32_t g, const uint8_t *text, uint32_t len)
{
    char line[64 + 4 * CMDLOG_TEXT_MAX];
    int n =
        snprintf(line, sizeof line, "%" PRIu64 " %015" PRIu64 " ", wall_ns(), run.o.imei_base + g);
    for (uint32_t i = 0; i < len && i < CMDLOG_TEXT_MAX; i++) {
        uint8_t c = text[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            line[n++] = (char)c;
        else
            n += snprintf(line + n, sizeof line - (size_t)n, "\\x%02x", c);
    }
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, run.cmdlog); /* stdio locks the stream: lines stay whole */
}

/* A GPRS frame from the gateway: every Codec 12 command gets a reply. False: dropped. */
static bool dev_gprs(struct worker *w, uint32_t di, const uint8_t *p, uint32_t len)
{
    struct dev *d = &w->devs[di];
    uint8_t codec;
    int n = avl_decode_gprs(p, len, &codec, w->msgs);
    if (n < 0) {
        w->c.bad_frame++;
        dev_drop(w, di, CAUSE_BAD_FRAME);
        return false;
    }
    for (int i = 0; i < n; i++) {
        const struct avl_gprs_msg *m = &w->msgs[i];
        if (codec != AVL_CODEC_12 || m->type != AVL_GPRS_COMMAND) {
            w->c.gprs_other++;
            continue;
        }
        w->c.commands++;
        if (run.cmdlog)
            log_command(gidx(w, di), m->text, m->text_len);
        if (d->replies < UINT8_MAX)
            d->replies++;
    }
    dev_pump(w, di);
    return true;
}

static void dev_timer(struct worker *w, uint32_t di)
{
    struct dev *d = &w->devs[di];
    switch ((enum dev_state)d->state) {
    case DEV_IDLE:
        cq_push(w, di); /* backoff or ramp over */
        break;
    case DEV_HANDSHAKE:
        w->c.handshake_timeout++; /* the gateway never answered the IMEI */
        dev_drop(w, di, CAUSE_ACK_TIMEOUT);
        break;
    case DEV_READY:
        dev_pump(w, di); /* its schedule, or a chunk came free */
        break;
    case DEV_PACKET:
        if (d->flags & DF_PIECE_WAIT) {
            d->flags &= (uint8_t)~DF_PIECE_WAIT;
            dev_pump(w, di);
        } else if (d->write_off == d->pkt_bytes) {
            w->c.ack_timeout++;
            dev_drop(w, di, CAUSE_ACK_TIMEOUT);
        }
        break;
    default:
        break;
    }
}

/* A reconnect storm: each connected device drops with probability storm_fraction and dials
 * again at once. */
static void storm(struct worker *w)
{
    for (uint32_t di = 0; di < w->devs_len; di++) {
        uint8_t st = w->devs[di].state;
        if ((st == DEV_HANDSHAKE || st == DEV_READY || st == DEV_PACKET || st == DEV_DONE) &&
            rnd_chance(w, run.o.storm_fraction)) {
            w->c.storm_drops++;
            dev_drop(w, di, CAUSE_STORM);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Engine callbacks (the worker's thread)
 * ------------------------------------------------------------------------------------------- */

static void lg_on_open(void *app, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                       uint64_t key)
{
    struct worker *w = app;
    (void)e;
    assert(from_shard == ENGINE_FROM_DIAL && key < w->devs_len && slot < w->slots_len);
    uint32_t di = (uint32_t)key;
    struct dev *d = &w->devs[di];
    assert(d->state == DEV_DIALING);
    struct slotinfo *si = &w->slots[slot];
    assert(si->ref == REF_NONE && si->chunk == 0);
    si->dev = di;
    d->slot = slot;
    d->gen = gen;
    d->state = DEV_HANDSHAKE;
    d->cause = CAUSE_NONE;
    uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
    int n = avl_encode_imei(hs, sizeof hs, run.o.imei_base + gidx(w, di));
    assert(n > 0);
    int rc = engine_send(w->e, slot, gen, hs, (size_t)n);
    assert(rc == 0);
    (void)rc;
    if (run.ack_timeout_ns)
        timer_set(w, di, now_of(w) + run.ack_timeout_ns);
}

static void lg_on_connect_failed(void *app, struct engine *e, uint64_t key, int err)
{
    struct worker *w = app;
    (void)e;
    uint32_t di = (uint32_t)key;
    struct dev *d = &w->devs[di];
    assert(di < w->devs_len && d->state == DEV_DIALING && w->inflight > 0);
    w->inflight--;
    if (err == -ECANCELED || atomic_load_explicit(&run.stop, memory_order_relaxed)) {
        d->state = DEV_STOPPED; /* engine_stop */
        return;
    }
    enum conn_err k = err == -ECONNREFUSED    ? CE_REFUSED
                      : err == -ETIMEDOUT     ? CE_TIMEOUT
                      : err == -EADDRNOTAVAIL ? CE_ADDRNOTAVAIL
                                              : CE_OTHER;
    w->c.connect_failed[k]++;
    dev_reconnect(w, di, backoff_ns(w, d));
}

static size_t lg_on_data(void *app, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                         size_t len, enum engine_verdict *verdict, uint32_t *need)
{
    struct worker *w = app;
    (void)e;
    uint32_t di = w->slots[slot].dev;
    struct dev *d = &w->devs[di];
    assert(d->slot == slot && d->gen == gen);
    *verdict = ENGINE_CONTINUE;
    size_t used = 0;
    while (used < len) {
        if (d->state == DEV_HANDSHAKE) {
            uint8_t answer = p[used++];
            if (answer == 0x01) {
                dev_accepted(w, di);
                continue;
            }
            if (answer == 0x00)
                w->c.rejected++;
            else
                w->c.bad_frame++;
            dev_drop(w, di, answer == 0x00 ? CAUSE_REJECTED : CAUSE_BAD_FRAME);
            return used;
        }
        /* An ACK is a u32 record count (1..255); a frame starts with four zero bytes. */
        if (len - used < 4) {
            *need = 4;
            return used;
        }
        const uint8_t *q = p + used;
        uint32_t value = be32(q);
        if (value != 0) {
            used += 4;
            if (!dev_ack(w, di, value))
                return used;
            continue;
        }
        struct avl_frame f;
        int rc = avl_scan(q, len - used, AVL_SCAN_DATA, SERVER_FRAME_BYTES_MAX, &f);
        if (rc == AVL_NEED_MORE) {
            *need = f.bytes;
            return used;
        }
        if (rc < 0 || f.kind != AVL_FRAME_GPRS) {
            w->c.bad_frame++;
            dev_drop(w, di, CAUSE_BAD_FRAME);
            return used;
        }
        if (!dev_gprs(w, di, q, f.bytes))
            return used;
        used += f.bytes;
    }
    return used;
}

static void lg_on_close(void *app, struct engine *e, uint32_t slot, uint32_t gen,
                        enum engine_close_reason reason)
{
    struct worker *w = app;
    (void)e;
    struct slotinfo *si = &w->slots[slot];
    uint32_t di = si->dev;
    struct dev *d = &w->devs[di];
    assert(d->slot == slot && d->gen == gen);
    uint8_t was = d->state;
    if (was == DEV_HANDSHAKE)
        w->inflight--;
    else if (was == DEV_READY || was == DEV_PACKET || was == DEV_DONE)
        w->connected--;
    /* A pending reference keeps its chunk until on_sent; between pieces it goes back now. */
    if (si->chunk && si->ref == REF_NONE) {
        chunk_give(w, si->chunk);
        si->chunk = 0;
    }
    timer_cancel(w, di);
    enum cause cause = (enum cause)d->cause;
    d->cause = CAUSE_NONE;
    bool corrupt = was == DEV_PACKET && (d->flags & DF_CORRUPT);
    d->flags &= (uint8_t) ~(DF_CORRUPT | DF_PIECE_WAIT | DF_SLOW);
    d->pkt_bytes = d->write_off = 0; /* the packet is regenerated for the re-send */
    d->replies = 0;                  /* commands of a dead connection die with it */
    if (reason == ENGINE_CLOSE_SHUTDOWN || atomic_load_explicit(&run.stop, memory_order_relaxed)) {
        d->state = DEV_STOPPED;
        return;
    }
    uint64_t delay = 0;
    if (cause == CAUSE_NONE && corrupt) {
        w->c.malformed_closed++; /* as it must: reconnect and send the real packet */
    } else if (cause == CAUSE_NONE) {
        w->c.unexpected_close++;
        delay = backoff_ns(w, d);
    } else if (cause != CAUSE_STORM) {
        delay = backoff_ns(w, d);
    }
    dev_reconnect(w, di, delay);
}

static void lg_on_sent(void *app, struct engine *e, uint32_t slot, uint32_t gen, int status)
{
    struct worker *w = app;
    (void)e;
    struct slotinfo *si = &w->slots[slot];
    uint8_t kind = si->ref;
    assert(kind != REF_NONE);
    si->ref = REF_NONE;
    if (status < 0) {
        /* The connection is gone (on_close ran): its chunk comes back now. */
        if (si->chunk) {
            chunk_give(w, si->chunk);
            si->chunk = 0;
        }
        return;
    }
    uint32_t di = si->dev;
    struct dev *d = &w->devs[di];
    assert(d->slot == slot && d->gen == gen);
    uint64_t now = now_of(w);
    if (kind == REF_PACKET) {
        if (d->write_off == d->pkt_bytes) {
            chunk_give(w, si->chunk);
            si->chunk = 0;
            if (d->state == DEV_PACKET) {
                d->t_ns = now; /* the ACK latency runs from the packet's last byte */
                if (run.ack_timeout_ns)
                    timer_set(w, di, now + run.ack_timeout_ns);
            }
        } else {
            /* The next piece after a pause: ~1 s in all for a slow device, 1..20 ms between
             * the pieces of a fragmented one. */
            uint64_t delay = d->flags & DF_SLOW
                                 ? NS_PER_S * (SLOW_PIECE_BYTES_MAX / 2 + 2) / d->pkt_bytes
                                 : (1 + rnd_below(w, 20)) * NS_PER_MS;
            d->flags |= DF_PIECE_WAIT;
            timer_set(w, di, now + delay);
        }
    }
    dev_pump(w, di);
}

static void lg_on_poll(void *app, struct engine *e, uint64_t tag, int revents)
{
    (void)app;
    (void)e;
    (void)tag;
    (void)revents;
}

/* Adds the interval that just ended to the per-second ring (once a second). */
static void publish(struct worker *w, uint64_t now)
{
    uint64_t k = (now - run.t0_ns) / NS_PER_S; /* the interval now runs in */
    int64_t sec = (int64_t)k - 1;              /* the one that ended */
    pthread_mutex_lock(&run.mu);
    struct sec_slot *s = &run.ring[(uint64_t)sec % STATS_RING];
    if (s->sec < sec) {
        s->sec = sec;
        s->final = false;
        s->publishers = 0;
        s->connected = s->packets = s->records = s->errors = 0;
        hist_reset(&s->ack);
    }
    if (s->sec == sec && !s->final) {
        s->publishers++;
        s->connected += w->connected;
        s->packets += w->c.packets_acked - w->c_pub.packets_acked;
        s->records += w->c.records_acked - w->c_pub.records_acked;
        s->errors += errors_of(&w->c) - errors_of(&w->c_pub);
        hist_merge(&s->ack, &w->ack_sec);
    }
    pthread_mutex_unlock(&run.mu);
    hist_reset(&w->ack_sec);
    w->c_pub = w->c;
    w->next_pub_ns = run.t0_ns + (k + 1) * NS_PER_S;
}

static uint64_t lg_on_tick(void *app, struct engine *e, uint64_t now)
{
    struct worker *w = app;
    (void)e;
    if (atomic_load_explicit(&run.stop, memory_order_relaxed))
        return 0;
    unsigned fired = 0;
    while (w->heap_len > 0 && w->heap[0].at_ns <= now && fired < TIMERS_PER_TICK) {
        uint32_t di = w->heap[0].dev;
        timer_cancel(w, di);
        dev_timer(w, di);
        fired++;
    }
    if (run.storm_every_ns && now >= w->next_storm_ns) {
        storm(w);
        w->next_storm_ns += run.storm_every_ns;
    }
    if (w->tokens_per_ns > 0) {
        w->tokens += (double)(now - w->tokens_ns) * w->tokens_per_ns;
        if (w->tokens > w->tokens_max)
            w->tokens = w->tokens_max;
        w->tokens_ns = now;
    }
    while (w->cq_len > 0 && w->inflight < w->inflight_max &&
           (w->tokens_per_ns == 0 || w->tokens >= 1.0)) {
        uint32_t di = cq_pop(w);
        if (w->devs[di].state != DEV_IDLE)
            continue;
        dev_dial(w, di, now);
        if (w->tokens_per_ns > 0)
            w->tokens -= 1.0;
    }
    if (now >= w->next_pub_ns)
        publish(w, now);

    uint64_t next = w->next_pub_ns;
    if (fired == TIMERS_PER_TICK)
        next = now; /* more timers are due: come back at once */
    else if (w->heap_len > 0 && w->heap[0].at_ns < next)
        next = w->heap[0].at_ns;
    if (run.storm_every_ns && w->next_storm_ns < next)
        next = w->next_storm_ns;
    if (w->cq_len > 0 && w->inflight < w->inflight_max && w->tokens_per_ns > 0) {
        uint64_t t = now + (uint64_t)((1.0 - w->tokens) / w->tokens_per_ns) + 1;
        if (t < next)
            next = t;
    }
    return next;
}

static const struct engine_ops lg_ops = {
    .on_open = lg_on_open,
    .on_data = lg_on_data,
    .on_close = lg_on_close,
    .on_poll = lg_on_poll,
    .on_tick = lg_on_tick,
    .on_sent = lg_on_sent,
    .on_connect_failed = lg_on_connect_failed,
};

/* ---------------------------------------------------------------------------------------------
 * Workers
 * ------------------------------------------------------------------------------------------- */

static void *map_bytes(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Sizes everything of one worker from the options; the loop then allocates nothing. */
static int worker_alloc(struct worker *w, uint32_t conns_max)
{
    w->slots_len = conns_max;
    w->chunks_len = w->devs_len < CHUNKS_MAX ? w->devs_len : CHUNKS_MAX;
    w->devs = calloc(w->devs_len, sizeof *w->devs);
    w->heap = calloc(w->devs_len, sizeof *w->heap);
    w->cq = calloc(w->devs_len, sizeof *w->cq);
    w->slots = calloc(conns_max, sizeof *w->slots);
    w->chunk_free = calloc(w->chunks_len, sizeof *w->chunk_free);
    w->chunks = map_bytes((size_t)w->chunks_len * run.chunk_bytes); /* touched as used */
    w->pkt = malloc(sizeof *w->pkt);
    w->templates = calloc(DEVICE_TEMPLATES, sizeof *w->templates);
    if (!w->devs || !w->heap || !w->cq || !w->slots || !w->chunk_free || !w->chunks || !w->pkt ||
        !w->templates)
        return -ENOMEM;
    for (uint32_t k = 0; k < DEVICE_TEMPLATES; k++)
        pktgen_init(&w->templates[k], mix64(run.o.seed ^ UINT64_C(0x7E47) ^ k));
    for (uint32_t i = 0; i < w->chunks_len; i++)
        w->chunk_free[i] = w->chunks_len - i; /* chunk 1 first */
    w->chunk_free_len = w->chunks_len;
    w->rnd = mix64(run.o.seed ^ UINT64_C(0xA11CE) ^ w->id) | 1;
    w->inflight_max = run.o.connect_inflight / run.threads;
    if (w->inflight_max == 0)
        w->inflight_max = 1;
    if (run.o.connect_rate > 0) {
        w->tokens_per_ns = run.o.connect_rate / run.threads / 1e9;
        w->tokens_max = fmax(1.0, run.o.connect_rate / run.threads / 20); /* 50 ms of burst */
        w->tokens = 1.0;
    }
    return 0;
}

static void worker_free(struct worker *w)
{
    free(w->devs);
    free(w->heap);
    free(w->cq);
    free(w->slots);
    free(w->chunk_free);
    if (w->chunks)
        munmap(w->chunks, (size_t)w->chunks_len * run.chunk_bytes);
    free(w->pkt);
    free(w->templates);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint32_t conns_max = w->slots_len;
    struct engine_config cfg = {
        .shard = w->id,
        .shards = run.threads,
        .listen = false,
        .conns_max = conns_max,
        .connect_timeout_ms = (uint32_t)(run.o.connect_timeout_s * 1000),
        .bufs = 4096,
        .buf_bytes = 256,
        .reasm_bufs = 64,
        .frame_bytes_max = SERVER_FRAME_BYTES_MAX,
        .frame_timeout_ms = 30000,
        .sq_entries = 4096,
        .dial_reset_on_close = true,
        .ops = &lg_ops,
        .app = w,
    };
    w->rc = engine_init(&w->e, &cfg, w->err, sizeof w->err);
    pthread_barrier_wait(&run.ready);
    pthread_barrier_wait(&run.go); /* run.t0_ns is set */
    if (w->rc || atomic_load(&run.abort))
        return NULL;
    /* The first connections: spread over --ramp-s, or all queued at once. */
    uint64_t ramp_ns = (uint64_t)(run.o.ramp_s * 1e9);
    for (uint32_t di = 0; di < w->devs_len; di++) {
        if (ramp_ns)
            timer_set(w, di, run.t0_ns + (uint64_t)((double)ramp_ns * gidx(w, di) / run.o.devices));
        else
            cq_push(w, di);
    }
    w->next_pub_ns = run.t0_ns + NS_PER_S;
    w->next_storm_ns = run.t0_ns + run.storm_every_ns;
    w->tokens_ns = run.t0_ns;
    w->rc = engine_run(w->e);
    if (w->rc)
        snprintf(w->err, sizeof w->err, "engine_run: %s", strerror(-w->rc));
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, lo, hi, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static bool parse_storm(const char *s, double *every, double *fraction)
{
    char buf[64];
    const char *colon = strchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof buf)
        return false;
    memcpy(buf, s, (size_t)(colon - s));
    buf[colon - s] = '\0';
    return parse_double(buf, 0.1, 86400, every) && parse_double(colon + 1, 0, 1, fraction);
}

static bool resolve_target(const char *target)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host)
        return false;
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    char *h = host;
    if (h[0] == '[') {
        h++;
        char *rb = strchr(h, ']');
        if (!rb)
            return false;
        *rb = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    if (getaddrinfo(h, colon + 1, &hints, &ai) != 0)
        return false;
    memcpy(&run.dst, ai->ai_addr, ai->ai_addrlen);
    run.dst_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return true;
}

enum {
    O_CONNECT = 256,
    O_DEVICES,
    O_THREADS,
    O_SRC_IPS,
    O_SRC_BASE,
    O_IMEI_BASE,
    O_RECORDS,
    O_PACKET_BYTES,
    O_DRAIN,
    O_RATE,
    O_PERIOD,
    O_IDLE,
    O_DURATION,
    O_WARMUP,
    O_PACKETS,
    O_CONNECT_RATE,
    O_RAMP,
    O_INFLIGHT,
    O_CONNECT_TIMEOUT,
    O_ACK_TIMEOUT,
    O_RECONNECT_MS,
    O_FRAGMENT,
    O_NEWEST,
    O_STORM,
    O_SLOW,
    O_MALFORMED,
    O_SEED,
    O_VERIFY,
    O_PG,
    O_REPLY,
    O_CMDLOG,
    O_PROGRESS,
    O_JSON,
    O_HELP,
};

/* Returns 0, or 2 after printing what is wrong (usage error). */
static int parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){
        .target = "127.0.0.1:5027",
        .devices = 100,
        .src_ips = UINT32_MAX,
        .src_base = "127.0.0.1",
        .imei_base = UINT64_C(350000000000000),
        .records = 10,
        .pacing = PACE_DRAIN,
        .duration_s = 30,
        .connect_inflight = 4096,
        .connect_timeout_s = 10,
        .ack_timeout_s = 60,
        .reconnect_ms = 1000,
        .seed = 1,
        .command_reply = "OK",
        .progress = isatty(STDERR_FILENO),
    };
    static const struct option opts[] = {
        {"connect", required_argument, 0, O_CONNECT},
        {"devices", required_argument, 0, O_DEVICES},
        {"threads", required_argument, 0, O_THREADS},
        {"src-ips", required_argument, 0, O_SRC_IPS},
        {"src-base", required_argument, 0, O_SRC_BASE},
        {"imei-base", required_argument, 0, O_IMEI_BASE},
        {"records", required_argument, 0, O_RECORDS},
        {"packet-bytes-max", required_argument, 0, O_PACKET_BYTES},
        {"drain", no_argument, 0, O_DRAIN},
        {"rate", required_argument, 0, O_RATE},
        {"period-s", required_argument, 0, O_PERIOD},
        {"idle", no_argument, 0, O_IDLE},
        {"duration-s", required_argument, 0, O_DURATION},
        {"warmup-s", required_argument, 0, O_WARMUP},
        {"packets", required_argument, 0, O_PACKETS},
        {"connect-rate", required_argument, 0, O_CONNECT_RATE},
        {"ramp-s", required_argument, 0, O_RAMP},
        {"connect-inflight", required_argument, 0, O_INFLIGHT},
        {"connect-timeout-s", required_argument, 0, O_CONNECT_TIMEOUT},
        {"ack-timeout-s", required_argument, 0, O_ACK_TIMEOUT},
        {"reconnect-ms", required_argument, 0, O_RECONNECT_MS},
        {"fragment", required_argument, 0, O_FRAGMENT},
        {"newest-first", no_argument, 0, O_NEWEST},
        {"reconnect-storm", required_argument, 0, O_STORM},
        {"slow", required_argument, 0, O_SLOW},
        {"malformed", required_argument, 0, O_MALFORMED},
        {"seed", required_argument, 0, O_SEED},
        {"verify", no_argument, 0, O_VERIFY},
        {"pg", required_argument, 0, O_PG},
        {"command-reply", required_argument, 0, O_REPLY},
        {"command-log", required_argument, 0, O_CMDLOG},
        {"progress", no_argument, 0, O_PROGRESS},
        {"json", required_argument, 0, O_JSON},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    int paced = 0, opt, which = 0;
    while ((opt = getopt_long(argc, argv, "", opts, &which)) != -1) {
        bool ok = true;
        switch (opt) {
        case O_CONNECT:
            o->target = optarg;
            break;
        case O_DEVICES:
            ok = parse_u32(optarg, 1, VERIFY_DEVICES_MAX - 1, &o->devices);
            break;
        case O_THREADS:
            ok = parse_u32(optarg, 1, 256, &o->threads);
            break;
        case O_SRC_IPS:
            ok = parse_u32(optarg, 0, 65536, &o->src_ips);
            break;
        case O_SRC_BASE:
            o->src_base = optarg;
            break;
        case O_IMEI_BASE:
            ok = parse_u64(optarg, UINT64_C(100000000000000), UINT64_C(999999999999999),
                           &o->imei_base);
            break;
        case O_RECORDS:
            ok = parse_u32(optarg, 1, AVL_RECORDS_MAX, &o->records);
            break;
        case O_PACKET_BYTES:
            ok = parse_u32(optarg, 256, PKTGEN_FRAME_BYTES_MAX, &o->packet_bytes_max);
            break;
        case O_DRAIN:
            o->pacing = PACE_DRAIN;
            paced++;
            break;
        case O_RATE:
            o->pacing = PACE_RATE;
            paced++;
            ok = parse_double(optarg, 1e-3, 1e9, &o->rate);
            break;
        case O_IDLE:
            o->pacing = PACE_IDLE;
            paced++;
            break;
        case O_PERIOD:
            o->pacing = PACE_PERIOD;
            paced++;
            ok = parse_double(optarg, 1e-3, 86400, &o->period_s);
            break;
        case O_WARMUP:
            ok = parse_double(optarg, 0, 1e6, &o->warmup_s);
            break;
        case O_DURATION:
            ok = parse_double(optarg, 0, 1e7, &o->duration_s);
            break;
        case O_PACKETS:
            ok = parse_u32(optarg, 1, UINT32_MAX, &o->packets);
            break;
        case O_CONNECT_RATE:
            ok = parse_double(optarg, 0, 1e9, &o->connect_rate);
            break;
        case O_RAMP:
            ok = parse_double(optarg, 0, 86400, &o->ramp_s);
            break;
        case O_INFLIGHT:
            ok = parse_u32(optarg, 1, UINT32_MAX, &o->connect_inflight);
            break;
        case O_CONNECT_TIMEOUT:
            ok = parse_double(optarg, 0, 3600, &o->connect_timeout_s);
            break;
        case O_ACK_TIMEOUT:
            ok = parse_double(optarg, 0, 86400, &o->ack_timeout_s);
            break;
        case O_RECONNECT_MS:
            ok = parse_u32(optarg, 1, 600000, &o->reconnect_ms);
            break;
        case O_FRAGMENT:
            ok = parse_double(optarg, 0, 1, &o->fragment);
            break;
        case O_NEWEST:
            o->newest_first = true;
            break;
        case O_STORM:
            ok = parse_storm(optarg, &o->storm_every_s, &o->storm_fraction);
            break;
        case O_SLOW:
            ok = parse_double(optarg, 0, 1, &o->slow);
            break;
        case O_MALFORMED:
            ok = parse_double(optarg, 0, 1, &o->malformed);
            break;
        case O_SEED:
            ok = parse_u64(optarg, 0, UINT64_MAX, &o->seed);
            break;
        case O_VERIFY:
            o->verify = true;
            break;
        case O_PG:
            o->pg = optarg;
            break;
        case O_REPLY:
            o->command_reply = optarg;
            ok = strlen(optarg) <= REPLY_TEXT_MAX;
            break;
        case O_CMDLOG:
            o->command_log = optarg;
            break;
        case O_PROGRESS:
            o->progress = true;
            break;
        case O_JSON:
            o->json = optarg;
            break;
        case O_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "avlgate-loadgen: bad value for --%s: %s\n", opts[which].name, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "avlgate-loadgen: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    if (paced > 1) {
        fprintf(stderr, "avlgate-loadgen: give one of --drain, --rate, --period-s, --idle\n");
        return 2;
    }
    if (o->verify && !o->pg) {
        fprintf(stderr, "avlgate-loadgen: --verify needs --pg CONNINFO\n");
        return 2;
    }
    if (o->imei_base + o->devices - 1 > UINT64_C(999999999999999)) {
        fprintf(stderr, "avlgate-loadgen: --imei-base + --devices leaves 15 digits\n");
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------------------- */

struct summary {
    struct counters c;
    struct hist ack, connect;
    double elapsed_s, connect_all_s;
    uint64_t connected_max, connected_end;
};

static double ms_of(uint64_t us)
{
    return (double)us / 1000.0;
}

static uint64_t connect_failed_of(const struct counters *c)
{
    uint64_t n = 0;
    for (int k = 0; k < CE_KINDS; k++)
        n += c->connect_failed[k];
    return n;
}

static const char *pacing_name(void)
{
    switch (run.o.pacing) {
    case PACE_RATE:
        return "rate";
    case PACE_PERIOD:
        return "period";
    case PACE_IDLE:
        return "idle";
    case PACE_DRAIN:
        break;
    }
    return "drain";
}

/* The summary as key=value pairs (sep " ") or JSON members (sep ","), the same keys. */
static void print_summary(FILE *f, const struct summary *s, bool json)
{
    const struct counters *c = &s->c;
    struct {
        const char *k;
        bool is_f;
        uint64_t u;
        double f;
    } kv[] = {
        {"devices", false, run.o.devices, 0},
        {"threads", false, run.threads, 0},
        {"src_ips", false, run.src_ips, 0},
        {"records_per_packet", false, run.o.records, 0},
        {"duration_s", true, 0, s->elapsed_s},
        {"connected_max", false, s->connected_max, 0},
        {"connected_end", false, s->connected_end, 0},
        {"connect_all_s", true, 0, s->connect_all_s},
        {"connect_ms_p50", true, 0, ms_of(hist_quantile(&s->connect, 0.50))},
        {"connect_ms_p99", true, 0, ms_of(hist_quantile(&s->connect, 0.99))},
        {"connect_ms_max", true, 0, ms_of(s->connect.max_us)},
        {"handshakes", false, c->handshakes, 0},
        {"packets_sent", false, c->packets_sent, 0},
        {"resends", false, c->resends, 0},
        {"packets_acked", false, c->packets_acked, 0},
        {"records_acked", false, c->records_acked, 0},
        {"packets_per_s", true, 0, s->elapsed_s > 0 ? (double)c->packets_acked / s->elapsed_s : 0},
        {"records_per_s", true, 0, s->elapsed_s > 0 ? (double)c->records_acked / s->elapsed_s : 0},
        {"ack_p50_ms", true, 0, ms_of(hist_quantile(&s->ack, 0.50))},
        {"ack_p90_ms", true, 0, ms_of(hist_quantile(&s->ack, 0.90))},
        {"ack_p99_ms", true, 0, ms_of(hist_quantile(&s->ack, 0.99))},
        {"ack_p999_ms", true, 0, ms_of(hist_quantile(&s->ack, 0.999))},
        {"ack_max_ms", true, 0, ms_of(s->ack.max_us)},
        {"commands", false, c->commands, 0},
        {"replies", false, c->replies, 0},
        {"malformed_sent", false, c->malformed_sent, 0},
        {"malformed_closed", false, c->malformed_closed, 0},
        {"malformed_acked", false, c->malformed_acked, 0},
        {"storm_drops", false, c->storm_drops, 0},
        {"errors", false, errors_of(c), 0},
        {"connect_failed", false, connect_failed_of(c), 0},
        {"connect_refused", false, c->connect_failed[CE_REFUSED], 0},
        {"connect_timeout", false, c->connect_failed[CE_TIMEOUT], 0},
        {"connect_addrnotavail", false, c->connect_failed[CE_ADDRNOTAVAIL], 0},
        {"connect_other", false, c->connect_failed[CE_OTHER], 0},
        {"rejected", false, c->rejected, 0},
        {"bad_ack", false, c->bad_ack, 0},
        {"bad_frame", false, c->bad_frame, 0},
        {"unexpected_close", false, c->unexpected_close, 0},
        {"ack_timeout", false, c->ack_timeout, 0},
        {"handshake_timeout", false, c->handshake_timeout, 0},
        {"arena_waits", false, c->arena_waits, 0},
        {"dial_slot_waits", false, c->dial_slot_waits, 0},
    };
    if (json)
        fprintf(f, "\"pacing\":\"%s\",", pacing_name());
    else
        fprintf(f, "pacing=%s ", pacing_name());
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        if (i)
            fputc(json ? ',' : ' ', f);
        fprintf(f, json ? "\"%s\":" : "%s=", kv[i].k);
        if (kv[i].is_f)
            fprintf(f, "%.3f", kv[i].f);
        else
            fprintf(f, "%" PRIu64, kv[i].u);
    }
}

static int write_json(const char *path, const struct summary *s, const struct sample *tl,
                      size_t tl_len, const struct verify_result *v)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    fputc('{', f);
    print_summary(f, s, true);
    if (v)
        fprintf(f,
                ",\"verify\":{\"ok\":%s,\"acked\":%" PRIu64 ",\"stored\":%" PRIu64
                ",\"missing\":%" PRIu64 ",\"duplicated\":%" PRIu64 ",\"unacked_stored\":%" PRIu64
                ",\"unexpected\":%" PRIu64 "}",
                verify_ok(v) ? "true" : "false", v->acked, v->stored, v->missing, v->duplicated,
                v->unacked_stored, v->unexpected);
    fputs(",\"timeline\":[", f);
    for (size_t i = 0; i < tl_len; i++)
        fprintf(f,
                "%s{\"t\":%.0f,\"connected\":%" PRIu64 ",\"packets_per_s\":%" PRIu64
                ",\"records_per_s\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f}",
                i ? "," : "", tl[i].t_s, tl[i].connected, tl[i].packets, tl[i].records,
                tl[i].errors, tl[i].ack_p50_ms, tl[i].ack_p99_ms);
    fputs("]}\n", f);
    return fclose(f) == 0 ? 0 : -errno;
}

/* ---------------------------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------------------------- */

/* Derived settings; returns 0 or 2 (usage) after a message. */
static int setup(void)
{
    struct options *o = &run.o;
    if (!resolve_target(o->target)) {
        fprintf(stderr, "avlgate-loadgen: cannot resolve --connect %s\n", o->target);
        return 2;
    }
    run.threads = o->threads ? o->threads : (o->devices + RING_DEVICES_MAX - 1) / RING_DEVICES_MAX;
    if (run.threads > o->devices)
        run.threads = o->devices;
    bool loopback4 = run.dst.ss_family == AF_INET &&
                     (ntohl(((struct sockaddr_in *)&run.dst)->sin_addr.s_addr) >> 24) == 127;
    run.src_ips = o->src_ips != UINT32_MAX ? o->src_ips
                  : loopback4              ? (o->devices + SRC_DEVICES - 1) / SRC_DEVICES
                                           : 0;
    if (run.src_ips) {
        struct in_addr a;
        if (run.dst.ss_family != AF_INET || inet_pton(AF_INET, o->src_base, &a) != 1) {
            fprintf(stderr, "avlgate-loadgen: --src-ips needs an IPv4 target and --src-base\n");
            return 2;
        }
        run.src_base = ntohl(a.s_addr);
    }
    /* Raise the descriptor limit to its hard limit: each ring's fixed table is capped by it. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    uint32_t per = (o->devices + run.threads - 1) / run.threads;
    if (per + 64 > rl.rlim_cur) {
        fprintf(stderr,
                "avlgate-loadgen: %u devices per ring do not fit RLIMIT_NOFILE %llu, which "
                "caps each ring's fixed file table: add --threads\n",
                per, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    run.warmup_ns = (uint64_t)(o->warmup_s * 1e9);
    if (o->pacing == PACE_RATE)
        run.period_ns = (uint64_t)((double)o->devices * o->records / o->rate * 1e9);
    else if (o->pacing == PACE_PERIOD)
        run.period_ns = (uint64_t)(o->period_s * 1e9);
    run.step_ms = run.period_ns ? run.period_ns / NS_PER_MS / o->records : 1000;
    if (run.step_ms == 0)
        run.step_ms = 1;
    uint32_t budget = o->packet_bytes_max ? o->packet_bytes_max
                                          : (o->records * 400 > 1024 ? o->records * 400 : 1024);
    if (budget > PKTGEN_FRAME_BYTES_MAX)
        budget = PKTGEN_FRAME_BYTES_MAX;
    run.pkt_budget = budget;
    /* The sequence elements come on top of packetgen's budget. */
    run.chunk_bytes = (budget + o->records * RECORD_SEQ_BYTES + 63) / 64 * 64;
    run.ack_timeout_ns = (uint64_t)(o->ack_timeout_s * 1e9);
    run.storm_every_ns = o->storm_fraction > 0 ? (uint64_t)(o->storm_every_s * 1e9) : 0;

    /* Every device answers every command with the same frame: encoded once, sent by
     * reference from here. */
    size_t text_len = strlen(o->command_reply);
    run.reply = malloc(text_len + 64);
    struct avl_gprs_msg m = {.type = AVL_GPRS_RESPONSE,
                             .text = (const uint8_t *)o->command_reply,
                             .text_len = (uint32_t)text_len};
    int n = run.reply ? avl_encode_gprs(run.reply, text_len + 64, AVL_CODEC_12, &m, 1) : -1;
    if (n <= 0) {
        fprintf(stderr, "avlgate-loadgen: cannot encode the command reply\n");
        return 2;
    }
    run.reply_len = (size_t)n;
    if (o->command_log) {
        run.cmdlog = fopen(o->command_log, "a");
        if (!run.cmdlog) {
            fprintf(stderr, "avlgate-loadgen: --command-log %s: %s\n", o->command_log,
                    strerror(errno));
            return 2;
        }
    }
    run.nonce = mix64(wall_ns() ^ (uint64_t)getpid() << 32) & ((1u << VERIFY_NONCE_BITS) - 1);
    return 0;
}

/* The main thread's view of second k, once the workers have added to it. */
static struct sample take_second(int64_t k)
{
    struct sample smp = {.t_s = (double)(k + 1)};
    pthread_mutex_lock(&run.mu);
    struct sec_slot *s = &run.ring[(uint64_t)k % STATS_RING];
    if (s->sec == k) {
        s->final = true;
        smp.connected = s->connected;
        smp.packets = s->packets;
        smp.records = s->records;
        smp.errors = s->errors;
        smp.ack_p50_ms = ms_of(hist_quantile(&s->ack, 0.50));
        smp.ack_p99_ms = ms_of(hist_quantile(&s->ack, 0.99));
    }
    pthread_mutex_unlock(&run.mu);
    return smp;
}

int main(int argc, char **argv)
{
    int rc = parse_options(argc, argv, &run.o);
    if (rc)
        return rc;
    rc = setup();
    if (rc)
        return rc;
    const struct options *o = &run.o;

    /* SIGINT / SIGTERM end the run early (with the summary); the workers never see them. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_mutex_init(&run.mu, NULL);
    for (int i = 0; i < STATS_RING; i++)
        run.ring[i].sec = -1;
    run.workers = calloc(run.threads, sizeof *run.workers);
    if (!run.workers) {
        fprintf(stderr, "avlgate-loadgen: out of memory\n");
        return 1;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    pthread_barrier_init(&run.ready, NULL, run.threads + 1);
    pthread_barrier_init(&run.go, NULL, run.threads + 1);
    for (uint32_t t = 0; t < run.threads; t++) {
        struct worker *w = &run.workers[t];
        w->id = t;
        w->base = (uint32_t)((uint64_t)o->devices * t / run.threads);
        w->devs_len = (uint32_t)((uint64_t)o->devices * (t + 1) / run.threads) - w->base;
        /* Slack for slots still closing while their devices dial again. */
        uint64_t conns = (uint64_t)w->devs_len + w->devs_len / 8 + 64;
        if (conns > rl.rlim_cur)
            conns = rl.rlim_cur;
        if (worker_alloc(w, (uint32_t)conns) != 0) {
            fprintf(stderr, "avlgate-loadgen: out of memory for %u devices\n", w->devs_len);
            return 1;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            fprintf(stderr, "avlgate-loadgen: pthread_create: %s\n", strerror(errno));
            return 1;
        }
    }
    pthread_barrier_wait(&run.ready);
    bool failed = false;
    for (uint32_t t = 0; t < run.threads; t++) {
        if (run.workers[t].rc) {
            fprintf(stderr, "avlgate-loadgen: worker %u: %s\n", t, run.workers[t].err);
            failed = true;
        }
    }
    atomic_store(&run.abort, failed);
    run.t0_ns = engine_clock_ns();
    run.t0_wall_ms = wall_ns() / NS_PER_MS / 1000 * 1000;
    pthread_barrier_wait(&run.go);
    if (failed) {
        for (uint32_t t = 0; t < run.threads; t++) {
            pthread_join(run.workers[t].thread, NULL);
            engine_free(run.workers[t].e);
        }
        return 1;
    }
    if (o->progress)
        fprintf(stderr,
                "avlgate-loadgen: %u devices, %u threads, %u source addresses, %s pacing, "
                "target %s\n",
                o->devices, run.threads, run.src_ips, pacing_name(), o->target);

    /* Once a second: read the second that ended, print it, decide whether to stop. */
    size_t tl_cap = 64, tl_len = 0;
    struct sample *tl = malloc(tl_cap * sizeof *tl);
    uint64_t duration_ns = (uint64_t)(o->duration_s * 1e9), connected_max = 0;
    bool interrupted = false;
    for (int64_t k = 0;; k++) {
        uint64_t wake = run.t0_ns + (uint64_t)(k + 1) * NS_PER_S + FINALIZE_MS * NS_PER_MS;
        uint64_t end = duration_ns ? run.t0_ns + duration_ns : UINT64_MAX;
        bool ending = false;
        for (;;) {
            uint64_t now = engine_clock_ns();
            uint64_t until = wake < end ? wake : end;
            if (now >= until) {
                ending = now >= end;
                break;
            }
            if (atomic_load(&run.devices_done) >= o->devices) {
                ending = true;
                break;
            }
            uint64_t wait = until - now;
            if (wait > 50 * NS_PER_MS)
                wait = 50 * NS_PER_MS; /* also notices --packets being reached */
            struct timespec ts = {.tv_sec = (time_t)(wait / NS_PER_S),
                                  .tv_nsec = (long)(wait % NS_PER_S)};
            if (sigtimedwait(&stop_signals, NULL, &ts) > 0) {
                interrupted = ending = true;
                break;
            }
        }
        if (engine_clock_ns() < wake)
            break; /* the second is not over: its sample would be partial */
        struct sample smp = take_second(k);
        if (tl && tl_len == tl_cap) {
            struct sample *bigger = realloc(tl, 2 * tl_cap * sizeof *tl);
            if (bigger) {
                tl = bigger;
                tl_cap *= 2;
            }
        }
        if (tl && tl_len < tl_cap)
            tl[tl_len++] = smp;
        if (smp.connected > connected_max)
            connected_max = smp.connected;
        if (o->progress)
            fprintf(stderr,
                    "[%5.0fs] connected=%" PRIu64 " packets/s=%" PRIu64 " records/s=%" PRIu64
                    " ack_p50=%.2fms ack_p99=%.2fms errors=%" PRIu64 "\n",
                    smp.t_s, smp.connected, smp.packets, smp.records, smp.ack_p50_ms,
                    smp.ack_p99_ms, smp.errors);
        if (ending)
            break;
    }
    atomic_store(&run.stop, true);
    uint64_t t_end = engine_clock_ns();
    for (uint32_t t = 0; t < run.threads; t++)
        engine_stop(run.workers[t].e);
    struct summary s = {.elapsed_s = (double)(t_end - run.t0_ns) / 1e9, .connect_all_s = -1};
    uint64_t all_ns = 0;
    bool all = true;
    int exit_code = 0;
    for (uint32_t t = 0; t < run.threads; t++) {
        struct worker *w = &run.workers[t];
        pthread_join(w->thread, NULL);
        if (w->rc) {
            fprintf(stderr, "avlgate-loadgen: worker %u: %s\n", t, w->err);
            exit_code = 1;
        }
        counters_add(&s.c, &w->c);
        hist_merge(&s.ack, &w->ack);
        hist_merge(&s.connect, &w->connect);
        if (w->all_connected_ns == 0)
            all = false;
        else if (w->all_connected_ns > all_ns)
            all_ns = w->all_connected_ns;
    }
    if (all)
        s.connect_all_s = (double)(all_ns - run.t0_ns) / 1e9;
    s.connected_max = connected_max;
    s.connected_end = tl_len ? tl[tl_len - 1].connected : 0;
    if (s.connected_max == 0 && s.c.handshakes > 0)
        s.connected_max = 1; /* ran for less than a second */

    print_summary(stdout, &s, false);
    fputc('\n', stdout);
    fflush(stdout);
    if (interrupted)
        fprintf(stderr, "avlgate-loadgen: interrupted\n");
    if (run.cmdlog)
        fclose(run.cmdlog);

    struct verify_result vr, *vrp = NULL;
    if (o->verify) {
        uint32_t *acked = calloc(o->devices, sizeof *acked);
        uint32_t *sent = calloc(o->devices, sizeof *sent);
        char err[512] = "";
        if (!acked || !sent) {
            fprintf(stderr, "avlgate-loadgen: out of memory for verify\n");
            exit_code = 1;
        } else {
            for (uint32_t t = 0; t < run.threads; t++) {
                const struct worker *w = &run.workers[t];
                for (uint32_t di = 0; di < w->devs_len; di++) {
                    const struct dev *d = &w->devs[di];
                    acked[w->base + di] = d->rec_acked;
                    sent[w->base + di] =
                        d->rec_acked + ((d->flags & DF_ATTEMPTED) ? d->pkt_records : 0);
                }
            }
            if (verify_run(o->pg, o->imei_base, o->devices, run.nonce, acked, sent, &vr, err,
                           sizeof err) != 0) {
                fprintf(stderr, "avlgate-loadgen: %s\n", err);
                exit_code = 1;
            } else {
                vrp = &vr;
                printf("verify: acked=%" PRIu64 " stored=%" PRIu64 " missing=%" PRIu64
                       " duplicated=%" PRIu64 " unacked_stored=%" PRIu64 " unexpected=%" PRIu64
                       " %s\n",
                       vr.acked, vr.stored, vr.missing, vr.duplicated, vr.unacked_stored,
                       vr.unexpected, verify_ok(&vr) ? "OK" : "FAILED");
                if (!verify_ok(&vr))
                    exit_code = 1;
            }
        }
        free(acked);
        free(sent);
    }
    if (o->json) {
        int jr = write_json(o->json, &s, tl, tl_len, vrp);
        if (jr) {
            fprintf(stderr, "avlgate-loadgen: --json %s: %s\n", o->json, strerror(-jr));
            exit_code = 1;
        }
    }
    if (s.c.handshakes == 0) {
        fprintf(stderr, "avlgate-loadgen: no device connected\n");
        exit_code = 1;
    }
    if (s.c.malformed_acked > 0) {
        fprintf(stderr, "avlgate-loadgen: the gateway acknowledged %" PRIu64 " malformed packets\n",
                s.c.malformed_acked);
        exit_code = 1;
    }
    for (uint32_t t = 0; t < run.threads; t++) {
        engine_free(run.workers[t].e);
        worker_free(&run.workers[t]);
    }
    free(run.workers);
    free(run.reply);
    free(tl);
    return exit_code;
}
