/* crc16_clmul.c — CRC-16/IBM by carry-less multiplication folding (PCLMULQDQ): Intel's "Fast
 * CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction" (2009), bit-reflected
 * variant, for a 16-bit polynomial. Built on x86-64 only (AVL_CRC16_CLMUL); avl_crc16
 * (codec/crc16.c) calls it for long inputs when the CPU has PCLMULQDQ and SSE4.1. Stateless and
 * thread-safe; the constants are here on every architecture so the test can recompute them.
 *
 * Polynomials are over GF(2). P = x^16 + x^15 + x^2 + 1 (0x8005; 0xA001 bit-reflected). Bits go
 * least significant first: bit j of the 16-bit register is the coefficient of x^(15-j), and the
 * CRC of n bytes M from register c is (c * x^(8n) + M * x^16) mod P.
 *
 * A 16-byte lane loaded little-endian holds in bit i the coefficient of x^(127-i): its low
 * 64-bit half L holds x^127..x^64, its high half H x^63..x^0, so lane = L * x^64 + H. A 64-bit
 * PCLMULQDQ operand holds x^(63-i) in bit i the same way, and the product of two holds x^(126-m)
 * in bit m: read as a lane, that is the true product times x. Folding a lane D bits further down
 * the message is then two multiplications by constants of degree < 16:
 *
 *     lane * x^D = L * x^(64+D) + H * x^D
 *                = x * L * (x^(D+63) mod P) + x * H * (x^(D-1) mod P)       (mod P)
 *
 * each product under 80 bits, xored into the lane D bits on. A constant k of degree < 16 sits in
 * the top 16 bits of its operand, reflected (x^d at bit 63-d): reflect16(k) << 48. The four lanes
 * fold 64 bytes ahead (D = 512); at the end lanes 0, 1, 2 fold onto lane 3 (D = 384, 256, 128)
 * and each further 16-byte block takes D = 128:
 *
 *     D    x^(D+63) mod P     x^(D-1) mod P
 *     512  x^575 = 0x0a23     x^511 = 0x8081
 *     384  x^447 = 0x2555     x^383 = 0x8935
 *     256  x^319 = 0x8993     x^255 = 0x800a
 *     128  x^191 = 0x0b33     x^127 = 0x0083
 *
 * The last lane X leaves CRC = X * x^16 mod P, reduced in three steps:
 *  1. Y = x * L * (x^79 mod P) + H * x^16 (x^79 mod P = 0x8333): congruent, degree < 80, in lane
 *     bits 48..127 (the product already lies there; H moves down two bytes).
 *  2. Barrett: mu = floor(x^80 / P) = 0x1_fffb_ffe7_ffaf_fe1f (degree 64) and A = floor(Y / x^16)
 *     (degree < 64: lane bits 48..111) give q = floor(A * mu / x^64) = floor(Y / P) exactly.
 *     [With x^80 = mu * P + r, deg r < 16, and Y = A * x^16 + B: Y * x^64 = A * mu * P +
 *     A * r + B * x^64, whose last two terms have degree < 80, so floor(Y / P) * x^64 and A * mu
 *     differ below x^64.] mu's x^64 term contributes A itself, so q = A + floor(A * mu' / x^64)
 *     with mu' = mu - x^64: one multiplication, whose bits 0..62 shifted up by one (the times x
 *     above) are that floor.
 *  3. Y mod P = Y + q * P. Only its low 16 coefficients are wanted, and they are the CRC: Y's
 *     lane bits 112..127 xor the x^15..x^0 of q * P, which PCLMULQDQ(q, P reflected) leaves in
 *     bits 111..126 (again the times x). */
#include "codec/crc16_internal.h"

#include <assert.h>

/* Operand form of each constant, as above; tests/test_crc16.c recomputes every one. */
const struct avl_crc16_clmul_consts avl_crc16_clmul_k = {
    .fold_512 = {0xc450000000000000u, 0x8101000000000000u},
    .fold_384 = {0xaaa4000000000000u, 0xac91000000000000u},
    .fold_256 = {0xc991000000000000u, 0x5001000000000000u},
    .fold_128 = {0xccd0000000000000u, 0xc100000000000000u},
    .fold_80 = 0xccc1000000000000u,
    .barrett_mu = 0xf87ff5ffe7ffdfffu, /* mu' = 0xfffb_ffe7_ffaf_fe1f reflected */
    .poly = 0xa001800000000000u,       /* 0xA001 on top, x^16 at bit 47 */
};

#if AVL_CRC16_CLMUL

#include <immintrin.h>

#define CLMUL_TARGET __attribute__((target("pclmul,sse4.1")))

CLMUL_TARGET static inline __m128i load16(const uint8_t *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

CLMUL_TARGET static inline __m128i pair(const uint64_t k[2])
{
    return _mm_set_epi64x((long long)k[1], (long long)k[0]);
}

/* The lane r carried D bits on by k = {x^(D+63), x^(D-1)} mod P, xored with the lane there. */
CLMUL_TARGET static inline __m128i fold(__m128i r, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(r, k, 0x00), hi = _mm_clmulepi64_si128(r, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* Four lanes over *pp (at least 64 bytes), 64 bytes a step, then one lane; advances *pp and
 * *np past the whole 64-byte blocks. x0 holds the starting register in its low 16 bits. */
CLMUL_TARGET static __m128i fold_lanes(__m128i x0, const uint8_t **pp, size_t *np)
{
    const struct avl_crc16_clmul_consts *k = &avl_crc16_clmul_k;
    const uint8_t *p = *pp;
    size_t n = *np;
    assert(n >= 64);
    __m128i r0 = _mm_xor_si128(load16(p), x0), r1 = load16(p + 16), r2 = load16(p + 32),
            r3 = load16(p + 48);
    p += 64;
    n -= 64;
    const __m128i k512 = pair(k->fold_512);
    /* Four independent chains: PCLMULQDQ's latency (3 to 7 cycles) hides behind the others. */
    for (; n >= 64; p += 64, n -= 64) {
        r0 = fold(r0, k512, load16(p));
        r1 = fold(r1, k512, load16(p + 16));
        r2 = fold(r2, k512, load16(p + 32));
        r3 = fold(r3, k512, load16(p + 48));
    }
    /* Lanes 0..2 straight onto lane 3, in parallel rather than one after another. */
    __m128i x = fold(r0, pair(k->fold_384), fold(r1, pair(k->fold_256), r3));
    x = fold(r2, pair(k->fold_128), x);
    *pp = p;
    *np = n;
    return x;
}

/* X * x^16 mod P: steps 1 to 3 at the top. */
CLMUL_TARGET static uint16_t reduce(__m128i x)
{
    const struct avl_crc16_clmul_consts *k = &avl_crc16_clmul_k;
    const __m128i k80 = _mm_cvtsi64_si128((long long)k->fold_80);
    const __m128i barrett = _mm_set_epi64x((long long)k->poly, (long long)k->barrett_mu);
    __m128i y = _mm_clmulepi64_si128(x, k80, 0x00);
    y = _mm_xor_si128(y, _mm_slli_si128(_mm_srli_si128(x, 8), 6));
    __m128i a = _mm_srli_si128(y, 6);
    __m128i q = _mm_xor_si128(_mm_slli_epi64(_mm_clmulepi64_si128(a, barrett, 0x00), 1), a);
    __m128i qp = _mm_clmulepi64_si128(q, barrett, 0x10);
    uint64_t y_hi = (uint64_t)_mm_extract_epi64(y, 1), qp_hi = (uint64_t)_mm_extract_epi64(qp, 1);
    return (uint16_t)((y_hi >> 48) ^ (qp_hi >> 47));
}

CLMUL_TARGET uint16_t avl_crc16_clmul(uint16_t crc, const uint8_t *p, size_t n)
{
    if (n < 16)
        return avl_crc16_slice8(crc, p, n);
    __m128i x = _mm_cvtsi32_si128(crc);
    if (n >= 64) {
        x = fold_lanes(x, &p, &n);
    } else {
        x = _mm_xor_si128(x, load16(p));
        p += 16;
        n -= 16;
    }
    const __m128i k128 = pair(avl_crc16_clmul_k.fold_128);
    for (; n >= 16; p += 16, n -= 16)
        x = fold(x, k128, load16(p));
    return avl_crc16_slice8(reduce(x), p, n);
}

#endif /* AVL_CRC16_CLMUL */
