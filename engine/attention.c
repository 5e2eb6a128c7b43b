/*
 * attention.c — causal GQA attention over the paged KV cache (declared in engine/ops.h):
 * a tiled, flash-attention-style kernel for prefill chunks, the one-row kernel for decode,
 * and the textbook `_ref` twin.
 *
 * Place in the data flow: engine/model.c calls eng_attention once per layer and sequence of
 * a forward step, after RoPE and after this step's keys/values were appended to the cache.
 *
 * Shapes: Q[n, H, D] and O[n, H, D] row-major; key/value vectors [Hkv, D] per position in
 * the paged cache (struct eng_kv_view); grp = H / Hkv query heads share one kv head.
 *
 * DESIGN — invariants:
 *  1. Two paths, one contract. Calls with fewer than ATT_TILE_MIN_N query rows (decode,
 *     short continuations) take the row path: one (query row, kv head) item at a time, all
 *     grp heads of the group together, one dot product per key. Longer calls take the tile
 *     path. The threshold was chosen by measurement (docs/bench/engine.md): below it the
 *     row path is as fast or faster, since it packs nothing.
 *  2. Tile path. A work item is (kv head g, tile of tq query rows); its S matrix has
 *     rows = tq * grp rows, one per (query row, head of the group), so each K/V chunk is
 *     read once per tile for all heads that share it. Keys are visited in chunks of ATT_TK
 *     from position 0; a chunk's keys are packed transposed (Kt[D][ATT_TK]) and its values
 *     row-wise with D padded to a multiple of 16 (V[ATT_TK][Dp]), reading the paged cache
 *     position by position, so chunks may cross KV blocks and block tables need not be
 *     contiguous. Then S = (scale*Q) Ktᵀ, an online softmax per row (running max and sum,
 *     the accumulator rescaled when the max grows) and O += P V.
 *  3. Causality: chunks past the tile's last position are never visited; only chunks that
 *     reach past the tile's first position (the diagonal) get a per-row key count, applied
 *     by zeroing P beyond it. A row with no valid key in a chunk leaves its max, sum and
 *     accumulator untouched, so -inf never meets -inf.
 *  4. The products run on register-blocked AVX-512 micro-kernels: ATT_MR rows of S or O at
 *     a time, broadcast-FMA outer products over 4 zmm columns (64 keys of S, 64 floats of
 *     O), 24 accumulators. oneDNN matmuls per tile were measured slower at these sizes
 *     (a 96 x 64 x 64 product is ~0.8 MFLOP: primitive execution overhead dominates); see
 *     docs/bench/engine.md. Without AVX-512 the same tiling runs plain `omp simd` loops.
 *  5. Parallel over work items on the calling OpenMP team (schedule dynamic, the longest
 *     tiles first); each thread uses its own slice of the caller's scratch, whose size
 *     eng_attention_scratch_floats gives for both paths.
 *  6. f32 throughout. The exp of P uses exp512/expf_fast (ops_simd.h, <= 2 ulp); the
 *     rescale factor uses libm expf.
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/kc.h"
#include "engine/ops.h"
#include "engine/ops_simd.h"

/* Work of a whole call below which it stays on one thread. */
#define ATT_PAR_MIN 32768
/* Fixed part of the row path's per-thread scratch: room for the running max/sum of a group
 * and a block of scores even when the context is short. */
#define ATT_ROW_EXTRA 4096
/* Keys per chunk of the tile path: 4 zmm registers of scores. */
#define ATT_TK 64
/* Rows of S (or O) per micro-kernel call: 6 x 4 accumulators + 4 operands fit 32 zmm. */
#define ATT_MR 6
/* Target S rows (query rows x heads of a group) per tile: Q, S and O of a tile stay in L2. */
#define ATT_ROWS 96
/* Calls with at least this many query rows take the tile path (invariant 1). */
#define ATT_TILE_MIN_N 4

static size_t up16(size_t x) {
    return (x + 15) / 16 * 16;
}

/* Key vector of kv head g at token t. */
static inline const float *kv_key(const struct eng_kv_view *kv, int t, int n_kv_heads, int d,
                                  int g) {
    const int32_t blk = kv->block_table[t / kv->block_size];
    return kv->base + (size_t)blk * kv->block_stride +
           ((size_t)(t % kv->block_size) * (size_t)n_kv_heads + (size_t)g) * (size_t)d;
}

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

static inline void scal(float *restrict y, float a, int d) {
    ENG_SIMD
    for (int i = 0; i < d; i++) {
        y[i] *= a;
    }
}

/* ---- row path (decode) ---- */

static size_t row_thread_floats(int n_ctx) {
    return up16((size_t)(n_ctx > 0 ? n_ctx : 0)) + ATT_ROW_EXTRA;
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

/* Attention of the G query heads q[G, D] of one row (sharing kv head g) over keys 0..L-1;
 * writes out[G, D]. sc holds sc_floats floats. Keys are visited in blocks with an online
 * softmax; when the scratch holds all scores of the group there is one block and it is the
 * classic two-pass softmax. */
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

static void attention_rows(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                           int n_heads, int n_kv_heads, int d, float scale, float *out,
                           float *scratch, size_t per_thread) {
    const int grp = n_heads / n_kv_heads;
    const long items = (long)n * n_kv_heads;
    const size_t work = (size_t)items * (size_t)(pos0 + n) * (size_t)grp * (size_t)d;
    (void)work;
#ifdef _OPENMP
#pragma omp parallel if (items > 1 && work >= ATT_PAR_MIN)
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

/* ---- tile path (prefill) ---- */

/* Geometry of the tile path for one (grp, D). */
struct att_tile {
    int tq; /* query rows per tile */
    int rp; /* S rows of a full tile (tq * grp) rounded up to ATT_MR */
    int dp; /* D rounded up to 16 */
    int d;  /* D */
};

static struct att_tile att_tile_of(int grp, int d) {
    struct att_tile t;
    t.tq = ATT_ROWS / grp > 0 ? ATT_ROWS / grp : 1;
    t.rp = (t.tq * grp + ATT_MR - 1) / ATT_MR * ATT_MR;
    t.dp = (int)up16((size_t)d);
    t.d = d;
    return t;
}

/* Per-thread scratch of the tile path: Q[rp][D], Kt[D][TK], V[TK][Dp], S[rp][TK],
 * O[rp][Dp], max[rp], sum[rp], each starting on a 64-byte boundary of the slice. */
static size_t tile_thread_floats(const struct att_tile *t) {
    const size_t rp = (size_t)t->rp, d = (size_t)t->d, dp = (size_t)t->dp;
    return up16(rp * d) + up16(d * ATT_TK) + up16(ATT_TK * dp) + up16(rp * ATT_TK) + up16(rp * dp) +
           2 * up16(rp);
}

/* Packs the keys and values of positions k0..k0+nk-1 of kv head g: kt[D][TK] (keys
 * transposed, columns nk.. zero) and vp[nk][Dp] (tail of each row zero). */
static void pack_chunk(const struct eng_kv_view *kv, int k0, int nk, int g, int n_kv_heads, int d,
                       int dp, float *restrict kt, float *restrict vp) {
    for (int j = 0; j < nk; j++) {
        const float *k = kv_key(kv, k0 + j, n_kv_heads, d, g);
        const float *v = k + kv->v_offset;
        for (int c = 0; c < d; c++) {
            kt[(size_t)c * ATT_TK + (size_t)j] = k[c];
        }
        float *vr = vp + (size_t)j * (size_t)dp;
        memcpy(vr, v, (size_t)d * sizeof(float));
        for (int c = d; c < dp; c++) {
            vr[c] = 0.0f;
        }
    }
    if (nk < ATT_TK) {
        for (int c = 0; c < d; c++) {
            memset(kt + (size_t)c * ATT_TK + (size_t)nk, 0, (size_t)(ATT_TK - nk) * sizeof(float));
        }
    }
}

#if defined(__AVX512F__)
/* s[rp][TK] = qp[rp][D] · kt[D][TK]: ATT_MR rows x 64 keys of accumulators per pass. */
static void tile_qk(const float *restrict qp, int rp, int d, const float *restrict kt,
                    float *restrict s) {
    for (int r0 = 0; r0 < rp; r0 += ATT_MR) {
        __m512 acc[ATT_MR][4];
        for (int i = 0; i < ATT_MR; i++) {
            for (int v = 0; v < 4; v++) {
                acc[i][v] = _mm512_setzero_ps();
            }
        }
        const float *qr = qp + (size_t)r0 * (size_t)d;
        for (int c = 0; c < d; c++) {
            const float *kc = kt + (size_t)c * ATT_TK;
            const __m512 b0 = _mm512_loadu_ps(kc), b1 = _mm512_loadu_ps(kc + 16);
            const __m512 b2 = _mm512_loadu_ps(kc + 32), b3 = _mm512_loadu_ps(kc + 48);
            for (int i = 0; i < ATT_MR; i++) {
                const __m512 a = _mm512_set1_ps(qr[(size_t)i * (size_t)d + (size_t)c]);
                acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
                acc[i][2] = _mm512_fmadd_ps(a, b2, acc[i][2]);
                acc[i][3] = _mm512_fmadd_ps(a, b3, acc[i][3]);
            }
        }
        for (int i = 0; i < ATT_MR; i++) {
            float *sr = s + (size_t)(r0 + i) * ATT_TK;
            for (int v = 0; v < 4; v++) {
                _mm512_storeu_ps(sr + 16 * v, acc[i][v]);
            }
        }
    }
}

/* o[r0..r0+MR)[c0..c0+16*NV) += p[.][0..nk) · vp[0..nk)[c0..]: one register block. NV is a
 * constant at every call site, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void pv_block(const float *restrict p, int r0, int nk,
                                                           const float *restrict vp, int dp, int c0,
                                                           float *restrict o, const int nv) {
    __m512 acc[ATT_MR][4];
    for (int i = 0; i < ATT_MR; i++) {
        for (int v = 0; v < nv; v++) {
            acc[i][v] = _mm512_loadu_ps(o + (size_t)(r0 + i) * (size_t)dp + (size_t)(c0 + 16 * v));
        }
    }
    for (int j = 0; j < nk; j++) {
        const float *vr = vp + (size_t)j * (size_t)dp + (size_t)c0;
        __m512 b[4];
        for (int v = 0; v < nv; v++) {
            b[v] = _mm512_loadu_ps(vr + 16 * v);
        }
        for (int i = 0; i < ATT_MR; i++) {
            const __m512 a = _mm512_set1_ps(p[(size_t)(r0 + i) * ATT_TK + (size_t)j]);
            for (int v = 0; v < nv; v++) {
                acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
            }
        }
    }
    for (int i = 0; i < ATT_MR; i++) {
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(o + (size_t)(r0 + i) * (size_t)dp + (size_t)(c0 + 16 * v), acc[i][v]);
        }
    }
}

/* o[rp][Dp] += p[rp][TK] (first nk columns) · vp[nk][Dp]. */
static void tile_pv(const float *restrict p, int rp, int nk, const float *restrict vp, int dp,
                    float *restrict o) {
    for (int r0 = 0; r0 < rp; r0 += ATT_MR) {
        for (int c0 = 0; c0 < dp; c0 += 64) {
            switch ((dp - c0) / 16) {
            case 1:
                pv_block(p, r0, nk, vp, dp, c0, o, 1);
                break;
            case 2:
                pv_block(p, r0, nk, vp, dp, c0, o, 2);
                break;
            case 3:
                pv_block(p, r0, nk, vp, dp, c0, o, 3);
                break;
            default:
                pv_block(p, r0, nk, vp, dp, c0, o, 4);
                break;
            }
        }
    }
}
#else
static void tile_qk(const float *restrict qp, int rp, int d, const float *restrict kt,
                    float *restrict s) {
    for (int r = 0; r < rp; r++) {
        float *sr = s + (size_t)r * ATT_TK;
        for (int j = 0; j < ATT_TK; j++) {
            sr[j] = 0.0f;
        }
        for (int c = 0; c < d; c++) {
            const float a = qp[(size_t)r * (size_t)d + (size_t)c];
            const float *kc = kt + (size_t)c * ATT_TK;
            ENG_SIMD
            for (int j = 0; j < ATT_TK; j++) {
                sr[j] += a * kc[j];
            }
        }
    }
}

static void tile_pv(const float *restrict p, int rp, int nk, const float *restrict vp, int dp,
                    float *restrict o) {
    for (int r = 0; r < rp; r++) {
        float *orow = o + (size_t)r * (size_t)dp;
        for (int j = 0; j < nk; j++) {
            const float a = p[(size_t)r * ATT_TK + (size_t)j];
            const float *vr = vp + (size_t)j * (size_t)dp;
            ENG_SIMD
            for (int c = 0; c < dp; c++) {
                orow[c] += a * vr[c];
            }
        }
    }
}
#endif

/* Online softmax of one S row over its first cnt keys (invariant 3): s becomes P (zero from
 * cnt on), max/sum are updated and the accumulator o[Dp] rescaled if the max grew. */
static void tile_softmax_row(float *s, int cnt, float *mx, float *sum, float *o, int dp) {
    if (cnt <= 0) {
        memset(s, 0, ATT_TK * sizeof(float));
        return;
    }
    float bm = -INFINITY;
    ENG_SIMD_MAX(bm)
    for (int j = 0; j < cnt; j++) {
        bm = s[j] > bm ? s[j] : bm;
    }
    if (bm > *mx) {
        if (*mx != -INFINITY) {
            const float corr = expf(*mx - bm);
            scal(o, corr, dp);
            *sum *= corr;
        }
        *mx = bm;
    }
    *sum += exp_sub_sum(s, cnt, *mx);
    if (cnt < ATT_TK) {
        memset(s + cnt, 0, (size_t)(ATT_TK - cnt) * sizeof(float));
    }
}

/* One work item: query rows i0..i0+nq-1 (positions pos0+i0..) of kv head g. */
static void attend_tile(const float *q, int i0, int nq, int pos0, const struct eng_kv_view *kv,
                        int g, int n_heads, int n_kv_heads, float scale, const struct att_tile *tg,
                        float *out, float *sc) {
    const int grp = n_heads / n_kv_heads, d = tg->d, dp = tg->dp;
    const int rows = nq * grp, rp = (rows + ATT_MR - 1) / ATT_MR * ATT_MR;
    const size_t frp = (size_t)tg->rp;
    float *qp = sc;
    float *kt = qp + up16(frp * (size_t)d);
    float *vp = kt + up16((size_t)d * ATT_TK);
    float *s = vp + up16((size_t)ATT_TK * (size_t)dp);
    float *o = s + up16(frp * ATT_TK);
    float *mx = o + up16(frp * (size_t)dp);
    float *sum = mx + up16(frp);
    /* Q rows (query row i, head h) -> row i * grp + h, scaled; padding rows zero. */
    for (int i = 0; i < nq; i++) {
        const float *src =
            q + ((size_t)(i0 + i) * (size_t)n_heads + (size_t)g * (size_t)grp) * (size_t)d;
        float *dst = qp + (size_t)i * (size_t)grp * (size_t)d;
        const size_t len = (size_t)grp * (size_t)d;
        ENG_SIMD
        for (size_t c = 0; c < len; c++) {
            dst[c] = src[c] * scale;
        }
    }
    memset(qp + (size_t)rows * (size_t)d, 0, (size_t)(rp - rows) * (size_t)d * sizeof(float));
    memset(o, 0, (size_t)rp * (size_t)dp * sizeof(float));
    for (int r = 0; r < rp; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    const int first = pos0 + i0, last = pos0 + i0 + nq - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TK) {
        const int nk = last + 1 - k0 < ATT_TK ? last + 1 - k0 : ATT_TK;
        pack_chunk(kv, k0, nk, g, n_kv_heads, d, dp, kt, vp);
        tile_qk(qp, rp, d, kt, s);
        const bool diag = k0 + nk - 1 > first;
        for (int r = 0; r < rp; r++) {
            int cnt = r < rows ? nk : 0;
            if (diag && r < rows) {
                const int lim = first + r / grp - k0 + 1; /* keys this row may see */
                cnt = lim < cnt ? lim : cnt;
            }
            tile_softmax_row(s + (size_t)r * ATT_TK, cnt, &mx[r], &sum[r], o + (size_t)r * dp, dp);
        }
        tile_pv(s, rp, nk, vp, dp, o);
    }
    for (int r = 0; r < rows; r++) {
        const int i = r / grp, h = r % grp;
        float *dst = out + ((size_t)(i0 + i) * (size_t)n_heads + (size_t)(g * grp + h)) * (size_t)d;
        const float *orow = o + (size_t)r * (size_t)dp;
        const float inv = 1.0f / sum[r];
        ENG_SIMD
        for (int c = 0; c < d; c++) {
            dst[c] = orow[c] * inv;
        }
    }
}

static void attention_tiles(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                            int n_heads, int n_kv_heads, int d, float scale, float *out,
                            float *scratch, size_t per_thread) {
    const int grp = n_heads / n_kv_heads;
    const struct att_tile tg = att_tile_of(grp, d);
    const int n_tiles = (n + tg.tq - 1) / tg.tq;
    const long items = (long)n_tiles * n_kv_heads;
    const size_t work = (size_t)n * (size_t)(pos0 + n) * (size_t)n_heads * (size_t)d;
    (void)work;
#ifdef _OPENMP
#pragma omp parallel if (items > 1 && work >= ATT_PAR_MIN)
#endif
    {
        float *sc = scratch + (size_t)team_thread() * per_thread;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (long it = 0; it < items; it++) {
            /* Tiles in reverse: the longest (last) tiles are handed out first. */
            const int t = n_tiles - 1 - (int)(it / n_kv_heads);
            const int g = (int)(it % n_kv_heads);
            const int i0 = t * tg.tq, nq = n - i0 < tg.tq ? n - i0 : tg.tq;
            attend_tile(q, i0, nq, pos0, kv, g, n_heads, n_kv_heads, scale, &tg, out, sc);
        }
    }
}

/* ---- entry points ---- */

static size_t thread_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim) {
    const struct att_tile tg = att_tile_of(n_heads / n_kv_heads, head_dim);
    const size_t rows = row_thread_floats(n_ctx), tiles = tile_thread_floats(&tg);
    return rows > tiles ? rows : tiles;
}

size_t eng_attention_scratch_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim,
                                    int n_threads) {
    KC_ASSERT(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0);
    return (size_t)(n_threads > 0 ? n_threads : 1) *
           thread_floats(n_ctx, n_heads, n_kv_heads, head_dim);
}

static void check_args(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                       int n_kv_heads, int head_dim, const float *out, const float *scratch) {
    KC_ASSERT(q != NULL && kv != NULL && out != NULL && scratch != NULL);
    KC_ASSERT(n >= 0 && pos0 >= 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0);
    KC_ASSERT(n_heads % n_kv_heads == 0 && kv->block_size > 0);
}

void eng_attention(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                   int n_kv_heads, int head_dim, float scale, float *out, float *scratch) {
    check_args(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, out, scratch);
    const size_t per_thread = thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim);
    if (n < ATT_TILE_MIN_N) {
        attention_rows(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                       per_thread);
    } else {
        attention_tiles(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                        per_thread);
    }
}

void eng__attention_rows(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                         int n_kv_heads, int head_dim, float scale, float *out, float *scratch) {
    check_args(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, out, scratch);
    attention_rows(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                   thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim));
}

void eng__attention_tiles(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                          int n_heads, int n_kv_heads, int head_dim, float scale, float *out,
                          float *scratch) {
    check_args(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, out, scratch);
    attention_tiles(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                    thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim));
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
