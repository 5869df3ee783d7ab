/* udpdev.h — Teltonika trackers played by the integration tests over loopback UDP.
 *
 * Two levels:
 *   struct udpdev  one socket bound to 127.0.0.1 on a port of the kernel's choice (a new socket
 *                  is a new source port, as after a NAT rebinding), driven with blocking calls
 *                  that each wait at most the timeout they are given (poll()): send a datagram,
 *                  wait for one from the gateway's address, wait for a 7-byte ACK.
 *   struct udptrk  a device with a list of datagrams that behaves like a real tracker, driven
 *                  non-blocking by udptrks_poll(): one datagram in flight, re-sent every
 *                  resend_ms until an ACK with its packet id, AVL packet id and record count
 *                  comes back, then the next one. Many share one poll() loop.
 *
 * Datagrams are made from TCP frames (udpdev_from_tcp), so the tagged records of gwproc.h
 * travel over UDP unchanged. A datagram from any address other than the gateway's is counted as
 * stray and otherwise ignored.
 *
 * Test-only code: no allocation; every wait is bounded. Functions return 0 (or a length) or
 * -errno (-ETIMEDOUT for a wait that ran out, -EBADMSG for a reply that is not an ACK). */
#ifndef AVLGATE_TESTS_SUPPORT_UDPDEV_H
#define AVLGATE_TESTS_SUPPORT_UDPDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    UDPDEV_BYTES_MAX = 65535, /* the largest datagram udpdev_recv reads whole */
    UDPTRK_RESEND_MS = 500,   /* a tracker's default re-send interval */
};

/* ---- one socket ---------------------------------------------------------------------------- */

struct udpdev {
    int fd;              /* -1 when closed */
    uint16_t port;       /* the gateway's UDP port on 127.0.0.1 */
    uint16_t local_port; /* this socket's source port */
    unsigned stray;      /* datagrams from another address, skipped */
};

/* Opens a new socket on 127.0.0.1 that sends to 127.0.0.1:port; u is zeroed or was opened
 * before (then its socket is closed first: the source port changes). */
int udpdev_open(struct udpdev *u, uint16_t port);

/* Closes the socket, if open. */
void udpdev_close(struct udpdev *u);

/* Sends one datagram of len bytes (0 is allowed). */
int udpdev_send(struct udpdev *u, const uint8_t *p, size_t len);

/* Waits up to timeout_ms for one datagram from the gateway's address; copies up to cap bytes of
 * it to out. Returns its whole length, or -ETIMEDOUT. */
int udpdev_recv(struct udpdev *u, uint8_t *out, size_t cap, int timeout_ms);

/* What a 7-byte ACK says. */
struct udpdev_ack {
    uint16_t packet_id;
    uint8_t avl_packet_id;
    uint8_t records;
};

/* Waits for one datagram, which must be a well-formed ACK (avl_decode_udp_ack). Returns 0,
 * -ETIMEDOUT, or -EBADMSG (with *ack zero) for anything else. */
int udpdev_wait_ack(struct udpdev *u, int timeout_ms, struct udpdev_ack *ack);

/* True when nothing from the gateway waits to be read (a 0 ms poll). */
bool udpdev_quiet(struct udpdev *u);

/* The datagram of a whole TCP AVL frame (codec 8, 8E, 16): the frame's body (codec id .. count
 * 2) behind a UDP header with packet_id, byte 0x01, avl_packet_id and imei in its canonical
 * digits. Returns the bytes written, or -ENOSPC / -EINVAL. */
int udpdev_from_tcp(const uint8_t *frame, size_t len, uint64_t imei, uint16_t packet_id,
                    uint8_t avl_packet_id, uint8_t *out, size_t cap);

/* ---- a tracker ----------------------------------------------------------------------------- */

struct udptrk_pkt {
    const uint8_t *bytes; /* a whole datagram */
    size_t len;
    uint16_t packet_id; /* what its ACK must echo */
    uint8_t avl_packet_id;
    uint8_t records;   /* and the count it must say */
    uint64_t acked_ms; /* when its ACK arrived (device_now_ms), 0 while not acknowledged */
    unsigned sends;    /* times it was sent */
};

struct udptrk {
    struct udpdev dev;
    struct udptrk_pkt *pkts;
    unsigned pkts_len;
    unsigned acked; /* pkts[0 .. acked - 1] are acknowledged, in order */
    /* Behaviour (set after udptrk_init; defaults in brackets). */
    int resend_ms; /* re-send the datagram in flight this often [UDPTRK_RESEND_MS] */
    int gap_ms;    /* between an ACK and the next datagram [0] */
    /* What happened. */
    unsigned acks;       /* ACKs of the datagram in flight */
    unsigned late_acks;  /* ACKs of a datagram acknowledged already (a re-send's second ACK) */
    unsigned bad_acks;   /* an ACK with the ids of the datagram in flight but another count */
    unsigned junk;       /* replies that are no ACK, or ACK no datagram sent so far */
    unsigned send_fails; /* sendto failures (tried again at the next deadline) */
    /* Internal state. */
    uint64_t deadline_ms; /* when the datagram in flight goes (again) */
};

/* A tracker on a socket of its own with its datagrams (which it keeps a pointer to and updates):
 * the first udptrks_poll() sends pkts[0]. Returns 0 or -errno (the socket). */
int udptrk_init(struct udptrk *t, uint16_t port, struct udptrk_pkt *pkts, unsigned pkts_len);

/* Advances every tracker once: waits at most wait_ms for replies or the earliest deadline, then
 * handles what arrived and sends what is due. Returns how many trackers are done. */
unsigned udptrks_poll(struct udptrk *ts, unsigned n, int wait_ms);

/* Closes the tracker's socket (teardown). */
void udptrk_stop(struct udptrk *t);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_TESTS_SUPPORT_UDPDEV_H */
