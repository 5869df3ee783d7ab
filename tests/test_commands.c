/* test_commands.c — the gateway's command side: Codec 12 commands queued in
 * public.commands, routed through Redis, delivered to the tracker's connection, answered.
 *
 * Each case makes a database of its own on the pg fixture's server and starts the real
 * `avlgate run` (two shards) as a child process (tests/support/gwproc.h); devices are played
 * over loopback TCP (tests/support/device.h); commands are queued with the real
 * `avlgate command send` or with plain SQL. The test runs a Redis of its own
 * (tests/redis/redistmp.sh in test_commands_redis/ of the build directory, started once,
 * emptied before each case) because one case kills it and starts it again on the same port;
 * it is read back with hiredis.
 *
 * What is checked, against the specification of the command side:
 *   - rows: status, attempts, response, response_hex, sent_at / answered_at set or not;
 *   - bytes on the device's socket: each command frame is exactly avl_encode_command(payload),
 *     one at a time in id order, never before the ACK of a packet in flight, and nothing else;
 *   - Redis: the registry hash avlgate:dev:{imei} (instance, shard, epoch, TTL), the intake
 *     stream avlgate:cmd:<instance> and its group avlgate (XPENDING back to 0 once handled,
 *     its own pending entries re-read at start), the replies stream avlgate:replies;
 *   - the CLI's exit status and output;
 *   - the per-shard counters of the "shard stopped" lines.
 *
 * Cases: an online device answers (fast path); the offline queue, without --redis; a row
 * inserted by plain SQL (the sweep); a replacing connection; Redis killed and restarted;
 * timeouts and retries to `failed`; expiry before delivery and while awaiting the answer; an
 * IMEI that never connects; answers in UTF-8 and not; the ACK before the command; the intake's
 * pending entries re-read at start; the registry entry's life; an answer nobody asked for;
 * expires_at infinite or far ahead; the grace period after a command that failed; Redis with
 * a password (the case restarts the test's Redis with requirepass, the teardown without).
 *
 * Every wait is bounded; a wait that runs out is a failure. The gateway's output goes to
 * test_commands_<case>.log in the build directory, the CLI's to test_commands_<case>_cli.log;
 * a failing check prints the gateway log's tail. By hand: TEST_COMMANDS_FILTER=test_expiry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "codec/avl.h"
#include "gateway/router.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/testutil.h"
#include "tests/support/pgtest.h"

#ifndef AVLGATE_REDISTMP
#error "AVLGATE_REDISTMP (tests/redis/redistmp.sh) must be defined by the build"
#endif

enum {
    SHARDS = GWPROC_SHARDS,
    WAIT_MS = GWPROC_WAIT_MS,
    PKT_BYTES = 1024,
    FRAME_BYTES = 2048,      /* a command frame: 1024 bytes of text at most, and framing */
    CLI_EXIT_MS = 15000,     /* the CLI's own --wait, and its start-up */
    REDIS_TIMEOUT_MS = 2000, /* the test's own Redis commands */
    REREGISTER_MS = 10000,   /* the gateway back on a restarted Redis (backoff up to 5 s) */
    QUIET_MS = 700,          /* "nothing more comes": how long the device listens */
};

#define INSTANCE       "test_commands"
#define INTAKE         "avlgate:cmd:" INSTANCE
#define GROUP          "avlgate"
#define REPLIES        "avlgate:replies"
#define IMEI_BASE      UINT64_C(352093081452000)
#define REDIS_PASSWORD "test-commands-pw"
#define ARGS(...)      ((const char *const[]){__VA_ARGS__, NULL})

/* ---- the case's context: everything the teardown must undo -------------------------------- */

static struct {
    struct gwproc gw; /* the gateway and the case's database */
    struct router router;
    void *router_store;
    uint64_t imei;                        /* the case's device */
    char digits[AVL_IMEI_DIGITS_MAX + 1]; /* its IMEI as the CLI and Redis write it */
    char cli_log[PATH_MAX];               /* the CLI's stdout and stderr */
    pid_t cli_pid;                        /* a CLI running in the background; 0 when none */
    char cli_out[4096];                   /* the last CLI's output */
    unsigned packets; /* telemetry packets sent in the case (their tags and times) */
} T;

/* The test's Redis, for the whole file. */
static struct {
    char dir[PATH_MAX];
    char addr[64]; /* 127.0.0.1:PORT */
    int port;
    bool down;         /* killed by a case: the teardown starts it again */
    char password[64]; /* required by the server ("": none); the teardown removes it */
} R;

/* ---- Redis ----------------------------------------------------------------------------------- */

/* Runs redistmp.sh verb on the test's directory; start records the address it prints. */
static void redistmp(const char *verb)
{
    char line[sizeof R.addr];
    int status = tu_script(AVLGATE_REDISTMP, verb, R.dir, line, sizeof line);
    CHECK(status == 0, "redistmp.sh %s %s failed (status %d)", verb, R.dir, status);
    if (strcmp(verb, "start") == 0) {
        CHECK(line[0] != '\0', "redistmp.sh start printed no address");
        const char *colon = strrchr(line, ':');
        CHECK(colon != NULL, "redistmp.sh start printed '%s'", line);
        snprintf(R.addr, sizeof R.addr, "%s", line);
        R.port = atoi(colon + 1);
        R.down = false;
    } else if (strcmp(verb, "kill") == 0 || strcmp(verb, "stop") == 0) {
        R.down = true;
    }
}

/* Stops the test's Redis and starts it again on the same port requiring password ("": none;
 * redistmp.sh's REDISTMP_PASSWORD). */
static void redis_restart(const char *password)
{
    redistmp("stop");
    CHECK(setenv("REDISTMP_PASSWORD", password, 1) == 0, "setenv failed");
    redistmp("start");
    unsetenv("REDISTMP_PASSWORD");
    snprintf(R.password, sizeof R.password, "%s", password);
}

/* A fresh connection to the test's Redis (the server may have been restarted since the last
 * one), AUTHed when it requires a password, with REDIS_TIMEOUT_MS timeouts. */
static redisContext *redis_open(void)
{
    const struct timeval tv = {.tv_sec = REDIS_TIMEOUT_MS / 1000, .tv_usec = 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", R.port, tv);
    CHECK(c != NULL && c->err == 0, "redis %s: %s", R.addr, c ? c->errstr : "out of memory");
    redisSetTimeout(c, tv);
    if (R.password[0]) {
        redisReply *auth = redisCommand(c, "AUTH %s", R.password);
        CHECK(auth != NULL && auth->type == REDIS_REPLY_STATUS, "redis %s: AUTH failed", R.addr);
        freeReplyObject(auth);
    }
    return c;
}

/* One command on a fresh connection. Returns the reply, an error reply included; fails the case
 * when none came. */
static redisReply *redis_cmd(const char *fmt, ...)
{
    redisContext *c = redis_open();
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    CHECK(r != NULL, "redis %s: %s (%s)", R.addr, c->errstr, fmt);
    redisFree(c);
    return r;
}

/* ---- Directus's bus (--directus-bus) ------------------------------------------------------- */

#define BUS_CHANNEL "directus:bus:websocket.event"

/* A connection subscribed to Directus's bus channel. */
static redisContext *bus_subscribe(void)
{
    redisContext *c = redis_open();
    redisReply *r = redisCommand(c, "SUBSCRIBE %s", BUS_CHANNEL);
    CHECK(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 3, "SUBSCRIBE failed");
    freeReplyObject(r);
    return c;
}

/* The next message on the bus within ms, copied into out; false when none came. */
static bool bus_next(redisContext *c, int ms, char *out, size_t cap)
{
    const struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    redisSetTimeout(c, tv);
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL)
        return false; /* timed out: the context is spent (the caller frees it) */
    const redisReply *r = reply;
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              strcmp(r->element[0]->str, "message") == 0 &&
              strcmp(r->element[1]->str, BUS_CHANNEL) == 0,
          "not a message on %s", BUS_CHANNEL);
    snprintf(out, cap, "%s", r->element[2]->str);
    freeReplyObject(reply);
    return true;
}

/* An integer reply. */
static long long redis_int(const char *fmt, const char *key)
{
    redisReply *r = redis_cmd(fmt, key);
    CHECK(r->type == REDIS_REPLY_INTEGER, "redis '%s' %s: reply type %d (%s)", fmt, key, r->type,
          r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* The string value of field name in a flat array of field, value (HGETALL, XINFO, an entry's
 * fields), or NULL. */
static const redisReply *field(const redisReply *flat, const char *name)
{
    if (flat == NULL || flat->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < flat->elements; i += 2) {
        const redisReply *k = flat->element[i];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0)
            return flat->element[i + 1];
    }
    return NULL;
}

static bool field_is(const redisReply *flat, const char *name, const char *want)
{
    const redisReply *v = field(flat, name);
    return v != NULL && v->type == REDIS_REPLY_STRING && v->len == strlen(want) &&
           memcmp(v->str, want, v->len) == 0;
}

/* The registry entry of a device. */
struct reg {
    bool present;
    unsigned fields; /* fields in the hash */
    char instance[64], shard[16], epoch[32], conn[32];
    long long ttl_s;
};

static struct reg registry_get(uint64_t imei)
{
    char key[64], digits[AVL_IMEI_DIGITS_MAX + 1];
    avl_imei_format(imei, digits);
    snprintf(key, sizeof key, "avlgate:dev:{%s}", digits);
    struct reg g = {0};
    redisReply *r = redis_cmd("HGETALL %s", key);
    CHECK(r->type == REDIS_REPLY_ARRAY, "HGETALL %s: reply type %d", key, r->type);
    g.present = r->elements > 0;
    g.fields = (unsigned)(r->elements / 2);
    const struct {
        const char *name;
        char *out;
        size_t cap;
    } want[4] = {{"instance", g.instance, sizeof g.instance},
                 {"shard", g.shard, sizeof g.shard},
                 {"epoch", g.epoch, sizeof g.epoch},
                 {"conn", g.conn, sizeof g.conn}};
    for (unsigned i = 0; i < 4; i++) {
        const redisReply *v = field(r, want[i].name);
        if (v && v->type == REDIS_REPLY_STRING)
            snprintf(want[i].out, want[i].cap, "%.*s", (int)v->len, v->str);
    }
    freeReplyObject(r);
    g.ttl_s = redis_int("TTL %s", key);
    return g;
}

/* Waits until the device's registry entry exists (naming a connection other than not_conn, when
 * given) and returns it. */
static struct reg wait_registry(uint64_t imei, const char *not_conn, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    struct reg g = registry_get(imei);
    while ((!g.present || (not_conn && strcmp(g.conn, not_conn) == 0)) &&
           device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of Redis */
        g = registry_get(imei);
    }
    CHECK(g.present, "IMEI %" PRIu64 ": no registry entry within %d ms", imei, timeout_ms);
    CHECK(!not_conn || strcmp(g.conn, not_conn) != 0,
          "IMEI %" PRIu64 ": the registry still names connection %s after %d ms", imei, not_conn,
          timeout_ms);
    return g;
}

static void wait_registry_gone(uint64_t imei, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    struct reg g = registry_get(imei);
    while (g.present && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of Redis */
        g = registry_get(imei);
    }
    CHECK(!g.present, "IMEI %" PRIu64 ": registry entry (epoch %s) still there after %d ms", imei,
          g.epoch, timeout_ms);
}

/* XPENDING's count for the intake group. */
static long long intake_pending(void)
{
    redisReply *r = redis_cmd("XPENDING %s %s", INTAKE, GROUP);
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
              r->element[0]->type == REDIS_REPLY_INTEGER,
          "XPENDING " INTAKE " " GROUP ": %s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

static void wait_intake_pending(long long want, int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    long long n = intake_pending();
    while (n != want && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of Redis */
        n = intake_pending();
    }
    CHECK(n == want, "XPENDING " INTAKE " " GROUP " is %lld after %d ms, want %lld", n, timeout_ms,
          want);
}

/* The intake group's last-delivered-id into out ("" while the group does not exist). */
static void intake_last_delivered(char *out, size_t cap)
{
    out[0] = '\0';
    redisReply *r = redis_cmd("XINFO GROUPS %s", INTAKE);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (field_is(r->element[i], "name", GROUP)) {
            const redisReply *id = field(r->element[i], "last-delivered-id");
            snprintf(out, cap, "%s", id && id->type == REDIS_REPLY_STRING ? id->str : "?");
        }
    freeReplyObject(r);
}

/* Waits until the gateway has read the intake entry entry_id (the group's last-delivered-id),
 * or only until the group exists when entry_id is NULL. */
static void wait_intake_read(const char *entry_id, int timeout_ms)
{
    char last[64];
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    intake_last_delivered(last, sizeof last);
    while ((!last[0] || (entry_id && strcmp(last, entry_id) != 0)) && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of Redis */
        intake_last_delivered(last, sizeof last);
    }
    CHECK(last[0], "no group " GROUP " on " INTAKE " within %d ms", timeout_ms);
    CHECK(!entry_id || strcmp(last, entry_id) == 0,
          "the gateway did not read intake entry %s within %d ms (last delivered: %s)", entry_id,
          timeout_ms, last);
}

/* The id of the newest entry of a stream into out ("" when it has none). */
static void stream_last_id(const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    redisReply *r = redis_cmd("XREVRANGE %s + - COUNT 1", key);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1)
        snprintf(out, cap, "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
}

/* The replies stream's entries for command id: how many, and the last one's fields. */
struct reply {
    unsigned count;
    char imei[32], status[16], response[2200];
    bool has_response;
};

static struct reply reply_of(long long id)
{
    struct reply out = {0};
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", id);
    redisReply *r = redis_cmd("XRANGE %s - +", REPLIES);
    CHECK(r->type == REDIS_REPLY_ARRAY, "XRANGE " REPLIES ": reply type %d", r->type);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        if (!field_is(f, "id", idtext))
            continue;
        out.count++;
        const redisReply *v;
        if ((v = field(f, "imei")) && v->type == REDIS_REPLY_STRING)
            snprintf(out.imei, sizeof out.imei, "%s", v->str);
        if ((v = field(f, "status")) && v->type == REDIS_REPLY_STRING)
            snprintf(out.status, sizeof out.status, "%s", v->str);
        out.has_response = (v = field(f, "response")) && v->type == REDIS_REPLY_STRING;
        if (out.has_response)
            snprintf(out.response, sizeof out.response, "%.*s", (int)v->len, v->str);
    }
    freeReplyObject(r);
    return out;
}

/* Waits for the one replies entry of command id (of the case's device): its status, and its
 * response when response is not NULL. */
static void expect_reply(long long id, const char *status, const char *response)
{
    uint64_t deadline = device_now_ms() + WAIT_MS;
    struct reply got = reply_of(id);
    while (got.count == 0 && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of Redis */
        got = reply_of(id);
    }
    CHECK(got.count == 1, "command %lld: %u entries in " REPLIES ", want 1", id, got.count);
    CHECK(strcmp(got.imei, T.digits) == 0 && strcmp(got.status, status) == 0,
          "command %lld: reply imei %s status %s, want %s %s", id, got.imei, got.status, T.digits,
          status);
    CHECK(got.has_response, "command %lld: the reply has no response field", id);
    CHECK(!response || strcmp(got.response, response) == 0,
          "command %lld: reply response '%s', want '%s'", id, got.response, response);
}

static long long stream_len(const char *key)
{
    return redis_int("XLEN %s", key);
}

/* ---- the CLI ------------------------------------------------------------------------------ */

/* Starts `avlgate command send --pg <case db> [--redis <test's redis>] args...` in the
 * background; its output goes to T.cli_log (emptied first). */
static void cli_start(bool redis, const char *const *args)
{
    CHECK(T.cli_pid == 0, "a CLI is already running");
    const char *argv[32] = {gwproc_avlgate(), "command", "send", "--pg", T.gw.db.conninfo};
    unsigned n = 5;
    if (redis) {
        argv[n++] = "--redis";
        argv[n++] = R.addr;
    }
    for (unsigned i = 0; args[i]; i++) {
        assert_true(n < 31);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    unlink(T.cli_log);
    T.cli_pid = gwproc_spawn(argv, T.cli_log);
}

/* Waits for the background CLI; returns its exit status, its output in T.cli_out. */
static int cli_finish(void)
{
    int status = gwproc_waitpid(T.cli_pid, CLI_EXIT_MS);
    CHECK(status != -1, "the CLI did not exit within %d ms", CLI_EXIT_MS);
    T.cli_pid = 0;
    CHECK(WIFEXITED(status), "the CLI ended with wait status 0x%x", status);
    FILE *f = fopen(T.cli_log, "r");
    CHECK(f != NULL, "no CLI output %s", T.cli_log);
    size_t n = fread(T.cli_out, 1, sizeof T.cli_out - 1, f);
    T.cli_out[n] = '\0';
    fclose(f);
    printf("avlgate command send (exit %d):\n%s", WEXITSTATUS(status), T.cli_out);
    return WEXITSTATUS(status);
}

static int cli_send(bool redis, const char *const *args)
{
    cli_start(redis, args);
    return cli_finish();
}

/* The id in the CLI's "command <id> queued for <the case's IMEI>" line. */
static long long cli_id(void)
{
    char want[64];
    long long id = -1;
    const char *at = strstr(T.cli_out, "command ");
    CHECK(at && sscanf(at, "command %lld queued for ", &id) == 1, "no queued line in:\n%s",
          T.cli_out);
    snprintf(want, sizeof want, "command %lld queued for %s\n", id, T.digits);
    CHECK(strstr(T.cli_out, want) != NULL, "no line '%s' in:\n%s", want, T.cli_out);
    return id;
}

/* The CLI's output contains want. */
static void cli_expect(const char *want)
{
    CHECK(strstr(T.cli_out, want) != NULL, "the CLI's output lacks '%s':\n%s", want, T.cli_out);
}

/* The CLI's last line is want. */
static void cli_expect_last(const char *want)
{
    size_t n = strlen(T.cli_out);
    while (n > 0 && T.cli_out[n - 1] == '\n')
        n--;
    size_t start = n;
    while (start > 0 && T.cli_out[start - 1] != '\n')
        start--;
    CHECK(n - start == strlen(want) && memcmp(T.cli_out + start, want, n - start) == 0,
          "the CLI's last line is '%.*s', want '%s'", (int)(n - start), T.cli_out + start, want);
}

/* ---- rows --------------------------------------------------------------------------------- */

static long long insert_command(uint64_t imei, const char *payload, const char *expires_at)
{
    return gwproc_sql_ll(&T.gw,
                         "INSERT INTO public.commands (imei, payload, expires_at)"
                         " VALUES (%" PRIu64 ", '%s', %s) RETURNING id",
                         imei, payload, expires_at ? expires_at : "NULL");
}

/* A command's row as "status|attempts|response|response_hex|sent_at set|answered_at set",
 * the last three as 0/1: "answered|1|FW ok|0|1|1". */
static void row_of(long long id, char *out, size_t cap)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT format('%%s|%%s|%%s|%%s|%%s|%%s', status, attempts, coalesce(response, ''),"
             " response_hex::int, (sent_at IS NOT NULL)::int, (answered_at IS NOT NULL)::int)"
             " FROM public.commands WHERE id = %lld",
             id);
    pgtest_scalar(T.gw.db.conn, sql, out, cap);
}

/* Waits until the row of command id reads want (see row_of). */
static void wait_row(long long id, const char *want, int timeout_ms)
{
    char have[2400];
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    row_of(id, have, sizeof have);
    while (strcmp(have, want) != 0 && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of the database */
        row_of(id, have, sizeof have);
    }
    CHECK(strcmp(have, want) == 0, "command %lld: row '%s' after %d ms, want '%s'", id, have,
          timeout_ms, want);
}

/* The row of command id reads want now. */
static void expect_row(long long id, const char *want)
{
    char have[2400];
    row_of(id, have, sizeof have);
    CHECK(strcmp(have, want) == 0, "command %lld: row '%s', want '%s'", id, have, want);
}

/* ---- the device's side -------------------------------------------------------------------- */

/* Reads one TCP frame (header, data, CRC) into buf; returns its length. */
static size_t read_frame(struct device *d, uint8_t *buf, size_t cap, int timeout_ms,
                         const char *what)
{
    int rc = device_read(d, buf, AVL_TCP_HEADER_BYTES, timeout_ms);
    CHECK(rc == 0, "%s: no frame within %d ms: %s", what, timeout_ms, strerror(-rc));
    uint32_t data_len =
        (uint32_t)buf[4] << 24 | (uint32_t)buf[5] << 16 | (uint32_t)buf[6] << 8 | buf[7];
    CHECK(buf[0] == 0 && buf[1] == 0 && buf[2] == 0 && buf[3] == 0,
          "%s: the gateway sent %02x %02x %02x %02x, not a frame's preamble", what, buf[0], buf[1],
          buf[2], buf[3]);
    CHECK(data_len <= cap - AVL_TCP_OVERHEAD_BYTES, "%s: a frame of %u data bytes", what, data_len);
    rc = device_read(d, buf + AVL_TCP_HEADER_BYTES, data_len + AVL_TCP_TRAILER_BYTES, WAIT_MS);
    CHECK(rc == 0, "%s: the frame was cut: %s", what, strerror(-rc));
    return data_len + AVL_TCP_OVERHEAD_BYTES;
}

/* The next bytes on d are one Codec 12 command frame with payload, exactly as
 * avl_encode_command makes it. Returns when it arrived (device_now_ms). */
static uint64_t expect_command(struct device *d, const char *payload, int timeout_ms)
{
    static uint8_t got[FRAME_BYTES], want[FRAME_BYTES];
    int wlen =
        avl_encode_command(want, sizeof want, (const uint8_t *)payload, (uint32_t)strlen(payload));
    assert_true(wlen > 0);
    size_t len = read_frame(d, got, sizeof got, timeout_ms, payload);
    uint64_t at = device_now_ms();
    if (len != (size_t)wlen || memcmp(got, want, len) != 0) {
        static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
        uint8_t codec = 0;
        int n = avl_decode_gprs(got, len, &codec, msgs);
        CHECK(false,
              "want command '%s': got a frame of %zu bytes, codec %u, %d messages, first: "
              "type 0x%02x '%.*s'",
              payload, len, codec, n, n > 0 ? msgs[0].type : 0, n > 0 ? (int)msgs[0].text_len : 0,
              n > 0 ? (const char *)msgs[0].text : "");
    }
    return at;
}

/* The device answers with a Codec 12 response (type 0x06) of len bytes. */
static void send_response(struct device *d, const void *text, size_t len)
{
    static uint8_t frame[FRAME_BYTES];
    const struct avl_gprs_msg msg = {
        .type = AVL_GPRS_RESPONSE, .text = text, .text_len = (uint32_t)len};
    int n = avl_encode_gprs(frame, sizeof frame, AVL_CODEC_12, &msg, 1);
    CHECK(n > 0, "encode response: %s", avl_strerror(n));
    int rc = device_send(d, frame, (size_t)n, 0, 0);
    CHECK(rc == 0, "device %" PRIu64 ": sending the response failed: %s", d->imei, strerror(-rc));
}

static void answer(struct device *d, const char *text)
{
    send_response(d, text, strlen(text));
}

/* Nothing comes to d (no byte, no close) for ms. */
static void expect_quiet(struct device *d, int ms, const char *what)
{
    device_sleep_ms(ms);
    CHECK(device_quiet(d), "%s: the gateway sent something or closed the connection", what);
}

/* A telemetry packet of `records` records, ACKed with its count. */
static void telemetry(struct device *d, unsigned records)
{
    uint8_t p[PKT_BYTES];
    unsigned k = T.packets++;
    size_t len =
        gwproc_encode_series(AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw) + (uint64_t)k * 60000, 1000,
                             1000 * (k + 1), records, p, sizeof p);
    gwproc_send_acked(d, p, len, records, 0, 0);
}

/* ---- set-up and teardown ------------------------------------------------------------------ */

static int redis_setup(void **state)
{
    (void)state;
    snprintf(R.dir, sizeof R.dir, "%s/test_commands_redis", gwproc_logdir());
    redistmp("stop"); /* a server an interrupted run left behind */
    redistmp("start");
    printf("test_commands: redis on %s (%s)\n", R.addr, R.dir);
    return 0;
}

static int redis_teardown(void **state)
{
    (void)state;
    redistmp("stop");
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", R.dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Case name about the device imei: a database of its own, an empty Redis. */
static void begin(const char *name, uint64_t imei)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_commands", name, INSTANCE);
    T.imei = imei;
    avl_imei_format(imei, T.digits);
    snprintf(T.cli_log, sizeof T.cli_log, "%s/test_commands_%s_cli.log", gwproc_logdir(), name);
    size_t bytes = (router_storage_bytes(SHARDS, ROUTER_VNODES_DEFAULT) + 63) / 64 * 64;
    T.router_store = aligned_alloc(64, bytes);
    assert_non_null(T.router_store);
    assert_int_equal(router_init(&T.router, SHARDS, ROUTER_VNODES_DEFAULT, T.router_store, bytes),
                     0);
    redisReply *r = redis_cmd("FLUSHALL");
    CHECK(r->type == REDIS_REPLY_STATUS, "FLUSHALL failed");
    freeReplyObject(r);
}

static int teardown(void **state)
{
    (void)state;
    if (T.cli_pid > 0) {
        kill(T.cli_pid, SIGKILL);
        gwproc_waitpid(T.cli_pid, 5000);
        T.cli_pid = 0;
    }
    gwproc_end(&T.gw);
    unsetenv("AVLGATE_REDIS_PASSWORD");
    if (R.password[0])
        redis_restart("");
    else if (R.down)
        redistmp("start");
    free(T.router_store);
    T.router_store = NULL;
    return 0;
}

/* The case's device connects, one telemetry packet is ACKed, its registry entry appears. */
static struct reg online(struct device *d)
{
    gwproc_dev_open(&T.gw, d, T.imei);
    telemetry(d, 1);
    return wait_registry(T.imei, NULL, WAIT_MS);
}

/* The case's command id, routed with the CLI's --wait: the device gets it, answers `text`, the
 * CLI prints the answer and exits 0, the row is answered after one send, a reply is written. */
static void answered_via_cli(struct device *d, const char *payload, const char *text)
{
    char row[1200];
    cli_start(true, ARGS("--wait", "5", T.digits, payload));
    expect_command(d, payload, WAIT_MS);
    answer(d, text);
    CHECK(cli_finish() == 0, "the CLI did not exit 0");
    long long id = cli_id();
    cli_expect("routed to " INSTANCE " shard ");
    cli_expect_last(text);
    snprintf(row, sizeof row, "answered|1|%s|0|1|1", text);
    wait_row(id, row, WAIT_MS);
    expect_reply(id, "answered", text);
}

/* SIGTERM, then the sums over the shards' "shard stopped" lines; -1: not checked. */
static void check_counters(long long sent, long long answered, long long failed, long long expired,
                           long long unexpected)
{
    gwproc_term(&T.gw);
    const char *keys[5] = {"cmds_sent", "cmds_answered", "cmds_failed", "cmds_expired",
                           "cmd_responses_unexpected"};
    const long long want[5] = {sent, answered, failed, expired, unexpected};
    for (unsigned i = 0; i < 5; i++) {
        if (want[i] < 0)
            continue;
        long long got = gwproc_shard_sum(&T.gw, keys[i]);
        CHECK(got == want[i], "%s = %lld over the shards, want %lld", keys[i], got, want[i]);
    }
}

/* ---- cases -------------------------------------------------------------------------------- */

/* An online device gets a command through the fast path (CLI: registry lookup, XADD to the
 * instance's stream) and answers: the row is `sent` with one attempt until then, `answered`
 * after; the CLI prints the answer and exits 0; one replies entry; the intake entry is
 * acknowledged; telemetry goes on and nothing else is sent. */
static void test_online_answer(void **state)
{
    (void)state;
    begin("online", IMEI_BASE + 1);
    redisContext *bus = bus_subscribe();
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    struct device d;
    struct reg reg = online(&d);

    cli_start(true, ARGS("--wait", "5", T.digits, "getver"));
    expect_command(&d, "getver", WAIT_MS);
    long long id = gwproc_sql_ll(&T.gw, "SELECT max(id) FROM public.commands");
    wait_row(id, "sent|1||0|1|0", WAIT_MS);
    answer(&d, "Ver:03.27.07 GPS:AXN_5.1.9");
    CHECK(cli_finish() == 0, "the CLI did not exit 0");
    CHECK(cli_id() == id, "the CLI queued another id");
    char want[128];
    snprintf(want, sizeof want, "\nrouted to %s shard %s\n", INSTANCE, reg.shard);
    cli_expect(want);
    cli_expect_last("Ver:03.27.07 GPS:AXN_5.1.9");
    expect_row(id, "answered|1|Ver:03.27.07 GPS:AXN_5.1.9|0|1|1");
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT count(*) FROM public.commands WHERE id = %lld"
                        " AND sent_at <= answered_at AND answered_at <= now()",
                        id) == 1,
          "sent_at / answered_at out of order");
    expect_reply(id, "answered", "Ver:03.27.07 GPS:AXN_5.1.9");
    wait_intake_pending(0, WAIT_MS);
    CHECK(stream_len(INTAKE) == 1, "%lld intake entries, want the CLI's one", stream_len(INTAKE));

    telemetry(&d, 2);
    expect_quiet(&d, QUIET_MS, "after the answer");
    char got[256];
    CHECK(!bus_next(bus, 1, got, sizeof got), "a Directus bus event without --directus-bus: %s",
          got);
    redisFree(bus);
    device_close(&d);
    check_counters(1, 1, 0, 0, 0);
}

/* --directus-bus: each write of the command's row (sent, then answered) is one Directus bus
 * event naming its id, published on the gateway's Redis; nothing else is published. (Without
 * the flag nothing is: test_online_answer.) */
static void test_directus_bus(void **state)
{
    (void)state;
    begin("bus", IMEI_BASE + 20);
    redisContext *bus = bus_subscribe();
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--directus-bus"));
    struct device d;
    online(&d);
    CHECK(cli_send(true, ARGS(T.digits, "getinfo")) == 0, "CLI send failed");
    long long id = cli_id();
    expect_command(&d, "getinfo", WAIT_MS);
    wait_row(id, "sent|1||0|1|0", WAIT_MS);
    char want[160], got[256];
    snprintf(want, sizeof want,
             "{\"collection\":\"commands\",\"action\":\"update\",\"keys\":[\"%lld\"],"
             "\"payload\":{}}",
             id);
    CHECK(bus_next(bus, WAIT_MS, got, sizeof got), "no bus event for `sent`");
    CHECK(strcmp(got, want) == 0, "bus event '%s', want '%s'", got, want);
    answer(&d, "bus ok");
    wait_row(id, "answered|1|bus ok|0|1|1", WAIT_MS);
    CHECK(bus_next(bus, WAIT_MS, got, sizeof got), "no bus event for `answered`");
    CHECK(strcmp(got, want) == 0, "bus event '%s', want '%s'", got, want);
    CHECK(!bus_next(bus, QUIET_MS, got, sizeof got), "a third bus event: '%s'", got);
    redisFree(bus);
    device_close(&d);
    check_counters(1, 1, 0, 0, 0);
}

/* Without --redis: three commands queued while the device is offline are delivered when it
 * connects, in id order, one at a time (the next only after the answer to the previous); the
 * gateway writes nothing to Redis. */
static void test_offline_queue(void **state)
{
    (void)state;
    begin("offline", IMEI_BASE + 2);
    gwproc_start(&T.gw, NULL);
    static const char *const payload[3] = {"getgps", "setparam 1000:5", "getver"};
    static const char *const reply[3] = {"GPS:1 Sat:9 Lat:54.68 Long:25.27", "New value 1000:5;",
                                         "Ver:03.27.07"};
    long long id[3];
    char row[64];
    for (unsigned i = 0; i < 3; i++) {
        CHECK(cli_send(true, ARGS(T.digits, payload[i])) == 0, "CLI send failed");
        id[i] = cli_id();
        cli_expect("device not connected: delivered when it connects");
        expect_row(id[i], "pending|0||0|0|0");
    }
    CHECK(id[0] < id[1] && id[1] < id[2], "ids %lld %lld %lld", id[0], id[1], id[2]);

    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    for (unsigned i = 0; i < 3; i++) {
        expect_command(&d, payload[i], WAIT_MS);
        wait_row(id[i], "sent|1||0|1|0", WAIT_MS);
        for (unsigned k = i + 1; k < 3; k++)
            expect_row(id[k], "pending|0||0|0|0");
        expect_quiet(&d, QUIET_MS, "the next command before the answer");
        answer(&d, reply[i]);
        snprintf(row, sizeof row, "answered|1|%s|0|1|1", reply[i]);
        wait_row(id[i], row, WAIT_MS);
    }
    expect_quiet(&d, QUIET_MS, "after the last answer");
    telemetry(&d, 1);
    CHECK(!registry_get(T.imei).present, "a registry entry without --redis");
    CHECK(redis_int("EXISTS %s", REPLIES) == 0, "a replies stream without --redis");
    CHECK(redis_int("EXISTS %s", INTAKE) == 0, "an intake stream without --redis");
    device_close(&d);
    check_counters(3, 3, 0, 0, 0);
}

/* A row inserted with plain SQL (no XADD) for an online device: the sweep (--cmd-sweep-s 1)
 * delivers it within about a second, once. */
static void test_sweep_sql(void **state)
{
    (void)state;
    begin("sweep", IMEI_BASE + 3);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--cmd-sweep-s", "1"));
    struct device d;
    online(&d);
    expect_quiet(&d, 300, "before any command");

    uint64_t t0 = device_now_ms();
    long long id = insert_command(T.imei, "getstatus", NULL);
    uint64_t at = expect_command(&d, "getstatus", 3000);
    printf("sweep: delivered %llu ms after the insert\n", (unsigned long long)(at - t0));
    wait_row(id, "sent|1||0|1|0", WAIT_MS);
    answer(&d, "Data Link: 1 GPRS: 1 Phone: 0 SIM: 0 OP: 24602");
    wait_row(id, "answered|1|Data Link: 1 GPRS: 1 Phone: 0 SIM: 0 OP: 24602|0|1|1", WAIT_MS);
    expect_reply(id, "answered", "Data Link: 1 GPRS: 1 Phone: 0 SIM: 0 OP: 24602");
    CHECK(stream_len(INTAKE) == 0 && intake_pending() == 0, "the intake stream was used");
    expect_quiet(&d, 1500, "after the answer (a sweep must not send it again)");
    telemetry(&d, 1);
    device_close(&d);
}

/* The device connects again while its old connection is open: the gateway closes the old one,
 * the registry names the new connection (the same owner token: the same shard kept the device;
 * and the old connection's close does not delete it), and a command goes to the new connection.
 * A close deletes only an entry that is still its own. */
static void test_reconnect_replaces(void **state)
{
    (void)state;
    begin("reconnect", IMEI_BASE + 4);
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    struct device a, b;
    struct reg r1 = online(&a);
    gwproc_dev_open(&T.gw, &b, T.imei);
    gwproc_expect_closed_silently(&a, WAIT_MS, "the replaced connection");
    struct reg r2 = wait_registry(T.imei, r1.conn, WAIT_MS);
    CHECK(strcmp(r2.instance, INSTANCE) == 0 && strcmp(r2.shard, r1.shard) == 0 &&
              strcmp(r2.epoch, r1.epoch) == 0,
          "new registry entry: instance %s shard %s epoch %s (was shard %s epoch %s)", r2.instance,
          r2.shard, r2.epoch, r1.shard, r1.epoch);
    device_sleep_ms(500);
    struct reg r3 = registry_get(T.imei);
    CHECK(r3.present && strcmp(r3.conn, r2.conn) == 0,
          "after the old connection closed the registry is %s (connection %s), want %s",
          r3.present ? "there" : "gone", r3.conn, r2.conn);

    answered_via_cli(&b, "getinfo", "INI:2024/5/1 7:0 RTC:2024/5/1 7:5 RST:2 ERR:1");
    wait_intake_pending(0, WAIT_MS);
    telemetry(&b, 2);

    /* The device moved on: another instance's connection owns the entry now. Closing ours
     * must leave it (the refresh is 30 s away with the default TTL of 90 s). */
    char key[64];
    snprintf(key, sizeof key, "avlgate:dev:{%s}", T.digits);
    redisReply *r = redis_cmd("HSET %s instance gw-other shard 0 epoch 1 conn 1", key);
    CHECK(r->type == REDIS_REPLY_INTEGER, "HSET failed");
    freeReplyObject(r);
    device_close(&b);
    device_sleep_ms(QUIET_MS);
    struct reg moved = registry_get(T.imei);
    CHECK(moved.present && strcmp(moved.instance, "gw-other") == 0 && strcmp(moved.epoch, "1") == 0,
          "closing our connection %s another instance's registry entry (now %s/%s)",
          moved.present ? "overwrote" : "deleted", moved.instance, moved.epoch);
}

/* Redis is killed mid-run: telemetry is still ACKed; a command sent meanwhile (the CLI says
 * Redis is unreachable and exits 0) is delivered by the sweep. Redis comes back on the same
 * port, empty: the gateway registers the device again and reads its intake again (the fast
 * path works: the CLI routes, the gateway reads the entry and acknowledges it). */
static void test_redis_outage(void **state)
{
    (void)state;
    begin("redis_outage", IMEI_BASE + 5);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--cmd-sweep-s", "1"));
    struct device d;
    struct reg r1 = online(&d);

    redistmp("kill");
    for (unsigned i = 0; i < 3; i++) {
        telemetry(&d, 2);
        device_sleep_ms(200);
    }
    CHECK(cli_send(true, ARGS(T.digits, "outage-1")) == 0, "CLI send failed");
    long long id1 = cli_id();
    cli_expect("redis unreachable (");
    cli_expect("the command waits in PostgreSQL");
    expect_command(&d, "outage-1", 4000);
    answer(&d, "done 1");
    wait_row(id1, "answered|1|done 1|0|1|1", WAIT_MS);
    telemetry(&d, 1);
    CHECK(gwproc_running(&T.gw), "the gateway died while Redis was down");

    redistmp("start");
    struct reg r2 = wait_registry(T.imei, NULL, REREGISTER_MS);
    CHECK(strcmp(r2.instance, INSTANCE) == 0 && strcmp(r2.shard, r1.shard) == 0 &&
              strcmp(r2.epoch, r1.epoch) == 0,
          "registered again as %s/%s/%s, want %s/%s/%s (the same connection)", r2.instance,
          r2.shard, r2.epoch, INSTANCE, r1.shard, r1.epoch);
    CHECK(r2.ttl_s > 0, "registered again without a TTL (%lld)", r2.ttl_s);
    wait_intake_read(NULL, REREGISTER_MS); /* the group is there again */

    answered_via_cli(&d, "outage-2", "done 2");
    char entry[64];
    stream_last_id(INTAKE, entry, sizeof entry);
    CHECK(entry[0], "no intake entry after the CLI routed the command");
    wait_intake_read(entry, WAIT_MS);
    wait_intake_pending(0, WAIT_MS);
    expect_quiet(&d, QUIET_MS, "after the second answer");
    telemetry(&d, 1);
    device_close(&d);
}

/* No answer: the frame is sent again after --cmd-timeout-s, --cmd-attempts sends in all, then
 * the command fails (the CLI's --wait says so and exits 1); the connection stays usable. */
static void test_timeout_retries(void **state)
{
    (void)state;
    begin("retries", IMEI_BASE + 6);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--cmd-timeout-s", "1", "--cmd-attempts", "2"));
    struct device d;
    online(&d);

    cli_start(true, ARGS("--wait", "8", T.digits, "getio"));
    uint64_t t1 = expect_command(&d, "getio", WAIT_MS);
    long long id = gwproc_sql_ll(&T.gw, "SELECT max(id) FROM public.commands");
    wait_row(id, "sent|1||0|1|0", WAIT_MS);
    uint64_t t2 = expect_command(&d, "getio", 4000);
    CHECK(t2 - t1 >= 700 && t2 - t1 <= 3500, "sent again after %llu ms, want about 1 s",
          (unsigned long long)(t2 - t1));
    wait_row(id, "failed|2||0|1|0", 4000);
    expect_quiet(&d, 1500, "after the last attempt");
    CHECK(cli_finish() == 1, "the CLI did not exit 1");
    char want[64];
    snprintf(want, sizeof want, "command %lld failed\n", id);
    cli_expect(want);
    expect_reply(id, "failed", NULL);
    wait_intake_pending(0, WAIT_MS);
    telemetry(&d, 2);
    device_close(&d);
    check_counters(-1, 0, 1, 0, 0);
}

/* Expiry: a command already past expires_at when its device connects is never sent (the next
 * one is) and becomes expired; a command that expires while awaiting its answer becomes
 * expired at the next timeout check instead of being sent again. */
static void test_expiry(void **state)
{
    (void)state;
    begin("expiry", IMEI_BASE + 7);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--cmd-timeout-s", "2", "--cmd-attempts", "3"));
    long long stale = insert_command(T.imei, "stale", "now() - interval '1 second'");
    long long next = insert_command(T.imei, "getver", NULL);
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    expect_command(&d, "getver", WAIT_MS);
    wait_row(stale, "expired|0||0|0|0", WAIT_MS);
    answer(&d, "Ver:1");
    wait_row(next, "answered|1|Ver:1|0|1|1", WAIT_MS);
    wait_registry(T.imei, NULL, WAIT_MS);

    CHECK(cli_send(true, ARGS("--expires-s", "1", T.digits, "expires-awaiting")) == 0,
          "CLI send failed");
    long long id = cli_id();
    cli_expect("routed to " INSTANCE " shard ");
    uint64_t sent = expect_command(&d, "expires-awaiting", WAIT_MS);
    wait_row(id, "expired|1||0|1|0", 5000);
    uint64_t expired = device_now_ms();
    printf("expiry: expired %llu ms after it was sent\n", (unsigned long long)(expired - sent));
    /* Past a second timeout period: never sent again. */
    expect_quiet(&d, (int)(sent + 4500 > expired ? sent + 4500 - expired : 0) + 200,
                 "after the command expired");
    expect_reply(id, "expired", NULL);
    wait_intake_pending(0, WAIT_MS);
    telemetry(&d, 1);
    device_close(&d);
    check_counters(-1, 1, 0, -1, 0);
    long long expired_n = gwproc_shard_sum(&T.gw, "cmds_expired");
    CHECK(expired_n >= 1 && expired_n <= 2, "cmds_expired %lld, want 1 or 2", expired_n);
}

/* A command for an IMEI that never connects stays pending (while another device is served and
 * swept); `send --wait 2` exits 1. */
static void test_never_connects(void **state)
{
    (void)state;
    begin("never", IMEI_BASE + 8);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--cmd-sweep-s", "1"));
    struct device other;
    gwproc_dev_open(&T.gw, &other, IMEI_BASE + 80);
    telemetry(&other, 1);
    CHECK(cli_send(true, ARGS("--wait", "2", T.digits, "getver")) == 1, "the CLI did not exit 1");
    long long id = cli_id();
    cli_expect("device not connected: delivered when it connects");
    cli_expect_last("still pending after 2 s");
    expect_row(id, "pending|0||0|0|0");
    CHECK(stream_len(INTAKE) == 0, "an intake entry for a device not connected");
    CHECK(reply_of(id).count == 0, "a reply for a command never sent");
    expect_quiet(&other, 300, "another device");
    device_close(&other);
}

/* Answers: UTF-8 text (multibyte) is stored as text; bytes that are not valid UTF-8 (a bad
 * sequence and a stray 0xff; a UTF-16 surrogate encoded in three bytes) as lowercase hex with
 * response_hex, the CLI printing hex:, the reply carrying the hex. */
static void test_answer_encoding(void **state)
{
    (void)state;
    begin("encoding", IMEI_BASE + 9);
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    struct device d;
    online(&d);
    answered_via_cli(&d, "getinfo",
                     "Temp 21\xc2\xb0"
                     "C \xe2\x9c\x93 ok");
    static const struct {
        const char *payload;
        const char *bytes; /* what the device answers (no NUL inside) */
        const char *hex;
    } bad[2] = {
        {"getbin", "\xc3\x28OK\xff", "c3284f4bff"},
        {"getsur", "A\xed\xa0\x80", "41eda080"},
    };
    char row[128], printed[64];
    for (unsigned i = 0; i < 2; i++) {
        cli_start(true, ARGS("--wait", "5", T.digits, bad[i].payload));
        expect_command(&d, bad[i].payload, WAIT_MS);
        send_response(&d, bad[i].bytes, strlen(bad[i].bytes));
        CHECK(cli_finish() == 0, "the CLI did not exit 0");
        long long id = cli_id();
        snprintf(printed, sizeof printed, "hex:%s", bad[i].hex);
        cli_expect_last(printed);
        snprintf(row, sizeof row, "answered|1|%s|1|1|1", bad[i].hex);
        wait_row(id, row, WAIT_MS);
        expect_reply(id, "answered", bad[i].hex);
    }
    telemetry(&d, 1);
    device_close(&d);
}

/* A command frame never overtakes the ACK of a packet in flight: the packet's COMMIT sleeps
 * 2 s in a trigger; meanwhile a command is routed and the gateway reads it from its stream;
 * the device sees nothing until the ACK, then the command frame. */
static void test_ack_before_command(void **state)
{
    (void)state;
    begin("ack_order", IMEI_BASE + 10);
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    gwproc_slow_commit_trigger(&T.gw, "2");
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    wait_registry(T.imei, NULL, WAIT_MS);
    struct gwproc_rspec rs[2];
    for (unsigned i = 0; i < 2; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 100 + i,
                                      .satellites = 7,
                                      .event_id = i == 1 ? GWPROC_SLOW_EVENT_ID : 0};
    uint8_t p[PKT_BYTES];
    size_t len = gwproc_encode_tagged(AVL_CODEC_8E, rs, 2, p, sizeof p);
    CHECK(device_send(&d, p, len, 0, 0) == 0, "send failed");
    gwproc_wait_backend_sleeping(&T.gw);

    CHECK(cli_send(true, ARGS(T.digits, "getver")) == 0, "CLI send failed");
    long long id = cli_id();
    cli_expect("routed to " INSTANCE " shard ");
    char entry[64];
    stream_last_id(INTAKE, entry, sizeof entry);
    wait_intake_read(entry, WAIT_MS);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                               " current_database() AND wait_event = 'PgSleep'") > 0,
          "the packet committed before the gateway had the command: the case needs a slower "
          "commit");
    CHECK(device_quiet(&d), "the gateway wrote to the device while its packet was uncommitted");

    uint8_t ack[AVL_TCP_ACK_BYTES];
    int rc = device_read(&d, ack, sizeof ack, WAIT_MS);
    CHECK(rc == 0, "no ACK: %s", strerror(-rc));
    CHECK(ack[0] == 0 && ack[1] == 0 && ack[2] == 0 && ack[3] == 2,
          "the first bytes after the packet are %02x %02x %02x %02x, want its ACK 00 00 00 02",
          ack[0], ack[1], ack[2], ack[3]);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 2,
          "ACKed before the rows were committed");
    expect_command(&d, "getver", WAIT_MS);
    answer(&d, "Ver:03.27.07");
    wait_row(id, "answered|1|Ver:03.27.07|0|1|1", WAIT_MS);
    wait_intake_pending(0, WAIT_MS);
    device_close(&d);
}

/* A new connection's first command waits for its first ACK (a tracker sends its first packet
 * right after our 0x01 and then reads 4 bytes as that packet's ACK): a device that sends at
 * once sees its ACK first; a silent one gets the command after about a second. */
static void test_first_write_after_ack(void **state)
{
    (void)state;
    begin("first_write", IMEI_BASE + 14);
    gwproc_start(&T.gw, NULL);
    long long id = insert_command(T.imei, "first-cmd", NULL);
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    telemetry(&d, 3); /* fails if the command frame comes before the ACK */
    expect_command(&d, "first-cmd", WAIT_MS);
    answer(&d, "ok");
    wait_row(id, "answered|1|ok|0|1|1", WAIT_MS);
    device_close(&d);

    long long id2 = insert_command(T.imei, "second-cmd", NULL);
    gwproc_dev_open(&T.gw, &d, T.imei);
    uint64_t open_ms = device_now_ms();
    uint64_t at = expect_command(&d, "second-cmd", WAIT_MS);
    CHECK(at - open_ms >= 900,
          "a silent device got its first command %" PRIu64 " ms after the handshake, want the "
          "~1 s hold",
          at - open_ms);
    answer(&d, "ok2");
    wait_row(id2, "answered|1|ok2|0|1|1", WAIT_MS);
    device_close(&d);
}

/* At start the gateway re-reads its own pending intake entries: one read as consumer
 * <instance> before the gateway started and never acknowledged is handled (the device is not
 * connected: acknowledged at once, the command waits in PostgreSQL) and delivered once when
 * the device connects. */
static void test_pel_reread(void **state)
{
    (void)state;
    begin("pel", IMEI_BASE + 11);
    long long id = insert_command(T.imei, "pel-cmd", NULL);
    char idtext[32], entry[64];
    snprintf(idtext, sizeof idtext, "%lld", id);
    redisReply *r = redis_cmd("XGROUP CREATE %s %s 0 MKSTREAM", INTAKE, GROUP);
    CHECK(r->type == REDIS_REPLY_STATUS, "XGROUP CREATE: %s",
          r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    freeReplyObject(r);
    r = redis_cmd("XADD %s * id %s imei %s payload %s", INTAKE, idtext, T.digits, "pel-cmd");
    CHECK(r->type == REDIS_REPLY_STRING, "XADD failed");
    snprintf(entry, sizeof entry, "%s", r->str);
    freeReplyObject(r);
    r = redis_cmd("XREADGROUP GROUP %s %s COUNT 1 STREAMS %s >", GROUP, INSTANCE, INTAKE);
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 1, "XREADGROUP read nothing");
    freeReplyObject(r);
    CHECK(intake_pending() == 1, "entry %s is not pending for " INSTANCE, entry);

    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    wait_intake_pending(0, WAIT_MS);
    expect_row(id, "pending|0||0|0|0");
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    expect_command(&d, "pel-cmd", WAIT_MS);
    answer(&d, "pel ok");
    wait_row(id, "answered|1|pel ok|0|1|1", WAIT_MS);
    expect_reply(id, "answered", "pel ok");
    expect_quiet(&d, QUIET_MS, "after the answer (delivered twice?)");
    CHECK(intake_pending() == 0, "XPENDING is %lld after the answer", intake_pending());
    device_close(&d);
    check_counters(1, 1, 0, 0, 0);
}

/* The registry: the gateway creates its intake group at start; a connected device's entry
 * names the instance, its owner shard and an epoch, with a TTL (--registry-ttl-s 3) refreshed
 * while it stays connected; it is deleted when the device disconnects. */
static void test_registry(void **state)
{
    (void)state;
    begin("registry", IMEI_BASE + 12);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--registry-ttl-s", "3"));
    wait_intake_read(NULL, WAIT_MS);
    CHECK(stream_len(INTAKE) == 0, "the intake stream has entries");
    struct device d;
    struct reg g = online(&d);
    char shard[16];
    snprintf(shard, sizeof shard, "%u", router_owner(&T.router, T.imei));
    CHECK(g.fields == 4, "the registry hash has %u fields, want instance, shard, epoch, conn",
          g.fields);
    CHECK(strcmp(g.instance, INSTANCE) == 0, "instance '%s'", g.instance);
    CHECK(strcmp(g.shard, shard) == 0, "shard '%s', want the owner %s", g.shard, shard);
    CHECK(g.epoch[0] && strspn(g.epoch, "0123456789") == strlen(g.epoch) &&
              strtoll(g.epoch, NULL, 10) ==
                  gwproc_sql_ll(
                      &T.gw, "SELECT owner FROM public.device_state WHERE imei = %" PRIu64, T.imei),
          "epoch '%s' is not the device's owner token", g.epoch);
    CHECK(g.conn[0] && strspn(g.conn, "0123456789") == strlen(g.conn),
          "conn '%s' is not a decimal number", g.conn);
    CHECK(g.ttl_s >= 1 && g.ttl_s <= 3, "TTL %lld s, want 1..3", g.ttl_s);

    for (unsigned i = 0; i < 3; i++) { /* 4.5 s connected: longer than the TTL */
        device_sleep_ms(1500);
        telemetry(&d, 1);
    }
    struct reg later = registry_get(T.imei);
    CHECK(later.present && strcmp(later.epoch, g.epoch) == 0,
          "after 4.5 s connected the registry entry is %s (epoch %s): the TTL was not refreshed",
          later.present ? "another" : "gone", later.epoch);
    CHECK(later.ttl_s >= 1 && later.ttl_s <= 3, "TTL %lld s after 4.5 s, want 1..3", later.ttl_s);

    device_close(&d);
    wait_registry_gone(T.imei, WAIT_MS);
}

/* A Codec 12 response nobody asked for is counted and ignored: the connection stays open,
 * telemetry goes on, no reply is written, and the next real command gets its own answer. */
static void test_unexpected_response(void **state)
{
    (void)state;
    begin("unexpected", IMEI_BASE + 13);
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    struct device d;
    online(&d);
    answer(&d, "surprise");
    expect_quiet(&d, 500, "after an unexpected response");
    telemetry(&d, 3);
    CHECK(redis_int("EXISTS %s", REPLIES) == 0, "a reply for an unexpected response");

    answered_via_cli(&d, "getver", "Ver:2");
    CHECK(stream_len(REPLIES) == 1, "%lld replies, want 1", stream_len(REPLIES));
    telemetry(&d, 1);
    device_close(&d);
    check_counters(1, 1, 0, 0, 1);
}

/* expires_at so far ahead that its nanoseconds do not fit in 64 bits (2^64 ns + 0.5 s from
 * now: they wrapped to under a second, and the command expired during the first write's 1 s
 * hold), 'infinity' (which the fetch cannot subtract from: it failed at every sweep and held
 * back every later command), or 99 years ahead: each is delivered and answered like a command
 * that never expires, in id order, and the one queued behind them too; no fetch fails. */
static void test_expires_far(void **state)
{
    (void)state;
    begin("expires_far", IMEI_BASE + 15);
    gwproc_start(&T.gw, NULL);
    static const struct {
        const char *payload, *expires_at, *answer;
    } cmds[4] = {
        {"far-wrap", "now() + interval '18446744074.5 seconds'", "ok wrap"},
        {"far-infinity", "'infinity'", "ok infinity"},
        {"far-99y", "now() + interval '99 years'", "ok 99y"},
        {"far-none", NULL, "ok none"},
    };
    long long id[4];
    for (unsigned i = 0; i < 4; i++)
        id[i] = insert_command(T.imei, cmds[i].payload, cmds[i].expires_at);
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei); /* silent: the first write waits ~1 s */
    char row[128];
    for (unsigned i = 0; i < 4; i++) {
        expect_command(&d, cmds[i].payload, WAIT_MS);
        answer(&d, cmds[i].answer);
        snprintf(row, sizeof row, "answered|1|%s|0|1|1", cmds[i].answer);
        wait_row(id[i], row, WAIT_MS);
    }
    expect_quiet(&d, QUIET_MS, "after the last answer");
    device_close(&d);
    check_counters(4, 4, 0, 0, 0);
    long long failures = gwproc_shard_sum(&T.gw, "cmd_query_failures");
    CHECK(failures == 0, "cmd_query_failures = %lld, want 0", failures);
}

/* --cmd-attempts 1: a command written once that gets no answer fails, and the next one is
 * held for the grace period (2 s) before it is written, so the first one's late answer, which
 * comes in between, is counted as unexpected instead of being taken for the second's. */
static void test_grace_after_failure(void **state)
{
    (void)state;
    begin("grace", IMEI_BASE + 16);
    gwproc_start(&T.gw, ARGS("--cmd-timeout-s", "1", "--cmd-attempts", "1"));
    long long id1 = insert_command(T.imei, "grace-1", NULL);
    long long id2 = insert_command(T.imei, "grace-2", NULL);
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    telemetry(&d, 1);
    expect_command(&d, "grace-1", WAIT_MS);
    wait_row(id1, "failed|1||0|1|0", 4000);
    uint64_t failed_ms = device_now_ms();
    answer(&d, "late answer to grace-1");
    uint64_t at = expect_command(&d, "grace-2", WAIT_MS);
    printf("grace: the next command %llu ms after the failure\n",
           (unsigned long long)(at - failed_ms));
    CHECK(at - failed_ms >= 1000,
          "the next command came %llu ms after the failure, want the ~2 s grace",
          (unsigned long long)(at - failed_ms));
    answer(&d, "grace-2 ok");
    wait_row(id2, "answered|1|grace-2 ok|0|1|1", WAIT_MS);
    expect_row(id1, "failed|1||0|1|0");
    device_close(&d);
    check_counters(2, 1, 1, 0, 1);
}

/* Redis with a password (requirepass). A wrong --redis-password: each of the gateway's links
 * (two registry links, the intake) says "redis unreachable" once with the server's reason and
 * never the password; telemetry goes on; a command reaches the device through the sweep; the
 * CLI with the wrong password says Redis is unreachable (AUTH refused) and exits 0. The right
 * password from AVLGATE_REDIS_PASSWORD, for the gateway and the CLI: the registry, the CLI's
 * route and the intake work as without one. */
static void test_redis_auth(void **state)
{
    (void)state;
    begin("redis_auth", IMEI_BASE + 17);
    redis_restart(REDIS_PASSWORD);
    gwproc_start(&T.gw, ARGS("--redis", R.addr, "--redis-password", "wrong-" REDIS_PASSWORD,
                             "--cmd-sweep-s", "1"));
    gwproc_wait_log(&T.gw, "AUTH refused: WRONGPASS", 1 + SHARDS, WAIT_MS);
    struct device d;
    gwproc_dev_open(&T.gw, &d, T.imei);
    telemetry(&d, 1);
    CHECK(!registry_get(T.imei).present, "a registry entry written with a wrong password");
    CHECK(cli_send(true, ARGS("--redis-password", "wrong-" REDIS_PASSWORD, T.digits, "auth-1")) ==
              0,
          "the CLI did not exit 0");
    long long id1 = cli_id();
    cli_expect("redis unreachable (");
    cli_expect("AUTH refused: WRONGPASS");
    CHECK(strstr(T.cli_out, REDIS_PASSWORD) == NULL, "the CLI printed the password");
    expect_command(&d, "auth-1", 4000);
    answer(&d, "auth-1 ok");
    wait_row(id1, "answered|1|auth-1 ok|0|1|1", WAIT_MS);
    device_close(&d);
    gwproc_term(&T.gw);

    CHECK(setenv("AVLGATE_REDIS_PASSWORD", REDIS_PASSWORD, 1) == 0, "setenv failed");
    gwproc_start(&T.gw, ARGS("--redis", R.addr));
    online(&d);
    wait_intake_read(NULL, WAIT_MS);
    answered_via_cli(&d, "auth-2", "auth-2 ok");
    wait_intake_pending(0, WAIT_MS);
    device_close(&d);
    gwproc_term(&T.gw);
    CHECK(gwproc_log_count(&T.gw, REDIS_PASSWORD) == 0, "the gateway's log shows the password");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_online_answer, teardown),
        cmocka_unit_test_teardown(test_directus_bus, teardown),
        cmocka_unit_test_teardown(test_offline_queue, teardown),
        cmocka_unit_test_teardown(test_sweep_sql, teardown),
        cmocka_unit_test_teardown(test_reconnect_replaces, teardown),
        cmocka_unit_test_teardown(test_redis_outage, teardown),
        cmocka_unit_test_teardown(test_timeout_retries, teardown),
        cmocka_unit_test_teardown(test_expiry, teardown),
        cmocka_unit_test_teardown(test_never_connects, teardown),
        cmocka_unit_test_teardown(test_answer_encoding, teardown),
        cmocka_unit_test_teardown(test_ack_before_command, teardown),
        cmocka_unit_test_teardown(test_pel_reread, teardown),
        cmocka_unit_test_teardown(test_registry, teardown),
        cmocka_unit_test_teardown(test_unexpected_response, teardown),
        cmocka_unit_test_teardown(test_first_write_after_ack, teardown),
        cmocka_unit_test_teardown(test_expires_far, teardown),
        cmocka_unit_test_teardown(test_grace_after_failure, teardown),
        cmocka_unit_test_teardown(test_redis_auth, teardown),
    };
    const char *filter = getenv("TEST_COMMANDS_FILTER");
    if (filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, redis_setup, redis_teardown);
}
