/*
 * sched_internal.h — scheduler internals shared between its .c files and its tests: CPU
 * pinning and the test hooks. Not part of the API the server uses.
 */
#ifndef SCH_SCHED_INTERNAL_H
#define SCH_SCHED_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "scheduler/request.h"
#include "scheduler/scheduler.h"

/* Pins the calling thread to CPUs [first_cpu, first_cpu + n_cpus). KC_ERANGE when those
 * CPUs are not all online, KC_EINVAL when the kernel refuses. */
int sch__pin_self(int first_cpu, int n_cpus);

/* ---- elastic teams (teams.c) ---- */

/* What is busy when the teams are (re)planned. */
struct sch_team_input {
    int n_cpus;                   /* cores the scheduler may use (>= 1) */
    int n_prefilling;             /* prefill workers running a prefill now */
    bool decode_busy;             /* the decode worker has sequences to step */
    double decode_step_work_ms;   /* one decode step's cost in core-milliseconds (step time x
                                   * team size, EWMA); <= 0: not measured yet */
    double decode_shared_step_ms; /* decode step time (EWMA) measured in this contention
                                   * episode while both sides ran full-width teams; <= 0:
                                   * not measured yet */
    double tpot_target_ms;        /* the decode step time to protect; <= 0: none */
};
/* OpenMP team sizes: of each prefilling worker, and of the decode worker. */
struct sch_team_split {
    int prefill;
    int decode;
};
/* Plans the teams: a side alone gets every core (prefills share them). When both are busy,
 * both keep every core (the kernel time-slices the teams) while decode_shared_step_ms is
 * unmeasured or within tpot_target_ms (or there is no target); once it misses the target,
 * decode gets the fewest cores meeting it under linear scaling of decode_step_work_ms (at
 * most n_cpus - 1; half when unknown or when no split meets it) and the prefills share the
 * rest. Every team is >= 1, so prefill workers beyond the free cores oversubscribe. Pure. */
void sch_team_split(const struct sch_team_input *in, struct sch_team_split *out);
/* The EWMA of a decode step's core-milliseconds after a step of step_ms on `team` threads. */
double sch_team_work_update(double work_ms, double step_ms, int team, double alpha);

/* Points in the workers' loops where a test may observe or pause them. Hooks run on the
 * worker thread with no scheduler lock held; they may call sch_cancel and block (briefly). */
enum sch_hook_point {
    SCH_HOOK_PREFILL_CHUNK = 0, /* after each prefill chunk of request id (step = chunk) */
    SCH_HOOK_DECODE_JOIN,       /* the decode worker has work, before it joins hand-offs */
    SCH_HOOK_DECODE_BEGIN,      /* before a decode step of step = n running sequences */
    SCH_HOOK_DECODE_END,        /* after that step's tokens were emitted */
    SCH_HOOK_REFINE_CHUNK,      /* after each refinement chunk of request id (step = chunk) */
};
typedef void (*sch_hook_fn)(void *ud, enum sch_hook_point point, uint64_t id, int step);

/* Installs a hook; call before the first submit. */
void sch__set_hook(struct sch *s, sch_hook_fn fn, void *ud);

/* ---- test-only (no production caller: the server drains its own requests, serve.c) ---- */

/* Stops admitting (submit returns KC_EBUSY), lets running requests finish, and returns
 * when all are done or timeout_ms passed (then cancels the rest). */
void sch__drain(struct sch *s, int timeout_ms);

/* Checks both KV pools' accounting (eng_kv_pool_check): with idle true, also that no block is
 * referenced (every request ended). KC_EINVAL with the first broken rule. */
int sch__check_pools(struct sch *s, bool idle, struct kc_error *err);

/* ---- disaggregated serving: the seam between scheduler.c and pd_sched.c ---- */

struct sch_req;
struct sch_pd;
struct sch_pd_first;
struct eng_kv_pool;

/* pd_sched.c, called by scheduler.c. */

/* Starts the prefill host's listener or the decode host's peers and dispatcher (role ALL:
 * *out NULL). shape_ctx: the scheduler's max_context. */
int sch__pd_create(struct sch *s, const struct sch_config *c, struct sch_pd **out,
                   struct kc_error *err);
/* Decode host: stops dispatching and ends every request it holds (cancelled), before the
 * workers stop. Prefill host: stops accepting. */
void sch__pd_stop(struct sch_pd *pd);
void sch__pd_free(struct sch_pd *pd);
/* Prefill host: r (a remote request) has its first token in r->pd_first and its K/V in
 * r->seq: send FIRST and the K/V to its decode host (fin: the finish the first token caused). */
void sch__pd_ship(struct sch_pd *pd, struct sch_req *r, enum sch_finish fin);
/* Prefill host: r (remote) ended with its terminal event ev; tells the decode host when it
 * failed or was cancelled before its FIRST went out, and forgets it. */
void sch__pd_ended(struct sch_pd *pd, struct sch_req *r, const struct sch_event *ev);
/* Decode host, on the thread that just submitted: admits the head of the wait queue and sends
 * its SUBMIT now when a prefill host has room, instead of waking the dispatcher (one thread
 * wake-up less before the prefill host starts). Returns false when it did not (no room, no
 * blocks, nothing waiting): the dispatcher's job then. */
bool sch__pd_dispatch_now(struct sch_pd *pd);
void sch__pd_stats(struct sch_pd *pd, struct sch_stats *st);
int sch__pd_peers(struct sch_pd *pd, struct sch_pd_peer_info *out, int max);
int sch__pd_port(struct sch_pd *pd);

/* scheduler.c, called by pd_sched.c. */

/* Prefill host: sch_submit for a decode host's request (its events go to pd, not the
 * server). */
int sch__submit_remote(struct sch *s, const struct sch_request_params *p, uint64_t conn,
                       uint64_t peer_req, int wire_dtype, uint64_t *id, struct kc_error *err);
/* Ends the cancelled requests waiting on the reap list, on the calling thread (no lock held).
 * A prefill host has no decode worker to reap: its pd receive path calls this after it
 * cancels (CANCEL, a lost decode host), so a cancelled queued request never waits for the
 * prefill in flight. */
void sch__reap(struct sch *s);
/* Decode host: waits up to wait_ms (<= 0: not at all) for the head of the wait queue to get
 * its blocks, ends cancelled queued requests meanwhile; returns it PREFILLING (owned by the
 * caller) or NULL (timeout, stopping, or nothing waiting). */
struct sch_req *sch__remote_admit(struct sch *s, int wait_ms);
/* Whether a request waits for admission. */
bool sch__remote_waiting(struct sch *s);
/* Decode host: the first token arrived: emits it (its logprobs as the prefill host computed
 * them), restores the sampler's PRNG state; *fin gets the finish it caused. */
void sch__remote_first(struct sch *s, struct sch_req *r, const struct sch_pd_first *f);
/* Decode host: r's K/V is all in its blocks (n_tokens positions): hand it to decode. */
void sch__remote_handoff(struct sch *s, struct sch_req *r, int n_tokens);
/* Decode host: ends a PREFILLING remote request (state CANCELLED, FINISHED or FAILED). */
void sch__remote_end(struct sch *s, struct sch_req *r, enum sch_req_state state,
                     enum sch_finish finish, int error, const char *message);
struct eng_kv_pool *sch__pool(struct sch *s);
int sch__vocab_size(struct sch *s);

#endif /* SCH_SCHED_INTERNAL_H */
