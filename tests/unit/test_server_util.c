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
#include "server/settings.h"
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

/* Issue 17's families: the scheduler's prefix-cache counters and refine gauges rendered as
 * they are, the refine outcomes and latency counted by the server. */
static void test_metrics_prefix_cache_and_refine_families(void **state) {
    (void)state;
    struct srv_metrics m;
    srv_metrics_init(&m, "tiny", false);
    m.refine[SCH_REFINE_SWAPPED] = 2;
    m.refine[SCH_REFINE_CANCELLED] = 1;
    srv_hist_observe(&m.refine_latency, 0.03);
    srv_hist_observe(&m.refine_latency, 0.3);
    struct srv_gauges g = {.has_aux = 1};
    g.sch.prefix_queries[0] = 100;
    g.sch.prefix_hits[0] = 64;
    g.sch.prefix_queries[1] = 7;
    g.sch.prefix_hits[1] = 3;
    g.sch.base_blocks_cached = 12;
    g.sch.aux_blocks_cached = 5;
    g.sch.refine_queued = 2;
    g.sch.refine_running = 1;
    struct srv_buf o = {0};
    assert_int_equal(srv_metrics_render(&m, &g, &o), KC_OK);
    static const char *const want[] = {
        "# TYPE kvcast:prefix_cache_queries_total counter\n",
        "kvcast:prefix_cache_queries_total{model_name=\"tiny\",pool=\"base\"} 100\n",
        "kvcast:prefix_cache_hits_total{model_name=\"tiny\",pool=\"base\"} 64\n",
        "kvcast:prefix_cache_queries_total{model_name=\"tiny\",pool=\"aux\"} 7\n",
        "kvcast:prefix_cache_hits_total{model_name=\"tiny\",pool=\"aux\"} 3\n",
        "kvcast:kv_cache_cached_blocks{model_name=\"tiny\",pool=\"base\"} 12\n",
        "kvcast:kv_cache_cached_blocks{model_name=\"tiny\",pool=\"aux\"} 5\n",
        "kvcast:kv_refine_jobs{model_name=\"tiny\",state=\"queued\"} 2\n",
        "kvcast:kv_refine_jobs{model_name=\"tiny\",state=\"running\"} 1\n",
        "kvcast:kv_refine_total{model_name=\"tiny\",result=\"swapped\"} 2\n",
        "kvcast:kv_refine_total{model_name=\"tiny\",result=\"skipped\"} 0\n",
        "kvcast:kv_refine_total{model_name=\"tiny\",result=\"cancelled\"} 1\n",
        "kvcast:kv_refine_total{model_name=\"tiny\",result=\"failed\"} 0\n",
        "# TYPE kvcast:kv_refine_seconds histogram\n",
        "kvcast:kv_refine_seconds_bucket{model_name=\"tiny\",le=\"0.04\"} 1\n",
        "kvcast:kv_refine_seconds_count{model_name=\"tiny\"} 2\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(o.p, want[i]) == NULL) {
            fail_msg("missing: %s", want[i]);
        }
    }
    assert_null(strstr(o.p, "result=\"none\""));
    srv_buf_free(&o);
}

/* settings -> sch_config and limits: each field from its own setting (distinct values, so a
 * swapped pair fails), and max_context resolved against the model in one place. */
static void test_sch_config_is_built_from_every_setting(void **state) {
    (void)state;
    struct cfg_settings c;
    cfg_settings_default(&c);
    c.prefill_threads = 3;
    c.decode_threads = 5;
    c.pin_cpus = true;
    c.tpot_slo_ms = 7.5;
    c.base_kv_mib = 11;
    c.aux_kv_mib = 13;
    c.block_size = 17;
    snprintf(c.kv_dtype, sizeof(c.kv_dtype), "bf16");
    c.max_queue = 19;
    c.max_running = 23;
    c.prefill_chunk = 29;
    c.max_context = 31;
    c.ttft_slo_ms = 37.5;
    c.predict_min_prompt = 41;
    c.prefill_workers = 43;
    c.shed_hopeless = false;
    c.enable_prefix_caching = false;
    c.refine = false;
    c.debug_step_delay_ms = 47;
    struct sch_config sc = srv_sch_config(&c, 1000);
    assert_int_equal(sc.prefill_threads, 3);
    assert_int_equal(sc.decode_threads, 5);
    assert_true(sc.pin_cpus);
    assert_true(sc.tpot_slo_ms == 7.5);
    assert_int_equal(sc.base_kv_bytes, (size_t)11 << 20);
    assert_int_equal(sc.aux_kv_bytes, (size_t)13 << 20);
    assert_int_equal(sc.block_size, 17);
    assert_int_equal(sc.kv_dtype, ENG_DTYPE_BF16);
    assert_int_equal(sc.max_queue, 19);
    assert_int_equal(sc.max_running, 23);
    assert_int_equal(sc.prefill_chunk, 29);
    assert_int_equal(sc.max_context, 31);
    assert_true(sc.ttft_slo_ms == 37.5);
    assert_int_equal(sc.predict_min_prompt, 41);
    assert_int_equal(sc.prefill_workers, 43);
    assert_false(sc.shed_hopeless);
    assert_false(sc.prefix_caching);
    assert_false(sc.refine);
    assert_int_equal(sc.debug_step_delay_ms, 47);
    /* The defaults turn both issue-17 features on. */
    struct cfg_settings d;
    cfg_settings_default(&d);
    sc = srv_sch_config(&d, 1000);
    assert_true(sc.prefix_caching);
    assert_true(sc.refine);
    assert_true(sc.shed_hopeless);
    assert_int_equal(sc.kv_dtype, ENG_DTYPE_F32); /* --kv-dtype defaults to f32 */
    /* max_context: 0 and anything past the model mean the model's positions. */
    assert_int_equal(sc.max_context, 1000);
    c.max_context = 0;
    assert_int_equal(srv_max_context(&c, 512), 512);
    c.max_context = 4096;
    assert_int_equal(srv_max_context(&c, 512), 512);
    c.max_context = 100;
    assert_int_equal(srv_max_context(&c, 512), 100);
    /* The limits share that resolution and take --prefill-mode as the default mode. */
    snprintf(c.prefill_mode, sizeof(c.prefill_mode), "predict");
    c.max_choices = 3;
    c.strict_fields = true;
    struct srv_limits lim = srv_limits_of(&c, "tiny", 4096, 512);
    assert_int_equal(lim.max_context, 100);
    assert_int_equal(lim.vocab_size, 4096);
    assert_int_equal(lim.max_choices, 3);
    assert_true(lim.strict);
    assert_int_equal(lim.default_mode, SCH_MODE_PREDICT);
    assert_string_equal(lim.model_id, "tiny");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sch_config_is_built_from_every_setting),
        cmocka_unit_test(test_metrics_prefix_cache_and_refine_families),
        cmocka_unit_test(test_stop_string_split_across_tokens_is_cut_and_held_back),
        cmocka_unit_test(test_near_miss_is_released_and_flushed),
        cmocka_unit_test(test_secret_compare),
        cmocka_unit_test(test_buf_append_printf_consume),
        cmocka_unit_test(test_metrics_exposition_has_vllm_names),
        cmocka_unit_test(test_metrics_prometheus_names_have_no_colon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
