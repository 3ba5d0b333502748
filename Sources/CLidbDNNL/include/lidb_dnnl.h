#ifndef LIDB_DNNL_H
#define LIDB_DNNL_H

#include <stdint.h>

/// 1 when oneDNN's CPU engine exists and the CPU runs its AVX-512 BF16 kernels (vdpbf16ps),
/// 0 otherwise.
int lidb_dnnl_bf16_supported(void);

/// Row-major `C[m × n] = alpha · op(A) · op(B) + beta · C` with op(A) `[m × k]`, op(B) `[k × n]`
/// (as cblas_sgemm), computed by oneDNN's matmul on bfloat16 copies of A and B (round to
/// nearest even) with binary32 accumulation and a binary32 C: the precision of PyTorch's bf16
/// autocast for matrix products, with an unrounded output. `single_thread` runs it on the calling
/// thread only (for callers that already run one product per core). Returns 0 on success;
/// otherwise C is untouched and the caller computes the product in binary32: 1 when bf16 is not
/// supported here, -1 for sizes out of range or no memory, a oneDNN status + 2 for other failures.
int lidb_dnnl_gemm_bf16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *a, int64_t lda, const float *b, int64_t ldb,
                        float beta, float *c, int64_t ldc, int single_thread);
/// `lidb_dnnl_gemm_bf16` with B given as bfloat16 bit patterns (a weight held in bf16): used as
/// they are, with no binary32 copy; the same results as passing their binary32 values.
int lidb_dnnl_gemm_bf16_b16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, const uint16_t *b16, int64_t ldb,
                            float beta, float *c, int64_t ldc, int single_thread);
/// `lidb_dnnl_gemm_bf16` with A given as bfloat16 bit patterns (a convolution's weight held in
/// bf16): used as they are, in place when contiguous (`lda` equal to A's stored row length).
int lidb_dnnl_gemm_bf16_a16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                            const uint16_t *a16, int64_t lda, const float *b, int64_t ldb,
                            float beta, float *c, int64_t ldc, int single_thread);

/// f32 → bf16, round to nearest even (NaN stays NaN). For tests of the rounding.
void lidb_f32_to_bf16_rne(const float *src, uint16_t *dst, int64_t n);

#endif
