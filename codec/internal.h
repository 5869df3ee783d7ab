/* internal.h — what the codec's .c files share and nobody else uses: loads and stores of a
 * given width (on codec/bytes.h), and the few protocol rules that both the decoders and the
 * encoders apply. */
#ifndef AVLGATE_CODEC_INTERNAL_H
#define AVLGATE_CODEC_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "codec/bytes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The encoders' size sums assume a 64-bit size_t (an 8E record can describe over 4 GiB of NX
 * elements before the per-record ceiling check); codec/bytes.h assumes little-endian. Both
 * hold on every machine avlgate targets; say so where it would break. */
_Static_assert(SIZE_MAX > UINT32_MAX, "the codec assumes a 64-bit size_t");

enum {
    AVL_RECORD_FIXED_BYTES = 24, /* ts 8, priority 1, lon 4, lat 4, alt 2, angle 2, sats 1,
                                    speed 2 */
};

/* True if a GPRS message of this type may travel in a frame of this codec. */
bool avl_gprs_type_valid(uint8_t codec, uint8_t type);
/* Bytes of fixed fields in front of a GPRS message's text: timestamp and/or packed IMEI. */
uint32_t avl_gprs_fixed_bytes(uint8_t codec);

/* Reads a big-endian unsigned value of width 1, 2, 4 or 8 bytes. */
static inline uint64_t be_width(const uint8_t *p, unsigned width)
{
    switch (width) {
    case 1:
        return p[0];
    case 2:
        return be16(p);
    case 4:
        return be32(p);
    default:
        return be64(p);
    }
}

static inline void put_be_width(uint8_t *p, unsigned width, uint64_t v)
{
    switch (width) {
    case 1:
        p[0] = (uint8_t)v;
        break;
    case 2:
        put_be16(p, (uint16_t)v);
        break;
    case 4:
        put_be32(p, (uint32_t)v);
        break;
    default:
        put_be64(p, v);
        break;
    }
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_CODEC_INTERNAL_H */
