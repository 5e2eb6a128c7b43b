/*
 * Unit tests of the int8 weight type (ENG_WTYPE_INT8, engine/ops_dnnl.c invariant 7): the
 * oneDNN s8 matmul against an exact emulation of the quantization (per-channel s8 weights,
 * per-row s8 activations, integer dot products, then the two scales and the bias), for decode
 * and prefill row counts, stacked parts with a bias, and int8 beside f32/bf16 copies; and the
 * quantization error against the f32 product, within a documented bound. Golden-model checks
 * of int8 are in test_engine_model.c.
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

#include <cmocka.h>

#include "common/kc.h"
#include "engine/io/dtype.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "engine/ops.h"

#define TEST_RAND_SEED 0x51f15eedull
#include "tests/unit/test_rand.h"

#include "tests/unit/test_cpu.h"
#include "tests/unit/test_models.h"

static struct eng_dnn *dnn_new(int threads) {
    struct eng_dnn *d = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_dnn_create(threads, &d, &err), 0);
    eng_dnn_enter(d);
    return d;
}

/* Symmetric s8 of one row (what ops_dnnl.c computes): returns the scale, q[] the codes. */
static float quant_row(const float *x, int k, int levels, int *q) {
    float amax = 0.0f;
    for (int i = 0; i < k; i++) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float lv = (float)levels;
    const float inv = amax > 0.0f ? lv / amax : 0.0f;
    for (int i = 0; i < k; i++) {
        q[i] = (int)nearbyintf(x[i] * inv);
    }
    return amax / lv;
}

/* The exact int8 emulation: y = (sum_j qx_ij qw_oj) * sx_i * sw_o + b_o, with f32 weights
 * w[n, k] and bias b[n] (nullable). */
static void int8_emulate(const float *w, const float *b, int n, int k, const float *x, int m,
                         float *y) {
    int *qw = malloc((size_t)n * (size_t)k * sizeof(int));
    int *qx = malloc((size_t)k * sizeof(int));
    float *sw = malloc((size_t)n * sizeof(float));
    assert_true(qw != NULL && qx != NULL && sw != NULL);
    for (int o = 0; o < n; o++) {
        /* 7-bit weights where oneDNN has no VNNI (ops_dnnl.c invariant 9). */
        sw[o] = quant_row(w + (size_t)o * k, k, eng_int8_weight_levels(), qw + (size_t)o * k);
    }
    for (int i = 0; i < m; i++) {
        const float sx = quant_row(x + (size_t)i * k, k, 127, qx);
        for (int o = 0; o < n; o++) {
            long long acc = 0;
            for (int j = 0; j < k; j++) {
                acc += (long long)qx[j] * qw[(size_t)o * k + j];
            }
            y[(size_t)i * n + o] = (float)acc * sw[o] * sx + (b != NULL ? b[o] : 0.0f);
        }
    }
    free(qw);
    free(qx);
    free(sw);
}

/* Plain f32 product y = x w^T + b, and abs[] = sum_j |x_ij w_oj|: the scale the quantization
 * error of one output is measured against. */
static void f32_product(const float *w, const float *b, int n, int k, const float *x, int m,
                        float *y, float *abs) {
    for (int i = 0; i < m; i++) {
        for (int o = 0; o < n; o++) {
            double acc = b != NULL ? b[o] : 0.0, a = 0.0;
            for (int j = 0; j < k; j++) {
                const double p = (double)x[(size_t)i * k + j] * w[(size_t)o * k + j];
                acc += p;
                a += fabs(p);
            }
            y[(size_t)i * n + o] = (float)acc;
            abs[(size_t)i * n + o] = (float)a;
        }
    }
}

/* Largest |a - b| / (scale + 1e-30) over n outputs. */
static double max_rel_scaled(const float *a, const float *b, const float *scale, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - b[i]) / ((double)scale[i] + 1e-30);
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

/* Largest |a - b| / (|b| + floor) over n outputs. */
static double max_rel(const float *a, const float *b, size_t n, double floor) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - b[i]) / (fabs((double)b[i]) + floor);
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

/* The int8 linear (weights w[n, k] f32 in two parts, bias optional) against the emulation for
 * every row count in ms; prefill/decode weight types as given (one of them int8 at least). */
/* A linear of random [n, k] weights, no bias (creation copies the weights it packs). */
static struct eng_linear *rand_linear(int n, int k, enum eng_wtype pw, enum eng_wtype dw) {
    float *w = rand_floats((size_t)n * (size_t)k, 1.0f);
    const struct eng_weight_part part = {w, NULL, ENG_DTYPE_F32, n};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(&part, 1, k, pw, dw, &l, &err), 0);
    free(w);
    return l;
}

static void check_int8_linear(int n, int k, bool bias, enum eng_wtype pw, enum eng_wtype dw,
                              const int *ms, int n_ms) {
    struct eng_dnn *dnn = dnn_new(0);
    float *w = rand_floats((size_t)n * (size_t)k, 1.0f);
    float *b = bias ? rand_floats((size_t)n, 1.0f) : NULL;
    /* Uneven row magnitudes: per-channel scales must differ for the test to see them. */
    for (int o = 0; o < n; o++) {
        const float s = 0.01f + (float)(o % 7);
        for (int j = 0; j < k; j++) {
            w[(size_t)o * k + j] *= s;
        }
    }
    const int n0 = n / 3;
    const struct eng_weight_part parts[2] = {
        {w, b, ENG_DTYPE_F32, n0},
        {w + (size_t)n0 * k, b != NULL ? b + n0 : NULL, ENG_DTYPE_F32, n - n0}};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(parts, 2, k, pw, dw, &l, &err), 0);
    for (int t = 0; t < n_ms; t++) {
        const int m = ms[t];
        const enum eng_wtype wt = m <= ENG_DECODE_MAX_M ? dw : pw;
        float *x = rand_floats((size_t)m * (size_t)k, 2.0f);
        /* Uneven row magnitudes and a zero row (scale 0). */
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < k; j++) {
                x[(size_t)i * k + j] *= i == 1 ? 0.0f : 0.1f + (float)(i % 5);
            }
        }
        float *y = malloc((size_t)m * (size_t)n * sizeof(float));
        float *ye = malloc((size_t)m * (size_t)n * sizeof(float));
        float *yf = malloc((size_t)m * (size_t)n * sizeof(float));
        float *ya = malloc((size_t)m * (size_t)n * sizeof(float));
        assert_true(y != NULL && ye != NULL && yf != NULL && ya != NULL);
        eng_linear_forward(dnn, l, x, m, y);
        f32_product(w, b, n, k, x, m, yf, ya);
        if (wt == ENG_WTYPE_INT8) {
            int8_emulate(w, b, n, k, x, m, ye);
        } else {
            memcpy(ye, yf, (size_t)m * (size_t)n * sizeof(float));
        }
        /* Against the emulation: the s32 sums are exact; only the f32 rescale rounds. */
        const double rel_e = max_rel(y, ye, (size_t)m * (size_t)n, 1.0);
        /* Against f32: the quantization error itself, relative to sum |x w|. */
        const double rel_f = max_rel_scaled(y, yf, ya, (size_t)m * (size_t)n);
        printf("  int8 linear %s/%s m=%4d n=%d k=%d: vs emulation %.3g, vs f32 %.3g\n",
               pw == ENG_WTYPE_INT8 ? "int8" : "other", dw == ENG_WTYPE_INT8 ? "int8" : "other", m,
               n, k, rel_e, rel_f);
        if (wt == ENG_WTYPE_INT8) {
            assert_true(rel_e <= 1e-5);
            /* Rounding each operand to 1/254 of its row's range: <= 1% of sum |x w| (here
             * ~0.3%). */
            assert_true(rel_f <= 1e-2);
        } else {
            /* A non-int8 copy: its own GEMM rounding (bf16 ~0.4%). */
            assert_true(rel_f <= (wt == ENG_WTYPE_BF16 ? 1e-2 : 1e-5));
        }
        if (m > 1 && wt == ENG_WTYPE_INT8 &&
            eng__linear_copy_for_rows(l, m) == eng__linear_copy_for_rows(l, 1)) {
            /* Batch invariance: the rows of a decode batch or of a short prefill chunk that
             * runs the one-row copy equal the same rows stepped one at a time, bit for bit
             * (exact s32 sums, the same f32 rescale per row). */
            float *y1 = malloc((size_t)n * sizeof(float));
            assert_non_null(y1);
            for (int i = 0; i < m; i++) {
                eng_linear_forward(dnn, l, x + (size_t)i * (size_t)k, 1, y1);
                assert_memory_equal(y1, y + (size_t)i * (size_t)n, (size_t)n * sizeof(float));
            }
            free(y1);
        }
        if (m > 1 && wt == ENG_WTYPE_INT8) {
            /* The zero activation row yields exactly the bias. */
            for (int o = 0; o < n; o++) {
                assert_true(y[(size_t)n + o] == (b != NULL ? b[o] : 0.0f));
            }
        }
        free(x);
        free(y);
        free(ye);
        free(yf);
        free(ya);
    }
    eng_linear_free(l);
    free(w);
    free(b);
    eng_dnn_free(dnn);
}

static void test_int8_linear_matches_emulation_decode_and_prefill(void **state) {
    (void)state;
    /* Decode rows 1..16 (gemv copy, packed decode copy), prefill chunks with padding (17, 40,
     * 100: short chunks may run the one-row copy, invariant 8) and chunking (600 > 512 rows).
     * K not a multiple of 4 or 64, N not of 16. */
    const int ms[] = {1, 2, 3, 8, 16, 17, 40, 64, 100, 600};
    check_int8_linear(70, 301, true, ENG_WTYPE_INT8, ENG_WTYPE_INT8, ms, 10);
    check_int8_linear(64, 128, false, ENG_WTYPE_INT8, ENG_WTYPE_INT8, ms, 8);
}

static void test_int8_beside_other_types(void **state) {
    (void)state;
    const int ms[] = {1, 4, 40};
    /* int8 decode beside f32 prefill (three copies), and int8 prefill beside bf16 decode. */
    check_int8_linear(48, 96, true, ENG_WTYPE_F32, ENG_WTYPE_INT8, ms, 3);
    check_int8_linear(48, 96, true, ENG_WTYPE_INT8, ENG_WTYPE_BF16, ms, 3);
}

static void test_int8_weights_take_a_quarter_of_f32(void **state) {
    (void)state;
    const int n = 64, k = 256;
    struct eng_linear *l = rand_linear(n, k, ENG_WTYPE_INT8, ENG_WTYPE_INT8);
    /* One byte per weight read per step (plus oneDNN's compensation/padding, < 10%). */
    assert_true(eng_linear_bytes_read(l, 1) >= (size_t)n * k);
    assert_true(eng_linear_bytes_read(l, 1) <= (size_t)n * k * 11 / 10);
    assert_true(eng_linear_bytes_read(l, 100) <= (size_t)n * k * 11 / 10);
    eng_linear_free(l);
}

/* A batched int8 decode step (2..ENG_DECODE_MAX_M rows) runs the one-row inner-product copy
 * (ops_dnnl.c invariant 8): 2-3.5x the GB/s of a packed matmul copy on VNNI, and one int8
 * copy fewer in memory. Checked where it was measured, on x86 below AMX (native, and under
 * the ONEDNN_MAX_CPU_ISA caps of the test variants); on AMX oneDNN may refuse the layout for
 * 16 rows, and the packed copy is the documented fallback, so there it is only printed. The
 * products themselves are checked against the emulation above for every row count. */
static void test_int8_decode_rows_share_the_one_row_copy(void **state) {
    (void)state;
    static const char *const amx[] = {"amx_int8", NULL};
    const int n = 96, k = 160;
    struct eng_linear *l = rand_linear(n, k, ENG_WTYPE_F32, ENG_WTYPE_INT8);
    const size_t one = eng_linear_bytes_read(l, 1), f32 = (size_t)n * (size_t)k * sizeof(float);
    bool shared = true;
    for (int m = 2; m <= ENG_DECODE_MAX_M; m++) {
        shared = shared && eng_linear_bytes_read(l, m) == one;
    }
    printf("  int8 decode beside f32 prefill: %zu bytes of copies (f32 %zu, one-row int8 %zu); "
           "2..%d rows %s the one-row copy\n",
           eng_linear_bytes(l), f32, one, ENG_DECODE_MAX_M, shared ? "share" : "do not share");
    if (!cpu_has_any(amx)) {
        assert_true(shared);
        /* Two copies: the f32 prefill copy (what 100 rows read) and the int8 one. */
        assert_true(eng_linear_bytes(l) == eng_linear_bytes_read(l, 100) + one);
    }
    eng_linear_free(l);
}

/* int8 prefill chunks of up to 64 rows run the one-row inner-product copy too (ops_dnnl.c
 * invariant 8: 1.3-1.5x a packed matmul's GB/s at 32-64 rows on VNNI), only where oneDNN's
 * effective ISA is AVX-512 VNNI without AMX; elsewhere (AMX, the ONEDNN_MAX_CPU_ISA caps, no
 * VNNI) every prefill chunk keeps the matmul copy. Longer chunks keep it everywhere. */
static void test_int8_short_prefill_chunks_share_the_one_row_copy(void **state) {
    (void)state;
    static const char *const amx[] = {"amx_int8", NULL};
    static const char *const vnni[] = {"avx512_vnni", NULL};
    const int n = 96, k = 160;
    struct eng_linear *l = rand_linear(n, k, ENG_WTYPE_INT8, ENG_WTYPE_INT8);
    const int one = eng__linear_copy_for_rows(l, 1);
    const bool ip = eng__linear_copy_for_rows(l, 40) == one;
    const bool expect = cpu_has_any(vnni) && !cpu_has_any(amx) && eng_int8_weight_levels() == 127;
    printf("  int8 prefill chunks of 17-64 rows %s the one-row copy (expected: %s)\n",
           ip ? "share" : "do not share", expect ? "share" : "do not share");
    assert_true(ip == expect);
    assert_int_equal(eng__linear_copy_for_rows(l, 17), eng__linear_copy_for_rows(l, 64));
    assert_int_equal(eng__linear_copy_for_rows(l, 17), eng__linear_copy_for_rows(l, 40));
    assert_int_not_equal(eng__linear_copy_for_rows(l, 65), one);
    assert_int_equal(eng__linear_copy_for_rows(l, 65), eng__linear_copy_for_rows(l, 600));
    eng_linear_free(l);
}

static void test_int8_wtype_parses(void **state) {
    (void)state;
    enum eng_wtype wt = ENG_WTYPE_F32;
    assert_int_equal(eng_wtype_parse("int8", &wt), KC_OK);
    assert_int_equal(wt, ENG_WTYPE_INT8);
    assert_int_equal(eng_wtype_parse("i8", &wt), KC_EINVAL);
    assert_int_equal(eng_wtype_parse("INT8", &wt), KC_EINVAL);
}

/* KV Prediction with int8 base and aux weights (the golden llama_gqa paired with itself, an
 * identity predictor): predict mode runs, its predicted cache equals the full path's and the
 * greedy continuations agree, as with f32 (test_engine_kvp.c's identity invariant). */
static void test_kvp_predict_runs_with_int8_base_and_aux(void **state) {
    (void)state;
    struct eng_model *base = test_golden_model("llama_gqa", ENG_WTYPE_INT8);
    struct eng_model *aux = test_golden_model("llama_gqa", ENG_WTYPE_INT8);
    const struct eng_model_config *c = eng_model_config_of(base);
    const int V = c->vocab_size, L = c->n_layers, kvd = c->n_kv_heads * c->head_dim;
    struct eng_kvp *pred = test_identity_predictor(c);
    int32_t prompt[24];
    for (int i = 0; i < 24; i++) {
        prompt[i] = (int32_t)((i * 37 + 11) % V);
    }
    const int n = 24, G = 16;
    struct kc_error err = {0};
    struct eng_kvp_ctx *kc = NULL;
    struct eng_ctx *bctx = NULL;
    struct eng_kv_pool apool, pool;
    assert_int_equal(eng_kvp_ctx_create(base, aux, pred, 64, n + G + 1, 1, &kc, &err), KC_OK);
    assert_int_equal(eng_ctx_create(base, 64, n + G + 1, 1, &bctx, &err), KC_OK);
    assert_int_equal(eng_kv_pool_init(&apool, c, 4, 16, &err), KC_OK);
    assert_int_equal(eng_kv_pool_init(&pool, c, 8, 32, &err), KC_OK);
    struct eng_seq full = {0}, pr = {0}, aseq = {0};
    float *lf = calloc((size_t)V, sizeof(float)), *lp = calloc((size_t)V, sizeof(float));
    assert_true(lf != NULL && lp != NULL);
    const struct eng_kvp_seqs io_full = {
        .base_ctx = bctx, .base_pool = &pool, .base = &full, .aux_pool = &apool, .aux = &aseq};
    const struct eng_kvp_seqs io_pr = {
        .base_ctx = bctx, .base_pool = &pool, .base = &pr, .aux_pool = &apool, .aux = &aseq};
    assert_int_equal(eng_kvp_prefill(kc, ENG_KVP_FULL, &io_full, prompt, n, lf, NULL, &err), KC_OK);
    eng_seq_release(&apool, &aseq);
    struct eng_kvp_timings t = {0};
    if (eng_kvp_prefill(kc, ENG_KVP_PREDICT, &io_pr, prompt, n, lp, &t, &err) != KC_OK) {
        fail_msg("int8 predict: %s", err.msg);
    }
    eng_seq_release(&apool, &aseq);
    assert_int_equal(pr.n_tokens, n);
    float dk = 0, dv = 0, kscale = 0;
    for (int l = 0; l < L; l++) {
        for (int p = 0; p < n; p++) {
            dk = fmaxf(dk, max_abs_diff(eng_kv_k_at(&pool, &full, l, p),
                                        eng_kv_k_at(&pool, &pr, l, p), (size_t)kvd));
            dv = fmaxf(dv, max_abs_diff(eng_kv_v_at(&pool, &full, l, p),
                                        eng_kv_v_at(&pool, &pr, l, p), (size_t)kvd));
            kscale = fmaxf(kscale, max_abs(eng_kv_k_at(&pool, &full, l, p), (size_t)kvd));
        }
    }
    const float dl = max_abs_diff(lf, lp, (size_t)V);
    print_message("int8 identity predictor: maxdiff k %.3g v %.3g (k scale %.3g), first logits "
                  "%.3g\n",
                  dk, dv, kscale, dl);
    for (int i = 0; i < V; i++) {
        assert_true(isfinite(lp[i]));
    }
    /* Same int8 weights on both sides: the s32 products are exact, so the caches agree up to
     * f32 summation order in attention and the one-row vs chunk GEMM epilogue. */
    assert_true(dk <= 1e-4f * kscale);
    assert_true(dv <= 1e-4f * kscale);
    int agree = 0;
    for (int i = 0; i < G; i++) {
        int32_t a = argmax(lf, V), b = argmax(lp, V);
        agree += a == b && agree == i;
        assert_int_equal(
            eng_kvp_forward(kc, ENG_KVP_FULL, &io_full, &a, 1, ENG_LOGITS_LAST, lf, &err), KC_OK);
        assert_int_equal(
            eng_kvp_forward(kc, ENG_KVP_PREDICT, &io_pr, &b, 1, ENG_LOGITS_LAST, lp, &err), KC_OK);
    }
    print_message("int8 predict vs full: greedy agrees for %d of %d tokens\n", agree, G);
    assert_int_equal(agree, G);
    eng_seq_release(&pool, &full);
    eng_seq_release(&pool, &pr);
    assert_int_equal(eng_kv_pool_n_free(&pool), 32);
    assert_int_equal(eng_kv_pool_n_free(&apool), 16);
    free(lf);
    free(lp);
    eng_kv_pool_free(&pool);
    eng_kv_pool_free(&apool);
    eng_ctx_free(bctx);
    eng_kvp_ctx_free(kc);
    eng_kvp_free(pred);
    eng_model_free(aux);
    eng_model_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int8_linear_matches_emulation_decode_and_prefill),
        cmocka_unit_test(test_int8_beside_other_types),
        cmocka_unit_test(test_int8_weights_take_a_quarter_of_f32),
        cmocka_unit_test(test_int8_decode_rows_share_the_one_row_copy),
        cmocka_unit_test(test_int8_short_prefill_chunks_share_the_one_row_copy),
        cmocka_unit_test(test_int8_wtype_parses),
        cmocka_unit_test(test_kvp_predict_runs_with_int8_base_and_aux),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
