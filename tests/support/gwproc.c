/* gwproc.c — see gwproc.h. Test-only: single-threaded, every wait bounded, every failure fails
 * the case. */
#include "tests/support/gwproc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"

#ifndef AVLGATE_BIN
#error "AVLGATE_BIN (the avlgate binary) must be defined by the build"
#endif
#ifndef AVLGATE_TEST_LOGDIR
#define AVLGATE_TEST_LOGDIR "."
#endif

enum {
    ARGS_MAX = 64, /* arguments of one child process */
    LOG_TAIL = 40, /* lines gwproc_print_log prints */
};

/* The case CHECK prints the log of. */
static const struct gwproc *current;

int64_t gwproc_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t gwproc_recent_ts_ms(const struct gwproc *g)
{
    return (uint64_t)(g->wall0_ms / 1000 - 3600) * 1000;
}

void gwproc_print_log(void)
{
    if (!current || !current->log[0])
        return;
    FILE *f = fopen(current->log, "r");
    if (!f)
        return;
    static char lines[LOG_TAIL][512];
    unsigned n = 0;
    while (fgets(lines[n % LOG_TAIL], sizeof lines[0], f))
        n++;
    fclose(f);
    printf("---- last lines of %s ----\n", current->log);
    for (unsigned i = n > LOG_TAIL ? n - LOG_TAIL : 0; i < n; i++)
        printf("%s", lines[i % LOG_TAIL]);
    printf("----\n");
}

/* ---- the case ------------------------------------------------------------------------------ */

void gwproc_begin(struct gwproc *g, const char *test, const char *name, const char *instance)
{
    memset(g, 0, sizeof *g);
    g->name = name;
    g->wall0_ms = gwproc_wall_ms();
    snprintf(g->instance, sizeof g->instance, "%s", instance);
    snprintf(g->log, sizeof g->log, "%s/%s_%s.log", AVLGATE_TEST_LOGDIR, test, name);
    unlink(g->log);
    current = g;
    pgtest_db_create(&g->db, name, true);
    g->port = device_free_port();
}

void gwproc_end(struct gwproc *g)
{
    if (g->pg_down)
        gwproc_pgtmp(g, "start");
    if (g->pid > 0) {
        /* SIGTERM first, so the log ends with the gateway's counters. */
        kill(g->pid, SIGTERM);
        if (gwproc_wait(g, 10000) == -1) {
            kill(g->pid, SIGKILL);
            gwproc_wait(g, 10000);
        }
    }
    if (g->db.name[0])
        pgtest_db_drop(&g->db);
    g->db.name[0] = '\0';
}

/* ---- child processes ---------------------------------------------------------------------- */

const char *gwproc_avlgate(void)
{
    return AVLGATE_BIN;
}

const char *gwproc_logdir(void)
{
    return AVLGATE_TEST_LOGDIR;
}

pid_t gwproc_spawn(const char *const *argv, const char *out_path)
{
    unsigned n = 0;
    while (argv[n])
        n++;
    assert_true(n < ARGS_MAX);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        char *args[ARGS_MAX];
        for (unsigned i = 0; i <= n; i++)
            args[i] = argv[i] ? strdup(argv[i]) : NULL;
        execv(args[0], args);
        _exit(127);
    }
    return pid;
}

int gwproc_waitpid(pid_t pid, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        if (device_now_ms() >= deadline)
            return -1;
        device_sleep_ms(10); /* bounded polling of the child */
    }
}

/* ---- the gateway --------------------------------------------------------------------------- */

bool gwproc_running(struct gwproc *g)
{
    if (g->pid <= 0)
        return false;
    int status;
    if (waitpid(g->pid, &status, WNOHANG) != g->pid)
        return true;
    g->pid = 0;
    return false;
}

void gwproc_start(struct gwproc *g, const char *const *extra)
{
    CHECK(g->pid <= 0, "a gateway is already running");
    char listen[32], shards[8];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", g->port);
    snprintf(shards, sizeof shards, "%d", GWPROC_SHARDS);
    const char *argv[ARGS_MAX] = {AVLGATE_BIN,
                                  "run",
                                  "--listen",
                                  listen,
                                  "--shards",
                                  shards,
                                  "--pg",
                                  g->db.conninfo,
                                  "--instance",
                                  g->instance,
                                  "--batch-ms",
                                  "5",
                                  "--conns-max",
                                  "1024",
                                  "--bufs",
                                  "256",
                                  "--idle-timeout-s",
                                  "120",
                                  "--frame-timeout-s",
                                  "5",
                                  "--drain-timeout-ms",
                                  "5000"};
    unsigned n = 0;
    while (argv[n])
        n++;
    for (unsigned i = 0; extra && extra[i]; i++) {
        assert_true(n < ARGS_MAX - 1);
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    pid_t pid = gwproc_spawn(argv, g->log);
    g->pid = pid;
    uint64_t deadline = device_now_ms() + GWPROC_START_WAIT_MS;
    while (!device_port_open(g->port)) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            g->pid = 0;
            CHECK(false, "the gateway exited at start (status %d)", status);
        }
        CHECK(device_now_ms() < deadline, "the gateway did not listen on %u within %d ms", g->port,
              GWPROC_START_WAIT_MS);
        device_sleep_ms(20); /* bounded polling of the port */
    }
}

int gwproc_wait(struct gwproc *g, int timeout_ms)
{
    int status = gwproc_waitpid(g->pid, timeout_ms);
    if (status != -1)
        g->pid = 0;
    return status;
}

void gwproc_kill(struct gwproc *g)
{
    if (g->pid <= 0)
        return;
    kill(g->pid, SIGKILL);
    int status = gwproc_wait(g, 10000);
    CHECK(status != -1, "the gateway survived SIGKILL");
    /* The kernel closes the listener only when the rings' teardown (a kernel worker that
     * cancels what is in flight) ends: once in a loaded CI run that took over 10 s. */
    uint64_t killed = device_now_ms(), deadline = killed + 30000;
    while (device_port_open(g->port) && device_now_ms() < deadline)
        device_sleep_ms(10); /* bounded polling of the port */
    CHECK(!device_port_open(g->port), "port %u still accepts 30 s after SIGKILL", g->port);
    uint64_t took = device_now_ms() - killed;
    if (took > 1000)
        fprintf(stderr, "gwproc: port %u closed %" PRIu64 " ms after SIGKILL\n", g->port, took);
}

struct gwproc_stats gwproc_term(struct gwproc *g)
{
    CHECK(g->pid > 0, "no gateway to stop");
    kill(g->pid, SIGTERM);
    int status = gwproc_wait(g, 15000);
    CHECK(status != -1, "the gateway did not exit within 15 s of SIGTERM");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "after SIGTERM the gateway ended with status 0x%x", status);
    struct gwproc_stats st = {-1, -1, -1, -1, -1, -1};
    FILE *f = fopen(g->log, "r");
    CHECK(f != NULL, "no log %s", g->log);
    char line[2048];
    bool found = false;
    while (fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "msg=\"stopped\" packets=");
        if (at)
            found = sscanf(at,
                           "msg=\"stopped\" packets=%lld records=%lld stored=%lld "
                           "duplicates=%lld acked=%lld invalid=%lld",
                           &st.packets, &st.records, &st.stored, &st.duplicates, &st.acked,
                           &st.invalid) == 6;
    }
    fclose(f);
    CHECK(found, "no final counters in %s", g->log);
    return st;
}

long long gwproc_shard_sum(const struct gwproc *g, const char *key)
{
    FILE *f = fopen(g->log, "r");
    CHECK(f != NULL, "no log %s", g->log);
    char line[2048], needle[64];
    snprintf(needle, sizeof needle, " %s=", key);
    long long sum = 0;
    unsigned lines = 0;
    while (fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "msg=\"shard stopped\"") ? strstr(line, needle) : NULL;
        if (at) {
            sum += strtoll(at + strlen(needle), NULL, 10);
            lines++;
        }
    }
    fclose(f);
    CHECK(lines == GWPROC_SHARDS, "%u \"shard stopped\" lines with %s", lines, key);
    return sum;
}

unsigned gwproc_log_count(const struct gwproc *g, const char *needle)
{
    FILE *f = fopen(g->log, "r");
    if (!f)
        return 0;
    char line[2048];
    unsigned n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

void gwproc_wait_log(const struct gwproc *g, const char *needle, unsigned count, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    while (gwproc_log_count(g, needle) < count && device_now_ms() < deadline)
        device_sleep_ms(10); /* bounded polling of the log */
    CHECK(gwproc_log_count(g, needle) >= count, "the gateway did not log \"%s\" within %d ms",
          needle, timeout_ms);
}

void gwproc_pgtmp(struct gwproc *g, const char *verb)
{
    const char *script = getenv("AVLGATE_PGTMP");
    const char *dir = getenv("AVLGATE_TEST_PGDIR");
    CHECK(script && dir, "AVLGATE_PGTMP and AVLGATE_TEST_PGDIR must be set (ctest sets them)");
    char cmd[2 * PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "'%s' %s '%s' >/dev/null", script, verb, dir);
    bool start = strcmp(verb, "start") == 0;
    if (!start)
        g->pg_down = true; /* also when the script fails half-way */
    int status = system(cmd);
    CHECK(status == 0, "%s failed (status %d)", cmd, status);
    if (start)
        g->pg_down = false;
}

/* ---- SQL on the case's database ------------------------------------------------------------ */

long long gwproc_sql_ll(const struct gwproc *g, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return pgtest_scalar_ll(g->db.conn, sql);
}

void gwproc_slow_commit_trigger(const struct gwproc *g, const char *seconds)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
             " BEGIN IF NEW.event_id = %d THEN PERFORM pg_sleep(%s); END IF;"
             " RETURN NULL; END $$;"
             "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON telemetry.positions"
             " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit()",
             GWPROC_SLOW_EVENT_ID, seconds);
    pgtest_exec(g->db.conn, sql);
}

long long gwproc_wait_backend_sleeping(const struct gwproc *g)
{
    long long pid = 0;
    uint64_t deadline = device_now_ms() + GWPROC_WAIT_MS;
    while (pid == 0 && device_now_ms() < deadline) {
        pid = gwproc_sql_ll(g, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity"
                               " WHERE datname = current_database() AND wait_event = 'PgSleep'"
                               " AND query NOT LIKE '%%device_state_claim%%'");
        if (pid == 0)
            device_sleep_ms(10); /* bounded polling of the server */
    }
    CHECK(pid != 0, "no transaction reached the sleeping trigger within %d ms", GWPROC_WAIT_MS);
    return pid;
}

/* ---- devices ------------------------------------------------------------------------------- */

void gwproc_dev_open(const struct gwproc *g, struct device *d, uint64_t imei)
{
    device_init(d, g->port, imei);
    int rc = device_open(d, GWPROC_WAIT_MS);
    CHECK(rc == 0, "device %" PRIu64 ": open/handshake failed: %s", imei, strerror(-rc));
}

void gwproc_send_acked(struct device *d, const uint8_t *p, size_t len, uint32_t records,
                       size_t piece, int gap_ms)
{
    int rc = device_send(d, p, len, piece, gap_ms);
    CHECK(rc == 0, "device %" PRIu64 ": send failed: %s", d->imei, strerror(-rc));
    uint32_t got = 0;
    rc = device_wait_ack(d, GWPROC_WAIT_MS, &got);
    CHECK(rc == 0, "device %" PRIu64 ": no ACK: %s", d->imei, strerror(-rc));
    CHECK(got == records, "device %" PRIu64 ": ACK says %u records, sent %u", d->imei, got,
          records);
}

void gwproc_expect_closed_silently(struct device *d, int timeout_ms, const char *what)
{
    size_t bytes = 0;
    int rc = device_wait_closed(d, timeout_ms, &bytes, NULL);
    CHECK(rc == 0, "%s: the gateway did not close the connection within %d ms", what, timeout_ms);
    CHECK(bytes == 0, "%s: the gateway sent %zu bytes before closing", what, bytes);
    device_close(d);
}

/* ---- tagged packets ------------------------------------------------------------------------ */

size_t gwproc_encode_tagged(uint8_t codec, const struct gwproc_rspec *rs, unsigned n, uint8_t *out,
                            size_t cap)
{
    static struct avl_record_src src[AVL_RECORDS_MAX];
    static struct avl_io_elem io[AVL_RECORDS_MAX][3];
    assert_true(n <= AVL_RECORDS_MAX);
    for (unsigned i = 0; i < n; i++) {
        src[i] = (struct avl_record_src){.rec = {.ts_ms = rs[i].ts_ms,
                                                 .lon_e7 = rs[i].lon_e7,
                                                 .lat_e7 = rs[i].lat_e7,
                                                 .altitude_m = 120,
                                                 .angle_deg = 180,
                                                 .speed_kmh = 50,
                                                 .satellites = rs[i].satellites,
                                                 .priority = 1,
                                                 .event_id = rs[i].event_id,
                                                 .generation = 3,
                                                 .codec = codec},
                                         .io = io[i],
                                         .io_len = 3};
        io[i][0] = (struct avl_io_elem){.id = 239, .width = 1, .value = 1};
        io[i][1] = (struct avl_io_elem){.id = GWPROC_TAG_IO_ID, .width = 4, .value = rs[i].tag};
        io[i][2] = (struct avl_io_elem){.id = 66, .width = 2, .value = 12000};
    }
    int len = avl_encode_tcp(out, cap, codec, src, n);
    CHECK(len > 0, "encode: %s", avl_strerror(len));
    return (size_t)len;
}

size_t gwproc_encode_series(uint8_t codec, uint64_t ts0_ms, int64_t step_ms, uint32_t tag0,
                            unsigned n, uint8_t *out, size_t cap)
{
    static struct gwproc_rspec rs[AVL_RECORDS_MAX];
    for (unsigned i = 0; i < n; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = (uint64_t)((int64_t)ts0_ms + (int64_t)i * step_ms),
                                      .tag = tag0 + i,
                                      .satellites = 9,
                                      .lon_e7 = 250000000 + (int32_t)(tag0 % 1000000) * 10,
                                      .lat_e7 = 546000000 + (int32_t)i * 100};
    return gwproc_encode_tagged(codec, rs, n, out, cap);
}

/* ---- rows compared with decoded records ---------------------------------------------------- */

/* The io column as copyenc writes it: {"id": value | "hex"} in wire order. */
static void io_json(const struct avl_record *r, char *out, size_t cap)
{
    struct avl_io_iter it;
    struct avl_io io;
    avl_io_iter_init(&it, r);
    size_t o = 0;
    out[o++] = '{';
    while (avl_io_next(&it, &io)) {
        assert_true(o + 64 + 2 * (size_t)io.len < cap);
        o += (size_t)snprintf(out + o, cap - o, "%s\"%u\":", o > 1 ? "," : "", io.id);
        if (io.nx) {
            out[o++] = '"';
            for (unsigned k = 0; k < io.len; k++)
                o += (size_t)snprintf(out + o, cap - o, "%02x", io.bytes[k]);
            out[o++] = '"';
        } else {
            o += (size_t)snprintf(out + o, cap - o, "%" PRIu64, io.value);
        }
    }
    out[o++] = '}';
    out[o] = '\0';
}

void gwproc_expect_row(const struct gwproc *g, uint64_t imei, const struct avl_record *r)
{
    static char json[64 * 1024], sql[80 * 1024];
    io_json(r, json, sizeof json);
    char gen[16] = "NULL";
    if (r->codec == AVL_CODEC_16)
        snprintf(gen, sizeof gen, "%u", r->generation);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM telemetry.positions_io WHERE imei = %" PRIu64
             " AND ts = telemetry.ms_to_timestamptz(%" PRIu64 ") AND priority = %u"
             " AND lon = '%.17g'::float8 AND lat = '%.17g'::float8 AND altitude = %d"
             " AND angle = %u AND satellites = %u AND speed = %u AND event_id = %u"
             " AND io = '%s'::jsonb AND generation IS NOT DISTINCT FROM %s AND codec = %u"
             " AND received_at BETWEEN telemetry.ms_to_timestamptz(%" PRId64 ") AND now()",
             imei, r->ts_ms, r->priority, (double)r->lon_e7 / 1e7, (double)r->lat_e7 / 1e7,
             r->altitude_m, r->angle_deg, r->satellites, r->speed_kmh, r->event_id, json, gen,
             r->codec, g->wall0_ms - 2000);
    long long n = pgtest_scalar_ll(g->db.conn, sql);
    CHECK(n == 1,
          "imei %" PRIu64 ": the record of ts %" PRIu64
          " (codec %u, io %s) is stored %lld times, want 1",
          imei, r->ts_ms, r->codec, json, n);
}
