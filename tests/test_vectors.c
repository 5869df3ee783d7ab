/* test_vectors.c — the golden vectors of ../shared/protocol/vectors.jsonl (official wiki and PDF
 * examples, decoded in full by an independent reference decoder; TELTONIKA.md §9).
 *
 * For each vector, one test decodes it and compares every listed field (records, IO groups in
 * wire order, UDP header, GPRS messages, the server ACK), and one test re-encodes the decoded
 * values and checks that the encoder gives back the original bytes exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/avl.h"
#include "tests/support/testutil.h"

enum { VECTORS_EXPECTED = 24 };

struct vector {
    const struct tu_json *j;
    const char *name;
    uint8_t *bytes;
    size_t len;
};

static struct tu_json *vectors_json[64];
static struct vector vectors[64];
static size_t vectors_len;

/* ---------------------------------------------------------------------------------------------
 * JSON access that fails the test with the vector's name when the file is not as expected
 * ------------------------------------------------------------------------------------------- */

static const struct tu_json *req(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = tu_json_get(obj, key);
    if (!m)
        fail_msg("%s: field \"%s\" missing", v->name, key);
    return m;
}

static uint64_t req_u64(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = req(v, obj, key);
    if (m->type != TU_JSON_NUMBER || !m->num_is_int || m->num_neg)
        fail_msg("%s: field \"%s\" is not a non-negative integer", v->name, key);
    return m->u;
}

static int64_t req_i64(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = req(v, obj, key);
    if (m->type != TU_JSON_NUMBER || !m->num_is_int)
        fail_msg("%s: field \"%s\" is not an integer", v->name, key);
    return m->i;
}

static double req_num(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = req(v, obj, key);
    if (m->type != TU_JSON_NUMBER)
        fail_msg("%s: field \"%s\" is not a number", v->name, key);
    return m->num;
}

static const char *req_str(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = req(v, obj, key);
    if (m->type != TU_JSON_STRING)
        fail_msg("%s: field \"%s\" is not a string", v->name, key);
    return m->str;
}

static bool req_bool(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const struct tu_json *m = req(v, obj, key);
    if (m->type != TU_JSON_BOOL)
        fail_msg("%s: field \"%s\" is not a boolean", v->name, key);
    return m->boolean;
}

/* "0xcafe" style fields. */
static unsigned long req_hexnum(const struct vector *v, const struct tu_json *obj, const char *key)
{
    const char *s = req_str(v, obj, key);
    char *end;
    if (strncmp(s, "0x", 2) != 0)
        fail_msg("%s: field \"%s\" = \"%s\" is not 0x hex", v->name, key, s);
    unsigned long n = strtoul(s + 2, &end, 16);
    if (*end != '\0' || end == s + 2)
        fail_msg("%s: field \"%s\" = \"%s\" is not 0x hex", v->name, key, s);
    return n;
}

/* Decodes a hex string field into a heap buffer. */
static uint8_t *hex_field(const struct vector *v, const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);
    long got = tu_hex_decode(hex, n, out, n / 2 + 1);
    if (got < 0)
        fail_msg("%s: bad hex \"%.20s...\"", v->name, hex);
    *len = (size_t)got;
    return out;
}

static uint64_t parse_decimal(const struct vector *v, const char *s)
{
    uint64_t n = 0;
    if (!*s)
        fail_msg("%s: empty number", v->name);
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            fail_msg("%s: \"%s\" is not decimal", v->name, s);
        n = n * 10 + (uint64_t)(*s - '0');
    }
    return n;
}

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be_at(const uint8_t *p, unsigned width)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < width; i++)
        n = n << 8 | p[i];
    return n;
}

/* Packed BCD (Codecs 14 and 15): 16 decimal digits in 8 bytes. */
static uint64_t bcd_imei(const uint8_t *p)
{
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n = n * 100 + (uint64_t)(p[i] >> 4) * 10 + (p[i] & 15);
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * The mini JSON reader itself
 * ------------------------------------------------------------------------------------------- */

static void test_json_reader(void **state)
{
    (void)state;
    static const char text[] =
        " {\"a\": [1, -2, 3.5, -100.3628933, 1e3, 18446744073709551615], \"s\": \"x\\\"y\\\\"
        "\\u00e9\\n\", \"t\": true, \"f\": false, \"n\": null, \"o\": {\"k\": []}} ";
    char err[128] = "";
    struct tu_json *j = tu_json_parse(text, strlen(text), err, sizeof err);
    if (!j)
        fail_msg("%s", err);
    assert_int_equal(j->type, TU_JSON_OBJECT);
    assert_int_equal(j->len, 6);
    const struct tu_json *a = tu_json_get(j, "a");
    assert_non_null(a);
    assert_int_equal(a->type, TU_JSON_ARRAY);
    assert_int_equal(a->len, 6);
    assert_true(a->items[0].num_is_int && a->items[0].i == 1);
    assert_true(a->items[1].num_is_int && a->items[1].i == -2 && a->items[1].num_neg);
    assert_false(a->items[2].num_is_int);
    assert_true(a->items[2].num == 3.5);
    assert_int_equal(tu_round_i64(a->items[3].num * 1e7), -1003628933);
    assert_false(a->items[4].num_is_int);
    assert_true(a->items[4].num == 1000.0);
    assert_true(a->items[5].num_is_int && a->items[5].u == UINT64_MAX);
    const struct tu_json *s = tu_json_get(j, "s");
    assert_non_null(s);
    assert_string_equal(s->str, "x\"y\\\xc3\xa9\n");
    assert_int_equal(s->str_len, 7);
    assert_true(tu_json_get(j, "t")->boolean);
    assert_int_equal(tu_json_get(j, "f")->type, TU_JSON_BOOL);
    assert_false(tu_json_get(j, "f")->boolean);
    assert_int_equal(tu_json_get(j, "n")->type, TU_JSON_NULL);
    assert_int_equal(tu_json_get(tu_json_get(j, "o"), "k")->len, 0);
    assert_null(tu_json_get(j, "missing"));
    tu_json_free(j);

    static const char *const bad[] = {"",      "{",   "[1,]", "{\"a\" 1}", "tru",
                                      "\"abc", "1 2", "-",    "1.",        "{\"a\":1,}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = tu_json_parse(bad[i], strlen(bad[i]), err, sizeof err);
        if (j)
            fail_msg("accepted bad JSON \"%s\"", bad[i]);
    }

    assert_int_equal(tu_round_i64(2.5), 3);
    assert_int_equal(tu_round_i64(-2.5), -3);
    assert_int_equal(tu_round_i64(-2.4), -2);
    assert_int_equal(tu_round_i64(9.82974 * 1e7), 98297400);
    assert_int_equal(tu_round_i64(-100.3628933 * 1e7), -1003628933);

    int64_t ms;
    assert_true(tu_iso8601_ms("2019-06-10T10:04:46.000Z", 24, &ms));
    assert_int_equal(ms, 1560161086000);
    assert_true(tu_iso8601_ms("1970-01-01T00:00:00Z", 20, &ms));
    assert_int_equal(ms, 0);
    assert_true(tu_iso8601_ms("2013-07-17T06:34:09.140Z", 24, &ms));
    assert_int_equal(ms, 1374042849140);
    assert_false(tu_iso8601_ms("2013-07-17 06:34:09Z", 20, &ms));
}

/* ---------------------------------------------------------------------------------------------
 * Records and IO
 * ------------------------------------------------------------------------------------------- */

static const char *const group_names[] = {"N1", "N2", "N4", "N8", "NX"};
static const unsigned group_widths[] = {1, 2, 4, 8, 0};

/* Bytes the IO groups take on the wire, from the expected element lists. */
static size_t expected_io_bytes(uint8_t codec, const size_t counts[5], size_t nx_value_bytes)
{
    size_t id = codec == AVL_CODEC_8 ? 1 : 2;
    size_t count = codec == AVL_CODEC_8E ? 2 : 1;
    size_t groups = codec == AVL_CODEC_8E ? 5 : 4;
    size_t n = groups * count;
    for (int g = 0; g < 4; g++)
        n += counts[g] * (id + group_widths[g]);
    if (codec == AVL_CODEC_8E)
        n += counts[4] * (2 + 2) + nx_value_bytes;
    return n;
}

static void check_record(const struct vector *v, size_t ri, const struct tu_json *jr,
                         const struct avl_record *r, uint8_t codec)
{
    uint64_t ts = req_u64(v, jr, "timestamp_ms");
    int64_t ts_text;
    const char *time = req_str(v, jr, "time");
    if (!tu_iso8601_ms(time, strlen(time), &ts_text) || (uint64_t)ts_text != ts)
        fail_msg("%s rec %zu: vector time \"%s\" != timestamp_ms %llu", v->name, ri, time,
                 (unsigned long long)ts);
    if (r->ts_ms != ts)
        fail_msg("%s rec %zu: ts_ms %llu, want %llu", v->name, ri, (unsigned long long)r->ts_ms,
                 (unsigned long long)ts);
    assert_int_equal(r->priority, req_u64(v, jr, "priority"));
    long long lon = tu_round_i64(req_num(v, jr, "lon") * 1e7);
    long long lat = tu_round_i64(req_num(v, jr, "lat") * 1e7);
    if (r->lon_e7 != lon || r->lat_e7 != lat)
        fail_msg("%s rec %zu: lon/lat %d/%d, want %lld/%lld", v->name, ri, r->lon_e7, r->lat_e7,
                 lon, lat);
    assert_int_equal(r->altitude_m, req_i64(v, jr, "alt"));
    assert_int_equal(r->angle_deg, req_u64(v, jr, "angle"));
    assert_int_equal(r->satellites, req_u64(v, jr, "sats"));
    assert_int_equal(r->speed_kmh, req_u64(v, jr, "speed"));
    assert_int_equal(r->event_id, req_u64(v, jr, "event_io"));
    assert_int_equal(r->io_total, req_u64(v, jr, "n_total"));
    assert_int_equal(r->codec, codec);
    if (codec == AVL_CODEC_16)
        assert_int_equal(r->generation, req_u64(v, jr, "gen_type"));
    else {
        assert_null(tu_json_get(jr, "gen_type"));
        assert_int_equal(r->generation, AVL_GENERATION_NONE);
    }

    /* IO groups, in wire order, against the iterator. */
    const struct tu_json *io = req(v, jr, "io");
    if (codec != AVL_CODEC_8E && tu_json_get(io, "NX"))
        fail_msg("%s rec %zu: NX group in a codec 0x%02x vector", v->name, ri, codec);
    struct avl_io_iter it;
    struct avl_io got;
    size_t counts[5] = {0}, nx_value_bytes = 0, elems = 0;
    avl_io_iter_init(&it, r);
    for (int g = 0; g < (codec == AVL_CODEC_8E ? 5 : 4); g++) {
        const struct tu_json *list = req(v, io, group_names[g]);
        assert_int_equal(list->type, TU_JSON_ARRAY);
        counts[g] = list->len;
        for (size_t k = 0; k < list->len; k++, elems++) {
            const struct tu_json *pair = &list->items[k];
            if (pair->type != TU_JSON_ARRAY || pair->len != 2)
                fail_msg("%s rec %zu %s[%zu]: not an [id, value] pair", v->name, ri, group_names[g],
                         k);
            uint64_t id = pair->items[0].u;
            if (!avl_io_next(&it, &got))
                fail_msg("%s rec %zu: iterator ended before %s[%zu] (id %llu)", v->name, ri,
                         group_names[g], k, (unsigned long long)id);
            if (got.id != id)
                fail_msg("%s rec %zu %s[%zu]: id %u, want %llu", v->name, ri, group_names[g], k,
                         got.id, (unsigned long long)id);
            if (g < 4) {
                const struct tu_json *val = &pair->items[1];
                assert_true(val->type == TU_JSON_NUMBER && val->num_is_int);
                assert_false(got.nx);
                assert_int_equal(got.len, group_widths[g]);
                if (got.value != val->u)
                    fail_msg("%s rec %zu id %u: value %llu, want %llu", v->name, ri, got.id,
                             (unsigned long long)got.value, (unsigned long long)val->u);
                assert_int_equal(be_at(got.bytes, got.len), val->u);
            } else {
                /* NX values are hex strings of the raw bytes. */
                const struct tu_json *val = &pair->items[1];
                assert_int_equal(val->type, TU_JSON_STRING);
                size_t want_len;
                uint8_t *want = hex_field(v, val->str, &want_len);
                assert_true(got.nx);
                assert_int_equal(got.len, want_len);
                assert_memory_equal(got.bytes, want, want_len);
                nx_value_bytes += want_len;
                free(want);
            }
            /* Values point into the packet. */
            assert_true(got.bytes >= v->bytes && got.bytes + got.len <= v->bytes + v->len);
        }
    }
    if (avl_io_next(&it, &got))
        fail_msg("%s rec %zu: iterator yields extra element id %u", v->name, ri, got.id);
    assert_int_equal(elems, r->io_total);
    assert_int_equal(r->io_bytes, expected_io_bytes(codec, counts, nx_value_bytes));
    assert_true(r->io >= v->bytes && r->io + r->io_bytes <= v->bytes + v->len);
}

static void check_records(const struct vector *v, const struct avl_record *recs, size_t n,
                          uint8_t codec)
{
    const struct tu_json *list = req(v, v->j, "records");
    assert_int_equal(list->type, TU_JSON_ARRAY);
    if (list->len != n)
        fail_msg("%s: %zu records, want %zu", v->name, n, list->len);
    for (size_t i = 0; i < n; i++)
        check_record(v, i, &list->items[i], &recs[i], codec);
}

static void check_ack_hex(const struct vector *v, const uint8_t *ack, size_t ack_len)
{
    char hex[2 * AVL_UDP_ACK_BYTES + 1];
    tu_hex_encode(ack, ack_len, hex);
    const char *want = req_str(v, v->j, "server_ack_hex");
    if (strcmp(hex, want) != 0)
        fail_msg("%s: ACK %s, want %s", v->name, hex, want);
}

/* ---------------------------------------------------------------------------------------------
 * Decoding
 * ------------------------------------------------------------------------------------------- */

static void check_tcp_header(const struct vector *v)
{
    assert_int_equal(req_u64(v, v->j, "data_len"), be32_at(v->bytes + 4));
    assert_true(req_bool(v, v->j, "len_ok"));
    assert_int_equal(v->len, be32_at(v->bytes + 4) + 12);
    /* The vector's own CRC fields agree with the bytes and with avl_crc16. */
    uint16_t calc = avl_crc16(0, v->bytes + 8, v->len - 12);
    assert_int_equal(calc, req_hexnum(v, v->j, "crc_calc"));
    assert_int_equal(be32_at(v->bytes + v->len - 4), req_hexnum(v, v->j, "crc_stored"));
    assert_int_equal(req_bool(v, v->j, "crc_ok"), calc == req_hexnum(v, v->j, "crc_stored"));
}

static void decode_tcp_avl(const struct vector *v, uint8_t codec)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_frame f;
    struct avl_packet pkt;
    check_tcp_header(v);
    int rc = avl_scan(v->bytes, v->len, AVL_SCAN_DATA, 0, &f);
    if (rc != (int)v->len)
        fail_msg("%s: scan %d (%s)", v->name, rc, avl_strerror(rc));
    assert_int_equal(f.kind, AVL_FRAME_AVL);
    assert_int_equal(f.codec, codec);
    memset(&pkt, 0xA5, sizeof pkt);
    rc = avl_decode_tcp(v->bytes, v->len, &pkt, recs);
    if (rc != 0)
        fail_msg("%s: decode_tcp %s", v->name, avl_strerror(rc));
    assert_int_equal(pkt.codec, codec);
    assert_int_equal(pkt.records_len, req_u64(v, v->j, "n1"));
    assert_int_equal(pkt.records_len, req_u64(v, v->j, "n2"));
    assert_int_equal(pkt.frame_bytes, v->len);
    assert_int_equal(pkt.udp_packet_id, 0);
    assert_int_equal(pkt.udp_avl_packet_id, 0);
    assert_int_equal(pkt.udp_not_usable, 0);
    assert_int_equal(pkt.imei, 0);
    assert_true(req_bool(v, v->j, "consumed_ok"));
    check_records(v, recs, pkt.records_len, codec);

    /* The body decoder alone gives the same records. */
    static struct avl_record body[AVL_RECORDS_MAX];
    uint16_t n = 0;
    assert_int_equal(avl_decode_body(v->bytes + 8, v->len - 12, &n, body), 0);
    assert_int_equal(n, pkt.records_len);
    assert_memory_equal(body, recs, n * sizeof recs[0]);
    /* ... and the GPRS decoder refuses the AVL frame. */
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    uint8_t c;
    assert_int_equal(avl_decode_gprs(v->bytes, v->len, &c, msgs), AVL_E_NOT_AVL);

    uint8_t ack[AVL_TCP_ACK_BYTES];
    assert_int_equal(avl_encode_tcp_ack(ack, pkt.records_len), AVL_TCP_ACK_BYTES);
    check_ack_hex(v, ack, sizeof ack);
}

static void decode_udp_avl(const struct vector *v, uint8_t codec)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    assert_int_equal(req_u64(v, v->j, "udp_len"), (uint64_t)(v->bytes[0] << 8 | v->bytes[1]));
    assert_true(req_bool(v, v->j, "udp_len_ok"));
    memset(&pkt, 0xA5, sizeof pkt);
    int rc = avl_decode_udp(v->bytes, v->len, &pkt, recs);
    if (rc != 0)
        fail_msg("%s: decode_udp %s", v->name, avl_strerror(rc));
    assert_int_equal(pkt.codec, codec);
    assert_int_equal(pkt.frame_bytes, v->len);
    assert_int_equal(pkt.records_len, req_u64(v, v->j, "n1"));
    assert_int_equal(pkt.records_len, req_u64(v, v->j, "n2"));
    assert_int_equal(pkt.udp_packet_id, req_hexnum(v, v->j, "packet_id"));
    assert_int_equal(pkt.udp_avl_packet_id, req_u64(v, v->j, "avl_packet_id"));
    assert_int_equal(pkt.udp_not_usable, req_u64(v, v->j, "not_usable"));
    assert_int_equal(pkt.imei, parse_decimal(v, req_str(v, v->j, "imei")));
    assert_true(req_bool(v, v->j, "consumed_ok"));
    check_records(v, recs, pkt.records_len, codec);

    uint8_t ack[AVL_UDP_ACK_BYTES];
    assert_int_equal(
        avl_encode_udp_ack(ack, pkt.udp_packet_id, pkt.udp_avl_packet_id, (uint8_t)pkt.records_len),
        AVL_UDP_ACK_BYTES);
    check_ack_hex(v, ack, sizeof ack);
    uint16_t packet_id = 0;
    uint8_t avl_id = 0, n = 0;
    assert_int_equal(avl_decode_udp_ack(ack, sizeof ack, &packet_id, &avl_id, &n), 0);
    assert_int_equal(packet_id, pkt.udp_packet_id);
    assert_int_equal(avl_id, pkt.udp_avl_packet_id);
    assert_int_equal(n, pkt.records_len);
}

/* The parts of a GPRS message by codec: 13 = ts(4) text, 14 = imei(8 BCD) text,
 * 15 = ts(4) imei(8 BCD) text, 12 = text only. */
static void check_gprs_msg(const struct vector *v, size_t i, const struct tu_json *jm,
                           const struct avl_gprs_msg *m, uint8_t codec)
{
    assert_int_equal(m->type, req_hexnum(v, jm, "type"));
    assert_int_equal(m->size, req_u64(v, jm, "size"));
    size_t payload_len;
    uint8_t *payload = hex_field(v, req_str(v, jm, "payload_hex"), &payload_len);
    assert_int_equal(payload_len, m->size);
    assert_true(m->payload >= v->bytes && m->payload + m->size <= v->bytes + v->len);
    assert_memory_equal(m->payload, payload, payload_len);

    uint32_t ts = 0, fixed = 0;
    uint64_t imei = 0;
    switch (codec) {
    case AVL_CODEC_13:
        ts = be32_at(payload);
        fixed = 4;
        break;
    case AVL_CODEC_14:
        imei = bcd_imei(payload);
        fixed = 8;
        break;
    case AVL_CODEC_15:
        ts = be32_at(payload);
        imei = bcd_imei(payload + 4);
        fixed = 12;
        break;
    default:
        break;
    }
    if (m->ts_s != ts || m->imei != imei)
        fail_msg("%s msg %zu: ts %u imei %llu, want ts %u imei %llu", v->name, i, m->ts_s,
                 (unsigned long long)m->imei, ts, (unsigned long long)imei);
    assert_int_equal(m->text_len, m->size - fixed);
    assert_ptr_equal(m->text, m->payload + fixed);
    const struct tu_json *ascii = tu_json_get(jm, "payload_ascii");
    if (ascii && ascii->type == TU_JSON_STRING) {
        assert_int_equal(ascii->str_len, m->text_len);
        assert_memory_equal(ascii->str, m->text, m->text_len);
    }
    free(payload);
}

static void decode_tcp_gprs(const struct vector *v, uint8_t codec)
{
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct avl_frame f;
    check_tcp_header(v);
    int rc = avl_scan(v->bytes, v->len, AVL_SCAN_DATA, 0, &f);
    if (rc != (int)v->len)
        fail_msg("%s: scan %d (%s)", v->name, rc, avl_strerror(rc));
    assert_int_equal(f.kind, AVL_FRAME_GPRS);
    assert_int_equal(f.codec, codec);
    uint8_t got_codec = 0;
    rc = avl_decode_gprs(v->bytes, v->len, &got_codec, msgs);
    if (!req_bool(v, v->j, "crc_ok")) {
        /* wiki_codec14_nack: the published CRC does not match (TELTONIKA.md §3.3). */
        if (rc != AVL_E_CRC_MISMATCH)
            fail_msg("%s: got %d (%s), want crc_mismatch", v->name, rc, avl_strerror(rc));
        /* With its CRC corrected it is a well-formed nACK: IMEI only, no text. */
        uint8_t *fixed = malloc(v->len);
        memcpy(fixed, v->bytes, v->len);
        uint16_t crc = avl_crc16(0, fixed + 8, v->len - 12);
        fixed[v->len - 2] = (uint8_t)(crc >> 8);
        fixed[v->len - 1] = (uint8_t)crc;
        assert_int_equal(avl_decode_gprs(fixed, v->len, &got_codec, msgs), 1);
        assert_int_equal(msgs[0].type, AVL_GPRS_NACK);
        assert_int_equal(msgs[0].imei, 352093081452468u);
        assert_int_equal(msgs[0].text_len, 0);
        free(fixed);
        return;
    }
    if (rc < 0)
        fail_msg("%s: decode_gprs %s", v->name, avl_strerror(rc));
    assert_int_equal(got_codec, codec);
    assert_int_equal(rc, req_u64(v, v->j, "n1"));
    assert_int_equal(rc, req_u64(v, v->j, "n2"));
    const struct tu_json *list = req(v, v->j, "messages");
    assert_int_equal(list->len, (size_t)rc);
    for (size_t i = 0; i < list->len; i++)
        check_gprs_msg(v, i, &list->items[i], &msgs[i], codec);
    /* Commands and device messages get no ACK. */
    assert_null(tu_json_get(v->j, "server_ack_hex"));
    /* ... and the AVL decoder refuses a GPRS frame. */
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    assert_int_equal(avl_decode_tcp(v->bytes, v->len, &pkt, recs), AVL_E_NOT_AVL);
}

static void test_decode(void **state)
{
    const struct vector *v = *state;
    uint8_t codec = (uint8_t)req_hexnum(v, v->j, "codec");
    const char *transport = req_str(v, v->j, "transport");
    if (strcmp(transport, "udp") == 0) {
        assert_true(avl_codec_is_avl(codec));
        decode_udp_avl(v, codec);
    } else if (strcmp(transport, "tcp") == 0) {
        if (avl_codec_is_avl(codec))
            decode_tcp_avl(v, codec);
        else if (avl_codec_is_gprs(codec))
            decode_tcp_gprs(v, codec);
        else
            fail_msg("%s: codec 0x%02x", v->name, codec);
    } else {
        fail_msg("%s: transport \"%s\"", v->name, transport);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Re-encoding: decode, hand the decoded values to the encoder, get the same bytes back
 * ------------------------------------------------------------------------------------------- */

static void check_encoded(const struct vector *v, const uint8_t *out, int rc)
{
    if (rc != (int)v->len)
        fail_msg("%s: encoder gave %d (%s), want %zu bytes", v->name, rc, avl_strerror(rc), v->len);
    if (memcmp(out, v->bytes, v->len) != 0) {
        char *got = malloc(2 * v->len + 1), *want = malloc(2 * v->len + 1);
        tu_hex_encode(out, v->len, got);
        tu_hex_encode(v->bytes, v->len, want);
        fail_msg("%s: re-encoded\n  got  %s\n  want %s", v->name, got, want);
    }
}

static void reencode_avl(const struct vector *v, bool udp, uint8_t codec)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_record_src src[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    int rc = udp ? avl_decode_udp(v->bytes, v->len, &pkt, recs)
                 : avl_decode_tcp(v->bytes, v->len, &pkt, recs);
    if (rc != 0)
        fail_msg("%s: decode %s", v->name, avl_strerror(rc));
    struct avl_io_elem *elems = tu_record_srcs(recs, pkt.records_len, src);
    uint8_t *out = malloc(v->len + 64);
    if (udp) {
        /* The encoder writes canonical 15-digit IMEIs and a not-usable byte of 1. */
        assert_int_equal(strlen(req_str(v, v->j, "imei")), 15);
        assert_int_equal(pkt.udp_not_usable, 1);
        rc = avl_encode_udp(out, v->len + 64, pkt.udp_packet_id, pkt.udp_avl_packet_id, pkt.imei,
                            codec, src, pkt.records_len);
        check_encoded(v, out, rc);
        assert_int_equal(avl_encode_udp(out, v->len - 1, pkt.udp_packet_id, pkt.udp_avl_packet_id,
                                        pkt.imei, codec, src, pkt.records_len),
                         AVL_E_NO_SPACE);
    } else {
        rc = avl_encode_tcp(out, v->len + 64, codec, src, pkt.records_len);
        check_encoded(v, out, rc);
        assert_int_equal(avl_encode_tcp(out, v->len - 1, codec, src, pkt.records_len),
                         AVL_E_NO_SPACE);
        assert_int_equal(avl_encode_tcp(out, 0, codec, src, pkt.records_len), AVL_E_NO_SPACE);
    }
    free(out);
    free(elems);
}

static void reencode_gprs(const struct vector *v, uint8_t codec)
{
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    uint8_t got_codec;
    int n = avl_decode_gprs(v->bytes, v->len, &got_codec, msgs);
    if (n < 0)
        fail_msg("%s: decode_gprs %s", v->name, avl_strerror(n));
    /* The encoder takes type, ts_s, imei and text; size and payload are its to compute. */
    struct avl_gprs_msg in[AVL_GPRS_MSGS_MAX];
    memset(in, 0, sizeof in);
    for (int i = 0; i < n; i++) {
        in[i].type = msgs[i].type;
        in[i].ts_s = msgs[i].ts_s;
        in[i].imei = msgs[i].imei;
        in[i].text = msgs[i].text;
        in[i].text_len = msgs[i].text_len;
    }
    uint8_t *out = malloc(v->len + 64);
    check_encoded(v, out, avl_encode_gprs(out, v->len + 64, codec, in, (size_t)n));
    assert_int_equal(avl_encode_gprs(out, v->len - 1, codec, in, (size_t)n), AVL_E_NO_SPACE);
    if (codec == AVL_CODEC_12 && n == 1 && msgs[0].type == AVL_GPRS_COMMAND)
        check_encoded(v, out, avl_encode_command(out, v->len + 64, msgs[0].text, msgs[0].text_len));
    free(out);
}

static void test_reencode(void **state)
{
    const struct vector *v = *state;
    uint8_t codec = (uint8_t)req_hexnum(v, v->j, "codec");
    bool udp = strcmp(req_str(v, v->j, "transport"), "udp") == 0;
    const struct tu_json *crc_ok = tu_json_get(v->j, "crc_ok");
    if (crc_ok && !crc_ok->boolean) {
        /* Not a valid frame, so nothing to rebuild; test_decode covers it. The test still has
         * to assert something: the bytes must not decode. */
        static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
        uint8_t c;
        assert_true(avl_decode_gprs(v->bytes, v->len, &c, msgs) < 0);
        return;
    }
    if (avl_codec_is_avl(codec))
        reencode_avl(v, udp, codec);
    else
        reencode_gprs(v, codec);
}

/* ---------------------------------------------------------------------------------------------
 * Malformed variants: one fault each, planted in a golden vector, must give its named error
 * ------------------------------------------------------------------------------------------- */

enum variant_decoder { VIA_TCP, VIA_GPRS, VIA_UDP, VIA_UDP_ACK, VIA_IMEI };

struct patch {
    int16_t at; /* byte offset; negative counts from the end; 0 with value -1 ends the list */
    int16_t value;
};

struct variant {
    const char *name;
    const char *base_hex;
    enum variant_decoder via;
    struct patch patches[3];
    bool fix_crc; /* recompute the CRC after patching, so the decoder looks past it */
    int trim;     /* bytes cut from the end (negative: zero bytes appended) */
    int want;     /* the error */
};

/* wiki Codec 8 ex.1: 8 codec, 9 N1, 10 ts, 18 prio, 34 event, 35 N_total, 36 N1 count,
 * 41 N2 count, 45 N4 count, 51 N8 count, 61 N2 (count 2), 62 CRC field. */
static const char wiki8_ex1[] =
    "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e"
    "0f01f10000601a014e0000000000000000010000c7cf";
/* wiki Codec 8E: 35..36 N_total, ... 85 N2 (count 2). NX count at 79..80. */
static const char wiki8e[] =
    "000000000000004a8e010000016b412cee000100000000000000000000000000000000010005000100010100"
    "010011001d00010010015e2c880002000b000000003544c87a000e000000001dd7e06a00000100002994";
/* Codec 12 getinfo: 10 type, 11..14 size, 15..21 text, 22 count 2. */
static const char c12_getinfo[] = "000000000000000f0c010500000007676574696e666f0100004312";
/* Codec 13: 10 type, 11..14 size (11), 15..18 ts. */
static const char c13_getinfo[] = "00000000000000130d01060000000b0a81c320676574696e666f0100001d6b";
/* Codec 14 getver: 15..22 BCD IMEI. */
static const char c14_getver[] =
    "00000000000000160e01050000000e0352093081452251676574766572010000d2c1";
static const char c15_hello[] =
    "000000000000001b0f010b00000013654b65a4012345678912345648656c6c6f210a01000093d6";
/* wiki Codec 8 over UDP: 0..1 length, 6..7 IMEI length, 8..22 IMEI, 23 codec, 24 N1, 62 N2. */
static const char udp8[] =
    "003dcafe0105000f33353230393330383634303336353508010000016b4f815b30010000"
    "000000000000000000000000000103021503010101425dbc000001";

#define END_PATCH                                                                                  \
    {                                                                                              \
        0, -1                                                                                      \
    }

static const struct variant variants[] = {
    /* TCP framing */
    {"preamble byte 3", wiki8_ex1, VIA_TCP, {{3, 1}, END_PATCH}, false, 0, AVL_E_BAD_PREAMBLE},
    {"data length 2", wiki8_ex1, VIA_TCP, {{7, 2}, END_PATCH}, false, 0, AVL_E_LENGTH_TOO_SMALL},
    {"frame one byte short", wiki8_ex1, VIA_TCP, {END_PATCH}, false, 1, AVL_E_TRUNCATED},
    {"frame cut inside the header", wiki8_ex1, VIA_TCP, {END_PATCH}, false, 60, AVL_E_TRUNCATED},
    {"frame one byte long", wiki8_ex1, VIA_TCP, {END_PATCH}, false, -1, AVL_E_TRAILING_BYTES},
    {"CRC field high bits",
     wiki8_ex1,
     VIA_TCP,
     {{62, 1}, END_PATCH},
     false,
     0,
     AVL_E_CRC_HIGH_BITS},
    {"CRC low byte", wiki8_ex1, VIA_TCP, {{-1, 0xCE}, END_PATCH}, false, 0, AVL_E_CRC_MISMATCH},
    {"body bit flip, CRC kept",
     wiki8_ex1,
     VIA_TCP,
     {{20, 0x10}, END_PATCH},
     false,
     0,
     AVL_E_CRC_MISMATCH},
    {"codec 7", wiki8_ex1, VIA_TCP, {{8, 0x07}, END_PATCH}, true, 0, AVL_E_CODEC_UNKNOWN},
    {"GPRS codec to the AVL decoder", c12_getinfo, VIA_TCP, {END_PATCH}, false, 0, AVL_E_NOT_AVL},
    {"AVL codec to the GPRS decoder", wiki8_ex1, VIA_GPRS, {END_PATCH}, false, 0, AVL_E_NOT_AVL},
    /* AVL body */
    {"count 2 differs", wiki8_ex1, VIA_TCP, {{61, 2}, END_PATCH}, true, 0, AVL_E_COUNT_MISMATCH},
    {"N_total one too many",
     wiki8_ex1,
     VIA_TCP,
     {{35, 6}, END_PATCH},
     true,
     0,
     AVL_E_IO_TOTAL_MISMATCH},
    {"N8 count runs past count 2",
     wiki8_ex1,
     VIA_TCP,
     {{51, 2}, END_PATCH},
     true,
     0,
     AVL_E_IO_OVERRUN},
    {"N1 count 255", wiki8_ex1, VIA_TCP, {{36, 255}, END_PATCH}, true, 0, AVL_E_IO_OVERRUN},
    {"two records announced, one sent",
     wiki8_ex1,
     VIA_TCP,
     {{9, 2}, {61, 2}, END_PATCH},
     true,
     0,
     AVL_E_RECORD_OVERRUN},
    {"records end before count 2",
     wiki8_ex1,
     VIA_TCP,
     {{51, 0}, {35, 4}, END_PATCH},
     true,
     0,
     AVL_E_TRAILING_BYTES},
    {"8E NX count runs past count 2",
     wiki8e,
     VIA_TCP,
     {{80, 1}, {36, 6}, END_PATCH},
     true,
     0,
     AVL_E_IO_OVERRUN},
    {"8E N_total one too few",
     wiki8e,
     VIA_TCP,
     {{36, 4}, END_PATCH},
     true,
     0,
     AVL_E_IO_TOTAL_MISMATCH},
    /* GPRS messages */
    {"message size past count 2",
     c12_getinfo,
     VIA_GPRS,
     {{14, 8}, END_PATCH},
     true,
     0,
     AVL_E_MSG_OVERRUN},
    {"message size 4 GiB",
     c12_getinfo,
     VIA_GPRS,
     {{11, 0xFF}, END_PATCH},
     true,
     0,
     AVL_E_MSG_OVERRUN},
    {"message ends before count 2",
     c12_getinfo,
     VIA_GPRS,
     {{14, 6}, END_PATCH},
     true,
     0,
     AVL_E_TRAILING_BYTES},
    {"second message header missing",
     c12_getinfo,
     VIA_GPRS,
     {{9, 2}, {22, 2}, END_PATCH},
     true,
     0,
     AVL_E_MSG_OVERRUN},
    {"GPRS count 2 differs",
     c12_getinfo,
     VIA_GPRS,
     {{22, 0}, END_PATCH},
     true,
     0,
     AVL_E_COUNT_MISMATCH},
    {"codec 12 type 0x0B", c12_getinfo, VIA_GPRS, {{10, 0x0B}, END_PATCH}, true, 0, AVL_E_MSG_TYPE},
    {"codec 12 type 0x11", c12_getinfo, VIA_GPRS, {{10, 0x11}, END_PATCH}, true, 0, AVL_E_MSG_TYPE},
    {"codec 13 type 0x0D", c13_getinfo, VIA_GPRS, {{10, 0x0D}, END_PATCH}, true, 0, AVL_E_MSG_TYPE},
    {"codec 15 type 0x06", c15_hello, VIA_GPRS, {{10, 0x06}, END_PATCH}, true, 0, AVL_E_MSG_TYPE},
    {"codec 14 type 0x0B", c14_getver, VIA_GPRS, {{10, 0x0B}, END_PATCH}, true, 0, AVL_E_MSG_TYPE},
    {"codec 13 size 3 (below its timestamp)",
     c13_getinfo,
     VIA_GPRS,
     {{14, 3}, {9, 1}, END_PATCH},
     true,
     8,
     AVL_E_MSG_SIZE},
    {"codec 14 IMEI nibble A",
     c14_getver,
     VIA_GPRS,
     {{15, 0xA3}, END_PATCH},
     true,
     0,
     AVL_E_IMEI_BCD},
    {"codec 15 IMEI nibble F",
     c15_hello,
     VIA_GPRS,
     {{26, 0x5F}, END_PATCH},
     true,
     0,
     AVL_E_IMEI_BCD},
    /* UDP */
    {"UDP length one more", udp8, VIA_UDP, {{1, 0x3E}, END_PATCH}, false, 0, AVL_E_UDP_LENGTH},
    {"UDP datagram one byte long", udp8, VIA_UDP, {END_PATCH}, false, -1, AVL_E_UDP_LENGTH},
    {"UDP IMEI length 0", udp8, VIA_UDP, {{7, 0}, END_PATCH}, false, 0, AVL_E_IMEI_LENGTH},
    {"UDP IMEI length 18", udp8, VIA_UDP, {{7, 18}, END_PATCH}, false, 0, AVL_E_IMEI_LENGTH},
    {"UDP IMEI non-digit", udp8, VIA_UDP, {{12, 'x'}, END_PATCH}, false, 0, AVL_E_IMEI_DIGITS},
    {"UDP count 2 differs", udp8, VIA_UDP, {{-1, 2}, END_PATCH}, false, 0, AVL_E_COUNT_MISMATCH},
    {"UDP codec 9", udp8, VIA_UDP, {{23, 9}, END_PATCH}, false, 0, AVL_E_CODEC_UNKNOWN},
    {"UDP GPRS codec", udp8, VIA_UDP, {{23, 0x0C}, END_PATCH}, false, 0, AVL_E_NOT_AVL},
    {"UDP ack length field",
     "0005cafe010501",
     VIA_UDP_ACK,
     {{1, 6}, END_PATCH},
     false,
     0,
     AVL_E_UDP_LENGTH},
    {"UDP ack short", "0005cafe010501", VIA_UDP_ACK, {END_PATCH}, false, 1, AVL_E_TRUNCATED},
    {"UDP ack long", "0005cafe010501", VIA_UDP_ACK, {END_PATCH}, false, -1, AVL_E_TRAILING_BYTES},
    /* Handshake given to avl_decode_imei */
    {"IMEI length 0",
     "000f333536333037303432343431303133",
     VIA_IMEI,
     {{1, 0}, END_PATCH},
     false,
     0,
     AVL_E_IMEI_LENGTH},
    {"IMEI non-digit",
     "000f333536333037303432343431303133",
     VIA_IMEI,
     {{9, '/'}, END_PATCH},
     false,
     0,
     AVL_E_IMEI_DIGITS},
};

static int decode_variant(enum variant_decoder via, const uint8_t *p, size_t len)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct avl_packet pkt;
    uint8_t codec, avl_id, n;
    uint16_t packet_id;
    uint64_t imei;
    switch (via) {
    case VIA_TCP:
        return avl_decode_tcp(p, len, &pkt, recs);
    case VIA_GPRS:
        return avl_decode_gprs(p, len, &codec, msgs);
    case VIA_UDP:
        return avl_decode_udp(p, len, &pkt, recs);
    case VIA_UDP_ACK:
        return avl_decode_udp_ack(p, len, &packet_id, &avl_id, &n);
    case VIA_IMEI:
        return avl_decode_imei(p, len, &imei);
    }
    return 1000;
}

static void test_malformed_variants(void **state)
{
    (void)state;
    int wrong = 0;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        const struct variant *t = &variants[i];
        uint8_t buf[256];
        long n = tu_hex_decode(t->base_hex, strlen(t->base_hex), buf, sizeof buf - 8);
        assert_true(n > 0);
        size_t len = (size_t)n;
        /* The base decodes: the planted fault is the only one. */
        enum variant_decoder natural = t->via;
        if (t->via == VIA_TCP || t->via == VIA_GPRS)
            natural = avl_codec_is_avl(buf[8]) ? VIA_TCP : VIA_GPRS;
        int base = decode_variant(natural, buf, len);
        if (base < 0)
            fail_msg("%s: the base frame fails: %s", t->name, avl_strerror(base));
        for (const struct patch *pt = t->patches; !(pt->at == 0 && pt->value < 0); pt++) {
            size_t at = pt->at < 0 ? len - (size_t)-pt->at : (size_t)pt->at;
            assert_true(at < len);
            buf[at] = (uint8_t)pt->value;
        }
        if (t->fix_crc) {
            uint16_t crc = avl_crc16(0, buf + 8, len - 12);
            buf[len - 2] = (uint8_t)(crc >> 8);
            buf[len - 1] = (uint8_t)crc;
        }
        if (t->trim > 0) {
            /* A message trimmed from inside: drop `trim` bytes before count 2 and fix the
             * data length, so only the message is short (Codec 13 size case), or cut the
             * frame's tail (everything else). */
            if (t->via == VIA_GPRS) {
                memmove(buf + len - 5 - t->trim, buf + len - 5, 5);
                len -= (size_t)t->trim;
                uint32_t d = (uint32_t)len - 12;
                buf[4] = (uint8_t)(d >> 24);
                buf[5] = (uint8_t)(d >> 16);
                buf[6] = (uint8_t)(d >> 8);
                buf[7] = (uint8_t)d;
                uint16_t crc = avl_crc16(0, buf + 8, len - 12);
                buf[len - 2] = (uint8_t)(crc >> 8);
                buf[len - 1] = (uint8_t)crc;
            } else {
                len -= (size_t)t->trim;
            }
        } else if (t->trim < 0) {
            memset(buf + len, 0, (size_t)-t->trim);
            len += (size_t)-t->trim;
        }
        int rc = decode_variant(t->via, buf, len);
        if (rc != t->want) {
            print_error("%s: got %d (%s), want %s\n", t->name, rc, avl_strerror(rc),
                        avl_strerror(t->want));
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

/* What the encoder must refuse (avl.h, avl_encode_tcp): a decoded golden record, changed so
 * that one value no longer fits the codec. Each case must give AVL_E_ENCODE_RANGE and write
 * nothing. */
static void test_encoder_limits(void **state)
{
    (void)state;
    /* wiki Codec 8 example 1 (TELTONIKA.md §9.1) */
    static const char wiki8_hex[] =
        "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e"
        "0f01f10000601a014e0000000000000000010000c7cf";
    uint8_t wiki8[66];
    assert_int_equal(tu_hex_decode(wiki8_hex, strlen(wiki8_hex), wiki8, sizeof wiki8), 66);
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    assert_int_equal(avl_decode_tcp(wiki8, sizeof wiki8, &pkt, recs), 0);
    struct avl_record_src src;
    struct avl_io_elem *elems = tu_record_srcs(recs, 1, &src);
    struct avl_io_elem io[8];
    assert_int_equal(src.io_len, 5);
    memcpy(io, src.io, 5 * sizeof io[0]);
    src.io = io;
    free(elems);
    uint8_t out[512];
    /* The untouched record encodes to the wiki bytes: the cases below differ in one value. */
    assert_int_equal(avl_encode_tcp(out, sizeof out, AVL_CODEC_8, &src, 1), (int)sizeof wiki8);
    assert_memory_equal(out, wiki8, sizeof wiki8);

    struct {
        const char *name;
        uint8_t codec;
        struct avl_record_src src;
    } cases[16];
    size_t n = 0;
    static const uint8_t nx_bytes[3] = {1, 2, 3};
    static struct avl_io_elem nx_io[6], wide_id[5], big_value[5], bad_width[5];

#define CASE(label, c, edit)                                                                       \
    do {                                                                                           \
        cases[n].name = label;                                                                     \
        cases[n].codec = c;                                                                        \
        cases[n].src = src;                                                                        \
        struct avl_record_src *s = &cases[n].src;                                                  \
        edit;                                                                                      \
        n++;                                                                                       \
    } while (0)

    CASE("timestamp at AVL_TS_MS_END", AVL_CODEC_8, s->rec.ts_ms = AVL_TS_MS_END);
    CASE("timestamp UINT64_MAX", AVL_CODEC_8, s->rec.ts_ms = UINT64_MAX);
    CASE("event id above 255 in codec 8", AVL_CODEC_8, s->rec.event_id = 256);
    memcpy(wide_id, io, sizeof wide_id);
    wide_id[0].id = 256;
    CASE("IO id above 255 in codec 8", AVL_CODEC_8, s->io = wide_id);
    memcpy(nx_io, io, 5 * sizeof io[0]);
    nx_io[5] = (struct avl_io_elem){.id = 256, .width = 0, .nx_len = 3, .nx = nx_bytes};
    CASE("NX element in codec 8", AVL_CODEC_8, (s->io = nx_io, s->io_len = 6));
    CASE("NX element in codec 16", AVL_CODEC_16,
         (s->io = nx_io, s->io_len = 6, s->rec.generation = 5));
    memcpy(big_value, io, sizeof big_value);
    big_value[0].value = 256; /* a width-1 element */
    CASE("value wider than its group", AVL_CODEC_8, s->io = big_value);
    memcpy(bad_width, io, sizeof bad_width);
    bad_width[0].width = 3;
    CASE("IO width 3", AVL_CODEC_8, s->io = bad_width);
    CASE("codec 7", 0x07, (void)s);
    CASE("GPRS codec 12 given AVL records", AVL_CODEC_12, (void)s);
#undef CASE

    /* Every case runs; the failures are listed together. */
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        memset(out, 0xEE, sizeof out);
        int rc = avl_encode_tcp(out, sizeof out, cases[i].codec, &cases[i].src, 1);
        int urc = avl_encode_udp(out, sizeof out, 0xCAFE, 1, 352093086403655u, cases[i].codec,
                                 &cases[i].src, 1);
        size_t written = 0;
        for (size_t k = 0; k < sizeof out; k++)
            written += out[k] != 0xEE;
        if (rc != AVL_E_ENCODE_RANGE || urc != AVL_E_ENCODE_RANGE || written) {
            print_error("%s: avl_encode_tcp gave %d (%s), avl_encode_udp %d (%s), %zu bytes "
                        "written; want encode_range and nothing written\n",
                        cases[i].name, rc, avl_strerror(rc), urc, avl_strerror(urc), written);
            wrong++;
        }
    }

    /* rec.generation is written for Codec 16 only (avl.h): elsewhere it is ignored, so any
     * value gives the bytes of AVL_GENERATION_NONE, which is what decoding gives back. */
    static const uint8_t codecs_without_generation[] = {AVL_CODEC_8, AVL_CODEC_8E};
    for (size_t c = 0; c < sizeof codecs_without_generation; c++) {
        uint8_t codec = codecs_without_generation[c];
        uint8_t with_none[512], with_gen[512];
        struct avl_record_src g = src;
        g.rec.generation = AVL_GENERATION_NONE;
        int a = avl_encode_tcp(with_none, sizeof with_none, codec, &g, 1);
        g.rec.generation = 5;
        int b = avl_encode_tcp(with_gen, sizeof with_gen, codec, &g, 1);
        assert_true(a > 0);
        assert_int_equal(a, b);
        assert_memory_equal(with_none, with_gen, (size_t)a);
        assert_int_equal(avl_decode_tcp(with_gen, (size_t)b, &pkt, recs), 0);
        assert_int_equal(recs[0].generation, AVL_GENERATION_NONE);
    }

    /* Counts: 256 records; 256 elements in one group of a codec 16 record (u8 counts). */
    static struct avl_record_src many[AVL_RECORDS_MAX + 1];
    for (size_t i = 0; i <= AVL_RECORDS_MAX; i++)
        many[i] = src;
    assert_int_equal(avl_encode_tcp(out, sizeof out, AVL_CODEC_8, many, AVL_RECORDS_MAX + 1),
                     AVL_E_ENCODE_RANGE);
    static struct avl_io_elem n1[256];
    for (size_t i = 0; i < 256; i++)
        n1[i] = (struct avl_io_elem){.id = (uint16_t)(300 + i), .width = 1, .value = 1};
    struct avl_record_src s16 = src;
    s16.rec.generation = 5;
    s16.io = n1;
    s16.io_len = 256;
    assert_int_equal(avl_encode_tcp(out, sizeof out, AVL_CODEC_16, &s16, 1), AVL_E_ENCODE_RANGE);
    s16.io_len = 255;
    static uint8_t big[4096];
    assert_true(avl_encode_tcp(big, sizeof big, AVL_CODEC_16, &s16, 1) > 0);
    /* IMEIs: 18 digits do not fit UDP; 17 do. */
    assert_int_equal(
        avl_encode_udp(big, sizeof big, 1, 1, 100000000000000000u, AVL_CODEC_8, &src, 1),
        AVL_E_ENCODE_RANGE);
    int ulen = avl_encode_udp(big, sizeof big, 1, 1, 99999999999999999u, AVL_CODEC_8, &src, 1);
    assert_int_equal(ulen, 66 - 12 + 8 + 17);
    assert_int_equal(avl_decode_udp(big, (size_t)ulen, &pkt, recs), 0);
    assert_int_equal(pkt.imei, 99999999999999999u);

    /* GPRS: a type the codec does not carry, an AVL codec, an IMEI above 16 BCD digits. */
    struct avl_gprs_msg m = {.type = AVL_GPRS_FORWARD, .text = (const uint8_t *)"x", .text_len = 1};
    assert_int_equal(avl_encode_gprs(out, sizeof out, AVL_CODEC_12, &m, 1), AVL_E_ENCODE_RANGE);
    m.type = AVL_GPRS_COMMAND;
    assert_int_equal(avl_encode_gprs(out, sizeof out, AVL_CODEC_8, &m, 1), AVL_E_ENCODE_RANGE);
    m.imei = 10000000000000000u;
    assert_int_equal(avl_encode_gprs(out, sizeof out, AVL_CODEC_14, &m, 1), AVL_E_ENCODE_RANGE);
    m.imei = 9999999999999999u;
    assert_true(avl_encode_gprs(out, sizeof out, AVL_CODEC_14, &m, 1) > 0);
    /* The table cases last, so the checks above run even when one of them fails. */
    assert_int_equal(wrong, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Loading and the per-vector test list
 * ------------------------------------------------------------------------------------------- */

static void load_vectors(void)
{
    char path[4096];
    tu_shared_path(path, sizeof path, "protocol/vectors.jsonl");
    char *text = tu_read_file(path, NULL); /* aborts, failing the test, if missing */
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[strspn(line, " \t\r")] == '\0')
            continue;
        if (vectors_len == sizeof vectors / sizeof vectors[0]) {
            fprintf(stderr, "test_vectors: more vectors than expected\n");
            abort();
        }
        char err[160];
        struct tu_json *j = tu_json_parse(line, strlen(line), err, sizeof err);
        if (!j || j->type != TU_JSON_OBJECT) {
            fprintf(stderr, "test_vectors: %s line %zu: %s\n", path, vectors_len + 1,
                    j ? "not an object" : err);
            abort();
        }
        const struct tu_json *name = tu_json_get(j, "name");
        const struct tu_json *hex = tu_json_get(j, "hex");
        if (!name || name->type != TU_JSON_STRING || !hex || hex->type != TU_JSON_STRING) {
            fprintf(stderr, "test_vectors: line %zu has no name or hex\n", vectors_len + 1);
            abort();
        }
        struct vector *v = &vectors[vectors_len];
        vectors_json[vectors_len] = j;
        v->j = j;
        v->name = name->str;
        v->bytes = malloc(hex->str_len / 2 + 1);
        long n = tu_hex_decode(hex->str, hex->str_len, v->bytes, hex->str_len / 2 + 1);
        if (n <= 0) {
            fprintf(stderr, "test_vectors: %s: bad hex\n", v->name);
            abort();
        }
        v->len = (size_t)n;
        vectors_len++;
    }
    free(text);
}

/* Checks the set as a whole: the count, unique names, and each "bytes" field. */
static void test_vector_file(void **state)
{
    (void)state;
    assert_int_equal(vectors_len, VECTORS_EXPECTED);
    size_t tcp = 0, udp = 0, gprs = 0;
    for (size_t i = 0; i < vectors_len; i++) {
        const struct vector *v = &vectors[i];
        assert_int_equal(req_u64(v, v->j, "bytes"), v->len);
        for (size_t k = 0; k < i; k++)
            if (strcmp(vectors[k].name, v->name) == 0)
                fail_msg("duplicate vector name %s", v->name);
        uint8_t codec = (uint8_t)req_hexnum(v, v->j, "codec");
        if (strcmp(req_str(v, v->j, "transport"), "udp") == 0)
            udp++;
        else if (avl_codec_is_gprs(codec))
            gprs++;
        else
            tcp++;
    }
    /* TELTONIKA.md §9.14: 8 TCP AVL, 5 UDP AVL (incl. the two Codec 16 variants), 11 GPRS. */
    assert_int_equal(tcp, 8);
    assert_int_equal(udp, 5);
    assert_int_equal(gprs, 11);
}

int main(void)
{
    load_vectors();
    size_t tests_len = 4 + 2 * vectors_len;
    struct CMUnitTest *tests = calloc(tests_len, sizeof *tests);
    char **names = calloc(tests_len, sizeof *names);
    size_t k = 0;
    tests[k++] = (struct CMUnitTest){"json_reader", test_json_reader, NULL, NULL, NULL};
    tests[k++] = (struct CMUnitTest){"vector_file", test_vector_file, NULL, NULL, NULL};
    tests[k++] =
        (struct CMUnitTest){"malformed_variants", test_malformed_variants, NULL, NULL, NULL};
    tests[k++] = (struct CMUnitTest){"encoder_limits", test_encoder_limits, NULL, NULL, NULL};
    for (size_t i = 0; i < vectors_len; i++) {
        names[k] = malloc(strlen(vectors[i].name) + 16);
        sprintf(names[k], "decode %s", vectors[i].name);
        tests[k] = (struct CMUnitTest){names[k], test_decode, NULL, NULL, &vectors[i]};
        k++;
        names[k] = malloc(strlen(vectors[i].name) + 16);
        sprintf(names[k], "reencode %s", vectors[i].name);
        tests[k] = (struct CMUnitTest){names[k], test_reencode, NULL, NULL, &vectors[i]};
        k++;
    }
    int failed = _cmocka_run_group_tests("test_vectors", tests, k, NULL, NULL);
    for (size_t i = 0; i < tests_len; i++)
        free(names[i]);
    free(names);
    free(tests);
    for (size_t i = 0; i < vectors_len; i++) {
        free(vectors[i].bytes);
        tu_json_free(vectors_json[i]);
    }
    return failed;
}
