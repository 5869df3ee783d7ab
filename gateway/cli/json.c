/* json.c — owns the CLI's JSON output: a buffered writer over a FILE that places commas and
 * colons from a small stack of open containers (so a caller cannot emit malformed JSON
 * without tripping an assertion), string escaping, and UTF-8 validation. No allocation.
 * A writer belongs to one thread. */
#include "gateway/cli/json.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

void json_init(struct json_out *j, FILE *f)
{
    assert(f != NULL);
    j->f = f;
    j->err = 0;
    j->depth = 0;
    j->after_key = false;
    j->len = 0;
}

int json_flush(struct json_out *j)
{
    if (j->len > 0 && j->err == 0) {
        errno = 0;
        if (fwrite(j->buf, 1, j->len, j->f) != j->len)
            j->err = errno ? -errno : -EIO;
    }
    j->len = 0;
    return j->err;
}

static void put(struct json_out *j, const char *p, size_t n)
{
    while (n > 0) {
        if (j->len == sizeof j->buf)
            json_flush(j);
        size_t room = sizeof j->buf - j->len;
        size_t k = n < room ? n : room;
        memcpy(j->buf + j->len, p, k);
        j->len += k;
        p += k;
        n -= k;
    }
}

static void putc1(struct json_out *j, char c)
{
    if (j->len == sizeof j->buf)
        json_flush(j);
    j->buf[j->len++] = c;
}

/* Called before every value and every key: writes the comma that separates it from the
 * previous member, and checks that a value (or key) is what the grammar expects here. */
static void before(struct json_out *j, bool is_key)
{
    if (j->depth == 0) {
        assert(!is_key);
        return;
    }
    unsigned top = j->depth - 1;
    if (j->after_key) {
        assert(!is_key);
        j->after_key = false;
        return;
    }
    /* In an object only keys start a member; in an array only values. */
    assert(j->in_object[top] == is_key);
    if (j->has_member[top])
        putc1(j, ',');
    j->has_member[top] = true;
}

static void open_container(struct json_out *j, bool object)
{
    before(j, false);
    assert(j->depth < JSON_DEPTH_MAX);
    j->in_object[j->depth] = object;
    j->has_member[j->depth] = false;
    j->depth++;
    putc1(j, object ? '{' : '[');
}

static void close_container(struct json_out *j, bool object)
{
    assert(j->depth > 0);
    assert(j->in_object[j->depth - 1] == object);
    assert(!j->after_key);
    j->depth--;
    putc1(j, object ? '}' : ']');
}

void json_object_begin(struct json_out *j)
{
    open_container(j, true);
}

void json_object_end(struct json_out *j)
{
    close_container(j, true);
}

void json_array_begin(struct json_out *j)
{
    open_container(j, false);
}

void json_array_end(struct json_out *j)
{
    close_container(j, false);
}

static void put_escaped(struct json_out *j, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    putc1(j, '"');
    size_t run = 0; /* start of the bytes not yet written */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
            continue;
        put(j, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(j, esc, 2);
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(j, esc, 6);
        }
    }
    put(j, s + run, n - run);
    putc1(j, '"');
}

void json_key(struct json_out *j, const char *key)
{
    size_t n = strlen(key);
    assert(json_utf8_valid((const uint8_t *)key, n));
    before(j, true);
    put_escaped(j, key, n);
    putc1(j, ':');
    j->after_key = true;
}

/* Writes v in decimal into the end of out[0 .. 19]; returns the first digit. */
static char *u64_digits(uint64_t v, char out[20])
{
    char *p = out + 20;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return p;
}

void json_key_u64(struct json_out *j, uint64_t key)
{
    char digits[20];
    char *p = u64_digits(key, digits);
    before(j, true);
    putc1(j, '"');
    put(j, p, (size_t)(digits + sizeof digits - p));
    putc1(j, '"');
    putc1(j, ':');
    j->after_key = true;
}

void json_strn(struct json_out *j, const char *s, size_t n)
{
    assert(json_utf8_valid((const uint8_t *)s, n));
    before(j, false);
    put_escaped(j, s, n);
}

void json_str(struct json_out *j, const char *s)
{
    json_strn(j, s, strlen(s));
}

void json_hex(struct json_out *j, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    before(j, false);
    putc1(j, '"');
    for (size_t i = 0; i < n; i++) {
        char pair[2] = {hex[p[i] >> 4], hex[p[i] & 15]};
        put(j, pair, 2);
    }
    putc1(j, '"');
}

void json_u64(struct json_out *j, uint64_t v)
{
    char digits[20];
    char *p = u64_digits(v, digits);
    before(j, false);
    put(j, p, (size_t)(digits + sizeof digits - p));
}

void json_i64(struct json_out *j, int64_t v)
{
    char digits[20];
    /* The magnitude of INT64_MIN fits a uint64_t; negate in unsigned arithmetic. */
    uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    char *p = u64_digits(mag, digits);
    before(j, false);
    if (v < 0)
        putc1(j, '-');
    put(j, p, (size_t)(digits + sizeof digits - p));
}

void json_bool(struct json_out *j, bool v)
{
    before(j, false);
    if (v)
        put(j, "true", 4);
    else
        put(j, "false", 5);
}

void json_null(struct json_out *j)
{
    before(j, false);
    put(j, "null", 4);
}

void json_newline(struct json_out *j)
{
    assert(j->depth == 0);
    assert(!j->after_key);
    putc1(j, '\n');
}

bool json_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* The allowed range of the second byte narrows for E0 (overlong), ED (surrogates),
         * F0 (overlong) and F4 (above U+10FFFF); C0, C1 and F5..FF never start a sequence. */
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
        }
        i += len;
    }
    return true;
}
