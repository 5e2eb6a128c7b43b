/* Unit tests for the sampler: greedy, seeded determinism, per-choice seed streams, truncation
 * rules, penalties (saturating, never Inf/NaN), non-finite logits (an error, never a read out
 * of bounds), parameter validation (NaN included), and eng_logprobs_top against a plain
 * reference (full sort, double log-softmax) with its maxdiff printed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/sampler.h"

#define V 8

static int32_t sample(struct eng_sampler *s, const float *logits, float *lp) {
    int32_t t = -1;
    struct kc_error err = {0};
    assert_int_equal(eng_sampler_sample(s, logits, &t, lp, &err), KC_OK);
    assert_true(t >= 0 && t < s->vocab_size);
    return t;
}

static void test_greedy_picks_argmax_and_reports_logprob(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = 0.0f;
    struct eng_sampler s;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    const float logits[V] = {0, 1, 5, 2, 0, 0, 0, 0};
    float lp = 0;
    assert_int_equal(sample(&s, logits, &lp), 2);
    assert_true(lp < 0.0f && lp > -0.2f);
    eng_sampler_free(&s);
}

static void test_sampling_leaves_the_logits_untouched(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    p.repetition_penalty = 1.5f;
    p.presence_penalty = 0.5f;
    p.temperature = 0.7f;
    struct eng_sampler s;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    eng_sampler_observe(&s, 1);
    eng_sampler_observe(&s, 2);
    const float orig[V] = {0, 1, -5, 2, 0, 0.5f, 0, 3};
    float logits[V];
    memcpy(logits, orig, sizeof(logits));
    for (int i = 0; i < 20; i++) {
        sample(&s, logits, NULL);
    }
    assert_memory_equal(logits, orig, sizeof(orig));
    eng_sampler_free(&s);
}

static void test_same_seed_same_tokens_different_seed_differs(void **state) {
    (void)state;
    struct eng_sampler_params p = eng_sampler_default_params();
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 8 : 7;
        struct eng_sampler s;
        assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
        for (int i = 0; i < 64; i++) {
            const float logits[V] = {1, 1, 1, 1, 1, 1, 1, 1};
            (run == 0 ? a : run == 1 ? b : c)[i] = sample(&s, logits, NULL);
        }
        eng_sampler_free(&s);
    }
    assert_memory_equal(a, b, sizeof(a));
    assert_memory_not_equal(a, c, sizeof(a));
}

/* Issue 15 item 13: seed + index made seed 1's choice k replay seed 2's choice k - 1. Streams
 * of seeds 1 and 2, choices 0..7, must all differ, and a seed must replay its own streams. */
static void test_stream_seeds_of_neighbouring_seeds_do_not_overlap(void **state) {
    (void)state;
    enum { N = 8, T = 32, V2 = 1024 };
    static int32_t out[2][N][T];
    static float logits[V2];
    for (int i = 0; i < V2; i++) {
        logits[i] = 0.0f;
    }
    for (int seed = 1; seed <= 2; seed++) {
        for (int k = 0; k < N; k++) {
            struct eng_sampler_params p = eng_sampler_default_params();
            p.seed = eng_sampler_stream_seed((uint64_t)seed, (uint64_t)k);
            struct eng_sampler s;
            assert_int_equal(eng_sampler_init(&s, &p, V2, NULL), KC_OK);
            for (int t = 0; t < T; t++) {
                out[seed - 1][k][t] = sample(&s, logits, NULL);
            }
            eng_sampler_free(&s);
        }
    }
    int shared = 0;
    for (int a = 0; a < N; a++) {
        for (int b = 0; b < N; b++) {
            shared += memcmp(out[0][a], out[1][b], sizeof(out[0][a])) == 0;
            if (a < b) {
                assert_memory_not_equal(out[0][a], out[0][b], sizeof(out[0][a]));
            }
        }
    }
    assert_int_equal(shared, 0);
    /* The derivation is a fixed function: seed 1 choice 3 is the same stream every time. */
    assert_int_equal(eng_sampler_stream_seed(1, 3), eng_sampler_stream_seed(1, 3));
    /* And it is not seed + index (the old, overlapping rule). */
    assert_true(eng_sampler_stream_seed(1, 1) != eng_sampler_stream_seed(2, 0));
    /* No collisions over a grid of neighbouring seeds and indices. */
    enum { S = 64, K = 16 };
    static uint64_t seen[S * K];
    int n = 0;
    for (uint64_t sd = 0; sd < S; sd++) {
        for (uint64_t k = 0; k < K; k++) {
            const uint64_t x = eng_sampler_stream_seed(sd, k);
            for (int j = 0; j < n; j++) {
                assert_true(seen[j] != x);
            }
            seen[n++] = x;
        }
    }
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
            int32_t t = sample(&s, base, NULL);
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
    const float logits[V] = {3, 2, 0, 0, 0, 0, 0, 0};
    assert_int_equal(sample(&s, logits, NULL), 1); /* 3 / 2 = 1.5 < 2 */
    eng_sampler_free(&s);

    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.6f;
    assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
    eng_sampler_observe(&s, 0);
    eng_sampler_observe(&s, 0);
    assert_int_equal(sample(&s, logits, NULL), 1); /* 3 - 1.2 = 1.8 < 2 */
    eng_sampler_free(&s);
}

/* Issue 15 item 1: repetition_penalty 1e-40 turned a seen token's logit into +Inf, the
 * softmax then into NaN, min-p kept no candidate and cand[n - 1] read before the buffer. The
 * penalty now saturates: the seen token wins, with a finite logprob. */
static void test_extreme_penalties_saturate_instead_of_overflowing(void **state) {
    (void)state;
    const float rps[] = {1e-40f, 1.4e-45f, 10.0f};
    for (size_t k = 0; k < sizeof(rps) / sizeof(rps[0]); k++) {
        for (int greedy = 0; greedy < 2; greedy++) {
            struct eng_sampler_params p = eng_sampler_default_params();
            p.repetition_penalty = rps[k];
            p.frequency_penalty = -2.0f;
            p.presence_penalty = -2.0f;
            p.temperature = greedy ? 0.0f : 1.0f;
            p.min_p = 0.5f;
            struct eng_sampler s;
            assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
            for (int i = 0; i < V; i++) {
                eng_sampler_observe(&s, i);
            }
            const float logits[V] = {0.5f, 3e38f, -3e38f, 2.0f, -1.0f, 0.0f, 1e30f, -INFINITY};
            for (int i = 0; i < 50; i++) {
                float lp = NAN;
                const int32_t t = sample(&s, logits, &lp);
                assert_true(isfinite(lp) && lp <= 0.0f);
                assert_true(t != 7); /* -Inf stays banned */
            }
            eng_sampler_free(&s);
        }
    }
}

/* A model that emits NaN or +Inf: an error naming the token, for every setting; -Inf alone
 * is a legal mask, but a row of nothing else is an error too. */
static void test_non_finite_logits_are_an_error_not_a_read_out_of_bounds(void **state) {
    (void)state;
    const float bad[] = {NAN, INFINITY};
    for (int b = 0; b < 2; b++) {
        for (int mode = 0; mode < 4; mode++) {
            struct eng_sampler_params p = eng_sampler_default_params();
            p.temperature = mode == 0 ? 0.0f : 1.0f;
            p.min_p = mode == 1 ? 0.3f : 0.0f;
            p.top_p = mode == 2 ? 0.5f : 1.0f;
            p.top_k = mode == 3 ? 2 : 0;
            struct eng_sampler s;
            assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
            float logits[V];
            for (int i = 0; i < V; i++) {
                logits[i] = bad[b];
            }
            struct kc_error err = {0};
            int32_t t = -7;
            assert_int_equal(eng_sampler_sample(&s, logits, &t, NULL, &err), KC_EBACKEND);
            assert_int_equal(t, -7);
            assert_non_null(strstr(err.msg, "token 0"));
            assert_int_equal(eng_logits_check(logits, V, NULL), KC_EBACKEND);
            /* One bad entry among good ones is enough. */
            for (int i = 0; i < V; i++) {
                logits[i] = (float)i;
            }
            logits[5] = bad[b];
            assert_int_equal(eng_sampler_sample(&s, logits, &t, NULL, &err), KC_EBACKEND);
            assert_non_null(strstr(err.msg, "token 5"));
            assert_non_null(strstr(err.msg, b == 0 ? "NaN" : "+Inf"));
            for (int i = 0; i < V; i++) {
                logits[i] = -INFINITY;
            }
            assert_int_equal(eng_sampler_sample(&s, logits, &t, NULL, &err), KC_EBACKEND);
            logits[3] = -1e30f;
            assert_int_equal(sample(&s, logits, NULL), 3);
            assert_int_equal(eng_logits_check(logits, V, NULL), KC_OK);
            eng_sampler_free(&s);
        }
    }
}

static void test_tiny_temperatures_stay_finite(void **state) {
    (void)state;
    const float ts[] = {1.4e-45f, 1e-30f, 1e-5f, 100.0f};
    for (size_t k = 0; k < sizeof(ts) / sizeof(ts[0]); k++) {
        struct eng_sampler_params p = eng_sampler_default_params();
        p.temperature = ts[k];
        struct eng_sampler s;
        assert_int_equal(eng_sampler_init(&s, &p, V, NULL), KC_OK);
        const float logits[V] = {3e38f, -3e38f, 0, 1, 2, 3e38f, -1, 0};
        float lp = NAN;
        const int32_t t = sample(&s, logits, &lp);
        assert_true(isfinite(lp));
        if (ts[k] < 1e-4f) {
            assert_true(t == 0 || t == 5);
        }
        eng_sampler_free(&s);
    }
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
    p = eng_sampler_default_params();
    p.repetition_penalty = 0.0f;
    assert_int_equal(eng_sampler_params_validate(&p, &err), KC_ERANGE);
}

/* ---- eng_logprobs_top against a plain reference ---- */

static const float *g_ref_logits;

static int ref_cmp(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const float lx = g_ref_logits[x], ly = g_ref_logits[y];
    if (lx != ly) {
        return lx > ly ? -1 : 1;
    }
    return (x > y) - (x < y);
}

static double ref_lse(const float *logits, int n) {
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    for (int i = 0; i < n; i++) {
        sum += exp((double)logits[i] - mx);
    }
    return mx + log(sum);
}

static void test_logprobs_top_matches_reference(void **state) {
    (void)state;
    enum { VB = 997 };
    static float logits[VB];
    static int32_t order[VB];
    uint64_t x = 12345;
    double maxdiff = 0.0;
    for (int round = 0; round < 40; round++) {
        for (int i = 0; i < VB; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            /* Coarse values make ties common: the lower id must come first. */
            const int q = (int)((x >> 33) % 64);
            logits[i] = round % 2 ? (float)q * 0.25f - 8.0f : (float)((x >> 11) % 100000) * 1e-3f;
            order[i] = i;
        }
        if (round == 3) {
            logits[17] = -INFINITY;
        }
        g_ref_logits = logits;
        qsort(order, VB, sizeof(order[0]), ref_cmp);
        const double lse = ref_lse(logits, VB);
        for (int n_top = 0; n_top <= ENG_MAX_LOGPROBS + 2; n_top += 3) {
            const int32_t tok = (int32_t)((unsigned)(round * 131 + n_top) % VB);
            struct eng_logprobs lp;
            eng_logprobs_top(logits, VB, tok, n_top, &lp);
            const int want = n_top > ENG_MAX_LOGPROBS ? ENG_MAX_LOGPROBS : n_top;
            assert_int_equal(lp.n_top, want);
            double d = fabs((double)lp.logprob - ((double)logits[tok] - lse));
            maxdiff = d > maxdiff ? d : maxdiff;
            for (int j = 0; j < want; j++) {
                assert_int_equal(lp.top_ids[j], order[j]);
                d = fabs((double)lp.top_logprobs[j] - ((double)logits[order[j]] - lse));
                maxdiff = d > maxdiff ? d : maxdiff;
            }
        }
    }
    printf("eng_logprobs_top vs reference: maxdiff %.3g\n", maxdiff);
    assert_true(maxdiff < 1e-5);
    /* It agrees with eng_log_softmax_at, and the sampled token's logprob under a greedy,
     * penalty-free sampler is the top-1 logprob. */
    struct eng_logprobs lp;
    eng_logprobs_top(logits, VB, 5, 1, &lp);
    assert_true(fabsf(lp.logprob - eng_log_softmax_at(logits, VB, 5)) < 1e-5f);
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = 0.0f;
    struct eng_sampler s;
    assert_int_equal(eng_sampler_init(&s, &p, VB, NULL), KC_OK);
    float glp = 0;
    assert_int_equal(sample(&s, logits, &glp), lp.top_ids[0]);
    assert_true(fabsf(glp - lp.top_logprobs[0]) < 1e-5f);
    eng_sampler_free(&s);
}

/* Found by fuzz_sampler: with the maximum near FLT_MAX, x - (max + log(sum)) lost log(sum)
 * and two tied top tokens each got logprob 0 instead of log(1/2). */
static void test_logprobs_top_keeps_precision_near_flt_max(void **state) {
    (void)state;
    const float logits[V] = {3.38275e38f, 0, 1e30f, 3.38275e38f, -3e38f, 0, 0, -INFINITY};
    struct eng_logprobs lp;
    eng_logprobs_top(logits, V, 3, 2, &lp);
    assert_int_equal(lp.n_top, 2);
    assert_int_equal(lp.top_ids[0], 0);
    assert_int_equal(lp.top_ids[1], 3);
    assert_true(fabsf(lp.logprob - logf(0.5f)) < 1e-6f);
    assert_true(fabsf(lp.top_logprobs[0] - logf(0.5f)) < 1e-6f);
    assert_true(fabsf(eng_log_softmax_at(logits, V, 0) - logf(0.5f)) < 1e-6f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_picks_argmax_and_reports_logprob),
        cmocka_unit_test(test_sampling_leaves_the_logits_untouched),
        cmocka_unit_test(test_same_seed_same_tokens_different_seed_differs),
        cmocka_unit_test(test_stream_seeds_of_neighbouring_seeds_do_not_overlap),
        cmocka_unit_test(test_top_k_and_top_p_and_min_p_restrict_candidates),
        cmocka_unit_test(test_penalties_push_seen_tokens_down),
        cmocka_unit_test(test_extreme_penalties_saturate_instead_of_overflowing),
        cmocka_unit_test(test_non_finite_logits_are_an_error_not_a_read_out_of_bounds),
        cmocka_unit_test(test_tiny_temperatures_stay_finite),
        cmocka_unit_test(test_validate_rejects_out_of_range_and_nan),
        cmocka_unit_test(test_logprobs_top_matches_reference),
        cmocka_unit_test(test_logprobs_top_keeps_precision_near_flt_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
