/* testutil.h — helpers shared by the cmocka tests: hex, files, the shared/ folder, TSV rows.
 * Test-only code: it may allocate and abort on failure. */
#ifndef AVLGATE_TESTS_SUPPORT_TESTUTIL_H
#define AVLGATE_TESTS_SUPPORT_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "codec/avl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Decodes hex (upper or lower case, no separators) into out. Returns the byte count, or -1 if
 * the text is not an even number of hex digits or does not fit cap. */
long tu_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t cap);

/* Writes len bytes as lowercase hex and a NUL into out (2 * len + 1 bytes). */
void tu_hex_encode(const uint8_t *p, size_t len, char *out);

/* Reads a whole file into a NUL-terminated heap buffer (free() it); aborts the test run with a
 * message naming the path if it cannot be read. *len may be NULL. */
char *tu_read_file(const char *path, size_t *len);

/* Writes AVLGATE_SHARED_DIR "/" rel into out (PATH_MAX bytes). */
void tu_shared_path(char *out, size_t cap, const char *rel);

/* Splits line (modified in place) at tabs into at most cols_cap columns; returns the count.
 * A trailing '\n' or "\r\n" is removed first. */
int tu_split_tsv(char *line, char **cols, int cols_cap);

/* ---- strings in messages ---------------------------------------------------------------- */

/* Whether needle occurs in haystack. */
static inline bool tu_contains(const char *haystack, const char *needle)
{
    return strstr(haystack, needle) != NULL;
}

/* Fail the running cmocka test (the test file includes cmocka.h) unless h contains n, or
 * when it does. */
#define assert_contains(h, n)                                                                      \
    do {                                                                                           \
        if (!tu_contains((h), (n)))                                                                \
            fail_msg("'%s' does not contain '%s'", (h), (n));                                      \
    } while (0)

#define assert_not_contains(h, n)                                                                  \
    do {                                                                                           \
        if (tu_contains((h), (n)))                                                                 \
            fail_msg("'%s' contains '%s'", (h), (n));                                              \
    } while (0)

/* ---- seeded PRNG (splitmix64): the same sequence on every run and machine ---------------- */

uint64_t tu_rand_u64(uint64_t *state);

/* ---- minimal JSON reader: objects, arrays, strings, numbers, true/false/null ------------- */

enum tu_json_type {
    TU_JSON_NULL,
    TU_JSON_BOOL,
    TU_JSON_NUMBER,
    TU_JSON_STRING,
    TU_JSON_ARRAY,
    TU_JSON_OBJECT,
};

/* One parsed value. A number keeps its double value and, when it is written as an integer
 * (no fraction or exponent) that fits, the exact integer in i (signed) or u (magnitude). */
struct tu_json {
    enum tu_json_type type;
    bool boolean;
    double num;
    bool num_is_int;
    bool num_neg;
    uint64_t u;
    int64_t i;
    char *str; /* NUL-terminated UTF-8; str_len excludes the NUL */
    size_t str_len;
    struct tu_json *items; /* array elements or object values */
    char **keys;           /* object keys, parallel to items */
    size_t len;
};

/* Parses one JSON value that spans text[0 .. len-1] (surrounding whitespace allowed). Returns
 * a heap tree (tu_json_free it) or NULL with a message in err (err_cap bytes) on bad input. */
struct tu_json *tu_json_parse(const char *text, size_t len, char *err, size_t err_cap);
void tu_json_free(struct tu_json *v);
/* The member named key of an object, or NULL if v is not an object or has no such key. */
const struct tu_json *tu_json_get(const struct tu_json *v, const char *key);

/* Rounds to the nearest integer, halves away from zero (llround without libm, which the
 * test targets do not link). */
int64_t tu_round_i64(double x);

/* ---- clocks ------------------------------------------------------------------------------ */

/* CLOCK_MONOTONIC in ms (the clock pgsink and redislink take their now_ms from). */
uint64_t tu_now_ms(void);

/* ---- the throwaway-server scripts (tests/pg/pgtmp.sh, tests/redis/redistmp.sh) ---------- */

/* Runs `'script' verb 'dir'` and returns its exit status; its first output line (without the
 * newline) goes to out when out is not NULL ("" when it printed nothing). */
int tu_script(const char *script, const char *verb, const char *dir, char *out, size_t cap);

/* ---- calendar ---------------------------------------------------------------------------- */

/* Parses "YYYY-MM-DDTHH:MM:SS[.fff]Z" (UTC) into ms since 1970; false if it is not that. */
bool tu_iso8601_ms(const char *s, size_t len, int64_t *ms);

/* ---- codec helpers shared by the golden-vector and corpus tests --------------------------- */

/* Fills src[0 .. n-1] from decoded records so the encoder can rebuild them: the fixed fields
 * are copied and each record's IO elements are read back with avl_io_next. The element arrays
 * live in one heap block that is returned (free() it); NX values point into the packet. */
struct avl_io_elem *tu_record_srcs(const struct avl_record *recs, size_t n,
                                   struct avl_record_src *src);

#ifdef __cplusplus
}
#endif

#endif
