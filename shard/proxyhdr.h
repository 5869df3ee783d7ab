/* proxyhdr.h — the PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that
 * a load balancer in TCP mode sends before the client's first byte: who the client really is.
 *
 * A parser in avl_scan's shape: pure, no I/O, no allocation, no state between calls; it looks
 * at most at the header's own bytes and never past p[len - 1]. Call it again with more bytes
 * after PROXYHDR_NEED_MORE. Any thread.
 *
 * What it takes:
 *   v1  "PROXY TCP4 <src> <dst> <sport> <dport>\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN...\r\n";
 *       at most 107 bytes; addresses in their canonical text form (inet_pton), ports 0..65535
 *       without leading zeros or signs, single spaces.
 *   v2  the 12-byte signature, version 2, command LOCAL (the balancer's own connection: health
 *       checks) or PROXY, family AF_INET/AF_INET6 over STREAM or DGRAM, or UNSPEC; the address
 *       block (12 or 36 bytes) and any TLVs after it, skipped, within the header's length,
 *       which is at most PROXYHDR_V2_BYTES_MAX in all. UNIX addresses are refused (family).
 * The header's total length is known from its first 16 bytes (v2) or its CRLF (v1).
 */
#ifndef AVLGATE_SHARD_PROXYHDR_H
#define AVLGATE_SHARD_PROXYHDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PROXYHDR_V1_BYTES_MAX = 107,
    PROXYHDR_V2_FIXED_BYTES = 16,
    PROXYHDR_V2_BYTES_MAX = 16 + 536, /* the v2 address block and TLVs a balancer sends */
};

/* Results: > 0 is the header's length in bytes. Every error is final for the connection. */
enum proxyhdr_result {
    PROXYHDR_NEED_MORE = 0,      /* a strict prefix of a header: read more */
    PROXYHDR_E_SIGNATURE = -1,   /* neither "PROXY " nor the v2 signature */
    PROXYHDR_E_V1_SYNTAX = -2,   /* v1: not "PROXY <proto> <src> <dst> <sport> <dport>\r\n" */
    PROXYHDR_E_V1_TOO_LONG = -3, /* v1: no CRLF within 107 bytes */
    PROXYHDR_E_V1_ADDRESS = -4,  /* v1: an address or port that does not parse for its family */
    PROXYHDR_E_V2_VERSION = -5,  /* v2: version nibble not 2 */
    PROXYHDR_E_V2_COMMAND = -6,  /* v2: command neither LOCAL nor PROXY */
    PROXYHDR_E_V2_FAMILY = -7,   /* v2: an address family or transport not taken (UNIX, ...) */
    PROXYHDR_E_V2_LENGTH = -8,   /* v2: length shorter than its addresses, or over the max */
    PROXYHDR_ERRORS = 8,         /* how many errors there are (for counters by reason) */
};

struct proxyhdr {
    uint8_t version; /* 1 or 2 */
    uint8_t local;   /* 1: v2 LOCAL or v1 UNKNOWN: no client address, use the socket's */
    uint8_t dgram;   /* v2: the client's transport was UDP (SOCK_DGRAM) */
    uint16_t bytes;  /* the header's length (the return value) */
    /* The client (src) and the address it connected to (dst); ss_family AF_UNSPEC when local. */
    struct sockaddr_storage src, dst;
};

/* Parses the header at p[0..len). Returns its length (> 0) with *h filled, PROXYHDR_NEED_MORE,
 * or an error as early as the bytes allow (a first byte that starts neither version is
 * PROXYHDR_E_SIGNATURE at once). */
int proxyhdr_parse(const uint8_t *p, size_t len, struct proxyhdr *h);

/* A stable name for a result: "need_more", "signature", "v1_syntax", ... */
const char *proxyhdr_result_name(int result);

#ifdef __cplusplus
}
#endif

#endif
