/* test_crc16.c — CRC-16/IBM (CRC-16/ARC): the catalogue check value, the worked examples of
 * TELTONIKA.md §4, the corpus crc-input rows, the table version against the bitwise reference
 * on seeded random data at every length and alignment, and incremental use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/avl.h"
#include "tests/support/testutil.h"

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
        uint16_t got = avl_crc16(0, buf, (size_t)len);
        if (got != want)
            fail_msg("uro line %s: want 0x%04lx, got 0x%04x", cols[1], want, got);
        assert_int_equal(avl_crc16_bitwise(0, buf, (size_t)len), want);
        free(buf);
        rows++;
    }
    free(text);
    /* The file holds four crc-input rows (lines 25, 29, 33, 37). */
    assert_int_equal(rows, 4);
}

/* The sliced table version must equal the bitwise reference for every length 0..300 at every
 * alignment 0..15, from any starting register value. */
static void test_table_matches_bitwise(void **state)
{
    (void)state;
    enum { LEN_MAX = 300, ALIGN_MAX = 16 };
    static uint8_t buf[LEN_MAX + ALIGN_MAX + 8];
    uint64_t rng = 0xC0DEC0DE12345678u;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)tu_rand_u64(&rng);
    for (size_t len = 0; len <= LEN_MAX; len++) {
        for (size_t off = 0; off < ALIGN_MAX; off++) {
            uint16_t seed = (uint16_t)tu_rand_u64(&rng);
            uint16_t fast0 = avl_crc16(0, buf + off, len);
            uint16_t slow0 = avl_crc16_bitwise(0, buf + off, len);
            uint16_t fast = avl_crc16(seed, buf + off, len);
            uint16_t slow = avl_crc16_bitwise(seed, buf + off, len);
            if (fast0 != slow0 || fast != slow)
                fail_msg("len %zu off %zu seed 0x%04x: table %04x/%04x bitwise %04x/%04x", len, off,
                         seed, fast0, fast, slow0, slow);
        }
        /* Fresh random bytes for the next length, so no two lengths share all their data. */
        for (size_t i = 0; i < sizeof buf; i += 8) {
            uint64_t r = tu_rand_u64(&rng);
            memcpy(buf + i, &r, sizeof buf - i < 8 ? sizeof buf - i : 8);
        }
    }
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
            assert_int_equal(avl_crc16(0, buf, len), avl_crc16_bitwise(0, buf, len));
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_value),
        cmocka_unit_test(test_table_cases),
        cmocka_unit_test(test_corpus_crc_inputs),
        cmocka_unit_test(test_table_matches_bitwise),
        cmocka_unit_test(test_table_matches_bitwise_patterns),
        cmocka_unit_test(test_incremental),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
