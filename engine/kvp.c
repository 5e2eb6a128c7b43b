/*
 * kvp.c — KV Prediction's prefill: modes, the per-thread context (aux forward context,
 * predictor GEMMs, capture and prediction buffers) and the prefill paths, eng_kvp_predict
 * above all (see kvp.h for the method). Predictor files, layer maps and bundles live in
 * engine/kvp_io.c, calibration in engine/kvp_calibrate.c.
 *
 * DESIGN invariants:
 *  1. The caller owns every KV pool, every sequence and the base forward context
 *     (struct eng_kvp_seqs); a struct eng_kvp_ctx holds only the aux side and the predictor.
 *     There is one way to a predicted cache, eng_kvp_predict: eng_kvp_prefill(PREDICT) calls
 *     it.
 *  2. eng_kvp_predict allocates nothing of its own: captures and predictions live in the
 *     context, sized for max_ctx at creation, and every predictor primitive is created there
 *     (eng_linear_prepare). Only the sequences' block tables grow (engine/kv_cache.c).
 *  3. The predictor's input rows for positions [c, n - 1) are one contiguous block of the
 *     capture buffers, row r holding position lo + r (lo = min(a, c)): the aux positions the
 *     call computes are captured at their row, the cached ones in [c, a) are read back from
 *     the aux cache (eng_kv_extract) into theirs. So one GEMM per aux layer covers them all.
 *  4. A failed call leaves the sequences to the caller (it releases them): nothing here
 *     releases or resets a sequence it did not create.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/kvp.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kvp_internal.h"
#include "engine/ops.h"

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
    const int La = kc->aux != NULL ? eng_model_config_of(kc->aux)->n_layers : 0;
    free_bufs(kc->aux_k, La);
    free_bufs(kc->aux_v, La);
    free(kc->aux_kx);
    free(kc->aux_vx);
    free_bufs(kc->pred_k, La);
    free_bufs(kc->pred_v, La);
    free(kc->pred_kl);
    free(kc->pred_vl);
    free(kc->pred_ld);
    eng_dnn_free(kc->dnn);
    eng_ctx_free(kc->aux_ctx);
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
    rc = eng_ctx_create(aux, max_rows, max_ctx, n_threads, &kc->aux_ctx, err);
    if (rc == KC_OK) {
        rc = eng_dnn_create(n_threads, &kc->dnn, err);
    }
    if (rc != KC_OK) {
        goto fail;
    }
    const int Na = ac->n_kv_heads * ac->head_dim;
    kc->aux_k = alloc_bufs(ac->n_layers, max_ctx, Na);
    kc->aux_v = alloc_bufs(ac->n_layers, max_ctx, Na);
    kc->aux_kx = kc_calloc((size_t)ac->n_layers, sizeof(float *));
    kc->aux_vx = kc_calloc((size_t)ac->n_layers, sizeof(float *));
    if (kc->aux_k == NULL || kc->aux_v == NULL || kc->aux_kx == NULL || kc->aux_vx == NULL) {
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

static double ms_since(uint64_t t0) {
    return (double)(kc_now_ns() - t0) / 1e6;
}

/* The checks every prefill makes on a request: tokens, logits, 1 <= n <= max_ctx, ids. */
static int check_request(const struct eng_kvp_ctx *kc, const struct eng_kvp_seqs *io,
                         const int32_t *tokens, int n, const float *logits, struct kc_error *err) {
    if (kc == NULL || io == NULL || tokens == NULL || logits == NULL || n < 1) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp prefill: needs a context, sequences, logits and n >= 1 tokens "
                            "(n = %d)",
                            n);
    }
    if (n > kc->max_ctx) {
        return kc_error_set(err, KC_ECONTEXT, "kvp prefill: %d tokens exceed the context of %d", n,
                            kc->max_ctx);
    }
    const int V = eng_model_config_of(kc->base)->vocab_size; /* == aux's (eng_kvp_check_pair) */
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            return kc_error_set(err, KC_ERANGE, "kvp prefill: token id %d outside [0, %d)",
                                tokens[i], V);
        }
    }
    return KC_OK;
}

static bool has_base(const struct eng_kvp_seqs *io) {
    return io->base_ctx != NULL && io->base_pool != NULL && io->base != NULL;
}

static bool has_aux(const struct eng_kvp_seqs *io) {
    return io->aux_pool != NULL && io->aux != NULL;
}

int eng_kvp_predict(struct eng_kvp_ctx *kc, const struct eng_kvp_seqs *io, const int32_t *tokens,
                    int n, float *logits, struct eng_kvp_timings *t, struct kc_error *err) {
    int rc = check_request(kc, io, tokens, n, logits, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (!has_base(io) || !has_aux(io)) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp predict: needs a base context, both pools and both sequences");
    }
    if (kc->pred == NULL) {
        return kc_error_set(err, KC_EINVAL, "kvp predict: predict mode needs a predictor");
    }
    const struct eng_kvp *p = kc->pred;
    const int c = io->base->n_tokens, a = io->aux->n_tokens, m = n - 1;
    const int bs = io->base_pool->block_size;
    if (c < 0 || c >= n || c % bs != 0) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp predict: a base prefix of %d positions must be a multiple of "
                            "the block size %d and below the %d prompt tokens",
                            c, bs, n);
    }
    if (a < 0 || a > m) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp predict: an aux prefix of %d positions exceeds the %d tokens "
                            "the aux model reads",
                            a, m);
    }
    struct eng_kvp_timings tm = {0};
    const uint64_t t_all = kc_now_ns();
    const int lo = a < c ? a : c; /* row 0 of the capture buffers holds position lo */
    const int Na = p->shape.aux_kv_dim, La = p->shape.aux_layers;
    uint64_t t0 = kc_now_ns();
    if (a < m) {
        /* Aux forward over t[a..n-2], capturing pre-RoPE K/V at row (position - lo), needed
         * only when some of those positions are predicted (invariant 3). */
        for (int al = 0; al < La; al++) {
            kc->aux_kx[al] = kc->aux_k[al] + (size_t)(a - lo) * (size_t)Na;
            kc->aux_vx[al] = kc->aux_v[al] + (size_t)(a - lo) * (size_t)Na;
        }
        const struct eng_kv_capture cap = {.k = kc->aux_kx, .v = kc->aux_vx};
        struct eng_batch_item item = {.seq = io->aux,
                                      .tokens = tokens + a,
                                      .n_tokens = m - a,
                                      .logits_mode = ENG_LOGITS_NONE,
                                      .logits = NULL};
        rc = eng_forward(kc->aux_ctx, kc->aux, io->aux_pool, &item, 1, m > c ? &cap : NULL, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "aux");
            return rc;
        }
        tm.aux_ms = ms_since(t0);
    }
    if (c < m) {
        t0 = kc_now_ns();
        if (a > c) {
            /* Positions [c, a) come from the cached aux prefix, into rows 0 .. a - c. */
            rc = eng_kv_extract(kc->aux, io->aux_pool, io->aux, c, a - c, kc->aux_k, kc->aux_v,
                                NULL, err);
            if (rc != KC_OK) {
                kc_error_prefix(err, "aux prefix");
                return rc;
            }
        }
        /* Per aux layer: one GEMM for K and one for V over the m - c predicted positions,
         * computing the maps of every base layer that reads it at once (struct eng_kvp). */
        const size_t off = (size_t)(c - lo) * (size_t)Na;
        eng_dnn_enter(kc->dnn);
        for (int al = 0; al < La; al++) {
            if (p->k[al] != NULL) {
                eng_linear_forward(kc->dnn, p->k[al], kc->aux_k[al] + off, m - c, kc->pred_k[al]);
                eng_linear_forward(kc->dnn, p->v[al], kc->aux_v[al] + off, m - c, kc->pred_v[al]);
            }
        }
        /* Rotate the predicted keys with the base RoPE and write them after the exact
         * prefix. */
        rc = eng_kv_inject_ld(kc->base, io->base_pool, io->base, m - c, kc->pred_kl, kc->pred_vl,
                              kc->pred_ld, err);
        if (rc != KC_OK) {
            return rc;
        }
        tm.predict_ms = ms_since(t0);
    }
    /* The base processes only the last prompt token, attending to the predicted cache. */
    t0 = kc_now_ns();
    struct eng_batch_item item = {.seq = io->base,
                                  .tokens = tokens + m,
                                  .n_tokens = 1,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = logits};
    rc = eng_forward(io->base_ctx, kc->base, io->base_pool, &item, 1, NULL, err);
    if (rc != KC_OK) {
        return rc;
    }
    tm.base_first_step_ms = ms_since(t0);
    tm.total_ms = ms_since(t_all);
    if (t != NULL) {
        *t = tm;
    }
    return KC_OK;
}

int eng_kvp_prefill(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, const struct eng_kvp_seqs *io,
                    const int32_t *tokens, int n, float *logits, struct eng_kvp_timings *t,
                    struct kc_error *err) {
    if (mode == ENG_KVP_PREDICT) {
        return eng_kvp_predict(kc, io, tokens, n, logits, t, err);
    }
    if (mode != ENG_KVP_FULL && mode != ENG_KVP_AUX) {
        return kc_error_set(err, KC_EINVAL, "kvp prefill: unknown mode %d", (int)mode);
    }
    int rc = check_request(kc, io, tokens, n, logits, err);
    if (rc != KC_OK) {
        return rc;
    }
    const bool full = mode == ENG_KVP_FULL;
    if (full ? !has_base(io) : !has_aux(io)) {
        return kc_error_set(err, KC_EINVAL, "kvp prefill: %s mode needs its %s",
                            eng_kvp_mode_name(mode),
                            full ? "base context, pool and sequence" : "aux pool and sequence");
    }
    struct eng_seq *seq = full ? io->base : io->aux;
    const int c = seq->n_tokens;
    if (c < 0 || c >= n) {
        return kc_error_set(err, KC_EINVAL,
                            "kvp prefill: the sequence already holds %d of the %d tokens", c, n);
    }
    struct eng_kvp_timings tm = {0};
    const uint64_t t0 = kc_now_ns();
    struct eng_batch_item item = {.seq = seq,
                                  .tokens = tokens + c,
                                  .n_tokens = n - c,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = logits};
    rc = full ? eng_forward(io->base_ctx, kc->base, io->base_pool, &item, 1, NULL, err)
              : eng_forward(kc->aux_ctx, kc->aux, io->aux_pool, &item, 1, NULL, err);
    if (rc != KC_OK) {
        return rc;
    }
    tm.total_ms = ms_since(t0);
    if (full) {
        tm.base_first_step_ms = tm.total_ms;
    } else {
        tm.aux_ms = tm.total_ms;
    }
    if (t != NULL) {
        *t = tm;
    }
    return KC_OK;
}

int eng_kvp_forward(struct eng_kvp_ctx *kc, enum eng_kvp_mode mode, const struct eng_kvp_seqs *io,
                    const int32_t *tokens, int n, enum eng_logits_mode logits_mode, float *logits,
                    struct kc_error *err) {
    const bool aux = mode == ENG_KVP_AUX;
    if (kc == NULL || io == NULL || (aux ? !has_aux(io) : !has_base(io))) {
        return kc_error_set(err, KC_EINVAL, "kvp forward: %s mode needs its %s",
                            eng_kvp_mode_name(mode),
                            aux ? "aux pool and sequence" : "base context, pool and sequence");
    }
    struct eng_batch_item item = {.seq = aux ? io->aux : io->base,
                                  .tokens = tokens,
                                  .n_tokens = n,
                                  .logits_mode = logits_mode,
                                  .logits = logits};
    return aux ? eng_forward(kc->aux_ctx, kc->aux, io->aux_pool, &item, 1, NULL, err)
               : eng_forward(io->base_ctx, kc->base, io->base_pool, &item, 1, NULL, err);
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
