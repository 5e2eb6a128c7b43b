/*
 * kvp.c — KV Prediction's prefill: modes, the per-thread context and the prefill paths (see
 * kvp.h for the method). Predictor files, layer maps and bundles live in engine/kvp_io.c,
 * calibration in engine/kvp_calibrate.c.
 *
 * DESIGN invariants:
 *  1. The aux pass of a PREDICT prefill runs on the context's private aux pool and its
 *     sequence is released before eng_kvp_prefill returns, on success and on failure. A
 *     failed prefill leaves the caller's sequence empty (it was empty on entry).
 *  2. eng_kvp_prefill allocates nothing of its own: captures and predictions live in the
 *     context, sized for max_ctx at creation, and every predictor primitive is created there
 *     (eng_linear_prepare). Only the sequences' block tables grow (engine/kv_cache.c).
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/kvp.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kvp_internal.h"
#include "engine/ops.h"

/* Block size of the private aux pool. */
#define KVP_AUX_BLOCK 16

/* ---- modes and contexts ---- */

const char *eng_kvp_mode_name(enum eng_kvp_mode mode) {
    switch (mode) {
    case ENG_KVP_FULL:
        return "full";
    case ENG_KVP_AUX:
        return "aux";
    case ENG_KVP_PREDICT:
        return "predict";
    }
    return "?";
}

int eng_kvp_mode_parse(const char *s, enum eng_kvp_mode *out) {
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        if (s != NULL && strcmp(s, eng_kvp_mode_name((enum eng_kvp_mode)m)) == 0) {
            *out = (enum eng_kvp_mode)m;
            return KC_OK;
        }
    }
    return KC_EINVAL;
}

static void free_bufs(float **b, int n) {
    if (b == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        kc_aligned_free(b[i]);
    }
    free(b);
}

/* n buffers of rows x cols floats; NULL on failure. */
static float **alloc_bufs(int n, int rows, int cols) {
    float **b = kc_calloc((size_t)n, sizeof(float *));
    if (b == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        b[i] = kc_aligned_alloc((size_t)rows * (size_t)cols * sizeof(float));
        if (b[i] == NULL) {
            free_bufs(b, n);
            return NULL;
        }
    }
    return b;
}

void eng_kvp_ctx_free(struct eng_kvp_ctx *kc) {
    if (kc == NULL) {
        return;
    }
    if (kc->aux_pool.slab != NULL) {
        eng_seq_release(&kc->aux_pool, &kc->aux_seq);
    }
    eng_kv_pool_free(&kc->aux_pool);
    const int La = kc->aux != NULL ? eng_model_config_of(kc->aux)->n_layers : 0;
    free_bufs(kc->aux_k, La);
    free_bufs(kc->aux_v, La);
    free_bufs(kc->pred_k, La);
    free_bufs(kc->pred_v, La);
    free(kc->pred_kl);
    free(kc->pred_vl);
    free(kc->pred_ld);
    eng_dnn_free(kc->dnn);
    eng_ctx_free(kc->aux_ctx);
    eng_ctx_free(kc->base_ctx);
    free(kc);
}

int eng_kvp_ctx_create(const struct eng_model *base, const struct eng_model *aux,
                       const struct eng_kvp *pred, int max_rows, int max_ctx, int n_threads,
                       struct eng_kvp_ctx **out, struct kc_error *err) {
    if (base == NULL || aux == NULL || max_rows < 1 || max_ctx < 1) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp context: needs two models, max_rows >= 1 and "
                            "max_ctx >= 1");
    }
    const struct eng_model_config *bc = eng_model_config_of(base);
    const struct eng_model_config *ac = eng_model_config_of(aux);
    int rc =
        pred != NULL ? eng_kvp_check_models(pred, bc, ac, err) : eng_kvp_check_pair(bc, ac, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct eng_kvp_ctx *kc = kc_calloc(1, sizeof(*kc));
    if (kc == NULL) {
        return kc_error_set(err, KC_ENOMEM, "kvp context: out of memory");
    }
    kc->base = base;
    kc->aux = aux;
    kc->pred = pred;
    kc->max_rows = max_rows;
    kc->max_ctx = max_ctx;
    rc = eng_ctx_create(base, max_rows, max_ctx, n_threads, &kc->base_ctx, err);
    if (rc == KC_OK) {
        rc = eng_ctx_create(aux, max_rows, max_ctx, n_threads, &kc->aux_ctx, err);
    }
    if (rc == KC_OK) {
        rc = eng_dnn_create(n_threads, &kc->dnn, err);
    }
    if (rc == KC_OK) {
        rc = eng_kv_pool_init(&kc->aux_pool, ac, KVP_AUX_BLOCK,
                              (max_ctx + KVP_AUX_BLOCK - 1) / KVP_AUX_BLOCK, err);
    }
    if (rc != KC_OK) {
        goto fail;
    }
    const int Na = ac->n_kv_heads * ac->head_dim;
    kc->aux_k = alloc_bufs(ac->n_layers, max_ctx, Na);
    kc->aux_v = alloc_bufs(ac->n_layers, max_ctx, Na);
    if (kc->aux_k == NULL || kc->aux_v == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "kvp context: out of memory for aux captures");
        goto fail;
    }
    if (pred != NULL) {
        /* Stacked outputs per aux layer, and per base layer a strided view into them. */
        const int La = ac->n_layers, Lb = bc->n_layers;
        kc->pred_k = kc_calloc((size_t)La, sizeof(float *));
        kc->pred_v = kc_calloc((size_t)La, sizeof(float *));
        kc->pred_kl = kc_calloc((size_t)Lb, sizeof(float *));
        kc->pred_vl = kc_calloc((size_t)Lb, sizeof(float *));
        kc->pred_ld = kc_calloc((size_t)Lb, sizeof(size_t));
        bool ok = kc->pred_k != NULL && kc->pred_v != NULL && kc->pred_kl != NULL &&
                  kc->pred_vl != NULL && kc->pred_ld != NULL;
        for (int a = 0; a < La && ok; a++) {
            const size_t cols = pred->width[a] > 0 ? (size_t)pred->width[a] : 1u;
            kc->pred_k[a] = kc_aligned_alloc((size_t)max_ctx * cols * sizeof(float));
            kc->pred_v[a] = kc_aligned_alloc((size_t)max_ctx * cols * sizeof(float));
            ok = kc->pred_k[a] != NULL && kc->pred_v[a] != NULL;
        }
        if (!ok) {
            rc = kc_error_set(err, KC_ENOMEM, "kvp context: out of memory for predicted KV");
            goto fail;
        }
        for (int l = 0; l < Lb; l++) {
            const int a = pred->layer_map[l];
            kc->pred_kl[l] = kc->pred_k[a] + pred->col[l];
            kc->pred_vl[l] = kc->pred_v[a] + pred->col[l];
            kc->pred_ld[l] = (size_t)pred->width[a];
        }
        /* Create every predictor primitive now, so prefills create nothing. */
        for (int a = 0; a < La && rc == KC_OK; a++) {
            if (pred->k[a] == NULL) {
                continue;
            }
            rc = eng_linear_prepare(kc->dnn, pred->k[a], max_ctx, err);
            if (rc == KC_OK) {
                rc = eng_linear_prepare(kc->dnn, pred->v[a], max_ctx, err);
            }
        }
        if (rc != KC_OK) {
            goto fail;
        }
    }
    *out = kc;
    return KC_OK;
fail:
    eng_kvp_ctx_free(kc);
    return rc;
}

static const struct eng_model *eng_kvp_ctx_model(const struct eng_kvp_ctx *kc,
                                                 enum eng_kvp_mode mode) {
    return mode == ENG_KVP_AUX ? kc->aux : kc->base;
}

int eng_kvp_ctx_aux_free_blocks(struct eng_kvp_ctx *kc) {
    return eng_kv_pool_n_free(&kc->aux_pool);
}

int eng_kvp_ctx_aux_blocks(const struct eng_kvp_ctx *kc) {
    return kc->aux_pool.n_blocks;
}

int eng__kvp_capture_run(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                         struct eng_seq *seq, const int32_t *tokens, int n, float **k, float **v,
                         struct kc_error *err) {
    const struct eng_kv_capture cap = {.k = k, .v = v};
    struct eng_batch_item item = {.seq = seq,
                                  .tokens = tokens,
                                  .n_tokens = n,
                                  .logits_mode = ENG_LOGITS_NONE,
                                  .logits = NULL};
    const int rc = eng_forward(ctx, m, pool, &item, 1, &cap, err);
    eng_seq_release(pool, seq);
    return rc;
}

static double ms_since(uint64_t t0) {
    return (double)(kc_now_ns() - t0) / 1e6;
}

/* The PREDICT path of eng_kvp_prefill; seq is empty and n, tokens are checked. */
static int prefill_predict(struct eng_kvp_ctx *kc, struct eng_kv_pool *pool, struct eng_seq *seq,
                           const int32_t *tokens, int n, float *logits, struct eng_kvp_timings *t,
                           struct kc_error *err) {
    const struct eng_kvp *p = kc->pred;
    const int m = n - 1;
    int rc;
    uint64_t t0 = kc_now_ns();
    if (m > 0) {
        /* Aux forward over t[0..n-2], keeping its pre-RoPE K/V (invariant 1). */
        rc = eng__kvp_capture_run(kc->aux_ctx, kc->aux, &kc->aux_pool, &kc->aux_seq, tokens, m,
                                  kc->aux_k, kc->aux_v, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "aux");
            return rc;
        }
        t->aux_ms = ms_since(t0);
        /* Per aux layer: one GEMM for K and one for V over the m tokens, computing the maps
         * of every base layer that reads it at once (struct eng_kvp). */
        t0 = kc_now_ns();
        eng_dnn_enter(kc->dnn);
        for (int a = 0; a < p->shape.aux_layers; a++) {
            if (p->k[a] != NULL) {
                eng_linear_forward(kc->dnn, p->k[a], kc->aux_k[a], m, kc->pred_k[a]);
                eng_linear_forward(kc->dnn, p->v[a], kc->aux_v[a], m, kc->pred_v[a]);
            }
        }
        /* Rotate the predicted keys with the base RoPE and write them into its cache. */
        rc = eng_kv_inject_ld(kc->base, pool, seq, m, kc->pred_kl, kc->pred_vl, kc->pred_ld, err);
        if (rc != KC_OK) {
            return rc;
        }
        t->predict_ms = ms_since(t0);
    }
    /* The base processes only the last prompt token, attending to the predicted cache. */
    t0 = kc_now_ns();
    struct eng_batch_item item = {.seq = seq,
                                  .tokens = tokens + m,
                                  .n_tokens = 1,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = logits};
    rc = eng_forward(kc->base_ctx, kc->base, pool, &item, 1, NULL, err);
    t->base_first_step_ms = ms_since(t0);
    return rc;
}

int eng_kvp_prefill(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, struct eng_kv_pool *pool,
                    struct eng_seq *seq, const int32_t *tokens, int n, float *logits,
                    struct eng_kvp_timings *timings, struct kc_error *err) {
    if (seq == NULL || pool == NULL || tokens == NULL || logits == NULL || n < 1) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp prefill: needs a sequence, a pool, logits and "
                            "n >= 1 tokens (n = %d)",
                            n);
    }
    if (seq->n_tokens != 0) {
        return kc_error_set(err, KC_EINVAL, "kvp prefill: the sequence already holds %d tokens",
                            seq->n_tokens);
    }
    if (n > kc->max_ctx) {
        return kc_error_set(err, KC_ECONTEXT, "kvp prefill: %d tokens exceed the context of %d", n,
                            kc->max_ctx);
    }
    const struct eng_model *m = eng_kvp_ctx_model(kc, mode);
    const int V = eng_model_config_of(m)->vocab_size;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            return kc_error_set(err, KC_ERANGE, "kvp prefill: token id %d outside [0, %d)",
                                tokens[i], V);
        }
    }
    struct eng_kvp_timings t = {0};
    const uint64_t t0 = kc_now_ns();
    int rc;
    switch (mode) {
    case ENG_KVP_FULL:
    case ENG_KVP_AUX: {
        struct eng_batch_item item = {.seq = seq,
                                      .tokens = tokens,
                                      .n_tokens = n,
                                      .logits_mode = ENG_LOGITS_LAST,
                                      .logits = logits};
        rc = eng_forward(mode == ENG_KVP_FULL ? kc->base_ctx : kc->aux_ctx, m, pool, &item, 1, NULL,
                         err);
        if (mode == ENG_KVP_FULL) {
            t.base_first_step_ms = ms_since(t0);
        } else {
            t.aux_ms = ms_since(t0);
        }
        break;
    }
    case ENG_KVP_PREDICT:
        if (kc->pred == NULL) {
            return kc_error_set(err, KC_EINVAL, "kvp prefill: predict mode needs a predictor");
        }
        rc = prefill_predict(kc, pool, seq, tokens, n, logits, &t, err);
        break;
    default:
        return kc_error_set(err, KC_EINVAL, "kvp prefill: unknown mode %d", (int)mode);
    }
    if (rc != KC_OK) {
        eng_seq_release(pool, seq); /* invariant 1: empty again */
        return rc;
    }
    t.total_ms = ms_since(t0);
    if (timings != NULL) {
        *timings = t;
    }
    return KC_OK;
}

int eng_kvp_forward(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, struct eng_kv_pool *pool,
                    struct eng_seq *seq, const int32_t *tokens, int n,
                    enum eng_logits_mode logits_mode, float *logits, struct kc_error *err) {
    struct eng_batch_item item = {
        .seq = seq, .tokens = tokens, .n_tokens = n, .logits_mode = logits_mode, .logits = logits};
    return eng_forward(mode == ENG_KVP_AUX ? kc->aux_ctx : kc->base_ctx,
                       eng_kvp_ctx_model(kc, mode), pool, &item, 1, NULL, err);
}

/* FLOPs of a forward over positions pos0 .. pos0+n-1, with the lm_head for the last row
 * only (logits) or none. */
static double prefill_flops(const struct eng_model_config *c, int pos0, int n, bool logits) {
    const double lm = 2.0 * (double)c->vocab_size * (double)c->hidden_size;
    const double per_token = eng_model_config_flops_per_token(c, 0) - lm;
    double total = (double)n * per_token + (logits ? lm : 0.0);
    for (int i = 0; i < n; i++) {
        total += eng_model_config_flops_per_token(c, pos0 + i + 1) -
                 eng_model_config_flops_per_token(c, 0);
    }
    return total;
}

double eng_kvp_ttft_flops(enum eng_kvp_mode mode, const struct eng_model_config *base,
                          const struct eng_model_config *aux,
                          const struct eng_kvp_shape *pred_shape, int n) {
    if (n < 1) {
        return 0.0;
    }
    switch (mode) {
    case ENG_KVP_FULL:
        return prefill_flops(base, 0, n, true);
    case ENG_KVP_AUX:
        return prefill_flops(aux, 0, n, true);
    case ENG_KVP_PREDICT: {
        const struct eng_kvp_shape s =
            pred_shape != NULL ? *pred_shape : eng_kvp_shape_of_pair(base, aux);
        const double predictor = 2.0 * 2.0 * (double)s.base_layers * (double)s.base_kv_dim *
                                 (double)s.aux_kv_dim * (double)(n - 1);
        return prefill_flops(aux, 0, n - 1, false) + predictor +
               prefill_flops(base, n - 1, 1, true);
    }
    }
    return 0.0;
}
