/* reconnect.h — the reconnect bookkeeping the gateway's links share (pgsink's two PostgreSQL
 * links, redislink): when to try again after a loss or a failed attempt, how long an attempt
 * may take, and why the link last failed.
 *
 * Owns no connection. A struct reconnect_policy holds what a link's configuration says (the
 * backoff range, the connect timeout) and the jitter generator; a struct reconnect is one
 * link's state. An owner with several links keeps one policy for all of them, so their delays
 * come from one sequence of draws (pgsink's data and control links do).
 *
 * Backoff: the n-th consecutive failure (n from 0) waits min(max, min * 2^n) ms, drawn
 * uniformly in [delay - delay/2, delay] (splitmix64) so that links which lost a server together
 * do not come back in step. The count restarts once a link has stayed up for backoff_max_ms,
 * so a server that accepts and drops at once is not hammered at backoff_min_ms.
 *
 * Thread: the owner's only (nothing here is shared). Nothing allocates or blocks; the clock is
 * read only to seed the generator when no seed is given. */
#ifndef AVLGATE_GATEWAY_RECONNECT_H
#define AVLGATE_GATEWAY_RECONNECT_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    RECONNECT_BACKOFF_MIN_MS_DEFAULT = 100,
    RECONNECT_BACKOFF_MAX_MS_DEFAULT = 5000,
    RECONNECT_ERROR_BYTES = 256, /* the last error's first line, cut to fit */
};

struct reconnect_policy {
    uint32_t backoff_min_ms;     /* first delay */
    uint32_t backoff_max_ms;     /* ceiling, and how long an up link resets the count */
    uint32_t connect_timeout_ms; /* an attempt that takes longer fails */
    uint64_t rng;                /* splitmix64 state of the jitter */
};

/* One link. Zeroed (calloc, memset) it means: never up, no failure yet, due at once. */
struct reconnect {
    uint32_t attempts;            /* consecutive failures since the last stable link */
    uint64_t retry_at_ms;         /* down: when to try again (0: at once) */
    uint64_t connect_deadline_ms; /* connecting: when the attempt fails */
    uint64_t up_since_ms;         /* 0 while the link is not up */
    char error[RECONNECT_ERROR_BYTES];
};

/* The reason a link's backoff configuration is refused ("backoff_min_ms above
 * backoff_max_ms"), or NULL when it is fine. 0 stands for the default in both. */
const char *reconnect_config_error(uint32_t backoff_min_ms, uint32_t backoff_max_ms);

/* Fills p. backoff_min_ms/backoff_max_ms 0 mean the defaults above; a ceiling below the
 * minimum is raised to it. connect_timeout_ms is taken as given (the links' defaults differ).
 * seed 0: a seed from CLOCK_MONOTONIC mixed with salt (the owner's address, so owners created
 * in the same nanosecond still differ). */
void reconnect_policy_init(struct reconnect_policy *p, uint32_t backoff_min_ms,
                           uint32_t backoff_max_ms, uint32_t connect_timeout_ms, uint64_t seed,
                           const void *salt);

/* The next value of the splitmix64 generator whose state is *state. */
uint64_t reconnect_splitmix64(uint64_t *state);

/* The delay before the next attempt, for a link that was lost or failed an attempt at now_ms:
 * counts the failure (restarting the count first if the link had been up for backoff_max_ms)
 * and draws one jitter value from p. Marks the link not up. */
uint32_t reconnect_backoff_ms(struct reconnect *r, struct reconnect_policy *p, uint64_t now_ms);

/* retry_at_ms = now_ms + reconnect_backoff_ms(). */
void reconnect_schedule(struct reconnect *r, struct reconnect_policy *p, uint64_t now_ms);

/* An attempt starts at now_ms: connect_deadline_ms = now_ms + connect_timeout_ms. */
void reconnect_attempt(struct reconnect *r, const struct reconnect_policy *p, uint64_t now_ms);

/* The link came up at now_ms: it is up since then (1 for a now_ms of 0) and has no error. */
void reconnect_up(struct reconnect *r, uint64_t now_ms);

/* Keeps the first line of msg (NULL: "") as the link's error, cut to RECONNECT_ERROR_BYTES. */
void reconnect_set_error(struct reconnect *r, const char *msg);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_RECONNECT_H */
