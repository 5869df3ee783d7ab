/* uring.h — the few io_uring helpers newer than Debian's liburing 2.3, for the 6.x kernels
 * avlgate runs on. Everything else comes from <liburing.h> itself. Each wrapper names the
 * liburing release that added the real helper and the kernel that needs it; when the
 * packaged liburing catches up, the wrapper becomes a one-line call. */
#ifndef AVLGATE_SHARD_URING_H
#define AVLGATE_SHARD_URING_H

#include <liburing.h>
#include <stdint.h>

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

/* Cancels every request on fixed file `index` (IORING_ASYNC_CANCEL_FD_FIXED, kernel 6.0;
 * liburing 2.3's io_uring_prep_cancel_fd takes the flag but documents plain descriptors). */
static inline void shard_prep_cancel_fixed(struct io_uring_sqe *sqe, int index, uint64_t data)
{
    io_uring_prep_cancel_fd(sqe, index, IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_FD_FIXED);
    io_uring_sqe_set_data64(sqe, data);
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_SHARD_URING_H */
