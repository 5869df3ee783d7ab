/* json.h — a small streaming JSON writer (JSON Lines: one value per line) and a UTF-8
 * validator, for the CLI's machine-readable output. */
#ifndef AVLGATE_GATEWAY_CLI_JSON_H
#define AVLGATE_GATEWAY_CLI_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    JSON_DEPTH_MAX = 8,    /* nesting of objects and arrays */
    JSON_BUF_BYTES = 8192, /* bytes buffered before a write to the FILE */
};

/* The writer puts commas and colons itself: call json_key before each member of an object,
 * and nothing between array elements. Misuse (a key in an array, a value where a key is due,
 * nesting past JSON_DEPTH_MAX) is a programmer error and asserts. */
struct json_out {
    FILE *f;                         /* not owned */
    int err;                         /* the first write error, -errno; sticky */
    unsigned depth;                  /* open containers */
    bool after_key;                  /* a key was written, its value is due */
    bool in_object[JSON_DEPTH_MAX];  /* container at depth i+1 is an object, else an array */
    bool has_member[JSON_DEPTH_MAX]; /* container at depth i+1 holds a member already */
    size_t len;                      /* bytes in buf */
    char buf[JSON_BUF_BYTES];
};

void json_init(struct json_out *j, FILE *f);
/* Writes the buffered bytes to the FILE (fwrite, no fflush). Returns 0, or the sticky -errno
 * of the first failed write; after a failure the writer drops its output. */
int json_flush(struct json_out *j);

void json_object_begin(struct json_out *j);
void json_object_end(struct json_out *j);
void json_array_begin(struct json_out *j);
void json_array_end(struct json_out *j);
/* The next member's name: a NUL-terminated string (valid UTF-8), or a decimal number. */
void json_key(struct json_out *j, const char *key);
void json_key_u64(struct json_out *j, uint64_t key);

/* Values. json_strn takes n bytes that must be valid UTF-8 (check with json_utf8_valid):
 * ", \ and the control characters U+0000..U+001F and U+007F are escaped (\", \\, \u00XX);
 * everything else is copied as is. json_hex writes the bytes as a string of lowercase hex. */
void json_str(struct json_out *j, const char *s);
void json_strn(struct json_out *j, const char *s, size_t n);
void json_hex(struct json_out *j, const uint8_t *p, size_t n);
void json_u64(struct json_out *j, uint64_t v);
void json_i64(struct json_out *j, int64_t v);
void json_bool(struct json_out *j, bool v);
void json_null(struct json_out *j);
/* Ends a complete top-level value with '\n' (JSON Lines). */
void json_newline(struct json_out *j);

/* True if p[0 .. n-1] is well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence. */
bool json_utf8_valid(const uint8_t *p, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_CLI_JSON_H */
