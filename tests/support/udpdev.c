/* udpdev.c — see udpdev.h. Test-only; single-threaded; every socket is non-blocking and every
 * wait goes through poll() with a deadline. */
#include "tests/support/udpdev.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"

enum {
    TRACKERS_MAX = 256,         /* trackers in one udptrks_poll() */
    SOCK_BUF_BYTES = 256 * 1024 /* room for a 64 KB datagram and a burst of ACKs */
};

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* ---- one socket ---------------------------------------------------------------------------- */

int udpdev_open(struct udpdev *u, uint16_t port)
{
    if (u->fd > 0) /* a zeroed struct has fd 0: not ours */
        close(u->fd);
    *u = (struct udpdev){.fd = -1, .port = port};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int bytes = SOCK_BUF_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
    struct sockaddr_in a = loopback(0);
    socklen_t alen = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    u->fd = fd;
    u->local_port = ntohs(a.sin_port);
    return 0;
}

void udpdev_close(struct udpdev *u)
{
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
}

int udpdev_send(struct udpdev *u, const uint8_t *p, size_t len)
{
    struct sockaddr_in to = loopback(u->port);
    ssize_t n = sendto(u->fd, p, len, MSG_NOSIGNAL, (struct sockaddr *)&to, sizeof to);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* One datagram that waits now: its whole length, or -EAGAIN; another address's counts as stray
 * and gives -EAGAIN too. */
static int recv_one(struct udpdev *u, uint8_t *out, size_t cap)
{
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    ssize_t n =
        recvfrom(u->fd, out, cap, MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &flen);
    if (n < 0)
        return errno == EINTR ? -EAGAIN : -errno;
    if (from.sin_family != AF_INET || from.sin_port != htons(u->port) ||
        from.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) {
        u->stray++;
        return -EAGAIN;
    }
    return (int)n;
}

int udpdev_recv(struct udpdev *u, uint8_t *out, size_t cap, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int n = recv_one(u, out, cap);
        if (n != -EAGAIN)
            return n;
        uint64_t now = device_now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = u->fd, .events = POLLIN};
        poll(&p, 1, (int)(deadline - now));
    }
}

int udpdev_wait_ack(struct udpdev *u, int timeout_ms, struct udpdev_ack *ack)
{
    *ack = (struct udpdev_ack){0};
    uint8_t buf[64];
    int n = udpdev_recv(u, buf, sizeof buf, timeout_ms);
    if (n < 0)
        return n;
    if (n != AVL_UDP_ACK_BYTES || avl_decode_udp_ack(buf, (size_t)n, &ack->packet_id,
                                                     &ack->avl_packet_id, &ack->records) != 0) {
        *ack = (struct udpdev_ack){0};
        return -EBADMSG;
    }
    return 0;
}

bool udpdev_quiet(struct udpdev *u)
{
    uint8_t b;
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(u->fd, &b, 1, MSG_DONTWAIT | MSG_PEEK, (struct sockaddr *)&from, &flen);
    return n < 0;
}

int udpdev_from_tcp(const uint8_t *frame, size_t len, uint64_t imei, uint16_t packet_id,
                    uint8_t avl_packet_id, uint8_t *out, size_t cap)
{
    if (len < AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN || !avl_imei_valid(imei))
        return -EINVAL;
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    size_t dl = (size_t)avl_imei_format(imei, digits);
    size_t body = len - AVL_TCP_OVERHEAD_BYTES;
    size_t total = 8 + dl + body;
    if (total > cap || total - 2 > UINT16_MAX)
        return -ENOSPC;
    out[0] = (uint8_t)((total - 2) >> 8);
    out[1] = (uint8_t)(total - 2);
    out[2] = (uint8_t)(packet_id >> 8);
    out[3] = (uint8_t)packet_id;
    out[4] = 0x01;
    out[5] = avl_packet_id;
    out[6] = 0;
    out[7] = (uint8_t)dl;
    memcpy(out + 8, digits, dl);
    memcpy(out + 8 + dl, frame + AVL_TCP_HEADER_BYTES, body);
    return (int)total;
}

/* ---- a tracker ----------------------------------------------------------------------------- */

int udptrk_init(struct udptrk *t, uint16_t port, struct udptrk_pkt *pkts, unsigned pkts_len)
{
    *t = (struct udptrk){
        .dev = {.fd = -1}, .pkts = pkts, .pkts_len = pkts_len, .resend_ms = UDPTRK_RESEND_MS};
    return udpdev_open(&t->dev, port);
}

void udptrk_stop(struct udptrk *t)
{
    udpdev_close(&t->dev);
}

static bool done(const struct udptrk *t)
{
    return t->acked == t->pkts_len;
}

static bool ids_of(const struct udptrk_pkt *p, const struct udpdev_ack *a)
{
    return p->packet_id == a->packet_id && p->avl_packet_id == a->avl_packet_id;
}

/* One reply of n bytes: the ACK of the datagram in flight moves the tracker on. */
static void on_reply(struct udptrk *t, const uint8_t *b, int n, uint64_t now)
{
    struct udpdev_ack a;
    if (n != AVL_UDP_ACK_BYTES ||
        avl_decode_udp_ack(b, (size_t)n, &a.packet_id, &a.avl_packet_id, &a.records) != 0) {
        t->junk++;
        return;
    }
    if (!done(t) && ids_of(&t->pkts[t->acked], &a)) {
        struct udptrk_pkt *p = &t->pkts[t->acked];
        if (a.records != p->records) {
            t->bad_acks++;
            return;
        }
        p->acked_ms = now;
        t->acked++;
        t->acks++;
        t->deadline_ms = now + (uint64_t)t->gap_ms;
        return;
    }
    for (unsigned i = 0; i < t->acked; i++) {
        if (ids_of(&t->pkts[i], &a)) {
            if (a.records == t->pkts[i].records)
                t->late_acks++;
            else
                t->bad_acks++;
            return;
        }
    }
    t->junk++;
}

/* Reads every reply that waits, then sends the datagram in flight when it is due. */
static void step(struct udptrk *t, uint64_t now)
{
    uint8_t b[64];
    for (;;) {
        unsigned stray = t->dev.stray;
        int n = recv_one(&t->dev, b, sizeof b);
        if (n >= 0)
            on_reply(t, b, n, now);
        else if (n != -EAGAIN || t->dev.stray == stray)
            break; /* nothing more waits (a stray datagram skipped: read on) */
    }
    if (done(t) || now < t->deadline_ms)
        return;
    struct udptrk_pkt *p = &t->pkts[t->acked];
    if (udpdev_send(&t->dev, p->bytes, p->len) == 0)
        p->sends++;
    else
        t->send_fails++;
    t->deadline_ms = now + (uint64_t)t->resend_ms;
}

unsigned udptrks_poll(struct udptrk *ts, unsigned n, int wait_ms)
{
    struct pollfd pfd[TRACKERS_MAX];
    unsigned idx[TRACKERS_MAX], m = 0;
    uint64_t now = device_now_ms(), wake = now + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    for (unsigned i = 0; i < n && m < TRACKERS_MAX; i++) {
        if (done(&ts[i]) || ts[i].dev.fd < 0)
            continue;
        pfd[m] = (struct pollfd){.fd = ts[i].dev.fd, .events = POLLIN};
        idx[m++] = i;
        wake = ts[i].deadline_ms < wake ? ts[i].deadline_ms : wake;
    }
    if (m > 0)
        poll(pfd, m, wake > now ? (int)(wake - now) : 0);
    now = device_now_ms();
    for (unsigned k = 0; k < m; k++)
        step(&ts[idx[k]], now);
    unsigned d = 0;
    for (unsigned i = 0; i < n; i++)
        d += done(&ts[i]);
    return d;
}
