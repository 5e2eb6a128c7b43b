/*
 * Unit tests of the prefill-mode policy (scheduler/policy.h), a pure function: given the
 * request, the queue ahead and behind it, the expected arrivals and the cost models, the
 * decision, its reason and whether it is shed; and of the cost models' fit.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "scheduler/policy.h"

/* A 2-core-like setting: full costs 1 ms/token, predict 0.3, target 500 ms. */
static struct sch_cost_model g_full, g_pred;

static int setup(void **state) {
    (void)state;
    sch_cost_init(&g_full, 0.0, 1.0, 0.0);
    sch_cost_init(&g_pred, 0.0, 0.3, 0.0);
    g_pred.n_samples = 1; /* measured: shedding allowed */
    return 0;
}

static struct sch_policy_input base_input(int n_prompt) {
    struct sch_policy_input in = {
        .requested = SCH_MODE_AUTO,
        .predict_available = true,
        .n_prompt = n_prompt,
        .n_workers = 1,
        .full = &g_full,
        .predict = &g_pred,
        .ttft_slo_ms = 500.0,
        .predict_min_prompt = 2048,
    };
    return in;
}

static struct sch_policy_decision decide(const struct sch_policy_input *in) {
    struct sch_policy_decision d;
    sch_policy_decide(in, &d);
    return d;
}

static bool near(double a, double b) {
    return fabs(a - b) <= 1e-6 * (1.0 + fabs(b));
}

static void test_explicit_modes_are_obeyed_and_never_shed(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(4000);
    in.requested = SCH_MODE_FULL;
    in.shed_hopeless = true;
    in.work_ahead = true;
    in.ahead_ms = 1e6;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_REQUESTED);
    assert_false(d.shed);
    in.requested = SCH_MODE_PREDICT;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_REQUESTED);
    assert_false(d.shed);
}

static void test_predict_without_aux_falls_back_to_full(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(4000);
    in.predict_available = false;
    in.requested = SCH_MODE_PREDICT;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_NO_PREDICTOR);
    in.requested = SCH_MODE_AUTO;
    in.shed_hopeless = true; /* nothing to shed for: auto means full here */
    in.work_ahead = true;
    in.ahead_ms = 1e6;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_NO_PREDICTOR);
    assert_false(d.shed);
}

static void test_auto_short_prompt_meeting_slo_runs_full(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(100);
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_FITS_SLO);
    assert_true(near(d.est_full_ms, 100.0));
    assert_true(near(d.est_predict_ms, 30.0));
    assert_int_equal(d.meet_full, 1);
    assert_int_equal(d.meet_predict, 1);
}

static void test_auto_long_prompt_missing_slo_predicts(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(800); /* full 800 ms > 500, predict 240 ms */
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_SLO);
}

static void test_auto_counts_time_already_waited(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(300); /* 300 ms alone fits ... */
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
    in.waited_ms = 250.0; /* ... but not after 250 ms in the queue */
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_SLO);
    assert_true(near(d.est_full_ms, 550.0));
}

static void test_auto_full_only_when_it_costs_no_queued_request_its_slo(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(300);
    struct sch_policy_waiter behind[3] = {
        {.n_prompt = 100, .waited_ms = 150.0, .can_predict = true},
    };
    in.behind = behind;
    in.n_behind = 1;
    /* Behind full: 150 + 300 + 30 (it predicts) = 480 <= 500: both meet, full it is. */
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_FITS_SLO);
    assert_int_equal(d.meet_full, 2);
    /* Waited 200: behind full 530 > 500, behind predict 90 + 30 + 200 = 320: predict. */
    behind[0].waited_ms = 200.0;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_QUEUE);
    assert_int_equal(d.meet_full, 1);
    assert_int_equal(d.meet_predict, 2);
    /* A queued request that asked for full cannot shrink itself: 150 + 300 + 100 = 550 after
     * full, 150 + 90 + 100 = 340 after predict. */
    behind[0].can_predict = false;
    behind[0].waited_ms = 150.0;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_QUEUE);
    /* A queued request that misses either way does not make this one predict. */
    behind[0].can_predict = true;
    behind[0].waited_ms = 480.0;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.meet_full, d.meet_predict);
    /* The whole queue counts, not just the next one: the third misses behind a full one. */
    behind[0] = (struct sch_policy_waiter){.n_prompt = 100, .waited_ms = 0.0, .can_predict = true};
    behind[1] = behind[0];
    behind[2] =
        (struct sch_policy_waiter){.n_prompt = 100, .waited_ms = 120.0, .can_predict = true};
    in.n_behind = 3;
    d = decide(&in); /* third: 120 + 300 + 30 + 30 + 30 = 510 */
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_QUEUE);
}

static void test_auto_expected_arrivals_turn_full_into_predict(void **state) {
    (void)state;
    /* Nothing queued: full fits (400 ms of 500). One arrival per 100 s: during those 400 ms
     * none comes with probability 0.996, so nobody is to be protected: full. */
    struct sch_policy_input in = base_input(400);
    in.arrival_n_prompt = 400; /* arrivals cost 120 ms at predict */
    in.arrival_rate_per_ms = 1.0 / 100000.0;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_FITS_SLO);
    /* One per second: a 400 ms window sees at most 2 arrivals with probability 0.99; behind
     * full they would answer at 520 and 640 ms > 500; behind predict at 240 and 360 ms. */
    in.arrival_rate_per_ms = 1.0 / 1000.0;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_QUEUE);
    assert_int_equal(d.meet_full, 1);
    assert_int_equal(d.meet_predict, 3);
    /* A shorter prompt leaves room for them: full 200 + 120 = 320, + 120 = 440. */
    in.n_prompt = 200;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.meet_full, d.meet_predict);
}

static void test_auto_slo_margin_plans_inside_the_target(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(460); /* full 460 ms of 500: fits ... */
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
    in.slo_margin = 0.1; /* ... but not 450 */
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_SLO);
    /* Shedding plans with the same margin: 340 + 138 = 478 > 450. */
    in.shed_hopeless = true;
    in.work_ahead = true;
    in.ahead_ms = 340.0;
    assert_true(decide(&in).shed);
    in.slo_margin = 0.0;
    assert_false(decide(&in).shed);
}

static void test_auto_hopeless_request_is_shed_only_with_work_ahead(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(400); /* predict 120 ms */
    in.shed_hopeless = true;
    in.work_ahead = true;
    in.ahead_ms = 350.0; /* 470 <= 500: predict can still make it */
    struct sch_policy_decision d = decide(&in);
    assert_false(d.shed);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_SLO);
    in.ahead_ms = 400.0; /* 520 > 500: hopeless */
    d = decide(&in);
    assert_true(d.shed);
    assert_int_equal(d.reason, SCH_WHY_HOPELESS);
    assert_true(near(d.est_predict_ms, 520.0));
    /* Off: served (predict, the cheaper late mode). */
    in.shed_hopeless = false;
    d = decide(&in);
    assert_false(d.shed);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    /* Alone in the server a prompt too long for the target is served, never shed. */
    in = base_input(2000); /* predict 600 ms > 500 */
    in.shed_hopeless = true;
    in.predict_min_prompt = 0;
    d = decide(&in);
    assert_false(d.shed);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    /* Before predict was ever measured the estimate is a guess: no shedding on a guess. */
    in = base_input(400);
    in.shed_hopeless = true;
    in.work_ahead = true;
    in.ahead_ms = 1000.0;
    struct sch_cost_model unmeasured = g_pred;
    unmeasured.n_samples = 0;
    in.predict = &unmeasured;
    assert_false(decide(&in).shed);
    /* No target: nothing is hopeless. */
    in.predict = &g_pred;
    in.ttft_slo_ms = 0.0;
    d = decide(&in);
    assert_false(d.shed);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_NO_SLO);
}

static void test_auto_prompt_over_threshold_always_predicts(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(2048);
    in.ttft_slo_ms = 1e9;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_LONG_PROMPT);
}

static void test_auto_predict_no_cheaper_than_full_is_not_chosen_for_the_slo(void **state) {
    (void)state;
    struct sch_cost_model slow;
    sch_cost_init(&slow, 0.0, 1.5, 0.0);
    struct sch_policy_input in = base_input(800);
    in.predict = &slow;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_SLO);
}

static void test_auto_several_workers_share_the_queue(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(300);
    struct sch_policy_waiter behind[1] = {
        {.n_prompt = 100, .waited_ms = 200.0, .can_predict = true}};
    in.behind = behind;
    in.n_behind = 1;
    assert_int_equal(decide(&in).mode, SCH_MODE_PREDICT); /* one worker: 530 */
    in.n_workers = 2; /* the other worker takes it: 200 + 150 + 30 */
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
}

static void test_cost_model_fits_a_quadratic_from_samples(void **state) {
    (void)state;
    struct sch_cost_model m;
    sch_cost_init(&m, 5.0, 0.5, 0.0); /* a wrong seed */
    assert_int_equal(m.n_samples, 0);
    assert_true(near(sch_cost_estimate(&m, 1000), 505.0));
    /* Truth: 2 + 0.1 n + 1e-4 n^2 (attention-dominated at 2048 tokens). */
    const int lens[] = {128, 512, 1024, 2048, 256, 768, 1536};
    for (int rep = 0; rep < 6; rep++) {
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            const double n = lens[i];
            sch_cost_observe(&m, lens[i], 2.0 + 0.1 * n + 1e-4 * n * n);
        }
    }
    for (int n = 128; n <= 4096; n *= 2) {
        const double want = 2.0 + 0.1 * n + 1e-4 * n * n;
        const double got = sch_cost_estimate(&m, n);
        print_message("n %d: fit %.2f ms, truth %.2f ms\n", n, got, want);
        assert_true(fabs(got - want) <= 0.03 * want + 1.0); /* the seed holds the intercept */
    }
    double a, b, c;
    sch_cost_coefs(&m, &a, &b, &c);
    assert_true(a >= 0.0 && b >= 0.0 && c >= 0.0);
    assert_true(c > 0.5e-4 && c < 2e-4);
}

static void test_cost_model_one_length_scales_the_seed_and_tracks_drift(void **state) {
    (void)state;
    struct sch_cost_model m;
    sch_cost_init(&m, 1.0, 0.1, 1e-5);
    /* Only 768-token prompts seen, each taking 220 ms: that length is fitted ... */
    for (int i = 0; i < 5; i++) {
        sch_cost_observe(&m, 768, 220.0);
    }
    assert_true(fabs(sch_cost_estimate(&m, 768) - 220.0) < 5.0);
    /* ... and other lengths stay plausible: shorter is cheaper, longer dearer, none < 0. */
    const double e128 = sch_cost_estimate(&m, 128), e1024 = sch_cost_estimate(&m, 1024);
    assert_true(e128 > 0.0 && e128 < 100.0);
    assert_true(e1024 > 220.0);
    /* The machine slows down (another process): recent samples win within ~10 prefills. */
    for (int i = 0; i < 20; i++) {
        sch_cost_observe(&m, 768, 440.0);
    }
    assert_true(fabs(sch_cost_estimate(&m, 768) - 440.0) < 20.0);
    /* Garbage samples are ignored. */
    const int n = m.n_samples;
    sch_cost_observe(&m, 0, 10.0);
    sch_cost_observe(&m, 100, NAN);
    sch_cost_observe(&m, 100, -1.0);
    assert_int_equal(m.n_samples, n);
}

static void test_cost_model_coefficients_stay_non_negative(void **state) {
    (void)state;
    struct sch_cost_model m;
    sch_cost_init(&m, 0.0, 0.0, 0.0);
    /* Data that a free fit would explain with a negative slope. */
    for (int i = 0; i < 10; i++) {
        sch_cost_observe(&m, 100, 50.0);
        sch_cost_observe(&m, 2000, 10.0);
    }
    double a, b, c;
    sch_cost_coefs(&m, &a, &b, &c);
    assert_true(a >= 0.0 && b >= 0.0 && c >= 0.0);
    assert_true(sch_cost_estimate(&m, 4000) >= 0.0);
}

static void test_cost_model_unmeasured_mode_borrows_the_measured_speed(void **state) {
    (void)state;
    struct sch_cost_model full, pred;
    sch_cost_init(&full, 0.0, 1.0, 0.0);
    sch_cost_init(&pred, 0.0, 0.3, 0.0);
    for (int i = 0; i < 5; i++) {
        sch_cost_observe(&pred, 500, 300.0); /* twice as slow as its seed said */
    }
    sch_cost_borrow(&full, &pred, 500);
    assert_int_equal(full.n_samples, 0);
    const double e = sch_cost_estimate(&full, 500);
    print_message("full at 500 tokens after borrowing: %.1f ms (seed 500)\n", e);
    assert_true(e > 950.0 && e < 1050.0);
    /* Once measured itself, a model keeps its own fit. */
    sch_cost_observe(&full, 500, 700.0);
    const double own = sch_cost_estimate(&full, 500);
    sch_cost_borrow(&full, &pred, 500);
    assert_true(near(sch_cost_estimate(&full, 500), own));
}

static void test_ewma_and_reason_names(void **state) {
    (void)state;
    double c = sch_policy_ewma(0.0, 2.0, 0.2);
    assert_true(c == 2.0);
    c = sch_policy_ewma(c, 1.0, 0.2);
    assert_true(c > 1.79 && c < 1.81);
    assert_string_equal(sch_policy_reason_name(SCH_WHY_SLO), "slo");
    assert_string_equal(sch_policy_reason_name(SCH_WHY_HOPELESS), "hopeless");
    for (int r = 0; r < SCH_WHY_COUNT; r++) {
        assert_string_not_equal(sch_policy_reason_name((enum sch_policy_reason)r), "?");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_explicit_modes_are_obeyed_and_never_shed),
        cmocka_unit_test(test_predict_without_aux_falls_back_to_full),
        cmocka_unit_test(test_auto_short_prompt_meeting_slo_runs_full),
        cmocka_unit_test(test_auto_long_prompt_missing_slo_predicts),
        cmocka_unit_test(test_auto_counts_time_already_waited),
        cmocka_unit_test(test_auto_full_only_when_it_costs_no_queued_request_its_slo),
        cmocka_unit_test(test_auto_expected_arrivals_turn_full_into_predict),
        cmocka_unit_test(test_auto_slo_margin_plans_inside_the_target),
        cmocka_unit_test(test_auto_hopeless_request_is_shed_only_with_work_ahead),
        cmocka_unit_test(test_auto_prompt_over_threshold_always_predicts),
        cmocka_unit_test(test_auto_predict_no_cheaper_than_full_is_not_chosen_for_the_slo),
        cmocka_unit_test(test_auto_several_workers_share_the_queue),
        cmocka_unit_test(test_cost_model_fits_a_quadratic_from_samples),
        cmocka_unit_test(test_cost_model_one_length_scales_the_seed_and_tracks_drift),
        cmocka_unit_test(test_cost_model_coefficients_stay_non_negative),
        cmocka_unit_test(test_cost_model_unmeasured_mode_borrows_the_measured_speed),
        cmocka_unit_test(test_ewma_and_reason_names),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
