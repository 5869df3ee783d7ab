/* router.h — IMEI affinity: which shard owns a device.
 *
 * The one function used everywhere an IMEI is routed to a shard (the accepting shard after the
 * handshake, the command bridge for an outbound command). A consistent-hash ring over the
 * shards with virtual nodes:
 *
 *   key    = XXH3-64 of the canonical IMEI string (avl_imei_format: 15 digits, zero-padded)
 *   points = XXH3-64 of the label "avlgate/shard/<s>/vnode/<v>" (decimal, no padding) for every
 *            shard s and vnode v, sorted by (hash, shard)
 *   owner  = shard of the first point >= key, wrapping to the first point
 *
 * The labels and the key are a contract: changing either moves nearly every device to another
 * shard. tests/test_router.c pins golden answers and recomputes them independently. Because a
 * shard's points do not depend on the shard count, going from N to N + 1 shards only adds
 * points, so a device either stays or moves to the new shard (about 1/(N + 1) of them move).
 *
 * Memory: the caller provides the point storage, sized with router_storage_bytes(); init does
 * not allocate it and lookups never allocate. After router_init() the router is immutable:
 * any number of threads may call router_owner() on one shared const router at once.
 */
#ifndef AVLGATE_GATEWAY_ROUTER_H
#define AVLGATE_GATEWAY_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    ROUTER_SHARDS_MAX = 256,
    /* A shard's share of the hash space has a relative spread of about 1/sqrt(vnodes).
     * Measured with these labels (worst over N = 2..16 shards, max/mean of the arc shares):
     * 160 vnodes 1.20, 512 vnodes 1.14, 1024 vnodes 1.08. 1024 keeps every shard within
     * about 10% of 1/N up to 64 shards for 16 KB per shard. Figures: tests/test_router.c. */
    ROUTER_VNODES_DEFAULT = 1024,
    ROUTER_VNODES_MAX = 4096,
};

/* One point of the ring: 16 bytes. */
struct router_point {
    uint64_t hash;
    uint32_t shard;
    uint32_t vnode;
};

struct router {
    const struct router_point *points; /* points_len entries, sorted by (hash, shard) */
    uint32_t points_len;               /* shards * vnodes_per_shard */
    uint32_t shards;
    uint32_t vnodes_per_shard;
};

/* Bytes of point storage router_init() needs for this ring (a multiple of 16; align it to 8). */
size_t router_storage_bytes(unsigned shards, unsigned vnodes_per_shard);

/* Builds the ring for shards 1..ROUTER_SHARDS_MAX with vnodes_per_shard 1..ROUTER_VNODES_MAX
 * (ROUTER_VNODES_DEFAULT unless there is a measured reason) into storage, which the caller
 * owns and must keep, unchanged, as long as r is used. Returns 0, -EINVAL for a count out of
 * range or storage not aligned to 8, or -ENOSPC if storage_bytes is below
 * router_storage_bytes(). Call once, at start-up, before the router is shared. */
int router_init(struct router *r, unsigned shards, unsigned vnodes_per_shard, void *storage,
                size_t storage_bytes);

/* The ring key of an IMEI: XXH3-64 of its canonical string. imei must satisfy
 * avl_imei_valid() (at most 17 digits); anything else is a programmer error (assert). Pure. */
uint64_t router_key(uint64_t imei);

/* The shard (0..shards - 1) that owns key: the first point >= key, wrapping. Pure, read-only
 * on r. */
unsigned router_owner_of_key(const struct router *r, uint64_t key);

/* The shard (0..shards - 1) that owns imei: router_owner_of_key(r, router_key(imei)). Pure,
 * read-only on r, safe from any thread. */
unsigned router_owner(const struct router *r, uint64_t imei);

#ifdef __cplusplus
}
#endif

#endif
