/* hist.h — a log-linear latency histogram in the manner of HdrHistogram: values in
 * microseconds, exact below 128 us, above that 64 linear sub-buckets per power of two, so a
 * reported value (the middle of its bucket) is within 0.8 % of every value in the bucket. Fixed
 * size (HIST_BUCKETS counters, about 16 KB), no allocation, no per-sample storage: record on
 * one thread, merge the threads' histograms for quantiles. Not thread-safe per object. */
#ifndef AVLGATE_LOADGEN_HIST_H
#define AVLGATE_LOADGEN_HIST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    HIST_SUB_BITS = 6,               /* 64 sub-buckets per power of two */
    HIST_EXACT = 2 << HIST_SUB_BITS, /* values below 128 have a bucket each */
    HIST_EXP_MAX = 36,               /* 2^36 us (19 h) and above are clamped */
    HIST_BUCKETS = (HIST_EXP_MAX - HIST_SUB_BITS - 1) * (1 << HIST_SUB_BITS) + HIST_EXACT,
};

struct hist {
    uint64_t count;
    uint64_t max_us; /* the largest value recorded, exact */
    uint64_t counts[HIST_BUCKETS];
};

/* Empties h. */
void hist_reset(struct hist *h);
/* Counts one value (us); values at or above 2^HIST_EXP_MAX land in the last bucket. */
void hist_record(struct hist *h, uint64_t value_us);
/* Adds every count of src to dst. */
void hist_merge(struct hist *dst, const struct hist *src);
/* The value at quantile q (0..1): the middle of the bucket that holds the ceil(q * count)-th
 * smallest value, never above max_us. 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

/* The bucket of a value and a bucket's lowest value and width (for the tests). */
uint32_t hist_bucket(uint64_t value_us);
uint64_t hist_bucket_low(uint32_t bucket);
uint64_t hist_bucket_width(uint32_t bucket);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_HIST_H */
