/* decode.c — decoders for AVL packets (codecs 8, 8E, 16; TCP and UDP), the IMEI handshake,
 * GPRS command frames (codecs 12-15) and the UDP ACK.
 *
 * Zero copy: records are fixed-size structs whose IO part is a bounds-checked span of the
 * packet; GPRS messages point at their payload. Every length and count read from the wire is
 * checked against the bytes that remain before it is used, every cursor stays inside
 * [p, p + len), and the parse must end exactly at the closing count. Nothing allocates. */
#include "codec/avl.h"
#include "codec/internal.h"

#include <assert.h>

/* ---------------------------------------------------------------------------------------------
 * IMEI
 * ------------------------------------------------------------------------------------------- */

int avl_imei_parse(const uint8_t *digits, size_t len, uint64_t *imei)
{
    if (len == 0 || len > AVL_IMEI_DIGITS_MAX)
        return AVL_E_IMEI_LENGTH;
    uint64_t v = 0; /* 17 digits < 10^17 < 2^64: no overflow */
    for (size_t i = 0; i < len; i++) {
        if (digits[i] < '0' || digits[i] > '9')
            return AVL_E_IMEI_DIGITS;
        v = v * 10 + (uint64_t)(digits[i] - '0');
    }
    *imei = v;
    return AVL_OK;
}

int avl_decode_imei(const uint8_t *p, size_t len, uint64_t *imei)
{
    if (len < 2)
        return AVL_E_TRUNCATED;
    size_t digits = be16(p);
    if (digits == 0 || digits > AVL_IMEI_DIGITS_MAX)
        return AVL_E_IMEI_LENGTH;
    if (len < 2 + digits)
        return AVL_E_TRUNCATED;
    if (len > 2 + digits)
        return AVL_E_TRAILING_BYTES;
    return avl_imei_parse(p + 2, digits, imei);
}

bool avl_imei_valid(uint64_t imei)
{
    return imei < UINT64_C(100000000000000000); /* 10^17: at most 17 digits */
}

int avl_imei_format(uint64_t imei, char out[AVL_IMEI_DIGITS_MAX + 1])
{
    assert(avl_imei_valid(imei));
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + imei % 10);
        imei /= 10;
    } while (imei != 0 && n < (int)sizeof tmp);
    while (n < AVL_IMEI_CANONICAL_DIGITS)
        tmp[n++] = '0';
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

/* 8 bytes of packed BCD (16 digits, the first usually 0), as Codecs 14 and 15 carry it. */
static int imei_bcd_parse(const uint8_t *p, uint64_t *imei)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        unsigned hi = p[i] >> 4, lo = p[i] & 0x0F;
        if (hi > 9 || lo > 9)
            return AVL_E_IMEI_BCD;
        v = v * 100 + hi * 10 + lo;
    }
    *imei = v;
    return AVL_OK;
}

/* ---------------------------------------------------------------------------------------------
 * AVL body: codec | N1 | records | N2
 * ------------------------------------------------------------------------------------------- */

/* The shape of a codec's IO element. */
struct io_layout {
    uint8_t head_bytes;  /* event id + (generation) + N_total */
    uint8_t count_bytes; /* each group count */
    uint8_t id_bytes;    /* each element id */
    bool nx;             /* an NX group follows the four fixed groups */
};

static struct io_layout io_layout_of(uint8_t codec)
{
    switch (codec) {
    case AVL_CODEC_8:
        return (struct io_layout){.head_bytes = 2, .count_bytes = 1, .id_bytes = 1};
    case AVL_CODEC_8E:
        return (struct io_layout){.head_bytes = 4, .count_bytes = 2, .id_bytes = 2, .nx = true};
    default: /* AVL_CODEC_16 */
        return (struct io_layout){.head_bytes = 4, .count_bytes = 1, .id_bytes = 2};
    }
}

static uint32_t read_count(const uint8_t *p, unsigned count_bytes)
{
    return count_bytes == 1 ? p[0] : be16(p);
}

/* Walks the IO groups at *q, none past end; on success *q is just after the last group and
 * *elems holds the element count of all groups. */
static int io_walk(struct io_layout lay, const uint8_t **q, const uint8_t *end, uint32_t *elems)
{
    static const uint8_t widths[4] = {1, 2, 4, 8};
    const uint8_t *c = *q;
    uint32_t sum = 0;
    for (int g = 0; g < 4; g++) {
        if ((size_t)(end - c) < lay.count_bytes)
            return AVL_E_IO_OVERRUN;
        uint32_t n = read_count(c, lay.count_bytes);
        c += lay.count_bytes;
        size_t group_bytes = (size_t)n * (lay.id_bytes + widths[g]);
        if ((size_t)(end - c) < group_bytes)
            return AVL_E_IO_OVERRUN;
        c += group_bytes;
        sum += n;
    }
    if (lay.nx) {
        if ((size_t)(end - c) < 2)
            return AVL_E_IO_OVERRUN;
        uint32_t n = be16(c);
        c += 2;
        for (uint32_t i = 0; i < n; i++) {
            if ((size_t)(end - c) < 4)
                return AVL_E_IO_OVERRUN;
            size_t value_bytes = be16(c + 2);
            c += 4;
            if ((size_t)(end - c) < value_bytes)
                return AVL_E_IO_OVERRUN;
            c += value_bytes;
        }
        sum += n;
    }
    *q = c;
    *elems = sum;
    return AVL_OK;
}

static int record_decode(uint8_t codec, struct io_layout lay, const uint8_t **q, const uint8_t *end,
                         struct avl_record *r)
{
    const uint8_t *c = *q;
    if ((size_t)(end - c) < AVL_RECORD_FIXED_BYTES)
        return AVL_E_RECORD_OVERRUN;
    r->ts_ms = be64(c);
    if (r->ts_ms >= AVL_TS_MS_END)
        return AVL_E_TS_OUT_OF_RANGE;
    r->priority = c[8];
    r->lon_e7 = (int32_t)be32(c + 9);
    r->lat_e7 = (int32_t)be32(c + 13);
    r->altitude_m = (int16_t)be16(c + 17);
    r->angle_deg = be16(c + 19);
    r->satellites = c[21];
    r->speed_kmh = be16(c + 22);
    r->codec = codec;
    c += AVL_RECORD_FIXED_BYTES;

    if ((size_t)(end - c) < lay.head_bytes)
        return AVL_E_IO_OVERRUN;
    switch (codec) {
    case AVL_CODEC_8:
        r->event_id = c[0];
        r->generation = AVL_GENERATION_NONE;
        r->io_total = c[1];
        break;
    case AVL_CODEC_8E:
        r->event_id = be16(c);
        r->generation = AVL_GENERATION_NONE;
        r->io_total = be16(c + 2);
        break;
    default: /* AVL_CODEC_16 */
        r->event_id = be16(c);
        r->generation = c[2];
        r->io_total = c[3];
        break;
    }
    c += lay.head_bytes;

    const uint8_t *io = c;
    uint32_t elems;
    int err = io_walk(lay, &c, end, &elems);
    if (err)
        return err;
    if (elems != r->io_total)
        return AVL_E_IO_TOTAL_MISMATCH;
    r->io = io;
    r->io_bytes = (uint32_t)(c - io);
    *q = c;
    return AVL_OK;
}

int avl_decode_body(const uint8_t *p, size_t len, uint16_t *records_len,
                    struct avl_record recs[AVL_RECORDS_MAX])
{
    if (len < AVL_DATA_BYTES_MIN)
        return AVL_E_LENGTH_TOO_SMALL;
    uint8_t codec = p[0];
    if (!avl_codec_is_avl(codec))
        return avl_codec_is_gprs(codec) ? AVL_E_NOT_AVL : AVL_E_CODEC_UNKNOWN;
    uint8_t n = p[1];
    if (n != p[len - 1])
        return AVL_E_COUNT_MISMATCH;
    struct io_layout lay = io_layout_of(codec);
    const uint8_t *q = p + 2, *end = p + len - 1;
    for (unsigned i = 0; i < n; i++) {
        int err = record_decode(codec, lay, &q, end, &recs[i]);
        if (err)
            return err;
    }
    if (q != end)
        return AVL_E_TRAILING_BYTES;
    *records_len = n;
    return AVL_OK;
}

/* ---------------------------------------------------------------------------------------------
 * TCP frames: 00000000 | D | data (D bytes) | CRC
 * ------------------------------------------------------------------------------------------- */

/* Checks the framing of a complete TCP frame: preamble, D == len - 12, CRC. On success *data
 * points at the codec id and *data_bytes is D. */
static int tcp_frame_check(const uint8_t *p, size_t len, const uint8_t **data, uint32_t *data_bytes)
{
    if (len < AVL_TCP_HEADER_BYTES)
        return AVL_E_TRUNCATED;
    if (be32(p) != 0)
        return AVL_E_BAD_PREAMBLE;
    uint32_t d = be32(p + 4);
    if (d < AVL_DATA_BYTES_MIN)
        return AVL_E_LENGTH_TOO_SMALL;
    /* The scanner's ceiling holds here too, so a decoded frame always re-encodes. */
    if ((uint64_t)d + AVL_TCP_OVERHEAD_BYTES > AVL_FRAME_BYTES_MAX_CEILING)
        return AVL_E_FRAME_TOO_LARGE;
    if ((uint64_t)d + AVL_TCP_OVERHEAD_BYTES > len)
        return AVL_E_TRUNCATED;
    if ((uint64_t)d + AVL_TCP_OVERHEAD_BYTES < len)
        return AVL_E_TRAILING_BYTES;
    uint32_t crc_field = be32(p + AVL_TCP_HEADER_BYTES + d);
    if (crc_field >> 16)
        return AVL_E_CRC_HIGH_BITS;
    if (avl_crc16(0, p + AVL_TCP_HEADER_BYTES, d) != crc_field)
        return AVL_E_CRC_MISMATCH;
    *data = p + AVL_TCP_HEADER_BYTES;
    *data_bytes = d;
    return AVL_OK;
}

int avl_decode_tcp(const uint8_t *p, size_t len, struct avl_packet *pkt,
                   struct avl_record recs[AVL_RECORDS_MAX])
{
    const uint8_t *data;
    uint32_t data_bytes;
    int err = tcp_frame_check(p, len, &data, &data_bytes);
    if (err)
        return err;
    uint16_t n;
    err = avl_decode_body(data, data_bytes, &n, recs);
    if (err)
        return err;
    *pkt = (struct avl_packet){.codec = data[0], .records_len = n, .frame_bytes = (uint32_t)len};
    return AVL_OK;
}

/* ---------------------------------------------------------------------------------------------
 * UDP: len u16 | packet id u16 | byte | avl packet id | imei len u16 | imei | body
 * ------------------------------------------------------------------------------------------- */

int avl_decode_udp(const uint8_t *p, size_t len, struct avl_packet *pkt,
                   struct avl_record recs[AVL_RECORDS_MAX])
{
    if (len < 2)
        return AVL_E_TRUNCATED;
    if ((size_t)be16(p) + 2 != len)
        return AVL_E_UDP_LENGTH;
    if (len < 8)
        return AVL_E_TRUNCATED;
    size_t digits = be16(p + 6);
    if (digits == 0 || digits > AVL_IMEI_DIGITS_MAX)
        return AVL_E_IMEI_LENGTH;
    if (len < 8 + digits + AVL_DATA_BYTES_MIN)
        return AVL_E_TRUNCATED;
    uint64_t imei;
    int err = avl_imei_parse(p + 8, digits, &imei);
    if (err)
        return err;
    const uint8_t *body = p + 8 + digits;
    uint16_t n;
    err = avl_decode_body(body, len - 8 - digits, &n, recs);
    if (err)
        return err;
    *pkt = (struct avl_packet){
        .codec = body[0],
        .records_len = n,
        .frame_bytes = (uint32_t)len,
        .udp_packet_id = be16(p + 2),
        .udp_not_usable = p[4],
        .udp_avl_packet_id = p[5],
        .imei = imei,
    };
    return AVL_OK;
}

int avl_decode_udp_ack(const uint8_t *p, size_t len, uint16_t *packet_id, uint8_t *avl_packet_id,
                       uint8_t *records)
{
    if (len < AVL_UDP_ACK_BYTES)
        return AVL_E_TRUNCATED;
    if (len > AVL_UDP_ACK_BYTES)
        return AVL_E_TRAILING_BYTES;
    if (be16(p) != AVL_UDP_ACK_BYTES - 2)
        return AVL_E_UDP_LENGTH;
    *packet_id = be16(p + 2);
    *avl_packet_id = p[5];
    *records = p[6];
    return AVL_OK;
}

/* ---------------------------------------------------------------------------------------------
 * IO iteration over a decoded record (already bounds-checked by io_walk)
 * ------------------------------------------------------------------------------------------- */

void avl_io_iter_init(struct avl_io_iter *it, const struct avl_record *r)
{
    struct io_layout lay = io_layout_of(r->codec);
    it->id_bytes = lay.id_bytes;
    it->count_bytes = lay.count_bytes;
    it->groups = lay.nx ? 5 : 4;
    it->group = 0;
    it->left = read_count(r->io, lay.count_bytes);
    it->p = r->io + lay.count_bytes;
}

bool avl_io_next(struct avl_io_iter *it, struct avl_io *io)
{
    while (it->left == 0) {
        if (it->group >= it->groups - 1) {
            it->group = it->groups;
            return false;
        }
        it->group++;
        /* The NX count is a u16 like every 8E count. */
        it->left = read_count(it->p, it->count_bytes);
        it->p += it->count_bytes;
    }
    const uint8_t *c = it->p;
    io->id = it->id_bytes == 1 ? c[0] : be16(c);
    c += it->id_bytes;
    if (it->group == 4) {
        io->nx = true;
        io->len = be16(c);
        io->value = 0;
        io->bytes = c + 2;
        c += 2 + io->len;
    } else {
        io->nx = false;
        io->len = (uint16_t)(1u << it->group);
        io->value = be_width(c, io->len);
        io->bytes = c;
        c += io->len;
    }
    it->p = c;
    it->left--;
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * GPRS frames: codec | Q1 | {type u8 | size u32 | payload} x Q1 | Q2
 * ------------------------------------------------------------------------------------------- */

int avl_decode_gprs(const uint8_t *p, size_t len, uint8_t *codec,
                    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX])
{
    const uint8_t *data;
    uint32_t data_bytes;
    int err = tcp_frame_check(p, len, &data, &data_bytes);
    if (err)
        return err;
    uint8_t c = data[0];
    if (!avl_codec_is_gprs(c))
        return avl_codec_is_avl(c) ? AVL_E_NOT_AVL : AVL_E_CODEC_UNKNOWN;
    uint8_t n = data[1];
    if (n != data[data_bytes - 1])
        return AVL_E_COUNT_MISMATCH;
    uint32_t fixed = avl_gprs_fixed_bytes(c);
    const uint8_t *q = data + 2, *end = data + data_bytes - 1;
    for (unsigned i = 0; i < n; i++) {
        if ((size_t)(end - q) < AVL_GPRS_MSG_HEADER_BYTES)
            return AVL_E_MSG_OVERRUN;
        struct avl_gprs_msg *m = &msgs[i];
        m->type = q[0];
        m->size = be32(q + 1);
        q += AVL_GPRS_MSG_HEADER_BYTES;
        if ((size_t)(end - q) < m->size)
            return AVL_E_MSG_OVERRUN;
        if (!avl_gprs_type_valid(c, m->type))
            return AVL_E_MSG_TYPE;
        if (m->size < fixed)
            return AVL_E_MSG_SIZE;
        m->payload = q;
        m->ts_s = 0;
        m->imei = 0;
        if (c == AVL_CODEC_13 || c == AVL_CODEC_15)
            m->ts_s = be32(q);
        if (c == AVL_CODEC_14 || c == AVL_CODEC_15) {
            err = imei_bcd_parse(q + (c == AVL_CODEC_15 ? 4 : 0), &m->imei);
            if (err)
                return err;
        }
        m->text = q + fixed;
        m->text_len = m->size - fixed;
        q += m->size;
    }
    if (q != end)
        return AVL_E_TRAILING_BYTES;
    *codec = c;
    return n;
}
