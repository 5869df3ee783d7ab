/* decode.c — owns `avlgate decode`, the operator's answer to "what did this device send?":
 * option parsing, the input files in order, and the JSON object written for every frame or
 * error. The wire format is the codec's business (codec/avl.h); this file only
 * chooses which codec call a line needs and prints what it returns. One object per frame,
 * in input order, each tagged with its 1-based physical line; a line that fails stops at its
 * first error. Single-threaded. */
#include "gateway/cli/decode.h"

#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/cli/hexline.h"

/* The frame arrays the codec fills, sized as avl.h asks; one per decode_stream call. */
struct decode_scratch {
    struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
};

/* ------------------------------------------------------------------------------------------
 * Objects
 * ---------------------------------------------------------------------------------------- */

static void begin(struct json_out *j, const char *name, unsigned long line,
                  const struct decode_opts *o, bool ok)
{
    json_object_begin(j);
    if (o->show_file) {
        size_t n = strlen(name);
        if (json_utf8_valid((const uint8_t *)name, n)) {
            json_key(j, "file");
            json_strn(j, name, n);
        } else {
            json_key(j, "file_hex");
            json_hex(j, (const uint8_t *)name, n);
        }
    }
    json_key(j, "line");
    json_u64(j, line);
    json_key(j, "ok");
    json_bool(j, ok);
}

static void end(struct json_out *j, struct decode_stats *st, bool ok)
{
    json_object_end(j);
    json_newline(j);
    st->objects++;
    if (!ok)
        st->failed++;
}

static void put_error(struct json_out *j, const char *name, unsigned long line,
                      const struct decode_opts *o, struct decode_stats *st, const char *error)
{
    begin(j, name, line, o, false);
    json_key(j, "error");
    json_str(j, error);
    end(j, st, false);
}

static void put_imei(struct json_out *j, uint64_t imei)
{
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    avl_imei_format(imei, digits);
    json_str(j, digits);
}

static void put_record(struct json_out *j, const struct avl_record *r)
{
    json_object_begin(j);
    json_key(j, "ts_ms");
    json_u64(j, r->ts_ms);
    json_key(j, "priority");
    json_u64(j, r->priority);
    json_key(j, "lon_e7");
    json_i64(j, r->lon_e7);
    json_key(j, "lat_e7");
    json_i64(j, r->lat_e7);
    json_key(j, "altitude");
    json_i64(j, r->altitude_m);
    json_key(j, "angle");
    json_u64(j, r->angle_deg);
    json_key(j, "satellites");
    json_u64(j, r->satellites);
    json_key(j, "speed");
    json_u64(j, r->speed_kmh);
    json_key(j, "event_id");
    json_u64(j, r->event_id);
    json_key(j, "generation");
    if (r->codec == AVL_CODEC_16)
        json_u64(j, r->generation);
    else
        json_null(j);

    /* Wire order, so a duplicated id shows up twice as the device sent it. */
    json_key(j, "io");
    json_object_begin(j);
    struct avl_io_iter it;
    struct avl_io io;
    avl_io_iter_init(&it, r);
    while (avl_io_next(&it, &io)) {
        json_key_u64(j, io.id);
        if (io.nx)
            json_hex(j, io.bytes, io.len);
        else
            json_u64(j, io.value);
    }
    json_object_end(j);
    json_object_end(j);
}

static void put_records(struct json_out *j, const struct avl_record *recs, size_t n)
{
    json_key(j, "records");
    json_array_begin(j);
    for (size_t i = 0; i < n; i++)
        put_record(j, &recs[i]);
    json_array_end(j);
}

static const char *gprs_kind(uint8_t type)
{
    switch (type) {
    case AVL_GPRS_COMMAND:
        return "command";
    case AVL_GPRS_RESPONSE:
    case AVL_GPRS_FORWARD:
        return "response";
    case AVL_GPRS_CAMERA:
        return "camera";
    case AVL_GPRS_NACK:
        return "nack";
    default:
        return "unknown"; /* the decoder rejects other types; kept for safety */
    }
}

/* The fields of one GPRS message after its "kind": ts, imei, then text or hex. */
static void put_gprs_fields(struct json_out *j, uint8_t codec, const struct avl_gprs_msg *m)
{
    if (codec == AVL_CODEC_13 || codec == AVL_CODEC_15) {
        json_key(j, "ts");
        json_u64(j, m->ts_s);
    }
    if (codec == AVL_CODEC_14 || codec == AVL_CODEC_15) {
        json_key(j, "imei");
        put_imei(j, m->imei);
    }
    /* Responses are usually ASCII, but camera data and some device answers are binary. */
    if (json_utf8_valid(m->text, m->text_len)) {
        json_key(j, "text");
        json_strn(j, (const char *)m->text, m->text_len);
    } else {
        json_key(j, "hex");
        json_hex(j, m->text, m->text_len);
    }
}

static void put_gprs(struct json_out *j, uint8_t codec, const struct avl_gprs_msg *msgs, size_t n)
{
    if (n == 1) {
        json_key(j, "kind");
        json_str(j, gprs_kind(msgs[0].type));
        json_key(j, "codec");
        json_str(j, avl_codec_name(codec));
        put_gprs_fields(j, codec, &msgs[0]);
        return;
    }
    json_key(j, "kind");
    json_str(j, "gprs");
    json_key(j, "codec");
    json_str(j, avl_codec_name(codec));
    json_key(j, "messages");
    json_array_begin(j);
    for (size_t i = 0; i < n; i++) {
        json_object_begin(j);
        json_key(j, "kind");
        json_str(j, gprs_kind(msgs[i].type));
        put_gprs_fields(j, codec, &msgs[i]);
        json_object_end(j);
    }
    json_array_end(j);
}

/* ------------------------------------------------------------------------------------------
 * One line
 * ---------------------------------------------------------------------------------------- */

/* One TCP frame of len bytes, as avl_scan found it: writes its object and returns 0, or
 * returns the codec's error and writes nothing. */
static int decode_frame(struct json_out *j, const char *name, unsigned long line, const uint8_t *p,
                        size_t len, const struct avl_frame *f, const struct decode_opts *o,
                        struct decode_stats *st, struct decode_scratch *s)
{
    switch (f->kind) {
    case AVL_FRAME_PING:
        begin(j, name, line, o, true);
        json_key(j, "kind");
        json_str(j, "ping");
        end(j, st, true);
        return 0;
    case AVL_FRAME_IMEI: {
        uint64_t imei;
        int err = avl_decode_imei(p, len, &imei);
        if (err < 0)
            return err;
        begin(j, name, line, o, true);
        json_key(j, "kind");
        json_str(j, "imei");
        json_key(j, "imei");
        put_imei(j, imei);
        end(j, st, true);
        return 0;
    }
    case AVL_FRAME_AVL: {
        struct avl_packet pkt;
        int err = avl_decode_tcp(p, len, &pkt, s->recs);
        if (err < 0)
            return err;
        begin(j, name, line, o, true);
        json_key(j, "kind");
        json_str(j, "avl");
        json_key(j, "codec");
        json_str(j, avl_codec_name(pkt.codec));
        put_records(j, s->recs, pkt.records_len);
        end(j, st, true);
        return 0;
    }
    case AVL_FRAME_GPRS: {
        uint8_t codec;
        int n = avl_decode_gprs(p, len, &codec, s->msgs);
        if (n < 0)
            return n;
        begin(j, name, line, o, true);
        put_gprs(j, codec, s->msgs, (size_t)n);
        end(j, st, true);
        return 0;
    }
    }
    assert(!"avl_scan returned an unknown frame kind");
    return AVL_E_CODEC_UNKNOWN;
}

static unsigned decode_tcp_line(struct json_out *j, const char *name, unsigned long line,
                                const uint8_t *p, size_t len, const struct decode_opts *o,
                                struct decode_stats *st, struct decode_scratch *s)
{
    enum avl_scan_mode mode = AVL_SCAN_ANY;
    size_t off = 0;
    while (off < len) {
        struct avl_frame f;
        int r = avl_scan(p + off, len - off, mode, o->frame_bytes_max, &f);
        if (r == AVL_NEED_MORE)
            r = AVL_E_TRUNCATED; /* the line is all there is: nothing more will come */
        if (r > 0) {
            size_t n = (size_t)r;
            assert(n <= len - off);
            r = decode_frame(j, name, line, p + off, n, &f, o, st, s);
            if (r == 0) {
                /* A connection holds one handshake, before its data: once a frame other
                 * than a keep-alive is seen, only keep-alives and data frames may follow. */
                if (f.kind != AVL_FRAME_PING)
                    mode = AVL_SCAN_DATA;
                off += n;
                continue;
            }
        }
        assert(r < 0);
        put_error(j, name, line, o, st, avl_strerror(r));
        return 1;
    }
    return 0;
}

static unsigned decode_udp_line(struct json_out *j, const char *name, unsigned long line,
                                const uint8_t *p, size_t len, const struct decode_opts *o,
                                struct decode_stats *st, struct decode_scratch *s)
{
    struct avl_packet pkt;
    int err = avl_decode_udp(p, len, &pkt, s->recs);
    if (err == 0) {
        begin(j, name, line, o, true);
        json_key(j, "kind");
        json_str(j, "avl");
        json_key(j, "codec");
        json_str(j, avl_codec_name(pkt.codec));
        json_key(j, "imei");
        put_imei(j, pkt.imei);
        json_key(j, "packet_id");
        json_u64(j, pkt.udp_packet_id);
        json_key(j, "avl_packet_id");
        json_u64(j, pkt.udp_avl_packet_id);
        put_records(j, s->recs, pkt.records_len);
        end(j, st, true);
        return 0;
    }

    /* The server's reply is 7 bytes, too short to be a datagram from a device, so a capture
     * of both directions decodes without a flag. */
    uint16_t packet_id;
    uint8_t avl_packet_id, records;
    if (len == AVL_UDP_ACK_BYTES &&
        avl_decode_udp_ack(p, len, &packet_id, &avl_packet_id, &records) == 0) {
        begin(j, name, line, o, true);
        json_key(j, "kind");
        json_str(j, "udp_ack");
        json_key(j, "packet_id");
        json_u64(j, packet_id);
        json_key(j, "avl_packet_id");
        json_u64(j, avl_packet_id);
        json_key(j, "records");
        json_u64(j, records);
        end(j, st, true);
        return 0;
    }
    put_error(j, name, line, o, st, avl_strerror(err));
    return 1;
}

static unsigned decode_line_with(struct json_out *j, const char *name, unsigned long line,
                                 const uint8_t *p, size_t len, const struct decode_opts *o,
                                 struct decode_stats *st, struct decode_scratch *s)
{
    st->packets++;
    if (o->udp)
        return decode_udp_line(j, name, line, p, len, o, st, s);
    return decode_tcp_line(j, name, line, p, len, o, st, s);
}

unsigned decode_bytes(struct json_out *j, const char *name, unsigned long line, const uint8_t *p,
                      size_t len, const struct decode_opts *o, struct decode_stats *st)
{
    struct decode_scratch s; /* 22 KiB: fine on a CLI thread's stack */
    return decode_line_with(j, name, line, p, len, o, st, &s);
}

/* ------------------------------------------------------------------------------------------
 * Streams and files
 * ---------------------------------------------------------------------------------------- */

int decode_stream(FILE *in, const char *name, FILE *out, const struct decode_opts *o,
                  struct decode_stats *st)
{
    struct decode_scratch *s = malloc(sizeof *s);
    struct json_out *j = malloc(sizeof *j);
    if (!s || !j) {
        free(s);
        free(j);
        return -ENOMEM;
    }
    json_init(j, out);
    struct hexline_reader r;
    hexline_init(&r, in, DECODE_LINE_BYTES_MAX);
    /* An operator pasting lines wants each answer at once; a file wants big writes. */
    int fd = fileno(in);
    bool interactive = fd >= 0 && isatty(fd);

    int err = 0;
    for (;;) {
        int kind = hexline_next(&r);
        if (kind < 0) {
            err = kind;
            break;
        }
        if (kind == HEXLINE_EOF)
            break;
        switch ((enum hexline_kind)kind) {
        case HEXLINE_SKIP:
            continue;
        case HEXLINE_BYTES:
            decode_line_with(j, name, r.line, r.bytes, r.bytes_len, o, st, s);
            break;
        case HEXLINE_BAD_HEX:
            st->packets++;
            put_error(j, name, r.line, o, st, "bad_hex");
            break;
        case HEXLINE_TOO_LONG:
            st->packets++;
            put_error(j, name, r.line, o, st, "line_too_long");
            break;
        case HEXLINE_EOF:
            break;
        }
        if (interactive && json_flush(j) == 0 && fflush(out) != 0) {
            err = errno ? -errno : -EIO;
            break;
        }
        if (j->err < 0)
            break; /* nobody reads the output any more */
    }
    int werr = json_flush(j);
    if (err == 0 && werr < 0)
        err = werr;
    hexline_free(&r);
    free(j);
    free(s);
    return err;
}

void decode_usage(FILE *f)
{
    fprintf(f,
            "usage: avlgate decode [--udp] [--frame-bytes-max N] [FILE...]\n"
            "\n"
            "Decodes Teltonika packets given as hex, one per line, from the FILEs in order\n"
            "or from standard input (none, or \"-\"), and prints one JSON object per frame.\n"
            "Whitespace and a leading 0x are ignored; blank lines and lines starting with #\n"
            "are skipped. A TCP line may hold several frames (0xFF keep-alives, the IMEI\n"
            "handshake, data frames), as a connection sends them.\n"
            "\n"
            "  --udp                each line is one UDP datagram (or a 7-byte server ACK)\n"
            "  --frame-bytes-max N  largest TCP frame accepted, %u..%u (default %u)\n"
            "  -h, --help           this text\n"
            "\n"
            "Exit status: 0 every packet decoded, 1 some did not (\"ok\":false),\n"
            "2 usage error or unreadable input.\n",
            (unsigned)(AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN),
            (unsigned)AVL_FRAME_BYTES_MAX_CEILING, (unsigned)AVL_FRAME_BYTES_MAX_DEFAULT);
}

static bool parse_frame_bytes_max(const char *s, uint32_t *out)
{
    if (s[0] < '0' || s[0] > '9')
        return false; /* strtoul would take a sign or leading blanks */
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    if (v < AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN || v > AVL_FRAME_BYTES_MAX_CEILING)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* Decodes one named input; returns 0, or 2 after a message on err. */
static int decode_input(const char *path, FILE *in, FILE *out, FILE *err,
                        const struct decode_opts *o, struct decode_stats *st)
{
    bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "-" : path;
    FILE *f = in;
    if (!is_stdin) {
        f = fopen(path, "r");
        if (!f) {
            fprintf(err, "avlgate decode: cannot open %s: %s\n", path, strerror(errno));
            return 2;
        }
    }
    int rc = decode_stream(f, name, out, o, st);
    if (rc < 0) {
        if (ferror(out))
            fprintf(err, "avlgate decode: writing output: %s\n", strerror(-rc));
        else
            fprintf(err, "avlgate decode: reading %s: %s\n", is_stdin ? "standard input" : path,
                    strerror(-rc));
    }
    if (!is_stdin)
        fclose(f);
    return rc < 0 ? 2 : 0;
}

int decode_main(int argc, char **argv, FILE *in, FILE *out, FILE *err)
{
    static const struct option long_opts[] = {
        {"udp", no_argument, NULL, 'u'},
        {"frame-bytes-max", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct decode_opts o = {0};

    optind = 0; /* glibc: reinitialise, so decode_main may run more than once (tests) */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":h", long_opts, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 'u':
            o.udp = true;
            break;
        case 'm':
            if (!parse_frame_bytes_max(optarg, &o.frame_bytes_max)) {
                fprintf(err,
                        "avlgate decode: --frame-bytes-max: '%s' is not a whole number "
                        "from %u to %u\n",
                        optarg, (unsigned)(AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN),
                        (unsigned)AVL_FRAME_BYTES_MAX_CEILING);
                return 2;
            }
            break;
        case 'h':
            decode_usage(out);
            return 0;
        case ':':
            fprintf(err, "avlgate decode: %s needs a value\n", argv[optind - 1]);
            decode_usage(err);
            return 2;
        default:
            if (optopt != 0)
                fprintf(err, "avlgate decode: unknown option '-%c'\n", optopt);
            else
                fprintf(err, "avlgate decode: unknown option '%s'\n", argv[optind - 1]);
            decode_usage(err);
            return 2;
        }
    }

    struct decode_stats st = {0};
    int status = 0;
    int files = argc - optind;
    o.show_file = files > 1;
    if (files == 0) {
        status = decode_input("-", in, out, err, &o, &st);
    } else {
        for (int i = optind; i < argc && !ferror(out); i++) {
            if (decode_input(argv[i], in, out, err, &o, &st) != 0)
                status = 2;
        }
    }
    if (fflush(out) != 0) {
        fprintf(err, "avlgate decode: writing output: %s\n", strerror(errno));
        return 2;
    }
    if (status != 0)
        return status;
    return st.failed > 0 ? 1 : 0;
}
