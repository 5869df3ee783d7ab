/* spsc.h — bounded single-producer/single-consumer ring of fixed-size elements: the mailbox
 * between two shards (one queue per ordered pair, Seastar style).
 *
 * Header-only so that push and pop inline into the loop. Owns nothing: the caller provides
 * the slot storage (spsc_storage_bytes()) and keeps it as long as the queue is used; nothing
 * is allocated, ever.
 *
 * Threads: after spsc_init() (before the queue is shared), exactly one thread may call the
 * producer functions (spsc_push, spsc_push_n) and exactly one thread the consumer functions
 * (spsc_pop, spsc_pop_n); the two may be the same thread. spsc_size() may be called by any
 * thread (see there).
 *
 * Invariants: head <= tail <= head + capacity, as free-running 64-bit counters (at 10^9
 * elements per second they wrap after 584 years), so full and empty are told apart without a
 * spare slot and the capacity is exactly what was asked. Element i lives in slot i & mask.
 *
 * Ordering: the producer writes slots, then publishes tail with a release store; the consumer
 * reads tail with an acquire load, then the slots, then publishes head with a release store;
 * the producer reads head with an acquire load before it overwrites a slot. Each side keeps
 * a cached copy of the other's counter and re-reads the shared one only when the cache says
 * full (producer) or empty (consumer), so in steady state each side touches only its own
 * cache line. Never blocks: a full queue makes push return false or a short count, and the
 * caller counts it and backs off. Waking the consumer (IORING_OP_MSG_RING after a batch) is
 * the engine's job.
 */
#ifndef AVLGATE_SHARD_SPSC_H
#define AVLGATE_SHARD_SPSC_H

#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* C11 atomics; C++ (the benchmarks) sees the same layout through std::atomic, which GCC and
 * Clang lay out like _Atomic (C++23 defines one as the other). */
#ifdef __cplusplus
#include <atomic>
typedef std::atomic<uint64_t> spsc_atomic_u64;
#define SPSC_LOAD(a, order)     (a)->load(std::memory_order_##order)
#define SPSC_STORE(a, v, order) (a)->store((v), std::memory_order_##order)
static_assert(std::atomic<uint64_t>::is_always_lock_free, "64-bit atomics must be lock-free");
#else
#include <stdatomic.h>
typedef _Atomic uint64_t spsc_atomic_u64;
#define SPSC_LOAD(a, order)     atomic_load_explicit((a), memory_order_##order)
#define SPSC_STORE(a, v, order) atomic_store_explicit((a), (v), memory_order_##order)
static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
              "64-bit atomics must be lock-free");
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SPSC_CACHE_LINE_BYTES = 64,
    SPSC_MSG_BYTES = 64,               /* the mailbox message: one cache line */
    SPSC_CAPACITY_MAX = 1u << 24,      /* elements */
    SPSC_ELEM_BYTES_MAX = 64u * 1024u, /* bytes per element */
};

static_assert(sizeof(spsc_atomic_u64) == 8, "a counter is one 64-bit word");

/* The queue must live at a 64-byte-aligned address (static, stack, or aligned_alloc; plain
 * malloc is not enough). Fields are private to this header. */
struct spsc {
    /* Producer's line: tail is written only by the producer; head_cached is its copy of head. */
    alignas(SPSC_CACHE_LINE_BYTES) spsc_atomic_u64 tail;
    uint64_t head_cached;
    /* Consumer's line: head is written only by the consumer; tail_cached is its copy of tail. */
    alignas(SPSC_CACHE_LINE_BYTES) spsc_atomic_u64 head;
    uint64_t tail_cached;
    /* Read-only after init, read by both sides. */
    alignas(SPSC_CACHE_LINE_BYTES) unsigned char *slots;
    uint64_t mask; /* capacity - 1 */
    uint32_t capacity;
    uint32_t elem_bytes;
};

/* Bytes of slot storage for capacity elements of elem_bytes each (no overflow for valid
 * arguments: at most 2^40). */
static inline size_t spsc_storage_bytes(uint32_t capacity, uint32_t elem_bytes)
{
    return (size_t)capacity * elem_bytes;
}

/* Makes an empty queue of capacity elements (a power of two, 1..SPSC_CAPACITY_MAX) of
 * elem_bytes each (1..SPSC_ELEM_BYTES_MAX) over storage, which the caller owns and keeps for
 * the life of q; align it to SPSC_CACHE_LINE_BYTES so that slots do not straddle lines.
 * Returns 0, -EINVAL for a bad capacity, size or a q that is not 64-byte aligned, or -ENOSPC
 * if storage_bytes < spsc_storage_bytes(). Call before the queue is shared. */
static inline int spsc_init(struct spsc *q, uint32_t capacity, uint32_t elem_bytes, void *storage,
                            size_t storage_bytes)
{
    if (q == NULL || (uintptr_t)q % SPSC_CACHE_LINE_BYTES != 0 || storage == NULL)
        return -EINVAL;
    if (capacity == 0 || capacity > SPSC_CAPACITY_MAX || (capacity & (capacity - 1)) != 0)
        return -EINVAL;
    if (elem_bytes == 0 || elem_bytes > SPSC_ELEM_BYTES_MAX)
        return -EINVAL;
    if (storage_bytes < spsc_storage_bytes(capacity, elem_bytes))
        return -ENOSPC;
    SPSC_STORE(&q->tail, 0, relaxed);
    q->head_cached = 0;
    SPSC_STORE(&q->head, 0, relaxed);
    q->tail_cached = 0;
    q->slots = (unsigned char *)storage;
    q->mask = capacity - 1;
    q->capacity = capacity;
    q->elem_bytes = elem_bytes;
    return 0;
}

static inline uint32_t spsc_capacity(const struct spsc *q)
{
    return q->capacity;
}

/* Elements in the queue: from the consumer a lower bound (the producer may push meanwhile),
 * from the producer an upper bound, from any other thread (metrics) an estimate in
 * 0..capacity. */
static inline uint32_t spsc_size(struct spsc *q)
{
    /* head first: tail only grows, so the tail loaded after it is >= that head. */
    uint64_t head = SPSC_LOAD(&q->head, acquire);
    uint64_t tail = SPSC_LOAD(&q->tail, acquire);
    uint64_t n = tail - head;
    return n > q->capacity ? q->capacity : (uint32_t)n;
}

/* Copies n consecutive elements between the ring at counter pos and a flat buffer, in at
 * most two pieces (the second after the wrap). */
static inline void spsc_slots_write(struct spsc *q, uint64_t pos, const void *src, uint32_t n)
{
    uint64_t slot = pos & q->mask;
    uint64_t first = q->capacity - slot < n ? q->capacity - slot : n;
    memcpy(q->slots + slot * q->elem_bytes, src, (size_t)first * q->elem_bytes);
    if (n > first)
        memcpy(q->slots, (const unsigned char *)src + first * q->elem_bytes,
               (size_t)(n - first) * q->elem_bytes);
}

static inline void spsc_slots_read(const struct spsc *q, uint64_t pos, void *dst, uint32_t n)
{
    uint64_t slot = pos & q->mask;
    uint64_t first = q->capacity - slot < n ? q->capacity - slot : n;
    memcpy(dst, q->slots + slot * q->elem_bytes, (size_t)first * q->elem_bytes);
    if (n > first)
        memcpy((unsigned char *)dst + first * q->elem_bytes, q->slots,
               (size_t)(n - first) * q->elem_bytes);
}

/* Producer: pushes up to n elements from elems (n * elem_bytes bytes, copied) in order and
 * publishes them together. Returns how many were pushed: n, fewer when the queue fills, 0 when
 * it is full. Never blocks. */
static inline uint32_t spsc_push_n(struct spsc *q, const void *elems, uint32_t n)
{
    uint64_t tail = SPSC_LOAD(&q->tail, relaxed); /* ours */
    uint64_t free_slots = q->capacity - (tail - q->head_cached);
    if (free_slots < n) {
        q->head_cached = SPSC_LOAD(&q->head, acquire);
        free_slots = q->capacity - (tail - q->head_cached);
    }
    assert(free_slots <= q->capacity);
    uint32_t k = free_slots < n ? (uint32_t)free_slots : n;
    if (k == 0)
        return 0;
    spsc_slots_write(q, tail, elems, k);
    SPSC_STORE(&q->tail, tail + k, release);
    return k;
}

/* Producer: pushes one element (elem_bytes bytes, copied). Returns false if the queue is
 * full; the caller counts that and backs off. Never blocks. */
static inline bool spsc_push(struct spsc *q, const void *elem)
{
    return spsc_push_n(q, elem, 1) == 1;
}

/* Consumer: pops up to n elements, oldest first, into out (room for n * elem_bytes bytes) and
 * frees their slots together. Returns how many were popped, 0 when the queue is empty. */
static inline uint32_t spsc_pop_n(struct spsc *q, void *out, uint32_t n)
{
    uint64_t head = SPSC_LOAD(&q->head, relaxed); /* ours */
    uint64_t ready = q->tail_cached - head;
    if (ready < n) {
        q->tail_cached = SPSC_LOAD(&q->tail, acquire);
        ready = q->tail_cached - head;
    }
    assert(ready <= q->capacity);
    uint32_t k = ready < n ? (uint32_t)ready : n;
    if (k == 0)
        return 0;
    spsc_slots_read(q, head, out, k);
    SPSC_STORE(&q->head, head + k, release);
    return k;
}

/* Consumer: pops the oldest element into out (elem_bytes bytes). Returns false if empty. */
static inline bool spsc_pop(struct spsc *q, void *out)
{
    return spsc_pop_n(q, out, 1) == 1;
}

#ifdef __cplusplus
}
#endif

#endif
