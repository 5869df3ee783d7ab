/* imap.h — IMEI -> connection slot: which connection of this shard owns a device.
 *
 * Open addressing with linear probing and backward-shift deletion (no tombstones, so a shard
 * that sees millions of connects and closes never degrades). Keys are stored as imei + 1 so that
 * 0 marks an empty cell; the table has at least twice as many cells as it holds keys (the caller
 * sizes it from conns_max). Nothing here allocates or is thread-safe: the shard's thread. */
#ifndef AVLGATE_GATEWAY_IMAP_H
#define AVLGATE_GATEWAY_IMAP_H

#include <stdbool.h>
#include <stdint.h>
#include <xxhash.h>

#ifdef __cplusplus
extern "C" {
#endif

struct imap {
    uint64_t *keys;  /* mask + 1 cells: imei + 1, or 0 */
    uint32_t *slots; /* the slot of the key in the same cell */
    uint32_t mask;   /* cells - 1, cells a power of two */
};

static inline uint32_t imap_home(const struct imap *m, uint64_t imei)
{
    return (uint32_t)XXH3_64bits(&imei, sizeof imei) & m->mask;
}

/* The slot of imei, or -1. */
static inline int64_t imap_get(const struct imap *m, uint64_t imei)
{
    for (uint32_t i = imap_home(m, imei);; i = (i + 1) & m->mask) {
        if (m->keys[i] == 0)
            return -1;
        if (m->keys[i] == imei + 1)
            return m->slots[i];
    }
}

/* Sets imei's slot (inserted or replaced). The table must have a free cell. */
static inline void imap_put(struct imap *m, uint64_t imei, uint32_t slot)
{
    for (uint32_t i = imap_home(m, imei);; i = (i + 1) & m->mask) {
        if (m->keys[i] == 0 || m->keys[i] == imei + 1) {
            m->keys[i] = imei + 1;
            m->slots[i] = slot;
            return;
        }
    }
}

/* Removes imei if present. */
static inline void imap_del(struct imap *m, uint64_t imei)
{
    uint32_t i = imap_home(m, imei);
    while (m->keys[i] != imei + 1) {
        if (m->keys[i] == 0)
            return;
        i = (i + 1) & m->mask;
    }
    /* Backward shift: pull later members of the probe run into the hole. */
    for (uint32_t j = (i + 1) & m->mask;; j = (j + 1) & m->mask) {
        if (m->keys[j] == 0)
            break;
        uint32_t home = imap_home(m, m->keys[j] - 1);
        bool movable = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->keys[i] = m->keys[j];
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->keys[i] = 0;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_IMAP_H */
