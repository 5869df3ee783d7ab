/* promtext.c — see promtext.h. Test-only: allocates, single-threaded; parses a copy of the
 * text in place (names and values are NUL-terminated where the separators were). */
#include "tests/support/promtext.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the parser keeps per family beyond struct prom_family. */
struct fam_state {
    bool help, type, typed_histogram;
};

struct parser {
    struct prom_text *t;
    struct fam_state *fs;
    size_t families_cap, samples_cap;
    long cur; /* the family whose lines come now, -1 before the first */
    unsigned line;
    char *err;
    size_t err_cap;
};

__attribute__((format(printf, 2, 3))) static int fail(struct parser *p, const char *fmt, ...)
{
    int n = snprintf(p->err, p->err_cap, "line %u: ", p->line);
    if (n < 0 || (size_t)n >= p->err_cap)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->err_cap - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Length of the metric name at s ([a-zA-Z_:][a-zA-Z0-9_:]*), 0 if there is none. */
static size_t metric_name_len(const char *s)
{
    size_t n = 0;
    if (!is_alpha_(s[0]) && s[0] != ':')
        return 0;
    while (is_alpha_(s[n]) || is_digit(s[n]) || s[n] == ':')
        n++;
    return n;
}

static size_t label_name_len(const char *s)
{
    size_t n = 0;
    if (!is_alpha_(s[0]))
        return 0;
    while (is_alpha_(s[n]) || is_digit(s[n]))
        n++;
    return n;
}

/* Well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). */
static bool utf8_ok(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s, n;
        uint32_t cp;
        if (c < 0x80) {
            s++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07;
        } else {
            return false;
        }
        for (unsigned i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += n + 1;
    }
    return true;
}

/* A sample value or an le: the grammar of promtext.h, then its double. */
static bool parse_value(const char *s, double *v)
{
    if (strcmp(s, "+Inf") == 0) {
        *v = INFINITY;
        return true;
    }
    if (strcmp(s, "-Inf") == 0) {
        *v = -INFINITY;
        return true;
    }
    if (strcmp(s, "NaN") == 0) {
        *v = NAN;
        return true;
    }
    const char *q = s;
    if (*q == '+' || *q == '-')
        q++;
    size_t int_digits = 0, frac_digits = 0;
    while (is_digit(*q))
        q++, int_digits++;
    if (*q == '.') {
        q++;
        while (is_digit(*q))
            q++, frac_digits++;
    }
    if (int_digits + frac_digits == 0)
        return false;
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-')
            q++;
        if (!is_digit(*q))
            return false;
        while (is_digit(*q))
            q++;
    }
    if (*q)
        return false;
    char *end;
    *v = strtod(s, &end);
    return *end == '\0';
}

/* Unescapes the HELP text at s in place: only \\ and \n. */
static int unescape_help(struct parser *p, char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r != '\\') {
            *w++ = *r;
            continue;
        }
        r++;
        if (*r == '\\')
            *w++ = '\\';
        else if (*r == 'n')
            *w++ = '\n';
        else
            return fail(p, "bad escape \\%c in HELP text", *r ? *r : '0');
    }
    *w = '\0';
    if (!utf8_ok((const unsigned char *)s))
        return fail(p, "HELP text is not UTF-8");
    return 0;
}

static long family_find(const struct prom_text *t, const char *name)
{
    for (size_t i = 0; i < t->families_len; i++)
        if (strcmp(t->families[i].name, name) == 0)
            return (long)i;
    return -1;
}

/* `# HELP name text` or `# TYPE name type` (line at s, NUL-terminated). */
static int parse_comment(struct parser *p, char *s)
{
    bool help;
    if (strncmp(s, "# HELP ", 7) == 0)
        help = true;
    else if (strncmp(s, "# TYPE ", 7) == 0)
        help = false;
    else
        return fail(p, "not a HELP, TYPE or sample line: %.40s", s);
    char *name = s + 7;
    size_t n = metric_name_len(name);
    if (n == 0)
        return fail(p, "bad metric name in %s", help ? "HELP" : "TYPE");
    if (name[n] != ' ' || name[n + 1] == '\0')
        return fail(p, "%s %.*s: want a single space and %s", help ? "HELP" : "TYPE", (int)n, name,
                    help ? "a text" : "a type");
    name[n] = '\0';
    char *rest = name + n + 1;
    struct prom_text *t = p->t;
    long f = family_find(t, name);
    if (f < 0) {
        if (t->families_len == p->families_cap) {
            p->families_cap = p->families_cap ? 2 * p->families_cap : 64;
            t->families = realloc(t->families, p->families_cap * sizeof *t->families);
            p->fs = realloc(p->fs, p->families_cap * sizeof *p->fs);
            if (!t->families || !p->fs)
                abort();
        }
        f = (long)t->families_len++;
        t->families[f] = (struct prom_family){.name = name};
        p->fs[f] = (struct fam_state){0};
        p->cur = f;
    } else if (f != p->cur) {
        return fail(p, "family %s: its lines are not contiguous", name);
    }
    struct prom_family *fam = &t->families[f];
    struct fam_state *fs = &p->fs[f];
    if (fam->samples > 0)
        return fail(p, "%s of %s after its samples", help ? "HELP" : "TYPE", name);
    if (help) {
        if (fs->help)
            return fail(p, "second HELP of %s", name);
        fs->help = true;
        if (unescape_help(p, rest) != 0)
            return -1;
        fam->help = rest;
        return 0;
    }
    if (fs->type)
        return fail(p, "second TYPE of %s", name);
    fs->type = true;
    if (strcmp(rest, "counter") == 0)
        fam->type = PROM_COUNTER;
    else if (strcmp(rest, "gauge") == 0)
        fam->type = PROM_GAUGE;
    else if (strcmp(rest, "histogram") == 0)
        fam->type = PROM_HISTOGRAM;
    else
        return fail(p, "TYPE of %s: '%s' is not counter, gauge or histogram", name, rest);
    fs->typed_histogram = fam->type == PROM_HISTOGRAM;
    return 0;
}

static const char *const hist_suffix[3] = {"_bucket", "_sum", "_count"};

/* The family a sample named name belongs to (exact name, or a histogram's name plus a
 * suffix; an untyped family's too, so that the error says "before TYPE"), or -1. */
static long family_of(const struct parser *p, const char *name)
{
    long f = family_find(p->t, name);
    if (f >= 0)
        return f;
    size_t n = strlen(name);
    for (size_t i = 0; i < p->t->families_len; i++) {
        const char *fn = p->t->families[i].name;
        size_t fl = strlen(fn);
        if (fl >= n || strncmp(fn, name, fl) != 0)
            continue;
        if (p->fs[i].type && !p->fs[i].typed_histogram)
            continue;
        for (int k = 0; k < 3; k++)
            if (strcmp(name + fl, hist_suffix[k]) == 0)
                return (long)i;
    }
    return -1;
}

/* Unescapes the label value that starts after its opening quote at *s, in place; leaves *s
 * after the closing quote. Only \\, \" and \n. */
static int parse_label_value(struct parser *p, char **s, char **value)
{
    char *r = *s, *w = *s;
    *value = w;
    for (;;) {
        if (*r == '\0')
            return fail(p, "label value without its closing quote");
        if (*r == '"')
            break;
        if (*r == '\\') {
            r++;
            if (*r == '\\' || *r == '"')
                *w++ = *r++;
            else if (*r == 'n')
                *w++ = '\n', r++;
            else
                return fail(p, "bad escape \\%c in a label value", *r ? *r : '0');
            continue;
        }
        *w++ = *r++;
    }
    *s = r + 1;
    *w = '\0';
    if (!utf8_ok((const unsigned char *)*value))
        return fail(p, "label value is not UTF-8");
    return 0;
}

static int parse_sample(struct parser *p, char *s)
{
    struct prom_text *t = p->t;
    struct prom_sample smp = {.line = p->line};
    size_t n = metric_name_len(s);
    if (n == 0)
        return fail(p, "bad metric name: %.40s", s);
    char after = s[n];
    if (after != '{' && after != ' ')
        return fail(p, "after the metric name: want '{' or a space, got '%c'", after);
    s[n] = '\0';
    smp.name = s;
    char *q = s + n + 1;
    if (after == '{') {
        if (*q == '}') {
            q++;
        } else {
            for (;;) {
                size_t ln = label_name_len(q);
                if (ln == 0)
                    return fail(p, "%s: bad label name", smp.name);
                if (q[ln] != '=' || q[ln + 1] != '"')
                    return fail(p, "%s: label %.*s: want =\"", smp.name, (int)ln, q);
                q[ln] = '\0';
                const char *lname = q;
                if (strncmp(lname, "__", 2) == 0)
                    return fail(p, "%s: label %s is reserved", smp.name, lname);
                for (unsigned i = 0; i < smp.labels_len; i++)
                    if (strcmp(smp.label_name[i], lname) == 0)
                        return fail(p, "%s: label %s twice", smp.name, lname);
                if (smp.labels_len == PROM_LABELS_MAX)
                    return fail(p, "%s: more than %d labels", smp.name, PROM_LABELS_MAX);
                q += ln + 2;
                char *value;
                if (parse_label_value(p, &q, &value) != 0)
                    return -1;
                smp.label_name[smp.labels_len] = lname;
                smp.label_value[smp.labels_len++] = value;
                if (*q == '}') {
                    q++;
                    break;
                }
                if (*q != ',')
                    return fail(p, "%s: want ',' or '}' after a label", smp.name);
                q++; /* a label must follow: no trailing comma */
            }
        }
        if (*q != ' ')
            return fail(p, "%s: want a single space before the value", smp.name);
        q++;
    }
    if (!parse_value(q, &smp.value))
        return fail(p, "%s: bad value '%s' (a timestamp or extra space?)", smp.name, q);

    long f = family_of(p, smp.name);
    if (f < 0)
        return fail(p, "sample %s before its family's HELP and TYPE", smp.name);
    if (f != p->cur)
        return fail(p, "sample %s: the lines of family %s are not contiguous", smp.name,
                    t->families[f].name);
    if (!p->fs[f].help)
        return fail(p, "sample %s before the HELP of its family", smp.name);
    if (!p->fs[f].type)
        return fail(p, "sample %s before the TYPE of its family", smp.name);
    struct prom_family *fam = &t->families[f];
    bool bucket = false, count = false;
    if (fam->type == PROM_HISTOGRAM) {
        if (strcmp(smp.name, fam->name) == 0)
            return fail(p, "histogram %s: sample without _bucket, _sum or _count", fam->name);
        const char *suffix = smp.name + strlen(fam->name);
        bucket = strcmp(suffix, "_bucket") == 0;
        count = strcmp(suffix, "_count") == 0;
    }
    bool has_le = prom_label(&smp, "le") != NULL;
    if (bucket && !has_le)
        return fail(p, "%s without le", smp.name);
    if (!bucket && has_le)
        return fail(p, "%s: label le outside a histogram's buckets", smp.name);
    if ((fam->type == PROM_COUNTER || bucket || count) && !(smp.value >= 0))
        return fail(p, "%s: a count cannot be %g", smp.name, smp.value);
    smp.family = (unsigned)f;
    fam->samples++;
    if (t->samples_len == p->samples_cap) {
        p->samples_cap = p->samples_cap ? 2 * p->samples_cap : 256;
        t->samples = realloc(t->samples, p->samples_cap * sizeof *t->samples);
        if (!t->samples)
            abort();
    }
    t->samples[t->samples_len++] = smp;
    return 0;
}

/* "name{a="x",b="y"}" with the labels sorted by name, leaving out `skip` (may be NULL);
 * heap. Values are written escaped, so that keys are unambiguous. */
static char *series_key(const struct prom_sample *s, const char *name, const char *skip)
{
    unsigned idx[PROM_LABELS_MAX], n = 0;
    for (unsigned i = 0; i < s->labels_len; i++)
        if (!skip || strcmp(s->label_name[i], skip) != 0)
            idx[n++] = i;
    for (unsigned i = 1; i < n; i++) /* insertion sort: a handful of labels */
        for (unsigned j = i; j > 0 && strcmp(s->label_name[idx[j - 1]], s->label_name[idx[j]]) > 0;
             j--) {
            unsigned x = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = x;
        }
    size_t cap = strlen(name) + 3;
    for (unsigned i = 0; i < n; i++)
        cap += strlen(s->label_name[idx[i]]) + 2 * strlen(s->label_value[idx[i]]) + 4;
    char *k = malloc(cap), *w = k;
    if (!k)
        abort();
    w += sprintf(w, "%s{", name);
    for (unsigned i = 0; i < n; i++) {
        w += sprintf(w, "%s%s=\"", i ? "," : "", s->label_name[idx[i]]);
        for (const char *v = s->label_value[idx[i]]; *v; v++) {
            if (*v == '\\' || *v == '"')
                *w++ = '\\';
            if (*v == '\n') {
                *w++ = '\\';
                *w++ = 'n';
                continue;
            }
            *w++ = *v;
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    return k;
}

struct keyed {
    char *key;
    unsigned line;
};

static int keyed_cmp(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int check_duplicates(struct parser *p)
{
    struct prom_text *t = p->t;
    if (t->samples_len == 0)
        return 0;
    struct keyed *k = calloc(t->samples_len, sizeof *k);
    if (!k)
        abort();
    for (size_t i = 0; i < t->samples_len; i++)
        k[i] = (struct keyed){series_key(&t->samples[i], t->samples[i].name, NULL),
                              t->samples[i].line};
    qsort(k, t->samples_len, sizeof *k, keyed_cmp);
    int rc = 0;
    for (size_t i = 1; i < t->samples_len && rc == 0; i++)
        if (strcmp(k[i - 1].key, k[i].key) == 0) {
            p->line = k[i].line;
            rc = fail(p, "duplicate series %s (first at line %u)", k[i].key, k[i - 1].line);
        }
    for (size_t i = 0; i < t->samples_len; i++)
        free(k[i].key);
    free(k);
    return rc;
}

/* One histogram series: the samples of one label set (le left out). */
struct hseries {
    char *key;
    unsigned buckets, sums, counts;
    double last_le, last_cum, count;
    bool inf_seen;
    unsigned line;
};

static int check_histogram(struct parser *p, size_t f)
{
    struct prom_text *t = p->t;
    const char *fname = t->families[f].name;
    size_t flen = strlen(fname);
    struct hseries *hs = NULL;
    size_t hs_len = 0;
    int rc = 0;
    for (size_t i = 0; i < t->samples_len && rc == 0; i++) {
        const struct prom_sample *s = &t->samples[i];
        if (s->family != f)
            continue;
        p->line = s->line;
        char *key = series_key(s, fname, "le");
        size_t h = 0;
        while (h < hs_len && strcmp(hs[h].key, key) != 0)
            h++;
        if (h == hs_len) {
            hs = realloc(hs, (hs_len + 1) * sizeof *hs);
            if (!hs)
                abort();
            hs[hs_len++] = (struct hseries){.key = key, .line = s->line};
        } else {
            free(key);
        }
        struct hseries *x = &hs[h];
        const char *suffix = s->name + flen;
        if (strcmp(suffix, "_bucket") == 0) {
            double le;
            if (!parse_value(prom_label(s, "le"), &le) || isnan(le))
                rc = fail(p, "%s: bad le \"%s\"", x->key, prom_label(s, "le"));
            else if (x->inf_seen)
                rc = fail(p, "%s: a bucket after le=\"+Inf\"", x->key);
            else if (x->buckets > 0 && !(le > x->last_le))
                rc =
                    fail(p, "%s: le %g not above the previous bucket's %g", x->key, le, x->last_le);
            else if (x->buckets > 0 && s->value < x->last_cum)
                rc = fail(p, "%s: le %g: bucket count %g below the previous bucket's %g", x->key,
                          le, s->value, x->last_cum);
            x->buckets++;
            x->last_le = le;
            x->last_cum = s->value;
            x->inf_seen = isinf(le) && le > 0;
        } else if (strcmp(suffix, "_sum") == 0) {
            x->sums++;
        } else {
            x->counts++;
            x->count = s->value;
        }
    }
    for (size_t h = 0; h < hs_len && rc == 0; h++) {
        const struct hseries *x = &hs[h];
        p->line = x->line;
        if (x->buckets == 0)
            rc = fail(p, "%s: no buckets", x->key);
        else if (!x->inf_seen)
            rc = fail(p, "%s: the last bucket is not le=\"+Inf\"", x->key);
        else if (x->sums != 1 || x->counts != 1)
            rc = fail(p, "%s: %u _sum and %u _count samples, want one each", x->key, x->sums,
                      x->counts);
        else if (x->last_cum != x->count)
            rc = fail(p, "%s: le=\"+Inf\" is %g but _count is %g", x->key, x->last_cum, x->count);
    }
    for (size_t h = 0; h < hs_len; h++)
        free(hs[h].key);
    free(hs);
    return rc;
}

int prom_parse(const char *text, size_t len, struct prom_text *t, char *err, size_t err_cap)
{
    memset(t, 0, sizeof *t);
    struct parser p = {.t = t, .cur = -1, .err = err, .err_cap = err_cap};
    if (err_cap)
        err[0] = '\0';
    int rc = 0;
    if (len == 0 || text[len - 1] != '\n') {
        p.line = 0;
        rc = fail(&p, "the text %s", len == 0 ? "is empty" : "does not end with a newline");
        goto out;
    }
    if (memchr(text, '\0', len)) {
        rc = fail(&p, "a NUL byte in the text");
        goto out;
    }
    t->buf = malloc(len + 1);
    if (!t->buf)
        abort();
    memcpy(t->buf, text, len);
    t->buf[len] = '\0';
    for (char *s = t->buf; *s && rc == 0;) {
        char *nl = strchr(s, '\n');
        *nl = '\0';
        p.line++;
        if (*s == '\0')
            rc = fail(&p, "a blank line");
        else if (*s == '#')
            rc = parse_comment(&p, s);
        else
            rc = parse_sample(&p, s);
        s = nl + 1;
    }
    if (rc == 0) {
        for (size_t f = 0; f < t->families_len && rc == 0; f++) {
            p.line = 0;
            if (!p.fs[f].help || !p.fs[f].type)
                rc = fail(&p, "family %s has no %s", t->families[f].name,
                          p.fs[f].help ? "TYPE" : "HELP");
        }
    }
    if (rc == 0)
        rc = check_duplicates(&p);
    for (size_t f = 0; f < t->families_len && rc == 0; f++)
        if (t->families[f].type == PROM_HISTOGRAM)
            rc = check_histogram(&p, f);
out:
    free(p.fs);
    if (rc != 0) {
        prom_free(t);
        return -1;
    }
    return 0;
}

void prom_free(struct prom_text *t)
{
    free(t->buf);
    free(t->families);
    free(t->samples);
    memset(t, 0, sizeof *t);
}

const struct prom_family *prom_family(const struct prom_text *t, const char *name)
{
    long f = family_find(t, name);
    return f < 0 ? NULL : &t->families[f];
}

const char *prom_label(const struct prom_sample *s, const char *label)
{
    for (unsigned i = 0; i < s->labels_len; i++)
        if (strcmp(s->label_name[i], label) == 0)
            return s->label_value[i];
    return NULL;
}

struct pairs {
    unsigned n;
    const char *name[PROM_LABELS_MAX], *value[PROM_LABELS_MAX];
};

static void pairs_read(struct pairs *ps, va_list ap)
{
    ps->n = 0;
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            return;
        if (ps->n == PROM_LABELS_MAX)
            abort();
        ps->name[ps->n] = k;
        ps->value[ps->n++] = va_arg(ap, const char *);
    }
}

static bool carries(const struct prom_sample *s, const struct pairs *ps)
{
    for (unsigned i = 0; i < ps->n; i++) {
        const char *v = prom_label(s, ps->name[i]);
        if (!v || strcmp(v, ps->value[i]) != 0)
            return false;
    }
    return true;
}

const struct prom_sample *prom_find(const struct prom_text *t, const char *name, ...)
{
    struct pairs ps;
    va_list ap;
    va_start(ap, name);
    pairs_read(&ps, ap);
    va_end(ap);
    for (size_t i = 0; i < t->samples_len; i++) {
        const struct prom_sample *s = &t->samples[i];
        if (strcmp(s->name, name) == 0 && s->labels_len == ps.n && carries(s, &ps))
            return s;
    }
    return NULL;
}

unsigned prom_count(const struct prom_text *t, const char *name, ...)
{
    struct pairs ps;
    va_list ap;
    va_start(ap, name);
    pairs_read(&ps, ap);
    va_end(ap);
    unsigned n = 0;
    for (size_t i = 0; i < t->samples_len; i++)
        n += strcmp(t->samples[i].name, name) == 0 && carries(&t->samples[i], &ps);
    return n;
}

double prom_sum(const struct prom_text *t, const char *name, ...)
{
    struct pairs ps;
    va_list ap;
    va_start(ap, name);
    pairs_read(&ps, ap);
    va_end(ap);
    double sum = 0;
    for (size_t i = 0; i < t->samples_len; i++)
        if (strcmp(t->samples[i].name, name) == 0 && carries(&t->samples[i], &ps))
            sum += t->samples[i].value;
    return sum;
}
