/* ratelimit.h — log lines whose cause can repeat at traffic rate (a device re-sending a packet
 * the database refuses, an operator's oversized command fetched again and again): at most
 * RATELIMIT_BURST lines per RATELIMIT_WINDOW_MS; the lines held back are counted and the next
 * line written says how many (suppressed=N). One limiter per kind of line and shard; the
 * shard's thread only. */
#ifndef AVLGATE_GATEWAY_RATELIMIT_H
#define AVLGATE_GATEWAY_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { RATELIMIT_WINDOW_MS = 10000, RATELIMIT_BURST = 10 };

struct ratelimit {
    uint64_t window_end_ms; /* the current window ends here (CLOCK_MONOTONIC ms) */
    uint32_t written;       /* lines written in it */
    uint64_t suppressed;    /* lines held back since the last one written */
};

/* True when a line may be written now: *held is then how many were held back before it. */
static inline bool ratelimit_allow(struct ratelimit *r, uint64_t now_ms, uint64_t *held)
{
    if (now_ms >= r->window_end_ms) {
        r->window_end_ms = now_ms + RATELIMIT_WINDOW_MS;
        r->written = 0;
    }
    if (r->written == RATELIMIT_BURST) {
        r->suppressed++;
        return false;
    }
    r->written++;
    *held = r->suppressed;
    r->suppressed = 0;
    return true;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_RATELIMIT_H */
