/*
 * Golden tests of the forward pass against the PyTorch reference (tests/golden/, written by
 * tools/reference/make_golden.py), plus the step-shape invariants the scheduler relies on:
 * chunked prefill == one-shot prefill, prefill + decode == prefill, a batched decode ==
 * separate decodes, and injected pre-RoPE K/V == the model's own.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/kc.h"
#include "engine/io/safetensors.h"
#include "engine/model.h"
#include "tests/unit/test_compare.h"
#include "tests/unit/test_cpu.h"
#include "tests/unit/test_models.h"
#include "tokenizer/tokenizer.h"

static const char *const CASES[] = {"llama_gqa", "llama_untied_bf16", "qwen2_bias",
                                    "llama3_scaling", "llama_linear_scaling"};
#define N_CASES (sizeof(CASES) / sizeof(CASES[0]))

struct golden {
    struct eng_st_set *ref;
    const int32_t *tokens;
    int T;
    const float *logits;   /* [T, V] */
    const float *k_pre;    /* [L, T, Hkv D] */
    const float *k_post;   /* [L, T, Hkv D] */
    const float *v;        /* [L, T, Hkv D] */
    const int32_t *greedy; /* [G] */
    int G;
};

static void golden_open(const char *name, struct golden *g) {
    char dir[1024], path[1100];
    test_golden_dir(dir, sizeof(dir), name);
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    struct kc_error err = {0};
    int rc = eng_st_set_open(path, &g->ref, &err);
    if (rc != KC_OK) {
        fail_msg("%s: %s", path, err.msg);
    }
    const struct eng_st_tensor *t = eng_st_set_find(g->ref, "tokens");
    assert_non_null(t);
    g->tokens = t->data;
    g->T = (int)t->shape[0];
    g->logits = eng_st_set_find(g->ref, "logits")->data;
    g->k_pre = eng_st_set_find(g->ref, "k_pre")->data;
    g->k_post = eng_st_set_find(g->ref, "k_post")->data;
    g->v = eng_st_set_find(g->ref, "v")->data;
    t = eng_st_set_find(g->ref, "greedy");
    g->greedy = t->data;
    g->G = (int)t->shape[0];
}

/* A golden model with a context for steps of max_rows rows over max_ctx positions and a pool of
 * n_blocks blocks of block_size positions: what the caller of a step holds. */
struct rig {
    struct eng_model *m;
    const struct eng_model_config *c;
    struct eng_ctx *ctx;
    struct eng_kv_pool pool;
};

static void rig_open(struct rig *r, const char *name, enum eng_wtype wt, int max_rows, int max_ctx,
                     int block_size, int n_blocks) {
    struct kc_error err = {0};
    r->m = test_golden_model(name, wt);
    r->c = eng_model_config_of(r->m);
    r->ctx = NULL;
    assert_int_equal(eng_ctx_create(r->m, max_rows, max_ctx, 1, &r->ctx, &err), KC_OK);
    assert_int_equal(eng_kv_pool_init(&r->pool, r->c, block_size, n_blocks, &err), KC_OK);
}

static void rig_close(struct rig *r) {
    eng_kv_pool_free(&r->pool);
    eng_ctx_free(r->ctx);
    eng_model_free(r->m);
}

/* Prefill of the golden tokens with all logits and a capture of K/V, then checks against the
 * reference: logits (relative to the logit scale), pre-RoPE keys, values, cached post-RoPE
 * keys. tol is relative to max |reference|. */
static void check_prefill(const char *name, enum eng_wtype wt, float tol, int max_rows) {
    struct golden g = {0};
    golden_open(name, &g);
    struct rig r;
    rig_open(&r, name, wt, max_rows, 128, 4, 64);
    const struct eng_model_config *c = r.c;
    const int V = c->vocab_size, L = c->n_layers, kvd = c->n_kv_heads * c->head_dim;
    struct kc_error err = {0};
    struct eng_seq seq = {0};
    float *logits = calloc((size_t)g.T * V, sizeof(float));
    float **kc = test_layers_alloc(L, (size_t)g.T * kvd);
    float **vc = test_layers_alloc(L, (size_t)g.T * kvd);
    struct eng_kv_capture cap = {.k = kc, .v = vc};
    struct eng_batch_item item = {.seq = &seq,
                                  .tokens = g.tokens,
                                  .n_tokens = g.T,
                                  .logits_mode = ENG_LOGITS_ALL,
                                  .logits = logits};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &item, 1, &cap, &err), KC_OK);
    assert_int_equal(seq.n_tokens, g.T);

    const float scale = max_abs(g.logits, (size_t)g.T * V);
    const float dl = max_abs_diff(logits, g.logits, (size_t)g.T * V);
    float dk = 0, dv = 0, dkp = 0, kscale = 0, vscale = 0;
    for (int l = 0; l < L; l++) {
        const float *rk = g.k_pre + (size_t)l * g.T * kvd, *rv = g.v + (size_t)l * g.T * kvd;
        const float *rkp = g.k_post + (size_t)l * g.T * kvd;
        dk = fmaxf(dk, max_abs_diff(kc[l], rk, (size_t)g.T * kvd));
        dv = fmaxf(dv, max_abs_diff(vc[l], rv, (size_t)g.T * kvd));
        kscale = fmaxf(kscale, max_abs(rk, (size_t)g.T * kvd));
        vscale = fmaxf(vscale, max_abs(rv, (size_t)g.T * kvd));
        for (int t = 0; t < g.T; t++) {
            dkp = fmaxf(dkp, max_abs_diff(eng_kv_k_at(&r.pool, &seq, l, t), rkp + (size_t)t * kvd,
                                          (size_t)kvd));
        }
    }
    print_message(
        "%s (%s, rows %d): logit scale %.3f maxdiff logits %.3g, k_pre %.3g, k_post %.3g, "
        "v %.3g\n",
        name,
        wt == ENG_WTYPE_F32    ? "f32"
        : wt == ENG_WTYPE_BF16 ? "bf16"
                               : "int8",
        max_rows, scale, dl, dk, dkp, dv);
    assert_true(dl <= tol * scale);
    assert_true(dk <= tol * kscale);
    assert_true(dkp <= tol * kscale);
    assert_true(dv <= tol * vscale);

    eng_seq_release(&r.pool, &seq);
    assert_int_equal(eng_kv_pool_n_free(&r.pool), 64);
    test_layers_free(kc, L);
    test_layers_free(vc, L);
    free(logits);
    rig_close(&r);
    eng_st_set_free(g.ref);
}

/* check_prefill for every golden case. */
static void check_prefill_cases(enum eng_wtype wt, float tol, int max_rows) {
    for (size_t i = 0; i < N_CASES; i++) {
        check_prefill(CASES[i], wt, tol, max_rows);
    }
}

static void test_prefill_matches_reference_f32(void **state) {
    (void)state;
    check_prefill_cases(ENG_WTYPE_F32, 1e-4f, 64);
}

static void test_chunked_prefill_matches_reference(void **state) {
    (void)state;
    /* 5-row chunks: the paged cache carries context across chunk and block boundaries. */
    check_prefill_cases(ENG_WTYPE_F32, 1e-4f, 5);
}

/* bf16 weights round every weight to 8 bits of mantissa and activations to bf16 before each
 * GEMM; the documented bound is 5% of the logit scale. */
static void test_prefill_bf16_within_documented_bound(void **state) {
    (void)state;
    check_prefill_cases(ENG_WTYPE_BF16, 5e-2f, 64);
}

/* int8 weights (per-channel s8) and per-row s8 activations before each GEMM; the
 * documented bound is INT8_LOGIT_TOL of the logit scale (measured maximum over the five
 * fixtures: 5.3% (llama_untied_bf16), 3.0-3.9% on the others). Where oneDNN has no VNNI the
 * weights keep 7 bits (ops_dnnl.c invariant 9) and the bound is INT8_7BIT_LOGIT_TOL
 * (measured with ONEDNN_MAX_CPU_ISA=AVX512_CORE: 8.4% (llama_untied_bf16), 4.8-6.2% on the
 * others). */
#define INT8_LOGIT_TOL 8e-2f
#define INT8_7BIT_LOGIT_TOL 12e-2f
static void test_prefill_int8_within_documented_bound(void **state) {
    (void)state;
    check_prefill_cases(ENG_WTYPE_INT8,
                        eng_int8_weight_levels() == 127 ? INT8_LOGIT_TOL : INT8_7BIT_LOGIT_TOL, 64);
}

/* Greedy decoding of the golden continuation with weights wt, token by token through the
 * decode path; the first `exact` tokens must equal the reference's (all of them: every
 * token), the rest are fed back as generated. */
static void check_greedy(enum eng_wtype wt, int exact) {
    for (size_t ci = 0; ci < N_CASES; ci++) {
        struct golden g = {0};
        golden_open(CASES[ci], &g);
        struct rig r;
        rig_open(&r, CASES[ci], wt, 64, 128, 16, 16);
        const struct eng_model_config *c = r.c;
        struct kc_error err = {0};
        struct eng_seq seq = {0};
        float *logits = calloc((size_t)c->vocab_size, sizeof(float));
        struct eng_batch_item item = {.seq = &seq,
                                      .tokens = g.tokens,
                                      .n_tokens = g.T,
                                      .logits_mode = ENG_LOGITS_LAST,
                                      .logits = logits};
        assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &item, 1, NULL, &err), KC_OK);
        int agree = 0; /* leading tokens equal to the reference's */
        for (int i = 0; i < g.G; i++) {
            int32_t tok = argmax(logits, c->vocab_size);
            if (tok != g.greedy[i] && i < exact) {
                fail_msg("%s: greedy token %d is %d, reference %d", CASES[ci], i, tok, g.greedy[i]);
            }
            agree += tok == g.greedy[i] && agree == i;
            item = (struct eng_batch_item){.seq = &seq,
                                           .tokens = &tok,
                                           .n_tokens = 1,
                                           .logits_mode = ENG_LOGITS_LAST,
                                           .logits = logits};
            assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &item, 1, NULL, &err), KC_OK);
        }
        print_message("%s: greedy agrees with the reference for %d of %d tokens\n", CASES[ci],
                      agree, g.G);
        eng_seq_release(&r.pool, &seq);
        free(logits);
        rig_close(&r);
        eng_st_set_free(g.ref);
    }
}

static void test_greedy_generation_matches_reference_f32(void **state) {
    (void)state;
    check_greedy(ENG_WTYPE_F32, INT32_MAX);
}

/* int8: the same greedy run; the first INT8_GREEDY_EXACT tokens must agree exactly. */
#define INT8_GREEDY_EXACT 4
static void test_greedy_generation_int8_sane(void **state) {
    (void)state;
    check_greedy(ENG_WTYPE_INT8, INT8_GREEDY_EXACT);
}

/* A decode batch of three sequences at different lengths gives each the logits it gets
 * alone, and injected pre-RoPE K/V (what KV Prediction supplies) reproduce the model's own
 * cache exactly. */
static void test_batched_decode_and_injection_match_single(void **state) {
    (void)state;
    struct golden g = {0};
    golden_open("llama_gqa", &g);
    struct rig r;
    rig_open(&r, "llama_gqa", ENG_WTYPE_F32, 32, 128, 4, 128);
    const struct eng_model_config *c = r.c;
    const int V = c->vocab_size, L = c->n_layers, kvd = c->n_kv_heads * c->head_dim;
    struct kc_error err = {0};
    const int lens[3] = {g.T - 1, 7, 13};
    struct eng_seq seqs[3] = {{0}};
    float *single = calloc(3 * (size_t)V, sizeof(float));
    float *batched = calloc(3 * (size_t)V, sizeof(float));
    /* Alone: prefill lens[i] tokens, then one decode step of the next token. */
    for (int i = 0; i < 3; i++) {
        struct eng_seq s = {0};
        struct eng_batch_item it = {.seq = &s,
                                    .tokens = g.tokens,
                                    .n_tokens = lens[i] + 1,
                                    .logits_mode = ENG_LOGITS_LAST,
                                    .logits = single + (size_t)i * V};
        assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_OK);
        eng_seq_release(&r.pool, &s);
    }
    /* Together: prefill each, then one 3-row decode step. */
    struct eng_batch_item items[3];
    for (int i = 0; i < 3; i++) {
        struct eng_batch_item it = {.seq = &seqs[i],
                                    .tokens = g.tokens,
                                    .n_tokens = lens[i],
                                    .logits_mode = ENG_LOGITS_NONE,
                                    .logits = NULL};
        assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_OK);
        items[i] = (struct eng_batch_item){.seq = &seqs[i],
                                           .tokens = &g.tokens[lens[i]],
                                           .n_tokens = 1,
                                           .logits_mode = ENG_LOGITS_LAST,
                                           .logits = batched + (size_t)i * V};
    }
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, items, 3, NULL, &err), KC_OK);
    const float d = max_abs_diff(single, batched, 3 * (size_t)V);
    print_message("batched vs single decode maxdiff %.3g\n", d);
    assert_true(d <= 1e-4f * max_abs(single, 3 * (size_t)V));

    /* Injection: capture K/V of the first n-1 tokens, inject them into a fresh sequence,
     * then run the last token; logits equal the full prefill's. */
    const int n = g.T;
    float **kc = test_layers_alloc(L, (size_t)n * kvd);
    float **vc = test_layers_alloc(L, (size_t)n * kvd);
    struct eng_seq a = {0}, b = {0};
    struct eng_kv_capture cap = {.k = kc, .v = vc};
    struct eng_batch_item it = {.seq = &a,
                                .tokens = g.tokens,
                                .n_tokens = n,
                                .logits_mode = ENG_LOGITS_LAST,
                                .logits = single};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, &cap, &err), KC_OK);
    assert_int_equal(eng_kv_inject(r.m, &r.pool, &b, n - 1, (const float *const *)kc,
                                   (const float *const *)vc, &err),
                     KC_OK);
    for (int l = 0; l < L; l++) {
        for (int t = 0; t < n - 1; t++) {
            assert_true(max_abs_diff(eng_kv_k_at(&r.pool, &a, l, t), eng_kv_k_at(&r.pool, &b, l, t),
                                     (size_t)kvd) <= 1e-6f);
        }
    }
    it = (struct eng_batch_item){.seq = &b,
                                 .tokens = &g.tokens[n - 1],
                                 .n_tokens = 1,
                                 .logits_mode = ENG_LOGITS_LAST,
                                 .logits = batched};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_OK);
    const float di = max_abs_diff(single, batched, (size_t)V);
    print_message("injected vs own KV logits maxdiff %.3g\n", di);
    assert_true(di <= 1e-5f * max_abs(single, (size_t)V));

    eng_seq_release(&r.pool, &a);
    eng_seq_release(&r.pool, &b);
    for (int i = 0; i < 3; i++) {
        eng_seq_release(&r.pool, &seqs[i]);
    }
    assert_int_equal(eng_kv_pool_n_free(&r.pool), 128);
    test_layers_free(kc, L);
    test_layers_free(vc, L);
    free(single);
    free(batched);
    rig_close(&r);
    eng_st_set_free(g.ref);
}

/* Bad input to a step is refused before anything changes. */
static void test_forward_rejects_bad_tokens_and_context(void **state) {
    (void)state;
    struct rig r;
    rig_open(&r, "llama_gqa", ENG_WTYPE_F32, 8, 16, 4, 2);
    const struct eng_model_config *c = r.c;
    struct kc_error err = {0};
    struct eng_seq seq = {0};
    float *logits = calloc((size_t)c->vocab_size, sizeof(float));
    int32_t bad[2] = {1, c->vocab_size};
    struct eng_batch_item it = {.seq = &seq,
                                .tokens = bad,
                                .n_tokens = 2,
                                .logits_mode = ENG_LOGITS_LAST,
                                .logits = logits};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_ERANGE);
    bad[1] = -1;
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_ERANGE);
    assert_int_equal(seq.n_tokens, 0);
    int32_t many[17] = {0};
    it.tokens = many;
    it.n_tokens = 17;
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_ECONTEXT);
    /* The pool holds 8 positions: 9 tokens cannot get blocks. */
    it.n_tokens = 9;
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_EBUSY);
    assert_int_equal(seq.n_tokens, 0);
    eng_seq_release(&r.pool, &seq);
    assert_int_equal(eng_kv_pool_n_free(&r.pool), 2);
    free(logits);
    rig_close(&r);
}

/* A stop flag (eng_forward_stop_source) ends a forward with KC_ECANCELED before its next layer:
 * a chunked prefill keeps the chunks that completed, and the next forward continues exactly. */
static void test_stop_flag_ends_a_forward_between_layers(void **state) {
    (void)state;
    struct rig r;
    rig_open(&r, "llama_gqa", ENG_WTYPE_F32, 8, 64, 4, 16);
    const struct eng_model_config *c = r.c;
    struct kc_error err = {0};
    struct eng_seq seq = {0}, ref = {0};
    float *logits = calloc((size_t)c->vocab_size, sizeof(float));
    float *want = calloc((size_t)c->vocab_size, sizeof(float));
    int32_t toks[20];
    for (int i = 0; i < 20; i++) {
        toks[i] = (int32_t)(1 + (i * 5) % 60);
    }
    atomic_int stop;
    atomic_init(&stop, 1);
    eng_forward_stop_source(&stop);
    struct eng_batch_item it = {.seq = &seq,
                                .tokens = toks,
                                .n_tokens = 20,
                                .logits_mode = ENG_LOGITS_LAST,
                                .logits = logits};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_ECANCELED);
    assert_int_equal(seq.n_tokens, 0);
    atomic_store(&stop, 0);
    it.n_tokens = 8; /* one whole chunk, then 12 more */
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_OK);
    it.tokens = toks + 8;
    it.n_tokens = 12;
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &it, 1, NULL, &err), KC_OK);
    eng_forward_stop_source(NULL);
    struct eng_batch_item ri = {.seq = &ref,
                                .tokens = toks,
                                .n_tokens = 20,
                                .logits_mode = ENG_LOGITS_LAST,
                                .logits = want};
    assert_int_equal(eng_forward(r.ctx, r.m, &r.pool, &ri, 1, NULL, &err), KC_OK);
    assert_int_equal(seq.n_tokens, 20);
    for (int v = 0; v < c->vocab_size; v++) {
        assert_true(fabsf(logits[v] - want[v]) <= 1e-6f * (1.0f + fabsf(want[v])));
    }
    eng_seq_release(&r.pool, &seq);
    eng_seq_release(&r.pool, &ref);
    free(logits);
    free(want);
    rig_close(&r);
}

/* The golden llama_gqa: its folder in src, its config.json's text in cfg. */
static void golden_config(char *src, size_t cap, char *cfg, size_t cfg_cap) {
    char path[1100];
    test_golden_dir(src, cap, "llama_gqa");
    snprintf(path, sizeof(path), "%s/config.json", src);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    const size_t n = fread(cfg, 1, cfg_cap - 1, f);
    fclose(f);
    assert_true(n > 0 && n < cfg_cap - 1);
    cfg[n] = '\0';
}

/* The number after "key": in the config text cfg. */
static long config_number(const char *cfg, const char *key) {
    char quoted[128];
    snprintf(quoted, sizeof(quoted), "\"%s\"", key);
    const char *at = strstr(cfg, quoted);
    const char *colon = at != NULL ? strchr(at, ':') : NULL;
    if (colon == NULL) {
        fail_msg("config.json has no number for %s", key);
    }
    return strtol(colon + 1, NULL, 10);
}

/* Writes dir/config.json: cfg with the number after "key": set to value. */
static void write_config(const char *dir, const char *cfg, const char *key, long value) {
    char quoted[128], edited[8192], path[1100];
    snprintf(quoted, sizeof(quoted), "\"%s\"", key);
    const char *p = strstr(cfg, quoted);
    assert_non_null(p);
    const char *colon = strchr(p, ':');
    snprintf(edited, sizeof(edited), "%.*s: %ld%s", (int)(colon - cfg), cfg, value,
             strpbrk(colon + 1, ",}"));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(edited, f);
    fclose(f);
}

/* A model directory whose tensors disagree with its config.json is refused with a message
 * naming the tensor. */
static void test_load_rejects_shape_mismatch(void **state) {
    (void)state;
    char tmpl[] = "/tmp/kc_model_XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char src[1024], path[1100];
    char cfg[4096];
    golden_config(src, sizeof(src), cfg, sizeof(cfg));
    /* Same weights, but a config that claims a wider FFN. */
    write_config(dir, cfg, "intermediate_size", config_number(cfg, "intermediate_size") + 1);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    char link_target[1100], link_path[1100];
    snprintf(link_target, sizeof(link_target), "%s/model.safetensors", src);
    snprintf(link_path, sizeof(link_path), "%s/model.safetensors", dir);
    assert_int_equal(symlink(link_target, link_path), 0);
    struct eng_model_params mp = eng_model_default_params();
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_model_load(dir, &mp, &m, &err), KC_EFORMAT);
    print_message("error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "mlp.gate_proj.weight"));
    assert_null(m);
    remove(link_path);
    remove(path);
    rmdir(dir);
}

/* Copies the golden llama_gqa into a fresh dir: config.json with num_hidden_layers set to
 * n_layers (0: as is) and model.safetensors with the extra 1-D F32 tensors named in extra. */
static char *model_copy(char *tmpl, int n_layers, const char *const *extra, size_t n_extra) {
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char src[1024], path[1100];
    char cfg[4096];
    golden_config(src, sizeof(src), cfg, sizeof(cfg));
    const long layers = config_number(cfg, "num_hidden_layers");
    write_config(dir, cfg, "num_hidden_layers", n_layers > 0 ? n_layers : layers);
    snprintf(path, sizeof(path), "%s/model.safetensors", src);
    struct eng_st_set *st = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_st_set_open(path, &st, &err), KC_OK);
    const size_t n = eng_st_set_count(st);
    struct eng_st_tensor *ts = calloc(n + n_extra, sizeof(*ts));
    static const float four[4] = {1, 2, 3, 4};
    for (size_t i = 0; i < n_extra; i++) {
        ts[i] = (struct eng_st_tensor){.name = (char *)(uintptr_t)extra[i],
                                       .dtype = ENG_DTYPE_F32,
                                       .ndim = 1,
                                       .shape = {4},
                                       .data = four,
                                       .nbytes = sizeof(four)};
    }
    for (size_t i = 0; i < n; i++) {
        ts[n_extra + i] = *eng_st_set_get(st, i);
    }
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    assert_int_equal(eng_st_write(path, ts, n + n_extra, NULL, 0, &err), KC_OK);
    free(ts);
    eng_st_set_free(st);
    return dir;
}

static void model_copy_remove(const char *dir) {
    char path[1100];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    remove(path);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    remove(path);
    rmdir(dir);
}

/* A config.json with fewer layers than the weights hold must not load silently: the first
 * unused tensor is named. So is a stray tensor; RoPE buffers are tolerated. */
static void test_load_rejects_tensors_the_config_does_not_use(void **state) {
    (void)state;
    struct eng_model_params mp = eng_model_default_params();
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    char t1[] = "/tmp/kc_model_XXXXXX";
    char *dir = model_copy(t1, 1, NULL, 0);
    assert_int_equal(eng_model_load(dir, &mp, &m, &err), KC_EFORMAT);
    print_message("error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "'model.layers.1."));
    assert_non_null(strstr(err.msg, "num_hidden_layers = 1"));
    assert_null(m);
    model_copy_remove(dir);

    static const char *const stray[] = {"model.layers.0.self_attn.rotary_emb.inv_freq",
                                        "model.layers.0.mlp.extra.weight"};
    char t2[] = "/tmp/kc_model_XXXXXX";
    dir = model_copy(t2, 0, stray, 2);
    assert_int_equal(eng_model_load(dir, &mp, &m, &err), KC_EFORMAT);
    print_message("error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "'model.layers.0.mlp.extra.weight' is not used"));
    assert_non_null(strstr(err.msg, "1 unused tensor(s)"));
    model_copy_remove(dir);

    char t3[] = "/tmp/kc_model_XXXXXX";
    dir = model_copy(t3, 0, stray, 1); /* inv_freq alone: loads */
    if (eng_model_load(dir, &mp, &m, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    eng_model_free(m);
    model_copy_remove(dir);
}

struct progress_log {
    int calls;
    size_t last_done, total;
    int cancel_at; /* non-zero: cancel on this call */
};

static int on_progress(void *ud, const char *path, size_t done, size_t total) {
    struct progress_log *pl = ud;
    assert_non_null(strstr(path, "model.safetensors"));
    assert_true(done >= pl->last_done && done <= total);
    pl->calls++;
    pl->last_done = done;
    pl->total = total;
    return pl->cancel_at != 0 && pl->calls == pl->cancel_at;
}

/* The progress callback sees bytes grow to the file's total; a non-zero return cancels. */
static void test_load_reports_progress_and_can_be_cancelled(void **state) {
    (void)state;
    char dir[1024];
    test_golden_dir(dir, sizeof(dir), "llama_gqa");
    struct progress_log pl = {0};
    struct eng_model_params mp = eng_model_default_params();
    mp.progress_cb = on_progress;
    mp.progress_ud = &pl;
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_model_load(dir, &mp, &m, &err), KC_OK);
    assert_int_equal(pl.calls, 3); /* 2 layers + the end */
    assert_true(pl.total > 0);
    assert_int_equal(pl.last_done, pl.total);
    eng_model_free(m);
    m = NULL;
    struct progress_log stop = {.cancel_at = 1};
    mp.progress_ud = &stop;
    assert_int_equal(eng_model_load(dir, &mp, &m, &err), KC_ECANCELED);
    assert_null(m);
    assert_int_equal(stop.calls, 1);
}

/* A tokenizer must fit the model it serves: every id it can produce, BOS and EOS included,
 * below the model's vocab_size (checked at start-up, not at the first request). A smaller
 * tokenizer is fine (padded vocabularies). */
static void test_tokenizer_must_fit_the_model_vocab(void **state) {
    (void)state;
    char path[1100];
    test_source_path(path, sizeof(path), "tests/fixtures/tiny_tokenizer");
    struct eng_tok *tok = NULL;
    struct kc_error err = {0};
    if (eng_tok_load(path, &tok, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    const int32_t n = eng_tok_vocab_size(tok);
    assert_int_equal(eng_tok_check_vocab(tok, n, &err), KC_OK);
    assert_int_equal(eng_tok_check_vocab(tok, n + 64, &err), KC_OK);
    assert_int_equal(eng_tok_check_vocab(tok, n - 1, &err), KC_ERANGE);
    print_message("rejected: %s\n", err.msg);
    char want[64];
    snprintf(want, sizeof(want), "token %d (", (int)(n - 1));
    assert_non_null(strstr(err.msg, want));
    /* Special tokens are named first: the fixture's bos/eos are low ids. */
    const int32_t bos = eng_tok_bos(tok), eos = eng_tok_eos(tok);
    const int32_t top = bos > eos ? bos : eos;
    if (top >= 0) {
        assert_int_equal(eng_tok_check_vocab(tok, top, &err), KC_ERANGE);
        print_message("rejected: %s\n", err.msg);
        assert_non_null(strstr(err.msg, bos > eos ? "bos_token" : "eos_token"));
    }
    eng_tok_free(tok);
}

/* serve's auto prefill weights are bf16 exactly where the CPU has native bf16 dot products
 * and ONEDNN_MAX_CPU_ISA leaves them (the _avx512_core variant caps them away); the default
 * decode weights are bf16 wherever oneDNN has AVX-512. Checked against /proc/cpuinfo, so a
 * oneDNN that missed the CPU's bf16 would fail here. */
static void test_auto_weight_types_follow_the_cpu(void **state) {
    (void)state;
    static const char *const bf16_words[] = {"avx512_bf16", "amx_bf16", NULL};
    static const char *const avx512_words[] = {"avx512bw", NULL};
    static const char *const below_bf16[] = {
        "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2_VNNI", "AVX2", "AVX", "SSE41", NULL};
    static const char *const below_avx512[] = {"AVX2_VNNI", "AVX2", "AVX", "SSE41", NULL};
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    bool capped_bf16 = false, capped_avx512 = false;
    for (int i = 0; cap != NULL && below_bf16[i] != NULL; i++) {
        capped_bf16 = capped_bf16 || strcasecmp(cap, below_bf16[i]) == 0;
    }
    for (int i = 0; cap != NULL && below_avx512[i] != NULL; i++) {
        capped_avx512 = capped_avx512 || strcasecmp(cap, below_avx512[i]) == 0;
    }
    const bool want_prefill_bf16 = cpu_has_any(bf16_words) && !capped_bf16;
    const bool want_decode_bf16 = cpu_has_any(avx512_words) && !capped_avx512;
    const enum eng_wtype prefill = eng_prefill_wtype_auto();
    const enum eng_wtype decode = eng_model_default_params().decode_wtype;
    printf("  ONEDNN_MAX_CPU_ISA=%s: auto prefill %s, default decode %s\n", cap ? cap : "(unset)",
           eng_wtype_name(prefill), eng_wtype_name(decode));
    assert_int_equal(prefill, want_prefill_bf16 ? ENG_WTYPE_BF16 : ENG_WTYPE_F32);
    assert_int_equal(decode, want_decode_bf16 ? ENG_WTYPE_BF16 : ENG_WTYPE_F32);
    assert_int_equal(eng_model_default_params().prefill_wtype, ENG_WTYPE_F32);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_matches_reference_f32),
        cmocka_unit_test(test_chunked_prefill_matches_reference),
        cmocka_unit_test(test_prefill_bf16_within_documented_bound),
        cmocka_unit_test(test_greedy_generation_matches_reference_f32),
        cmocka_unit_test(test_prefill_int8_within_documented_bound),
        cmocka_unit_test(test_greedy_generation_int8_sane),
        cmocka_unit_test(test_batched_decode_and_injection_match_single),
        cmocka_unit_test(test_forward_rejects_bad_tokens_and_context),
        cmocka_unit_test(test_stop_flag_ends_a_forward_between_layers),
        cmocka_unit_test(test_load_rejects_shape_mismatch),
        cmocka_unit_test(test_load_rejects_tensors_the_config_does_not_use),
        cmocka_unit_test(test_load_reports_progress_and_can_be_cancelled),
        cmocka_unit_test(test_tokenizer_must_fit_the_model_vocab),
        cmocka_unit_test(test_auto_weight_types_follow_the_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
