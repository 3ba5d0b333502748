#ifndef LIDB_SUPPORT_H
#define LIDB_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

/// Extends a CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) over `length` bytes.
/// `crc` is the finalised value of the bytes so far (0 for none); the result is finalised too,
/// so `lidb_crc32c(lidb_crc32c(0, a), b) == lidb_crc32c(0, a ++ b)`.
/// Uses the SSE4.2 CRC32 instruction when the CPU has it, slicing-by-8 tables otherwise.
uint32_t lidb_crc32c(uint32_t crc, const void *data, size_t length);

/// 1 when the hardware path is in use, 0 for the portable table path.
int lidb_crc32c_is_hardware(void);

/// The portable table-driven CRC-32C, exposed so tests can compare both paths.
uint32_t lidb_crc32c_portable(uint32_t crc, const void *data, size_t length);

#endif
