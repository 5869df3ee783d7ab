/* metrics.h — the SRE endpoint: GET /metrics (Prometheus text format 0.0.4) and GET /healthz.
 *
 * Served from shard 0's ring: the listening socket and each HTTP connection are ordinary
 * descriptors polled with engine_poll, so there is no thread and no thread per request. A
 * scrape reads every shard's counters (shard/stat.h: each written by its own shard, read with
 * relaxed loads) and the engines' counters, and sums nothing it does not say it sums: series
 * carry a `shard` label, and Prometheus sums them.
 *
 * /healthz is 200 "ok" when every shard is listening and its database data link is up, else
 * 503 with the reasons, one per line.
 *
 * At most METRICS_CONNS_MAX HTTP connections at once (more wait in the listen backlog); a
 * connection that has not sent its request within 5 s is closed; one request per connection
 * (Connection: close). */
#ifndef AVLGATE_GATEWAY_METRICS_H
#define AVLGATE_GATEWAY_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

struct engine;
struct ingest_shared;
struct metrics;

enum { METRICS_CONNS_MAX = 8 };

/* Binds and listens on addr (non-blocking, SO_REUSEADDR): at start-up, so that a port in use
 * is a start-up error. Returns the descriptor or -errno with a message in err. */
int metrics_listen(const struct sockaddr_storage *addr, socklen_t len, char *err, size_t cap);

/* The server on shard 0's engine over listen_fd (owned from here on). NULL: out of memory. */
struct metrics *metrics_create(struct ingest_shared *sh, struct engine *e, int listen_fd);
/* Closes the listening socket and every HTTP connection. NULL is a no-op. */
void metrics_destroy(struct metrics *m);
/* A poll whose tag's owner is POLL_METRICS (gateway/tags.h) fired. */
void metrics_on_poll(struct metrics *m, uint64_t tag, int revents);
/* Arms what is not armed, closes connections past their deadline. Every loop turn. */
void metrics_tick(struct metrics *m, uint64_t now_ns);

/* Before the shards run (the database does not answer yet): answers every connection waiting
 * on listen_fd with 503 and `starting: why`, so probes see a start-up, not a hang. Returns
 * when none is waiting. Main thread, at start-up only. */
void metrics_answer_starting(int listen_fd, const char *why);

/* The exposition of every shard's counters into buf (cap bytes, NUL-terminated when cap > 0).
 * Returns the length of the whole text: it is complete in buf only when that is below cap
 * (the shards keep counting: render again with room to spare when it is not). */
size_t metrics_render(const struct ingest_shared *sh, char *buf, size_t cap);
/* The /healthz body into buf; returns its length and sets *ok. */
size_t metrics_health(const struct ingest_shared *sh, char *buf, size_t cap, int *ok);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_METRICS_H */
