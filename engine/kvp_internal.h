/*
 * kvp_internal.h — the layouts of the KV Prediction objects, shared by engine/kvp.c
 * (predictor, bundle, prefill) and engine/kvp_calibrate.c (calibration). Not for use
 * outside these two files.
 */
#ifndef ENG_KVP_INTERNAL_H
#define ENG_KVP_INTERNAL_H

#include "engine/kvp.h"
#include "engine/ops.h"

struct eng_kvp {
    struct eng_kvp_shape shape;
    int32_t *layer_map;    /* [Lb] */
    float *k_w, *v_w;      /* [Lb, Nb, Na] f32 host copies (for saving and inspection) */
    float *k_b, *v_b;      /* [Lb, Nb] */
    struct eng_linear **k; /* [Lb] packed [Nb, Na] + bias, f32 */
    struct eng_linear **v; /* [Lb] */
};

struct eng_kvp_ctx {
    const struct eng_model *base;
    const struct eng_model *aux;
    const struct eng_kvp *pred; /* NULL: no PREDICT */
    int max_rows;
    int max_ctx;
    struct eng_ctx *base_ctx;
    struct eng_ctx *aux_ctx;
    struct eng_dnn *dnn;         /* predictor GEMMs */
    struct eng_kv_pool aux_pool; /* private: aux sequences of PREDICT and calibration */
    struct eng_seq aux_seq;      /* empty between calls */
    float **aux_k, **aux_v;      /* [La] -> [max_ctx, Na] captures, every aux layer */
    float **pred_k, **pred_v;    /* [Lb] -> [max_ctx - 1, Nb] (when pred != NULL) */
};

/* Runs model m (ctx, pool) over n tokens of an empty seq with a capture and no logits, then
 * releases seq. Used by calibration. */
int eng__kvp_capture_run(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                         struct eng_seq *seq, const int32_t *tokens, int n, float **k, float **v,
                         struct kc_error *err);

#endif /* ENG_KVP_INTERNAL_H */
