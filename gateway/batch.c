/* batch.c — the row ring of a gateway shard (batch.h). The shard's thread only.
 *
 * The life of a packet: shard.c's on_data decodes it in place and hands it to batch_take, which
 * drops the records the device already sent (its duplicate window, dedup.h), encodes the rest as
 * COPY BINARY tuples straight into the filling batch and notes (slot, generation, record count)
 * for the ACK. A batch is sealed at batch_rows, or once it is batch_ms old and nothing is ahead
 * of it (no transaction in flight or sealed and waiting: group commit, so a slow commit makes
 * the next transaction larger, not the queue longer), and committed as one transaction with
 * the device_state rows of its devices. On COMMIT every packet of the batch is acknowledged with
 * its full record count, duplicates included.
 *
 * Each batch keeps a snapshot of the window of every device it holds, so a device that
 * reconnects while its packets wait in uncommitted batches starts from that snapshot, not from
 * the older one in the database (batch_pending_dedup).
 *
 * Outcomes of a batch: committed -> ACK; not committed -> sent again (in order); unknown ->
 * never sent again: every batch still held is dropped unacknowledged and the connections of
 * their devices closed, so each device reloads its state from the database and re-sends; data
 * error -> the batch is split into one transaction per packet, the packets the database
 * rejects are refused with a counted reason and their connections closed.
 *
 * Timeouts (--txn-timeout-ms, N). Every transaction runs with SET LOCAL statement_timeout = N
 * (pgsink_txn): a statement that waits longer (most often for a device_state row that another
 * session holds locked) is cancelled by the server and the batch comes back not committed with
 * timed_out. One device's locked row must not hold the whole shard, so the batch is retried
 * split, as after a data error, now with lock_timeout = N/10 as well (a split transaction of a
 * locked device fails fast, so the packets behind it wait N + N/10 + their own transactions,
 * not 2N). A packet whose split transaction also times out is deferred: handled exactly like a
 * refused one (not acknowledged, its fingerprints forgotten, its connection and the device's
 * current one closed, so the device reloads its state and re-sends later), counted as
 * packets_deferred, and its device remembered (struct deferral): while deferred, the device's
 * new packets are refused at batch_take (the connection closed, nothing taken) and its packets
 * already held in later batches are deferred untried (such a batch goes split at submit), so
 * its re-sends do not stall the shard again. The deferral lasts N, doubling at each new
 * timeout up to DEFER_BACKOFF_MAX_MS, and ends when a packet of the device commits: after the
 * lock is released its re-sent packet commits once (its window, as for a refused packet, does
 * not hold the deferred records). When SPLIT_TIMEOUTS_MAX split transactions in a row time
 * out, the database itself is stalled rather than one device's rows: the rest of the batch is
 * deferred untried, so a batch costs at most N + SPLIT_TIMEOUTS_MAX x N (x N/10 when what
 * they wait for is a lock), not N per packet. What the server's timer does not cover (COMMIT
 * waiting for a synchronous standby, a server that stopped answering) the sink's client-side
 * timeout bounds (ingest.c: 2N + 1 s): the link is dropped and the outcome is unknown (above). */
#include "gateway/batch.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "gateway/delivery.h"
#include "gateway/log.h"
#include "gateway/session.h"
#include "gateway/tags.h"

/* ---------------------------------------------------------------------------------------------
 * One batch
 * ------------------------------------------------------------------------------------------- */

static void batch_reset(struct batch *b)
{
    b->state = BATCH_FREE;
    b->copy_len = COPYENC_HEADER_BYTES;
    b->rows = 0;
    b->pkts_len = 0;
    b->fps_len = 0;
    b->devs_len = 0;
    b->split = false;
    b->split_next = 0;
    b->split_timeouts = 0;
    memset(b->dev_map, 0, ((size_t)b->dev_map_mask + 1) * sizeof *b->dev_map);
}

/* Makes a free batch the one being filled. */
static void batch_open(struct batches *r, struct batch *b)
{
    assert(b->state == BATCH_FREE && b->pkts_len == 0);
    b->state = BATCH_FILLING;
    b->seq = r->next_seq++;
    b->opened_ns = 0;
    b->sealed_ns = 0;
}

static int batch_alloc(const struct ingest_config *c, struct batch *b)
{
    /* Room for batch_rows typical rows, and always for one packet of the largest frame or
     * datagram (copyenc_row_bytes_max sums to at most COPYENC_ROW_BYTES_PER_WIRE_BYTE x its
     * bytes plus COPYENC_ROW_BYTES_FIXED_MAX per record): an empty batch takes any packet. */
    uint32_t packet_max =
        c->udp_bytes_max > c->frame_bytes_max ? c->udp_bytes_max : c->frame_bytes_max;
    b->copy_cap = (size_t)c->batch_rows * ROW_BYTES_PLANNED +
                  (size_t)COPYENC_ROW_BYTES_PER_WIRE_BYTE * packet_max +
                  (size_t)AVL_RECORDS_MAX * COPYENC_ROW_BYTES_FIXED_MAX + COPYENC_HEADER_BYTES +
                  COPYENC_TRAILER_BYTES;
    b->pkts_cap = c->batch_rows;
    b->fps_cap = c->batch_rows + AVL_RECORDS_MAX; /* as many as rows can be */
    b->devs_cap = c->batch_rows;
    uint32_t map = 1;
    while (map < 2 * b->devs_cap)
        map <<= 1;
    b->dev_map_mask = map - 1;
    b->params_cap = (size_t)b->devs_cap * DEV_PARAM_BYTES + STATE_FIXED_BYTES;
    assert(b->params_cap <= INT_MAX); /* a parameter's length is an int */
    b->copy = malloc(b->copy_cap);
    b->pkts = calloc(b->pkts_cap, sizeof *b->pkts);
    b->replies = c->udp ? calloc(b->pkts_cap, sizeof *b->replies) : NULL;
    b->fps = calloc(b->fps_cap, sizeof *b->fps);
    b->devs = calloc(b->devs_cap, sizeof *b->devs);
    b->dev_map = calloc(map, sizeof *b->dev_map);
    b->params_buf = malloc(b->params_cap);
    if (!b->copy || !b->pkts || !b->fps || !b->devs || !b->dev_map || !b->params_buf ||
        (c->udp && !b->replies))
        return -ENOMEM;
    copyenc_header(b->copy);
    batch_reset(b);
    return 0;
}

static void batch_free(struct batch *b)
{
    free(b->copy);
    free(b->pkts);
    free(b->replies);
    free(b->fps);
    free(b->devs);
    free(b->dev_map);
    free(b->params_buf);
}

/* The batch's entry for imei, created if missing; NULL when the batch holds no more devices. */
static struct bdev *batch_dev(struct batch *b, uint64_t imei, uint32_t *index)
{
    uint32_t i = (uint32_t)XXH3_64bits(&imei, sizeof imei) & b->dev_map_mask;
    for (;; i = (i + 1) & b->dev_map_mask) {
        uint32_t at = b->dev_map[i];
        if (at == 0)
            break;
        if (b->devs[at - 1].imei == imei) {
            *index = at - 1;
            return &b->devs[at - 1];
        }
    }
    if (b->devs_len == b->devs_cap)
        return NULL;
    struct bdev *d = &b->devs[b->devs_len];
    memset(d, 0, sizeof *d);
    d->imei = imei;
    d->last_ts_ms = -1;
    b->dev_map[i] = ++b->devs_len;
    *index = b->devs_len - 1;
    return d;
}

/* The batch's entry for imei, or NULL (the entries live outside the struct: not const). */
static struct bdev *batch_find_dev(const struct batch *b, uint64_t imei)
{
    for (uint32_t i = (uint32_t)XXH3_64bits(&imei, sizeof imei) & b->dev_map_mask;;
         i = (i + 1) & b->dev_map_mask) {
        uint32_t at = b->dev_map[i];
        if (at == 0)
            return NULL;
        if (b->devs[at - 1].imei == imei)
            return &b->devs[at - 1];
    }
}

/* Closes the COPY stream; the state parameters are built when the batch is submitted. */
static void batch_seal(struct batch *b)
{
    assert(b->state == BATCH_FILLING && b->pkts_len > 0);
    assert(b->copy_len + COPYENC_TRAILER_BYTES <= b->copy_cap);
    copyenc_trailer(b->copy + b->copy_len);
    b->state = BATCH_SEALED;
}

/* ---------------------------------------------------------------------------------------------
 * The state statement's parameters
 * ------------------------------------------------------------------------------------------- */

/* A device's dedup as one bytea element: its fingerprints oldest first, each big-endian (the
 * order dedup_from_text reads back from device_state_get's hex). */
static uint8_t *put_dedup(uint8_t *o, const struct dedup *d)
{
    o = pgsink_array_elem(o, 8u * d->len);
    for (unsigned k = 0; k < d->len; k++)
        o = pgsink_put_be64(o, dedup_at(d, k));
    return o;
}

/* The parameter formats build_state_params writes: the instance stays text (it is already a
 * string, and text's binary form is the same bytes), the rest binary. */
static const int state_formats[STATE_PARAMS] = {
    PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY,
    PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY,
    PGSINK_FORMAT_TEXT,   PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY,
};

/* One element of array column col (imei, last_ts, received, lon, lat, dedup, owner) for device d; a
 * is the array's header (for a NULL element). */
static uint8_t *put_state_elem(uint8_t *a, uint8_t *o, int col, const struct bdev *d)
{
    bool stored = d->last_ts_ms >= 0;
    switch (col) {
    case 0:
        assert(d->imei <= (uint64_t)INT64_MAX);
        return pgsink_array_int8(o, (int64_t)d->imei);
    case 1:
        return stored ? pgsink_array_int8(o, d->last_ts_ms) : pgsink_array_null(a, o);
    case 2:
        return pgsink_array_int8(o, d->received_ms);
    case 3:
        return stored ? pgsink_array_int4(o, d->lon_e7) : pgsink_array_null(a, o);
    case 4:
        return stored ? pgsink_array_int4(o, d->lat_e7) : pgsink_array_null(a, o);
    case 5:
        return put_dedup(o, &d->dedup);
    default:
        return pgsink_array_int8(o, d->owner);
    }
}

/* Writes the state statement's parameters for devs[0 .. n-1] into buf (cap bytes, at least
 * n * DEV_PARAM_BYTES + STATE_FIXED_BYTES): the six arrays and the shard in binary, the
 * instance as text (state_formats); values and lengths point into buf and at the config.
 * A device without a stored record in the batch (last_ts_ms < 0) has NULL last_ts, lon and
 * lat, and an empty dedup is an empty bytea, not NULL: as the text arrays were. */
static void build_state_params(const struct shard *s, const struct bdev *devs, uint32_t n,
                               uint8_t *buf, size_t cap, const char *params[STATE_PARAMS],
                               int lengths[STATE_PARAMS])
{
    static const uint32_t oids[7] = {PGSINK_OID_INT8, PGSINK_OID_INT8, PGSINK_OID_INT8,
                                     PGSINK_OID_INT4, PGSINK_OID_INT4, PGSINK_OID_BYTEA,
                                     PGSINK_OID_INT8};
    static const int param_of_col[7] = {0, 1, 2, 3, 4, 5, 8}; /* the owners come last */
    assert(n > 0 && (size_t)n * DEV_PARAM_BYTES + STATE_FIXED_BYTES <= cap);
    /* Each array is written in one pass over the devices; the regions follow each other. */
    uint8_t *o = buf;
    for (int col = 0; col < 7; col++) {
        uint8_t *a = o;
        o = pgsink_array_begin(o, oids[col], n);
        for (uint32_t i = 0; i < n; i++)
            o = put_state_elem(a, o, col, &devs[i]);
        params[param_of_col[col]] = (const char *)a;
        lengths[param_of_col[col]] = (int)(o - a);
    }
    params[6] = s->cfg->instance;
    lengths[6] = 0;
    params[7] = (const char *)o;
    o = pgsink_put_be32(o, s->id);
    lengths[7] = 4;
    assert((size_t)(o - buf) <= cap);
    (void)cap;
}

/* ---------------------------------------------------------------------------------------------
 * ACKs and the ring
 * ------------------------------------------------------------------------------------------- */

/* A datagram's ACK (7 bytes, to the address it came from), while its device's slot still
 * stands for the device that sent it: a device closed since (its packet refused, deferred or
 * its outcome unknown) re-sends, as a connection closed does. */
static int ack_datagram(struct shard *s, const struct pkt_ref *p, const struct udp_reply *r)
{
    const struct dev *d = session_dev(s, p->slot);
    if (d->gen != p->gen || !dev_owned(d))
        return -ESTALE;
    uint8_t ack[AVL_UDP_ACK_BYTES];
    avl_encode_udp_ack(ack, r->packet_id, r->avl_packet_id, (uint8_t)p->records);
    int rc = engine_udp_send(s->e, (const struct sockaddr *)&r->to, r->to_len, ack, sizeof ack);
    if (rc == 0)
        stat_add(&s->st->udp_acked, 1);
    return rc;
}

/* Where an acknowledged packet's time went: in the filling batch, sealed and waiting for the
 * sink, in its transaction, in all (ACK queued now; the engine submits it this loop turn). */
static void observe_stages(struct shard *s, const struct batch *b, const struct pkt_ref *p)
{
    uint64_t now = engine_now_ns(s->e);
    struct ingest_stats *st = s->st;
    uint64_t sealed = b->sealed_ns > p->taken_ns ? b->sealed_ns : p->taken_ns;
    uint64_t submitted = b->submitted_ns > sealed ? b->submitted_ns : sealed;
    prom_hist_observe(&st->stage_fill, (sealed - p->taken_ns) / 1000u);
    prom_hist_observe(&st->stage_queue, (submitted - sealed) / 1000u);
    prom_hist_observe(&st->stage_commit, (now - submitted) / 1000u);
    prom_hist_observe(&st->ack_latency, (now - p->taken_ns) / 1000u);
}

/* Acknowledges one committed packet (batch b's i-th) with its full record count. */
static void ack_packet(struct shard *s, const struct batch *b, uint32_t i)
{
    const struct pkt_ref *p = &b->pkts[i];
    int rc;
    if (p->udp) {
        rc = ack_datagram(s, p, &b->replies[i]);
    } else {
        uint8_t ack[AVL_TCP_ACK_BYTES];
        avl_encode_tcp_ack(ack, p->records);
        rc = engine_send(s->e, p->slot, p->gen, ack, sizeof ack);
    }
    if (rc != 0) {
        stat_add(&s->st->acks_stale, 1); /* the connection is gone: the device re-sends, we dedup */
        return;
    }
    stat_add(&s->st->packets_acked, 1);
    observe_stages(s, b, p);
    struct dev *d = session_dev(s, p->slot);
    if (d->gen == p->gen && d->unacked > 0 && --d->unacked == 0 && !session_is_udp(s, p->slot))
        delivery_on_acked(s, p->slot); /* a command may go now, after the ACK */
}

static void ack_batch(struct shard *s, struct batch *b)
{
    for (uint32_t i = 0; i < b->pkts_len; i++)
        if (!b->pkts[i].rejected)
            ack_packet(s, b, i);
}

/* A batch came free: the connections paused for room may go on. */
static void resume_if_paused(struct shard *s)
{
    if (s->paused) {
        s->paused = false;
        engine_resume(s->e);
        delivery_on_resume(s);
    }
}

static void batch_release(struct shard *s, struct batch *b)
{
    struct batches *r = s->ring;
    batch_reset(b);
    while (r->batches[r->oldest].state == BATCH_FREE && r->oldest != r->fill)
        r->oldest = (r->oldest + 1) % r->nbatches;
    resume_if_paused(s);
}

static struct batch *filling(struct batches *r)
{
    return &r->batches[r->fill];
}

/* Seals the filling batch (at now_ns) and opens the next; false when there is no free batch. */
static bool rotate(struct batches *r, uint64_t now_ns)
{
    uint32_t next = (r->fill + 1) % r->nbatches;
    if (r->batches[next].state != BATCH_FREE)
        return false;
    filling(r)->sealed_ns = now_ns;
    batch_seal(filling(r));
    r->fill = next;
    batch_open(r, filling(r));
    return true;
}

/* imei's entry in the newest uncommitted batch that holds it (under token *owner only, when
 * owner is not NULL), or NULL. */
static const struct bdev *newest_pending(const struct shard *s, uint64_t imei,
                                         const uint64_t *owner)
{
    const struct batches *r = s->ring;
    const struct bdev *best = NULL;
    for (uint32_t k = 0, i = r->oldest; k < r->nbatches; k++, i = (i + 1) % r->nbatches) {
        const struct batch *b = &r->batches[i];
        const struct bdev *d = b->state == BATCH_FREE ? NULL : batch_find_dev(b, imei);
        if (d && (!owner || (uint64_t)d->owner == *owner))
            best = d; /* later batches are newer */
    }
    return best;
}

const struct dedup *batch_pending_dedup(const struct shard *s, uint64_t imei, uint64_t owner)
{
    const struct bdev *d = newest_pending(s, imei, &owner);
    return d ? &d->dedup : NULL;
}

uint64_t batch_pending_owner(const struct shard *s, uint64_t imei)
{
    const struct bdev *d = newest_pending(s, imei, NULL);
    return d ? (uint64_t)d->owner : 0;
}

bool batch_holding(const struct shard *s)
{
    const struct batches *r = s->ring;
    bool held = false;
    for (uint32_t i = 0; i < r->nbatches; i++)
        held |= r->batches[i].state != BATCH_FREE && r->batches[i].state != BATCH_FILLING;
    return held || r->batches[r->fill].pkts_len > 0;
}

uint32_t batch_busy(const struct shard *s)
{
    const struct batches *r = s->ring;
    uint32_t busy = 0;
    for (uint32_t i = 0; i < r->nbatches; i++)
        busy += r->batches[i].state != BATCH_FREE &&
                (r->batches[i].state != BATCH_FILLING || r->batches[i].pkts_len > 0);
    return busy;
}

/* ---------------------------------------------------------------------------------------------
 * Deferred devices
 * ------------------------------------------------------------------------------------------- */

static struct deferral *deferral_find(struct batches *r, uint64_t imei)
{
    for (uint32_t i = 0; i < r->deferred_len; i++)
        if (r->deferred[i].imei == imei)
            return &r->deferred[i];
    return NULL;
}

/* Whether imei's packets are refused now (cheap when no device is deferred). */
static bool deferred_now(const struct shard *s, uint64_t imei)
{
    struct batches *r = s->ring;
    if (r->deferred_len == 0)
        return false;
    const struct deferral *d = deferral_find(r, imei);
    return d && shard_now_ms(s) < d->until_ms;
}

/* imei's transaction timed out (again): its packets are refused for the next backoff, which
 * starts at the timeout and doubles. When the table is full, the entry that ends first makes
 * room. */
static void deferral_strike(struct shard *s, uint64_t imei)
{
    struct batches *r = s->ring;
    struct deferral *d = deferral_find(r, imei);
    if (d) {
        d->backoff_ms =
            d->backoff_ms >= DEFER_BACKOFF_MAX_MS / 2 ? DEFER_BACKOFF_MAX_MS : 2 * d->backoff_ms;
    } else {
        if (r->deferred_len < DEFERRALS_MAX) {
            d = &r->deferred[r->deferred_len++];
        } else {
            d = &r->deferred[0];
            for (uint32_t i = 1; i < DEFERRALS_MAX; i++)
                if (r->deferred[i].until_ms < d->until_ms)
                    d = &r->deferred[i];
        }
        uint32_t base = s->cfg->txn_timeout_ms ? s->cfg->txn_timeout_ms : 1000;
        *d = (struct deferral){
            .imei = imei, .backoff_ms = base < DEFER_BACKOFF_MAX_MS ? base : DEFER_BACKOFF_MAX_MS};
    }
    d->until_ms = shard_now_ms(s) + d->backoff_ms;
}

/* A packet of imei committed: its rows are writable again. */
static void deferral_clear(struct batches *r, uint64_t imei)
{
    struct deferral *d = r->deferred_len ? deferral_find(r, imei) : NULL;
    if (d)
        *d = r->deferred[--r->deferred_len];
}

/* Whether b holds a packet of a device deferred now (taken before its deferral). */
static bool holds_deferred(const struct shard *s, const struct batch *b)
{
    if (s->ring->deferred_len == 0)
        return false;
    for (uint32_t i = 0; i < b->devs_len; i++)
        if (deferred_now(s, b->devs[i].imei))
            return true;
    return false;
}

/* A packet of imei is deferred (why: timed_out, device_deferred, database_stalled). */
static void count_deferred(struct shard *s, uint64_t imei, const char *why)
{
    stat_add(&s->st->packets_deferred, 1);
    log_limited(&s->ring->log_deferred, shard_now_ms(s), LOG_WARN,
                "packet deferred: its rows could not be written in time",
                "shard=%u imei=%" PRIu64 " reason=%s", s->id, imei, why);
}

/* ---------------------------------------------------------------------------------------------
 * Outcomes
 * ------------------------------------------------------------------------------------------- */

/* The database refused packet p of batch b: its records were never stored, so no state may
 * say they were. Take p's fingerprints out of every snapshot of the device taken after p — in
 * b and in later batches (their parameters are built at submit) — so neither a split
 * transaction nor a reconnecting device (batch_pending_dedup) counts them; the live session is
 * closed (session_close_owner). Only snapshots under p's owner token: one under a newer token
 * started from the database after a takeover, and the same records in it were taken again (and
 * will be stored) by then. */
static void forget_refused(struct shard *s, const struct batch *b, const struct pkt_ref *p)
{
    struct batches *r = s->ring;
    uint64_t imei = b->devs[p->dev].imei;
    int64_t owner = b->devs[p->dev].owner;
    uint32_t from = (uint32_t)(b - r->batches);
    /* k = 0 is b itself: a device that reconnects now takes its state from there. */
    for (uint32_t k = 0; k < r->nbatches; k++) {
        struct batch *later = &r->batches[(from + k) % r->nbatches];
        if (later->state == BATCH_FREE)
            continue;
        struct bdev *d = batch_find_dev(later, imei);
        if (d && d->owner == owner)
            dedup_remove(&d->dedup, b->fps + p->fp_off, p->fp_len);
    }
}

/* A batch holding devs[0 .. n-1] committed: loads of them in flight are asked again. */
static void mark_loads_stale(struct shard *s, const struct bdev *devs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        session_mark_load_stale(s, devs[i].imei);
}

/* In split mode, the packet just settled: on to the next, or the batch is done. */
static void split_advance(struct shard *s, struct batch *b)
{
    b->split_next++;
    if (b->split_next < b->pkts_len)
        b->state = BATCH_SEALED;
    else
        batch_release(s, b);
}

static void on_committed(struct shard *s, struct batch *b)
{
    prom_hist_observe(&s->st->copy_latency, (engine_now_ns(s->e) - b->submitted_ns) / 1000u);
    if (b->split) {
        /* One packet of a split batch committed. */
        struct pkt_ref *p = &b->pkts[b->split_next];
        ack_packet(s, b, b->split_next);
        p->rejected = true; /* done: never again */
        b->split_timeouts = 0;
        deferral_clear(s->ring, b->devs[p->dev].imei);
        mark_loads_stale(s, &b->devs[p->dev], 1);
        split_advance(s, b);
        return;
    }
    stat_add(&s->st->batches_committed, 1);
    stat_add(&s->st->rows_committed, b->rows);
    for (uint32_t i = 0; s->ring->deferred_len > 0 && i < b->devs_len; i++)
        deferral_clear(s->ring, b->devs[i].imei);
    mark_loads_stale(s, b->devs, b->devs_len);
    ack_batch(s, b);
    batch_release(s, b);
}

/* After an unknown outcome: nothing held may be sent any more (its device states may include
 * the unknown batch's records). Drop every batch unacknowledged and close the connections of
 * their devices; each reloads its state from the database when it reconnects. */
static void abandon_all(struct shard *s)
{
    struct batches *r = s->ring;
    for (uint32_t i = 0; i < r->nbatches; i++) {
        struct batch *b = &r->batches[i];
        if (b->state == BATCH_FREE)
            continue;
        for (uint32_t k = 0; k < b->pkts_len; k++)
            session_close(s, b->pkts[k].slot, b->pkts[k].gen);
        /* Also a replacing connection that took its state from this batch (pending snapshot). */
        for (uint32_t k = 0; k < b->devs_len; k++)
            session_close_owner(s, b->devs[k].imei, (uint64_t)b->devs[k].owner);
        batch_reset(b);
    }
    r->oldest = r->fill;
    batch_open(r, filling(r));
    resume_if_paused(s);
}

static void on_unknown(struct shard *s, const struct batch *b, int backend_pid)
{
    stat_add(&s->st->batches_unknown, 1);
    log_line(LOG_ERROR, "commit outcome unknown; dropping held batches",
             "shard=%u batch=%u backend_pid=%d", s->id, b->seq, backend_pid);
    if (backend_pid > 0) {
        /* A backend that has not noticed the broken link may still commit later. End it
         * (waiting up to 5 s) before the state loads that follow on the same control link:
         * they are answered in order, so each load sees the batch's final outcome. */
        char pid[16];
        snprintf(pid, sizeof pid, "%d", backend_pid);
        const char *params[1] = {pid};
        if (pgsink_query(s->sink, "SELECT pg_catalog.pg_terminate_backend($1::int, 5000)", 1,
                         params, query_cookie(Q_MAINTENANCE, 0), shard_now_ms(s)) != 0)
            log_line(LOG_WARN,
                     "cannot end the backend of the unknown commit; state loads may see it "
                     "commit late",
                     "shard=%u backend_pid=%d", s->id, backend_pid);
    }
    abandon_all(s);
}

/* Packet p of split batch b will not be stored (refused, or deferred): not acknowledged, its
 * records counted as sent nowhere (forget_refused), its connection closed. */
static void drop_packet(struct shard *s, struct batch *b, struct pkt_ref *p)
{
    p->rejected = true;
    p->refused = true;
    forget_refused(s, b, p);
    session_close(s, p->slot, p->gen);
    /* A replacing connection may hold this packet's records as sent (its state came from this
     * batch): it would take the re-send for a duplicate and ACK it. */
    session_close_owner(s, b->devs[p->dev].imei, (uint64_t)b->devs[p->dev].owner);
}

/* The database refused the one packet of a split transaction. */
static void refuse_packet(struct shard *s, struct batch *b, const struct pgsink_txn_result *res)
{
    struct pkt_ref *p = &b->pkts[b->split_next];
    uint64_t imei = b->devs[p->dev].imei;
    char q[256];
    bool moved = strcmp(res->sqlstate, SQLSTATE_DEVICE_MOVED) == 0;
    stat_add(moved ? &s->st->packets_moved : &s->st->packets_rejected_data, 1);
    log_limited(&s->ring->log_rejected, shard_now_ms(s), LOG_WARN,
                moved ? "packet not stored: its device was taken over by another connection"
                      : "packet rejected by the database",
                "shard=%u sqlstate=%s imei=%" PRIu64 " error=\"%s\"", s->id, res->sqlstate, imei,
                logfmt_q(q, sizeof q, res->message));
    drop_packet(s, b, p);
    split_advance(s, b);
}

/* One transaction per packet from the first on (the batch is the oldest: it goes next). */
static void enter_split(struct batch *b)
{
    b->split = true;
    b->split_next = 0;
    b->split_timeouts = 0;
    b->state = BATCH_SEALED;
}

static void on_data_error(struct shard *s, struct batch *b, const struct pgsink_txn_result *res)
{
    stat_add(&s->st->batches_data_error, 1);
    if (b->split) {
        refuse_packet(s, b, res);
        return;
    }
    enter_split(b);
}

/* A statement of the batch's transaction ran past the timeout: split, so the devices whose rows
 * cannot be written wait alone; in split mode, that packet is deferred. */
static void on_timed_out(struct shard *s, struct batch *b, const struct pgsink_txn_result *res)
{
    if (b->split) {
        struct pkt_ref *p = &b->pkts[b->split_next];
        uint64_t imei = b->devs[p->dev].imei;
        deferral_strike(s, imei);
        b->split_timeouts++;
        count_deferred(s, imei, "timed_out");
        drop_packet(s, b, p);
        split_advance(s, b);
        return;
    }
    char q[256];
    stat_add(&s->st->batches_timed_out, 1);
    log_limited(&s->ring->log_timed_out, shard_now_ms(s), LOG_WARN,
                "batch timed out; retrying it split",
                "shard=%u batch=%u packets=%u sqlstate=%s error=\"%s\"", s->id, b->seq, b->pkts_len,
                res->sqlstate, logfmt_q(q, sizeof q, res->message));
    enter_split(b);
}

void batch_on_txn_done(struct shard *s, void *cookie, const struct pgsink_txn_result *res)
{
    struct batch *b = cookie;
    assert(b->state == BATCH_INFLIGHT);
    switch (res->outcome) {
    case PGSINK_COMMITTED:
        on_committed(s, b);
        return;
    case PGSINK_NOT_COMMITTED:
        if (res->timed_out) {
            on_timed_out(s, b, res);
            return;
        }
        stat_add(&s->st->batches_retried, 1);
        b->state = BATCH_SEALED; /* the oldest: it goes again first */
        return;
    case PGSINK_UNKNOWN:
        on_unknown(s, b, res->backend_pid);
        return;
    case PGSINK_DATA_ERROR:
        on_data_error(s, b, res);
        return;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Submit
 * ------------------------------------------------------------------------------------------- */

/* The transaction of a whole batch. Its state parameters are built at submit, not at seal: a
 * packet refused meanwhile in an older batch has had its fingerprints taken out of these
 * snapshots (forget_refused). */
static void txn_whole(const struct shard *s, struct batch *b, struct pgsink_txn *txn)
{
    build_state_params(s, b->devs, b->devs_len, b->params_buf, b->params_cap, b->params,
                       b->params_len);
    b->iov[0] = (struct iovec){b->copy, b->copy_len + COPYENC_TRAILER_BYTES};
    txn->copy = b->iov;
    txn->copy_iovs = 1;
}

/* Defers packet p of split batch b without a transaction when trying is futile: its device is
 * deferred now, or SPLIT_TIMEOUTS_MAX packets in a row timed out (the database is stalled, not
 * one device's rows). True when it did. */
static bool defer_untried(struct shard *s, struct batch *b, struct pkt_ref *p)
{
    uint64_t imei = b->devs[p->dev].imei;
    const char *why = b->split_timeouts >= SPLIT_TIMEOUTS_MAX ? "database_stalled"
                      : deferred_now(s, imei)                 ? "device_deferred"
                                                              : NULL;
    if (!why)
        return false;
    count_deferred(s, imei, why);
    drop_packet(s, b, p);
    return true;
}

/* The transaction of the next packet of a split batch; false when none is left. */
static bool txn_split(struct shard *s, struct batch *b, struct pgsink_txn *txn)
{
    struct batches *r = s->ring;
    while (b->split_next < b->pkts_len &&
           (b->pkts[b->split_next].rejected || defer_untried(s, b, &b->pkts[b->split_next])))
        b->split_next++;
    if (b->split_next == b->pkts_len)
        return false;
    const struct pkt_ref *p = &b->pkts[b->split_next];
    /* The device's state as of this packet: the batch's snapshot without the records of its
     * packets that were refused or are not committed yet (those after this one). */
    r->split_dev = b->devs[p->dev];
    for (uint32_t j = 0; j < b->pkts_len; j++) {
        const struct pkt_ref *q = &b->pkts[j];
        if (q->dev == p->dev && j != b->split_next && (q->refused || j > b->split_next))
            dedup_remove(&r->split_dev.dedup, b->fps + q->fp_off, q->fp_len);
    }
    build_state_params(s, &r->split_dev, 1, r->split_params, sizeof r->split_params, b->params,
                       b->params_len);
    b->iov[0] = (struct iovec){r->header, COPYENC_HEADER_BYTES};
    b->iov[1] = (struct iovec){b->copy + p->copy_off, p->copy_len};
    b->iov[2] = (struct iovec){r->trailer, COPYENC_TRAILER_BYTES};
    txn->copy = b->iov;
    txn->copy_iovs = 3;
    return true;
}

/* Submits the oldest sealed batch (or the next packet of a split one) when the sink is free. */
static void submit_next(struct shard *s)
{
    struct batch *b = &s->ring->batches[s->ring->oldest];
    if (b->state != BATCH_SEALED || !pgsink_ready(s->sink))
        return;
    struct pgsink_txn txn = {0};
    if (!b->split && holds_deferred(s, b))
        enter_split(b); /* its packets of a deferred device go untried */
    if (!b->split) {
        txn_whole(s, b, &txn);
    } else if (!txn_split(s, b, &txn)) {
        batch_release(s, b);
        return;
    }
    uint32_t timeout_ms = s->cfg->txn_timeout_ms;
    txn.statement_timeout_ms = timeout_ms;
    if (b->split) /* a locked row fails its one packet fast: the packets behind it go on */
        txn.lock_timeout_ms = timeout_ms >= 10 ? timeout_ms / 10 : timeout_ms;
    txn.state_params = b->params;
    txn.state_lengths = b->params_len;
    txn.state_formats = state_formats;
    if (pgsink_submit(s->sink, &txn, b, shard_now_ms(s)) == 0) {
        b->state = BATCH_INFLIGHT;
        b->submitted_ns = engine_now_ns(s->e);
    }
}

/* Nothing ahead of the filling batch: no transaction in flight and none sealed, waiting. */
static bool link_idle(const struct shard *s)
{
    return s->ring->oldest == s->ring->fill && pgsink_ready(s->sink);
}

uint64_t batch_tick(struct shard *s, uint64_t now_ns)
{
    struct batch *b = filling(s->ring);
    uint64_t wake = 0;
    /* First: a split batch whose packets are all refused or deferred ends here without sending
     * anything, and leaves the link idle for the filling batch below. */
    submit_next(s);
    if (b->pkts_len > 0) {
        uint64_t due = b->opened_ns + (uint64_t)s->cfg->batch_ms * 1000000u;
        if (s->draining || (now_ns >= due && link_idle(s)))
            rotate(s->ring, engine_now_ns(s->e));
        else if (now_ns < due)
            wake = due;
        /* Due while a transaction is ahead: it keeps filling (up to batch_rows) and goes as one
         * when the link is free (the outcome's completion runs this tick again), rather than as
         * one more transaction queued behind a slow commit. */
    }
    submit_next(s);
    return wake;
}

/* ---------------------------------------------------------------------------------------------
 * Packets
 * ------------------------------------------------------------------------------------------- */

/* The bytes the packet's rows may take (a packet goes in whole or not at all). */
static size_t packet_bound(enum copyenc_layout layout, const struct avl_packet *pkt,
                           const struct avl_record *recs)
{
    size_t bound = 0;
    for (unsigned i = 0; i < pkt->records_len; i++)
        bound += copyenc_row_bytes_max(layout, &recs[i]);
    return bound;
}

/* A stored record with an angle or speed that smallint cannot hold: stored with that field
 * NULL (copyenc_row), counted by field. Its fingerprint keeps the wire values. */
static void count_nulls(struct shard *s, const struct avl_record *r)
{
    unsigned nulls = copyenc_nulls(r);
    if (nulls & COPYENC_NULL_ANGLE)
        stat_add(&s->st->records_out_of_range[INGEST_FIELD_ANGLE], 1);
    if (nulls & COPYENC_NULL_SPEED)
        stat_add(&s->st->records_out_of_range[INGEST_FIELD_SPEED], 1);
}

/* The batch with room for the packet: the filling one, or the next after sealing it; NULL
 * when the ring is full. */
static struct batch *room_for(struct shard *s, const struct dev *d, const struct avl_packet *pkt,
                              size_t bound)
{
    struct batch *b = filling(s->ring);
    for (int attempt = 0;; attempt++) {
        const struct bdev *bd = batch_find_dev(b, d->imei);
        bool fits = b->copy_len + bound + COPYENC_TRAILER_BYTES <= b->copy_cap &&
                    b->pkts_len < b->pkts_cap &&
                    b->rows + pkt->records_len <= s->cfg->batch_rows + AVL_RECORDS_MAX &&
                    (bd ? bd->owner == (int64_t)d->owner : b->devs_len < b->devs_cap);
        if (fits)
            return b;
        if (attempt > 0 || b->pkts_len == 0 || !rotate(s->ring, engine_now_ns(s->e)))
            return NULL;
        b = filling(s->ring);
    }
}

/* Encodes the records not in the device's window into b, growing the window; bd takes the
 * newest stored position. */
static void store_records(struct shard *s, struct batch *b, struct bdev *bd, struct dedup *win,
                          const struct avl_packet *pkt, const struct avl_record *recs,
                          int64_t received_us)
{
    for (unsigned i = 0; i < pkt->records_len; i++) {
        const struct avl_record *r = &recs[i];
        uint64_t fp = dedup_fp(r);
        if (dedup_has(win, fp)) {
            stat_add(&s->st->records_duplicate, 1);
            continue;
        }
        int n = copyenc_row(s->cfg->io_layout, b->copy + b->copy_len, b->copy_cap - b->copy_len,
                            bd->imei, r, received_us);
        assert(n > 0); /* the decoder checked the ranges; the space is reserved */
        b->copy_len += (size_t)n;
        b->rows++;
        count_nulls(s, r);
        dedup_push(win, fp);
        assert(b->fps_len < b->fps_cap);
        b->fps[b->fps_len++] = fp;
        stat_add(&s->st->records_stored, 1);
        if ((int64_t)r->ts_ms > bd->last_ts_ms) {
            bd->last_ts_ms = (int64_t)r->ts_ms;
            bd->lon_e7 = r->lon_e7;
            bd->lat_e7 = r->lat_e7;
        }
    }
}

int batch_take(struct shard *s, uint32_t slot, uint32_t gen, struct dev *d,
               const struct avl_packet *pkt, const struct avl_record *recs,
               const struct udp_reply *reply)
{
    if (deferred_now(s, d->imei)) {
        count_deferred(s, d->imei, "device_deferred");
        return -EAGAIN;
    }
    struct batch *b = room_for(s, d, pkt, packet_bound(s->cfg->io_layout, pkt, recs));
    if (!b)
        return 0;
    uint32_t dev_index;
    struct bdev *bd = batch_dev(b, d->imei, &dev_index);
    assert(bd);
    bd->owner = (int64_t)d->owner; /* the same, or a new entry (room_for) */
    int64_t received_us = wall_clock_us();
    struct pkt_ref *p = &b->pkts[b->pkts_len];
    *p = (struct pkt_ref){.slot = slot,
                          .gen = gen,
                          .records = pkt->records_len,
                          .copy_off = (uint32_t)b->copy_len,
                          .fp_off = b->fps_len,
                          .dev = dev_index,
                          .taken_ns = engine_now_ns(s->e),
                          .udp = reply != NULL};
    if (reply)
        b->replies[b->pkts_len] = *reply;
    struct dedup *win = dedup_win_mut(&s->sess->wins, &d->win);
    d->last_packet_s = shard_now_s(s);
    uint32_t rows_before = b->rows;
    store_records(s, b, bd, win, pkt, recs, received_us);
    s->ring->last_stored = b->rows - rows_before;
    p->copy_len = (uint32_t)(b->copy_len - p->copy_off);
    p->fp_len = b->fps_len - p->fp_off;
    bd->received_ms = received_us / 1000;
    bd->dedup = *win;
    b->pkts_len++;
    d->unacked++;
    if (b->opened_ns == 0)
        b->opened_ns = engine_now_ns(s->e);
    stat_add(&s->st->packets, 1);
    stat_add(&s->st->records, pkt->records_len);
    if (b->rows >= s->cfg->batch_rows)
        rotate(s->ring,
               engine_now_ns(s->e)); /* sealed now; if no batch is free, the next packet pauses */
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

int batch_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *c = s->cfg;
    struct batches *r = calloc(1, sizeof *r);
    s->ring = r;
    if (!r) {
        snprintf(err, cap, "shard %u: out of memory for batches", s->id);
        return -ENOMEM;
    }
    r->nbatches = c->batches < 2 ? 2 : (c->batches > BATCHES_MAX ? BATCHES_MAX : c->batches);
    for (uint32_t i = 0; i < r->nbatches; i++)
        if (batch_alloc(c, &r->batches[i])) {
            snprintf(err, cap, "shard %u: out of memory for batches", s->id);
            return -ENOMEM;
        }
    batch_open(r, &r->batches[0]);
    copyenc_header(r->header);
    copyenc_trailer(r->trailer);
    return 0;
}

void batch_teardown(struct shard *s)
{
    struct batches *r = s->ring;
    if (!r)
        return;
    for (uint32_t i = 0; i < r->nbatches; i++)
        batch_free(&r->batches[i]);
    free(r);
    s->ring = NULL;
}
