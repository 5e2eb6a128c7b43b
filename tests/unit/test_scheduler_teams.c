/*
 * Unit tests of the machine-derived defaults: the elastic team plan (sch_team_split, pure:
 * given what is busy and the decode step's cost, the team of each side), the core count, and
 * the default prefill weight type as a function of the CPU flags (bf16 only with AMX).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "scheduler/sched_internal.h"

static struct sch_team_split split(int n_cpus, int n_prefilling, bool decode_busy, double work_ms,
                                   double shared_ms, double target_ms) {
    const struct sch_team_input in = {
        .n_cpus = n_cpus,
        .n_prefilling = n_prefilling,
        .decode_busy = decode_busy,
        .decode_step_work_ms = work_ms,
        .decode_shared_step_ms = shared_ms,
        .tpot_target_ms = target_ms,
    };
    struct sch_team_split t = {-1, -1};
    sch_team_split(&in, &t);
    return t;
}

/* split(...) gives decode want_decode cores and each prefill worker want_prefill. */
static void expect_split(int n_cpus, int n_prefilling, bool decode_busy, double work_ms,
                         double shared_ms, double target_ms, int want_decode, int want_prefill) {
    const struct sch_team_split t =
        split(n_cpus, n_prefilling, decode_busy, work_ms, shared_ms, target_ms);
    if (t.decode != want_decode || t.prefill != want_prefill) {
        print_message("split(%d, %d, %d, %g, %g, %g): decode %d prefill %d\n", n_cpus, n_prefilling,
                      (int)decode_busy, work_ms, shared_ms, target_ms, t.decode, t.prefill);
    }
    assert_int_equal(t.decode, want_decode);
    assert_int_equal(t.prefill, want_prefill);
}

/* One side alone gets every core: the lone prefill of issue 16 ran on half of them. */
static void test_a_side_alone_gets_every_core(void **state) {
    (void)state;
    struct sch_team_split t = split(2, 1, false, 0.0, 0.0, 50.0);
    assert_int_equal(t.prefill, 2);
    t = split(16, 1, false, 30.0, 90.0, 50.0);
    assert_int_equal(t.prefill, 16);
    t = split(2, 0, true, 30.0, 90.0, 50.0);
    assert_int_equal(t.decode, 2);
    t = split(16, 0, true, 30.0, 0.0, 50.0);
    assert_int_equal(t.decode, 16);
    /* Prefill workers alone share the cores. */
    t = split(16, 4, false, 0.0, 0.0, 50.0);
    assert_int_equal(t.prefill, 4);
    t = split(2, 3, false, 0.0, 0.0, 50.0);
    assert_int_equal(t.prefill, 1);
}

/* Both busy, sharing unmeasured or within the target (or no target): both keep every core
 * and the kernel time-slices them. */
static void test_both_busy_share_every_core_while_decode_meets_the_target(void **state) {
    (void)state;
    expect_split(2, 1, true, 20.0, 0.0, 50.0, 2, 2);
    expect_split(16, 1, true, 120.0, 49.0, 50.0, 16, 16);
    expect_split(16, 1, true, 120.0, 500.0, 0.0, 16, 16);
    expect_split(16, 2, true, 120.0, 10.0, 50.0, 16, 8);
}

/* Both busy and a shared decode step missed the target: decode gets the fewest cores that
 * meet it, prefill the rest. */
static void test_a_missed_target_splits_the_cores(void **state) {
    (void)state;
    /* 120 core-ms per step, 50 ms target: 3 cores (40 ms), 13 to prefill. */
    expect_split(16, 1, true, 120.0, 80.0, 50.0, 3, 13);
    /* A cheap step needs one core. */
    expect_split(16, 1, true, 20.0, 80.0, 50.0, 1, 15);
    /* The target needs more than half: decode gets it (at most n - 1). */
    expect_split(16, 1, true, 600.0, 80.0, 50.0, 12, 4);
    /* Two prefill workers share the rest. */
    expect_split(16, 2, true, 120.0, 80.0, 50.0, 3, 6);
    /* 2 cores: one each. */
    expect_split(2, 1, true, 20.0, 80.0, 50.0, 1, 1);
}

/* A missed target with the cost unknown or beyond any split: an even split, nobody starves. */
static void test_a_missed_target_without_a_usable_estimate_splits_evenly(void **state) {
    (void)state;
    expect_split(16, 1, true, 0.0, 80.0, 50.0, 8, 8);
    expect_split(16, 1, true, 5000.0, 80.0, 50.0, 8, 8);
    expect_split(1, 1, true, 30.0, 80.0, 50.0, 1, 1);
    /* More prefill workers than free cores: each still gets one (oversubscribed). */
    expect_split(4, 3, true, 0.0, 80.0, 50.0, 2, 1);
}

static void test_step_cost_is_core_milliseconds(void **state) {
    (void)state;
    /* First sample taken as is: 15 ms on 2 threads = 30 core-ms. */
    double w = sch_team_work_update(0.0, 15.0, 2, 0.2);
    assert_true(w > 29.999 && w < 30.001);
    /* Then an EWMA: 40 core-ms weighs 0.2. */
    w = sch_team_work_update(w, 40.0, 1, 0.2);
    assert_true(w > 31.999 && w < 32.001);
}

static void test_cpu_count_follows_the_affinity_mask(void **state) {
    (void)state;
    cpu_set_t set;
    CPU_ZERO(&set);
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    assert_int_equal(sch_cpu_count(), CPU_COUNT(&set));
    assert_true(sch_cpu_count() >= 1 && sch_cpu_count() <= sysconf(_SC_NPROCESSORS_ONLN));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_side_alone_gets_every_core),
        cmocka_unit_test(test_both_busy_share_every_core_while_decode_meets_the_target),
        cmocka_unit_test(test_a_missed_target_splits_the_cores),
        cmocka_unit_test(test_a_missed_target_without_a_usable_estimate_splits_evenly),
        cmocka_unit_test(test_step_cost_is_core_milliseconds),
        cmocka_unit_test(test_cpu_count_follows_the_affinity_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
