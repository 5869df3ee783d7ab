/* test_stalled.c — memory pinned by partial frames, against the real gateway (two shards) and
 * the PostgreSQL fixture.
 *
 * Cases:
 *   stalled_frames_beside_a_fleet  4000 identified devices (the IMEI handshake answered 0x01)
 *       each send 40,000 bytes of a 60,000-byte AVL frame and stall, while a fleet
 *       (avlgate-loadgen --verify: 200 devices, 1000 records/s) keeps sending. Each shard keeps
 *       partial frames within --reasm-bytes-max (32 MiB by default) by closing the connections
 *       with the oldest partial frames (avlgate_connections_closed_total{reason=
 *       "reassembly_budget"}), so the gateway's RSS (/proc/PID/status VmRSS, its peak over the
 *       stall) grows by at most 96 MiB; once the stalled sockets close, the reassembly memory
 *       goes back to the system and the RSS comes down; every record the fleet sent is stored
 *       exactly once. The figures are printed as "# ..." lines.
 *   budget_checked_at_start  --reasm-bytes-max below --frame-bytes-max + 2 x --buf-bytes stops
 *       the start with a message that says so; --print-config shows the default.
 *
 * Needs RLIMIT_NOFILE above 4000 + the fleet (raised to the hard limit here; the gateway
 * inherits it). Loopback only; every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/promtext.h"
#include "tests/support/testutil.h"

#ifndef LOADGEN_BIN
#error "LOADGEN_BIN (the avlgate-loadgen binary) must be defined by the build"
#endif

enum {
    STALLED = 4000,
    FRAME_BYTES = 60000, /* the frame each stalled device starts */
    SENT_BYTES = 40000,  /* and sends of it */
    BATCH = 250,         /* handshakes sent before their answers are read */
    FLEET = 200,
    FLEET_SECONDS = 30, /* the stall takes ~15 s of it */
    MIB = 1024 * 1024,
    BUDGET_BYTES = 32 * MIB,     /* --reasm-bytes-max's default, per shard */
    TOP_CLASS_BYTES = 64 * 1024, /* what a 40,000-byte partial frame costs */
    RSS_GROWTH_MAX = 96 * MIB,   /* the goal */
    RSS_LEFT_MAX = 16 * MIB,     /* above where it was, once the stalled sockets closed */
    HTTP_BYTES_MAX = 4 * 1024 * 1024,
};

#define IMEI_BASE UINT64_C(356307042441013)

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    pid_t loadgen;
    struct device *stalled;
} T;

static int teardown(void **state)
{
    (void)state;
    if (T.loadgen > 0) {
        kill(T.loadgen, SIGKILL);
        gwproc_waitpid(T.loadgen, 10000);
        T.loadgen = 0;
    }
    for (unsigned i = 0; T.stalled && i < STALLED; i++)
        device_close(&T.stalled[i]);
    free(T.stalled);
    T.stalled = NULL;
    gwproc_end(&T.gw);
    return 0;
}

/* ---- the gateway's memory and metrics ------------------------------------------------------ */

/* VmRSS of pid, in bytes. */
static long long rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s: %s", path, strerror(errno));
    long long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lld kB", &kib) == 1)
            break;
    fclose(f);
    CHECK(kib > 0, "no VmRSS in %s", path);
    return kib * 1024;
}

/* The sum of `name` over the shards, from GET /metrics (with label = value when label is not
 * NULL). */
static double metric_sum(const char *name, const char *label, const char *value)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "socket: %s", strerror(errno));
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(T.metrics_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "metrics: %s", strerror(errno));
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    CHECK(send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1),
          "metrics: send");
    static char buf[HTTP_BYTES_MAX];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = recv(fd, buf + len, sizeof buf - 1 - len, 0)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    CHECK(body != NULL && strncmp(buf, "HTTP/1.1 200", 12) == 0, "metrics: %.60s", buf);
    body += 4;
    struct prom_text t;
    char err[256];
    CHECK(prom_parse(body, len - (size_t)(body - buf), &t, err, sizeof err) == 0, "metrics: %s",
          err);
    CHECK(prom_family(&t, name) != NULL, "metrics: no family %s", name);
    double v = label ? prom_sum(&t, name, label, value, NULL) : prom_sum(&t, name, NULL);
    prom_free(&t);
    return v;
}

/* ---- the fleet: avlgate-loadgen --verify ---------------------------------------------------- */

static pid_t fleet_start(const char *out)
{
    char connect[32], devices[16], duration[16];
    snprintf(connect, sizeof connect, "127.0.0.1:%u", T.gw.port);
    snprintf(devices, sizeof devices, "%d", FLEET);
    snprintf(duration, sizeof duration, "%d", FLEET_SECONDS);
    const char *argv[] = {LOADGEN_BIN, "--connect",      connect,  "--devices",
                          devices,     "--rate",         "1000",   "--records",
                          "10",        "--duration-s",   duration, "--verify",
                          "--pg",      T.gw.db.conninfo, NULL};
    unlink(out);
    return gwproc_spawn(argv, out);
}

/* The fleet ended well: exit 0, every acknowledged record stored once, nothing else wrong. */
static void fleet_check(const char *out)
{
    int status = gwproc_waitpid(T.loadgen, (FLEET_SECONDS + 60) * 1000);
    CHECK(status != -1, "avlgate-loadgen did not finish");
    T.loadgen = 0;
    size_t len = 0;
    char *text = tu_read_file(out, &len);
    CHECK(text != NULL, "no loadgen output %s", out);
    printf("%s", text ? text : "");
    const char *verify = strstr(text, "\nverify: ");
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && verify &&
              strstr(verify, " missing=0 duplicated=0 ") && strstr(verify, " OK\n");
    const char *acked = strstr(text, " records_acked=");
    long long records = acked ? atoll(acked + 15) : 0;
    free(text);
    CHECK(ok, "the fleet was not served exactly once (status 0x%x)", status);
    CHECK(records > 0, "the fleet had nothing acknowledged");
}

/* ---- the stalled devices -------------------------------------------------------------------- */

/* The first SENT_BYTES of a FRAME_BYTES-byte Codec 8 frame: preamble, length, codec, count,
 * then zeros (the scanner waits for the rest; the CRC would only be checked at the end). */
static void stalled_frame(uint8_t *p)
{
    memset(p, 0, SENT_BYTES);
    uint32_t data = FRAME_BYTES - 12;
    p[4] = (uint8_t)(data >> 24);
    p[5] = (uint8_t)(data >> 16);
    p[6] = (uint8_t)(data >> 8);
    p[7] = (uint8_t)data;
    p[8] = 0x08;
    p[9] = 1;
}

/* Connects the stalled devices and completes their handshakes, BATCH at a time. */
static void stalled_open(void)
{
    for (unsigned at = 0; at < STALLED; at += BATCH) {
        for (unsigned i = at; i < at + BATCH; i++) {
            struct device *d = &T.stalled[i];
            device_init(d, T.gw.port, IMEI_BASE + i);
            CHECK(device_connect(d, GWPROC_WAIT_MS) == 0, "stalled device %u: connect", i);
            uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
            int n = avl_encode_imei(hs, sizeof hs, d->imei);
            CHECK(n > 0 && device_send(d, hs, (size_t)n, 0, 0) == 0, "stalled %u: handshake", i);
        }
        for (unsigned i = at; i < at + BATCH; i++) {
            uint8_t answer = 0;
            int rc = device_read(&T.stalled[i], &answer, 1, 30000);
            CHECK(rc == 0 && answer == 1, "stalled device %u: handshake answer %d (%d)", i, answer,
                  rc);
        }
    }
}

/* Each stalled device sends its partial frame; the RSS's peak is sampled along. Returns how
 * many sends failed (the gateway already closed the connection: the budget was spent). */
static unsigned stalled_send(const uint8_t *frame, long long *rss_peak)
{
    unsigned failed = 0;
    for (unsigned i = 0; i < STALLED; i++) {
        if (device_send(&T.stalled[i], frame, SENT_BYTES, 0, 0) != 0)
            failed++;
        if (i % 100 == 99) {
            long long rss = rss_bytes(T.gw.pid);
            if (rss > *rss_peak)
                *rss_peak = rss;
        }
    }
    return failed;
}

/* Samples the RSS every 100 ms for ms; returns the highest. */
static long long rss_watch(int ms)
{
    long long peak = 0;
    for (int t = 0; t < ms; t += 100) {
        long long rss = rss_bytes(T.gw.pid);
        if (rss > peak)
            peak = rss;
        device_sleep_ms(100);
    }
    return peak;
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_stalled_frames_beside_a_fleet(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    CHECK(rl.rlim_max >= STALLED + FLEET + 1000 && setrlimit(RLIMIT_NOFILE, &rl) == 0,
          "RLIMIT_NOFILE %llu: this test needs %d", (unsigned long long)rl.rlim_max,
          STALLED + FLEET + 1000);
    T.stalled = calloc(STALLED, sizeof *T.stalled);
    assert_non_null(T.stalled);
    gwproc_begin(&T.gw, "test_stalled", "stalled_frames", "test_stalled");
    T.metrics_port = device_free_port();
    char metrics[32];
    snprintf(metrics, sizeof metrics, "127.0.0.1:%u", T.metrics_port);
    const char *extra[] = {
        "--conns-max", "6000", "--frame-timeout-s", "120", "--idle-timeout-s", "300", "--metrics",
        metrics,       NULL};
    gwproc_start(&T.gw, extra);

    char fleet_out[PATH_MAX];
    snprintf(fleet_out, sizeof fleet_out, "%s/test_stalled_fleet.out", gwproc_logdir());
    T.loadgen = fleet_start(fleet_out);
    uint64_t t0 = device_now_ms();
    device_sleep_ms(3000); /* the fleet connected and sending */
    long long rss0 = rss_bytes(T.gw.pid);

    stalled_open();
    long long rss_open = rss_bytes(T.gw.pid);
    static uint8_t frame[SENT_BYTES];
    stalled_frame(frame);
    long long peak = rss_open;
    unsigned failed = stalled_send(frame, &peak);
    long long held = rss_watch(3000);
    if (held > peak)
        peak = held;
    printf("# stalled: %d devices x %d of %d bytes in %.1f s; RSS %.1f MiB before, %.1f after "
           "the handshakes, peak %.1f (+%.1f MiB)\n",
           STALLED, SENT_BYTES, FRAME_BYTES, (double)(device_now_ms() - t0) / 1000.0,
           (double)rss0 / MIB, (double)rss_open / MIB, (double)peak / MIB,
           (double)(peak - rss0) / MIB);
    double budget_closed =
        metric_sum("avlgate_connections_closed_total", "reason", "reassembly_budget");
    double reasm_bytes = metric_sum("avlgate_reassembly_bytes", NULL, NULL);

    for (unsigned i = 0; i < STALLED; i++)
        device_close(&T.stalled[i]);
    device_sleep_ms(4000); /* two sweeps: the freed buffers' pages go back */
    long long rss_after = rss_bytes(T.gw.pid);
    double released = metric_sum("avlgate_reassembly_released_bytes_total", NULL, NULL);
    double reasm_after = metric_sum("avlgate_reassembly_bytes", NULL, NULL);
    printf("# after they closed: RSS %.1f MiB (+%.1f MiB); closed for the budget: %.0f (sends "
           "refused: %u); reassembly held %.1f MiB, then %.0f bytes; %.1f MiB given back\n",
           (double)rss_after / MIB, (double)(rss_after - rss0) / MIB, budget_closed, failed,
           reasm_bytes / MIB, reasm_after, released / MIB);

    CHECK(peak - rss0 <= RSS_GROWTH_MAX, "RSS grew by %.1f MiB (at most %d)",
          (double)(peak - rss0) / MIB, RSS_GROWTH_MAX / MIB);
    CHECK(reasm_bytes <= 2.0 * BUDGET_BYTES, "reassembly holds %.0f bytes", reasm_bytes);
    CHECK(budget_closed >= STALLED - 2.0 * BUDGET_BYTES / TOP_CLASS_BYTES,
          "only %.0f connections closed for the budget", budget_closed);
    CHECK(reasm_after == 0, "reassembly still holds %.0f bytes", reasm_after);
    CHECK(released > 0, "no reassembly memory was given back");
    /* The stall's memory went back. (Under ASan, what the 4000 handshakes freed stays in its
     * quarantine, so only the stall's part is compared there.) */
    CHECK(rss_after - rss_open <= RSS_LEFT_MAX, "RSS stays %.1f MiB above the stall's start",
          (double)(rss_after - rss_open) / MIB);
#ifndef __SANITIZE_ADDRESS__
    CHECK(rss_after - rss0 <= RSS_LEFT_MAX, "RSS stays %.1f MiB above where it was",
          (double)(rss_after - rss0) / MIB);
#endif
    fleet_check(fleet_out);
    gwproc_term(&T.gw);
}

static void test_budget_checked_at_start(void **state)
{
    (void)state;
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s/test_stalled_budget.out", gwproc_logdir());
    unlink(out);
    const char *bad[] = {gwproc_avlgate(),    "run",   "--pg", "host=127.0.0.1",
                         "--reasm-bytes-max", "70000", NULL};
    int status = gwproc_waitpid(gwproc_spawn(bad, out), 10000);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
    const char *print[] = {gwproc_avlgate(), "run", "--pg", "host=127.0.0.1",
                           "--print-config", NULL};
    status = gwproc_waitpid(gwproc_spawn(print, out), 10000);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    size_t len = 0;
    char *text = tu_read_file(out, &len);
    assert_non_null(text);
    if (!strstr(text, "avlgate run: --reasm-bytes-max 70000 is below --frame-bytes-max + 2 x "
                      "--buf-bytes = 73728, what one connection may keep\n") ||
        !strstr(text, "\nreasm-bytes-max = 33554432  # default\n"))
        fail_msg("unexpected output:\n%s", text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_checked_at_start),
        cmocka_unit_test_teardown(test_stalled_frames_beside_a_fleet, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
