/* hdr_hist.h — a log-linear latency histogram in the manner of HdrHistogram: values in
 * microseconds, exact below 128 us, above that 64 linear sub-buckets per power of two, so a
 * reported value (the middle of its bucket) is within 0.8 % of every value in the bucket. Fixed
 * size (HDR_HIST_BUCKETS counters, about 16 KB), no allocation, no per-sample storage: record on
 * one thread, merge the threads' histograms for quantiles. Not thread-safe per object. */
#ifndef AVLGATE_LOADGEN_HDR_HIST_H
#define AVLGATE_LOADGEN_HDR_HIST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    HDR_HIST_SUB_BITS = 6,                   /* 64 sub-buckets per power of two */
    HDR_HIST_EXACT = 2 << HDR_HIST_SUB_BITS, /* values below 128 have a bucket each */
    HDR_HIST_EXP_MAX = 36,                   /* 2^36 us (19 h) and above are clamped */
    HDR_HIST_BUCKETS =
        (HDR_HIST_EXP_MAX - HDR_HIST_SUB_BITS - 1) * (1 << HDR_HIST_SUB_BITS) + HDR_HIST_EXACT,
};

struct hdr_hist {
    uint64_t count;
    uint64_t max_us; /* the largest value recorded, exact */
    uint64_t counts[HDR_HIST_BUCKETS];
};

/* Empties h. */
void hdr_hist_reset(struct hdr_hist *h);
/* Counts one value (us); values at or above 2^HDR_HIST_EXP_MAX land in the last bucket. */
void hdr_hist_record(struct hdr_hist *h, uint64_t value_us);
/* Adds every count of src to dst. */
void hdr_hist_merge(struct hdr_hist *dst, const struct hdr_hist *src);
/* The value at quantile q (0..1): the middle of the bucket that holds the ceil(q * count)-th
 * smallest value, never above max_us. 0 for an empty histogram. */
uint64_t hdr_hist_quantile(const struct hdr_hist *h, double q);
/* A value (us) in milliseconds, as loadgen prints latencies. */
static inline double hdr_hist_ms(uint64_t value_us)
{
    return (double)value_us / 1000.0;
}

/* The bucket of a value and a bucket's lowest value and width (for the tests). */
uint32_t hdr_hist_bucket(uint64_t value_us);
uint64_t hdr_hist_bucket_low(uint32_t bucket);
uint64_t hdr_hist_bucket_width(uint32_t bucket);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_HDR_HIST_H */
