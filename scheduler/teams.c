/*
 * teams.c — elastic OpenMP teams: how many cores each worker's next GEMM runs on, as a pure
 * function of what is busy (sch_team_split), and the running estimate of a decode step's
 * cost it plans with. The scheduler (scheduler.c) calls it with sch.lock held whenever a
 * prefill starts or ends, the decode worker turns busy or idle, or a decode step was timed,
 * and stores the result in the workers' team sources (eng_dnn_team_source).
 *
 * Why this plan: docs/architecture.md, "Every core on the work at hand" (measurements of a
 * static split, oversubscribed full-width teams with and without OMP_WAIT_POLICY=passive,
 * and elastic teams).
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
    /* Both busy. First both keep full-width teams and the kernel time-slices them (libgomp
     * throttles its spinning when it manages more threads than cores): measured on the
     * 2-core host, this beat a static 1 + 1 split in both the prompt's TTFT and the decode
     * streams' ITL. Once a decode step measured under that sharing misses the TPOT target,
     * the cores are split for the rest of the episode: decode gets the fewest cores that meet
     * the target under linear scaling of its core-milliseconds (pessimistic for a memory-
     * bound step, so it errs towards decode), at most n - 1, and the prefills share the rest;
     * when no split meets it, or the cost is unknown, decode gets half. */
    if (!(in->tpot_target_ms > 0.0) || !(in->decode_shared_step_ms > in->tpot_target_ms)) {
        out->prefill = n / p > 0 ? n / p : 1;
        return;
    }
    const int half = n / 2 > 0 ? n / 2 : 1;
    int d = half;
    if (in->decode_step_work_ms > 0.0) {
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
