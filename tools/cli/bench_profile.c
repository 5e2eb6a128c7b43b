/*
 * bench_profile.c — `kvcast bench engine --profile` (see bench_profile.h): profiled prefills
 * through eng_forward_profile, each between two runs of the single GEMM, and the per-op table.
 *
 * Why the GEMM beside each run: on a shared host the rate a prefill and a GEMM reach drifts
 * by 2x from one minute to the next, so a ratio is only meaningful between measurements taken
 * seconds apart. Shares: each op's wall time over the prefill's wall time. "other" is what no
 * profiled op covers (the loop between ops, the two clock reads per op). The products' GFLOP/s
 * are set against the GEMM beside the run, so a product at the GEMM's rate reads 1.00; the
 * rows without FLOPs (norms, RoPE, SwiGLU, ...) show where the rest of the time goes.
 */
#define _POSIX_C_SOURCE 200809L
#include "tools/cli/bench_profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kc.h"
#include "engine/probe.h"
#include "tools/cli/json_out.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* GFLOP/s of the single GEMM of in's shape, best of 3. */
static double gemm_now(const struct kc_bench_profile_in *in) {
    return eng_dnn_gemm_gflops(in->dnn, in->wt, in->gemm_m, in->gemm_n, in->gemm_k, 3);
}

int kc_bench_profile_run(const struct kc_bench_profile_in *in) {
    struct kc_error err = {0};
    struct eng_profile best = {0};
    double best_s = 0.0, best_gemm = 0.0, best_ratio = -1.0;
    double *ratios = calloc((size_t)in->repeat, sizeof(double));
    if (ratios == NULL) {
        fprintf(stderr, "kvcast bench --profile: out of memory\n");
        return 1;
    }
    double g_before = gemm_now(in);
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
            free(ratios);
            return 1;
        }
        eng_dnn_enter(in->dnn);
        const double g_after = gemm_now(in);
        const double gemm = 0.5 * (g_before + g_after);
        ratios[rep] = in->flops / dt * 1e-9 / gemm;
        if (ratios[rep] > best_ratio) {
            best_ratio = ratios[rep];
            best_s = dt;
            best_gemm = gemm;
            best = p;
        }
        g_before = g_after;
    }
    double *sorted = calloc((size_t)in->repeat, sizeof(double));
    if (sorted == NULL) {
        free(ratios);
        fprintf(stderr, "kvcast bench --profile: out of memory\n");
        return 1;
    }
    memcpy(sorted, ratios, (size_t)in->repeat * sizeof(double));
    qsort(sorted, (size_t)in->repeat, sizeof(double), cmp_double);
    const int R = in->repeat;
    const double median = R % 2 ? sorted[R / 2] : 0.5 * (sorted[R / 2 - 1] + sorted[R / 2]);
    free(sorted);
    double covered = 0.0;
    for (int op = 0; op < ENG_PROF_N; op++) {
        covered += best.s[op];
    }
    const double gflops = in->flops / best_s * 1e-9;
    json_t *ops = in->json ? json_array() : NULL;
    json_t *runs = in->json ? json_array() : NULL;
    if (!in->json) {
        printf("prefill profile (%s weights, %d tokens): GEMM-rate ratio per run (prefill GFLOP/s "
               "over the single %dx%dx%d GEMM measured before and after it):",
               in->wtype, in->n_tokens, in->gemm_m, in->gemm_n, in->gemm_k);
        for (int rep = 0; rep < R; rep++) {
            printf(" %.2f", ratios[rep]);
        }
        printf(", median %.2f\n", median);
        printf("  best run: %.1f ms, %.1f GFLOP/s, GEMM beside it %.1f GFLOP/s, ratio %.2f\n",
               best_s * 1e3, gflops, best_gemm, best_ratio);
        printf("  %-10s %9s %7s %7s %9s %8s\n", "op", "ms", "share", "calls", "GFLOP/s", "vs GEMM");
    }
    for (int rep = 0; rep < R && in->json; rep++) {
        json_array_append_new(runs, kc_json_real(ratios[rep], 3));
    }
    free(ratios);
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
                json_object_set_new(e, "vs_gemm", kc_json_real(g / best_gemm, 3));
            }
            json_array_append_new(ops, e);
        } else if (g > 0.0) {
            printf("  %-10s %9.2f %6.1f%% %7ld %9.1f %8.2f\n", name, s * 1e3, 100.0 * s / best_s,
                   calls, g, g / best_gemm);
        } else {
            printf("  %-10s %9.2f %6.1f%% %7ld %9s %8s\n", name, s * 1e3, 100.0 * s / best_s, calls,
                   "", "");
        }
    }
    if (in->json) {
        json_t *pj = json_object();
        json_object_set_new(pj, "prefill_dtype", json_string(in->wtype));
        json_object_set_new(pj, "prompt_len", json_integer(in->n_tokens));
        json_object_set_new(pj, "runs_vs_gemm", runs);
        json_object_set_new(pj, "median_vs_gemm", kc_json_real(median, 3));
        json_object_set_new(pj, "prefill_ms", kc_json_real(best_s * 1e3, 2));
        json_object_set_new(pj, "prefill_gflops", kc_json_real(gflops, 1));
        json_object_set_new(pj, "gemm_gflops", kc_json_real(best_gemm, 1));
        json_object_set_new(pj, "prefill_vs_gemm", kc_json_real(best_ratio, 3));
        json_object_set_new(pj, "ops", ops);
        json_t *root = json_object();
        json_object_set_new(root, "profile", pj);
        return kc_json_print("kvcast bench engine", root);
    }
    return 0;
}

int kc_bench_profile_decode(const struct kc_bench_decode_profile_in *in) {
    struct kc_error err = {0};
    struct eng_profile p;
    memset(&p, 0, sizeof(p));
    int32_t tok = in->first_token;
    const double triad_before = eng_triad_run(in->triad, 1);
    eng_forward_profile(&p);
    double total = 0.0;
    for (int s = 0; s < in->steps; s++) {
        struct eng_batch_item item = {.seq = in->seq,
                                      .tokens = &tok,
                                      .n_tokens = 1,
                                      .logits_mode = ENG_LOGITS_LAST,
                                      .logits = in->logits};
        const double t0 = kc_now_s();
        const int rc = eng_forward(in->ctx, in->m, in->pool, &item, 1, NULL, &err);
        total += kc_now_s() - t0;
        if (rc != KC_OK) {
            eng_forward_profile(NULL);
            fprintf(stderr, "kvcast bench --profile: %s\n", err.msg);
            return 1;
        }
        tok = (tok + 7) % in->vocab;
    }
    eng_forward_profile(NULL);
    const double triad = 0.5 * (triad_before + eng_triad_run(in->triad, 1));
    double covered = 0.0, gemm_s = 0.0, gemm_bytes = 0.0;
    for (int op = 0; op < ENG_PROF_N; op++) {
        covered += p.s[op];
        if (p.flops[op] > 0.0 && op != ENG_PROF_ATTN) {
            gemm_s += p.s[op];
            gemm_bytes += 0.5 * p.flops[op] * in->weight_elem_bytes;
        }
    }
    const double per = 1e3 / in->steps;
    json_t *ops = in->json ? json_array() : NULL;
    if (!in->json) {
        printf(
            "decode profile (%s weights, %d steps after %d tokens): %.2f ms/step (%.2f tokens/s); "
            "the products read their weights at %.1f GB/s, %.2f of the triad beside them "
            "(%.1f GB/s), in %.0f%% of the step\n",
            in->wtype, in->steps, in->context, total * per, in->steps / total,
            gemm_bytes / gemm_s * 1e-9, gemm_bytes / gemm_s * 1e-9 / triad, triad,
            100.0 * gemm_s / total);
        printf("  %-10s %9s %7s %7s %9s %8s\n", "op", "ms/step", "share", "calls", "GB/s",
               "vs triad");
    }
    for (int op = 0; op <= ENG_PROF_N; op++) {
        const bool other = op == ENG_PROF_N;
        const double s = other ? total - covered : p.s[op];
        const long calls = other ? 0 : p.calls[op];
        const char *name = other ? "other" : eng_prof_op_name((enum eng_prof_op)op);
        if (!other && calls == 0) {
            continue;
        }
        const bool product = !other && p.flops[op] > 0.0 && op != ENG_PROF_ATTN;
        const double gbs =
            product && s > 0.0 ? 0.5 * p.flops[op] * in->weight_elem_bytes / s * 1e-9 : 0.0;
        if (in->json) {
            json_t *e = json_object();
            json_object_set_new(e, "op", json_string(name));
            json_object_set_new(e, "ms_per_step", kc_json_real(s * per, 4));
            json_object_set_new(e, "share", kc_json_real(s / total, 4));
            json_object_set_new(e, "calls", json_integer(calls));
            if (product) {
                json_object_set_new(e, "weight_gbs", kc_json_real(gbs, 2));
                json_object_set_new(e, "vs_triad", kc_json_real(gbs / triad, 3));
            }
            json_array_append_new(ops, e);
        } else if (product) {
            printf("  %-10s %9.3f %6.1f%% %7ld %9.1f %8.2f\n", name, s * per, 100.0 * s / total,
                   calls, gbs, gbs / triad);
        } else {
            printf("  %-10s %9.3f %6.1f%% %7ld %9s %8s\n", name, s * per, 100.0 * s / total, calls,
                   "", "");
        }
    }
    if (in->json) {
        json_t *pj = json_object();
        json_object_set_new(pj, "decode_dtype", json_string(in->wtype));
        json_object_set_new(pj, "steps", json_integer(in->steps));
        json_object_set_new(pj, "ms_per_step", kc_json_real(total * per, 3));
        json_object_set_new(pj, "triad_gbs", kc_json_real(triad, 2));
        json_object_set_new(pj, "products_vs_triad",
                            kc_json_real(gemm_bytes / gemm_s * 1e-9 / triad, 3));
        json_object_set_new(pj, "products_share", kc_json_real(gemm_s / total, 4));
        json_object_set_new(pj, "ops", ops);
        json_t *root = json_object();
        json_object_set_new(root, "decode_profile", pj);
        return kc_json_print("kvcast bench engine", root);
    }
    return 0;
}
