// F32 <-> F16 conversion with the F16C instructions (round to nearest even), when the CPU has them.
#include "lidb_support.h"

#if defined(__x86_64__)
#include <immintrin.h>

static int f16c_state = -1;
int lidb_has_f16c(void) {
    if (f16c_state < 0) {
        __builtin_cpu_init();
        f16c_state = (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) ? 1 : 0;
    }
    return f16c_state;
}

__attribute__((target("avx,f16c")))
static void f32_to_f16_f16c(const float *src, uint16_t *dst, size_t n, size_t *overflow, size_t *nans) {
    size_t i = 0, ovf = 0, nan = 0;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 big = _mm256_set1_ps(65520.0f);  // smallest magnitude that rounds to inf
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
        __m256 a = _mm256_and_ps(x, absmask);
        // finite and >= 65520 → overflow; unordered → NaN
        int o = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(a, big, _CMP_GE_OQ),
                                                 _mm256_cmp_ps(a, _mm256_set1_ps(__builtin_inff()), _CMP_LT_OQ)));
        int q = _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        ovf += (size_t)__builtin_popcount(o);
        nan += (size_t)__builtin_popcount(q);
    }
    for (; i < n; i++) {
        float x = src[i];
        __m128i h = _mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT);
        dst[i] = (uint16_t)_mm_extract_epi16(h, 0);
        float a = __builtin_fabsf(x);
        if (x != x) nan++; else if (a >= 65520.0f && a != __builtin_inff()) ovf++;
    }
    *overflow += ovf;
    *nans += nan;
}

__attribute__((target("avx,f16c")))
static void f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(src[i])));
}

int lidb_f32_to_f16(const float *src, uint16_t *dst, size_t n, size_t *overflow, size_t *nans) {
    if (!lidb_has_f16c()) return 0;
    f32_to_f16_f16c(src, dst, n, overflow, nans);
    return 1;
}

int lidb_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
    if (!lidb_has_f16c()) return 0;
    f16_to_f32_f16c(src, dst, n);
    return 1;
}
#else
int lidb_has_f16c(void) { return 0; }
int lidb_f32_to_f16(const float *src, uint16_t *dst, size_t n, size_t *overflow, size_t *nans) { return 0; }
int lidb_f16_to_f32(const uint16_t *src, float *dst, size_t n) { return 0; }
#endif

// Large copies with non-temporal stores: the destination is not read first (no read-for-ownership)
// and does not evict useful cache lines. Falls back to memcpy without AVX.
#include <string.h>
#if defined(__x86_64__)
__attribute__((target("avx")))
static void copy_stream_avx(float *dst, const float *src, size_t n) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) { dst[i] = src[i]; i++; }
    for (; i + 32 <= n; i += 32) {
        __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
        __m256 c = _mm256_loadu_ps(src + i + 16), d = _mm256_loadu_ps(src + i + 24);
        _mm256_stream_ps(dst + i, a); _mm256_stream_ps(dst + i + 8, b);
        _mm256_stream_ps(dst + i + 16, c); _mm256_stream_ps(dst + i + 24, d);
    }
    for (; i < n; i++) dst[i] = src[i];
    _mm_sfence();
}
#endif

void lidb_copy_floats(float *dst, const float *src, size_t n) {
#if defined(__x86_64__)
    if (n >= (1u << 16) && lidb_has_f16c()) { copy_stream_avx(dst, src, n); return; }
#endif
    memcpy(dst, src, n * sizeof(float));
}
