/* verify.c — loadgen's stored-exactly-once check (see verify.h). Runs once, on the main thread,
 * after the load: it may allocate (one counter byte per record sent) and block on libpq. */
#include "loadgen/verify.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

/* The check's state: one counter per record sent, device g's records from first[g]. */
struct tally {
    uint64_t nonce;
    uint32_t devices;
    const uint32_t *acked, *sent;
    uint64_t *first; /* devices + 1 prefix sums of sent[] */
    uint8_t *counts; /* rows seen per record, saturating at 255 */
    struct verify_result *r;
};

/* Sizes the tally from sent[] and sums acked[]. Returns 0, or -1 with a message in err. */
static int tally_init(struct tally *t, char *err, size_t err_cap)
{
    t->first = calloc((size_t)t->devices + 1, sizeof *t->first);
    if (!t->first) {
        snprintf(err, err_cap, "verify: out of memory");
        return -1;
    }
    for (uint32_t g = 0; g < t->devices; g++) {
        t->first[g + 1] = t->first[g] + t->sent[g];
        t->r->acked += t->acked[g];
    }
    uint64_t records = t->first[t->devices];
    t->counts = calloc(records ? records : 1, 1);
    if (!t->counts) {
        snprintf(err, err_cap, "verify: out of memory for %" PRIu64 " records", records);
        return -1;
    }
    return 0;
}

/* Counts one row (a sequence value, see verify.h). */
static void tally_row(struct tally *t, uint64_t v)
{
    struct verify_result *r = t->r;
    if ((v >> 52) != (t->nonce & ((1u << VERIFY_NONCE_BITS) - 1)) || (v >> 63)) {
        r->foreign++;
        return;
    }
    uint32_t g = (uint32_t)(v >> 32) & (VERIFY_DEVICES_MAX - 1);
    uint32_t rec = (uint32_t)v;
    r->stored++;
    if (g >= t->devices || rec >= t->sent[g]) {
        r->unexpected++;
        return;
    }
    uint8_t *c = &t->counts[t->first[g] + rec];
    if (*c < UINT8_MAX)
        (*c)++;
}

/* Whether telemetry.positions has the IO arrays (schema 006); a database from before them
 * holds every row's IO in io jsonb. */
static bool has_io_arrays(PGconn *pg)
{
    PGresult *res = PQexec(pg, "SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid ="
                               " pg_catalog.to_regclass('telemetry.positions')"
                               " AND attname = 'io_ids' AND NOT attisdropped");
    bool yes = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
               strcmp(PQgetvalue(res, 0, 0), "1") == 0;
    PQclear(res);
    return yes;
}

/* Streams the sequence of every row of the run's IMEIs into the tally (one COPY ... TO
 * STDOUT), from the arrays or the jsonb of each row, whichever holds it. Returns 0, or -1
 * with a message in err. */
static int tally_rows(struct tally *t, PGconn *pg, uint64_t imei_base, char *err, size_t err_cap)
{
    /* The numbers are ours (integers), so the statement is built as text: COPY takes no
     * parameters. Streamed, so millions of rows cost no client memory. */
    char value[160], sql[640];
    if (has_io_arrays(pg))
        snprintf(value, sizeof value,
                 "COALESCE(io_vals[array_position(io_ids, %d)], (io->>'%d')::bigint)", VERIFY_IO_ID,
                 VERIFY_IO_ID);
    else
        snprintf(value, sizeof value, "(io->>'%d')::bigint", VERIFY_IO_ID);
    snprintf(sql, sizeof sql,
             "COPY (SELECT v FROM (SELECT %s AS v FROM telemetry.positions"
             " WHERE imei BETWEEN %" PRIu64 " AND %" PRIu64 ") s WHERE v IS NOT NULL) TO STDOUT",
             value, imei_base, imei_base + t->devices - 1);
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_COPY_OUT) {
        snprintf(err, err_cap, "verify: %s", PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    PQclear(res);
    for (;;) {
        char *line = NULL;
        int n = PQgetCopyData(pg, &line, 0);
        if (n == -1)
            break; /* the COPY ended */
        if (n < 0) {
            snprintf(err, err_cap, "verify: reading rows: %s", PQerrorMessage(pg));
            return -1;
        }
        errno = 0;
        char *end;
        long long v = strtoll(line, &end, 10);
        if (errno || end == line || v < 0)
            t->r->unexpected++;
        else
            tally_row(t, (uint64_t)v);
        PQfreemem(line);
    }
    res = PQgetResult(pg);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc)
        snprintf(err, err_cap, "verify: %s", PQresultErrorMessage(res));
    PQclear(res);
    return rc;
}

/* Judges every record sent from the rows counted: missing, duplicated, or stored unacked. */
static void tally_records(const struct tally *t)
{
    struct verify_result *r = t->r;
    for (uint32_t g = 0; g < t->devices; g++) {
        for (uint32_t rec = 0; rec < t->sent[g]; rec++) {
            uint8_t c = t->counts[t->first[g] + rec];
            if (rec < t->acked[g] && c == 0)
                r->missing++;
            else if (c > 1)
                r->duplicated++;
            else if (rec >= t->acked[g] && c == 1)
                r->unacked_stored++;
        }
    }
}

int verify_run(const char *conninfo, uint64_t imei_base, uint32_t devices, uint64_t nonce,
               const uint32_t *acked, const uint32_t *sent, struct verify_result *out, char *err,
               size_t err_cap)
{
    memset(out, 0, sizeof *out);
    struct tally t = {.nonce = nonce, .devices = devices, .acked = acked, .sent = sent, .r = out};
    int ret = -1;
    PGconn *pg = NULL;
    if (tally_init(&t, err, err_cap) != 0)
        goto done;
    pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, err_cap, "verify: connect: %s", PQerrorMessage(pg));
        goto done;
    }
    if (tally_rows(&t, pg, imei_base, err, err_cap) != 0)
        goto done;
    tally_records(&t);
    ret = 0;
done:
    PQfinish(pg);
    free(t.first);
    free(t.counts);
    return ret;
}
