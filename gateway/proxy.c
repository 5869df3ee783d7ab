/* proxy.c — the PROXY protocol on a gateway shard's connections (proxy.h). The shard's thread
 * only. */
#include "gateway/proxy.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/zmap.h"
#include "shard/cidr.h"

const char *proxy_refused_name(unsigned reason)
{
    if (reason == PROXY_REFUSED_SOURCE)
        return "source_not_allowed";
    return proxyhdr_result_name(-(int)reason);
}

/* The least total of bytes that could complete the header p[0 .. len) starts. */
static uint32_t header_need(const uint8_t *p, size_t len)
{
    if (len >= PROXYHDR_V2_FIXED_BYTES && p[0] == '\r')
        return PROXYHDR_V2_FIXED_BYTES + ((uint32_t)p[14] << 8 | p[15]);
    if (len > 0 && p[0] == '\r')
        return PROXYHDR_V2_FIXED_BYTES;
    return (uint32_t)len + 1; /* v1: its CRLF may be the next byte */
}

static void addr_from(struct peer_addr *a, const struct sockaddr_storage *ss)
{
    memset(a, 0, sizeof *a);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        a->family = AF_INET;
        a->port = in->sin_port;
        memcpy(a->ip, &in->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        a->family = AF_INET6;
        a->port = in6->sin6_port;
        memcpy(a->ip, &in6->sin6_addr, 16);
    }
}

static void addr_to(const struct peer_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = a->port;
        memcpy(&in->sin_addr, a->ip, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = a->port;
        memcpy(&in6->sin6_addr, a->ip, 16);
    }
}

/* A connection refused before its handshake: counted, and said (rate-limited) with the address
 * it came from (the balancer's, or whoever connected straight to the port). */
static void refused(struct shard *s, uint32_t slot, uint32_t gen, unsigned reason)
{
    stat_add(&s->st->proxy_refused[reason], 1);
    struct sockaddr_storage ss = {.ss_family = AF_UNSPEC};
    socklen_t len = 0;
    (void)engine_peer_addr(s->e, slot, gen, &ss, &len); /* none: "unknown" */
    char ip[INET6_ADDRSTRLEN];
    log_limited(&s->proxy->log_refused, shard_now_ms(s), LOG_WARN,
                "connection refused before its handshake (--proxy-protocol)",
                "shard=%u reason=%s peer=%s", s->id, proxy_refused_name(reason),
                logfmt_ip(ip, sizeof ip, &ss));
}

bool proxy_on_accept(struct shard *s, uint32_t slot, uint32_t gen)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    s->proxy->addrs[slot].family = 0;
    if (engine_peer_addr(s->e, slot, gen, &ss, &len) == 0 &&
        cidr_match(s->cfg->proxy_from, (const struct sockaddr *)&ss))
        return true;
    refused(s, slot, gen, PROXY_REFUSED_SOURCE);
    return false;
}

int proxy_on_header(struct shard *s, uint32_t slot, uint32_t gen, const uint8_t *p, size_t len,
                    uint32_t *need)
{
    struct proxyhdr h;
    int rc = proxyhdr_parse(p, len, &h);
    if (rc == PROXYHDR_NEED_MORE) {
        *need = header_need(p, len);
        return 0;
    }
    if (rc < 0) {
        refused(s, slot, gen, (unsigned)-rc);
        return rc;
    }
    struct peer_addr *a = &s->proxy->addrs[slot];
    a->family = 0;
    if (h.local || (h.src.ss_family != AF_INET && h.src.ss_family != AF_INET6)) {
        stat_add(&s->st->proxy_local, 1);
        return rc;
    }
    addr_from(a, &h.src);
    stat_add(&s->st->proxy_proxied, 1);
    return rc;
}

void proxy_before_handoff(struct shard *s, uint32_t slot, unsigned to, uint64_t imei)
{
    struct proxy_mail m = {.tag = PROXY_MAIL_TAG, .imei = imei, .addr = s->proxy->addrs[slot]};
    uint8_t msg[ENGINE_MAIL_BYTES] = {0};
    memcpy(msg, &m, sizeof m);
    (void)engine_mail(s->e, to, msg); /* full: the owner counts the address as lost */
}

void proxy_on_mail(struct shard *s, const struct proxy_mail *m)
{
    struct proxy *px = s->proxy;
    if (!px)
        return;
    uint32_t i = px->transit_next++ % PROXY_TRANSIT;
    struct proxy_mail *t = &px->transit[i];
    if (t->tag == PROXY_MAIL_TAG && imap_get(&px->transit_map, t->imei) == (int64_t)i)
        imap_del(&px->transit_map, t->imei); /* its handoff never came */
    *t = *m;
    imap_put(&px->transit_map, m->imei, i);
}

void proxy_on_handed_in(struct shard *s, uint32_t slot, uint64_t imei)
{
    struct proxy *px = s->proxy;
    int64_t i = imap_get(&px->transit_map, imei);
    if (i < 0) {
        px->addrs[slot].family = 0;
        stat_add(&s->st->proxy_addr_lost, 1);
        return;
    }
    px->addrs[slot] = px->transit[i].addr;
    px->transit[i].tag = 0;
    imap_del(&px->transit_map, imei);
}

bool proxy_peer_of(struct shard *s, uint32_t slot, uint32_t gen, struct sockaddr_storage *out)
{
    if (s->proxy && slot < s->cfg->conns_max && s->proxy->addrs[slot].family) {
        addr_to(&s->proxy->addrs[slot], out);
        return true;
    }
    socklen_t len = 0;
    return engine_peer_addr(s->e, slot, gen, out, &len) == 0;
}

int proxy_setup(struct shard *s, char *err, size_t cap)
{
    s->proxy = NULL;
    if (!s->cfg->proxy_protocol)
        return 0;
    struct proxy *px = calloc(1, sizeof *px);
    s->proxy = px;
    if (px) {
        px->addrs = zmap((size_t)s->cfg->conns_max * sizeof *px->addrs);
        px->transit_map.mask = 2 * PROXY_TRANSIT - 1;
        px->transit_map.keys = calloc(2 * PROXY_TRANSIT, sizeof *px->transit_map.keys);
        px->transit_map.slots = calloc(2 * PROXY_TRANSIT, sizeof *px->transit_map.slots);
    }
    if (!px || !px->addrs || !px->transit_map.keys || !px->transit_map.slots) {
        snprintf(err, cap, "shard %u: out of memory for the PROXY protocol", s->id);
        return -ENOMEM;
    }
    return 0;
}

void proxy_teardown(struct shard *s)
{
    struct proxy *px = s->proxy;
    if (!px)
        return;
    zunmap(px->addrs, (size_t)s->cfg->conns_max * sizeof *px->addrs);
    free(px->transit_map.keys);
    free(px->transit_map.slots);
    free(px);
    s->proxy = NULL;
}
