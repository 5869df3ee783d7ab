/* udp.h — the datagrams of a gateway shard: Teltonika AVL over UDP, one datagram one packet.
 *
 * The engine gives every datagram that reaches this shard's SO_REUSEPORT socket to
 * udp_on_datagram (the kernel picks the shard by the source address, not by the IMEI). It is
 * decoded in place; an invalid one is counted by reason and never answered. A valid one is
 * processed by the shard that owns its IMEI (router_owner, as for a TCP handshake): another
 * shard's is copied and handed over through the mailboxes. The owner takes it into the row
 * ring under the device's slot (session.h: the TCP connection's when the device has one, else
 * a UDP device's), and batch.c sends the 7-byte ACK to the datagram's source address once the
 * rows are committed. Re-sends and duplicates are the window's business, as for TCP: a packet
 * whose records are all known is taken with no rows and acknowledged with its batch.
 *
 * A datagram that cannot be taken now — its device's state is loading, or the ring is full — is
 * held (copied, in arrival order) and tried again when a load is answered or a batch comes
 * free; while many are held, or the ring is full, the socket is paused (the kernel's buffer
 * waits, then drops: the devices re-send).
 *
 * Memory: each shard has a slab of UDP_HELD_MAX datagram copies, its own; a copy handed to the
 * owner shard is released by the owner (busy cleared, release order), so the slab is bounded
 * and nothing is allocated per datagram. The shard's thread only, except `busy`. */
#ifndef AVLGATE_GATEWAY_UDP_H
#define AVLGATE_GATEWAY_UDP_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "gateway/shard_state.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { UDP_HELD_MAX = 1024 };

/* A datagram kept: held for later, or on its way to its owner shard. */
struct udp_held {
    struct udp_held *next; /* the holder's list */
    uint64_t imei;         /* decoded once */
    struct sockaddr_in6 from;
    socklen_t from_len;
    uint32_t len;
    int64_t wait_slot; /* held for the state load of the device on (slot, gen); -1: for room */
    uint32_t wait_gen;
    atomic_bool busy; /* set by the slab's shard when it copies, cleared by the last holder */
    uint8_t bytes[];
};

/* A mail to the owner shard. The first 8 bytes are 0: a command wake-up (delivery.h) starts with
 * its IMEI, never 0. */
struct udp_mail {
    uint64_t zero;
    struct udp_held *held;
};
_Static_assert(sizeof(struct udp_mail) <= ENGINE_MAIL_BYTES, "a handed datagram fits in a mail");

struct udp {
    uint8_t *slab; /* UDP_HELD_MAX copies, `stride` bytes apart */
    size_t slab_bytes;
    uint32_t stride;
    uint32_t cursor; /* where the next free copy is looked for */
    struct udp_held *head, *tail;
    uint32_t held;
    bool retry;     /* a load was answered or a batch came free: try the held ones again */
    bool paused;    /* engine_udp_pause said */
    bool ring_full; /* s->paused as the last tick saw it */
};

/* With cfg->udp; s->udp stays NULL without. udp_teardown only after every shard's loop ended
 * (another shard may hold a copy of this one's slab until then). */
int udp_setup(struct shard *s, char *err, size_t cap);
void udp_teardown(struct shard *s);

/* The engine's on_datagram. */
void udp_on_datagram(struct shard *s, const uint8_t *p, size_t len, bool truncated,
                     const struct sockaddr *from, socklen_t from_len);
/* A datagram another shard handed over (a struct udp_mail). */
void udp_on_mail(struct shard *s, const void *msg);
/* Something a held datagram may wait for happened (a state load answered, a batch came free). */
void udp_wake(struct shard *s);
/* Every loop turn: the held datagrams tried again when woken, the socket paused or resumed. */
void udp_tick(struct shard *s);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_UDP_H */
