/* test_engine.c — the io_uring engine over real loopback sockets, with a toy protocol.
 *
 * Frames are one length byte L then L bytes. The application answers only an empty frame
 * (L = 0, a "ping") with one zero byte, so a client knows everything it sent before the ping
 * was consumed; payload order is checked with a running hash. Blocking client sockets in the test
 * thread talk to engines running on their own threads. Covers: whole, fragmented (one byte at a
 * time) and coalesced frames; pause/resume backpressure without loss or reordering; idle and frame
 * timeouts; a frame larger than the reassembly buffer; handoff of a connection between two shards
 * with IORING_OP_MSG_RING; many connections; stop. Dialling (engine_connect): an engine that only
 * dials talks to a listening one (bytes both ways, a large frame sent by reference between
 * small copied ones, in order); refused and timed-out dials report and free their slots; many
 * dials; one engine that listens and dials its own listener (the slot ranges stay apart).
 * Identification: an unidentified connection is closed at identify_timeout_ms whatever it sends;
 * near a full table the oldest unidentified one is evicted, never an identified one; a table
 * full of identified connections refuses a newcomer and goes on accepting once a slot is free;
 * handed-in connections arrive identified; the peer address read from a direct descriptor. The
 * reassembly pool, with frames of a 4-byte length (big_ops): size classes that follow the bytes
 * kept (a frame within one receive costs none), the budget closing the oldest partial frame,
 * paused bytes counted and never taken, memory given back to the system (mincore), and the
 * start check of the budget. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shard/engine.h"
#include "shard/stat.h"
#include "tests/support/testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

/* cmocka's assertions longjmp and must stay on the test thread; engine-thread checks abort. */
#define ECHECK(c)                                                                                  \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "engine-thread check failed: %s (%s:%d)\n", #c, __FILE__, __LINE__);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct app {
    unsigned shard;
    atomic_uint frames;         /* frames consumed */
    atomic_uint opens, closes;  /* connections */
    atomic_uint handed_in;      /* on_open with from_shard >= 0 */
    atomic_uint last_reason;    /* last close reason */
    atomic_uint_fast64_t bytes; /* payload bytes consumed */
    uint32_t checksum;          /* running hash of consumed payload, order-sensitive */
    atomic_uint checksum_pub;
    /* Backpressure: consume at most `budget` frames, then pause until the test refills. */
    atomic_int budget;         /* < 0: unlimited */
    atomic_bool resume_wanted; /* the test asks the engine thread to resume */
    /* Mailboxes: messages still to send to shard mail_to, and what arrived here. */
    atomic_uint mail_to_send;
    unsigned mail_to;
    uint64_t mail_next_seq; /* sender side */
    uint64_t mail_expect;   /* receiver side: next sequence number */
    atomic_uint mail_got;   /* messages received in order */
    atomic_uint mail_misorder;
    /* Handoff: on the first frame of an accepted connection, hand it to this shard. */
    int handoff_to; /* -1: never */
    struct engine *e;
    /* Hold: the first frame of length byte 0xDD is held (ENGINE_HOLD) until the test asks for
     * its release; engine-thread fields except the atomics. */
    atomic_bool hold_release;
    atomic_uint holds;
    bool held, hold_done;
    uint32_t held_slot, held_gen;
    /* Identification: a frame {1, 'I'} identifies its connection (engine_identified); a frame
     * {1, 'P'} is answered with the peer address (engine_peer_addr): 0, IPv4 address, port. */
    bool identify_frames;
};

/* The frames `identify_frames` gives a meaning: f is a whole frame. */
static void on_identify_frame(struct app *a, struct engine *e, uint32_t slot, uint32_t gen,
                              const uint8_t *f, size_t frame)
{
    if (!a->identify_frames || frame != 2)
        return;
    if (f[1] == 'I')
        ECHECK(engine_identified(e, slot, gen) == 0);
    if (f[1] == 'P') {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        ECHECK(engine_peer_addr(e, slot, gen, &ss, &len) == 0);
        ECHECK(len == sizeof(struct sockaddr_in) && ss.ss_family == AF_INET);
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        uint8_t answer[7] = {0};
        memcpy(answer + 1, &sin->sin_addr, 4);
        memcpy(answer + 5, &sin->sin_port, 2);
        ECHECK(engine_send(e, slot, gen, answer, sizeof answer) == 0);
    }
}

/* The application takes one whole frame whose payload is p[0 .. len-1] (answering it when it is
 * a ping); false when its budget is spent: the caller pauses. */
static bool app_take(struct app *a, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                     size_t len, bool is_ping)
{
    int budget = atomic_load(&a->budget);
    if (budget == 0)
        return false;
    if (budget > 0)
        atomic_fetch_sub(&a->budget, 1);
    for (size_t i = 0; i < len; i++)
        a->checksum = a->checksum * 31 + p[i];
    atomic_store(&a->checksum_pub, a->checksum);
    if (is_ping) {
        uint8_t pong = 0;
        ECHECK(engine_send(e, slot, gen, &pong, 1) == 0);
    }
    atomic_fetch_add(&a->frames, 1);
    atomic_fetch_add(&a->bytes, len);
    return true;
}

static size_t on_data(void *user, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                      size_t len, enum engine_verdict *verdict, uint32_t *need)
{
    struct app *a = user;
    size_t used = 0;
    *verdict = ENGINE_CONTINUE;
    while (used < len) {
        if (p[used] == 0xEE) { /* a poison length byte: close at once */
            *verdict = ENGINE_CLOSE;
            return used;
        }
        size_t frame = 1 + (size_t)p[used];
        if (len - used < frame) {
            *need = (uint32_t)frame;
            return used;
        }
        if (p[used] == 0xDD && !a->hold_done) {
            if (!a->held) {
                a->held = true;
                a->held_slot = slot;
                a->held_gen = gen;
                atomic_fetch_add(&a->holds, 1);
            }
            *verdict = ENGINE_HOLD;
            return used;
        }
        if (!app_take(a, e, slot, gen, p + used + 1, frame - 1, p[used] == 0)) {
            *verdict = ENGINE_PAUSE;
            return used;
        }
        on_identify_frame(a, e, slot, gen, p + used, frame);
        used += frame;
    }
    return used;
}

static void on_open(void *user, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                    uint64_t key)
{
    struct app *a = user;
    atomic_fetch_add(&a->opens, 1);
    if (from_shard >= 0) {
        /* The new owner greets, as the gateway answers the handshake after a handoff. */
        ECHECK(key == 0xABCDEF1234ull);
        atomic_fetch_add(&a->handed_in, 1);
        uint8_t hello = 0;
        ECHECK(engine_send(e, slot, gen, &hello, 1) == 0);
    }
}

static void on_close(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                     enum engine_close_reason reason)
{
    struct app *a = user;
    (void)e;
    (void)slot;
    (void)gen;
    atomic_store(&a->last_reason, (unsigned)reason);
    atomic_fetch_add(&a->closes, 1);
}

static void on_poll(void *user, struct engine *e, uint64_t tag, int revents)
{
    (void)user;
    (void)e;
    (void)tag;
    (void)revents;
}

static void on_mail(void *user, struct engine *e, unsigned from, const void *msg)
{
    struct app *a = user;
    (void)e;
    (void)from;
    uint64_t seq;
    memcpy(&seq, msg, sizeof seq);
    if (seq != a->mail_expect)
        atomic_fetch_add(&a->mail_misorder, 1);
    a->mail_expect = seq + 1;
    atomic_fetch_add(&a->mail_got, 1);
}

static uint64_t on_tick(void *user, struct engine *e, uint64_t now_ns)
{
    struct app *a = user;
    (void)now_ns;
    /* Push what fits; a full mailbox leaves the rest for the next turn. */
    while (atomic_load(&a->mail_to_send) > 0) {
        uint8_t msg[ENGINE_MAIL_BYTES] = {0};
        memcpy(msg, &a->mail_next_seq, sizeof a->mail_next_seq);
        int rc = engine_mail(e, a->mail_to, msg);
        if (rc == -ENOBUFS)
            break;
        ECHECK(rc == 0);
        a->mail_next_seq++;
        atomic_fetch_sub(&a->mail_to_send, 1);
    }
    if (atomic_load(&a->mail_to_send) > 0)
        return engine_clock_ns() + 1000000; /* come back soon */
    if (atomic_exchange(&a->resume_wanted, false))
        engine_resume(e);
    if (atomic_exchange(&a->hold_release, false)) {
        a->hold_done = true;
        ECHECK(engine_resume_conn(e, a->held_slot, a->held_gen) == 0);
        ECHECK(engine_resume_conn(e, a->held_slot, a->held_gen) == -EINVAL); /* not held now */
    }
    return 0;
}

static const struct engine_ops test_ops = {.on_open = on_open,
                                           .on_data = on_data,
                                           .on_close = on_close,
                                           .on_poll = on_poll,
                                           .on_mail = on_mail,
                                           .on_tick = on_tick};

/* The big-frame protocol, for the reassembly pool's classes and budget: a 4-byte big-endian
 * length L, then L bytes (L = 0: a ping). Pauses when the budget runs out, as on_data does. */
static size_t on_data_big(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                          const uint8_t *p, size_t len, enum engine_verdict *verdict,
                          uint32_t *need)
{
    struct app *a = user;
    size_t used = 0;
    *verdict = ENGINE_CONTINUE;
    while (used < len) {
        const uint8_t *f = p + used;
        size_t frame =
            len - used < 4
                ? 4
                : 4 + ((size_t)f[0] << 24 | (size_t)f[1] << 16 | (size_t)f[2] << 8 | f[3]);
        if (len - used < frame) {
            *need = (uint32_t)frame;
            return used;
        }
        if (!app_take(a, e, slot, gen, f + 4, frame - 4, frame == 4)) {
            *verdict = ENGINE_PAUSE;
            return used;
        }
        used += frame;
    }
    return used;
}

static const struct engine_ops big_ops = {.on_open = on_open,
                                          .on_data = on_data_big,
                                          .on_close = on_close,
                                          .on_poll = on_poll,
                                          .on_tick = on_tick};

/* A handoff app: on_data hands the connection off instead of consuming its first frame,
 * when this shard is not the "owner" (shard 1). */
static size_t on_data_handoff(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                              const uint8_t *p, size_t len, enum engine_verdict *verdict,
                              uint32_t *need)
{
    struct app *a = user;
    if (a->handoff_to >= 0) {
        /* Hand off only between frames: the first frame is a one-byte "hello" (L = 0). */
        ECHECK(len >= 1 && p[0] == 0);
        ECHECK(engine_handoff(e, slot, gen, (unsigned)a->handoff_to, 0xABCDEF1234ull) == 0);
        *verdict = ENGINE_CONTINUE;
        return len;
    }
    return on_data(user, e, slot, gen, p, len, verdict, need);
}

static const struct engine_ops handoff_ops = {.on_open = on_open,
                                              .on_data = on_data_handoff,
                                              .on_close = on_close,
                                              .on_poll = on_poll,
                                              .on_tick = on_tick};

/* ---------------------------------------------------------------------------------------------
 * A dialling application: it serves the toy protocol on accepted connections (as test_ops) and,
 * on each connection it dialled, sends a small frame (copied), `payload` (by reference) and a
 * ping (copied), then counts the pongs.
 * ------------------------------------------------------------------------------------------- */

enum { DIAL_KEYS_MAX = 1024, ROLE_SERVER = 1, ROLE_DIALLED = 2 };

struct dapp {
    struct app srv;   /* the server side, for accepted connections */
    atomic_uint want; /* dials the test asks for; keys 0 .. want-1 */
    unsigned issued;  /* engine thread */
    struct sockaddr_in dst, src;
    bool bind_src;
    const uint8_t *payload;
    size_t payload_len;
    atomic_uint opened, failed, closed, pongs, sent_ok, sent_cancelled;
    atomic_int last_err;
    atomic_uint dial_slot_min; /* lowest slot a dialled connection got */
    atomic_uint accept_slot_max;
    atomic_uchar key_seen[DIAL_KEYS_MAX]; /* opened + failed per key: must end at 1 each */
    uint8_t role[DIAL_KEYS_MAX * 2];      /* by slot; engine thread */
};

static void dapp_init(struct dapp *d, uint16_t port, const uint8_t *payload, size_t len)
{
    memset(d, 0, sizeof *d);
    atomic_store(&d->srv.budget, -1);
    d->srv.handoff_to = -1;
    d->dst = (struct sockaddr_in){
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    d->payload = payload;
    d->payload_len = len;
    atomic_store(&d->dial_slot_min, UINT32_MAX);
}

static void dapp_on_open(void *user, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                         uint64_t key)
{
    struct dapp *d = user;
    ECHECK(slot < sizeof d->role);
    if (from_shard != ENGINE_FROM_DIAL) {
        ECHECK(from_shard == ENGINE_FROM_ACCEPT && key == 0);
        d->role[slot] = ROLE_SERVER;
        if (slot > atomic_load(&d->accept_slot_max))
            atomic_store(&d->accept_slot_max, slot);
        on_open(&d->srv, e, slot, gen, from_shard, key);
        return;
    }
    ECHECK(key < DIAL_KEYS_MAX);
    atomic_fetch_add(&d->key_seen[key], 1);
    d->role[slot] = ROLE_DIALLED;
    if (slot < atomic_load(&d->dial_slot_min))
        atomic_store(&d->dial_slot_min, slot);
    atomic_fetch_add(&d->opened, 1);
    /* A second reference while one is pending is refused; bytes stay in call order. */
    static const uint8_t small[4] = {3, 's', 'm', 'l'}, ping_frame[1] = {0};
    ECHECK(engine_send(e, slot, gen, small, sizeof small) == 0);
    ECHECK(engine_send_ref(e, slot, gen, d->payload, d->payload_len) == 0);
    ECHECK(engine_send_ref(e, slot, gen, d->payload, d->payload_len) == -EBUSY);
    ECHECK(engine_send(e, slot, gen, ping_frame, sizeof ping_frame) == 0);
}

static size_t dapp_on_data(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                           const uint8_t *p, size_t len, enum engine_verdict *verdict,
                           uint32_t *need)
{
    struct dapp *d = user;
    if (d->role[slot] == ROLE_SERVER)
        return on_data(&d->srv, e, slot, gen, p, len, verdict, need);
    *verdict = ENGINE_CONTINUE;
    for (size_t i = 0; i < len; i++)
        ECHECK(p[i] == 0);
    atomic_fetch_add(&d->pongs, (unsigned)len);
    return len;
}

static void dapp_on_close(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                          enum engine_close_reason reason)
{
    struct dapp *d = user;
    if (d->role[slot] == ROLE_SERVER)
        on_close(&d->srv, e, slot, gen, reason);
    else
        atomic_fetch_add(&d->closed, 1);
    d->role[slot] = 0;
}

static void dapp_on_sent(void *user, struct engine *e, uint32_t slot, uint32_t gen, int status)
{
    struct dapp *d = user;
    (void)e;
    (void)slot;
    (void)gen;
    ECHECK(status == 0 || status == -ECANCELED);
    atomic_fetch_add(status == 0 ? &d->sent_ok : &d->sent_cancelled, 1);
}

static void dapp_on_connect_failed(void *user, struct engine *e, uint64_t key, int err)
{
    struct dapp *d = user;
    (void)e;
    ECHECK(key < DIAL_KEYS_MAX && err < 0);
    atomic_fetch_add(&d->key_seen[key], 1);
    atomic_store(&d->last_err, err);
    atomic_fetch_add(&d->failed, 1);
}

static uint64_t dapp_on_tick(void *user, struct engine *e, uint64_t now_ns)
{
    struct dapp *d = user;
    while (d->issued < atomic_load(&d->want)) {
        int rc = engine_connect(e, (const struct sockaddr *)&d->dst, sizeof d->dst,
                                d->bind_src ? (const struct sockaddr *)&d->src : NULL,
                                sizeof d->src, d->issued);
        if (rc == -ENFILE)
            return now_ns + 1000000; /* every dial slot busy: again in 1 ms */
        ECHECK(rc == 0);
        d->issued++;
    }
    on_tick(&d->srv, e, now_ns);
    return now_ns + 1000000; /* the test may raise `want` at any time */
}

static const struct engine_ops dial_ops = {.on_open = dapp_on_open,
                                           .on_data = dapp_on_data,
                                           .on_close = dapp_on_close,
                                           .on_poll = on_poll,
                                           .on_tick = dapp_on_tick,
                                           .on_sent = dapp_on_sent,
                                           .on_connect_failed = dapp_on_connect_failed};

/* ---------------------------------------------------------------------------------------------
 * Harness
 * ------------------------------------------------------------------------------------------- */

struct shard_thread {
    pthread_t t;
    struct engine *e;
    struct engine_config cfg;
    struct app app;
    pthread_barrier_t *ready, *go;
    char err[256];
    int rc;
};

/* The ring is created on the thread that runs it (SINGLE_ISSUER); the harness waits for
 * every shard's ring, tells each the others' ring descriptors, then lets them run. */
static void *run_engine(void *arg)
{
    struct shard_thread *st = arg;
    st->rc = engine_init(&st->e, &st->cfg, st->err, sizeof st->err);
    pthread_barrier_wait(st->ready);
    pthread_barrier_wait(st->go);
    if (st->rc == 0)
        st->rc = engine_run(st->e);
    return NULL;
}

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static struct engine_config base_config(uint16_t port, unsigned shard, unsigned shards,
                                        const struct engine_ops *ops, void *app)
{
    struct engine_config c = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&c.addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c.addr_len = sizeof *sin;
    c.listen = true;
    c.shard = shard;
    c.shards = shards;
    c.conns_max = 1024;
    c.bufs = 64;
    c.buf_bytes = 512;
    c.reasm_bytes_max = 600 * (256 + 2 * 512);
    c.frame_bytes_max = 256;
    c.sq_entries = 256;
    c.ops = ops;
    c.app = app;
    return c;
}

static void start_shards(struct shard_thread *st, unsigned n, struct engine_config *cfgs)
{
    static pthread_barrier_t ready, go;
    pthread_barrier_init(&ready, NULL, n + 1);
    pthread_barrier_init(&go, NULL, n + 1);
    for (unsigned i = 0; i < n; i++) {
        st[i].cfg = cfgs[i];
        st[i].ready = &ready;
        st[i].go = &go;
        assert_int_equal(pthread_create(&st[i].t, NULL, run_engine, &st[i]), 0);
    }
    pthread_barrier_wait(&ready);
    int fds[8];
    for (unsigned i = 0; i < n; i++) {
        if (st[i].rc)
            fail_msg("engine_init: %s", st[i].err);
        st[i].app.e = st[i].e;
        fds[i] = engine_ring_fd(st[i].e);
    }
    struct engine *all[8];
    for (unsigned i = 0; i < n; i++)
        all[i] = st[i].e;
    for (unsigned i = 0; i < n; i++) {
        engine_set_peers(st[i].e, fds, n);
        engine_set_mailboxes(st[i].e, all, n);
    }
    pthread_barrier_wait(&go);
}

static void stop_shards(struct shard_thread *st, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        engine_stop(st[i].e);
    for (unsigned i = 0; i < n; i++) {
        pthread_join(st[i].t, NULL);
        assert_int_equal(st[i].rc, 0);
        assert_int_equal(engine_conns_open(st[i].e), 0);
        engine_free(st[i].e);
    }
}

static int dial(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static void recv_exact(int fd, uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n <= 0)
            fail_msg("recv: %zd (%s), %zu bytes still expected", n, strerror(errno), len);
        p += n;
        len -= (size_t)n;
    }
}

/* Sends an empty frame and waits for its answer: everything sent before was consumed. */
static void ping(int fd)
{
    uint8_t z = 0, r = 1;
    send_all(fd, &z, 1);
    recv_exact(fd, &r, 1);
    assert_int_equal(r, 0);
}

/* Waits up to timeout_ms for the peer to close; returns true if it did. */
static bool wait_eof(int fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    uint64_t end = engine_clock_ns() + (uint64_t)timeout_ms * 1000000u;
    while (engine_clock_ns() < end) {
        if (poll(&pfd, 1, 50) > 0) {
            uint8_t b[64];
            ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno == ECONNRESET))
                return true;
        }
    }
    return false;
}

static void wait_until(atomic_uint *v, unsigned want, int timeout_ms)
{
    uint64_t end = engine_clock_ns() + (uint64_t)timeout_ms * 1000000u;
    while (atomic_load(v) < want) {
        if (engine_clock_ns() > end)
            fail_msg("timed out waiting for %u (have %u)", want, atomic_load(v));
        usleep(1000);
    }
}

/* A stream of frames with lengths and contents from a seeded generator. */
static size_t make_frames(uint8_t *out, size_t cap, unsigned frames, uint64_t seed,
                          uint8_t *lens_out)
{
    size_t n = 0;
    for (unsigned i = 0; i < frames; i++) {
        uint8_t l = (uint8_t)(1 + tu_rand_u64(&seed) % 200); /* 0 is the ping */
        assert_true(n + 1 + l <= cap);
        out[n++] = l;
        for (unsigned k = 0; k < l; k++)
            out[n++] = (uint8_t)tu_rand_u64(&seed);
        lens_out[i] = l;
    }
    return n;
}

/* The application's running payload hash over `passes` deliveries of the stream. */
static uint32_t checksum_of(const uint8_t *p, size_t len, int passes)
{
    uint32_t h = 0;
    for (int pass = 0; pass < passes; pass++) {
        for (size_t i = 0; i < len;) {
            size_t l = p[i++];
            for (size_t k = 0; k < l; k++)
                h = h * 31 + p[i + k];
            i += l;
        }
    }
    return h;
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------------------------- */

static void test_whole_fragmented_coalesced(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);

    enum { FRAMES = 400 };
    static uint8_t stream[FRAMES * 202 + 1];
    uint8_t lens[FRAMES];
    size_t n = make_frames(stream, sizeof stream, FRAMES, 7, lens);
    int fd = dial(port);
    /* Coalesced: everything at once (frames straddle the 512-byte receive buffers). */
    send_all(fd, stream, n);
    ping(fd);
    assert_int_equal(atomic_load(&st[0].app.frames), FRAMES + 1);
    /* Fragmented: one byte per send. */
    for (size_t i = 0; i < n; i++)
        send_all(fd, stream + i, 1);
    ping(fd);
    assert_int_equal(atomic_load(&st[0].app.frames), 2 * FRAMES + 2);
    /* The payload arrived in order, twice over. */
    assert_int_equal(atomic_load(&st[0].app.checksum_pub), checksum_of(stream, n, 2));
    close(fd);
    wait_until(&st[0].app.closes, 1, 5000);
    assert_int_equal(atomic_load(&st[0].app.last_reason), ENGINE_CLOSE_PEER);
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_true(s->reasm_used_max >= 1);
    stop_shards(st, 1);
}

/* Waits until *v reaches want; fails the test after timeout_ms. */
static void wait_for(atomic_uint *v, unsigned want, int timeout_ms, const char *what)
{
    uint64_t end = engine_clock_ns() + (uint64_t)timeout_ms * 1000000u;
    while (atomic_load(v) < want) {
        if (engine_clock_ns() > end)
            fail_msg("timed out waiting for %u %s (have %u)", want, what, atomic_load(v));
        usleep(1000);
    }
}

/* Pausing costs nothing for a peer that waits, as a tracker waits for its ACK: its recv stays
 * armed and nothing is cancelled. A peer that sends while paused has its bytes kept and its
 * recv cancelled, so that the rest waits in the kernel (TCP backpressure). On resume both get
 * every byte, in order, and stay connected. */
static void test_pause_cancels_only_a_talking_peer(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, 0);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);

    enum { FRAMES_B = 200 };
    static uint8_t frames_a[202], frames_b[FRAMES_B * 202];
    uint8_t lens_a[1], lens_b[FRAMES_B];
    size_t len_a = make_frames(frames_a, sizeof frames_a, 1, 7, lens_a);
    size_t len_b = make_frames(frames_b, sizeof frames_b, FRAMES_B, 8, lens_b);
    int quiet = dial(port), talker = dial(port);

    send_all(quiet, frames_a, len_a);
    size_t first = 1 + (size_t)frames_b[0];
    send_all(talker, frames_b, first);
    usleep(200000); /* both paused on their first frame */
    size_t second = 1 + (size_t)frames_b[first];
    send_all(talker, frames_b + first, second);
    usleep(200000); /* kept, and the talker's recv cancelled */
    send_all(talker, frames_b + first + second, len_b - first - second);
    usleep(200000);
    assert_int_equal(atomic_load(&st[0].app.frames), 0);

    atomic_store(&st[0].app.budget, -1);
    atomic_store(&st[0].app.resume_wanted, true);
    wait_for(&st[0].app.frames, 1 + FRAMES_B, 20000, "frames");
    assert_int_equal(atomic_load(&st[0].app.bytes), (len_a - 1) + (len_b - FRAMES_B));
    assert_int_equal(atomic_load(&st[0].app.closes), 0);
    close(quiet);
    close(talker);
    engine_stop(st[0].e);
    pthread_join(st[0].t, NULL);
    assert_int_equal(st[0].rc, 0);
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_true(s->pauses >= 2);
    assert_int_equal(s->pause_cancels, 1);
    engine_free(st[0].e);
}

/* ENGINE_HOLD: a connection that waits for something of its own keeps its bytes, and neither
 * stops the others nor is woken by engine_resume; engine_resume_conn delivers its bytes, the
 * ones it sent while held too, in order. */
static void test_hold_one_connection(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);

    uint8_t hold[1 + 0xDD], more[1 + 40], other[1 + 30];
    hold[0] = 0xDD;
    more[0] = 40;
    other[0] = 30;
    for (size_t i = 1; i < sizeof hold; i++)
        hold[i] = (uint8_t)i;
    memset(more + 1, 7, sizeof more - 1);
    memset(other + 1, 9, sizeof other - 1);
    int held = dial(port), busy = dial(port);
    send_all(held, hold, sizeof hold);
    usleep(200000);
    assert_int_equal(atomic_load(&st[0].app.holds), 1);
    /* the others go on */
    send_all(busy, other, sizeof other);
    wait_for(&st[0].app.frames, 1, 10000, "frames");
    assert_int_equal(atomic_load(&st[0].app.frames), 1);
    /* a pause and a resume of everyone leave the held one alone */
    atomic_store(&st[0].app.budget, 0);
    send_all(busy, other, sizeof other);
    send_all(held, more, sizeof more); /* sent while held: kept, recv cancelled */
    usleep(200000);
    atomic_store(&st[0].app.budget, -1);
    atomic_store(&st[0].app.resume_wanted, true);
    wait_for(&st[0].app.frames, 2, 10000, "frames");
    usleep(100000);
    assert_int_equal(atomic_load(&st[0].app.frames), 2);
    assert_int_equal(atomic_load(&st[0].app.bytes), 2 * 30);
    /* released: its two frames, in order */
    atomic_store(&st[0].app.hold_release, true);
    wait_for(&st[0].app.frames, 4, 10000, "frames");
    assert_int_equal(atomic_load(&st[0].app.frames), 4);
    assert_int_equal(atomic_load(&st[0].app.bytes), 2 * 30 + 0xDD + 40);
    assert_int_equal(atomic_load(&st[0].app.closes), 0);
    close(held);
    close(busy);
    engine_stop(st[0].e);
    pthread_join(st[0].t, NULL);
    assert_int_equal(st[0].rc, 0);
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_int_equal(s->holds, 1);
    assert_int_equal(s->pause_cancels, 1);
    engine_free(st[0].e);
}

/* A paused connection that closes leaves the paused list: its slot is handed to the next
 * connection at once, which pauses too; a resume then reaches every paused connection (a stale
 * entry used to cut the list, or loop it). */
static void test_paused_close_leaves_the_list(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, 0);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);
    uint8_t frame[1 + 20];
    frame[0] = 20;
    memset(frame + 1, 5, sizeof frame - 1);
    int a = dial(port);
    send_all(a, frame, sizeof frame);
    usleep(100000);
    int b = dial(port);
    send_all(b, frame, sizeof frame);
    usleep(100000);
    close(a); /* paused, then gone: its slot is free */
    usleep(200000);
    int c = dial(port); /* most likely gets a's slot */
    send_all(c, frame, sizeof frame);
    usleep(200000);
    assert_int_equal(atomic_load(&st[0].app.frames), 0);
    atomic_store(&st[0].app.budget, -1);
    atomic_store(&st[0].app.resume_wanted, true);
    wait_for(&st[0].app.frames, 2, 10000, "frames");
    assert_int_equal(atomic_load(&st[0].app.frames), 2);
    assert_int_equal(atomic_load(&st[0].app.closes), 1);
    close(b);
    close(c);
    stop_shards(st, 1);
}

/* Clients behave like trackers: one frame in flight, the next only after the answer. The
 * application pauses whenever its budget runs out; the test refills it slowly, as a database
 * that drains slowly would. Nothing is lost or reordered, and the connections survive. */
static void test_pause_resume_keeps_order(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, 10);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);

    enum { CLIENTS = 8, FRAMES = 60 };
    static uint8_t streams[CLIENTS][FRAMES * 202];
    uint8_t lens[CLIENTS][FRAMES];
    size_t at[CLIENTS] = {0}, sent[CLIENTS] = {0};
    bool waiting[CLIENTS] = {0};
    uint64_t payload = 0;
    int fds[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) {
        size_t n = make_frames(streams[c], sizeof streams[c], FRAMES, 100 + (uint64_t)c, lens[c]);
        payload += n - FRAMES;
        fds[c] = dial(port);
    }
    unsigned done = 0;
    uint64_t end = engine_clock_ns() + 30000000000ull;
    while (done < CLIENTS) {
        if (engine_clock_ns() > end)
            fail_msg("stuck at %u frames (pauses %lu, resumes %lu, budget %d)",
                     atomic_load(&st[0].app.frames), (unsigned long)engine_stats(st[0].e)->pauses,
                     (unsigned long)engine_stats(st[0].e)->resumes, atomic_load(&st[0].app.budget));
        for (int c = 0; c < CLIENTS; c++) {
            if (!waiting[c] && sent[c] < FRAMES) {
                /* One frame and a ping, in one segment. */
                size_t l = 1 + (size_t)streams[c][at[c]];
                uint8_t msg[203];
                memcpy(msg, streams[c] + at[c], l);
                msg[l] = 0;
                send_all(fds[c], msg, l + 1);
                at[c] += l;
                sent[c]++;
                waiting[c] = true;
            }
            uint8_t r;
            if (waiting[c] && recv(fds[c], &r, 1, MSG_DONTWAIT) == 1) {
                assert_int_equal(r, 0);
                waiting[c] = false;
                if (sent[c] == FRAMES)
                    done++;
            }
        }
        if (atomic_load(&st[0].app.budget) == 0) {
            atomic_store(&st[0].app.budget, 5);
            atomic_store(&st[0].app.resume_wanted, true);
        }
        usleep(500);
    }
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_true(s->pauses > 0);
    assert_true(s->resumes > 0);
    assert_int_equal(atomic_load(&st[0].app.frames), 2 * CLIENTS * FRAMES);
    assert_int_equal(atomic_load(&st[0].app.bytes), payload);
    assert_int_equal(engine_conns_open(st[0].e), CLIENTS);
    for (int c = 0; c < CLIENTS; c++)
        close(fds[c]);
    stop_shards(st, 1);
}

static void test_timeouts_and_limits(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    cfg.idle_timeout_ms = 1000;
    cfg.frame_timeout_ms = 1000;
    cfg.frame_bytes_max = 100; /* reassembly holds 100 + 2 x 512 bytes */
    start_shards(st, 1, &cfg);

    /* Idle: never sends. */
    int idle = dial(port);
    /* Incomplete frame: says 50 bytes, sends 3. */
    int partial = dial(port);
    uint8_t head[4] = {50, 1, 2, 3};
    send_all(partial, head, sizeof head);
    assert_true(wait_eof(idle, 4000));
    assert_true(wait_eof(partial, 4000));
    wait_until(&st[0].app.closes, 2, 2000);
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_int_equal(s->closed[ENGINE_CLOSE_IDLE], 1);
    assert_int_equal(s->closed[ENGINE_CLOSE_FRAME_TIMEOUT], 1);
    close(idle);
    close(partial);

    /* The application closes on a poison frame; the ping before it is answered. */
    int fd = dial(port);
    uint8_t poison[4] = {1, 9, 0, 0xEE};
    send_all(fd, poison, sizeof poison);
    uint8_t r = 1;
    recv_exact(fd, &r, 1);
    assert_int_equal(r, 0);
    assert_true(wait_eof(fd, 4000));
    close(fd);
    wait_until(&st[0].app.closes, 3, 2000);
    assert_int_equal(atomic_load(&st[0].app.last_reason), ENGINE_CLOSE_APP);
    stop_shards(st, 1);
}

static void test_handoff_between_shards(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[2] = {0};
    struct engine_config cfgs[2];
    for (unsigned i = 0; i < 2; i++) {
        atomic_store(&st[i].app.budget, -1);
        st[i].app.handoff_to = -1;
        cfgs[i] = base_config(port, i, 2, &handoff_ops, &st[i].app);
    }
    /* Shard 0 hands everything to shard 1; shard 1 serves. Connections accepted by shard 1
     * are served there directly. */
    st[0].app.handoff_to = 1;
    start_shards(st, 2, cfgs);

    enum { CLIENTS = 64 };
    int fds[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) {
        fds[c] = dial(port);
        uint8_t hello = 0;
        send_all(fds[c], &hello, 1);
    }
    /* Every connection ends up on shard 1: frames answered there. */
    for (int c = 0; c < CLIENTS; c++) {
        uint8_t r;
        recv_exact(fds[c], &r, 1); /* the greeting, or the hello's answer: both 0 */
        assert_int_equal(r, 0);
    }
    /* Shard 0 counts its handoff when its own MSG_RING completion is reaped, which may come
     * a moment after shard 1 already served the connection. */
    const struct engine_stats *s0 = engine_stats(st[0].e);
    for (int i = 0; i < 2000 &&
                    *(volatile const uint64_t *)&s0->handed_out < atomic_load(&st[1].app.handed_in);
         i++)
        usleep(1000);
    assert_int_equal(s0->handoff_errors, 0);
    assert_int_equal(s0->handed_out, atomic_load(&st[1].app.handed_in));
    for (int c = 0; c < CLIENTS; c++) {
        uint8_t frame[4] = {3, 'a', 'b', (uint8_t)c};
        send_all(fds[c], frame, sizeof frame);
        ping(fds[c]);
    }
    assert_int_equal(atomic_load(&st[0].app.frames), 0);
    assert_true(atomic_load(&st[1].app.frames) >= 2 * CLIENTS);
    assert_int_equal(atomic_load(&st[1].app.opens), CLIENTS);
    assert_int_equal(atomic_load(&st[0].app.opens) + atomic_load(&st[1].app.opens) -
                         atomic_load(&st[1].app.handed_in),
                     CLIENTS);
    for (int c = 0; c < CLIENTS; c++)
        close(fds[c]);
    stop_shards(st, 2);
}

static void test_many_connections_and_stop(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = base_config(port, 0, 1, &test_ops, &st[0].app);
    start_shards(st, 1, &cfg);
    enum { CLIENTS = 500 };
    static int fds[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) {
        fds[c] = dial(port);
        uint8_t frame[2] = {1, (uint8_t)c};
        send_all(fds[c], frame, 2);
    }
    for (int c = 0; c < CLIENTS; c++)
        ping(fds[c]);
    assert_int_equal(engine_conns_open(st[0].e), CLIENTS);
    /* Stop closes every connection; the clients see EOF. */
    stop_shards(st, 1);
    for (int c = 0; c < CLIENTS; c++) {
        assert_true(wait_eof(fds[c], 2000));
        close(fds[c]);
    }
}

/* Shard 0 sends 200,000 numbered messages to shard 1 through a 256-slot mailbox, so the
 * queue fills and drains many times: all arrive, in order, woken by MSG_RING. */
static void test_mailbox(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[2] = {0};
    struct engine_config cfgs[2];
    for (unsigned i = 0; i < 2; i++) {
        atomic_store(&st[i].app.budget, -1);
        st[i].app.handoff_to = -1;
        cfgs[i] = base_config(port, i, 2, &test_ops, &st[i].app);
        cfgs[i].mailbox_slots = 256;
    }
    enum { MESSAGES = 200000 };
    st[0].app.mail_to = 1;
    atomic_store(&st[0].app.mail_to_send, MESSAGES);
    start_shards(st, 2, cfgs);
    uint64_t end = engine_clock_ns() + 30000000000ull;
    while (atomic_load(&st[1].app.mail_got) < MESSAGES) {
        if (engine_clock_ns() > end)
            fail_msg("only %u of %u messages arrived", atomic_load(&st[1].app.mail_got), MESSAGES);
        usleep(1000);
    }
    assert_int_equal(atomic_load(&st[1].app.mail_misorder), 0);
    assert_int_equal(atomic_load(&st[1].app.mail_got), MESSAGES);
    const struct engine_stats *s0 = engine_stats(st[0].e);
    assert_true(s0->mail_full > 0); /* the 256-slot queue did fill */
    assert_true(s0->mail_wakes > 0);
    stop_shards(st, 2);
}

/* A dialler config: listen == false, so every slot is a dial slot. */
static struct engine_config dial_config(unsigned shard, unsigned shards, uint32_t conns_max,
                                        struct dapp *d)
{
    struct engine_config c = base_config(0, shard, shards, &dial_ops, d);
    c.listen = false;
    c.conns_max = conns_max;
    return c;
}

/* An engine that only dials talks to a listening engine: a small copied frame, a 12 KB stream
 * of frames by reference and a copied ping arrive in that order (the listener's running hash),
 * the pong comes back, on_sent reports the reference once; the dial bound 127.0.0.2. */
static void test_dial_bytes_both_ways(void **state)
{
    (void)state;
    uint16_t port = free_port();
    enum { FRAMES = 60 };
    static uint8_t payload[FRAMES * 202];
    uint8_t lens[FRAMES];
    size_t n = make_frames(payload, sizeof payload, FRAMES, 11, lens);

    struct shard_thread st[2] = {0};
    static struct dapp d;
    dapp_init(&d, port, payload, n);
    d.bind_src = true;
    d.src = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000002)};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfgs[2] = {base_config(port, 0, 2, &test_ops, &st[0].app),
                                    dial_config(1, 2, 64, &d)};
    start_shards(st, 2, cfgs);
    atomic_store(&d.want, 1);
    wait_for(&d.pongs, 1, 5000, "pongs");
    assert_int_equal(atomic_load(&d.opened), 1);
    assert_int_equal(atomic_load(&d.failed), 0);
    wait_for(&d.sent_ok, 1, 5000, "on_sent");
    assert_int_equal(atomic_load(&st[0].app.frames), 1 + FRAMES + 1);
    /* The listener hashed small frame, payload, ping — in that order. */
    static uint8_t whole[4 + sizeof payload + 1];
    const uint8_t small[4] = {3, 's', 'm', 'l'};
    memcpy(whole, small, 4);
    memcpy(whole + 4, payload, n);
    whole[4 + n] = 0;
    assert_int_equal(atomic_load(&st[0].app.checksum_pub), checksum_of(whole, 4 + n + 1, 1));
    const struct engine_stats *s = engine_stats(st[1].e);
    assert_int_equal(s->dials, 1);
    assert_int_equal(s->dials_connected, 1);
    assert_int_equal(engine_conns_open(st[1].e), 1);
    assert_int_equal(engine_conns_dialing(st[1].e), 0);
    /* The dialler stops first: the listener sees its peer close. */
    engine_stop(st[1].e);
    pthread_join(st[1].t, NULL);
    assert_int_equal(st[1].rc, 0);
    assert_int_equal(atomic_load(&d.closed), 1);
    engine_free(st[1].e);
    wait_until(&st[0].app.closes, 1, 5000);
    assert_int_equal(atomic_load(&st[0].app.last_reason), ENGINE_CLOSE_PEER);
    stop_shards(st, 1);
}

/* 100 dials to a closed port through 8 slots: each fails with -ECONNREFUSED exactly once,
 * its slot comes back (or the later dials could not start), and a dial to a live listener
 * then works. */
static void test_dial_refused_frees_slot(void **state)
{
    (void)state;
    uint16_t dead = free_port(), live = free_port();
    static uint8_t payload[8] = {7, 1, 2, 3, 4, 5, 6, 7};
    struct shard_thread st[2] = {0};
    static struct dapp d;
    dapp_init(&d, dead, payload, sizeof payload);
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfgs[2] = {base_config(live, 0, 2, &test_ops, &st[0].app),
                                    dial_config(1, 2, 8, &d)};
    start_shards(st, 2, cfgs);
    enum { DIALS = 100 };
    atomic_store(&d.want, DIALS);
    wait_for(&d.failed, DIALS, 10000, "failed dials");
    assert_int_equal(atomic_load(&d.last_err), -ECONNREFUSED);
    assert_int_equal(atomic_load(&d.opened), 0);
    for (unsigned k = 0; k < DIALS; k++)
        assert_int_equal(atomic_load(&d.key_seen[k]), 1);
    const struct engine_stats *s = engine_stats(st[1].e);
    uint64_t end = engine_clock_ns() + 5000000000ull;
    while (engine_conns_dialing(st[1].e) != 0 && engine_clock_ns() < end)
        usleep(1000);
    assert_int_equal(engine_conns_dialing(st[1].e), 0);
    assert_int_equal(s->dials_failed, DIALS);
    /* The freed slots serve a dial that works (the target changes only between dials). */
    d.dst.sin_port = htons(live);
    atomic_store(&d.want, DIALS + 1);
    wait_for(&d.pongs, 1, 5000, "pongs");
    assert_int_equal(atomic_load(&d.opened), 1);
    stop_shards(st, 2);
    assert_int_equal(atomic_load(&d.sent_ok) + atomic_load(&d.sent_cancelled), 1);
}

/* A listener that accepts one connection and never again (backlog full, never accepted):
 * the dials behind it hang in SYN retries until connect_timeout_ms fails them with
 * -ETIMEDOUT; a hanging dial at stop fails with -ECANCELED and the loop still ends. */
static void test_dial_timeout_and_stop(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    static uint8_t payload[2] = {1, 9};

    struct shard_thread st[1] = {0};
    static struct dapp d;
    dapp_init(&d, ntohs(a.sin_port), payload, sizeof payload);
    struct engine_config cfg = dial_config(0, 1, 16, &d);
    cfg.connect_timeout_ms = 1000;
    start_shards(st, 1, &cfg);
    enum { DIALS = 6 };
    atomic_store(&d.want, DIALS);
    /* The queue of a listen(0) holds one or two connections; the rest time out. */
    wait_for(&d.failed, DIALS - 2, 10000, "timed-out dials");
    assert_int_equal(atomic_load(&d.last_err), -ETIMEDOUT);
    unsigned done = atomic_load(&d.opened) + atomic_load(&d.failed);
    assert_true(done >= DIALS - 2 && done <= DIALS);
    stop_shards(st, 1);
    for (unsigned k = 0; k < DIALS; k++)
        assert_int_equal(atomic_load(&d.key_seen[k]), 1);

    /* No timeout: the dial hangs until engine_stop cancels it. */
    static struct dapp d2;
    dapp_init(&d2, ntohs(a.sin_port), payload, sizeof payload);
    cfg = dial_config(0, 1, 16, &d2);
    start_shards(st, 1, &cfg);
    atomic_store(&d2.want, 4);
    usleep(300000);
    unsigned hanging = 4 - atomic_load(&d2.opened) - atomic_load(&d2.failed);
    assert_true(hanging >= 2);
    assert_int_equal(engine_conns_dialing(st[0].e), hanging);
    stop_shards(st, 1);
    assert_int_equal(atomic_load(&d2.last_err), -ECANCELED);
    for (unsigned k = 0; k < 4; k++)
        assert_int_equal(atomic_load(&d2.key_seen[k]), 1);
    close(lfd);
}

/* 500 dials from two source addresses: every one opens once, sends its frames, gets its
 * pong; stopping the dialler closes them all at the listener. */
static void test_dial_many(void **state)
{
    (void)state;
    uint16_t port = free_port();
    enum { FRAMES = 8, DIALS = 500 };
    static uint8_t payload[FRAMES * 202];
    uint8_t lens[FRAMES];
    size_t n = make_frames(payload, sizeof payload, FRAMES, 12, lens);
    struct shard_thread st[2] = {0};
    static struct dapp d;
    dapp_init(&d, port, payload, n);
    d.bind_src = true;
    d.src = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000003)};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfgs[2] = {base_config(port, 0, 2, &test_ops, &st[0].app),
                                    dial_config(1, 2, 600, &d)};
    start_shards(st, 2, cfgs);
    atomic_store(&d.want, DIALS);
    wait_for(&d.pongs, DIALS, 20000, "pongs");
    assert_int_equal(atomic_load(&d.opened), DIALS);
    assert_int_equal(atomic_load(&d.failed), 0);
    for (unsigned k = 0; k < DIALS; k++)
        assert_int_equal(atomic_load(&d.key_seen[k]), 1);
    assert_int_equal(atomic_load(&st[0].app.frames), DIALS * (FRAMES + 2));
    assert_int_equal(engine_conns_open(st[0].e), DIALS);
    engine_stop(st[1].e);
    pthread_join(st[1].t, NULL);
    assert_int_equal(st[1].rc, 0);
    assert_int_equal(engine_conns_open(st[1].e), 0);
    assert_int_equal(atomic_load(&d.closed), DIALS);
    engine_free(st[1].e);
    wait_until(&st[0].app.closes, DIALS, 10000);
    stop_shards(st, 1);
}

/* One engine listens and dials its own listener: accepted descriptors stay below the dial
 * slots and dialled ones inside them, every dial is served by the same engine. */
static void test_listen_and_dial_one_engine(void **state)
{
    (void)state;
    uint16_t port = free_port();
    static uint8_t payload[3] = {2, 'h', 'i'};
    struct shard_thread st[1] = {0};
    static struct dapp d;
    dapp_init(&d, port, payload, sizeof payload);
    struct engine_config cfg = base_config(port, 0, 1, &dial_ops, &d);
    cfg.conns_max = 512;
    cfg.dial_slots = 200;
    start_shards(st, 1, &cfg);
    enum { DIALS = 150 };
    atomic_store(&d.want, DIALS);
    wait_for(&d.pongs, DIALS, 10000, "pongs");
    assert_int_equal(atomic_load(&d.opened), DIALS);
    assert_int_equal(atomic_load(&d.srv.opens), DIALS);
    assert_int_equal(atomic_load(&d.srv.frames), DIALS * 3);
    assert_true(atomic_load(&d.dial_slot_min) >= 512 - 200);
    assert_true(atomic_load(&d.accept_slot_max) < 512 - 200);
    assert_int_equal(engine_conns_open(st[0].e), 2 * DIALS);
    stop_shards(st, 1);
}

/* ---------------------------------------------------------------------------------------------
 * Identification
 * ------------------------------------------------------------------------------------------- */

/* Identifies the connection ({1, 'I'}) and waits until the engine has taken it. */
static void identify(int fd)
{
    static const uint8_t frame[2] = {1, 'I'};
    send_all(fd, frame, sizeof frame);
    ping(fd);
}

/* Sends a ping; true when it was answered, false when the engine closed the connection. */
static bool alive(int fd)
{
    uint8_t z = 0, r = 1;
    if (send(fd, &z, 1, MSG_NOSIGNAL) != 1)
        return false;
    ssize_t n = recv(fd, &r, 1, 0);
    return n == 1 && r == 0;
}

/* One shard of the toy protocol that gives {1, 'I'} and {1, 'P'} their meaning (adjust the
 * configuration before start_shards). */
static struct engine_config identify_config(struct shard_thread *st, uint16_t port)
{
    atomic_store(&st->app.budget, -1);
    st->app.identify_frames = true;
    return base_config(port, 0, 1, &test_ops, &st->app);
}

static uint64_t ms_since(uint64_t t0_ns)
{
    return (engine_clock_ns() - t0_ns) / 1000000u;
}

/* identify_timeout_ms closes the unidentified connections, the quiet one and the one that keeps
 * sending keep-alives alike, at the deadline; an identified connection stays. */
static void test_identify_timeout(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    struct engine_config cfg = identify_config(&st[0], port);
    cfg.identify_timeout_ms = 1000;
    start_shards(st, 1, &cfg);

    uint64_t t0 = engine_clock_ns();
    int quiet = dial(port), chatty = dial(port), named = dial(port);
    identify(named);
    ping(chatty);
    assert_int_equal(engine_conns_unidentified(st[0].e), 2);
    /* Keep-alives every 100 ms: answered until the deadline, then the connection is closed. */
    unsigned answered = 0;
    while (alive(chatty) && ms_since(t0) < 5000) {
        answered++;
        usleep(100000);
    }
    uint64_t chatty_ms = ms_since(t0);
    assert_true(wait_eof(quiet, 3000));
    uint64_t quiet_ms = ms_since(t0);
    assert_true(answered >= 5);
    assert_true(chatty_ms >= 900 && chatty_ms < 3000);
    assert_true(quiet_ms >= 900 && quiet_ms < 3500);
    assert_true(alive(named));
    usleep(1200000); /* past a second deadline: the identified connection never had one */
    assert_true(alive(named));
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_int_equal(s->closed[ENGINE_CLOSE_IDENTIFY_TIMEOUT], 2);
    assert_int_equal(engine_conns_unidentified(st[0].e), 0);
    close(quiet);
    close(chatty);
    close(named);
    stop_shards(st, 1);
}

/* With 2 slots of 16 kept free, each newcomer past 14 evicts the oldest unidentified
 * connection, in accept order, and never an identified one. */
static void test_evict_oldest_unidentified(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    struct engine_config cfg = identify_config(&st[0], port);
    cfg.conns_max = 16;
    cfg.identify_reserve = 2;
    start_shards(st, 1, &cfg);

    enum { FIRST = 14 };
    int fds[FIRST];
    for (int i = 0; i < FIRST; i++) {
        fds[i] = dial(port);
        ping(fds[i]); /* accepted before the next: the FIFO is in this order */
    }
    identify(fds[0]);
    identify(fds[1]);
    const struct engine_stats *s = engine_stats(st[0].e);
    assert_int_equal(s->closed[ENGINE_CLOSE_EVICTED], 0);
    int n1 = dial(port);
    ping(n1);
    assert_true(wait_eof(fds[2], 2000)); /* the oldest unidentified */
    int n2 = dial(port);
    ping(n2);
    assert_true(wait_eof(fds[3], 2000)); /* then the next */
    assert_int_equal(s->closed[ENGINE_CLOSE_EVICTED], 2);
    assert_true(alive(fds[0]) && alive(fds[1]) && alive(fds[4]) && alive(fds[FIRST - 1]));
    assert_true(alive(n1) && alive(n2));
    assert_int_equal(engine_conns_unidentified(st[0].e), FIRST - 2 - 2 + 2);
    for (int i = 0; i < FIRST; i++)
        close(fds[i]);
    close(n1);
    close(n2);
    stop_shards(st, 1);
}

/* A table full of identified connections: a newcomer is accepted and closed by the kernel
 * (-ENFILE), nothing is evicted, the accept is re-armed without spinning, and a slot freed
 * later takes the next newcomer. */
static void test_full_table_of_identified(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    struct engine_config cfg = identify_config(&st[0], port);
    cfg.conns_max = 8;
    start_shards(st, 1, &cfg);

    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = dial(port);
        identify(fds[i]);
    }
    const struct engine_stats *s = engine_stats(st[0].e);
    int attacker = dial(port);
    assert_true(wait_eof(attacker, 2000));
    close(attacker);
    /* The kernel closes the newcomer before the shard reaps the accept's -ENFILE: wait for it. */
    for (int i = 0; i < 200 && *(volatile const uint64_t *)&s->accept_errors < 1; i++)
        usleep(10000);
    assert_true(*(volatile const uint64_t *)&s->accept_errors >= 1);
    uint64_t loops = *(volatile const uint64_t *)&s->loops;
    usleep(1000000);
    /* Idle, the loop wakes every 100 ms at most: a re-armed accept that spun would show. */
    assert_true(*(volatile const uint64_t *)&s->loops - loops < 50);
    for (int i = 0; i < 8; i++)
        assert_true(alive(fds[i]));
    assert_int_equal(s->closed[ENGINE_CLOSE_EVICTED], 0);
    close(fds[0]);
    wait_until(&st[0].app.closes, 1, 2000);
    usleep(100000); /* the close_direct completes: the slot is free */
    int next = dial(port);
    ping(next);
    close(next);
    for (int i = 1; i < 8; i++)
        close(fds[i]);
    stop_shards(st, 1);
}

/* Shard 0 hands every connection to shard 1 at its first frame; with identify_timeout_ms on
 * both, the handed-in ones stay on shard 1 past the deadline and those shard 1 accepted itself
 * (never identified) are closed at it. */
static void test_handed_in_arrives_identified(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[2] = {0};
    struct engine_config cfgs[2];
    for (unsigned i = 0; i < 2; i++) {
        atomic_store(&st[i].app.budget, -1);
        st[i].app.handoff_to = -1;
        cfgs[i] = base_config(port, i, 2, &handoff_ops, &st[i].app);
        cfgs[i].identify_timeout_ms = 1000;
    }
    st[0].app.handoff_to = 1;
    start_shards(st, 2, cfgs);

    enum { CLIENTS = 16 };
    int fds[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) {
        fds[c] = dial(port);
        uint8_t hello = 0, r = 1;
        send_all(fds[c], &hello, 1);
        recv_exact(fds[c], &r, 1); /* the greeting of shard 1, or the hello's answer */
        assert_int_equal(r, 0);
    }
    usleep(1600000);
    unsigned alive_n = 0;
    for (int c = 0; c < CLIENTS; c++)
        alive_n += alive(fds[c]);
    unsigned handed_in = atomic_load(&st[1].app.handed_in);
    assert_true(handed_in > 0);
    assert_int_equal(alive_n, handed_in);
    assert_int_equal(engine_stats(st[1].e)->closed[ENGINE_CLOSE_IDENTIFY_TIMEOUT],
                     CLIENTS - handed_in);
    assert_int_equal(engine_stats(st[0].e)->closed[ENGINE_CLOSE_IDENTIFY_TIMEOUT], 0);
    for (int c = 0; c < CLIENTS; c++)
        close(fds[c]);
    stop_shards(st, 2);
}

/* engine_peer_addr reads a direct descriptor's peer: connections from 127.0.0.2 and
 * 127.0.0.1, each with its own source port. */
static void test_peer_address(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    struct engine_config cfg = identify_config(&st[0], port);
    start_shards(st, 1, &cfg);

    static const char *const sources[2] = {"127.0.0.2", "127.0.0.1"};
    for (int i = 0; i < 2; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in src = {.sin_family = AF_INET}, dst = src, local;
        inet_pton(AF_INET, sources[i], &src.sin_addr);
        assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof src), 0);
        dst.sin_port = htons(port);
        dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&dst, sizeof dst), 0);
        socklen_t l = sizeof local;
        assert_int_equal(getsockname(fd, (struct sockaddr *)&local, &l), 0);
        static const uint8_t ask[2] = {1, 'P'};
        send_all(fd, ask, sizeof ask);
        uint8_t answer[7];
        recv_exact(fd, answer, sizeof answer);
        assert_int_equal(answer[0], 0);
        assert_memory_equal(answer + 1, &src.sin_addr, 4);
        assert_memory_equal(answer + 5, &local.sin_port, 2);
        close(fd);
    }
    stop_shards(st, 1);
}

/* ---------------------------------------------------------------------------------------------
 * The reassembly pool: size classes, the budget, memory given back (big_ops' frames)
 * ------------------------------------------------------------------------------------------- */

enum {
    BIG_FRAME_MAX = 65536,
    BIG_BUF = 4096,
    KIB = 1024,
    BIG_KEEP = BIG_FRAME_MAX + 2 * BIG_BUF, /* the top class: 72 KiB */
};

static struct engine_config big_config(uint16_t port, struct app *app, uint64_t budget)
{
    struct engine_config c = base_config(port, 0, 1, &big_ops, app);
    c.buf_bytes = BIG_BUF;
    c.frame_bytes_max = BIG_FRAME_MAX;
    c.reasm_bytes_max = budget;
    return c;
}

/* Bytes i of frames made by big_bytes: a pattern that tells each payload byte from its
 * neighbours, so a copy that loses or reorders bytes shows in the checksum. */
static uint8_t big_byte(size_t i, unsigned seed)
{
    return (uint8_t)(i * 7 + i / 251 + seed * 13);
}

/* A frame of payload L (header included) into out. */
static size_t big_frame(uint8_t *out, uint32_t l, unsigned seed)
{
    out[0] = (uint8_t)(l >> 24);
    out[1] = (uint8_t)(l >> 16);
    out[2] = (uint8_t)(l >> 8);
    out[3] = (uint8_t)l;
    for (size_t i = 0; i < l; i++)
        out[4 + i] = big_byte(i, seed);
    return 4 + (size_t)l;
}

static uint32_t big_checksum(uint32_t h, const uint8_t *frame, size_t len)
{
    for (size_t i = 4; i < len; i++)
        h = h * 31 + frame[i];
    return h;
}

static void big_ping(int fd)
{
    uint8_t z[4] = {0}, r = 1;
    send_all(fd, z, sizeof z);
    recv_exact(fd, &r, 1);
    assert_int_equal(r, 0);
}

/* Waits until the engine holds exactly `bytes` of class memory. */
static void wait_reasm_bytes(struct engine *e, uint64_t bytes, const char *what)
{
    const struct engine_stats *s = engine_stats(e);
    uint64_t end = engine_clock_ns() + 10000000000ull;
    while (stat_read(&s->reasm_bytes) != bytes) {
        if (engine_clock_ns() > end)
            fail_msg("%s: reassembly holds %llu bytes, want %llu", what,
                     (unsigned long long)stat_read(&s->reasm_bytes), (unsigned long long)bytes);
        usleep(1000);
    }
}

/* Waits until the engine counter *c reaches want. */
static void wait_stat(const uint64_t *c, uint64_t want, const char *what)
{
    uint64_t end = engine_clock_ns() + 10000000000ull;
    while (stat_read(c) < want) {
        if (engine_clock_ns() > end)
            fail_msg("%s: %llu, want %llu", what, (unsigned long long)stat_read(c),
                     (unsigned long long)want);
        usleep(1000);
    }
}

/* Waits until the pool's resident memory is at most `bytes`; returns it. */
static size_t wait_resident_at_most(struct engine *e, size_t bytes, int timeout_ms)
{
    uint64_t end = engine_clock_ns() + (uint64_t)timeout_ms * 1000000u;
    size_t now;
    while ((now = engine_reasm_resident_bytes(e)) > bytes) {
        if (engine_clock_ns() > end)
            fail_msg("the reassembly pool keeps %zu bytes resident, want <= %zu", now, bytes);
        usleep(10000);
    }
    return now;
}

/* A frame within one receive is delivered in place (no reassembly memory at all); a partial
 * frame costs the class of the bytes it holds, growing 2 KiB -> 4 KiB -> 64 KiB as they come,
 * the frame arrives whole and in order, and the memory goes back to the system once free. A
 * paused connection's kept bytes move to a smaller class when a delivery leaves few. */
static void test_reasm_classes_follow_bytes(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = big_config(port, &st[0].app, 16u << 20);
    start_shards(st, 1, &cfg);
    struct engine *e = st[0].e;
    const struct engine_stats *s = engine_stats(e);
    static uint8_t small[1004], big[60004];
    size_t small_len = big_frame(small, 1000, 1), big_len = big_frame(big, 60000, 2);

    int fd = dial(port);
    send_all(fd, small, small_len);
    big_ping(fd);
    assert_int_equal(stat_read(&s->reasm_bytes_peak), 0);
    send_all(fd, big, 104);
    wait_reasm_bytes(e, 2 * KIB, "a 104-byte partial frame");
    send_all(fd, big + 104, 3000 - 104);
    wait_reasm_bytes(e, 4 * KIB, "3000 bytes");
    send_all(fd, big + 3000, 40000 - 3000);
    wait_reasm_bytes(e, 64 * KIB, "40000 bytes");
    assert_true(engine_reasm_resident_bytes(e) >= 40000);
    send_all(fd, big + 40000, big_len - 40000);
    big_ping(fd);
    assert_int_equal(stat_read(&s->reasm_bytes), 0);
    assert_int_equal(atomic_load(&st[0].app.frames), 4);
    uint32_t h = big_checksum(big_checksum(0, small, small_len), big, big_len);
    assert_int_equal(atomic_load(&st[0].app.checksum_pub), h);

    /* Paused after a whole 40,000-byte frame with 100 bytes of the next kept: 64 KiB; the
     * delivery on resume leaves the 100 bytes, moved to a 2 KiB buffer. */
    atomic_store(&st[0].app.budget, 0);
    uint8_t *two = malloc(40004 + 60004);
    assert_non_null(two);
    size_t first = big_frame(two, 40000, 3);
    big_frame(two + first, 60000 - 100, 4); /* only its first 104 bytes are sent */
    send_all(fd, two, first + 104);
    wait_reasm_bytes(e, 64 * KIB, "paused with a frame and a bit");
    atomic_store(&st[0].app.budget, 1);
    atomic_store(&st[0].app.resume_wanted, true);
    wait_reasm_bytes(e, 2 * KIB, "after the resume");
    assert_int_equal(atomic_load(&st[0].app.frames), 5);
    assert_int_equal(atomic_load(&st[0].app.checksum_pub), big_checksum(h, two, first));
    free(two);

    /* Freed, the buffers' pages go back within two sweeps (free for a whole one first). */
    close(fd);
    wait_until(&st[0].app.closes, 1, 5000);
    wait_reasm_bytes(e, 0, "closed");
    wait_resident_at_most(e, 0, 5000);
    assert_true(stat_read(&s->reasm_released_bytes) >= 64 * KIB);
    assert_int_equal(stat_read(&s->reasm_bytes_peak), 64 * KIB);
    assert_int_equal(s->closed[ENGINE_CLOSE_REASM_BUDGET], 0);
    stop_shards(st, 1);
}

/* 40,000 bytes of a 60,000-byte frame, at once. */
static int stall(uint16_t port, const uint8_t *big)
{
    int fd = dial(port);
    send_all(fd, big, 40000);
    return fd;
}

/* The budget (four 64 KiB buffers) is spent by four stalled partial frames; a fifth
 * connection's frame closes the connection whose partial frame is the oldest (not the oldest
 * connection), and only it: the others complete their frames. */
static void test_reasm_budget_closes_oldest_partial(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, -1);
    struct engine_config cfg = big_config(port, &st[0].app, 4 * 64 * KIB);
    start_shards(st, 1, &cfg);
    struct engine *e = st[0].e;
    const struct engine_stats *s = engine_stats(e);
    static uint8_t big[60004];
    size_t big_len = big_frame(big, 60000, 5);

    int a = dial(port), b = dial(port);
    send_all(b, big, 40000); /* b's partial frame is the oldest, though a connected first */
    wait_reasm_bytes(e, 64 * KIB, "b");
    send_all(a, big, 40000);
    wait_reasm_bytes(e, 2 * 64 * KIB, "a");
    int c = stall(port, big);
    wait_reasm_bytes(e, 3 * 64 * KIB, "c");
    int d = stall(port, big);
    wait_reasm_bytes(e, 4 * 64 * KIB, "d");
    int late = dial(port);
    send_all(late, big, 104);
    assert_true(wait_eof(b, 5000));
    wait_reasm_bytes(e, 3 * 64 * KIB + 2 * KIB, "b closed for the newcomer");
    assert_int_equal(stat_read(&s->closed[ENGINE_CLOSE_REASM_BUDGET]), 1);
    assert_int_equal(atomic_load(&st[0].app.last_reason), ENGINE_CLOSE_REASM_BUDGET);

    int rest[4] = {a, c, d, late};
    for (int i = 0; i < 4; i++) {
        size_t at = rest[i] == late ? 104 : 40000;
        send_all(rest[i], big + at, big_len - at);
        big_ping(rest[i]);
    }
    assert_int_equal(atomic_load(&st[0].app.frames), 8);
    assert_int_equal(atomic_load(&st[0].app.bytes), 4 * 60000);
    assert_int_equal(stat_read(&s->reasm_bytes), 0);
    assert_int_equal(stat_read(&s->closed[ENGINE_CLOSE_REASM_BUDGET]), 1);
    assert_int_equal(stat_read(&s->closed[ENGINE_CLOSE_NO_REASM]), 0);
    assert_true(stat_read(&s->reasm_bytes_peak) <= 4 * 64 * KIB);
    for (int i = 0; i < 4; i++)
        close(rest[i]);
    close(b);
    stop_shards(st, 1);
}

/* Paused connections' kept bytes count in the budget and are never taken: a paused frame's
 * growth closes an older partial frame; a newcomer that needs memory while only paused bytes
 * hold the budget is closed (no_reassembly_buffer); on resume the paused frames arrive whole.
 * Their memory goes back to the system when they close. */
static void test_reasm_paused_bytes_kept(void **state)
{
    (void)state;
    uint16_t port = free_port();
    struct shard_thread st[1] = {0};
    atomic_store(&st[0].app.budget, 0); /* every whole frame pauses */
    struct engine_config cfg = big_config(port, &st[0].app, 2 * 64 * KIB + KIB);
    start_shards(st, 1, &cfg);
    struct engine *e = st[0].e;
    const struct engine_stats *s = engine_stats(e);
    static uint8_t f1[40004], f2[40004], partial[60004], tiny[104];
    big_frame(f1, 40000, 6);
    big_frame(f2, 40000, 7);
    big_frame(partial, 60000, 8);
    big_frame(tiny, 100, 9);

    int p1 = dial(port);
    send_all(p1, f1, sizeof f1);
    wait_stat(&s->pauses, 1, "p1 paused");
    wait_reasm_bytes(e, 64 * KIB, "p1 paused");
    int q = dial(port);
    send_all(q, partial, 30000);
    wait_reasm_bytes(e, 64 * KIB + 32 * KIB, "q's partial frame");
    int p2 = dial(port);
    send_all(p2, f2, sizeof f2); /* grows past 32 KiB: q's older partial frame goes */
    assert_true(wait_eof(q, 5000));
    wait_stat(&s->pauses, 2, "p2 paused");
    wait_reasm_bytes(e, 2 * 64 * KIB, "p2 paused");
    assert_int_equal(stat_read(&s->closed[ENGINE_CLOSE_REASM_BUDGET]), 1);
    int r = dial(port);
    send_all(r, tiny, sizeof tiny); /* nothing but paused bytes to take from */
    assert_true(wait_eof(r, 5000));
    wait_until(&st[0].app.closes, 2, 5000);
    assert_int_equal(stat_read(&s->closed[ENGINE_CLOSE_NO_REASM]), 1);
    assert_int_equal(atomic_load(&st[0].app.frames), 0);
    size_t resident = engine_reasm_resident_bytes(e);
    assert_true(resident >= 2 * 40004);

    atomic_store(&st[0].app.budget, -1);
    atomic_store(&st[0].app.resume_wanted, true);
    wait_for(&st[0].app.frames, 2, 10000, "paused frames");
    assert_int_equal(atomic_load(&st[0].app.checksum_pub),
                     big_checksum(big_checksum(0, f1, sizeof f1), f2, sizeof f2));
    big_ping(p1);
    big_ping(p2);
    assert_int_equal(atomic_load(&st[0].app.closes), 2);
    wait_reasm_bytes(e, 0, "delivered");
    close(p1);
    close(p2);
    close(q);
    close(r);
    wait_resident_at_most(e, 0, 5000);
    printf("# resident while paused: %zu bytes; released in all: %llu bytes\n", resident,
           (unsigned long long)stat_read(&s->reasm_released_bytes));
    stop_shards(st, 1);
}

/* A budget below what one connection may keep is refused at start, saying so. */
static void test_reasm_budget_too_small(void **state)
{
    (void)state;
    struct app app = {0};
    struct engine_config cfg = big_config(free_port(), &app, BIG_KEEP - 1);
    cfg.listen = false;
    struct engine *e = NULL;
    char err[256] = "";
    assert_int_equal(engine_init(&e, &cfg, err, sizeof err), -EINVAL);
    assert_null(e);
    assert_non_null(strstr(err, "reasm_bytes_max 73727 is below frame_bytes_max + 2 x buf_bytes"));
    cfg.reasm_bytes_max = BIG_KEEP;
    assert_int_equal(engine_init(&e, &cfg, err, sizeof err), 0);
    engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_fragmented_coalesced),
        cmocka_unit_test(test_pause_resume_keeps_order),
        cmocka_unit_test(test_pause_cancels_only_a_talking_peer),
        cmocka_unit_test(test_hold_one_connection),
        cmocka_unit_test(test_paused_close_leaves_the_list),
        cmocka_unit_test(test_timeouts_and_limits),
        cmocka_unit_test(test_handoff_between_shards),
        cmocka_unit_test(test_many_connections_and_stop),
        cmocka_unit_test(test_mailbox),
        cmocka_unit_test(test_dial_bytes_both_ways),
        cmocka_unit_test(test_dial_refused_frees_slot),
        cmocka_unit_test(test_dial_timeout_and_stop),
        cmocka_unit_test(test_dial_many),
        cmocka_unit_test(test_listen_and_dial_one_engine),
        cmocka_unit_test(test_identify_timeout),
        cmocka_unit_test(test_evict_oldest_unidentified),
        cmocka_unit_test(test_full_table_of_identified),
        cmocka_unit_test(test_handed_in_arrives_identified),
        cmocka_unit_test(test_peer_address),
        cmocka_unit_test(test_reasm_classes_follow_bytes),
        cmocka_unit_test(test_reasm_budget_closes_oldest_partial),
        cmocka_unit_test(test_reasm_paused_bytes_kept),
        cmocka_unit_test(test_reasm_budget_too_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
