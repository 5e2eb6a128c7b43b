/*
 * model.h — a Llama-family transformer (llama, mistral, qwen2) and its forward pass over
 * the paged KV cache.
 *
 * Place in the data flow: prefill and decode workers call eng_forward; KV Prediction uses
 * the capture hook (pre-RoPE keys and values the model computed), eng_kv_inject (keys
 * and values it did not compute) and eng_kv_extract (cached keys and values read back). Tools
 * (`kvcast generate`, `bench engine`) call it too.
 *
 * Ownership: a model owns its packed weights (struct eng_linear), norms, embedding copy and
 * RoPE table; it keeps no reference to the files it was loaded from. A model is immutable
 * after load and shared by all threads. A `struct eng_ctx` (scratch buffers and a oneDNN
 * context) belongs to one thread; a forward step allocates nothing.
 *
 * Forward step, one comment per stage (engine/model.c):
 *   x = embed(tokens)                                  [M, C]
 *   per layer: xn = rmsnorm(x); qkv = xn Wqkv^T (+b)   [M, (H + 2 Hkv) D]
 *              k, v -> capture (pre-RoPE); rope(q), rope(k); k, v -> cache
 *              a = attention(q, cache) per sequence     [M, H D]
 *              x += a Wo^T; x += down(silu(xn' Wg^T) * xn' Wu^T)
 *   logits = rmsnorm(x) Wlm^T for the rows that want them  [*, V]
 */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/io/model_config.h"
#include "engine/kv_cache.h"
#include "engine/ops.h"

struct eng_model_params {
    enum eng_wtype prefill_wtype; /* weights for steps of > ENG_DECODE_MAX_M rows */
    enum eng_wtype decode_wtype;  /* weights for small steps (decode) */
    /* Optional (NULL: none). Called by eng_model_load on the loading thread after each layer
     * is packed, with the weight file's path and the bytes of tensors read so far and in all;
     * a non-zero return stops the load with KC_ECANCELED (a server shutting down mid-load). */
    int (*progress_cb)(void *ud, const char *path, size_t done, size_t total);
    void *progress_ud;
};
/* f32 prefill weights, decode weights bf16 where oneDNN has bf16 products (else f32), no
 * progress callback: the reference pair of the command-line tools. */
struct eng_model_params eng_model_default_params(void);
/* The prefill weights `kvcast serve --prefill-dtype auto` loads: bf16 where oneDNN has native
 * bf16 dot products (eng_bf16_dot: avx512_bf16 or AMX), where a bf16 prefill runs at about
 * 1.9x the f32 rate (Zen 4, TinyLlama shapes); f32 elsewhere, where oneDNN emulates bf16 at
 * about 0.4x the f32 rate. */
enum eng_wtype eng_prefill_wtype_auto(void);
/* Parses "f32" / "bf16" / "int8". */
int eng_wtype_parse(const char *s, enum eng_wtype *out);
/* The name eng_wtype_parse takes for wt ("f32", "bf16", "int8"). */
const char *eng_wtype_name(enum eng_wtype wt);

struct eng_model;

/* Loads a Hugging Face model directory (config.json + model.safetensors or shards).
 * Tensor names, shapes and dtypes are checked against the config; errors name the file. A
 * tensor the config does not use (e.g. layers beyond num_hidden_layers, biases without
 * attention_bias) is KC_EFORMAT naming it: a config that disagrees with its weights must not
 * load silently. Tolerated: rotary_emb.inv_freq buffers and lm_head.weight when tied. */
int eng_model_load(const char *dir, const struct eng_model_params *params, struct eng_model **out,
                   struct kc_error *err);
/* Builds a model of configuration cfg with random weights (seeded), for benchmarks of real
 * shapes without files. Weights ~ N(0, 0.02) drawn from a fast PRNG. */
int eng_model_init_random(const struct eng_model_config *cfg, const struct eng_model_params *params,
                          uint64_t seed, struct eng_model **out, struct kc_error *err);
void eng_model_free(struct eng_model *m);
const struct eng_model_config *eng_model_config_of(const struct eng_model *m);
/* Bytes of packed weights, and bytes a forward step of m rows reads from weights. */
size_t eng_model_weight_bytes(const struct eng_model *m);
size_t eng_model_step_bytes_read(const struct eng_model *m, int rows);

/* Per-thread forward context sized for steps of up to max_rows rows and sequences of up to
 * max_ctx positions; n_threads for its OpenMP team. */
struct eng_ctx;
int eng_ctx_create(const struct eng_model *m, int max_rows, int max_ctx, int n_threads,
                   struct eng_ctx **out, struct kc_error *err);
void eng_ctx_free(struct eng_ctx *ctx);

enum eng_logits_mode { ENG_LOGITS_NONE = 0, ENG_LOGITS_LAST, ENG_LOGITS_ALL };

/* One sequence's share of a forward step: n_tokens new tokens appended at positions
 * seq->n_tokens .. seq->n_tokens + n_tokens - 1. */
struct eng_batch_item {
    struct eng_seq *seq;
    const int32_t *tokens;
    int n_tokens;
    enum eng_logits_mode logits_mode;
    float *logits; /* [1, V] (LAST) or [n_tokens, V] (ALL) */
};

/* Optional capture of what the model computed for item 0: per layer l, k[l] and v[l]
 * receive [n_tokens, Hkv * D] pre-RoPE keys and values (NULL entries are skipped). */
struct eng_kv_capture {
    float **k; /* [L] */
    float **v; /* [L] */
};

/*
 * Runs the model over a step. Either one item (any n_tokens: processed in chunks of
 * max_rows, the paged cache carrying context between chunks), or several items whose
 * tokens add up to at most max_rows (a decode batch). Reserves KV blocks as needed
 * (KC_EBUSY if the pool runs dry; the sequences keep what they had). Fails with KC_ERANGE
 * for a token id outside the vocabulary and KC_ECONTEXT past max_ctx, before computing.
 * On success every item's seq->n_tokens has advanced by its n_tokens.
 */
int eng_forward(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                struct eng_batch_item *items, int n_items, const struct eng_kv_capture *capture,
                struct kc_error *err);

/* Installs, for the calling thread, a flag that stops its forwards: eng_forward reads it before
 * every layer and, once it is non-zero, fails with KC_ECANCELED. The sequences keep the
 * positions of the chunks that completed (K/V written past them is never read, and the next
 * forward overwrites it); the blocks reserved stay reserved. NULL: none. The scheduler's
 * refinement jobs yield to first-token work this way, within one layer. */
void eng_forward_stop_source(const atomic_int *flag);

/* The ops of a forward step that eng_forward times when a profile is installed
 * (eng_forward_profile). NORM covers the RMS norms, including a bf16 norm that writes the next
 * GEMM's input; SPLIT the copy of q|k|v apart (and the capture for KV Prediction); KV the
 * append of K/V to the cache; RESID the residual adds. A GEMM's time includes the conversion
 * of its f32 input to bf16 or int8, where eng_linear_forward does one. */
enum eng_prof_op {
    ENG_PROF_EMBED = 0,
    ENG_PROF_NORM,
    ENG_PROF_QKV,
    ENG_PROF_SPLIT,
    ENG_PROF_ROPE,
    ENG_PROF_KV,
    ENG_PROF_ATTN,
    ENG_PROF_O,
    ENG_PROF_RESID,
    ENG_PROF_GATE_UP,
    ENG_PROF_SWIGLU,
    ENG_PROF_DOWN,
    ENG_PROF_LM_HEAD,
    ENG_PROF_N
};

/* Wall seconds, calls and FLOPs (matmuls and attention products; 0 for the rest) per op,
 * summed over the forwards run while installed. */
struct eng_profile {
    double s[ENG_PROF_N];
    double flops[ENG_PROF_N];
    long calls[ENG_PROF_N];
};

/* Installs, for the calling thread, a profile that its forwards add to (NULL: none, the
 * default). Each profiled op costs two clock reads; unprofiled forwards one branch. */
void eng_forward_profile(struct eng_profile *p);
/* Short name of an op ("qkv", "attention", ...). */
const char *eng_prof_op_name(enum eng_prof_op op);

/*
 * Writes externally supplied keys and values for positions seq->n_tokens ..
 * seq->n_tokens + n - 1 of every layer: k_pre[l] and v[l] are [n, Hkv * D] with keys
 * before RoPE; keys are rotated with this model's RoPE at their positions as they are
 * written. Advances seq->n_tokens by n. KV Prediction's way into the base model's cache.
 * A bf16 pool gets the rows in its dtype: keys rotated in f32, then rounded once, exactly as
 * the forward's append rounds the keys it computes (KC_ENOMEM if the rotation buffer cannot
 * be allocated).
 */
int eng_kv_inject(const struct eng_model *m, struct eng_kv_pool *pool, struct eng_seq *seq, int n,
                  const float *const *k_pre, const float *const *v, struct kc_error *err);

/* eng_kv_inject with the rows of k_pre[l] and v[l] ld[l] floats apart (ld[l] >= Hkv * D),
 * so that they can be views into wider GEMM outputs (KV Prediction's stacked maps). */
int eng_kv_inject_ld(const struct eng_model *m, struct eng_kv_pool *pool, struct eng_seq *seq,
                     int n, const float *const *k_pre, const float *const *v, const size_t *ld,
                     struct kc_error *err);

/*
 * The inverse of eng_kv_inject: reads positions [pos0, pos0 + n) of every layer of seq back as
 * pre-RoPE keys (rotated back with this model's RoPE) and values: k_pre[l], v[l] receive
 * [n, Hkv * D] rows ld[l] floats apart (ld NULL: Hkv * D). Touches neither the pool nor seq.
 * KC_EINVAL for a range outside [0, seq->n_tokens) or a pool of another shape. KV Prediction's
 * way to reuse a cached aux prefix: its keys come back equal to what a capture would have
 * given up to rounding (a rotation and its inverse, ~1e-7 relative). A bf16 pool's elements
 * are widened exactly: values come back as their bf16 rounding, keys within one bf16 rounding
 * of the rotated key (rotated back).
 */
int eng_kv_extract(const struct eng_model *m, const struct eng_kv_pool *pool,
                   const struct eng_seq *seq, int pos0, int n, float *const *k_pre, float *const *v,
                   const size_t *ld, struct kc_error *err);

#endif /* ENG_MODEL_H */
