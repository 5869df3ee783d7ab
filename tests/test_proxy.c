/* test_proxy.c — the real gateway with --proxy-protocol (gateway/proxy.h) on loopback, with the
 * real PostgreSQL fixture: `avlgate run` as a child process (tests/support/gwproc.h, two shards)
 * with --metrics, devices over TCP that send a PROXY header first, as HAProxy does.
 *
 * Cases:
 *   real_addresses   --proxy-from 127.0.0.1/32. 16 devices each send a v2 header (client
 *                    198.51.100.i), their IMEI and a packet: 0x01, the ACK, the rows stored
 *                    once. Each connects again with a v1 header from 203.0.113.i: the old
 *                    connection is closed as a replacement from another address, and the log
 *                    names both client addresses (not 127.0.0.1); once more from 203.0.113.i:
 *                    the same address. With two shards most devices are handed to their owner
 *                    shard: the handoffs are counted, and no address was lost on the way.
 *   refused          a connection from 127.0.0.2 (outside --proxy-from) is closed without an
 *                    answer; so are headers cut short (then silent: the handshake timeout),
 *                    with a wrong signature, a bare IMEI, v1 garbage, v2 of version 3, v2 with a
 *                    UNIX family, v2 longer than a balancer sends. Each is counted under its
 *                    reason, nothing is stored, and a good device is served after them.
 * Every wait is bounded; the gateway's output goes to test_proxy_<case>.log in the build
 * directory, and a failing check prints its tail. */
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/promtext.h"
#include "tests/support/scrape.h"

enum { WAIT_MS = GWPROC_WAIT_MS, DEVICES = 16, HDR_MAX = 600 };

#define IMEI_BASE UINT64_C(356307042461000)

static const uint8_t V2_SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    char metrics_addr[32];
} T;

static void begin(const char *name, const char *const *extra)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_proxy", name, "test_proxy");
    T.metrics_port = device_free_port();
    snprintf(T.metrics_addr, sizeof T.metrics_addr, "127.0.0.1:%u", T.metrics_port);
    const char *args[16] = {"--metrics", T.metrics_addr, "--proxy-protocol", "--proxy-from",
                            "127.0.0.1/32"};
    unsigned n = 5;
    for (unsigned i = 0; extra && extra[i]; i++) {
        assert_true(n < 15);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    gwproc_start(&T.gw, args);
}

static int teardown(void **state)
{
    (void)state;
    gwproc_end(&T.gw);
    return 0;
}

/* Counter name summed over every shard's series with label=value (label NULL: all). */
static double counter(const char *name, const char *label, const char *value)
{
    struct prom_text t;
    char err[512];
    CHECK(metrics_scrape(T.metrics_port, &t, err, sizeof err) == 0, "%s", err);
    CHECK(prom_count(&t, name, NULL) > 0, "/metrics has no %s", name);
    double v = label ? prom_sum(&t, name, label, value, NULL) : prom_sum(&t, name, NULL);
    prom_free(&t);
    return v;
}

/* ---- headers -------------------------------------------------------------------------------- */

/* A v2 PROXY header for a TCP4 client src:sport to 127.0.0.1:dport; returns its length. */
static size_t v2_tcp4(uint8_t *out, const char *src, uint16_t sport, uint16_t dport)
{
    memcpy(out, V2_SIG, 12);
    out[12] = 0x21; /* version 2, PROXY */
    out[13] = 0x11; /* AF_INET, STREAM */
    out[14] = 0;
    out[15] = 12;
    CHECK(inet_pton(AF_INET, src, out + 16) == 1, "bad address %s", src);
    uint32_t dst = htonl(INADDR_LOOPBACK);
    memcpy(out + 20, &dst, 4);
    uint16_t sp = htons(sport), dp = htons(dport);
    memcpy(out + 24, &sp, 2);
    memcpy(out + 26, &dp, 2);
    return 28;
}

static size_t v1_tcp4(uint8_t *out, const char *src, uint16_t sport, uint16_t dport)
{
    int n = snprintf((char *)out, HDR_MAX, "PROXY TCP4 %s 127.0.0.1 %u %u\r\n", src, sport, dport);
    return (size_t)n;
}

/* A connection to the gateway from src (a loopback address), its header sent. */
static void connect_with(struct device *d, const char *src, uint64_t imei, const uint8_t *hdr,
                         size_t len)
{
    device_init(d, T.gw.port, imei);
    int rc = device_connect_from(d, src, WAIT_MS);
    CHECK(rc == 0, "connect from %s: %s", src, strerror(-rc));
    if (len)
        CHECK(device_send(d, hdr, len, 0, 0) == 0, "send the header");
}

/* Header, then the IMEI: answered 0x01. */
static void open_proxied(struct device *d, uint64_t imei, const uint8_t *hdr, size_t len)
{
    connect_with(d, "127.0.0.1", imei, hdr, len);
    int answer = device_handshake(d, WAIT_MS);
    CHECK(answer == 1, "IMEI %" PRIu64 " behind a header: answer %d, want 0x01", imei, answer);
}

/* ---- real_addresses ------------------------------------------------------------------------ */

static void test_real_addresses(void **state)
{
    (void)state;
    begin("real_addresses", NULL);
    static struct device first[DEVICES], second[DEVICES], third[DEVICES];
    uint8_t hdr[HDR_MAX], pkt[1024];
    char ip[32];
    for (unsigned i = 0; i < DEVICES; i++) {
        snprintf(ip, sizeof ip, "198.51.100.%u", i + 1);
        open_proxied(&first[i], IMEI_BASE + i, hdr, v2_tcp4(hdr, ip, 40000 + i, T.gw.port));
        size_t n = gwproc_encode_series(AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw), 1000, i * 10, 2,
                                        pkt, sizeof pkt);
        gwproc_send_acked(&first[i], pkt, n, 2, 0, 0);
    }
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 2 * DEVICES,
          "every device's two records stored once");
    for (unsigned i = 0; i < DEVICES; i++) {
        snprintf(ip, sizeof ip, "203.0.113.%u", i + 1);
        open_proxied(&second[i], IMEI_BASE + i, hdr, v1_tcp4(hdr, ip, 50000 + i, T.gw.port));
        gwproc_expect_closed_silently(&first[i], WAIT_MS, "the first connection, replaced");
        char said[128];
        snprintf(said, sizeof said, "old_address=198.51.100.%u new_address=203.0.113.%u", i + 1,
                 i + 1);
        gwproc_wait_log(&T.gw, said, 1, WAIT_MS);
    }
    const char *r = "avlgate_connections_replaced_total";
    CHECK(counter(r, "reason", "other_address") == DEVICES &&
              counter(r, "reason", "same_address") == 0,
          "each device replaced once from another client address");
    for (unsigned i = 0; i < DEVICES; i++) {
        snprintf(ip, sizeof ip, "203.0.113.%u", i + 1);
        open_proxied(&third[i], IMEI_BASE + i, hdr, v2_tcp4(hdr, ip, 50100 + i, T.gw.port));
        gwproc_expect_closed_silently(&second[i], WAIT_MS, "the second connection, replaced");
    }
    CHECK(counter(r, "reason", "same_address") == DEVICES &&
              counter(r, "reason", "other_address") == DEVICES &&
              counter(r, "reason", "unknown_address") == 0,
          "then once from the same client address");
    CHECK(gwproc_log_count(&T.gw, "127.0.0.1 new_address") == 0,
          "the balancer's address was never taken for the device's");
    CHECK(counter("avlgate_proxy_headers_total", "kind", "proxied") == 3 * DEVICES,
          "every header counted");
    double handed = counter("avlgate_handshakes_handed_off_total", NULL, NULL);
    print_message("real_addresses: %.0f of %d handshakes handed to their owner shard\n", handed,
                  3 * DEVICES);
    CHECK(handed > 0, "no handoff: the address's way to the owner shard went untested");
    CHECK(counter("avlgate_proxy_addresses_lost_total", NULL, NULL) == 0,
          "an address was lost on a handoff");
    for (unsigned i = 0; i < DEVICES; i++) {
        device_close(&first[i]);
        device_close(&second[i]);
        device_close(&third[i]);
    }
}

/* ---- refused ------------------------------------------------------------------------------- */

static double refused_count(const char *reason)
{
    return counter("avlgate_proxy_refused_total", "reason", reason);
}

/* The connection is closed without an answer, and reason's counter is before + 1. */
static void expect_refused(struct device *d, const char *reason, double before, const char *what)
{
    gwproc_expect_closed_silently(d, WAIT_MS, what);
    device_close(d);
    for (int i = 0; i < 50 && refused_count(reason) != before + 1; i++)
        device_sleep_ms(20);
    CHECK(refused_count(reason) == before + 1, "%s: not counted once as %s", what, reason);
}

/* Sends hdr[0 .. len) and then an IMEI behind it from 127.0.0.1; expects reason. */
static void refused_header(const uint8_t *hdr, size_t len, const char *reason, const char *what)
{
    double before = refused_count(reason);
    struct device d;
    connect_with(&d, "127.0.0.1", IMEI_BASE + 900, hdr, len);
    uint8_t imei[17] = {0x00, 0x0F};
    memcpy(imei + 2, "356307042461900", 15);
    (void)send(d.fd, imei, sizeof imei, MSG_NOSIGNAL); /* may find it closed already */
    expect_refused(&d, reason, before, what);
}

static void test_refused(void **state)
{
    (void)state;
    begin("refused", (const char *const[]){"--handshake-timeout-s", "1", NULL});
    uint8_t hdr[HDR_MAX];
    struct device d;
    double before = refused_count("source_not_allowed");
    connect_with(&d, "127.0.0.2", IMEI_BASE + 901, hdr, v2_tcp4(hdr, "198.51.100.9", 1, 2));
    expect_refused(&d, "source_not_allowed", before, "a header from outside --proxy-from");

    refused_header((const uint8_t *)"GET / HTTP/1.0\r\n", 16, "signature", "an HTTP request");
    refused_header(NULL, 0, "signature", "an IMEI without a header");
    const char *v1 = "PROXY TCP4 198.51.100.1 127.0.0.1 1 2 3\r\n";
    refused_header((const uint8_t *)v1, strlen(v1), "v1_syntax", "a v1 header with a 7th field");
    v1 = "PROXY TCP4 198.51.100.300 127.0.0.1 1 2\r\n";
    refused_header((const uint8_t *)v1, strlen(v1), "v1_address", "a v1 address out of range");
    size_t n = v2_tcp4(hdr, "198.51.100.1", 1, 2);
    hdr[12] = 0x31;
    refused_header(hdr, n, "v2_version", "v2 with version 3");
    n = v2_tcp4(hdr, "198.51.100.1", 1, 2);
    hdr[13] = 0x31; /* AF_UNIX, STREAM */
    refused_header(hdr, n, "v2_family", "v2 with a UNIX address");
    n = v2_tcp4(hdr, "198.51.100.1", 1, 2);
    hdr[14] = 0x10; /* 4096 bytes of addresses and TLVs */
    refused_header(hdr, n, "v2_length", "v2 longer than a balancer sends");

    /* Cut short, then silent: closed by the handshake timeout, stored nothing. */
    double timeouts = counter("avlgate_connections_closed_total", "reason", "identify_timeout");
    connect_with(&d, "127.0.0.1", IMEI_BASE + 902, V2_SIG, 9);
    gwproc_expect_closed_silently(&d, WAIT_MS, "a header cut short");
    device_close(&d);
    CHECK(counter("avlgate_connections_closed_total", "reason", "identify_timeout") >= timeouts + 1,
          "the cut header's connection closed by the handshake timeout");

    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 0,
          "nothing stored from a refused connection");
    CHECK(counter("avlgate_handshakes_total", NULL, NULL) == 0, "no refused one got a handshake");
    uint8_t pkt[512];
    open_proxied(&d, IMEI_BASE + 903, hdr, v2_tcp4(hdr, "198.51.100.3", 3, 4));
    n = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000, 1, 1, pkt, sizeof pkt);
    gwproc_send_acked(&d, pkt, n, 1, 0, 0);
    device_close(&d);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 1,
          "a good device is served after them");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_real_addresses, teardown),
        cmocka_unit_test_teardown(test_refused, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
