/* crc16.c — CRC-16/IBM (CRC-16/ARC) over the data field of Teltonika TCP frames: the entry
 * point, the portable slicing-by-8 path and the bit-at-a-time reference.
 *
 * avl_crc16 sends inputs of AVL_CRC16_CLMUL_BYTES_MIN bytes and more to the carry-less
 * multiplication path (codec/crc16_clmul.c) when the CPU has it, the rest to slicing-by-8.
 * Slicing-by-8 runs over build-time tables: one 8-byte load and eight table lookups per 8 input
 * bytes, then a byte loop for the tail. The CRC register is 16 bits, so it only mixes into the
 * first two bytes of each 8-byte word.
 *
 * Stateless and thread-safe: the one flag (does the CPU have PCLMULQDQ) is written once by a
 * constructor before main, before any shard thread exists, and only read after. */
#include "codec/avl.h"

#include <stdatomic.h>
#include <string.h>

#include "codec/crc16_internal.h"
#include "codec/crc16_tables.h"

_Static_assert(AVL_CRC16_SLICES == 8, "the loop below folds eight bytes per step");

/* Whether avl_crc16 may take the PCLMULQDQ path. Atomic, so the constructor's write and the
 * shard threads' reads are never a data race however the program starts them; relaxed, because
 * the flag publishes no other memory (on x86-64 the load is a plain mov). Until the constructor
 * has run (a caller in another constructor) it reads false: slicing-by-8, still correct. */
static atomic_bool crc16_clmul_ok;

#if AVL_CRC16_CLMUL
__attribute__((constructor)) static void crc16_clmul_probe(void)
{
    /* A constructor may run before libgcc's CPU model is filled in: ask for it first. */
    __builtin_cpu_init();
    bool ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    atomic_store_explicit(&crc16_clmul_ok, ok, memory_order_relaxed);
}
#endif

bool avl_crc16_clmul_supported(void)
{
    return atomic_load_explicit(&crc16_clmul_ok, memory_order_relaxed);
}

uint16_t avl_crc16(uint16_t crc, const uint8_t *p, size_t n)
{
#if AVL_CRC16_CLMUL
    if (n >= AVL_CRC16_CLMUL_BYTES_MIN && avl_crc16_clmul_supported())
        return avl_crc16_clmul(crc, p, n);
#endif
    return avl_crc16_slice8(crc, p, n);
}

uint16_t avl_crc16_slice8(uint16_t crc, const uint8_t *p, size_t n)
{
    const uint16_t(*t)[256] = avl_crc16_table;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
#endif
        v ^= crc;
        crc = (uint16_t)(t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
                         t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^
                         t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56]);
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (uint16_t)((crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF]);
    return crc;
}

uint16_t avl_crc16_bitwise(uint16_t crc, const uint8_t *p, size_t n)
{
    while (n--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++)
            crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0xA001) : (uint16_t)(crc >> 1);
    }
    return crc;
}
