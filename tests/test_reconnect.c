/* test_reconnect.c — the links' reconnect bookkeeping (gateway/reconnect.h), table-driven:
 * the delay range of every attempt, the ceiling, the count restarting after a stable link, the
 * jitter's bounds and its exact values for a seed (splitmix64, the sequence pgsink and
 * redislink have always drawn), the connect deadline and the last error. No clock, no sockets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "gateway/reconnect.h"
#include "tests/support/testutil.h"

enum { ATTEMPTS_MAX = 12 };

/* ---- the delay of each consecutive failure ------------------------------------------------ */

struct delay_case {
    const char *name;
    uint32_t min_ms, max_ms; /* as configured (0: default) */
    uint32_t want_min_ms, want_max_ms;
    /* the ceiling of the k-th consecutive failure's delay: min(max, min * 2^k) */
    uint32_t ceiling_ms[ATTEMPTS_MAX];
    int attempts;
};

static const struct delay_case delay_cases[] = {
    {"defaults", 0, 0, 100, 5000, {100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}, 9},
    {"the tests' 20..200", 20, 200, 20, 200, {20, 40, 80, 160, 200, 200, 200}, 7},
    {"max not a power of two of min", 40, 400, 40, 400, {40, 80, 160, 320, 400, 400}, 6},
    {"odd values", 3, 10, 3, 10, {3, 6, 10, 10, 10}, 5},
    {"min equals max", 250, 250, 250, 250, {250, 250, 250}, 3},
    {"one millisecond", 1, 1, 1, 1, {1, 1, 1, 1}, 4},
    {"ceiling below min is raised", 8000, 0, 8000, 8000, {8000, 8000, 8000}, 3},
    {"default min, small max", 0, 150, 100, 150, {100, 150, 150}, 3},
};

/* Each consecutive failure's delay, against its range and against the exact draw: delay
 * - delay/2 + splitmix64 % (delay/2 + 1), from the seed's sequence (tu_rand_u64 is splitmix64
 * too, written independently). */
static void test_delay_per_attempt(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof delay_cases / sizeof delay_cases[0]; c++) {
        const struct delay_case *dc = &delay_cases[c];
        for (uint64_t seed = 1; seed <= 50; seed++) {
            struct reconnect_policy p;
            reconnect_policy_init(&p, dc->min_ms, dc->max_ms, 1000, seed, NULL);
            assert_int_equal(p.backoff_min_ms, dc->want_min_ms);
            assert_int_equal(p.backoff_max_ms, dc->want_max_ms);
            struct reconnect r;
            memset(&r, 0, sizeof r);
            uint64_t mirror = seed;
            uint64_t now = 1000;
            for (int k = 0; k < dc->attempts; k++) {
                uint32_t d = dc->ceiling_ms[k];
                uint32_t got = reconnect_backoff_ms(&r, &p, now);
                if (got > d || got < d - d / 2)
                    fail_msg("%s seed %u attempt %d: %u ms outside [%u, %u]", dc->name,
                             (unsigned)seed, k, got, d - d / 2, d);
                assert_int_equal(got, d - d / 2 + tu_rand_u64(&mirror) % (d / 2 + 1));
                assert_int_equal(r.attempts, k + 1);
                assert_int_equal(r.up_since_ms, 0);
                now += got;
            }
        }
    }
}

/* Many failures stay at the ceiling, and the count saturates instead of wrapping. */
static void test_ceiling(void **state)
{
    (void)state;
    struct reconnect_policy p;
    reconnect_policy_init(&p, 100, 5000, 1000, 7, NULL);
    struct reconnect r;
    memset(&r, 0, sizeof r);
    for (int k = 0; k < 1000; k++) {
        uint32_t got = reconnect_backoff_ms(&r, &p, 1);
        assert_true(got <= 5000);
        if (k >= 6)
            assert_true(got >= 2500);
    }
    r.attempts = UINT32_MAX - 1;
    for (int k = 0; k < 3; k++) {
        uint32_t got = reconnect_backoff_ms(&r, &p, 1);
        assert_true(got >= 2500 && got <= 5000);
        assert_int_equal(r.attempts, UINT32_MAX);
    }
}

/* ---- a stable link restarts the count ------------------------------------------------------ */

struct reset_case {
    const char *name;
    uint64_t up_at_ms;   /* reconnect_up's now_ms */
    uint64_t lost_at_ms; /* the loss after it */
    bool restarts;       /* the loss is the first failure again (delay in [min/2, min]) */
};

static const struct reset_case reset_cases[] = {
    {"up exactly max", 10000, 10000 + 400, true},
    {"up longer than max", 10000, 99999, true},
    {"up one ms short of max", 10000, 10000 + 399, false},
    {"dropped at once", 10000, 10000, false},
    {"up at time 0 counts from 1", 0, 400, false},
    {"up at time 0, long enough", 0, 401, true},
};

static void test_reset_after_success(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof reset_cases / sizeof reset_cases[0]; c++) {
        const struct reset_case *rc = &reset_cases[c];
        struct reconnect_policy p;
        reconnect_policy_init(&p, 40, 400, 1000, 99, NULL);
        struct reconnect r;
        memset(&r, 0, sizeof r);
        for (int k = 0; k < 5; k++) /* at the ceiling: 400 */
            reconnect_backoff_ms(&r, &p, 0);
        assert_int_equal(r.attempts, 5);
        reconnect_up(&r, rc->up_at_ms);
        assert_int_equal(r.up_since_ms, rc->up_at_ms ? rc->up_at_ms : 1);
        uint32_t got = reconnect_backoff_ms(&r, &p, rc->lost_at_ms);
        assert_int_equal(r.up_since_ms, 0);
        if (rc->restarts) {
            assert_int_equal(r.attempts, 1);
            if (got < 20 || got > 40)
                fail_msg("%s: %u ms, want the first delay [20, 40]", rc->name, got);
        } else {
            assert_int_equal(r.attempts, 6);
            if (got < 200 || got > 400)
                fail_msg("%s: %u ms, want the ceiling's [200, 400]", rc->name, got);
        }
    }
}

/* ---- jitter -------------------------------------------------------------------------------- */

/* Over many seeds every draw stays in [d - d/2, d] and the draws spread over that range (links
 * that failed together do not come back in step). */
static void test_jitter_bounds(void **state)
{
    (void)state;
    static const uint32_t delays_ms[] = {1, 2, 3, 100, 101, 5000};
    for (size_t i = 0; i < sizeof delays_ms / sizeof delays_ms[0]; i++) {
        uint32_t d = delays_ms[i];
        uint32_t lo = UINT32_MAX, hi = 0;
        for (uint64_t seed = 1; seed <= 2000; seed++) {
            struct reconnect_policy p;
            reconnect_policy_init(&p, d, d, 1000, seed, NULL);
            struct reconnect r;
            memset(&r, 0, sizeof r);
            uint32_t got = reconnect_backoff_ms(&r, &p, 5);
            assert_true(got >= d - d / 2 && got <= d);
            lo = got < lo ? got : lo;
            hi = got > hi ? got : hi;
        }
        if (d / 2 + 1 <= 64) { /* few values: both ends are reached */
            assert_int_equal(lo, d - d / 2);
            assert_int_equal(hi, d);
        } else { /* many: the draws cover most of the range */
            assert_true(hi - lo >= d / 2 - d / 20);
        }
    }
}

/* The same seed gives the same delays; another seed other ones. One policy shared by two
 * links (pgsink's data and control links) hands out one sequence between them. */
static void test_deterministic_seed(void **state)
{
    (void)state;
    struct reconnect_policy a, b, c;
    reconnect_policy_init(&a, 100, 5000, 1000, 42, NULL);
    reconnect_policy_init(&b, 100, 5000, 1000, 42, &a);
    reconnect_policy_init(&c, 100, 5000, 1000, 43, NULL);
    struct reconnect ra, rb, rc;
    memset(&ra, 0, sizeof ra);
    memset(&rb, 0, sizeof rb);
    memset(&rc, 0, sizeof rc);
    int same_as_other_seed = 0;
    for (int k = 0; k < 20; k++) {
        uint32_t da = reconnect_backoff_ms(&ra, &a, 0);
        assert_int_equal(da, reconnect_backoff_ms(&rb, &b, 0));
        same_as_other_seed += da == reconnect_backoff_ms(&rc, &c, 0);
    }
    assert_true(same_as_other_seed < 5);

    struct reconnect_policy shared, alone;
    reconnect_policy_init(&shared, 100, 100, 1000, 5, NULL);
    reconnect_policy_init(&alone, 100, 100, 1000, 5, NULL);
    struct reconnect data, control, single;
    memset(&data, 0, sizeof data);
    memset(&control, 0, sizeof control);
    memset(&single, 0, sizeof single);
    for (int k = 0; k < 10; k++) {
        assert_int_equal(reconnect_backoff_ms(&data, &shared, 0),
                         reconnect_backoff_ms(&single, &alone, 0));
        assert_int_equal(reconnect_backoff_ms(&control, &shared, 0),
                         reconnect_backoff_ms(&single, &alone, 0));
    }

    /* Seed 0: from the clock, mixed with the salt. */
    struct reconnect_policy x, y;
    reconnect_policy_init(&x, 0, 0, 1000, 0, &x);
    reconnect_policy_init(&y, 0, 0, 1000, 0, &y);
    assert_int_not_equal(x.rng, 0);
    assert_int_not_equal(x.rng, y.rng);
}

/* ---- the rest: schedule, connect deadline, configuration, error text ----------------------- */

static void test_schedule_and_deadline(void **state)
{
    (void)state;
    struct reconnect_policy p;
    reconnect_policy_init(&p, 20, 200, 150, 3, NULL);
    assert_int_equal(p.connect_timeout_ms, 150);
    struct reconnect r;
    memset(&r, 0, sizeof r);
    assert_int_equal(r.retry_at_ms, 0); /* a new link is due at once */
    reconnect_attempt(&r, &p, 1000);
    assert_int_equal(r.connect_deadline_ms, 1150);
    uint64_t mirror = 3;
    reconnect_schedule(&r, &p, 1150);
    assert_int_equal(r.retry_at_ms, 1150 + 10 + tu_rand_u64(&mirror) % 11);
    reconnect_schedule(&r, &p, 5000);
    assert_int_equal(r.retry_at_ms, 5000 + 20 + tu_rand_u64(&mirror) % 21);
}

static void test_config_error(void **state)
{
    (void)state;
    static const struct {
        uint32_t min_ms, max_ms;
        bool refused;
    } cases[] = {
        {0, 0, false},    {100, 5000, false}, {500, 500, false},
        {500, 100, true}, {500, 0, false}, /* max defaults (then raised to min) */
        {0, 50, false},                    /* min defaults (then max raised to it) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *why = reconnect_config_error(cases[i].min_ms, cases[i].max_ms);
        if (cases[i].refused)
            assert_string_equal(why, "backoff_min_ms above backoff_max_ms");
        else
            assert_null(why);
    }
}

static void test_error_text(void **state)
{
    (void)state;
    struct reconnect r;
    memset(&r, 0, sizeof r);
    reconnect_set_error(&r, "could not connect to server: Connection refused\n\tIs it running?");
    assert_string_equal(r.error, "could not connect to server: Connection refused");
    reconnect_set_error(&r, NULL);
    assert_string_equal(r.error, "");
    reconnect_set_error(&r, "\nsecond line only");
    assert_string_equal(r.error, "");
    char long_msg[600];
    memset(long_msg, 'x', sizeof long_msg - 1);
    long_msg[sizeof long_msg - 1] = '\0';
    reconnect_set_error(&r, long_msg);
    assert_int_equal(strlen(r.error), RECONNECT_ERROR_BYTES - 1);
    reconnect_set_error(&r, "connect timed out");
    reconnect_up(&r, 77);
    assert_string_equal(r.error, ""); /* up again: no error */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delay_per_attempt),   cmocka_unit_test(test_ceiling),
        cmocka_unit_test(test_reset_after_success), cmocka_unit_test(test_jitter_bounds),
        cmocka_unit_test(test_deterministic_seed),  cmocka_unit_test(test_schedule_and_deadline),
        cmocka_unit_test(test_config_error),        cmocka_unit_test(test_error_text),
    };
    return cmocka_run_group_tests_name("reconnect", tests, NULL, NULL);
}
