/* intake.c — shard 0 reads the instance's command stream and routes each entry to the shard that
 * owns its device (intake.h). The shard's thread only. */
#include "gateway/intake.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/redislink.h"
#include "gateway/registry.h"
#include "gateway/router.h"
#include "gateway/tags.h"

static bool intake_up(const struct intake *in)
{
    return in->link && redislink_up(in->link);
}

static int intake_send(struct shard *s, int argc, const char *const *argv, enum redis_kind kind)
{
    if (!intake_up(s->intake))
        return -ENOTCONN;
    return redislink_command(s->intake->link, argc, argv, NULL, redis_cookie(kind),
                             shard_now_ms(s));
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

/* One entry of the stream: route it to its owner. */
static void intake_entry(struct shard *s, const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING || entry->element[0]->len == 0 ||
        entry->element[0]->len >= CMD_ENTRY_ID_BYTES)
        return;
    struct cmd_wake w = {0};
    memcpy(w.id, entry->element[0]->str, entry->element[0]->len);
    const redisReply *fields = entry->element[1];
    int64_t id, imei;
    if (!reply_int(entry_field(fields, "id"), 1, INT32_MAX, &id) ||
        !reply_int(entry_field(fields, "imei"), 1, 99999999999999999LL, &imei)) {
        /* A deleted entry (no fields) or one this gateway cannot use: nothing to deliver. */
        stat_add(&s->st->cmd_entries_invalid, 1);
        registry_xack(s, w.id);
        return;
    }
    w.cmd_id = id;
    w.imei = (uint64_t)imei;
    unsigned owner = router_owner(s->sh->router, w.imei);
    if (owner == s->id) {
        delivery_wake(s, &w);
    } else if (engine_mail(s->e, owner, &w) != 0) {
        /* Mailbox full: left pending in the group; the sweep delivers the command. */
        stat_add(&s->st->cmd_entries_unrouted, 1);
    }
}

static void intake_read(struct shard *s)
{
    struct intake *in = s->intake;
    const char *stream = s->reg->stream, *consumer = s->cfg->instance;
    char count[16], block[16];
    snprintf(count, sizeof count, "%d", INTAKE_COUNT);
    snprintf(block, sizeof block, "%d", INTAKE_BLOCK_MS);
    int rc;
    if (in->phase == IN_PENDING) {
        const char *argv[] = {"XREADGROUP", "GROUP",   REDIS_GROUP, consumer, "COUNT",
                              count,        "STREAMS", stream,      in->from};
        rc = intake_send(s, 9, argv, R_READ);
    } else {
        const char *argv[] = {"XREADGROUP", "GROUP", REDIS_GROUP, consumer, "COUNT", count,
                              "BLOCK",      block,   "STREAMS",   stream,   ">"};
        rc = intake_send(s, 11, argv, R_READ);
    }
    in->reading = rc == 0;
}

static void intake_start(struct shard *s)
{
    /* From the stream's start: entries added before the group (a fresh Redis) are read too;
     * they are only wake-ups. */
    const char *argv[] = {"XGROUP", "CREATE", s->reg->stream, REDIS_GROUP, "0", "MKSTREAM"};
    if (intake_send(s, 6, argv, R_GROUP) == 0)
        s->intake->phase = IN_GROUP;
}

/* XGROUP CREATE answered: OK, or BUSYGROUP (the group is there). Our pending entries first. */
static void on_group(struct shard *s, const redisReply *r)
{
    struct intake *in = s->intake;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        char q[256];
        log_line(LOG_WARN, "command intake: XGROUP CREATE failed", "error=\"%s\"",
                 logfmt_q(q, sizeof q, r->str));
    }
    in->phase = IN_PENDING;
    snprintf(in->from, sizeof in->from, "0");
    intake_read(s);
}

/* Routes the entries of an XREADGROUP answer; returns how many there were. */
static size_t on_entries(struct shard *s, const redisReply *r)
{
    struct intake *in = s->intake;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2)
        return 0;
    const redisReply *entries = r->element[0]->element[1];
    if (entries->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *en = entries->element[i];
        intake_entry(s, en);
        if (in->phase == IN_PENDING && en->type == REDIS_REPLY_ARRAY && en->elements >= 1 &&
            en->element[0]->type == REDIS_REPLY_STRING && en->element[0]->len < sizeof in->from) {
            memcpy(in->from, en->element[0]->str, en->element[0]->len);
            in->from[en->element[0]->len] = 0;
        }
    }
    return entries->elements;
}

static void on_read(struct shard *s, const redisReply *r)
{
    struct intake *in = s->intake;
    in->reading = false;
    if (r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the stream went away (Redis restarted without our link noticing). */
        char q[256];
        _Static_assert(INTAKE_RETRY_MS == 1000, "the line below says so");
        log_line(LOG_WARN, "command intake: XREADGROUP failed; again in 1000 ms", "error=\"%s\"",
                 logfmt_q(q, sizeof q, r->str));
        in->phase = IN_DOWN;
        in->next_start_ms = shard_now_ms(s) + INTAKE_RETRY_MS;
        return; /* the tick starts again */
    }
    size_t got = on_entries(s, r);
    if (in->phase == IN_PENDING && got == 0)
        in->phase = IN_NEW; /* our pending entries are all re-read */
    intake_read(s);
}

static void on_reply(void *user, void *cookie, const redisReply *r)
{
    struct shard *s = user;
    struct intake *in = s->intake;
    if (!r) {
        in->phase = IN_DOWN; /* the link dropped; started again when it is back */
        in->reading = false;
        return;
    }
    if (redis_cookie_kind(cookie) == R_GROUP)
        on_group(s, r);
    else
        on_read(s, r);
}

static void on_state(void *user, enum redislink_event ev)
{
    struct shard *s = user;
    registry_log_link(s->intake->link, ev);
    if (ev == REDISLINK_EVENT_DOWN) {
        s->intake->phase = IN_DOWN; /* group and pending re-read again when it is back */
        s->intake->reading = false;
    }
}

void intake_arm(struct shard *s)
{
    struct intake *in = s->intake;
    if (!in)
        return;
    linkpoll_arm(&in->poll, s->e, POLL_REDIS_INTAKE, redislink_fd(in->link),
                 redislink_events(in->link), redislink_fd_epoch(in->link), true);
}

void intake_on_poll(struct shard *s, uint64_t tag, int revents)
{
    struct intake *in = s->intake;
    if (!in)
        return;
    if (linkpoll_done(&in->poll, tag, revents, redislink_fd_epoch(in->link)))
        redislink_on_io(in->link, revents < 0 ? (short)POLLERR : (short)revents, shard_now_ms(s));
}

uint64_t intake_tick(struct shard *s, uint64_t now_ns)
{
    struct intake *in = s->intake;
    if (!in) {
        stat_set(&s->st->redis_up[1], 0);
        return 0;
    }
    uint64_t ms = now_ns / 1000000u;
    redislink_tick(in->link, ms);
    if (in->phase == IN_DOWN && intake_up(in) && ms >= in->next_start_ms)
        intake_start(s);
    else if (in->phase >= IN_PENDING && !in->reading)
        intake_read(s);
    stat_set(&s->st->redis_up[1], intake_up(in));
    uint64_t d = redislink_next_deadline_ms(in->link);
    return d != UINT64_MAX ? d * 1000000u : 0;
}

int intake_setup(struct shard *s, char *err, size_t cap)
{
    if (s->id != 0 || !s->cfg->redis_host)
        return 0;
    struct intake *in = calloc(1, sizeof *in);
    s->intake = in;
    if (!in) {
        snprintf(err, cap, "shard %u: out of memory for the command intake", s->id);
        return -ENOMEM;
    }
    struct redislink_config rc = {
        .host = s->cfg->redis_host,
        .port = s->cfg->redis_port,
        .name = "intake",
        .password = s->cfg->redis_password,
        .reply_timeout_ms = INTAKE_BLOCK_MS + 10000,
        .on_reply = on_reply,
        .on_state = on_state,
        .user = s,
    };
    in->link = redislink_create(&rc, err, cap);
    return in->link ? 0 : -errno;
}

void intake_teardown(struct shard *s)
{
    struct intake *in = s->intake;
    if (!in)
        return;
    redislink_destroy(in->link);
    free(in);
    s->intake = NULL;
}
