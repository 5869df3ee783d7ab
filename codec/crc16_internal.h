/* crc16_internal.h — the two ways avl_crc16 computes CRC-16/IBM, named so the tests and the
 * bench can force each one; and the constants of the carry-less multiplication path, so the
 * test can recompute them. Not API: the gateway calls avl_crc16 (codec/avl.h), which picks. */
#ifndef AVLGATE_CODEC_CRC16_INTERNAL_H
#define AVLGATE_CODEC_CRC16_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The PCLMULQDQ path is built on x86-64 with GCC or clang (function-level target attributes,
 * __builtin_cpu_supports); elsewhere only the portable path exists. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AVL_CRC16_CLMUL 1
#else
#define AVL_CRC16_CLMUL 0
#endif

enum {
    /* avl_crc16 takes the PCLMULQDQ path from this many bytes on: one whole lane. Measured
     * (tuning/BASELINE.md, "CRC-16/IBM"), folding already wins at 16 bytes (3.8 ns against
     * 6.0 ns), so the crossover is the lane size, not a cost. */
    AVL_CRC16_CLMUL_BYTES_MIN = 16,
};

/* Slicing-by-8 over build-time tables: any length, any CPU. Same contract as avl_crc16. */
uint16_t avl_crc16_slice8(uint16_t crc, const uint8_t *p, size_t n);

/* True if this CPU has PCLMULQDQ and SSE4.1 (always false where AVL_CRC16_CLMUL is 0). Decided
 * once, by a constructor, before main; until then false, so avl_crc16 is still correct. */
bool avl_crc16_clmul_supported(void);

#if AVL_CRC16_CLMUL
/* Carry-less multiplication folding, with the tail (under 16 bytes) and inputs under 16 bytes
 * through avl_crc16_slice8. Same contract as avl_crc16. Only call it if
 * avl_crc16_clmul_supported(): on a CPU without PCLMULQDQ it faults (SIGILL). */
uint16_t avl_crc16_clmul(uint16_t crc, const uint8_t *p, size_t n);
#endif

/* The folding constants, on every architecture so the test can check them anywhere; the
 * derivation is at the top of codec/crc16_clmul.c. Each fold pair is {for the low 64-bit half
 * of a lane, for the high half}. */
struct avl_crc16_clmul_consts {
    uint64_t fold_512[2]; /* 64 bytes ahead: x^575, x^511 mod P */
    uint64_t fold_384[2]; /* 48 bytes: x^447, x^383 mod P */
    uint64_t fold_256[2]; /* 32 bytes: x^319, x^255 mod P */
    uint64_t fold_128[2]; /* 16 bytes: x^191, x^127 mod P */
    uint64_t fold_80;     /* 128 bits to 80: x^79 mod P */
    uint64_t barrett_mu;  /* floor(x^80 / P) - x^64 */
    uint64_t poly;        /* P itself */
};
extern const struct avl_crc16_clmul_consts avl_crc16_clmul_k;

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_CODEC_CRC16_INTERNAL_H */
