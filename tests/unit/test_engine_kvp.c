/*
 * Tests of KV Prediction (engine/kvp.c, engine/kvp_io.c, engine/kvp_calibrate.c,
 * engine/ops_gram.c, eng_kv_extract of engine/model.c): the identity invariant (aux = base,
 * identity maps: predicted cache == the base's own, greedy output == the full path), random
 * predictors of real shapes, cached prefixes (an exact base prefix stays bit for bit and gives
 * "full prefix + predicted rest"; a cached aux prefix gives the logits of none), predictor
 * files and bundles (round trip and every rejection), layer maps, one-token prompts, and
 * closed-form calibration (exact recovery of a known affine map; ~identity when aux = base).
 * The tests own the base context and both pools, as a prefill worker does (struct kvp_rig),
 * and every test checks that all KV blocks went back to their pools, after failures too.
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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/kc.h"
#include "engine/io/safetensors.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "engine/ops_gram.h"
#include "tests/unit/test_compare.h"
#include "tests/unit/test_models.h"

static struct eng_model *load_case(const char *name) {
    return test_golden_model(name, ENG_WTYPE_F32);
}

/* The golden prompt of a case (24 tokens), copied. */
static int32_t *golden_tokens(const char *name, int *n) {
    char dir[1024], path[1100];
    test_golden_dir(dir, sizeof(dir), name);
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    struct eng_st_set *ref = NULL;
    struct kc_error err = {0};
    if (eng_st_set_open(path, &ref, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    const struct eng_st_tensor *t = eng_st_set_find(ref, "tokens");
    assert_non_null(t);
    *n = (int)t->shape[0];
    int32_t *tok = malloc((size_t)*n * sizeof(int32_t));
    memcpy(tok, t->data, (size_t)*n * sizeof(int32_t));
    eng_st_set_free(ref);
    return tok;
}

/* ---- the caller's side of a KV-prediction prefill ---- */

/* What a caller of the kvp API owns besides its pools: a base forward context and, for
 * PREDICT, an aux pool and sequence. */
struct kvp_rig {
    struct eng_kvp_ctx *kc;
    struct eng_ctx *bctx;
    struct eng_kv_pool apool; /* block size 4, max_ctx positions */
    struct eng_seq aseq;      /* PREDICT's aux side, empty between calls */
};

static void rig_init(struct kvp_rig *r, const struct eng_model *base, const struct eng_model *aux,
                     const struct eng_kvp *pred, int max_rows, int max_ctx) {
    struct kc_error err = {0};
    memset(r, 0, sizeof(*r));
    if (eng_kvp_ctx_create(base, aux, pred, max_rows, max_ctx, 1, &r->kc, &err) != KC_OK ||
        eng_ctx_create(base, max_rows, max_ctx, 1, &r->bctx, &err) != KC_OK ||
        eng_kv_pool_init(&r->apool, eng_model_config_of(aux), 4, (max_ctx + 3) / 4, &err) !=
            KC_OK) {
        fail_msg("rig: %s", err.msg);
    }
}

/* Frees the rig, checking that every aux block went back. */
static void rig_free(struct kvp_rig *r) {
    assert_int_equal(r->aseq.n_tokens, 0);
    assert_int_equal(eng_kv_pool_n_free(&r->apool), r->apool.n_blocks);
    eng_kv_pool_free(&r->apool);
    eng_ctx_free(r->bctx);
    eng_kvp_ctx_free(r->kc);
}

/* Where mode reads and writes: seq (in pool) is the base sequence, or the aux one for AUX. */
static struct eng_kvp_seqs rig_io(struct kvp_rig *r, enum eng_kvp_mode mode,
                                  struct eng_kv_pool *pool, struct eng_seq *seq) {
    if (mode == ENG_KVP_AUX) {
        return (struct eng_kvp_seqs){.aux_pool = pool, .aux = seq};
    }
    return (struct eng_kvp_seqs){.base_ctx = r->bctx,
                                 .base_pool = pool,
                                 .base = seq,
                                 .aux_pool = &r->apool,
                                 .aux = &r->aseq};
}

/* eng_kvp_prefill of seq with the rig's aux side, released after the call (as a caller that
 * publishes no aux blocks does). */
static int rig_prefill(struct kvp_rig *r, enum eng_kvp_mode mode, struct eng_kv_pool *pool,
                       struct eng_seq *seq, const int32_t *tokens, int n, float *logits,
                       struct eng_kvp_timings *t, struct kc_error *err) {
    const struct eng_kvp_seqs io = rig_io(r, mode, pool, seq);
    const int rc = eng_kvp_prefill(r->kc, mode, &io, tokens, n, logits, t, err);
    eng_seq_release(&r->apool, &r->aseq);
    return rc;
}

static int rig_forward(struct kvp_rig *r, enum eng_kvp_mode mode, struct eng_kv_pool *pool,
                       struct eng_seq *seq, const int32_t *tokens, int n, enum eng_logits_mode lm,
                       float *logits, struct kc_error *err) {
    const struct eng_kvp_seqs io = rig_io(r, mode, pool, seq);
    return eng_kvp_forward(r->kc, mode, &io, tokens, n, lm, logits, err);
}

/* ---- the invariant ---- */

/* With aux = base and identity maps, the predicted cache equals the base's own cache and the
 * greedy continuation equals the full path's, token for token. */
static void check_identity_invariant(const char *name) {
    struct eng_model *base = load_case(name), *aux = load_case(name);
    const struct eng_model_config *c = eng_model_config_of(base);
    const int V = c->vocab_size, L = c->n_layers, kvd = c->n_kv_heads * c->head_dim;
    struct eng_kvp *pred = test_identity_predictor(c);
    int n = 0;
    int32_t *prompt = golden_tokens(name, &n);
    const int G = 32;
    struct kc_error err = {0};
    struct kvp_rig rig;
    rig_init(&rig, base, aux, pred, 64, n + G + 1);
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, c, 8, 32, &err), KC_OK);
    struct eng_seq full = {0}, pr = {0};
    float *lf = calloc((size_t)V, sizeof(float)), *lp = calloc((size_t)V, sizeof(float));
    struct eng_kvp_timings t = {0};
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &pool, &full, prompt, n, lf, NULL, &err),
                     KC_OK);
    assert_int_equal(rig_prefill(&rig, ENG_KVP_PREDICT, &pool, &pr, prompt, n, lp, &t, &err),
                     KC_OK);
    assert_int_equal(pr.n_tokens, n);
    assert_int_equal(eng_kv_pool_n_free(&rig.apool), rig.apool.n_blocks);
    float dk = 0, dv = 0;
    for (int l = 0; l < L; l++) {
        for (int p = 0; p < n; p++) {
            dk = fmaxf(dk, max_abs_diff(eng_kv_k_at(&pool, &full, l, p),
                                        eng_kv_k_at(&pool, &pr, l, p), (size_t)kvd));
            dv = fmaxf(dv, max_abs_diff(eng_kv_v_at(&pool, &full, l, p),
                                        eng_kv_v_at(&pool, &pr, l, p), (size_t)kvd));
        }
    }
    const float dl = max_abs_diff(lf, lp, (size_t)V);
    print_message("%s: identity predictor maxdiff k %.3g v %.3g first logits %.3g "
                  "(aux %.2f ms, predict %.2f ms, base step %.2f ms)\n",
                  name, dk, dv, dl, t.aux_ms, t.predict_ms, t.base_first_step_ms);
    /* The last prompt token is a one-row step on the predict path (oneDNN's GEMV kernel) and a
     * row of the prefill chunk on the full path: equal up to float summation order. */
    assert_true(dk <= 1e-5f);
    assert_true(dv <= 1e-5f);
    assert_true(dl <= 1e-5f);
    /* Greedy continuation, each path appending its own exact K/V. */
    for (int i = 0; i < G; i++) {
        int32_t a = argmax(lf, V), b = argmax(lp, V);
        if (a != b) {
            fail_msg("%s: greedy token %d differs: full %d, predict %d", name, i, a, b);
        }
        assert_int_equal(
            rig_forward(&rig, ENG_KVP_FULL, &pool, &full, &a, 1, ENG_LOGITS_LAST, lf, &err), KC_OK);
        assert_int_equal(
            rig_forward(&rig, ENG_KVP_PREDICT, &pool, &pr, &b, 1, ENG_LOGITS_LAST, lp, &err),
            KC_OK);
    }
    eng_seq_release(&pool, &full);
    eng_seq_release(&pool, &pr);
    assert_int_equal(eng_kv_pool_n_free(&pool), 32);
    free(lf);
    free(lp);
    free(prompt);
    eng_kv_pool_free(&pool);
    rig_free(&rig);
    eng_kvp_free(pred);
    eng_model_free(aux);
    eng_model_free(base);
}

static void test_identity_predictor_reproduces_base_kv(void **state) {
    (void)state;
    static const char *const cases[] = {"llama_gqa", "llama_untied_bf16", "qwen2_bias",
                                        "llama3_scaling", "llama_linear_scaling"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check_identity_invariant(cases[i]);
    }
}

/* Stacked maps: every base layer reads aux layer 0 (aux = base), base layer l through
 * (l + 1) * I. The prefill runs one stacked GEMM per aux layer and injects strided views of
 * it, so predicted layer l must hold (l + 1) times the full path's layer-0 K/V (RoPE is
 * linear) at every prompt position but the last: checks the column offsets and strides. */
static void test_stacked_maps_put_each_layer_in_its_columns(void **state) {
    (void)state;
    struct eng_model *base = load_case("llama_gqa"), *aux = load_case("llama_gqa");
    const struct eng_model_config *c = eng_model_config_of(base);
    const struct eng_kvp_shape s = eng_kvp_shape_of_pair(c, c);
    const int L = s.base_layers, N = s.base_kv_dim, V = c->vocab_size;
    float *w = calloc((size_t)L * N * N, sizeof(float));
    int32_t *map = calloc((size_t)L, sizeof(int32_t));
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < N; i++) {
            w[(size_t)l * N * N + (size_t)i * N + i] = (float)(l + 1);
        }
    }
    struct kc_error err = {0};
    struct eng_kvp *pred = NULL;
    assert_int_equal(eng_kvp_create(&s, map, w, NULL, w, NULL, &pred, &err), KC_OK);
    int n = 0;
    int32_t *prompt = golden_tokens("llama_gqa", &n);
    struct kvp_rig rig;
    rig_init(&rig, base, aux, pred, 64, n + 1);
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, c, 8, 32, &err), KC_OK);
    struct eng_seq full = {0}, pr = {0};
    float *logits = calloc((size_t)V, sizeof(float));
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &pool, &full, prompt, n, logits, NULL, &err),
                     KC_OK);
    assert_int_equal(rig_prefill(&rig, ENG_KVP_PREDICT, &pool, &pr, prompt, n, logits, NULL, &err),
                     KC_OK);
    float worst = 0.0f;
    for (int l = 0; l < L; l++) {
        for (int p = 0; p < n - 1; p++) {
            const float *fk = eng_kv_k_at(&pool, &full, 0, p), *pk = eng_kv_k_at(&pool, &pr, l, p);
            const float *fv = eng_kv_v_at(&pool, &full, 0, p), *pv = eng_kv_v_at(&pool, &pr, l, p);
            for (int i = 0; i < N; i++) {
                const float sc = (float)(l + 1);
                worst = fmaxf(worst, fabsf(pk[i] - sc * fk[i]) / (1.0f + fabsf(sc * fk[i])));
                worst = fmaxf(worst, fabsf(pv[i] - sc * fv[i]) / (1.0f + fabsf(sc * fv[i])));
            }
        }
    }
    print_message("stacked maps over %d base layers: worst relative diff %.3g\n", L, worst);
    assert_true(worst <= 1e-5f);
    eng_seq_release(&pool, &full);
    eng_seq_release(&pool, &pr);
    free(logits);
    free(prompt);
    free(w);
    free(map);
    eng_kv_pool_free(&pool);
    rig_free(&rig);
    eng_kvp_free(pred);
    eng_model_free(aux);
    eng_model_free(base);
}

/* ---- a real-shaped pair: golden base, smaller random aux ---- */

static struct eng_model *small_aux_for(const struct eng_model_config *base, uint64_t seed) {
    struct eng_model_config c = *base;
    c.n_layers = 1;
    c.hidden_size = 32;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 16;
    c.intermediate_size = 64;
    c.attention_bias = false;
    c.arch = ENG_ARCH_LLAMA;
    struct eng_model_params p = {.prefill_wtype = ENG_WTYPE_F32, .decode_wtype = ENG_WTYPE_F32};
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    if (eng_model_init_random(&c, &p, seed, &m, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    return m;
}

/* A random predictor of the right shape runs in every mode and for every prompt length from
 * 1 up, leaving finite logits and all blocks returned; a one-token prompt in predict mode is
 * exactly the full path. */
static void test_random_predictor_runs_and_one_token_prompt_works(void **state) {
    (void)state;
    struct eng_model *base = load_case("llama_untied_bf16");
    const struct eng_model_config *bc = eng_model_config_of(base);
    struct eng_model *aux = small_aux_for(bc, 7);
    const struct eng_kvp_shape s = eng_kvp_shape_of_pair(bc, eng_model_config_of(aux));
    assert_int_equal(s.aux_layers, 1);
    assert_int_equal(s.aux_kv_dim, 16);
    struct eng_kvp *pred = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_create_random(&s, NULL, 42, &pred, &err), KC_OK);
    struct kvp_rig rig;
    rig_init(&rig, base, aux, pred, 16, 64);
    struct eng_kv_pool bpool, apool;
    assert_int_equal(eng_kv_pool_init(&bpool, bc, 4, 16, &err), KC_OK);
    assert_int_equal(eng_kv_pool_init(&apool, eng_model_config_of(aux), 4, 16, &err), KC_OK);
    const int V = bc->vocab_size;
    float *logits = calloc((size_t)V, sizeof(float)), *ref = calloc((size_t)V, sizeof(float));
    int32_t prompt[40];
    for (int i = 0; i < 40; i++) {
        prompt[i] = (int32_t)((i * 37 + 11) % V);
    }
    const int lens[] = {1, 2, 17, 40};
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        for (int mode = 0; mode < ENG_KVP_N_MODES; mode++) {
            struct eng_kv_pool *pool = mode == ENG_KVP_AUX ? &apool : &bpool;
            struct eng_seq seq = {0};
            struct eng_kvp_timings t = {0};
            if (rig_prefill(&rig, (enum eng_kvp_mode)mode, pool, &seq, prompt, lens[li], logits, &t,
                            &err) != KC_OK) {
                fail_msg("%s n=%d: %s", eng_kvp_mode_name((enum eng_kvp_mode)mode), lens[li],
                         err.msg);
            }
            assert_int_equal(seq.n_tokens, lens[li]);
            for (int i = 0; i < V; i++) {
                assert_true(isfinite(logits[i]));
            }
            assert_true(t.total_ms >= 0.0);
            /* One decode step after the prefill. */
            int32_t next = argmax(logits, V);
            assert_int_equal(rig_forward(&rig, (enum eng_kvp_mode)mode, pool, &seq, &next, 1,
                                         ENG_LOGITS_LAST, logits, &err),
                             KC_OK);
            eng_seq_release(pool, &seq);
        }
    }
    /* n == 1: nothing to predict, predict == full exactly. */
    struct eng_seq a = {0}, b = {0};
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &bpool, &a, prompt, 1, ref, NULL, &err),
                     KC_OK);
    assert_int_equal(rig_prefill(&rig, ENG_KVP_PREDICT, &bpool, &b, prompt, 1, logits, NULL, &err),
                     KC_OK);
    assert_true(max_abs_diff(ref, logits, (size_t)V) == 0.0f);
    eng_seq_release(&bpool, &a);
    eng_seq_release(&bpool, &b);
    assert_int_equal(eng_kv_pool_n_free(&bpool), 16);
    assert_int_equal(eng_kv_pool_n_free(&apool), 16);
    /* The analytic FLOPs of predict are below full's for this 4x cheaper-per-token aux. */
    const double ff = eng_kvp_ttft_flops(ENG_KVP_FULL, bc, eng_model_config_of(aux), &s, 40);
    const double fp = eng_kvp_ttft_flops(ENG_KVP_PREDICT, bc, eng_model_config_of(aux), &s, 40);
    print_message("ttft flops full %.3g predict %.3g (ratio %.3f)\n", ff, fp, fp / ff);
    assert_true(fp < ff);
    free(logits);
    free(ref);
    eng_kv_pool_free(&bpool);
    eng_kv_pool_free(&apool);
    rig_free(&rig);
    eng_kvp_free(pred);
    eng_model_free(aux);
    eng_model_free(base);
}

/* ---- cached prefixes: eng_kv_extract and eng_kvp_predict with c > 0 or a > 0 ---- */

static float uniform_pm1(uint64_t *st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*st >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* eng_kv_extract undoes eng_kv_inject: pre-RoPE keys come back within 1e-6 (relative) and
 * values bit for bit, across block boundaries, at positions past a prefix, into strided
 * rows; a range outside the sequence is refused. */
static void check_extract_inverts_inject(const char *name) {
    struct eng_model *m = load_case(name);
    const struct eng_model_config *c = eng_model_config_of(m);
    const int L = c->n_layers, kvd = c->n_kv_heads * c->head_dim, n0 = 5, n = 19;
    const size_t ld = (size_t)kvd + 3;
    struct kc_error err = {0};
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, c, 4, 8, &err), KC_OK);
    float **k = calloc((size_t)L, sizeof(float *)), **v = calloc((size_t)L, sizeof(float *));
    float **kx = calloc((size_t)L, sizeof(float *)), **vx = calloc((size_t)L, sizeof(float *));
    size_t *lds = calloc((size_t)L, sizeof(size_t));
    uint64_t st = 11;
    for (int l = 0; l < L; l++) {
        k[l] = malloc((size_t)(n0 + n) * kvd * sizeof(float));
        v[l] = malloc((size_t)(n0 + n) * kvd * sizeof(float));
        kx[l] = calloc((size_t)n * ld, sizeof(float));
        vx[l] = calloc((size_t)n * ld, sizeof(float));
        lds[l] = ld;
        for (int i = 0; i < (n0 + n) * kvd; i++) {
            k[l][i] = uniform_pm1(&st);
            v[l][i] = uniform_pm1(&st);
        }
    }
    struct eng_seq seq = {0};
    assert_int_equal(
        eng_kv_inject(m, &pool, &seq, n0, (const float *const *)k, (const float *const *)v, &err),
        KC_OK);
    /* The second injection starts mid-block, at position n0. */
    const float **kr = calloc((size_t)L, sizeof(float *)),
                **vr = calloc((size_t)L, sizeof(float *));
    for (int l = 0; l < L; l++) {
        kr[l] = k[l] + (size_t)n0 * kvd;
        vr[l] = v[l] + (size_t)n0 * kvd;
    }
    assert_int_equal(eng_kv_inject(m, &pool, &seq, n, kr, vr, &err), KC_OK);
    assert_int_equal(eng_kv_extract(m, &pool, &seq, n0, n, kx, vx, lds, &err), KC_OK);
    float worst = 0.0f;
    for (int l = 0; l < L; l++) {
        for (int r = 0; r < n; r++) {
            /* Relative to the row's largest key: a rotation's rounding scales with the pair
             * it mixes, not with the smaller of its two elements. */
            const float *want = kr[l] + (size_t)r * kvd, *got = kx[l] + (size_t)r * ld;
            float scale = 0.0f;
            for (int i = 0; i < kvd; i++) {
                scale = fmaxf(scale, fabsf(want[i]));
            }
            worst = fmaxf(worst, max_abs_diff(want, got, (size_t)kvd) / scale);
            for (int i = 0; i < kvd; i++) {
                assert_true(vx[l][(size_t)r * ld + i] == vr[l][(size_t)r * kvd + i]);
            }
            /* The gap between strided rows is untouched. */
            assert_true(kx[l][(size_t)r * ld + kvd] == 0.0f);
        }
    }
    print_message("%s: extract after inject, worst relative key error %.3g\n", name, worst);
    assert_true(worst <= 1e-6f);
    /* Contiguous rows (ld NULL), one position. */
    assert_int_equal(eng_kv_extract(m, &pool, &seq, 0, 1, kx, vx, NULL, &err), KC_OK);
    assert_true(vx[0][0] == v[0][0]);
    assert_int_equal(eng_kv_extract(m, &pool, &seq, n0, n + 1, kx, vx, lds, &err), KC_EINVAL);
    assert_int_equal(eng_kv_extract(m, &pool, &seq, -1, 2, kx, vx, lds, &err), KC_EINVAL);
    eng_seq_release(&pool, &seq);
    assert_int_equal(eng_kv_pool_n_free(&pool), 8);
    for (int l = 0; l < L; l++) {
        free(k[l]);
        free(v[l]);
        free(kx[l]);
        free(vx[l]);
    }
    free(k);
    free(v);
    free(kx);
    free(vx);
    free(kr);
    free(vr);
    free(lds);
    eng_kv_pool_free(&pool);
    eng_model_free(m);
}

static void test_kv_extract_inverts_inject(void **state) {
    (void)state;
    check_extract_inverts_inject("llama_gqa");
    check_extract_inverts_inject("llama3_scaling");
    check_extract_inverts_inject("qwen2_bias");
}

/* A golden base with a small random aux and a random predictor, a base pool of 4-position
 * blocks, the rig's aux pool, and a 41-token prompt. */
struct prefix_case {
    struct eng_model *base, *aux;
    struct eng_kvp *pred;
    struct kvp_rig rig;
    struct eng_kv_pool pool;
    int V, L, kvd, n;
    int32_t prompt[41];
};

static void prefix_case_init(struct prefix_case *pc) {
    memset(pc, 0, sizeof(*pc));
    pc->base = load_case("llama_untied_bf16");
    const struct eng_model_config *bc = eng_model_config_of(pc->base);
    pc->aux = small_aux_for(bc, 7);
    const struct eng_kvp_shape s = eng_kvp_shape_of_pair(bc, eng_model_config_of(pc->aux));
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_create_random(&s, NULL, 42, &pc->pred, &err), KC_OK);
    rig_init(&pc->rig, pc->base, pc->aux, pc->pred, 16, 64);
    assert_int_equal(eng_kv_pool_init(&pc->pool, bc, 4, 48, &err), KC_OK);
    pc->V = bc->vocab_size;
    pc->L = bc->n_layers;
    pc->kvd = bc->n_kv_heads * bc->head_dim;
    pc->n = 41;
    for (int i = 0; i < pc->n; i++) {
        pc->prompt[i] = (int32_t)((i * 37 + 11) % pc->V);
    }
}

static void prefix_case_free(struct prefix_case *pc) {
    assert_int_equal(eng_kv_pool_n_free(&pc->pool), pc->pool.n_blocks);
    eng_kv_pool_free(&pc->pool);
    rig_free(&pc->rig);
    eng_kvp_free(pc->pred);
    eng_model_free(pc->aux);
    eng_model_free(pc->base);
}

/* A FULL prefill of prompt[0..c) into the empty seq. */
static void full_prefix(struct prefix_case *pc, struct eng_seq *seq, int c, float *logits) {
    struct kc_error err = {0};
    if (c > 0 && rig_prefill(&pc->rig, ENG_KVP_FULL, &pc->pool, seq, pc->prompt, c, logits, NULL,
                             &err) != KC_OK) {
        fail_msg("full prefix of %d: %s", c, err.msg);
    }
}

/* An AUX forward of prompt[0..a) into the rig's empty aux sequence (a cached aux prefix). */
static void aux_prefix(struct prefix_case *pc, int a) {
    struct kc_error err = {0};
    const struct eng_kvp_seqs io = rig_io(&pc->rig, ENG_KVP_AUX, &pc->rig.apool, &pc->rig.aseq);
    if (a > 0 && eng_kvp_forward(pc->rig.kc, ENG_KVP_AUX, &io, pc->prompt, a, ENG_LOGITS_NONE, NULL,
                                 &err) != KC_OK) {
        fail_msg("aux prefix of %d: %s", a, err.msg);
    }
}

/* eng_kvp_predict over the whole prompt with the base prefix already in seq and the aux
 * prefix already in the rig's aux sequence; checks the sequences' lengths after it, then
 * releases the aux sequence. */
static void predict_into(struct prefix_case *pc, struct eng_seq *seq, float *logits,
                         struct eng_kvp_timings *t) {
    struct kc_error err = {0};
    const struct eng_kvp_seqs io = rig_io(&pc->rig, ENG_KVP_PREDICT, &pc->pool, seq);
    const int c = seq->n_tokens, a = pc->rig.aseq.n_tokens;
    if (eng_kvp_predict(pc->rig.kc, &io, pc->prompt, pc->n, logits, t, &err) != KC_OK) {
        fail_msg("predict c=%d a=%d: %s", c, a, err.msg);
    }
    assert_int_equal(seq->n_tokens, pc->n);
    assert_int_equal(pc->rig.aseq.n_tokens, pc->n - 1);
    eng_seq_release(&pc->rig.apool, &pc->rig.aseq);
}

static float rel_diff(const float *a, const float *b, int n) {
    float scale = 1.0f;
    for (int i = 0; i < n; i++) {
        scale = fmaxf(scale, fabsf(a[i]));
    }
    return max_abs_diff(a, b, (size_t)n) / scale;
}

/* Predict with an exact base prefix of c positions (from a FULL prefill of prompt[0..c)):
 * the prefix stays bit for bit, and the first-token logits equal those of "full prefix +
 * predicted rest" built by hand (the predicted KV of a c = 0 predict, read back with
 * eng_kv_extract and injected after a full prefix). c = n - 1 (a whole number of blocks)
 * predicts nothing and equals a full prefill; more exact prefix brings predict closer to
 * full. */
static void test_predict_with_base_prefix(void **state) {
    (void)state;
    struct prefix_case pc;
    prefix_case_init(&pc);
    const int V = pc.V, L = pc.L, kvd = pc.kvd, n = pc.n;
    struct kc_error err = {0};
    float *lfull = calloc((size_t)V, sizeof(float)), *l0 = calloc((size_t)V, sizeof(float));
    float *lc = calloc((size_t)V, sizeof(float)), *lref = calloc((size_t)V, sizeof(float));
    float *scratch = calloc((size_t)V, sizeof(float));
    struct eng_seq full = {0}, q = {0};
    full_prefix(&pc, &full, n, lfull);
    predict_into(&pc, &q, l0, NULL); /* c = 0, a = 0: every position predicted */
    const float d0 = rel_diff(lfull, l0, V);
    /* Q's predicted KV, pre-RoPE, for every position but the last. */
    float **qk = calloc((size_t)L, sizeof(float *)), **qv = calloc((size_t)L, sizeof(float *));
    const float **qkc = calloc((size_t)L, sizeof(float *));
    const float **qvc = calloc((size_t)L, sizeof(float *));
    for (int l = 0; l < L; l++) {
        qk[l] = calloc((size_t)n * kvd, sizeof(float));
        qv[l] = calloc((size_t)n * kvd, sizeof(float));
    }
    assert_int_equal(eng_kv_extract(pc.base, &pc.pool, &q, 0, n - 1, qk, qv, NULL, &err), KC_OK);
    float *snap = calloc((size_t)L * n * kvd * 2, sizeof(float));
    const int cs[] = {4, 16, 36, 40};
    for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
        const int c = cs[ci];
        struct eng_seq p = {0}, r = {0};
        full_prefix(&pc, &p, c, scratch);
        for (int l = 0; l < L; l++) {
            for (int i = 0; i < c; i++) {
                memcpy(snap + ((size_t)(l * n + i) * 2) * kvd, eng_kv_k_at(&pc.pool, &p, l, i),
                       (size_t)kvd * sizeof(float));
                memcpy(snap + ((size_t)(l * n + i) * 2 + 1) * kvd, eng_kv_v_at(&pc.pool, &p, l, i),
                       (size_t)kvd * sizeof(float));
            }
        }
        struct eng_kvp_timings t = {0};
        predict_into(&pc, &p, lc, &t);
        for (int l = 0; l < L; l++) {
            for (int i = 0; i < c; i++) {
                assert_memory_equal(snap + ((size_t)(l * n + i) * 2) * kvd,
                                    eng_kv_k_at(&pc.pool, &p, l, i), (size_t)kvd * sizeof(float));
                assert_memory_equal(snap + ((size_t)(l * n + i) * 2 + 1) * kvd,
                                    eng_kv_v_at(&pc.pool, &p, l, i), (size_t)kvd * sizeof(float));
            }
        }
        /* The reference: full prefix, then Q's predictions for [c, n - 1), then t[n-1]. */
        full_prefix(&pc, &r, c, scratch);
        for (int l = 0; l < L; l++) {
            qkc[l] = qk[l] + (size_t)c * kvd;
            qvc[l] = qv[l] + (size_t)c * kvd;
        }
        assert_int_equal(eng_kv_inject(pc.base, &pc.pool, &r, n - 1 - c, qkc, qvc, &err), KC_OK);
        assert_int_equal(rig_forward(&pc.rig, ENG_KVP_FULL, &pc.pool, &r, pc.prompt + n - 1, 1,
                                     ENG_LOGITS_LAST, lref, &err),
                         KC_OK);
        const float dref = rel_diff(lref, lc, V), dfull = rel_diff(lfull, lc, V);
        print_message("base prefix c=%d: vs full prefix + predicted rest %.3g, vs full %.3g (c=0: "
                      "%.3g); predict %.2f ms\n",
                      c, dref, dfull, d0, t.predict_ms);
        assert_true(dref <= 1e-5f);
        if (c == n - 1) {
            assert_true(t.predict_ms == 0.0);
            assert_true(dfull <= 1e-5f);
        } else if (c == 36) {
            /* The most exact prefix short of n - 1 (36 of 40 positions) is closer to full's
             * logits than none. */
            assert_true(dfull < d0);
        }
        eng_seq_release(&pc.pool, &p);
        eng_seq_release(&pc.pool, &r);
    }
    eng_seq_release(&pc.pool, &full);
    eng_seq_release(&pc.pool, &q);
    for (int l = 0; l < L; l++) {
        free(qk[l]);
        free(qv[l]);
    }
    free(qk);
    free(qv);
    free(qkc);
    free(qvc);
    free(snap);
    free(lfull);
    free(l0);
    free(lc);
    free(lref);
    free(scratch);
    prefix_case_free(&pc);
}

/* Predict with a cached aux prefix of a positions (an aux forward of prompt[0..a)) gives the
 * logits of predict without one (the aux K/V of [c, a) read back instead of captured:
 * rounding only), for a < c, a == c, a > c and a == n - 1, and runs the aux over the
 * remaining tokens only. */
static void test_predict_with_aux_prefix(void **state) {
    (void)state;
    struct prefix_case pc;
    prefix_case_init(&pc);
    const int V = pc.V, n = pc.n;
    float *l0 = calloc((size_t)V, sizeof(float)), *la = calloc((size_t)V, sizeof(float));
    float *scratch = calloc((size_t)V, sizeof(float));
    const int cases[][2] = {{0, 0},   {0, 20},  {16, 8},  {16, 16}, {16, 30},
                            {16, 40}, {36, 37}, {40, 12}, {40, 40}};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const int c = cases[k][0], a = cases[k][1];
        struct eng_seq p0 = {0}, pa = {0};
        struct eng_kvp_timings t0 = {0}, ta = {0};
        full_prefix(&pc, &p0, c, scratch);
        predict_into(&pc, &p0, l0, &t0);
        full_prefix(&pc, &pa, c, scratch);
        aux_prefix(&pc, a);
        predict_into(&pc, &pa, la, &ta);
        const float d = rel_diff(l0, la, V);
        print_message("c=%d a=%d: logits vs a=0 %.3g; aux %.2f ms (a=0: %.2f ms)\n", c, a, d,
                      ta.aux_ms, t0.aux_ms);
        assert_true(d <= 1e-5f);
        if (a == n - 1) {
            assert_true(ta.aux_ms == 0.0);
        }
        eng_seq_release(&pc.pool, &p0);
        eng_seq_release(&pc.pool, &pa);
    }
    free(l0);
    free(la);
    free(scratch);
    prefix_case_free(&pc);
}

/* Every failure with cached prefixes leaves blocks only in the caller's sequences: once it
 * releases them, both pools are whole again. */
static void test_predict_with_prefixes_returns_every_block_on_failure(void **state) {
    (void)state;
    struct prefix_case pc;
    prefix_case_init(&pc);
    struct kc_error err = {0};
    float *logits = calloc((size_t)pc.V, sizeof(float));
    /* A base pool with room for the 16-position prefix and a little more. */
    struct eng_kv_pool small;
    assert_int_equal(eng_kv_pool_init(&small, eng_model_config_of(pc.base), 4, 6, &err), KC_OK);
    struct eng_seq p = {0};
    assert_int_equal(
        rig_prefill(&pc.rig, ENG_KVP_FULL, &small, &p, pc.prompt, 16, logits, NULL, &err), KC_OK);
    aux_prefix(&pc, 24);
    const struct eng_kvp_seqs io = rig_io(&pc.rig, ENG_KVP_PREDICT, &small, &p);
    assert_int_equal(eng_kvp_predict(pc.rig.kc, &io, pc.prompt, pc.n, logits, NULL, &err),
                     KC_EBUSY);
    print_message("error: %s\n", err.msg);
    eng_seq_release(&small, &p);
    eng_seq_release(&pc.rig.apool, &pc.rig.aseq);
    assert_int_equal(eng_kv_pool_n_free(&small), 6);
    assert_int_equal(eng_kv_pool_n_free(&pc.rig.apool), pc.rig.apool.n_blocks);
    /* An aux pool that runs dry after a cached aux prefix. */
    struct eng_kv_pool asmall;
    struct eng_seq aseq = {0};
    assert_int_equal(eng_kv_pool_init(&asmall, eng_model_config_of(pc.aux), 4, 7, &err), KC_OK);
    struct eng_kvp_seqs aio = rig_io(&pc.rig, ENG_KVP_AUX, &asmall, &aseq);
    assert_int_equal(
        eng_kvp_forward(pc.rig.kc, ENG_KVP_AUX, &aio, pc.prompt, 20, ENG_LOGITS_NONE, NULL, &err),
        KC_OK);
    struct eng_seq b = {0};
    full_prefix(&pc, &b, 8, logits);
    struct eng_kvp_seqs bio = rig_io(&pc.rig, ENG_KVP_PREDICT, &pc.pool, &b);
    bio.aux_pool = &asmall;
    bio.aux = &aseq;
    assert_int_equal(eng_kvp_predict(pc.rig.kc, &bio, pc.prompt, pc.n, logits, NULL, &err),
                     KC_EBUSY);
    print_message("error: %s\n", err.msg);
    eng_seq_release(&pc.pool, &b);
    eng_seq_release(&asmall, &aseq);
    assert_int_equal(eng_kv_pool_n_free(&asmall), 7);
    free(logits);
    eng_kv_pool_free(&small);
    eng_kv_pool_free(&asmall);
    prefix_case_free(&pc);
}

/* Bad prefill requests are refused before anything changes; a pool that runs dry midway
 * (base or aux) is KC_EBUSY; after the caller releases both sequences, every block of both
 * pools is back. */
static void test_prefill_rejects_bad_requests(void **state) {
    (void)state;
    struct eng_model *base = load_case("llama_gqa"), *aux = load_case("llama_gqa");
    const struct eng_model_config *c = eng_model_config_of(base);
    struct kc_error err = {0};
    struct eng_kvp *pred = test_identity_predictor(c);
    struct kvp_rig rig, nopred;
    rig_init(&rig, base, aux, pred, 8, 16);
    rig_init(&nopred, base, aux, NULL, 8, 16);
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, c, 4, 8, &err), KC_OK);
    float *logits = calloc((size_t)c->vocab_size, sizeof(float));
    int32_t toks[20] = {0};
    struct eng_seq seq = {0};
    struct eng_kvp_seqs io = rig_io(&rig, ENG_KVP_PREDICT, &pool, &seq);
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 0, logits, NULL, &err), KC_EINVAL);
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 17, logits, NULL, &err), KC_ECONTEXT);
    toks[3] = c->vocab_size;
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 5, logits, NULL, &err), KC_ERANGE);
    toks[3] = 0;
    assert_int_equal(eng_kvp_predict(nopred.kc, &io, toks, 5, logits, NULL, &err), KC_EINVAL);
    print_message("error: %s\n", err.msg);
    /* A missing member of io. */
    struct eng_kvp_seqs half = io;
    half.aux = NULL;
    assert_int_equal(eng_kvp_predict(rig.kc, &half, toks, 5, logits, NULL, &err), KC_EINVAL);
    half = io;
    half.base_ctx = NULL;
    assert_int_equal(eng_kvp_predict(rig.kc, &half, toks, 5, logits, NULL, &err), KC_EINVAL);
    assert_int_equal(eng_kv_pool_n_free(&pool), 8);
    assert_int_equal(eng_kv_pool_n_free(&rig.apool), rig.apool.n_blocks);
    /* A base pool too small for the prompt: the predicted KV cannot be written. */
    struct eng_kv_pool tiny;
    assert_int_equal(eng_kv_pool_init(&tiny, c, 4, 2, &err), KC_OK);
    struct eng_kvp_seqs tio = rig_io(&rig, ENG_KVP_PREDICT, &tiny, &seq);
    assert_int_equal(eng_kvp_predict(rig.kc, &tio, toks, 12, logits, NULL, &err), KC_EBUSY);
    print_message("error: %s\n", err.msg);
    eng_seq_release(&tiny, &seq);
    eng_seq_release(&rig.apool, &rig.aseq);
    assert_int_equal(eng_kv_pool_n_free(&tiny), 2);
    assert_int_equal(eng_kv_pool_n_free(&rig.apool), rig.apool.n_blocks);
    /* An aux pool too small: the aux forward cannot reserve its blocks. */
    struct eng_kv_pool atiny;
    struct eng_seq aseq = {0};
    assert_int_equal(eng_kv_pool_init(&atiny, eng_model_config_of(aux), 4, 2, &err), KC_OK);
    struct eng_kvp_seqs aio = io;
    aio.aux_pool = &atiny;
    aio.aux = &aseq;
    assert_int_equal(eng_kvp_predict(rig.kc, &aio, toks, 12, logits, NULL, &err), KC_EBUSY);
    print_message("error: %s\n", err.msg);
    eng_seq_release(&pool, &seq);
    eng_seq_release(&atiny, &aseq);
    assert_int_equal(eng_kv_pool_n_free(&atiny), 2);
    assert_int_equal(eng_kv_pool_n_free(&pool), 8);
    /* A base prefix that is not a whole number of blocks, or covers the whole prompt. */
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &pool, &seq, toks, 3, logits, NULL, &err),
                     KC_OK);
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 6, logits, NULL, &err), KC_EINVAL);
    assert_int_equal(seq.n_tokens, 3);
    eng_seq_release(&pool, &seq);
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &pool, &seq, toks, 4, logits, NULL, &err),
                     KC_OK);
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 4, logits, NULL, &err), KC_EINVAL);
    assert_int_equal(seq.n_tokens, 4);
    /* ... a FULL prefill of a sequence that already holds every token ... */
    assert_int_equal(rig_prefill(&rig, ENG_KVP_FULL, &pool, &seq, toks, 4, logits, NULL, &err),
                     KC_EINVAL);
    eng_seq_release(&pool, &seq);
    /* ... and an aux prefix longer than the n - 1 tokens the aux reads. */
    struct eng_kvp_seqs aonly = rig_io(&rig, ENG_KVP_AUX, &rig.apool, &rig.aseq);
    assert_int_equal(eng_kvp_prefill(rig.kc, ENG_KVP_AUX, &aonly, toks, 5, logits, NULL, &err),
                     KC_OK);
    assert_int_equal(eng_kvp_predict(rig.kc, &io, toks, 5, logits, NULL, &err), KC_EINVAL);
    print_message("error: %s\n", err.msg);
    assert_int_equal(seq.n_tokens, 0);
    assert_int_equal(rig.aseq.n_tokens, 5);
    eng_seq_release(&rig.apool, &rig.aseq);
    assert_int_equal(eng_kv_pool_n_free(&pool), 8);
    /* A predictor of another pair's shape is refused at context creation. */
    struct eng_model *other = load_case("llama_untied_bf16");
    struct eng_kvp_ctx *bad = NULL;
    assert_int_equal(eng_kvp_ctx_create(other, other, pred, 8, 16, 1, &bad, &err), KC_EINVAL);
    print_message("error: %s\n", err.msg);
    assert_null(bad);
    eng_model_free(other);
    free(logits);
    eng_kv_pool_free(&atiny);
    eng_kv_pool_free(&tiny);
    eng_kv_pool_free(&pool);
    rig_free(&rig);
    rig_free(&nopred);
    eng_kvp_free(pred);
    eng_model_free(aux);
    eng_model_free(base);
}

/* ---- layer maps ---- */

static void test_layer_map_parse_and_auto(void **state) {
    (void)state;
    const struct eng_kvp_shape s = {
        .base_layers = 4, .aux_layers = 2, .base_kv_dim = 8, .aux_kv_dim = 4};
    int32_t map[4];
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_layer_map_parse("[0, 0, 1, 1]", &s, map, &err), KC_OK);
    assert_true(map[0] == 0 && map[1] == 0 && map[2] == 1 && map[3] == 1);
    assert_int_equal(eng_kvp_layer_map_parse(" 1,0 ,1,0 ", &s, map, &err), KC_OK);
    assert_true(map[0] == 1 && map[1] == 0 && map[2] == 1 && map[3] == 0);
    static const char *const bad[] = {"0,0,1",
                                      "0,0,1,1,1",
                                      "0,0,2,1",
                                      "0,,1,1",
                                      "-1,0,0,0",
                                      "[0,0,1,1",
                                      "0,0,1,1]",
                                      "",
                                      "a,b,c,d",
                                      "0,0,1,1,",
                                      "99999999999999999999,0,0,0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = (struct kc_error){0};
        if (eng_kvp_layer_map_parse(bad[i], &s, map, &err) != KC_EFORMAT) {
            fail_msg("layer map '%s' was accepted", bad[i]);
        }
        assert_true(err.msg[0] != '\0');
    }
    print_message("error: %s\n", err.msg);
    eng_kvp_layer_map_auto(4, 2, map);
    assert_true(map[0] == 0 && map[1] == 0 && map[2] == 1 && map[3] == 1);
    int32_t m22[22];
    eng_kvp_layer_map_auto(22, 6, m22);
    assert_int_equal(m22[0], 0);
    assert_int_equal(m22[21], 5);
    for (int l = 1; l < 22; l++) {
        assert_true(m22[l] >= m22[l - 1]);
    }
    eng_kvp_layer_map_auto(1, 3, map);
    assert_int_equal(map[0], 0);
    /* Creation validates the map too. */
    float w[4 * 8 * 4] = {0};
    int32_t out_of_range[4] = {0, 1, 2, 0};
    struct eng_kvp *p = NULL;
    assert_int_equal(eng_kvp_create(&s, out_of_range, w, NULL, w, NULL, &p, &err), KC_EINVAL);
    assert_null(p);
}

/* ---- predictor files ---- */

struct pred_spec {
    int Lb, La, Nb, Na;
    const char *layer_map;
    const char *key_space;  /* NULL: omit */
    int bad_layer;          /* layer whose k weight gets shape [Nb, Na + 1]; -1: none */
    bool drop_v_bias;       /* omit v.0.bias */
    bool extra_tensor;      /* add "q.0.weight" */
    const char *aux_kv_dim; /* NULL: Na */
    enum eng_dtype dtype;
};

/* Writes a predictor file by hand, following spec (all weights 0.5, biases 0.25). */
static void write_pred(const char *path, const struct pred_spec *sp) {
    struct eng_st_tensor ts[64];
    char names[64][32];
    size_t n = 0;
    const size_t esz = sp->dtype == ENG_DTYPE_F32 ? 4 : 2;
    uint8_t *buf = calloc((size_t)(sp->Nb * (sp->Na + 1) + 1), esz);
    for (int i = 0; i < sp->Nb * (sp->Na + 1); i++) {
        if (esz == 4) {
            ((float *)buf)[i] = 0.5f;
        } else {
            ((uint16_t *)buf)[i] = 0x3f00; /* bf16 0.5 */
        }
    }
    for (int l = 0; l < sp->Lb; l++) {
        for (int i = 0; i < 4; i++) {
            if (sp->drop_v_bias && l == 0 && i == 3) {
                continue;
            }
            struct eng_st_tensor *t = &ts[n];
            snprintf(names[n], 32, "%c.%d.%s", i < 2 ? 'k' : 'v', l, i % 2 ? "bias" : "weight");
            *t = (struct eng_st_tensor){.name = names[n], .dtype = sp->dtype, .data = buf};
            if (i % 2 == 0) {
                const int cols = sp->Na + (l == sp->bad_layer && i == 0 ? 1 : 0);
                t->ndim = 2;
                t->shape[0] = sp->Nb;
                t->shape[1] = cols;
                t->nbytes = (size_t)sp->Nb * cols * esz;
            } else {
                t->ndim = 1;
                t->shape[0] = sp->Nb;
                t->nbytes = (size_t)sp->Nb * esz;
            }
            n++;
        }
    }
    if (sp->extra_tensor) {
        snprintf(names[n], 32, "q.0.weight");
        ts[n] = (struct eng_st_tensor){.name = names[n],
                                       .dtype = sp->dtype,
                                       .data = buf,
                                       .ndim = 1,
                                       .shape = {sp->Nb},
                                       .nbytes = (size_t)sp->Nb * esz};
        n++;
    }
    char bl[16], al[16], bd[16], ad[16];
    snprintf(bl, sizeof(bl), "%d", sp->Lb);
    snprintf(al, sizeof(al), "%d", sp->La);
    snprintf(bd, sizeof(bd), "%d", sp->Nb);
    snprintf(ad, sizeof(ad), "%.15s", sp->aux_kv_dim != NULL ? sp->aux_kv_dim : "");
    if (sp->aux_kv_dim == NULL) {
        snprintf(ad, sizeof(ad), "%d", sp->Na);
    }
    char lm[64], ks[32];
    snprintf(lm, sizeof(lm), "%s", sp->layer_map);
    snprintf(ks, sizeof(ks), "%s", sp->key_space != NULL ? sp->key_space : "");
    struct eng_st_meta meta[6] = {{(char *)"layer_map", lm},  {(char *)"base_layers", bl},
                                  {(char *)"aux_layers", al}, {(char *)"base_kv_dim", bd},
                                  {(char *)"aux_kv_dim", ad}, {(char *)"key_space", ks}};
    struct kc_error err = {0};
    if (eng_st_write(path, ts, n, meta, sp->key_space != NULL ? 6 : 5, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    free(buf);
}

static int load_spec(const char *path, const struct pred_spec *sp, struct kc_error *err) {
    write_pred(path, sp);
    struct eng_kvp *p = NULL;
    *err = (struct kc_error){0};
    const int rc = eng_kvp_load(path, &p, err);
    if (rc == KC_OK) {
        assert_non_null(p);
        eng_kvp_free(p);
    } else {
        assert_null(p);
        print_message("rejected: %s\n", err->msg);
    }
    return rc;
}

static void test_predictor_file_round_trip_and_rejections(void **state) {
    (void)state;
    char path[] = "/tmp/kc_kvp_XXXXXX";
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct kc_error err = {0};
    /* Round trip of a random predictor: every weight and the map survive. */
    const struct eng_kvp_shape s = {
        .base_layers = 3, .aux_layers = 2, .base_kv_dim = 12, .aux_kv_dim = 8};
    const int32_t map[3] = {1, 0, 1};
    struct eng_kvp *p = NULL, *q = NULL;
    assert_int_equal(eng_kvp_create_random(&s, map, 3, &p, &err), KC_OK);
    assert_int_equal(eng_kvp_save(p, path, &err), KC_OK);
    assert_int_equal(eng_kvp_load(path, &q, &err), KC_OK);
    assert_memory_equal(eng_kvp_shape_of(q), &s, sizeof(s));
    assert_memory_equal(eng_kvp_layer_map(q), map, sizeof(map));
    for (int l = 0; l < 3; l++) {
        for (int w = 0; w < 2; w++) {
            const float *pw, *pb, *qw, *qb;
            eng_kvp_map_of(p, w ? 'v' : 'k', l, &pw, &pb);
            eng_kvp_map_of(q, w ? 'v' : 'k', l, &qw, &qb);
            assert_memory_equal(pw, qw, 12 * 8 * sizeof(float));
            assert_memory_equal(pb, qb, 12 * sizeof(float));
        }
    }
    eng_kvp_free(p);
    eng_kvp_free(q);

    const struct pred_spec good = {.Lb = 2,
                                   .La = 2,
                                   .Nb = 6,
                                   .Na = 4,
                                   .layer_map = "[0, 1]",
                                   .key_space = "pre_rope",
                                   .bad_layer = -1,
                                   .dtype = ENG_DTYPE_F32};
    assert_int_equal(load_spec(path, &good, &err), KC_OK);
    struct pred_spec sp = good;
    sp.dtype = ENG_DTYPE_BF16;
    sp.layer_map = "0,1";
    assert_int_equal(load_spec(path, &sp, &err), KC_OK);
    /* Wrong tensor shape. */
    sp = good;
    sp.bad_layer = 1;
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    assert_non_null(strstr(err.msg, "k.1.weight"));
    /* Missing tensor. */
    sp = good;
    sp.drop_v_bias = true;
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    assert_non_null(strstr(err.msg, "v.0.bias"));
    /* Stray tensor. */
    sp = good;
    sp.extra_tensor = true;
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    assert_non_null(strstr(err.msg, "q.0.weight"));
    /* Layer map: too short, too long, out of range. */
    sp = good;
    sp.layer_map = "[0]";
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    sp.layer_map = "[0, 1, 1]";
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    sp.layer_map = "[0, 2]";
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    assert_non_null(strstr(err.msg, "layer map"));
    /* Key space: absent, or post-RoPE. */
    sp = good;
    sp.key_space = NULL;
    assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    sp.key_space = "post_rope";
    assert_int_equal(load_spec(path, &sp, &err), KC_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "post_rope"));
    /* Metadata dims that are not integers, or disagree with the tensors. */
    static const char *const bad_dims[] = {"4x", "", "0", "-4", "99999999999", "5"};
    for (size_t i = 0; i < sizeof(bad_dims) / sizeof(bad_dims[0]); i++) {
        sp = good;
        sp.aux_kv_dim = bad_dims[i];
        assert_int_equal(load_spec(path, &sp, &err), KC_EFORMAT);
    }
    remove(path);
}

/* ---- bundles ---- */

static void write_file(const char *dir, const char *name, const char *text) {
    char path[1200]; /* dir (< 1100) + "/" + name */
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void link_model(const char *dir, const char *sub, const char *golden) {
    char d[1100], src[1100], dst[1200], s2[1200];
    snprintf(d, sizeof(d), "%s/%s", dir, sub);
    assert_int_equal(mkdir(d, 0755), 0);
    test_golden_dir(src, sizeof(src), golden);
    static const char *const files[2] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(s2, sizeof(s2), "%s/%s", src, files[i]);
        snprintf(dst, sizeof(dst), "%s/%s", d, files[i]);
        if (s2[0] != '/') {
            char cwd[512];
            assert_non_null(getcwd(cwd, sizeof(cwd)));
            char abs[1800];
            snprintf(abs, sizeof(abs), "%s/%s", cwd, s2);
            assert_int_equal(symlink(abs, dst), 0);
        } else {
            assert_int_equal(symlink(s2, dst), 0);
        }
    }
}

static void rm_model(const char *dir, const char *sub) {
    static const char *const files[4] = {"config.json", "model.safetensors", "tokenizer.json",
                                         "tokenizer_config.json"};
    char p[1200];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s/%s", dir, sub, files[i]);
        remove(p);
    }
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    rmdir(p);
}

static void test_bundle_checks_tokenizers_and_shapes(void **state) {
    (void)state;
    char tmpl[] = "/tmp/kc_bundle_XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    link_model(dir, "base", "llama_gqa");
    link_model(dir, "aux", "llama_gqa");
    link_model(dir, "other", "llama_untied_bf16");
    struct eng_model *m = load_case("llama_gqa");
    struct eng_kvp *pred = test_identity_predictor(eng_model_config_of(m));
    eng_model_free(m);
    char ppath[1100], bpath[1100];
    snprintf(ppath, sizeof(ppath), "%s/predictor.safetensors", dir);
    snprintf(bpath, sizeof(bpath), "%s/kvcast-bundle.json", dir);
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_save(pred, ppath, &err), KC_OK);
    eng_kvp_free(pred);
    const struct eng_model_params mp = {.prefill_wtype = ENG_WTYPE_F32,
                                        .decode_wtype = ENG_WTYPE_F32};
    struct eng_kvp_bundle *b = NULL;

    /* No tokenizer files on either side: fine (models driven by ids). */
    write_file(dir, "kvcast-bundle.json",
               "{\"base\": \"base\", \"aux\": \"aux\", \"predictor\": \"predictor.safetensors\"}");
    if (eng_kvp_bundle_load(bpath, &mp, &b, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    assert_non_null(b->base);
    assert_non_null(b->aux);
    assert_non_null(b->pred);
    eng_kvp_bundle_free(b);
    b = NULL;

    /* Identical tokenizers: fine. Different ones, or one missing: refused. */
    char sub[1100];
    snprintf(sub, sizeof(sub), "%s/base", dir);
    write_file(sub, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"v\": 1}");
    snprintf(sub, sizeof(sub), "%s/aux", dir);
    assert_int_equal(eng_kvp_bundle_load(bpath, &mp, &b, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "tokenizer.json"));
    write_file(sub, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"v\": 1}");
    assert_int_equal(eng_kvp_bundle_load(bpath, &mp, &b, &err), KC_OK);
    eng_kvp_bundle_free(b);
    b = NULL;
    write_file(sub, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"v\": 2}");
    assert_int_equal(eng_kvp_bundle_load(bpath, &mp, &b, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "differ"));
    assert_null(b);
    write_file(sub, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"v\": 1}");

    /* A predictor whose shape does not fit the pair. */
    write_file(
        dir, "kvcast-bundle.json",
        "{\"base\": \"other\", \"aux\": \"other\", \"predictor\": \"predictor.safetensors\"}");
    assert_int_equal(eng_kvp_bundle_load(bpath, &mp, &b, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    /* Different vocabularies. */
    snprintf(sub, sizeof(sub), "%s/other", dir);
    write_file(sub, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}, \"v\": 1}");
    char base_d[1100], other_d[1100];
    snprintf(base_d, sizeof(base_d), "%s/base", dir);
    snprintf(other_d, sizeof(other_d), "%s/other", dir);
    assert_int_equal(eng_kvp_bundle_open(base_d, other_d, NULL, &mp, &b, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "vocabularies"));
    /* Malformed bundle files. */
    static const char *const bad[] = {
        "{\"base\": \"base\", \"aux\": \"aux\"}",
        "{\"base\": \"base\", \"aux\": \"aux\", \"predictor\": 3}",
        "{\"base\": \"base\", \"aux\": \"aux\", \"predictor\": \"p\", \"extra\": 1}",
        "{\"base\": \"base\", \"base\": \"aux\", \"predictor\": \"p\"}",
        "[\"base\"]",
        "{\"base\": \"base\", \"aux\": \"aux\", \"predictor\": \"\"}",
        "{\"base\": \"base\", \"aux\": \"aux\", \"predictor\": \"missing.safetensors\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(dir, "kvcast-bundle.json", bad[i]);
        if (eng_kvp_bundle_load(bpath, &mp, &b, &err) == KC_OK) {
            fail_msg("bundle '%s' was accepted", bad[i]);
        }
        assert_null(b);
        print_message("rejected: %s\n", err.msg);
    }
    rm_model(dir, "base");
    rm_model(dir, "aux");
    rm_model(dir, "other");
    remove(ppath);
    remove(bpath);
    rmdir(dir);
}

/* A bundle's optional "name" is read and kept; eng_kvp_bundle_read resolves the paths
 * without loading anything (so serve can replace aux or predictor). */
static void test_bundle_name_and_read(void **state) {
    (void)state;
    char tmpl[] = "/tmp/kc_bundle_XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    link_model(dir, "base", "llama_gqa");
    struct eng_model *m = load_case("llama_gqa");
    struct eng_kvp *pred = test_identity_predictor(eng_model_config_of(m));
    eng_model_free(m);
    char ppath[1100], bpath[1100], want[1200];
    snprintf(ppath, sizeof(ppath), "%s/p.safetensors", dir);
    snprintf(bpath, sizeof(bpath), "%s/b.json", dir);
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_save(pred, ppath, &err), KC_OK);
    eng_kvp_free(pred);
    const struct eng_model_params mp = {.prefill_wtype = ENG_WTYPE_F32,
                                        .decode_wtype = ENG_WTYPE_F32};
    write_file(dir, "b.json",
               "{\"name\": \"pair-x\", \"base\": \"base\", \"aux\": \"base\", "
               "\"predictor\": \"p.safetensors\"}");
    struct eng_kvp_bundle_spec spec;
    if (eng_kvp_bundle_read(bpath, &spec, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    assert_string_equal(spec.name, "pair-x");
    snprintf(want, sizeof(want), "%s/base", dir);
    assert_string_equal(spec.base_dir, want);
    assert_string_equal(spec.aux_dir, want);
    assert_string_equal(spec.predictor_path, ppath);
    eng_kvp_bundle_spec_free(&spec);
    assert_null(spec.name);
    struct eng_kvp_bundle *b = NULL;
    if (eng_kvp_bundle_load(bpath, &mp, &b, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    assert_string_equal(b->name, "pair-x");
    eng_kvp_bundle_free(b);
    b = NULL;
    write_file(dir, "b.json",
               "{\"base\": \"base\", \"aux\": \"base\", \"predictor\": \"p.safetensors\"}");
    assert_int_equal(eng_kvp_bundle_read(bpath, &spec, &err), KC_OK);
    assert_null(spec.name);
    eng_kvp_bundle_spec_free(&spec);
    static const char *const bad[] = {
        "{\"name\": \"\", \"base\": \"base\", \"aux\": \"base\", \"predictor\": \"p\"}",
        "{\"name\": 3, \"base\": \"base\", \"aux\": \"base\", \"predictor\": \"p\"}",
        "{\"name\": \"a\\nb\", \"base\": \"base\", \"aux\": \"base\", \"predictor\": \"p\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(dir, "b.json", bad[i]);
        if (eng_kvp_bundle_read(bpath, &spec, &err) == KC_OK) {
            fail_msg("bundle '%s' was accepted", bad[i]);
        }
        assert_non_null(strstr(err.msg, "\"name\""));
        print_message("rejected: %s\n", err.msg);
    }
    /* The shipped tiny bundle is named. */
    char tiny[1100];
    test_source_path(tiny, sizeof(tiny), "models/tiny/kvcast-bundle.json");
    if (eng_kvp_bundle_read(tiny, &spec, &err) != KC_OK) {
        fail_msg("%s", err.msg);
    }
    assert_string_equal(spec.name, "kvcast-tiny");
    eng_kvp_bundle_spec_free(&spec);
    rm_model(dir, "base");
    remove(ppath);
    remove(bpath);
    rmdir(dir);
}

/* A predictor that does not fit the pair is refused naming the file and a tensor. */
static void test_predictor_misfit_names_file_and_tensor(void **state) {
    (void)state;
    char tmpl[] = "/tmp/kc_bundle_XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    link_model(dir, "other", "llama_untied_bf16"); /* 3 layers */
    struct eng_model *m = load_case("llama_gqa");  /* 2 layers */
    const struct eng_model_config *gc = eng_model_config_of(m);
    struct eng_kvp *pred = test_identity_predictor(gc);
    char ppath[1100], other[1100];
    snprintf(ppath, sizeof(ppath), "%s/p.safetensors", dir);
    snprintf(other, sizeof(other), "%s/other", dir);
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_save(pred, ppath, &err), KC_OK);
    const struct eng_model_params mp = {.prefill_wtype = ENG_WTYPE_F32,
                                        .decode_wtype = ENG_WTYPE_F32};
    struct eng_kvp_bundle *b = NULL;
    assert_int_equal(eng_kvp_bundle_open(other, other, ppath, &mp, &b, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, ppath));
    assert_non_null(strstr(err.msg, "no tensor 'k.2.weight'"));
    assert_null(b);
    /* Layer map past the aux model's layers, and K/V widths that differ. */
    struct eng_model_config aux1 = *gc;
    aux1.n_layers = 1;
    assert_int_equal(eng_kvp_check_models(pred, gc, &aux1, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "layer_map[1] = 1: tensors 'k.1.weight'"));
    struct eng_model_config wide = *gc;
    wide.n_kv_heads = gc->n_kv_heads * 2;
    assert_int_equal(eng_kvp_check_models(pred, gc, &wide, &err), KC_EINVAL);
    print_message("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "tensor 'k.0.weight'"));
    assert_int_equal(eng_kvp_check_models(pred, gc, gc, &err), KC_OK);
    eng_kvp_free(pred);
    eng_model_free(m);
    rm_model(dir, "other");
    remove(ppath);
    rmdir(dir);
}

/* ---- calibration ---- */

static void test_gram_matches_reference(void **state) {
    (void)state;
    const int n = 300, p = 17, q = 40;
    float *a = malloc((size_t)n * p * sizeof(float)), *b = malloc((size_t)n * q * sizeof(float));
    float *c = malloc((size_t)p * q * sizeof(float)), *r = malloc((size_t)p * q * sizeof(float));
    uint64_t s = 1;
    for (int i = 0; i < n * p; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        a[i] = (float)((double)(s >> 40) / (double)(1u << 24)) - 0.5f;
    }
    for (int i = 0; i < n * q; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        b[i] = (float)((double)(s >> 40) / (double)(1u << 24)) - 0.5f;
    }
    struct eng_gram *g = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_gram_create(1, &g, &err), KC_OK);
    assert_int_equal(eng_gram_atb(g, a, b, n, p, q, c, &err), KC_OK);
    eng__gram_atb_ref(a, b, n, p, q, r);
    const float d = max_abs_diff(c, r, (size_t)p * q);
    print_message("gram A^T B %dx%dx%d maxdiff %.3g\n", p, n, q, d);
    assert_true(d <= 1e-4f);
    /* A^T A through the same cache, and a second shape. */
    assert_int_equal(eng_gram_atb(g, a, a, n, p, p, c, &err), KC_OK);
    eng__gram_atb_ref(a, a, n, p, p, r);
    assert_true(max_abs_diff(c, r, (size_t)p * p) <= 1e-4f);
    assert_int_equal(eng_gram_atb(g, a, b, 0, p, q, c, &err), KC_EINVAL);
    eng_gram_free(g);
    free(a);
    free(b);
    free(c);
    free(r);
}

/* Noiseless data Y = X A^T + b: ordinary least squares (ridge 0) recovers A and b. */
static void test_calibration_recovers_known_affine_map(void **state) {
    (void)state;
    const struct eng_kvp_shape s = {
        .base_layers = 3, .aux_layers = 2, .base_kv_dim = 10, .aux_kv_dim = 6};
    const int32_t map[3] = {0, 1, 1};
    const int Nb = 10, Na = 6, n = 200;
    float *ax[2][2], *by[3][2]; /* [layer][k/v] */
    float A[3][2][10 * 6], B[3][2][10];
    uint64_t st = 99;
    for (int l = 0; l < 3; l++) {
        for (int w = 0; w < 2; w++) {
            for (int i = 0; i < Nb * Na; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                A[l][w][i] = (float)((double)(st >> 40) / (double)(1u << 24)) * 2.0f - 1.0f;
            }
            for (int i = 0; i < Nb; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                B[l][w][i] = (float)((double)(st >> 40) / (double)(1u << 24)) * 4.0f - 2.0f;
            }
        }
    }
    struct eng_kvp_calib *c = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_kvp_calib_create(&s, map, 1, &c, &err), KC_OK);
    for (int win = 0; win < 3; win++) {
        for (int a = 0; a < 2; a++) {
            for (int w = 0; w < 2; w++) {
                ax[a][w] = malloc((size_t)n * Na * sizeof(float));
                for (int i = 0; i < n * Na; i++) {
                    st = st * 6364136223846793005ull + 1442695040888963407ull;
                    /* Offset features: the bias column must absorb a mean. */
                    ax[a][w][i] = (float)((double)(st >> 40) / (double)(1u << 24)) * 2.0f + 0.5f;
                }
            }
        }
        for (int l = 0; l < 3; l++) {
            for (int w = 0; w < 2; w++) {
                by[l][w] = malloc((size_t)n * Nb * sizeof(float));
                const float *x = ax[map[l]][w];
                for (int t = 0; t < n; t++) {
                    for (int j = 0; j < Nb; j++) {
                        double y = B[l][w][j];
                        for (int i = 0; i < Na; i++) {
                            y += (double)A[l][w][j * Na + i] * x[t * Na + i];
                        }
                        by[l][w][t * Nb + j] = (float)y;
                    }
                }
            }
        }
        const float *ak[2] = {ax[0][0], ax[1][0]}, *av[2] = {ax[0][1], ax[1][1]};
        const float *bk[3] = {by[0][0], by[1][0], by[2][0]};
        const float *bv[3] = {by[0][1], by[1][1], by[2][1]};
        assert_int_equal(eng_kvp_calib_add(c, n, ak, av, bk, bv, &err), KC_OK);
        for (int a = 0; a < 2; a++) {
            free(ax[a][0]);
            free(ax[a][1]);
        }
        for (int l = 0; l < 3; l++) {
            free(by[l][0]);
            free(by[l][1]);
        }
    }
    assert_int_equal(eng_kvp_calib_rows(c), 3 * n);
    struct eng_kvp *p = NULL;
    assert_int_equal(eng_kvp_calib_solve(c, 0.0, &p, &err), KC_OK);
    float dw = 0, db = 0;
    for (int l = 0; l < 3; l++) {
        for (int w = 0; w < 2; w++) {
            const float *pw, *pb;
            eng_kvp_map_of(p, w ? 'v' : 'k', l, &pw, &pb);
            dw = fmaxf(dw, max_abs_diff(pw, A[l][w], (size_t)Nb * Na));
            db = fmaxf(db, max_abs_diff(pb, B[l][w], (size_t)Nb));
        }
    }
    print_message("affine recovery maxdiff weights %.3g bias %.3g\n", dw, db);
    assert_true(dw <= 1e-4f);
    assert_true(db <= 1e-4f);
    assert_memory_equal(eng_kvp_layer_map(p), map, sizeof(map));
    eng_kvp_free(p);
    p = NULL;
    /* Bad ridge values are refused. */
    assert_int_equal(eng_kvp_calib_solve(c, -1.0, &p, &err), KC_EINVAL);
    assert_int_equal(eng_kvp_calib_solve(c, NAN, &p, &err), KC_EINVAL);
    eng_kvp_calib_free(c);
    /* No data, or too little for an unregularised solve, is reported, not papered over. */
    assert_int_equal(eng_kvp_calib_create(&s, map, 1, &c, &err), KC_OK);
    assert_int_equal(eng_kvp_calib_solve(c, 0.0, &p, &err), KC_EINVAL);
    float few_x[3 * 6], few_y[3 * 10];
    for (int i = 0; i < 3 * 6; i++) {
        few_x[i] = (float)(i % 5);
    }
    memset(few_y, 0, sizeof(few_y));
    const float *fx[2] = {few_x, few_x}, *fy[3] = {few_y, few_y, few_y};
    assert_int_equal(eng_kvp_calib_add(c, 3, fx, fx, fy, fy, &err), KC_OK);
    assert_int_equal(eng_kvp_calib_solve(c, 0.0, &p, &err), KC_ERANGE);
    print_message("rejected: %s\n", err.msg);
    assert_null(p);
    /* ... which a ridge term makes solvable. */
    assert_int_equal(eng_kvp_calib_solve(c, 1e-3, &p, &err), KC_OK);
    eng_kvp_free(p);
    eng_kvp_calib_free(c);
}

/* Calibrating a model against itself through the real forward passes gives ~identity maps,
 * and the fitted predictor reproduces the base's own KV. */
static void test_calibration_with_aux_equal_base_recovers_identity(void **state) {
    (void)state;
    struct eng_model *base = load_case("llama_gqa"), *aux = load_case("llama_gqa");
    const struct eng_model_config *c = eng_model_config_of(base);
    const struct eng_kvp_shape s = eng_kvp_shape_of_pair(c, c);
    int32_t map[8];
    eng_kvp_layer_map_auto(s.base_layers, s.aux_layers, map);
    for (int l = 0; l < s.base_layers; l++) {
        assert_int_equal(map[l], l);
    }
    struct kc_error err = {0};
    struct kvp_rig rig;
    rig_init(&rig, base, aux, NULL, 32, 64);
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, c, 16, 4, &err), KC_OK);
    struct eng_kvp_calib *cal = NULL;
    assert_int_equal(eng_kvp_calib_create(&s, map, 1, &cal, &err), KC_OK);
    int32_t toks[64];
    uint64_t st = 5;
    for (int w = 0; w < 6; w++) {
        for (int i = 0; i < 64; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            toks[i] = (int32_t)((st >> 33) % (uint64_t)c->vocab_size);
        }
        if (eng_kvp_calib_window(cal, rig.kc, rig.bctx, &pool, &rig.apool, toks, 64, &err) !=
            KC_OK) {
            fail_msg("%s", err.msg);
        }
        assert_int_equal(eng_kv_pool_n_free(&pool), 4);
        assert_int_equal(eng_kv_pool_n_free(&rig.apool), rig.apool.n_blocks);
    }
    struct eng_kvp *p = NULL;
    assert_int_equal(eng_kvp_calib_solve(cal, 0.0, &p, &err), KC_OK);
    const int N = s.base_kv_dim;
    float dw = 0, db = 0;
    for (int l = 0; l < s.base_layers; l++) {
        for (int w = 0; w < 2; w++) {
            const float *pw, *pb;
            eng_kvp_map_of(p, w ? 'v' : 'k', l, &pw, &pb);
            for (int i = 0; i < N; i++) {
                for (int j = 0; j < N; j++) {
                    dw = fmaxf(dw, fabsf(pw[i * N + j] - (i == j ? 1.0f : 0.0f)));
                }
                db = fmaxf(db, fabsf(pb[i]));
            }
        }
    }
    print_message("self-calibration: max |W - I| %.3g, max |b| %.3g\n", dw, db);
    assert_true(dw <= 1e-2f);
    assert_true(db <= 1e-2f);
    /* A small ridge still gives ~identity. */
    struct eng_kvp *pr = NULL;
    assert_int_equal(eng_kvp_calib_solve(cal, 1e-6, &pr, &err), KC_OK);
    eng_kvp_free(pr);
    eng_kvp_free(p);
    eng_kvp_calib_free(cal);
    /* Windows longer than the context are refused. */
    assert_int_equal(eng_kvp_calib_create(&s, map, 1, &cal, &err), KC_OK);
    int32_t many[65] = {0};
    assert_int_equal(eng_kvp_calib_window(cal, rig.kc, rig.bctx, &pool, &rig.apool, many, 65, &err),
                     KC_ECONTEXT);
    eng_kvp_calib_free(cal);
    assert_int_equal(eng_kv_pool_n_free(&pool), 4);
    eng_kv_pool_free(&pool);
    rig_free(&rig);
    eng_model_free(aux);
    eng_model_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_predictor_reproduces_base_kv),
        cmocka_unit_test(test_stacked_maps_put_each_layer_in_its_columns),
        cmocka_unit_test(test_random_predictor_runs_and_one_token_prompt_works),
        cmocka_unit_test(test_prefill_rejects_bad_requests),
        cmocka_unit_test(test_kv_extract_inverts_inject),
        cmocka_unit_test(test_predict_with_base_prefix),
        cmocka_unit_test(test_predict_with_aux_prefix),
        cmocka_unit_test(test_predict_with_prefixes_returns_every_block_on_failure),
        cmocka_unit_test(test_layer_map_parse_and_auto),
        cmocka_unit_test(test_predictor_file_round_trip_and_rejections),
        cmocka_unit_test(test_bundle_checks_tokenizers_and_shapes),
        cmocka_unit_test(test_bundle_name_and_read),
        cmocka_unit_test(test_predictor_misfit_names_file_and_tensor),
        cmocka_unit_test(test_gram_matches_reference),
        cmocka_unit_test(test_calibration_recovers_known_affine_map),
        cmocka_unit_test(test_calibration_with_aux_equal_base_recovers_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
