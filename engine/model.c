/*
 * model.c — loading a Llama-family model into packed oneDNN weights, and the forward pass
 * (see model.h for the data flow of one step).
 *
 * DESIGN invariants:
 *  1. Every linear layer is a struct eng_linear; q|k|v and gate|up are stacked so each
 *     layer runs four GEMMs.
 *  2. The model keeps no pointer into weight files once loaded: packing copies.
 *  3. eng_forward validates every input-derived value (token ids, positions, KV room)
 *     before touching the cache, so a failed step leaves sequences as they were (apart from
 *     blocks reserved for them).
 *  4. A step allocates nothing: all buffers live in struct eng_ctx.
 *  5. bf16 prefill (prefill weights bf16, a step of more than ENG_DECODE_MAX_M rows:
 *     forward_layers_bf16): activations reach the GEMMs in bf16 straight from the op before
 *     them, with no conversion pass of their own: the norm (which also adds the residual
 *     pending from the sub-layer before) writes the q|k|v and gate|up inputs, SwiGLU the
 *     down projection's, and attention (eng_attention_bf16, bf16 products) the
 *     o-projection's; RoPE rotates q and k straight out of the q|k|v rows. The GEMMs see
 *     the same bits as when eng_linear_forward converted their f32 inputs; what differs
 *     from the f32-attention path is only attention's bf16 rounding (ops.h). Every other
 *     step (f32 or int8 prefill, decode) runs forward_layers, unchanged.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/io/dtype.h"
#include "engine/io/safetensors.h"

struct eng_layer {
    struct eng_linear *qkv;     /* [(H + 2 Hkv) D, C] */
    struct eng_linear *o;       /* [C, H D] */
    struct eng_linear *gate_up; /* [2F, C] */
    struct eng_linear *down;    /* [C, F] */
    float *attn_norm;           /* [C] */
    float *mlp_norm;            /* [C] */
};

struct eng_model {
    struct eng_model_config cfg;
    struct eng_model_params params;
    struct eng_layer *layers; /* [L] */
    void *embed;              /* [V, C] in embed_dtype, a private copy */
    enum eng_dtype embed_dtype;
    float *final_norm;          /* [C] */
    struct eng_linear *lm_head; /* [V, C]; the embedding itself when tied */
    struct eng_rope_table rope; /* positions [0, max_position_embeddings) */
};

struct eng_ctx {
    struct eng_dnn *dnn;
    int max_rows; /* R */
    int max_ctx;
    int n_threads;
    float *x;      /* [R, C] residual stream */
    float *xn;     /* [R, C] normalised input of a sub-layer */
    float *qkv;    /* [R, (H + 2 Hkv) D] */
    float *q;      /* [R, H D] */
    float *k;      /* [R, Hkv D] */
    float *v;      /* [R, Hkv D] */
    float *att;    /* [R, H D] */
    float *proj;   /* [R, C] output of o / down projections */
    float *gu;     /* [R, 2F] */
    float *h;      /* [R, F] */
    float *logits; /* [R, V] rows gathered across items */
    int32_t *pos;  /* [R] */
    float *attn_scratch;
    /* bf16 prefill only (invariant 5), else NULL: */
    uint16_t *act16;       /* [R, max(C, H D, F)] the next GEMM's bf16 input */
    float *attn_scratch16; /* eng_attention_bf16's scratch */
};

struct eng_model_params eng_model_default_params(void) {
    /* Decode is memory-bound: bf16 halves its bytes, where oneDNN has bf16 products. */
    struct eng_model_params p = {.prefill_wtype = ENG_WTYPE_F32,
                                 .decode_wtype =
                                     eng_bf16_products() ? ENG_WTYPE_BF16 : ENG_WTYPE_F32,
                                 .progress_cb = NULL,
                                 .progress_ud = NULL};
    return p;
}

enum eng_wtype eng_prefill_wtype_auto(void) {
    return eng_bf16_dot() ? ENG_WTYPE_BF16 : ENG_WTYPE_F32;
}

int eng_wtype_parse(const char *s, enum eng_wtype *out) {
    if (s != NULL && strcmp(s, "f32") == 0) {
        *out = ENG_WTYPE_F32;
        return KC_OK;
    }
    if (s != NULL && strcmp(s, "bf16") == 0) {
        *out = ENG_WTYPE_BF16;
        return KC_OK;
    }
    if (s != NULL && strcmp(s, "int8") == 0) {
        *out = ENG_WTYPE_INT8;
        return KC_OK;
    }
    return KC_EINVAL;
}

const char *eng_wtype_name(enum eng_wtype wt) {
    return wt == ENG_WTYPE_BF16 ? "bf16" : wt == ENG_WTYPE_INT8 ? "int8" : "f32";
}

const struct eng_model_config *eng_model_config_of(const struct eng_model *m) {
    return &m->cfg;
}

void eng_model_free(struct eng_model *m) {
    if (m == NULL) {
        return;
    }
    if (m->layers != NULL) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            struct eng_layer *ly = &m->layers[l];
            eng_linear_free(ly->qkv);
            eng_linear_free(ly->o);
            eng_linear_free(ly->gate_up);
            eng_linear_free(ly->down);
            free(ly->attn_norm);
            free(ly->mlp_norm);
        }
    }
    free(m->layers);
    free(m->embed);
    free(m->final_norm);
    eng_linear_free(m->lm_head);
    eng_rope_table_free(&m->rope);
    free(m);
}

size_t eng_model_weight_bytes(const struct eng_model *m) {
    size_t total = eng_linear_bytes(m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct eng_layer *ly = &m->layers[l];
        total += eng_linear_bytes(ly->qkv) + eng_linear_bytes(ly->o) +
                 eng_linear_bytes(ly->gate_up) + eng_linear_bytes(ly->down);
    }
    return total;
}

size_t eng_model_step_bytes_read(const struct eng_model *m, int rows) {
    size_t total = eng_linear_bytes_read(m->lm_head, rows);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct eng_layer *ly = &m->layers[l];
        total += eng_linear_bytes_read(ly->qkv, rows) + eng_linear_bytes_read(ly->o, rows) +
                 eng_linear_bytes_read(ly->gate_up, rows) + eng_linear_bytes_read(ly->down, rows);
    }
    return total;
}

/* ---- building a model from weight sources ---- */

/* Where build_model gets each tensor: a file set or a random generator. */
struct weight_source {
    const struct eng_st_set *st; /* NULL: random */
    const char *path;            /* for messages */
    uint64_t rng;
    void *scratch[3];               /* random tensors of the current layer, freed by the builder */
    bool *used;                     /* [eng_st_set_count] tensors fetched so far (files only) */
    size_t done_bytes, total_bytes; /* for the progress callback */
};

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random bf16 tensor with values uniform in [-a, a] (a = 0.02 * sqrt(3): std 0.02), or
 * around 1 for norm weights. Uniform is enough for benchmarks of real shapes. */
static uint16_t *random_bf16(uint64_t *rng, size_t n, float center, float amp) {
    uint16_t *w = malloc(n * sizeof(uint16_t));
    if (w == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i += 4) {
        uint64_t r = splitmix64(rng);
        for (size_t j = 0; j < 4 && i + j < n; j++) {
            float u = (float)((r >> (16 * j)) & 0xffff) / 65535.0f * 2.0f - 1.0f;
            w[i + j] = eng_f32_to_bf16(center + amp * u);
        }
    }
    return w;
}

/*
 * Fetches tensor `name` of the given 2-D (rows, cols) or 1-D (rows, cols = 0) shape.
 * From a file: checks existence, float dtype and shape. Random: allocates into a slot of
 * src->scratch that the caller frees.
 */
static int get_tensor(struct weight_source *src, const char *name, int rows, int cols, int slot,
                      float center, const void **data, enum eng_dtype *dtype,
                      struct kc_error *err) {
    if (src->st == NULL) {
        size_t n = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
        free(src->scratch[slot]);
        src->scratch[slot] = random_bf16(&src->rng, n, center, center != 0.0f ? 0.1f : 0.0346f);
        if (src->scratch[slot] == NULL) {
            return kc_error_set(err, KC_ENOMEM, "random weights: out of memory for %s", name);
        }
        *data = src->scratch[slot];
        *dtype = ENG_DTYPE_BF16;
        return KC_OK;
    }
    const long idx = eng_st_set_index_of(src->st, name);
    if (idx < 0) {
        return kc_error_set(err, KC_EFORMAT, "%s: missing tensor '%s'", src->path, name);
    }
    const struct eng_st_tensor *t = eng_st_set_get(src->st, (size_t)idx);
    if (src->used != NULL && !src->used[idx]) {
        src->used[idx] = true;
        src->done_bytes += t->nbytes;
    }
    if (t->dtype != ENG_DTYPE_F32 && t->dtype != ENG_DTYPE_BF16 && t->dtype != ENG_DTYPE_F16) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tensor '%s' has dtype %s; expected F32, BF16 or F16", src->path,
                            name, eng_dtype_name(t->dtype));
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
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tensor '%s' has shape [%s]; config.json implies [%d%s%.0d]",
                            src->path, name, got, rows, cols > 0 ? ", " : "", cols);
    }
    *data = t->data;
    *dtype = t->dtype;
    return KC_OK;
}

static int get_norm(struct weight_source *src, const char *name, int c, float **out,
                    struct kc_error *err) {
    const void *data = NULL;
    enum eng_dtype dt = ENG_DTYPE_F32;
    int rc = get_tensor(src, name, c, 0, 0, 1.0f, &data, &dt, err);
    if (rc != KC_OK) {
        return rc;
    }
    float *w = malloc((size_t)c * sizeof(float));
    if (w == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    eng_dtype_to_f32(dt, data, w, (size_t)c);
    *out = w;
    return KC_OK;
}

/* Builds one linear from up to three named tensors stacked along the output dimension.
 * bias_names entries may be NULL. */
static int get_linear(struct weight_source *src, const struct eng_model_params *p, int n_in,
                      int n_parts, const char *const *names, const char *const *bias_names,
                      const int *rows, struct eng_linear **out, struct kc_error *err) {
    struct eng_weight_part parts[3];
    void *bias_copies[3] = {NULL, NULL, NULL};
    int rc = KC_OK;
    KC_ASSERT(n_parts <= 3);
    for (int i = 0; i < n_parts; i++) {
        enum eng_dtype dt = ENG_DTYPE_F32;
        rc = get_tensor(src, names[i], rows[i], n_in, i, 0.0f, &parts[i].data, &dt, err);
        if (rc != KC_OK) {
            goto done;
        }
        parts[i].dtype = dt;
        parts[i].rows = rows[i];
        parts[i].bias = NULL;
        if (bias_names != NULL && bias_names[i] != NULL) {
            const void *b;
            enum eng_dtype bdt;
            /* Random biases must not reuse the weight slots: take them from the file only,
             * or build a zero-centred random bias of our own. */
            if (src->st == NULL) {
                bias_copies[i] = random_bf16(&src->rng, (size_t)rows[i], 0.0f, 0.02f);
                if (bias_copies[i] == NULL) {
                    rc = kc_error_set(err, KC_ENOMEM, "out of memory");
                    goto done;
                }
                b = bias_copies[i];
                bdt = ENG_DTYPE_BF16;
            } else {
                struct weight_source tmp = *src;
                rc = get_tensor(&tmp, bias_names[i], rows[i], 0, 0, 0.0f, &b, &bdt, err);
                src->done_bytes = tmp.done_bytes;
                if (rc != KC_OK) {
                    goto done;
                }
            }
            if (bdt != dt) {
                /* eng_weight_part wants the bias in the weight's dtype: convert via f32. */
                float *f = malloc((size_t)rows[i] * sizeof(float));
                void *conv = malloc((size_t)rows[i] * eng_dtype_size(dt));
                if (f == NULL || conv == NULL) {
                    free(f);
                    free(conv);
                    rc = kc_error_set(err, KC_ENOMEM, "out of memory");
                    goto done;
                }
                eng_dtype_to_f32(bdt, b, f, (size_t)rows[i]);
                for (int r = 0; r < rows[i]; r++) {
                    if (dt == ENG_DTYPE_F32) {
                        ((float *)conv)[r] = f[r];
                    } else if (dt == ENG_DTYPE_BF16) {
                        ((uint16_t *)conv)[r] = eng_f32_to_bf16(f[r]);
                    } else {
                        ((uint16_t *)conv)[r] = eng_f32_to_f16(f[r]);
                    }
                }
                free(f);
                free(bias_copies[i]);
                bias_copies[i] = conv;
                b = conv;
            }
            parts[i].bias = b;
        }
    }
    rc = eng_linear_create(parts, n_parts, n_in, p->prefill_wtype, p->decode_wtype, out, err);
    if (rc != KC_OK && src->path != NULL) {
        kc_error_prefix(err, "%s: %s", src->path, names[0]);
    }
done:
    for (int i = 0; i < 3; i++) {
        free(bias_copies[i]);
    }
    return rc;
}

/* A linear that is one stored tensor without bias (o_proj, down_proj, lm_head). */
static int get_linear1(struct weight_source *src, const struct eng_model_params *p, int n_in,
                       const char *name, int rows, struct eng_linear **out, struct kc_error *err) {
    const char *const names[1] = {name};
    return get_linear(src, p, n_in, 1, names, NULL, &rows, out, err);
}

static int build_model(const struct eng_model_config *cfg, const struct eng_model_params *params,
                       struct weight_source *src, struct eng_model **out, struct kc_error *err) {
    const int C = cfg->hidden_size, F = cfg->intermediate_size, V = cfg->vocab_size;
    const int qd = cfg->n_heads * cfg->head_dim, kvd = cfg->n_kv_heads * cfg->head_dim;
    int rc;
    struct eng_model *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    m->cfg = *cfg;
    m->params = *params;
    m->layers = kc_calloc((size_t)cfg->n_layers, sizeof(struct eng_layer));
    if (m->layers == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory");
        goto fail;
    }
    char n0[128], n1[128], n2[128], b0[128], b1[128], b2[128];
    for (int l = 0; l < cfg->n_layers; l++) {
        struct eng_layer *ly = &m->layers[l];
        snprintf(n0, sizeof(n0), "model.layers.%d.self_attn.q_proj.weight", l);
        snprintf(n1, sizeof(n1), "model.layers.%d.self_attn.k_proj.weight", l);
        snprintf(n2, sizeof(n2), "model.layers.%d.self_attn.v_proj.weight", l);
        snprintf(b0, sizeof(b0), "model.layers.%d.self_attn.q_proj.bias", l);
        snprintf(b1, sizeof(b1), "model.layers.%d.self_attn.k_proj.bias", l);
        snprintf(b2, sizeof(b2), "model.layers.%d.self_attn.v_proj.bias", l);
        const char *qkv_names[3] = {n0, n1, n2};
        const char *qkv_bias[3] = {b0, b1, b2};
        const int qkv_rows[3] = {qd, kvd, kvd};
        rc = get_linear(src, params, C, 3, qkv_names, cfg->attention_bias ? qkv_bias : NULL,
                        qkv_rows, &ly->qkv, err);
        if (rc != KC_OK) {
            goto fail;
        }
        snprintf(n0, sizeof(n0), "model.layers.%d.self_attn.o_proj.weight", l);
        rc = get_linear1(src, params, qd, n0, C, &ly->o, err);
        if (rc != KC_OK) {
            goto fail;
        }
        snprintf(n0, sizeof(n0), "model.layers.%d.mlp.gate_proj.weight", l);
        snprintf(n1, sizeof(n1), "model.layers.%d.mlp.up_proj.weight", l);
        const char *gu_names[2] = {n0, n1};
        const int gu_rows[2] = {F, F};
        rc = get_linear(src, params, C, 2, gu_names, NULL, gu_rows, &ly->gate_up, err);
        if (rc != KC_OK) {
            goto fail;
        }
        snprintf(n0, sizeof(n0), "model.layers.%d.mlp.down_proj.weight", l);
        rc = get_linear1(src, params, F, n0, C, &ly->down, err);
        if (rc != KC_OK) {
            goto fail;
        }
        snprintf(n0, sizeof(n0), "model.layers.%d.input_layernorm.weight", l);
        rc = get_norm(src, n0, C, &ly->attn_norm, err);
        if (rc != KC_OK) {
            goto fail;
        }
        snprintf(n0, sizeof(n0), "model.layers.%d.post_attention_layernorm.weight", l);
        rc = get_norm(src, n0, C, &ly->mlp_norm, err);
        if (rc != KC_OK) {
            goto fail;
        }
        if (src->st != NULL && params->progress_cb != NULL &&
            params->progress_cb(params->progress_ud, src->path, src->done_bytes,
                                src->total_bytes) != 0) {
            rc = kc_error_set(err, KC_ECANCELED, "%s: loading cancelled", src->path);
            goto fail;
        }
    }
    rc = get_norm(src, "model.norm.weight", C, &m->final_norm, err);
    if (rc != KC_OK) {
        goto fail;
    }
    /* Embedding: a private copy in its stored dtype; rows are converted on lookup. */
    const void *emb = NULL;
    enum eng_dtype emb_dt = ENG_DTYPE_F32;
    rc = get_tensor(src, "model.embed_tokens.weight", V, C, 0, 0.0f, &emb, &emb_dt, err);
    if (rc != KC_OK) {
        goto fail;
    }
    const size_t emb_bytes = (size_t)V * (size_t)C * eng_dtype_size(emb_dt);
    m->embed = malloc(emb_bytes);
    if (m->embed == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory for the embedding");
        goto fail;
    }
    memcpy(m->embed, emb, emb_bytes);
    m->embed_dtype = emb_dt;
    if (cfg->tie_word_embeddings) {
        struct eng_weight_part part = {.data = m->embed, .bias = NULL, .dtype = emb_dt, .rows = V};
        rc = eng_linear_create(&part, 1, C, params->prefill_wtype, params->decode_wtype,
                               &m->lm_head, err);
    } else {
        rc = get_linear1(src, params, C, "lm_head.weight", V, &m->lm_head, err);
    }
    if (rc != KC_OK) {
        goto fail;
    }
    rc = eng_rope_table_init(&m->rope, cfg, cfg->max_position_embeddings, err);
    if (rc != KC_OK) {
        goto fail;
    }
    *out = m;
    return KC_OK;
fail:
    eng_model_free(m);
    return rc;
}

/* Names a file may hold that the model does not read: RoPE inverse frequencies (recomputed
 * from config.json) and, when the embedding is tied, a stored copy of it as lm_head. */
static bool tolerated_unused(const struct eng_model_config *cfg, const char *name) {
    const char *suffix = ".rotary_emb.inv_freq";
    const size_t n = strlen(name), k = strlen(suffix);
    if (n > k && strcmp(name + n - k, suffix) == 0) {
        return true;
    }
    return cfg->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0;
}

/* After a build from files: every tensor must have been read (or be tolerated_unused).
 * Stray tensors mean config.json describes a different model than the weights hold. */
static int check_unused(const struct eng_model_config *cfg, const struct weight_source *src,
                        struct kc_error *err) {
    const size_t n = eng_st_set_count(src->st);
    size_t n_unused = 0;
    const char *first = NULL;
    char more[192] = ""; /* the next few names, so one run shows the pattern */
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = eng_st_set_get(src->st, i)->name;
        if (!src->used[i] && !tolerated_unused(cfg, name)) {
            n_unused++;
            if (first == NULL) {
                first = name;
            } else if (n_unused <= 4 && used < sizeof(more) - 1) {
                int w = snprintf(more + used, sizeof(more) - used, ", '%.48s'", name);
                used =
                    w > 0 && (size_t)w < sizeof(more) - used ? used + (size_t)w : sizeof(more) - 1;
            }
        }
    }
    if (first == NULL) {
        return KC_OK;
    }
    int layer = -1;
    if (sscanf(first, "model.layers.%d.", &layer) == 1 && layer >= cfg->n_layers) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tensor '%.128s' is not used: config.json has "
                            "num_hidden_layers = %d but the weights hold layer %d (%zu unused "
                            "tensor(s) in all%s%s)",
                            src->path, first, cfg->n_layers, layer, n_unused,
                            more[0] ? ", also" : "", more[0] ? more + 1 : "");
    }
    return kc_error_set(err, KC_EFORMAT,
                        "%s: tensor '%.128s' is not used by the model config.json describes "
                        "(num_hidden_layers %d, attention_bias %s, tie_word_embeddings %s; %zu "
                        "unused tensor(s) in all%s%s)",
                        src->path, first, cfg->n_layers, cfg->attention_bias ? "true" : "false",
                        cfg->tie_word_embeddings ? "true" : "false", n_unused,
                        more[0] ? ", also" : "", more[0] ? more + 1 : "");
}

static void free_scratch(struct weight_source *src) {
    for (int i = 0; i < 3; i++) {
        free(src->scratch[i]);
        src->scratch[i] = NULL;
    }
}

int eng_model_load(const char *dir, const struct eng_model_params *params, struct eng_model **out,
                   struct kc_error *err) {
    char path[4096];
    struct eng_model_config cfg;
    if (kc_path_join(path, sizeof(path), dir, "config.json") != KC_OK) {
        return kc_error_set(err, KC_ERANGE, "%s: path too long", dir);
    }
    int rc = eng_model_config_load(path, &cfg, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct eng_st_set *st = NULL;
    rc = eng_st_set_open(dir, &st, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct weight_source src = {.st = st, .path = eng_st_set_path(st)};
    const size_t n_tensors = eng_st_set_count(st);
    src.used = kc_calloc(n_tensors > 0 ? n_tensors : 1, sizeof(bool));
    if (src.used == NULL) {
        eng_st_set_free(st);
        return kc_error_set(err, KC_ENOMEM, "%s: out of memory", dir);
    }
    for (size_t i = 0; i < n_tensors; i++) {
        src.total_bytes += eng_st_set_get(st, i)->nbytes;
    }
    struct eng_model *m = NULL;
    rc = build_model(&cfg, params, &src, &m, err);
    if (rc == KC_OK) {
        rc = check_unused(&cfg, &src, err);
    }
    if (rc == KC_OK && params->progress_cb != NULL &&
        params->progress_cb(params->progress_ud, src.path, src.total_bytes, src.total_bytes) != 0) {
        rc = kc_error_set(err, KC_ECANCELED, "%s: loading cancelled", src.path);
    }
    free_scratch(&src);
    free(src.used);
    eng_st_set_free(st);
    if (rc != KC_OK) {
        eng_model_free(m);
        return rc;
    }
    *out = m;
    return KC_OK;
}

int eng_model_init_random(const struct eng_model_config *cfg, const struct eng_model_params *params,
                          uint64_t seed, struct eng_model **out, struct kc_error *err) {
    struct weight_source src = {.st = NULL, .path = "random", .rng = seed};
    int rc = build_model(cfg, params, &src, out, err);
    free_scratch(&src);
    return rc;
}

/* ---- forward context ---- */

void eng_ctx_free(struct eng_ctx *ctx) {
    if (ctx == NULL) {
        return;
    }
    eng_dnn_free(ctx->dnn);
    float *bufs[] = {ctx->x,   ctx->xn,   ctx->qkv, ctx->q, ctx->k,      ctx->v,
                     ctx->att, ctx->proj, ctx->gu,  ctx->h, ctx->logits, ctx->attn_scratch};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        kc_aligned_free(bufs[i]);
    }
    kc_aligned_free(ctx->act16);
    kc_aligned_free(ctx->attn_scratch16);
    free(ctx->pos);
    free(ctx);
}

int eng_ctx_create(const struct eng_model *m, int max_rows, int max_ctx, int n_threads,
                   struct eng_ctx **out, struct kc_error *err) {
    const struct eng_model_config *c = &m->cfg;
    if (max_rows < 1 || max_rows > 65536 || max_ctx < 1 || max_ctx > c->max_position_embeddings) {
        return kc_error_set(err, KC_EINVAL,
                            "forward context: max_rows %d / max_ctx %d out of range (model allows "
                            "%d positions)",
                            max_rows, max_ctx, c->max_position_embeddings);
    }
    struct eng_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    ctx->max_rows = max_rows;
    ctx->max_ctx = max_ctx;
    int rc = eng_dnn_create(n_threads, &ctx->dnn, err);
    if (rc != KC_OK) {
        free(ctx);
        return rc;
    }
    ctx->n_threads = eng_dnn_threads(ctx->dnn);
    const size_t R = (size_t)max_rows, D = (size_t)c->head_dim;
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D;
    ctx->x = kc_aligned_alloc(R * (size_t)c->hidden_size * sizeof(float));
    ctx->xn = kc_aligned_alloc(R * (size_t)c->hidden_size * sizeof(float));
    ctx->qkv = kc_aligned_alloc(R * (qd + 2 * kvd) * sizeof(float));
    ctx->q = kc_aligned_alloc(R * qd * sizeof(float));
    ctx->k = kc_aligned_alloc(R * kvd * sizeof(float));
    ctx->v = kc_aligned_alloc(R * kvd * sizeof(float));
    ctx->att = kc_aligned_alloc(R * qd * sizeof(float));
    ctx->proj = kc_aligned_alloc(R * (size_t)c->hidden_size * sizeof(float));
    ctx->gu = kc_aligned_alloc(R * 2 * (size_t)c->intermediate_size * sizeof(float));
    ctx->h = kc_aligned_alloc(R * (size_t)c->intermediate_size * sizeof(float));
    ctx->logits = kc_aligned_alloc(R * (size_t)c->vocab_size * sizeof(float));
    ctx->pos = kc_calloc(R, sizeof(int32_t));
    ctx->attn_scratch =
        kc_aligned_alloc(eng_attention_scratch_floats(max_ctx, c->n_heads, c->n_kv_heads,
                                                      c->head_dim, ctx->n_threads) *
                         sizeof(float));
    if (ctx->x == NULL || ctx->xn == NULL || ctx->qkv == NULL || ctx->q == NULL || ctx->k == NULL ||
        ctx->v == NULL || ctx->att == NULL || ctx->proj == NULL || ctx->gu == NULL ||
        ctx->h == NULL || ctx->logits == NULL || ctx->pos == NULL || ctx->attn_scratch == NULL) {
        eng_ctx_free(ctx);
        return kc_error_set(err, KC_ENOMEM, "forward context: out of memory");
    }
    if (max_rows > ENG_DECODE_MAX_M &&
        eng_linear_prefill_wtype(m->layers[0].qkv) == ENG_WTYPE_BF16) {
        size_t w = (size_t)c->hidden_size;
        w = qd > w ? qd : w;
        w = (size_t)c->intermediate_size > w ? (size_t)c->intermediate_size : w;
        ctx->act16 = kc_aligned_alloc(R * w * sizeof(uint16_t));
        ctx->attn_scratch16 =
            kc_aligned_alloc(eng_attention_bf16_scratch_floats(max_ctx, c->n_heads, c->n_kv_heads,
                                                               c->head_dim, ctx->n_threads) *
                             sizeof(float));
        if (ctx->act16 == NULL || ctx->attn_scratch16 == NULL) {
            eng_ctx_free(ctx);
            return kc_error_set(err, KC_ENOMEM, "forward context: out of memory");
        }
    }
    /* Create every primitive a step can need now, so the step loop creates nothing. */
    const int prep_rows = max_rows;
    rc = eng_linear_prepare(ctx->dnn, m->lm_head, prep_rows, err);
    for (int l = 0; l < c->n_layers && rc == KC_OK; l++) {
        const struct eng_layer *ly = &m->layers[l];
        const struct eng_linear *ls[4] = {ly->qkv, ly->o, ly->gate_up, ly->down};
        for (int i = 0; i < 4 && rc == KC_OK; i++) {
            rc = eng_linear_prepare(ctx->dnn, ls[i], prep_rows, err);
        }
    }
    if (rc != KC_OK) {
        eng_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return KC_OK;
}

/* ---- forward pass ---- */

static void embed_rows(const struct eng_model *m, const int32_t *tokens, int n, float *x) {
    const size_t C = (size_t)m->cfg.hidden_size;
    const size_t row_bytes = C * eng_dtype_size(m->embed_dtype);
    for (int i = 0; i < n; i++) {
        const char *row = (const char *)m->embed + (size_t)tokens[i] * row_bytes;
        eng_dtype_to_f32(m->embed_dtype, row, x + (size_t)i * C, C);
    }
}

/* The calling thread's stop flag (eng_forward_stop_source); NULL: none. */
static _Thread_local const atomic_int *tl_stop;

void eng_forward_stop_source(const atomic_int *flag) {
    tl_stop = flag;
}

static bool stop_asked(void) {
    return tl_stop != NULL && atomic_load_explicit(tl_stop, memory_order_relaxed) != 0;
}

/* The calling thread's profile (eng_forward_profile); NULL: none. */
static _Thread_local struct eng_profile *tl_prof;

void eng_forward_profile(struct eng_profile *p) {
    tl_prof = p;
}

const char *eng_prof_op_name(enum eng_prof_op op) {
    static const char *const names[ENG_PROF_N] = {
        "embed",  "norm",     "qkv",     "split",  "rope", "kv append", "attention",
        "o-proj", "residual", "gate/up", "swiglu", "down", "lm_head"};
    return (unsigned)op < ENG_PROF_N ? names[op] : "?";
}

/* Start of a profiled op: the clock when a profile is installed, else 0. */
static inline double prof_t0(void) {
    return tl_prof != NULL ? kc_now_s() : 0.0;
}

/* End of a profiled op started at t0, with its FLOPs. */
static inline void prof_add(enum eng_prof_op op, double t0, double flops) {
    if (tl_prof != NULL) {
        tl_prof->s[op] += kc_now_s() - t0;
        tl_prof->flops[op] += flops;
        tl_prof->calls[op]++;
    }
}

/* FLOPs of an m-row product with l. */
static double lin_flops(const struct eng_linear *l, int m) {
    return 2.0 * m * (double)eng_linear_n_in(l) * (double)eng_linear_n_out(l);
}

/* The layers of a step of M rows laid out in ctx->x (positions in ctx->pos), every step but
 * the bf16 prefill's (invariant 5). false: stopped before a layer (stop_asked). */
/* Appends this step's keys and values of layer l to each item's sequence (in the pool's dtype:
 * a copy for f32, rounded to nearest even for bf16), then attends per sequence: into ctx->att in
 * f32, or (bf16) into ctx->act16, the o-projection's bf16 input. */
static void append_and_attend(struct eng_ctx *ctx, const struct eng_model_config *c,
                              struct eng_kv_pool *pool, struct eng_batch_item *items, int n_items,
                              int l, bool bf16) {
    const int H = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
    const int qd = H * D, kvd = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    int r0 = 0;
    for (int i = 0; i < n_items; i++) {
        const struct eng_seq *seq = items[i].seq;
        const int n = items[i].n_tokens;
        double t = prof_t0();
        for (int r = 0; r < n; r++) {
            eng_kv_row_put(pool, seq, l, seq->n_tokens + r, ctx->k + (size_t)(r0 + r) * kvd,
                           ctx->v + (size_t)(r0 + r) * kvd);
        }
        prof_add(ENG_PROF_KV, t, 0.0);
        t = prof_t0();
        const struct eng_kv_view view = eng_kv_view_of(pool, seq, l);
        const float *q = ctx->q + (size_t)r0 * qd;
        if (bf16) {
            eng_attention_bf16(q, n, seq->n_tokens, &view, H, Hkv, D, scale,
                               ctx->act16 + (size_t)r0 * qd, ctx->attn_scratch16);
        } else {
            eng_attention(q, n, seq->n_tokens, &view, H, Hkv, D, scale, ctx->att + (size_t)r0 * qd,
                          ctx->attn_scratch);
        }
        /* QK^T and PV over the causal triangle: row r sees n_tokens + r + 1 keys. */
        prof_add(ENG_PROF_ATTN, t,
                 4.0 * qd * ((double)n * seq->n_tokens + (double)n * (n + 1) / 2.0));
        r0 += n;
    }
}

static bool forward_layers(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                           struct eng_batch_item *items, int n_items, int M,
                           const struct eng_kv_capture *capture, int capture_row0) {
    const struct eng_model_config *c = &m->cfg;
    const int C = c->hidden_size, F = c->intermediate_size;
    const int H = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
    const int qd = H * D, kvd = Hkv * D, qkvd = qd + 2 * kvd;
    double t;
    for (int l = 0; l < c->n_layers; l++) {
        if (stop_asked()) {
            return false;
        }
        const struct eng_layer *ly = &m->layers[l];
        /* Attention block: normalise, project to q|k|v. */
        t = prof_t0();
        eng_rmsnorm(ctx->x, ly->attn_norm, M, C, c->rms_norm_eps, ctx->xn);
        prof_add(ENG_PROF_NORM, t, 0.0);
        t = prof_t0();
        eng_linear_forward(ctx->dnn, ly->qkv, ctx->xn, M, ctx->qkv);
        prof_add(ENG_PROF_QKV, t, lin_flops(ly->qkv, M));
        t = prof_t0();
        for (int r = 0; r < M; r++) {
            const float *row = ctx->qkv + (size_t)r * qkvd;
            memcpy(ctx->q + (size_t)r * qd, row, (size_t)qd * sizeof(float));
            memcpy(ctx->k + (size_t)r * kvd, row + qd, (size_t)kvd * sizeof(float));
            memcpy(ctx->v + (size_t)r * kvd, row + qd + kvd, (size_t)kvd * sizeof(float));
        }
        /* KV Prediction reads keys before rotation: capture them now. */
        if (capture != NULL) {
            const size_t n0 = (size_t)items[0].n_tokens * kvd * sizeof(float);
            if (capture->k != NULL && capture->k[l] != NULL) {
                memcpy(capture->k[l] + (size_t)capture_row0 * kvd, ctx->k, n0);
            }
            if (capture->v != NULL && capture->v[l] != NULL) {
                memcpy(capture->v[l] + (size_t)capture_row0 * kvd, ctx->v, n0);
            }
        }
        prof_add(ENG_PROF_SPLIT, t, 0.0);
        t = prof_t0();
        eng_rope(&m->rope, ctx->q, M, H, ctx->pos);
        eng_rope(&m->rope, ctx->k, M, Hkv, ctx->pos);
        prof_add(ENG_PROF_ROPE, t, 0.0);
        append_and_attend(ctx, c, pool, items, n_items, l, false);
        t = prof_t0();
        eng_linear_forward(ctx->dnn, ly->o, ctx->att, M, ctx->proj);
        prof_add(ENG_PROF_O, t, lin_flops(ly->o, M));
        t = prof_t0();
        eng_add(ctx->x, ctx->proj, (size_t)M * C);
        prof_add(ENG_PROF_RESID, t, 0.0);
        /* MLP block: x += down(silu(gate(xn)) * up(xn)). */
        t = prof_t0();
        eng_rmsnorm(ctx->x, ly->mlp_norm, M, C, c->rms_norm_eps, ctx->xn);
        prof_add(ENG_PROF_NORM, t, 0.0);
        t = prof_t0();
        eng_linear_forward(ctx->dnn, ly->gate_up, ctx->xn, M, ctx->gu);
        prof_add(ENG_PROF_GATE_UP, t, lin_flops(ly->gate_up, M));
        t = prof_t0();
        eng_swiglu(ctx->gu, M, F, ctx->h);
        prof_add(ENG_PROF_SWIGLU, t, 0.0);
        t = prof_t0();
        eng_linear_forward(ctx->dnn, ly->down, ctx->h, M, ctx->proj);
        prof_add(ENG_PROF_DOWN, t, lin_flops(ly->down, M));
        t = prof_t0();
        eng_add(ctx->x, ctx->proj, (size_t)M * C);
        prof_add(ENG_PROF_RESID, t, 0.0);
    }

    return true;
}

/* forward_layers for the bf16 prefill (invariant 5): the same steps, with bf16 activations
 * into every GEMM; the residual add of each sub-layer is done by the norm after it. */
static bool forward_layers_bf16(struct eng_ctx *ctx, const struct eng_model *m,
                                struct eng_kv_pool *pool, struct eng_batch_item *items, int n_items,
                                int M, const struct eng_kv_capture *capture, int capture_row0) {
    const struct eng_model_config *c = &m->cfg;
    const int C = c->hidden_size, F = c->intermediate_size;
    const int H = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim;
    const int qd = H * D, kvd = Hkv * D, qkvd = qd + 2 * kvd;
    const float *pending = NULL; /* [M, C] still to add to x: the last down projection */
    double t;
    for (int l = 0; l < c->n_layers; l++) {
        if (stop_asked()) {
            return false;
        }
        const struct eng_layer *ly = &m->layers[l];
        /* Attention block: add the pending residual, normalise into bf16, project to q|k|v. */
        t = prof_t0();
        eng_rmsnorm_bf16(ctx->x, pending, ly->attn_norm, M, C, c->rms_norm_eps, ctx->act16);
        prof_add(ENG_PROF_NORM, t, 0.0);
        t = prof_t0();
        eng_linear_forward_bf16(ctx->dnn, ly->qkv, ctx->act16, M, ctx->qkv);
        prof_add(ENG_PROF_QKV, t, lin_flops(ly->qkv, M));
        /* KV Prediction reads keys before rotation: capture them from the q|k|v rows. */
        if (capture != NULL) {
            t = prof_t0();
            const int n0 = items[0].n_tokens;
            for (int r = 0; r < n0; r++) {
                const float *row = ctx->qkv + (size_t)r * qkvd;
                const size_t o = (size_t)(capture_row0 + r) * kvd;
                if (capture->k != NULL && capture->k[l] != NULL) {
                    memcpy(capture->k[l] + o, row + qd, (size_t)kvd * sizeof(float));
                }
                if (capture->v != NULL && capture->v[l] != NULL) {
                    memcpy(capture->v[l] + o, row + qd + kvd, (size_t)kvd * sizeof(float));
                }
            }
            prof_add(ENG_PROF_SPLIT, t, 0.0);
        }
        t = prof_t0();
        eng_rope_split(&m->rope, ctx->qkv, M, H, Hkv, ctx->pos, ctx->q, ctx->k, ctx->v);
        prof_add(ENG_PROF_ROPE, t, 0.0);
        append_and_attend(ctx, c, pool, items, n_items, l, true);
        t = prof_t0();
        eng_linear_forward_bf16(ctx->dnn, ly->o, ctx->act16, M, ctx->proj);
        prof_add(ENG_PROF_O, t, lin_flops(ly->o, M));
        /* MLP block: x += o(att); x += down(silu(gate(xn)) * up(xn)). */
        t = prof_t0();
        eng_rmsnorm_bf16(ctx->x, ctx->proj, ly->mlp_norm, M, C, c->rms_norm_eps, ctx->act16);
        prof_add(ENG_PROF_NORM, t, 0.0);
        t = prof_t0();
        eng_linear_forward_bf16(ctx->dnn, ly->gate_up, ctx->act16, M, ctx->gu);
        prof_add(ENG_PROF_GATE_UP, t, lin_flops(ly->gate_up, M));
        t = prof_t0();
        eng_swiglu_bf16(ctx->gu, M, F, ctx->act16);
        prof_add(ENG_PROF_SWIGLU, t, 0.0);
        t = prof_t0();
        eng_linear_forward_bf16(ctx->dnn, ly->down, ctx->act16, M, ctx->proj);
        prof_add(ENG_PROF_DOWN, t, lin_flops(ly->down, M));
        pending = ctx->proj;
    }
    t = prof_t0();
    eng_add(ctx->x, pending, (size_t)M * C);
    prof_add(ENG_PROF_RESID, t, 0.0);
    return true;
}

/* One step of at most max_rows rows. capture_row0: row offset of this step inside the
 * capture buffers (chunked prefill of item 0). false: stopped before a layer (stop_asked),
 * nothing advanced. */
static bool forward_rows(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                         struct eng_batch_item *items, int n_items,
                         const struct eng_kv_capture *capture, int capture_row0) {
    const struct eng_model_config *c = &m->cfg;
    const int C = c->hidden_size, V = c->vocab_size;

    /* Lay the items' tokens out as rows and note each row's position. */
    double t = prof_t0();
    int M = 0;
    for (int i = 0; i < n_items; i++) {
        embed_rows(m, items[i].tokens, items[i].n_tokens, ctx->x + (size_t)M * C);
        for (int r = 0; r < items[i].n_tokens; r++) {
            ctx->pos[M + r] = items[i].seq->n_tokens + r;
        }
        M += items[i].n_tokens;
    }
    prof_add(ENG_PROF_EMBED, t, 0.0);
    const bool run =
        ctx->act16 != NULL && M > ENG_DECODE_MAX_M
            ? forward_layers_bf16(ctx, m, pool, items, n_items, M, capture, capture_row0)
            : forward_layers(ctx, m, pool, items, n_items, M, capture, capture_row0);
    if (!run) {
        return false;
    }

    /* LM head for the rows that want logits: a single item wanting all rows writes straight
     * into its buffer; otherwise the wanted rows are gathered. */
    t = prof_t0();
    if (n_items == 1 && items[0].logits_mode == ENG_LOGITS_ALL) {
        eng_rmsnorm(ctx->x, m->final_norm, M, C, c->rms_norm_eps, ctx->xn);
        eng_linear_forward(ctx->dnn, m->lm_head, ctx->xn, M, items[0].logits);
        prof_add(ENG_PROF_LM_HEAD, t, lin_flops(m->lm_head, M));
    } else {
        int n_out = 0;
        int r_end = 0;
        for (int i = 0; i < n_items; i++) {
            r_end += items[i].n_tokens;
            if (items[i].logits_mode != ENG_LOGITS_NONE) {
                memcpy(ctx->xn + (size_t)n_out * C, ctx->x + (size_t)(r_end - 1) * C,
                       (size_t)C * sizeof(float));
                n_out++;
            }
        }
        if (n_out > 0) {
            eng_rmsnorm(ctx->xn, m->final_norm, n_out, C, c->rms_norm_eps, ctx->xn);
            eng_linear_forward(ctx->dnn, m->lm_head, ctx->xn, n_out, ctx->logits);
            int o = 0;
            for (int i = 0; i < n_items; i++) {
                if (items[i].logits_mode != ENG_LOGITS_NONE) {
                    memcpy(items[i].logits, ctx->logits + (size_t)o * V, (size_t)V * sizeof(float));
                    o++;
                }
            }
        }
        prof_add(ENG_PROF_LM_HEAD, t, lin_flops(m->lm_head, n_out));
    }
    for (int i = 0; i < n_items; i++) {
        items[i].seq->n_tokens += items[i].n_tokens;
    }
    return true;
}

int eng_forward(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                struct eng_batch_item *items, int n_items, const struct eng_kv_capture *capture,
                struct kc_error *err) {
    const struct eng_model_config *c = &m->cfg;
    if (n_items < 1) {
        return kc_error_set(err, KC_EINVAL, "forward: no items");
    }
    if (pool->n_layers != c->n_layers || pool->n_kv_heads != c->n_kv_heads ||
        pool->head_dim != c->head_dim) {
        return kc_error_set(err, KC_EINVAL, "forward: KV pool shape does not match the model");
    }
    int total = 0;
    for (int i = 0; i < n_items; i++) {
        const struct eng_batch_item *it = &items[i];
        if (it->n_tokens < 1 || it->seq == NULL || it->tokens == NULL ||
            (it->logits_mode != ENG_LOGITS_NONE && it->logits == NULL)) {
            return kc_error_set(err, KC_EINVAL, "forward: item %d is malformed", i);
        }
        if (it->n_tokens > ctx->max_ctx - it->seq->n_tokens) {
            return kc_error_set(err, KC_ECONTEXT,
                                "forward: %d tokens after %d would exceed the context of %d",
                                it->n_tokens, it->seq->n_tokens, ctx->max_ctx);
        }
        for (int t = 0; t < it->n_tokens; t++) {
            if (it->tokens[t] < 0 || it->tokens[t] >= c->vocab_size) {
                return kc_error_set(err, KC_ERANGE, "forward: token id %d outside [0, %d)",
                                    it->tokens[t], c->vocab_size);
            }
        }
        total += it->n_tokens;
    }
    if (n_items > 1 && total > ctx->max_rows) {
        return kc_error_set(err, KC_EINVAL, "forward: batch of %d rows exceeds max_rows %d", total,
                            ctx->max_rows);
    }
    for (int i = 0; i < n_items; i++) {
        int rc = eng_seq_reserve(pool, items[i].seq, items[i].seq->n_tokens + items[i].n_tokens);
        if (rc != KC_OK) {
            return kc_error_set(err, rc, "forward: cannot reserve KV blocks (%s)", kc_strerror(rc));
        }
    }
    eng_dnn_enter(ctx->dnn);
    if (n_items > 1) {
        return forward_rows(ctx, m, pool, items, n_items, capture, 0)
                   ? KC_OK
                   : kc_error_set(err, KC_ECANCELED, "forward: stopped");
    }
    /* One sequence: chunks of max_rows rows; the cache carries context across chunks. */
    struct eng_batch_item whole = items[0];
    for (int start = 0; start < whole.n_tokens; start += ctx->max_rows) {
        const int n =
            whole.n_tokens - start < ctx->max_rows ? whole.n_tokens - start : ctx->max_rows;
        const bool last = start + n == whole.n_tokens;
        struct eng_batch_item chunk = {
            .seq = whole.seq,
            .tokens = whole.tokens + start,
            .n_tokens = n,
            .logits_mode = whole.logits_mode == ENG_LOGITS_ALL
                               ? ENG_LOGITS_ALL
                               : (last ? whole.logits_mode : ENG_LOGITS_NONE),
            .logits = whole.logits_mode == ENG_LOGITS_ALL
                          ? whole.logits + (size_t)start * (size_t)c->vocab_size
                          : whole.logits,
        };
        if (!forward_rows(ctx, m, pool, &chunk, 1, capture, start)) {
            return kc_error_set(err, KC_ECANCELED, "forward: stopped after %d of %d tokens", start,
                                whole.n_tokens);
        }
    }
    return KC_OK;
}

/* eng_kv_inject goes parallel from this many copied floats on (as ops.c's ENG_PAR_MIN). */
#define INJECT_PAR_MIN 32768
/* Rows rotated per eng_rope call inside an inject unit (positions on the stack). */
#define INJECT_ROPE_RUN 64

/* The work units of eng_kv_inject_ld and eng_kv_extract over positions [p0, p0 + n) of every
 * layer: one per (layer, cache block), since a block holds its K rows (and its V rows)
 * contiguously. */
struct kv_units {
    int p0, n, bs, nb; /* nb: cache blocks the positions touch */
    long count;        /* layers * nb */
    bool par;          /* worth an OpenMP team: several units, INJECT_PAR_MIN floats copied */
};

static struct kv_units kv_units_of(const struct eng_kv_pool *pool, int p0, int n) {
    struct kv_units ku = {.p0 = p0, .n = n, .bs = pool->block_size};
    const size_t kvd = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    ku.nb = n > 0 ? (p0 + n - 1) / ku.bs - p0 / ku.bs + 1 : 0;
    ku.count = (long)pool->n_layers * ku.nb;
    ku.par = ku.count > 1 && (size_t)n * kvd * 2u * (size_t)pool->n_layers >= INJECT_PAR_MIN;
    return ku;
}

/* Unit u's layer and its positions [lo, hi). */
static void kv_unit_at(const struct kv_units *ku, long u, int *l, int *lo, int *hi) {
    const int b = ku->p0 / ku->bs + (int)(u % ku->nb);
    *l = (int)(u / ku->nb);
    *lo = b * ku->bs > ku->p0 ? b * ku->bs : ku->p0;
    *hi = (b + 1) * ku->bs < ku->p0 + ku->n ? (b + 1) * ku->bs : ku->p0 + ku->n;
}

/* eng_kv_inject_ld for a pool whose elements are not f32 (bf16): keys are rotated in f32 in a
 * per-thread buffer of INJECT_ROPE_RUN rows, then rounded into the cache, so an injected key
 * is rounded exactly as the forward's append rounds a computed one (RoPE first, then one
 * rounding); values are rounded straight from the source rows. KC_ENOMEM if the buffer cannot
 * be allocated (nothing written). */
static int kv_inject_rounded(const struct eng_model *m, struct eng_kv_pool *pool,
                             const struct eng_seq *seq, const struct kv_units *ku,
                             const float *const *k_pre, const float *const *v, const size_t *lds) {
    const struct eng_model_config *c = &m->cfg;
    const size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    int n_thr = 1;
#ifdef _OPENMP
    n_thr = ku->par ? omp_get_max_threads() : 1;
#endif
    float *buf = kc_calloc((size_t)n_thr * INJECT_ROPE_RUN * kvd, sizeof(float));
    if (buf == NULL) {
        return KC_ENOMEM;
    }
    const int p0 = ku->p0;
    /* num_threads: the team never outgrows the buffer's n_thr slices. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(n_thr) if (ku->par)
#endif
    for (long u = 0; u < ku->count; u++) {
        int l, lo, hi;
        kv_unit_at(ku, u, &l, &lo, &hi);
        int thr = 0;
#ifdef _OPENMP
        thr = ku->par ? omp_get_thread_num() : 0;
#endif
        float *kb = buf + (size_t)thr * INJECT_ROPE_RUN * kvd;
        const size_t ld = lds != NULL ? lds[l] : kvd;
        KC_ASSERT(ld >= kvd);
        int32_t pos[INJECT_ROPE_RUN];
        for (int r0 = lo; r0 < hi; r0 += INJECT_ROPE_RUN) {
            const int run = hi - r0 < INJECT_ROPE_RUN ? hi - r0 : INJECT_ROPE_RUN;
            for (int i = 0; i < run; i++) {
                pos[i] = r0 + i;
                memcpy(kb + (size_t)i * kvd, k_pre[l] + (size_t)(r0 + i - p0) * ld,
                       kvd * sizeof(float));
            }
            eng_rope(&m->rope, kb, run, c->n_kv_heads, pos);
            for (int i = 0; i < run; i++) {
                eng_kv_row_put(pool, seq, l, r0 + i, kb + (size_t)i * kvd,
                               v[l] + (size_t)(r0 + i - p0) * ld);
            }
        }
    }
    free(buf);
    return KC_OK;
}

int eng_kv_inject(const struct eng_model *m, struct eng_kv_pool *pool, struct eng_seq *seq, int n,
                  const float *const *k_pre, const float *const *v, struct kc_error *err) {
    return eng_kv_inject_ld(m, pool, seq, n, k_pre, v, NULL, err);
}

int eng_kv_inject_ld(const struct eng_model *m, struct eng_kv_pool *pool, struct eng_seq *seq,
                     int n, const float *const *k_pre, const float *const *v, const size_t *lds,
                     struct kc_error *err) {
    const struct eng_model_config *c = &m->cfg;
    const int kvd = c->n_kv_heads * c->head_dim;
    if (pool->n_layers != c->n_layers || pool->n_kv_heads != c->n_kv_heads ||
        pool->head_dim != c->head_dim) {
        return kc_error_set(err, KC_EINVAL, "kv inject: KV pool shape does not match the model");
    }
    if (n < 0 || n > c->max_position_embeddings - seq->n_tokens) {
        return kc_error_set(err, KC_ECONTEXT, "kv inject: %d positions after %d exceed %d", n,
                            seq->n_tokens, c->max_position_embeddings);
    }
    int rc = eng_seq_reserve(pool, seq, seq->n_tokens + n);
    if (rc != KC_OK) {
        return kc_error_set(err, rc, "kv inject: cannot reserve KV blocks (%s)", kc_strerror(rc));
    }
    /* One work unit per (layer, cache block): a block holds its K rows (and its V rows)
     * contiguously, so each unit copies two runs and rotates its keys; units are spread
     * over the OpenMP team of the caller (set by its last GEMM). Rotating a whole run at
     * once, rather than one row per eng_rope call, also drops a parallel-region entry per
     * row. Same arithmetic as row by row, so the result is bit-identical. */
    const int p0 = seq->n_tokens;
    const struct kv_units ku = kv_units_of(pool, p0, n);
    if (pool->dtype != ENG_DTYPE_F32) {
        rc = kv_inject_rounded(m, pool, seq, &ku, k_pre, v, lds);
        if (rc != KC_OK) {
            return kc_error_set(err, rc, "kv inject: cannot allocate the rotation buffer");
        }
        seq->n_tokens += n;
        return KC_OK;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (ku.par)
#endif
    for (long u = 0; u < ku.count; u++) {
        int l, lo, hi;
        kv_unit_at(&ku, u, &l, &lo, &hi);
        float *kd = eng_kv_k_at(pool, seq, l, lo);
        float *vd = eng_kv_v_at(pool, seq, l, lo);
        const size_t ld = lds != NULL ? lds[l] : (size_t)kvd;
        KC_ASSERT(ld >= (size_t)kvd);
        const size_t row = (size_t)kvd * sizeof(float);
        if (ld == (size_t)kvd) {
            memcpy(kd, k_pre[l] + (size_t)(lo - p0) * ld, (size_t)(hi - lo) * row);
            memcpy(vd, v[l] + (size_t)(lo - p0) * ld, (size_t)(hi - lo) * row);
        } else {
            for (int r = lo; r < hi; r++) {
                memcpy(kd + (size_t)(r - lo) * (size_t)kvd, k_pre[l] + (size_t)(r - p0) * ld, row);
                memcpy(vd + (size_t)(r - lo) * (size_t)kvd, v[l] + (size_t)(r - p0) * ld, row);
            }
        }
        int32_t pos[INJECT_ROPE_RUN];
        for (int r0 = lo; r0 < hi; r0 += INJECT_ROPE_RUN) {
            const int run = hi - r0 < INJECT_ROPE_RUN ? hi - r0 : INJECT_ROPE_RUN;
            for (int i = 0; i < run; i++) {
                pos[i] = r0 + i;
            }
            eng_rope(&m->rope, kd + (size_t)(r0 - lo) * (size_t)kvd, run, c->n_kv_heads, pos);
        }
    }
    seq->n_tokens += n;
    return KC_OK;
}

/* Undoes eng_rope on x[m, n_heads, D] rows at positions pos0 .. pos0 + m - 1: the rotation by
 * the same angle with the sine negated, (x[i], x[i+D/2]) -> (x[i]cos + x[i+D/2]sin,
 * x[i+D/2]cos - x[i]sin). */
static void rope_undo(const struct eng_rope_table *t, float *x, int m, int n_heads, int pos0) {
    const int d = t->head_dim, half = d / 2;
    for (int r = 0; r < m; r++) {
        KC_ASSERT(pos0 + r >= 0 && pos0 + r < t->max_pos);
        const float *c = t->cos + (size_t)(pos0 + r) * (size_t)half;
        const float *s = t->sin + (size_t)(pos0 + r) * (size_t)half;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + ((size_t)r * (size_t)n_heads + (size_t)h) * (size_t)d;
            for (int i = 0; i < half; i++) {
                const float a = xh[i], b = xh[i + half];
                xh[i] = a * c[i] + b * s[i];
                xh[i + half] = b * c[i] - a * s[i];
            }
        }
    }
}

int eng_kv_extract(const struct eng_model *m, const struct eng_kv_pool *pool,
                   const struct eng_seq *seq, int pos0, int n, float *const *k_pre, float *const *v,
                   const size_t *lds, struct kc_error *err) {
    const struct eng_model_config *c = &m->cfg;
    const int kvd = c->n_kv_heads * c->head_dim;
    if (pool->n_layers != c->n_layers || pool->n_kv_heads != c->n_kv_heads ||
        pool->head_dim != c->head_dim) {
        return kc_error_set(err, KC_EINVAL, "kv extract: KV pool shape does not match the model");
    }
    if (pos0 < 0 || n < 0 || n > seq->n_tokens - pos0) {
        return kc_error_set(err, KC_EINVAL,
                            "kv extract: positions [%d, %d) are outside the %d the sequence holds",
                            pos0, pos0 + n, seq->n_tokens);
    }
    /* One work unit per (layer, cache block), as eng_kv_inject_ld: copy the block's run of
     * K and V rows out, then rotate the keys back in place in the destination. */
    const struct kv_units ku = kv_units_of(pool, pos0, n);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (ku.par)
#endif
    for (long u = 0; u < ku.count; u++) {
        int l, lo, hi;
        kv_unit_at(&ku, u, &l, &lo, &hi);
        /* Rows of the pool's elements (f32: a copy; bf16: widened exactly). */
        const char *ks = eng_kv_k_ptr(pool, seq, l, lo);
        const char *vs = eng_kv_v_ptr(pool, seq, l, lo);
        const size_t ld = lds != NULL ? lds[l] : (size_t)kvd;
        KC_ASSERT(ld >= (size_t)kvd);
        const size_t row = (size_t)kvd * pool->elem_size;
        for (int r = lo; r < hi; r++) {
            float *kd = k_pre[l] + (size_t)(r - pos0) * ld;
            eng_kv_load_f32(pool, kd, ks + (size_t)(r - lo) * row, (size_t)kvd);
            eng_kv_load_f32(pool, v[l] + (size_t)(r - pos0) * ld, vs + (size_t)(r - lo) * row,
                            (size_t)kvd);
            rope_undo(&m->rope, kd, 1, c->n_kv_heads, r);
        }
    }
    return KC_OK;
}
