/*
 * A decode step allocates nothing (STYLE.md "Memory and hot paths"): malloc, calloc,
 * realloc and aligned_alloc are wrapped at link time (-Wl,--wrap=...) and counted on the
 * decode worker's thread between the DECODE_BEGIN and DECODE_END hooks. The first run warms
 * the oneDNN primitive cache for every batch size 1..max_running; the second is measured.
 * (Allocations inside shared libraries such as libdnnl or glibc's qsort are not seen by the
 * wrapper; the engine's own code is.)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/kc.h"
#include "engine/model.h"
#include "scheduler/sched_internal.h"
#include "scheduler/scheduler.h"
#include "tests/unit/test_models.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);

static _Thread_local bool tl_counting;
static atomic_long g_allocs;
static atomic_long g_steps;

void *__wrap_malloc(size_t n) {
    if (tl_counting) {
        atomic_fetch_add(&g_allocs, 1);
    }
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t size) {
    if (tl_counting) {
        atomic_fetch_add(&g_allocs, 1);
    }
    return __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t n) {
    if (tl_counting) {
        atomic_fetch_add(&g_allocs, 1);
    }
    return __real_realloc(p, n);
}
void *__wrap_aligned_alloc(size_t align, size_t n) {
    if (tl_counting) {
        atomic_fetch_add(&g_allocs, 1);
    }
    return __real_aligned_alloc(align, n);
}

struct harness {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_terminal;
    bool measure;
    bool gate;
    int paused;
};

static void on_event(void *ud, const struct sch_event *ev) {
    struct harness *h = ud;
    if (ev->type != SCH_EV_TOKEN) {
        pthread_mutex_lock(&h->mu);
        h->n_terminal++;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
    }
}

static void on_hook(void *ud, enum sch_hook_point p, uint64_t id, int step) {
    struct harness *h = ud;
    (void)id;
    (void)step;
    if (p == SCH_HOOK_DECODE_JOIN) {
        pthread_mutex_lock(&h->mu);
        while (h->gate) {
            h->paused = 1;
            pthread_cond_broadcast(&h->cv);
            pthread_cond_wait(&h->cv, &h->mu);
        }
        pthread_mutex_unlock(&h->mu);
    } else if (p == SCH_HOOK_DECODE_BEGIN) {
        pthread_mutex_lock(&h->mu);
        const bool measure = h->measure;
        pthread_mutex_unlock(&h->mu);
        tl_counting = measure;
        if (measure) {
            atomic_fetch_add(&g_steps, 1);
        }
    } else if (p == SCH_HOOK_DECODE_END) {
        tl_counting = false;
    }
}

static void wait_for(struct harness *h, int *field, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 20;
    pthread_mutex_lock(&h->mu);
    while (*field < n) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&h->mu);
            fail_msg("timed out");
        }
    }
    pthread_mutex_unlock(&h->mu);
}

/* Submits 8 requests while decoding is held, so the batch shrinks 8, 7, ..., 1. */
static void run_batch(struct harness *h, struct sch *s, const int32_t *prompt, int target) {
    pthread_mutex_lock(&h->mu);
    h->gate = true;
    h->paused = 0;
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < 8; i++) {
        struct sch_request_params p = {
            .prompt = prompt,
            .n_prompt = 12 + i,
            .max_tokens = 2 + i,
            .sampling = eng_sampler_default_params(),
            .ignore_eos = true,
            .n_logprobs = i % 2 == 0 ? 3 : -1,
            .mode = SCH_MODE_FULL,
        };
        p.sampling.seed = (uint64_t)i;
        p.sampling.top_k = i % 3 == 0 ? 10 : 0;
        uint64_t id;
        struct kc_error err = {0};
        assert_int_equal(sch_submit(s, &p, NULL, &id, &err), KC_OK);
    }
    wait_for(h, &h->paused, 1);
    struct sch_stats st;
    for (int tries = 0; tries < 2000; tries++) { /* all 8 handed off */
        sch_stats_get(s, &st);
        if (st.running == 8) {
            break;
        }
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(st.running, 8);
    pthread_mutex_lock(&h->mu);
    h->gate = false;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    wait_for(h, &h->n_terminal, target);
}

static void test_decode_step_allocates_nothing_after_warm_up(void **state) {
    (void)state;
    struct eng_model *m = NULL;
    struct kc_error err = {0};
    assert_int_equal(test_golden_load("llama_gqa", ENG_WTYPE_F32, &m, &err), KC_OK);
    struct harness h;
    memset(&h, 0, sizeof(h));
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    struct sch_config c = sch_default_config();
    c.block_size = 8;
    c.base_kv_bytes = 128 * eng_kv_block_bytes(eng_model_config_of(m), 8);
    struct sch *s = NULL;
    assert_int_equal(sch_create(&c, m, NULL, NULL, on_event, &h, &s, &err), KC_OK);
    sch__set_hook(s, on_hook, &h);
    int32_t prompt[32];
    for (int i = 0; i < 32; i++) {
        prompt[i] = 3 + (i * 5) % 100;
    }
    run_batch(&h, s, prompt, 8); /* warm-up */
    pthread_mutex_lock(&h.mu);
    h.measure = true;
    pthread_mutex_unlock(&h.mu);
    run_batch(&h, s, prompt, 16);
    const long steps = atomic_load(&g_steps), allocs = atomic_load(&g_allocs);
    printf("decode steps measured: %ld, allocations in them: %ld\n", steps, allocs);
    assert_true(steps >= 8);
    assert_int_equal(allocs, 0);
    sch_free(s);
    pthread_cond_destroy(&h.cv);
    pthread_mutex_destroy(&h.mu);
    eng_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_step_allocates_nothing_after_warm_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
