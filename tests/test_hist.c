/* test_hist.c — loadgen's log-linear latency histogram (loadgen/hdr_hist.h).
 *
 * Every value up to 2^22 and a sweep of larger ones land in a bucket that holds them, buckets
 * tile the range without gaps, and a bucket's width is at most 1/64 of its lowest value
 * (so the reported middle is within 0.8 %); quantiles of known distributions come out within
 * that error; merging equals recording everything in one; huge values are clamped. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loadgen/hdr_hist.h"
#include "tests/support/testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static void test_buckets_hold_their_values(void **state)
{
    (void)state;
    uint32_t prev = 0;
    for (uint64_t v = 0; v < (UINT64_C(1) << 22); v++) {
        uint32_t b = hdr_hist_bucket(v);
        assert_true(b < HDR_HIST_BUCKETS);
        assert_true(b == prev || b == prev + 1); /* no gaps, monotonic */
        prev = b;
        uint64_t low = hdr_hist_bucket_low(b), width = hdr_hist_bucket_width(b);
        assert_true(low <= v && v < low + width);
        assert_true(width == 1 || width * 64 <= low);
    }
    /* The top of the range: every power of two and its neighbours up to the clamp. */
    for (unsigned e = 22; e < HDR_HIST_EXP_MAX; e++) {
        uint64_t vs[3] = {(UINT64_C(1) << e) - 1, UINT64_C(1) << e, (UINT64_C(1) << e) + 12345};
        for (int i = 0; i < 3; i++) {
            uint32_t b = hdr_hist_bucket(vs[i]);
            assert_true(b < HDR_HIST_BUCKETS);
            assert_true(hdr_hist_bucket_low(b) <= vs[i] &&
                        vs[i] < hdr_hist_bucket_low(b) + hdr_hist_bucket_width(b));
        }
    }
    assert_int_equal(hdr_hist_bucket(UINT64_C(1) << HDR_HIST_EXP_MAX), HDR_HIST_BUCKETS - 1);
    assert_int_equal(hdr_hist_bucket(UINT64_MAX), HDR_HIST_BUCKETS - 1);
    assert_int_equal(hdr_hist_bucket((UINT64_C(1) << HDR_HIST_EXP_MAX) - 1), HDR_HIST_BUCKETS - 1);
}

static void check_near(uint64_t got, uint64_t want)
{
    double err = want ? ((double)got - (double)want) / (double)want : (double)got;
    if (err < 0)
        err = -err;
    if (err > 0.01)
        fail_msg("quantile %llu, expected %llu (error %.3f)", (unsigned long long)got,
                 (unsigned long long)want, err);
}

static void test_quantiles(void **state)
{
    (void)state;
    static struct hdr_hist h;
    hdr_hist_reset(&h);
    assert_int_equal(hdr_hist_quantile(&h, 0.5), 0);
    /* Uniform 1..100000 us. */
    for (uint64_t v = 1; v <= 100000; v++)
        hdr_hist_record(&h, v);
    assert_int_equal(h.count, 100000);
    assert_int_equal(h.max_us, 100000);
    check_near(hdr_hist_quantile(&h, 0.5), 50000);
    check_near(hdr_hist_quantile(&h, 0.9), 90000);
    check_near(hdr_hist_quantile(&h, 0.99), 99000);
    check_near(hdr_hist_quantile(&h, 0.999), 99900);
    assert_true(hdr_hist_quantile(&h, 1.0) <= 100000);
    check_near(hdr_hist_quantile(&h, 1.0), 100000);
    assert_int_equal(hdr_hist_quantile(&h, 0.0), 1);

    /* A long tail: 99 % at 2 ms, 1 % at 1.5 s. */
    hdr_hist_reset(&h);
    for (int i = 0; i < 9900; i++)
        hdr_hist_record(&h, 2000);
    for (int i = 0; i < 100; i++)
        hdr_hist_record(&h, 1500000);
    check_near(hdr_hist_quantile(&h, 0.5), 2000);
    check_near(hdr_hist_quantile(&h, 0.99), 2000);
    check_near(hdr_hist_quantile(&h, 0.995), 1500000);
    assert_int_equal(h.max_us, 1500000);
}

static void test_merge(void **state)
{
    (void)state;
    static struct hdr_hist a, b, all;
    hdr_hist_reset(&a);
    hdr_hist_reset(&b);
    hdr_hist_reset(&all);
    uint64_t seed = 5;
    for (int i = 0; i < 200000; i++) {
        uint64_t v = tu_rand_u64(&seed) % (UINT64_C(1) << (tu_rand_u64(&seed) % 30));
        hdr_hist_record(i % 3 ? &a : &b, v);
        hdr_hist_record(&all, v);
    }
    hdr_hist_merge(&a, &b);
    assert_int_equal(a.count, all.count);
    assert_int_equal(a.max_us, all.max_us);
    assert_memory_equal(a.counts, all.counts, sizeof a.counts);
    hdr_hist_reset(&b);
    hdr_hist_merge(&a, &b); /* an empty one changes nothing */
    assert_int_equal(a.count, all.count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_hold_their_values),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
