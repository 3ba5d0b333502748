// Backward kernels of the training path (input gradients): group/layer normalisation (statistics
// in double, as the forward), softmax, the GELU family and SiLU, col2im, nearest upsampling.
// AVX2 + FMA for the group norm passes (the SiLU derivative's exp) when the CPU has them.
#include "lidb_backward.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd_exp.h"
#define LIDB_X86 1
#endif

// σ(t) without overflow for any t.
static inline float sigmoid1(float t) {
    if (t >= 0) return 1.0f / (1.0f + expf(-t));
    float e = expf(t);
    return e / (1.0f + e);
}

// d/dt [t·σ(t)] = σ(t)·(1 + t·(1 − σ(t))).
static inline float silu_grad1(float t) {
    float s = sigmoid1(t);
    return s * (1.0f + t * (1.0f - s));
}

// MARK: - Statistics (double, the same sums as the forward's)

static void mean_var(const float *x, size_t n, double *mean, double *var) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double m = s / (double)n, q = 0;
    for (size_t i = 0; i < n; i++) { double d = x[i] - m; q += d * d; }
    *mean = m;
    *var = q / (double)n;
}

// MARK: - Group normalisation

// Pass 1 over one channel's hw values: gx ← ĝ = (gy · silu'(x̂·γ + β) or gy) · γ, returns Σ ĝ and
// Σ ĝ·x̂ added to *sa, *sb.
static void gn_pass1(const float *x, const float *gy, float *gx, size_t n, float m, float r, float gam, float bet, int silu,
                     double *sa, double *sb) {
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        float xh = (x[i] - m) * r;
        float g = gy[i];
        if (silu) g *= silu_grad1(xh * gam + bet);
        float gh = g * gam;
        gx[i] = gh;
        a += gh;
        b += (double)gh * xh;
    }
    *sa += a;
    *sb += b;
}

#ifdef LIDB_X86
__attribute__((target("avx2,fma")))
static inline __m256 silu_grad256(__m256 t) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = lidb_exp256(_mm256_or_ps(t, _mm256_set1_ps(-0.0f)));   // exp(−|t|) ≤ 1
    __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
    __m256 pos = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 s = _mm256_blendv_ps(_mm256_mul_ps(e, inv), inv, pos);      // σ(t)
    return _mm256_mul_ps(s, _mm256_fmadd_ps(t, _mm256_sub_ps(one, s), one));
}

__attribute__((target("avx2,fma")))
static void gn_pass1_avx2(const float *x, const float *gy, float *gx, size_t n, float m, float r, float gam, float bet, int silu,
                          double *sa, double *sb) {
    const __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(r), vg = _mm256_set1_ps(gam), vb = _mm256_set1_ps(bet);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), b0 = _mm256_setzero_pd(), b1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
        __m256 g = _mm256_loadu_ps(gy + i);
        if (silu) g = _mm256_mul_ps(g, silu_grad256(_mm256_fmadd_ps(xh, vg, vb)));
        __m256 gh = _mm256_mul_ps(g, vg);
        _mm256_storeu_ps(gx + i, gh);
        __m256d gl = _mm256_cvtps_pd(_mm256_castps256_ps128(gh)), gu = _mm256_cvtps_pd(_mm256_extractf128_ps(gh, 1));
        __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(xh)), xu = _mm256_cvtps_pd(_mm256_extractf128_ps(xh, 1));
        a0 = _mm256_add_pd(a0, gl);
        a1 = _mm256_add_pd(a1, gu);
        b0 = _mm256_fmadd_pd(gl, xl, b0);
        b1 = _mm256_fmadd_pd(gu, xu, b1);
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    *sa += (t[0] + t[1]) + (t[2] + t[3]);
    _mm256_storeu_pd(t, _mm256_add_pd(b0, b1));
    *sb += (t[0] + t[1]) + (t[2] + t[3]);
    if (i < n) gn_pass1(x + i, gy + i, gx + i, n - i, m, r, gam, bet, silu, sa, sb);
}
#endif

// Pass 2: gx ← r · (ĝ − ma − x̂ · mb).
static void gn_pass2(const float *x, float *gx, size_t n, float m, float r, float ma, float mb) {
    for (size_t i = 0; i < n; i++) {
        float xh = (x[i] - m) * r;
        gx[i] = r * (gx[i] - ma - xh * mb);
    }
}

void lidb_group_norm_backward(const float *x, const float *gy, float *gx, size_t channels, size_t hw, size_t group_begin,
                              size_t group_end, size_t groups, const float *weight, const float *bias, float eps, int silu) {
    const size_t per = channels / groups, n = per * hw;
#ifdef LIDB_X86
    const int avx = lidb_has_avx2_fma();
#endif
    for (size_t g = group_begin; g < group_end; g++) {
        const size_t off = g * per * hw;
        double mean, var;
        mean_var(x + off, n, &mean, &var);
        const float r = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        double sa = 0, sb = 0;
        for (size_t c = g * per; c < (g + 1) * per; c++) {
            const size_t o = c * hw;
#ifdef LIDB_X86
            if (avx) { gn_pass1_avx2(x + o, gy + o, gx + o, hw, m, r, weight[c], bias[c], silu, &sa, &sb); continue; }
#endif
            gn_pass1(x + o, gy + o, gx + o, hw, m, r, weight[c], bias[c], silu, &sa, &sb);
        }
        const float ma = (float)(sa / (double)n), mb = (float)(sb / (double)n);
        gn_pass2(x + off, gx + off, n, m, r, ma, mb);
    }
}

// MARK: - Layer normalisation

void lidb_layer_norm_backward(const float *x, const float *gy, float *gx, size_t rows, size_t c, const float *weight, float eps) {
    for (size_t row = 0; row < rows; row++) {
        const float *xr = x + row * c, *gr = gy + row * c;
        float *out = gx + row * c;
        double mean, var;
        mean_var(xr, c, &mean, &var);
        const float r = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        double sa = 0, sb = 0;
        for (size_t i = 0; i < c; i++) {
            float xh = (xr[i] - m) * r, gh = gr[i] * weight[i];
            out[i] = gh;
            sa += gh;
            sb += (double)gh * xh;
        }
        const float ma = (float)(sa / (double)c), mb = (float)(sb / (double)c);
        for (size_t i = 0; i < c; i++) {
            float xh = (xr[i] - m) * r;
            out[i] = r * (out[i] - ma - xh * mb);
        }
    }
}

// MARK: - Softmax

#define SOFTMAX_BACKWARD_LOOP                                                         \
    for (size_t row = 0; row < rows; row++) {                                         \
        const float *yr = y + row * cols;                                             \
        float *gr = g + row * cols;                                                   \
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                      \
        size_t j = 0;                                                                 \
        for (; j + 8 <= cols; j += 8)                                                 \
            for (int l = 0; l < 8; l++) acc[l] += gr[j + l] * yr[j + l];              \
        double s = 0;                                                                 \
        for (int l = 0; l < 8; l++) s += acc[l];                                      \
        for (; j < cols; j++) s += (double)gr[j] * yr[j];                             \
        const float d = (float)s;                                                     \
        for (j = 0; j < cols; j++) gr[j] = yr[j] * (gr[j] - d);                       \
    }

static void softmax_backward_generic(const float *y, float *g, size_t rows, size_t cols) { SOFTMAX_BACKWARD_LOOP }
#ifdef LIDB_X86
__attribute__((target("avx2,fma"))) static void softmax_backward_avx2(const float *y, float *g, size_t rows, size_t cols) {
    SOFTMAX_BACKWARD_LOOP
}
#endif

void lidb_softmax_backward_rows(const float *y, float *g, size_t rows, size_t cols) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) { softmax_backward_avx2(y, g, rows, cols); return; }
#endif
    softmax_backward_generic(y, g, rows, cols);
}

// MARK: - Activations

static const float inv_sqrt2 = 0.70710678118654752f, inv_sqrt2pi = 0.39894228040143268f;

static inline float gelu1(float v) { return 0.5f * v * (1.0f + erff(v * inv_sqrt2)); }
static inline float gelu_grad1(float v) {
    return 0.5f * (1.0f + erff(v * inv_sqrt2)) + v * inv_sqrt2pi * expf(-0.5f * v * v);
}

void lidb_gelu_erf_backward(const float *x, const float *gy, float *gx, size_t n) {
    for (size_t i = 0; i < n; i++) gx[i] = gy[i] * gelu_grad1(x[i]);
}

void lidb_quick_gelu_backward(const float *x, const float *gy, float *gx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i], s = sigmoid1(1.702f * v);
        gx[i] = gy[i] * (s + 1.702f * v * s * (1.0f - s));
    }
}

void lidb_silu_backward(const float *x, const float *gy, float *gx, size_t n) {
    for (size_t i = 0; i < n; i++) gx[i] = gy[i] * silu_grad1(x[i]);
}

void lidb_geglu_backward(const float *proj, const float *gout, float *gproj, size_t rows, size_t inner) {
    for (size_t r = 0; r < rows; r++) {
        const float *h = proj + r * 2 * inner, *g = h + inner, *go = gout + r * inner;
        float *gh = gproj + r * 2 * inner, *gg = gh + inner;
        for (size_t j = 0; j < inner; j++) {
            float v = g[j], o = go[j], hv = h[j];
            gh[j] = o * gelu1(v);
            gg[j] = o * hv * gelu_grad1(v);
        }
    }
}

// MARK: - Layout

void lidb_col2im(const float *col, size_t c, size_t h, size_t w, size_t k, size_t stride, size_t pad, size_t col0, size_t ncols,
                 size_t c_begin, size_t c_end, float *x) {
    (void)c;
    const size_t wo = (w + 2 * pad - k) / stride + 1;
    for (size_t ch = c_begin; ch < c_end; ch++) {
        float *dst = x + ch * h * w;
        for (size_t ky = 0; ky < k; ky++) {
            for (size_t kx = 0; kx < k; kx++) {
                const float *src = col + ((ch * k + ky) * k + kx) * ncols;
                size_t j = 0;
                while (j < ncols) {
                    size_t pos = col0 + j, oy = pos / wo, ox0 = pos % wo;
                    size_t seg = wo - ox0;
                    if (seg > ncols - j) seg = ncols - j;
                    long iy = (long)(oy * stride + ky) - (long)pad;
                    if (iy >= 0 && iy < (long)h) {
                        float *row = dst + (size_t)iy * w;
                        const float *s = src + j;
                        for (size_t t = 0; t < seg; t++) {
                            long ix = (long)((ox0 + t) * stride + kx) - (long)pad;
                            if (ix >= 0 && ix < (long)w) row[ix] += s[t];
                        }
                    }
                    j += seg;
                }
            }
        }
    }
}

void lidb_upsample_nearest2x_backward(const float *gy, float *gx, size_t planes, size_t h, size_t w) {
    for (size_t p = 0; p < planes; p++) {
        for (size_t i = 0; i < h; i++) {
            const float *r0 = gy + (p * 2 * h + 2 * i) * 2 * w, *r1 = r0 + 2 * w;
            float *o = gx + (p * h + i) * w;
            for (size_t j = 0; j < w; j++) o[j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}
