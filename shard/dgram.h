/* dgram.h — one shard's UDP socket on the shard's ring: the engine's datagram side.
 *
 * What it owns: a SO_REUSEPORT UDP socket bound to the shard's UDP address (an ordinary
 * descriptor: one per shard), a provided buffer ring of its own (buffer group `bgid`) that the
 * multishot recvmsg fills — each buffer holds the kernel's io_uring_recvmsg_out header, the
 * source address and the payload — and a fixed pool of send slots (msghdr, address and up to
 * DGRAM_SEND_BYTES_MAX bytes each) for the replies sendmsg carries.
 *
 * Mechanics only: it fills SQEs the engine gives it and reads the completions the engine hands
 * back; the engine owns the loop, the user_data and the application's callback. Everything is
 * the shard's thread's; the memory is sized at dgram_open and the loop does not allocate. */
#ifndef AVLGATE_SHARD_DGRAM_H
#define AVLGATE_SHARD_DGRAM_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DGRAM_SEND_BYTES_MAX = 64 };

struct dgram_config {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    uint32_t bufs;      /* receive buffers, a power of two, <= 32768 */
    uint32_t bytes_max; /* the largest payload kept whole; a longer one arrives truncated */
    uint32_t sends;     /* send slots */
    int rcvbuf;         /* the socket's receive buffer, bytes (SO_RCVBUFFORCE, else SO_RCVBUF) */
    unsigned bgid;      /* the buffer group, distinct from the engine's TCP one */
};

struct dgram;

/* Opens the socket, maps and registers the buffer ring, sizes the send slots. Returns 0 or
 * -errno with a message in err. */
int dgram_open(struct dgram **out, struct io_uring *ring, const struct dgram_config *cfg, char *err,
               size_t err_cap);
void dgram_free(struct dgram *d, struct io_uring *ring);

/* Fills sqe with the multishot recvmsg (buffer selection from the group); user_data is the
 * caller's. */
void dgram_prep_recv(struct dgram *d, struct io_uring_sqe *sqe);

/* One datagram as a recvmsg completion gave it: valid until dgram_recycle(bid). */
struct dgram_in {
    const uint8_t *p;
    size_t len;      /* bytes at p (at most bytes_max) */
    size_t sent_len; /* the datagram's size as sent (above len when truncated) */
    const struct sockaddr *from;
    socklen_t from_len;
    bool truncated;
    uint16_t bid;
};
/* Reads a recvmsg completion that carries a buffer (IORING_CQE_F_BUFFER). Returns false when
 * the buffer cannot be read (its header does not fit: counted by the caller); the buffer must
 * be recycled either way (in->bid is set). */
bool dgram_read(struct dgram *d, int res, uint32_t cqe_flags, struct dgram_in *in);
/* Gives a buffer back to the ring; dgram_flush publishes what was given back. */
void dgram_recycle(struct dgram *d, uint16_t bid);
void dgram_flush(struct dgram *d);

/* A free send slot, or -1 when all are in flight. */
int dgram_send_slot(struct dgram *d);
/* Fills sqe with a sendmsg of len (<= DGRAM_SEND_BYTES_MAX) bytes to `to` from send slot
 * `slot` (taken by dgram_send_slot); dgram_send_done gives the slot back at its completion. */
void dgram_prep_send(struct dgram *d, int slot, struct io_uring_sqe *sqe, const struct sockaddr *to,
                     socklen_t to_len, const void *p, size_t len);
void dgram_send_done(struct dgram *d, int slot);
/* Send slots in flight. */
uint32_t dgram_sends_in_flight(const struct dgram *d);

/* The socket's bound address (port 0 resolved), for tests. */
int dgram_local_addr(const struct dgram *d, struct sockaddr_storage *out, socklen_t *len);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_SHARD_DGRAM_H */
