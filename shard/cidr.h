/* cidr.h — a short list of address ranges ("10.0.0.0/8,192.0.2.7,2001:db8::/32"): who may send
 * a PROXY protocol header (issue 16's --proxy-from). An IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d, as a dual-stack socket reports an IPv4 peer) matches the IPv4 ranges.
 *
 * Owns nothing beyond the struct: fixed capacity, no allocation. Parsed once at start-up;
 * cidr_match reads it only, from any thread.
 */
#ifndef AVLGATE_SHARD_CIDR_H
#define AVLGATE_SHARD_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CIDR_RANGES_MAX = 32 };

struct cidr_range {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t bits;   /* prefix length: 0..32 or 0..128 */
    uint8_t addr[16];
};

struct cidr_list {
    unsigned len;
    struct cidr_range r[CIDR_RANGES_MAX];
};

/* Parses comma-separated ranges, each an address with an optional /prefix (a bare address is
 * a /32 or /128). Bits past the prefix must be zero ("10.1.0.0/8" is refused: a typo, likely).
 * Returns 0, or -1 with what is wrong written to err (at most err_cap bytes). */
int cidr_parse(const char *text, struct cidr_list *l, char *err, size_t err_cap);

/* Whether the address (AF_INET or AF_INET6; others never match) is in one of the ranges. */
bool cidr_match(const struct cidr_list *l, const struct sockaddr *sa);

#ifdef __cplusplus
}
#endif

#endif
