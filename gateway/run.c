/* run.c — `avlgate run`: options, start-up checks against PostgreSQL, the shard threads, and
 * the signals that stop them. Start-up runs on the main thread with blocking libpq; after it
 * the main thread only waits for signals, and every shard thread runs its own engine
 * (gateway/ingest.c). */
#include "gateway/run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "gateway/codec/avl.h"
#include "gateway/ingest.h"
#include "gateway/metrics.h"
#include "gateway/pgschema.h"
#include "gateway/router.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: avlgate run --pg CONNINFO [options]\n"
        "\n"
        "  --listen HOST:PORT      device port (default 0.0.0.0:5027)\n"
        "  --shards N              shard threads (default: online CPUs)\n"
        "  --pin                   pin shard i to CPU i\n"
        "  --pg CONNINFO           libpq conninfo or URI (required; give an IP address)\n"
        "  --instance ID           this instance's name (default: the host name)\n"
        "  --batch-rows N          seal a batch at N rows (default 1000)\n"
        "  --batch-ms N            or when its first row is N ms old (default 10)\n"
        "  --batches N             batches per shard, the row ring (default 4)\n"
        "  --conns-max N           connections per shard (default 10000, <= RLIMIT_NOFILE)\n"
        "  --bufs N                receive buffers per shard, power of two (default 1024)\n"
        "  --buf-bytes N           bytes per receive buffer (default 4096)\n"
        "  --idle-timeout-s N      close a silent connection after N s (default 600, 0 off)\n"
        "  --frame-timeout-s N     close when a frame stays incomplete N s (default 30)\n"
        "  --frame-bytes-max N     largest frame accepted (default 65536)\n"
        "  --devices any|known     known: only IMEIs enabled in public.devices (default any)\n"
        "  --apply-schema DIR      apply DIR/*.sql before starting (tests, demo)\n"
        "  --drain-timeout-ms N    on SIGTERM, wait this long for commits and ACKs (10000)\n"
        "  --wait-batch-us N       once a completion is in, wait up to N us for more (100)\n"
        "  --state-idle-s N        free a quiet device's duplicate window after N s (60, 0 off)\n"
        "  --metrics HOST:PORT     serve GET /metrics (Prometheus) and GET /healthz there\n"
        "  --redis HOST:PORT       Redis for the device registry and the command intake\n"
        "                          (resolved once at start; none: commands still go out on\n"
        "                          connect and by the sweep)\n"
        "  --cmd-sweep-s N         look for open commands of connected devices every N s (3,\n"
        "                          0 off)\n"
        "  --cmd-timeout-s N       wait N s for a command's answer before sending it again (30)\n"
        "  --cmd-attempts N        sends before a command is failed (3)\n"
        "  --registry-ttl-s N      TTL of a device's registry entry, refreshed every third (90)\n");
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *h = host;
    if (h[0] == '[') { /* [::1]:5027 */
        h++;
        char *rb = strchr(h, ']');
        if (!rb)
            return -1;
        *rb = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(h[0] ? h : NULL, colon + 1, &hints, &ai) != 0)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* An instance id names Redis keys and streams (avlgate:cmd:<instance>). */
static bool instance_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* HOST:PORT to a numeric address (resolved once here: hiredis would resolve a name with a
 * blocking getaddrinfo at every reconnect, on a shard's thread). Returns the port or -1. */
static int resolve_redis(const char *s, char *ip, size_t cap)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *h = host;
    if (h[0] == '[') {
        h++;
        char *rb = strchr(h, ']');
        if (!rb)
            return -1;
        *rb = '\0';
    }
    uint32_t port;
    if (parse_u32(colon + 1, 1, 65535, &port) != 0)
        return -1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    if (getaddrinfo(h, NULL, &hints, &ai) != 0)
        return -1;
    const void *addr = ai->ai_family == AF_INET
                           ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                           : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    const char *ok = inet_ntop(ai->ai_family, addr, ip, (socklen_t)cap);
    freeaddrinfo(ai);
    return ok ? (int)port : -1;
}

/* Connects with backoff until it works or a signal asks to stop; says what it waits for. */
static PGconn *connect_retry(const char *conninfo, const sigset_t *stop_signals)
{
    unsigned delay_ms = 500;
    for (;;) {
        PGconn *c = PQconnectdb(conninfo);
        if (PQstatus(c) == CONNECTION_OK)
            return c;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        PQfinish(c);
        fprintf(stderr,
                "level=warn msg=\"database unreachable at start; retrying\" retry_ms=%u "
                "error=\"%s\"\n",
                delay_ms, msg);
        struct timespec ts = {.tv_sec = delay_ms / 1000,
                              .tv_nsec = (long)(delay_ms % 1000) * 1000000};
        if (sigtimedwait(stop_signals, NULL, &ts) > 0)
            return NULL;
        delay_ms = delay_ms * 2 > 10000 ? 10000 : delay_ms * 2;
    }
}

struct thread_arg {
    struct ingest_shared *shared;
    unsigned shard;
    int rc;
};

static void *shard_thread(void *p)
{
    struct thread_arg *a = p;
    a->rc = ingest_shard_run(a->shared, a->shard);
    return NULL;
}

int run_main(int argc, char **argv)
{
    static struct ingest_config cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg.shards = cpus > 0 ? (unsigned)cpus : 1;
    cfg.batch_rows = 1000;
    cfg.batch_ms = 10;
    cfg.batches = 4;
    cfg.conns_max = 10000;
    cfg.bufs = 1024;
    cfg.buf_bytes = 4096;
    cfg.idle_timeout_s = 600;
    cfg.frame_timeout_s = 30;
    cfg.frame_bytes_max = AVL_FRAME_BYTES_MAX_DEFAULT;
    cfg.drain_timeout_ms = 10000;
    cfg.wait_batch_us = 100;
    cfg.state_idle_s = 60;
    cfg.cmd_sweep_s = 3;
    cfg.cmd_timeout_s = 30;
    cfg.cmd_attempts = 3;
    cfg.registry_ttl_s = 90;
    const char *redis = NULL, *metrics = NULL;
    cfg.metrics_fd = -1;
    cfg.version = AVLGATE_VERSION;
    const char *listen = "0.0.0.0:5027", *schema_dir = NULL;
    static char hostname[256];
    if (gethostname(hostname, sizeof hostname) != 0)
        snprintf(hostname, sizeof hostname, "avlgate");
    cfg.instance = hostname;

    enum {
        O_LISTEN = 256,
        O_SHARDS,
        O_PIN,
        O_PG,
        O_INSTANCE,
        O_BATCH_ROWS,
        O_BATCH_MS,
        O_BATCHES,
        O_CONNS,
        O_BUFS,
        O_BUF_BYTES,
        O_IDLE,
        O_FRAME_TO,
        O_FRAME_MAX,
        O_DEVICES,
        O_SCHEMA,
        O_DRAIN,
        O_WAIT_BATCH,
        O_STATE_IDLE,
        O_METRICS,
        O_REDIS,
        O_CMD_SWEEP,
        O_CMD_TIMEOUT,
        O_CMD_ATTEMPTS,
        O_REGISTRY_TTL,
        O_HELP
    };
    static const struct option opts[] = {
        {"listen", required_argument, 0, O_LISTEN},
        {"shards", required_argument, 0, O_SHARDS},
        {"pin", no_argument, 0, O_PIN},
        {"pg", required_argument, 0, O_PG},
        {"instance", required_argument, 0, O_INSTANCE},
        {"batch-rows", required_argument, 0, O_BATCH_ROWS},
        {"batch-ms", required_argument, 0, O_BATCH_MS},
        {"batches", required_argument, 0, O_BATCHES},
        {"conns-max", required_argument, 0, O_CONNS},
        {"bufs", required_argument, 0, O_BUFS},
        {"buf-bytes", required_argument, 0, O_BUF_BYTES},
        {"idle-timeout-s", required_argument, 0, O_IDLE},
        {"frame-timeout-s", required_argument, 0, O_FRAME_TO},
        {"frame-bytes-max", required_argument, 0, O_FRAME_MAX},
        {"devices", required_argument, 0, O_DEVICES},
        {"apply-schema", required_argument, 0, O_SCHEMA},
        {"drain-timeout-ms", required_argument, 0, O_DRAIN},
        {"wait-batch-us", required_argument, 0, O_WAIT_BATCH},
        {"state-idle-s", required_argument, 0, O_STATE_IDLE},
        {"metrics", required_argument, 0, O_METRICS},
        {"redis", required_argument, 0, O_REDIS},
        {"cmd-sweep-s", required_argument, 0, O_CMD_SWEEP},
        {"cmd-timeout-s", required_argument, 0, O_CMD_TIMEOUT},
        {"cmd-attempts", required_argument, 0, O_CMD_ATTEMPTS},
        {"registry-ttl-s", required_argument, 0, O_REGISTRY_TTL},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case O_LISTEN:
            listen = optarg;
            break;
        case O_SHARDS:
            bad = parse_u32(optarg, 1, 256, &cfg.shards);
            break;
        case O_PIN:
            cfg.pin = true;
            break;
        case O_PG:
            cfg.pg_conninfo = optarg;
            break;
        case O_INSTANCE:
            cfg.instance = optarg;
            break;
        case O_BATCH_ROWS:
            bad = parse_u32(optarg, 1, 1000000, &cfg.batch_rows);
            break;
        case O_BATCH_MS:
            bad = parse_u32(optarg, 0, 60000, &cfg.batch_ms);
            break;
        case O_BATCHES:
            bad = parse_u32(optarg, 2, 16, &cfg.batches);
            break;
        case O_CONNS:
            bad = parse_u32(optarg, 1, 1u << 20, &cfg.conns_max);
            break;
        case O_BUFS:
            bad = parse_u32(optarg, 1, 32768, &cfg.bufs);
            break;
        case O_BUF_BYTES:
            bad = parse_u32(optarg, 256, 1u << 20, &cfg.buf_bytes);
            break;
        case O_IDLE:
            bad = parse_u32(optarg, 0, 7 * 86400, &cfg.idle_timeout_s);
            break;
        case O_FRAME_TO:
            bad = parse_u32(optarg, 0, 3600, &cfg.frame_timeout_s);
            break;
        case O_FRAME_MAX:
            bad = parse_u32(optarg, AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN,
                            AVL_FRAME_BYTES_MAX_CEILING, &cfg.frame_bytes_max);
            break;
        case O_DEVICES:
            if (strcmp(optarg, "known") == 0)
                cfg.devices_known = true;
            else if (strcmp(optarg, "any") != 0)
                bad = -1;
            break;
        case O_SCHEMA:
            schema_dir = optarg;
            break;
        case O_DRAIN:
            bad = parse_u32(optarg, 0, 600000, &cfg.drain_timeout_ms);
            break;
        case O_WAIT_BATCH:
            bad = parse_u32(optarg, 0, 10000, &cfg.wait_batch_us);
            break;
        case O_STATE_IDLE:
            bad = parse_u32(optarg, 0, 7 * 86400, &cfg.state_idle_s);
            break;
        case O_METRICS:
            metrics = optarg;
            break;
        case O_REDIS:
            redis = optarg;
            break;
        case O_CMD_SWEEP:
            bad = parse_u32(optarg, 0, 86400, &cfg.cmd_sweep_s);
            break;
        case O_CMD_TIMEOUT:
            bad = parse_u32(optarg, 1, 86400, &cfg.cmd_timeout_s);
            break;
        case O_CMD_ATTEMPTS:
            bad = parse_u32(optarg, 1, 100, &cfg.cmd_attempts);
            break;
        case O_REGISTRY_TTL:
            bad = parse_u32(optarg, 3, 86400, &cfg.registry_ttl_s);
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "avlgate run: bad value '%s' for --%s\n", optarg,
                    opts[o - O_LISTEN].name);
            return 2;
        }
    }
    if (optind != argc || !cfg.pg_conninfo) {
        fprintf(stderr, "avlgate run: %s\n",
                optind != argc ? "unexpected arguments" : "--pg CONNINFO is required");
        usage(stderr);
        return 2;
    }
    if (parse_listen(listen, &cfg.listen_addr, &cfg.listen_addr_len) != 0) {
        fprintf(stderr, "avlgate run: bad --listen '%s' (want HOST:PORT with a numeric host)\n",
                listen);
        return 2;
    }
    if (!instance_valid(cfg.instance)) {
        fprintf(stderr,
                "avlgate run: bad --instance '%s' (1 to 64 of A-Z a-z 0-9 . _ -; it names Redis "
                "keys)\n",
                cfg.instance);
        return 2;
    }
    static char redis_ip[INET6_ADDRSTRLEN];
    if (redis) {
        int port = resolve_redis(redis, redis_ip, sizeof redis_ip);
        if (port < 0) {
            fprintf(stderr, "avlgate run: bad --redis '%s' (want HOST:PORT)\n", redis);
            return 2;
        }
        cfg.redis_host = redis_ip;
        cfg.redis_port = port;
    }
    if (metrics) {
        struct sockaddr_storage ma;
        socklen_t ml;
        if (parse_listen(metrics, &ma, &ml) != 0) {
            fprintf(stderr,
                    "avlgate run: bad --metrics '%s' (want HOST:PORT with a numeric host)\n",
                    metrics);
            return 2;
        }
        char err[256];
        cfg.metrics_fd = metrics_listen(&ma, ml, err, sizeof err);
        if (cfg.metrics_fd < 0) {
            fprintf(stderr, "avlgate run: --metrics %s: %s\n", metrics, err);
            return 1;
        }
    }
    if (cfg.bufs & (cfg.bufs - 1)) {
        fprintf(stderr, "avlgate run: --bufs %u is not a power of two\n", cfg.bufs);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && cfg.conns_max > rl.rlim_cur) {
        fprintf(stderr,
                "avlgate run: --conns-max %u is above RLIMIT_NOFILE %llu, which caps each "
                "shard's fixed file table (raise LimitNOFILE / ulimit -n, or add shards)\n",
                cfg.conns_max, (unsigned long long)rl.rlim_cur);
        return 1;
    }

    /* Signals go to the main thread only: the shards inherit this mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    PGconn *pg = connect_retry(cfg.pg_conninfo, &sigs);
    if (!pg)
        return 0; /* asked to stop while waiting */
    char err[1024];
    if (schema_dir && pgschema_apply(pg, schema_dir, err, sizeof err) < 0) {
        fprintf(stderr, "avlgate run: applying %s: %s\n", schema_dir, err);
        PQfinish(pg);
        return 1;
    }
    if (pgschema_check(pg, err, sizeof err) != 0) {
        fprintf(stderr, "avlgate run: the database schema is not what avlgate writes: %s\n", err);
        PQfinish(pg);
        return 1;
    }
    if (pgschema_ensure_partitions(pg, 7, err, sizeof err) < 0)
        fprintf(stderr,
                "level=warn msg=\"partitions not created; rows go to the default "
                "partition\" error=\"%s\"\n",
                err);
    PQfinish(pg);

    size_t rbytes = router_storage_bytes(cfg.shards, ROUTER_VNODES_DEFAULT);
    void *rstore = aligned_alloc(64, (rbytes + 63) / 64 * 64);
    static struct router router;
    if (!rstore || router_init(&router, cfg.shards, ROUTER_VNODES_DEFAULT, rstore, rbytes) != 0) {
        fprintf(stderr, "avlgate run: cannot build the shard ring\n");
        return 1;
    }
    static struct ingest_shared shared;
    shared.cfg = &cfg;
    shared.router = &router;
    shared.stats = aligned_alloc(64, sizeof *shared.stats * cfg.shards);
    struct thread_arg *args = calloc(cfg.shards, sizeof *args);
    pthread_t *threads = calloc(cfg.shards, sizeof *threads);
    if (!shared.stats || !args || !threads) {
        fprintf(stderr, "avlgate run: out of memory\n");
        return 1;
    }
    memset(shared.stats, 0, sizeof *shared.stats * cfg.shards);
    for (unsigned i = 0; i < cfg.shards; i++) {
        args[i] = (struct thread_arg){.shared = &shared, .shard = i};
        if (pthread_create(&threads[i], NULL, shard_thread, &args[i]) != 0) {
            fprintf(stderr, "avlgate run: cannot start shard %u: %s\n", i, strerror(errno));
            return 1;
        }
    }
    fprintf(stderr,
            "level=info msg=\"listening\" listen=%s shards=%u instance=%s batch_rows=%u "
            "batch_ms=%u conns_max=%u\n",
            listen, cfg.shards, cfg.instance, cfg.batch_rows, cfg.batch_ms, cfg.conns_max);

    /* Wait for a stop signal, or for a shard that ended by itself (start-up failure). */
    for (;;) {
        struct timespec tick = {.tv_sec = 0, .tv_nsec = 200000000};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig > 0) {
            fprintf(stderr, "level=info msg=\"stopping: draining\" signal=%d\n", sig);
            break;
        }
        if (atomic_load(&shared.shards_done) > 0)
            break;
    }
    atomic_store(&shared.stop, true);
    int rc = 0;
    for (unsigned i = 0; i < cfg.shards; i++) {
        pthread_join(threads[i], NULL);
        if (args[i].rc)
            rc = 1;
    }
    uint64_t packets = 0, records = 0, stored = 0, dup = 0, acked = 0, invalid = 0;
    for (unsigned i = 0; i < cfg.shards; i++) {
        packets += shared.stats[i].packets;
        records += shared.stats[i].records;
        stored += shared.stats[i].records_stored;
        dup += shared.stats[i].records_duplicate;
        acked += shared.stats[i].packets_acked;
        invalid += shared.stats[i].packets_invalid;
    }
    fprintf(stderr,
            "level=info msg=\"stopped\" packets=%llu records=%llu stored=%llu duplicates=%llu "
            "acked=%llu invalid=%llu\n",
            (unsigned long long)packets, (unsigned long long)records, (unsigned long long)stored,
            (unsigned long long)dup, (unsigned long long)acked, (unsigned long long)invalid);
    free(args);
    free(threads);
    free(shared.stats);
    free(rstore);
    return rc;
}
