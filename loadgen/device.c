/* device.c — loadgen's simulated trackers over TCP on one worker's engine (device.h): each
 * device's state machine, the connect queue, the packet arena, and the engine's callbacks; and
 * what a worker has on either transport: its sizing, its once-a-second publication and its ACK
 * latencies (udp.c has the UDP devices, timers.c the timers, records.c the packets' records).
 *
 * A device (struct dev, 40 bytes, and its timer's place) walks IDLE -> DIALING -> HANDSHAKE ->
 * READY <-> PACKET (-> DONE with --packets) and back to IDLE when its connection closes
 * (dev_drop / on_close: the one place a connection ends). It holds one packet in flight: the
 * next only after the ACK whose value equals the record count. A packet's bytes are not kept:
 * they are regenerated from (seed, device, packets acknowledged, records acknowledged), so a
 * packet re-sent after a reconnect is byte-identical, as a tracker's flash keeps it. While its
 * bytes are being written they live in a chunk of the worker's arena, sent by reference
 * (engine_send_ref); the chunk goes back when the last byte went (on_sent) or the connection
 * died.
 *
 * Invariants: a device is in the connect queue at most once (DF_QUEUED) and has at most one
 * timer; at most one reference per connection is pending (slotinfo.ref), so a command reply
 * never lands between the pieces of a packet; a chunk belongs to exactly one slot.
 *
 * Threads: everything here runs on the worker's own thread (its engine's callbacks), except
 * worker_init, worker_free and worker_device_records, which the main thread calls before the
 * worker's thread starts or after it ended. Workers share nothing on the hot path; once a
 * second each adds its interval to the fleet's timeline. */
#include "loadgen/device.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "codec/bytes.h"
#include "loadgen/records.h"

/* ---------------------------------------------------------------------------------------------
 * Limits
 * ------------------------------------------------------------------------------------------- */

enum {
    SERVER_FRAME_BYTES_MAX = 16384, /* the largest frame accepted from the gateway */
    CHUNKS_MAX = 8192,              /* packet buffers per worker */
    TIMERS_PER_TICK = 4096,         /* timers handled per loop turn, so I/O is never starved */
    SLOW_PIECE_BYTES_MAX = 32,      /* a slow device writes 4..32 bytes at a time */
    CMDLOG_TEXT_MAX = 512,
};

_Static_assert(SERVER_FRAME_BYTES_MAX >= OPTIONS_REPLY_TEXT_MAX + 64,
               "a reply fits a server frame");

/* ---------------------------------------------------------------------------------------------
 * Devices
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

_Static_assert(sizeof(struct dev) <= 40, "per-device state stays small");

enum ref_kind { REF_NONE = 0, REF_PACKET, REF_REPLY };

/* Per engine slot: whose connection it is, the chunk being written on it, the pending
 * reference. Outlives the connection until on_sent gave the reference back. */
struct slotinfo {
    uint32_t dev;
    uint32_t chunk; /* index + 1; 0: none */
    uint8_t ref;    /* enum ref_kind */
};

uint64_t counters_errors(const struct counters *c)
{
    uint64_t n = c->rejected + c->bad_ack + c->bad_frame + c->unexpected_close + c->ack_timeout +
                 c->handshake_timeout + c->malformed_acked + c->udp_bad_count_acks +
                 c->udp_send_errors;
    for (int k = 0; k < CE_KINDS; k++)
        n += c->connect_failed[k];
    return n;
}

void counters_add(struct counters *sum, const struct counters *c)
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
    sum->udp_datagrams += c->udp_datagrams;
    sum->udp_stale_acks += c->udp_stale_acks;
    sum->udp_bad_count_acks += c->udp_bad_count_acks;
    sum->udp_send_waits += c->udp_send_waits;
    sum->udp_send_errors += c->udp_send_errors;
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

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

/* The run is over: nothing new starts. */
static bool stopping(const struct worker *w)
{
    return atomic_load_explicit(&w->fleet->stop, memory_order_relaxed);
}

static uint32_t gidx(const struct worker *w, uint32_t di)
{
    return w->base + di;
}

/* Whether device g writes its packets a few bytes at a time (--slow): the same devices in
 * every run with the same seed. */
static bool dev_is_slow(const struct fleet *f, uint32_t g)
{
    return f->o.slow > 0 &&
           (double)(mix64(f->o.seed ^ UINT64_C(0x51077) ^ g) >> 11) * 0x1p-53 < f->o.slow;
}

/* ---------------------------------------------------------------------------------------------
 * The packet arena and the connect queue
 * ------------------------------------------------------------------------------------------- */

static uint8_t *chunk_ptr(struct worker *w, uint32_t chunk)
{
    assert(chunk > 0 && chunk <= w->chunks_len);
    return w->chunks + (size_t)(chunk - 1) * w->fleet->chunk_bytes;
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

/* Writes the device's packet in flight into out (cap bytes) as a TCP frame (records.h).
 * Returns the frame's bytes and *records, or an avl_err. */
static int make_packet(struct worker *w, uint32_t di, uint8_t *out, size_t cap, uint8_t *records)
{
    const struct dev *d = &w->devs[di];
    uint8_t codec;
    int n = records_make(w, gidx(w, di), d->pkt_acked, d->rec_acked, &codec);
    if (n < 0)
        return n;
    *records = (uint8_t)n;
    return avl_encode_tcp(out, cap, codec, w->pkt->recs, (size_t)n);
}

/* ---------------------------------------------------------------------------------------------
 * Device transitions
 * ------------------------------------------------------------------------------------------- */

static void dev_pump(struct worker *w, uint32_t di);

static uint64_t now_of(const struct worker *w)
{
    return engine_now_ns(w->e);
}

/* Exponential backoff with jitter: reconnect_ms doubling per consecutive failure, to 30 s. */
static uint64_t backoff_ns(struct worker *w, struct dev *d)
{
    unsigned shift = d->fails < 5 ? d->fails : 5;
    if (d->fails < UINT8_MAX)
        d->fails++;
    uint64_t ns = (uint64_t)w->fleet->o.reconnect_ms * NS_PER_MS << shift;
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
        timers_set(&w->timers, di, now_of(w) + delay_ns);
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
    const struct fleet *f = w->fleet;
    struct dev *d = &w->devs[di];
    assert(d->state == DEV_IDLE);
    struct sockaddr_in src = {.sin_family = AF_INET};
    uint32_t g = gidx(w, di);
    if (f->src_ips)
        src.sin_addr.s_addr = htonl(f->src_base + g % f->src_ips);
    int rc = engine_connect(w->e, (const struct sockaddr *)&f->dst, f->dst_len,
                            f->src_ips ? (const struct sockaddr *)&src : NULL, sizeof src, di);
    if (rc == -ENFILE) {
        /* Every slot is taken, some by connections still closing: try again shortly. */
        w->c.dial_slot_waits++;
        timers_set(&w->timers, di, now + NS_PER_MS);
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
    timers_cancel(&w->timers, di); /* the handshake's timeout */
    w->inflight--;
    w->connected++;
    w->c.handshakes++;
    d->fails = 0;
    hdr_hist_record(&w->connect, (now - d->t_ns) / 1000);
    if (!(d->flags & DF_EVER)) {
        d->flags |= DF_EVER;
        if (++w->ever == w->devs_len)
            w->all_connected_ns = now;
    }
    d->state = w->fleet->o.packets && d->pkt_acked >= w->fleet->o.packets ? DEV_DONE : DEV_READY;
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
        timers_set(&w->timers, di, now_of(w) + NS_PER_MS);
        return;
    }
    uint8_t *buf = chunk_ptr(w, chunk);
    uint8_t records = 0;
    int n = make_packet(w, di, buf, w->fleet->chunk_bytes, &records);
    assert(n > 0 && (uint32_t)n <= w->fleet->chunk_bytes);
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
        if (rnd_chance(w, w->fleet->o.malformed)) {
            d->flags |= DF_CORRUPT;
            w->c.malformed_sent++;
        }
    }
    if (d->flags & DF_CORRUPT)
        buf[n - 1] ^= 0x5A; /* the CRC's low byte */
    if (dev_is_slow(w->fleet, gidx(w, di))) {
        d->flags |= DF_SLOW;
        d->pieces_left = 0;
    } else {
        d->pieces_left = (uint8_t)(rnd_chance(w, w->fleet->o.fragment) ? 2 + rnd_below(w, 3) : 1);
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
    if ((d->state != DEV_READY && d->state != DEV_PACKET && d->state != DEV_DONE) || stopping(w))
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
        int rc = engine_send_ref(w->e, d->slot, d->gen, w->fleet->reply, w->fleet->reply_len);
        assert(rc == 0);
        (void)rc;
        si->ref = REF_REPLY;
        d->replies--;
        w->c.replies++;
        return;
    }
    if (d->state != DEV_READY || w->fleet->o.pacing == PACE_IDLE)
        return; /* --idle: connected and silent */
    uint64_t due = fleet_due_ns(w->fleet, gidx(w, di), d->pkt_acked);
    if (due > now_of(w)) {
        timers_set(&w->timers, di, due);
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
    worker_ack_latency(w, now_of(w), d->t_ns);
    w->c.packets_acked++;
    w->c.records_acked += value;
    d->pkt_acked++;
    d->rec_acked += value;
    d->pkt_records = 0;
    d->pkt_bytes = d->write_off = 0;
    d->flags &= (uint8_t) ~(DF_ATTEMPTED | DF_SLOW);
    timers_cancel(&w->timers, di); /* the ACK timeout */
    if (w->fleet->o.packets && d->pkt_acked >= w->fleet->o.packets) {
        d->state = DEV_DONE;
        atomic_fetch_add_explicit(&w->fleet->devices_done, 1, memory_order_relaxed);
    } else {
        d->state = DEV_READY;
    }
    dev_pump(w, di);
    return true;
}

/* Writes one command-log line: wall-clock ns, IMEI, the command with bytes outside printable
 * ASCII (and the backslash) as \xNN. */
static void log_command(const struct fleet *f, uint32_t g, const uint8_t *text, uint32_t len)
{
    char line[64 + 4 * CMDLOG_TEXT_MAX];
    int n =
        snprintf(line, sizeof line, "%" PRIu64 " %015" PRIu64 " ", wall_ns(), f->o.imei_base + g);
    for (uint32_t i = 0; i < len && i < CMDLOG_TEXT_MAX; i++) {
        uint8_t c = text[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            line[n++] = (char)c;
        else
            n += snprintf(line + n, sizeof line - (size_t)n, "\\x%02x", c);
    }
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, f->cmdlog); /* stdio locks the stream: lines stay whole */
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
        if (w->fleet->cmdlog)
            log_command(w->fleet, gidx(w, di), m->text, m->text_len);
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
            rnd_chance(w, w->fleet->o.storm_fraction)) {
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
    int n = avl_encode_imei(hs, sizeof hs, w->fleet->o.imei_base + gidx(w, di));
    assert(n > 0);
    int rc = engine_send(w->e, slot, gen, hs, (size_t)n);
    assert(rc == 0);
    (void)rc;
    if (w->fleet->ack_timeout_ns)
        timers_set(&w->timers, di, now_of(w) + w->fleet->ack_timeout_ns);
}

static void lg_on_connect_failed(void *app, struct engine *e, uint64_t key, int err)
{
    struct worker *w = app;
    (void)e;
    uint32_t di = (uint32_t)key;
    struct dev *d = &w->devs[di];
    assert(di < w->devs_len && d->state == DEV_DIALING && w->inflight > 0);
    w->inflight--;
    if (err == -ECANCELED || stopping(w)) {
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
    timers_cancel(&w->timers, di);
    enum cause cause = (enum cause)d->cause;
    d->cause = CAUSE_NONE;
    bool corrupt = was == DEV_PACKET && (d->flags & DF_CORRUPT);
    d->flags &= (uint8_t) ~(DF_CORRUPT | DF_PIECE_WAIT | DF_SLOW);
    d->pkt_bytes = d->write_off = 0; /* the packet is regenerated for the re-send */
    d->replies = 0;                  /* commands of a dead connection die with it */
    if (reason == ENGINE_CLOSE_SHUTDOWN || stopping(w)) {
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
                if (w->fleet->ack_timeout_ns)
                    timers_set(&w->timers, di, now + w->fleet->ack_timeout_ns);
            }
        } else {
            /* The next piece after a pause: ~1 s in all for a slow device, 1..20 ms between
             * the pieces of a fragmented one. */
            uint64_t delay = d->flags & DF_SLOW
                                 ? NS_PER_S * (SLOW_PIECE_BYTES_MAX / 2 + 2) / d->pkt_bytes
                                 : (1 + rnd_below(w, 20)) * NS_PER_MS;
            d->flags |= DF_PIECE_WAIT;
            timers_set(&w->timers, di, now + delay);
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

void worker_ack_latency(struct worker *w, uint64_t now, uint64_t sent_ns)
{
    uint64_t us = now > sent_ns ? (now - sent_ns) / 1000 : 0;
    /* The run's percentiles leave out the warm-up (connections, first state loads); the
     * per-second timeline keeps everything. */
    if (now >= w->fleet->t0_ns + w->fleet->warmup_ns)
        hdr_hist_record(&w->ack, us);
    hdr_hist_record(&w->ack_sec, us);
}

void worker_publish(struct worker *w, uint64_t now)
{
    uint64_t k = (now - w->fleet->t0_ns) / NS_PER_S; /* the interval now runs in */
    int64_t sec = (int64_t)k - 1;                    /* the one that ended */
    struct timeline_counts n = {
        .connected = w->connected,
        .packets = w->c.packets_acked - w->c_pub.packets_acked,
        .records = w->c.records_acked - w->c_pub.records_acked,
        .errors = counters_errors(&w->c) - counters_errors(&w->c_pub),
    };
    timeline_add(&w->fleet->timeline, sec, &n, &w->ack_sec);
    hdr_hist_reset(&w->ack_sec);
    w->c_pub = w->c;
    w->next_pub_ns = w->fleet->t0_ns + (k + 1) * NS_PER_S;
}

static uint64_t lg_on_tick(void *app, struct engine *e, uint64_t now)
{
    struct worker *w = app;
    (void)e;
    if (stopping(w))
        return 0;
    unsigned fired = 0;
    uint32_t due;
    while (fired < TIMERS_PER_TICK && timers_pop_due(&w->timers, now, &due)) {
        dev_timer(w, due);
        fired++;
    }
    if (w->fleet->storm_every_ns && now >= w->next_storm_ns) {
        storm(w);
        w->next_storm_ns += w->fleet->storm_every_ns;
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
        worker_publish(w, now);

    uint64_t next = w->next_pub_ns;
    if (fired == TIMERS_PER_TICK)
        next = now; /* more timers are due: come back at once */
    else if (timers_next_ns(&w->timers) < next)
        next = timers_next_ns(&w->timers);
    if (w->fleet->storm_every_ns && w->next_storm_ns < next)
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
 * The worker: sizing, start, results
 * ------------------------------------------------------------------------------------------- */

static void *map_bytes(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* The token bucket of --connect-rate and the dials in progress, the fleet's shared out. */
static void worker_connect_limits(struct worker *w)
{
    const struct fleet *f = w->fleet;
    w->inflight_max = f->o.connect_inflight / f->threads;
    if (w->inflight_max == 0)
        w->inflight_max = 1;
    if (f->o.connect_rate > 0) {
        w->tokens_per_ns = f->o.connect_rate / f->threads / 1e9;
        w->tokens_max = fmax(1.0, f->o.connect_rate / f->threads / 20); /* 50 ms of burst */
        w->tokens = 1.0;
    }
}

/* The TCP devices' tables: devices, connect queue, slots, the packet arena. */
static int worker_init_tcp(struct worker *w, uint32_t conns_max)
{
    w->slots_len = conns_max;
    w->chunks_len = w->devs_len < CHUNKS_MAX ? w->devs_len : CHUNKS_MAX;
    w->devs = calloc(w->devs_len, sizeof *w->devs);
    w->cq = calloc(w->devs_len, sizeof *w->cq);
    w->slots = calloc(conns_max, sizeof *w->slots);
    w->chunk_free = calloc(w->chunks_len, sizeof *w->chunk_free);
    w->chunks = map_bytes((size_t)w->chunks_len * w->fleet->chunk_bytes); /* touched as used */
    if (!w->devs || !w->cq || !w->slots || !w->chunk_free || !w->chunks)
        return -ENOMEM;
    for (uint32_t i = 0; i < w->chunks_len; i++)
        w->chunk_free[i] = w->chunks_len - i; /* chunk 1 first */
    w->chunk_free_len = w->chunks_len;
    worker_connect_limits(w);
    return 0;
}

int worker_init(struct worker *w, struct fleet *f, unsigned id, uint32_t base, uint32_t devs_len,
                uint32_t conns_max)
{
    w->id = id;
    w->fleet = f;
    w->base = base;
    w->devs_len = devs_len;
    w->pkt = malloc(sizeof *w->pkt);
    w->templates = calloc(DEVICE_TEMPLATES, sizeof *w->templates);
    if (timers_init(&w->timers, w->devs_len) != 0 || !w->pkt || !w->templates)
        return -ENOMEM;
    for (uint32_t k = 0; k < DEVICE_TEMPLATES; k++)
        pktgen_init(&w->templates[k], mix64(f->o.seed ^ UINT64_C(0x7E47) ^ k));
    w->rnd = mix64(f->o.seed ^ UINT64_C(0xA11CE) ^ w->id) | 1;
    return f->o.udp ? 0 : worker_init_tcp(w, conns_max); /* udp_init makes the UDP ones */
}

void worker_free(struct worker *w)
{
    free(w->devs);
    timers_free(&w->timers);
    free(w->cq);
    free(w->slots);
    free(w->chunk_free);
    if (w->chunks)
        munmap(w->chunks, (size_t)w->chunks_len * w->fleet->chunk_bytes);
    free(w->pkt);
    free(w->templates);
}

int worker_engine_init(struct worker *w)
{
    struct engine_config cfg = {
        .shard = w->id,
        .shards = w->fleet->threads,
        .listen = false,
        .conns_max = w->slots_len,
        .connect_timeout_ms = (uint32_t)(w->fleet->o.connect_timeout_s * 1000),
        .bufs = 4096,
        .buf_bytes = 256,
        .reasm_bytes_max = 64 * (SERVER_FRAME_BYTES_MAX + 2 * 256),
        .frame_bytes_max = SERVER_FRAME_BYTES_MAX,
        .frame_timeout_ms = 30000,
        .sq_entries = 4096,
        .dial_reset_on_close = true,
        .ops = &lg_ops,
        .app = w,
    };
    return engine_init(&w->e, &cfg, w->err, sizeof w->err);
}

void worker_start(struct worker *w)
{
    const struct fleet *f = w->fleet;
    /* The first connections: spread over --ramp-s, or all queued at once. */
    uint64_t ramp_ns = (uint64_t)(f->o.ramp_s * 1e9);
    for (uint32_t di = 0; di < w->devs_len; di++) {
        if (ramp_ns)
            timers_set(&w->timers, di,
                       f->t0_ns + (uint64_t)((double)ramp_ns * gidx(w, di) / f->o.devices));
        else
            cq_push(w, di);
    }
    w->next_pub_ns = f->t0_ns + NS_PER_S;
    w->next_storm_ns = f->t0_ns + f->storm_every_ns;
    w->tokens_ns = f->t0_ns;
}

void worker_device_records(const struct worker *w, uint32_t di, uint32_t *acked, uint32_t *sent)
{
    const struct dev *d = &w->devs[di];
    *acked = d->rec_acked;
    *sent = d->rec_acked + ((d->flags & DF_ATTEMPTED) ? d->pkt_records : 0);
}
