/*
 * test_models.h — where the tests find the source tree's files and how they load the golden
 * models (tests/golden/<case>, written by tools/reference/make_golden.py). Paths are relative
 * to $KC_SOURCE_DIR (ctest sets it), else to the working directory. Header only (static
 * inline); include after <cmocka.h> (a failed load fails the test).
 */
#ifndef KC_TEST_MODELS_H
#define KC_TEST_MODELS_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/kc.h"
#include "engine/io/model_config.h"
#include "engine/kvp.h"
#include "engine/model.h"

/* out = the source tree's path of rel ("tests/fixtures/tiny_tokenizer", ...). */
static inline void test_source_path(char *out, size_t cap, const char *rel) {
    const char *src = getenv("KC_SOURCE_DIR");
    snprintf(out, cap, "%s/%s", src != NULL ? src : ".", rel);
}

/* out = the folder of golden case name ("llama_gqa", ...). */
static inline void test_golden_dir(char *out, size_t cap, const char *name) {
    const char *src = getenv("KC_SOURCE_DIR");
    snprintf(out, cap, "%s/tests/golden/%s", src != NULL ? src : ".", name);
}

/* Loads golden case name with weights of type wt for prefill and decode: KC_OK or eng_model_load's
 * error. */
static inline int test_golden_load(const char *name, enum eng_wtype wt, struct eng_model **out,
                                   struct kc_error *err) {
    char dir[1024];
    test_golden_dir(dir, sizeof(dir), name);
    struct eng_model_params p = {.prefill_wtype = wt, .decode_wtype = wt};
    return eng_model_load(dir, &p, out, err);
}

/* Golden case name with weights of type wt; fails the test when it does not load. */
static inline struct eng_model *test_golden_model(const char *name, enum eng_wtype wt) {
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    if (test_golden_load(name, wt, &m, &err) != KC_OK) {
        fail_msg("tests/golden/%s: %s", name, err.msg);
    }
    return m;
}

/* A config with only the KV shape set: what the KV pool reads. */
static inline struct eng_model_config test_kv_config(int n_layers, int n_kv_heads, int head_dim) {
    struct eng_model_config c = {0};
    c.n_layers = n_layers;
    c.n_kv_heads = n_kv_heads;
    c.head_dim = head_dim;
    return c;
}

/* An identity predictor for a model of config c paired with itself (aux = base): every base
 * layer's K and V maps are the identity of its own layer, so predict must equal full. */
static inline struct eng_kvp *test_identity_predictor(const struct eng_model_config *c) {
    const struct eng_kvp_shape s = eng_kvp_shape_of_pair(c, c);
    const int L = s.base_layers, N = s.base_kv_dim;
    float *w = calloc((size_t)L * N * N, sizeof(float));
    int32_t *map = calloc((size_t)L, sizeof(int32_t));
    assert_true(w != NULL && map != NULL);
    for (int l = 0; l < L; l++) {
        map[l] = l;
        for (int i = 0; i < N; i++) {
            w[(size_t)l * N * N + (size_t)i * N + i] = 1.0f;
        }
    }
    struct eng_kvp *p = NULL;
    struct kc_error err = {0};
    if (eng_kvp_create(&s, map, w, NULL, w, NULL, &p, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    free(w);
    free(map);
    return p;
}

/* L zeroed per-layer buffers of n floats each (a K or V capture); test_layers_free frees them. */
static inline float **test_layers_alloc(int L, size_t n) {
    float **x = calloc((size_t)L, sizeof(float *));
    assert_non_null(x);
    for (int l = 0; l < L; l++) {
        x[l] = calloc(n, sizeof(float));
        assert_non_null(x[l]);
    }
    return x;
}

static inline void test_layers_free(float **x, int L) {
    for (int l = 0; l < L; l++) {
        free(x[l]);
    }
    free(x);
}

#endif /* KC_TEST_MODELS_H */
