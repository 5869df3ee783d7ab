/* encode.c — encoders for AVL packets (TCP and UDP), the handshake, ACKs and GPRS frames.
 *
 * Two passes: the first checks every value against what the codec can carry and sizes the
 * output; the second writes without checks. So an encoder either writes a whole valid frame
 * or writes nothing and names the reason (AVL_E_ENCODE_RANGE before AVL_E_NO_SPACE). The
 * decoder's output re-encodes to the same bytes: elements go group by group in the order
 * given, and the decoder yields them in wire order. */
#include "codec/avl.h"
#include "codec/internal.h"

enum {
    GROUPS = 5, /* N1 N2 N4 N8 NX */
    GROUP_NX = 4,
};

static const uint8_t group_width[GROUPS] = {1, 2, 4, 8, 0};

static int group_of(uint8_t width)
{
    for (int g = 0; g < GROUPS; g++)
        if (group_width[g] == width)
            return g;
    return -1;
}

static bool fits_width(uint64_t v, uint8_t width)
{
    return width >= 8 || v >> (8 * width) == 0;
}

/* Checks one record for codec and returns its encoded size, or an error. */
static int record_size(uint8_t codec, const struct avl_record_src *s, size_t *bytes)
{
    const bool c8 = codec == AVL_CODEC_8, c8e = codec == AVL_CODEC_8E;
    const uint32_t count_max = c8e ? UINT16_MAX : UINT8_MAX;
    const size_t id_bytes = c8 ? 1 : 2, count_bytes = c8e ? 2 : 1;
    if (s->rec.ts_ms >= AVL_TS_MS_END)
        return AVL_E_ENCODE_RANGE;
    if (c8 && s->rec.event_id > UINT8_MAX)
        return AVL_E_ENCODE_RANGE;
    if (s->io_len > 0 && !s->io)
        return AVL_E_ENCODE_RANGE;

    uint32_t counts[GROUPS] = {0};
    size_t size = AVL_RECORD_FIXED_BYTES + (c8 ? 2 : 4) + 4 * count_bytes + (c8e ? 2 : 0);
    for (uint16_t i = 0; i < s->io_len; i++) {
        const struct avl_io_elem *e = &s->io[i];
        int g = group_of(e->width);
        if (g < 0 || (g == GROUP_NX && !c8e) || (c8 && e->id > UINT8_MAX))
            return AVL_E_ENCODE_RANGE;
        if (g == GROUP_NX) {
            if (e->nx_len > 0 && !e->nx)
                return AVL_E_ENCODE_RANGE;
            size += 4 + (size_t)e->nx_len;
        } else {
            if (!fits_width(e->value, e->width))
                return AVL_E_ENCODE_RANGE;
            size += id_bytes + e->width;
        }
        counts[g]++;
    }
    uint32_t total = 0;
    for (int g = 0; g < GROUPS; g++) {
        if (counts[g] > count_max)
            return AVL_E_ENCODE_RANGE;
        total += counts[g];
    }
    if (total > count_max)
        return AVL_E_ENCODE_RANGE;
    *bytes = size;
    return AVL_OK;
}

static int body_size(uint8_t codec, const struct avl_record_src *recs, size_t n, size_t *bytes)
{
    if (!avl_codec_is_avl(codec) || n > AVL_RECORDS_MAX || (n > 0 && !recs))
        return AVL_E_ENCODE_RANGE;
    size_t size = AVL_DATA_BYTES_MIN;
    for (size_t i = 0; i < n; i++) {
        size_t rb;
        int err = record_size(codec, &recs[i], &rb);
        if (err)
            return err;
        size += rb;
        if (size > AVL_FRAME_BYTES_MAX_CEILING)
            return AVL_E_ENCODE_RANGE;
    }
    *bytes = size;
    return AVL_OK;
}

static uint8_t *put_count(uint8_t *o, bool wide, uint32_t v)
{
    if (wide) {
        put_be16(o, (uint16_t)v);
        return o + 2;
    }
    *o = (uint8_t)v;
    return o + 1;
}

/* Writes one record already checked by record_size. */
static uint8_t *record_write(uint8_t *o, uint8_t codec, const struct avl_record_src *s)
{
    const struct avl_record *r = &s->rec;
    const bool c8 = codec == AVL_CODEC_8, c8e = codec == AVL_CODEC_8E;
    put_be64(o, r->ts_ms);
    o[8] = r->priority;
    put_be32(o + 9, (uint32_t)r->lon_e7);
    put_be32(o + 13, (uint32_t)r->lat_e7);
    put_be16(o + 17, (uint16_t)r->altitude_m);
    put_be16(o + 19, r->angle_deg);
    o[21] = r->satellites;
    put_be16(o + 22, r->speed_kmh);
    o += AVL_RECORD_FIXED_BYTES;

    uint32_t counts[GROUPS] = {0};
    for (uint16_t i = 0; i < s->io_len; i++)
        counts[group_of(s->io[i].width)]++;
    uint32_t total = counts[0] + counts[1] + counts[2] + counts[3] + counts[4];

    if (c8) {
        o[0] = (uint8_t)r->event_id;
        o[1] = (uint8_t)total;
        o += 2;
    } else if (c8e) {
        put_be16(o, r->event_id);
        put_be16(o + 2, (uint16_t)total);
        o += 4;
    } else {
        put_be16(o, r->event_id);
        o[2] = r->generation;
        o[3] = (uint8_t)total;
        o += 4;
    }
    for (int g = 0; g < GROUPS; g++) {
        if (g == GROUP_NX && !c8e)
            break;
        o = put_count(o, c8e, counts[g]);
        for (uint16_t i = 0; i < s->io_len; i++) {
            const struct avl_io_elem *e = &s->io[i];
            if (e->width != group_width[g])
                continue;
            if (c8)
                *o++ = (uint8_t)e->id;
            else {
                put_be16(o, e->id);
                o += 2;
            }
            if (g == GROUP_NX) {
                put_be16(o, e->nx_len);
                if (e->nx_len)
                    memcpy(o + 2, e->nx, e->nx_len);
                o += 2 + e->nx_len;
            } else {
                put_be_width(o, e->width, e->value);
                o += e->width;
            }
        }
    }
    return o;
}

static void body_write(uint8_t *o, uint8_t codec, const struct avl_record_src *recs, size_t n)
{
    *o++ = codec;
    *o++ = (uint8_t)n;
    for (size_t i = 0; i < n; i++)
        o = record_write(o, codec, &recs[i]);
    *o = (uint8_t)n;
}

/* Checks that a TCP frame around body data bytes fits the ceiling and cap, and writes its
 * preamble and length. Returns the frame's length or an error (nothing written then). */
static int tcp_frame_begin(uint8_t *out, size_t cap, size_t body)
{
    size_t total = body + AVL_TCP_OVERHEAD_BYTES;
    if (total > AVL_FRAME_BYTES_MAX_CEILING)
        return AVL_E_ENCODE_RANGE;
    if (cap < total)
        return AVL_E_NO_SPACE;
    put_be32(out, 0);
    put_be32(out + 4, (uint32_t)body);
    return (int)total;
}

/* Writes the CRC field once the body data bytes are in place. */
static void tcp_frame_end(uint8_t *out, size_t body)
{
    put_be32(out + AVL_TCP_HEADER_BYTES + body, avl_crc16(0, out + AVL_TCP_HEADER_BYTES, body));
}

int avl_encode_tcp(uint8_t *out, size_t cap, uint8_t codec, const struct avl_record_src *recs,
                   size_t records_len)
{
    size_t body;
    int err = body_size(codec, recs, records_len, &body);
    if (err)
        return err;
    int total = tcp_frame_begin(out, cap, body);
    if (total < 0)
        return total;
    body_write(out + AVL_TCP_HEADER_BYTES, codec, recs, records_len);
    tcp_frame_end(out, body);
    return total;
}

int avl_encode_udp(uint8_t *out, size_t cap, uint16_t packet_id, uint8_t avl_packet_id,
                   uint64_t imei, uint8_t codec, const struct avl_record_src *recs,
                   size_t records_len)
{
    if (!avl_imei_valid(imei))
        return AVL_E_ENCODE_RANGE;
    size_t body;
    int err = body_size(codec, recs, records_len, &body);
    if (err)
        return err;
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    size_t digits_len = (size_t)avl_imei_format(imei, digits);
    size_t total = 8 + digits_len + body;
    if (total - 2 > UINT16_MAX)
        return AVL_E_ENCODE_RANGE;
    if (cap < total)
        return AVL_E_NO_SPACE;
    put_be16(out, (uint16_t)(total - 2));
    put_be16(out + 2, packet_id);
    out[4] = 0x01;
    out[5] = avl_packet_id;
    put_be16(out + 6, (uint16_t)digits_len);
    memcpy(out + 8, digits, digits_len);
    body_write(out + 8 + digits_len, codec, recs, records_len);
    return (int)total;
}

int avl_encode_imei(uint8_t *out, size_t cap, uint64_t imei)
{
    if (!avl_imei_valid(imei))
        return AVL_E_ENCODE_RANGE;
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    size_t n = (size_t)avl_imei_format(imei, digits);
    if (cap < 2 + n)
        return AVL_E_NO_SPACE;
    put_be16(out, (uint16_t)n);
    memcpy(out + 2, digits, n);
    return (int)(2 + n);
}

int avl_encode_tcp_ack(uint8_t out[AVL_TCP_ACK_BYTES], uint32_t records)
{
    put_be32(out, records);
    return AVL_TCP_ACK_BYTES;
}

int avl_encode_udp_ack(uint8_t out[AVL_UDP_ACK_BYTES], uint16_t packet_id, uint8_t avl_packet_id,
                       uint8_t records)
{
    put_be16(out, AVL_UDP_ACK_BYTES - 2);
    put_be16(out + 2, packet_id);
    out[4] = 0x01;
    out[5] = avl_packet_id;
    out[6] = records;
    return AVL_UDP_ACK_BYTES;
}

/* ---------------------------------------------------------------------------------------------
 * GPRS frames
 * ------------------------------------------------------------------------------------------- */

static void imei_bcd_write(uint8_t *o, uint64_t imei)
{
    for (int i = 7; i >= 0; i--) {
        unsigned lo = (unsigned)(imei % 10);
        imei /= 10;
        unsigned hi = (unsigned)(imei % 10);
        imei /= 10;
        o[i] = (uint8_t)(hi << 4 | lo);
    }
}

int avl_encode_gprs(uint8_t *out, size_t cap, uint8_t codec, const struct avl_gprs_msg *msgs,
                    size_t msgs_len)
{
    if (!avl_codec_is_gprs(codec) || msgs_len > AVL_GPRS_MSGS_MAX || (msgs_len > 0 && !msgs))
        return AVL_E_ENCODE_RANGE;
    const uint32_t fixed = avl_gprs_fixed_bytes(codec);
    const bool has_ts = codec == AVL_CODEC_13 || codec == AVL_CODEC_15;
    const bool has_imei = codec == AVL_CODEC_14 || codec == AVL_CODEC_15;
    size_t body = AVL_DATA_BYTES_MIN;
    for (size_t i = 0; i < msgs_len; i++) {
        const struct avl_gprs_msg *m = &msgs[i];
        if (!avl_gprs_type_valid(codec, m->type) || (m->text_len > 0 && !m->text))
            return AVL_E_ENCODE_RANGE;
        if (has_imei && m->imei >= UINT64_C(10000000000000000)) /* 16 BCD digits */
            return AVL_E_ENCODE_RANGE;
        body += AVL_GPRS_MSG_HEADER_BYTES + (size_t)fixed + m->text_len;
        if (body > AVL_FRAME_BYTES_MAX_CEILING)
            return AVL_E_ENCODE_RANGE;
    }
    int total = tcp_frame_begin(out, cap, body);
    if (total < 0)
        return total;
    uint8_t *o = out + AVL_TCP_HEADER_BYTES;
    *o++ = codec;
    *o++ = (uint8_t)msgs_len;
    for (size_t i = 0; i < msgs_len; i++) {
        const struct avl_gprs_msg *m = &msgs[i];
        o[0] = m->type;
        put_be32(o + 1, fixed + m->text_len);
        o += AVL_GPRS_MSG_HEADER_BYTES;
        if (has_ts) {
            put_be32(o, m->ts_s);
            o += 4;
        }
        if (has_imei) {
            imei_bcd_write(o, m->imei);
            o += 8;
        }
        if (m->text_len)
            memcpy(o, m->text, m->text_len);
        o += m->text_len;
    }
    *o = (uint8_t)msgs_len;
    tcp_frame_end(out, body);
    return total;
}

int avl_encode_command(uint8_t *out, size_t cap, const uint8_t *text, uint32_t text_len)
{
    struct avl_gprs_msg m = {.type = AVL_GPRS_COMMAND, .text = text, .text_len = text_len};
    return avl_encode_gprs(out, cap, AVL_CODEC_12, &m, 1);
}
