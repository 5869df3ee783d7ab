/* options.c — avlgate-loadgen's command line: the usage text, the option table, parsing each
 * option into struct options with its range checked, and the checks between options.
 *
 * Owns nothing past the call: options_parse writes the caller's struct, whose strings point
 * into argv. Invariant: a struct options that options_parse returned 0 for has every value in
 * its documented range, at most one pacing, --pg with --verify, and with --udp none of the
 * options only TCP connections have (what was given, not what it was set to: --fragment 0 is
 * refused with --udp as well, so nobody believes it did something). Main thread only, before the
 * workers start (getopt_long keeps global state). */
#include "loadgen/options.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/avl.h"
#include "loadgen/packetgen.h"
#include "loadgen/verify.h"
#include "shard/engine.h"

void options_usage(FILE *f)
{
    fprintf(f,
            "usage: avlgate-loadgen [options]\n"
            "  --connect HOST:PORT        gateway (default 127.0.0.1:5027)\n"
            "  --devices N                simulated trackers (default 100)\n"
            "  --threads T                engines, one ring each (default: <= 18000 devices per "
            "ring)\n"
            "  --src-ips K                bind to K consecutive addresses from --src-base\n"
            "                             (default for a 127.x target: one per 10000 devices)\n"
            "  --src-base ADDR            first source address (default 127.0.0.1)\n"
            "  --imei-base B              IMEI of device 0 (default 350000000000000)\n"
            "  --records K                records per packet (default 10)\n"
            "  --packet-bytes-max B       largest packet; fewer records when they do not fit\n"
            "                             (default max(1024, 400 x K))\n"
            "pacing (default --drain):\n"
            "  --drain                    each packet as soon as the last one was acknowledged\n"
            "  --rate R                   R records/s in all, each device on its own schedule\n"
            "  --period-s P               one packet per device every P s\n"
            "  --idle                     connect, handshake, then stay silent (memory per\n"
            "                             connection: bench/connections)\n"
            "  --duration-s D             stop after D s (default 30; 0: no limit)\n"
            "  --warmup-s W               leave the ACKs of the first W s out of the summary's\n"
            "                             latency percentiles (the timeline keeps them)\n"
            "  --packets M                stop when every device has M packets acknowledged\n"
            "connections:\n"
            "  --connect-rate R           new connections per second (default unlimited)\n"
            "  --ramp-s S                 spread the first connections over S s\n"
            "  --connect-inflight N       dials and handshakes in progress at most (4096)\n"
            "  --connect-timeout-s S      a dial fails after S s (default 10)\n"
            "  --ack-timeout-s S          reconnect when an ACK or the handshake's answer takes\n"
            "                             longer (default 60)\n"
            "  --reconnect-ms MS          backoff after a failure, doubling to 30 s (1000)\n"
            "UDP (Teltonika over UDP: one datagram per packet, its ACK after commit):\n"
            "  --udp                      send each packet as a datagram to --connect instead,\n"
            "                             from 64 sockets per thread; one in flight per device.\n"
            "                             Not with the connection, fault and command options\n"
            "                             (--idle, --connect-*, --ack-timeout-s, --reconnect-*,\n"
            "                             --fragment, --slow, --malformed, --command-*)\n"
            "  --udp-retry-ms MS          re-send the same datagram (same ids) when its ACK\n"
            "                             has not come after MS ms, again and again (1000)\n"
            "faults:\n"
            "  --fragment P               write a packet in 2..4 pieces with probability P\n"
            "  --slow F                   fraction F of devices write a few bytes at a time, ~1 s\n"
            "  --malformed P              corrupt the CRC of a packet's first attempt with "
            "probability P\n"
            "  --reconnect-storm E:F      every E s a fraction F of devices drop and reconnect\n"
            "  --newest-first             records in descending time order\n"
            "  --seed S                   packets and choices (default 1)\n"
            "commands (Codec 12):\n"
            "  --command-reply TEXT       the answer to every command (default OK)\n"
            "  --command-log FILE         append 'wall_ns imei text' per command received\n"
            "output:\n"
            "  --progress                 one line a second on stderr (default: if a terminal)\n"
            "  --json FILE                the summary and a per-second timeline\n"
            "  --verify --pg CONNINFO     check every acknowledged record is stored exactly "
            "once\n"
            "exit status: 0 the run completed (and verified); 1 nothing connected, verify failed\n"
            "or the gateway acknowledged a malformed packet; 2 usage.\n");
}

const char *options_pacing_name(enum pacing pacing)
{
    switch (pacing) {
    case PACE_RATE:
        return "rate";
    case PACE_PERIOD:
        return "period";
    case PACE_IDLE:
        return "idle";
    case PACE_DRAIN:
        break;
    }
    return "drain";
}

/* ---------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, lo, hi, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static bool parse_storm(const char *s, double *every, double *fraction)
{
    char buf[64];
    const char *colon = strchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof buf)
        return false;
    memcpy(buf, s, (size_t)(colon - s));
    buf[colon - s] = '\0';
    return parse_double(buf, 0.1, 86400, every) && parse_double(colon + 1, 0, 1, fraction);
}

/* ---------------------------------------------------------------------------------------------
 * The options, in the usage text's groups
 * ------------------------------------------------------------------------------------------- */

enum {
    O_CONNECT = 256, /* the fleet */
    O_DEVICES,
    O_THREADS,
    O_SRC_IPS,
    O_SRC_BASE,
    O_IMEI_BASE,
    O_RECORDS,
    O_PACKET_BYTES,
    O_DRAIN, /* pacing */
    O_RATE,
    O_PERIOD,
    O_IDLE,
    O_DURATION,
    O_WARMUP,
    O_PACKETS,
    O_CONNECT_RATE, /* connections */
    O_RAMP,
    O_INFLIGHT,
    O_CONNECT_TIMEOUT,
    O_ACK_TIMEOUT,
    O_RECONNECT_MS,
    O_UDP, /* UDP */
    O_UDP_RETRY,
    O_FRAGMENT, /* faults */
    O_NEWEST,
    O_STORM,
    O_SLOW,
    O_MALFORMED,
    O_SEED,
    O_VERIFY, /* commands and output */
    O_PG,
    O_REPLY,
    O_CMDLOG,
    O_PROGRESS,
    O_JSON,
    O_HELP,
};
_Static_assert(O_HELP - O_CONNECT < 64, "a bit of options_parse's `given` per option");

static const struct option options_table[] = {
    {"connect", required_argument, 0, O_CONNECT},
    {"devices", required_argument, 0, O_DEVICES},
    {"threads", required_argument, 0, O_THREADS},
    {"src-ips", required_argument, 0, O_SRC_IPS},
    {"src-base", required_argument, 0, O_SRC_BASE},
    {"imei-base", required_argument, 0, O_IMEI_BASE},
    {"records", required_argument, 0, O_RECORDS},
    {"packet-bytes-max", required_argument, 0, O_PACKET_BYTES},
    {"drain", no_argument, 0, O_DRAIN},
    {"rate", required_argument, 0, O_RATE},
    {"period-s", required_argument, 0, O_PERIOD},
    {"idle", no_argument, 0, O_IDLE},
    {"duration-s", required_argument, 0, O_DURATION},
    {"warmup-s", required_argument, 0, O_WARMUP},
    {"packets", required_argument, 0, O_PACKETS},
    {"connect-rate", required_argument, 0, O_CONNECT_RATE},
    {"ramp-s", required_argument, 0, O_RAMP},
    {"connect-inflight", required_argument, 0, O_INFLIGHT},
    {"connect-timeout-s", required_argument, 0, O_CONNECT_TIMEOUT},
    {"ack-timeout-s", required_argument, 0, O_ACK_TIMEOUT},
    {"reconnect-ms", required_argument, 0, O_RECONNECT_MS},
    {"udp", no_argument, 0, O_UDP},
    {"udp-retry-ms", required_argument, 0, O_UDP_RETRY},
    {"fragment", required_argument, 0, O_FRAGMENT},
    {"newest-first", no_argument, 0, O_NEWEST},
    {"reconnect-storm", required_argument, 0, O_STORM},
    {"slow", required_argument, 0, O_SLOW},
    {"malformed", required_argument, 0, O_MALFORMED},
    {"seed", required_argument, 0, O_SEED},
    {"verify", no_argument, 0, O_VERIFY},
    {"pg", required_argument, 0, O_PG},
    {"command-reply", required_argument, 0, O_REPLY},
    {"command-log", required_argument, 0, O_CMDLOG},
    {"progress", no_argument, 0, O_PROGRESS},
    {"json", required_argument, 0, O_JSON},
    {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0},
};

/* What an option group made of one option. */
enum applied { APPLIED_NOT_MINE = -1, APPLIED_BAD = 0, APPLIED_OK = 1 };

static enum applied applied(bool ok)
{
    return ok ? APPLIED_OK : APPLIED_BAD;
}

/* The fleet: target, devices, threads, source addresses, IMEIs, packets. */
static enum applied apply_fleet(struct options *o, int opt, char *arg)
{
    switch (opt) {
    case O_CONNECT:
        o->target = arg;
        return APPLIED_OK;
    case O_DEVICES:
        return applied(parse_u32(arg, 1, VERIFY_DEVICES_MAX - 1, &o->devices));
    case O_THREADS:
        return applied(parse_u32(arg, 1, ENGINE_SHARDS_MAX, &o->threads));
    case O_SRC_IPS:
        return applied(parse_u32(arg, 0, 65536, &o->src_ips));
    case O_SRC_BASE:
        o->src_base = arg;
        return APPLIED_OK;
    case O_IMEI_BASE:
        return applied(
            parse_u64(arg, UINT64_C(100000000000000), UINT64_C(999999999999999), &o->imei_base));
    case O_RECORDS:
        return applied(parse_u32(arg, 1, AVL_RECORDS_MAX, &o->records));
    case O_PACKET_BYTES:
        return applied(parse_u32(arg, 256, PKTGEN_FRAME_BYTES_MAX, &o->packet_bytes_max));
    default:
        return APPLIED_NOT_MINE;
    }
}

/* Pacing and the run's length; *paced counts the pacings given. */
static enum applied apply_pacing(struct options *o, int opt, char *arg, int *paced)
{
    switch (opt) {
    case O_DRAIN:
        o->pacing = PACE_DRAIN;
        ++*paced;
        return APPLIED_OK;
    case O_RATE:
        o->pacing = PACE_RATE;
        ++*paced;
        return applied(parse_double(arg, 1e-3, 1e9, &o->rate));
    case O_IDLE:
        o->pacing = PACE_IDLE;
        ++*paced;
        return APPLIED_OK;
    case O_PERIOD:
        o->pacing = PACE_PERIOD;
        ++*paced;
        return applied(parse_double(arg, 1e-3, 86400, &o->period_s));
    case O_WARMUP:
        return applied(parse_double(arg, 0, 1e6, &o->warmup_s));
    case O_DURATION:
        return applied(parse_double(arg, 0, 1e7, &o->duration_s));
    case O_PACKETS:
        return applied(parse_u32(arg, 1, UINT32_MAX, &o->packets));
    default:
        return APPLIED_NOT_MINE;
    }
}

static enum applied apply_connections(struct options *o, int opt, char *arg)
{
    switch (opt) {
    case O_CONNECT_RATE:
        return applied(parse_double(arg, 0, 1e9, &o->connect_rate));
    case O_RAMP:
        return applied(parse_double(arg, 0, 86400, &o->ramp_s));
    case O_INFLIGHT:
        return applied(parse_u32(arg, 1, UINT32_MAX, &o->connect_inflight));
    case O_CONNECT_TIMEOUT:
        return applied(parse_double(arg, 0, 3600, &o->connect_timeout_s));
    case O_ACK_TIMEOUT:
        return applied(parse_double(arg, 0, 86400, &o->ack_timeout_s));
    case O_RECONNECT_MS:
        return applied(parse_u32(arg, 1, 600000, &o->reconnect_ms));
    case O_UDP:
        o->udp = true;
        return APPLIED_OK;
    case O_UDP_RETRY:
        return applied(parse_u32(arg, 1, 3600000, &o->udp_retry_ms));
    default:
        return APPLIED_NOT_MINE;
    }
}

static enum applied apply_faults(struct options *o, int opt, char *arg)
{
    switch (opt) {
    case O_FRAGMENT:
        return applied(parse_double(arg, 0, 1, &o->fragment));
    case O_NEWEST:
        o->newest_first = true;
        return APPLIED_OK;
    case O_STORM:
        return applied(parse_storm(arg, &o->storm_every_s, &o->storm_fraction));
    case O_SLOW:
        return applied(parse_double(arg, 0, 1, &o->slow));
    case O_MALFORMED:
        return applied(parse_double(arg, 0, 1, &o->malformed));
    case O_SEED:
        return applied(parse_u64(arg, 0, UINT64_MAX, &o->seed));
    default:
        return APPLIED_NOT_MINE;
    }
}

/* Commands (Codec 12), output and --verify. */
static enum applied apply_output(struct options *o, int opt, char *arg)
{
    switch (opt) {
    case O_VERIFY:
        o->verify = true;
        return APPLIED_OK;
    case O_PG:
        o->pg = arg;
        return APPLIED_OK;
    case O_REPLY:
        o->command_reply = arg;
        return applied(strlen(arg) <= OPTIONS_REPLY_TEXT_MAX);
    case O_CMDLOG:
        o->command_log = arg;
        return APPLIED_OK;
    case O_PROGRESS:
        o->progress = true;
        return APPLIED_OK;
    case O_JSON:
        o->json = arg;
        return APPLIED_OK;
    default:
        return APPLIED_NOT_MINE;
    }
}

static enum applied apply_option(struct options *o, int opt, char *arg, int *paced)
{
    enum applied r = apply_fleet(o, opt, arg);
    if (r == APPLIED_NOT_MINE)
        r = apply_pacing(o, opt, arg, paced);
    if (r == APPLIED_NOT_MINE)
        r = apply_connections(o, opt, arg);
    if (r == APPLIED_NOT_MINE)
        r = apply_faults(o, opt, arg);
    if (r == APPLIED_NOT_MINE)
        r = apply_output(o, opt, arg);
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * The command line
 * ------------------------------------------------------------------------------------------- */

static void options_defaults(struct options *o)
{
    *o = (struct options){
        .target = "127.0.0.1:5027",
        .devices = 100,
        .src_ips = UINT32_MAX,
        .src_base = "127.0.0.1",
        .imei_base = UINT64_C(350000000000000),
        .records = 10,
        .pacing = PACE_DRAIN,
        .duration_s = 30,
        .connect_inflight = 4096,
        .connect_timeout_s = 10,
        .ack_timeout_s = 60,
        .reconnect_ms = 1000,
        .udp_retry_ms = 1000,
        .seed = 1,
        .command_reply = "OK",
        .progress = isatty(STDERR_FILENO),
    };
}

static uint64_t given_bit(int opt)
{
    return UINT64_C(1) << (opt - O_CONNECT);
}

/* The transport: with --udp no option of TCP connections (what they do has no meaning for a
 * datagram: a connection's life, its faults, commands, which come only over TCP); without it no
 * --udp-retry-ms. `given` has given_bit(opt) for each option on the command line. */
static int options_check_udp(const struct options *o, uint64_t given)
{
    static const int tcp_only[] = {
        O_IDLE,     O_CONNECT_RATE, O_INFLIGHT, O_CONNECT_TIMEOUT, O_ACK_TIMEOUT, O_RECONNECT_MS,
        O_FRAGMENT, O_STORM,        O_SLOW,     O_MALFORMED,       O_REPLY,       O_CMDLOG,
    };
    if (!o->udp) {
        if (given & given_bit(O_UDP_RETRY)) {
            fprintf(stderr, "avlgate-loadgen: --udp-retry-ms needs --udp\n");
            return 2;
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof tcp_only / sizeof tcp_only[0]; i++) {
        if (!(given & given_bit(tcp_only[i])))
            continue;
        const char *name = "?";
        for (const struct option *t = options_table; t->name; t++)
            if (t->val == tcp_only[i])
                name = t->name;
        fprintf(stderr, "avlgate-loadgen: --%s is for TCP connections, not with --udp%s\n", name,
                tcp_only[i] == O_ACK_TIMEOUT ? " (there: --udp-retry-ms)" : "");
        return 2;
    }
    return 0;
}

/* What no single option can check: leftovers, pacings, --verify's --pg, the IMEI range, the
 * options of the other transport. */
static int options_check(int argc, char **argv, const struct options *o, int paced, uint64_t given)
{
    if (optind < argc) {
        fprintf(stderr, "avlgate-loadgen: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    if (paced > 1) {
        fprintf(stderr, "avlgate-loadgen: give one of --drain, --rate, --period-s, --idle\n");
        return 2;
    }
    if (o->verify && !o->pg) {
        fprintf(stderr, "avlgate-loadgen: --verify needs --pg CONNINFO\n");
        return 2;
    }
    if (o->imei_base + o->devices - 1 > UINT64_C(999999999999999)) {
        fprintf(stderr, "avlgate-loadgen: --imei-base + --devices leaves 15 digits\n");
        return 2;
    }
    return options_check_udp(o, given);
}

int options_parse(int argc, char **argv, struct options *o)
{
    options_defaults(o);
    int paced = 0, opt, which = 0;
    uint64_t given = 0;
    while ((opt = getopt_long(argc, argv, "", options_table, &which)) != -1) {
        if (opt == O_HELP) {
            options_usage(stdout);
            exit(0);
        }
        enum applied r = apply_option(o, opt, optarg, &paced);
        if (r == APPLIED_NOT_MINE) {
            options_usage(stderr); /* an unknown option, or one without its value */
            return 2;
        }
        if (r == APPLIED_BAD) {
            fprintf(stderr, "avlgate-loadgen: bad value for --%s: %s\n", options_table[which].name,
                    optarg);
            return 2;
        }
        given |= given_bit(opt);
    }
    return options_check(argc, argv, o, paced, given);
}
