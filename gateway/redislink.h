/* redislink.h — one non-blocking Redis connection (hiredis async) driven by the caller's
 * readiness events, the same way pgsink drives its links: the shard's io_uring polls the
 * socket, nothing blocks, and the link reconnects by itself with backoff.
 *
 * Why the async context on the shard's ring and not a bridge thread: the shard already polls
 * its PostgreSQL sockets this way, the commands it sends (registry writes, XADD, XACK) are
 * issued from the shard's thread and their replies are wanted there, and a thread would need
 * a second mailbox kind and a wake-up path into every shard for no gain. A blocking
 * XREADGROUP ... BLOCK needs a connection of its own: the intake uses a second link.
 *
 * Driving it (one thread; nothing here is thread-safe):
 *
 *   fd = redislink_fd(l), events = redislink_events(l): when fd >= 0 and events != 0, poll fd
 *   for them; when redislink_fd_epoch() changed since the poll was armed, cancel that poll
 *   on readiness:  redislink_on_io(l, revents, now_ms)
 *   timer:         at redislink_next_deadline_ms(l), redislink_tick(l, now_ms)
 *
 * Re-read fd, events, epoch and the deadline after every call into the link (including
 * redislink_command, which makes the link want POLLOUT).
 *
 * When the events gain POLLOUT while a poll for POLLIN alone is armed, arm one for POLLOUT too
 * (or cancel and re-arm with both): commands are written only on POLLOUT readiness.
 *
 * Host: an IP address (hiredis resolves names with blocking getaddrinfo at every connect;
 * resolve once at start-up). hiredis writes with write(2): the process must ignore SIGPIPE.
 * Callbacks run only from redislink_on_io, redislink_tick and redislink_destroy. A callback may
 * issue new commands on the same link, but must not call redislink_on_io, redislink_tick or
 * redislink_destroy (asserted).
 *
 * The link writes no log line: it reports through on_state when it comes up, when it goes
 * down, and when it cannot connect at start (once per outage, not per failed attempt); the
 * caller logs them, with redislink_name, redislink_addr and redislink_last_error. */
#ifndef AVLGATE_GATEWAY_REDISLINK_H
#define AVLGATE_GATEWAY_REDISLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A command's reply: reply is hiredis's (valid during the call only; check reply->type,
 * REDIS_REPLY_ERROR included), or NULL when none came: the link broke or timed out with the
 * command outstanding, or the link is being destroyed. The command may or may not have run. */
typedef void redislink_reply_fn(void *user, void *cookie, const redisReply *reply);

/* What on_state reports. Each outage is reported once: by DOWN when an established link is
 * lost, else by UNREACHABLE at its first failed attempt (at start: the link has not been up
 * yet); the attempts after it are only counted, until UP. */
enum redislink_event {
    REDISLINK_EVENT_UP = 1,      /* connected to redislink_addr() (and authenticated) */
    REDISLINK_EVENT_DOWN,        /* an established link broke or was dropped (every command
                                    outstanding has had its reply NULL); the link reconnects
                                    with backoff; redislink_last_error() says why */
    REDISLINK_EVENT_UNREACHABLE, /* an attempt failed and no DOWN announced this outage; the
                                    link retries with backoff; redislink_last_error() says why */
};

/* Called from redislink_on_io and redislink_tick (never from redislink_destroy), under the
 * same rules as on_reply. */
typedef void redislink_state_fn(void *user, enum redislink_event ev);

struct redislink_config {
    const char *host; /* IP address; copied */
    int port;
    const char *name;            /* for the caller's log lines ("registry", "intake"); copied */
    uint32_t backoff_min_ms;     /* first reconnect delay; 0: 100 */
    uint32_t backoff_max_ms;     /* ceiling; 0: 5000 */
    uint32_t connect_timeout_ms; /* 0: 5000; bounds the connect and the AUTH together */
    /* A command outstanding longer than this drops the link (each outstanding command gets
     * reply NULL); 0: none. Give a link that blocks (XREADGROUP BLOCK b) more than b. */
    uint32_t reply_timeout_ms;
    uint32_t pending_max; /* commands outstanding before redislink_command says -ENOBUFS;
                             0: 65536; at most 1048576 */
    /* Sent as AUTH <password> after each connect, before the link is UP (an AUTH the server
     * refuses fails the attempt like a refused connect: UNREACHABLE, backoff, the server's
     * reason in redislink_last_error, never the password). NULL or "": none. At most 4096
     * bytes; copied. */
    const char *password;
    redislink_reply_fn *on_reply;
    redislink_state_fn *on_state; /* may be NULL */
    void *user;
};

struct redislink_counters {
    uint64_t connects, connect_failures, disconnects, timeouts;
    uint64_t commands, replies, errors; /* errors: REDIS_REPLY_ERROR replies */
    uint64_t lost;                      /* commands that got reply NULL */
};

struct redislink;

/* Validates cfg and allocates; connects nothing until the first redislink_tick. NULL with
 * errno EINVAL (reason in err) or ENOMEM. */
struct redislink *redislink_create(const struct redislink_config *cfg, char *err, size_t err_cap);
/* Closes the connection; every outstanding command gets on_reply(NULL) from inside this
 * call. NULL is a no-op. */
void redislink_destroy(struct redislink *l);

int redislink_fd(const struct redislink *l); /* -1 without a socket */
uint32_t redislink_fd_epoch(const struct redislink *l);
short redislink_events(const struct redislink *l); /* POLLIN, POLLOUT or both; 0 without */
uint64_t redislink_next_deadline_ms(const struct redislink *l); /* UINT64_MAX: none */
void redislink_on_io(struct redislink *l, short revents, uint64_t now_ms);
void redislink_tick(struct redislink *l, uint64_t now_ms);
bool redislink_up(const struct redislink *l);

/* Sends a command (argv as for redisCommandArgv; NULL argvlen means NUL-terminated strings;
 * hiredis copies them before this returns). Returns 0 (on_reply(cookie) follows exactly once),
 * -ENOTCONN (the link is not up, connecting included: nothing is queued while it is down),
 * -ENOBUFS (pending_max outstanding), -EINVAL (argc < 1, or a command after which replies no
 * longer answer commands one for one: [P|S][UN]SUBSCRIBE, MONITOR, CLIENT REPLY) or
 * -ENOMEM. On an error nothing was sent and no callback follows. now_ms starts its reply
 * timeout. */
int redislink_command(struct redislink *l, int argc, const char *const *argv, const size_t *argvlen,
                      void *cookie, uint64_t now_ms);

const struct redislink_counters *redislink_counters(const struct redislink *l);

/* For the caller's log lines; the link's storage. The name is cfg.name ("redis" without one)
 * and the address "host:port" ("[host]:port" for IPv6): both fixed at create. The last error
 * is the first line of why the link last failed or was dropped ("" once it is up again), with
 * double quotes and backslashes turned into single quotes; valid until the next call into the
 * link. */
const char *redislink_name(const struct redislink *l);
const char *redislink_addr(const struct redislink *l);
const char *redislink_last_error(const struct redislink *l);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_REDISLINK_H */
