/* test_crc16.c — CRC-16/IBM (CRC-16/ARC): the catalogue check value, the worked examples of
 * TELTONIKA.md §4, the corpus crc-input rows, each path (avl_crc16 as dispatched, slicing-by-8,
 * and PCLMULQDQ folding where the CPU has it) against the bitwise reference on seeded random data
 * at every length 0..4096 and alignment 0..15 and on 64 KiB buffers, incremental use, and the
 * folding constants recomputed from the polynomial. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/avl.h"
#include "codec/crc16_internal.h"
#include "tests/support/testutil.h"

typedef uint16_t (*crc_fn)(uint16_t crc, const uint8_t *p, size_t n);

struct crc_path {
    const char *name;
    crc_fn fn;
};

/* Every path this CPU can run; main fills it. */
static struct crc_path crc_paths[3];
static size_t crc_paths_len;

struct crc_case {
    const char *name;
    const char *hex; /* the bytes the CRC runs over */
    uint16_t crc;
};

/* TELTONIKA.md §4 and §9: every value there was checked by an independent decoder. */
static const struct crc_case crc_cases[] = {
    {"check 123456789", "313233343536373839", 0xBB3D},
    {"empty codec 8 body (uro)", "080000", 0xC281},
    {"empty codec 8E body (uro)", "8e0000", 0x2B60},
    {"wiki codec 8 ex.1 data field",
     "08010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f01f10000601a01"
     "4e000000000000000001",
     0xC7CF},
    {"wiki codec 12 getinfo data field", "0c010500000007676574696e666f01", 0x4312},
    {"wiki codec 14 nack as published (CRC does not match its stored 0x32ac)",
     "0e0111000000080352093081452468 01", 0x635E},
    {"wiki codec 15 hello data field", "0f010b00000013654b65a4012345678912345648656c6c6f210a01",
     0x93D6},
};

/* Decodes hex that may hold spaces (for readability of the table above). */
static size_t hex_bytes(const char *hex, uint8_t *out, size_t cap)
{
    char compact[1024];
    size_t n = 0;
    for (const char *p = hex; *p; p++)
        if (*p != ' ') {
            assert_true(n + 1 < sizeof compact);
            compact[n++] = *p;
        }
    long len = tu_hex_decode(compact, n, out, cap);
    assert_true(len >= 0);
    return (size_t)len;
}

static void test_table_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof crc_cases / sizeof crc_cases[0]; i++) {
        const struct crc_case *c = &crc_cases[i];
        uint8_t buf[512];
        size_t n = hex_bytes(c->hex, buf, sizeof buf);
        uint16_t fast = avl_crc16(0, buf, n);
        uint16_t slow = avl_crc16_bitwise(0, buf, n);
        if (fast != c->crc || slow != c->crc)
            fail_msg("%s: want 0x%04x, table 0x%04x, bitwise 0x%04x", c->name, c->crc, fast, slow);
    }
}

/* The vectors above through one forced path: as they are, and behind 1..64 random bytes (so
 * their bytes reach the folding too, not only the short-input path), whole and continued. */
static void check_path_on_vectors(const char *name, crc_fn fn)
{
    enum { PAD = 64 };
    uint8_t buf[PAD + 512];
    uint64_t rng = 0x5EED;
    for (size_t i = 0; i < sizeof crc_cases / sizeof crc_cases[0]; i++) {
        const struct crc_case *c = &crc_cases[i];
        uint8_t *v = buf + PAD;
        size_t n = hex_bytes(c->hex, v, sizeof buf - PAD);
        uint16_t got = fn(0, v, n);
        if (got != c->crc)
            fail_msg("%s: %s: want 0x%04x, got 0x%04x", name, c->name, c->crc, got);
        for (size_t pre = 1; pre <= PAD; pre++) {
            v[-(ptrdiff_t)pre] = (uint8_t)tu_rand_u64(&rng);
            uint16_t head = avl_crc16_bitwise(0, v - pre, pre);
            uint16_t whole = avl_crc16_bitwise(0, v - pre, pre + n);
            if (fn(0, v - pre, pre + n) != whole || fn(head, v, n) != whole)
                fail_msg("%s: %s behind %zu bytes: want 0x%04x, got 0x%04x / 0x%04x", name, c->name,
                         pre, whole, fn(0, v - pre, pre + n), fn(head, v, n));
        }
    }
}

static void test_slice8_path(void **state)
{
    (void)state;
    check_path_on_vectors("slice8", avl_crc16_slice8);
}

static void test_clmul_path(void **state)
{
    (void)state;
#if AVL_CRC16_CLMUL
    if (!avl_crc16_clmul_supported()) {
        print_message("skipped: this CPU has no PCLMULQDQ/SSE4.1, so only slicing-by-8 runs\n");
        skip();
    }
    check_path_on_vectors("clmul", avl_crc16_clmul);
#else
    print_message("skipped: no PCLMULQDQ path on this architecture\n");
    skip();
#endif
}

static void test_check_value(void **state)
{
    (void)state;
    const char *check = "123456789";
    assert_int_equal(avl_crc16(0, (const uint8_t *)check, strlen(check)), 0xBB3D);
    assert_int_equal(avl_crc16_bitwise(0, (const uint8_t *)check, strlen(check)), 0xBB3D);
    /* No bytes leave the register alone, whatever it holds. */
    assert_int_equal(avl_crc16(0, NULL, 0), 0);
    assert_int_equal(avl_crc16(0x1234, (const uint8_t *)check, 0), 0x1234);
}

/* The corpus rows of kind crc-input are data fields with the CRC the source test expects,
 * written in the expect column as "... = 0xNNNN". */
static void test_corpus_crc_inputs(void **state)
{
    (void)state;
    char path[4096];
    tu_shared_path(path, sizeof path, "corpus/uro_teltonika-fm-parser.tsv");
    char *text = tu_read_file(path, NULL);
    int rows = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *cols[8];
        int n = tu_split_tsv(line, cols, 8);
        if (n < 7 || strcmp(cols[3], "crc-input") != 0)
            continue;
        const char *eq = strstr(cols[6], "= 0x");
        assert_non_null(eq);
        unsigned long want = strtoul(eq + 4, NULL, 16);
        size_t hex_len = strlen(cols[5]);
        uint8_t *buf = malloc(hex_len / 2 + 1);
        long len = tu_hex_decode(cols[5], hex_len, buf, hex_len / 2 + 1);
        assert_true(len > 0);
        for (size_t k = 0; k < crc_paths_len; k++) {
            uint16_t got = crc_paths[k].fn(0, buf, (size_t)len);
            if (got != want)
                fail_msg("%s: uro line %s: want 0x%04lx, got 0x%04x", crc_paths[k].name, cols[1],
                         want, got);
        }
        assert_int_equal(avl_crc16_bitwise(0, buf, (size_t)len), want);
        free(buf);
        rows++;
    }
    free(text);
    /* The file holds four crc-input rows (lines 25, 29, 33, 37). */
    assert_int_equal(rows, 4);
}

/* Every path equals the bitwise reference for every length 0..4096 at every alignment 0..15,
 * from register 0 and from a random one. The buffer is fresh random bytes for each alignment;
 * the reference for all lengths at once is the bitwise CRC run one byte further each time. */
static void test_paths_match_bitwise(void **state)
{
    (void)state;
    enum { LEN_MAX = 4096, ALIGN_MAX = 16 };
    static uint8_t buf[LEN_MAX + ALIGN_MAX];
    static uint16_t want[2][LEN_MAX + 1];
    uint64_t rng = 0xC0DEC0DE12345678u;
    for (size_t off = 0; off < ALIGN_MAX; off++) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = (uint8_t)tu_rand_u64(&rng);
        const uint8_t *p = buf + off;
        const uint16_t seeds[2] = {0, (uint16_t)tu_rand_u64(&rng)};
        for (int s = 0; s < 2; s++) {
            want[s][0] = seeds[s];
            for (size_t len = 1; len <= LEN_MAX; len++)
                want[s][len] = avl_crc16_bitwise(want[s][len - 1], p + len - 1, 1);
        }
        assert_int_equal(want[1][LEN_MAX], avl_crc16_bitwise(seeds[1], p, LEN_MAX));
        for (size_t k = 0; k < crc_paths_len; k++)
            for (int s = 0; s < 2; s++)
                for (size_t len = 0; len <= LEN_MAX; len++) {
                    uint16_t got = crc_paths[k].fn(seeds[s], p, len);
                    if (got != want[s][len])
                        fail_msg("%s: len %zu off %zu seed 0x%04x: want 0x%04x, got 0x%04x",
                                 crc_paths[k].name, len, off, seeds[s], want[s][len], got);
                }
    }
}

/* A few 64 KiB buffers (and a byte either side of that), whole and in two uneven pieces. */
static void test_paths_match_bitwise_64k(void **state)
{
    (void)state;
    enum { BIG = 65536 + 1 };
    uint8_t *buf = malloc(BIG);
    assert_non_null(buf);
    uint64_t rng = 0xB16B00B5;
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < BIG; i++)
            buf[i] = (uint8_t)tu_rand_u64(&rng);
        uint16_t seed = (uint16_t)tu_rand_u64(&rng);
        for (size_t len = BIG - 2; len <= BIG; len++) {
            uint16_t want = avl_crc16_bitwise(seed, buf, len);
            size_t cut = (size_t)(tu_rand_u64(&rng) % len);
            for (size_t k = 0; k < crc_paths_len; k++) {
                crc_fn fn = crc_paths[k].fn;
                if (fn(seed, buf, len) != want ||
                    fn(fn(seed, buf, cut), buf + cut, len - cut) != want)
                    fail_msg("%s: round %d len %zu cut %zu", crc_paths[k].name, round, len, cut);
            }
        }
    }
    free(buf);
}

/* The tiny reference the folding constants are checked against: polynomials over GF(2) in
 * ordinary bit order (bit d is the coefficient of x^d), P = 0x18005. */
enum { CRC_P = 0x18005 };

static uint32_t xk_mod_p(unsigned k)
{
    uint32_t r = 1;
    while (k--) {
        r <<= 1;
        if (r & 0x10000)
            r ^= CRC_P;
    }
    return r;
}

/* A polynomial of degree < 64 as a PCLMULQDQ operand: x^d at bit 63 - d. */
static uint64_t reflect64(uint64_t v)
{
    uint64_t r = 0;
    for (int d = 0; d < 64; d++)
        if (v >> d & 1)
            r |= 1ull << (63 - d);
    return r;
}

/* floor(x^80 / P) by long division, one dividend bit at a time (subtracting P * x^d sets the
 * quotient's x^d): its x^64 term in *top, the rest returned. */
static uint64_t mu_80(unsigned *top)
{
    uint32_t rem = 0;
    uint64_t q = 0;
    *top = 0;
    for (int d = 80; d >= 0; d--) {
        rem = rem << 1 | (d == 80);
        int bit = (rem & 0x10000) != 0;
        if (bit)
            rem ^= CRC_P;
        if (d == 64)
            *top = (unsigned)bit;
        else if (d < 64)
            q = q << 1 | (uint64_t)bit;
    }
    return q;
}

static void test_clmul_constants(void **state)
{
    (void)state;
    const struct avl_crc16_clmul_consts *k = &avl_crc16_clmul_k;
    const struct {
        const char *name;
        uint64_t have;
        unsigned power;
    } folds[] = {
        {"fold_512[0]", k->fold_512[0], 575}, {"fold_512[1]", k->fold_512[1], 511},
        {"fold_384[0]", k->fold_384[0], 447}, {"fold_384[1]", k->fold_384[1], 383},
        {"fold_256[0]", k->fold_256[0], 319}, {"fold_256[1]", k->fold_256[1], 255},
        {"fold_128[0]", k->fold_128[0], 191}, {"fold_128[1]", k->fold_128[1], 127},
        {"fold_80", k->fold_80, 79},
    };
    for (size_t i = 0; i < sizeof folds / sizeof folds[0]; i++) {
        uint64_t want = reflect64(xk_mod_p(folds[i].power));
        if (folds[i].have != want)
            fail_msg("%s: want x^%u mod P = 0x%016llx, have 0x%016llx", folds[i].name,
                     folds[i].power, (unsigned long long)want, (unsigned long long)folds[i].have);
    }
    /* The reference itself: x^16 mod P is P without its x^16 term. */
    assert_int_equal(xk_mod_p(16), CRC_P ^ 0x10000);
    unsigned top;
    uint64_t mu = mu_80(&top);
    assert_int_equal(top, 1); /* deg floor(x^80 / P) = 64 */
    assert_true(k->barrett_mu == reflect64(mu));
    /* mu * P = x^80 + (something of degree < 16): the division's defining property. */
    uint64_t hi = 0, lo = 0; /* mu * P over 81 bits, x^64.. in hi */
    for (int d = 0; d <= 16; d++)
        if (CRC_P >> d & 1) {
            lo ^= d ? mu << d : mu;
            hi ^= (d ? mu >> (64 - d) : 0) ^ (1ull << d);
        }
    assert_true(hi == 1ull << 16 && lo >> 16 == 0);
    assert_true(k->poly == reflect64(CRC_P));
}

/* Bit patterns that stress the table: all zeros, all ones, single bits. */
static void test_table_matches_bitwise_patterns(void **state)
{
    (void)state;
    uint8_t buf[64];
    for (int pattern = 0; pattern < 3; pattern++) {
        for (size_t len = 0; len <= sizeof buf; len++) {
            memset(buf, pattern == 1 ? 0xFF : 0x00, sizeof buf);
            if (pattern == 2 && len > 0)
                buf[len - 1] = 0x80;
            for (size_t k = 0; k < crc_paths_len; k++)
                assert_int_equal(crc_paths[k].fn(0, buf, len), avl_crc16_bitwise(0, buf, len));
        }
    }
    /* A single flipped bit always changes a CRC-16 (it detects all 1-bit errors). */
    uint64_t rng = 7;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)tu_rand_u64(&rng);
    uint16_t base = avl_crc16(0, buf, sizeof buf);
    for (size_t bit = 0; bit < 8 * sizeof buf; bit++) {
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        assert_int_not_equal(avl_crc16(0, buf, sizeof buf), base);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

/* crc16(crc16(0, a), b) == crc16(0, a || b) for every split point. */
static void test_incremental(void **state)
{
    (void)state;
    enum { LEN = 257 };
    uint8_t buf[LEN];
    uint64_t rng = 0xFEEDFACE;
    for (int round = 0; round < 8; round++) {
        for (size_t i = 0; i < LEN; i++)
            buf[i] = (uint8_t)tu_rand_u64(&rng);
        uint16_t whole = avl_crc16(0, buf, LEN);
        assert_int_equal(whole, avl_crc16_bitwise(0, buf, LEN));
        for (size_t cut = 0; cut <= LEN; cut++) {
            uint16_t a = avl_crc16(0, buf, cut);
            assert_int_equal(avl_crc16(a, buf + cut, LEN - cut), whole);
            uint16_t b = avl_crc16_bitwise(0, buf, cut);
            assert_int_equal(avl_crc16_bitwise(b, buf + cut, LEN - cut), whole);
        }
        /* Three pieces, and byte at a time. */
        size_t c1 = (size_t)(tu_rand_u64(&rng) % LEN), c2 = c1 + (LEN - c1) / 2;
        uint16_t crc = avl_crc16(0, buf, c1);
        crc = avl_crc16(crc, buf + c1, c2 - c1);
        crc = avl_crc16(crc, buf + c2, LEN - c2);
        assert_int_equal(crc, whole);
        crc = 0;
        for (size_t i = 0; i < LEN; i++)
            crc = avl_crc16(crc, buf + i, 1);
        assert_int_equal(crc, whole);
    }
}

int main(void)
{
    crc_paths[crc_paths_len++] = (struct crc_path){"avl_crc16", avl_crc16};
    crc_paths[crc_paths_len++] = (struct crc_path){"slice8", avl_crc16_slice8};
#if AVL_CRC16_CLMUL
    if (avl_crc16_clmul_supported())
        crc_paths[crc_paths_len++] = (struct crc_path){"clmul", avl_crc16_clmul};
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_value),
        cmocka_unit_test(test_table_cases),
        cmocka_unit_test(test_slice8_path),
        cmocka_unit_test(test_clmul_path),
        cmocka_unit_test(test_clmul_constants),
        cmocka_unit_test(test_corpus_crc_inputs),
        cmocka_unit_test(test_paths_match_bitwise),
        cmocka_unit_test(test_paths_match_bitwise_64k),
        cmocka_unit_test(test_table_matches_bitwise_patterns),
        cmocka_unit_test(test_incremental),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
