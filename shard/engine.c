/* engine.c — one shard's io_uring loop: accept, dial, receive, reassemble, send, time out,
 * close, hand off. See engine.h for the contract with the application.
 *
 * Owns: the ring, the listener, the connection table (index = fixed file slot), the free dial
 * slots, the provided buffer ring and its memory, the reassembly pool (size classes, the
 * budget, the list of partial frames), the paused list.
 * Everything is touched by the shard's own thread only, except `stopping`, which
 * engine_stop() sets from anywhere.
 *
 * Invariants:
 * - A slot is CONN_FREE, CONN_CONNECTING (dialled), CONN_OPEN or CONN_CLOSING. It leaves
 *   CONN_CLOSING only when the close_direct of its descriptor completed, and only then does
 *   its generation change, so every completion carries the generation of the connection it
 *   was issued for (asserted).
 * - The table is split: the kernel allocates accepted and handed-in descriptors in
 *   [0, dial_base) (IORING_REGISTER_FILE_ALLOC_RANGE); engine_connect installs its sockets at
 *   slots of [dial_base, conns_max) taken from dial_free, and a slot goes back there only
 *   after its close_direct completed. So the two never pick the same slot.
 * - conn.ops counts the requests in flight for the slot; close_direct is issued at zero.
 * - Every completion that carries a provided buffer gives it back in the same loop turn.
 * - A connection holds a reassembly buffer only while it has unconsumed bytes (until its
 *   close_done when it closed inside its own on_data), of the smallest class holding them
 *   after each step; the class bytes held never exceed cfg.reasm_bytes_max.
 * - Between delivery steps, the partial list holds exactly the open connections that keep
 *   bytes and are neither paused nor held, oldest partial frame first.
 * - At most one send is in flight per connection: out[] bytes, or a part of the pending
 *   reference (CF_SEND_REF); a pending reference gets exactly one on_sent.
 * - The unidentified FIFO holds exactly the open accepted connections the application has not
 *   identified, in accept order (so in identify-deadline order); accepted_open counts the open
 *   connections of [0, dial_base), closing ones not included (their slots are coming free). */
#include "shard/engine.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "shard/dgram.h"
#include "shard/spsc.h"
#include "shard/stat.h"
#include "shard/uring.h"

/* ---------------------------------------------------------------------------------------------
 * user_data: op (8 bits) | generation (24 bits) | slot (32 bits); or op | 56-bit payload.
 * ------------------------------------------------------------------------------------------- */

enum op {
    OP_ACCEPT = 1,
    OP_RECV,
    OP_SEND,
    OP_CANCEL,
    OP_CLOSE,
    OP_POLL,         /* payload: the application's tag */
    OP_HANDOFF_OUT,  /* this ring's MSG_RING request */
    OP_HANDOFF_IN,   /* payload: the key; res: the slot the descriptor got here */
    OP_CANCEL_RECV,  /* pause: cancel the multishot recv only */
    OP_CANCEL_OTHER, /* cancels not tied to a connection (the accept) */
    OP_MAIL,         /* payload: the sending shard; drain its mailbox */
    OP_MAIL_WAKE,    /* this ring's MSG_RING that woke another shard */
    OP_CONNECT,      /* engine_connect's IORING_OP_CONNECT on the fixed file */
    OP_PEER,         /* payload: a sequence number; engine_peer_addr reads it in the CQ */
    OP_UDP_RECV,     /* the UDP socket's multishot recvmsg */
    OP_UDP_SEND,     /* payload: the send slot */
    OP_UDP_CANCEL,   /* engine_udp_pause's cancel of the recvmsg */
};

#define GEN_MASK     ENGINE_GEN_MASK
#define PAYLOAD_MASK ENGINE_KEY_MAX
_Static_assert(ENGINE_KEY_BITS == 56 && ENGINE_GEN_BITS <= 24, "op (8) | gen | slot (32)");
_Static_assert(ENGINE_SHARDS_MAX <= 256, "conn.handoff_to is a uint8_t");

static uint64_t ud_conn(enum op op, uint32_t gen, uint32_t slot)
{
    return (uint64_t)op << 56 | (uint64_t)(gen & GEN_MASK) << 32 | slot;
}

static uint64_t ud_payload(enum op op, uint64_t payload)
{
    return (uint64_t)op << 56 | (payload & PAYLOAD_MASK);
}

static enum op ud_op(uint64_t ud)
{
    return (enum op)(ud >> 56);
}

static uint32_t ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & GEN_MASK;
}

static uint32_t ud_slot(uint64_t ud)
{
    return (uint32_t)ud;
}

/* ---------------------------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------------------------- */

enum conn_state { CONN_FREE = 0, CONN_OPEN, CONN_CLOSING, CONN_CONNECTING };

enum conn_flag {
    CF_RECV = 1 << 0,        /* a multishot recv is armed */
    CF_SEND = 1 << 1,        /* a send is in flight */
    CF_PAUSED = 1 << 2,      /* on the paused list: bytes are kept, not delivered */
    CF_CLOSE = 1 << 3,       /* close_direct issued */
    CF_HANDOFF = 1 << 4,     /* closing because it is being handed off */
    CF_MSGRING = 1 << 5,     /* the MSG_RING for the handoff was issued */
    CF_CANCELED = 1 << 6,    /* a cancel of everything was issued */
    CF_REARM = 1 << 7,       /* on the re-arm list (recv ended with -ENOBUFS) */
    CF_RECV_CANCEL = 1 << 8, /* a pause's cancel of the recv was issued; the recv has not ended */
    CF_SEND_REF = 1 << 9,    /* the send in flight is a part of the reference, not out[] */
    CF_DIAL = 1 << 10,       /* dialled and not open: counted in conns_dialing until freed */
    CF_TIMEDOUT = 1 << 11,   /* the dial was cancelled by connect_timeout_ms */
    CF_HELD = 1 << 12,       /* with CF_PAUSED: held by ENGINE_HOLD, not on the paused list */
};

struct conn {
    uint32_t gen;
    uint8_t state;
    uint8_t reason;      /* enum engine_close_reason, while closing */
    uint16_t flags;      /* enum conn_flag */
    uint8_t handoff_to;  /* target shard while handing off */
    uint16_t ops;        /* requests in flight */
    uint8_t out_len;     /* bytes queued in out[], including those being sent */
    uint8_t out_sending; /* bytes at out[0..] of the send in flight */
    uint8_t ref_at;      /* out[] bytes that go before the pending reference */
    uint32_t reasm;      /* reassembly buffer index + 1; 0 = none */
    uint32_t reasm_len;
    /* Reassembly pool: the buffer's class; the links of the partial list (slot + 1, 0 = end),
     * on it or not; kept bytes being offered to on_data (never closed for room then). */
    uint32_t partial_prev, partial_next;
    uint8_t reasm_class;
    bool partial, delivering;
    uint32_t need;          /* bytes the pending frame needs in all */
    uint32_t active_s;      /* last receive, engine seconds */
    uint32_t frame_since_s; /* when the pending partial frame started */
    uint32_t list_next;     /* paused / re-arm list link: slot + 1, 0 = end */
    uint64_t handoff_key;   /* also the dial's key */
    const uint8_t *ref;     /* engine_send_ref's bytes, pending; NULL: none */
    uint32_t ref_len;
    uint32_t ref_off; /* bytes of ref the kernel took */
    union {
        uint8_t out[ENGINE_SEND_BYTES_MAX]; /* open: queued output */
        struct sockaddr_in6 dst;            /* connecting: the address the CONNECT reads */
    };
    /* Identification (engine.h): links of the unidentified FIFO while unidentified. */
    uint32_t unid_prev, unid_next; /* slot + 1, 0 = none */
    uint32_t opened_ms;            /* engine ms, 32 bits, of the accept: the timeout's start */
    bool unidentified;             /* on the FIFO */
};

_Static_assert(sizeof(struct sockaddr_in6) <= ENGINE_SEND_BYTES_MAX &&
                   sizeof(struct sockaddr_in) <= sizeof(struct sockaddr_in6),
               "a dial's destination is kept in out[] until it connects");

/* One size class of the reassembly pool: buffers of `bytes`, a stride apart in one mapping
 * without reserve, with a free stack and a state per buffer (enum reasm_state). */
struct reasm_class {
    uint8_t *mem;
    size_t mem_bytes;
    uint32_t bytes;      /* what a buffer holds, and costs in the budget */
    uint32_t stride;     /* bytes apart: a whole number of pages, or a power of two below one */
    uint32_t unit_slots; /* buffers per page when below one (their pages go back together), 1 */
    uint32_t slots_len;  /* a multiple of unit_slots */
    uint32_t *free;      /* free buffers, a stack: the latest freed, likely resident, first */
    uint32_t free_len;
    uint8_t *state;
};

/* A buffer's pages: given back (CLEAN), in use, or free and maybe resident: freed since the
 * last sweep (WARM) or before it (COLD, given back at the next sweep). */
enum reasm_state { RS_CLEAN = 0, RS_USED, RS_WARM, RS_COLD };

struct cqe_copy {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

enum {
    CQE_BATCH = 256,
    WAIT_BATCH_CQES = 64, /* with min_wait: completions that end the wait at once */
    BGID = 0,
    UDP_BGID = 1,
    WAIT_MS_MAX = 100,
    SWEEP_MS = 1000,
    REASM_CLASS_MIN_BYTES = 2048, /* the smallest class: a Teltonika packet (<= 1280 bytes) */
    REASM_CLASSES_MAX = 24,       /* 2 KiB doubling past the largest reasm_cap, and the top */
    REASM_DIRTY_SHARE = 8,        /* free buffers kept resident: up to 1/8 of the budget */
};

struct engine {
    struct io_uring ring;
    struct engine_config cfg;
    int listen_fd;
    bool accept_armed;
    uint32_t min_wait_us; /* cfg.wait_batch_us if the kernel has min_wait, else 0 */
    atomic_bool stopping;
    bool stop_started;

    struct conn *conns;
    uint32_t conns_open;
    uint32_t conns_dialing;
    uint32_t sends_in_flight;

    uint32_t dial_base;  /* first dial slot; conns_max - dial_slots */
    uint32_t *dial_free; /* free dial slots, a stack */
    uint32_t dial_free_len;

    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs;
    size_t bufs_bytes;
    uint32_t br_mask;
    uint32_t br_pending; /* buffers added since the last advance */

    /* The reassembly pool (see "Reassembly pool" below): classes smallest first, the top one
     * reasm_cap; class bytes held and buffers held; free buffers' bytes maybe resident and the
     * most of those kept; the partial list's ends (slot + 1). */
    struct reasm_class reasm_classes[REASM_CLASSES_MAX];
    unsigned reasm_classes_len;
    uint32_t reasm_cap; /* what one connection may keep: frame_bytes_max + 2 x buf_bytes */
    uint32_t page_bytes;
    uint64_t reasm_bytes;
    uint32_t reasm_held;
    uint64_t reasm_dirty_bytes, reasm_dirty_max;
    uint32_t partial_head, partial_tail;

    uint32_t paused_head, paused_tail; /* slot + 1 */
    uint32_t rearm_head;               /* slot + 1 */

    int peers[ENGINE_SHARDS_MAX];
    unsigned peers_len;

    /* Mailboxes: inbox[i] is the queue shard i fills for us (NULL for ourselves), outbox[i]
     * is shard i's inbox[our id]; wake[i] says a message went to shard i this turn. */
    struct spsc *inbox[ENGINE_SHARDS_MAX];
    struct spsc *outbox[ENGINE_SHARDS_MAX];
    bool wake[ENGINE_SHARDS_MAX];
    bool wake_any;

    uint64_t now_ns;
    uint64_t next_sweep_ns;
    uint64_t app_deadline_ns;
    struct cqe_copy cqes[CQE_BATCH];

    struct engine_stats stats;

    /* Identification (engine.h) and peer addresses. */
    uint32_t unid_head, unid_tail; /* the unidentified FIFO, oldest first: slot + 1 */
    uint32_t unid_len;
    uint32_t accepted_open; /* open connections in [0, dial_base) */
    uint32_t evict_reserve; /* cfg.identify_reserve, or its default */
    uint64_t peer_seq;      /* engine_peer_addr's requests, for their user_data */
    /* What the kernel writes engine_peer_addr's answer into: the engine's, not the caller's, so
     * that a request still queued after the wait ran out can never write into a stack gone. */
    struct sockaddr_storage peer_buf;

    /* UDP (dgram.h): the socket, its recvmsg armed, paused by the application, closed for
     * good (stop accepting). */
    struct dgram *dg;
    bool udp_armed, udp_paused, udp_closed;
};

static const char *const close_reason_names[ENGINE_CLOSE_REASONS] = {
    [ENGINE_CLOSE_APP] = "app",
    [ENGINE_CLOSE_PEER] = "peer",
    [ENGINE_CLOSE_ERROR] = "error",
    [ENGINE_CLOSE_IDLE] = "idle_timeout",
    [ENGINE_CLOSE_FRAME_TIMEOUT] = "frame_timeout",
    [ENGINE_CLOSE_FRAME_TOO_BIG] = "frame_too_big",
    [ENGINE_CLOSE_NO_REASM] = "no_reassembly_buffer",
    [ENGINE_CLOSE_REASM_BUDGET] = "reassembly_budget",
    [ENGINE_CLOSE_SEND_OVERFLOW] = "send_overflow",
    [ENGINE_CLOSE_PAUSE_OVERFLOW] = "pause_overflow",
    [ENGINE_CLOSE_HANDED_OFF] = "handed_off",
    [ENGINE_CLOSE_SHUTDOWN] = "shutdown",
    [ENGINE_CLOSE_IDENTIFY_TIMEOUT] = "identify_timeout",
    [ENGINE_CLOSE_EVICTED] = "evicted",
};

const char *engine_close_reason_name(enum engine_close_reason r)
{
    return (unsigned)r < ENGINE_CLOSE_REASONS ? close_reason_names[r] : "unknown";
}

uint64_t engine_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t now_s(const struct engine *e)
{
    return (uint32_t)(e->now_ns / 1000000000u);
}

/* ---------------------------------------------------------------------------------------------
 * Submission helpers
 * ------------------------------------------------------------------------------------------- */

static struct io_uring_sqe *get_sqe(struct engine *e)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) {
        /* The SQ is full: hand what we have to the kernel and take the next entry. */
        int ret = io_uring_submit(&e->ring);
        assert(ret >= 0 || ret == -EBUSY || ret == -EINTR);
        (void)ret;
        sqe = io_uring_get_sqe(&e->ring);
    }
    assert(sqe);
    return sqe;
}

static void arm_accept(struct engine *e)
{
    assert(!e->accept_armed && e->listen_fd >= 0);
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_multishot_accept_direct(sqe, e->listen_fd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, ud_payload(OP_ACCEPT, 0));
    e->accept_armed = true;
}

static void arm_recv(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_OPEN && !(c->flags & (CF_RECV | CF_PAUSED)));
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_recv_multishot(sqe, (int)slot, NULL, 0, 0);
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, ud_conn(OP_RECV, c->gen, slot));
    c->flags |= CF_RECV;
    c->ops++;
}

/* Sends the next run of output: the out[] bytes queued before the reference, then the rest of
 * the reference, then the out[] bytes queued after it. */
static void submit_send(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_OPEN && !(c->flags & CF_SEND) && (c->out_len > 0 || c->ref));
    struct io_uring_sqe *sqe = get_sqe(e);
    if (c->ref && c->ref_at == 0) {
        assert(c->ref_off < c->ref_len);
        io_uring_prep_send(sqe, (int)slot, c->ref + c->ref_off, c->ref_len - c->ref_off,
                           MSG_NOSIGNAL);
        c->flags |= CF_SEND_REF;
    } else {
        uint8_t n = c->ref ? c->ref_at : c->out_len;
        assert(n > 0 && n <= c->out_len);
        io_uring_prep_send(sqe, (int)slot, c->out, n, MSG_NOSIGNAL);
        c->out_sending = n;
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ud_conn(OP_SEND, c->gen, slot));
    c->flags |= CF_SEND;
    c->ops++;
    e->sends_in_flight++;
    stat_add(&e->stats.sends, 1);
}

static void submit_close(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_CLOSING && c->ops == 0 && !(c->flags & CF_CLOSE));
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_close_direct(sqe, slot);
    io_uring_sqe_set_data64(sqe, ud_conn(OP_CLOSE, c->gen, slot));
    c->flags |= CF_CLOSE;
    c->ops++;
}

static void submit_handoff(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_CLOSING && c->ops == 0 && (c->flags & CF_HANDOFF));
    struct io_uring_sqe *sqe = get_sqe(e);
    shard_prep_msg_ring_fd(sqe, e->peers[c->handoff_to], (int)slot, IORING_FILE_INDEX_ALLOC,
                           ud_payload(OP_HANDOFF_IN, c->handoff_key), 0);
    io_uring_sqe_set_data64(sqe, ud_conn(OP_HANDOFF_OUT, c->gen, slot));
    c->flags |= CF_MSGRING;
    c->ops++;
}

/* The next step of a closing connection once nothing else is in flight for it. */
static void closing_step(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_CLOSING || c->ops != 0 || (c->flags & CF_CLOSE))
        return;
    if ((c->flags & CF_HANDOFF) && !(c->flags & CF_MSGRING))
        submit_handoff(e, slot);
    else
        submit_close(e, slot);
}

/* ---------------------------------------------------------------------------------------------
 * Reassembly pool
 *
 * A connection keeps its unconsumed bytes (a partial frame, or what came while it is paused
 * or held) in one buffer of the smallest size class that holds them: 2 KiB, 4 KiB, ...
 * doubling, and a top class of reasm_cap, the most a connection may keep. The buffer moves to
 * a larger class as the bytes kept grow, and to a smaller one when a delivery leaves few.
 *
 * The budget: the class bytes of the buffers held stay within cfg.reasm_bytes_max. A
 * connection that needs more when it is spent takes it from the connection holding the
 * oldest partial frame (closed, ENGINE_CLOSE_REASM_BUDGET: the device sends again; it may be
 * the one asking), or is closed itself (ENGINE_CLOSE_NO_REASM) when only paused and held
 * connections hold the budget: their kept bytes are never taken from them.
 *
 * Memory goes back to the system: a freed buffer stays resident while buffers come and go
 * (WARM); one still free at the next sweep (COLD) has its pages given back with
 * madvise(MADV_DONTNEED) at the sweep after. Once the free buffers that may be resident pass
 * reasm_dirty_max, a freed buffer's pages go back at once, so the pool's resident memory stays
 * near the bytes held.
 * ------------------------------------------------------------------------------------------- */

static void conn_close(struct engine *e, uint32_t slot, enum engine_close_reason reason);

static uint8_t *reasm_buf(struct engine *e, const struct conn *c)
{
    assert(c->reasm);
    const struct reasm_class *k = &e->reasm_classes[c->reasm_class];
    return k->mem + (size_t)(c->reasm - 1) * k->stride;
}

/* The smallest class that holds bytes (at most reasm_cap). */
static unsigned reasm_class_for(const struct engine *e, size_t bytes)
{
    assert(bytes <= e->reasm_cap);
    unsigned ci = 0;
    while (e->reasm_classes[ci].bytes < bytes)
        ci++;
    return ci;
}

/* The connection's partial frame is the newest: at the tail of the partial list. */
static void partial_push(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(!c->partial && c->reasm && !(c->flags & CF_PAUSED));
    c->partial = true;
    c->partial_next = 0;
    c->partial_prev = e->partial_tail;
    if (e->partial_tail)
        e->conns[e->partial_tail - 1].partial_next = slot + 1;
    else
        e->partial_head = slot + 1;
    e->partial_tail = slot + 1;
}

static void partial_unlink(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    if (!c->partial)
        return;
    if (c->partial_prev)
        e->conns[c->partial_prev - 1].partial_next = c->partial_next;
    else
        e->partial_head = c->partial_next;
    if (c->partial_next)
        e->conns[c->partial_next - 1].partial_prev = c->partial_prev;
    else
        e->partial_tail = c->partial_prev;
    c->partial = false;
    c->partial_prev = c->partial_next = 0;
}

/* The connection holding the oldest partial frame whose bytes are not being delivered (only
 * an application that resumes from inside on_data makes that walk longer than one step), or
 * UINT32_MAX. */
static uint32_t partial_oldest(const struct engine *e)
{
    for (uint32_t at = e->partial_head; at; at = e->conns[at - 1].partial_next)
        if (!e->conns[at - 1].delivering)
            return at - 1;
    return UINT32_MAX;
}

/* Releases the pages of the buffers first .. first + unit_slots - 1 of k, all free. */
static void reasm_unit_release(struct engine *e, struct reasm_class *k, uint32_t first)
{
    for (uint32_t i = first; i < first + k->unit_slots; i++) {
        assert(k->state[i] != RS_USED);
        if (k->state[i] != RS_CLEAN)
            e->reasm_dirty_bytes -= k->stride;
        k->state[i] = RS_CLEAN;
    }
    size_t bytes = (size_t)k->unit_slots * k->stride;
    int ret = madvise(k->mem + (size_t)first * k->stride, bytes, MADV_DONTNEED);
    assert(ret == 0);
    (void)ret;
    stat_add(&e->stats.reasm_released_bytes, bytes);
}

static bool reasm_unit_free(const struct reasm_class *k, uint32_t first)
{
    for (uint32_t i = first; i < first + k->unit_slots; i++)
        if (k->state[i] == RS_USED)
            return false;
    return true;
}

/* A free buffer of k, now in use (the budget was checked). */
static uint32_t reasm_slot_take(struct engine *e, struct reasm_class *k)
{
    assert(k->free_len > 0);
    uint32_t i = k->free[--k->free_len];
    if (k->state[i] != RS_CLEAN)
        e->reasm_dirty_bytes -= k->stride;
    k->state[i] = RS_USED;
    return i;
}

/* Buffer i of k is free again: kept resident for the next connection, or given back at once
 * when enough free buffers are resident already. */
static void reasm_slot_give(struct engine *e, struct reasm_class *k, uint32_t i)
{
    assert(k->state[i] == RS_USED);
    k->free[k->free_len++] = i;
    k->state[i] = RS_WARM;
    e->reasm_dirty_bytes += k->stride;
    uint32_t first = i - i % k->unit_slots;
    if (e->reasm_dirty_bytes > e->reasm_dirty_max && reasm_unit_free(k, first))
        reasm_unit_release(e, k, first);
}

/* The class bytes held changed by delta (a buffer taken, moved or given back). */
static void reasm_account(struct engine *e, int64_t delta)
{
    e->reasm_bytes = (uint64_t)((int64_t)e->reasm_bytes + delta);
    assert(e->reasm_bytes <= e->cfg.reasm_bytes_max);
    stat_set(&e->stats.reasm_bytes, e->reasm_bytes);
    if (e->reasm_bytes > e->stats.reasm_bytes_peak)
        stat_set(&e->stats.reasm_bytes_peak, e->reasm_bytes);
}

/* Makes room in the budget for `more` class bytes besides those held, by closing the
 * connections with the oldest partial frames (their buffers come back at once). True when
 * there is room and slot is still open; false after slot was closed: its own frame was the
 * oldest, or nothing was left to close (ENGINE_CLOSE_NO_REASM). */
static bool reasm_room(struct engine *e, uint32_t slot, uint64_t more)
{
    while (e->reasm_bytes + more > e->cfg.reasm_bytes_max) {
        if (e->conns[slot].state != CONN_OPEN)
            return false; /* closed by the application in a victim's on_close */
        uint32_t victim = partial_oldest(e);
        if (victim == UINT32_MAX) {
            conn_close(e, slot, ENGINE_CLOSE_NO_REASM);
            return false;
        }
        conn_close(e, victim, ENGINE_CLOSE_REASM_BUDGET);
        if (victim == slot)
            return false;
    }
    return e->conns[slot].state == CONN_OPEN;
}

/* Gives the connection, which keeps nothing, a buffer for `bytes`. False after closing it. */
static bool reasm_take(struct engine *e, uint32_t slot, size_t bytes)
{
    struct conn *c = &e->conns[slot];
    assert(!c->reasm && !c->partial);
    unsigned ci = reasm_class_for(e, bytes);
    struct reasm_class *k = &e->reasm_classes[ci];
    if (!reasm_room(e, slot, k->bytes))
        return false;
    c->reasm = reasm_slot_take(e, k) + 1;
    c->reasm_class = (uint8_t)ci;
    c->reasm_len = 0;
    c->frame_since_s = now_s(e);
    reasm_account(e, k->bytes);
    if (++e->reasm_held > e->stats.reasm_used_max)
        stat_set(&e->stats.reasm_used_max, e->reasm_held);
    return true;
}

/* Moves the connection's kept bytes, the reasm_len from offset `at` of its buffer on, to a
 * buffer of class ci (larger: within the budget; false after closing the connection). */
static bool reasm_move(struct engine *e, uint32_t slot, unsigned ci, size_t at)
{
    struct conn *c = &e->conns[slot];
    struct reasm_class *from = &e->reasm_classes[c->reasm_class], *to = &e->reasm_classes[ci];
    assert(ci != c->reasm_class && c->reasm_len <= to->bytes);
    if (to->bytes > from->bytes && !reasm_room(e, slot, to->bytes - from->bytes))
        return false;
    uint32_t i = reasm_slot_take(e, to);
    memcpy(to->mem + (size_t)i * to->stride, reasm_buf(e, c) + at, c->reasm_len);
    reasm_slot_give(e, from, c->reasm - 1);
    reasm_account(e, (int64_t)to->bytes - (int64_t)from->bytes);
    c->reasm = i + 1;
    c->reasm_class = (uint8_t)ci;
    return true;
}

/* Drops the first `used` kept bytes (delivered); the rest moves to a smaller class when one
 * holds it. */
static void reasm_consume(struct engine *e, uint32_t slot, size_t used)
{
    struct conn *c = &e->conns[slot];
    assert(used <= c->reasm_len);
    if (used == 0)
        return;
    c->reasm_len -= (uint32_t)used;
    unsigned ci = c->reasm_len ? reasm_class_for(e, c->reasm_len) : c->reasm_class;
    if (ci < c->reasm_class) {
        bool moved = reasm_move(e, slot, ci, used); /* to a smaller class: no room needed */
        assert(moved);
        (void)moved;
        return;
    }
    uint8_t *buf = reasm_buf(e, c);
    memmove(buf, buf + used, c->reasm_len);
}

/* Gives the connection's buffer back, if it has one, and takes it off the partial list. */
static void reasm_give(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    partial_unlink(e, slot);
    if (!c->reasm)
        return;
    struct reasm_class *k = &e->reasm_classes[c->reasm_class];
    reasm_slot_give(e, k, c->reasm - 1);
    reasm_account(e, -(int64_t)k->bytes);
    e->reasm_held--;
    c->reasm = 0;
    c->reasm_len = 0;
    c->need = 0;
}

/* After a delivery that left a partial frame: on the partial list, moved to its tail when the
 * frame is a new one (the bytes before it were consumed). */
static void partial_keep(struct engine *e, uint32_t slot, bool new_frame)
{
    struct conn *c = &e->conns[slot];
    if (c->partial && !new_frame)
        return;
    partial_unlink(e, slot);
    partial_push(e, slot);
    if (new_frame)
        c->frame_since_s = now_s(e);
}

/* Once a sweep: gives back the pages of buffers free since the sweep before (COLD) and ages
 * those freed since (WARM). Walks the pool only while free buffers may be resident. */
static void reasm_sweep(struct engine *e)
{
    if (e->reasm_dirty_bytes == 0)
        return;
    for (unsigned ci = 0; ci < e->reasm_classes_len; ci++) {
        struct reasm_class *k = &e->reasm_classes[ci];
        for (uint32_t first = 0; first < k->slots_len; first += k->unit_slots) {
            bool used = false, warm = false, cold = false;
            for (uint32_t i = first; i < first + k->unit_slots; i++) {
                used |= k->state[i] == RS_USED;
                warm |= k->state[i] == RS_WARM;
                cold |= k->state[i] == RS_COLD;
            }
            if (!used && !warm && cold) {
                reasm_unit_release(e, k, first);
                continue;
            }
            for (uint32_t i = first; i < first + k->unit_slots && warm; i++)
                if (k->state[i] == RS_WARM)
                    k->state[i] = RS_COLD;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Lists
 * ------------------------------------------------------------------------------------------- */

static void paused_push(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(!(c->flags & CF_PAUSED));
    c->flags |= CF_PAUSED;
    c->list_next = 0;
    if (e->paused_tail)
        e->conns[e->paused_tail - 1].list_next = slot + 1;
    else
        e->paused_head = slot + 1;
    e->paused_tail = slot + 1;
    stat_add(&e->stats.pauses, 1);
}

/* Takes a closing connection off the paused list: its slot may be reused at once (the kernel
 * hands a freed fixed-file slot to the next accept), and a stale entry would cut the list or
 * loop it. Closing a paused connection is rare, so the walk is fine. */
static void paused_unlink(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    if (!(c->flags & CF_PAUSED) || (c->flags & CF_HELD))
        return;
    uint32_t prev = 0;
    for (uint32_t at = e->paused_head; at; prev = at, at = e->conns[at - 1].list_next) {
        if (at != slot + 1)
            continue;
        if (prev)
            e->conns[prev - 1].list_next = c->list_next;
        else
            e->paused_head = c->list_next;
        if (e->paused_tail == slot + 1)
            e->paused_tail = prev;
        break;
    }
    c->list_next = 0;
    c->flags &= (uint16_t)~CF_PAUSED;
}

/* ENGINE_PAUSE puts the connection on the paused list (engine_resume); ENGINE_HOLD only marks
 * it, for engine_resume_conn. Either way its bytes are kept and not delivered. */
static void pause_or_hold(struct engine *e, uint32_t slot, enum engine_verdict v)
{
    struct conn *c = &e->conns[slot];
    partial_unlink(e, slot); /* its kept bytes are not taken for room while it waits */
    if (v == ENGINE_PAUSE) {
        paused_push(e, slot);
        return;
    }
    assert(!(c->flags & CF_PAUSED));
    c->flags |= CF_PAUSED | CF_HELD;
    stat_add(&e->stats.holds, 1);
}

/* ---------------------------------------------------------------------------------------------
 * Identification: the unidentified FIFO (engine.h)
 * ------------------------------------------------------------------------------------------- */

static uint32_t now_ms32(const struct engine *e)
{
    return (uint32_t)(e->now_ns / 1000000u);
}

/* An accepted connection joins the FIFO's tail, unidentified as of now. */
static void unid_push(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_OPEN && !c->unidentified);
    c->unidentified = true;
    c->opened_ms = now_ms32(e);
    c->unid_prev = e->unid_tail;
    c->unid_next = 0;
    if (e->unid_tail)
        e->conns[e->unid_tail - 1].unid_next = slot + 1;
    else
        e->unid_head = slot + 1;
    e->unid_tail = slot + 1;
    e->unid_len++;
}

/* Takes the connection off the FIFO, if it is on it (identified, or closing). */
static void unid_unlink(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    if (!c->unidentified)
        return;
    if (c->unid_prev)
        e->conns[c->unid_prev - 1].unid_next = c->unid_next;
    else
        e->unid_head = c->unid_next;
    if (c->unid_next)
        e->conns[c->unid_next - 1].unid_prev = c->unid_prev;
    else
        e->unid_tail = c->unid_prev;
    c->unid_prev = c->unid_next = 0;
    c->unidentified = false;
    assert(e->unid_len > 0);
    e->unid_len--;
}

/* ---------------------------------------------------------------------------------------------
 * Closing
 * ------------------------------------------------------------------------------------------- */

/* Cancels the connection's request `op` (its user_data is op | gen | slot); the cancel's own
 * completion comes back as OP_CANCEL. */
static void cancel_op(struct engine *e, uint32_t slot, enum op op)
{
    struct conn *c = &e->conns[slot];
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_cancel64(sqe, ud_conn(op, c->gen, slot), 0);
    io_uring_sqe_set_data64(sqe, ud_conn(OP_CANCEL, c->gen, slot));
    c->ops++;
}

static void conn_close(struct engine *e, uint32_t slot, enum engine_close_reason reason)
{
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN)
        return;
    paused_unlink(e, slot);
    unid_unlink(e, slot);
    if (slot < e->dial_base)
        e->accepted_open--;
    /* Its kept bytes will never be delivered: the buffer goes back now, unless on_data is
     * reading it (then at close_done). */
    if (c->delivering)
        partial_unlink(e, slot);
    else
        reasm_give(e, slot);
    c->state = CONN_CLOSING;
    c->reason = (uint8_t)reason;
    stat_add(&e->stats.closed[reason], 1);
    e->cfg.ops->on_close(e->cfg.app, e, slot, c->gen, reason);
    if (c->ops > 0 && !(c->flags & CF_CANCELED)) {
        /* The recv, and a send the peer may never drain; anything else in flight (a pause's
         * cancel) ends by itself. Each is cancelled by its user_data, which the kernel finds
         * in a hash: a cancel by descriptor walks every armed request of the ring, and closing
         * all of many thousand connections (stop, a reconnect storm) became quadratic. */
        c->flags |= CF_CANCELED;
        if (c->flags & CF_RECV)
            cancel_op(e, slot, OP_RECV);
        if (c->flags & CF_SEND)
            cancel_op(e, slot, OP_SEND);
        if (c->ops > 0)
            return;
    }
    closing_step(e, slot);
}

/* Cancels a dial whose CONNECT is in flight: it completes with -ECANCELED and the dial fails
 * (on_connect), reported as -ETIMEDOUT when connect_timeout_ms asked. */
static void dial_cancel(struct engine *e, uint32_t slot, bool timed_out)
{
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_CONNECTING || (c->flags & CF_CANCELED))
        return;
    c->flags |= (uint16_t)(CF_CANCELED | (timed_out ? CF_TIMEDOUT : 0));
    cancel_op(e, slot, OP_CONNECT);
}

/* ---------------------------------------------------------------------------------------------
 * Data delivery
 * ------------------------------------------------------------------------------------------- */

/* After the application's on_data: false when the connection is no longer open, or when the
 * verdict was ENGINE_CLOSE (closed here). */
static bool open_after_data(struct engine *e, uint32_t slot, enum engine_verdict v)
{
    if (e->conns[slot].state != CONN_OPEN)
        return false;
    if (v == ENGINE_CLOSE) {
        conn_close(e, slot, ENGINE_CLOSE_APP);
        return false;
    }
    return true;
}

/* False after closing a connection whose next frame cannot fit a reassembly buffer. */
static bool frame_fits(struct engine *e, uint32_t slot, uint32_t need)
{
    if (need <= e->reasm_cap)
        return true;
    conn_close(e, slot, ENGINE_CLOSE_FRAME_TOO_BIG);
    return false;
}

/* Moves *p (just received, *len > 0) into the connection's kept bytes: up to the pending
 * frame's end, or all of it while paused. False after closing a connection whose bytes do not
 * fit. */
static bool reasm_top_up(struct engine *e, uint32_t slot, const uint8_t **p, size_t *len)
{
    struct conn *c = &e->conns[slot];
    size_t take = *len;
    if (!(c->flags & CF_PAUSED) && c->need > c->reasm_len && c->need - c->reasm_len < take)
        take = c->need - c->reasm_len;
    if (take > e->reasm_cap - c->reasm_len) {
        /* A paused peer keeps at most a frame and two receive buffers: a device waits for its
         * ACK, so only a pipelining peer gets here. */
        conn_close(e, slot,
                   (c->flags & CF_PAUSED) ? ENGINE_CLOSE_PAUSE_OVERFLOW
                                          : ENGINE_CLOSE_FRAME_TOO_BIG);
        return false;
    }
    size_t keep = c->reasm_len + take;
    if (keep > e->reasm_classes[c->reasm_class].bytes &&
        !reasm_move(e, slot, reasm_class_for(e, keep), 0))
        return false;
    memcpy(reasm_buf(e, c) + c->reasm_len, *p, take);
    c->reasm_len += (uint32_t)take;
    *p += take;
    *len -= take;
    return true;
}

/* conn_deliver's step for a connection with kept bytes: tops them up from *p and, once the
 * pending frame is whole and the connection not paused, offers them to the application. True
 * to go round again. */
static bool deliver_kept(struct engine *e, uint32_t slot, const uint8_t **p, size_t *len)
{
    struct conn *c = &e->conns[slot];
    enum engine_verdict v = ENGINE_CONTINUE;
    uint32_t need = 0;
    if (*len > 0 && !reasm_top_up(e, slot, p, len))
        return false;
    if ((c->flags & CF_PAUSED) || c->reasm_len < c->need)
        return false;
    c->delivering = true;
    size_t used =
        e->cfg.ops->on_data(e->cfg.app, e, slot, c->gen, reasm_buf(e, c), c->reasm_len, &v, &need);
    c->delivering = false;
    /* A connection closed or handed off inside on_data keeps its buffer until close_done. */
    assert(c->state != CONN_OPEN || used <= c->reasm_len);
    if (!open_after_data(e, slot, v))
        return false;
    reasm_consume(e, slot, used);
    if (c->reasm_len == 0)
        reasm_give(e, slot); /* paused or not: an empty buffer costs the budget for nothing */
    if (v == ENGINE_PAUSE || v == ENGINE_HOLD) {
        c->need = 0;
        pause_or_hold(e, slot, v);
        return true; /* keeps the rest of *p, if it fits */
    }
    if (!c->reasm)
        return true;
    assert(need > c->reasm_len);
    if (!frame_fits(e, slot, need))
        return false;
    partial_keep(e, slot, used > 0);
    c->need = need;
    return *len > 0;
}

/* conn_deliver's step for a connection with nothing kept: offers *p in place (no copy) and
 * keeps what the application left of it, in a reassembly buffer taken here. True to go round
 * again (the kept bytes are then the other step's). */
static bool deliver_direct(struct engine *e, uint32_t slot, const uint8_t **p, size_t *len)
{
    struct conn *c = &e->conns[slot];
    enum engine_verdict v = ENGINE_CONTINUE;
    uint32_t need = 0;
    if (*len == 0)
        return false;
    if (c->flags & CF_PAUSED)
        return reasm_take(e, slot, *len); /* nothing kept yet: keep these, deliver on resume */
    size_t used = e->cfg.ops->on_data(e->cfg.app, e, slot, c->gen, *p, *len, &v, &need);
    assert(used <= *len);
    if (!open_after_data(e, slot, v))
        return false;
    *p += used;
    *len -= used;
    if (v == ENGINE_CONTINUE) {
        if (*len == 0)
            return false;
        assert(need > *len);
        if (!frame_fits(e, slot, need))
            return false;
    }
    if (*len > 0 && !reasm_take(e, slot, *len))
        return false;
    if (v == ENGINE_PAUSE || v == ENGINE_HOLD) {
        pause_or_hold(e, slot, v);
        return *len > 0; /* then copies *p into the new buffer */
    }
    c->need = need;
    partial_push(e, slot);
    return true;
}

/* Offers the connection's kept bytes and then p[0 .. len-1] (just received) to the
 * application, reassembling across receives, until everything is consumed, a frame is still
 * incomplete, the application pauses, or the connection closes. The hot path: its steps are
 * static functions called once, which the compiler inlines. */
static void conn_deliver(struct engine *e, uint32_t slot, const uint8_t *p, size_t len)
{
    struct conn *c = &e->conns[slot];
    while (c->state == CONN_OPEN) {
        bool again = c->reasm ? deliver_kept(e, slot, &p, &len) : deliver_direct(e, slot, &p, &len);
        if (!again)
            return;
    }
}

static void return_buffer(struct engine *e, uint32_t bid)
{
    io_uring_buf_ring_add(e->br, e->bufs + (size_t)bid * e->cfg.buf_bytes, e->cfg.buf_bytes,
                          (unsigned short)bid, (int)e->br_mask, (int)e->br_pending);
    e->br_pending++;
}

/* ---------------------------------------------------------------------------------------------
 * Completion handlers
 * ------------------------------------------------------------------------------------------- */

/* After an accept or a handoff took a slot of [0, dial_base): while fewer than evict_reserve
 * are free, closes the oldest unidentified connection, but never the one just opened (`slot`:
 * it has had no time to identify itself; the next newcomer may evict it). */
static void evict_for_room(struct engine *e, uint32_t slot)
{
    while (e->dial_base - e->accepted_open < e->evict_reserve && e->unid_head) {
        uint32_t oldest = e->unid_head - 1;
        if (oldest == slot) {
            if (!e->conns[slot].unid_next)
                return;
            oldest = e->conns[slot].unid_next - 1;
        }
        conn_close(e, oldest, ENGINE_CLOSE_EVICTED);
    }
}

static void conn_opened(struct engine *e, uint32_t slot, int from_shard, uint64_t key)
{
    assert(slot < e->cfg.conns_max);
    struct conn *c = &e->conns[slot];
    /* Accepted and handed-in descriptors come from the kernel's range, below the dial slots. */
    assert(from_shard == ENGINE_FROM_DIAL ? c->state == CONN_CONNECTING
                                          : c->state == CONN_FREE && slot < e->dial_base);
    assert(c->ops == 0);
    uint32_t gen = c->gen;
    memset(c, 0, sizeof *c);
    c->gen = gen;
    c->state = CONN_OPEN;
    c->active_s = now_s(e);
    e->conns_open++;
    if (from_shard != ENGINE_FROM_DIAL)
        e->accepted_open++;
    if (from_shard == ENGINE_FROM_ACCEPT)
        unid_push(e, slot); /* a handed-in connection was identified by the shard it left */
    e->cfg.ops->on_open(e->cfg.app, e, slot, gen, from_shard, key);
    if (c->state == CONN_OPEN && !(c->flags & (CF_RECV | CF_PAUSED)))
        arm_recv(e, slot);
    if (from_shard != ENGINE_FROM_DIAL)
        evict_for_room(e, slot);
}

static void on_accept(struct engine *e, const struct cqe_copy *q)
{
    if (!(q->flags & IORING_CQE_F_MORE))
        e->accept_armed = false;
    if (q->res < 0) {
        /* -ENFILE: the fixed table is full and the kernel dropped the connection. */
        if (q->res != -ECANCELED)
            stat_add(&e->stats.accept_errors, 1);
    } else {
        stat_add(&e->stats.accepted, 1);
        conn_opened(e, (uint32_t)q->res, ENGINE_FROM_ACCEPT, 0);
    }
    if (!e->accept_armed && !e->stop_started && e->listen_fd >= 0)
        arm_accept(e);
}

static void cancel_paused_recv(struct engine *e, uint32_t slot);

static void on_recv(struct engine *e, const struct cqe_copy *q)
{
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(slot < e->cfg.conns_max && c->gen == ud_gen(q->user_data) && c->state != CONN_FREE);
    bool more = q->flags & IORING_CQE_F_MORE;
    if (!more) {
        c->flags &= (uint16_t) ~(CF_RECV | CF_RECV_CANCEL);
        c->ops--;
    }
    stat_add(&e->stats.recv_completions, 1);
    if (q->flags & IORING_CQE_F_BUFFER) {
        uint32_t bid = q->flags >> IORING_CQE_BUFFER_SHIFT;
        if (q->res > 0 && c->state == CONN_OPEN) {
            bool was_paused = c->flags & CF_PAUSED;
            stat_add(&e->stats.recv_bytes, (uint64_t)q->res);
            c->active_s = now_s(e);
            conn_deliver(e, slot, e->bufs + (size_t)bid * e->cfg.buf_bytes, (size_t)q->res);
            if (was_paused)
                cancel_paused_recv(e, slot);
        }
        return_buffer(e, bid);
    }
    if (c->state == CONN_CLOSING) {
        closing_step(e, slot);
        return;
    }
    if (q->res == 0) {
        conn_close(e, slot, ENGINE_CLOSE_PEER);
    } else if (q->res == -ENOBUFS) {
        /* Every buffer was taken: re-arm once this turn's buffers are back. */
        stat_add(&e->stats.recv_enobufs, 1);
        if (!more && !(c->flags & (CF_REARM | CF_PAUSED))) {
            c->flags |= CF_REARM;
            c->list_next = e->rearm_head;
            e->rearm_head = slot + 1;
        }
    } else if (q->res < 0 && q->res != -ECANCELED) {
        conn_close(e, slot, ENGINE_CLOSE_ERROR);
    } else if (!more && c->state == CONN_OPEN && !(c->flags & (CF_PAUSED | CF_REARM))) {
        arm_recv(e, slot); /* a multishot recv may end at any time: re-arm */
    }
}

static void on_send(struct engine *e, const struct cqe_copy *q)
{
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(c->gen == ud_gen(q->user_data) && (c->flags & CF_SEND));
    bool was_ref = c->flags & CF_SEND_REF;
    c->flags &= (uint16_t) ~(CF_SEND | CF_SEND_REF);
    c->ops--;
    e->sends_in_flight--;
    if (c->state == CONN_CLOSING) {
        closing_step(e, slot); /* a pending reference is given back when the slot closes */
        return;
    }
    if (q->res < 0) {
        conn_close(e, slot, ENGINE_CLOSE_ERROR);
        return;
    }
    size_t sent = (size_t)q->res;
    stat_add(&e->stats.send_bytes, sent);
    bool ref_done = false;
    if (was_ref) {
        assert(c->ref && sent <= c->ref_len - c->ref_off);
        c->ref_off += (uint32_t)sent;
        if (c->ref_off == c->ref_len) {
            c->ref = NULL;
            c->ref_len = c->ref_off = 0;
            ref_done = true;
        }
    } else {
        assert(sent <= c->out_sending);
        memmove(c->out, c->out + sent, c->out_len - sent);
        c->out_len = (uint8_t)(c->out_len - sent);
        c->out_sending = 0;
        if (c->ref) {
            assert(c->ref_at >= sent);
            c->ref_at = (uint8_t)(c->ref_at - sent);
        }
    }
    /* A short send goes on with the rest (the kernel took what the socket buffer held). */
    if (c->out_len > 0 || c->ref)
        submit_send(e, slot);
    if (ref_done && e->cfg.ops->on_sent)
        e->cfg.ops->on_sent(e->cfg.app, e, slot, c->gen, 0);
}

static void on_connect(struct engine *e, const struct cqe_copy *q)
{
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(slot >= e->dial_base && slot < e->cfg.conns_max);
    assert(c->gen == ud_gen(q->user_data) && c->state == CONN_CONNECTING && c->ops > 0);
    c->ops--;
    int res = q->res;
    /* A cancelled dial fails even when the connect won the race with its cancel. */
    if (res == 0 && (c->flags & CF_CANCELED))
        res = -ECANCELED;
    if (res == -ECANCELED && (c->flags & CF_TIMEDOUT))
        res = -ETIMEDOUT;
    if (res == 0) {
        assert(c->ops == 0);
        stat_add(&e->stats.dials_connected, 1);
        e->conns_dialing--;
        conn_opened(e, slot, ENGINE_FROM_DIAL, c->handoff_key);
        return;
    }
    stat_add(&e->stats.dials_failed, 1);
    c->state = CONN_CLOSING; /* still CF_DIAL: counted in conns_dialing until freed */
    if (e->cfg.ops->on_connect_failed)
        e->cfg.ops->on_connect_failed(e->cfg.app, e, c->handoff_key, res);
    closing_step(e, slot);
}

static void on_conn_done(struct engine *e, const struct cqe_copy *q)
{
    /* The cancel or the MSG_RING of a closing connection completed, or the cancel of a dial
     * (which may come before the dial's own completion). */
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(c->gen == ud_gen(q->user_data) && c->ops > 0 &&
           (c->state == CONN_CLOSING || c->state == CONN_CONNECTING));
    c->ops--;
    if (ud_op(q->user_data) == OP_HANDOFF_OUT) {
        if (q->res < 0)
            stat_add(&e->stats.handoff_errors, 1);
        else
            stat_add(&e->stats.handed_out, 1);
    }
    closing_step(e, slot);
}

static void on_close_done(struct engine *e, const struct cqe_copy *q)
{
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(c->gen == ud_gen(q->user_data) && c->state == CONN_CLOSING && c->ops == 1);
    if (c->ref) {
        /* The reference never went out whole: its bytes are the application's again. */
        c->ref = NULL;
        c->ref_len = c->ref_off = 0;
        if (e->cfg.ops->on_sent)
            e->cfg.ops->on_sent(e->cfg.app, e, slot, c->gen, -ECANCELED);
    }
    reasm_give(e, slot);
    bool dial = c->flags & CF_DIAL; /* a failed dial: never counted as open */
    c->ops = 0;
    c->flags = 0;
    c->out_len = 0;
    c->state = CONN_FREE;
    c->gen = engine_gen_next(c->gen);
    if (dial) {
        assert(e->conns_dialing > 0);
        e->conns_dialing--;
    } else {
        assert(e->conns_open > 0);
        e->conns_open--;
    }
    if (slot >= e->dial_base) {
        assert(e->dial_free_len < e->cfg.conns_max - e->dial_base);
        e->dial_free[e->dial_free_len++] = slot;
    }
}

static void on_cancel_recv(struct engine *e, const struct cqe_copy *q)
{
    /* The pause's cancel of the multishot recv: the recv's own last completion follows (or
     * came first) and clears CF_RECV; nothing else to do here. */
    uint32_t slot = ud_slot(q->user_data);
    struct conn *c = &e->conns[slot];
    assert(c->gen == ud_gen(q->user_data) && c->ops > 0);
    c->ops--;
    if (c->state == CONN_CLOSING)
        closing_step(e, slot);
}

/* Hands every message shard `from` queued for us to the application, in order. */
static void mail_drain(struct engine *e, unsigned from)
{
    struct spsc *q = from < e->cfg.shards ? e->inbox[from] : NULL;
    if (!q)
        return;
    uint8_t msg[ENGINE_MAIL_BYTES];
    while (spsc_pop(q, msg)) {
        stat_add(&e->stats.mail_received, 1);
        if (e->cfg.ops->on_mail)
            e->cfg.ops->on_mail(e->cfg.app, e, from, msg);
    }
}

/* A connection handed in. Mail its shard pushed before engine_handoff is in our inbox by now
 * (pushed, then the MSG_RING submitted, then its completion posted here): delivered first, so
 * on_open can use it. The CQE does not say which shard sent it, so every inbox is drained. */
static void on_handoff_in(struct engine *e, const struct cqe_copy *q)
{
    if (q->res < 0) {
        stat_add(&e->stats.handoff_errors, 1);
        return;
    }
    stat_add(&e->stats.handed_in, 1);
    for (unsigned from = 0; from < e->cfg.shards; from++)
        mail_drain(e, from);
    conn_opened(e, (uint32_t)q->res, 0, q->user_data & PAYLOAD_MASK);
}

/* One MSG_RING per shard that got mail this turn. */
static void mail_wake(struct engine *e)
{
    if (!e->wake_any)
        return;
    e->wake_any = false;
    for (unsigned to = 0; to < e->peers_len; to++) {
        if (!e->wake[to])
            continue;
        e->wake[to] = false;
        struct io_uring_sqe *sqe = get_sqe(e);
        io_uring_prep_msg_ring(sqe, e->peers[to], 0, ud_payload(OP_MAIL, e->cfg.shard), 0);
        io_uring_sqe_set_data64(sqe, ud_payload(OP_MAIL_WAKE, to));
        stat_add(&e->stats.mail_wakes, 1);
    }
}

int engine_mail(struct engine *e, unsigned to, const void *msg)
{
    if (to >= e->cfg.shards || !e->outbox[to])
        return -EINVAL;
    if (!spsc_push(e->outbox[to], msg)) {
        stat_add(&e->stats.mail_full, 1);
        return -ENOBUFS;
    }
    stat_add(&e->stats.mail_sent, 1);
    e->wake[to] = true;
    e->wake_any = true;
    return 0;
}

void engine_set_mailboxes(struct engine *e, struct engine *const *all, unsigned shards)
{
    assert(shards == e->cfg.shards && shards <= ENGINE_SHARDS_MAX);
    for (unsigned i = 0; i < shards; i++)
        e->outbox[i] = i == e->cfg.shard ? NULL : all[i]->inbox[e->cfg.shard];
}

/* ---------------------------------------------------------------------------------------------
 * UDP (dgram.h): the recvmsg armed while neither paused nor closed; each datagram offered to
 * the application and its buffer given back at once.
 * ------------------------------------------------------------------------------------------- */

static void udp_arm(struct engine *e)
{
    if (!e->dg || e->udp_armed || e->udp_paused || e->udp_closed)
        return;
    struct io_uring_sqe *sqe = get_sqe(e);
    dgram_prep_recv(e->dg, sqe);
    io_uring_sqe_set_data64(sqe, ud_payload(OP_UDP_RECV, 0));
    e->udp_armed = true;
}

static void on_udp_recv(struct engine *e, const struct cqe_copy *q)
{
    if (!(q->flags & IORING_CQE_F_MORE))
        e->udp_armed = false; /* re-armed at the end of the loop turn (udp_arm) */
    if (q->res == -ENOBUFS)
        stat_add(&e->stats.udp_enobufs, 1);
    if (!(q->flags & IORING_CQE_F_BUFFER))
        return;
    struct dgram_in in;
    if (q->res >= 0 && dgram_read(e->dg, q->res, q->flags, &in)) {
        stat_add(&e->stats.udp_received, 1);
        stat_add(&e->stats.udp_truncated, in.truncated ? 1 : 0);
        e->cfg.ops->on_datagram(e->cfg.app, e, in.p, in.len, in.truncated, in.from, in.from_len);
    } else {
        in.bid = (uint16_t)(q->flags >> IORING_CQE_BUFFER_SHIFT);
        stat_add(&e->stats.udp_bad_buffers, 1);
    }
    dgram_recycle(e->dg, in.bid);
}

static void on_udp_send(struct engine *e, const struct cqe_copy *q)
{
    dgram_send_done(e->dg, (int)(q->user_data & PAYLOAD_MASK));
    stat_add(q->res < 0 ? &e->stats.udp_send_errors : &e->stats.udp_sent, 1);
}

int engine_udp_send(struct engine *e, const struct sockaddr *to, socklen_t to_len, const void *p,
                    size_t len)
{
    if (!e->dg || len > ENGINE_UDP_SEND_BYTES_MAX || to_len > sizeof(struct sockaddr_in6))
        return -EINVAL;
    int slot = dgram_send_slot(e->dg);
    if (slot < 0) {
        stat_add(&e->stats.udp_send_full, 1);
        return -ENOBUFS;
    }
    struct io_uring_sqe *sqe = get_sqe(e);
    dgram_prep_send(e->dg, slot, sqe, to, to_len, p, len);
    io_uring_sqe_set_data64(sqe, ud_payload(OP_UDP_SEND, (uint64_t)slot));
    return 0;
}

static void udp_cancel(struct engine *e)
{
    if (!e->udp_armed)
        return;
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_cancel64(sqe, ud_payload(OP_UDP_RECV, 0), 0);
    io_uring_sqe_set_data64(sqe, ud_payload(OP_UDP_CANCEL, 0));
}

void engine_udp_pause(struct engine *e)
{
    if (!e->dg || e->udp_paused)
        return;
    e->udp_paused = true;
    udp_cancel(e);
}

void engine_udp_resume(struct engine *e)
{
    if (!e->dg || !e->udp_paused)
        return;
    e->udp_paused = false;
    /* A cancel still in flight ends the old recvmsg; udp_arm then starts a new one. */
}

int engine_udp_local_addr(const struct engine *e, struct sockaddr_storage *out, socklen_t *len)
{
    return e->dg ? dgram_local_addr(e->dg, out, len) : -EINVAL;
}

static void dispatch(struct engine *e, const struct cqe_copy *q)
{
    switch (ud_op(q->user_data)) {
    case OP_ACCEPT:
        on_accept(e, q);
        break;
    case OP_RECV:
        on_recv(e, q);
        break;
    case OP_SEND:
        on_send(e, q);
        break;
    case OP_CANCEL:
    case OP_HANDOFF_OUT:
        on_conn_done(e, q);
        break;
    case OP_CLOSE:
        on_close_done(e, q);
        break;
    case OP_CANCEL_RECV:
        on_cancel_recv(e, q);
        break;
    case OP_POLL:
        e->cfg.ops->on_poll(e->cfg.app, e, q->user_data & PAYLOAD_MASK, q->res);
        break;
    case OP_HANDOFF_IN:
        on_handoff_in(e, q);
        break;
    case OP_CONNECT:
        on_connect(e, q);
        break;
    case OP_CANCEL_OTHER:
    case OP_MAIL_WAKE:
    case OP_PEER: /* engine_peer_addr read it where it lay */
        break;
    case OP_MAIL:
        mail_drain(e, (unsigned)(q->user_data & PAYLOAD_MASK));
        break;
    case OP_UDP_RECV:
        on_udp_recv(e, q);
        break;
    case OP_UDP_SEND:
        on_udp_send(e, q);
        break;
    case OP_UDP_CANCEL:
        break;
    default:
        assert(!"unknown op in user_data");
    }
}

/* ---------------------------------------------------------------------------------------------
 * Timers, re-arming, pausing
 * ------------------------------------------------------------------------------------------- */

static void sweep(struct engine *e)
{
    uint32_t s = now_s(e);
    uint32_t idle_s = e->cfg.idle_timeout_ms / 1000, frame_s = e->cfg.frame_timeout_ms / 1000;
    uint32_t connect_s = (e->cfg.connect_timeout_ms + 999) / 1000;
    for (uint32_t slot = 0; slot < e->cfg.conns_max; slot++) {
        struct conn *c = &e->conns[slot];
        if (c->state == CONN_CONNECTING && connect_s && s - c->active_s >= connect_s)
            dial_cancel(e, slot, true);
        if (c->state != CONN_OPEN)
            continue;
        if (frame_s && c->reasm && !(c->flags & CF_PAUSED) && s - c->frame_since_s >= frame_s)
            conn_close(e, slot, ENGINE_CLOSE_FRAME_TIMEOUT);
        else if (idle_s && !(c->flags & CF_PAUSED) && s - c->active_s >= idle_s)
            conn_close(e, slot, ENGINE_CLOSE_IDLE);
    }
}

/* Closes the unidentified connections whose identify_timeout_ms has run out: the oldest first,
 * so this stops at the first that has time left. */
static void identify_expire(struct engine *e)
{
    uint32_t timeout_ms = e->cfg.identify_timeout_ms;
    if (!timeout_ms)
        return;
    uint32_t now = now_ms32(e);
    while (e->unid_head) {
        uint32_t slot = e->unid_head - 1;
        if ((int32_t)(now - e->conns[slot].opened_ms) < (int32_t)timeout_ms)
            return;
        conn_close(e, slot, ENGINE_CLOSE_IDENTIFY_TIMEOUT);
    }
}

static void rearm_all(struct engine *e)
{
    while (e->rearm_head) {
        uint32_t slot = e->rearm_head - 1;
        struct conn *c = &e->conns[slot];
        e->rearm_head = c->list_next;
        c->flags &= (uint16_t)~CF_REARM;
        if (c->state == CONN_OPEN && !(c->flags & (CF_RECV | CF_PAUSED)))
            arm_recv(e, slot);
    }
}

/* A paused connection sent more: stop reading it (cancel its multishot recv) so that the rest
 * waits in the kernel's socket buffer — TCP backpressure. Pausing alone does not cancel: a
 * device waits for the ACK of the packet the pause holds, so its recv stays armed at no cost,
 * and the cancel, its completion and the re-arm are spent only on a peer that keeps sending. */
static void cancel_paused_recv(struct engine *e, uint32_t slot)
{
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || !(c->flags & CF_PAUSED) || !(c->flags & CF_RECV) ||
        (c->flags & (CF_RECV_CANCEL | CF_CANCELED)))
        return;
    c->flags |= CF_RECV_CANCEL;
    stat_add(&e->stats.pause_cancels, 1);
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_cancel64(sqe, ud_conn(OP_RECV, c->gen, slot), 0);
    io_uring_sqe_set_data64(sqe, ud_conn(OP_CANCEL_RECV, c->gen, slot));
    c->ops++;
}

void engine_resume(struct engine *e)
{
    while (e->paused_head) {
        uint32_t slot = e->paused_head - 1;
        struct conn *c = &e->conns[slot];
        e->paused_head = c->list_next;
        if (!e->paused_head)
            e->paused_tail = 0;
        c->flags &= (uint16_t)~CF_PAUSED;
        if (c->state != CONN_OPEN)
            continue;
        stat_add(&e->stats.resumes, 1);
        c->need = 0;
        c->active_s = now_s(e); /* a long stall is not the device's silence */
        conn_deliver(e, slot, NULL, 0);
        if (c->flags & CF_HELD)
            continue; /* waits for its own engine_resume_conn; the others go on */
        if (c->flags & CF_PAUSED)
            return; /* the application is full again; the rest wait in order */
        /* A recv whose cancel is in flight is re-armed when it ends (on_recv). */
        if (c->state == CONN_OPEN && !(c->flags & CF_RECV))
            arm_recv(e, slot);
    }
}

int engine_resume_conn(struct engine *e, uint32_t slot, uint32_t gen)
{
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    if (!(c->flags & CF_HELD))
        return -EINVAL;
    c->flags &= (uint16_t) ~(CF_PAUSED | CF_HELD);
    stat_add(&e->stats.resumes, 1);
    c->need = 0;
    c->active_s = now_s(e);
    conn_deliver(e, slot, NULL, 0);
    /* A recv whose cancel is in flight is re-armed when it ends (on_recv). */
    if (c->state == CONN_OPEN && !(c->flags & (CF_RECV | CF_PAUSED)))
        arm_recv(e, slot);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Public calls
 * ------------------------------------------------------------------------------------------- */

int engine_send(struct engine *e, uint32_t slot, uint32_t gen, const void *p, size_t len)
{
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    if (len > sizeof c->out - c->out_len) {
        conn_close(e, slot, ENGINE_CLOSE_SEND_OVERFLOW);
        return -ENOBUFS;
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len = (uint8_t)(c->out_len + len);
    if (!(c->flags & CF_SEND))
        submit_send(e, slot);
    return 0;
}

int engine_send_ref(struct engine *e, uint32_t slot, uint32_t gen, const void *p, size_t len)
{
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    if (len == 0 || len > UINT32_MAX)
        return -EINVAL;
    if (c->ref)
        return -EBUSY;
    c->ref = p;
    c->ref_len = (uint32_t)len;
    c->ref_off = 0;
    c->ref_at = c->out_len; /* what is queued now goes first */
    if (!(c->flags & CF_SEND))
        submit_send(e, slot);
    return 0;
}

int engine_connect(struct engine *e, const struct sockaddr *dst, socklen_t dst_len,
                   const struct sockaddr *src, socklen_t src_len, uint64_t key)
{
    if (e->stop_started || atomic_load_explicit(&e->stopping, memory_order_relaxed))
        return -ESHUTDOWN;
    sa_family_t family = dst->sa_family;
    socklen_t len = family == AF_INET    ? (socklen_t)sizeof(struct sockaddr_in)
                    : family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                         : 0;
    if (len == 0)
        return -EAFNOSUPPORT;
    if (dst_len < len || (src && (src->sa_family != family || src_len < len)))
        return -EINVAL;
    if (e->dial_free_len == 0)
        return -ENFILE;
    /* Synchronous socket set-up, then the descriptor moves into the fixed table: the
     * ordinary fd lives only for these few calls. (IORING_OP_SOCKET direct + URING_CMD
     * setsockopt + IORING_OP_BIND would need kernel 6.11 for the same result.) */
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        stat_add(&e->stats.dial_errors, 1);
        return -errno;
    }
    int one = 1, ret = 0;
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        (e->cfg.dial_reset_on_close &&
         setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset) < 0))
        ret = -errno;
    /* Without IP_BIND_ADDRESS_NO_PORT, bind() would pick a port unique on the source address
     * for every destination; with it the port is picked at connect, per 4-tuple. */
    if (ret == 0 && src &&
        (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
         bind(fd, src, len) < 0))
        ret = -errno;
    uint32_t slot = e->dial_free[e->dial_free_len - 1];
    if (ret == 0) {
        ret = io_uring_register_files_update(&e->ring, slot, &fd, 1);
        ret = ret == 1 ? 0 : ret < 0 ? ret : -EIO;
    }
    close(fd); /* the fixed table holds its own reference to the socket */
    if (ret < 0) {
        stat_add(&e->stats.dial_errors, 1);
        return ret;
    }
    e->dial_free_len--;
    struct conn *c = &e->conns[slot];
    assert(c->state == CONN_FREE && c->ops == 0);
    uint32_t gen = c->gen;
    memset(c, 0, sizeof *c);
    c->gen = gen;
    c->state = CONN_CONNECTING;
    c->flags = CF_DIAL;
    c->handoff_key = key;
    c->active_s = now_s(e);
    memcpy(&c->dst, dst, len); /* read by the kernel when the SQE is submitted */
    struct io_uring_sqe *sqe = get_sqe(e);
    io_uring_prep_connect(sqe, (int)slot, (const struct sockaddr *)&c->dst, len);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ud_conn(OP_CONNECT, gen, slot));
    c->ops = 1;
    e->conns_dialing++;
    stat_add(&e->stats.dials, 1);
    return 0;
}

int engine_close(struct engine *e, uint32_t slot, uint32_t gen)
{
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    conn_close(e, slot, ENGINE_CLOSE_APP);
    return 0;
}

int engine_identified(struct engine *e, uint32_t slot, uint32_t gen)
{
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    unid_unlink(e, slot);
    return 0;
}

/* The completion with user_data ud, if it is in the CQ now: *res gets its result. It stays
 * there, for the loop to reap (dispatch ignores OP_PEER). */
static bool cq_find(const struct engine *e, uint64_t ud, int *res)
{
    const struct io_uring_cq *cq = &e->ring.cq;
    unsigned head = *cq->khead, tail = io_uring_smp_load_acquire(cq->ktail);
    for (; head != tail; head++) {
        const struct io_uring_cqe *cqe = &cq->cqes[head & *cq->kring_mask];
        if (cqe->user_data == ud) {
            *res = cqe->res;
            return true;
        }
    }
    return false;
}

int engine_peer_addr(struct engine *e, uint32_t slot, uint32_t gen, struct sockaddr_storage *out,
                     socklen_t *len)
{
    enum { WAITS_MAX = 100, WAIT_NS = 10000000 }; /* 1 s in all; inline, it takes none */
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    if (slot >= e->dial_base)
        return -EINVAL;
    /* SO_PEERNAME refuses a length above the address's: the listener's family says which. */
    socklen_t want = e->cfg.addr.ss_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                                       : (socklen_t)sizeof(struct sockaddr_in);
    memset(&e->peer_buf, 0, sizeof e->peer_buf);
    uint64_t ud = ud_payload(OP_PEER, ++e->peer_seq);
    struct io_uring_sqe *sqe = get_sqe(e);
    shard_prep_cmd_getsockopt(sqe, (int)slot, SOL_SOCKET, SO_PEERNAME, &e->peer_buf, want);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ud);
    int res = -ETIMEDOUT;
    for (int i = 0; i < WAITS_MAX && !cq_find(e, ud, &res); i++) {
        /* Submits, then waits for one completion more than the CQ holds. */
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = WAIT_NS};
        int ret =
            shard_submit_and_wait_min_timeout(&e->ring, io_uring_cq_ready(&e->ring) + 1, &ts, 0);
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY)
            return ret;
    }
    if (res < 0)
        return res;
    *out = e->peer_buf;
    *len = (socklen_t)res;
    return 0;
}

int engine_handoff(struct engine *e, uint32_t slot, uint32_t gen, unsigned to, uint64_t key)
{
    if (key > PAYLOAD_MASK || to >= e->peers_len || to == e->cfg.shard)
        return -EINVAL;
    if (slot >= e->cfg.conns_max)
        return -ESTALE;
    struct conn *c = &e->conns[slot];
    if (c->state != CONN_OPEN || c->gen != gen)
        return -ESTALE;
    c->flags |= CF_HANDOFF;
    c->handoff_to = (uint8_t)to;
    c->handoff_key = key;
    conn_close(e, slot, ENGINE_CLOSE_HANDED_OFF); /* drops the bytes kept */
    return 0;
}

int engine_poll(struct engine *e, int fd, short events, uint64_t tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, (unsigned)events);
    io_uring_sqe_set_data64(sqe, ud_payload(OP_POLL, tag));
    return 0;
}

int engine_poll_cancel(struct engine *e, uint64_t tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_poll_remove(sqe, ud_payload(OP_POLL, tag));
    io_uring_sqe_set_data64(sqe, ud_payload(OP_CANCEL_OTHER, 0));
    return 0;
}

unsigned engine_shard(const struct engine *e)
{
    return e->cfg.shard;
}

uint64_t engine_now_ns(const struct engine *e)
{
    return e->now_ns;
}

const struct engine_stats *engine_stats(const struct engine *e)
{
    return &e->stats;
}

uint32_t engine_conns_open(const struct engine *e)
{
    return e->conns_open;
}

uint32_t engine_conns_dialing(const struct engine *e)
{
    return e->conns_dialing;
}

uint32_t engine_conns_unidentified(const struct engine *e)
{
    return e->unid_len;
}

int engine_ring_fd(const struct engine *e)
{
    return e->ring.ring_fd;
}

void engine_set_peers(struct engine *e, const int *ring_fds, unsigned shards)
{
    assert(shards <= sizeof e->peers / sizeof e->peers[0]);
    memcpy(e->peers, ring_fds, shards * sizeof *ring_fds);
    e->peers_len = shards;
}

void engine_stop(struct engine *e)
{
    atomic_store(&e->stopping, true);
}

/* ---------------------------------------------------------------------------------------------
 * The loop
 * ------------------------------------------------------------------------------------------- */

void engine_stop_accepting(struct engine *e)
{
    if (e->dg && !e->udp_closed) {
        e->udp_closed = true;
        udp_cancel(e);
    }
    if (e->accept_armed) {
        struct io_uring_sqe *sqe = get_sqe(e);
        io_uring_prep_cancel64(sqe, ud_payload(OP_ACCEPT, 0), 0);
        io_uring_sqe_set_data64(sqe, ud_payload(OP_CANCEL_OTHER, 0));
    }
    if (e->listen_fd >= 0) {
        /* The accept holds its own reference to the file until its cancellation lands. */
        close(e->listen_fd);
        e->listen_fd = -1;
    }
}

uint32_t engine_sends_in_flight(const struct engine *e)
{
    return e->sends_in_flight;
}

static void begin_stop(struct engine *e)
{
    e->stop_started = true;
    engine_stop_accepting(e);
    for (uint32_t slot = 0; slot < e->cfg.conns_max; slot++) {
        conn_close(e, slot, ENGINE_CLOSE_SHUTDOWN);
        dial_cancel(e, slot, false);
    }
}

/* After a turn's completions: buffers given back, receives re-armed, timers, the application's
 * tick, the other shards woken. */
static void turn_end(struct engine *e)
{
    if (e->br_pending) {
        io_uring_buf_ring_advance(e->br, (int)e->br_pending);
        e->br_pending = 0;
    }
    if (e->dg)
        dgram_flush(e->dg);
    rearm_all(e);
    identify_expire(e);
    if (e->now_ns >= e->next_sweep_ns) {
        sweep(e);
        reasm_sweep(e);
        e->next_sweep_ns = e->now_ns + SWEEP_MS * 1000000ull;
    }
    e->app_deadline_ns = e->cfg.ops->on_tick(e->cfg.app, e, e->now_ns);
    udp_arm(e);
    mail_wake(e);
}

int engine_run(struct engine *e)
{
    if (e->listen_fd >= 0)
        arm_accept(e);
    udp_arm(e);
    e->now_ns = engine_clock_ns();
    e->next_sweep_ns = e->now_ns + SWEEP_MS * 1000000ull;
    for (;;) {
        if (atomic_load_explicit(&e->stopping, memory_order_relaxed) && !e->stop_started)
            begin_stop(e);
        if (e->stop_started && e->conns_open == 0 && e->conns_dialing == 0 && !e->accept_armed &&
            !e->udp_armed && (!e->dg || dgram_sends_in_flight(e->dg) == 0))
            break;

        uint64_t now = engine_clock_ns();
        uint64_t wake = now + WAIT_MS_MAX * 1000000ull;
        if (e->app_deadline_ns && e->app_deadline_ns < wake)
            wake = e->app_deadline_ns;
        if (e->next_sweep_ns < wake)
            wake = e->next_sweep_ns;
        uint64_t wait_ns = wake > now ? wake - now : 0;
        struct __kernel_timespec ts = {.tv_sec = (long long)(wait_ns / 1000000000u),
                                       .tv_nsec = (long long)(wait_ns % 1000000000u)};
        int ret;
        if (e->min_wait_us) {
            ret = shard_submit_and_wait_min_timeout(&e->ring, WAIT_BATCH_CQES, &ts, e->min_wait_us);
        } else {
            struct io_uring_cqe *cqe;
            ret = io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL);
        }
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY)
            return ret;

        /* Copy the completions out of the CQ first, then handle them: handlers submit. */
        unsigned n = 0;
        while (n < CQE_BATCH) {
            struct io_uring_cqe *batch[CQE_BATCH];
            unsigned got = io_uring_peek_batch_cqe(&e->ring, batch, CQE_BATCH - n);
            if (got == 0)
                break;
            for (unsigned i = 0; i < got; i++)
                e->cqes[n + i] =
                    (struct cqe_copy){batch[i]->user_data, batch[i]->res, batch[i]->flags};
            io_uring_cq_advance(&e->ring, got);
            n += got;
        }
        e->now_ns = engine_clock_ns();
        stat_add(&e->stats.cqes, n);
        stat_add(&e->stats.loops, 1);
        for (unsigned i = 0; i < n; i++)
            dispatch(e, &e->cqes[i]);

        turn_end(e);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

static int ring_setup(struct engine *e, char *err, size_t err_cap)
{
    static const unsigned attempts[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
        struct io_uring_params p = {0};
        p.flags = attempts[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        p.cq_entries = e->cfg.sq_entries * 4;
        ret = io_uring_queue_init_params(e->cfg.sq_entries, &e->ring, &p);
        if (ret == 0) {
            if (shard_has_min_timeout(&e->ring) && (p.features & IORING_FEAT_EXT_ARG))
                e->min_wait_us = e->cfg.wait_batch_us;
            return 0;
        }
        if (ret != -EINVAL)
            break;
    }
    snprintf(err, err_cap, "io_uring_queue_init: %s", strerror(-ret));
    return ret;
}

static int listener_open(struct engine *e, char *err, size_t err_cap)
{
    const struct engine_config *cfg = &e->cfg;
    int fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&cfg->addr, cfg->addr_len) < 0)
        goto fail;
    if (listen(fd, cfg->backlog > 0 ? cfg->backlog : 4096) < 0)
        goto fail;
    e->listen_fd = fd;
    return 0;
fail:;
    int saved = errno;
    snprintf(err, err_cap, "listener of shard %u: %s", cfg->shard, strerror(saved));
    if (fd >= 0)
        close(fd);
    return -saved;
}

static void *map_bytes(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* One class's mapping (address space only: pages come as buffers are written), free stack
 * and states: as many buffers as the budget or the table can use at once. */
static int reasm_class_setup(struct engine *e, struct reasm_class *k)
{
    uint32_t page = e->page_bytes, stride = k->bytes;
    if (stride >= page) {
        stride = (stride + page - 1) / page * page;
    } else {
        stride = 1;
        while (stride < k->bytes)
            stride *= 2;
    }
    k->stride = stride;
    k->unit_slots = stride >= page ? 1 : page / stride;
    uint64_t slots = e->cfg.reasm_bytes_max / k->bytes;
    if (slots > e->cfg.conns_max)
        slots = e->cfg.conns_max;
    k->slots_len = (uint32_t)((slots + k->unit_slots - 1) / k->unit_slots * k->unit_slots);
    k->mem_bytes = (size_t)k->slots_len * k->stride;
    k->mem = map_bytes(k->mem_bytes);
    k->free = calloc(k->slots_len, sizeof *k->free);
    k->state = calloc(k->slots_len, sizeof *k->state); /* RS_CLEAN */
    if (!k->mem || !k->free || !k->state)
        return -ENOMEM;
    /* Pushed in reverse so that buffer 0 is handed out first. */
    for (uint32_t i = 0; i < k->slots_len; i++)
        k->free[i] = k->slots_len - 1 - i;
    k->free_len = k->slots_len;
    return 0;
}

/* The classes: 2 KiB doubling below reasm_cap, then reasm_cap itself. */
static int reasm_setup(struct engine *e, char *err, size_t err_cap)
{
    const struct engine_config *cfg = &e->cfg;
    uint64_t cap = (uint64_t)cfg->frame_bytes_max + 2 * (uint64_t)cfg->buf_bytes;
    if (cap > UINT32_MAX / 2 || cfg->reasm_bytes_max < cap) {
        snprintf(err, err_cap,
                 "reasm_bytes_max %llu is below frame_bytes_max + 2 x buf_bytes = %llu, what one "
                 "connection may keep (a largest frame and what arrives while it is paused)",
                 (unsigned long long)cfg->reasm_bytes_max, (unsigned long long)cap);
        return -EINVAL;
    }
    long page = sysconf(_SC_PAGESIZE);
    e->page_bytes = page > 0 ? (uint32_t)page : 4096;
    e->reasm_cap = (uint32_t)cap;
    e->reasm_dirty_max = cfg->reasm_bytes_max / REASM_DIRTY_SHARE;
    unsigned n = 0;
    for (uint32_t b = REASM_CLASS_MIN_BYTES; b < e->reasm_cap; b *= 2)
        e->reasm_classes[n++].bytes = b;
    e->reasm_classes[n++].bytes = e->reasm_cap;
    assert(n <= REASM_CLASSES_MAX);
    e->reasm_classes_len = n;
    for (unsigned ci = 0; ci < n; ci++) {
        if (reasm_class_setup(e, &e->reasm_classes[ci]) != 0) {
            snprintf(err, err_cap, "reassembly pool (class of %u bytes, %llu bytes in all): %s",
                     e->reasm_classes[ci].bytes, (unsigned long long)cfg->reasm_bytes_max,
                     strerror(ENOMEM));
            return -ENOMEM;
        }
    }
    return 0;
}

static void reasm_unmap(struct engine *e)
{
    for (unsigned ci = 0; ci < e->reasm_classes_len; ci++) {
        struct reasm_class *k = &e->reasm_classes[ci];
        if (k->mem)
            munmap(k->mem, k->mem_bytes);
        free(k->free);
        free(k->state);
    }
}

size_t engine_reasm_resident_bytes(const struct engine *e)
{
    size_t resident = 0;
    unsigned char vec[1024];
    for (unsigned ci = 0; ci < e->reasm_classes_len; ci++) {
        const struct reasm_class *k = &e->reasm_classes[ci];
        size_t pages = (k->mem_bytes + e->page_bytes - 1) / e->page_bytes;
        for (size_t at = 0; at < pages; at += sizeof vec) {
            size_t n = pages - at < sizeof vec ? pages - at : sizeof vec;
            if (mincore(k->mem + at * e->page_bytes, n * e->page_bytes, vec) != 0)
                continue;
            for (size_t i = 0; i < n; i++)
                resident += (vec[i] & 1) ? e->page_bytes : 0;
        }
    }
    return resident;
}

static int buffers_setup(struct engine *e, char *err, size_t err_cap)
{
    const struct engine_config *cfg = &e->cfg;
    e->br_bytes = (size_t)cfg->bufs * sizeof(struct io_uring_buf);
    e->br = map_bytes(e->br_bytes);
    e->bufs_bytes = (size_t)cfg->bufs * cfg->buf_bytes;
    /* The receive buffers are the shard's fixed memory, all of it in use under load: faulted in
     * now, so that no receive takes a page fault and the RSS does not creep up with the first
     * connections (what a connection costs is then what bench/connections measures). */
    e->bufs = mmap(NULL, e->bufs_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (e->bufs == MAP_FAILED)
        e->bufs = NULL;
    if (!e->br || !e->bufs) {
        snprintf(err, err_cap, "buffer ring memory (%u x %u bytes): %s", cfg->bufs, cfg->buf_bytes,
                 strerror(errno));
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)e->br, .ring_entries = cfg->bufs, .bgid = BGID};
    int ret = io_uring_register_buf_ring(&e->ring, &reg, 0);
    if (ret < 0) {
        snprintf(err, err_cap, "io_uring_register_buf_ring: %s", strerror(-ret));
        return ret;
    }
    io_uring_buf_ring_init(e->br);
    e->br_mask = (uint32_t)io_uring_buf_ring_mask(cfg->bufs);
    for (uint32_t bid = 0; bid < cfg->bufs; bid++)
        return_buffer(e, bid);
    io_uring_buf_ring_advance(e->br, (int)e->br_pending);
    e->br_pending = 0;
    return reasm_setup(e, err, err_cap);
}

/* The dial slots at the top of the table, and the kernel's allocation range below them. */
static int dial_setup(struct engine *e, char *err, size_t err_cap)
{
    const struct engine_config *cfg = &e->cfg;
    uint32_t dial_slots = cfg->dial_slots ? cfg->dial_slots : cfg->listen ? 0 : cfg->conns_max;
    e->dial_base = cfg->conns_max - dial_slots;
    e->dial_free = calloc(dial_slots ? dial_slots : 1, sizeof *e->dial_free);
    if (!e->dial_free) {
        snprintf(err, err_cap, "dial slots: out of memory");
        return -ENOMEM;
    }
    /* Pushed in reverse so that the lowest dial slot is taken first. */
    for (uint32_t i = 0; i < dial_slots; i++)
        e->dial_free[i] = cfg->conns_max - 1 - i;
    e->dial_free_len = dial_slots;
    if (dial_slots == 0)
        return 0;
    /* Accept and MSG_RING handoffs allocate below dial_base only (an empty range: never). */
    int ret = io_uring_register_file_alloc_range(&e->ring, 0, e->dial_base);
    if (ret < 0) {
        snprintf(err, err_cap, "io_uring_register_file_alloc_range(0, %u): %s", e->dial_base,
                 strerror(-ret));
        return ret;
    }
    return 0;
}

/* cfg.identify_reserve, or an eighth of the accept range between 1 and 256: the slack for the
 * accepts that land while evicted slots come free (engine.h). */
static uint32_t identify_reserve(const struct engine_config *cfg, uint32_t range)
{
    if (cfg->identify_reserve)
        return cfg->identify_reserve;
    uint32_t r = range / 8;
    return r < 1 ? 1 : r > 256 ? 256 : r;
}

static int mailboxes_setup(struct engine *e, char *err, size_t err_cap)
{
    uint32_t slots = e->cfg.mailbox_slots ? e->cfg.mailbox_slots : 1024;
    for (unsigned i = 0; i < e->cfg.shards; i++) {
        if (i == e->cfg.shard)
            continue;
        size_t storage = spsc_storage_bytes(slots, ENGINE_MAIL_BYTES);
        size_t bytes = sizeof(struct spsc) + storage;
        /* The queue header wants its own cache lines: 64-byte alignment. */
        void *mem = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!mem) {
            snprintf(err, err_cap, "mailboxes: out of memory");
            return -ENOMEM;
        }
        struct spsc *q = mem;
        int rc = spsc_init(q, slots, ENGINE_MAIL_BYTES, (uint8_t *)mem + sizeof *q, storage);
        if (rc) {
            free(mem);
            snprintf(err, err_cap, "mailbox_slots %u must be a power of two", slots);
            return rc;
        }
        e->inbox[i] = q;
    }
    return 0;
}

static int udp_setup(struct engine *e, char *err, size_t err_cap)
{
    const struct engine_config *cfg = &e->cfg;
    if (!cfg->udp)
        return 0;
    if (!cfg->ops->on_datagram) {
        snprintf(err, err_cap, "UDP asked for without on_datagram");
        return -EINVAL;
    }
    struct dgram_config dc = {
        .addr = cfg->udp_addr,
        .addr_len = cfg->udp_addr_len,
        .bufs = cfg->udp_bufs ? cfg->udp_bufs : 256,
        .bytes_max = cfg->udp_bytes_max ? cfg->udp_bytes_max : 4096,
        .sends = cfg->udp_sends ? cfg->udp_sends : 1024,
        .rcvbuf = cfg->udp_rcvbuf ? (int)cfg->udp_rcvbuf : 4 << 20,
        .bgid = UDP_BGID,
    };
    char why[192];
    int ret = dgram_open(&e->dg, &e->ring, &dc, why, sizeof why);
    if (ret)
        snprintf(err, err_cap, "shard %u: %s", cfg->shard, why);
    return ret;
}

/* The shard's sockets. The UDP socket is bound before the TCP listener listens: a caller that
 * takes an accepting TCP port for "up" (a readiness probe, the tests) must not send a datagram
 * to a port nothing is bound to yet (ICMP port unreachable: the datagram is lost). */
static int sockets_open(struct engine *e, char *err, size_t err_cap)
{
    int ret = udp_setup(e, err, err_cap);
    if (ret == 0 && e->cfg.listen)
        ret = listener_open(e, err, err_cap);
    return ret;
}

static int check_config(const struct engine_config *cfg, char *err, size_t err_cap)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && cfg->conns_max > rl.rlim_cur) {
        snprintf(err, err_cap,
                 "conns_max %u is above RLIMIT_NOFILE %llu: the kernel caps each ring's fixed "
                 "file table at it (raise LimitNOFILE / ulimit -n, or add shards)",
                 cfg->conns_max, (unsigned long long)rl.rlim_cur);
        return -EINVAL;
    }
    if (cfg->bufs == 0 || (cfg->bufs & (cfg->bufs - 1)) || cfg->bufs > 32768) {
        snprintf(err, err_cap, "bufs %u must be a power of two up to 32768", cfg->bufs);
        return -EINVAL;
    }
    if (cfg->dial_slots > cfg->conns_max) {
        snprintf(err, err_cap, "dial_slots %u is above conns_max %u", cfg->dial_slots,
                 cfg->conns_max);
        return -EINVAL;
    }
    if (cfg->buf_bytes < 64 || cfg->frame_bytes_max == 0 || cfg->conns_max == 0 ||
        cfg->sq_entries == 0 || !cfg->ops || cfg->shard >= cfg->shards ||
        cfg->shards > ENGINE_SHARDS_MAX || cfg->identify_timeout_ms > INT32_MAX ||
        cfg->identify_reserve > cfg->conns_max) {
        snprintf(err, err_cap, "engine configuration out of range");
        return -EINVAL;
    }
    return 0;
}

int engine_init(struct engine **out, const struct engine_config *cfg, char *err, size_t err_cap)
{
    int ret = check_config(cfg, err, err_cap);
    if (ret)
        return ret;
    /* 64-byte aligned: the counters (struct engine_stats) sit on their own cache lines. */
    struct engine *e = aligned_alloc(64, (sizeof *e + 63) / 64 * 64);
    if (e)
        memset(e, 0, sizeof *e);
    if (!e) {
        snprintf(err, err_cap, "engine: out of memory");
        return -ENOMEM;
    }
    e->cfg = *cfg;
    e->listen_fd = -1;
    e->ring.ring_fd = -1;

    if (cfg->pin) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cfg->shard, &set);
        ret = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        if (ret) {
            snprintf(err, err_cap, "pinning shard %u to CPU %u: %s", cfg->shard, cfg->shard,
                     strerror(ret));
            ret = -ret;
            goto err;
        }
    }
    /* The connection table: touched pages only as slots are used. */
    e->conns = map_bytes((size_t)cfg->conns_max * sizeof *e->conns);
    if (!e->conns) {
        snprintf(err, err_cap, "connection table (%u slots): %s", cfg->conns_max, strerror(errno));
        ret = -ENOMEM;
        goto err;
    }
    ret = ring_setup(e, err, err_cap);
    if (ret)
        goto err;
    ret = io_uring_register_files_sparse(&e->ring, cfg->conns_max);
    if (ret < 0) {
        snprintf(err, err_cap, "io_uring_register_files_sparse(%u): %s", cfg->conns_max,
                 strerror(-ret));
        goto err;
    }
    ret = dial_setup(e, err, err_cap);
    if (ret)
        goto err;
    e->evict_reserve = identify_reserve(cfg, e->dial_base);
    ret = buffers_setup(e, err, err_cap);
    if (ret)
        goto err;
    ret = mailboxes_setup(e, err, err_cap);
    if (ret)
        goto err;
    ret = sockets_open(e, err, err_cap);
    if (ret)
        goto err;
    *out = e;
    return 0;
err:
    engine_free(e);
    return ret;
}

void engine_free(struct engine *e)
{
    if (!e)
        return;
    if (e->listen_fd >= 0)
        close(e->listen_fd);
    dgram_free(e->dg, &e->ring);
    if (e->ring.ring_fd >= 0)
        io_uring_queue_exit(&e->ring);
    if (e->br)
        munmap(e->br, e->br_bytes);
    if (e->bufs)
        munmap(e->bufs, e->bufs_bytes);
    reasm_unmap(e);
    if (e->conns)
        munmap(e->conns, (size_t)e->cfg.conns_max * sizeof *e->conns);
    free(e->dial_free);
    for (unsigned i = 0; i < ENGINE_SHARDS_MAX; i++)
        free(e->inbox[i]);
    free(e);
}
