// CRC-32C (Castagnoli). Hardware path: SSE4.2 `crc32` over three interleaved streams, joined
// with a carry-less shift computed by GF(2) matrix tables; portable path: slicing-by-8.
#include "lidb_support.h"
#include <string.h>

#define POLY 0x82F63B78u

static uint32_t table8[8][256];
static int tables_ready = 0;

static void build_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table8[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table8[0][n];
        for (int k = 1; k < 8; k++) {
            c = table8[0][c & 0xFF] ^ (c >> 8);
            table8[k][n] = c;
        }
    }
    __atomic_store_n(&tables_ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure_tables(void) {
    if (!__atomic_load_n(&tables_ready, __ATOMIC_ACQUIRE)) build_tables();
}

static uint32_t sw_update(uint32_t crc, const unsigned char *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { crc = table8[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8); n--; }
    while (n >= 8) {
        uint64_t w; memcpy(&w, p, 8);
        w ^= crc;
        crc = table8[7][w & 0xFF] ^ table8[6][(w >> 8) & 0xFF] ^ table8[5][(w >> 16) & 0xFF] ^
              table8[4][(w >> 24) & 0xFF] ^ table8[3][(w >> 32) & 0xFF] ^ table8[2][(w >> 40) & 0xFF] ^
              table8[1][(w >> 48) & 0xFF] ^ table8[0][(w >> 56) & 0xFF];
        p += 8; n -= 8;
    }
    while (n--) crc = table8[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

uint32_t lidb_crc32c_portable(uint32_t crc, const void *data, size_t length) {
    ensure_tables();
    return ~sw_update(~crc, (const unsigned char *)data, length);
}

#if defined(__x86_64__)
#include <nmmintrin.h>

// Shifting a CRC state forward by `len` zero bytes is linear over GF(2): shift tables for the
// fixed block length used by the three-stream loop are built once.
#define BLOCK 8192u
static uint32_t shift_table[4][256];
static int shift_ready = 0;

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) { if (vec & 1) sum ^= *mat; vec >>= 1; mat++; }
    return sum;
}
static void gf2_square(uint32_t *sq, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) sq[n] = gf2_times(mat, mat[n]);
}
static void build_shift(void) {
    // Operator for BLOCK zero bytes, built by repeated squaring from the 1-bit operator.
    uint32_t op[32], tmp[32];
    uint32_t row = 1;
    op[0] = POLY;
    for (int n = 1; n < 32; n++) { op[n] = row; row <<= 1; }
    // op = operator for 1 zero bit; square log2(BLOCK*8) times.
    unsigned bits = BLOCK * 8u;
    while (bits > 1) { gf2_square(tmp, op); memcpy(op, tmp, sizeof op); bits >>= 1; }
    for (int k = 0; k < 4; k++)
        for (uint32_t n = 0; n < 256; n++) shift_table[k][n] = gf2_times(op, n << (8 * k));
    __atomic_store_n(&shift_ready, 1, __ATOMIC_RELEASE);
}
static inline uint32_t shift_block(uint32_t crc) {
    return shift_table[0][crc & 0xFF] ^ shift_table[1][(crc >> 8) & 0xFF] ^
           shift_table[2][(crc >> 16) & 0xFF] ^ shift_table[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t hw_update(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c0 = crc;
    while (n && ((uintptr_t)p & 7)) { c0 = _mm_crc32_u8((uint32_t)c0, *p++); n--; }
    while (n >= 3 * BLOCK) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *p1 = p + BLOCK, *p2 = p + 2 * BLOCK;
        for (size_t i = 0; i < BLOCK; i += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p + i, 8); memcpy(&w1, p1 + i, 8); memcpy(&w2, p2 + i, 8);
            c0 = _mm_crc32_u64(c0, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
        }
        c0 = shift_block((uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift_block((uint32_t)c0) ^ (uint32_t)c2;
        p += 3 * BLOCK; n -= 3 * BLOCK;
    }
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c0 = _mm_crc32_u64(c0, w); p += 8; n -= 8; }
    while (n--) c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return (uint32_t)c0;
}

static int hw_state = -1;
int lidb_crc32c_is_hardware(void) {
    if (hw_state < 0) {
        __builtin_cpu_init();
        hw_state = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    return hw_state;
}

uint32_t lidb_crc32c(uint32_t crc, const void *data, size_t length) {
    if (lidb_crc32c_is_hardware()) {
        if (!__atomic_load_n(&shift_ready, __ATOMIC_ACQUIRE)) build_shift();
        return ~hw_update(~crc, (const unsigned char *)data, length);
    }
    return lidb_crc32c_portable(crc, data, length);
}
#else
int lidb_crc32c_is_hardware(void) { return 0; }
uint32_t lidb_crc32c(uint32_t crc, const void *data, size_t length) {
    return lidb_crc32c_portable(crc, data, length);
}
#endif
