/* commands.c — outbound commands (Codec 12), the Redis device registry and the command intake,
 * on one gateway shard. Runs on the shard's thread only; see commands.h.
 *
 * PostgreSQL is the queue (public.commands); Redis is the fast route. A shard holds at most the
 * current command of each of its devices, in a pool of command slots (one per connection
 * slot, mapped without reserve: only slots in use are resident), so an idle connection costs
 * nothing here. The current command is fetched from the database on the control link by one
 * statement that also expires the device's overdue commands (FETCH_SQL):
 *
 *   - when a device's handshake is accepted and its state load (which also says whether it
 *     has open commands: gateway/ingest.c STATE_LOAD_SQL) found any,
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

#include "codec/avl.h"
#include "gateway/ingest_shard.h"
#include "gateway/log.h"
#include "gateway/redislink.h"
#include "gateway/router.h"
#include "shard/engine.h"

enum {
    CMD_PAYLOAD_MAX = 1024,               /* longer commands fail (cmd_payload_too_long) */
    CMD_FRAME_MAX = CMD_PAYLOAD_MAX + 32, /* the Codec 12 frame around it */
    CMD_RESPONSE_MAX = 4096,              /* answer bytes kept; the rest is cut (counted) */
    ENTRIES_MAX = 1024,                   /* stream entries awaiting their command's outcome */
    STREAM_ID_BYTES = 48,
    WALK_EVERY_MS = 250,           /* timeouts and outcome retries */
    REGISTRY_IN_FLIGHT_MAX = 1024, /* registry writes awaiting their reply */
    SWEEP_CHUNK = 2048,            /* IMEIs per sweep query */
    FIRST_WRITE_HOLD_MS = 1000,    /* a new connection's first command waits for its first
                                      ACK, or this long (its first packet may be on the
                                      wire just after our 0x01) */
    GRACE_MS = 2000,               /* after a command written more than once ends, the
                                      next waits this long: a late answer to an earlier
                                      write must not be taken for the next one's */
    INTAKE_RETRY_MS = 1000,        /* after an intake error */
    INTAKE_COUNT = 128,            /* entries per XREADGROUP */
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
    CMDF_OWED = 1 << 3,       /* a fetch could not be sent or failed: ask again */
    CMDF_FRESH = 1 << 4,      /* handshake accepted, no packet acknowledged yet */
    CMDF_GRACE = 1 << 5,      /* the last command was written more than once: hold the next */
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
    bool detached;      /* its connection closed: record the outcome (if any), then free */
    bool response_hex;  /* the answer is not valid UTF-8 */
    bool retried;       /* its outcome's UPDATE is being sent again */
    uint8_t writes;     /* writes on this connection */
    uint32_t slot, gen; /* the connection it is for */
    int64_t id;
    uint64_t imei;
    uint32_t attempts;      /* writes, counting those of earlier connections (the row's attempts) */
    uint64_t expires_ns;    /* engine (monotonic) time; UINT64_MAX: never */
    uint64_t sent_ns;       /* engine time of the last write */
    uint64_t not_before_ns; /* no write before this engine time */
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
    /* 2 x conns_max slots: one per connection slot, and as many for outcomes still being
     * recorded after their connection closed (detached; one per IMEI, see on_fetch). */
    struct cmd *pool;
    uint32_t pool_len;
    uint32_t *free_list;
    uint32_t free_len;
    uint32_t hw;        /* slots [0, hw) have been used */
    uint32_t detached;  /* detached slots in use */
    uint32_t pool_full; /* fetch answers dropped for want of a slot (the sweep asks again) */

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
    uint32_t reg_in_flight;
    uint64_t next_reg_round_ms;
    uint64_t next_walk_ms;
    /* The sweep: slots [sweep_cursor, conns_max) still to ask about in this round. */
    uint32_t sweep_cursor;
    uint64_t next_sweep_ms;
    bool sweep_in_flight;
    uint64_t next_intake_ms;
    struct ratelimit log_redis, log_refused, log_cut; /* repeated warnings */

    char scratch[2 * CMD_RESPONSE_MAX + 1]; /* an answer as text or hex */
    char sweep_imeis[SWEEP_CHUNK * 18 + 4]; /* "{imei,imei,...}" */
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
    return engine_key(slot, gen);
}

/* Redis reply cookies. */
enum rkind { R_REGISTRY = 1, R_REPLY, R_XACK, R_GROUP, R_READ };

#define FETCH_SQL                                                                                  \
    "WITH expired AS (UPDATE public.commands SET status = 'expired', date_updated = now() "        \
    "WHERE imei = $1::bigint AND status IN ('pending', 'sent') AND expires_at <= now() "           \
    "RETURNING id) "                                                                               \
    "SELECT c.id, c.payload, c.attempts, "                                                         \
    "(extract(epoch FROM c.expires_at - now()) * 1000)::bigint, "                                  \
    "(SELECT array_agg(id ORDER BY id) FROM expired), $1::bigint "                                 \
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT id, payload, attempts, expires_at "          \
    "FROM public.commands WHERE imei = $1::bigint AND status IN ('pending', 'sent') "              \
    "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id LIMIT 1) AS c ON true"

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

/* KEYS[1] the registry key; ARGV instance, shard, epoch, ttl. A newer epoch stays. */
static const char REGISTER_LUA[] =
    "local e = redis.call('HGET', KEYS[1], 'epoch') "
    "if e and tonumber(e) > tonumber(ARGV[3]) then return 0 end "
    "redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'shard', ARGV[2], 'epoch', ARGV[3]) "
    "redis.call('EXPIRE', KEYS[1], ARGV[4]) return 1";

/* KEYS[1] the registry key; ARGV instance, epoch: delete it only if it is still this one. */
static const char UNREGISTER_LUA[] = "if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] and "
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

/* A slot for the device's current command, or NULL when the pool is exhausted (only with more
 * than conns_max detached outcomes waiting for the database). */
static struct cmd *cmd_alloc(struct shard *s, struct dev *d)
{
    struct cmds *c = s->cmds;
    assert(!d->cmd);
    if (c->free_len == 0) {
        c->pool_full++;
        return NULL;
    }
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
    k->retried = false;
    k->writes = 0;
    k->sent_ns = 0;
    k->not_before_ns = 0;
    return k;
}

/* Its connection closed: the slot now belongs to no connection (d->cmd is the caller's). */
static void cmd_detach(struct shard *s, struct cmd *k)
{
    k->detached = true;
    s->cmds->detached++;
}

static void cmd_free(struct shard *s, struct cmd *k)
{
    struct cmds *c = s->cmds;
    if (k->detached)
        c->detached--;
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
        stat_add(&s->st->registry_writes, 1);
        s->cmds->reg_in_flight++;
    }
}

static void registry_delete(struct shard *s, const struct dev *d)
{
    char key[48], epoch[24];
    registry_key(key, sizeof key, d->imei);
    snprintf(epoch, sizeof epoch, "%" PRIu64, d->epoch);
    const char *argv[] = {"EVAL", UNREGISTER_LUA, "1", key, s->cfg->instance, epoch};
    if (redis_cmd(s, RL_REGISTRY, 6, argv, NULL, R_REGISTRY) == 0) {
        stat_add(&s->st->registry_writes, 1);
        s->cmds->reg_in_flight++;
    }
}

/* One step of the refresh walk: writes while fewer than REGISTRY_IN_FLIGHT_MAX await their
 * reply (the walk goes on as replies come back, so XACKs and replies on the same link never
 * queue behind a whole round). A round starts every third of the TTL, and at once when the
 * registry link comes (back) up. */
static void registry_walk(struct shard *s, uint64_t ms)
{
    struct cmds *c = s->cmds;
    if (!redis_up(s, RL_REGISTRY))
        return;
    if (c->reg_cursor >= s->cfg->conns_max && ms >= c->next_reg_round_ms) {
        c->reg_cursor = 0;
        c->next_reg_round_ms = ms + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
    while (c->reg_cursor < s->cfg->conns_max && c->reg_in_flight < REGISTRY_IN_FLIGHT_MAX) {
        struct dev *d = &s->devs[c->reg_cursor++];
        if (d->state == DEV_OPEN || d->state == DEV_RELOADING)
            registry_write(s, d);
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
    const char *argv[] = {"XADD",         "avlgate:replies",
                          "MAXLEN",       "~",
                          maxlen,         "*",
                          "id",           sid,
                          "imei",         simei,
                          "status",       status,
                          "response",     response,
                          "response_hex", hex ? "1" : "0"};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    lens[13] = response_len;
    if (redis_cmd(s, RL_REGISTRY, 16, argv, lens, R_REPLY) == 0)
        stat_add(&s->st->replies_published, 1);
    else
        stat_add(&s->st->replies_unpublished, 1);
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
        d->cmd_flags = (uint8_t)((d->cmd_flags | CMDF_FETCHING) & ~(CMDF_REFETCH | CMDF_OWED));
    else
        d->cmd_flags |= CMDF_OWED; /* the control link is down or full: the walk asks again */
}

/* Writes the device's ready command if the connection may take it now. */
static void try_write(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    struct cmd *k = cmd_of(s, d);
    if (!k || k->state != CMD_READY || d->state != DEV_OPEN || d->unacked || s->paused ||
        s->draining)
        return;
    uint64_t now = engine_now_ns(s->e);
    if (now < k->not_before_ns)
        return; /* the walk tries again */
    if ((d->cmd_flags & CMDF_FRESH) && (uint64_t)wall_ms() < d->epoch + FIRST_WRITE_HOLD_MS)
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
    if (pgsink_query(s->sink, MARK_SENT_SQL, 2, params, (void *)(uintptr_t)qcookie(Q_MARK_SENT, 0),
                     now_ms(s)) != 0)
        stat_add(&s->st->cmd_query_failures,
                 1); /* the row says pending: it is sent again, at least once */
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
        stat_add(&s->st->cmds_answered, 1);
    else if (o == OUT_FAILED)
        stat_add(&s->st->cmds_failed, 1);
    else
        stat_add(&s->st->cmds_expired, 1);
    record(s, k);
}

/* Whether a detached outcome of imei is still to be recorded. */
static bool detached_of(const struct shard *s, uint64_t imei)
{
    const struct cmds *c = s->cmds;
    if (c->detached == 0)
        return false;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state != CMD_FREE && c->pool[i].detached && c->pool[i].imei == imei)
            return true;
    return false;
}

/* The fetch's answer: the current command, if any, and the ids it expired. */
static void on_fetch(struct shard *s, uint64_t key, const PGresult *res)
{
    uint32_t slot = engine_key_slot(key), gen = engine_key_gen(key);
    struct dev *d = &s->devs[slot];
    bool ours = d->gen == gen && d->state != DEV_FREE && d->state != DEV_HANDSHAKE;
    if (ours)
        d->cmd_flags &= (uint8_t)~CMDF_FETCHING;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        stat_add(&s->st->cmd_query_failures, 1);
        if (ours)
            d->cmd_flags |= CMDF_OWED; /* the walk asks again */
        return;
    }
    /* Commands the statement expired: say so on the replies stream. */
    if (!PQgetisnull(res, 0, 4)) {
        const char *p = PQgetvalue(res, 0, 4); /* {1,2,3} */
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
    if (detached_of(s, d->imei)) {
        /* An outcome of this device from an earlier connection is still being recorded: the
         * row may still say `sent` for a command it answered. Fetched again once recorded. */
        d->cmd_flags |= CMDF_OWED;
        return;
    }
    struct cmd *k = cmd_alloc(s, d);
    if (!k) {
        d->cmd_flags |= CMDF_OWED;
        return;
    }
    if (!again)
        entries_settle(s, d->imei, id);
    stat_add(&s->st->cmds_fetched, 1);
    k->slot = slot;
    k->gen = d->gen;
    k->id = id;
    k->imei = d->imei;
    k->attempts = (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    uint64_t now = engine_now_ns(s->e);
    if (PQgetisnull(res, 0, 3)) {
        k->expires_ns = UINT64_MAX;
    } else {
        /* Milliseconds left by the database's clock, on ours from now. */
        long long left = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        k->expires_ns = now + (left > 0 ? (uint64_t)left * 1000000u : 0);
    }
    if (d->cmd_flags & CMDF_GRACE) {
        d->cmd_flags &= (uint8_t)~CMDF_GRACE;
        k->not_before_ns = now + (uint64_t)GRACE_MS * 1000000u;
    }
    const char *payload = PQgetvalue(res, 0, 1);
    size_t n = (size_t)PQgetlength(res, 0, 1);
    int len = n <= CMD_PAYLOAD_MAX ? avl_encode_command(k->frame, sizeof k->frame,
                                                        (const uint8_t *)payload, (uint32_t)n)
                                   : -1;
    if (len <= 0) {
        stat_add(&s->st->cmd_payload_too_long, 1);
        uint64_t held;
        if (ratelimit_allow(&s->cmds->log_refused, now_ms(s), &held))
            fprintf(stderr,
                    "level=warn msg=\"command not sent: payload too long\" shard=%u id=%" PRId64
                    " imei=%" PRIu64 " bytes=%zu max=%d suppressed=%" PRIu64 "\n",
                    s->id, id, d->imei, n, CMD_PAYLOAD_MAX, held);
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
        stat_add(&s->st->cmd_query_failures, 1);
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        bool refused = state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0);
        if (refused && k->outcome == OUT_ANSWERED && !k->response_hex) {
            k->response_hex = true; /* the database refused the text: store its hex */
        } else if (refused) {
            /* Will never be taken (a constraint or trigger of the business plane): say so
             * once and let the row be; the sweep may offer it again. */
            uint64_t held;
            if (ratelimit_allow(&s->cmds->log_refused, now_ms(s), &held))
                fprintf(stderr,
                        "level=warn msg=\"command outcome refused by the database\" shard=%u "
                        "id=%" PRId64 " outcome=%s sqlstate=%s suppressed=%" PRIu64 "\n",
                        s->id, k->id, outcome_names[k->outcome], state, held);
            k->outcome = OUT_NONE;
        }
        if (k->outcome != OUT_NONE) {
            k->state = CMD_RECORD; /* the walk sends it again */
            k->retried = true;
            return;
        }
    }
    if (k->outcome == OUT_NONE) {
        /* refused above: nothing to publish */
    } else if (strcmp(PQcmdTuples((PGresult *)(uintptr_t)res), "1") != 0 && !k->retried) {
        /* The row had ended already (answered through another connection, or failed or
         * expired by someone else): nothing new to publish. A retried UPDATE finds the row
         * its lost first attempt may have changed: published all the same. */
    } else if (k->outcome == OUT_ANSWERED) {
        size_t n = response_text(s, k);
        const char *text = s->cmds->scratch;
        publish_reply(s, k->id, k->imei, "answered", text, n, k->response_hex);
    } else {
        publish_reply(s, k->id, k->imei, outcome_names[k->outcome], "", 0, false);
    }
    entries_done(s, k->id);
    bool detached = k->detached, grace = k->writes > 1;
    uint32_t slot = k->slot;
    uint64_t imei = k->imei;
    cmd_free(s, k);
    if (detached) {
        /* Its device may be back on another connection, waiting for this outcome. */
        int64_t at = imap_get(&s->owned, imei);
        if (at >= 0 && s->devs[at].state == DEV_OPEN && !s->devs[at].cmd)
            fetch(s, (uint32_t)at);
        return;
    }
    struct dev *d = &s->devs[slot];
    assert(d->cmd == index + 1);
    if (grace)
        d->cmd_flags |= CMDF_GRACE;
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
 * Entry points from ingest.c
 * ------------------------------------------------------------------------------------------- */

void cmds_on_handshake(struct shard *s, uint32_t slot)
{
    struct dev *d = &s->devs[slot];
    d->unacked = 0;
    d->cmd_flags = 0;
    assert(!d->cmd);
}

void cmds_on_device_open(struct shard *s, uint32_t slot, bool has_commands)
{
    struct dev *d = &s->devs[slot];
    d->epoch = (uint64_t)wall_ms();
    d->cmd_flags |= CMDF_FRESH;
    registry_write(s, d);
    if (has_commands || (d->cmd_flags & CMDF_OWED))
        fetch(s, slot); /* or a wake-up's fetch is in flight already: fetch() notes it */
}

bool cmds_busy(const struct shard *s)
{
    const struct cmds *c = s->cmds;
    for (uint32_t i = 0; i < c->hw; i++)
        if (c->pool[i].state == CMD_RECORD || c->pool[i].state == CMD_RECORDING ||
            (c->pool[i].state == CMD_WRITING && c->pool[i].outcome == OUT_ANSWERED))
            return true;
    return false;
}

void cmds_on_acked(struct shard *s, uint32_t slot)
{
    s->devs[slot].cmd_flags &= (uint8_t)~CMDF_FRESH;
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
        stat_add(&s->st->cmd_frames_ignored, 1);
        return;
    }
    struct cmd *k = cmd_of(s, d);
    bool written = k && (k->state == CMD_AWAITING || k->state == CMD_WRITING ||
                         (k->state == CMD_READY && k->writes > 0)); /* READY: a late answer */
    if (!written || k->outcome != OUT_NONE) {
        stat_add(&s->st->cmd_responses_unexpected, 1);
        return;
    }
    const struct avl_gprs_msg *m = &msgs[0]; /* Codec 12 answers carry one */
    uint32_t keep = m->text_len;
    if (keep > CMD_RESPONSE_MAX) {
        /* Cut at a character boundary, so that a UTF-8 answer stays text. */
        keep = CMD_RESPONSE_MAX;
        for (int back = 0; back < 3 && (m->text[keep] & 0xC0) == 0x80; back++)
            keep--;
        stat_add(&s->st->cmd_responses_truncated, 1);
        uint64_t held;
        if (ratelimit_allow(&s->cmds->log_cut, now_ms(s), &held))
            fprintf(stderr,
                    "level=warn msg=\"command answer cut\" shard=%u id=%" PRId64
                    " bytes=%u kept=%u suppressed=%" PRIu64 "\n",
                    s->id, k->id, m->text_len, keep, held);
    }
    memcpy(k->response, m->text, keep);
    k->response_len = keep;
    k->response_hex = !utf8_valid(k->response, keep);
    if (k->state == CMD_WRITING) {
        /* The engine still holds the frame: decided, recorded when on_sent gives it back. */
        k->outcome = OUT_ANSWERED;
        stat_add(&s->st->cmds_answered, 1);
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
        cmd_detach(s, k); /* freed (or recorded) by on_sent, which comes before the slot's reuse */
        break;
    case CMD_RECORD:
    case CMD_RECORDING:
        cmd_detach(s, k); /* recorded all the same, then freed */
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
            stat_add(&s->st->cmd_query_failures, 1);
        return;
    case Q_SWEEP:
        s->cmds->sweep_in_flight = false;
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
            stat_add(&s->st->cmd_query_failures, 1);
            return;
        }
        for (int i = 0; i < PQntuples(res); i++) {
            int64_t slot = owned_slot_of_row(s, res, i);
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
    stat_add(&s->st->cmd_wakes, 1);
    int64_t slot = imap_get(&s->owned, w->imei);
    struct dev *d = slot >= 0 ? &s->devs[slot] : NULL;
    if (!d || (d->state != DEV_OPEN && !dev_loading(d))) {
        /* Not connected here: the command waits in the database for the next connect. */
        stat_add(&s->st->cmd_wakes_offline, 1);
        xack(s, w->id);
        return;
    }
    struct cmds *c = s->cmds;
    for (uint32_t i = 0; i < c->entries_len; i++)
        if (strcmp(c->entries[i].id, w->id) == 0)
            goto held; /* re-read after an intake reconnect: held already */
    if (c->entries_len == ENTRIES_MAX) {
        xack(s, w->id); /* the database holds it; only a restart's re-read would miss it */
    } else {
        struct entry *en = &c->entries[c->entries_len++];
        en->cmd_id = w->cmd_id;
        en->imei = w->imei;
        memcpy(en->id, w->id, sizeof en->id);
    }
held:
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
        stat_add(&s->st->cmd_entries_invalid, 1);
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
        stat_add(&s->st->cmd_entries_unrouted, 1);
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
    /* From the stream's start: entries added before the group (a fresh Redis) are read too;
     * they are only wake-ups. */
    const char *argv[] = {"XGROUP", "CREATE", c->stream, GROUP, "0", "MKSTREAM"};
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
        char q[256];
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
            fprintf(stderr,
                    "level=warn msg=\"command intake: XGROUP CREATE failed\" error=\"%s\"\n",
                    logfmt_q(q, sizeof q, r->str));
        c->intake = IN_PENDING;
        snprintf(c->intake_from, sizeof c->intake_from, "0");
        intake_read(s);
        return;
    }
    c->intake_reading = false;
    if (r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the stream went away (Redis restarted without our link noticing). */
        char q[256];
        fprintf(stderr,
                "level=warn msg=\"command intake: XREADGROUP failed; again in %d ms\" "
                "error=\"%s\"\n",
                INTAKE_RETRY_MS, logfmt_q(q, sizeof q, r->str));
        c->intake = IN_DOWN;
        c->next_intake_ms = now_ms(s) + INTAKE_RETRY_MS;
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
                if (c->intake == IN_PENDING && en->type == REDIS_REPLY_ARRAY && en->elements >= 1 &&
                    en->element[0]->type == REDIS_REPLY_STRING &&
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
    struct cmds *c = s->cmds;
    if (kind == R_REGISTRY && c->reg_in_flight > 0)
        c->reg_in_flight--;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        stat_add(&s->st->registry_errors, 1);
        if (!r)
            return; /* the link dropped (or is being destroyed, with the engine gone) */
        uint64_t held;
        char q[256];
        if (ratelimit_allow(&c->log_redis, now_ms(s), &held))
            fprintf(stderr,
                    "level=warn msg=\"redis command failed\" shard=%u error=\"%s\" "
                    "suppressed=%" PRIu64 "\n",
                    s->id, logfmt_q(q, sizeof q, r->str), held);
    }
}

/* A Redis link's one log line per event (redislink.h): up, down, unreachable. */
static void redis_log_event(const struct redislink *l, enum redislink_event ev)
{
    char q[256];
    if (ev == REDISLINK_EVENT_UP)
        log_line(LOG_INFO, "redis link up", "link=%s addr=%s", redislink_name(l),
                 redislink_addr(l));
    else if (ev == REDISLINK_EVENT_DOWN)
        log_line(LOG_WARN, "redis link down; reconnecting with backoff", "link=%s error=\"%s\"",
                 redislink_name(l), logfmt_q(q, sizeof q, redislink_last_error(l)));
    else
        log_line(LOG_WARN, "redis unreachable; retrying with backoff",
                 "link=%s addr=%s error=\"%s\"", redislink_name(l), redislink_addr(l),
                 logfmt_q(q, sizeof q, redislink_last_error(l)));
}

static void on_intake_state(void *user, enum redislink_event ev)
{
    struct shard *s = user;
    redis_log_event(s->cmds->rl[RL_INTAKE], ev);
    if (ev == REDISLINK_EVENT_DOWN) {
        s->cmds->intake = IN_DOWN; /* group and pending re-read again when it is back */
        s->cmds->intake_reading = false;
    }
}

static void on_redis_state(void *user, enum redislink_event ev)
{
    struct shard *s = user;
    redis_log_event(s->cmds->rl[RL_REGISTRY], ev);
    if (ev == REDISLINK_EVENT_UP) {
        /* Redis may have restarted empty: write every device again now. */
        s->cmds->reg_cursor = 0;
        s->cmds->next_reg_round_ms = now_ms(s) + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
}

/* One step of the sweep: asks which devices of the next chunk of connections without a command
 * have open commands (the answer fetches them), one query in flight; devices whose fetch is
 * owed are fetched directly. A round starts every cmd_sweep_s. */
static void sweep_step(struct shard *s, uint64_t ms)
{
    struct cmds *c = s->cmds;
    uint32_t max = s->cfg->conns_max;
    if (c->sweep_in_flight)
        return;
    enum pgsink_phase ph = pgsink_phase(s->sink, PGSINK_LINK_CONTROL);
    if (ph != PGSINK_PHASE_IDLE && ph != PGSINK_PHASE_BUSY)
        return; /* the control link is down: no chunk would go out (and no rescans meanwhile) */
    if (c->sweep_cursor >= max) {
        if (!s->cfg->cmd_sweep_s || ms < c->next_sweep_ms)
            return;
        c->sweep_cursor = 0;
        c->next_sweep_ms = ms + (uint64_t)s->cfg->cmd_sweep_s * 1000u;
        stat_add(&s->st->cmd_sweeps, 1);
    }
    char *o = c->sweep_imeis, *end = c->sweep_imeis + sizeof c->sweep_imeis;
    *o++ = '{';
    unsigned n = 0;
    uint32_t cur = c->sweep_cursor;
    while (cur < max && n < SWEEP_CHUNK) {
        uint32_t slot = cur++;
        struct dev *d = &s->devs[slot];
        if (d->state != DEV_OPEN || d->cmd || (d->cmd_flags & CMDF_FETCHING))
            continue;
        if (d->cmd_flags & CMDF_OWED) {
            fetch(s, slot);
            continue;
        }
        o += snprintf(o, (size_t)(end - o), n ? ",%" PRIu64 : "%" PRIu64, d->imei);
        n++;
    }
    assert(o + 2 <= end);
    *o++ = '}';
    *o = 0;
    if (n == 0) {
        c->sweep_cursor = cur;
        return;
    }
    const char *params[1] = {c->sweep_imeis};
    if (pgsink_query(s->sink, SWEEP_SQL, 1, params, (void *)(uintptr_t)qcookie(Q_SWEEP, 0), ms) ==
        0) {
        c->sweep_in_flight = true;
        c->sweep_cursor = cur;
    } /* else the control link is down or full: this chunk again on the next turn */
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
            c->poll_cancelling[i] = false; /* that poll's completion is stale: never matched */
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
    if (c->rl[RL_INTAKE] && c->intake == IN_DOWN && redis_up(s, RL_INTAKE) &&
        ms >= c->next_intake_ms)
        intake_start(s);
    else if (c->rl[RL_INTAKE] && c->intake >= IN_PENDING && !c->intake_reading)
        intake_read(s);
    for (int i = 0; i < RL_LINKS; i++)
        stat_set(&s->st->redis_up[i], redis_up(s, i));
    stat_set(&s->st->redis_configured, s->cfg->redis_host != NULL);
    registry_walk(s, ms);
    if (ms >= c->next_walk_ms) {
        walk(s);
        c->next_walk_ms = ms + WALK_EVERY_MS;
    }
    sweep_step(s, ms);
    arm_polls(s);
    uint64_t wake = (c->next_walk_ms) * 1000000u;
    for (int i = 0; i < RL_LINKS; i++) {
        if (!c->rl[i])
            continue;
        uint64_t d = redislink_next_deadline_ms(c->rl[i]);
        if (d != UINT64_MAX && d * 1000000u < wake)
            wake = d * 1000000u;
    }
    if (c->reg_cursor < s->cfg->conns_max && redis_up(s, RL_REGISTRY) &&
        c->reg_in_flight < REGISTRY_IN_FLIGHT_MAX)
        wake = now_ns; /* the walk goes on next turn */
    if (c->sweep_cursor < s->cfg->conns_max && !c->sweep_in_flight)
        wake = now_ns;
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
    c->pool_len = 2 * cfg->conns_max;
    size_t bytes = (size_t)c->pool_len * sizeof *c->pool;
    void *pool = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    c->free_list = calloc(c->pool_len, sizeof *c->free_list);
    if (pool == MAP_FAILED || !c->free_list) {
        if (pool != MAP_FAILED)
            munmap(pool, bytes);
        snprintf(err, cap, "shard %u: out of memory for %u command slots", s->id, c->pool_len);
        return -ENOMEM;
    }
    c->pool = pool;
    /* Lowest index on top: the slots in use stay at the low, resident end. */
    for (uint32_t i = 0; i < c->pool_len; i++)
        c->free_list[i] = c->pool_len - 1 - i;
    c->free_len = c->pool_len;
    c->reg_cursor = cfg->conns_max; /* no round before the link is up */
    c->sweep_cursor = cfg->conns_max;
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
        munmap(c->pool, (size_t)c->pool_len * sizeof *c->pool);
    free(c->free_list);
    free(c);
    s->cmds = NULL;
}
