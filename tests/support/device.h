/* device.h — Teltonika trackers played by the integration tests, over loopback TCP.
 *
 * Two levels:
 *   struct device   one connection, driven with blocking calls that each wait at most the
 *                   timeout they are given (poll()): connect, IMEI handshake, send (whole or
 *                   in pieces), wait for the 4-byte ACK, wait for the gateway to close.
 *   struct tracker  a device with a list of packets that behaves like a real tracker, driven
 *                   non-blocking by trackers_poll(): connect, handshake, send the oldest packet
 *                   not acknowledged, wait for its ACK; on a timeout, a refused handshake or a
 *                   closed connection it drops the socket, waits a little, reconnects and
 *                   sends the same packet again. Many trackers share one poll() loop.
 *
 * Test-only code: no allocation; every wait is bounded. Functions return 0 or -errno
 * (-ETIMEDOUT for a wait that ran out, -ECONNRESET when the gateway closed the connection). */
#ifndef AVLGATE_TESTS_SUPPORT_DEVICE_H
#define AVLGATE_TESTS_SUPPORT_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CLOCK_MONOTONIC in ms. */
uint64_t device_now_ms(void);

/* Sleeps ms milliseconds (pacing and bounded polling; not synchronisation). */
void device_sleep_ms(int ms);

/* Any unused TCP port on 127.0.0.1 at the time of the call. */
uint16_t device_free_port(void);

/* True when something accepts TCP connections on 127.0.0.1:port (it connects and closes). */
bool device_port_open(uint16_t port);

/* ---- one connection ---------------------------------------------------------------------- */

struct device {
    int fd; /* -1 when closed */
    uint16_t port;
    uint64_t imei;
};

/* Sets the device up, closed. */
void device_init(struct device *d, uint16_t port, uint64_t imei);

/* Connects to 127.0.0.1:port with TCP_NODELAY (closing an earlier socket first). */
int device_connect(struct device *d, int timeout_ms);
/* The same from source address src (an IPv4 loopback address such as "127.0.0.2"). */
int device_connect_from(struct device *d, const char *src, int timeout_ms);

/* Sends the IMEI handshake and waits for the one-byte answer. Returns the answer (0 or 1),
 * -ETIMEDOUT or -ECONNRESET. */
int device_handshake(struct device *d, int timeout_ms);

/* device_connect then device_handshake; 0 only when the gateway answered 0x01. */
int device_open(struct device *d, int timeout_ms);

/* Sends len bytes. piece 0 sends them with one write; otherwise in writes of piece bytes,
 * gap_ms apart (TCP_NODELAY: each write leaves as its own segment). */
int device_send(struct device *d, const uint8_t *p, size_t len, size_t piece, int gap_ms);

/* Reads exactly n bytes (e.g. the answer to a handshake sent with device_send). */
int device_read(struct device *d, uint8_t *out, size_t n, int timeout_ms);

/* Waits for one 4-byte ACK and stores its record count. */
int device_wait_ack(struct device *d, int timeout_ms, uint32_t *records);

/* Waits for the gateway to close the connection, reading whatever it sends meanwhile.
 * Returns 0 when it closed (EOF or reset), -ETIMEDOUT when it is still open. *bytes gets the
 * number of bytes received meanwhile and *first the first of them (both may be NULL). */
int device_wait_closed(struct device *d, int timeout_ms, size_t *bytes, uint8_t *first);

/* True when the gateway has neither sent anything nor closed the connection (a 0 ms poll). */
bool device_quiet(const struct device *d);

/* Closes the socket, if open. */
void device_close(struct device *d);

/* ---- a tracker --------------------------------------------------------------------------- */

struct tracker_pkt {
    const uint8_t *bytes; /* a whole TCP AVL frame */
    size_t len;
    uint32_t records;  /* the ACK it must get */
    uint64_t acked_ms; /* when its ACK arrived (device_now_ms), 0 while not acknowledged */
    unsigned sends;    /* times it was sent */
};

enum tracker_phase {
    TRK_BACKOFF = 0, /* closed, reconnecting at `deadline_ms` */
    TRK_CONNECTING,
    TRK_HANDSHAKE, /* IMEI sent (or being sent), waiting for 0x01 */
    TRK_GAP,       /* connected, the next packet goes at `deadline_ms` */
    TRK_SENDING,   /* a packet being written, then waiting for its ACK */
    TRK_DONE,      /* every packet acknowledged; socket closed */
};

struct tracker {
    struct device dev;
    struct tracker_pkt *pkts;
    unsigned pkts_len;
    unsigned acked; /* pkts[0 .. acked - 1] are acknowledged, in order */
    /* Behaviour (set after tracker_init; defaults in brackets). */
    int ack_timeout_ms; /* wait for an ACK this long, then reconnect and re-send [3000] */
    int hs_timeout_ms;  /* wait for 0x01 this long, then reconnect [3000] */
    int backoff_ms;     /* between a close and the next connect [100] */
    int gap_ms;         /* between an ACK and the next packet [0] */
    bool hold;          /* send no new packet while set (one in flight still completes) */
    /* What happened. */
    unsigned connects;   /* connections established */
    unsigned handshakes; /* 0x01 answers */
    unsigned refused;    /* 0x00 answers */
    unsigned closed_by_peer, ack_timeouts, hs_timeouts;
    unsigned bad_acks; /* an ACK with a count other than the packet's records */
    unsigned junk;     /* bytes that are neither an expected answer nor an ACK */
    /* Internal state. */
    enum tracker_phase phase;
    uint64_t deadline_ms;
    size_t out_off; /* bytes of the handshake or packet written */
    uint8_t hs[2 + 17];
    size_t hs_len;
    uint8_t in[4];
    size_t in_len;
};

/* A tracker for imei with its packets (which it keeps a pointer to and updates), starting
 * closed: the first trackers_poll() connects. */
void tracker_init(struct tracker *t, uint16_t port, uint64_t imei, struct tracker_pkt *pkts,
                  unsigned pkts_len);

/* Advances every tracker once: waits at most wait_ms for socket events or the earliest
 * deadline, then handles what happened. Returns how many trackers are done. */
unsigned trackers_poll(struct tracker *ts, unsigned n, int wait_ms);

/* Runs trackers_poll() until all n are done or timeout_ms passed. Returns the number done. */
unsigned trackers_run(struct tracker *ts, unsigned n, int timeout_ms);

/* Closes the tracker's socket, if open, and marks it done (teardown after a failure). */
void tracker_stop(struct tracker *t);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_TESTS_SUPPORT_DEVICE_H */
