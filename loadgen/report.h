/* report.h — what avlgate-loadgen prints: the start line and one line a second on stderr
 * (--progress), the key=value summary line and the verify: line on stdout (bench/e2e,
 * bench/connections, bench/commands and the tests parse them), the --json file, and the
 * messages that make the run fail.
 *
 * Ownership and threads: the main thread only. The summary and the seconds are the caller's;
 * report_seconds_push grows its array with realloc (report_seconds_free releases it). Nothing
 * here keeps a pointer past the call. */
#ifndef AVLGATE_LOADGEN_REPORT_H
#define AVLGATE_LOADGEN_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loadgen/device.h"
#include "loadgen/hdr_hist.h"
#include "loadgen/timeline.h"
#include "loadgen/verify.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The run, summed over the workers after they ended. */
struct summary {
    struct counters c;
    struct hdr_hist ack, connect;
    double elapsed_s, connect_all_s; /* connect_all_s: -1 when some device never connected */
    uint64_t connected_max, connected_end;
};

/* The seconds of the run as the main thread took them, for --json. */
struct report_seconds {
    struct timeline_sample *v; /* NULL until the first; a second that finds no memory is lost */
    size_t len, cap;
    uint64_t connected_max; /* over every second, stored or not */
};

/* Keeps one second. */
void report_seconds_push(struct report_seconds *tl, const struct timeline_sample *smp);
void report_seconds_free(struct report_seconds *tl);

/* The start line (--progress): devices, threads, source addresses, pacing, target. */
void report_start(FILE *f, const struct fleet *fl);
/* One second's line (--progress). */
void report_second(FILE *f, const struct timeline_sample *smp);
/* The summary as key=value pairs (json false: one line's content, without its newline) or as
 * JSON members (json true), the same keys in the same order. */
void report_summary(FILE *f, const struct fleet *fl, const struct summary *s, bool json);
/* The verify: line. */
void report_verify(FILE *f, const struct verify_result *v);
/* Writes the --json file: the summary, the verify result (v may be NULL) and the timeline.
 * Returns 0 or -errno. */
int report_json(const char *path, const struct fleet *fl, const struct summary *s,
                const struct report_seconds *tl, const struct verify_result *v);
/* Says on stderr what makes the run a failure in itself (TCP: nothing connected; UDP: no
 * datagram answered; a malformed packet acknowledged). Returns 1 if anything did, else 0. */
int report_failures(const struct fleet *fl, const struct summary *s);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_LOADGEN_REPORT_H */
