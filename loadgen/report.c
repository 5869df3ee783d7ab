/* report.c — what avlgate-loadgen prints (report.h): the key=value summary line and its JSON
 * twin, the latency quantiles in milliseconds, the per-second lines, the verify: line and the
 * final failure messages.
 *
 * Owns only the array of seconds it grows for the caller. Invariant: the summary's keys, their
 * order and their formats (%.3f for times and rates, integers for counts) are what the
 * benchmark scripts and tests parse, so they change only together with those; new keys go
 * after the old ones (transport: after pacing; the udp_ counts: last, 0 over TCP). The main thread
 * calls everything here, after the workers ended (report_start and report_second while they
 * run: they read only the fleet's settings and a taken second). */
#include "loadgen/report.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

void report_seconds_push(struct report_seconds *tl, const struct timeline_sample *smp)
{
    if (smp->n.connected > tl->connected_max)
        tl->connected_max = smp->n.connected;
    if (tl->len == tl->cap) {
        size_t cap = tl->cap ? 2 * tl->cap : 64;
        struct timeline_sample *bigger = realloc(tl->v, cap * sizeof *bigger);
        if (!bigger)
            return;
        tl->v = bigger;
        tl->cap = cap;
    }
    tl->v[tl->len++] = *smp;
}

void report_seconds_free(struct report_seconds *tl)
{
    free(tl->v);
    *tl = (struct report_seconds){0};
}

void report_start(FILE *f, const struct fleet *fl)
{
    fprintf(f,
            "avlgate-loadgen: %u devices, %u threads, %u source addresses, %s pacing, "
            "target %s %s\n",
            fl->o.devices, fl->threads, fl->src_ips, options_pacing_name(fl->o.pacing),
            fl->o.udp ? "udp" : "tcp", fl->o.target);
}

void report_second(FILE *f, const struct timeline_sample *smp)
{
    fprintf(f,
            "[%5.0fs] connected=%" PRIu64 " packets/s=%" PRIu64 " records/s=%" PRIu64
            " ack_p50=%.2fms ack_p99=%.2fms errors=%" PRIu64 "\n",
            smp->t_s, smp->n.connected, smp->n.packets, smp->n.records, smp->ack_p50_ms,
            smp->ack_p99_ms, smp->n.errors);
}

static uint64_t connect_failed_of(const struct counters *c)
{
    uint64_t n = 0;
    for (int k = 0; k < CE_KINDS; k++)
        n += c->connect_failed[k];
    return n;
}

/* One key of the summary: a count, or a time or rate (is_f). */
struct kv {
    const char *k;
    bool is_f;
    uint64_t u;
    double f;
};

/* Prints kv[0 .. len-1] as key=value pairs (sep " ") or JSON members (sep ","), each after a
 * separator. */
static void print_kv(FILE *f, const struct kv *kv, size_t len, bool json)
{
    for (size_t i = 0; i < len; i++) {
        fputc(json ? ',' : ' ', f);
        fprintf(f, json ? "\"%s\":" : "%s=", kv[i].k);
        if (kv[i].is_f)
            fprintf(f, "%.3f", kv[i].f);
        else
            fprintf(f, "%" PRIu64, kv[i].u);
    }
}

/* The UDP counts, after every other key (0 over TCP). */
static void summary_udp(FILE *f, const struct counters *c, bool json)
{
    const struct kv kv[] = {
        {"udp_datagrams_sent", false, c->udp_datagrams, 0},
        {"udp_stale_acks", false, c->udp_stale_acks, 0},
        {"udp_bad_count_acks", false, c->udp_bad_count_acks, 0},
        {"udp_send_waits", false, c->udp_send_waits, 0},
        {"udp_send_errors", false, c->udp_send_errors, 0},
    };
    print_kv(f, kv, sizeof kv / sizeof kv[0], json);
}

/* The summary as key=value pairs (sep " ") or JSON members (sep ","), the same keys. */
void report_summary(FILE *f, const struct fleet *fl, const struct summary *s, bool json)
{
    const struct counters *c = &s->c;
    const struct kv kv[] = {
        {"devices", false, fl->o.devices, 0},
        {"threads", false, fl->threads, 0},
        {"src_ips", false, fl->src_ips, 0},
        {"records_per_packet", false, fl->o.records, 0},
        {"duration_s", true, 0, s->elapsed_s},
        {"connected_max", false, s->connected_max, 0},
        {"connected_end", false, s->connected_end, 0},
        {"connect_all_s", true, 0, s->connect_all_s},
        {"connect_ms_p50", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->connect, 0.50))},
        {"connect_ms_p99", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->connect, 0.99))},
        {"connect_ms_max", true, 0, hdr_hist_ms(s->connect.max_us)},
        {"handshakes", false, c->handshakes, 0},
        {"packets_sent", false, c->packets_sent, 0},
        {"resends", false, c->resends, 0},
        {"packets_acked", false, c->packets_acked, 0},
        {"records_acked", false, c->records_acked, 0},
        {"packets_per_s", true, 0, s->elapsed_s > 0 ? (double)c->packets_acked / s->elapsed_s : 0},
        {"records_per_s", true, 0, s->elapsed_s > 0 ? (double)c->records_acked / s->elapsed_s : 0},
        {"ack_p50_ms", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.50))},
        {"ack_p90_ms", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.90))},
        {"ack_p99_ms", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.99))},
        {"ack_p999_ms", true, 0, hdr_hist_ms(hdr_hist_quantile(&s->ack, 0.999))},
        {"ack_max_ms", true, 0, hdr_hist_ms(s->ack.max_us)},
        {"commands", false, c->commands, 0},
        {"replies", false, c->replies, 0},
        {"malformed_sent", false, c->malformed_sent, 0},
        {"malformed_closed", false, c->malformed_closed, 0},
        {"malformed_acked", false, c->malformed_acked, 0},
        {"storm_drops", false, c->storm_drops, 0},
        {"errors", false, counters_errors(c), 0},
        {"connect_failed", false, connect_failed_of(c), 0},
        {"connect_refused", false, c->connect_failed[CE_REFUSED], 0},
        {"connect_timeout", false, c->connect_failed[CE_TIMEOUT], 0},
        {"connect_addrnotavail", false, c->connect_failed[CE_ADDRNOTAVAIL], 0},
        {"connect_other", false, c->connect_failed[CE_OTHER], 0},
        {"rejected", false, c->rejected, 0},
        {"bad_ack", false, c->bad_ack, 0},
        {"bad_frame", false, c->bad_frame, 0},
        {"unexpected_close", false, c->unexpected_close, 0},
        {"ack_timeout", false, c->ack_timeout, 0},
        {"handshake_timeout", false, c->handshake_timeout, 0},
        {"arena_waits", false, c->arena_waits, 0},
        {"dial_slot_waits", false, c->dial_slot_waits, 0},
    };
    const char *pacing = options_pacing_name(fl->o.pacing), *transport = fl->o.udp ? "udp" : "tcp";
    if (json)
        fprintf(f, "\"pacing\":\"%s\",\"transport\":\"%s\"", pacing, transport);
    else
        fprintf(f, "pacing=%s transport=%s", pacing, transport);
    print_kv(f, kv, sizeof kv / sizeof kv[0], json);
    summary_udp(f, c, json);
}

void report_verify(FILE *f, const struct verify_result *v)
{
    fprintf(f,
            "verify: acked=%" PRIu64 " stored=%" PRIu64 " missing=%" PRIu64 " duplicated=%" PRIu64
            " unacked_stored=%" PRIu64 " unexpected=%" PRIu64 " %s\n",
            v->acked, v->stored, v->missing, v->duplicated, v->unacked_stored, v->unexpected,
            verify_ok(v) ? "OK" : "FAILED");
}

int report_json(const char *path, const struct fleet *fl, const struct summary *s,
                const struct report_seconds *tl, const struct verify_result *v)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    fputc('{', f);
    report_summary(f, fl, s, true);
    if (v)
        fprintf(f,
                ",\"verify\":{\"ok\":%s,\"acked\":%" PRIu64 ",\"stored\":%" PRIu64
                ",\"missing\":%" PRIu64 ",\"duplicated\":%" PRIu64 ",\"unacked_stored\":%" PRIu64
                ",\"unexpected\":%" PRIu64 "}",
                verify_ok(v) ? "true" : "false", v->acked, v->stored, v->missing, v->duplicated,
                v->unacked_stored, v->unexpected);
    fputs(",\"timeline\":[", f);
    for (size_t i = 0; i < tl->len; i++) {
        const struct timeline_sample *smp = &tl->v[i];
        fprintf(f,
                "%s{\"t\":%.0f,\"connected\":%" PRIu64 ",\"packets_per_s\":%" PRIu64
                ",\"records_per_s\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f}",
                i ? "," : "", smp->t_s, smp->n.connected, smp->n.packets, smp->n.records,
                smp->n.errors, smp->ack_p50_ms, smp->ack_p99_ms);
    }
    fputs("]}\n", f);
    return fclose(f) == 0 ? 0 : -errno;
}

int report_failures(const struct fleet *fl, const struct summary *s)
{
    int failed = 0;
    const struct counters *c = &s->c;
    if (fl->o.udp && c->packets_acked + c->udp_stale_acks + c->udp_bad_count_acks == 0) {
        fprintf(stderr, "avlgate-loadgen: the gateway answered no datagram\n");
        failed = 1;
    } else if (!fl->o.udp && c->handshakes == 0) {
        fprintf(stderr, "avlgate-loadgen: no device connected\n");
        failed = 1;
    }
    if (s->c.malformed_acked > 0) {
        fprintf(stderr, "avlgate-loadgen: the gateway acknowledged %" PRIu64 " malformed packets\n",
                s->c.malformed_acked);
        failed = 1;
    }
    return failed;
}
