/*
 * ops.c — the engine's non-GEMM kernels in plain C: RMSNorm, SwiGLU, residual add, the
 * rotary-embedding table and rotation, and causal GQA attention over the paged KV cache.
 * Each fast kernel has a `_ref` twin written as the textbook loop, single-threaded.
 *
 * Place in the data flow: engine/model.c calls these between the linear layers of every
 * layer of every forward step.
 *
 * Thread rules: kernels allocate nothing, take no locks and keep no state; the fast versions
 * split work over the calling thread's OpenMP team (set by eng_dnn_enter), each thread
 * using its own slice of the caller's scratch. eng_rope_table_init allocates the table,
 * which is read-only afterwards and shared by all threads.
 *
 * DESIGN — invariants:
 *  1. Inner loops run over contiguous float vectors (D, C, F) behind restrict pointers and
 *     `omp simd`, so -march=native turns them into AVX-512 code without -ffast-math; sum
 *     reductions are the only reassociated operations.
 *  2. The fast kernels use a Cephes expf polynomial (<= 2 ulp over the clamped range
 *     [-87.3, 88.7]) in AVX-512 intrinsics (exp512; scalar expf_fast without AVX-512) —
 *     GCC will not vectorise the clamp under the default -ftrapping-math; the `_ref` twins
 *     use libm expf.
 *  3. Attention processes one (query row, kv head) pair per work item and all query heads
 *     of that group together, so each key and value vector is read once per group. Keys are
 *     visited in blocks with an online softmax (running max and sum, accumulator rescaled
 *     when the max grows); when the per-thread scratch holds all scores of the group, there
 *     is one block and it is the classic two-pass softmax.
 *  4. RoPE angles are computed in double and stored as float, so cos/sin are correctly
 *     rounded at every position (PyTorch computes position * inv_freq in float32 and loses
 *     up to ~1e-4 rad at position 2000; our table is the exact value HF approximates).
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/kc.h"
#include "engine/model_config.h"
#include "engine/ops.h"

#define ENG_PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#define ENG_SIMD ENG_PRAGMA(omp simd)
#define ENG_SIMD_SUM(v) ENG_PRAGMA(omp simd reduction(+ : v))
#define ENG_SIMD_MAX(v) ENG_PRAGMA(omp simd reduction(max : v))
#else
#define ENG_SIMD
#define ENG_SIMD_SUM(v)
#define ENG_SIMD_MAX(v)
#endif

/* Element-wise kernels go parallel from this many elements on. */
#define ENG_PAR_MIN 32768
/* Fixed part of attention's per-thread scratch: room for the running max/sum of a group and
 * a block of scores even when the context is short. */
#define ENG_ATTN_EXTRA 4096

static inline int team_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* exp(x) for the fast kernels: Cephes expf polynomial after reduction by ln 2; vectorises
 * inside `omp simd` loops. Inputs are clamped to [-87.3, 88.7] (the result stays a normal
 * float); NaN propagates through the polynomial. */
static inline float expf_fast(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    /* n = round(x / ln 2) via truncation of a positive number (vectorises without SSE4.1
     * rounding or -fno-trapping-math); x / ln 2 lies in [-126, 128]. */
    const int32_t ni = (int32_t)(x * 1.44269504088896341f + 128.5f) - 128;
    const float n = (float)ni;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n built in the exponent field; n + 127 is in [1, 255). */
    union {
        uint32_t u;
        float f;
    } scale;
    scale.u = (uint32_t)(ni + 127) << 23;
    return p * scale.f;
}

#if defined(__AVX512F__)
/* expf_fast on 16 lanes: the same polynomial, with exact 2^n by vscalefps. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 tail_mask(int left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}
#endif

/* s[j] = exp(s[j] - sub) for j < n; returns the sum of the new values. */
static float exp_sub_sum(float *s, int n, float sub) {
#if defined(__AVX512F__)
    const __m512 vsub = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        const __mmask16 k = tail_mask(n - j);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vsub));
        _mm512_mask_storeu_ps(s + j, k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
#else
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        s[j] = expf_fast(s[j] - sub);
        sum += s[j];
    }
    return sum;
#endif
}

/* ---- RMSNorm ---- */

static void rmsnorm_row(const float *x, const float *restrict w, int c, float eps, float *y) {
    float ss = 0.0f;
    ENG_SIMD_SUM(ss)
    for (int i = 0; i < c; i++) {
        ss += x[i] * x[i];
    }
    const float inv = 1.0f / sqrtf(ss / (float)c + eps);
    ENG_SIMD
    for (int i = 0; i < c; i++) {
        y[i] = x[i] * inv * w[i];
    }
}

void eng_rmsnorm(const float *x, const float *w, int m, int c, float eps, float *y) {
    KC_ASSERT(x != NULL && w != NULL && y != NULL && m >= 0 && c > 0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((size_t)m * (size_t)c >= ENG_PAR_MIN && m > 1)
#endif
    for (int r = 0; r < m; r++) {
        rmsnorm_row(x + (size_t)r * (size_t)c, w, c, eps, y + (size_t)r * (size_t)c);
    }
}

void eng__rmsnorm_ref(const float *x, const float *w, int m, int c, float eps, float *y) {
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * (size_t)c;
        float *yr = y + (size_t)r * (size_t)c;
        float ss = 0.0f;
        for (int i = 0; i < c; i++) {
            ss += xr[i] * xr[i];
        }
        const float inv = 1.0f / sqrtf(ss / (float)c + eps);
        for (int i = 0; i < c; i++) {
            yr[i] = xr[i] * inv * w[i];
        }
    }
}

/* ---- SwiGLU ---- */

static void swiglu_row(const float *restrict gate, const float *restrict up, int f,
                       float *restrict h) {
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < f; i += 16) {
        const __mmask16 k = tail_mask(f - i);
        const __m512 g = _mm512_maskz_loadu_ps(k, gate + i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(h + i, k, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(k, up + i)));
    }
#else
    for (int i = 0; i < f; i++) {
        const float g = gate[i];
        h[i] = g / (1.0f + expf_fast(-g)) * up[i];
    }
#endif
}

void eng_swiglu(const float *gate_up, int m, int f, float *h) {
    KC_ASSERT(gate_up != NULL && h != NULL && m >= 0 && f > 0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((size_t)m * (size_t)f >= ENG_PAR_MIN && m > 1)
#endif
    for (int r = 0; r < m; r++) {
        const float *g = gate_up + (size_t)r * 2 * (size_t)f;
        swiglu_row(g, g + f, f, h + (size_t)r * (size_t)f);
    }
}

void eng__swiglu_ref(const float *gate_up, int m, int f, float *h) {
    for (int r = 0; r < m; r++) {
        const float *g = gate_up + (size_t)r * 2 * (size_t)f;
        const float *u = g + f;
        for (int i = 0; i < f; i++) {
            h[(size_t)r * (size_t)f + (size_t)i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
    }
}

/* ---- residual add ---- */

static void add_span(float *restrict y, const float *restrict x, size_t n) {
    ENG_SIMD
    for (size_t i = 0; i < n; i++) {
        y[i] += x[i];
    }
}

void eng_add(float *y, const float *x, size_t n) {
    KC_ASSERT(y != NULL && x != NULL);
    if (n < 4 * (size_t)ENG_PAR_MIN) {
        add_span(y, x, n);
        return;
    }
    const size_t block = 8192;
    const long n_blocks = (long)((n + block - 1) / block);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long b = 0; b < n_blocks; b++) {
        const size_t i0 = (size_t)b * block;
        add_span(y + i0, x + i0, n - i0 < block ? n - i0 : block);
    }
}

/* ---- rotary position embedding ---- */

int eng_rope_table_init(struct eng_rope_table *t, const struct eng_model_config *cfg, int max_pos,
                        struct kc_error *err) {
    KC_ASSERT(t != NULL && cfg != NULL);
    const int d = cfg->head_dim;
    if (d <= 0 || d % 2 != 0 || d > ENG_MAX_HEAD_DIM) {
        return kc_error_set(err, KC_EINVAL, "rope: head_dim %d must be even and in 2..%d", d,
                            ENG_MAX_HEAD_DIM);
    }
    if (max_pos <= 0 || max_pos > ENG_MAX_POSITIONS) {
        return kc_error_set(err, KC_EINVAL, "rope: %d positions is not in 1..%d", max_pos,
                            ENG_MAX_POSITIONS);
    }
    if (!(isfinite(cfg->rope_theta) && cfg->rope_theta > 0.0f)) {
        return kc_error_set(err, KC_EINVAL, "rope: rope_theta %g must be finite and positive",
                            (double)cfg->rope_theta);
    }
    const double factor = cfg->rope_factor;
    const double low = cfg->rope_low_freq_factor, high = cfg->rope_high_freq_factor;
    const double orig = cfg->rope_original_max_position;
    if (cfg->rope_scaling != ENG_ROPE_NONE && !(isfinite(factor) && factor > 0.0)) {
        return kc_error_set(err, KC_EINVAL, "rope: scaling factor %g must be finite and positive",
                            factor);
    }
    if (cfg->rope_scaling == ENG_ROPE_LLAMA3 &&
        !(isfinite(low) && isfinite(high) && low > 0.0 && high > low && orig > 0.0)) {
        return kc_error_set(err, KC_EINVAL,
                            "rope: llama3 scaling needs 0 < low_freq_factor (%g) < "
                            "high_freq_factor (%g) and original_max_position_embeddings (%g) > 0",
                            low, high, orig);
    }
    const int half = d / 2;
    const size_t n = (size_t)max_pos * (size_t)half;
    double *inv = kc_calloc((size_t)half, sizeof(double));
    float *cs = kc_aligned_alloc(n * sizeof(float));
    float *sn = kc_aligned_alloc(n * sizeof(float));
    if (inv == NULL || cs == NULL || sn == NULL) {
        free(inv);
        kc_aligned_free(cs);
        kc_aligned_free(sn);
        return kc_error_set(err, KC_ENOMEM, "rope: table of %d positions: out of memory", max_pos);
    }
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < half; i++) {
        /* inv_freq[i] = theta^(-2i/D) */
        double f = pow((double)cfg->rope_theta, -2.0 * i / d);
        if (cfg->rope_scaling == ENG_ROPE_LINEAR) {
            f /= factor; /* position / factor */
        } else if (cfg->rope_scaling == ENG_ROPE_LLAMA3) {
            /* transformers _compute_llama3_parameters */
            const double wavelen = 2.0 * pi / f;
            if (wavelen > orig / low) {
                f /= factor;
            } else if (!(wavelen < orig / high)) {
                const double smooth = (orig / wavelen - low) / (high - low);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        inv[i] = f;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= ENG_PAR_MIN)
#endif
    for (int p = 0; p < max_pos; p++) {
        for (int i = 0; i < half; i++) {
            const double a = (double)p * inv[i];
            cs[(size_t)p * (size_t)half + (size_t)i] = (float)cos(a);
            sn[(size_t)p * (size_t)half + (size_t)i] = (float)sin(a);
        }
    }
    free(inv);
    t->max_pos = max_pos;
    t->head_dim = d;
    t->cos = cs;
    t->sin = sn;
    return 0;
}

void eng_rope_table_free(struct eng_rope_table *t) {
    if (t == NULL) {
        return;
    }
    kc_aligned_free(t->cos);
    kc_aligned_free(t->sin);
    memset(t, 0, sizeof(*t));
}

static void rope_head(float *restrict x, const float *restrict c, const float *restrict s,
                      int half) {
    float *restrict x1 = x + half;
    ENG_SIMD
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x1[i];
        x[i] = a * c[i] - b * s[i];
        x1[i] = b * c[i] + a * s[i];
    }
}

void eng_rope(const struct eng_rope_table *t, float *x, int m, int n_heads, const int32_t *pos) {
    KC_ASSERT(t != NULL && x != NULL && pos != NULL && m >= 0 && n_heads > 0);
    const int d = t->head_dim, half = d / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(                                                                 \
    static) if ((size_t)m * (size_t)n_heads * (size_t)d >= ENG_PAR_MIN && m > 1)
#endif
    for (int r = 0; r < m; r++) {
        KC_ASSERT(pos[r] >= 0 && pos[r] < t->max_pos);
        const float *c = t->cos + (size_t)pos[r] * (size_t)half;
        const float *s = t->sin + (size_t)pos[r] * (size_t)half;
        for (int h = 0; h < n_heads; h++) {
            rope_head(x + ((size_t)r * (size_t)n_heads + (size_t)h) * (size_t)d, c, s, half);
        }
    }
}

void eng__rope_ref(const struct eng_rope_table *t, float *x, int m, int n_heads,
                   const int32_t *pos) {
    const int d = t->head_dim, half = d / 2;
    for (int r = 0; r < m; r++) {
        KC_ASSERT(pos[r] >= 0 && pos[r] < t->max_pos);
        const float *c = t->cos + (size_t)pos[r] * (size_t)half;
        const float *s = t->sin + (size_t)pos[r] * (size_t)half;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + ((size_t)r * (size_t)n_heads + (size_t)h) * (size_t)d;
            for (int i = 0; i < half; i++) {
                const float a = xh[i], b = xh[i + half];
                xh[i] = a * c[i] - b * s[i];
                xh[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

/* ---- attention ---- */

static size_t attn_thread_floats(int n_ctx) {
    return ((size_t)(n_ctx > 0 ? n_ctx : 0) + 15) / 16 * 16 + ENG_ATTN_EXTRA;
}

size_t eng_attention_scratch_floats(int n_ctx, int n_threads) {
    return (size_t)(n_threads > 0 ? n_threads : 1) * attn_thread_floats(n_ctx);
}

/* Key vector of kv head g at token t. */
static inline const float *kv_key(const struct eng_kv_view *kv, int t, int n_kv_heads, int d,
                                  int g) {
    const int32_t blk = kv->block_table[t / kv->block_size];
    return kv->base + (size_t)blk * kv->block_stride +
           ((size_t)(t % kv->block_size) * (size_t)n_kv_heads + (size_t)g) * (size_t)d;
}

#if defined(__AVX512F__)
/* AVX-512 versions: GCC's `omp simd` reduction ends in a scalar loop over the 16 lanes, and
 * ISO C mode (-ffp-contract=off) forbids fusing the multiply-adds. */
static inline float dot(const float *restrict a, const float *restrict b, int d) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < d; i += 16) {
        const __mmask16 k = tail_mask(d - i);
        acc =
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static inline void axpy(float *restrict y, float a, const float *restrict x, int d) {
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < d; i += 16) {
        const __mmask16 k = tail_mask(d - i);
        const __m512 r =
            _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i));
        _mm512_mask_storeu_ps(y + i, k, r);
    }
}
#else
static inline float dot(const float *restrict a, const float *restrict b, int d) {
    float s = 0.0f;
    ENG_SIMD_SUM(s)
    for (int i = 0; i < d; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static inline void axpy(float *restrict y, float a, const float *restrict x, int d) {
    ENG_SIMD
    for (int i = 0; i < d; i++) {
        y[i] += a * x[i];
    }
}
#endif

static inline void scal(float *restrict y, float a, int d) {
    ENG_SIMD
    for (int i = 0; i < d; i++) {
        y[i] *= a;
    }
}

/* Attention of the G query heads q[G, D] of one row (sharing kv head g) over keys 0..L-1;
 * writes out[G, D]. sc holds sc_floats floats (invariant 3). */
static void attend_group(const float *q, int n_keys, const struct eng_kv_view *kv, int g, int grp,
                         int n_kv_heads, int d, float scale, float *out, float *sc,
                         size_t sc_floats) {
    float *mx = sc, *sum = sc + grp, *s = sc + 2 * grp;
    KC_ASSERT(sc_floats > 3 * (size_t)grp);
    size_t blk = (sc_floats - 2 * (size_t)grp) / (size_t)grp;
    if (blk > (size_t)n_keys) {
        blk = (size_t)n_keys;
    }
    const int bsz = (int)blk;
    for (int h = 0; h < grp; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
        memset(out + (size_t)h * (size_t)d, 0, (size_t)d * sizeof(float));
    }
    for (int t0 = 0; t0 < n_keys; t0 += bsz) {
        const int nb = n_keys - t0 < bsz ? n_keys - t0 : bsz;
        /* Scores of the block, every key read once for the whole group. */
        for (int j = 0; j < nb; j++) {
            const float *k = kv_key(kv, t0 + j, n_kv_heads, d, g);
            for (int h = 0; h < grp; h++) {
                s[(size_t)h * blk + (size_t)j] = dot(q + (size_t)h * (size_t)d, k, d) * scale;
            }
        }
        /* Online softmax: rescale what was accumulated if the running max grows. */
        for (int h = 0; h < grp; h++) {
            float *sh = s + (size_t)h * blk;
            float bm = -INFINITY;
            ENG_SIMD_MAX(bm)
            for (int j = 0; j < nb; j++) {
                bm = sh[j] > bm ? sh[j] : bm;
            }
            const float m_new = bm > mx[h] ? bm : mx[h];
            if (m_new > mx[h] && t0 > 0) {
                const float corr = expf(mx[h] - m_new);
                scal(out + (size_t)h * (size_t)d, corr, d);
                sum[h] *= corr;
            }
            mx[h] = m_new;
            sum[h] += exp_sub_sum(sh, nb, m_new);
        }
        /* Weighted values, every value read once for the whole group. */
        for (int j = 0; j < nb; j++) {
            const float *v = kv_key(kv, t0 + j, n_kv_heads, d, g) + kv->v_offset;
            for (int h = 0; h < grp; h++) {
                axpy(out + (size_t)h * (size_t)d, s[(size_t)h * blk + (size_t)j], v, d);
            }
        }
    }
    for (int h = 0; h < grp; h++) {
        scal(out + (size_t)h * (size_t)d, 1.0f / sum[h], d);
    }
}

void eng_attention(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                   int n_kv_heads, int head_dim, float scale, float *out, float *scratch) {
    KC_ASSERT(q != NULL && kv != NULL && out != NULL && scratch != NULL);
    KC_ASSERT(n >= 0 && pos0 >= 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0);
    KC_ASSERT(n_heads % n_kv_heads == 0 && kv->block_size > 0);
    const int grp = n_heads / n_kv_heads, d = head_dim;
    const size_t per_thread = attn_thread_floats(pos0 + n);
    const long items = (long)n * n_kv_heads;
    /* Work of the largest item, to keep tiny problems off the thread team. */
    const size_t work = (size_t)items * (size_t)(pos0 + n) * (size_t)grp * (size_t)d;
#ifdef _OPENMP
#pragma omp parallel if (items > 1 && work >= ENG_PAR_MIN)
#endif
    {
        float *sc = scratch + (size_t)team_thread() * per_thread;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long it = 0; it < items; it++) {
            /* Rows in reverse: the longest (last) rows are handed out first. */
            const int i = n - 1 - (int)(it / n_kv_heads);
            const int g = (int)(it % n_kv_heads);
            const size_t off = ((size_t)i * (size_t)n_heads + (size_t)g * (size_t)grp) * (size_t)d;
            attend_group(q + off, pos0 + i + 1, kv, g, grp, n_kv_heads, d, scale, out + off, sc,
                         per_thread);
        }
    }
}

void eng__attention_ref(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                        int n_kv_heads, int head_dim, float scale, float *out, float *scratch) {
    const int grp = n_heads / n_kv_heads, d = head_dim;
    for (int i = 0; i < n; i++) {
        const int n_keys = pos0 + i + 1;
        for (int h = 0; h < n_heads; h++) {
            const int g = h / grp;
            const float *qh = q + ((size_t)i * (size_t)n_heads + (size_t)h) * (size_t)d;
            float *oh = out + ((size_t)i * (size_t)n_heads + (size_t)h) * (size_t)d;
            float mx = -INFINITY;
            for (int t = 0; t < n_keys; t++) {
                const float *k = kv_key(kv, t, n_kv_heads, d, g);
                float s = 0.0f;
                for (int j = 0; j < d; j++) {
                    s += qh[j] * k[j];
                }
                scratch[t] = s * scale;
                mx = scratch[t] > mx ? scratch[t] : mx;
            }
            float sum = 0.0f;
            for (int t = 0; t < n_keys; t++) {
                scratch[t] = expf(scratch[t] - mx);
                sum += scratch[t];
            }
            for (int j = 0; j < d; j++) {
                oh[j] = 0.0f;
            }
            for (int t = 0; t < n_keys; t++) {
                const float *v = kv_key(kv, t, n_kv_heads, d, g) + kv->v_offset;
                for (int j = 0; j < d; j++) {
                    oh[j] += scratch[t] * v[j];
                }
            }
            for (int j = 0; j < d; j++) {
                oh[j] /= sum;
            }
        }
    }
}
