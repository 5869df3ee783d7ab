/* device.h — loadgen's simulated trackers: the settings the whole fleet shares (struct fleet),
 * and a worker, one engine with its block of devices, each walking a tracker's life: over TCP
 * (connect, handshake, packets and their ACKs, faults, commands answered) in device.c, or over
 * UDP (--udp: datagrams, their ACKs, re-sends) in udp.c. The worker's sizing, its per-second
 * publication and its ACK latencies, which both share, are device.c's.
 *
 * Ownership, lifetimes, threads: the main thread owns the struct fleet (static storage, for the
 * whole run) and fills it before any worker starts; t0_ns and t0_wall_ms it sets between the
 * workers' two start barriers. The workers then only read it, except stop, devices_done and the
 * timeline, which are made for sharing. The main thread owns the array of struct worker: it
 * calls worker_init and worker_free, and reads a worker's results (rc, err, c, ack, connect,
 * all_connected_ns, worker_device_records) only after joining its thread. Everything else in a
 * worker belongs to its thread while it runs: worker_engine_init, worker_start, then the
 * engine's callbacks (engine_run). */
#ifndef AVLGATE_LOADGEN_DEVICE_H
#define AVLGATE_LOADGEN_DEVICE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#include "codec/avl.h"
#include "loadgen/hdr_hist.h"
#include "loadgen/options.h"
#include "loadgen/packetgen.h"
#include "loadgen/timeline.h"
#include "loadgen/timers.h"
#include "shard/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NS_PER_S  UINT64_C(1000000000)
#define NS_PER_MS UINT64_C(1000000)

enum {
    RECORD_SEQ_BYTES = 10, /* the sequence element of a record (--verify): id u16 + u64 at most */
    DEVICE_TEMPLATES = 64, /* packetgen devices (IO id orders) the fleet is made of */
};

/* The run as every worker sees it. */
struct fleet {
    struct options o;
    struct sockaddr_storage dst;
    socklen_t dst_len;
    uint32_t src_ips, src_base; /* host order */
    uint32_t threads;
    uint64_t t0_ns, t0_wall_ms;
    uint64_t warmup_ns; /* o.warmup_s */
    uint64_t nonce;
    uint64_t period_ns; /* 0: drain */
    uint64_t step_ms;   /* between two records of a device */
    uint32_t chunk_bytes, pkt_budget;
    uint64_t ack_timeout_ns, storm_every_ns;
    uint8_t *reply; /* the Codec 12 answer to every command, encoded once */
    size_t reply_len;
    FILE *cmdlog;
    atomic_bool stop;
    atomic_uint devices_done; /* devices that reached --packets */
    struct timeline timeline;
};

enum conn_err { CE_REFUSED, CE_TIMEOUT, CE_ADDRNOTAVAIL, CE_OTHER, CE_KINDS };

/* What a worker's devices did; the main thread sums the workers' after the run. packets_sent
 * counts first attempts and resends the attempts after them, on either transport; bad_frame
 * also counts UDP datagrams from the gateway that are no ACK of a device of ours. */
struct counters {
    uint64_t dials, handshakes, rejected, connect_failed[CE_KINDS];
    uint64_t packets_sent, resends, packets_acked, records_acked;
    uint64_t bad_ack, bad_frame, unexpected_close, ack_timeout, handshake_timeout;
    uint64_t malformed_sent, malformed_closed, malformed_acked;
    uint64_t storm_drops, commands, replies, gprs_other, arena_waits, dial_slot_waits;
    /* --udp: datagrams that went (first attempts and re-sends); ACKs naming a packet no longer
     * in flight (an earlier AVL packet id: the ACK of an attempt already answered); ACKs of the
     * packet in flight with another record count; sends the socket refused for now (EAGAIN,
     * ENOBUFS: tried again 1 ms later) or for good (an error; the datagram counts as lost). */
    uint64_t udp_datagrams, udp_stale_acks, udp_bad_count_acks, udp_send_waits, udp_send_errors;
};

/* The errors among c's counts (the summary's errors=, the timeline's errors). */
uint64_t counters_errors(const struct counters *c);
/* Adds every count of c to sum. */
void counters_add(struct counters *sum, const struct counters *c);

struct dev;      /* a TCP device (device.c) */
struct slotinfo; /* what the worker keeps per engine slot (device.c) */
struct udp;      /* the UDP devices and sockets of a --udp worker (udp.c) */

struct worker {
    unsigned id;
    struct fleet *fleet;
    struct engine *e;
    pthread_t thread;
    int rc;
    char err[256];

    uint32_t base, devs_len; /* global index of its first device; its devices */
    struct dev *devs;        /* TCP */
    struct udp *udp;         /* --udp (then the TCP parts stay idle); NULL otherwise */
    struct timers timers;    /* one per device, on either transport */
    uint32_t *cq;            /* connect queue: a ring of devs_len */
    uint32_t cq_head, cq_len;
    struct slotinfo *slots;
    uint32_t slots_len;
    uint8_t *chunks; /* the arena: chunks_len x fleet->chunk_bytes */
    uint32_t *chunk_free, chunk_free_len, chunks_len;

    uint32_t inflight, inflight_max; /* DIALING + HANDSHAKE */
    double tokens, tokens_per_ns, tokens_max;
    uint64_t tokens_ns;
    uint64_t rnd; /* xorshift state for choices that need not be reproducible */
    uint64_t next_pub_ns, next_storm_ns;

    uint32_t connected; /* READY, PACKET or DONE */
    uint32_t ever;      /* devices accepted at least once */
    uint64_t all_connected_ns;
    struct counters c, c_pub; /* totals; totals at the last publication */
    struct hdr_hist ack, ack_sec, connect;

    struct pktgen gen;
    struct pktgen *templates; /* DEVICE_TEMPLATES, the same in every worker */
    struct pktgen_packet *pkt;
    struct avl_io_elem io[PKTGEN_IO_MAX + AVL_RECORDS_MAX];
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
};

/* Sizes worker `id` of fleet f for the devices base .. base + devs_len - 1 and an engine of
 * conns_max slots: everything its loop will use, so the loop allocates nothing (with --udp only
 * what both transports share: udp_init makes the rest). Returns 0 or -ENOMEM; worker_free
 * releases what was made either way. The main thread, before the worker's thread starts; f must
 * outlive the worker. */
int worker_init(struct worker *w, struct fleet *f, unsigned id, uint32_t base, uint32_t devs_len,
                uint32_t conns_max);
/* Creates the worker's engine (it only dials) with the devices' callbacks. On the worker's own
 * thread, which then runs it. Returns 0, or -errno with the reason in w->err. */
int worker_engine_init(struct worker *w);
/* Schedules the first connections (spread over --ramp-s, or all queued at once), the first
 * publication and reconnect storm. The worker's thread, after f->t0_ns is set, before
 * engine_run. */
void worker_start(struct worker *w);
/* Device di's records (0 .. devs_len - 1): acknowledged, and sent (the acknowledged ones and
 * the packet in flight, if it went out at least once). After the worker's thread ended. */
void worker_device_records(const struct worker *w, uint32_t di, uint32_t *acked, uint32_t *sent);
/* Releases what worker_init made (not the engine: engine_free). */
void worker_free(struct worker *w);

/* Adds the interval that just ended to the fleet's timeline and schedules the next publication
 * (w->next_pub_ns). Once a second, on the worker's thread (its on_tick). */
void worker_publish(struct worker *w, uint64_t now);
/* Records the latency of an ACK received at now for a packet that went at sent_ns: in the
 * second's histogram always, in the run's after the warm-up. The worker's thread. */
void worker_ack_latency(struct worker *w, uint64_t now, uint64_t sent_ns);

/* When packet number pkt_no of device g (its global index) is due: never before its place on
 * the device's schedule (phases spread uniformly over the period); 0 (at once) with --drain. */
static inline uint64_t fleet_due_ns(const struct fleet *f, uint32_t g, uint32_t pkt_no)
{
    if (!f->period_ns)
        return 0;
    uint64_t phase = (uint64_t)((double)f->period_ns * g / f->o.devices);
    return f->t0_ns + phase + (uint64_t)pkt_no * f->period_ns;
}

/* The finaliser of splitmix64: the run's reproducible choices hash (seed, salt, device). */
static inline uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

static inline uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_DEVICE_H */
