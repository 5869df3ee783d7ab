/* proxy.h — the PROXY protocol on a gateway shard's connections (--proxy-protocol): who the
 * device behind a load balancer really is.
 *
 * With --proxy-protocol every accepted connection must come from an address of --proxy-from
 * (anything else is closed at once, counted) and must start with a PROXY v2 or v1 header
 * (shard/proxyhdr.h) before the Teltonika handshake (session.h: DEV_PROXY). A malformed header
 * is counted by its named reason and the connection closed; nothing of it is stored. The
 * header's client address is the connection's address from then on: the one session.c compares
 * when an IMEI connects again, and logs. A v2 LOCAL or a v1 UNKNOWN header (the balancer's own
 * connection) leaves the socket's address.
 *
 * The address survives the handoff to the IMEI's owner shard: the shard that read the header
 * mails it to the owner (struct proxy_mail) just before engine_handoff; the engine delivers mail
 * a shard sent before a handoff before that handoff's on_open (engine.h), and the owner keeps
 * it in a small table of addresses in transit until the connection opens there.
 *
 * struct proxy is this module's (NULL without --proxy-protocol); the shard's thread only. */
#ifndef AVLGATE_GATEWAY_PROXY_H
#define AVLGATE_GATEWAY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "gateway/imap.h"
#include "gateway/ratelimit.h"
#include "gateway/shard_state.h"
#include "shard/proxyhdr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A connection's client address, compact: family 0 when there is none (not proxied, LOCAL). */
struct peer_addr {
    uint8_t family; /* AF_INET, AF_INET6 or 0 */
    uint8_t pad;
    uint16_t port; /* network order */
    uint8_t ip[16];
};

/* The name of a reason of ingest_stats.proxy_refused (shared.h). */
const char *proxy_refused_name(unsigned reason);

/* The mail that carries an address to the owner shard: tag PROXY_MAIL_TAG (a command wake-up
 * starts with an IMEI, a handed datagram with 0; neither is ever all ones). */
#define PROXY_MAIL_TAG UINT64_MAX
struct proxy_mail {
    uint64_t tag;
    uint64_t imei;
    struct peer_addr addr;
};
_Static_assert(sizeof(struct proxy_mail) <= ENGINE_MAIL_BYTES, "an address fits in one mail");

enum { PROXY_TRANSIT = 4096 }; /* addresses in transit a shard keeps, at most */

struct proxy {
    struct peer_addr *addrs; /* per connection slot (conns_max) */
    /* Addresses mailed by other shards, waiting for their connection's handoff: a ring (the
     * oldest forgotten when it is full: a handoff that failed) and an IMEI -> index map. */
    struct proxy_mail transit[PROXY_TRANSIT];
    uint32_t transit_next;
    struct imap transit_map;
    struct ratelimit log_refused; /* "connection refused before its handshake" */
};

int proxy_setup(struct shard *s, char *err, size_t cap);
void proxy_teardown(struct shard *s);

/* Whether the shard reads PROXY headers (--proxy-protocol). */
static inline bool proxy_on(const struct shard *s)
{
    return s->proxy != NULL;
}

/* An accepted connection: allowed to speak (its peer in --proxy-from)? false: counted, the
 * caller closes it. */
bool proxy_on_accept(struct shard *s, uint32_t slot, uint32_t gen);
/* The header at p[0 .. len): its length (> 0) when whole (the address kept), 0 when more bytes
 * are needed (*need: the least total that could complete it), or < 0 when refused (counted:
 * close). */
int proxy_on_header(struct shard *s, uint32_t slot, uint32_t gen, const uint8_t *p, size_t len,
                    uint32_t *need);
/* The connection in slot goes to shard `to` as imei: its address is mailed ahead. */
void proxy_before_handoff(struct shard *s, uint32_t slot, unsigned to, uint64_t imei);
/* A mail tagged PROXY_MAIL_TAG arrived. */
void proxy_on_mail(struct shard *s, const struct proxy_mail *m);
/* A connection handed in as imei opened in slot: its address from the mail, if one came. */
void proxy_on_handed_in(struct shard *s, uint32_t slot, uint64_t imei);

/* The connection's client address: the header's when it gave one, else the socket's peer
 * (engine_peer_addr). false when neither can be had. */
bool proxy_peer_of(struct shard *s, uint32_t slot, uint32_t gen, struct sockaddr_storage *out);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_PROXY_H */
