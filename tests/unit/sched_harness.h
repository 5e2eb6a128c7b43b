/*
 * sched_harness.h — the running-scheduler test harness: tests/golden/llama_gqa loaded with f32
 * weights for both step shapes (exactly reproducible greedy output), an event recorder per
 * request slot, hook gates that pause workers, bounded waits (a stuck scheduler fails the
 * test), and check_clean: one terminal event per request, every block back, pools consistent.
 */
#ifndef KC_TEST_SCHED_HARNESS_H
#define KC_TEST_SCHED_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "engine/kvp.h"
#include "engine/model.h"
#include "scheduler/sched_internal.h"
#include "scheduler/scheduler.h"

#define MAX_REQ 32
#define MAX_TOK 128
#define WAIT_MS 20000

/* ---- event recorder ---- */

struct rec {
    uint64_t id;
    int32_t tokens[MAX_TOK];
    float logprobs[MAX_TOK];
    int n_top[MAX_TOK];
    int n_tokens;
    int n_terminal;
    bool event_after_terminal;
    enum sch_event_type term;
    enum sch_finish finish;
    int n_generated;
    int error;
    struct sch_timings timings;
    int cancel_at_token; /* > 0: the callback cancels after this many tokens */
    uint64_t t_first_token;
};

struct harness {
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    struct rec recs[MAX_REQ];
    int n_terminal;
    struct sch *s;
    /* hook gate: a worker reaching a gated point waits until the gate opens */
    bool gate_prefill;             /* pause at SCH_HOOK_PREFILL_CHUNK */
    bool gate_decode;              /* pause at SCH_HOOK_DECODE_JOIN */
    int paused;                    /* workers waiting at the gate */
    uint64_t cancel_in_prefill_id; /* cancel this id at its first prefill chunk */
    int decode_step_sleep_ms;      /* sleep after every decode step (a slow model) */
    uint64_t cancel_in_refine_id;  /* at this id's first refinement chunk: cancel it and wait
                                    * (bounded) for its terminal event, so that the request
                                    * ends while its refinement runs */
    int refine_chunks;             /* refinement chunks seen */
};

extern struct eng_model *g_model;

void deadline_in(struct timespec *ts, int ms);
void harness_init(struct harness *h);
void harness_free(struct harness *h);
void on_event(void *ud, const struct sch_event *ev);
void on_hook(void *ud, enum sch_hook_point p, uint64_t id, int step);
void wait_terminal(struct harness *h, int n);
void wait_paused(struct harness *h, int n);
void wait_running(struct harness *h, int n);
void open_gates(struct harness *h);
void sleep_ms(int ms);
int harness_group_setup(void **state);
int harness_group_teardown(void **state);
struct sch_config test_config(int n_blocks);
struct sch *start(struct harness *h, const struct sch_config *c, const struct eng_model *aux,
                  const struct eng_kvp *pred);
/* harness_init(h), then start(h, c, aux, pred). */
void harness_start(struct harness *h, const struct sch_config *c, const struct eng_model *aux,
                   const struct eng_kvp *pred);
/* The scheduler destroyed, then harness_free(h). */
void harness_stop(struct harness *h);
/* check_clean(h, n_requests), then harness_stop(h): the usual end of a test. */
void harness_finish(struct harness *h, int n_requests);
void make_prompt(int32_t *p, int n, int salt);
struct sch_request_params greedy_params(const int32_t *prompt, int n, int max_tokens);
uint64_t submit_ok(struct harness *h, const struct sch_request_params *p, int slot);
void check_clean(struct harness *h, int n_requests);
/* A sequence run straight on the golden model, without a scheduler: a context for steps of up
 * to `chunk` rows, a pool of 8-position blocks for n_positions, one sequence, and the logits of
 * the last token fed. Failures fail the test. */
struct direct_run {
    const struct eng_model_config *c;
    struct eng_ctx *ctx;
    struct eng_kv_pool pool;
    struct eng_seq seq;
    float *logits; /* [vocab_size] */
};
void direct_open(struct direct_run *d, int chunk, int n_positions);
/* Runs n tokens through the sequence; d->logits are then those of the last. */
void direct_feed(struct direct_run *d, const int32_t *tokens, int n);
void direct_close(struct direct_run *d);
void direct_greedy(const int32_t *prompt, int n, int max_tokens, int32_t *out);

#endif /* KC_TEST_SCHED_HARNESS_H */
