/* names.c — the printable names of codec errors and codec ids. Static strings only. */
#include "codec/avl.h"
#include "codec/internal.h"

static const char *const err_names[] = {
    [-AVL_NEED_MORE] = "need_more",
    [-AVL_E_BAD_PREAMBLE] = "bad_preamble",
    [-AVL_E_LENGTH_TOO_SMALL] = "length_too_small",
    [-AVL_E_FRAME_TOO_LARGE] = "frame_too_large",
    [-AVL_E_CODEC_UNKNOWN] = "codec_unknown",
    [-AVL_E_CRC_MISMATCH] = "crc_mismatch",
    [-AVL_E_CRC_HIGH_BITS] = "crc_high_bits",
    [-AVL_E_COUNT_MISMATCH] = "count_mismatch",
    [-AVL_E_RECORD_OVERRUN] = "record_overrun",
    [-AVL_E_IO_OVERRUN] = "io_overrun",
    [-AVL_E_IO_TOTAL_MISMATCH] = "io_total_mismatch",
    [-AVL_E_TRAILING_BYTES] = "trailing_bytes",
    [-AVL_E_TS_OUT_OF_RANGE] = "ts_out_of_range",
    [-AVL_E_IMEI_LENGTH] = "imei_length",
    [-AVL_E_IMEI_DIGITS] = "imei_digits",
    [-AVL_E_IMEI_BCD] = "imei_bcd",
    [-AVL_E_TRUNCATED] = "truncated",
    [-AVL_E_UDP_LENGTH] = "udp_length_mismatch",
    [-AVL_E_MSG_TYPE] = "msg_type",
    [-AVL_E_MSG_OVERRUN] = "msg_overrun",
    [-AVL_E_MSG_SIZE] = "msg_size",
    [-AVL_E_NOT_AVL] = "wrong_frame_kind",
    [-AVL_E_NO_SPACE] = "no_space",
    [-AVL_E_ENCODE_RANGE] = "encode_range",
};

_Static_assert(sizeof err_names / sizeof err_names[0] == 1 - AVL_E_ERR_MIN,
               "every error code has a name");

const char *avl_strerror(int err)
{
    if (err >= 0)
        return "ok";
    if (err < AVL_E_ERR_MIN)
        return "unknown_error";
    return err_names[-err];
}

bool avl_codec_is_avl(uint8_t codec)
{
    return codec == AVL_CODEC_8 || codec == AVL_CODEC_8E || codec == AVL_CODEC_16;
}

bool avl_codec_is_gprs(uint8_t codec)
{
    return codec >= AVL_CODEC_12 && codec <= AVL_CODEC_15;
}

const char *avl_codec_name(uint8_t codec)
{
    switch (codec) {
    case AVL_CODEC_8:
        return "8";
    case AVL_CODEC_8E:
        return "8E";
    case AVL_CODEC_16:
        return "16";
    case AVL_CODEC_12:
        return "12";
    case AVL_CODEC_13:
        return "13";
    case AVL_CODEC_14:
        return "14";
    case AVL_CODEC_15:
        return "15";
    default:
        return NULL;
    }
}

bool avl_gprs_type_valid(uint8_t codec, uint8_t type)
{
    switch (codec) {
    case AVL_CODEC_12:
        return type == AVL_GPRS_COMMAND || type == AVL_GPRS_RESPONSE || type == AVL_GPRS_CAMERA;
    case AVL_CODEC_13:
        /* 0x06 per the wiki; old captures (Traccar) carry 0x05 with an 8-byte timestamp. */
        return type == AVL_GPRS_COMMAND || type == AVL_GPRS_RESPONSE;
    case AVL_CODEC_14:
        return type == AVL_GPRS_COMMAND || type == AVL_GPRS_RESPONSE || type == AVL_GPRS_NACK;
    case AVL_CODEC_15:
        return type == AVL_GPRS_FORWARD;
    default:
        return false;
    }
}

uint32_t avl_gprs_fixed_bytes(uint8_t codec)
{
    switch (codec) {
    case AVL_CODEC_13:
        return 4; /* timestamp, seconds */
    case AVL_CODEC_14:
        return 8; /* packed BCD IMEI */
    case AVL_CODEC_15:
        return 12; /* timestamp + packed BCD IMEI */
    default:
        return 0;
    }
}
