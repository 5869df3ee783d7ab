/* internal.h — what the codec's .c files share and nobody else uses: big-endian loads and
 * stores (memcpy + bswap: one load and one bswap, no alignment assumed), and the few
 * protocol rules that both the decoders and the encoders apply. */
#ifndef AVLGATE_GATEWAY_CODEC_INTERNAL_H
#define AVLGATE_GATEWAY_CODEC_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The loads below swap unconditionally, and the encoders' size sums assume a 64-bit size_t
 * (an 8E record can describe over 4 GiB of NX elements before the per-record ceiling
 * check). Both hold on every machine avlgate targets; say so where it would break. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the codec assumes a little-endian host");
_Static_assert(SIZE_MAX > UINT32_MAX, "the codec assumes a 64-bit size_t");

enum {
    AVL_RECORD_FIXED_BYTES = 24, /* ts 8, priority 1, lon 4, lat 4, alt 2, angle 2, sats 1,
                                    speed 2 */
};

/* True if a GPRS message of this type may travel in a frame of this codec. */
bool avl_gprs_type_valid(uint8_t codec, uint8_t type);
/* Bytes of fixed fields in front of a GPRS message's text: timestamp and/or packed IMEI. */
uint32_t avl_gprs_fixed_bytes(uint8_t codec);

static inline uint16_t be16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap16(v);
}

static inline uint32_t be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap32(v);
}

static inline uint64_t be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap64(v);
}

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

static inline void put_be16(uint8_t *p, uint16_t v)
{
    v = __builtin_bswap16(v);
    memcpy(p, &v, sizeof v);
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, sizeof v);
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, sizeof v);
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

#endif /* AVLGATE_GATEWAY_CODEC_INTERNAL_H */
