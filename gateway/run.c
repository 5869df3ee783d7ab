/* run.c — `avlgate run`: options, start-up checks against PostgreSQL, the shard threads, and
 * the signals that stop them. Start-up runs on the main thread with blocking libpq; after it
 * the main thread only waits for signals, and every shard thread runs its own engine
 * (gateway/ingest.c). */
#include "gateway/run.h"

#include <arpa/inet.h>
#include <errno.h>
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
#include "gateway/hostport.h"
#include "gateway/ingest.h"
#include "gateway/log.h"
#include "gateway/metrics.h"
#include "gateway/pgschema.h"
#include "gateway/router.h"
#include "shard/cidr.h"

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
        log_line(LOG_WARN, "database unreachable at start; retrying", "retry_ms=%u error=\"%s\"",
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

/* What `avlgate run` holds from start-up to exit; the shard threads point into it. */
struct run_state {
    struct run_options o;
    struct ingest_config cfg; /* o.cfg with the addresses resolved */
    char redis_ip[INET6_ADDRSTRLEN];
    struct cidr_list proxy_from;
    sigset_t stop_sigs; /* SIGTERM, SIGINT */
    sigset_t all_sigs;  /* and SIGHUP */
    struct router router;
    void *router_mem;
    struct ingest_shared shared;
    struct thread_arg *args;
    pthread_t *threads;
};

enum { RUN_STOPPED = -1 }; /* start-up was asked to stop (a signal): exit 0 */

/* --listen and --redis from text to addresses. Returns 0 or 2. */
static int run_resolve(struct run_state *st)
{
    const struct run_options *o = &st->o;
    if (hostport_parse(o->listen, &st->cfg.listen_addr, &st->cfg.listen_addr_len) != 0) {
        fprintf(stderr, "avlgate run: bad --listen '%s' (want HOST:PORT with a numeric host)\n",
                o->listen);
        return 2;
    }
    st->cfg.udp = !o->udp || strcmp(o->udp, "off") != 0;
    if (!o->udp) {
        st->cfg.udp_addr = st->cfg.listen_addr;
        st->cfg.udp_addr_len = st->cfg.listen_addr_len;
    } else if (st->cfg.udp && hostport_parse(o->udp, &st->cfg.udp_addr, &st->cfg.udp_addr_len)) {
        fprintf(stderr,
                "avlgate run: bad --udp '%s' (want HOST:PORT with a numeric host, or off)\n",
                o->udp);
        return 2;
    }
    if (o->proxy_from) {
        char why[128];
        if (cidr_parse(o->proxy_from, &st->proxy_from, why, sizeof why) != 0)
            return 2; /* check_options said why */
        st->cfg.proxy_from = &st->proxy_from;
    }
    if (o->redis) {
        int port = resolve_redis(o->redis, st->redis_ip, sizeof st->redis_ip);
        if (port < 0) {
            fprintf(stderr, "avlgate run: bad --redis '%s' (want HOST:PORT)\n", o->redis);
            return 2;
        }
        st->cfg.redis_host = st->redis_ip;
        st->cfg.redis_port = port;
    }
    return 0;
}

/* The device port must be free; the metrics port is bound here (shard 0 serves it later).
 * Returns 0, 1 or 2 (a bad --metrics). */
static int run_claim_ports(struct run_state *st)
{
    const struct run_options *o = &st->o;
    struct ingest_config *cfg = &st->cfg;
    int rc = hostport_free(&cfg->listen_addr, cfg->listen_addr_len, SOCK_STREAM);
    if (rc != 0) {
        fprintf(stderr, "avlgate run: cannot listen on %s: %s%s\n", o->listen, strerror(-rc),
                rc == -EADDRINUSE ? " (another process has the port)" : "");
        return 1;
    }
    rc = cfg->udp ? hostport_free(&cfg->udp_addr, cfg->udp_addr_len, SOCK_DGRAM) : 0;
    if (rc != 0) {
        fprintf(stderr, "avlgate run: cannot take UDP %s: %s%s\n", o->udp ? o->udp : o->listen,
                strerror(-rc), rc == -EADDRINUSE ? " (another process has the port)" : "");
        return 1;
    }
    if (!o->metrics)
        return 0;
    struct sockaddr_storage ma;
    socklen_t ml;
    if (hostport_parse(o->metrics, &ma, &ml) != 0) {
        fprintf(stderr, "avlgate run: bad --metrics '%s' (want HOST:PORT with a numeric host)\n",
                o->metrics);
        return 2;
    }
    char err[256];
    cfg->metrics_fd = metrics_listen(&ma, ml, err, sizeof err);
    if (cfg->metrics_fd < 0) {
        fprintf(stderr, "avlgate run: --metrics %s: %s\n", o->metrics, err);
        return 1;
    }
    return 0;
}

/* Each shard's fixed file table holds conns_max descriptors. Returns 0 or 1. */
static int run_check_rlimit(const struct ingest_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && cfg->conns_max > rl.rlim_cur) {
        fprintf(stderr,
                "avlgate run: --conns-max %u is above RLIMIT_NOFILE %llu, which caps each "
                "shard's fixed file table (raise LimitNOFILE / ulimit -n, or add shards)\n",
                cfg->conns_max, (unsigned long long)rl.rlim_cur);
        return 1;
    }
    return 0;
}

/* Signals go to the main thread only: the shards inherit this mask. */
static void run_block_signals(struct run_state *st)
{
    sigemptyset(&st->stop_sigs);
    sigaddset(&st->stop_sigs, SIGTERM);
    sigaddset(&st->stop_sigs, SIGINT);
    st->all_sigs = st->stop_sigs; /* SIGHUP: re-check the connected devices (allow-list) */
    sigaddset(&st->all_sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &st->all_sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Waits for the database, applies --apply-schema, checks the schema, makes the coming days'
 * partitions. Returns 0, 1 or RUN_STOPPED. */
static int run_prepare_database(const struct run_state *st)
{
    const struct ingest_config *cfg = &st->cfg;
    const char *schema_dir = st->o.schema_dir;
    PGconn *pg = connect_retry(cfg->pg_conninfo, &st->stop_sigs, cfg->metrics_fd);
    if (!pg)
        return RUN_STOPPED;
    char err[1024];
    if (schema_dir && pgschema_apply(pg, schema_dir, err, sizeof err) < 0) {
        fprintf(stderr, "avlgate run: applying %s: %s\n", schema_dir, err);
        PQfinish(pg);
        return 1;
    }
    if (pgschema_check(pg, cfg->io_layout, err, sizeof err) != 0) {
        fprintf(stderr, "avlgate run: the database schema is not what avlgate writes: %s\n", err);
        if (cfg->io_layout == COPYENC_ARRAYS && strstr(err, ".io_ids: missing column"))
            fprintf(stderr, "avlgate run: a database from before the IO arrays: apply "
                            "schema/postgres/006_io_arrays.sql (schema/postgres/README.md), "
                            "or run with --io-layout jsonb until then\n");
        PQfinish(pg);
        return 1;
    }
    if (pgschema_ensure_partitions(pg, 7, err, sizeof err) < 0)
        log_line(LOG_WARN, "partitions not created; rows go to the default partition",
                 "error=\"%s\"", err);
    PQfinish(pg);
    return 0;
}

/* The shard ring, the shared state and the per-shard counters; then one thread per shard.
 * Returns 0 or 1. */
static int run_start_shards(struct run_state *st)
{
    const unsigned shards = st->cfg.shards;
    size_t rbytes = router_storage_bytes(shards, ROUTER_VNODES_DEFAULT);
    st->router_mem = aligned_alloc(64, (rbytes + 63) / 64 * 64);
    if (!st->router_mem ||
        router_init(&st->router, shards, ROUTER_VNODES_DEFAULT, st->router_mem, rbytes) != 0) {
        fprintf(stderr, "avlgate run: cannot build the shard ring\n");
        return 1;
    }
    struct ingest_shared *shared = &st->shared;
    shared->cfg = &st->cfg;
    shared->router = &st->router;
    shared->stats = aligned_alloc(64, sizeof *shared->stats * shards);
    st->args = calloc(shards, sizeof *st->args);
    st->threads = calloc(shards, sizeof *st->threads);
    if (!shared->stats || !st->args || !st->threads) {
        fprintf(stderr, "avlgate run: out of memory\n");
        return 1;
    }
    memset(shared->stats, 0, sizeof *shared->stats * shards);
    for (unsigned i = 0; i < shards; i++) {
        st->args[i] = (struct thread_arg){.shared = shared, .shard = i};
        if (pthread_create(&st->threads[i], NULL, shard_thread, &st->args[i]) != 0) {
            fprintf(stderr, "avlgate run: cannot start shard %u: %s\n", i, strerror(errno));
            return 1;
        }
    }
    return 0;
}

/* Waits for a stop signal, or for a shard that ended by itself (start-up failure); answers
 * SIGHUP meanwhile. */
static void run_wait(struct run_state *st)
{
    for (;;) {
        struct timespec tick = {.tv_sec = 0, .tv_nsec = 200000000};
        int sig = sigtimedwait(&st->all_sigs, NULL, &tick);
        if (sig == SIGHUP) {
            log_line(LOG_INFO, "SIGHUP: checking connected devices against public.devices",
                     "devices=%s", st->cfg.devices_known ? "known" : "any (nothing to check)");
            atomic_fetch_add(&st->shared.allowlist_gen, 1);
            continue;
        }
        if (sig > 0) {
            log_line(LOG_INFO, "stopping: draining", "signal=%d", sig);
            return;
        }
        if (atomic_load(&st->shared.shards_done) > 0 || atomic_load(&st->shared.shard_failed))
            return;
    }
}

/* Stops the shards (each drains) and joins them. Returns the exit status: 1 if one failed. */
static int run_drain(struct run_state *st)
{
    atomic_store(&st->shared.stop, true);
    int rc = 0;
    for (unsigned i = 0; i < st->cfg.shards; i++) {
        pthread_join(st->threads[i], NULL);
        if (st->args[i].rc)
            rc = 1;
    }
    return rc;
}

/* The last line: the shards' totals. */
static void run_log_totals(const struct run_state *st)
{
    uint64_t packets = 0, records = 0, stored = 0, dup = 0, acked = 0, invalid = 0;
    for (unsigned i = 0; i < st->cfg.shards; i++) {
        const struct ingest_stats *s = &st->shared.stats[i];
        packets += s->packets;
        records += s->records;
        stored += s->records_stored;
        dup += s->records_duplicate;
        acked += s->packets_acked;
        invalid += s->packets_invalid;
    }
    log_line(LOG_INFO, "stopped",
             "packets=%llu records=%llu stored=%llu duplicates=%llu acked=%llu invalid=%llu",
             (unsigned long long)packets, (unsigned long long)records, (unsigned long long)stored,
             (unsigned long long)dup, (unsigned long long)acked, (unsigned long long)invalid);
}

/* The checks that need the system, in the order their errors are reported. Returns 0, 1 or 2. */
static int run_start_checks(struct run_state *st)
{
    int rc = run_resolve(st);
    if (rc == 0)
        rc = run_claim_ports(st);
    if (rc == 0)
        rc = run_check_rlimit(&st->cfg);
    return rc;
}

int run_main(int argc, char **argv)
{
    static struct run_state st;
    extern char **environ;
    int rc = config_load(&st.o, argc, argv, environ, stderr);
    if (rc)
        return rc; /* config_load said why */
    if (st.o.help) {
        config_usage(stdout);
        return 0;
    }
    if (st.o.print_config) {
        config_print(&st.o, stdout);
        return 0;
    }
    st.cfg = st.o.cfg;
    st.cfg.version = AVLGATE_VERSION;
    rc = run_start_checks(&st);
    if (rc)
        return rc;
    run_block_signals(&st);
    rc = run_prepare_database(&st);
    if (rc)
        return rc == RUN_STOPPED ? 0 : rc;
    rc = run_start_shards(&st);
    if (rc)
        return rc;
    log_line(LOG_INFO, "listening",
             "listen=%s shards=%u instance=%s batch_rows=%u batch_ms=%u conns_max=%u", st.o.listen,
             st.cfg.shards, st.cfg.instance, st.cfg.batch_rows, st.cfg.batch_ms, st.cfg.conns_max);
    run_wait(&st);
    rc = run_drain(&st);
    run_log_totals(&st);
    free(st.args);
    free(st.threads);
    free(st.shared.stats);
    free(st.router_mem);
    return rc;
}
