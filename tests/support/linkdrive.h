/* linkdrive.h — what the link tests (test_pgsink, test_redislink) share: driving a link with
 * poll(2) the way a shard's loop does, the private servers they start, stop and kill with the
 * throwaway-server scripts, and loopback sockets that refuse or never answer a connect.
 *
 * A link here is anything polled through a struct linkdrive_ops: pgsink (two sockets, data and
 * control) and redislink (one). Test-only code: every failure fails the test (cmocka fail_msg
 * or an assertion); nothing is skipped. One thread. */
#ifndef AVLGATE_TESTS_SUPPORT_LINKDRIVE_H
#define AVLGATE_TESTS_SUPPORT_LINKDRIVE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { LINKDRIVE_SOCKETS_MAX = 4 };

/* How to drive one kind of link: its sockets are numbered 0 .. sockets-1. */
struct linkdrive_ops {
    int sockets;                                    /* at most LINKDRIVE_SOCKETS_MAX */
    int (*fd)(const void *link, int i);             /* -1: none now */
    short (*events)(const void *link, int i);       /* 0: nothing to wait for */
    uint64_t (*next_deadline_ms)(const void *link); /* UINT64_MAX: none */
    void (*on_io)(void *link, int i, short revents, uint64_t now_ms);
    void (*tick)(void *link, uint64_t now_ms);
};

struct linkdrive {
    const struct linkdrive_ops *ops;
    void *link;
    uint64_t loops;   /* poll turns (a busy loop shows here) */
    uint64_t last_ms; /* the now_ms of the latest turn's on_io/tick */
};

/* A condition on the test's own state (ctx), with an argument. */
typedef bool linkdrive_until_fn(void *ctx, long arg);

/* Drives d->link until done(ctx, arg) or timeout_ms: polls each socket for the events the link
 * asks for, hands readiness to on_io, runs tick when its deadline has come; sleeps in poll
 * until the earlier of the link's deadline and the timeout. The link's fd, events and deadline
 * are read again every turn. Returns true when done said so, false at the timeout; with done
 * NULL it runs for timeout_ms and returns true. */
bool linkdrive_pump(struct linkdrive *d, linkdrive_until_fn *done, void *ctx, long arg,
                    int timeout_ms);

/* ---- throwaway servers (tests/pg/pgtmp.sh, tests/redis/redistmp.sh) ---------------------- */

/* The script: getenv(env) when set (ctest sets it), else fallback (the source tree's). */
const char *linkdrive_script(const char *env, const char *fallback);

/* Runs `script verb dir` (tu_script); fails the test unless it exits 0 and, when out is given,
 * prints a first line (which goes to out). */
void linkdrive_script_run(const char *script, const char *verb, const char *dir, char *out,
                          size_t cap);

/* A server of a test's own, in a temporary directory. */
struct linkdrive_server {
    const char *script;
    char dir[PATH_MAX]; /* "" before start and after remove */
    char line[512];     /* what `start` printed: a conninfo (pgtmp) or host:port (redistmp) */
};

/* Makes /tmp/avlgate-<tag>-XXXXXX and starts a server there. */
void linkdrive_server_start(struct linkdrive_server *srv, const char *script, const char *tag);

/* `script verb dir` on the server's directory: "stop", "kill", "start" again. */
void linkdrive_server_run(struct linkdrive_server *srv, const char *verb);

/* Ends the server with verb ("stop" or "kill") and removes its directory. */
void linkdrive_server_remove(struct linkdrive_server *srv, const char *verb);

/* ---- connects that fail -------------------------------------------------------------------- */

/* A TCP socket on 127.0.0.1 at a free port (*port). backlog >= 0: listening with that backlog
 * and never accepting (the kernel completes handshakes until the queue is full, then drops
 * SYNs); backlog < 0: only bound, so connects to the port are refused. close() it. */
int linkdrive_loopback(int backlog, int *port);

#ifdef __cplusplus
}
#endif

#endif
