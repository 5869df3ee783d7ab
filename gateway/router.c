/* router.c — the consistent-hash ring that maps an IMEI to its owner shard.
 *
 * Owns nothing but the contents of the caller's point storage, written once by router_init()
 * on the start-up thread before the router is shared. Invariants after init: points_len ==
 * shards * vnodes_per_shard, the points are sorted by (hash, shard), every shard has exactly
 * vnodes_per_shard points. Lookups only read, so any thread may call them concurrently.
 *
 * Ties between equal point hashes (2^-64 per pair, but possible) are broken by the lower shard
 * id. That keeps the ring stable when shards are added: a new shard's point never displaces
 * an existing point it collides with. */
#include "gateway/router.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <xxhash.h>

#include "codec/avl.h"

_Static_assert(sizeof(struct router_point) == 16, "a ring point is 16 bytes");
_Static_assert((uint64_t)ROUTER_SHARDS_MAX *ROUTER_VNODES_MAX <= UINT32_MAX,
               "points_len fits 32 bits");

/* The label is part of the routing contract (see router.h). */
static uint64_t point_hash(unsigned shard, unsigned vnode)
{
    char label[48];
    int len = snprintf(label, sizeof label, "avlgate/shard/%u/vnode/%u", shard, vnode);
    assert(len > 0 && (size_t)len < sizeof label);
    return XXH3_64bits(label, (size_t)len);
}

static int point_cmp(const void *a, const void *b)
{
    const struct router_point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return x->vnode < y->vnode ? -1 : x->vnode > y->vnode;
}

size_t router_storage_bytes(unsigned shards, unsigned vnodes_per_shard)
{
    return (size_t)shards * vnodes_per_shard * sizeof(struct router_point);
}

int router_init(struct router *r, unsigned shards, unsigned vnodes_per_shard, void *storage,
                size_t storage_bytes)
{
    assert(r != NULL);
    if (shards < 1 || shards > ROUTER_SHARDS_MAX)
        return -EINVAL;
    if (vnodes_per_shard < 1 || vnodes_per_shard > ROUTER_VNODES_MAX)
        return -EINVAL;
    if (storage == NULL || (uintptr_t)storage % _Alignof(struct router_point) != 0)
        return -EINVAL;
    if (storage_bytes < router_storage_bytes(shards, vnodes_per_shard))
        return -ENOSPC;

    struct router_point *points = storage;
    uint32_t n = 0;
    for (unsigned s = 0; s < shards; s++)
        for (unsigned v = 0; v < vnodes_per_shard; v++)
            points[n++] = (struct router_point){point_hash(s, v), s, v};
    /* Init only, on the start-up thread: qsort may allocate scratch memory here. */
    qsort(points, n, sizeof points[0], point_cmp);

    *r = (struct router){
        .points = points,
        .points_len = n,
        .shards = shards,
        .vnodes_per_shard = vnodes_per_shard,
    };
    assert(r->points_len == shards * vnodes_per_shard);
    assert(point_cmp(&points[0], &points[n - 1]) <= 0);
    return 0;
}

uint64_t router_key(uint64_t imei)
{
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    assert(avl_imei_valid(imei));
    int len = avl_imei_format(imei, digits);
    assert(len >= AVL_IMEI_CANONICAL_DIGITS && len <= AVL_IMEI_DIGITS_MAX);
    return XXH3_64bits(digits, (size_t)len);
}

unsigned router_owner_of_key(const struct router *r, uint64_t key)
{
    assert(r->points_len >= 1 && r->points_len == r->shards * r->vnodes_per_shard);
    /* First point with hash >= key: lower bound over [lo, hi). */
    uint32_t lo = 0, hi = r->points_len;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->points[mid].hash < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == r->points_len)
        lo = 0; /* past the last point: wrap to the first */
    unsigned shard = r->points[lo].shard;
    assert(shard < r->shards);
    return shard;
}

unsigned router_owner(const struct router *r, uint64_t imei)
{
    return router_owner_of_key(r, router_key(imei));
}
