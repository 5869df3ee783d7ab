/* hdr_hist.c — the log-linear histogram of hdr_hist.h. Pure: no allocation, no globals.
 *
 * Bucket layout: values below HDR_HIST_EXACT (128) map to themselves. A larger value with its top
 * bit at position e (7 <= e < HDR_HIST_EXP_MAX) is shifted right by s = e - 6, leaving a mantissa
 * m in [64, 127]; its bucket is s * 64 + m, which runs on without gaps from 128. The bucket
 * spans 2^s values starting at m << s, a width of at most 1/64 of its lowest value. */
#include "loadgen/hdr_hist.h"

#include <string.h>

_Static_assert(HDR_HIST_BUCKETS == (HDR_HIST_EXP_MAX - 7) * 64 + 128, "layout as described above");

void hdr_hist_reset(struct hdr_hist *h)
{
    memset(h, 0, sizeof *h);
}

uint32_t hdr_hist_bucket(uint64_t v)
{
    if (v < HDR_HIST_EXACT)
        return (uint32_t)v;
    if (v >> HDR_HIST_EXP_MAX)
        return HDR_HIST_BUCKETS - 1;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned s = e - HDR_HIST_SUB_BITS;
    return (uint32_t)(s * (1u << HDR_HIST_SUB_BITS) + (v >> s));
}

uint64_t hdr_hist_bucket_low(uint32_t b)
{
    if (b < HDR_HIST_EXACT)
        return b;
    unsigned s = (b >> HDR_HIST_SUB_BITS) - 1;
    uint64_t m = (b & ((1u << HDR_HIST_SUB_BITS) - 1)) + (1u << HDR_HIST_SUB_BITS);
    return m << s;
}

uint64_t hdr_hist_bucket_width(uint32_t b)
{
    return b < HDR_HIST_EXACT ? 1 : UINT64_C(1) << ((b >> HDR_HIST_SUB_BITS) - 1);
}

void hdr_hist_record(struct hdr_hist *h, uint64_t v)
{
    h->counts[hdr_hist_bucket(v)]++;
    h->count++;
    if (v > h->max_us)
        h->max_us = v;
}

void hdr_hist_merge(struct hdr_hist *dst, const struct hdr_hist *src)
{
    if (src->count == 0)
        return;
    for (uint32_t b = 0; b < HDR_HIST_BUCKETS; b++)
        dst->counts[b] += src->counts[b];
    dst->count += src->count;
    if (src->max_us > dst->max_us)
        dst->max_us = src->max_us;
}

uint64_t hdr_hist_quantile(const struct hdr_hist *h, double q)
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
    for (uint32_t b = 0; b < HDR_HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            uint64_t mid = hdr_hist_bucket_low(b) + (hdr_hist_bucket_width(b) - 1) / 2;
            return mid < h->max_us ? mid : h->max_us;
        }
    }
    return h->max_us;
}
