/* dedup.c — duplicate-detection windows and their pool (dedup.h). The shard's thread only. */
#include "gateway/dedup.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "gateway/zmap.h"

uint64_t dedup_fp(const struct avl_record *r)
{
    uint8_t fixed[24];
    memcpy(fixed, &r->ts_ms, 8);
    memcpy(fixed + 8, &r->lon_e7, 4);
    memcpy(fixed + 12, &r->lat_e7, 4);
    memcpy(fixed + 16, &r->altitude_m, 2);
    memcpy(fixed + 18, &r->angle_deg, 2);
    memcpy(fixed + 20, &r->speed_kmh, 2);
    fixed[22] = r->satellites;
    fixed[23] = r->priority;
    uint64_t seed = XXH3_64bits(fixed, sizeof fixed) ^ ((uint64_t)r->event_id << 48) ^
                    ((uint64_t)r->codec << 40) ^ ((uint64_t)r->generation << 32);
    return XXH3_64bits_withSeed(r->io, r->io_bytes, seed);
}

bool dedup_has(const struct dedup *d, uint64_t fp)
{
    for (unsigned i = 0; i < d->len; i++)
        if (d->fp[i] == fp)
            return true;
    return false;
}

void dedup_push(struct dedup *d, uint64_t fp)
{
    if (d->len < DEDUP_FP_MAX) {
        d->fp[(d->head + d->len) % DEDUP_FP_MAX] = fp;
        d->len++;
    } else {
        d->fp[d->head] = fp;
        d->head = (uint8_t)((d->head + 1) % DEDUP_FP_MAX);
    }
}

void dedup_remove(struct dedup *d, const uint64_t *fps, uint32_t n)
{
    struct dedup kept = {0};
    for (unsigned i = 0; i < d->len; i++) {
        uint64_t fp = dedup_at(d, i);
        bool drop = false;
        for (uint32_t k = 0; k < n && !drop; k++)
            drop = fps[k] == fp;
        if (!drop)
            dedup_push(&kept, fp);
    }
    *d = kept;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

void dedup_from_text(struct dedup *d, const char *text)
{
    memset(d, 0, sizeof *d);
    if (!text || text[0] != '\\' || text[1] != 'x')
        return;
    const char *h = text + 2;
    size_t n = strlen(h) / 16;
    if (n > DEDUP_FP_MAX)
        n = DEDUP_FP_MAX;
    for (size_t i = 0; i < n; i++) {
        uint64_t fp = 0;
        for (int k = 0; k < 16; k++) {
            int v = hexval(h[16 * i + (size_t)k]);
            if (v < 0)
                return;
            fp = fp << 4 | (uint64_t)v;
        }
        dedup_push(d, fp);
    }
}

int dedup_pool_init(struct dedup_pool *p, uint32_t windows_len)
{
    p->wins = zmap((size_t)windows_len * sizeof *p->wins);
    p->free = calloc(windows_len, sizeof *p->free);
    p->wins_len = windows_len;
    p->free_len = 0;
    if (!p->wins || !p->free)
        return -ENOMEM;
    /* Highest index at the bottom: the windows in use stay at the low, resident end. */
    for (uint32_t i = 0; i < windows_len; i++)
        p->free[i] = windows_len - 1 - i;
    p->free_len = windows_len;
    return 0;
}

void dedup_pool_destroy(struct dedup_pool *p)
{
    zunmap(p->wins, (size_t)p->wins_len * sizeof *p->wins);
    free(p->free);
    p->wins = NULL;
    p->free = NULL;
}

struct dedup *dedup_win_mut(struct dedup_pool *p, uint32_t *win)
{
    if (!*win) {
        assert(p->free_len > 0);
        *win = p->free[--p->free_len] + 1;
        p->wins[*win - 1].len = 0;
        p->wins[*win - 1].head = 0;
    }
    return &p->wins[*win - 1];
}

void dedup_win_drop(struct dedup_pool *p, uint32_t *win)
{
    if (*win) {
        p->free[p->free_len++] = *win - 1;
        *win = 0;
    }
}

void dedup_win_set(struct dedup_pool *p, uint32_t *win, const struct dedup *src)
{
    if (src->len == 0)
        dedup_win_drop(p, win);
    else
        *dedup_win_mut(p, win) = *src;
}
