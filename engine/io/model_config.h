/*
 * model_config.h — the architecture hyper-parameters of a Llama-family model, read from a
 * Hugging Face `config.json` (llama incl. llama3 rope scaling, mistral, qwen2) or taken
 * from a named preset for synthetic benchmarks.
 *
 * Place in the data flow: read once at model load; the forward pass and the KV cache size
 * everything from it. Plain data, no ownership beyond the struct itself.
 */
#ifndef ENG_MODEL_CONFIG_H
#define ENG_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "common/kc.h"

/* Limits that keep every derived size far from overflow; configs beyond them are refused. */
#define ENG_MAX_LAYERS 512
#define ENG_MAX_HEADS 1024
#define ENG_MAX_HEAD_DIM 1024
#define ENG_MAX_HIDDEN 65536
#define ENG_MAX_FFN 262144
#define ENG_MAX_VOCAB 1048576
#define ENG_MAX_POSITIONS 1048576
#define ENG_MAX_EOS 8

enum eng_arch { ENG_ARCH_LLAMA = 0, ENG_ARCH_MISTRAL, ENG_ARCH_QWEN2 };

enum eng_rope_scaling { ENG_ROPE_NONE = 0, ENG_ROPE_LLAMA3, ENG_ROPE_LINEAR };

struct eng_model_config {
    enum eng_arch arch;
    int vocab_size;        /* V */
    int hidden_size;       /* C */
    int intermediate_size; /* F */
    int n_layers;          /* L */
    int n_heads;           /* H */
    int n_kv_heads;        /* Hkv; H % Hkv == 0 */
    int head_dim;          /* D; `head_dim` key or hidden_size / n_heads */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    enum eng_rope_scaling rope_scaling;
    float rope_factor;              /* llama3 / linear */
    float rope_low_freq_factor;     /* llama3 */
    float rope_high_freq_factor;    /* llama3 */
    int rope_original_max_position; /* llama3 original_max_position_embeddings */
    bool tie_word_embeddings;
    bool attention_bias;            /* q/k/v projections carry a bias (qwen2) */
    int bos_token_id;               /* -1 when absent */
    int eos_token_ids[ENG_MAX_EOS]; /* `eos_token_id` may be an int or a list */
    int n_eos;
    /* Sliding-window attention span (mistral `sliding_window`, qwen2 when
     * `use_sliding_window`), 0 = none. We do not implement SWA: a window smaller than
     * max_position_embeddings is recorded here so the engine can refuse contexts beyond it;
     * one that never bites (>= max_position_embeddings) is stored as 0. */
    int sliding_window;
};

/*
 * Parses config.json text (len bytes, need not be NUL-terminated). Validates every field:
 * present where required, integer where an integer is required, within the limits above,
 * n_heads % n_kv_heads == 0, head_dim*n_heads sane, finite positive eps/theta, known
 * model_type and rope_scaling type. Unknown keys are ignored (HF configs carry many).
 * On failure fills err naming the key and leaves *out untouched. Codes: KC_EFORMAT (bad JSON,
 * missing key, wrong JSON type, heads not dividing), KC_ERANGE (outside the limits above),
 * KC_EUNSUPPORTED (model_type, rope scaling type, hidden_act other than silu, mlp_bias).
 */
int eng_model_config_parse(const char *json, size_t len, struct eng_model_config *out,
                           struct kc_error *err);

/* Reads and parses a config.json file; error messages start with the path. */
int eng_model_config_load(const char *path, struct eng_model_config *out, struct kc_error *err);

/*
 * Fills *out with a named real configuration for synthetic models: "tinyllama-1.1b",
 * "llama-3.2-1b", "qwen2-0.5b", "kvcast-base", "kvcast-aux". KC_ENOTFOUND otherwise.
 */
int eng_model_config_preset(const char *name, struct eng_model_config *out);

/* Parameter count (weights only) and forward FLOPs per token at context length ctx
 * (2 * matmul weights incl. lm_head + 4*ctx*H*D*L attention; formulas in model_config.c). */
size_t eng_model_config_n_params(const struct eng_model_config *c);
double eng_model_config_flops_per_token(const struct eng_model_config *c, int ctx);

#endif /* ENG_MODEL_CONFIG_H */
