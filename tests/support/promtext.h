/* promtext.h — a strict parser of the Prometheus text exposition format (0.0.4) for the tests
 * of the gateway's /metrics, in place of promtool (Debian ships it only inside the whole
 * prometheus package).
 *
 * Stricter than Prometheus itself, on purpose: it accepts what avlgate should write and
 * nothing looser.
 *   lines       every line is `# HELP name text`, `# TYPE name counter|gauge|histogram` or a
 *               sample `name{label="value",...} value` (labels optional, no timestamp, single
 *               spaces); no blank lines, no other comments; the text ends with '\n'.
 *   names       metric [a-zA-Z_:][a-zA-Z0-9_:]*, label [a-zA-Z_][a-zA-Z0-9_]* (not "__..."),
 *               no label twice in a sample, no trailing comma; label values quoted, valid
 *               UTF-8, escapes only \\ \" \n; HELP text escapes only \\ \n.
 *   values      [+-]?(digits[.digits]|.digits)([eE][+-]?digits)?, +Inf, -Inf or NaN.
 *   families    exactly one HELP and one TYPE each, both before its samples; its lines are
 *               contiguous (a family left is never returned to); a sample's name is its
 *               family's (counter, gauge) or the family's plus _bucket/_sum/_count (histogram).
 *   series      no two samples with the same name and label set.
 *   counters    and histogram buckets and counts: not negative, not NaN.
 *   histograms  per label set (without le): _bucket with le ascending, cumulative counts not
 *               decreasing, the last le="+Inf" and equal to _count; one _sum and one _count;
 *               nothing but histograms may have a label le.
 *
 * Test-only code: allocates; single-threaded. */
#ifndef AVLGATE_TESTS_SUPPORT_PROMTEXT_H
#define AVLGATE_TESTS_SUPPORT_PROMTEXT_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PROM_LABELS_MAX = 8 };

enum prom_type { PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM };

struct prom_family {
    const char *name, *help; /* help unescaped */
    enum prom_type type;
    unsigned samples;
};

struct prom_sample {
    const char *name;
    unsigned labels_len;
    const char *label_name[PROM_LABELS_MAX];
    const char *label_value[PROM_LABELS_MAX]; /* unescaped */
    double value;
    unsigned family; /* index into families */
    unsigned line;   /* 1-based */
};

/* A parsed exposition: the strings point into buf. */
struct prom_text {
    char *buf;
    struct prom_family *families;
    size_t families_len;
    struct prom_sample *samples;
    size_t samples_len;
};

/* Parses text[0 .. len-1] into *t. Returns 0, or -1 with "line N: what" in err (err_cap bytes)
 * and *t empty. prom_free(t) after either. */
int prom_parse(const char *text, size_t len, struct prom_text *t, char *err, size_t err_cap);
void prom_free(struct prom_text *t);

/* The family named name, or NULL. */
const struct prom_family *prom_family(const struct prom_text *t, const char *name);

/* The sample of name whose labels are exactly the pairs given (label name, value, ...,
 * NULL), or NULL. */
const struct prom_sample *prom_find(const struct prom_text *t, const char *name, ...)
    __attribute__((sentinel));

/* Over the samples of name that carry every pair given (label name, value, ..., NULL; other
 * labels may be there too): how many there are, and the sum of their values. */
unsigned prom_count(const struct prom_text *t, const char *name, ...) __attribute__((sentinel));
double prom_sum(const struct prom_text *t, const char *name, ...) __attribute__((sentinel));

/* The value of label `label` of sample s, or NULL. */
const char *prom_label(const struct prom_sample *s, const char *label);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_TESTS_SUPPORT_PROMTEXT_H */
