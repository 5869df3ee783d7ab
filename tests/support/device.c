/* device.c — see device.h. Test-only; single-threaded; every socket is non-blocking and every
 * wait goes through poll() with a deadline. */
#include "tests/support/device.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"

enum {
    TRACKERS_MAX = 256,     /* trackers in one trackers_poll() */
    SEND_TIMEOUT_MS = 5000, /* a device_send() write that cannot progress this long fails */
};

uint64_t device_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void device_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

uint16_t device_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert(fd >= 0);
    struct sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    assert(rc == 0);
    rc = getsockname(fd, (struct sockaddr *)&a, &len);
    assert(rc == 0);
    (void)rc;
    close(fd);
    return ntohs(a.sin_port);
}

/* A non-blocking TCP socket with TCP_NODELAY, connect started. Returns the fd (connected or
 * in progress, *in_progress says which) or -errno. */
/* A non-blocking connect to 127.0.0.1:port from src (an IPv4 address; NULL: the kernel's). */
static int start_connect(uint16_t port, const char *src, bool *in_progress)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in from = {.sin_family = AF_INET};
    if (src && (inet_pton(AF_INET, src, &from.sin_addr) != 1 ||
                bind(fd, (struct sockaddr *)&from, sizeof from) != 0)) {
        int err = errno ? -errno : -EINVAL;
        close(fd);
        return err;
    }
    struct sockaddr_in a = loopback(port);
    *in_progress = false;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
        return fd;
    if (errno == EINPROGRESS) {
        *in_progress = true;
        return fd;
    }
    int err = -errno;
    close(fd);
    return err;
}

static int connect_result(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

/* Waits for events on fd until deadline_ms; returns revents, 0 on timeout, or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        uint64_t now = device_now_ms();
        int left = now >= deadline_ms ? 0 : (int)(deadline_ms - now);
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, left);
        if (rc > 0)
            return p.revents;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

bool device_port_open(uint16_t port)
{
    bool in_progress;
    int fd = start_connect(port, NULL, &in_progress);
    if (fd < 0)
        return false;
    bool ok = true;
    if (in_progress)
        ok = wait_fd(fd, POLLOUT, device_now_ms() + 1000) > 0 && connect_result(fd) == 0;
    close(fd);
    return ok;
}

void device_init(struct device *d, uint16_t port, uint64_t imei)
{
    d->fd = -1;
    d->port = port;
    d->imei = imei;
}

void device_close(struct device *d)
{
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

int device_connect(struct device *d, int timeout_ms)
{
    return device_connect_from(d, NULL, timeout_ms);
}

int device_connect_from(struct device *d, const char *src, int timeout_ms)
{
    device_close(d);
    bool in_progress;
    int fd = start_connect(d->port, src, &in_progress);
    if (fd < 0)
        return fd;
    if (in_progress) {
        int ev = wait_fd(fd, POLLOUT, device_now_ms() + (uint64_t)timeout_ms);
        int rc = ev > 0 ? connect_result(fd) : (ev == 0 ? -ETIMEDOUT : ev);
        if (rc != 0) {
            close(fd);
            return rc;
        }
    }
    d->fd = fd;
    return 0;
}

int device_send(struct device *d, const uint8_t *p, size_t len, size_t piece, int gap_ms)
{
    if (d->fd < 0)
        return -ENOTCONN;
    size_t off = 0;
    while (off < len) {
        size_t n = piece == 0 || len - off < piece ? len - off : piece;
        size_t sent = 0;
        uint64_t deadline = device_now_ms() + SEND_TIMEOUT_MS;
        while (sent < n) {
            ssize_t w = send(d->fd, p + off + sent, n - sent, MSG_NOSIGNAL);
            if (w > 0) {
                sent += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno != EAGAIN)
                return errno == EPIPE ? -ECONNRESET : -errno;
            int ev = wait_fd(d->fd, POLLOUT, deadline);
            if (ev == 0)
                return -ETIMEDOUT;
            if (ev < 0)
                return ev;
        }
        off += n;
        if (off < len && gap_ms > 0)
            device_sleep_ms(gap_ms); /* pacing: each piece reaches the gateway alone */
    }
    return 0;
}

/* Reads exactly n bytes before deadline_ms. */
static int read_exact(int fd, uint8_t *out, size_t n, uint64_t deadline_ms)
{
    size_t have = 0;
    while (have < n) {
        ssize_t r = recv(fd, out + have, n - have, 0);
        if (r > 0) {
            have += (size_t)r;
            continue;
        }
        if (r == 0)
            return -ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return errno == ECONNRESET || errno == EPIPE ? -ECONNRESET : -errno;
        int ev = wait_fd(fd, POLLIN, deadline_ms);
        if (ev == 0)
            return -ETIMEDOUT;
        if (ev < 0)
            return ev;
    }
    return 0;
}

int device_read(struct device *d, uint8_t *out, size_t n, int timeout_ms)
{
    if (d->fd < 0)
        return -ENOTCONN;
    return read_exact(d->fd, out, n, device_now_ms() + (uint64_t)timeout_ms);
}

int device_handshake(struct device *d, int timeout_ms)
{
    uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
    int n = avl_encode_imei(hs, sizeof hs, d->imei);
    assert(n > 0);
    int rc = device_send(d, hs, (size_t)n, 0, 0);
    if (rc < 0)
        return rc;
    uint8_t answer;
    rc = read_exact(d->fd, &answer, 1, device_now_ms() + (uint64_t)timeout_ms);
    return rc < 0 ? rc : answer;
}

int device_open(struct device *d, int timeout_ms)
{
    int rc = device_connect(d, timeout_ms);
    if (rc < 0)
        return rc;
    rc = device_handshake(d, timeout_ms);
    if (rc < 0)
        return rc;
    return rc == 1 ? 0 : -ECONNREFUSED;
}

int device_wait_ack(struct device *d, int timeout_ms, uint32_t *records)
{
    if (d->fd < 0)
        return -ENOTCONN;
    uint8_t ack[AVL_TCP_ACK_BYTES];
    int rc = read_exact(d->fd, ack, sizeof ack, device_now_ms() + (uint64_t)timeout_ms);
    if (rc < 0)
        return rc;
    *records = (uint32_t)ack[0] << 24 | (uint32_t)ack[1] << 16 | (uint32_t)ack[2] << 8 | ack[3];
    return 0;
}

int device_wait_closed(struct device *d, int timeout_ms, size_t *bytes, uint8_t *first)
{
    size_t seen = 0;
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    int result = -ETIMEDOUT;
    while (d->fd >= 0) {
        uint8_t buf[512];
        ssize_t r = recv(d->fd, buf, sizeof buf, 0);
        if (r > 0) {
            if (seen == 0 && first)
                *first = buf[0];
            seen += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            result = 0; /* EOF or reset */
            break;
        }
        if (errno == EINTR)
            continue;
        int ev = wait_fd(d->fd, POLLIN, deadline);
        if (ev <= 0)
            break;
    }
    if (bytes)
        *bytes = seen;
    return result;
}

bool device_quiet(const struct device *d)
{
    struct pollfd p = {.fd = d->fd, .events = POLLIN};
    return d->fd >= 0 && poll(&p, 1, 0) == 0;
}

/* ---- trackers ---------------------------------------------------------------------------- */

void tracker_init(struct tracker *t, uint16_t port, uint64_t imei, struct tracker_pkt *pkts,
                  unsigned pkts_len)
{
    memset(t, 0, sizeof *t);
    device_init(&t->dev, port, imei);
    t->pkts = pkts;
    t->pkts_len = pkts_len;
    t->ack_timeout_ms = 3000;
    t->hs_timeout_ms = 3000;
    t->backoff_ms = 100;
    t->phase = TRK_BACKOFF;
    t->deadline_ms = 0;
    int n = avl_encode_imei(t->hs, sizeof t->hs, imei);
    assert(n > 0);
    t->hs_len = (size_t)n;
}

void tracker_stop(struct tracker *t)
{
    device_close(&t->dev);
    t->phase = TRK_DONE;
}

static void trk_backoff(struct tracker *t, uint64_t now)
{
    device_close(&t->dev);
    t->in_len = 0;
    t->out_off = 0;
    t->phase = TRK_BACKOFF;
    t->deadline_ms = now + (uint64_t)t->backoff_ms;
}

/* After 0x01 or an ACK: the next packet now or after the gap, or done. */
static void trk_next(struct tracker *t, uint64_t now, bool after_ack)
{
    if (t->acked == t->pkts_len) {
        device_close(&t->dev);
        t->phase = TRK_DONE;
        return;
    }
    t->phase = TRK_GAP;
    t->deadline_ms = now + (after_ack ? (uint64_t)t->gap_ms : 0);
}

/* Writes what is left of buf from t->out_off; returns false when the connection broke. */
static bool trk_write(struct tracker *t, const uint8_t *buf, size_t len)
{
    while (t->out_off < len) {
        ssize_t w = send(t->dev.fd, buf + t->out_off, len - t->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            t->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        return w < 0 && errno == EAGAIN;
    }
    return true;
}

/* Reads up to want bytes into t->in; returns the bytes read, 0 for "none yet", -1 for closed. */
static int trk_read(struct tracker *t, size_t want)
{
    for (;;) {
        ssize_t r = recv(t->dev.fd, t->in + t->in_len, want - t->in_len, 0);
        if (r > 0) {
            t->in_len += (size_t)r;
            return (int)r;
        }
        if (r == 0)
            return -1;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -1;
    }
}

static short trk_events(const struct tracker *t)
{
    switch (t->phase) {
    case TRK_CONNECTING:
        return POLLOUT;
    case TRK_HANDSHAKE:
        return (short)(POLLIN | (t->out_off < t->hs_len ? POLLOUT : 0));
    case TRK_GAP:
        return POLLIN;
    case TRK_SENDING:
        return (short)(POLLIN | (t->out_off < t->pkts[t->acked].len ? POLLOUT : 0));
    default:
        return 0;
    }
}

static void trk_start_packet(struct tracker *t, uint64_t now)
{
    t->phase = TRK_SENDING;
    t->out_off = 0;
    t->in_len = 0;
    t->deadline_ms = now + (uint64_t)t->ack_timeout_ms;
    t->pkts[t->acked].sends++;
    struct tracker_pkt *p = &t->pkts[t->acked];
    if (!trk_write(t, p->bytes, p->len))
        trk_backoff(t, now);
}

static void trk_handle(struct tracker *t, short revents, uint64_t now)
{
    switch (t->phase) {
    case TRK_BACKOFF:
        if (now < t->deadline_ms)
            return;
        {
            bool in_progress;
            int fd = start_connect(t->dev.port, NULL, &in_progress);
            if (fd < 0) {
                trk_backoff(t, now);
                return;
            }
            t->dev.fd = fd;
            t->phase = TRK_CONNECTING;
            t->deadline_ms = now + (uint64_t)t->hs_timeout_ms;
            if (in_progress)
                return;
            revents = POLLOUT;
        }
        /* connected at once: fall through to start the handshake */
        __attribute__((fallthrough));
    case TRK_CONNECTING:
        if (revents & (POLLOUT | POLLERR | POLLHUP)) {
            if (connect_result(t->dev.fd) != 0) {
                trk_backoff(t, now);
                return;
            }
            t->connects++;
            t->phase = TRK_HANDSHAKE;
            t->out_off = 0;
            t->in_len = 0;
            t->deadline_ms = now + (uint64_t)t->hs_timeout_ms;
            if (!trk_write(t, t->hs, t->hs_len))
                trk_backoff(t, now);
        } else if (now >= t->deadline_ms) {
            trk_backoff(t, now);
        }
        return;
    case TRK_HANDSHAKE:
        if ((revents & POLLOUT) && !trk_write(t, t->hs, t->hs_len)) {
            trk_backoff(t, now);
            return;
        }
        if (revents & (POLLIN | POLLERR | POLLHUP)) {
            int r = trk_read(t, 1);
            if (r < 0) {
                t->closed_by_peer++;
                trk_backoff(t, now);
                return;
            }
            if (t->in_len == 1) {
                uint8_t answer = t->in[0];
                t->in_len = 0;
                if (answer == 0x01) {
                    t->handshakes++;
                    trk_next(t, now, false);
                } else {
                    t->refused++;
                    trk_backoff(t, now);
                }
                return;
            }
        }
        if (now >= t->deadline_ms) {
            t->hs_timeouts++;
            trk_backoff(t, now);
        }
        return;
    case TRK_GAP:
        if (revents & (POLLIN | POLLERR | POLLHUP)) {
            int r = trk_read(t, sizeof t->in);
            if (r < 0) {
                t->closed_by_peer++;
                trk_backoff(t, now);
                return;
            }
            t->junk += (unsigned)t->in_len;
            t->in_len = 0;
        }
        if (now >= t->deadline_ms && !t->hold)
            trk_start_packet(t, now);
        return;
    case TRK_SENDING: {
        struct tracker_pkt *p = &t->pkts[t->acked];
        if ((revents & POLLOUT) && !trk_write(t, p->bytes, p->len)) {
            trk_backoff(t, now);
            return;
        }
        if (revents & (POLLIN | POLLERR | POLLHUP)) {
            int r = trk_read(t, AVL_TCP_ACK_BYTES);
            if (t->in_len == AVL_TCP_ACK_BYTES) {
                uint32_t records = (uint32_t)t->in[0] << 24 | (uint32_t)t->in[1] << 16 |
                                   (uint32_t)t->in[2] << 8 | t->in[3];
                if (t->out_off < p->len)
                    t->junk += AVL_TCP_ACK_BYTES; /* an ACK before the packet left */
                else if (records != p->records)
                    t->bad_acks++;
                p->acked_ms = now;
                t->acked++;
                t->in_len = 0;
                trk_next(t, now, true);
                return;
            }
            if (r < 0) {
                t->closed_by_peer++;
                trk_backoff(t, now);
                return;
            }
        }
        if (now >= t->deadline_ms) {
            t->ack_timeouts++;
            trk_backoff(t, now);
        }
        return;
    }
    case TRK_DONE:
        return;
    }
}

unsigned trackers_poll(struct tracker *ts, unsigned n, int wait_ms)
{
    assert(n <= TRACKERS_MAX);
    struct pollfd pfd[TRACKERS_MAX];
    uint64_t now = device_now_ms();
    uint64_t wake = now + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    for (unsigned i = 0; i < n; i++) {
        struct tracker *t = &ts[i];
        short ev = trk_events(t);
        pfd[i] = (struct pollfd){.fd = ev && t->dev.fd >= 0 ? t->dev.fd : -1, .events = ev};
        if (t->phase != TRK_DONE && !(t->phase == TRK_GAP && t->hold) && t->deadline_ms < wake)
            wake = t->deadline_ms;
    }
    int timeout = wake > now ? (int)(wake - now) : 0;
    int rc = poll(pfd, n, timeout);
    if (rc < 0 && errno != EINTR)
        assert(!"poll failed");
    now = device_now_ms();
    unsigned done = 0;
    for (unsigned i = 0; i < n; i++) {
        trk_handle(&ts[i], rc > 0 && pfd[i].fd >= 0 ? pfd[i].revents : 0, now);
        done += ts[i].phase == TRK_DONE;
    }
    return done;
}

unsigned trackers_run(struct tracker *ts, unsigned n, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    unsigned done = 0;
    while ((done = trackers_poll(ts, n, 50)) < n && device_now_ms() < deadline)
        ;
    return done;
}
