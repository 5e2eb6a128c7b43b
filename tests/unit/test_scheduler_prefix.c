/*
 * Tests of the prefix cache and of refinement in the running scheduler (issue 17), on the
 * tiny golden model with f32 weights for both step shapes (sched_harness.h):
 *  - exactness: a full-mode request that reuses a cached prefix produces the same tokens and
 *    logprobs (1e-6) as the same request on a scheduler without the cache, with prefill chunk
 *    boundaries on and off block boundaries;
 *  - predict mode reuses the exact base prefix and the aux prefix, and reports both;
 *  - refinement: with a deliberately bad (random) predictor, every token after the swap has
 *    the logprob full mode gives on the same token sequence (1e-5), the tokens before it do
 *    not;
 *  - a request cancelled while its refinement runs, and eviction under a small pool: no block
 *    leaked or freed twice (the pools' own accounting, checked at the end of every test).
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
#include "engine/kvp.h"
#include "engine/model.h"
#include "sched_harness.h"

/* Runs one greedy request of prompt on a fresh scheduler of config c and records it in *out
 * (a cold run: nothing cached). */
static void run_cold(const struct sch_config *c, const struct sch_request_params *p,
                     struct rec *out) {
    struct harness h;
    harness_start(&h, c, NULL, NULL);
    submit_ok(&h, p, 0);
    wait_terminal(&h, 1);
    *out = h.recs[0];
    harness_finish(&h, 1);
}

static void assert_same_output(const struct rec *a, const struct rec *b, float tol) {
    assert_int_equal(a->n_tokens, b->n_tokens);
    for (int t = 0; t < a->n_tokens && t < MAX_TOK; t++) {
        if (a->tokens[t] != b->tokens[t] || fabsf(a->logprobs[t] - b->logprobs[t]) > tol) {
            fail_msg("token %d: %d (logprob %.9g) vs %d (logprob %.9g)", t, a->tokens[t],
                     (double)a->logprobs[t], b->tokens[t], (double)b->logprobs[t]);
        }
    }
}

/* Full mode with a prefix hit equals full mode without one, for a prefill chunk that is a
 * multiple of the block size (16 / 8) and one that is not (12 / 8: chunk boundaries inside
 * blocks), and for a hit that covers all but the last prompt token and one that ends inside
 * the prompt. */
static void test_full_mode_with_a_prefix_hit_equals_full_mode_without(void **state) {
    (void)state;
    const int chunks[2] = {16, 12};
    for (int ci = 0; ci < 2; ci++) {
        struct sch_config c = test_config(64);
        c.prefill_chunk = chunks[ci];
        int32_t first[45], second[45];
        make_prompt(first, 45, 3);
        memcpy(second, first, sizeof(second));
        for (int i = 37; i < 45; i++) {
            second[i] = (int32_t)(5 + i); /* shares the first 37 tokens: 4 whole blocks */
        }
        struct sch_request_params p1 = greedy_params(first, 45, 12);
        struct sch_request_params p2 = greedy_params(second, 45, 12);
        p1.mode = p2.mode = SCH_MODE_FULL;
        p1.n_logprobs = p2.n_logprobs = 0;

        struct sch_config off = c;
        off.prefix_caching = false;
        struct rec cold1, cold2;
        run_cold(&off, &p1, &cold1);
        run_cold(&off, &p2, &cold2);
        assert_int_equal(cold1.timings.cached_tokens, 0);

        struct harness h;
        harness_start(&h, &c, NULL, NULL);
        submit_ok(&h, &p1, 0);
        wait_terminal(&h, 1);
        submit_ok(&h, &p1, 1); /* the same prompt: 5 blocks = 40 of its 44 first tokens */
        wait_terminal(&h, 2);
        submit_ok(&h, &p2, 2); /* a sibling: 4 blocks = 32 tokens */
        wait_terminal(&h, 3);
        assert_int_equal(h.recs[0].timings.cached_tokens, 0);
        assert_int_equal(h.recs[1].timings.cached_tokens, 40);
        assert_int_equal(h.recs[1].timings.base_cached_tokens, 40);
        assert_int_equal(h.recs[2].timings.cached_tokens, 32);
        assert_same_output(&h.recs[0], &cold1, 1e-6f);
        assert_same_output(&h.recs[1], &cold1, 1e-6f);
        assert_same_output(&h.recs[2], &cold2, 1e-6f);
        struct sch_stats st;
        sch_stats_get(h.s, &st);
        assert_int_equal(st.prefix_queries[0], 3 * 45);
        assert_int_equal(st.prefix_hits[0], 40 + 32);
        assert_true(st.base_blocks_cached > 0);
        harness_finish(&h, 3);
    }
}

/* Turning the cache off gives today's behaviour: nothing reused, nothing counted. */
static void test_prefix_caching_off_reuses_nothing(void **state) {
    (void)state;
    struct sch_config c = test_config(64);
    c.prefix_caching = false;
    struct harness h;
    harness_start(&h, &c, NULL, NULL);
    int32_t prompt[40];
    make_prompt(prompt, 40, 9);
    struct sch_request_params p = greedy_params(prompt, 40, 4);
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    submit_ok(&h, &p, 1);
    wait_terminal(&h, 2);
    assert_int_equal(h.recs[1].timings.cached_tokens, 0);
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_int_equal(st.prefix_queries[0], 0);
    assert_int_equal(st.base_blocks_cached, 0);
    harness_finish(&h, 2);
}

/* A random predictor (the golden model as its own aux): predicted KV far from exact. */
static struct eng_kvp *bad_predictor(void) {
    const struct eng_model_config *bc = eng_model_config_of(g_model);
    struct eng_kvp_shape shape = eng_kvp_shape_of_pair(bc, bc);
    struct eng_kvp *pred = NULL;
    struct kc_error err = {0};
    if (eng_kvp_create_random(&shape, NULL, 7, &pred, &err) != KC_OK) {
        fail_msg("predictor: %s", err.msg);
    }
    return pred;
}

/* The log-softmax at tokens[j] of full mode's logits for generated token j of prompt +
 * generated: a base prefill in chunks of `chunk` rows, then one token per step. */
static void full_mode_logprobs(const int32_t *prompt, int n, const int32_t *gen, int n_gen,
                               int chunk, double *out) {
    struct direct_run d;
    direct_open(&d, chunk, n + n_gen);
    const float *logits = d.logits;
    for (int j = 0; j < n_gen; j++) {
        direct_feed(&d, j == 0 ? prompt : &gen[j - 1], j == 0 ? n : 1);
        double mx = logits[0], sum = 0.0;
        for (int v = 1; v < d.c->vocab_size; v++) {
            mx = logits[v] > mx ? logits[v] : mx;
        }
        for (int v = 0; v < d.c->vocab_size; v++) {
            sum += exp((double)logits[v] - mx);
        }
        out[j] = (double)logits[gen[j]] - mx - log(sum);
    }
    direct_close(&d);
}

/* Refinement's invariant: once the exact KV is swapped in, every next-token distribution is
 * full mode's on the same token sequence (1e-5); before it, the bad predictor shows. */
static void test_refined_sequence_decodes_exactly_like_full_mode(void **state) {
    (void)state;
    struct eng_kvp *pred = bad_predictor();
    struct sch_config c = test_config(64);
    c.prefix_caching = false; /* the refinement's own exactness, nothing reused */
    struct harness h;
    harness_init(&h);
    h.decode_step_sleep_ms = 3; /* time for the refinement to finish mid-generation */
    start(&h, &c, g_model, pred);
    int32_t prompt[45];
    make_prompt(prompt, 45, 21);
    struct sch_request_params p = greedy_params(prompt, 45, 48);
    p.mode = SCH_MODE_PREDICT;
    p.refine = SCH_REFINE_ON;
    p.n_logprobs = 0;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    const struct rec *r = &h.recs[0];
    assert_int_equal(r->timings.mode, SCH_MODE_PREDICT);
    assert_int_equal(r->timings.refine_result, SCH_REFINE_SWAPPED);
    const int k = r->timings.refined_at_token;
    assert_true(k >= 1 && k < 48);
    assert_true(r->timings.refine_ms > 0.0);
    double want[48];
    full_mode_logprobs(prompt, 45, r->tokens, 48, c.prefill_chunk, want);
    for (int j = k; j < 48; j++) {
        if (fabs(want[j] - (double)r->logprobs[j]) > 1e-5) {
            fail_msg("token %d (refined at %d): logprob %.9g, full mode %.9g", j, k,
                     (double)r->logprobs[j], want[j]);
        }
    }
    assert_true(fabs(want[0] - (double)r->logprobs[0]) > 1e-3); /* the predictor is bad */
    harness_finish(&h, 1);

    /* refine off: never swapped, reported as none */
    harness_start(&h, &c, g_model, pred);
    p.refine = SCH_REFINE_OFF;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].timings.refine_result, SCH_REFINE_NONE);
    assert_int_equal(h.recs[0].timings.refined_at_token, -1);
    harness_finish(&h, 1);
    eng_kvp_free(pred);
}

/* Predict mode reuses the exact base prefix of an earlier full request and, the second time,
 * the aux prefix of an earlier predict request; the swap later publishes exact blocks. */
static void test_predict_reuses_the_exact_base_prefix_and_the_aux_prefix(void **state) {
    (void)state;
    struct eng_kvp *pred = bad_predictor();
    struct sch_config c = test_config(96);
    struct harness h;
    harness_start(&h, &c, g_model, pred);
    int32_t a[45], b[45];
    make_prompt(a, 45, 31);
    make_prompt(b, 45, 32);
    struct sch_request_params p = greedy_params(a, 45, 6);
    p.mode = SCH_MODE_FULL;
    submit_ok(&h, &p, 0);
    wait_terminal(&h, 1);
    p.mode = SCH_MODE_PREDICT;
    p.refine = SCH_REFINE_OFF;
    submit_ok(&h, &p, 1); /* exact base prefix of 40 tokens; aux runs over all 44 */
    wait_terminal(&h, 2);
    struct sch_request_params q = greedy_params(b, 45, 6);
    q.mode = SCH_MODE_PREDICT;
    q.refine = SCH_REFINE_OFF;
    submit_ok(&h, &q, 2); /* cold */
    wait_terminal(&h, 3);
    submit_ok(&h, &q, 3); /* aux prefix of 40 tokens, no exact base prefix */
    wait_terminal(&h, 4);
    assert_int_equal(h.recs[1].timings.mode, SCH_MODE_PREDICT);
    assert_int_equal(h.recs[1].timings.base_cached_tokens, 40);
    assert_int_equal(h.recs[1].timings.cached_tokens, 0);
    assert_int_equal(h.recs[2].timings.base_cached_tokens, 0);
    assert_int_equal(h.recs[2].timings.cached_tokens, 0);
    assert_int_equal(h.recs[3].timings.base_cached_tokens, 0);
    assert_int_equal(h.recs[3].timings.cached_tokens, 40);
    /* The same prediction from the cached aux prefix as from a fresh aux forward. */
    assert_same_output(&h.recs[3], &h.recs[2], 1e-4f);
    /* With the exact prefix, request 1 starts closer to full than a cold prediction would. */
    assert_int_equal(h.recs[1].n_tokens, 6);
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_int_equal(st.prefix_hits[1], 40);
    assert_int_equal(st.prefix_queries[1], 3 * 44);
    harness_finish(&h, 4);
    eng_kvp_free(pred);
}

/* A request cancelled while its refinement runs ends at once; the refinement job then stops
 * at its next chunk and frees the request and its blocks. */
static void test_cancel_during_refinement_frees_every_block(void **state) {
    (void)state;
    struct eng_kvp *pred = bad_predictor();
    struct sch_config c = test_config(64);
    struct harness h;
    harness_init(&h);
    h.decode_step_sleep_ms = 2;
    h.cancel_in_refine_id = 1; /* the first request's id */
    start(&h, &c, g_model, pred);
    int32_t prompt[45];
    make_prompt(prompt, 45, 41);
    struct sch_request_params p = greedy_params(prompt, 45, 80);
    p.mode = SCH_MODE_PREDICT;
    p.refine = SCH_REFINE_ON;
    assert_int_equal(submit_ok(&h, &p, 0), 1);
    wait_terminal(&h, 1);
    assert_int_equal(h.recs[0].finish, SCH_FINISH_ABORT);
    assert_int_equal(h.recs[0].timings.refine_result, SCH_REFINE_CANCELLED);
    assert_true(h.refine_chunks >= 1);
    harness_finish(&h, 1);
    eng_kvp_free(pred);
}

/* A pool that cannot keep every prefix: requests sharing and not sharing prefixes, in both
 * modes, with refinement, all complete; evicted blocks are reused and the books balance. */
static void test_eviction_under_pressure_keeps_the_books(void **state) {
    (void)state;
    struct eng_kvp *pred = bad_predictor();
    struct sch_config c = test_config(40); /* 320 positions */
    c.max_running = 4;
    struct harness h;
    harness_start(&h, &c, g_model, pred);
    int32_t prompts[MAX_REQ][64];
    const int n_req = 24;
    for (int i = 0; i < n_req; i++) {
        make_prompt(prompts[i], 64, i % 3 == 0 ? 100 : i); /* a third share one prompt */
        struct sch_request_params p = greedy_params(prompts[i], 40 + (i % 5) * 5, 6 + i % 4);
        p.mode = i % 2 == 0 ? SCH_MODE_FULL : SCH_MODE_PREDICT;
        p.refine = i % 4 == 1 ? SCH_REFINE_ON : SCH_REFINE_DEFAULT;
        submit_ok(&h, &p, i);
        if (i % 6 == 5) {
            wait_terminal(&h, i + 1 - 3); /* keep a few in flight */
        }
    }
    wait_terminal(&h, n_req);
    for (int i = 0; i < n_req; i++) {
        assert_int_equal(h.recs[i].term, SCH_EV_DONE);
    }
    struct sch_stats st;
    sch_stats_get(h.s, &st);
    assert_true(st.prefix_hits[0] > 0);
    harness_finish(&h, n_req);
    eng_kvp_free(pred);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_mode_with_a_prefix_hit_equals_full_mode_without),
        cmocka_unit_test(test_prefix_caching_off_reuses_nothing),
        cmocka_unit_test(test_refined_sequence_decodes_exactly_like_full_mode),
        cmocka_unit_test(test_predict_reuses_the_exact_base_prefix_and_the_aux_prefix),
        cmocka_unit_test(test_cancel_during_refinement_frees_every_block),
        cmocka_unit_test(test_eviction_under_pressure_keeps_the_books),
    };
    return cmocka_run_group_tests(tests, harness_group_setup, harness_group_teardown);
}
