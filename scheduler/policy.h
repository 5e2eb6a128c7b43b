/*
 * policy.h — the prefill-mode policy: which of `full` (base prefill over the whole prompt)
 * and `predict` (auxiliary prefill + KV predictor + one base step) a request gets, and
 * whether an `auto` request is shed (refused at once) because no mode can meet its TTFT
 * target behind the work already queued. Plus the per-mode prefill cost models it plans with.
 *
 * Place in the data flow: the scheduler calls sch_policy_decide twice per auto request.
 *   - At submit (sch_submit, the caller's thread): with ahead_ms = the estimated prefill work
 *     queued and in flight before this request (queued requests counted at their cheapest
 *     mode, the one the policy gives them when it must). If even the cheapest mode misses the
 *     target, the request is shed: sch_submit says KC_EBUSY and the server answers 503 +
 *     Retry-After before the request costs anything or waits.
 *   - At admission (a prefill worker takes the head of the wait queue): with the time it
 *     really waited and the requests really queued behind it, to pick the mode.
 * Deciding the mode at admission, not at submit: by then the queue behind the request is
 * known (a full prefill delays every one of them), the wait is measured instead of
 * estimated, and the cost models have seen every prefill that ran meanwhile. Shedding at
 * submit: the client learns at once and the request never occupies a queue slot.
 * All functions here are pure: no clock, no lock, no state beyond their arguments.
 *
 * Rule for `auto` (DESIGN.md section 1: predict trades a little quality for TTFT, so it is
 * used only when TTFT needs it). With est_X = waited + ahead + cost_X(n), and `target` the
 * TTFT target less slo_margin of it (prefill costs vary by tens of percent under load: a
 * request planned to finish just inside the target misses it half the time):
 *   predict if n >= predict_min_prompt                                       (LONG_PROMPT)
 *   full if there is no TTFT target                                          (NO_SLO)
 *   shed (submit only) if there is work ahead and min(est_full, est_predict) > target,
 *        the predict model has been measured, and shedding is on             (HOPELESS)
 *   the cheaper mode if est_full > target                                    (SLO)
 *   otherwise count the requests that meet the target with this one in full and in predict:
 *   this one, the queued ones behind it, and the arrivals to expect while the queue it leaves
 *   drains (the 99th percentile of a Poisson count at arrival_rate, arrival_n_prompt tokens
 *   each, all arriving at once: a burst, not an average, is what a full prefill must not
 *   wreck); queued and arriving requests are assumed to take their cheapest mode. Full when
 *   that count is not lower (FITS_SLO), predict otherwise (QUEUE).
 * Without a usable predictor every auto request runs full (NO_PREDICTOR) and none is shed.
 * A request alone in the server (no work ahead) is never shed, however long its prompt: it
 * gets the best TTFT there is, and nobody else waits for it.
 *
 * Cost model of a prefill of n prompt tokens: cost(n) = a + b*n + c*n^2 ms (c: attention's
 * quadratic part). Seeded from the model shapes (sch_cost_init) and refitted after every
 * measured prefill by ridge least squares over exponentially weighted samples (recent
 * samples count more: the machine's load changes), shrunk toward the seed so that one
 * prompt length seen does not decide the curve alone, with a, b, c kept >= 0.
 */
#ifndef SCH_POLICY_H
#define SCH_POLICY_H

#include <stdbool.h>

#include "scheduler/scheduler.h"

/* Per-mode prefill cost model (ms); fields are private to policy.c. */
struct sch_cost_model {
    double prior[3]; /* seed (a, b*S, c*S^2) in scaled units, S = SCH_COST_SCALE tokens */
    double coef[3];  /* current fit, same units */
    double xtx[3][3];
    double xty[3];
    int n_samples;
};

/* Seeds m with cost(n) = a + b*n + c*n^2 ms (a, b, c >= 0) and no samples. */
void sch_cost_init(struct sch_cost_model *m, double a, double b, double c);
/* Adds one measured prefill of n_tokens (>= 1) that took ms (>= 0) and refits. */
void sch_cost_observe(struct sch_cost_model *m, int n_tokens, double ms);
/* The estimated cost in ms of a prefill of n_tokens (>= 0 for any n >= 0). */
double sch_cost_estimate(const struct sch_cost_model *m, int n_tokens);
/* While `to` has no sample and `from` has some, sets `to` to its seed scaled by how far
 * `from`'s fit at n_tokens is from `from`'s seed: both modes run on the same machine, so a
 * measured speed carries over (else a pessimistic seed would keep auto from ever trying, and
 * so measuring, the other mode). Otherwise does nothing. */
void sch_cost_borrow(struct sch_cost_model *to, const struct sch_cost_model *from, int n_tokens);
/* The fitted coefficients as a + b*n + c*n^2 (any pointer may be NULL). */
void sch_cost_coefs(const struct sch_cost_model *m, double *a, double *b, double *c);

/* A request queued behind the one being decided, in queue order. */
struct sch_policy_waiter {
    int n_prompt;
    double waited_ms;
    bool can_predict; /* auto or predict (and a predictor loaded): runs predict when it must */
};

struct sch_policy_input {
    enum sch_prefill_mode requested; /* what the request asked for */
    bool predict_available;          /* an auxiliary model and a predictor are loaded */
    int n_prompt;                    /* this request's prompt tokens */
    double waited_ms;                /* time it has spent queued so far (0 at submit) */
    double ahead_ms; /* estimated prefill work before it can start (0 at admission) */
    bool work_ahead; /* some request is queued or prefilling ahead of it */
    int n_workers;   /* prefill workers sharing the queue (>= 1) */
    const struct sch_policy_waiter *behind; /* queued behind it, in order; may be NULL */
    int n_behind;
    double arrival_rate_per_ms; /* measured rate of new requests per ms; 0: none expected */
    int arrival_n_prompt;       /* their mean prompt length */
    const struct sch_cost_model *full;
    const struct sch_cost_model *predict;
    double ttft_slo_ms;     /* target; <= 0: none */
    double slo_margin;      /* fraction of the target kept for estimate errors (0..0.9): auto
                             * decisions plan for ttft_slo_ms * (1 - slo_margin) */
    int predict_min_prompt; /* prompts at least this long always predict; <= 0: never */
    bool shed_hopeless;     /* a hopeless auto request may be shed (submit-time calls) */
};

enum sch_policy_reason {
    SCH_WHY_REQUESTED = 0, /* the request asked for full or predict */
    SCH_WHY_NO_PREDICTOR,  /* predict asked or auto, but no aux model: full */
    SCH_WHY_LONG_PROMPT,   /* auto: prompt >= predict_min_prompt */
    SCH_WHY_NO_SLO,        /* auto: no TTFT target: full */
    SCH_WHY_SLO,           /* auto: full would miss the TTFT target: the cheaper mode */
    SCH_WHY_QUEUE,         /* auto: full would make more queued or arriving requests miss it */
    SCH_WHY_FITS_SLO,      /* auto: full meets the target and costs no other request its own */
    SCH_WHY_HOPELESS,      /* auto, at submit: even the cheapest mode misses it: shed */
    SCH_WHY_COUNT
};

struct sch_policy_decision {
    enum sch_prefill_mode mode; /* SCH_MODE_FULL or SCH_MODE_PREDICT, never AUTO */
    enum sch_policy_reason reason;
    bool shed;             /* refuse the request (reason HOPELESS); mode is then meaningless */
    double est_full_ms;    /* estimated TTFT with full; 0 when not estimated */
    double est_predict_ms; /* estimated TTFT with predict; 0 when not estimated */
    int meet_full;         /* requests counted inside the target with full (FITS_SLO/QUEUE) */
    int meet_predict;      /* ... and with predict */
};

/* Decides for one request from in; writes *out. Never fails. */
void sch_policy_decide(const struct sch_policy_input *in, struct sch_policy_decision *out);

/* Short name of a reason for logs and metrics labels ("slo", "long_prompt", ...). */
const char *sch_policy_reason_name(enum sch_policy_reason r);

/* One step of an exponentially weighted moving average: the first sample (prev <= 0)
 * is taken as is, later ones weigh alpha. */
double sch_policy_ewma(double prev, double sample, double alpha);

#endif /* SCH_POLICY_H */
