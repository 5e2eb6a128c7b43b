/*
 * bench_profile.h — `kvcast bench engine --profile`: where a prefill's time goes, per op of the
 * forward pass (engine/model.h's eng_profile), beside the single-GEMM rate the bench measured.
 * Used by tools/cli/cmd_bench.c only.
 */
#ifndef KC_BENCH_PROFILE_H
#define KC_BENCH_PROFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "engine/probe.h"

/* One prefill to profile: the bench's model, context, pool and prompt, and what it measured. */
struct kc_bench_profile_in {
    struct eng_ctx *ctx;
    const struct eng_model *m;
    struct eng_kv_pool *pool;
    struct eng_seq *seq; /* empty on entry; released (empty) on return */
    const int32_t *tokens;
    int n_tokens;
    float *logits;       /* [V] for the last token's logits */
    int repeat;          /* profiled prefills; the fastest one's profile is printed */
    double flops;        /* matmul + attention FLOPs of the prefill (cmd_bench.c prefill_flops) */
    struct eng_dnn *dnn; /* entered by the calling thread: the single GEMM beside each prefill */
    enum eng_wtype wt;   /* prefill weight type, of that GEMM */
    int gemm_m, gemm_n, gemm_k;
    const char *wtype; /* prefill weight type's name */
    bool json;
};

/* Runs in->repeat prefills with a profile installed (after the bench's timed ones, so every
 * primitive exists), each between two measurements of the single GEMM, and prints every run's
 * GEMM-rate ratio (prefill GFLOP/s over the mean of the GEMM before and after it), their
 * median, and the per-op table (ms, share of the prefill, GFLOP/s and ratio to the GEMM beside
 * it for the products) of the run with the best ratio: the one least disturbed by the host's
 * other load. Text, or one JSON object {"profile": {...}}. 0, or 1 after printing why it
 * failed. */
int kc_bench_profile_run(const struct kc_bench_profile_in *in);

/* Single-token decode steps to profile, continuing in->seq. */
struct kc_bench_decode_profile_in {
    struct eng_ctx *ctx;
    const struct eng_model *m;
    struct eng_kv_pool *pool;
    struct eng_seq *seq; /* holds the prompt (context tokens) on entry; grows by steps */
    int32_t first_token;
    int vocab;
    int context; /* tokens in seq on entry, for the heading */
    float *logits;
    int steps;
    double weight_elem_bytes; /* bytes per decode weight element: 4 f32, 2 bf16, 1 int8 */
    struct eng_triad *triad;  /* run before and after the steps */
    const char *wtype;        /* decode weight type's name */
    bool json;
};

/* Runs in->steps decode steps with a profile installed and prints where a step's time goes
 * per op (ms per step, share, and for the products the GB/s of weights they read and its
 * ratio to the mean of a stream triad run right before and right after the steps): the
 * decode counterpart of kc_bench_profile_run. Text, or one JSON object {"decode_profile":
 * {...}}. 0, or 1 after printing why it failed. */
int kc_bench_profile_decode(const struct kc_bench_decode_profile_in *in);

#endif /* KC_BENCH_PROFILE_H */
