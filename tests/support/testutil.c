/* testutil.c — see testutil.h. Test-only: allocates freely, aborts on I/O failure. */
#include "tests/support/testutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long tu_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t cap)
{
    if (hex_len % 2 != 0 || hex_len / 2 > cap)
        return -1;
    for (size_t i = 0; i < hex_len; i += 2) {
        int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(hex_len / 2);
}

void tu_hex_encode(const uint8_t *p, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * len] = '\0';
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "testutil: cannot open %s\n", path);
        abort();
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "testutil: cannot read %s\n", path);
        abort();
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

void tu_shared_path(char *out, size_t cap, const char *rel)
{
    int n = snprintf(out, cap, "%s/%s", AVLGATE_SHARED_DIR, rel);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "testutil: path too long: %s\n", rel);
        abort();
    }
}

int tu_split_tsv(char *line, char **cols, int cols_cap)
{
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    int k = 0;
    char *p = line;
    while (k < cols_cap) {
        cols[k++] = p;
        char *tab = strchr(p, '\t');
        if (!tab)
            break;
        *tab = '\0';
        p = tab + 1;
    }
    return k;
}

/* ---- seeded PRNG ------------------------------------------------------------------------- */

uint64_t tu_rand_u64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* ---- JSON reader ------------------------------------------------------------------------- */

enum { JSON_DEPTH_MAX = 64 };

struct json_parser {
    const char *p;
    const char *end;
    char *err;
    size_t err_cap;
    bool failed;
};

static void json_fail(struct json_parser *jp, const char *what)
{
    if (!jp->failed && jp->err && jp->err_cap > 0)
        snprintf(jp->err, jp->err_cap, "json: %s at byte '%.10s'", what,
                 jp->p < jp->end ? jp->p : "<end>");
    jp->failed = true;
}

static void json_skip_ws(struct json_parser *jp)
{
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
        jp->p++;
}

static bool json_literal(struct json_parser *jp, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
        return false;
    jp->p += n;
    return true;
}

static void utf8_put(char *out, size_t *n, uint32_t cp)
{
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | cp >> 6);
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | cp >> 12);
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | cp >> 18);
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static bool json_hex4(struct json_parser *jp, uint32_t *cp)
{
    if (jp->end - jp->p < 4)
        return false;
    *cp = 0;
    for (int i = 0; i < 4; i++) {
        int v = hexval(jp->p[i]);
        if (v < 0)
            return false;
        *cp = *cp << 4 | (uint32_t)v;
    }
    jp->p += 4;
    return true;
}

/* Parses a string at jp->p (which is '"') into a heap copy; NULL on error. */
static char *json_string(struct json_parser *jp, size_t *out_len)
{
    jp->p++; /* opening quote */
    /* The decoded text is never longer than the escaped text. */
    const char *q = jp->p;
    while (q < jp->end && *q != '"')
        q += (*q == '\\' && q + 1 < jp->end) ? 2 : 1;
    char *out = malloc((size_t)(q - jp->p) + 1);
    size_t n = 0;
    while (jp->p < jp->end && *jp->p != '"') {
        unsigned char c = (unsigned char)*jp->p++;
        if (c < 0x20) {
            json_fail(jp, "control character in string");
            free(out);
            return NULL;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (jp->p >= jp->end)
            break;
        char e = *jp->p++;
        uint32_t cp;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            out[n++] = e;
            break;
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'u':
            if (!json_hex4(jp, &cp)) {
                json_fail(jp, "bad \\u escape");
                free(out);
                return NULL;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && jp->end - jp->p >= 6 && jp->p[0] == '\\' &&
                jp->p[1] == 'u') {
                uint32_t lo;
                jp->p += 2;
                if (!json_hex4(jp, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    json_fail(jp, "bad surrogate pair");
                    free(out);
                    return NULL;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            /* A \uXXXX escape takes 6 bytes and yields at most 4 (or 12 -> 4). */
            utf8_put(out, &n, cp);
            break;
        default:
            json_fail(jp, "bad escape");
            free(out);
            return NULL;
        }
    }
    if (jp->p >= jp->end) {
        json_fail(jp, "unterminated string");
        free(out);
        return NULL;
    }
    jp->p++; /* closing quote */
    out[n] = '\0';
    *out_len = n;
    return out;
}

static bool json_number(struct json_parser *jp, struct tu_json *v)
{
    const char *start = jp->p;
    const char *q = jp->p;
    bool neg = false;
    if (q < jp->end && *q == '-') {
        neg = true;
        q++;
    }
    const char *digits = q;
    while (q < jp->end && *q >= '0' && *q <= '9')
        q++;
    if (q == digits)
        return false;
    bool is_int = true;
    if (q < jp->end && *q == '.') {
        is_int = false;
        q++;
        const char *frac = q;
        while (q < jp->end && *q >= '0' && *q <= '9')
            q++;
        if (q == frac)
            return false;
    }
    if (q < jp->end && (*q == 'e' || *q == 'E')) {
        is_int = false;
        q++;
        if (q < jp->end && (*q == '+' || *q == '-'))
            q++;
        const char *exp = q;
        while (q < jp->end && *q >= '0' && *q <= '9')
            q++;
        if (q == exp)
            return false;
    }
    char buf[64];
    size_t n = (size_t)(q - start);
    if (n >= sizeof buf)
        return false;
    memcpy(buf, start, n);
    buf[n] = '\0';
    v->type = TU_JSON_NUMBER;
    v->num = strtod(buf, NULL);
    v->num_neg = neg;
    if (is_int) {
        uint64_t u = 0;
        bool fits = true;
        for (const char *d = digits; d < q; d++) {
            unsigned dv = (unsigned)(*d - '0');
            if (u > (UINT64_MAX - dv) / 10)
                fits = false;
            u = u * 10 + dv;
        }
        if (fits && (!neg || u <= (uint64_t)INT64_MAX + 1)) {
            v->num_is_int = true;
            v->u = u;
            v->i = neg ? (int64_t)(0 - u) : (int64_t)u;
        }
    }
    jp->p = q;
    return true;
}

static bool json_value(struct json_parser *jp, struct tu_json *v, int depth);

static bool json_container(struct json_parser *jp, struct tu_json *v, int depth, bool object)
{
    char close = object ? '}' : ']';
    size_t cap = 0;
    v->type = object ? TU_JSON_OBJECT : TU_JSON_ARRAY;
    jp->p++;
    json_skip_ws(jp);
    if (jp->p < jp->end && *jp->p == close) {
        jp->p++;
        return true;
    }
    for (;;) {
        if (v->len == cap) {
            cap = cap ? cap * 2 : 4;
            v->items = realloc(v->items, cap * sizeof *v->items);
            if (object)
                v->keys = realloc(v->keys, cap * sizeof *v->keys);
        }
        struct tu_json *item = &v->items[v->len];
        memset(item, 0, sizeof *item);
        if (object) {
            size_t key_len;
            json_skip_ws(jp);
            if (jp->p >= jp->end || *jp->p != '"') {
                json_fail(jp, "expected a key");
                return false;
            }
            char *key = json_string(jp, &key_len);
            if (!key)
                return false;
            v->keys[v->len] = key;
            json_skip_ws(jp);
            if (jp->p >= jp->end || *jp->p != ':') {
                v->len++; /* the key is freed with the object */
                json_fail(jp, "expected ':'");
                return false;
            }
            jp->p++;
        }
        v->len++;
        if (!json_value(jp, item, depth + 1))
            return false;
        json_skip_ws(jp);
        if (jp->p < jp->end && *jp->p == ',') {
            jp->p++;
            continue;
        }
        if (jp->p < jp->end && *jp->p == close) {
            jp->p++;
            return true;
        }
        json_fail(jp, object ? "expected ',' or '}'" : "expected ',' or ']'");
        return false;
    }
}

static bool json_value(struct json_parser *jp, struct tu_json *v, int depth)
{
    if (depth > JSON_DEPTH_MAX) {
        json_fail(jp, "nested too deep");
        return false;
    }
    json_skip_ws(jp);
    if (jp->p >= jp->end) {
        json_fail(jp, "unexpected end");
        return false;
    }
    switch (*jp->p) {
    case '{':
        return json_container(jp, v, depth, true);
    case '[':
        return json_container(jp, v, depth, false);
    case '"':
        v->type = TU_JSON_STRING;
        v->str = json_string(jp, &v->str_len);
        return v->str != NULL;
    case 't':
    case 'f':
    case 'n':
        if (json_literal(jp, "true")) {
            v->type = TU_JSON_BOOL;
            v->boolean = true;
            return true;
        }
        if (json_literal(jp, "false")) {
            v->type = TU_JSON_BOOL;
            v->boolean = false;
            return true;
        }
        if (json_literal(jp, "null")) {
            v->type = TU_JSON_NULL;
            return true;
        }
        json_fail(jp, "bad literal");
        return false;
    default:
        if (json_number(jp, v))
            return true;
        json_fail(jp, "bad value");
        return false;
    }
}

static void json_free_children(struct tu_json *v)
{
    for (size_t i = 0; i < v->len; i++) {
        json_free_children(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

struct tu_json *tu_json_parse(const char *text, size_t len, char *err, size_t err_cap)
{
    struct json_parser jp = {.p = text, .end = text + len, .err = err, .err_cap = err_cap};
    struct tu_json *v = calloc(1, sizeof *v);
    if (json_value(&jp, v, 0)) {
        json_skip_ws(&jp);
        if (jp.p == jp.end)
            return v;
        json_fail(&jp, "trailing text");
    }
    json_free_children(v);
    free(v);
    return NULL;
}

void tu_json_free(struct tu_json *v)
{
    if (!v)
        return;
    json_free_children(v);
    free(v);
}

const struct tu_json *tu_json_get(const struct tu_json *v, const char *key)
{
    if (!v || v->type != TU_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->len; i++)
        if (strcmp(v->keys[i], key) == 0)
            return &v->items[i];
    return NULL;
}

int64_t tu_round_i64(double x)
{
    return x >= 0 ? (int64_t)(x + 0.5) : -(int64_t)(-x + 0.5);
}

/* ---- calendar ---------------------------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned mp = m > 2 ? m - 3 : m + 9; /* March = 0 */
    unsigned doy = (153 * mp + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool fixed_digits(const char *s, int n, unsigned *out)
{
    *out = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        *out = *out * 10 + (unsigned)(s[i] - '0');
    }
    return true;
}

bool tu_iso8601_ms(const char *s, size_t len, int64_t *ms)
{
    unsigned y, mo, d, h, mi, sec, frac = 0;
    if (len < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[len - 1] != 'Z')
        return false;
    if (!fixed_digits(s, 4, &y) || !fixed_digits(s + 5, 2, &mo) || !fixed_digits(s + 8, 2, &d) ||
        !fixed_digits(s + 11, 2, &h) || !fixed_digits(s + 14, 2, &mi) ||
        !fixed_digits(s + 17, 2, &sec))
        return false;
    if (len == 24) {
        if (s[19] != '.' || !fixed_digits(s + 20, 3, &frac))
            return false;
    } else if (len != 20) {
        return false;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    int64_t days = days_from_civil(y, mo, d);
    *ms = ((days * 24 + h) * 60 + mi) * 60000 + (int64_t)sec * 1000 + frac;
    return true;
}

/* ---- codec helpers ----------------------------------------------------------------------- */

struct avl_io_elem *tu_record_srcs(const struct avl_record *recs, size_t n,
                                   struct avl_record_src *src)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += recs[i].io_total;
    struct avl_io_elem *elems = calloc(total ? total : 1, sizeof *elems);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        struct avl_io_iter it;
        struct avl_io io;
        memset(&src[i], 0, sizeof src[i]);
        src[i].rec = recs[i];
        src[i].io = &elems[k];
        avl_io_iter_init(&it, &recs[i]);
        while (k < total && avl_io_next(&it, &io)) {
            elems[k].id = io.id;
            elems[k].width = io.nx ? 0 : (uint8_t)io.len;
            elems[k].nx_len = io.nx ? io.len : 0;
            elems[k].value = io.value;
            elems[k].nx = io.nx ? io.bytes : NULL;
            k++;
            src[i].io_len++;
        }
    }
    return elems;
}

uint64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int tu_script(const char *script, const char *verb, const char *dir, char *out, size_t cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s '%s'", script, verb, dir);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char line[512] = "";
    if (fgets(line, sizeof line, p) == NULL)
        line[0] = '\0';
    int status = pclose(p);
    if (out && cap > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        snprintf(out, cap, "%s", line);
    }
    return status;
}
