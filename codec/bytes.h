/* bytes.h — big-endian loads and stores, shared by the codec (the Teltonika wire format), the
 * COPY BINARY encoder and the sink's binary parameters (PostgreSQL's wire format). memcpy +
 * bswap: one load or store and one bswap, no alignment assumed. */
#ifndef AVLGATE_CODEC_BYTES_H
#define AVLGATE_CODEC_BYTES_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The swaps below are unconditional. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "avlgate assumes a little-endian host");

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

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_CODEC_BYTES_H */
