/* zmap.h — zeroed memory mapped without reserve, for the tables a shard sizes by conns_max
 * (sessions, the IMEI map, windows, command slots): only the pages touched become resident, so
 * a slot never used costs nothing. Any thread. */
#ifndef AVLGATE_GATEWAY_ZMAP_H
#define AVLGATE_GATEWAY_ZMAP_H

#include <stddef.h>
#include <sys/mman.h>

/* NULL when the mapping fails. */
static inline void *zmap(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Unmaps what zmap gave (NULL: nothing). */
static inline void zunmap(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

#endif /* AVLGATE_GATEWAY_ZMAP_H */
