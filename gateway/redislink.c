/* redislink.c — one Redis connection on hiredis's async API, driven by the caller's readiness
 * events: connect without blocking, commands pipelined in order, replies handed back by cookie,
 * reconnects with jittered exponential backoff, and the timeouts hiredis 0.14 does not have.
 *
 * Owns: the redisAsyncContext of the current connection (NULL while down), the FIFO of
 * outstanding commands (cookie and send time, sized pending_max at create), the counters.
 * Thread: the caller's only; every entry point runs to completion without waiting.
 *
 * Phases: DOWN --tick at retry_at_ms--> CONNECTING --socket writable, SO_ERROR 0--> UP
 *         CONNECTING --connected, with a password--> AUTH --AUTH answered OK--> UP
 *         CONNECTING or AUTH --refused, error, AUTH refused, or connect_timeout_ms from the
 *                              attempt's start--> DOWN (a failure, counted)
 *         UP --EOF, I/O error, POLLERR/POLLHUP, reply_timeout_ms--> DOWN (a disconnect)
 *
 * Invariants:
 *   - l->ac != NULL exactly while CONNECTING, AUTH or UP; the FIFO is empty unless UP.
 *   - The AUTH command is the link's own: it is not in the FIFO (no caller's command can be
 *     sent before UP), and its reply goes to on_auth_reply, which only notes the outcome for
 *     on_io to act on once hiredis returned. The password is never part of an error text.
 *   - The FIFO and hiredis's callback list hold the same commands in the same order: the
 *     FIFO's head is the command the next reply answers (Redis answers in order; commands that
 *     change that — the SUBSCRIBE family, MONITOR, CLIENT REPLY — are refused). Each hiredis
 *     callback carries the cookie as privdata and is checked against the head.
 *   - A cookie reaches on_reply exactly once: with a reply from the hiredis callback (popped
 *     before the call), or with NULL from link_lost() or redislink_destroy(), which empty the
 *     FIFO after hiredis is done with the context. hiredis 0.14 calls every callback still
 *     pending with reply NULL while it frees a context (and only then); those calls are
 *     ignored, so no user code runs while hiredis is inside its free.
 *
 * How a context ends. hiredis frees a context by itself on an I/O error or EOF inside
 * redisAsyncHandleRead/Write (onDisconnect runs first, for a connected one) and on a failed
 * connect (onConnect(REDIS_ERR) runs first). Both callbacks only note the loss (l->ac = NULL);
 * the caller of hiredis sees that when the call returns and runs link_lost(). When the link
 * drops a context itself (timeouts, POLLERR/POLLHUP, destroy), it detaches it first (l->ac =
 * NULL, so its onDisconnect is recognised as stale) and then calls redisAsyncFree — never
 * from inside a hiredis callback, where hiredis would only defer the free (REDIS_IN_CALLBACK):
 * drops happen in tick, on_io after hiredis returned, and destroy, none of which a callback
 * may call (asserted through l->busy).
 *
 * hiredis 0.14 quirks handled here:
 *   - Connect completion is judged by getsockopt(SO_ERROR) alone, on the first read or write
 *     event: called while the connect is still in progress it would declare the link up. So
 *     while CONNECTING the link asks poll(2) (zero timeout) whether the socket is writable or
 *     failed before calling redisAsyncHandleWrite; spurious wake-ups then do nothing.
 *   - No async timeouts: connect_timeout_ms and reply_timeout_ms are the tick's.
 *   - redisAsyncHandleRead reads at most 16 KiB per call: on POLLERR/POLLHUP the link reads
 *     until hiredis reaches the EOF or error (bounded), so replies already received are
 *     delivered, then drops the link if it is still there.
 *   - Writes use write(2): the process must ignore SIGPIPE.
 *
 * Backoff, connect timeout and the last error: gateway/reconnect.h, a policy of the link's own.
 *
 * Reporting: the link writes no log line. It reports coming up, going down and (once per
 * outage, not per attempt) being unreachable through on_state; the caller logs.
 */
#include "gateway/redislink.h"

#include "gateway/reconnect.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <hiredis/async.h>

enum {
    REDISLINK_CONNECT_TIMEOUT_MS_DEFAULT = 5000,
    REDISLINK_PENDING_MAX_DEFAULT = 65536,
    REDISLINK_PENDING_MAX_LIMIT = 1 << 20,
    REDISLINK_READS_ON_HANGUP_MAX = 64, /* 16 KiB each: what a broken socket may still hold */
    REDISLINK_NAME_BYTES = 32,
    REDISLINK_ADDR_BYTES = INET6_ADDRSTRLEN + 8, /* "[addr]:port" */
    REDISLINK_PASSWORD_BYTES_MAX = 4096,
};

enum redislink_phase {
    REDISLINK_DOWN = 0,
    REDISLINK_CONNECTING,
    REDISLINK_AUTH, /* connected, AUTH sent, its answer awaited */
    REDISLINK_UP,
};

/* What on_auth_reply saw of the AUTH answer, for on_io to act on. */
enum redislink_auth { AUTH_WAITING = 0, AUTH_ACCEPTED, AUTH_REFUSED };

struct redislink_slot {
    void *cookie;
    uint64_t sent_ms;
};

struct redislink {
    redisAsyncContext *ac; /* NULL while DOWN */
    enum redislink_phase phase;
    int fd;
    uint32_t epoch;
    bool want_read, want_write; /* what hiredis asked for through ev.addRead/addWrite */
    bool connected;             /* onConnect(REDIS_OK) came during the current hiredis call */
    enum redislink_auth auth;   /* AUTH: its answer so far */
    bool outage_reported;       /* this outage has had its one DOWN or UNREACHABLE */
    uint32_t busy;              /* inside on_io, tick or destroy: callbacks may not re-enter */
    struct reconnect rc;        /* backoff, connect deadline, the last error */
    struct reconnect_policy reconnect;

    /* Outstanding commands, oldest at head. */
    struct redislink_slot *fifo;
    uint32_t head, len, cap;

    struct redislink_counters counters;
    redislink_reply_fn *on_reply;
    redislink_state_fn *on_state;
    void *user;
    char host[INET6_ADDRSTRLEN];
    int port;
    uint32_t reply_timeout_ms;
    char *password; /* NULL: no AUTH */
    char name[REDISLINK_NAME_BYTES];
    char addr[REDISLINK_ADDR_BYTES];
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* Keeps the first line of msg ("unknown error" for none) as the link's error, its double
 * quotes and backslashes turned into single quotes (as the log lines have always shown them). */
static void set_error(struct redislink *l, const char *msg)
{
    reconnect_set_error(&l->rc, msg == NULL || msg[0] == '\0' ? "unknown error" : msg);
    for (char *c = l->rc.error; *c != '\0'; c++)
        if (*c == '"' || *c == '\\')
            *c = '\'';
}

static void fifo_push(struct redislink *l, void *cookie, uint64_t now_ms)
{
    assert(l->len < l->cap);
    struct redislink_slot *s = &l->fifo[(l->head + l->len) % l->cap];
    s->cookie = cookie;
    s->sent_ms = now_ms;
    l->len++;
}

static void *fifo_pop(struct redislink *l)
{
    assert(l->len > 0);
    void *cookie = l->fifo[l->head].cookie;
    l->head = (l->head + 1) % l->cap;
    l->len--;
    return cookie;
}

/* Every outstanding command gets reply NULL. Each is popped before its callback runs, so a
 * callback sees a consistent FIFO (and a command it sends now gets -ENOTCONN). */
static void fifo_fail_all(struct redislink *l)
{
    assert(l->ac == NULL && l->phase == REDISLINK_DOWN);
    while (l->len > 0) {
        void *cookie = fifo_pop(l);
        l->counters.lost++;
        l->on_reply(l->user, cookie, NULL);
    }
}

/* ---- hiredis's hooks and callbacks ---------------------------------------------------------
 * The event hooks only record what the context wants; redislink_events() reports it. */

static void ev_add_read(void *p)
{
    ((struct redislink *)p)->want_read = true;
}

static void ev_del_read(void *p)
{
    ((struct redislink *)p)->want_read = false;
}

static void ev_add_write(void *p)
{
    ((struct redislink *)p)->want_write = true;
}

static void ev_del_write(void *p)
{
    ((struct redislink *)p)->want_write = false;
}

static void ev_cleanup(void *p)
{
    struct redislink *l = p;
    l->want_read = false;
    l->want_write = false;
}

/* The connect finished. On REDIS_ERR hiredis frees the context right after this returns. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redislink *l = ac->data;
    if (ac != l->ac)
        return;
    if (status == REDIS_OK) {
        l->connected = true;
        return;
    }
    set_error(l, ac->c.err ? ac->c.errstr : "connect failed");
    l->ac = NULL;
}

/* hiredis is freeing a connected context: after an error or EOF (l->ac still points at it), or
 * because the link called redisAsyncFree (detached before: nothing to do). */
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redislink *l = ac->data;
    if (ac != l->ac)
        return;
    set_error(l, status == REDIS_OK ? "connection closed" : ac->c.errstr);
    l->ac = NULL;
}

static void on_hiredis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redislink *l = ac->data;
    const redisReply *reply = r;
    if (reply == NULL)
        return; /* the context is being freed: link_lost/destroy deliver from the FIFO */
    assert(ac == l->ac && l->phase == REDISLINK_UP);
    assert(l->len > 0 && l->fifo[l->head].cookie == privdata);
    void *cookie = fifo_pop(l);
    l->counters.replies++;
    if (reply->type == REDIS_REPLY_ERROR)
        l->counters.errors++;
    l->on_reply(l->user, cookie, reply);
}

/* The answer to the link's AUTH: noted only (on_io acts once hiredis returned). The error text
 * is the server's ("WRONGPASS ...", "ERR AUTH <password> called without any password
 * configured ..."), which does not echo the password. */
static void on_auth_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)privdata;
    struct redislink *l = ac->data;
    const redisReply *reply = r;
    if (reply == NULL || ac != l->ac || l->phase != REDISLINK_AUTH)
        return; /* the context is being freed: link_lost says why */
    if (reply->type != REDIS_REPLY_ERROR) {
        l->auth = AUTH_ACCEPTED;
        return;
    }
    char why[RECONNECT_ERROR_BYTES];
    snprintf(why, sizeof why, "AUTH refused: %.*s", (int)reply->len, reply->str);
    set_error(l, why);
    l->auth = AUTH_REFUSED;
}

/* ---- connecting and losing the link --------------------------------------------------------- */

/* The context is gone (hiredis freed it, or the link did): count, schedule the next attempt,
 * fail what was outstanding, then report the loss (DOWN), or the outage's first failed attempt
 * (UNREACHABLE) when no DOWN announced it. l->rc.error says why. */
static void link_lost(struct redislink *l, uint64_t now_ms)
{
    assert(l->ac == NULL && l->phase != REDISLINK_DOWN);
    bool was_up = l->phase == REDISLINK_UP;
    bool first_of_outage = !l->outage_reported;
    l->phase = REDISLINK_DOWN;
    l->fd = -1;
    l->epoch++;
    l->want_read = false;
    l->want_write = false;
    l->connected = false;
    l->auth = AUTH_WAITING;
    reconnect_schedule(&l->rc, &l->reconnect, now_ms);
    if (was_up)
        l->counters.disconnects++;
    else
        l->counters.connect_failures++;
    l->outage_reported = true;
    fifo_fail_all(l);
    if (l->on_state == NULL)
        return;
    if (was_up)
        l->on_state(l->user, REDISLINK_EVENT_DOWN);
    else if (first_of_outage)
        l->on_state(l->user, REDISLINK_EVENT_UNREACHABLE);
}

/* Drops the current context on the link's own initiative (never inside a hiredis callback).
 * why NULL: the error is set already. */
static void link_drop(struct redislink *l, uint64_t now_ms, const char *why)
{
    assert(l->ac != NULL);
    redisAsyncContext *ac = l->ac;
    l->ac = NULL; /* detached: its callbacks during the free are recognised as stale */
    if (why)
        set_error(l, why);
    redisAsyncFree(ac);
    link_lost(l, now_ms);
}

static void link_up(struct redislink *l, uint64_t now_ms)
{
    assert(l->ac != NULL && l->len == 0);
    assert(l->phase == REDISLINK_CONNECTING || l->phase == REDISLINK_AUTH);
    l->connected = false;
    l->auth = AUTH_WAITING;
    l->phase = REDISLINK_UP;
    reconnect_up(&l->rc, now_ms);
    l->outage_reported = false;
    l->counters.connects++;
    if (l->on_state)
        l->on_state(l->user, REDISLINK_EVENT_UP);
}

static void connect_start(struct redislink *l, uint64_t now_ms)
{
    assert(l->phase == REDISLINK_DOWN && l->ac == NULL && l->len == 0);
    l->epoch++;
    l->phase = REDISLINK_CONNECTING; /* link_lost() below counts a failed attempt */
    redisAsyncContext *ac = redisAsyncConnect(l->host, l->port);
    if (ac == NULL) {
        set_error(l, "out of memory allocating a connection");
        link_lost(l, now_ms);
        return;
    }
    if (ac->err) {
        set_error(l, ac->errstr);
        redisAsyncFree(ac); /* not connected: no callbacks */
        link_lost(l, now_ms);
        return;
    }
    ac->data = l;
    ac->ev.data = l;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    l->ac = ac;
    l->fd = ac->c.fd;
    reconnect_attempt(&l->rc, &l->reconnect, now_ms);
    /* Both only fail when already set. The connect callback asks for POLLOUT: writable is
     * how a non-blocking connect says it finished. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    assert(l->want_write);
}

/* Connected, with a password: AUTH goes first, within the attempt's connect deadline. Its answer
 * is on_auth_reply's, acted on by auth_settle. */
static void auth_start(struct redislink *l, uint64_t now_ms)
{
    l->connected = false;
    l->phase = REDISLINK_AUTH;
    l->auth = AUTH_WAITING;
    const char *argv[2] = {"AUTH", l->password};
    const size_t lens[2] = {4, strlen(l->password)};
    if (redisAsyncCommandArgv(l->ac, on_auth_reply, NULL, 2, argv, lens) != REDIS_OK)
        link_drop(l, now_ms, "out of memory sending AUTH");
}

/* AUTH: up once it was accepted; a refusal fails the attempt (the error says why). */
static void auth_settle(struct redislink *l, uint64_t now_ms)
{
    if (l->auth == AUTH_ACCEPTED)
        link_up(l, now_ms);
    else if (l->auth == AUTH_REFUSED)
        link_drop(l, now_ms, NULL);
}

/* CONNECTING: hiredis would take any call as "connected" if SO_ERROR is 0, so ask the socket
 * first whether the connect finished one way or the other. */
static void connect_progress(struct redislink *l, uint64_t now_ms)
{
    struct pollfd p = {.fd = l->fd, .events = POLLOUT, .revents = 0};
    if (poll(&p, 1, 0) <= 0 || (p.revents & (POLLOUT | POLLERR | POLLHUP)) == 0)
        return; /* still in progress (or a spurious wake-up) */
    redisAsyncHandleWrite(l->ac);
    if (l->ac == NULL)
        link_lost(l, now_ms);
    else if (l->connected && l->password)
        auth_start(l, now_ms);
    else if (l->connected)
        link_up(l, now_ms);
}

/* ---- the public entry points ---------------------------------------------------------------- */

static bool is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

struct redislink *redislink_create(const struct redislink_config *cfg, char *err, size_t err_cap)
{
    const char *why = NULL;
    if (cfg == NULL || cfg->host == NULL)
        why = "host missing";
    else if (strlen(cfg->host) >= INET6_ADDRSTRLEN || !is_ip(cfg->host))
        why = "host is not an IP address";
    else if (cfg->port <= 0 || cfg->port > 65535)
        why = "port out of range";
    else if (cfg->on_reply == NULL)
        why = "on_reply missing";
    else if (cfg->name != NULL && strlen(cfg->name) >= REDISLINK_NAME_BYTES)
        why = "name too long";
    else if (cfg->pending_max > REDISLINK_PENDING_MAX_LIMIT)
        why = "pending_max above 1048576";
    else if (cfg->password != NULL && strlen(cfg->password) > REDISLINK_PASSWORD_BYTES_MAX)
        why = "password longer than 4096 bytes";
    else
        why = reconnect_config_error(cfg->backoff_min_ms, cfg->backoff_max_ms);
    if (why) {
        if (err && err_cap > 0)
            snprintf(err, err_cap, "redislink: %s", why);
        errno = EINVAL;
        return NULL;
    }

    struct redislink *l = calloc(1, sizeof(*l));
    if (l == NULL)
        goto nomem;
    l->cap = cfg->pending_max ? cfg->pending_max : REDISLINK_PENDING_MAX_DEFAULT;
    l->fifo = calloc(l->cap, sizeof(*l->fifo));
    if (l->fifo == NULL)
        goto nomem;
    if (cfg->password != NULL && cfg->password[0] != '\0') {
        l->password = strdup(cfg->password);
        if (l->password == NULL)
            goto nomem;
    }
    snprintf(l->host, sizeof(l->host), "%s", cfg->host);
    l->port = cfg->port;
    snprintf(l->name, sizeof(l->name), "%s", cfg->name ? cfg->name : "redis");
    snprintf(l->addr, sizeof(l->addr), strchr(l->host, ':') ? "[%s]:%d" : "%s:%d", l->host,
             l->port);
    /* No seed in the configuration: the jitter is drawn from the clock. */
    reconnect_policy_init(&l->reconnect, cfg->backoff_min_ms, cfg->backoff_max_ms,
                          cfg->connect_timeout_ms ? cfg->connect_timeout_ms
                                                  : REDISLINK_CONNECT_TIMEOUT_MS_DEFAULT,
                          0, l);
    l->reply_timeout_ms = cfg->reply_timeout_ms;
    l->on_reply = cfg->on_reply;
    l->on_state = cfg->on_state;
    l->user = cfg->user;
    l->fd = -1;
    l->phase = REDISLINK_DOWN;
    l->rc.retry_at_ms = 0; /* the first tick connects */
    return l;
nomem:
    if (l) {
        free(l->fifo);
        free(l->password);
    }
    free(l);
    if (err && err_cap > 0)
        snprintf(err, err_cap, "redislink: out of memory");
    errno = ENOMEM;
    return NULL;
}

void redislink_destroy(struct redislink *l)
{
    if (l == NULL)
        return;
    assert(l->busy == 0); /* not from a callback */
    l->busy++;
    if (l->ac) {
        redisAsyncContext *ac = l->ac;
        l->ac = NULL;
        redisAsyncFree(ac);
    }
    l->phase = REDISLINK_DOWN;
    l->fd = -1;
    fifo_fail_all(l);
    free(l->fifo);
    if (l->password) {
        explicit_bzero(l->password, strlen(l->password));
        free(l->password);
    }
    free(l);
}

int redislink_fd(const struct redislink *l)
{
    return l->ac ? l->fd : -1;
}

uint32_t redislink_fd_epoch(const struct redislink *l)
{
    return l->epoch;
}

short redislink_events(const struct redislink *l)
{
    switch (l->phase) {
    case REDISLINK_CONNECTING:
        return POLLOUT;
    case REDISLINK_AUTH:
    case REDISLINK_UP:
        /* Always POLLIN: an idle link learns of the server's EOF only by reading. */
        return (short)(POLLIN | (l->want_write ? POLLOUT : 0));
    case REDISLINK_DOWN:
    default:
        return 0;
    }
}

uint64_t redislink_next_deadline_ms(const struct redislink *l)
{
    switch (l->phase) {
    case REDISLINK_DOWN:
        return l->rc.retry_at_ms;
    case REDISLINK_CONNECTING:
    case REDISLINK_AUTH:
        return l->rc.connect_deadline_ms;
    case REDISLINK_UP:
    default:
        if (l->reply_timeout_ms > 0 && l->len > 0)
            return l->fifo[l->head].sent_ms + l->reply_timeout_ms;
        return UINT64_MAX;
    }
}

/* A socket error for the log line: SO_ERROR's text when the kernel kept one. */
static const char *socket_error(const struct redislink *l, short revents)
{
    int e = 0;
    socklen_t len = sizeof(e);
    if (l->fd >= 0 && getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e != 0)
        return strerror(e);
    return revents & POLLHUP ? "connection hung up" : "socket error";
}

void redislink_on_io(struct redislink *l, short revents, uint64_t now_ms)
{
    assert(l->busy == 0); /* not from a callback */
    if (l->ac == NULL)
        return; /* a completion for a socket already closed */
    l->busy++;
    if (l->phase == REDISLINK_CONNECTING) {
        connect_progress(l, now_ms);
        l->busy--;
        return;
    }
    assert(l->phase == REDISLINK_UP || l->phase == REDISLINK_AUTH);
    bool broken = (revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
    const char *why = broken ? socket_error(l, revents) : NULL;
    /* Read first: replies that arrived before an error or EOF are delivered. A broken socket
     * is read until hiredis meets the end (it frees the context then), within a bound. */
    if (revents == 0 || (revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        int reads = broken ? REDISLINK_READS_ON_HANGUP_MAX : 1;
        for (int i = 0; i < reads && l->ac != NULL; i++)
            redisAsyncHandleRead(l->ac);
    }
    if (l->ac != NULL && !broken && l->want_write && (revents == 0 || (revents & POLLOUT)))
        redisAsyncHandleWrite(l->ac);
    if (l->ac == NULL)
        link_lost(l, now_ms);
    else if (broken)
        link_drop(l, now_ms, why);
    else if (l->phase == REDISLINK_AUTH)
        auth_settle(l, now_ms);
    l->busy--;
}

void redislink_tick(struct redislink *l, uint64_t now_ms)
{
    assert(l->busy == 0); /* not from a callback */
    l->busy++;
    switch (l->phase) {
    case REDISLINK_DOWN:
        if (now_ms >= l->rc.retry_at_ms)
            connect_start(l, now_ms);
        break;
    case REDISLINK_CONNECTING:
        if (now_ms >= l->rc.connect_deadline_ms)
            link_drop(l, now_ms, "connect timed out");
        break;
    case REDISLINK_AUTH:
        if (now_ms >= l->rc.connect_deadline_ms)
            link_drop(l, now_ms, "AUTH timed out");
        break;
    case REDISLINK_UP:
        if (l->reply_timeout_ms > 0 && l->len > 0 &&
            now_ms >= l->fifo[l->head].sent_ms + l->reply_timeout_ms) {
            l->counters.timeouts++;
            link_drop(l, now_ms, "reply timed out");
        }
        break;
    }
    l->busy--;
}

bool redislink_up(const struct redislink *l)
{
    return l->phase == REDISLINK_UP;
}

/* Commands after which replies no longer answer commands one for one. */
static bool changes_reply_mode(int argc, const char *const *argv, const size_t *argvlen)
{
    static const char *const refused[] = {
        "subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
        "punsubscribe", "sunsubscribe", "monitor",
    };
    size_t n0 = argvlen ? argvlen[0] : strlen(argv[0]);
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (n0 == strlen(refused[i]) && strncasecmp(argv[0], refused[i], n0) == 0)
            return true;
    if (argc >= 2 && n0 == 6 && strncasecmp(argv[0], "client", 6) == 0) {
        size_t n1 = argvlen ? argvlen[1] : strlen(argv[1]);
        return n1 == 5 && strncasecmp(argv[1], "reply", 5) == 0;
    }
    return false;
}

int redislink_command(struct redislink *l, int argc, const char *const *argv, const size_t *argvlen,
                      void *cookie, uint64_t now_ms)
{
    if (argc < 1 || argv == NULL || argv[0] == NULL)
        return -EINVAL;
    if (l->phase != REDISLINK_UP)
        return -ENOTCONN;
    assert(l->ac != NULL);
    if (l->len >= l->cap)
        return -ENOBUFS;
    if (changes_reply_mode(argc, argv, argvlen))
        return -EINVAL;
    /* hiredis takes const char ** but only reads the strings. */
    if (redisAsyncCommandArgv(l->ac, on_hiredis_reply, cookie, argc, (const char **)(uintptr_t)argv,
                              argvlen) != REDIS_OK)
        return -ENOMEM; /* formatting the command failed: nothing was queued */
    fifo_push(l, cookie, now_ms);
    l->counters.commands++;
    return 0;
}

const struct redislink_counters *redislink_counters(const struct redislink *l)
{
    return &l->counters;
}

const char *redislink_name(const struct redislink *l)
{
    return l->name;
}

const char *redislink_addr(const struct redislink *l)
{
    return l->addr;
}

const char *redislink_last_error(const struct redislink *l)
{
    return l->rc.error;
}
