/*
 * Unit tests of the prefill-mode policy (scheduler/policy.h), a pure function: given the
 * request, the queue and the measured costs, the decision and its reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "scheduler/policy.h"

/* A 2-core-like setting: full costs 1 ms/token, predict 0.3, target 500 ms. */
static struct sch_policy_input base_input(int n_prompt) {
    struct sch_policy_input in = {
        .requested = SCH_MODE_AUTO,
        .predict_available = true,
        .n_prompt = n_prompt,
        .full_ms_per_token = 1.0,
        .predict_ms_per_token = 0.3,
        .predict_prior_ratio = 0.3,
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

static void test_explicit_modes_are_obeyed(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(4000);
    in.requested = SCH_MODE_FULL;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_REQUESTED);
    in = base_input(3);
    in.requested = SCH_MODE_PREDICT;
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_REQUESTED);
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
    d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_NO_PREDICTOR);
}

static void test_auto_short_prompt_meeting_slo_runs_full(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(100);
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_FITS_SLO);
    assert_true(d.est_full_ms > 99.0 && d.est_full_ms < 101.0);
    assert_true(d.est_predict_ms > 29.0 && d.est_predict_ms < 31.0);
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
    assert_true(d.est_full_ms > 549.0 && d.est_full_ms < 551.0);
}

static void test_auto_protects_the_next_queued_request(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(300);
    in.next_n_prompt = 100;
    in.next_waited_ms = 150.0; /* behind full: 150 + 300 + 100 = 550 > 500; predict: 340 */
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_QUEUE);
    in.next_waited_ms = 50.0; /* 450: fits either way */
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
}

static void test_auto_prompt_over_threshold_always_predicts(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(2048);
    in.ttft_slo_ms = 1e9;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_int_equal(d.reason, SCH_WHY_LONG_PROMPT);
    in.full_ms_per_token = 0.0; /* even before anything was measured */
    assert_int_equal(decide(&in).mode, SCH_MODE_PREDICT);
}

static void test_auto_without_measurements_runs_full(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(1000);
    in.full_ms_per_token = 0.0;
    in.predict_ms_per_token = 0.0;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_FULL);
    assert_int_equal(d.reason, SCH_WHY_NO_ESTIMATE);
}

static void test_auto_uses_prior_ratio_before_predict_is_measured(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(800);
    in.predict_ms_per_token = 0.0;
    in.predict_prior_ratio = 0.25;
    struct sch_policy_decision d = decide(&in);
    assert_int_equal(d.mode, SCH_MODE_PREDICT);
    assert_true(d.est_predict_ms > 199.0 && d.est_predict_ms < 201.0);
    /* A predictor no faster than full is never chosen for the SLO. */
    in.predict_prior_ratio = 1.5;
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
}

static void test_auto_without_slo_runs_full(void **state) {
    (void)state;
    struct sch_policy_input in = base_input(1500);
    in.ttft_slo_ms = 0.0;
    assert_int_equal(decide(&in).mode, SCH_MODE_FULL);
}

static void test_ewma_starts_at_first_sample_then_smooths(void **state) {
    (void)state;
    double c = sch_policy_ewma(0.0, 2.0, 0.2);
    assert_true(c == 2.0);
    c = sch_policy_ewma(c, 1.0, 0.2);
    assert_true(c > 1.79 && c < 1.81);
    assert_string_equal(sch_policy_reason_name(SCH_WHY_SLO), "slo");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_explicit_modes_are_obeyed),
        cmocka_unit_test(test_predict_without_aux_falls_back_to_full),
        cmocka_unit_test(test_auto_short_prompt_meeting_slo_runs_full),
        cmocka_unit_test(test_auto_long_prompt_missing_slo_predicts),
        cmocka_unit_test(test_auto_counts_time_already_waited),
        cmocka_unit_test(test_auto_protects_the_next_queued_request),
        cmocka_unit_test(test_auto_prompt_over_threshold_always_predicts),
        cmocka_unit_test(test_auto_without_measurements_runs_full),
        cmocka_unit_test(test_auto_uses_prior_ratio_before_predict_is_measured),
        cmocka_unit_test(test_auto_without_slo_runs_full),
        cmocka_unit_test(test_ewma_starts_at_first_sample_then_smooths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
