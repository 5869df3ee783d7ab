/* ingest.h — one gateway shard: the body of its thread, which run.c starts once per shard.
 *
 * A shard is an engine (shard/engine.h) and the gateway's modules on it (listed in
 * gateway/shard_state.h: sessions, the row ring, duplicate windows, command delivery, the Redis
 * registry and the command intake), wired together by gateway/ingest.c. What the shards share
 * is in gateway/shared.h. */
#ifndef AVLGATE_GATEWAY_INGEST_H
#define AVLGATE_GATEWAY_INGEST_H

#include "gateway/shared.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The body of shard thread `shard`: sets up its engine and sink, runs until shared->stop is
 * set, drains (stops accepting, commits and ACKs what it holds, within drain_timeout_ms),
 * closes, and returns 0, or a negative errno after printing what failed. */
int ingest_shard_run(struct ingest_shared *shared, unsigned shard);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_INGEST_H */
