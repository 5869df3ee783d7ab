/* crc16.c — CRC-16/IBM (CRC-16/ARC) over the data field of Teltonika TCP frames.
 *
 * Slicing-by-8 over build-time tables: one 8-byte load and eight table lookups per 8 input
 * bytes, then a byte loop for the tail. Stateless and thread-safe. The CRC register is 16 bits,
 * so it only mixes into the first two bytes of each 8-byte word. */
#include "codec/avl.h"

#include <string.h>

#include "codec/crc16_tables.h"

_Static_assert(AVL_CRC16_SLICES == 8, "the loop below folds eight bytes per step");

uint16_t avl_crc16(uint16_t crc, const uint8_t *p, size_t n)
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
