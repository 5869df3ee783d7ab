/* pgtest.h — a database of its own for each PostgreSQL integration test.
 *
 * The server is the one the ctest fixture "pg" starts (tests/pg/pgtmp.sh, in
 * $AVLGATE_TEST_PGDIR; $AVLGATE_PGTMP is the script). Each test creates database
 * test_<tag>_<pid>, optionally applies schema/postgres with pgschema_apply, and drops it at the
 * end, so tests never see each other's rows. Test-only code: every failure fails the test
 * (cmocka fail_msg) with the server's message; nothing is skipped.
 */
#ifndef AVLGATE_TESTS_SUPPORT_PGTEST_H
#define AVLGATE_TESTS_SUPPORT_PGTEST_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

struct pgtest_db {
    char name[64];      /* test_<tag>_<pid> */
    char conninfo[512]; /* of this database */
    PGconn *conn;       /* connected to it */
};

/* The conninfo of the fixture's server (database avlgate), from `pgtmp.sh conninfo`. Cached;
 * static storage. */
const char *pgtest_server_conninfo(void);

/* The schema folder of the source tree (AVLGATE_SOURCE_DIR "/schema/postgres"). */
const char *pgtest_schema_dir(void);

/* Creates a fresh database for tag ([a-z0-9_], at most 40 bytes), connects db->conn to it
 * and, if apply_schema, applies the schema. Drops a leftover database of the same name. */
void pgtest_db_create(struct pgtest_db *db, const char *tag, bool apply_schema);

/* Closes db->conn and drops the database (WITH (FORCE): other connections are ended). */
void pgtest_db_drop(struct pgtest_db *db);

/* Another connection to db; PQfinish it. */
PGconn *pgtest_connect(const struct pgtest_db *db);

/* Runs sql (one or more statements); fails the test unless it succeeds. */
void pgtest_exec(PGconn *conn, const char *sql);

/* Runs a query that returns rows; fails the test unless it does. PQclear the result. */
PGresult *pgtest_query(PGconn *conn, const char *sql);

/* The single value of a one-row, one-column query as text into out ("" for NULL); returns
 * out. Fails the test for any other shape. */
char *pgtest_scalar(PGconn *conn, const char *sql, char *out, size_t cap);

/* pgtest_scalar parsed as a long long. */
long long pgtest_scalar_ll(PGconn *conn, const char *sql);

#ifdef __cplusplus
}
#endif

#endif
