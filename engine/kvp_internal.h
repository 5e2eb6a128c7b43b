/*
 * kvp_internal.h — the layouts of the KV Prediction objects, shared by engine/kvp_io.c
 * (predictors, bundles), engine/kvp.c (contexts, prefill) and engine/kvp_calibrate.c
 * (calibration). Not for use outside these three files.
 */
#ifndef ENG_KVP_INTERNAL_H
#define ENG_KVP_INTERNAL_H

#include "engine/kvp.h"
#include "engine/ops.h"

struct eng_kvp {
    struct eng_kvp_shape shape;
    int32_t *layer_map; /* [Lb] */
    float *k_w, *v_w;   /* [Lb, Nb, Na] f32 host copies (for saving and inspection) */
    float *k_b, *v_b;   /* [Lb, Nb] */
    /* [La] per aux layer a: the maps of every base layer l with layer_map[l] == a, stacked
     * in order of l into one packed [width[a], Na] + bias f32 linear (NULL when no base
     * layer reads a), so a prefill runs one K and one V GEMM per aux layer, not per base
     * layer: fewer, wider GEMMs. Base layer l's output is columns col[l] .. col[l] + Nb. */
    struct eng_linear **k;
    struct eng_linear **v;
    int32_t *width; /* [La] */
    int32_t *col;   /* [Lb] */
};

struct eng_kvp_ctx {
    const struct eng_model *base; /* shape and RoPE of the injected keys; no base context */
    const struct eng_model *aux;
    const struct eng_kvp *pred; /* NULL: no PREDICT */
    int max_rows;
    int max_ctx;
    struct eng_ctx *aux_ctx;          /* aux forwards (PREDICT, AUX, calibration) */
    struct eng_dnn *dnn;              /* predictor GEMMs */
    float **aux_k, **aux_v;           /* [La] -> [max_ctx, Na] captures, every aux layer */
    float **aux_kx, **aux_vx;         /* [La] scratch views into aux_k/aux_v at a row offset */
    float **pred_k, **pred_v;         /* [La] -> [max_ctx, width[a]] (when pred != NULL) */
    const float **pred_kl, **pred_vl; /* [Lb] views: pred_k[map[l]] + col[l] */
    size_t *pred_ld;                  /* [Lb] row stride of those views: width[map[l]] */
};

#endif /* ENG_KVP_INTERNAL_H */
