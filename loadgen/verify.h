/* verify.h — loadgen's end-of-run check that the gateway stored every acknowledged record
 * exactly once, from the sequence number each record carries as an IO element.
 *
 * Sequence layout (u64, an 8-byte IO value, id VERIFY_IO_ID, which fits Codec 8's 1-byte ids):
 *   bits 52..62  run nonce (a fresh one per run, so rows of earlier runs with the same IMEIs
 *                are told apart and ignored)
 *   bits 32..51  device index (0 .. VERIFY_DEVICES_MAX - 1)
 *   bits  0..31  the device's record counter (0, 1, 2, ...: records in the order it sent them)
 * Bit 63 stays 0, so the value survives PostgreSQL's bigint. */
#ifndef AVLGATE_LOADGEN_VERIFY_H
#define AVLGATE_LOADGEN_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    VERIFY_IO_ID = 250,
    VERIFY_NONCE_BITS = 11,
};
#define VERIFY_DEVICES_MAX (UINT32_C(1) << 20)

static inline uint64_t verify_seq(uint64_t nonce, uint32_t device, uint32_t record)
{
    return (nonce & ((1u << VERIFY_NONCE_BITS) - 1)) << 52 |
           (uint64_t)(device & (VERIFY_DEVICES_MAX - 1)) << 32 | record;
}

struct verify_result {
    uint64_t acked;          /* records acknowledged to the devices */
    uint64_t stored;         /* rows of this run found */
    uint64_t missing;        /* acknowledged records with no row */
    uint64_t duplicated;     /* records (acknowledged or not) with more than one row */
    uint64_t unacked_stored; /* records sent, never acknowledged, stored once (allowed) */
    uint64_t unexpected;     /* rows of this run naming a record no device sent */
    uint64_t foreign;        /* rows of these IMEIs from other runs (ignored) */
};

/* Reads the sequence of every row of telemetry.positions whose imei is in
 * [imei_base, imei_base + devices) (one COPY ... TO STDOUT, streamed) and checks, for device g,
 * that records 0 .. acked[g]-1 are there exactly once and records acked[g] .. sent[g]-1 at
 * most once. Blocking; call after the run. Returns 0 with *out filled (whether or not the
 * check passed: see verify_ok), or -1 with a message in err (connection or query failure). */
int verify_run(const char *conninfo, uint64_t imei_base, uint32_t devices, uint64_t nonce,
               const uint32_t *acked, const uint32_t *sent, struct verify_result *out, char *err,
               size_t err_cap);

/* True when nothing acknowledged is missing and nothing is stored twice or unexplained. */
static inline int verify_ok(const struct verify_result *r)
{
    return r->missing == 0 && r->duplicated == 0 && r->unexpected == 0;
}

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_VERIFY_H */
