/* burst.c — avlgate-burst: a small simulated fleet for the demo and for quick checks.
 *
 * N devices connect, send the IMEI handshake, then send K packets of R realistic records each
 * (codecs 8, 8E and 16 in turn, from loadgen/packetgen.c), one packet in flight per device
 * as real trackers do: the next packet only after the ACK of the previous one, which must
 * carry its record count. It prints what was acknowledged and the ACK latency, and exits 0
 * only when every packet was acknowledged. Single-threaded, poll()-driven, bounded by
 * --timeout-s. The full load generator (100k devices on the shard engine, reconnects,
 * pacing, HDR histograms) is avlgate-loadgen; this is its smallest useful subset. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "codec/bytes.h"
#include "loadgen/packetgen.h"

enum dev_phase { PH_HANDSHAKE, PH_PACKET, PH_DONE, PH_FAILED };

struct dev {
    int fd;
    enum dev_phase phase;
    struct pktgen gen;
    uint8_t *out; /* bytes to send */
    size_t out_len, out_off;
    uint8_t in[4];
    size_t in_len, in_want;
    uint32_t records; /* of the packet in flight */
    unsigned sent;    /* packets acknowledged */
    uint64_t t0_ns;
};

static uint64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: avlgate-burst [--connect HOST:PORT] [--devices N] [--packets K]\n"
               "                     [--records R] [--seed S] [--timeout-s T]\n"
               "  defaults: 127.0.0.1:5027, 50 devices, 20 packets, 10 records, seed 1, 60 s\n");
}

static struct pktgen_packet scratch_pkt;

/* Encodes the device's next packet into its output buffer. */
static int next_packet(struct dev *d, unsigned records, unsigned index)
{
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    static uint8_t frame[PKTGEN_FRAME_BYTES_MAX];
    int n = pktgen_packet_tcp(&d->gen, PKTGEN_REALISTIC, codecs[index % 3], records, &scratch_pkt,
                              frame, sizeof frame);
    if (n < 0)
        return n;
    free(d->out);
    d->out = malloc((size_t)n);
    if (!d->out)
        return -ENOMEM;
    memcpy(d->out, frame, (size_t)n);
    d->out_len = (size_t)n;
    d->out_off = 0;
    d->records = scratch_pkt.records_len;
    d->in_len = 0;
    d->in_want = AVL_TCP_ACK_BYTES;
    d->t0_ns = clock_ns();
    return 0;
}

/* What the command line asked for. */
struct burst {
    const char *target;
    unsigned devices, packets, records, timeout_s;
    uint64_t seed;
};

/* The fleet while it runs. */
struct run {
    struct dev *devs;
    struct pollfd *pfds;
    uint64_t *lat_ns; /* one per packet acknowledged */
    unsigned lat_len;
    unsigned active, failed; /* devices still at work; devices that failed */
    uint64_t records_acked;
};

/* Returns 0, or 2 after a message (usage error); --help exits 0 after the usage. */
static int parse_args(int argc, char **argv, struct burst *b)
{
    *b = (struct burst){.target = "127.0.0.1:5027",
                        .devices = 50,
                        .packets = 20,
                        .records = 10,
                        .timeout_s = 60,
                        .seed = 1};
    static const struct option opts[] = {
        {"connect", required_argument, 0, 'c'}, {"devices", required_argument, 0, 'd'},
        {"packets", required_argument, 0, 'p'}, {"records", required_argument, 0, 'r'},
        {"seed", required_argument, 0, 's'},    {"timeout-s", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            b->target = optarg;
            break;
        case 'd':
            b->devices = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            b->packets = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            b->records = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 's':
            b->seed = strtoull(optarg, NULL, 10);
            break;
        case 't':
            b->timeout_s = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (b->devices == 0 || b->devices > 20000 || b->records == 0 || b->records > AVL_RECORDS_MAX) {
        fprintf(stderr, "avlgate-burst: --devices 1..20000 and --records 1..255\n");
        return 2;
    }
    return 0;
}

/* Resolves --connect HOST:PORT. Returns 0, or 2 after a message. */
static int resolve(const char *target, struct addrinfo **ai)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host) {
        fprintf(stderr, "avlgate-burst: bad --connect %s\n", target);
        return 2;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (getaddrinfo(host, colon + 1, &hints, ai) != 0) {
        fprintf(stderr, "avlgate-burst: cannot resolve %s\n", target);
        return 2;
    }
    return 0;
}

/* Connects device i (blocking) and queues its handshake. False, after a message, when it
 * could not connect. */
static bool dev_open(struct dev *d, unsigned i, const struct burst *b, const struct addrinfo *ai)
{
    pktgen_init(&d->gen, b->seed * 1000003u + i);
    d->fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (d->fd < 0 || connect(d->fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        fprintf(stderr, "avlgate-burst: connect %s: %s\n", b->target, strerror(errno));
        d->phase = PH_FAILED;
        return false;
    }
    int one = 1;
    setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(d->fd, F_SETFL, O_NONBLOCK);
    static uint8_t hs[2 + AVL_IMEI_DIGITS_MAX];
    int n = avl_encode_imei(hs, sizeof hs, d->gen.imei);
    d->out = malloc((size_t)n);
    memcpy(d->out, hs, (size_t)n);
    d->out_len = (size_t)n;
    d->in_want = 1;
    d->phase = PH_HANDSHAKE;
    return true;
}

enum step { STEP_MORE, STEP_DONE, STEP_FAILED };

/* Device i is ready (poll): writes what it has pending, or reads the handshake's answer or an
 * ACK (which must carry the packet's record count) and makes its next packet. */
static enum step dev_step(struct run *r, const struct burst *b, unsigned i)
{
    struct dev *d = &r->devs[i];
    if (d->out_off < d->out_len) {
        ssize_t n = send(d->fd, d->out + d->out_off, d->out_len - d->out_off, MSG_NOSIGNAL);
        if (n > 0)
            d->out_off += (size_t)n;
        else if (n < 0 && errno != EAGAIN)
            return STEP_FAILED;
        return STEP_MORE;
    }
    ssize_t n = recv(d->fd, d->in + d->in_len, d->in_want - d->in_len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN))
        return STEP_FAILED;
    if (n < 0)
        return STEP_MORE;
    d->in_len += (size_t)n;
    if (d->in_len < d->in_want)
        return STEP_MORE;
    if (d->phase == PH_HANDSHAKE) {
        if (d->in[0] != 0x01)
            return STEP_FAILED;
        d->phase = PH_PACKET;
    } else {
        uint32_t ack = be32(d->in);
        if (ack != d->records)
            return STEP_FAILED;
        r->lat_ns[r->lat_len++] = clock_ns() - d->t0_ns;
        r->records_acked += ack;
        d->sent++;
    }
    if (d->sent == b->packets)
        return STEP_DONE;
    return next_packet(d, b->records, d->sent + i) == 0 ? STEP_MORE : STEP_FAILED;
}

/* One poll over the devices at work and a step of each ready one. False when poll failed. */
static bool poll_round(struct run *r, const struct burst *b)
{
    for (unsigned i = 0; i < b->devices; i++) {
        struct dev *d = &r->devs[i];
        r->pfds[i].fd = (d->phase == PH_HANDSHAKE || d->phase == PH_PACKET) ? d->fd : -1;
        r->pfds[i].events = d->out_off < d->out_len ? POLLOUT : POLLIN;
    }
    if (poll(r->pfds, b->devices, 100) < 0 && errno != EINTR)
        return false;
    for (unsigned i = 0; i < b->devices; i++) {
        struct dev *d = &r->devs[i];
        if (r->pfds[i].fd < 0 || !r->pfds[i].revents)
            continue;
        enum step step = dev_step(r, b, i);
        if (step == STEP_MORE)
            continue;
        d->phase = step == STEP_DONE ? PH_DONE : PH_FAILED;
        close(d->fd);
        r->active--;
        if (step == STEP_FAILED)
            r->failed++;
    }
    return true;
}

static void print_results(struct run *r, const struct burst *b, uint64_t start_ns)
{
    double elapsed_s = (double)(clock_ns() - start_ns) / 1e9;
    qsort(r->lat_ns, r->lat_len, sizeof *r->lat_ns, cmp_u64);
    unsigned lat_len = r->lat_len;
    double p50 = lat_len ? (double)r->lat_ns[lat_len / 2] / 1e6 : 0;
    double p99 = lat_len ? (double)r->lat_ns[(size_t)((double)lat_len * 0.99)] / 1e6 : 0;
    unsigned timed_out = r->active;
    printf("devices=%u packets_acked=%u/%u records_acked=%llu ack_p50_ms=%.2f ack_p99_ms=%.2f "
           "failed_devices=%u timed_out_devices=%u elapsed_s=%.2f records_per_s=%.0f\n",
           b->devices, lat_len, b->devices * b->packets, (unsigned long long)r->records_acked, p50,
           p99, r->failed, timed_out, elapsed_s,
           elapsed_s > 0 ? (double)r->records_acked / elapsed_s : 0);
}

int main(int argc, char **argv)
{
    struct burst b;
    struct addrinfo *ai;
    int rc = parse_args(argc, argv, &b);
    if (rc == 0)
        rc = resolve(b.target, &ai);
    if (rc)
        return rc;
    struct run r = {
        .devs = calloc(b.devices, sizeof *r.devs),
        .pfds = calloc(b.devices, sizeof *r.pfds),
        .lat_ns = calloc((size_t)b.devices * b.packets + 1, sizeof *r.lat_ns),
    };
    if (!r.devs || !r.pfds || !r.lat_ns) {
        fprintf(stderr, "avlgate-burst: out of memory\n");
        return 1;
    }
    uint64_t start_ns = clock_ns(), deadline = start_ns + (uint64_t)b.timeout_s * 1000000000u;
    for (unsigned i = 0; i < b.devices; i++)
        if (!dev_open(&r.devs[i], i, &b, ai))
            r.failed++;
    freeaddrinfo(ai);

    r.active = b.devices - r.failed;
    while (r.active > 0 && clock_ns() < deadline)
        if (!poll_round(&r, &b))
            break;
    print_results(&r, &b, start_ns);
    bool all_acked = r.lat_len == b.devices * b.packets;
    for (unsigned i = 0; i < b.devices; i++)
        free(r.devs[i].out);
    free(r.devs);
    free(r.pfds);
    free(r.lat_ns);
    return all_acked ? 0 : 1;
}
