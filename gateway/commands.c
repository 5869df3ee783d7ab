/* commands.c — outbound commands (Codec 12), the Redis device registry and the command intake,
 * on one gateway shard. Runs on the shard's thread only; see commands.h.
 *
 * PostgreSQL is the queue (public.commands); Redis is the fast route. A shard holds at most the
 * current command of each of its devices, in a pool of command slots (one per connection
 * slot, mapped without reserve: only slots in use are resident), so an idle connection costs
 * nothing here. The current command is fetched from the database on the control link by one
 * statement that also expires the device's overdue commands (FETCH_SQL):
 *
 *   - right after the state load when a device's handshake reaches its owner (pipelined: the
 *     two queries go out back to back on the control link),
 *   - when a command ends (answered, failed, expired) and its outcome is recorded,
 *   - on a wake-up: an entry of the instance's Redis stream routed here (below), or the sweep.
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
 * fetched. At-least-once until answered: a device that disconnects with a command `sent` gets
 * it again on its next connection.
 *
 * Redis: every shard has a registry link (registry writes, replies, XACK); shard 0 has a
 * second, the intake, for the blocking XREADGROUP. Both are hiredis async contexts polled by
 * the shard's own ring (redislink.h says why not a bridge thread). The intake routes each entry
 * with router_owner() — the function that placed the device's connection — to the owner's
 * mailbox. An entry is XACKed when the command it names reaches an outcome, or at once when the
 * device is not connected here (its command waits in the database for the next connect), or
 * when a fetch shows the command is no longer open. Redis down: telemetry is untouched; the
 * sweep and the fetch on connect deliver what waits.
 *
 * Registry: avlgate:dev:{imei} = instance, shard, epoch (wall ms of the accepted handshake),
 * with a TTL refreshed every third of it by a walk over the shard's devices; written by a
 * script that keeps a newer epoch (a device that moved to another instance while its old
 * connection here lingers), and deleted on close only if it still names this connection. */
#include "gateway/commands.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "gateway/codec/avl.h"
#include "gateway/ingest_shard.h"
#include "gateway/redislink.h"
#include "gateway/router.h"
#include "shard/engine.h"

enum {
    CMD_PAYLOAD_MAX = 1024,              /* longer commands fail (cmd_payload_too_long) */
    CMD_FRAME_MAX = CMD_PAYLOAD_MAX + 32, /* the Codec 12 frame around it */
    CMD_RESPONSE_MAX = 4096,             /* answer bytes kept; the rest is cut (counted) */
    ENTRIES_MAX = 1024,                  /* stream entries awaiting their command's outcome */
    STREAM_ID_BYTES = 48,
    WALK_EVERY_MS = 250,                 /* timeouts and outcome retries */
    REGISTRY_PER_TICK = 512,             /* registry writes per loop turn during a walk */
    INTAKE_COUNT = 128,                  /* entries per XREADGROUP */
    INTAKE_BLOCK_MS = 2000,
    REPLIES_MAXLEN = 100000,
};

/* Redis links: poll tag (tag & 0xFF) and index. */
enum { RL_REGISTRY = 0, RL_INTAKE = 1, RL_LINKS = 2 };

/* The device's command flags (dev.cmd_flags). */
enum {
    CMDF_FETCHING = 1 << 0,   /* a fetch is in flight */
    CMDF_REFETCH = 1 << 1,    /* a wake-up came meanwhile: fetch again after it */
    CMDF_REGISTERED = 1 << 2, /* written to the registry: delete it on close */
};

enum cmd_state {
    CMD_FREE = 0,
    CMD_READY,     /* fetched, waiting for a moment the connection may take it */
    CMD_WRITING,   /* the engine holds the frame */
    CMD_AWAITING,  /* written, waiting for the answer */
    CMD_RECORD,    /* outcome decided, its UPDATE not sent yet (control link down or full) */
    CMD_RECORDING, /* its UPDATE is in flight */
};

enum cmd_outcome { OUT_NONE = 0, OUT_ANSWERED, OUT_FAILED, OUT_EXPIRED };

static const char *const outcome_names[] = {"", "answered", "failed", "expired"};

struct cmd {
    uint8_t state;
    uint8_t outcome;
    bool detached;     /* its connection closed: record the outcome (if any), then free */
    bool response_hex; /* the answer is not valid UTF-8 */
    uint32_t slot, gen; /* the connection it is for */
    int64_t id;
    uint64_t imei;
    uint32_t attempts;  /* writes, counting those of earlier connections (the row's attempts) */
    int64_t expires_ms; /* wall clock; INT64_MAX: never */
    uint64_t sent_ns;   /* engine time of the last write */
    uint32_t frame_len, response_len;
    uint8_t frame[CMD_FRAME_MAX];
    uint8_t response[CMD_RESPONSE_MAX];
};

/* A stream entry whose command has no outcome yet. */
struct entry {
    int64_t cmd_id;
    uint64_t imei;
    char id[STREAM_ID_BYTES];
};

/* Mail from the intake shard: an entry for a device of this shard. */
struct wake_mail {
    uint64_t imei;
    int64_t cmd_id;
    char id[STREAM_ID_BYTES];
};
_Static_assert(sizeof(struct wake_mail) <= ENGINE_MAIL_BYTES, "a wake-up fits in one mail");

enum intake_phase { IN_DOWN = 0, IN_GROUP, IN_PENDING, IN_NEW };

struct cmds {
    struct cmd *pool; /* conns_max slots */
    uint32_t *free_list;
    uint32_t free_len;
    uint32_t hw; /* slots [0, hw) have been used */

    struct entry entries[ENTRIES_MAX];
    uint32_t entries_len;

    struct redislink *rl[RL_LINKS];
    bool poll_armed[RL_LINKS];
    bool poll_cancelling[RL_LINKS];
    uint32_t poll_epoch[RL_LINKS];
    short poll_events[RL_LINKS];

    char stream[128]; /* avlgate:cmd:<instance> */
    enum intake_phase intake;
    char intake_from[STREAM_ID_BYTES]; /* the pending re-read's position */
    bool intake_reading;

    /* The registry walk: slots [reg_cursor, conns_max) still to refresh in this round. */
    uint32_t reg_cursor;
    uint64_t next_reg_round_ms;
    uint64_t next_walk_ms, next_sweep_ms;
    bool sweep_in_flight;

    char scratch[2 * CMD_RESPONSE_MAX + 1]; /* an answer as text or hex */
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
};

/* ---------------------------------------------------------------------------------------------
 * Cookies of control queries: top bit, a kind, and 56 bits of payload
 * ------------------------------------------------------------------------------------------- */

enum qkind { Q_FETCH = 1, Q_MARK_SENT, Q_RECORD, Q_SWEEP };

static uint64_t qcookie(enum qkind k, uint64_t payload)
{
    assert(payload < (UINT64_C(1) << 56));
    return UINT64_C(1) << 63 | (uint64_t)k << 56 | payload;
}

/* A device's connection as 56 bits: slot (32) and generation (24). */
static uint64_t conn_key(uint32_t slot, uint32_t gen)
{
    return (uint64_t)slot << 24 | (gen & 0xFFFFFFu);
}

/* Redis reply cookies. */
enum rkind { R_REGISTRY = 1, R_REPLY, R_XACK, R_GROUP, R_READ };

#define FETCH_SQL                                                                                  \
    "WITH expired AS (UPDATE public.commands SET status = 'expired', date_updated = now() "       \
    "WHERE imei = $1::bigint AND status IN ('pending', 'sent') AND expires_at <= now() "          \
    "RETURNING id) "                                                                               \
    "SELECT c.id, c.payload, c.attempts, "                                                        \
    "(extract(epoch FROM c.expires_at) * 1000)::bigint, "                                        \
    "(SELECT array_agg(id ORDER BY id) FROM expired) "                                            \
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT id, payload, attempts, expires_at "         \
    "FROM public.commands WHERE imei = $1::bigint AND status IN ('pending', 'sent') "             \
    "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id LIMIT 1) AS c ON true"

#define MARK_SENT_SQL                                                                              \
    "UPDATE public.commands SET status = 'sent', attempts = $2::integer, sent_at = now(), "      \
    "date_updated = now() WHERE id = $1::integer AND status IN ('pending', 'sent')"

/* An answer is recorded even if the row was failed or expired meanwhile: the device did
 * answer. Only an answered row is left alone. */
#define ANSWER_SQL                                                                                 \
    "UPDATE public.commands SET status = 'answered', response = $2, response_hex = $3::boolean, " \
    "answered_at = now(), date_updated = now() WHERE id = $1::integer AND status <> 'answered'"

#define END_SQL                                                                                    \
    "UPDATE public.commands SET status = $2, date_updated = now() "                              \
    "WHERE id = $1::integer AND status IN ('pending', 'sent')"

/* The open commands' devices; each shard keeps those it owns. Cost follows the open commands
 * in the database (the partial index), not the connections. */
#define SWEEP_SQL                                                                                  \
    "SELECT DISTINCT imei FROM public.commands WHERE status IN ('pending', 'sent') "              \
    "AND (expires_at IS NULL OR expires_at > now()) LIMIT 100000"

/* KEYS[1] the registry key; ARGV instance, shard, epoch, ttl. A newer epoch stays. */
static const char REGISTER_LUA[] =
    "local e = redis.call('HGET', KEYS[1], 'epoch') "
    "if e and tonumber(e) > tonumber(ARGV[3]) then return 0 end "
    "redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'shard', ARGV[2], 'epoch', ARGV[3]) "
    "redis.call('EXPIRE', KEYS[1], ARGV[4]) return 1";

/* KEYS[1] the registry key; ARGV instance, epoch: delete it only if it is still this one. */
static const char UNREGISTER_LUA[] =
    "if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] and "
    "redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then "
    "return redis.call('DEL', KEYS[1]) end return 0";

static const char GROUP[] = "avlgate";

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

static struct cmd *cmd_of(struct shard *s, const struct dev *d)
{
    return d->cmd ? &s->cmds->pool[d->cmd - 1] : NULL;
}

static struct cmd *cmd_alloc(struct shard *s, struct dev *d)
{
    struct cmds *c = s->cmds;
    assert(c->free_len > 0 && !d->cmd); /* one per connection slot: cannot run out */
    uint32_t i = c->free_list[--c->free_len];
    if (i + 1 > c->hw)
        c->hw = i + 1;
    d->cmd = i + 1;
    struct cmd *k = &c->pool[i];
    k->state = CMD_READY;
    k->outcome = OUT_NONE;
    k->detached = false;
    k->response_hex = false;
    k->response_len = 0;
    k->sent_ns = 0;
    return k;
}

static void cmd_free(struct shard *s, struct cmd *k)
{
    struct cmds *c = s->cmds;
    k->state = CMD_FREE;
    c->free_list[c->free_len++] = (uint32_t)(k - c->pool);
}

static int64_t wall_ms(void)
{
    return wall_us() / 1000;
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

static bool redis_up(const struct shard *s, int link)
{
    const struct redislink *l = s->cmds->rl[link];
    return l && redislink_up(l);
}

static int redis_cmd(struct shard *s, int link, int argc, const char *const *argv,
                     const size_t *lens, enum rkind kind)
{
    if (!redis_up(s, link))
        return -ENOTCONN;
    return redislink_command(s->cmds->rl[link], argc, argv, lens, (void *)(uintptr_t)kind,
                             now_ms(s));
}

/* ---------------------------------------------------------------------------------------------
 * Registry
 * ------------------------------------------------------------------------------------------- */

static void registry_key(char *out, size_t cap, uint64_t imei)
{
    snprintf(out, cap, "avlgate:dev:{%015" PRIu64 "}", imei);
}

static void registry_write(struct shard *s, struct dev *d)
{
    char key[48], shard[16], epoch[24], ttl[16];
    registry_key(key, sizeof key, d->imei);
    snprintf(shard, sizeof shard, "%u", s->id);
    snprintf(epoch, sizeof epoch, "%" PRIu64, d->epoch);
    snprintf(ttl, sizeof ttl, "%u", s->cfg->registry_ttl_s);
    const char *argv[] = {"EVAL", REGISTER_LUA, "1", key, s->cfg->instance, shard, epoch, ttl};
    if (redis_cmd(s, RL_REGISTRY, 8, argv, NULL, R_REGISTRY) == 0) {
        d->cmd_flags |= CMDF_REGISTERED;
        s->st->registry_writes++;
    }
}

static void registry_delete(struct shard *s, const struct dev *d)
{
    char key[48], epoch[24];
    registry_key(key, sizeof key, d->imei);
    snprintf(epoch, sizeof epoch, "%" PRIu64, d->epoch);
    const char *argv[] = {"EVAL", UNREGISTER_LUA, "1", key, s->cfg->instance, epoch};
    if (redis_cmd(s, RL_REGISTRY, 6, argv, NULL, R_REGISTRY) == 0)
        s->st->registry_writes++;
}

/* One step of the refresh walk: up to REGISTRY_PER_TICK writes. A round starts every third of
 * the TTL, and at once when the registry link comes (back) up. */
static void registry_walk(struct shard *s, uint64_t ms)
{
    struct cmds *c = s->cmds;
    if (!redis_up(s, RL_REGISTRY))
        return;
    if (c->reg_cursor >= s->cfg->conns_max && ms >= c->next_reg_round_ms) {
        c->reg_cursor = 0;
        c->next_reg_round_ms = ms + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
    unsigned writes = 0;
    while (c->reg_cursor < s->cfg->conns_max && writes < REGISTRY_PER_TICK) {
        struct dev *d = &s->devs[c->reg_cursor++];
        if (d->state == DEV_OPEN || d->state == DEV_RELOADING) {
            registry_write(s, d);
            writes++;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Stream entries and replies
 * ------------------------------------------------------------------------------------------- */

static void xack(struct shard *s, const char *id)
{
    const char *argv[] = {"XACK", s->cmds->stream, GROUP, id};
    (void)redis_cmd(s, RL_REGISTRY, 4, argv, NULL, R_XACK);
}

/* XACKs and forgets the entries of imei whose command is below before_id (INT64_MAX: all). */
static void entries_settle(struct shard *s, uint64_t imei, int64_t before_id)
{
    struct cmds *c = s->cmds;
    for (uint32_t i = 0; i < c->entries_len;) {
        struct entry *en = &c->entries[i];
        if (en->imei == imei && en->cmd_id < before_id) {
            xack(s, en->id);
            *en = c->entries[--c->entries_len];
        } else {
            i++;
        }
    }
}

/* XACKs and forgets the entries of command id. */
static void entries_done(struct shard *s, int64_t id)
{
    struct cmds *c = s->cmds;
    for (uint32_t i = 0; i < c->entries_len;) {
        if (c->entries[i].cmd_id == id) {
            xack(s, c->entries[i].id);
            c->entries[i] = c->entries[--c->entries_len];
        } else {
            i++;
        }
    }
}

static void publish_reply(struct shard *s, int64_t id, uint64_t imei, const char *status,
                          const char *response, size_t response_len, bool hex)
{
    char sid[24], simei[24], maxlen[16];
    snprintf(sid, sizeof sid, "%" PRId64, id);
    snprintf(simei, sizeof simei, "%" PRIu64, imei);
    snprintf(maxlen, sizeof maxlen, "%d", REPLIES_MAXLEN);
    const char *argv[] = {"XADD",   "avlgate:replies", "MAXLEN",     "~",      maxlen,
                          "*",      "id",              sid,          "imei",   simei,
                          "status", status,            "response",   response, "response_hex",
                          hex ? "1" : "0"};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    lens[13] = response_len;
    if (redis_cmd(s, RL_REGISTRY, 16, argv, lens, R_REPLY) == 0)
        s->st->replies_published++;
    else
        s->st->replies_unpublished++;
}

/* ---------------------------------------------------------------------------------------------
 * The current command of a device
 * ------------------------------------------------------------------------------------------- */

static void fetch(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    if (d->cmd_flags & CMDF_FETCHING) {
        d->cmd_flags |= CMDF_REFETCH;
        return;
    }
    if (d->cmd)
        return; /* the next one is fetched when this one ends */
    char imei[24];
    snprintf(imei, sizeof imei, "%" PRIu64, d->imei);
    const char *params[1] = {imei};
    if (pgsink_query(s->sink, FETCH_SQL, 1, params,
                     (void *)(uintptr_t)qcookie(Q_FETCH, conn_key(slot, d->gen)), now_ms(s)) == 0)
        d->cmd_flags = (uint8_t)((d->cmd_flags | CMDF_FETCHING) & ~CMDF_REFETCH);
    /* else the control link is down or full: the sweep asks again */
}

/* Writes the device's ready command if the connection may take it now. */
static void try_write(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    struct cmd *k = cmd_of(s, d);
    if (!k || k->state != CMD_READY || d->state != DEV_OPEN || d->unacked || s->paused)
        return;
    if (engine_send_ref(s->e, slot, d->gen, k->frame, k->frame_len) != 0)
        return; /* gone (on_close follows) or a reference in flight: tried again later */
    k->state = CMD_WRITING;
    k->attempts++;
    k->sent_ns = engine_now_ns(s->e);
    s->st->cmds_sent++;
    char id[24], attempts[16];
    snprintf(id, sizeof id, "%" PRId64, k->id);
    snprintf(attempts, sizeof attempts, "%u", k->attempts);
    const char *params[2] = {id, attempts};
    if (pgsink_query(s->sink, MARK_SENT_SQL, 2, params, (void *)(uintptr_t)qcookie(Q_MARK_SENT, 0),
                     now_ms(s)) != 0)
        s->st->cmd_query_failures++; /* the row says pending: it is sent again, at least once */
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
    uint64_t ck = qcookie(Q_RECORD, (uint64_t)(k - s->cmds->pool));
    int rc;
    if (k->outcome == OUT_ANSWERED) {
        response_text(s, k);
        const char *text = s->cmds->scratch;
        const char *params[3] = {id, text, k->response_hex ? "true" : "false"};
        rc = pgsink_query(s->sink, ANSWER_SQL, 3, params, (void *)(uintptr_t)ck, now_ms(s));
    } else {
        const char *params[2] = {id, outcome_names[k->outcome]};
        rc = pgsink_query(s->sink, END_SQL, 2, params, (void *)(uintptr_t)ck, now_ms(s));
    }
    k->state = rc == 0 ? CMD_RECORDING : CMD_RECORD;
}

/* The command's outcome is decided: count it and record it. */
static void conclude(struct shard *s, struct cmd *k, enum cmd_outcome o)
{
    k->outcome = (uint8_t)o;
    if (o == OUT_ANSWERED)
        s->st->cmds_answered++;
    else if (o == OUT_FAILED)
        s->st->cmds_failed++;
    else
        s->st->cmds_expired++;
    record(s, k);
}

/* The fetch's answer: the current command, if any, and the ids it expired. */
static void on_fetch(struct shard *s, uint64_t key, const PGresult *res)
{
    uint32_t slot = (uint32_t)(key >> 24), gen = (uint32_t)(key & 0xFFFFFFu);
    struct dev *d = &s->devs[slot];
    bool ours = (d->gen & 0xFFFFFFu) == gen && d->state != DEV_FREE && d->state != DEV_HANDSHAKE;
    if (ours)
        d->cmd_flags &= (uint8_t)~CMDF_FETCHING;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        s->st->cmd_query_failures++;
        return; /* the sweep asks again */
    }
    /* Commands the statement expired: say so on the replies stream. */
    if (!PQgetisnull(res, 0, 4)) {
        const char *p = PQgetvalue(res, 0, 4); /* {1,2,3} */
        uint64_t imei = ours ? d->imei : 0;
        while (*p) {
            if (*p >= '0' && *p <= '9') {
                char *end;
                long long id = strtoll(p, &end, 10);
                s->st->cmds_expired++;
                if (imei)
                    publish_reply(s, id, imei, "expired", "", 0, false);
                entries_done(s, id);
                p = end;
            } else {
                p++;
            }
        }
    }
    if (!ours)
        return;
    bool again = d->cmd_flags & CMDF_REFETCH;
    d->cmd_flags &= (uint8_t)~CMDF_REFETCH;
    if (d->cmd) {
        if (again)
            d->cmd_flags |= CMDF_REFETCH; /* asked again when this one ends */
        return;
    }
    if (PQgetisnull(res, 0, 0)) {
        /* Nothing open. Entries of this device name commands that ended (a wake-up after the
         * fetch went out would have set REFETCH). */
        if (again)
            fetch(s, slot);
        else
            entries_settle(s, d->imei, INT64_MAX);
        return;
    }
    int64_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (!again)
        entries_settle(s, d->imei, id);
    s->st->cmds_fetched++;
    struct cmd *k = cmd_alloc(s, d);
    k->slot = slot;
    k->gen = d->gen;
    k->id = id;
    k->imei = d->imei;
    k->attempts = (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    k->expires_ms = PQgetisnull(res, 0, 3) ? INT64_MAX : strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    const char *payload = PQgetvalue(res, 0, 1);
    size_t n = (size_t)PQgetlength(res, 0, 1);
    int len = n <= CMD_PAYLOAD_MAX
                  ? avl_encode_command(k->frame, sizeof k->frame, (const uint8_t *)payload,
                                       (uint32_t)n)
                  : -1;
    if (len <= 0) {
        s->st->cmd_payload_too_long++;
        fprintf(stderr,
                "level=warn msg=\"command not sent: payload too long\" shard=%u id=%" PRId64
                " imei=%" PRIu64 " bytes=%zu max=%d\n",
                s->id, id, d->imei, n, CMD_PAYLOAD_MAX);
        conclude(s, k, OUT_FAILED);
        return;
    }
    k->frame_len = (uint32_t)len;
    if (k->attempts >= s->cfg->cmd_attempts) {
        conclude(s, k, OUT_FAILED); /* written as often as allowed, by earlier connections */
        return;
    }
    try_write(s, slot);
}

/* The outcome's UPDATE was answered (or not). */
static void on_recorded(struct shard *s, uint32_t index, const PGresult *res)
{
    struct cmd *k = &s->cmds->pool[index];
    assert(k->state == CMD_RECORDING);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        s->st->cmd_query_failures++;
        k->state = CMD_RECORD; /* the walk sends it again */
        return;
    }
    if (strcmp(PQcmdTuples((PGresult *)(uintptr_t)res), "1") != 0) {
        /* The row had ended already (answered through another connection, or failed or
         * expired by someone else): nothing new to publish. */
    } else if (k->outcome == OUT_ANSWERED) {
        size_t n = response_text(s, k);
        const char *text = s->cmds->scratch;
        publish_reply(s, k->id, k->imei, "answered", text, n, k->response_hex);
    } else {
        publish_reply(s, k->id, k->imei, outcome_names[k->outcome], "", 0, false);
    }
    entries_done(s, k->id);
    bool detached = k->detached;
    uint32_t slot = k->slot;
    cmd_free(s, k);
    if (detached)
        return;
    struct dev *d = &s->devs[slot];
    assert(d->cmd == index + 1);
    d->cmd = 0;
    d->cmd_flags &= (uint8_t)~CMDF_REFETCH;
    fetch(s, slot); /* the next one */
}

/* Timeouts, expiry and outcomes waiting for the control link. */
static void walk(struct shard *s)
{
    struct cmds *c = s->cmds;
    uint64_t now = engine_now_ns(s->e);
    uint64_t timeout = (uint64_t)s->cfg->cmd_timeout_s * 1000000000u;
    int64_t wall = wall_ms();
    for (uint32_t i = 0; i < c->hw; i++) {
        struct cmd *k = &c->pool[i];
        switch (k->state) {
        case CMD_READY:
            if (wall >= k->expires_ms)
                conclude(s, k, OUT_EXPIRED);
            else
                try_write(s, k->slot);
            break;
        case CMD_AWAITING:
            if (now - k->sent_ns < timeout)
                break;
            if (wall >= k->expires_ms) {
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
 * Entry points from ingest.c
 * ------------------------------------------------------------------------------------------- */

void cmds_on_handshake(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    d->unacked = 0;
    d->cmd_flags = 0;
    assert(!d->cmd);
    fetch(s, slot);
}

void cmds_on_device_open(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    d->epoch = (uint64_t)wall_ms();
    registry_write(s, d);
    struct cmd *k = cmd_of(s, d);
    if (k)
        try_write(s, slot); /* fetched before the state load answered */
}

void cmds_on_acked(struct shard *s, uint32_t slot)
{
    try_write(s, slot);
}

void cmds_on_resume(struct shard *s)
{
    struct cmds *c = s->cmds;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state == CMD_READY)
            try_write(s, c->pool[i].slot);
}

void cmds_on_frame(struct shard *s, uint32_t slot, const uint8_t *frame, size_t len)
{
    struct dev *d = &s->devs[slot];
    struct avl_gprs_msg *msgs = s->cmds->msgs;
    uint8_t codec;
    int n = avl_decode_gprs(frame, len, &codec, msgs);
    if (n < 1 || codec != 12 || msgs[0].type != AVL_GPRS_RESPONSE) {
        /* Codec 13/14/15 messages, camera data, or a frame the decoder refuses. */
        s->st->cmd_frames_ignored++;
        return;
    }
    struct cmd *k = cmd_of(s, d);
    if (!k || (k->state != CMD_AWAITING && k->state != CMD_WRITING)) {
        s->st->cmd_responses_unexpected++;
        return;
    }
    const struct avl_gprs_msg *m = &msgs[0]; /* Codec 12 answers carry one */
    uint32_t keep = m->text_len;
    if (keep > CMD_RESPONSE_MAX) {
        keep = CMD_RESPONSE_MAX;
        s->st->cmd_responses_truncated++;
        fprintf(stderr,
                "level=warn msg=\"command answer cut\" shard=%u id=%" PRId64 " bytes=%u kept=%d\n",
                s->id, k->id, m->text_len, CMD_RESPONSE_MAX);
    }
    memcpy(k->response, m->text, keep);
    k->response_len = keep;
    k->response_hex = !utf8_valid(k->response, keep);
    if (k->state == CMD_WRITING) {
        /* The engine still holds the frame: decided, recorded when on_sent gives it back. */
        k->outcome = OUT_ANSWERED;
        return;
    }
    conclude(s, k, OUT_ANSWERED);
}

void cmds_on_close(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    if (d->cmd_flags & CMDF_REGISTERED)
        registry_delete(s, d);
    if (s->cmds->entries_len)
        entries_settle(s, d->imei, INT64_MAX); /* the commands wait in the database */
    d->cmd_flags = 0;
    d->unacked = 0;
    struct cmd *k = cmd_of(s, d);
    if (!k)
        return;
    switch (k->state) {
    case CMD_WRITING:
        k->detached = true; /* freed by on_sent, which comes before the slot is reused */
        break;
    case CMD_RECORD:
    case CMD_RECORDING:
        k->detached = true; /* recorded all the same, then freed */
        d->cmd = 0;
        break;
    default:
        /* Ready or awaiting: it stays open in the database, sent again on the next connect. */
        cmd_free(s, k);
        d->cmd = 0;
        break;
    }
}

void cmds_on_sent(void *app, struct engine *e, uint32_t slot, uint32_t gen, int status)
{
    struct shard *s = app;
    (void)e;
    (void)gen;
    struct dev *d = &s->devs[slot];
    struct cmd *k = cmd_of(s, d);
    if (!k || k->state != CMD_WRITING)
        return;
    if (k->detached) {
        if (k->outcome == OUT_ANSWERED) {
            k->state = CMD_RECORD;
            d->cmd = 0;
            record(s, k);
            return;
        }
        cmd_free(s, k);
        d->cmd = 0;
        return;
    }
    (void)status; /* an error closes the connection: on_close already said so (detached) */
    if (k->outcome == OUT_ANSWERED) {
        record(s, k); /* the answer came before the send's completion */
        return;
    }
    k->state = CMD_AWAITING;
}

void cmds_on_query_done(struct shard *s, uint64_t cookie, const PGresult *res, int err)
{
    (void)err;
    enum qkind kind = (enum qkind)((cookie >> 56) & 0x7F);
    uint64_t payload = cookie & ((UINT64_C(1) << 56) - 1);
    switch (kind) {
    case Q_FETCH:
        on_fetch(s, payload, res);
        return;
    case Q_RECORD:
        on_recorded(s, (uint32_t)payload, res);
        return;
    case Q_MARK_SENT:
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
            s->st->cmd_query_failures++;
        return;
    case Q_SWEEP:
        s->cmds->sweep_in_flight = false;
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
            s->st->cmd_query_failures++;
            return;
        }
        for (int i = 0; i < PQntuples(res); i++) {
            uint64_t imei = strtoull(PQgetvalue(res, i, 0), NULL, 10);
            int64_t slot = imap_get(&s->owned, imei);
            if (slot < 0)
                continue;
            struct dev *d = &s->devs[slot];
            if (d->state == DEV_OPEN && !d->cmd && !(d->cmd_flags & CMDF_FETCHING))
                fetch(s, (uint32_t)slot);
        }
        return;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Wake-ups: stream entries, routed to the owner shard
 * ------------------------------------------------------------------------------------------- */

static void wake(struct shard *s, const struct wake_mail *w)
{
    s->st->cmd_wakes++;
    int64_t slot = imap_get(&s->owned, w->imei);
    struct dev *d = slot >= 0 ? &s->devs[slot] : NULL;
    if (!d || (d->state != DEV_OPEN && !dev_loading(d))) {
        /* Not connected here: the command waits in the database for the next connect. */
        s->st->cmd_wakes_offline++;
        xack(s, w->id);
        return;
    }
    struct cmds *c = s->cmds;
    if (c->entries_len == ENTRIES_MAX) {
        xack(s, w->id); /* the database holds it; only a restart's re-read would miss it */
    } else {
        struct entry *en = &c->entries[c->entries_len++];
        en->cmd_id = w->cmd_id;
        en->imei = w->imei;
        memcpy(en->id, w->id, sizeof en->id);
    }
    fetch(s, (uint32_t)slot);
}

void cmds_on_mail(void *app, struct engine *e, unsigned from, const void *msg)
{
    (void)e;
    (void)from;
    struct wake_mail w;
    memcpy(&w, msg, sizeof w);
    wake(app, &w);
}

/* The value of field name in an entry's flat field list, or NULL. */
static const redisReply *entry_field(const redisReply *fields, const char *name)
{
    if (!fields || fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i];
        if (k->type == REDIS_REPLY_STRING && k->len == strlen(name) &&
            memcmp(k->str, name, k->len) == 0)
            return fields->element[i + 1];
    }
    return NULL;
}

static bool reply_int(const redisReply *r, int64_t lo, int64_t hi, int64_t *out)
{
    if (!r || r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 20)
        return false;
    char buf[24];
    memcpy(buf, r->str, r->len);
    buf[r->len] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* One entry of the intake stream: route it to its owner. */
static void intake_entry(struct shard *s, const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING || entry->element[0]->len == 0 ||
        entry->element[0]->len >= STREAM_ID_BYTES)
        return;
    struct wake_mail w = {0};
    memcpy(w.id, entry->element[0]->str, entry->element[0]->len);
    const redisReply *fields = entry->element[1];
    int64_t id, imei;
    if (!reply_int(entry_field(fields, "id"), 1, INT32_MAX, &id) ||
        !reply_int(entry_field(fields, "imei"), 1, 99999999999999999LL, &imei)) {
        /* A deleted entry (no fields) or one this gateway cannot use: nothing to deliver. */
        s->st->cmd_entries_invalid++;
        xack(s, w.id);
        return;
    }
    w.cmd_id = id;
    w.imei = (uint64_t)imei;
    unsigned owner = router_owner(s->sh->router, w.imei);
    if (owner == s->id) {
        wake(s, &w);
    } else if (engine_mail(s->e, owner, &w) != 0) {
        /* Mailbox full: left pending in the group; the sweep delivers the command. */
        s->st->cmd_entries_unrouted++;
    }
}

static void intake_read(struct shard *s)
{
    struct cmds *c = s->cmds;
    char count[16], block[16];
    snprintf(count, sizeof count, "%d", INTAKE_COUNT);
    snprintf(block, sizeof block, "%d", INTAKE_BLOCK_MS);
    int rc;
    if (c->intake == IN_PENDING) {
        const char *argv[] = {"XREADGROUP", "GROUP",   GROUP,     s->cfg->instance, "COUNT",
                              count,        "STREAMS", c->stream, c->intake_from};
        rc = redis_cmd(s, RL_INTAKE, 9, argv, NULL, R_READ);
    } else {
        const char *argv[] = {"XREADGROUP", "GROUP", GROUP,     s->cfg->instance, "COUNT", count,
                              "BLOCK",      block,   "STREAMS", c->stream,        ">"};
        rc = redis_cmd(s, RL_INTAKE, 11, argv, NULL, R_READ);
    }
    c->intake_reading = rc == 0;
}

static void intake_start(struct shard *s)
{
    struct cmds *c = s->cmds;
    const char *argv[] = {"XGROUP", "CREATE", c->stream, GROUP, "$", "MKSTREAM"};
    if (redis_cmd(s, RL_INTAKE, 6, argv, NULL, R_GROUP) == 0)
        c->intake = IN_GROUP;
}

static void on_intake_reply(struct shard *s, enum rkind kind, const redisReply *r)
{
    struct cmds *c = s->cmds;
    if (!r) {
        c->intake = IN_DOWN; /* the link dropped; started again when it is back */
        c->intake_reading = false;
        return;
    }
    if (kind == R_GROUP) {
        /* OK, or BUSYGROUP: the group is there. Re-read our own pending entries first. */
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
            fprintf(stderr, "level=warn msg=\"command intake: XGROUP CREATE failed\" error=\"%s\"\n",
                    r->str);
        c->intake = IN_PENDING;
        snprintf(c->intake_from, sizeof c->intake_from, "0");
        intake_read(s);
        return;
    }
    c->intake_reading = false;
    if (r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the stream went away (Redis restarted without our link noticing). */
        fprintf(stderr, "level=warn msg=\"command intake: XREADGROUP failed\" error=\"%s\"\n",
                r->str);
        c->intake = IN_DOWN;
        return; /* the tick starts again */
    }
    size_t got = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2) {
        const redisReply *entries = r->element[0]->element[1];
        if (entries->type == REDIS_REPLY_ARRAY) {
            got = entries->elements;
            for (size_t i = 0; i < entries->elements; i++) {
                const redisReply *en = entries->element[i];
                intake_entry(s, en);
                if (c->intake == IN_PENDING && en->type == REDIS_REPLY_ARRAY &&
                    en->elements >= 1 && en->element[0]->type == REDIS_REPLY_STRING &&
                    en->element[0]->len < sizeof c->intake_from) {
                    memcpy(c->intake_from, en->element[0]->str, en->element[0]->len);
                    c->intake_from[en->element[0]->len] = 0;
                }
            }
        }
    }
    if (c->intake == IN_PENDING && got == 0)
        c->intake = IN_NEW; /* our pending entries are all re-read */
    intake_read(s);
}

static void on_redis_reply(void *user, void *cookie, const redisReply *r)
{
    struct shard *s = user;
    enum rkind kind = (enum rkind)(uintptr_t)cookie;
    if (kind == R_GROUP || kind == R_READ) {
        on_intake_reply(s, kind, r);
        return;
    }
    if (!r || r->type == REDIS_REPLY_ERROR) {
        s->st->registry_errors++;
        if (r)
            fprintf(stderr, "level=warn msg=\"redis command failed\" shard=%u error=\"%s\"\n",
                    s->id, r->str);
    }
}

static void on_intake_state(void *user, bool up)
{
    struct shard *s = user;
    if (!up) {
        s->cmds->intake = IN_DOWN; /* group and pending re-read again when it is back */
        s->cmds->intake_reading = false;
    }
}

static void on_redis_state(void *user, bool up)
{
    struct shard *s = user;
    if (up) {
        /* Redis may have restarted empty: write every device again now. */
        s->cmds->reg_cursor = 0;
        s->cmds->next_reg_round_ms = now_ms(s) + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Polls and the tick
 * ------------------------------------------------------------------------------------------- */

static uint64_t poll_tag(int link, uint32_t epoch)
{
    return (uint64_t)(CMDS_POLL_TAG_FIRST + link) | (uint64_t)epoch << 8;
}

static void arm_polls(struct shard *s)
{
    struct cmds *c = s->cmds;
    for (int i = 0; i < RL_LINKS; i++) {
        struct redislink *l = c->rl[i];
        if (!l)
            continue;
        uint32_t epoch = redislink_fd_epoch(l);
        if (c->poll_armed[i] && c->poll_epoch[i] != epoch) {
            engine_poll_cancel(s->e, poll_tag(i, c->poll_epoch[i]));
            c->poll_armed[i] = false;
        }
        int fd = redislink_fd(l);
        short ev = redislink_events(l);
        if (c->poll_armed[i] && (ev & ~c->poll_events[i]) && !c->poll_cancelling[i]) {
            /* A command queued output on a link polled for input only: poll again for both
             * (hiredis writes when the socket is writable; the cancelled poll's completion
             * re-arms). */
            if (engine_poll_cancel(s->e, poll_tag(i, epoch)) == 0)
                c->poll_cancelling[i] = true;
        }
        if (fd < 0 || ev == 0 || c->poll_armed[i])
            continue;
        if (engine_poll(s->e, fd, ev, poll_tag(i, epoch)) == 0) {
            c->poll_armed[i] = true;
            c->poll_epoch[i] = epoch;
            c->poll_events[i] = ev;
        }
    }
}

void cmds_on_poll(struct shard *s, uint64_t tag, int revents)
{
    struct cmds *c = s->cmds;
    int i = (int)(tag & 0xFF) - CMDS_POLL_TAG_FIRST;
    uint32_t epoch = (uint32_t)(tag >> 8);
    if (i < 0 || i >= RL_LINKS || !c->rl[i])
        return;
    if (c->poll_armed[i] && c->poll_epoch[i] == epoch) {
        c->poll_armed[i] = false;
        c->poll_cancelling[i] = false;
    }
    if (revents == -ECANCELED || epoch != redislink_fd_epoch(c->rl[i])) {
        arm_polls(s);
        return;
    }
    redislink_on_io(c->rl[i], revents < 0 ? (short)POLLERR : (short)revents, now_ms(s));
    arm_polls(s);
}

uint64_t cmds_tick(struct shard *s, uint64_t now_ns)
{
    struct cmds *c = s->cmds;
    uint64_t ms = now_ns / 1000000u;
    for (int i = 0; i < RL_LINKS; i++)
        if (c->rl[i])
            redislink_tick(c->rl[i], ms);
    if (c->rl[RL_INTAKE] && c->intake == IN_DOWN && redis_up(s, RL_INTAKE))
        intake_start(s);
    else if (c->rl[RL_INTAKE] && c->intake >= IN_PENDING && !c->intake_reading)
        intake_read(s);
    registry_walk(s, ms);
    if (ms >= c->next_walk_ms) {
        walk(s);
        c->next_walk_ms = ms + WALK_EVERY_MS;
    }
    if (s->cfg->cmd_sweep_s && ms >= c->next_sweep_ms && !c->sweep_in_flight &&
        engine_conns_open(s->e) > 0) {
        if (pgsink_query(s->sink, SWEEP_SQL, 0, NULL, (void *)(uintptr_t)qcookie(Q_SWEEP, 0), ms) ==
            0) {
            c->sweep_in_flight = true;
            s->st->cmd_sweeps++;
        }
        c->next_sweep_ms = ms + (uint64_t)s->cfg->cmd_sweep_s * 1000u;
    }
    arm_polls(s);
    uint64_t wake = (c->next_walk_ms) * 1000000u;
    for (int i = 0; i < RL_LINKS; i++) {
        if (!c->rl[i])
            continue;
        uint64_t d = redislink_next_deadline_ms(c->rl[i]);
        if (d != UINT64_MAX && d * 1000000u < wake)
            wake = d * 1000000u;
    }
    if (c->reg_cursor < s->cfg->conns_max && redis_up(s, RL_REGISTRY))
        wake = now_ns; /* the walk goes on next turn */
    return wake;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

int cmds_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *cfg = s->cfg;
    struct cmds *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, cap, "shard %u: out of memory for commands", s->id);
        return -ENOMEM;
    }
    s->cmds = c;
    size_t bytes = (size_t)cfg->conns_max * sizeof *c->pool;
    void *pool = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    c->free_list = calloc(cfg->conns_max, sizeof *c->free_list);
    if (pool == MAP_FAILED || !c->free_list) {
        if (pool != MAP_FAILED)
            munmap(pool, bytes);
        snprintf(err, cap, "shard %u: out of memory for %u command slots", s->id, cfg->conns_max);
        return -ENOMEM;
    }
    c->pool = pool;
    /* Lowest index on top: the slots in use stay at the low, resident end. */
    for (uint32_t i = 0; i < cfg->conns_max; i++)
        c->free_list[i] = cfg->conns_max - 1 - i;
    c->free_len = cfg->conns_max;
    c->reg_cursor = cfg->conns_max; /* no round before the link is up */
    snprintf(c->stream, sizeof c->stream, "avlgate:cmd:%s", cfg->instance);
    if (!cfg->redis_host)
        return 0;
    for (int i = 0; i < RL_LINKS; i++) {
        if (i == RL_INTAKE && s->id != 0)
            break;
        struct redislink_config rc = {
            .host = cfg->redis_host,
            .port = cfg->redis_port,
            .name = i == RL_INTAKE ? "intake" : "registry",
            .reply_timeout_ms = i == RL_INTAKE ? INTAKE_BLOCK_MS + 10000 : 10000,
            .on_reply = on_redis_reply,
            .on_state = i == RL_REGISTRY ? on_redis_state : on_intake_state,
            .user = s,
        };
        c->rl[i] = redislink_create(&rc, err, cap);
        if (!c->rl[i])
            return -errno;
    }
    return 0;
}

void cmds_teardown(struct shard *s)
{
    struct cmds *c = s->cmds;
    if (!c)
        return;
    for (int i = 0; i < RL_LINKS; i++)
        redislink_destroy(c->rl[i]);
    if (c->pool)
        munmap(c->pool, (size_t)s->cfg->conns_max * sizeof *c->pool);
    free(c->free_list);
    free(c);
    s->cmds = NULL;
}
