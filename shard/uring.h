/* uring.h — the few io_uring helpers newer than Debian's liburing 2.3, for the 6.x kernels
 * avlgate runs on. Everything else comes from <liburing.h> itself. Each wrapper names the
 * liburing release that added the real helper and the kernel that needs it; when the
 * packaged liburing catches up, the wrapper becomes a one-line call. */
#ifndef AVLGATE_SHARD_URING_H
#define AVLGATE_SHARD_URING_H

#include <errno.h>
#include <liburing.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* io_uring_prep_msg_ring_fd() (liburing 2.4; kernel 6.0, IORING_MSG_SEND_FD): passes the fixed
 * file source_index of this ring into target_ring's fixed file table, at target_index or, with
 * IORING_FILE_INDEX_ALLOC, at a free slot the kernel picks. The target ring gets a CQE with
 * user_data = data and res = the slot it got (or -errno); this ring gets its own CQE for the
 * request. The source descriptor stays installed here: close it after the CQE. */
static inline void shard_prep_msg_ring_fd(struct io_uring_sqe *sqe, int target_ring_fd,
                                          int source_index, unsigned target_index, uint64_t data,
                                          unsigned flags)
{
    io_uring_prep_rw(IORING_OP_MSG_RING, sqe, target_ring_fd, (void *)(uintptr_t)IORING_MSG_SEND_FD,
                     0, data);
    sqe->addr3 = (uint64_t)source_index;
    /* The SQE field holds index + 1, and IORING_FILE_INDEX_ALLOC as is (0 means "none"). */
    if (target_index == IORING_FILE_INDEX_ALLOC)
        target_index--;
    sqe->file_index = target_index + 1;
    sqe->msg_ring_flags = flags;
}

/* io_uring_prep_cmd_sock(SOCKET_URING_OP_GETSOCKOPT, ...) (liburing 2.5; kernel 6.7):
 * getsockopt on a socket through IORING_OP_URING_CMD, which works on a direct descriptor (set
 * IOSQE_FIXED_FILE and pass the slot as fd). The kernel takes level SOL_SOCKET only; optval
 * gets at most optlen bytes and the CQE's res is the length written, or -errno. In liburing
 * 2.3's struct io_uring_sqe, level and optname are the two halves of addr, optval is addr3 and
 * optlen shares file_index. */
#ifndef SOCKET_URING_OP_GETSOCKOPT
#define SOCKET_URING_OP_GETSOCKOPT 2
#endif

static inline void shard_prep_cmd_getsockopt(struct io_uring_sqe *sqe, int fd, int level,
                                             int optname, void *optval, uint32_t optlen)
{
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, NULL, 0, 0);
    sqe->cmd_op = SOCKET_URING_OP_GETSOCKOPT;
    const uint32_t level_optname[2] = {(uint32_t)level, (uint32_t)optname};
    memcpy(&sqe->addr, level_optname, sizeof level_optname);
    sqe->addr3 = (uint64_t)(uintptr_t)optval;
    sqe->file_index = optlen;
}

/* IORING_FEAT_MIN_TIMEOUT (kernel 6.12): io_uring_getevents_arg's former pad is min_wait_usec. */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

static inline bool shard_has_min_timeout(const struct io_uring *ring)
{
    return ring->features & IORING_FEAT_MIN_TIMEOUT;
}

/* io_uring_submit_and_wait_min_timeout() (liburing 2.8; kernel 6.12): submits the queued SQEs
 * and waits until wait_nr completions are there, or — once min_wait_usec has passed — until at
 * least one is, or until ts (relative) expires. A busy loop thus wakes once per burst of
 * completions instead of once per completion, at a cost of at most min_wait_usec of latency.
 * Needs IORING_FEAT_EXT_ARG; without IORING_FEAT_MIN_TIMEOUT pass min_wait_usec 0 (the field
 * was reserved). Not for SQPOLL rings. Returns what io_uring_enter returns (submitted count or
 * -errno; -ETIME when ts expired first). */
static inline int shard_submit_and_wait_min_timeout(struct io_uring *ring, unsigned wait_nr,
                                                    struct __kernel_timespec *ts,
                                                    unsigned min_wait_usec)
{
    /* __io_uring_flush_sq() of liburing: publish the SQEs queued since the last submit. */
    struct io_uring_sq *sq = &ring->sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    unsigned submit = tail - io_uring_smp_load_acquire(sq->khead);
    struct io_uring_getevents_arg arg = {
        .sigmask = 0,
        .sigmask_sz = _NSIG / 8,
        .pad = min_wait_usec, /* min_wait_usec since 6.12 */
        .ts = (uint64_t)(uintptr_t)ts,
    };
    /* The raw system call: liburing's wrappers differ on how they report errors. */
    long ret = syscall(__NR_io_uring_enter, ring->ring_fd, submit, wait_nr,
                       IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof arg);
    return ret < 0 ? -errno : (int)ret;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_SHARD_URING_H */
