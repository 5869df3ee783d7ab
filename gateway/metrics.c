/* metrics.c — GET /metrics and GET /healthz from shard 0's ring. See metrics.h. */
#include "gateway/metrics.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/proxy.h"
#include "gateway/shared.h"
#include "gateway/tags.h"
#include "shard/engine.h"
#include "shard/stat.h"

enum {
    REQUEST_TIMEOUT_MS = 2000,   /* from accept to a whole request head */
    RESPONSE_TIMEOUT_MS = 10000, /* from the request to the response's last byte taken */
    SEND_BUFFER_BYTES = 16384,   /* SO_SNDBUF of a connection (the kernel doubles it) */
    LISTEN_BACKLOG = 64,
    STARTING_READ_MS = 200, /* start-up: how long the waiting connections get to send */
    TAG_LISTEN = 0xFFFF,    /* connection index of the listening socket's poll */
};
_Static_assert((int)METRICS_CONNS_MAX < (int)TAG_LISTEN,
               "a connection index is not the listener's");

/* ---------------------------------------------------------------------------------------------
 * The exposition
 * ------------------------------------------------------------------------------------------- */

struct out {
    char *buf;
    size_t cap, len; /* len may pass cap: then only the needed length is known */
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One counter of struct ingest_stats, per shard. */
struct stat_family {
    const char *name, *help;
    size_t off;
    bool gauge;
};

#define ST(field) offsetof(struct ingest_stats, field)

static const struct stat_family ingest_families[] = {
    {"avlgate_handshakes_total", "Handshakes accepted by the owner shard.", ST(handshakes), false},
    {"avlgate_handshakes_handed_off_total", "Handshakes passed to the owner shard.", ST(handed_off),
     false},
    {"avlgate_packets_received_total", "AVL packets taken into a batch.", ST(packets), false},
    {"avlgate_packets_acked_total", "AVL packets acknowledged after their commit.",
     ST(packets_acked), false},
    {"avlgate_acks_stale_total", "ACKs not sent: the connection was gone.", ST(acks_stale), false},
    {"avlgate_packets_rejected_by_database_total",
     "Packets whose rows the database refused (never acknowledged).", ST(packets_rejected_data),
     false},
    {"avlgate_packets_moved_total",
     "Packets not stored because another connection took their device over before their batch "
     "committed (a device that moved to another instance): never acknowledged, re-sent there.",
     ST(packets_moved), false},
    {"avlgate_records_received_total", "AVL records in packets taken.", ST(records), false},
    {"avlgate_records_stored_total", "AVL records written (not re-sends).", ST(records_stored),
     false},
    {"avlgate_records_duplicate_total", "AVL records recognised as re-sent and not stored again.",
     ST(records_duplicate), false},
    {"avlgate_backpressure_pauses_total",
     "Times the shard stopped reading its sockets: every batch sealed or in flight.",
     ST(backpressure_pauses), false},
    {"avlgate_batches_committed_total", "Batches committed.", ST(batches_committed), false},
    {"avlgate_rows_committed_total", "Rows committed.", ST(rows_committed), false},
    {"avlgate_batches_retried_total", "Transactions not committed and sent again.",
     ST(batches_retried), false},
    {"avlgate_batches_unknown_total",
     "Transactions whose COMMIT outcome is unknown (held batches dropped, devices re-send).",
     ST(batches_unknown), false},
    {"avlgate_batches_data_error_total", "Batches split after the database refused a row.",
     ST(batches_data_error), false},
    {"avlgate_batches_timed_out_total",
     "Batches split after a statement ran past --txn-timeout-ms (a row lock held elsewhere).",
     ST(batches_timed_out), false},
    {"avlgate_packets_deferred_total",
     "Packets not stored for now: their device's rows could not be written in time (closed; "
     "the device re-sends).",
     ST(packets_deferred), false},
    {"avlgate_gprs_frames_total", "GPRS (Codec 12-15) frames received.", ST(gprs_frames), false},
    {"avlgate_devices_revoked_total",
     "Connections closed after SIGHUP: the device is no longer enabled in public.devices.",
     ST(devices_revoked), false},
    {"avlgate_state_loads_failed_total", "Device state loads that failed and were retried.",
     ST(state_load_failures), false},
    {"avlgate_state_loads_busy_total",
     "Device state loads whose device_state row stayed locked past 2 s (another session's "
     "transaction of the device): the device was closed unanswered and reconnects.",
     ST(state_load_busy), false},
    {"avlgate_command_responses_unexpected_total",
     "Codec 12 answers with no command in flight (ignored).", ST(cmd_responses_unexpected), false},
    {"avlgate_command_sweeps_total", "Rounds of the open-command sweep.", ST(cmd_sweeps), false},
    {"avlgate_command_wakes_total", "Command stream entries routed to this shard.", ST(cmd_wakes),
     false},
    {"avlgate_registry_writes_total", "Device registry writes and deletes sent to Redis.",
     ST(registry_writes), false},
    {"avlgate_devices_moved_total",
     "Connections closed because the device's registry entry names a newer connection (it "
     "moved to another instance).",
     ST(devices_moved), false},
    {"avlgate_redis_errors_total", "Redis commands that failed or got no answer.",
     ST(registry_errors), false},
    {"avlgate_replies_published_total", "Command outcomes added to avlgate:replies.",
     ST(replies_published), false},
    {"avlgate_replies_unpublished_total", "Command outcomes not published (Redis down).",
     ST(replies_unpublished), false},
    {"avlgate_directus_bus_published_total",
     "Directus bus events sent for a commands row written (--directus-bus).", ST(bus_published),
     false},
    {"avlgate_directus_bus_unpublished_total",
     "Directus bus events not sent (Redis down; --directus-bus).", ST(bus_unpublished), false},
    {"avlgate_connections_open", "Device connections open.", ST(conns_open), true},
    {"avlgate_row_ring_batches_busy", "Batches of the row ring filling, sealed or in flight.",
     ST(ring_busy), true},
    {"avlgate_row_ring_batches", "Batches in the row ring.", ST(ring_batches), true},
    {"avlgate_listening", "1 while the shard accepts connections.", ST(listening), true},
    {"avlgate_udp_datagrams_handed_off_total", "Datagrams passed to their IMEI's owner shard.",
     ST(udp_handed_off), false},
    {"avlgate_udp_datagrams_taken_total", "Datagrams taken into a batch by the owner shard.",
     ST(udp_taken), false},
    {"avlgate_udp_datagrams_acked_total", "Datagrams acknowledged after their commit.",
     ST(udp_acked), false},
    {"avlgate_udp_datagrams_duplicate_total",
     "Datagrams taken whose records were all stored or held already (re-sends, network "
     "duplicates): acknowledged with their batch, nothing stored.",
     ST(udp_duplicate), false},
    {"avlgate_udp_devices", "Devices known over UDP only (no TCP connection), open now.",
     ST(udp_devices), true},
};

/* One counter of struct engine_stats, per shard. */
#define ES(field) offsetof(struct engine_stats, field)
static const struct stat_family engine_families[] = {
    {"avlgate_connections_accepted_total", "Connections accepted.", ES(accepted), false},
    {"avlgate_connections_handed_in_total", "Connections received from another shard.",
     ES(handed_in), false},
    {"avlgate_receive_bytes_total", "Bytes received from devices.", ES(recv_bytes), false},
    {"avlgate_send_bytes_total", "Bytes sent to devices.", ES(send_bytes), false},
    {"avlgate_receive_buffer_exhausted_total",
     "Receives that found no provided buffer free (re-armed).", ES(recv_enobufs), false},
    {"avlgate_loop_turns_total", "Turns of the shard's io_uring loop.", ES(loops), false},
    {"avlgate_connections_accept_errors_total",
     "Accepts that failed (the shard's connection table full: --conns-max), devices dropped.",
     ES(accept_errors), false},
    {"avlgate_handoff_errors_total", "Connections that could not be passed to their owner shard.",
     ES(handoff_errors), false},
    {"avlgate_mail_full_total", "Messages to another shard refused: its mailbox was full.",
     ES(mail_full), false},
    {"avlgate_reassembly_bytes",
     "Reassembly memory held (size-class bytes of partial frames and paused connections' "
     "bytes; at most --reasm-bytes-max).",
     ES(reasm_bytes), true},
    {"avlgate_reassembly_released_bytes_total",
     "Reassembly memory given back to the system once no longer used.", ES(reasm_released_bytes),
     false},
    {"avlgate_udp_datagrams_received_total", "Datagrams received on the shard's UDP socket.",
     ES(udp_received), false},
    {"avlgate_udp_receive_buffer_exhausted_total",
     "UDP receives that found no provided buffer free (re-armed).", ES(udp_enobufs), false},
    {"avlgate_udp_acks_failed_total", "UDP ACKs whose sendmsg failed (the device re-sends).",
     ES(udp_send_errors), false},
    {"avlgate_udp_acks_no_slot_total", "UDP ACKs not sent for want of a send slot.",
     ES(udp_send_full), false},
};

static uint64_t field_at(const void *base, size_t off)
{
    return stat_read((const uint64_t *)(const void *)((const char *)base + off));
}

static const struct ingest_stats *shard_stats(const struct ingest_shared *sh, unsigned i)
{
    return &sh->stats[i];
}

static void render_families(struct out *o, const struct ingest_shared *sh,
                            const struct stat_family *f, size_t n, bool engine)
{
    unsigned shards = sh->cfg->shards;
    for (size_t k = 0; k < n; k++) {
        family(o, f[k].name, f[k].gauge ? "gauge" : "counter", f[k].help);
        for (unsigned i = 0; i < shards; i++) {
            const void *base =
                engine ? (const void *)sh->engine_stats[i] : (const void *)shard_stats(sh, i);
            put(o, "%s{shard=\"%u\"} %" PRIu64 "\n", f[k].name, i, field_at(base, f[k].off));
        }
    }
}

static void render_hist(struct out *o, const struct ingest_shared *sh, const char *name,
                        const char *help, size_t off)
{
    family(o, name, "histogram", help);
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct prom_hist *h =
            (const struct prom_hist *)(const void *)((const char *)shard_stats(sh, i) + off);
        uint64_t cum = 0;
        for (unsigned b = 0; b <= PROM_HIST_BUCKETS; b++) {
            cum += stat_read(&h->bucket[b]);
            if (b < PROM_HIST_BUCKETS)
                put(o, "%s_bucket{shard=\"%u\",le=\"%g\"} %" PRIu64 "\n", name, i,
                    prom_hist_bucket_us[b] / 1e6, cum);
            else
                put(o, "%s_bucket{shard=\"%u\",le=\"+Inf\"} %" PRIu64 "\n", name, i, cum);
        }
        put(o, "%s_sum{shard=\"%u\"} %.6f\n", name, i, stat_read(&h->sum_us) / 1e6);
        /* The +Inf total, not h->count read apart: an observation landing between the two
         * reads would make them differ, which the format forbids. */
        put(o, "%s_count{shard=\"%u\"} %" PRIu64 "\n", name, i, cum);
    }
}

/* The name of invalid_by_reason[i]: codec errors by -err, the COPY encoder's after them. */
static const char *invalid_reason(unsigned i)
{
    if (i <= (unsigned)-AVL_E_ERR_MIN)
        return avl_strerror(-(int)i);
    return copyenc_strerror((int)(1 - AVL_E_ERR_MIN) - (int)i);
}

/* ack_latency in its three stages, per acknowledged packet: where the tail comes from. */
static void render_stages(struct out *o, const struct ingest_shared *sh)
{
    render_hist(o, sh, "avlgate_ack_stage_fill_seconds",
                "A packet acknowledged: from taken to its batch sealed (batch-rows, or batch-ms "
                "with the data link free: a busy link shows here).",
                offsetof(struct ingest_stats, stage_fill));
    render_hist(o, sh, "avlgate_ack_stage_queue_seconds",
                "A packet acknowledged: from its batch sealed to its COPY submitted (the data "
                "link busy with earlier batches).",
                offsetof(struct ingest_stats, stage_queue));
    render_hist(o, sh, "avlgate_ack_stage_commit_seconds",
                "A packet acknowledged: from its COPY submitted to the COMMIT answered and its ACK "
                "queued (PostgreSQL, the link, and this shard's loop).",
                offsetof(struct ingest_stats, stage_commit));
}

static void render_header(struct out *o, const struct ingest_shared *sh)
{
    family(o, "avlgate_build_info", "gauge", "The running version.");
    put(o, "avlgate_build_info{version=\"%s\"} 1\n", sh->cfg->version ? sh->cfg->version : "");
    family(o, "avlgate_shards", "gauge", "Shards (io_uring threads) of this process.");
    put(o, "avlgate_shards %u\n", sh->cfg->shards);
}

static void render_closed(struct out *o, const struct ingest_shared *sh)
{
    family(o, "avlgate_connections_closed_total", "counter", "Connections closed, by reason.");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct engine_stats *es = sh->engine_stats[i];
        for (int r = 0; r < ENGINE_CLOSE_REASONS; r++)
            put(o, "avlgate_connections_closed_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n", i,
                engine_close_reason_name((enum engine_close_reason)r), stat_read(&es->closed[r]));
    }
}

static void render_handshakes_rejected(struct out *o, const struct ingest_shared *sh)
{
    family(o, "avlgate_handshakes_rejected_total", "counter",
           "Handshakes refused: unknown or disabled device, or a protocol error.");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        put(o,
            "avlgate_handshakes_rejected_total{shard=\"%u\",reason=\"unknown_device\"} %" PRIu64
            "\n",
            i, stat_read(&st->handshake_rejected));
        put(o, "avlgate_handshakes_rejected_total{shard=\"%u\",reason=\"protocol\"} %" PRIu64 "\n",
            i, stat_read(&st->handshake_errors));
    }
}

/* The sum over the reasons is every connection closed because its IMEI connected again. */
static void render_replaced(struct out *o, const struct ingest_shared *sh)
{
    static const char *const reasons[REPLACED_REASONS] = {
        [REPLACED_SAME_ADDRESS] = "same_address",
        [REPLACED_OTHER_ADDRESS] = "other_address",
        [REPLACED_UNKNOWN_ADDRESS] = "unknown_address",
    };
    family(o, "avlgate_connections_replaced_total", "counter",
           "Connections closed because the same IMEI connected again, by whether the newcomer's "
           "IP address is the same (other_address: a cloned or spoofed IMEI?).");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        for (int r = 0; r < REPLACED_REASONS; r++)
            put(o, "avlgate_connections_replaced_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n",
                i, reasons[r], stat_read(&shard_stats(sh, i)->replaced[r]));
}

/* --proxy-protocol: headers read and connections refused before their handshake. */
static void render_proxy(struct out *o, const struct ingest_shared *sh)
{
    if (!sh->cfg->proxy_protocol)
        return;
    family(o, "avlgate_proxy_headers_total", "counter",
           "PROXY headers read: with the client's address (proxied) or without (local: LOCAL, "
           "UNKNOWN).");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        put(o, "avlgate_proxy_headers_total{shard=\"%u\",kind=\"proxied\"} %" PRIu64 "\n", i,
            stat_read(&st->proxy_proxied));
        put(o, "avlgate_proxy_headers_total{shard=\"%u\",kind=\"local\"} %" PRIu64 "\n", i,
            stat_read(&st->proxy_local));
    }
    family(o, "avlgate_proxy_refused_total", "counter",
           "Connections closed before their handshake: a malformed PROXY header, by reason, or a "
           "peer outside --proxy-from (source_not_allowed).");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        for (unsigned r = 1; r < PROXY_REFUSED_REASONS; r++)
            put(o, "avlgate_proxy_refused_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n", i,
                proxy_refused_name(r), stat_read(&shard_stats(sh, i)->proxy_refused[r]));
    family(o, "avlgate_proxy_addresses_lost_total", "counter",
           "Connections handed to their owner shard whose client address did not follow (the "
           "balancer's is used).");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        put(o, "avlgate_proxy_addresses_lost_total{shard=\"%u\"} %" PRIu64 "\n", i,
            stat_read(&shard_stats(sh, i)->proxy_addr_lost));
}

/* Only the reasons seen: most of the 31 never are. */
static void render_invalid(struct out *o, const struct ingest_shared *sh)
{
    family(o, "avlgate_packets_invalid_total", "counter",
           "Packets refused (never acknowledged), by reason.");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        for (unsigned r = 1; r < 32; r++) {
            uint64_t v = stat_read(&st->invalid_by_reason[r]);
            if (v)
                put(o, "avlgate_packets_invalid_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n", i,
                    invalid_reason(r), v);
        }
    }
}

static const char *udp_invalid_reason(unsigned r)
{
    if (r == UDP_INVALID_TOO_LONG)
        return "datagram_too_long";
    if (r == UDP_INVALID_IMEI_RANGE)
        return "imei_out_of_range";
    return avl_strerror(-(int)r);
}

/* Datagrams never acknowledged: invalid (by reason) or valid and dropped (by reason). */
static void render_udp(struct out *o, const struct ingest_shared *sh)
{
    static const char *const drops[UDP_DROPS] = {"backlog_full", "devices_full", "unknown_device",
                                                 "deferred", "device_closed"};
    family(o, "avlgate_udp_datagrams_invalid_total", "counter",
           "Datagrams refused (never acknowledged), by reason.");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        for (unsigned r = 1; r < UDP_INVALID_REASONS; r++) {
            if (r > (unsigned)-AVL_E_ERR_MIN && r != UDP_INVALID_TOO_LONG &&
                r != UDP_INVALID_IMEI_RANGE)
                continue; /* no reason has this index */
            uint64_t v = stat_read(&shard_stats(sh, i)->udp_invalid[r]);
            if (v)
                put(o,
                    "avlgate_udp_datagrams_invalid_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n",
                    i, udp_invalid_reason(r), v);
        }
    family(o, "avlgate_udp_datagrams_dropped_total", "counter",
           "Valid datagrams not taken (never acknowledged: the device sends them again).");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        for (unsigned r = 0; r < UDP_DROPS; r++)
            put(o, "avlgate_udp_datagrams_dropped_total{shard=\"%u\",reason=\"%s\"} %" PRIu64 "\n",
                i, drops[r], stat_read(&shard_stats(sh, i)->udp_dropped[r]));
}

static void render_out_of_range(struct out *o, const struct ingest_shared *sh)
{
    static const char *const fields[INGEST_FIELDS] = {"angle", "speed"};
    family(o, "avlgate_records_field_out_of_range_total", "counter",
           "Records stored with a field NULL: its value does not fit the column (smallint).");
    for (unsigned i = 0; i < sh->cfg->shards; i++)
        for (int f = 0; f < INGEST_FIELDS; f++)
            put(o,
                "avlgate_records_field_out_of_range_total{shard=\"%u\",field=\"%s\"} %" PRIu64 "\n",
                i, fields[f], stat_read(&shard_stats(sh, i)->records_out_of_range[f]));
}

static void render_commands(struct out *o, const struct ingest_shared *sh)
{
    family(o, "avlgate_commands_total", "counter",
           "Codec 12 commands: frames written (sent, a resend counts again) and outcomes.");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        const struct {
            const char *status;
            const uint64_t *v;
        } c[] = {{"sent", &st->cmds_sent},
                 {"answered", &st->cmds_answered},
                 {"failed", &st->cmds_failed},
                 {"expired", &st->cmds_expired}};
        for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
            put(o, "avlgate_commands_total{shard=\"%u\",status=\"%s\"} %" PRIu64 "\n", i,
                c[k].status, stat_read(c[k].v));
    }
}

/* A pair of counters of struct ingest_stats per shard, one per database link (data, control). */
static const struct stat_family pg_link_families[] = {
    {"avlgate_postgres_up", "1 while the shard's database link is connected.", ST(pg_up), true},
    {"avlgate_postgres_connects_total",
     "Database connections established (the first, then each reconnect).", ST(pg_connects), false},
    {"avlgate_postgres_disconnects_total", "Established database links lost.", ST(pg_disconnects),
     false},
    {"avlgate_postgres_connect_failures_total", "Database connection attempts that failed.",
     ST(pg_connect_failures), false},
};

#define LINK_PAIR(field) (sizeof((struct ingest_stats *)0)->field == 2 * sizeof(uint64_t))
_Static_assert(LINK_PAIR(pg_up) && LINK_PAIR(pg_connects) && LINK_PAIR(pg_disconnects) &&
                   LINK_PAIR(pg_connect_failures),
               "pg_link_families reads two uint64_t per field");
#undef LINK_PAIR

static void render_pg_links(struct out *o, const struct ingest_shared *sh)
{
    static const char *const links[2] = {"data", "control"};
    for (size_t k = 0; k < sizeof pg_link_families / sizeof pg_link_families[0]; k++) {
        const struct stat_family *f = &pg_link_families[k];
        family(o, f->name, f->gauge ? "gauge" : "counter", f->help);
        for (unsigned i = 0; i < sh->cfg->shards; i++)
            for (int l = 0; l < 2; l++)
                put(o, "%s{shard=\"%u\",link=\"%s\"} %" PRIu64 "\n", f->name, i, links[l],
                    field_at(shard_stats(sh, i), f->off + (size_t)l * sizeof(uint64_t)));
    }
}

/* Only shards with Redis configured; the intake link is shard 0's alone. */
static void render_redis_links(struct out *o, const struct ingest_shared *sh)
{
    static const char *const rlinks[2] = {"registry", "intake"};
    family(o, "avlgate_redis_up", "gauge",
           "1 while the shard's Redis link is connected (the intake is shard 0's).");
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        if (!stat_read(&st->redis_configured))
            continue;
        for (int l = 0; l < 2; l++)
            if (l == 0 || i == 0)
                put(o, "avlgate_redis_up{shard=\"%u\",link=\"%s\"} %" PRIu64 "\n", i, rlinks[l],
                    stat_read(&st->redis_up[l]));
    }
}

size_t metrics_render(const struct ingest_shared *sh, char *buf, size_t cap)
{
    struct out o = {.buf = buf, .cap = cap};
    render_header(&o, sh);
    render_families(&o, sh, ingest_families, sizeof ingest_families / sizeof ingest_families[0],
                    false);
    render_families(&o, sh, engine_families, sizeof engine_families / sizeof engine_families[0],
                    true);
    render_closed(&o, sh);
    render_handshakes_rejected(&o, sh);
    render_replaced(&o, sh);
    render_proxy(&o, sh);
    render_invalid(&o, sh);
    render_out_of_range(&o, sh);
    render_udp(&o, sh);
    render_commands(&o, sh);
    render_pg_links(&o, sh);
    render_redis_links(&o, sh);
    render_hist(&o, sh, "avlgate_copy_duration_seconds",
                "A batch's transaction, from submit to the answer to its COMMIT.",
                offsetof(struct ingest_stats, copy_latency));
    render_hist(&o, sh, "avlgate_ack_latency_seconds",
                "A packet, from taken into a batch to its ACK queued after the commit.",
                offsetof(struct ingest_stats, ack_latency));
    render_stages(&o, sh);
    return o.len;
}

size_t metrics_health(const struct ingest_shared *sh, char *buf, size_t cap, int *ok)
{
    struct out o = {.buf = buf, .cap = cap};
    *ok = 1;
    for (unsigned i = 0; i < sh->cfg->shards; i++) {
        const struct ingest_stats *st = shard_stats(sh, i);
        if (!stat_read(&st->listening)) {
            put(&o, "shard %u: not listening\n", i);
            *ok = 0;
        }
        if (!stat_read(&st->pg_up[0])) {
            put(&o, "shard %u: database link down\n", i);
            *ok = 0;
        }
        if (!stat_read(&st->pg_up[1])) {
            put(&o, "shard %u: database control link down (no handshake can finish)\n", i);
            *ok = 0;
        }
    }
    if (*ok)
        put(&o, "ok\n");
    /* Cut short: cap - 1 bytes of text, then vsnprintf's NUL, which is not part of the body. */
    return o.len < cap ? o.len : (cap ? cap - 1 : 0);
}

/* ---------------------------------------------------------------------------------------------
 * The request reader
 * ------------------------------------------------------------------------------------------- */

/* The end of the head in buf[0 .. n): the offset after its empty line (LF LF or LF CR LF), 0
 * when it has not come yet, or METRICS_REQ_E_BAD at a NUL byte before it. Each byte is looked
 * at in order, so a prefix of buf gives 0 or the same answer. */
static int head_end(const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\0')
            return METRICS_REQ_E_BAD;
        if (buf[i] != '\n')
            continue;
        if (i + 1 < n && buf[i + 1] == '\n')
            return (int)(i + 2);
        if (i + 2 < n && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return (int)(i + 3);
    }
    return 0;
}

int metrics_request_parse(const char *buf, size_t len, struct metrics_request *req)
{
    size_t n = len < METRICS_REQUEST_BYTES_MAX ? len : METRICS_REQUEST_BYTES_MAX;
    int end = head_end(buf, n);
    if (end == 0)
        return len >= METRICS_REQUEST_BYTES_MAX ? METRICS_REQ_E_TOO_LARGE : METRICS_REQ_NEED_MORE;
    if (end < 0)
        return end;
    /* The request line: METHOD SP TARGET, then SP VERSION or the line's end. */
    size_t line = strcspn(buf, "\r\n"); /* the head holds a LF and no NUL */
    const char *sp = memchr(buf, ' ', line);
    if (!sp || sp == buf)
        return METRICS_REQ_E_BAD;
    const char *target = sp + 1;
    size_t target_len = strcspn(target, " \r\n");
    if (target_len == 0)
        return METRICS_REQ_E_BAD;
    size_t method_len = (size_t)(sp - buf);
    req->method = method_len == 3 && memcmp(buf, "GET", 3) == 0    ? METRICS_METHOD_GET
                  : method_len == 4 && memcmp(buf, "HEAD", 4) == 0 ? METRICS_METHOD_HEAD
                                                                   : METRICS_METHOD_OTHER;
    req->path = target;
    req->path_len = strcspn(target, "? \r\n");
    req->target = req->path_len == 8 && memcmp(target, "/metrics", 8) == 0 ? METRICS_TARGET_METRICS
                  : req->path_len == 8 && memcmp(target, "/healthz", 8) == 0
                      ? METRICS_TARGET_HEALTHZ
                      : METRICS_TARGET_OTHER;
    return end;
}

const char *metrics_request_strerror(int rc)
{
    switch (rc) {
    case METRICS_REQ_E_TOO_LARGE:
        return "too_large";
    case METRICS_REQ_E_BAD:
        return "bad_request";
    default:
        return "unknown_error";
    }
}

/* ---------------------------------------------------------------------------------------------
 * The server
 * ------------------------------------------------------------------------------------------- */

/* Why a connection was closed: every close is one of these, counted. */
enum http_close {
    HTTP_CLOSE_SERVED,           /* the response was written */
    HTTP_CLOSE_PEER,             /* the client closed (or failed) first */
    HTTP_CLOSE_REQUEST_TIMEOUT,  /* no whole request within REQUEST_TIMEOUT_MS */
    HTTP_CLOSE_RESPONSE_TIMEOUT, /* the response not taken within RESPONSE_TIMEOUT_MS */
    HTTP_CLOSE_EVICTED_REQUEST,  /* its slot went to a newcomer before a whole request came */
    HTTP_CLOSE_EVICTED_RESPONSE, /* its slot went to a newcomer before the response was taken */
    HTTP_CLOSE_OUT_OF_MEMORY,    /* no memory for the response */
    HTTP_CLOSE_REASONS,
};
static const char *const http_close_names[HTTP_CLOSE_REASONS] = {
    "served",           "peer",          "request_timeout", "response_timeout", "evicted_request",
    "evicted_response", "out_of_memory",
};

enum hconn_state { HCONN_FREE, HCONN_READING, HCONN_WRITING, HCONN_STATES };

struct hconn {
    int fd; /* -1 when free */
    enum hconn_state state;
    uint32_t gen;
    bool polled;
    uint64_t seq;         /* accept order: the oldest is evicted first */
    uint64_t deadline_ns; /* of the request while reading, of the response while writing */
    char req[METRICS_REQUEST_BYTES_MAX];
    size_t req_len;
    char *out; /* the response */
    size_t out_len, out_off, out_cap;
};

/* Shard 0's alone: written and read (a scrape) by its thread only. */
struct metrics {
    struct ingest_shared *sh;
    struct engine *e;
    int listen_fd;
    bool listen_polled;
    uint64_t accept_pause_until_ns;
    uint64_t accepts;
    uint64_t closed[HTTP_CLOSE_REASONS];
    struct hconn conns[METRICS_CONNS_MAX];
};

int metrics_listen(const struct sockaddr_storage *addr, socklen_t len, char *err, size_t cap)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, cap, "metrics: socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)addr, len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        int e = errno;
        snprintf(err, cap, "metrics: cannot listen: %s%s", strerror(e),
                 e == EADDRINUSE ? " (another process has the port)" : "");
        close(fd);
        return -e;
    }
    return fd;
}

static uint64_t tag_of(uint32_t index, uint32_t gen)
{
    return poll_tag(POLL_METRICS, (uint64_t)index | (uint64_t)gen << 16);
}

struct metrics *metrics_create(struct ingest_shared *sh, struct engine *e, int listen_fd)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->sh = sh;
    m->e = e;
    m->listen_fd = listen_fd;
    for (int i = 0; i < METRICS_CONNS_MAX; i++)
        m->conns[i].fd = -1;
    return m;
}

/* Closes with a reset: nothing of an unread response stays in the kernel for the client. */
static void close_abort(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Frees the slot (uncounted: hconn_close counts). */
static void hconn_release(struct metrics *m, struct hconn *c, bool abort)
{
    if (c->state == HCONN_FREE)
        return;
    /* An armed poll holds the socket open: shutting it down completes the poll (as does the
     * cancel, when an SQE is free); its completion then carries a stale gen. */
    if (c->polled) {
        shutdown(c->fd, SHUT_RDWR);
        engine_poll_cancel(m->e, tag_of((uint32_t)(c - m->conns), c->gen));
    }
    if (abort)
        close_abort(c->fd);
    else
        close(c->fd);
    c->fd = -1;
    c->state = HCONN_FREE;
    c->gen++;
    c->polled = false;
    free(c->out);
    c->out = NULL;
    c->out_cap = 0;
}

static void hconn_close(struct metrics *m, struct hconn *c, enum http_close why)
{
    m->closed[why]++;
    hconn_release(m, c, why != HTTP_CLOSE_SERVED && why != HTTP_CLOSE_PEER);
}

void metrics_destroy(struct metrics *m)
{
    if (!m)
        return;
    for (int i = 0; i < METRICS_CONNS_MAX; i++)
        hconn_release(m, &m->conns[i], false);
    close(m->listen_fd);
    free(m);
}

/* The endpoint's own counters, after the shards'. */
static void render_http_closed(struct out *o, const struct metrics *m)
{
    family(o, "avlgate_metrics_connections_closed_total", "counter",
           "Connections to the metrics endpoint closed, by reason (evicted_*: the slot went to a "
           "newcomer while every slot was busy).");
    for (int r = 0; r < HTTP_CLOSE_REASONS; r++)
        put(o, "avlgate_metrics_connections_closed_total{reason=\"%s\"} %" PRIu64 "\n",
            http_close_names[r], m->closed[r]);
}

/* The shards' exposition, then the endpoint's own counters: as metrics_render. */
static size_t render_scrape(const struct metrics *m, char *buf, size_t cap)
{
    struct out o = {.buf = buf, .cap = cap};
    o.len = metrics_render(m->sh, buf, cap);
    render_http_closed(&o, m);
    return o.len;
}

/* Queues the response in c->out; the connection is writing from here on. */
static void respond(struct metrics *m, struct hconn *c, int status, const char *reason,
                    const char *type, const char *body, size_t body_len, bool head_only)
{
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, type, body_len);
    if (head_only)
        body_len = 0; /* HEAD: the GET's headers, Content-Length included; no body */
    size_t need = (size_t)h + body_len;
    if (need > c->out_cap) {
        char *p = realloc(c->out, need);
        if (!p) {
            hconn_close(m, c, HTTP_CLOSE_OUT_OF_MEMORY);
            return;
        }
        c->out = p;
        c->out_cap = need;
    }
    memcpy(c->out, head, (size_t)h);
    memcpy(c->out + h, body, body_len);
    c->out_len = need;
    c->out_off = 0;
    c->state = HCONN_WRITING;
    c->deadline_ns = engine_now_ns(m->e) + (uint64_t)RESPONSE_TIMEOUT_MS * 1000000u;
}

static void serve_metrics(struct metrics *m, struct hconn *c, bool head_only)
{
    /* The other shards count on while we render: a value that gains a digit, or an invalid
     * reason seen for the first time, makes this render longer than the one that measured.
     * Leave room for that, and render again (bounded) in the rare case it was not enough:
     * a text cut short is a failed scrape. */
    size_t need = render_scrape(m, NULL, 0), cap = 0, got = 0;
    char *body = NULL;
    for (int attempt = 0; attempt < 4 && (!body || got >= cap); attempt++) {
        cap = need + need / 16 + 256;
        char *p = realloc(body, cap);
        if (!p)
            break;
        body = p;
        got = render_scrape(m, body, cap);
        need = got;
    }
    if (!body || got >= cap) {
        free(body);
        hconn_close(m, c, HTTP_CLOSE_OUT_OF_MEMORY);
        return;
    }
    respond(m, c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, got, head_only);
    free(body);
}

/* The request head is in (rc from metrics_request_parse): queue the response. */
static void serve(struct metrics *m, struct hconn *c, int rc, const struct metrics_request *r)
{
    static const char not_found[] = "not found: /metrics or /healthz\n";
    if (rc == METRICS_REQ_E_TOO_LARGE) {
        respond(m, c, 431, "Request Header Fields Too Large", "text/plain", "", 0, false);
        return;
    }
    if (rc < 0) {
        respond(m, c, 400, "Bad Request", "text/plain", "bad request\n", 12, false);
        return;
    }
    bool head_only = r->method == METRICS_METHOD_HEAD;
    if (r->method == METRICS_METHOD_OTHER) {
        respond(m, c, 405, "Method Not Allowed", "text/plain", "GET only\n", 9, false);
    } else if (r->target == METRICS_TARGET_METRICS) {
        serve_metrics(m, c, head_only);
    } else if (r->target == METRICS_TARGET_HEALTHZ) {
        char body[4096];
        int ok;
        size_t n = metrics_health(m->sh, body, sizeof body, &ok);
        respond(m, c, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", "text/plain", body, n,
                head_only);
    } else {
        respond(m, c, 404, "Not Found", "text/plain", not_found, sizeof not_found - 1, head_only);
    }
}

/* Sends what the socket takes; the last byte sent closes the connection. */
static void conn_write(struct metrics *m, struct hconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* polled for POLLOUT */
        hconn_close(m, c, HTTP_CLOSE_PEER);
        return;
    }
    hconn_close(m, c, HTTP_CLOSE_SERVED);
}

/* Reads what has come; a whole request head (or a bad one) is answered at once. */
static void conn_read(struct metrics *m, struct hconn *c)
{
    for (;;) {
        assert(c->req_len < sizeof c->req); /* a full buffer is a verdict (too large) */
        ssize_t n = recv(c->fd, c->req + c->req_len, sizeof c->req - c->req_len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* polled again */
        if (n <= 0) {
            hconn_close(m, c, HTTP_CLOSE_PEER); /* closed or failed before a whole request */
            return;
        }
        c->req_len += (size_t)n;
        struct metrics_request r;
        int rc = metrics_request_parse(c->req, c->req_len, &r);
        if (rc == METRICS_REQ_NEED_MORE)
            continue;
        serve(m, c, rc, &r);
        if (c->state == HCONN_WRITING)
            conn_write(m, c);
        return;
    }
}

/* The slot a newcomer takes: a free one, else the oldest connection still without a whole
 * request, else the oldest whose response is not yet taken (closed and counted here). */
static struct hconn *slot_for_newcomer(struct metrics *m)
{
    struct hconn *oldest[HCONN_STATES] = {NULL};
    for (int i = 0; i < METRICS_CONNS_MAX; i++) {
        struct hconn *c = &m->conns[i];
        if (c->state == HCONN_FREE)
            return c;
        if (!oldest[c->state] || c->seq < oldest[c->state]->seq)
            oldest[c->state] = c;
    }
    struct hconn *v = oldest[HCONN_READING];
    if (v) {
        hconn_close(m, v, HTTP_CLOSE_EVICTED_REQUEST);
        return v;
    }
    v = oldest[HCONN_WRITING];
    hconn_close(m, v, HTTP_CLOSE_EVICTED_RESPONSE);
    return v;
}

static void hconn_open(struct metrics *m, struct hconn *c, int fd, uint64_t now_ns)
{
    int sndbuf = SEND_BUFFER_BYTES;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    c->fd = fd;
    c->state = HCONN_READING;
    c->seq = ++m->accepts;
    c->req_len = 0;
    c->out_len = c->out_off = 0;
    c->deadline_ns = now_ns + (uint64_t)REQUEST_TIMEOUT_MS * 1000000u;
}

/* At most one table of newcomers per poll, so a flood of connects cannot hold the loop. */
static void accept_some(struct metrics *m, uint64_t now_ns)
{
    for (int k = 0; k < METRICS_CONNS_MAX; k++) {
        int fd = accept4(m->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                m->accept_pause_until_ns = now_ns + 100000000u; /* EMFILE...: no hot loop */
            return;
        }
        struct hconn *c = slot_for_newcomer(m);
        hconn_open(m, c, fd, now_ns);
        conn_read(m, c); /* the request is often there already */
    }
}

void metrics_on_poll(struct metrics *m, uint64_t tag, int revents)
{
    uint64_t payload = poll_tag_payload(tag);
    uint32_t index = (uint32_t)payload & 0xFFFF, gen = (uint32_t)(payload >> 16);
    if (index == TAG_LISTEN) {
        m->listen_polled = false;
        if (revents > 0)
            accept_some(m, engine_now_ns(m->e));
        return;
    }
    if (index >= METRICS_CONNS_MAX)
        return;
    struct hconn *c = &m->conns[index];
    if (c->gen != gen)
        return; /* a closed connection's poll */
    c->polled = false;
    if (c->state == HCONN_READING)
        conn_read(m, c);
    else if (c->state == HCONN_WRITING)
        conn_write(m, c);
}

void metrics_tick(struct metrics *m, uint64_t now_ns)
{
    /* Always armed: a newcomer finds a slot, free or taken from the oldest busy one. */
    if (!m->listen_polled && now_ns >= m->accept_pause_until_ns &&
        engine_poll(m->e, m->listen_fd, POLLIN, tag_of(TAG_LISTEN, 0)) == 0)
        m->listen_polled = true;
    for (uint32_t i = 0; i < METRICS_CONNS_MAX; i++) {
        struct hconn *c = &m->conns[i];
        if (c->state == HCONN_FREE)
            continue;
        if (now_ns >= c->deadline_ns) {
            hconn_close(m, c,
                        c->state == HCONN_READING ? HTTP_CLOSE_REQUEST_TIMEOUT
                                                  : HTTP_CLOSE_RESPONSE_TIMEOUT);
            continue;
        }
        if (!c->polled && engine_poll(m->e, c->fd, c->state == HCONN_WRITING ? POLLOUT : POLLIN,
                                      tag_of(i, c->gen)) == 0)
            c->polled = true;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Before the shards run
 * ------------------------------------------------------------------------------------------- */

/* Reads what the client sent (it is not looked at) and answers 503 `starting: why`. */
static void starting_answer(int fd, const char *why)
{
    char req[METRICS_REQUEST_BYTES_MAX];
    (void)!recv(fd, req, sizeof req, 0);
    char body[256], out[512];
    int b = snprintf(body, sizeof body, "starting: %s\n", why);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     b, body);
    (void)!send(fd, out, (size_t)n, MSG_NOSIGNAL);
    close(fd);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every connection waiting (a backlog's worth) is accepted first, then they all get
 * STARTING_READ_MS together to send something: idle ones cost that once, not each. */
void metrics_answer_starting(int listen_fd, const char *why)
{
    struct pollfd p[LISTEN_BACKLOG];
    nfds_t n = 0;
    while (n < LISTEN_BACKLOG) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        p[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    nfds_t waiting = n;
    int64_t until = mono_ms() + STARTING_READ_MS;
    while (waiting > 0) {
        int64_t left = until - mono_ms();
        if (left <= 0 || poll(p, n, (int)left) <= 0)
            break;
        for (nfds_t i = 0; i < n; i++) {
            if (p[i].fd < 0 || !p[i].revents)
                continue;
            starting_answer(p[i].fd, why);
            p[i].fd = -1; /* poll skips it */
            waiting--;
        }
    }
    for (nfds_t i = 0; i < n; i++)
        if (p[i].fd >= 0)
            close_abort(p[i].fd); /* sent nothing in time */
}
