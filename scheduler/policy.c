/* policy.c — the prefill-mode decision (the rule is stated in policy.h). */
#include "scheduler/policy.h"

const char *sch_policy_reason_name(enum sch_policy_reason r) {
    switch (r) {
    case SCH_WHY_REQUESTED:
        return "requested";
    case SCH_WHY_NO_PREDICTOR:
        return "no-predictor";
    case SCH_WHY_LONG_PROMPT:
        return "long-prompt";
    case SCH_WHY_SLO:
        return "slo";
    case SCH_WHY_QUEUE:
        return "queue";
    case SCH_WHY_FITS_SLO:
        return "fits-slo";
    case SCH_WHY_NO_ESTIMATE:
        return "no-estimate";
    }
    return "?";
}

double sch_policy_ewma(double prev, double sample, double alpha) {
    if (!(prev > 0.0)) {
        return sample;
    }
    return prev + alpha * (sample - prev);
}

void sch_policy_decide(const struct sch_policy_input *in, struct sch_policy_decision *out) {
    struct sch_policy_decision d = {.mode = SCH_MODE_FULL, .reason = SCH_WHY_REQUESTED};
    if (in->requested == SCH_MODE_FULL) {
        *out = d;
        return;
    }
    if (!in->predict_available) {
        d.reason = SCH_WHY_NO_PREDICTOR;
        *out = d;
        return;
    }
    if (in->requested == SCH_MODE_PREDICT) {
        d.mode = SCH_MODE_PREDICT;
        *out = d;
        return;
    }

    /* auto */
    const double c_full = in->full_ms_per_token;
    double c_pred = in->predict_ms_per_token;
    if (!(c_pred > 0.0) && c_full > 0.0) {
        c_pred = c_full * in->predict_prior_ratio;
    }
    if (c_full > 0.0) {
        d.est_full_ms = in->waited_ms + in->n_prompt * c_full;
        d.est_predict_ms = in->waited_ms + in->n_prompt * c_pred;
    }
    const bool has_slo = in->ttft_slo_ms > 0.0;
    if (in->predict_min_prompt > 0 && in->n_prompt >= in->predict_min_prompt) {
        d.mode = SCH_MODE_PREDICT;
        d.reason = SCH_WHY_LONG_PROMPT;
    } else if (!(c_full > 0.0)) {
        d.reason = SCH_WHY_NO_ESTIMATE;
    } else if (has_slo && d.est_full_ms > in->ttft_slo_ms && d.est_predict_ms < d.est_full_ms) {
        d.mode = SCH_MODE_PREDICT;
        d.reason = SCH_WHY_SLO;
    } else {
        d.reason = SCH_WHY_FITS_SLO;
        if (has_slo && in->next_n_prompt > 0) {
            /* The next request starts after this prefill; assume it runs full itself. */
            const double next_own = in->next_n_prompt * c_full;
            const double next_after_full = in->next_waited_ms + in->n_prompt * c_full + next_own;
            const double next_after_pred = in->next_waited_ms + in->n_prompt * c_pred + next_own;
            if (next_after_full > in->ttft_slo_ms && next_after_pred <= in->ttft_slo_ms) {
                d.mode = SCH_MODE_PREDICT;
                d.reason = SCH_WHY_QUEUE;
            }
        }
    }
    *out = d;
}
