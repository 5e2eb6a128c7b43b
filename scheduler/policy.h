/*
 * policy.h — the prefill-mode policy: which of `full` (base prefill over the whole prompt)
 * and `predict` (auxiliary prefill + KV predictor + one base step) a request gets.
 *
 * Place in the data flow: a prefill worker calls sch_policy_decide when it admits a request
 * (the head of the wait queue), with the running per-token cost estimates the scheduler
 * keeps (sch_policy_ewma over measured prefills). A pure function: no clock, no lock, no
 * state, so the decision is unit-testable from its inputs alone.
 *
 * Rule for `auto` (DESIGN.md section 1: predict trades a little quality for TTFT, so it is
 * used only when TTFT needs it):
 *   est_full    = waited + n * full_ms_per_token
 *   est_predict = waited + n * predict_ms_per_token
 *   predict if n >= predict_min_prompt                                  (LONG_PROMPT)
 *   predict if est_full > slo and est_predict < est_full                (SLO)
 *   predict if the next queued request would miss the slo behind a full prefill of this
 *           one but not behind a predicted one                          (QUEUE)
 *   full otherwise                                                      (FITS_SLO)
 * With no measured full cost yet there is nothing to estimate from: full (NO_ESTIMATE),
 * unless the prompt is long. An unmeasured predict cost is taken as
 * full_ms_per_token * predict_prior_ratio.
 */
#ifndef SCH_POLICY_H
#define SCH_POLICY_H

#include <stdbool.h>

#include "scheduler/scheduler.h"

struct sch_policy_input {
    enum sch_prefill_mode requested; /* what the request asked for */
    bool predict_available;          /* an auxiliary model and a predictor are loaded */
    int n_prompt;                    /* this request's prompt tokens */
    double waited_ms;                /* time it has spent queued so far */
    int next_n_prompt;               /* prompt tokens of the next queued request; 0: none */
    double next_waited_ms;           /* time the next queued request has waited */
    double full_ms_per_token;        /* running estimate; <= 0: not measured yet */
    double predict_ms_per_token;     /* running estimate; <= 0: not measured yet */
    double predict_prior_ratio;      /* predict/full cost ratio assumed before measuring */
    double ttft_slo_ms;              /* target; <= 0: none */
    int predict_min_prompt;          /* prompts at least this long predict; <= 0: never */
};

enum sch_policy_reason {
    SCH_WHY_REQUESTED = 0, /* the request asked for full or predict */
    SCH_WHY_NO_PREDICTOR,  /* predict asked or chosen, but no aux model: full */
    SCH_WHY_LONG_PROMPT,   /* auto: prompt >= predict_min_prompt */
    SCH_WHY_SLO,           /* auto: full would miss the TTFT target */
    SCH_WHY_QUEUE,         /* auto: full would make the next queued request miss it */
    SCH_WHY_FITS_SLO,      /* auto: full meets the target */
    SCH_WHY_NO_ESTIMATE,   /* auto: no cost measured yet */
};

struct sch_policy_decision {
    enum sch_prefill_mode mode; /* SCH_MODE_FULL or SCH_MODE_PREDICT, never AUTO */
    enum sch_policy_reason reason;
    double est_full_ms;    /* estimated TTFT with full; 0 when not estimated */
    double est_predict_ms; /* estimated TTFT with predict; 0 when not estimated */
};

/* Decides the mode for one request from in; writes *out. Never fails. */
void sch_policy_decide(const struct sch_policy_input *in, struct sch_policy_decision *out);

/* Short name of a reason for logs ("slo", "long-prompt", ...). */
const char *sch_policy_reason_name(enum sch_policy_reason r);

/* One step of an exponentially weighted moving average: the first sample (prev <= 0)
 * is taken as is, later ones weigh alpha. */
double sch_policy_ewma(double prev, double sample, double alpha);

#endif /* SCH_POLICY_H */
