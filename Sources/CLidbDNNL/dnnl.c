// oneDNN's bf16 matmul behind one C call, so Swift needs none of oneDNN's descriptor structs.
#define _GNU_SOURCE
#include "lidb_dnnl.h"

#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static dnnl_engine_t engine;
// One stream per calling thread (the Winograd products run on several threads at once).
static __thread dnnl_stream_t stream;
static int bf16_ready;
static void (*set_omp_threads)(int);
static int (*get_omp_max_threads)(void);
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if (((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) != (unsigned)dnnl_cpu_isa_avx512_core_bf16) return;
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return;
    // oneDNN runs on OpenMP here; its per-thread team size is set through libgomp, which oneDNN
    // has loaded (looked up at run time so nothing else needs to link it).
    set_omp_threads = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    get_omp_max_threads = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    bf16_ready = 1;
}

int lidb_dnnl_bf16_supported(void) {
    pthread_once(&once, init);
    return bf16_ready;
}

static inline uint16_t to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

void lidb_f32_to_bf16_rne(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = to_bf16(src[i]);
}

#if defined(__x86_64__)
#include <immintrin.h>
// vcvtneps2bf16: the same rounding (nearest even; NaN stays NaN), 16 values per instruction.
// Only called once oneDNN has reported AVX-512 BF16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void convert_bf16_avx512(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1);
        __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + i));
        _mm256_mask_storeu_epi16(dst + i, mask, (__m256i)h);
    }
}
#define CONVERT convert_bf16_avx512
#else
#define CONVERT lidb_f32_to_bf16_rne
#endif

// A rows × cols block with leading dimension ld → packed bf16.
static void pack(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst) {
    if (ld == cols) {
        CONVERT(src, dst, rows * cols);
        return;
    }
    for (int64_t r = 0; r < rows; r++) CONVERT(src + r * ld, dst + r * cols, cols);
}

// Per-thread scratch for the bf16 copies, grown as needed.
static __thread uint16_t *scratch;
static __thread int64_t scratch_count;

static uint16_t *scratch_for(int64_t count) {
    if (count <= scratch_count) return scratch;
    uint16_t *p = realloc(scratch, (size_t)count * sizeof(uint16_t));
    if (!p) return NULL;
    scratch = p;
    scratch_count = count;
    return p;
}

// Primitives for recent product shapes, per thread (a UNet evaluation repeats a few dozen shapes
// thousands of times; creating a primitive descriptor costs tens of microseconds). Released with
// the thread.
enum { CACHE_SIZE = 48 };
typedef struct {
    int64_t key[11];
    float alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_t mem[3];
} cached_product;
typedef struct {
    cached_product entries[CACHE_SIZE];
    int count, next;
} product_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void release_entry(cached_product *e) {
    for (int i = 0; i < 3; i++) if (e->mem[i]) dnnl_memory_destroy(e->mem[i]);
    if (e->prim) dnnl_primitive_destroy(e->prim);
    memset(e, 0, sizeof *e);
}

static void release_cache(void *p) {
    product_cache *c = p;
    for (int i = 0; i < c->count; i++) release_entry(&c->entries[i]);
    free(c);
    free(scratch);
    scratch = NULL;
    scratch_count = 0;
    if (stream) {
        dnnl_stream_destroy(stream);
        stream = NULL;
    }
}

static void make_cache_key(void) { pthread_key_create(&cache_key, release_cache); }

static product_cache *thread_cache(void) {
    pthread_once(&cache_once, make_cache_key);
    product_cache *c = pthread_getspecific(cache_key);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (c && pthread_setspecific(cache_key, c) != 0) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

// Creates the primitive and its memory objects (data handles set at each call) for one shape.
static dnnl_status_t create_product(cached_product *e, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                    float alpha, float beta, int64_t ldc) {
    dnnl_memory_desc_t md[3];
    dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n};
    dnnl_dims_t as = {trans_a ? 1 : k, trans_a ? m : 1}, bs = {trans_b ? 1 : n, trans_b ? k : 1}, cs = {ldc, 1};
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(&md[0], 2, ad, dnnl_bf16, as);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_strides(&md[1], 2, bd, dnnl_bf16, bs);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_strides(&md[2], 2, cd, dnnl_f32, cs);
    dnnl_matmul_desc_t desc;
    if (s == dnnl_success) s = dnnl_matmul_desc_init(&desc, &md[0], &md[1], NULL, &md[2]);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success && alpha != 1.0f) s = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
    if (s == dnnl_success && beta != 0.0f) {
        s = dnnl_post_ops_create(&ops);
        if (s == dnnl_success) s = dnnl_post_ops_append_sum(ops, beta);
        if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, ops);
    }
    dnnl_primitive_desc_t pd = NULL;
    if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    if (s == dnnl_success) {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl || strncmp(impl, "ref", 3) == 0) {
            s = dnnl_unimplemented;  // only the slow reference kernel: binary32 BLAS is faster
        }
    }
    if (s == dnnl_success) s = dnnl_primitive_create(&e->prim, pd);
    for (int i = 0; i < 3 && s == dnnl_success; i++) s = dnnl_memory_create(&e->mem[i], &md[i], engine, DNNL_MEMORY_NONE);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) release_entry(e);
    return s;
}

static int gemm_bf16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                     float beta, float *c, int64_t ldc, int single_thread);

int lidb_dnnl_gemm_bf16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *a, int64_t lda, const float *b, int64_t ldb,
                        float beta, float *c, int64_t ldc, int single_thread) {
    return gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, NULL, lda, b, NULL, ldb, beta, c, ldc, single_thread);
}

int lidb_dnnl_gemm_bf16_b16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, const uint16_t *b16, int64_t ldb,
                            float beta, float *c, int64_t ldc, int single_thread) {
    if (!b16) return -1;
    return gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, NULL, lda, NULL, b16, ldb, beta, c, ldc, single_thread);
}

int lidb_dnnl_gemm_bf16_a16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                            const uint16_t *a16, int64_t lda, const float *b, int64_t ldb,
                            float beta, float *c, int64_t ldc, int single_thread) {
    if (!a16) return -1;
    return gemm_bf16(trans_a, trans_b, m, n, k, alpha, NULL, a16, lda, b, NULL, ldb, beta, c, ldc, single_thread);
}

static int gemm_bf16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, const uint16_t *a16, int64_t lda, const float *b, const uint16_t *b16, int64_t ldb,
                     float beta, float *c, int64_t ldc, int single_thread) {
    const int64_t limit = (int64_t)1 << 31;
    if (m <= 0 || n <= 0 || k <= 0 || m >= limit || n >= limit || k >= limit || ldc < n) return -1;
    if (!lidb_dnnl_bf16_supported()) return 1;
    product_cache *cache = thread_cache();
    if (!cache) return -1;
    if (!stream && dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) return 1;
    // Stored shapes: A is m × k (or k × m transposed), B is k × n (or n × k).
    int64_t ar = trans_a ? k : m, ac = trans_a ? m : k, br = trans_b ? n : k, bc = trans_b ? k : n;
    // A bf16 operand stored contiguously is used in place; otherwise A is packed first in the
    // scratch and B after it.
    int a_in_place = a16 && lda == ac, b_in_place = b16 && ldb == bc;
    uint16_t *buf = scratch_for((a_in_place ? 0 : ar * ac) + (b_in_place ? 0 : br * bc));
    if (!buf && !(a_in_place && b_in_place)) return -1;
    uint16_t *ab = a_in_place ? (uint16_t *)a16 : buf, *bb = b_in_place ? (uint16_t *)b16 : buf + (a_in_place ? 0 : ar * ac);

    int saved = -1;
    if (set_omp_threads && get_omp_max_threads) {
        saved = get_omp_max_threads();
        if (single_thread) set_omp_threads(1);
    }
    int64_t key[11] = {trans_a, trans_b, m, n, k, ldc, single_thread, saved, 0, 0, 0};
    cached_product *e = NULL;
    for (int i = 0; i < cache->count; i++) {
        cached_product *x = &cache->entries[i];
        if (memcmp(x->key, key, sizeof key) == 0 && x->alpha == alpha && x->beta == beta) {
            e = x;
            break;
        }
    }
    dnnl_status_t s = dnnl_success;
    if (!e) {
        if (cache->count < CACHE_SIZE) {
            e = &cache->entries[cache->count++];
        } else {
            e = &cache->entries[cache->next];
            cache->next = (cache->next + 1) % CACHE_SIZE;
            release_entry(e);
        }
        s = create_product(e, trans_a, trans_b, m, n, k, alpha, beta, ldc);
        if (s == dnnl_success) {
            memcpy(e->key, key, sizeof key);
            e->alpha = alpha;
            e->beta = beta;
        }
    }
    if (s == dnnl_success) {
        if (a16) {
            if (!a_in_place) for (int64_t r = 0; r < ar; r++) memcpy(ab + r * ac, a16 + r * lda, (size_t)ac * sizeof(uint16_t));
        } else {
            pack(a, ar, ac, lda, ab);
        }
        if (b16) {
            if (!b_in_place) for (int64_t r = 0; r < br; r++) memcpy(bb + r * bc, b16 + r * ldb, (size_t)bc * sizeof(uint16_t));
        } else {
            pack(b, br, bc, ldb, bb);
        }
        s = dnnl_memory_set_data_handle(e->mem[0], ab);
        if (s == dnnl_success) s = dnnl_memory_set_data_handle(e->mem[1], bb);
        if (s == dnnl_success) s = dnnl_memory_set_data_handle(e->mem[2], c);
    }
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->mem[0]}, {DNNL_ARG_WEIGHTS, e->mem[1]}, {DNNL_ARG_DST, e->mem[2]}};
        s = dnnl_primitive_execute(e->prim, stream, 3, args);
        if (s == dnnl_success) s = dnnl_stream_wait(stream);
    }
    if (saved > 0 && single_thread) set_omp_threads(saved);
    return s == dnnl_success ? 0 : (int)s + 2;
}
