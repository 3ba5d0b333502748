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

// exp(x) for |x| ≤ 87: 2^n · p(r) with n = round(x·log2 e), r = x − n·ln 2 (two-step Cody–Waite),
// p a degree-6 Taylor-like polynomial; relative error below 3e-7. Written as plain float and integer
// operations so loops over it vectorise.
static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    float n = __builtin_roundevenf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int i; float f; } scale = { .i = ((int)n + 127) << 23 };
    return p * scale.f;
}

#define QUICK_GELU_LOOP                                                              \
    for (size_t i = 0; i < n; i++) {                                                \
        float v = x[i], a = -1.702f * v;                                             \
        float s = a > 87.0f ? 0.0f : 1.0f / (1.0f + exp_poly(a));                    \
        x[i] = v * s;                                                                \
    }

static void quick_gelu_generic(float *x, size_t n) { QUICK_GELU_LOOP }

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void quick_gelu_avx2(float *x, size_t n) { QUICK_GELU_LOOP }
#endif

void lidb_quick_gelu(float *x, size_t n) {
#if defined(__x86_64__)
    if (gelu_avx2_state < 0) {
        __builtin_cpu_init();
        gelu_avx2_state = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
    }
    if (gelu_avx2_state) { quick_gelu_avx2(x, n); return; }
#endif
    quick_gelu_generic(x, n);
}
