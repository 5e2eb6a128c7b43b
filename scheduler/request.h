/*
 * request.h — one request inside the scheduler: its state machine, who owns it in each
 * state, the KV sequence and sampler it carries, and a timestamp per transition.
 *
 * Place in the data flow: sch_submit builds a struct sch_req; prefill and decode workers
 * move it through the states below; the stage that ends it emits the terminal event and
 * frees it. Internal to scheduler/ (the server sees only ids and events).
 *
 * State machine (function making each transition in [brackets], owner in (parens)):
 *
 *                sch_submit
 *                    |
 *                    v
 *   +-----------> QUEUED  (wait queue; sch.lock)
 *   |                | [prefill_admit: blocks reserved, mode chosen]
 *   |                v
 *   |           PREFILLING  (the prefill worker that admitted it)
 *   |                | [prefill_handoff: first token sampled + emitted, sequence pushed]
 *   |                v
 *   |           HANDED_OFF  (hand-off queue; sch.lock)
 *   |                | [decode_join: joins the running batch]
 *   |                v
 *   |            DECODING  (the decode worker)
 *   |                | [decode_retire]
 *   |                v
 *   |   FINISHED | CANCELLED | FAILED   (nobody: the event is emitted, the request freed)
 *   |
 *   +- also legal: QUEUED -> CANCELLED [sch_cancel via the reap list] | FAILED [admission
 *      out of memory]; PREFILLING -> FINISHED [first token is eos or max_tokens == 1,
 *      or max_tokens == 0: prompt logprobs only]
 *      | CANCELLED [flag seen between chunks] | FAILED [engine error];
 *      HANDED_OFF -> CANCELLED [flag seen at join, or scheduler teardown];
 *      DECODING -> CANCELLED | FAILED.
 *
 * Design choice (issue 7 described the other option): the prefill worker, not the decode
 * worker, produces the first token. Both prefill modes end with a base-model step over the
 * last prompt token (full: the last chunk; predict: eng_kvp's base step on t[n-1]), so the
 * logits of the first token already exist on the prefill worker. Sampling and emitting the
 * first token there (a) gives the honest, earliest TTFT — it does not wait for the decode
 * worker to finish its current batched step and join the sequence — and (b) avoids running
 * t[n-1] through the base model twice. The hand-off then carries the sequence's block
 * table, its sampler (PRNG state and penalty counts) and the first sampled token, which the
 * decode worker's first step feeds at position n_prompt.
 *
 * DESIGN invariants:
 *  1. Exactly one owner per state; fields below marked (owner) are touched only by the
 *     owner, without the lock. Ownership moves only through lock-protected queues, which
 *     gives the happens-before edge between the old and the new owner.
 *  2. Every request leaves exactly one terminal event; after it the id is dead.
 *  3. The base sequence holds, from admission to the end, every block the request can need
 *     (n_prompt + max(max_tokens, 1) - 1 positions), so a decode step never takes a block
 *     and never allocates. The owner that ends the request releases them. *  4. `cancel` is the
 * only field written by other threads while a worker owns the request; it is atomic and set once
 * (the first finish wins). Refinement adds a second, parallel owner of refine_seq only (see the
 * refine_* fields), and reads tokens below n_known.
 */
#ifndef SCH_REQUEST_H
#define SCH_REQUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "scheduler/scheduler.h"

/* Where a request's refinement job is (guarded by sch.lock). */
enum sch_refine_state {
    SCH_RSTATE_NONE = 0, /* no job (not asked, not predict, finished, or given up) */
    SCH_RSTATE_QUEUED,   /* on the refine queue, refine_seq empty */
    SCH_RSTATE_RUNNING,
    /* a prefill worker computes refine_seq */ SCH_RSTATE_READY, /* refine_seq holds what the job
                                                                    computed: the decode worker
                                                                    swaps */
};

enum sch_req_state {
    SCH_REQ_QUEUED = 0,
    SCH_REQ_PREFILLING,
    SCH_REQ_HANDED_OFF,
    SCH_REQ_DECODING,
    SCH_REQ_FINISHED,
    SCH_REQ_CANCELLED,
    SCH_REQ_FAILED,
    SCH_REQ_N_STATES
};

struct sch_req {
    uint64_t id;
    void *user;
    enum sch_req_state state;
    /* Links of whichever list holds the request (wait queue, hand-off, reap): at most one. */
    struct sch_req *prev, *next;
    /* Links of the scheduler's list of live requests (sch_cancel looks ids up there). */
    struct sch_req *live_prev, *live_next;

    /* The prompt, then each generated token as it is sampled: [n_prompt + max_tokens], owned.
     * Positions below n_known are immutable; the owner appends (refinement reads them). */
    int32_t *tokens;
    atomic_int n_known;

    /* Immutable after submit. */
    int n_prompt;
    int max_tokens;
    bool ignore_eos;
    int n_logprobs;       /* -1: none; 0..SCH_MAX_LOGPROBS */
    bool prompt_logprobs; /* report every prompt token's logprob (forces full prefill) */
    enum sch_prefill_mode requested_mode;
    int32_t *stop_token_ids; /* [n_stop_token_ids], owned copy or NULL */
    int n_stop_token_ids;
    int min_tokens;
    struct sch_logit_bias *logit_bias; /* [n_logit_bias], owned copy or NULL */
    int n_logit_bias;
    double est_wait_ms; /* auto mode: queue wait estimated at submit (sch.lock); < 0: none */

    /* (owner) */
    enum sch_prefill_mode mode; /* the mode used, set at admission */
    struct eng_seq seq;         /* base KV: block table, positions filled */
    struct eng_sampler sampler; /* own params, seed, PRNG state and penalty counts */
    int32_t last_token;         /* sampled, not yet fed to the model */
    int n_generated;
    double aux_ms, predict_ms, base_first_step_ms;
    int prefill_threads;    /* the widest team its prefill ran on (owner: the prefill worker) */
    int cached_tokens;      /* prefix cache: prompt tokens whose prefill was saved */
    int base_cached_tokens; /* prefix cache: prompt tokens whose exact base KV was reused */

    /* Refinement (scheduler.c, "refinement"): a predict-mode sequence's exact KV, computed by
     * a job on an idle prefill worker into refine_seq and swapped in by the decode worker.
     * refine_state and refine_next are guarded by sch.lock; refine_seq belongs to the job
     * while RUNNING, to the request's owner otherwise. */
    bool refine; /* asked for (request or server default) */
    enum sch_refine_state refine_state;
    struct sch_req *refine_next; /* refine queue link */
    struct eng_seq refine_seq;
    bool orphaned;     /* ended while its job ran: the job frees it */
    int refine_worker; /* RUNNING: the prefill worker running the job */
    bool refine_swap;  /* (decode worker) READY seen: swap before the next step */
    enum sch_refine_result refine_result;
    int refined_at_token;
    uint64_t t_refined;

    /* Disaggregated serving, prefill host (pd_sched.c): the decode host's connection (0: a
     * local request) and request id, the K/V dtype it wants, and the first token's event,
     * kept for FIRST instead of being emitted. Immutable after submit but pd_first (owner). */
    uint64_t pd_conn;
    uint64_t pd_peer_req;
    int pd_wire_dtype;
    struct sch_event pd_first;

    /* 0 or the enum sch_finish the request was cancelled with (set once, any thread). */
    atomic_int cancel;

    /* kc_now_ns() when the request entered each state (0: never). */
    uint64_t t_state[SCH_REQ_N_STATES];
    uint64_t t_first_token; /* when the first token event was emitted */
    uint64_t t_last_token;
};

/* Name of a state, for logs ("queued", "prefilling", ...). */
const char *sch_req_state_name(enum sch_req_state s);

/* Whether from -> to is an edge of the state machine drawn above. */
bool sch_req_transition_legal(enum sch_req_state from, enum sch_req_state to);

/* Moves r to state `to`, stamping the time; asserts that the edge is legal (a scheduler
 * bug otherwise). Called by the owner of r. */
void sch_req_transition(struct sch_req *r, enum sch_req_state to);

/* Requests cancellation with finish f (STOP or ABORT); the first call wins. Returns whether
 * this call set the flag. Any thread. */
bool sch_req_cancel(struct sch_req *r, enum sch_finish f);

/* The finish r was cancelled with, or SCH_FINISH_NONE. Any thread. */
enum sch_finish sch_req_cancelled(const struct sch_req *r);

/* Fills the timings of r's terminal event from its timestamps. */
void sch_req_timings(const struct sch_req *r, struct sch_timings *out);

/* ---- test-only (no production caller; the state-machine tests use it) ---- */

/* Whether s is terminal (FINISHED, CANCELLED, FAILED). */
bool sch__req_state_terminal(enum sch_req_state s);

#endif /* SCH_REQUEST_H */
