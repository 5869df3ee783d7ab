/* floor.c — avlgate-floor: the CPU floor of a Teltonika server on the gateway's own engine
 * (shard/engine.h), i.e. what receiving each packet and sending its ACK cost when nothing else
 * is done. bench/e2e phase (d) runs the same avlgate-loadgen --drain against it as against the
 * gateway in phase (b) and reports the gateway's CPU per row over this one's (cpu_vs_floor).
 *
 * One engine per --shards, each on a thread of its own, listening with SO_REUSEPORT on --listen;
 * with --udp each also has a UDP socket of its own on the same address (the engine's UDP path:
 * engine_config.udp, on_datagram, engine_udp_send). Over TCP a connection is answered by the
 * shard that accepted it (no handoff, no database): its IMEI handshake with 0x01 at once, then
 * each whole AVL frame with a 4-byte ACK of the frame's record count. Frames are found by
 * avl_scan, which checks the preamble, the length, the codec and the IMEI's digits and never the
 * CRC or the body (codec/scan.c): the count is the header's, count 1, the byte after the codec
 * id (offset 9). Keep-alives and GPRS frames are consumed unanswered; a stream avl_scan refuses
 * is closed. Over UDP each AVL datagram is answered with the 7-byte ACK made from its header
 * (packet id, AVL packet id, count 1), found by bounds checks alone (udp_ack_of). Nothing is
 * decoded, deduplicated or stored.
 *
 * The engine settings are `avlgate run`'s defaults (gateway/ingest.c engine_start and
 * gateway/config.c), and the knobs that bench/e2e passes to the gateway have the gateway's
 * names here (--conns-max, --bufs, --buf-bytes, --wait-batch-us, --pin), so the two run on the
 * same engine configuration.
 *
 * Memory: per shard, one state byte per connection slot (conns_max, calloc'd before the loop),
 * the engine's own (sized in engine_init) and a counters line. The loop allocates nothing.
 *
 * Threads: main parses the options, starts the shard threads, takes SIGTERM/SIGINT with
 * sigtimedwait (blocked in every thread), stops the engines (engine_stop, from any thread), joins
 * the shards and prints the totals. A shard's thread owns its engine (made, run and freed
 * there), its slot states and its counters. Main and the shards meet at two barriers: `started`
 * (every engine made or failed: main may call engine_stop from then) and `stopped` (main is done
 * with the engines: a shard frees its own after it); main reads the counters and the engines'
 * copied stats after pthread_join.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "codec/avl.h"
#include "codec/bytes.h"
#include "gateway/hostport.h"
#include "shard/engine.h"

enum {
    ERR_BYTES = 512,
    /* The UDP header before the IMEI: length u16, packet id u16, a byte, AVL packet id, IMEI
     * length u16 (../shared/protocol/TELTONIKA.md §5). */
    UDP_IMEI_AT = 8,
};

/* A connection slot's state: what avl_scan is to look for next. */
enum floor_conn { FLOOR_HANDSHAKE = 0, FLOOR_OPEN };

struct floor_options {
    const char *listen;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    unsigned shards;
    bool udp;
    bool pin;
    uint32_t conns_max;
    uint32_t bufs;
    uint32_t buf_bytes;
    uint32_t wait_batch_us;
};

/* A shard's counters: written by its thread only, read by main after the join. */
struct floor_stats {
    uint64_t handshakes;
    uint64_t frames_acked, records_acked;
    uint64_t datagrams_acked, datagram_records_acked;
    uint64_t pings, gprs_frames;
    uint64_t frames_invalid, datagrams_invalid; /* refused by avl_scan / by udp_ack_of */
    uint64_t send_failures;                     /* engine_send or engine_udp_send refused */
} __attribute__((aligned(64)));

struct floor_shard {
    struct floor_stats st;
    unsigned id;
    const struct floor_options *o;
    const struct floor_shard *all; /* every shard, [0 .. o->shards - 1] */
    struct engine *e;
    uint8_t *conn_state;    /* enum floor_conn per slot, conns_max of them */
    struct engine_stats es; /* the engine's, copied when its loop ended */
    pthread_t thread;
    int rc;
    char err[ERR_BYTES];
};

static struct floor_options opts = {
    .listen = "0.0.0.0:5027",
    .shards = 2,
    .conns_max = 10000,
    .bufs = 1024,
    .buf_bytes = 4096,
    .wait_batch_us = 100,
};

/* The shards and main meet twice: once every engine is made (or failed), and once main has
 * stopped them (after which a shard frees its engine: main no longer touches it). */
static pthread_barrier_t started, stopped;
static atomic_uint loops_ended; /* shards whose engine_run returned */

/* ---------------------------------------------------------------------------------------------
 * TCP: the handshake and the frames
 * ------------------------------------------------------------------------------------------- */

/* One whole frame at p (f->bytes of it). Returns false when the connection is to be closed. */
static bool on_frame(struct floor_shard *s, struct engine *e, uint32_t slot, uint32_t gen,
                     const struct avl_frame *f, const uint8_t *p)
{
    switch (f->kind) {
    case AVL_FRAME_PING:
        s->st.pings++;
        return true;
    case AVL_FRAME_GPRS:
        s->st.gprs_frames++; /* a command's answer: the floor sends no commands */
        return true;
    case AVL_FRAME_IMEI: {
        uint64_t imei;
        if (avl_decode_imei(p, f->bytes, &imei) != 0) {
            s->st.frames_invalid++;
            return false;
        }
        static const uint8_t accept = 0x01;
        if (engine_identified(e, slot, gen) != 0 || engine_send(e, slot, gen, &accept, 1) != 0) {
            s->st.send_failures++;
            return false;
        }
        s->conn_state[slot] = FLOOR_OPEN;
        s->st.handshakes++;
        return true;
    }
    case AVL_FRAME_AVL: {
        /* avl_scan returns a data frame only whole, and one is at least 15 bytes. */
        assert(f->bytes >= AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN);
        uint8_t records = p[AVL_TCP_HEADER_BYTES + 1]; /* count 1, after the codec id */
        uint8_t ack[AVL_TCP_ACK_BYTES];
        avl_encode_tcp_ack(ack, records);
        if (engine_send(e, slot, gen, ack, sizeof ack) != 0) {
            s->st.send_failures++; /* -ENOBUFS: the engine closes the connection */
            return false;
        }
        s->st.frames_acked++;
        s->st.records_acked += records;
        return true;
    }
    }
    assert(!"avl_scan: unknown frame kind");
    return false;
}

static size_t on_data(void *app, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                      size_t len, enum engine_verdict *verdict, uint32_t *need)
{
    struct floor_shard *s = app;
    assert(slot < s->o->conns_max);
    size_t used = 0;
    *verdict = ENGINE_CONTINUE;
    while (used < len) {
        enum avl_scan_mode mode =
            s->conn_state[slot] == FLOOR_OPEN ? AVL_SCAN_DATA : AVL_SCAN_HANDSHAKE;
        struct avl_frame f;
        int rc = avl_scan(p + used, len - used, mode, AVL_FRAME_BYTES_MAX_DEFAULT, &f);
        if (rc == AVL_NEED_MORE) {
            *need = f.bytes;
            return used;
        }
        if (rc < 0)
            s->st.frames_invalid++;
        if (rc < 0 || !on_frame(s, e, slot, gen, &f, p + used)) {
            *verdict = ENGINE_CLOSE;
            return used;
        }
        used += f.bytes;
    }
    return used;
}

static void on_open(void *app, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                    uint64_t handoff_key)
{
    struct floor_shard *s = app;
    (void)e;
    (void)gen;
    (void)handoff_key;
    assert(from_shard == ENGINE_FROM_ACCEPT); /* no handoff, no dial */
    assert(slot < s->o->conns_max);
    s->conn_state[slot] = FLOOR_HANDSHAKE;
}

static void on_close(void *app, struct engine *e, uint32_t slot, uint32_t gen,
                     enum engine_close_reason reason)
{
    struct floor_shard *s = app;
    (void)e;
    (void)gen;
    (void)reason;
    assert(slot < s->o->conns_max);
    s->conn_state[slot] = FLOOR_HANDSHAKE;
}

/* ---------------------------------------------------------------------------------------------
 * UDP
 * ------------------------------------------------------------------------------------------- */

/* The ACK of the Teltonika UDP datagram p[0 .. len-1], from its header alone: length u16 (the
 * bytes after it), packet id u16, a byte, AVL packet id, IMEI length u16 (1..17), the IMEI, then
 * the AVL body: codec id (8, 8E or 16), count 1, ... (codec/decode.c avl_decode_udp reads the
 * same header and then decodes the body; here nothing past count 1 is read). Every offset is
 * checked against len before it is read. Returns false for what is no such datagram. */
static bool udp_ack_of(const uint8_t *p, size_t len, uint8_t ack[AVL_UDP_ACK_BYTES],
                       uint8_t *records)
{
    if (len < UDP_IMEI_AT || (size_t)be16(p) + 2 != len)
        return false;
    size_t digits = be16(p + 6);
    if (digits == 0 || digits > AVL_IMEI_DIGITS_MAX ||
        len < UDP_IMEI_AT + digits + AVL_DATA_BYTES_MIN)
        return false;
    const uint8_t *body = p + UDP_IMEI_AT + digits;
    if (!avl_codec_is_avl(body[0]))
        return false;
    *records = body[1];
    avl_encode_udp_ack(ack, be16(p + 2), p[5], *records);
    return true;
}

static void on_datagram(void *app, struct engine *e, const uint8_t *p, size_t len, bool truncated,
                        const struct sockaddr *from, socklen_t from_len)
{
    struct floor_shard *s = app;
    uint8_t ack[AVL_UDP_ACK_BYTES], records;
    if (truncated || !udp_ack_of(p, len, ack, &records)) {
        s->st.datagrams_invalid++;
        return;
    }
    if (engine_udp_send(e, from, from_len, ack, sizeof ack) != 0) {
        s->st.send_failures++; /* every send slot in flight: the device asks again */
        return;
    }
    s->st.datagrams_acked++;
    s->st.datagram_records_acked += records;
}

static uint64_t on_tick(void *app, struct engine *e, uint64_t now_ns)
{
    (void)app;
    (void)e;
    (void)now_ns;
    return 0;
}

static void on_poll(void *app, struct engine *e, uint64_t tag, int revents)
{
    (void)app;
    (void)e;
    (void)tag;
    (void)revents;
    assert(!"avlgate-floor registers no poll");
}

static const struct engine_ops floor_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .on_poll = on_poll,
    .on_tick = on_tick,
    .on_datagram = on_datagram,
};

/* ---------------------------------------------------------------------------------------------
 * The shards
 * ------------------------------------------------------------------------------------------- */

/* The gateway's engine_start (gateway/ingest.c) with `avlgate run`'s defaults. */
static int shard_engine_init(struct floor_shard *s)
{
    const struct floor_options *o = s->o;
    struct engine_config ec = {
        .shard = s->id,
        .shards = o->shards,
        .listen = true,
        .addr = o->addr,
        .addr_len = o->addr_len,
        .backlog = 4096,
        .conns_max = o->conns_max,
        .bufs = o->bufs,
        .buf_bytes = o->buf_bytes,
        .reasm_bytes_max = 32u << 20,
        .frame_bytes_max = AVL_FRAME_BYTES_MAX_DEFAULT,
        .idle_timeout_ms = 600 * 1000,
        .frame_timeout_ms = 30 * 1000,
        .identify_timeout_ms = 10 * 1000,
        .sq_entries = 4096,
        .wait_batch_us = o->wait_batch_us,
        .pin = o->pin,
        .udp = o->udp,
        .udp_addr = o->addr,
        .udp_addr_len = o->addr_len,
        .udp_bytes_max = 4096,
        .ops = &floor_ops,
        .app = s,
    };
    return engine_init(&s->e, &ec, s->err, sizeof s->err);
}

/* Whether every shard made its engine (read after the start barrier). */
static bool all_started(const struct floor_shard *shards, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (shards[i].rc)
            return false;
    return true;
}

static void *shard_thread(void *arg)
{
    struct floor_shard *s = arg;
    s->conn_state = calloc(s->o->conns_max, 1);
    if (!s->conn_state) {
        s->rc = -ENOMEM;
        snprintf(s->err, sizeof s->err, "out of memory for %u slots", s->o->conns_max);
    } else {
        s->rc = shard_engine_init(s);
    }
    pthread_barrier_wait(&started);
    if (s->rc == 0 && all_started(s->all, s->o->shards)) {
        s->rc = engine_run(s->e);
        if (s->rc)
            snprintf(s->err, sizeof s->err, "engine_run: %s", strerror(-s->rc));
        atomic_fetch_add(&loops_ended, 1);
    }
    pthread_barrier_wait(&stopped);
    if (s->e) {
        s->es = *engine_stats(s->e);
        engine_free(s->e);
    }
    free(s->conn_state);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: avlgate-floor [options]\n"
               "  the CPU floor: answers handshakes and ACKs AVL frames at once (no CRC check,\n"
               "  no decode, no database), on the gateway's engine with its defaults\n"
               "  --listen HOST:PORT   TCP address, SO_REUSEPORT per shard (default 0.0.0.0:5027)\n"
               "  --udp                serve Teltonika UDP on the same address too\n"
               "  --shards N           engines, one thread each (default 2)\n"
               "  --conns-max N        connections per shard (default 10000)\n"
               "  --bufs N             receive buffers per shard, a power of two (default 1024)\n"
               "  --buf-bytes N        bytes per receive buffer (default 4096)\n"
               "  --wait-batch-us U    wait up to U us for more completions (default 100)\n"
               "  --pin                pin shard i to CPU i\n"
               "stops on SIGTERM or SIGINT and prints what it acknowledged\n");
}

static int parse_u32(const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "avlgate-floor: --%s '%s': want %u..%u\n", name, s, lo, hi);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* One option (getopt_long's val) with its argument. Returns 0 or -1 after a message. */
static int parse_one(int c, const char *arg)
{
    uint32_t v;
    switch (c) {
    case 'l':
        opts.listen = arg;
        return 0;
    case 'u':
        opts.udp = true;
        return 0;
    case 'p':
        opts.pin = true;
        return 0;
    case 's':
        if (parse_u32("shards", arg, 1, ENGINE_SHARDS_MAX, &v))
            return -1;
        opts.shards = v;
        return 0;
    case 'c':
        return parse_u32("conns-max", arg, 1, 1u << 20, &opts.conns_max);
    case 'b':
        if (parse_u32("bufs", arg, 1, 32768, &opts.bufs))
            return -1;
        if (opts.bufs & (opts.bufs - 1)) {
            fprintf(stderr, "avlgate-floor: --bufs %u is not a power of two\n", opts.bufs);
            return -1;
        }
        return 0;
    case 'B':
        return parse_u32("buf-bytes", arg, 256, 1u << 20, &opts.buf_bytes);
    case 'w':
        return parse_u32("wait-batch-us", arg, 0, 10000, &opts.wait_batch_us);
    }
    return -1;
}

/* Returns 0, 1 (--help: done) or 2 (usage, after a message). */
static int parse_options(int argc, char **argv)
{
    static const struct option longs[] = {
        {"listen", required_argument, NULL, 'l'},
        {"udp", no_argument, NULL, 'u'},
        {"shards", required_argument, NULL, 's'},
        {"conns-max", required_argument, NULL, 'c'},
        {"bufs", required_argument, NULL, 'b'},
        {"buf-bytes", required_argument, NULL, 'B'},
        {"wait-batch-us", required_argument, NULL, 'w'},
        {"pin", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 1;
        }
        if (c == '?' || parse_one(c, optarg) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "avlgate-floor: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (hostport_parse(opts.listen, &opts.addr, &opts.addr_len) != 0) {
        fprintf(stderr, "avlgate-floor: bad --listen '%s' (want HOST:PORT, numeric host)\n",
                opts.listen);
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Start-up checks, the run, the totals
 * ------------------------------------------------------------------------------------------- */

/* The ports and the descriptor limit (each shard's fixed file table holds conns_max). Returns
 * 0 or 1 after a message. */
static int start_checks(void)
{
    /* A floor or gateway left over from an earlier run must not share the port (hostport.h). */
    int rc = hostport_free(&opts.addr, opts.addr_len, SOCK_STREAM);
    if (rc == 0 && opts.udp)
        rc = hostport_free(&opts.addr, opts.addr_len, SOCK_DGRAM);
    if (rc != 0) {
        fprintf(stderr, "avlgate-floor: cannot take %s: %s\n", opts.listen, strerror(-rc));
        return 1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && opts.conns_max > rl.rlim_cur) {
        fprintf(stderr, "avlgate-floor: --conns-max %u is above RLIMIT_NOFILE %llu\n",
                opts.conns_max, (unsigned long long)rl.rlim_cur);
        return 1;
    }
    return 0;
}

/* Starts the shard threads and waits until every engine is made. Returns true when every one
 * was; false after the failures' messages. A thread that cannot be started ends the process. */
static bool shards_start(struct floor_shard *shards)
{
    pthread_barrier_init(&started, NULL, opts.shards + 1);
    pthread_barrier_init(&stopped, NULL, opts.shards + 1);
    for (unsigned i = 0; i < opts.shards; i++) {
        shards[i].id = i;
        shards[i].o = &opts;
        shards[i].all = shards;
        if (pthread_create(&shards[i].thread, NULL, shard_thread, &shards[i]) != 0) {
            fprintf(stderr, "avlgate-floor: cannot start shard %u: %s\n", i, strerror(errno));
            exit(1); /* the started ones wait at the barrier for ever: nothing to unwind */
        }
    }
    pthread_barrier_wait(&started);
    bool ok = all_started(shards, opts.shards);
    for (unsigned i = 0; i < opts.shards && !ok; i++)
        if (shards[i].rc)
            fprintf(stderr, "avlgate-floor: shard %u: %s\n", i, shards[i].err);
    return ok;
}

/* Waits for SIGTERM or SIGINT, or for a loop that ended by itself (a fatal ring error). */
static void wait_stop(const sigset_t *stop_signals)
{
    for (;;) {
        struct timespec tick = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
        if (sigtimedwait(stop_signals, NULL, &tick) > 0)
            return;
        if (atomic_load(&loops_ended) > 0)
            return;
    }
}

/* The totals line. Returns 1 when a shard's loop failed, else 0. */
static int print_totals(const struct floor_shard *shards)
{
    struct floor_stats t = {0};
    uint64_t loops = 0, cqes = 0, recv_enobufs = 0, udp_send_full = 0, accepted = 0;
    int rc = 0;
    for (unsigned i = 0; i < opts.shards; i++) {
        const struct floor_stats *s = &shards[i].st;
        t.handshakes += s->handshakes;
        t.frames_acked += s->frames_acked;
        t.records_acked += s->records_acked;
        t.datagrams_acked += s->datagrams_acked;
        t.datagram_records_acked += s->datagram_records_acked;
        t.pings += s->pings;
        t.gprs_frames += s->gprs_frames;
        t.frames_invalid += s->frames_invalid;
        t.datagrams_invalid += s->datagrams_invalid;
        t.send_failures += s->send_failures;
        accepted += shards[i].es.accepted;
        loops += shards[i].es.loops;
        cqes += shards[i].es.cqes;
        recv_enobufs += shards[i].es.recv_enobufs;
        udp_send_full += shards[i].es.udp_send_full;
        if (shards[i].rc) {
            fprintf(stderr, "avlgate-floor: shard %u: %s\n", i, shards[i].err);
            rc = 1;
        }
    }
    printf("avlgate-floor: stopped shards=%u accepted=%llu handshakes=%llu frames_acked=%llu "
           "records_acked=%llu datagrams_acked=%llu datagram_records_acked=%llu pings=%llu "
           "gprs_frames=%llu frames_invalid=%llu datagrams_invalid=%llu send_failures=%llu "
           "loops=%llu cqes=%llu recv_enobufs=%llu udp_send_full=%llu\n",
           opts.shards, (unsigned long long)accepted, (unsigned long long)t.handshakes,
           (unsigned long long)t.frames_acked, (unsigned long long)t.records_acked,
           (unsigned long long)t.datagrams_acked, (unsigned long long)t.datagram_records_acked,
           (unsigned long long)t.pings, (unsigned long long)t.gprs_frames,
           (unsigned long long)t.frames_invalid, (unsigned long long)t.datagrams_invalid,
           (unsigned long long)t.send_failures, (unsigned long long)loops, (unsigned long long)cqes,
           (unsigned long long)recv_enobufs, (unsigned long long)udp_send_full);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = parse_options(argc, argv);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (start_checks() != 0)
        return 1;
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* the shards inherit the mask */
    signal(SIGPIPE, SIG_IGN);
    struct floor_shard *shards = aligned_alloc(64, sizeof *shards * opts.shards);
    if (!shards) {
        fprintf(stderr, "avlgate-floor: out of memory\n");
        return 1;
    }
    memset(shards, 0, sizeof *shards * opts.shards);
    bool ok = shards_start(shards);
    if (ok) {
        printf("avlgate-floor: listening on %s (%s) shards=%u conns_max=%u bufs=%u buf_bytes=%u "
               "wait_batch_us=%u pin=%s\n",
               opts.listen, opts.udp ? "TCP and UDP" : "TCP", opts.shards, opts.conns_max,
               opts.bufs, opts.buf_bytes, opts.wait_batch_us, opts.pin ? "on" : "off");
        fflush(stdout);
        wait_stop(&stop_signals);
        for (unsigned i = 0; i < opts.shards; i++)
            engine_stop(shards[i].e);
    }
    pthread_barrier_wait(&stopped);
    for (unsigned i = 0; i < opts.shards; i++)
        pthread_join(shards[i].thread, NULL);
    rc = ok ? print_totals(shards) : 1;
    free(shards);
    return rc;
}
