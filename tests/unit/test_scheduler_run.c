/*
 * Tests of the running scheduler on a real (tiny) model, tests/golden/llama_gqa, with f32
 * weights for both step shapes so that greedy output is exactly reproducible: outputs equal
 * direct eng_forward greedy decoding, batching does not change greedy output, seeded
 * sampling is reproducible, admission/overload/never-fits, cancellation at every stage, FIFO
 * admission, drain and destroy with requests in flight, and KV Prediction with aux = base and
 * an identity predictor. Every test checks that each request got exactly one terminal event
 * and that every KV block came back. Waits are bounded: a stuck scheduler fails the test.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/kc.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "sched_harness.h"
#include "test_models.h"

/* ---- tests ---- */

static void test_request_runs_to_length_and_matches_direct_greedy(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[40];
    make_prompt(prompt, 40, 1);
    struct sch_request_params p = greedy_params(prompt, 40, 24);
    p.n_logprobs = 3;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    int32_t want[24];
    direct_greedy(prompt, 40, 24, want);
    struct rec *r = &h.recs[0];
    assert_int_equal(r->term, SCH_EV_DONE);
    assert_int_equal(r->finish, SCH_FINISH_LENGTH);
    assert_int_equal(r->n_tokens, 24);
    for (int i = 0; i < 24; i++) {
        if (r->tokens[i] != want[i]) {
            fail_msg("token %d: scheduler %d, direct %d", i, r->tokens[i], want[i]);
        }
        assert_true(r->logprobs[i] <= 0.0f);
        assert_int_equal(r->n_top[i], 3);
    }
    assert_int_equal(r->timings.mode, SCH_MODE_FULL);
    assert_true(r->timings.ttft_ms > 0.0 && r->timings.ttft_ms >= r->timings.queue_ms);
    check_clean(&h, 1);
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_true(st.prefill_ms_per_token_full > 0.0);
    harness_stop(&h);
}

static void test_eight_concurrent_requests_complete_and_free_every_block(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(96);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompts[8][48];
    for (int i = 0; i < 8; i++) {
        const int n = 5 + i * 6;
        make_prompt(prompts[i], n, i);
        struct sch_request_params p = greedy_params(prompts[i], n, 10 + i * 5);
        p.sampling.temperature = i % 2 == 0 ? 0.0f : 0.9f;
        p.sampling.top_p = 0.95f;
        p.sampling.seed = (uint64_t)(100 + i);
        p.n_logprobs = i % 3 == 0 ? 2 : -1;
        submit_ok(&h, &p, i);
    }
    wait_terminal(&h, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(h.recs[i].term, SCH_EV_DONE);
        assert_int_equal(h.recs[i].finish, SCH_FINISH_LENGTH);
        assert_int_equal(h.recs[i].n_tokens, 10 + i * 5);
    }
    check_clean(&h, 8);
    sch__drain(h.s, 1000);
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_int_equal(st.queued + st.prefilling + st.running, 0);
    harness_stop(&h);
}

/* The same request alone and batched with 7 others gives the same first 16 greedy tokens,
 * and a seeded sampled request repeats itself exactly. */
static void test_batched_output_equals_alone_and_seeded_sampling_repeats(void **state) {
    (void)state;
    int32_t prompt[30], other[8][20];
    make_prompt(prompt, 30, 42);
    struct sch_request_params greedy = greedy_params(prompt, 30, 16);
    struct sch_request_params sampled = greedy_params(prompt, 30, 16);
    sampled.sampling.temperature = 0.8f;
    sampled.sampling.top_k = 20;
    sampled.sampling.seed = 7;
    int32_t alone[2][16];
    for (int round = 0; round < 2; round++) {
        struct harness h;
        struct sch_config c = test_config(128);
        harness_start(&h, &c, NULL, NULL);
        if (round == 0) {
            submit_ok(&h, &greedy, 0);
            wait_terminal(&h, 1);
            submit_ok(&h, &sampled, 1);
            wait_terminal(&h, 2);
            memcpy(alone[0], h.recs[0].tokens, sizeof(alone[0]));
            memcpy(alone[1], h.recs[1].tokens, sizeof(alone[1]));
            check_clean(&h, 2);
        } else {
            /* Hold decoding until everything is queued so they all run in one batch. */
            h.gate_decode = true;
            submit_ok(&h, &greedy, 0);
            wait_paused(&h, 1);
            submit_ok(&h, &sampled, 1);
            for (int i = 0; i < 6; i++) {
                make_prompt(other[i], 20, 100 + i);
                struct sch_request_params p = greedy_params(other[i], 20, 20);
                p.sampling.temperature = 1.0f;
                p.sampling.seed = (uint64_t)i;
                submit_ok(&h, &p, 2 + i);
            }
            wait_running(&h, 8);
            open_gates(&h);
            wait_terminal(&h, 8);
            check_clean(&h, 8);
            for (int t = 0; t < 16; t++) {
                if (h.recs[0].tokens[t] != alone[0][t]) {
                    fail_msg("greedy token %d: batched %d, alone %d", t, h.recs[0].tokens[t],
                             alone[0][t]);
                }
                if (h.recs[1].tokens[t] != alone[1][t]) {
                    fail_msg("sampled token %d: batched %d, alone %d", t, h.recs[1].tokens[t],
                             alone[1][t]);
                }
            }
        }
        harness_stop(&h);
    }
}

static void test_full_wait_queue_answers_busy(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(128);
    c.max_queue = 3;
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[20];
    make_prompt(prompt, 20, 3);
    struct sch_request_params p = greedy_params(prompt, 20, 4);
    h.gate_prefill = true; /* the prefill worker stops after its first chunk */
    submit_ok(&h, &p, 0);
    wait_paused(&h, 1);
    for (int i = 1; i <= 3; i++) {
        submit_ok(&h, &p, i);
    }
    struct kc_error err = {0};
    uint64_t id = 0;
    assert_int_equal(sch_submit(h.s, &p, &h.recs[4], &id, &err), KC_EBUSY);
    assert_non_null(strstr(err.msg, "queue is full"));
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.prefilling, 1);
    open_gates(&h);
    wait_terminal(&h, 4);
    harness_finish(&h, 4);
}

static void test_requests_that_can_never_fit_are_refused_at_submit(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(4); /* 4 blocks of 8 = 32 positions */
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[120];
    make_prompt(prompt, 120, 5);
    struct kc_error err = {0};
    uint64_t id = 0;
    /* Beyond the model's 128 positions. */
    struct sch_request_params p = greedy_params(prompt, 120, 20);
    assert_int_equal(sch_submit(h.s, &p, &h.recs[0], &id, &err), KC_ECONTEXT);
    assert_non_null(strstr(err.msg, "maximum context length is 128"));
    /* Within the model, beyond the whole KV pool. */
    p = greedy_params(prompt, 30, 10);
    assert_int_equal(sch_submit(h.s, &p, &h.recs[0], &id, &err), KC_ECONTEXT);
    assert_non_null(strstr(err.msg, "KV blocks"));
    /* Exactly the pool: 24 + 9 - 1 = 32 positions. */
    p = greedy_params(prompt, 24, 9);
    submit_ok(&h, &p, 0);
    /* Bad parameters. */
    p = greedy_params(prompt, 10, 0);
    assert_int_equal(sch_submit(h.s, &p, &h.recs[1], &id, &err), KC_EINVAL);
    p = greedy_params(prompt, 0, 4);
    assert_int_equal(sch_submit(h.s, &p, &h.recs[1], &id, &err), KC_EINVAL);
    p = greedy_params(prompt, 10, 4);
    p.n_logprobs = SCH_MAX_LOGPROBS + 1;
    assert_int_equal(sch_submit(h.s, &p, &h.recs[1], &id, &err), KC_ERANGE);
    p = greedy_params(prompt, 10, 4);
    p.sampling.top_p = 0.0f;
    assert_int_equal(sch_submit(h.s, &p, &h.recs[1], &id, &err), KC_ERANGE);
    int32_t bad[3] = {1, 128, 2};
    p = greedy_params(bad, 3, 4);
    assert_int_equal(sch_submit(h.s, &p, &h.recs[1], &id, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "position 1"));
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].n_tokens, 9);
    harness_finish(&h, 1);
}

static void test_cancel_while_queued_ends_without_the_prefill_worker(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[20];
    make_prompt(prompt, 20, 6);
    struct sch_request_params p = greedy_params(prompt, 20, 8);
    h.gate_prefill = true;
    submit_ok(&h, &p, 0);
    wait_paused(&h, 1); /* the only prefill worker is busy with request 0 */
    const uint64_t id1 = submit_ok(&h, &p, 1);
    sch_cancel(h.s, id1, SCH_FINISH_ABORT);
    sch_cancel(h.s, id1, SCH_FINISH_ABORT); /* idempotent */
    wait_terminal(&h, 1);                   /* ended while the prefill worker is still paused */
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.recs[1].n_terminal, 1);
    assert_int_equal(h.recs[1].term, SCH_EV_DONE);
    assert_int_equal(h.recs[1].finish, SCH_FINISH_ABORT);
    assert_int_equal(h.recs[1].n_tokens, 0);
    pthread_mutex_unlock(&h.mu);
    open_gates(&h);
    wait_terminal(&h, 2);
    assert_int_equal(h.recs[0].finish, SCH_FINISH_LENGTH);
    sch_cancel(h.s, id1, SCH_FINISH_ABORT); /* a dead id is ignored */
    harness_finish(&h, 2);
}

static void test_cancel_during_prefill_stops_at_the_next_chunk(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    c.prefill_chunk = 8;
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[64];
    make_prompt(prompt, 64, 7);
    struct sch_request_params p = greedy_params(prompt, 64, 8);
    h.cancel_in_prefill_id = 1; /* the first id the scheduler hands out */
    assert_int_equal(submit_ok(&h, &p, 0), 1);
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].term, SCH_EV_DONE);
    assert_int_equal(h.recs[0].finish, SCH_FINISH_ABORT);
    assert_int_equal(h.recs[0].n_tokens, 0);
    assert_true(h.recs[0].timings.prefill_ms >= 0.0);
    harness_finish(&h, 1);
}

static void test_cancel_during_decode_ends_with_abort_and_frees_blocks(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[16];
    make_prompt(prompt, 16, 8);
    struct sch_request_params p = greedy_params(prompt, 16, 60);
    h.recs[0].cancel_at_token = 3;
    h.recs[1].cancel_at_token = 1; /* right at the first token, before the hand-off */
    submit_ok(&h, &p, 0);
    submit_ok(&h, &p, 1);
    submit_ok(&h, &p, 2);
    wait_terminal(&h, 3);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(h.recs[i].term, SCH_EV_DONE);
        assert_int_equal(h.recs[i].finish, SCH_FINISH_ABORT);
        /* Cancellation is seen before the next step: no more than one token after it. */
        assert_true(h.recs[i].n_tokens >= h.recs[i].cancel_at_token &&
                    h.recs[i].n_tokens <= h.recs[i].cancel_at_token + 1);
    }
    assert_int_equal(h.recs[2].finish, SCH_FINISH_LENGTH);
    assert_int_equal(h.recs[2].n_tokens, 60);
    harness_finish(&h, 3);
}

/* A long prompt at the head of the queue that waits for blocks is not overtaken by a short
 * one that would fit. */
static void test_admission_is_fifo_so_long_prompts_do_not_starve(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(12); /* 96 positions */
    harness_start(&h, &c, NULL, NULL);
    int32_t a[8], b[60], cc[8];
    make_prompt(a, 8, 9);
    make_prompt(b, 60, 10);
    make_prompt(cc, 8, 11);
    struct sch_request_params pa = greedy_params(a, 8, 40);  /* 47 positions: 6 blocks */
    struct sch_request_params pb = greedy_params(b, 60, 10); /* 69 positions: 9 blocks */
    struct sch_request_params pc = greedy_params(cc, 8, 8);  /* 15 positions: 2 blocks */
    h.gate_decode = true;
    submit_ok(&h, &pa, 0);
    wait_paused(&h, 1); /* A holds 6 blocks and cannot finish */
    submit_ok(&h, &pb, 1);
    submit_ok(&h, &pc, 2);
    sleep_ms(50);
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_int_equal(st.queued, 2); /* B waits for blocks; C waits behind B */
    assert_int_equal(st.base_blocks_free, 6);
    open_gates(&h);
    wait_terminal(&h, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h.recs[i].finish, SCH_FINISH_LENGTH);
    }
    assert_true(h.recs[1].t_first_token < h.recs[2].t_first_token);
    harness_finish(&h, 3);
}

static void test_predict_without_aux_falls_back_to_full(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[12];
    make_prompt(prompt, 12, 12);
    struct sch_request_params p = greedy_params(prompt, 12, 3);
    p.mode = SCH_MODE_PREDICT;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].timings.mode, SCH_MODE_FULL);
    harness_finish(&h, 1);
}

static void test_eos_and_single_token_requests_finish_at_prefill(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[10];
    make_prompt(prompt, 10, 13);
    struct sch_request_params p = greedy_params(prompt, 10, 1);
    submit_ok(&h, &p, 0);
    /* Greedy without ignore_eos stops at eos (id 2) if the model ever picks it; either way the
     * request ends with STOP or LENGTH and its tokens match the count. */
    p = greedy_params(prompt, 10, 30);
    p.ignore_eos = false;
    submit_ok(&h, &p, 1);
    wait_terminal(&h, 2);
    assert_int_equal(h.recs[0].finish, SCH_FINISH_LENGTH);
    assert_int_equal(h.recs[0].n_tokens, 1);
    const struct rec *r = &h.recs[1];
    if (r->finish == SCH_FINISH_STOP) {
        assert_int_equal(r->tokens[r->n_tokens - 1], 2);
    } else {
        assert_int_equal(r->finish, SCH_FINISH_LENGTH);
        assert_int_equal(r->n_tokens, 30);
    }
    harness_finish(&h, 2);
}

static void test_drain_finishes_in_flight_requests_and_refuses_new_ones(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(128);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[20];
    make_prompt(prompt, 20, 14);
    struct sch_request_params p = greedy_params(prompt, 20, 30);
    for (int i = 0; i < 6; i++) {
        submit_ok(&h, &p, i);
    }
    sch__drain(h.s, WAIT_MS);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(h.recs[i].finish, SCH_FINISH_LENGTH); /* delivered before drain returned */
    }
    struct kc_error err = {0};
    uint64_t id = 0;
    assert_int_equal(sch_submit(h.s, &p, &h.recs[6], &id, &err), KC_EBUSY);
    harness_finish(&h, 6);
}

static void test_drain_timeout_cancels_the_rest(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(128);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[20];
    make_prompt(prompt, 20, 15);
    struct sch_request_params p = greedy_params(prompt, 20, 30);
    h.gate_decode = true;
    h.decode_step_sleep_ms = 5; /* 29 steps take >= 145 ms, however fast the machine */
    submit_ok(&h, &p, 0);
    wait_paused(&h, 1);
    for (int i = 1; i < 5; i++) {
        submit_ok(&h, &p, i);
    }
    /* The decode worker resumes, but the requests need 29 more steps each: a drain with no
     * time to spare cancels them. */
    open_gates(&h);
    sch__drain(h.s, 0);
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.n_terminal, 5);
    int aborted = 0;
    for (int i = 0; i < 5; i++) {
        aborted += h.recs[i].finish == SCH_FINISH_ABORT;
    }
    pthread_mutex_unlock(&h.mu);
    assert_true(aborted >= 1);
    harness_finish(&h, 5);
}

static void test_destroy_with_requests_in_every_stage_ends_each_once(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(128);
    c.prefill_chunk = 8;
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[64];
    make_prompt(prompt, 64, 16);
    struct sch_request_params p = greedy_params(prompt, 16, 60);
    for (int i = 0; i < 3; i++) { /* decoding */
        submit_ok(&h, &p, i);
    }
    p = greedy_params(prompt, 64, 20);
    h.gate_prefill = true;
    submit_ok(&h, &p, 3); /* prefilling, paused */
    submit_ok(&h, &p, 4); /* queued */
    submit_ok(&h, &p, 5);
    wait_paused(&h, 1);
    open_gates(&h); /* destroy proceeds whatever the stage reached */
    sch_free(h.s);
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.n_terminal, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(h.recs[i].n_terminal, 1);
        assert_false(h.recs[i].event_after_terminal);
        assert_int_equal(h.recs[i].term, SCH_EV_DONE);
    }
    pthread_mutex_unlock(&h.mu);
    harness_free(&h);
}

/* KV Prediction with aux = base and identity maps predicts the base's own cache: greedy
 * output equals the full prefill's token for token, and the mode is reported. */
static void test_identity_predictor_matches_full_and_reports_predict(void **state) {
    (void)state;
    struct eng_kvp *pred = test_identity_predictor(eng_model_config_of(g_model));

    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, g_model, pred);
    int32_t prompt[40];
    make_prompt(prompt, 40, 17);
    struct sch_request_params p = greedy_params(prompt, 40, 16);
    p.mode = SCH_MODE_FULL;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    p.mode = SCH_MODE_PREDICT;
    submit_ok(&h, &p, 1);
    wait_terminal(&h, 2);
    assert_int_equal(h.recs[0].timings.mode, SCH_MODE_FULL);
    assert_int_equal(h.recs[1].timings.mode, SCH_MODE_PREDICT);
    assert_true(h.recs[1].timings.aux_ms > 0.0);
    assert_int_equal(h.recs[1].n_tokens, 16);
    for (int t = 0; t < 16; t++) {
        if (h.recs[0].tokens[t] != h.recs[1].tokens[t]) {
            fail_msg("token %d: full %d, predict %d", t, h.recs[0].tokens[t], h.recs[1].tokens[t]);
        }
    }
    /* auto: long prompts predict, short ones run full. */
    c.predict_min_prompt = 30;
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_true(st.aux_blocks_total > 0);
    harness_finish(&h, 2);

    harness_start(&h, &c, g_model, pred);
    p = greedy_params(prompt, 40, 4); /* >= 30: predict */
    submit_ok(&h, &p, 0);
    p = greedy_params(prompt, 10, 4); /* short, no cost measured yet or fits 1 s: full */
    submit_ok(&h, &p, 1);
    wait_terminal(&h, 2);
    assert_int_equal(h.recs[0].timings.mode, SCH_MODE_PREDICT);
    assert_int_equal(h.recs[1].timings.mode, SCH_MODE_FULL);
    sch_stats_get(h.s, &st);
    uint64_t auto_n[2] = {0, 0}; /* auto decisions by [mode == predict], summed over reasons */
    for (int why = 0; why < SCH_STATS_REASONS; why++) {
        auto_n[0] += st.auto_decisions[0][why];
        auto_n[1] += st.auto_decisions[1][why];
    }
    assert_int_equal(auto_n[1], 1);
    assert_int_equal(auto_n[0], 1);
    harness_finish(&h, 2);
    eng_kvp_free(pred);
}

static void test_bad_config_is_refused_with_a_message(void **state) {
    (void)state;
    struct harness h;
    harness_init(&h);
    struct kc_error err = {0};
    struct sch *s = NULL;
    struct sch_config c = test_config(64);
    c.max_context = 4096; /* the model has 128 positions */
    assert_int_equal(sch_create(&c, g_model, NULL, NULL, on_event, &h, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "max_context"));
    c = test_config(64);
    c.base_kv_bytes = 100; /* less than one block */
    assert_int_equal(sch_create(&c, g_model, NULL, NULL, on_event, &h, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "base_kv_bytes"));
    c = test_config(64);
    c.max_running = 0;
    assert_int_equal(sch_create(&c, g_model, NULL, NULL, on_event, &h, &s, &err), KC_EINVAL);
    assert_null(s);
    harness_free(&h);
}

static void test_cancel_with_stop_reports_stop(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(64);
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[16];
    make_prompt(prompt, 16, 18);
    struct sch_request_params p = greedy_params(prompt, 16, 60);
    h.gate_decode = true;
    const uint64_t id = submit_ok(&h, &p, 0);
    wait_paused(&h, 1);
    sch_cancel(h.s, id, SCH_FINISH_STOP); /* e.g. the server saw a stop string */
    open_gates(&h);
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].finish, SCH_FINISH_STOP);
    assert_int_equal(h.recs[0].n_tokens, 1);
    harness_finish(&h, 1);
}

/* Pinning (1 prefill core + 1 decode core) and two prefill workers still serve correctly;
 * where the cores do not exist the workers run unpinned with a warning. */
static void test_pinned_workers_and_two_prefill_workers_serve_requests(void **state) {
    (void)state;
    struct harness h;
    struct sch_config c = test_config(96);
    c.pin_cpus = true;
    c.prefill_workers = 2;
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[24];
    make_prompt(prompt, 24, 19);
    struct sch_request_params p = greedy_params(prompt, 24, 12);
    for (int i = 0; i < 6; i++) {
        submit_ok(&h, &p, i);
    }
    wait_terminal(&h, 6);
    for (int i = 1; i < 6; i++) {
        assert_memory_equal(h.recs[i].tokens, h.recs[0].tokens, 12 * sizeof(int32_t));
    }
    harness_finish(&h, 6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_runs_to_length_and_matches_direct_greedy),
        cmocka_unit_test(test_eight_concurrent_requests_complete_and_free_every_block),
        cmocka_unit_test(test_batched_output_equals_alone_and_seeded_sampling_repeats),
        cmocka_unit_test(test_full_wait_queue_answers_busy),
        cmocka_unit_test(test_requests_that_can_never_fit_are_refused_at_submit),
        cmocka_unit_test(test_cancel_while_queued_ends_without_the_prefill_worker),
        cmocka_unit_test(test_cancel_during_prefill_stops_at_the_next_chunk),
        cmocka_unit_test(test_cancel_during_decode_ends_with_abort_and_frees_blocks),
        cmocka_unit_test(test_admission_is_fifo_so_long_prompts_do_not_starve),
        cmocka_unit_test(test_predict_without_aux_falls_back_to_full),
        cmocka_unit_test(test_eos_and_single_token_requests_finish_at_prefill),
        cmocka_unit_test(test_drain_finishes_in_flight_requests_and_refuses_new_ones),
        cmocka_unit_test(test_drain_timeout_cancels_the_rest),
        cmocka_unit_test(test_destroy_with_requests_in_every_stage_ends_each_once),
        cmocka_unit_test(test_identity_predictor_matches_full_and_reports_predict),
        cmocka_unit_test(test_bad_config_is_refused_with_a_message),
        cmocka_unit_test(test_cancel_with_stop_reports_stop),
        cmocka_unit_test(test_pinned_workers_and_two_prefill_workers_serve_requests),
    };
    return cmocka_run_group_tests(tests, harness_group_setup, harness_group_teardown);
}
