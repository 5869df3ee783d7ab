/* log.h — the gateway's log lines: logfmt on stderr, one event per line.
 *
 *   log_line(LOG_WARN, "database link down", "shard=%u link=%s", id, name);
 *   -> level=warn msg="database link down" shard=0 link=data
 *
 * A line is formatted into a buffer and written with one call, so the lines of different
 * threads never interleave (a line longer than LOG_LINE_BYTES is cut). msg is a fixed text
 * (never a peer's or a server's words); those go into a field through logfmt_q. Any thread. */
#ifndef AVLGATE_GATEWAY_LOG_H
#define AVLGATE_GATEWAY_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "gateway/ratelimit.h"

#ifdef __cplusplus
extern "C" {
#endif

enum log_level { LOG_INFO, LOG_WARN, LOG_ERROR };
enum { LOG_LINE_BYTES = 2048 };

/* Writes `level=L msg="msg"`, then the fields (fmt; NULL or "" for none), then a newline. */
void log_line(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* log_line for a line whose cause can repeat at traffic rate: written when the limiter allows
 * it (ratelimit.h), with `suppressed=N` appended; otherwise counted as held back. */
void log_limited(struct ratelimit *rl, uint64_t now_ms, enum log_level level, const char *msg,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Text from elsewhere (a server's error message, a peer's reply) as one logfmt value: inside
 * the caller's double quotes, with '"' and '\' escaped and line breaks and tabs turned into
 * spaces, so one event stays one line. Cut to the buffer (cap >= 1). Returns buf. */
static inline const char *logfmt_q(char *buf, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 2 < cap; s++) {
        char c = *s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = c;
        } else {
            buf[o++] = (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
        }
    }
    while (o > 0 && buf[o - 1] == ' ')
        o--; /* the trailing newline of a libpq message */
    buf[o] = '\0';
    return buf;
}

/* The IP address of a (AF_INET or AF_INET6) in its text form, for a field: "unknown" when it has
 * none. Returns buf (cap >= INET6_ADDRSTRLEN for any address). */
const char *logfmt_ip(char *buf, size_t cap, const struct sockaddr_storage *a);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_LOG_H */
