/* run.h — `avlgate run`, the gateway itself. */
#ifndef AVLGATE_GATEWAY_RUN_H
#define AVLGATE_GATEWAY_RUN_H

#ifdef __cplusplus
extern "C" {
#endif

/* Runs `avlgate run` with argv[0] == "run". Returns the exit status: 0 after a clean stop
 * (SIGTERM/SIGINT), 1 when start-up failed (with a message on stderr), 2 for a usage error. */
int run_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
