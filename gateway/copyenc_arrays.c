/* copyenc_arrays.c — the IO elements of a record as four arrays, for the COPYENC_ARRAYS
 * layout: io_ids integer[], io_vals bigint[] (fixed-width elements), nx_ids integer[],
 * nx_vals bytea[] (8E variable-length elements), in wire order.
 *
 * Owns no state; pure, any thread. PostgreSQL's binary array (array_recv): int32 ndim, int32
 * has-nulls flag, int32 element type OID, per dimension int32 size and int32 lower bound, then
 * each element as int32 length and bytes. No element is NULL; a record without elements of a
 * kind gets an empty array (ndim 0), never NULL. The element count of each array is known
 * before its elements are written (the fixed-width groups hold io_total minus the NX count,
 * which a walk over the 8E group counts finds first), so the ids and the values are written
 * in one pass, each into its own array; only nx_vals has its length patched in afterwards.
 * Like copyenc_json.c, the walk relies on the decoder's checks of the groups and re-asserts
 * what keeps its reads and writes in bounds, once per group. */
#include "gateway/copyenc_io.h"

#include <assert.h>

enum {
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT4 = 23,
    ARRAY_HEAD_BYTES = 20, /* ndim, flags, element type, size, lower bound */
    EMPTY_HEAD_BYTES = 12, /* ndim 0, flags, element type */
};

/* An array field's length word and header for n elements of type oid taking data_bytes in
 * all; returns where the first element goes. */
static uint8_t *put_array_head(uint8_t *p, uint32_t oid, uint32_t n, uint32_t data_bytes)
{
    if (n == 0) {
        p = out_be32(p, EMPTY_HEAD_BYTES);
        p = out_be32(p, 0);
        p = out_be32(p, 0);
        return out_be32(p, oid);
    }
    p = out_be32(p, ARRAY_HEAD_BYTES + data_bytes);
    p = out_be32(p, 1);
    p = out_be32(p, 0);
    p = out_be32(p, oid);
    p = out_be32(p, n);
    return out_be32(p, 1);
}

/* One fixed-width group of codec layout (count_bytes, id_bytes) at *c: each element's id
 * (length 4, int4) at *ids and its value (length 8, int8, zero-extended) at *vals, both moved
 * on, and *c moved past the group. The constants make each call site a loop of its own. */
static inline __attribute__((always_inline)) void put_group(uint8_t **ids, uint8_t **vals,
                                                            const uint8_t **c, const uint8_t *end,
                                                            unsigned count_bytes, unsigned id_bytes,
                                                            unsigned width)
{
    const uint8_t *q = *c;
    assert((size_t)(end - q) >= count_bytes);
    uint32_t n = count_bytes == 1 ? q[0] : be16(q);
    q += count_bytes;
    assert((size_t)(end - q) >= (size_t)n * (id_bytes + width));
    uint8_t *a = *ids;
    uint8_t *v = *vals;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = id_bytes == 1 ? q[0] : be16(q);
        q += id_bytes;
        uint64_t value = width == 1 ? q[0] : width == 2 ? be16(q) : width == 4 ? be32(q) : be64(q);
        q += width;
        a = out_be64(a, (uint64_t)4 << 32 | id);
        v = out_be64(out_be32(v, 8), value);
    }
    *ids = a;
    *vals = v;
    *c = q;
}

/* The four fixed-width groups, N1 N2 N4 N8, of one codec layout. */
static inline __attribute__((always_inline)) void put_groups(uint8_t **ids, uint8_t **vals,
                                                             const uint8_t **c, const uint8_t *end,
                                                             unsigned count_bytes,
                                                             unsigned id_bytes)
{
    put_group(ids, vals, c, end, count_bytes, id_bytes, 1);
    put_group(ids, vals, c, end, count_bytes, id_bytes, 2);
    put_group(ids, vals, c, end, count_bytes, id_bytes, 4);
    put_group(ids, vals, c, end, count_bytes, id_bytes, 8);
}

/* The 8E record's NX element count, read past its four fixed-width groups; *nx is set to
 * the NX group (its u16 count). */
static uint32_t nx_count_8e(const struct avl_record *r, const uint8_t **nx)
{
    const uint8_t *q = r->io;
    const uint8_t *end = r->io + r->io_bytes;
    for (unsigned width = 1; width <= 8; width *= 2) {
        assert(end - q >= 2);
        size_t group = 2u + (size_t)be16(q) * (2u + width);
        assert((size_t)(end - q) >= group);
        q += group;
    }
    assert(end - q >= 2);
    *nx = q;
    return be16(q);
}

/* nx_ids and nx_vals for the n NX elements at c (past the group's count); returns the end. */
static uint8_t *put_nx(uint8_t *p, const uint8_t *c, const uint8_t *end, uint32_t n)
{
    uint8_t *ids = put_array_head(p, OID_INT4, n, 8u * n);
    uint8_t *vals_field = ids + 8u * (size_t)n;
    uint8_t *vals = put_array_head(vals_field, OID_BYTEA, n, 0);
    uint8_t *first = vals;
    for (uint32_t i = 0; i < n; i++) {
        assert(end - c >= 4);
        uint32_t len = be16(c + 2);
        ids = out_be64(ids, (uint64_t)4 << 32 | be16(c));
        c += 4;
        assert((size_t)(end - c) >= len);
        vals = out_be32(vals, len);
        memcpy(vals, c, len);
        vals += len;
        c += len;
    }
    assert(c == end);
    if (n)
        out_be32(vals_field, (uint32_t)(ARRAY_HEAD_BYTES + (vals - first)));
    return vals;
}

uint8_t *copyenc_io_arrays(uint8_t *p, const struct avl_record *r)
{
    const uint8_t *c = r->io;
    const uint8_t *end = r->io + r->io_bytes;
    const uint8_t *nx = end;
    uint32_t nx_n = r->codec == AVL_CODEC_8E ? nx_count_8e(r, &nx) : 0;
    assert(nx_n <= r->io_total);
    uint32_t n = r->io_total - nx_n;

    uint8_t *ids = put_array_head(p, OID_INT4, n, 8u * n);
    uint8_t *vals = put_array_head(ids + 8u * (size_t)n, OID_INT8, n, 12u * n);
    uint8_t *vals_end = vals + 12u * (size_t)n;
    switch (r->codec) {
    case AVL_CODEC_8:
        put_groups(&ids, &vals, &c, end, 1, 1);
        break;
    case AVL_CODEC_8E:
        put_groups(&ids, &vals, &c, end, 2, 2);
        assert(c == nx);
        c += 2; /* the NX count, read above */
        break;
    default:
        assert(r->codec == AVL_CODEC_16);
        put_groups(&ids, &vals, &c, end, 1, 2);
        break;
    }
    assert(vals == vals_end && ids == vals_end - 12u * (size_t)n - (n ? 24u : 16u));
    return put_nx(vals_end, c, end, nx_n);
}
