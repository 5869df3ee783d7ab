/* udp.h — loadgen's simulated trackers over UDP (--udp), Teltonika's UDP transport
 * (TELTONIKA.md §5): each packet is one datagram (u16 length, u16 packet id, 0x01, u8 AVL packet
 * id, the IMEI, the AVL body; no CRC) sent to the --connect address, answered once the rows are
 * committed by the 7-byte ACK `00 05 <packet id> 01 <AVL packet id> <records>`.
 *
 * A worker with --udp holds no connections: it has UDP_SOCKETS_PER_WORKER sockets at most, each
 * bound to its own ephemeral port (so the gateway's SO_REUSEPORT spreads them over its shards),
 * its devices spread over them (device di on socket di % sockets), and watches them with one-shot
 * engine_poll readiness on its engine, which is only its loop and clock here. A device has one
 * datagram in flight: the next packet only after the ACK of this one with the same packet id,
 * AVL packet id and record count (then at once with --drain, else on its --rate / --period-s
 * schedule). Without it within --udp-retry-ms the device sends the very same bytes again; an
 * ACK naming another AVL packet id is stale and changes nothing, one with another record count
 * is counted and changes nothing either (the re-send follows). The records are records.h's, so
 * --verify reads them back as for TCP.
 *
 * Ownership, lifetimes, threads: the main thread calls udp_init (after worker_init, before the
 * worker's thread starts) and udp_free (after the thread ended and engine_free), and
 * udp_device_records after the thread ended; w->udp is the worker's in between. udp_engine_init
 * and udp_start run on the worker's thread, then the engine's callbacks (engine_run). */
#ifndef AVLGATE_LOADGEN_UDP_H
#define AVLGATE_LOADGEN_UDP_H

#include <stddef.h>
#include <stdint.h>

#include "loadgen/device.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    UDP_SOCKETS_PER_WORKER = 64,
    /* The largest datagram's payload over IPv4 (65535 - 20 - 8): no packet is larger. */
    UDP_DATAGRAM_BYTES_MAX = 65507,
};

/* Makes worker w's UDP devices and sockets (bound, non-blocking, large buffers) for the fleet's
 * --connect family and source addresses. Returns 0, or -errno with what failed in err (bind:
 * which address). udp_free releases what was made either way. */
int udp_init(struct worker *w, char *err, size_t err_cap);
/* Creates the worker's engine (no listener, no connections: its loop, clock and polls) with
 * the UDP callbacks. On the worker's own thread, which then runs it. Returns 0, or -errno with
 * the reason in w->err. */
int udp_engine_init(struct worker *w);
/* Arms the sockets' polls and schedules every device's first packet (spread over --ramp-s, or
 * on its --rate / --period-s phase, or at once) and the first publication. The worker's thread,
 * after fleet->t0_ns is set, before engine_run. */
void udp_start(struct worker *w);
/* Device di's records (0 .. devs_len - 1), as worker_device_records: acknowledged, and sent
 * (the acknowledged ones and the packet in flight, if it went out at least once). After the
 * worker's thread ended. */
void udp_device_records(const struct worker *w, uint32_t di, uint32_t *acked, uint32_t *sent);
/* Closes the sockets and frees what udp_init made; w->udp is NULL after. */
void udp_free(struct worker *w);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_UDP_H */
