/* avl.h — the Teltonika wire codec: frame scanner, CRC, decoders and encoders.
 *
 * Pure: no I/O, no allocation, no mutable global state; every function is safe to call from
 * any thread at once. Used by the gateway, loadgen, the tests and the benchmarks.
 *
 * Byte layouts are in ../shared/protocol/TELTONIKA.md. All multi-byte fields are big-endian.
 *
 * Return convention (picohttpparser style, liburing-like signs):
 *   > 0 or 0   success (bytes consumed / written, or a count, as each function says)
 *   AVL_NEED_MORE   the bytes given are a strict prefix of something that may still be valid;
 *                   the scanner says how many bytes in total it needs at least
 *   < AVL_NEED_MORE a named error: enum avl_err, printable with avl_strerror()
 *
 * Decoded values that point into the input (IO elements, message payloads) stay valid only as
 * long as the caller keeps those input bytes; the codec never copies them.
 */
#ifndef AVLGATE_CODEC_AVL_H
#define AVLGATE_CODEC_AVL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Bounds
 * ------------------------------------------------------------------------------------------- */

enum {
    AVL_RECORDS_MAX = 255,          /* record count is a u8 */
    AVL_IMEI_DIGITS_MAX = 17,       /* handshake and UDP header: 1..17 ASCII digits */
    AVL_IMEI_CANONICAL_DIGITS = 15, /* printed zero-padded to at least this many digits */
    AVL_TCP_HEADER_BYTES = 8,       /* preamble u32 + data length u32 */
    AVL_TCP_TRAILER_BYTES = 4,      /* CRC field u32 */
    AVL_TCP_OVERHEAD_BYTES = AVL_TCP_HEADER_BYTES + AVL_TCP_TRAILER_BYTES,
    AVL_DATA_BYTES_MIN = 3, /* codec id + count 1 + count 2 */
    AVL_HANDSHAKE_BYTES_MAX = 2 + AVL_IMEI_DIGITS_MAX,
    AVL_UDP_HEADER_BYTES_MIN = 8 + 1, /* len, packet id, byte, avl id, imei len, 1 digit */
    AVL_UDP_ACK_BYTES = 7,
    AVL_TCP_ACK_BYTES = 4,
    AVL_GPRS_MSG_HEADER_BYTES = 5, /* type u8 + size u32 */
};

/* Default and hard ceiling for a whole TCP frame (header + data + CRC). AVL packets are at most
 * about 1.3 KB; Codec 12 camera data exceeds 2 KB. The ceiling keeps every size an int. */
#define AVL_FRAME_BYTES_MAX_DEFAULT (64u * 1024u)
#define AVL_FRAME_BYTES_MAX_CEILING (16u * 1024u * 1024u)

/* PostgreSQL timestamptz ends before 294277-01-01T00:00:00Z (END_TIMESTAMP in
 * src/include/datatype/timestamp.h: 9223371331200000000 us after 2000-01-01). In ms after
 * 1970 that is (9223371331200000000 + 946684800000000) / 1000. A record at or past it is
 * rejected at decode (AVL_E_TS_OUT_OF_RANGE). The wire timestamp is unsigned, so every value
 * below it, including 0 (a tracker before its first fix), is kept. Convert to PostgreSQL's
 * epoch as (ts_ms - 946684800000) * 1000: ts_ms * 1000 alone overflows int64 near the end. */
#define AVL_TS_MS_END UINT64_C(9224318016000000)

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------- */

enum avl_err {
    AVL_OK = 0,
    AVL_NEED_MORE = -1,
    AVL_E_BAD_PREAMBLE = -2,       /* TCP frame does not start with 00 00 00 00 */
    AVL_E_LENGTH_TOO_SMALL = -3,   /* data length below AVL_DATA_BYTES_MIN */
    AVL_E_FRAME_TOO_LARGE = -4,    /* frame longer than frame_bytes_max */
    AVL_E_CODEC_UNKNOWN = -5,      /* codec id not one of 08 8E 10 0C 0D 0E 0F */
    AVL_E_CRC_MISMATCH = -6,       /* CRC-16/IBM of the data field differs from the stored one */
    AVL_E_CRC_HIGH_BITS = -7,      /* upper 16 bits of the CRC field are not zero */
    AVL_E_COUNT_MISMATCH = -8,     /* count 1 != count 2 */
    AVL_E_RECORD_OVERRUN = -9,     /* a record's fixed part runs past count 2 */
    AVL_E_IO_OVERRUN = -10,        /* an IO group count or NX length runs past count 2 */
    AVL_E_IO_TOTAL_MISMATCH = -11, /* IO N_total != sum of the group counts */
    AVL_E_TRAILING_BYTES = -12,    /* bytes left over: records or messages end before count 2,
                                      or the input is longer than the frame it holds */
    AVL_E_TS_OUT_OF_RANGE = -13,   /* timestamp not representable as timestamptz */
    AVL_E_IMEI_LENGTH = -14,       /* IMEI length 0 or above AVL_IMEI_DIGITS_MAX */
    AVL_E_IMEI_DIGITS = -15,       /* IMEI byte that is not an ASCII digit */
    AVL_E_IMEI_BCD = -16,          /* Codec 14/15 packed IMEI with a nibble above 9 */
    AVL_E_TRUNCATED = -17,         /* input ends inside a frame or datagram (no more is coming) */
    AVL_E_UDP_LENGTH = -18,        /* UDP length field + 2 != datagram size */
    AVL_E_MSG_TYPE = -19,          /* GPRS message type not valid for its codec */
    AVL_E_MSG_OVERRUN = -20,       /* GPRS message size runs past count 2 */
    AVL_E_MSG_SIZE = -21,          /* GPRS message smaller than its codec's fixed fields */
    AVL_E_NOT_AVL = -22,           /* an AVL decoder was given a GPRS codec, or the reverse */
    AVL_E_NO_SPACE = -23,          /* encoder: output buffer too small */
    AVL_E_ENCODE_RANGE = -24,      /* encoder: a value does not fit the codec (id, count, NX) */
    AVL_E_ERR_MIN = -24,
};

/* The error's name, e.g. "crc_mismatch" for AVL_E_CRC_MISMATCH (two differ from their enum
 * spelling: AVL_E_UDP_LENGTH is "udp_length_mismatch", AVL_E_NOT_AVL "wrong_frame_kind");
 * "ok" for AVL_OK and values
 * >= 0, "need_more" for AVL_NEED_MORE, "unknown_error" outside the enum. Static storage. */
const char *avl_strerror(int err);

/* ---------------------------------------------------------------------------------------------
 * Codec ids
 * ------------------------------------------------------------------------------------------- */

enum avl_codec {
    AVL_CODEC_8 = 0x08,
    AVL_CODEC_8E = 0x8E,
    AVL_CODEC_16 = 0x10,
    AVL_CODEC_12 = 0x0C,
    AVL_CODEC_13 = 0x0D,
    AVL_CODEC_14 = 0x0E,
    AVL_CODEC_15 = 0x0F,
};

bool avl_codec_is_avl(uint8_t codec);  /* 8, 8E, 16 */
bool avl_codec_is_gprs(uint8_t codec); /* 12, 13, 14, 15 */
/* "8", "8E", "16", "12", "13", "14", "15"; NULL for an unknown codec. Static storage. */
const char *avl_codec_name(uint8_t codec);

/* ---------------------------------------------------------------------------------------------
 * CRC-16/IBM (CRC-16/ARC: poly 0x8005 reflected, init 0, no xorout)
 * ------------------------------------------------------------------------------------------- */

/* CRC of n bytes at p, continuing from crc (pass 0 to start). check("123456789") == 0xBB3D. */
uint16_t avl_crc16(uint16_t crc, const uint8_t *p, size_t n);
/* The bit-at-a-time reference, for tests and benchmarks only. */
uint16_t avl_crc16_bitwise(uint16_t crc, const uint8_t *p, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Frame scanner (TCP stream)
 * ------------------------------------------------------------------------------------------- */

enum avl_scan_mode {
    AVL_SCAN_HANDSHAKE, /* a new connection: 0xFF keep-alives or the IMEI handshake */
    AVL_SCAN_DATA,      /* after the handshake: 0xFF keep-alives or preamble-framed frames */
    AVL_SCAN_ANY,       /* offline tools: a first u16 of 0 means a data frame, else a handshake */
};

enum avl_frame_kind {
    AVL_FRAME_PING = 1, /* one 0xFF byte: ignore it, never reply */
    AVL_FRAME_IMEI,     /* u16 length + ASCII digits; decode with avl_decode_imei() */
    AVL_FRAME_AVL,      /* codec 8, 8E, 16; decode with avl_decode_tcp() */
    AVL_FRAME_GPRS,     /* codec 12, 13, 14, 15; decode with avl_decode_gprs() */
};

struct avl_frame {
    enum avl_frame_kind kind;
    uint8_t codec;  /* for AVL and GPRS frames */
    uint32_t bytes; /* the frame's whole length; with AVL_NEED_MORE: total bytes needed, at least */
};

/* Finds the frame that starts at p[0]. Looks at most at the frame's own bytes and never past
 * p[len-1]. Returns the frame's length (> 0) with *f filled; AVL_NEED_MORE with f->bytes set to
 * the least total length that could complete it; or an error, decided as early as the bytes
 * allow: preamble, length bounds (frame_bytes_max: 0 means the default, larger than
 * AVL_FRAME_BYTES_MAX_CEILING is clamped to it), codec, IMEI length and digits. A strict
 * prefix of a valid frame always gives AVL_NEED_MORE. It does not verify the CRC or the body:
 * the decoders do. len == 0 gives AVL_NEED_MORE with f->bytes == 1. */
int avl_scan(const uint8_t *p, size_t len, enum avl_scan_mode mode, uint32_t frame_bytes_max,
             struct avl_frame *f);

/* ---------------------------------------------------------------------------------------------
 * IMEI
 * ------------------------------------------------------------------------------------------- */

/* Parses 1..AVL_IMEI_DIGITS_MAX ASCII digits into *imei. Returns 0 or AVL_E_IMEI_LENGTH /
 * AVL_E_IMEI_DIGITS. The canonical IMEI is this number; print it with avl_imei_format(). */
int avl_imei_parse(const uint8_t *digits, size_t len, uint64_t *imei);
/* Decodes a complete handshake frame (u16 length + digits, exactly len bytes). Returns 0,
 * AVL_E_TRUNCATED (fewer bytes than the length says), AVL_E_TRAILING_BYTES (more),
 * AVL_E_IMEI_LENGTH or AVL_E_IMEI_DIGITS. */
int avl_decode_imei(const uint8_t *p, size_t len, uint64_t *imei);
/* Writes the IMEI zero-padded to 15 digits (more if it has more) and a NUL into out, which
 * holds AVL_IMEI_DIGITS_MAX + 1 bytes or more. Returns the digit count. imei must satisfy
 * avl_imei_valid() (asserted). */
int avl_imei_format(uint64_t imei, char out[AVL_IMEI_DIGITS_MAX + 1]);
/* True if imei has at most AVL_IMEI_DIGITS_MAX digits. */
bool avl_imei_valid(uint64_t imei);

/* ---------------------------------------------------------------------------------------------
 * AVL records (codecs 8, 8E, 16)
 * ------------------------------------------------------------------------------------------- */

/* The generation of a record that is not Codec 16. A Codec 16 record may carry 0xFF on the
 * wire too: tell the two apart by the record's codec, not by this value. */
#define AVL_GENERATION_NONE 0xFFu

/* One decoded record: fixed size, self-contained except `io`, which points at the record's IO
 * groups inside the packet (the first group count, N1), already bounds-checked. */
struct avl_record {
    uint64_t ts_ms;     /* ms since 1970-01-01T00:00:00Z, < AVL_TS_MS_END */
    int32_t lon_e7;     /* degrees x 1e7, two's complement, as sent */
    int32_t lat_e7;     /* degrees x 1e7, two's complement, as sent */
    int16_t altitude_m; /* signed, as Traccar reads it */
    uint16_t angle_deg; /* heading, 0 = north */
    uint16_t speed_kmh; /* GNSS speed */
    uint8_t satellites; /* 0 = no fix at record time (position is the last fix) */
    uint8_t priority;   /* 0 low, 1 high, 2 panic; other values are kept as sent */
    uint16_t event_id;  /* IO id that triggered the record, 0 = periodic */
    uint8_t generation; /* Codec 16 generation type; AVL_GENERATION_NONE otherwise */
    uint8_t codec;      /* enum avl_codec of the packet */
    uint16_t io_total;  /* N_total, equal to the sum of the group counts */
    uint32_t io_bytes;  /* bytes of the IO groups at `io` */
    const uint8_t *io;  /* IO groups in the packet, from N1 to the end of the last group */
};

/* The header of a decoded AVL packet. */
struct avl_packet {
    uint8_t codec;        /* enum avl_codec: 8, 8E or 16 */
    uint16_t records_len; /* N: records written to the caller's array */
    uint32_t frame_bytes; /* TCP: whole frame; UDP: whole datagram */
    /* UDP only (zero for TCP) */
    uint16_t udp_packet_id;
    uint8_t udp_not_usable; /* byte 4, as sent (0x01 in every known capture) */
    uint8_t udp_avl_packet_id;
    uint64_t imei; /* UDP header IMEI */
};

/* Decodes a complete TCP AVL frame of exactly len bytes (as avl_scan returned it): preamble,
 * data length == len - 12, CRC (and its upper 16 bits), codec, counts, every record, and
 * that the parse ends exactly at count 2. Writes pkt and recs[0 .. N-1]; recs must hold
 * AVL_RECORDS_MAX. Returns 0 or an error; a data length that says more bytes than len gives
 * AVL_E_TRUNCATED, fewer gives AVL_E_TRAILING_BYTES. Never reads outside p[0 .. len-1]. */
int avl_decode_tcp(const uint8_t *p, size_t len, struct avl_packet *pkt,
                   struct avl_record recs[AVL_RECORDS_MAX]);

/* Decodes one UDP datagram of len bytes (no CRC): length field, header, IMEI, then the AVL
 * body exactly as in TCP. Returns 0 or an error. */
int avl_decode_udp(const uint8_t *p, size_t len, struct avl_packet *pkt,
                   struct avl_record recs[AVL_RECORDS_MAX]);

/* Decodes the AVL body only: p points at the codec id, len runs to count 2 inclusive. The
 * shared core of the two above; *records_len receives N. */
int avl_decode_body(const uint8_t *p, size_t len, uint16_t *records_len,
                    struct avl_record recs[AVL_RECORDS_MAX]);

/* One IO element, as the iterator yields it. */
struct avl_io {
    uint16_t id;
    uint16_t len;         /* value bytes: 1, 2, 4 or 8 for fixed groups; any for NX */
    bool nx;              /* from the NX group (8E): a byte string, print it as hex */
    uint64_t value;       /* the unsigned big-endian value, for fixed groups (0 for NX) */
    const uint8_t *bytes; /* the value's bytes in the packet */
};

/* Walks a decoded record's IO groups in wire order: N1, N2, N4, N8, then NX (8E). The record
 * must come from a successful decode and its packet bytes must still be there. The fields
 * are the iterator's own: the codec's layout is resolved once, at init. */
struct avl_io_iter {
    const uint8_t *p;    /* the next count or element */
    uint32_t left;       /* elements left in the current group */
    uint8_t group;       /* 0..3: widths 1, 2, 4, 8; 4: NX; `groups` when done */
    uint8_t groups;      /* 4, or 5 with the NX group (8E) */
    uint8_t id_bytes;    /* 1 (codec 8) or 2 */
    uint8_t count_bytes; /* 1, or 2 (8E) */
};
void avl_io_iter_init(struct avl_io_iter *it, const struct avl_record *r);
/* Fills *io with the next element and returns true, or returns false at the end. */
bool avl_io_next(struct avl_io_iter *it, struct avl_io *io);

/* ---------------------------------------------------------------------------------------------
 * Encoders (loadgen, tests, and replies)
 * ------------------------------------------------------------------------------------------- */

/* An IO element to encode. width 1, 2, 4 or 8 puts it in that group; width 0 puts it in the NX
 * group (8E only) with nx_len bytes at nx. Elements are written group by group (N1, N2, N4,
 * N8, NX) and, inside a group, in the order given. */
struct avl_io_elem {
    uint16_t id;
    uint8_t width;
    uint16_t nx_len;
    uint64_t value;
    const uint8_t *nx;
};

/* A record to encode: the fixed fields come from rec (its io, io_bytes and io_total are
 * ignored; N_total is computed), the IO elements from io[0 .. io_len-1]. */
struct avl_record_src {
    struct avl_record rec;
    const struct avl_io_elem *io;
    uint16_t io_len;
};

/* Encodes a TCP AVL frame (preamble, length, body, CRC) of records_len records into out.
 * Returns the bytes written, AVL_E_NO_SPACE, or AVL_E_ENCODE_RANGE (ids above 255 or counts
 * above 255 for codec 8, NX outside 8E, counts above 255 for codec 16, more than
 * AVL_RECORDS_MAX records, a value wider than its width, a timestamp at or past AVL_TS_MS_END,
 * a frame above AVL_FRAME_BYTES_MAX_CEILING, an unknown codec). rec.generation is written for
 * Codec 16 only. */
int avl_encode_tcp(uint8_t *out, size_t cap, uint8_t codec, const struct avl_record_src *recs,
                   size_t records_len);

/* Encodes a UDP datagram (header + body, no CRC) with the IMEI in canonical digits and byte 4
 * (the "not usable" byte) as 0x01, as every known capture has it; a datagram with another
 * byte 4 or a non-canonical IMEI length therefore does not re-encode byte for byte. Errors
 * as avl_encode_tcp, and AVL_E_ENCODE_RANGE for an IMEI above 17 digits. */
int avl_encode_udp(uint8_t *out, size_t cap, uint16_t packet_id, uint8_t avl_packet_id,
                   uint64_t imei, uint8_t codec, const struct avl_record_src *recs,
                   size_t records_len);

/* The IMEI handshake: u16 length + canonical digits. Returns bytes written. */
int avl_encode_imei(uint8_t *out, size_t cap, uint64_t imei);
/* The TCP ACK: u32 record count. Returns AVL_TCP_ACK_BYTES. */
int avl_encode_tcp_ack(uint8_t out[AVL_TCP_ACK_BYTES], uint32_t records);
/* The UDP ACK: 0005 <packet id> 01 <avl packet id> <records>. Returns AVL_UDP_ACK_BYTES. */
int avl_encode_udp_ack(uint8_t out[AVL_UDP_ACK_BYTES], uint16_t packet_id, uint8_t avl_packet_id,
                       uint8_t records);
/* Decodes a UDP ACK of exactly AVL_UDP_ACK_BYTES. Returns 0 or an error. */
int avl_decode_udp_ack(const uint8_t *p, size_t len, uint16_t *packet_id, uint8_t *avl_packet_id,
                       uint8_t *records);

/* ---------------------------------------------------------------------------------------------
 * GPRS command codecs (12, 13, 14, 15)
 * ------------------------------------------------------------------------------------------- */

enum avl_gprs_type {
    AVL_GPRS_COMMAND = 0x05,  /* server -> device (12, 14); old Codec 13 captures too */
    AVL_GPRS_RESPONSE = 0x06, /* device -> server (12, 13, 14 ACK) */
    AVL_GPRS_FORWARD = 0x0B,  /* Codec 15 device message */
    AVL_GPRS_CAMERA = 0x0D,   /* Codec 12 camera / photo data (binary) */
    AVL_GPRS_NACK = 0x11,     /* Codec 14: IMEI did not match */
};

/* One message of a GPRS frame. payload/size are the whole message body as sent; ts_s, imei
 * and text are its parts by codec: 13 = ts(4) text, 14 = imei(8 BCD) text, 15 = ts(4)
 * imei(8 BCD) text, 12 = text only. */
struct avl_gprs_msg {
    uint8_t type;           /* enum avl_gprs_type */
    uint32_t size;          /* the message's Size field */
    const uint8_t *payload; /* size bytes in the frame */
    uint32_t ts_s;          /* Codec 13, 15; else 0 */
    uint64_t imei;          /* Codec 14, 15; else 0 */
    const uint8_t *text;    /* the text or data part */
    uint32_t text_len;
};

#define AVL_GPRS_MSGS_MAX 255

/* Decodes a complete TCP GPRS frame of exactly len bytes (framing errors as for
 * avl_decode_tcp): preamble, length, CRC, codec,
 * counts, each message's type (valid for its codec), size and fixed fields, and that the
 * messages end exactly at count 2. Writes up to AVL_GPRS_MSGS_MAX messages into msgs and
 * the codec into *codec. Returns the message count (>= 0) or an error. */
int avl_decode_gprs(const uint8_t *p, size_t len, uint8_t *codec,
                    struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX]);

/* Encodes a GPRS frame with msgs_len messages (type, ts_s, imei and text are used; size and
 * payload are computed). Returns bytes written or an error. */
int avl_encode_gprs(uint8_t *out, size_t cap, uint8_t codec, const struct avl_gprs_msg *msgs,
                    size_t msgs_len);

/* A Codec 12 command (type 0x05) with text_len bytes of text: the server's usual call. */
int avl_encode_command(uint8_t *out, size_t cap, const uint8_t *text, uint32_t text_len);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_CODEC_AVL_H */
