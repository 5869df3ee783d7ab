/* reconnect.c — the links' reconnect bookkeeping (reconnect.h): jittered exponential backoff,
 * the connect deadline, the last error. Owns nothing beyond the structs it is given; the
 * owner's thread only. */
#include "gateway/reconnect.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

const char *reconnect_config_error(uint32_t backoff_min_ms, uint32_t backoff_max_ms)
{
    if (backoff_min_ms > 0 && backoff_max_ms > 0 && backoff_min_ms > backoff_max_ms)
        return "backoff_min_ms above backoff_max_ms";
    return NULL;
}

void reconnect_policy_init(struct reconnect_policy *p, uint32_t backoff_min_ms,
                           uint32_t backoff_max_ms, uint32_t connect_timeout_ms, uint64_t seed,
                           const void *salt)
{
    p->backoff_min_ms = backoff_min_ms ? backoff_min_ms : RECONNECT_BACKOFF_MIN_MS_DEFAULT;
    p->backoff_max_ms = backoff_max_ms ? backoff_max_ms : RECONNECT_BACKOFF_MAX_MS_DEFAULT;
    if (p->backoff_max_ms < p->backoff_min_ms)
        p->backoff_max_ms = p->backoff_min_ms;
    p->connect_timeout_ms = connect_timeout_ms;
    p->rng = seed;
    if (p->rng == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        p->rng = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)salt;
    }
}

uint64_t reconnect_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

uint32_t reconnect_backoff_ms(struct reconnect *r, struct reconnect_policy *p, uint64_t now_ms)
{
    if (r->up_since_ms != 0 && now_ms - r->up_since_ms >= p->backoff_max_ms)
        r->attempts = 0;
    r->up_since_ms = 0;
    uint64_t delay = p->backoff_min_ms;
    for (uint32_t i = 0; i < r->attempts && delay < p->backoff_max_ms; i++)
        delay *= 2;
    if (delay > p->backoff_max_ms)
        delay = p->backoff_max_ms;
    if (r->attempts < UINT32_MAX)
        r->attempts++;
    uint64_t half = delay / 2;
    return (uint32_t)(delay - half + reconnect_splitmix64(&p->rng) % (half + 1));
}

void reconnect_schedule(struct reconnect *r, struct reconnect_policy *p, uint64_t now_ms)
{
    r->retry_at_ms = now_ms + reconnect_backoff_ms(r, p, now_ms);
}

void reconnect_attempt(struct reconnect *r, const struct reconnect_policy *p, uint64_t now_ms)
{
    r->connect_deadline_ms = now_ms + p->connect_timeout_ms;
}

void reconnect_up(struct reconnect *r, uint64_t now_ms)
{
    r->up_since_ms = now_ms != 0 ? now_ms : 1;
    r->error[0] = '\0';
}

void reconnect_set_error(struct reconnect *r, const char *msg)
{
    if (msg == NULL)
        msg = "";
    snprintf(r->error, sizeof r->error, "%.*s", (int)strcspn(msg, "\n"), msg);
}
