/* test_ratelimit.c — the log limiter: a burst per window, the rest counted and reported by the
 * next line written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gateway/ratelimit.h"

static void test_burst_then_held(void **state)
{
    (void)state;
    struct ratelimit r = {0};
    uint64_t held = 99;
    for (unsigned i = 0; i < RATELIMIT_BURST; i++) {
        assert_true(ratelimit_allow(&r, 1000 + i, &held));
        assert_int_equal(held, 0);
    }
    for (unsigned i = 0; i < 25; i++)
        assert_false(ratelimit_allow(&r, 2000 + i, &held));
    /* Still inside the window that began at 1000. */
    assert_false(ratelimit_allow(&r, 1000 + RATELIMIT_WINDOW_MS - 1, &held));
    /* A new window: written, and it says how many were held back. */
    assert_true(ratelimit_allow(&r, 1000 + RATELIMIT_WINDOW_MS, &held));
    assert_int_equal(held, 26);
    assert_true(ratelimit_allow(&r, 1000 + RATELIMIT_WINDOW_MS + 1, &held));
    assert_int_equal(held, 0);
}

static void test_quiet_source_never_held(void **state)
{
    (void)state;
    struct ratelimit r = {0};
    uint64_t held;
    for (uint64_t t = 0; t < 100; t++) { /* one line a second: under the burst, never held */
        assert_true(ratelimit_allow(&r, t * 1000, &held));
        assert_int_equal(held, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_held),
        cmocka_unit_test(test_quiet_source_never_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
