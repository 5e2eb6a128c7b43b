/*
 * bench_profile.c — `kvcast bench engine --profile` (see bench_profile.h): profiled prefills
 * through eng_forward_profile, and the per-op table of the fastest one.
 *
 * Shares: each op's wall time over the prefill's wall time. "other" is what no profiled op
 * covers (the loop between ops, the two clock reads per op); the products' GFLOP/s are set
 * against the single GEMM of the prefill's weight type measured by the bench in the same run,
 * so a product that runs at the GEMM's rate reads 1.00 and what keeps the whole prefill from
 * it is visible as the time of the rows without FLOPs.
 */
#define _POSIX_C_SOURCE 200809L
#include "tools/cli/bench_profile.h"

#include <stdio.h>
#include <string.h>

#include "common/kc.h"
#include "tools/cli/json_out.h"

int kc_bench_profile_run(const struct kc_bench_profile_in *in) {
    struct kc_error err = {0};
    struct eng_profile best = {0};
    double best_s = 1e30;
    for (int rep = 0; rep < in->repeat; rep++) {
        struct eng_profile p;
        memset(&p, 0, sizeof(p));
        struct eng_batch_item item = {.seq = in->seq,
                                      .tokens = in->tokens,
                                      .n_tokens = in->n_tokens,
                                      .logits_mode = ENG_LOGITS_LAST,
                                      .logits = in->logits};
        eng_forward_profile(&p);
        const double t0 = kc_now_s();
        const int rc = eng_forward(in->ctx, in->m, in->pool, &item, 1, NULL, &err);
        const double dt = kc_now_s() - t0;
        eng_forward_profile(NULL);
        eng_seq_release(in->pool, in->seq);
        if (rc != KC_OK) {
            fprintf(stderr, "kvcast bench --profile: %s\n", err.msg);
            return 1;
        }
        if (dt < best_s) {
            best_s = dt;
            best = p;
        }
    }
    double covered = 0.0;
    for (int op = 0; op < ENG_PROF_N; op++) {
        covered += best.s[op];
    }
    const double gflops = in->flops / best_s * 1e-9;
    const double ratio = gflops / in->gemm_gflops;
    json_t *ops = in->json ? json_array() : NULL;
    if (!in->json) {
        printf("prefill profile (%s weights, %d tokens; fastest of %d profiled prefills: %.1f ms, "
               "%.1f GFLOP/s, %.2f of the single GEMM's %.1f GFLOP/s)\n",
               in->wtype, in->n_tokens, in->repeat, best_s * 1e3, gflops, ratio, in->gemm_gflops);
        printf("  %-10s %9s %7s %7s %9s %8s\n", "op", "ms", "share", "calls", "GFLOP/s", "vs GEMM");
    }
    for (int op = 0; op <= ENG_PROF_N; op++) {
        const bool other = op == ENG_PROF_N;
        const double s = other ? best_s - covered : best.s[op];
        const double fl = other ? 0.0 : best.flops[op];
        const long calls = other ? 0 : best.calls[op];
        const char *name = other ? "other" : eng_prof_op_name((enum eng_prof_op)op);
        if (!other && calls == 0) {
            continue;
        }
        const double g = fl > 0.0 && s > 0.0 ? fl / s * 1e-9 : 0.0;
        if (in->json) {
            json_t *e = json_object();
            json_object_set_new(e, "op", json_string(name));
            json_object_set_new(e, "ms", kc_json_real(s * 1e3, 3));
            json_object_set_new(e, "share", kc_json_real(s / best_s, 4));
            json_object_set_new(e, "calls", json_integer(calls));
            if (g > 0.0) {
                json_object_set_new(e, "gflops", kc_json_real(g, 1));
                json_object_set_new(e, "vs_gemm", kc_json_real(g / in->gemm_gflops, 3));
            }
            json_array_append_new(ops, e);
        } else if (g > 0.0) {
            printf("  %-10s %9.2f %6.1f%% %7ld %9.1f %8.2f\n", name, s * 1e3, 100.0 * s / best_s,
                   calls, g, g / in->gemm_gflops);
        } else {
            printf("  %-10s %9.2f %6.1f%% %7ld %9s %8s\n", name, s * 1e3, 100.0 * s / best_s, calls,
                   "", "");
        }
    }
    if (in->json) {
        json_t *pj = json_object();
        json_object_set_new(pj, "prefill_dtype", json_string(in->wtype));
        json_object_set_new(pj, "prompt_len", json_integer(in->n_tokens));
        json_object_set_new(pj, "prefill_ms", kc_json_real(best_s * 1e3, 2));
        json_object_set_new(pj, "prefill_gflops", kc_json_real(gflops, 1));
        json_object_set_new(pj, "gemm_gflops", kc_json_real(in->gemm_gflops, 1));
        json_object_set_new(pj, "prefill_vs_gemm", kc_json_real(ratio, 3));
        json_object_set_new(pj, "ops", ops);
        json_t *root = json_object();
        json_object_set_new(root, "profile", pj);
        return kc_json_print("kvcast bench engine", root);
    }
    return 0;
}
