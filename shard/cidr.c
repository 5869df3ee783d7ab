/* cidr.c — address ranges (cidr.h). */
#include "shard/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

/* Whether the first `bits` bits of a and b agree. */
static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xFF << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

/* Whether the bits of a past `bits` (of `bytes` bytes) are all zero. */
static bool host_bits_zero(const uint8_t *a, unsigned bytes, unsigned bits)
{
    for (unsigned i = bits; i < bytes * 8; i++)
        if ((a[i / 8] >> (7 - i % 8)) & 1)
            return false;
    return true;
}

/* One range, the n bytes at s ("addr" or "addr/bits"). */
static int parse_one(const char *s, size_t n, struct cidr_range *r, char *err, size_t err_cap)
{
    char text[INET6_ADDRSTRLEN + 8];
    if (n == 0 || n >= sizeof text) {
        snprintf(err, err_cap, "'%.*s': not an address or range", (int)(n < 64 ? n : 64), s);
        return -1;
    }
    memcpy(text, s, n);
    text[n] = '\0';
    char *slash = strchr(text, '/');
    if (slash)
        *slash = '\0';
    r->family = strchr(text, ':') ? AF_INET6 : AF_INET;
    unsigned max = r->family == AF_INET ? 32 : 128;
    memset(r->addr, 0, sizeof r->addr);
    if (inet_pton(r->family, text, r->addr) != 1) {
        snprintf(err, err_cap, "'%s': not an IPv4 or IPv6 address", text);
        return -1;
    }
    r->bits = (uint8_t)max;
    if (slash) {
        const char *b = slash + 1;
        unsigned v = 0;
        size_t len = strlen(b);
        for (size_t i = 0; i < len && i < 3 && b[i] >= '0' && b[i] <= '9'; i++)
            v = v * 10 + (unsigned)(b[i] - '0');
        if (len == 0 || len > 3 || (len > 1 && b[0] == '0') || strspn(b, "0123456789") != len ||
            v > max) {
            snprintf(err, err_cap, "'%s/%s': the prefix must be 0..%u", text, b, max);
            return -1;
        }
        r->bits = (uint8_t)v;
    }
    if (!host_bits_zero(r->addr, max / 8, r->bits)) {
        snprintf(err, err_cap, "'%s/%u': bits set past the prefix", text, r->bits);
        return -1;
    }
    return 0;
}

int cidr_parse(const char *text, struct cidr_list *l, char *err, size_t err_cap)
{
    memset(l, 0, sizeof *l);
    const char *p = text;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (l->len == CIDR_RANGES_MAX) {
            snprintf(err, err_cap, "more than %d ranges", CIDR_RANGES_MAX);
            return -1;
        }
        if (parse_one(p, n, &l->r[l->len], err, err_cap) != 0)
            return -1;
        l->len++;
        if (p[n] == '\0')
            return 0;
        p += n + 1;
    }
}

bool cidr_match(const struct cidr_list *l, const struct sockaddr *sa)
{
    uint8_t v4[4], v6[16];
    bool have4 = false, have6 = false;
    if (sa->sa_family == AF_INET) {
        memcpy(v4, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        have4 = true;
    } else if (sa->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        have6 = true;
        if (memcmp(v6, V4_MAPPED, sizeof V4_MAPPED) == 0) {
            memcpy(v4, v6 + 12, 4);
            have4 = true;
        }
    }
    for (unsigned i = 0; i < l->len; i++) {
        const struct cidr_range *r = &l->r[i];
        if (r->family == AF_INET && have4 && prefix_equal(v4, r->addr, r->bits))
            return true;
        if (r->family == AF_INET6 && have6 && prefix_equal(v6, r->addr, r->bits))
            return true;
    }
    return false;
}
