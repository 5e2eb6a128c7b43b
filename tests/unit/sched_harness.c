/*
 * sched_harness.c — the running-scheduler test harness shared by the scheduler tests
 * (test_scheduler_run.c, test_scheduler_prefix.c): a real tiny model, an event recorder, hook
 * gates and bounded waits (sched_harness.h).
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
#include "scheduler/sched_internal.h"
#include "scheduler/scheduler.h"
#include "tests/unit/test_compare.h"
#include "tests/unit/test_models.h"

struct eng_model *g_model;

void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void harness_init(struct harness *h) {
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
}

void harness_free(struct harness *h) {
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
}

void on_event(void *ud, const struct sch_event *ev) {
    struct harness *h = ud;
    struct rec *r = ev->user;
    uint64_t cancel_id = 0;
    pthread_mutex_lock(&h->mu);
    if (r->n_terminal > 0) {
        r->event_after_terminal = true;
    }
    if (ev->type == SCH_EV_TOKEN) {
        if (r->n_tokens == 0) {
            r->t_first_token = kc_now_ns();
        }
        if (r->n_tokens < MAX_TOK) {
            r->tokens[r->n_tokens] = ev->token;
            r->logprobs[r->n_tokens] = ev->logprob;
            r->n_top[r->n_tokens] = ev->n_top;
        }
        r->n_tokens++;
        if (r->cancel_at_token > 0 && r->n_tokens == r->cancel_at_token) {
            cancel_id = ev->id;
        }
    } else {
        r->n_terminal++;
        r->term = ev->type;
        r->finish = ev->finish;
        r->n_generated = ev->n_generated;
        r->error = ev->error;
        r->timings = ev->timings;
        h->n_terminal++;
        pthread_cond_broadcast(&h->cv);
    }
    struct sch *s = h->s;
    pthread_mutex_unlock(&h->mu);
    if (cancel_id != 0) {
        sch_cancel(s, cancel_id, SCH_FINISH_ABORT);
    }
}

void sleep_ms(int ms);

void on_hook(void *ud, enum sch_hook_point p, uint64_t id, int step) {
    struct harness *h = ud;
    (void)step;
    pthread_mutex_lock(&h->mu);
    if (p == SCH_HOOK_DECODE_END && h->decode_step_sleep_ms > 0) {
        const int ms = h->decode_step_sleep_ms;
        pthread_mutex_unlock(&h->mu);
        sleep_ms(ms);
        pthread_mutex_lock(&h->mu);
    }
    if (p == SCH_HOOK_REFINE_CHUNK) {
        h->refine_chunks++;
    }
    if (p == SCH_HOOK_REFINE_CHUNK && id == h->cancel_in_refine_id) {
        h->cancel_in_refine_id = 0;
        struct sch *s = h->s;
        struct rec *target = NULL;
        for (int i = 0; i < MAX_REQ; i++) {
            target = h->recs[i].id == id ? &h->recs[i] : target;
        }
        pthread_mutex_unlock(&h->mu);
        sch_cancel(s, id, SCH_FINISH_ABORT);
        pthread_mutex_lock(&h->mu);
        struct timespec dl;
        deadline_in(&dl, WAIT_MS);
        while (target != NULL && target->n_terminal == 0) {
            if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
                break; /* the test fails on its own checks */
            }
        }
    }
    if (p == SCH_HOOK_PREFILL_CHUNK && id == h->cancel_in_prefill_id) {
        struct sch *s = h->s;
        pthread_mutex_unlock(&h->mu);
        sch_cancel(s, id, SCH_FINISH_ABORT);
        pthread_mutex_lock(&h->mu);
    }
    bool *gate = p == SCH_HOOK_PREFILL_CHUNK ? &h->gate_prefill
                 : p == SCH_HOOK_DECODE_JOIN ? &h->gate_decode
                                             : NULL;
    if (gate != NULL && *gate) {
        struct timespec dl;
        deadline_in(&dl, WAIT_MS);
        h->paused++;
        pthread_cond_broadcast(&h->cv);
        while (*gate) {
            if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
                *gate = false; /* never hang: the test will fail on its own checks */
            }
        }
        h->paused--;
    }
    pthread_mutex_unlock(&h->mu);
}

/* Waits until n terminal events arrived; fails after WAIT_MS. */
void wait_terminal(struct harness *h, int n) {
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&h->mu);
    while (h->n_terminal < n) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
            const int got = h->n_terminal;
            pthread_mutex_unlock(&h->mu);
            fail_msg("timed out waiting for %d terminal events (got %d)", n, got);
        }
    }
    pthread_mutex_unlock(&h->mu);
}

/* Waits until `paused` workers wait at a gate; fails after WAIT_MS. */
void wait_paused(struct harness *h, int n) {
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&h->mu);
    while (h->paused < n) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&h->mu);
            fail_msg("timed out waiting for a worker to pause");
        }
    }
    pthread_mutex_unlock(&h->mu);
}

/* Waits until n requests are handed off or decoding; fails after WAIT_MS. */
void wait_running(struct harness *h, int n) {
    const uint64_t end = kc_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    struct sch_stats st;
    do {
        sch_stats_get(h->s, &st);
        if (st.running == n) {
            return;
        }
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    } while (kc_now_ns() < end);
    fail_msg("timed out waiting for %d running requests (have %d)", n, st.running);
}

void open_gates(struct harness *h) {
    pthread_mutex_lock(&h->mu);
    h->gate_prefill = false;
    h->gate_decode = false;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- set-up ---- */

int harness_group_setup(void **state) {
    (void)state;
    struct kc_error err = {0};
    if (test_golden_load("llama_gqa", ENG_WTYPE_F32, &g_model, &err) != KC_OK) {
        fprintf(stderr, "tests/golden/llama_gqa: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int harness_group_teardown(void **state) {
    (void)state;
    eng_model_free(g_model);
    return 0;
}

struct sch_config test_config(int n_blocks) {
    struct sch_config c = sch_default_config();
    c.block_size = 8;
    c.base_kv_bytes = (size_t)n_blocks * eng_kv_block_bytes(eng_model_config_of(g_model), 8);
    c.max_queue = 16;
    c.max_running = 8;
    c.prefill_chunk = 16;
    c.ttft_slo_ms = 1000.0;
    return c;
}

struct sch *start(struct harness *h, const struct sch_config *c, const struct eng_model *aux,
                  const struct eng_kvp *pred) {
    struct kc_error err = {0};
    struct sch *s = NULL;
    if (sch_create(c, g_model, aux, pred, on_event, h, &s, &err) != KC_OK) {
        fail_msg("sch_create: %s", err.msg);
    }
    h->s = s;
    sch__set_hook(s, on_hook, h);
    return s;
}

void harness_start(struct harness *h, const struct sch_config *c, const struct eng_model *aux,
                   const struct eng_kvp *pred) {
    harness_init(h);
    start(h, c, aux, pred);
}

void harness_stop(struct harness *h) {
    sch_free(h->s);
    harness_free(h);
}

void harness_finish(struct harness *h, int n_requests) {
    check_clean(h, n_requests);
    harness_stop(h);
}

void make_prompt(int32_t *p, int n, int salt) {
    for (int i = 0; i < n; i++) {
        p[i] = (int32_t)(3 + (i * 7 + salt * 13) % 120);
    }
}

struct sch_request_params greedy_params(const int32_t *prompt, int n, int max_tokens) {
    struct sch_request_params p = {
        .prompt = prompt,
        .n_prompt = n,
        .max_tokens = max_tokens,
        .sampling = eng_sampler_default_params(),
        .ignore_eos = true,
        .n_logprobs = -1,
        .mode = SCH_MODE_AUTO,
    };
    p.sampling.temperature = 0.0f;
    return p;
}

uint64_t submit_ok(struct harness *h, const struct sch_request_params *p, int slot) {
    struct kc_error err = {0};
    uint64_t id = 0;
    int rc = sch_submit(h->s, p, &h->recs[slot], &id, &err);
    if (rc != KC_OK) {
        fail_msg("submit %d: %s (%s)", slot, kc_strerror(rc), err.msg);
    }
    pthread_mutex_lock(&h->mu);
    h->recs[slot].id = id;
    pthread_mutex_unlock(&h->mu);
    return id;
}

/* Every request got exactly one terminal event, nothing after it, and every block is back. */
void check_clean(struct harness *h, int n_requests) {
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < n_requests; i++) {
        assert_int_equal(h->recs[i].n_terminal, 1);
        assert_false(h->recs[i].event_after_terminal);
        assert_int_equal(h->recs[i].n_generated, h->recs[i].n_tokens);
    }
    pthread_mutex_unlock(&h->mu);
    /* A refinement job whose request ended first stops at its next chunk (bounded wait). */
    struct sch_stats st;
    const uint64_t end = kc_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    do {
        sch_stats_get(h->s, &st);
        if (st.refine_running + st.refine_queued == 0) {
            break;
        }
        sleep_ms(1);
    } while (kc_now_ns() < end);
    assert_int_equal(st.refine_running + st.refine_queued, 0);
    assert_int_equal(st.base_blocks_free, st.base_blocks_total);
    assert_int_equal(st.aux_blocks_free, st.aux_blocks_total);
    struct kc_error err = {0};
    if (sch__check_pools(h->s, true, &err) != KC_OK) {
        fail_msg("KV pool accounting: %s", err.msg);
    }
}

void direct_open(struct direct_run *d, int chunk, int n_positions) {
    memset(d, 0, sizeof(*d));
    d->c = eng_model_config_of(g_model);
    struct kc_error err = {0};
    d->logits = calloc((size_t)d->c->vocab_size, sizeof(float));
    assert_non_null(d->logits);
    assert_int_equal(eng_ctx_create(g_model, chunk, n_positions, 1, &d->ctx, &err), KC_OK);
    assert_int_equal(eng_kv_pool_init(&d->pool, d->c, 8, n_positions / 8 + 1, &err), KC_OK);
}

void direct_feed(struct direct_run *d, const int32_t *tokens, int n) {
    struct kc_error err = {0};
    struct eng_batch_item item = {.seq = &d->seq,
                                  .tokens = tokens,
                                  .n_tokens = n,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = d->logits};
    assert_int_equal(eng_forward(d->ctx, g_model, &d->pool, &item, 1, NULL, &err), KC_OK);
}

void direct_close(struct direct_run *d) {
    eng_seq_release(&d->pool, &d->seq);
    eng_kv_pool_free(&d->pool);
    eng_ctx_free(d->ctx);
    free(d->logits);
}

/* Greedy decoding straight on the engine: prefill the prompt, then one token per step. */
void direct_greedy(const int32_t *prompt, int n, int max_tokens, int32_t *out) {
    struct direct_run d;
    direct_open(&d, 16, n + max_tokens);
    direct_feed(&d, prompt, n);
    for (int t = 0; t < max_tokens; t++) {
        out[t] = argmax(d.logits, d.c->vocab_size);
        if (t + 1 < max_tokens) {
            direct_feed(&d, &out[t], 1);
        }
    }
    direct_close(&d);
}
