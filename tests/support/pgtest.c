/* pgtest.c — see pgtest.h. Test-only: allocates freely; every failure fails the test. */
#include "tests/support/pgtest.h"
#include "tests/support/testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/pgschema.h"

static char server_conninfo[512];

const char *pgtest_server_conninfo(void)
{
    if (server_conninfo[0])
        return server_conninfo;
    const char *script = getenv("AVLGATE_PGTMP");
    const char *dir = getenv("AVLGATE_TEST_PGDIR");
    if (!script || !dir)
        fail_msg("AVLGATE_PGTMP and AVLGATE_TEST_PGDIR must be set (ctest sets them; by hand: "
                 "AVLGATE_PGTMP=tests/pg/pgtmp.sh AVLGATE_TEST_PGDIR=DIR after "
                 "`pgtmp.sh start DIR`)");
    char line[512];
    int status = tu_script(script, "conninfo", dir, line, sizeof line);
    if (!line[0] || status != 0)
        fail_msg("%s conninfo %s failed (status %d): is the pg fixture running?", script, dir,
                 status);
    snprintf(server_conninfo, sizeof server_conninfo, "%s", line);
    return server_conninfo;
}

const char *pgtest_schema_dir(void)
{
    return AVLGATE_SOURCE_DIR "/schema/postgres";
}

static PGconn *connect_or_fail(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", conninfo, PQerrorMessage(c));
    /* Notices (NOTICE ... skipping) are noise in test output; WARNINGs still show. */
    PGresult *r = PQexec(c, "SET client_min_messages = warning");
    PQclear(r);
    return c;
}

static void drop_database(const char *name)
{
    PGconn *admin = connect_or_fail(pgtest_server_conninfo());
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    pgtest_exec(admin, sql);
    PQfinish(admin);
}

void pgtest_db_create(struct pgtest_db *db, const char *tag, bool apply_schema)
{
    memset(db, 0, sizeof *db);
    size_t tag_len = strlen(tag);
    if (tag_len == 0 || tag_len > 40 ||
        strspn(tag, "abcdefghijklmnopqrstuvwxyz0123456789_") != tag_len)
        fail_msg("pgtest: bad tag '%s'", tag);
    snprintf(db->name, sizeof db->name, "test_%s_%ld", tag, (long)getpid());

    drop_database(db->name);
    PGconn *admin = connect_or_fail(pgtest_server_conninfo());
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db->name);
    pgtest_exec(admin, sql);
    PQfinish(admin);

    int n = snprintf(db->conninfo, sizeof db->conninfo, "%s dbname=%s", pgtest_server_conninfo(),
                     db->name);
    if (n < 0 || (size_t)n >= sizeof db->conninfo)
        fail_msg("pgtest: conninfo too long");
    db->conn = connect_or_fail(db->conninfo);
    if (apply_schema) {
        char err[1024];
        int rc = pgschema_apply(db->conn, pgtest_schema_dir(), err, sizeof err);
        if (rc <= 0)
            fail_msg("pgschema_apply %s: %d %s", pgtest_schema_dir(), rc, err);
    }
}

void pgtest_db_drop(struct pgtest_db *db)
{
    if (db->conn)
        PQfinish(db->conn);
    db->conn = NULL;
    if (db->name[0])
        drop_database(db->name);
    db->name[0] = '\0';
}

PGconn *pgtest_connect(const struct pgtest_db *db)
{
    return connect_or_fail(db->conninfo);
}

void pgtest_exec(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("SQL failed: %s\n  %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

PGresult *pgtest_query(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("query failed: %s\n  %s", sql, PQresultErrorMessage(r));
    return r;
}

char *pgtest_scalar(PGconn *conn, const char *sql, char *out, size_t cap)
{
    PGresult *r = pgtest_query(conn, sql);
    if (PQntuples(r) != 1 || PQnfields(r) != 1)
        fail_msg("expected one value from: %s (got %d rows, %d columns)", sql, PQntuples(r),
                 PQnfields(r));
    snprintf(out, cap, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}

long long pgtest_scalar_ll(PGconn *conn, const char *sql)
{
    char v[64];
    pgtest_scalar(conn, sql, v, sizeof v);
    char *end;
    long long n = strtoll(v, &end, 10);
    if (v[0] == '\0' || *end != '\0')
        fail_msg("not an integer: '%s' from %s", v, sql);
    return n;
}
