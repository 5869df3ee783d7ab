/* udp.c — loadgen's simulated trackers over UDP (udp.h): the devices, their datagrams and
 * ACKs, the worker's sockets, and the engine's callbacks of a --udp worker.
 *
 * A device (struct udp_dev, 24 bytes) is UDEV_WAIT (its next packet waits for its timer: its
 * schedule, the ramp, or 1 ms after the socket refused a send), UDEV_SENT (one datagram in
 * flight, its retry timer armed) or UDEV_DONE (--packets reached). Its packet id is its index
 * on its socket (device di is on socket di % socks_len), so an ACK names its device by the
 * socket it came in on and its packet id alone; its AVL packet id starts at a value hashed from
 * the device and goes up by one (wrapping) per acknowledged packet. A datagram's bytes are not
 * kept: records.h makes the same records again and avl_encode_udp the same bytes, so a re-send
 * is identical to the first attempt, ids included.
 *
 * "connected", for the timeline and the summary (the TCP figure's nearest meaning): the devices
 * whose last datagram was acknowledged within --udp-retry-ms (UF_LIVE): a device leaves when
 * its retry fires and comes back with its next ACK. connect_all_s: when every device had its
 * first ACK. There is no handshake; the connect histogram stays empty. The ACK latency runs
 * from the send of the attempt in flight, as TCP's from the write after the reconnect: a packet
 * acknowledged after a re-send does not count its retry wait (resends counts those).
 *
 * Invariants: a device in UDEV_SENT has exactly one timer (its retry, or the 1 ms wait of a
 * re-send the socket refused); an ACK moves a device only when it is UDEV_SENT and the ACK's
 * AVL packet id and count are its packet's; armed[s] is set exactly while socket s has a poll
 * in the ring (a poll that found no SQE is armed again at the next tick).
 *
 * Threads: udp_init, udp_free and udp_device_records on the main thread, while the worker's
 * thread does not run; everything else on the worker's thread (its engine's callbacks). */
#include "loadgen/udp.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/avl.h"
#include "loadgen/records.h"
#include "loadgen/verify.h"

enum {
    RECV_BATCH = 64,            /* datagrams per recvmmsg */
    RECV_BATCHES_MAX = 8,       /* recvmmsg calls per readiness, then the poll is armed again */
    RX_BYTES = 16,              /* an ACK is 7 bytes: a longer datagram is no ACK (MSG_TRUNC) */
    TIMERS_PER_TICK = 4096,     /* timers handled per loop turn, so the ACKs are never starved */
    SOCKET_BUF_BYTES = 4 << 20, /* asked for; the kernel caps it at net.core.[rw]mem_max */
};

_Static_assert((uint64_t)UDP_SOCKETS_PER_WORKER * 65536 >= VERIFY_DEVICES_MAX,
               "a device's index on its socket fits the u16 packet id");

enum udev_state { UDEV_WAIT = 0, UDEV_SENT, UDEV_DONE };

enum udev_flag {
    UF_ATTEMPTED = 1 << 0, /* the packet in flight went out before: this is a re-send */
    UF_LIVE = 1 << 1,      /* its last datagram was acknowledged in time: "connected" */
    UF_EVER = 1 << 2,      /* acknowledged at least once */
};

struct udp_dev {
    uint32_t pkt_acked;  /* packets acknowledged */
    uint32_t rec_acked;  /* records acknowledged: the first record of the packet in flight */
    uint64_t t_ns;       /* UDEV_SENT: when its last attempt went */
    uint8_t state;       /* enum udev_state */
    uint8_t flags;       /* enum udev_flag */
    uint8_t pkt_records; /* records of the packet in flight */
    uint8_t avl_id;      /* the AVL packet id of the packet in flight (or next) */
};

_Static_assert(sizeof(struct udp_dev) <= 24, "per-device state stays small");

struct udp {
    struct udp_dev *devs; /* w->devs_len */
    int *fds;             /* socks_len; -1: not open */
    uint8_t *armed;       /* socks_len */
    uint32_t socks_len;
    uint8_t *out; /* the datagram being sent: out_cap bytes */
    uint32_t out_cap;
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    uint8_t rx[RECV_BATCH][RX_BYTES];
};

/* ---------------------------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------------------------- */

static bool stopping(const struct worker *w)
{
    return atomic_load_explicit(&w->fleet->stop, memory_order_relaxed);
}

/* The device's packet id: its index on its socket. */
static uint16_t packet_id(const struct udp *u, uint32_t di)
{
    return (uint16_t)(di / u->socks_len);
}

/* Makes the packet in flight again (the same bytes on every attempt) and sends it; arms its
 * retry. When the socket refuses it for now, the device tries again in 1 ms, state unchanged. */
static void udp_send(struct worker *w, uint32_t di, uint64_t now)
{
    struct udp *u = w->udp;
    struct udp_dev *d = &u->devs[di];
    const struct fleet *f = w->fleet;
    uint32_t g = w->base + di;
    uint8_t codec;
    int n = records_make(w, g, d->pkt_acked, d->rec_acked, &codec);
    assert(n > 0);
    int bytes = avl_encode_udp(u->out, u->out_cap, packet_id(u, di), d->avl_id, f->o.imei_base + g,
                               codec, w->pkt->recs, (size_t)n);
    assert(bytes > 0 && bytes <= UDP_DATAGRAM_BYTES_MAX);
    ssize_t r = sendto(u->fds[di % u->socks_len], u->out, (size_t)bytes, MSG_DONTWAIT,
                       (const struct sockaddr *)&f->dst, f->dst_len);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
        w->c.udp_send_waits++;
        timers_set(&w->timers, di, now + NS_PER_MS);
        return;
    }
    if (r < 0)
        w->c.udp_send_errors++; /* as lost on the way: the retry sends it again */
    else
        w->c.udp_datagrams++;
    if (d->flags & UF_ATTEMPTED) {
        w->c.resends++;
    } else {
        d->flags |= UF_ATTEMPTED;
        w->c.packets_sent++;
    }
    d->state = UDEV_SENT;
    d->pkt_records = (uint8_t)n;
    d->t_ns = engine_clock_ns(); /* the ACK latency runs from this attempt's send */
    timers_set(&w->timers, di, now + f->ack_timeout_ns);
}

/* The device's next packet: now when due, else a timer for when it is. */
static void udp_pump(struct worker *w, uint32_t di, uint64_t now)
{
    struct udp_dev *d = &w->udp->devs[di];
    assert(d->state == UDEV_WAIT);
    if (stopping(w))
        return;
    uint64_t due = fleet_due_ns(w->fleet, w->base + di, d->pkt_acked);
    if (due > now) {
        timers_set(&w->timers, di, due);
        return;
    }
    udp_send(w, di, now);
}

/* "connected" and connect_all_s: the device's datagram was acknowledged in time. */
static void udp_live(struct worker *w, struct udp_dev *d, uint64_t now)
{
    if (!(d->flags & UF_LIVE)) {
        d->flags |= UF_LIVE;
        w->connected++;
    }
    if (!(d->flags & UF_EVER)) {
        d->flags |= UF_EVER;
        if (++w->ever == w->devs_len)
            w->all_connected_ns = now;
    }
}

/* The ACK of the packet in flight: counted, the next packet follows. */
static void udp_acked(struct worker *w, uint32_t di, uint64_t now)
{
    struct udp_dev *d = &w->udp->devs[di];
    assert(d->state == UDEV_SENT && d->pkt_records > 0);
    worker_ack_latency(w, now, d->t_ns);
    w->c.packets_acked++;
    w->c.records_acked += d->pkt_records;
    d->pkt_acked++;
    d->rec_acked += d->pkt_records;
    d->pkt_records = 0;
    d->avl_id++; /* u8: wraps */
    d->flags &= (uint8_t)~UF_ATTEMPTED;
    udp_live(w, d, now);
    timers_cancel(&w->timers, di); /* the retry */
    if (w->fleet->o.packets && d->pkt_acked >= w->fleet->o.packets) {
        d->state = UDEV_DONE;
        atomic_fetch_add_explicit(&w->fleet->devices_done, 1, memory_order_relaxed);
        return;
    }
    d->state = UDEV_WAIT;
    udp_pump(w, di, now);
}

/* One datagram from the gateway on socket s: an ACK of one of its devices, or counted. */
static void udp_datagram(struct worker *w, uint32_t s, const uint8_t *p, uint32_t len,
                         bool truncated, uint64_t now)
{
    struct udp *u = w->udp;
    uint16_t pid;
    uint8_t avl_id, records;
    if (truncated || avl_decode_udp_ack(p, len, &pid, &avl_id, &records) != 0) {
        w->c.bad_frame++;
        return;
    }
    uint64_t di = (uint64_t)pid * u->socks_len + s;
    if (di >= w->devs_len) {
        w->c.bad_frame++; /* names no device of this socket */
        return;
    }
    struct udp_dev *d = &u->devs[di];
    if (d->state != UDEV_SENT || avl_id != d->avl_id) {
        w->c.udp_stale_acks++; /* an earlier packet's, answered already */
        return;
    }
    if (records != d->pkt_records) {
        w->c.udp_bad_count_acks++; /* no progress: the retry sends the packet again */
        return;
    }
    udp_acked(w, (uint32_t)di, now);
}

static void udp_timer(struct worker *w, uint32_t di, uint64_t now)
{
    struct udp_dev *d = &w->udp->devs[di];
    switch ((enum udev_state)d->state) {
    case UDEV_WAIT:
        udp_pump(w, di, now);
        break;
    case UDEV_SENT:
        if (d->flags & UF_LIVE) {
            d->flags &= (uint8_t)~UF_LIVE; /* no ACK in time */
            w->connected--;
        }
        udp_send(w, di, now);
        break;
    case UDEV_DONE:
        break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Sockets
 * ------------------------------------------------------------------------------------------- */

static void udp_arm(struct worker *w, uint32_t s)
{
    struct udp *u = w->udp;
    assert(!u->armed[s]);
    if (engine_poll(w->e, u->fds[s], POLLIN, s) == 0)
        u->armed[s] = 1; /* else no SQE free: the next tick tries again */
}

/* Reads what socket s has, a bounded number of batches. */
static void udp_drain(struct worker *w, uint32_t s, uint64_t now)
{
    struct udp *u = w->udp;
    for (int b = 0; b < RECV_BATCHES_MAX; b++) {
        int n = recvmmsg(u->fds[s], u->msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return; /* EAGAIN: all read */
        for (int i = 0; i < n; i++)
            udp_datagram(w, s, u->rx[i], u->msgs[i].msg_len,
                         (u->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, now);
        if (n < RECV_BATCH)
            return;
    }
}

/* Socket k of the worker: bound to port 0 of its source address (--src-ips: the fleet's
 * addresses in turn over every worker's sockets; else any), buffers enlarged. */
static int udp_socket_open(struct worker *w, uint32_t k, char *err, size_t err_cap)
{
    const struct fleet *f = w->fleet;
    int fd = socket(f->dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_cap, "udp socket: %s", strerror(errno));
        return -errno;
    }
    w->udp->fds[k] = fd;
    int bytes = SOCKET_BUF_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    struct sockaddr_storage src = {.ss_family = f->dst.ss_family};
    socklen_t len = sizeof(struct sockaddr_in6);
    if (f->dst.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&src;
        uint64_t i = (uint64_t)w->id * UDP_SOCKETS_PER_WORKER + k;
        a->sin_addr.s_addr = htonl(f->src_ips ? f->src_base + (uint32_t)(i % f->src_ips) : 0);
        len = sizeof *a;
    }
    if (bind(fd, (const struct sockaddr *)&src, len) != 0) {
        int rc = -errno;
        char host[INET6_ADDRSTRLEN] = "?";
        if (f->dst.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&src)->sin_addr, host, sizeof host);
        else
            snprintf(host, sizeof host, "::");
        snprintf(err, err_cap, "udp bind %s: %s", host, strerror(-rc));
        return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Engine callbacks (the worker's thread)
 * ------------------------------------------------------------------------------------------- */

static void udp_on_poll(void *app, struct engine *e, uint64_t tag, int revents)
{
    struct worker *w = app;
    struct udp *u = w->udp;
    uint32_t s = (uint32_t)tag;
    assert(s < u->socks_len && u->armed[s]);
    u->armed[s] = 0;
    (void)revents; /* POLLIN, or an error recvmmsg reads (and clears) */
    if (stopping(w))
        return;
    udp_drain(w, s, engine_now_ns(e));
    udp_arm(w, s);
}

static uint64_t udp_on_tick(void *app, struct engine *e, uint64_t now)
{
    struct worker *w = app;
    (void)e;
    if (stopping(w))
        return 0;
    unsigned fired = 0;
    uint32_t di;
    while (fired < TIMERS_PER_TICK && timers_pop_due(&w->timers, now, &di)) {
        udp_timer(w, di, now);
        fired++;
    }
    for (uint32_t s = 0; s < w->udp->socks_len; s++)
        if (!w->udp->armed[s])
            udp_arm(w, s);
    if (now >= w->next_pub_ns)
        worker_publish(w, now);
    uint64_t next = w->next_pub_ns;
    if (fired == TIMERS_PER_TICK)
        next = now; /* more timers are due: come back at once */
    else if (timers_next_ns(&w->timers) < next)
        next = timers_next_ns(&w->timers);
    return next;
}

/* A --udp worker's engine opens no connection: these are never called. */
static void udp_on_open(void *app, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                        uint64_t key)
{
    (void)app, (void)e, (void)slot, (void)gen, (void)from_shard, (void)key;
    assert(!"a --udp worker has no connections");
}

static size_t udp_on_data(void *app, struct engine *e, uint32_t slot, uint32_t gen,
                          const uint8_t *p, size_t len, enum engine_verdict *verdict,
                          uint32_t *need)
{
    (void)app, (void)e, (void)slot, (void)gen, (void)p, (void)need;
    assert(!"a --udp worker has no connections");
    *verdict = ENGINE_CLOSE;
    return len;
}

static void udp_on_close(void *app, struct engine *e, uint32_t slot, uint32_t gen,
                         enum engine_close_reason reason)
{
    (void)app, (void)e, (void)slot, (void)gen, (void)reason;
    assert(!"a --udp worker has no connections");
}

static const struct engine_ops udp_ops = {
    .on_open = udp_on_open,
    .on_data = udp_on_data,
    .on_close = udp_on_close,
    .on_poll = udp_on_poll,
    .on_tick = udp_on_tick,
};

/* ---------------------------------------------------------------------------------------------
 * The worker's UDP side: sizing, start, results
 * ------------------------------------------------------------------------------------------- */

int udp_init(struct worker *w, char *err, size_t err_cap)
{
    const struct fleet *f = w->fleet;
    struct udp *u = calloc(1, sizeof *u);
    w->udp = u;
    if (!u)
        goto nomem;
    u->socks_len = w->devs_len < UDP_SOCKETS_PER_WORKER ? w->devs_len : UDP_SOCKETS_PER_WORKER;
    u->devs = calloc(w->devs_len, sizeof *u->devs);
    u->fds = malloc(u->socks_len * sizeof *u->fds);
    for (uint32_t s = 0; u->fds && s < u->socks_len; s++)
        u->fds[s] = -1; /* before anything can fail: udp_free closes what is open */
    u->armed = calloc(u->socks_len, sizeof *u->armed);
    u->out_cap = f->chunk_bytes;
    u->out = malloc(u->out_cap);
    if (!u->devs || !u->fds || !u->armed || !u->out)
        goto nomem;
    for (uint32_t di = 0; di < w->devs_len; di++)
        u->devs[di].avl_id = (uint8_t)mix64(f->o.seed ^ UINT64_C(0xAF1D) ^ (w->base + di));
    for (int i = 0; i < RECV_BATCH; i++) {
        u->iov[i] = (struct iovec){.iov_base = u->rx[i], .iov_len = RX_BYTES};
        u->msgs[i].msg_hdr = (struct msghdr){.msg_iov = &u->iov[i], .msg_iovlen = 1};
    }
    for (uint32_t s = 0; s < u->socks_len; s++) {
        int rc = udp_socket_open(w, s, err, err_cap);
        if (rc)
            return rc;
    }
    return 0;
nomem:
    snprintf(err, err_cap, "out of memory for %u UDP devices", w->devs_len);
    return -ENOMEM;
}

int udp_engine_init(struct worker *w)
{
    /* Only the loop, its clock and the sockets' polls: the smallest tables engine_init takes. */
    struct engine_config cfg = {
        .shard = w->id,
        .shards = w->fleet->threads,
        .listen = false,
        .conns_max = 1,
        .bufs = 64,
        .buf_bytes = 64,
        .reasm_bytes_max = 4096,
        .frame_bytes_max = 64,
        .sq_entries = 4 * UDP_SOCKETS_PER_WORKER,
        .ops = &udp_ops,
        .app = w,
    };
    return engine_init(&w->e, &cfg, w->err, sizeof w->err);
}

void udp_start(struct worker *w)
{
    const struct fleet *f = w->fleet;
    /* Each device's first packet: at its schedule's phase, and not before its place in the
     * ramp (--ramp-s); with neither, all at once (TIMERS_PER_TICK a loop turn). */
    uint64_t ramp_ns = (uint64_t)(f->o.ramp_s * 1e9);
    for (uint32_t di = 0; di < w->devs_len; di++) {
        uint32_t g = w->base + di;
        uint64_t at = fleet_due_ns(f, g, 0);
        uint64_t ramp_at = f->t0_ns + (uint64_t)((double)ramp_ns * g / f->o.devices);
        timers_set(&w->timers, di, at > ramp_at ? at : ramp_at);
    }
    for (uint32_t s = 0; s < w->udp->socks_len; s++)
        udp_arm(w, s);
    w->next_pub_ns = f->t0_ns + NS_PER_S;
}

void udp_device_records(const struct worker *w, uint32_t di, uint32_t *acked, uint32_t *sent)
{
    const struct udp_dev *d = &w->udp->devs[di];
    *acked = d->rec_acked;
    *sent = d->rec_acked + ((d->flags & UF_ATTEMPTED) ? d->pkt_records : 0);
}

void udp_free(struct worker *w)
{
    struct udp *u = w->udp;
    if (!u)
        return;
    for (uint32_t s = 0; u->fds && s < u->socks_len; s++)
        if (u->fds[s] >= 0)
            close(u->fds[s]);
    free(u->devs);
    free(u->fds);
    free(u->armed);
    free(u->out);
    free(u);
    w->udp = NULL;
}
