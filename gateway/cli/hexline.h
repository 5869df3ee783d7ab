/* hexline.h — reads hex packets, one per line, from a text stream (the input of
 * `avlgate decode`). */
#ifndef AVLGATE_GATEWAY_CLI_HEXLINE_H
#define AVLGATE_GATEWAY_CLI_HEXLINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What one physical line held. */
enum hexline_kind {
    HEXLINE_BYTES = 0, /* a packet: r->bytes[0 .. r->bytes_len-1] */
    HEXLINE_SKIP,      /* blank, or a comment ('#' after leading whitespace) */
    HEXLINE_BAD_HEX,   /* a character that is not hex or whitespace, an odd digit count, or no
                        * digits after a 0x prefix */
    HEXLINE_TOO_LONG,  /* more than r->bytes_max bytes of hex */
    HEXLINE_EOF,       /* no more lines */
};

/* A line reader. The byte buffer grows as lines need it, up to bytes_max; the text of a line
 * is never held, so whitespace costs no memory and a line of any length is read in bounded
 * memory (what lies past the bound is read and dropped). */
struct hexline_reader {
    FILE *in;
    uint8_t *bytes;     /* the last packet's bytes; owned by the reader */
    size_t bytes_len;   /* valid after HEXLINE_BYTES */
    size_t bytes_cap;   /* allocated */
    size_t bytes_max;   /* larger lines give HEXLINE_TOO_LONG */
    unsigned long line; /* 1-based number of the physical line last read */
};

/* Starts a reader on in (not owned: the caller closes it). Does not allocate. */
void hexline_init(struct hexline_reader *r, FILE *in, size_t bytes_max);
/* Frees the byte buffer. The reader may be initialised again afterwards. */
void hexline_free(struct hexline_reader *r);

/* Reads the next physical line, strips whitespace (anywhere) and a leading 0x / 0X, and
 * decodes the hex. Returns an enum hexline_kind (>= 0); r->line numbers the line just read.
 * Returns -errno if reading in failed (ferror) or the buffer could not grow (-ENOMEM). The
 * bytes stay valid until the next call. */
int hexline_next(struct hexline_reader *r);

/* Decodes one hex digit: 0..15, or -1 if c is not one. */
int hexline_digit(int c);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_CLI_HEXLINE_H */
