/* timeline.h — the run's per-second timeline, between the workers and the main thread.
 *
 * Once a second each worker adds the interval that just ended (timeline_add); the main thread
 * takes second k (timeline_take) once every worker has had the chance to add to it, FINALIZE_MS
 * after the second's end. A small ring of TIMELINE_SLOTS seconds under one mutex: a worker
 * touches it once a second, never on its hot path.
 *
 * Ownership and threads: the main thread owns the struct timeline (static storage, for the
 * whole run) and initialises it before the workers start; timeline_add is called from the
 * workers' threads, timeline_take from the main thread. A sample is a plain value. */
#ifndef AVLGATE_LOADGEN_TIMELINE_H
#define AVLGATE_LOADGEN_TIMELINE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "loadgen/hdr_hist.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { TIMELINE_SLOTS = 4 };

/* What one second counted: connections at its end, and what it acknowledged and failed. */
struct timeline_counts {
    uint64_t connected, packets, records, errors;
};

/* One second of the timeline as the workers add to it. */
struct timeline_slot {
    int64_t sec;
    bool final; /* taken by the main thread: a late worker's interval no longer counts */
    unsigned publishers;
    struct timeline_counts n;
    struct hdr_hist ack;
};

struct timeline {
    pthread_mutex_t mu;
    struct timeline_slot ring[TIMELINE_SLOTS];
};

/* One second as the main thread reads it: t_s is the second's end, from the run's start. */
struct timeline_sample {
    double t_s;
    struct timeline_counts n;
    double ack_p50_ms, ack_p99_ms;
};

/* Empties the timeline (no second yet). Before the workers start. */
void timeline_init(struct timeline *t);
/* Adds a worker's interval `sec` (counts and ACK latencies) to its slot, unless the main thread
 * took that second already. Any worker's thread. */
void timeline_add(struct timeline *t, int64_t sec, const struct timeline_counts *n,
                  const struct hdr_hist *ack);
/* Marks second k final and returns it; all zero but t_s when no worker added to it. The main
 * thread. */
struct timeline_sample timeline_take(struct timeline *t, int64_t k);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_TIMELINE_H */
