/* options.h — avlgate-loadgen's command line: what the user asked for, as parsed and
 * range-checked, before anything is derived from it (main's set-up does that).
 *
 * Ownership and threads: options_parse fills a struct options the caller owns; its strings
 * point into argv, so they live as long as the process. Parsed once, on the main thread, before
 * any worker starts; read-only afterwards, from every thread. */
#ifndef AVLGATE_LOADGEN_OPTIONS_H
#define AVLGATE_LOADGEN_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    OPTIONS_REPLY_TEXT_MAX = 4096, /* the longest --command-reply */
};

enum pacing { PACE_DRAIN, PACE_RATE, PACE_PERIOD, PACE_IDLE };

struct options {
    const char *target;
    uint32_t devices;
    uint32_t threads; /* 0: enough for RING_DEVICES_MAX per ring */
    uint32_t src_ips; /* UINT32_MAX: automatic */
    const char *src_base;
    uint64_t imei_base;
    uint32_t records;
    uint32_t packet_bytes_max; /* 0: automatic */
    enum pacing pacing;
    double rate;     /* records/s, all devices */
    double period_s; /* per device */
    double duration_s;
    double warmup_s; /* ACKs in the first warmup_s are not in the summary percentiles */
    uint32_t packets;
    double connect_rate;
    double ramp_s;
    uint32_t connect_inflight;
    double connect_timeout_s;
    double ack_timeout_s;
    uint32_t reconnect_ms;
    bool udp;              /* --udp: datagrams to the --connect address, no connections */
    uint32_t udp_retry_ms; /* --udp: re-send a datagram whose ACK did not come in this long */
    double fragment;
    bool newest_first;
    double storm_every_s, storm_fraction;
    double slow;
    double malformed;
    uint64_t seed;
    bool verify;
    const char *pg;
    const char *command_reply;
    const char *command_log;
    bool progress;
    const char *json;
};

/* Parses argv into *o (defaults for what is not given). Returns 0; or 2 (usage error) after
 * printing what is wrong on stderr: a value out of range, two pacings, --verify without --pg, an
 * option that only TCP connections have (--fragment, --command-reply, ...) with --udp, or
 * --udp-retry-ms without it. --help prints the usage on stdout and exits 0. */
int options_parse(int argc, char **argv, struct options *o);
/* The usage text. */
void options_usage(FILE *f);
/* The pacing's name in the summary ("drain", "rate", "period", "idle"): a static string. */
const char *options_pacing_name(enum pacing pacing);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_OPTIONS_H */
