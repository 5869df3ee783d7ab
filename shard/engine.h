/* engine.h — one shard's io_uring engine: sockets and bytes, not Teltonika.
 *
 * A shard is one thread with one io_uring. The engine owns, per shard: a SO_REUSEPORT
 * listener with multishot accept into direct descriptors (device sockets live in the ring's
 * fixed file table, not in the process fd table); multishot recv from a provided buffer ring;
 * a connection table indexed by fixed file slot, with a generation per slot; a reassembly
 * pool for frames split across receives (size classes under a byte budget per shard, memory
 * given back to the system when no longer used); sends (one in flight per connection: small ones
 * copied, large ones by reference); outbound connections (engine_connect) into slots of the
 * same table; idle, frame and connect timers; readiness polls for the application's own
 * sockets (PostgreSQL, Redis); socket handoff to another shard with IORING_OP_MSG_RING; and,
 * when asked, a UDP socket of the shard's own (dgram.h): multishot recvmsg from a second
 * provided buffer ring, each datagram offered to on_datagram, replies by sendmsg.
 *
 * The application (the gateway, loadgen) is called through one table of operations, from
 * the shard's thread only, after each batch of completions has been copied out of the CQ.
 * All memory is sized in engine_init() from the configuration; the loop does not allocate.
 *
 * Connections are named by (slot, gen). A slot is reused only after every request on it has
 * completed and its descriptor is closed; its generation changes then, so a stale handle is
 * refused (-ESTALE) instead of touching a newer connection.
 *
 * Identification. An accepted connection is *unidentified* until the application says who the
 * peer is (engine_identified; the gateway: a valid IMEI). One handed in by another shard
 * arrives identified (that shard identified it); dialled ones never are unidentified. The
 * unidentified connections wait on a FIFO in accept order (links in the connection table: no
 * allocation, O(1) in and out), and the engine
 * - closes one still unidentified identify_timeout_ms after its accept, whatever it sent
 *   meanwhile: receiving does not extend it (ENGINE_CLOSE_IDENTIFY_TIMEOUT);
 * - keeps identify_reserve slots of the accept range free while it can: when an accept or a
 *   handoff leaves fewer, it closes the oldest unidentified connection other than the one just
 *   opened (ENGINE_CLOSE_EVICTED). Identified connections are never evicted.
 * Why a reserve: an evicted connection's slot comes free only when its close completes, a loop
 * turn or two later, while the multishot accept goes on taking slots. When the kernel finds no
 * free slot it accepts the connection, closes it at once and ends the multishot accept with
 * -ENFILE (counted in accept_errors); the engine re-arms it, each re-arm taking at most one
 * waiting connection, so a table full of identified devices costs an attacker's connection one
 * accept and a close, and nothing spins. */
#ifndef AVLGATE_SHARD_ENGINE_H
#define AVLGATE_SHARD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

struct engine;

/* A connection's name is (slot, gen): gen has ENGINE_GEN_BITS bits and changes each time the
 * slot is reused. engine_key packs both into one ENGINE_KEY_BITS-bit value (what a handoff, a
 * poll tag or an application's cookie can carry); engine_key_slot/_gen unpack it. The
 * application never does this arithmetic itself. */
enum {
    ENGINE_GEN_BITS = 24,
    ENGINE_KEY_BITS = 56,   /* handoff keys and poll tags: the payload beside the op */
    ENGINE_SHARDS_MAX = 256 /* shards (engines) one process can link with mailboxes */
};
#define ENGINE_GEN_MASK ((UINT32_C(1) << ENGINE_GEN_BITS) - 1)
#define ENGINE_KEY_MAX  ((UINT64_C(1) << ENGINE_KEY_BITS) - 1)
_Static_assert(32 + ENGINE_GEN_BITS <= ENGINE_KEY_BITS, "a key holds a slot and a generation");

static inline uint64_t engine_key(uint32_t slot, uint32_t gen)
{
    return (uint64_t)slot << ENGINE_GEN_BITS | (gen & ENGINE_GEN_MASK);
}

static inline uint32_t engine_key_slot(uint64_t key)
{
    return (uint32_t)(key >> ENGINE_GEN_BITS);
}

static inline uint32_t engine_key_gen(uint64_t key)
{
    return (uint32_t)key & ENGINE_GEN_MASK;
}

/* The generation a slot's next connection will have after one of generation gen. */
static inline uint32_t engine_gen_next(uint32_t gen)
{
    return (gen + 1) & ENGINE_GEN_MASK;
}

/* What on_data tells the engine about the bytes it was given. */
enum engine_verdict {
    ENGINE_CONTINUE, /* consumed what it could; the rest is an incomplete frame (see *need) */
    ENGINE_PAUSE,    /* the application is full: keep the rest, stop reading, wait for resume */
    ENGINE_HOLD,     /* this connection waits for something of its own: keep the rest, deliver
                        nothing until engine_resume_conn (engine_resume leaves it alone) */
    ENGINE_CLOSE,    /* close the connection (the application counted why) */
};

/* Why a connection closed, as on_close reports it. */
enum engine_close_reason {
    ENGINE_CLOSE_APP = 0,        /* the application asked (engine_close or ENGINE_CLOSE) */
    ENGINE_CLOSE_PEER,           /* the peer closed (recv returned 0) */
    ENGINE_CLOSE_ERROR,          /* a socket error (reset, ...) */
    ENGINE_CLOSE_IDLE,           /* nothing received for idle_timeout_ms */
    ENGINE_CLOSE_FRAME_TIMEOUT,  /* an incomplete frame waited longer than frame_timeout_ms */
    ENGINE_CLOSE_FRAME_TOO_BIG,  /* the frame needs more bytes than the reassembly buffer */
    ENGINE_CLOSE_NO_REASM,       /* needed reassembly memory while paused connections' kept
                                    bytes held the whole budget: load shed on purpose */
    ENGINE_CLOSE_REASM_BUDGET,   /* held the oldest partial frame when reassembly memory was
                                    needed and the budget (reasm_bytes_max) was spent */
    ENGINE_CLOSE_SEND_OVERFLOW,  /* more pending output than the connection can hold */
    ENGINE_CLOSE_PAUSE_OVERFLOW, /* kept sending while paused, past what it may keep */
    ENGINE_CLOSE_HANDED_OFF,     /* passed to another shard (not a failure) */
    ENGINE_CLOSE_SHUTDOWN,       /* the engine is stopping */
    /* accepted, and not identified within identify_timeout_ms */
    ENGINE_CLOSE_IDENTIFY_TIMEOUT,
    /* unidentified and the oldest, when an accept left the table (nearly) full */
    ENGINE_CLOSE_EVICTED,
    ENGINE_CLOSE_REASONS,
};
const char *engine_close_reason_name(enum engine_close_reason r);

/* on_open's from_shard for a connection accepted here, and for one engine_connect dialled. */
#define ENGINE_FROM_ACCEPT (-1)
#define ENGINE_FROM_DIAL   (-2)

struct engine_ops {
    /* A connection opened: accepted here (from_shard == ENGINE_FROM_ACCEPT, key 0), handed
     * over by another shard (from_shard >= 0, its key), or dialled by engine_connect and now
     * connected (from_shard == ENGINE_FROM_DIAL, the key given to engine_connect). Receiving
     * starts after this returns. */
    void (*on_open)(void *app, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                    uint64_t handoff_key);
    /* Bytes arrived: p[0 .. len-1] is everything not yet consumed, in order. Returns how many
     * bytes it consumed and sets *verdict; with ENGINE_CONTINUE and bytes left over, *need is
     * the least total of unconsumed bytes that could complete the next frame (the engine
     * reassembles until then). p is valid only during the call. */
    size_t (*on_data)(void *app, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                      size_t len, enum engine_verdict *verdict, uint32_t *need);
    /* The connection is closing; no on_data follows. Called once per connection. */
    void (*on_close)(void *app, struct engine *e, uint32_t slot, uint32_t gen,
                     enum engine_close_reason reason);
    /* A poll registered with engine_poll fired (revents, or -errno). One-shot. */
    void (*on_poll)(void *app, struct engine *e, uint64_t tag, int revents);
    /* A message from shard `from` (ENGINE_MAIL_BYTES bytes, valid during the call), in the
     * order that shard sent it. May be NULL when the application sends no mail. */
    void (*on_mail)(void *app, struct engine *e, unsigned from, const void *msg);
    /* Called after every batch of completions; returns the CLOCK_MONOTONIC ns by which it
     * wants to be called again (0: no wish; the engine wakes at least every 100 ms). */
    uint64_t (*on_tick)(void *app, struct engine *e, uint64_t now_ns);
    /* The bytes of an engine_send_ref are no longer the engine's: status 0 when all of them
     * went to the kernel, -ECANCELED when the connection closed first (for any reason). Called
     * exactly once per engine_send_ref that returned 0 — after on_close when the connection closed,
     * with that connection's (slot, gen), but before the slot is reused. May be NULL when the
     * application never calls engine_send_ref. */
    void (*on_sent)(void *app, struct engine *e, uint32_t slot, uint32_t gen, int status);
    /* An engine_connect failed: -ECONNREFUSED, -ETIMEDOUT (connect_timeout_ms), -ECANCELED
     * (engine_stop), -EADDRNOTAVAIL (no source port left), ... The slot is freed after this
     * returns; on_open and on_close are never called for it. May be NULL when the application
     * never dials. */
    void (*on_connect_failed)(void *app, struct engine *e, uint64_t key, int err);
    /* A datagram arrived on the shard's UDP socket: p[0 .. len-1] (at most udp_bytes_max; when
     * truncated, the datagram was longer and only its start is here), from `from`. Both are
     * valid only during the call (the buffer goes back to the ring after it). May be NULL when
     * the engine has no UDP socket. */
    void (*on_datagram)(void *app, struct engine *e, const uint8_t *p, size_t len, bool truncated,
                        const struct sockaddr *from, socklen_t from_len);
};

struct engine_config {
    unsigned shard;  /* this shard's index */
    unsigned shards; /* shards in the process */
    /* Listen address; with listen == false the engine accepts nothing (loadgen dials only) */
    bool listen;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int backlog;

    uint32_t conns_max; /* fixed file table size: at most RLIMIT_NOFILE */
    /* Slots engine_connect may use: the top dial_slots of the table, which accept and handoff
     * then never take (the kernel allocates theirs below). 0: none when listening, all of
     * conns_max otherwise — such an engine cannot take handed-over connections. */
    uint32_t dial_slots;
    uint32_t connect_timeout_ms; /* a dial not connected by then fails with -ETIMEDOUT; 0: none */
    /* Dialled sockets get SO_LINGER {1, 0}: closing one sends a reset and leaves no TIME_WAIT
     * behind. For a load generator, whose reconnects and next runs come from the same source
     * addresses: TIME_WAIT entries there make the kernel's ephemeral port search long. */
    bool dial_reset_on_close;
    uint32_t bufs;             /* provided receive buffers, a power of two, <= 32768 */
    uint32_t buf_bytes;        /* bytes per receive buffer */
    uint32_t frame_bytes_max;  /* largest frame the application accepts */
    uint32_t idle_timeout_ms;  /* 0: none */
    uint32_t frame_timeout_ms; /* 0: none */
    uint32_t sq_entries;       /* SQ size; the CQ is 4 times larger (multishot floods it) */
    uint32_t mailbox_slots;    /* messages each inbound mailbox holds (power of two; 0: 1024) */
    /* An accepted connection still unidentified this long after its accept is closed (see
     * "Identification" above); 0: none. At most INT32_MAX. */
    uint32_t identify_timeout_ms;
    /* Free slots of the accept range that evicting unidentified connections keeps; 0: an
     * eighth of the range, 1 to 256. */
    uint32_t identify_reserve;
    /* Reassembly memory of the shard, in bytes: the size-class bytes of the buffers that keep
     * partial frames and paused connections' bytes. At least frame_bytes_max + 2 x buf_bytes
     * (what one connection may keep); engine_init refuses less. */
    uint64_t reasm_bytes_max;
    /* Once a completion is there, wait up to this long for more before handling them (kernel
     * 6.12's min_wait; 0 or an older kernel: handle each as soon as it comes). Fewer, fuller
     * loop turns: less CPU per completion under load, at most this much added latency. */
    uint32_t wait_batch_us;
    bool pin; /* pin the calling thread to CPU `shard` */

    /* UDP: a SO_REUSEPORT socket of the shard's bound to udp_addr (udp == false: none). */
    bool udp;
    struct sockaddr_storage udp_addr;
    socklen_t udp_addr_len;
    uint32_t udp_bufs;      /* receive buffers, a power of two (0: 256) */
    uint32_t udp_bytes_max; /* the longest datagram delivered whole (0: 4096; at most 65535) */
    uint32_t udp_sends;     /* replies in flight at most (0: 1024) */
    uint32_t udp_rcvbuf;    /* the socket's receive buffer, bytes (0: 4 MiB) */

    const struct engine_ops *ops;
    void *app;
};

/* Per-shard counters, on their own cache line, written by the shard only. */
struct engine_stats {
    uint64_t accepted, accept_errors, handed_in, handed_out, handoff_errors;
    uint64_t dials, dials_connected, dials_failed, dial_errors; /* dial_errors: refused at once */
    uint64_t closed[ENGINE_CLOSE_REASONS];
    uint64_t recv_bytes, recv_completions, recv_enobufs, sends, send_bytes;
    uint64_t reasm_used_max, pauses, resumes, pause_cancels, holds;
    uint64_t mail_sent, mail_received, mail_full, mail_wakes;
    uint64_t cqes, loops;
    /* Reassembly memory: class bytes held now (gauge) and at most, bytes given back to the
     * system (madvise). reasm_used_max above counts buffers. */
    uint64_t reasm_bytes, reasm_bytes_peak, reasm_released_bytes;
    /* UDP: datagrams received (truncated ones included) and truncated, receive re-arms after
     * the buffers ran out, buffers that could not be read; replies sent, failed, and refused
     * for want of a send slot. */
    uint64_t udp_received, udp_truncated, udp_enobufs, udp_bad_buffers;
    uint64_t udp_sent, udp_send_errors, udp_send_full;
} __attribute__((aligned(64)));

/* Creates the ring (SINGLE_ISSUER | DEFER_TASKRUN, falling back to COOP_TASKRUN, then to
 * none), registers the fixed file table and the buffer ring, and opens the listener. Must be
 * called on the thread that will run the loop. Returns 0 or -errno with a message in err. */
int engine_init(struct engine **out, const struct engine_config *cfg, char *err, size_t err_cap);
/* The ring's descriptor, for other shards' engine_set_peers. */
int engine_ring_fd(const struct engine *e);
/* The ring descriptors of every shard (index = shard), for handoff. Call before engine_run. */
void engine_set_peers(struct engine *e, const int *ring_fds, unsigned shards);

/* Links the mailboxes of all shards (all[i] is shard i's engine, every one initialised): this
 * shard's outbound queue to shard i is shard i's inbound queue from this shard. Call once per
 * engine, before engine_run, after every engine_init. */
void engine_set_mailboxes(struct engine *e, struct engine *const *all, unsigned shards);

/* Sends one message (ENGINE_MAIL_BYTES bytes) to shard `to`: pushed onto the SPSC queue this
 * shard owns the producer side of, and the target is woken with IORING_OP_MSG_RING once per
 * loop turn, however many messages went its way. Call from this shard's thread. Returns 0,
 * -ENOBUFS (the queue is full: the caller keeps the message and tries again later; nothing
 * blocks) or -EINVAL. */
#define ENGINE_MAIL_BYTES 64
int engine_mail(struct engine *e, unsigned to, const void *msg);

/* Runs the loop until engine_stop (from any thread) and until every connection is closed.
 * Returns 0 or -errno on a fatal ring error. */
int engine_run(struct engine *e);
/* Asks the loop to stop: it closes the listener and every connection (ENGINE_CLOSE_SHUTDOWN),
 * cancels the dials in progress (on_connect_failed with -ECANCELED) and returns. Safe from any
 * thread and from signal-free contexts; takes effect within 100 ms. */
void engine_stop(struct engine *e);
/* Stops accepting: cancels the accept and closes the listener; open connections stay.
 * Call from the shard's thread (the first step of a graceful drain). */
void engine_stop_accepting(struct engine *e);
/* Sends submitted and not yet completed, over all connections. */
uint32_t engine_sends_in_flight(const struct engine *e);
/* Frees everything; the loop must have returned. */
void engine_free(struct engine *e);

/* Queues len (<= ENGINE_SEND_BYTES_MAX) bytes for the connection; they are sent in order
 * after any earlier ones. Returns 0, -ESTALE (not this connection any more), or -ENOBUFS
 * (its output is full: the connection is closed with ENGINE_CLOSE_SEND_OVERFLOW). */
#define ENGINE_SEND_BYTES_MAX 32
int engine_send(struct engine *e, uint32_t slot, uint32_t gen, const void *p, size_t len);
/* Sends len bytes that the caller keeps unchanged until on_sent: for frames larger than
 * ENGINE_SEND_BYTES_MAX (loadgen's AVL packets), without a copy. They go after the bytes
 * queued before this call and before those queued after it; partial sends are continued.
 * At most one such reference per connection at a time. Returns 0 (on_sent follows, exactly
 * once), -ESTALE (not this connection any more), -EBUSY (a reference is still pending) or
 * -EINVAL (len 0 or above UINT32_MAX). */
int engine_send_ref(struct engine *e, uint32_t slot, uint32_t gen, const void *p, size_t len);

/* Dials dst (AF_INET or AF_INET6) from src (NULL: the kernel picks; else an address with
 * port 0, bound with IP_BIND_ADDRESS_NO_PORT so the port is picked per destination at
 * connect). The socket (non-blocking, TCP_NODELAY) is installed into a free dial slot of the
 * fixed file table and its ordinary descriptor closed at once, so connections do not count
 * against RLIMIT_NOFILE; then IORING_OP_CONNECT runs on the fixed file. On success on_open
 * follows (from_shard ENGINE_FROM_DIAL, this key); on failure on_connect_failed(key, -errno).
 * The addresses are copied. Call from the shard's thread. Returns 0, or -errno when nothing
 * was started (-ENFILE: no dial slot free; -ESHUTDOWN: stopping; -EAFNOSUPPORT; socket(),
 * setsockopt() or bind() errors such as -EADDRNOTAVAIL; io_uring_register_files_update). */
int engine_connect(struct engine *e, const struct sockaddr *dst, socklen_t dst_len,
                   const struct sockaddr *src, socklen_t src_len, uint64_t key);

/* Sends len (<= ENGINE_UDP_SEND_BYTES_MAX) bytes from the shard's UDP socket to `to` (copied).
 * Returns 0, -ENOBUFS (every send slot in flight: counted in udp_send_full; nothing sent) or
 * -EINVAL (no UDP socket, or len or to_len too long). A send that fails later is counted in
 * udp_send_errors: a datagram may be lost anyway, and the peer asks again. */
#define ENGINE_UDP_SEND_BYTES_MAX 64
int engine_udp_send(struct engine *e, const struct sockaddr *to, socklen_t to_len, const void *p,
                    size_t len);
/* Stops taking datagrams (the multishot recvmsg is cancelled; what the kernel queues meanwhile
 * waits in the socket's buffer and beyond it is dropped by the kernel), and starts again.
 * Datagrams already completed are still delivered after a pause. */
void engine_udp_pause(struct engine *e);
void engine_udp_resume(struct engine *e);
/* The UDP socket's bound address (its port when udp_addr asked for 0). Returns 0 or -errno. */
int engine_udp_local_addr(const struct engine *e, struct sockaddr_storage *out, socklen_t *len);

/* Closes the connection (on_close follows with ENGINE_CLOSE_APP). -ESTALE if already gone. */
int engine_close(struct engine *e, uint32_t slot, uint32_t gen);
/* Passes the connection to shard `to` with a key of at most ENGINE_KEY_MAX; the other shard's
 * on_open gets it. This shard stops reading it at once; its on_close(ENGINE_CLOSE_HANDED_OFF)
 * follows when the descriptor left. Bytes already received and not consumed are dropped: hand off
 * only between frames. Mail this shard sent to `to` before the call reaches on_mail there before
 * the connection's on_open (what the key cannot carry can go ahead by mail). Returns 0, -ESTALE,
 * or -EINVAL (key above ENGINE_KEY_MAX or bad shard). */
int engine_handoff(struct engine *e, uint32_t slot, uint32_t gen, unsigned to, uint64_t key);
/* The application knows who the peer of this accepted connection is: it leaves the
 * unidentified FIFO (no identify timeout, never evicted). Returns 0 (also when it was already
 * identified) or -ESTALE. */
int engine_identified(struct engine *e, uint32_t slot, uint32_t gen);
/* The peer address of an accepted or handed-in connection, read from its socket now into *out
 * (its length in *len): getsockopt(SO_PEERNAME) through IORING_OP_URING_CMD (kernel 6.7), since
 * the socket lives only in the ring's fixed file table; no per-connection copy is kept.
 * Synchronous: submits what is queued and waits for this one completion, which the kernel
 * answers inline, leaving every other completion in the CQ for the loop. Meant for rare events
 * (the gateway: a connection replaced by another of the same IMEI). Call from the shard's
 * thread. Returns 0, -ESTALE, -EINVAL (a dialled connection), or the kernel's -errno
 * (-EOPNOTSUPP before 6.7). */
int engine_peer_addr(struct engine *e, uint32_t slot, uint32_t gen, struct sockaddr_storage *out,
                     socklen_t *len);
/* Resumes every connection paused by ENGINE_PAUSE: their kept bytes are offered to on_data
 * again (in pause order) until the application pauses again. */
void engine_resume(struct engine *e);
/* Resumes one connection held by ENGINE_HOLD: its kept bytes are offered to on_data again.
 * Returns 0, -ESTALE (gone), or -EINVAL (not held). */
int engine_resume_conn(struct engine *e, uint32_t slot, uint32_t gen);

/* One-shot readiness poll of an ordinary descriptor (not a device socket); on_poll gets tag.
 * Returns 0 or -EBUSY when no SQE is free (the caller retries on the next tick). */
int engine_poll(struct engine *e, int fd, short events, uint64_t tag);

/* Cancels the poll registered with tag, if it is still armed (its on_poll then reports
 * -ECANCELED). Returns 0 or -EBUSY when no SQE is free. */
int engine_poll_cancel(struct engine *e, uint64_t tag);

/* The shard's index, the time the current batch of completions was reaped (CLOCK_MONOTONIC
 * ns), and its counters. */
unsigned engine_shard(const struct engine *e);
uint64_t engine_now_ns(const struct engine *e);
const struct engine_stats *engine_stats(const struct engine *e);
/* Connections open now. */
uint32_t engine_conns_open(const struct engine *e);
/* Dials started and not yet open or freed (connecting, or failed and closing). */
uint32_t engine_conns_dialing(const struct engine *e);
/* Accepted connections open and not identified yet. */
uint32_t engine_conns_unidentified(const struct engine *e);
/* Bytes of the reassembly pool's memory resident now (mincore over its mappings), free buffers
 * whose pages were not given back yet included: what the pool costs in RSS. Any thread; walks
 * the pool's pages, for tests and diagnostics. */
size_t engine_reasm_resident_bytes(const struct engine *e);

/* CLOCK_MONOTONIC in ns. */
uint64_t engine_clock_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_SHARD_ENGINE_H */
