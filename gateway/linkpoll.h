/* linkpoll.h — the readiness poll of one client link (a PostgreSQL or Redis connection) on the
 * shard's ring (engine_poll), shared by the sink's links (shard.c), the registry link
 * (registry.c) and the intake link (intake.c).
 *
 * A link says which socket it has (fd, and an epoch that changes with every new socket) and
 * what it waits for (events). One poll is armed per link, tagged with its owner and the epoch it
 * was armed for (gateway/tags.h), so a completion for a socket since replaced is recognised and
 * dropped. Shard thread only. */
#ifndef AVLGATE_GATEWAY_LINKPOLL_H
#define AVLGATE_GATEWAY_LINKPOLL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "gateway/tags.h"
#include "shard/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

struct linkpoll {
    bool armed;      /* a poll is registered for `epoch` */
    bool cancelling; /* grow: its cancel is in flight, the completion re-arms */
    uint32_t epoch;  /* the socket epoch the armed poll is for */
    short events;    /* what the armed poll waits for */
};

/* Arms the link's poll for (fd, ev) unless one is armed for its current socket. A poll armed for
 * an older socket is cancelled first (it may never fire). grow: when ev asks for more than the
 * armed poll waits for, cancel that poll so its completion re-arms with both (a Redis link
 * writes only on POLLOUT readiness; the sink's links flush by themselves). No poll when fd < 0
 * or ev == 0; a full SQ leaves it for the next call. */
static inline void linkpoll_arm(struct linkpoll *lp, struct engine *e, enum poll_owner owner,
                                int fd, short ev, uint32_t epoch, bool grow)
{
    if (lp->armed && lp->epoch != epoch) {
        engine_poll_cancel(e, poll_tag(owner, lp->epoch));
        lp->armed = false;
        lp->cancelling = false; /* that poll's completion is stale: never matched */
    }
    if (grow && lp->armed && (ev & ~lp->events) && !lp->cancelling) {
        if (engine_poll_cancel(e, poll_tag(owner, epoch)) == 0)
            lp->cancelling = true;
    }
    if (fd < 0 || ev == 0 || lp->armed)
        return;
    if (engine_poll(e, fd, ev, poll_tag(owner, epoch)) == 0) {
        lp->armed = true;
        lp->epoch = epoch;
        lp->events = ev;
    }
}

/* The completion of a poll of this link (tag, revents as on_poll got them; epoch_now: the link's
 * socket epoch now). True when the link should handle revents; false when the poll was
 * cancelled or was for an older socket. */
static inline bool linkpoll_done(struct linkpoll *lp, uint64_t tag, int revents, uint32_t epoch_now)
{
    uint32_t epoch = (uint32_t)poll_tag_payload(tag);
    if (lp->armed && lp->epoch == epoch) {
        lp->armed = false;
        lp->cancelling = false;
    }
    return revents != -ECANCELED && epoch == epoch_now;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_LINKPOLL_H */
