/* session.h — the device on each connection of a gateway shard: its handshake, which shard owns
 * it (handed over when the hash ring says another), the replacement of an older connection of
 * the same IMEI, its state loaded from the database before its handshake is answered, the
 * allow-list walk after SIGHUP (--devices known), and the release of quiet devices' windows.
 *
 * struct sessions is this module's; the shard's thread only. Who writes a struct dev's fields:
 * session.c all of them, except `unacked` (batch.c counts taken and acknowledged packets;
 * session.c zeroes it at open and close) and the window behind `win` (batch.c appends the
 * fingerprints of records it takes, through dedup_win_mut). Others read.
 *
 * Devices over UDP (udp.c) have no connection: each takes a slot of its own above the engine's
 * table, [conns_max, conns_max + udp_devices_max), opened by the first datagram that reaches
 * the owner shard (its state is loaded as for a handshake, without an answer) and closed after
 * state_idle_s quiet with nothing unacknowledged (idle_timeout_s when that is 0), or as a
 * connection is closed (session_close). A device already connected over TCP keeps its
 * connection's slot: its datagrams use it, so a device has one window whichever way it sends. */
#ifndef AVLGATE_GATEWAY_SESSION_H
#define AVLGATE_GATEWAY_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "gateway/dedup.h"
#include "gateway/imap.h"
#include "gateway/ratelimit.h"
#include "gateway/shard_state.h"
#include "shard/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* DEV_HANDSHAKE: accepted, no IMEI yet. DEV_LOADING: handshake in, state load in flight, not
 * answered yet. DEV_OPEN: answered 0x01, packets flow. DEV_RELOADING: an open device whose window
 * was released while it was quiet sent a packet; the connection is held (ENGINE_HOLD, the bytes
 * kept by the engine) until its state is loaded again. DEV_REFUSED: a UDP device whose load said
 * it is not enabled (--devices known): its datagrams are dropped (counted) without another load
 * until it is closed — quiet for the idle period, a SIGHUP, or a TCP connection of the IMEI. */
enum dev_state {
    DEV_FREE = 0,
    DEV_HANDSHAKE,
    DEV_LOADING,
    DEV_OPEN,
    DEV_RELOADING,
    DEV_REFUSED,
    DEV_PROXY, /* accepted with --proxy-protocol: its PROXY header comes first (proxy.h) */
};

/* A connection's session. Small on purpose (an idle connection costs this, its engine slot, its
 * IMEI map cell and delivery.c's per-connection state): the duplicate-detection window lives in
 * the pool and only a device with fingerprints holds one. */
struct dev {
    uint32_t gen : ENGINE_GEN_BITS; /* the engine's generation of the connection */
    uint32_t state : 3;             /* enum dev_state */
    uint32_t load_queued : 1;       /* in the load queue, not sent yet */
    uint32_t load_stale : 1;        /* a batch of this device committed while its load flew */
    uint32_t dormant : 1;   /* open, window released after state_idle_s quiet: reload first */
    uint32_t win;           /* its window in the pool (dedup.h handle); 0: none */
    uint32_t last_packet_s; /* engine seconds of its last packet taken */
    uint32_t unacked;       /* packets taken on this connection and not yet acknowledged */
    uint64_t imei;
    uint64_t accepted_ms; /* wall-clock ms its handshake was accepted (the registry's epoch) */
    /* The owner token its rows are written under (schema 007): from its state load's claim,
     * carried over from this shard's older connection of the IMEI or its uncommitted batches. */
    uint64_t owner;
};
_Static_assert(sizeof(struct dev) == 40, "a connection's session stays small");

static inline bool dev_loading(const struct dev *d)
{
    return d->state == DEV_LOADING || d->state == DEV_RELOADING;
}

/* This shard owns the device on the connection (its handshake reached the owner). */
static inline bool dev_owned(const struct dev *d)
{
    return d->state == DEV_OPEN || dev_loading(d);
}

enum {
    SESSION_ALLOW_CHUNK = 2048,      /* IMEIs per allow-list query after SIGHUP */
    SESSION_RELEASE_EVERY_MS = 5000, /* how often idle devices' windows are looked for */
    SESSION_LOAD_BACKOFF_MIN_MS = 100,
    SESSION_LOAD_BACKOFF_MAX_MS = 5000,
};

struct sessions {
    struct dev *devs;   /* slots: engine slots, then the UDP devices' */
    uint32_t slots;     /* conns_max + udp_devices_max */
    uint32_t *udp_free; /* free UDP device slots, a stack */
    uint32_t udp_free_len;
    struct imap owned;      /* IMEI -> slot of the devices this shard owns */
    struct dedup_pool wins; /* one window per connection slot */
    /* Devices whose state load waits to be sent (control link down or full): engine keys. */
    uint64_t *load_queue;
    uint32_t load_head, load_len;
    /* Loads the database refused wait, shard-wide, until load_retry_ms: a backoff from
     * SESSION_LOAD_BACKOFF_MIN_MS doubling to _MAX_MS, back to 0 after a load is answered. */
    uint64_t load_retry_ms;
    uint32_t load_backoff_ms;
    struct ratelimit log_load_failed;
    struct ratelimit log_load_busy; /* "device's row locked" */
    /* The allow-list walk: slots [allow_cursor, conns_max) still to check, one query of up to
     * SESSION_ALLOW_CHUNK IMEIs in flight. */
    unsigned allow_gen;
    uint32_t allow_cursor, allow_checked;
    uint64_t allow_closed;
    bool allow_in_flight;
    uint64_t next_release_ms;
    char allow_imeis[SESSION_ALLOW_CHUNK * 18 + 4];
    struct ratelimit log_replaced; /* "device connected again from another address" */
};

int session_setup(struct shard *s, char *err, size_t cap);
void session_teardown(struct shard *s);

/* The session of the connection in engine slot `slot`. */
static inline struct dev *session_dev(const struct shard *s, uint32_t slot)
{
    return &s->sess->devs[slot];
}

/* Whether slot is a UDP device's (no connection behind it). */
static inline bool session_is_udp(const struct shard *s, uint32_t slot)
{
    return slot >= s->cfg->conns_max;
}

/* Closes the connection on (slot, gen) (engine_close: on_close follows), or a UDP device's slot
 * at once. Returns 0, or -ESTALE when it is gone already. */
int session_close(struct shard *s, uint32_t slot, uint32_t gen);

/* A datagram of imei, which this shard owns and which has no slot: opens a UDP device and loads
 * its state (DEV_LOADING). Returns its slot, or -1 when every UDP device slot is taken. */
int64_t session_udp_open(struct shard *s, uint64_t imei, uint64_t owner_hint);
/* UDP devices open now. */
uint32_t session_udp_devices(const struct shard *s);

/* The engine opened a connection (accepted, or handed over: the caller then calls
 * session_handshake with the handoff key's IMEI). proxied: its PROXY header comes first
 * (DEV_PROXY until session_header_read). */
void session_on_open(struct shard *s, uint32_t slot, uint32_t gen, bool proxied);
/* The connection's PROXY header was read: its handshake is next. */
void session_header_read(struct shard *s, uint32_t slot);

enum session_handshake {
    SESSION_REFUSED,    /* answered 0x00: close */
    SESSION_HANDED_OFF, /* passed to the owner shard */
    SESSION_OWNED,      /* owned here: its state load is on its way */
};
/* The device's IMEI arrived (more_bytes: bytes follow it in the same read, which a device never
 * sends before our answer). owner_hint: the owner token this shard's uncommitted batches carry
 * for the IMEI (batch_pending_owner; 0: none), what its state load claims to still hold when no
 * older connection of the IMEI is here (session_udp_open takes the same). */
enum session_handshake session_handshake(struct shard *s, uint32_t slot, uint32_t gen,
                                         uint64_t imei, bool more_bytes, uint64_t owner_hint);

/* The answer to a state load (key: the connection's engine_key; res NULL when the link dropped).
 * pending: the newest snapshot of the device's window in an uncommitted batch, or NULL (it knows
 * more than the database). Returns true when the handshake was accepted now (0x01 sent): then
 * *has_commands says whether the device has open commands. */
bool session_on_load(struct shard *s, uint64_t key, const PGresult *res,
                     const struct dedup *pending, bool *has_commands);
/* The device of a state load's key while its load is awaited, or NULL (gone meanwhile). */
const struct dev *session_loading(const struct shard *s, uint64_t key);
/* Sends the loads that wait, while the control link takes them. */
void session_send_loads(struct shard *s);

/* An open device's packet arrived while its window is released (dev.dormant): its state is
 * loaded again and the connection held until then (the caller answers ENGINE_HOLD). */
void session_reload(struct shard *s, uint32_t slot);

/* A batch holding imei committed: a state load of it in flight may predate that COMMIT and is
 * asked again when it answers. */
void session_mark_load_stale(struct shard *s, uint64_t imei);
/* Closes the connection that owns imei now, if any and if it writes under owner token `owner` (its
 * window may count records that will never be stored: it must reconnect and load its state). A
 * connection under another token loaded its window from the database after a takeover, without
 * this shard's older batches: it is left alone. */
void session_close_owner(struct shard *s, uint64_t imei, uint64_t owner);
/* The slot of the TCP connection this shard owns for imei; -1 when none (a device known over UDP
 * only has no connection: commands wait for one). */
int64_t session_conn_of(const struct shard *s, uint64_t imei);

/* The slot of the device (a connection's, or a UDP device's) this shard owns for the IMEI in row
 * `row`, column 0, of a query's answer; -1 when none is here (any more). */
int64_t session_owned_slot_of_row(const struct shard *s, const PGresult *res, int row);

/* A chunk of the shard's devices as a bigint[] literal ("{imei,imei}") in buf (cap bytes, room
 * for max IMEIs): the slots from *cursor on for which pick() says yes, at most max of them;
 * *cursor moves past the last slot looked at. Returns how many were written. */
unsigned session_imei_array(struct shard *s, uint32_t *cursor, unsigned max,
                            bool (*pick)(struct shard *s, uint32_t slot), char *buf, size_t cap);

/* The connection is closing (after the command side's own on_close). */
void session_on_close(struct shard *s, uint32_t slot, uint32_t gen);

/* One step of the allow-list walk a SIGHUP starts (with --devices known), and its answer. */
void session_allowlist_step(struct shard *s);
void session_on_allowlist(struct shard *s, const PGresult *res);
/* Releases the windows of open devices quiet for state_idle_s (when due). */
void session_release_idle(struct shard *s, uint64_t ms);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_SESSION_H */
