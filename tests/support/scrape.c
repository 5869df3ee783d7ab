/* scrape.c — GET /metrics from a gateway under test (scrape.h). */
#include "tests/support/scrape.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { METRICS_BYTES_MAX = 1 << 20, TIMEOUT_S = 5 };

/* The whole answer (NUL-terminated) into buf; its length, or -1 with why in err. */
static ssize_t get(uint16_t port, char *buf, char *err, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, cap, "socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        snprintf(err, cap, "metrics on port %u: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t n;
    while (len + 1 < METRICS_BYTES_MAX &&
           (n = recv(fd, buf + len, METRICS_BYTES_MAX - 1 - len, 0)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

int metrics_scrape(uint16_t port, struct prom_text *t, char *err, size_t cap)
{
    char *buf = malloc(METRICS_BYTES_MAX);
    if (!buf) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    ssize_t len = get(port, buf, err, cap);
    int rc = -1;
    const char *body = len < 0 ? NULL : strstr(buf, "\r\n\r\n");
    if (len >= 0 && (!body || strncmp(buf, "HTTP/1.1 200", 12) != 0)) {
        snprintf(err, cap, "metrics: bad answer: %.80s", buf);
    } else if (body) {
        body += 4;
        char why[256];
        rc = prom_parse(body, (size_t)len - (size_t)(body - buf), t, why, sizeof why);
        if (rc != 0)
            snprintf(err, cap, "/metrics is not valid text format: %s", why);
    }
    free(buf);
    return rc == 0 ? 0 : -1;
}
