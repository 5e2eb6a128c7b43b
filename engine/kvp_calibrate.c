/*
 * kvp_calibrate.c — closed-form calibration of a KV predictor: ridge regression of each base
 * layer's pre-RoPE K and V on its mapped aux layer's, from paired activations of both models
 * over calibration text (declared in kvp.h).
 *
 * Place in the data flow: `kvcast calibrate` feeds windows of tokens to eng_kvp_calib_window,
 * then calls eng_kvp_calib_solve and eng_kvp_save. Tests feed synthetic rows through
 * eng_kvp_calib_add.
 *
 * DESIGN invariants:
 *  1. Per window the cross products X1^T X1 and X1^T Y (X1 = [X, 1]) are computed by oneDNN
 *     (eng_gram_atb, f32) and added into f64 accumulators, so the sums over millions of
 *     tokens do not lose precision; only one window's worth is ever summed in f32.
 *  2. X1^T X1 is accumulated once per aux layer the map uses (for K and for V), not once per
 *     base layer: several base layers usually share an aux layer.
 *  3. The ridge term is ridge * s on the feature diagonal, s = mean diagonal of X^T X, and 0
 *     on the bias: scale-free, and the intercept is never shrunk. ridge = 0 is ordinary least
 *     squares (and recovers an exact affine map from noiseless data).
 *  4. The solve is a Cholesky factorisation in f64 of the d x d system (d = Na + 1) shared by
 *     every base layer mapped to the same aux layer; a non-positive pivot is reported, never
 *     papered over.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kvp.h"
#include "engine/kvp_internal.h"
#include "engine/ops_gram.h"

struct eng_kvp_calib {
    struct eng_kvp_shape shape;
    int32_t *map;   /* [Lb] */
    bool *aux_used; /* [La] */
    struct eng_gram *gram;
    int64_t rows;
    double **gk, **gv; /* [La] -> [d, d] (NULL for aux layers not in the map) */
    double **rk, **rv; /* [Lb] -> [d, Nb] */
    /* Scratch, grown on demand (calibration is not a hot path). */
    float *x1;   /* [cap, d] */
    float *prod; /* [d, max(d, Nb)] */
    int cap;
    float **base_k, **base_v; /* [Lb] -> [base_cap, Nb] captures of eng_kvp_calib_window */
    int base_cap;
};

static void free_f64(double **b, int n) {
    if (b == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        free(b[i]);
    }
    free(b);
}

static void free_f32(float **b, int n) {
    if (b == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        kc_aligned_free(b[i]);
    }
    free(b);
}

void eng_kvp_calib_free(struct eng_kvp_calib *c) {
    if (c == NULL) {
        return;
    }
    const int La = c->shape.aux_layers, Lb = c->shape.base_layers;
    free_f64(c->gk, La);
    free_f64(c->gv, La);
    free_f64(c->rk, Lb);
    free_f64(c->rv, Lb);
    free_f32(c->base_k, Lb);
    free_f32(c->base_v, Lb);
    kc_aligned_free(c->x1);
    kc_aligned_free(c->prod);
    eng_gram_free(c->gram);
    free(c->aux_used);
    free(c->map);
    free(c);
}

int eng_kvp_calib_create(const struct eng_kvp_shape *shape, const int32_t *layer_map, int n_threads,
                         struct eng_kvp_calib **out, struct kc_error *err) {
    if (shape == NULL || layer_map == NULL) {
        return kc_error_set(err, KC_EINVAL, "calibration: missing shape or layer map");
    }
    /* The same limits eng_kvp_create enforces (it checks again at solve). */
    if (shape->base_layers < 1 || shape->base_layers > ENG_MAX_LAYERS || shape->aux_layers < 1 ||
        shape->aux_layers > ENG_MAX_LAYERS || shape->base_kv_dim < 1 || shape->aux_kv_dim < 1 ||
        shape->base_kv_dim > ENG_MAX_HEADS * ENG_MAX_HEAD_DIM ||
        shape->aux_kv_dim > ENG_MAX_HEADS * ENG_MAX_HEAD_DIM) {
        return kc_error_set(err, KC_EINVAL, "calibration: bad shape (%d/%d layers, kv dims %d/%d)",
                            shape->base_layers, shape->aux_layers, shape->base_kv_dim,
                            shape->aux_kv_dim);
    }
    const int Lb = shape->base_layers, La = shape->aux_layers;
    for (int l = 0; l < Lb; l++) {
        if (layer_map[l] < 0 || layer_map[l] >= La) {
            return kc_error_set(err, KC_EINVAL,
                                "calibration: layer_map[%d] = %d is outside "
                                "[0, %d)",
                                l, (int)layer_map[l], La);
        }
    }
    const size_t d = (size_t)shape->aux_kv_dim + 1, Nb = (size_t)shape->base_kv_dim;
    int rc;
    struct eng_kvp_calib *c = kc_calloc(1, sizeof(*c));
    if (c == NULL) {
        return kc_error_set(err, KC_ENOMEM, "calibration: out of memory");
    }
    c->shape = *shape;
    c->map = kc_calloc((size_t)Lb, sizeof(int32_t));
    c->aux_used = kc_calloc((size_t)La, sizeof(bool));
    c->gk = kc_calloc((size_t)La, sizeof(double *));
    c->gv = kc_calloc((size_t)La, sizeof(double *));
    c->rk = kc_calloc((size_t)Lb, sizeof(double *));
    c->rv = kc_calloc((size_t)Lb, sizeof(double *));
    c->prod = kc_aligned_alloc(d * (d > Nb ? d : Nb) * sizeof(float));
    if (c->map == NULL || c->aux_used == NULL || c->gk == NULL || c->gv == NULL || c->rk == NULL ||
        c->rv == NULL || c->prod == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "calibration: out of memory");
        goto fail;
    }
    memcpy(c->map, layer_map, (size_t)Lb * sizeof(int32_t));
    for (int l = 0; l < Lb; l++) {
        c->aux_used[layer_map[l]] = true;
        c->rk[l] = kc_calloc(d * Nb, sizeof(double));
        c->rv[l] = kc_calloc(d * Nb, sizeof(double));
        if (c->rk[l] == NULL || c->rv[l] == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "calibration: out of memory for accumulators");
            goto fail;
        }
    }
    for (int a = 0; a < La; a++) {
        if (c->aux_used[a]) {
            c->gk[a] = kc_calloc(d * d, sizeof(double));
            c->gv[a] = kc_calloc(d * d, sizeof(double));
            if (c->gk[a] == NULL || c->gv[a] == NULL) {
                rc = kc_error_set(err, KC_ENOMEM, "calibration: out of memory for accumulators");
                goto fail;
            }
        }
    }
    rc = eng_gram_create(n_threads, &c->gram, err);
    if (rc != KC_OK) {
        goto fail;
    }
    *out = c;
    return KC_OK;
fail:
    eng_kvp_calib_free(c);
    return rc;
}

int64_t eng_kvp_calib_rows(const struct eng_kvp_calib *c) {
    return c->rows;
}

static void add_f32(double *acc, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        acc[i] += (double)x[i];
    }
}

/* Accumulates one aux layer's G and every mapped base layer's R for K (which 'k') or V. */
static int add_one(struct eng_kvp_calib *c, int a, int n, const float *x, const float *const *y,
                   double *g, double **r, struct kc_error *err) {
    const int Na = c->shape.aux_kv_dim, Nb = c->shape.base_kv_dim, d = Na + 1;
    /* X1 = [X, 1] */
    for (int t = 0; t < n; t++) {
        memcpy(c->x1 + (size_t)t * d, x + (size_t)t * Na, (size_t)Na * sizeof(float));
        c->x1[(size_t)t * d + Na] = 1.0f;
    }
    int rc = eng_gram_atb(c->gram, c->x1, c->x1, n, d, d, c->prod, err);
    if (rc != KC_OK) {
        return rc;
    }
    add_f32(g, c->prod, (size_t)d * d);
    for (int l = 0; l < c->shape.base_layers; l++) {
        if (c->map[l] != a) {
            continue;
        }
        rc = eng_gram_atb(c->gram, c->x1, y[l], n, d, Nb, c->prod, err);
        if (rc != KC_OK) {
            return rc;
        }
        add_f32(r[l], c->prod, (size_t)d * Nb);
    }
    return KC_OK;
}

int eng_kvp_calib_add(struct eng_kvp_calib *c, int n, const float *const *aux_k,
                      const float *const *aux_v, const float *const *base_k,
                      const float *const *base_v, struct kc_error *err) {
    if (n < 1 || aux_k == NULL || aux_v == NULL || base_k == NULL || base_v == NULL) {
        return kc_error_set(err, KC_EINVAL, "calibration: bad rows (n = %d)", n);
    }
    for (int l = 0; l < c->shape.base_layers; l++) {
        const int a = c->map[l];
        if (base_k[l] == NULL || base_v[l] == NULL || aux_k[a] == NULL || aux_v[a] == NULL) {
            return kc_error_set(err, KC_EINVAL,
                                "calibration: missing rows for base layer %d "
                                "(aux layer %d)",
                                l, a);
        }
    }
    const size_t d = (size_t)c->shape.aux_kv_dim + 1;
    if (n > c->cap) {
        float *x1 = kc_aligned_alloc((size_t)n * d * sizeof(float));
        if (x1 == NULL) {
            return kc_error_set(err, KC_ENOMEM, "calibration: out of memory for %d rows", n);
        }
        kc_aligned_free(c->x1);
        c->x1 = x1;
        c->cap = n;
    }
    for (int a = 0; a < c->shape.aux_layers; a++) {
        if (!c->aux_used[a]) {
            continue;
        }
        int rc = add_one(c, a, n, aux_k[a], base_k, c->gk[a], c->rk, err);
        if (rc == KC_OK) {
            rc = add_one(c, a, n, aux_v[a], base_v, c->gv[a], c->rv, err);
        }
        if (rc != KC_OK) {
            return rc;
        }
    }
    c->rows += n;
    return KC_OK;
}

/* Runs model m (ctx, pool) over n tokens of the empty seq with a capture and no logits, then
 * releases seq (on failure too). */
static int capture_run(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
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

int eng_kvp_calib_window(struct eng_kvp_calib *c, struct eng_kvp_ctx *kc, struct eng_ctx *base_ctx,
                         struct eng_kv_pool *base_pool, struct eng_kv_pool *aux_pool,
                         const int32_t *tokens, int n, struct kc_error *err) {
    if (base_ctx == NULL || base_pool == NULL || aux_pool == NULL || tokens == NULL) {
        return kc_error_set(err, KC_EINVAL,
                            "calibration: needs a base context, both pools and tokens");
    }
    const struct eng_kvp_shape want =
        eng_kvp_shape_of_pair(eng_model_config_of(kc->base), eng_model_config_of(kc->aux));
    if (memcmp(&want, &c->shape, sizeof(want)) != 0) {
        return kc_error_set(err, KC_EINVAL,
                            "calibration: the models do not have the "
                            "accumulators' shape");
    }
    if (n < 1 || n > kc->max_ctx) {
        return kc_error_set(err, KC_ECONTEXT, "calibration: window of %d tokens outside [1, %d]", n,
                            kc->max_ctx);
    }
    const int Lb = c->shape.base_layers, Nb = c->shape.base_kv_dim;
    if (n > c->base_cap) {
        free_f32(c->base_k, Lb);
        free_f32(c->base_v, Lb);
        c->base_cap = 0;
        c->base_k = kc_calloc((size_t)Lb, sizeof(float *));
        c->base_v = kc_calloc((size_t)Lb, sizeof(float *));
        bool ok = c->base_k != NULL && c->base_v != NULL;
        for (int l = 0; l < Lb && ok; l++) {
            c->base_k[l] = kc_aligned_alloc((size_t)n * Nb * sizeof(float));
            c->base_v[l] = kc_aligned_alloc((size_t)n * Nb * sizeof(float));
            ok = c->base_k[l] != NULL && c->base_v[l] != NULL;
        }
        if (!ok) {
            return kc_error_set(err, KC_ENOMEM, "calibration: out of memory for base captures");
        }
        c->base_cap = n;
    }
    struct eng_seq seq = {0};
    int rc = capture_run(base_ctx, kc->base, base_pool, &seq, tokens, n, c->base_k, c->base_v, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "calibration, base");
        return rc;
    }
    rc = capture_run(kc->aux_ctx, kc->aux, aux_pool, &seq, tokens, n, kc->aux_k, kc->aux_v, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "calibration, aux");
        return rc;
    }
    return eng_kvp_calib_add(c, n, (const float *const *)kc->aux_k, (const float *const *)kc->aux_v,
                             (const float *const *)c->base_k, (const float *const *)c->base_v, err);
}

/* In-place lower Cholesky factor of the d x d SPD matrix a (row-major, lower triangle used).
 * Returns the first column whose pivot is not positive (relative to its diagonal), or -1. */
static int cholesky(double *a, int d) {
    for (int j = 0; j < d; j++) {
        const double diag = a[(size_t)j * d + j];
        double s = diag;
        for (int k = 0; k < j; k++) {
            s -= a[(size_t)j * d + k] * a[(size_t)j * d + k];
        }
        /* A pivot that cancelled to rounding noise means a (numerically) singular system. */
        if (!(s > 1e-12 * diag) || !isfinite(s)) {
            return j;
        }
        const double ljj = sqrt(s);
        a[(size_t)j * d + j] = ljj;
        for (int i = j + 1; i < d; i++) {
            double t = a[(size_t)i * d + j];
            for (int k = 0; k < j; k++) {
                t -= a[(size_t)i * d + k] * a[(size_t)j * d + k];
            }
            a[(size_t)i * d + j] = t / ljj;
        }
    }
    return -1;
}

/* Solves L L^T w = r column by column for the [d, q] right-hand sides r (in place). */
static void cholesky_solve(const double *lo, int d, double *r, int q, double *col) {
    for (int j = 0; j < q; j++) {
        for (int i = 0; i < d; i++) {
            double s = r[(size_t)i * q + j];
            for (int k = 0; k < i; k++) {
                s -= lo[(size_t)i * d + k] * col[k];
            }
            col[i] = s / lo[(size_t)i * d + i];
        }
        for (int i = d - 1; i >= 0; i--) {
            double s = col[i];
            for (int k = i + 1; k < d; k++) {
                s -= lo[(size_t)k * d + i] * col[k];
            }
            col[i] = s / lo[(size_t)i * d + i];
        }
        for (int i = 0; i < d; i++) {
            r[(size_t)i * q + j] = col[i];
        }
    }
}

int eng_kvp_calib_solve(const struct eng_kvp_calib *c, double ridge, struct eng_kvp **out,
                        struct kc_error *err) {
    if (!(ridge >= 0.0) || !isfinite(ridge)) {
        return kc_error_set(err, KC_EINVAL, "calibration: ridge must be a finite number >= 0");
    }
    if (c->rows < 1) {
        return kc_error_set(err, KC_EINVAL, "calibration: no data accumulated");
    }
    const int Lb = c->shape.base_layers, La = c->shape.aux_layers;
    const int Na = c->shape.aux_kv_dim, Nb = c->shape.base_kv_dim, d = Na + 1;
    const size_t nw = (size_t)Lb * Nb * Na;
    float *kw = kc_calloc(nw, sizeof(float)), *vw = kc_calloc(nw, sizeof(float));
    float *kb = kc_calloc((size_t)Lb * Nb, sizeof(float));
    float *vb = kc_calloc((size_t)Lb * Nb, sizeof(float));
    double *lo = kc_calloc((size_t)d * d, sizeof(double));
    double *w = kc_calloc((size_t)d * Nb, sizeof(double));
    double *col = kc_calloc((size_t)d, sizeof(double));
    int rc = KC_OK;
    if (kw == NULL || vw == NULL || kb == NULL || vb == NULL || lo == NULL || w == NULL ||
        col == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "calibration: out of memory");
        goto done;
    }
    for (int a = 0; a < La && rc == KC_OK; a++) {
        if (!c->aux_used[a]) {
            continue;
        }
        for (int which = 0; which < 2 && rc == KC_OK; which++) {
            const double *g = which == 0 ? c->gk[a] : c->gv[a];
            memcpy(lo, g, (size_t)d * d * sizeof(double));
            double s = 0.0;
            for (int i = 0; i < Na; i++) {
                s += g[(size_t)i * d + i];
            }
            s /= Na;
            for (int i = 0; i < Na; i++) {
                lo[(size_t)i * d + i] += ridge * s;
            }
            const int bad = cholesky(lo, d);
            if (bad >= 0) {
                rc = kc_error_set(err, KC_ERANGE,
                                  "calibration: the %s system of aux layer %d is "
                                  "not positive definite (column %d) after %lld rows; add data "
                                  "or raise --ridge",
                                  which == 0 ? "key" : "value", a, bad, (long long)c->rows);
                break;
            }
            for (int l = 0; l < Lb; l++) {
                if (c->map[l] != a) {
                    continue;
                }
                memcpy(w, which == 0 ? c->rk[l] : c->rv[l], (size_t)d * Nb * sizeof(double));
                cholesky_solve(lo, d, w, Nb, col);
                float *wt = (which == 0 ? kw : vw) + (size_t)l * Nb * Na;
                float *bt = (which == 0 ? kb : vb) + (size_t)l * Nb;
                for (int j = 0; j < Nb; j++) {
                    for (int i = 0; i < Na; i++) {
                        wt[(size_t)j * Na + i] = (float)w[(size_t)i * Nb + j];
                    }
                    bt[j] = (float)w[(size_t)Na * Nb + j];
                }
            }
        }
    }
    if (rc == KC_OK) {
        rc = eng_kvp_create(&c->shape, c->map, kw, kb, vw, vb, out, err);
    }
done:
    free(kw);
    free(vw);
    free(kb);
    free(vb);
    free(lo);
    free(w);
    free(col);
    return rc;
}
