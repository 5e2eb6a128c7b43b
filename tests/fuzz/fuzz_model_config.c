/*
 * fuzz_model_config.c — libFuzzer target for the config.json reader (RELIABILITY.md A6).
 * Input: the raw file bytes. An accepted config that violates a documented limit aborts;
 * the derived counts are computed on every accepted config so their arithmetic is fuzzed too.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/io/model_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct eng_model_config c;
    struct kc_error err;
    if (eng_model_config_parse((const char *)data, size, &c, &err) != KC_OK) {
        return 0;
    }
    if (!(c.vocab_size >= 1 && c.vocab_size <= ENG_MAX_VOCAB) ||
        !(c.hidden_size >= 1 && c.hidden_size <= ENG_MAX_HIDDEN) ||
        !(c.intermediate_size >= 1 && c.intermediate_size <= ENG_MAX_FFN) ||
        !(c.n_layers >= 1 && c.n_layers <= ENG_MAX_LAYERS) ||
        !(c.n_heads >= 1 && c.n_heads <= ENG_MAX_HEADS) ||
        !(c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0) ||
        !(c.head_dim >= 2 && c.head_dim <= ENG_MAX_HEAD_DIM && c.head_dim % 2 == 0) ||
        !(c.max_position_embeddings >= 1 && c.max_position_embeddings <= ENG_MAX_POSITIONS) ||
        !(c.rms_norm_eps > 0.0f && c.rope_theta > 1.0f) ||
        !(c.n_eos >= 0 && c.n_eos <= ENG_MAX_EOS) ||
        !(c.bos_token_id >= -1 && c.bos_token_id < c.vocab_size) ||
        !(c.sliding_window >= 0 && c.sliding_window < c.max_position_embeddings + 1)) {
        abort();
    }
    for (int i = 0; i < c.n_eos; i++) {
        if (!(c.eos_token_ids[i] >= 0 && c.eos_token_ids[i] < c.vocab_size)) {
            abort();
        }
    }
    volatile size_t p = eng_model_config_n_params(&c);
    volatile double f = eng_model_config_flops_per_token(&c, c.max_position_embeddings);
    (void)p;
    (void)f;
    return 0;
}
