/* test_copyenc.c — the COPY BINARY encoder in each IO layout (arrays, jsonb, raw; every test
 * runs once per layout): exact bytes for known records, the IO arrays, the jsonb text, the
 * raw bytes, NULL generation, coordinates, NX hex, decimal edges, range errors, NULL for an angle
 * or speed smallint cannot hold, the size bound and the capacity check, on hand-made records and on
 * many packetgen records (realistic and arbitrary, every AVL codec), each parsed back field by
 * field.
 *
 * The encoder's speed is printed (ns/row on realistic 8E records), never asserted: speed
 * goals live in benchmarks. Single-threaded test code: allocates freely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "loadgen/packetgen.h"
#include "tests/support/testutil.h"

#define PG_EPOCH_UNIX_US INT64_C(946684800000000)

enum {
    FRAME_CAP = PKTGEN_FRAME_BYTES_MAX,
    /* above any bound of a generated record */
    ROW_CAP =
        COPYENC_ROW_BYTES_PER_WIRE_BYTE * PKTGEN_FRAME_BYTES_MAX + COPYENC_ROW_BYTES_FIXED_MAX,
    COLS_MAX = 17,
    PACKETS_PER_COMBO = 1500, /* x 3 codecs x 2 modes */
    SPEED_PACKETS = 200,
    SPEED_PASSES = 300,
    CANARY = 0xA5,
};

static struct pktgen_packet pkt;
static struct avl_record recs[AVL_RECORDS_MAX];
static uint8_t frame[FRAME_CAP];
static uint8_t row[ROW_CAP];
/* The layout the running group tests (set by its setup). */
static enum copyenc_layout layout;

/* The tuple's field count, and where generation and codec are in it. */
#define NCOLS     copyenc_columns_len(layout)
#define COL_GEN   (NCOLS - 2)
#define COL_CODEC (NCOLS - 1)
#define COL_IO    11

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rd_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Encodes records_len sources as one TCP frame of codec into frame[] and decodes it into
 * recs[]. */
static void encode_decode(uint8_t codec, const struct avl_record_src *src, size_t records_len)
{
    int n = avl_encode_tcp(frame, sizeof frame, codec, src, records_len);
    assert_true(n > 0);
    struct avl_packet p;
    assert_int_equal(avl_decode_tcp(frame, (size_t)n, &p, recs), 0);
    assert_int_equal(p.records_len, records_len);
}

/* The io text as the header says it must be: wire order, "id": unsigned decimal or "hex". */
static size_t expected_json(const struct avl_record *r, char *out, size_t cap)
{
    struct avl_io_iter it;
    struct avl_io io;
    size_t len = 0;
    out[len++] = '{';
    avl_io_iter_init(&it, r);
    while (avl_io_next(&it, &io)) {
        if (len > 1)
            out[len++] = ',';
        len += (size_t)snprintf(out + len, cap - len, "\"%u\":", io.id);
        if (io.nx) {
            out[len++] = '"';
            tu_hex_encode(io.bytes, io.len, out + len);
            len += 2u * io.len;
            out[len++] = '"';
        } else {
            len += (size_t)snprintf(out + len, cap - len, "%" PRIu64, io.value);
        }
        assert_true(len < cap);
    }
    out[len++] = '}';
    out[len] = '\0';
    return len;
}

/* One parsed tuple: every field's length (-1 for NULL) and position. */
struct tuple {
    int32_t len[COLS_MAX];
    const uint8_t *val[COLS_MAX];
    size_t bytes;
};

static void parse_tuple(const uint8_t *p, size_t n, struct tuple *t)
{
    assert_true(n >= 2);
    assert_int_equal(rd_be(p, 2), NCOLS);
    size_t off = 2;
    for (int i = 0; i < NCOLS; i++) {
        assert_true(off + 4 <= n);
        t->len[i] = (int32_t)(uint32_t)rd_be(p + off, 4);
        off += 4;
        t->val[i] = p + off;
        if (t->len[i] >= 0) {
            assert_true(off + (size_t)t->len[i] <= n);
            off += (size_t)t->len[i];
        } else {
            assert_int_equal(t->len[i], -1);
        }
    }
    t->bytes = off;
}

static uint64_t double_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static void ref_be(uint8_t *out, size_t *n, unsigned bytes, uint64_t v)
{
    for (unsigned i = 0; i < bytes; i++)
        out[*n + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    *n += bytes;
}

/* A field: its int32 length, then the value in `bytes` big-endian bytes. */
static void ref_field(uint8_t *out, size_t *n, unsigned bytes, uint64_t v)
{
    ref_be(out, n, 4, bytes);
    ref_be(out, n, bytes, v);
}

/* The IO columns in the arrays layout, written the obvious way: the elements from
 * avl_io_next, sorted into fixed-width and NX, then each array field whole. */
static void ref_array(uint8_t *out, size_t *n, uint32_t oid, size_t count, size_t data_bytes)
{
    ref_be(out, n, 4, count ? 20 + data_bytes : 12);
    ref_be(out, n, 4, count ? 1 : 0);
    ref_be(out, n, 4, 0);
    ref_be(out, n, 4, oid);
    if (count) {
        ref_be(out, n, 4, count);
        ref_be(out, n, 4, 1);
    }
}

static size_t ref_io_arrays(uint8_t *out, const struct avl_record *r)
{
    static struct avl_io fixed[65536], nx[65536];
    size_t fixed_len = 0, nx_len = 0, nx_bytes = 0, n = 0;
    struct avl_io_iter it;
    struct avl_io io;
    avl_io_iter_init(&it, r);
    while (avl_io_next(&it, &io)) {
        if (io.nx) {
            nx[nx_len++] = io;
            nx_bytes += 4u + io.len;
        } else {
            fixed[fixed_len++] = io;
        }
    }
    ref_array(out, &n, 23, fixed_len, 8 * fixed_len);
    for (size_t i = 0; i < fixed_len; i++)
        ref_field(out, &n, 4, fixed[i].id);
    ref_array(out, &n, 20, fixed_len, 12 * fixed_len);
    for (size_t i = 0; i < fixed_len; i++)
        ref_field(out, &n, 8, fixed[i].value);
    ref_array(out, &n, 23, nx_len, 8 * nx_len);
    for (size_t i = 0; i < nx_len; i++)
        ref_field(out, &n, 4, nx[i].id);
    ref_array(out, &n, 17, nx_len, nx_bytes);
    for (size_t i = 0; i < nx_len; i++) {
        ref_be(out, &n, 4, nx[i].len);
        memcpy(out + n, nx[i].bytes, nx[i].len);
        n += nx[i].len;
    }
    return n;
}

/* The IO columns of r as the running layout must write them, length words included. */
static size_t ref_io(uint8_t *out, const struct avl_record *r)
{
    static char json[3 * PKTGEN_FRAME_BYTES_MAX];
    size_t n = 0;
    switch (layout) {
    case COPYENC_ARRAYS:
        return ref_io_arrays(out, r);
    case COPYENC_JSONB: {
        size_t json_len = expected_json(r, json, sizeof json);
        ref_be(out, &n, 4, 1 + json_len);
        out[n++] = 1;
        memcpy(out + n, json, json_len);
        return n + json_len;
    }
    default:
        ref_be(out, &n, 4, r->io_bytes);
        memcpy(out + n, r->io, r->io_bytes);
        return n + r->io_bytes;
    }
}

/* Checks every field of the tuple at row[0 .. n-1] against r. */
static void check_tuple(const uint8_t *p, size_t n, uint64_t imei, const struct avl_record *r,
                        int64_t received_at_us)
{
    static const int32_t widths[COL_IO] = {8, 8, 8, 2, 8, 8, 2, 2, 2, 2, 4};
    struct tuple t;
    parse_tuple(p, n, &t);
    assert_int_equal(t.bytes, n);
    unsigned nulls = copyenc_nulls(r);
    for (int i = 0; i < COL_IO; i++) {
        bool null =
            (i == 7 && (nulls & COPYENC_NULL_ANGLE)) || (i == 9 && (nulls & COPYENC_NULL_SPEED));
        assert_int_equal(t.len[i], null ? -1 : widths[i]);
    }
    assert_int_equal(rd_be(t.val[0], 8), imei);
    /* in u64: ts_ms * 1000 passes INT64_MAX near AVL_TS_MS_END */
    assert_int_equal(rd_be(t.val[1], 8), r->ts_ms * 1000u - (uint64_t)PG_EPOCH_UNIX_US);
    assert_int_equal((int64_t)rd_be(t.val[2], 8), received_at_us - PG_EPOCH_UNIX_US);
    assert_int_equal(rd_be(t.val[3], 2), r->priority);
    assert_int_equal(rd_be(t.val[4], 8), double_bits((double)r->lon_e7 / 1e7));
    assert_int_equal(rd_be(t.val[5], 8), double_bits((double)r->lat_e7 / 1e7));
    assert_int_equal((int16_t)rd_be(t.val[6], 2), r->altitude_m);
    if (!(nulls & COPYENC_NULL_ANGLE))
        assert_int_equal(rd_be(t.val[7], 2), r->angle_deg);
    assert_int_equal(rd_be(t.val[8], 2), r->satellites);
    if (!(nulls & COPYENC_NULL_SPEED))
        assert_int_equal(rd_be(t.val[9], 2), r->speed_kmh);
    assert_int_equal(rd_be(t.val[10], 4), r->event_id);
    /* the IO columns, length words included: the reference's bytes */
    static uint8_t want[ROW_CAP];
    size_t want_len = ref_io(want, r);
    const uint8_t *io_start = t.val[COL_IO] - 4, *io_end = t.val[COL_GEN] - 4;
    assert_int_equal((size_t)(io_end - io_start), want_len);
    assert_memory_equal(io_start, want, want_len);
    if (r->codec == AVL_CODEC_16) {
        assert_int_equal(t.len[COL_GEN], 2);
        assert_int_equal(rd_be(t.val[COL_GEN], 2), r->generation);
    } else {
        assert_int_equal(t.len[COL_GEN], -1);
    }
    assert_int_equal(t.len[COL_CODEC], 2);
    assert_int_equal(rd_be(t.val[COL_CODEC], 2), r->codec);
}

static struct avl_record_src plain_src(uint64_t ts_ms)
{
    struct avl_record_src s;
    memset(&s, 0, sizeof s);
    s.rec.ts_ms = ts_ms;
    s.rec.priority = 1;
    s.rec.generation = AVL_GENERATION_NONE;
    return s;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_header_trailer(void **state)
{
    (void)state;
    static const uint8_t want_header[19] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xFF, '\r', '\n',
                                            0,   0,   0,   0,   0,   0,   0,    0,    0};
    uint8_t out[32];
    memset(out, CANARY, sizeof out);
    assert_int_equal(copyenc_header(out), 19);
    assert_memory_equal(out, want_header, 19);
    assert_int_equal(out[19], CANARY);
    memset(out, CANARY, sizeof out);
    assert_int_equal(copyenc_trailer(out), 2);
    assert_int_equal(out[0], 0xFF);
    assert_int_equal(out[1], 0xFF);
    assert_int_equal(out[2], CANARY);
    static const char *const io_cols[COPYENC_LAYOUTS] = {
        [COPYENC_ARRAYS] = "io_ids, io_vals, nx_ids, nx_vals",
        [COPYENC_JSONB] = "io",
        [COPYENC_RAW] = "io_raw",
    };
    char want[512];
    snprintf(want, sizeof want,
             "COPY telemetry.positions (imei, ts, received_at, priority, lon, lat, altitude, "
             "angle, satellites, speed, event_id, %s, generation, codec) FROM STDIN "
             "(FORMAT binary)",
             io_cols[layout]);
    assert_string_equal(copyenc_copy_sql(layout), want);
    assert_int_equal(copyenc_columns_len(layout), layout == COPYENC_ARRAYS ? 17 : 14);
    assert_int_equal(copyenc_layout_parse(copyenc_layout_name(layout)), layout);
    assert_int_equal(copyenc_layout_parse("json"), -1);
    assert_string_equal(copyenc_layout_name(COPYENC_LAYOUTS), "unknown");
}

/* The wiki's first Codec 8 example, byte for byte (expected bytes computed independently
 * with Python's struct module). */
static void test_wiki_codec8_exact(void **state)
{
    (void)state;
    static const char wiki_hex[] = "000000000000003608010000016b40d8ea30010000000000000000000000"
                                   "000000000105021503010101425e0f01f10000601a014e00000000000000"
                                   "00010000c7cf";
    /* the columns before the IO ones (the field count's second byte is patched below) and
     * after them, and the IO columns of each layout */
    static const char head_hex[] =
        "000e000000080001440f32b217350000000800022df4141aeb80000000080002"
        "2df41457f4800000000200010000000800000000000000000000000800000000"
        "0000000000000002000000000002000000000002000000000002000000000004"
        "00000001";
    static const char tail_hex[] = "ffffffff000000020008";
    static const char *const io_hex[COPYENC_LAYOUTS] = {
        [COPYENC_JSONB] = "0000002d017b223231223a332c2231223a312c223636223a32343037"
                          "392c22323431223a32343630322c223738223a307d",
        [COPYENC_ARRAYS] =
            "0000003c0000000100000000000000170000000500000001" /* io_ids: 21 1 66 241 78 */
            "0000000400000015000000040000000100000004000000420000000400"
            "0000f1000000040000004e"
            "000000500000000100000000000000140000000500000001" /* io_vals: 3 1 24079 24602 0 */
            "00000008000000000000000300000008000000000000000100000008000000"
            "0000005e0f00000008000000000000601a000000080000000000000000"
            "0000000c000000000000000000000017"  /* nx_ids: {} */
            "0000000c000000000000000000000011", /* nx_vals: {} */
        [COPYENC_RAW] = "00000019021503010101425e0f01f10000601a014e0000000000000000",
    };
    char want_hex[1024];
    snprintf(want_hex, sizeof want_hex, "%s%s%s", head_hex, io_hex[layout], tail_hex);
    uint8_t want[512];
    long want_len = tu_hex_decode(want_hex, strlen(want_hex), want, sizeof want);
    want[1] = (uint8_t)copyenc_columns_len(layout);
    static const long want_lens[COPYENC_LAYOUTS] = {
        [COPYENC_JSONB] = 159, [COPYENC_ARRAYS] = 290, [COPYENC_RAW] = 139};
    assert_int_equal(want_len, want_lens[layout]);
    long n = tu_hex_decode(wiki_hex, strlen(wiki_hex), frame, sizeof frame);
    assert_int_equal(n, 66);
    struct avl_packet p;
    assert_int_equal(avl_decode_tcp(frame, (size_t)n, &p, recs), 0);
    assert_int_equal(p.records_len, 1);

    memset(row, CANARY, 512);
    int w = copyenc_row(layout, row, ROW_CAP, UINT64_C(356307042441013), &recs[0],
                        INT64_C(1560161090000000));
    assert_int_equal(w, want_len);
    assert_memory_equal(row, want, (size_t)want_len);
    assert_int_equal(row[want_len], CANARY);
    assert_true((size_t)w <= copyenc_row_bytes_max(layout, &recs[0]));
    check_tuple(row, (size_t)w, UINT64_C(356307042441013), &recs[0], INT64_C(1560161090000000));
}

/* The bytes of a Codec 16 row r without IO elements: 112 for the other columns, and the IO
 * columns' least: "{}" with the jsonb version byte, four empty arrays (12 bytes each), or the
 * raw group counts (all zero), each with its length word. */
static int row_without_io(const struct avl_record *r)
{
    static const int io[COPYENC_LAYOUTS] = {
        [COPYENC_JSONB] = 4 + 1 + 2, [COPYENC_ARRAYS] = 4 * (4 + 12), [COPYENC_RAW] = 4};
    return 112 + io[layout] + (layout == COPYENC_RAW ? (int)r->io_bytes : 0);
}

/* generation is written for Codec 16 only (0xFF included); NULL for 8 and 8E. */
static void test_generation(void **state)
{
    (void)state;
    struct tuple t;
    for (int gen = 0; gen < 3; gen++) {
        struct avl_record_src s = plain_src(UINT64_C(1700000000000));
        s.rec.generation = gen == 0 ? 0 : gen == 1 ? 5 : 0xFF;
        encode_decode(AVL_CODEC_16, &s, 1);
        int w = copyenc_row(layout, row, ROW_CAP, 1, &recs[0], 0);
        assert_true(w > 0);
        parse_tuple(row, (size_t)w, &t);
        assert_int_equal(t.len[COL_GEN], 2);
        assert_int_equal(rd_be(t.val[COL_GEN], 2), s.rec.generation);
        assert_int_equal(rd_be(t.val[COL_CODEC], 2), 16);
        assert_int_equal(w, row_without_io(&recs[0]));
    }
    static const uint8_t codecs[2] = {AVL_CODEC_8, AVL_CODEC_8E};
    for (int i = 0; i < 2; i++) {
        struct avl_record_src s = plain_src(UINT64_C(1700000000000));
        encode_decode(codecs[i], &s, 1);
        int w = copyenc_row(layout, row, ROW_CAP, 1, &recs[0], 0);
        assert_true(w > 0);
        parse_tuple(row, (size_t)w, &t);
        assert_int_equal(t.len[COL_GEN], -1);
        assert_int_equal(rd_be(t.val[COL_CODEC], 2), codecs[i]);
        /* no IO: the fixed part with "{}", less the 2 value bytes a NULL does not have */
        assert_int_equal(w, row_without_io(&recs[0]) - 2);
    }
}

static void test_coordinates(void **state)
{
    (void)state;
    static const struct {
        int32_t lon_e7, lat_e7;
        double lon, lat;
    } cases[] = {
        {-1234567890, -895000001, -123.456789, -89.5000001},
        {254871163, 547071033, 25.4871163, 54.7071033},
        {INT32_MIN, INT32_MAX, -214.7483648, 214.7483647},
        {-1, 1, -1e-7, 1e-7},
        {0, 0, 0.0, 0.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct avl_record_src s = plain_src(UINT64_C(1600000000000));
        s.rec.lon_e7 = cases[i].lon_e7;
        s.rec.lat_e7 = cases[i].lat_e7;
        s.rec.altitude_m = -417; /* the Dead Sea shore */
        encode_decode(AVL_CODEC_8E, &s, 1);
        int w = copyenc_row(layout, row, ROW_CAP, 1, &recs[0], 0);
        assert_true(w > 0);
        struct tuple t;
        parse_tuple(row, (size_t)w, &t);
        /* the decimal literal and lon_e7 / 1e7 are the same double: both correctly rounded */
        assert_int_equal(rd_be(t.val[4], 8), double_bits(cases[i].lon));
        assert_int_equal(rd_be(t.val[5], 8), double_bits(cases[i].lat));
        assert_int_equal(rd_be(t.val[6], 2), 0xFE5F); /* -417 */
    }
}

/* The arrays of test_nx_hex's record, element by element. */
static void check_nx_arrays(const struct tuple *t)
{
    static const uint32_t ids[3] = {239, 66, 0}, nx_ids[3] = {385, 65535, 257};
    static const uint64_t vals[3] = {1, 12345, UINT64_MAX}; /* stored as the bigint -1 */
    static const char *const nx_hex[3] = {"00abff10", "", "deadbeef01"};
    const uint8_t *a = t->val[COL_IO], *v = t->val[COL_IO + 1];
    const uint8_t *na = t->val[COL_IO + 2], *nv = t->val[COL_IO + 3];
    assert_int_equal(rd_be(a, 4), 1);       /* one dimension */
    assert_int_equal(rd_be(a + 12, 4), 3);  /* of 3 */
    assert_int_equal(rd_be(v + 8, 4), 20);  /* int8 */
    assert_int_equal(rd_be(nv + 8, 4), 17); /* bytea */
    assert_int_equal(rd_be(nv + 12, 4), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rd_be(a + 20 + 8 * i, 8), (uint64_t)4 << 32 | ids[i]);
        assert_int_equal(rd_be(v + 20 + 12 * i, 4), 8);
        assert_int_equal(rd_be(v + 24 + 12 * i, 8), vals[i]);
        assert_int_equal(rd_be(na + 20 + 8 * i, 8), (uint64_t)4 << 32 | nx_ids[i]);
    }
    const uint8_t *e = nv + 20;
    for (int i = 0; i < 3; i++) {
        uint32_t len = (uint32_t)rd_be(e, 4);
        char hex[32];
        assert_int_equal(len, strlen(nx_hex[i]) / 2);
        tu_hex_encode(e + 4, len, hex);
        assert_memory_equal(hex, nx_hex[i], 2 * len);
        e += 4 + len;
    }
    assert_ptr_equal(e, nv + t->len[COL_IO + 3]);
}

/* NX elements are lowercase hex strings, empty ones included; fixed ones decimals, and ids in
 * wire order (groups N1, N2, N4, N8, NX), not sorted. */
static void test_nx_hex(void **state)
{
    (void)state;
    static const uint8_t nx1[] = {0x00, 0xAB, 0xff, 0x10};
    static const uint8_t nx2[] = {0xDE, 0xAD, 0xBE, 0xEF, 0x01};
    struct avl_io_elem io[] = {
        {.id = 385, .width = 0, .nx_len = sizeof nx1, .nx = nx1},
        {.id = 65535, .width = 0, .nx_len = 0, .nx = NULL},
        {.id = 257, .width = 0, .nx_len = sizeof nx2, .nx = nx2},
        {.id = 239, .width = 1, .value = 1},
        {.id = 66, .width = 2, .value = 12345},
        {.id = 0, .width = 8, .value = UINT64_MAX},
    };
    struct avl_record_src s = plain_src(UINT64_C(1600000000000));
    s.io = io;
    s.io_len = sizeof io / sizeof io[0];
    encode_decode(AVL_CODEC_8E, &s, 1);
    int w = copyenc_row(layout, row, ROW_CAP, 7, &recs[0], 5);
    assert_true(w > 0);
    struct tuple t;
    parse_tuple(row, (size_t)w, &t);
    static const char want[] = "{\"239\":1,\"66\":12345,\"0\":18446744073709551615,"
                               "\"385\":\"00abff10\",\"65535\":\"\",\"257\":\"deadbeef01\"}";
    if (layout == COPYENC_JSONB) {
        assert_int_equal(t.len[COL_IO], 1 + strlen(want));
        assert_memory_equal(t.val[COL_IO] + 1, want, strlen(want));
    } else if (layout == COPYENC_ARRAYS) {
        check_nx_arrays(&t);
    }
    check_tuple(row, (size_t)w, 7, &recs[0], 5);

    /* no IO at all */
    s.io_len = 0;
    encode_decode(AVL_CODEC_8, &s, 1);
    w = copyenc_row(layout, row, ROW_CAP, 7, &recs[0], 5);
    parse_tuple(row, (size_t)w, &t);
    if (layout == COPYENC_JSONB) {
        assert_int_equal(t.len[COL_IO], 3);
        assert_memory_equal(t.val[COL_IO], "\001{}", 3);
    } else if (layout == COPYENC_ARRAYS) {
        static const uint32_t oids[4] = {23, 20, 23, 17};
        for (int k = 0; k < 4; k++) { /* empty, not NULL: ndim 0, no flags, the element type */
            assert_int_equal(t.len[COL_IO + k], 12);
            assert_int_equal(rd_be(t.val[COL_IO + k], 8), 0);
            assert_int_equal(rd_be(t.val[COL_IO + k] + 8, 4), oids[k]);
        }
    } else { /* the four one-byte group counts of Codec 8, all zero */
        assert_int_equal(t.len[COL_IO], 4);
        assert_int_equal(rd_be(t.val[COL_IO], 4), 0);
    }
}

/* Every decimal length of a u64 (around each power of ten) as N8 values and u16 ids. */
static void test_decimal_edges(void **state)
{
    (void)state;
    static struct avl_io_elem io[64];
    uint16_t len = 0;
    uint64_t p = 1;
    for (int d = 0; d < 20; d++) {
        io[len++] = (struct avl_io_elem){.id = (uint16_t)(d * 3000), .width = 8, .value = p - 1};
        io[len++] = (struct avl_io_elem){.id = (uint16_t)(d * 3000 + 1), .width = 8, .value = p};
        if (d < 19)
            p *= 10;
    }
    io[len++] = (struct avl_io_elem){.id = 65535, .width = 8, .value = UINT64_MAX};
    io[len++] = (struct avl_io_elem){.id = 9, .width = 4, .value = UINT32_MAX};
    io[len++] = (struct avl_io_elem){.id = 10, .width = 2, .value = 65535};
    io[len++] = (struct avl_io_elem){.id = 99, .width = 1, .value = 255};
    struct avl_record_src s = plain_src(UINT64_C(1600000000000));
    s.io = io;
    s.io_len = len;
    encode_decode(AVL_CODEC_8E, &s, 1);
    int w = copyenc_row(layout, row, ROW_CAP, 1, &recs[0], 0);
    assert_true(w > 0);
    check_tuple(row, (size_t)w, 1, &recs[0], 0); /* compares with snprintf's digits */
    struct tuple t;
    parse_tuple(row, (size_t)w, &t);
    if (layout != COPYENC_JSONB)
        return;
    assert_non_null(memmem(t.val[11], (size_t)t.len[11], "\"57001\":10000000000000000000,", 29));
    assert_non_null(memmem(t.val[11], (size_t)t.len[11], "\"57000\":9999999999999999999,", 28));
    assert_non_null(memmem(t.val[11], (size_t)t.len[11], "\"0\":0,\"1\":1,\"3000\":9,", 21));
}

/* Values timestamptz or the IMEI's bigint cannot hold are refused by name, and nothing is
 * written; an angle or speed smallint cannot hold is stored as NULL, the rest of the row as
 * sent (check_tuple). */
static void test_range_errors(void **state)
{
    (void)state;
    struct avl_record_src s = plain_src(UINT64_C(1600000000000));
    encode_decode(AVL_CODEC_8E, &s, 1);
    struct avl_record r = recs[0];

    static const struct {
        const char *name;
        uint16_t angle, speed;
        uint64_t ts_ms, imei;
        int64_t received_at_us;
        int want;
    } cases[] = {
        {"angle max ok", 32767, 0, 1600000000000, 1, 0, 1},
        {"speed max ok", 0, 32767, 1600000000000, 1, 0, 1},
        {"angle 32768: NULL", 32768, 0, 1600000000000, 1, 0, 1},
        {"angle 65535: NULL", 65535, 0, 1600000000000, 1, 0, 1},
        {"speed 32768: NULL", 0, 32768, 1600000000000, 1, 0, 1},
        {"speed 65535: NULL", 359, 65535, 1600000000000, 1, 0, 1},
        {"both: NULL", 40000, 50000, 1600000000000, 1, 0, 1},
        {"ts last ok", 0, 0, AVL_TS_MS_END - 1, 1, 0, 1},
        {"ts end", 0, 0, AVL_TS_MS_END, 1, 0, COPYENC_E_TS_RANGE},
        {"ts max", 0, 0, UINT64_MAX, 1, 0, COPYENC_E_TS_RANGE},
        {"imei max ok", 0, 0, 0, (uint64_t)INT64_MAX, 0, 1},
        {"imei past int8", 0, 0, 0, (uint64_t)INT64_MAX + 1, 0, COPYENC_E_IMEI_RANGE},
        {"received min ok", 0, 0, 0, 1, INT64_C(-210866803200000000), 1},
        {"received too early", 0, 0, 0, 1, INT64_C(-210866803200000001), COPYENC_E_RECEIVED_RANGE},
        {"received max ok", 0, 0, 0, 1, INT64_MAX, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r.angle_deg = cases[i].angle;
        r.speed_kmh = cases[i].speed;
        r.ts_ms = cases[i].ts_ms;
        memset(row, CANARY, 256);
        int w = copyenc_row(layout, row, ROW_CAP, cases[i].imei, &r, cases[i].received_at_us);
        if (cases[i].want > 0) {
            if (w <= 0)
                fail_msg("%s: %d %s", cases[i].name, w, copyenc_strerror(w));
            check_tuple(row, (size_t)w, cases[i].imei, &r, cases[i].received_at_us);
        } else {
            if (w != cases[i].want)
                fail_msg("%s: got %d, want %d", cases[i].name, w, cases[i].want);
            for (int b = 0; b < 256; b++)
                assert_int_equal(row[b], CANARY);
        }
    }
    /* the largest timestamp is 294276-12-31T23:59:59.999Z: 1 ms before END_TIMESTAMP */
    r.ts_ms = AVL_TS_MS_END - 1;
    r.angle_deg = r.speed_kmh = 0;
    int w = copyenc_row(layout, row, ROW_CAP, 1, &r, 0);
    struct tuple t;
    parse_tuple(row, (size_t)w, &t);
    assert_int_equal((int64_t)rd_be(t.val[1], 8), INT64_C(9223371331200000000) - 1000);
    /* the earliest: 1970, before the 2000 epoch */
    r.ts_ms = 0;
    w = copyenc_row(layout, row, ROW_CAP, 1, &r, 0);
    parse_tuple(row, (size_t)w, &t);
    assert_int_equal((int64_t)rd_be(t.val[1], 8), -PG_EPOCH_UNIX_US);
}

/* The record: angle 40000 and speed 50000 (u16 on the wire). The tuple has NULL in
 * both columns and every other field as sent; the row is 4 bytes shorter than with values
 * that fit (a NULL is its length alone). */
static void test_out_of_range_null(void **state)
{
    (void)state;
    struct avl_io_elem io[2] = {{.id = 239, .width = 1, .value = 1},
                                {.id = 16, .width = 4, .value = 123456}};
    struct avl_record_src s = plain_src(UINT64_C(1600000000000));
    s.rec.lon_e7 = 253000000;
    s.rec.lat_e7 = 546000000;
    s.rec.altitude_m = -12;
    s.rec.satellites = 9;
    s.rec.event_id = 239;
    s.rec.angle_deg = 40000;
    s.rec.speed_kmh = 50000;
    s.io = io;
    s.io_len = 2;
    encode_decode(AVL_CODEC_8, &s, 1);
    struct avl_record r = recs[0];
    assert_int_equal(r.angle_deg, 40000);
    assert_int_equal(r.speed_kmh, 50000);
    assert_int_equal(copyenc_nulls(&r), COPYENC_NULL_ANGLE | COPYENC_NULL_SPEED);
    int w =
        copyenc_row(layout, row, ROW_CAP, UINT64_C(356307042441013), &r, INT64_C(1700000000000000));
    assert_true(w > 0);
    check_tuple(row, (size_t)w, UINT64_C(356307042441013), &r, INT64_C(1700000000000000));
    struct tuple t;
    parse_tuple(row, (size_t)w, &t);
    assert_int_equal(t.len[7], -1);
    assert_int_equal(t.len[9], -1);
    assert_int_equal(rd_be(t.val[8], 2), 9);
    assert_int_equal(rd_be(t.val[10], 4), 239);
    /* the same record with values that fit: 2 + 2 bytes more, nothing else differs */
    r.angle_deg = 359;
    r.speed_kmh = 120;
    assert_int_equal(copyenc_nulls(&r), 0);
    static uint8_t fit[ROW_CAP];
    int w_fit =
        copyenc_row(layout, fit, ROW_CAP, UINT64_C(356307042441013), &r, INT64_C(1700000000000000));
    assert_int_equal(w_fit, w + 4);
    struct tuple t_fit;
    parse_tuple(fit, (size_t)w_fit, &t_fit);
    for (int i = 0; i < NCOLS; i++) {
        if (i == 7 || i == 9)
            continue;
        assert_int_equal(t.len[i], t_fit.len[i]);
        if (t.len[i] > 0)
            assert_memory_equal(t.val[i], t_fit.val[i], (size_t)t.len[i]);
    }
    /* one at a time */
    r.angle_deg = 40000;
    assert_int_equal(copyenc_nulls(&r), COPYENC_NULL_ANGLE);
    r.angle_deg = 32767;
    r.speed_kmh = 32768;
    assert_int_equal(copyenc_nulls(&r), COPYENC_NULL_SPEED);
}

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(copyenc_strerror(0), "ok");
    assert_string_equal(copyenc_strerror(159), "ok");
    assert_string_equal(copyenc_strerror(COPYENC_E_NO_SPACE), "no_space");
    assert_string_equal(copyenc_strerror(COPYENC_E_IMEI_RANGE), "imei_range");
    assert_string_equal(copyenc_strerror(COPYENC_E_TS_RANGE), "ts_range");
    assert_string_equal(copyenc_strerror(COPYENC_E_RECEIVED_RANGE), "received_range");
    assert_string_equal(copyenc_strerror(COPYENC_E_ERR_MIN - 1), "unknown_error");
}

/* With cap one below the bound nothing is written, into an exactly-sized heap buffer (ASan
 * sees a write past it); with cap equal to the bound the row is written. */
static void test_small_cap(void **state)
{
    (void)state;
    struct pktgen g;
    pktgen_init(&g, 42);
    unsigned checked = 0;
    for (int i = 0; i < 50; i++) {
        int n = pktgen_packet_tcp(&g, PKTGEN_REALISTIC, AVL_CODEC_8E, PKTGEN_RECORDS_RANDOM, &pkt,
                                  frame, sizeof frame);
        assert_true(n > 0);
        struct avl_packet p;
        assert_int_equal(avl_decode_tcp(frame, (size_t)n, &p, recs), 0);
        for (unsigned k = 0; k < p.records_len; k++) {
            size_t max = copyenc_row_bytes_max(layout, &recs[k]);
            uint8_t *buf = malloc(max);
            assert_non_null(buf);
            memset(buf, CANARY, max);
            assert_int_equal(copyenc_row(layout, buf, max - 1, 1, &recs[k], 0), COPYENC_E_NO_SPACE);
            assert_int_equal(copyenc_row(layout, buf, 0, 1, &recs[k], 0), COPYENC_E_NO_SPACE);
            for (size_t b = 0; b < max; b++)
                assert_int_equal(buf[b], CANARY);
            int w = copyenc_row(layout, buf, max, 1, &recs[k], 0);
            assert_true(w > 0 && (size_t)w <= max);
            check_tuple(buf, (size_t)w, 1, &recs[k], 0);
            free(buf);
            checked++;
        }
    }
    assert_true(checked >= 50);
}

/* Many generated records of every codec in both modes: the bound holds, every field is right,
 * and the NULLs are exactly the angles and speeds above 32767. */
static void test_packetgen_rows(void **state)
{
    (void)state;
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    uint64_t rows = 0, nulled = 0, io_elems = 0;
    size_t slack_min = SIZE_MAX;
    for (int c = 0; c < 3; c++) {
        for (int mode = 0; mode < 2; mode++) {
            struct pktgen g;
            pktgen_init(&g, 0xC0FFEE00u + (uint64_t)(c * 2 + mode));
            for (int i = 0; i < PACKETS_PER_COMBO; i++) {
                int n = pktgen_packet_tcp(&g, (enum pktgen_mode)mode, codecs[c],
                                          PKTGEN_RECORDS_RANDOM, &pkt, frame, sizeof frame);
                assert_true(n > 0);
                struct avl_packet p;
                assert_int_equal(avl_decode_tcp(frame, (size_t)n, &p, recs), 0);
                for (unsigned k = 0; k < p.records_len; k++) {
                    const struct avl_record *r = &recs[k];
                    uint64_t imei = pktgen_u64(&g) % UINT64_C(100000000000000000);
                    int64_t rx = (int64_t)(pktgen_u64(&g) % UINT64_C(4102444800000000));
                    int w = copyenc_row(layout, row, ROW_CAP, imei, r, rx);
                    assert_int_equal(copyenc_nulls(r) != 0,
                                     r->angle_deg > 32767 || r->speed_kmh > 32767);
                    nulled += copyenc_nulls(r) != 0;
                    assert_true(w > 0);
                    size_t max = copyenc_row_bytes_max(layout, r);
                    assert_true((size_t)w <= max);
                    if (max - (size_t)w < slack_min)
                        slack_min = max - (size_t)w;
                    check_tuple(row, (size_t)w, imei, r, rx);
                    rows++;
                    io_elems += r->io_total;
                }
            }
        }
    }
    print_message("copyenc: %" PRIu64 " rows (%" PRIu64 " IO elements) checked, %" PRIu64
                  " with an angle or speed stored NULL, least slack of the bound %zu bytes\n",
                  rows, io_elems, nulled, slack_min);
    assert_true(rows > 20000);
    assert_true(nulled > 0); /* the arbitrary mode reaches angles and speeds above 32767 */
}

/* ---- the encoder against a plain reference, byte for byte ---------------------------------- */

/* The row as copyenc.h describes it, written the obvious way: field by field, the timestamp
 * through a signed difference, the IO columns from ref_io. */
static size_t ref_row(uint8_t *out, uint64_t imei, const struct avl_record *r, int64_t rx_us)
{
    size_t n = 0;
    ref_be(out, &n, 2, (uint64_t)NCOLS);
    ref_field(out, &n, 8, imei);
    int64_t ts_us = (int64_t)(r->ts_ms - (uint64_t)(PG_EPOCH_UNIX_US / 1000)) * 1000;
    ref_field(out, &n, 8, (uint64_t)ts_us);
    ref_field(out, &n, 8, (uint64_t)(rx_us - PG_EPOCH_UNIX_US));
    ref_field(out, &n, 2, r->priority);
    ref_field(out, &n, 8, double_bits(r->lon_e7 / 1e7));
    ref_field(out, &n, 8, double_bits(r->lat_e7 / 1e7));
    ref_field(out, &n, 2, (uint16_t)r->altitude_m);
    if (r->angle_deg > 32767)
        ref_be(out, &n, 4, UINT32_MAX); /* NULL */
    else
        ref_field(out, &n, 2, r->angle_deg);
    ref_field(out, &n, 2, r->satellites);
    if (r->speed_kmh > 32767)
        ref_be(out, &n, 4, UINT32_MAX);
    else
        ref_field(out, &n, 2, r->speed_kmh);
    ref_field(out, &n, 4, r->event_id);
    n += ref_io(out + n, r);
    if (r->codec == AVL_CODEC_16)
        ref_field(out, &n, 2, r->generation);
    else
        ref_be(out, &n, 4, UINT32_MAX);
    ref_field(out, &n, 2, r->codec);
    return n;
}

/* Encodes r and compares with ref_row: the same bytes, within the bound, and nothing written
 * past the row (the encoder's wide stores must end inside it). */
static void check_against_ref(uint64_t imei, const struct avl_record *r, int64_t rx_us)
{
    static uint8_t ref[ROW_CAP];
    size_t max = copyenc_row_bytes_max(layout, r);
    assert_true(max <= ROW_CAP);
    memset(row, CANARY, max);
    int w = copyenc_row(layout, row, max, imei, r, rx_us);
    assert_true(w > 0);
    size_t want = ref_row(ref, imei, r, rx_us);
    assert_int_equal((size_t)w, want);
    assert_true(want <= max);
    assert_memory_equal(row, ref, want);
    for (size_t b = want; b < max; b++)
        assert_int_equal(row[b], CANARY);
}

/* Every generated record of every codec, realistic and arbitrary (angles and speeds above
 * smallint included: NULL in both), against the reference. */
static void test_reference_packetgen(void **state)
{
    (void)state;
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    uint64_t rows = 0, nx = 0, empty = 0;
    for (int c = 0; c < 3; c++) {
        for (int mode = 0; mode < 2; mode++) {
            struct pktgen g;
            pktgen_init(&g, 0x5EF0000u + (uint64_t)(c * 2 + mode));
            for (int i = 0; i < PACKETS_PER_COMBO; i++) {
                int n = pktgen_packet_tcp(&g, (enum pktgen_mode)mode, codecs[c],
                                          PKTGEN_RECORDS_RANDOM, &pkt, frame, sizeof frame);
                assert_true(n > 0);
                struct avl_packet p;
                assert_int_equal(avl_decode_tcp(frame, (size_t)n, &p, recs), 0);
                for (unsigned k = 0; k < p.records_len; k++) {
                    struct avl_record r = recs[k];
                    uint64_t imei = pktgen_u64(&g) % UINT64_C(100000000000000000);
                    int64_t rx = (int64_t)(pktgen_u64(&g) % UINT64_C(4102444800000000));
                    check_against_ref(imei, &r, rx);
                    rows++;
                    empty += r.io_total == 0;
                    struct avl_io_iter it;
                    struct avl_io io;
                    avl_io_iter_init(&it, &r);
                    while (avl_io_next(&it, &io))
                        nx += io.nx;
                }
            }
        }
    }
    print_message("copyenc: %" PRIu64 " rows equal to the reference (%" PRIu64
                  " without IO, %" PRIu64 " NX elements)\n",
                  rows, empty, nx);
    assert_true(rows > 50000);
    assert_true(empty > 0);
    assert_true(nx > 0);
}

enum { SWEEP_ELEMS = 1000 };

/* Encodes the elements as one record of codec and checks it against the reference. */
static void sweep_check(uint8_t codec, const struct avl_io_elem *io, uint16_t len)
{
    struct avl_record_src s = plain_src(UINT64_C(1600000000000));
    s.io = io;
    s.io_len = len;
    encode_decode(codec, &s, 1);
    check_against_ref(UINT64_C(356307042441013), &recs[0], INT64_C(1700000000000000));
}

/* Every id of every codec (0..255 for 8, 0..65535 for 8E and 16) and every value of widths 1
 * and 2, in records of up to SWEEP_ELEMS elements; every digit count of widths 4 and 8 with
 * the values around each power of ten; NX lengths 0, 1 and 600. */
static void test_reference_sweeps(void **state)
{
    (void)state;
    static struct avl_io_elem io[SWEEP_ELEMS];
    static uint8_t nx_bytes[600];
    for (size_t i = 0; i < sizeof nx_bytes; i++)
        nx_bytes[i] = (uint8_t)(i * 37u + 11u);

    /* ids: codec 8 in N1..N8 (255 per group at most), 8E and 16 across all of u16 */
    for (int width = 1; width <= 8; width *= 2) {
        uint16_t len = 0;
        for (uint32_t id = 0; id < 256; id++) {
            io[len++] = (struct avl_io_elem){.id = (uint16_t)id,
                                             .width = (uint8_t)width,
                                             .value = id * 0x0101010101010101u >> (64 - 8 * width)};
            if (len == 255 || id == 255) {
                sweep_check(AVL_CODEC_8, io, len);
                len = 0;
            }
        }
    }
    for (uint32_t id = 0; id < 65536;) {
        uint16_t len = 0;
        for (; id < 65536 && len < 255; id++)
            io[len++] = (struct avl_io_elem){.id = (uint16_t)id, .width = 1, .value = id & 0xFF};
        sweep_check(AVL_CODEC_16, io, len);
    }
    for (uint32_t id = 0; id < 65536;) {
        uint16_t len = 0;
        for (; id < 65536 && len < SWEEP_ELEMS; id++)
            io[len++] = (struct avl_io_elem){.id = (uint16_t)id,
                                             .width = (uint8_t)(1u << (id % 5u)),
                                             .value = id % 5u == 0 ? id & 0xFF : id};
        for (uint16_t k = 0; k < len; k++) {
            if (io[k].width == 16) { /* the fifth kind: NX */
                io[k].width = 0;
                io[k].nx_len = (uint16_t)(io[k].id % 3u);
                io[k].nx = nx_bytes;
            }
        }
        sweep_check(AVL_CODEC_8E, io, len);
    }

    /* values: all of widths 1 and 2 */
    for (uint32_t v = 0; v < 65536;) {
        uint16_t len = 0;
        for (; v < 65536 && len + 2 <= SWEEP_ELEMS; v++) {
            io[len++] = (struct avl_io_elem){.id = (uint16_t)len, .width = 2, .value = v};
            if (v < 256)
                io[len++] = (struct avl_io_elem){.id = 65535, .width = 1, .value = v};
        }
        sweep_check(AVL_CODEC_8E, io, len);
    }
    /* widths 4 and 8: 0, 1, each power of ten and its neighbours, the maximum */
    uint16_t len = 0;
    for (uint64_t p10 = 1;; p10 *= 10) {
        for (int d = -1; d <= 1; d++) {
            uint64_t v = p10 + (uint64_t)(int64_t)d;
            if (v <= UINT32_MAX)
                io[len++] = (struct avl_io_elem){.id = 999, .width = 4, .value = v};
            io[len++] = (struct avl_io_elem){.id = 1000, .width = 8, .value = v};
        }
        if (p10 > UINT64_MAX / 10)
            break;
    }
    io[len++] = (struct avl_io_elem){.id = 9999, .width = 4, .value = UINT32_MAX};
    io[len++] = (struct avl_io_elem){.id = 10000, .width = 8, .value = UINT64_MAX};
    io[len++] = (struct avl_io_elem){.id = 65535, .width = 0, .nx_len = 600, .nx = nx_bytes};
    io[len++] = (struct avl_io_elem){.id = 0, .width = 0, .nx_len = 1, .nx = nx_bytes};
    sweep_check(AVL_CODEC_8E, io, len);
    sweep_check(AVL_CODEC_16, io, (uint16_t)(len - 2));

    /* no IO, every codec */
    sweep_check(AVL_CODEC_8, io, 0);
    sweep_check(AVL_CODEC_8E, io, 0);
    sweep_check(AVL_CODEC_16, io, 0);
}

/* CPU ns per row (thread CPU time, so other load on the machine matters less) on realistic 8E
 * packets of 10 records, printed; compare Release builds only. */
static void test_speed(void **state)
{
    (void)state;
    static uint8_t frames[SPEED_PACKETS][PKTGEN_FRAME_BYTES_MAX / 8];
    static struct avl_record all[SPEED_PACKETS * 10];
    static uint8_t out[1 << 22];
    struct pktgen g;
    pktgen_init(&g, 7);
    size_t all_len = 0;
    for (int i = 0; i < SPEED_PACKETS; i++) {
        int n = pktgen_packet_tcp(&g, PKTGEN_REALISTIC, AVL_CODEC_8E, 10, &pkt, frames[i],
                                  sizeof frames[i]);
        assert_true(n > 0);
        struct avl_packet p;
        assert_int_equal(avl_decode_tcp(frames[i], (size_t)n, &p, recs), 0);
        assert_int_equal(p.records_len, 10);
        memcpy(&all[all_len], recs, 10 * sizeof recs[0]);
        all_len += 10;
    }
    struct timespec t0, t1;
    size_t off = 0;
    uint64_t bytes = 0, io_elems = 0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    for (int pass = 0; pass < SPEED_PASSES; pass++) {
        for (size_t i = 0; i < all_len; i++) {
            if (sizeof out - off < 4096)
                off = 0;
            int w = copyenc_row(layout, out + off, sizeof out - off, UINT64_C(356307042441013),
                                &all[i], INT64_C(1700000000000000));
            assert_true(w > 0);
            off += (size_t)w;
            bytes += (uint64_t)w;
        }
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    for (size_t i = 0; i < all_len; i++)
        io_elems += all[i].io_total;
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    double rows = (double)all_len * SPEED_PASSES;
    print_message(
        "copyenc speed (%s): %.0f ns/row, %.2f M rows/s, %.0f bytes/row, %.1f IO elements/row"
        " (realistic 8E; meaningful in a Release build only)\n",
        copyenc_layout_name(layout), ns / rows, rows / ns * 1e3, (double)bytes / rows,
        (double)io_elems / all_len);
}

static int use_arrays(void **state)
{
    (void)state;
    layout = COPYENC_ARRAYS;
    return 0;
}

static int use_jsonb(void **state)
{
    (void)state;
    layout = COPYENC_JSONB;
    return 0;
}

static int use_raw(void **state)
{
    (void)state;
    layout = COPYENC_RAW;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_trailer),   cmocka_unit_test(test_wiki_codec8_exact),
        cmocka_unit_test(test_generation),       cmocka_unit_test(test_coordinates),
        cmocka_unit_test(test_nx_hex),           cmocka_unit_test(test_decimal_edges),
        cmocka_unit_test(test_range_errors),     cmocka_unit_test(test_out_of_range_null),
        cmocka_unit_test(test_strerror),         cmocka_unit_test(test_small_cap),
        cmocka_unit_test(test_packetgen_rows),   cmocka_unit_test(test_reference_packetgen),
        cmocka_unit_test(test_reference_sweeps), cmocka_unit_test(test_speed),
    };
    int failed = cmocka_run_group_tests_name("arrays", tests, use_arrays, NULL);
    failed += cmocka_run_group_tests_name("jsonb", tests, use_jsonb, NULL);
    failed += cmocka_run_group_tests_name("raw", tests, use_raw, NULL);
    return failed;
}
