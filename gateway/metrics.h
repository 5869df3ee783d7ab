/* metrics.h — the SRE endpoint: GET /metrics (Prometheus text format 0.0.4) and GET /healthz.
 *
 * Served from shard 0's ring: the listening socket and each HTTP connection are ordinary
 * descriptors polled with engine_poll, so there is no thread and no thread per request. A
 * scrape reads every shard's counters (shard/stat.h: each written by its own shard, read with
 * relaxed loads) and the engines' counters, and sums nothing it does not say it sums: series
 * carry a `shard` label, and Prometheus sums them.
 *
 * /healthz is 200 "ok" when every shard is listening and its database data and control links are
 * up (a handshake waits for a state load on the control link), else 503 with the reasons, one
 * per line. A draining instance (SIGTERM) stops listening first: a balancer's check then marks
 * it down.
 *
 * One request per connection (Connection: close). At most METRICS_CONNS_MAX connections at once:
 * when every slot is busy, a newcomer takes the slot of the oldest connection that has not sent
 * a whole request yet (else of the oldest whose response is not yet taken), so idle or slow
 * clients never keep a probe out. A connection has REQUEST_TIMEOUT_MS to send its request and
 * then RESPONSE_TIMEOUT_MS for its response to be taken; the socket's send buffer is bounded,
 * so a client that does not read holds the rest of its response here, where the timeout and
 * the eviction see it. Every close is counted by reason
 * (avlgate_metrics_connections_closed_total). */
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

enum {
    METRICS_CONNS_MAX = 32,
    METRICS_REQUEST_BYTES_MAX = 4096, /* a request head (request line and headers) */
};

/* ---- the request reader: bytes in, a verdict out; no I/O ---------------------------------- */

enum {
    METRICS_REQ_NEED_MORE = 0,
    METRICS_REQ_E_TOO_LARGE = -1, /* no end of the head in METRICS_REQUEST_BYTES_MAX bytes */
    METRICS_REQ_E_BAD = -2,       /* a NUL byte in the head, or a request line without a target */
};

enum metrics_method { METRICS_METHOD_OTHER, METRICS_METHOD_GET, METRICS_METHOD_HEAD };
enum metrics_target { METRICS_TARGET_OTHER, METRICS_TARGET_METRICS, METRICS_TARGET_HEALTHZ };

/* A request head's request line: `METHOD SP TARGET [SP VERSION]`. */
struct metrics_request {
    enum metrics_method method; /* GET and HEAD only: methods are case-sensitive */
    enum metrics_target target; /* the path, the query (from '?') ignored */
    const char *path;           /* into the caller's buffer: the target up to '?' */
    size_t path_len;
};

/* Reads the request head at the start of buf[0 .. len): it ends at the first empty line (LF LF
 * or LF CR LF, so CRLF and bare-LF line ends both work). Returns the head's length in bytes
 * (> 0) with req filled, METRICS_REQ_NEED_MORE when the head has not ended yet, or
 * METRICS_REQ_E_*. Reads at most METRICS_REQUEST_BYTES_MAX bytes. The verdict on a prefix of
 * buf is need-more or the verdict on buf: bytes that arrive later never change it. Pure. */
int metrics_request_parse(const char *buf, size_t len, struct metrics_request *req);

/* The name of a METRICS_REQ_E_* code ("too_large", "bad_request"); "unknown_error" else. */
const char *metrics_request_strerror(int rc);

/* ---- the server --------------------------------------------------------------------------- */

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
