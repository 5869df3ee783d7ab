/* pgschema.h — the PostgreSQL schema as the gateway needs it: check, apply, partitions.
 *
 * Start-up and maintenance code: blocking libpq on a connection the caller owns and that is
 * idle (not in a transaction, not in pipeline or non-blocking mode). Never called on the hot
 * path. Errors are described into err (err_cap bytes, always NUL-terminated when err_cap > 0);
 * the caller decides whether to log or exit.
 */
#ifndef AVLGATE_GATEWAY_PGSCHEMA_H
#define AVLGATE_GATEWAY_PGSCHEMA_H

#include <stddef.h>

#include <libpq-fe.h>

#include "gateway/copyenc.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PGSCHEMA_E_FAIL = -1,  /* see err */
    PGSCHEMA_E_AGAIN = -2, /* ensure_partitions: some days could not be made now; retry later */
    PGSCHEMA_FILES_MAX = 256,
    PGSCHEMA_FILE_BYTES_MAX = 1 << 20,
};

/* Verifies that everything the gateway writes or calls exists as it expects: the columns of
 * telemetry.positions that the IO layout writes (copyenc_columns; names and types,
 * range-partitioned by ts, with a DEFAULT partition, and no other NOT NULL column without a
 * default), of public.device_state (and its unique index on imei), public.devices (imei, enabled),
 * and the functions telemetry.device_state_upsert, telemetry.device_state_get and
 * telemetry.ensure_partitions with their signatures and result types. Reads pg_catalog only, so it
 * works on any database. Returns 0, or PGSCHEMA_E_FAIL with every problem in err, separated by ";
 * ", e.g. "telemetry.positions.io_vals: expected bigint[], found integer[];
 * public.device_state.dedup: missing". */
int pgschema_check(PGconn *conn, enum copyenc_layout layout, char *err, size_t err_cap);

/* Applies every *.sql file of dir in file-name order (strcmp), each as one query string (the
 * files hold their own BEGIN/COMMIT; they are idempotent). Stops at the first failure and
 * returns PGSCHEMA_E_FAIL with the file and the server's message in err, after rolling back
 * a transaction the file left open. Returns the number of files applied (> 0); a dir without
 * .sql files is an error. At most PGSCHEMA_FILES_MAX files of PGSCHEMA_FILE_BYTES_MAX each. */
int pgschema_apply(PGconn *conn, const char *dir, char *err, size_t err_cap);

/* Calls telemetry.ensure_partitions(days_ahead): the daily partitions of today .. today +
 * days_ahead (UTC), made without blocking COPY. Returns the number made (>= 0, 0 when all
 * existed); PGSCHEMA_E_AGAIN when some days could not be made within the function's lock
 * timeout (err says how many; their rows go to the default partition meanwhile); or
 * PGSCHEMA_E_FAIL. */
int pgschema_ensure_partitions(PGconn *conn, int days_ahead, char *err, size_t err_cap);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_PGSCHEMA_H */
