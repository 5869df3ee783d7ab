/* loadgen.c — avlgate-loadgen: simulates a fleet of Teltonika trackers against a gateway, on
 * the shard engine (shard/engine.h), up to 100,000 devices from one process. This file is its
 * main: the set-up derived from the options, the worker threads, the run's clock and its end.
 * The devices are device.c's (TCP) or udp.c's (--udp), the per-second timeline timeline.c's,
 * the output report.c's, the command line options.c's.
 *
 * Threads: the main thread parses options, starts T worker threads, prints one progress line a
 * second, stops the run and writes the summary (and --json, --verify). Each worker owns an
 * engine (its own io_uring, listen == false: it only dials) and a contiguous block of devices
 * (device.h). Workers share nothing on the hot path; once a second each one adds its interval
 * to the fleet's timeline, and the main thread reads a second once every worker has had the
 * chance to add to it. Totals are read after join.
 *
 * Owns: the fleet (its settings, the reply frame, the command log), the workers' array and the
 * two start barriers. Invariants: the fleet is written only before the workers pass `go`,
 * except stop (set once, at the end) and what the workers share through it; a worker's results
 * are read only after its thread was joined. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "loadgen/device.h"
#include "loadgen/options.h"
#include "loadgen/packetgen.h"
#include "loadgen/report.h"
#include "loadgen/timeline.h"
#include "loadgen/udp.h"
#include "loadgen/verify.h"
#include "shard/engine.h"

enum {
    RING_DEVICES_MAX = 18000, /* default: devices per worker ring */
    /* Default connections per source address. One address has ~28k ephemeral ports for one
     * destination, but the kernel's port search at connect gets slow as they fill: measured
     * here, 20k connections from one address cost 4.5 s more kernel CPU than from four,
     * 10k from one 0.5 s more. */
    SRC_DEVICES = 10000,
    FINALIZE_MS = 300, /* the main thread reads second k at k + 1 s + this */
};

_Static_assert(RING_DEVICES_MAX < 20000, "a ring's fixed file table is capped at RLIMIT_NOFILE");

static struct fleet fleet;
static struct worker *workers;      /* fleet.threads */
static pthread_barrier_t ready, go; /* the workers and main: engines made; then t0 set */
static atomic_bool start_failed;    /* some engine could not be made: nobody runs */

/* ---------------------------------------------------------------------------------------------
 * Set-up: what the run derives from the options
 * ------------------------------------------------------------------------------------------- */

static bool resolve_target(const char *target)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host)
        return false;
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    char *h = host;
    if (h[0] == '[') {
        h++;
        char *rb = strchr(h, ']');
        if (!rb)
            return false;
        *rb = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    if (getaddrinfo(h, colon + 1, &hints, &ai) != 0)
        return false;
    memcpy(&fleet.dst, ai->ai_addr, ai->ai_addrlen);
    fleet.dst_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return true;
}

/* The target, the number of rings and the source addresses. Returns 0, or 2 after a message. */
static int setup_addresses(void)
{
    const struct options *o = &fleet.o;
    if (!resolve_target(o->target)) {
        fprintf(stderr, "avlgate-loadgen: cannot resolve --connect %s\n", o->target);
        return 2;
    }
    fleet.threads =
        o->threads ? o->threads : (o->devices + RING_DEVICES_MAX - 1) / RING_DEVICES_MAX;
    if (fleet.threads > o->devices)
        fleet.threads = o->devices;
    bool loopback4 = fleet.dst.ss_family == AF_INET &&
                     (ntohl(((struct sockaddr_in *)&fleet.dst)->sin_addr.s_addr) >> 24) == 127;
    fleet.src_ips = o->src_ips != UINT32_MAX ? o->src_ips
                    : loopback4              ? (o->devices + SRC_DEVICES - 1) / SRC_DEVICES
                                             : 0;
    if (fleet.src_ips) {
        struct in_addr a;
        if (fleet.dst.ss_family != AF_INET || inet_pton(AF_INET, o->src_base, &a) != 1) {
            fprintf(stderr, "avlgate-loadgen: --src-ips needs an IPv4 target and --src-base\n");
            return 2;
        }
        fleet.src_base = ntohl(a.s_addr);
    }
    return 0;
}

/* Raises the descriptor limit to its hard limit: each ring's fixed table is capped by it.
 * Returns 0, or 2 after a message when a ring's devices do not fit. */
static int setup_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    uint32_t per = (fleet.o.devices + fleet.threads - 1) / fleet.threads;
    if (fleet.o.udp) {
        /* No fixed file table: the workers' sockets are ordinary descriptors. */
        uint64_t fds = (uint64_t)fleet.threads * (UDP_SOCKETS_PER_WORKER + 8) + 64;
        if (fds <= rl.rlim_cur)
            return 0;
        fprintf(stderr, "avlgate-loadgen: %u threads' UDP sockets do not fit RLIMIT_NOFILE %llu\n",
                fleet.threads, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    if (per + 64 > rl.rlim_cur) {
        fprintf(stderr,
                "avlgate-loadgen: %u devices per ring do not fit RLIMIT_NOFILE %llu, which "
                "caps each ring's fixed file table: add --threads\n",
                per, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    return 0;
}

/* The devices' schedule, packet sizes and timeouts. */
static void setup_schedule(void)
{
    const struct options *o = &fleet.o;
    fleet.warmup_ns = (uint64_t)(o->warmup_s * 1e9);
    if (o->pacing == PACE_RATE)
        fleet.period_ns = (uint64_t)((double)o->devices * o->records / o->rate * 1e9);
    else if (o->pacing == PACE_PERIOD)
        fleet.period_ns = (uint64_t)(o->period_s * 1e9);
    fleet.step_ms = fleet.period_ns ? fleet.period_ns / NS_PER_MS / o->records : 1000;
    if (fleet.step_ms == 0)
        fleet.step_ms = 1;
    uint32_t budget = o->packet_bytes_max ? o->packet_bytes_max
                                          : (o->records * 400 > 1024 ? o->records * 400 : 1024);
    if (budget > PKTGEN_FRAME_BYTES_MAX)
        budget = PKTGEN_FRAME_BYTES_MAX;
    /* A datagram has the sequence elements on top of packetgen's budget too. */
    uint32_t udp_max = UDP_DATAGRAM_BYTES_MAX - o->records * RECORD_SEQ_BYTES;
    if (o->udp && budget > udp_max)
        budget = udp_max;
    fleet.pkt_budget = budget;
    /* The sequence elements come on top of packetgen's budget. */
    fleet.chunk_bytes = (budget + o->records * RECORD_SEQ_BYTES + 63) / 64 * 64;
    /* TCP: reconnect after --ack-timeout-s; UDP: re-send after --udp-retry-ms. */
    fleet.ack_timeout_ns =
        o->udp ? (uint64_t)o->udp_retry_ms * NS_PER_MS : (uint64_t)(o->ack_timeout_s * 1e9);
    fleet.storm_every_ns = o->storm_fraction > 0 ? (uint64_t)(o->storm_every_s * 1e9) : 0;
}

/* The answer to commands and --command-log. Returns 0, or 2 after a message. */
static int setup_commands(void)
{
    const struct options *o = &fleet.o;
    /* Every device answers every command with the same frame: encoded once, sent by
     * reference from here. */
    size_t text_len = strlen(o->command_reply);
    fleet.reply = malloc(text_len + 64);
    struct avl_gprs_msg m = {.type = AVL_GPRS_RESPONSE,
                             .text = (const uint8_t *)o->command_reply,
                             .text_len = (uint32_t)text_len};
    int n = fleet.reply ? avl_encode_gprs(fleet.reply, text_len + 64, AVL_CODEC_12, &m, 1) : -1;
    if (n <= 0) {
        fprintf(stderr, "avlgate-loadgen: cannot encode the command reply\n");
        return 2;
    }
    fleet.reply_len = (size_t)n;
    if (o->command_log) {
        fleet.cmdlog = fopen(o->command_log, "a");
        if (!fleet.cmdlog) {
            fprintf(stderr, "avlgate-loadgen: --command-log %s: %s\n", o->command_log,
                    strerror(errno));
            return 2;
        }
        /* A line per command as it comes: the log is read while loadgen runs (a command
         * delivered while Directus is down must show at once: tests/directus/run.sh). */
        setvbuf(fleet.cmdlog, NULL, _IOLBF, 0);
    }
    return 0;
}

/* Derived settings; returns 0 or 2 (usage) after a message. */
static int setup(void)
{
    int rc = setup_addresses();
    if (rc == 0)
        rc = setup_fd_limit();
    if (rc)
        return rc;
    setup_schedule();
    rc = setup_commands();
    if (rc)
        return rc;
    fleet.nonce = mix64(wall_ns() ^ (uint64_t)getpid() << 32) & ((1u << VERIFY_NONCE_BITS) - 1);
    return 0;
}

/* SIGINT / SIGTERM end the run early (with the summary): blocked here, before any worker
 * starts, so the workers never see them and the main thread takes them with sigtimedwait. */
static void block_stop_signals(sigset_t *stop_signals)
{
    sigemptyset(stop_signals);
    sigaddset(stop_signals, SIGINT);
    sigaddset(stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---------------------------------------------------------------------------------------------
 * The workers' threads
 * ------------------------------------------------------------------------------------------- */

static void *worker_thread(void *arg)
{
    struct worker *w = arg;
    w->rc = w->udp ? udp_engine_init(w) : worker_engine_init(w);
    pthread_barrier_wait(&ready);
    pthread_barrier_wait(&go); /* fleet.t0_ns is set */
    if (w->rc || atomic_load(&start_failed))
        return NULL;
    if (w->udp)
        udp_start(w);
    else
        worker_start(w);
    w->rc = engine_run(w->e);
    if (w->rc)
        snprintf(w->err, sizeof w->err, "engine_run: %s", strerror(-w->rc));
    return NULL;
}

/* Sizes the workers, a contiguous block of devices each, and starts their threads, which make
 * their engines and wait at `ready`. Returns 0, or 1 after a message. */
static int workers_create(void)
{
    workers = calloc(fleet.threads, sizeof *workers);
    if (!workers) {
        fprintf(stderr, "avlgate-loadgen: out of memory\n");
        return 1;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    pthread_barrier_init(&ready, NULL, fleet.threads + 1);
    pthread_barrier_init(&go, NULL, fleet.threads + 1);
    for (uint32_t t = 0; t < fleet.threads; t++) {
        struct worker *w = &workers[t];
        uint32_t base = (uint32_t)((uint64_t)fleet.o.devices * t / fleet.threads);
        uint32_t devs_len = (uint32_t)((uint64_t)fleet.o.devices * (t + 1) / fleet.threads) - base;
        /* Slack for slots still closing while their devices dial again. */
        uint64_t conns = (uint64_t)devs_len + devs_len / 8 + 64;
        if (conns > rl.rlim_cur)
            conns = rl.rlim_cur;
        if (worker_init(w, &fleet, t, base, devs_len, (uint32_t)conns) != 0) {
            fprintf(stderr, "avlgate-loadgen: out of memory for %u devices\n", devs_len);
            return 1;
        }
        if (fleet.o.udp && udp_init(w, w->err, sizeof w->err) != 0) {
            fprintf(stderr, "avlgate-loadgen: worker %u: %s\n", t, w->err);
            return 1;
        }
        if (pthread_create(&w->thread, NULL, worker_thread, w) != 0) {
            fprintf(stderr, "avlgate-loadgen: pthread_create: %s\n", strerror(errno));
            return 1;
        }
    }
    return 0;
}

/* Once every engine is made: starts the run's clock and lets the workers go. False (after the
 * workers' messages) when an engine could not be made: then every worker ends at once. */
static bool workers_go(void)
{
    pthread_barrier_wait(&ready);
    bool failed = false;
    for (uint32_t t = 0; t < fleet.threads; t++) {
        if (workers[t].rc) {
            fprintf(stderr, "avlgate-loadgen: worker %u: %s\n", t, workers[t].err);
            failed = true;
        }
    }
    atomic_store(&start_failed, failed);
    fleet.t0_ns = engine_clock_ns();
    fleet.t0_wall_ms = wall_ns() / NS_PER_MS / 1000 * 1000;
    pthread_barrier_wait(&go);
    return !failed;
}

/* Stops the workers, joins them and sums what they did into *s (all but the connected_
 * figures, which are the timeline's). Returns 0, or 1 when a worker failed (after its
 * message). */
static int workers_collect(struct summary *s)
{
    atomic_store(&fleet.stop, true);
    uint64_t t_end = engine_clock_ns();
    for (uint32_t t = 0; t < fleet.threads; t++)
        engine_stop(workers[t].e);
    *s = (struct summary){.elapsed_s = (double)(t_end - fleet.t0_ns) / 1e9, .connect_all_s = -1};
    uint64_t all_ns = 0;
    bool all = true;
    int exit_code = 0;
    for (uint32_t t = 0; t < fleet.threads; t++) {
        struct worker *w = &workers[t];
        pthread_join(w->thread, NULL);
        if (w->rc) {
            fprintf(stderr, "avlgate-loadgen: worker %u: %s\n", t, w->err);
            exit_code = 1;
        }
        counters_add(&s->c, &w->c);
        hdr_hist_merge(&s->ack, &w->ack);
        hdr_hist_merge(&s->connect, &w->connect);
        if (w->all_connected_ns == 0)
            all = false;
        else if (w->all_connected_ns > all_ns)
            all_ns = w->all_connected_ns;
    }
    if (all)
        s->connect_all_s = (double)(all_ns - fleet.t0_ns) / 1e9;
    return exit_code;
}

/* Joins the workers of a run that did not start and frees their engines. */
static void workers_abandon(void)
{
    for (uint32_t t = 0; t < fleet.threads; t++) {
        pthread_join(workers[t].thread, NULL);
        engine_free(workers[t].e);
    }
}

static void workers_free(void)
{
    for (uint32_t t = 0; t < fleet.threads; t++) {
        engine_free(workers[t].e);
        udp_free(&workers[t]);
        worker_free(&workers[t]);
    }
    free(workers);
}

/* ---------------------------------------------------------------------------------------------
 * The run
 * ------------------------------------------------------------------------------------------- */

enum wake {
    WAKE_SECOND,      /* the time to read the second */
    WAKE_END,         /* --duration-s over, or every device reached --packets */
    WAKE_INTERRUPTED, /* SIGINT or SIGTERM */
};

/* Waits until `wake`, the run's end (`end`), every device done or a stop signal. */
static enum wake wait_until(uint64_t wake, uint64_t end, const sigset_t *stop_signals)
{
    for (;;) {
        uint64_t now = engine_clock_ns();
        uint64_t until = wake < end ? wake : end;
        if (now >= until)
            return now >= end ? WAKE_END : WAKE_SECOND;
        if (atomic_load(&fleet.devices_done) >= fleet.o.devices)
            return WAKE_END;
        uint64_t wait = until - now;
        if (wait > 50 * NS_PER_MS)
            wait = 50 * NS_PER_MS; /* also notices --packets being reached */
        struct timespec ts = {.tv_sec = (time_t)(wait / NS_PER_S),
                              .tv_nsec = (long)(wait % NS_PER_S)};
        if (sigtimedwait(stop_signals, NULL, &ts) > 0)
            return WAKE_INTERRUPTED;
    }
}

/* Once a second: reads the second that ended, keeps it, prints it (--progress), until the run
 * ends. Returns true when a signal ended it. */
static bool run_seconds(const sigset_t *stop_signals, struct report_seconds *tl)
{
    uint64_t duration_ns = (uint64_t)(fleet.o.duration_s * 1e9);
    uint64_t end = duration_ns ? fleet.t0_ns + duration_ns : UINT64_MAX;
    for (int64_t k = 0;; k++) {
        uint64_t wake = fleet.t0_ns + (uint64_t)(k + 1) * NS_PER_S + FINALIZE_MS * NS_PER_MS;
        enum wake why = wait_until(wake, end, stop_signals);
        if (engine_clock_ns() < wake)
            return why == WAKE_INTERRUPTED; /* the second is not over: its sample is partial */
        struct timeline_sample smp = timeline_take(&fleet.timeline, k);
        report_seconds_push(tl, &smp);
        if (fleet.o.progress)
            report_second(stderr, &smp);
        if (why != WAKE_SECOND)
            return why == WAKE_INTERRUPTED;
    }
}

/* --verify: every acknowledged record stored exactly once. Returns 0, or 1 after a message or
 * a failed check; *vr is filled and *verified true when the check ran. */
static int verify_fleet(struct verify_result *vr, bool *verified)
{
    const struct options *o = &fleet.o;
    uint32_t *acked = calloc(o->devices, sizeof *acked);
    uint32_t *sent = calloc(o->devices, sizeof *sent);
    char err[512] = "";
    int rc = 0;
    if (!acked || !sent) {
        fprintf(stderr, "avlgate-loadgen: out of memory for verify\n");
        rc = 1;
        goto out;
    }
    for (uint32_t t = 0; t < fleet.threads; t++) {
        const struct worker *w = &workers[t];
        for (uint32_t di = 0; di < w->devs_len; di++) {
            if (w->udp)
                udp_device_records(w, di, &acked[w->base + di], &sent[w->base + di]);
            else
                worker_device_records(w, di, &acked[w->base + di], &sent[w->base + di]);
        }
    }
    if (verify_run(o->pg, o->imei_base, o->devices, fleet.nonce, acked, sent, vr, err,
                   sizeof err) != 0) {
        fprintf(stderr, "avlgate-loadgen: %s\n", err);
        rc = 1;
        goto out;
    }
    *verified = true;
    report_verify(stdout, vr);
    if (!verify_ok(vr))
        rc = 1;
out:
    free(acked);
    free(sent);
    return rc;
}

/* The end of the run: the summary line, --verify, --json, the failures. Returns 0 or 1. */
static int finish(const struct summary *s, const struct report_seconds *tl, bool interrupted)
{
    int exit_code = 0;
    report_summary(stdout, &fleet, s, false);
    fputc('\n', stdout);
    fflush(stdout);
    if (interrupted)
        fprintf(stderr, "avlgate-loadgen: interrupted\n");
    if (fleet.cmdlog)
        fclose(fleet.cmdlog);
    struct verify_result vr;
    bool verified = false;
    if (fleet.o.verify && verify_fleet(&vr, &verified) != 0)
        exit_code = 1;
    if (fleet.o.json) {
        int jr = report_json(fleet.o.json, &fleet, s, tl, verified ? &vr : NULL);
        if (jr) {
            fprintf(stderr, "avlgate-loadgen: --json %s: %s\n", fleet.o.json, strerror(-jr));
            exit_code = 1;
        }
    }
    if (report_failures(&fleet, s))
        exit_code = 1;
    return exit_code;
}

int main(int argc, char **argv)
{
    int rc = options_parse(argc, argv, &fleet.o);
    if (rc == 0)
        rc = setup();
    if (rc)
        return rc;
    sigset_t stop_signals;
    block_stop_signals(&stop_signals);
    timeline_init(&fleet.timeline);
    if (workers_create() != 0)
        return 1;
    if (!workers_go()) {
        workers_abandon();
        return 1;
    }
    if (fleet.o.progress)
        report_start(stderr, &fleet);

    struct report_seconds tl = {0};
    bool interrupted = run_seconds(&stop_signals, &tl);
    struct summary s;
    int exit_code = workers_collect(&s);
    s.connected_max = tl.connected_max;
    s.connected_end = tl.len ? tl.v[tl.len - 1].n.connected : 0;
    if (s.connected_max == 0 && (s.c.handshakes > 0 || s.c.packets_acked > 0))
        s.connected_max = 1; /* ran for less than a second */
    if (finish(&s, &tl, interrupted) != 0)
        exit_code = 1;

    workers_free();
    free(fleet.reply);
    report_seconds_free(&tl);
    return exit_code;
}
