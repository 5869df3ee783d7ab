/* test_proxyhdr.c — the PROXY protocol header parser (shard/proxyhdr.h): versions 1 and 2 as
 * HAProxy sends them, every strict prefix of a valid header asks for more, every refusal is
 * named, and no byte past len is read (each input is copied into a buffer of exactly its length:
 * ASan in the Debug build). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shard/proxyhdr.h"

/* proxyhdr_parse over an exact-length heap copy of p[0..len). */
static int parse(const void *p, size_t len, struct proxyhdr *h)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, p, len);
    int rc = proxyhdr_parse(copy, len, h);
    free(copy);
    return rc;
}

/* Every strict prefix of a header of `bytes` at p asks for more; the whole gives bytes. */
static void prefixes_need_more(const uint8_t *p, size_t bytes)
{
    struct proxyhdr h;
    for (size_t n = 0; n < bytes; n++)
        assert_int_equal(parse(p, n, &h), PROXYHDR_NEED_MORE);
    assert_int_equal(parse(p, bytes, &h), (int)bytes);
}

static void expect_v4(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    const struct sockaddr_in *s = (const struct sockaddr_in *)(const void *)ss;
    char text[INET_ADDRSTRLEN];
    assert_int_equal(s->sin_family, AF_INET);
    assert_non_null(inet_ntop(AF_INET, &s->sin_addr, text, sizeof text));
    assert_string_equal(text, addr);
    assert_int_equal(ntohs(s->sin_port), port);
}

static void expect_v6(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)(const void *)ss;
    char text[INET6_ADDRSTRLEN];
    assert_int_equal(s->sin6_family, AF_INET6);
    assert_non_null(inet_ntop(AF_INET6, &s->sin6_addr, text, sizeof text));
    assert_string_equal(text, addr);
    assert_int_equal(ntohs(s->sin6_port), port);
}

/* A v1 line followed by a tracker's first bytes (the IMEI frame): only the line is taken. */
static void test_v1_tcp4(void **state)
{
    (void)state;
    const char *line = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 5027\r\n";
    uint8_t buf[128];
    size_t n = strlen(line);
    memcpy(buf, line, n);
    memcpy(buf + n,
           "\x00\x0f"
           "356307042441013",
           17);
    struct proxyhdr h;
    assert_int_equal(parse(buf, n + 17, &h), (int)n);
    assert_int_equal(h.version, 1);
    assert_int_equal(h.local, 0);
    assert_int_equal(h.bytes, n);
    expect_v4(&h.src, "192.0.2.10", 56324);
    expect_v4(&h.dst, "198.51.100.1", 5027);
    prefixes_need_more((const uint8_t *)line, n);
}

static void test_v1_tcp6_and_unknown(void **state)
{
    (void)state;
    const char *line = "PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n";
    struct proxyhdr h;
    assert_int_equal(parse(line, strlen(line), &h), (int)strlen(line));
    expect_v6(&h.src, "2001:db8::1", 0);
    expect_v6(&h.dst, "2001:db8::2", 65535);
    prefixes_need_more((const uint8_t *)line, strlen(line));

    const char *unknown = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_int_equal(parse(unknown, strlen(unknown), &h), (int)strlen(unknown));
    assert_int_equal(h.local, 1);
    assert_int_equal(h.src.ss_family, AF_UNSPEC);
    assert_int_equal(parse("PROXY UNKNOWN\r\n", 15, &h), 15);
    assert_int_equal(h.local, 1);
}

static void test_v1_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
    } cases[] = {
        {"GET / HTTP/1.0\r\n", PROXYHDR_E_SIGNATURE},
        {"\x00\x0f"
         "356307042441013",
         PROXYHDR_E_SIGNATURE}, /* a tracker without a balancer */
        {"PROXX TCP4", PROXYHDR_E_SIGNATURE},
        {"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", PROXYHDR_E_SIGNATURE},
        {"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", PROXYHDR_E_V1_SYNTAX},
        {"PROXY TCP4 300.2.3.4 5.6.7.8 1 2\r\n", PROXYHDR_E_V1_ADDRESS},
        {"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", PROXYHDR_E_V1_ADDRESS},
        {"PROXY TCP6 1.2.3.4 2001:db8::2 1 2\r\n", PROXYHDR_E_V1_ADDRESS},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", PROXYHDR_E_V1_ADDRESS},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", PROXYHDR_E_V1_ADDRESS},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", PROXYHDR_E_V1_ADDRESS},
    };
    struct proxyhdr h;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = cases[i].text[0] == '\0' ? 17 : strlen(cases[i].text);
        int rc = parse(cases[i].text, n, &h);
        if (rc != cases[i].want)
            fail_msg("case %zu: %d (%s), want %d (%s)", i, rc, proxyhdr_result_name(rc),
                     cases[i].want, proxyhdr_result_name(cases[i].want));
    }
    /* A line of exactly 107 bytes with its CRLF is taken; 106 bytes without a CR are too long
     * (the CR could only come at 107, the LF at 108); 105 bytes without one: more. */
    char longer[160];
    memcpy(longer, "PROXY UNKNOWN ", 14);
    memset(longer + 14, 'A', sizeof longer - 14);
    longer[PROXYHDR_V1_BYTES_MAX - 2] = '\r';
    longer[PROXYHDR_V1_BYTES_MAX - 1] = '\n';
    assert_int_equal(parse(longer, PROXYHDR_V1_BYTES_MAX, &h), PROXYHDR_V1_BYTES_MAX);
    memset(longer + 14, 'A', sizeof longer - 14);
    assert_int_equal(parse(longer, PROXYHDR_V1_BYTES_MAX - 2, &h), PROXYHDR_NEED_MORE);
    assert_int_equal(parse(longer, PROXYHDR_V1_BYTES_MAX - 1, &h), PROXYHDR_E_V1_TOO_LONG);
    assert_int_equal(parse(longer, sizeof longer, &h), PROXYHDR_E_V1_TOO_LONG);
    longer[PROXYHDR_V1_BYTES_MAX - 1] = '\r'; /* CRLF ending at 108 */
    longer[PROXYHDR_V1_BYTES_MAX] = '\n';
    assert_int_equal(parse(longer, sizeof longer, &h), PROXYHDR_E_V1_TOO_LONG);
    assert_string_equal(proxyhdr_result_name(PROXYHDR_E_V1_TOO_LONG), "v1_too_long");
}

/* A v2 header: the signature, ver_cmd, fam, the body's length, then body. Returns its length. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, uint16_t n)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(n >> 8);
    out[15] = (uint8_t)n;
    if (n && body != out + 16)
        memcpy(out + 16, body, n);
    return 16u + n;
}

static void test_v2_inet_with_tlvs(void **state)
{
    (void)state;
    /* 192.0.2.10:56324 -> 198.51.100.1:5027, then a TLV (PP2_TYPE_UNIQUE_ID, 4 bytes). */
    const uint8_t body[] = {192,  0,    2,    10,   198,  51,  100, 1,   0xDC, 0x04,
                            0x13, 0xA3, 0x05, 0x00, 0x04, 'a', 'b', 'c', 'd'};
    uint8_t buf[64];
    size_t n = v2(buf, 0x21, 0x11, body, sizeof body);
    buf[n] = 0x00; /* the tracker's first byte follows */
    struct proxyhdr h;
    assert_int_equal(parse(buf, n + 1, &h), (int)n);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.local, 0);
    assert_int_equal(h.dgram, 0);
    expect_v4(&h.src, "192.0.2.10", 56324);
    expect_v4(&h.dst, "198.51.100.1", 5027);
    prefixes_need_more(buf, n);
}

static void test_v2_inet6_local_unspec(void **state)
{
    (void)state;
    uint8_t body[36] = {0};
    inet_pton(AF_INET6, "2001:db8::10", body);
    inet_pton(AF_INET6, "2001:db8::20", body + 16);
    body[32] = 0x30, body[33] = 0x39; /* 12345 */
    body[34] = 0x13, body[35] = 0xA3; /* 5027 */
    uint8_t buf[64];
    size_t n = v2(buf, 0x21, 0x22, body, sizeof body); /* INET6 over DGRAM */
    struct proxyhdr h;
    assert_int_equal(parse(buf, n, &h), (int)n);
    assert_int_equal(h.dgram, 1);
    expect_v6(&h.src, "2001:db8::10", 12345);
    expect_v6(&h.dst, "2001:db8::20", 5027);
    prefixes_need_more(buf, n);

    n = v2(buf, 0x20, 0x00, NULL, 0); /* LOCAL: a health check of the balancer's */
    assert_int_equal(parse(buf, n, &h), 16);
    assert_int_equal(h.local, 1);
    assert_int_equal(h.src.ss_family, AF_UNSPEC);
    n = v2(buf, 0x20, 0x11, body, 12); /* LOCAL with an address block: skipped */
    assert_int_equal(parse(buf, n, &h), 28);
    assert_int_equal(h.local, 1);
    n = v2(buf, 0x21, 0x00, NULL, 0); /* PROXY of UNSPEC: the socket's own address */
    assert_int_equal(parse(buf, n, &h), 16);
    assert_int_equal(h.local, 1);
}

static void test_v2_refusals(void **state)
{
    (void)state;
    uint8_t body[40] = {0};
    uint8_t buf[PROXYHDR_V2_BYTES_MAX + 64];
    struct proxyhdr h;
    size_t n = v2(buf, 0x11, 0x11, body, 12); /* version 1 in a v2 header */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_VERSION);
    assert_int_equal(parse(buf, 13, &h), PROXYHDR_E_V2_VERSION); /* decided at byte 13 */
    n = v2(buf, 0x22, 0x11, body, 12);                           /* command 2 */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_COMMAND);
    assert_int_equal(parse(buf, 13, &h), PROXYHDR_E_V2_COMMAND);
    n = v2(buf, 0x21, 0x31, body, 40); /* AF_UNIX */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_FAMILY);
    assert_int_equal(parse(buf, 16, &h), PROXYHDR_E_V2_FAMILY); /* before the body is in */
    n = v2(buf, 0x21, 0x10, body, 12);                          /* INET over UNSPEC transport */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_FAMILY);
    n = v2(buf, 0x21, 0x11, body, 8); /* INET in 8 bytes */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_LENGTH);
    n = v2(buf, 0x21, 0x21, body, 35); /* INET6 in 35 bytes */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_E_V2_LENGTH);
    memset(buf + 16, 0, PROXYHDR_V2_BYTES_MAX - 16 + 1);
    n = v2(buf, 0x21, 0x11, buf + 16, (uint16_t)(PROXYHDR_V2_BYTES_MAX - 16 + 1)); /* too long */
    assert_int_equal(parse(buf, 16, &h), PROXYHDR_E_V2_LENGTH);
    n = v2(buf, 0x21, 0x11, buf + 16, (uint16_t)(PROXYHDR_V2_BYTES_MAX - 16)); /* the longest */
    assert_int_equal(parse(buf, n, &h), PROXYHDR_V2_BYTES_MAX);
    /* A wrong byte inside the signature is refused as soon as it is seen. */
    n = v2(buf, 0x21, 0x11, body, 12);
    buf[7] ^= 0x01;
    assert_int_equal(parse(buf, 8, &h), PROXYHDR_E_SIGNATURE);
    assert_int_equal(parse(buf, 7, &h), PROXYHDR_NEED_MORE);
    assert_string_equal(proxyhdr_result_name(PROXYHDR_E_V2_FAMILY), "v2_family");
    assert_string_equal(proxyhdr_result_name(28), "ok");
}

/* Every single-byte change of valid headers gives a header or a named result, never anything
 * else, and a header only of a length within bounds. */
static void test_mutations_named(void **state)
{
    (void)state;
    const uint8_t body[] = {192, 0, 2, 10, 198, 51, 100, 1, 0xDC, 0x04, 0x13, 0xA3};
    uint8_t v2buf[64];
    size_t n2 = v2(v2buf, 0x21, 0x11, body, sizeof body);
    const char *v1 = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 5027\r\n";
    const struct {
        const uint8_t *p;
        size_t n;
    } seeds[] = {{v2buf, n2}, {(const uint8_t *)v1, strlen(v1)}};
    unsigned named = 0, parsed = 0;
    for (size_t s = 0; s < 2; s++) {
        uint8_t m[64];
        for (size_t i = 0; i < seeds[s].n; i++) {
            for (unsigned v = 0; v < 256; v++) {
                memcpy(m, seeds[s].p, seeds[s].n);
                m[i] = (uint8_t)v;
                struct proxyhdr h;
                int rc = parse(m, seeds[s].n, &h);
                assert_true(rc >= -PROXYHDR_ERRORS);
                if (rc > 0) {
                    assert_true((size_t)rc <= seeds[s].n && h.bytes == rc);
                    parsed++;
                } else {
                    assert_string_not_equal(proxyhdr_result_name(rc), "unknown");
                    named++;
                }
            }
        }
    }
    assert_true(named > 0 && parsed > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),
        cmocka_unit_test(test_v1_tcp6_and_unknown),
        cmocka_unit_test(test_v1_refusals),
        cmocka_unit_test(test_v2_inet_with_tlvs),
        cmocka_unit_test(test_v2_inet6_local_unspec),
        cmocka_unit_test(test_v2_refusals),
        cmocka_unit_test(test_mutations_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
