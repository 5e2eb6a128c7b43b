/*
 * ops.h — the engine's compute kernels: linear layers on oneDNN matmul primitives, and the
 * attention and element-wise kernels in C. Every fast kernel has a plain `_ref` twin that
 * tests compare against (printing maxdiff).
 *
 * Place in the data flow: engine/model.c (and the predictor in kvp.c) call these for every
 * layer of every forward step.
 * This header keeps oneDNN types opaque: only the engine's oneDNN files (ops_dnnl.c,
 * ops_gram.c, probe.c) include dnnl.h. The `kvcast bench` measurements are in probe.h.
 *
 * Shape legend: M rows (tokens in a step), T tokens of one sequence, H query heads,
 * Hkv kv heads, D head dim, C model dim, F ffn dim, V vocab, N/K a linear's out/in size.
 *
 * Thread rules: a `struct eng_dnn` (oneDNN engine + stream + primitive cache + scratchpad)
 * belongs to one thread; create one per worker. A `struct eng_linear` (packed weights) is
 * immutable after creation and shared by all threads. Kernels allocate nothing, take no
 * locks, log nothing and return nothing; preconditions are asserts.
 */
#ifndef ENG_OPS_H
#define ENG_OPS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/io/dtype.h"

/* Weight format in which a linear layer's weights are packed for compute. INT8: symmetric
 * per-output-channel s8 weights (scale = max|row| / eng_int8_weight_levels(), quantized at
 * creation) times activations quantized per row to s8 at every forward (ops_dnnl.c
 * invariant 7). */
enum eng_wtype { ENG_WTYPE_F32 = 0, ENG_WTYPE_BF16, ENG_WTYPE_INT8 };

/* Largest |q| of an int8 weight on this machine: 127 where oneDNN runs int8 products on VNNI
 * or AMX (exact s32 sums), 63 where it falls back to AVX2 / AVX-512 without VNNI, whose u8 x s8
 * pair sums pass through saturating s16 (ops_dnnl.c invariant 9). */
int eng_int8_weight_levels(void);

/* Whether oneDNN runs bf16 products on this CPU: AVX-512 or newer (oneDNN 2.6 has none for
 * AVX2), as its effective ISA says (ONEDNN_MAX_CPU_ISA included). Without them a bf16 linear
 * cannot be created; the default decode weights are then f32. */
bool eng_bf16_products(void);

/* Whether the engine's own kernels may use avx512_bf16 (vdpbf16ps): oneDNN's effective ISA
 * is avx512_core_bf16 or newer, so the CPU has it and ONEDNN_MAX_CPU_ISA leaves it. The kernels
 * that use it are compiled into every AVX-512 build and picked per call by this
 * (attention.c invariant 8), so one binary is fast on Xeons and Zen 4 alike and tests reach
 * the other machines' paths through the same cap. */
bool eng_bf16_dot(void);

/* Steps with at most this many rows use the decode-packed weights, larger ones the prefill
 * ones (prefill is compute-bound and fastest in f32; decode memory-bound, fastest in bf16). */
#define ENG_DECODE_MAX_M 16
/* Rows per prefill chunk; the prefill copy of the weights is packed for this many rows. */
#define ENG_LINEAR_CHUNK 512

/* ---- oneDNN context (one per thread) ---- */
struct eng_dnn;
/* Creates a oneDNN CPU engine, stream, empty primitive cache and scratchpad for the calling
 * thread, whose OpenMP team will have n_threads threads (<= 0: OpenMP's default). */
int eng_dnn_create(int n_threads, struct eng_dnn **out, struct kc_error *err);
void eng_dnn_free(struct eng_dnn *dnn);
/* Sets the calling thread's OpenMP team size to the context's n_threads; call at the start
 * of each forward step (cheap). */
void eng_dnn_enter(struct eng_dnn *dnn);
/* The context's n_threads: the largest team its forwards run on. */
int eng_dnn_threads(const struct eng_dnn *dnn);
/* Elastic teams: from now on, every eng_dnn the calling thread uses runs each GEMM (and the
 * OpenMP loops after it) on *team threads, clamped to [1, its n_threads], re-read before every
 * GEMM; another thread may store to *team at any time. Primitives are cached per team size.
 * NULL restores the fixed n_threads. *team must outlive the thread's forwards. */
void eng_dnn_team_source(const atomic_int *team);

/* ---- linear layers ---- */

/* One block of rows of a weight matrix: rows x n_in elements of dtype, row-major, as stored
 * in a Hugging Face checkpoint ([out_features, in_features]); bias (nullable) has rows
 * elements of the same dtype. Several parts are stacked along the output dimension, so
 * q/k/v or gate/up projections run as one GEMM. */
struct eng_weight_part {
    const void *data;
    const void *bias;
    enum eng_dtype dtype;
    int rows;
};

struct eng_linear;
/* Packs the stacked parts into the formats oneDNN picks for prefill_wt and decode_wt
 * (one copy when both are equal). The source data is not referenced afterwards. If any
 * part has a bias, parts without one get zeros. */
int eng_linear_create(const struct eng_weight_part *parts, int n_parts, int n_in,
                      enum eng_wtype prefill_wt, enum eng_wtype decode_wt, struct eng_linear **out,
                      struct kc_error *err);
void eng_linear_free(struct eng_linear *l);
int eng_linear_n_out(const struct eng_linear *l);
int eng_linear_n_in(const struct eng_linear *l);
/* Bytes of packed weights held (both copies). */
size_t eng_linear_bytes(const struct eng_linear *l);
/* Bytes of weights one forward with m rows reads (the copy that m selects; for m > 16, the
 * copy of its first chunk). */
size_t eng_linear_bytes_read(const struct eng_linear *l, int m);
/* Index of that copy (for the tests: which forwards share a copy). */
int eng__linear_copy_for_rows(const struct eng_linear *l, int m);

/* y[m, N] = x[m, K] @ W^T + b, in f32 (bf16 weights: activations converted to bf16, f32
 * accumulation; int8: activations quantized per row to s8, s32 accumulation, rescaled by the
 * row's and the output channel's scales). Primitives are created on first use of a shape and cached
 * in dnn. */
void eng_linear_forward(struct eng_dnn *dnn, const struct eng_linear *l, const float *x, int m,
                        float *y);
/* Creates, in dnn, every primitive eng_linear_forward can use for l with up to max_m rows,
 * and grows dnn's scratch to match, so that a step loop after it creates and allocates
 * nothing. Optional (forward creates missing primitives on first use, asserting on failure);
 * fails with KC_EBACKEND or KC_ENOMEM and a message. */
int eng_linear_prepare(struct eng_dnn *dnn, const struct eng_linear *l, int max_m,
                       struct kc_error *err);
/* eng_linear_forward for an m > ENG_DECODE_MAX_M row prefill of a linear whose prefill weights
 * are bf16, with x[m, K] already in bf16 (eng_rmsnorm_bf16, eng_swiglu_bf16,
 * eng_attention_bf16): no conversion pass. Same primitives and result as eng_linear_forward
 * on the f32 rows that round to x. */
void eng_linear_forward_bf16(struct eng_dnn *dnn, const struct eng_linear *l, const uint16_t *x,
                             int m, float *y);
/* The weight type l's prefill (m > ENG_DECODE_MAX_M) rows run on. */
enum eng_wtype eng_linear_prefill_wtype(const struct eng_linear *l);
/* Reference twin: plain triple loop over the source weights (any dtype), f32 accumulate. */
void eng__linear_ref(const struct eng_weight_part *parts, int n_parts, int n_in, const float *x,
                     int m, float *y);

/* ---- element-wise and normalisation kernels ---- */

/* y[m, C] = x * rsqrt(mean(x^2) + eps) * w; y may alias x. */
void eng_rmsnorm(const float *x, const float *w, int m, int c, float eps, float *y);
void eng__rmsnorm_ref(const float *x, const float *w, int m, int c, float eps, float *y);

/* gate_up[m, 2F] holds [gate | up] per row; h[m, F] = silu(gate) * up. */
void eng_swiglu(const float *gate_up, int m, int f, float *h);
void eng__swiglu_ref(const float *gate_up, int m, int f, float *h);

/* y += x, n elements. */
void eng_add(float *y, const float *x, size_t n);

/* The bf16 prefill's activations (engine/model.c invariant 5; ops.c invariant 5), each the
 * f32 kernel's result rounded to bf16 (nearest even) as eng_linear_forward would round it:
 * eng_rmsnorm_bf16 first adds add[m, C] (nullable: none) into x, the residual, then writes
 * y[m, C] = bf16(rmsnorm(x) * w); eng_swiglu_bf16 writes h[m, F] = bf16(silu(gate) * up). */
void eng_rmsnorm_bf16(float *x, const float *add, const float *w, int m, int c, float eps,
                      uint16_t *y);
void eng__rmsnorm_bf16_ref(float *x, const float *add, const float *w, int m, int c, float eps,
                           uint16_t *y, float *tmp /* [m, C] */);
void eng_swiglu_bf16(const float *gate_up, int m, int f, uint16_t *h);

/* ---- rotary position embedding (Hugging Face "rotate_half" layout) ---- */

/* cos/sin table for positions [0, max_pos): cos[p * D/2 + i], sin[p * D/2 + i], with the
 * inverse frequencies already adjusted for rope scaling. Built by eng_rope_table_init. */
struct eng_rope_table {
    int max_pos;
    int head_dim;
    float *cos;
    float *sin;
};
struct eng_model_config;
int eng_rope_table_init(struct eng_rope_table *t, const struct eng_model_config *cfg, int max_pos,
                        struct kc_error *err);
void eng_rope_table_free(struct eng_rope_table *t);

/* Rotates x[m, n_heads, D] in place; row r is at position pos[r] (< max_pos): for each
 * head, (x[i], x[i+D/2]) -> (x[i]cos - x[i+D/2]sin, x[i+D/2]cos + x[i]sin). */
void eng_rope(const struct eng_rope_table *t, float *x, int m, int n_heads, const int32_t *pos);
void eng__rope_ref(const struct eng_rope_table *t, float *x, int m, int n_heads,
                   const int32_t *pos);
/* qkv[m, (H + 2 Hkv) D] rows of the q|k|v GEMM split into q[m, H D] and k[m, Hkv D], each
 * rotated as eng_rope rotates it (bit for bit), and v[m, Hkv D], copied. */
void eng_rope_split(const struct eng_rope_table *t, const float *qkv, int m, int n_heads,
                    int n_kv_heads, const int32_t *pos, float *q, float *k, float *v);

/* ---- attention over a paged KV cache ---- */

/* Where one sequence's keys and values of one layer live. Token t's key vector
 * [Hkv, D] starts at base + block_table[t / block_size] * block_stride
 * + (t % block_size) * Hkv * D; its value vector v_offset elements further. Elements are
 * f32 (dtype ENG_DTYPE_F32, the zero value: base) or bf16 bit patterns (ENG_DTYPE_BF16:
 * base16); strides count elements. */
struct eng_kv_view {
    union {
        const float *base;      /* ENG_DTYPE_F32 */
        const uint16_t *base16; /* ENG_DTYPE_BF16 */
    };
    size_t block_stride;
    size_t v_offset;
    int block_size;
    const int32_t *block_table;
    enum eng_dtype dtype; /* ENG_DTYPE_F32 or ENG_DTYPE_BF16 */
};

/* Causal GQA attention for n query rows of one sequence at positions pos0..pos0+n-1, whose
 * keys/values (post-RoPE keys) for positions 0..pos0+n-1 are already in the cache.
 * q[n, H, D] (post-RoPE), out[n, H, D]; query head h reads kv head h / (H / Hkv).
 * scratch holds eng_attention_scratch_floats(pos0 + n, H, Hkv, D, threads of the calling
 * team) floats. Implemented in engine/attention.c: a tiled flash-attention kernel, and a
 * one-row kernel for single decode rows of small groups (its DESIGN block says when). */
void eng_attention(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                   int n_kv_heads, int head_dim, float scale, float *out, float *scratch);
void eng__attention_ref(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                        int n_kv_heads, int head_dim, float scale, float *out, float *scratch);
/* The two paths of eng_attention forced for any n (same contract and scratch), for the tests
 * and `kvcast bench engine`'s old-vs-new comparison: _rows is the one-row kernel (decode's
 * path, and all of eng_attention before the tiled kernel), _tiles the tiled kernel. */
void eng__attention_rows(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                         int n_kv_heads, int head_dim, float scale, float *out, float *scratch);
void eng__attention_tiles(const float *q, int n, int pos0, const struct eng_kv_view *kv,
                          int n_heads, int n_kv_heads, int head_dim, float scale, float *out,
                          float *scratch);
/* eng_attention for the bf16 prefill: the same contract, but the products run in bf16 with
 * f32 accumulation (queries, keys, values and the softmax weights P rounded to bf16; the
 * softmax itself in f32) and out[n, H, D] is written in bf16, the o-projection's input
 * (eng_linear_forward_bf16). Calls of fewer than 16 query rows (items of a batched decode
 * step) run eng_attention's f32 tile kernel and only round its output. D must be even.
 * scratch holds
 * eng_attention_bf16_scratch_floats(pos0 + n, ...) floats. attention.c invariant 8. */
void eng_attention_bf16(const float *q, int n, int pos0, const struct eng_kv_view *kv, int n_heads,
                        int n_kv_heads, int head_dim, float scale, uint16_t *out, float *scratch);
size_t eng_attention_bf16_scratch_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim,
                                         int n_threads);
/* Scratch floats eng_attention needs for contexts up to n_ctx of this head shape
 * (H % Hkv == 0) run by n_threads threads. */
size_t eng_attention_scratch_floats(int n_ctx, int n_heads, int n_kv_heads, int head_dim,
                                    int n_threads);

/* Writes the linked oneDNN's version ("3.0.0 (commit 1a2b3c)") to out (cap bytes, truncated,
 * NUL-terminated), for `kvcast --version`. */
void eng_dnnl_version(char *out, size_t cap);

#endif /* ENG_OPS_H */
