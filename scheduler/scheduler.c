/*
 * scheduler.c — admission, prefill workers, the hand-off queue and the continuous-batching
 * decode worker (API in scheduler.h, request lifecycle in request.h, mode policy in policy.h).
 *
 * Threads: the caller's threads (submit, cancel, stats, drain, destroy), N prefill workers
 * (default 1) and one decode worker. Each worker creates its own engine contexts on its own
 * thread (oneDNN primitives run on the thread that created them: RELIABILITY.md section 7)
 * with its own OpenMP team size, optionally pinned to its own cores. With elastic teams (the
 * default) every context is sized for all cores and each worker's team size is an atomic
 * the scheduler rewrites as work comes and goes (invariant 7).
 *
 * DESIGN invariants:
 *  1. Lock order: sch.lock, then a KV pool's lock (taken inside eng_seq_reserve/_release and
 *     eng_kv_pool_n_free). A pool lock is a leaf: nothing is locked while holding it. The
 *     event callback and the test hook are called with no scheduler lock held, so they may
 *     call sch_cancel / sch_stats_get.
 *  2. sch.lock guards the wait queue, the hand-off queue, the reap list, the live list, the
 *     counters, the cost estimates and the flags; a request's own fields are touched only
 *     by its owner (request.h), except its atomic cancel flag.
 *  3. Admission is FIFO: only the head of the wait queue is admitted, when the base pool can
 *     give it every block it can need (req_positions). A long prompt at
 *     the head waits for blocks but is never overtaken, so it cannot starve. A request that
 *     could never fit is refused at submit.
 *  4. A cancelled queued request moves to the reap list at once and is ended by whichever
 *     thread looks first (the decode worker between steps or when idle, a prefill worker
 *     between requests, a decode host's dispatcher, and on a prefill host, which has no
 *     decode worker, the pd receive path that cancelled it: sch__reap), so ending it never
 *     waits for a long prefill.
 *  5. The decode worker's step allocates nothing: batch arrays are sized max_running at start,
 *     and every block a sequence can need was reserved at admission. *  6. Every request ends in
 * end_request, which emits its one terminal event and frees it, unless its refinement job is
 * running: then the job frees it (refine_detach).
 *  7. Elastic teams: rebalance() (sch.lock held) recomputes every worker's team with
 *     sch_team_split whenever a prefill starts or ends, the decode worker turns busy or idle,
 *     or a decode step was timed. A contention episode (some prefill running while decode is
 *     busy) starts with both teams full-width; decode_shared_ms, the step time measured that * way,
 * decides whether to split, and resets when the last prefill ends. Workers read their team
 * (eng_dnn_team_source) before every GEMM, so a resize takes effect within one linear layer,
 * mid-prefill included.
 *  8. Prefix cache: only exact KV is published (a full prefill's prompt, aux prefills, a
 *     refinement's blocks), never a predicted block; a sequence attaches cached blocks only
 *     while empty, so its writes always go to blocks of its own.
 *  9. Refinement never holds up first-token work: a job starts only while the wait queue is
 *     empty, and sch_submit raises every running job's stop flag, which its forward reads
 *     before each layer. The job owns refine_seq while RUNNING; the decode worker owns it once
 *     READY and alone swaps it in, at a step boundary.
 */
#define _POSIX_C_SOURCE 200809L
#include "scheduler/scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "engine/kv_cache.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "scheduler/pd_msg.h"
#include "scheduler/policy.h"
#include "scheduler/queue.h"
#include "scheduler/request.h"
#include "scheduler/sched_internal.h"

/* Size cap of a prefill worker's all-rows logits buffer (prompt_logprobs): large vocabularies
 * get fewer rows per chunk instead of a buffer of prefill_chunk x V floats. */
#define SCH_ALL_LOGITS_BYTES ((size_t)64 << 20)
/* Weight of a new sample in the per-token prefill cost estimates. */
#define SCH_COST_ALPHA 0.2
/* Cost-model seeds (before the first measured prefill): the predictor GEMMs and cache
 * writes as a fraction of the base model's per-token cost, and the rates assumed per prefill
 * thread for GEMMs and for attention (slower: softmax between two small products; both
 * conservative for a 2-core AVX-512 host). Only the first decisions use them: the first
 * measured prefill of either mode rescales the other's seed (sch_cost_borrow), and no request
 * is shed before predict was measured. */
#define SCH_PREDICT_OVERHEAD 0.05
#define SCH_PRIOR_GEMM_FLOPS 40e9
#define SCH_PRIOR_ATTN_FLOPS 8e9
/* Weight of a new inter-arrival gap / prompt length in the arrival estimates. */
#define SCH_ARRIVAL_ALPHA 0.1
/* Fraction of the TTFT target auto mode keeps for estimate errors (policy.h). */
#define SCH_SLO_MARGIN 0.1
/* The queue wait estimated at submit is scaled by the EWMA of measured/estimated waits
 * (what the cost models miss: other threads' load, scheduling gaps), clamped to this range;
 * only waits estimated above SCH_WAIT_MIN_MS are samples. */
#define SCH_WAIT_FACTOR_MIN 0.5
#define SCH_WAIT_FACTOR_MAX 4.0
#define SCH_WAIT_MIN_MS 20.0
#define SCH_WAIT_ALPHA 0.1
/* Requests behind the head that the admission decision looks at. */
#define SCH_POLICY_BEHIND 32
/* At most one info line per this interval about auto decisions (the rest: debug). */
#define SCH_DECISION_LOG_NS 1000000000ull
/* Weight of a new sample in the decode step cost estimate (elastic teams). */
#define SCH_STEP_ALPHA 0.2
/* Refinement: decoded tokens a job leaves to the decode worker to feed before the swap (about
 * one decode step's work); more than this and the job runs another prefill step. */
#define SCH_REFINE_CATCHUP 8

struct sch_prefill_worker {
    struct sch *s;
    int index;
    pthread_t thread;
    bool started;
    struct eng_ctx *ctx;     /* base forward: full prefill, predict's base step, refinement */
    struct eng_kvp_ctx *kvp; /* aux forward + predictor, when predict is available */
    float *logits;           /* [V] first-token logits */
    float *all_logits;       /* [all_rows, V] prompt_logprobs: the logits of every row of a
                              * chunk (allocated by the first such request, then kept) */
    int all_rows;
    /* Refinement: the job in flight (sch.lock), and the flag that stops its forward within a
     * layer when first-token work arrives or its request ends (eng_forward_stop_source). */
    struct sch_req *refining;
    atomic_int stop;
    atomic_int team; /* elastic: OpenMP team of its next GEMM (written under sch.lock) */
    bool busy;       /* a prefill is in flight (sch.lock) */
    int team_peak;   /* the widest team of the prefill in flight (sch.lock) */
};

struct sch_decode_worker {
    struct sch *s;
    pthread_t thread;
    bool started;
    struct eng_ctx *ctx;
    struct sch_req **running; /* [max_running] in join order */
    int n_running;
    struct eng_batch_item *items; /* [max_running] */
    enum sch_finish *finish;      /* [max_running] finish each row's token caused */
    int *rc;                      /* [max_running] KC_OK, or why the row could not be sampled */
    struct kc_error *err;         /* [max_running] its message */
    float *logits;                /* [max_running, V] */
    atomic_int team;              /* elastic: OpenMP team of its next GEMM */
};

struct sch {
    struct sch_config cfg;
    const struct eng_model *base;
    const struct eng_model *aux;
    const struct eng_kvp *pred;
    const struct eng_model_config *bcfg;
    bool predict_available;
    sch_event_cb cb;
    void *cb_ud;
    struct eng_kv_pool pool;     /* base KV; its own lock guards its blocks */
    struct eng_kv_pool aux_pool; /* aux KV of predict prefills (transient, and the aux
                                  * prefix cache); empty when predict is unavailable */

    pthread_mutex_t lock;      /* guards everything from here to the workers (invariant 2) */
    pthread_cond_t prefill_cv; /* work for prefill workers: submit, freed blocks, reap, stop */
    pthread_cond_t decode_cv;  /* work for the decode worker: hand-off, reap, stop */
    pthread_cond_t idle_cv;    /* n_live reached 0; worker start-up reports */
    struct sch_queue waiting;
    struct sch_queue handoff;
    struct sch_queue reap;
    struct sch_req *live; /* every request without its terminal event yet */
    int n_live;
    uint64_t next_id;
    bool draining; /* submit refuses */
    bool stopping; /* prefill workers exit */
    bool decode_stop;
    int n_prefilling;
    int n_running;                  /* handed off + decoding */
    double cost_full, cost_predict; /* ms per prompt token, EWMA; 0 unmeasured */
    int n_reported;                 /* workers that finished start-up */
    int start_rc;
    char start_msg[640];
    sch_hook_fn hook;
    void *hook_ud;
    /* Elastic teams (invariant 7). */
    bool elastic;
    int n_cpus;
    int n_prefill_busy;
    bool decode_busy;
    double decode_work_ms;      /* core-ms per decode step, EWMA; 0 unmeasured */
    double decode_step_ms;      /* decode step time, EWMA; 0 unmeasured */
    double decode_shared_ms;    /* decode step ms while both sides ran full teams, EWMA over
                                 * this contention episode; 0 unmeasured */
    struct sch_team_split plan; /* the teams last planned (for the debug log) */

    struct sch_prefill_worker *pw; /* [cfg.prefill_workers] */
    struct sch_decode_worker dw;
    /* Auto mode (policy.h): prefill cost models, the prefills in flight (what is left of them
     * delays every queued request), arrival estimates, decision counters. Guarded by sch.lock. */
    struct sch_cost_model model_full, model_predict;
    struct {
        uint64_t id;    /* 0: free slot */
        uint64_t t0_ns; /* admission */
        double est_ms;  /* estimated prefill cost in its mode */
    } inflight[SCH_MAX_PREFILL_WORKERS];
    uint64_t last_submit_ns;
    double arrival_gap_ms;   /* EWMA of the time between submits; 0: fewer than 2 seen */
    double arrival_n_prompt; /* EWMA of submitted prompt lengths */
    double wait_factor;      /* EWMA of measured / estimated queue waits (starts at 1) */
    uint64_t auto_why[2][SCH_STATS_REASONS]; /* [mode == predict][reason] */
    uint64_t shed;
    uint64_t log_ns;      /* last info line about a decision */
    uint64_t log_skipped; /* decisions since then logged at debug only */
    /* Prefix cache counters ([0] base, [1] aux; tokens) and the refine queue (FIFO through
     * refine_next), all under sch.lock. */
    uint64_t prefix_queries[2], prefix_hits[2];
    struct sch_req *refine_head, *refine_tail;
    int n_refine_queued, n_refine_running;
    /* Disaggregated serving (pd_sched.c): NULL in role ALL. */
    struct sch_pd *pd;
};

/* ---- small helpers ---- */

const char *sch_mode_name(enum sch_prefill_mode m) {
    switch (m) {
    case SCH_MODE_AUTO:
        return "auto";
    case SCH_MODE_FULL:
        return "full";
    case SCH_MODE_PREDICT:
        return "predict";
    }
    return "?";
}

const char *sch_finish_name(enum sch_finish f) {
    switch (f) {
    case SCH_FINISH_NONE:
        return NULL;
    case SCH_FINISH_STOP:
        return "stop";
    case SCH_FINISH_LENGTH:
        return "length";
    case SCH_FINISH_ABORT:
        return "abort";
    }
    return NULL;
}

const char *sch_refine_result_name(enum sch_refine_result r) {
    switch (r) {
    case SCH_REFINE_NONE:
        return "none";
    case SCH_REFINE_SWAPPED:
        return "swapped";
    case SCH_REFINE_SKIPPED:
        return "skipped";
    case SCH_REFINE_CANCELLED:
        return "cancelled";
    case SCH_REFINE_FAILED:
        return "failed";
    }
    return "?";
}

const char *sch_role_name(enum sch_role r) {
    switch (r) {
    case SCH_ROLE_PREFILL:
        return "prefill";
    case SCH_ROLE_DECODE:
        return "decode";
    default:
        return "all";
    }
}

int sch_role_parse(const char *s, enum sch_role *out) {
    static const enum sch_role roles[] = {SCH_ROLE_ALL, SCH_ROLE_PREFILL, SCH_ROLE_DECODE};
    for (size_t i = 0; s != NULL && i < sizeof(roles) / sizeof(roles[0]); i++) {
        if (strcmp(s, sch_role_name(roles[i])) == 0) {
            *out = roles[i];
            return KC_OK;
        }
    }
    return KC_EINVAL;
}

int sch_mode_parse(const char *s, enum sch_prefill_mode *out) {
    static const enum sch_prefill_mode modes[] = {SCH_MODE_AUTO, SCH_MODE_FULL, SCH_MODE_PREDICT};
    for (size_t i = 0; s != NULL && i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(s, sch_mode_name(modes[i])) == 0) {
            *out = modes[i];
            return KC_OK;
        }
    }
    return KC_EINVAL;
}

struct sch_config sch_default_config(void) {
    struct sch_config c = {
        .prefill_threads = 0,
        .decode_threads = 0,
        .pin_cpus = false,
        .tpot_slo_ms = 50.0,
        .base_kv_bytes = (size_t)256 << 20,
        .aux_kv_bytes = 0,
        .block_size = 16,
        .max_queue = 64,
        .max_running = 8,
        .prefill_chunk = 256,
        .max_context = 0,
        .ttft_slo_ms = 1000.0,
        .predict_min_prompt = 512,
        .prefill_workers = 1,
        .shed_hopeless = true,
        .prefix_caching = true,
        .refine = true,
    };
    return c;
}

static bool is_eos(const struct eng_model_config *c, int32_t tok) {
    for (int i = 0; i < c->n_eos; i++) {
        if (c->eos_token_ids[i] == tok) {
            return true;
        }
    }
    return false;
}

/* Names the calling thread (15 bytes at most; `top -H`, /proc/PID/task/TID/comm): the
 * tests tell the workers a host runs by name. */
static void name_self(const char *name) {
    (void)prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}

/* The test hook at point p, after cfg.debug_step_delay_ms at the points that delay. */
static void call_hook(const struct sch *s, sch_hook_fn fn, void *ud, enum sch_hook_point p,
                      uint64_t id, int step) {
    const int ms = s->cfg.debug_step_delay_ms;
    if (ms > 0 && (p == SCH_HOOK_DECODE_END || p == SCH_HOOK_PREFILL_CHUNK)) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (fn != NULL) {
        fn(ud, p, id, step);
    }
}

/* Elastic teams: replans every worker's team from what is busy (invariant 7). Called with
 * sch.lock held. */
static void rebalance(struct sch *s) {
    if (!s->elastic) {
        return;
    }
    const struct sch_team_input in = {
        .n_cpus = s->n_cpus,
        .n_prefilling = s->n_prefill_busy,
        .decode_busy = s->decode_busy,
        .decode_step_work_ms = s->decode_work_ms,
        .decode_shared_step_ms = s->decode_shared_ms,
        .tpot_target_ms = s->cfg.tpot_slo_ms,
    };
    struct sch_team_split t;
    sch_team_split(&in, &t);
    if (t.prefill != s->plan.prefill || t.decode != s->plan.decode) {
        KC_DEBUG("teams: prefill %d decode %d (prefilling %d, decode %s, shared step %.1f ms, "
                 "core-ms %.1f, target %.0f ms)",
                 t.prefill, t.decode, s->n_prefill_busy, s->decode_busy ? "busy" : "idle",
                 s->decode_shared_ms, s->decode_work_ms, s->cfg.tpot_slo_ms);
        s->plan = t;
    }
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        struct sch_prefill_worker *w = &s->pw[i];
        atomic_store_explicit(&w->team, t.prefill, memory_order_relaxed);
        if (w->busy && t.prefill > w->team_peak) {
            w->team_peak = t.prefill;
        }
    }
    atomic_store_explicit(&s->dw.team, t.decode, memory_order_relaxed);
}

/* The team a worker of n_threads runs on now (fixed teams: n_threads or OpenMP's default). */
static int team_now(const struct sch *s, const atomic_int *team, int n_threads) {
    if (s->elastic) {
        return atomic_load_explicit(team, memory_order_relaxed);
    }
    return n_threads > 0 ? n_threads : s->n_cpus;
}

static void unlink_live(struct sch *s, struct sch_req *r) {
    if (r->live_prev != NULL) {
        r->live_prev->live_next = r->live_next;
    } else {
        s->live = r->live_next;
    }
    if (r->live_next != NULL) {
        r->live_next->live_prev = r->live_prev;
    }
    r->live_prev = r->live_next = NULL;
}

static void req_free(struct sch_req *r) {
    eng_sampler_free(&r->sampler);
    free(r->stop_token_ids);
    free(r->logit_bias);
    free(r->tokens);
    free(r);
}

/* ---- refinement: the queue (sch.lock held) ---- */

static void refine_push(struct sch *s, struct sch_req *r) {
    r->refine_next = NULL;
    if (s->refine_tail != NULL) {
        s->refine_tail->refine_next = r;
    } else {
        s->refine_head = r;
    }
    s->refine_tail = r;
    s->n_refine_queued++;
    r->refine_state = SCH_RSTATE_QUEUED;
}

static struct sch_req *refine_pop(struct sch *s) {
    struct sch_req *r = s->refine_head;
    if (r != NULL) {
        s->refine_head = r->refine_next;
        if (s->refine_head == NULL) {
            s->refine_tail = NULL;
        }
        r->refine_next = NULL;
        s->n_refine_queued--;
    }
    return r;
}

static void refine_unlink(struct sch *s, struct sch_req *r) {
    struct sch_req *prev = NULL;
    for (struct sch_req *q = s->refine_head; q != NULL; prev = q, q = q->refine_next) {
        if (q != r) {
            continue;
        }
        if (prev != NULL) {
            prev->refine_next = r->refine_next;
        } else {
            s->refine_head = r->refine_next;
        }
        if (s->refine_tail == r) {
            s->refine_tail = prev;
        }
        r->refine_next = NULL;
        s->n_refine_queued--;
        return;
    }
}

/* The request is ending (sch.lock held): its refinement's outcome, unless it already has one,
 * is that it never swapped in. */
static void refine_settle(struct sch_req *r, bool cancelled) {
    if (r->refine_state != SCH_RSTATE_NONE || r->refine_swap) {
        r->refine_result = cancelled ? SCH_REFINE_CANCELLED : SCH_REFINE_SKIPPED;
    }
}

/* The request has ended (sch.lock held, its event delivered): drops its refinement job.
 * Returns true when the job is running on a prefill worker, which then owns the request's
 * memory and frees it (the request is "orphaned", refine_run); the caller must not touch it
 * after unlocking. Otherwise the caller releases refine_seq and frees it. */
static bool refine_detach(struct sch *s, struct sch_req *r) {
    if (r->refine_state == SCH_RSTATE_QUEUED) {
        refine_unlink(s, r);
    }
    const bool orphan = r->refine_state == SCH_RSTATE_RUNNING;
    r->orphaned = orphan;
    if (orphan) {
        atomic_store_explicit(&s->pw[r->refine_worker].stop, 1, memory_order_relaxed);
    }
    r->refine_state = SCH_RSTATE_NONE;
    return orphan;
}

/*
 * Ends a request its caller owns (it is on no queue): returns its blocks, emits its one
 * terminal event (DONE for FINISHED / CANCELLED, ERROR for FAILED), counts it and frees it.
 * Takes sch.lock; must be called without it.
 */
static void end_request(struct sch *s, struct sch_req *r, enum sch_req_state state,
                        enum sch_finish finish, int error, const char *message) {
    KC_ASSERT(r->prev == NULL && r->next == NULL);
    const bool was_running = r->state == SCH_REQ_HANDED_OFF || r->state == SCH_REQ_DECODING;
    eng_seq_release(&s->pool, &r->seq);
    pthread_mutex_lock(&s->lock);
    refine_settle(r, state == SCH_REQ_CANCELLED);
    pthread_mutex_unlock(&s->lock);
    sch_req_transition(r, state);
    struct sch_event ev = {
        .type = state == SCH_REQ_FAILED ? SCH_EV_ERROR : SCH_EV_DONE,
        .id = r->id,
        .user = r->user,
        .finish = state == SCH_REQ_FAILED ? SCH_FINISH_NONE : finish,
        .n_prompt = r->n_prompt,
        .n_generated = r->n_generated,
        .error = state == SCH_REQ_FAILED ? error : 0,
    };
    sch_req_timings(r, &ev.timings);
    if (message != NULL) {
        snprintf(ev.message, sizeof(ev.message), "%s", message);
    }
    KC_DEBUG("req=%llu %s finish=%d generated=%d ttft=%.1fms", (unsigned long long)r->id,
             sch_req_state_name(state), (int)finish, r->n_generated, ev.timings.ttft_ms);
    /* The running count first, so that a client that saw the terminal event sees it gone;
     * the request leaves the live list only after its event went out, so that when drain
     * sees no live request every terminal event has been delivered. */
    pthread_mutex_lock(&s->lock);
    if (was_running) {
        s->n_running--;
    }
    pthread_mutex_unlock(&s->lock);
    if (r->pd_conn != 0) {
        sch__pd_ended(s->pd, r, &ev); /* a decode host's request: its events are not ours */
    } else {
        s->cb(s->cb_ud, &ev);
    }
    pthread_mutex_lock(&s->lock);
    unlink_live(s, r);
    if (--s->n_live == 0) {
        pthread_cond_broadcast(&s->idle_cv);
    }
    const bool orphan = refine_detach(s, r);
    /* Blocks came back: the head of the wait queue may fit now. */
    pthread_cond_broadcast(&s->prefill_cv);
    pthread_mutex_unlock(&s->lock);
    if (orphan) {
        return; /* its refinement job frees it (refine_run) */
    }
    if (r->refine_seq.n_blocks > 0) {
        eng_seq_release(&s->pool, &r->refine_seq); /* READY: exact KV that came too late */
        pthread_mutex_lock(&s->lock);
        pthread_cond_broadcast(&s->prefill_cv);
        pthread_mutex_unlock(&s->lock);
    }
    req_free(r);
}

static void end_cancelled(struct sch *s, struct sch_req *r) {
    enum sch_finish f = sch_req_cancelled(r);
    end_request(s, r, SCH_REQ_CANCELLED, f == SCH_FINISH_NONE ? SCH_FINISH_ABORT : f, 0, NULL);
}

/* Ends every request on the reap list. Called by workers without the lock. */
static void reap_cancelled(struct sch *s) {
    pthread_mutex_lock(&s->lock);
    struct sch_queue mine = {0};
    sch_queue_splice(&mine, &s->reap);
    pthread_mutex_unlock(&s->lock);
    struct sch_req *r;
    while ((r = sch_queue_pop(&mine)) != NULL) {
        end_cancelled(s, r);
    }
}

/* KV positions a request can fill: the prompt, then every token but the last (which is
 * emitted, never fed back). A prompt-only request (max_tokens 0) fills the prompt. */
static int req_positions(int n_prompt, int max_tokens) {
    return n_prompt + (max_tokens > 0 ? max_tokens - 1 : 0);
}

/* The raw-distribution logprobs of row at token tok with n alternatives, into ev (the
 * sampler's reference, eng_logprobs_top). */
static void event_logprobs(struct sch_event *ev, const float *row, int V, int32_t tok, int n) {
    struct eng_logprobs lp;
    eng_logprobs_top(row, V, tok, n, &lp);
    ev->has_logprob = true;
    ev->logprob = lp.logprob;
    ev->n_top = lp.n_top;
    memcpy(ev->top_ids, lp.top_ids, (size_t)lp.n_top * sizeof(int32_t));
    memcpy(ev->top_logprobs, lp.top_logprobs, (size_t)lp.n_top * sizeof(float));
}

static bool is_stop_token(const struct sch_req *r, int32_t tok) {
    for (int i = 0; i < r->n_stop_token_ids; i++) {
        if (r->stop_token_ids[i] == tok) {
            return true;
        }
    }
    return false;
}

/* One logit a request rule changed, and its model value (restored after sampling). */
struct saved_logit {
    int32_t id;
    float v;
};
#define SCH_MAX_SAVED_LOGITS (SCH_MAX_LOGIT_BIAS + SCH_MAX_STOP_TOKEN_IDS + ENG_MAX_EOS)

static void edit_logit(float *logits, int32_t id, float v, struct saved_logit *saved, int *n) {
    saved[*n].id = id;
    saved[*n].v = logits[id];
    (*n)++;
    logits[id] = v;
}

/* The request's own logit rules, applied in place just before the sampler: logit_bias, then
 * min_tokens' suppression of EOS and stop_token_ids (unless that would leave no token). The
 * model's values go to saved so that the caller restores them: reported logprobs stay the
 * model's own. Returns the number saved. */
static int apply_logit_rules(const struct sch *s, const struct sch_req *r, float *logits,
                             struct saved_logit *saved) {
    const int V = s->bcfg->vocab_size;
    int n = 0;
    for (int i = 0; i < r->n_logit_bias; i++) {
        const int32_t id = r->logit_bias[i].id;
        edit_logit(logits, id, logits[id] + r->logit_bias[i].bias, saved, &n);
    }
    if (r->n_generated >= r->min_tokens) {
        return n;
    }
    const struct eng_model_config *c = s->bcfg;
    const int n_eos = r->ignore_eos ? 0 : c->n_eos;
    if (n_eos + r->n_stop_token_ids >= V) {
        return n; /* could suppress every token: keep the distribution as it is */
    }
    for (int i = 0; i < n_eos; i++) {
        if (c->eos_token_ids[i] >= 0 && c->eos_token_ids[i] < V) {
            edit_logit(logits, c->eos_token_ids[i], -INFINITY, saved, &n);
        }
    }
    for (int i = 0; i < r->n_stop_token_ids; i++) {
        edit_logit(logits, r->stop_token_ids[i], -INFINITY, saved, &n);
    }
    return n;
}

/* Samples r's next token from logits (the worker's row: request rules edit it and are undone
 * before the logprobs are read), emits its token event, and sets *fin to the finish it causes
 * (STOP for eos or a stop token id, LENGTH at max_tokens) or NONE. Fails with KC_EBACKEND and
 * emits nothing when the row holds NaN or +Inf (a model fault): the caller fails r. */
static int sample_and_emit(struct sch *s, struct sch_req *r, float *logits, enum sch_finish *fin,
                           struct kc_error *err) {
    const int V = s->bcfg->vocab_size;
    struct saved_logit saved[SCH_MAX_SAVED_LOGITS];
    const int n_saved = apply_logit_rules(s, r, logits, saved);
    int32_t tok = 0;
    int rc = eng_sampler_sample(&r->sampler, logits, &tok, NULL, err);
    for (int i = n_saved - 1; i >= 0; i--) {
        logits[saved[i].id] = saved[i].v;
    }
    if (rc != KC_OK) {
        kc_error_prefix(err, "generated token %d", r->n_generated);
        return rc;
    }
    eng_sampler_observe(&r->sampler, tok);
    r->last_token = tok;
    r->tokens[r->n_prompt + r->n_generated] = tok;
    r->n_generated++;
    atomic_store_explicit(&r->n_known, r->n_prompt + r->n_generated, memory_order_release);
    const uint64_t now = kc_now_ns();
    if (r->n_generated == 1) {
        r->t_first_token = now;
    }
    r->t_last_token = now;
    struct sch_event ev = {.type = SCH_EV_TOKEN, .id = r->id, .user = r->user, .token = tok};
    if (r->n_logprobs >= 0) {
        event_logprobs(&ev, logits, V, tok, r->n_logprobs);
    }
    if (r->pd_conn != 0) {
        r->pd_first = ev; /* a decode host's request: the token goes out in FIRST */
    } else {
        s->cb(s->cb_ud, &ev);
    }
    const bool early = r->n_generated <= r->min_tokens;
    if (!early && ((!r->ignore_eos && is_eos(s->bcfg, tok)) || is_stop_token(r, tok))) {
        *fin = SCH_FINISH_STOP;
    } else {
        *fin = r->n_generated >= r->max_tokens ? SCH_FINISH_LENGTH : SCH_FINISH_NONE;
    }
    return KC_OK;
}

/* ---- prefill worker ---- */

static void prefill_worker_free(struct sch_prefill_worker *w) {
    eng_ctx_free(w->ctx);
    w->ctx = NULL;
    eng_kvp_ctx_free(w->kvp);
    w->kvp = NULL;
    free(w->logits);
    free(w->all_logits);
    w->logits = w->all_logits = NULL;
}

static int prefill_worker_init(struct sch_prefill_worker *w, struct kc_error *err) {
    struct sch *s = w->s;
    const struct sch_config *c = &s->cfg;
    if (c->pin_cpus) {
        const int first = w->index * c->prefill_threads;
        if (sch__pin_self(first, c->prefill_threads) != KC_OK) {
            KC_WARN("prefill worker %d: cannot pin to cpus [%d, %d); running unpinned", w->index,
                    first, first + c->prefill_threads);
        }
    }
    const int V = s->bcfg->vocab_size;
    w->logits = kc_calloc((size_t)V, sizeof(float));
    if (w->logits == NULL) {
        return kc_error_set(err, KC_ENOMEM, "prefill worker: out of memory");
    }
    /* Elastic: contexts for every core, each GEMM on the team rebalance() gives. */
    const int threads = s->elastic ? s->n_cpus : c->prefill_threads;
    if (s->elastic) {
        eng_dnn_team_source(&w->team);
    }
    eng_forward_stop_source(&w->stop);
    int rc = eng_ctx_create(s->base, c->prefill_chunk, c->max_context, threads, &w->ctx, err);
    if (rc == KC_OK && s->predict_available) {
        rc = eng_kvp_ctx_create(s->base, s->aux, s->pred, c->prefill_chunk, c->max_context, threads,
                                &w->kvp, err);
    }
    return rc;
}

/* One base forward of n tokens of r, from tokens[start], appended to seq (the request's
 * sequence, or its refinement's). */
static int prefill_forward(struct sch_prefill_worker *w, struct sch_req *r, struct eng_seq *seq,
                           int start, int n, enum eng_logits_mode lm, float *logits,
                           struct kc_error *err) {
    struct sch *s = w->s;
    struct eng_batch_item item = {
        .seq = seq,
        .tokens = r->tokens + start,
        .n_tokens = n,
        .logits_mode = lm,
        .logits = logits,
    };
    return eng_forward(w->ctx, s->base, &s->pool, &item, 1, NULL, err);
}

/* Allocates the worker's all-rows logits buffer on first use (prompt_logprobs requests only,
 * so that a server that never scores prompts never holds it). */
static int all_logits_reserve(struct sch_prefill_worker *w, struct kc_error *err) {
    if (w->all_logits != NULL) {
        return KC_OK;
    }
    const size_t V = (size_t)w->s->bcfg->vocab_size;
    size_t rows = SCH_ALL_LOGITS_BYTES / (V * sizeof(float));
    rows = rows < 1                                 ? 1
           : rows > (size_t)w->s->cfg.prefill_chunk ? (size_t)w->s->cfg.prefill_chunk
                                                    : rows;
    w->all_logits = kc_calloc(rows * V, sizeof(float));
    if (w->all_logits == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory for prompt logprobs (%zu x %zu logits)",
                            rows, V);
    }
    w->all_rows = (int)rows;
    return KC_OK;
}

/* Emits the SCH_EV_PROMPT_TOKEN events of a chunk computed with ENG_LOGITS_ALL: row j holds
 * the distribution of position start + j + 1, i.e. of that prompt token, or of the first
 * generated token after the last row (copied to w->logits for sampling). Position 0 has no
 * preceding row; it goes out first, without a logprob. Fails on a non-finite row. */
static int emit_prompt_logprobs(struct sch_prefill_worker *w, struct sch_req *r, int start, int n,
                                struct kc_error *err) {
    struct sch *s = w->s;
    const int V = s->bcfg->vocab_size;
    const int n_top = r->n_logprobs > 0 ? r->n_logprobs : 0;
    if (start == 0) {
        struct sch_event ev = {.type = SCH_EV_PROMPT_TOKEN,
                               .id = r->id,
                               .user = r->user,
                               .token = r->tokens[0],
                               .position = 0,
                               .has_logprob = false};
        s->cb(s->cb_ud, &ev);
    }
    for (int j = 0; j < n; j++) {
        const float *row = w->all_logits + (size_t)j * V;
        const int pos = start + j + 1;
        int rc = eng_logits_check(row, V, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "prompt position %d", pos);
            return rc;
        }
        if (pos == r->n_prompt) {
            memcpy(w->logits, row, (size_t)V * sizeof(float));
            continue;
        }
        struct sch_event ev = {.type = SCH_EV_PROMPT_TOKEN,
                               .id = r->id,
                               .user = r->user,
                               .token = r->tokens[pos],
                               .position = pos};
        event_logprobs(&ev, row, V, r->tokens[pos], n_top);
        s->cb(s->cb_ud, &ev);
    }
    return KC_OK;
}

/* Full prefill in chunks of cfg.prefill_chunk rows, checking cancellation between chunks.
 * Returns KC_ECANCELED when cancelled. */
static int prefill_full(struct sch_prefill_worker *w, struct sch_req *r, sch_hook_fn hook,
                        void *hook_ud, struct kc_error *err) {
    int chunk = w->s->cfg.prefill_chunk;
    if (r->prompt_logprobs) {
        int rc = all_logits_reserve(w, err);
        if (rc != KC_OK) {
            return rc;
        }
        chunk = w->all_rows < chunk ? w->all_rows : chunk;
    }
    int step = 0;
    /* A cached prefix (admit_head) is already in the sequence: start after it. */
    for (int start = r->seq.n_tokens; start < r->n_prompt; start += chunk, step++) {
        if (sch_req_cancelled(r) != SCH_FINISH_NONE) {
            return KC_ECANCELED;
        }
        const int n = r->n_prompt - start < chunk ? r->n_prompt - start : chunk;
        const bool last = start + n == r->n_prompt;
        int rc = r->prompt_logprobs
                     ? prefill_forward(w, r, &r->seq, start, n, ENG_LOGITS_ALL, w->all_logits, err)
                     : prefill_forward(w, r, &r->seq, start, n,
                                       last ? ENG_LOGITS_LAST : ENG_LOGITS_NONE, w->logits, err);
        if (rc == KC_OK && r->prompt_logprobs) {
            rc = emit_prompt_logprobs(w, r, start, n, err);
        }
        if (rc != KC_OK) {
            return rc;
        }
        call_hook(w->s, hook, hook_ud, SCH_HOOK_PREFILL_CHUNK, r->id, step);
    }
    if (w->s->cfg.prefix_caching) {
        eng_kv_prefix_publish(&w->s->pool, &r->seq, r->tokens, r->n_prompt); /* exact KV */
    }
    return KC_OK;
}

/* KV Prediction: aux over t[0..n-2] (after a cached aux prefix), predicted base KV (after a
 * cached exact base prefix), base step on t[n-1]. One engine call: cancellation is checked
 * before and after it (the aux model is the cheap part). The aux sequence lives only for the
 * call; its full blocks stay behind in the aux prefix cache. */
static int prefill_predict(struct sch_prefill_worker *w, struct sch_req *r, struct kc_error *err) {
    struct sch *s = w->s;
    if (sch_req_cancelled(r) != SCH_FINISH_NONE) {
        return KC_ECANCELED;
    }
    const int n_aux = r->n_prompt - 1;
    struct eng_seq aux = {0};
    int a = 0, rc = KC_OK;
    if (s->cfg.prefix_caching) {
        a = eng_kv_prefix_attach(&s->aux_pool, &aux, r->tokens, n_aux);
        rc = a < 0 ? a : KC_OK;
        a = a < 0 ? 0 : a;
    }
    if (rc == KC_OK) {
        rc = eng_seq_reserve(&s->aux_pool, &aux, n_aux);
        if (rc == KC_EBUSY) {
            kc_error_set(err, rc,
                         "the auxiliary KV pool cannot hold this prompt's %d positions "
                         "now (raise --aux-kv-mib)",
                         n_aux);
        }
    }
    struct eng_kvp_timings t = {0};
    if (rc == KC_OK) {
        const struct eng_kvp_seqs io = {
            .base_ctx = w->ctx,
            .base_pool = &s->pool,
            .base = &r->seq,
            .aux_pool = &s->aux_pool,
            .aux = &aux,
        };
        rc = eng_kvp_predict(w->kvp, &io, r->tokens, r->n_prompt, w->logits, &t, err);
    }
    if (rc == KC_OK && s->cfg.prefix_caching) {
        eng_kv_prefix_publish(&s->aux_pool, &aux, r->tokens, n_aux);
    }
    eng_seq_release(&s->aux_pool, &aux);
    if (rc == KC_OK) {
        pthread_mutex_lock(&s->lock);
        s->prefix_queries[1] += (uint64_t)n_aux;
        s->prefix_hits[1] += (uint64_t)a;
        pthread_mutex_unlock(&s->lock);
        r->cached_tokens = a;
        r->aux_ms = t.aux_ms;
        r->predict_ms = t.predict_ms;
        r->base_first_step_ms = t.base_first_step_ms;
    }
    return rc;
}

/* ---- auto mode: queue-cost bookkeeping around the policy (policy.h) ---- */

_Static_assert(SCH_WHY_COUNT <= SCH_STATS_REASONS, "sch_stats.auto_decisions too small");
_Static_assert(SCH_MAX_PREFILL_WORKERS >= 64, "inflight[] smaller than check_config's bound");

/* Whether r would run predict when the policy needs it to (auto or predict asked). */
static bool can_predict(const struct sch *s, const struct sch_req *r) {
    return s->predict_available && r->requested_mode != SCH_MODE_FULL;
}

/* Estimated prefill cost of r at its cheapest mode (sch.lock held). */
static double cheapest_cost(const struct sch *s, const struct sch_req *r) {
    const double f = sch_cost_estimate(&s->model_full, r->n_prompt);
    if (!can_predict(s, r)) {
        return f;
    }
    const double p = sch_cost_estimate(&s->model_predict, r->n_prompt);
    return r->requested_mode == SCH_MODE_PREDICT || p < f ? p : f;
}

/* The policy's inputs common to both call sites (sch.lock held). */
static struct sch_policy_input policy_input(const struct sch *s, const struct sch_req *r,
                                            uint64_t now) {
    double rate = 0.0;
    if (s->arrival_gap_ms > 0.0) {
        /* A lull longer than the usual gap means arrivals slowed down. */
        const double since = (double)(now - s->last_submit_ns) / 1e6;
        const double gap = since > s->arrival_gap_ms ? since : s->arrival_gap_ms;
        rate = 1.0 / gap;
    }
    struct sch_policy_input in = {
        .requested = r->requested_mode,
        .predict_available = s->predict_available,
        .n_prompt = r->n_prompt - r->base_cached_tokens, /* what is left to prefill */
        .n_workers = s->cfg.prefill_workers,
        .arrival_rate_per_ms = rate,
        .arrival_n_prompt = (int)(s->arrival_n_prompt + 0.5),
        .full = &s->model_full,
        .predict = &s->model_predict,
        .ttft_slo_ms = s->cfg.ttft_slo_ms,
        .slo_margin = SCH_SLO_MARGIN,
        .predict_min_prompt = s->cfg.predict_min_prompt,
    };
    return in;
}

/* Logs one auto decision: at info level at most once per SCH_DECISION_LOG_NS (saying how
 * many went unlogged), at debug level always. sch.lock held. */
static void log_decision(struct sch *s, const struct sch_req *r, const struct sch_policy_input *in,
                         const struct sch_policy_decision *d, uint64_t now) {
    const bool info = now - s->log_ns >= SCH_DECISION_LOG_NS || s->log_ns == 0;
    if (!info) {
        s->log_skipped++;
        KC_DEBUG("req=%llu auto: %s reason=%s n_prompt=%d waited=%.1fms ahead=%.1fms "
                 "est_full=%.1fms est_predict=%.1fms slo=%.1fms behind=%d meet=%d/%d",
                 (unsigned long long)r->id, d->shed ? "shed" : sch_mode_name(d->mode),
                 sch_policy_reason_name(d->reason), r->n_prompt, in->waited_ms, in->ahead_ms,
                 d->est_full_ms, d->est_predict_ms, in->ttft_slo_ms, in->n_behind, d->meet_full,
                 d->meet_predict);
        return;
    }
    KC_INFO("req=%llu auto: %s reason=%s n_prompt=%d waited=%.1fms ahead=%.1fms "
            "est_full=%.1fms est_predict=%.1fms slo=%.1fms behind=%d meet=%d/%d "
            "(%llu decisions since the last line)",
            (unsigned long long)r->id, d->shed ? "shed" : sch_mode_name(d->mode),
            sch_policy_reason_name(d->reason), r->n_prompt, in->waited_ms, in->ahead_ms,
            d->est_full_ms, d->est_predict_ms, in->ttft_slo_ms, in->n_behind, d->meet_full,
            d->meet_predict, (unsigned long long)s->log_skipped);
    s->log_ns = now;
    s->log_skipped = 0;
}

/* At submit, before r joins the wait queue: updates the arrival estimates and asks the
 * policy whether r (auto) is hopeless behind the prefills in flight and the requests queued
 * (each at its cheapest mode), shared by the prefill workers. True: shed it (counted,
 * message in err). sch.lock held. */
static bool shed_at_submit(struct sch *s, struct sch_req *r, uint64_t now, struct kc_error *err) {
    if (s->last_submit_ns != 0) {
        const double gap = (double)(now - s->last_submit_ns) / 1e6;
        s->arrival_gap_ms =
            sch_policy_ewma(s->arrival_gap_ms, gap > 1e-3 ? gap : 1e-3, SCH_ARRIVAL_ALPHA);
    }
    s->last_submit_ns = now;
    s->arrival_n_prompt = sch_policy_ewma(s->arrival_n_prompt, r->n_prompt, SCH_ARRIVAL_ALPHA);
    if (!s->cfg.shed_hopeless || r->requested_mode != SCH_MODE_AUTO || !s->predict_available ||
        !(s->cfg.ttft_slo_ms > 0.0)) {
        return false;
    }
    double work = 0.0;
    int busy = 0;
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        if (s->inflight[i].id != 0) {
            const double left = s->inflight[i].est_ms - (double)(now - s->inflight[i].t0_ns) / 1e6;
            work += left > 0.0 ? left : 0.0;
            busy++;
        }
    }
    for (const struct sch_req *q = s->waiting.head; q != NULL; q = q->next) {
        work += cheapest_cost(s, q);
        busy++;
    }
    struct sch_policy_input in = policy_input(s, r, now);
    in.work_ahead = busy >= s->cfg.prefill_workers; /* else a worker is free for it */
    in.ahead_ms = in.work_ahead ? work / s->cfg.prefill_workers : 0.0;
    r->est_wait_ms = in.ahead_ms;
    in.ahead_ms *= s->wait_factor;
    in.shed_hopeless = true;
    struct sch_policy_decision d;
    sch_policy_decide(&in, &d);
    if (!d.shed) {
        return false;
    }
    s->shed++;
    log_decision(s, r, &in, &d, now);
    kc_error_set(err, KC_EBUSY,
                 "no prefill mode can meet the %.0f ms TTFT target behind the queued work: "
                 "estimated %.0f ms",
                 s->cfg.ttft_slo_ms,
                 d.est_predict_ms < d.est_full_ms ? d.est_predict_ms : d.est_full_ms);
    return true;
}

/* Picks the mode for r (at the head of the queue, admitted; the rest of the queue is behind
 * it), counts the decision and records r as in flight. Called with sch.lock held. */
static void choose_mode(struct sch *s, struct sch_req *r) {
    const uint64_t now = kc_now_ns();
    struct sch_policy_waiter behind[SCH_POLICY_BEHIND];
    int n_behind = 0;
    for (const struct sch_req *q = s->waiting.head; q != NULL && n_behind < SCH_POLICY_BEHIND;
         q = q->next) {
        if (q == r) {
            continue;
        }
        behind[n_behind++] = (struct sch_policy_waiter){
            .n_prompt = q->n_prompt,
            .waited_ms = (double)(now - q->t_state[SCH_REQ_QUEUED]) / 1e6,
            .can_predict = can_predict(s, q),
        };
    }
    struct sch_policy_input in = policy_input(s, r, now);
    in.waited_ms = (double)(now - r->t_state[SCH_REQ_QUEUED]) / 1e6;
    if (r->est_wait_ms >= SCH_WAIT_MIN_MS) {
        /* How far off the submit-time estimate was: corrects the next ones. */
        double f = in.waited_ms / r->est_wait_ms;
        f = f < SCH_WAIT_FACTOR_MIN ? SCH_WAIT_FACTOR_MIN
                                    : (f > SCH_WAIT_FACTOR_MAX ? SCH_WAIT_FACTOR_MAX : f);
        s->wait_factor = sch_policy_ewma(s->wait_factor, f, SCH_WAIT_ALPHA);
    }
    in.behind = behind;
    in.n_behind = n_behind;
    struct sch_policy_decision d;
    sch_policy_decide(&in, &d);
    r->mode = d.mode;
    if (r->requested_mode == SCH_MODE_AUTO) {
        s->auto_why[d.mode == SCH_MODE_PREDICT][d.reason]++;
        log_decision(s, r, &in, &d, now);
    }
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        if (s->inflight[i].id == 0) {
            s->inflight[i].id = r->id;
            s->inflight[i].t0_ns = now;
            s->inflight[i].est_ms =
                sch_cost_estimate(d.mode == SCH_MODE_PREDICT ? &s->model_predict : &s->model_full,
                                  r->n_prompt - r->base_cached_tokens);
            break;
        }
    }
}

/* r's prefill ended (sch.lock held): it no longer delays the queue. */
static void inflight_done(struct sch *s, const struct sch_req *r) {
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        if (s->inflight[i].id == r->id) {
            s->inflight[i].id = 0;
            break;
        }
    }
}

/* Takes the head of the wait queue when its blocks can be reserved. Called with sch.lock
 * held; returns the admitted request (now PREFILLING, owned by the caller) or NULL. A head
 * whose reservation fails for lack of memory is failed (outside the lock). */
static struct sch_req *admit_head(struct sch *s, struct sch_req **failed) {
    struct sch_req *r = s->waiting.head;
    if (r == NULL) {
        return NULL;
    }
    /* The exact base KV of a cached prefix first (never the last prompt token, whose logits
     * the prefill must compute; prompt_logprobs needs the logits of every position). */
    int c = 0, rc = KC_OK;
    if (s->cfg.prefix_caching && !r->prompt_logprobs) {
        c = eng_kv_prefix_attach(&s->pool, &r->seq, r->tokens, r->n_prompt - 1);
        rc = c < 0 ? c : KC_OK;
        c = c < 0 ? 0 : c;
    }
    if (rc == KC_OK) {
        rc = eng_seq_reserve(&s->pool, &r->seq, req_positions(r->n_prompt, r->max_tokens));
    }
    if (rc == KC_EBUSY) {
        eng_seq_release(&s->pool, &r->seq); /* its cached prefix stays cached */
        return NULL;                        /* wait for blocks: FIFO, nobody overtakes the head */
    }
    sch_queue_remove(&s->waiting, r);
    if (rc != KC_OK) {
        *failed = r;
        return NULL;
    }
    if (s->cfg.prefix_caching && !r->prompt_logprobs) {
        s->prefix_queries[0] += (uint64_t)r->n_prompt;
        s->prefix_hits[0] += (uint64_t)c;
    }
    r->base_cached_tokens = r->cached_tokens = c;
    choose_mode(s, r);
    sch_req_transition(r, SCH_REQ_PREFILLING);
    s->n_prefilling++;
    return r;
}

/* One step of waiting for first-token work (sch.lock held): ends the cancelled requests first
 * (dropping the lock meanwhile), then tries to admit the head. NULL when nothing is admitted,
 * or when the scheduler began stopping while the lock was dropped. */
static struct sch_req *reap_then_admit(struct sch *s, struct sch_req **failed) {
    while (s->reap.head != NULL) {
        pthread_mutex_unlock(&s->lock);
        reap_cancelled(s);
        pthread_mutex_lock(&s->lock);
    }
    return s->stopping ? NULL : admit_head(s, failed);
}

/* Runs r's prefill, emits its first token and hands it off (or ends it). */
static void prefill_one(struct sch_prefill_worker *w, struct sch_req *r, sch_hook_fn hook,
                        void *hook_ud) {
    struct sch *s = w->s;
    struct kc_error err = {0};
    int rc;
    if (r->mode == SCH_MODE_PREDICT) {
        rc = prefill_predict(w, r, &err);
    } else {
        rc = prefill_full(w, r, hook, hook_ud, &err);
    }
    if (rc == KC_OK && sch_req_cancelled(r) != SCH_FINISH_NONE) {
        rc = KC_ECANCELED;
    }
    pthread_mutex_lock(&s->lock);
    r->prefill_threads = s->elastic ? w->team_peak : team_now(s, &w->team, s->cfg.prefill_threads);
    pthread_mutex_unlock(&s->lock);
    if (rc != KC_OK) {
        pthread_mutex_lock(&s->lock);
        s->n_prefilling--;
        inflight_done(s, r);
        pthread_mutex_unlock(&s->lock);
        if (rc == KC_ECANCELED) {
            end_cancelled(s, r);
        } else {
            KC_WARN("req=%llu prefill failed: %s", (unsigned long long)r->id, err.msg);
            end_request(s, r, SCH_REQ_FAILED, SCH_FINISH_NONE, rc, err.msg);
        }
        return;
    }
    const double prefill_ms = (double)(kc_now_ns() - r->t_state[SCH_REQ_PREFILLING]) / 1e6;
    /* A prompt-only request (max_tokens 0) ends here; its scored prompt is its first output. */
    enum sch_finish fin = SCH_FINISH_LENGTH;
    if (r->max_tokens > 0) {
        rc = sample_and_emit(s, r, w->logits, &fin, &err);
    } else {
        r->t_first_token = r->t_last_token = kc_now_ns();
    }
    if (rc == KC_OK && r->pd_conn != 0 && sch_req_cancelled(r) == SCH_FINISH_NONE) {
        /* A decode host's request: its first token and K/V go there; it ends here (below,
         * as finished), which frees its blocks. */
        sch__pd_ship(s->pd, r, fin);
        if (fin == SCH_FINISH_NONE) {
            fin = SCH_FINISH_LENGTH;
        }
    }

    pthread_mutex_lock(&s->lock);
    s->n_prefilling--;
    inflight_done(s, r);
    /* A prompt_logprobs prefill (lm head on every row, smaller chunks) and one that reused a
     * cached prefix are no samples of the cost auto mode plans with. */
    const double per_token = prefill_ms / r->n_prompt;
    if (r->cached_tokens > 0 || r->base_cached_tokens > 0) {
        /* no sample */
    } else if (r->mode == SCH_MODE_PREDICT) {
        s->cost_predict = sch_policy_ewma(s->cost_predict, per_token, SCH_COST_ALPHA);
        sch_cost_observe(&s->model_predict, r->n_prompt, prefill_ms);
        sch_cost_borrow(&s->model_full, &s->model_predict, r->n_prompt);
    } else if (!r->prompt_logprobs) {
        s->cost_full = sch_policy_ewma(s->cost_full, per_token, SCH_COST_ALPHA);
        sch_cost_observe(&s->model_full, r->n_prompt, prefill_ms);
        sch_cost_borrow(&s->model_predict, &s->model_full, r->n_prompt);
    }
    const bool hand_off =
        rc == KC_OK && fin == SCH_FINISH_NONE && sch_req_cancelled(r) == SCH_FINISH_NONE;
    if (hand_off) {
        /* Predicted KV gets its exact replacement computed when a prefill worker is idle
         * (refine_run); a fully cached exact prompt has nothing to refine. */
        if (r->refine && r->mode == SCH_MODE_PREDICT && r->base_cached_tokens < r->n_prompt - 1) {
            refine_push(s, r);
        }
        sch_req_transition(r, SCH_REQ_HANDED_OFF);
        sch_queue_push(&s->handoff, r);
        s->n_running++;
        pthread_cond_signal(&s->decode_cv);
    }
    pthread_mutex_unlock(&s->lock);
    if (!hand_off) {
        if (rc != KC_OK) {
            KC_WARN("req=%llu failed: %s", (unsigned long long)r->id, err.msg);
            end_request(s, r, SCH_REQ_FAILED, SCH_FINISH_NONE, rc, err.msg);
        } else if (fin != SCH_FINISH_NONE) {
            end_request(s, r, SCH_REQ_FINISHED, fin, 0, NULL);
        } else {
            end_cancelled(s, r);
        }
    }
}

/* ---- refinement: the job ---- */

/* The next queued refinement that can still pay off, or NULL (sch.lock held). A job is worth
 * starting when its prefill, at the full-mode cost model's estimate doubled (it shares the
 * cores with the decode worker, which is busy with its request), would end before the request
 * is expected to: its tokens still to generate at the measured decode step time. Otherwise it
 * would only slow that decode down: it ends as "skipped" at once. */
static struct sch_req *refine_next_worth(struct sch *s) {
    struct sch_req *r;
    while ((r = refine_pop(s)) != NULL) {
        const int left =
            r->max_tokens - atomic_load_explicit(&r->n_known, memory_order_relaxed) + r->n_prompt;
        const double refine_ms = 2.0 * sch_cost_estimate(&s->model_full, r->n_prompt);
        if (s->decode_step_ms <= 0.0 || refine_ms < left * s->decode_step_ms) {
            return r;
        }
        r->refine_state = SCH_RSTATE_NONE;
        r->refine_result = SCH_REFINE_SKIPPED;
    }
    return NULL;
}

/* First-token work is waiting (or the scheduler stops): every refinement in flight stops
 * within a layer (sch.lock held). */
static void stop_refinements(struct sch *s) {
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        if (s->pw[i].refining != NULL) {
            atomic_store_explicit(&s->pw[i].stop, 1, memory_order_relaxed);
        }
    }
}

/*
 * Runs r's refinement job (taken from the refine queue, RUNNING) on an idle prefill worker:
 * the exact base prefill of every position the decode worker's sequence holds (prompt and
 * generated tokens, from r->tokens), in prefill_chunk steps, into r->refine_seq, after * whatever
 * exact prefix the cache has. It yields to first-token work (invariant 9): a waiting request stops
 * it within a layer, its exact blocks go to the prefix cache, so that the retry resumes there, and
 * the job goes back to the end of the queue. It catches up with the tokens decoded meanwhile while
 * they are worth a prefill step; the decode worker feeds the rest and swaps (refine_swap). Without
 * the lock.
 */
static void refine_run(struct sch_prefill_worker *w, struct sch_req *r, sch_hook_fn hook,
                       void *hook_ud) {
    struct sch *s = w->s;
    struct eng_seq *rs = &r->refine_seq;
    struct kc_error err = {0};
    bool preempted = false, abandoned = false;
    int target = atomic_load_explicit(&r->n_known, memory_order_acquire) - 1;
    int rc = KC_OK;
    if (s->cfg.prefix_caching) {
        const int c = eng_kv_prefix_attach(&s->pool, rs, r->tokens, target);
        rc = c < 0 ? c : KC_OK;
    }
    /* Every block the request can still need, as at admission (request.h invariant 3): the
     * swapped-in sequence must never take a block in a decode step. */
    if (rc == KC_OK) {
        rc = eng_seq_reserve(&s->pool, rs, req_positions(r->n_prompt, r->max_tokens));
    }
    for (int step = 0; rc == KC_OK && !preempted && !abandoned;) {
        while (rs->n_tokens < target) {
            pthread_mutex_lock(&s->lock);
            abandoned = r->orphaned || s->stopping;
            preempted = s->waiting.head != NULL;
            if (!abandoned && !preempted) {
                /* A stop for work another worker took already: go on. */
                atomic_store_explicit(&w->stop, 0, memory_order_relaxed);
            }
            pthread_mutex_unlock(&s->lock);
            if (abandoned || preempted) {
                break;
            }
            const int left = target - rs->n_tokens;
            const int n = left < s->cfg.prefill_chunk ? left : s->cfg.prefill_chunk;
            rc = prefill_forward(w, r, rs, rs->n_tokens, n, ENG_LOGITS_NONE, NULL, &err);
            if (rc == KC_ECANCELED) {
                rc = KC_OK; /* stopped within a layer: the checks above say why */
                continue;
            }
            if (rc != KC_OK) {
                break;
            }
            call_hook(s, hook, hook_ud, SCH_HOOK_REFINE_CHUNK, r->id, step++);
        }
        if (rc != KC_OK || abandoned || preempted) {
            break;
        }
        const int known = atomic_load_explicit(&r->n_known, memory_order_acquire) - 1;
        if (known - rs->n_tokens <= SCH_REFINE_CATCHUP) {
            break; /* the decode worker feeds the last few (refine_swap) */
        }
        target = known;
    }
    const bool ready = rc == KC_OK && !preempted && !abandoned;
    if (rc == KC_OK && s->cfg.prefix_caching) {
        eng_kv_prefix_publish(&s->pool, rs, r->tokens, rs->n_tokens); /* exact KV */
    }
    if (!ready) {
        eng_seq_release(&s->pool, rs);
    }
    pthread_mutex_lock(&s->lock);
    s->n_refine_running--;
    w->refining = NULL;
    atomic_store_explicit(&w->stop, 0, memory_order_relaxed);
    const bool orphan = r->orphaned;
    if (!orphan) {
        if (ready) {
            r->refine_state = SCH_RSTATE_READY;
        } else if (preempted) {
            refine_push(s, r);
        } else {
            r->refine_state = SCH_RSTATE_NONE;
            r->refine_result =
                rc == KC_OK || rc == KC_EBUSY ? SCH_REFINE_SKIPPED : SCH_REFINE_FAILED;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (rc != KC_OK && rc != KC_EBUSY) {
        KC_WARN("req=%llu refinement failed (decoding goes on with the predicted KV): %s",
                (unsigned long long)r->id, err.msg);
    }
    if (orphan) {
        eng_seq_release(&s->pool, rs);
        req_free(r); /* end_request left it to us (refine_end) */
    }
}

static void *prefill_main(void *arg) {
    struct sch_prefill_worker *w = arg;
    struct sch *s = w->s;
    char name[16];
    snprintf(name, sizeof(name), "kc-prefill%d", w->index);
    name_self(name);
    struct kc_error err = {0};
    int rc = prefill_worker_init(w, &err);
    pthread_mutex_lock(&s->lock);
    if (rc != KC_OK && s->start_rc == KC_OK) {
        s->start_rc = rc;
        snprintf(s->start_msg, sizeof(s->start_msg), "prefill worker %d: %s", w->index, err.msg);
    }
    s->n_reported++;
    pthread_cond_broadcast(&s->idle_cv);
    while (rc == KC_OK) {
        /* Wait for an admissible head of the queue, ending cancelled requests meanwhile. */
        struct sch_req *r = NULL, *failed = NULL, *job = NULL;
        while (!s->stopping) {
            r = reap_then_admit(s, &failed);
            if (r != NULL || failed != NULL || s->stopping) {
                break;
            } /* Idle: refinement, below any first-token work (refine_run). */
            if (s->waiting.head == NULL && (job = refine_next_worth(s)) != NULL) {
                job->refine_state = SCH_RSTATE_RUNNING;
                job->refine_worker = w->index;
                w->refining = job;
                atomic_store_explicit(&w->stop, 0, memory_order_relaxed);
                s->n_refine_running++;
                break;
            }
            pthread_cond_wait(&s->prefill_cv, &s->lock);
        }
        if (r == NULL && failed == NULL && job == NULL) {
            break; /* stopping */
        }
        sch_hook_fn hook = s->hook;
        void *hook_ud = s->hook_ud;
        pthread_mutex_unlock(&s->lock);
        if (failed != NULL) {
            end_request(s, failed, SCH_REQ_FAILED, SCH_FINISH_NONE, KC_ENOMEM,
                        "out of memory reserving KV blocks");
        } else {
            pthread_mutex_lock(&s->lock);
            w->busy = true;
            s->n_prefill_busy++;
            rebalance(s);
            w->team_peak = atomic_load_explicit(&w->team, memory_order_relaxed);
            pthread_mutex_unlock(&s->lock);
            if (job != NULL) {
                refine_run(w, job, hook, hook_ud);
            } else {
                prefill_one(w, r, hook, hook_ud);
            }
            pthread_mutex_lock(&s->lock);
            w->busy = false;
            if (--s->n_prefill_busy == 0) {
                s->decode_shared_ms = 0.0; /* the contention episode ended: re-probe next time */
            }
            rebalance(s);
            pthread_mutex_unlock(&s->lock);
        }
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    prefill_worker_free(w);
    return NULL;
}

/* ---- decode worker ---- */

static void decode_worker_free(struct sch_decode_worker *w) {
    eng_ctx_free(w->ctx);
    free(w->running);
    free(w->items);
    free(w->finish);
    free(w->rc);
    free(w->err);
    free(w->logits);
    w->ctx = NULL;
    w->running = NULL;
    w->items = NULL;
    w->finish = NULL;
    w->rc = NULL;
    w->err = NULL;
    w->logits = NULL;
}

static int decode_worker_init(struct sch_decode_worker *w, struct kc_error *err) {
    struct sch *s = w->s;
    const struct sch_config *c = &s->cfg;
    if (c->pin_cpus) {
        const int first = c->prefill_workers * c->prefill_threads;
        if (sch__pin_self(first, c->decode_threads) != KC_OK) {
            KC_WARN("decode worker: cannot pin to cpus [%d, %d); running unpinned", first,
                    first + c->decode_threads);
        }
    }
    const size_t V = (size_t)s->bcfg->vocab_size, R = (size_t)c->max_running;
    w->running = kc_calloc(R, sizeof(*w->running));
    w->items = kc_calloc(R, sizeof(*w->items));
    w->finish = kc_calloc(R, sizeof(*w->finish));
    w->rc = kc_calloc(R, sizeof(*w->rc));
    w->err = kc_calloc(R, sizeof(*w->err));
    w->logits = kc_calloc(R * V, sizeof(float));
    if (w->running == NULL || w->items == NULL || w->finish == NULL || w->rc == NULL ||
        w->err == NULL || w->logits == NULL) {
        return kc_error_set(err, KC_ENOMEM, "decode worker: out of memory");
    }
    if (s->elastic) {
        eng_dnn_team_source(&w->team);
    }
    return eng_ctx_create(s->base, c->max_running, c->max_context,
                          s->elastic ? s->n_cpus : c->decode_threads, &w->ctx, err);
}

/* Removes running[i] (keeping join order) and returns it. */
static struct sch_req *running_take(struct sch_decode_worker *w, int i) {
    struct sch_req *r = w->running[i];
    memmove(&w->running[i], &w->running[i + 1], (size_t)(w->n_running - i - 1) * sizeof(r));
    w->n_running--;
    return r;
}

/* Joins handed-off sequences up to max_running and moves cancelled ones waiting in the
 * hand-off queue to *reaped. Called with sch.lock held. */
static void decode_join(struct sch *s, struct sch_decode_worker *w, struct sch_queue *reaped) {
    sch_queue_splice(reaped, &s->reap);
    for (struct sch_req *r = s->handoff.head, *nx; r != NULL; r = nx) {
        nx = r->next;
        if (sch_req_cancelled(r) != SCH_FINISH_NONE) {
            sch_queue_remove(&s->handoff, r);
            sch_queue_push(reaped, r);
        }
    }
    while (w->n_running < s->cfg.max_running && s->handoff.head != NULL) {
        struct sch_req *r = sch_queue_pop(&s->handoff);
        sch_req_transition(r, SCH_REQ_DECODING);
        w->running[w->n_running++] = r;
    }
    for (int i = 0; i < w->n_running; i++) {
        struct sch_req *r = w->running[i];
        if (r->refine_state == SCH_RSTATE_READY) {
            r->refine_state = SCH_RSTATE_NONE; /* the job is done: refine_seq is ours */
            r->refine_swap = true;
        }
    }
}

/* Swaps r's exact KV in at a step boundary (the decode worker, without the lock): feeds the
 * tokens decoded since its job stopped (a few), then r decodes on refine_seq and its predicted
 * blocks go back to the pool. A failed catch-up keeps the predicted KV. */
static void refine_swap(struct sch *s, struct sch_decode_worker *w, struct sch_req *r) {
    struct eng_seq *rs = &r->refine_seq;
    r->refine_swap = false;
    const int gap = r->seq.n_tokens - rs->n_tokens;
    KC_ASSERT(gap >= 0);
    struct kc_error err = {0};
    int rc = KC_OK;
    if (gap > 0) {
        struct eng_batch_item item = {
            .seq = rs,
            .tokens = r->tokens + rs->n_tokens,
            .n_tokens = gap,
            .logits_mode = ENG_LOGITS_NONE,
        };
        rc = eng_forward(w->ctx, s->base, &s->pool, &item, 1, NULL, &err);
    }
    if (rc != KC_OK) {
        KC_WARN("req=%llu refinement catch-up failed (decoding goes on with the predicted KV): "
                "%s",
                (unsigned long long)r->id, err.msg);
        eng_seq_release(&s->pool, rs);
        r->refine_result = SCH_REFINE_FAILED;
        return;
    }
    struct eng_seq predicted = r->seq;
    r->seq = *rs;
    memset(rs, 0, sizeof(*rs));
    eng_seq_release(&s->pool, &predicted);
    r->refine_result = SCH_REFINE_SWAPPED;
    r->refined_at_token = r->n_generated;
    r->t_refined = kc_now_ns();
    KC_DEBUG("req=%llu refined at token %d (%d positions from the job, %d fed at the swap)",
             (unsigned long long)r->id, r->n_generated, r->seq.n_tokens - gap, gap);
}

/* One continuous-batching step over every running sequence. Allocates nothing. */
static void decode_step(struct sch *s, struct sch_decode_worker *w) {
    const int V = s->bcfg->vocab_size;
    const int n = w->n_running;
    for (int i = 0; i < n; i++) {
        struct sch_req *r = w->running[i];
        w->items[i] = (struct eng_batch_item){
            .seq = &r->seq,
            .tokens = &r->last_token,
            .n_tokens = 1,
            .logits_mode = ENG_LOGITS_LAST,
            .logits = w->logits + (size_t)i * V,
        };
    }
    struct kc_error err = {0};
    int rc = eng_forward(w->ctx, s->base, &s->pool, w->items, n, NULL, &err);
    if (rc != KC_OK) {
        KC_ERROR("decode step of %d sequences failed: %s", n, err.msg);
        while (w->n_running > 0) {
            end_request(s, running_take(w, 0), SCH_REQ_FAILED, SCH_FINISH_NONE, rc, err.msg);
        }
        return;
    }
    /* Sample each sequence from its row and emit its token; retire finished sequences at
     * once, keeping join order. A row the sampler refuses (NaN/Inf logits) fails its own
     * sequence only. */
    for (int i = 0; i < n; i++) {
        w->rc[i] =
            sample_and_emit(s, w->running[i], w->logits + (size_t)i * V, &w->finish[i], &w->err[i]);
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        struct sch_req *r = w->running[i];
        if (w->rc[i] != KC_OK) {
            KC_WARN("req=%llu failed: %s", (unsigned long long)r->id, w->err[i].msg);
            end_request(s, r, SCH_REQ_FAILED, SCH_FINISH_NONE, w->rc[i], w->err[i].msg);
        } else if (w->finish[i] != SCH_FINISH_NONE) {
            end_request(s, r, SCH_REQ_FINISHED, w->finish[i], 0, NULL);
        } else {
            w->running[kept++] = r;
        }
    }
    w->n_running = kept;
}

static void *decode_main(void *arg) {
    struct sch_decode_worker *w = arg;
    struct sch *s = w->s;
    name_self("kc-decode");
    struct kc_error err = {0};
    int rc = decode_worker_init(w, &err);
    pthread_mutex_lock(&s->lock);
    if (rc != KC_OK && s->start_rc == KC_OK) {
        s->start_rc = rc;
        snprintf(s->start_msg, sizeof(s->start_msg), "decode worker: %s", err.msg);
    }
    s->n_reported++;
    pthread_cond_broadcast(&s->idle_cv);
    while (rc == KC_OK) {
        while (s->reap.head == NULL && s->handoff.head == NULL && w->n_running == 0) {
            if (s->decode_busy) {
                s->decode_busy = false; /* idle: the prefills get every core */
                rebalance(s);
            }
            if (s->decode_stop) {
                goto out;
            }
            pthread_cond_wait(&s->decode_cv, &s->lock);
        }
        sch_hook_fn hook = s->hook;
        void *hook_ud = s->hook_ud;
        if (hook != NULL) {
            pthread_mutex_unlock(&s->lock);
            hook(hook_ud, SCH_HOOK_DECODE_JOIN, 0, w->n_running);
            pthread_mutex_lock(&s->lock);
        }
        struct sch_queue reaped = {0};
        decode_join(s, w, &reaped);
        if (!s->decode_busy && w->n_running > 0) {
            s->decode_busy = true;
            rebalance(s);
        }
        pthread_mutex_unlock(&s->lock);

        struct sch_req *r;
        while ((r = sch_queue_pop(&reaped)) != NULL) {
            end_cancelled(s, r);
        }
        for (int i = 0; i < w->n_running;) {
            if (sch_req_cancelled(w->running[i]) != SCH_FINISH_NONE) {
                end_cancelled(s, running_take(w, i));
            } else {
                if (w->running[i]->refine_swap) {
                    refine_swap(s, w, w->running[i]);
                }
                i++;
            }
        }
        double step_ms = 0.0;
        int team = 0;
        /* A step of a full-width decode team while a prefill runs measures the sharing. */
        pthread_mutex_lock(&s->lock);
        bool shared = s->elastic && s->n_prefill_busy > 0;
        pthread_mutex_unlock(&s->lock);
        if (w->n_running > 0) {
            call_hook(s, hook, hook_ud, SCH_HOOK_DECODE_BEGIN, 0, w->n_running);
            team = team_now(s, &w->team, s->cfg.decode_threads);
            const uint64_t t0 = kc_now_ns();
            decode_step(s, w);
            step_ms = (double)(kc_now_ns() - t0) / 1e6;
            call_hook(s, hook, hook_ud, SCH_HOOK_DECODE_END, 0, w->n_running);
        }
        pthread_mutex_lock(&s->lock);
        if (team > 0) {
            s->decode_step_ms = sch_policy_ewma(s->decode_step_ms, step_ms, SCH_STEP_ALPHA);
        }
        if (team > 0 && s->elastic) {
            s->decode_work_ms =
                sch_team_work_update(s->decode_work_ms, step_ms, team, SCH_STEP_ALPHA);
            if (shared && s->n_prefill_busy > 0 && team == s->n_cpus) {
                s->decode_shared_ms =
                    sch_team_work_update(s->decode_shared_ms, step_ms, 1, SCH_STEP_ALPHA);
            }
            rebalance(s);
        }
    }
out:
    pthread_mutex_unlock(&s->lock);
    decode_worker_free(w);
    return NULL;
}

/* ---- public API ---- */

static int check_config(const struct sch_config *c, const struct eng_model_config *bc,
                        struct kc_error *err) {
    if (c->prefill_threads < 0 || c->prefill_threads > 1024 || c->decode_threads < 0 ||
        c->decode_threads > 1024) {
        return kc_error_set(err, KC_EINVAL,
                            "scheduler: prefill/decode threads must be in [0, 1024]");
    }
    if (c->prefill_workers < 1 || c->prefill_workers > 64) {
        return kc_error_set(err, KC_EINVAL, "scheduler: prefill_workers %d not in [1, 64]",
                            c->prefill_workers);
    }
    if (c->block_size < 1 || c->block_size > 4096) {
        return kc_error_set(err, KC_EINVAL, "scheduler: block_size %d not in [1, 4096]",
                            c->block_size);
    }
    if (c->kv_dtype != ENG_DTYPE_F32 && c->kv_dtype != ENG_DTYPE_BF16) {
        return kc_error_set(err, KC_EINVAL, "scheduler: kv_dtype must be f32 or bf16");
    }
    if (c->max_queue < 1 || c->max_queue > 1000000) {
        return kc_error_set(err, KC_EINVAL, "scheduler: max_queue %d not in [1, 1000000]",
                            c->max_queue);
    }
    if (c->max_running < 1 || c->max_running > 4096) {
        return kc_error_set(err, KC_EINVAL, "scheduler: max_running %d not in [1, 4096]",
                            c->max_running);
    }
    if (c->prefill_chunk < 1 || c->prefill_chunk > 65536) {
        return kc_error_set(err, KC_EINVAL, "scheduler: prefill_chunk %d not in [1, 65536]",
                            c->prefill_chunk);
    }
    if (c->max_context < 0 || c->max_context > bc->max_position_embeddings) {
        return kc_error_set(err, KC_EINVAL,
                            "scheduler: max_context %d not in [0, %d] (the model's positions)",
                            c->max_context, bc->max_position_embeddings);
    }
    if (!(c->ttft_slo_ms >= 0.0 && isfinite(c->ttft_slo_ms))) {
        return kc_error_set(err, KC_EINVAL, "scheduler: ttft_slo_ms must be finite and >= 0");
    }
    if (!(c->tpot_slo_ms >= 0.0 && isfinite(c->tpot_slo_ms))) {
        return kc_error_set(err, KC_EINVAL, "scheduler: tpot_slo_ms must be finite and >= 0");
    }
    return KC_OK;
}

static void stop_workers(struct sch *s) {
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    s->draining = true;
    stop_refinements(s);
    for (struct sch_req *r = s->live; r != NULL; r = r->live_next) {
        sch_req_cancel(r, SCH_FINISH_ABORT);
    }
    pthread_cond_broadcast(&s->prefill_cv);
    pthread_cond_broadcast(&s->decode_cv);
    pthread_mutex_unlock(&s->lock);
    if (s->pd != NULL) {
        sch__pd_stop(s->pd); /* its remote prefills end before the workers go */
    }
    for (int i = 0; i < s->cfg.prefill_workers; i++) {
        if (s->pw[i].started) {
            pthread_join(s->pw[i].thread, NULL);
            s->pw[i].started = false;
        }
    }
    /* No prefill worker is left to hand off: the decode worker may stop once it is empty. */
    pthread_mutex_lock(&s->lock);
    s->decode_stop = true;
    pthread_cond_broadcast(&s->decode_cv);
    pthread_mutex_unlock(&s->lock);
    if (s->dw.started) {
        pthread_join(s->dw.thread, NULL);
        s->dw.started = false;
    }
    /* Requests no worker reached end here, on the caller's thread. */
    struct sch_queue rest = {0};
    pthread_mutex_lock(&s->lock);
    sch_queue_splice(&rest, &s->reap);
    sch_queue_splice(&rest, &s->waiting);
    sch_queue_splice(&rest, &s->handoff);
    pthread_mutex_unlock(&s->lock);
    struct sch_req *r;
    while ((r = sch_queue_pop(&rest)) != NULL) {
        end_cancelled(s, r);
    }
    KC_ASSERT(s->n_live == 0);
}

/* Prefill FLOPs of a model: per prompt token (every weight GEMM) and per n^2 (causal
 * attention: QK^T and PV, n^2/2 rows of 2*D FLOPs each, per head and layer). */
static double flops_per_token(const struct eng_model_config *c) {
    const double C = c->hidden_size, F = c->intermediate_size;
    const double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    return 2.0 * c->n_layers * (C * q + 2.0 * C * kv + q * C + 3.0 * C * F);
}
static double flops_per_token2(const struct eng_model_config *c) {
    return 2.0 * c->n_layers * (double)c->n_heads * c->head_dim;
}

/* Seeds the auto-mode cost models from the model shapes and assumed per-thread rates; the
 * first measured prefills replace the guess (policy.h). */
static void seed_cost_models(struct sch *s, const struct eng_model_config *bc,
                             const struct eng_model_config *ac) {
    /* Elastic teams: a lone prefill runs on every core. */
    const double threads = s->elastic                   ? s->n_cpus
                           : s->cfg.prefill_threads > 0 ? s->cfg.prefill_threads
                                                        : 1;
    const double gemm = SCH_PRIOR_GEMM_FLOPS * threads / 1e3; /* FLOPs per ms */
    const double attn = SCH_PRIOR_ATTN_FLOPS * threads / 1e3;
    const double head = 2.0 * bc->hidden_size * (double)bc->vocab_size / gemm; /* lm head */
    const double b_full = flops_per_token(bc) / gemm;
    sch_cost_init(&s->model_full, 1.0 + head, b_full, flops_per_token2(bc) / attn);
    if (ac != NULL) {
        /* aux over the prompt, the predictor (a fraction of the base), one base step */
        sch_cost_init(&s->model_predict, 1.0 + head + b_full,
                      flops_per_token(ac) / gemm + SCH_PREDICT_OVERHEAD * b_full,
                      flops_per_token2(ac) / attn);
    } else {
        s->model_predict = s->model_full;
    }
}

/* The aux pool: aux_kv_bytes, or (0) one max_context prompt per prefill worker and at least
 * as many positions as the base pool has (aux KV is the cheap kind; the surplus holds the aux
 * prefix cache). */
static int aux_pool_init(struct sch *s, const struct eng_model_config *ac, int base_blocks,
                         struct kc_error *err) {
    const struct sch_config *c = &s->cfg;
    const size_t block_bytes = eng_kv_block_bytes_of(ac, c->block_size, c->kv_dtype);
    size_t n = c->aux_kv_bytes / block_bytes;
    if (c->aux_kv_bytes == 0) {
        n = (size_t)c->prefill_workers *
            (size_t)((c->max_context + c->block_size - 1) / c->block_size);
        n = n > (size_t)base_blocks ? n : (size_t)base_blocks;
    }
    if (n > INT32_MAX / 2) {
        return kc_error_set(err, KC_EINVAL, "scheduler: the aux KV pool would have %zu blocks", n);
    }
    return eng_kv_pool_init_dtype(&s->aux_pool, ac, c->block_size, (int)n, c->kv_dtype, err);
}

static void sch_memory_free(struct sch *s) {
    eng_kv_pool_free(&s->aux_pool);
    eng_kv_pool_free(&s->pool);
    pthread_cond_destroy(&s->prefill_cv);
    pthread_cond_destroy(&s->decode_cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->lock);
    free(s->pw);
    free(s);
}

int sch_create(const struct sch_config *cfg, const struct eng_model *base,
               const struct eng_model *aux, const struct eng_kvp *predictor, sch_event_cb cb,
               void *cb_ud, struct sch **out, struct kc_error *err) {
    if (cfg == NULL || base == NULL || cb == NULL || out == NULL) {
        return kc_error_set(err, KC_EINVAL, "scheduler: missing config, model or callback");
    }
    const struct eng_model_config *bc = eng_model_config_of(base);
    int rc = check_config(cfg, bc, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct sch_config c = *cfg;
    if (c.role == SCH_ROLE_DECODE) {
        /* Every prompt position's K/V comes from a prefill host: cached blocks would be
         * overwritten (kv_cache.h invariant 4), so a decode host caches no prefixes. */
        c.prefix_caching = false;
        c.refine = false;
    }
    const int n_cpus = sch_cpu_count();
    if (c.pin_cpus) {
        /* Pinned workers need disjoint fixed teams: a count left at 0 takes its share of the
         * cores (decode half, the prefill workers the rest), at least 1. */
        if (c.decode_threads == 0) {
            c.decode_threads = n_cpus / 2 > 0 ? n_cpus / 2 : 1;
        }
        if (c.prefill_threads == 0) {
            const int rest = (n_cpus - c.decode_threads) / c.prefill_workers;
            c.prefill_threads = rest > 0 ? rest : 1;
        }
    }
    if (c.max_context == 0) {
        c.max_context = bc->max_position_embeddings;
    }
    bool predict_available = false;
    if (aux != NULL && predictor != NULL) {
        const struct eng_model_config *ac = eng_model_config_of(aux);
        rc = eng_kvp_check_models(predictor, bc, ac, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "scheduler");
            return rc;
        }
        const size_t need = (size_t)c.prefill_workers *
                            (size_t)((c.max_context + c.block_size - 1) / c.block_size) *
                            eng_kv_block_bytes_of(ac, c.block_size, c.kv_dtype);
        if (c.aux_kv_bytes != 0 && c.aux_kv_bytes < need) {
            return kc_error_set(err, KC_EINVAL,
                                "scheduler: aux_kv_bytes %zu is below the %zu bytes %d prefill "
                                "worker(s) need to hold one %d-token prompt each",
                                c.aux_kv_bytes, need, c.prefill_workers, c.max_context);
        }
        predict_available = true;
    }
    if ((aux != NULL || predictor != NULL) && !predict_available) {
        KC_WARN("scheduler: no usable auxiliary model + predictor; predict falls back to full");
    }
    const size_t block_bytes = eng_kv_block_bytes_of(bc, c.block_size, c.kv_dtype);
    const size_t n_blocks = c.base_kv_bytes / block_bytes;
    if (n_blocks < 1 || n_blocks > INT32_MAX / 2) {
        return kc_error_set(err, KC_EINVAL,
                            "scheduler: base_kv_bytes %zu gives %zu KV blocks of %zu bytes (need "
                            "1 to %d)",
                            c.base_kv_bytes, n_blocks, block_bytes, INT32_MAX / 2);
    }

    struct sch *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return kc_error_set(err, KC_ENOMEM, "scheduler: out of memory");
    }
    s->cfg = c;
    s->base = base;
    s->aux = predict_available ? aux : NULL;
    s->pred = predict_available ? predictor : NULL;
    s->bcfg = bc;
    s->predict_available = predict_available;
    s->wait_factor = 1.0;
    s->cb = cb;
    s->cb_ud = cb_ud;
    s->start_rc = KC_OK;
    s->elastic = c.prefill_threads == 0 && c.decode_threads == 0;
    s->n_cpus = n_cpus;
    seed_cost_models(s, bc, predict_available ? eng_model_config_of(aux) : NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->prefill_cv, NULL);
    pthread_cond_init(&s->decode_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    s->pw = kc_calloc((size_t)c.prefill_workers, sizeof(*s->pw));
    if (s->pw == NULL) {
        sch_memory_free(s);
        return kc_error_set(err, KC_ENOMEM, "scheduler: out of memory");
    }
    rc = eng_kv_pool_init_dtype(&s->pool, bc, c.block_size, (int)n_blocks, c.kv_dtype, err);
    if (rc == KC_OK && predict_available) {
        rc = aux_pool_init(s, eng_model_config_of(aux), (int)n_blocks, err);
    }
    if (rc == KC_OK && c.prefix_caching) {
        rc = eng_kv_prefix_enable(&s->pool, err);
        if (rc == KC_OK && predict_available) {
            rc = eng_kv_prefix_enable(&s->aux_pool, err);
        }
    }
    if (rc != KC_OK) {
        sch_memory_free(s);
        return rc;
    }
    for (int i = 0; i < c.prefill_workers; i++) {
        atomic_init(&s->pw[i].team, s->n_cpus);
    }
    atomic_init(&s->dw.team, s->n_cpus);

    /* Start the workers one at a time; each builds its engine state on its own thread and
     * reports before the next starts. Serial start-up keeps the oneDNN primitive creation of
     * different workers (eng_ctx_create prepares every primitive) from overlapping: the
     * primitive cache is thread-safe, but uninstrumented under TSan. */
    for (int i = 0; i <= c.prefill_workers && rc == KC_OK; i++) {
        const bool decode = i == c.prefill_workers;
        if ((!decode && c.role == SCH_ROLE_DECODE) || (decode && c.role == SCH_ROLE_PREFILL)) {
            /* A decode host prefills nothing itself. A prefill host decodes nothing: every
             * request is a decode host's, shipped and ended after its first token, so no
             * decode worker, no decode context and no batch buffers; its cancelled queued
             * requests are ended by the pd receive path that cancels them (sch__reap). */
            s->n_reported++;
            continue;
        }
        pthread_t *th = decode ? &s->dw.thread : &s->pw[i].thread;
        if (decode) {
            s->dw.s = s;
        } else {
            s->pw[i].s = s;
            s->pw[i].index = i;
        }
        if (pthread_create(th, NULL, decode ? decode_main : prefill_main,
                           decode ? (void *)&s->dw : (void *)&s->pw[i]) != 0) {
            rc = kc_error_set(err, KC_ENOMEM, "scheduler: cannot start a worker thread");
            goto fail;
        }
        if (decode) {
            s->dw.started = true;
        } else {
            s->pw[i].started = true;
        }
        pthread_mutex_lock(&s->lock);
        while (s->n_reported < i + 1) {
            pthread_cond_wait(&s->idle_cv, &s->lock);
        }
        rc = s->start_rc;
        pthread_mutex_unlock(&s->lock);
    }
    if (rc != KC_OK) {
        kc_error_set(err, rc, "scheduler: %s", s->start_msg);
        goto fail;
    }
    rc = sch__pd_create(s, &c, &s->pd, err);
    if (rc != KC_OK) {
        goto fail;
    }
    if (s->elastic) {
        KC_INFO("scheduler: %d base KV blocks of %d tokens (%zu bytes each, %s), context %d, "
                "%d prefill worker(s), elastic teams over %d cores (decode step target %.0f "
                "ms), max_running %d, predict %s",
                (int)n_blocks, c.block_size, block_bytes,
                c.kv_dtype == ENG_DTYPE_BF16 ? "bf16" : "f32", c.max_context, c.prefill_workers,
                s->n_cpus, c.tpot_slo_ms, c.max_running,
                predict_available ? "available" : "unavailable");
    } else {
        KC_INFO("scheduler: %d base KV blocks of %d tokens (%zu bytes each, %s), context %d, "
                "%d prefill worker(s) x %d threads, decode %d threads, max_running %d, "
                "predict %s",
                (int)n_blocks, c.block_size, block_bytes,
                c.kv_dtype == ENG_DTYPE_BF16 ? "bf16" : "f32", c.max_context, c.prefill_workers,
                c.prefill_threads, c.decode_threads, c.max_running,
                predict_available ? "available" : "unavailable");
    }
    *out = s;
    return KC_OK;
fail:
    stop_workers(s);
    sch__pd_free(s->pd);
    sch_memory_free(s);
    return rc;
}

/* ---- disaggregated serving: what pd_sched.c needs of the scheduler (sched_internal.h) ---- */

void sch__reap(struct sch *s) {
    reap_cancelled(s);
}

struct sch_req *sch__remote_admit(struct sch *s, int wait_ms) {
    struct sch_req *r = NULL, *failed = NULL;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        r = reap_then_admit(s, &failed);
        if (r != NULL || failed != NULL || s->stopping || wait_ms <= 0) {
            break;
        }
        /* prefill_cv is on CLOCK_REALTIME: the timeout is a bound on the wait, not a deadline
         * to keep exactly. */
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        rt.tv_nsec += (long)wait_ms * 1000000L;
        rt.tv_sec += rt.tv_nsec / 1000000000L;
        rt.tv_nsec %= 1000000000L;
        if (pthread_cond_timedwait(&s->prefill_cv, &s->lock, &rt) == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (failed != NULL) {
        end_request(s, failed, SCH_REQ_FAILED, SCH_FINISH_NONE, KC_ENOMEM,
                    "out of memory reserving KV blocks");
    }
    return r;
}

bool sch__remote_waiting(struct sch *s) {
    pthread_mutex_lock(&s->lock);
    const bool w = s->waiting.head != NULL || s->reap.head != NULL;
    pthread_mutex_unlock(&s->lock);
    return w;
}

void sch__remote_first(struct sch *s, struct sch_req *r, const struct sch_pd_first *f) {
    const int32_t tok = f->token;
    r->mode = f->mode_used;
    r->cached_tokens = f->cached_tokens;
    r->aux_ms = f->aux_ms;
    r->predict_ms = f->predict_ms;
    r->base_first_step_ms = f->base_first_step_ms;
    /* The prefill host sampled with this request's sampler: continue its PRNG stream, and
     * count the token for the penalties as it did. */
    r->sampler.rng[0] = f->rng[0];
    r->sampler.rng[1] = f->rng[1];
    eng_sampler_observe(&r->sampler, tok);
    r->last_token = tok;
    r->tokens[r->n_prompt + r->n_generated] = tok;
    r->n_generated++;
    atomic_store_explicit(&r->n_known, r->n_prompt + r->n_generated, memory_order_release);
    r->t_first_token = r->t_last_token = kc_now_ns();
    struct sch_event ev = {.type = SCH_EV_TOKEN, .id = r->id, .user = r->user, .token = tok};
    if (r->n_logprobs >= 0 && f->has_logprob) {
        ev.has_logprob = true;
        ev.logprob = f->logprob;
        ev.n_top = f->n_top < r->n_logprobs ? f->n_top : r->n_logprobs;
        memcpy(ev.top_ids, f->top_ids, (size_t)ev.n_top * sizeof(int32_t));
        memcpy(ev.top_logprobs, f->top_logprobs, (size_t)ev.n_top * sizeof(float));
    }
    s->cb(s->cb_ud, &ev);
}

void sch__remote_handoff(struct sch *s, struct sch_req *r, int n_tokens) {
    r->seq.n_tokens = n_tokens;
    pthread_mutex_lock(&s->lock);
    s->n_prefilling--;
    inflight_done(s, r);
    sch_req_transition(r, SCH_REQ_HANDED_OFF);
    sch_queue_push(&s->handoff, r);
    s->n_running++;
    pthread_cond_signal(&s->decode_cv);
    pthread_mutex_unlock(&s->lock);
}

void sch__remote_end(struct sch *s, struct sch_req *r, enum sch_req_state state,
                     enum sch_finish finish, int error, const char *message) {
    pthread_mutex_lock(&s->lock);
    s->n_prefilling--;
    inflight_done(s, r);
    pthread_mutex_unlock(&s->lock);
    if (state == SCH_REQ_CANCELLED) {
        end_cancelled(s, r);
    } else {
        end_request(s, r, state, finish, error, message);
    }
}

struct eng_kv_pool *sch__pool(struct sch *s) {
    return &s->pool;
}

int sch__vocab_size(struct sch *s) {
    return s->bcfg->vocab_size;
}

int sch_pd_peers(struct sch *s, struct sch_pd_peer_info *out, int max) {
    return s->pd != NULL ? sch__pd_peers(s->pd, out, max) : 0;
}

int sch_pd_port(struct sch *s) {
    return s->pd != NULL ? sch__pd_port(s->pd) : 0;
}

void sch__set_hook(struct sch *s, sch_hook_fn fn, void *ud) {
    pthread_mutex_lock(&s->lock);
    s->hook = fn;
    s->hook_ud = ud;
    pthread_mutex_unlock(&s->lock);
}

/* stop_token_ids, min_tokens and logit_bias: counts, ids and ranges (NaN-safe). */
static int check_extras(const struct sch_request_params *p, int V, struct kc_error *err) {
    if (p->n_stop_token_ids < 0 || p->n_stop_token_ids > SCH_MAX_STOP_TOKEN_IDS ||
        (p->n_stop_token_ids > 0 && p->stop_token_ids == NULL)) {
        return kc_error_set(err, KC_EINVAL, "stop_token_ids: %d ids (at most %d)",
                            p->n_stop_token_ids, SCH_MAX_STOP_TOKEN_IDS);
    }
    for (int i = 0; i < p->n_stop_token_ids; i++) {
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= V) {
            return kc_error_set(err, KC_ERANGE, "stop_token_ids[%d] = %d is outside [0, %d)", i,
                                p->stop_token_ids[i], V);
        }
    }
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens) {
        return kc_error_set(err, KC_ERANGE, "min_tokens must be in [0, max_tokens = %d] (got %d)",
                            p->max_tokens, p->min_tokens);
    }
    if (p->n_logit_bias < 0 || p->n_logit_bias > SCH_MAX_LOGIT_BIAS ||
        (p->n_logit_bias > 0 && p->logit_bias == NULL)) {
        return kc_error_set(err, KC_EINVAL, "logit_bias: %d entries (at most %d)", p->n_logit_bias,
                            SCH_MAX_LOGIT_BIAS);
    }
    for (int i = 0; i < p->n_logit_bias; i++) {
        const struct sch_logit_bias *b = &p->logit_bias[i];
        if (b->id < 0 || b->id >= V || !(b->bias >= -100.0f && b->bias <= 100.0f)) {
            return kc_error_set(err, KC_ERANGE,
                                "logit_bias entry %d: token %d must be in [0, %d) and its bias "
                                "in [-100, 100]",
                                i, b->id, V);
        }
    }
    return KC_OK;
}

static int submit(struct sch *s, const struct sch_request_params *p, void *user, uint64_t conn,
                  uint64_t peer_req, int wire_dtype, uint64_t *id, struct kc_error *err);

int sch_submit(struct sch *s, const struct sch_request_params *p, void *user, uint64_t *id,
               struct kc_error *err) {
    if (s != NULL && s->cfg.role == SCH_ROLE_PREFILL) {
        /* No decode worker here (sch_create): a local request would never be decoded. */
        return kc_error_set(err, KC_EINVAL,
                            "a prefill host (--role prefill) serves decode hosts only");
    }
    return submit(s, p, user, 0, 0, 0, id, err);
}

int sch__submit_remote(struct sch *s, const struct sch_request_params *p, uint64_t conn,
                       uint64_t peer_req, int wire_dtype, uint64_t *id, struct kc_error *err) {
    return submit(s, p, NULL, conn, peer_req, wire_dtype, id, err);
}

static int submit(struct sch *s, const struct sch_request_params *p, void *user, uint64_t conn,
                  uint64_t peer_req, int wire_dtype, uint64_t *id, struct kc_error *err) {
    if (s == NULL || p == NULL || id == NULL) {
        return kc_error_set(err, KC_EINVAL, "submit: missing scheduler, parameters or id");
    }
    const struct eng_model_config *bc = s->bcfg;
    if (p->prompt == NULL || p->n_prompt < 1) {
        return kc_error_set(err, KC_EINVAL, "the prompt is empty");
    }
    if (p->max_tokens < (p->prompt_logprobs ? 0 : 1)) {
        return kc_error_set(err, KC_EINVAL, "max_tokens must be at least %d (got %d)",
                            p->prompt_logprobs ? 0 : 1, p->max_tokens);
    }
    if (p->n_logprobs < -1 || p->n_logprobs > SCH_MAX_LOGPROBS) {
        return kc_error_set(err, KC_ERANGE, "logprobs must be in [0, %d] (got %d)",
                            SCH_MAX_LOGPROBS, p->n_logprobs);
    }
    if (p->mode != SCH_MODE_AUTO && p->mode != SCH_MODE_FULL && p->mode != SCH_MODE_PREDICT) {
        return kc_error_set(err, KC_EINVAL, "unknown prefill mode %d", (int)p->mode);
    }
    if (p->refine != SCH_REFINE_DEFAULT && p->refine != SCH_REFINE_ON &&
        p->refine != SCH_REFINE_OFF) {
        return kc_error_set(err, KC_EINVAL, "unknown refine setting %d", (int)p->refine);
    }
    int rc = eng_sampler_params_validate(&p->sampling, err);
    if (rc != KC_OK) {
        return rc;
    }
    rc = check_extras(p, bc->vocab_size, err);
    if (rc != KC_OK) {
        return rc;
    }
    for (int i = 0; i < p->n_prompt; i++) {
        if (p->prompt[i] < 0 || p->prompt[i] >= bc->vocab_size) {
            return kc_error_set(err, KC_ERANGE,
                                "prompt token %d at position %d is outside the "
                                "vocabulary [0, %d)",
                                p->prompt[i], i, bc->vocab_size);
        }
    }
    const int64_t total = (int64_t)p->n_prompt + p->max_tokens;
    if (total > s->cfg.max_context) {
        return kc_error_set(err, KC_ECONTEXT,
                            "this model's maximum context length is %d tokens, but %lld were "
                            "requested (%d in the prompt, %d for the completion)",
                            s->cfg.max_context, (long long)total, p->n_prompt, p->max_tokens);
    }
    const int need = eng_kv_blocks_for(&s->pool, req_positions(p->n_prompt, p->max_tokens));
    if (need > s->pool.n_blocks) {
        return kc_error_set(err, KC_ECONTEXT,
                            "%d prompt + %d completion tokens need %d KV blocks, but the whole "
                            "KV cache holds %d (%d tokens)",
                            p->n_prompt, p->max_tokens, need, s->pool.n_blocks,
                            s->pool.n_blocks * s->pool.block_size);
    }

    struct sch_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    r->tokens = kc_calloc((size_t)p->n_prompt + (size_t)p->max_tokens, sizeof(int32_t));
    if (r->tokens == NULL) {
        free(r);
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    rc = eng_sampler_init(&r->sampler, &p->sampling, bc->vocab_size, err);
    if (rc != KC_OK) {
        free(r->tokens);
        free(r);
        return rc;
    }
    if (p->n_stop_token_ids > 0) {
        r->stop_token_ids = kc_calloc((size_t)p->n_stop_token_ids, sizeof(int32_t));
    }
    if (p->n_logit_bias > 0) {
        r->logit_bias = kc_calloc((size_t)p->n_logit_bias, sizeof(struct sch_logit_bias));
    }
    if ((p->n_stop_token_ids > 0 && r->stop_token_ids == NULL) ||
        (p->n_logit_bias > 0 && r->logit_bias == NULL)) {
        req_free(r);
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    if (p->n_stop_token_ids > 0) {
        memcpy(r->stop_token_ids, p->stop_token_ids, (size_t)p->n_stop_token_ids * sizeof(int32_t));
    }
    r->n_stop_token_ids = p->n_stop_token_ids;
    if (p->n_logit_bias > 0) {
        memcpy(r->logit_bias, p->logit_bias,
               (size_t)p->n_logit_bias * sizeof(struct sch_logit_bias));
    }
    r->n_logit_bias = p->n_logit_bias;
    r->min_tokens = p->min_tokens;
    memcpy(r->tokens, p->prompt, (size_t)p->n_prompt * sizeof(int32_t));
    for (int i = 0; i < p->n_prompt; i++) {
        eng_sampler_observe(&r->sampler, p->prompt[i]);
    }
    r->user = user;
    r->pd_conn = conn;
    r->pd_peer_req = peer_req;
    r->pd_wire_dtype = wire_dtype;
    r->n_prompt = p->n_prompt;
    r->max_tokens = p->max_tokens;
    r->ignore_eos = p->ignore_eos;
    r->n_logprobs = p->n_logprobs;
    r->prompt_logprobs = p->prompt_logprobs;
    atomic_init(&r->n_known, p->n_prompt);
    r->refine = p->refine == SCH_REFINE_ON || (p->refine == SCH_REFINE_DEFAULT && s->cfg.refine);
    r->refined_at_token = -1;
    /* Logits at every prompt position exist only in a base prefill. */
    r->requested_mode = p->prompt_logprobs ? SCH_MODE_FULL : p->mode;
    r->est_wait_ms = -1.0;
    r->mode = SCH_MODE_FULL;
    r->state = SCH_REQ_QUEUED;
    atomic_init(&r->cancel, SCH_FINISH_NONE);

    pthread_mutex_lock(&s->lock);
    if (s->draining) {
        pthread_mutex_unlock(&s->lock);
        req_free(r);
        return kc_error_set(err, KC_EBUSY, "the server is shutting down");
    }
    if (s->waiting.n >= s->cfg.max_queue) {
        const int n = s->waiting.n;
        pthread_mutex_unlock(&s->lock);
        req_free(r);
        return kc_error_set(err, KC_EBUSY, "the wait queue is full (%d requests)", n);
    }
    r->id = ++s->next_id;
    const uint64_t now = kc_now_ns();
    if (shed_at_submit(s, r, now, err)) {
        pthread_mutex_unlock(&s->lock);
        req_free(r);
        return KC_EBUSY;
    }
    r->t_state[SCH_REQ_QUEUED] = now;
    r->live_next = s->live;
    if (s->live != NULL) {
        s->live->live_prev = r;
    }
    s->live = r;
    s->n_live++;
    sch_queue_push(&s->waiting, r);
    stop_refinements(s);
    /* A decode host sends it from this thread when it can (sch__pd_dispatch_now): the
     * dispatcher is woken only when that did not happen. */
    const bool remote = s->cfg.role == SCH_ROLE_DECODE && s->pd != NULL;
    if (!remote) {
        pthread_cond_signal(&s->prefill_cv);
    }
    *id = r->id;
    pthread_mutex_unlock(&s->lock);
    if (remote) {
        const bool sent = sch__pd_dispatch_now(s->pd);
        pthread_mutex_lock(&s->lock);
        if (!sent || s->waiting.head != NULL || s->reap.head != NULL) {
            pthread_cond_signal(&s->prefill_cv); /* the rest is the dispatcher's */
        }
        pthread_mutex_unlock(&s->lock);
    }
    return KC_OK;
}

void sch_cancel(struct sch *s, uint64_t id, enum sch_finish finish) {
    if (s == NULL) {
        return;
    }
    if (finish != SCH_FINISH_STOP && finish != SCH_FINISH_LENGTH) {
        finish = SCH_FINISH_ABORT;
    }
    pthread_mutex_lock(&s->lock);
    for (struct sch_req *r = s->live; r != NULL; r = r->live_next) {
        if (r->id != id) {
            continue;
        }
        if (sch_req_cancel(r, finish) && r->state == SCH_REQ_QUEUED) {
            /* Out of the wait queue now; a worker ends it (invariant 4). */
            sch_queue_remove(&s->waiting, r);
            sch_queue_push(&s->reap, r);
            pthread_cond_broadcast(&s->prefill_cv);
            pthread_cond_signal(&s->decode_cv);
        }
        break;
    }
    pthread_mutex_unlock(&s->lock);
}

void sch_stats_get(struct sch *s, struct sch_stats *out) {
    struct sch_stats st = {0};
    pthread_mutex_lock(&s->lock);
    st.queued = s->waiting.n + s->reap.n;
    st.prefilling = s->n_prefilling;
    st.running = s->n_running;
    st.prefill_ms_per_token_full = s->cost_full;
    st.prefill_ms_per_token_predict = s->cost_predict;
    memcpy(st.auto_decisions, s->auto_why, sizeof(st.auto_decisions));
    st.shed = s->shed;
    sch_cost_coefs(&s->model_full, &st.cost_full_abc[0], &st.cost_full_abc[1],
                   &st.cost_full_abc[2]);
    sch_cost_coefs(&s->model_predict, &st.cost_predict_abc[0], &st.cost_predict_abc[1],
                   &st.cost_predict_abc[2]);
    memcpy(st.prefix_queries, s->prefix_queries, sizeof(st.prefix_queries));
    memcpy(st.prefix_hits, s->prefix_hits, sizeof(st.prefix_hits));
    st.refine_queued = s->n_refine_queued;
    st.refine_running = s->n_refine_running;
    struct eng_kv_pool_stats ps;
    eng_kv_pool_stats_get(&s->pool, &ps);
    st.base_blocks_free = ps.n_free + ps.n_cached_idle;
    st.base_blocks_cached = ps.n_cached_idle;
    st.base_blocks_total = s->pool.n_blocks;
    if (s->aux_pool.slab != NULL) {
        eng_kv_pool_stats_get(&s->aux_pool, &ps);
        st.aux_blocks_free = ps.n_free + ps.n_cached_idle;
        st.aux_blocks_cached = ps.n_cached_idle;
        st.aux_blocks_total = s->aux_pool.n_blocks;
    }
    pthread_mutex_unlock(&s->lock);
    if (s->pd != NULL) {
        sch__pd_stats(s->pd, &st);
    }
    *out = st;
}

int sch__check_pools(struct sch *s, bool idle, struct kc_error *err) {
    int rc = eng_kv_pool_check(&s->pool, idle ? 0 : -1, err);
    if (rc == KC_OK && s->aux_pool.slab != NULL) {
        rc = eng_kv_pool_check(&s->aux_pool, idle ? 0 : -1, err);
    }
    return rc;
}

void sch__drain(struct sch *s, int timeout_ms) {
    if (s == NULL) {
        return;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    const int64_t ms = timeout_ms > 0 ? timeout_ms : 0;
    deadline.tv_sec += (time_t)(ms / 1000);
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    while (s->n_live > 0) {
        if (pthread_cond_timedwait(&s->idle_cv, &s->lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    if (s->n_live > 0) {
        KC_INFO("drain: %d request(s) still running after %d ms; cancelling them", s->n_live,
                timeout_ms);
        for (struct sch_req *r = s->live; r != NULL; r = r->live_next) {
            if (sch_req_cancel(r, SCH_FINISH_ABORT) && r->state == SCH_REQ_QUEUED) {
                sch_queue_remove(&s->waiting, r);
                sch_queue_push(&s->reap, r);
            }
        }
        pthread_cond_broadcast(&s->prefill_cv);
        pthread_cond_broadcast(&s->decode_cv);
        /* Cancelled requests end within one prefill chunk or decode step. */
        while (s->n_live > 0) {
            pthread_cond_wait(&s->idle_cv, &s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void sch_free(struct sch *s) {
    if (s == NULL) {
        return;
    }
    stop_workers(s);
    sch__pd_free(s->pd);
    sch_memory_free(s);
}
