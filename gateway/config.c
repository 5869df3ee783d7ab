/* config.c — `avlgate run`'s options from flags, the environment and a config file. See
 * config.h. One table describes every option: its flag, its checks, its help line. */
#include "gateway/config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "codec/avl.h"
#include "gateway/log.h"
#include "shard/cidr.h"
#include "shard/engine.h"

enum kind {
    K_U32,     /* a number in [lo, hi] */
    K_STR,     /* text */
    K_SWITCH,  /* a flag without value; true/false elsewhere */
    K_DEVICES, /* any | known */
    K_LAYOUT,  /* arrays | jsonb: enum copyenc_layout */
    K_CONFIG,  /* --config FILE: a flag or AVLGATE_CONFIG, not a file key */
    K_ACTION,  /* --print-config, --help: flags only */
};

enum source { SRC_DEFAULT = 0, SRC_FILE, SRC_ENV, SRC_FLAG };
static const char *const source_names[] = {"default", "file", "environment", "flag"};

/* The longest line of a config file the reader takes (and --print-config writes). */
enum { CONFIG_LINE_BYTES = 4094 };

struct opt {
    const char *name;
    enum kind kind;
    size_t off; /* into struct run_options */
    uint32_t lo, hi;
    const char *arg, *help;
};

#define CFG(f) offsetof(struct run_options, cfg.f)
#define RO(f)  offsetof(struct run_options, f)

static const struct opt opts[] = {
    {"pg", K_STR, CFG(pg_conninfo), 0, 0, "CONNINFO",
     "libpq conninfo or URI (required; give an IP address)"},
    {"listen", K_STR, RO(listen), 0, 0, "HOST:PORT", "device port (default 0.0.0.0:5027)"},
    {"udp", K_STR, RO(udp), 0, 0, "HOST:PORT|off",
     "UDP device port (default: the --listen address and port; off: none)"},
    {"udp-devices-max", K_U32, CFG(udp_devices_max), 1, 1u << 20, "N",
     "devices known over UDP only, per shard (10000)"},
    {"udp-bytes-max", K_U32, CFG(udp_bytes_max), 64, 65535, "N",
     "longest datagram taken (4096; longer ones are counted and dropped)"},
    {"shards", K_U32, CFG(shards), 1, ENGINE_SHARDS_MAX, "N",
     "shard threads (default: online CPUs)"},
    {"pin", K_SWITCH, CFG(pin), 0, 0, NULL, "pin shard i to CPU i"},
    {"instance", K_STR, CFG(instance), 0, 0, "ID",
     "this instance's name, in Redis keys (default: the host name)"},
    {"batch-rows", K_U32, CFG(batch_rows), 1, 1000000, "N", "seal a batch at N rows (4000)"},
    {"batch-ms", K_U32, CFG(batch_ms), 0, 60000, "N",
     "or once its first row is N ms old and no transaction is ahead of it (2)"},
    {"batches", K_U32, CFG(batches), 2, 16, "N", "batches per shard, the row ring (4)"},
    {"txn-timeout-ms", K_U32, CFG(txn_timeout_ms), 0, 600000, "N",
     "a batch statement past N ms is cancelled, the batch retried split (5000, 0 off)"},
    {"conns-max", K_U32, CFG(conns_max), 1, 1u << 20, "N",
     "connections per shard (10000, <= RLIMIT_NOFILE)"},
    {"bufs", K_U32, CFG(bufs), 1, 32768, "N", "receive buffers per shard, a power of two (1024)"},
    {"buf-bytes", K_U32, CFG(buf_bytes), 256, 1u << 20, "N", "bytes per receive buffer (4096)"},
    {"idle-timeout-s", K_U32, CFG(idle_timeout_s), 0, 7 * 86400, "N",
     "close a silent connection after N s (600, 0 off)"},
    {"frame-timeout-s", K_U32, CFG(frame_timeout_s), 0, 3600, "N",
     "close when a frame stays incomplete N s (30)"},
    {"handshake-timeout-s", K_U32, CFG(handshake_timeout_s), 0, 3600, "N",
     "close a connection that sent no valid IMEI N s after its accept (10, 0 off)"},
    {"frame-bytes-max", K_U32, CFG(frame_bytes_max), AVL_TCP_OVERHEAD_BYTES + AVL_DATA_BYTES_MIN,
     AVL_FRAME_BYTES_MAX_CEILING, "N", "largest frame accepted (65536)"},
    {"reasm-bytes-max", K_U32, CFG(reasm_bytes_max), 4096, UINT32_MAX, "N",
     "memory per shard for partial frames and paused bytes (33554432 = 32 MiB)"},
    {"io-layout", K_LAYOUT, CFG(io_layout), 0, 0, "arrays|jsonb",
     "how rows hold IO: the arrays of schema 006 (arrays), or io jsonb (as before 006)"},
    {"devices", K_DEVICES, CFG(devices_known), 0, 0, "any|known",
     "known: only IMEIs enabled in public.devices (any)"},
    {"proxy-protocol", K_SWITCH, CFG(proxy_protocol), 0, 0, NULL,
     "read a PROXY v2 or v1 header before each handshake (behind HAProxy: send-proxy-v2)"},
    {"proxy-from", K_STR, RO(proxy_from), 0, 0, "CIDR[,CIDR]",
     "the balancers' addresses: a connection from elsewhere is closed (--proxy-protocol)"},
    {"apply-schema", K_STR, RO(schema_dir), 0, 0, "DIR",
     "apply DIR/*.sql before starting (tests, demo)"},
    {"drain-timeout-ms", K_U32, CFG(drain_timeout_ms), 0, 600000, "N",
     "on SIGTERM, wait this long for commits and ACKs (10000)"},
    {"wait-batch-us", K_U32, CFG(wait_batch_us), 0, 10000, "N",
     "once a completion is in, wait up to N us for more (100)"},
    {"state-idle-s", K_U32, CFG(state_idle_s), 0, 7 * 86400, "N",
     "free a quiet device's duplicate window after N s (60, 0 off)"},
    {"metrics", K_STR, RO(metrics), 0, 0, "HOST:PORT",
     "serve GET /metrics (Prometheus) and GET /healthz there"},
    {"redis", K_STR, RO(redis), 0, 0, "HOST:PORT",
     "Redis for the device registry and the command intake (resolved once at start)"},
    {"redis-password", K_STR, CFG(redis_password), 0, 0, "PASS",
     "AUTH with it on every Redis link (secret: prefer the config file or the environment)"},
    {"cmd-sweep-s", K_U32, CFG(cmd_sweep_s), 0, 86400, "N",
     "look for open commands of connected devices every N s (3, 0 off)"},
    {"cmd-timeout-s", K_U32, CFG(cmd_timeout_s), 1, 86400, "N",
     "wait N s for a command's answer before sending it again (30)"},
    {"cmd-attempts", K_U32, CFG(cmd_attempts), 1, 100, "N", "sends before a command is failed (3)"},
    {"registry-ttl-s", K_U32, CFG(registry_ttl_s), 3, 86400, "N",
     "TTL of a device's registry entry, refreshed every third (90)"},
    {"directus-bus", K_SWITCH, CFG(directus_bus), 0, 0, NULL,
     "tell Directus's WebSocket subscribers of each command row written (README: Directus)"},
    {"config", K_CONFIG, RO(config), 0, 0, "FILE",
     "read key = value lines from FILE (flags and AVLGATE_* win)"},
    {"print-config", K_ACTION, RO(print_config), 0, 0, NULL,
     "print the effective configuration and exit"},
    {"help", K_ACTION, RO(help), 0, 0, NULL, "this text"},
};
enum { NOPTS = sizeof opts / sizeof opts[0] };
_Static_assert((int)NOPTS <= (int)CONFIG_OPTIONS_MAX, "room for every option's source");

void config_usage(FILE *f)
{
    fprintf(f, "usage: avlgate run --pg CONNINFO [options]\n\n");
    for (size_t i = 0; i < NOPTS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s%s", opts[i].name, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        fprintf(f, "  %-25s%s\n", flag, opts[i].help);
    }
    fprintf(f, "\nEvery option is also AVLGATE_<NAME> in the environment (AVLGATE_BATCH_ROWS) "
               "and a key\nof the --config file (batch-rows = 4000); flags win over the "
               "environment, which wins\nover the file.\n");
}

static void *field(struct run_options *o, const struct opt *op)
{
    return (char *)o + op->off;
}

static bool parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no",
                                                                                "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* The option's string is a copy this file made (from the file or the environment). */
static bool string_owned(const struct run_options *o, const struct opt *op)
{
    enum source src = (enum source)o->source[op - opts];
    return (op->kind == K_STR || op->kind == K_CONFIG) && (src == SRC_FILE || src == SRC_ENV);
}

void config_free(struct run_options *o)
{
    for (size_t i = 0; i < NOPTS; i++) {
        if (!string_owned(o, &opts[i]))
            continue;
        const char **slot = field(o, &opts[i]);
        free((void *)(uintptr_t)*slot);
        *slot = NULL;
        o->source[i] = SRC_DEFAULT;
    }
}

/* Sets one option from text; false with the reason in why. */
static bool set(struct run_options *o, const struct opt *op, const char *v, enum source src,
                char *why, size_t cap)
{
    switch (op->kind) {
    case K_U32: {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end || v[0] == '-' || x < op->lo || x > op->hi) {
            snprintf(why, cap, "bad value '%s' (want a whole number %u..%u)", v, op->lo, op->hi);
            return false;
        }
        *(uint32_t *)field(o, op) = (uint32_t)x;
        return true;
    }
    case K_STR:
    case K_CONFIG: {
        if (v[0] == '\0') {
            snprintf(why, cap, "empty value");
            return false;
        }
        /* argv strings live as long as the process; the file's and environment's are copied,
         * and a copy a later line or the environment replaces is freed */
        const char *copy = src == SRC_FLAG ? v : strdup(v);
        if (!copy) {
            snprintf(why, cap, "out of memory");
            return false;
        }
        const char **slot = field(o, op);
        if (string_owned(o, op))
            free((void *)(uintptr_t)*slot);
        *slot = copy;
        return true;
    }
    case K_SWITCH:
    case K_ACTION: {
        bool b = true;
        if (src != SRC_FLAG && !parse_bool(v, &b)) {
            snprintf(why, cap, "bad value '%s' (want true or false)", v);
            return false;
        }
        *(bool *)field(o, op) = b;
        return true;
    }
    case K_DEVICES:
        if (strcmp(v, "known") != 0 && strcmp(v, "any") != 0) {
            snprintf(why, cap, "bad value '%s' (want any or known)", v);
            return false;
        }
        *(bool *)field(o, op) = strcmp(v, "known") == 0;
        return true;
    case K_LAYOUT: {
        int layout = copyenc_layout_parse(v);
        if (layout != COPYENC_ARRAYS && layout != COPYENC_JSONB) { /* raw: the bench's only */
            snprintf(why, cap, "bad value '%s' (want arrays or jsonb)", v);
            return false;
        }
        *(enum copyenc_layout *)field(o, op) = (enum copyenc_layout)layout;
        return true;
    }
    }
    return false;
}

static const struct opt *find(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

void config_defaults(struct run_options *o)
{
    static char hostname[256];
    memset(o, 0, sizeof *o);
    struct ingest_config *c = &o->cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    c->shards = cpus > 0 ? (unsigned)(cpus > ENGINE_SHARDS_MAX ? ENGINE_SHARDS_MAX : cpus) : 1;
    c->io_layout = COPYENC_ARRAYS;
    c->batch_rows = 4000;
    c->batch_ms = 2;
    c->batches = 4;
    c->txn_timeout_ms = 5000;
    c->conns_max = 10000;
    c->bufs = 1024;
    c->buf_bytes = 4096;
    c->idle_timeout_s = 600;
    c->frame_timeout_s = 30;
    c->handshake_timeout_s = 10;
    c->frame_bytes_max = AVL_FRAME_BYTES_MAX_DEFAULT;
    c->reasm_bytes_max = 32u << 20;
    c->drain_timeout_ms = 10000;
    c->wait_batch_us = 100;
    c->state_idle_s = 60;
    c->cmd_sweep_s = 3;
    c->cmd_timeout_s = 30;
    c->cmd_attempts = 3;
    c->registry_ttl_s = 90;
    c->udp_devices_max = 10000;
    c->udp_bytes_max = 4096;
    c->metrics_fd = -1;
    if (gethostname(hostname, sizeof hostname) != 0 || hostname[0] == '\0')
        snprintf(hostname, sizeof hostname, "avlgate");
    hostname[sizeof hostname - 1] = '\0';
    c->instance = hostname;
    o->listen = "0.0.0.0:5027";
}

/* The value after a file line's '=': quoted (everything to the closing quote, '#' and spaces
 * included) or bare (cut at a trailing comment: whitespace, then '#'; then trimmed). Cuts the
 * line in place. NULL with the reason in why. */
static char *file_value(char *v, char *why, size_t cap)
{
    while (isspace((unsigned char)*v))
        v++;
    char *rest;
    if (*v == '"') {
        /* Quoted: everything to the closing quote; \" and \\ stand for " and \. */
        char *w = v, *r = v + 1;
        for (; *r != '"'; r++) {
            if (*r == '\0') {
                snprintf(why, cap, "no closing quote");
                return NULL;
            }
            if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
                r++;
            *w++ = *r;
        }
        *w = '\0';
        rest = r + 1;
    } else {
        for (char *h = strchr(v, '#'); h; h = strchr(h + 1, '#'))
            if (h > v && isspace((unsigned char)h[-1])) {
                *h = '\0';
                break;
            }
        char *end = v + strlen(v);
        while (end > v && isspace((unsigned char)end[-1]))
            *--end = '\0';
        rest = end;
    }
    while (isspace((unsigned char)*rest))
        rest++;
    if (*rest != '\0' && *rest != '#') {
        snprintf(why, cap, "text after the closing quote");
        return NULL;
    }
    return v;
}

/* One line of the file (blank, a comment, or key = value) applied to o; false with the reason
 * in why. Cuts the line in place. */
static bool file_line(struct run_options *o, char *line, char *why, size_t cap)
{
    char *p = line;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0' || *p == '#')
        return true;
    char *eq = strchr(p, '=');
    if (!eq) {
        p[strcspn(p, "\r\n")] = '\0';
        snprintf(why, cap, "want 'key = value', got '%s'", p);
        return false;
    }
    char *k = p, *kend = eq;
    while (kend > k && isspace((unsigned char)kend[-1]))
        kend--;
    char *v = file_value(eq + 1, why, cap);
    if (!v)
        return false;
    const struct opt *op = find(k, (size_t)(kend - k));
    if (!op || op->kind == K_CONFIG || op->kind == K_ACTION) {
        snprintf(why, cap, "unknown key '%.*s'", (int)(kend - k), k);
        return false;
    }
    char bad[160];
    if (!set(o, op, v, SRC_FILE, bad, sizeof bad)) {
        snprintf(why, cap, "%s: %s", op->name, bad);
        return false;
    }
    o->source[op - opts] = SRC_FILE;
    return true;
}

int config_read_file(struct run_options *o, FILE *f, const char *name, FILE *err)
{
    char line[CONFIG_LINE_BYTES + 2]; /* the line, its newline, the NUL */
    char why[sizeof line + 256];      /* may quote the whole line */
    unsigned n = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        n++;
        size_t len = strlen(line);
        bool ok;
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            snprintf(why, sizeof why, "line longer than %zu bytes", sizeof line - 2);
            ok = false;
        } else {
            ok = file_line(o, line, why, sizeof why);
        }
        if (!ok) {
            fprintf(err, "avlgate run: config %s:%u: %s\n", name, n, why);
            rc = 2;
        }
    }
    return rc;
}

/* The file's lines, in order. Returns 0, 1 (cannot read) or 2 (a bad line). */
static int load_file(struct run_options *o, const char *path, FILE *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(err, "avlgate run: config %s: %s\n", path, strerror(errno));
        return 1;
    }
    int rc = config_read_file(o, f, path, err);
    fclose(f);
    return rc;
}

/* AVLGATE_<NAME> of option op, into buf. */
static void env_name(const struct opt *op, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "AVLGATE_%s", op->name);
    for (size_t i = 8; i < n && i < cap; i++)
        buf[i] = buf[i] == '-' ? '_' : (char)toupper((unsigned char)buf[i]);
}

static const char *env_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

/* The getopt_long table of opts: option i comes back as 256 + i. */
static void long_options(struct option longopts[NOPTS + 1])
{
    for (size_t i = 0; i < NOPTS; i++)
        longopts[i] = (struct option){
            opts[i].name,
            opts[i].kind == K_SWITCH || opts[i].kind == K_ACTION ? no_argument : required_argument,
            NULL, 256 + (int)i};
    longopts[NOPTS] = (struct option){0, 0, 0, 0};
}

/* The first pass over the flags: each one spelt in full and given a value where it takes one,
 * and no other arguments; applies nothing, only notes --config FILE. Returns 0 or 2. */
static int scan_flags(int argc, char **argv, const struct option *longopts,
                      const char **config_flag, FILE *err)
{
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (c == ':') {
            fprintf(err, "avlgate run: %s needs a value\n", argv[optind - 1]);
            return 2;
        }
        const char *typed = argv[optind - 1];
        if (c < 256) {
            const char *eq = strchr(typed, '=');
            const struct opt *op = eq && strncmp(typed, "--", 2) == 0
                                       ? find(typed + 2, (size_t)(eq - typed - 2))
                                       : NULL;
            if (op)
                fprintf(err, "avlgate run: --%s takes no value\n", op->name);
            else
                fprintf(err, "avlgate run: unknown option '%s' (avlgate run --help)\n", typed);
            return 2;
        }
        /* getopt_long takes unique prefixes (--conn for --conns-max); the file and the
         * environment need the whole name, so the command line does too. */
        const struct opt *op = &opts[c - 256];
        if (optarg && typed == optarg)
            typed = argv[optind - 2]; /* "--name value": the name is the word before */
        size_t nl = strlen(op->name);
        if (strncmp(typed, "--", 2) != 0 || strncmp(typed + 2, op->name, nl) != 0 ||
            (typed[2 + nl] != '\0' && typed[2 + nl] != '=')) {
            fprintf(err, "avlgate run: unknown option '%s' (did you mean --%s?)\n", typed,
                    op->name);
            return 2;
        }
        if (op->kind == K_CONFIG)
            *config_flag = optarg;
    }
    if (optind != argc) {
        fprintf(err, "avlgate run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* The AVLGATE_<NAME> variables of envp, over the file's values. Returns 0 or 2. */
static int load_env(struct run_options *o, char **envp, FILE *err)
{
    char name[64], why[160];
    for (size_t i = 0; i < NOPTS; i++) {
        if (opts[i].kind == K_ACTION || opts[i].kind == K_CONFIG)
            continue;
        env_name(&opts[i], name, sizeof name);
        const char *v = env_get(envp, name);
        if (!v)
            continue;
        if (!set(o, &opts[i], v, SRC_ENV, why, sizeof why)) {
            fprintf(err, "avlgate run: environment %s: %s\n", name, why);
            return 2;
        }
        o->source[i] = SRC_ENV;
    }
    return 0;
}

/* A misspelt variable would otherwise be ignored without a word. */
static void warn_unknown_env(char **envp)
{
    char name[64];
    for (char **e = envp; e && *e; e++) {
        /* AVLGATE_TEST_*, AVLGATE_PGTMP and AVLGATE_REDISTMP are the test harness's. */
        if (strncmp(*e, "AVLGATE_", 8) != 0 || strncmp(*e, "AVLGATE_TEST_", 13) == 0 ||
            strncmp(*e, "AVLGATE_CONFIG=", 15) == 0 || strncmp(*e, "AVLGATE_PGTMP=", 14) == 0 ||
            strncmp(*e, "AVLGATE_REDISTMP=", 17) == 0)
            continue;
        size_t len = strcspn(*e, "=");
        bool known = false;
        for (size_t i = 0; i < NOPTS && !known; i++) {
            env_name(&opts[i], name, sizeof name);
            known = strlen(name) == len && strncmp(*e, name, len) == 0;
        }
        if (!known)
            log_line(LOG_WARN, "unknown environment variable ignored", "name=%.*s", (int)len, *e);
    }
}

/* The second pass over the flags (scan_flags checked them): applied last, they win. Returns 0
 * or 2. */
static int apply_flags(struct run_options *o, int argc, char **argv, const struct option *longopts,
                       FILE *err)
{
    char why[160];
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const struct opt *op = &opts[c - 256];
        if (!set(o, op, optarg ? optarg : "", SRC_FLAG, why, sizeof why)) {
            fprintf(err, "avlgate run: --%s: %s\n", op->name, why);
            return 2;
        }
        o->source[op - opts] = SRC_FLAG;
    }
    return 0;
}

/* 1 to 64 of A-Z a-z 0-9 . _ - (it names Redis keys). */
static bool instance_ok(const char *id)
{
    size_t n = strlen(id);
    bool ok = n > 0 && n <= 64;
    for (size_t i = 0; i < n && ok; i++)
        ok = isalnum((unsigned char)id[i]) || id[i] == '.' || id[i] == '_' || id[i] == '-';
    return ok;
}

/* What no single option says: the options together. Returns 0 or 2. */
static int check_options(const struct run_options *o, FILE *err)
{
    /* --print-config says what run would refuse too: a printed file is one run takes. */
    if (!o->cfg.pg_conninfo && !o->print_config) {
        fprintf(err, "avlgate run: --pg CONNINFO is required (or AVLGATE_PG, or pg = in the "
                     "config file)\n");
        return 2;
    }
    if (o->cfg.bufs & (o->cfg.bufs - 1)) {
        fprintf(err, "avlgate run: --bufs %u is not a power of two\n", o->cfg.bufs);
        return 2;
    }
    uint64_t keep = (uint64_t)o->cfg.frame_bytes_max + 2 * (uint64_t)o->cfg.buf_bytes;
    if (o->cfg.reasm_bytes_max < keep) {
        fprintf(err,
                "avlgate run: --reasm-bytes-max %u is below --frame-bytes-max + 2 x --buf-bytes "
                "= %llu, what one connection may keep\n",
                o->cfg.reasm_bytes_max, (unsigned long long)keep);
        return 2;
    }
    if (o->cfg.proxy_protocol != (o->proxy_from != NULL)) {
        fprintf(err, "avlgate run: --proxy-protocol and --proxy-from go together (who may send "
                     "a PROXY header must be said)\n");
        return 2;
    }
    struct cidr_list ranges;
    char why[128];
    if (o->proxy_from && cidr_parse(o->proxy_from, &ranges, why, sizeof why) != 0) {
        fprintf(err, "avlgate run: bad --proxy-from '%s': %s\n", o->proxy_from, why);
        return 2;
    }
    if (!instance_ok(o->cfg.instance)) {
        fprintf(err,
                "avlgate run: bad --instance '%s' (1 to 64 of A-Z a-z 0-9 . _ -; it names Redis "
                "keys)\n",
                o->cfg.instance);
        return 2;
    }
    return 0;
}

int config_load(struct run_options *o, int argc, char **argv, char **envp, FILE *err)
{
    config_defaults(o);
    /* The flags are read twice: first for their spelling and --config, which must be known
     * before the file is read; then applied last, since they win over everything. */
    struct option longopts[NOPTS + 1];
    long_options(longopts);
    const char *config_flag = NULL;
    int rc = scan_flags(argc, argv, longopts, &config_flag, err);
    if (rc)
        return rc;
    const char *config = config_flag ? config_flag : env_get(envp, "AVLGATE_CONFIG");
    if (config) {
        o->config = config;
        rc = load_file(o, config, err);
        if (rc)
            return rc;
    }
    rc = load_env(o, envp, err);
    if (rc)
        return rc;
    warn_unknown_env(envp);
    rc = apply_flags(o, argc, argv, longopts, err);
    if (rc || o->help)
        return rc;
    return check_options(o, err);
}

/* Appends text to out (cap bytes in all), cutting at the end. */
static void append(char *out, size_t cap, size_t *len, const char *text)
{
    size_t n = strlen(text);
    if (*len + n >= cap)
        n = *len + 1 < cap ? cap - 1 - *len : 0;
    memcpy(out + *len, text, n);
    *len += n;
    out[*len] = '\0';
}

/* Whether a conninfo value must be written between single quotes: empty, or holding white
 * space, a control character, a quote or a backslash. */
static bool conninfo_quoted(const char *v)
{
    if (v[0] == '\0')
        return true;
    for (; *v; v++)
        if (isspace((unsigned char)*v) || iscntrl((unsigned char)*v) || *v == '\'' || *v == '\\')
            return true;
    return false;
}

/* The conninfo (keywords or URI) as libpq parses it, in keyword form, with password and
 * sslpassword shown as ***: never the secret, however it was written. A conninfo that parses to
 * no keyword at all reads "postgresql://" (its URI form). False when it does not fit in cap. */
static bool masked(const char *s, char *out, size_t cap)
{
    char *why = NULL;
    PQconninfoOption *all = PQconninfoParse(s, &why);
    out[0] = '\0';
    if (!all) {
        PQfreemem(why);
        snprintf(out, cap, "(not a conninfo libpq can parse; not shown)");
        return true;
    }
    size_t len = 0;
    for (const PQconninfoOption *o = all; o->keyword; o++) {
        if (!o->val)
            continue;
        bool secret = strcmp(o->keyword, "password") == 0 || strcmp(o->keyword, "sslpassword") == 0;
        if (len)
            append(out, cap, &len, " ");
        append(out, cap, &len, o->keyword);
        append(out, cap, &len, "=");
        if (secret) {
            append(out, cap, &len, "***");
            continue;
        }
        bool quoted = conninfo_quoted(o->val);
        if (quoted)
            append(out, cap, &len, "'");
        for (const char *v = o->val; *v; v++) {
            char ch[3] = {*v, 0, 0};
            if (*v == '\'' || *v == '\\') {
                ch[0] = '\\';
                ch[1] = *v;
            }
            append(out, cap, &len, ch);
        }
        if (quoted)
            append(out, cap, &len, "'");
    }
    PQconninfoFree(all);
    if (len == 0)
        append(out, cap, &len, "postgresql://");
    return len + 1 < cap; /* append stops one short of cap when it cuts */
}

/* The length of v written between double quotes with " and \ escaped. */
static size_t quoted_len(const char *v)
{
    size_t n = 2;
    for (; *v; v++)
        n += (*v == '"' || *v == '\\') ? 2 : 1;
    return n;
}

/* One string option's line: bare when the file reads it back as it is, else between double
 * quotes with " and \ escaped. A value the file cannot hold — a line break (only a flag or the
 * environment can give one), or a line longer than the reader takes — is said in a comment. */
static void print_string(FILE *out, const char *name, const char *v, const char *src)
{
    size_t n = strlen(v);
    bool quote = n == 0 || strchr(v, '#') || isspace((unsigned char)v[0]) ||
                 isspace((unsigned char)v[n - 1]) || v[0] == '"';
    size_t line = strlen(name) + 3 + (quote ? quoted_len(v) : n) + 4 + strlen(src);
    if (strchr(v, '\n') || line > CONFIG_LINE_BYTES) {
        fprintf(out, "# %s = (%s: set it with the flag or the environment)  # %s\n", name,
                strchr(v, '\n') ? "holds a line break" : "too long for a config file line", src);
        return;
    }
    if (!quote) {
        fprintf(out, "%s = %s  # %s\n", name, v, src);
        return;
    }
    fprintf(out, "%s = \"", name);
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            fputc('\\', out);
        fputc(*v, out);
    }
    fprintf(out, "\"  # %s\n", src);
}

void config_print(const struct run_options *o, FILE *out)
{
    fprintf(out, "# avlgate run: the effective configuration (a valid --config file)\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *op = &opts[i];
        const void *p = (const char *)o + op->off;
        const char *src = source_names[o->source[i]];
        char buf[16384]; /* a masked pg: its value fits in a 4096-byte file line */
        switch (op->kind) {
        case K_U32:
            fprintf(out, "%s = %u  # %s\n", op->name, *(const uint32_t *)p, src);
            break;
        case K_SWITCH:
            fprintf(out, "%s = %s  # %s\n", op->name, *(const bool *)p ? "true" : "false", src);
            break;
        case K_DEVICES:
            fprintf(out, "%s = %s  # %s\n", op->name, *(const bool *)p ? "known" : "any", src);
            break;
        case K_LAYOUT:
            fprintf(out, "%s = %s  # %s\n", op->name,
                    copyenc_layout_name(*(const enum copyenc_layout *)p), src);
            break;
        case K_STR: {
            const char *v = *(const char *const *)p;
            if (!v) {
                fprintf(out, "# %s =   (not set)\n", op->name);
                break;
            }
            if (strcmp(op->name, "pg") == 0 && !masked(v, buf, sizeof buf)) {
                fprintf(out,
                        "# pg = (too long for a config file line: set it with the flag or "
                        "the environment)  # %s\n",
                        src);
                break;
            }
            if (strcmp(op->name, "pg") == 0)
                v = buf;
            else if (strcmp(op->name, "redis-password") == 0)
                v = "***"; /* never the secret */
            print_string(out, op->name, v, src);
            break;
        }
        case K_CONFIG:
        case K_ACTION:
            break;
        }
    }
}
