/* burst.c — avlgate-burst: a small simulated fleet for the demo and for quick checks.
 *
 * N devices connect, send the IMEI handshake, then send K packets of R realistic records each
 * (codecs 8, 8E and 16 in turn, from loadgen/packetgen.c), one packet in flight per device
 * as real trackers do: the next packet only after the ACK of the previous one, which must
 * carry its record count. It prints what was acknowledged and the ACK latency, and exits 0
 * only when every packet was acknowledged. Single-threaded, poll()-driven, bounded by
 * --timeout-s. The full load generator (100k devices on the shard engine, reconnects,
 * pacing, HDR histograms) is the loadgen issue's; this is its smallest useful subset. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
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

int main(int argc, char **argv)
{
    const char *target = "127.0.0.1:5027";
    unsigned devices = 50, packets = 20, records = 10, timeout_s = 60;
    uint64_t seed = 1;
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
            target = optarg;
            break;
        case 'd':
            devices = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            packets = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            records = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 't':
            timeout_s = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (devices == 0 || devices > 20000 || records == 0 || records > AVL_RECORDS_MAX) {
        fprintf(stderr, "avlgate-burst: --devices 1..20000 and --records 1..255\n");
        return 2;
    }
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host) {
        fprintf(stderr, "avlgate-burst: bad --connect %s\n", target);
        return 2;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) {
        fprintf(stderr, "avlgate-burst: cannot resolve %s\n", target);
        return 2;
    }

    struct dev *devs = calloc(devices, sizeof *devs);
    struct pollfd *pfds = calloc(devices, sizeof *pfds);
    uint64_t *lat_ns = calloc((size_t)devices * packets + 1, sizeof *lat_ns);
    if (!devs || !pfds || !lat_ns) {
        fprintf(stderr, "avlgate-burst: out of memory\n");
        return 1;
    }
    uint64_t start_ns = clock_ns(), deadline = start_ns + (uint64_t)timeout_s * 1000000000u;
    unsigned failed = 0;
    for (unsigned i = 0; i < devices; i++) {
        struct dev *d = &devs[i];
        pktgen_init(&d->gen, seed * 1000003u + i);
        d->fd = socket(ai->ai_family, SOCK_STREAM, 0);
        if (d->fd < 0 || connect(d->fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            fprintf(stderr, "avlgate-burst: connect %s: %s\n", target, strerror(errno));
            d->phase = PH_FAILED;
            failed++;
            continue;
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
    }
    freeaddrinfo(ai);

    unsigned active = devices - failed, lat_len = 0;
    uint64_t records_acked = 0;
    while (active > 0 && clock_ns() < deadline) {
        for (unsigned i = 0; i < devices; i++) {
            struct dev *d = &devs[i];
            pfds[i].fd = (d->phase == PH_HANDSHAKE || d->phase == PH_PACKET) ? d->fd : -1;
            pfds[i].events = d->out_off < d->out_len ? POLLOUT : POLLIN;
        }
        if (poll(pfds, devices, 100) < 0 && errno != EINTR)
            break;
        for (unsigned i = 0; i < devices; i++) {
            struct dev *d = &devs[i];
            if (pfds[i].fd < 0 || !pfds[i].revents)
                continue;
            if (d->out_off < d->out_len) {
                ssize_t n = send(d->fd, d->out + d->out_off, d->out_len - d->out_off, MSG_NOSIGNAL);
                if (n > 0)
                    d->out_off += (size_t)n;
                else if (n < 0 && errno != EAGAIN)
                    goto fail;
                continue;
            }
            ssize_t n = recv(d->fd, d->in + d->in_len, d->in_want - d->in_len, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN))
                goto fail;
            if (n < 0)
                continue;
            d->in_len += (size_t)n;
            if (d->in_len < d->in_want)
                continue;
            if (d->phase == PH_HANDSHAKE) {
                if (d->in[0] != 0x01)
                    goto fail;
                d->phase = PH_PACKET;
            } else {
                uint32_t ack = (uint32_t)d->in[0] << 24 | (uint32_t)d->in[1] << 16 |
                               (uint32_t)d->in[2] << 8 | d->in[3];
                if (ack != d->records)
                    goto fail;
                lat_ns[lat_len++] = clock_ns() - d->t0_ns;
                records_acked += ack;
                d->sent++;
            }
            if (d->sent == packets) {
                d->phase = PH_DONE;
                close(d->fd);
                active--;
                continue;
            }
            if (next_packet(d, records, d->sent + i) != 0)
                goto fail;
            continue;
        fail:
            d->phase = PH_FAILED;
            close(d->fd);
            failed++;
            active--;
        }
    }
    double elapsed_s = (double)(clock_ns() - start_ns) / 1e9;
    qsort(lat_ns, lat_len, sizeof *lat_ns, cmp_u64);
    double p50 = lat_len ? (double)lat_ns[lat_len / 2] / 1e6 : 0;
    double p99 = lat_len ? (double)lat_ns[(size_t)((double)lat_len * 0.99)] / 1e6 : 0;
    unsigned timed_out = active;
    printf("devices=%u packets_acked=%u/%u records_acked=%llu ack_p50_ms=%.2f ack_p99_ms=%.2f "
           "failed_devices=%u timed_out_devices=%u elapsed_s=%.2f records_per_s=%.0f\n",
           devices, lat_len, devices * packets, (unsigned long long)records_acked, p50, p99, failed,
           timed_out, elapsed_s, elapsed_s > 0 ? (double)records_acked / elapsed_s : 0);
    for (unsigned i = 0; i < devices; i++)
        free(devs[i].out);
    free(devs);
    free(pfds);
    free(lat_ns);
    return lat_len == devices * packets ? 0 : 1;
}
