/* hexline.c — owns the text side of `avlgate decode`: one physical line in, the packet's bytes
 * (or why there are none) out. The line is decoded character by character as it is read, so
 * the memory a line costs is its decoded bytes, bounded by bytes_max, whatever its length in
 * text. Single-threaded: a reader belongs to the caller's thread (it uses getc_unlocked). */
#include "gateway/cli/hexline.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

enum { HEXLINE_BYTES_CAP_MIN = 4096 };

void hexline_init(struct hexline_reader *r, FILE *in, size_t bytes_max)
{
    assert(in != NULL);
    assert(bytes_max > 0);
    *r = (struct hexline_reader){.in = in, .bytes_max = bytes_max};
}

void hexline_free(struct hexline_reader *r)
{
    free(r->bytes);
    r->bytes = NULL;
    r->bytes_len = 0;
    r->bytes_cap = 0;
}

int hexline_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool is_blank(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Makes room for one more byte. */
static int grow(struct hexline_reader *r)
{
    assert(r->bytes_len == r->bytes_cap);
    assert(r->bytes_cap < r->bytes_max);
    size_t cap =
        r->bytes_cap < HEXLINE_BYTES_CAP_MIN / 2 ? HEXLINE_BYTES_CAP_MIN : r->bytes_cap * 2;
    if (cap > r->bytes_max)
        cap = r->bytes_max;
    uint8_t *p = realloc(r->bytes, cap);
    if (!p)
        return -ENOMEM;
    r->bytes = p;
    r->bytes_cap = cap;
    return 0;
}

static int read_error(void)
{
    return errno ? -errno : -EIO;
}

/* After a line's first '0': true if an 'x' or 'X' followed (taken: the 0x prefix); otherwise
 * the character after the '0' is left to be read. */
static bool hex_prefix(FILE *in)
{
    int x = getc_unlocked(in);
    if (x == 'x' || x == 'X')
        return true;
    if (x != EOF)
        ungetc(x, in);
    return false;
}

/* What a line read to its end was: kind (HEXLINE_BYTES unless a problem turned it), whether it
 * had any text, whether a nibble was left over. Keeps the bytes only for HEXLINE_BYTES. */
static int verdict(struct hexline_reader *r, enum hexline_kind kind, bool seen_text, bool odd_digit)
{
    if (kind != HEXLINE_BYTES) {
        r->bytes_len = 0;
        return kind;
    }
    if (!seen_text)
        return HEXLINE_SKIP;
    /* An odd digit count, or "0x" with nothing after it. */
    if (odd_digit || r->bytes_len == 0) {
        r->bytes_len = 0;
        return HEXLINE_BAD_HEX;
    }
    assert(r->bytes_len <= r->bytes_max);
    return HEXLINE_BYTES;
}

int hexline_next(struct hexline_reader *r)
{
    FILE *in = r->in;
    r->bytes_len = 0;
    errno = 0;

    int c = getc_unlocked(in);
    if (c == EOF)
        return ferror(in) ? read_error() : HEXLINE_EOF;
    r->line++;

    /* kind turns from HEXLINE_BYTES into the verdict at the first problem; the rest of the
     * line is then read and dropped. */
    enum hexline_kind kind = HEXLINE_BYTES;
    bool seen_text = false; /* a non-blank character of this line */
    int hi = -1;            /* the pending high nibble */
    for (; c != EOF && c != '\n'; c = getc_unlocked(in)) {
        if (kind != HEXLINE_BYTES || is_blank(c))
            continue;
        if (!seen_text) {
            seen_text = true;
            if (c == '#') {
                kind = HEXLINE_SKIP;
                continue;
            }
            if (c == '0' && hex_prefix(in))
                continue;
        }
        int d = hexline_digit(c);
        if (d < 0) {
            kind = HEXLINE_BAD_HEX;
            continue;
        }
        if (hi < 0) {
            hi = d;
            continue;
        }
        if (r->bytes_len == r->bytes_max) {
            kind = HEXLINE_TOO_LONG;
            continue;
        }
        if (r->bytes_len == r->bytes_cap) {
            int err = grow(r);
            if (err < 0)
                return err;
        }
        r->bytes[r->bytes_len++] = (uint8_t)(hi << 4 | d);
        hi = -1;
    }
    if (c == EOF && ferror(in))
        return read_error();

    return verdict(r, kind, seen_text, hi >= 0);
}
