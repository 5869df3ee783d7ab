/* ingest.c — one gateway shard: its modules wired onto the engine (see ingest.h; the modules are
 * listed in shard_state.h). Runs on the shard's thread only.
 *
 * Owns: the engine's ops table (bytes -> frames -> the modules: handshakes to session.c, AVL
 * packets to batch.c, command answers to delivery.c), the events between modules (a handshake
 * accepted goes to the registry and to delivery), the sink's callbacks and the polls of its two
 * links, every control-query answer dispatched by its cookie (tags.h), the tick, the drain at
 * stop, the daily partition maintenance (shard 0), the gauges published every loop turn, and the
 * shard's start-up and teardown. */
#include "gateway/ingest.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/batch.h"
#include "gateway/delivery.h"
#include "gateway/intake.h"
#include "gateway/log.h"
#include "gateway/metrics.h"
#include "gateway/proxy.h"
#include "gateway/registry.h"
#include "gateway/session.h"
#include "gateway/shard_state.h"
#include "gateway/tags.h"
#include "gateway/udp.h"

/* The earlier of two wake-up times, 0 meaning none. */
static uint64_t earliest(uint64_t a, uint64_t b)
{
    return !b ? a : (!a || b < a ? b : a);
}

/* ---------------------------------------------------------------------------------------------
 * Bytes: frames to the modules
 * ------------------------------------------------------------------------------------------- */

static void count_invalid(struct shard *s, int err)
{
    stat_add(&s->st->packets_invalid, 1);
    unsigned i = (unsigned)-err;
    if (i < 32)
        stat_add(&s->st->invalid_by_reason[i], 1);
}

/* The device's IMEI reached this shard (read here, or handed over). */
static enum engine_verdict handshake(struct shard *s, uint32_t slot, uint32_t gen, uint64_t imei,
                                     bool more_bytes)
{
    switch (session_handshake(s, slot, gen, imei, more_bytes, batch_pending_owner(s, imei))) {
    case SESSION_REFUSED:
        return ENGINE_CLOSE;
    case SESSION_OWNED:
        delivery_on_handshake(s, slot);
        return ENGINE_CONTINUE;
    case SESSION_HANDED_OFF:
        return ENGINE_CONTINUE;
    }
    return ENGINE_CONTINUE;
}

/* An AVL packet of an open device: decoded in place and taken into the ring. */
static enum engine_verdict on_avl(struct shard *s, uint32_t slot, uint32_t gen, struct dev *d,
                                  const uint8_t *frame, uint32_t bytes)
{
    if (d->dormant) {
        /* Its window was released while it was quiet: load the state, hold the packet. */
        session_reload(s, slot);
        return ENGINE_HOLD;
    }
    struct avl_packet pkt;
    int rc = avl_decode_tcp(frame, bytes, &pkt, s->recs);
    if (rc < 0) {
        /* Never acknowledged; the stream may be out of step: close. */
        count_invalid(s, rc);
        return ENGINE_CLOSE;
    }
    rc = batch_take(s, slot, gen, d, &pkt, s->recs, NULL);
    if (rc == 0) {
        s->paused = true;
        stat_add(&s->st->backpressure_pauses, 1);
        return ENGINE_PAUSE;
    }
    if (rc < 0)
        return ENGINE_CLOSE; /* its device is deferred (counted): it re-sends later */
    return ENGINE_CONTINUE;
}

/* One whole frame other than the IMEI; ENGINE_CONTINUE when it was consumed. */
static enum engine_verdict on_frame(struct shard *s, uint32_t slot, uint32_t gen, struct dev *d,
                                    const struct avl_frame *f, const uint8_t *frame)
{
    switch (f->kind) {
    case AVL_FRAME_PING:
        stat_add(&s->st->pings, 1);
        return ENGINE_CONTINUE;
    case AVL_FRAME_GPRS:
        /* A command's answer (or another GPRS message): delivery.c matches it. */
        stat_add(&s->st->gprs_frames, 1);
        delivery_on_frame(s, slot, frame, f->bytes);
        return ENGINE_CONTINUE;
    case AVL_FRAME_AVL:
        return on_avl(s, slot, gen, d, frame, f->bytes);
    case AVL_FRAME_IMEI:
        break;
    }
    assert(!"the IMEI frame is the caller's");
    return ENGINE_CLOSE;
}

/* The IMEI frame at p[used ..]; returns what on_data returns. */
static size_t on_imei(struct shard *s, uint32_t slot, uint32_t gen, const uint8_t *p, size_t len,
                      size_t used, uint32_t bytes, enum engine_verdict *verdict)
{
    uint64_t imei;
    int rc = avl_decode_imei(p + used, bytes, &imei);
    if (rc < 0) {
        count_invalid(s, rc);
        *verdict = ENGINE_CLOSE;
        return used;
    }
    used += bytes;
    *verdict = handshake(s, slot, gen, imei, used < len);
    return *verdict == ENGINE_CLOSE ? used : len;
}

static size_t on_data(void *user, struct engine *e, uint32_t slot, uint32_t gen, const uint8_t *p,
                      size_t len, enum engine_verdict *verdict, uint32_t *need)
{
    struct shard *s = user;
    struct dev *d = session_dev(s, slot);
    (void)e;
    assert(d->gen == gen);
    size_t used = 0;
    *verdict = ENGINE_CONTINUE;
    while (used < len) {
        if (d->state == DEV_PROXY) {
            int rc = proxy_on_header(s, slot, gen, p + used, len - used, need);
            if (rc <= 0) {
                *verdict = rc < 0 ? ENGINE_CLOSE : ENGINE_CONTINUE;
                return used;
            }
            session_header_read(s, slot);
            used += (size_t)rc;
            continue;
        }
        if (d->state == DEV_LOADING) {
            /* Bytes before our answer to the handshake: a device never does that. */
            stat_add(&s->st->handshake_errors, 1);
            *verdict = ENGINE_CLOSE;
            return used;
        }
        struct avl_frame f;
        enum avl_scan_mode mode = d->state == DEV_HANDSHAKE ? AVL_SCAN_HANDSHAKE : AVL_SCAN_DATA;
        int rc = avl_scan(p + used, len - used, mode, s->cfg->frame_bytes_max, &f);
        if (rc == AVL_NEED_MORE) {
            *need = f.bytes;
            return used;
        }
        if (rc < 0) {
            count_invalid(s, rc);
            *verdict = ENGINE_CLOSE;
            return used;
        }
        if (f.kind == AVL_FRAME_IMEI)
            return on_imei(s, slot, gen, p, len, used, f.bytes, verdict);
        *verdict = on_frame(s, slot, gen, d, &f, p + used);
        if (*verdict != ENGINE_CONTINUE)
            return used;
        used += f.bytes;
    }
    return used;
}

/* ---------------------------------------------------------------------------------------------
 * Connections, mail, sends
 * ------------------------------------------------------------------------------------------- */

static void on_open(void *user, struct engine *e, uint32_t slot, uint32_t gen, int from_shard,
                    uint64_t key)
{
    struct shard *s = user;
    bool proxied = from_shard == ENGINE_FROM_ACCEPT && proxy_on(s);
    session_on_open(s, slot, gen, proxied);
    if (proxied && !proxy_on_accept(s, slot, gen)) {
        engine_close(e, slot, gen); /* not from --proxy-from (counted) */
        return;
    }
    if (from_shard >= 0) {
        if (proxy_on(s))
            proxy_on_handed_in(s, slot, key);
        handshake(s, slot, gen, key, false);
    }
}

static void on_close(void *user, struct engine *e, uint32_t slot, uint32_t gen,
                     enum engine_close_reason reason)
{
    struct shard *s = user;
    (void)e;
    (void)reason;
    const struct dev *d = session_dev(s, slot);
    assert(d->gen == gen);
    if (dev_owned(d)) {
        registry_on_close(s, slot);
        delivery_on_close(s, slot);
    }
    session_on_close(s, slot, gen);
}

static void on_datagram(void *user, struct engine *e, const uint8_t *p, size_t len, bool truncated,
                        const struct sockaddr *from, socklen_t from_len)
{
    (void)e;
    udp_on_datagram(user, p, len, truncated, from, from_len);
}

/* A mail is a datagram handed to its owner (udp.h: its first 8 bytes 0), a connection's address
 * ahead of its handoff (proxy.h: PROXY_MAIL_TAG) or a command wake-up. */
static void on_mail(void *user, struct engine *e, unsigned from, const void *msg)
{
    (void)e;
    (void)from;
    uint64_t first;
    memcpy(&first, msg, sizeof first);
    if (first == 0) {
        udp_on_mail(user, msg);
        return;
    }
    if (first == PROXY_MAIL_TAG) {
        struct proxy_mail m;
        memcpy(&m, msg, sizeof m);
        proxy_on_mail(user, &m);
        return;
    }
    struct cmd_wake w;
    memcpy(&w, msg, sizeof w);
    delivery_wake(user, &w);
}

static void on_sent(void *user, struct engine *e, uint32_t slot, uint32_t gen, int status)
{
    (void)e;
    (void)gen;
    delivery_on_sent(user, slot, status);
}

/* ---------------------------------------------------------------------------------------------
 * The sink's callbacks and polls
 * ------------------------------------------------------------------------------------------- */

static void sink_arm_polls(struct shard *s)
{
    for (int l = 0; l < PGSINK_LINKS; l++) {
        enum pgsink_link link = (enum pgsink_link)l;
        linkpoll_arm(&s->pg_poll[l], s->e, (enum poll_owner)l, pgsink_fd(s->sink, link),
                     pgsink_events(s->sink, link), pgsink_fd_epoch(s->sink, link), false);
    }
}

static void redis_arm_polls(struct shard *s)
{
    registry_arm(s);
    intake_arm(s);
}

static void on_poll(void *user, struct engine *e, uint64_t tag, int revents)
{
    struct shard *s = user;
    (void)e;
    enum poll_owner owner = poll_tag_owner(tag);
    switch (owner) {
    case POLL_PG_DATA:
    case POLL_PG_CONTROL: {
        enum pgsink_link link = (enum pgsink_link)owner;
        if (!linkpoll_done(&s->pg_poll[link], tag, revents, pgsink_fd_epoch(s->sink, link)))
            return;
        pgsink_on_io(s->sink, link, revents < 0 ? (short)POLLERR : (short)revents, shard_now_ms(s));
        sink_arm_polls(s);
        return;
    }
    case POLL_REDIS_REGISTRY:
        registry_on_poll(s, tag, revents);
        redis_arm_polls(s); /* an intake reply may have written on the registry link, and back */
        return;
    case POLL_REDIS_INTAKE:
        intake_on_poll(s, tag, revents);
        redis_arm_polls(s);
        return;
    case POLL_METRICS:
        if (s->metrics)
            metrics_on_poll(s->metrics, tag, revents);
        return;
    case POLL_OWNERS:
        break;
    }
    assert(!"a poll tag of no owner");
}

static void on_txn_done(void *user, void *cookie, const struct pgsink_txn_result *res)
{
    struct shard *s = user;
    if (s->closing)
        return; /* pgsink_destroy after the engine is gone: the devices re-send */
    batch_on_txn_done(s, cookie, res);
}

/* A device's state load answered: when its handshake was accepted now, the command side hears. */
static void on_state_loaded(struct shard *s, uint64_t key, const PGresult *res)
{
    const struct dev *d = session_loading(s, key);
    if (!d)
        return;  /* the connection went away meanwhile */
    udp_wake(s); /* datagrams may wait for this device */
    bool has_commands = false;
    const struct dedup *pending = batch_pending_dedup(s, d->imei, d->owner);
    if (!session_on_load(s, key, res, pending, &has_commands))
        return;
    uint32_t slot = engine_key_slot(key);
    registry_on_open(s, slot);
    delivery_on_open(s, slot, has_commands);
}

static void on_query_done(void *user, void *cookie, const PGresult *res, int err)
{
    struct shard *s = user;
    if (s->closing)
        return; /* pgsink_destroy after the engine is gone: nothing to act on */
    enum query_kind kind = query_cookie_kind(cookie);
    uint64_t payload = query_cookie_payload(cookie);
    switch (kind) {
    case Q_STATE_LOAD:
        on_state_loaded(s, payload, res);
        return;
    case Q_MAINTENANCE:
        if (!res ||
            (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)) {
            char q[256];
            log_line(LOG_WARN, "maintenance query failed", "shard=%u err=%d error=\"%s\"", s->id,
                     err, logfmt_q(q, sizeof q, res ? PQresultErrorMessage(res) : ""));
        }
        return;
    case Q_ALLOWLIST:
        session_on_allowlist(s, res);
        return;
    case Q_FETCH:
    case Q_MARK_SENT:
    case Q_RECORD:
    case Q_SWEEP:
        delivery_on_query(s, kind, payload, res);
        return;
    }
    assert(!"a query cookie of no kind");
}

/* A database link came up or went down: one log line per change (never per attempt). */
static void on_sink_state(void *user, enum pgsink_link link, bool connected)
{
    struct shard *s = user;
    const char *name = link == PGSINK_LINK_DATA ? "data" : "control";
    if (connected) {
        log_line(LOG_INFO, "database link up", "shard=%u link=%s", s->id, name);
        return;
    }
    char q[256];
    log_line(LOG_WARN, "database link down; reconnecting with backoff",
             "shard=%u link=%s error=\"%s\"", s->id, name,
             logfmt_q(q, sizeof q, pgsink_last_error(s->sink, link)));
}

/* ---------------------------------------------------------------------------------------------
 * The tick
 * ------------------------------------------------------------------------------------------- */

/* Shard 0 keeps the daily partitions made ahead: at start (run.c does it before the shards
 * start) and then once a day, through its control link. */
static void maintain_partitions(struct shard *s, uint64_t ms)
{
    enum { DAY_MS = 24 * 3600 * 1000 };
    if (s->id != 0)
        return;
    if (s->next_partitions_ms == 0)
        s->next_partitions_ms = ms + DAY_MS;
    if (ms < s->next_partitions_ms)
        return;
    if (pgsink_query(s->sink, "SELECT * FROM telemetry.ensure_partitions(7)", 0, NULL,
                     query_cookie(Q_MAINTENANCE, 0), ms) == 0)
        s->next_partitions_ms = ms + DAY_MS;
}

/* Gauges and the sink's counters into the shard's stats, where the metrics endpoint reads
 * them (every loop turn: a few stores). */
static void publish(struct shard *s)
{
    struct ingest_stats *st = s->st;
    stat_set(&st->conns_open, engine_conns_open(s->e));
    stat_set(&st->ring_busy, batch_busy(s));
    stat_set(&st->ring_batches, s->ring->nbatches);
    const struct pgsink_counters *pc = pgsink_counters(s->sink);
    stat_set(&st->pg_connects[0], pc->connects);
    stat_set(&st->pg_connects[1], pc->control_connects);
    stat_set(&st->pg_disconnects[0], pc->disconnects);
    stat_set(&st->pg_disconnects[1], pc->control_disconnects);
    stat_set(&st->pg_connect_failures[0], pc->connect_failures);
    stat_set(&st->pg_connect_failures[1], pc->control_connect_failures);
    for (int l = 0; l < 2; l++) {
        enum pgsink_phase ph = pgsink_phase(s->sink, (enum pgsink_link)l);
        stat_set(&st->pg_up[l], ph != PGSINK_PHASE_DOWN && ph != PGSINK_PHASE_CONNECTING);
    }
    stat_set(&st->listening, !s->draining);
    stat_set(&st->udp_devices, session_udp_devices(s));
}

/* At stop: accept no more, then stop the engine once nothing is held (or the time is up). */
static void drain_step(struct shard *s, struct engine *e, uint64_t now_ns)
{
    if (s->draining) {
        bool held = batch_holding(s) || delivery_busy(s); /* rows, or an answer to record */
        if ((!held && engine_sends_in_flight(e) == 0) || now_ns >= s->drain_deadline_ns)
            engine_stop(e);
    } else if (atomic_load_explicit(&s->sh->stop, memory_order_relaxed)) {
        s->draining = true;
        s->drain_deadline_ns = now_ns + (uint64_t)s->cfg->drain_timeout_ms * 1000000u;
        engine_stop_accepting(e);
    }
}

/* The command side's turn: the Redis links, the registry walk, the intake, delivery. */
static uint64_t commands_tick(struct shard *s, uint64_t now_ns)
{
    uint64_t wake = registry_tick(s, now_ns);
    wake = earliest(wake, intake_tick(s, now_ns));
    wake = earliest(wake, delivery_tick(s, now_ns));
    redis_arm_polls(s);
    return wake;
}

static uint64_t on_tick(void *user, struct engine *e, uint64_t now_ns)
{
    struct shard *s = user;
    uint64_t ms = now_ns / 1000000u;
    pgsink_tick(s->sink, ms);
    maintain_partitions(s, ms);
    uint64_t wake = batch_tick(s, now_ns);
    session_send_loads(s);
    session_allowlist_step(s);
    sink_arm_polls(s);
    session_release_idle(s, ms);
    udp_tick(s);
    drain_step(s, e, now_ns);
    publish(s);
    if (s->metrics)
        metrics_tick(s->metrics, now_ns);
    wake = earliest(wake, commands_tick(s, now_ns));
    uint64_t sink_ms = pgsink_next_deadline_ms(s->sink);
    if (sink_ms != UINT64_MAX)
        wake = earliest(wake, sink_ms * 1000000u);
    return wake;
}

static const struct engine_ops ingest_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .on_poll = on_poll,
    .on_mail = on_mail,
    .on_tick = on_tick,
    .on_sent = on_sent,
    .on_datagram = on_datagram,
};

/* ---------------------------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------------------------- */

static int shard_setup(struct shard *s, char *err, size_t cap)
{
    int rc = session_setup(s, err, cap);
    if (rc == 0)
        rc = proxy_setup(s, err, cap);
    if (rc == 0)
        rc = batch_setup(s, err, cap);
    if (rc == 0)
        rc = udp_setup(s, err, cap);
    if (rc)
        return rc;
    struct pgsink_config pc = {
        .conninfo = s->cfg->pg_conninfo,
        .copy_sql = copyenc_copy_sql(s->cfg->io_layout),
        .queries_max = 256,
        .query_timeout_ms = 30000,
        /* The server times the statements out (batch.c); this bounds what it does not. */
        .txn_timeout_ms = s->cfg->txn_timeout_ms ? 2 * s->cfg->txn_timeout_ms + 1000 : 0,
        .cb = {.on_txn_done = on_txn_done,
               .on_query_done = on_query_done,
               .on_state = on_sink_state},
        .user = s,
    };
    s->sink = pgsink_create(&pc, err, cap);
    if (!s->sink)
        return -errno;
    rc = delivery_setup(s, err, cap);
    if (rc == 0)
        rc = registry_setup(s, err, cap);
    if (rc == 0)
        rc = intake_setup(s, err, cap);
    return rc;
}

/* After the engine is gone: the sink and the links report what they held as lost (their
 * callbacks see `closing` and do nothing), then every module frees its own. */
static void shard_teardown(struct shard *s)
{
    s->closing = true;
    pgsink_destroy(s->sink);
    intake_teardown(s);
    registry_teardown(s);
    delivery_teardown(s);
    udp_teardown(s); /* after every shard's loop: none holds a copy of this one's slab now */
    batch_teardown(s);
    proxy_teardown(s);
    session_teardown(s);
}

static int engine_start(struct shard *s, char *err, size_t cap)
{
    const struct ingest_config *c = s->cfg;
    struct engine_config ec = {
        .shard = s->id,
        .shards = c->shards,
        .listen = true,
        .addr = c->listen_addr,
        .addr_len = c->listen_addr_len,
        .backlog = 4096,
        .conns_max = c->conns_max,
        .bufs = c->bufs,
        .buf_bytes = c->buf_bytes,
        .reasm_bytes_max = c->reasm_bytes_max,
        .frame_bytes_max = c->frame_bytes_max,
        .idle_timeout_ms = c->idle_timeout_s * 1000,
        .frame_timeout_ms = c->frame_timeout_s * 1000,
        .identify_timeout_ms = c->handshake_timeout_s * 1000,
        .sq_entries = 4096,
        .wait_batch_us = c->wait_batch_us,
        .pin = c->pin,
        .udp = c->udp,
        .udp_addr = c->udp_addr,
        .udp_addr_len = c->udp_addr_len,
        .udp_bytes_max = c->udp_bytes_max,
        .ops = &ingest_ops,
        .app = s,
    };
    return engine_init(&s->e, &ec, err, cap);
}

/* Publishes this shard's ring and waits until every shard did (or one failed to start), then
 * links the mailboxes. 0, or the first shard's start error. */
static int join_peers(struct shard *s)
{
    struct ingest_shared *sh = s->sh;
    unsigned shards = s->cfg->shards;
    sh->ring_fds[s->id] = engine_ring_fd(s->e);
    sh->engines[s->id] = s->e;
    sh->engine_stats[s->id] = engine_stats(s->e);
    atomic_fetch_add(&sh->rings_ready, 1); /* seq_cst: publishes the stores above */
    while (atomic_load(&sh->rings_ready) < shards && atomic_load(&sh->start_error) == 0)
        sched_yield();
    if (atomic_load(&sh->start_error))
        return atomic_load(&sh->start_error);
    engine_set_peers(s->e, sh->ring_fds, shards);
    engine_set_mailboxes(s->e, sh->engines, shards);
    return 0;
}

/* One line per shard when it stops (written whole: the shards stop together). */
static void say_stopped(const struct shard *s)
{
    const struct engine_stats *es = engine_stats(s->e);
    const struct ingest_stats *st = s->st;
    log_line(LOG_INFO, "shard stopped",
             "shard=%u loops=%llu cqes=%llu recvs=%llu recv_enobufs=%llu sends=%llu pauses=%llu "
             "pause_cancels=%llu batches=%llu rows=%llu windows_released=%llu state_reloads=%llu "
             "cmds_fetched=%llu cmds_sent=%llu cmds_answered=%llu cmds_failed=%llu "
             "cmds_expired=%llu cmd_responses_unexpected=%llu cmd_frames_ignored=%llu "
             "cmd_wakes=%llu cmd_wakes_offline=%llu cmd_sweeps=%llu cmd_query_failures=%llu "
             "registry_writes=%llu registry_errors=%llu replies_published=%llu "
             "replies_unpublished=%llu",
             s->id, (unsigned long long)es->loops, (unsigned long long)es->cqes,
             (unsigned long long)es->recv_completions, (unsigned long long)es->recv_enobufs,
             (unsigned long long)es->sends, (unsigned long long)es->pauses,
             (unsigned long long)es->pause_cancels, (unsigned long long)st->batches_committed,
             (unsigned long long)st->rows_committed, (unsigned long long)st->windows_released,
             (unsigned long long)st->state_reloads, (unsigned long long)st->cmds_fetched,
             (unsigned long long)st->cmds_sent, (unsigned long long)st->cmds_answered,
             (unsigned long long)st->cmds_failed, (unsigned long long)st->cmds_expired,
             (unsigned long long)st->cmd_responses_unexpected,
             (unsigned long long)st->cmd_frames_ignored, (unsigned long long)st->cmd_wakes,
             (unsigned long long)st->cmd_wakes_offline, (unsigned long long)st->cmd_sweeps,
             (unsigned long long)st->cmd_query_failures, (unsigned long long)st->registry_writes,
             (unsigned long long)st->registry_errors, (unsigned long long)st->replies_published,
             (unsigned long long)st->replies_unpublished);
}

/* The loop, from the metrics endpoint's start to every shard out of its loop. */
static int run_loop(struct shard *s)
{
    struct ingest_shared *sh = s->sh;
    if (s->id == 0 && s->cfg->metrics_fd >= 0) {
        s->metrics = metrics_create(sh, s->e, s->cfg->metrics_fd);
        if (!s->metrics)
            log_line(LOG_ERROR, "metrics: out of memory; not served", NULL);
    }
    int rc = engine_run(s->e);
    metrics_destroy(s->metrics);
    s->metrics = NULL;
    /* Out of the loop: this shard neither listens nor talks to the database any more (the
     * metrics and /healthz say so at once, even while it waits for the others below). */
    stat_set(&s->st->listening, 0);
    stat_set(&s->st->pg_up[0], 0);
    stat_set(&s->st->pg_up[1], 0);
    if (rc) {
        char what[160];
        snprintf(what, sizeof what, "shard %u: io_uring loop failed: %s; stopping the process",
                 s->id, strerror(-rc));
        log_line(LOG_ERROR, what, NULL);
        atomic_store(&sh->shard_failed, true); /* main stops the others */
    }
    say_stopped(s);
    /* Another shard may still post to this engine's mailboxes until its own loop ends. */
    atomic_fetch_add(&sh->loops_done, 1);
    while (atomic_load(&sh->loops_done) < s->cfg->shards)
        usleep(1000);
    return rc;
}

int ingest_shard_run(struct ingest_shared *sh, unsigned id)
{
    struct shard *s = calloc(1, sizeof *s);
    char err[512] = "";
    int rc = -ENOMEM;
    if (s) {
        s->sh = sh;
        s->cfg = sh->cfg;
        s->id = id;
        s->st = &sh->stats[id];
        rc = shard_setup(s, err, sizeof err);
        if (rc == 0)
            rc = engine_start(s, err, sizeof err);
    }
    if (rc) {
        atomic_store(&sh->start_error, rc);
        log_line(LOG_ERROR, err[0] ? err : "out of memory", NULL);
    } else if ((rc = join_peers(s)) == 0) {
        rc = run_loop(s);
    }
    if (s) {
        engine_free(s->e);
        shard_teardown(s);
        free(s);
    }
    atomic_fetch_add(&sh->shards_done, 1);
    return rc;
}
