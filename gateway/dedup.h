/* dedup.h — duplicate-detection windows: which records a device already sent.
 *
 * A device's window is the fingerprints of its last DEDUP_FP_MAX accepted records (XXH3 of the
 * record: dedup_fp), oldest first. A record whose fingerprint is there is a re-send: stored
 * once, acknowledged again. 64 covers any re-sent packet within Teltonika's 1280-byte AVL packet
 * limit (at most 42 records of the smallest size); a re-sent packet of more records than that
 * would be stored again in part. The window is written to device_state.dedup in the same
 * transaction as the rows (bytea, 8 bytes per fingerprint, big-endian, oldest first) and read
 * back at the device's next handshake in bytea's text form (dedup_from_text).
 *
 * A shard keeps the windows of its devices in a pool (struct dedup_pool: one window per
 * connection slot, mapped without reserve, so only windows in use are resident); a device with
 * no fingerprints holds none. A device names its window by a handle (index + 1; 0: none) that the
 * dedup_win_* functions take and give back. Nothing here is thread-safe: the shard's thread. */
#ifndef AVLGATE_GATEWAY_DEDUP_H
#define AVLGATE_GATEWAY_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/avl.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { DEDUP_FP_MAX = 64 };
_Static_assert(DEDUP_FP_MAX <= UINT8_MAX, "struct dedup counts in uint8_t");

struct dedup {
    uint8_t len;  /* fingerprints held, <= DEDUP_FP_MAX */
    uint8_t head; /* index of the oldest */
    uint64_t fp[DEDUP_FP_MAX];
};

/* A record's fingerprint: its fixed fields, event, codec and generation, and its IO bytes. */
uint64_t dedup_fp(const struct avl_record *r);
bool dedup_has(const struct dedup *d, uint64_t fp);
/* Appends fp as the newest; when full, the oldest is forgotten. */
void dedup_push(struct dedup *d, uint64_t fp);
/* Removes fps[0 .. n-1] from the window, keeping the order of the others. */
void dedup_remove(struct dedup *d, const uint64_t *fps, uint32_t n);
/* The i-th fingerprint, oldest first (i < d->len). */
static inline uint64_t dedup_at(const struct dedup *d, unsigned i)
{
    return d->fp[(d->head + i) % DEDUP_FP_MAX];
}
/* device_state.dedup in bytea's text output ("\x" + 16 hex digits per fingerprint) into d. NULL,
 * text without "\x", or a bad digit give the fingerprints read before it (none for NULL); more
 * than DEDUP_FP_MAX keep the first DEDUP_FP_MAX. */
void dedup_from_text(struct dedup *d, const char *text);

/* The windows of a shard's devices: windows_len of them, handed out LIFO. */
struct dedup_pool {
    struct dedup *wins;
    uint32_t *free;
    uint32_t free_len, wins_len;
};

/* Maps windows_len windows without reserve. 0 or -ENOMEM. */
int dedup_pool_init(struct dedup_pool *p, uint32_t windows_len);
void dedup_pool_destroy(struct dedup_pool *p);
/* The window of handle *win, taken from the pool (empty) when *win is 0. With one window per
 * connection slot the pool cannot run out (asserted). */
struct dedup *dedup_win_mut(struct dedup_pool *p, uint32_t *win);
/* Gives the window back, if *win holds one (*win becomes 0). */
void dedup_win_drop(struct dedup_pool *p, uint32_t *win);
/* Sets the window to *src, holding none when src is empty. */
void dedup_win_set(struct dedup_pool *p, uint32_t *win, const struct dedup *src);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_DEDUP_H */
