/* test_loadgen.c — avlgate-loadgen's device behaviour against a scripted gateway.
 *
 * The test plays the gateway on a loopback socket with blocking, bounded calls and runs the
 * real avlgate-loadgen binary as a child with one device, so every byte the device sends is
 * seen and every answer is chosen: a refused handshake (0x00) and the reconnect after it; the
 * packet (CRC, record count) and its ACK; a Codec 12 command and the device's Codec 12 reply
 * (--command-reply, --command-log); a wrong ACK, after which the device must reconnect and
 * send the same packet again byte for byte; packets written in pieces (--fragment 1); and
 * first attempts with a corrupted CRC (--malformed 1), which the gateway closes, followed by
 * the real packet. The run ends by --packets, and the summary line must count it all.
 *
 * Over UDP (--udp) the test plays the gateway's UDP side on a loopback datagram socket: a
 * responder that ACKs each datagram (one in flight per device, ids kept per device, AVL packet
 * ids going up by one), one that lets each packet's first attempt go unanswered (the device must
 * send the very same bytes again after --udp-retry-ms, and count it) and answers an earlier
 * packet's ACK again (stale: counted, nothing moves), and one that ACKs with a wrong record
 * count (counted, no progress: the same packet again and again). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#ifndef LOADGEN_BIN
#error "LOADGEN_BIN (the avlgate-loadgen binary) must be defined by the build"
#endif
#ifndef TEST_TMPDIR
#error "TEST_TMPDIR must be defined by the build"
#endif

enum { WAIT_MS = 10000, FRAME_MAX = 70000 };

#define IMEI 350000000000000ull

/* ---------------------------------------------------------------------------------------------
 * The scripted gateway
 * ------------------------------------------------------------------------------------------- */

static int srv_listen(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static bool wait_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1;
}

static int srv_accept(int lfd)
{
    if (!wait_readable(lfd, WAIT_MS))
        fail_msg("the device did not connect within %d ms", WAIT_MS);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    return fd;
}

/* Reads exactly n bytes; false on EOF. */
static bool srv_read(int fd, uint8_t *out, size_t n)
{
    size_t got = 0;
    while (got < n) {
        if (!wait_readable(fd, WAIT_MS))
            fail_msg("the device sent %zu of %zu bytes within %d ms", got, n, WAIT_MS);
        ssize_t r = recv(fd, out + got, n - got, 0);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static void srv_send(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads one preamble-framed frame into out; returns its length. */
static size_t srv_read_frame(int fd, uint8_t *out)
{
    assert_true(srv_read(fd, out, AVL_TCP_HEADER_BYTES));
    struct avl_frame f;
    int rc = avl_scan(out, AVL_TCP_HEADER_BYTES, AVL_SCAN_DATA, FRAME_MAX, &f);
    assert_int_equal(rc, AVL_NEED_MORE);
    assert_true(f.bytes > AVL_TCP_HEADER_BYTES && f.bytes <= FRAME_MAX);
    assert_true(srv_read(fd, out + AVL_TCP_HEADER_BYTES, f.bytes - AVL_TCP_HEADER_BYTES));
    return f.bytes;
}

/* Reads the handshake, checks the IMEI and answers `answer`. */
static void srv_handshake(int fd, uint8_t answer)
{
    uint8_t hs[2 + 15];
    assert_true(srv_read(fd, hs, sizeof hs));
    uint64_t imei;
    assert_int_equal(avl_decode_imei(hs, sizeof hs, &imei), 0);
    assert_int_equal(imei, IMEI);
    srv_send(fd, &answer, 1);
}

/* Reads an AVL packet that must decode; returns its length and record count. */
static size_t srv_packet(int fd, uint8_t *buf, uint32_t *records)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    size_t n = srv_read_frame(fd, buf);
    struct avl_packet pkt;
    assert_int_equal(avl_decode_tcp(buf, n, &pkt, recs), 0);
    assert_true(pkt.records_len >= 1);
    *records = pkt.records_len;
    return n;
}

static void srv_ack(int fd, uint32_t records)
{
    uint8_t ack[AVL_TCP_ACK_BYTES];
    avl_encode_tcp_ack(ack, records);
    srv_send(fd, ack, sizeof ack);
}

static bool srv_wait_eof(int fd)
{
    uint8_t b[256];
    for (;;) {
        if (!wait_readable(fd, WAIT_MS))
            return false;
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r <= 0)
            return true;
    }
}

/* ---------------------------------------------------------------------------------------------
 * The loadgen child
 * ------------------------------------------------------------------------------------------- */

static pid_t loadgen_start(const char *out_path, const char *const *args)
{
    const char *argv[64] = {LOADGEN_BIN};
    unsigned n = 1;
    for (unsigned i = 0; args[i]; i++) {
        assert_true(n < 62);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            close(fd);
        }
        char *a[64];
        for (unsigned i = 0; i <= n; i++)
            a[i] = argv[i] ? strdup(argv[i]) : NULL;
        execv(LOADGEN_BIN, a);
        _exit(127);
    }
    return pid;
}

/* Waits for the child; returns its exit status. */
static int loadgen_wait(pid_t pid)
{
    uint64_t end = device_now_ms() + 20000;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            assert_true(WIFEXITED(st));
            return WEXITSTATUS(st);
        }
        if (device_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("avlgate-loadgen did not exit");
        }
        usleep(10000);
    }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The value of " key=" in the summary line. */
static long long summary_value(const char *text, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *at = strstr(text, pat);
    if (!at)
        fail_msg("no %s in: %s", key, text);
    return strtoll(at + strlen(pat), NULL, 10);
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------------------------- */

/* Refused handshake, ACK, command and reply, wrong ACK and byte-identical re-send. */
static void test_device_script(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = srv_listen(&port);
    char target[32], out[256], cmdlog[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_script.out", TEST_TMPDIR);
    snprintf(cmdlog, sizeof cmdlog, "%s/test_loadgen_script.cmdlog", TEST_TMPDIR);
    unlink(cmdlog);
    const char *args[] = {"--connect",       target,   "--devices",      "1",    "--packets",  "3",
                          "--duration-s",    "20",     "--reconnect-ms", "50",   "--fragment", "1",
                          "--command-reply", "DONE 1", "--command-log",  cmdlog, NULL};
    pid_t pid = loadgen_start(out, args);
    static uint8_t p0[FRAME_MAX], p1[FRAME_MAX], p1_again[FRAME_MAX], p2[FRAME_MAX];
    uint32_t r0, r1, r1_again, r2;

    /* 1: refused; the device closes and comes back after its backoff. */
    int fd = srv_accept(lfd);
    srv_handshake(fd, 0x00);
    assert_true(srv_wait_eof(fd));
    close(fd);

    /* 2: accepted; packet 0 and its ACK; a command and its reply; packet 1, a wrong ACK. */
    fd = srv_accept(lfd);
    srv_handshake(fd, 0x01);
    srv_packet(fd, p0, &r0);
    srv_ack(fd, r0);
    uint8_t cmd[64];
    int cn = avl_encode_command(cmd, sizeof cmd, (const uint8_t *)"getinfo", 7);
    assert_true(cn > 0);
    srv_send(fd, cmd, (size_t)cn);
    /* The device may already be writing packet 1 (it does not wait after an ACK): the reply
     * comes before it or right after it, never inside it. */
    static uint8_t reply[FRAME_MAX];
    size_t rn = srv_read_frame(fd, reply), n1 = 0;
    if (reply[8] != AVL_CODEC_12) {
        n1 = rn;
        memcpy(p1, reply, rn);
        rn = srv_read_frame(fd, reply);
    }
    uint8_t codec;
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    assert_int_equal(avl_decode_gprs(reply, rn, &codec, msgs), 1);
    assert_int_equal(codec, AVL_CODEC_12);
    assert_int_equal(msgs[0].type, AVL_GPRS_RESPONSE);
    assert_int_equal(msgs[0].text_len, 6);
    assert_memory_equal(msgs[0].text, "DONE 1", 6);
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    if (n1 == 0)
        n1 = srv_read_frame(fd, p1);
    assert_int_equal(avl_decode_tcp(p1, n1, &pkt, recs), 0);
    r1 = pkt.records_len;
    srv_ack(fd, r1 + 1);
    assert_true(srv_wait_eof(fd));
    close(fd);

    /* 3: the same packet 1 again, byte for byte; then packet 2; --packets 3 ends the run. */
    fd = srv_accept(lfd);
    srv_handshake(fd, 0x01);
    size_t n1_again = srv_packet(fd, p1_again, &r1_again);
    assert_int_equal(n1_again, n1);
    assert_memory_equal(p1_again, p1, n1);
    srv_ack(fd, r1_again);
    size_t n2 = srv_packet(fd, p2, &r2);
    assert_true(n2 != n1 || memcmp(p2, p1, n1) != 0);
    srv_ack(fd, r2);

    assert_int_equal(loadgen_wait(pid), 0);
    close(fd);
    close(lfd);
    const char *text = slurp(out);
    assert_int_equal(summary_value(text, "rejected"), 1);
    assert_int_equal(summary_value(text, "bad_ack"), 1);
    assert_int_equal(summary_value(text, "handshakes"), 2);
    assert_int_equal(summary_value(text, "packets_acked"), 3);
    assert_int_equal(summary_value(text, "records_acked"), r0 + r1 + r2);
    assert_int_equal(summary_value(text, "resends"), 1);
    assert_int_equal(summary_value(text, "commands"), 1);
    assert_int_equal(summary_value(text, "replies"), 1);
    /* One log line: wall-clock ns, the IMEI, the command. */
    const char *log = slurp(cmdlog);
    unsigned long long ns;
    char imei[32], cmdtext[32];
    assert_int_equal(sscanf(log, "%llu %31s %31s", &ns, imei, cmdtext), 3);
    assert_true(ns > 1000000000ull * 1600000000ull);
    assert_string_equal(imei, "350000000000000");
    assert_string_equal(cmdtext, "getinfo");
    unsigned lines = 0;
    for (const char *c = log; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, 1);
}

/* --malformed 1: every packet's first attempt has a bad CRC; the gateway closes without an
 * ACK, the device reconnects and sends the real packet (the same bytes but the CRC). */
static void test_malformed_then_real(void **state)
{
    (void)state;
    uint16_t port;
    int lfd = srv_listen(&port);
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_malformed.out", TEST_TMPDIR);
    const char *args[] = {"--connect",    target, "--devices", "1", "--packets",      "2",
                          "--malformed",  "1",    "--records", "3", "--reconnect-ms", "50",
                          "--duration-s", "20",   NULL};
    pid_t pid = loadgen_start(out, args);
    static uint8_t bad[FRAME_MAX], good[FRAME_MAX];
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;

    int fd = srv_accept(lfd);
    srv_handshake(fd, 0x01);
    for (int k = 0; k < 2; k++) {
        /* The first attempt: refused by its CRC, the connection closed. */
        size_t nb = srv_read_frame(fd, bad);
        assert_int_equal(avl_decode_tcp(bad, nb, &pkt, recs), AVL_E_CRC_MISMATCH);
        close(fd);
        /* The re-send on a new connection: the real packet. */
        fd = srv_accept(lfd);
        srv_handshake(fd, 0x01);
        uint32_t records;
        size_t ng = srv_packet(fd, good, &records);
        assert_int_equal(records, 3);
        assert_int_equal(ng, nb);
        assert_memory_equal(good, bad, nb - 1);
        srv_ack(fd, records);
    }
    assert_int_equal(loadgen_wait(pid), 0);
    close(fd);
    close(lfd);
    const char *text = slurp(out);
    assert_int_equal(summary_value(text, "malformed_sent"), 2);
    assert_int_equal(summary_value(text, "malformed_closed"), 2);
    assert_int_equal(summary_value(text, "malformed_acked"), 0);
    assert_int_equal(summary_value(text, "packets_acked"), 2);
    assert_int_equal(summary_value(text, "records_acked"), 6);
    assert_int_equal(summary_value(text, "unexpected_close"), 0);
    assert_int_equal(summary_value(text, "handshakes"), 3);
}

/* Nothing listens: every dial is refused, counted, and the exit status says so. */
static void test_nothing_connected_fails(void **state)
{
    (void)state;
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", device_free_port());
    snprintf(out, sizeof out, "%s/test_loadgen_refused.out", TEST_TMPDIR);
    const char *args[] = {"--connect", target,           "--devices", "3", "--duration-s",
                          "1.5",       "--reconnect-ms", "100",       NULL};
    pid_t pid = loadgen_start(out, args);
    assert_int_equal(loadgen_wait(pid), 1);
    const char *text = slurp(out);
    assert_true(summary_value(text, "connect_refused") >= 3);
    assert_int_equal(summary_value(text, "handshakes"), 0);
}

/* ---------------------------------------------------------------------------------------------
 * The scripted gateway over UDP
 * ------------------------------------------------------------------------------------------- */

/* One datagram as the responder saw it. */
struct dgram {
    uint8_t bytes[FRAME_MAX];
    size_t len;
    struct sockaddr_in from;
    struct avl_packet pkt; /* decoded: ids, IMEI, records_len */
};

static int udp_srv_open(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Receives one datagram within timeout_ms, which must decode as an AVL packet over UDP. False
 * when none came. */
static bool udp_srv_recv(int fd, struct dgram *d, int timeout_ms)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    if (!wait_readable(fd, timeout_ms))
        return false;
    socklen_t l = sizeof d->from;
    ssize_t n = recvfrom(fd, d->bytes, sizeof d->bytes, 0, (struct sockaddr *)&d->from, &l);
    assert_true(n > 0);
    d->len = (size_t)n;
    assert_int_equal(avl_decode_udp(d->bytes, d->len, &d->pkt, recs), 0);
    assert_int_equal(d->pkt.udp_not_usable, 0x01);
    assert_true(d->pkt.records_len >= 1);
    return true;
}

/* Answers d with the ACK of its ids and `records`, to its source address. */
static void udp_srv_ack(int fd, const struct dgram *d, uint8_t records)
{
    uint8_t ack[AVL_UDP_ACK_BYTES];
    avl_encode_udp_ack(ack, d->pkt.udp_packet_id, d->pkt.udp_avl_packet_id, records);
    assert_int_equal(
        sendto(fd, ack, sizeof ack, 0, (const struct sockaddr *)&d->from, sizeof d->from),
        (ssize_t)sizeof ack);
}

static bool same_source(const struct dgram *a, const struct dgram *b)
{
    return a->from.sin_port == b->from.sin_port &&
           a->from.sin_addr.s_addr == b->from.sin_addr.s_addr;
}

/* The summary line must say the transport. */
static void assert_transport(const char *text, const char *transport)
{
    char pat[32];
    snprintf(pat, sizeof pat, " transport=%s ", transport);
    if (!strstr(text, pat))
        fail_msg("no%s in: %s", pat, text);
}

/* Checks datagram d of device g against that device's previous one (if any): the same source
 * address and packet id, the next AVL packet id; --records 4. */
static void udp_check_next(const struct dgram *d, const struct dgram *prev, bool first)
{
    assert_int_equal(d->pkt.records_len, 4);
    if (first)
        return;
    assert_true(same_source(d, prev));
    assert_int_equal(d->pkt.udp_packet_id, prev->pkt.udp_packet_id);
    assert_int_equal(d->pkt.udp_avl_packet_id, (uint8_t)(prev->pkt.udp_avl_packet_id + 1));
}

/* Two devices, three packets each, every datagram acknowledged: one in flight per device (no
 * second datagram before the ACK), each device on its own socket with its own packet id kept,
 * its AVL packet id going up by one per packet. */
static void test_udp_acked(void **state)
{
    (void)state;
    uint16_t port;
    int fd = udp_srv_open(&port);
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_udp_acked.out", TEST_TMPDIR);
    /* A retry far beyond the test: any second datagram of a device is its next packet. */
    const char *args[] = {"--udp", "--connect", target, "--devices",    "2",  "--packets",
                          "3",     "--records", "4",    "--duration-s", "20", "--udp-retry-ms",
                          "5000",  NULL};
    pid_t pid = loadgen_start(out, args);
    static struct dgram last[2], d;
    unsigned seen[2] = {0, 0};
    for (unsigned k = 0; k < 6; k++) {
        if (!udp_srv_recv(fd, &d, WAIT_MS))
            fail_msg("datagram %u did not come within %d ms", k, WAIT_MS);
        assert_true(d.pkt.imei == IMEI || d.pkt.imei == IMEI + 1);
        unsigned g = (unsigned)(d.pkt.imei - IMEI);
        udp_check_next(&d, &last[g], seen[g] == 0);
        seen[g]++;
        last[g] = d;
        if (k == 0) {
            /* The other device's first packet, then nothing while both wait for their ACK. */
            assert_true(udp_srv_recv(fd, &last[1 - g], WAIT_MS));
            assert_int_equal(last[1 - g].pkt.imei, IMEI + (1 - g));
            udp_check_next(&last[1 - g], NULL, true);
            seen[1 - g]++;
            assert_false(wait_readable(fd, 300));
            udp_srv_ack(fd, &last[1 - g], 4);
            k++;
        }
        udp_srv_ack(fd, &d, 4);
    }
    assert_int_equal(seen[0], 3);
    assert_int_equal(seen[1], 3);
    assert_false(same_source(&last[0], &last[1])); /* two sockets: two ports for SO_REUSEPORT */
    assert_int_equal(loadgen_wait(pid), 0);
    assert_false(wait_readable(fd, 0)); /* nothing after the last ACK */
    close(fd);
    const char *text = slurp(out);
    assert_transport(text, "udp");
    assert_int_equal(summary_value(text, "packets_sent"), 6);
    assert_int_equal(summary_value(text, "udp_datagrams_sent"), 6);
    assert_int_equal(summary_value(text, "resends"), 0);
    assert_int_equal(summary_value(text, "packets_acked"), 6);
    assert_int_equal(summary_value(text, "records_acked"), 24);
    assert_int_equal(summary_value(text, "udp_stale_acks"), 0);
    assert_int_equal(summary_value(text, "udp_bad_count_acks"), 0);
    assert_int_equal(summary_value(text, "handshakes"), 0);
    assert_int_equal(summary_value(text, "errors"), 0);
}

/* Each packet's first attempt goes unanswered: after --udp-retry-ms the device sends the very
 * same bytes (same packet id, same AVL packet id), which are acknowledged; before that ACK the
 * previous packet's ACK comes again, which is stale and moves nothing. */
static void test_udp_resend(void **state)
{
    (void)state;
    uint16_t port;
    int fd = udp_srv_open(&port);
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_udp_resend.out", TEST_TMPDIR);
    const char *args[] = {"--udp", "--connect", target, "--devices",      "1",   "--packets",
                          "3",     "--records", "4",    "--udp-retry-ms", "500", "--duration-s",
                          "20",    NULL};
    pid_t pid = loadgen_start(out, args);
    static struct dgram first, again, prev;
    for (unsigned k = 0; k < 3; k++) {
        assert_true(udp_srv_recv(fd, &first, WAIT_MS));
        udp_check_next(&first, &prev, k == 0);
        uint64_t t0 = device_now_ms();
        assert_true(udp_srv_recv(fd, &again, WAIT_MS)); /* unanswered: the re-send */
        assert_true(device_now_ms() - t0 >= 400);
        assert_int_equal(again.len, first.len);
        assert_memory_equal(again.bytes, first.bytes, first.len);
        assert_true(same_source(&again, &first));
        if (k > 0)
            udp_srv_ack(fd, &prev, 4); /* stale: the device is on the next packet */
        udp_srv_ack(fd, &again, 4);
        prev = again;
    }
    assert_int_equal(loadgen_wait(pid), 0);
    close(fd);
    const char *text = slurp(out);
    assert_transport(text, "udp");
    assert_int_equal(summary_value(text, "packets_sent"), 3);
    assert_int_equal(summary_value(text, "resends"), 3);
    assert_int_equal(summary_value(text, "udp_datagrams_sent"), 6);
    assert_int_equal(summary_value(text, "packets_acked"), 3);
    assert_int_equal(summary_value(text, "records_acked"), 12);
    assert_int_equal(summary_value(text, "udp_stale_acks"), 2);
    assert_int_equal(summary_value(text, "udp_bad_count_acks"), 0);
    assert_int_equal(summary_value(text, "errors"), 0);
}

/* Every ACK names the right packet with a record count one too many: no progress, each one
 * counted, and the same datagram again after every retry until the run ends. */
static void test_udp_wrong_count(void **state)
{
    (void)state;
    uint16_t port;
    int fd = udp_srv_open(&port);
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_udp_count.out", TEST_TMPDIR);
    const char *args[] = {"--udp", "--connect",      target, "--devices",    "1",   "--records",
                          "4",     "--udp-retry-ms", "100",  "--duration-s", "1.5", NULL};
    pid_t pid = loadgen_start(out, args);
    static struct dgram first, d;
    assert_true(udp_srv_recv(fd, &first, WAIT_MS));
    udp_srv_ack(fd, &first, 5);
    long long n = 1;
    while (udp_srv_recv(fd, &d, 1000)) { /* until the run is over */
        assert_int_equal(d.len, first.len);
        assert_memory_equal(d.bytes, first.bytes, first.len);
        udp_srv_ack(fd, &d, (uint8_t)(n % 2 ? 3 : 5)); /* too few, too many */
        n++;
    }
    assert_int_equal(loadgen_wait(pid), 0); /* answered, if wrongly: not "nothing answered" */
    close(fd);
    assert_true(n >= 3);
    const char *text = slurp(out);
    assert_transport(text, "udp");
    assert_int_equal(summary_value(text, "packets_sent"), 1);
    assert_int_equal(summary_value(text, "resends"), n - 1);
    assert_int_equal(summary_value(text, "udp_datagrams_sent"), n);
    assert_int_equal(summary_value(text, "packets_acked"), 0);
    assert_int_equal(summary_value(text, "records_acked"), 0);
    /* The last ACK may land after the run stopped reading. */
    long long bad = summary_value(text, "udp_bad_count_acks");
    assert_true(bad == n || bad == n - 1);
    assert_int_equal(summary_value(text, "udp_stale_acks"), 0);
    assert_true(summary_value(text, "errors") >= bad);
}

/* Nothing answers over UDP: the datagrams go, are re-sent, and the exit status says so. */
static void test_udp_unanswered_fails(void **state)
{
    (void)state;
    uint16_t port;
    int fd = udp_srv_open(&port); /* bound, never answering */
    char target[32], out[256];
    snprintf(target, sizeof target, "127.0.0.1:%u", port);
    snprintf(out, sizeof out, "%s/test_loadgen_udp_unanswered.out", TEST_TMPDIR);
    const char *args[] = {"--udp",          "--connect", target,         "--devices", "3",
                          "--udp-retry-ms", "200",       "--duration-s", "1",         NULL};
    pid_t pid = loadgen_start(out, args);
    assert_int_equal(loadgen_wait(pid), 1);
    close(fd);
    const char *text = slurp(out);
    assert_int_equal(summary_value(text, "packets_sent"), 3);
    assert_true(summary_value(text, "resends") >= 3);
    assert_int_equal(summary_value(text, "packets_acked"), 0);
}

/* Usage errors exit 2. */
static void test_usage(void **state)
{
    (void)state;
    char out[256];
    snprintf(out, sizeof out, "%s/test_loadgen_usage.out", TEST_TMPDIR);
    const char *bad1[] = {"--devices", "0", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, bad1)), 2);
    const char *bad2[] = {"--verify", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, bad2)), 2);
    const char *bad3[] = {"--rate", "10", "--drain", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, bad3)), 2);
    const char *bad4[] = {"--reconnect-storm", "5", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, bad4)), 2);
    /* What only TCP connections have, with --udp; --udp-retry-ms without it. */
    const char *udp1[] = {"--udp", "--fragment", "0.5", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp1)), 2);
    const char *udp2[] = {"--ack-timeout-s", "1", "--udp", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp2)), 2);
    const char *udp3[] = {"--udp", "--idle", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp3)), 2);
    const char *udp4[] = {"--udp", "--command-reply", "OK", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp4)), 2);
    const char *udp5[] = {"--udp-retry-ms", "100", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp5)), 2);
    const char *udp6[] = {"--udp", "--udp-retry-ms", "0", NULL};
    assert_int_equal(loadgen_wait(loadgen_start(out, udp6)), 2);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_script),
        cmocka_unit_test(test_malformed_then_real),
        cmocka_unit_test(test_nothing_connected_fails),
        cmocka_unit_test(test_udp_acked),
        cmocka_unit_test(test_udp_resend),
        cmocka_unit_test(test_udp_wrong_count),
        cmocka_unit_test(test_udp_unanswered_fails),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
