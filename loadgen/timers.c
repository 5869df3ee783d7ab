/* timers.c — a worker's device timers (timers.h): a binary min-heap of (deadline, device).
 *
 * Owns the heap and the per-device positions. Invariants: t->pos[d] == i + 1 exactly when
 * t->heap[i].dev == d (i < t->len), and 0 for a device without a timer, so a device has at most
 * one entry. The worker's thread only (timers_init and timers_free: the main thread, while the
 * worker's thread does not run). */
#include "loadgen/timers.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

int timers_init(struct timers *t, uint32_t devs_len)
{
    *t = (struct timers){.devs_len = devs_len};
    t->heap = calloc(devs_len ? devs_len : 1, sizeof *t->heap);
    t->pos = calloc(devs_len ? devs_len : 1, sizeof *t->pos);
    return t->heap && t->pos ? 0 : -ENOMEM;
}

void timers_free(struct timers *t)
{
    free(t->heap);
    free(t->pos);
    *t = (struct timers){0};
}

static void heap_put(struct timers *t, uint32_t i, struct timer e)
{
    t->heap[i] = e;
    t->pos[e.dev] = i + 1;
}

static uint32_t heap_up(struct timers *t, uint32_t i)
{
    struct timer e = t->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (t->heap[parent].at_ns <= e.at_ns)
            break;
        heap_put(t, i, t->heap[parent]);
        i = parent;
    }
    heap_put(t, i, e);
    return i;
}

static void heap_down(struct timers *t, uint32_t i)
{
    struct timer e = t->heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= t->len)
            break;
        if (child + 1 < t->len && t->heap[child + 1].at_ns < t->heap[child].at_ns)
            child++;
        if (t->heap[child].at_ns >= e.at_ns)
            break;
        heap_put(t, i, t->heap[child]);
        i = child;
    }
    heap_put(t, i, e);
}

void timers_set(struct timers *t, uint32_t dev, uint64_t at_ns)
{
    assert(dev < t->devs_len);
    if (t->pos[dev]) {
        uint32_t i = t->pos[dev] - 1;
        t->heap[i].at_ns = at_ns;
        heap_down(t, heap_up(t, i));
        return;
    }
    assert(t->len < t->devs_len); /* one entry per device */
    uint32_t i = t->len++;
    heap_put(t, i, (struct timer){at_ns, dev});
    heap_up(t, i);
}

void timers_cancel(struct timers *t, uint32_t dev)
{
    assert(dev < t->devs_len);
    if (!t->pos[dev])
        return;
    uint32_t i = t->pos[dev] - 1;
    t->pos[dev] = 0;
    uint32_t last = --t->len;
    if (i != last) {
        heap_put(t, i, t->heap[last]);
        heap_down(t, heap_up(t, i));
    }
}

bool timers_pop_due(struct timers *t, uint64_t now_ns, uint32_t *dev)
{
    if (t->len == 0 || t->heap[0].at_ns > now_ns)
        return false;
    *dev = t->heap[0].dev;
    timers_cancel(t, *dev);
    return true;
}
