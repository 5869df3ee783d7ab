/* test_spsc.c — the SPSC ring (shard/spsc.h): argument checks, capacity exactly N, full and
 * empty, wrap-around of single and batch operations at every offset, odd element sizes, no
 * write outside the slot storage, and a two-thread stress test (10 million 64-byte messages
 * in random batches, strict order, no loss, no duplicate, no torn message) that also runs under
 * ThreadSanitizer (`make test-tsan`). Throughput is printed, not asserted. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "shard/spsc.h"
#include "tests/support/testutil.h"

/* A 64-byte mailbox-sized message whose words all derive from seq, so a torn or stale copy is
 * detected. */
struct msg {
    uint64_t seq;
    uint64_t w[7];
};
_Static_assert(sizeof(struct msg) == SPSC_MSG_BYTES, "one message per cache line");

static struct msg msg_make(uint64_t seq)
{
    struct msg m = {.seq = seq};
    for (int i = 0; i < 7; i++)
        m.w[i] = seq * UINT64_C(0x9E3779B97F4A7C15) + (uint64_t)i;
    return m;
}

static bool msg_ok(const struct msg *m, uint64_t seq)
{
    struct msg want = msg_make(seq);
    return memcmp(m, &want, sizeof want) == 0;
}

enum { GUARD_BYTES = 64, CAP_TESTED_MAX = 1024 };

static alignas(SPSC_CACHE_LINE_BYTES) struct spsc q_static;
static alignas(SPSC_CACHE_LINE_BYTES) unsigned char storage_static
    [GUARD_BYTES + CAP_TESTED_MAX * sizeof(struct msg) + GUARD_BYTES];

/* Inits q_static over storage_static with guard bytes either side of the slots. */
static struct spsc *q_make(uint32_t capacity, uint32_t elem_bytes)
{
    size_t bytes = spsc_storage_bytes(capacity, elem_bytes);
    assert_true(GUARD_BYTES + bytes + GUARD_BYTES <= sizeof storage_static);
    memset(storage_static, 0xA5, sizeof storage_static);
    assert_int_equal(
        spsc_init(&q_static, capacity, elem_bytes, storage_static + GUARD_BYTES, bytes), 0);
    return &q_static;
}

static void guards_intact(uint32_t capacity, uint32_t elem_bytes)
{
    size_t bytes = spsc_storage_bytes(capacity, elem_bytes);
    for (size_t i = 0; i < GUARD_BYTES; i++) {
        assert_int_equal(storage_static[i], 0xA5);
        assert_int_equal(storage_static[GUARD_BYTES + bytes + i], 0xA5);
    }
}

/* ---- single thread ------------------------------------------------------------------------ */

static void test_init_arguments(void **state)
{
    (void)state;
    unsigned char *st = storage_static;
    size_t cap = sizeof storage_static;
    assert_int_equal(spsc_storage_bytes(8, 64), 512);
    assert_int_equal(spsc_init(&q_static, 0, 8, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 3, 8, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 12, 8, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, SPSC_CAPACITY_MAX * 2u, 8, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 8, 0, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 8, SPSC_ELEM_BYTES_MAX + 1, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 8, 8, NULL, cap), -EINVAL);
    assert_int_equal(spsc_init((struct spsc *)((char *)&q_static + 8), 8, 8, st, cap), -EINVAL);
    assert_int_equal(spsc_init(&q_static, 8, 64, st, 511), -ENOSPC);
    assert_int_equal(spsc_init(&q_static, 8, 64, st, 512), 0);
    assert_int_equal(spsc_init(&q_static, 1, 8, st, 8), 0);
    assert_int_equal(spsc_capacity(&q_static), 1);
}

/* Push exactly capacity messages, the next is refused; pop them in order, the next finds the
 * queue empty. Twice, so the second round starts at a non-zero counter. */
static void test_capacity_exact(void **state)
{
    (void)state;
    static const uint32_t caps[] = {1, 2, 8, 64, 1024};
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        uint32_t cap = caps[c];
        struct spsc *q = q_make(cap, sizeof(struct msg));
        struct msg m;
        assert_false(spsc_pop(q, &m));
        assert_int_equal(spsc_size(q), 0);
        uint64_t seq_in = 0, seq_out = 0;
        for (int round = 0; round < 2; round++) {
            for (uint32_t i = 0; i < cap; i++) {
                m = msg_make(seq_in++);
                assert_true(spsc_push(q, &m));
                assert_int_equal(spsc_size(q), i + 1);
            }
            m = msg_make(999);
            assert_false(spsc_push(q, &m));
            assert_int_equal(spsc_push_n(q, &m, 1), 0);
            assert_int_equal(spsc_size(q), cap);
            for (uint32_t i = 0; i < cap; i++) {
                assert_true(spsc_pop(q, &m));
                assert_true(msg_ok(&m, seq_out++));
            }
            assert_false(spsc_pop(q, &m));
            assert_int_equal(spsc_pop_n(q, &m, 1), 0);
            assert_int_equal(spsc_size(q), 0);
        }
        guards_intact(cap, sizeof(struct msg));
    }
}

/* Interleaved pushes and pops of every length, from every start offset, so that single and
 * batch operations cross the end of the slot array in every possible place. */
static void test_wrap_around(void **state)
{
    (void)state;
    enum { CAP = 8 };
    struct spsc *q = q_make(CAP, sizeof(struct msg));
    uint64_t seq_in = 0, seq_out = 0;
    for (uint32_t offset = 0; offset < CAP; offset++) {
        for (uint32_t push_len = 1; push_len <= CAP; push_len++) {
            /* Move the counters so the next push starts at slot `offset`. */
            while ((seq_in & (CAP - 1)) != offset) {
                struct msg m = msg_make(seq_in++);
                assert_true(spsc_push(q, &m));
                assert_true(spsc_pop(q, &m));
                assert_true(msg_ok(&m, seq_out++));
            }
            struct msg batch[CAP];
            for (uint32_t i = 0; i < push_len; i++)
                batch[i] = msg_make(seq_in + i);
            assert_int_equal(spsc_push_n(q, batch, push_len), push_len);
            seq_in += push_len;
            /* Pop in two uneven batches to also cross the wrap on the consumer side. */
            uint32_t first = push_len / 3 + 1; /* 1..push_len */
            struct msg out[CAP];
            assert_int_equal(spsc_pop_n(q, out, first), first);
            assert_int_equal(spsc_pop_n(q, out + first, CAP), push_len - first);
            for (uint32_t i = 0; i < push_len; i++)
                assert_true(msg_ok(&out[i], seq_out++));
            assert_int_equal(spsc_size(q), 0);
        }
    }
    assert_int_equal(seq_in, seq_out);
    guards_intact(CAP, sizeof(struct msg));
}

/* Batches are cut to what fits (producer) or what is there (consumer); n == 0 is a no-op. */
static void test_batch_partial(void **state)
{
    (void)state;
    enum { CAP = 16 };
    struct spsc *q = q_make(CAP, sizeof(struct msg));
    struct msg in[3 * CAP], out[3 * CAP];
    for (uint32_t i = 0; i < 3 * CAP; i++)
        in[i] = msg_make(i);
    assert_int_equal(spsc_push_n(q, in, 0), 0);
    assert_int_equal(spsc_pop_n(q, out, 0), 0);
    assert_int_equal(spsc_push_n(q, in, 5), 5);
    assert_int_equal(spsc_push_n(q, in + 5, 3 * CAP), CAP - 5); /* only 11 fit */
    assert_int_equal(spsc_push_n(q, in + CAP, 1), 0);
    assert_int_equal(spsc_pop_n(q, out, 7), 7);
    assert_int_equal(spsc_push_n(q, in + CAP, 10), 7);      /* 7 freed */
    assert_int_equal(spsc_pop_n(q, out + 7, 3 * CAP), CAP); /* all that is there */
    assert_int_equal(spsc_pop_n(q, out, 3 * CAP), 0);
    for (uint32_t i = 0; i < CAP + 7; i++)
        assert_true(msg_ok(&out[i], i));
    guards_intact(CAP, sizeof(struct msg));
}

/* Element sizes other than 64: 1, 3 and 24 bytes, with byte patterns, through many wraps. */
static void test_odd_element_sizes(void **state)
{
    (void)state;
    static const uint32_t sizes[] = {1, 3, 24};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint32_t eb = sizes[s];
        enum { CAP = 32 };
        struct spsc *q = q_make(CAP, eb);
        unsigned char in[CAP * 24], out[CAP * 24];
        uint64_t rng = 5, pos_in = 0, pos_out = 0;
        for (int iter = 0; iter < 2000; iter++) {
            uint32_t n = (uint32_t)(tu_rand_u64(&rng) % CAP) + 1;
            for (uint32_t i = 0; i < n * eb; i++)
                in[i] = (unsigned char)((pos_in * eb + i) * 31 + 7);
            uint32_t pushed = spsc_push_n(q, in, n);
            pos_in += pushed;
            uint32_t m = (uint32_t)(tu_rand_u64(&rng) % CAP) + 1;
            uint32_t popped = spsc_pop_n(q, out, m);
            for (uint32_t i = 0; i < popped * eb; i++)
                assert_int_equal(out[i], (unsigned char)((pos_out * eb + i) * 31 + 7));
            pos_out += popped;
            assert_true(pos_in - pos_out <= CAP);
            assert_int_equal(spsc_size(q), pos_in - pos_out);
        }
        assert_true(pos_out > 1000); /* the loop did move data */
        guards_intact(CAP, eb);
    }
}

/* ---- two threads ---------------------------------------------------------------------------- */

enum {
    STRESS_MSGS = 10 * 1000 * 1000,
    STRESS_CAP = 1024,
    STRESS_BATCH_MAX = 64,
};

static alignas(SPSC_CACHE_LINE_BYTES) struct spsc stress_q;
static alignas(SPSC_CACHE_LINE_BYTES) struct msg stress_slots[STRESS_CAP];

struct side {
    pthread_t thread;
    uint64_t done;         /* messages pushed or popped */
    uint64_t calls_short;  /* push_n cut short by a full queue / pop_n by an empty one */
    uint64_t calls_zero;   /* nothing at all: the thread yielded */
    uint64_t bad_seq;      /* consumer: first wrong message, or UINT64_MAX */
    uint64_t bad_seq_want; /* what it expected there */
};

static void *producer_main(void *arg)
{
    struct side *p = arg;
    uint64_t rng = 11;
    struct msg batch[STRESS_BATCH_MAX];
    while (p->done < STRESS_MSGS) {
        uint32_t n = (uint32_t)(tu_rand_u64(&rng) % STRESS_BATCH_MAX) + 1;
        if (n > STRESS_MSGS - p->done)
            n = (uint32_t)(STRESS_MSGS - p->done);
        for (uint32_t i = 0; i < n; i++)
            batch[i] = msg_make(p->done + i);
        uint32_t k = spsc_push_n(&stress_q, batch, n);
        p->done += k;
        if (k < n)
            p->calls_short++;
        if (k == 0) {
            p->calls_zero++;
            sched_yield(); /* full: back off, never block */
        }
    }
    return NULL;
}

static void *consumer_main(void *arg)
{
    struct side *c = arg;
    uint64_t rng = 13;
    struct msg batch[STRESS_BATCH_MAX];
    c->bad_seq = UINT64_MAX;
    while (c->done < STRESS_MSGS) {
        uint32_t n = (uint32_t)(tu_rand_u64(&rng) % STRESS_BATCH_MAX) + 1;
        uint32_t k = spsc_pop_n(&stress_q, batch, n);
        for (uint32_t i = 0; i < k; i++)
            if (!msg_ok(&batch[i], c->done + i) && c->bad_seq == UINT64_MAX) {
                c->bad_seq = batch[i].seq;
                c->bad_seq_want = c->done + i;
            }
        if (c->bad_seq != UINT64_MAX)
            return NULL;
        c->done += k;
        if (k < n)
            c->calls_short++;
        if (k == 0) {
            c->calls_zero++;
            sched_yield();
        }
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_two_thread_stress(void **state)
{
    (void)state;
    assert_int_equal(
        spsc_init(&stress_q, STRESS_CAP, sizeof(struct msg), stress_slots, sizeof stress_slots), 0);
    struct side prod = {0}, cons = {0};
    double t0 = now_s();
    assert_int_equal(pthread_create(&cons.thread, NULL, consumer_main, &cons), 0);
    assert_int_equal(pthread_create(&prod.thread, NULL, producer_main, &prod), 0);
    assert_int_equal(pthread_join(prod.thread, NULL), 0);
    assert_int_equal(pthread_join(cons.thread, NULL), 0);
    double secs = now_s() - t0;

    if (cons.bad_seq != UINT64_MAX)
        fail_msg("consumer got message seq %" PRIu64 " (or a torn copy) where %" PRIu64 " was due",
                 cons.bad_seq, cons.bad_seq_want);
    assert_int_equal(prod.done, STRESS_MSGS);
    assert_int_equal(cons.done, STRESS_MSGS);
    struct msg m;
    assert_false(spsc_pop(&stress_q, &m)); /* nothing extra: no duplicate */
    assert_int_equal(spsc_size(&stress_q), 0);
    printf("# %d x %zu-byte messages, batches 1..%d, capacity %d: %.2f s, %.1f M msg/s "
           "(%.0f MB/s); producer full %" PRIu64 " / short %" PRIu64 ", consumer empty %" PRIu64
           " / short %" PRIu64 "\n",
           STRESS_MSGS, sizeof(struct msg), STRESS_BATCH_MAX, STRESS_CAP, secs,
           STRESS_MSGS / secs / 1e6, STRESS_MSGS * sizeof(struct msg) / secs / 1e6, prod.calls_zero,
           prod.calls_short, cons.calls_zero, cons.calls_short);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_arguments),    cmocka_unit_test(test_capacity_exact),
        cmocka_unit_test(test_wrap_around),       cmocka_unit_test(test_batch_partial),
        cmocka_unit_test(test_odd_element_sizes), cmocka_unit_test(test_two_thread_stress),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
