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

/// copy_file_range(2) from `in_fd` at `*in_offset` to `out_fd` at its file position: the kernel
/// copies (or, on filesystems that can, shares) the bytes without passing them through user
/// space. Returns the bytes copied (advancing `*in_offset`), 0 at the end of the input, or -1 with
/// errno set (ENOSYS where the call does not exist; EXDEV, EINVAL or EOPNOTSUPP where it does not
/// apply: the caller copies through user space instead).
int64_t lidb_copy_file_range(int in_fd, int64_t *in_offset, int out_fd, size_t length);
/// Starts writeback of `length` bytes at `offset` without waiting (sync_file_range with
/// SYNC_FILE_RANGE_WRITE on Linux; nothing elsewhere), so a later fsync has less left to do.
/// Not a durability guarantee by itself. Returns 0 or -1 with errno set.
int lidb_start_writeback(int fd, int64_t offset, int64_t length);

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

/// Group normalisation of `x` [channels × hw] for groups [group_begin, group_end) of `groups`
/// (mean and biased variance accumulated in double), then the per-channel affine map and, when
/// `silu` is non-zero, SiLU. `y` may be `x`.
void lidb_group_norm(const float *x, float *y, size_t channels, size_t hw, size_t group_begin, size_t group_end, size_t groups,
                     const float *weight, const float *bias, float eps, int silu);
/// The per-channel scale and shift a group norm applies (y = x·scale + shift), for groups
/// [group_begin, group_end).
void lidb_group_norm_coefficients(const float *x, size_t channels, size_t hw, size_t group_begin, size_t group_end, size_t groups,
                                  const float *weight, const float *bias, float eps, float *scale, float *shift);
/// Layer normalisation of each row of `x` [rows × c] (double statistics); `y` may be `x`.
void lidb_layer_norm(const float *x, float *y, size_t rows, size_t c, const float *weight, const float *bias, float eps);
/// x ← x·sigmoid(x), in place.
void lidb_silu(float *x, size_t n);
/// GEGLU: out[r, j] = proj[r, j] · GELU(proj[r, inner + j]) for proj [rows × 2·inner]; GELU with
/// erf from the Abramowitz–Stegun 7.1.26 approximation (|erf error| ≤ 1.5e-7) when vectorised.
void lidb_geglu(const float *proj, float *out, size_t rows, size_t inner);
/// The im2col matrix of a zero-padded k×k convolution of x [c × h × w], restricted to the output
/// positions [col0, col0 + ncols) (row-major over the output): col [c·k·k × ncols].
void lidb_im2col(const float *x, size_t c, size_t h, size_t w, size_t k, size_t stride, size_t pad,
                 size_t col0, size_t ncols, float *col);
/// dst [cols × rows] = srcᵀ for src [rows × cols].
void lidb_transpose(const float *src, float *dst, size_t rows, size_t cols);
/// y += x.
void lidb_add(float *y, const float *x, size_t n);
/// y [channels × hw] += bias[channel].
void lidb_add_channel_bias(float *y, const float *bias, size_t channels, size_t hw);

/// Winograd F(2×2, 3×3) for stride-1, padding-1 3×3 convolutions. Weights [out × in × 3 × 3] →
/// u [16 × out × in]; input x [c × h × w], tiles [t0, t0 + nt) of the ⌈h/2⌉ × ⌈w/2⌉ 2×2 output
/// tiles (row-major) → v [16 × c × nt]; products m [16 × out × nt] → y [out × h × w] plus bias
/// (bias may be NULL). Each call handles the output channels [o_begin, o_end) or input channels
/// [c_begin, c_end), so threads can share the work.
void lidb_winograd_weights(const float *w, size_t out, size_t in, size_t o_begin, size_t o_end, float *u);
/// The same transform for the flipped, transposed kernel of w [w_out × w_in × 3 × 3] — the kernel
/// W'[p, q] = W[q, p] rotated by 180°, whose convolution is w's input gradient — for its output
/// channels p_base + [o_begin, o_end) of a block of ob, in = w_out inputs: u [16 × ob × in].
void lidb_winograd_weights_flipped(const float *w, size_t w_in, size_t ob, size_t in, size_t p_base, size_t o_begin,
                                   size_t o_end, float *u);
/// The input transform can apply a per-channel affine map (scale/shift, e.g. a group norm's) and
/// SiLU to the input first (padding stays zero), and read x as [c × h/2 × w/2] upsampled to h × w
/// by nearest neighbour (upsample ≠ 0; h and w even).
void lidb_winograd_input(const float *x, size_t c, size_t h, size_t w, size_t t0, size_t nt, size_t c_begin, size_t c_end,
                         const float *scale, const float *shift, int silu, int upsample, float *v);
void lidb_winograd_output(const float *m, size_t out, size_t h, size_t w, size_t t0, size_t nt, size_t o_begin, size_t o_end,
                          const float *bias, float *y);

/// Tunes the C allocator (glibc) for the runtime's pattern of large, repeated allocations;
/// process-wide, idempotent.
void lidb_keep_freed_memory(void);
/// Hands the allocator's free memory back to the kernel (glibc: malloc_trim); 0 elsewhere.
int lidb_return_freed_memory(void);

/// OpenBLAS (pthreads build) keeps its worker threads spinning for about 2^28 cycles after each
/// product; between products the runtime's own threads need those cores. Unless the user set
/// OPENBLAS_THREAD_TIMEOUT, sets it to `exponent` (OpenBLAS clamps it to 4…30: workers wait
/// 2^exponent cycles before sleeping) and restarts the worker pool, which OpenBLAS recreates at its
/// next threaded product. Returns 1 when applied, 0 when the user's setting stands or the
/// library lacks the entry points (another BLAS, or an OpenMP build), -1 on a bad argument.
int lidb_blas_short_wait(int exponent);

#endif
