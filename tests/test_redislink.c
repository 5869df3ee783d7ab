/* test_redislink.c — the Redis link against a real server, driven by a plain poll() loop.
 *
 * Most cases run on the ctest fixture's server (its address from `redistmp.sh addr`; run by
 * hand without the fixture, the test starts a server of its own). The cases that kill, stop
 * and restart a server start a private one with redistmp.sh in a temporary directory, so the
 * fixture's server stays up for the other tests. Connect failures use a loopback port nobody
 * listens on, and a listener whose accept queue is full (its SYNs are dropped: the connect
 * hangs). AUTH: a private server started with a password (redistmp.sh's REDISTMP_PASSWORD), a
 * password the fixture's server does not expect, and a listener that never answers one.
 *
 * Every cookie is a number; the harness counts the calls per cookie, so "exactly once" is
 * checked for each. The link's state events (up, down, unreachable) are counted and checked for
 * what the caller's log line would show; the link itself must write nothing to stderr. Waits
 * are bounded and wait for events; none is a bare sleep. The poll loop, the private servers
 * and the sockets that refuse or hang are tests/support/linkdrive.h's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/redislink.h"
#include "tests/support/linkdrive.h"
#include "tests/support/testutil.h"

enum {
    COOKIES_MAX = 4096,
    WAIT_MS = 20000, /* the bound of every wait: a failure, never a pass */
};

/* ---- redistmp.sh, stderr ----------------------------------------------------------------- */

static const char *redistmp_script(void)
{
    return linkdrive_script("AVLGATE_REDISTMP", AVLGATE_SOURCE_DIR "/tests/redis/redistmp.sh");
}

/* "127.0.0.1:6379" -> host, port */
static void split_addr(const char *addr, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(addr, ':');
    assert_non_null(colon);
    snprintf(host, cap, "%.*s", (int)(colon - addr), addr);
    *port = atoi(colon + 1);
    assert_true(*port > 0 && *port < 65536);
}

/* A capture sends stderr to a file for the case to count lines in: the link writes none. */
struct capture {
    int saved;
    char path[64];
};

static void capture_start(struct capture *c)
{
    snprintf(c->path, sizeof c->path, "/tmp/avlgate-redislink-log-XXXXXX");
    int fd = mkstemp(c->path);
    assert_true(fd >= 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

/* Restores stderr; returns how many captured lines contain needle (and echoes them). */
static int capture_count(struct capture *c, const char *needle)
{
    fflush(stderr);
    FILE *f = fopen(c->path, "r");
    assert_non_null(f);
    int n = 0;
    char line[1024];
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

static void capture_stop(struct capture *c)
{
    fflush(stderr);
    assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
    close(c->saved);
    FILE *f = fopen(c->path, "r");
    if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f))
            fprintf(stderr, "  (link log) %s", line);
        fclose(f);
    }
    unlink(c->path);
}

/* ---- the harness: a link, its callbacks recorded, a poll loop ----------------------------- */

struct got {
    int calls;
    bool null;
    int type;
    long long integer;
    size_t len;
    char str[64];
};

struct harness {
    struct redislink *l;
    struct linkdrive drive;
    struct got got[COOKIES_MAX]; /* by cookie */
    int order[COOKIES_MAX];      /* cookies in the order of their callbacks */
    int calls;
    int nulls;
    int ups, downs, unreachables; /* on_state's events */
    char event_addr[64];          /* redislink_addr() at the last UP or UNREACHABLE */
    /* re-entrancy: when the reply for chain_on comes, send PING as chain_cookie */
    int chain_on, chain_cookie;
    /* a command sent from inside every NULL callback, and what it returned */
    bool retry_on_null;
    int null_retry_rc;
};

static void *cookie_of(int n)
{
    return (void *)(uintptr_t)n;
}

static void on_reply(void *user, void *cookie, const redisReply *r)
{
    struct harness *h = user;
    uintptr_t n = (uintptr_t)cookie;
    assert_true(n >= 1 && n < COOKIES_MAX);
    assert_true(h->calls < COOKIES_MAX);
    struct got *g = &h->got[n];
    g->calls++;
    h->order[h->calls++] = (int)n;
    if (r == NULL) {
        g->null = true;
        h->nulls++;
        if (h->retry_on_null) {
            static const char *const ping[] = {"PING"};
            h->null_retry_rc = redislink_command(h->l, 1, ping, NULL, cookie_of(1), tu_now_ms());
        }
        return;
    }
    g->type = r->type;
    g->integer = r->integer;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
        r->type == REDIS_REPLY_ERROR) {
        g->len = r->len;
        memcpy(g->str, r->str, r->len < sizeof g->str ? r->len : sizeof g->str - 1);
    }
    if (h->chain_on != 0 && (int)n == h->chain_on) {
        static const char *const ping[] = {"PING"};
        h->chain_on = 0;
        assert_int_equal(
            redislink_command(h->l, 1, ping, NULL, cookie_of(h->chain_cookie), tu_now_ms()), 0);
    }
}

/* Counts the event and checks what the caller's log line would take from the link: its name,
 * its address (up, unreachable) and an error (down, unreachable; none once up). */
static void on_state(void *user, enum redislink_event ev)
{
    struct harness *h = user;
    assert_string_equal(redislink_name(h->l), "test");
    const char *error = redislink_last_error(h->l);
    switch (ev) {
    case REDISLINK_EVENT_UP:
        h->ups++;
        assert_string_equal(error, "");
        break;
    case REDISLINK_EVENT_DOWN:
        h->downs++;
        assert_true(error[0] != '\0');
        break;
    case REDISLINK_EVENT_UNREACHABLE:
        h->unreachables++;
        assert_true(error[0] != '\0');
        break;
    default:
        fail_msg("on_state: event %d", (int)ev);
    }
    if (ev != REDISLINK_EVENT_DOWN)
        snprintf(h->event_addr, sizeof h->event_addr, "%s", redislink_addr(h->l));
}

static void harness_config(struct harness *h, struct redislink_config *cfg, const char *host,
                           int port)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = host;
    cfg->port = port;
    cfg->name = "test";
    cfg->backoff_min_ms = 20;
    cfg->backoff_max_ms = 200;
    cfg->on_reply = on_reply;
    cfg->on_state = on_state;
    cfg->user = h;
}

/* ---- the poll loop (linkdrive) over the link's one socket ---------------------------------- */

static int drive_fd(const void *l, int i)
{
    (void)i;
    return redislink_fd(l);
}

static short drive_events(const void *l, int i)
{
    (void)i;
    return redislink_events(l);
}

static uint64_t drive_deadline(const void *l)
{
    return redislink_next_deadline_ms(l);
}

static void drive_on_io(void *l, int i, short revents, uint64_t now)
{
    (void)i;
    redislink_on_io(l, revents, now);
}

static void drive_tick(void *l, uint64_t now)
{
    redislink_tick(l, now);
}

static const struct linkdrive_ops drive_ops = {
    .sockets = 1,
    .fd = drive_fd,
    .events = drive_events,
    .next_deadline_ms = drive_deadline,
    .on_io = drive_on_io,
    .tick = drive_tick,
};

static void harness_start(struct harness *h, const struct redislink_config *cfg)
{
    memset(h, 0, sizeof(*h));
    char err[256] = "";
    h->l = redislink_create(cfg, err, sizeof err);
    if (h->l == NULL)
        fail_msg("redislink_create: %s", err);
    h->drive = (struct linkdrive){.ops = &drive_ops, .link = h->l};
}

static void harness_stop(struct harness *h)
{
    redislink_destroy(h->l);
    h->l = NULL;
}

/* Drives the link until done(h, arg) or timeout_ms (linkdrive_pump). */
static bool pump(struct harness *h, linkdrive_until_fn *done, long arg, int timeout_ms)
{
    return linkdrive_pump(&h->drive, done, h, arg, timeout_ms);
}

static bool until_up(void *p, long n)
{
    const struct harness *h = p;
    return h->ups >= n && redislink_up(h->l);
}

static bool until_downs(void *p, long n)
{
    const struct harness *h = p;
    return h->downs >= n;
}

static bool until_calls(void *p, long n)
{
    const struct harness *h = p;
    return h->calls >= n;
}

static bool until_failures(void *p, long n)
{
    const struct harness *h = p;
    return redislink_counters(h->l)->connect_failures >= (uint64_t)n;
}

/* Sends a command given as NUL-terminated words; asserts the return code. */
static void send_rc(struct harness *h, int want, int cookie, int argc, ...)
{
    const char *argv[16];
    assert_true(argc <= 16);
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    assert_int_equal(redislink_command(h->l, argc, argv, NULL, cookie_of(cookie), tu_now_ms()),
                     want);
}

#define SEND(h, cookie, ...)                                                                       \
    send_rc((h), 0, (cookie), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)),       \
            __VA_ARGS__)
#define SEND_RC(h, want, cookie, ...)                                                              \
    send_rc((h), (want), (cookie), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)),  \
            __VA_ARGS__)

/* Writes what the link holds without reading anything: POLLOUT only, until it wants no more. */
static void flush_only(struct harness *h)
{
    uint64_t end = tu_now_ms() + WAIT_MS;
    while (redislink_events(h->l) & POLLOUT) {
        assert_true(tu_now_ms() < end);
        struct pollfd p = {.fd = redislink_fd(h->l), .events = POLLOUT, .revents = 0};
        assert_true(poll(&p, 1, 1000) >= 0);
        if (p.revents & POLLOUT)
            redislink_on_io(h->l, POLLOUT, tu_now_ms());
    }
}

static void expect_status(const struct harness *h, int cookie, const char *s)
{
    const struct got *g = &h->got[cookie];
    assert_int_equal(g->calls, 1);
    assert_false(g->null);
    assert_int_equal(g->type, REDIS_REPLY_STATUS);
    assert_string_equal(g->str, s);
}

static void expect_null(const struct harness *h, int cookie)
{
    assert_int_equal(h->got[cookie].calls, 1);
    assert_true(h->got[cookie].null);
}

/* ---- the fixture's server ------------------------------------------------------------------ */

struct fx {
    char host[64];
    int port;
    struct linkdrive_server own; /* dir "" when the ctest fixture's server is used */
};

static struct fx fx;

static int fx_setup(void **state)
{
    (void)state;
    const char *dir = getenv("AVLGATE_TEST_REDISDIR");
    char fixture_addr[128];
    const char *addr = fixture_addr;
    if (dir && dir[0]) {
        linkdrive_script_run(redistmp_script(), "addr", dir, fixture_addr, sizeof fixture_addr);
    } else {
        linkdrive_server_start(&fx.own, redistmp_script(), "redislink");
        addr = fx.own.line;
    }
    split_addr(addr, fx.host, sizeof fx.host, &fx.port);
    return 0;
}

static int fx_teardown(void **state)
{
    (void)state;
    if (fx.own.dir[0])
        linkdrive_server_remove(&fx.own, "stop");
    return 0;
}

static void fx_start(struct harness *h, struct redislink_config *cfg)
{
    harness_start(h, cfg);
    assert_true(pump(h, until_up, 1, WAIT_MS));
}

/* A key of this run's own. */
static const char *key(const char *what)
{
    static char buf[4][96];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "avlgate:test_redislink:%d:%s", (int)getpid(), what);
    return buf[i];
}

/* ---- the cases ---------------------------------------------------------------------------- */

static void test_config(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg, bad;
    harness_config(&h, &cfg, "127.0.0.1", 6379);
    char err[128];

    bad = cfg;
    bad.host = NULL;
    err[0] = '\0';
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_int_equal(errno, EINVAL);
    assert_string_equal(err, "redislink: host missing");
    bad = cfg;
    bad.host = "localhost"; /* names would mean a blocking getaddrinfo at every connect */
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_int_equal(errno, EINVAL);
    assert_string_equal(err, "redislink: host is not an IP address");
    bad = cfg;
    bad.port = 0;
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_string_equal(err, "redislink: port out of range");
    bad = cfg;
    bad.on_reply = NULL;
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_string_equal(err, "redislink: on_reply missing");
    bad = cfg;
    bad.backoff_min_ms = 500;
    bad.backoff_max_ms = 100;
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_string_equal(err, "redislink: backoff_min_ms above backoff_max_ms");
    bad = cfg;
    bad.pending_max = (1u << 20) + 1;
    assert_null(redislink_create(&bad, err, sizeof err));
    assert_int_equal(errno, EINVAL);
    assert_null(redislink_create(NULL, NULL, 0));
    assert_int_equal(errno, EINVAL);

    /* A good one: nothing happens before the first tick. */
    harness_start(&h, &cfg);
    assert_int_equal(redislink_fd(h.l), -1);
    assert_int_equal(redislink_events(h.l), 0);
    assert_int_equal(redislink_next_deadline_ms(h.l), 0);
    assert_false(redislink_up(h.l));
    SEND_RC(&h, -ENOTCONN, 1, "PING");
    redislink_on_io(h.l, 0, tu_now_ms()); /* spurious: nothing to do */
    assert_int_equal(redislink_fd(h.l), -1);
    const struct redislink_counters *k = redislink_counters(h.l);
    assert_int_equal(k->commands, 0);
    assert_int_equal(k->connects + k->connect_failures, 0);
    harness_stop(&h);
    redislink_destroy(NULL);

    bad = cfg;
    bad.host = "::1"; /* IPv6 is an IP address */
    harness_start(&h, &bad);
    harness_stop(&h);
}

/* Replies come back in order, each cookie once, with the server's values: 1000 pipelined
 * INCRs, error replies, binary values, a command sent from inside a reply callback. */
static void test_pipeline(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    cfg.reply_timeout_ms = 5000; /* answered commands never time out */
    harness_start(&h, &cfg);

    /* Before the first tick and while connecting: not up, nothing queued. */
    SEND_RC(&h, -ENOTCONN, 1, "PING");
    uint32_t e0 = redislink_fd_epoch(h.l);
    redislink_tick(h.l, tu_now_ms());
    assert_false(redislink_up(h.l));
    assert_true(redislink_fd(h.l) >= 0);
    assert_int_equal(redislink_events(h.l), POLLOUT);
    assert_int_not_equal(redislink_fd_epoch(h.l), e0);
    SEND_RC(&h, -ENOTCONN, 1, "PING");
    assert_int_equal(redislink_counters(h.l)->commands, 0);
    assert_true(pump(&h, until_up, 1, WAIT_MS));
    assert_int_equal(h.ups, 1);
    assert_int_equal(h.calls, 0); /* the refused commands never get a callback */
    assert_int_equal(redislink_events(h.l), POLLIN);
    assert_int_equal(redislink_next_deadline_ms(h.l), UINT64_MAX);

    /* Spurious wake-ups while up and idle change nothing. */
    for (int i = 0; i < 5; i++)
        redislink_on_io(h.l, 0, tu_now_ms());
    assert_true(redislink_up(h.l));
    assert_int_equal(h.calls, 0);

    const char *k = key("incr");
    SEND(&h, 2000, "DEL", k);
    enum { N = 1000 };
    for (int i = 1; i <= N; i++)
        SEND(&h, i, "INCR", k);
    assert_true(redislink_events(h.l) & POLLOUT);
    assert_true(redislink_next_deadline_ms(h.l) != UINT64_MAX); /* the reply timeout runs */
    assert_true(pump(&h, until_calls, N + 1, WAIT_MS));
    assert_int_equal(h.order[0], 2000);
    assert_int_equal(h.got[2000].type, REDIS_REPLY_INTEGER);
    for (int i = 1; i <= N; i++) {
        assert_int_equal(h.order[i], i);
        assert_int_equal(h.got[i].calls, 1);
        assert_int_equal(h.got[i].type, REDIS_REPLY_INTEGER);
        assert_int_equal(h.got[i].integer, i);
    }
    assert_int_equal(redislink_next_deadline_ms(h.l), UINT64_MAX);

    /* An error reply is a reply: counted, and the link stays up. A binary value round-trips
     * with argvlen. A callback sends a command of its own. */
    const char *bin_argv[] = {"SET", key("bin"), "a\0b\"c"};
    const size_t bin_len[] = {3, strlen(bin_argv[1]), 5};
    assert_int_equal(redislink_command(h.l, 3, bin_argv, bin_len, cookie_of(2001), tu_now_ms()), 0);
    SEND(&h, 2002, "NOSUCHCOMMAND", "x");
    SEND(&h, 2003, "GET", key("bin"));
    h.chain_on = 2003;
    h.chain_cookie = 2004;
    SEND(&h, 2005, "DEL", k, key("bin"));
    assert_true(pump(&h, until_calls, N + 6, WAIT_MS));
    expect_status(&h, 2001, "OK");
    assert_int_equal(h.got[2002].type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(h.got[2002].str, "unknown command"));
    assert_int_equal(h.got[2003].type, REDIS_REPLY_STRING);
    assert_int_equal(h.got[2003].len, 5);
    assert_memory_equal(h.got[2003].str, "a\0b\"c", 5);
    assert_int_equal(h.got[2005].integer, 2);
    expect_status(&h, 2004, "PONG");
    assert_int_equal(h.order[N + 5], 2004); /* sent last, answered last */

    /* Commands that would break one reply per command are refused. */
    SEND_RC(&h, -EINVAL, 1, "SUBSCRIBE", "ch");
    SEND_RC(&h, -EINVAL, 1, "psubscribe", "ch*");
    SEND_RC(&h, -EINVAL, 1, "MONITOR");
    SEND_RC(&h, -EINVAL, 1, "CLIENT", "REPLY", "OFF");
    assert_int_equal(redislink_command(h.l, 0, bin_argv, NULL, cookie_of(1), tu_now_ms()), -EINVAL);

    const struct redislink_counters *c = redislink_counters(h.l);
    assert_int_equal(c->commands, N + 6);
    assert_int_equal(c->replies, N + 6);
    assert_int_equal(c->errors, 1);
    assert_int_equal(c->lost, 0);
    assert_int_equal(c->timeouts, 0);
    assert_int_equal(c->connects, 1);
    assert_int_equal(c->disconnects, 0);
    assert_int_equal(h.nulls, 0);
    harness_stop(&h);
    assert_int_equal(h.downs, 0); /* destroy is not a state change */
}

/* pending_max outstanding: -ENOBUFS, nothing queued; room again once replies came. */
static void test_pending_max(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    cfg.pending_max = 4;
    fx_start(&h, &cfg);
    for (int i = 1; i <= 4; i++)
        SEND(&h, i, "PING");
    SEND_RC(&h, -ENOBUFS, 5, "PING");
    assert_int_equal(redislink_counters(h.l)->commands, 4);
    assert_true(pump(&h, until_calls, 4, WAIT_MS));
    for (int i = 1; i <= 4; i++)
        expect_status(&h, i, "PONG");
    assert_int_equal(h.got[5].calls, 0);
    SEND(&h, 5, "PING");
    assert_true(pump(&h, until_calls, 5, WAIT_MS));
    expect_status(&h, 5, "PONG");
    harness_stop(&h);
}

/* A command that gets no answer within reply_timeout_ms (BLPOP blocks for 5 s) drops the link:
 * it and the command behind it get NULL once; the link comes back by itself. */
static void test_reply_timeout(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    cfg.reply_timeout_ms = 300;
    fx_start(&h, &cfg);
    uint32_t epoch = redislink_fd_epoch(h.l);
    uint64_t t0 = tu_now_ms();
    SEND(&h, 1, "BLPOP", key("never"), "5");
    SEND(&h, 2, "PING");
    assert_true(redislink_next_deadline_ms(h.l) <= t0 + 300 + 5);
    assert_true(pump(&h, until_downs, 1, WAIT_MS));
    uint64_t took = tu_now_ms() - t0;
    assert_true(took >= 300 && took < 2000);
    expect_null(&h, 1);
    expect_null(&h, 2);
    assert_int_equal(h.order[0], 1);
    assert_int_equal(h.order[1], 2);
    assert_int_equal(h.calls, 2);
    assert_int_not_equal(redislink_fd_epoch(h.l), epoch);
    assert_false(redislink_up(h.l));
    SEND_RC(&h, -ENOTCONN, 3, "PING");
    const struct redislink_counters *c = redislink_counters(h.l);
    assert_int_equal(c->timeouts, 1);
    assert_int_equal(c->disconnects, 1);
    assert_int_equal(c->lost, 2);

    assert_true(pump(&h, until_up, 2, WAIT_MS));
    SEND(&h, 3, "PING");
    assert_true(pump(&h, until_calls, 3, WAIT_MS));
    expect_status(&h, 3, "PONG");
    assert_int_equal(c->connects, 2);
    assert_int_equal(c->timeouts, 1);
    assert_int_equal(h.downs, 1);
    harness_stop(&h);
}

/* POLLERR/POLLHUP drop the link, after what the socket already holds has been read: the PONG
 * that arrived is delivered, the BLPOP behind it gets NULL. */
static void test_pollerr_reads_first(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    fx_start(&h, &cfg);
    SEND(&h, 1, "PING");
    SEND(&h, 2, "BLPOP", key("never"), "5");
    flush_only(&h);
    struct pollfd p = {.fd = redislink_fd(h.l), .events = POLLIN, .revents = 0};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1); /* the PONG is in the socket */
    assert_int_equal(h.calls, 0);
    uint32_t epoch = redislink_fd_epoch(h.l);
    redislink_on_io(h.l, POLLERR, tu_now_ms());
    expect_status(&h, 1, "PONG");
    expect_null(&h, 2);
    assert_int_equal(h.calls, 2);
    assert_int_equal(h.downs, 1);
    assert_false(redislink_up(h.l));
    assert_int_equal(redislink_fd(h.l), -1);
    assert_int_equal(redislink_events(h.l), 0);
    assert_int_not_equal(redislink_fd_epoch(h.l), epoch);
    assert_int_equal(redislink_counters(h.l)->disconnects, 1);
    redislink_on_io(h.l, POLLERR, tu_now_ms()); /* a stale completion: ignored */
    assert_int_equal(h.downs, 1);
    assert_true(pump(&h, until_up, 2, WAIT_MS));
    harness_stop(&h);
}

/* Destroy with commands outstanding, on the wire and still in the output buffer: each gets
 * NULL once, from inside redislink_destroy. */
static void test_destroy_outstanding(void **state)
{
    (void)state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    fx_start(&h, &cfg);
    SEND(&h, 1, "BLPOP", key("never"), "5");
    for (int i = 2; i <= 5; i++)
        SEND(&h, i, "PING");
    flush_only(&h); /* 1..5 on the wire */
    for (int i = 6; i <= 10; i++)
        SEND(&h, i, "PING"); /* 6..10 in hiredis's buffer */
    h.retry_on_null = true;
    h.null_retry_rc = 0;
    harness_stop(&h);
    assert_int_equal(h.calls, 10);
    for (int i = 1; i <= 10; i++) {
        expect_null(&h, i);
        assert_int_equal(h.order[i - 1], i);
    }
    assert_int_equal(h.null_retry_rc, -ENOTCONN);
    assert_int_equal(h.downs, 0);
}

/* Nothing listens: attempts fail, are counted (one UNREACHABLE event in all), back off
 * exponentially with jitter up to the ceiling, and the loop sleeps between them. */
static void test_connect_refused(void **state)
{
    (void)state;
    int port;
    /* Bound, never listening: the port stays ours and refuses connections. */
    int s = linkdrive_loopback(-1, &port);

    struct capture cap;
    capture_start(&cap);
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, "127.0.0.1", port);
    cfg.backoff_min_ms = 20;
    cfg.backoff_max_ms = 200;
    harness_start(&h, &cfg);

    /* The k-th consecutive failure waits a delay drawn in [d/2, d], d = min(200, 20 * 2^k),
     * from the now_ms of the call in which it failed. */
    uint64_t delay[7];
    for (int k = 0; k < 7; k++) {
        assert_true(pump(&h, until_failures, k + 1, WAIT_MS));
        assert_int_equal(redislink_counters(h.l)->connect_failures, k + 1);
        uint64_t next = redislink_next_deadline_ms(h.l);
        assert_true(next != UINT64_MAX && next >= h.drive.last_ms);
        delay[k] = next - h.drive.last_ms;
        assert_int_equal(redislink_fd(h.l), -1);
        assert_int_equal(redislink_events(h.l), 0);
        SEND_RC(&h, -ENOTCONN, 1, "PING");
    }
    uint64_t ceiling[7] = {20, 40, 80, 160, 200, 200, 200};
    for (int k = 0; k < 7; k++) {
        assert_true(delay[k] <= ceiling[k]);
        assert_true(delay[k] >= ceiling[k] / 2);
    }

    /* At the ceiling: at most one attempt per 100 ms, and a few loop turns per attempt (a busy
     * loop would make thousands). */
    uint64_t f0 = redislink_counters(h.l)->connect_failures, loops0 = h.drive.loops;
    uint64_t t0 = tu_now_ms();
    assert_true(pump(&h, NULL, 0, 1000));
    uint64_t fails = redislink_counters(h.l)->connect_failures - f0;
    uint64_t elapsed = tu_now_ms() - t0;
    assert_true(fails >= 3 && fails <= elapsed / 100 + 1);
    assert_true(h.drive.loops - loops0 <= 6 * fails + 6);

    const struct redislink_counters *c = redislink_counters(h.l);
    assert_int_equal(c->connects, 0);
    assert_int_equal(c->disconnects, 0);
    assert_int_equal(h.ups + h.downs, 0);
    harness_stop(&h);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_string_equal(h.event_addr, addr);
    int unreachable = h.unreachables;
    int any = h.ups + h.downs + h.unreachables;
    int lines = capture_count(&cap, "level=");
    capture_stop(&cap);
    assert_int_equal(unreachable, 1);
    assert_int_equal(any, 1);
    assert_int_equal(lines, 0); /* the caller logs, not the link */
    close(s);
}

/* A listener whose accept queue is full drops SYNs: the connect hangs until
 * connect_timeout_ms, then counts as a failure, and the next attempt follows the backoff. */
static void test_connect_timeout(void **state)
{
    (void)state;
    int port;
    int ls = linkdrive_loopback(0, &port);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* Fill the accept queue (backlog 0 holds one); nobody accepts. */
    int fill[2];
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        assert_true(fill[i] >= 0);
        int r = connect(fill[i], (struct sockaddr *)&a, sizeof a);
        assert_true(r == 0 || errno == EINPROGRESS);
    }
    struct pollfd fp = {.fd = fill[0], .events = POLLOUT, .revents = 0};
    assert_int_equal(poll(&fp, 1, WAIT_MS), 1); /* the first one is in the queue */

    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, "127.0.0.1", port);
    cfg.connect_timeout_ms = 150;
    cfg.backoff_min_ms = 10;
    cfg.backoff_max_ms = 20;
    harness_start(&h, &cfg);
    uint64_t t0 = tu_now_ms();
    redislink_tick(h.l, t0);
    assert_true(redislink_fd(h.l) >= 0);
    assert_int_equal(redislink_events(h.l), POLLOUT);
    assert_int_equal(redislink_next_deadline_ms(h.l), t0 + 150);
    SEND_RC(&h, -ENOTCONN, 1, "PING");
    redislink_on_io(h.l, 0, tu_now_ms());       /* spurious: the connect is still in progress */
    redislink_on_io(h.l, POLLOUT, tu_now_ms()); /* a false claim: the socket says otherwise */
    assert_false(redislink_up(h.l));
    assert_true(pump(&h, until_failures, 2, WAIT_MS));
    assert_true(tu_now_ms() - t0 >= 2 * 150);
    assert_int_equal(h.ups, 0);
    assert_int_equal(redislink_counters(h.l)->connects, 0);
    harness_stop(&h);
    close(fill[0]);
    close(fill[1]);
    close(ls);
}

/* A password to a server that has none: the server refuses the AUTH, so the attempt fails like
 * a refused connect (one UNREACHABLE, backoff), with the server's reason and never the
 * password; the link never comes up and takes no command. */
static void test_auth_without_requirepass(void **state)
{
    (void)state;
    struct capture cap;
    capture_start(&cap);
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, fx.host, fx.port);
    cfg.password = "pw-the-server-lacks";
    harness_start(&h, &cfg);
    assert_true(pump(&h, until_failures, 2, WAIT_MS));
    const char *error = redislink_last_error(h.l);
    assert_non_null(strstr(error, "AUTH refused: ERR AUTH"));
    assert_null(strstr(error, cfg.password));
    assert_false(redislink_up(h.l));
    SEND_RC(&h, -ENOTCONN, 1, "PING");
    const struct redislink_counters *c = redislink_counters(h.l);
    assert_int_equal(c->connects, 0);
    assert_int_equal(c->disconnects, 0);
    harness_stop(&h);
    int ups = h.ups, unreachables = h.unreachables;
    int lines = capture_count(&cap, "level=");
    capture_stop(&cap);
    assert_int_equal(ups, 0);
    assert_int_equal(unreachables, 1);
    assert_int_equal(lines, 0); /* the caller logs, not the link */
}

/* A server that accepts the connection but never answers the AUTH (a listener nobody accepts
 * from: the kernel completes the handshake): the attempt fails at connect_timeout_ms, counted
 * as a failed connect, and the link never comes up. */
static void test_auth_timeout(void **state)
{
    (void)state;
    int port;
    int ls = linkdrive_loopback(8, &port);
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, "127.0.0.1", port);
    cfg.password = "pw";
    cfg.connect_timeout_ms = 200;
    harness_start(&h, &cfg);
    uint64_t t0 = tu_now_ms();
    assert_true(pump(&h, until_failures, 1, WAIT_MS));
    assert_true(tu_now_ms() - t0 >= 200);
    assert_string_equal(redislink_last_error(h.l), "AUTH timed out");
    assert_int_equal(h.ups, 0);
    assert_int_equal(h.unreachables, 1);
    assert_int_equal(redislink_counters(h.l)->connects, 0);
    harness_stop(&h);
    close(ls);
}

/* ---- a server of the test's own ------------------------------------------------------------ */

struct own {
    struct linkdrive_server srv;
    char host[64];
    int port;
};

static int own_setup(void **state)
{
    struct own *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    linkdrive_server_start(&o->srv, redistmp_script(), "redislink");
    split_addr(o->srv.line, o->host, sizeof o->host, &o->port);
    *state = o;
    return 0;
}

#define AUTH_PASSWORD "test-redislink-pw"

/* A server of the test's own that requires AUTH_PASSWORD (redistmp.sh's REDISTMP_PASSWORD). */
static int own_auth_setup(void **state)
{
    assert_int_equal(setenv("REDISTMP_PASSWORD", AUTH_PASSWORD, 1), 0);
    int rc = own_setup(state);
    unsetenv("REDISTMP_PASSWORD");
    return rc;
}

static int own_teardown(void **state)
{
    struct own *o = *state;
    linkdrive_server_remove(&o->srv, "kill");
    free(o);
    return 0;
}

/* Outstanding commands when the server dies: each gets NULL once, the link says down once,
 * commands are refused while it is down, and it comes back by itself when the server is back
 * on the same port — after a crash (SIGKILL) and after a clean SHUTDOWN. */
static void test_server_restart(void **state)
{
    struct own *o = *state;
    struct capture cap;
    capture_start(&cap);
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, o->host, o->port);
    fx_start(&h, &cfg);
    SEND(&h, 1, "SET", key("r"), "1");
    assert_true(pump(&h, until_calls, 1, WAIT_MS));
    expect_status(&h, 1, "OK");

    /* three blocked behind each other, all on the wire */
    SEND(&h, 2, "BLPOP", key("never"), "0");
    SEND(&h, 3, "BLPOP", key("never"), "0");
    SEND(&h, 4, "PING");
    flush_only(&h);
    h.retry_on_null = true;
    h.null_retry_rc = 0;
    linkdrive_server_run(&o->srv, "kill");
    assert_true(pump(&h, until_downs, 1, WAIT_MS));
    for (int i = 2; i <= 4; i++)
        expect_null(&h, i);
    assert_int_equal(h.calls, 4);
    assert_int_equal(h.null_retry_rc, -ENOTCONN);
    assert_int_equal(h.downs, 1);
    SEND_RC(&h, -ENOTCONN, 5, "PING");
    const struct redislink_counters *c = redislink_counters(h.l);
    assert_int_equal(c->disconnects, 1);
    assert_int_equal(c->lost, 3);
    /* down for a while: the attempts fail quietly */
    assert_true(pump(&h, until_failures, (long)c->connect_failures + 3, WAIT_MS));
    assert_int_equal(h.ups, 1);
    assert_int_equal(h.downs, 1);

    linkdrive_server_run(&o->srv, "start");
    assert_true(pump(&h, until_up, 2, WAIT_MS));
    SEND(&h, 5, "INCR", key("r")); /* a new server: the old value is gone */
    assert_true(pump(&h, until_calls, 5, WAIT_MS));
    assert_int_equal(h.got[5].type, REDIS_REPLY_INTEGER);
    assert_int_equal(h.got[5].integer, 1);

    /* a clean shutdown closes the connection the same way */
    SEND(&h, 6, "BLPOP", key("never"), "0");
    flush_only(&h);
    linkdrive_server_run(&o->srv, "stop");
    assert_true(pump(&h, until_downs, 2, WAIT_MS));
    expect_null(&h, 6);
    linkdrive_server_run(&o->srv, "start");
    assert_true(pump(&h, until_up, 3, WAIT_MS));
    SEND(&h, 7, "PING");
    assert_true(pump(&h, until_calls, 7, WAIT_MS));
    expect_status(&h, 7, "PONG");

    assert_int_equal(c->connects, 3);
    assert_int_equal(c->disconnects, 2);
    assert_int_equal(c->lost, 4);
    assert_true(c->connect_failures >= 3);
    assert_int_equal(h.ups, 3);
    assert_int_equal(h.downs, 2);
    harness_stop(&h);
    assert_string_equal(h.event_addr, o->srv.line); /* the last UP's address */
    int ups = h.ups;
    int downs = h.downs;
    int any = h.ups + h.downs + h.unreachables;
    int lines = capture_count(&cap, "level=");
    capture_stop(&cap);
    assert_int_equal(ups, 3);
    assert_int_equal(downs, 2);
    assert_int_equal(any, 5);   /* failed attempts while down are not reported */
    assert_int_equal(lines, 0); /* the caller logs, not the link */
}

/* A server that requires a password: with it the link comes up and works, and authenticates
 * again on every reconnect (the server restarted with the same password); with a wrong one the
 * attempt fails (one UNREACHABLE, backoff, the server's reason without the password) and no
 * command is taken; without one the link is up but Redis refuses the commands (NOAUTH). */
static void test_auth(void **state)
{
    struct own *o = *state;
    struct harness h;
    struct redislink_config cfg;
    harness_config(&h, &cfg, o->host, o->port);
    cfg.password = AUTH_PASSWORD;
    fx_start(&h, &cfg);
    assert_int_equal(redislink_events(h.l), POLLIN);
    SEND(&h, 1, "SET", key("auth"), "1");
    assert_true(pump(&h, until_calls, 1, WAIT_MS));
    expect_status(&h, 1, "OK");
    linkdrive_server_run(&o->srv, "kill");
    assert_true(pump(&h, until_downs, 1, WAIT_MS));
    linkdrive_server_run(&o->srv, "start"); /* the same password (redistmp.sh keeps it) */
    assert_true(pump(&h, until_up, 2, WAIT_MS));
    SEND(&h, 2, "PING");
    assert_true(pump(&h, until_calls, 2, WAIT_MS));
    expect_status(&h, 2, "PONG");
    assert_int_equal(redislink_counters(h.l)->connects, 2);
    harness_stop(&h);

    struct capture cap;
    capture_start(&cap);
    cfg.password = "not-" AUTH_PASSWORD;
    harness_start(&h, &cfg);
    assert_true(pump(&h, until_failures, 3, WAIT_MS));
    const char *error = redislink_last_error(h.l);
    assert_non_null(strstr(error, "AUTH refused: WRONGPASS"));
    assert_null(strstr(error, AUTH_PASSWORD));
    assert_false(redislink_up(h.l));
    SEND_RC(&h, -ENOTCONN, 3, "PING");
    assert_int_equal(redislink_counters(h.l)->connects, 0);
    harness_stop(&h);
    int ups = h.ups, unreachables = h.unreachables;
    int lines = capture_count(&cap, "level=");
    capture_stop(&cap);
    assert_int_equal(ups, 0);
    assert_int_equal(unreachables, 1); /* once per outage, not per attempt */
    assert_int_equal(lines, 0);

    cfg.password = NULL;
    fx_start(&h, &cfg);
    SEND(&h, 4, "PING");
    assert_true(pump(&h, until_calls, 1, WAIT_MS));
    assert_int_equal(h.got[4].type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(h.got[4].str, "NOAUTH"));
    harness_stop(&h);
}

int main(void)
{
    /* hiredis writes with write(2): a write to a closed connection must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest fixture_tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_pending_max),
        cmocka_unit_test(test_reply_timeout),
        cmocka_unit_test(test_pollerr_reads_first),
        cmocka_unit_test(test_destroy_outstanding),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_auth_without_requirepass),
        cmocka_unit_test(test_auth_timeout),
    };
    const struct CMUnitTest own_server_tests[] = {
        cmocka_unit_test(test_server_restart),
    };
    int failed = cmocka_run_group_tests_name("redislink", fixture_tests, fx_setup, fx_teardown);
    failed += cmocka_run_group_tests_name("redislink_own_server", own_server_tests, own_setup,
                                          own_teardown);
    const struct CMUnitTest auth_tests[] = {
        cmocka_unit_test(test_auth),
    };
    failed +=
        cmocka_run_group_tests_name("redislink_auth", auth_tests, own_auth_setup, own_teardown);
    return failed;
}
