/* test_dedup.c — duplicate-detection windows (gateway/dedup.h) and the IMEI map
 * (gateway/imap.h): the window's order and wrap-around, removal keeping order, the bytea text
 * form read back as the database gives it, what changes a record's fingerprint, the pool's
 * handles; the map's insert, replace and backward-shift delete against a plain model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/dedup.h"
#include "gateway/imap.h"

/* The window's fingerprints, oldest first, into out; returns how many. */
static unsigned window(const struct dedup *d, uint64_t *out)
{
    for (unsigned i = 0; i < d->len; i++)
        out[i] = dedup_at(d, i);
    return d->len;
}

static void test_push_keeps_order_and_wraps(void **state)
{
    (void)state;
    struct dedup d = {0};
    uint64_t got[DEDUP_FP_MAX] = {0};
    for (uint64_t fp = 1; fp <= 10; fp++)
        dedup_push(&d, fp);
    assert_int_equal(window(&d, got), 10);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(got[i], i + 1);
    /* Past DEDUP_FP_MAX the oldest go: 1..10 then up to 100 leaves the last 64. */
    for (uint64_t fp = 11; fp <= 100; fp++)
        dedup_push(&d, fp);
    assert_int_equal(window(&d, got), DEDUP_FP_MAX);
    for (unsigned i = 0; i < DEDUP_FP_MAX; i++)
        assert_int_equal(got[i], 100 - DEDUP_FP_MAX + 1 + i);
    assert_false(dedup_has(&d, 100 - DEDUP_FP_MAX));
    assert_true(dedup_has(&d, 100 - DEDUP_FP_MAX + 1));
    assert_true(dedup_has(&d, 100));
    assert_false(dedup_has(&d, 0));
}

static void test_remove_keeps_the_others_in_order(void **state)
{
    (void)state;
    struct {
        const char *name;
        unsigned pushed;     /* fingerprints 1..pushed */
        uint64_t remove[4];  /* 0 ends */
        unsigned kept;       /* how many remain */
        uint64_t first_kept; /* the oldest that remains */
    } cases[] = {
        {"middle ones", 10, {3, 7}, 8, 1},
        {"the oldest", 10, {1}, 9, 2},
        {"the newest", 10, {10}, 9, 1},
        {"absent ones", 10, {42, 43}, 10, 1},
        {"all of a wrapped window", 70, {7, 8, 9, 10}, DEDUP_FP_MAX - 4, 11},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct dedup d = {0};
        for (uint64_t fp = 1; fp <= cases[c].pushed; fp++)
            dedup_push(&d, fp);
        uint32_t n = 0;
        while (n < 4 && cases[c].remove[n])
            n++;
        dedup_remove(&d, cases[c].remove, n);
        uint64_t got[DEDUP_FP_MAX] = {0};
        unsigned len = window(&d, got);
        if (len != cases[c].kept || got[0] != cases[c].first_kept)
            fail_msg("%s: %u kept from %llu", cases[c].name, len, (unsigned long long)got[0]);
        for (unsigned i = 1; i < len; i++)
            assert_true(got[i] > got[i - 1]); /* still oldest first */
        for (uint32_t k = 0; k < n; k++)
            assert_false(dedup_has(&d, cases[c].remove[k]));
        /* And the window goes on from there as a window. */
        dedup_push(&d, 1000);
        assert_int_equal(dedup_at(&d, d.len - 1), 1000);
    }
}

static void test_from_text(void **state)
{
    (void)state;
    char long_text[2 + 16 * (DEDUP_FP_MAX + 3) + 1];
    memcpy(long_text, "\\x", 2);
    for (unsigned i = 0; i < DEDUP_FP_MAX + 3; i++)
        snprintf(long_text + 2 + 16 * i, 17, "%016x", i + 1);
    struct {
        const char *name;
        const char *text;
        unsigned len;
        uint64_t first, last;
    } cases[] = {
        {"NULL", NULL, 0, 0, 0},
        {"empty bytea", "\\x", 0, 0, 0},
        {"not hex output", "abc", 0, 0, 0},
        {"one", "\\x00000000000000ff", 1, 0xff, 0xff},
        {"two, big-endian", "\\x0102030405060708a1a2a3a4a5a6a7a8", 2, 0x0102030405060708,
         0xa1a2a3a4a5a6a7a8},
        {"a partial fingerprint is ignored", "\\x00000000000000010002", 1, 1, 1},
        {"upper case is not bytea's output: stops", "\\x00000000000000010000000000000A00", 1, 1, 1},
        {"more than the window keeps the first", long_text, DEDUP_FP_MAX, 1, DEDUP_FP_MAX},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct dedup d;
        memset(&d, 0xAB, sizeof d);
        dedup_from_text(&d, cases[c].text);
        if (d.len != cases[c].len)
            fail_msg("%s: %u fingerprints", cases[c].name, d.len);
        if (d.len &&
            (dedup_at(&d, 0) != cases[c].first || dedup_at(&d, d.len - 1) != cases[c].last))
            fail_msg("%s: %llx .. %llx", cases[c].name, (unsigned long long)dedup_at(&d, 0),
                     (unsigned long long)dedup_at(&d, d.len - 1));
    }
}

static struct avl_record base_record(const uint8_t *io, uint32_t io_bytes)
{
    return (struct avl_record){.ts_ms = 1700000000123ull,
                               .lon_e7 = 251234567,
                               .lat_e7 = 546543210,
                               .altitude_m = 120,
                               .angle_deg = 270,
                               .speed_kmh = 55,
                               .satellites = 9,
                               .priority = 1,
                               .event_id = 239,
                               .generation = 0xFF,
                               .codec = AVL_CODEC_8E,
                               .io_total = 1,
                               .io_bytes = io_bytes,
                               .io = io};
}

static void test_fingerprint_sees_every_field(void **state)
{
    (void)state;
    uint8_t io[8] = {0, 1, 0, 1, 0xEF, 1, 0, 0};
    uint8_t io_copy[8];
    memcpy(io_copy, io, sizeof io);
    struct avl_record a = base_record(io, sizeof io);
    struct avl_record same = base_record(io_copy, sizeof io_copy); /* equal bytes elsewhere */
    assert_int_equal(dedup_fp(&a), dedup_fp(&same));
    uint64_t fp = dedup_fp(&a);
    struct avl_record v[13];
    for (int i = 0; i < 13; i++)
        v[i] = a;
    v[0].ts_ms++;
    v[1].lon_e7++;
    v[2].lat_e7++;
    v[3].altitude_m++;
    v[4].angle_deg++;
    v[5].speed_kmh++;
    v[6].satellites++;
    v[7].priority++;
    v[8].event_id++;
    v[9].generation = 1;
    v[10].codec = AVL_CODEC_16;
    v[11].io_bytes = sizeof io - 1;
    uint8_t io_other[8];
    memcpy(io_other, io, sizeof io);
    io_other[7] = 1;
    v[12].io = io_other;
    for (int i = 0; i < 13; i++)
        if (dedup_fp(&v[i]) == fp)
            fail_msg("changing field %d left the fingerprint as it was", i);
}

static void test_pool_handles(void **state)
{
    (void)state;
    struct dedup_pool p;
    assert_int_equal(dedup_pool_init(&p, 3), 0);
    uint32_t a = 0, b = 0, c = 0;
    struct dedup *wa = dedup_win_mut(&p, &a);
    assert_int_equal(a, 1); /* the lowest index first: the resident end */
    assert_int_equal(wa->len, 0);
    dedup_push(wa, 77);
    assert_true(dedup_win_mut(&p, &a) == wa); /* a held window is kept, fingerprints and all */
    assert_true(dedup_has(wa, 77));
    dedup_win_mut(&p, &b);
    dedup_win_mut(&p, &c);
    assert_int_equal(p.free_len, 0);
    assert_true(a != b && b != c && a != c);
    dedup_win_drop(&p, &b);
    assert_int_equal(b, 0);
    dedup_win_drop(&p, &b); /* none held: nothing happens */
    assert_int_equal(p.free_len, 1);
    /* A window handed out again is empty. */
    dedup_push(dedup_win_mut(&p, &b), 5);
    dedup_win_drop(&p, &b);
    assert_int_equal(dedup_win_mut(&p, &b)->len, 0);
    /* set: a copy, or none held for an empty source. */
    struct dedup src = {0};
    dedup_push(&src, 9);
    dedup_win_set(&p, &c, &src);
    assert_true(dedup_has(dedup_win_mut(&p, &c), 9));
    struct dedup empty = {0};
    dedup_win_set(&p, &c, &empty);
    assert_int_equal(c, 0);
    assert_int_equal(p.free_len, 1);
    dedup_pool_destroy(&p);
}

/* The map against a plain array model, through inserts, replacements and deletes that make long
 * probe runs in a small table (the backward shift must keep every key reachable). */
static void test_imap_matches_a_model(void **state)
{
    (void)state;
    enum { CELLS = 64, KEYS = 200, STEPS = 20000 };
    uint64_t keys[CELLS] = {0};
    uint32_t slots[CELLS] = {0};
    struct imap m = {keys, slots, CELLS - 1};
    int64_t model[KEYS];
    for (int i = 0; i < KEYS; i++)
        model[i] = -1;
    unsigned held = 0;
    uint64_t x = 12345;
    for (int step = 0; step < STEPS; step++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t imei = 350000000000000ull + (x >> 33) % KEYS;
        int k = (int)(imei - 350000000000000ull);
        if ((x >> 20) % 3 == 0 || held >= CELLS / 2) {
            held -= model[k] >= 0;
            imap_del(&m, imei);
            model[k] = -1;
        } else {
            held += model[k] < 0;
            imap_put(&m, imei, (uint32_t)step);
            model[k] = step;
        }
        for (int i = 0; i < KEYS; i++)
            if (imap_get(&m, 350000000000000ull + (uint64_t)i) != model[i])
                fail_msg("step %d: imei #%d maps to %lld, want %lld", step, i,
                         (long long)imap_get(&m, 350000000000000ull + (uint64_t)i),
                         (long long)model[i]);
    }
    assert_true(held > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_keeps_order_and_wraps),
        cmocka_unit_test(test_remove_keeps_the_others_in_order),
        cmocka_unit_test(test_from_text),
        cmocka_unit_test(test_fingerprint_sees_every_field),
        cmocka_unit_test(test_pool_handles),
        cmocka_unit_test(test_imap_matches_a_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
