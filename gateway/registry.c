/* registry.c — the device registry and the registry link of a gateway shard (registry.h). The
 * shard's thread only. */
#include "gateway/registry.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/redislink.h"
#include "gateway/session.h"

/* KEYS[1] the registry key; ARGV instance, shard, epoch, ttl, conn. A newer epoch stays. */
static const char REGISTER_LUA[] =
    "local e = redis.call('HGET', KEYS[1], 'epoch') "
    "if e and tonumber(e) > tonumber(ARGV[3]) then return 0 end "
    "redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'shard', ARGV[2], 'epoch', ARGV[3], "
    "'conn', ARGV[5]) "
    "redis.call('EXPIRE', KEYS[1], ARGV[4]) return 1";

/* KEYS[1] the registry key; ARGV instance, epoch, conn: deleted only if it is still this one. */
static const char UNREGISTER_LUA[] = "if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] and "
                                     "redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] and "
                                     "redis.call('HGET', KEYS[1], 'conn') == ARGV[3] then "
                                     "return redis.call('DEL', KEYS[1]) end return 0";

static bool registered(const struct registry *r, uint32_t slot)
{
    return r->registered[slot / 64] >> (slot % 64) & 1;
}

static void set_registered(struct registry *r, uint32_t slot, bool on)
{
    uint64_t bit = UINT64_C(1) << (slot % 64);
    r->registered[slot / 64] =
        on ? r->registered[slot / 64] | bit : r->registered[slot / 64] & ~bit;
}

bool registry_up(const struct shard *s)
{
    const struct redislink *l = s->reg->link;
    return l && redislink_up(l);
}

/* registry_send with a payload in the reply's cookie. */
static int send_with(struct shard *s, int argc, const char *const *argv, const size_t *lens,
                     void *cookie)
{
    if (!registry_up(s))
        return -ENOTCONN;
    return redislink_command(s->reg->link, argc, argv, lens, cookie, shard_now_ms(s));
}

int registry_send(struct shard *s, int argc, const char *const *argv, const size_t *lens,
                  enum redis_kind kind)
{
    return send_with(s, argc, argv, lens, redis_cookie(kind));
}

void registry_xack(struct shard *s, const char *id)
{
    const char *argv[] = {"XACK", s->reg->stream, REDIS_GROUP, id};
    (void)registry_send(s, 4, argv, NULL, R_XACK);
}

static void registry_key(char *out, size_t cap, uint64_t imei)
{
    snprintf(out, cap, "avlgate:dev:{%015" PRIu64 "}", imei);
}

/* What names the device's connection in its entry: the key, the epoch (its owner token) and the
 * conn (its handshake's wall ms), as text. */
struct entry_names {
    char key[48], epoch[24], conn[24];
};

static void entry_names(const struct dev *d, struct entry_names *n)
{
    registry_key(n->key, sizeof n->key, d->imei);
    snprintf(n->epoch, sizeof n->epoch, "%" PRIu64, d->owner);
    snprintf(n->conn, sizeof n->conn, "%" PRIu64, d->accepted_ms);
}

static void registry_write(struct shard *s, uint32_t slot)
{
    const struct dev *d = session_dev(s, slot);
    struct entry_names n;
    entry_names(d, &n);
    char shard[16], ttl[16];
    snprintf(shard, sizeof shard, "%u", s->id);
    snprintf(ttl, sizeof ttl, "%u", s->cfg->registry_ttl_s);
    const char *argv[] = {"EVAL", REGISTER_LUA, "1", n.key, s->cfg->instance,
                          shard,  n.epoch,      ttl, n.conn};
    void *cookie = redis_cookie_with(R_REGISTER, engine_key(slot, d->gen));
    if (send_with(s, 9, argv, NULL, cookie) == 0) {
        set_registered(s->reg, slot, true);
        stat_add(&s->st->registry_writes, 1);
        s->reg->in_flight++;
    }
}

void registry_on_open(struct shard *s, uint32_t slot)
{
    registry_write(s, slot);
}

void registry_on_close(struct shard *s, uint32_t slot)
{
    if (!registered(s->reg, slot))
        return;
    set_registered(s->reg, slot, false);
    struct entry_names n;
    entry_names(session_dev(s, slot), &n);
    const char *argv[] = {"EVAL", UNREGISTER_LUA, "1", n.key, s->cfg->instance, n.epoch, n.conn};
    if (registry_send(s, 7, argv, NULL, R_REGISTRY) == 0) {
        stat_add(&s->st->registry_writes, 1);
        s->reg->in_flight++;
    }
}

/* One step of the refresh walk: writes while fewer than REGISTRY_IN_FLIGHT_MAX await their
 * reply (the walk goes on as replies come back). A round starts every third of the TTL, and at
 * once when the link comes (back) up. */
static void registry_walk(struct shard *s, uint64_t ms)
{
    struct registry *r = s->reg;
    if (!registry_up(s))
        return;
    if (r->cursor >= s->cfg->conns_max && ms >= r->next_round_ms) {
        r->cursor = 0;
        r->next_round_ms = ms + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
    while (r->cursor < s->cfg->conns_max && r->in_flight < REGISTRY_IN_FLIGHT_MAX) {
        uint32_t slot = r->cursor++;
        const struct dev *d = session_dev(s, slot);
        if (d->state == DEV_OPEN || d->state == DEV_RELOADING)
            registry_write(s, slot);
    }
}

/* A registry write of the connection (slot, gen) found a newer epoch: the device connected again
 * elsewhere (another instance, through the balancer) while this connection lingers — dead,
 * most likely, behind a NAT that forgot it. Closed, so nothing is written to it again; the
 * device's commands go where the registry says. */
static void on_newer_elsewhere(struct shard *s, uint64_t key)
{
    uint32_t slot = engine_key_slot(key), gen = engine_key_gen(key);
    const struct dev *d = session_dev(s, slot);
    if (d->gen != gen || !dev_owned(d))
        return; /* gone meanwhile */
    stat_add(&s->st->devices_moved, 1);
    log_limited(&s->reg->log_moved, shard_now_ms(s), LOG_INFO,
                "device connected to another instance; closing its older connection here",
                "shard=%u imei=%" PRIu64 " owner=%" PRIu64, s->id, d->imei, d->owner);
    set_registered(s->reg, slot, false); /* the entry is the newer connection's */
    session_close(s, slot, gen);
}

/* A reply on the registry link: registry writes, replies and XACKs; errors counted and said. */
static void on_reply(void *user, void *cookie, const redisReply *reply)
{
    struct shard *s = user;
    struct registry *r = s->reg;
    enum redis_kind kind = redis_cookie_kind(cookie);
    if ((kind == R_REGISTRY || kind == R_REGISTER) && r->in_flight > 0)
        r->in_flight--;
    if (kind == R_REGISTER && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 &&
        !s->closing)
        on_newer_elsewhere(s, redis_cookie_payload(cookie));
    if (reply && reply->type != REDIS_REPLY_ERROR)
        return;
    stat_add(&s->st->registry_errors, 1);
    if (!reply)
        return; /* the link dropped (or is being destroyed, with the engine gone) */
    char q[256];
    log_limited(&r->log_redis, shard_now_ms(s), LOG_WARN, "redis command failed",
                "shard=%u error=\"%s\"", s->id, logfmt_q(q, sizeof q, reply->str));
}

void registry_log_link(const struct redislink *l, enum redislink_event ev)
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

static void on_state(void *user, enum redislink_event ev)
{
    struct shard *s = user;
    registry_log_link(s->reg->link, ev);
    if (ev == REDISLINK_EVENT_UP) {
        /* Redis may have restarted empty: write every device again now. */
        s->reg->cursor = 0;
        s->reg->next_round_ms = shard_now_ms(s) + (uint64_t)s->cfg->registry_ttl_s * 1000u / 3u;
    }
}

void registry_arm(struct shard *s)
{
    struct registry *r = s->reg;
    if (!r->link)
        return;
    linkpoll_arm(&r->poll, s->e, POLL_REDIS_REGISTRY, redislink_fd(r->link),
                 redislink_events(r->link), redislink_fd_epoch(r->link), true);
}

void registry_on_poll(struct shard *s, uint64_t tag, int revents)
{
    struct registry *r = s->reg;
    if (!r->link)
        return;
    if (linkpoll_done(&r->poll, tag, revents, redislink_fd_epoch(r->link)))
        redislink_on_io(r->link, revents < 0 ? (short)POLLERR : (short)revents, shard_now_ms(s));
}

uint64_t registry_tick(struct shard *s, uint64_t now_ns)
{
    struct registry *r = s->reg;
    uint64_t ms = now_ns / 1000000u, wake = 0;
    if (r->link)
        redislink_tick(r->link, ms);
    stat_set(&s->st->redis_up[0], registry_up(s));
    stat_set(&s->st->redis_configured, s->cfg->redis_host != NULL);
    registry_walk(s, ms);
    if (r->link) {
        uint64_t d = redislink_next_deadline_ms(r->link);
        if (d != UINT64_MAX)
            wake = d * 1000000u;
    }
    if (r->cursor < s->cfg->conns_max && registry_up(s) && r->in_flight < REGISTRY_IN_FLIGHT_MAX)
        wake = now_ns; /* the walk goes on next turn */
    return wake;
}

int registry_setup(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *cfg = s->cfg;
    struct registry *r = calloc(1, sizeof *r);
    s->reg = r;
    if (r)
        r->registered = calloc(((size_t)cfg->conns_max + 63) / 64, sizeof *r->registered);
    if (!r || !r->registered) {
        snprintf(err, cap, "shard %u: out of memory for the registry", s->id);
        return -ENOMEM;
    }
    r->cursor = cfg->conns_max; /* no round before the link is up */
    snprintf(r->stream, sizeof r->stream, "avlgate:cmd:%s", cfg->instance);
    if (!cfg->redis_host)
        return 0;
    struct redislink_config rc = {
        .host = cfg->redis_host,
        .port = cfg->redis_port,
        .name = "registry",
        .password = cfg->redis_password,
        .reply_timeout_ms = 10000,
        .on_reply = on_reply,
        .on_state = on_state,
        .user = s,
    };
    r->link = redislink_create(&rc, err, cap);
    return r->link ? 0 : -errno;
}

void registry_teardown(struct shard *s)
{
    struct registry *r = s->reg;
    if (!r)
        return;
    redislink_destroy(r->link);
    free(r->registered);
    free(r);
    s->reg = NULL;
}
