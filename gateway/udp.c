/* udp.c — the datagrams of a gateway shard (udp.h). The shard's thread only, except the copies'
 * `busy` flags, which the owner shard of a handed datagram clears.
 *
 * One path for every datagram, wherever it comes from (the socket, a mail, the held list):
 * decode it (invalid: counted by reason, done), route it (another shard's: hand it over, done),
 * then take it under its device's slot — or hold it when the device's state is loading or the
 * ring is full. */
#include "gateway/udp.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/avl.h"
#include "gateway/batch.h"
#include "gateway/router.h"
#include "gateway/session.h"
#include "gateway/zmap.h"

enum verdict { V_DONE, V_HOLD, V_HANDOFF };

/* What a held datagram waits for: the state load of the device on (slot, gen), or (slot -1)
 * room in the ring. */
struct wait {
    int64_t slot;
    uint32_t gen;
};

/* ---------------------------------------------------------------------------------------------
 * The slab of copies
 * ------------------------------------------------------------------------------------------- */

static struct udp_held *slab_at(const struct udp *u, uint32_t i)
{
    return (struct udp_held *)(void *)(u->slab + (size_t)i * u->stride);
}

/* A free copy of this shard's slab holding the datagram, or NULL when every one is busy. */
static struct udp_held *copy_of(struct udp *u, const uint8_t *p, size_t len,
                                const struct sockaddr *from, socklen_t from_len, uint64_t imei)
{
    for (uint32_t k = 0; k < UDP_HELD_MAX; k++) {
        uint32_t i = (u->cursor + k) % UDP_HELD_MAX;
        struct udp_held *h = slab_at(u, i);
        if (atomic_load_explicit(&h->busy, memory_order_acquire))
            continue;
        atomic_store_explicit(&h->busy, true, memory_order_relaxed);
        u->cursor = (i + 1) % UDP_HELD_MAX;
        h->next = NULL;
        h->imei = imei;
        h->from_len = from_len <= sizeof h->from ? from_len : (socklen_t)sizeof h->from;
        memcpy(&h->from, from, h->from_len);
        h->len = (uint32_t)len;
        memcpy(h->bytes, p, len);
        return h;
    }
    return NULL;
}

static void release(struct udp_held *h)
{
    atomic_store_explicit(&h->busy, false, memory_order_release);
}

static void hold(struct udp *u, struct udp_held *h)
{
    h->next = NULL;
    if (u->tail)
        u->tail->next = h;
    else
        u->head = h;
    u->tail = h;
    u->held++;
}

/* ---------------------------------------------------------------------------------------------
 * One datagram
 * ------------------------------------------------------------------------------------------- */

static void count_invalid(struct shard *s, unsigned reason)
{
    assert(reason > 0 && reason < UDP_INVALID_REASONS);
    stat_add(&s->st->udp_invalid[reason], 1);
}

/* Held until the state of the device on slot is loaded. */
static enum verdict wait_load(struct shard *s, int64_t slot, struct wait *w)
{
    w->slot = slot;
    w->gen = session_dev(s, (uint32_t)slot)->gen;
    return V_HOLD;
}

/* The datagram's packet under its device's slot (this shard owns the IMEI). */
static enum verdict take(struct shard *s, const struct avl_packet *pkt, const struct sockaddr *from,
                         socklen_t from_len, struct wait *w)
{
    int64_t slot = imap_get(&s->sess->owned, pkt->imei);
    if (slot < 0) {
        slot = session_udp_open(s, pkt->imei, batch_pending_owner(s, pkt->imei));
        if (slot >= 0)
            return wait_load(s, slot, w);
        stat_add(&s->st->udp_dropped[UDP_DROP_DEVICES_FULL], 1);
        return V_DONE;
    }
    struct dev *d = session_dev(s, (uint32_t)slot);
    if (d->state == DEV_REFUSED) {
        stat_add(&s->st->udp_dropped[UDP_DROP_UNKNOWN_DEVICE], 1);
        return V_DONE;
    }
    if (d->state != DEV_OPEN)
        return wait_load(s, slot, w);
    if (d->dormant) {
        session_reload(s, (uint32_t)slot); /* a TCP device's window, released while quiet */
        return wait_load(s, slot, w);
    }
    w->slot = -1;
    if (s->paused)
        return V_HOLD; /* the ring is full: in arrival order, after what waits already */
    struct udp_reply r = {.to_len = from_len <= sizeof r.to ? from_len : (socklen_t)sizeof r.to,
                          .packet_id = pkt->udp_packet_id,
                          .avl_packet_id = pkt->udp_avl_packet_id};
    memcpy(&r.to, from, r.to_len);
    int rc = batch_take(s, (uint32_t)slot, d->gen, d, pkt, s->recs, &r);
    if (rc == 0) {
        s->paused = true;
        stat_add(&s->st->backpressure_pauses, 1);
        return V_HOLD;
    }
    if (rc < 0) {
        stat_add(&s->st->udp_dropped[UDP_DROP_DEFERRED], 1);
        return V_DONE;
    }
    stat_add(&s->st->udp_taken, 1);
    if (s->ring->last_stored == 0)
        stat_add(&s->st->udp_duplicate, 1);
    return V_DONE;
}

/* Decodes, routes and takes one datagram; *owner and *imei say where a V_HANDOFF goes, *w what
 * a V_HOLD waits for. */
static enum verdict process(struct shard *s, const uint8_t *p, size_t len,
                            const struct sockaddr *from, socklen_t from_len, unsigned *owner,
                            uint64_t *imei, struct wait *w)
{
    struct avl_packet pkt;
    int rc = avl_decode_udp(p, len, &pkt, s->recs);
    if (rc < 0) {
        count_invalid(s, (unsigned)-rc);
        return V_DONE;
    }
    if (pkt.imei > ENGINE_KEY_MAX) {
        count_invalid(s, UDP_INVALID_IMEI_RANGE); /* refused on every shard, as over TCP */
        return V_DONE;
    }
    *imei = pkt.imei;
    *owner = router_owner(s->sh->router, pkt.imei);
    if (*owner != s->id)
        return V_HANDOFF;
    return take(s, &pkt, from, from_len, w);
}

void udp_on_datagram(struct shard *s, const uint8_t *p, size_t len, bool truncated,
                     const struct sockaddr *from, socklen_t from_len)
{
    struct udp *u = s->udp;
    if (truncated || len > s->cfg->udp_bytes_max) {
        count_invalid(s, UDP_INVALID_TOO_LONG);
        return;
    }
    unsigned owner = 0;
    uint64_t imei = 0;
    struct wait w = {.slot = -1};
    enum verdict v = process(s, p, len, from, from_len, &owner, &imei, &w);
    if (v == V_DONE)
        return;
    struct udp_held *h = copy_of(u, p, len, from, from_len, imei);
    if (!h) {
        stat_add(&s->st->udp_dropped[UDP_DROP_BACKLOG_FULL], 1);
        return;
    }
    if (v == V_HOLD) {
        h->wait_slot = w.slot;
        h->wait_gen = w.gen;
        hold(u, h);
        return;
    }
    struct udp_mail m = {.zero = 0, .held = h};
    uint8_t mail[ENGINE_MAIL_BYTES] = {0}; /* a mail is that long */
    memcpy(mail, &m, sizeof m);
    if (engine_mail(s->e, owner, mail) != 0) {
        release(h);
        stat_add(&s->st->udp_dropped[UDP_DROP_BACKLOG_FULL], 1);
        return;
    }
    stat_add(&s->st->udp_handed_off, 1);
}

/* A copy (handed in, or held) processed again: released when done, held otherwise. */
static void process_copy(struct shard *s, struct udp_held *h)
{
    unsigned owner = 0;
    uint64_t imei = 0;
    struct wait w = {.slot = -1};
    enum verdict v = process(s, h->bytes, h->len, (const struct sockaddr *)&h->from, h->from_len,
                             &owner, &imei, &w);
    assert(v != V_HANDOFF); /* decoded and routed here before */
    if (v == V_HOLD) {
        h->wait_slot = w.slot;
        h->wait_gen = w.gen;
        hold(s->udp, h);
    } else {
        release(h);
    }
}

void udp_on_mail(struct shard *s, const void *msg)
{
    struct udp_mail m;
    memcpy(&m, msg, sizeof m);
    process_copy(s, m.held);
}

void udp_wake(struct shard *s)
{
    if (s->udp)
        s->udp->retry = true;
}

/* What became of the device a held datagram waits for: still loading (hold on), gone (closed
 * meanwhile: drop), or ready (try it: open, or refused — then take() counts it). */
enum waited { W_LOADING, W_GONE, W_READY };

static enum waited waited_for(const struct shard *s, const struct udp_held *h)
{
    if (h->wait_slot < 0)
        return W_READY;
    const struct dev *d = session_dev(s, (uint32_t)h->wait_slot);
    if (d->gen != h->wait_gen || d->state == DEV_FREE)
        return W_GONE;
    return dev_loading(d) ? W_LOADING : W_READY;
}

/* One pass over the held datagrams, in order: each taken, dropped, or held again. */
static void retry_held(struct shard *s)
{
    struct udp *u = s->udp;
    struct udp_held *h = u->head;
    u->head = u->tail = NULL;
    u->held = 0;
    u->retry = false;
    while (h) {
        struct udp_held *next = h->next;
        enum waited w = waited_for(s, h);
        if (w == W_GONE) {
            stat_add(&s->st->udp_dropped[UDP_DROP_DEVICE_CLOSED], 1);
            release(h);
        } else if (w == W_LOADING || s->paused) {
            hold(u, h);
        } else {
            process_copy(s, h);
        }
        h = next;
    }
}

void udp_tick(struct shard *s)
{
    struct udp *u = s->udp;
    if (!u)
        return;
    bool room = u->ring_full && !s->paused; /* a batch came free since the last turn */
    u->ring_full = s->paused;
    if (u->head && !s->paused && (u->retry || room))
        retry_held(s);
    bool pause = s->paused || u->held >= UDP_HELD_MAX / 2;
    if (pause && !u->paused)
        engine_udp_pause(s->e);
    else if (!pause && u->paused && u->held < UDP_HELD_MAX / 4)
        engine_udp_resume(s->e);
    else
        return;
    u->paused = !u->paused;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

int udp_setup(struct shard *s, char *err, size_t cap)
{
    if (!s->cfg->udp)
        return 0;
    struct udp *u = calloc(1, sizeof *u);
    s->udp = u;
    if (u) {
        u->stride = (uint32_t)((sizeof(struct udp_held) + s->cfg->udp_bytes_max + 63) / 64 * 64);
        u->slab_bytes = (size_t)UDP_HELD_MAX * u->stride;
        u->slab = zmap(u->slab_bytes); /* pages touched only as copies are used */
    }
    if (!u || !u->slab) {
        snprintf(err, cap, "shard %u: out of memory for held datagrams", s->id);
        return -ENOMEM;
    }
    return 0;
}

void udp_teardown(struct shard *s)
{
    struct udp *u = s->udp;
    if (!u)
        return;
    if (u->slab)
        zunmap(u->slab, u->slab_bytes);
    free(u);
    s->udp = NULL;
}
