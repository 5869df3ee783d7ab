/* test_router.c — the consistent-hash ring (gateway/router.c): argument checks, the key and
 * the ring rebuilt independently here (snprintf + XXH3, no avl_imei_format, no sort), golden
 * IMEI -> shard answers checked against a brute-force linear scan, edges of the ring (exact
 * hits, wrap), balance and movement over 1,000,000 IMEIs for 1..64 shards, concurrent readers
 * on one shared router (run under TSan too), and the lookup speed (printed, not asserted).
 *
 * An optional argument is a cmocka test filter (e.g. "test_concurrent_readers"). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <xxhash.h>

#include "codec/avl.h"
#include "gateway/router.h"
#include "tests/support/testutil.h"

enum {
    IMEIS_LEN = 1000000,
    SHARDS_TESTED_MAX = 64,
};

/* A router with its own heap storage. */
struct ring {
    struct router r;
    struct router_point *storage;
};

static void ring_make(struct ring *g, unsigned shards, unsigned vnodes)
{
    size_t bytes = router_storage_bytes(shards, vnodes);
    g->storage = malloc(bytes);
    assert_non_null(g->storage);
    assert_int_equal(router_init(&g->r, shards, vnodes, g->storage, bytes), 0);
}

static void ring_free(struct ring *g)
{
    free(g->storage);
    g->storage = NULL;
}

/* ---- the independent model: the contract of router.h, written out again ----------------- */

static uint64_t model_key(uint64_t imei)
{
    char s[32];
    int len = snprintf(s, sizeof s, "%015" PRIu64, imei);
    return XXH3_64bits(s, (size_t)len);
}

static uint64_t model_point(unsigned shard, unsigned vnode)
{
    char s[64];
    int len = snprintf(s, sizeof s, "avlgate/shard/%u/vnode/%u", shard, vnode);
    return XXH3_64bits(s, (size_t)len);
}

/* Unsorted points of the model ring, shard-major. */
struct model {
    uint64_t *hash;
    unsigned shards, vnodes;
};

static void model_make(struct model *m, unsigned shards, unsigned vnodes)
{
    m->hash = malloc((size_t)shards * vnodes * sizeof m->hash[0]);
    assert_non_null(m->hash);
    m->shards = shards;
    m->vnodes = vnodes;
    for (unsigned s = 0; s < shards; s++)
        for (unsigned v = 0; v < vnodes; v++)
            m->hash[(size_t)s * vnodes + v] = model_point(s, v);
}

/* Linear scan: the point with the smallest hash >= key (lower shard on a tie); if none, the
 * point with the smallest hash overall. */
static unsigned model_owner_of_key(const struct model *m, uint64_t key)
{
    unsigned best = 0, lowest = 0;
    uint64_t best_hash = 0, lowest_hash = UINT64_MAX;
    int found = 0;
    for (unsigned s = 0; s < m->shards; s++)
        for (unsigned v = 0; v < m->vnodes; v++) {
            uint64_t h = m->hash[(size_t)s * m->vnodes + v];
            if (h >= key && (!found || h < best_hash)) {
                found = 1;
                best = s;
                best_hash = h;
            }
            if (h < lowest_hash) {
                lowest = s;
                lowest_hash = h;
            }
        }
    return found ? best : lowest;
}

/* ---- arguments ---------------------------------------------------------------------------- */

static void test_init_arguments(void **state)
{
    (void)state;
    static uint64_t storage[2 * 4 * 3 + 1];
    struct router r;
    size_t need = router_storage_bytes(4, 3);
    assert_int_equal(need, 4 * 3 * 16);

    assert_int_equal(router_init(&r, 0, 3, storage, sizeof storage), -EINVAL);
    assert_int_equal(router_init(&r, ROUTER_SHARDS_MAX + 1, 3, storage, sizeof storage), -EINVAL);
    assert_int_equal(router_init(&r, 4, 0, storage, sizeof storage), -EINVAL);
    assert_int_equal(router_init(&r, 4, ROUTER_VNODES_MAX + 1, storage, sizeof storage), -EINVAL);
    assert_int_equal(router_init(&r, 4, 3, NULL, need), -EINVAL);
    assert_int_equal(router_init(&r, 4, 3, (char *)storage + 4, need), -EINVAL);
    assert_int_equal(router_init(&r, 4, 3, storage, need - 1), -ENOSPC);
    assert_int_equal(router_init(&r, 4, 3, storage, need), 0);
    assert_int_equal(r.points_len, 12);
    assert_int_equal(r.shards, 4);
    assert_int_equal(r.vnodes_per_shard, 3);
}

/* ---- the key and the ring, against the model ---------------------------------------------- */

static void test_key_is_xxh3_of_canonical_imei(void **state)
{
    (void)state;
    static const uint64_t imeis[] = {
        0,
        1,
        12345,
        352093081452468,
        356307042441013,
        999999999999999,
        1000000000000000,  /* 16 digits: printed as is */
        99999999999999999, /* 17 digits, the largest valid */
    };
    for (size_t i = 0; i < sizeof imeis / sizeof imeis[0]; i++)
        assert_true(router_key(imeis[i]) == model_key(imeis[i]));
    /* The padding matters: "12345" and "000000000012345" are different keys. */
    assert_true(router_key(12345) != XXH3_64bits("12345", 5));
    uint64_t rng = 1;
    for (int i = 0; i < 10000; i++) {
        uint64_t imei = tu_rand_u64(&rng) % UINT64_C(100000000000000000);
        assert_true(router_key(imei) == model_key(imei));
    }
}

static void test_ring_matches_model(void **state)
{
    (void)state;
    static const unsigned shapes[][2] = {{1, 1}, {1, 1024}, {3, 7}, {16, 1024}, {64, 1024}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        unsigned shards = shapes[i][0], vnodes = shapes[i][1];
        struct ring g;
        ring_make(&g, shards, vnodes);
        unsigned per_shard[SHARDS_TESTED_MAX] = {0};
        for (uint32_t p = 0; p < g.r.points_len; p++) {
            const struct router_point *pt = &g.r.points[p];
            assert_true(pt->shard < shards && pt->vnode < vnodes);
            assert_true(pt->hash == model_point(pt->shard, pt->vnode));
            per_shard[pt->shard]++;
            if (p > 0)
                assert_true(
                    g.r.points[p - 1].hash < pt->hash ||
                    (g.r.points[p - 1].hash == pt->hash && g.r.points[p - 1].shard <= pt->shard));
        }
        for (unsigned s = 0; s < shards; s++)
            assert_int_equal(per_shard[s], vnodes); /* with the check above: a permutation */
        ring_free(&g);
    }
}

/* ---- golden answers ------------------------------------------------------------------------- */

struct golden {
    uint64_t imei;
    unsigned shards;
    unsigned owner; /* with ROUTER_VNODES_DEFAULT */
};

/* Computed once with router_owner() and pinned; test_golden recomputes each one with the
 * model's linear scan, so a pinned value is never just "what the code said". */
static const struct golden goldens[] = {
    {0, 2, 0},
    {1, 2, 0},
    {352093081452468, 2, 0},
    {356307042441013, 2, 1},
    {123456789012345, 2, 1},
    {862462030001234, 2, 1},
    {999999999999999, 2, 1},
    {99999999999999999, 2, 0},
    {0, 3, 0},
    {1, 3, 0},
    {352093081452468, 3, 0},
    {356307042441013, 3, 1},
    {123456789012345, 3, 2},
    {862462030001234, 3, 1},
    {999999999999999, 3, 1},
    {99999999999999999, 3, 0},
    {0, 4, 0},
    {1, 4, 0},
    {352093081452468, 4, 0},
    {356307042441013, 4, 3},
    {123456789012345, 4, 2},
    {862462030001234, 4, 1},
    {999999999999999, 4, 1},
    {99999999999999999, 4, 3},
    {0, 8, 4},
    {1, 8, 7},
    {352093081452468, 8, 5},
    {356307042441013, 8, 3},
    {123456789012345, 8, 2},
    {862462030001234, 8, 4},
    {999999999999999, 8, 1},
    {99999999999999999, 8, 3},
    {0, 16, 4},
    {1, 16, 11},
    {352093081452468, 16, 13},
    {356307042441013, 16, 13},
    {123456789012345, 16, 10},
    {862462030001234, 16, 4},
    {999999999999999, 16, 14},
    {99999999999999999, 16, 8},
    {0, 64, 57},
    {1, 64, 41},
    {352093081452468, 64, 53},
    {356307042441013, 64, 56},
    {123456789012345, 64, 10},
    {862462030001234, 64, 40},
    {999999999999999, 64, 44},
    {99999999999999999, 64, 8},
    {0, 256, 57},
    {1, 256, 159},
    {352093081452468, 256, 248},
    {356307042441013, 256, 130},
    {123456789012345, 256, 151},
    {862462030001234, 256, 40},
    {999999999999999, 256, 222},
    {99999999999999999, 256, 8},
};

static void test_golden(void **state)
{
    (void)state;
    struct ring g = {0};
    struct model m = {0};
    for (size_t i = 0; i < sizeof goldens / sizeof goldens[0]; i++) {
        const struct golden *c = &goldens[i];
        if (i == 0 || c->shards != goldens[i - 1].shards) { /* the table is grouped by shards */
            ring_free(&g);
            free(m.hash);
            ring_make(&g, c->shards, ROUTER_VNODES_DEFAULT);
            model_make(&m, c->shards, ROUTER_VNODES_DEFAULT);
        }
        unsigned got = router_owner(&g.r, c->imei);
        unsigned model = model_owner_of_key(&m, model_key(c->imei));
        if (got != c->owner || model != c->owner)
            fail_msg("imei %015" PRIu64 " shards %u: router %u, model %u, pinned %u", c->imei,
                     c->shards, got, model, c->owner);
    }
    ring_free(&g);
    free(m.hash);
}

/* Router and model agree on seeded random and sequential IMEIs, with few vnodes (long arcs,
 * many wraps) and with the default. */
static void test_matches_linear_scan(void **state)
{
    (void)state;
    static const unsigned shapes[][2] = {{2, 1}, {3, 2}, {5, 4}, {7, 1024}, {16, 1024}};
    uint64_t rng = 42;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        struct ring g;
        struct model m;
        ring_make(&g, shapes[i][0], shapes[i][1]);
        model_make(&m, shapes[i][0], shapes[i][1]);
        for (int k = 0; k < 2000; k++) {
            uint64_t imei = k % 2 ? tu_rand_u64(&rng) % UINT64_C(1000000000000000)
                                  : UINT64_C(352093081400000) + (uint64_t)k;
            assert_int_equal(router_owner(&g.r, imei), model_owner_of_key(&m, model_key(imei)));
        }
        free(m.hash);
        ring_free(&g);
    }
}

/* Keys on, just after and just before points; below the first and above the last. */
static void test_ring_edges(void **state)
{
    (void)state;
    struct ring g;
    ring_make(&g, 5, 4);
    const struct router_point *p = g.r.points;
    uint32_t n = g.r.points_len;
    assert_int_equal(router_owner_of_key(&g.r, 0), p[0].shard);
    assert_int_equal(router_owner_of_key(&g.r, p[0].hash), p[0].shard);
    assert_int_equal(router_owner_of_key(&g.r, p[n - 1].hash), p[n - 1].shard);
    assert_int_equal(router_owner_of_key(&g.r, p[n - 1].hash + 1), p[0].shard); /* wrap */
    assert_int_equal(router_owner_of_key(&g.r, UINT64_MAX), p[0].shard);
    for (uint32_t i = 0; i + 1 < n; i++) {
        assert_int_equal(router_owner_of_key(&g.r, p[i].hash), p[i].shard);
        assert_int_equal(router_owner_of_key(&g.r, p[i].hash + 1), p[i + 1].shard);
        assert_int_equal(router_owner_of_key(&g.r, p[i + 1].hash - 1), p[i + 1].shard);
    }
    ring_free(&g);
}

static void test_one_shard(void **state)
{
    (void)state;
    struct ring g;
    ring_make(&g, 1, ROUTER_VNODES_DEFAULT);
    uint64_t rng = 7;
    assert_int_equal(router_owner(&g.r, 0), 0);
    assert_int_equal(router_owner(&g.r, UINT64_C(99999999999999999)), 0);
    assert_int_equal(router_owner_of_key(&g.r, UINT64_MAX), 0);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(router_owner(&g.r, tu_rand_u64(&rng) % UINT64_C(1000000000000000)), 0);
    ring_free(&g);
}

/* ---- balance and movement over 1,000,000 IMEIs ---------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Half sequential from a real-looking TAC (a fleet bought in one batch), half uniform random
 * 15-digit numbers. */
static uint64_t *imei_keys(void)
{
    uint64_t *keys = malloc(IMEIS_LEN * sizeof keys[0]);
    assert_non_null(keys);
    uint64_t rng = 2024;
    for (size_t i = 0; i < IMEIS_LEN; i++) {
        uint64_t imei = i % 2 ? tu_rand_u64(&rng) % UINT64_C(1000000000000000)
                              : UINT64_C(352093081000000) + i / 2;
        keys[i] = router_key(imei);
    }
    /* Sorted, the lookups of a sweep walk the ring in order and stay in cache: the sweep of 64
     * rings takes a third of the time. Counts and moves do not depend on the order. */
    qsort(keys, IMEIS_LEN, sizeof keys[0], key_cmp);
    return keys;
}

/* Tolerance on a shard's share of the IMEIs, relative to 1/N, for every N in 2..64. With 1024
 * vnodes a shard's share of the hash space has a relative spread of about 1/sqrt(1024) = 3%,
 * and 1,000,000 IMEIs add at most 1% of sampling noise at 64 shards; the measured worst case is
 * printed (about 1.10 / 0.91). */
static const double share_max_allowed = 1.15, share_min_allowed = 0.85;

/* For N = 1..64: count each shard's IMEIs (balance), and compare with N - 1 shards: the moved
 * IMEIs all go to the new shard N - 1, and their fraction is about 1/N. */
static void test_balance_and_movement(void **state)
{
    (void)state;
    uint64_t *keys = imei_keys();
    uint8_t *prev = malloc(IMEIS_LEN), *cur = malloc(IMEIS_LEN);
    assert_non_null(prev);
    assert_non_null(cur);
    double worst_max16 = 0, worst_min16 = 2, worst_max64 = 0, worst_min64 = 2;
    double moved_ratio_lo = 2, moved_ratio_hi = 0;

    printf("# shards  max/mean  min/mean  moved     moved*N  (vnodes %d, %d IMEIs)\n",
           ROUTER_VNODES_DEFAULT, IMEIS_LEN);
    for (unsigned n = 1; n <= SHARDS_TESTED_MAX; n++) {
        struct ring g;
        ring_make(&g, n, ROUTER_VNODES_DEFAULT);
        size_t count[SHARDS_TESTED_MAX] = {0};
        size_t moved = 0;
        for (size_t i = 0; i < IMEIS_LEN; i++) {
            unsigned o = router_owner_of_key(&g.r, keys[i]);
            cur[i] = (uint8_t)o;
            count[o]++;
            if (n > 1 && cur[i] != prev[i]) {
                if (o != n - 1)
                    fail_msg(
                        "%u -> %u shards: key #%zu (sorted) moved from %u to %u, not to the new "
                        "shard",
                        n - 1, n, i, prev[i], o);
                moved++;
            }
        }
        if (n == 1) {
            assert_int_equal(count[0], IMEIS_LEN);
        } else {
            size_t cmax = 0, cmin = SIZE_MAX;
            for (unsigned s = 0; s < n; s++) {
                cmax = count[s] > cmax ? count[s] : cmax;
                cmin = count[s] < cmin ? count[s] : cmin;
            }
            double mean = (double)IMEIS_LEN / n;
            double rmax = cmax / mean, rmin = cmin / mean;
            double moved_frac = (double)moved / IMEIS_LEN, moved_ratio = moved_frac * n;
            printf("# %6u  %8.4f  %8.4f  %8.5f  %7.4f\n", n, rmax, rmin, moved_frac, moved_ratio);
            if (rmax > share_max_allowed || rmin < share_min_allowed)
                fail_msg("%u shards: max/mean %.4f min/mean %.4f outside [%.2f, %.2f]", n, rmax,
                         rmin, share_min_allowed, share_max_allowed);
            /* The moved IMEIs are exactly the new shard's: its share, within the balance
             * tolerance of 1/N. */
            assert_int_equal(moved, count[n - 1]);
            if (moved_ratio > share_max_allowed || moved_ratio < share_min_allowed)
                fail_msg("%u -> %u shards: %.5f of the IMEIs moved, expected about 1/%u", n - 1, n,
                         moved_frac, n);
            if (n <= 16) {
                worst_max16 = rmax > worst_max16 ? rmax : worst_max16;
                worst_min16 = rmin < worst_min16 ? rmin : worst_min16;
            }
            worst_max64 = rmax > worst_max64 ? rmax : worst_max64;
            worst_min64 = rmin < worst_min64 ? rmin : worst_min64;
            moved_ratio_lo = moved_ratio < moved_ratio_lo ? moved_ratio : moved_ratio_lo;
            moved_ratio_hi = moved_ratio > moved_ratio_hi ? moved_ratio : moved_ratio_hi;
        }
        uint8_t *t = prev;
        prev = cur;
        cur = t;
        ring_free(&g);
    }
    printf("# worst N<=16: max/mean %.4f min/mean %.4f; N<=64: max/mean %.4f min/mean %.4f; "
           "moved*N in [%.4f, %.4f]\n",
           worst_max16, worst_min16, worst_max64, worst_min64, moved_ratio_lo, moved_ratio_hi);
    free(prev);
    free(cur);
    free(keys);
}

/* ---- concurrent readers -----------------------------------------------------------------------
 */

enum { READERS = 4, READER_IMEIS = 20000 };

struct reader {
    pthread_t thread;
    const struct router *r;
    const uint8_t *expected;
    size_t mismatches;
};

static uint64_t reader_imei(size_t i)
{
    return UINT64_C(356307042000000) + i * 7919;
}

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    for (int round = 0; round < 5; round++)
        for (size_t i = 0; i < READER_IMEIS; i++)
            if (router_owner(rd->r, reader_imei(i)) != rd->expected[i])
                rd->mismatches++;
    return NULL;
}

/* Several threads look up on one shared const router at once and all get the answers of a
 * single-threaded pass. Under TSan this also proves lookups write nothing shared. */
static void test_concurrent_readers(void **state)
{
    (void)state;
    struct ring g;
    ring_make(&g, 8, ROUTER_VNODES_DEFAULT);
    static uint8_t expected[READER_IMEIS];
    unsigned seen = 0;
    for (size_t i = 0; i < READER_IMEIS; i++) {
        expected[i] = (uint8_t)router_owner(&g.r, reader_imei(i));
        seen |= 1u << expected[i];
    }
    assert_int_equal(seen, 0xFF); /* every shard owns some of them */
    struct reader rd[READERS];
    for (int t = 0; t < READERS; t++) {
        rd[t] = (struct reader){.r = &g.r, .expected = expected};
        assert_int_equal(pthread_create(&rd[t].thread, NULL, reader_main, &rd[t]), 0);
    }
    for (int t = 0; t < READERS; t++) {
        assert_int_equal(pthread_join(rd[t].thread, NULL), 0);
        assert_int_equal(rd[t].mismatches, 0);
    }
    ring_free(&g);
}

/* ---- speed (printed, not asserted: speed goals live in benchmarks) ------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_lookup_speed(void **state)
{
    (void)state;
    enum { LOOKUPS = 1000000 };
    static uint64_t imeis[LOOKUPS], keys[LOOKUPS];
    uint64_t rng = 99, sum = 0;
    for (int i = 0; i < LOOKUPS; i++)
        imeis[i] = tu_rand_u64(&rng) % UINT64_C(1000000000000000);
    double t0 = now_s();
    for (int i = 0; i < LOOKUPS; i++)
        keys[i] = router_key(imeis[i]);
    double t1 = now_s();
    printf("# router_key (format + XXH3): %.1f ns\n", (t1 - t0) * 1e9 / LOOKUPS);
    static const unsigned shard_counts[] = {4, 16, 64, 256};
    for (size_t k = 0; k < sizeof shard_counts / sizeof shard_counts[0]; k++) {
        struct ring g;
        ring_make(&g, shard_counts[k], ROUTER_VNODES_DEFAULT);
        t0 = now_s();
        for (int i = 0; i < LOOKUPS; i++)
            sum += router_owner_of_key(&g.r, keys[i]);
        t1 = now_s();
        for (int i = 0; i < LOOKUPS; i++)
            sum += router_owner(&g.r, imeis[i]);
        double t2 = now_s();
        printf("# %3u shards x %d vnodes: router_owner_of_key %.1f ns, router_owner %.1f ns\n",
               shard_counts[k], ROUTER_VNODES_DEFAULT, (t1 - t0) * 1e9 / LOOKUPS,
               (t2 - t1) * 1e9 / LOOKUPS);
        ring_free(&g);
    }
    assert_true(sum > 0); /* keeps the loops; with 4+ shards some owner is not 0 */
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_arguments),
        cmocka_unit_test(test_key_is_xxh3_of_canonical_imei),
        cmocka_unit_test(test_ring_matches_model),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_matches_linear_scan),
        cmocka_unit_test(test_ring_edges),
        cmocka_unit_test(test_one_shard),
        cmocka_unit_test(test_balance_and_movement),
        cmocka_unit_test(test_concurrent_readers),
        cmocka_unit_test(test_lookup_speed),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
