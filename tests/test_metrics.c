/* test_metrics.c — gateway/metrics.c's exposition and health body, on hand-made counters.
 *
 * A struct ingest_shared of three shards is built by hand: every counter word of each shard's
 * struct ingest_stats and struct engine_stats holds (shard + 1) * 100000 + its word index, so a
 * value names the shard and the field it came from; the histograms, the invalid-packet reasons
 * and the Redis and database links are set case by case. metrics_render's text goes through a
 * strict parser of the text format (tests/support/promtext.h), then its values are compared
 * with what was set. The parser is checked first: it must refuse a table of bad texts. Last,
 * the endpoint's HTTP request reader (metrics_request_parse) on a table of requests. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/shared.h"
#include "gateway/metrics.h"
#include "shard/engine.h"
#include "tests/support/promtext.h"

enum { SHARDS = 3, BASE = 100000, ERR_BYTES = 512 };

static struct ingest_config cfg;
static struct ingest_stats stats[SHARDS];
static struct engine_stats estats[SHARDS];
static struct ingest_shared sh;

/* What word `off / 8` of shard `shard`'s stats holds. */
static uint64_t pattern(unsigned shard, size_t off)
{
    return (uint64_t)(shard + 1) * BASE + off / sizeof(uint64_t);
}

static void fill_words(void *p, size_t bytes, unsigned shard)
{
    uint64_t *w = p;
    for (size_t k = 0; k < bytes / sizeof *w; k++)
        w[k] = pattern(shard, k * sizeof *w);
}

/* Every counter with its pattern; no histogram observation, no invalid packet, Redis not
 * configured, every shard listening with both database links up. */
static int setup(void **state)
{
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    cfg.shards = SHARDS;
    cfg.version = "9.8.7-test";
    memset(&sh, 0, sizeof sh);
    sh.cfg = &cfg;
    sh.stats = stats;
    for (unsigned i = 0; i < SHARDS; i++) {
        fill_words(&stats[i], sizeof stats[i], i);
        fill_words(&estats[i], sizeof estats[i], i);
        struct ingest_stats *st = &stats[i];
        memset(st->invalid_by_reason, 0, sizeof st->invalid_by_reason);
        memset(&st->copy_latency, 0, sizeof st->copy_latency);
        memset(&st->ack_latency, 0, sizeof st->ack_latency);
        st->redis_configured = 0;
        st->redis_up[0] = st->redis_up[1] = 0;
        st->pg_up[0] = st->pg_up[1] = 1;
        st->listening = 1;
        sh.engine_stats[i] = &estats[i];
    }
    return 0;
}

/* metrics_render into a heap buffer of exactly the size it asks for (+1 for its NUL). */
static char *render(size_t *len)
{
    size_t n = metrics_render(&sh, NULL, 0);
    assert_true(n > 0);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    assert_int_equal(metrics_render(&sh, buf, n + 1), n);
    assert_int_equal(strlen(buf), n);
    *len = n;
    return buf;
}

/* Renders and parses; a text the parser refuses fails the case with the parser's reason. */
static void render_parsed(struct prom_text *t)
{
    size_t len;
    char *text = render(&len);
    char err[ERR_BYTES];
    if (prom_parse(text, len, t, err, sizeof err) != 0) {
        printf("%s", text);
        free(text);
        fail_msg("metrics_render's text is not valid: %s", err);
    }
    free(text);
}

static double abs_d(double x)
{
    return x < 0 ? -x : x;
}

static void shard_label(unsigned i, char out[8])
{
    snprintf(out, 8, "%u", i);
}

/* The value of the one sample of name with the labels given; fails when it is not there. */
#define VALUE(t, name, ...) sample_value(t, name, prom_find(t, name, __VA_ARGS__))
static double sample_value(const struct prom_text *t, const char *name, const struct prom_sample *s)
{
    (void)t;
    if (!s)
        fail_msg("no sample %s with those labels", name);
    return s->value;
}

/* ---- the parser itself ------------------------------------------------------------------- */

static const char good_text[] = "# HELP a_total Things, with \\\\ and \\n escaped.\n"
                                "# TYPE a_total counter\n"
                                "a_total{shard=\"0\",reason=\"q\\\"uote\\\\back\\nnl\"} 3\n"
                                "a_total{shard=\"1\",reason=\"x\"} 0\n"
                                "# TYPE g gauge\n"
                                "# HELP g A gauge.\n"
                                "g -1.5e3\n"
                                "g{x=\"\"} NaN\n"
                                "# HELP e Declared, no samples.\n"
                                "# TYPE e gauge\n"
                                "# HELP h_seconds A histogram.\n"
                                "# TYPE h_seconds histogram\n"
                                "h_seconds_bucket{shard=\"0\",le=\"0.5\"} 1\n"
                                "h_seconds_bucket{shard=\"0\",le=\"1\"} 1\n"
                                "h_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2\n"
                                "h_seconds_sum{shard=\"0\"} 7.25\n"
                                "h_seconds_count{shard=\"0\"} 2\n"
                                "h_seconds_bucket{le=\"+Inf\",shard=\"1\"} 0\n"
                                "h_seconds_count{shard=\"1\"} 0\n"
                                "h_seconds_sum{shard=\"1\"} 0\n";

static void test_parser_accepts(void **state)
{
    (void)state;
    struct prom_text t;
    char err[ERR_BYTES];
    int rc = prom_parse(good_text, strlen(good_text), &t, err, sizeof err);
    if (rc != 0)
        fail_msg("a valid text refused: %s", err);
    assert_int_equal(t.families_len, 4);
    assert_int_equal(t.samples_len, 12);
    assert_string_equal(prom_family(&t, "a_total")->help, "Things, with \\ and \n escaped.");
    assert_int_equal(prom_family(&t, "h_seconds")->type, PROM_HISTOGRAM);
    assert_int_equal(prom_family(&t, "e")->samples, 0);
    const struct prom_sample *s =
        prom_find(&t, "a_total", "shard", "0", "reason", "q\"uote\\back\nnl", NULL);
    assert_non_null(s);
    assert_true(s->value == 3);
    assert_true(VALUE(&t, "g", NULL) == -1500);
    assert_true(isnan(VALUE(&t, "g", "x", "", NULL)));
    assert_true(VALUE(&t, "h_seconds_sum", "shard", "0", NULL) == 7.25);
    assert_int_equal(prom_count(&t, "h_seconds_bucket", "shard", "0", NULL), 3);
    assert_true(prom_sum(&t, "a_total", NULL) == 3);
    prom_free(&t);
}

/* A few families around the line under test, so every bad line is in a valid context. */
static const struct {
    const char *what, *text, *why; /* why: a piece of the parser's message */
} bad_texts[] = {
    {"duplicate series", "# HELP a A.\n# TYPE a counter\na{shard=\"0\"} 1\na{shard=\"0\"} 2\n",
     "duplicate series"},
    {"duplicate series, labels in another order",
     "# HELP a A.\n# TYPE a counter\na{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 1\n",
     "duplicate series"},
    {"duplicate series without labels", "# HELP a A.\n# TYPE a gauge\na 1\na{} 2\n",
     "duplicate series"},
    {"sample before TYPE", "# HELP a A.\na 1\n# TYPE a counter\n", "before the TYPE"},
    {"sample before HELP", "# TYPE a counter\na 1\n# HELP a A.\n", "before the HELP"},
    {"sample of no family", "# HELP a A.\n# TYPE a counter\nb 1\n", "before its family"},
    {"histogram sample before TYPE", "# HELP h H.\nh_bucket{le=\"+Inf\"} 1\n", "before the TYPE"},
    {"bad label escape \\t", "# HELP a A.\n# TYPE a counter\na{r=\"x\\ty\"} 1\n", "bad escape"},
    {"label value unterminated", "# HELP a A.\n# TYPE a counter\na{r=\"x} 1\n", "closing quote"},
    {"unquoted label value", "# HELP a A.\n# TYPE a counter\na{r=x} 1\n", "want =\""},
    {"trailing comma", "# HELP a A.\n# TYPE a counter\na{r=\"x\",} 1\n", "bad label name"},
    {"label twice", "# HELP a A.\n# TYPE a counter\na{r=\"x\",r=\"y\"} 1\n", "twice"},
    {"reserved label", "# HELP a A.\n# TYPE a counter\na{__name__=\"x\"} 1\n", "reserved"},
    {"label value not UTF-8", "# HELP a A.\n# TYPE a counter\na{r=\"\xc3\x28\"} 1\n", "UTF-8"},
    {"bad HELP escape", "# HELP a A \\q.\n# TYPE a counter\na 1\n", "bad escape"},
    {"non-cumulative buckets",
     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"2\"} 4\n"
     "h_bucket{le=\"+Inf\"} 5\nh_sum 1\nh_count 5\n",
     "below the previous"},
    {"le not ascending",
     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
     "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
     "not above"},
    {"+Inf bucket is not _count",
     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
     "h_sum 1\nh_count 3\n",
     "_count is"},
    {"no +Inf bucket",
     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf"},
    {"no _sum", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "_sum"},
    {"bucket without le", "# HELP h H.\n# TYPE h histogram\nh_bucket 1\n", "without le"},
    {"le on a counter", "# HELP a A.\n# TYPE a counter\na{le=\"1\"} 1\n", "label le"},
    {"histogram sample without suffix", "# HELP h H.\n# TYPE h histogram\nh 1\n", "_bucket"},
    {"negative counter", "# HELP a A.\n# TYPE a counter\na -1\n", "cannot be"},
    {"NaN counter", "# HELP a A.\n# TYPE a counter\na NaN\n", "cannot be"},
    {"negative bucket",
     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} -1\nh_sum 0\nh_count -1\n",
     "cannot be"},
    {"no newline at the end", "# HELP a A.\n# TYPE a counter\na 1", "newline"},
    {"empty text", "", "empty"},
    {"blank line", "# HELP a A.\n# TYPE a counter\n\na 1\n", "blank"},
    {"other comment", "# HELP a A.\n# TYPE a counter\n# just a note\na 1\n", "not a HELP"},
    {"summary type", "# HELP a A.\n# TYPE a summary\n", "not counter"},
    {"second TYPE", "# HELP a A.\n# TYPE a counter\n# TYPE a counter\na 1\n", "second TYPE"},
    {"second HELP", "# HELP a A.\n# HELP a B.\n# TYPE a counter\n", "second HELP"},
    {"TYPE after samples", "# HELP a A.\n# TYPE a counter\na 1\n# TYPE a counter\n",
     "after its samples"},
    {"family not contiguous",
     "# HELP a A.\n# TYPE a counter\na{s=\"0\"} 1\n# HELP b B.\n# TYPE b gauge\nb 1\n"
     "a{s=\"1\"} 1\n",
     "not contiguous"},
    {"family declared twice",
     "# HELP a A.\n# TYPE a counter\n# HELP b B.\n# TYPE b gauge\n# HELP a A.\n", "not contiguous"},
    {"bad metric name", "# HELP 1a A.\n# TYPE 1a counter\n", "bad metric name"},
    {"bad value", "# HELP a A.\n# TYPE a counter\na 1x\n", "bad value"},
    {"lowercase inf", "# HELP a A.\n# TYPE a counter\na inf\n", "bad value"},
    {"hex value", "# HELP a A.\n# TYPE a counter\na 0x10\n", "bad value"},
    {"timestamp", "# HELP a A.\n# TYPE a counter\na 1 1700000000000\n", "bad value"},
    {"two spaces", "# HELP a A.\n# TYPE a counter\na{r=\"x\"}  1\n", "bad value"},
    {"CRLF", "# HELP a A.\n# TYPE a counter\na 1\r\n", "bad value"},
    {"no HELP at all", "# TYPE a counter\n", "no HELP"},
};

static void test_parser_rejects(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_texts / sizeof bad_texts[0]; i++) {
        struct prom_text t;
        char err[ERR_BYTES];
        int rc = prom_parse(bad_texts[i].text, strlen(bad_texts[i].text), &t, err, sizeof err);
        if (rc == 0) {
            prom_free(&t);
            fail_msg("%s: accepted", bad_texts[i].what);
        }
        if (!strstr(err, bad_texts[i].why))
            fail_msg("%s: refused for another reason: %s", bad_texts[i].what, err);
        assert_null(t.buf);
        prom_free(&t);
    }
}

/* ---- the exposition ---------------------------------------------------------------------- */

static const struct {
    const char *name;
    enum prom_type type;
} families[] = {
    {"avlgate_build_info", PROM_GAUGE},
    {"avlgate_shards", PROM_GAUGE},
    {"avlgate_handshakes_total", PROM_COUNTER},
    {"avlgate_packets_acked_total", PROM_COUNTER},
    {"avlgate_records_stored_total", PROM_COUNTER},
    {"avlgate_connections_open", PROM_GAUGE},
    {"avlgate_row_ring_batches_busy", PROM_GAUGE},
    {"avlgate_listening", PROM_GAUGE},
    {"avlgate_receive_bytes_total", PROM_COUNTER},
    {"avlgate_loop_turns_total", PROM_COUNTER},
    {"avlgate_connections_closed_total", PROM_COUNTER},
    {"avlgate_handshakes_rejected_total", PROM_COUNTER},
    {"avlgate_packets_invalid_total", PROM_COUNTER},
    {"avlgate_commands_total", PROM_COUNTER},
    {"avlgate_postgres_up", PROM_GAUGE},
    {"avlgate_postgres_connects_total", PROM_COUNTER},
    {"avlgate_redis_up", PROM_GAUGE},
    {"avlgate_copy_duration_seconds", PROM_HISTOGRAM},
    {"avlgate_ack_latency_seconds", PROM_HISTOGRAM},
};

/* Series of one shard label each, and the field they come from. */
#define IS(field) offsetof(struct ingest_stats, field), false
#define ES(field) offsetof(struct engine_stats, field), true
static const struct {
    const char *name;
    size_t off;
    bool engine;
} plain[] = {
    {"avlgate_handshakes_total", IS(handshakes)},
    {"avlgate_handshakes_handed_off_total", IS(handed_off)},
    {"avlgate_packets_received_total", IS(packets)},
    {"avlgate_packets_acked_total", IS(packets_acked)},
    {"avlgate_acks_stale_total", IS(acks_stale)},
    {"avlgate_records_received_total", IS(records)},
    {"avlgate_records_stored_total", IS(records_stored)},
    {"avlgate_records_duplicate_total", IS(records_duplicate)},
    {"avlgate_batches_committed_total", IS(batches_committed)},
    {"avlgate_rows_committed_total", IS(rows_committed)},
    {"avlgate_batches_unknown_total", IS(batches_unknown)},
    {"avlgate_redis_errors_total", IS(registry_errors)},
    {"avlgate_connections_open", IS(conns_open)},
    {"avlgate_row_ring_batches_busy", IS(ring_busy)},
    {"avlgate_row_ring_batches", IS(ring_batches)},
    {"avlgate_connections_accepted_total", ES(accepted)},
    {"avlgate_connections_handed_in_total", ES(handed_in)},
    {"avlgate_receive_bytes_total", ES(recv_bytes)},
    {"avlgate_send_bytes_total", ES(send_bytes)},
    {"avlgate_receive_buffer_exhausted_total", ES(recv_enobufs)},
    {"avlgate_loop_turns_total", ES(loops)},
};

static void test_render_valid(void **state)
{
    (void)state;
    struct prom_text t;
    render_parsed(&t);
    for (size_t k = 0; k < sizeof families / sizeof families[0]; k++) {
        const struct prom_family *f = prom_family(&t, families[k].name);
        if (!f)
            fail_msg("no family %s", families[k].name);
        if (f->type != families[k].type)
            fail_msg("%s: type %d, want %d", f->name, f->type, families[k].type);
    }
    assert_true(VALUE(&t, "avlgate_shards", NULL) == SHARDS);
    assert_true(VALUE(&t, "avlgate_build_info", "version", "9.8.7-test", NULL) == 1);
    /* Every series but avlgate_shards and the build's carries a shard label in range. */
    for (size_t i = 0; i < t.samples_len; i++) {
        const struct prom_sample *s = &t.samples[i];
        if (!strcmp(s->name, "avlgate_shards") || !strcmp(s->name, "avlgate_build_info"))
            continue;
        const char *shard = prom_label(s, "shard");
        if (!shard || strlen(shard) != 1 || shard[0] < '0' || shard[0] >= '0' + SHARDS)
            fail_msg("line %u: %s: shard label %s", s->line, s->name, shard ? shard : "missing");
    }
    prom_free(&t);
}

/* Each shard's series show that shard's field: the pattern names both. */
static void test_render_values(void **state)
{
    (void)state;
    struct prom_text t;
    render_parsed(&t);
    for (unsigned i = 0; i < SHARDS; i++) {
        char sl[8];
        shard_label(i, sl);
        for (size_t k = 0; k < sizeof plain / sizeof plain[0]; k++) {
            assert_int_equal(prom_count(&t, plain[k].name, NULL), SHARDS);
            double v = VALUE(&t, plain[k].name, "shard", sl, NULL);
            if (v != (double)pattern(i, plain[k].off))
                fail_msg("%s{shard=\"%u\"} = %.0f, want %" PRIu64 " (word %zu of the %s stats)",
                         plain[k].name, i, v, pattern(i, plain[k].off), plain[k].off / 8,
                         plain[k].engine ? "engine" : "ingest");
        }
        for (int r = 0; r < ENGINE_CLOSE_REASONS; r++)
            assert_true(VALUE(&t, "avlgate_connections_closed_total", "shard", sl, "reason",
                              engine_close_reason_name((enum engine_close_reason)r),
                              NULL) == pattern(i, offsetof(struct engine_stats, closed[r])));
        assert_true(VALUE(&t, "avlgate_handshakes_rejected_total", "shard", sl, "reason",
                          "unknown_device",
                          NULL) == pattern(i, offsetof(struct ingest_stats, handshake_rejected)));
        assert_true(VALUE(&t, "avlgate_handshakes_rejected_total", "shard", sl, "reason",
                          "protocol",
                          NULL) == pattern(i, offsetof(struct ingest_stats, handshake_errors)));
        assert_true(VALUE(&t, "avlgate_commands_total", "shard", sl, "status", "sent", NULL) ==
                    pattern(i, offsetof(struct ingest_stats, cmds_sent)));
        assert_true(VALUE(&t, "avlgate_commands_total", "shard", sl, "status", "expired", NULL) ==
                    pattern(i, offsetof(struct ingest_stats, cmds_expired)));
        assert_true(VALUE(&t, "avlgate_postgres_connects_total", "shard", sl, "link", "data",
                          NULL) == pattern(i, offsetof(struct ingest_stats, pg_connects[0])));
        assert_true(VALUE(&t, "avlgate_postgres_connect_failures_total", "shard", sl, "link",
                          "control", NULL) ==
                    pattern(i, offsetof(struct ingest_stats, pg_connect_failures[1])));
        assert_true(VALUE(&t, "avlgate_postgres_up", "shard", sl, "link", "data", NULL) == 1);
    }
    assert_int_equal(prom_count(&t, "avlgate_connections_closed_total", NULL),
                     SHARDS * ENGINE_CLOSE_REASONS);
    /* Nothing invalid counted: the family is declared and has no series. */
    assert_non_null(prom_family(&t, "avlgate_packets_invalid_total"));
    assert_int_equal(prom_count(&t, "avlgate_packets_invalid_total", NULL), 0);
    prom_free(&t);
}

/* invalid_by_reason's index for a copyenc error, as count_invalid (gateway/ingest.c) makes it. */
static unsigned copyenc_index(int rc)
{
    return (unsigned)-(AVL_E_ERR_MIN - 1 + rc);
}

static void test_invalid_reasons(void **state)
{
    (void)state;
    stats[0].invalid_by_reason[-AVL_E_CODEC_UNKNOWN] = 2;
    stats[0].invalid_by_reason[-AVL_E_ENCODE_RANGE] = 3; /* the codec's last index */
    stats[1].invalid_by_reason[-AVL_E_CRC_MISMATCH] = 5;
    stats[1].invalid_by_reason[copyenc_index(COPYENC_E_NO_SPACE)] = 7; /* copyenc's first */
    stats[1].invalid_by_reason[copyenc_index(COPYENC_E_RECEIVED_RANGE)] = 11;
    stats[2].invalid_by_reason[copyenc_index(COPYENC_E_TS_RANGE)] = 13;
    assert_int_equal(copyenc_index(COPYENC_E_ERR_MIN), 29); /* the last one there is */
    assert_int_equal(COPYENC_E_RECEIVED_RANGE, COPYENC_E_ERR_MIN);
    struct prom_text t;
    render_parsed(&t);
    const struct {
        const char *shard, *reason;
        double v;
    } want[] = {
        {"0", avl_strerror(AVL_E_CODEC_UNKNOWN), 2},
        {"0", avl_strerror(AVL_E_ENCODE_RANGE), 3},
        {"1", avl_strerror(AVL_E_CRC_MISMATCH), 5},
        {"1", copyenc_strerror(COPYENC_E_NO_SPACE), 7},
        {"1", copyenc_strerror(COPYENC_E_RECEIVED_RANGE), 11},
        {"2", copyenc_strerror(COPYENC_E_TS_RANGE), 13},
    };
    assert_int_equal(prom_count(&t, "avlgate_packets_invalid_total", NULL),
                     sizeof want / sizeof want[0]);
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
        if (VALUE(&t, "avlgate_packets_invalid_total", "shard", want[k].shard, "reason",
                  want[k].reason, NULL) != want[k].v)
            fail_msg("invalid reason %s on shard %s", want[k].reason, want[k].shard);
    /* The names themselves, so a drift of the mapping cannot hide behind both strerrors. */
    assert_non_null(prom_find(&t, "avlgate_packets_invalid_total", "shard", "1", "reason",
                              "crc_mismatch", NULL));
    assert_non_null(
        prom_find(&t, "avlgate_packets_invalid_total", "shard", "2", "reason", "ts_range", NULL));
    assert_non_null(prom_find(&t, "avlgate_packets_invalid_total", "shard", "0", "reason",
                              "encode_range", NULL));
    prom_free(&t);
}

/* Observations in µs: on bucket bounds, between them, above the last. */
static const uint64_t ack_obs_us[] = {100, 500, 501, 3000, 999999, 1000000, 20000000, 10000000};
static const uint64_t copy_obs_us[] = {0, 2500, 2500, 7000000};

/* The histogram family on shard sl is what the observations obs make. */
static void check_hist(const struct prom_text *t, const char *name, const char *sl,
                       const uint64_t *obs, size_t n)
{
    char bucket[128], sum[128], count[128];
    snprintf(bucket, sizeof bucket, "%s_bucket", name);
    snprintf(sum, sizeof sum, "%s_sum", name);
    snprintf(count, sizeof count, "%s_count", name);
    assert_int_equal(prom_count(t, bucket, "shard", sl, NULL), PROM_HIST_BUCKETS + 1);
    unsigned b = 0;
    uint64_t sum_us = 0;
    for (size_t k = 0; k < n; k++)
        sum_us += obs[k];
    for (size_t i = 0; i < t->samples_len; i++) {
        const struct prom_sample *s = &t->samples[i];
        if (strcmp(s->name, bucket) != 0 || strcmp(prom_label(s, "shard"), sl) != 0)
            continue;
        const char *le = prom_label(s, "le");
        uint64_t bound_us = UINT64_MAX;
        if (b < PROM_HIST_BUCKETS) {
            char *end;
            double le_s = strtod(le, &end);
            assert_true(*end == '\0');
            if (abs_d(le_s - prom_hist_bucket_us[b] / 1e6) > 1e-12)
                fail_msg("%s shard %s bucket %u: le=\"%s\", want %g", name, sl, b, le,
                         prom_hist_bucket_us[b] / 1e6);
            bound_us = prom_hist_bucket_us[b];
        } else {
            assert_string_equal(le, "+Inf");
        }
        uint64_t cum = 0;
        for (size_t k = 0; k < n; k++)
            cum += obs[k] <= bound_us;
        if (s->value != (double)cum)
            fail_msg("%s{shard=\"%s\",le=\"%s\"} = %g, want %" PRIu64, name, sl, le, s->value, cum);
        b++;
    }
    assert_int_equal(b, PROM_HIST_BUCKETS + 1);
    assert_true(VALUE(t, count, "shard", sl, NULL) == (double)n);
    double got_sum = VALUE(t, sum, "shard", sl, NULL);
    if (abs_d(got_sum - sum_us / 1e6) > 1e-6)
        fail_msg("%s{shard=\"%s\"} = %.6f, want %.6f", sum, sl, got_sum, sum_us / 1e6);
}

static void test_histograms(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof ack_obs_us / sizeof ack_obs_us[0]; k++)
        prom_hist_observe(&stats[0].ack_latency, ack_obs_us[k]);
    for (size_t k = 0; k < sizeof copy_obs_us / sizeof copy_obs_us[0]; k++)
        prom_hist_observe(&stats[2].copy_latency, copy_obs_us[k]);
    prom_hist_observe(&stats[1].copy_latency, 42); /* and shard 1's ack_latency stays empty */
    static const uint64_t one_42[] = {42};
    struct prom_text t;
    render_parsed(&t);
    check_hist(&t, "avlgate_ack_latency_seconds", "0", ack_obs_us,
               sizeof ack_obs_us / sizeof ack_obs_us[0]);
    check_hist(&t, "avlgate_ack_latency_seconds", "1", NULL, 0);
    check_hist(&t, "avlgate_ack_latency_seconds", "2", NULL, 0);
    check_hist(&t, "avlgate_copy_duration_seconds", "0", NULL, 0);
    check_hist(&t, "avlgate_copy_duration_seconds", "1", one_42, 1);
    check_hist(&t, "avlgate_copy_duration_seconds", "2", copy_obs_us,
               sizeof copy_obs_us / sizeof copy_obs_us[0]);
    prom_free(&t);
}

static void test_redis_up(void **state)
{
    (void)state;
    struct prom_text t;
    render_parsed(&t);
    assert_non_null(prom_family(&t, "avlgate_redis_up"));
    assert_int_equal(prom_count(&t, "avlgate_redis_up", NULL), 0);
    prom_free(&t);

    /* Shards 0 and 2 configured (a real gateway has all or none: each line on its own). */
    stats[0].redis_configured = 1;
    stats[0].redis_up[0] = 1;
    stats[0].redis_up[1] = 0;
    stats[2].redis_configured = 1;
    stats[2].redis_up[0] = 0;
    stats[2].redis_up[1] = 1; /* not shown: the intake is shard 0's */
    render_parsed(&t);
    assert_int_equal(prom_count(&t, "avlgate_redis_up", NULL), 3);
    assert_true(VALUE(&t, "avlgate_redis_up", "shard", "0", "link", "registry", NULL) == 1);
    assert_true(VALUE(&t, "avlgate_redis_up", "shard", "0", "link", "intake", NULL) == 0);
    assert_true(VALUE(&t, "avlgate_redis_up", "shard", "2", "link", "registry", NULL) == 0);
    assert_int_equal(prom_count(&t, "avlgate_redis_up", "shard", "1", NULL), 0);
    prom_free(&t);
}

/* The database links as gauges: data and control per shard, as published. */
static void test_postgres_up(void **state)
{
    (void)state;
    stats[1].pg_up[0] = 0;
    stats[2].pg_up[1] = 0;
    struct prom_text t;
    render_parsed(&t);
    assert_int_equal(prom_count(&t, "avlgate_postgres_up", NULL), 2 * SHARDS);
    assert_true(VALUE(&t, "avlgate_postgres_up", "shard", "1", "link", "data", NULL) == 0);
    assert_true(VALUE(&t, "avlgate_postgres_up", "shard", "1", "link", "control", NULL) == 1);
    assert_true(VALUE(&t, "avlgate_postgres_up", "shard", "2", "link", "data", NULL) == 1);
    assert_true(VALUE(&t, "avlgate_postgres_up", "shard", "2", "link", "control", NULL) == 0);
    assert_true(prom_sum(&t, "avlgate_postgres_up", "link", "data", NULL) == SHARDS - 1);
    prom_free(&t);
}

/* cap 0 measures; the measured length + 1 gets the whole text; a short buffer is never
 * written past its cap and the return says what was needed. */
static void test_render_length(void **state)
{
    (void)state;
    stats[1].invalid_by_reason[-AVL_E_CRC_MISMATCH] = 1;
    prom_hist_observe(&stats[0].ack_latency, 1234);
    enum { BIG = 1 << 20 };
    char *big = malloc(BIG);
    assert_non_null(big);
    memset(big, 0xA5, BIG);
    size_t n = metrics_render(&sh, big, 0);
    assert_true(n > 1000 && n < BIG / 2);
    for (size_t i = 0; i < BIG; i++)
        if ((unsigned char)big[i] != 0xA5)
            fail_msg("cap 0: byte %zu written", i);
    assert_int_equal(metrics_render(&sh, NULL, 0), n);

    size_t full_len = metrics_render(&sh, big, BIG);
    assert_int_equal(full_len, n);
    assert_int_equal(strlen(big), n);

    char *exact = malloc(n + 1 + 64);
    assert_non_null(exact);
    memset(exact, 0xA5, n + 1 + 64);
    assert_int_equal(metrics_render(&sh, exact, n + 1), n);
    assert_memory_equal(exact, big, n + 1); /* the same text and its NUL */
    for (size_t i = n + 1; i < n + 1 + 64; i++)
        assert_int_equal((unsigned char)exact[i], 0xA5);

    memset(exact, 0xA5, n + 1 + 64);
    assert_int_equal(metrics_render(&sh, exact, n / 2), n);
    for (size_t i = n / 2; i < n + 1 + 64; i++)
        if ((unsigned char)exact[i] != 0xA5)
            fail_msg("cap %zu: byte %zu written", n / 2, i);
    free(exact);
    free(big);
}

static void test_health(void **state)
{
    (void)state;
    char body[512];
    int ok = -1;
    size_t n = metrics_health(&sh, body, sizeof body, &ok);
    assert_int_equal(ok, 1);
    assert_int_equal(n, 3);
    assert_memory_equal(body, "ok\n", 3);

    /* Redis and the counters do not matter; both database links and the listener do, each
     * shard's in turn (without the control link no handshake can finish). */
    stats[0].redis_configured = 1;
    stats[0].redis_up[0] = 0;
    n = metrics_health(&sh, body, sizeof body, &ok);
    assert_int_equal(ok, 1);
    assert_int_equal(n, 3);

    stats[0].pg_up[1] = 0;
    n = metrics_health(&sh, body, sizeof body, &ok);
    assert_int_equal(ok, 0);
    static const char want_control[] =
        "shard 0: database control link down (no handshake can finish)\n";
    assert_int_equal(n, strlen(want_control));
    assert_memory_equal(body, want_control, n);
    stats[0].pg_up[1] = 1;

    stats[1].pg_up[0] = 0;
    stats[2].listening = 0;
    n = metrics_health(&sh, body, sizeof body, &ok);
    assert_int_equal(ok, 0);
    static const char want[] = "shard 1: database link down\nshard 2: not listening\n";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(body, want, n);

    stats[0].listening = 0;
    stats[0].pg_up[0] = 0;
    n = metrics_health(&sh, body, sizeof body, &ok);
    assert_int_equal(ok, 0);
    static const char want_all[] = "shard 0: not listening\nshard 0: database link down\n"
                                   "shard 1: database link down\nshard 2: not listening\n";
    assert_int_equal(n, strlen(want_all));
    assert_memory_equal(body, want_all, n);

    /* A short buffer: a prefix of the body, and the length says only what is there (the
     * body goes out as it is: no NUL in it). */
    memset(body, 0x5A, sizeof body);
    ok = -1;
    n = metrics_health(&sh, body, 10, &ok);
    assert_int_equal(ok, 0);
    assert_true(n < 10);
    assert_memory_equal(body, want_all, n);
    assert_null(memchr(body, '\0', n));
    assert_int_equal((unsigned char)body[10], 0x5A);
}

/* Every metric the dashboard and the Prometheus example (tuning/) query is one the gateway
 * exposes: a renamed family would otherwise leave an empty panel or a silent alert. */
static void test_tuning_names(void **state)
{
    (void)state;
    struct prom_text t;
    render_parsed(&t);
    static const char *const files[] = {"tuning/grafana-dashboard.json", "tuning/prometheus.yml"};
    unsigned names = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", AVLGATE_SOURCE_DIR, files[f]);
        FILE *in = fopen(path, "r");
        assert_non_null(in);
        static char text[1 << 17];
        size_t n = fread(text, 1, sizeof text - 1, in);
        fclose(in);
        assert_true(n > 0 && n < sizeof text - 1);
        text[n] = 0;
        for (const char *p = strstr(text, "avlgate_"); p; p = strstr(p + 1, "avlgate_")) {
            if (p > text && (isalnum((unsigned char)p[-1]) || p[-1] == '_' || p[-1] == '-'))
                continue; /* part of another word (a file name such as avlgate-alerts) */
            char name[128];
            size_t k = 0;
            while (k < sizeof name - 1 && (isalnum((unsigned char)p[k]) || p[k] == '_'))
                name[k] = p[k], k++;
            name[k] = 0;
            /* A histogram's series: its family is the name without the suffix. */
            static const char *const suffix[] = {"_bucket", "_sum", "_count"};
            for (size_t x = 0; x < 3 && !prom_family(&t, name); x++) {
                size_t sl = strlen(suffix[x]);
                if (k > sl && strcmp(name + k - sl, suffix[x]) == 0)
                    name[k - sl] = 0;
            }
            if (!prom_family(&t, name))
                fail_msg("%s queries %s, which /metrics does not have", files[f], name);
            names++;
        }
    }
    assert_true(names >= 20);
    prom_free(&t);
}

/* The HTTP request reader (metrics_request_parse), table-driven: each request whole, then cut
 * at every length (need more, or the same verdict), from an exactly-sized heap copy. */
static void test_request_reader(void **state)
{
    (void)state;
    static const struct {
        const char *name, *bytes;
        int rc; /* > 0: the head's length */
        enum metrics_method method;
        enum metrics_target target;
        const char *path;
    } cases[] = {
        {"get", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 34, METRICS_METHOD_GET,
         METRICS_TARGET_METRICS, "/metrics"},
        {"healthz, bare LF", "GET /healthz HTTP/1.0\n\n", 23, METRICS_METHOD_GET,
         METRICS_TARGET_HEALTHZ, "/healthz"},
        {"head, query", "HEAD /metrics?x=1 HTTP/1.1\r\n\r\n", 30, METRICS_METHOD_HEAD,
         METRICS_TARGET_METRICS, "/metrics"},
        {"no version", "GET /healthz\r\n\r\n", 16, METRICS_METHOD_GET, METRICS_TARGET_HEALTHZ,
         "/healthz"},
        {"body after the head", "POST /metrics HTTP/1.1\r\n\r\nxyz", 26, METRICS_METHOD_OTHER,
         METRICS_TARGET_METRICS, "/metrics"},
        {"lower-case method", "get /metrics HTTP/1.1\r\n\r\n", 25, METRICS_METHOD_OTHER,
         METRICS_TARGET_METRICS, "/metrics"},
        {"other path", "GET /metricsx HTTP/1.1\r\n\r\n", 26, METRICS_METHOD_GET,
         METRICS_TARGET_OTHER, "/metricsx"},
        {"absolute form", "GET http://h/metrics HTTP/1.1\r\n\r\n", 33, METRICS_METHOD_GET,
         METRICS_TARGET_OTHER, "http://h/metrics"},
        {"no target", "GET\r\n\r\n", METRICS_REQ_E_BAD, METRICS_METHOD_OTHER, METRICS_TARGET_OTHER,
         ""},
        {"empty target", "GET  HTTP/1.1\r\n\r\n", METRICS_REQ_E_BAD, METRICS_METHOD_OTHER,
         METRICS_TARGET_OTHER, ""},
        {"empty method", " /metrics HTTP/1.1\r\n\r\n", METRICS_REQ_E_BAD, METRICS_METHOD_OTHER,
         METRICS_TARGET_OTHER, ""},
        {"empty head", "\r\n\r\n", METRICS_REQ_E_BAD, METRICS_METHOD_OTHER, METRICS_TARGET_OTHER,
         ""},
        {"only a line", "GET /metrics HTTP/1.1\r\n", METRICS_REQ_NEED_MORE, METRICS_METHOD_OTHER,
         METRICS_TARGET_OTHER, ""},
        {"nothing", "", METRICS_REQ_NEED_MORE, METRICS_METHOD_OTHER, METRICS_TARGET_OTHER, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].bytes);
        for (size_t k = 0; k <= len; k++) {
            char *c = malloc(k ? k : 1);
            assert_non_null(c);
            memcpy(c, cases[i].bytes, k);
            struct metrics_request r;
            int rc = metrics_request_parse(c, k, &r);
            bool whole = cases[i].rc > 0 ? k >= (size_t)cases[i].rc : k == len;
            if (!whole) {
                if (rc != METRICS_REQ_NEED_MORE && rc != cases[i].rc)
                    fail_msg("%s cut at %zu: %d", cases[i].name, k, rc);
            } else if (rc != cases[i].rc) {
                fail_msg("%s (%zu bytes): %d, want %d", cases[i].name, k, rc, cases[i].rc);
            } else if (rc > 0) {
                assert_int_equal(r.method, cases[i].method);
                assert_int_equal(r.target, cases[i].target);
                assert_int_equal(r.path_len, strlen(cases[i].path));
                assert_memory_equal(r.path, cases[i].path, r.path_len);
                assert_ptr_equal(r.path, c + strcspn(cases[i].bytes, " ") + 1);
            }
            free(c);
        }
    }
    assert_string_equal(metrics_request_strerror(METRICS_REQ_E_BAD), "bad_request");
    assert_string_equal(metrics_request_strerror(METRICS_REQ_E_TOO_LARGE), "too_large");
    assert_string_equal(metrics_request_strerror(-99), "unknown_error");
}

/* A NUL byte is a bad request as soon as it arrives; a head that does not end within
 * METRICS_REQUEST_BYTES_MAX bytes is too large, and nothing past that limit is read. */
static void test_request_reader_limits(void **state)
{
    (void)state;
    struct metrics_request r;
    static const char nul[] = "GET /me\0trics HTTP/1.1\r\n\r\n";
    assert_int_equal(metrics_request_parse(nul, 7, &r), METRICS_REQ_NEED_MORE);
    assert_int_equal(metrics_request_parse(nul, 8, &r), METRICS_REQ_E_BAD);
    assert_int_equal(metrics_request_parse(nul, sizeof nul - 1, &r), METRICS_REQ_E_BAD);

    enum { MAX = METRICS_REQUEST_BYTES_MAX };
    char *big = malloc(MAX + 2);
    assert_non_null(big);
    memset(big, 'a', MAX + 2);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
    assert_int_equal(metrics_request_parse(big, MAX - 1, &r), METRICS_REQ_NEED_MORE);
    assert_int_equal(metrics_request_parse(big, MAX, &r), METRICS_REQ_E_TOO_LARGE);
    /* The head's end as the last two bytes within the limit: whole; one byte later: too large. */
    memcpy(big + MAX - 2, "\n\n", 2);
    assert_int_equal(metrics_request_parse(big, MAX, &r), MAX);
    memset(big + MAX - 2, 'a', 2);
    memcpy(big + MAX - 1, "\n\n", 2);
    assert_int_equal(metrics_request_parse(big, MAX + 1, &r), METRICS_REQ_E_TOO_LARGE);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parser_accepts),
        cmocka_unit_test(test_parser_rejects),
        cmocka_unit_test_setup(test_render_valid, setup),
        cmocka_unit_test_setup(test_render_values, setup),
        cmocka_unit_test_setup(test_invalid_reasons, setup),
        cmocka_unit_test_setup(test_histograms, setup),
        cmocka_unit_test_setup(test_redis_up, setup),
        cmocka_unit_test_setup(test_postgres_up, setup),
        cmocka_unit_test_setup(test_render_length, setup),
        cmocka_unit_test_setup(test_tuning_names, setup),
        cmocka_unit_test_setup(test_health, setup),
        cmocka_unit_test(test_request_reader),
        cmocka_unit_test(test_request_reader_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
