// Vectorised exp shared by the C kernels (private to CLidbSupport).
#ifndef LIDB_SIMD_EXP_H
#define LIDB_SIMD_EXP_H
#if defined(__x86_64__)
#include <immintrin.h>

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n · p(r), |r| ≤ ln2/2, with a
// degree-6 polynomial; relative error below 2e-7 over the range used. A NaN stays NaN (as in
// libm and PyTorch), so a NaN activation cannot turn into plausible finite values.
__attribute__((target("avx2,fma")))
static inline __m256 lidb_exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    x = _mm256_max_ps(lo, x);  // maxps returns its second operand when either is NaN
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n*ln2 in two steps (Cody–Waite)
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

int lidb_has_avx2_fma(void);
#endif
#endif
