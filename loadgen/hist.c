/* hist.c — the log-linear histogram of hist.h. Pure: no allocation, no globals.
 *
 * Bucket layout: values below HIST_EXACT (128) map to themselves. A larger value with its top
 * bit at position e (7 <= e < HIST_EXP_MAX) is shifted right by s = e - 6, leaving a mantissa
 * m in [64, 127]; its bucket is s * 64 + m, which runs on without gaps from 128. The bucket
 * spans 2^s values starting at m << s, a width of at most 1/64 of its lowest value. */
#include "loadgen/hist.h"

#include <string.h>

_Static_assert(HIST_BUCKETS == (HIST_EXP_MAX - 7) * 64 + 128, "layout as described above");

void hist_reset(struct hist *h)
{
    memset(h, 0, sizeof *h);
}

uint32_t hist_bucket(uint64_t v)
{
    if (v < HIST_EXACT)
        return (uint32_t)v;
    if (v >> HIST_EXP_MAX)
        return HIST_BUCKETS - 1;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned s = e - HIST_SUB_BITS;
    return (uint32_t)(s * (1u << HIST_SUB_BITS) + (v >> s));
}

uint64_t hist_bucket_low(uint32_t b)
{
    if (b < HIST_EXACT)
        return b;
    unsigned s = (b >> HIST_SUB_BITS) - 1;
    uint64_t m = (b & ((1u << HIST_SUB_BITS) - 1)) + (1u << HIST_SUB_BITS);
    return m << s;
}

uint64_t hist_bucket_width(uint32_t b)
{
    return b < HIST_EXACT ? 1 : UINT64_C(1) << ((b >> HIST_SUB_BITS) - 1);
}

void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_bucket(v)]++;
    h->count++;
    if (v > h->max_us)
        h->max_us = v;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    if (src->count == 0)
        return;
    for (uint32_t b = 0; b < HIST_BUCKETS; b++)
        dst->counts[b] += src->counts[b];
    dst->count += src->count;
    if (src->max_us > dst->max_us)
        dst->max_us = src->max_us;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t b = 0; b < HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            uint64_t mid = hist_bucket_low(b) + (hist_bucket_width(b) - 1) / 2;
            return mid < h->max_us ? mid : h->max_us;
        }
    }
    return h->max_us;
}
