/* linkdrive.c — see linkdrive.h. Test-only; every failure fails the test. */
#include "tests/support/linkdrive.h"
#include "tests/support/testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

bool linkdrive_pump(struct linkdrive *d, linkdrive_until_fn *done, void *ctx, long arg,
                    int timeout_ms)
{
    const struct linkdrive_ops *ops = d->ops;
    assert_true(ops->sockets >= 1 && ops->sockets <= LINKDRIVE_SOCKETS_MAX);
    uint64_t end = tu_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (done && done(ctx, arg))
            return true;
        uint64_t now = tu_now_ms();
        if (now >= end)
            return done == NULL;
        struct pollfd pfd[LINKDRIVE_SOCKETS_MAX];
        int which[LINKDRIVE_SOCKETS_MAX];
        nfds_t n = 0;
        for (int i = 0; i < ops->sockets; i++) {
            int fd = ops->fd(d->link, i);
            short ev = ops->events(d->link, i);
            if (fd >= 0 && ev != 0) {
                pfd[n] = (struct pollfd){.fd = fd, .events = ev, .revents = 0};
                which[n++] = i;
            }
        }
        uint64_t deadline = ops->next_deadline_ms(d->link);
        uint64_t wake = deadline < end ? deadline : end;
        int wait = wake <= now ? 0 : (int)(wake - now);
        d->loops++;
        int r = poll(pfd, n, wait);
        assert_true(r >= 0 || errno == EINTR);
        now = tu_now_ms();
        d->last_ms = now;
        for (nfds_t i = 0; i < n && r > 0; i++)
            if (pfd[i].revents)
                ops->on_io(d->link, which[i], pfd[i].revents, now);
        if (ops->next_deadline_ms(d->link) <= now)
            ops->tick(d->link, now);
    }
}

/* ---- throwaway servers -------------------------------------------------------------------- */

const char *linkdrive_script(const char *env, const char *fallback)
{
    const char *p = getenv(env);
    return p ? p : fallback;
}

void linkdrive_script_run(const char *script, const char *verb, const char *dir, char *out,
                          size_t cap)
{
    char line[512];
    int status = tu_script(script, verb, dir, out ? out : line, out ? cap : sizeof line);
    if (status != 0 || (out && !out[0]))
        fail_msg("%s %s %s failed (status %d)", script, verb, dir, status);
}

void linkdrive_server_start(struct linkdrive_server *srv, const char *script, const char *tag)
{
    memset(srv, 0, sizeof(*srv));
    srv->script = script;
    snprintf(srv->dir, sizeof srv->dir, "/tmp/avlgate-%s-XXXXXX", tag);
    assert_non_null(mkdtemp(srv->dir));
    linkdrive_script_run(script, "start", srv->dir, srv->line, sizeof srv->line);
}

void linkdrive_server_run(struct linkdrive_server *srv, const char *verb)
{
    linkdrive_script_run(srv->script, verb, srv->dir, NULL, 0);
}

void linkdrive_server_remove(struct linkdrive_server *srv, const char *verb)
{
    linkdrive_server_run(srv, verb);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", srv->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", srv->dir);
    srv->dir[0] = '\0';
}

/* ---- connects that fail ------------------------------------------------------------------- */

int linkdrive_loopback(int backlog, int *port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    if (backlog >= 0)
        assert_int_equal(listen(s, backlog), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &alen), 0);
    *port = ntohs(a.sin_port);
    return s;
}
