/*
 * Unit tests for engine/ops.c and engine/ops_dnnl.c: every fast kernel against its `_ref`
 * twin on random inputs with awkward sizes, printing maxdiff; RoPE tables against an
 * independent double-precision formula and against values computed with PyTorch (float64)
 * from transformers' _compute_llama3_parameters; the linear layer's row buckets, chunking and
 * padding; and two threads sharing one eng_linear.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
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
#include "engine/io/model_config.h"
#include "engine/ops.h"

/* ---- helpers ---- */

#define TEST_RAND_SEED 0x9e3779b97f4a7c15ull
#include "tests/unit/test_rand.h"

#include "tests/unit/test_attn.h"

static struct eng_dnn *dnn_new(int threads) {
    struct eng_dnn *d = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_dnn_create(threads, &d, &err), 0);
    eng_dnn_enter(d);
    return d;
}

/* Weights [rows, k] of dtype t, values uniform in [-1, 1) (exactly representable in t). */
static void *rand_weights(enum eng_dtype t, size_t n) {
    void *p = malloc(n * eng_dtype_size(t));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        const float v = frand();
        if (t == ENG_DTYPE_F32) {
            ((float *)p)[i] = v;
        } else if (t == ENG_DTYPE_BF16) {
            ((uint16_t *)p)[i] = eng_f32_to_bf16(v);
        } else {
            ((uint16_t *)p)[i] = eng_f32_to_f16(v);
        }
    }
    return p;
}

/* Copy of parts with weights, biases and x rounded to bf16 (what a bf16 GEMM computes on). */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        x[i] = eng_bf16_to_f32(eng_f32_to_bf16(x[i]));
    }
}

/* sum_j |x_ij w_oj| + |b_o| per output: the scale of the rounding error of one output. */
static void abs_scale(const struct eng_weight_part *parts, int n_parts, int k, const float *x,
                      int m, float *out) {
    float *ax = malloc((size_t)m * (size_t)k * sizeof(float));
    assert_non_null(ax);
    for (size_t i = 0; i < (size_t)m * (size_t)k; i++) {
        ax[i] = fabsf(x[i]);
    }
    struct eng_weight_part abs_parts[8];
    void *bufs[8];
    void *bbufs[8];
    for (int p = 0; p < n_parts; p++) {
        const size_t n = (size_t)parts[p].rows * (size_t)k;
        float *w = malloc(n * sizeof(float));
        float *b = calloc((size_t)parts[p].rows, sizeof(float));
        assert_true(w != NULL && b != NULL);
        eng_dtype_to_f32(parts[p].dtype, parts[p].data, w, n);
        for (size_t i = 0; i < n; i++) {
            w[i] = fabsf(w[i]);
        }
        if (parts[p].bias != NULL) {
            eng_dtype_to_f32(parts[p].dtype, parts[p].bias, b, (size_t)parts[p].rows);
            for (int i = 0; i < parts[p].rows; i++) {
                b[i] = fabsf(b[i]);
            }
        }
        abs_parts[p] = (struct eng_weight_part){w, b, ENG_DTYPE_F32, parts[p].rows};
        bufs[p] = w;
        bbufs[p] = b;
    }
    eng__linear_ref(abs_parts, n_parts, k, ax, m, out);
    for (int p = 0; p < n_parts; p++) {
        free(bufs[p]);
        free(bbufs[p]);
    }
    free(ax);
}

/* Largest |fast - ref| / scale over all outputs. */
static double max_rel_err(const float *fast, const float *ref, const float *scale, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)fast[i] - ref[i]) / ((double)scale[i] + 1e-30);
        worst = e > worst || isnan(e) ? e : worst;
    }
    return worst;
}

/* Runs forward for m rows and checks it against the reference within tol * scale. For bf16
 * weights the reference sees x rounded to bf16, as the GEMM does. */
static void check_linear(struct eng_dnn *dnn, const struct eng_linear *l,
                         const struct eng_weight_part *parts, int n_parts, int k, int m,
                         bool bf16_x, double tol, const char *what) {
    const int n = eng_linear_n_out(l);
    float *x = rand_floats((size_t)m * (size_t)k, 1.0f);
    float *xr = malloc((size_t)m * (size_t)k * sizeof(float));
    float *y = malloc((size_t)m * (size_t)n * sizeof(float));
    float *yr = malloc((size_t)m * (size_t)n * sizeof(float));
    float *sc = malloc((size_t)m * (size_t)n * sizeof(float));
    assert_true(xr != NULL && y != NULL && yr != NULL && sc != NULL);
    memcpy(xr, x, (size_t)m * (size_t)k * sizeof(float));
    if (bf16_x) {
        round_bf16(xr, (size_t)m * (size_t)k);
    }
    eng_linear_forward(dnn, l, x, m, y);
    eng__linear_ref(parts, n_parts, k, xr, m, yr);
    abs_scale(parts, n_parts, k, xr, m, sc);
    const double rel = max_rel_err(y, yr, sc, (size_t)m * (size_t)n);
    printf("  linear %-22s m=%4d n=%3d k=%3d maxdiff=%.3g rel=%.3g\n", what, m, n, k,
           (double)max_abs_diff(y, yr, (size_t)m * (size_t)n), rel);
    assert_true(rel <= tol);
    free(x);
    free(xr);
    free(y);
    free(yr);
    free(sc);
}

/* f32 GEMM error bound relative to sum |x w|: k * 2^-24 covers any summation order; oneDNN
 * stays far below it. bf16 weights: inputs are rounded exactly as the reference's, products
 * are exact in f32 and only the accumulation order differs, so the same bound holds. */
#define F32_TOL 1e-5
#define BF16_TOL 1e-5

/* ---- linear ---- */

static void test_linear_f32_matches_ref_for_awkward_sizes(void **state) {
    (void)state;
    struct eng_dnn *dnn = dnn_new(0);
    const int k = 37, n = 50;
    void *w = rand_weights(ENG_DTYPE_F32, (size_t)n * k);
    const struct eng_weight_part part = {w, NULL, ENG_DTYPE_F32, n};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(&part, 1, k, ENG_WTYPE_F32, ENG_WTYPE_F32, &l, &err), 0);
    assert_int_equal(eng_linear_n_out(l), n);
    assert_int_equal(eng_linear_n_in(l), k);
    /* Same weight types: the packed prefill copy serves 2.. rows, the plain one single rows. */
    assert_int_equal(eng_linear_bytes_read(l, 1), (size_t)n * k * 4);
    assert_true(eng_linear_bytes_read(l, 2) >= (size_t)n * k * 4);
    assert_int_equal(eng_linear_bytes_read(l, 2), eng_linear_bytes_read(l, 100));
    assert_int_equal(eng_linear_bytes(l),
                     eng_linear_bytes_read(l, 1) + eng_linear_bytes_read(l, 2));
    const int ms[] = {1, 3, 17, 100};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        check_linear(dnn, l, &part, 1, k, ms[i], false, F32_TOL, "f32");
    }
    eng_linear_free(l);
    free(w);
    eng_dnn_free(dnn);
}

static void test_linear_bf16_matches_ref_on_rounded_inputs(void **state) {
    (void)state;
    struct eng_dnn *dnn = dnn_new(0);
    const int k = 100, n = 70;
    void *w = rand_weights(ENG_DTYPE_BF16, (size_t)n * k);
    const struct eng_weight_part part = {w, NULL, ENG_DTYPE_BF16, n};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(&part, 1, k, ENG_WTYPE_BF16, ENG_WTYPE_BF16, &l, &err), 0);
    assert_true(eng_linear_bytes(l) >= (size_t)n * k * 2);
    const int ms[] = {1, 3, 17, 100};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        check_linear(dnn, l, &part, 1, k, ms[i], true, BF16_TOL, "bf16");
    }
    eng_linear_free(l);
    free(w);
    eng_dnn_free(dnn);
}

/* Decode-sized steps on a bf16 decode copy, shared with the prefill copy or separate from
 * an f32 one; with a bias, N not a multiple of 64 and K not a multiple of 32. */
static void test_linear_bf16_few_rows_match_ref(void **state) {
    (void)state;
    struct eng_dnn *dnn = dnn_new(0);
    const int k = 300, n = 200;
    void *w = rand_weights(ENG_DTYPE_BF16, (size_t)n * k);
    void *b = rand_weights(ENG_DTYPE_BF16, (size_t)n);
    const struct eng_weight_part part = {w, b, ENG_DTYPE_BF16, n};
    const enum eng_wtype prefill[2] = {ENG_WTYPE_BF16, ENG_WTYPE_F32};
    for (int v = 0; v < 2; v++) {
        struct eng_linear *l = NULL;
        struct kc_error err = {0};
        assert_int_equal(eng_linear_create(&part, 1, k, prefill[v], ENG_WTYPE_BF16, &l, &err), 0);
        for (int m = 1; m <= 6; m++) {
            check_linear(dnn, l, &part, 1, k, m, true, BF16_TOL, "bf16 few rows");
        }
        eng_linear_free(l);
    }
    free(w);
    free(b);
    eng_dnn_free(dnn);
}

/* q|k|v-style stacking of three parts of mixed dtypes, one carrying a bias; prefill in f32,
 * decode in bf16 (two copies). */
static void test_linear_stacked_parts_with_bias_and_two_copies(void **state) {
    (void)state;
    struct eng_dnn *dnn = dnn_new(0);
    const int k = 45;
    const int rows[3] = {32, 8, 8};
    const enum eng_dtype dt[3] = {ENG_DTYPE_BF16, ENG_DTYPE_F16, ENG_DTYPE_BF16};
    void *w[3], *b[3] = {NULL, NULL, NULL};
    struct eng_weight_part parts[3];
    for (int p = 0; p < 3; p++) {
        w[p] = rand_weights(dt[p], (size_t)rows[p] * k);
        if (p != 1) {
            b[p] = rand_weights(dt[p], (size_t)rows[p]);
        }
        parts[p] = (struct eng_weight_part){w[p], b[p], dt[p], rows[p]};
    }
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(parts, 3, k, ENG_WTYPE_F32, ENG_WTYPE_BF16, &l, &err), 0);
    assert_int_equal(eng_linear_n_out(l), 48);
    /* Three copies: f32 packed (17.. rows), bf16 packed (2..16), bf16 plain (1 row). */
    assert_int_equal(eng_linear_bytes_read(l, 1), (size_t)48 * k * 2);
    assert_true(eng_linear_bytes_read(l, 2) < eng_linear_bytes_read(l, 100));
    assert_int_equal(eng_linear_bytes(l), eng_linear_bytes_read(l, 1) +
                                              eng_linear_bytes_read(l, 2) +
                                              eng_linear_bytes_read(l, 100));
    /* The decode copy holds the f16 part rounded to bf16: so does its reference. */
    uint16_t *w1r = malloc((size_t)rows[1] * k * sizeof(uint16_t));
    assert_non_null(w1r);
    for (size_t i = 0; i < (size_t)rows[1] * k; i++) {
        w1r[i] = eng_f32_to_bf16(eng_f16_to_f32(((const uint16_t *)w[1])[i]));
    }
    struct eng_weight_part parts_bf16[3] = {parts[0], parts[1], parts[2]};
    parts_bf16[1] = (struct eng_weight_part){w1r, NULL, ENG_DTYPE_BF16, rows[1]};
    check_linear(dnn, l, parts_bf16, 3, k, 1, true, BF16_TOL, "stacked+bias decode bf16");
    check_linear(dnn, l, parts_bf16, 3, k, 3, true, BF16_TOL, "stacked+bias decode bf16");
    free(w1r);
    check_linear(dnn, l, parts, 3, k, 17, false, F32_TOL, "stacked+bias prefill f32");
    check_linear(dnn, l, parts, 3, k, 100, false, F32_TOL, "stacked+bias prefill f32");
    eng_linear_free(l);
    for (int p = 0; p < 3; p++) {
        free(w[p]);
        free(b[p]);
    }
    eng_dnn_free(dnn);
}

/* Row counts in an order that reuses, pads and chunks: exact decode buckets, padded prefill
 * buckets, more than one chunk with a partial last chunk, and back again. */
static void test_linear_repeated_forward_with_varying_rows_matches_ref(void **state) {
    (void)state;
    const enum eng_wtype wts[2] = {ENG_WTYPE_F32, ENG_WTYPE_BF16};
    for (int t = 0; t < 2; t++) {
        struct eng_dnn *dnn = dnn_new(0);
        const int k = 33, n = 24;
        void *w = rand_weights(ENG_DTYPE_F32, (size_t)n * k);
        void *b = rand_weights(ENG_DTYPE_F32, (size_t)n);
        const struct eng_weight_part part = {w, b, ENG_DTYPE_F32, n};
        struct eng_linear *l = NULL;
        struct kc_error err = {0};
        assert_int_equal(eng_linear_create(&part, 1, k, wts[t], wts[t], &l, &err), 0);
        const int ms[] = {1, 17, 3, 1030, 100, 1, 33, 512, 513, 16, 200, 17};
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
            if (wts[t] == ENG_WTYPE_BF16) {
                /* Reference on bf16-rounded weights: the packed copy holds those. */
                float *wr = malloc((size_t)n * k * sizeof(float));
                assert_non_null(wr);
                memcpy(wr, w, (size_t)n * k * sizeof(float));
                round_bf16(wr, (size_t)n * k);
                const struct eng_weight_part pr = {wr, b, ENG_DTYPE_F32, n};
                check_linear(dnn, l, &pr, 1, k, ms[i], true, BF16_TOL, "varying rows bf16");
                free(wr);
            } else {
                check_linear(dnn, l, &part, 1, k, ms[i], false, F32_TOL, "varying rows f32");
            }
        }
        eng_linear_free(l);
        free(w);
        free(b);
        eng_dnn_free(dnn);
    }
}

static void test_linear_prepare_then_forward_matches_ref(void **state) {
    (void)state;
    struct eng_dnn *dnn = dnn_new(0);
    const int k = 20, n = 30;
    void *w = rand_weights(ENG_DTYPE_F32, (size_t)n * k);
    const struct eng_weight_part part = {w, NULL, ENG_DTYPE_F32, n};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(&part, 1, k, ENG_WTYPE_F32, ENG_WTYPE_BF16, &l, &err), 0);
    assert_int_equal(eng_linear_prepare(dnn, l, 2000, &err), 0);
    check_linear(dnn, l, &part, 1, k, 700, false, F32_TOL, "after prepare");
    eng_linear_free(l);
    free(w);
    eng_dnn_free(dnn);
}

static void test_linear_create_rejects_bad_parts(void **state) {
    (void)state;
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    float w[4] = {0};
    const struct eng_weight_part bad_rows = {w, NULL, ENG_DTYPE_F32, 0};
    assert_int_equal(eng_linear_create(&bad_rows, 1, 2, ENG_WTYPE_F32, ENG_WTYPE_F32, &l, &err),
                     KC_EINVAL);
    const struct eng_weight_part bad_type = {w, NULL, ENG_DTYPE_I32, 2};
    assert_int_equal(eng_linear_create(&bad_type, 1, 2, ENG_WTYPE_F32, ENG_WTYPE_F32, &l, &err),
                     KC_EINVAL);
    const struct eng_weight_part ok = {w, NULL, ENG_DTYPE_F32, 2};
    assert_int_equal(eng_linear_create(&ok, 1, 0, ENG_WTYPE_F32, ENG_WTYPE_F32, &l, &err),
                     KC_EINVAL);
    assert_null(l);
    assert_true(strlen(err.msg) > 0);
}

/* Two threads, each with its own eng_dnn, run one shared eng_linear at once. */
struct thread_job {
    const struct eng_linear *l;
    const float *x;
    const float *expect; /* [max_m, n] */
    int k, n;
    double worst;
    int rc;
};

static void *linear_thread(void *arg) {
    struct thread_job *j = arg;
    struct eng_dnn *dnn = NULL;
    struct kc_error err = {0};
    j->rc = eng_dnn_create(1, &dnn, &err);
    if (j->rc != 0) {
        return NULL;
    }
    eng_dnn_enter(dnn);
    float *y = malloc((size_t)600 * (size_t)j->n * sizeof(float));
    const int ms[] = {1, 5, 16, 40, 600, 2};
    for (int rep = 0; rep < 10 && y != NULL; rep++) {
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
            eng_linear_forward(dnn, j->l, j->x, ms[i], y);
            for (size_t e = 0; e < (size_t)ms[i] * (size_t)j->n; e++) {
                const double d = fabs((double)y[e] - j->expect[e]);
                j->worst = d > j->worst || isnan(d) ? d : j->worst;
            }
        }
    }
    free(y);
    eng_dnn_free(dnn);
    return NULL;
}

static void test_linear_shared_by_two_threads_each_with_own_context(void **state) {
    (void)state;
    const int k = 64, n = 80, max_m = 600;
    void *w = rand_weights(ENG_DTYPE_F32, (size_t)n * k);
    const struct eng_weight_part part = {w, NULL, ENG_DTYPE_F32, n};
    struct eng_linear *l = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_linear_create(&part, 1, k, ENG_WTYPE_F32, ENG_WTYPE_F32, &l, &err), 0);
    float *x = rand_floats((size_t)max_m * k, 1.0f);
    float *expect = malloc((size_t)max_m * n * sizeof(float));
    assert_non_null(expect);
    eng__linear_ref(&part, 1, k, x, max_m, expect);
    struct thread_job jobs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (struct thread_job){l, x, expect, k, n, 0.0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, linear_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        printf("  linear thread %d maxdiff=%.3g\n", i, jobs[i].worst);
        assert_int_equal(jobs[i].rc, 0);
        assert_true(jobs[i].worst <= 1e-4);
    }
    eng_linear_free(l);
    free(w);
    free(x);
    free(expect);
}

/* ---- element-wise ---- */

static void test_rmsnorm_matches_ref_and_may_alias(void **state) {
    (void)state;
    const int m = 7, c = 301;
    float *x = rand_floats((size_t)m * c, 3.0f);
    float *w = rand_floats((size_t)c, 1.0f);
    float *y = malloc((size_t)m * c * sizeof(float));
    float *yr = malloc((size_t)m * c * sizeof(float));
    assert_true(y != NULL && yr != NULL);
    eng_rmsnorm(x, w, m, c, 1e-5f, y);
    eng__rmsnorm_ref(x, w, m, c, 1e-5f, yr);
    float d = max_abs_diff(y, yr, (size_t)m * c);
    printf("  rmsnorm maxdiff=%.3g\n", (double)d);
    assert_true(d <= 1e-5f * max_abs(yr, (size_t)m * c));
    eng_rmsnorm(x, w, m, c, 1e-5f, x); /* in place */
    d = max_abs_diff(x, y, (size_t)m * c);
    assert_true(d == 0.0f);
    free(x);
    free(w);
    free(y);
    free(yr);
}

static void test_swiglu_matches_ref(void **state) {
    (void)state;
    const int m = 5, f = 1000;
    float *gu = rand_floats((size_t)m * 2 * f, 12.0f);
    gu[0] = -100.0f; /* exp overflow side */
    gu[1] = 95.0f;
    float *h = malloc((size_t)m * f * sizeof(float));
    float *hr = malloc((size_t)m * f * sizeof(float));
    assert_true(h != NULL && hr != NULL);
    eng_swiglu(gu, m, f, h);
    eng__swiglu_ref(gu, m, f, hr);
    double worst = 0.0;
    for (size_t i = 0; i < (size_t)m * f; i++) {
        const double e = fabs((double)h[i] - hr[i]) / (fabs((double)hr[i]) + 1e-6);
        worst = e > worst ? e : worst;
    }
    printf("  swiglu maxdiff=%.3g rel=%.3g\n", (double)max_abs_diff(h, hr, (size_t)m * f), worst);
    assert_true(worst <= 1e-5);
    free(gu);
    free(h);
    free(hr);
}

static void test_add_accumulates(void **state) {
    (void)state;
    const size_t sizes[] = {1, 17, 300000};
    for (size_t s = 0; s < 3; s++) {
        const size_t n = sizes[s];
        float *y = rand_floats(n, 1.0f);
        float *x = rand_floats(n, 1.0f);
        float *e = malloc(n * sizeof(float));
        assert_non_null(e);
        for (size_t i = 0; i < n; i++) {
            e[i] = y[i] + x[i];
        }
        eng_add(y, x, n);
        assert_true(max_abs_diff(y, e, n) == 0.0f);
        free(x);
        free(y);
        free(e);
    }
}

/* ---- RoPE ---- */

static struct eng_model_config rope_cfg(int d, float theta, enum eng_rope_scaling s) {
    struct eng_model_config c;
    memset(&c, 0, sizeof(c));
    c.head_dim = d;
    c.rope_theta = theta;
    c.rope_scaling = s;
    c.rope_factor = 8.0f;
    c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 4.0f;
    c.rope_original_max_position = 8192;
    return c;
}

/* inv_freq written as transformers writes it: all three candidates, then selection. */
static double direct_inv_freq(const struct eng_model_config *c, int i) {
    const double base = 1.0 / pow((double)c->rope_theta, (2.0 * i) / c->head_dim);
    if (c->rope_scaling == ENG_ROPE_LINEAR) {
        return base / c->rope_factor;
    }
    if (c->rope_scaling != ENG_ROPE_LLAMA3) {
        return base;
    }
    const double orig = c->rope_original_max_position;
    const double lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    const double wavelen = 2.0 * 3.14159265358979323846 / base;
    const double low_freq = base / c->rope_factor; /* wavelen > orig / lo */
    const double smooth = (orig / wavelen - lo) / (hi - lo);
    const double medium = (1.0 - smooth) * base / c->rope_factor + smooth * base;
    const bool is_low = wavelen > orig / lo;
    const bool is_high = wavelen < orig / hi;
    return is_low ? low_freq : (is_high ? base : medium);
}

static void test_rope_table_matches_direct_double_formula(void **state) {
    (void)state;
    const enum eng_rope_scaling kinds[3] = {ENG_ROPE_NONE, ENG_ROPE_LINEAR, ENG_ROPE_LLAMA3};
    for (int s = 0; s < 3; s++) {
        const struct eng_model_config c = rope_cfg(64, s == 2 ? 500000.0f : 10000.0f, kinds[s]);
        struct eng_rope_table t;
        struct kc_error err = {0};
        assert_int_equal(eng_rope_table_init(&t, &c, 3000, &err), 0);
        assert_int_equal(t.head_dim, 64);
        assert_int_equal(t.max_pos, 3000);
        double worst = 0.0;
        for (int p = 0; p < 3000; p += 37) {
            for (int i = 0; i < 32; i++) {
                const double a = p * direct_inv_freq(&c, i);
                const double ec = fabs(t.cos[p * 32 + i] - cos(a));
                const double es = fabs(t.sin[p * 32 + i] - sin(a));
                worst = ec > worst ? ec : worst;
                worst = es > worst ? es : worst;
            }
        }
        printf("  rope table scaling=%d maxdiff=%.3g\n", s, worst);
        assert_true(worst <= 6e-8); /* float rounding of the exact value */
        eng_rope_table_free(&t);
    }
}

/* Golden values computed with PyTorch float64 from the transformers llama3 code (theta 5e5,
 * factor 8, low 1, high 4, original 8192, D 64) at position 1000: low-frequency (i >= 18),
 * medium (15..17) and high-frequency (i <= 14) bands. */
static void test_rope_llama3_table_matches_pytorch_values(void **state) {
    (void)state;
    const struct eng_model_config c = rope_cfg(64, 500000.0f, ENG_ROPE_LLAMA3);
    struct eng_rope_table t;
    struct kc_error err = {0};
    assert_int_equal(eng_rope_table_init(&t, &c, 1001, &err), 0);
    static const struct {
        int i;
        double cos, sin;
    } gold[] = {
        {0, 0.5623790762907029, 0.8268795405320025},
        {10, -0.6581203423130288, -0.752912753932208},
        {14, -0.9975612472618343, -0.06979654691611657},
        {15, 0.1975938422192491, 0.9802839759564748},
        {16, 0.8654010374940257, 0.5010798781674073},
        {17, 0.9841097430084358, 0.1775612956583458},
        {18, 0.9969714869975477, 0.07776795042881494},
        {24, 0.999977902994468, 0.0066478209051033296},
        {31, 0.9999999290363996, 0.00037673226010597025},
    };
    for (size_t g = 0; g < sizeof(gold) / sizeof(gold[0]); g++) {
        assert_true(fabs(t.cos[1000 * 32 + gold[g].i] - gold[g].cos) <= 1e-7);
        assert_true(fabs(t.sin[1000 * 32 + gold[g].i] - gold[g].sin) <= 1e-7);
    }
    eng_rope_table_free(&t);
}

static void test_rope_table_rejects_bad_config(void **state) {
    (void)state;
    struct eng_rope_table t = {0};
    struct kc_error err = {0};
    struct eng_model_config c = rope_cfg(63, 10000.0f, ENG_ROPE_NONE);
    assert_int_equal(eng_rope_table_init(&t, &c, 10, &err), KC_EINVAL);
    c = rope_cfg(64, 10000.0f, ENG_ROPE_LLAMA3);
    c.rope_high_freq_factor = c.rope_low_freq_factor;
    assert_int_equal(eng_rope_table_init(&t, &c, 10, &err), KC_EINVAL);
    c = rope_cfg(64, 10000.0f, ENG_ROPE_NONE);
    assert_int_equal(eng_rope_table_init(&t, &c, 0, &err), KC_EINVAL);
    assert_null(t.cos);
}

static void test_rope_matches_ref_and_rotates_pairs(void **state) {
    (void)state;
    const struct eng_model_config c = rope_cfg(40, 10000.0f, ENG_ROPE_NONE);
    struct eng_rope_table t;
    struct kc_error err = {0};
    assert_int_equal(eng_rope_table_init(&t, &c, 512, &err), 0);
    const int m = 9, heads = 3, d = 40;
    int32_t pos[9] = {0, 511, 3, 100, 7, 7, 250, 1, 42};
    float *x = rand_floats((size_t)m * heads * d, 2.0f);
    float *xr = malloc((size_t)m * heads * d * sizeof(float));
    float *x0 = malloc((size_t)m * heads * d * sizeof(float));
    assert_true(xr != NULL && x0 != NULL);
    memcpy(xr, x, (size_t)m * heads * d * sizeof(float));
    memcpy(x0, x, (size_t)m * heads * d * sizeof(float));
    eng_rope(&t, x, m, heads, pos);
    eng__rope_ref(&t, xr, m, heads, pos);
    const float diff = max_abs_diff(x, xr, (size_t)m * heads * d);
    printf("  rope maxdiff=%.3g\n", (double)diff);
    assert_true(diff <= 1e-6f);
    /* Against the formula directly in double: row 3 (position 100), head 2, pair i = 5. */
    const double a = 100.0 * pow(10000.0, -10.0 / 40.0);
    const float *in = x0 + (3 * heads + 2) * d;
    const float *outp = x + (3 * heads + 2) * d;
    assert_true(fabs(outp[5] - (in[5] * cos(a) - in[25] * sin(a))) <= 1e-5);
    assert_true(fabs(outp[25] - (in[25] * cos(a) + in[5] * sin(a))) <= 1e-5);
    /* Position 0 is the identity. */
    assert_true(max_abs_diff(x, x0, (size_t)heads * d) == 0.0f);
    free(x);
    free(xr);
    free(x0);
    eng_rope_table_free(&t);
}

/* ---- attention ---- */

struct attn_case {
    int n, pos0, heads, kv_heads, d;
    float q_scale;
};

static void run_attention_case(const struct attn_case *ac) {
    const int n_ctx = ac->pos0 + ac->n;
    struct test_attn a; /* blocks of 16, shuffled block table */
    test_attn_create(&a, ac->n, ac->pos0, ac->heads, ac->kv_heads, ac->d, 16, ac->q_scale, true,
                     n_ctx);
    assert_true(a.scratch_floats >= (size_t)n_ctx);
    const float scale = 1.0f / sqrtf((float)ac->d);
    eng_attention(a.q, ac->n, ac->pos0, &a.kv, ac->heads, ac->kv_heads, ac->d, scale, a.out,
                  a.scratch);
    eng__attention_ref(a.q, ac->n, ac->pos0, &a.kv, ac->heads, ac->kv_heads, ac->d, scale, a.outr,
                       a.scratch_r);
    const float diff = max_abs_diff(a.out, a.outr, a.qn);
    printf("  attention n=%3d pos0=%4d H=%2d Hkv=%2d D=%2d qscale=%g maxdiff=%.3g\n", ac->n,
           ac->pos0, ac->heads, ac->kv_heads, ac->d, (double)ac->q_scale, (double)diff);
    assert_true(diff <= 2e-5f);
    for (size_t i = 0; i < a.qn; i++) {
        assert_true(isfinite(a.out[i]));
    }
    test_attn_free(&a);
}

static void test_attention_matches_ref_prefill_gqa_and_mha(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        {17, 5, 4, 4, 40, 1.0f},   /* 1:1, D not a multiple of 16, pos0 > 0 */
        {100, 0, 8, 2, 64, 1.0f},  /* GQA 4:1 prefill from position 0 */
        {3, 33, 8, 2, 24, 1.0f},   /* short chunk continuing a sequence */
        {20, 40, 4, 1, 32, 30.0f}, /* MQA, large logits: needs the max subtraction */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_attention_case(&cases[i]);
    }
}

static void test_attention_matches_ref_decode_at_long_context(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        {1, 1500, 8, 2, 64, 1.0f},  /* decode, GQA 4:1 */
        {1, 2999, 32, 4, 64, 4.0f}, /* group of 8 x 3000 keys > scratch: online softmax blocks */
        {1, 700, 4, 4, 16, 1.0f},   /* decode, 1:1 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_attention_case(&cases[i]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_f32_matches_ref_for_awkward_sizes),
        cmocka_unit_test(test_linear_bf16_matches_ref_on_rounded_inputs),
        cmocka_unit_test(test_linear_bf16_few_rows_match_ref),
        cmocka_unit_test(test_linear_stacked_parts_with_bias_and_two_copies),
        cmocka_unit_test(test_linear_repeated_forward_with_varying_rows_matches_ref),
        cmocka_unit_test(test_linear_prepare_then_forward_matches_ref),
        cmocka_unit_test(test_linear_create_rejects_bad_parts),
        cmocka_unit_test(test_linear_shared_by_two_threads_each_with_own_context),
        cmocka_unit_test(test_rmsnorm_matches_ref_and_may_alias),
        cmocka_unit_test(test_swiglu_matches_ref),
        cmocka_unit_test(test_add_accumulates),
        cmocka_unit_test(test_rope_table_matches_direct_double_formula),
        cmocka_unit_test(test_rope_llama3_table_matches_pytorch_values),
        cmocka_unit_test(test_rope_table_rejects_bad_config),
        cmocka_unit_test(test_rope_matches_ref_and_rotates_pairs),
        cmocka_unit_test(test_attention_matches_ref_prefill_gqa_and_mha),
        cmocka_unit_test(test_attention_matches_ref_decode_at_long_context),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
