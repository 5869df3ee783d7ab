/* stat.h — counters written by one thread (their shard) and read by others (the metrics
 * endpoint) while it runs.
 *
 * The writer adds to its own counter with a relaxed atomic store of the sum (a plain load, add
 * and store: no lock prefix, nothing shared on the hot path); readers load with a relaxed
 * atomic load. Only the owning thread may write a counter. Counters live on their shard's own
 * cache lines (the stats structs are 64-byte aligned), so reading them costs the writer at
 * most a line transfer per scrape. */
#ifndef AVLGATE_SHARD_STAT_H
#define AVLGATE_SHARD_STAT_H

#include <stdint.h>

static inline void stat_add(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, *c + n, __ATOMIC_RELAXED);
}

static inline void stat_set(uint64_t *c, uint64_t v)
{
    __atomic_store_n(c, v, __ATOMIC_RELAXED);
}

/* From any thread. */
static inline uint64_t stat_read(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

#endif /* AVLGATE_SHARD_STAT_H */
