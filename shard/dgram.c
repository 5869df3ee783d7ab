/* dgram.c — one shard's UDP socket on the shard's ring (dgram.h).
 *
 * A receive buffer is laid out as multishot recvmsg writes it: struct io_uring_recvmsg_out, the
 * source address (msg_namelen bytes reserved: a sockaddr_in6), no control data, then the
 * payload. Buffers are a whole number of cache lines apart in one mapping faulted in at open.
 * Send slots are a free stack; each keeps its msghdr, iovec, address and bytes until its
 * completion, since the kernel reads them then. */
#include "shard/dgram.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

struct send_slot {
    struct msghdr msg;
    struct iovec iov;
    struct sockaddr_in6 to;
    uint8_t bytes[DGRAM_SEND_BYTES_MAX];
};

struct dgram {
    struct dgram_config cfg;
    int fd;
    struct msghdr recv_msg; /* what the multishot recvmsg reserves per buffer */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs;
    size_t bufs_bytes;
    uint32_t buf_stride;
    uint32_t br_mask;
    uint32_t br_pending;
    bool br_registered;
    struct send_slot *slots;
    uint32_t *free; /* free send slots, a stack */
    uint32_t free_len;
};

enum { NAME_BYTES = sizeof(struct sockaddr_in6) };

static int socket_open(struct dgram *d, char *err, size_t err_cap)
{
    const struct dgram_config *cfg = &d->cfg;
    int fd = socket(cfg->addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    /* What waits while the shard is paused or busy: a burst of every tracker at once. FORCE
     * passes net.core.rmem_max with CAP_NET_ADMIN; without it the kernel caps the value there. */
    if (cfg->rcvbuf > 0 &&
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &cfg->rcvbuf, sizeof cfg->rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &cfg->rcvbuf, sizeof cfg->rcvbuf);
    if (bind(fd, (const struct sockaddr *)&cfg->addr, cfg->addr_len) < 0)
        goto fail;
    d->fd = fd;
    return 0;
fail:;
    int saved = errno;
    snprintf(err, err_cap, "UDP socket: %s", strerror(saved));
    if (fd >= 0)
        close(fd);
    return -saved;
}

static int ring_open(struct dgram *d, struct io_uring *ring, char *err, size_t err_cap)
{
    const struct dgram_config *cfg = &d->cfg;
    size_t need = sizeof(struct io_uring_recvmsg_out) + NAME_BYTES + cfg->bytes_max;
    d->buf_stride = (uint32_t)((need + 63) / 64 * 64);
    d->br_bytes = (size_t)cfg->bufs * sizeof(struct io_uring_buf);
    d->bufs_bytes = (size_t)cfg->bufs * d->buf_stride;
    d->br = mmap(NULL, d->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    d->bufs = mmap(NULL, d->bufs_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (d->br == MAP_FAILED || d->bufs == MAP_FAILED) {
        snprintf(err, err_cap, "UDP buffer ring (%u x %u bytes): %s", cfg->bufs, d->buf_stride,
                 strerror(errno));
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)d->br, .ring_entries = cfg->bufs, .bgid = cfg->bgid};
    int ret = io_uring_register_buf_ring(ring, &reg, 0);
    if (ret < 0) {
        snprintf(err, err_cap, "io_uring_register_buf_ring (UDP): %s", strerror(-ret));
        return ret;
    }
    d->br_registered = true;
    io_uring_buf_ring_init(d->br);
    d->br_mask = (uint32_t)io_uring_buf_ring_mask(cfg->bufs);
    for (uint32_t bid = 0; bid < cfg->bufs; bid++)
        dgram_recycle(d, (uint16_t)bid);
    dgram_flush(d);
    d->recv_msg.msg_namelen = NAME_BYTES;
    return 0;
}

int dgram_open(struct dgram **out, struct io_uring *ring, const struct dgram_config *cfg, char *err,
               size_t err_cap)
{
    if (cfg->bufs == 0 || (cfg->bufs & (cfg->bufs - 1)) || cfg->bufs > 32768 ||
        cfg->bytes_max == 0 || cfg->bytes_max > 65535 || cfg->sends == 0) {
        snprintf(err, err_cap, "UDP configuration out of range");
        return -EINVAL;
    }
    struct dgram *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, err_cap, "UDP: out of memory");
        return -ENOMEM;
    }
    d->cfg = *cfg;
    d->fd = -1;
    d->br = MAP_FAILED;
    d->bufs = MAP_FAILED;
    d->slots = calloc(cfg->sends, sizeof *d->slots);
    d->free = calloc(cfg->sends, sizeof *d->free);
    int ret = -ENOMEM;
    if (!d->slots || !d->free) {
        snprintf(err, err_cap, "UDP send slots: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < cfg->sends; i++)
        d->free[d->free_len++] = cfg->sends - 1 - i;
    ret = socket_open(d, err, err_cap);
    if (ret == 0)
        ret = ring_open(d, ring, err, err_cap);
    if (ret == 0) {
        *out = d;
        return 0;
    }
fail:
    dgram_free(d, ring);
    return ret;
}

void dgram_free(struct dgram *d, struct io_uring *ring)
{
    if (!d)
        return;
    if (d->br_registered && ring->ring_fd >= 0)
        io_uring_unregister_buf_ring(ring, (int)d->cfg.bgid);
    if (d->fd >= 0)
        close(d->fd);
    if (d->br != MAP_FAILED)
        munmap(d->br, d->br_bytes);
    if (d->bufs != MAP_FAILED)
        munmap(d->bufs, d->bufs_bytes);
    free(d->slots);
    free(d->free);
    free(d);
}

void dgram_prep_recv(struct dgram *d, struct io_uring_sqe *sqe)
{
    io_uring_prep_recvmsg_multishot(sqe, d->fd, &d->recv_msg, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)d->cfg.bgid;
}

bool dgram_read(struct dgram *d, int res, uint32_t cqe_flags, struct dgram_in *in)
{
    assert(cqe_flags & IORING_CQE_F_BUFFER);
    in->bid = (uint16_t)(cqe_flags >> IORING_CQE_BUFFER_SHIFT);
    uint8_t *buf = d->bufs + (size_t)in->bid * d->buf_stride;
    struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf, res, &d->recv_msg);
    if (!o || o->namelen > NAME_BYTES)
        return false;
    in->from = io_uring_recvmsg_name(o);
    in->from_len = (socklen_t)o->namelen;
    in->p = io_uring_recvmsg_payload(o, &d->recv_msg);
    size_t got = io_uring_recvmsg_payload_length(o, res, &d->recv_msg);
    in->len = got < d->cfg.bytes_max ? got : d->cfg.bytes_max; /* the stride rounds up */
    in->sent_len = o->payloadlen;
    in->truncated = (o->flags & MSG_TRUNC) || o->payloadlen > in->len;
    return true;
}

void dgram_recycle(struct dgram *d, uint16_t bid)
{
    io_uring_buf_ring_add(d->br, d->bufs + (size_t)bid * d->buf_stride, d->buf_stride, bid,
                          (int)d->br_mask, (int)d->br_pending);
    d->br_pending++;
}

void dgram_flush(struct dgram *d)
{
    if (d->br_pending) {
        io_uring_buf_ring_advance(d->br, (int)d->br_pending);
        d->br_pending = 0;
    }
}

int dgram_send_slot(struct dgram *d)
{
    return d->free_len ? (int)d->free[--d->free_len] : -1;
}

void dgram_prep_send(struct dgram *d, int slot, struct io_uring_sqe *sqe, const struct sockaddr *to,
                     socklen_t to_len, const void *p, size_t len)
{
    assert(slot >= 0 && (uint32_t)slot < d->cfg.sends && len <= DGRAM_SEND_BYTES_MAX);
    assert(to_len <= sizeof(struct sockaddr_in6));
    struct send_slot *s = &d->slots[slot];
    memcpy(&s->to, to, to_len);
    memcpy(s->bytes, p, len);
    s->iov = (struct iovec){.iov_base = s->bytes, .iov_len = len};
    s->msg = (struct msghdr){
        .msg_name = &s->to, .msg_namelen = to_len, .msg_iov = &s->iov, .msg_iovlen = 1};
    io_uring_prep_sendmsg(sqe, d->fd, &s->msg, 0);
}

void dgram_send_done(struct dgram *d, int slot)
{
    assert(slot >= 0 && (uint32_t)slot < d->cfg.sends && d->free_len < d->cfg.sends);
    d->free[d->free_len++] = (uint32_t)slot;
}

uint32_t dgram_sends_in_flight(const struct dgram *d)
{
    return d->cfg.sends - d->free_len;
}

int dgram_local_addr(const struct dgram *d, struct sockaddr_storage *out, socklen_t *len)
{
    *len = sizeof *out;
    return getsockname(d->fd, (struct sockaddr *)out, len) < 0 ? -errno : 0;
}
