/* log.c — log_line and log_limited (log.h): one formatted line, one write. Any thread. */
#include "gateway/log.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>

static const char *const level_names[] = {"info", "warn", "error"};

/* Formats the line and writes it whole; suppressed < 0: no such field. */
__attribute__((format(printf, 4, 0))) static void
emit(enum log_level level, const char *msg, int64_t suppressed, const char *fmt, va_list ap)
{
    char buf[LOG_LINE_BYTES];
    size_t cap = sizeof buf - 1; /* room for the newline */
    int n = snprintf(buf, cap, "level=%s msg=\"%s\"", level_names[level], msg);
    size_t o = n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
    if (fmt && *fmt && o + 1 < cap) {
        buf[o++] = ' ';
        n = vsnprintf(buf + o, cap - o, fmt, ap);
        o = n < 0 ? o : (o + (size_t)n < cap ? o + (size_t)n : cap - 1);
    }
    if (suppressed >= 0 && o < cap) {
        n = snprintf(buf + o, cap - o, " suppressed=%" PRId64, suppressed);
        o = n < 0 ? o : (o + (size_t)n < cap ? o + (size_t)n : cap - 1);
    }
    buf[o++] = '\n';
    fwrite(buf, 1, o, stderr);
}

void log_line(enum log_level level, const char *msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, msg, -1, fmt, ap);
    va_end(ap);
}

void log_limited(struct ratelimit *rl, uint64_t now_ms, enum log_level level, const char *msg,
                 const char *fmt, ...)
{
    uint64_t held;
    if (!ratelimit_allow(rl, now_ms, &held))
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(level, msg, (int64_t)held, fmt, ap);
    va_end(ap);
}

const char *logfmt_ip(char *buf, size_t cap, const struct sockaddr_storage *a)
{
    const void *ip = a->ss_family == AF_INET6
                         ? (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr
                         : (const void *)&((const struct sockaddr_in *)a)->sin_addr;
    if ((a->ss_family != AF_INET && a->ss_family != AF_INET6) ||
        !inet_ntop(a->ss_family, ip, buf, (socklen_t)cap))
        snprintf(buf, cap, "unknown");
    return buf;
}
