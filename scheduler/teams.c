/*
 * teams.c — elastic OpenMP teams: how many cores each worker's next GEMM runs on, as a pure
 * function of what is busy (sch_team_split), and the running estimate of a decode step's
 * cost it plans with. The scheduler (scheduler.c) calls it with sch.lock held whenever a
 * prefill starts or ends, the decode worker turns busy or idle, or a decode step was timed,
 * and stores the result in the workers' team sources (eng_dnn_team_source).
 *
 * Why teams and not turns: see docs/architecture.md, "Every core on the work at hand". In
 * short, on the 2-core host a decode step on 1 core loses little against 2 (it is bound by
 * memory bandwidth), while time-slicing both workers over full-width teams (oversubscribed
 * teams, measured) stalls both on OpenMP barriers.
 */
#include "scheduler/sched_internal.h"

void sch_team_split(const struct sch_team_input *in, struct sch_team_split *out) {
    const int n = in->n_cpus > 0 ? in->n_cpus : 1;
    const int p = in->n_prefilling > 0 ? in->n_prefilling : 0;
    out->decode = n;
    out->prefill = n;
    if (p == 0) {
        return; /* decode alone (or nothing): every core to decode; a prefill starts wide */
    }
    if (!in->decode_busy) {
        out->prefill = n / p > 0 ? n / p : 1; /* prefills alone: share every core */
        return;
    }
    if (n == 1) {
        out->decode = out->prefill = 1; /* nothing to split: both time-share the core */
        return;
    }
    /* Both busy: decode gets the fewest cores that keep its step within the TPOT target,
     * assuming linear scaling (pessimistic for a memory-bound step, so it errs towards
     * decode), at most n - 1; the rest goes to the prefills. While the step's cost is
     * unknown, or when no split meets the target, decode gets half: neither side starves. */
    const int half = n / 2;
    int d = half;
    if (in->decode_step_work_ms > 0.0 && in->tpot_target_ms > 0.0) {
        for (d = 1; d < n && in->decode_step_work_ms / d > in->tpot_target_ms; d++) {
        }
        if (d == n) {
            d = half;
        }
    }
    out->decode = d;
    const int rest = n - d;
    out->prefill = rest / p > 0 ? rest / p : 1;
}

double sch_team_work_update(double work_ms, double step_ms, int team, double alpha) {
    const double sample = step_ms * (team > 0 ? team : 1);
    return work_ms > 0.0 ? work_ms + alpha * (sample - work_ms) : sample;
}
