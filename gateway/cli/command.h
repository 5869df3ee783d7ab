/* command.h — `avlgate command send|list`: an operator's way to queue a Codec 12 command in
 * PostgreSQL, route it through the Redis registry, wait for its answer, and list recent ones. */
#ifndef AVLGATE_GATEWAY_CLI_COMMAND_H
#define AVLGATE_GATEWAY_CLI_COMMAND_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest command text `command send` accepts, in bytes. */
#define COMMAND_TEXT_BYTES_MAX 1024u

/* Runs `command` with argv[0] == "command", argv[1] the subcommand (send, list, help) and its
 * options and arguments. Output goes to out, errors to err. Returns the exit status:
 * send: 0 when the row was inserted (and, with --wait, answered), 1 when PostgreSQL failed or
 * the --wait ended failed, expired or timed out; list: 0, or 1 when PostgreSQL failed; 2 for a
 * usage error (message and usage on err). */
int command_main(int argc, char **argv, FILE *out, FILE *err);

/* Prints the usage of `avlgate command`. */
void command_usage(FILE *f);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_CLI_COMMAND_H */
