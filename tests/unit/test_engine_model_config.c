/*
 * test_engine_model_config.c — config.json parsing accepts the published configs of the
 * supported families, refuses every malformed or out-of-range field with a message naming the
 * key (RELIABILITY.md A6), and the presets and derived counts match the real models.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/io/model_config.h"

/* ---- helpers ---------------------------------------------------------------------------- */

struct kv {
    const char *key;
    const char *val;
};

/* A TinyLlama-like config; tests omit or override one key at a time. */
static const struct kv k_base[] = {
    {"architectures", "[\"LlamaForCausalLM\"]"},
    {"model_type", "\"llama\""},
    {"vocab_size", "32000"},
    {"hidden_size", "2048"},
    {"intermediate_size", "5632"},
    {"num_hidden_layers", "22"},
    {"num_attention_heads", "32"},
    {"num_key_value_heads", "4"},
    {"max_position_embeddings", "2048"},
    {"rms_norm_eps", "1e-05"},
    {"rope_theta", "10000.0"},
    {"tie_word_embeddings", "false"},
    {"bos_token_id", "1"},
    {"eos_token_id", "2"},
    {"hidden_act", "\"silu\""},
    {"torch_dtype", "\"bfloat16\""},
    {NULL, NULL},
};

/* Builds the base config without `omit` and with key=val set (replaced or appended). */
static const char *build(const char *omit, const char *key, const char *val) {
    static char buf[4096];
    size_t n = 0;
    bool replaced = false;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{");
    bool first = true;
    for (const struct kv *p = k_base; p->key != NULL; p++) {
        if (omit != NULL && strcmp(p->key, omit) == 0) {
            continue;
        }
        const char *v = p->val;
        if (key != NULL && strcmp(p->key, key) == 0) {
            v = val;
            replaced = true;
        }
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%s\": %s", first ? "" : ", ", p->key,
                              v);
        first = false;
    }
    if (key != NULL && !replaced) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ", \"%s\": %s", key, val);
    }
    snprintf(buf + n, sizeof(buf) - n, "}");
    return buf;
}

static struct eng_model_config parse_ok(const char *json) {
    struct eng_model_config c;
    struct kc_error err;
    memset(&err, 0, sizeof(err));
    int rc = eng_model_config_parse(json, strlen(json), &c, &err);
    if (rc != KC_OK) {
        print_error("unexpected failure: %s\n", err.msg);
    }
    assert_int_equal(rc, KC_OK);
    return c;
}

static void parse_fails(const char *json, int code, const char *what) {
    struct eng_model_config c;
    memset(&c, 0x5a, sizeof(c));
    struct eng_model_config before = c;
    struct kc_error err;
    memset(&err, 0, sizeof(err));
    int rc = eng_model_config_parse(json, strlen(json), &c, &err);
    if (rc != code || strstr(err.msg, what) == NULL) {
        print_error("rc=%d want %d; msg='%s' want '%s'\n", rc, code, err.msg, what);
    }
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, what));
    assert_memory_equal(&c, &before, sizeof(c)); /* untouched on failure */
}

static void set_fails(const char *key, const char *val, int code, const char *what) {
    parse_fails(build(NULL, key, val), code, what);
}

/* ---- real configs ------------------------------------------------------------------------ */

static void test_base_config_parses_with_defaults(void **state) {
    (void)state;
    struct eng_model_config c = parse_ok(build(NULL, NULL, NULL));
    assert_int_equal(c.arch, ENG_ARCH_LLAMA);
    assert_int_equal(c.vocab_size, 32000);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.rope_scaling, ENG_ROPE_NONE);
    assert_false(c.attention_bias);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 2);
    assert_int_equal(c.sliding_window, 0);
    assert_true(c.rms_norm_eps == 1e-5f);

    /* Defaults: kv heads = heads, theta 10000, no bos/eos, head_dim null = derived. */
    c = parse_ok(build("num_key_value_heads", NULL, NULL));
    assert_int_equal(c.n_kv_heads, 32);
    c = parse_ok(build("rope_theta", NULL, NULL));
    assert_true(c.rope_theta == 10000.0f);
    c = parse_ok(build("bos_token_id", "eos_token_id", "null"));
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos, 0);
    c = parse_ok(build(NULL, "head_dim", "null"));
    assert_int_equal(c.head_dim, 64);
    c = parse_ok(build(NULL, "num_key_value_heads", "null"));
    assert_int_equal(c.n_kv_heads, 32);
}

static const char *const k_llama32_1b = "{\n"
                                        "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                                        "  \"attention_bias\": false,\n"
                                        "  \"attention_dropout\": 0.0,\n"
                                        "  \"bos_token_id\": 128000,\n"
                                        "  \"eos_token_id\": [128001, 128008, 128009],\n"
                                        "  \"head_dim\": 64,\n"
                                        "  \"hidden_act\": \"silu\",\n"
                                        "  \"hidden_size\": 2048,\n"
                                        "  \"initializer_range\": 0.02,\n"
                                        "  \"intermediate_size\": 8192,\n"
                                        "  \"max_position_embeddings\": 131072,\n"
                                        "  \"mlp_bias\": false,\n"
                                        "  \"model_type\": \"llama\",\n"
                                        "  \"num_attention_heads\": 32,\n"
                                        "  \"num_hidden_layers\": 16,\n"
                                        "  \"num_key_value_heads\": 8,\n"
                                        "  \"pretraining_tp\": 1,\n"
                                        "  \"rms_norm_eps\": 1e-05,\n"
                                        "  \"rope_scaling\": {\n"
                                        "    \"factor\": 32.0,\n"
                                        "    \"high_freq_factor\": 4.0,\n"
                                        "    \"low_freq_factor\": 1.0,\n"
                                        "    \"original_max_position_embeddings\": 8192,\n"
                                        "    \"rope_type\": \"llama3\"\n"
                                        "  },\n"
                                        "  \"rope_theta\": 500000.0,\n"
                                        "  \"tie_word_embeddings\": true,\n"
                                        "  \"torch_dtype\": \"bfloat16\",\n"
                                        "  \"transformers_version\": \"4.45.0.dev0\",\n"
                                        "  \"use_cache\": true,\n"
                                        "  \"vocab_size\": 128256\n"
                                        "}\n";

/* Field-by-field equality (the struct has padding, so no memcmp). */
static void assert_config_equal(const struct eng_model_config *a,
                                const struct eng_model_config *b) {
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->hidden_size, b->hidden_size);
    assert_int_equal(a->intermediate_size, b->intermediate_size);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->max_position_embeddings, b->max_position_embeddings);
    assert_true(a->rms_norm_eps == b->rms_norm_eps);
    assert_true(a->rope_theta == b->rope_theta);
    assert_int_equal(a->rope_scaling, b->rope_scaling);
    if (a->rope_scaling != ENG_ROPE_NONE) {
        assert_true(a->rope_factor == b->rope_factor);
    }
    if (a->rope_scaling == ENG_ROPE_LLAMA3) {
        assert_true(a->rope_low_freq_factor == b->rope_low_freq_factor);
        assert_true(a->rope_high_freq_factor == b->rope_high_freq_factor);
        assert_int_equal(a->rope_original_max_position, b->rope_original_max_position);
    }
    assert_int_equal(a->tie_word_embeddings, b->tie_word_embeddings);
    assert_int_equal(a->attention_bias, b->attention_bias);
    assert_int_equal(a->bos_token_id, b->bos_token_id);
    assert_int_equal(a->n_eos, b->n_eos);
    for (int i = 0; i < a->n_eos; i++) {
        assert_int_equal(a->eos_token_ids[i], b->eos_token_ids[i]);
    }
    assert_int_equal(a->sliding_window, b->sliding_window);
}

static void test_llama32_config_with_llama3_rope_scaling_parses(void **state) {
    (void)state;
    struct eng_model_config c = parse_ok(k_llama32_1b);
    assert_int_equal(c.rope_scaling, ENG_ROPE_LLAMA3);
    assert_true(c.rope_factor == 32.0f);
    assert_true(c.rope_low_freq_factor == 1.0f);
    assert_true(c.rope_high_freq_factor == 4.0f);
    assert_int_equal(c.rope_original_max_position, 8192);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_token_ids[2], 128009);
    assert_true(c.tie_word_embeddings);
    struct eng_model_config p;
    assert_int_equal(eng_model_config_preset("llama-3.2-1b", &p), KC_OK);
    assert_config_equal(&c, &p);
}

static void test_qwen2_config_parses_with_qkv_bias(void **state) {
    (void)state;
    const char *qwen =
        "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,"
        "\"bos_token_id\":151643,\"eos_token_id\":151643,\"hidden_act\":\"silu\","
        "\"hidden_size\":896,\"initializer_range\":0.02,\"intermediate_size\":4864,"
        "\"max_position_embeddings\":32768,\"max_window_layers\":24,\"model_type\":\"qwen2\","
        "\"num_attention_heads\":14,\"num_hidden_layers\":24,\"num_key_value_heads\":2,"
        "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,\"sliding_window\":32768,"
        "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\","
        "\"transformers_version\":\"4.40.1\",\"use_cache\":true,\"use_sliding_window\":false,"
        "\"vocab_size\":151936}";
    struct eng_model_config c = parse_ok(qwen);
    assert_int_equal(c.arch, ENG_ARCH_QWEN2);
    assert_true(c.attention_bias);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.sliding_window, 0);
    struct eng_model_config p;
    assert_int_equal(eng_model_config_preset("qwen2-0.5b", &p), KC_OK);
    assert_config_equal(&c, &p);
}

static void test_mistral_sliding_window_is_recorded(void **state) {
    (void)state;
    const char *m01 =
        "{\"architectures\":[\"MistralForCausalLM\"],\"bos_token_id\":1,\"eos_token_id\":2,"
        "\"hidden_act\":\"silu\",\"hidden_size\":4096,\"initializer_range\":0.02,"
        "\"intermediate_size\":14336,\"max_position_embeddings\":32768,"
        "\"model_type\":\"mistral\",\"num_attention_heads\":32,\"num_hidden_layers\":32,"
        "\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,"
        "\"sliding_window\":4096,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
        "\"transformers_version\":\"4.34.0.dev0\",\"use_cache\":true,\"vocab_size\":32000}";
    struct eng_model_config c = parse_ok(m01);
    assert_int_equal(c.arch, ENG_ARCH_MISTRAL);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.head_dim, 128);
    assert_false(c.attention_bias);

    /* v0.2 disables the window with null; a window >= max positions never applies. */
    c = parse_ok(build(NULL, "model_type", "\"mistral\""));
    assert_int_equal(c.sliding_window, 0);
    const char *m02 = "{\"model_type\":\"mistral\",\"vocab_size\":32000,\"hidden_size\":4096,"
                      "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                      "\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                      "\"max_position_embeddings\":32768,\"rms_norm_eps\":1e-05,"
                      "\"rope_theta\":1000000.0,\"sliding_window\":null}";
    c = parse_ok(m02);
    assert_int_equal(c.sliding_window, 0);
    const char *mbig = "{\"model_type\":\"mistral\",\"vocab_size\":32000,\"hidden_size\":4096,"
                       "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                       "\"num_attention_heads\":32,\"max_position_embeddings\":32768,"
                       "\"rms_norm_eps\":1e-05,\"sliding_window\":32768}";
    c = parse_ok(mbig);
    assert_int_equal(c.sliding_window, 0);
    const char *mbad = "{\"model_type\":\"mistral\",\"vocab_size\":32000,\"hidden_size\":4096,"
                       "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                       "\"num_attention_heads\":32,\"max_position_embeddings\":32768,"
                       "\"rms_norm_eps\":1e-05,\"sliding_window\":4096.5}";
    parse_fails(mbad, KC_EFORMAT, "sliding_window");
}

/* Writes a preset back out as HF JSON text. */
static void preset_to_json(const struct eng_model_config *c, char *buf, size_t cap) {
    static const char *const types[] = {"llama", "mistral", "qwen2"};
    char rope[256] = "null";
    if (c->rope_scaling == ENG_ROPE_LLAMA3) {
        snprintf(rope, sizeof(rope),
                 "{\"rope_type\":\"llama3\",\"factor\":%.9g,\"low_freq_factor\":%.9g,"
                 "\"high_freq_factor\":%.9g,\"original_max_position_embeddings\":%d}",
                 (double)c->rope_factor, (double)c->rope_low_freq_factor,
                 (double)c->rope_high_freq_factor, c->rope_original_max_position);
    }
    char eos[128] = "null";
    if (c->n_eos > 0) {
        size_t n = (size_t)snprintf(eos, sizeof(eos), "[");
        for (int i = 0; i < c->n_eos; i++) {
            n += (size_t)snprintf(eos + n, sizeof(eos) - n, "%s%d", i ? "," : "",
                                  c->eos_token_ids[i]);
        }
        snprintf(eos + n, sizeof(eos) - n, "]");
    }
    char bos[32] = "null";
    if (c->bos_token_id >= 0) {
        snprintf(bos, sizeof(bos), "%d", c->bos_token_id);
    }
    snprintf(buf, cap,
             "{\"model_type\":\"%s\",\"vocab_size\":%d,\"hidden_size\":%d,"
             "\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
             "\"num_key_value_heads\":%d,\"head_dim\":%d,\"max_position_embeddings\":%d,"
             "\"rms_norm_eps\":%.9g,\"rope_theta\":%.9g,\"rope_scaling\":%s,"
             "\"tie_word_embeddings\":%s,\"attention_bias\":%s,\"bos_token_id\":%s,"
             "\"eos_token_id\":%s}",
             types[c->arch], c->vocab_size, c->hidden_size, c->intermediate_size, c->n_layers,
             c->n_heads, c->n_kv_heads, c->head_dim, c->max_position_embeddings,
             (double)c->rms_norm_eps, (double)c->rope_theta, rope,
             c->tie_word_embeddings ? "true" : "false", c->attention_bias ? "true" : "false", bos,
             eos);
}

static void test_every_preset_round_trips_through_json(void **state) {
    (void)state;
    static const char *const names[] = {"tinyllama-1.1b", "llama-3.2-1b", "qwen2-0.5b",
                                        "kvcast-base", "kvcast-aux"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct eng_model_config p;
        assert_int_equal(eng_model_config_preset(names[i], &p), KC_OK);
        assert_int_equal(p.n_heads % p.n_kv_heads, 0);
        assert_int_equal(p.n_heads * p.head_dim, p.hidden_size);
        char json[2048];
        preset_to_json(&p, json, sizeof(json));
        struct eng_model_config c = parse_ok(json);
        assert_config_equal(&c, &p);
    }
    struct eng_model_config p;
    assert_int_equal(eng_model_config_preset("gpt-5", &p), KC_ENOTFOUND);
}

static void test_parameter_counts_match_published_models(void **state) {
    (void)state;
    struct eng_model_config p;
    /* Published totals (HF model cards / safetensors metadata). */
    assert_int_equal(eng_model_config_preset("tinyllama-1.1b", &p), KC_OK);
    assert_int_equal(eng_model_config_n_params(&p), 1100048384u);
    assert_int_equal(eng_model_config_preset("llama-3.2-1b", &p), KC_OK);
    assert_int_equal(eng_model_config_n_params(&p), 1235814400u);
    assert_int_equal(eng_model_config_preset("qwen2-0.5b", &p), KC_OK);
    assert_int_equal(eng_model_config_n_params(&p), 494032768u);

    /* kvcast-base by hand: V*C + C + L*(q+k+v+o + 3CF + 2C). */
    assert_int_equal(eng_model_config_preset("kvcast-base", &p), KC_OK);
    const size_t layer = 256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 688;
    assert_int_equal(eng_model_config_n_params(&p), 4096 * 256 + 256 + 8 * (layer + 512));
    /* FLOPs: 2 * (L*layer + V*C) + 4*ctx*H*D*L. */
    const double f0 = 2.0 * (8.0 * (double)layer + 4096.0 * 256.0);
    assert_true(eng_model_config_flops_per_token(&p, 0) == f0);
    assert_true(eng_model_config_flops_per_token(&p, 100) == f0 + 4.0 * 100 * 4 * 64 * 8);
    assert_true(eng_model_config_flops_per_token(&p, -5) == f0);
}

/* ---- refusals --------------------------------------------------------------------------- */

static void test_missing_required_keys_are_refused(void **state) {
    (void)state;
    static const char *const required[] = {"model_type",
                                           "vocab_size",
                                           "hidden_size",
                                           "intermediate_size",
                                           "num_hidden_layers",
                                           "num_attention_heads",
                                           "max_position_embeddings",
                                           "rms_norm_eps"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        char what[96];
        snprintf(what, sizeof(what), "'%s' is missing", required[i]);
        parse_fails(build(required[i], NULL, NULL), KC_EFORMAT, what);
        /* null counts as missing for a required key */
        parse_fails(build(NULL, required[i], "null"), KC_EFORMAT, what);
    }
}

static void test_zero_negative_and_huge_dims_are_refused(void **state) {
    (void)state;
    static const char *const dims[] = {"vocab_size",
                                       "hidden_size",
                                       "intermediate_size",
                                       "num_hidden_layers",
                                       "num_attention_heads",
                                       "num_key_value_heads",
                                       "head_dim",
                                       "max_position_embeddings"};
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        set_fails(dims[i], "0", KC_ERANGE, dims[i]);
        set_fails(dims[i], "-1", KC_ERANGE, dims[i]);
        set_fails(dims[i], "4294967297", KC_ERANGE, dims[i]);
        set_fails(dims[i], "9223372036854775807", KC_ERANGE, dims[i]);
        set_fails(dims[i], "99999999999999999999", KC_EFORMAT, "not valid JSON");
    }
    set_fails("num_hidden_layers", "513", KC_ERANGE, "out of range [1, 512]");
    /* Regression (fuzz_model_config): a derived head_dim must obey the same limit as an
     * explicit one: 48192 / 32 = 1506 > ENG_MAX_HEAD_DIM. */
    set_fails("hidden_size", "48192", KC_ERANGE, "derived head_dim");
    /* head_dim * heads beyond the hidden limit */
    parse_fails("{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":2048,"
                "\"intermediate_size\":5632,\"num_hidden_layers\":2,"
                "\"num_attention_heads\":128,\"head_dim\":1024,"
                "\"max_position_embeddings\":2048,\"rms_norm_eps\":1e-5}",
                KC_ERANGE, "head_dim * num_attention_heads");
}

static void test_float_where_int_needed_is_refused(void **state) {
    (void)state;
    set_fails("hidden_size", "2048.0", KC_EFORMAT, "'hidden_size' must be an integer, got a real");
    set_fails("vocab_size", "\"32000\"", KC_EFORMAT, "'vocab_size' must be an integer");
    set_fails("num_hidden_layers", "true", KC_EFORMAT, "'num_hidden_layers' must be an integer");
    set_fails("bos_token_id", "1.0", KC_EFORMAT, "'bos_token_id' must be an integer");
}

static void test_heads_not_dividing_are_refused(void **state) {
    (void)state;
    set_fails("num_key_value_heads", "3", KC_EFORMAT, "not a multiple of num_key_value_heads");
    set_fails("num_key_value_heads", "64", KC_EFORMAT, "not a multiple");
    set_fails("num_attention_heads", "36", KC_EFORMAT, "not divisible by num_attention_heads");
    /* An explicit head_dim lifts the divisibility rule (H*D need not equal C)... */
    const char *json = build(NULL, "head_dim", "64");
    struct eng_model_config c = parse_ok(json);
    assert_int_equal(c.head_dim, 64);
    /* ...but head_dim must stay even for RoPE. */
    set_fails("head_dim", "63", KC_EFORMAT, "even");
}

static void test_eos_list_and_token_ranges(void **state) {
    (void)state;
    struct eng_model_config c = parse_ok(build(NULL, "eos_token_id", "[2, 7, 31999]"));
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_token_ids[0], 2);
    assert_int_equal(c.eos_token_ids[2], 31999);
    c = parse_ok(build(NULL, "eos_token_id", "[]"));
    assert_int_equal(c.n_eos, 0);
    set_fails("eos_token_id", "[1,2,3,4,5,6,7,8,9]", KC_ERANGE, "at most 8");
    set_fails("eos_token_id", "32000", KC_ERANGE, "outside the vocabulary");
    set_fails("eos_token_id", "[2, -1]", KC_ERANGE, "eos_token_id");
    set_fails("eos_token_id", "[2, 3.0]", KC_EFORMAT, "must be an integer");
    set_fails("eos_token_id", "\"</s>\"", KC_EFORMAT, "eos_token_id");
    set_fails("bos_token_id", "-1", KC_ERANGE, "bos_token_id");
}

static void test_float_fields_are_range_checked(void **state) {
    (void)state;
    set_fails("rms_norm_eps", "0", KC_ERANGE, "rms_norm_eps");
    set_fails("rms_norm_eps", "-1e-5", KC_ERANGE, "rms_norm_eps");
    set_fails("rms_norm_eps", "2.0", KC_ERANGE, "rms_norm_eps");
    set_fails("rms_norm_eps", "\"1e-5\"", KC_EFORMAT, "'rms_norm_eps' must be a number");
    set_fails("rms_norm_eps", "1e999", KC_EFORMAT, "not valid JSON"); /* jansson: overflow */
    set_fails("rope_theta", "1", KC_ERANGE, "rope_theta");
    set_fails("rope_theta", "1e20", KC_ERANGE, "rope_theta");
    struct eng_model_config c = parse_ok(build(NULL, "rms_norm_eps", "1"));
    assert_true(c.rms_norm_eps == 1.0f);
    c = parse_ok(build(NULL, "rope_theta", "500000"));
    assert_true(c.rope_theta == 500000.0f);
}

static void test_rope_scaling_variants(void **state) {
    (void)state;
    struct eng_model_config c =
        parse_ok(build(NULL, "rope_scaling", "{\"type\": \"linear\", \"factor\": 4.0}"));
    assert_int_equal(c.rope_scaling, ENG_ROPE_LINEAR);
    assert_true(c.rope_factor == 4.0f);
    c = parse_ok(build(NULL, "rope_scaling", "{\"rope_type\": \"default\"}"));
    assert_int_equal(c.rope_scaling, ENG_ROPE_NONE);
    c = parse_ok(build(NULL, "rope_scaling", "null"));
    assert_int_equal(c.rope_scaling, ENG_ROPE_NONE);
    set_fails("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", KC_EUNSUPPORTED,
              "'yarn' is not supported");
    set_fails("rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2.0}", KC_EUNSUPPORTED,
              "'dynamic'");
    set_fails("rope_scaling", "{\"factor\": 2.0}", KC_EFORMAT, "rope_type");
    set_fails("rope_scaling", "\"llama3\"", KC_EFORMAT, "rope_scaling");
    set_fails("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 0.5}", KC_ERANGE,
              "rope_scaling.factor");
    set_fails("rope_scaling",
              "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
              "\"high_freq_factor\": 4.0}",
              KC_EFORMAT, "'rope_scaling.original_max_position_embeddings' is missing");
    set_fails("rope_scaling",
              "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, "
              "\"high_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192}",
              KC_ERANGE, "must exceed");
    set_fails("rope_scaling",
              "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
              "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192.0}",
              KC_EFORMAT, "must be an integer");
}

static void test_unsupported_architectures_are_refused(void **state) {
    (void)state;
    set_fails("model_type", "\"gpt2\"", KC_EUNSUPPORTED, "model_type 'gpt2'");
    set_fails("model_type", "3", KC_EFORMAT, "'model_type' must be a string");
    set_fails("hidden_act", "\"gelu\"", KC_EUNSUPPORTED, "hidden_act");
    set_fails("mlp_bias", "true", KC_EUNSUPPORTED, "mlp_bias");
    set_fails("tie_word_embeddings", "1", KC_EFORMAT, "'tie_word_embeddings' must be a boolean");
    set_fails("attention_bias", "\"yes\"", KC_EFORMAT, "attention_bias");
    struct eng_model_config c = parse_ok(build(NULL, "attention_bias", "true"));
    assert_true(c.attention_bias);
    /* qwen2 always has the bias, whatever the key says. */
    c = parse_ok(build(NULL, "model_type", "\"qwen2\""));
    assert_true(c.attention_bias);
}

static void test_malformed_json_is_refused(void **state) {
    (void)state;
    parse_fails("", KC_EFORMAT, "not valid JSON");
    parse_fails("{", KC_EFORMAT, "not valid JSON");
    parse_fails("[1, 2]", KC_EFORMAT, "not a JSON object");
    parse_fails("{\"model_type\": \"llama\", \"model_type\": \"llama\"}", KC_EFORMAT, "duplicate");
    parse_fails("{\"model_type\": \"ll\xff\"}", KC_EFORMAT, "not valid JSON");
    /* Not NUL-terminated input: len is honoured. */
    const char *json = build(NULL, NULL, NULL);
    char *copy = malloc(strlen(json));
    assert_non_null(copy);
    memcpy(copy, json, strlen(json));
    struct eng_model_config c;
    struct kc_error err;
    assert_int_equal(eng_model_config_parse(copy, strlen(json), &c, &err), KC_OK);
    assert_int_equal(eng_model_config_parse(copy, strlen(json) - 1, &c, &err), KC_EFORMAT);
    free(copy);
}

static void test_load_names_the_file(void **state) {
    (void)state;
    char dir[] = "/tmp/kc_test_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    struct eng_model_config c;
    struct kc_error err;
    assert_int_equal(eng_model_config_load(path, &c, &err), KC_ENOTFOUND);
    assert_non_null(strstr(err.msg, path));

    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(build(NULL, "hidden_size", "0"), f);
    fclose(f);
    assert_int_equal(eng_model_config_load(path, &c, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "hidden_size"));

    f = fopen(path, "wb");
    assert_non_null(f);
    fputs(k_llama32_1b, f);
    fclose(f);
    assert_int_equal(eng_model_config_load(path, &c, &err), KC_OK);
    assert_int_equal(c.vocab_size, 128256);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_config_parses_with_defaults),
        cmocka_unit_test(test_llama32_config_with_llama3_rope_scaling_parses),
        cmocka_unit_test(test_qwen2_config_parses_with_qkv_bias),
        cmocka_unit_test(test_mistral_sliding_window_is_recorded),
        cmocka_unit_test(test_every_preset_round_trips_through_json),
        cmocka_unit_test(test_parameter_counts_match_published_models),
        cmocka_unit_test(test_missing_required_keys_are_refused),
        cmocka_unit_test(test_zero_negative_and_huge_dims_are_refused),
        cmocka_unit_test(test_float_where_int_needed_is_refused),
        cmocka_unit_test(test_heads_not_dividing_are_refused),
        cmocka_unit_test(test_eos_list_and_token_ranges),
        cmocka_unit_test(test_float_fields_are_range_checked),
        cmocka_unit_test(test_rope_scaling_variants),
        cmocka_unit_test(test_unsupported_architectures_are_refused),
        cmocka_unit_test(test_malformed_json_is_refused),
        cmocka_unit_test(test_load_names_the_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
