/* policy.c — the prefill-mode decision and the prefill cost models (rules in policy.h). */
#include "scheduler/policy.h"

#include <math.h>
#include <string.h>

/* Prompt tokens per unit of the cost model's internal variable u = n / S: keeps the normal
 * equations well conditioned (u ~ 1 for the prompts that matter). */
#define SCH_COST_SCALE 1024.0
/* Weight of older samples per newer one: about the last 10 prefills carry the fit. */
#define SCH_COST_FORGET 0.9
/* Ridge weights pulling (a, b, c) toward the seed. The intercept is held firmly (it is
 * poorly observed when prompts have similar lengths); the slopes follow the data. */
static const double cost_ridge[3] = {1.0, 0.002, 0.002};
/* Requests simulated at most behind the one decided (queued plus expected arrivals). */
#define SCH_POLICY_HORIZON 64
/* Arrivals during a prefill are protected up to this quantile of their Poisson count. */
#define SCH_ARRIVAL_QUANTILE 0.99

const char *sch_policy_reason_name(enum sch_policy_reason r) {
    switch (r) {
    case SCH_WHY_REQUESTED:
        return "requested";
    case SCH_WHY_NO_PREDICTOR:
        return "no_predictor";
    case SCH_WHY_LONG_PROMPT:
        return "long_prompt";
    case SCH_WHY_NO_SLO:
        return "no_slo";
    case SCH_WHY_SLO:
        return "slo";
    case SCH_WHY_QUEUE:
        return "queue";
    case SCH_WHY_FITS_SLO:
        return "fits_slo";
    case SCH_WHY_HOPELESS:
        return "hopeless";
    case SCH_WHY_COUNT:
        break;
    }
    return "?";
}

double sch_policy_ewma(double prev, double sample, double alpha) {
    if (!(prev > 0.0)) {
        return sample;
    }
    return prev + alpha * (sample - prev);
}

/* ---- cost model ---- */

void sch_cost_init(struct sch_cost_model *m, double a, double b, double c) {
    memset(m, 0, sizeof(*m));
    m->prior[0] = a > 0.0 ? a : 0.0;
    m->prior[1] = b > 0.0 ? b * SCH_COST_SCALE : 0.0;
    m->prior[2] = c > 0.0 ? c * SCH_COST_SCALE * SCH_COST_SCALE : 0.0;
    memcpy(m->coef, m->prior, sizeof(m->coef));
}

/* Solves the k x k system A x = y (k <= 3) by Gaussian elimination with partial pivoting.
 * A is positive definite here (ridge), so a zero pivot means numerical trouble: false. */
static bool solve_small(int k, double A[3][3], double y[3], double x[3]) {
    for (int col = 0; col < k; col++) {
        int piv = col;
        for (int r = col + 1; r < k; r++) {
            if (fabs(A[r][col]) > fabs(A[piv][col])) {
                piv = r;
            }
        }
        if (!(fabs(A[piv][col]) > 1e-300)) {
            return false;
        }
        if (piv != col) {
            for (int j = 0; j < k; j++) {
                const double t = A[col][j];
                A[col][j] = A[piv][j];
                A[piv][j] = t;
            }
            const double t = y[col];
            y[col] = y[piv];
            y[piv] = t;
        }
        for (int r = col + 1; r < k; r++) {
            const double f = A[r][col] / A[col][col];
            for (int j = col; j < k; j++) {
                A[r][j] -= f * A[col][j];
            }
            y[r] -= f * y[col];
        }
    }
    for (int r = k - 1; r >= 0; r--) {
        double s = y[r];
        for (int j = r + 1; j < k; j++) {
            s -= A[r][j] * x[j];
        }
        x[r] = s / A[r][r];
    }
    return true;
}

/* Refits coef: minimizes sum w (y - coef.x)^2 + sum ridge_i (coef_i - prior_i)^2 subject to
 * coef >= 0, by trying every set of free coefficients (the others held at 0) and keeping the
 * feasible solution of least objective. 8 tiny systems: cheap, exact, no iteration. */
static void cost_refit(struct sch_cost_model *m) {
    double A[3][3], y[3];
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) {
            A[i][j] = m->xtx[i][j] + (i == j ? cost_ridge[i] : 0.0);
        }
        y[i] = m->xty[i] + cost_ridge[i] * m->prior[i];
    }
    double best[3] = {0.0, 0.0, 0.0};
    double best_obj = 0.0; /* objective of coef = 0 (up to a constant) */
    for (int mask = 1; mask < 8; mask++) {
        int idx[3], k = 0;
        for (int i = 0; i < 3; i++) {
            if (mask & (1 << i)) {
                idx[k++] = i;
            }
        }
        double Ar[3][3], yr[3], xr[3];
        for (int i = 0; i < k; i++) {
            for (int j = 0; j < k; j++) {
                Ar[i][j] = A[idx[i]][idx[j]];
            }
            yr[i] = y[idx[i]];
        }
        if (!solve_small(k, Ar, yr, xr)) {
            continue;
        }
        double x[3] = {0.0, 0.0, 0.0};
        bool feasible = true;
        for (int i = 0; i < k; i++) {
            x[idx[i]] = xr[i];
            feasible = feasible && xr[i] >= 0.0 && isfinite(xr[i]);
        }
        if (!feasible) {
            continue;
        }
        double obj = 0.0;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) {
                obj += x[i] * A[i][j] * x[j];
            }
            obj -= 2.0 * x[i] * y[i];
        }
        if (obj < best_obj) {
            best_obj = obj;
            memcpy(best, x, sizeof(best));
        }
    }
    memcpy(m->coef, best, sizeof(best));
}

void sch_cost_observe(struct sch_cost_model *m, int n_tokens, double ms) {
    if (n_tokens < 1 || !(ms >= 0.0) || !isfinite(ms)) {
        return;
    }
    const double u = n_tokens / SCH_COST_SCALE;
    const double x[3] = {1.0, u, u * u};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) {
            m->xtx[i][j] = SCH_COST_FORGET * m->xtx[i][j] + x[i] * x[j];
        }
        m->xty[i] = SCH_COST_FORGET * m->xty[i] + x[i] * ms;
    }
    m->n_samples++;
    cost_refit(m);
}

double sch_cost_estimate(const struct sch_cost_model *m, int n_tokens) {
    const double u = (n_tokens > 0 ? n_tokens : 0) / SCH_COST_SCALE;
    const double v = m->coef[0] + m->coef[1] * u + m->coef[2] * u * u;
    return v > 0.0 ? v : 0.0;
}

void sch_cost_borrow(struct sch_cost_model *to, const struct sch_cost_model *from, int n_tokens) {
    if (to->n_samples > 0 || from->n_samples == 0) {
        return;
    }
    const double u = (n_tokens > 0 ? n_tokens : 1) / SCH_COST_SCALE;
    const double seed = from->prior[0] + from->prior[1] * u + from->prior[2] * u * u;
    if (!(seed > 0.0)) {
        return;
    }
    const double ratio = sch_cost_estimate(from, n_tokens) / seed;
    for (int i = 0; i < 3; i++) {
        to->coef[i] = to->prior[i] * ratio;
    }
}

void sch_cost_coefs(const struct sch_cost_model *m, double *a, double *b, double *c) {
    if (a != NULL) {
        *a = m->coef[0];
    }
    if (b != NULL) {
        *b = m->coef[1] / SCH_COST_SCALE;
    }
    if (c != NULL) {
        *c = m->coef[2] / (SCH_COST_SCALE * SCH_COST_SCALE);
    }
}

/* ---- decision ---- */

/* Prefill cost of a request that takes its cheapest mode. */
static double cheapest(const struct sch_policy_input *in, int n, bool can_predict) {
    const double f = sch_cost_estimate(in->full, n);
    if (!can_predict || !in->predict_available) {
        return f;
    }
    const double p = sch_cost_estimate(in->predict, n);
    return p < f ? p : f;
}

/*
 * Requests inside the target when this one's prefill costs head_ms: this one, the queued
 * ones behind it, then n_future arrivals that come at once right after the decision (the
 * worst case for them), all served FIFO by n_workers sharing the work (a fluid
 * approximation: each prefill occupies 1/n_workers of the time line), every other request
 * at its cheapest mode.
 */
static int count_meeting(const struct sch_policy_input *in, double slo, double head_ms,
                         int n_future) {
    const double w = in->n_workers > 1 ? in->n_workers : 1;
    int meet = in->waited_ms + in->ahead_ms + head_ms <= slo;
    double t = (in->ahead_ms + head_ms) / w; /* when the queue behind starts moving */
    for (int j = 0; j < in->n_behind && j < SCH_POLICY_HORIZON; j++) {
        const struct sch_policy_waiter *q = &in->behind[j];
        const double c = cheapest(in, q->n_prompt, q->can_predict);
        /* It waits at least for the share of the work ahead, and for its own prefill. */
        meet += q->waited_ms + t + c <= slo;
        t += c / w;
    }
    const double c = cheapest(in, in->arrival_n_prompt, true);
    for (int k = 0; k < n_future; k++) {
        meet += t + c <= slo;
        t += c / w;
    }
    return meet;
}

/* The number of Poisson arrivals (mean `mean`) not exceeded with probability
 * SCH_ARRIVAL_QUANTILE, at most cap. */
static int poisson_quantile(double mean, int cap) {
    if (!(mean > 0.0)) {
        return 0;
    }
    double p = exp(-mean), cdf = p;
    int k = 0;
    while (cdf < SCH_ARRIVAL_QUANTILE && k < cap) {
        k++;
        p *= mean / k;
        cdf += p;
    }
    return k;
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
    const double c_full = sch_cost_estimate(in->full, in->n_prompt);
    const double c_pred = sch_cost_estimate(in->predict, in->n_prompt);
    d.est_full_ms = in->waited_ms + in->ahead_ms + c_full;
    d.est_predict_ms = in->waited_ms + in->ahead_ms + c_pred;
    const double margin =
        in->slo_margin > 0.0 ? (in->slo_margin < 0.9 ? in->slo_margin : 0.9) : 0.0;
    const double slo = in->ttft_slo_ms * (1.0 - margin);
    const bool has_slo = slo > 0.0;
    const double est_best = d.est_predict_ms < d.est_full_ms ? d.est_predict_ms : d.est_full_ms;
    if (has_slo && in->shed_hopeless && in->work_ahead && in->predict->n_samples > 0 &&
        est_best > slo) {
        d.shed = true;
        d.reason = SCH_WHY_HOPELESS;
        d.mode = c_pred < c_full ? SCH_MODE_PREDICT : SCH_MODE_FULL;
    } else if (in->predict_min_prompt > 0 && in->n_prompt >= in->predict_min_prompt) {
        d.mode = SCH_MODE_PREDICT;
        d.reason = SCH_WHY_LONG_PROMPT;
    } else if (!has_slo) {
        d.reason = SCH_WHY_NO_SLO;
    } else if (d.est_full_ms > slo) {
        /* Late with full: the cheaper mode serves it soonest and delays others least. */
        d.mode = c_pred < c_full ? SCH_MODE_PREDICT : SCH_MODE_FULL;
        d.reason = SCH_WHY_SLO;
    } else {
        /* Arrivals to protect: as many as come, with probability SCH_ARRIVAL_QUANTILE, while
         * the queue it leaves drains (its full prefill and the requests behind it), Poisson
         * at the measured rate; the same number for both modes, so that the counts compare. */
        int n_future = 0;
        if (in->arrival_rate_per_ms > 0.0 && isfinite(in->arrival_rate_per_ms)) {
            double busy = in->ahead_ms + c_full;
            for (int j = 0; j < in->n_behind && j < SCH_POLICY_HORIZON; j++) {
                busy += cheapest(in, in->behind[j].n_prompt, in->behind[j].can_predict);
            }
            const int w = in->n_workers > 1 ? in->n_workers : 1;
            const int room =
                SCH_POLICY_HORIZON -
                (in->n_behind < SCH_POLICY_HORIZON ? in->n_behind : SCH_POLICY_HORIZON);
            n_future = poisson_quantile(in->arrival_rate_per_ms * busy / w, room);
        }
        d.meet_full = count_meeting(in, slo, c_full, n_future);
        d.meet_predict = count_meeting(in, slo, c_pred, n_future);
        if (d.meet_full >= d.meet_predict) {
            d.reason = SCH_WHY_FITS_SLO;
        } else {
            d.mode = SCH_MODE_PREDICT;
            d.reason = SCH_WHY_QUEUE;
        }
    }
    *out = d;
}
