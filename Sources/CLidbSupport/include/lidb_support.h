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

/// F32 → F16 (IEEE binary16, round to nearest even) with the F16C instructions. Adds the number of
/// finite inputs that became ±inf to *overflow and of NaN inputs to *nans. Returns 0 (and does
/// nothing) when the CPU lacks F16C, 1 otherwise.
int lidb_f32_to_f16(const float *src, uint16_t *dst, size_t n, size_t *overflow, size_t *nans);
/// F16 → F32 (exact) with F16C; returns 0 (and does nothing) without it.
int lidb_f16_to_f32(const uint16_t *src, float *dst, size_t n);
int lidb_has_f16c(void);
/// Softmax of each row of a row-major rows × cols matrix, in place.
void lidb_softmax_rows(float *x, size_t rows, size_t cols);
/// GELU with the error function (erf as a rational approximation, absolute error ≤ 5e-7), in place.
void lidb_gelu_erf(float *x, size_t n);
/// x·σ(1.702x) (CLIP's quick GELU) with a polynomial exp (relative error below 3e-7), in place.
void lidb_quick_gelu(float *x, size_t n);
/// Copies n floats with non-temporal stores when large (memcpy otherwise).
void lidb_copy_floats(float *dst, const float *src, size_t n);

#endif
