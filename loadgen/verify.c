/* verify.c — loadgen's stored-exactly-once check (see verify.h). Runs once, on the main thread,
 * after the load: it may allocate (one counter byte per record sent) and block on libpq. */
#include "loadgen/verify.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Counts one row; counts[] saturates at 255. */
static void count_row(uint64_t v, uint64_t nonce, uint32_t devices, const uint64_t *first,
                      const uint32_t *sent, uint8_t *counts, struct verify_result *r)
{
    if ((v >> 52) != (nonce & ((1u << VERIFY_NONCE_BITS) - 1)) || (v >> 63)) {
        r->foreign++;
        return;
    }
    uint32_t g = (uint32_t)(v >> 32) & (VERIFY_DEVICES_MAX - 1);
    uint32_t rec = (uint32_t)v;
    r->stored++;
    if (g >= devices || rec >= sent[g]) {
        r->unexpected++;
        return;
    }
    uint8_t *c = &counts[first[g] + rec];
    if (*c < UINT8_MAX)
        (*c)++;
}

int verify_run(const char *conninfo, uint64_t imei_base, uint32_t devices, uint64_t nonce,
               const uint32_t *acked, const uint32_t *sent, struct verify_result *out, char *err,
               size_t err_cap)
{
    memset(out, 0, sizeof *out);
    int ret = -1;
    PGconn *pg = NULL;
    uint64_t *first = calloc((size_t)devices + 1, sizeof *first);
    uint8_t *counts = NULL;
    if (!first) {
        snprintf(err, err_cap, "verify: out of memory");
        goto done;
    }
    for (uint32_t g = 0; g < devices; g++) {
        first[g + 1] = first[g] + sent[g];
        out->acked += acked[g];
    }
    counts = calloc(first[devices] ? first[devices] : 1, 1);
    if (!counts) {
        snprintf(err, err_cap, "verify: out of memory for %" PRIu64 " records", first[devices]);
        goto done;
    }
    pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, err_cap, "verify: connect: %s", PQerrorMessage(pg));
        goto done;
    }
    /* The numbers are ours (integers), so the statement is built as text: COPY takes no
     * parameters. Streamed, so millions of rows cost no client memory. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "COPY (SELECT (io->>'%d')::bigint FROM telemetry.positions "
             "WHERE imei BETWEEN %" PRIu64 " AND %" PRIu64 " AND io ? '%d') TO STDOUT",
             VERIFY_IO_ID, imei_base, imei_base + devices - 1, VERIFY_IO_ID);
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_COPY_OUT) {
        snprintf(err, err_cap, "verify: %s", PQresultErrorMessage(res));
        PQclear(res);
        goto done;
    }
    PQclear(res);
    for (;;) {
        char *line = NULL;
        int n = PQgetCopyData(pg, &line, 0);
        if (n == -1)
            break; /* the COPY ended */
        if (n < 0) {
            snprintf(err, err_cap, "verify: reading rows: %s", PQerrorMessage(pg));
            goto done;
        }
        errno = 0;
        char *end;
        long long v = strtoll(line, &end, 10);
        if (errno || end == line || v < 0)
            out->unexpected++;
        else
            count_row((uint64_t)v, nonce, devices, first, sent, counts, out);
        PQfreemem(line);
    }
    res = PQgetResult(pg);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        snprintf(err, err_cap, "verify: %s", PQresultErrorMessage(res));
        PQclear(res);
        goto done;
    }
    PQclear(res);
    for (uint32_t g = 0; g < devices; g++) {
        for (uint32_t rec = 0; rec < sent[g]; rec++) {
            uint8_t c = counts[first[g] + rec];
            if (rec < acked[g] && c == 0)
                out->missing++;
            else if (c > 1)
                out->duplicated++;
            else if (rec >= acked[g] && c == 1)
                out->unacked_stored++;
        }
    }
    ret = 0;
done:
    PQfinish(pg);
    free(first);
    free(counts);
    return ret;
}
