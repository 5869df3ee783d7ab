/* proxyhdr.c — the PROXY protocol header, versions 1 and 2 (proxyhdr.h). */
#include "shard/proxyhdr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t V2_SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char V1_PREFIX[] = "PROXY ";
enum { V1_PREFIX_BYTES = sizeof V1_PREFIX - 1, V2_INET_BYTES = 12, V2_INET6_BYTES = 36 };

/* Whether p[0..len) is a prefix of (or starts with) the n-byte sig. */
static int starts_as(const uint8_t *p, size_t len, const void *sig, size_t n)
{
    return memcmp(p, sig, len < n ? len : n) == 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port_host)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)(void *)ss)->sin_port = htons(port_host);
    else
        ((struct sockaddr_in6 *)(void *)ss)->sin6_port = htons(port_host);
}

/* ---- v1 ------------------------------------------------------------------------------------ */

/* A port in decimal: "0" or 1..5 digits without a leading zero, at most 65535. */
static int v1_port(const char *s, size_t n, uint16_t *port)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* An address of family af from the n bytes at s into ss. */
static int v1_addr(int af, const char *s, size_t n, struct sockaddr_storage *ss)
{
    char text[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof text)
        return -1;
    memcpy(text, s, n);
    text[n] = '\0';
    memset(ss, 0, sizeof *ss);
    ss->ss_family = (sa_family_t)af;
    void *dst = af == AF_INET ? (void *)&((struct sockaddr_in *)(void *)ss)->sin_addr
                              : (void *)&((struct sockaddr_in6 *)(void *)ss)->sin6_addr;
    return inet_pton(af, text, dst) == 1 ? 0 : -1;
}

/* Splits line[0..n) at single spaces into at most cap tokens; -1 on an empty token. */
static int v1_tokens(const char *line, size_t n, const char **tok, size_t *tlen, int cap)
{
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && line[i] != ' ')
            continue;
        if (i == start || k == cap)
            return -1;
        tok[k] = line + start;
        tlen[k++] = i - start;
        start = i + 1;
    }
    return k;
}

/* The line after "PROXY " up to (not including) its CR: line[0..n). */
static int v1_line(const char *line, size_t n, struct proxyhdr *h)
{
    if (n >= 7 && memcmp(line, "UNKNOWN", 7) == 0 && (n == 7 || line[7] == ' ')) {
        h->local = 1; /* the rest of the line is to be ignored */
        return 0;
    }
    const char *tok[5];
    size_t tlen[5];
    if (v1_tokens(line, n, tok, tlen, 5) != 5 || tlen[0] != 4)
        return PROXYHDR_E_V1_SYNTAX;
    int af;
    if (memcmp(tok[0], "TCP4", 4) == 0)
        af = AF_INET;
    else if (memcmp(tok[0], "TCP6", 4) == 0)
        af = AF_INET6;
    else
        return PROXYHDR_E_V1_SYNTAX;
    uint16_t sport, dport;
    if (v1_addr(af, tok[1], tlen[1], &h->src) || v1_addr(af, tok[2], tlen[2], &h->dst) ||
        v1_port(tok[3], tlen[3], &sport) || v1_port(tok[4], tlen[4], &dport))
        return PROXYHDR_E_V1_ADDRESS;
    set_port(&h->src, sport);
    set_port(&h->dst, dport);
    return 0;
}

static int parse_v1(const uint8_t *p, size_t len, struct proxyhdr *h)
{
    /* The CR may be at PROXYHDR_V1_BYTES_MAX - 2 at the latest: CRLF ends the line at 107. */
    size_t last = PROXYHDR_V1_BYTES_MAX - 1, scan = len < last ? len : last;
    for (size_t i = V1_PREFIX_BYTES; i < scan; i++) {
        if (p[i] == '\r') {
            if (i + 1 == len)
                return PROXYHDR_NEED_MORE;
            if (p[i + 1] != '\n')
                return PROXYHDR_E_V1_SYNTAX;
            h->version = 1;
            int rc = v1_line((const char *)p + V1_PREFIX_BYTES, i - V1_PREFIX_BYTES, h);
            if (rc)
                return rc;
            h->bytes = (uint16_t)(i + 2);
            return h->bytes;
        }
        if (p[i] < 0x20 || p[i] > 0x7E)
            return PROXYHDR_E_V1_SYNTAX; /* a bare LF, a NUL, binary: not a v1 line */
    }
    return len < last ? PROXYHDR_NEED_MORE : PROXYHDR_E_V1_TOO_LONG;
}

/* ---- v2 ------------------------------------------------------------------------------------ */

/* The address block a of a PROXY command whose family byte fam parse_v2 has checked (INET or
 * INET6 over STREAM or DGRAM, with room for the addresses). */
static void v2_addresses(uint8_t fam, const uint8_t *a, struct proxyhdr *h)
{
    h->dgram = (fam & 0x0F) == 2;
    if (fam >> 4 == 1) {
        struct sockaddr_in *s = (struct sockaddr_in *)(void *)&h->src;
        struct sockaddr_in *d = (struct sockaddr_in *)(void *)&h->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2); /* already in network order */
        memcpy(&d->sin_port, a + 10, 2);
        return;
    }
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)(void *)&h->src;
    struct sockaddr_in6 *d = (struct sockaddr_in6 *)(void *)&h->dst;
    s->sin6_family = d->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, a, 16);
    memcpy(&d->sin6_addr, a + 16, 16);
    memcpy(&s->sin6_port, a + 32, 2);
    memcpy(&d->sin6_port, a + 34, 2);
}

static int parse_v2(const uint8_t *p, size_t len, struct proxyhdr *h)
{
    /* Called with the whole signature (12 bytes); ver_cmd is decided as soon as it is in. */
    if (len > 12 && (p[12] >> 4) != 2)
        return PROXYHDR_E_V2_VERSION;
    if (len > 12 && (p[12] & 0x0F) > 1)
        return PROXYHDR_E_V2_COMMAND;
    if (len < PROXYHDR_V2_FIXED_BYTES)
        return PROXYHDR_NEED_MORE;
    uint8_t cmd = p[12] & 0x0F;
    size_t body = (size_t)p[14] << 8 | p[15];
    size_t total = PROXYHDR_V2_FIXED_BYTES + body;
    if (total > PROXYHDR_V2_BYTES_MAX)
        return PROXYHDR_E_V2_LENGTH;
    /* Decided from the fixed part, before the body is in: family and the least length. */
    uint8_t fam = p[13], family = fam >> 4;
    if (cmd == 1 && fam != 0x00) {
        if ((family != 1 && family != 2) || ((fam & 0x0F) != 1 && (fam & 0x0F) != 2))
            return PROXYHDR_E_V2_FAMILY;
        if (body < (family == 1 ? (size_t)V2_INET_BYTES : (size_t)V2_INET6_BYTES))
            return PROXYHDR_E_V2_LENGTH;
    }
    if (len < total)
        return PROXYHDR_NEED_MORE;
    h->version = 2;
    if (cmd == 0 || fam == 0x00)
        h->local = 1; /* LOCAL (the balancer itself), or PROXY of UNSPEC: the socket's address */
    else
        v2_addresses(fam, p + PROXYHDR_V2_FIXED_BYTES, h);
    h->bytes = (uint16_t)total;
    return h->bytes;
}

/* ---- both ---------------------------------------------------------------------------------- */

int proxyhdr_parse(const uint8_t *p, size_t len, struct proxyhdr *h)
{
    memset(h, 0, sizeof *h);
    if (len == 0)
        return PROXYHDR_NEED_MORE;
    if (starts_as(p, len, V2_SIG, sizeof V2_SIG))
        return len < sizeof V2_SIG ? PROXYHDR_NEED_MORE : parse_v2(p, len, h);
    if (starts_as(p, len, V1_PREFIX, V1_PREFIX_BYTES))
        return len < V1_PREFIX_BYTES ? PROXYHDR_NEED_MORE : parse_v1(p, len, h);
    return PROXYHDR_E_SIGNATURE;
}

const char *proxyhdr_result_name(int result)
{
    static const char *const names[] = {
        "need_more",  "signature",  "v1_syntax", "v1_too_long", "v1_address",
        "v2_version", "v2_command", "v2_family", "v2_length",
    };
    if (result > 0)
        return "ok";
    if (-result < (int)(sizeof names / sizeof names[0]))
        return names[-result];
    return "unknown";
}
