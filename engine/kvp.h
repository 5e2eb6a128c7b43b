/*
 * kvp.h — KV Prediction (arXiv 2410.08391): a cheap auxiliary model reads the prompt, a
 * per-layer affine predictor turns its keys and values into the base model's KV cache, and
 * the base model runs only the last prompt token to produce the first output token.
 *
 * Place in the data flow: a prefill worker calls eng_kvp_predict instead of a full base
 * prefill, on its own base forward context and the server's pools; the base sequence it fills
 * is then decoded by the base model as usual (eng_forward), appending its own exact K/V.
 * `kvcast calibrate` fits a predictor with the eng_kvp_calib_* functions; `kvcast eval`
 * compares the three modes; `kvcast bench engine --kvp` times them on synthetic pairs
 * (eng_kvp_create_random).
 *
 * The method, per prompt t[0..n-1]:
 *   aux forward over t[0..n-2], capturing pre-RoPE keys/values  Ka[a], Va[a]   [n-1, Na]
 *   per base layer l, a = map[l]:  K[l] = Ka[a] Wk[l]^T + bk[l]               [n-1, Nb]
 *                                  V[l] = Va[a] Wv[l]^T + bv[l]               [n-1, Nb]
 *   inject K (rotated by the base RoPE at positions 0..n-2) and V into the base cache
 *   base forward of t[n-1] -> logits of the first output token                [V]
 * Na = aux Hkv * D, Nb = base Hkv * D (merged heads, head-major). Keys are predicted before
 * RoPE: a linear map cannot undo a position-dependent rotation, in pre-RoPE space it need not.
 *
 * Predictor file (`predictor.safetensors`): per base layer l, `k.{l}.weight [Nb, Na]`,
 * `k.{l}.bias [Nb]`, `v.{l}.weight [Nb, Na]`, `v.{l}.bias [Nb]` (F32, BF16 or F16; weights are
 * HF-style [out, in] linear weights); `__metadata__` strings: `format` ("kvcast-kvp-v1",
 * optional on read), `layer_map` (JSON list "[0, 0, 1]" or comma list "0,0,1", one aux layer
 * per base layer), `key_space` ("pre_rope", the only one supported), `base_layers`,
 * `aux_layers`, `base_kv_dim`, `aux_kv_dim`. A KVP bundle is a small JSON file
 * {"name": "kvcast-tiny", "base": DIR, "aux": DIR, "predictor": FILE} with paths relative to
 * the bundle's folder; "name" (optional) is the model id a server shows clients.
 *
 * With cached prefixes (a prefix cache): when the base sequence already holds the exact K/V
 * of t[0..c) and the aux sequence the aux K/V of t[0..a), the aux runs over t[a..n-2] only and
 * the predictor predicts positions [c, n-1) only, reading the aux K/V of positions in [c, a)
 * back from the aux cache (eng_kv_extract).
 *
 * Files: engine/kvp_io.c (predictors, layer maps, bundles), engine/kvp.c (contexts and
 * prefill), engine/kvp_calibrate.c (calibration).
 *
 * Ownership and thread rules: a predictor (struct eng_kvp) and a bundle are immutable after
 * load and shared by all threads. A struct eng_kvp_ctx (the aux forward context, a oneDNN
 * context for the predictor GEMMs and the capture/prediction buffers; no base context and no
 * KV pool) belongs to one thread. Callers own the base forward context, both KV pools and
 * both sequences and pass them in (struct eng_kvp_seqs); a prefill allocates nothing of its
 * own (only the sequences' block tables grow, as in any forward). A calibration accumulator
 * (struct eng_kvp_calib) belongs to one thread.
 */
#ifndef ENG_KVP_H
#define ENG_KVP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

#define ENG_KVP_FORMAT "kvcast-kvp-v1"
#define ENG_KVP_KEY_SPACE "pre_rope"

/* What a predictor connects: Lb base layers of Nb-wide K/V rows from La aux layers of
 * Na-wide rows. */
struct eng_kvp_shape {
    int base_layers; /* Lb */
    int aux_layers;  /* La */
    int base_kv_dim; /* Nb = base Hkv * D */
    int aux_kv_dim;  /* Na = aux Hkv * D */
};

/* The shape a predictor for this (base, aux) pair must have. */
struct eng_kvp_shape eng_kvp_shape_of_pair(const struct eng_model_config *base,
                                           const struct eng_model_config *aux);

/* Checks that base and aux can form a pair: same vocabulary size (the tokenizers are checked
 * separately, eng_kvp_check_tokenizers). KC_EINVAL with a message otherwise. */
int eng_kvp_check_pair(const struct eng_model_config *base, const struct eng_model_config *aux,
                       struct kc_error *err);

/* ---- layer maps ---- */

/* Fills map[Lb] with round(l * (La - 1) / (Lb - 1)) (all 0 when Lb == 1): the first and last
 * layers line up and the rest spread evenly. */
void eng_kvp_layer_map_auto(int base_layers, int aux_layers, int32_t *map);

/* Parses a layer map given as a JSON list "[0, 0, 1]" or a comma list "0,0,1" into
 * map[shape->base_layers]; every entry must be an integer in [0, aux_layers) and there must be
 * exactly base_layers of them. KC_EFORMAT with a message naming the problem otherwise. */
int eng_kvp_layer_map_parse(const char *s, const struct eng_kvp_shape *shape, int32_t *map,
                            struct kc_error *err);

/* ---- predictors ---- */

struct eng_kvp;

/*
 * Creates a predictor from f32 arrays: k_w/v_w [Lb, Nb, Na] and k_b/v_b [Lb, Nb] (NULL bias:
 * zeros), contiguous, and layer_map[Lb]. The arrays are copied. Fails with KC_EINVAL for a
 * bad shape or map, KC_ENOMEM, KC_EBACKEND.
 */
int eng_kvp_create(const struct eng_kvp_shape *shape, const int32_t *layer_map, const float *k_w,
                   const float *k_b, const float *v_w, const float *v_b, struct eng_kvp **out,
                   struct kc_error *err);

/* A predictor of the given shape with weights ~ U(-1, 1) / sqrt(Na) and small random biases
 * (seeded), for benchmarks and tests; layer_map NULL: the auto map. */
int eng_kvp_create_random(const struct eng_kvp_shape *shape, const int32_t *layer_map,
                          uint64_t seed, struct eng_kvp **out, struct kc_error *err);

/* Loads a predictor.safetensors, validating every tensor's presence, dtype and shape against
 * the metadata, and the metadata itself (dims > 0 and within limits, map length and range,
 * key_space). Errors name the file. KC_ENOTFOUND, KC_EIO, KC_EFORMAT, KC_EUNSUPPORTED,
 * KC_ENOMEM, KC_EBACKEND. */
int eng_kvp_load(const char *path, struct eng_kvp **out, struct kc_error *err);

/* Writes p as a predictor.safetensors (F32) with full metadata. */
int eng_kvp_save(const struct eng_kvp *p, const char *path, struct kc_error *err);

/* Frees a predictor; NULL is a no-op. */
void eng_kvp_free(struct eng_kvp *p);

const struct eng_kvp_shape *eng_kvp_shape_of(const struct eng_kvp *p);
/* The layer map, [Lb] entries. */
const int32_t *eng_kvp_layer_map(const struct eng_kvp *p);
/* The f32 weights [Nb, Na] and bias [Nb] of base layer l's key (which 'k') or value ('v')
 * map, as held for saving and inspection. */
void eng_kvp_map_of(const struct eng_kvp *p, char which, int l, const float **weight,
                    const float **bias);

/* Checks that p fits the (base, aux) pair: every dimension of p's shape equals the pair's and
 * every layer_map entry names an aux layer the aux model has. KC_EINVAL with a message naming
 * the dimension and a tensor of the predictor file ('k.3.weight') otherwise. */
int eng_kvp_check_models(const struct eng_kvp *p, const struct eng_model_config *base,
                         const struct eng_model_config *aux, struct kc_error *err);

/* ---- bundles: base + aux + predictor ---- */

/* Checks that base_dir/tokenizer.json and aux_dir/tokenizer.json are byte-identical. Both
 * absent is fine (models driven by ids); one absent, or different bytes, is KC_EINVAL with a
 * message naming the files. tokenizer_config.json is not compared (sizes of one family differ
 * in fields such as model_max_length); the tools tokenize with the base's. */
int eng_kvp_check_tokenizers(const char *base_dir, const char *aux_dir, struct kc_error *err);

struct eng_kvp_bundle {
    char *name;     /* the bundle file's "name"; NULL when absent or opened without a file */
    char *base_dir; /* resolved paths */
    char *aux_dir;
    char *predictor_path; /* NULL when loaded without a predictor */
    struct eng_model *base;
    struct eng_model *aux;
    struct eng_kvp *pred; /* NULL when loaded without a predictor */
};

/* Loads base and aux model directories and (when predictor_path is non-NULL) a predictor,
 * checking the tokenizers, the pair and the predictor's shape. */
int eng_kvp_bundle_open(const char *base_dir, const char *aux_dir, const char *predictor_path,
                        const struct eng_model_params *params, struct eng_kvp_bundle **out,
                        struct kc_error *err);

/* What a bundle file says, paths resolved against its folder (absolute ones kept). */
struct eng_kvp_bundle_spec {
    char *name; /* NULL when the file has no "name" */
    char *base_dir;
    char *aux_dir;
    char *predictor_path;
};

/* Reads and checks a bundle JSON file ({"base", "aux", "predictor"}: non-empty strings, paths
 * relative to the file's folder unless absolute; optional "name": a non-empty printable
 * string of at most 255 bytes; no other keys) without opening anything, so a caller can
 * override parts of it. On success *out owns its strings (eng_kvp_bundle_spec_free). */
int eng_kvp_bundle_read(const char *path, struct eng_kvp_bundle_spec *out, struct kc_error *err);
/* Frees the strings of a spec and zeroes it; NULL is a no-op. */
void eng_kvp_bundle_spec_free(struct eng_kvp_bundle_spec *spec);

/* eng_kvp_bundle_read, then eng_kvp_bundle_open; the bundle keeps the file's name. */
int eng_kvp_bundle_load(const char *path, const struct eng_model_params *params,
                        struct eng_kvp_bundle **out, struct kc_error *err);

/* Frees a bundle and everything it loaded; NULL is a no-op. */
void eng_kvp_bundle_free(struct eng_kvp_bundle *b);

/* ---- prefill ---- */

/* How a prompt is prefilled: FULL (base over every token: the ceiling), AUX (the auxiliary
 * model alone, which then also decodes: the floor), PREDICT (KV Prediction). */
enum eng_kvp_mode { ENG_KVP_FULL = 0, ENG_KVP_AUX, ENG_KVP_PREDICT };
#define ENG_KVP_N_MODES 3

/* "full", "aux", "predict". */
const char *eng_kvp_mode_name(enum eng_kvp_mode mode);
/* Parses a mode name; KC_EINVAL otherwise. */
int eng_kvp_mode_parse(const char *s, enum eng_kvp_mode *out);

/* Where a prefill's time went, in milliseconds. FULL and AUX put everything in
 * base_first_step_ms / aux_ms respectively. */
struct eng_kvp_timings {
    double aux_ms;             /* aux forward over the aux tokens actually run (AUX: all run) */
    double predict_ms;         /* aux prefix read-back + predictor GEMMs + injection */
    double base_first_step_ms; /* base forward of t[n-1] (FULL: of every token run) */
    double total_ms;
};

struct eng_kvp_ctx;

/*
 * The aux forward context, the oneDNN context for the predictor GEMMs, and capture/prediction
 * buffers for prompts up to max_ctx positions, in steps of up to max_rows rows, on an OpenMP
 * team of n_threads. base is needed for its shape and RoPE (inject) only: the caller owns the
 * base forward context. pred may be NULL (then only AUX, and FULL on the caller's base
 * context); base, aux and pred must fit each other (eng_kvp_check_models).
 */
int eng_kvp_ctx_create(const struct eng_model *base, const struct eng_model *aux,
                       const struct eng_kvp *pred, int max_rows, int max_ctx, int n_threads,
                       struct eng_kvp_ctx **out, struct kc_error *err);
void eng_kvp_ctx_free(struct eng_kvp_ctx *kc);

/* Where a KV-Prediction prefill reads and writes: the caller's base forward context, the base
 * pool and sequence, the aux pool and sequence. */
struct eng_kvp_seqs {
    struct eng_ctx *base_ctx;
    struct eng_kv_pool *base_pool;
    struct eng_seq *base; /* holds c >= 0 EXACT positions of tokens[0..c) on entry (a cached
                           * prefix; c a multiple of the base block size, c < n) */
    struct eng_kv_pool *aux_pool;
    struct eng_seq *aux; /* holds a >= 0 aux positions of tokens[0..a) on entry (a cached aux
                          * prefix, a <= n - 1) */
};

/*
 * KV Prediction with cached prefixes: the aux model runs over tokens[a .. n-1) only (capturing
 * pre-RoPE K/V), the predictor predicts base positions [c, n-1) only — from the captures for
 * positions >= a and, for positions in [c, a), from the aux cache itself via eng_kv_extract —
 * injects them after the exact prefix, and the base runs t[n-1] (if c == n - 1 there is nothing
 * to predict). On success base->n_tokens == n, aux->n_tokens == n - 1 (the caller may publish
 * the aux blocks and releases aux), logits[V] are the first output token's, *t (nullable) the
 * split (aux_ms covers only the aux tokens actually run). Errors: KC_EINVAL (bad c/a/n, no
 * predictor, a missing member of io), KC_ECONTEXT (n > max_ctx), KC_ERANGE (token id), KC_EBUSY
 * (a pool ran dry). On failure the caller releases both sequences (their contents past c / a
 * are unspecified).
 */
int eng_kvp_predict(struct eng_kvp_ctx *kc, const struct eng_kvp_seqs *io, const int32_t *tokens,
                    int n, float *logits, struct eng_kvp_timings *t, struct kc_error *err);

/*
 * A prefill of tokens[0..n) in the given mode (for the tools, which compare modes), writing
 * the first output token's logits to logits[V]:
 *   FULL:    base forward over tokens[c..n) on io->base_ctx into io->base (c = its n_tokens);
 *   AUX:     aux forward over tokens[a..n) into io->aux (a = its n_tokens), the aux model
 *            standing in for the base;
 *   PREDICT: eng_kvp_predict (io->aux then holds n - 1 positions: the caller releases it).
 * FULL needs only io's base members, AUX only its aux ones. Errors as eng_kvp_predict, and
 * KC_EINVAL when the sequence already holds all n tokens. On failure the caller releases the
 * sequences.
 */
int eng_kvp_prefill(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, const struct eng_kvp_seqs *io,
                    const int32_t *tokens, int n, float *logits, struct eng_kvp_timings *t,
                    struct kc_error *err);

/* One forward of n tokens appended with the model of mode (a decode step or teacher forcing
 * after a prefill): FULL and PREDICT to io->base on io->base_ctx, AUX to io->aux on the
 * context's aux side; logits as eng_batch_item. Errors as eng_forward. */
int eng_kvp_forward(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, const struct eng_kvp_seqs *io,
                    const int32_t *tokens, int n, enum eng_logits_mode logits_mode, float *logits,
                    struct kc_error *err);

/* Analytic FLOPs to the first output token for an n-token prompt in mode (2 per multiply-add,
 * attention included; see eng_model_config_flops_per_token). pred_shape may be NULL for FULL
 * and AUX. */
double eng_kvp_ttft_flops(enum eng_kvp_mode mode, const struct eng_model_config *base,
                          const struct eng_model_config *aux,
                          const struct eng_kvp_shape *pred_shape, int n);

/* ---- closed-form calibration (engine/kvp_calibrate.c) ---- */

/*
 * Ridge regression of every base layer's K and V on its mapped aux layer's K and V, with a
 * bias column: per aux layer a in use, G = X1^T X1 (X1 = [X, 1], d = Na + 1) and per base
 * layer R = X1^T Y, accumulated in f64 over windows (each window's products computed in f32
 * on oneDNN); solve (G + ridge * s * diag(1..1, 0)) W = R by Cholesky, with s the mean of
 * G's feature diagonal (so ridge is scale-free and the bias is not shrunk).
 */
struct eng_kvp_calib;

/* Creates empty accumulators for a predictor of this shape and map; n_threads for oneDNN. */
int eng_kvp_calib_create(const struct eng_kvp_shape *shape, const int32_t *layer_map, int n_threads,
                         struct eng_kvp_calib **out, struct kc_error *err);
void eng_kvp_calib_free(struct eng_kvp_calib *c);

/* Adds n rows of paired activations: aux_k[a], aux_v[a] [n, Na] for every aux layer a the map
 * uses (others may be NULL), base_k[l], base_v[l] [n, Nb] for every base layer. */
int eng_kvp_calib_add(struct eng_kvp_calib *c, int n, const float *const *aux_k,
                      const float *const *aux_v, const float *const *base_k,
                      const float *const *base_v, struct kc_error *err);

/* Runs base (base_ctx, on a transient sequence of base_pool) and aux (kc's aux side, on a
 * transient sequence of aux_pool) over one window of n tokens, capturing pre-RoPE K/V of every
 * position, and adds the pairs. All blocks are returned before it returns, on failure too.
 * n <= kc's max_ctx. */
int eng_kvp_calib_window(struct eng_kvp_calib *c, struct eng_kvp_ctx *kc, struct eng_ctx *base_ctx,
                         struct eng_kv_pool *base_pool, struct eng_kv_pool *aux_pool,
                         const int32_t *tokens, int n, struct kc_error *err);

/* Rows accumulated so far. */
int64_t eng_kvp_calib_rows(const struct eng_kvp_calib *c);

/* Solves for the predictor (ridge >= 0). KC_EINVAL without data; KC_ERANGE when a system is
 * not positive definite (too little or degenerate data: raise ridge or add data). */
int eng_kvp_calib_solve(const struct eng_kvp_calib *c, double ridge, struct eng_kvp **out,
                        struct kc_error *err);

#endif /* ENG_KVP_H */
