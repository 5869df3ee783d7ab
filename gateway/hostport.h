/* hostport.h — a listening address from its text, and whether a port is free: what `avlgate
 * run` and avlgate-floor both check before their shards bind with SO_REUSEPORT. Pure but for
 * getaddrinfo (numeric only: no lookup) and one socket; any thread. */
#ifndef AVLGATE_GATEWAY_HOSTPORT_H
#define AVLGATE_GATEWAY_HOSTPORT_H

#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* HOST:PORT (a numeric host, empty for any, [v6] in brackets; port not 0: every shard would get
 * an ephemeral port of its own, none of them said) into *ss. Returns 0 or -1. */
int hostport_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* SO_REUSEPORT would let the shards share the port with another process (the kernel spreading
 * devices over both) instead of failing: a plain bind of a socket of `type` first says whether
 * anything holds the port. Returns 0 or -errno. */
int hostport_free(const struct sockaddr_storage *ss, socklen_t len, int type);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_HOSTPORT_H */
