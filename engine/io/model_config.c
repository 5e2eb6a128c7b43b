/*
 * model_config.c — Hugging Face config.json reader, named presets and the derived parameter
 * and FLOP counts declared in model_config.h.
 *
 * Place in the data flow: model loading reads config.json here first; every buffer size in
 * the engine (weights, KV cache, scratch) is derived from the struct this fills, so every
 * field is range-checked before it leaves this file.
 *
 * DESIGN:
 *  1. A config either parses completely or leaves *out untouched; there is no partial fill.
 *  2. Integer fields must be JSON integers (1.0 is refused: silent truncation of a dimension
 *     would load the wrong tensor shapes). Range checks are written `!(lo <= x && x <= hi)`
 *     so a NaN can never pass.
 *  3. Anything the engine cannot run faithfully (another model_type, rope scaling variant,
 *     activation or an MLP bias) is refused with KC_EUNSUPPORTED rather than approximated.
 *
 * Thread rules: pure functions, no shared state.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/io/model_config.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* config.json files are a few KB; anything this large is not one. */
#define CFG_MAX_FILE_BYTES (16u * 1024u * 1024u)

static const char *cfg_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* Returns the value at key, or NULL when the key is absent or JSON null. */
static json_t *cfg_get(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

/*
 * Reads obj[key] as an integer in [lo, hi]. Absent/null: KC_EFORMAT when required, else
 * *out = dflt. `where` prefixes the key in messages ("" or "rope_scaling.").
 */
static int cfg_int(json_t *obj, const char *where, const char *key, bool required, int dflt,
                   long long lo, long long hi, int *out, struct kc_error *err) {
    json_t *v = cfg_get(obj, key);
    if (v == NULL) {
        if (required) {
            return kc_error_set(err, KC_EFORMAT, "'%s%s' is missing", where, key);
        }
        *out = dflt;
        return KC_OK;
    }
    if (!json_is_integer(v)) {
        return kc_error_set(err, KC_EFORMAT, "'%s%s' must be an integer, got %s", where, key,
                            cfg_type_name(v));
    }
    const long long x = (long long)json_integer_value(v);
    if (!(lo <= x && x <= hi)) {
        return kc_error_set(err, KC_ERANGE, "'%s%s' = %lld is out of range [%lld, %lld]", where,
                            key, x, lo, hi);
    }
    *out = (int)x;
    return KC_OK;
}

/* Reads obj[key] as a finite number (integer or real) in [lo, hi], stored as float. */
static int cfg_num(json_t *obj, const char *where, const char *key, bool required, double dflt,
                   double lo, double hi, float *out, struct kc_error *err) {
    json_t *v = cfg_get(obj, key);
    if (v == NULL) {
        if (required) {
            return kc_error_set(err, KC_EFORMAT, "'%s%s' is missing", where, key);
        }
        *out = (float)dflt;
        return KC_OK;
    }
    if (!json_is_number(v)) {
        return kc_error_set(err, KC_EFORMAT, "'%s%s' must be a number, got %s", where, key,
                            cfg_type_name(v));
    }
    const double x = json_number_value(v);
    if (!isfinite(x) || !(lo <= x && x <= hi)) {
        return kc_error_set(err, KC_ERANGE, "'%s%s' = %g is out of range [%g, %g]", where, key, x,
                            lo, hi);
    }
    *out = (float)x;
    return KC_OK;
}

/* Reads obj[key] as a boolean; absent/null gives dflt. */
static int cfg_bool(json_t *obj, const char *key, bool dflt, bool *out, struct kc_error *err) {
    json_t *v = cfg_get(obj, key);
    if (v == NULL) {
        *out = dflt;
        return KC_OK;
    }
    if (!json_is_boolean(v)) {
        return kc_error_set(err, KC_EFORMAT, "'%s' must be a boolean, got %s", key,
                            cfg_type_name(v));
    }
    *out = json_is_true(v);
    return KC_OK;
}

static int cfg_rope_scaling(json_t *root, struct eng_model_config *c, struct kc_error *err) {
    json_t *rs = cfg_get(root, "rope_scaling");
    c->rope_scaling = ENG_ROPE_NONE;
    c->rope_factor = 1.0f;
    if (rs == NULL) {
        return KC_OK;
    }
    if (!json_is_object(rs)) {
        return kc_error_set(err, KC_EFORMAT, "'rope_scaling' must be an object or null, got %s",
                            cfg_type_name(rs));
    }
    json_t *ty = cfg_get(rs, "rope_type");
    if (ty == NULL) {
        ty = cfg_get(rs, "type"); /* older transformers spelling */
    }
    if (!json_is_string(ty)) {
        return kc_error_set(err, KC_EFORMAT, "'rope_scaling' has no string 'rope_type' or 'type'");
    }
    const char *name = json_string_value(ty);
    const char *w = "rope_scaling.";
    int rc;
    if (strcmp(name, "default") == 0) {
        return KC_OK;
    }
    if (strcmp(name, "linear") == 0) {
        c->rope_scaling = ENG_ROPE_LINEAR;
        return cfg_num(rs, w, "factor", true, 1.0, 1.0, 1024.0, &c->rope_factor, err);
    }
    if (strcmp(name, "llama3") != 0) {
        return kc_error_set(err, KC_EUNSUPPORTED,
                            "rope_scaling type '%.64s' is not supported (llama3, linear)", name);
    }
    c->rope_scaling = ENG_ROPE_LLAMA3;
    if ((rc = cfg_num(rs, w, "factor", true, 1.0, 1.0, 1024.0, &c->rope_factor, err)) != KC_OK ||
        (rc = cfg_num(rs, w, "low_freq_factor", true, 1.0, 1e-6, 1e6, &c->rope_low_freq_factor,
                      err)) != KC_OK ||
        (rc = cfg_num(rs, w, "high_freq_factor", true, 4.0, 1e-6, 1e6, &c->rope_high_freq_factor,
                      err)) != KC_OK ||
        (rc = cfg_int(rs, w, "original_max_position_embeddings", true, 0, 1, ENG_MAX_POSITIONS,
                      &c->rope_original_max_position, err)) != KC_OK) {
        return rc;
    }
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor)) {
        return kc_error_set(err, KC_ERANGE,
                            "'rope_scaling.high_freq_factor' (%g) must exceed low_freq_factor (%g)",
                            (double)c->rope_high_freq_factor, (double)c->rope_low_freq_factor);
    }
    return KC_OK;
}

static int cfg_token_id(json_t *v, const char *key, int vocab, int *out, struct kc_error *err) {
    if (!json_is_integer(v)) {
        return kc_error_set(err, KC_EFORMAT, "'%s' must be an integer, got %s", key,
                            cfg_type_name(v));
    }
    const long long x = (long long)json_integer_value(v);
    if (!(0 <= x && x < vocab)) {
        return kc_error_set(err, KC_ERANGE, "'%s' = %lld is outside the vocabulary [0, %d)", key, x,
                            vocab);
    }
    *out = (int)x;
    return KC_OK;
}

static int cfg_special_tokens(json_t *root, struct eng_model_config *c, struct kc_error *err) {
    int rc;
    json_t *bos = cfg_get(root, "bos_token_id");
    c->bos_token_id = -1;
    if (bos != NULL &&
        (rc = cfg_token_id(bos, "bos_token_id", c->vocab_size, &c->bos_token_id, err)) != KC_OK) {
        return rc;
    }
    json_t *eos = cfg_get(root, "eos_token_id");
    c->n_eos = 0;
    if (eos == NULL) {
        return KC_OK;
    }
    if (!json_is_array(eos)) {
        rc = cfg_token_id(eos, "eos_token_id", c->vocab_size, &c->eos_token_ids[0], err);
        if (rc == KC_OK) {
            c->n_eos = 1;
        }
        return rc;
    }
    const size_t n = json_array_size(eos);
    if (n > ENG_MAX_EOS) {
        return kc_error_set(err, KC_ERANGE, "'eos_token_id' lists %zu ids, at most %d supported", n,
                            ENG_MAX_EOS);
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = cfg_token_id(json_array_get(eos, i), "eos_token_id[]", c->vocab_size,
                               &c->eos_token_ids[i], err)) != KC_OK) {
            return rc;
        }
    }
    c->n_eos = (int)n;
    return KC_OK;
}

/* Sliding window: see the field comment in model_config.h. */
static int cfg_sliding_window(json_t *root, struct eng_model_config *c, struct kc_error *err) {
    c->sliding_window = 0;
    bool used = c->arch == ENG_ARCH_MISTRAL;
    int rc;
    if (c->arch == ENG_ARCH_QWEN2 &&
        (rc = cfg_bool(root, "use_sliding_window", false, &used, err)) != KC_OK) {
        return rc;
    }
    if (!used) {
        return KC_OK; /* llama has no window; qwen2 ignores its value unless enabled */
    }
    int w = 0;
    if ((rc = cfg_int(root, "", "sliding_window", false, 0, 1, INT32_MAX, &w, err)) != KC_OK) {
        return rc;
    }
    c->sliding_window = w < c->max_position_embeddings ? w : 0;
    return KC_OK;
}

/* Everything after JSON parsing; fills *c and checks cross-field constraints. */
static int cfg_from_json(json_t *root, struct eng_model_config *c, struct kc_error *err) {
    int rc;
    if (!json_is_object(root)) {
        return kc_error_set(err, KC_EFORMAT, "config is not a JSON object");
    }
    json_t *mt = cfg_get(root, "model_type");
    if (mt == NULL) {
        return kc_error_set(err, KC_EFORMAT, "'model_type' is missing");
    }
    if (!json_is_string(mt)) {
        return kc_error_set(err, KC_EFORMAT, "'model_type' must be a string, got %s",
                            cfg_type_name(mt));
    }
    const char *mts = json_string_value(mt);
    if (strcmp(mts, "llama") == 0) {
        c->arch = ENG_ARCH_LLAMA;
    } else if (strcmp(mts, "mistral") == 0) {
        c->arch = ENG_ARCH_MISTRAL;
    } else if (strcmp(mts, "qwen2") == 0) {
        c->arch = ENG_ARCH_QWEN2;
    } else {
        return kc_error_set(err, KC_EUNSUPPORTED,
                            "model_type '%.64s' is not supported (llama, mistral, qwen2)", mts);
    }

    if ((rc = cfg_int(root, "", "vocab_size", true, 0, 1, ENG_MAX_VOCAB, &c->vocab_size, err)) !=
            KC_OK ||
        (rc = cfg_int(root, "", "hidden_size", true, 0, 1, ENG_MAX_HIDDEN, &c->hidden_size, err)) !=
            KC_OK ||
        (rc = cfg_int(root, "", "intermediate_size", true, 0, 1, ENG_MAX_FFN, &c->intermediate_size,
                      err)) != KC_OK ||
        (rc = cfg_int(root, "", "num_hidden_layers", true, 0, 1, ENG_MAX_LAYERS, &c->n_layers,
                      err)) != KC_OK ||
        (rc = cfg_int(root, "", "num_attention_heads", true, 0, 1, ENG_MAX_HEADS, &c->n_heads,
                      err)) != KC_OK ||
        (rc = cfg_int(root, "", "num_key_value_heads", false, c->n_heads, 1, ENG_MAX_HEADS,
                      &c->n_kv_heads, err)) != KC_OK ||
        (rc = cfg_int(root, "", "head_dim", false, 0, 1, ENG_MAX_HEAD_DIM, &c->head_dim, err)) !=
            KC_OK ||
        (rc = cfg_int(root, "", "max_position_embeddings", true, 0, 1, ENG_MAX_POSITIONS,
                      &c->max_position_embeddings, err)) != KC_OK ||
        (rc = cfg_num(root, "", "rms_norm_eps", true, 0.0, 1e-12, 1.0, &c->rms_norm_eps, err)) !=
            KC_OK ||
        (rc = cfg_num(root, "", "rope_theta", false, 10000.0, 1.0, 1e12, &c->rope_theta, err)) !=
            KC_OK) {
        return rc;
    }
    if (!(c->rope_theta > 1.0f)) {
        return kc_error_set(err, KC_ERANGE, "'rope_theta' = %g must be greater than 1",
                            (double)c->rope_theta);
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        return kc_error_set(
            err, KC_EFORMAT,
            "num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", c->n_heads,
            c->n_kv_heads);
    }
    if (c->head_dim == 0) {
        if (c->hidden_size % c->n_heads != 0) {
            return kc_error_set(err, KC_EFORMAT,
                                "hidden_size (%d) is not divisible by num_attention_heads (%d)",
                                c->hidden_size, c->n_heads);
        }
        c->head_dim = c->hidden_size / c->n_heads;
        if (c->head_dim > ENG_MAX_HEAD_DIM) {
            return kc_error_set(err, KC_ERANGE,
                                "derived head_dim = hidden_size / num_attention_heads = %d "
                                "exceeds %d",
                                c->head_dim, ENG_MAX_HEAD_DIM);
        }
    }
    if (c->head_dim % 2 != 0) {
        return kc_error_set(err, KC_EFORMAT, "head_dim (%d) must be even for rotary embeddings",
                            c->head_dim);
    }
    if ((long long)c->head_dim * c->n_heads > ENG_MAX_HIDDEN) {
        return kc_error_set(err, KC_ERANGE, "head_dim * num_attention_heads (%d * %d) exceeds %d",
                            c->head_dim, c->n_heads, ENG_MAX_HIDDEN);
    }

    if ((rc = cfg_rope_scaling(root, c, err)) != KC_OK ||
        (rc = cfg_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, err)) !=
            KC_OK) {
        return rc;
    }
    if (c->arch == ENG_ARCH_QWEN2) {
        c->attention_bias = true; /* Qwen2 always has q/k/v biases; its config has no key */
    } else if ((rc = cfg_bool(root, "attention_bias", false, &c->attention_bias, err)) != KC_OK) {
        return rc;
    }
    bool mlp_bias = false;
    if ((rc = cfg_bool(root, "mlp_bias", false, &mlp_bias, err)) != KC_OK) {
        return rc;
    }
    if (mlp_bias) {
        return kc_error_set(err, KC_EUNSUPPORTED, "'mlp_bias' = true is not supported");
    }
    json_t *act = cfg_get(root, "hidden_act");
    if (act != NULL && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0)) {
        return kc_error_set(err, KC_EUNSUPPORTED, "'hidden_act' must be \"silu\"");
    }
    if ((rc = cfg_special_tokens(root, c, err)) != KC_OK ||
        (rc = cfg_sliding_window(root, c, err)) != KC_OK) {
        return rc;
    }
    return KC_OK;
}

int eng_model_config_parse(const char *json, size_t len, struct eng_model_config *out,
                           struct kc_error *err) {
    KC_ASSERT(out != NULL && (json != NULL || len == 0));
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return kc_error_set(err, KC_EFORMAT, "config is not valid JSON: %s (line %d, column %d)",
                            jerr.text, jerr.line, jerr.column);
    }
    struct eng_model_config c;
    memset(&c, 0, sizeof(c));
    int rc = cfg_from_json(root, &c, err);
    json_decref(root);
    if (rc != KC_OK) {
        return rc;
    }
    *out = c;
    return KC_OK;
}

int eng_model_config_load(const char *path, struct eng_model_config *out, struct kc_error *err) {
    KC_ASSERT(path != NULL && out != NULL);
    char *buf = NULL;
    size_t len = 0;
    int rc = kc_file_read(path, CFG_MAX_FILE_BYTES, &buf, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    rc = eng_model_config_parse(buf, len, out, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Presets                                                                               */
/* ------------------------------------------------------------------------------------ */

struct cfg_preset {
    const char *name;
    struct eng_model_config c;
};

/* Values from each model's published config.json; the kvcast pair is our embedded default. */
static const struct cfg_preset cfg_presets[] = {
    {"tinyllama-1.1b",
     {.arch = ENG_ARCH_LLAMA,
      .vocab_size = 32000,
      .hidden_size = 2048,
      .intermediate_size = 5632,
      .n_layers = 22,
      .n_heads = 32,
      .n_kv_heads = 4,
      .head_dim = 64,
      .max_position_embeddings = 2048,
      .rms_norm_eps = 1e-5f,
      .rope_theta = 10000.0f,
      .rope_factor = 1.0f,
      .tie_word_embeddings = false,
      .bos_token_id = 1,
      .eos_token_ids = {2},
      .n_eos = 1}},
    {"llama-3.2-1b",
     {.arch = ENG_ARCH_LLAMA,
      .vocab_size = 128256,
      .hidden_size = 2048,
      .intermediate_size = 8192,
      .n_layers = 16,
      .n_heads = 32,
      .n_kv_heads = 8,
      .head_dim = 64,
      .max_position_embeddings = 131072,
      .rms_norm_eps = 1e-5f,
      .rope_theta = 500000.0f,
      .rope_scaling = ENG_ROPE_LLAMA3,
      .rope_factor = 32.0f,
      .rope_low_freq_factor = 1.0f,
      .rope_high_freq_factor = 4.0f,
      .rope_original_max_position = 8192,
      .tie_word_embeddings = true,
      .bos_token_id = 128000,
      .eos_token_ids = {128001, 128008, 128009},
      .n_eos = 3}},
    {"qwen2-0.5b",
     {.arch = ENG_ARCH_QWEN2,
      .vocab_size = 151936,
      .hidden_size = 896,
      .intermediate_size = 4864,
      .n_layers = 24,
      .n_heads = 14,
      .n_kv_heads = 2,
      .head_dim = 64,
      .max_position_embeddings = 32768,
      .rms_norm_eps = 1e-6f,
      .rope_theta = 1000000.0f,
      .rope_factor = 1.0f,
      .tie_word_embeddings = true,
      .attention_bias = true,
      .bos_token_id = 151643,
      .eos_token_ids = {151643},
      .n_eos = 1}},
    {"kvcast-base",
     {.arch = ENG_ARCH_LLAMA,
      .vocab_size = 4096,
      .hidden_size = 256,
      .intermediate_size = 688,
      .n_layers = 8,
      .n_heads = 4,
      .n_kv_heads = 2,
      .head_dim = 64,
      .max_position_embeddings = 2048,
      .rms_norm_eps = 1e-5f,
      .rope_theta = 10000.0f,
      .rope_factor = 1.0f,
      .tie_word_embeddings = true,
      .bos_token_id = 4095, /* <|endoftext|>: BOS and EOS of the embedded tokenizer */
      .eos_token_ids = {4095},
      .n_eos = 1}},
    {"kvcast-aux",
     {.arch = ENG_ARCH_LLAMA,
      .vocab_size = 4096,
      .hidden_size = 128,
      .intermediate_size = 344,
      .n_layers = 4,
      .n_heads = 2,
      .n_kv_heads = 1,
      .head_dim = 64,
      .max_position_embeddings = 2048,
      .rms_norm_eps = 1e-5f,
      .rope_theta = 10000.0f,
      .rope_factor = 1.0f,
      .tie_word_embeddings = true,
      .bos_token_id = 4095, /* <|endoftext|>: BOS and EOS of the embedded tokenizer */
      .eos_token_ids = {4095},
      .n_eos = 1}},
};

int eng_model_config_preset(const char *name, struct eng_model_config *out) {
    KC_ASSERT(name != NULL && out != NULL);
    for (size_t i = 0; i < sizeof(cfg_presets) / sizeof(cfg_presets[0]); i++) {
        if (strcmp(name, cfg_presets[i].name) == 0) {
            *out = cfg_presets[i].c;
            return KC_OK;
        }
    }
    return KC_ENOTFOUND;
}

/* ------------------------------------------------------------------------------------ */
/* Derived counts                                                                        */
/* ------------------------------------------------------------------------------------ */

/* Weights of the matmuls in one layer: q (C x H*D), k and v (C x Hkv*D), o (H*D x C),
 * gate/up/down (3 x C x F). The ENG_MAX_* limits keep every product far below 2^63. */
static size_t cfg_layer_matmul_params(const struct eng_model_config *c) {
    const size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    const size_t HD = (size_t)c->n_heads * (size_t)c->head_dim;
    const size_t KVD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    return C * HD + 2 * C * KVD + HD * C + 3 * C * F;
}

/*
 * n_params = V*C (embedding) + (tied ? 0 : V*C) (lm_head) + C (final norm)
 *          + L * (matmuls + 2*C norms + (attention_bias ? H*D + 2*Hkv*D : 0)).
 */
size_t eng_model_config_n_params(const struct eng_model_config *c) {
    KC_ASSERT(c != NULL);
    const size_t V = (size_t)c->vocab_size, C = (size_t)c->hidden_size;
    const size_t L = (size_t)c->n_layers;
    const size_t HD = (size_t)c->n_heads * (size_t)c->head_dim;
    const size_t KVD = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t per_layer = cfg_layer_matmul_params(c) + 2 * C;
    if (c->attention_bias) {
        per_layer += HD + 2 * KVD;
    }
    return V * C * (c->tie_word_embeddings ? 1 : 2) + C + L * per_layer;
}

/*
 * Forward FLOPs for one token that attends to ctx positions (itself included):
 *   2 * (L * layer matmul weights + V*C for the lm_head, tied or not)  -- multiply-adds
 *   + 4 * ctx * H * D * L                                               -- QK^T and PV
 * Norms, RoPE, softmax, SwiGLU and biases are O(C) per token and left out, as in the usual
 * 2N + attention estimate (Kaplan et al. 2020). ctx < 0 counts as 0.
 */
double eng_model_config_flops_per_token(const struct eng_model_config *c, int ctx) {
    KC_ASSERT(c != NULL);
    const double matmul = (double)c->n_layers * (double)cfg_layer_matmul_params(c) +
                          (double)c->vocab_size * (double)c->hidden_size;
    const double attn = 4.0 * (double)(ctx > 0 ? ctx : 0) * (double)c->n_heads *
                        (double)c->head_dim * (double)c->n_layers;
    return 2.0 * matmul + attn;
}
