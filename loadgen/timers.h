/* timers.h — a worker's device timers: a binary min-heap of (deadline, device) with at most one
 * entry per device, and per device its place in the heap, so setting, moving and cancelling a
 * device's timer are O(log n) and need no search. Shared by the TCP devices (device.c) and the
 * UDP ones (udp.c).
 *
 * Ownership, lifetimes, threads: the worker owns its struct timers; timers_init sizes it for
 * devs_len devices before the worker's thread starts (the only allocation), timers_free
 * releases it after the thread ended. Everything else runs on the worker's thread only. */
#ifndef AVLGATE_LOADGEN_TIMERS_H
#define AVLGATE_LOADGEN_TIMERS_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct timer {
    uint64_t at_ns;
    uint32_t dev;
};

struct timers {
    struct timer *heap; /* devs_len entries; heap[0] is the earliest */
    uint32_t *pos;      /* per device: its heap position + 1; 0: no timer */
    uint32_t len, devs_len;
};

/* Sizes t for devices 0 .. devs_len - 1, none armed. Returns 0 or -ENOMEM (timers_free
 * releases what was made either way). */
int timers_init(struct timers *t, uint32_t devs_len);
void timers_free(struct timers *t);

/* Arms device dev's timer for at_ns, moving it when it was armed already. */
void timers_set(struct timers *t, uint32_t dev, uint64_t at_ns);
/* Disarms device dev's timer, if armed. */
void timers_cancel(struct timers *t, uint32_t dev);
/* Pops the earliest timer when it is due at now: true, with its device in *dev. */
bool timers_pop_due(struct timers *t, uint64_t now_ns, uint32_t *dev);

/* The earliest deadline; UINT64_MAX when no timer is armed. */
static inline uint64_t timers_next_ns(const struct timers *t)
{
    return t->len ? t->heap[0].at_ns : UINT64_MAX;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_TIMERS_H */
