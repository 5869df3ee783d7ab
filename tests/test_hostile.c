/* test_hostile.c — the real gateway against hostile clients on its device port, with the real
 * PostgreSQL fixture: `avlgate run` as a child process (tests/support/gwproc.h) with --metrics,
 * devices over loopback TCP (tests/support/device.h), every /metrics body parsed strictly
 * (tests/support/promtext.h).
 *
 * Cases:
 *   unidentified_flood   --shards 1 --conns-max 64: 64 sockets that send only 0xFF once a second
 *                        and reopen when closed, then 20 real trackers. Every tracker gets its
 *                        0x01 and its packet stored once (the slowest answer is measured and
 *                        printed); once the flood stops reopening, --handshake-timeout-s (its
 *                        default, 10) closes all its sockets (measured, printed); the closes are
 *                        counted as closed{reason="evicted"} and {reason="identify_timeout"}.
 *   imei_above_key_max   an IMEI of 2^56 or more (17 digits) is refused with 0x00 and counted
 *                        as handshakes_rejected{reason="protocol"}, whichever of the two shards
 *                        accepts the connection (each gets at least one).
 *   replaced_address     a second connection of a connected IMEI from another source address
 *                        (127.0.0.2, then 127.0.0.1) counts connections_replaced{reason=
 *                        "other_address"} and logs both addresses; one from the same address
 *                        counts "same_address".
 *
 * Timing goals are measured and printed, and asserted only with a generous bound. Every wait is
 * bounded; the gateway's output goes to test_hostile_<case>.log in the build directory, and a
 * failing check prints its tail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/promtext.h"
#include "tests/support/scrape.h"

enum {
    WAIT_MS = GWPROC_WAIT_MS,
    FLOOD = 64,                 /* the flood's sockets, as many as the shard's table */
    FLOOD_TICK_MS = 100,        /* the flood looks for closed sockets this often */
    TRACKERS = 20,              /* real trackers beside the flood */
    TRACKER_RECORDS = 2,        /* records in each tracker's one packet */
    PKT_BYTES = 1024,           /* a tracker's packet */
    HANDSHAKE_BOUND_MS = 20000, /* generous: the goal is 5 s, the figure is printed */
    FLOOD_CLOSED_BOUND_MS = 35000,
};

#define IMEI_BASE UINT64_C(356307042452000)

/* A flood of sockets that never identify themselves, on a thread of its own. */
struct flood {
    pthread_t thread;
    bool running;
    uint16_t port;
    int fds[FLOOD];
    uint64_t opened_ms[FLOOD];
    atomic_bool reopen;                 /* reopen closed sockets; the test clears it */
    atomic_bool stop;                   /* end the thread (it closes what is open) */
    atomic_uint open;                   /* sockets open at the last tick */
    atomic_uint reopened;               /* connections made after the first FLOOD */
    atomic_uint_fast64_t last_close_ms; /* device_now_ms of the last close seen */
    atomic_uint_fast64_t life_max_ms;   /* longest open-to-close of a socket closed after stop */
};

/* ---- the case's context: everything the teardown must undo -------------------------------- */

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    char metrics_addr[32];
    struct flood *flood;
} T;

/* The case's gateway with --metrics on a free loopback port, then extra (NULL-ended, may be
 * NULL; later options win). */
static void begin(const char *name, const char *const *extra)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_hostile", name, "test_hostile");
    T.metrics_port = device_free_port();
    snprintf(T.metrics_addr, sizeof T.metrics_addr, "127.0.0.1:%u", T.metrics_port);
    const char *args[16] = {"--metrics", T.metrics_addr};
    unsigned n = 2;
    for (unsigned i = 0; extra && extra[i]; i++) {
        assert_true(n < 15);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    gwproc_start(&T.gw, args);
}

static void flood_stop(struct flood *f);

static int teardown(void **state)
{
    (void)state;
    if (T.flood) {
        flood_stop(T.flood);
        free(T.flood);
        T.flood = NULL;
    }
    gwproc_end(&T.gw);
    return 0;
}

/* ---- /metrics ----------------------------------------------------------------------------- */

/* GET /metrics from the case's gateway, parsed strictly into t (prom_free after). */
static void scrape(struct prom_text *t)
{
    char err[512];
    CHECK(metrics_scrape(T.metrics_port, t, err, sizeof err) == 0, "%s", err);
}

/* Counter name summed over its series with label=value (label NULL: all of them) and
 * shard=shard (NULL: every shard). */
static double counter(const char *name, const char *label, const char *value, const char *shard)
{
    struct prom_text t;
    scrape(&t);
    CHECK(prom_count(&t, name, NULL) > 0, "/metrics has no %s", name);
    double v = shard ? prom_sum(&t, name, label, value, "shard", shard, NULL)
                     : prom_sum(&t, name, label, value, NULL);
    prom_free(&t);
    return v;
}

/* ---- the flood ---------------------------------------------------------------------------- */

static int flood_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The gateway closed fd (it never sends these sockets anything else). */
static bool flood_closed(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false;
    uint8_t b[16];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* One socket's tick: noticed closed, reopened, sent its keep-alive. */
static void flood_tick_one(struct flood *f, int i, uint64_t now, bool keepalive)
{
    if (f->fds[i] >= 0 && flood_closed(f->fds[i])) {
        close(f->fds[i]);
        f->fds[i] = -1;
        atomic_store(&f->last_close_ms, now);
        if (!atomic_load(&f->reopen) && now - f->opened_ms[i] > atomic_load(&f->life_max_ms))
            atomic_store(&f->life_max_ms, now - f->opened_ms[i]);
    }
    if (f->fds[i] < 0 && atomic_load(&f->reopen)) {
        f->fds[i] = flood_connect(f->port);
        f->opened_ms[i] = now;
        atomic_fetch_add(&f->reopened, 1);
    }
    static const uint8_t ff = 0xFF; /* a keep-alive: the only byte these sockets send */
    if (f->fds[i] >= 0 && keepalive)
        send(f->fds[i], &ff, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void *flood_run(void *arg)
{
    struct flood *f = arg;
    uint64_t next_keepalive = 0;
    while (!atomic_load(&f->stop)) {
        uint64_t now = device_now_ms();
        bool keepalive = now >= next_keepalive;
        if (keepalive)
            next_keepalive = now + 1000;
        unsigned open = 0;
        for (int i = 0; i < FLOOD; i++) {
            flood_tick_one(f, i, now, keepalive);
            open += f->fds[i] >= 0;
        }
        atomic_store(&f->open, open);
        device_sleep_ms(FLOOD_TICK_MS);
    }
    for (int i = 0; i < FLOOD; i++)
        if (f->fds[i] >= 0)
            close(f->fds[i]);
    return NULL;
}

static struct flood *flood_start(uint16_t port)
{
    struct flood *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->port = port;
    uint64_t now = device_now_ms();
    for (int i = 0; i < FLOOD; i++) {
        f->fds[i] = flood_connect(port);
        f->opened_ms[i] = now;
        CHECK(f->fds[i] >= 0, "flood: connect: %s", strerror(errno));
    }
    atomic_store(&f->reopen, true);
    atomic_store(&f->open, FLOOD);
    assert_int_equal(pthread_create(&f->thread, NULL, flood_run, f), 0);
    f->running = true;
    return f;
}

static void flood_stop(struct flood *f)
{
    if (!f->running)
        return;
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    f->running = false;
}

/* ---- trackers ----------------------------------------------------------------------------- */

struct fleet {
    struct tracker t[TRACKERS];
    struct tracker_pkt pkt[TRACKERS];
    uint8_t bytes[TRACKERS][PKT_BYTES];
    uint64_t answered_ms[TRACKERS]; /* from the start to its first 0x01; 0: none yet */
};

/* Runs the trackers until each has its packet acknowledged, noting when each first got its
 * 0x01. Returns the slowest answer, in ms from the start. */
static uint64_t fleet_run(struct fleet *fl, int timeout_ms)
{
    uint64_t t0 = device_now_ms(), slowest = 0;
    unsigned done = 0;
    while (done < TRACKERS && device_now_ms() - t0 < (uint64_t)timeout_ms) {
        done = trackers_poll(fl->t, TRACKERS, 20);
        for (unsigned i = 0; i < TRACKERS; i++) {
            if (fl->answered_ms[i] || !fl->t[i].handshakes)
                continue;
            fl->answered_ms[i] = device_now_ms() - t0 + 1;
            if (fl->answered_ms[i] > slowest)
                slowest = fl->answered_ms[i];
        }
    }
    for (unsigned i = 0; i < TRACKERS; i++)
        CHECK(fl->t[i].acked == 1, "tracker %u: no ACK within %d ms (handshakes %u, connects %u)",
              i, timeout_ms, fl->t[i].handshakes, fl->t[i].connects);
    return slowest;
}

static void fleet_init(struct fleet *fl)
{
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    for (unsigned i = 0; i < TRACKERS; i++) {
        size_t len = gwproc_encode_series(AVL_CODEC_8, ts0, 1000, (i + 1) * 1000u, TRACKER_RECORDS,
                                          fl->bytes[i], PKT_BYTES);
        fl->pkt[i] =
            (struct tracker_pkt){.bytes = fl->bytes[i], .len = len, .records = TRACKER_RECORDS};
        tracker_init(&fl->t[i], T.gw.port, IMEI_BASE + i, &fl->pkt[i], 1);
    }
}

/* ---- cases -------------------------------------------------------------------------------- */

/* Waits until the flood has no socket open; returns false after timeout_ms. */
static bool flood_all_closed(struct flood *f, int timeout_ms)
{
    uint64_t end = device_now_ms() + (uint64_t)timeout_ms;
    while (atomic_load(&f->open) > 0) {
        if (device_now_ms() > end)
            return false;
        device_sleep_ms(50);
    }
    return true;
}

static void test_unidentified_flood(void **state)
{
    (void)state;
    begin("unidentified_flood", (const char *const[]){"--shards", "1", "--conns-max", "64", NULL});
    T.flood = flood_start(T.gw.port);
    device_sleep_ms(2000); /* the table full of the flood's sockets, churning */
    static struct fleet fl;
    memset(&fl, 0, sizeof fl);
    fleet_init(&fl);
    uint64_t slowest_ms = fleet_run(&fl, 60000);
    print_message("unidentified_flood: the slowest of %d trackers got its 0x01 %" PRIu64
                  " ms after they started (the flood reopened %u sockets so far)\n",
                  TRACKERS, slowest_ms, atomic_load(&T.flood->reopened));
    CHECK(slowest_ms <= HANDSHAKE_BOUND_MS, "the slowest handshake answer took %" PRIu64 " ms",
          slowest_ms);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") ==
              TRACKERS * TRACKER_RECORDS,
          "every tracker's records stored exactly once");

    uint64_t stop_ms = device_now_ms();
    atomic_store(&T.flood->reopen, false);
    bool closed = flood_all_closed(T.flood, FLOOD_CLOSED_BOUND_MS + 5000);
    uint64_t last = atomic_load(&T.flood->last_close_ms);
    uint64_t closed_ms = last > stop_ms ? last - stop_ms : 0;
    print_message("unidentified_flood: every flood socket closed %" PRIu64
                  " ms after the flood stopped reopening; the longest-lived lasted %" PRIu64
                  " ms\n",
                  closed_ms, (uint64_t)atomic_load(&T.flood->life_max_ms));
    CHECK(closed && closed_ms <= FLOOD_CLOSED_BOUND_MS, "%u flood sockets still open after %d ms",
          atomic_load(&T.flood->open), FLOOD_CLOSED_BOUND_MS);
    const char *c = "avlgate_connections_closed_total";
    CHECK(counter(c, "reason", "evicted", "0") > 0, "no eviction counted");
    CHECK(counter(c, "reason", "identify_timeout", "0") > 0, "no identify timeout counted");
    flood_stop(T.flood);
}

/* Connects d as imei and expects the answer 0x00 and a close. */
static void expect_refused(struct device *d, uint64_t imei)
{
    device_init(d, T.gw.port, imei);
    CHECK(device_connect(d, WAIT_MS) == 0, "connect");
    int answer = device_handshake(d, WAIT_MS);
    CHECK(answer == 0, "IMEI %" PRIu64 ": answer %d, want 0x00", imei, answer);
    CHECK(device_wait_closed(d, WAIT_MS, NULL, NULL) == 0, "IMEI %" PRIu64 ": not closed", imei);
    device_close(d);
}

static void test_imei_above_key_max(void **state)
{
    (void)state;
    begin("imei_above_key_max", NULL);
    /* 2^56, the smallest a handoff key cannot hold, and the largest IMEI of 17 digits. */
    static const uint64_t imeis[2] = {UINT64_C(72057594037927936), UINT64_C(99999999999999999)};
    const char *name = "avlgate_handshakes_rejected_total";
    for (int k = 0; k < 2; k++) {
        double before[GWPROC_SHARDS] = {0};
        bool refused_on[GWPROC_SHARDS] = {0};
        for (int i = 0; i < GWPROC_SHARDS; i++)
            before[i] = counter(name, "reason", "protocol", i ? "1" : "0");
        /* SO_REUSEPORT spreads the connections: go on until each shard refused one. */
        for (int n = 0; n < 64 && !(refused_on[0] && refused_on[1]); n++) {
            struct device d;
            expect_refused(&d, imeis[k]);
            for (int i = 0; i < GWPROC_SHARDS; i++) {
                double now = counter(name, "reason", "protocol", i ? "1" : "0");
                refused_on[i] |= now > before[i];
                before[i] = now;
            }
        }
        CHECK(refused_on[0] && refused_on[1], "IMEI %" PRIu64 " not refused on both shards",
              imeis[k]);
    }
    CHECK(counter("avlgate_handshakes_total", NULL, NULL, NULL) == 0,
          "a handshake of a 17-digit IMEI was accepted");
}

/* Connects d from source address src (port picked by the kernel) as imei; expects 0x01. */
static void open_from(struct device *d, const char *src, uint64_t imei)
{
    device_init(d, T.gw.port, imei);
    int rc = device_connect_from(d, src, WAIT_MS);
    CHECK(rc == 0, "connect from %s: %s", src, strerror(-rc));
    int answer = device_handshake(d, WAIT_MS);
    CHECK(answer == 1, "IMEI %" PRIu64 " from %s: answer %d, want 0x01", imei, src, answer);
}

static double replaced(const char *reason)
{
    return counter("avlgate_connections_replaced_total", "reason", reason, NULL);
}

static void test_replaced_address(void **state)
{
    (void)state;
    begin("replaced_address", NULL);
    const uint64_t imei = IMEI_BASE + 500;
    const char *said = "msg=\"device connected again from another address";
    struct device a, b, c, d;
    open_from(&a, "127.0.0.2", imei);
    open_from(&b, "127.0.0.1", imei);
    gwproc_expect_closed_silently(&a, WAIT_MS, "the connection from 127.0.0.2, replaced");
    CHECK(replaced("other_address") == 1 && replaced("same_address") == 0,
          "one replacement from another address");
    gwproc_wait_log(&T.gw, "old_address=127.0.0.2 new_address=127.0.0.1", 1, WAIT_MS);
    open_from(&c, "127.0.0.1", imei);
    gwproc_expect_closed_silently(&b, WAIT_MS, "the first connection from 127.0.0.1, replaced");
    CHECK(replaced("same_address") == 1 && replaced("other_address") == 1,
          "then one from the same address");
    open_from(&d, "127.0.0.2", imei);
    gwproc_expect_closed_silently(&c, WAIT_MS, "the second connection from 127.0.0.1, replaced");
    CHECK(replaced("other_address") == 2 && replaced("same_address") == 1 &&
              replaced("unknown_address") == 0,
          "then another from another address");
    gwproc_wait_log(&T.gw, "old_address=127.0.0.1 new_address=127.0.0.2", 1, WAIT_MS);
    CHECK(gwproc_log_count(&T.gw, said) == 2, "one warning per replacement from elsewhere");
    device_close(&a);
    device_close(&b);
    device_close(&c);
    device_close(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_unidentified_flood, teardown),
        cmocka_unit_test_teardown(test_imei_above_key_max, teardown),
        cmocka_unit_test_teardown(test_replaced_address, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
