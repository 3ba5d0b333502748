// GELU with the error function, x·(1 + erf(x/√2))/2, over a float array in place. erf is a
// rational function of x on [−4, 4] (odd numerator of degree 13, even denominator of degree 8,
// clamped outside), absolute error ≤ 5e-7; plain loops the compiler vectorises, with an AVX2+FMA
// build chosen at run time when the CPU has it.
#include "lidb_support.h"

#define GELU_LOOP                                                                   \
    for (size_t i = 0; i < n; i++) {                                                \
        float v = x[i];                                                             \
        float c = v * 0.70710678118654752f;                                         \
        c = c < -4.0f ? -4.0f : (c > 4.0f ? 4.0f : c);                              \
        float c2 = c * c;                                                           \
        float p = -2.72614225801306e-10f;                                           \
        p = p * c2 + 2.77068142495902e-08f;                                         \
        p = p * c2 - 2.10102402082508e-06f;                                         \
        p = p * c2 - 5.69250639462346e-05f;                                         \
        p = p * c2 - 7.34990630326855e-04f;                                         \
        p = p * c2 - 2.95459980854025e-03f;                                         \
        p = p * c2 - 1.60960333262415e-02f;                                         \
        p = p * c;                                                                  \
        float q = -1.45660718464996e-05f;                                           \
        q = q * c2 - 2.13374055278905e-04f;                                         \
        q = q * c2 - 1.68282697438203e-03f;                                         \
        q = q * c2 - 7.37332916720468e-03f;                                         \
        q = q * c2 - 1.42647390514189e-02f;                                         \
        x[i] = 0.5f * v * (1.0f + p / q);                                           \
    }

static void gelu_generic(float *x, size_t n) { GELU_LOOP }

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void gelu_avx2(float *x, size_t n) { GELU_LOOP }

static int gelu_avx2_state = -1;
#endif

void lidb_gelu_erf(float *x, size_t n) {
#if defined(__x86_64__)
    if (gelu_avx2_state < 0) {
        __builtin_cpu_init();
        gelu_avx2_state = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
    }
    if (gelu_avx2_state) { gelu_avx2(x, n); return; }
#endif
    gelu_generic(x, n);
}
