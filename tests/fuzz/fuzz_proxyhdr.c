/* fuzz_proxyhdr.c — libFuzzer target over the PROXY protocol header parser (proxyhdr_parse,
 * shard/proxyhdr.h): the whole input is what a peer sent first on a connection.
 *
 * Invariants (a broken one calls __builtin_trap() after printing which):
 *   - the verdict is a header length within the input and PROXYHDR_V2_BYTES_MAX (and within
 *     PROXYHDR_V1_BYTES_MAX for v1), need-more, or one of the named errors;
 *   - a header's fields agree with it: bytes == the verdict, version 1 or 2, and an address
 *     family of AF_INET / AF_INET6 for both ends unless it is local (AF_UNSPEC then);
 *   - bytes added after a header or an error never change the verdict, and every prefix is
 *     need-more or the same verdict (a sample of them for long inputs): what arrives later
 *     never changes what was decided.
 * Every buffer handed to the parser is an exactly-sized heap copy, so ASan reports any read
 * past the end. Single-threaded, as libFuzzer calls it. */
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard/proxyhdr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_proxyhdr: invariant failed at line %d: %s\n", __LINE__, #cond);  \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static int parse_copy(const uint8_t *p, size_t n, struct proxyhdr *h)
{
    uint8_t *c = malloc(n ? n : 1);
    if (!c)
        abort();
    if (n)
        memcpy(c, p, n);
    int rc = proxyhdr_parse(c, n, h);
    free(c);
    return rc;
}

static void check_header(int rc, size_t size, const struct proxyhdr *h)
{
    CHECK((size_t)rc <= size && rc <= PROXYHDR_V2_BYTES_MAX && h->bytes == rc);
    CHECK(h->version == 1 || h->version == 2);
    CHECK(h->version != 1 || rc <= PROXYHDR_V1_BYTES_MAX);
    if (h->local) {
        CHECK(h->src.ss_family == AF_UNSPEC && h->dst.ss_family == AF_UNSPEC);
    } else {
        CHECK(h->src.ss_family == AF_INET || h->src.ss_family == AF_INET6);
        CHECK(h->dst.ss_family == h->src.ss_family);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxyhdr h;
    int rc = parse_copy(data, size, &h);
    CHECK(rc >= -PROXYHDR_ERRORS);
    CHECK(strcmp(proxyhdr_result_name(rc), "unknown") != 0);
    if (rc > 0)
        check_header(rc, size, &h);
    if (rc != PROXYHDR_NEED_MORE) {
        /* A decided input: the same with a byte more, and its prefixes need more or agree. */
        uint8_t *more = malloc(size + 1);
        if (!more)
            abort();
        memcpy(more, data, size);
        more[size] = 0xA5;
        struct proxyhdr h2;
        CHECK(parse_copy(more, size + 1, &h2) == rc);
        free(more);
        size_t step = size > 256 ? size / 128 : 1;
        for (size_t n = 0; n < size; n += step) {
            int r = parse_copy(data, n, &h2);
            CHECK(r == PROXYHDR_NEED_MORE || r == rc);
        }
    }
    return 0;
}
