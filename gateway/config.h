/* config.h — the options of `avlgate run`, from three sources.
 *
 * Every option is a long flag (`--batch-rows 1000`), an environment variable (its name upper
 * case with '-' as '_' after AVLGATE_: AVLGATE_BATCH_ROWS=1000) and a key of the config file
 * given with --config FILE (`batch-rows = 1000`). A flag wins over the environment, which wins
 * over the file, which wins over the default. The file: one `key = value` per line; blank lines
 * and lines starting with '#' are ignored, as is a trailing ` # comment` (whitespace, then '#');
 * the value is the rest of the line, trimmed, optionally in double quotes. A switch (`pin`)
 * takes true/false, yes/no, on/off or 1/0 in the file and the environment.
 *
 * Errors name the source: "config /etc/avlgate.conf:12: unknown key 'batchrows'",
 * "environment AVLGATE_SHARDS: bad value 'x' (want 1..256)", "--bufs: ...". Values are
 * checked here (ranges, formats); what needs the system (a port in use, a database that does
 * not answer) is checked by `avlgate run` as it starts. */
#ifndef AVLGATE_GATEWAY_CONFIG_H
#define AVLGATE_GATEWAY_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

#include "gateway/shared.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CONFIG_OPTIONS_MAX = 48 };

/* The options, parsed and checked; addresses still as text (run.c resolves and binds). */
struct run_options {
    struct ingest_config cfg; /* numbers, switches, pg_conninfo, instance */
    const char *listen;       /* HOST:PORT */
    const char *udp;          /* HOST:PORT, "off", or NULL: the listen address */
    const char *redis;        /* HOST:PORT or NULL */
    const char *metrics;      /* HOST:PORT or NULL */
    const char *proxy_from;   /* CIDR[,CIDR] or NULL */
    const char *schema_dir;   /* --apply-schema, or NULL */
    const char *config;       /* --config FILE, or NULL */
    bool print_config, help;
    unsigned char source[CONFIG_OPTIONS_MAX]; /* per option: default, file, environment, flag */
};

/* Fills o from the defaults, the config file, the environment (envp, NULL-terminated
 * NAME=VALUE strings) and argv, in that order of precedence reversed. Returns 0, or 2 after
 * writing why to err (usage or value error), or 1 (the config file cannot be read). */
int config_load(struct run_options *o, int argc, char **argv, char **envp, FILE *err);

/* The defaults of every option (--shards: the online CPUs; --instance: the host name). */
void config_defaults(struct run_options *o);

/* The config file's lines read from f over o, in order, each setting its option (source
 * "file"); name is the file's in messages ("avlgate run: config NAME:LINE: why"). Reads
 * neither the environment nor argv, and checks no option against another (config_load does
 * both). Strings set are copies o owns (config_free). Returns 0, or 2 after writing the
 * first bad line's reason to err. */
int config_read_file(struct run_options *o, FILE *f, const char *name, FILE *err);

/* Frees the strings o holds from the file and the environment (those options then read as
 * unset). */
void config_free(struct run_options *o);

/* The effective configuration as a config file (`key = value  # source`), secrets masked. */
void config_print(const struct run_options *o, FILE *out);

void config_usage(FILE *f);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_CONFIG_H */
