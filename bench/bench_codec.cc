// bench_codec.cc — Google Benchmark over the Teltonika codec: CRC-16 (each path), and
// scan + decode of realistic Codec 8 / 8E / 16 packets from loadgen/packetgen over TCP and UDP,
// next to a CRC-only pass over the same bytes so the cost of parsing can be read as a ratio;
// and the gateway's COPY BINARY row encoder (gateway/copyenc) over decoded records.
//
// Every benchmark cycles through a batch of distinct packets (64 by default, 10 records each)
// made once from a fixed seed, so runs compare. A decode that fails aborts the process: Google
// Benchmark exits 0 after SkipWithError, and the bench_smoke ctest must fail on a broken codec.
// Throughput of the CRC-only and decode benchmarks of one codec is counted over the same frame
// bytes (the whole frame), so full / CRC-only bytes/s is the fraction of CRC speed a full decode
// keeps. Single-threaded; the project goal is full 8E decode >= 0.5 x CRC-only on one core.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "codec/avl.h"
#include "codec/crc16_internal.h"
#include "gateway/copyenc.h"
#include "loadgen/packetgen.h"

namespace
{

constexpr uint64_t kSeed = 0xBE7C4C0DECULL;
constexpr int kPackets = 64;

// The sources of one packet are large (see packetgen.h): one static scratch for setup.
pktgen_packet g_pkt;

[[noreturn]] void die(const char *what, int rc)
{
    std::fprintf(stderr, "bench_codec: %s failed: %d (%s)\n", what, rc, avl_strerror(rc));
    std::abort();
}

// A batch of encoded packets laid end to end, so the batch is one contiguous block.
struct Batch {
    std::vector<uint8_t> bytes;
    std::vector<uint32_t> offset;     // packet i is bytes[offset[i] .. offset[i + 1])
    std::vector<uint16_t> records_in; // records of packet i
    uint64_t records = 0;

    size_t size() const
    {
        return offset.size() - 1;
    }
    const uint8_t *data(size_t i) const
    {
        return bytes.data() + offset[i];
    }
    size_t len(size_t i) const
    {
        return offset[i + 1] - offset[i];
    }
};

// fleet: each packet from a device of its own (its own IO id order and values), as a shard
// sees them, instead of one device's stream.
Batch make_batch(uint8_t codec, unsigned records, bool udp, int packets = kPackets,
                 bool fleet = false)
{
    const uint64_t seed =
        kSeed ^ (uint64_t(codec) << 32) ^ (uint64_t(records) << 8) ^ (udp ? 1 : 0);
    pktgen g;
    pktgen_init(&g, seed);
    std::vector<uint8_t> buf(PKTGEN_FRAME_BYTES_MAX);
    Batch b;
    b.offset.push_back(0);
    for (int i = 0; i < packets; i++) {
        if (fleet)
            pktgen_init(&g, seed ^ (uint64_t(i + 1) << 40));
        int n = udp ? pktgen_packet_udp(&g, PKTGEN_REALISTIC, codec, records, &g_pkt, buf.data(),
                                        buf.size())
                    : pktgen_packet_tcp(&g, PKTGEN_REALISTIC, codec, records, &g_pkt, buf.data(),
                                        buf.size());
        if (n <= 0)
            die("packetgen encode", n);
        b.bytes.insert(b.bytes.end(), buf.begin(), buf.begin() + n);
        b.offset.push_back(uint32_t(b.bytes.size()));
        b.records += g_pkt.records_len;
        b.records_in.push_back(g_pkt.records_len);
    }
    return b;
}

void set_rates(benchmark::State &state, const Batch &b, uint64_t rounds_bytes,
               uint64_t rounds_records)
{
    state.SetBytesProcessed(int64_t(rounds_bytes));
    state.counters["records"] =
        benchmark::Counter(double(rounds_records), benchmark::Counter::kIsRate);
    state.counters["pkt_bytes"] = double(b.bytes.size()) / double(b.size());
}

// ---- CRC-16 ---------------------------------------------------------------------------------
// avl_crc16 as the gateway calls it (PCLMULQDQ folding from AVL_CRC16_CLMUL_BYTES_MIN bytes on,
// where the CPU has it), and each path forced: slicing-by-8, folding, bit at a time.

void crc16_bench(benchmark::State &state, uint16_t (*fn)(uint16_t, const uint8_t *, size_t))
{
    std::vector<uint8_t> buf(size_t(state.range(0)));
    pktgen g;
    pktgen_init(&g, kSeed);
    pktgen_fill_bytes(&g, buf.data(), buf.size());
    for (auto _ : state) {
        uint16_t crc = fn(0, buf.data(), buf.size());
        benchmark::DoNotOptimize(crc);
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(buf.size()));
}

void BM_Crc16(benchmark::State &state)
{
    crc16_bench(state, avl_crc16);
}

void BM_Crc16Slice8(benchmark::State &state)
{
    crc16_bench(state, avl_crc16_slice8);
}

void BM_Crc16Clmul(benchmark::State &state)
{
#if AVL_CRC16_CLMUL
    if (avl_crc16_clmul_supported()) {
        crc16_bench(state, avl_crc16_clmul);
        return;
    }
#endif
    state.SkipWithError("no PCLMULQDQ path on this CPU");
}

void BM_Crc16Bitwise(benchmark::State &state)
{
    crc16_bench(state, avl_crc16_bitwise);
}

BENCHMARK(BM_Crc16)->Arg(64)->Arg(256)->Arg(1024)->Arg(16384);
BENCHMARK(BM_Crc16Slice8)->Arg(64)->Arg(256)->Arg(1024)->Arg(16384);
BENCHMARK(BM_Crc16Clmul)->Arg(64)->Arg(256)->Arg(1024)->Arg(16384);
BENCHMARK(BM_Crc16Bitwise)->Arg(64)->Arg(1024)->Arg(16384);

// ---- TCP: CRC only vs scan + decode, on the same frames --------------------------------------
// Args: codec, records per packet.

// CRC over the data field of each frame, as the decoder must do at the least.
void BM_TcpCrcOnly(benchmark::State &state)
{
    const Batch b = make_batch(uint8_t(state.range(0)), unsigned(state.range(1)), false);
    uint64_t bytes = 0, records = 0;
    size_t i = 0;
    for (auto _ : state) {
        const uint8_t *p = b.data(i);
        size_t n = b.len(i);
        uint16_t crc = avl_crc16(0, p + AVL_TCP_HEADER_BYTES, n - AVL_TCP_OVERHEAD_BYTES);
        benchmark::DoNotOptimize(crc);
        bytes += n;
        records += b.records_in[i]; // carried, not parsed: comparable with the decode rate
        if (++i == b.size())
            i = 0;
    }
    set_rates(state, b, bytes, records);
}

// avl_scan + avl_decode_tcp: framing, CRC, every record and IO group bounds-checked.
void BM_TcpDecode(benchmark::State &state)
{
    const Batch b = make_batch(uint8_t(state.range(0)), unsigned(state.range(1)), false);
    static avl_record recs[AVL_RECORDS_MAX];
    uint64_t bytes = 0, records = 0;
    size_t i = 0;
    for (auto _ : state) {
        const uint8_t *p = b.data(i);
        size_t n = b.len(i);
        avl_frame f;
        int s = avl_scan(p, n, AVL_SCAN_DATA, 0, &f);
        if (s != int(n) || f.kind != AVL_FRAME_AVL)
            die("avl_scan", s);
        avl_packet pkt;
        int rc = avl_decode_tcp(p, n, &pkt, recs);
        if (rc != 0)
            die("avl_decode_tcp", rc);
        benchmark::DoNotOptimize(recs[0].ts_ms);
        benchmark::ClobberMemory();
        bytes += n;
        records += pkt.records_len;
        if (++i == b.size())
            i = 0;
    }
    set_rates(state, b, bytes, records);
}

// The same, then every IO element read through avl_io_iter (what a row builder does).
void BM_TcpDecodeIter(benchmark::State &state)
{
    const Batch b = make_batch(uint8_t(state.range(0)), unsigned(state.range(1)), false);
    static avl_record recs[AVL_RECORDS_MAX];
    uint64_t bytes = 0, records = 0, elems = 0;
    size_t i = 0;
    for (auto _ : state) {
        const uint8_t *p = b.data(i);
        size_t n = b.len(i);
        avl_frame f;
        int s = avl_scan(p, n, AVL_SCAN_DATA, 0, &f);
        if (s != int(n) || f.kind != AVL_FRAME_AVL)
            die("avl_scan", s);
        avl_packet pkt;
        int rc = avl_decode_tcp(p, n, &pkt, recs);
        if (rc != 0)
            die("avl_decode_tcp", rc);
        uint64_t sum = 0;
        for (unsigned r = 0; r < pkt.records_len; r++) {
            avl_io_iter it;
            avl_io io;
            avl_io_iter_init(&it, &recs[r]);
            while (avl_io_next(&it, &io)) {
                sum += io.id + io.value + io.len;
                elems++;
            }
        }
        benchmark::DoNotOptimize(sum);
        bytes += n;
        records += pkt.records_len;
        if (++i == b.size())
            i = 0;
    }
    set_rates(state, b, bytes, records);
    state.counters["io_elems"] = benchmark::Counter(double(elems), benchmark::Counter::kIsRate);
}

// ---- UDP -----------------------------------------------------------------------------------

void BM_UdpDecode(benchmark::State &state)
{
    const Batch b = make_batch(uint8_t(state.range(0)), unsigned(state.range(1)), true);
    static avl_record recs[AVL_RECORDS_MAX];
    uint64_t bytes = 0, records = 0;
    size_t i = 0;
    for (auto _ : state) {
        const uint8_t *p = b.data(i);
        size_t n = b.len(i);
        avl_packet pkt;
        int rc = avl_decode_udp(p, n, &pkt, recs);
        if (rc != 0)
            die("avl_decode_udp", rc);
        benchmark::DoNotOptimize(recs[0].ts_ms);
        benchmark::ClobberMemory();
        bytes += n;
        records += pkt.records_len;
        if (++i == b.size())
            i = 0;
    }
    set_rates(state, b, bytes, records);
}

// ---- Encoding (loadgen's side) -------------------------------------------------------------

// Re-encodes decoded packets: the sources are built once, outside the timed loop.
void BM_TcpEncode(benchmark::State &state)
{
    const uint8_t codec = uint8_t(state.range(0));
    const Batch b = make_batch(codec, unsigned(state.range(1)), false);
    struct Src {
        std::vector<avl_record_src> recs;
        std::vector<avl_io_elem> io;
    };
    std::vector<Src> srcs(b.size());
    static avl_record recs[AVL_RECORDS_MAX];
    for (size_t k = 0; k < b.size(); k++) {
        avl_packet pkt;
        int rc = avl_decode_tcp(b.data(k), b.len(k), &pkt, recs);
        if (rc != 0)
            die("avl_decode_tcp", rc);
        Src &s = srcs[k];
        for (unsigned r = 0; r < pkt.records_len; r++) {
            avl_io_iter it;
            avl_io io;
            avl_io_iter_init(&it, &recs[r]);
            while (avl_io_next(&it, &io)) {
                avl_io_elem e{};
                e.id = io.id;
                e.width = io.nx ? 0 : uint8_t(io.len);
                e.nx_len = io.nx ? io.len : 0;
                e.value = io.value;
                e.nx = io.nx ? io.bytes : nullptr;
                s.io.push_back(e);
            }
        }
        size_t at = 0;
        for (unsigned r = 0; r < pkt.records_len; r++) {
            avl_record_src rs{};
            rs.rec = recs[r];
            rs.io = s.io.data() + at;
            rs.io_len = recs[r].io_total;
            at += recs[r].io_total;
            s.recs.push_back(rs);
        }
    }
    std::vector<uint8_t> out(PKTGEN_FRAME_BYTES_MAX);
    uint64_t bytes = 0, records = 0;
    size_t i = 0;
    for (auto _ : state) {
        const Src &s = srcs[i];
        int n = avl_encode_tcp(out.data(), out.size(), codec, s.recs.data(), s.recs.size());
        if (n != int(b.len(i)))
            die("avl_encode_tcp", n);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
        bytes += size_t(n);
        records += s.recs.size();
        if (++i == b.size())
            i = 0;
    }
    set_rates(state, b, bytes, records);
}

// ---- COPY BINARY rows (the gateway's side of storage) -----------------------------------------

// copyenc_row over every record of a decoded batch, one record per iteration, into a buffer
// reused as the row ring is: decode happens once, outside the timed loop. bytes/s counts the
// tuple bytes written; io_per_record is the mean IO element count of the batch. The batch is
// larger than the decode benchmarks' (2560 records of ~25 IO elements) and comes from 256
// devices: one device lists its IO in one order with steady values, and the branch predictor
// then learns the whole batch, which flatters branchy digit code.
constexpr int kCopyencPackets = 256;

void BM_CopyencRow(benchmark::State &state)
{
    const Batch b =
        make_batch(uint8_t(state.range(0)), unsigned(state.range(1)), false, kCopyencPackets, true);
    const auto layout = copyenc_layout(state.range(2));
    static avl_record recs[AVL_RECORDS_MAX];
    std::vector<avl_record> all;
    uint64_t io_total = 0;
    for (size_t k = 0; k < b.size(); k++) {
        avl_packet pkt;
        int rc = avl_decode_tcp(b.data(k), b.len(k), &pkt, recs);
        if (rc != 0)
            die("avl_decode_tcp", rc);
        for (unsigned r = 0; r < pkt.records_len; r++) {
            all.push_back(recs[r]);
            io_total += recs[r].io_total;
        }
    }
    std::vector<uint8_t> out(size_t(1) << 20);
    // above any bound of a generated row
    const size_t room =
        PKTGEN_FRAME_BYTES_MAX * COPYENC_ROW_BYTES_PER_WIRE_BYTE + COPYENC_ROW_BYTES_FIXED_MAX;
    uint64_t bytes = 0;
    size_t off = 0, i = 0;
    for (auto _ : state) {
        if (out.size() - off < room)
            off = 0;
        int w = copyenc_row(layout, out.data() + off, out.size() - off, UINT64_C(356307042441013),
                            &all[i], INT64_C(1700000000000000));
        if (w <= 0) {
            std::fprintf(stderr, "bench_codec: copyenc_row failed: %s\n", copyenc_strerror(w));
            std::abort();
        }
        benchmark::DoNotOptimize(out.data() + off);
        benchmark::ClobberMemory();
        off += size_t(w);
        bytes += size_t(w);
        if (++i == all.size())
            i = 0;
    }
    state.SetBytesProcessed(int64_t(bytes));
    state.counters["records"] =
        benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["io_per_record"] = double(io_total) / double(all.size());
}

void codec_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"codec", "records"});
    for (int codec : {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16})
        b->Args({codec, 10});
    b->Args({AVL_CODEC_8E, 1}); // one-record packets: per-frame overhead
}

BENCHMARK(BM_TcpCrcOnly)->Apply(codec_args);
BENCHMARK(BM_TcpDecode)->Apply(codec_args);
BENCHMARK(BM_TcpDecodeIter)->Apply(codec_args);
BENCHMARK(BM_UdpDecode)->Apply(codec_args);
BENCHMARK(BM_TcpEncode)->Apply(codec_args);
// layout: 0 arrays (the default), 1 jsonb (enum copyenc_layout)
BENCHMARK(BM_CopyencRow)
    ->ArgNames({"codec", "records", "layout"})
    ->Args({AVL_CODEC_8, 10, COPYENC_ARRAYS})
    ->Args({AVL_CODEC_8E, 10, COPYENC_ARRAYS})
    ->Args({AVL_CODEC_16, 10, COPYENC_ARRAYS})
    ->Args({AVL_CODEC_8, 10, COPYENC_JSONB})
    ->Args({AVL_CODEC_8E, 10, COPYENC_JSONB})
    ->Args({AVL_CODEC_16, 10, COPYENC_JSONB});

} // namespace

BENCHMARK_MAIN();
