/* main.c — the avlgate command line: picks the subcommand and hands it its arguments. Each
 * subcommand owns its options, output and exit status; this file owns only the top-level
 * usage. */
#include <stdio.h>
#include <string.h>

#include "gateway/cli/command.h"
#include "gateway/cli/decode.h"
#include "codec/avl.h"
#include "gateway/run.h"

#ifndef AVLGATE_VERSION
#error "AVLGATE_VERSION must be defined by the build"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: avlgate <command> [options]\n"
               "\n"
               "commands:\n"
               "  run --pg CONNINFO [options]\n"
               "             the gateway: devices in, rows into PostgreSQL, ACK after commit\n"
               "  decode [--udp] [--frame-bytes-max N] [FILE...]\n"
               "             decode hex packets (one per line) to JSON, one object per frame\n"
               "  command send --pg CONNINFO [--redis HOST:PORT] [--wait S] IMEI TEXT\n"
               "             queue a Codec 12 command for a tracker; --wait prints its answer\n"
               "  command list --pg CONNINFO [--limit N] [IMEI]\n"
               "             recent commands and their status\n"
               "  version    print the version and the codec's limits\n"
               "  help       this text\n"
               "\n"
               "Run 'avlgate run --help', 'avlgate decode --help' or 'avlgate command help'\n"
               "for their options.\n");
}

static int version(void)
{
    printf("avlgate %s\n", AVLGATE_VERSION);
    printf("frame_bytes_max default %u, ceiling %u\n", (unsigned)AVL_FRAME_BYTES_MAX_DEFAULT,
           (unsigned)AVL_FRAME_BYTES_MAX_CEILING);
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0)
        return run_main(argc - 1, argv + 1);
    if (strcmp(cmd, "decode") == 0)
        return decode_main(argc - 1, argv + 1, stdin, stdout, stderr);
    if (strcmp(cmd, "command") == 0)
        return command_main(argc - 1, argv + 1, stdout, stderr);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return version();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "avlgate: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
