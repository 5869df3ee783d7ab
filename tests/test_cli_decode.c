/* test_cli_decode.c — `avlgate decode` end to end in memory: hex text in (fmemopen), JSON
 * lines out (open_memstream), compared byte for byte with the objects written by hand from the
 * decoded values in TELTONIKA.md §9; every output line must parse as JSON. Also the pieces:
 * the hex line reader (line numbers, bounds), the JSON writer (escaping, numbers) and the
 * UTF-8 validator, and decode_main's exit statuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/cli/decode.h"
#include "gateway/cli/hexline.h"
#include "gateway/cli/json.h"
#include "codec/avl.h"
#include "tests/support/testutil.h"

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

/* Every line of out must be one JSON object, in valid UTF-8; returns the line count. */
static size_t check_json_lines(const char *out, size_t len)
{
    size_t lines = 0;
    const char *p = out, *end = out + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl); /* every object ends its line */
        size_t n = (size_t)(nl - p);
        assert_true(json_utf8_valid((const uint8_t *)p, n));
        char err[200] = "";
        struct tu_json *v = tu_json_parse(p, n, err, sizeof err);
        if (!v)
            fail_msg("not JSON (%s): %.*s", err, (int)(n > 300 ? 300 : n), p);
        assert_int_equal(v->type, TU_JSON_OBJECT);
        assert_non_null(tu_json_get(v, "line"));
        assert_non_null(tu_json_get(v, "ok"));
        tu_json_free(v);
        lines++;
        p = nl + 1;
    }
    return lines;
}

/* Runs decode_stream over text; returns the output (free() it). */
static char *run_stream(const char *text, size_t text_len, const struct decode_opts *o,
                        struct decode_stats *st, size_t *out_len)
{
    if (text_len == 0) { /* fmemopen may refuse a size of 0; a blank line is the same */
        text = "\n";
        text_len = 1;
    }
    FILE *in = fmemopen((void *)(uintptr_t)text, text_len, "r");
    assert_non_null(in);
    char *out = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&out, &n);
    assert_non_null(mem);
    assert_int_equal(decode_stream(in, "input.hex", mem, o, st), 0);
    assert_int_equal(fclose(mem), 0);
    fclose(in);
    *out_len = n;
    return out;
}

static void assert_lines_equal(const char *name, const char *got, const char *want)
{
    if (strcmp(got, want) == 0)
        return;
    /* Point at the first difference: the objects are long. */
    size_t i = 0;
    while (got[i] && got[i] == want[i])
        i++;
    size_t from = i > 60 ? i - 60 : 0;
    fail_msg("%s: output differs at byte %zu\n  got:  ...%.120s\n  want: ...%.120s", name, i,
             got + from, want + from);
}

/* ------------------------------------------------------------------------------------------
 * The table: input text -> exact output
 * ---------------------------------------------------------------------------------------- */

struct cli_case {
    const char *name;
    bool udp;
    const char *input;
    const char *output;    /* all objects, each ending in '\n' */
    unsigned long packets; /* lines that held a packet */
    unsigned long failed;  /* objects with "ok":false */
};

/* Wiki vectors (TELTONIKA.md §9). */
#define HANDSHAKE "000f333536333037303432343431303133"
#define C8_EX1                                                                                     \
    "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f0"  \
    "1f10000601a014e0000000000000000010000c7cf"
#define C8_EX3                                                                                     \
    "000000000000004308020000016b40d57b4801000000000000000000000000000000010101010000000000000"    \
    "16b40d5c198010000000000000000000000000000000101010101000000020000252c"
#define C8E_EX                                                                                     \
    "000000000000004a8e010000016b412cee000100000000000000000000000000000000010005000100010100010"  \
    "011001d00010010015e2c880002000b000000003544c87a000e000000001dd7e06a00000100002994"
#define C16_EX                                                                                     \
    "000000000000005f10020000016bdbc7833000000000000000000000000000000000000b05040200010000030002" \
    "000b00270042563a00000000016bdbc7871800000000000000000000000000000000000b050402000100000300"   \
    "02000b00260042563a00000200005fb3"
#define C8E_NEG_LON                                                                                \
    "00000000000000628e010000017a52dc444800c42dd67b0c443bce000000000000000000000c000500f0010015"   \
    "0200c800004502007143000500b5000000b600000018000000430f1d00440000000100f1000518c40000000103"   \
    "7b000c44444245353930444442353801000001f2"
#define C12_GETINFO_CMD "000000000000000f0c010500000007676574696e666f0100004312"
#define C12_GETIO_RESP                                                                             \
    "00000000000000370c01060000002f4449313a31204449323a30204449333a302041494e313a302041494e323a"   \
    "313639323420444f313a3020444f323a3101000066e3"
#define C13_4BYTE_TS       "00000000000000130d01060000000b0a81c320676574696e666f0100001d6b"
#define C14_GETVER_CMD     "00000000000000160e01050000000e0352093081452251676574766572010000d2c1"
#define C14_NACK_PUBLISHED "00000000000000100e011100000008035209308145246801000032ac"
#define C15_HELLO                                                                                  \
    "000000000000001b0f010b00000013654b65a40123456789123456"                                       \
    "48656c6c6f210a01000093d6"
/* Traccar TeltonikaProtocolDecoderTest line 70 (corpus traccar_teltonika.tsv): a Codec 12
 * response whose payload is binary, so it is printed as hex. CRC 0xD988 is checked below. */
#define C12_BINARY_RESP "00000000000000100c010600000008010300010015d5c5010000d988"
#define UDP_C8                                                                                     \
    "003dcafe0105000f33353230393330383634303336353508010000016b4f815b30010000000000000000000000"   \
    "000000000103021503010101425dbc000001"

/* The records as TELTONIKA.md §9 decodes them, written out by hand. */
#define REC_ZERO_POS                                                                               \
    "\"lon_e7\":0,\"lat_e7\":0,\"altitude\":0,\"angle\":0,\"satellites\":0,\"speed\":0"
#define OBJ_C8_EX1                                                                                 \
    "\"kind\":\"avl\",\"codec\":\"8\",\"records\":[{\"ts_ms\":1560161086000,\"priority\":"         \
    "1," REC_ZERO_POS ",\"event_id\":1,\"generation\":null,"                                       \
    "\"io\":{\"21\":3,\"1\":1,\"66\":24079,\"241\":24602,\"78\":0}}]}\n"
#define OBJ_IMEI "\"kind\":\"imei\",\"imei\":\"356307042441013\"}\n"

static const struct cli_case cli_cases[] = {
    {"codec 8 example 1 (§9.1)", false, C8_EX1 "\n", "{\"line\":1,\"ok\":true," OBJ_C8_EX1, 1, 0},
    {"codec 8 example 3, two records (§9.3)", false, C8_EX3 "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"avl\",\"codec\":\"8\",\"records\":["
     "{\"ts_ms\":1560160861000,\"priority\":1," REC_ZERO_POS
     ",\"event_id\":1,\"generation\":null,\"io\":{\"1\":0}},"
     "{\"ts_ms\":1560160879000,\"priority\":1," REC_ZERO_POS
     ",\"event_id\":1,\"generation\":null,\"io\":{\"1\":1}}]}\n",
     1, 0},
    {"codec 8E example (§9.4)", false, C8E_EX "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"avl\",\"codec\":\"8E\",\"records\":["
     "{\"ts_ms\":1560166592000,\"priority\":1," REC_ZERO_POS ",\"event_id\":1,\"generation\":null,"
     "\"io\":{\"1\":1,\"17\":29,\"16\":22949000,\"11\":893700218,\"14\":500686954}}]}\n",
     1, 0},
    {"codec 16 example, generation 5 (§9.5)", false, C16_EX "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"avl\",\"codec\":\"16\",\"records\":["
     "{\"ts_ms\":1562760414000,\"priority\":0," REC_ZERO_POS ",\"event_id\":11,\"generation\":5,"
     "\"io\":{\"1\":0,\"3\":0,\"11\":39,\"66\":22074}},"
     "{\"ts_ms\":1562760415000,\"priority\":0," REC_ZERO_POS ",\"event_id\":11,\"generation\":5,"
     "\"io\":{\"1\":0,\"3\":0,\"11\":38,\"66\":22074}}]}\n",
     1, 0},
    /* lon int32(0xC42DD67B) = -1003628933; NX 891 is the ASCII "DDBE590DDB58", as hex. */
    {"codec 8E, negative longitude and NX (§9.12)", false, C8E_NEG_LON "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"avl\",\"codec\":\"8E\",\"records\":["
     "{\"ts_ms\":1624887805000,\"priority\":0,\"lon_e7\":-1003628933,\"lat_e7\":205798350,"
     "\"altitude\":0,\"angle\":0,\"satellites\":0,\"speed\":0,\"event_id\":0,\"generation\":null,"
     "\"io\":{\"240\":1,\"21\":2,\"200\":0,\"69\":2,\"113\":67,\"181\":0,\"182\":0,\"24\":0,"
     "\"67\":3869,\"68\":0,\"241\":334020,\"891\":\"444442453539304444423538\"}}]}\n",
     1, 0},
    {"codec 12 getinfo command (§3.1)", false, C12_GETINFO_CMD "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"command\",\"codec\":\"12\",\"text\":\"getinfo\"}\n", 1, 0},
    {"codec 12 getio response (§3.1)", false, C12_GETIO_RESP "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"response\",\"codec\":\"12\","
     "\"text\":\"DI1:1 DI2:0 DI3:0 AIN1:0 AIN2:16924 DO1:0 DO2:1\"}\n",
     1, 0},
    {"codec 12 binary response printed as hex (Traccar line 70)", false, C12_BINARY_RESP "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"response\",\"codec\":\"12\","
     "\"hex\":\"010300010015d5c5\"}\n",
     1, 0},
    {"codec 13, 4-byte timestamp (§3.2)", false, C13_4BYTE_TS "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"response\",\"codec\":\"13\",\"ts\":176276256,"
     "\"text\":\"getinfo\"}\n",
     1, 0},
    {"codec 14 getver command (§3.3)", false, C14_GETVER_CMD "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"command\",\"codec\":\"14\",\"imei\":\"352093081452251\","
     "\"text\":\"getver\"}\n",
     1, 0},
    {"codec 15 hello (§3.4)", false, C15_HELLO "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"response\",\"codec\":\"15\",\"ts\":1699440036,"
     "\"imei\":\"123456789123456\",\"text\":\"Hello!\\u000a\"}\n",
     1, 0},
    {"IMEI handshake (§1.1)", false, HANDSHAKE "\n", "{\"line\":1,\"ok\":true," OBJ_IMEI, 1, 0},
    {"keep-alive then handshake: two objects (§1.2)", false, "ff" HANDSHAKE "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"ping\"}\n"
     "{\"line\":1,\"ok\":true," OBJ_IMEI,
     1, 0},
    {"a session: handshake, keep-alive, data frame on one line", false, HANDSHAKE "ff" C8_EX1 "\n",
     "{\"line\":1,\"ok\":true," OBJ_IMEI "{\"line\":1,\"ok\":true,\"kind\":\"ping\"}\n"
     "{\"line\":1,\"ok\":true," OBJ_C8_EX1,
     1, 0},
    {"a second handshake after the first is out of sync", false, HANDSHAKE HANDSHAKE "\n",
     "{\"line\":1,\"ok\":true," OBJ_IMEI "{\"line\":1,\"ok\":false,\"error\":\"bad_preamble\"}\n",
     1, 1},
    {"a frame cut short: truncated", false, "000000000000003608010000016b40d8ea30\n",
     "{\"line\":1,\"ok\":false,\"error\":\"truncated\"}\n", 1, 1},
    {"a handshake then a cut frame", false, HANDSHAKE "00000000\n",
     "{\"line\":1,\"ok\":true," OBJ_IMEI "{\"line\":1,\"ok\":false,\"error\":\"truncated\"}\n", 1,
     1},
    {"codec 14 nACK as published: CRC mismatch (§3.3)", false, C14_NACK_PUBLISHED "\n",
     "{\"line\":1,\"ok\":false,\"error\":\"crc_mismatch\"}\n", 1, 1},
    {"the nACK with its IMEI corrected so the CRC verifies", false,
     "00000000000000100e011100000008035209308145225101000032ac\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"nack\",\"codec\":\"14\",\"imei\":\"352093081452251\","
     "\"text\":\"\"}\n",
     1, 0},
    {"an error stops the line", false, C14_NACK_PUBLISHED C8_EX1 "\n",
     "{\"line\":1,\"ok\":false,\"error\":\"crc_mismatch\"}\n", 1, 1},
    {"bad hex: a non-hex character", false, "00000000000000zz\n",
     "{\"line\":1,\"ok\":false,\"error\":\"bad_hex\"}\n", 1, 1},
    {"bad hex: an odd digit count", false, "000f3\n",
     "{\"line\":1,\"ok\":false,\"error\":\"bad_hex\"}\n", 1, 1},
    {"bad hex: 0x and nothing after it", false, "0x\n",
     "{\"line\":1,\"ok\":false,\"error\":\"bad_hex\"}\n", 1, 1},
    {"0x prefix, upper case, spaces, tabs and CRLF", false,
     "  0X000F 3335 3633\t3037 3034 3234 3431 3031 33\r\n", "{\"line\":1,\"ok\":true," OBJ_IMEI, 1,
     0},
    {"comments and blank lines keep line numbers; a last line without newline", false,
     "# a comment\n\n   \n\t# indented comment\n" HANDSHAKE "\n#\nff",
     "{\"line\":5,\"ok\":true," OBJ_IMEI "{\"line\":7,\"ok\":true,\"kind\":\"ping\"}\n", 2, 0},
    {"good and bad lines: every line gets its object", false,
     C12_GETINFO_CMD "\nnot hex\n" C13_4BYTE_TS "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"command\",\"codec\":\"12\",\"text\":\"getinfo\"}\n"
     "{\"line\":2,\"ok\":false,\"error\":\"bad_hex\"}\n"
     "{\"line\":3,\"ok\":true,\"kind\":\"response\",\"codec\":\"13\",\"ts\":176276256,"
     "\"text\":\"getinfo\"}\n",
     3, 1},
    {"empty input", false, "", "", 0, 0},
    {"UDP: codec 8 datagram (§9.6)", true, UDP_C8 "\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"avl\",\"codec\":\"8\",\"imei\":\"352093086403655\","
     "\"packet_id\":51966,\"avl_packet_id\":5,\"records\":[{\"ts_ms\":1560407006000,"
     "\"priority\":1," REC_ZERO_POS ",\"event_id\":1,\"generation\":null,"
     "\"io\":{\"21\":3,\"1\":1,\"66\":23996}}]}\n",
     1, 0},
    {"UDP: the server ACK (§5)", true, "0005cafe010501\n",
     "{\"line\":1,\"ok\":true,\"kind\":\"udp_ack\",\"packet_id\":51966,\"avl_packet_id\":5,"
     "\"records\":1}\n",
     1, 0},
    {"UDP: a datagram with a wrong length field", true, "003ecafe0105000f3335\n",
     "{\"line\":1,\"ok\":false,\"error\":\"udp_length_mismatch\"}\n", 1, 1},
    {"UDP: a TCP frame is not a datagram", true, C8_EX1 "\n",
     "{\"line\":1,\"ok\":false,\"error\":\"udp_length_mismatch\"}\n", 1, 1},
};

static void test_cli_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cli_cases / sizeof cli_cases[0]; i++) {
        const struct cli_case *c = &cli_cases[i];
        struct decode_opts o = {.udp = c->udp};
        struct decode_stats st = {0};
        size_t n;
        char *out = run_stream(c->input, strlen(c->input), &o, &st, &n);
        assert_lines_equal(c->name, out, c->output);
        size_t lines = check_json_lines(out, n);
        assert_int_equal(lines, st.objects);
        if (st.packets != c->packets || st.failed != c->failed)
            fail_msg("%s: packets %lu failed %lu, want %lu and %lu", c->name, st.packets, st.failed,
                     c->packets, c->failed);
        free(out);
    }
}

/* The binary Codec 12 response above is only a real case if its CRC verifies. */
static void test_binary_response_crc(void **state)
{
    (void)state;
    uint8_t b[64];
    long n = tu_hex_decode(C12_BINARY_RESP, strlen(C12_BINARY_RESP), b, sizeof b);
    assert_int_equal(n, 28);
    assert_int_equal(avl_crc16(0, b + 8, 16), 0xD988);
}

/* ------------------------------------------------------------------------------------------
 * Frames built by the encoder: shapes the wiki has no example of
 * ---------------------------------------------------------------------------------------- */

static char *hex_line(const uint8_t *p, size_t n)
{
    char *s = malloc(2 * n + 2);
    assert_non_null(s);
    tu_hex_encode(p, n, s);
    s[2 * n] = '\n';
    s[2 * n + 1] = '\0';
    return s;
}

static void test_gprs_two_messages(void **state)
{
    (void)state;
    static const uint8_t camera[] = {0xff, 0xd8, 0xff, 0xe0}; /* a JPEG start: not UTF-8 */
    const struct avl_gprs_msg msgs[] = {
        {.type = AVL_GPRS_RESPONSE, .text = (const uint8_t *)"a\"b\\c", .text_len = 5},
        {.type = AVL_GPRS_CAMERA, .text = camera, .text_len = sizeof camera},
    };
    uint8_t frame[128];
    int n = avl_encode_gprs(frame, sizeof frame, AVL_CODEC_12, msgs, 2);
    assert_true(n > 0);
    char *line = hex_line(frame, (size_t)n);
    struct decode_opts o = {0};
    struct decode_stats st = {0};
    size_t len;
    char *out = run_stream(line, strlen(line), &o, &st, &len);
    assert_lines_equal("two GPRS messages", out,
                       "{\"line\":1,\"ok\":true,\"kind\":\"gprs\",\"codec\":\"12\",\"messages\":["
                       "{\"kind\":\"response\",\"text\":\"a\\\"b\\\\c\"},"
                       "{\"kind\":\"camera\",\"hex\":\"ffd8ffe0\"}]}\n");
    check_json_lines(out, len);
    free(out);
    free(line);
}

/* A Codec 12 command of text_bytes: past the 64 KiB default it needs --frame-bytes-max. */
static void test_large_frame(void **state)
{
    (void)state;
    const uint32_t text_bytes = 70000;
    uint8_t *text = malloc(text_bytes);
    uint8_t *frame = malloc(text_bytes + 64);
    assert_non_null(text);
    assert_non_null(frame);
    for (uint32_t i = 0; i < text_bytes; i++)
        text[i] = (uint8_t)('a' + i % 26);
    int n = avl_encode_command(frame, text_bytes + 64, text, text_bytes);
    assert_true(n > 0);
    char *line = hex_line(frame, (size_t)n);

    struct decode_opts o = {0};
    struct decode_stats st = {0};
    size_t len;
    char *out = run_stream(line, strlen(line), &o, &st, &len);
    assert_lines_equal("large frame, default bound", out,
                       "{\"line\":1,\"ok\":false,\"error\":\"frame_too_large\"}\n");
    free(out);

    o.frame_bytes_max = 128 * 1024;
    out = run_stream(line, strlen(line), &o, &st, &len);
    assert_int_equal(check_json_lines(out, len), 1);
    const char *head = "{\"line\":1,\"ok\":true,\"kind\":\"command\",\"codec\":\"12\",\"text\":\"";
    assert_memory_equal(out, head, strlen(head));
    assert_int_equal(len, strlen(head) + text_bytes + strlen("\"}\n"));
    assert_memory_equal(out + strlen(head), text, text_bytes);
    free(out);
    free(line);
    free(frame);
    free(text);
}

/* Every strict prefix of a good frame is "truncated", never another error. */
static void test_every_prefix_truncated(void **state)
{
    (void)state;
    static const char *const frames[] = {HANDSHAKE, C8_EX1, C8E_NEG_LON, C15_HELLO};
    for (size_t k = 0; k < sizeof frames / sizeof frames[0]; k++) {
        uint8_t b[256];
        long n = tu_hex_decode(frames[k], strlen(frames[k]), b, sizeof b);
        assert_true(n > 0);
        for (long cut = 1; cut < n; cut++) {
            char *out = NULL;
            size_t len = 0;
            FILE *mem = open_memstream(&out, &len);
            assert_non_null(mem);
            struct json_out j;
            json_init(&j, mem);
            struct decode_opts o = {0};
            struct decode_stats st = {0};
            assert_int_equal(decode_bytes(&j, "x", 7, b, (size_t)cut, &o, &st), 1);
            assert_int_equal(json_flush(&j), 0);
            fclose(mem);
            assert_string_equal(out, "{\"line\":7,\"ok\":false,\"error\":\"truncated\"}\n");
            free(out);
        }
    }
}

/* A line past DECODE_LINE_BYTES_MAX gives one error object and the next line still decodes. */
static void test_line_too_long(void **state)
{
    (void)state;
    size_t digits = 2 * DECODE_LINE_BYTES_MAX + 2;
    size_t n = digits + 1 + sizeof HANDSHAKE;
    char *text = malloc(n);
    assert_non_null(text);
    memset(text, '0', digits);
    text[digits] = '\n';
    memcpy(text + digits + 1, HANDSHAKE, sizeof HANDSHAKE - 1);
    text[n - 1] = '\n';
    struct decode_opts o = {0};
    struct decode_stats st = {0};
    size_t len;
    char *out = run_stream(text, n, &o, &st, &len);
    assert_lines_equal("line too long", out,
                       "{\"line\":1,\"ok\":false,\"error\":\"line_too_long\"}\n"
                       "{\"line\":2,\"ok\":true," OBJ_IMEI);
    free(out);
    free(text);
}

static void test_show_file(void **state)
{
    (void)state;
    struct decode_opts o = {.show_file = true};
    struct decode_stats st = {0};
    size_t len;
    char *out = run_stream("ff\n", 3, &o, &st, &len);
    assert_string_equal(out, "{\"file\":\"input.hex\",\"line\":1,\"ok\":true,\"kind\":\"ping\"}\n");
    free(out);
}

/* ------------------------------------------------------------------------------------------
 * hexline
 * ---------------------------------------------------------------------------------------- */

static void test_hexline_reader(void **state)
{
    (void)state;
    static const char text[] = "# c\n"
                               "0xAbCd\n"
                               "\n"
                               "0 x12\n"
                               "12345\n"
                               "0011223344\n"
                               "00112233\r\n"
                               "  #x\n"
                               "0";
    FILE *in = fmemopen((void *)(uintptr_t)text, sizeof text - 1, "r");
    assert_non_null(in);
    struct hexline_reader r;
    hexline_init(&r, in, 4);
    static const struct {
        int kind;
        unsigned long line;
        size_t len;
    } want[] = {
        {HEXLINE_SKIP, 1, 0},    {HEXLINE_BYTES, 2, 2},   {HEXLINE_SKIP, 3, 0},
        {HEXLINE_BAD_HEX, 4, 0}, {HEXLINE_BAD_HEX, 5, 0}, {HEXLINE_TOO_LONG, 6, 0},
        {HEXLINE_BYTES, 7, 4},   {HEXLINE_SKIP, 8, 0},    {HEXLINE_BAD_HEX, 9, 0},
        {HEXLINE_EOF, 9, 0},     {HEXLINE_EOF, 9, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int kind = hexline_next(&r);
        if (kind != want[i].kind || r.line != want[i].line || r.bytes_len != want[i].len)
            fail_msg("step %zu: kind %d line %lu len %zu", i, kind, r.line, r.bytes_len);
        if (i == 1)
            assert_memory_equal(r.bytes, "\xab\xcd", 2);
        if (i == 6)
            assert_memory_equal(r.bytes, "\x00\x11\x22\x33", 4);
    }
    hexline_free(&r);
    fclose(in);
}

/* ------------------------------------------------------------------------------------------
 * JSON writer and UTF-8
 * ---------------------------------------------------------------------------------------- */

static void test_json_writer(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&out, &len);
    assert_non_null(mem);
    struct json_out j;
    json_init(&j, mem);
    json_object_begin(&j);
    json_key(&j, "s");
    json_strn(&j, "q\"b\\\x01\x1f\x7f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\0z", 18);
    json_key(&j, "min");
    json_i64(&j, INT64_MIN);
    json_key(&j, "max");
    json_u64(&j, UINT64_MAX);
    json_key_u64(&j, 65535);
    json_array_begin(&j);
    json_i64(&j, -1);
    json_i64(&j, 0);
    json_bool(&j, false);
    json_null(&j);
    json_array_begin(&j);
    json_array_end(&j);
    json_object_begin(&j);
    json_object_end(&j);
    json_hex(&j, (const uint8_t *)"\x00\xff", 2);
    json_array_end(&j);
    json_object_end(&j);
    json_newline(&j);
    /* More than the buffer holds, to cross a flush. */
    for (int i = 0; i < 2000; i++) {
        json_str(&j, "0123456789");
        json_newline(&j);
    }
    assert_int_equal(json_flush(&j), 0);
    fclose(mem);
    const char *want =
        "{\"s\":\"q\\\"b\\\\\\u0001\\u001f\\u007f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
        "\\u0000z\",\"min\":-9223372036854775808,\"max\":18446744073709551615,"
        "\"65535\":[-1,0,false,null,[],{},\"00ff\"]}\n";
    assert_int_equal(len, strlen(want) + 2000 * 13);
    assert_memory_equal(out, want, strlen(want));
    for (int i = 0; i < 2000; i++)
        assert_memory_equal(out + strlen(want) + 13 * (size_t)i, "\"0123456789\"\n", 13);
    free(out);
}

static void test_utf8_validator(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
        bool valid;
    } cases[] = {
        {"", 0, true},
        {"plain ascii", 11, true},
        {"\x00", 1, true},
        {"\xc2\x80", 2, true},          /* U+0080 */
        {"\xdf\xbf", 2, true},          /* U+07FF */
        {"\xe0\xa0\x80", 3, true},      /* U+0800 */
        {"\xed\x9f\xbf", 3, true},      /* U+D7FF */
        {"\xee\x80\x80", 3, true},      /* U+E000 */
        {"\xef\xbf\xbf", 3, true},      /* U+FFFF */
        {"\xf0\x90\x80\x80", 4, true},  /* U+10000 */
        {"\xf4\x8f\xbf\xbf", 4, true},  /* U+10FFFF */
        {"\x80", 1, false},             /* lone continuation */
        {"\xc0\x80", 2, false},         /* overlong NUL */
        {"\xc1\xbf", 2, false},         /* overlong */
        {"\xe0\x9f\xbf", 3, false},     /* overlong U+07FF */
        {"\xf0\x8f\xbf\xbf", 4, false}, /* overlong U+FFFF */
        {"\xed\xa0\x80", 3, false},     /* U+D800, a surrogate */
        {"\xed\xbf\xbf", 3, false},     /* U+DFFF */
        {"\xf4\x90\x80\x80", 4, false}, /* U+110000 */
        {"\xf5\x80\x80\x80", 4, false}, /* never a lead byte */
        {"\xff", 1, false},
        {"\xc3", 1, false},             /* truncated */
        {"\xe2\x82", 2, false},         /* truncated */
        {"\xe2\x28\xa1", 3, false},     /* bad continuation */
        {"\xf0\x9f\x98\x28", 4, false}, /* bad last continuation */
        {"\x15\xd5\xc5", 3, false},     /* the Traccar binary response */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (json_utf8_valid((const uint8_t *)cases[i].bytes, cases[i].len) != cases[i].valid)
            fail_msg("case %zu: want %s", i, cases[i].valid ? "valid" : "invalid");
    }
}

/* ------------------------------------------------------------------------------------------
 * decode_main: options, files and exit statuses
 * ---------------------------------------------------------------------------------------- */

struct main_run {
    int status;
    char *out;
    char *err;
};

static struct main_run run_main(const char *stdin_text, int argc, const char **argv)
{
    /* fmemopen may refuse a size of 0: an empty input is given as one blank line. */
    if (stdin_text[0] == '\0')
        stdin_text = "\n";
    FILE *in = fmemopen((void *)(uintptr_t)stdin_text, strlen(stdin_text), "r");
    assert_non_null(in);
    struct main_run r = {0};
    size_t out_len = 0, err_len = 0;
    FILE *out = open_memstream(&r.out, &out_len);
    FILE *err = open_memstream(&r.err, &err_len);
    assert_non_null(out);
    assert_non_null(err);
    r.status = decode_main(argc, (char **)(uintptr_t)argv, in, out, err);
    fclose(out);
    fclose(err);
    fclose(in);
    return r;
}

static void main_free(struct main_run *r)
{
    free(r->out);
    free(r->err);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_main_exit_status(void **state)
{
    (void)state;
    const char *good = C8_EX1 "\n" HANDSHAKE "\n";
    const char *bad = C8_EX1 "\n" C14_NACK_PUBLISHED "\n";

    const char *a0[] = {"decode", NULL};
    struct main_run r = run_main(good, 1, a0);
    assert_int_equal(r.status, 0);
    assert_int_equal(count_lines(r.out), 2);
    assert_string_equal(r.err, "");
    main_free(&r);

    const char *a1[] = {"decode", "-", NULL};
    r = run_main(bad, 2, a1);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "{\"line\":2,\"ok\":false,\"error\":\"crc_mismatch\"}\n"));
    main_free(&r);

    const char *a2[] = {"decode", "/nonexistent/packets.hex", NULL};
    r = run_main(good, 2, a2);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "/nonexistent/packets.hex"));
    assert_non_null(strstr(r.err, "No such file or directory"));
    main_free(&r);

    const char *a3[] = {"decode", "--bogus", NULL};
    r = run_main(good, 2, a3);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--bogus"));
    assert_string_equal(r.out, "");
    main_free(&r);

    static const char *const bad_values[] = {"abc", "14", "-1", "16777217", "", " 100"};
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        const char *a4[] = {"decode", "--frame-bytes-max", bad_values[i], NULL};
        r = run_main(good, 3, a4);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, "--frame-bytes-max"));
        main_free(&r);
    }

    const char *a5[] = {"decode", "--frame-bytes-max", NULL};
    r = run_main(good, 2, a5);
    assert_int_equal(r.status, 2);
    main_free(&r);

    const char *a6[] = {"decode", "--help", NULL};
    r = run_main(good, 2, a6);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "usage: avlgate decode"));
    main_free(&r);

    const char *a7[] = {"decode", "--udp", "--frame-bytes-max=100000", NULL};
    r = run_main("0005cafe010501\n", 3, a7);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "\"kind\":\"udp_ack\""));
    main_free(&r);
}

static void test_main_sample_files(void **state)
{
    (void)state;
    const char *samples = AVLGATE_SOURCE_DIR "/tests/data/samples.hex";
    const char *samples_udp = AVLGATE_SOURCE_DIR "/tests/data/samples_udp.hex";

    const char *a0[] = {"decode", samples, NULL};
    struct main_run r = run_main("", 2, a0);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.err, "");
    assert_null(strstr(r.out, "\"ok\":false"));
    size_t objects = check_json_lines(r.out, strlen(r.out));
    assert_int_equal(objects, 20); /* 18 packet lines, two of them with two frames */
    main_free(&r);

    const char *a1[] = {"decode", "--udp", samples_udp, NULL};
    r = run_main("", 3, a1);
    assert_int_equal(r.status, 0);
    assert_int_equal(check_json_lines(r.out, strlen(r.out)), 8);
    main_free(&r);

    /* Two inputs: objects name their file; a missing one is reported and the rest decoded. */
    const char *a2[] = {"decode", "--udp", samples_udp, "/nonexistent.hex", samples_udp, NULL};
    r = run_main("", 5, a2);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "/nonexistent.hex"));
    assert_int_equal(check_json_lines(r.out, strlen(r.out)), 16);
    assert_int_equal(strncmp(r.out, "{\"file\":\"", 9), 0);
    main_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_cases),
        cmocka_unit_test(test_binary_response_crc),
        cmocka_unit_test(test_gprs_two_messages),
        cmocka_unit_test(test_large_frame),
        cmocka_unit_test(test_every_prefix_truncated),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_show_file),
        cmocka_unit_test(test_hexline_reader),
        cmocka_unit_test(test_json_writer),
        cmocka_unit_test(test_utf8_validator),
        cmocka_unit_test(test_main_exit_status),
        cmocka_unit_test(test_main_sample_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
