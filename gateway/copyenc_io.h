/* copyenc_io.h — inside the COPY encoder: the field writers every layout shares and the IO
 * column writers of each layout (copyenc_json.c, copyenc_arrays.c). Not for use outside
 * gateway/copyenc*.c.
 *
 * Pure, like copyenc.h: no state, any thread. Each writer is given room for its part of
 * copyenc_row_bytes_max and writes the whole of its columns, length words included. */
#ifndef AVLGATE_GATEWAY_COPYENC_IO_H
#define AVLGATE_GATEWAY_COPYENC_IO_H

#include <stdint.h>
#include <string.h>

#include "codec/avl.h"
#include "codec/bytes.h"
#include "gateway/copyenc.h"

static inline uint8_t *out_be16(uint8_t *p, uint16_t v)
{
    put_be16(p, v);
    return p + 2;
}

static inline uint8_t *out_be32(uint8_t *p, uint32_t v)
{
    put_be32(p, v);
    return p + 4;
}

static inline uint8_t *out_be64(uint8_t *p, uint64_t v)
{
    put_be64(p, v);
    return p + 8;
}

/* Field length, then value. */
static inline uint8_t *put_int2(uint8_t *p, uint16_t v)
{
    return out_be16(out_be32(p, 2), v);
}

static inline uint8_t *put_int4(uint8_t *p, uint32_t v)
{
    return out_be32(out_be32(p, 4), v);
}

static inline uint8_t *put_int8(uint8_t *p, uint64_t v)
{
    return out_be64(out_be32(p, 8), v);
}

/* A NULL field: length -1, no value. */
static inline uint8_t *put_null(uint8_t *p)
{
    return out_be32(p, UINT32_MAX);
}

static inline uint8_t *put_float8(uint8_t *p, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return put_int8(p, bits);
}

/* The io jsonb text at p, without the version byte or length: `{"<id>":<value>,...}`; returns
 * its end. p has room for 2 + 4 * io_total + 3 * io_bytes (copyenc.c says why that
 * suffices). */
uint8_t *copyenc_io_json(uint8_t *p, const struct avl_record *r);

/* The bytes copyenc_io_arrays writes at most: four array fields (length word and a 20-byte
 * one-dimension header each), 8 bytes per id and 12 per fixed-width value, 4 per NX length
 * word beside the NX bytes (which io_bytes counts). */
static inline size_t copyenc_io_arrays_bytes_max(const struct avl_record *r)
{
    return 4u * (4u + 20u) + 20u * (size_t)r->io_total + (size_t)r->io_bytes;
}

/* The four array fields io_ids, io_vals, nx_ids, nx_vals at p; returns their end. */
uint8_t *copyenc_io_arrays(uint8_t *p, const struct avl_record *r);

#endif /* AVLGATE_GATEWAY_COPYENC_IO_H */
