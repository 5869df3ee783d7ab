/* test_corpus.c — every packet of the ../shared/corpus TSV files (the test vectors of nine public
 * Teltonika parsers) through the codec, judged by the verdict of derived_checks.tsv.
 *
 * derived_checks.tsv was computed by an independent reference decoder, one row per corpus row.
 * The rules below turn its columns (and a few facts read straight off the bytes) into an
 * expectation, in code, with no hand-written per-row table:
 *
 *   VALID   the row is a packet kind, the reference found nothing wrong, and the source test
 *           does not say the packet must fail. It must decode, and decode to what the
 *           reference saw (record count, first record, first message), and re-encode to the
 *           same bytes.
 *   INVALID anything else. The codec must return an error (never success, never a crash), and
 *           the error must name one of the causes the reference (or the bytes) give.
 *   crc-input rows are CRC unit-test inputs, not packets: their CRC must match.
 *
 * Each row is its own cmocka test, named file:line, so one run lists every disagreement. */
#include <ctype.h>
#include <dirent.h>
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

/* ---------------------------------------------------------------------------------------------
 * Rows
 * ------------------------------------------------------------------------------------------- */

enum tri { TRI_EMPTY, TRI_TRUE, TRI_FALSE };

/* One row of derived_checks.tsv. Strings point into the loaded file text. */
struct derived_row {
    const char *file, *line, *transport, *kind, *codec_id;
    long bytes; /* -1: empty */
    enum tri length_field_ok, crc_ok, parse_consumed_exactly;
    long n1, n2, records; /* -1: empty */
    const char *first_record, *note;
    bool used;
};

enum row_class { ROW_VALID, ROW_INVALID, ROW_CRC_INPUT };

/* One corpus row joined with its derived row. */
struct corpus_row {
    const char *file, *line, *transport, *kind, *codec_id, *hex, *expect;
    int ordinal; /* 1 + earlier rows of the same file with the same line, transport, kind */
    uint8_t *bytes;
    size_t len;
    const struct derived_row *d;
    enum row_class cls;
    uint32_t allowed; /* INVALID rows: bit (-e) set for each acceptable avl_err e */
    char name[160];
};

enum { ROWS_MAX = 512, FILES_MAX = 32 };

static struct derived_row derived[ROWS_MAX];
static size_t derived_len;
static struct corpus_row rows[ROWS_MAX];
static size_t rows_len;
static char *texts[FILES_MAX + 1];
static size_t texts_len;
static char *file_names[FILES_MAX];
static size_t join_failures;

#define ERR_BIT(e) (UINT32_C(1) << (unsigned)-(e))

static bool str_in(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---------------------------------------------------------------------------------------------
 * Loading and joining
 * ------------------------------------------------------------------------------------------- */

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "test_corpus: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static int column(char **header, int n, const char *name, const char *file)
{
    for (int i = 0; i < n; i++)
        if (strcmp(header[i], name) == 0)
            return i;
    die("%s has no column \"%s\"", file, name);
}

static enum tri parse_tri(const char *s)
{
    if (strcmp(s, "True") == 0)
        return TRI_TRUE;
    if (strcmp(s, "False") == 0)
        return TRI_FALSE;
    if (*s)
        die("not True/False/empty: \"%s\"", s);
    return TRI_EMPTY;
}

static long parse_count(const char *s)
{
    if (!*s)
        return -1;
    char *end;
    long n = strtol(s, &end, 10);
    if (*end)
        die("not a number: \"%s\"", s);
    return n;
}

/* Splits text into lines in place; returns the count (at most cap). */
static size_t split_lines(char *text, char **lines, size_t cap)
{
    size_t n = 0;
    char *p = text;
    while (*p && n < cap) {
        lines[n++] = p;
        char *nl = strchr(p, '\n');
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    return n;
}

static void load_derived(void)
{
    char path[4096];
    tu_shared_path(path, sizeof path, "corpus/derived_checks.tsv");
    char *text = texts[texts_len++] = tu_read_file(path, NULL);
    static char *lines[ROWS_MAX + 1];
    size_t n = split_lines(text, lines, ROWS_MAX + 1);
    if (n < 2 || n > ROWS_MAX)
        die("%s: unexpected line count", path);
    char *hdr[20];
    int hn = tu_split_tsv(lines[0], hdr, 20);
    int c_file = column(hdr, hn, "file", path), c_line = column(hdr, hn, "line_number", path);
    int c_tr = column(hdr, hn, "transport", path), c_kind = column(hdr, hn, "kind", path);
    int c_codec = column(hdr, hn, "codec_id", path), c_bytes = column(hdr, hn, "bytes", path);
    int c_lf = column(hdr, hn, "length_field_ok", path), c_n1 = column(hdr, hn, "n1", path);
    int c_n2 = column(hdr, hn, "n2", path), c_crc = column(hdr, hn, "crc_ok", path);
    int c_pce = column(hdr, hn, "parse_consumed_exactly", path);
    int c_rec = column(hdr, hn, "records", path), c_first = column(hdr, hn, "first_record", path);
    int c_note = column(hdr, hn, "note", path);
    for (size_t i = 1; i < n; i++) {
        if (!*lines[i])
            continue;
        char *c[20];
        int k = tu_split_tsv(lines[i], c, 20);
        if (k != hn)
            die("derived_checks.tsv: a row has the wrong column count: %s", lines[i]);
        struct derived_row *d = &derived[derived_len++];
        d->file = c[c_file];
        d->line = c[c_line];
        d->transport = c[c_tr];
        d->kind = c[c_kind];
        d->codec_id = c[c_codec];
        d->bytes = parse_count(c[c_bytes]);
        d->length_field_ok = parse_tri(c[c_lf]);
        d->n1 = parse_count(c[c_n1]);
        d->n2 = parse_count(c[c_n2]);
        d->crc_ok = parse_tri(c[c_crc]);
        d->parse_consumed_exactly = parse_tri(c[c_pce]);
        d->records = parse_count(c[c_rec]);
        d->first_record = c[c_first];
        d->note = c[c_note];
    }
}

/* The join key is (file, line_number, transport, kind), and among rows with the same key the
 * n-th corpus row pairs with the n-th derived row. (file, line_number) alone is not unique:
 * mcraiha_CSharp-Codec8.tsv has rows from four source files with the same line numbers, and
 * traccar_teltonika.tsv line 19 is both a handshake (frame decoder test) and a command
 * (encoder test). The pair is then cross-checked on codec_id and byte count. */
static const struct derived_row *join(struct corpus_row *r)
{
    int seen = 0;
    for (size_t i = 0; i < derived_len; i++) {
        struct derived_row *d = &derived[i];
        if (strcmp(d->file, r->file) != 0 || strcmp(d->line, r->line) != 0 ||
            strcmp(d->transport, r->transport) != 0 || strcmp(d->kind, r->kind) != 0)
            continue;
        if (++seen < r->ordinal)
            continue;
        if (d->used)
            return NULL;
        d->used = true;
        return d;
    }
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_corpus_file(const char *name)
{
    char path[4096], rel[512];
    snprintf(rel, sizeof rel, "corpus/%s", name);
    tu_shared_path(path, sizeof path, rel);
    char *text = texts[texts_len++] = tu_read_file(path, NULL);
    static char *lines[ROWS_MAX + 1];
    size_t n = split_lines(text, lines, ROWS_MAX + 1);
    char *hdr[16];
    int hn = tu_split_tsv(lines[0], hdr, 16);
    int c_src = column(hdr, hn, "source_test", path), c_line = column(hdr, hn, "line_number", path);
    int c_tr = column(hdr, hn, "transport", path), c_kind = column(hdr, hn, "kind", path);
    int c_codec = column(hdr, hn, "codec_id", path), c_hex = column(hdr, hn, "hex", path);
    int c_expect = column(hdr, hn, "expect", path);
    (void)c_src;
    for (size_t i = 1; i < n; i++) {
        if (!*lines[i])
            continue;
        char *c[16];
        int k = tu_split_tsv(lines[i], c, 16);
        if (k != hn)
            die("%s: a row has the wrong column count: %s", name, lines[i]);
        if (rows_len == ROWS_MAX)
            die("too many rows");
        struct corpus_row *r = &rows[rows_len++];
        r->file = name;
        r->line = c[c_line];
        r->transport = c[c_tr];
        r->kind = c[c_kind];
        r->codec_id = c[c_codec];
        r->hex = c[c_hex];
        r->expect = c[c_expect];
        r->ordinal = 1;
        for (size_t j = 0; j + 1 < rows_len; j++) {
            const struct corpus_row *o = &rows[j];
            if (strcmp(o->file, r->file) == 0 && strcmp(o->line, r->line) == 0 &&
                strcmp(o->transport, r->transport) == 0 && strcmp(o->kind, r->kind) == 0)
                r->ordinal++;
        }
        size_t hex_len = strlen(r->hex);
        r->bytes = malloc(hex_len / 2 + 1);
        long got = tu_hex_decode(r->hex, hex_len, r->bytes, hex_len / 2 + 1);
        if (got < 0)
            die("%s: bad hex on line %s", name, r->line);
        r->len = (size_t)got;
        int at =
            snprintf(r->name, sizeof r->name, "%s:%s %s %s", name, r->line, r->transport, r->kind);
        if (r->ordinal > 1 && at > 0 && (size_t)at < sizeof r->name)
            snprintf(r->name + at, sizeof r->name - (size_t)at, " #%d", r->ordinal);
        r->d = join(r);
        if (!r->d || strcmp(r->d->codec_id, r->codec_id) != 0 ||
            (r->d->bytes >= 0 && (size_t)r->d->bytes != r->len)) {
            fprintf(stderr, "test_corpus: %s has no matching derived row\n", r->name);
            join_failures++;
        }
    }
}

static void load_corpus(void)
{
    load_derived();
    char dir_path[4096];
    tu_shared_path(dir_path, sizeof dir_path, "corpus");
    DIR *dir = opendir(dir_path);
    if (!dir)
        die("cannot open %s", dir_path);
    size_t files = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".tsv") != 0 ||
            strcmp(e->d_name, "derived_checks.tsv") == 0)
            continue;
        if (files == FILES_MAX)
            die("too many corpus files");
        file_names[files++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(file_names, files, sizeof file_names[0], cmp_str);
    for (size_t i = 0; i < files; i++)
        load_corpus_file(file_names[i]);
}

/* ---------------------------------------------------------------------------------------------
 * Facts read off the bytes (independent of the codec)
 * ------------------------------------------------------------------------------------------- */

static bool is_tcp(const struct corpus_row *r)
{
    return strcmp(r->transport, "tcp") == 0;
}

static const char *const framing_kinds[] = {"handshake", "ping", "ping+handshake", NULL};
static const char *const gprs_kinds[] = {"command", "response", "camera", NULL};

static bool is_framing_kind(const struct corpus_row *r)
{
    return str_in(r->kind, framing_kinds);
}

static bool codec_known(uint8_t c)
{
    return avl_codec_is_avl(c) || avl_codec_is_gprs(c);
}

/* The codec id byte: after the data length (TCP) or after the IMEI (UDP). */
static bool codec_byte(const struct corpus_row *r, uint8_t *codec)
{
    size_t at;
    if (is_tcp(r)) {
        at = 8;
    } else {
        if (r->len < 8)
            return false;
        at = 8 + ((size_t)r->bytes[6] << 8 | r->bytes[7]);
    }
    if (at >= r->len)
        return false;
    *codec = r->bytes[at];
    return true;
}

static bool tcp_preamble_bad(const struct corpus_row *r)
{
    if (!is_tcp(r) || is_framing_kind(r) || r->len == 0 || r->bytes[0] == 0xFF)
        return false;
    for (size_t i = 0; i < 4 && i < r->len; i++)
        if (r->bytes[i] != 0)
            return true;
    return false;
}

/* The IMEI digits of a handshake (TCP) or of the UDP header, as far as they are present. */
static bool imei_has_non_digit(const struct corpus_row *r)
{
    size_t at;
    if (is_tcp(r)) {
        if (!is_framing_kind(r))
            return false;
        at = r->len > 0 && r->bytes[0] == 0xFF ? 1 : 0; /* ping+handshake */
    } else {
        at = 6;
    }
    if (r->len < at + 2)
        return false;
    size_t n = (size_t)r->bytes[at] << 8 | r->bytes[at + 1];
    for (size_t i = 0; i < n && at + 2 + i < r->len; i++)
        if (r->bytes[at + 2 + i] < '0' || r->bytes[at + 2 + i] > '9')
            return true;
    return false;
}

static bool udp_imei_length_unusual(const struct corpus_row *r)
{
    return !is_tcp(r) && r->len >= 8 &&
           ((size_t)r->bytes[6] << 8 | r->bytes[7]) != AVL_IMEI_CANONICAL_DIGITS;
}

static bool udp_length_field_bad(const struct corpus_row *r)
{
    return !is_tcp(r) && (r->len < 2 || ((size_t)r->bytes[0] << 8 | r->bytes[1]) + 2 != r->len);
}

/* ---------------------------------------------------------------------------------------------
 * The rules: VALID or INVALID, and for INVALID rows the errors that name a listed cause
 * ------------------------------------------------------------------------------------------- */

/* Row kinds that are packets a gateway must accept when they are well formed. */
static const char *const packet_kinds[] = {
    "avl", "command", "response", "camera", "handshake", "ping", "ping+handshake", "ack", NULL};

/* Does the source test's own assertion (the expect column) say the packet must fail?
 * "expected result <Name>" names mcraiha's result enum: Success* passes, anything else fails,
 * except IncorrectPriority: TELTONIKA.md §2 says priority 3..255 is suspicious, not fatal,
 * and the gateway keeps the value as sent. So a row whose only fault is its priority follows
 * the reference decoder's verdict (valid) instead of mcraiha's enum. */
static bool expect_names_failure(const char *expect)
{
    static const char *const phrases[] = {"must fail", "MustFail",      "must throw",
                                          "Rejected",  "should_reject", NULL};
    for (const char *const *p = phrases; *p; p++)
        if (strstr(expect, *p))
            return true;
    const char *er = strstr(expect, "expected result ");
    if (er) {
        const char *name = er + strlen("expected result ");
        if (!starts_with(name, "Success") && !starts_with(name, "IncorrectPriority"))
            return true;
    }
    /* "invalid" as a word of its own ("invalid length and checksum"), not inside an
     * identifier such as invalid_limits or DecodeInvalidCodec8Test. */
    for (const char *s = strstr(expect, "invalid"); s; s = strstr(s + 1, "invalid")) {
        unsigned char before = s == expect ? ' ' : (unsigned char)s[-1];
        unsigned char after = (unsigned char)s[strlen("invalid")];
        if (!isalnum(before) && before != '_' && !isalnum(after) && after != '_')
            return true;
    }
    return false;
}

/* Did the reference decoder find the row clean? Packets need every check True and the counts
 * equal (the CRC only exists on TCP); framing-only kinds have no such columns, and their
 * note just repeats the kind. */
static bool derived_says_clean(const struct corpus_row *r)
{
    const struct derived_row *d = r->d;
    bool note_is_kind = d->note[0] == '\0' || strcmp(d->note, r->kind) == 0;
    if (str_in(r->kind, framing_kinds) || strcmp(r->kind, "ack") == 0)
        return note_is_kind;
    return d->note[0] == '\0' && d->length_field_ok == TRI_TRUE &&
           (!is_tcp(r) || d->crc_ok == TRI_TRUE) && d->parse_consumed_exactly == TRI_TRUE &&
           d->n1 >= 0 && d->n1 == d->n2;
}

static enum row_class classify(const struct corpus_row *r)
{
    if (strcmp(r->kind, "crc-input") == 0)
        return ROW_CRC_INPUT;
    if (str_in(r->kind, packet_kinds) && derived_says_clean(r) && !expect_names_failure(r->expect))
        return ROW_VALID;
    return ROW_INVALID;
}

/* A wrong length moves where the decoder looks for the CRC field and for count 2, and it can
 * cut the records short or leave bytes over. */
static const uint32_t length_causes =
    ERR_BIT(AVL_E_TRUNCATED) | ERR_BIT(AVL_E_FRAME_TOO_LARGE) | ERR_BIT(AVL_E_LENGTH_TOO_SMALL) |
    ERR_BIT(AVL_E_UDP_LENGTH) | ERR_BIT(AVL_E_CRC_MISMATCH) | ERR_BIT(AVL_E_CRC_HIGH_BITS) |
    ERR_BIT(AVL_E_COUNT_MISMATCH) | ERR_BIT(AVL_E_TRAILING_BYTES) | ERR_BIT(AVL_E_RECORD_OVERRUN) |
    ERR_BIT(AVL_E_IO_OVERRUN);
static const uint32_t crc_causes = ERR_BIT(AVL_E_CRC_MISMATCH) | ERR_BIT(AVL_E_CRC_HIGH_BITS);
/* The body does not end exactly at count 2. */
static const uint32_t parse_causes = ERR_BIT(AVL_E_RECORD_OVERRUN) | ERR_BIT(AVL_E_IO_OVERRUN) |
                                     ERR_BIT(AVL_E_IO_TOTAL_MISMATCH) |
                                     ERR_BIT(AVL_E_TRAILING_BYTES) | ERR_BIT(AVL_E_MSG_OVERRUN) |
                                     ERR_BIT(AVL_E_MSG_SIZE) | ERR_BIT(AVL_E_TRUNCATED);

static uint32_t allowed_errors(const struct corpus_row *r)
{
    const struct derived_row *d = r->d;
    uint32_t allowed = 0;
    uint8_t codec;

    /* What the reference decoder found. */
    if (d->length_field_ok == TRI_FALSE)
        allowed |= length_causes;
    if (d->crc_ok == TRI_FALSE)
        allowed |= crc_causes;
    if (d->n1 >= 0 && d->n2 >= 0 && d->n1 != d->n2)
        allowed |= ERR_BIT(AVL_E_COUNT_MISMATCH);
    if (d->parse_consumed_exactly == TRI_FALSE)
        allowed |= parse_causes;
    /* The reference ran off the end of the bytes before it could fill in its other columns,
     * so any structural cause it would have checked is possible. */
    if (starts_with(d->note, "decode error"))
        allowed |= length_causes | crc_causes | parse_causes;
    if (strstr(d->note, "N_total"))
        allowed |= ERR_BIT(AVL_E_IO_TOTAL_MISMATCH);

    /* What the bytes say on their face. */
    if (tcp_preamble_bad(r))
        allowed |= ERR_BIT(AVL_E_BAD_PREAMBLE);
    if (codec_byte(r, &codec) && !codec_known(codec) && !is_framing_kind(r))
        allowed |= ERR_BIT(AVL_E_CODEC_UNKNOWN);
    if (imei_has_non_digit(r))
        allowed |= ERR_BIT(AVL_E_IMEI_DIGITS);
    if (udp_length_field_bad(r))
        allowed |= ERR_BIT(AVL_E_UDP_LENGTH);
    /* A UDP IMEI length other than 15 shifts the whole body: the IMEI takes body bytes (or
     * the body takes IMEI bytes), so the codec sees a wrong codec id, counts or records. */
    if (udp_imei_length_unusual(r))
        allowed |= ERR_BIT(AVL_E_IMEI_LENGTH) | ERR_BIT(AVL_E_IMEI_DIGITS) |
                   ERR_BIT(AVL_E_UDP_LENGTH) | ERR_BIT(AVL_E_TRUNCATED) |
                   ERR_BIT(AVL_E_CODEC_UNKNOWN) | ERR_BIT(AVL_E_COUNT_MISMATCH) | parse_causes;

    /* Some causes cannot arise on a transport: UDP has no preamble, data length, CRC or GPRS
     * messages; TCP has no datagram length. */
    if (is_tcp(r))
        allowed &= ~ERR_BIT(AVL_E_UDP_LENGTH);
    else
        allowed &= ~(ERR_BIT(AVL_E_BAD_PREAMBLE) | ERR_BIT(AVL_E_LENGTH_TOO_SMALL) |
                     ERR_BIT(AVL_E_FRAME_TOO_LARGE) | crc_causes | ERR_BIT(AVL_E_MSG_OVERRUN) |
                     ERR_BIT(AVL_E_MSG_SIZE));
    return allowed;
}

static void describe_allowed(uint32_t allowed, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (int e = -1; e >= AVL_E_ERR_MIN && n + 1 < cap; e--)
        if (allowed & ERR_BIT(e))
            n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? "|" : "", avl_strerror(e));
}

/* ---------------------------------------------------------------------------------------------
 * Running the codec over a row
 * ------------------------------------------------------------------------------------------- */

enum { FRAMES_MAX = 8 };

struct outcome {
    int err; /* 0, or the first error */
    struct avl_frame frames[FRAMES_MAX];
    size_t frames_len;
};

/* A TCP row is a stream: scan frames from the start until the bytes run out. Each frame is
 * decoded by the decoder of its kind. "Need more" at the end means the row is cut short. */
static struct outcome run_tcp_stream(const struct corpus_row *r, enum avl_scan_mode mode)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct outcome o = {0};
    size_t off = 0;
    while (off < r->len) {
        struct avl_frame f;
        int rc = avl_scan(r->bytes + off, r->len - off, mode, 0, &f);
        if (rc == AVL_NEED_MORE) {
            if (f.bytes <= r->len - off)
                fail_msg("%s: need_more for %u bytes with %zu there", r->name, f.bytes,
                         r->len - off);
            o.err = AVL_E_TRUNCATED;
            return o;
        }
        if (rc < 0) {
            o.err = rc;
            return o;
        }
        assert_int_equal(rc, f.bytes);
        assert_true((size_t)rc <= r->len - off);
        const uint8_t *p = r->bytes + off;
        struct avl_packet pkt;
        uint8_t codec;
        uint64_t imei;
        int drc = 0;
        switch (f.kind) {
        case AVL_FRAME_PING:
            assert_int_equal(rc, 1);
            break;
        case AVL_FRAME_IMEI:
            drc = avl_decode_imei(p, (size_t)rc, &imei);
            mode = AVL_SCAN_DATA;
            break;
        case AVL_FRAME_AVL:
            drc = avl_decode_tcp(p, (size_t)rc, &pkt, recs);
            break;
        case AVL_FRAME_GPRS:
            drc = avl_decode_gprs(p, (size_t)rc, &codec, msgs);
            break;
        default:
            fail_msg("%s: frame kind %d", r->name, f.kind);
        }
        if (o.frames_len < FRAMES_MAX)
            o.frames[o.frames_len++] = f;
        if (drc < 0) {
            o.err = drc;
            return o;
        }
        off += (size_t)rc;
    }
    return o;
}

static struct outcome run_row(const struct corpus_row *r)
{
    if (is_tcp(r))
        return run_tcp_stream(r, is_framing_kind(r) ? AVL_SCAN_HANDSHAKE : AVL_SCAN_DATA);
    struct outcome o = {0};
    if (strcmp(r->kind, "ack") == 0) {
        uint16_t packet_id;
        uint8_t avl_id, n;
        o.err = avl_decode_udp_ack(r->bytes, r->len, &packet_id, &avl_id, &n);
    } else {
        static struct avl_record recs[AVL_RECORDS_MAX];
        struct avl_packet pkt;
        o.err = avl_decode_udp(r->bytes, r->len, &pkt, recs);
    }
    return o;
}

/* ---------------------------------------------------------------------------------------------
 * The reference decoder's first record / first message
 * ------------------------------------------------------------------------------------------- */

/* Finds "key=value" in the space-separated first_record text; false if absent. */
static bool first_field(const char *text, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *s = text; (s = strstr(s, key)); s++) {
        if ((s != text && s[-1] != ' ') || s[klen] != '=')
            continue;
        const char *v = s + klen + 1;
        size_t n = strcspn(v, " ");
        if (n >= cap)
            n = cap - 1;
        memcpy(out, v, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

static long long first_int(const struct corpus_row *r, const char *key)
{
    char buf[64], *end;
    if (!first_field(r->d->first_record, key, buf, sizeof buf))
        fail_msg("%s: derived first_record has no %s=", r->name, key);
    long long n = strtoll(buf, &end, 0);
    if (*end)
        fail_msg("%s: derived %s=%s is not a number", r->name, key, buf);
    return n;
}

static long long first_e7(const struct corpus_row *r, const char *key)
{
    char buf[64], *end;
    if (!first_field(r->d->first_record, key, buf, sizeof buf))
        fail_msg("%s: derived first_record has no %s=", r->name, key);
    double deg = strtod(buf, &end);
    if (*end)
        fail_msg("%s: derived %s=%s is not a number", r->name, key, buf);
    return tu_round_i64(deg * 1e7);
}

static void check_first_record(const struct corpus_row *r, const struct avl_record *rec)
{
    char t[64];
    int64_t ts;
    if (!first_field(r->d->first_record, "t", t, sizeof t) || !tu_iso8601_ms(t, strlen(t), &ts))
        fail_msg("%s: derived first_record has no ISO time t=", r->name);
    if (rec->ts_ms != (uint64_t)ts)
        fail_msg("%s: first record ts %llu, reference %s", r->name, (unsigned long long)rec->ts_ms,
                 t);
    assert_int_equal(rec->priority, first_int(r, "prio"));
    if (rec->lat_e7 != first_e7(r, "lat") || rec->lon_e7 != first_e7(r, "lon"))
        fail_msg("%s: first record lat/lon %d/%d, reference %lld/%lld", r->name, rec->lat_e7,
                 rec->lon_e7, first_e7(r, "lat"), first_e7(r, "lon"));
    assert_int_equal(rec->altitude_m, first_int(r, "alt"));
    assert_int_equal(rec->angle_deg, first_int(r, "ang"));
    assert_int_equal(rec->satellites, first_int(r, "sats"));
    assert_int_equal(rec->speed_kmh, first_int(r, "spd"));
    assert_int_equal(rec->event_id, first_int(r, "event"));
    assert_int_equal(rec->io_total, first_int(r, "n_io"));
    char gen[16];
    if (first_field(r->d->first_record, "gen", gen, sizeof gen)) {
        assert_int_equal(rec->codec, AVL_CODEC_16);
        assert_int_equal(rec->generation, first_int(r, "gen"));
    } else {
        assert_int_not_equal(rec->codec, AVL_CODEC_16);
        assert_int_equal(rec->generation, AVL_GENERATION_NONE);
    }
}

/* Decodes the Python repr of the first message's payload (payload='...'), which the reference
 * wrote as text: \xNN, \n, \r, \t, \\ and \' escapes, and Latin-1 characters as UTF-8. The
 * reference shortens long payloads, so the result is a prefix. Returns its length. */
static size_t repr_payload(const struct corpus_row *r, uint8_t *out, size_t cap)
{
    const char *s = strstr(r->d->first_record, "payload=");
    if (!s)
        fail_msg("%s: derived first_record has no payload=", r->name);
    s += strlen("payload=");
    char quote = *s++;
    if (quote != '\'' && quote != '"')
        fail_msg("%s: payload is not quoted", r->name);
    const char *end = s + strlen(s);
    if (end > s && end[-1] == quote)
        end--;
    size_t n = 0;
    while (s < end && n < cap) {
        unsigned char c = (unsigned char)*s++;
        if (c == '\\' && s < end) {
            char e = *s++;
            unsigned v;
            switch (e) {
            case 'n':
                out[n++] = '\n';
                break;
            case 'r':
                out[n++] = '\r';
                break;
            case 't':
                out[n++] = '\t';
                break;
            case 'x':
                if (end - s < 2 || sscanf(s, "%2x", &v) != 1)
                    fail_msg("%s: bad \\x escape in payload", r->name);
                out[n++] = (uint8_t)v;
                s += 2;
                break;
            default:
                out[n++] = (uint8_t)e;
                break;
            }
        } else if ((c & 0xE0) == 0xC0 && s < end) {
            /* A two-byte UTF-8 sequence: code points 0x80..0x7FF; Latin-1 stops at 0xFF. */
            unsigned cp = (unsigned)(c & 0x1F) << 6 | ((unsigned char)*s++ & 0x3F);
            if (cp > 0xFF)
                fail_msg("%s: payload character U+%04X is not Latin-1", r->name, cp);
            out[n++] = (uint8_t)cp;
        } else {
            out[n++] = c;
        }
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Valid rows
 * ------------------------------------------------------------------------------------------- */

static void check_reencoded(const struct corpus_row *r, const uint8_t *out, int rc)
{
    if (rc != (int)r->len)
        fail_msg("%s: re-encoding gave %d (%s), want %zu bytes", r->name, rc, avl_strerror(rc),
                 r->len);
    if (memcmp(out, r->bytes, r->len) != 0)
        fail_msg("%s: re-encoded bytes differ", r->name);
}

static void check_valid_avl(const struct corpus_row *r, const struct outcome *o)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_record_src src[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    int rc;
    if (is_tcp(r)) {
        assert_int_equal(o->frames_len, 1);
        assert_int_equal(o->frames[0].kind, AVL_FRAME_AVL);
        assert_int_equal(o->frames[0].bytes, r->len);
        rc = avl_decode_tcp(r->bytes, r->len, &pkt, recs);
    } else {
        rc = avl_decode_udp(r->bytes, r->len, &pkt, recs);
    }
    if (rc != 0)
        fail_msg("%s: %s", r->name, avl_strerror(rc));
    assert_int_equal(pkt.frame_bytes, r->len);
    assert_int_equal(pkt.codec, strtoul(r->codec_id, NULL, 16));
    long want_records = r->d->records >= 0 ? r->d->records : 0;
    if (pkt.records_len != want_records || pkt.records_len != r->d->n1)
        fail_msg("%s: %u records, reference %ld (n1 %ld)", r->name, pkt.records_len, want_records,
                 r->d->n1);
    if (pkt.records_len > 0)
        check_first_record(r, &recs[0]);

    /* Rebuild the packet from what was decoded. */
    struct avl_io_elem *elems = tu_record_srcs(recs, pkt.records_len, src);
    uint8_t *out = malloc(r->len + 64);
    if (is_tcp(r)) {
        check_reencoded(r, out, avl_encode_tcp(out, r->len + 64, pkt.codec, src, pkt.records_len));
    } else if (((size_t)r->bytes[6] << 8 | r->bytes[7]) == AVL_IMEI_CANONICAL_DIGITS &&
               pkt.udp_not_usable == 1) {
        /* The encoder writes the IMEI in canonical 15 digits and a not-usable byte of 1. */
        check_reencoded(r, out,
                        avl_encode_udp(out, r->len + 64, pkt.udp_packet_id, pkt.udp_avl_packet_id,
                                       pkt.imei, pkt.codec, src, pkt.records_len));
    }
    free(out);
    free(elems);
}

static void check_valid_gprs(const struct corpus_row *r, const struct outcome *o)
{
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    assert_true(is_tcp(r));
    assert_int_equal(o->frames_len, 1);
    assert_int_equal(o->frames[0].kind, AVL_FRAME_GPRS);
    assert_int_equal(o->frames[0].bytes, r->len);
    uint8_t codec = 0;
    int n = avl_decode_gprs(r->bytes, r->len, &codec, msgs);
    if (n < 0)
        fail_msg("%s: %s", r->name, avl_strerror(n));
    assert_int_equal(codec, strtoul(r->codec_id, NULL, 16));
    assert_int_equal(n, r->d->n1);
    /* The first message as the reference saw it. */
    assert_int_equal(msgs[0].type, first_int(r, "type"));
    assert_int_equal(msgs[0].size, first_int(r, "size"));
    uint8_t payload[512];
    size_t plen = repr_payload(r, payload, sizeof payload);
    assert_true(plen > 0 && plen <= msgs[0].size);
    if (memcmp(msgs[0].payload, payload, plen) != 0)
        fail_msg("%s: first message payload differs from the reference", r->name);
    if (strcmp(r->kind, "camera") == 0)
        assert_int_equal(msgs[0].type, AVL_GPRS_CAMERA);
    else if (strcmp(r->kind, "command") == 0)
        assert_int_equal(msgs[0].type, AVL_GPRS_COMMAND);

    struct avl_gprs_msg in[AVL_GPRS_MSGS_MAX];
    memset(in, 0, (size_t)n * sizeof in[0]);
    for (int i = 0; i < n; i++) {
        in[i].type = msgs[i].type;
        in[i].ts_s = msgs[i].ts_s;
        in[i].imei = msgs[i].imei;
        in[i].text = msgs[i].text;
        in[i].text_len = msgs[i].text_len;
    }
    uint8_t *out = malloc(r->len + 64);
    check_reencoded(r, out, avl_encode_gprs(out, r->len + 64, codec, in, (size_t)n));
    free(out);
}

/* The IMEI the handshake's ASCII digits spell. */
static uint64_t handshake_digits(const struct corpus_row *r, size_t at)
{
    size_t n = (size_t)r->bytes[at] << 8 | r->bytes[at + 1];
    assert_int_equal(r->len, at + 2 + n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(r->bytes[at + 2 + i] - '0');
    return v;
}

static void check_valid_framing(const struct corpus_row *r, const struct outcome *o)
{
    uint64_t imei = 0;
    if (strcmp(r->kind, "ping") == 0) {
        assert_int_equal(o->frames_len, 1);
        assert_int_equal(o->frames[0].kind, AVL_FRAME_PING);
        assert_int_equal(o->frames[0].bytes, 1);
        /* A keep-alive is also fine after the handshake. */
        struct avl_frame f;
        assert_int_equal(avl_scan(r->bytes, r->len, AVL_SCAN_DATA, 0, &f), 1);
        assert_int_equal(f.kind, AVL_FRAME_PING);
        return;
    }
    size_t at = 0;
    if (strcmp(r->kind, "ping+handshake") == 0) {
        assert_int_equal(o->frames_len, 2);
        assert_int_equal(o->frames[0].kind, AVL_FRAME_PING);
        assert_int_equal(o->frames[0].bytes, 1);
        at = 1;
    } else {
        assert_int_equal(o->frames_len, 1);
    }
    const struct avl_frame *hs = &o->frames[o->frames_len - 1];
    assert_int_equal(hs->kind, AVL_FRAME_IMEI);
    assert_int_equal(hs->bytes, r->len - at);
    assert_int_equal(avl_decode_imei(r->bytes + at, r->len - at, &imei), 0);
    assert_int_equal(imei, handshake_digits(r, at));
}

static void check_valid_ack(const struct corpus_row *r)
{
    uint16_t packet_id = 0;
    uint8_t avl_id = 0, n = 0, out[AVL_UDP_ACK_BYTES];
    assert_int_equal(avl_decode_udp_ack(r->bytes, r->len, &packet_id, &avl_id, &n), 0);
    assert_int_equal(avl_encode_udp_ack(out, packet_id, avl_id, n), AVL_UDP_ACK_BYTES);
    assert_int_equal(r->len, AVL_UDP_ACK_BYTES);
    assert_memory_equal(out, r->bytes, AVL_UDP_ACK_BYTES);
    /* The source test: a command-response decoder must refuse these 7 bytes. */
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    uint8_t codec;
    assert_true(avl_decode_gprs(r->bytes, r->len, &codec, msgs) < 0);
}

static void check_valid_row(const struct corpus_row *r)
{
    struct outcome o = run_row(r);
    if (o.err != 0)
        fail_msg("%s: valid row refused: %s (%d)", r->name, avl_strerror(o.err), o.err);
    if (strcmp(r->kind, "avl") == 0)
        check_valid_avl(r, &o);
    else if (str_in(r->kind, gprs_kinds))
        check_valid_gprs(r, &o);
    else if (strcmp(r->kind, "ack") == 0)
        check_valid_ack(r);
    else
        check_valid_framing(r, &o);
}

/* ---------------------------------------------------------------------------------------------
 * Invalid rows and crc-input rows
 * ------------------------------------------------------------------------------------------- */

static void check_invalid_row(const struct corpus_row *r)
{
    char want[512];
    describe_allowed(r->allowed, want, sizeof want);
    if (r->allowed == 0)
        fail_msg("%s: invalid, but no cause is listed (note \"%s\")", r->name, r->d->note);
    struct outcome o = run_row(r);
    if (o.err >= 0)
        fail_msg("%s: invalid row decoded without error; want one of %s", r->name, want);
    if (o.err < AVL_E_ERR_MIN || o.err == AVL_NEED_MORE)
        fail_msg("%s: result %d is not a named error", r->name, o.err);
    if (!(r->allowed & ERR_BIT(o.err)))
        fail_msg("%s: got %s, want one of %s", r->name, avl_strerror(o.err), want);
    if (getenv("AVLGATE_TEST_VERBOSE"))
        printf("%s: %s (allowed %s)\n", r->name, avl_strerror(o.err), want);
    /* Codec 7 (legacy GH3000) is refused by name, whatever else is wrong with it. */
    uint8_t codec;
    if (codec_byte(r, &codec) && codec == 0x07 && !tcp_preamble_bad(r))
        assert_int_equal(o.err, AVL_E_CODEC_UNKNOWN);
    /* A TCP frame whose length is consistent but whose CRC is wrong is a CRC mismatch. */
    if (is_tcp(r) && r->d->crc_ok == TRI_FALSE && r->d->length_field_ok == TRI_TRUE &&
        !tcp_preamble_bad(r) && codec_byte(r, &codec) && codec_known(codec))
        assert_int_equal(o.err, AVL_E_CRC_MISMATCH);
}

static void check_crc_input_row(const struct corpus_row *r)
{
    const char *eq = strstr(r->expect, "= 0x");
    if (!eq)
        fail_msg("%s: expect names no CRC", r->name);
    unsigned long want = strtoul(eq + 4, NULL, 16);
    assert_int_equal(avl_crc16(0, r->bytes, r->len), want);
}

static void test_row(void **state)
{
    const struct corpus_row *r = *state;
    switch (r->cls) {
    case ROW_VALID:
        check_valid_row(r);
        break;
    case ROW_INVALID:
        check_invalid_row(r);
        break;
    case ROW_CRC_INPUT:
        check_crc_input_row(r);
        break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * The set as a whole
 * ------------------------------------------------------------------------------------------- */

static void test_join(void **state)
{
    (void)state;
    assert_int_equal(join_failures, 0);
    for (size_t i = 0; i < derived_len; i++)
        if (!derived[i].used)
            fail_msg("derived row %s:%s %s %s matches no corpus row", derived[i].file,
                     derived[i].line, derived[i].transport, derived[i].kind);
    assert_int_equal(rows_len, derived_len);
}

static void test_summary(void **state)
{
    (void)state;
    size_t valid = 0, invalid = 0, crc = 0;
    for (size_t i = 0; i < rows_len; i++) {
        valid += rows[i].cls == ROW_VALID;
        invalid += rows[i].cls == ROW_INVALID;
        crc += rows[i].cls == ROW_CRC_INPUT;
    }
    printf("corpus: %zu rows: valid %zu, invalid %zu, crc-input %zu\n", rows_len, valid, invalid,
           crc);
    assert_true(rows_len > 150);
    assert_true(valid > 0);
    assert_true(invalid > 0);
    assert_int_equal(valid + invalid + crc, rows_len);
    /* TELTONIKA.md / README.txt name these Traccar rows as failing strict validation. */
    static const char *const traccar_bad[] = {"61",  "79",  "85",  "103", "118", "127",
                                              "139", "159", "162", "178", "181", NULL};
    for (size_t i = 0; i < rows_len; i++)
        if (strcmp(rows[i].file, "traccar_teltonika.tsv") == 0 &&
            str_in(rows[i].line, traccar_bad) && rows[i].cls != ROW_INVALID)
            fail_msg("%s: README says it fails strict validation, rules say valid", rows[i].name);
}

int main(void)
{
    load_corpus();
    for (size_t i = 0; i < rows_len; i++) {
        struct corpus_row *r = &rows[i];
        if (!r->d)
            continue;
        r->cls = classify(r);
        if (r->cls == ROW_INVALID)
            r->allowed = allowed_errors(r);
        const char *cls = r->cls == ROW_VALID ? "valid" : r->cls == ROW_INVALID ? "invalid" : "crc";
        size_t at = strlen(r->name);
        snprintf(r->name + at, sizeof r->name - at, " [%s]", cls);
    }
    struct CMUnitTest *tests = calloc(rows_len + 2, sizeof *tests);
    size_t k = 0;
    tests[k++] = (struct CMUnitTest){"join", test_join, NULL, NULL, NULL};
    for (size_t i = 0; i < rows_len; i++)
        if (rows[i].d)
            tests[k++] = (struct CMUnitTest){rows[i].name, test_row, NULL, NULL, &rows[i]};
    tests[k++] = (struct CMUnitTest){"summary", test_summary, NULL, NULL, NULL};
    int failed = _cmocka_run_group_tests("test_corpus", tests, k, NULL, NULL);
    free(tests);
    for (size_t i = 0; i < rows_len; i++)
        free(rows[i].bytes);
    for (size_t i = 0; i < texts_len; i++)
        free(texts[i]);
    for (size_t i = 0; i < FILES_MAX && file_names[i]; i++)
        free(file_names[i]);
    return failed;
}
