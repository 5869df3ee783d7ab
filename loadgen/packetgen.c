/* packetgen.c — seeded generator of Teltonika packets: the PRNG stream, the simulated device,
 * the IO id catalogue modelled on the public corpus, and the byte arithmetic that keeps each
 * generated packet inside its budget. See packetgen.h for the API.
 *
 * Invariants: no allocation and no mutable globals; a packet's sources never exceed its pools;
 * its TCP frame and UDP datagram (IMEI up to 17 digits) never exceed pkt->bytes_max; counts
 * stay within what the codec can carry (u8 counts for 8 and 16, ids <= 255 for 8). Integer
 * arithmetic only, so a seed gives the same bytes everywhere. One thread per object.
 *
 * Realistic shapes (rows are "file line" of ../shared/corpus, decoded with the reference parser):
 *   Codec 8   N1 4..20, N2 1..15, N4 0..11, N8 0..6, ids < 256, about 6..30 IOs per record.
 *             traccar 94 (FMB1YX PDF: 9/12/7/2), 88 (8/3/11/6, ASCII OBD u64s 105..131),
 *             100 (20/3/2/0), 49 (9/5/2/0), 46 (7/3/1/0), 142/145 (6/8/0-1/0), 97 (4/3/3/0,
 *             14 records), alim-zanibekov 383 (UDP, 10/10/7/0), TimeLord 5 (16/15/2/4).
 *             One record in ten is a small event record: traccar 106 (tot 1, {78} in N8).
 *   Codec 8E  N1 5..16, N2 5..20, N4 1..10, N8 0..3, ids up to 1203, then sometimes NX:
 *             traccar 40 (14/29/10/3 + NX 331..334 empty and 387 of 34 ASCII bytes),
 *             37 (9/17/1/2, ids 286..298 and 1200..1203), 19 (11/5/2/1), 55 (6/5/3/0 + VIN 256
 *             of 17 bytes + DTC list 281 of 41), 76 (9/10/0/0 + VIN), TimeLord 46 (5/5/1/0 +
 *             891 of 12 ASCII), alim-zanibekov 308 (5/10/2/0; its last record {317, 247} + NX
 *             257 of 600 bytes), 381/382 (8/9/2/0). One record in ten is a BLE event that
 *             holds only one NX blob of 30..112 bytes with event = its id: traccar 22/26 (548,
 *             69..73 bytes), 29 (10831, 30), 19 second record (11317, 112); some are beacon
 *             lists (385, traccar 58) or small crash/unplug events (traccar 40 record 4).
 *   Codec 16  N1 2..22, N2 1..19, N4 0..15, N8 0..1, ids up to 287, generation 7 (periodic)
 *             mostly, else 5 (on change) or 0..7: traccar 43 (22/9/15/0, gen 7), 21 and 82
 *             (10-11/19/3/0, ids 256..287, gen 7), wiki 9.5 and 9.8 (2/2/0/0 and 4/1/0/0,
 *             gen 5, event 11 / 239).
 *   All codecs: records of one packet share their id set (traccar 40, 43, alim 308 do);
 *   periods of 1..60 s, a fifth with sub-second ms (traccar 22: ...011); priority 0 mostly,
 *   1 sometimes, 2 rarely; satellites 4..20, or 0 with angle and speed 0 and the last position
 *   kept (wiki "invalid fix"); negative lon/lat (traccar 21/40: Chile, TimeLord 46: Mexico).
 */
#include "loadgen/packetgen.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * PRNG: splitmix64 seeds xoshiro256** (Blackman & Vigna, public domain)
 * ------------------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t pktgen_u64(struct pktgen *g)
{
    uint64_t *s = g->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t pktgen_below(struct pktgen *g, uint64_t bound)
{
    /* Reject the low 2^64 mod bound values so every residue is equally likely. */
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = pktgen_u64(g);
        if (r >= threshold)
            return r % bound;
    }
}

/* Uniform in [lo, hi]; hi - lo must be below UINT64_MAX. */
static uint64_t between(struct pktgen *g, uint64_t lo, uint64_t hi)
{
    return lo + pktgen_below(g, hi - lo + 1);
}

/* Roughly triangular in [lo, hi]: real counts cluster in the middle of their range. */
static unsigned tri(struct pktgen *g, unsigned lo, unsigned hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (unsigned)((pktgen_below(g, span) + pktgen_below(g, span)) / 2);
}

static bool chance(struct pktgen *g, unsigned percent)
{
    return pktgen_below(g, 100) < percent;
}

void pktgen_fill_bytes(struct pktgen *g, uint8_t *out, size_t n)
{
    while (n >= 8) {
        uint64_t v = pktgen_u64(g);
        memcpy(out, &v, 8);
        out += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t v = pktgen_u64(g);
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint64_t width_max(uint8_t width)
{
    return width >= 8 ? UINT64_MAX : (UINT64_C(1) << (8 * width)) - 1;
}

/* ---------------------------------------------------------------------------------------------
 * The IO catalogue (FMB / FM63xx AVL ids as the corpus uses them)
 * ------------------------------------------------------------------------------------------- */

enum io_kind {
    IOK_RANGE,    /* uniform in [lo, hi] */
    IOK_SIGNED,   /* uniform in [-lo, hi], two's complement in the width (axes, temperatures) */
    IOK_STATIC,   /* a per-device constant in [lo, hi] (ICCID, cell id, sensor error 3000) */
    IOK_ODOMETER, /* the device's odometer in metres */
    IOK_OPERATOR, /* a per-device MCC+MNC from the corpus */
    IOK_ASCII,    /* width ASCII characters packed big-endian (OBD strings, traccar 88) */
};

struct io_def {
    uint16_t id;
    uint8_t kind;
    uint8_t core; /* nearly every record of a device carries it: listed first */
    uint64_t lo;
    uint64_t hi;
};

/* No id appears in two groups, so a generated record never repeats an id. */
static const struct io_def defs_w1[] = {
    {239, IOK_RANGE, 1, 0, 1},   /* ignition */
    {240, IOK_RANGE, 1, 0, 1},   /* movement */
    {21, IOK_RANGE, 1, 0, 5},    /* GSM signal */
    {200, IOK_RANGE, 1, 0, 4},   /* sleep mode */
    {69, IOK_RANGE, 1, 0, 3},    /* GNSS status */
    {1, IOK_RANGE, 1, 0, 1},     /* DIN1 */
    {80, IOK_RANGE, 0, 0, 5},    /* data mode */
    {2, IOK_RANGE, 0, 0, 1},     /* DIN2 */
    {3, IOK_RANGE, 0, 0, 1},     /* DIN3 */
    {179, IOK_RANGE, 0, 0, 1},   /* DOUT1 */
    {180, IOK_RANGE, 0, 0, 1},   /* DOUT2 */
    {113, IOK_RANGE, 0, 0, 100}, /* battery level % */
    {22, IOK_RANGE, 0, 0, 5},
    {71, IOK_RANGE, 0, 0, 3},
    {247, IOK_RANGE, 0, 0, 5}, /* crash detection */
    {252, IOK_RANGE, 0, 0, 1}, /* unplug */
    {253, IOK_RANGE, 0, 1, 3}, /* green driving type */
    {254, IOK_RANGE, 0, 0, 255},
    {255, IOK_RANGE, 0, 0, 200}, /* over speeding */
    {250, IOK_RANGE, 0, 0, 1},
    {251, IOK_RANGE, 0, 0, 1},
    {246, IOK_RANGE, 0, 0, 1},
    {175, IOK_RANGE, 0, 0, 1},
    {85, IOK_RANGE, 0, 0, 100},
    {81, IOK_RANGE, 0, 0, 1},
    {82, IOK_RANGE, 0, 0, 1},
    {83, IOK_RANGE, 0, 0, 1},
    {110, IOK_STATIC, 0, 0, 0},
    {111, IOK_STATIC, 0, 0, 0},
    {122, IOK_RANGE, 0, 0, 3},
    {127, IOK_RANGE, 0, 0, 100},
    {137, IOK_STATIC, 0, 0, 0},
    {144, IOK_STATIC, 0, 0, 0},
    {178, IOK_STATIC, 0, 0, 0},
    {101, IOK_STATIC, 0, 0, 0},
    {157, IOK_RANGE, 0, 0, 2},
    {158, IOK_RANGE, 0, 0, 2},
    {159, IOK_RANGE, 0, 0, 2},
    {160, IOK_RANGE, 0, 0, 2},
    {29, IOK_RANGE, 0, 0, 1},
    {20, IOK_RANGE, 0, 0, 1},
    {23, IOK_RANGE, 0, 0, 1},
    {30, IOK_RANGE, 0, 0, 10},
    {116, IOK_RANGE, 0, 0, 1},
    {115, IOK_RANGE, 0, 0, 1},
    {120, IOK_RANGE, 0, 0, 1},
    {79, IOK_RANGE, 0, 0, 255},
    {4, IOK_RANGE, 0, 0, 1},
    /* above 255: 8E (traccar 19, 37, 40) and 16 (traccar 82) only */
    {263, IOK_RANGE, 0, 0, 4}, /* BT status */
    {380, IOK_RANGE, 0, 0, 1}, /* DOUT3 */
    {286, IOK_RANGE, 0, 0, 60},
    {289, IOK_RANGE, 0, 0, 60},
    {292, IOK_RANGE, 0, 0, 60},
    {295, IOK_RANGE, 0, 0, 60},
    {298, IOK_RANGE, 0, 0, 60},
    {303, IOK_RANGE, 0, 0, 1},
    {261, IOK_STATIC, 0, 0, 0},
    {262, IOK_STATIC, 0, 0, 0},
    {269, IOK_STATIC, 0, 0, 0},
    {271, IOK_STATIC, 0, 0, 0},
    {278, IOK_STATIC, 0, 0, 0},
    {280, IOK_STATIC, 0, 0, 0},
};

static const struct io_def defs_w2[] = {
    {66, IOK_RANGE, 1, 11000, 14800}, /* external voltage, mV */
    {67, IOK_RANGE, 1, 3700, 4200},   /* battery voltage, mV */
    {181, IOK_RANGE, 1, 0, 50},       /* PDOP x10 */
    {182, IOK_RANGE, 1, 0, 50},       /* HDOP x10 */
    {24, IOK_RANGE, 1, 0, 130},       /* speed */
    {68, IOK_RANGE, 0, 0, 500},       /* battery current */
    {205, IOK_STATIC, 0, 1, 65535},   /* GSM cell id */
    {206, IOK_STATIC, 0, 1, 65535},   /* GSM area code */
    {17, IOK_SIGNED, 0, 1000, 1000},  /* axis X, signed */
    {18, IOK_SIGNED, 0, 1000, 1000},
    {19, IOK_SIGNED, 0, 1000, 1000},
    {15, IOK_RANGE, 0, 0, 1000}, /* eco score */
    {9, IOK_RANGE, 0, 0, 30000}, /* AIN1 */
    {10, IOK_RANGE, 0, 0, 30000},
    {13, IOK_RANGE, 0, 0, 100},
    {25, IOK_STATIC, 0, 3000, 3000}, /* BLE temperature: 3000 = no sensor (traccar 40) */
    {26, IOK_STATIC, 0, 3000, 3000},
    {27, IOK_STATIC, 0, 3000, 3000},
    {28, IOK_STATIC, 0, 3000, 3000},
    {106, IOK_STATIC, 0, 3000, 3000},
    {108, IOK_STATIC, 0, 3000, 3000},
    {198, IOK_RANGE, 0, 0, 255},
    {197, IOK_RANGE, 0, 0, 255},
    {70, IOK_SIGNED, 0, 200, 600}, /* PCB temperature x10 */
    {128, IOK_RANGE, 0, 0, 100},
    {36, IOK_RANGE, 0, 0, 6000}, /* engine rpm */
    /* above 255 */
    {270, IOK_STATIC, 0, 0, 0},
    {273, IOK_STATIC, 0, 0, 0},
    {276, IOK_STATIC, 0, 0, 0},
    {279, IOK_STATIC, 0, 0, 0},
    {335, IOK_STATIC, 0, 0, 0},
    {336, IOK_STATIC, 0, 0, 0},
    {287, IOK_RANGE, 0, 0, 65535},
    {288, IOK_RANGE, 0, 0, 65535},
    {290, IOK_RANGE, 0, 0, 65535},
    {291, IOK_RANGE, 0, 0, 65535},
    {1200, IOK_RANGE, 0, 0, 3},
    {1201, IOK_RANGE, 0, 0, 3},
    {1202, IOK_RANGE, 0, 0, 3},
    {1203, IOK_RANGE, 0, 0, 3},
    {264, IOK_STATIC, 0, 0, 0},
    {265, IOK_STATIC, 0, 0, 0},
    {266, IOK_STATIC, 0, 0, 0},
    {267, IOK_STATIC, 0, 0, 0},
};

static const struct io_def defs_w4[] = {
    {241, IOK_OPERATOR, 1, 0, 0},    /* active GSM operator */
    {16, IOK_ODOMETER, 1, 0, 0},     /* total odometer, m */
    {199, IOK_RANGE, 1, 0, 100000},  /* trip odometer, m */
    {12, IOK_RANGE, 0, 0, 100000},   /* fuel used */
    {72, IOK_STATIC, 0, 3000, 3000}, /* Dallas temperature: 3000 = sensor error */
    {73, IOK_STATIC, 0, 3000, 3000},   {74, IOK_STATIC, 0, 3000, 3000},
    {76, IOK_STATIC, 0, 0, 0},         {86, IOK_RANGE, 0, 0, 100000},
    {87, IOK_RANGE, 0, 0, 200},        {88, IOK_RANGE, 0, 0, 2000},
    {104, IOK_RANGE, 0, 0, 10000},     {109, IOK_STATIC, 0, 0, 1000000000},
    {135, IOK_RANGE, 0, 0, 32},        {136, IOK_RANGE, 0, 0, 32},
    {138, IOK_RANGE, 0, 0, 100000},    {139, IOK_RANGE, 0, 0, 100000},
    {216, IOK_RANGE, 0, 0, 300000000}, {84, IOK_STATIC, 0, 0, 0},
    {89, IOK_STATIC, 0, 0, 0},         {93, IOK_STATIC, 0, 0, 0},
    {449, IOK_STATIC, 0, 0, 0},        {306, IOK_STATIC, 0, 0, 0},
    {307, IOK_STATIC, 0, 0, 0},        {308, IOK_STATIC, 0, 0, 0},
    {309, IOK_STATIC, 0, 0, 0},        {258, IOK_STATIC, 0, 0, 0},
    {259, IOK_STATIC, 0, 0, 0},        {260, IOK_STATIC, 0, 0, 0},
};

static const struct io_def defs_w8[] = {
    {11, IOK_STATIC, 1, UINT64_C(8900000000), UINT64_C(899999999999)}, /* ICCID part 1 */
    {14, IOK_STATIC, 1, 0, 999999999},                                 /* ICCID part 2 */
    {78, IOK_STATIC, 0, 0, 0},                                         /* iButton: none */
    {238, IOK_STATIC, 0, 0, (UINT64_C(1) << 48) - 1},                  /* user id (MAC) */
    {207, IOK_STATIC, 0, 0, UINT64_C(0xFFFFFFFFFF)},                   /* RFID */
    {105, IOK_ASCII, 0, 0, 0}, /* OBD strings as in traccar 88 */
    {107, IOK_ASCII, 0, 0, 0},
    {129, IOK_ASCII, 0, 0, 0},
    {130, IOK_ASCII, 0, 0, 0},
    {131, IOK_ASCII, 0, 0, 0},
};

static const uint32_t operators[] = {24601, 24602, 26201, 24201, 25501,
                                     21403, 20820, 73002, 23410, 310260};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const struct io_def *const catalogue[4] = {defs_w1, defs_w2, defs_w4, defs_w8};
static const uint8_t catalogue_len[4] = {ARRAY_LEN(defs_w1), ARRAY_LEN(defs_w2), ARRAY_LEN(defs_w4),
                                         ARRAY_LEN(defs_w8)};
static const uint8_t group_width[4] = {1, 2, 4, 8};

_Static_assert(ARRAY_LEN(defs_w1) <= PKTGEN_CATALOGUE_MAX, "order[] holds the catalogue");
_Static_assert(ARRAY_LEN(defs_w2) <= PKTGEN_CATALOGUE_MAX, "order[] holds the catalogue");
_Static_assert(ARRAY_LEN(defs_w4) <= PKTGEN_CATALOGUE_MAX, "order[] holds the catalogue");
_Static_assert(ARRAY_LEN(defs_w8) <= PKTGEN_CATALOGUE_MAX, "order[] holds the catalogue");

/* NX ids of the corpus (8E only). */
enum {
    NX_VIN = 256,     /* 17 ASCII characters (traccar 55, 76; PDF-FM64 9.11) */
    NX_BIG = 257,     /* 400..600 bytes (alim-zanibekov 308: 600) */
    NX_DTC = 281,     /* "P0299,P0675,..." (traccar 55) */
    NX_BEACONS = 385, /* beacon list (traccar 58: 23 bytes) */
    NX_GEO = 387,     /* 34 ASCII bytes (traccar 40) */
    NX_EMPTY0 = 331,  /* 331..334 with length 0 (traccar 40) */
    NX_ASCII12 = 891, /* 12 ASCII hex digits (TimeLord 46) */
};
static const uint16_t nx_ble_ids[] = {548, 10828, 10829, 10831, 11317};

/* ---------------------------------------------------------------------------------------------
 * Wire arithmetic
 * ------------------------------------------------------------------------------------------- */

enum {
    GPS_BYTES = 24,                             /* timestamp .. speed */
    BODY_EMPTY_BYTES = 3,                       /* codec id, count 1, count 2 */
    UDP_OVERHEAD_MAX = 8 + AVL_IMEI_DIGITS_MAX, /* len, ids, imei len, 17 digits */
};

/* Bytes in front of N1: event id and N_total (u8 each for 8; u16 each for 8E; for 16 a u16
 * event id, the generation and a u8 N_total). */
static uint32_t io_lead_bytes(uint8_t codec)
{
    return codec == AVL_CODEC_8 ? 2 : 4;
}

/* The group counts: four u8 (8, 16) or five u16 (8E, with NX). */
static uint32_t io_counts_bytes(uint8_t codec)
{
    return codec == AVL_CODEC_8E ? 5 * 2 : 4;
}

/* The IO element of a record with no IO. */
static uint32_t io_head_bytes(uint8_t codec)
{
    return io_lead_bytes(codec) + io_counts_bytes(codec);
}

static uint32_t record_min_bytes(uint8_t codec)
{
    return GPS_BYTES + io_head_bytes(codec);
}

static uint32_t elem_bytes(uint8_t codec, uint8_t width, uint16_t nx_len)
{
    if (width == 0)
        return 2u + 2u + nx_len;
    return (codec == AVL_CODEC_8 ? 1u : 2u) + width;
}

uint32_t pktgen_io_bytes(uint8_t codec, const struct avl_record_src *src)
{
    /* The decoder's io span starts at N1, after the lead bytes. */
    uint32_t n = io_counts_bytes(codec);
    for (uint32_t i = 0; i < src->io_len; i++)
        n += elem_bytes(codec, src->io[i].width, src->io[i].nx_len);
    return n;
}

uint32_t pktgen_record_bytes(uint8_t codec, const struct avl_record_src *src)
{
    uint32_t n = record_min_bytes(codec);
    for (uint32_t i = 0; i < src->io_len; i++)
        n += elem_bytes(codec, src->io[i].width, src->io[i].nx_len);
    return n;
}

static uint32_t imei_digits(uint64_t imei)
{
    uint32_t d = 1;
    while (imei >= 10) {
        imei /= 10;
        d++;
    }
    return d < AVL_IMEI_CANONICAL_DIGITS ? AVL_IMEI_CANONICAL_DIGITS : d;
}

uint32_t pktgen_tcp_bytes(const struct pktgen_packet *pkt)
{
    return AVL_TCP_OVERHEAD_BYTES + pkt->body_bytes;
}

uint32_t pktgen_udp_bytes(const struct pktgen_packet *pkt, uint64_t imei)
{
    return 8 + imei_digits(imei) + pkt->body_bytes;
}

/* ---------------------------------------------------------------------------------------------
 * The simulated device
 * ------------------------------------------------------------------------------------------- */

#define TS_2019_MS   UINT64_C(1546300800000) /* 2019-01-01T00:00:00Z */
#define TS_2025H2_MS UINT64_C(1751328000000) /* 2025-07-01 */
#define TS_2027_MS   UINT64_C(1798761600000) /* 2027-01-01: wrap back to 2019 */

static int codec_slot(uint8_t codec)
{
    return codec == AVL_CODEC_8 ? 0 : codec == AVL_CODEC_8E ? 1 : 2;
}

static uint64_t hash64(uint64_t x)
{
    return splitmix64(&x);
}

static void shuffle(struct pktgen *g, uint8_t *a, unsigned n)
{
    for (unsigned i = n; i > 1; i--) {
        unsigned j = (unsigned)pktgen_below(g, i);
        uint8_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static void seed_stream(struct pktgen *g, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        g->s[i] = splitmix64(&x);
}

void pktgen_reseed(struct pktgen *g, uint64_t seed)
{
    seed_stream(g, seed);
}

void pktgen_init(struct pktgen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    seed_stream(g, seed);
    g->device_salt = pktgen_u64(g);
    g->imei = (chance(g, 50) ? UINT64_C(35) : UINT64_C(86)) * UINT64_C(10000000000000) +
              pktgen_below(g, UINT64_C(10000000000000));
    g->ts_ms = between(g, TS_2019_MS, TS_2025H2_MS);
    g->lon_e7 = (int32_t)((int64_t)between(g, 0, 3600000000u) - 1800000000);
    g->lat_e7 = (int32_t)((int64_t)between(g, 0, 1700000000u) - 850000000);
    g->altitude_m = (int16_t)((int)between(g, 0, 520) - 20);
    g->angle_deg = (uint16_t)pktgen_below(g, 360);
    g->odometer_m = (uint32_t)pktgen_below(g, 500000000);
    g->udp_packet_id = (uint16_t)pktgen_u64(g);
    g->udp_avl_packet_id = (uint8_t)pktgen_u64(g);
    /* Each device lists its ids in its own order, the ones nearly every device sends first. */
    for (int slot = 0; slot < 3; slot++) {
        for (int grp = 0; grp < 4; grp++) {
            uint8_t *o = g->order[slot][grp];
            unsigned n = 0, core = 0;
            for (int pass = 0; pass < 2; pass++) {
                for (unsigned i = 0; i < catalogue_len[grp]; i++) {
                    const struct io_def *d = &catalogue[grp][i];
                    if ((slot == 0 && d->id > 255) || d->core != (pass == 0))
                        continue;
                    o[n++] = (uint8_t)i;
                }
                if (pass == 0)
                    core = n;
            }
            shuffle(g, o, core);
            shuffle(g, o + core, n - core);
            g->order_len[slot][grp] = (uint8_t)n;
        }
    }
}

/* A cosine stand-in in thousandths (a triangle wave): deterministic and good enough to move a
 * simulated vehicle roughly along its heading. */
static int tri_cos(int deg)
{
    deg = ((deg % 360) + 360) % 360;
    return deg <= 180 ? 1000 - deg * 2000 / 180 : -1000 + (deg - 180) * 2000 / 180;
}

static void device_advance(struct pktgen *g, struct avl_record *r)
{
    uint64_t dt_ms = 1000 * between(g, 1, 60);
    if (chance(g, 20))
        dt_ms += between(g, 1, 999);
    g->ts_ms += dt_ms;
    if (g->ts_ms >= TS_2027_MS)
        g->ts_ms = TS_2019_MS + pktgen_below(g, 86400000);

    bool fix = !chance(g, 5);
    bool moving = fix && chance(g, 65);
    uint16_t speed = 0;
    if (moving) {
        speed = (uint16_t)between(g, 5, 130);
        g->angle_deg = (uint16_t)((g->angle_deg + 360 + between(g, 0, 60) - 30) % 360);
        int64_t d = (int64_t)speed * (int64_t)dt_ms / 40; /* 1 m is about 90e-7 degrees */
        int64_t lat = g->lat_e7 + d * tri_cos(g->angle_deg) / 1000;
        int64_t lon = g->lon_e7 + d * tri_cos(g->angle_deg - 90) / 1000;
        if (lat > 850000000 || lat < -850000000) {
            lat = g->lat_e7;
            g->angle_deg = (uint16_t)((g->angle_deg + 180) % 360);
        }
        if (lon > 1800000000)
            lon -= 3600000000;
        if (lon < -1800000000)
            lon += 3600000000;
        g->lat_e7 = (int32_t)lat;
        g->lon_e7 = (int32_t)lon;
        g->odometer_m += (uint32_t)((uint64_t)speed * dt_ms / 3600);
        int alt = g->altitude_m + (int)between(g, 0, 10) - 5;
        g->altitude_m = (int16_t)(alt < -100 ? -100 : alt > 4000 ? 4000 : alt);
    }

    memset(r, 0, sizeof *r);
    r->ts_ms = g->ts_ms;
    unsigned p = (unsigned)pktgen_below(g, 100);
    r->priority = p < 80 ? 0 : p < 97 ? 1 : 2;
    /* Without a fix the last position stays and angle, satellites, speed are 0 (wiki). */
    r->lon_e7 = g->lon_e7;
    r->lat_e7 = g->lat_e7;
    r->altitude_m = g->altitude_m;
    r->satellites = fix ? (uint8_t)between(g, 4, 20) : 0;
    r->angle_deg = fix ? g->angle_deg : 0;
    r->speed_kmh = speed;
    r->generation = AVL_GENERATION_NONE;
}

static uint64_t io_value(struct pktgen *g, const struct io_def *d, uint8_t width)
{
    uint64_t v = 0;
    switch ((enum io_kind)d->kind) {
    case IOK_RANGE:
        v = between(g, d->lo, d->hi);
        break;
    case IOK_SIGNED:
        v = (uint64_t)((int64_t)between(g, 0, d->lo + d->hi) - (int64_t)d->lo);
        break;
    case IOK_STATIC:
        v = d->lo + hash64(g->device_salt ^ d->id) % (d->hi - d->lo + 1);
        break;
    case IOK_ODOMETER:
        v = g->odometer_m;
        break;
    case IOK_OPERATOR:
        v = operators[hash64(g->device_salt) % ARRAY_LEN(operators)];
        break;
    case IOK_ASCII: {
        static const char alnum[] = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
        uint64_t h = hash64(g->device_salt + d->id);
        for (int i = 0; i < 8; i++, h /= 33)
            v = (v << 8) | (uint8_t)alnum[h % 33];
        break;
    }
    }
    return v & width_max(width);
}

/* ---------------------------------------------------------------------------------------------
 * Building one record inside the packet's pools and budget
 * ------------------------------------------------------------------------------------------- */

struct builder {
    struct pktgen_packet *pkt;
    struct avl_io_elem *io; /* this record's first element: pkt->io + pkt->io_len */
    uint32_t io_len;
    uint32_t nx_used;
    uint32_t bytes;     /* the record's wire bytes so far */
    uint32_t bytes_max; /* the record's budget */
    uint32_t io_total_max;
};

static void builder_init(struct builder *b, struct pktgen_packet *pkt, uint32_t bytes_max)
{
    b->pkt = pkt;
    b->io = pkt->io + pkt->io_len;
    b->io_len = 0;
    b->nx_used = 0;
    b->bytes = record_min_bytes(pkt->codec);
    b->bytes_max = bytes_max;
    /* N_total is a u8 for 8 and 16 and a u16 for 8E. */
    b->io_total_max = pkt->codec == AVL_CODEC_8E ? 0xFFFF : 0xFF;
}

static bool builder_room(const struct builder *b, uint32_t elem)
{
    return b->io_len < b->io_total_max && b->pkt->io_len + b->io_len < PKTGEN_IO_MAX &&
           b->bytes + elem <= b->bytes_max;
}

static bool builder_add(struct builder *b, uint16_t id, uint8_t width, uint64_t value)
{
    if (b->pkt->codec == AVL_CODEC_8 && id > 0xFF)
        return false;
    uint32_t n = elem_bytes(b->pkt->codec, width, 0);
    if (!builder_room(b, n))
        return false;
    b->io[b->io_len++] = (struct avl_io_elem){.id = id, .width = width, .value = value};
    b->bytes += n;
    return true;
}

/* Adds an NX element of len bytes and returns where to write them, or NULL without room. */
static uint8_t *builder_add_nx(struct builder *b, uint16_t id, uint16_t len)
{
    struct pktgen_packet *pkt = b->pkt;
    uint32_t n = elem_bytes(pkt->codec, 0, len);
    if (pkt->codec != AVL_CODEC_8E || !builder_room(b, n) ||
        pkt->nx_len + b->nx_used + len > PKTGEN_NX_BYTES_MAX)
        return NULL;
    uint8_t *at = pkt->nx + pkt->nx_len + b->nx_used;
    b->io[b->io_len++] = (struct avl_io_elem){.id = id, .width = 0, .nx_len = len, .nx = at};
    b->nx_used += len;
    b->bytes += n;
    return at;
}

static void builder_commit(struct builder *b, struct avl_record_src *src)
{
    struct pktgen_packet *pkt = b->pkt;
    src->io = b->io;
    src->io_len = (uint16_t)b->io_len;
    src->rec.codec = pkt->codec;
    pkt->io_len += b->io_len;
    pkt->nx_len += b->nx_used;
    pkt->body_bytes += b->bytes;
    pkt->records_len++;
}

/* Bytes left for the next record: the UDP datagram with a 17-digit IMEI is the larger form. */
static uint32_t packet_room(const struct pktgen_packet *pkt)
{
    uint32_t used = UDP_OVERHEAD_MAX + pkt->body_bytes;
    return pkt->bytes_max > used ? pkt->bytes_max - used : 0;
}

void pktgen_packet_reset(struct pktgen_packet *pkt, uint8_t codec, uint32_t bytes_max)
{
    pkt->codec = codec;
    pkt->records_len = 0;
    pkt->bytes_max = bytes_max > PKTGEN_FRAME_BYTES_MAX ? PKTGEN_FRAME_BYTES_MAX : bytes_max;
    pkt->body_bytes = BODY_EMPTY_BYTES;
    pkt->io_len = 0;
    pkt->nx_len = 0;
    memset(pkt->shape, 0, sizeof pkt->shape);
    pkt->shape_set = 0;
    pkt->udp_packet_id = 0;
    pkt->udp_avl_packet_id = 0;
    pkt->imei = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Realistic records
 * ------------------------------------------------------------------------------------------- */

static void fill_alnum(struct pktgen *g, uint8_t *p, unsigned n, const char *alphabet)
{
    size_t k = strlen(alphabet);
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)alphabet[pktgen_below(g, k)];
}

/* Tag-length-value blobs like the BLE sensor NX elements (traccar 22, 26, 29). */
static void fill_tlv(struct pktgen *g, uint8_t *p, unsigned n)
{
    while (n >= 3) {
        unsigned len = (unsigned)between(g, 1, 16);
        if (len > n - 2)
            len = n - 2;
        p[0] = (uint8_t)between(g, 1, 15);
        p[1] = (uint8_t)len;
        pktgen_fill_bytes(g, p + 2, len);
        p += 2 + len;
        n -= 2 + len;
    }
    pktgen_fill_bytes(g, p, n);
}

static void add_nx_realistic(struct pktgen *g, struct builder *b, uint16_t id)
{
    uint8_t *p;
    switch (id) {
    case NX_VIN:
        if ((p = builder_add_nx(b, id, 17))) {
            /* One VIN per device: drawn from a stream seeded by the device, not from g. */
            struct pktgen vin;
            seed_stream(&vin, g->device_salt);
            fill_alnum(&vin, p, 17, "ABCDEFGHJKLMNPRSTUVWXYZ0123456789");
        }
        break;
    case NX_DTC: {
        unsigned k = (unsigned)between(g, 1, 7);
        if ((p = builder_add_nx(b, id, (uint16_t)(6 * k - 1)))) {
            for (unsigned i = 0; i < k; i++) {
                char code[7];
                snprintf(code, sizeof code, "P%04u,", (unsigned)pktgen_below(g, 3000));
                memcpy(p + 6 * i, code, i + 1 < k ? 6 : 5);
            }
        }
        break;
    }
    case NX_ASCII12:
        if ((p = builder_add_nx(b, id, 12)))
            fill_alnum(g, p, 12, "0123456789ABCDEF");
        break;
    case NX_GEO:
        if ((p = builder_add_nx(b, id, 34)))
            fill_alnum(g, p, 34, "0123456789.+-/");
        break;
    case NX_BEACONS: {
        uint16_t len = (uint16_t)between(g, 13, 60);
        if ((p = builder_add_nx(b, id, len))) {
            pktgen_fill_bytes(g, p, len);
            p[0] = 0x01;
        }
        break;
    }
    case NX_BIG: {
        uint16_t len = (uint16_t)between(g, 400, 600);
        if ((p = builder_add_nx(b, id, len)))
            pktgen_fill_bytes(g, p, len);
        break;
    }
    default: /* BLE */ {
        uint16_t len = (uint16_t)between(g, 30, 112);
        if ((p = builder_add_nx(b, id, len)))
            fill_tlv(g, p, len);
        break;
    }
    }
}

/* Group counts of a full record, chosen once per packet (see the shapes at the top). */
static void choose_shape(struct pktgen *g, struct pktgen_packet *pkt)
{
    uint8_t *s = pkt->shape;
    switch (pkt->codec) {
    case AVL_CODEC_8:
        s[0] = (uint8_t)tri(g, 4, 20);
        s[1] = (uint8_t)tri(g, 1, 15);
        s[2] = (uint8_t)(chance(g, 25) ? 0 : tri(g, 1, 11));
        s[3] = (uint8_t)(chance(g, 60) ? 0 : tri(g, 1, 6));
        break;
    case AVL_CODEC_8E:
        s[0] = (uint8_t)tri(g, 5, 16);
        s[1] = (uint8_t)tri(g, 5, 20);
        s[2] = (uint8_t)tri(g, 1, 10);
        s[3] = (uint8_t)tri(g, 0, 3);
        /* NX extras as a bit set: VIN, DTC list, 891, 387, the four empty 331..334. */
        s[4] = 0;
        if (chance(g, 35))
            s[4] = (uint8_t)(between(g, 1, 31) & (chance(g, 50) ? 0x1F : 0x03));
        break;
    default:
        s[0] = (uint8_t)tri(g, 2, 22);
        s[1] = (uint8_t)tri(g, 1, 19);
        s[2] = (uint8_t)(chance(g, 15) ? 0 : tri(g, 1, 15));
        s[3] = (uint8_t)(chance(g, 90) ? 0 : 1);
        break;
    }
    pkt->shape_set = 1;
}

static void record_full(struct pktgen *g, struct builder *b, struct avl_record *r)
{
    struct pktgen_packet *pkt = b->pkt;
    int slot = codec_slot(pkt->codec);
    if (!pkt->shape_set)
        choose_shape(g, pkt);
    for (int grp = 0; grp < 4; grp++) {
        unsigned n = pkt->shape[grp];
        if (n > g->order_len[slot][grp])
            n = g->order_len[slot][grp];
        for (unsigned i = 0; i < n; i++) {
            const struct io_def *d = &catalogue[grp][g->order[slot][grp][i]];
            if (!builder_add(b, d->id, group_width[grp], io_value(g, d, group_width[grp])))
                return; /* out of budget: the record is cut short */
        }
    }
    if (pkt->codec == AVL_CODEC_8E) {
        uint8_t x = pkt->shape[4];
        if (x & 0x01)
            add_nx_realistic(g, b, NX_VIN);
        if (x & 0x02)
            add_nx_realistic(g, b, NX_DTC);
        if (x & 0x04)
            add_nx_realistic(g, b, NX_ASCII12);
        if (x & 0x08)
            add_nx_realistic(g, b, NX_GEO);
        for (int i = 0; (x & 0x10) && i < 4; i++)
            builder_add_nx(b, (uint16_t)(NX_EMPTY0 + i), 0);
    }
    /* Most records are periodic (event 0); the others name one of their own ids. */
    if (b->io_len > 0 && chance(g, 30))
        r->event_id = b->io[pktgen_below(g, b->io_len)].id;
}

static void record_small_event(struct pktgen *g, struct builder *b, struct avl_record *r)
{
    static const uint8_t ids[] = {247, 252, 240, 239, 1};
    switch (b->pkt->codec) {
    case AVL_CODEC_8:
        /* traccar 106: a single iButton in N8 */
        if (chance(g, 50)) {
            r->event_id = 78;
            builder_add(b, 78, 8, 0);
            return;
        }
        break;
    case AVL_CODEC_16:
        /* wiki 9.8: N1 {1, 3, 180, 239}, N2 {66}, event 239, generation 5 */
        r->event_id = 239;
        r->generation = 5;
        builder_add(b, 1, 1, between(g, 0, 1));
        builder_add(b, 3, 1, between(g, 0, 1));
        builder_add(b, 180, 1, between(g, 0, 1));
        builder_add(b, 239, 1, between(g, 0, 1));
        builder_add(b, 66, 2, between(g, 11000, 14800));
        return;
    default:
        break;
    }
    /* traccar 40 record 4, alim-zanibekov 308 record 4 (with a 600-byte NX 257) */
    uint8_t id = ids[pktgen_below(g, ARRAY_LEN(ids))];
    r->event_id = id;
    builder_add(b, id, 1, between(g, 1, 5));
    if (b->pkt->codec == AVL_CODEC_8E && chance(g, 20))
        add_nx_realistic(g, b, NX_BIG);
}

static void record_realistic(struct pktgen *g, struct pktgen_packet *pkt, uint32_t bytes_max)
{
    struct avl_record_src *src = &pkt->recs[pkt->records_len];
    struct avl_record *r = &src->rec;
    struct builder b;
    device_advance(g, r);
    builder_init(&b, pkt, bytes_max);
    unsigned roll = (unsigned)pktgen_below(g, 100);
    switch (pkt->codec) {
    case AVL_CODEC_8:
        if (roll < 10)
            record_small_event(g, &b, r);
        else
            record_full(g, &b, r);
        break;
    case AVL_CODEC_8E:
        if (roll < 10) {
            /* BLE event: one NX blob and nothing else, event = its id */
            uint16_t id = nx_ble_ids[pktgen_below(g, ARRAY_LEN(nx_ble_ids))];
            r->event_id = id;
            add_nx_realistic(g, &b, id);
        } else if (roll < 13) {
            r->event_id = NX_BEACONS;
            add_nx_realistic(g, &b, NX_BEACONS);
        } else if (roll < 18) {
            record_small_event(g, &b, r);
        } else {
            record_full(g, &b, r);
        }
        break;
    default:
        r->priority = 0; /* every Codec 16 record in the corpus has priority 0 */
        if (roll < 5) {
            record_small_event(g, &b, r);
        } else {
            unsigned gr = (unsigned)pktgen_below(g, 100);
            r->generation = gr < 75 ? 7 : gr < 95 ? 5 : (uint8_t)pktgen_below(g, 8);
            record_full(g, &b, r);
        }
        break;
    }
    builder_commit(&b, src);
}

/* ---------------------------------------------------------------------------------------------
 * Arbitrary records: every value the wire format carries, biased to the edges
 * ------------------------------------------------------------------------------------------- */

static uint64_t edge_value(struct pktgen *g, uint64_t max)
{
    switch (pktgen_below(g, 8)) {
    case 0:
        return 0;
    case 1:
        return max;
    case 2:
        return 1;
    case 3:
        return max - 1;
    case 4:
        return (max >> 1) + 1; /* the sign bit alone */
    default:
        return pktgen_u64(g) & max;
    }
}

static uint16_t edge_id(struct pktgen *g, uint8_t codec)
{
    if (codec == AVL_CODEC_8)
        return (uint16_t)edge_value(g, 0xFF);
    switch (pktgen_below(g, 10)) {
    case 0:
        return 0xFF;
    case 1:
        return 0x100;
    default:
        return (uint16_t)edge_value(g, 0xFFFF);
    }
}

static int32_t edge_i32(struct pktgen *g)
{
    switch (pktgen_below(g, 6)) {
    case 0:
        return INT32_MIN;
    case 1:
        return INT32_MAX;
    case 2:
        return 0;
    case 3:
        return -1;
    default:
        return (int32_t)(uint32_t)pktgen_u64(g);
    }
}

static uint64_t edge_ts(struct pktgen *g)
{
    switch (pktgen_below(g, 8)) {
    case 0:
        return 0;
    case 1:
        return AVL_TS_MS_END - 1;
    case 2:
        return 1;
    case 3:
        return pktgen_below(g, AVL_TS_MS_END);
    case 4:
        return UINT32_MAX;
    case 5:
        return UINT64_C(1) << 32;
    default:
        return between(g, TS_2019_MS, TS_2027_MS);
    }
}

static uint16_t edge_nx_len(struct pktgen *g)
{
    unsigned r = (unsigned)pktgen_below(g, 100);
    if (r < 25)
        return 0;
    if (r < 60)
        return (uint16_t)between(g, 1, 16);
    if (r < 85)
        return (uint16_t)between(g, 17, 255);
    return (uint16_t)between(g, 256, 1100);
}

static void record_arbitrary(struct pktgen *g, struct pktgen_packet *pkt, uint32_t bytes_max)
{
    uint8_t codec = pkt->codec;
    struct avl_record_src *src = &pkt->recs[pkt->records_len];
    struct avl_record *r = &src->rec;
    memset(r, 0, sizeof *r);
    r->ts_ms = edge_ts(g);
    r->priority = chance(g, 75) ? (uint8_t)pktgen_below(g, 3) : (uint8_t)pktgen_u64(g);
    r->lon_e7 = edge_i32(g);
    r->lat_e7 = edge_i32(g);
    r->altitude_m = (int16_t)(uint16_t)edge_value(g, 0xFFFF);
    r->angle_deg = (uint16_t)edge_value(g, 0xFFFF);
    r->speed_kmh = (uint16_t)edge_value(g, 0xFFFF);
    r->satellites = (uint8_t)edge_value(g, 0xFF);
    r->event_id = edge_id(g, codec);
    r->generation = AVL_GENERATION_NONE;
    if (codec == AVL_CODEC_16)
        r->generation = chance(g, 80) ? (uint8_t)pktgen_below(g, 8) : (uint8_t)pktgen_u64(g);

    /* How many elements: none, a few, many, or a whole group (255 for 8 and 16; above 255, so
     * the u16 count's high byte is used, for 8E). */
    unsigned count, roll = (unsigned)pktgen_below(g, 100);
    uint8_t one_width = 0xFF;
    if (roll < 20) {
        count = 0;
    } else if (roll < 55) {
        count = (unsigned)between(g, 1, 8);
    } else if (roll < 80) {
        count = (unsigned)between(g, 9, 60);
    } else if (roll < 92) {
        count = (unsigned)between(g, 61, codec == AVL_CODEC_8E ? 400 : 255);
    } else {
        count = codec == AVL_CODEC_8E ? (unsigned)between(g, 256, 300) : 255;
        static const uint8_t widths[] = {1, 2, 4, 8};
        one_width = widths[pktgen_below(g, 4)];
    }

    struct builder b;
    builder_init(&b, pkt, bytes_max);
    for (unsigned i = 0; i < count; i++) {
        /* Widths interleave, so the encoder must group them (N1, N2, N4, N8, NX). */
        uint8_t width = one_width;
        if (width == 0xFF) {
            unsigned w = (unsigned)pktgen_below(g, codec == AVL_CODEC_8E ? 5 : 4);
            width = w == 4 ? 0 : (uint8_t)(1u << w);
        }
        uint16_t id = edge_id(g, codec);
        bool ok;
        if (width == 0) {
            uint16_t len = edge_nx_len(g);
            uint8_t *p = builder_add_nx(&b, id, len);
            ok = p != NULL;
            if (ok && len > 0)
                pktgen_fill_bytes(g, p, len);
            else if (ok && chance(g, 50))
                b.io[b.io_len - 1].nx = NULL; /* no bytes: no pointer either */
        } else {
            ok = builder_add(&b, id, width, edge_value(g, width_max(width)));
        }
        if (!ok)
            break;
    }
    builder_commit(&b, src);
}

/* ---------------------------------------------------------------------------------------------
 * Packets
 * ------------------------------------------------------------------------------------------- */

int pktgen_record(struct pktgen *g, enum pktgen_mode mode, struct pktgen_packet *pkt)
{
    uint32_t room = packet_room(pkt);
    uint32_t min = record_min_bytes(pkt->codec);
    if (pkt->records_len >= AVL_RECORDS_MAX || room < min || pkt->io_len >= PKTGEN_IO_MAX)
        return -ENOSPC;
    if (mode == PKTGEN_REALISTIC) {
        record_realistic(g, pkt, room);
    } else {
        uint32_t slack = room - min;
        record_arbitrary(g, pkt, min + (uint32_t)pktgen_below(g, (uint64_t)slack / 8 + 1));
    }
    return 0;
}

unsigned pktgen_fill(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                     uint32_t bytes_max, struct pktgen_packet *pkt)
{
    pktgen_packet_reset(pkt, codec, bytes_max);
    unsigned n = records_len;
    if (mode == PKTGEN_REALISTIC) {
        if (n == PKTGEN_RECORDS_RANDOM)
            n = chance(g, 40) ? 1 : (unsigned)between(g, 2, 15);
        for (unsigned i = 0; i < n && i < AVL_RECORDS_MAX; i++) {
            if (pktgen_record(g, mode, pkt) < 0)
                break;
        }
        return pkt->records_len;
    }

    uint32_t target = pkt->bytes_max;
    if (n == PKTGEN_RECORDS_RANDOM) {
        unsigned roll = (unsigned)pktgen_below(g, 100);
        n = roll < 3    ? 0
            : roll < 33 ? 1
            : roll < 70 ? (unsigned)between(g, 2, 8)
            : roll < 92 ? (unsigned)between(g, 9, 254)
                        : 255;
        /* Most arbitrary packets are small; a 255-record one gets the whole budget. */
        if (n < AVL_RECORDS_MAX) {
            static const uint32_t tiers[] = {512, 2048, 8192};
            roll = (unsigned)pktgen_below(g, 100);
            uint32_t tier = roll < 40   ? tiers[0]
                            : roll < 70 ? tiers[1]
                            : roll < 90 ? tiers[2]
                                        : target;
            if (tier < target)
                target = tier;
        }
    }
    if (n > AVL_RECORDS_MAX)
        n = AVL_RECORDS_MAX;
    uint32_t min = record_min_bytes(codec);
    uint32_t usable = target > UDP_OVERHEAD_MAX + BODY_EMPTY_BYTES
                          ? target - UDP_OVERHEAD_MAX - BODY_EMPTY_BYTES
                          : 0;
    if (n > usable / min)
        n = usable / min;
    uint32_t slack = usable - n * min;
    for (unsigned i = 0; i < n; i++) {
        /* Share the slack: evenly, or now and then most of it to one record. */
        uint32_t share =
            chance(g, 30) ? (uint32_t)pktgen_below(g, (uint64_t)slack + 1) : slack / (n - i);
        uint32_t before = pkt->body_bytes;
        record_arbitrary(g, pkt, min + share);
        slack -= pkt->body_bytes - before - min;
    }
    return pkt->records_len;
}

int pktgen_packet_tcp(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                      struct pktgen_packet *pkt, uint8_t *out, size_t cap)
{
    uint32_t bytes_max = cap > PKTGEN_FRAME_BYTES_MAX ? PKTGEN_FRAME_BYTES_MAX : (uint32_t)cap;
    pktgen_fill(g, mode, codec, records_len, bytes_max, pkt);
    return avl_encode_tcp(out, cap, codec, pkt->recs, pkt->records_len);
}

static uint64_t pow10_u64(unsigned e)
{
    uint64_t v = 1;
    while (e--)
        v *= 10;
    return v;
}

int pktgen_packet_udp(struct pktgen *g, enum pktgen_mode mode, uint8_t codec, unsigned records_len,
                      struct pktgen_packet *pkt, uint8_t *out, size_t cap)
{
    uint32_t bytes_max = cap > PKTGEN_FRAME_BYTES_MAX ? PKTGEN_FRAME_BYTES_MAX : (uint32_t)cap;
    pktgen_fill(g, mode, codec, records_len, bytes_max, pkt);
    if (mode == PKTGEN_REALISTIC) {
        pkt->udp_packet_id = g->udp_packet_id++;
        pkt->udp_avl_packet_id = g->udp_avl_packet_id++;
        pkt->imei = g->imei;
    } else {
        pkt->udp_packet_id = (uint16_t)edge_value(g, 0xFFFF);
        pkt->udp_avl_packet_id = (uint8_t)edge_value(g, 0xFF);
        uint64_t limit = pow10_u64((unsigned)between(g, 1, AVL_IMEI_DIGITS_MAX));
        pkt->imei = chance(g, 10) ? limit - 1 : pktgen_below(g, limit);
    }
    return avl_encode_udp(out, cap, pkt->udp_packet_id, pkt->udp_avl_packet_id, pkt->imei, codec,
                          pkt->recs, pkt->records_len);
}

/* ---------------------------------------------------------------------------------------------
 * GPRS frames (Codec 12, 13, 14, 15)
 * ------------------------------------------------------------------------------------------- */

static uint32_t gprs_fixed_bytes(uint8_t codec)
{
    return codec == AVL_CODEC_13 ? 4 : codec == AVL_CODEC_14 ? 8 : codec == AVL_CODEC_15 ? 12 : 0;
}

uint32_t pktgen_gprs_bytes(const struct pktgen_gprs *gp)
{
    uint32_t n = AVL_TCP_OVERHEAD_BYTES + BODY_EMPTY_BYTES;
    for (unsigned i = 0; i < gp->msgs_len; i++)
        n += AVL_GPRS_MSG_HEADER_BYTES + gprs_fixed_bytes(gp->codec) + gp->msgs[i].text_len;
    return n;
}

static uint8_t gprs_type(struct pktgen *g, uint8_t codec)
{
    static const uint8_t t12[] = {AVL_GPRS_COMMAND, AVL_GPRS_RESPONSE, AVL_GPRS_CAMERA};
    static const uint8_t t13[] = {AVL_GPRS_COMMAND, AVL_GPRS_RESPONSE};
    static const uint8_t t14[] = {AVL_GPRS_COMMAND, AVL_GPRS_RESPONSE, AVL_GPRS_NACK};
    switch (codec) {
    case AVL_CODEC_12:
        return t12[pktgen_below(g, 3)];
    case AVL_CODEC_13:
        return t13[pktgen_below(g, 2)];
    case AVL_CODEC_14:
        return t14[pktgen_below(g, 3)];
    default:
        return AVL_GPRS_FORWARD;
    }
}

/* Adds a message whose text is written by the caller at the returned pointer (len bytes). */
static struct avl_gprs_msg *gprs_add(struct pktgen_gprs *gp, uint8_t type, uint32_t ts_s,
                                     uint64_t imei, uint32_t len)
{
    struct avl_gprs_msg *m = &gp->msgs[gp->msgs_len++];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->ts_s = gp->codec == AVL_CODEC_13 || gp->codec == AVL_CODEC_15 ? ts_s : 0;
    m->imei = gp->codec == AVL_CODEC_14 || gp->codec == AVL_CODEC_15 ? imei : 0;
    m->size = gprs_fixed_bytes(gp->codec) + len;
    m->text = gp->text + gp->text_len;
    m->text_len = len;
    gp->text_len += len;
    return m;
}

static void gprs_add_text(struct pktgen_gprs *gp, uint8_t type, uint32_t ts_s, uint64_t imei,
                          const char *text)
{
    uint32_t len = (uint32_t)strlen(text);
    memcpy(gp->text + gp->text_len, text, len);
    gprs_add(gp, type, ts_s, imei, len);
}

static void gprs_realistic(struct pktgen *g, struct pktgen_gprs *gp)
{
    static const char *const commands[] = {
        "getinfo",  "getver",    "getstatus",    "getgps",        "getio",
        "cpureset", "readio 21", "setdigout 11", "getparam 2004", "setparam 2004:gw.example.net",
    };
    char text[256];
    uint32_t ts_s = (uint32_t)(g->ts_ms / 1000);
    const char *cmd = commands[pktgen_below(g, ARRAY_LEN(commands))];
    unsigned roll = (unsigned)pktgen_below(g, 100);
    switch (gp->codec) {
    case AVL_CODEC_12:
        if (roll < 50) {
            gprs_add_text(gp, AVL_GPRS_COMMAND, 0, 0, cmd);
        } else {
            snprintf(text, sizeof text, "DI1:%u DI2:%u DI3:%u AIN1:%u AIN2:%u DO1:%u DO2:%u",
                     (unsigned)pktgen_below(g, 2), (unsigned)pktgen_below(g, 2),
                     (unsigned)pktgen_below(g, 2), (unsigned)pktgen_below(g, 30000),
                     (unsigned)pktgen_below(g, 30000), (unsigned)pktgen_below(g, 2),
                     (unsigned)pktgen_below(g, 2));
            gprs_add_text(gp, AVL_GPRS_RESPONSE, 0, 0, text);
        }
        break;
    case AVL_CODEC_13:
        snprintf(text, sizeof text, "GTSL|6|1|0|%u|1|\r\n", (unsigned)pktgen_below(g, 99999999));
        gprs_add_text(gp, AVL_GPRS_RESPONSE, ts_s, 0, text);
        break;
    case AVL_CODEC_14:
        if (roll < 40) {
            gprs_add_text(gp, AVL_GPRS_COMMAND, 0, g->imei, cmd);
        } else if (roll < 80) {
            snprintf(text, sizeof text,
                     "Ver:03.18.14_04 GPS:AXN_5.10_3333 Hw:FMB120 Mod:15 IMEI:%015llu "
                     "Init:2018-11-22 7:13 Uptime:%u MAC:60BDD0016261 SPC:1(0) AXL:0 OBD:0 "
                     "BL:1.6 BT:4",
                     (unsigned long long)g->imei, (unsigned)pktgen_below(g, 1000000));
            gprs_add_text(gp, AVL_GPRS_RESPONSE, 0, g->imei, text);
        } else {
            gprs_add(gp, AVL_GPRS_NACK, 0, g->imei + 1, 0);
        }
        break;
    default:
        gprs_add_text(gp, AVL_GPRS_FORWARD, ts_s, g->imei, roll < 50 ? "Hello!\n" : "$PING*00\r\n");
        break;
    }
}

unsigned pktgen_gprs_fill(struct pktgen *g, enum pktgen_mode mode, uint8_t codec,
                          uint32_t bytes_max, struct pktgen_gprs *gp)
{
    gp->codec = codec;
    gp->msgs_len = 0;
    gp->text_len = 0;
    if (bytes_max > PKTGEN_FRAME_BYTES_MAX)
        bytes_max = PKTGEN_FRAME_BYTES_MAX;
    uint32_t per_msg = AVL_GPRS_MSG_HEADER_BYTES + gprs_fixed_bytes(codec);
    uint32_t overhead = AVL_TCP_OVERHEAD_BYTES + BODY_EMPTY_BYTES;
    if (mode == PKTGEN_REALISTIC) {
        if (bytes_max >= overhead + per_msg + 256)
            gprs_realistic(g, gp);
        return gp->msgs_len;
    }

    unsigned roll = (unsigned)pktgen_below(g, 100);
    unsigned n = roll < 3    ? 0
                 : roll < 53 ? 1
                 : roll < 83 ? (unsigned)between(g, 2, 5)
                             : (unsigned)between(g, 6, 255);
    uint32_t usable = bytes_max > overhead ? bytes_max - overhead : 0;
    if (usable > PKTGEN_GPRS_TEXT_BYTES_MAX + n * per_msg)
        usable = PKTGEN_GPRS_TEXT_BYTES_MAX + n * per_msg;
    if (n > usable / per_msg)
        n = usable / per_msg;
    uint32_t slack = usable - n * per_msg;
    for (unsigned i = 0; i < n; i++) {
        uint8_t type = gprs_type(g, codec);
        uint32_t len = 0;
        if (type != AVL_GPRS_NACK) { /* a nACK carries the IMEI only */
            unsigned r = (unsigned)pktgen_below(g, 100);
            len = r < 15   ? 0
                  : r < 55 ? (uint32_t)between(g, 1, 32)
                  : r < 90 ? (uint32_t)between(g, 33, 300)
                           : (uint32_t)between(g, 301, 2000);
            uint32_t share = chance(g, 30) ? slack : slack / (n - i);
            if (len > share)
                len = share;
        }
        uint64_t imei_limit = UINT64_C(10000000000000000); /* 16 BCD digits */
        unsigned ir = (unsigned)pktgen_below(g, 10);
        uint64_t imei = ir == 0 ? 0 : ir == 1 ? imei_limit - 1 : pktgen_below(g, imei_limit);
        uint32_t ts_s = (uint32_t)edge_value(g, UINT32_MAX);
        struct avl_gprs_msg *m = gprs_add(gp, type, ts_s, imei, len);
        pktgen_fill_bytes(g, gp->text + gp->text_len - len, len);
        if (len == 0 && chance(g, 50))
            m->text = NULL;
        slack -= len;
    }
    return gp->msgs_len;
}
