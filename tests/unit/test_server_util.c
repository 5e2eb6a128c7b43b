/* Unit tests for server/util (stop strings on streamed text, constant-time key compare,
 * byte buffer) and server/metrics (Prometheus exposition). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/metrics.h"
#include "server/util.h"

/* Feeds pieces one by one; returns the emitted text (static) and the matched index. */
static const char *run_stop(char *const *stop, int n_stop, bool include, const char *const *pieces,
                            int n_pieces, int *matched, size_t *max_held) {
    static char out[256];
    struct srv_stop s;
    srv_stop_init(&s, stop, n_stop, include);
    struct srv_buf emit = {0};
    *matched = -1;
    *max_held = 0;
    for (int i = 0; i < n_pieces && *matched < 0; i++) {
        *matched = srv_stop_feed(&s, pieces[i], strlen(pieces[i]), &emit);
        if (s.held.len > *max_held) {
            *max_held = s.held.len;
        }
    }
    if (*matched < 0) {
        srv_stop_flush(&s, &emit);
    }
    snprintf(out, sizeof(out), "%s", emit.p ? emit.p : "");
    srv_buf_free(&emit);
    srv_stop_free(&s);
    return out;
}

static void test_stop_string_split_across_tokens_is_cut_and_held_back(void **state) {
    (void)state;
    char *stop[] = {"END", "\n\n"};
    const char *pieces[] = {"hello E", "N", "D world"};
    int m;
    size_t held;
    assert_string_equal(run_stop(stop, 2, false, pieces, 3, &m, &held), "hello ");
    assert_int_equal(m, 0);
    assert_int_equal(held, 2); /* "EN" was held, never emitted */
    assert_string_equal(run_stop(stop, 2, true, pieces, 3, &m, &held), "hello END");
    const char *p2[] = {"a\n", "b\n", "\nc"};
    assert_string_equal(run_stop(stop, 2, false, p2, 3, &m, &held), "a\nb");
    assert_int_equal(m, 1);
}

static void test_near_miss_is_released_and_flushed(void **state) {
    (void)state;
    char *stop[] = {"END"};
    const char *pieces[] = {"E", "N", "d", "!", "EN"};
    int m;
    size_t held;
    assert_string_equal(run_stop(stop, 1, false, pieces, 5, &m, &held), "ENd!EN");
    assert_int_equal(m, -1);
    /* Earliest match wins over list order. */
    char *stop2[] = {"cd", "ab"};
    const char *p3[] = {"xabcd"};
    assert_string_equal(run_stop(stop2, 2, false, p3, 1, &m, &held), "x");
    assert_int_equal(m, 1);
    /* Multi-byte stop strings cut on character boundaries. */
    char *stop3[] = {"\xc3\xa9t\xc3\xa9"};
    const char *p4[] = {"l'\xc3\xa9", "t\xc3\xa9!"};
    assert_string_equal(run_stop(stop3, 1, false, p4, 2, &m, &held), "l'");
    /* No stop strings: everything passes straight through. */
    const char *p5[] = {"a", "b"};
    assert_string_equal(run_stop(NULL, 0, false, p5, 2, &m, &held), "ab");
    assert_int_equal(held, 0);
}

static void test_secret_compare(void **state) {
    (void)state;
    assert_true(srv_secret_equal("abc", 3, "abc", 3));
    assert_false(srv_secret_equal("abd", 3, "abc", 3));
    assert_false(srv_secret_equal("ab", 2, "abc", 3));
    assert_false(srv_secret_equal("abcd", 4, "abc", 3));
    assert_false(srv_secret_equal("", 0, "", 0)); /* an empty key never matches */
    char big[8192];
    memset(big, 'a', sizeof(big));
    assert_false(srv_secret_equal(big, sizeof(big), "abc", 3));
}

static void test_buf_append_printf_consume(void **state) {
    (void)state;
    struct srv_buf b = {0};
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(srv_buf_printf(&b, "%d,", i), KC_OK);
    }
    assert_int_equal(strncmp(b.p, "0,1,2,", 6), 0);
    srv_buf_consume(&b, 4);
    assert_int_equal(strncmp(b.p, "2,3,", 4), 0);
    char big[1000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(srv_buf_printf(&b, "%s", big), KC_OK);
    assert_int_equal(b.p[b.len - 1], 'x');
    srv_buf_free(&b);
}

static void test_metrics_exposition_has_vllm_names(void **state) {
    (void)state;
    struct srv_metrics m;
    srv_metrics_init(&m, "tiny", false);
    srv_hist_observe(&m.ttft, 0.003);
    srv_hist_observe(&m.ttft, 100.0);
    srv_hist_observe(&m.ttft, -1.0);
    m.success[SCH_FINISH_ABORT] = 2;
    m.prompt_tokens = 7;
    struct srv_gauges g = {.running = 1, .waiting = 2, .kv_base = 0.25, .kv_aux = 0, .has_aux = 1};
    struct srv_buf o = {0};
    assert_int_equal(srv_metrics_render(&m, &g, &o), KC_OK);
    static const char *const want[] = {
        "# TYPE kvcast:time_to_first_token_seconds histogram",
        "kvcast:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"0.001\"} 1",
        "kvcast:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"0.005\"} 2",
        "kvcast:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"+Inf\"} 3",
        "kvcast:time_to_first_token_seconds_count{model_name=\"tiny\"} 3",
        "kvcast:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"} 2",
        "kvcast:kv_cache_usage_perc{model_name=\"tiny\",pool=\"base\"} 0.25",
        "kvcast:kv_cache_usage_perc{model_name=\"tiny\",pool=\"aux\"} 0",
        "kvcast:num_requests_waiting{model_name=\"tiny\"} 2",
        "kvcast:prompt_tokens_total{model_name=\"tiny\"} 7",
        "kvcast:prefill_mode_total{model_name=\"tiny\",mode=\"predict\"} 0",
        "# TYPE kvcast:inter_token_latency_seconds histogram",
        "# TYPE kvcast:e2e_request_latency_seconds histogram",
        "# TYPE kvcast:request_queue_time_seconds histogram",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(o.p, want[i]) == NULL) {
            fail_msg("exposition lacks '%s'", want[i]);
        }
    }
    srv_buf_free(&o);
}

/* The promtool-clean spelling: the same families, no ':' anywhere in the exposition. */
static void test_metrics_prometheus_names_have_no_colon(void **state) {
    (void)state;
    struct srv_metrics m;
    srv_metrics_init(&m, "tiny", true);
    srv_hist_observe(&m.itl, 0.02);
    struct srv_gauges g = {.running = 3, .has_aux = 0};
    struct srv_buf o = {0};
    assert_int_equal(srv_metrics_render(&m, &g, &o), KC_OK);
    assert_null(strchr(o.p, ':'));
    assert_non_null(strstr(o.p, "kvcast_num_requests_running{model_name=\"tiny\"} 3\n"));
    assert_non_null(strstr(o.p, "# TYPE kvcast_inter_token_latency_seconds histogram\n"));
    assert_non_null(strstr(
        o.p, "kvcast_inter_token_latency_seconds_bucket{model_name=\"tiny\",le=\"0.025\"} 1"));
    assert_null(strstr(o.p, "pool=\"aux\""));
    srv_buf_free(&o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_string_split_across_tokens_is_cut_and_held_back),
        cmocka_unit_test(test_near_miss_is_released_and_flushed),
        cmocka_unit_test(test_secret_compare),
        cmocka_unit_test(test_buf_append_printf_consume),
        cmocka_unit_test(test_metrics_exposition_has_vllm_names),
        cmocka_unit_test(test_metrics_prometheus_names_have_no_colon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
