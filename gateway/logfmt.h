/* logfmt.h — text from elsewhere (a server's error message, a peer's reply) as one logfmt
 * value: inside the caller's double quotes, with '"' and '\' escaped and line breaks and tabs
 * turned into spaces, so one event stays one line. Cut to the buffer (cap >= 1). */
#ifndef AVLGATE_GATEWAY_LOGFMT_H
#define AVLGATE_GATEWAY_LOGFMT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_LOGFMT_H */
