/* scan.c — the TCP stream frame scanner.
 *
 * Given the bytes that have arrived, says what frame starts at the first byte and how long it
 * is, that more bytes are needed (and how many in total, at least), or why the stream is bad.
 * It reads only the header bytes it needs and never past len; it does not check CRCs or
 * bodies (the decoders do). Each check is made as soon as its bytes are visible, so garbage
 * is refused before the caller waits for more of it, while a strict prefix of a valid frame
 * always gives AVL_NEED_MORE. Stateless: the caller keeps the mode (handshake or data). */
#include "codec/avl.h"
#include "codec/internal.h"

#include <assert.h>

static uint32_t frame_limit(uint32_t frame_bytes_max)
{
    /* Below the smallest frame nothing could ever pass: a caller's mistake. */
    assert(frame_bytes_max == 0 || frame_bytes_max >= AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN);
    if (frame_bytes_max == 0)
        return AVL_FRAME_BYTES_MAX_DEFAULT;
    if (frame_bytes_max > AVL_FRAME_BYTES_MAX_CEILING)
        return AVL_FRAME_BYTES_MAX_CEILING;
    return frame_bytes_max;
}

static bool is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int need(struct avl_frame *f, uint32_t bytes)
{
    f->bytes = bytes;
    return AVL_NEED_MORE;
}

/* u16 length L (1..17) then L ASCII digits. */
static int scan_imei(const uint8_t *p, size_t len, struct avl_frame *f)
{
    /* The length's high byte alone already rules out every length above 255. */
    if (p[0] != 0)
        return AVL_E_IMEI_LENGTH;
    if (len < 2)
        return need(f, 2 + 1); /* length + one digit */
    uint16_t digits = be16(p);
    if (digits == 0 || digits > AVL_IMEI_DIGITS_MAX)
        return AVL_E_IMEI_LENGTH;
    size_t seen = len - 2 < digits ? len - 2 : digits;
    for (size_t i = 0; i < seen; i++)
        if (!is_digit(p[2 + i]))
            return AVL_E_IMEI_DIGITS;
    if (seen < digits)
        return need(f, 2u + digits);
    f->kind = AVL_FRAME_IMEI;
    f->codec = 0;
    f->bytes = 2u + digits;
    return (int)f->bytes;
}

/* 00000000 | D u32 | codec | ... | CRC u32, D + 12 bytes in all. */
static int scan_data(const uint8_t *p, size_t len, uint32_t limit, struct avl_frame *f)
{
    size_t preamble_seen = len < 4 ? len : 4;
    for (size_t i = 0; i < preamble_seen; i++)
        if (p[i] != 0)
            return AVL_E_BAD_PREAMBLE;
    if (len < AVL_TCP_HEADER_BYTES) {
        /* The visible high bytes of the length already bound it from below. */
        uint64_t data_min = 0;
        for (size_t i = 4; i < len; i++)
            data_min |= (uint64_t)p[i] << (8 * (7 - i));
        if (data_min + AVL_TCP_OVERHEAD_BYTES > limit)
            return AVL_E_FRAME_TOO_LARGE;
        return need(f, AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN);
    }
    uint32_t data_bytes = be32(p + 4);
    if (data_bytes < AVL_DATA_BYTES_MIN)
        return AVL_E_LENGTH_TOO_SMALL;
    if ((uint64_t)data_bytes + AVL_TCP_OVERHEAD_BYTES > limit)
        return AVL_E_FRAME_TOO_LARGE;
    uint32_t total = data_bytes + AVL_TCP_OVERHEAD_BYTES;
    if (len < AVL_TCP_HEADER_BYTES + 1)
        return need(f, total);
    uint8_t codec = p[AVL_TCP_HEADER_BYTES];
    bool avl = avl_codec_is_avl(codec);
    if (!avl && !avl_codec_is_gprs(codec))
        return AVL_E_CODEC_UNKNOWN;
    if (len < total)
        return need(f, total);
    f->kind = avl ? AVL_FRAME_AVL : AVL_FRAME_GPRS;
    f->codec = codec;
    f->bytes = total;
    return (int)total;
}

int avl_scan(const uint8_t *p, size_t len, enum avl_scan_mode mode, uint32_t frame_bytes_max,
             struct avl_frame *f)
{
    if (len == 0)
        return need(f, 1);
    if (p[0] == 0xFF) {
        /* A keep-alive may come wherever a frame may start, even before the handshake. */
        f->kind = AVL_FRAME_PING;
        f->codec = 0;
        f->bytes = 1;
        return 1;
    }
    switch (mode) {
    case AVL_SCAN_HANDSHAKE:
        return scan_imei(p, len, f);
    case AVL_SCAN_DATA:
        return scan_data(p, len, frame_limit(frame_bytes_max), f);
    case AVL_SCAN_ANY:
        /* Traccar's rule: a first u16 of zero starts a data frame, anything else a handshake. */
        if (p[0] != 0)
            return scan_imei(p, len, f);
        if (len < 2)
            return need(f, 2 + 1); /* length + one digit */
        if (p[1] != 0)
            return scan_imei(p, len, f);
        return scan_data(p, len, frame_limit(frame_bytes_max), f);
    }
    assert(!"avl_scan: unknown mode");
    return AVL_E_BAD_PREAMBLE;
}
