/* session.c — the device on each connection of a gateway shard (session.h). The shard's thread
 * only.
 *
 * A connection opens in DEV_HANDSHAKE. A valid IMEI frame identifies it to the engine (no
 * --handshake-timeout-s, never evicted for a newcomer; engine.h). An IMEI above ENGINE_KEY_MAX
 * is refused on every shard (0x00): a handoff key holds 56 bits, and a real IMEI has 15 digits.
 * The IMEI is answered by the owner shard only (router_owner, the consistent hash of the IMEI):
 * any other shard hands the socket over, key = the IMEI. The owner takes the device (a second
 * connection of the same IMEI replaces the first: its state is the freshest there is; counted by
 * whether the two came from the same IP address, and logged when not), loads its state from the
 * database on the control link (DEV_LOADING) and answers 0x01 when the load is in (DEV_OPEN), or
 * 0x00 when --devices known and the device is not enabled. Uncommitted batches know more than the
 * database: the window of the newest one that holds the device wins over the stored one.
 *
 * A load whose answer may predate a COMMIT of the device's rows (load_stale) is asked again. A
 * load the database refuses (a revoked permission, a broken function) is asked again too, but
 * after a shard-wide backoff (load_refused), never in a tight loop on the control link; the
 * device waits unanswered meanwhile. A device quiet for state_idle_s gives its window back
 * (dormant); its next packet waits for its state to be loaded again (DEV_RELOADING, the
 * connection held by the engine). A UDP device (session.h) goes the same way without an answer
 * and is closed, not made dormant, when quiet. */
#include "gateway/session.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/pgsink.h"
#include "gateway/proxy.h"
#include "gateway/router.h"
#include "gateway/tags.h"
#include "gateway/zmap.h"

/* A device's state when it connects, and whether it has open commands (one probe of the partial
 * index: the command itself is fetched only when there is one — a connection storm then costs
 * one statement per device, not two). */
#define STATE_LOAD_SQL                                                                             \
    "SELECT s.last_ts_ms, s.dedup, s.enabled, EXISTS (SELECT 1 FROM public.commands c "            \
    "WHERE c.imei = $1::bigint AND c.status IN ('pending', 'sent')), s.owner, s.claimed "          \
    "FROM telemetry.device_state_claim($1::bigint, $2::bigint, $3::boolean) AS s"

/* Of these IMEIs (a chunk of the shard's devices), those not enabled in public.devices. */
#define REVOKED_SQL                                                                                \
    "SELECT k.imei FROM unnest($1::bigint[]) AS k(imei) WHERE NOT EXISTS (SELECT 1 FROM "          \
    "public.devices d WHERE d.imei = k.imei AND d.enabled)"

static void send_reply(struct shard *s, uint32_t slot, uint32_t gen, uint8_t byte)
{
    engine_send(s->e, slot, gen, &byte, 1);
}

/* ---------------------------------------------------------------------------------------------
 * State loads
 * ------------------------------------------------------------------------------------------- */

/* Whether the load queue's entry (an engine key) still stands for a device waiting to send its
 * load. */
static bool load_entry_live(const struct shard *s, uint64_t key)
{
    const struct dev *d = session_dev(s, engine_key_slot(key));
    return d->gen == engine_key_gen(key) && dev_loading(d) && d->load_queued;
}

static void queue_load(struct shard *s, uint32_t slot)
{
    struct sessions *ss = s->sess;
    struct dev *d = &ss->devs[slot];
    if (d->load_queued)
        return;
    uint32_t cap = ss->slots;
    if (ss->load_len == cap) {
        /* Full of entries of connections gone since (the control link was down while devices
         * came and went): keep the live ones, in order. There is at most one live entry per
         * slot and this slot has none, so room remains. */
        uint32_t kept = 0;
        for (uint32_t k = 0; k < ss->load_len; k++) {
            uint64_t key = ss->load_queue[(ss->load_head + k) % cap];
            if (load_entry_live(s, key))
                ss->load_queue[(ss->load_head + kept++) % cap] = key;
        }
        ss->load_len = kept;
        assert(kept < cap);
    }
    d->load_queued = true;
    ss->load_queue[(ss->load_head + ss->load_len) % cap] = engine_key(slot, d->gen);
    ss->load_len++;
}

void session_send_loads(struct shard *s)
{
    struct sessions *ss = s->sess;
    if (ss->load_len > 0 && shard_now_ms(s) < ss->load_retry_ms)
        return; /* after a refusal: the engine's tick (every 100 ms at least) comes back */
    while (ss->load_len > 0) {
        uint64_t key = ss->load_queue[ss->load_head];
        struct dev *d = session_dev(s, engine_key_slot(key));
        if (!load_entry_live(s, key)) {
            ss->load_head = (ss->load_head + 1) % ss->slots;
            ss->load_len--;
            continue;
        }
        char imei[24], owner[24];
        snprintf(imei, sizeof imei, "%" PRIu64, d->imei);
        snprintf(owner, sizeof owner, "%" PRIu64, d->owner);
        /* A reload keeps an open device whatever public.devices says now (the allow-list walk
         * decides that): claimed in any case. */
        bool known_only = s->cfg->devices_known && d->state != DEV_RELOADING;
        const char *params[3] = {imei, owner, known_only ? "t" : "f"};
        if (pgsink_query(s->sink, STATE_LOAD_SQL, 3, params, query_cookie(Q_STATE_LOAD, key),
                         shard_now_ms(s)) != 0)
            return; /* down or full: the next tick tries again */
        d->load_queued = false;
        ss->load_head = (ss->load_head + 1) % ss->slots;
        ss->load_len--;
    }
}

const struct dev *session_loading(const struct shard *s, uint64_t key)
{
    const struct dev *d = session_dev(s, engine_key_slot(key));
    return d->gen == engine_key_gen(key) && dev_loading(d) ? d : NULL;
}

/* The device's window from the load: the pending snapshot if any, else the stored one. */
static void load_window(struct shard *s, struct dev *d, const PGresult *res,
                        const struct dedup *pending)
{
    struct dedup_pool *pool = &s->sess->wins;
    if (pending) {
        dedup_win_set(pool, &d->win, pending);
        return;
    }
    struct dedup *w = dedup_win_mut(pool, &d->win);
    dedup_from_text(w, PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1));
    if (w->len == 0)
        dedup_win_drop(pool, &d->win);
}

/* The database answered d's load with an error (or no row): every load waits for the backoff,
 * which grows by one step per round of loads sent (the answers of one round arrive together),
 * so a refusal that lasts costs a few queries a second, not a tight loop. Logged rate-limited. */
static void load_refused(struct shard *s, const struct dev *d, const PGresult *res)
{
    struct sessions *ss = s->sess;
    uint64_t now = shard_now_ms(s);
    if (now >= ss->load_retry_ms) {
        uint32_t b = ss->load_backoff_ms;
        ss->load_backoff_ms = b == 0                                 ? SESSION_LOAD_BACKOFF_MIN_MS
                              : b >= SESSION_LOAD_BACKOFF_MAX_MS / 2 ? SESSION_LOAD_BACKOFF_MAX_MS
                                                                     : 2 * b;
        ss->load_retry_ms = now + ss->load_backoff_ms;
    }
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char q[256];
    log_limited(&ss->log_load_failed, now, LOG_WARN, "state load failed; retrying with backoff",
                "shard=%u imei=%" PRIu64 " sqlstate=%s backoff_ms=%u error=\"%s\"", s->id, d->imei,
                st ? st : "", ss->load_backoff_ms,
                logfmt_q(q, sizeof q, PQresultErrorMessage(res)));
}

/* Whether the answer to d's load (slot, gen) can be used now; otherwise it was counted and the
 * load is asked again, or the device closed. A takeover (claimed) sets d's owner token and drops
 * *pending: the state was read after every transaction that held the row, and this shard's
 * batches of the device under the old token will not commit, so the stored window is the whole
 * truth. */
static bool load_usable(struct shard *s, struct dev *d, uint32_t slot, uint32_t gen,
                        const PGresult *res, const struct dedup **pending)
{
    bool answered = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    bool claimed = answered && strcmp(PQgetvalue(res, 0, 5), "t") == 0;
    if (claimed) {
        d->owner = strtoull(PQgetvalue(res, 0, 4), NULL, 10);
        d->load_stale = false;
        *pending = NULL;
    }
    if (d->load_stale) {
        /* The answer may predate a commit of this device's rows, whose batch is gone now:
         * neither it nor the pending snapshot knows those records. Ask again. */
        d->load_stale = false;
        queue_load(s, slot);
        return false;
    }
    const char *st = res && !answered ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (st && strcmp(st, "55P03") == 0) {
        /* Its row stayed locked past the claim's lock_timeout (another session's transaction
         * of the device): this device only, closed unanswered; it reconnects and asks again.
         * Not the shard-wide backoff: the other devices' loads are fine. */
        stat_add(&s->st->state_load_busy, 1);
        log_limited(&s->sess->log_load_busy, shard_now_ms(s), LOG_WARN,
                    "state load: the device's row stayed locked; closing it to reconnect later",
                    "shard=%u imei=%" PRIu64, s->id, d->imei);
        session_close(s, slot, gen);
        return false;
    }
    if (!answered) {
        stat_add(&s->st->state_load_failures, 1);
        if (res) /* without one the link broke: its reconnect has its own backoff */
            load_refused(s, d, res);
        queue_load(s, slot);
        return false;
    }
    return true;
}

bool session_on_load(struct shard *s, uint64_t key, const PGresult *res,
                     const struct dedup *pending, bool *has_commands)
{
    uint32_t slot = engine_key_slot(key), gen = engine_key_gen(key);
    struct dev *d = session_dev(s, slot);
    if (!session_loading(s, key))
        return false; /* the connection went away meanwhile */
    bool reload = d->state == DEV_RELOADING;
    if (!load_usable(s, d, slot, gen, res, &pending))
        return false;
    s->sess->load_backoff_ms = 0;
    bool udp = session_is_udp(s, slot);
    if (!reload && s->cfg->devices_known &&
        (PQgetisnull(res, 0, 2) || strcmp(PQgetvalue(res, 0, 2), "t") != 0)) {
        if (udp) {
            d->state = DEV_REFUSED; /* its datagrams are counted by udp.c */
            d->last_packet_s = shard_now_s(s);
            return false;
        }
        stat_add(&s->st->handshake_rejected, 1);
        send_reply(s, slot, gen, 0x00);
        session_close(s, slot, gen);
        return false;
    }
    if (PQgetisnull(res, 0, 4) || strtoull(PQgetvalue(res, 0, 4), NULL, 10) != d->owner) {
        queue_load(s, slot); /* not this shard's token after all (a race with another claim) */
        return false;
    }
    load_window(s, d, res, pending);
    d->state = DEV_OPEN;
    d->last_packet_s = shard_now_s(s);
    if (udp)
        return false; /* its datagrams wait in udp.c, which hears of the load (udp_on_loaded) */
    if (reload) {
        engine_resume_conn(s->e, slot, gen); /* its held packet goes on */
        return false;
    }
    stat_add(&s->st->handshakes, 1);
    send_reply(s, slot, gen, 0x01);
    d->accepted_ms = (uint64_t)wall_clock_ms();
    *has_commands = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
    return true;
}

void session_reload(struct shard *s, uint32_t slot)
{
    struct dev *d = session_dev(s, slot);
    assert(d->state == DEV_OPEN && d->dormant);
    d->dormant = false;
    d->state = DEV_RELOADING;
    d->load_stale = false;
    stat_add(&s->st->state_reloads, 1);
    queue_load(s, slot);
    session_send_loads(s);
}

void session_mark_load_stale(struct shard *s, uint64_t imei)
{
    int64_t slot = imap_get(&s->sess->owned, imei);
    if (slot < 0)
        return;
    struct dev *d = session_dev(s, (uint32_t)slot);
    if (dev_loading(d) && !d->load_queued)
        d->load_stale = true;
}

/* ---------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------- */

void session_on_open(struct shard *s, uint32_t slot, uint32_t gen, bool proxied)
{
    struct dev *d = session_dev(s, slot);
    d->gen = gen;
    d->state = proxied ? DEV_PROXY : DEV_HANDSHAKE;
    d->load_queued = false;
    d->unacked = 0;
}

void session_header_read(struct shard *s, uint32_t slot)
{
    struct dev *d = session_dev(s, slot);
    assert(d->state == DEV_PROXY);
    d->state = DEV_HANDSHAKE;
}

/* The client address of the connection in slot: its PROXY header's, or its socket's peer. */
static bool peer_of(struct shard *s, uint32_t slot, struct sockaddr_storage *ss)
{
    return proxy_peer_of(s, slot, session_dev(s, slot)->gen, ss);
}

/* The same IP address (the ports differ: a reconnect gets a new one). */
static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr)) == 0;
    return a->ss_family == AF_INET6 &&
           memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* The connection in slot replaces the older one in old, both of imei: counted by how their
 * peers' IP addresses compare. Another address is the operator's sign of a cloned or spoofed
 * IMEI: logged (rate-limited). */
static void count_replaced(struct shard *s, uint32_t old, uint32_t slot, uint64_t imei)
{
    struct sockaddr_storage was, now;
    enum replaced_reason why = REPLACED_UNKNOWN_ADDRESS;
    if (peer_of(s, old, &was) && peer_of(s, slot, &now))
        why = same_ip(&was, &now) ? REPLACED_SAME_ADDRESS : REPLACED_OTHER_ADDRESS;
    stat_add(&s->st->replaced[why], 1);
    if (why != REPLACED_OTHER_ADDRESS)
        return;
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    log_limited(&s->sess->log_replaced, shard_now_ms(s), LOG_WARN,
                "device connected again from another address; the older connection is closed",
                "shard=%u imei=%" PRIu64 " old_address=%s new_address=%s", s->id, imei,
                logfmt_ip(a, sizeof a, &was), logfmt_ip(b, sizeof b, &now));
}

/* This shard owns imei: the connection in slot takes the device, replacing an older one (whose
 * owner token it keeps: the freshest this shard has). */
static void take_device(struct shard *s, uint32_t slot, uint64_t imei, uint64_t owner_hint)
{
    struct sessions *ss = s->sess;
    struct dev *d = &ss->devs[slot];
    int64_t old = imap_get(&ss->owned, imei);
    d->imei = imei;
    d->owner = old >= 0 && (uint32_t)old != slot ? ss->devs[old].owner : owner_hint;
    d->state = DEV_LOADING;
    d->load_stale = false;
    d->dormant = false;
    dedup_win_drop(&ss->wins, &d->win);
    if (old >= 0 && (uint32_t)old != slot) {
        /* A second connection replaces the first; its state is the freshest there is. A device
         * known over UDP only that connects is not a replacement. */
        if (!session_is_udp(s, (uint32_t)old))
            count_replaced(s, (uint32_t)old, slot, imei);
        session_close(s, (uint32_t)old, ss->devs[old].gen);
    }
    imap_put(&ss->owned, imei, slot);
    queue_load(s, slot);
    session_send_loads(s);
}

enum session_handshake session_handshake(struct shard *s, uint32_t slot, uint32_t gen,
                                         uint64_t imei, bool more_bytes, uint64_t owner_hint)
{
    /* A device waits for our answer before it sends more: bytes behind the handshake are a
     * protocol error. An IMEI above ENGINE_KEY_MAX (17 digits) would not fit a handoff key;
     * every real IMEI has 15 digits. Both are refused the same way on every shard. */
    if (more_bytes || imei > ENGINE_KEY_MAX) {
        stat_add(&s->st->handshake_errors, 1);
        send_reply(s, slot, gen, 0x00);
        return SESSION_REFUSED;
    }
    engine_identified(s->e, slot, gen); /* no handshake timeout, never evicted any more */
    unsigned owner = router_owner(s->sh->router, imei);
    if (owner != s->id) {
        stat_add(&s->st->handed_off, 1);
        if (proxy_on(s))
            proxy_before_handoff(s, slot, owner, imei);
        engine_handoff(s->e, slot, gen, owner, imei);
        return SESSION_HANDED_OFF;
    }
    take_device(s, slot, imei, owner_hint);
    return SESSION_OWNED;
}

void session_close_owner(struct shard *s, uint64_t imei, uint64_t owner)
{
    int64_t slot = imap_get(&s->sess->owned, imei);
    if (slot >= 0 && session_dev(s, (uint32_t)slot)->owner == owner)
        session_close(s, (uint32_t)slot, session_dev(s, (uint32_t)slot)->gen);
}

int session_close(struct shard *s, uint32_t slot, uint32_t gen)
{
    if (!session_is_udp(s, slot))
        return engine_close(s->e, slot, gen);
    struct sessions *ss = s->sess;
    struct dev *d = &ss->devs[slot];
    if (d->state == DEV_FREE || d->gen != (gen & ENGINE_GEN_MASK))
        return -ESTALE;
    session_on_close(s, slot, d->gen);
    ss->udp_free[ss->udp_free_len++] = slot;
    return 0;
}

int64_t session_udp_open(struct shard *s, uint64_t imei, uint64_t owner_hint)
{
    struct sessions *ss = s->sess;
    if (ss->udp_free_len == 0)
        return -1;
    uint32_t slot = ss->udp_free[--ss->udp_free_len];
    struct dev *d = &ss->devs[slot];
    assert(d->state == DEV_FREE && imap_get(&ss->owned, imei) < 0);
    d->load_queued = false;
    d->unacked = 0;
    d->accepted_ms = (uint64_t)wall_clock_ms();
    take_device(s, slot, imei, owner_hint);
    return slot;
}

uint32_t session_udp_devices(const struct shard *s)
{
    const struct sessions *ss = s->sess;
    return ss->slots - s->cfg->conns_max - ss->udp_free_len;
}

int64_t session_conn_of(const struct shard *s, uint64_t imei)
{
    int64_t slot = imap_get(&s->sess->owned, imei);
    return slot >= 0 && !session_is_udp(s, (uint32_t)slot) ? slot : -1;
}

int64_t session_owned_slot_of_row(const struct shard *s, const PGresult *res, int row)
{
    return imap_get(&s->sess->owned, strtoull(PQgetvalue(res, row, 0), NULL, 10));
}

void session_on_close(struct shard *s, uint32_t slot, uint32_t gen)
{
    struct sessions *ss = s->sess;
    struct dev *d = &ss->devs[slot];
    assert(d->gen == gen);
    if ((dev_owned(d) || d->state == DEV_REFUSED) && imap_get(&ss->owned, d->imei) == (int64_t)slot)
        imap_del(&ss->owned, d->imei);
    dedup_win_drop(&ss->wins, &d->win);
    d->dormant = false;
    d->unacked = 0;
    d->state = DEV_FREE;
    d->gen = engine_gen_next(gen);
}

/* ---------------------------------------------------------------------------------------------
 * The allow-list walk and idle windows
 * ------------------------------------------------------------------------------------------- */

static void allowlist_said(const struct shard *s)
{
    log_line(LOG_INFO, "allow-list checked", "shard=%u devices=%u closed=%" PRIu64, s->id,
             s->sess->allow_checked, s->sess->allow_closed);
}

/* A SIGHUP since the last round starts a new one (one in progress starts over). */
static void allowlist_start(struct shard *s)
{
    struct sessions *ss = s->sess;
    unsigned gen = atomic_load_explicit(&s->sh->allowlist_gen, memory_order_relaxed);
    if (gen == ss->allow_gen || ss->allow_in_flight)
        return;
    ss->allow_gen = gen;
    for (uint32_t slot = s->cfg->conns_max; slot < ss->slots; slot++)
        if (ss->devs[slot].state == DEV_REFUSED)
            session_close(s, slot, ss->devs[slot].gen); /* enabled since? the next datagram asks */
    if (s->cfg->devices_known) {
        ss->allow_cursor = 0;
        ss->allow_checked = 0;
        ss->allow_closed = 0;
    }
}

unsigned session_imei_array(struct shard *s, uint32_t *cursor, unsigned max,
                            bool (*pick)(struct shard *s, uint32_t slot), char *buf, size_t cap)
{
    char *o = buf, *end = buf + cap;
    assert(cap >= (size_t)max * 18 + 4); /* 15-digit IMEIs and commas, braces, NUL */
    *o++ = '{';
    unsigned n = 0;
    uint32_t cur = *cursor;
    while (cur < s->sess->slots && n < max) {
        uint32_t slot = cur++;
        if (!pick(s, slot))
            continue;
        o += snprintf(o, (size_t)(end - o), n ? ",%" PRIu64 : "%" PRIu64, s->sess->devs[slot].imei);
        n++;
    }
    assert(o + 2 <= end);
    *o++ = '}';
    *o = 0;
    *cursor = cur;
    return n;
}

static bool pick_owned(struct shard *s, uint32_t slot)
{
    return dev_owned(session_dev(s, slot));
}

void session_allowlist_step(struct shard *s)
{
    struct sessions *ss = s->sess;
    allowlist_start(s);
    if (ss->allow_in_flight || ss->allow_cursor >= ss->slots)
        return;
    enum pgsink_phase ph = pgsink_phase(s->sink, PGSINK_LINK_CONTROL);
    if (ph != PGSINK_PHASE_IDLE && ph != PGSINK_PHASE_BUSY)
        return; /* the control link is down: the walk waits for it (no rescans meanwhile) */
    uint32_t cur = ss->allow_cursor;
    unsigned n = session_imei_array(s, &cur, SESSION_ALLOW_CHUNK, pick_owned, ss->allow_imeis,
                                    sizeof ss->allow_imeis);
    if (n > 0) {
        const char *params[1] = {ss->allow_imeis};
        if (pgsink_query(s->sink, REVOKED_SQL, 1, params, query_cookie(Q_ALLOWLIST, 0),
                         shard_now_ms(s)) != 0)
            return; /* the control link is down or full: this chunk again next turn */
        ss->allow_in_flight = true;
        ss->allow_checked += n;
    }
    ss->allow_cursor = cur;
    if (cur >= ss->slots && n == 0)
        allowlist_said(s);
}

void session_on_allowlist(struct shard *s, const PGresult *res)
{
    struct sessions *ss = s->sess;
    ss->allow_in_flight = false;
    if (!res) {
        ss->allow_cursor = 0; /* the link dropped with the chunk: the round starts over */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char q[256];
        log_line(LOG_WARN, "allow-list check failed; SIGHUP again", "shard=%u error=\"%s\"", s->id,
                 logfmt_q(q, sizeof q, PQresultErrorMessage(res)));
        ss->allow_cursor = ss->slots;
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t slot = session_owned_slot_of_row(s, res, i);
        if (slot < 0)
            continue;
        if (session_close(s, (uint32_t)slot, ss->devs[slot].gen) != 0)
            continue; /* gone meanwhile */
        stat_add(&s->st->devices_revoked, 1);
        ss->allow_closed++;
    }
    if (ss->allow_cursor >= ss->slots)
        allowlist_said(s);
}

/* Releases the windows of open devices that sent no packet for state_idle_s: an idle
 * connection then costs no window. The state is in device_state (or in a batch still held,
 * which the pending snapshot finds); the device's next packet waits for it (DEV_RELOADING). */
static void release_idle_windows(struct shard *s)
{
    struct sessions *ss = s->sess;
    uint32_t now = shard_now_s(s), idle = s->cfg->state_idle_s;
    for (uint32_t slot = 0; slot < s->cfg->conns_max; slot++) {
        struct dev *d = &ss->devs[slot];
        if (d->state != DEV_OPEN || !d->win || now - d->last_packet_s < idle)
            continue;
        dedup_win_drop(&ss->wins, &d->win);
        d->dormant = true;
        stat_add(&s->st->windows_released, 1);
    }
}

/* Closes the UDP devices quiet for `idle` seconds with nothing unacknowledged. */
static void close_idle_udp(struct shard *s, uint32_t idle)
{
    struct sessions *ss = s->sess;
    uint32_t now = shard_now_s(s);
    for (uint32_t slot = s->cfg->conns_max; slot < ss->slots; slot++) {
        struct dev *d = &ss->devs[slot];
        bool quiet = (d->state == DEV_OPEN && d->unacked == 0) || d->state == DEV_REFUSED;
        if (quiet && now - d->last_packet_s >= idle)
            session_close(s, slot, d->gen);
    }
}

void session_release_idle(struct shard *s, uint64_t ms)
{
    struct sessions *ss = s->sess;
    uint32_t udp_idle = s->cfg->state_idle_s ? s->cfg->state_idle_s : s->cfg->idle_timeout_s;
    if ((!s->cfg->state_idle_s && !udp_idle) || ms < ss->next_release_ms)
        return;
    if (s->cfg->state_idle_s)
        release_idle_windows(s);
    if (udp_idle && ss->slots > s->cfg->conns_max)
        close_idle_udp(s, udp_idle);
    /* Every SESSION_RELEASE_EVERY_MS, or twice per idle period when that is shorter. */
    uint64_t every = (uint64_t)udp_idle * 500u;
    ss->next_release_ms =
        ms + (every < SESSION_RELEASE_EVERY_MS ? every : SESSION_RELEASE_EVERY_MS);
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

int session_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *c = s->cfg;
    struct sessions *ss = calloc(1, sizeof *ss);
    s->sess = ss;
    if (!ss)
        goto oom;
    uint32_t udp = c->udp ? c->udp_devices_max : 0;
    ss->slots = c->conns_max + udp;
    ss->allow_cursor = ss->slots; /* no allow-list walk before a SIGHUP */
    ss->devs = zmap((size_t)ss->slots * sizeof *ss->devs);
    ss->udp_free = malloc(((size_t)udp + 1) * sizeof *ss->udp_free);
    for (uint32_t i = 0; ss->udp_free && i < udp; i++)
        ss->udp_free[ss->udp_free_len++] = ss->slots - 1 - i; /* the lowest slots first */
    uint32_t map = 1;
    while (map < 2 * ss->slots)
        map <<= 1;
    ss->owned.mask = map - 1;
    ss->owned.keys = zmap((size_t)map * sizeof *ss->owned.keys);
    ss->owned.slots = zmap((size_t)map * sizeof *ss->owned.slots);
    ss->load_queue = calloc(ss->slots, sizeof *ss->load_queue);
    if (!ss->devs || !ss->udp_free || !ss->owned.keys || !ss->owned.slots || !ss->load_queue ||
        dedup_pool_init(&ss->wins, ss->slots) != 0)
        goto oom;
    return 0;
oom:
    snprintf(err, cap, "shard %u: out of memory for %u connections", s->id, c->conns_max);
    return -ENOMEM;
}

void session_teardown(struct shard *s)
{
    struct sessions *ss = s->sess;
    if (!ss)
        return;
    uint32_t conns = ss->slots, cells = ss->owned.mask + 1;
    dedup_pool_destroy(&ss->wins);
    free(ss->udp_free);
    free(ss->load_queue);
    zunmap(ss->devs, (size_t)conns * sizeof *ss->devs);
    zunmap(ss->owned.keys, (size_t)cells * sizeof *ss->owned.keys);
    zunmap(ss->owned.slots, (size_t)cells * sizeof *ss->owned.slots);
    free(ss);
    s->sess = NULL;
}
