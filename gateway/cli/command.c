/* command.c — owns `avlgate command send|list`, the operator's side of outbound commands:
 * it inserts the row into public.commands (PostgreSQL is the durable queue and the source of
 * truth), routes it through the Redis registry as the fast path, optionally waits for the
 * outcome the gateway writes back, and lists recent rows. Blocking libpq and blocking hiredis
 * with timeouts: this is a short-lived CLI, never the gateway's hot path. Single-threaded.
 *
 * The Redis data model (the gateway's bridge follows the same one):
 *
 *   key                    type    fields                          written by
 *   avlgate:dev:{<imei>}   HASH    instance, shard, epoch, conn    the owner shard, with a TTL
 *                                                                  it refreshes while the
 *                                                                  device is connected
 *   avlgate:cmd:<instance> STREAM  id (commands.id), imei, payload this CLI / Directus, XADD
 *                                                                  MAXLEN ~ 100000
 *   avlgate:replies        STREAM  id, imei, status, response      the gateway, XADD
 *                                                                  MAXLEN ~ 100000
 *
 * <imei> is the canonical 15-digit IMEI, inside braces so that Redis Cluster hashes only the
 * IMEI (the hash tag). <instance> is the gateway instance id the registry names.
 *
 * Redis failing is not an error here: the row is already committed, and the gateway's sweep
 * and its on-connect fetch deliver it without Redis. So every Redis problem is reported on
 * out and `send` still exits 0. */
#include "gateway/cli/command.h"

#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "codec/avl.h"

enum {
    COMMAND_IMEI_DIGITS = AVL_IMEI_CANONICAL_DIGITS, /* what `send` and `list` accept */
    COMMAND_REDIS_TIMEOUT_MS = 2000,                 /* connect, and each command */
    COMMAND_WAIT_POLL_MS = 50,
    COMMAND_STREAM_LEN_MAX = 100000, /* MAXLEN ~ of the intake streams */
    COMMAND_EXPIRES_S_MAX = 10 * 365 * 24 * 3600,
    COMMAND_LIST_LIMIT_DEFAULT = 20,
    COMMAND_LIST_LIMIT_MAX = 10000,
    COMMAND_CELL_CHARS_MAX = 40, /* payload and response columns of `list` */
    COMMAND_REDIS_HOST_BYTES_MAX = 256,
    COMMAND_INSTANCE_BYTES_MAX = 128,
};
#define COMMAND_WAIT_S_MAX 86400.0

_Static_assert((int)COMMAND_IMEI_DIGITS <= (int)AVL_IMEI_DIGITS_MAX,
               "the codec must parse our IMEIs");

/* ------------------------------------------------------------------------------------------
 * Arguments
 * ---------------------------------------------------------------------------------------- */

void command_usage(FILE *f)
{
    fprintf(
        f,
        "usage: avlgate command send --pg CONNINFO [--redis HOST:PORT] [--wait SECONDS]\n"
        "                            [--expires-s N] [--redis-password PASS] IMEI TEXT\n"
        "       avlgate command send --pg CONNINFO [--redis HOST:PORT] [--expires-s N]\n"
        "                            [--redis-password PASS] --stdin\n"
        "       avlgate command list --pg CONNINFO [--limit N] [IMEI]\n"
        "\n"
        "send   queues TEXT (1..%u bytes) for the tracker IMEI (15 digits) in\n"
        "       public.commands and prints its id. With --redis, routes it to the gateway\n"
        "       instance the registry names (avlgate:dev:{IMEI}); Redis being down or the\n"
        "       device offline is not an error: the command waits in PostgreSQL.\n"
        "       --expires-s N  the command expires N seconds from now (default: never)\n"
        "       --wait S       wait up to S seconds for the outcome: prints the answer and\n"
        "                      exits 0, or prints the final status and exits 1\n"
        "       --stdin        read 'IMEI TEXT' lines and send each as it comes, over one\n"
        "                      connection to each server (bad lines: said, skipped, exit 1)\n"
        "       --redis-password PASS  AUTH with PASS on the Redis connection (or\n"
        "                      AVLGATE_REDIS_PASSWORD, which keeps it out of the process list)\n"
        "list   prints recent commands, newest first (--limit, default %d), of one IMEI\n"
        "       or of all\n"
        "\n"
        "Exit status: 0 done, 1 PostgreSQL error or no answer, 2 usage error.\n",
        COMMAND_TEXT_BYTES_MAX, COMMAND_LIST_LIMIT_DEFAULT);
}

__attribute__((format(printf, 2, 3))) static int usage_error(FILE *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(err, "avlgate command: ");
    vfprintf(err, fmt, ap);
    fprintf(err, "\n");
    va_end(ap);
    command_usage(err);
    return 2;
}

/* True if s is exactly COMMAND_IMEI_DIGITS ASCII digits; *imei is then its value, parsed by
 * the codec's own rule (the one the handshake uses). */
static bool imei_arg(const char *s, uint64_t *imei)
{
    size_t n = strlen(s);
    if (n != COMMAND_IMEI_DIGITS)
        return false;
    return avl_imei_parse((const uint8_t *)s, n, imei) == 0;
}

static bool long_arg(const char *s, long lo, long hi, long *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || x < lo || x > hi)
        return false;
    *v = x;
    return true;
}

static bool seconds_arg(const char *s, double *v)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(x) || x <= 0 || x > COMMAND_WAIT_S_MAX)
        return false;
    *v = x;
    return true;
}

/* Where `send` routes commands: --redis HOST:PORT (port 0: no Redis) and the password, if any. */
struct redis_dest {
    char host[COMMAND_REDIS_HOST_BYTES_MAX];
    int port;
    const char *password; /* --redis-password, else AVLGATE_REDIS_PASSWORD; NULL: no AUTH */
};

/* HOST:PORT, the port after the last colon; [v6]:PORT works too. */
static bool redis_arg(const char *s, char host[COMMAND_REDIS_HOST_BYTES_MAX], int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return false;
    long p;
    if (!long_arg(colon + 1, 1, 65535, &p))
        return false;
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= COMMAND_REDIS_HOST_BYTES_MAX)
        return false;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)p;
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Text from the database on a terminal
 * ---------------------------------------------------------------------------------------- */

/* The character at p (NUL-terminated text) as the CLI prints it: a control character — a C0
 * byte, DEL, or a C1 control in UTF-8 (U+0080..U+009F) — becomes '.', so a device's answer or
 * a payload cannot move the cursor, recolour or retitle the terminal; any other byte is itself.
 * Returns the bytes of p it stands for (1, or 2 for a C1 control). */
static size_t printable(const unsigned char *p, char *shown)
{
    bool c1 = p[0] == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F;
    *shown = (p[0] < 0x20 || p[0] == 0x7F || c1) ? '.' : (char)p[0];
    return c1 ? 2 : 1;
}

/* text on out, escaped by printable(). */
static void print_escaped(FILE *out, const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    while (*p != '\0') {
        char shown;
        p += printable(p, &shown);
        fputc(shown, out);
    }
}

/* ------------------------------------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------------------------------- */

static PGconn *pg_connect(const char *conninfo, FILE *err)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (pg == NULL) {
        fprintf(err, "avlgate command: PostgreSQL: out of memory\n");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(err, "avlgate command: cannot connect to PostgreSQL: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

/* Inserts the command; returns its id, or -1 after a message on err. */
static long long pg_insert(PGconn *pg, const char *imei, const char *text, long expires_s,
                           FILE *err)
{
    char expires[32];
    const char *params[3] = {imei, text, NULL};
    if (expires_s > 0) {
        snprintf(expires, sizeof expires, "%ld", expires_s);
        params[2] = expires;
    }
    PGresult *r = PQexecParams(pg,
                               "INSERT INTO public.commands (imei, payload, expires_at) "
                               "VALUES ($1::bigint, $2::text, "
                               "now() + $3::bigint * interval '1 second') RETURNING id",
                               3, NULL, params, NULL, NULL, 0);
    long long id = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fprintf(err, "avlgate command: insert into public.commands failed: %s",
                PQresultErrorMessage(r));
    else
        id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    assert(id != 0);
    return id;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Polls the row every COMMAND_WAIT_POLL_MS until it is final or wait_s has passed. Returns the
 * exit status: 0 answered (the answer on out), 1 failed/expired/still open (the status on
 * out) or a PostgreSQL error (on err). */
static int pg_wait(PGconn *pg, long long id, double wait_s, FILE *out, FILE *err)
{
    char idbuf[32];
    snprintf(idbuf, sizeof idbuf, "%lld", id);
    const char *params[1] = {idbuf};
    const double deadline = now_s() + wait_s;
    /* The deadline ends the loop; the count is a second bound in case the clock misbehaves. */
    const unsigned long polls_max = (unsigned long)(wait_s * 1000.0 / COMMAND_WAIT_POLL_MS) + 2;
    char status[16] = "?";
    for (unsigned long poll = 0; poll < polls_max; poll++) {
        PGresult *r = PQexecParams(pg,
                                   "SELECT status, response, response_hex "
                                   "FROM public.commands WHERE id = $1::integer",
                                   1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            if (PQresultStatus(r) == PGRES_TUPLES_OK)
                fprintf(err, "avlgate command: command %lld is no longer in public.commands\n", id);
            else
                fprintf(err, "avlgate command: reading command %lld failed: %s", id,
                        PQresultErrorMessage(r));
            PQclear(r);
            return 1;
        }
        snprintf(status, sizeof status, "%s", PQgetvalue(r, 0, 0));
        if (strcmp(status, "answered") == 0) {
            /* The device's text: its control characters escaped, as `list` shows them. */
            fputs(PQgetvalue(r, 0, 2)[0] == 't' ? "hex:" : "", out);
            print_escaped(out, PQgetvalue(r, 0, 1));
            fputc('\n', out);
            PQclear(r);
            return 0;
        }
        PQclear(r);
        if (strcmp(status, "failed") == 0 || strcmp(status, "expired") == 0) {
            fprintf(out, "command %lld %s\n", id, status);
            return 1;
        }
        double left_s = deadline - now_s();
        if (left_s <= 0)
            break;
        unsigned nap_ms = left_s * 1000.0 < COMMAND_WAIT_POLL_MS ? (unsigned)(left_s * 1000.0) + 1
                                                                 : COMMAND_WAIT_POLL_MS;
        sleep_ms(nap_ms);
    }
    fprintf(out, "still %s after %g s\n", status, wait_s);
    return 1;
}

/* ------------------------------------------------------------------------------------------
 * Redis
 * ---------------------------------------------------------------------------------------- */

/* Describes why c or reply failed into buf. */
static void redis_why(const redisContext *c, const redisReply *reply, char *buf, size_t cap)
{
    if (c == NULL)
        snprintf(buf, cap, "out of memory");
    else if (c->err == REDIS_ERR_IO && strcmp(c->errstr, strerror(EAGAIN)) == 0)
        snprintf(buf, cap, "no reply within %d ms", COMMAND_REDIS_TIMEOUT_MS); /* hiredis: EAGAIN */
    else if (c->err != 0)
        snprintf(buf, cap, "%s", c->errstr);
    else if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        snprintf(buf, cap, "%.*s", (int)reply->len, reply->str);
    else
        snprintf(buf, cap, "unexpected reply");
}

/* The value of field name in an HGETALL reply (a flat array of field, value), or NULL. */
static const redisReply *hash_field(const redisReply *all, const char *name)
{
    for (size_t i = 0; i + 1 < all->elements; i += 2) {
        const redisReply *k = all->element[i];
        if (k->type == REDIS_REPLY_STRING && k->len == strlen(name) &&
            memcmp(k->str, name, k->len) == 0)
            return all->element[i + 1]->type == REDIS_REPLY_STRING ? all->element[i + 1] : NULL;
    }
    return NULL;
}

/* A connection to r, authenticated with its password when it has one; NULL with why (never the
 * password) in buf. */
static redisContext *redis_open(const struct redis_dest *r, char *why, size_t cap)
{
    const struct timeval tv = {.tv_sec = COMMAND_REDIS_TIMEOUT_MS / 1000,
                               .tv_usec = (COMMAND_REDIS_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
    if (c == NULL || c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK) {
        redis_why(c, NULL, why, cap);
    } else if (r->password != NULL) {
        const char *argv[2] = {"AUTH", r->password};
        redisReply *auth = redisCommandArgv(c, 2, argv, NULL);
        if (auth != NULL && auth->type != REDIS_REPLY_ERROR) {
            freeReplyObject(auth);
            return c;
        }
        char reason[200];
        redis_why(c, auth, reason, sizeof reason);
        snprintf(why, cap, "AUTH refused: %s", reason);
        if (auth != NULL)
            freeReplyObject(auth);
    } else {
        return c;
    }
    if (c != NULL)
        redisFree(c);
    return NULL;
}

static void redis_unreachable(const struct redis_dest *r, const char *why, FILE *out)
{
    fprintf(out, "redis unreachable (%s:%d: %s): the command waits in PostgreSQL\n", r->host,
            r->port, why);
}

/* Looks the device up in the registry and, if a gateway instance owns it, appends the command
 * to that instance's stream. Reports the outcome on out; never fails the command. *cp is the
 * connection to use, opened here when NULL and closed (set to NULL) after a failure, so a
 * caller that sends many commands keeps one connection and reconnects after an error. */
static void redis_route(redisContext **cp, const struct redis_dest *r, long long id,
                        const char *imei, const char *text, FILE *out)
{
    char why[256];
    redisReply *all = NULL, *added = NULL;
    if (*cp == NULL && (*cp = redis_open(r, why, sizeof why)) == NULL) {
        redis_unreachable(r, why, out);
        return;
    }
    redisContext *c = *cp;

    char key[64];
    snprintf(key, sizeof key, "avlgate:dev:{%s}", imei);
    const char *hget[2] = {"HGETALL", key};
    all = redisCommandArgv(c, 2, hget, NULL);
    if (all == NULL || all->type != REDIS_REPLY_ARRAY)
        goto unreachable;
    const redisReply *instance = hash_field(all, "instance");
    const redisReply *shard = hash_field(all, "shard");
    if (instance == NULL || instance->len == 0 || instance->len > COMMAND_INSTANCE_BYTES_MAX) {
        /* Absent (or not one we could have written): the device is not connected anywhere.
         * The gateway that accepts it fetches its pending rows from PostgreSQL. */
        fprintf(out, "device not connected: delivered when it connects\n");
        goto done;
    }

    char stream[sizeof "avlgate:cmd:" + COMMAND_INSTANCE_BYTES_MAX];
    snprintf(stream, sizeof stream, "avlgate:cmd:%.*s", (int)instance->len, instance->str);
    char idbuf[32], maxlen[16];
    snprintf(idbuf, sizeof idbuf, "%lld", id);
    snprintf(maxlen, sizeof maxlen, "%d", COMMAND_STREAM_LEN_MAX);
    const char *xadd[] = {"XADD", stream, "MAXLEN", "~",  maxlen,    "*",
                          "id",   idbuf,  "imei",   imei, "payload", text};
    const size_t xadd_lens[] = {
        4, strlen(stream), 6, 1,           strlen(maxlen), 1, 2, strlen(idbuf),
        4, strlen(imei),   7, strlen(text)};
    _Static_assert(sizeof xadd / sizeof xadd[0] == sizeof xadd_lens / sizeof xadd_lens[0],
                   "one length per argument");
    added = redisCommandArgv(c, (int)(sizeof xadd / sizeof xadd[0]), xadd, xadd_lens);
    if (added == NULL || added->type != REDIS_REPLY_STRING)
        goto unreachable;
    fprintf(out, "routed to %.*s shard %.*s\n", (int)instance->len, instance->str,
            shard != NULL ? (int)shard->len : 1, shard != NULL ? shard->str : "?");
    goto done;

unreachable:
    redis_why(c, added != NULL ? added : all, why, sizeof why);
    redis_unreachable(r, why, out);
    redisFree(c);
    *cp = NULL;
done:
    if (added != NULL)
        freeReplyObject(added);
    if (all != NULL)
        freeReplyObject(all);
}

/* Checks one command's IMEI and text: false with what is wrong written to why. */
static bool send_args_ok(const char *imei_s, const char *text, uint64_t *imei, char *why,
                         size_t cap)
{
    size_t text_len = strlen(text);
    if (!imei_arg(imei_s, imei))
        snprintf(why, cap, "IMEI must be 15 digits, got '%s'", imei_s);
    else if (text_len == 0)
        snprintf(why, cap, "TEXT is empty");
    else if (text_len > COMMAND_TEXT_BYTES_MAX)
        snprintf(why, cap, "TEXT is longer than %u bytes", COMMAND_TEXT_BYTES_MAX);
    else
        return true;
    return false;
}

/* `send --stdin`: one command per line, "IMEI TEXT" (TEXT is the rest of the line), each
 * inserted and routed as it is read, over one PostgreSQL and one Redis connection. A bad line
 * is reported on err and skipped. Returns 0, or 1 when a line was bad or an insert failed. */
static int send_lines(PGconn *pg, const struct redis_dest *r, long expires_s, FILE *in, FILE *out,
                      FILE *err)
{
    char line[COMMAND_TEXT_BYTES_MAX + 64];
    redisContext *redis = NULL;
    int status = 0;
    unsigned long lineno = 0;
    while (fgets(line, sizeof line, in) != NULL) {
        lineno++;
        size_t n = strcspn(line, "\n");
        if (line[n] != '\n' && !feof(in)) {
            fprintf(err, "avlgate command: line %lu: longer than %zu bytes\n", lineno,
                    sizeof line - 2);
            status = 1;
            int c;
            while ((c = fgetc(in)) != EOF && c != '\n')
                ;
            continue;
        }
        line[n] = '\0';
        if (n == 0)
            continue;
        char *sp = strchr(line, ' ');
        if (sp != NULL)
            *sp = '\0';
        const char *text = sp != NULL ? sp + 1 : "";
        uint64_t imei;
        char why[128];
        if (!send_args_ok(line, text, &imei, why, sizeof why)) {
            fprintf(err, "avlgate command: line %lu: %s\n", lineno, why);
            status = 1;
            continue;
        }
        long long id = pg_insert(pg, line, text, expires_s, err);
        if (id < 0) {
            status = 1;
            if (PQstatus(pg) != CONNECTION_OK)
                break; /* the database is gone: nothing more can be queued */
            continue;
        }
        fprintf(out, "command %lld queued for %s\n", id, line);
        if (r->port != 0)
            redis_route(&redis, r, id, line, text, out);
        fflush(out);
    }
    if (redis != NULL)
        redisFree(redis);
    return status;
}

/* ------------------------------------------------------------------------------------------
 * send
 * ---------------------------------------------------------------------------------------- */

/* A subcommand's options parser returns ARGS_OK to go on, or else the exit status. */
enum { ARGS_OK = -1 };

/* `send`'s options. */
struct send_args {
    const char *conninfo;
    struct redis_dest redis;
    double wait_s;
    long expires_s;
    bool from_stdin;
};

static int send_parse(int argc, char **argv, struct send_args *a, FILE *out, FILE *err)
{
    static const struct option longopts[] = {
        {"pg", required_argument, NULL, 'p'},
        {"redis", required_argument, NULL, 'r'},
        {"redis-password", required_argument, NULL, 'P'},
        {"wait", required_argument, NULL, 'w'},
        {"expires-s", required_argument, NULL, 'e'},
        {"stdin", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            a->conninfo = optarg;
            break;
        case 'r':
            if (!redis_arg(optarg, a->redis.host, &a->redis.port))
                return usage_error(err, "--redis wants HOST:PORT, got '%s'", optarg);
            break;
        case 'P':
            a->redis.password = optarg;
            break;
        case 'w':
            if (!seconds_arg(optarg, &a->wait_s))
                return usage_error(err, "--wait wants seconds above 0 (at most 86400), got '%s'",
                                   optarg);
            break;
        case 'e':
            if (!long_arg(optarg, 1, COMMAND_EXPIRES_S_MAX, &a->expires_s))
                return usage_error(err, "--expires-s wants whole seconds above 0, got '%s'",
                                   optarg);
            break;
        case 's':
            a->from_stdin = true;
            break;
        case 'h':
            command_usage(out);
            return 0;
        case ':':
            return usage_error(err, "%s needs a value", argv[optind - 1]);
        default:
            return usage_error(err, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (a->conninfo == NULL)
        return usage_error(err, "send needs --pg CONNINFO");
    if (a->redis.password == NULL)
        a->redis.password = getenv("AVLGATE_REDIS_PASSWORD");
    if (a->redis.password != NULL && a->redis.password[0] == '\0')
        a->redis.password = NULL;
    return ARGS_OK;
}

/* `send --stdin`: the lines of stdin, over one connection to each server. */
static int send_stdin(const struct send_args *a, FILE *out, FILE *err)
{
    PGconn *pg = pg_connect(a->conninfo, err);
    if (pg == NULL)
        return 1;
    int status = send_lines(pg, &a->redis, a->expires_s, stdin, out, err);
    PQfinish(pg);
    return status;
}

/* `send IMEI TEXT`: inserts, routes, and with --wait waits for the outcome. */
static int send_one(const struct send_args *a, const char *imei_s, const char *text, FILE *out,
                    FILE *err)
{
    PGconn *pg = pg_connect(a->conninfo, err);
    if (pg == NULL)
        return 1;
    long long id = pg_insert(pg, imei_s, text, a->expires_s, err);
    if (id < 0) {
        PQfinish(pg);
        return 1;
    }
    fprintf(out, "command %lld queued for %s\n", id, imei_s);
    fflush(out);
    if (a->redis.port != 0) {
        redisContext *redis = NULL;
        redis_route(&redis, &a->redis, id, imei_s, text, out);
        if (redis != NULL)
            redisFree(redis);
    }
    int status = 0;
    if (a->wait_s > 0) {
        fflush(out);
        status = pg_wait(pg, id, a->wait_s, out, err);
    }
    PQfinish(pg);
    return status;
}

static int command_send(int argc, char **argv, FILE *out, FILE *err)
{
    struct send_args a = {0};
    int rc = send_parse(argc, argv, &a, out, err);
    if (rc != ARGS_OK)
        return rc;
    if (a.from_stdin) {
        if (argc != optind)
            return usage_error(err, "send --stdin takes no IMEI and TEXT arguments");
        if (a.wait_s > 0)
            return usage_error(err, "send --stdin does not wait (use list)");
        return send_stdin(&a, out, err);
    }
    if (argc - optind != 2)
        return usage_error(err, "send needs IMEI and TEXT");
    const char *imei_s = argv[optind], *text = argv[optind + 1];
    uint64_t imei;
    char why[128];
    if (!send_args_ok(imei_s, text, &imei, why, sizeof why))
        return usage_error(err, "%s", why);
    return send_one(&a, imei_s, text, out, err);
}

/* ------------------------------------------------------------------------------------------
 * list
 * ---------------------------------------------------------------------------------------- */

enum { LIST_COLS = 9, LIST_CELL_BYTES = COMMAND_CELL_CHARS_MAX * 4 + 8 };

/* Copies in into out for one table cell: control characters become '.' (printable()), at most
 * chars_max characters (UTF-8 aware; "..." ends a cut), prefix first. Returns the width in
 * characters. */
static size_t cell(const char *prefix, const char *in, char out[LIST_CELL_BYTES], size_t chars_max)
{
    size_t o = 0, chars = 0;
    const char *parts[2] = {prefix, in};
    for (int k = 0; k < 2; k++) {
        for (const unsigned char *p = (const unsigned char *)parts[k]; *p != '\0';) {
            bool cont = (*p & 0xC0) == 0x80;
            if (!cont && chars == chars_max) {
                assert(o >= 3 && chars >= 3);
                /* Back up to make room for the ellipsis, on character boundaries. */
                for (int dots = 0; dots < 3; dots++) {
                    while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
                        o--;
                    o--;
                }
                memcpy(out + o, "...", 3);
                out[o + 3] = '\0';
                return chars;
            }
            if (o + 1 >= LIST_CELL_BYTES)
                break; /* only a run of stray continuation bytes gets here */
            p += printable(p, &out[o++]);
            chars += !cont;
        }
    }
    out[o] = '\0';
    return chars;
}

/* $1 the limit, $2 the IMEI or NULL for all. Times in UTC, to the second. */
#define LIST_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
static const char list_sql[] =
    "SELECT id, lpad(imei::text, 15, '0'), status, attempts, " LIST_TS("date_created") ", " LIST_TS(
        "sent_at") ", " LIST_TS("answered_at") ", "
                                               "payload, response, response_hex FROM "
                                               "public.commands "
                                               "WHERE $2::bigint IS NULL OR imei = $2::bigint "
                                               "ORDER BY id DESC LIMIT $1::integer";
#undef LIST_TS

/* `list`'s options and its optional IMEI (NULL: all). */
struct list_args {
    const char *conninfo;
    long limit;
    const char *imei_s;
};

static int list_parse(int argc, char **argv, struct list_args *a, FILE *out, FILE *err)
{
    static const struct option longopts[] = {
        {"pg", required_argument, NULL, 'p'},
        {"limit", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            a->conninfo = optarg;
            break;
        case 'n':
            if (!long_arg(optarg, 1, COMMAND_LIST_LIMIT_MAX, &a->limit))
                return usage_error(err, "--limit wants 1..10000, got '%s'", optarg);
            break;
        case 'h':
            command_usage(out);
            return 0;
        case ':':
            return usage_error(err, "%s needs a value", argv[optind - 1]);
        default:
            return usage_error(err, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (a->conninfo == NULL)
        return usage_error(err, "list needs --pg CONNINFO");
    if (argc - optind > 1)
        return usage_error(err, "list takes at most one IMEI");
    a->imei_s = optind < argc ? argv[optind] : NULL;
    uint64_t imei;
    if (a->imei_s != NULL && !imei_arg(a->imei_s, &imei))
        return usage_error(err, "IMEI must be 15 digits, got '%s'", a->imei_s);
    return ARGS_OK;
}

/* The rows of list_sql as a table: a header, then one line per row, columns padded to their
 * widest cell. */
static void list_print(const PGresult *r, FILE *out)
{
    static const char *const heads[LIST_COLS] = {
        "ID", "IMEI", "STATUS", "ATTEMPTS", "CREATED", "SENT", "ANSWERED", "PAYLOAD", "RESPONSE"};
    size_t width[LIST_COLS];
    for (int k = 0; k < LIST_COLS; k++)
        width[k] = strlen(heads[k]);
    const int rows = PQntuples(r);
    char buf[LIST_CELL_BYTES];
    /* Two passes over the same cells: widths first, then the text. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            for (int k = 0; k < LIST_COLS; k++)
                fprintf(out, "%-*s%s", k + 1 < LIST_COLS ? (int)width[k] : 0, heads[k],
                        k + 1 < LIST_COLS ? "  " : "\n");
        }
        for (int i = 0; i < rows; i++) {
            bool hex = PQgetvalue(r, i, 9)[0] == 't';
            for (int k = 0; k < LIST_COLS; k++) {
                const char *v = PQgetisnull(r, i, k) ? "-" : PQgetvalue(r, i, k);
                const char *prefix = k == 8 && hex && !PQgetisnull(r, i, k) ? "hex:" : "";
                size_t w = cell(prefix, v, buf, COMMAND_CELL_CHARS_MAX);
                if (pass == 0) {
                    if (w > width[k])
                        width[k] = w;
                    continue;
                }
                if (k + 1 < LIST_COLS)
                    fprintf(out, "%s%*s  ", buf, (int)(width[k] - w), "");
                else
                    fprintf(out, "%s\n", buf);
            }
        }
    }
}

static int command_list(int argc, char **argv, FILE *out, FILE *err)
{
    struct list_args a = {.limit = COMMAND_LIST_LIMIT_DEFAULT};
    int rc = list_parse(argc, argv, &a, out, err);
    if (rc != ARGS_OK)
        return rc;
    PGconn *pg = pg_connect(a.conninfo, err);
    if (pg == NULL)
        return 1;
    char limit_s[16];
    snprintf(limit_s, sizeof limit_s, "%ld", a.limit);
    const char *params[2] = {limit_s, a.imei_s};
    PGresult *r = PQexecParams(pg, list_sql, 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(err, "avlgate command: reading public.commands failed: %s",
                PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(pg);
        return 1;
    }
    list_print(r, out);
    PQclear(r);
    PQfinish(pg);
    return fflush(out) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------
 * Entry
 * ---------------------------------------------------------------------------------------- */

int command_main(int argc, char **argv, FILE *out, FILE *err)
{
    if (argc < 2) {
        command_usage(err);
        return 2;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "send") == 0)
        return command_send(argc - 1, argv + 1, out, err);
    if (strcmp(sub, "list") == 0)
        return command_list(argc - 1, argv + 1, out, err);
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        command_usage(out);
        return 0;
    }
    return usage_error(err, "unknown subcommand '%s'", sub);
}
