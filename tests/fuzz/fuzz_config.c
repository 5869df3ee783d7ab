/* fuzz_config.c — libFuzzer target over `avlgate run`'s config-file reader (config_read_file,
 * gateway/config.h): the whole input is a config file, read over the defaults. Neither the
 * environment nor argv is read.
 *
 * Invariants (a broken one calls __builtin_trap() after printing which):
 *   - the reader returns 0 or 2; on 2 it wrote exactly one message, one line,
 *     "avlgate run: config fuzz.conf:N: why" with N a line of the input; on 0 nothing;
 *   - a file it takes prints (config_print) and round-trips through --print-config: the text
 *     without pg (printed masked, so not as it was), read over the defaults, is taken too and
 *     prints the same (each line's `# source` comment aside);
 *   - nothing leaks (config_free), nothing is read or written out of bounds (ASan).
 * Single-threaded, as libFuzzer calls it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_config: invariant failed at line %d: %s\n", __LINE__, #cond);    \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* A memory stream's text, NUL-terminated, in *text (free it). */
struct sink {
    FILE *f;
    char *text;
    size_t len;
};

static void sink_open(struct sink *s)
{
    s->text = NULL;
    s->len = 0;
    s->f = open_memstream(&s->text, &s->len);
    if (!s->f)
        abort();
}

static void sink_close(struct sink *s)
{
    if (fclose(s->f) != 0)
        abort();
}

/* config_read_file over the defaults, from an exact copy of p[0 .. n); the message, if any, in
 * err (free err->text). */
static int read_config(const char *p, size_t n, struct run_options *o, struct sink *err)
{
    config_defaults(o);
    char *copy = malloc(n ? n : 1);
    if (!copy)
        abort();
    memcpy(copy, p, n);
    sink_open(err);
    int rc = 0;
    if (n > 0) { /* fmemopen takes no empty buffer; an empty file sets nothing */
        FILE *f = fmemopen(copy, n, "r");
        if (!f)
            abort();
        rc = config_read_file(o, f, "fuzz.conf", err->f);
        fclose(f);
    }
    sink_close(err);
    free(copy);
    return rc;
}

/* How many lines the reader can have counted in p[0 .. n): it reads at most 4095 bytes a time. */
static size_t lines_max(const char *p, size_t n)
{
    size_t lines = n / 4095 + 1;
    for (size_t i = 0; i < n; i++)
        lines += p[i] == '\n';
    return lines;
}

static void check_message(const char *p, size_t n, int rc, const struct sink *err)
{
    CHECK(rc == 0 || rc == 2);
    if (rc == 0) {
        CHECK(err->len == 0);
        return;
    }
    static const char prefix[] = "avlgate run: config fuzz.conf:";
    CHECK(err->len > sizeof prefix && strncmp(err->text, prefix, sizeof prefix - 1) == 0);
    CHECK(err->text[err->len - 1] == '\n' && strchr(err->text, '\n') == err->text + err->len - 1);
    char *end;
    unsigned long line = strtoul(err->text + sizeof prefix - 1, &end, 10);
    CHECK(*end == ':' && line >= 1 && line <= lines_max(p, n));
}

/* config_print's text without each line's trailing `  # source` comment. */
static char *printed(const struct run_options *o)
{
    struct sink s;
    sink_open(&s);
    config_print(o, s.f);
    sink_close(&s);
    char *out = malloc(s.len + 1), *w = out;
    if (!out)
        abort();
    for (char *line = s.text; *line;) {
        char *eol = strchr(line, '\n');
        CHECK(eol != NULL); /* every printed line ends */
        *eol = '\0';
        char *src = strstr(line, "  # "), *next;
        while (src && (next = strstr(src + 1, "  # ")) != NULL)
            src = next; /* the last one: a quoted value may hold "  # " */
        size_t keep = src && line[0] != '#' ? (size_t)(src - line) : strlen(line);
        memcpy(w, line, keep);
        w += keep;
        *w++ = '\n';
        line = eol + 1;
    }
    *w = '\0';
    free(s.text);
    return out;
}

/* What the reader took prints (pg masked, under ASan); printed without pg and read back, it
 * prints the same. */
static void check_round_trip(const struct run_options *o)
{
    struct sink s;
    sink_open(&s);
    config_print(o, s.f);
    sink_close(&s);
    free(s.text);
    struct run_options plain = *o; /* a shallow copy: its strings stay o's */
    plain.cfg.pg_conninfo = NULL;
    sink_open(&s);
    config_print(&plain, s.f);
    sink_close(&s);
    if (strstr(s.text, "(too long for a config file line")) {
        free(s.text); /* said so instead of written: nothing to read back (a value near the
                         line limit, longer once quoted) */
        return;
    }
    struct run_options back;
    struct sink err;
    int rc = read_config(s.text, s.len, &back, &err);
    if (rc != 0)
        fprintf(stderr, "fuzz_config: the printed configuration is refused: %s", err.text);
    CHECK(rc == 0);
    char *a = printed(&plain), *b = printed(&back);
    if (strcmp(a, b) != 0)
        fprintf(stderr, "fuzz_config: printed:\n%s\nread back and printed:\n%s", a, b);
    CHECK(strcmp(a, b) == 0);
    free(a);
    free(b);
    free(err.text);
    free(s.text);
    config_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    struct run_options o;
    struct sink err;
    int rc = read_config(p, size, &o, &err);
    check_message(p, size, rc, &err);
    free(err.text);
    if (rc == 0)
        check_round_trip(&o);
    config_free(&o);
    return 0;
}
