/* records.c — the records of a simulated device's packet (records.h), regenerated from (seed,
 * device, packet number, first record).
 *
 * Owns nothing: it writes the calling worker's scratch (w->gen, w->pkt, w->io). Invariant: the
 * same (seed, device, packet number, first record) and the same run (t0_wall_ms, nonce) give the
 * same records, so the same bytes once framed. The worker's thread only. */
#include "loadgen/records.h"

#include "codec/avl.h"
#include "loadgen/packetgen.h"
#include "loadgen/verify.h"

/* The time of the device's record `rec`: a day of backlog before the start when draining,
 * live from the start when paced, or going back in time (--newest-first). Strictly monotonic
 * per device, so every record differs from the others of its device. */
static uint64_t record_ts_ms(const struct fleet *f, uint32_t g, uint32_t rec)
{
    uint64_t offset = mix64(f->o.seed ^ g) % f->step_ms;
    uint64_t span = (uint64_t)rec * f->step_ms + offset;
    if (f->o.newest_first)
        return f->t0_wall_ms - span;
    uint64_t start = f->period_ns ? f->t0_wall_ms : f->t0_wall_ms - 86400000u;
    return start + span;
}

static int32_t clamp_lat(int64_t v)
{
    return (int32_t)(v > 850000000 ? 850000000 : v < -850000000 ? -850000000 : v);
}

static int32_t wrap_lon(int64_t v)
{
    while (v > 1800000000)
        v -= 3600000000;
    while (v < -1800000000)
        v += 3600000000;
    return (int32_t)v;
}

/* --verify: the record's IO without any element of the sequence id, then the sequence in the
 * 8-byte group, in the worker's io[] from *io_used on: packetgen's own output stays as it is
 * for its other callers. */
static void stamp_sequence(struct worker *w, struct avl_record_src *src, uint32_t g, uint32_t rec,
                           uint32_t *io_used)
{
    struct avl_io_elem *io = w->io + *io_used;
    uint16_t k = 0;
    for (uint16_t j = 0; j < src->io_len; j++)
        if (src->io[j].id != VERIFY_IO_ID)
            io[k++] = src->io[j];
    io[k++] = (struct avl_io_elem){
        .id = VERIFY_IO_ID, .width = 8, .value = verify_seq(w->fleet->nonce, g, rec)};
    src->io = io;
    src->io_len = k;
    *io_used += k;
}

int records_make(struct worker *w, uint32_t g, uint32_t pkt_no, uint32_t rec_first, uint8_t *codec)
{
    const struct fleet *f = w->fleet;
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    /* A template device with this device's own salt (its static IO values), its stream
     * seeded by the packet's number: the same bytes whenever this packet is made. */
    w->gen = w->templates[g % DEVICE_TEMPLATES];
    w->gen.device_salt = mix64(f->o.seed ^ UINT64_C(0x5A17) ^ g);
    pktgen_reseed(&w->gen, mix64(f->o.seed ^ mix64((uint64_t)g << 32 | pkt_no)));
    *codec = codecs[(g + pkt_no) % 3];
    struct pktgen_packet *pkt = w->pkt;
    unsigned n = pktgen_fill(&w->gen, PKTGEN_REALISTIC, *codec, f->o.records, f->pkt_budget, pkt);
    if (n == 0)
        return AVL_E_NO_SPACE;
    uint64_t home = mix64(f->o.seed ^ UINT64_C(0x40E) ^ g);
    int64_t home_lon = (int64_t)(home % 3600000000u) - 1800000000;
    int64_t home_lat = (int64_t)((home >> 32) % 1400000000u) - 700000000;
    int64_t dlon = home_lon - pkt->recs[0].rec.lon_e7, dlat = home_lat - pkt->recs[0].rec.lat_e7;
    uint32_t io_used = 0;
    for (unsigned i = 0; i < n; i++) {
        struct avl_record_src *src = &pkt->recs[i];
        uint32_t rec = rec_first + i;
        src->rec.ts_ms = record_ts_ms(f, g, rec);
        src->rec.lon_e7 = wrap_lon(src->rec.lon_e7 + dlon);
        src->rec.lat_e7 = clamp_lat(src->rec.lat_e7 + dlat);
        if (f->o.verify)
            stamp_sequence(w, src, g, rec, &io_used);
    }
    return (int)n;
}
