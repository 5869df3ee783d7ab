/* timeline.c — the per-second ring of timeline.h.
 *
 * Owns nothing but the ring's contents. Invariants: slot (sec % TIMELINE_SLOTS) holds the
 * newest second that maps to it; a second, once final, is never added to again; every access
 * holds t->mu. timeline_add runs on the workers' threads, timeline_take on the main thread. */
#include "loadgen/timeline.h"

void timeline_init(struct timeline *t)
{
    pthread_mutex_init(&t->mu, NULL);
    for (int i = 0; i < TIMELINE_SLOTS; i++)
        t->ring[i].sec = -1;
}

void timeline_add(struct timeline *t, int64_t sec, const struct timeline_counts *n,
                  const struct hdr_hist *ack)
{
    pthread_mutex_lock(&t->mu);
    struct timeline_slot *s = &t->ring[(uint64_t)sec % TIMELINE_SLOTS];
    if (s->sec < sec) {
        s->sec = sec;
        s->final = false;
        s->publishers = 0;
        s->n = (struct timeline_counts){0};
        hdr_hist_reset(&s->ack);
    }
    if (s->sec == sec && !s->final) {
        s->publishers++;
        s->n.connected += n->connected;
        s->n.packets += n->packets;
        s->n.records += n->records;
        s->n.errors += n->errors;
        hdr_hist_merge(&s->ack, ack);
    }
    pthread_mutex_unlock(&t->mu);
}

struct timeline_sample timeline_take(struct timeline *t, int64_t k)
{
    struct timeline_sample smp = {.t_s = (double)(k + 1)};
    pthread_mutex_lock(&t->mu);
    struct timeline_slot *s = &t->ring[(uint64_t)k % TIMELINE_SLOTS];
    if (s->sec == k) {
        s->final = true;
        smp.n = s->n;
        smp.ack_p50_ms = hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.50));
        smp.ack_p99_ms = hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.99));
    }
    pthread_mutex_unlock(&t->mu);
    return smp;
}
