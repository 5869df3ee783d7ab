/* shared.h — what the shard threads of one process share with each other, with main (run.c) and
 * with the metrics endpoint: the configuration, every shard's counters, and the start-up
 * handshake.
 *
 * The configuration and the router are read-only once the shards start. Each shard's counters
 * are written by that shard only (shard/stat.h: stat_add on the shard, stat_read elsewhere); the
 * atomics below are the only other shared state. */
#ifndef AVLGATE_GATEWAY_SHARED_H
#define AVLGATE_GATEWAY_SHARED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/prom_hist.h"
#include "gateway/router.h"
#include "shard/engine.h"
#include "shard/proxyhdr.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cidr_list;

struct ingest_config {
    struct sockaddr_storage listen_addr;
    socklen_t listen_addr_len;
    unsigned shards;
    bool pin;
    bool directus_bus; /* PUBLISH Directus's bus event for each public.commands row written */
    const char *pg_conninfo;
    const char *instance;
    uint32_t batch_rows;      /* seal a batch at this many rows */
    uint32_t batch_ms;        /* or when its first row is this old */
    uint32_t batches;         /* batches per shard (the row ring), >= 2 */
    uint32_t txn_timeout_ms;  /* a batch statement running longer is cancelled; 0: none */
    uint32_t conns_max;       /* per shard */
    uint32_t bufs, buf_bytes; /* provided receive buffers per shard */
    uint32_t idle_timeout_s;  /* 0: none */
    uint32_t state_idle_s;    /* release a quiet device's duplicate window after this; 0: never */
    uint32_t frame_timeout_s; /* 0: none */
    uint32_t handshake_timeout_s; /* close a connection with no valid IMEI by then; 0: never */
    uint32_t frame_bytes_max;
    uint32_t reasm_bytes_max; /* reassembly memory per shard (partial frames, paused bytes) */
    bool devices_known;       /* accept only IMEIs enabled in public.devices */
    /* --proxy-protocol: a PROXY header before each handshake, from proxy_from's peers only */
    bool proxy_protocol;
    const struct cidr_list *proxy_from;
    enum copyenc_layout io_layout; /* how rows hold their IO (gateway/copyenc.h) */
    uint32_t wait_batch_us;        /* engine: wait this long for more completions once one is in */
    uint32_t drain_timeout_ms;     /* on stop: how long to wait for the last commits and ACKs */
    int metrics_fd;                /* listening socket of the metrics endpoint (shard 0), or -1 */
    const char *version;
    /* Commands (gateway/delivery.c, registry.c, intake.c). redis_host NULL: no registry and no
     * intake; commands are still delivered on connect and by the sweep. */
    const char *redis_host; /* an IP address */
    int redis_port;
    /* AUTH on every Redis link; NULL: none */
    const char *redis_password;
    uint32_t cmd_sweep_s;    /* look for open commands of connected devices this often; 0: off */
    uint32_t cmd_timeout_s;  /* wait this long for an answer before sending again */
    uint32_t cmd_attempts;   /* sends before a command fails */
    uint32_t registry_ttl_s; /* TTL of avlgate:dev:{imei}, refreshed every third of it */
    /* UDP (gateway/udp.c): udp false: no UDP socket. */
    bool udp;
    struct sockaddr_storage udp_addr;
    socklen_t udp_addr_len;
    uint32_t udp_devices_max; /* devices known over UDP only, per shard */
    uint32_t udp_bytes_max;   /* the longest datagram taken */
};

/* Why a connection was replaced by a second one of the same IMEI (session.c), as
 * avlgate_connections_replaced_total{reason} says: the IP addresses of the two peers are the
 * same (a reconnect), differ (a cloned or spoofed IMEI?), or could not be read. */
enum replaced_reason {
    REPLACED_SAME_ADDRESS,
    REPLACED_OTHER_ADDRESS,
    REPLACED_UNKNOWN_ADDRESS,
    REPLACED_REASONS
};

/* Why a datagram was not taken although it was valid (udp.c), as
 * avlgate_udp_datagrams_dropped_total{reason} says. Never acknowledged: the device sends it again.
 */
enum udp_drop {
    UDP_DROP_BACKLOG_FULL,   /* no room to keep it while its device's state loads or the ring
                                is full, or to hand it to its owner shard */
    UDP_DROP_DEVICES_FULL,   /* a new device and --udp-devices-max reached */
    UDP_DROP_UNKNOWN_DEVICE, /* --devices known and the IMEI is not enabled */
    UDP_DROP_DEFERRED,       /* its device's rows could not be written in time (batch.c) */
    UDP_DROP_DEVICE_CLOSED,  /* held for its device's state load, and the device was closed
                                meanwhile (replaced by a TCP connection, SIGHUP, ...) */
    UDP_DROPS
};

/* Invalid datagrams (never acknowledged) by reason: codec errors at -err (avl.h), and these. */
enum { UDP_INVALID_TOO_LONG = 30, UDP_INVALID_IMEI_RANGE = 31, UDP_INVALID_REASONS = 32 };
_Static_assert(-AVL_E_ERR_MIN < UDP_INVALID_TOO_LONG, "the codec's errors come first");

/* Why a connection was refused before its handshake (gateway/proxy.c), as
 * avlgate_proxy_refused_total{reason} says: the header's errors at -proxyhdr_result (their
 * proxyhdr_result_name), and PROXY_REFUSED_SOURCE: its peer is not in --proxy-from. */
enum { PROXY_REFUSED_SOURCE = PROXYHDR_ERRORS + 1, PROXY_REFUSED_REASONS };

/* The fields of a record that may be stored NULL: records_out_of_range's index. */
enum ingest_field { INGEST_FIELD_ANGLE = 0, INGEST_FIELD_SPEED, INGEST_FIELDS };

/* Counters of one shard, on their own cache lines, written by that shard only (shard/stat.h:
 * stat_add on the shard, stat_read from the metrics endpoint). */
struct ingest_stats {
    uint64_t handshakes, handshake_rejected, handshake_errors, handed_off;
    uint64_t replaced[REPLACED_REASONS]; /* by enum replaced_reason */
    /* --proxy-protocol: headers read (with a client address, or LOCAL/UNKNOWN), connections
     * refused before their handshake by reason, handed-in connections whose address never came
     * (the socket's is used) */
    uint64_t proxy_proxied, proxy_local, proxy_addr_lost;
    uint64_t proxy_refused[PROXY_REFUSED_REASONS];
    uint64_t packets, records, records_stored, records_duplicate, packets_acked, acks_stale;
    uint64_t packets_invalid, records_rejected, packets_rejected_data;
    uint64_t packets_moved; /* not stored: the device was taken over elsewhere (schema 007) */
    uint64_t records_out_of_range[INGEST_FIELDS]; /* stored with that field NULL (copyenc.h) */
    uint64_t batches_timed_out; /* a statement ran past --txn-timeout-ms: retried split */
    uint64_t packets_deferred;  /* not stored for now (their device's rows are locked): the
                                   connection closed, the device re-sends (batch.c) */
    uint64_t batches_committed, rows_committed, batches_retried, batches_unknown;
    uint64_t batches_data_error, backpressure_pauses, gprs_frames, pings;
    uint64_t invalid_by_reason[32]; /* by -avl_err, copyenc errors at 25 + -err */
    uint64_t state_load_failures, state_reloads, windows_released;
    uint64_t state_load_busy; /* the device's row stayed locked past the claim's timeout */
    uint64_t devices_revoked; /* closed after SIGHUP: no longer enabled in public.devices */
    uint64_t devices_moved;   /* closed: the registry names a newer connection elsewhere */
    /* Commands: frames written (a resend counts again), outcomes, and what was refused. */
    uint64_t cmds_fetched, cmds_sent, cmds_answered, cmds_failed, cmds_expired;
    uint64_t cmd_responses_unexpected, cmd_responses_truncated, cmd_frames_ignored;
    uint64_t cmd_payload_too_long, cmd_wakes, cmd_wakes_offline, cmd_entries_invalid;
    uint64_t cmd_entries_unrouted, cmd_query_failures, cmd_sweeps;
    uint64_t registry_writes, registry_errors, replies_published, replies_unpublished;
    uint64_t bus_published, bus_unpublished; /* --directus-bus events (delivery.c) */
    /* UDP (the datagrams received are the engine's udp_received): handed to their owner shard,
     * taken into a batch, acknowledged, all of whose records were already stored, invalid,
     * dropped. */
    uint64_t udp_handed_off, udp_taken, udp_acked, udp_duplicate;
    uint64_t udp_invalid[UDP_INVALID_REASONS];
    uint64_t udp_dropped[UDP_DROPS];
    uint64_t udp_devices; /* gauge: devices over UDP only, open now */
    /* Gauges and copies the shard publishes every loop turn (stat_set). */
    uint64_t conns_open, ring_busy, ring_batches;
    uint64_t pg_up[2], pg_connects[2], pg_disconnects[2], pg_connect_failures[2];
    uint64_t redis_up[2]; /* registry, intake (shard 0); 0 also when not configured */
    uint64_t redis_configured;
    uint64_t listening;            /* accepting connections */
    struct prom_hist copy_latency; /* a batch's transaction: submit to COMMIT's answer */
    struct prom_hist ack_latency;  /* a packet: taken into a batch to its ACK queued */
    /* The same, in stages: in the filling batch (taken -> sealed), sealed and waiting for the
     * sink (-> COPY submitted), its transaction (-> COMMIT answered and the ACK queued). */
    struct prom_hist stage_fill, stage_queue, stage_commit;
} __attribute__((aligned(64)));

_Static_assert((int)ENGINE_SHARDS_MAX == (int)ROUTER_SHARDS_MAX,
               "the router places devices on exactly the shards the engines can link");

/* What every shard thread shares. */
struct ingest_shared {
    const struct ingest_config *cfg;
    const struct router *router;
    atomic_bool stop;
    /* Start-up handshake between the shard threads and main: each creates its ring, publishes
     * its descriptor, then waits until every shard did. */
    int ring_fds[ENGINE_SHARDS_MAX];
    struct engine *engines[ENGINE_SHARDS_MAX];                  /* the mailboxes between shards */
    const struct engine_stats *engine_stats[ENGINE_SHARDS_MAX]; /* their counters (metrics) */
    atomic_uint rings_ready;
    atomic_int start_error; /* first shard's init error (negative errno), 0 if none */
    atomic_uint shards_done;
    atomic_uint loops_done;     /* engines out of their loop: none is freed before all are */
    atomic_uint allowlist_gen;  /* SIGHUP: each shard re-checks its devices when it changes */
    atomic_bool shard_failed;   /* a shard's loop ended with an error: main stops them all */
    struct ingest_stats *stats; /* cfg->shards entries, each written by its shard only */
};

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_SHARED_H */
