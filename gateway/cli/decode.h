/* decode.h — `avlgate decode`: hex packets in, one JSON object per frame out. */
#ifndef AVLGATE_GATEWAY_CLI_DECODE_H
#define AVLGATE_GATEWAY_CLI_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gateway/cli/json.h"
#include "codec/avl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most bytes one input line may hold: a TCP line can carry a ping, a handshake and a
 * frame of the largest size the codec accepts; the slack covers the small frames around it. */
#define DECODE_LINE_BYTES_MAX ((size_t)AVL_FRAME_BYTES_MAX_CEILING + 64u * 1024u)

struct decode_opts {
    bool udp;                 /* each line is one UDP datagram; else a TCP byte stream */
    bool show_file;           /* start each object with "file": the input's name */
    uint32_t frame_bytes_max; /* TCP frame bound given to avl_scan; 0 = the codec's default */
};

/* Counters over one or more inputs; the caller zeroes them. */
struct decode_stats {
    unsigned long packets; /* input lines that held a packet (not blank, not a comment) */
    unsigned long objects; /* JSON objects written */
    unsigned long failed;  /* of them, objects with "ok":false */
};

/* Decodes the bytes of one input line (numbered line in the input called name) and writes
 * one JSON object per frame, each on its own line, to j. In TCP mode the bytes are one
 * connection's stream: ANY mode until the first non-ping frame, DATA mode after it; the line
 * stops at its first error (the stream is out of sync) and a frame cut off by the end of the
 * line gives "truncated". In UDP mode the bytes are one datagram (or a 7-byte server ACK).
 * Returns the number of objects with "ok":false it wrote. */
unsigned decode_bytes(struct json_out *j, const char *name, unsigned long line, const uint8_t *p,
                      size_t len, const struct decode_opts *o, struct decode_stats *st);

/* Reads hex lines (see gateway/cli/hexline.h) from in until EOF and writes the JSON objects
 * to out, flushed at the end (and after every line when in is a terminal). name names the
 * input in "file" when o->show_file is set. Returns 0, or -errno when reading in or writing
 * out failed: ferror(out) tells which. */
int decode_stream(FILE *in, const char *name, FILE *out, const struct decode_opts *o,
                  struct decode_stats *st);

/* Runs `decode` with argv[0] == "decode" and its options and files; reads in for "-" or when
 * no file is given. Returns the exit status: 0 when every packet decoded, 1 when any object
 * says "ok":false, 2 for a usage error (message and usage on err) or an input that could not
 * be opened or read or an output that could not be written (message on err). */
int decode_main(int argc, char **argv, FILE *in, FILE *out, FILE *err);

/* Prints the usage of `avlgate decode`. */
void decode_usage(FILE *f);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_CLI_DECODE_H */
