/* ingest.c — one gateway shard: Teltonika sessions on the engine, rows batched into
 * PostgreSQL, ACKs after commit. Runs on the shard's thread only; see ingest.h.
 *
 * Owns, per shard: the device sessions (indexed by engine slot), the IMEI -> slot map of the
 * devices it owns, the ring of batches, the pgsink and the polls that drive it.
 *
 * The life of a packet: on_data scans a frame in the receive buffer, decodes it in place,
 * drops records the device already sent (duplicate detection), encodes the rest as COPY
 * BINARY tuples straight into the filling batch and notes (slot, generation, record count)
 * for the ACK. A batch is sealed when it reaches batch_rows or batch_ms, then committed as one
 * transaction with the device_state rows of its devices. On COMMIT every packet of the batch
 * is acknowledged with its full record count, duplicates included. When every batch is sealed
 * or in flight the shard pauses its connections (TCP backpressure) until one commits.
 *
 * Duplicate detection: a device's state is the fingerprints of its last DEDUP_FP_MAX (64)
 * accepted records (XXH3 of the record), oldest first, kept in its session and written to
 * device_state.dedup in the same transaction as the rows. A record whose fingerprint is there
 * is a re-send. 64 covers any re-sent packet within Teltonika's 1280-byte AVL packet limit
 * (at most 42 records of the smallest size); a re-sent packet of more records than that
 * would be stored again in part. Each batch keeps a snapshot of the state of every device it holds,
 * so a device that reconnects while its packets wait in uncommitted batches starts from that
 * snapshot, not from the older one in the database. Nothing else is ever dropped: newest-first
 * devices, equal timestamps and pre-fix timestamps are all stored.
 *
 * Outcomes of a batch: committed -> ACK; not committed -> sent again (in order); unknown ->
 * never sent again: every batch still held is dropped unacknowledged and the connections of
 * their devices closed, so each device reloads its state from the database and re-sends;
 * data error -> the batch is split into one transaction per packet, the packets the database
 * rejects are refused with a counted reason and their connections closed. */
#include "gateway/ingest.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "codec/avl.h"
#include "gateway/commands.h"
#include "gateway/copyenc.h"
#include "gateway/ingest_shard.h"
#include "gateway/log.h"
#include "gateway/metrics.h"
#include "gateway/pgsink.h"
#include "gateway/tags.h"
#include "shard/engine.h"

/* A device's state when it connects, and whether it has open commands (one probe of the partial
 * index: the command itself is fetched only when there is one — a connection storm then costs
 * one statement per device, not two). */
#define STATE_LOAD_SQL                                                                             \
    "SELECT s.last_ts_ms, s.dedup, s.enabled, EXISTS (SELECT 1 FROM public.commands c "            \
    "WHERE c.imei = $1::bigint AND c.status IN ('pending', 'sent')) "                              \
    "FROM telemetry.device_state_get($1) AS s"

/* ---------------------------------------------------------------------------------------------
 * Sessions
 * ------------------------------------------------------------------------------------------- */

static bool dedup_has(const struct dedup *d, uint64_t fp)
{
    for (unsigned i = 0; i < d->len; i++)
        if (d->fp[i] == fp)
            return true;
    return false;
}

static void dedup_push(struct dedup *d, uint64_t fp)
{
    if (d->len < DEDUP_FP_MAX) {
        d->fp[(d->head + d->len) % DEDUP_FP_MAX] = fp;
        d->len++;
    } else {
        d->fp[d->head] = fp;
        d->head = (uint8_t)((d->head + 1) % DEDUP_FP_MAX);
    }
}

/* Removes fps[0 .. n-1] from the ring, keeping the order of the others. */
static void dedup_remove(struct dedup *d, const uint64_t *fps, uint32_t n)
{
    struct dedup kept = {0};
    for (unsigned i = 0; i < d->len; i++) {
        uint64_t fp = d->fp[(d->head + i) % DEDUP_FP_MAX];
        bool drop = false;
        for (uint32_t k = 0; k < n && !drop; k++)
            drop = fps[k] == fp;
        if (!drop)
            dedup_push(&kept, fp);
    }
    *d = kept;
}

/* A record's fingerprint: its fixed fields and its IO bytes. */
static uint64_t record_fp(const struct avl_record *r)
{
    uint8_t fixed[24];
    memcpy(fixed, &r->ts_ms, 8);
    memcpy(fixed + 8, &r->lon_e7, 4);
    memcpy(fixed + 12, &r->lat_e7, 4);
    memcpy(fixed + 16, &r->altitude_m, 2);
    memcpy(fixed + 18, &r->angle_deg, 2);
    memcpy(fixed + 20, &r->speed_kmh, 2);
    fixed[22] = r->satellites;
    fixed[23] = r->priority;
    uint64_t seed = XXH3_64bits(fixed, sizeof fixed) ^ ((uint64_t)r->event_id << 48) ^
                    ((uint64_t)r->codec << 40) ^ ((uint64_t)r->generation << 32);
    return XXH3_64bits_withSeed(r->io, r->io_bytes, seed);
}

/* ---------------------------------------------------------------------------------------------
 * Batches
 * ------------------------------------------------------------------------------------------- */

/* The device's window, taken from the pool (empty) if it holds none. The pool has one per
 * connection slot, so it cannot run out. */
static struct dedup *dev_dedup_mut(struct shard *s, struct dev *d)
{
    if (!d->win) {
        assert(s->wins_free_len > 0);
        d->win = s->wins_free[--s->wins_free_len] + 1;
        s->wins[d->win - 1].len = 0;
        s->wins[d->win - 1].head = 0;
    }
    return &s->wins[d->win - 1];
}

/* Gives the device's window back, if it holds one. */
static void dev_dedup_drop(struct shard *s, struct dev *d)
{
    if (d->win) {
        s->wins_free[s->wins_free_len++] = d->win - 1;
        d->win = 0;
    }
}

/* Sets the device's window to *src, holding none when src is empty. */
static void dev_dedup_set(struct shard *s, struct dev *d, const struct dedup *src)
{
    if (src->len == 0)
        dev_dedup_drop(s, d);
    else
        *dev_dedup_mut(s, d) = *src;
}

static void batch_reset(struct shard *s, struct batch *b)
{
    b->state = BATCH_FREE;
    b->copy_len = COPYENC_HEADER_BYTES;
    b->rows = 0;
    b->pkts_len = 0;
    b->fps_len = 0;
    b->devs_len = 0;
    b->split = false;
    b->split_next = 0;
    memset(b->dev_map, 0, ((size_t)b->dev_map_mask + 1) * sizeof *b->dev_map);
    (void)s;
}

/* Makes a free batch the one being filled. */
static void batch_open(struct shard *s, struct batch *b)
{
    assert(b->state == BATCH_FREE && b->pkts_len == 0);
    b->state = BATCH_FILLING;
    b->seq = s->next_seq++;
    b->opened_ns = 0;
}

static int batch_alloc(struct shard *s, struct batch *b)
{
    const struct ingest_config *c = s->cfg;
    /* Room for batch_rows typical rows, and always for one packet of the largest frame
     * (copyenc_row_bytes_max sums to at most 5 x its bytes plus the fixed part per record). */
    b->copy_cap = (size_t)c->batch_rows * ROW_BYTES_PLANNED + 5 * (size_t)c->frame_bytes_max +
                  (size_t)AVL_RECORDS_MAX * (COPYENC_ROW_FIXED_BYTES + 2) + COPYENC_HEADER_BYTES +
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
    b->fps = calloc(b->fps_cap, sizeof *b->fps);
    b->devs = calloc(b->devs_cap, sizeof *b->devs);
    b->dev_map = calloc(map, sizeof *b->dev_map);
    b->params_buf = malloc(b->params_cap);
    if (!b->copy || !b->pkts || !b->fps || !b->devs || !b->dev_map || !b->params_buf)
        return -ENOMEM;
    copyenc_header(b->copy);
    batch_reset(s, b);
    return 0;
}

static void batch_free(struct batch *b)
{
    free(b->copy);
    free(b->pkts);
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

/* A device's dedup as one bytea element: its fingerprints oldest first, each big-endian (the
 * order dedup_from_text reads back from device_state_get's hex). */
static uint8_t *put_dedup(uint8_t *o, const struct dedup *d)
{
    o = pgsink_array_elem(o, 8u * d->len);
    for (unsigned k = 0; k < d->len; k++)
        o = pgsink_put_be64(o, d->fp[(d->head + k) % DEDUP_FP_MAX]);
    return o;
}

/* The parameter formats build_state_params writes: the instance stays text (it is already a
 * string, and text's binary form is the same bytes), the rest binary. */
static const int state_formats[STATE_PARAMS] = {
    PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY,
    PGSINK_FORMAT_BINARY, PGSINK_FORMAT_BINARY, PGSINK_FORMAT_TEXT,   PGSINK_FORMAT_BINARY,
};

/* Writes the state statement's parameters for devs[0 .. n-1] into buf (cap bytes, at least
 * n * DEV_PARAM_BYTES + STATE_FIXED_BYTES): the six arrays and the shard in binary, the
 * instance as text (state_formats); values and lengths point into buf and at the config.
 * A device without a stored record in the batch (last_ts_ms < 0) has NULL last_ts, lon and
 * lat, and an empty dedup is an empty bytea, not NULL: as the text arrays were. */
static void build_state_params(const struct shard *s, const struct bdev *devs, uint32_t n,
                               uint8_t *buf, size_t cap, const char *params[STATE_PARAMS],
                               int lengths[STATE_PARAMS])
{
    static const uint32_t oids[6] = {PGSINK_OID_INT8, PGSINK_OID_INT8, PGSINK_OID_INT8,
                                     PGSINK_OID_INT4, PGSINK_OID_INT4, PGSINK_OID_BYTEA};
    assert(n > 0 && (size_t)n * DEV_PARAM_BYTES + STATE_FIXED_BYTES <= cap);
    /* Each array is written in one pass over the devices; the regions follow each other. */
    uint8_t *o = buf;
    for (int col = 0; col < 6; col++) {
        uint8_t *a = o;
        o = pgsink_array_begin(o, oids[col], n);
        for (uint32_t i = 0; i < n; i++) {
            const struct bdev *d = &devs[i];
            bool stored = d->last_ts_ms >= 0;
            switch (col) {
            case 0:
                assert(d->imei <= (uint64_t)INT64_MAX);
                o = pgsink_array_int8(o, (int64_t)d->imei);
                break;
            case 1:
                o = stored ? pgsink_array_int8(o, d->last_ts_ms) : pgsink_array_null(a, o);
                break;
            case 2:
                o = pgsink_array_int8(o, d->received_ms);
                break;
            case 3:
                o = stored ? pgsink_array_int4(o, d->lon_e7) : pgsink_array_null(a, o);
                break;
            case 4:
                o = stored ? pgsink_array_int4(o, d->lat_e7) : pgsink_array_null(a, o);
                break;
            default:
                o = put_dedup(o, &d->dedup);
                break;
            }
        }
        params[col] = (const char *)a;
        lengths[col] = (int)(o - a);
    }
    params[6] = s->cfg->instance;
    lengths[6] = 0;
    params[7] = (const char *)o;
    o = pgsink_put_be32(o, s->id);
    lengths[7] = 4;
    assert((size_t)(o - buf) <= cap);
    (void)cap;
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
 * Sink
 * ------------------------------------------------------------------------------------------- */

static void sink_arm_polls(struct shard *s)
{
    for (int link = 0; link < PGSINK_LINKS; link++) {
        int fd = pgsink_fd(s->sink, (enum pgsink_link)link);
        short ev = pgsink_events(s->sink, (enum pgsink_link)link);
        uint32_t epoch = pgsink_fd_epoch(s->sink, (enum pgsink_link)link);
        if (s->poll_armed[link] && s->poll_epoch[link] != epoch) {
            /* The link's socket changed: the old poll may never fire; drop it. */
            engine_poll_cancel(s->e, (uint64_t)link | (uint64_t)s->poll_epoch[link] << 8);
            s->poll_armed[link] = false;
        }
        if (fd < 0 || ev == 0 || s->poll_armed[link])
            continue;
        uint64_t tag = (uint64_t)link | (uint64_t)epoch << 8;
        if (engine_poll(s->e, fd, ev, tag) == 0) {
            s->poll_armed[link] = true;
            s->poll_epoch[link] = epoch;
            s->poll_events[link] = ev;
        }
    }
}

static uint64_t slot_cookie(uint32_t slot, uint32_t gen)
{
    return (uint64_t)slot << 32 | gen;
}

static void send_reply(struct shard *s, uint32_t slot, uint32_t gen, uint8_t byte)
{
    engine_send(s->e, slot, gen, &byte, 1);
}

/* Whether the load queue's entry ck still stands for a device waiting to send its load. */
static bool load_entry_live(const struct shard *s, uint64_t ck)
{
    const struct dev *d = &s->devs[(uint32_t)(ck >> 32)];
    return d->gen == (uint32_t)ck && dev_loading(d) && d->load_queued;
}

static void queue_load(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    if (d->load_queued)
        return;
    uint32_t cap = s->cfg->conns_max;
    if (s->load_len == cap) {
        /* Full of entries of connections gone since (the control link was down while devices
         * came and went): keep the live ones, in order. There is at most one live entry per
         * slot and this slot has none, so room remains. */
        uint32_t kept = 0;
        for (uint32_t k = 0; k < s->load_len; k++) {
            uint64_t ck = s->load_queue[(s->load_head + k) % cap];
            if (load_entry_live(s, ck))
                s->load_queue[(s->load_head + kept++) % cap] = ck;
        }
        s->load_len = kept;
        assert(kept < cap);
    }
    d->load_queued = true;
    s->load_queue[(s->load_head + s->load_len) % cap] = slot_cookie(slot, d->gen);
    s->load_len++;
}

/* Starts the loads that wait, while the control link takes them. */
static void send_loads(struct shard *s)
{
    while (s->load_len > 0) {
        uint64_t ck = s->load_queue[s->load_head];
        struct dev *d = &s->devs[(uint32_t)(ck >> 32)];
        if (!load_entry_live(s, ck)) {
            s->load_head = (s->load_head + 1) % s->cfg->conns_max;
            s->load_len--;
            continue;
        }
        char imei[24];
        snprintf(imei, sizeof imei, "%" PRIu64, d->imei);
        const char *params[1] = {imei};
        int rc = pgsink_query(s->sink, STATE_LOAD_SQL, 1, params, (void *)(uintptr_t)ck, now_ms(s));
        if (rc != 0)
            return; /* down or full: the next tick tries again */
        d->load_queued = false;
        s->load_head = (s->load_head + 1) % s->cfg->conns_max;
        s->load_len--;
    }
}

/* The newest snapshot of imei's state held by an uncommitted batch, if any. */
static const struct dedup *pending_dedup(const struct shard *s, uint64_t imei)
{
    const struct dedup *best = NULL;
    for (uint32_t k = 0, i = s->oldest; k < s->nbatches; k++, i = (i + 1) % s->nbatches) {
        const struct batch *b = &s->batches[i];
        if (b->state == BATCH_FREE)
            continue;
        const struct bdev *d = batch_find_dev(b, imei);
        if (d)
            best = &d->dedup; /* later batches are newer */
    }
    return best;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* device_state.dedup in bytea's text output ("\x" + hex) into a ring. */
static void dedup_from_text(struct dedup *d, const char *text)
{
    memset(d, 0, sizeof *d);
    if (!text || text[0] != '\\' || text[1] != 'x')
        return;
    const char *h = text + 2;
    size_t n = strlen(h) / 16;
    if (n > DEDUP_FP_MAX)
        n = DEDUP_FP_MAX;
    for (size_t i = 0; i < n; i++) {
        uint64_t fp = 0;
        for (int k = 0; k < 16; k++) {
            int v = hexval(h[16 * i + (size_t)k]);
            if (v < 0)
                return;
            fp = fp << 4 | (uint64_t)v;
        }
        dedup_push(d, fp);
    }
}

/* Cookies of control queries that are not a device's state load (slot << 32 | gen, with
 * slot < 2^20) nor a command query (top bit: commands.h). */
#define COOKIE_MAINTENANCE ((void *)(uintptr_t)UINT64_MAX)
#define COOKIE_ALLOWLIST   ((void *)(uintptr_t)(UINT64_C(1) << 62))

/* Of these IMEIs (a chunk of the shard's devices), those not enabled in public.devices. */
#define REVOKED_SQL                                                                                \
    "SELECT k.imei FROM unnest($1::bigint[]) AS k(imei) WHERE NOT EXISTS (SELECT 1 FROM "          \
    "public.devices d WHERE d.imei = k.imei AND d.enabled)"

static void on_allowlist(struct shard *s, const PGresult *res);

static void on_query_done(void *user, void *cookie, const PGresult *res, int err)
{
    struct shard *s = user;
    if (s->closing)
        return; /* pgsink_destroy after the engine is gone: nothing to act on */
    if (cookie == COOKIE_MAINTENANCE) {
        if (!res ||
            (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)) {
            char q[256];
            fprintf(stderr,
                    "level=warn msg=\"maintenance query failed\" shard=%u err=%d error=\"%s\"\n",
                    s->id, err, logfmt_q(q, sizeof q, res ? PQresultErrorMessage(res) : ""));
        }
        return;
    }
    if (cookie == COOKIE_ALLOWLIST) {
        on_allowlist(s, res);
        return;
    }
    uint64_t ck = (uint64_t)(uintptr_t)cookie;
    if (cmds_query_cookie(ck)) {
        cmds_on_query_done(s, ck, res, err);
        return;
    }
    uint32_t slot = (uint32_t)(ck >> 32), gen = (uint32_t)ck;
    struct dev *d = &s->devs[slot];
    if (d->gen != gen || !dev_loading(d))
        return; /* the connection went away meanwhile */
    bool reload = d->state == DEV_RELOADING;
    if (d->load_stale) {
        /* The answer may predate a commit of this device's rows, whose batch is gone now:
         * neither it nor pending_dedup() knows those records. Ask again. */
        d->load_stale = false;
        queue_load(s, slot);
        return;
    }
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        stat_add(&s->st->state_load_failures, 1);
        (void)err;
        queue_load(s, slot);
        return;
    }
    if (!reload && s->cfg->devices_known &&
        (PQgetisnull(res, 0, 2) || strcmp(PQgetvalue(res, 0, 2), "t") != 0)) {
        stat_add(&s->st->handshake_rejected, 1);
        send_reply(s, slot, gen, 0x00);
        engine_close(s->e, slot, gen);
        return;
    }
    /* Uncommitted batches know more than the database. */
    const struct dedup *pending = pending_dedup(s, d->imei);
    if (pending) {
        dev_dedup_set(s, d, pending);
    } else {
        struct dedup *w = dev_dedup_mut(s, d);
        dedup_from_text(w, PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1));
        if (w->len == 0)
            dev_dedup_drop(s, d);
    }
    d->state = DEV_OPEN;
    d->last_packet_s = now_s(s);
    if (reload) {
        engine_resume_conn(s->e, slot, gen); /* its held packet goes on */
        return;
    }
    stat_add(&s->st->handshakes, 1);
    send_reply(s, slot, gen, 0x01);
    cmds_on_device_open(s, slot, strcmp(PQgetvalue(res, 0, 3), "t") == 0);
}

/* One step of the allow-list walk a SIGHUP starts (with --devices known): asks which of the
 * next chunk of connected devices are no longer enabled; on_allowlist closes them. */
static void allowlist_step(struct shard *s)
{
    const struct ingest_config *c = s->cfg;
    unsigned gen = atomic_load_explicit(&s->sh->allowlist_gen, memory_order_relaxed);
    if (gen != s->allow_gen && !s->allow_in_flight) {
        s->allow_gen = gen;
        if (c->devices_known) {
            s->allow_cursor = 0; /* a new round (one in progress starts over) */
            s->allow_checked = 0;
            s->allow_closed = 0;
        }
    }
    if (s->allow_in_flight || s->allow_cursor >= c->conns_max)
        return;
    enum pgsink_phase ph = pgsink_phase(s->sink, PGSINK_LINK_CONTROL);
    if (ph != PGSINK_PHASE_IDLE && ph != PGSINK_PHASE_BUSY)
        return; /* the control link is down: the walk waits for it (no rescans meanwhile) */
    char *o = s->allow_imeis, *end = s->allow_imeis + sizeof s->allow_imeis;
    *o++ = '{';
    unsigned n = 0;
    uint32_t cur = s->allow_cursor;
    while (cur < c->conns_max && n < ALLOW_CHUNK) {
        const struct dev *d = &s->devs[cur++];
        if (d->state != DEV_OPEN && !dev_loading(d))
            continue;
        o += snprintf(o, (size_t)(end - o), n ? ",%" PRIu64 : "%" PRIu64, d->imei);
        n++;
    }
    *o++ = '}';
    *o = 0;
    if (n > 0) {
        const char *params[1] = {s->allow_imeis};
        if (pgsink_query(s->sink, REVOKED_SQL, 1, params, COOKIE_ALLOWLIST, now_ms(s)) != 0)
            return; /* the control link is down or full: this chunk again next turn */
        s->allow_in_flight = true;
        s->allow_checked += n;
    }
    s->allow_cursor = cur;
    if (cur >= c->conns_max && n == 0)
        fprintf(stderr,
                "level=info msg=\"allow-list checked\" shard=%u devices=%u closed=%" PRIu64 "\n",
                s->id, s->allow_checked, s->allow_closed);
}

static void on_allowlist(struct shard *s, const PGresult *res)
{
    s->allow_in_flight = false;
    if (!res) {
        s->allow_cursor = 0; /* the link dropped with the chunk: the round starts over */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char q[256];
        fprintf(stderr,
                "level=warn msg=\"allow-list check failed; SIGHUP again\" shard=%u "
                "error=\"%s\"\n",
                s->id, logfmt_q(q, sizeof q, PQresultErrorMessage(res)));
        s->allow_cursor = s->cfg->conns_max;
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t slot = owned_slot_of_row(s, res, i);
        if (slot < 0)
            continue;
        if (engine_close(s->e, (uint32_t)slot, s->devs[slot].gen) != 0)
            continue; /* gone meanwhile */
        stat_add(&s->st->devices_revoked, 1);
        s->allow_closed++;
    }
    if (s->allow_cursor >= s->cfg->conns_max)
        fprintf(stderr,
                "level=info msg=\"allow-list checked\" shard=%u devices=%u closed=%" PRIu64 "\n",
                s->id, s->allow_checked, s->allow_closed);
}

/* Releases the windows of open devices that sent no packet for state_idle_s: an idle
 * connection then costs no window. The state is in device_state (or in a batch still held,
 * which pending_dedup finds); the device's next packet waits for it (DEV_RELOADING). */
static void release_idle_windows(struct shard *s)
{
    uint32_t now = now_s(s), idle = s->cfg->state_idle_s;
    for (uint32_t slot = 0; slot < s->cfg->conns_max; slot++) {
        struct dev *d = &s->devs[slot];
        if (d->state != DEV_OPEN || !d->win || now - d->last_packet_s < idle)
            continue;
        dev_dedup_drop(s, d);
        d->dormant = true;
        stat_add(&s->st->windows_released, 1);
    }
}

/* A batch holding devs[0 .. n-1] committed. A state load in flight for one of them runs on the
 * control link, whose snapshot may be older than this COMMIT, and once the batch is released
 * pending_dedup() cannot make up for it: such a load is asked again when it answers. */
static void mark_loads_stale(struct shard *s, const struct bdev *devs, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        int64_t slot = imap_get(&s->owned, devs[i].imei);
        if (slot < 0)
            continue;
        struct dev *d = &s->devs[slot];
        if (dev_loading(d) && !d->load_queued)
            d->load_stale = true;
    }
}

/* Closes the session that owns imei now, if any. Its duplicate-detection state may hold
 * records that will never be stored (taken from a batch dropped or rejected since), so the
 * device must reconnect and load its state from the database before its next packet. */
static void close_owner(struct shard *s, uint64_t imei)
{
    int64_t slot = imap_get(&s->owned, imei);
    if (slot >= 0)
        engine_close(s->e, (uint32_t)slot, s->devs[slot].gen);
}

/* The database refused packet p of batch b: its records were never stored, so no state may
 * say they were. Take p's fingerprints out of every snapshot of the device taken after p — in
 * b and in later batches (their parameters are built at submit) — so neither a split
 * transaction nor a reconnecting device (pending_dedup) counts them; the live session is
 * closed (close_owner). */
static void forget_refused(struct shard *s, const struct batch *b, const struct pkt_ref *p)
{
    uint64_t imei = b->devs[p->dev].imei;
    uint32_t from = (uint32_t)(b - s->batches);
    /* k = 0 is b itself: a device that reconnects now takes its state from there. */
    for (uint32_t k = 0; k < s->nbatches; k++) {
        struct batch *later = &s->batches[(from + k) % s->nbatches];
        if (later->state == BATCH_FREE)
            continue;
        struct bdev *d = batch_find_dev(later, imei);
        if (d)
            dedup_remove(&d->dedup, b->fps + p->fp_off, p->fp_len);
    }
}

/* Acknowledges one committed packet with its full record count. */
static void ack_packet(struct shard *s, const struct pkt_ref *p)
{
    uint8_t ack[AVL_TCP_ACK_BYTES];
    avl_encode_tcp_ack(ack, p->records);
    if (engine_send(s->e, p->slot, p->gen, ack, sizeof ack) != 0) {
        stat_add(&s->st->acks_stale, 1); /* the connection is gone: the device re-sends, we dedup */
        return;
    }
    stat_add(&s->st->packets_acked, 1);
    prom_hist_observe(&s->st->ack_latency, (engine_now_ns(s->e) - p->taken_ns) / 1000u);
    struct dev *d = &s->devs[p->slot];
    if (d->gen == p->gen && d->unacked > 0 && --d->unacked == 0)
        cmds_on_acked(s, p->slot); /* a command may go now, after the ACK */
}

static void ack_batch(struct shard *s, struct batch *b)
{
    for (uint32_t i = 0; i < b->pkts_len; i++)
        if (!b->pkts[i].rejected)
            ack_packet(s, &b->pkts[i]);
}

/* A batch came free: the connections paused for room may go on. */
static void resume_if_paused(struct shard *s)
{
    if (s->paused) {
        s->paused = false;
        engine_resume(s->e);
        cmds_on_resume(s);
    }
}

static void batch_release(struct shard *s, struct batch *b)
{
    batch_reset(s, b);
    while (s->batches[s->oldest].state == BATCH_FREE && s->oldest != s->fill)
        s->oldest = (s->oldest + 1) % s->nbatches;
    resume_if_paused(s);
}

/* After an unknown outcome: nothing held may be sent any more (its device states may include
 * the unknown batch's records). Drop every batch unacknowledged and close the connections of
 * their devices; each reloads its state from the database when it reconnects. */
static void abandon_all(struct shard *s)
{
    for (uint32_t i = 0; i < s->nbatches; i++) {
        struct batch *b = &s->batches[i];
        if (b->state == BATCH_FREE)
            continue;
        for (uint32_t k = 0; k < b->pkts_len; k++)
            engine_close(s->e, b->pkts[k].slot, b->pkts[k].gen);
        /* Also a replacing connection that took its state from this batch (pending_dedup). */
        for (uint32_t k = 0; k < b->devs_len; k++)
            close_owner(s, b->devs[k].imei);
        batch_reset(s, b);
    }
    s->oldest = s->fill;
    batch_open(s, &s->batches[s->fill]);
    resume_if_paused(s);
}

static void on_txn_done(void *user, void *cookie, const struct pgsink_txn_result *res)
{
    struct shard *s = user;
    if (s->closing)
        return; /* pgsink_destroy after the engine is gone: the devices re-send */
    struct batch *b = cookie;
    assert(b->state == BATCH_INFLIGHT);
    switch (res->outcome) {
    case PGSINK_COMMITTED:
        prom_hist_observe(&s->st->copy_latency, (engine_now_ns(s->e) - b->submitted_ns) / 1000u);
        if (b->split) {
            /* One packet of a split batch committed. */
            struct pkt_ref *p = &b->pkts[b->split_next];
            ack_packet(s, p);
            p->rejected = true; /* done: never again */
            mark_loads_stale(s, &b->devs[p->dev], 1);
            b->split_next++;
            if (b->split_next < b->pkts_len) {
                b->state = BATCH_SEALED;
                return;
            }
        } else {
            stat_add(&s->st->batches_committed, 1);
            stat_add(&s->st->rows_committed, b->rows);
            mark_loads_stale(s, b->devs, b->devs_len);
            ack_batch(s, b);
        }
        batch_release(s, b);
        return;
    case PGSINK_NOT_COMMITTED:
        stat_add(&s->st->batches_retried, 1);
        b->state = BATCH_SEALED; /* the oldest: it goes again first */
        return;
    case PGSINK_UNKNOWN:
        stat_add(&s->st->batches_unknown, 1);
        fprintf(stderr,
                "level=error msg=\"commit outcome unknown; dropping held batches\" shard=%u "
                "batch=%u backend_pid=%d\n",
                s->id, b->seq, res->backend_pid);
        if (res->backend_pid > 0) {
            /* A backend that has not noticed the broken link may still commit later. End it
             * (waiting up to 5 s) before the state loads that follow on the same control link:
             * they are answered in order, so each load sees the batch's final outcome. */
            char pid[16];
            snprintf(pid, sizeof pid, "%d", res->backend_pid);
            const char *params[1] = {pid};
            if (pgsink_query(s->sink, "SELECT pg_catalog.pg_terminate_backend($1::int, 5000)", 1,
                             params, COOKIE_MAINTENANCE, now_ms(s)) != 0)
                fprintf(stderr,
                        "level=warn msg=\"cannot end the backend of the unknown commit; state "
                        "loads may see it commit late\" shard=%u backend_pid=%d\n",
                        s->id, res->backend_pid);
        }
        abandon_all(s);
        return;
    case PGSINK_DATA_ERROR:
        stat_add(&s->st->batches_data_error, 1);
        if (b->split) {
            struct pkt_ref *p = &b->pkts[b->split_next];
            stat_add(&s->st->packets_rejected_data, 1);
            uint64_t held;
            char q[256];
            if (ratelimit_allow(&s->log_rejected, now_ms(s), &held))
                fprintf(stderr,
                        "level=warn msg=\"packet rejected by the database\" shard=%u sqlstate=%s "
                        "imei=%" PRIu64 " error=\"%s\" suppressed=%" PRIu64 "\n",
                        s->id, res->sqlstate, b->devs[p->dev].imei,
                        logfmt_q(q, sizeof q, res->message), held);
            p->rejected = true;
            p->refused = true;
            forget_refused(s, b, p);
            engine_close(s->e, p->slot, p->gen);
            /* A replacing connection may hold this packet's records as sent (its state came
             * from this batch): it would take the re-send for a duplicate and ACK it. */
            close_owner(s, b->devs[p->dev].imei);
            b->split_next++;
            if (b->split_next < b->pkts_len) {
                b->state = BATCH_SEALED;
                return;
            }
            batch_release(s, b);
            return;
        }
        b->split = true;
        b->split_next = 0;
        b->state = BATCH_SEALED;
        return;
    }
}

/* Submits the oldest sealed batch (or the next packet of a split one) when the sink is free. */
static void submit_next(struct shard *s)
{
    struct batch *b = &s->batches[s->oldest];
    if (b->state != BATCH_SEALED || !pgsink_ready(s->sink))
        return;
    struct pgsink_txn txn = {0};
    if (!b->split) {
        /* Built at submit, not at seal: a packet refused meanwhile in an older batch has had
         * its fingerprints taken out of these snapshots (forget_refused). */
        build_state_params(s, b->devs, b->devs_len, b->params_buf, b->params_cap, b->params,
                           b->params_len);
        b->iov[0] = (struct iovec){b->copy, b->copy_len + COPYENC_TRAILER_BYTES};
        txn.copy = b->iov;
        txn.copy_iovs = 1;
    } else {
        while (b->split_next < b->pkts_len && b->pkts[b->split_next].rejected)
            b->split_next++;
        if (b->split_next == b->pkts_len) {
            batch_release(s, b);
            return;
        }
        const struct pkt_ref *p = &b->pkts[b->split_next];
        /* The device's state as of this packet: the batch's snapshot without the records of
         * its packets that were refused or are not committed yet (those after this one). */
        s->split_dev = b->devs[p->dev];
        for (uint32_t j = 0; j < b->pkts_len; j++) {
            const struct pkt_ref *q = &b->pkts[j];
            if (q->dev == p->dev && j != b->split_next && (q->refused || j > b->split_next))
                dedup_remove(&s->split_dev.dedup, b->fps + q->fp_off, q->fp_len);
        }
        build_state_params(s, &s->split_dev, 1, s->split_params, sizeof s->split_params, b->params,
                           b->params_len);
        b->iov[0] = (struct iovec){s->header, COPYENC_HEADER_BYTES};
        b->iov[1] = (struct iovec){b->copy + p->copy_off, p->copy_len};
        b->iov[2] = (struct iovec){s->trailer, COPYENC_TRAILER_BYTES};
        txn.copy = b->iov;
        txn.copy_iovs = 3;
    }
    txn.state_params = b->params;
    txn.state_lengths = b->params_len;
    txn.state_formats = state_formats;
    if (pgsink_submit(s->sink, &txn, b, now_ms(s)) == 0) {
        b->state = BATCH_INFLIGHT;
        b->submitted_ns = engine_now_ns(s->e);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Packets
 * ------------------------------------------------------------------------------------------- */

static struct batch *filling(struct shard *s)
{
    return &s->batches[s->fill];
}

/* Seals the filling batch and opens the next; false when there is no free batch. */
static bool rotate(struct shard *s)
{
    uint32_t next = (s->fill + 1) % s->nbatches;
    if (s->batches[next].state != BATCH_FREE)
        return false;
    batch_seal(filling(s));
    s->fill = next;
    batch_open(s, filling(s));
    return true;
}

static void count_invalid(struct shard *s, int err)
{
    stat_add(&s->st->packets_invalid, 1);
    unsigned i = (unsigned)-err;
    if (i < 32)
        stat_add(&s->st->invalid_by_reason[i], 1);
}

/* Takes one decoded packet into the filling batch. Returns 1 when taken, 0 when the shard is
 * full (pause), or a negative copyenc error (the packet is refused). */
static int take_packet(struct shard *s, uint32_t slot, uint32_t gen, struct dev *d,
                       const struct avl_packet *pkt)
{
    /* Check every record first: a packet goes in whole or not at all. */
    size_t bound = 0;
    for (unsigned i = 0; i < pkt->records_len; i++) {
        const struct avl_record *r = &s->recs[i];
        if (r->angle_deg > INT16_MAX)
            return COPYENC_E_ANGLE_RANGE;
        if (r->speed_kmh > INT16_MAX)
            return COPYENC_E_SPEED_RANGE;
        bound += copyenc_row_bytes_max(r);
    }
    struct batch *b = filling(s);
    for (int attempt = 0;; attempt++) {
        bool fits = b->copy_len + bound + COPYENC_TRAILER_BYTES <= b->copy_cap &&
                    b->pkts_len < b->pkts_cap &&
                    b->rows + pkt->records_len <= s->cfg->batch_rows + AVL_RECORDS_MAX &&
                    (b->devs_len < b->devs_cap || batch_find_dev(b, d->imei));
        if (fits)
            break;
        if (attempt > 0 || b->pkts_len == 0 || !rotate(s))
            return 0;
        b = filling(s);
    }
    uint32_t dev_index;
    struct bdev *bd = batch_dev(b, d->imei, &dev_index);
    assert(bd);
    int64_t received_us = wall_us();
    struct pkt_ref *p = &b->pkts[b->pkts_len];
    *p = (struct pkt_ref){.slot = slot,
                          .gen = gen,
                          .records = pkt->records_len,
                          .copy_off = (uint32_t)b->copy_len,
                          .fp_off = b->fps_len,
                          .dev = dev_index,
                          .taken_ns = engine_now_ns(s->e)};
    struct dedup *win = dev_dedup_mut(s, d);
    d->last_packet_s = now_s(s);
    for (unsigned i = 0; i < pkt->records_len; i++) {
        const struct avl_record *r = &s->recs[i];
        uint64_t fp = record_fp(r);
        if (dedup_has(win, fp)) {
            stat_add(&s->st->records_duplicate, 1);
            continue;
        }
        int n =
            copyenc_row(b->copy + b->copy_len, b->copy_cap - b->copy_len, d->imei, r, received_us);
        assert(n > 0); /* ranges were checked above and the space reserved */
        b->copy_len += (size_t)n;
        b->rows++;
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
        rotate(s); /* sealed now; if no batch is free, the next packet pauses */
    return 1;
}

/* The device's handshake arrived on this shard: own it here or pass it to its owner. */
static enum engine_verdict handshake(struct shard *s, uint32_t slot, uint32_t gen, uint64_t imei,
                                     bool more_bytes)
{
    if (more_bytes) {
        /* A device waits for our answer before it sends more: bytes behind the handshake are
         * a protocol error, refused the same way on every shard. */
        stat_add(&s->st->handshake_errors, 1);
        send_reply(s, slot, gen, 0x00);
        return ENGINE_CLOSE;
    }
    unsigned owner = router_owner(s->sh->router, imei);
    if (owner != s->id) {
        if (imei >= (UINT64_C(1) << 56)) {
            /* The handoff key holds 56 bits (every real IMEI has 15 digits). */
            stat_add(&s->st->handshake_errors, 1);
            send_reply(s, slot, gen, 0x00);
            return ENGINE_CLOSE;
        }
        stat_add(&s->st->handed_off, 1);
        engine_handoff(s->e, slot, gen, owner, imei);
        return ENGINE_CONTINUE;
    }
    struct dev *d = &s->devs[slot];
    int64_t old = imap_get(&s->owned, imei);
    d->imei = imei;
    d->state = DEV_LOADING;
    d->load_stale = false;
    d->dormant = false;
    dev_dedup_drop(s, d);
    if (old >= 0 && (uint32_t)old != slot) {
        /* A second connection replaces the first; its state is the freshest there is. */
        struct dev *prev = &s->devs[old];
        stat_add(&s->st->replaced, 1);
        engine_close(s->e, (uint32_t)old, prev->gen);
    }
    imap_put(&s->owned, imei, slot);
    queue_load(s, slot);
    send_loads(s);
    cmds_on_handshake(s, slot);
    return ENGINE_CONTINUE;
}

static size_t on_data(void *user, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                      size_t len, enum engine_verdict *verdict, uint32_t *need)
{
    struct shard *s = user;
    struct dev *d = &s->devs[slot];
    (void)e;
    assert(d->gen == gen);
    size_t used = 0;
    *verdict = ENGINE_CONTINUE;
    while (used < len) {
        if (d->state == DEV_LOADING) {
            /* Bytes before our answer to the handshake: a device never does that. */
            stat_add(&s->st->handshake_errors, 1);
            *verdict = ENGINE_CLOSE;
            return used;
        }
        struct avl_frame f;
        enum avl_scan_mode mode = d->state == DEV_HANDSHAKE ? AVL_SCAN_HANDSHAKE : AVL_SCAN_DATA;
        int rc = avl_scan(p + used, len - used, mode, s->cfg->frame_bytes_max, &f);
        if (rc == AVL_NEED_MORE) {
            *need = f.bytes;
            return used;
        }
        if (rc < 0) {
            count_invalid(s, rc);
            *verdict = ENGINE_CLOSE;
            return used;
        }
        const uint8_t *frame = p + used;
        switch (f.kind) {
        case AVL_FRAME_PING:
            stat_add(&s->st->pings, 1);
            used += f.bytes;
            continue;
        case AVL_FRAME_IMEI: {
            uint64_t imei;
            rc = avl_decode_imei(frame, f.bytes, &imei);
            if (rc < 0) {
                count_invalid(s, rc);
                *verdict = ENGINE_CLOSE;
                return used;
            }
            used += f.bytes;
            *verdict = handshake(s, slot, gen, imei, used < len);
            return *verdict == ENGINE_CLOSE ? used : len;
        }
        case AVL_FRAME_GPRS:
            /* A command's answer (or another GPRS message): commands.c matches it. */
            stat_add(&s->st->gprs_frames, 1);
            cmds_on_frame(s, slot, frame, f.bytes);
            used += f.bytes;
            continue;
        case AVL_FRAME_AVL:
            break;
        }
        if (d->dormant) {
            /* Its window was released while it was quiet: load the state, hold the packet. */
            d->dormant = false;
            d->state = DEV_RELOADING;
            d->load_stale = false;
            stat_add(&s->st->state_reloads, 1);
            queue_load(s, slot);
            send_loads(s);
            *verdict = ENGINE_HOLD;
            return used;
        }
        struct avl_packet pkt;
        rc = avl_decode_tcp(frame, f.bytes, &pkt, s->recs);
        if (rc < 0) {
            /* Never acknowledged; the stream may be out of step: close. */
            count_invalid(s, rc);
            *verdict = ENGINE_CLOSE;
            return used;
        }
        rc = take_packet(s, slot, gen, d, &pkt);
        if (rc == 0) {
            s->paused = true;
            stat_add(&s->st->backpressure_pauses, 1);
            *verdict = ENGINE_PAUSE;
            return used;
        }
        if (rc < 0) {
            stat_add(&s->st->records_rejected, pkt.records_len);
            count_invalid(s, AVL_E_ERR_MIN - 1 + rc); /* copyenc errors after the codec's */
            *verdict = ENGINE_CLOSE;
            return used;
        }
        used += f.bytes;
    }
    return used;
}

static void on_open(void *user, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                    uint64_t key)
{
    struct shard *s = user;
    (void)e;
    struct dev *d = &s->devs[slot];
    d->gen = gen;
    d->state = DEV_HANDSHAKE;
    d->load_queued = false;
    d->unacked = 0;
    d->cmd_flags = 0;
    assert(d->cmd == 0); /* a command slot is given back before the connection slot is reused */
    if (from_shard >= 0)
        handshake(s, slot, gen, key, false);
}

static void on_close(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                     enum engine_close_reason reason)
{
    struct shard *s = user;
    (void)e;
    (void)reason;
    struct dev *d = &s->devs[slot];
    assert(d->gen == gen);
    if (dev_loading(d) || d->state == DEV_OPEN) {
        int64_t at = imap_get(&s->owned, d->imei);
        if (at == (int64_t)slot)
            imap_del(&s->owned, d->imei);
        cmds_on_close(s, slot);
    }
    dev_dedup_drop(s, d);
    d->dormant = false;
    d->state = DEV_FREE;
    d->gen = engine_gen_next(gen);
}

static void on_poll(void *user, struct engine *e, uint64_t tag, int revents)
{
    struct shard *s = user;
    (void)e;
    if (poll_tag_owner(tag) == POLL_METRICS) {
        if (s->metrics)
            metrics_on_poll(s->metrics, tag, revents);
        return;
    }
    if ((tag & 0xFF) >= CMDS_POLL_TAG_FIRST) {
        cmds_on_poll(s, tag, revents);
        return;
    }
    enum pgsink_link link = (enum pgsink_link)(tag & 0xFF);
    uint32_t epoch = (uint32_t)(tag >> 8);
    if (s->poll_armed[link] && s->poll_epoch[link] == epoch)
        s->poll_armed[link] = false;
    if (revents == -ECANCELED || epoch != pgsink_fd_epoch(s->sink, link))
        return;
    pgsink_on_io(s->sink, link, revents < 0 ? (short)POLLERR : (short)revents, now_ms(s));
    sink_arm_polls(s);
}

/* Shard 0 keeps the daily partitions made ahead: at start (run.c does it before the shards
 * start) and then once a day, through its control link. */
static void maintain_partitions(struct shard *s, uint64_t ms)
{
    enum { DAY_MS = 24 * 3600 * 1000 };
    if (s->id != 0)
        return;
    if (s->next_partitions_ms == 0)
        s->next_partitions_ms = ms + DAY_MS;
    if (ms < s->next_partitions_ms)
        return;
    if (pgsink_query(s->sink, "SELECT * FROM telemetry.ensure_partitions(7)", 0, NULL,
                     COOKIE_MAINTENANCE, ms) == 0)
        s->next_partitions_ms = ms + DAY_MS;
}

/* Gauges and the sink's counters into the shard's stats, where the metrics endpoint reads
 * them (every loop turn: a few stores). */
static void publish(struct shard *s)
{
    struct ingest_stats *st = s->st;
    stat_set(&st->conns_open, engine_conns_open(s->e));
    uint64_t busy = 0;
    for (uint32_t i = 0; i < s->nbatches; i++)
        busy += s->batches[i].state != BATCH_FREE &&
                (s->batches[i].state != BATCH_FILLING || s->batches[i].pkts_len > 0);
    stat_set(&st->ring_busy, busy);
    stat_set(&st->ring_batches, s->nbatches);
    const struct pgsink_counters *pc = pgsink_counters(s->sink);
    stat_set(&st->pg_connects[0], pc->connects);
    stat_set(&st->pg_connects[1], pc->control_connects);
    stat_set(&st->pg_disconnects[0], pc->disconnects);
    stat_set(&st->pg_disconnects[1], pc->control_disconnects);
    stat_set(&st->pg_connect_failures[0], pc->connect_failures);
    stat_set(&st->pg_connect_failures[1], pc->control_connect_failures);
    for (int l = 0; l < 2; l++) {
        enum pgsink_phase ph = pgsink_phase(s->sink, (enum pgsink_link)l);
        stat_set(&st->pg_up[l], ph != PGSINK_PHASE_DOWN && ph != PGSINK_PHASE_CONNECTING);
    }
    stat_set(&st->listening, !s->draining);
}

static uint64_t on_tick(void *user, struct engine *e, uint64_t now_ns)
{
    struct shard *s = user;
    uint64_t ms = now_ns / 1000000u;
    pgsink_tick(s->sink, ms);
    maintain_partitions(s, ms);
    struct batch *b = filling(s);
    uint64_t wake = 0;
    if (b->pkts_len > 0) {
        uint64_t due = b->opened_ns + (uint64_t)s->cfg->batch_ms * 1000000u;
        if (now_ns >= due || s->draining)
            rotate(s);
        else
            wake = due;
    }
    submit_next(s);
    send_loads(s);
    allowlist_step(s);
    sink_arm_polls(s);
    if (s->cfg->state_idle_s && ms >= s->next_release_ms) {
        release_idle_windows(s);
        /* Every RELEASE_EVERY_MS, or twice per state_idle_s when that is shorter. */
        uint64_t every = (uint64_t)s->cfg->state_idle_s * 500u;
        s->next_release_ms = ms + (every < RELEASE_EVERY_MS ? every : RELEASE_EVERY_MS);
    }
    if (s->draining) {
        bool held = false;
        for (uint32_t i = 0; i < s->nbatches; i++)
            held |= s->batches[i].state != BATCH_FREE && s->batches[i].state != BATCH_FILLING;
        held |= filling(s)->pkts_len > 0;
        held |= cmds_busy(s); /* a device's answer not yet recorded */
        if ((!held && engine_sends_in_flight(e) == 0) || now_ns >= s->drain_deadline_ns)
            engine_stop(e);
    } else if (atomic_load_explicit(&s->sh->stop, memory_order_relaxed)) {
        s->draining = true;
        s->drain_deadline_ns = now_ns + (uint64_t)s->cfg->drain_timeout_ms * 1000000u;
        engine_stop_accepting(e);
    }
    publish(s);
    if (s->metrics)
        metrics_tick(s->metrics, now_ns);
    uint64_t cmds_ns = cmds_tick(s, now_ns);
    if (cmds_ns && (!wake || cmds_ns < wake))
        wake = cmds_ns;
    uint64_t sink_ms = pgsink_next_deadline_ms(s->sink);
    if (sink_ms != UINT64_MAX) {
        uint64_t sink_ns = sink_ms * 1000000u;
        if (!wake || sink_ns < wake)
            wake = sink_ns;
    }
    return wake;
}

/* A database link came up or went down: one log line per change (never per attempt). */
static void on_sink_state(void *user, enum pgsink_link link, bool connected)
{
    struct shard *s = user;
    const char *name = link == PGSINK_LINK_DATA ? "data" : "control";
    if (connected) {
        fprintf(stderr, "level=info msg=\"database link up\" shard=%u link=%s\n", s->id, name);
        return;
    }
    char q[256];
    fprintf(stderr,
            "level=warn msg=\"database link down; reconnecting with backoff\" shard=%u "
            "link=%s error=\"%s\"\n",
            s->id, name, logfmt_q(q, sizeof q, pgsink_last_error(s->sink, link)));
}

static const struct engine_ops ingest_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .on_poll = on_poll,
    .on_mail = cmds_on_mail,
    .on_tick = on_tick,
    .on_sent = cmds_on_sent,
};

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

static void *map_zero(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int shard_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *c = s->cfg;
    s->nbatches = c->batches < 2 ? 2 : (c->batches > BATCHES_MAX ? BATCHES_MAX : c->batches);
    s->allow_cursor = c->conns_max; /* no allow-list walk before a SIGHUP */
    s->devs = map_zero((size_t)c->conns_max * sizeof *s->devs);
    uint32_t map = 1;
    while (map < 2 * c->conns_max)
        map <<= 1;
    s->owned.mask = map - 1;
    s->owned.keys = map_zero((size_t)map * sizeof *s->owned.keys);
    s->owned.slots = map_zero((size_t)map * sizeof *s->owned.slots);
    s->load_queue = calloc(c->conns_max, sizeof *s->load_queue);
    s->wins = map_zero((size_t)c->conns_max * sizeof *s->wins);
    s->wins_free = calloc(c->conns_max, sizeof *s->wins_free);
    if (!s->devs || !s->owned.keys || !s->owned.slots || !s->load_queue || !s->wins ||
        !s->wins_free) {
        snprintf(err, cap, "shard %u: out of memory for %u connections", s->id, c->conns_max);
        return -ENOMEM;
    }
    /* Highest index on top: the windows in use stay at the low, resident end. */
    for (uint32_t i = 0; i < c->conns_max; i++)
        s->wins_free[i] = c->conns_max - 1 - i;
    s->wins_free_len = c->conns_max;
    for (uint32_t i = 0; i < s->nbatches; i++)
        if (batch_alloc(s, &s->batches[i])) {
            snprintf(err, cap, "shard %u: out of memory for batches", s->id);
            return -ENOMEM;
        }
    batch_open(s, &s->batches[0]);
    copyenc_header(s->header);
    copyenc_trailer(s->trailer);

    struct pgsink_config pc = {
        .conninfo = c->pg_conninfo,
        .copy_sql = COPYENC_COPY_SQL,
        .queries_max = 256,
        .query_timeout_ms = 30000,
        .cb = {.on_txn_done = on_txn_done,
               .on_query_done = on_query_done,
               .on_state = on_sink_state},
        .user = s,
    };
    s->sink = pgsink_create(&pc, err, cap);
    if (!s->sink)
        return -errno;
    return cmds_setup(s, err, cap);
}

static void shard_teardown(struct shard *s)
{
    s->closing = true;
    pgsink_destroy(s->sink);
    cmds_teardown(s);
    for (uint32_t i = 0; i < s->nbatches; i++)
        batch_free(&s->batches[i]);
    free(s->load_queue);
    free(s->wins_free);
    const struct ingest_config *c = s->cfg;
    if (s->wins)
        munmap(s->wins, (size_t)c->conns_max * sizeof *s->wins);
    if (s->devs)
        munmap(s->devs, (size_t)c->conns_max * sizeof *s->devs);
    if (s->owned.keys)
        munmap(s->owned.keys, ((size_t)s->owned.mask + 1) * sizeof *s->owned.keys);
    if (s->owned.slots)
        munmap(s->owned.slots, ((size_t)s->owned.mask + 1) * sizeof *s->owned.slots);
}

int ingest_shard_run(struct ingest_shared *sh, unsigned id)
{
    const struct ingest_config *c = sh->cfg;
    struct shard *s = calloc(1, sizeof *s);
    char err[512] = "";
    int rc = -ENOMEM;
    if (!s)
        goto fail_early;
    s->sh = sh;
    s->cfg = c;
    s->id = id;
    s->st = &sh->stats[id];
    rc = shard_setup(s, err, sizeof err);
    if (rc)
        goto fail;

    struct engine_config ec = {
        .shard = id,
        .shards = c->shards,
        .listen = true,
        .addr = c->listen_addr,
        .addr_len = c->listen_addr_len,
        .backlog = 4096,
        .conns_max = c->conns_max,
        .bufs = c->bufs,
        .buf_bytes = c->buf_bytes,
        .reasm_bufs = c->conns_max,
        .frame_bytes_max = c->frame_bytes_max,
        .idle_timeout_ms = c->idle_timeout_s * 1000,
        .frame_timeout_ms = c->frame_timeout_s * 1000,
        .sq_entries = 4096,
        .wait_batch_us = c->wait_batch_us,
        .pin = c->pin,
        .ops = &ingest_ops,
        .app = s,
    };
    rc = engine_init(&s->e, &ec, err, sizeof err);
    if (rc)
        goto fail;
    sh->ring_fds[id] = engine_ring_fd(s->e);
    sh->engines[id] = s->e;
    sh->engine_stats[id] = engine_stats(s->e);
    atomic_fetch_add(&sh->rings_ready, 1); /* seq_cst: publishes both stores above */
    while (atomic_load(&sh->rings_ready) < c->shards && atomic_load(&sh->start_error) == 0)
        sched_yield();
    if (atomic_load(&sh->start_error)) {
        rc = atomic_load(&sh->start_error);
        goto out;
    }
    engine_set_peers(s->e, sh->ring_fds, c->shards);
    engine_set_mailboxes(s->e, sh->engines, c->shards);
    if (id == 0 && c->metrics_fd >= 0) {
        s->metrics = metrics_create(sh, s->e, c->metrics_fd);
        if (!s->metrics)
            fprintf(stderr, "level=error msg=\"metrics: out of memory; not served\"\n");
    }
    rc = engine_run(s->e);
    metrics_destroy(s->metrics);
    s->metrics = NULL;
    /* Out of the loop: this shard neither listens nor talks to the database any more (the
     * metrics and /healthz say so at once, even while it waits for the others below). */
    stat_set(&s->st->listening, 0);
    stat_set(&s->st->pg_up[0], 0);
    stat_set(&s->st->pg_up[1], 0);
    if (rc) {
        snprintf(err, sizeof err, "shard %u: io_uring loop failed: %s", id, strerror(-rc));
        fprintf(stderr, "level=error msg=\"%s; stopping the process\"\n", err);
        err[0] = '\0';                         /* said */
        atomic_store(&sh->shard_failed, true); /* main stops the others */
    }
    const struct engine_stats *es = engine_stats(s->e);
    /* One line per shard (written at once: the shards stop together). */
    const struct ingest_stats *st = s->st;
    char line[1024];
    snprintf(line, sizeof line,
             "level=info msg=\"shard stopped\" shard=%u loops=%llu cqes=%llu recvs=%llu "
             "recv_enobufs=%llu sends=%llu pauses=%llu pause_cancels=%llu batches=%llu rows=%llu "
             "windows_released=%llu state_reloads=%llu cmds_fetched=%llu cmds_sent=%llu "
             "cmds_answered=%llu cmds_failed=%llu cmds_expired=%llu cmd_responses_unexpected=%llu "
             "cmd_frames_ignored=%llu cmd_wakes=%llu cmd_wakes_offline=%llu cmd_sweeps=%llu "
             "cmd_query_failures=%llu registry_writes=%llu registry_errors=%llu "
             "replies_published=%llu replies_unpublished=%llu\n",
             id, (unsigned long long)es->loops, (unsigned long long)es->cqes,
             (unsigned long long)es->recv_completions, (unsigned long long)es->recv_enobufs,
             (unsigned long long)es->sends, (unsigned long long)es->pauses,
             (unsigned long long)es->pause_cancels, (unsigned long long)st->batches_committed,
             (unsigned long long)st->rows_committed, (unsigned long long)st->windows_released,
             (unsigned long long)st->state_reloads, (unsigned long long)st->cmds_fetched,
             (unsigned long long)st->cmds_sent, (unsigned long long)st->cmds_answered,
             (unsigned long long)st->cmds_failed, (unsigned long long)st->cmds_expired,
             (unsigned long long)st->cmd_responses_unexpected,
             (unsigned long long)st->cmd_frames_ignored, (unsigned long long)st->cmd_wakes,
             (unsigned long long)st->cmd_wakes_offline, (unsigned long long)st->cmd_sweeps,
             (unsigned long long)st->cmd_query_failures, (unsigned long long)st->registry_writes,
             (unsigned long long)st->registry_errors, (unsigned long long)st->replies_published,
             (unsigned long long)st->replies_unpublished);
    fputs(line, stderr);
    /* Another shard may still post to this engine's mailboxes until its own loop ends. */
    atomic_fetch_add(&sh->loops_done, 1);
    while (atomic_load(&sh->loops_done) < c->shards)
        usleep(1000);
    goto out;
fail:
    atomic_store(&sh->start_error, rc);
fail_early:
    fprintf(stderr, "level=error msg=\"%s\"\n", err[0] ? err : "out of memory");
out:
    if (rc && err[0] && s && s->e)
        fprintf(stderr, "level=error msg=\"%s\"\n", err);
    if (s) {
        engine_free(s->e);
        shard_teardown(s);
        free(s);
    }
    atomic_fetch_add(&sh->shards_done, 1);
    return rc;
}
