// Elementwise and layout kernels of the diffusion runtime: group/layer normalisation (statistics
// in double, as the Swift reference did), SiLU, GEGLU, im2col and blocked transposes. AVX2 + FMA
// when the CPU has them, portable C otherwise.
#define _GNU_SOURCE
#include "lidb_support.h"
#include <dlfcn.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd_exp.h"
#define LIDB_X86 1
#endif

// MARK: - Statistics (double accumulation)

#ifdef LIDB_X86
__attribute__((target("avx2,fma")))
static double sum_avx2(const float *x, size_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    double s = (t[0] + t[1]) + (t[2] + t[3]);
    for (; i < n; i++) s += x[i];
    return s;
}

__attribute__((target("avx2,fma")))
static double sqdev_avx2(const float *x, size_t n, double mean) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), m = _mm256_set1_pd(mean);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m);
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    double s = (t[0] + t[1]) + (t[2] + t[3]);
    for (; i < n; i++) { double d = x[i] - mean; s += d * d; }
    return s;
}
#endif

static double sum_f(const float *x, size_t n) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) return sum_avx2(x, n);
#endif
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return s;
}

static double sqdev_f(const float *x, size_t n, double mean) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) return sqdev_avx2(x, n, mean);
#endif
    double s = 0;
    for (size_t i = 0; i < n; i++) { double d = x[i] - mean; s += d * d; }
    return s;
}

// MARK: - y = x·a + b, optionally followed by SiLU

#ifdef LIDB_X86
// x·sigmoid(x) with exp(-|x|) ≤ 1, so no overflow for any input.
__attribute__((target("avx2,fma")))
static inline __m256 silu256(__m256 t) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 neg_abs = _mm256_or_ps(t, _mm256_set1_ps(-0.0f));
    __m256 e = lidb_exp256(neg_abs);
    __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
    __m256 pos = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 s = _mm256_blendv_ps(_mm256_mul_ps(e, inv), inv, pos);
    return _mm256_mul_ps(t, s);
}

__attribute__((target("avx2,fma")))
static void affine_avx2(const float *x, float *y, size_t n, float a, float b, int silu) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    size_t i = 0;
    if (silu) {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, silu256(_mm256_fmadd_ps(_mm256_loadu_ps(x + i), va, vb)));
    } else {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), va, vb));
    }
    for (; i < n; i++) {
        float t = x[i] * a + b;
        if (silu) t = t / (1 + expf(-t));
        y[i] = t;
    }
}

__attribute__((target("avx2,fma")))
static void silu_avx2(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, silu256(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) x[i] = x[i] / (1 + expf(-x[i]));
}
#endif

static void affine(const float *x, float *y, size_t n, float a, float b, int silu) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) { affine_avx2(x, y, n, a, b, silu); return; }
#endif
    for (size_t i = 0; i < n; i++) {
        float t = x[i] * a + b;
        if (silu) t = t / (1 + expf(-t));
        y[i] = t;
    }
}

void lidb_silu(float *x, size_t n) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) { silu_avx2(x, n); return; }
#endif
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1 + expf(-x[i]));
}

void lidb_group_norm_coefficients(const float *x, size_t channels, size_t hw, size_t group_begin, size_t group_end, size_t groups,
                                  const float *weight, const float *bias, float eps, float *scale, float *shift) {
    size_t per = channels / groups;
    for (size_t g = group_begin; g < group_end; g++) {
        const float *xg = x + g * per * hw;
        size_t n = per * hw;
        double mean = sum_f(xg, n) / (double)n;
        double var = sqdev_f(xg, n, mean) / (double)n;
        float inv = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        for (size_t c = g * per; c < (g + 1) * per; c++) {
            scale[c] = inv * weight[c];
            shift[c] = bias[c] - m * inv * weight[c];
        }
    }
}

void lidb_group_norm(const float *x, float *y, size_t channels, size_t hw, size_t group_begin, size_t group_end, size_t groups,
                     const float *weight, const float *bias, float eps, int silu) {
    size_t per = channels / groups;
    float *a = malloc(2 * channels * sizeof(float));
    if (!a) abort();
    float *b = a + channels;  /* per-channel scale and shift, filled for this call's groups */
    lidb_group_norm_coefficients(x, channels, hw, group_begin, group_end, groups, weight, bias, eps, a, b);
    for (size_t c = group_begin * per; c < group_end * per; c++) affine(x + c * hw, y + c * hw, hw, a[c], b[c], silu);
    free(a);
}

void lidb_layer_norm(const float *x, float *y, size_t rows, size_t c, const float *weight, const float *bias, float eps) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
        double mean = sum_f(xr, c) / (double)c;
        double var = sqdev_f(xr, c, mean) / (double)c;
        float inv = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        for (size_t i = 0; i < c; i++) yr[i] = (xr[i] - m) * inv * weight[i] + bias[i];
    }
}

// MARK: - GEGLU

// erf with the Abramowitz–Stegun 7.1.26 rational approximation (|error| ≤ 1.5e-7).
#ifdef LIDB_X86
__attribute__((target("avx2,fma")))
static inline __m256 erf256(__m256 x) {
    const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), ax, one));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 e = lidb_exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(ax, ax)));
    __m256 r = _mm256_fnmadd_ps(p, e, one);
    return _mm256_or_ps(r, sign);
}

__attribute__((target("avx2,fma")))
static void geglu_avx2(const float *proj, float *out, size_t rows, size_t inner) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), rs2 = _mm256_set1_ps(0.70710678118654752f);
    for (size_t r = 0; r < rows; r++) {
        const float *a = proj + r * 2 * inner, *g = a + inner;
        float *o = out + r * inner;
        size_t j = 0;
        for (; j + 8 <= inner; j += 8) {
            __m256 gv = _mm256_loadu_ps(g + j);
            __m256 ge = _mm256_mul_ps(_mm256_mul_ps(half, gv), _mm256_add_ps(one, erf256(_mm256_mul_ps(gv, rs2))));
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(a + j), ge));
        }
        for (; j < inner; j++) o[j] = a[j] * (float)(0.5 * g[j] * (1 + erf(g[j] * 0.70710678118654752)));
    }
}
#endif

void lidb_geglu(const float *proj, float *out, size_t rows, size_t inner) {
#ifdef LIDB_X86
    if (lidb_has_avx2_fma()) { geglu_avx2(proj, out, rows, inner); return; }
#endif
    for (size_t r = 0; r < rows; r++) {
        const float *a = proj + r * 2 * inner, *g = a + inner;
        for (size_t j = 0; j < inner; j++) out[r * inner + j] = a[j] * (float)(0.5 * g[j] * (1 + erf(g[j] * 0.70710678118654752)));
    }
}

// MARK: - Layout

void lidb_im2col(const float *x, size_t c, size_t h, size_t w, size_t k, size_t stride, size_t pad,
                 size_t col0, size_t ncols, float *col) {
    const size_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
    (void)ho;
    for (size_t ch = 0; ch < c; ch++) {
        const float *src = x + ch * h * w;
        for (size_t ky = 0; ky < k; ky++) {
            for (size_t kx = 0; kx < k; kx++) {
                float *dst = col + ((ch * k + ky) * k + kx) * ncols;
                size_t j = 0;
                while (j < ncols) {
                    size_t pos = col0 + j, oy = pos / wo, ox0 = pos % wo;
                    size_t seg = wo - ox0;
                    if (seg > ncols - j) seg = ncols - j;
                    long iy = (long)(oy * stride + ky) - (long)pad;
                    float *d = dst + j;
                    if (iy < 0 || iy >= (long)h) {
                        memset(d, 0, seg * sizeof(float));
                    } else {
                        const float *row = src + (size_t)iy * w;
                        if (stride == 1) {
                            // ix = ox + kx - pad for ox in [ox0, ox0 + seg)
                            long first = (long)ox0 + (long)kx - (long)pad, last = first + (long)seg;  // [first, last)
                            long lo = first < 0 ? 0 : first, hi = last > (long)w ? (long)w : last;
                            size_t s = 0;
                            if (lo > first) { size_t z = (size_t)(lo - first); if (z > seg) z = seg; memset(d, 0, z * sizeof(float)); s = z; }
                            if (hi > lo) { memcpy(d + s, row + lo, (size_t)(hi - lo) * sizeof(float)); s += (size_t)(hi - lo); }
                            if (s < seg) memset(d + s, 0, (seg - s) * sizeof(float));
                        } else {
                            for (size_t t = 0; t < seg; t++) {
                                long ix = (long)((ox0 + t) * stride + kx) - (long)pad;
                                d[t] = (ix >= 0 && ix < (long)w) ? row[ix] : 0.0f;
                            }
                        }
                    }
                    j += seg;
                }
            }
        }
    }
}

void lidb_transpose(const float *src, float *dst, size_t rows, size_t cols) {
    const size_t B = 32;
    for (size_t i0 = 0; i0 < rows; i0 += B) {
        size_t i1 = i0 + B < rows ? i0 + B : rows;
        for (size_t j0 = 0; j0 < cols; j0 += B) {
            size_t j1 = j0 + B < cols ? j0 + B : cols;
            for (size_t i = i0; i < i1; i++)
                for (size_t j = j0; j < j1; j++) dst[j * rows + i] = src[i * cols + j];
        }
    }
}

void lidb_add(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void lidb_add_channel_bias(float *y, const float *bias, size_t channels, size_t hw) {
    for (size_t c = 0; c < channels; c++) {
        float b = bias[c];
        float *row = y + c * hw;
        for (size_t i = 0; i < hw; i++) row[i] += b;
    }
}

// MARK: - Winograd F(2×2, 3×3)
//
// Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A over 4×4 input tiles d (stride 2) giving 2×2 output tiles:
// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
// Aᵀ = [1 1 1 0; 0 1 -1 -1]. The ⊙ summed over input channels is 16 GEMMs.

/// G g Gᵀ of one 3×3 kernel g (row-major; read reversed — g[8 − t] — when `reversed`), as
/// column q of the 16 rows of tmp.
static inline void winograd_kernel(const float *g, int reversed, float tmp[16][64], size_t q) {
    float k[9];
    if (reversed) { for (int t = 0; t < 9; t++) k[t] = g[8 - t]; }
    else { for (int t = 0; t < 9; t++) k[t] = g[t]; }
    float t4[4][3];
    for (int j = 0; j < 3; j++) {
        float g0 = k[j], g1 = k[3 + j], g2 = k[6 + j];
        t4[0][j] = g0;
        t4[1][j] = 0.5f * (g0 + g1 + g2);
        t4[2][j] = 0.5f * (g0 - g1 + g2);
        t4[3][j] = g2;
    }
    for (int i = 0; i < 4; i++) {
        float a = t4[i][0], b = t4[i][1], d = t4[i][2];
        tmp[4 * i + 0][q] = a;
        tmp[4 * i + 1][q] = 0.5f * (a + b + d);
        tmp[4 * i + 2][q] = 0.5f * (a - b + d);
        tmp[4 * i + 3][q] = d;
    }
}

void lidb_winograd_weights(const float *w, size_t out, size_t in, size_t o_begin, size_t o_end, float *u) {
    const size_t plane = out * in, B = 64;
    float tmp[16][64];
    for (size_t o = o_begin; o < o_end; o++) {
        for (size_t c0 = 0; c0 < in; c0 += B) {
            size_t nb = in - c0 < B ? in - c0 : B;
            for (size_t q = 0; q < nb; q++) winograd_kernel(w + (o * in + c0 + q) * 9, 0, tmp, q);
            for (int k = 0; k < 16; k++) memcpy(u + k * plane + o * in + c0, tmp[k], nb * sizeof(float));
        }
    }
}

void lidb_winograd_weights_flipped(const float *w, size_t w_in, size_t ob, size_t in, size_t p_base, size_t o_begin,
                                   size_t o_end, float *u) {
    const size_t plane = ob * in, B = 64;
    float tmp[16][64];
    for (size_t o = o_begin; o < o_end; o++) {
        for (size_t c0 = 0; c0 < in; c0 += B) {
            size_t nb = in - c0 < B ? in - c0 : B;
            for (size_t q = 0; q < nb; q++) winograd_kernel(w + ((c0 + q) * w_in + p_base + o) * 9, 1, tmp, q);
            for (int k = 0; k < 16; k++) memcpy(u + k * plane + o * in + c0, tmp[k], nb * sizeof(float));
        }
    }
}

void lidb_winograd_input(const float *x, size_t c, size_t h, size_t w, size_t t0, size_t nt, size_t c_begin, size_t c_end,
                         const float *scale, const float *shift, int silu, int upsample, float *v) {
    const size_t tw = (w + 1) / 2, plane = c * nt, pw = 2 * tw + 2;
    // Per tile row: the column transform Bᵀ d of the four input rows (zero-padded to 2·tw + 2
    // columns), then the row transform of each tile's four columns.
    float *buf = malloc(8 * pw * sizeof(float));
    if (!buf) abort();
    float (*rows)[pw] = (float (*)[pw])buf, (*e)[pw] = (float (*)[pw])(buf + 4 * pw);
    for (size_t ch = c_begin; ch < c_end; ch++) {
        const size_t sh = upsample ? h / 2 : h, sw = upsample ? w / 2 : w;
        const float *src = x + ch * sh * sw;
        size_t j = 0;
        while (j < nt) {
            size_t t = t0 + j, ty = t / tw, tx0 = t % tw;
            size_t run = tw - tx0;
            if (run > nt - j) run = nt - j;
            long y0 = 2 * (long)ty - 1;
            for (int r = 0; r < 4; r++) {
                long yy = y0 + r;
                rows[r][0] = 0.0f;
                if (yy >= 0 && yy < (long)h) {
                    if (upsample) {
                        const float *srow = src + (size_t)(yy / 2) * sw;
                        for (size_t q = 0; q < sw; q++) { rows[r][1 + 2 * q] = srow[q]; rows[r][2 + 2 * q] = srow[q]; }
                    } else {
                        memcpy(&rows[r][1], src + (size_t)yy * w, w * sizeof(float));
                    }
                    // The normalisation (and SiLU) before the convolution; padding stays zero.
                    if (scale) affine(&rows[r][1], &rows[r][1], w, scale[ch], shift[ch], silu);
                } else {
                    memset(&rows[r][1], 0, w * sizeof(float));
                }
                for (size_t q = w + 1; q < pw; q++) rows[r][q] = 0.0f;
            }
            for (size_t q = 0; q < pw; q++) {
                e[0][q] = rows[0][q] - rows[2][q];
                e[1][q] = rows[1][q] + rows[2][q];
                e[2][q] = rows[2][q] - rows[1][q];
                e[3][q] = rows[1][q] - rows[3][q];
            }
            float *dst = v + ch * nt + j;
            for (int i = 0; i < 4; i++) {
                float *d0 = dst + (4 * i + 0) * plane, *d1 = dst + (4 * i + 1) * plane;
                float *d2 = dst + (4 * i + 2) * plane, *d3 = dst + (4 * i + 3) * plane;
                const float *ei = e[i] + 2 * tx0;  // tile tx reads padded columns 2tx … 2tx + 3
                for (size_t k = 0; k < run; k++) {
                    const float *q = ei + 2 * k;
                    d0[k] = q[0] - q[2];
                    d1[k] = q[1] + q[2];
                    d2[k] = q[2] - q[1];
                    d3[k] = q[1] - q[3];
                }
            }
            j += run;
        }
    }
    free(buf);
}

void lidb_winograd_output(const float *m, size_t out, size_t h, size_t w, size_t t0, size_t nt, size_t o_begin, size_t o_end,
                          const float *bias, float *y) {
    const size_t tw = (w + 1) / 2, plane = out * nt;
    for (size_t o = o_begin; o < o_end; o++) {
        float b = bias ? bias[o] : 0.0f;
        float *dst = y + o * h * w;
        const float *src = m + o * nt;
        for (size_t j = 0; j < nt; j++) {
            size_t t = t0 + j, ty = t / tw, tx = t % tw;
            float s[4][4];
            for (int k = 0; k < 16; k++) s[k / 4][k % 4] = src[k * plane + j];
            float r[2][4];
            for (int q = 0; q < 4; q++) {
                r[0][q] = s[0][q] + s[1][q] + s[2][q];
                r[1][q] = s[1][q] - s[2][q] - s[3][q];
            }
            size_t oy = 2 * ty, ox = 2 * tx;
            for (int i = 0; i < 2; i++) {
                if (oy + (size_t)i >= h) break;
                float *row = dst + (oy + (size_t)i) * w + ox;
                row[0] = b + r[i][0] + r[i][1] + r[i][2];
                if (ox + 1 < w) row[1] = b + r[i][1] - r[i][2] - r[i][3];
            }
        }
    }
}

void lidb_keep_freed_memory(void) {
#if defined(__GLIBC__)
    // Allocations up to 32 MiB come from the heap, and freed memory is not handed back to the
    // kernel at once: the runtime frees and reallocates buffers of the same sizes every layer, and
    // fresh pages from the kernel would have to be zeroed each time.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

int lidb_blas_short_wait(int exponent) {
    if (exponent < 4 || exponent > 30) return -1;
    if (getenv("OPENBLAS_THREAD_TIMEOUT")) return 0;
    // Looked up at run time: these are OpenBLAS's own exports, not CBLAS, and absent elsewhere.
    void (*read_env)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "openblas_read_env");
    int (*shutdown)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
    if (!read_env || !shutdown) return 0;
    char value[8];
    snprintf(value, sizeof value, "%d", exponent);
    if (setenv("OPENBLAS_THREAD_TIMEOUT", value, 0) != 0) return 0;
    read_env();
    shutdown();
    return 1;
}

int lidb_return_freed_memory(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

