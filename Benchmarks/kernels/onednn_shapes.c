/*
 * onednn_shapes.c -- oneDNN vs OpenBLAS on Stable Diffusion 1.5 UNet shapes.
 *
 * What it measures
 *   The time of the matrix products and 3x3 convolutions that dominate one
 *   SD 1.5 UNet step at 512x512 (64x64 latents, batch 2 for classifier-free
 *   guidance), with:
 *     gemm: OpenBLAS cblas_sgemm f32; oneDNN matmul f32 (plain row-major
 *           'ab'/'abc'); oneDNN matmul bf16 src+weights, f32 dst/accumulation.
 *     conv: im2col + OpenBLAS sgemm f32 (lidb-style baseline, im2col timed
 *           too); oneDNN conv f32 with format_tag_any (blocked layouts chosen
 *           by oneDNN); oneDNN conv f32 with plain NCHW src/dst; oneDNN conv
 *           bf16 src+weights with f32 dst and with bf16 dst (both are
 *           timed; the faster allowed one is named per shape).
 *   The im2col of the baseline is a plain single-threaded loop; only the
 *   sgemm in it uses the OpenBLAS threads.
 *   Weights of every oneDNN conv use format_tag_any (a runtime would prepack
 *   them once at load time). Every conversion/reorder of inputs (f32->bf16,
 *   plain->blocked) happens OUTSIDE the timed region; only the primitive
 *   execution (or sgemm / im2col+sgemm) is timed.
 *
 * Why
 *   It informs whether lidb should use oneDNN for f32 and/or bf16 compute
 *   instead of (or next to) OpenBLAS, and whether oneDNN's bf16 kernels are
 *   actually dispatched on this CPU (the effective ISA is printed).
 *
 * Method
 *   Each case: one warm-up run, then the median of N timed runs (N = argv,
 *   default 5). Output: one line per case with shape, variant, median ms,
 *   GFLOP/s (2*M*N*K for gemm, 2*N*Cout*H*W*Cin*9 for conv) and an error.
 *   Correctness is checked once per case: every result is compared with the
 *   OpenBLAS f32 result of the same shape; the error is
 *   max|out - ref| / max|ref| ("relative to the largest reference value",
 *   which avoids blowing up on near-zero elements).
 *   Every oneDNN status is checked; a failure (e.g. bf16 primitive not
 *   implemented) is reported for that case and the program continues.
 *
 * Usage
 *   onednn_shapes [--quick] [N] [summary.json]
 *     --quick  one gemm shape and one conv shape only (smoke test)
 *   Environment: OMP_NUM_THREADS (oneDNN, OpenMP build), BENCH_THREADS
 *   (OpenBLAS, default 2), BENCH_ALLOW_REF=1 to time oneDNN reference
 *   (non-JIT) implementations, which are skipped by default as far too slow.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

/* ------------------------------------------------------------------------ */
/* Results                                                                  */

#define MAX_RESULTS 256

typedef struct {
    char kind[8];        /* "gemm" or "conv" */
    char shape[96];
    char variant[32];
    char impl[64];       /* oneDNN implementation name, or library name */
    char layout[128];    /* oneDNN layouts src/wei/dst actually used */
    char status[96];     /* "ok" or an error description */
    double ms, gflops, err; /* err < 0: not checked */
} result_t;

static result_t g_results[MAX_RESULTS];
static int g_nresults;
static int g_reps = 5;
static int g_allow_ref;
static dnnl_engine_t g_eng;
static dnnl_stream_t g_strm;

static result_t *new_result(const char *kind, const char *shape,
        const char *variant) {
    static result_t overflow;
    result_t *r = g_nresults < MAX_RESULTS ? &g_results[g_nresults++]
                                           : &overflow;
    memset(r, 0, sizeof(*r));
    snprintf(r->kind, sizeof r->kind, "%s", kind);
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    snprintf(r->variant, sizeof r->variant, "%s", variant);
    snprintf(r->status, sizeof r->status, "ok");
    r->err = -1;
    return r;
}

static void print_result(const result_t *r) {
    if (strcmp(r->status, "ok") != 0) {
        printf("  %-44s %-18s FAILED: %s\n", r->shape, r->variant, r->status);
    } else {
        printf("  %-44s %-18s %9.2f ms %8.1f GFLOP/s", r->shape, r->variant,
                r->ms, r->gflops);
        if (r->err >= 0) printf("  err %.2e", r->err);
        if (r->impl[0]) printf("  [%s", r->impl);
        if (r->layout[0]) printf(" %s", r->layout);
        if (r->impl[0]) printf("]");
        printf("\n");
    }
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A timed body: returns 0 on success, or a nonzero dnnl_status_t. */
typedef int (*body_fn)(void *ctx);

/* One warm-up, then the median of g_reps runs. The short sleep first lets
 * the other library's worker threads (OpenBLAS pthreads, oneDNN's OpenMP
 * team) stop spin-waiting, so they do not steal the 2 cores from this run. */
static int time_median(body_fn fn, void *ctx, double *median_ms) {
    struct timespec settle = {0, 150 * 1000 * 1000};
    nanosleep(&settle, NULL);
    int st = fn(ctx);
    if (st) return st;
    double t[g_reps];
    for (int i = 0; i < g_reps; i++) {
        double t0 = now_ms();
        if ((st = fn(ctx))) return st;
        t[i] = now_ms() - t0;
    }
    qsort(t, g_reps, sizeof(double), cmp_double);
    *median_ms = g_reps % 2 ? t[g_reps / 2]
                            : 0.5 * (t[g_reps / 2 - 1] + t[g_reps / 2]);
    return 0;
}

static void fill_random(float *x, size_t n, uint32_t seed, float scale) {
    uint32_t s = seed ? seed : 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5;   /* xorshift32 */
        x[i] = scale * ((float)(s >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

/* max|out - ref| / max|ref| */
static double rel_err(const float *out, const float *ref, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - ref[i]);
        if (d > maxdiff || d != d) maxdiff = d != d ? INFINITY : d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

static float *alloc_f32(size_t n) {
    float *p = NULL;
    if (posix_memalign((void **)&p, 64, n * sizeof(float) + 64)) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(1);
    }
    return p;
}

/* Short oneDNN-style layout name of a memory desc: letters are dims in
 * memory order (outermost first), upper case = blocked, then the inner
 * blocks, e.g. "aBcd16b" = nChw16c, "abcd" = NCHW. */
static void md_str(const dnnl_memory_desc_t *md, char *buf, size_t len) {
    if (md->format_kind != dnnl_blocked) {
        snprintf(buf, len, "%s:%s", dnnl_dt2str(md->data_type),
                dnnl_fmt_kind2str(md->format_kind));
        return;
    }
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int order[DNNL_MAX_NDIMS], blocked[DNNL_MAX_NDIMS] = {0};
    for (int i = 0; i < md->ndims; i++) order[i] = i;
    for (int i = 1; i < md->ndims; i++) /* stable sort by stride, desc */
        for (int j = i; j > 0 && b->strides[order[j]] > b->strides[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    for (int i = 0; i < b->inner_nblks; i++) blocked[b->inner_idxs[i]] = 1;
    size_t p = (size_t)snprintf(buf, len, "%s:", dnnl_dt2str(md->data_type));
    for (int i = 0; i < md->ndims && p + 1 < len; i++) {
        char c = (char)('a' + order[i]);
        buf[p++] = blocked[order[i]] ? (char)toupper(c) : c;
    }
    buf[p < len ? p : len - 1] = 0;
    for (int i = 0; i < b->inner_nblks && p < len; i++)
        p += (size_t)snprintf(buf + p, len - p, "%lld%c",
                (long long)b->inner_blks[i], 'a' + (int)b->inner_idxs[i]);
}

/* Checks a dnnl call inside a case; on failure records
 * "<function>: <status>" in r->status and jumps to the local `cleanup`. */
#define DNNL_TRY(call)                                                       \
    do {                                                                     \
        dnnl_status_t st_ = (call);                                          \
        if (st_ != dnnl_success) {                                           \
            set_failure(r, #call, st_);                                      \
            goto cleanup;                                                    \
        }                                                                    \
    } while (0)

static void set_failure(result_t *r, const char *call, dnnl_status_t st) {
    int fn_len = (int)strcspn(call, "(");
    snprintf(r->status, sizeof r->status, "%.*s: %s", fn_len, call,
            dnnl_status2str(st));
}

/* Reorders src memory into dst memory (outside any timed region). */
static dnnl_status_t reorder(dnnl_memory_t src, dnnl_memory_t dst) {
    const dnnl_memory_desc_t *smd, *dmd;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_status_t st;
    if ((st = dnnl_memory_get_memory_desc(src, &smd))) return st;
    if ((st = dnnl_memory_get_memory_desc(dst, &dmd))) return st;
    if ((st = dnnl_reorder_primitive_desc_create(&pd, smd, g_eng, dmd, g_eng, NULL)))
        return st;
    if (!(st = dnnl_primitive_create(&prim, pd))) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
        st = dnnl_primitive_execute(prim, g_strm, 2, args);
        if (!st) st = dnnl_stream_wait(g_strm);
        dnnl_primitive_destroy(prim);
    }
    dnnl_primitive_desc_destroy(pd);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Generic oneDNN run: matmul or convolution primitive descriptor already   */
/* created; inputs are user f32 plain buffers, reordered outside the timer. */

typedef struct {
    dnnl_primitive_t prim;
    dnnl_exec_arg_t args[3];
} dnnl_body_ctx;

static int dnnl_body(void *p) {
    dnnl_body_ctx *c = p;
    dnnl_status_t st = dnnl_primitive_execute(c->prim, g_strm, 3, c->args);
    if (st == dnnl_success) st = dnnl_stream_wait(g_strm);
    return (int)st;
}

/* Memory for `want`: wraps `user` directly when the layout is identical to
 * the user's plain f32 layout, otherwise allocates (and, if `copy_in`,
 * reorders the user data into it). */
static dnnl_status_t make_arg(const dnnl_memory_desc_t *want,
        const dnnl_memory_desc_t *user_md, float *user, int copy_in,
        dnnl_memory_t *out) {
    dnnl_status_t st;
    *out = NULL;
    if (dnnl_memory_desc_equal(want, user_md))
        return dnnl_memory_create(out, want, g_eng, user);
    if ((st = dnnl_memory_create(out, want, g_eng, DNNL_MEMORY_ALLOCATE)))
        return st;
    if (copy_in) {
        dnnl_memory_t um = NULL;
        if ((st = dnnl_memory_create(&um, user_md, g_eng, user))) return st;
        st = reorder(um, *out);
        dnnl_memory_destroy(um);
    }
    return st;
}

/* Creates the pd from op_desc, runs and times it; result (converted back
 * to plain f32) goes to user_dst and is compared with ref. pd creation
 * failures are recorded in r. */
static void dnnl_run(result_t *r, const_dnnl_op_desc_t op_desc, double flops,
        const dnnl_memory_desc_t *src_umd, float *src,
        const dnnl_memory_desc_t *wei_umd, float *wei,
        const dnnl_memory_desc_t *dst_umd, float *user_dst,
        const float *ref, size_t n_out) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t msrc = NULL, mwei = NULL, mdst = NULL, mout = NULL;
    const char *impl = NULL;
    char ls[32], lw[32], ld[32];

    DNNL_TRY(dnnl_primitive_desc_create(&pd, op_desc, NULL, g_eng, NULL));
    DNNL_TRY(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(r->impl, sizeof r->impl, "%s", impl ? impl : "?");

    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    if (!smd || !wmd || !dmd) {
        snprintf(r->status, sizeof r->status, "cannot query memory descs");
        goto cleanup;
    }
    md_str(smd, ls, sizeof ls); md_str(wmd, lw, sizeof lw); md_str(dmd, ld, sizeof ld);
    snprintf(r->layout, sizeof r->layout, "src %s wei %s dst %s", ls, lw, ld);

    if (!g_allow_ref && impl && strncmp(impl, "ref", 3) == 0) {
        snprintf(r->status, sizeof r->status,
                "skipped: only reference impl '%s' (BENCH_ALLOW_REF=1 to time)", impl);
        goto cleanup;
    }

    DNNL_TRY(make_arg(smd, src_umd, src, 1, &msrc));
    DNNL_TRY(make_arg(wmd, wei_umd, wei, 1, &mwei));
    DNNL_TRY(make_arg(dmd, dst_umd, user_dst, 0, &mdst));
    DNNL_TRY(dnnl_primitive_create(&prim, pd));

    dnnl_body_ctx ctx = {prim, {{DNNL_ARG_SRC, msrc}, {DNNL_ARG_WEIGHTS, mwei},
                                {DNNL_ARG_DST, mdst}}};
    int st = time_median(dnnl_body, &ctx, &r->ms);
    if (st) {
        snprintf(r->status, sizeof r->status, "execute: %s",
                dnnl_status2str((dnnl_status_t)st));
        goto cleanup;
    }
    r->gflops = flops / (r->ms * 1e6);

    /* Bring the result back to plain f32 (unless it already is) and check. */
    if (!dnnl_memory_desc_equal(dmd, dst_umd)) {
        DNNL_TRY(dnnl_memory_create(&mout, dst_umd, g_eng, user_dst));
        DNNL_TRY(reorder(mdst, mout));
    }
    r->err = rel_err(user_dst, ref, n_out);

cleanup:
    if (prim) dnnl_primitive_destroy(prim);
    if (msrc) dnnl_memory_destroy(msrc);
    if (mwei) dnnl_memory_destroy(mwei);
    if (mdst) dnnl_memory_destroy(mdst);
    if (mout) dnnl_memory_destroy(mout);
    if (pd) dnnl_primitive_desc_destroy(pd);
    print_result(r);
}

/* ------------------------------------------------------------------------ */
/* (1) Matrix products: C[b] (M x N) = A[b] (M x K) * B[b] (K x N), row-major */

typedef struct { int batch, M, K, N; const float *A, *B; float *C; } blas_gemm_ctx;

static int blas_gemm_body(void *p) {
    blas_gemm_ctx *c = p;
    for (int b = 0; b < c->batch; b++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->M, c->N, c->K,
                1.0f, c->A + (size_t)b * c->M * c->K, c->K,
                c->B + (size_t)b * c->K * c->N, c->N,
                0.0f, c->C + (size_t)b * c->M * c->N, c->N);
    return 0;
}

static void run_gemm_case(int batch, int M, int K, int N, const char *what) {
    char shape[96];
    if (batch > 1)
        snprintf(shape, sizeof shape, "%dx M=%d K=%d N=%d (%s)", batch, M, K, N, what);
    else
        snprintf(shape, sizeof shape, "M=%d K=%d N=%d (%s)", M, K, N, what);
    double flops = 2.0 * batch * M * (double)N * K;
    size_t na = (size_t)batch * M * K, nb = (size_t)batch * K * N,
           nc = (size_t)batch * M * N;
    float *A = alloc_f32(na), *B = alloc_f32(nb), *ref = alloc_f32(nc),
          *C = alloc_f32(nc);
    fill_random(A, na, 1234u + (uint32_t)M, 1.0f);
    fill_random(B, nb, 777u + (uint32_t)N, 1.0f / sqrtf((float)K));

    /* OpenBLAS f32: the reference for the error checks. */
    result_t *r = new_result("gemm", shape, "openblas_f32");
    snprintf(r->impl, sizeof r->impl, "openblas %s", openblas_get_corename());
    blas_gemm_ctx bc = {batch, M, K, N, A, B, ref};
    time_median(blas_gemm_body, &bc, &r->ms);
    r->gflops = flops / (r->ms * 1e6);
    print_result(r);

    /* oneDNN matmul: f32 and bf16 (src, weights bf16; dst f32). */
    int nd = batch > 1 ? 3 : 2;
    dnnl_dims_t da, db, dc;
    if (nd == 3) {
        da[0] = db[0] = dc[0] = batch;
        da[1] = M; da[2] = K; db[1] = K; db[2] = N; dc[1] = M; dc[2] = N;
    } else {
        da[0] = M; da[1] = K; db[0] = K; db[1] = N; dc[0] = M; dc[1] = N;
    }
    dnnl_format_tag_t plain = nd == 3 ? dnnl_abc : dnnl_ab;
    dnnl_memory_desc_t ua, ub, uc;  /* user f32 plain */
    dnnl_memory_desc_init_by_tag(&ua, nd, da, dnnl_f32, plain);
    dnnl_memory_desc_init_by_tag(&ub, nd, db, dnnl_f32, plain);
    dnnl_memory_desc_init_by_tag(&uc, nd, dc, dnnl_f32, plain);

    const struct { const char *name; dnnl_data_type_t in; } vs[] = {
        {"dnnl_f32", dnnl_f32}, {"dnnl_bf16", dnnl_bf16}};
    for (int v = 0; v < 2; v++) {
        r = new_result("gemm", shape, vs[v].name);
        dnnl_memory_desc_t sa, sb, sc;
        dnnl_matmul_desc_t desc;
        memset(C, 0, nc * sizeof(float));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sa, nd, da, vs[v].in, plain));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sb, nd, db, vs[v].in, plain));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sc, nd, dc, dnnl_f32, plain));
        DNNL_TRY(dnnl_matmul_desc_init(&desc, &sa, &sb, NULL, &sc));
        dnnl_run(r, &desc, flops, &ua, A, &ub, B, &uc, C, ref, nc);
        continue;
    cleanup:
        print_result(r);
    }
    free(A); free(B); free(ref); free(C);
}

/* ------------------------------------------------------------------------ */
/* (2) 3x3 convolutions, stride 1, padding 1, NCHW, forward, no bias         */

/* col[(c*9 + kh*3 + kw), h*W + w] = x[c, h+kh-1, w+kw-1] (0 outside). */
static void im2col3x3(const float *x, int C, int H, int W, float *col) {
    size_t hw = (size_t)H * W;
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                float *row = col + (size_t)(c * 9 + kh * 3 + kw) * hw;
                for (int h = 0; h < H; h++) {
                    int ih = h + kh - 1;
                    float *dst = row + (size_t)h * W;
                    if (ih < 0 || ih >= H) {
                        memset(dst, 0, W * sizeof(float));
                        continue;
                    }
                    const float *src = x + ((size_t)c * H + ih) * W;
                    for (int w = 0; w < W; w++) {
                        int iw = w + kw - 1;
                        dst[w] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                    }
                }
            }
}

typedef struct { int N, Cin, Cout, H, W; const float *x, *wei; float *col, *y; } im2col_ctx;

static int im2col_body(void *p) {
    im2col_ctx *c = p;
    int hw = c->H * c->W, k = c->Cin * 9;
    for (int n = 0; n < c->N; n++) {
        im2col3x3(c->x + (size_t)n * c->Cin * hw, c->Cin, c->H, c->W, c->col);
        /* y[n] (Cout x HW) = wei (Cout x Cin*9) * col (Cin*9 x HW) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->Cout, hw, k,
                1.0f, c->wei, k, c->col, hw, 0.0f,
                c->y + (size_t)n * c->Cout * hw, hw);
    }
    return 0;
}

static void run_conv_case(int N, int Cin, int Cout, int H, int W) {
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d Cin=%d Cout=%d %dx%d", N, Cin, Cout, H, W);
    double flops = 2.0 * N * Cout * (double)H * W * Cin * 9;
    size_t nx = (size_t)N * Cin * H * W, nw = (size_t)Cout * Cin * 9,
           ny = (size_t)N * Cout * H * W, ncol = (size_t)Cin * 9 * H * W;
    float *x = alloc_f32(nx), *wei = alloc_f32(nw), *ref = alloc_f32(ny),
          *y = alloc_f32(ny), *col = alloc_f32(ncol);
    fill_random(x, nx, 4321u + (uint32_t)Cin, 1.0f);
    fill_random(wei, nw, 99u + (uint32_t)Cout, 1.0f / sqrtf(Cin * 9.0f));

    /* im2col + OpenBLAS f32: the reference for the error checks. */
    result_t *r = new_result("conv", shape, "im2col_openblas");
    snprintf(r->impl, sizeof r->impl, "openblas %s", openblas_get_corename());
    im2col_ctx ic = {N, Cin, Cout, H, W, x, wei, col, ref};
    time_median(im2col_body, &ic, &r->ms);
    r->gflops = flops / (r->ms * 1e6);
    print_result(r);
    free(col);

    dnnl_dims_t dx = {N, Cin, H, W}, dw = {Cout, Cin, 3, 3}, dy = {N, Cout, H, W};
    dnnl_dims_t strides = {1, 1}, pad = {1, 1};
    dnnl_memory_desc_t ux, uw, uy;  /* user f32 NCHW / OIHW */
    dnnl_memory_desc_init_by_tag(&ux, 4, dx, dnnl_f32, dnnl_abcd);
    dnnl_memory_desc_init_by_tag(&uw, 4, dw, dnnl_f32, dnnl_abcd);
    dnnl_memory_desc_init_by_tag(&uy, 4, dy, dnnl_f32, dnnl_abcd);

    const struct {
        const char *name;
        dnnl_data_type_t in, out;
        dnnl_format_tag_t act; /* src/dst tag; weights always 'any' */
    } vs[] = {
        {"dnnl_f32_any", dnnl_f32, dnnl_f32, dnnl_format_tag_any},
        {"dnnl_f32_nchw", dnnl_f32, dnnl_f32, dnnl_abcd},
        {"dnnl_bf16_dstf32", dnnl_bf16, dnnl_f32, dnnl_format_tag_any},
        {"dnnl_bf16_dstbf16", dnnl_bf16, dnnl_bf16, dnnl_format_tag_any},
    };
    int nv = (int)(sizeof vs / sizeof vs[0]);
    result_t *bf16_best = NULL;
    for (int v = 0; v < nv; v++) {
        r = new_result("conv", shape, vs[v].name);
        dnnl_memory_desc_t sx, sw, sy;
        dnnl_convolution_desc_t desc;
        memset(y, 0, ny * sizeof(float));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sx, 4, dx, vs[v].in, vs[v].act));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sw, 4, dw, vs[v].in, dnnl_format_tag_any));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&sy, 4, dy, vs[v].out, vs[v].act));
        DNNL_TRY(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference,
                dnnl_convolution_direct, &sx, &sw, NULL, &sy, strides, pad, pad));
        dnnl_run(r, &desc, flops, &ux, x, &uw, wei, &uy, y, ref, ny);
        goto next;
    cleanup:
        print_result(r);
    next:
        if (vs[v].in == dnnl_bf16 && strcmp(r->status, "ok") == 0
                && (!bf16_best || r->ms < bf16_best->ms))
            bf16_best = r;
    }
    if (bf16_best)
        printf("  %-44s bf16 faster variant: %s (dst %s)\n", shape,
                bf16_best->variant,
                strstr(bf16_best->variant, "dstbf16") ? "bf16" : "f32");
    else
        printf("  %-44s bf16: no bf16 convolution could be created/run\n", shape);
    free(x); free(wei); free(ref); free(y);
}

/* ------------------------------------------------------------------------ */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
    fputc('"', f);
}

static void write_json(const char *path, const char *isa, int quick) {
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); return; }
    const dnnl_version_t *ver = dnnl_version();
    const char *omp = getenv("OMP_NUM_THREADS");
    fprintf(f, "{\n  \"onednn_version\": \"%d.%d.%d\",\n", ver->major, ver->minor, ver->patch);
    fprintf(f, "  \"onednn_isa\": "); json_str(f, isa);
    fprintf(f, ",\n  \"openblas_core\": "); json_str(f, openblas_get_corename());
    fprintf(f, ",\n  \"omp_num_threads\": "); json_str(f, omp ? omp : "");
    fprintf(f, ",\n  \"openblas_threads\": %d,\n  \"reps\": %d,\n  \"quick\": %s,\n",
            openblas_get_num_threads(), g_reps, quick ? "true" : "false");
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < g_nresults; i++) {
        const result_t *r = &g_results[i];
        int ok = strcmp(r->status, "ok") == 0;
        fprintf(f, "    {\"kind\": "); json_str(f, r->kind);
        fprintf(f, ", \"shape\": "); json_str(f, r->shape);
        fprintf(f, ", \"variant\": "); json_str(f, r->variant);
        fprintf(f, ", \"status\": "); json_str(f, r->status);
        if (ok) fprintf(f, ", \"median_ms\": %.4f, \"gflops\": %.2f", r->ms, r->gflops);
        if (ok && r->err >= 0) fprintf(f, ", \"max_rel_err\": %.3e", r->err);
        fprintf(f, ", \"impl\": "); json_str(f, r->impl);
        fprintf(f, ", \"layout\": "); json_str(f, r->layout);
        fprintf(f, "}%s\n", i + 1 < g_nresults ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("JSON summary written to %s\n", path);
}

int main(int argc, char **argv) {
    int quick = 0, npos = 0;
    const char *json_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: %s [--quick] [N=5] [summary.json]\n", argv[0]);
            return 0;
        } else if (npos == 0) {
            char *end;
            long n = strtol(argv[i], &end, 10);
            if (*end || n < 1 || n > 1000) {
                fprintf(stderr, "bad repetition count '%s'\n", argv[i]);
                return 2;
            }
            g_reps = (int)n; npos++;
        } else if (npos == 1) { json_path = argv[i]; npos++; }
        else { fprintf(stderr, "unexpected argument '%s'\n", argv[i]); return 2; }
    }
    const char *ar = getenv("BENCH_ALLOW_REF");
    g_allow_ref = ar && *ar && strcmp(ar, "0") != 0;
    const char *bt = getenv("BENCH_THREADS");
    openblas_set_num_threads(bt ? atoi(bt) : 2);

    dnnl_status_t st = dnnl_engine_create(&g_eng, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&g_strm, g_eng, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        fprintf(stderr, "oneDNN engine/stream creation failed: %s\n", dnnl_status2str(st));
        return 1;
    }
    const dnnl_version_t *ver = dnnl_version();
    const char *isa = dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa());
    const char *omp = getenv("OMP_NUM_THREADS");
    printf("oneDNN %d.%d.%d (%s), effective ISA: %s\n", ver->major, ver->minor,
            ver->patch, dnnl_runtime2str(ver->cpu_runtime), isa);
    printf("OpenBLAS: %s, core %s, threads %d; OMP_NUM_THREADS=%s\n",
            openblas_get_config(), openblas_get_corename(),
            openblas_get_num_threads(), omp ? omp : "(unset)");
    printf("median of %d runs after 1 warm-up%s; err = max|x-ref|/max|ref| vs OpenBLAS f32\n",
            g_reps, quick ? " (--quick)" : "");

    printf("\n== matrix products (row-major A[MxK] * B[KxN]) ==\n");
    if (quick) {
        run_gemm_case(1, 512, 1280, 1280, "attn proj 16x16");
    } else {
        run_gemm_case(1, 8192, 320, 320, "attn proj 64x64");
        run_gemm_case(1, 8192, 320, 2560, "GEGLU proj 64x64");
        run_gemm_case(1, 8192, 1280, 320, "FF out 64x64");
        run_gemm_case(1, 2048, 640, 640, "attn proj 32x32");
        run_gemm_case(1, 2048, 640, 5120, "GEGLU proj 32x32");
        run_gemm_case(1, 512, 1280, 1280, "attn proj 16x16");
        run_gemm_case(1, 512, 1280, 10240, "GEGLU proj 16x16");
        run_gemm_case(16, 4096, 40, 4096, "QK^T 64x64, 2x8 heads");
        run_gemm_case(16, 4096, 4096, 40, "PV 64x64, 2x8 heads");
    }

    printf("\n== 3x3 convolutions, stride 1, pad 1, NCHW, forward ==\n");
    if (quick) {
        run_conv_case(2, 1280, 1280, 8, 8);
    } else {
        run_conv_case(2, 320, 320, 64, 64);
        run_conv_case(2, 640, 640, 32, 32);
        run_conv_case(2, 1280, 1280, 16, 16);
        run_conv_case(2, 1280, 1280, 8, 8);
        run_conv_case(2, 4, 320, 64, 64);
    }

    /* bf16 summary: were the bf16 primitives created? */
    int bf_ok = 0, bf_fail = 0;
    for (int i = 0; i < g_nresults; i++)
        if (strstr(g_results[i].variant, "bf16"))
            *(strcmp(g_results[i].status, "ok") == 0 ? &bf_ok : &bf_fail) += 1;
    printf("\nbf16 primitives: %d created and run, %d failed/skipped (ISA %s)\n",
            bf_ok, bf_fail, isa);

    if (json_path) write_json(json_path, isa, quick);
    dnnl_stream_destroy(g_strm);
    dnnl_engine_destroy(g_eng);
    return 0;
}
