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

#include "codec/avl.h"
#include "gateway/config.h"
#include "gateway/ingest.h"
#include "gateway/metrics.h"
#include "gateway/pgschema.h"
#include "gateway/router.h"

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
    /* Port 0 would give every shard's listener its own ephemeral port, none of them said. */
    in_port_t port = ss->ss_family == AF_INET6 ? ((struct sockaddr_in6 *)ss)->sin6_port
                                               : ((struct sockaddr_in *)ss)->sin_port;
    return port == 0 ? -1 : 0;
}

/* The shards listen with SO_REUSEPORT, which would let this process share the port with
 * another gateway (the kernel spreading devices over both) instead of failing: a plain bind
 * first says whether anything holds the port. Returns 0 or -errno. */
static int port_free(const struct sockaddr_storage *ss, socklen_t len)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* TIME_WAIT is not "in use" */
    int rc = bind(fd, (const struct sockaddr *)ss, len) == 0 ? 0 : -errno;
    close(fd);
    return rc;
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
static PGconn *connect_retry(const char *conninfo, const sigset_t *stop_signals, int metrics_fd)
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
        /* Wait in slices, answering /healthz and /metrics probes with 503 meanwhile. */
        for (unsigned waited = 0; waited < delay_ms; waited += 100) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
            if (sigtimedwait(stop_signals, NULL, &ts) > 0)
                return NULL;
            if (metrics_fd >= 0)
                metrics_answer_starting(metrics_fd, "database unreachable");
        }
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
    static struct run_options o;
    extern char **environ;
    int prc = config_load(&o, argc, argv, environ, stderr);
    if (prc)
        return prc; /* config_load said why */
    if (o.help) {
        config_usage(stdout);
        return 0;
    }
    if (o.print_config) {
        config_print(&o, stdout);
        return 0;
    }
    struct ingest_config cfg = o.cfg;
    cfg.version = AVLGATE_VERSION;
    const char *listen = o.listen, *redis = o.redis, *metrics = o.metrics,
               *schema_dir = o.schema_dir;
    if (parse_listen(listen, &cfg.listen_addr, &cfg.listen_addr_len) != 0) {
        fprintf(stderr, "avlgate run: bad --listen '%s' (want HOST:PORT with a numeric host)\n",
                listen);
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
    int prc2 = port_free(&cfg.listen_addr, cfg.listen_addr_len);
    if (prc2 != 0) {
        fprintf(stderr, "avlgate run: cannot listen on %s: %s%s\n", listen, strerror(-prc2),
                prc2 == -EADDRINUSE ? " (another process has the port)" : "");
        return 1;
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
    sigset_t all = sigs; /* and SIGHUP: re-check the connected devices against the allow-list */
    sigaddset(&all, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    signal(SIGPIPE, SIG_IGN);

    PGconn *pg = connect_retry(cfg.pg_conninfo, &sigs, cfg.metrics_fd);
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
        int sig = sigtimedwait(&all, NULL, &tick);
        if (sig == SIGHUP) {
            fprintf(stderr,
                    "level=info msg=\"SIGHUP: checking connected devices against "
                    "public.devices\" devices=%s\n",
                    cfg.devices_known ? "known" : "any (nothing to check)");
            atomic_fetch_add(&shared.allowlist_gen, 1);
            continue;
        }
        if (sig > 0) {
            fprintf(stderr, "level=info msg=\"stopping: draining\" signal=%d\n", sig);
            break;
        }
        if (atomic_load(&shared.shards_done) > 0 || atomic_load(&shared.shard_failed))
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
