// Row-wise softmax with a vectorised exp (AVX2 + FMA when available, libm otherwise).
#include "lidb_support.h"
#include <math.h>

static void softmax_row_scalar(float *x, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
    double s = 0;
    for (size_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float inv = (float)(1.0 / s);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd_exp.h"

static int avx2_state = -1;
int lidb_has_avx2_fma(void) {
    if (avx2_state < 0) {
        __builtin_cpu_init();
        avx2_state = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
    }
    return avx2_state;
}

__attribute__((target("avx2,fma")))
static void softmax_row_avx2(float *x, size_t n) {
    size_t i = 0;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float tmp[8];
    _mm256_storeu_ps(tmp, vm);
    float m = -INFINITY;
    for (int k = 0; k < 8; k++) if (tmp[k] > m) m = tmp[k];
    for (; i < n; i++) if (x[i] > m) m = x[i];
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    double s = 0;
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = lidb_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    _mm256_storeu_ps(tmp, acc);
    for (int k = 0; k < 8; k++) s += tmp[k];
    for (; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / s));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= (float)(1.0 / s);
}
#endif

void lidb_softmax_rows(float *x, size_t rows, size_t cols) {
#if defined(__x86_64__)
    if (lidb_has_avx2_fma()) { for (size_t r = 0; r < rows; r++) softmax_row_avx2(x + r * cols, cols); return; }
#endif
    for (size_t r = 0; r < rows; r++) softmax_row_scalar(x + r * cols, cols);
}
