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
 *  1. Two paths, one contract. A single decode row of a group of fewer than
 *     ATT_TILE_MIN_GRP heads (MHA, grp 2) takes the row path: one (query row, kv head) item
 *     at a time, all heads of the group together, one dot product per key. Everything else
 *     (prefill chunks, decode rows of GQA groups of 3 or more) takes the tile path, whose
 *     16-row vectors then carry padding rows; single decode rows of groups of 3..8 heads
 *     (invariant 9) and of 1..2 heads with D a multiple of 16 up to 128 (invariant 10) have their
 * own path since, so the row path keeps single rows of groups of 1..2 with other head sizes.
 *     Measured on a 2-core AMD EPYC (Zen 4,
 *     AVX-512), CPU time of one decode row, row path / tile path: grp 3 at contexts 512,
 *     2048, 8192: 0.12 / 0.12, 0.44 / 0.45, 5.6 / 3.2 ms; grp 8 at 2048: 0.75 / 0.35 ms;
 *     grp 1 at 512 and 8192: 0.14 / 0.31, 10.0 / 12.1 ms. Two rows, grp 3 at 2048: 0.90 /
 *     0.41 ms.
 *  2. Tile path. A work item is (kv head g, tile of tq query rows); its score matrix has
 *     rp = tq * grp rows (rounded up to 16), one per (query row, head of the group), so each
 *     key and value of the chunk is read once per tile for all heads that share it. The
 *     tile's queries are packed once, scaled and transposed (Qt[D][rp]); scores, P and the
 *     accumulator are kept transposed too (St[key][rp], Ot[D][rp]), so the softmax runs down
 *     columns 16 rows a vector and keys and values are broadcast straight from the paged
 *     cache: no K/V packing, chunks may cross KV blocks, block tables need not be
 *     contiguous. Keys are visited in chunks of ATT_TK from position 0: St = K Qt, online
 *     softmax per row (running max and sum), Ot = alpha * Ot + Vᵀ P.
 *  3. Causality: chunks past the tile's last position are never visited; only chunks that
 *     reach past the tile's first position (the diagonal) compare each key with each row's
 *     position, zeroing P beyond it. Padding rows are zero and see every key, and the first
 *     chunk holds key 0, which every row sees, so no row's max stays -inf past it.
 *  4. The products run on register-blocked AVX-512 micro-kernels, broadcast-FMA outer
 *     products: 4 keys x 6 row vectors for St, 4 columns x 6 row vectors for Ot, 24
 *     accumulators each, the row vectors forced into registers (ATT_IN_REG). An earlier
 *     version packed each K chunk transposed and V per chunk (row-major S): its packing and
 *     per-row softmax took ~60% of its time against ~40% for the products (perf). oneDNN
 *     matmuls per tile were not used: a 96 x 64 x 64 product is ~0.8 MFLOP, about 7 us at
 *     the GEMM rate, in the range of a primitive's execution overhead, and the softmax must
 *     run between the two products of every chunk. Without AVX-512 the same tiling runs
 *     plain `omp simd` loops.
 *  5. Parallel over work items on the calling OpenMP team (schedule dynamic, the longest
 *     tiles first); each thread uses its own slice of the caller's scratch, whose size
 *     eng_attention_scratch_floats gives for both paths. A call with one item or less work
 *     than ATT_PAR_MIN (a decode row before the context fills two key chunks) runs its item
 *     loop on the calling thread outside any parallel region (the loops' orphaned `omp for`
 *     then has a team of one): a `parallel if (false)` region still costs libgomp a team
 *     (engine/ops.c invariant 6).
 *  6. f32 throughout. P uses exp512/expf_fast (ops_simd.h, <= 2 ulp); the row path's
 *     rescale uses libm expf. Queries are scaled before the product (the twin scales the
 *     dot product): differences stay at float rounding (tests/unit/test_attention.c).
 *  7. bf16 caches (`--kv-dtype bf16`, view dtype ENG_DTYPE_BF16): keys and values are
 *     widened to f32 exactly (a bf16 is the high half of an f32: zero-extend, shift by 16;
 *     AVX-512F only), so the arithmetic and the result are those of the f32 kernel on the
 *     rounded K/V. The row path widens in registers (dot_bf16, axpy_bf16), its dtype fixed
 *     per call by picking one of two instantiations of attend_group. The tile path widens
 *     each chunk's ATT_TK keys and values once per tile into per-thread Kf/Vf rows (L1) and
 *     runs the f32 micro-kernels unchanged: the widening is D/16 vector ops per key against
 *     rp/16 * D FMAs, and the f32 path only gains a per-key branch in the chunk setup. The
 *     twin reads the elements through kv_elem.
 *  8. bf16 tile path (eng_attention_bf16, the bf16 prefill's attention). Tiles and the f32
 *     online softmax as in invariant 2, but the two products run on vdpbf16ps (avx512_bf16:
 *     two bf16 products per f32 lane and instruction, twice the f32 FMA's work): at the start
 *     of a call each kv head's keys and values of the whole context are packed once, rounded
 *     to bf16, into pair layouts (Kb[t][D/2] of (k[2p], k[2p+1]) and Vp[t/2][D] of
 *     (v_t[c], v_t+1[c])), shared by all tiles; a tile packs its scaled queries as Qt2[D/2][rp]
 *     pairs and, after each chunk's softmax, P as P2[TK/2][rp] pairs, so every operand of the
 *     micro-kernels is one 32-bit broadcast or one 64-byte load, as in invariant 4. The output
 *     is rounded to bf16 for the o-projection. Rounding q, k, v and P to bf16 (8 bits of
 *     mantissa) is the price: tests/unit/test_engine_bf16_prefill.c measures the difference
 *     to the f32 kernel. oneDNN matmuls were not used for the same reason as in invariant 4
 *     (the softmax runs between the products of every chunk; a batched QK^T over whole rows
 *     would hold T x T scores and compute the masked half). The path is compiled for
 *     avx512_bf16 in every AVX-512 build (a target pragma, so the x86-64-v4 image has it) and
 *     taken where eng_bf16_dot() says the CPU has it: 0.92 of the bf16 GEMM on a 512-token
 *     prefill against 0.86 for the f32 tiles (x86-64-v4 builds, Zen 4). Where it says no, or
 *     for fewer than ATT_BF16_MIN_N query rows (the packing of the whole context would cost
 *     as much as a row's attention), eng_attention_bf16 runs the f32 tile kernel and rounds
 *     its output.
 *  9. Decode path. One query row of a GQA group of 3..8 heads with D a multiple of 8 (every decode
 *     step of TinyLlama, Llama 3, Qwen 2) takes attention_decode instead of the tiles: a tile of
 *     one row fills only grp of the 16 lanes of its score vectors, so half or more of its FMAs were
 *     padding. Here the 16 lanes of a zmm vector are (head h, parity p) pairs, lane 2h+p (the pair
 *     layout): queries are packed as Qt2[D/2][16] = q_h[2c2+p], so one 64-bit broadcast of a key's
 *     (k[2c2], k[2c2+1]) times Qt2[c2] accumulates both halves of every head's dot product, and
 *     adding each lane's neighbour leaves k.q_h in both lanes of head h. Scores, P, the running
 *     max and sum stay in that duplicated layout (St2[key][16]), which is exactly what PV needs:
 *     Ot2[c2][2h+p] += (v[2c2], v[2c2+1]) broadcast * P2[key], 16 column pairs per block. Every
 *     FMA does 16 useful products, against 8 for the ymm-per-group kernel this replaced, whose
 *     choice rested on Zen 4 issuing two ymm FMAs per cycle against one zmm: Xeons and Zen 5 issue
 *     two of either (measured here, Zen 5: 6.9 G FMA/s of ymm and of zmm per core), and Zen 4
 *     does the same work either way. 8 keys (QK) or 16 column pairs (PV) per block are
 *     independent accumulators. The context is split into ATT_DEC_ITEMS_PER_THREAD key ranges
 *     per thread (multiples of 16 keys, no more ranges than ATT_TK chunks, at most
 *     ATT_DEC_MAX_SPLITS), handed out dynamically; a range is a sequence of items (chunk, kv
 *     head), and each item's loops prefetch the next item's rows a line or two per inner
 *     iteration (struct dec_pf), about the rate the item consumes them. In a decode step the
 *     cache is cold (the products streamed megabytes of weights since this layer's keys were
 *     last read), and reading a chunk of every head at once (the earlier prefetch) filled the
 *     core's miss buffers and stalled it until they drained, so reading and arithmetic added up
 *     instead of overlapping. Each (kv head, range) keeps an online-softmax partial (max, sum,
 *     Ot2) in the scratch after the per-thread slices, beside the packed queries; the merge
 *     rescales them by exp(max_s - max), all lanes of a kv head at once. Measured on the 2-core
 *     AMD EPYC (Zen 5, family 26; no AMX), TinyLlama's shape (H 32, Hkv 4, D 64), 2 threads,
 *     against the ymm kernel with the whole-chunk prefetch, side by side: attention per int8
 *     decode step (`kvcast bench engine --profile --dtypes int8`, 22 layers) 2.25-2.30 -> 1.38-
 *     1.57 ms at context 512-544 and 7.1 -> 4.3 ms at 2000-2032; one warm row at context 2048
 *     (`--attn-only`) 157-165 -> 138-139 us. In a standalone probe of one cold layer at context
 *     544 (weights streamed between calls), the 16-lane arithmetic alone took 113-123 us to
 *     88-94, the trickled prefetch to 73-79 and two ranges per thread instead of four (one cold
 *     first item fewer per range) to 70-73; the same prefetch in bursts of 64 lines per key
 *     block had done nothing for the ymm kernel.
 *     Quad layout. A group of 3 or 4 heads (Llama 3's 8B and 1B, Mistral: grp 4; Llama-3.2 3B:
 *     grp 3) fills only 6-8 of the pair layout's 16 lanes. With D a multiple of 16 the same
 *     kernel runs with lane groups of r = 4 instead of 2 (dec_r): lane 4h+e holds head h and
 *     element e mod 4, a 128-bit broadcast of (k[4c], .., k[4c+3]) times Qt[c] accumulates a
 *     quarter of every head's dot product, two permute-adds leave k.q_h in the head's four
 *     lanes, and PV runs over D/4 column groups: half the FMAs of the pair layout for every key.
 *     Measured on the same Zen 5, Llama-3.2 1B's shape (H 32, Hkv 8, D 64), 2 threads, pair ->
 *     quad, alternating: one row at context 4096 (`--attn-only`) 640-650 -> 411-454 us; attention
 *     per bf16 decode step after a 2000-token prompt (`bench engine --config llama-3.2-1b
 *     --profile`, 16 layers) 5.3-6.6 -> 3.9-4.2 ms. Groups of 5-8 keep pairs.
 * 10. Decode path, MHA kernel. One query row of a group of 1 or 2 heads (MHA models such as
 *     Llama 2, Phi-2 and the embedded pair's grp 2) with D a multiple of 16 up to 128 runs
 * attention_decode's ranges, prefetch and merge with attend_mha_chunk in place of the pair kernel,
 * which would fill only 2 or 4 of its 16 lanes. A head's queries stay as they are ([grp][D],
 * scaled); 16 keys' scores are 16 dot products of D/16 FMAs each, reduced together by sum16
 *     (interleave-and-add of lanes, 64-bit halves and 128-bit quarters: 45 operations for 16
 *     keys, against a horizontal sum per key in the row path); the online softmax runs on
 *     those 16 lanes; O[D] stays in D/16 registers while the chunk's values stream through.
 *     Its partial keeps (max, sum) in lanes 2h and 2h + 1 like the pair kernel's and O as
 *     [grp][D], merged by merge_mha. Other head sizes keep the row path (D/16 is a constant
 *     of each of the kernel's eight instantiations). Measured on the same Zen 5, 2 threads,
 *     one cold
 *     layer at context 2048 (the probe of invariant 9), row path -> this kernel: H 32 Hkv 32
 *     (Llama 2's MHA) 3268-3484 -> 1093 us, about the time a plain read of its 33.5 MB of K/V
 *     takes (1007 us); H 4 Hkv 2 (the embedded base) 359-369 -> 93 us; H 2 Hkv 1 139-149 ->
 *     45 us. `kvcast bench engine --config kvcast-base --threads 2 --dtypes bf16 --attn none
 *     --prompt-len 1900 --gen 64 --profile`: attention 1.64-1.86 -> 0.50-0.52 ms per step,
 *     decode 364 -> 720-799 tokens/s.
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
/* Row vectors (16 S rows each) per micro-kernel call: 4 x 6 accumulators + 6 operands + 4
 * broadcasts fit the 32 zmm registers. */
#define ATT_NV 6
/* Target S rows (query rows x heads of a group) per tile: Q, S and O of a tile stay in L2. */
#define ATT_ROWS 96
/* Calls with at least ATT_TILE_MIN_N query rows, or groups of at least ATT_TILE_MIN_GRP
 * heads, take the tile path (invariant 1). */
#define ATT_TILE_MIN_N 2
#define ATT_TILE_MIN_GRP 3
/* eng_attention_bf16 packs the whole context's K/V once per call (invariant 8): worth it from
 * this many query rows on; fewer rows (an item of a batched decode step) take the f32 tiles. */
#define ATT_BF16_MIN_N 16

static size_t up16(size_t x) {
    return (x + 15) / 16 * 16;
}

/* Element offset of the key vector of kv head g at token t from the view's base. */
static inline size_t kv_key_off(const struct eng_kv_view *kv, int t, int n_kv_heads, int d, int g) {
    const int32_t blk = kv->block_table[t / kv->block_size];
    return (size_t)blk * kv->block_stride +
           ((size_t)(t % kv->block_size) * (size_t)n_kv_heads + (size_t)g) * (size_t)d;
}

/* Key vector of kv head g at token t: f32 views ... */
static inline const float *kv_key(const struct eng_kv_view *kv, int t, int n_kv_heads, int d,
                                  int g) {
    return kv->base + kv_key_off(kv, t, n_kv_heads, d, g);
}

/* ... and bf16 views (invariant 7). */
static inline const uint16_t *kv_key16(const struct eng_kv_view *kv, int t, int n_kv_heads, int d,
                                       int g) {
    return kv->base16 + kv_key_off(kv, t, n_kv_heads, d, g);
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

/* The first min(n, 16) bf16 of p widened to f32 lanes (the rest zero): a bf16 is the high half
 * of an f32, so zero-extend to 32 bits and shift left by 16 (AVX-512F; no avx512_bf16). */
static inline __m512 bf16_load16(const uint16_t *p, int n) {
    __m256i h;
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    h = _mm256_maskz_loadu_epi16(tail_mask(n), p);
#else
    if (n >= 16) {
        h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    } else {
        uint16_t t[16] = {0};
        memcpy(t, p, (size_t)n * sizeof(uint16_t));
        h = _mm256_loadu_si256((const __m256i *)(const void *)t);
    }
#endif
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float dot_bf16(const float *restrict a, const uint16_t *restrict b, int d) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < d; i += 16) {
        const __mmask16 k = tail_mask(d - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), bf16_load16(b + i, d - i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static inline void axpy_bf16(float *restrict y, float a, const uint16_t *restrict x, int d) {
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < d; i += 16) {
        const __mmask16 k = tail_mask(d - i);
        const __m512 r =
            _mm512_fmadd_ps(va, bf16_load16(x + i, d - i), _mm512_maskz_loadu_ps(k, y + i));
        _mm512_mask_storeu_ps(y + i, k, r);
    }
}

/* dst[0..n) = src[0..n) widened to f32. */
static inline void bf16_to_f32_row(const uint16_t *restrict src, float *restrict dst, int n) {
    for (int i = 0; i < n; i += 16) {
        _mm512_mask_storeu_ps(dst + i, tail_mask(n - i), bf16_load16(src + i, n - i));
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

static inline float dot_bf16(const float *restrict a, const uint16_t *restrict b, int d) {
    float s = 0.0f;
    ENG_SIMD_SUM(s)
    for (int i = 0; i < d; i++) {
        s += a[i] * eng_bf16_to_f32(b[i]);
    }
    return s;
}

static inline void axpy_bf16(float *restrict y, float a, const uint16_t *restrict x, int d) {
    ENG_SIMD
    for (int i = 0; i < d; i++) {
        y[i] += a * eng_bf16_to_f32(x[i]);
    }
}

static inline void bf16_to_f32_row(const uint16_t *restrict src, float *restrict dst, int n) {
    ENG_SIMD
    for (int i = 0; i < n; i++) {
        dst[i] = eng_bf16_to_f32(src[i]);
    }
}
#endif

/* Attention of the G query heads q[G, D] of one row (sharing kv head g) over keys 0..L-1;
 * writes out[G, D]. sc holds sc_floats floats. Keys are visited in blocks with an online
 * softmax; when the scratch holds all scores of the group there is one block and it is the
 * classic two-pass softmax. bf (a constant at both call sites: one instantiation per cache
 * dtype) says the view holds bf16 elements, widened in registers by dot_bf16/axpy_bf16. */
static inline __attribute__((always_inline)) void
attend_group_t(const float *q, int n_keys, const struct eng_kv_view *kv, int g, int grp,
               int n_kv_heads, int d, float scale, float *out, float *sc, size_t sc_floats,
               const bool bf) {
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
            if (bf) {
                const uint16_t *k = kv_key16(kv, t0 + j, n_kv_heads, d, g);
                for (int h = 0; h < grp; h++) {
                    s[(size_t)h * blk + (size_t)j] =
                        dot_bf16(q + (size_t)h * (size_t)d, k, d) * scale;
                }
            } else {
                const float *k = kv_key(kv, t0 + j, n_kv_heads, d, g);
                for (int h = 0; h < grp; h++) {
                    s[(size_t)h * blk + (size_t)j] = dot(q + (size_t)h * (size_t)d, k, d) * scale;
                }
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
            if (bf) {
                const uint16_t *v = kv_key16(kv, t0 + j, n_kv_heads, d, g) + kv->v_offset;
                for (int h = 0; h < grp; h++) {
                    axpy_bf16(out + (size_t)h * (size_t)d, s[(size_t)h * blk + (size_t)j], v, d);
                }
            } else {
                const float *v = kv_key(kv, t0 + j, n_kv_heads, d, g) + kv->v_offset;
                for (int h = 0; h < grp; h++) {
                    axpy(out + (size_t)h * (size_t)d, s[(size_t)h * blk + (size_t)j], v, d);
                }
            }
        }
    }
    for (int h = 0; h < grp; h++) {
        scal(out + (size_t)h * (size_t)d, 1.0f / sum[h], d);
    }
}

static void attend_group_f32(const float *q, int n_keys, const struct eng_kv_view *kv, int g,
                             int grp, int n_kv_heads, int d, float scale, float *out, float *sc,
                             size_t sc_floats) {
    attend_group_t(q, n_keys, kv, g, grp, n_kv_heads, d, scale, out, sc, sc_floats, false);
}

static void attend_group_bf16(const float *q, int n_keys, const struct eng_kv_view *kv, int g,
                              int grp, int n_kv_heads, int d, float scale, float *out, float *sc,
                              size_t sc_floats) {
    attend_group_t(q, n_keys, kv, g, grp, n_kv_heads, d, scale, out, sc, sc_floats, true);
}

/* The (row, kv head) items of attention_rows, shared by the calling thread's team, or run by
 * the calling thread alone outside any parallel region (invariant 5). */
static void rows_items(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                       int n_kv_heads, int d, float scale, float *out, float *scratch,
                       size_t per_thread) {
    const int grp = n_heads / n_kv_heads;
    const long items = (long)n * n_kv_heads;
    /* The cache dtype picks the instantiation once per call, outside every loop. */
    void (*const attend_group)(const float *, int, const struct eng_kv_view *, int, int, int, int,
                               float, float *, float *, size_t) =
        kv->dtype == ENG_DTYPE_BF16 ? attend_group_bf16 : attend_group_f32;
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

static void attention_rows(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                           int n_heads, int n_kv_heads, int d, float scale, float *out,
                           float *scratch, size_t per_thread) {
    const int grp = n_heads / n_kv_heads;
    const long items = (long)n * n_kv_heads;
    const size_t work = (size_t)items * (size_t)(pos0 + n) * (size_t)grp * (size_t)d;
    ENG_ON_TEAM(items > 1 && work >= ATT_PAR_MIN, rows_items(q, n, pos0, kv, n_heads, n_kv_heads, d,
                                                             scale, out, scratch, per_thread));
}

/* ---- tile path (prefill) ---- */

/* Geometry of the tile path for one (grp, D). */
struct att_tile {
    int tq; /* query rows per tile */
    int rp; /* S rows of a full tile (tq * grp) rounded up to 16 */
    int d;  /* D */
};

static struct att_tile att_tile_of(int grp, int d) {
    struct att_tile t;
    t.tq = ATT_ROWS / grp > 0 ? ATT_ROWS / grp : 1;
    t.rp = (int)up16((size_t)t.tq * (size_t)grp);
    t.d = d;
    return t;
}

/* Per-thread scratch of the tile path, each part on a 64-byte boundary of the slice:
 * Qt[D][rp] (scaled queries, transposed), St[TK][rp] (scores, then P), Ot[D][rp] (the
 * accumulator, transposed), max, sum, rescale and query position [rp] each, zeros[D], and
 * the chunk's keys and values widened from bf16, Kf[TK][D] and Vf[TK][D] (bf16 views). */
static size_t tile_thread_floats(const struct att_tile *t) {
    const size_t rp = (size_t)t->rp, d = (size_t)t->d;
    return 2 * up16(rp * d) + up16(ATT_TK * rp) + 4 * rp + up16(d) + 2 * up16(ATT_TK * d);
}

#if defined(__AVX512F__)
/* Keeps an operand loaded once in a register: GCC otherwise folds the load into each of the
 * 4 FMAs that use it, and Zen 4 issues one 512-bit load per cycle, so the folded loads, not
 * the FMAs, would set the pace. */
#define ATT_IN_REG(x) __asm__("" : "+v"(x))

/* St[j][r0..r0+16*NV) = sum_c k_j[c] * Qt[c][r0..] for 4 keys j0..j0+3: 4 x NV accumulators,
 * the keys broadcast straight from the cache. NV is a constant at every call site. */
static inline __attribute__((always_inline)) void qk_block(const float *const *kp,
                                                           const float *restrict qt, int ld, int d,
                                                           int r0, float *restrict st,
                                                           const int nv) {
    __m512 acc[4][ATT_NV];
    for (int i = 0; i < 4; i++) {
        for (int v = 0; v < nv; v++) {
            acc[i][v] = _mm512_setzero_ps();
        }
    }
    const float *k0 = kp[0], *k1 = kp[1], *k2 = kp[2], *k3 = kp[3];
    for (int c = 0; c < d; c++) {
        const float *qc = qt + (size_t)c * (size_t)ld + (size_t)r0;
        __m512 b[ATT_NV];
        for (int v = 0; v < nv; v++) {
            b[v] = _mm512_loadu_ps(qc + 16 * v);
            ATT_IN_REG(b[v]);
        }
        const __m512 a0 = _mm512_set1_ps(k0[c]), a1 = _mm512_set1_ps(k1[c]);
        const __m512 a2 = _mm512_set1_ps(k2[c]), a3 = _mm512_set1_ps(k3[c]);
        for (int v = 0; v < nv; v++) {
            acc[0][v] = _mm512_fmadd_ps(a0, b[v], acc[0][v]);
            acc[1][v] = _mm512_fmadd_ps(a1, b[v], acc[1][v]);
            acc[2][v] = _mm512_fmadd_ps(a2, b[v], acc[2][v]);
            acc[3][v] = _mm512_fmadd_ps(a3, b[v], acc[3][v]);
        }
    }
    for (int i = 0; i < 4; i++) {
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(st + (size_t)i * (size_t)ld + (size_t)(r0 + 16 * v), acc[i][v]);
        }
    }
}

/* Ot[c0..c0+CB)[r0..r0+16*NV) = alpha * Ot + sum_j v_j[c] * P[j][r0..]: CB x NV
 * accumulators, the values broadcast straight from the cache. */
static inline __attribute__((always_inline)) void
pv_block(const float *const *vp, int nk, const float *restrict p, int ld, int c0, int r0,
         const float *restrict alpha, float *restrict ot, const int cb, const int nv) {
    __m512 acc[4][ATT_NV];
    for (int v = 0; v < nv; v++) {
        const __m512 al = _mm512_loadu_ps(alpha + r0 + 16 * v);
        for (int i = 0; i < cb; i++) {
            acc[i][v] = _mm512_mul_ps(
                al, _mm512_loadu_ps(ot + (size_t)(c0 + i) * (size_t)ld + (size_t)(r0 + 16 * v)));
        }
    }
    for (int j = 0; j < nk; j++) {
        const float *pj = p + (size_t)j * (size_t)ld + (size_t)r0;
        __m512 b[ATT_NV];
        for (int v = 0; v < nv; v++) {
            b[v] = _mm512_loadu_ps(pj + 16 * v);
            ATT_IN_REG(b[v]);
        }
        for (int i = 0; i < cb; i++) {
            const __m512 a = _mm512_set1_ps(vp[j][c0 + i]);
            for (int v = 0; v < nv; v++) {
                acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
            }
        }
    }
    for (int i = 0; i < cb; i++) {
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(ot + (size_t)(c0 + i) * (size_t)ld + (size_t)(r0 + 16 * v), acc[i][v]);
        }
    }
}

#define ATT_NV_CASES(CALL)                                                                         \
    switch (nv) {                                                                                  \
    case 1:                                                                                        \
        CALL(1);                                                                                   \
        break;                                                                                     \
    case 2:                                                                                        \
        CALL(2);                                                                                   \
        break;                                                                                     \
    case 3:                                                                                        \
        CALL(3);                                                                                   \
        break;                                                                                     \
    case 4:                                                                                        \
        CALL(4);                                                                                   \
        break;                                                                                     \
    case 5:                                                                                        \
        CALL(5);                                                                                   \
        break;                                                                                     \
    default:                                                                                       \
        CALL(6);                                                                                   \
        break;                                                                                     \
    }

/* St[j][0..rp) for keys j < nk (rounded up to 4 with zero keys). */
static void tile_qk(const float *const *kp, int nk, const float *restrict qt, int rp, int d,
                    float *restrict st) {
    for (int r0 = 0; r0 < rp; r0 += 16 * ATT_NV) {
        const int nv = (rp - r0) / 16 < ATT_NV ? (rp - r0) / 16 : ATT_NV;
        for (int j = 0; j < nk; j += 4) {
#define ATT_QK(NV) qk_block(kp + j, qt, rp, d, r0, st + (size_t)j * (size_t)rp, NV)
            ATT_NV_CASES(ATT_QK)
#undef ATT_QK
        }
    }
}

/* Ot = alpha * Ot + V^T P over keys j < nk. */
static void tile_pv(const float *const *vp, int nk, const float *restrict p, int rp, int d,
                    const float *restrict alpha, float *restrict ot) {
    for (int r0 = 0; r0 < rp; r0 += 16 * ATT_NV) {
        const int nv = (rp - r0) / 16 < ATT_NV ? (rp - r0) / 16 : ATT_NV;
        int c0 = 0;
        for (; c0 + 4 <= d; c0 += 4) {
#define ATT_PV(NV) pv_block(vp, nk, p, rp, c0, r0, alpha, ot, 4, NV)
            ATT_NV_CASES(ATT_PV)
#undef ATT_PV
        }
        for (; c0 < d; c0++) {
#define ATT_PV1(NV) pv_block(vp, nk, p, rp, c0, r0, alpha, ot, 1, NV)
            ATT_NV_CASES(ATT_PV1)
#undef ATT_PV1
        }
    }
}

/* Online softmax over the chunk's keys k0..k0+nk-1 for all rows, 16 rows a vector: St
 * becomes P (zero where the key is masked), max and sum are updated and alpha receives the
 * factor that rescales the accumulator. */
static void tile_softmax(float *restrict st, int nk, int k0, bool diag, int rp,
                         const int32_t *restrict qpos, float *restrict mx, float *restrict sum,
                         float *restrict alpha) {
    for (int r = 0; r < rp; r += 16) {
        const __m512i qv = _mm512_loadu_si512(qpos + r);
        const __m512 m_old = _mm512_loadu_ps(mx + r);
        __m512 bm = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < nk; j++) {
            const __m512 s = _mm512_loadu_ps(st + (size_t)j * (size_t)rp + (size_t)r);
            const __mmask16 k =
                diag ? _mm512_cmpge_epi32_mask(qv, _mm512_set1_epi32(k0 + j)) : (__mmask16)0xffff;
            bm = _mm512_mask_max_ps(bm, k, bm, s);
        }
        const __m512 m_new = _mm512_max_ps(m_old, bm);
        /* No key seen yet (first chunk): nothing to rescale, and -inf - -inf is NaN. */
        const __mmask16 seen = _mm512_cmp_ps_mask(m_old, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m512 al = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(m_old, m_new)));
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < nk; j++) {
            float *sp = st + (size_t)j * (size_t)rp + (size_t)r;
            const __mmask16 k =
                diag ? _mm512_cmpge_epi32_mask(qv, _mm512_set1_epi32(k0 + j)) : (__mmask16)0xffff;
            const __m512 e =
                _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_loadu_ps(sp), m_new)));
            _mm512_storeu_ps(sp, e);
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_storeu_ps(mx + r, m_new);
        _mm512_storeu_ps(alpha + r, al);
        _mm512_storeu_ps(sum + r, _mm512_fmadd_ps(_mm512_loadu_ps(sum + r), al, acc));
    }
}
#else
static void tile_qk(const float *const *kp, int nk, const float *restrict qt, int rp, int d,
                    float *restrict st) {
    for (int j = 0; j < nk; j++) {
        float *sj = st + (size_t)j * (size_t)rp;
        for (int r = 0; r < rp; r++) {
            sj[r] = 0.0f;
        }
        for (int c = 0; c < d; c++) {
            const float a = kp[j][c];
            const float *qc = qt + (size_t)c * (size_t)rp;
            ENG_SIMD
            for (int r = 0; r < rp; r++) {
                sj[r] += a * qc[r];
            }
        }
    }
}

static void tile_pv(const float *const *vp, int nk, const float *restrict p, int rp, int d,
                    const float *restrict alpha, float *restrict ot) {
    for (int c = 0; c < d; c++) {
        float *oc = ot + (size_t)c * (size_t)rp;
        ENG_SIMD
        for (int r = 0; r < rp; r++) {
            oc[r] *= alpha[r];
        }
        for (int j = 0; j < nk; j++) {
            const float a = vp[j][c];
            const float *pj = p + (size_t)j * (size_t)rp;
            ENG_SIMD
            for (int r = 0; r < rp; r++) {
                oc[r] += a * pj[r];
            }
        }
    }
}

static void tile_softmax(float *restrict st, int nk, int k0, bool diag, int rp,
                         const int32_t *restrict qpos, float *restrict mx, float *restrict sum,
                         float *restrict alpha) {
    for (int r = 0; r < rp; r++) {
        float bm = -INFINITY;
        for (int j = 0; j < nk; j++) {
            const float s = st[(size_t)j * (size_t)rp + (size_t)r];
            bm = (!diag || qpos[r] >= k0 + j) && s > bm ? s : bm;
        }
        const float m_new = bm > mx[r] ? bm : mx[r];
        alpha[r] = mx[r] == -INFINITY ? 0.0f : expf_fast(mx[r] - m_new);
        float acc = 0.0f;
        for (int j = 0; j < nk; j++) {
            float *sp = st + (size_t)j * (size_t)rp + (size_t)r;
            *sp = !diag || qpos[r] >= k0 + j ? expf_fast(*sp - m_new) : 0.0f;
            acc += *sp;
        }
        mx[r] = m_new;
        sum[r] = sum[r] * alpha[r] + acc;
    }
}
#endif

/* The key and value rows of kv head g for the chunk of keys k0..k0+nk-1 (nk <= ATT_TK), for
 * the broadcast kernels of both paths: f32 rows point into the cache; bf16 rows are widened
 * into Kf/Vf[TK][D] once (invariant 7). Keys past the chunk point at zeros: the key blocks read
 * them harmlessly. */
static void chunk_rows(const struct eng_kv_view *kv, int g, int n_kv_heads, int d, int k0, int nk,
                       float *kf, float *vf, const float *zeros, const float **kp,
                       const float **vp) {
    for (int j = 0; j < ATT_TK; j++) {
        if (j >= nk) {
            kp[j] = vp[j] = zeros;
        } else if (kv->dtype == ENG_DTYPE_BF16) {
            const uint16_t *k16 = kv_key16(kv, k0 + j, n_kv_heads, d, g);
            float *kr = kf + (size_t)j * (size_t)d, *vr = vf + (size_t)j * (size_t)d;
            bf16_to_f32_row(k16, kr, d);
            bf16_to_f32_row(k16 + kv->v_offset, vr, d);
            kp[j] = kr;
            vp[j] = vr;
        } else {
            kp[j] = kv_key(kv, k0 + j, n_kv_heads, d, g);
            vp[j] = kp[j] + kv->v_offset;
        }
    }
}

/* One work item: query rows i0..i0+nq-1 (positions pos0+i0..) of kv head g. Writes out, or
 * out16 (rounded to bf16) when out16 is not NULL. */
static void attend_tile(const float *q, int i0, int nq, int pos0, const struct eng_kv_view *kv,
                        int g, int n_heads, int n_kv_heads, float scale, const struct att_tile *tg,
                        float *out, uint16_t *out16, float *sc) {
    const int grp = n_heads / n_kv_heads, d = tg->d;
    const int rows = nq * grp, rp = (int)up16((size_t)rows);
    const size_t frp = (size_t)tg->rp;
    float *qt = sc;
    float *ot = qt + up16(frp * (size_t)d);
    float *st = ot + up16(frp * (size_t)d);
    float *mx = st + up16(ATT_TK * frp);
    float *sum = mx + frp;
    float *alpha = sum + frp;
    int32_t *qpos = (int32_t *)(void *)(alpha + frp);
    float *zeros = alpha + 2 * frp;
    float *kf = zeros + up16((size_t)d);
    float *vf = kf + up16(ATT_TK * (size_t)d);
    const int first = pos0 + i0, last = pos0 + i0 + nq - 1;
    /* Row i * grp + h of Qt's columns is (query row i, head h), scaled; padding rows are
     * zero and see every key, so they stay finite. */
    for (int i = 0; i < nq; i++) {
        const float *src =
            q + ((size_t)(i0 + i) * (size_t)n_heads + (size_t)g * (size_t)grp) * (size_t)d;
        for (int h = 0; h < grp; h++) {
            const int r = i * grp + h;
            for (int c = 0; c < d; c++) {
                qt[(size_t)c * (size_t)rp + (size_t)r] =
                    src[(size_t)h * (size_t)d + (size_t)c] * scale;
            }
            qpos[r] = first + i;
        }
    }
    for (int r = rows; r < rp; r++) {
        for (int c = 0; c < d; c++) {
            qt[(size_t)c * (size_t)rp + (size_t)r] = 0.0f;
        }
        qpos[r] = last;
    }
    memset(ot, 0, (size_t)rp * (size_t)d * sizeof(float));
    memset(zeros, 0, (size_t)d * sizeof(float));
    for (int r = 0; r < rp; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    const float *kp[ATT_TK], *vp[ATT_TK];
    for (int k0 = 0; k0 <= last; k0 += ATT_TK) {
        const int nk = last + 1 - k0 < ATT_TK ? last + 1 - k0 : ATT_TK;
        chunk_rows(kv, g, n_kv_heads, d, k0, nk, kf, vf, zeros, kp, vp);
        tile_qk(kp, nk, qt, rp, d, st);
        tile_softmax(st, nk, k0, k0 + nk - 1 > first, rp, qpos, mx, sum, alpha);
        tile_pv(vp, nk, st, rp, d, alpha, ot);
    }
    for (int r = 0; r < rows; r++) {
        const int i = r / grp, h = r % grp;
        const size_t o = ((size_t)(i0 + i) * (size_t)n_heads + (size_t)(g * grp + h)) * (size_t)d;
        const float inv = 1.0f / sum[r];
        if (out16 != NULL) {
            for (int c = 0; c < d; c++) {
                out16[o + (size_t)c] =
                    eng_f32_to_bf16(ot[(size_t)c * (size_t)rp + (size_t)r] * inv);
            }
        } else {
            for (int c = 0; c < d; c++) {
                out[o + (size_t)c] = ot[(size_t)c * (size_t)rp + (size_t)r] * inv;
            }
        }
    }
}

/* The (tile, kv head) items of attention_tiles, as rows_items. */
static void tile_items(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                       int n_kv_heads, float scale, const struct att_tile *tg, float *out,
                       uint16_t *out16, float *scratch, size_t per_thread) {
    const int n_tiles = (n + tg->tq - 1) / tg->tq;
    const long items = (long)n_tiles * n_kv_heads;
    float *sc = scratch + (size_t)team_thread() * per_thread;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (long it = 0; it < items; it++) {
        /* Tiles in reverse: the longest (last) tiles are handed out first. */
        const int t = n_tiles - 1 - (int)(it / n_kv_heads);
        const int g = (int)(it % n_kv_heads);
        const int i0 = t * tg->tq, nq = n - i0 < tg->tq ? n - i0 : tg->tq;
        attend_tile(q, i0, nq, pos0, kv, g, n_heads, n_kv_heads, scale, tg, out, out16, sc);
    }
}

static void attention_tiles(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                            int n_heads, int n_kv_heads, int d, float scale, float *out,
                            uint16_t *out16, float *scratch, size_t per_thread) {
    const int grp = n_heads / n_kv_heads;
    const struct att_tile tg = att_tile_of(grp, d);
    const int n_tiles = (n + tg.tq - 1) / tg.tq;
    const long items = (long)n_tiles * n_kv_heads;
    const size_t work = (size_t)n * (size_t)(pos0 + n) * (size_t)n_heads * (size_t)d;
    ENG_ON_TEAM(items > 1 && work >= ATT_PAR_MIN,
                tile_items(q, n, pos0, kv, n_heads, n_kv_heads, scale, &tg, out, out16, scratch,
                           per_thread));
}

#if defined(__AVX512F__)
/* Threads of the team a parallel region here would get. */
static int team_size(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
#endif

/* ---- decode path (one query row of a GQA group of 3..8 heads; invariant 9) ---- */

#if defined(__AVX512F__)
/* Heads of a group the decode path takes at most; each has two (or four) lanes of a zmm vector. */
#define ATT_DEC_W 8
/* Lanes of the decode path's vectors: lane r h + e is head h and element e mod r, r = 2 (pair
 * layout) or 4 (quad layout, groups of up to 4 heads). */
#define ATT_DEC_L 16
/* Keys per QK block of the decode path: 8 independent accumulators keep two FMA pipes busy. */
#define ATT_DEC_KB 8
/* Column groups (pairs or quads) per PV block: 16 accumulators, the rest of the registers for
 * operands. */
#define ATT_DEC_CB 16
/* Items (context splits) per thread the decode path aims for, and the most splits. */
#define ATT_DEC_ITEMS_PER_THREAD 2
#define ATT_DEC_MAX_SPLITS 64
/* The largest head size of the MHA kernel: D / 16 <= 8 query and output registers. */
#define ATT_MHA_MAX_D 128

/* One (kv head, split)'s partial result: running max and sum per lane, then Ot[D/r][16]
 * (sized for r = 2). */
static size_t dec_part_floats(int d) {
    return 2 * ATT_DEC_L + (size_t)d / 2 * ATT_DEC_L;
}

/* Per-thread scratch of the decode path: St2[TK][16], Kf and Vf [TK][D] (bf16 views), zeros[D]. */
static size_t dec_thread_floats(int d) {
    return up16((size_t)ATT_TK * ATT_DEC_L) + 2 * up16((size_t)ATT_TK * (size_t)d) +
           up16((size_t)d);
}

/* The zero row at the end of a decode thread's scratch (keys past a chunk point at it). */
static float *dec_zeros(float *sc, int d) {
    return sc + up16((size_t)ATT_TK * ATT_DEC_L) + 2 * up16((size_t)ATT_TK * (size_t)d);
}

/* The decode path's shared scratch after the per-thread slices: the (kv head, split) partials
 * for up to ATT_DEC_MAX_SPLITS splits, then each kv head's scaled queries Qt2[D/2][16]. */
static size_t dec_shared_floats(int n_kv_heads, int d) {
    return (size_t)n_kv_heads *
           (ATT_DEC_MAX_SPLITS * dec_part_floats(d) + (size_t)d / 2 * ATT_DEC_L);
}

/* Splits of the context: enough items to balance the team, none shorter than a key chunk. */
static int dec_splits(int n_keys, int threads) {
    int want = ATT_DEC_ITEMS_PER_THREAD * threads;
    want = want < ATT_DEC_MAX_SPLITS ? want : ATT_DEC_MAX_SPLITS;
    const int most = (n_keys + ATT_TK - 1) / ATT_TK;
    return want < most ? want : most;
}

/* The rows of a decode item (chunk_rows, widened into the thread's Kf/Vf for bf16 caches);
 * returns the thread's score rows St[TK][16], the first part of its scratch sc. */
static float *dec_chunk_rows(const struct eng_kv_view *kv, int g, int n_kv_heads, int d, int k0,
                             int nk, float *sc, const float **kp, const float **vp) {
    float *kf = sc + up16((size_t)ATT_TK * ATT_DEC_L);
    float *vf = kf + up16((size_t)ATT_TK * (size_t)d);
    chunk_rows(kv, g, n_kv_heads, d, k0, nk, kf, vf, dec_zeros(sc, d), kp, vp);
    return sc;
}

/* The next item of a decode range (the next kv head of this chunk, or the first of the next
 * chunk): its key rows, each value row voff bytes after its key row. The current item's loops
 * ask for its lines one or two at a time (dec_pf_step), so the requests go out at about the rate
 * the item uses data and overlap its arithmetic; asking for a whole chunk at once filled the
 * core's miss buffers and stalled it until they drained (invariant 9). */
struct dec_pf {
    const char *k[ATT_TK];
    int n;     /* rows; 0 when the range has no next item */
    int lines; /* 64-byte lines per row */
    size_t voff;
    int r, li; /* the next line to ask for: row r, line li */
};

static void dec_pf_init(struct dec_pf *pf, const struct eng_kv_view *kv, int g, int n_kv_heads,
                        int d, int k0, int nk) {
    const size_t esz = kv->dtype == ENG_DTYPE_BF16 ? 2 : 4;
    const char *base = (const char *)(const void *)kv->base;
    pf->n = nk > 0 ? nk : 0;
    pf->lines = (int)(((size_t)d * esz + 63) / 64);
    pf->voff = kv->v_offset * esz;
    pf->r = pf->li = 0;
    for (int j = 0; j < nk; j++) {
        pf->k[j] = base + kv_key_off(kv, k0 + j, n_kv_heads, d, g) * esz;
    }
}

/* Asks for the next line of the next item's keys, or of its values after dec_pf_values. */
static inline void dec_pf_step(struct dec_pf *pf) {
    if (pf->r < pf->n) {
        __builtin_prefetch(pf->k[pf->r] + (size_t)pf->li * 64, 0, 3);
        if (++pf->li == pf->lines) {
            pf->li = 0;
            pf->r++;
        }
    }
}

/* Points the walk at the value rows. */
static void dec_pf_values(struct dec_pf *pf) {
    for (int j = 0; j < pf->n; j++) {
        pf->k[j] += pf->voff;
    }
    pf->r = pf->li = 0;
}

/* The r consecutive elements x[0..r-1] (r = 2 or 4) in every group of r lanes: one 64- or
 * 128-bit broadcast load. */
static inline __attribute__((always_inline)) __m512 grp_bcast(const float *x, const int r) {
    if (r == 4) {
        return _mm512_broadcast_f32x4(_mm_loadu_ps(x));
    }
    double v;
    memcpy(&v, x, sizeof(v));
    return _mm512_castpd_ps(_mm512_set1_pd(v));
}

/* Lane groups per kv head of the decode kernel: 4 elements per head for groups of up to 4
 * heads (D a multiple of 16), else 2 (invariant 9). */
static int dec_r(int grp, int d) {
    return grp <= ATT_DEC_L / 4 && d % 16 == 0 ? 4 : 2;
}

/* Ot columns groups cg..cg+cb-1 (cb <= ATT_DEC_CB): Ot = alpha * Ot + sum_j v_j-groups * P[j].
 * Inlined with constant cb and r so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dec_pv_block(float *restrict ot, int cg, int cb,
                                                               __m512 alpha, const float *const *vp,
                                                               int nk, const float *restrict st,
                                                               struct dec_pf *pf, const int r) {
    __m512 acc[ATT_DEC_CB];
    for (int i = 0; i < cb; i++) {
        acc[i] = _mm512_mul_ps(alpha, _mm512_loadu_ps(ot + (size_t)(cg + i) * ATT_DEC_L));
    }
    for (int j = 0; j < nk; j++) {
        const __m512 p = _mm512_loadu_ps(st + (size_t)j * ATT_DEC_L);
        for (int t = 0; t < r; t++) {
            dec_pf_step(pf); /* a row's values have r lines per j and column block (f32) */
        }
        const float *vj = vp[j] + r * cg;
        /* Materialise vj: otherwise GCC keeps one index register per column group and spills. */
        __asm__("" : "+r"(vj));
#pragma GCC unroll 16
        for (int i = 0; i < cb; i++) {
            acc[i] = _mm512_fmadd_ps(grp_bcast(vj + r * i, r), p, acc[i]);
        }
    }
    for (int i = 0; i < cb; i++) {
        _mm512_storeu_ps(ot + (size_t)(cg + i) * ATT_DEC_L, acc[i]);
    }
}

/* Keys k0..k0+nk-1 (nk <= ATT_TK) of kv head g against the group's heads, Qt[D/r][16] (scaled
 * queries in lane groups of r, zero past the group): the online-softmax update of part (max,
 * sum, Ot). */
static inline __attribute__((always_inline)) void
dec_chunk(const float *qt, const struct eng_kv_view *kv, int g, int n_kv_heads, int d, int k0,
          int nk, float *sc, float *part, struct dec_pf *pf, const int r) {
    float *ot = part + 2 * ATT_DEC_L;
    const float *kp[ATT_TK], *vp[ATT_TK];
    float *st = dec_chunk_rows(kv, g, n_kv_heads, d, k0, nk, sc, kp, vp);
    const int dr = d / r;
    /* St[j][r h + e] = sum over c = e mod r of k_j[c] q_h[c]; adding the group's other lanes
     * gives the dot product k_j . q_h in all r lanes of head h, the layout PV multiplies by. */
    for (int j = 0; j < nk; j += ATT_DEC_KB) {
        __m512 acc[ATT_DEC_KB];
        for (int i = 0; i < ATT_DEC_KB; i++) {
            acc[i] = _mm512_setzero_ps();
        }
        for (int cr = 0; cr < dr; cr++) {
            for (int t = 0; t < r / 2; t++) {
                dec_pf_step(pf); /* 8 rows of D/16 lines (f32) per block of D/r steps */
            }
            const __m512 b = _mm512_loadu_ps(qt + (size_t)cr * ATT_DEC_L);
            for (int i = 0; i < ATT_DEC_KB; i++) {
                acc[i] = _mm512_fmadd_ps(grp_bcast(kp[j + i] + r * cr, r), b, acc[i]);
            }
        }
        for (int i = 0; i < ATT_DEC_KB; i++) {
            __m512 sv = _mm512_add_ps(acc[i], _mm512_permute_ps(acc[i], 0xB1));
            if (r == 4) {
                sv = _mm512_add_ps(sv, _mm512_permute_ps(sv, 0x4E));
            }
            _mm512_storeu_ps(st + (size_t)(j + i) * ATT_DEC_L, sv);
        }
    }
    dec_pf_values(pf);
    /* Online softmax per lane (all lanes of a head hold the same values). */
    const __m512 m = _mm512_loadu_ps(part), l = _mm512_loadu_ps(part + ATT_DEC_L);
    __m512 m_new = m;
    for (int j = 0; j < nk; j++) {
        m_new = _mm512_max_ps(m_new, _mm512_loadu_ps(st + (size_t)j * ATT_DEC_L));
    }
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < nk; j++) {
        float *sj = st + (size_t)j * ATT_DEC_L;
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sj), m_new));
        _mm512_storeu_ps(sj, e);
        sum = _mm512_add_ps(sum, e);
    }
    /* The first chunk: m is -inf and exp512 clamps to ~1e-38, which scales zeros. */
    const __m512 alpha = exp512(_mm512_sub_ps(m, m_new));
    _mm512_storeu_ps(part, m_new);
    _mm512_storeu_ps(part + ATT_DEC_L, _mm512_fmadd_ps(l, alpha, sum));
    /* Ot[cr][r h + e] = alpha * Ot + sum_j v_j[r cr + e] * P[j][h], ATT_DEC_CB groups at a time
     * (D / r is a multiple of 4: D a multiple of 8, of 16 for r = 4). */
    int cg = 0;
    for (; cg + ATT_DEC_CB <= dr; cg += ATT_DEC_CB) {
        dec_pv_block(ot, cg, ATT_DEC_CB, alpha, vp, nk, st, pf, r);
    }
    for (; cg < dr; cg += 4) {
        dec_pv_block(ot, cg, 4, alpha, vp, nk, st, pf, r);
    }
}

/* dec_chunk's two instantiations: pair layout (groups of 5-8 heads) and quad layout (3-4). */
static void attend_dec_chunk(const float *qt, const struct eng_kv_view *kv, int g, int n_kv_heads,
                             int d, int k0, int nk, float *sc, float *part, struct dec_pf *pf,
                             int r) {
    if (r == 4) {
        dec_chunk(qt, kv, g, n_kv_heads, d, k0, nk, sc, part, pf, 4);
    } else {
        dec_chunk(qt, kv, g, n_kv_heads, d, k0, nk, sc, part, pf, 2);
    }
}

/* The sums of 16 vectors, lane i holding the sum of a[i]: interleave and add pairs of
 * lanes, of 64-bit halves, then of 128-bit quarters twice (45 operations for 16 keys). */
static inline __m512 sum16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++) {
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    }
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) {
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    }
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88),
                         _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

/* One head of the MHA kernel over keys 0..nk-1 of a chunk (rows kp/vp, keys past nk point at
 * zeros): scores of 16 keys at a time as 16 dot products reduced together (sum16), the
 * online-softmax update of (m, l) in lanes 2h and 2h + 1 of part, and O[D] += sum_j p_j v_j
 * with O in registers. DC = D / 16 is a constant of the instantiation. */
static inline __attribute__((always_inline)) void
mha_head(const float *restrict qh, const float *const *kp, const float *const *vp, int nk,
         float *restrict st, float *part, int h, float *restrict o, struct dec_pf *pf,
         const int dc) {
    __m512 q[8];
    for (int c = 0; c < dc; c++) {
        q[c] = _mm512_loadu_ps(qh + 16 * c);
    }
    for (int j = 0; j < nk; j += 16) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            const float *k = kp[j + i];
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(k), q[0]);
            for (int c = 1; c < dc; c++) {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(k + 16 * c), q[c], a);
            }
            acc[i] = a;
            for (int t = 0; t < pf->lines; t++) {
                dec_pf_step(pf); /* a key row's lines for a key row's dot product */
            }
        }
        _mm512_storeu_ps(st + j, sum16(acc));
    }
    dec_pf_values(pf);
    const float m = part[2 * h], l = part[ATT_DEC_L + 2 * h];
    __m512 bm = _mm512_set1_ps(m);
    for (int j = 0; j < nk; j += 16) {
        bm = _mm512_mask_max_ps(bm, tail_mask(nk - j), bm, _mm512_loadu_ps(st + j));
    }
    const float m_new = _mm512_reduce_max_ps(bm);
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < nk; j += 16) {
        const __mmask16 k = tail_mask(nk - j);
        const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_loadu_ps(st + j), mv)));
        _mm512_storeu_ps(st + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    /* The first chunk: m is -inf and exp512 clamps to ~1e-38, which scales zeros. */
    const float alpha = _mm512_cvtss_f32(exp512(_mm512_set1_ps(m - m_new)));
    const float l_new = l * alpha + _mm512_reduce_add_ps(sum);
    part[2 * h] = part[2 * h + 1] = m_new;
    part[ATT_DEC_L + 2 * h] = part[ATT_DEC_L + 2 * h + 1] = l_new;
    __m512 acc[8];
    const __m512 av = _mm512_set1_ps(alpha);
    for (int c = 0; c < dc; c++) {
        acc[c] = _mm512_mul_ps(av, _mm512_loadu_ps(o + 16 * c));
    }
    for (int j = 0; j < nk; j++) {
        const __m512 pj = _mm512_set1_ps(st[j]);
        const float *v = vp[j];
        for (int c = 0; c < dc; c++) {
            acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * c), pj, acc[c]);
        }
        for (int t = 0; t < pf->lines; t++) {
            dec_pf_step(pf);
        }
    }
    for (int c = 0; c < dc; c++) {
        _mm512_storeu_ps(o + 16 * c, acc[c]);
    }
}

/* Keys k0..k0+nk-1 of kv head g for its 1 or 2 query heads (MHA and groups of 2, D a multiple of 16
 * up to 128): the queries scaled in q[grp][D], the partial as (m, l) per lane pair 2h, 2h + 1, then
 * O[grp][D] (invariant 10). */
static void attend_mha_chunk(const float *q, const struct eng_kv_view *kv, int g, int grp,
                             int n_kv_heads, int d, int k0, int nk, float *sc, float *part,
                             struct dec_pf *pf) {
    const float *kp[ATT_TK], *vp[ATT_TK];
    float *st = dec_chunk_rows(kv, g, n_kv_heads, d, k0, nk, sc, kp, vp);
    struct dec_pf none = {.n = 0, .lines = 0};
    for (int h = 0; h < grp; h++) {
        /* The first head's loops ask for the next item's rows (keys, then values). */
        struct dec_pf *w = h == 0 ? pf : &none;
        const float *qh = q + (size_t)h * (size_t)d;
        float *o = part + 2 * ATT_DEC_L + (size_t)h * (size_t)d;
        /* One instantiation per D / 16, so its loops unroll and stay in registers. */
#define MHA_HEAD(dc)                                                                               \
    case dc:                                                                                       \
        mha_head(qh, kp, vp, nk, st, part, h, o, w, dc);                                           \
        break
        switch (d / 16) {
            MHA_HEAD(1);
            MHA_HEAD(2);
            MHA_HEAD(3);
            MHA_HEAD(4);
            MHA_HEAD(5);
            MHA_HEAD(6);
            MHA_HEAD(7);
        default:
            mha_head(qh, kp, vp, nk, st, part, h, o, w, 8);
        }
#undef MHA_HEAD
    }
}

/* The MHA kernel's partials of one kv head, one per split, into out[grp][D]: weights
 * exp(m_s - max), an empty split (m_s = -inf) none. */
static void merge_mha(const float *pg, int splits, size_t pf, int grp, int d, float *out) {
    for (int h = 0; h < grp; h++) {
        float mx = -INFINITY;
        for (int s = 0; s < splits; s++) {
            mx = fmaxf(mx, pg[(size_t)s * pf + 2 * (size_t)h]);
        }
        float w[ATT_DEC_MAX_SPLITS], total = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float *ps = pg + (size_t)s * pf;
            w[s] = ps[2 * h] == -INFINITY ? 0.0f : expf(ps[2 * h] - mx);
            total += w[s] * ps[ATT_DEC_L + 2 * h];
        }
        const __m512 inv = _mm512_set1_ps(1.0f / total);
        float *o = out + (size_t)h * (size_t)d;
        for (int c = 0; c < d; c += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (int s = 0; s < splits; s++) {
                const float *os = pg + (size_t)s * pf + 2 * ATT_DEC_L + (size_t)h * (size_t)d;
                acc = _mm512_fmadd_ps(_mm512_set1_ps(w[s]), _mm512_loadu_ps(os + c), acc);
            }
            _mm512_storeu_ps(o + c, _mm512_mul_ps(acc, inv));
        }
    }
}

/* One query row at position pos0 (keys 0..pos0) of GQA groups of 3..8 heads, D a multiple of
 * 8: the context is split into key ranges handed out to the team, each range attended by all
 * kv heads chunk by chunk (prefetching the next chunk), then one merge per kv head. */
/* One attention_decode call, for decode_items. */
struct dec_call {
    const struct eng_kv_view *kv;
    int n_kv_heads, d, grp, r;
    bool mha;
    int n_keys, splits, span; /* the context's splits of span keys (the last may be shorter) */
    size_t pf, per_thread;    /* floats of a partial, of a thread's scratch slice */
    float *scratch, *parts;   /* the per-thread slices; the (kv head, split) partials */
    const float *qts;         /* each kv head's packed queries */
    float *out;
};

/* The ranges and the merge of an attention_decode call, shared by the calling thread's team,
 * or run by the calling thread alone outside any parallel region (invariant 5). */
static void decode_items(const struct dec_call *c) {
    const struct eng_kv_view *kv = c->kv;
    const int n_kv_heads = c->n_kv_heads, d = c->d, d2 = d / 2, grp = c->grp, r = c->r;
    const int n_keys = c->n_keys, splits = c->splits, span = c->span;
    const bool mha = c->mha;
    const size_t pf = c->pf;
    float *parts = c->parts, *out = c->out;
    const float *qts = c->qts;
    float *sc = c->scratch + (size_t)team_thread() * c->per_thread;
    struct dec_pf next;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int s = 0; s < splits; s++) {
        const int k_lo = s * span, k_hi = k_lo + span < n_keys ? k_lo + span : n_keys;
        for (int g = 0; g < n_kv_heads; g++) {
            float *part = parts + ((size_t)g * (size_t)splits + (size_t)s) * pf;
            for (int lane = 0; lane < ATT_DEC_L; lane++) {
                part[lane] = -INFINITY; /* an empty split weighs nothing in the merge */
                part[ATT_DEC_L + lane] = 0.0f;
            }
            memset(part + 2 * ATT_DEC_L, 0, (size_t)d2 * ATT_DEC_L * sizeof(float));
        }
        memset(dec_zeros(sc, d), 0, (size_t)d * sizeof(float));
        for (int k0 = k_lo; k0 < k_hi; k0 += ATT_TK) {
            const int nk = k_hi - k0 < ATT_TK ? k_hi - k0 : ATT_TK;
            for (int g = 0; g < n_kv_heads; g++) {
                /* The next item: kv head g + 1 of this chunk, else head 0 of the next chunk
                 * of the range (no rows past the range's end). */
                const bool same = g + 1 < n_kv_heads;
                const int k_next = same ? k0 : k0 + nk;
                const int n_next = same ? nk : k_hi - k_next < ATT_TK ? k_hi - k_next : ATT_TK;
                dec_pf_init(&next, kv, same ? g + 1 : 0, n_kv_heads, d, k_next, n_next);
                const float *qt = qts + (size_t)g * (size_t)d2 * ATT_DEC_L;
                float *part = parts + ((size_t)g * (size_t)splits + (size_t)s) * pf;
                if (mha) {
                    attend_mha_chunk(qt, kv, g, grp, n_kv_heads, d, k0, nk, sc, part, &next);
                } else {
                    attend_dec_chunk(qt, kv, g, n_kv_heads, d, k0, nk, sc, part, &next, r);
                }
            }
        }
    }
    /* Merge, all lanes of a kv head at once: weights exp(max_s - max) (an empty split's
     * -inf max weighs ~1e-38 against its zero sum and Ot2), then each group of r lanes is
     * a head's r interleaved columns. */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int g = 0; g < n_kv_heads; g++) {
        const float *pg = parts + (size_t)g * (size_t)splits * pf;
        if (mha) {
            merge_mha(pg, splits, pf, grp, d, out + (size_t)g * (size_t)grp * (size_t)d);
            continue;
        }
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int s = 0; s < splits; s++) {
            mx = _mm512_max_ps(mx, _mm512_loadu_ps(pg + (size_t)s * pf));
        }
        __m512 w[ATT_DEC_MAX_SPLITS];
        __m512 total = _mm512_setzero_ps();
        for (int s = 0; s < splits; s++) {
            const float *ps = pg + (size_t)s * pf;
            w[s] = exp512(_mm512_sub_ps(_mm512_loadu_ps(ps), mx));
            total = _mm512_fmadd_ps(w[s], _mm512_loadu_ps(ps + ATT_DEC_L), total);
        }
        const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), total);
        float *og = out + (size_t)g * (size_t)grp * (size_t)d;
        for (int cr = 0; cr < d / r; cr++) {
            __m512 acc = _mm512_setzero_ps();
            for (int s = 0; s < splits; s++) {
                acc = _mm512_fmadd_ps(
                    w[s],
                    _mm512_loadu_ps(pg + (size_t)s * pf + 2 * ATT_DEC_L + (size_t)cr * ATT_DEC_L),
                    acc);
            }
            float o2[ATT_DEC_L];
            _mm512_storeu_ps(o2, _mm512_mul_ps(acc, inv));
            for (int h = 0; h < grp; h++) {
                memcpy(og + (size_t)h * (size_t)d + (size_t)r * (size_t)cr, o2 + r * h,
                       (size_t)r * sizeof(float));
            }
        }
    }
}

static void attention_decode(const float *q, int pos0, const struct eng_kv_view *kv, int n_heads,
                             int n_kv_heads, int d, float scale, float *out, float *scratch,
                             size_t per_thread, int threads) {
    const int grp = n_heads / n_kv_heads, n_keys = pos0 + 1, d2 = d / 2;
    const int splits = dec_splits(n_keys, threads);
    const int span = ((n_keys + splits - 1) / splits + 15) / 16 * 16;
    const size_t pf = dec_part_floats(d);
    float *parts = scratch + (size_t)threads * per_thread;             /* [Hkv][splits] */
    float *qts = parts + (size_t)n_kv_heads * ATT_DEC_MAX_SPLITS * pf; /* [Hkv][D/2][16] */
    const bool mha = grp < ATT_TILE_MIN_GRP;
    const int r = dec_r(grp, d);
    /* Every kv head's group of queries, scaled: for the decode kernel in lane groups of r (zero
     * past the group), for the MHA kernel as they come, [grp][D]. */
    for (int g = 0; g < n_kv_heads; g++) {
        const float *qg = q + (size_t)g * (size_t)grp * (size_t)d;
        float *qt = qts + (size_t)g * (size_t)d2 * ATT_DEC_L;
        if (mha) {
            memcpy(qt, qg, (size_t)grp * (size_t)d * sizeof(float));
            scal(qt, scale, grp * d);
            continue;
        }
        for (int cr = 0; cr < d / r; cr++) {
            for (int lane = 0; lane < ATT_DEC_L; lane++) {
                const int h = lane / r, c = r * cr + lane % r;
                qt[(size_t)cr * ATT_DEC_L + (size_t)lane] =
                    h < grp ? qg[(size_t)h * (size_t)d + (size_t)c] * scale : 0.0f;
            }
        }
    }
    const size_t work = (size_t)n_keys * (size_t)n_heads * (size_t)d;
    const struct dec_call call = {.kv = kv,
                                  .n_kv_heads = n_kv_heads,
                                  .d = d,
                                  .grp = grp,
                                  .r = r,
                                  .mha = mha,
                                  .n_keys = n_keys,
                                  .splits = splits,
                                  .span = span,
                                  .pf = pf,
                                  .per_thread = per_thread,
                                  .scratch = scratch,
                                  .parts = parts,
                                  .qts = qts,
                                  .out = out};
    ENG_ON_TEAM(splits > 1 && work >= ATT_PAR_MIN, decode_items(&call));
}
#endif

/* ---- entry points ---- */

static size_t thread_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim) {
    const struct att_tile tg = att_tile_of(n_heads / n_kv_heads, head_dim);
    size_t most = row_thread_floats(n_ctx);
    const size_t tiles = tile_thread_floats(&tg);
    most = tiles > most ? tiles : most;
#if defined(__AVX512F__)
    const size_t dec = dec_thread_floats(head_dim);
    most = dec > most ? dec : most;
#endif
    return most;
}

#if defined(__AVX512F__)
/* Whether one query row takes the decode path (invariant 9). */
static bool decode_path(int n, int n_heads, int n_kv_heads, int head_dim) {
    const int grp = n_heads / n_kv_heads;
    return n == 1 && grp <= ATT_DEC_W &&
           (grp >= ATT_TILE_MIN_GRP ? head_dim % 8 == 0
                                    : head_dim % 16 == 0 && head_dim <= ATT_MHA_MAX_D);
}
#endif

size_t eng_attention_scratch_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim,
                                    int n_threads) {
    KC_ASSERT(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0);
    const int threads = n_threads > 0 ? n_threads : 1;
    size_t floats = (size_t)threads * thread_floats(n_ctx, n_heads, n_kv_heads, head_dim);
#if defined(__AVX512F__)
    floats += dec_shared_floats(n_kv_heads, head_dim);
#endif
    return floats;
}

static void check_args(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                       int n_kv_heads, int head_dim, const float *out, const float *scratch) {
    KC_ASSERT(q != NULL && kv != NULL && out != NULL && scratch != NULL);
    KC_ASSERT(n >= 0 && pos0 >= 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0);
    KC_ASSERT(n_heads % n_kv_heads == 0 && kv->block_size > 0);
}

/* ---- bf16 tile path (the bf16 prefill; invariant 8) ---- */

#if defined(__AVX512F__)
/* Compiled for avx512_bf16 in every AVX-512 build, run only where eng_bf16_dot() says so. */
#if !defined(__AVX512BF16__) && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512bf16"))), apply_to = function)
#define ATT_BF16_POP _Pragma("clang attribute pop")
#elif !defined(__AVX512BF16__)
#pragma GCC push_options
#pragma GCC target("avx512bf16")
#define ATT_BF16_POP _Pragma("GCC pop_options")
#else
#define ATT_BF16_POP
#endif
/* 16 bf16 of row a and 16 of row b interleaved into 16 pairs (a low, b high): lane c holds
 * (a[c], b[c]), the operand layout of vdpbf16ps. */
static inline __m512i bf16_pairs(__m256i a, __m256i b) {
    return _mm512_or_si512(_mm512_cvtepu16_epi32(a),
                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

/* The first min(n, 16) elements of a cache row (f32 rounded to bf16, or bf16 as they are),
 * zero past n. */
static inline __m256i kv_row16(const struct eng_kv_view *kv, size_t off, int n) {
    const __mmask16 k = tail_mask(n);
    if (kv->dtype == ENG_DTYPE_BF16) {
        return _mm256_maskz_loadu_epi16(k, kv->base16 + off);
    }
    return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, kv->base + off));
}

/* Packs kv head g's keys and values of positions [t0, t0 + ATT_TK) (zero from n_keys on):
 * kb[t][D/2] holds key t's pairs (k[2p], k[2p+1]); vp[t/2][D] holds value pairs
 * (v_t[c], v_{t+1}[c]) for even t. */
static void pack_kv_block(const struct eng_kv_view *kv, int g, int n_kv_heads, int d, int t0,
                          int n_keys, uint32_t *restrict kb, uint32_t *restrict vp) {
    const int hd = d / 2;
    for (int t = t0; t < t0 + ATT_TK; t++) {
        uint32_t *kr = kb + (size_t)t * (size_t)hd;
        if (t >= n_keys) {
            memset(kr, 0, (size_t)hd * sizeof(uint32_t));
            continue;
        }
        const size_t off = kv_key_off(kv, t, n_kv_heads, d, g);
        for (int c = 0; c < d; c += 16) {
            /* 16 bf16 = 8 pairs, in memory order. */
            _mm256_mask_storeu_epi16((uint16_t *)(void *)kr + c, tail_mask(d - c),
                                     kv_row16(kv, off + (size_t)c, d - c));
        }
    }
    for (int t = t0; t < t0 + ATT_TK; t += 2) {
        uint32_t *vr = vp + (size_t)(t / 2) * (size_t)d;
        const size_t oa = t < n_keys ? kv_key_off(kv, t, n_kv_heads, d, g) + kv->v_offset : 0;
        const size_t ob =
            t + 1 < n_keys ? kv_key_off(kv, t + 1, n_kv_heads, d, g) + kv->v_offset : 0;
        for (int c = 0; c < d; c += 16) {
            const __m256i a =
                t < n_keys ? kv_row16(kv, oa + (size_t)c, d - c) : _mm256_setzero_si256();
            const __m256i b =
                t + 1 < n_keys ? kv_row16(kv, ob + (size_t)c, d - c) : _mm256_setzero_si256();
            _mm512_mask_storeu_epi32(vr + c, tail_mask(d - c), bf16_pairs(a, b));
        }
    }
}

/* St[j][r0..r0+16*NV) = sum_p kb_j[p] . Qt2[p][r0..] for 4 keys j0..j0+3 (pairs of products
 * per vdpbf16ps, f32 accumulation). */
static inline __attribute__((always_inline)) void qk_block_bf16(const uint32_t *restrict kb,
                                                                const uint32_t *restrict qt, int ld,
                                                                int hd, int r0, float *restrict st,
                                                                const int nv) {
    __m512 acc[4][ATT_NV];
    for (int i = 0; i < 4; i++) {
        for (int v = 0; v < nv; v++) {
            acc[i][v] = _mm512_setzero_ps();
        }
    }
    const uint32_t *k0 = kb, *k1 = kb + hd, *k2 = kb + 2 * hd, *k3 = kb + 3 * hd;
    for (int p = 0; p < hd; p++) {
        const uint32_t *qp = qt + (size_t)p * (size_t)ld + (size_t)r0;
        __m512i b[ATT_NV];
        for (int v = 0; v < nv; v++) {
            b[v] = _mm512_loadu_si512(qp + 16 * v);
            ATT_IN_REG(b[v]);
        }
        const __m512bh a0 = (__m512bh)_mm512_set1_epi32((int)k0[p]);
        const __m512bh a1 = (__m512bh)_mm512_set1_epi32((int)k1[p]);
        const __m512bh a2 = (__m512bh)_mm512_set1_epi32((int)k2[p]);
        const __m512bh a3 = (__m512bh)_mm512_set1_epi32((int)k3[p]);
        for (int v = 0; v < nv; v++) {
            acc[0][v] = _mm512_dpbf16_ps(acc[0][v], a0, (__m512bh)b[v]);
            acc[1][v] = _mm512_dpbf16_ps(acc[1][v], a1, (__m512bh)b[v]);
            acc[2][v] = _mm512_dpbf16_ps(acc[2][v], a2, (__m512bh)b[v]);
            acc[3][v] = _mm512_dpbf16_ps(acc[3][v], a3, (__m512bh)b[v]);
        }
    }
    for (int i = 0; i < 4; i++) {
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(st + (size_t)i * (size_t)ld + (size_t)(r0 + 16 * v), acc[i][v]);
        }
    }
}

/* Ot[c0..c0+CB)[r0..r0+16*NV) = alpha * Ot + sum_jp vp[jp][c] . P2[jp][r0..] over key pairs. */
static inline __attribute__((always_inline)) void
pv_block_bf16(const uint32_t *restrict vp, int nkp, const uint32_t *restrict p2, int ld, int d,
              int c0, int r0, const float *restrict alpha, float *restrict ot, const int cb,
              const int nv) {
    __m512 acc[4][ATT_NV];
    for (int v = 0; v < nv; v++) {
        const __m512 al = _mm512_loadu_ps(alpha + r0 + 16 * v);
        for (int i = 0; i < cb; i++) {
            acc[i][v] = _mm512_mul_ps(
                al, _mm512_loadu_ps(ot + (size_t)(c0 + i) * (size_t)ld + (size_t)(r0 + 16 * v)));
        }
    }
    for (int jp = 0; jp < nkp; jp++) {
        const uint32_t *pj = p2 + (size_t)jp * (size_t)ld + (size_t)r0;
        const uint32_t *vj = vp + (size_t)jp * (size_t)d + (size_t)c0;
        __m512i b[ATT_NV];
        for (int v = 0; v < nv; v++) {
            b[v] = _mm512_loadu_si512(pj + 16 * v);
            ATT_IN_REG(b[v]);
        }
        for (int i = 0; i < cb; i++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)vj[i]);
            for (int v = 0; v < nv; v++) {
                acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, (__m512bh)b[v]);
            }
        }
    }
    for (int i = 0; i < cb; i++) {
        for (int v = 0; v < nv; v++) {
            _mm512_storeu_ps(ot + (size_t)(c0 + i) * (size_t)ld + (size_t)(r0 + 16 * v), acc[i][v]);
        }
    }
}

/* P2[jp][r] = (P[2jp][r], P[2jp+1][r]) rounded to bf16 for jp < ceil(nk / 2); a missing odd
 * key is zero. */
static void pack_p(const float *restrict st, int nk, int rp, uint32_t *restrict p2) {
    /* cvtne2ps puts b's 16 bf16 in the high half: interleave to pairs (a[i], b[i]). */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                         8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int j = 0; j < nk; j += 2) {
        const float *s0 = st + (size_t)j * (size_t)rp;
        const float *s1 = s0 + rp;
        uint32_t *dst = p2 + (size_t)(j / 2) * (size_t)rp;
        for (int r = 0; r < rp; r += 16) {
            const __m512 a = _mm512_loadu_ps(s0 + r);
            const __m512 b = j + 1 < nk ? _mm512_loadu_ps(s1 + r) : _mm512_setzero_ps();
            const __m512i x = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            _mm512_storeu_si512(dst + r, _mm512_permutexvar_epi16(idx, x));
        }
    }
}

static void tile_qk_bf16(const uint32_t *kb, int nk, const uint32_t *restrict qt, int rp, int d,
                         float *restrict st) {
    const int hd = d / 2;
    for (int r0 = 0; r0 < rp; r0 += 16 * ATT_NV) {
        const int nv = (rp - r0) / 16 < ATT_NV ? (rp - r0) / 16 : ATT_NV;
        for (int j = 0; j < nk; j += 4) {
#define ATT_QK(NV)                                                                                 \
    qk_block_bf16(kb + (size_t)j * (size_t)hd, qt, rp, hd, r0, st + (size_t)j * (size_t)rp, NV)
            ATT_NV_CASES(ATT_QK)
#undef ATT_QK
        }
    }
}

static void tile_pv_bf16(const uint32_t *vp, int nk, const uint32_t *restrict p2, int rp, int d,
                         const float *restrict alpha, float *restrict ot) {
    const int nkp = (nk + 1) / 2;
    for (int r0 = 0; r0 < rp; r0 += 16 * ATT_NV) {
        const int nv = (rp - r0) / 16 < ATT_NV ? (rp - r0) / 16 : ATT_NV;
        int c0 = 0;
        for (; c0 + 4 <= d; c0 += 4) {
#define ATT_PV(NV) pv_block_bf16(vp, nkp, p2, rp, d, c0, r0, alpha, ot, 4, NV)
            ATT_NV_CASES(ATT_PV)
#undef ATT_PV
        }
        for (; c0 < d; c0++) {
#define ATT_PV1(NV) pv_block_bf16(vp, nkp, p2, rp, d, c0, r0, alpha, ot, 1, NV)
            ATT_NV_CASES(ATT_PV1)
#undef ATT_PV1
        }
    }
}

/* Per-thread scratch of the bf16 tile path: Qt2[D/2][rp] (scaled query pairs), Ot[D][rp],
 * St[TK][rp], P2[TK/2][rp], max, sum, rescale and query position [rp] each. */
static size_t tile16_thread_floats(const struct att_tile *t) {
    const size_t rp = (size_t)t->rp, d = (size_t)t->d;
    return up16(rp * (d / 2)) + up16(rp * d) + up16(ATT_TK * rp) + up16(ATT_TK / 2 * rp) + 4 * rp;
}

/* Packed keys and values of all kv heads for n_ctx positions: Kb and Vp (pack_kv_block). */
static size_t kv16_floats(int n_ctx, int n_kv_heads, int d) {
    const size_t tp = (size_t)(n_ctx + ATT_TK - 1) / ATT_TK * ATT_TK;
    return (size_t)n_kv_heads * tp * (size_t)d; /* (D/2 + D/2) uint32 per position */
}

/* One work item of the bf16 path: query rows i0..i0+nq-1 of kv head g against its packed
 * keys kb [Tp][D/2] and values vp [Tp/2][D]. */
static void attend_tile_bf16(const float *q, int i0, int nq, int pos0, const uint32_t *kb,
                             const uint32_t *vp, int g, int n_heads, int n_kv_heads, float scale,
                             const struct att_tile *tg, uint16_t *out, float *sc) {
    (void)n_kv_heads;
    const int grp = n_heads / n_kv_heads, d = tg->d, hd = d / 2;
    const int rows = nq * grp, rp = (int)up16((size_t)rows);
    const size_t frp = (size_t)tg->rp;
    uint32_t *qt = (uint32_t *)(void *)sc;
    float *ot = sc + up16(frp * (size_t)hd);
    float *st = ot + up16(frp * (size_t)d);
    uint32_t *p2 = (uint32_t *)(void *)(st + up16(ATT_TK * frp));
    float *mx = (float *)(void *)(p2 + up16(ATT_TK / 2 * frp));
    float *sum = mx + frp;
    float *alpha = sum + frp;
    int32_t *qpos = (int32_t *)(void *)(alpha + frp);
    const int first = pos0 + i0, last = pos0 + i0 + nq - 1;
    for (int i = 0; i < nq; i++) {
        const float *src =
            q + ((size_t)(i0 + i) * (size_t)n_heads + (size_t)g * (size_t)grp) * (size_t)d;
        for (int h = 0; h < grp; h++) {
            const int r = i * grp + h;
            const float *qh = src + (size_t)h * (size_t)d;
            for (int p = 0; p < hd; p++) {
                qt[(size_t)p * (size_t)rp + (size_t)r] =
                    (uint32_t)eng_f32_to_bf16(qh[2 * p] * scale) |
                    (uint32_t)eng_f32_to_bf16(qh[2 * p + 1] * scale) << 16;
            }
            qpos[r] = first + i;
        }
    }
    for (int r = rows; r < rp; r++) {
        for (int p = 0; p < hd; p++) {
            qt[(size_t)p * (size_t)rp + (size_t)r] = 0;
        }
        qpos[r] = last;
    }
    memset(ot, 0, (size_t)rp * (size_t)d * sizeof(float));
    for (int r = 0; r < rp; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    for (int k0 = 0; k0 <= last; k0 += ATT_TK) {
        const int nk = last + 1 - k0 < ATT_TK ? last + 1 - k0 : ATT_TK;
        /* Keys past nk up to the 4-key block are zero rows of the packed block. */
        tile_qk_bf16(kb + (size_t)k0 * (size_t)hd, nk, qt, rp, d, st);
        tile_softmax(st, nk, k0, k0 + nk - 1 > first, rp, qpos, mx, sum, alpha);
        pack_p(st, nk, rp, p2);
        tile_pv_bf16(vp + (size_t)(k0 / 2) * (size_t)d, nk, p2, rp, d, alpha, ot);
    }
    for (int r = 0; r < rows; r++) {
        const int i = r / grp, h = r % grp;
        uint16_t *dst =
            out + ((size_t)(i0 + i) * (size_t)n_heads + (size_t)(g * grp + h)) * (size_t)d;
        const float inv = 1.0f / sum[r];
        for (int c = 0; c < d; c++) {
            dst[c] = eng_f32_to_bf16(ot[(size_t)c * (size_t)rp + (size_t)r] * inv);
        }
    }
}

/* The packing and the (tile, kv head) items of attention_tiles_bf16, as rows_items. */
static void tile16_items(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                         int n_kv_heads, int d, float scale, uint16_t *out, float *scratch) {
    const int grp = n_heads / n_kv_heads, n_keys = pos0 + n;
    const struct att_tile tg = att_tile_of(grp, d);
    const int n_tiles = (n + tg.tq - 1) / tg.tq;
    const long items = (long)n_tiles * n_kv_heads;
    const size_t tp = (size_t)(n_keys + ATT_TK - 1) / ATT_TK * ATT_TK;
    const size_t head16 = tp * (size_t)d / 2; /* uint32 of one kv head's Kb (and of its Vp) */
    uint32_t *kb = (uint32_t *)(void *)scratch;
    uint32_t *vp = kb + (size_t)n_kv_heads * head16;
    float *thr = scratch + up16(kv16_floats(n_keys, n_kv_heads, d));
    const size_t per_thread = tile16_thread_floats(&tg);
    const long blocks = (long)(tp / ATT_TK) * n_kv_heads;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (long b = 0; b < blocks; b++) {
        const int g = (int)(b % n_kv_heads), t0 = (int)(b / n_kv_heads) * ATT_TK;
        pack_kv_block(kv, g, n_kv_heads, d, t0, n_keys, kb + (size_t)g * head16,
                      vp + (size_t)g * head16);
    }
    float *sc = thr + (size_t)team_thread() * per_thread;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (long it = 0; it < items; it++) {
        const int t = n_tiles - 1 - (int)(it / n_kv_heads);
        const int g = (int)(it % n_kv_heads);
        const int i0 = t * tg.tq, nq = n - i0 < tg.tq ? n - i0 : tg.tq;
        attend_tile_bf16(q, i0, nq, pos0, kb + (size_t)g * head16, vp + (size_t)g * head16, g,
                         n_heads, n_kv_heads, scale, &tg, out, sc);
    }
}

static void attention_tiles_bf16(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                                 int n_heads, int n_kv_heads, int d, float scale, uint16_t *out,
                                 float *scratch) {
    const struct att_tile tg = att_tile_of(n_heads / n_kv_heads, d);
    const long items = (long)((n + tg.tq - 1) / tg.tq) * n_kv_heads;
    const size_t work = (size_t)n * (size_t)(pos0 + n) * (size_t)n_heads * (size_t)d;
    ENG_ON_TEAM(items > 1 && work >= ATT_PAR_MIN,
                tile16_items(q, n, pos0, kv, n_heads, n_kv_heads, d, scale, out, scratch));
}
ATT_BF16_POP
#endif /* __AVX512F__ */

size_t eng_attention_bf16_scratch_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim,
                                         int n_threads) {
    KC_ASSERT(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0);
    const size_t thr = (size_t)(n_threads > 0 ? n_threads : 1);
    const size_t f32 = thr * thread_floats(n_ctx, n_heads, n_kv_heads, head_dim);
#if defined(__AVX512F__)
    const struct att_tile tg = att_tile_of(n_heads / n_kv_heads, head_dim);
    const size_t bf =
        up16(kv16_floats(n_ctx, n_kv_heads, head_dim)) + thr * tile16_thread_floats(&tg);
    return bf > f32 ? bf : f32;
#else
    return f32;
#endif
}

void eng_attention_bf16(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                        int n_kv_heads, int head_dim, float scale, uint16_t *out, float *scratch) {
    check_args(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, (const float *)(const void *)out,
               scratch);
    KC_ASSERT(head_dim % 2 == 0);
#if defined(__AVX512F__)
    if (n >= ATT_BF16_MIN_N && eng_bf16_dot()) {
        attention_tiles_bf16(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch);
        return;
    }
#endif
    /* A few rows (or no avx512_bf16): the f32 tile kernel, rounding its output (invariant 8). */
    attention_tiles(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, NULL, out, scratch,
                    thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim));
}

void eng_attention(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                   int n_kv_heads, int head_dim, float scale, float *out, float *scratch) {
    check_args(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, out, scratch);
    const size_t per_thread = thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim);
#if defined(__AVX512F__)
    if (decode_path(n, n_heads, n_kv_heads, head_dim)) {
        attention_decode(q, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                         per_thread, team_size());
        return;
    }
#endif
    if (n < ATT_TILE_MIN_N && n_heads / n_kv_heads < ATT_TILE_MIN_GRP) {
        attention_rows(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, scratch,
                       per_thread);
    } else {
        attention_tiles(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, NULL, scratch,
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
    attention_tiles(q, n, pos0, kv, n_heads, n_kv_heads, head_dim, scale, out, NULL, scratch,
                    thread_floats(pos0 + n, n_heads, n_kv_heads, head_dim));
}

/* Element i of the view's slab as f32, for the twin. */
static float kv_elem(const struct eng_kv_view *kv, size_t i) {
    return kv->dtype == ENG_DTYPE_BF16 ? eng_bf16_to_f32(kv->base16[i]) : kv->base[i];
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
                const size_t ko = kv_key_off(kv, t, n_kv_heads, d, g);
                float s = 0.0f;
                for (int j = 0; j < d; j++) {
                    s += qh[j] * kv_elem(kv, ko + (size_t)j);
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
                const size_t vo = kv_key_off(kv, t, n_kv_heads, d, g) + kv->v_offset;
                for (int j = 0; j < d; j++) {
                    oh[j] += scratch[t] * kv_elem(kv, vo + (size_t)j);
                }
            }
            for (int j = 0; j < d; j++) {
                oh[j] /= sum;
            }
        }
    }
}
