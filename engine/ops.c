/*
 * ops.c — the engine's non-GEMM kernels in plain C: RMSNorm, SwiGLU, residual add, the
 * rotary-embedding table and rotation. Attention lives in engine/attention.c; the inline
 * helpers both share (exp512, tail masks, `omp simd` macros) in engine/ops_simd.h.
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
 *     use libm expf. The helpers live in engine/ops_simd.h.
 *  3. (Attention: see engine/attention.c.)
 *  5. bf16 prefill (engine/model.c invariant 5): eng_rmsnorm_bf16 and eng_swiglu_bf16 write
 *     the next GEMM's bf16 input straight from registers, rounding with ops_simd.h's
 *     bf16_store16, the rounding engine/ops_dnnl.c applies to f32 inputs; the f32 values
 *     they round are computed by the same expressions as eng_rmsnorm and eng_swiglu, so the
 *     GEMMs see the bits they saw when a separate conversion pass ran. eng_rmsnorm_bf16
 *     also adds the pending residual first, so the add costs no pass of its own.
 *     eng_rope_split rotates q and k straight out of the q|k|v GEMM's rows, by eng_rope's
 *     arithmetic.
 *  4. RoPE angles are computed in double and stored as float, so cos/sin are correctly
 *     rounded at every position (PyTorch computes position * inv_freq in float32 and loses
 *     up to ~1e-4 rad at position 2000; our table is the exact value HF approximates).
 *  6. Work too small for the team (a decode step's single row, par_rows) runs on the calling
 *     thread without entering OpenMP at all. A `parallel if (false)` region is not free:
 *     libgomp still builds a one-thread team per region, and after the two-thread regions of
 *     the GEMMs it had to release the pool's other thread: 1.2 us per region in a tight loop
 *     here, 3-4 us between GEMMs (engine/ops_dnnl.c invariant 10), paid by every norm, RoPE and
 *     SwiGLU of every layer of every decode step.
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
#include "engine/io/model_config.h"
#include "engine/ops.h"

#include "engine/ops_simd.h"

/* Element-wise kernels go parallel from this many elements on. */
#define ENG_PAR_MIN 32768

/* Whether m rows of `per_row` elements go to the OpenMP team (invariant 6). */
static bool par_rows(int m, size_t per_row) {
    return m > 1 && (size_t)m * per_row >= ENG_PAR_MIN;
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
    ENG_FOR_ROWS(par_rows(m, (size_t)c), r, m,
                 rmsnorm_row(x + (size_t)r * (size_t)c, w, c, eps, y + (size_t)r * (size_t)c));
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

/* One row of eng_rmsnorm_bf16: x += a (a may be NULL), y = bf16(x * inv * w). */
static void rmsnorm_row_bf16(float *restrict x, const float *restrict a, const float *restrict w,
                             int c, float eps, uint16_t *restrict y) {
    if (a != NULL) {
        ENG_SIMD
        for (int i = 0; i < c; i++) {
            x[i] += a[i];
        }
    }
    float ss = 0.0f;
    ENG_SIMD_SUM(ss)
    for (int i = 0; i < c; i++) {
        ss += x[i] * x[i];
    }
    const float inv = 1.0f / sqrtf(ss / (float)c + eps);
#if defined(__AVX512F__)
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int i = 0; i < c; i += 16) {
        const __mmask16 k = tail_mask(c - i);
        const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vinv),
                                       _mm512_maskz_loadu_ps(k, w + i));
        bf16_store16(y + i, v, k);
    }
#else
    for (int i = 0; i < c; i++) {
        y[i] = eng_f32_to_bf16(x[i] * inv * w[i]);
    }
#endif
}

void eng_rmsnorm_bf16(float *x, const float *add, const float *w, int m, int c, float eps,
                      uint16_t *y) {
    KC_ASSERT(x != NULL && w != NULL && y != NULL && m >= 0 && c > 0);
    ENG_FOR_ROWS(par_rows(m, (size_t)c), r, m,
                 rmsnorm_row_bf16(x + (size_t)r * (size_t)c,
                                  add != NULL ? add + (size_t)r * (size_t)c : NULL, w, c, eps,
                                  y + (size_t)r * (size_t)c));
}

void eng__rmsnorm_bf16_ref(float *x, const float *add, const float *w, int m, int c, float eps,
                           uint16_t *y, float *tmp) {
    if (add != NULL) {
        for (size_t i = 0; i < (size_t)m * (size_t)c; i++) {
            x[i] += add[i];
        }
    }
    eng__rmsnorm_ref(x, w, m, c, eps, tmp);
    for (size_t i = 0; i < (size_t)m * (size_t)c; i++) {
        y[i] = eng_f32_to_bf16(tmp[i]);
    }
}

/* ---- SwiGLU ---- */

/* One row of gate|up: the F gates, then the F up projections. */
static void swiglu_row(const float *restrict gate, int f, float *restrict h) {
    const float *restrict up = gate + f;
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
    ENG_FOR_ROWS(par_rows(m, (size_t)f), r, m,
                 swiglu_row(gate_up + (size_t)r * 2 * (size_t)f, f, h + (size_t)r * (size_t)f));
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

static void swiglu_row_bf16(const float *restrict gate, int f, uint16_t *restrict h) {
    const float *restrict up = gate + f;
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < f; i += 16) {
        const __mmask16 k = tail_mask(f - i);
        const __m512 g = _mm512_maskz_loadu_ps(k, gate + i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        bf16_store16(h + i, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(k, up + i)), k);
    }
#else
    for (int i = 0; i < f; i++) {
        const float g = gate[i];
        h[i] = eng_f32_to_bf16(g / (1.0f + expf_fast(-g)) * up[i]);
    }
#endif
}

void eng_swiglu_bf16(const float *gate_up, int m, int f, uint16_t *h) {
    KC_ASSERT(gate_up != NULL && h != NULL && m >= 0 && f > 0);
    ENG_FOR_ROWS(
        par_rows(m, (size_t)f), r, m,
        swiglu_row_bf16(gate_up + (size_t)r * 2 * (size_t)f, f, h + (size_t)r * (size_t)f));
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

/* Rotates one head x[D] by the angles of (c, s)[D/2] into y (y == x: in place; each element
 * is read before its own position is written). */
static void rope_head(const float *x, float *y, const float *restrict c, const float *restrict s,
                      int half) {
    const float *x1 = x + half;
    float *y1 = y + half;
    ENG_SIMD
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x1[i];
        y[i] = a * c[i] - b * s[i];
        y1[i] = b * c[i] + a * s[i];
    }
}

/* Row r of eng_rope: its n_heads heads at position p. */
static void rope_row(const struct eng_rope_table *t, float *x, int r, int n_heads, int32_t p) {
    KC_ASSERT(p >= 0 && p < t->max_pos);
    const int d = t->head_dim, half = d / 2;
    const float *c = t->cos + (size_t)p * (size_t)half;
    const float *s = t->sin + (size_t)p * (size_t)half;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + ((size_t)r * (size_t)n_heads + (size_t)h) * (size_t)d;
        rope_head(xh, xh, c, s, half);
    }
}

void eng_rope(const struct eng_rope_table *t, float *x, int m, int n_heads, const int32_t *pos) {
    KC_ASSERT(t != NULL && x != NULL && pos != NULL && m >= 0 && n_heads > 0);
    ENG_FOR_ROWS(par_rows(m, (size_t)n_heads * (size_t)t->head_dim), r, m,
                 rope_row(t, x, r, n_heads, pos[r]));
}

/* Row r of eng_rope_split. */
static void rope_split_row(const struct eng_rope_table *t, const float *qkv, int r, int n_heads,
                           int n_kv_heads, int32_t p, float *q, float *k, float *v) {
    KC_ASSERT(p >= 0 && p < t->max_pos);
    const int d = t->head_dim, half = d / 2;
    const size_t qd = (size_t)n_heads * (size_t)d, kvd = (size_t)n_kv_heads * (size_t)d;
    const size_t ld = qd + 2 * kvd;
    const float *restrict c = t->cos + (size_t)p * (size_t)half;
    const float *restrict s = t->sin + (size_t)p * (size_t)half;
    const float *src = qkv + (size_t)r * ld;
    float *dq = q + (size_t)r * qd, *dk = k + (size_t)r * kvd;
    for (int h = 0; h < n_heads + n_kv_heads; h++) {
        rope_head(src + (size_t)h * (size_t)d,
                  h < n_heads ? dq + (size_t)h * (size_t)d : dk + (size_t)(h - n_heads) * (size_t)d,
                  c, s, half);
    }
    memcpy(v + (size_t)r * kvd, src + qd + kvd, kvd * sizeof(float));
}

void eng_rope_split(const struct eng_rope_table *t, const float *qkv, int m, int n_heads,
                    int n_kv_heads, const int32_t *pos, float *q, float *k, float *v) {
    KC_ASSERT(t != NULL && qkv != NULL && pos != NULL && q != NULL && k != NULL && v != NULL);
    KC_ASSERT(m >= 0 && n_heads > 0 && n_kv_heads > 0);
    const size_t ld = (size_t)(n_heads + 2 * n_kv_heads) * (size_t)t->head_dim;
    ENG_FOR_ROWS(par_rows(m, ld), r, m,
                 rope_split_row(t, qkv, r, n_heads, n_kv_heads, pos[r], q, k, v));
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
