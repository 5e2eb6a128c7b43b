/*
 * kvp_io.c — KV Prediction's files: predictor shapes and pairs, layer maps, predictors
 * (creation, random ones, safetensors load and save, accessors, the fit check against a
 * model pair) and bundles (base + aux + predictor; see kvp.h for the formats). The prefill
 * paths live in engine/kvp.c, calibration in engine/kvp_calibrate.c.
 *
 * DESIGN invariants:
 *  1. Every predictor map is an eng_linear ([Nb, Na] weights + bias, f32 both for prefill and
 *     decode row counts), stacked per aux layer (struct eng_kvp), so applying the maps that
 *     read one aux layer is one oneDNN GEMM for K and one for V over all predicted tokens.
 *  2. A predictor is validated completely at load or creation (shape, map, key space, every
 *     tensor's dtype and shape, no stray tensors); the prefill paths trust it and check only
 *     the request.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/kvp.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/io/dtype.h"
#include "engine/io/safetensors.h"
#include "engine/kvp_internal.h"
#include "engine/ops.h"

/* Largest merged-head K/V width a predictor may have (keeps Nb * Na far from overflow). */
#define KVP_MAX_KV_DIM (ENG_MAX_HEADS * ENG_MAX_HEAD_DIM)
/* tokenizer.json files are compared up to this size (the tokenizer's own limit). */
#define KVP_MAX_TOKENIZER_BYTES ((size_t)64 << 20)
#define KVP_MAX_BUNDLE_BYTES ((size_t)1 << 20)

/* ---- shapes and pairs ---- */

struct eng_kvp_shape eng_kvp_shape_of_pair(const struct eng_model_config *base,
                                           const struct eng_model_config *aux) {
    struct eng_kvp_shape s = {
        .base_layers = base->n_layers,
        .aux_layers = aux->n_layers,
        .base_kv_dim = base->n_kv_heads * base->head_dim,
        .aux_kv_dim = aux->n_kv_heads * aux->head_dim,
    };
    return s;
}

int eng_kvp_check_pair(const struct eng_model_config *base, const struct eng_model_config *aux,
                       struct kc_error *err) {
    if (base->vocab_size != aux->vocab_size) {
        return kc_error_set(err, KC_EINVAL,
                            "base and aux models have different vocabularies (%d vs %d tokens)",
                            base->vocab_size, aux->vocab_size);
    }
    return KC_OK;
}

static int shape_check(const struct eng_kvp_shape *s, struct kc_error *err) {
    if (s->base_layers < 1 || s->base_layers > ENG_MAX_LAYERS || s->aux_layers < 1 ||
        s->aux_layers > ENG_MAX_LAYERS) {
        return kc_error_set(err, KC_EINVAL,
                            "predictor: layer counts %d (base) and %d (aux) must "
                            "be in [1, %d]",
                            s->base_layers, s->aux_layers, ENG_MAX_LAYERS);
    }
    if (s->base_kv_dim < 1 || s->base_kv_dim > KVP_MAX_KV_DIM || s->aux_kv_dim < 1 ||
        s->aux_kv_dim > KVP_MAX_KV_DIM) {
        return kc_error_set(err, KC_EINVAL,
                            "predictor: kv dims %d (base) and %d (aux) must be "
                            "in [1, %d]",
                            s->base_kv_dim, s->aux_kv_dim, KVP_MAX_KV_DIM);
    }
    return KC_OK;
}

static int map_check(const struct eng_kvp_shape *s, const int32_t *map, struct kc_error *err) {
    for (int l = 0; l < s->base_layers; l++) {
        if (map[l] < 0 || map[l] >= s->aux_layers) {
            return kc_error_set(err, KC_EINVAL,
                                "predictor: layer_map[%d] = %d is outside "
                                "[0, %d) (aux layers)",
                                l, (int)map[l], s->aux_layers);
        }
    }
    return KC_OK;
}

/* ---- layer maps ---- */

void eng_kvp_layer_map_auto(int base_layers, int aux_layers, int32_t *map) {
    for (int l = 0; l < base_layers; l++) {
        map[l] = base_layers == 1
                     ? 0
                     : (int32_t)lround((double)l * (aux_layers - 1) / (double)(base_layers - 1));
    }
}

int eng_kvp_layer_map_parse(const char *s, const struct eng_kvp_shape *shape, int32_t *map,
                            struct kc_error *err) {
    const char *p = s;
    bool bracket = false;
    int n = 0;
    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (*p == '[') {
        bracket = true;
        p++;
    }
    for (;;) {
        while (isspace((unsigned char)*p)) {
            p++;
        }
        if (!isdigit((unsigned char)*p)) {
            return kc_error_set(err, KC_EFORMAT,
                                "layer map '%.64s': expected a layer index at "
                                "offset %d",
                                s, (int)(p - s));
        }
        errno = 0;
        char *end = NULL;
        const long v = strtol(p, &end, 10);
        if (errno != 0 || v < 0 || v >= shape->aux_layers) {
            return kc_error_set(err, KC_EFORMAT,
                                "layer map '%.64s': entry %d (%.*s) is outside "
                                "[0, %d) (aux layers)",
                                s, n, (int)(end - p) < 16 ? (int)(end - p) : 16, p,
                                shape->aux_layers);
        }
        if (n >= shape->base_layers) {
            return kc_error_set(err, KC_EFORMAT,
                                "layer map '%.64s': more than %d entries (one per "
                                "base layer)",
                                s, shape->base_layers);
        }
        map[n++] = (int32_t)v;
        p = end;
        while (isspace((unsigned char)*p)) {
            p++;
        }
        if (*p == ',') {
            p++;
            continue;
        }
        break;
    }
    if (bracket) {
        if (*p != ']') {
            return kc_error_set(err, KC_EFORMAT, "layer map '%.64s': missing ']'", s);
        }
        p++;
        while (isspace((unsigned char)*p)) {
            p++;
        }
    }
    if (*p != '\0') {
        return kc_error_set(err, KC_EFORMAT, "layer map '%.64s': unexpected '%c' at offset %d", s,
                            *p, (int)(p - s));
    }
    if (n != shape->base_layers) {
        return kc_error_set(err, KC_EFORMAT,
                            "layer map '%.64s': %d entries, the base model has "
                            "%d layers",
                            s, n, shape->base_layers);
    }
    return KC_OK;
}

/* ---- predictors ---- */

void eng_kvp_free(struct eng_kvp *p) {
    if (p == NULL) {
        return;
    }
    for (int a = 0; a < p->shape.aux_layers; a++) {
        if (p->k != NULL) {
            eng_linear_free(p->k[a]);
        }
        if (p->v != NULL) {
            eng_linear_free(p->v[a]);
        }
    }
    free(p->k);
    free(p->v);
    free(p->width);
    free(p->col);
    free(p->k_w);
    free(p->v_w);
    free(p->k_b);
    free(p->v_b);
    free(p->layer_map);
    free(p);
}

/* Allocates a predictor of a checked shape and map with zeroed host arrays. */
static int kvp_alloc(const struct eng_kvp_shape *s, const int32_t *map, struct eng_kvp **out,
                     struct kc_error *err) {
    int rc = shape_check(s, err);
    if (rc != KC_OK) {
        return rc;
    }
    rc = map_check(s, map, err);
    if (rc != KC_OK) {
        return rc;
    }
    const size_t Lb = (size_t)s->base_layers, Nb = (size_t)s->base_kv_dim;
    const size_t Na = (size_t)s->aux_kv_dim;
    size_t nw;
    if (!kc_size_mul(Lb * Nb, Na, &nw)) {
        return kc_error_set(err, KC_ERANGE, "predictor: %zu x %zu x %zu weights overflow", Lb, Nb,
                            Na);
    }
    struct eng_kvp *p = kc_calloc(1, sizeof(*p));
    if (p == NULL) {
        return kc_error_set(err, KC_ENOMEM, "predictor: out of memory");
    }
    p->shape = *s;
    p->layer_map = kc_calloc(Lb, sizeof(int32_t));
    p->k_w = kc_calloc(nw, sizeof(float));
    p->v_w = kc_calloc(nw, sizeof(float));
    p->k_b = kc_calloc(Lb * Nb, sizeof(float));
    p->v_b = kc_calloc(Lb * Nb, sizeof(float));
    p->k = kc_calloc((size_t)s->aux_layers, sizeof(struct eng_linear *));
    p->v = kc_calloc((size_t)s->aux_layers, sizeof(struct eng_linear *));
    p->width = kc_calloc((size_t)s->aux_layers, sizeof(int32_t));
    p->col = kc_calloc(Lb, sizeof(int32_t));
    if (p->layer_map == NULL || p->k_w == NULL || p->v_w == NULL || p->k_b == NULL ||
        p->v_b == NULL || p->k == NULL || p->v == NULL || p->width == NULL || p->col == NULL) {
        eng_kvp_free(p);
        return kc_error_set(err, KC_ENOMEM, "predictor: out of memory for %zu weights", 2 * nw);
    }
    memcpy(p->layer_map, map, Lb * sizeof(int32_t));
    *out = p;
    return KC_OK;
}

/* Packs every map of p from its host arrays (invariant 1), stacked per aux layer (see
 * struct eng_kvp). */
static int kvp_pack(struct eng_kvp *p, struct kc_error *err) {
    const int Lb = p->shape.base_layers, La = p->shape.aux_layers;
    const int Nb = p->shape.base_kv_dim, Na = p->shape.aux_kv_dim;
    struct eng_weight_part *kp = kc_calloc((size_t)Lb, sizeof(*kp));
    struct eng_weight_part *vp = kc_calloc((size_t)Lb, sizeof(*vp));
    int rc =
        kp != NULL && vp != NULL ? KC_OK : kc_error_set(err, KC_ENOMEM, "predictor: out of memory");
    for (int a = 0; a < La && rc == KC_OK; a++) {
        int n_parts = 0;
        for (int l = 0; l < Lb; l++) {
            if (p->layer_map[l] != a) {
                continue;
            }
            const size_t wo = (size_t)l * Nb * Na, bo = (size_t)l * Nb;
            p->col[l] = n_parts * Nb;
            kp[n_parts] = (struct eng_weight_part){
                .data = p->k_w + wo, .bias = p->k_b + bo, .dtype = ENG_DTYPE_F32, .rows = Nb};
            vp[n_parts] = (struct eng_weight_part){
                .data = p->v_w + wo, .bias = p->v_b + bo, .dtype = ENG_DTYPE_F32, .rows = Nb};
            n_parts++;
        }
        p->width[a] = n_parts * Nb;
        if (n_parts == 0) {
            continue;
        }
        rc = eng_linear_create(kp, n_parts, Na, ENG_WTYPE_F32, ENG_WTYPE_F32, &p->k[a], err);
        if (rc == KC_OK) {
            rc = eng_linear_create(vp, n_parts, Na, ENG_WTYPE_F32, ENG_WTYPE_F32, &p->v[a], err);
        }
        if (rc != KC_OK) {
            kc_error_prefix(err, "predictor maps of aux layer %d", a);
        }
    }
    free(kp);
    free(vp);
    return rc;
}

int eng_kvp_create(const struct eng_kvp_shape *shape, const int32_t *layer_map, const float *k_w,
                   const float *k_b, const float *v_w, const float *v_b, struct eng_kvp **out,
                   struct kc_error *err) {
    if (shape == NULL || layer_map == NULL || k_w == NULL || v_w == NULL) {
        return kc_error_set(err, KC_EINVAL, "predictor: missing shape, map or weights");
    }
    struct eng_kvp *p = NULL;
    int rc = kvp_alloc(shape, layer_map, &p, err);
    if (rc != KC_OK) {
        return rc;
    }
    const size_t nb = (size_t)shape->base_layers * shape->base_kv_dim;
    const size_t nw = nb * shape->aux_kv_dim;
    memcpy(p->k_w, k_w, nw * sizeof(float));
    memcpy(p->v_w, v_w, nw * sizeof(float));
    if (k_b != NULL) {
        memcpy(p->k_b, k_b, nb * sizeof(float));
    }
    if (v_b != NULL) {
        memcpy(p->v_b, v_b, nb * sizeof(float));
    }
    rc = kvp_pack(p, err);
    if (rc != KC_OK) {
        goto fail;
    }
    *out = p;
    return KC_OK;
fail:
    eng_kvp_free(p);
    return rc;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float uniform_pm1(uint64_t *s) {
    return (float)((double)(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

int eng_kvp_create_random(const struct eng_kvp_shape *shape, const int32_t *layer_map,
                          uint64_t seed, struct eng_kvp **out, struct kc_error *err) {
    if (shape == NULL) {
        return kc_error_set(err, KC_EINVAL, "predictor: missing shape");
    }
    int rc = shape_check(shape, err);
    if (rc != KC_OK) {
        return rc;
    }
    int32_t *map = kc_calloc((size_t)shape->base_layers, sizeof(int32_t));
    struct eng_kvp *p = NULL;
    if (map == NULL) {
        return kc_error_set(err, KC_ENOMEM, "predictor: out of memory");
    }
    if (layer_map != NULL) {
        memcpy(map, layer_map, (size_t)shape->base_layers * sizeof(int32_t));
    } else {
        eng_kvp_layer_map_auto(shape->base_layers, shape->aux_layers, map);
    }
    rc = kvp_alloc(shape, map, &p, err);
    if (rc != KC_OK) {
        goto fail;
    }
    const size_t nb = (size_t)shape->base_layers * shape->base_kv_dim;
    const size_t nw = nb * shape->aux_kv_dim;
    const float scale = 1.0f / sqrtf((float)shape->aux_kv_dim);
    uint64_t s = seed;
    for (size_t i = 0; i < nw; i++) {
        p->k_w[i] = uniform_pm1(&s) * scale;
        p->v_w[i] = uniform_pm1(&s) * scale;
    }
    for (size_t i = 0; i < nb; i++) {
        p->k_b[i] = 0.1f * uniform_pm1(&s);
        p->v_b[i] = 0.1f * uniform_pm1(&s);
    }
    rc = kvp_pack(p, err);
    if (rc != KC_OK) {
        goto fail;
    }
    free(map);
    *out = p;
    return KC_OK;
fail:
    free(map);
    eng_kvp_free(p);
    return rc;
}

/* Parses a metadata integer: decimal digits only, in [1, hi]. */
static int meta_int(const struct eng_st_set *st, const char *path, const char *key, int hi,
                    int *out, struct kc_error *err) {
    const char *v = eng_st_set_meta(st, key);
    if (v == NULL) {
        return kc_error_set(err, KC_EFORMAT, "%s: __metadata__ lacks '%s'", path, key);
    }
    long x = 0;
    const char *p = v;
    if (*p == '\0') {
        return kc_error_set(err, KC_EFORMAT, "%s: __metadata__ '%s' is empty", path, key);
    }
    for (; *p != '\0'; p++) {
        if (!isdigit((unsigned char)*p) || x > hi) {
            return kc_error_set(err, KC_EFORMAT,
                                "%s: __metadata__ '%s' = '%.32s' is not an "
                                "integer in [1, %d]",
                                path, key, v, hi);
        }
        x = x * 10 + (*p - '0');
    }
    if (x < 1 || x > hi) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: __metadata__ '%s' = '%.32s' is not an integer "
                            "in [1, %d]",
                            path, key, v, hi);
    }
    *out = (int)x;
    return KC_OK;
}

/* Copies one map tensor (checked dtype and shape) to f32 dst. */
static int load_tensor(const struct eng_st_set *st, const char *path, const char *name, int rows,
                       int cols, float *dst, struct kc_error *err) {
    const struct eng_st_tensor *t = eng_st_set_find(st, name);
    if (t == NULL) {
        return kc_error_set(err, KC_EFORMAT, "%s: missing tensor '%s'", path, name);
    }
    if (t->dtype != ENG_DTYPE_F32 && t->dtype != ENG_DTYPE_BF16 && t->dtype != ENG_DTYPE_F16) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tensor '%s' has dtype %s; expected F32, BF16 "
                            "or F16",
                            path, name, eng_dtype_name(t->dtype));
    }
    const bool ok = cols > 0 ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                             : (t->ndim == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[96] = "";
        size_t used = 0;
        for (int d = 0; d < t->ndim && used < sizeof(got) - 24; d++) {
            used += (size_t)snprintf(got + used, sizeof(got) - used, "%s%lld", d ? ", " : "",
                                     (long long)t->shape[d]);
        }
        if (cols > 0) {
            return kc_error_set(err, KC_EFORMAT,
                                "%s: tensor '%s' has shape [%s]; the metadata "
                                "implies [%d, %d] ([base_kv_dim, aux_kv_dim])",
                                path, name, got, rows, cols);
        }
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tensor '%s' has shape [%s]; the metadata "
                            "implies [%d] ([base_kv_dim])",
                            path, name, got, rows);
    }
    eng_dtype_to_f32(t->dtype, t->data, dst, (size_t)rows * (size_t)(cols > 0 ? cols : 1));
    return KC_OK;
}

int eng_kvp_load(const char *path, struct eng_kvp **out, struct kc_error *err) {
    struct eng_st_set *st = NULL;
    struct eng_kvp *p = NULL;
    int32_t *map = NULL;
    int rc = eng_st_set_open(path, &st, err);
    if (rc != KC_OK) {
        return rc;
    }
    const char *fmt = eng_st_set_meta(st, "format");
    if (fmt != NULL && strcmp(fmt, ENG_KVP_FORMAT) != 0) {
        rc = kc_error_set(err, KC_EUNSUPPORTED,
                          "%s: predictor format '%.32s'; this build reads "
                          "'%s'",
                          path, fmt, ENG_KVP_FORMAT);
        goto fail;
    }
    const char *space = eng_st_set_meta(st, "key_space");
    if (space == NULL) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: __metadata__ lacks 'key_space' (expected '%s')",
                          path, ENG_KVP_KEY_SPACE);
        goto fail;
    }
    if (strcmp(space, ENG_KVP_KEY_SPACE) != 0) {
        rc = kc_error_set(err, KC_EUNSUPPORTED,
                          "%s: key_space '%.32s' is not supported; "
                          "predictors must map keys before RoPE ('%s')",
                          path, space, ENG_KVP_KEY_SPACE);
        goto fail;
    }
    struct eng_kvp_shape s;
    if ((rc = meta_int(st, path, "base_layers", ENG_MAX_LAYERS, &s.base_layers, err)) != KC_OK ||
        (rc = meta_int(st, path, "aux_layers", ENG_MAX_LAYERS, &s.aux_layers, err)) != KC_OK ||
        (rc = meta_int(st, path, "base_kv_dim", KVP_MAX_KV_DIM, &s.base_kv_dim, err)) != KC_OK ||
        (rc = meta_int(st, path, "aux_kv_dim", KVP_MAX_KV_DIM, &s.aux_kv_dim, err)) != KC_OK) {
        goto fail;
    }
    const char *map_s = eng_st_set_meta(st, "layer_map");
    if (map_s == NULL) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: __metadata__ lacks 'layer_map'", path);
        goto fail;
    }
    map = kc_calloc((size_t)s.base_layers, sizeof(int32_t));
    if (map == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    rc = eng_kvp_layer_map_parse(map_s, &s, map, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
        goto fail;
    }
    if (eng_st_set_count(st) != (size_t)s.base_layers * 4) {
        /* Name the first tensor that is not one of ours, or say what is missing. */
        for (size_t i = 0; i < eng_st_set_count(st); i++) {
            const char *name = eng_st_set_get(st, i)->name;
            int l = -1, used = 0;
            char kv = 0, what[8] = "";
            if (sscanf(name, "%c.%d.%7[a-z]%n", &kv, &l, what, &used) != 3 || name[used] != '\0' ||
                (kv != 'k' && kv != 'v') || l < 0 || l >= s.base_layers ||
                (strcmp(what, "weight") != 0 && strcmp(what, "bias") != 0)) {
                rc = kc_error_set(err, KC_EFORMAT,
                                  "%s: unexpected tensor '%.64s' (a predictor "
                                  "for %d base layers holds k/v.{0..%d}.weight/bias)",
                                  path, name, s.base_layers, s.base_layers - 1);
                goto fail;
            }
        }
    }
    rc = kvp_alloc(&s, map, &p, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
        goto fail;
    }
    for (int l = 0; l < s.base_layers; l++) {
        char name[64];
        const size_t wo = (size_t)l * s.base_kv_dim * s.aux_kv_dim;
        const size_t bo = (size_t)l * s.base_kv_dim;
        const struct {
            char kv;
            const char *what;
            float *dst;
            int cols;
        } parts[4] = {{'k', "weight", p->k_w + wo, s.aux_kv_dim},
                      {'k', "bias", p->k_b + bo, 0},
                      {'v', "weight", p->v_w + wo, s.aux_kv_dim},
                      {'v', "bias", p->v_b + bo, 0}};
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof(name), "%c.%d.%s", parts[i].kv, l, parts[i].what);
            rc = load_tensor(st, path, name, s.base_kv_dim, parts[i].cols, parts[i].dst, err);
            if (rc != KC_OK) {
                goto fail;
            }
        }
    }
    rc = kvp_pack(p, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
        goto fail;
    }
    free(map);
    eng_st_set_free(st);
    *out = p;
    return KC_OK;
fail:
    free(map);
    eng_kvp_free(p);
    eng_st_set_free(st);
    return rc;
}

int eng_kvp_save(const struct eng_kvp *p, const char *path, struct kc_error *err) {
    const struct eng_kvp_shape *s = &p->shape;
    const int Lb = s->base_layers;
    const size_t n_t = (size_t)Lb * 4;
    struct eng_st_tensor *ts = kc_calloc(n_t, sizeof(*ts));
    char *names = kc_calloc(n_t, 32);
    /* "[a, b, ...]": at most 5 digits + ", " per entry. */
    char *map_s = kc_calloc((size_t)Lb * 8 + 4, 1);
    int rc;
    if (ts == NULL || names == NULL || map_s == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    size_t used = 0;
    map_s[used++] = '[';
    for (int l = 0; l < Lb; l++) {
        used += (size_t)snprintf(map_s + used, 8, "%s%d", l ? ", " : "", (int)p->layer_map[l]);
    }
    map_s[used++] = ']';
    map_s[used] = '\0';
    const size_t wbytes = (size_t)s->base_kv_dim * s->aux_kv_dim * sizeof(float);
    const size_t bbytes = (size_t)s->base_kv_dim * sizeof(float);
    /* Weights first, then biases: wider-aligned data first keeps every tensor aligned. */
    for (int l = 0; l < Lb; l++) {
        for (int i = 0; i < 4; i++) {
            const bool is_w = i < 2, is_k = (i % 2) == 0;
            const size_t idx = is_w ? (size_t)l * 2 + (size_t)(i % 2)
                                    : (size_t)Lb * 2 + (size_t)l * 2 + (size_t)(i % 2);
            struct eng_st_tensor *t = &ts[idx];
            t->name = names + idx * 32;
            snprintf(t->name, 32, "%c.%d.%s", is_k ? 'k' : 'v', l, is_w ? "weight" : "bias");
            t->dtype = ENG_DTYPE_F32;
            if (is_w) {
                const float *w =
                    (is_k ? p->k_w : p->v_w) + (size_t)l * s->base_kv_dim * s->aux_kv_dim;
                t->ndim = 2;
                t->shape[0] = s->base_kv_dim;
                t->shape[1] = s->aux_kv_dim;
                t->data = w;
                t->nbytes = wbytes;
            } else {
                t->ndim = 1;
                t->shape[0] = s->base_kv_dim;
                t->data = (is_k ? p->k_b : p->v_b) + (size_t)l * s->base_kv_dim;
                t->nbytes = bbytes;
            }
        }
    }
    char bl[16], al[16], bd[16], ad[16];
    snprintf(bl, sizeof(bl), "%d", s->base_layers);
    snprintf(al, sizeof(al), "%d", s->aux_layers);
    snprintf(bd, sizeof(bd), "%d", s->base_kv_dim);
    snprintf(ad, sizeof(ad), "%d", s->aux_kv_dim);
    struct eng_st_meta meta[7] = {
        {(char *)"format", (char *)ENG_KVP_FORMAT},
        {(char *)"key_space", (char *)ENG_KVP_KEY_SPACE},
        {(char *)"layer_map", map_s},
        {(char *)"base_layers", bl},
        {(char *)"aux_layers", al},
        {(char *)"base_kv_dim", bd},
        {(char *)"aux_kv_dim", ad},
    };
    rc = eng_st_write(path, ts, n_t, meta, 7, err);
fail:
    free(ts);
    free(names);
    free(map_s);
    return rc;
}

const struct eng_kvp_shape *eng_kvp_shape_of(const struct eng_kvp *p) {
    return &p->shape;
}

const int32_t *eng_kvp_layer_map(const struct eng_kvp *p) {
    return p->layer_map;
}

void eng_kvp_map_of(const struct eng_kvp *p, char which, int l, const float **weight,
                    const float **bias) {
    KC_ASSERT(l >= 0 && l < p->shape.base_layers && (which == 'k' || which == 'v'));
    const size_t wo = (size_t)l * p->shape.base_kv_dim * p->shape.aux_kv_dim;
    const size_t bo = (size_t)l * p->shape.base_kv_dim;
    *weight = (which == 'k' ? p->k_w : p->v_w) + wo;
    *bias = (which == 'k' ? p->k_b : p->v_b) + bo;
}

int eng_kvp_check_models(const struct eng_kvp *p, const struct eng_model_config *base,
                         const struct eng_model_config *aux, struct kc_error *err) {
    const struct eng_kvp_shape want = eng_kvp_shape_of_pair(base, aux);
    const struct eng_kvp_shape *s = &p->shape;
    /* Each message names a tensor of the file, so a user can see what does not fit. */
    if (s->base_layers < want.base_layers) {
        return kc_error_set(err, KC_EINVAL,
                            "predictor has %d base layers, the base model %d: no tensor "
                            "'k.%d.weight'",
                            s->base_layers, want.base_layers, s->base_layers);
    }
    if (s->base_layers > want.base_layers) {
        return kc_error_set(err, KC_EINVAL,
                            "predictor has %d base layers, the base model %d: tensor "
                            "'k.%d.weight' maps a layer the base model lacks",
                            s->base_layers, want.base_layers, want.base_layers);
    }
    for (int l = 0; l < s->base_layers; l++) {
        if (p->layer_map[l] >= want.aux_layers) {
            return kc_error_set(err, KC_EINVAL,
                                "layer_map[%d] = %d: tensors 'k.%d.weight' and 'v.%d.weight' "
                                "read aux layer %d, but the aux model has %d layers",
                                l, (int)p->layer_map[l], l, l, (int)p->layer_map[l],
                                want.aux_layers);
        }
    }
    if (s->aux_layers != want.aux_layers) {
        return kc_error_set(err, KC_EINVAL,
                            "predictor was fitted on %d aux layers (__metadata__ aux_layers), "
                            "the aux model has %d",
                            s->aux_layers, want.aux_layers);
    }
    if (s->base_kv_dim != want.base_kv_dim || s->aux_kv_dim != want.aux_kv_dim) {
        return kc_error_set(err, KC_EINVAL,
                            "tensor 'k.0.weight' is [%d, %d] ([base_kv_dim, aux_kv_dim]); the "
                            "pair needs [%d, %d] (base %d kv heads x head dim %d, aux %d x %d)",
                            s->base_kv_dim, s->aux_kv_dim, want.base_kv_dim, want.aux_kv_dim,
                            base->n_kv_heads, base->head_dim, aux->n_kv_heads, aux->head_dim);
    }
    return eng_kvp_check_pair(base, aux, err);
}

/* ---- bundles ---- */

/* Reads DIR/name: KC_OK with the bytes, KC_ENOTFOUND when absent, another code on error. */
static int read_opt(const char *dir, const char *name, char **buf, size_t *len,
                    struct kc_error *err) {
    char path[4096];
    if (kc_path_join(path, sizeof(path), dir, name) != KC_OK) {
        return kc_error_set(err, KC_ERANGE, "%s: path too long", dir);
    }
    return kc_file_read(path, KVP_MAX_TOKENIZER_BYTES, buf, len, err);
}

int eng_kvp_check_tokenizers(const char *base_dir, const char *aux_dir, struct kc_error *err) {
    /* Only tokenizer.json decides what an id means; tokenizer_config.json may legitimately
     * differ between sizes of one family (model_max_length and the like). */
    static const char name[] = "tokenizer.json";
    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    int rc = KC_OK;
    const int ra = read_opt(base_dir, name, &a, &al, err);
    const int rb = ra == KC_OK || ra == KC_ENOTFOUND ? read_opt(aux_dir, name, &b, &bl, err) : ra;
    if (rb != KC_OK && rb != KC_ENOTFOUND) {
        rc = rb; /* err names the file that could not be read */
    } else if (ra != rb) {
        rc = kc_error_set(err, KC_EINVAL,
                          "%s has %s but %s has none: base and aux must share "
                          "one tokenizer",
                          ra == KC_OK ? base_dir : aux_dir, name, ra == KC_OK ? aux_dir : base_dir);
    } else if (ra == KC_OK && (al != bl || memcmp(a, b, al) != 0)) {
        rc = kc_error_set(err, KC_EINVAL,
                          "%s/%s and %s/%s differ: base and aux must share one "
                          "tokenizer",
                          base_dir, name, aux_dir, name);
    }
    free(a);
    free(b);
    return rc;
}

void eng_kvp_bundle_free(struct eng_kvp_bundle *b) {
    if (b == NULL) {
        return;
    }
    eng_kvp_free(b->pred);
    eng_model_free(b->aux);
    eng_model_free(b->base);
    free(b->name);
    free(b->base_dir);
    free(b->aux_dir);
    free(b->predictor_path);
    free(b);
}

int eng_kvp_bundle_open(const char *base_dir, const char *aux_dir, const char *predictor_path,
                        const struct eng_model_params *params, struct eng_kvp_bundle **out,
                        struct kc_error *err) {
    int rc;
    struct eng_kvp_bundle *b = kc_calloc(1, sizeof(*b));
    if (b == NULL) {
        return kc_error_set(err, KC_ENOMEM, "bundle: out of memory");
    }
    b->base_dir = strdup(base_dir);
    b->aux_dir = strdup(aux_dir);
    b->predictor_path = predictor_path != NULL ? strdup(predictor_path) : NULL;
    if (b->base_dir == NULL || b->aux_dir == NULL ||
        (predictor_path != NULL && b->predictor_path == NULL)) {
        rc = kc_error_set(err, KC_ENOMEM, "bundle: out of memory");
        goto fail;
    }
    /* Cheap checks first: tokenizers and the predictor before loading any weights. */
    rc = eng_kvp_check_tokenizers(base_dir, aux_dir, err);
    if (rc != KC_OK) {
        goto fail;
    }
    if (predictor_path != NULL) {
        rc = eng_kvp_load(predictor_path, &b->pred, err);
        if (rc != KC_OK) {
            goto fail;
        }
    }
    rc = eng_model_load(base_dir, params, &b->base, err);
    if (rc == KC_OK) {
        rc = eng_model_load(aux_dir, params, &b->aux, err);
    }
    if (rc != KC_OK) {
        goto fail;
    }
    const struct eng_model_config *bc = eng_model_config_of(b->base);
    const struct eng_model_config *ac = eng_model_config_of(b->aux);
    if (b->pred != NULL) {
        rc = eng_kvp_check_models(b->pred, bc, ac, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "%s does not fit %s + %s", predictor_path, base_dir, aux_dir);
            goto fail;
        }
    } else if ((rc = eng_kvp_check_pair(bc, ac, err)) != KC_OK) {
        kc_error_prefix(err, "%s + %s", base_dir, aux_dir);
        goto fail;
    }
    *out = b;
    return KC_OK;
fail:
    eng_kvp_bundle_free(b);
    return rc;
}

/* Joins a bundle-relative path to the bundle's folder (absolute paths stay as they are). */
static char *bundle_path(const char *folder, const char *rel) {
    if (rel[0] == '/') {
        return strdup(rel);
    }
    const size_t n = strlen(folder) + strlen(rel) + 2;
    char *p = malloc(n);
    if (p != NULL) {
        snprintf(p, n, "%s/%s", folder, rel);
    }
    return p;
}

void eng_kvp_bundle_spec_free(struct eng_kvp_bundle_spec *spec) {
    if (spec == NULL) {
        return;
    }
    free(spec->name);
    free(spec->base_dir);
    free(spec->aux_dir);
    free(spec->predictor_path);
    memset(spec, 0, sizeof(*spec));
}

int eng_kvp_bundle_read(const char *path, struct eng_kvp_bundle_spec *out, struct kc_error *err) {
    char *text = NULL, *folder = NULL;
    struct eng_kvp_bundle_spec spec = {NULL, NULL, NULL, NULL};
    size_t len = 0;
    json_t *root = NULL;
    int rc = kc_file_read(path, KVP_MAX_BUNDLE_BYTES, &text, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL || !json_is_object(root)) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: %s (line %d)", path,
                          root == NULL ? jerr.text : "expected a JSON object",
                          root == NULL ? jerr.line : 1);
        goto fail;
    }
    static const char *const keys[4] = {"base", "aux", "predictor", "name"};
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "base") != 0 && strcmp(key, "aux") != 0 && strcmp(key, "predictor") != 0 &&
            strcmp(key, "name") != 0) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "%s: unknown key '%.64s' (a bundle has \"base\", "
                              "\"aux\", \"predictor\" and optionally \"name\")",
                              path, key);
            goto fail;
        }
    }
    folder = strdup(path);
    if (folder == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    char *slash = strrchr(folder, '/');
    if (slash == NULL) {
        strcpy(folder, ".");
    } else if (slash == folder) {
        folder[1] = '\0';
    } else {
        *slash = '\0';
    }
    char **dst[4] = {&spec.base_dir, &spec.aux_dir, &spec.predictor_path, &spec.name};
    for (int i = 0; i < 4; i++) {
        const json_t *v = json_object_get(root, keys[i]);
        if (i == 3 && v == NULL) {
            break; /* the name is optional */
        }
        if (v == NULL || !json_is_string(v) || json_string_length(v) == 0) {
            rc = kc_error_set(err, KC_EFORMAT,
                              i == 3 ? "%s: \"%s\" must be a non-empty string (the model "
                                       "name clients see)"
                                     : "%s: \"%s\" must be a non-empty string (a path "
                                       "relative to the bundle's folder)",
                              path, keys[i]);
            goto fail;
        }
        const char *sv = json_string_value(v);
        if (strlen(sv) != json_string_length(v)) {
            rc =
                kc_error_set(err, KC_EFORMAT, "%s: \"%s\" contains a NUL character", path, keys[i]);
            goto fail;
        }
        if (i == 3) {
            /* A model id travels in JSON bodies, metrics labels and logs: printable only. */
            for (const char *c = sv; *c != '\0'; c++) {
                if ((unsigned char)*c < 0x20 || *c == 0x7f) {
                    rc = kc_error_set(err, KC_EFORMAT, "%s: \"name\" contains a control character",
                                      path);
                    goto fail;
                }
            }
            if (json_string_length(v) > 255) {
                rc = kc_error_set(err, KC_EFORMAT, "%s: \"name\" is longer than 255 bytes", path);
                goto fail;
            }
        }
        *dst[i] = i == 3 ? strdup(sv) : bundle_path(folder, sv);
        if (*dst[i] == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
    }
    *out = spec;
    spec = (struct eng_kvp_bundle_spec){NULL, NULL, NULL, NULL};
    rc = KC_OK;
fail:
    eng_kvp_bundle_spec_free(&spec);
    free(folder);
    json_decref(root);
    free(text);
    return rc;
}

int eng_kvp_bundle_load(const char *path, const struct eng_model_params *params,
                        struct eng_kvp_bundle **out, struct kc_error *err) {
    struct eng_kvp_bundle_spec spec;
    int rc = eng_kvp_bundle_read(path, &spec, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct eng_kvp_bundle *b = NULL;
    rc = eng_kvp_bundle_open(spec.base_dir, spec.aux_dir, spec.predictor_path, params, &b, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "bundle %s", path);
    } else {
        b->name = spec.name; /* moves */
        spec.name = NULL;
        *out = b;
    }
    eng_kvp_bundle_spec_free(&spec);
    return rc;
}
