/* delivery.c — outbound commands (Codec 12) on one gateway shard (delivery.h). The shard's thread
 * only.
 *
 * PostgreSQL is the queue (public.commands); Redis is the fast route. A shard holds at most the
 * current command of each of its devices, in a pool of command slots (one per connection slot,
 * mapped without reserve: only slots in use are resident), so an idle connection costs only its
 * struct cmd_conn. The current command is fetched from the database on the control link by one
 * statement that also expires the device's overdue commands (FETCH_SQL), and that finds none
 * unless device_state.owner is still this connection's token (schema 007): a device that
 * connected to another instance since is fenced off in the database, so no command written
 * after the move goes to the old connection (which registry.c then closes):
 *
 *   - when a device's handshake is accepted and its state load (which also says whether it
 *     has open commands: session.c STATE_LOAD_SQL) found any,
 *   - when a command ends (answered, failed, expired) and its outcome is recorded,
 *   - on a wake-up: an entry of the instance's Redis stream routed here (intake.c), or the sweep.
 *
 * Wake-ups only say "device X may have a command"; the order comes from the fetch (oldest open
 * id first), so a stream entry racing the fetch on connect can neither reorder nor double-send.
 *
 * Delivery: the frame is written (engine_send_ref from the slot) only when no AVL packet of the
 * connection waits for its ACK (dev.unacked == 0) and the shard is not paused (a paused
 * connection may hold a whole packet the shard has not taken yet) — a tracker waiting for an
 * ACK could read the command's zero preamble as "ACK 0" and re-send. The row becomes `sent`
 * (attempts + 1). The device's Codec 12 answer (type 0x06) is matched to the one command in
 * flight: `answered` with the text (hex and response_hex when it is not valid UTF-8). No answer
 * within cmd_timeout_s: written again, up to cmd_attempts writes, then `failed`; past
 * expires_at: `expired`. An outcome stays in its slot until the UPDATE is answered (retried
 * while the control link is down), then goes to the replies stream; then the next command is
 * fetched (and held GRACE_MS after a command that ended without an answer, since a late answer
 * to it would otherwise be taken for the next one's). At-least-once until answered: a device that
 * disconnects with a command `sent` gets it again on its next connection.
 *
 * A stream entry is XACKed when the command it names reaches an outcome, or at once when the
 * device is not connected here (its command waits in the database for the next connect), or
 * when a fetch shows the command is no longer open. */
#include "gateway/delivery.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/pgsink.h"
#include "gateway/registry.h"
#include "gateway/session.h"
#include "gateway/zmap.h"

enum {
    WALK_EVERY_MS = 250,        /* timeouts and outcome retries */
    FIRST_WRITE_HOLD_MS = 1000, /* a new connection's first command waits for its first ACK, or
                                   this long (its first packet may be on the wire just after
                                   our 0x01) */
    GRACE_MS = 2000,            /* after a command that ended without an answer (failed or
                                   expired once written) or was written more than once, the
                                   next waits this long: a late answer to an earlier write
                                   must not be taken for the next one's */
    REPLIES_MAXLEN = 100000,
};

static const char *const outcome_names[] = {"", "answered", "failed", "expired"};

/* Column 3, the milliseconds left, is NULL (never) for no expires_at and for one 100 years or
 * more away: 'infinity' cannot be subtracted from, and a far date's count of milliseconds would
 * overflow the engine's nanosecond clock (take_command saturates all the same). */
#define FETCH_SQL                                                                                  \
    "WITH expired AS (UPDATE public.commands SET status = 'expired', date_updated = now() "        \
    "WHERE imei = $1::bigint AND status IN ('pending', 'sent') AND expires_at <= now() "           \
    "RETURNING id) "                                                                               \
    "SELECT c.id, c.payload, c.attempts, "                                                         \
    "CASE WHEN c.expires_at < now() + interval '100 years' "                                       \
    "THEN (extract(epoch FROM c.expires_at - now()) * 1000)::bigint END, "                         \
    "(SELECT array_agg(id ORDER BY id) FROM expired), $1::bigint "                                 \
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT id, payload, attempts, expires_at "          \
    "FROM public.commands WHERE imei = $1::bigint AND status IN ('pending', 'sent') "              \
    "AND (expires_at IS NULL OR expires_at > now()) AND EXISTS (SELECT 1 FROM "                    \
    "public.device_state s WHERE s.imei = $1::bigint AND s.owner = $2::bigint) "                   \
    "ORDER BY id LIMIT 1) AS c ON true"

#define MARK_SENT_SQL                                                                              \
    "UPDATE public.commands SET status = 'sent', attempts = $2::integer, sent_at = now(), "        \
    "date_updated = now() WHERE id = $1::integer AND status IN ('pending', 'sent')"

/* An answer is recorded even if the row was failed or expired meanwhile: the device did
 * answer. Only an answered row is left alone. */
#define ANSWER_SQL                                                                                 \
    "UPDATE public.commands SET status = 'answered', response = $2, response_hex = $3::boolean, "  \
    "answered_at = now(), date_updated = now() WHERE id = $1::integer AND status <> 'answered'"

#define END_SQL                                                                                    \
    "UPDATE public.commands SET status = $2, date_updated = now() "                                \
    "WHERE id = $1::integer AND status IN ('pending', 'sent')"

/* Which of these devices (a chunk of the shard's connected ones without a command) have open
 * commands: one probe of the partial index per IMEI. */
#define SWEEP_SQL                                                                                  \
    "SELECT DISTINCT imei FROM public.commands WHERE imei = ANY($1::bigint[]) "                    \
    "AND status IN ('pending', 'sent')"

/* ---------------------------------------------------------------------------------------------
 * Command slots
 * ------------------------------------------------------------------------------------------- */

static struct cmd_conn *conn_of(const struct shard *s, uint32_t slot)
{
    assert(slot < s->cfg->conns_max); /* a connection's: UDP devices get no commands */
    return &s->cmds->conns[slot];
}

static struct cmd *cmd_of(const struct shard *s, uint32_t slot)
{
    uint32_t i = s->cmds->conns[slot].cmd;
    return i ? &s->cmds->pool[i - 1] : NULL;
}

static bool fetching(const struct cmd_conn *cc)
{
    return cc->fetch == FETCH_IN_FLIGHT || cc->fetch == FETCH_AGAIN;
}

/* A slot for the connection's current command, or NULL when the pool is exhausted (only with
 * more than conns_max detached outcomes waiting for the database). */
static struct cmd *cmd_alloc(struct shard *s, uint32_t slot)
{
    struct delivery *c = s->cmds;
    struct cmd_conn *cc = conn_of(s, slot);
    assert(!cc->cmd);
    if (c->free_len == 0) {
        c->pool_full++;
        return NULL;
    }
    uint32_t i = c->free_list[--c->free_len];
    if (i + 1 > c->hw)
        c->hw = i + 1;
    cc->cmd = i + 1;
    struct cmd *k = &c->pool[i];
    k->state = CMD_READY;
    k->outcome = OUT_NONE;
    k->detached = false;
    k->response_hex = false;
    k->response_len = 0;
    k->retried = false;
    k->writes = 0;
    k->sent_ns = 0;
    k->not_before_ns = 0;
    return k;
}

/* Its connection closed: the slot now belongs to no connection (cmd_conn.cmd is the caller's). */
static void cmd_detach(struct shard *s, struct cmd *k)
{
    k->detached = true;
    s->cmds->detached++;
}

static void cmd_free(struct shard *s, struct cmd *k)
{
    struct delivery *c = s->cmds;
    if (k->detached)
        c->detached--;
    k->state = CMD_FREE;
    c->free_list[c->free_len++] = (uint32_t)(k - c->pool);
}

/* Whether a detached outcome of imei is still to be recorded. */
static bool detached_of(const struct shard *s, uint64_t imei)
{
    const struct delivery *c = s->cmds;
    if (c->detached == 0)
        return false;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state != CMD_FREE && c->pool[i].detached && c->pool[i].imei == imei)
            return true;
    return false;
}

/* Whether p[0 .. n-1] is valid UTF-8 that PostgreSQL takes as text (no NUL, no overlong
 * forms, no surrogates, nothing above U+10FFFF). */
static bool utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        unsigned len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1Fu;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0Fu;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (unsigned k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_of_len[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * Stream entries and replies
 * ------------------------------------------------------------------------------------------- */

/* XACKs and forgets the entries of imei whose command is below before_id (INT64_MAX: all). */
static void entries_settle(struct shard *s, uint64_t imei, int64_t before_id)
{
    struct delivery *c = s->cmds;
    for (uint32_t i = 0; i < c->entries_len;) {
        struct cmd_entry *en = &c->entries[i];
        if (en->imei == imei && en->cmd_id < before_id) {
            registry_xack(s, en->id);
            *en = c->entries[--c->entries_len];
        } else {
            i++;
        }
    }
}

/* XACKs and forgets the entries of command id. */
static void entries_done(struct shard *s, int64_t id)
{
    struct delivery *c = s->cmds;
    for (uint32_t i = 0; i < c->entries_len;) {
        if (c->entries[i].cmd_id == id) {
            registry_xack(s, c->entries[i].id);
            c->entries[i] = c->entries[--c->entries_len];
        } else {
            i++;
        }
    }
}

/* --directus-bus: Directus (11.3.5, directus/package.json) pushes WebSocket events only for
 * writes through its own API; ours are SQL. With Redis as its bus it fans those events out on
 * this pub/sub channel, as JSON (gzip only above 1 kB), and re-reads the row with each
 * subscriber's permissions, so the event carries only the key. An internal format of the
 * pinned version: for these low-volume business rows only, never for telemetry. */
#define DIRECTUS_BUS_CHANNEL "directus:bus:websocket.event"

/* Tells Directus's subscribers of public.commands that row id changed. */
static void bus_nudge(struct shard *s, int64_t id)
{
    if (!s->cfg->directus_bus)
        return;
    char event[128];
    int n = snprintf(event, sizeof event,
                     "{\"collection\":\"commands\",\"action\":\"update\",\"keys\":[\"%" PRId64
                     "\"],\"payload\":{}}",
                     id);
    assert(n > 0 && (size_t)n < sizeof event);
    const char *argv[] = {"PUBLISH", DIRECTUS_BUS_CHANNEL, event};
    const size_t lens[] = {7, sizeof DIRECTUS_BUS_CHANNEL - 1, (size_t)n};
    if (registry_send(s, 3, argv, lens, R_BUS) == 0)
        stat_add(&s->st->bus_published, 1);
    else
        stat_add(&s->st->bus_unpublished, 1);
}

/* Whether an UPDATE changed exactly one row. */
static bool changed_one_row(const PGresult *res)
{
    return strcmp(PQcmdTuples((PGresult *)(uintptr_t)res), "1") == 0;
}

/* A command's outcome, recorded in its row: on the replies stream, and to Directus. */
static void publish_reply(struct shard *s, int64_t id, uint64_t imei, const char *status,
                          const char *response, size_t response_len, bool hex)
{
    bus_nudge(s, id);
    char sid[24], simei[24], maxlen[16];
    snprintf(sid, sizeof sid, "%" PRId64, id);
    snprintf(simei, sizeof simei, "%" PRIu64, imei);
    snprintf(maxlen, sizeof maxlen, "%d", REPLIES_MAXLEN);
    const char *argv[] = {"XADD",     REDIS_REPLIES, "MAXLEN",       "~",
                          maxlen,     "*",           "id",           sid,
                          "imei",     simei,         "status",       status,
                          "response", response,      "response_hex", hex ? "1" : "0"};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    lens[13] = response_len;
    if (registry_send(s, 16, argv, lens, R_REPLY) == 0)
        stat_add(&s->st->replies_published, 1);
    else
        stat_add(&s->st->replies_unpublished, 1);
}

/* ---------------------------------------------------------------------------------------------
 * The current command of a device
 * ------------------------------------------------------------------------------------------- */

static void fetch(struct shard *s, uint32_t slot)
{
    struct cmd_conn *cc = conn_of(s, slot);
    if (fetching(cc)) {
        cc->fetch = FETCH_AGAIN;
        return;
    }
    if (cc->cmd)
        return; /* the next one is fetched when this one ends */
    const struct dev *d = session_dev(s, slot);
    char imei[24], owner[24];
    snprintf(imei, sizeof imei, "%" PRIu64, d->imei);
    snprintf(owner, sizeof owner, "%" PRIu64, d->owner);
    const char *params[2] = {imei, owner};
    if (pgsink_query(s->sink, FETCH_SQL, 2, params, query_cookie(Q_FETCH, engine_key(slot, d->gen)),
                     shard_now_ms(s)) == 0)
        cc->fetch = FETCH_IN_FLIGHT;
    else
        cc->fetch = FETCH_OWED; /* the control link is down or full: the walk asks again */
}

/* Writes the device's ready command if the connection may take it now. */
static void try_write(struct shard *s, uint32_t slot)
{
    const struct dev *d = session_dev(s, slot);
    struct cmd *k = cmd_of(s, slot);
    if (!k || k->state != CMD_READY || d->state != DEV_OPEN || d->unacked || s->paused ||
        s->draining)
        return;
    uint64_t now = engine_now_ns(s->e);
    if (now < k->not_before_ns)
        return; /* the walk tries again */
    if (conn_of(s, slot)->fresh && (uint64_t)wall_clock_ms() < d->accepted_ms + FIRST_WRITE_HOLD_MS)
        return; /* its first packet may be on the wire: after its ACK, or the walk's retry */
    if (engine_send_ref(s->e, slot, d->gen, k->frame, k->frame_len) != 0)
        return; /* gone (on_close follows) or a reference in flight: tried again later */
    k->state = CMD_WRITING;
    if (k->writes < UINT8_MAX)
        k->writes++;
    k->attempts++;
    k->sent_ns = now;
    stat_add(&s->st->cmds_sent, 1);
    char id[24], attempts[16];
    snprintf(id, sizeof id, "%" PRId64, k->id);
    snprintf(attempts, sizeof attempts, "%u", k->attempts);
    const char *params[2] = {id, attempts};
    if (pgsink_query(s->sink, MARK_SENT_SQL, 2, params, query_cookie(Q_MARK_SENT, (uint64_t)k->id),
                     shard_now_ms(s)) != 0)
        stat_add(&s->st->cmd_query_failures, 1); /* the row says pending: sent again, at least */
}

/* The answer as the text stored and published (hex when it is not UTF-8), NUL-terminated in
 * the shard's scratch; returns its length. */
static size_t response_text(struct shard *s, const struct cmd *k)
{
    char *text = s->cmds->scratch;
    size_t n;
    if (k->response_hex) {
        static const char hexd[] = "0123456789abcdef";
        for (uint32_t i = 0; i < k->response_len; i++) {
            text[2 * i] = hexd[k->response[i] >> 4];
            text[2 * i + 1] = hexd[k->response[i] & 15];
        }
        n = 2 * (size_t)k->response_len;
    } else {
        memcpy(text, k->response, k->response_len);
        n = k->response_len;
    }
    text[n] = 0;
    return n;
}

/* Sends the UPDATE of a decided outcome; stays CMD_RECORD when the link does not take it. */
static void record(struct shard *s, struct cmd *k)
{
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, k->id);
    void *ck = query_cookie(Q_RECORD, (uint64_t)(k - s->cmds->pool));
    int rc;
    if (k->outcome == OUT_ANSWERED) {
        response_text(s, k);
        const char *text = s->cmds->scratch;
        const char *params[3] = {id, text, k->response_hex ? "true" : "false"};
        rc = pgsink_query(s->sink, ANSWER_SQL, 3, params, ck, shard_now_ms(s));
    } else {
        const char *params[2] = {id, outcome_names[k->outcome]};
        rc = pgsink_query(s->sink, END_SQL, 2, params, ck, shard_now_ms(s));
    }
    k->state = rc == 0 ? CMD_RECORDING : CMD_RECORD;
}

/* The command's outcome is decided: count it and record it. */
static void conclude(struct shard *s, struct cmd *k, enum cmd_outcome o)
{
    k->outcome = (uint8_t)o;
    if (o == OUT_ANSWERED)
        stat_add(&s->st->cmds_answered, 1);
    else if (o == OUT_FAILED)
        stat_add(&s->st->cmds_failed, 1);
    else
        stat_add(&s->st->cmds_expired, 1);
    record(s, k);
}

/* ---------------------------------------------------------------------------------------------
 * Fetch answers
 * ------------------------------------------------------------------------------------------- */

/* Commands the fetch statement expired (column 4, "{1,2,3}"): said on the replies stream. */
static void publish_expired(struct shard *s, const PGresult *res)
{
    if (PQgetisnull(res, 0, 4))
        return;
    const char *p = PQgetvalue(res, 0, 4);
    uint64_t imei = strtoull(PQgetvalue(res, 0, 5), NULL, 10);
    while (*p) {
        if (*p >= '0' && *p <= '9') {
            char *end;
            long long id = strtoll(p, &end, 10);
            stat_add(&s->st->cmds_expired, 1);
            publish_reply(s, id, imei, "expired", "", 0, false);
            entries_done(s, id);
            p = end;
        } else {
            p++;
        }
    }
}

/* The command's frame from the fetched row; false (the command failed) when it is too long. */
static bool take_payload(struct shard *s, struct cmd *k, const PGresult *res)
{
    const char *payload = PQgetvalue(res, 0, 1);
    size_t n = (size_t)PQgetlength(res, 0, 1);
    int len = n <= CMD_PAYLOAD_MAX ? avl_encode_command(k->frame, sizeof k->frame,
                                                        (const uint8_t *)payload, (uint32_t)n)
                                   : -1;
    if (len <= 0) {
        stat_add(&s->st->cmd_payload_too_long, 1);
        log_limited(&s->cmds->log_refused, shard_now_ms(s), LOG_WARN,
                    "command not sent: payload too long",
                    "shard=%u id=%" PRId64 " imei=%" PRIu64 " bytes=%zu max=%d", s->id, k->id,
                    k->imei, n, CMD_PAYLOAD_MAX);
        conclude(s, k, OUT_FAILED);
        return false;
    }
    k->frame_len = (uint32_t)len;
    return true;
}

/* The engine time at which a command with left_ms to live (by the database's clock) expires,
 * from now on ours: UINT64_MAX (never) when that is beyond the clock's range. */
static uint64_t expires_ns_of(uint64_t now_ns, long long left_ms)
{
    if (left_ms <= 0)
        return now_ns;
    if ((uint64_t)left_ms > (UINT64_MAX - now_ns) / 1000000u)
        return UINT64_MAX;
    return now_ns + (uint64_t)left_ms * 1000000u;
}

/* The fetched row (id) becomes the connection's current command k, written when it may be. */
static void take_command(struct shard *s, struct cmd *k, uint32_t slot, int64_t id,
                         const PGresult *res)
{
    const struct dev *d = session_dev(s, slot);
    struct cmd_conn *cc = conn_of(s, slot);
    stat_add(&s->st->cmds_fetched, 1);
    k->slot = slot;
    k->gen = d->gen;
    k->id = id;
    k->imei = d->imei;
    k->attempts = (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    uint64_t now = engine_now_ns(s->e);
    k->expires_ns = PQgetisnull(res, 0, 3)
                        ? UINT64_MAX
                        : expires_ns_of(now, strtoll(PQgetvalue(res, 0, 3), NULL, 10));
    if (cc->grace) {
        cc->grace = false;
        k->not_before_ns = now + (uint64_t)GRACE_MS * 1000000u;
    }
    if (!take_payload(s, k, res))
        return;
    if (k->attempts >= s->cfg->cmd_attempts) {
        conclude(s, k, OUT_FAILED); /* written as often as allowed, by earlier connections */
        return;
    }
    try_write(s, slot);
}

/* The fetch's answer: the current command, if any, and the ids it expired. */
static void on_fetch(struct shard *s, uint64_t key, const PGresult *res)
{
    uint32_t slot = engine_key_slot(key);
    const struct dev *d = session_dev(s, slot);
    struct cmd_conn *cc = conn_of(s, slot);
    bool ours = d->gen == engine_key_gen(key) && dev_owned(d); /* a connection's: never REFUSED */
    bool again = ours && cc->fetch == FETCH_AGAIN;
    if (ours)
        cc->fetch = FETCH_NONE;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        stat_add(&s->st->cmd_query_failures, 1);
        if (ours)
            cc->fetch = FETCH_OWED; /* the walk asks again */
        return;
    }
    publish_expired(s, res);
    if (!ours || cc->cmd)
        return; /* gone; or it has one (the next is fetched when that one ends) */
    if (PQgetisnull(res, 0, 0)) {
        /* Nothing open. Entries of this device name commands that ended (a wake-up after the
         * fetch went out would have asked again). */
        if (again)
            fetch(s, slot);
        else
            entries_settle(s, d->imei, INT64_MAX);
        return;
    }
    int64_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (detached_of(s, d->imei)) {
        /* An outcome of this device from an earlier connection is still being recorded: the
         * row may still say `sent` for a command it answered. Fetched again once recorded. */
        cc->fetch = FETCH_OWED;
        return;
    }
    struct cmd *k = cmd_alloc(s, slot);
    if (!k) {
        cc->fetch = FETCH_OWED;
        return;
    }
    if (!again)
        entries_settle(s, d->imei, id);
    take_command(s, k, slot, id, res);
}

/* ---------------------------------------------------------------------------------------------
 * Outcomes recorded
 * ------------------------------------------------------------------------------------------- */

/* The outcome's UPDATE failed: true when it is to be sent again (the walk does). A text the
 * database refuses is stored as hex; any other refusal (a constraint or trigger of the business
 * plane) is said once and the row let be (the sweep may offer it again). */
static bool record_failed(struct shard *s, struct cmd *k, const PGresult *res)
{
    stat_add(&s->st->cmd_query_failures, 1);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool refused = state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0);
    if (refused && k->outcome == OUT_ANSWERED && !k->response_hex) {
        k->response_hex = true; /* the database refused the text: store its hex */
    } else if (refused) {
        log_limited(&s->cmds->log_refused, shard_now_ms(s), LOG_WARN,
                    "command outcome refused by the database",
                    "shard=%u id=%" PRId64 " outcome=%s sqlstate=%s", s->id, k->id,
                    outcome_names[k->outcome], state);
        k->outcome = OUT_NONE;
    }
    if (k->outcome == OUT_NONE)
        return false;
    k->state = CMD_RECORD; /* the walk sends it again */
    k->retried = true;
    return true;
}

/* The recorded outcome on the replies stream, unless the row had ended already. */
static void publish_outcome(struct shard *s, const struct cmd *k, const PGresult *res)
{
    if (k->outcome == OUT_NONE)
        return; /* refused: nothing to publish */
    if (!changed_one_row(res) && !k->retried)
        return; /* ended already (answered through another connection, or failed or expired by
                   someone else). A retried UPDATE finds the row its lost first attempt may have
                   changed: published all the same. */
    if (k->outcome == OUT_ANSWERED) {
        size_t n = response_text(s, k);
        publish_reply(s, k->id, k->imei, "answered", s->cmds->scratch, n, k->response_hex);
    } else {
        publish_reply(s, k->id, k->imei, outcome_names[k->outcome], "", 0, false);
    }
}

/* The outcome's UPDATE was answered (or not). */
static void on_recorded(struct shard *s, uint32_t index, const PGresult *res)
{
    struct cmd *k = &s->cmds->pool[index];
    assert(k->state == CMD_RECORDING);
    if ((!res || PQresultStatus(res) != PGRES_COMMAND_OK) && record_failed(s, k, res))
        return;
    publish_outcome(s, k, res);
    entries_done(s, k->id);
    /* Written here and not answered, or written more than once: a late answer may still
     * come, and must not be taken for the next command's. */
    bool detached = k->detached,
         grace = k->writes > 1 || (k->writes > 0 && k->outcome != OUT_ANSWERED);
    uint32_t slot = k->slot;
    uint64_t imei = k->imei;
    cmd_free(s, k);
    if (detached) {
        /* Its device may be back on another connection, waiting for this outcome. */
        int64_t at = session_conn_of(s, imei);
        if (at >= 0 && session_dev(s, (uint32_t)at)->state == DEV_OPEN &&
            !conn_of(s, (uint32_t)at)->cmd)
            fetch(s, (uint32_t)at);
        return;
    }
    struct cmd_conn *cc = conn_of(s, slot);
    assert(cc->cmd == index + 1);
    if (grace)
        cc->grace = true;
    cc->cmd = 0;
    fetch(s, slot); /* the next one */
}

/* Timeouts, expiry and outcomes waiting for the control link. */
static void walk(struct shard *s)
{
    struct delivery *c = s->cmds;
    uint64_t now = engine_now_ns(s->e);
    uint64_t timeout = (uint64_t)s->cfg->cmd_timeout_s * 1000000000u;
    for (uint32_t i = 0; i < c->hw; i++) {
        struct cmd *k = &c->pool[i];
        switch (k->state) {
        case CMD_READY:
            if (now >= k->expires_ns)
                conclude(s, k, OUT_EXPIRED);
            else
                try_write(s, k->slot);
            break;
        case CMD_AWAITING:
            if (now - k->sent_ns < timeout)
                break;
            if (now >= k->expires_ns) {
                conclude(s, k, OUT_EXPIRED);
            } else if (k->attempts >= s->cfg->cmd_attempts) {
                conclude(s, k, OUT_FAILED);
            } else {
                k->state = CMD_READY;
                try_write(s, k->slot);
            }
            break;
        case CMD_RECORD:
            record(s, k);
            break;
        default:
            break;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Events of a connection
 * ------------------------------------------------------------------------------------------- */

void delivery_on_handshake(struct shard *s, uint32_t slot)
{
    struct cmd_conn *cc = conn_of(s, slot);
    assert(!cc->cmd);
    *cc = (struct cmd_conn){0};
}

void delivery_on_open(struct shard *s, uint32_t slot, bool has_commands)
{
    struct cmd_conn *cc = conn_of(s, slot);
    cc->fresh = true;
    if (has_commands || cc->fetch == FETCH_OWED)
        fetch(s, slot); /* or a wake-up's fetch is in flight already: fetch() notes it */
}

bool delivery_busy(const struct shard *s)
{
    const struct delivery *c = s->cmds;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state == CMD_RECORD || c->pool[i].state == CMD_RECORDING ||
            (c->pool[i].state == CMD_WRITING && c->pool[i].outcome == OUT_ANSWERED))
            return true;
    return false;
}

void delivery_on_acked(struct shard *s, uint32_t slot)
{
    conn_of(s, slot)->fresh = false;
    try_write(s, slot);
}

void delivery_on_resume(struct shard *s)
{
    struct delivery *c = s->cmds;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state == CMD_READY)
            try_write(s, c->pool[i].slot);
}

/* Keeps the answer m in k, cut at a character boundary over CMD_RESPONSE_MAX (so that a UTF-8
 * answer stays text). */
static void keep_response(struct shard *s, struct cmd *k, const struct avl_gprs_msg *m)
{
    uint32_t keep = m->text_len;
    if (keep > CMD_RESPONSE_MAX) {
        keep = CMD_RESPONSE_MAX;
        for (int back = 0; back < 3 && (m->text[keep] & 0xC0) == 0x80; back++)
            keep--;
        stat_add(&s->st->cmd_responses_truncated, 1);
        log_limited(&s->cmds->log_cut, shard_now_ms(s), LOG_WARN, "command answer cut",
                    "shard=%u id=%" PRId64 " bytes=%u kept=%u", s->id, k->id, m->text_len, keep);
    }
    memcpy(k->response, m->text, keep);
    k->response_len = keep;
    k->response_hex = !utf8_valid(k->response, keep);
}

void delivery_on_frame(struct shard *s, uint32_t slot, const uint8_t *frame, size_t len)
{
    struct avl_gprs_msg *msgs = s->cmds->msgs;
    uint8_t codec;
    int n = avl_decode_gprs(frame, len, &codec, msgs);
    if (n < 1 || codec != 12 || msgs[0].type != AVL_GPRS_RESPONSE) {
        /* Codec 13/14/15 messages, camera data, or a frame the decoder refuses. */
        stat_add(&s->st->cmd_frames_ignored, 1);
        return;
    }
    struct cmd *k = cmd_of(s, slot);
    bool written = k && (k->state == CMD_AWAITING || k->state == CMD_WRITING ||
                         (k->state == CMD_READY && k->writes > 0)); /* READY: a late answer */
    if (!written || k->outcome != OUT_NONE) {
        stat_add(&s->st->cmd_responses_unexpected, 1);
        return;
    }
    keep_response(s, k, &msgs[0]); /* Codec 12 answers carry one */
    if (k->state == CMD_WRITING) {
        /* The engine still holds the frame: decided, recorded when on_sent gives it back. */
        k->outcome = OUT_ANSWERED;
        stat_add(&s->st->cmds_answered, 1);
        return;
    }
    conclude(s, k, OUT_ANSWERED);
}

void delivery_on_close(struct shard *s, uint32_t slot)
{
    struct cmd_conn *cc = conn_of(s, slot);
    if (s->cmds->entries_len)
        entries_settle(s, session_dev(s, slot)->imei, INT64_MAX); /* they wait in the database */
    cc->fetch = FETCH_NONE;
    cc->fresh = false;
    cc->grace = false;
    struct cmd *k = cmd_of(s, slot);
    if (!k)
        return;
    switch (k->state) {
    case CMD_WRITING:
        cmd_detach(s, k); /* freed (or recorded) by on_sent, which comes before the slot's reuse */
        break;
    case CMD_RECORD:
    case CMD_RECORDING:
        cmd_detach(s, k); /* recorded all the same, then freed */
        cc->cmd = 0;
        break;
    default:
        /* Ready or awaiting: it stays open in the database, sent again on the next connect. */
        cmd_free(s, k);
        cc->cmd = 0;
        break;
    }
}

void delivery_on_sent(struct shard *s, uint32_t slot, int status)
{
    struct cmd_conn *cc = conn_of(s, slot);
    struct cmd *k = cmd_of(s, slot);
    if (!k || k->state != CMD_WRITING)
        return;
    if (k->detached) {
        cc->cmd = 0;
        if (k->outcome == OUT_ANSWERED) {
            k->state = CMD_RECORD;
            record(s, k);
        } else {
            cmd_free(s, k);
        }
        return;
    }
    (void)status; /* an error closes the connection: on_close already said so (detached) */
    if (k->outcome == OUT_ANSWERED) {
        record(s, k); /* the answer came before the send's completion */
        return;
    }
    k->state = CMD_AWAITING;
}

/* ---------------------------------------------------------------------------------------------
 * Wake-ups and the sweep
 * ------------------------------------------------------------------------------------------- */

void delivery_wake(struct shard *s, const struct cmd_wake *w)
{
    struct delivery *c = s->cmds;
    stat_add(&s->st->cmd_wakes, 1);
    int64_t slot = session_conn_of(s, w->imei);
    if (slot < 0 || !dev_owned(session_dev(s, (uint32_t)slot))) {
        /* Not connected here: the command waits in the database for the next connect. */
        stat_add(&s->st->cmd_wakes_offline, 1);
        registry_xack(s, w->id);
        return;
    }
    bool held = false;
    for (uint32_t i = 0; i < c->entries_len && !held; i++)
        held = strcmp(c->entries[i].id, w->id) == 0; /* re-read after an intake reconnect */
    if (!held && c->entries_len == CMD_ENTRIES_MAX) {
        registry_xack(s, w->id); /* the database holds it; only a restart's re-read would miss it */
    } else if (!held) {
        struct cmd_entry *en = &c->entries[c->entries_len++];
        en->cmd_id = w->cmd_id;
        en->imei = w->imei;
        memcpy(en->id, w->id, sizeof en->id);
    }
    fetch(s, (uint32_t)slot);
}

/* Whether the sweep asks about the device on slot: open, without a command or a fetch. One whose
 * fetch is owed is fetched at once instead. */
static bool pick_for_sweep(struct shard *s, uint32_t slot)
{
    if (session_is_udp(s, slot))
        return false; /* no commands over UDP */
    const struct cmd_conn *cc = conn_of(s, slot);
    if (session_dev(s, slot)->state != DEV_OPEN || cc->cmd || fetching(cc))
        return false;
    if (cc->fetch == FETCH_OWED) {
        fetch(s, slot);
        return false;
    }
    return true;
}

/* One step of the sweep: asks which devices of the next chunk of connections without a command
 * have open commands (the answer fetches them), one query in flight. A round starts every
 * cmd_sweep_s. */
static void sweep_step(struct shard *s, uint64_t ms)
{
    struct delivery *c = s->cmds;
    if (c->sweep_in_flight)
        return;
    enum pgsink_phase ph = pgsink_phase(s->sink, PGSINK_LINK_CONTROL);
    if (ph != PGSINK_PHASE_IDLE && ph != PGSINK_PHASE_BUSY)
        return; /* the control link is down: no chunk would go out (and no rescans meanwhile) */
    if (c->sweep_cursor >= s->cfg->conns_max) {
        if (!s->cfg->cmd_sweep_s || ms < c->next_sweep_ms)
            return;
        c->sweep_cursor = 0;
        c->next_sweep_ms = ms + (uint64_t)s->cfg->cmd_sweep_s * 1000u;
        stat_add(&s->st->cmd_sweeps, 1);
    }
    uint32_t cur = c->sweep_cursor;
    if (session_imei_array(s, &cur, CMD_SWEEP_CHUNK, pick_for_sweep, c->sweep_imeis,
                           sizeof c->sweep_imeis) == 0) {
        c->sweep_cursor = cur;
        return;
    }
    const char *params[1] = {c->sweep_imeis};
    if (pgsink_query(s->sink, SWEEP_SQL, 1, params, query_cookie(Q_SWEEP, 0), ms) == 0) {
        c->sweep_in_flight = true;
        c->sweep_cursor = cur;
    } /* else the control link is down or full: this chunk again on the next turn */
}

static void on_sweep(struct shard *s, const PGresult *res)
{
    s->cmds->sweep_in_flight = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        stat_add(&s->st->cmd_query_failures, 1);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t slot = session_conn_of(s, strtoull(PQgetvalue(res, i, 0), NULL, 10));
        if (slot < 0)
            continue;
        const struct cmd_conn *cc = conn_of(s, (uint32_t)slot);
        if (session_dev(s, (uint32_t)slot)->state == DEV_OPEN && !cc->cmd && !fetching(cc))
            fetch(s, (uint32_t)slot);
    }
}

void delivery_on_query(struct shard *s, enum query_kind kind, uint64_t payload, const PGresult *res)
{
    switch (kind) {
    case Q_FETCH:
        on_fetch(s, payload, res);
        return;
    case Q_RECORD:
        on_recorded(s, (uint32_t)payload, res);
        return;
    case Q_MARK_SENT:
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
            stat_add(&s->st->cmd_query_failures, 1);
        else if (changed_one_row(res))
            bus_nudge(s, (int64_t)payload); /* the row says `sent` now */
        return;
    case Q_SWEEP:
        on_sweep(s, res);
        return;
    default:
        assert(!"not a delivery query");
        return;
    }
}

uint64_t delivery_tick(struct shard *s, uint64_t now_ns)
{
    struct delivery *c = s->cmds;
    uint64_t ms = now_ns / 1000000u;
    if (ms >= c->next_walk_ms) {
        walk(s);
        c->next_walk_ms = ms + WALK_EVERY_MS;
    }
    sweep_step(s, ms);
    if (c->sweep_cursor < s->cfg->conns_max && !c->sweep_in_flight)
        return now_ns;
    return c->next_walk_ms * 1000000u;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

int delivery_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *cfg = s->cfg;
    struct delivery *c = calloc(1, sizeof *c);
    s->cmds = c;
    if (!c) {
        snprintf(err, cap, "shard %u: out of memory for commands", s->id);
        return -ENOMEM;
    }
    c->pool_len = 2 * cfg->conns_max;
    c->pool = zmap((size_t)c->pool_len * sizeof *c->pool);
    c->conns = zmap((size_t)cfg->conns_max * sizeof *c->conns);
    c->free_list = calloc(c->pool_len, sizeof *c->free_list);
    if (!c->pool || !c->conns || !c->free_list) {
        snprintf(err, cap, "shard %u: out of memory for %u command slots", s->id, c->pool_len);
        return -ENOMEM;
    }
    /* Lowest index on top: the slots in use stay at the low, resident end. */
    for (uint32_t i = 0; i < c->pool_len; i++)
        c->free_list[i] = c->pool_len - 1 - i;
    c->free_len = c->pool_len;
    c->sweep_cursor = cfg->conns_max;
    return 0;
}

void delivery_teardown(struct shard *s)
{
    struct delivery *c = s->cmds;
    if (!c)
        return;
    zunmap(c->pool, (size_t)c->pool_len * sizeof *c->pool);
    zunmap(c->conns, (size_t)s->cfg->conns_max * sizeof *c->conns);
    free(c->free_list);
    free(c);
    s->cmds = NULL;
}
