/* Unit tests for the sampler: greedy, seeded determinism, truncation rules, penalties,
 * parameter validation (NaN included). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include <cmocka.h>

#include "engine/sampler.h"

#define V 8

static void test_greedy_picks_argmax_and_reports_logprob(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = 0.0f;
    struct eng_sampler s;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    float logits[V] = {0, 1, 5, 2, 0, 0, 0, 0};
    float lp = 0;
    assert_int_equal(eng_sampler_sample(&s, logits, &lp), 2);
    assert_true(lp < 0.0f && lp > -0.2f);
    eng_sampler_free(&s);
}

static void test_same_seed_same_tokens_different_seed_differs(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    p.seed = 7;
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 8 : 7;
        struct eng_sampler s;
        assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
        for (int i = 0; i < 64; i++) {
            float logits[V] = {1, 1, 1, 1, 1, 1, 1, 1};
            int32_t t = eng_sampler_sample(&s, logits, NULL);
            (run == 0 ? a : run == 1 ? b : c)[i] = t;
        }
        eng_sampler_free(&s);
    }
    assert_memory_equal(a, b, sizeof(a));
    assert_memory_not_equal(a, c, sizeof(a));
}

static void test_top_k_and_top_p_and_min_p_restrict_candidates(void **state) {
    (void)state;
    const float base[V] = {3, 2.9f, 0, -1, -2, -3, -4, -5};
    for (int mode = 0; mode < 3; mode++) {
        struct eng_sampler_params p = eng_sampler_default_params();
        if (mode == 0) {
            p.top_k = 2;
        } else if (mode == 1) {
            p.top_p = 0.8f;
        } else {
            p.min_p = 0.5f;
        }
        struct eng_sampler s;
        assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
        for (int i = 0; i < 500; i++) {
            float logits[V];
            memcpy(logits, base, sizeof(logits));
            int32_t t = eng_sampler_sample(&s, logits, NULL);
            assert_true(t == 0 || t == 1);
        }
        eng_sampler_free(&s);
    }
}

static void test_penalties_push_seen_tokens_down(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    struct eng_sampler s;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    eng_sampler_observe(&s, 0);
    float logits[V] = {3, 2, 0, 0, 0, 0, 0, 0};
    assert_int_equal(eng_sampler_sample(&s, logits, NULL), 1); /* 3 / 2 = 1.5 < 2 */
    eng_sampler_free(&s);

    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.6f;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    eng_sampler_observe(&s, 0);
    eng_sampler_observe(&s, 0);
    float logits2[V] = {3, 2, 0, 0, 0, 0, 0, 0};
    assert_int_equal(eng_sampler_sample(&s, logits2, NULL), 1); /* 3 - 1.2 = 1.8 < 2 */
    eng_sampler_free(&s);
}

static void test_validate_rejects_out_of_range_and_nan(void **state) {
    (void)state;
    struct kc_error err = {0};
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = NAN;
    assert_int_equal(eng_sampler_params_validate(&p, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "temperature"));
    p = eng_sampler_default_params();
    p.top_p = 0.0f;
    assert_int_equal(eng_sampler_params_validate(&p, &err), KC_ERANGE);
    p = eng_sampler_default_params();
    p.presence_penalty = INFINITY;
    assert_int_equal(eng_sampler_params_validate(&p, &err), KC_ERANGE);
    p = eng_sampler_default_params();
    p.top_k = -1;
    assert_int_equal(eng_sampler_params_validate(&p, &err), KC_ERANGE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_picks_argmax_and_reports_logprob),
        cmocka_unit_test(test_same_seed_same_tokens_different_seed_differs),
        cmocka_unit_test(test_top_k_and_top_p_and_min_p_restrict_candidates),
        cmocka_unit_test(test_penalties_push_seen_tokens_down),
        cmocka_unit_test(test_validate_rejects_out_of_range_and_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
