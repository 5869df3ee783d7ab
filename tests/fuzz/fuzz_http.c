/* fuzz_http.c — libFuzzer target over the metrics endpoint's HTTP request reader
 * (metrics_request_parse, gateway/metrics.h): the whole input is what a client sent.
 *
 * Invariants (a broken one calls __builtin_trap() after printing which):
 *   - the verdict is need-more (only below METRICS_REQUEST_BYTES_MAX bytes), too_large (only at
 *     or above it), bad_request, or a head length within the input and the limit; every error
 *     is a named one;
 *   - a whole head ends with LF, holds no NUL, and its method and target say what its first
 *     line says: GET / HEAD exactly when the line starts "GET " / "HEAD ", the path is the
 *     target up to '?', inside the head, and names /metrics or /healthz exactly when it is one;
 *   - the head alone gives the same verdict, and so does the input with bytes added after it;
 *   - every prefix of the input (a sample of them for inputs above 512 bytes) is need-more or
 *     the same verdict: what arrives later never changes it.
 * Every buffer handed to the reader is an exactly-sized heap copy, so ASan reports any read
 * past the end. Single-threaded, as libFuzzer calls it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http: invariant failed at line %d: %s\n", __LINE__, #cond);      \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static char *heap_copy(const void *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    if (!c)
        abort();
    if (n)
        memcpy(c, p, n);
    return c;
}

/* metrics_request_parse on an exact copy of p[0 .. n); the path comes back as an offset. */
static int parse_copy(const char *p, size_t n, struct metrics_request *r, size_t *path_off)
{
    char *c = heap_copy(p, n);
    int rc = metrics_request_parse(c, n, r);
    if (rc > 0) {
        CHECK(r->path > c && r->path + r->path_len <= c + rc);
        *path_off = (size_t)(r->path - c);
    }
    free(c);
    return rc;
}

static bool starts(const char *p, size_t n, const char *s)
{
    size_t k = strlen(s);
    return n >= k && memcmp(p, s, k) == 0;
}

/* What a whole head must say of itself. */
static void check_head(const char *p, int rc, const struct metrics_request *r, size_t path_off)
{
    size_t head = (size_t)rc;
    CHECK(head >= 2 && head <= METRICS_REQUEST_BYTES_MAX && p[head - 1] == '\n');
    CHECK(memchr(p, '\0', head) == NULL);
    CHECK((r->method == METRICS_METHOD_GET) == starts(p, head, "GET "));
    CHECK((r->method == METRICS_METHOD_HEAD) == starts(p, head, "HEAD "));
    size_t line = strcspn(p, "\r\n");
    CHECK(path_off > 1 && path_off <= line && p[path_off - 1] == ' ');
    CHECK(memchr(p, ' ', path_off - 1) == NULL); /* the method has no space */
    CHECK(r->path_len <= line - path_off);
    for (size_t i = 0; i < r->path_len; i++)
        CHECK(p[path_off + i] != '?' && p[path_off + i] != ' ' && p[path_off + i] != '\r' &&
              p[path_off + i] != '\n');
    const char *path = p + path_off;
    CHECK((r->target == METRICS_TARGET_METRICS) ==
          (r->path_len == 8 && memcmp(path, "/metrics", 8) == 0));
    CHECK((r->target == METRICS_TARGET_HEALTHZ) ==
          (r->path_len == 8 && memcmp(path, "/healthz", 8) == 0));
}

/* The same verdict and, for a whole head, the same request. */
static void check_same(int rc, const struct metrics_request *r, size_t off, int rc2,
                       const struct metrics_request *r2, size_t off2)
{
    CHECK(rc2 == rc);
    if (rc > 0)
        CHECK(r2->method == r->method && r2->target == r->target && off2 == off &&
              r2->path_len == r->path_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    struct metrics_request r, r2;
    size_t off = 0, off2 = 0;
    int rc = parse_copy(p, size, &r, &off);
    CHECK(rc == METRICS_REQ_NEED_MORE || rc == METRICS_REQ_E_TOO_LARGE || rc == METRICS_REQ_E_BAD ||
          (rc > 0 && (size_t)rc <= size));
    CHECK(rc >= 0 || strcmp(metrics_request_strerror(rc), "unknown_error") != 0);
    CHECK(rc != METRICS_REQ_NEED_MORE || size < METRICS_REQUEST_BYTES_MAX);
    CHECK(rc != METRICS_REQ_E_TOO_LARGE || size >= METRICS_REQUEST_BYTES_MAX);
    if (rc > 0) {
        check_head(p, rc, &r, off);
        check_same(rc, &r, off, parse_copy(p, (size_t)rc, &r2, &off2), &r2, off2);
    }
    /* More bytes after the input: a verdict stands. */
    if (rc != METRICS_REQ_NEED_MORE) {
        char *longer = malloc(size + 7);
        if (!longer)
            abort();
        memcpy(longer, p, size);
        memcpy(longer + size, "\r\n\r\nX\0\n", 7);
        check_same(rc, &r, off, parse_copy(longer, size + 7, &r2, &off2), &r2, off2);
        free(longer);
    }
    /* Prefixes: need more, or already this verdict. */
    for (size_t k = 0; k < size; k++) {
        if (size > 512 && k > 64 && k + 2 < size && k != size / 2 &&
            (rc <= 0 || (k + 1 != (size_t)rc && k != (size_t)rc)))
            continue; /* long inputs: the start, the middle, around the head's end, the end */
        int rk = parse_copy(p, k, &r2, &off2);
        if (rk == METRICS_REQ_NEED_MORE)
            continue;
        check_same(rc, &r, off, rk, &r2, off2);
        CHECK(rk <= 0 || k >= (size_t)rk);
    }
    return 0;
}
