/* packetgen.h — seeded, deterministic generator of Teltonika packets (Codec 8, 8E, 16 over TCP
 * and UDP; Codec 12..15 GPRS frames) for the benchmarks, the round-trip tests and loadgen.
 *
 * Two modes:
 *   PKTGEN_REALISTIC  records shaped like the public corpus (../shared/corpus): FMB-style IO
 *                     sets per codec, increasing timestamps in 2019..2026, a random-walk
 *                     position, plausible sensor values. For benchmarks and load.
 *   PKTGEN_ARBITRARY  everything the wire format allows, biased to the edges: 0 and 255
 *                     records, empty IO, every width, ids 0 and max, values 0 and max, NX
 *                     lengths 0 and above 255, timestamps 0 and AVL_TS_MS_END - 1, INT32_MIN /
 *                     INT32_MAX coordinates, negative altitude, IO elements given out of
 *                     group order. For round-trip tests.
 *
 * No allocation: the caller owns struct pktgen (the PRNG stream and a simulated device) and
 * struct pktgen_packet (the sources of one packet). A pktgen_packet is large (about 250 KB):
 * make it static or put it on the heap, not on a small thread stack. The same seed and the same
 * sequence of calls give the same bytes on every platform (integer arithmetic only).
 * Not thread-safe per object; separate objects may be used from separate threads.
 */
#ifndef AVLGATE_LOADGEN_PACKETGEN_H
#define AVLGATE_LOADGEN_PACKETGEN_H

#include <stddef.h>
#include <stdint.h>

#include "codec/avl.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PKTGEN_IO_MAX = 8192,               /* IO elements in one packet, all records together */
    PKTGEN_NX_BYTES_MAX = 32768,        /* NX value bytes in one packet */
    PKTGEN_FRAME_BYTES_MAX = 65536,     /* no generated TCP frame or datagram is larger */
    PKTGEN_ARBITRARY_BYTES = 16384,     /* default budget of an arbitrary packet */
    PKTGEN_RECORDS_RANDOM = 0x100,      /* records_len: let the mode choose the count */
    PKTGEN_GPRS_TEXT_BYTES_MAX = 16384, /* message text bytes in one GPRS frame */
};

enum pktgen_mode {
    PKTGEN_REALISTIC = 0,
    PKTGEN_ARBITRARY = 1,
};

/* Per-codec order in which a simulated device lists its IO ids (one slot per AVL codec). */
enum { PKTGEN_CATALOGUE_MAX = 64 };

/* One PRNG stream (xoshiro256**, seeded through splitmix64) and one simulated device. */
struct pktgen {
    uint64_t s[4];
    uint64_t device_salt; /* per-device constants (ICCID, cell id) hash from it */
    uint64_t imei;        /* 15 digits, 35xxxxxxxxxxxxx or 86xxxxxxxxxxxxx */
    uint64_t ts_ms;       /* last realistic timestamp */
    int32_t lon_e7;       /* last realistic fix */
    int32_t lat_e7;
    int16_t altitude_m;
    uint16_t angle_deg;
    uint32_t odometer_m;
    uint16_t udp_packet_id; /* next UDP packet id; incremented per datagram */
    uint8_t udp_avl_packet_id;
    uint8_t order_len[3][4];
    uint8_t order[3][4][PKTGEN_CATALOGUE_MAX]; /* [codec slot][group]: catalogue indexes */
};

/* The sources of one AVL packet: records whose IO arrays and NX bytes live in the pools here.
 * recs[i].io points into io[]; NX elements point into nx[]. Valid until the next reset. */
struct pktgen_packet {
    uint8_t codec; /* 8, 8E or 16 */
    uint16_t records_len;
    uint32_t bytes_max;  /* budget: the TCP frame and the UDP datagram stay within it */
    uint32_t body_bytes; /* codec id .. count 2 (the TCP data length D, the UDP body) */
    uint32_t io_len;     /* io[] used */
    uint32_t nx_len;     /* nx[] used */
    uint8_t shape[5];    /* realistic mode: group counts shared by the packet's records */
    uint8_t shape_set;
    /* UDP header of the last pktgen_packet_udp() (0 otherwise) */
    uint16_t udp_packet_id;
    uint8_t udp_avl_packet_id;
    uint64_t imei;
    struct avl_record_src recs[AVL_RECORDS_MAX];
    struct avl_io_elem io[PKTGEN_IO_MAX];
    uint8_t nx[PKTGEN_NX_BYTES_MAX];
};

/* The messages of one GPRS frame; texts live in text[]. */
struct pktgen_gprs {
    uint8_t codec; /* 12, 13, 14 or 15 */
    uint16_t msgs_len;
    uint32_t text_len; /* text[] used */
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    uint8_t text[PKTGEN_GPRS_TEXT_BYTES_MAX];
};

/* Seeds the stream and draws a device (IMEI, start time 2019..2025, start position anywhere,
 * its IO id order). Any seed is fine, 0 included. */
void pktgen_init(struct pktgen *g, uint64_t seed);

/* Restarts g's random stream from seed and nothing else: the simulated device (IMEI, salt,
 * last time and fix, odometer, IO id order) stays. loadgen copies a device from a template,
 * gives it its own salt and reseeds it per packet, which costs a fraction of pktgen_init's
 * catalogue shuffles and keeps a packet reproducible from (device, packet number). */
void pktgen_reseed(struct pktgen *g, uint64_t seed);

/* The next 64 random bits. */
uint64_t pktgen_u64(struct pktgen *g);
/* Uniform in [0, bound); bound must be > 0. Unbiased (rejection). */
uint64_t pktgen_below(struct pktgen *g, uint64_t bound);
/* n random bytes into out. */
void pktgen_fill_bytes(struct pktgen *g, uint8_t *out, size_t n);

/* Empties pkt for codec (8, 8E or 16) with a byte budget: the TCP frame and the UDP datagram
 * (with an IMEI of up to 17 digits) of the packet stay within bytes_max, which is clamped to
 * PKTGEN_FRAME_BYTES_MAX. */
void pktgen_packet_reset(struct pktgen_packet *pkt, uint8_t codec, uint32_t bytes_max);

/* Appends one record in the given mode. Returns 0, or -ENOSPC (pkt unchanged) when the packet
 * already has AVL_RECORDS_MAX records or a minimal record would not fit its budget or pools.
 * A realistic record that does not fit whole is cut short (fewer IO elements); an arbitrary
 * record takes a random share of what the budget leaves. */
int pktgen_record(struct pktgen *g, enum pktgen_mode mode, struct pktgen_packet *pkt);

/* Resets pkt (codec, bytes_max) and appends records_len records, or a count the mode chooses
 * when records_len is PKTGEN_RECORDS_RANDOM (realistic: 1..15; arbitrary: 0, 1, a few, up to
 * 255, against a budget drawn between tiny and bytes_max). Returns the records generated: fewer
 * than asked when the budget ran out. */
unsigned pktgen_fill(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                     uint32_t bytes_max, struct pktgen_packet *pkt);

/* Exact wire sizes, computed from the sources without encoding (the tests compare them with
 * what the encoder writes). */
uint32_t pktgen_record_bytes(uint8_t codec, const struct avl_record_src *src);
uint32_t pktgen_io_bytes(uint8_t codec, const struct avl_record_src *src); /* N1 .. end */
uint32_t pktgen_tcp_bytes(const struct pktgen_packet *pkt);
uint32_t pktgen_udp_bytes(const struct pktgen_packet *pkt, uint64_t imei);

/* pktgen_fill() with bytes_max = min(cap, PKTGEN_FRAME_BYTES_MAX), then avl_encode_tcp() into
 * out. Returns the bytes written (> 0) or an avl_err; pkt keeps the sources for comparison. */
int pktgen_packet_tcp(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                      struct pktgen_packet *pkt, uint8_t *out, size_t cap);

/* The same as a UDP datagram. Realistic: the device's IMEI, packet id and AVL packet id (both
 * advance per call). Arbitrary: random ids and an IMEI of 1..17 digits. The header values used
 * are stored in pkt->udp_packet_id, udp_avl_packet_id and imei. */
int pktgen_packet_udp(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                      struct pktgen_packet *pkt, uint8_t *out, size_t cap);

/* Fills gp with the messages of one GPRS frame for codec (12..15) whose encoded frame stays
 * within bytes_max. Realistic: one command or response like the corpus ("getinfo", "getver",
 * "setdigout 11", "DI1:1 DI2:0 ...", Codec 13 "GTSL|...", Codec 15 "Hello!\n").
 * Arbitrary: 1..N messages of every valid type for the codec, texts of 0..N binary bytes,
 * timestamps 0..UINT32_MAX, BCD IMEIs up to 16 digits. Returns the message count. */
unsigned pktgen_gprs_fill(struct pktgen *g, enum pktgen_mode mode, uint8_t codec,
                          uint32_t bytes_max, struct pktgen_gprs *gp);
/* Exact encoded frame size of gp. */
uint32_t pktgen_gprs_bytes(const struct pktgen_gprs *gp);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_PACKETGEN_H */
