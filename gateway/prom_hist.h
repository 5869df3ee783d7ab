/* prom_hist.h — a latency histogram with Prometheus's cumulative buckets: each observation is
 * counted in the first bucket whose upper bound holds it (the metrics endpoint sums them into
 * `le` series on read), with the sum and the count. Written by one thread (its shard, through
 * shard/stat.h's stat_add), read by any. */
#ifndef AVLGATE_GATEWAY_PROM_HIST_H
#define AVLGATE_GATEWAY_PROM_HIST_H

#include <stdint.h>

#include "shard/stat.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { PROM_HIST_BUCKETS = 22 };

/* Upper bounds in microseconds; a last bucket above them is +Inf. Fine from 1 to 50 ms, where
 * the ACK latency's p99 lives (its goal is 25 ms), coarse beyond. */
static const uint32_t prom_hist_bucket_us[PROM_HIST_BUCKETS] = {
    250,   500,   1000,  2000,  3000,  5000,   7500,   10000,  12500,   15000,   20000,
    25000, 30000, 40000, 50000, 75000, 100000, 250000, 500000, 1000000, 2500000, 10000000};

struct prom_hist {
    uint64_t bucket[PROM_HIST_BUCKETS + 1]; /* [i]: at most bucket_us[i]; [BUCKETS]: above */
    uint64_t sum_us, count;
};

/* Counts one observation (the owning thread only). */
static inline void prom_hist_observe(struct prom_hist *h, uint64_t us)
{
    unsigned i = 0;
    while (i < PROM_HIST_BUCKETS && us > prom_hist_bucket_us[i])
        i++;
    stat_add(&h->bucket[i], 1);
    stat_add(&h->sum_us, us);
    stat_add(&h->count, 1);
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_PROM_HIST_H */
