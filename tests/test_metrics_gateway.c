/* test_metrics_gateway.c — the real gateway's --metrics endpoint over TCP: GET /metrics and
 * GET /healthz from a running `avlgate run` (tests/support/gwproc.h) on the pg fixture's server.
 *
 * Every /metrics body goes through the strict parser of the text format
 * (tests/support/promtext.h). Cases: counters move by exactly what a device sent (packets,
 * records, ACK latency observations) and the connection gauge follows the device; the paths
 * (/healthz, 404, 405, 400, 431, HEAD, a query string), more clients at once than the server
 * has slots, and a second gateway on the same metrics port (exit 1 at start, naming the port);
 * /healthz 503 while the fixture's PostgreSQL is stopped, 200 again after it is back; probes beside
 * clients that hold the port (50 idle connections, 50 that never read their response, and 50
 * idle ones while the gateway still waits for its database): every /healthz answers within
 * 1 s, the slowest is printed, and the endpoint counts what it closed.
 *
 * One case stops the fixture's server and starts it again: ctest runs this test with
 * RUN_SERIAL, and the teardown restarts the server if the case failed while it was down. The
 * HTTP client is plain blocking sockets with a receive timeout; every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/metrics.h"
#include "gateway/shared.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/promtext.h"

enum {
    SHARDS = GWPROC_SHARDS,
    HTTP_TIMEOUT_MS = 5000,
    HTTP_BYTES_MAX = 4 << 20,
    PKT_BYTES = 2048,
    ERR_BYTES = 512,
};

#define IMEI_BASE UINT64_C(356307042449000)

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    char metrics_addr[32];
    pid_t second; /* a second gateway started by a case, or 0 */
} T;

/* The case's gateway with --metrics on a free loopback port. */
static void begin_with_metrics(const char *name)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_metrics_gateway", name, "test_metrics");
    T.metrics_port = device_free_port();
    snprintf(T.metrics_addr, sizeof T.metrics_addr, "127.0.0.1:%u", T.metrics_port);
    gwproc_start(&T.gw, (const char *const[]){"--metrics", T.metrics_addr, NULL});
}

static int teardown(void **state)
{
    (void)state;
    if (T.second > 0) {
        kill(T.second, SIGKILL);
        gwproc_waitpid(T.second, 10000);
        T.second = 0;
    }
    gwproc_end(&T.gw);
    return 0;
}

/* ---- HTTP over a plain socket ------------------------------------------------------------- */

struct http_resp {
    int status;
    char *raw;        /* the whole response, NUL-terminated (heap) */
    const char *body; /* into raw */
    size_t body_len;
    char content_type[128];
    long content_length; /* as the headers say */
};

static void http_free(struct http_resp *r)
{
    free(r->raw);
    memset(r, 0, sizeof *r);
}

/* A connected socket to the metrics port with send and receive timeouts, or -errno; with
 * rcvbuf > 0, that SO_RCVBUF (set before connecting, so the window stays small). */
static int http_connect_rcvbuf(uint16_t port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {.tv_sec = HTTP_TIMEOUT_MS / 1000, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int http_connect(uint16_t port)
{
    return http_connect_rcvbuf(port, 0);
}

static void http_send(int fd, const char *request)
{
    size_t len = strlen(request), off = 0;
    while (off < len) {
        ssize_t n = send(fd, request + off, len - off, MSG_NOSIGNAL);
        CHECK(n > 0, "http: send: %s", n < 0 ? strerror(errno) : "nothing sent");
        off += (size_t)n;
    }
}

/* Reads the response until the server closes (Connection: close) and checks its framing:
 * a status line, headers, and a body of exactly Content-Length bytes. */
static void http_read(int fd, struct http_resp *r, bool head_request)
{
    memset(r, 0, sizeof *r);
    size_t cap = 64 * 1024, len = 0;
    r->raw = malloc(cap);
    assert_non_null(r->raw);
    uint64_t deadline = device_now_ms() + HTTP_TIMEOUT_MS;
    for (;;) {
        if (len + 1 == cap) {
            CHECK(cap < HTTP_BYTES_MAX, "http: response above %d bytes", HTTP_BYTES_MAX);
            cap *= 2;
            r->raw = realloc(r->raw, cap);
            assert_non_null(r->raw);
        }
        ssize_t n = recv(fd, r->raw + len, cap - 1 - len, 0);
        if (n == 0)
            break;
        CHECK(n > 0, "http: recv: %s (after %zu bytes)", strerror(errno), len);
        len += (size_t)n;
        CHECK(device_now_ms() < deadline, "http: the response took over %d ms", HTTP_TIMEOUT_MS);
    }
    r->raw[len] = '\0';
    CHECK(memchr(r->raw, '\0', len) == NULL, "http: a NUL byte in the response");
    int consumed = 0;
    CHECK(sscanf(r->raw, "HTTP/1.1 %3d %*[^\r]\r\n%n", &r->status, &consumed) == 1 && consumed > 0,
          "http: bad status line: %.60s", r->raw);
    const char *end = strstr(r->raw, "\r\n\r\n");
    CHECK(end != NULL, "http: no end of headers");
    r->body = end + 4;
    r->body_len = len - (size_t)(r->body - r->raw);
    long content_length = -1;
    for (const char *h = r->raw + consumed; h < end;) {
        const char *eol = strstr(h, "\r\n");
        if (strncasecmp(h, "Content-Length: ", 16) == 0)
            content_length = strtol(h + 16, NULL, 10);
        if (strncasecmp(h, "Content-Type: ", 14) == 0)
            snprintf(r->content_type, sizeof r->content_type, "%.*s", (int)(eol - h - 14), h + 14);
        h = eol + 2;
    }
    CHECK(content_length >= 0, "http: no Content-Length");
    r->content_length = content_length;
    if (!head_request)
        CHECK((size_t)content_length == r->body_len, "http: Content-Length %ld, body of %zu bytes",
              content_length, r->body_len);
    else
        CHECK(r->body_len == 0, "http: HEAD answered with a body of %zu bytes", r->body_len);
}

/* One request on a connection of its own. */
static void http_do(const char *method, const char *path, struct http_resp *r)
{
    int fd = http_connect(T.metrics_port);
    CHECK(fd >= 0, "http: connect to %u: %s", T.metrics_port, strerror(-fd));
    char req[512];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: test\r\n\r\n", method,
             path, T.metrics_addr);
    http_send(fd, req);
    http_read(fd, r, strcmp(method, "HEAD") == 0);
    close(fd);
}

/* GET /metrics, parsed strictly into t. */
static void scrape(struct prom_text *t)
{
    struct http_resp r;
    http_do("GET", "/metrics", &r);
    CHECK(r.status == 200, "/metrics: status %d", r.status);
    CHECK(strncmp(r.content_type, "text/plain; version=0.0.4", 25) == 0,
          "/metrics: Content-Type %s", r.content_type);
    char err[ERR_BYTES];
    if (prom_parse(r.body, r.body_len, t, err, sizeof err) != 0) {
        printf("%.*s", (int)r.body_len, r.body);
        http_free(&r);
        CHECK(false, "/metrics is not valid text format: %s", err);
    }
    http_free(&r);
}

/* The sum over the shards of a family without other labels, or of its series with one
 * label=value (label NULL: all). */
static double sum_of(const struct prom_text *t, const char *name, const char *label,
                     const char *value)
{
    CHECK(prom_count(t, name, NULL) > 0, "/metrics has no %s", name);
    return label ? prom_sum(t, name, label, value, NULL) : prom_sum(t, name, NULL);
}

/* Waits until GET /healthz answers status with a body that holds every needle (NULL-ended). */
static void wait_health(int status, int timeout_ms, const char *const *needles)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        struct http_resp r;
        http_do("GET", "/healthz", &r);
        bool ok = r.status == status;
        for (unsigned i = 0; ok && needles && needles[i]; i++)
            ok = strstr(r.body, needles[i]) != NULL;
        if (ok) {
            http_free(&r);
            return;
        }
        if (device_now_ms() >= deadline) {
            printf("last /healthz: %d\n%s\n", r.status, r.body);
            http_free(&r);
            CHECK(false, "/healthz did not answer %d as wanted within %d ms", status, timeout_ms);
        }
        http_free(&r);
        device_sleep_ms(50); /* bounded polling of the endpoint */
    }
}

/* Waits until the sum of avlgate_connections_open satisfies want (at least / exactly). */
static void wait_conns_open(double want, bool exactly, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        struct prom_text t;
        scrape(&t);
        double open = sum_of(&t, "avlgate_connections_open", NULL, NULL);
        prom_free(&t);
        if (exactly ? open == want : open >= want)
            return;
        CHECK(device_now_ms() < deadline, "avlgate_connections_open is %g, want %s%g", open,
              exactly ? "" : "at least ", want);
        device_sleep_ms(20); /* bounded polling of the endpoint */
    }
}

/* ---- cases -------------------------------------------------------------------------------- */

/* A device sends N packets of known record counts and waits for each ACK: between a scrape
 * before and one after, the counters rose by exactly that. */
static void test_counters_follow_traffic(void **state)
{
    (void)state;
    begin_with_metrics("traffic");
    wait_health(200, 15000, (const char *const[]){"ok\n", NULL});

    struct prom_text t0;
    scrape(&t0);
    CHECK(prom_find(&t0, "avlgate_shards", NULL) &&
              prom_find(&t0, "avlgate_shards", NULL)->value == SHARDS,
          "avlgate_shards");
    CHECK(prom_count(&t0, "avlgate_build_info", NULL) == 1, "avlgate_build_info");
    CHECK(prom_count(&t0, "avlgate_packets_acked_total", NULL) == SHARDS,
          "one avlgate_packets_acked_total series per shard");
    CHECK(sum_of(&t0, "avlgate_listening", NULL, NULL) == SHARDS, "every shard listens");
    CHECK(sum_of(&t0, "avlgate_postgres_up", "link", "data") == SHARDS, "data links up");
    CHECK(prom_count(&t0, "avlgate_redis_up", NULL) == 0, "avlgate_redis_up without --redis");
    CHECK(prom_count(&t0, "avlgate_ack_latency_seconds_bucket", NULL) ==
              SHARDS * (PROM_HIST_BUCKETS + 1),
          "ACK latency buckets");
    prom_free(&t0);

    struct device d;
    gwproc_dev_open(&T.gw, &d, IMEI_BASE + 1);
    wait_conns_open(1, false, 2000);

    enum { N = 6 };
    static const unsigned records[N] = {1, 2, 3, 4, 5, 6};
    struct prom_text before, after;
    scrape(&before);
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    unsigned records_sum = 0;
    size_t bytes_sum = 0;
    uint64_t t_start = device_now_ms();
    for (unsigned p = 0; p < N; p++) {
        uint8_t pkt[PKT_BYTES];
        size_t len = gwproc_encode_series(AVL_CODEC_8E, ts, 1000, 1000 + p * 100, records[p], pkt,
                                          sizeof pkt);
        ts += records[p] * 1000;
        gwproc_send_acked(&d, pkt, len, records[p], 0, 0);
        records_sum += records[p];
        bytes_sum += len;
    }
    double elapsed_s = (double)(device_now_ms() - t_start + 2) / 1000.0;
    scrape(&after);

    struct {
        const char *name, *label, *value;
        double want; /* the exact rise, or -1 for "at least one" */
    } rises[] = {
        {"avlgate_packets_acked_total", NULL, NULL, N},
        {"avlgate_packets_received_total", NULL, NULL, N},
        {"avlgate_records_received_total", NULL, NULL, records_sum},
        {"avlgate_records_stored_total", NULL, NULL, records_sum},
        {"avlgate_rows_committed_total", NULL, NULL, records_sum},
        {"avlgate_records_duplicate_total", NULL, NULL, 0},
        {"avlgate_acks_stale_total", NULL, NULL, 0},
        {"avlgate_ack_latency_seconds_count", NULL, NULL, N},
        {"avlgate_ack_latency_seconds_bucket", "le", "+Inf", N},
        {"avlgate_batches_committed_total", NULL, NULL, -1},
        {"avlgate_copy_duration_seconds_count", NULL, NULL, -1},
    };
    for (size_t k = 0; k < sizeof rises / sizeof rises[0]; k++) {
        double rise = sum_of(&after, rises[k].name, rises[k].label, rises[k].value) -
                      sum_of(&before, rises[k].name, rises[k].label, rises[k].value);
        if (rises[k].want >= 0)
            CHECK(rise == rises[k].want, "%s rose by %g, want %g", rises[k].name, rise,
                  rises[k].want);
        else
            CHECK(rise >= 1, "%s rose by %g, want at least 1", rises[k].name, rise);
    }
    /* Every transaction is one observation of the COPY histogram; without splits, one batch. */
    double commits = sum_of(&after, "avlgate_batches_committed_total", NULL, NULL) -
                     sum_of(&before, "avlgate_batches_committed_total", NULL, NULL);
    double copies = sum_of(&after, "avlgate_copy_duration_seconds_count", NULL, NULL) -
                    sum_of(&before, "avlgate_copy_duration_seconds_count", NULL, NULL);
    CHECK(commits == copies, "%g batches committed, %g COPY durations observed", commits, copies);
    /* One packet at a time: the latencies add up to less than the time it all took. */
    double lat = sum_of(&after, "avlgate_ack_latency_seconds_sum", NULL, NULL) -
                 sum_of(&before, "avlgate_ack_latency_seconds_sum", NULL, NULL);
    CHECK(lat > 0 && lat <= elapsed_s, "ACK latencies add up to %g s over %g s", lat, elapsed_s);
    double recv = sum_of(&after, "avlgate_receive_bytes_total", NULL, NULL) -
                  sum_of(&before, "avlgate_receive_bytes_total", NULL, NULL);
    CHECK(recv >= (double)bytes_sum, "%g bytes received, %zu sent", recv, bytes_sum);
    CHECK(sum_of(&after, "avlgate_connections_open", NULL, NULL) >= 1,
          "avlgate_connections_open while the device is connected");
    CHECK(prom_count(&after, "avlgate_packets_invalid_total", NULL) == 0,
          "invalid packets counted");
    prom_free(&before);
    prom_free(&after);

    /* Stored rows agree with the counter. */
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == records_sum,
          "rows stored");

    device_close(&d);
    wait_conns_open(0, true, 5000);
}

/* The paths and methods, more clients at once than the server's slots, and a second gateway
 * that asks for the same metrics port. */
static void test_paths_and_port_in_use(void **state)
{
    (void)state;
    begin_with_metrics("paths");
    wait_health(200, 15000, NULL);
    struct http_resp r;
    http_do("GET", "/healthz", &r);
    CHECK(r.status == 200 && r.body_len == 3 && memcmp(r.body, "ok\n", 3) == 0,
          "/healthz: %d \"%s\"", r.status, r.body);
    http_free(&r);
    http_do("GET", "/nope", &r);
    CHECK(r.status == 404, "/nope: status %d", r.status);
    http_free(&r);
    http_do("GET", "/metricsx", &r);
    CHECK(r.status == 404, "/metricsx: status %d", r.status);
    http_free(&r);
    http_do("POST", "/metrics", &r);
    CHECK(r.status == 405, "POST /metrics: status %d", r.status);
    http_free(&r);
    http_do("HEAD", "/metrics", &r);
    CHECK(r.status == 200, "HEAD /metrics: status %d", r.status);
    CHECK(r.content_length > 1000, "HEAD /metrics: Content-Length %ld, want the GET's length",
          r.content_length);
    http_free(&r);
    http_do("GET", "/metrics?x=1", &r);
    CHECK(r.status == 200, "/metrics?x=1: status %d", r.status);
    http_free(&r);
    http_do("GET", "", &r); /* "GET  HTTP/1.1": no target */
    CHECK(r.status == 400, "a request line without a target: status %d", r.status);
    http_free(&r);
    /* A head that has not ended after METRICS_REQUEST_BYTES_MAX bytes (all of them read, so
     * the close is not a reset). */
    static char big[METRICS_REQUEST_BYTES_MAX + 1];
    memset(big, 'a', METRICS_REQUEST_BYTES_MAX);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
    int fd = http_connect(T.metrics_port);
    CHECK(fd >= 0, "connect: %s", strerror(-fd));
    http_send(fd, big);
    http_read(fd, &r, false);
    close(fd);
    CHECK(r.status == 431, "a head of %d bytes: status %d", METRICS_REQUEST_BYTES_MAX, r.status);
    http_free(&r);

    /* More clients than METRICS_CONNS_MAX at once, each request whole at once: a newcomer
     * takes a free slot (a served one) or waits in the backlog; none is refused. */
    enum { CLIENTS = METRICS_CONNS_MAX + 4 };
    int fds[CLIENTS];
    for (unsigned i = 0; i < CLIENTS; i++) {
        fds[i] = http_connect(T.metrics_port);
        CHECK(fds[i] >= 0, "client %u: connect: %s", i, strerror(-fds[i]));
        http_send(fds[i], "GET /metrics HTTP/1.1\r\n\r\n");
    }
    for (unsigned i = 0; i < CLIENTS; i++) {
        http_read(fds[i], &r, false);
        close(fds[i]);
        CHECK(r.status == 200, "client %u: status %d", i, r.status);
        struct prom_text t;
        char err[ERR_BYTES];
        CHECK(prom_parse(r.body, r.body_len, &t, err, sizeof err) == 0, "client %u: %s", i, err);
        prom_free(&t);
        http_free(&r);
    }

    /* A second gateway on the same metrics port: exit 1 at start, saying so. */
    char listen[32], log[PATH_MAX];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", device_free_port());
    snprintf(log, sizeof log, "%s/test_metrics_gateway_paths_second.log", gwproc_logdir());
    unlink(log);
    const char *argv[] = {
        gwproc_avlgate(), "run",       "--listen",     listen, "--shards", "2", "--pg",
        T.gw.db.conninfo, "--metrics", T.metrics_addr, NULL};
    T.second = gwproc_spawn(argv, log);
    int status = gwproc_waitpid(T.second, 15000);
    CHECK(status != -1, "the second gateway did not exit within 15 s");
    T.second = 0;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1,
          "the second gateway ended with status 0x%x, want exit 1", status);
    FILE *f = fopen(log, "r");
    CHECK(f != NULL, "no log %s", log);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char needle[64];
    snprintf(needle, sizeof needle, "--metrics %s", T.metrics_addr);
    CHECK(strstr(text, needle) && strstr(text, "Address already in use"),
          "the second gateway's message does not name the port in use: %s", text);
    /* The first one still serves. */
    http_do("GET", "/healthz", &r);
    CHECK(r.status == 200, "/healthz after the second gateway: %d", r.status);
    http_free(&r);
}

/* /healthz is 503 with the reasons while the database is stopped, 200 once it is back; the
 * exposition is served all along and says the same. */
static void test_healthz_database_down(void **state)
{
    (void)state;
    begin_with_metrics("healthz_db");
    wait_health(200, 15000, (const char *const[]){"ok\n", NULL});
    struct prom_text t;
    scrape(&t);
    double disconnects0 = sum_of(&t, "avlgate_postgres_disconnects_total", "link", "data");
    double connects0 = sum_of(&t, "avlgate_postgres_connects_total", "link", "data");
    prom_free(&t);

    gwproc_pgtmp(&T.gw, "stop");
    wait_health(503, 15000,
                (const char *const[]){"shard 0: database link down\n",
                                      "shard 1: database link down\n", NULL});
    struct http_resp r;
    http_do("GET", "/healthz", &r);
    CHECK(r.status == 503 && !strstr(r.body, "ok") && !strstr(r.body, "not listening"),
          "/healthz while the database is down: %d \"%s\"", r.status, r.body);
    http_free(&r);
    scrape(&t);
    CHECK(sum_of(&t, "avlgate_postgres_up", "link", "data") == 0, "data links up while down");
    CHECK(sum_of(&t, "avlgate_listening", NULL, NULL) == SHARDS, "still listening");
    CHECK(sum_of(&t, "avlgate_postgres_disconnects_total", "link", "data") >= disconnects0 + SHARDS,
          "each shard's lost data link counted");
    prom_free(&t);

    gwproc_pgtmp(&T.gw, "start");
    PQreset(T.gw.db.conn);
    CHECK(PQstatus(T.gw.db.conn) == CONNECTION_OK, "reconnect: %s", PQerrorMessage(T.gw.db.conn));
    wait_health(200, 30000, (const char *const[]){"ok\n", NULL});
    scrape(&t);
    CHECK(sum_of(&t, "avlgate_postgres_up", "link", "data") == SHARDS, "data links back");
    CHECK(sum_of(&t, "avlgate_postgres_connects_total", "link", "data") >= connects0 + SHARDS,
          "each shard's reconnect counted");
    prom_free(&t);
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* ---- clients that hold the metrics port ---------------------------------------------------- */

enum {
    HOLDERS = 50,          /* the figure: 50 connections held open */
    PROBES = 25,           /* /healthz probes beside them */
    PROBE_GAP_MS = 100,    /* 2.5 s of probes: past the server's 2 s request timeout */
    PROBE_BOUND_MS = 1000, /* the goal; a probe takes a few ms */
    SLOW_RCVBUF = 1024,    /* a slow reader's receive buffer (the kernel's minimum is ~2 KiB) */
};

/* HOLDERS connections to the metrics port that send req (NULL: nothing) and never read; each
 * one the server closes is opened again at once, as a client that insists would. */
struct holders {
    int fd[HOLDERS];
    const char *req;
    int rcvbuf;
    unsigned reopened;
};

static void holder_open(struct holders *h, unsigned i)
{
    h->fd[i] = http_connect_rcvbuf(T.metrics_port, h->rcvbuf);
    CHECK(h->fd[i] >= 0, "holder %u: connect: %s", i, strerror(-h->fd[i]));
    if (h->req)
        http_send(h->fd[i], h->req);
}

static void holders_open(struct holders *h, const char *req, int rcvbuf)
{
    memset(h, 0, sizeof *h);
    h->req = req;
    h->rcvbuf = rcvbuf;
    for (unsigned i = 0; i < HOLDERS; i++)
        holder_open(h, i);
}

/* Reopens the holders the server closed (reset or end of stream; a response that arrived but
 * was not read does not count). */
static void holders_refresh(struct holders *h)
{
    for (unsigned i = 0; i < HOLDERS; i++) {
        struct pollfd p = {.fd = h->fd[i], .events = POLLRDHUP};
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP | POLLRDHUP))) {
            close(h->fd[i]);
            holder_open(h, i);
            h->reopened++;
        }
    }
}

/* Waits until the server has closed each of fds[0 .. n) (a reset or an end of stream). */
static void wait_server_closed(const int *fds, unsigned n, int timeout_ms, const char *what)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    for (unsigned i = 0; i < n; i++) {
        for (;;) {
            struct pollfd p = {.fd = fds[i], .events = POLLRDHUP};
            uint64_t now = device_now_ms();
            CHECK(now < deadline, "%s %u: not closed by the server within %d ms", what, i,
                  timeout_ms);
            if (poll(&p, 1, (int)(deadline - now)) == 1 &&
                (p.revents & (POLLERR | POLLHUP | POLLRDHUP)))
                break;
            device_sleep_ms(10); /* POLLIN alone: part of a response that is not read */
        }
    }
}

static void holders_close(struct holders *h)
{
    for (unsigned i = 0; i < HOLDERS; i++)
        if (h->fd[i] > 0)
            close(h->fd[i]);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* PROBES GET /healthz, PROBE_GAP_MS apart, the holders refreshed before each; every one must
 * answer status within PROBE_BOUND_MS. Prints and returns the slowest, in ms. */
static double probe_beside(struct holders *h, int status, const char *what)
{
    double ms[PROBES];
    for (unsigned k = 0; k < PROBES; k++) {
        holders_refresh(h);
        uint64_t t0 = now_us();
        struct http_resp r;
        http_do("GET", "/healthz", &r);
        ms[k] = (double)(now_us() - t0) / 1000.0;
        CHECK(r.status == status, "probe %u beside %s: status %d", k, what, r.status);
        http_free(&r);
        CHECK(ms[k] < PROBE_BOUND_MS, "probe %u beside %s took %.1f ms", k, what, ms[k]);
        device_sleep_ms(PROBE_GAP_MS);
    }
    qsort(ms, PROBES, sizeof ms[0], cmp_double);
    printf("test_metrics_gateway: /healthz beside %u %s: slowest %.1f ms, median %.1f ms over %u "
           "probes (%u holders reopened after the server closed them)\n",
           HOLDERS, what, ms[PROBES - 1], ms[PROBES / 2], PROBES, h->reopened);
    return ms[PROBES - 1];
}

/* avlgate_metrics_connections_closed_total{reason} from a scrape. */
static double http_closed(const struct prom_text *t, const char *reason)
{
    CHECK(prom_count(t, "avlgate_metrics_connections_closed_total", NULL) == 7,
          "avlgate_metrics_connections_closed_total: one series per reason");
    return prom_sum(t, "avlgate_metrics_connections_closed_total", "reason", reason, NULL);
}

/* 50 connections that send nothing, reopened whenever the server closes them: the probes get
 * in at once (a newcomer takes the oldest idle connection's slot), and what was closed is
 * counted by reason. Then idle connections alone: closed at the request timeout. */
static void test_probe_beside_idle_clients(void **state)
{
    (void)state;
    begin_with_metrics("idle_clients");
    wait_health(200, 15000, (const char *const[]){"ok\n", NULL});
    struct holders h;
    holders_open(&h, NULL, 0);
    probe_beside(&h, 200, "idle clients");
    struct prom_text t;
    scrape(&t);
    /* HOLDERS + PROBES connections over METRICS_CONNS_MAX slots: most holders were evicted
     * or timed out; every probe was served. */
    double evicted = http_closed(&t, "evicted_request"),
           timeout = http_closed(&t, "request_timeout");
    CHECK(evicted >= HOLDERS + 1 - METRICS_CONNS_MAX, "evicted_request %g", evicted);
    printf("test_metrics_gateway: closed %g evicted_request, %g request_timeout\n", evicted,
           timeout);
    CHECK(http_closed(&t, "served") >= PROBES + 1, "served %g", http_closed(&t, "served"));
    CHECK(http_closed(&t, "evicted_response") == 0 && http_closed(&t, "out_of_memory") == 0,
          "evicted_response or out_of_memory");
    prom_free(&t);
    holders_close(&h);

    /* Idle connections and no newcomer: closed at the request timeout (2 s), counted. */
    scrape(&t);
    double timeouts0 = http_closed(&t, "request_timeout");
    prom_free(&t);
    int fds[3];
    for (unsigned i = 0; i < 3; i++) {
        fds[i] = http_connect(T.metrics_port);
        CHECK(fds[i] >= 0, "idle %u: connect: %s", i, strerror(-fds[i]));
    }
    wait_server_closed(fds, 3, 5000, "idle connection");
    for (unsigned i = 0; i < 3; i++)
        close(fds[i]);
    scrape(&t);
    CHECK(http_closed(&t, "request_timeout") >= timeouts0 + 3,
          "request_timeout %g, want at least %g", http_closed(&t, "request_timeout"),
          timeouts0 + 3);
    prom_free(&t);
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* 50 clients that ask for /metrics and never read, with a receive buffer too small for it:
 * the server's send stops, and their responses wait in the server, not in the probe's way.
 * Then slow readers alone: closed at the response timeout. */
static void test_probe_beside_slow_readers(void **state)
{
    (void)state;
    begin_with_metrics("slow_readers");
    wait_health(200, 15000, (const char *const[]){"ok\n", NULL});
    struct http_resp r;
    http_do("HEAD", "/metrics", &r);
    long body = r.content_length;
    http_free(&r);
    printf("test_metrics_gateway: /metrics is %ld bytes\n", body);
    struct holders h;
    holders_open(&h, "GET /metrics HTTP/1.1\r\n\r\n", SLOW_RCVBUF);
    probe_beside(&h, 200, "slow readers");
    struct prom_text t;
    scrape(&t);
    double evicted = http_closed(&t, "evicted_response");
    CHECK(evicted >= HOLDERS + 1 - METRICS_CONNS_MAX,
          "evicted_response %g (a /metrics of %ld bytes)", evicted, body);
    CHECK(http_closed(&t, "served") >= PROBES + 1, "served %g", http_closed(&t, "served"));
    double timeouts0 = http_closed(&t, "response_timeout");
    prom_free(&t);
    holders_close(&h);

    /* Slow readers and no newcomer: closed at the response timeout (10 s), counted. */
    int fds[2];
    for (unsigned i = 0; i < 2; i++) {
        fds[i] = http_connect_rcvbuf(T.metrics_port, SLOW_RCVBUF);
        CHECK(fds[i] >= 0, "slow reader %u: connect: %s", i, strerror(-fds[i]));
        http_send(fds[i], "GET /metrics HTTP/1.1\r\n\r\n");
    }
    wait_server_closed(fds, 2, 15000, "slow reader");
    for (unsigned i = 0; i < 2; i++)
        close(fds[i]);
    scrape(&t);
    CHECK(http_closed(&t, "response_timeout") >= timeouts0 + 2,
          "response_timeout %g, want at least %g", http_closed(&t, "response_timeout"),
          timeouts0 + 2);
    prom_free(&t);
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* While the gateway waits for its database at start (a port nobody listens on), /healthz is
 * 503 `starting`, and 50 idle connections do not hold it up. */
static void test_probe_beside_idle_clients_starting(void **state)
{
    (void)state;
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_metrics_gateway", "idle_starting", "test_metrics");
    T.metrics_port = device_free_port();
    snprintf(T.metrics_addr, sizeof T.metrics_addr, "127.0.0.1:%u", T.metrics_port);
    char listen[32], pg[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", T.gw.port);
    snprintf(pg, sizeof pg, "host=127.0.0.1 port=%u dbname=nobody connect_timeout=2",
             device_free_port());
    const char *argv[] = {gwproc_avlgate(), "run", "--listen",  listen,         "--shards", "2",
                          "--pg",           pg,    "--metrics", T.metrics_addr, NULL};
    T.gw.pid = gwproc_spawn(argv, T.gw.log);
    uint64_t deadline = device_now_ms() + GWPROC_START_WAIT_MS;
    while (!device_port_open(T.metrics_port)) {
        CHECK(device_now_ms() < deadline, "the metrics port did not open");
        device_sleep_ms(20); /* bounded: the gateway's start-up */
    }
    wait_health(503, 5000, (const char *const[]){"starting: database unreachable\n", NULL});
    struct holders h;
    holders_open(&h, NULL, 0);
    probe_beside(&h, 503, "idle clients at start-up");
    holders_close(&h);
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_counters_follow_traffic, teardown),
        cmocka_unit_test_teardown(test_paths_and_port_in_use, teardown),
        cmocka_unit_test_teardown(test_healthz_database_down, teardown),
        cmocka_unit_test_teardown(test_probe_beside_idle_clients, teardown),
        cmocka_unit_test_teardown(test_probe_beside_slow_readers, teardown),
        cmocka_unit_test_teardown(test_probe_beside_idle_clients_starting, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
