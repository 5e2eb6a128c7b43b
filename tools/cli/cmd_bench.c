/*
 * cmd_bench.c — `kvcast bench engine`: the forward pass on a synthetic model with random
 * weights of a real configuration, printed beside what the machine's oneDNN GEMM and
 * memory bandwidth reach in the same run, so engine efficiency is a ratio, not a claim.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kc.h"
#include "engine/kv_cache.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "engine/probe.h"
#include "tools/cli/args.h"
#include "tools/cli/bench_profile.h"
#include "tools/cli/commands.h"
#include "tools/cli/json_out.h"

static void bench_usage(FILE *f) {
    fprintf(f, "usage: kvcast bench engine --config NAME|config.json [options]\n"
               "  NAME: tinyllama-1.1b, llama-3.2-1b, qwen2-0.5b, kvcast-base, kvcast-aux\n"
               "  --prompt-len N        prefill length (default 512)\n"
               "  --gen N               decode steps (default 64)\n"
               "  --batch B             sequences per decode step (default 1): B copies of the\n"
               "                        prompt decode together, one row each, as serve batches\n"
               "                        B streams; tokens/s counts all B\n"
               "  --threads N           OpenMP threads (default: all cores)\n"
               "  --prefill-dtype T     f32|bf16|int8 (default f32)\n"
               "  --decode-dtype T      f32|bf16|int8 (default bf16, f32 without AVX-512)\n"
               "  --dtypes LIST         weight types to run one after another, each for both\n"
               "                        prefill and decode (e.g. f32,bf16,int8; overrides the\n"
               "                        two above): each prefill against the single GEMM of\n"
               "                        its own type, each decode against the triad, then a\n"
               "                        summary table; --attn and --kvp run with the first\n"
               "                        type only; --json prints one object per type\n"
               "  --kv-dtype T          f32|bf16 KV cache (default f32); bf16 also times the\n"
               "                        attention benchmark's decode rows on a bf16 cache\n"
               "  --repeat N            timed prefill repetitions, best kept (default 2)\n"
               "  --profile             then --repeat profiled prefills, each between two runs of\n"
               "                        the single GEMM: their ratios, and where the time of\n"
               "                        the best one goes per op (ms, share, GFLOP/s vs GEMM);\n"
               "                        then --gen profiled decode steps: ms per step per op,\n"
               "                        the products' weight GB/s against the triad\n"
               "  decode runs in windows of 4 steps, each compared with a stream triad run\n"
               "  right beside it; the decode ratio is the median over windows\n"
               "  --kvp                 also time KV Prediction: auxiliary prefill + predictor\n"
               "                        + one base step, against the full prefill\n"
               "  --aux-config NAME|F   auxiliary model for --kvp (default: the base's shape\n"
               "                        with --aux-layers layers, a layer-pruned copy)\n"
               "  --aux-layers N        layers of that default aux (default: base layers / 4)\n"
               "  --attn LIST           prefill attention lengths to time, comma-separated, or\n"
               "                        none (default 512,2048,8192), against an f32 GEMM\n"
               "  --attn-chunk N        query rows per attention call, as --prefill-chunk of\n"
               "                        serve (default 256)\n"
               "  --attn-old            also time the one-row attention kernel (the old path)\n"
               "  --attn-only           only the attention benchmark\n"
               "  --json                print one JSON object per part\n");
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Matmul + attention FLOPs of a prefill of T tokens (logits for the last token only). */
static double prefill_flops(const struct eng_model_config *c, int T) {
    const double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const double qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    const double per_token_linear = 2.0 * (C * (qd + 2 * kvd) + qd * C + 3.0 * C * F);
    const double attn = 2.0 * 2.0 * qd * ((double)T * (T + 1) / 2.0); /* QK^T and AV, causal */
    return c->n_layers * (per_token_linear * T + attn) + 2.0 * C * V;
}

/*
 * --kvp: TTFT of a T-token prompt with KV Prediction (aux prefill of T-1 tokens, predictor,
 * one base step) against a full base prefill, on synthetic models and a random predictor of
 * real shapes. Prints the measured and the analytic (FLOPs) ratios side by side.
 */
static int bench_kvp(const struct eng_model *base, const struct eng_model_config *aux_cfg,
                     const struct eng_model_params *mp, int T, int threads, int repeat, bool json) {
    struct kc_error err = {0};
    const struct eng_model_config *bc = eng_model_config_of(base);
    struct eng_model *aux = NULL;
    struct eng_kvp *pred = NULL;
    struct eng_kvp_ctx *kc = NULL;
    struct eng_ctx *bctx = NULL;
    struct eng_kv_pool pool = {0}, apool = {0};
    struct eng_seq seq = {0}, aseq = {0};
    int32_t *tokens = NULL;
    float *logits = NULL;
    int rc = 1;
    const struct eng_kvp_shape shape = eng_kvp_shape_of_pair(bc, aux_cfg);
    if (eng_kvp_check_pair(bc, aux_cfg, &err) != KC_OK ||
        eng_model_init_random(aux_cfg, mp, 99, &aux, &err) != KC_OK ||
        eng_kvp_create_random(&shape, NULL, 7, &pred, &err) != KC_OK ||
        eng_kvp_ctx_create(base, aux, pred, T < 512 ? T : 512, T + 1, threads, &kc, &err) !=
            KC_OK ||
        eng_ctx_create(base, T < 512 ? T : 512, T + 1, threads, &bctx, &err) != KC_OK ||
        eng_kv_pool_init(&pool, bc, 16, (T + 16) / 16 + 1, &err) != KC_OK ||
        eng_kv_pool_init(&apool, aux_cfg, 16, (T + 16) / 16 + 1, &err) != KC_OK) {
        fprintf(stderr, "kvcast bench --kvp: %s\n", err.msg);
        goto done;
    }
    tokens = calloc((size_t)T, sizeof(int32_t));
    logits = calloc((size_t)bc->vocab_size, sizeof(float));
    if (tokens == NULL || logits == NULL) {
        goto done;
    }
    for (int i = 0; i < T; i++) {
        tokens[i] = (int32_t)((i * 7919u + 13u) % (unsigned)bc->vocab_size);
    }
    double best[2] = {1e30, 1e30};
    struct eng_kvp_timings split = {0};
    const enum eng_kvp_mode modes[2] = {ENG_KVP_FULL, ENG_KVP_PREDICT};
    /* Alternate the modes so machine noise hits both alike; the first round warms up. */
    for (int rep = 0; rep <= repeat; rep++) {
        for (int mi = 0; mi < 2; mi++) {
            struct eng_kvp_timings t = {0};
            const double t0 = kc_now_s();
            const struct eng_kvp_seqs io = {.base_ctx = bctx,
                                            .base_pool = &pool,
                                            .base = &seq,
                                            .aux_pool = &apool,
                                            .aux = &aseq};
            if (eng_kvp_prefill(kc, modes[mi], &io, tokens, T, logits, &t, &err) != KC_OK) {
                fprintf(stderr, "kvcast bench --kvp: %s\n", err.msg);
                goto done;
            }
            const double dt = kc_now_s() - t0;
            eng_seq_release(&pool, &seq);
            eng_seq_release(&apool, &aseq);
            if (rep > 0 && dt < best[mi]) {
                best[mi] = dt;
                if (mi == 1) {
                    split = t;
                }
            }
        }
    }
    const double f_full = eng_kvp_ttft_flops(ENG_KVP_FULL, bc, aux_cfg, &shape, T);
    const double f_pred = eng_kvp_ttft_flops(ENG_KVP_PREDICT, bc, aux_cfg, &shape, T);
    if (json) {
        json_t *k = json_object();
        json_object_set_new(k, "prompt_len", json_integer(T));
        json_object_set_new(k, "aux_layers", json_integer(aux_cfg->n_layers));
        json_object_set_new(k, "aux_hidden", json_integer(aux_cfg->hidden_size));
        json_object_set_new(k, "ttft_full_ms", kc_json_real(best[0] * 1e3, 2));
        json_object_set_new(k, "ttft_predict_ms", kc_json_real(best[1] * 1e3, 2));
        json_object_set_new(k, "ttft_ratio", kc_json_real(best[1] / best[0], 3));
        json_object_set_new(k, "flops_ratio", kc_json_real(f_pred / f_full, 3));
        json_object_set_new(k, "aux_ms", kc_json_real(split.aux_ms, 2));
        json_object_set_new(k, "predict_ms", kc_json_real(split.predict_ms, 2));
        json_object_set_new(k, "base_first_step_ms", kc_json_real(split.base_first_step_ms, 2));
        json_t *root = json_object();
        json_object_set_new(root, "kvp", k);
        if (kc_json_print("kvcast bench engine", root) != 0) {
            goto done;
        }
    } else {
        printf("kvp     TTFT of a %d-token prompt: full %.1f ms, predict %.1f ms (aux %.1f + "
               "predictor %.1f + base step %.1f)\n",
               T, best[0] * 1e3, best[1] * 1e3, split.aux_ms, split.predict_ms,
               split.base_first_step_ms);
        printf(
            "kvp     predict/full: measured %.3f, analytic FLOPs %.3f (aux: %d layers, dim %d)\n",
            best[1] / best[0], f_pred / f_full, aux_cfg->n_layers, aux_cfg->hidden_size);
    }
    rc = 0;
done:
    free(tokens);
    free(logits);
    eng_seq_release(&pool, &seq); /* an empty sequence never touches the pool */
    eng_seq_release(&apool, &aseq);
    eng_kv_pool_free(&pool);
    eng_kv_pool_free(&apool);
    eng_ctx_free(bctx);
    eng_kvp_ctx_free(kc);
    eng_kvp_free(pred);
    eng_model_free(aux);
    return rc;
}

/* Most sequences one `bench engine` decode step batches (--batch). */
#define BENCH_MAX_BATCH 64

/* Decode steps of `kvcast bench engine` over a batch of sequences, with the bytes each step
 * reads. */
struct decode_run {
    struct eng_ctx *ctx;
    const struct eng_model *m;
    struct eng_kv_pool *pool;
    struct eng_seq **seqs; /* n_seqs sequences, one row each per step */
    int n_seqs;
    int32_t tok; /* next input token (every sequence's) */
    int vocab;
    float *logits;           /* [n_seqs][vocab] */
    double weight_bytes;     /* decode weights read per step */
    double kv_bytes_per_pos; /* K and V of one position, all layers */
};

/* Prefills the T-token prompt into seq (last position's logits into `logits`). */
static int prefill_prompt(struct eng_ctx *ctx, const struct eng_model *m, struct eng_kv_pool *pool,
                          struct eng_seq *seq, const int32_t *tokens, int T, float *logits,
                          struct kc_error *err) {
    struct eng_batch_item item = {.seq = seq,
                                  .tokens = tokens,
                                  .n_tokens = T,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = logits};
    const int rc = eng_forward(ctx, m, pool, &item, 1, NULL, err);
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast bench: %s\n", err->msg);
    }
    return rc;
}

/* Runs `steps` decode steps; *t: their seconds, *bytes: weights + KV cache they read. */
static int decode_steps(struct decode_run *r, int steps, double *t, double *bytes,
                        struct kc_error *err) {
    *t = 0.0;
    *bytes = 0.0;
    for (int s = 0; s < steps; s++) {
        struct eng_batch_item items[BENCH_MAX_BATCH];
        *bytes += r->weight_bytes;
        for (int i = 0; i < r->n_seqs; i++) {
            items[i] = (struct eng_batch_item){.seq = r->seqs[i],
                                               .tokens = &r->tok,
                                               .n_tokens = 1,
                                               .logits_mode = ENG_LOGITS_LAST,
                                               .logits = r->logits + (size_t)i * (size_t)r->vocab};
            *bytes += r->kv_bytes_per_pos * (r->seqs[i]->n_tokens + 1);
        }
        const double t0 = kc_now_s();
        const int rc = eng_forward(r->ctx, r->m, r->pool, items, r->n_seqs, NULL, err);
        if (rc != KC_OK) {
            return rc;
        }
        *t += kc_now_s() - t0;
        r->tok = (r->tok + 7) % r->vocab;
    }
    return KC_OK;
}

/*
 * Attention of `kvcast bench engine`: one layer's causal prefill attention of T tokens for
 * the configuration's head shape, run as the engine runs it (chunks of `chunk` query rows,
 * each attending to everything before it) on a random paged cache with a shuffled block
 * table, in GFLOP/s (2 * 2 * D * H * T(T+1)/2: QK^T and PV, causal half) against an f32
 * GEMM of the prefill's shape measured right before each length (the host's speed drifts). With
 * `old`, the one-row kernel (all of eng_attention before the tiled kernel, still decode's path)
 * runs beside it. Then one decode row at the longest context, and a few rows, on each path: the
 * measurement behind the dispatch of engine/attention.c (invariant 1).
 */
struct attn_bench {
    const struct eng_model_config *cfg;
    const long *lens;
    int n_lens;
    int chunk;
    bool old;
    bool json;
    int threads;         /* of the calling team */
    struct eng_dnn *dnn; /* entered by the calling thread: the f32 GEMM beside each length */
    int gemm_m, gemm_n, gemm_k;
    bool kv_bf16; /* also time the decode rows on a bf16 copy of the cache */
};

typedef void (*attn_fn)(const float *, int, int, const struct eng_kv_view *, int, int, int, float,
                        float *, float *);

/* Seconds of a whole T-token prefill's attention (one layer), best of reps. */
static double attn_prefill_s(attn_fn fn, const float *q, const struct eng_kv_view *kv,
                             const struct eng_model_config *c, int T, int chunk, float *out,
                             float *scratch, int reps) {
    const size_t qd = (size_t)c->n_heads * (size_t)c->head_dim;
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const double t0 = kc_now_s();
        for (int p0 = 0; p0 < T; p0 += chunk) {
            const int n = T - p0 < chunk ? T - p0 : chunk;
            fn(q + (size_t)p0 * qd, n, p0, kv, c->n_heads, c->n_kv_heads, c->head_dim, scale, out,
               scratch);
        }
        const double dt = kc_now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

/* Microseconds of one call of n rows at the end of a T-token context: the fastest of 40
 * calls (on this shared host a call now and then waits for a preempted team thread). */
static double attn_rows_us(attn_fn fn, const float *q, const struct eng_kv_view *kv,
                           const struct eng_model_config *c, int T, int n, float *out,
                           float *scratch) {
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    double best = 1e30;
    for (int i = 0; i < 40; i++) {
        const double t0 = kc_now_s();
        fn(q, n, T - n, kv, c->n_heads, c->n_kv_heads, c->head_dim, scale, out, scratch);
        const double dt = kc_now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best * 1e6;
}

/* --kv-dtype bf16: the attention of one decode row through every layer of the model (each
 * layer its own cache of T positions, so the caches together are far larger than the CPU's
 * caches, as in a decode step), on f32 and on bf16 caches, interleaved, best of 5 each. */
static int attn_step_bench(const struct eng_model_config *c, int T, const float *q, float *out,
                           float *scratch, bool json, json_t *j) {
    const int bs = 16, nb = (T + bs - 1) / bs, L = c->n_layers;
    const size_t tok = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const size_t stride = 2 * (size_t)bs * tok, layer = (size_t)nb * stride;
    float *cache = malloc((size_t)L * layer * sizeof(float));
    uint16_t *cache16 = malloc((size_t)L * layer * sizeof(uint16_t));
    int32_t *table = malloc((size_t)nb * sizeof(int32_t));
    if (cache == NULL || cache16 == NULL || table == NULL) {
        free(cache);
        free(cache16);
        free(table);
        fprintf(stderr, "kvcast bench: out of memory for the decode-step attention caches\n");
        return 1;
    }
    uint64_t r = 11;
    for (size_t i = 0; i < (size_t)L * layer; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        cache[i] = (float)((r >> 40) & 0xffff) / 32768.0f - 1.0f;
        cache16[i] = eng_f32_to_bf16(cache[i]);
    }
    for (int i = 0; i < nb; i++) {
        table[i] = nb - 1 - i;
    }
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    double best[2] = {1e30, 1e30};
    for (int rep = 0; rep < 5; rep++) {
        for (int d = 0; d < 2; d++) {
            const double t0 = kc_now_s();
            for (int l = 0; l < L; l++) {
                struct eng_kv_view kv = {.block_stride = stride,
                                         .v_offset = (size_t)bs * tok,
                                         .block_size = bs,
                                         .block_table = table};
                if (d == 1) {
                    kv.base16 = cache16 + (size_t)l * layer;
                    kv.dtype = ENG_DTYPE_BF16;
                } else {
                    kv.base = cache + (size_t)l * layer;
                }
                eng_attention(q, 1, T - 1, &kv, c->n_heads, c->n_kv_heads, c->head_dim, scale, out,
                              scratch);
            }
            const double dt = kc_now_s() - t0;
            best[d] = dt < best[d] ? dt : best[d];
        }
    }
    const double kv_mb = (double)L * (double)T * 2.0 * (double)tok * 4.0 * 1e-6;
    if (json) {
        json_t *e = json_object();
        json_object_set_new(e, "context", json_integer(T));
        json_object_set_new(e, "layers", json_integer(L));
        json_object_set_new(e, "f32_kv_us", kc_json_real(best[0] * 1e6, 1));
        json_object_set_new(e, "bf16_kv_us", kc_json_real(best[1] * 1e6, 1));
        json_object_set_new(e, "speedup", kc_json_real(best[0] / best[1], 2));
        json_object_set_new(j, "attention_decode_step", e);
    } else {
        printf("  decode step attention, %d layers at context %d (%.0f MB of f32 K/V): f32 KV "
               "%8.1f us, bf16 KV %8.1f us (%.2fx)\n",
               L, T, kv_mb, best[0] * 1e6, best[1] * 1e6, best[0] / best[1]);
    }
    free(cache);
    free(cache16);
    free(table);
    return 0;
}

static int bench_attention(const struct attn_bench *b) {
    const struct eng_model_config *c = b->cfg;
    int T_max = 0;
    for (int i = 0; i < b->n_lens; i++) {
        T_max = b->lens[i] > T_max ? (int)b->lens[i] : T_max;
    }
    const int bs = 16, n_blocks = (T_max + bs - 1) / bs;
    const size_t tok = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const size_t stride = 2 * (size_t)bs * tok;
    const size_t qd = (size_t)c->n_heads * (size_t)c->head_dim;
    const int threads = b->threads;
    float *cache = malloc((size_t)n_blocks * stride * sizeof(float));
    int32_t *table = malloc((size_t)n_blocks * sizeof(int32_t));
    float *q = malloc((size_t)T_max * qd * sizeof(float));
    float *out = malloc((size_t)(b->chunk > 16 ? b->chunk : 16) * qd * sizeof(float));
    float *scratch = malloc(
        eng_attention_scratch_floats(T_max, c->n_heads, c->n_kv_heads, c->head_dim, threads) *
        sizeof(float));
    json_t *j = b->json ? json_object() : NULL;
    json_t *arr = b->json ? json_array() : NULL;
    uint16_t *cache16 = NULL;
    int rc = 1;
    if (cache == NULL || table == NULL || q == NULL || out == NULL || scratch == NULL) {
        fprintf(stderr, "kvcast bench: out of memory for the attention benchmark\n");
        goto done;
    }
    uint64_t r = 7;
    for (size_t i = 0; i < (size_t)n_blocks * stride; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        cache[i] = (float)((r >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
    for (size_t i = 0; i < (size_t)T_max * qd; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (float)((r >> 40) & 0xffff) / 32768.0f - 1.0f;
    }
    for (int i = 0; i < n_blocks; i++) { /* reversed: no two neighbours adjacent in memory */
        table[i] = n_blocks - 1 - i;
    }
    const struct eng_kv_view kv = {.base = cache,
                                   .block_stride = stride,
                                   .v_offset = (size_t)bs * tok,
                                   .block_size = bs,
                                   .block_table = table};
    struct eng_kv_view kv16 = kv;
    if (b->kv_bf16) {
        cache16 = malloc((size_t)n_blocks * stride * sizeof(uint16_t));
        if (cache16 == NULL) {
            fprintf(stderr, "kvcast bench: out of memory for the bf16 cache\n");
            goto done;
        }
        for (size_t i = 0; i < (size_t)n_blocks * stride; i++) {
            cache16[i] = eng_f32_to_bf16(cache[i]);
        }
        kv16.base16 = cache16;
        kv16.dtype = ENG_DTYPE_BF16;
    }
    if (!b->json) {
        printf("attention (f32, H %d, Hkv %d, D %d, %d-row chunks) against an f32 GEMM "
               "%dx%dx%d measured beside each length:\n",
               c->n_heads, c->n_kv_heads, c->head_dim, b->chunk, b->gemm_m, b->gemm_n, b->gemm_k);
    }
    for (int i = 0; i < b->n_lens; i++) {
        const int T = (int)b->lens[i];
        const double flops = 4.0 * c->head_dim * c->n_heads * ((double)T * (T + 1) / 2.0);
        const double gemm =
            eng_dnn_gemm_gflops(b->dnn, ENG_WTYPE_F32, b->gemm_m, b->gemm_n, b->gemm_k, 5);
        const double t_new =
            attn_prefill_s(eng_attention, q, &kv, c, T, b->chunk, out, scratch, T > 4096 ? 2 : 3);
        const double t_old =
            b->old ? attn_prefill_s(eng__attention_rows, q, &kv, c, T, b->chunk, out, scratch, 1)
                   : 0.0;
        const double g_new = flops / t_new * 1e-9, g_old = b->old ? flops / t_old * 1e-9 : 0.0;
        if (b->json) {
            json_t *e = json_object();
            json_object_set_new(e, "tokens", json_integer(T));
            json_object_set_new(e, "ms", kc_json_real(t_new * 1e3, 2));
            json_object_set_new(e, "gflops", kc_json_real(g_new, 2));
            json_object_set_new(e, "gemm_gflops", kc_json_real(gemm, 1));
            json_object_set_new(e, "vs_gemm", kc_json_real(g_new / gemm, 3));
            if (b->old) {
                json_object_set_new(e, "old_ms", kc_json_real(t_old * 1e3, 2));
                json_object_set_new(e, "old_gflops", kc_json_real(g_old, 2));
                json_object_set_new(e, "old_vs_gemm", kc_json_real(g_old / gemm, 3));
                json_object_set_new(e, "speedup", kc_json_real(t_old / t_new, 2));
            }
            json_array_append_new(arr, e);
        } else {
            printf("  prefill %5d tokens: %9.2f ms %7.2f GFLOP/s  GEMM %7.1f  ratio %.2f", T,
                   t_new * 1e3, g_new, gemm, g_new / gemm);
            if (b->old) {
                printf("   | one-row kernel: %9.2f ms %7.2f GFLOP/s  ratio %.2f  speedup %.2fx",
                       t_old * 1e3, g_old, g_old / gemm, t_old / t_new);
            }
            printf("\n");
        }
    }
    /* A decode row and a few rows at the longest context on both paths. */
    static const int rows[] = {1, 2, 4, 8, 16};
    json_t *dec = b->json ? json_array() : NULL;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const int n = rows[i];
        const double us_auto = attn_rows_us(eng_attention, q, &kv, c, T_max, n, out, scratch);
        const double us_rows = attn_rows_us(eng__attention_rows, q, &kv, c, T_max, n, out, scratch);
        const double us_tiles =
            attn_rows_us(eng__attention_tiles, q, &kv, c, T_max, n, out, scratch);
        const double us_bf16 =
            b->kv_bf16 ? attn_rows_us(eng_attention, q, &kv16, c, T_max, n, out, scratch) : 0.0;
        if (b->json) {
            json_t *e = json_object();
            json_object_set_new(e, "rows", json_integer(n));
            json_object_set_new(e, "context", json_integer(T_max));
            json_object_set_new(e, "us", kc_json_real(us_auto, 1));
            json_object_set_new(e, "row_kernel_us", kc_json_real(us_rows, 1));
            json_object_set_new(e, "tile_kernel_us", kc_json_real(us_tiles, 1));
            if (b->kv_bf16) {
                json_object_set_new(e, "bf16_kv_us", kc_json_real(us_bf16, 1));
            }
            json_array_append_new(dec, e);
        } else {
            printf("  %2d row(s) at context %d: %8.1f us (one-row kernel %8.1f us, tiled %8.1f "
                   "us)",
                   n, T_max, us_auto, us_rows, us_tiles);
            if (b->kv_bf16) {
                printf("  bf16 KV: %8.1f us (%.2fx)", us_bf16, us_auto / us_bf16);
            }
            printf("\n");
        }
    }
    if (b->kv_bf16 && attn_step_bench(c, T_max, q, out, scratch, b->json, j) != 0) {
        goto done;
    }
    if (b->json) {
        json_object_set_new(j, "attn_chunk", json_integer(b->chunk));
        json_object_set_new(j, "attention", arr);
        json_object_set_new(j, "attention_rows", dec);
        arr = NULL;
        if (kc_json_print("kvcast bench engine", j) != 0) {
            j = NULL;
            goto done;
        }
        j = NULL;
    }
    rc = 0;
done:
    json_decref(arr);
    json_decref(j);
    free(cache);
    free(cache16);
    free(table);
    free(q);
    free(out);
    free(scratch);
    return rc;
}

/* --attn-only: the attention benchmark beside an f32 GEMM of the prefill's shape (512 rows
 * x F x C), without building a model. */
static int bench_attention_only(const struct eng_model_config *cfg, const long *lens, int n_lens,
                                int chunk, bool old, int threads, bool json, bool kv_bf16) {
    struct kc_error err = {0};
    struct eng_dnn *dnn = NULL;
    if (n_lens == 0) {
        fprintf(stderr, "kvcast bench: --attn-only with --attn none leaves nothing to run\n");
        return 2;
    }
    if (eng_dnn_create(threads, &dnn, &err) != KC_OK) {
        fprintf(stderr, "kvcast bench: %s\n", err.msg);
        return 1;
    }
    eng_dnn_enter(dnn);
    const struct attn_bench ab = {.cfg = cfg,
                                  .lens = lens,
                                  .n_lens = n_lens,
                                  .chunk = chunk,
                                  .old = old,
                                  .json = json,
                                  .threads = eng_dnn_threads(dnn),
                                  .dnn = dnn,
                                  .gemm_m = 512,
                                  .gemm_n = cfg->intermediate_size,
                                  .gemm_k = cfg->hidden_size,
                                  .kv_bf16 = kv_bf16};
    const int rc = bench_attention(&ab);
    eng_dnn_free(dnn);
    return rc;
}

/* One pass of bench_engine_one under --dtypes: the weight type for prefill and decode, and
 * whether the attention and --kvp parts run too. */
struct engine_pass {
    enum eng_wtype wt;
    bool extras;
};

/* What one pass measured, for the --dtypes summary. */
struct engine_row {
    enum eng_wtype prefill_wt, decode_wt;
    double prefill_tps, prefill_vs_gemm, gemm_gflops;
    double decode_tps, decode_vs_triad, triad_gbs, decode_bytes_per_token;
};

static int bench_engine_one(int argc, char **argv, const struct engine_pass *pass,
                            struct engine_row *row) {
    const char *config = NULL;
    long prompt_len = 512, gen = 64, threads = 0, repeat = 2, aux_layers = 0, batch = 1;
    bool json = false, kvp = false, attn_old = false, attn_only = false, profile = false;
    const char *aux_config = NULL, *attn_list = "512,2048,8192";
    long attn_chunk = 256;
    enum eng_dtype kv_dtype = ENG_DTYPE_F32;
    struct eng_model_params mp = eng_model_default_params();
    struct kc_args a;
    kc_args_init(&a, "kvcast bench engine", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            bench_usage(stdout);
            return 0;
        } else if (kc_args_str(&a, "--config", &config) ||
                   kc_args_long(&a, "--prompt-len", 1, 1 << 17, &prompt_len) ||
                   kc_args_long(&a, "--gen", 1, 1 << 17, &gen) ||
                   kc_args_long(&a, "--batch", 1, BENCH_MAX_BATCH, &batch) ||
                   kc_args_long(&a, "--threads", 1, 1024, &threads) ||
                   kc_args_long(&a, "--repeat", 1, 100, &repeat) ||
                   kc_args_str(&a, "--aux-config", &aux_config) ||
                   kc_args_str(&a, "--attn", &attn_list) ||
                   kc_args_long(&a, "--attn-chunk", 1, 1 << 16, &attn_chunk) ||
                   kc_args_long(&a, "--aux-layers", 1, ENG_MAX_LAYERS, &aux_layers)) {
        } else if (kc_args_str(&a, "--prefill-dtype", &v)) {
            if (eng_wtype_parse(v, &mp.prefill_wtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
        } else if (kc_args_str(&a, "--decode-dtype", &v)) {
            if (eng_wtype_parse(v, &mp.decode_wtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
        } else if (kc_args_str(&a, "--kv-dtype", &v)) {
            if (eng_kv_dtype_parse(v, &kv_dtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32 or bf16");
            }
        } else if (kc_args_flag(&a, "--attn-old")) {
            attn_old = true;
        } else if (kc_args_flag(&a, "--attn-only")) {
            attn_only = true;
        } else if (kc_args_flag(&a, "--profile")) {
            profile = true;
        } else if (kc_args_flag(&a, "--kvp")) {
            kvp = true;
        } else if (kc_args_flag(&a, "--json")) {
            json = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    if (config == NULL) {
        bench_usage(stderr);
        return 2;
    }
    if (pass != NULL) {
        mp.prefill_wtype = pass->wt;
        mp.decode_wtype = pass->wt;
        if (!pass->extras) {
            attn_list = "none";
            attn_only = false;
            kvp = false;
        }
    }
    struct kc_error err = {0};
    struct eng_model_config cfg;
    if (eng_model_config_preset(config, &cfg) != KC_OK &&
        eng_model_config_load(config, &cfg, &err) != KC_OK) {
        fprintf(stderr, "kvcast bench: '%s' is neither a preset nor a readable config.json: %s\n",
                config, err.msg);
        return 2;
    }
    long attn_lens[8];
    int n_attn = 0;
    if (strcmp(attn_list, "none") != 0) {
        const char *p = attn_list;
        while (*p != '\0') {
            char *end = NULL;
            const long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > (1 << 17) || n_attn == 8 ||
                (*end != ',' && *end != '\0')) {
                fprintf(stderr,
                        "kvcast bench: --attn wants up to 8 comma-separated lengths in "
                        "[1, 131072] or none, not '%s'\n",
                        attn_list);
                return 2;
            }
            attn_lens[n_attn++] = v;
            p = *end == ',' ? end + 1 : end;
        }
    }
    if (attn_only) {
        return bench_attention_only(&cfg, attn_lens, n_attn, (int)attn_chunk, attn_old,
                                    (int)threads, json, kv_dtype == ENG_DTYPE_BF16);
    }
    const int T = (int)prompt_len, G = (int)gen, n_ctx = T + G + 1;
    if (n_ctx > cfg.max_position_embeddings) {
        fprintf(stderr, "kvcast bench: prompt + gen exceed the model's %d positions\n",
                cfg.max_position_embeddings);
        return 2;
    }
    int exit_code = 1;
    struct eng_model *m = NULL;
    struct eng_ctx *ctx = NULL;
    struct eng_dnn *dnn = NULL;
    struct eng_kv_pool pool = {0};
    struct eng_seq seq = {0};
    struct eng_seq *more = NULL; /* --batch: more[1..B-1] follow `seq` (more[0] is unused) */
    int32_t *tokens = NULL;
    float *logits = NULL;
    struct eng_triad *triad = NULL;
    const int B = (int)batch;

    fprintf(stderr, "bench: building a random %s model (%.2f B params)...\n", config,
            (double)eng_model_config_n_params(&cfg) * 1e-9);
    if (eng_model_init_random(&cfg, &mp, 1234, &m, &err) != KC_OK ||
        eng_ctx_create(m, T < 512 ? (T > B ? T : B) : 512, n_ctx, (int)threads, &ctx, &err) !=
            KC_OK ||
        eng_dnn_create((int)threads, &dnn, &err) != KC_OK ||
        eng_kv_pool_init_dtype(&pool, &cfg, 16, B * ((n_ctx + 15) / 16), kv_dtype, &err) != KC_OK) {
        fprintf(stderr, "kvcast bench: %s\n", err.msg);
        goto done;
    }
    tokens = calloc((size_t)T, sizeof(int32_t));
    logits = calloc((size_t)B * (size_t)cfg.vocab_size, sizeof(float));
    more = calloc((size_t)B, sizeof(*more));
    if (tokens == NULL || logits == NULL || more == NULL) {
        goto done;
    }
    uint64_t r = 42;
    for (int i = 0; i < T; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((r >> 33) % (uint64_t)cfg.vocab_size);
    }

    /* The machine's ceilings, measured now beside the engine. */
    eng_dnn_enter(dnn);
    const int gemm_m = T < 512 ? T : 512;
    const double gemm_gflops = eng_dnn_gemm_gflops(dnn, mp.prefill_wtype, gemm_m,
                                                   cfg.intermediate_size, cfg.hidden_size, 5);
    triad = eng_triad_create((size_t)256 << 20);
    if (triad == NULL) {
        fprintf(stderr, "kvcast bench: out of memory for the triad arrays\n");
        goto done;
    }
    (void)eng_triad_run(triad, 1); /* warm-up */
    const double triad_gbs = eng_triad_run(triad, 5);

    /* Prefill: one warm-up (creates primitives), then the best of `repeat`. */
    double best_prefill = 1e30;
    for (int rep = 0; rep <= repeat; rep++) {
        eng_seq_release(&pool, &seq);
        const double t0 = kc_now_s();
        if (prefill_prompt(ctx, m, &pool, &seq, tokens, T, logits, &err) != KC_OK) {
            goto done;
        }
        const double dt = kc_now_s() - t0;
        if (rep > 0 && dt < best_prefill) {
            best_prefill = dt;
        }
    }
    /* --batch: the other sequences of the decode batch hold the same prompt (untimed). */
    struct eng_seq *seqs[BENCH_MAX_BATCH] = {&seq};
    for (int i = 1; i < B; i++) {
        seqs[i] = &more[i];
        if (prefill_prompt(ctx, m, &pool, seqs[i], tokens, T, logits, &err) != KC_OK) {
            goto done;
        }
    }
    /* Decode: G steps after the prompt (the first one warms up), one token per sequence of
     * the batch, in windows of DECODE_WINDOW steps with a triad pass before each window and
     * after the last. This host's bandwidth swings with its neighbours' load from second to
     * second, so each window is compared with the bandwidth measured right beside it (the
     * mean of the two triads around it); the reported ratio is the median over windows. */
    enum { DECODE_WINDOW = 4 };
    const double kv_bytes_per_pos =
        2.0 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * (double)pool.elem_size;
    const int n_win = (G + DECODE_WINDOW - 1) / DECODE_WINDOW;
    double *win_ratio = calloc((size_t)n_win, sizeof(double));
    if (win_ratio == NULL) {
        goto done;
    }
    struct decode_run run = {.ctx = ctx,
                             .m = m,
                             .pool = &pool,
                             .seqs = seqs,
                             .n_seqs = B,
                             .tok = tokens[T - 1],
                             .vocab = cfg.vocab_size,
                             .logits = logits,
                             .weight_bytes = (double)eng_model_step_bytes_read(m, B),
                             .kv_bytes_per_pos = kv_bytes_per_pos};
    double t_decode = 0.0, bytes_decode = 0.0, t_win, bytes_win;
    if (decode_steps(&run, 1, &t_win, &bytes_win, &err) != KC_OK) { /* warm-up */
        fprintf(stderr, "kvcast bench: %s\n", err.msg);
        free(win_ratio);
        goto done;
    }
    double triad_prev = eng_triad_run(triad, 1);
    for (int w = 0; w < n_win; w++) {
        const int left = G - w * DECODE_WINDOW;
        if (decode_steps(&run, left < DECODE_WINDOW ? left : DECODE_WINDOW, &t_win, &bytes_win,
                         &err) != KC_OK) {
            fprintf(stderr, "kvcast bench: %s\n", err.msg);
            free(win_ratio);
            goto done;
        }
        const double triad_next = eng_triad_run(triad, 1);
        win_ratio[w] = bytes_win / t_win * 1e-9 / (0.5 * (triad_prev + triad_next));
        triad_prev = triad_next;
        t_decode += t_win;
        bytes_decode += bytes_win;
    }
    qsort(win_ratio, (size_t)n_win, sizeof(double), cmp_double);
    const double decode_ratio =
        n_win % 2 ? win_ratio[n_win / 2] : 0.5 * (win_ratio[n_win / 2 - 1] + win_ratio[n_win / 2]);
    free(win_ratio);
    const double prefill_tps = T / best_prefill;
    const double prefill_gflops = prefill_flops(&cfg, T) / best_prefill * 1e-9;
    const double decode_tps = (double)G * B / t_decode;
    const double decode_gbs = bytes_decode / t_decode * 1e-9;
    const char *pw = eng_wtype_name(mp.prefill_wtype);
    const char *dw = eng_wtype_name(mp.decode_wtype);
    if (row != NULL) {
        *row = (struct engine_row){.prefill_wt = mp.prefill_wtype,
                                   .decode_wt = mp.decode_wtype,
                                   .prefill_tps = prefill_tps,
                                   .prefill_vs_gemm = prefill_gflops / gemm_gflops,
                                   .gemm_gflops = gemm_gflops,
                                   .decode_tps = decode_tps,
                                   .decode_vs_triad = decode_ratio,
                                   .triad_gbs = triad_gbs,
                                   .decode_bytes_per_token = bytes_decode / G / B};
    }
    const char *kvw = kv_dtype == ENG_DTYPE_BF16 ? "bf16" : "f32";
    char batch_note[32] = "";
    if (B > 1) {
        snprintf(batch_note, sizeof(batch_note), ", batch %d", B);
    }
    if (json) {
        json_t *j = json_object();
        json_object_set_new(j, "config", kc_json_str(config));
        json_object_set_new(j, "threads", json_integer(eng_dnn_threads(dnn)));
        json_object_set_new(j, "prompt_len", json_integer(T));
        json_object_set_new(j, "gen", json_integer(G));
        json_object_set_new(j, "batch", json_integer(B));
        json_object_set_new(j, "prefill_dtype", json_string(pw));
        json_object_set_new(j, "decode_dtype", json_string(dw));
        json_object_set_new(j, "kv_dtype", json_string(kvw));
        json_object_set_new(j, "prefill_tokens_per_s", kc_json_real(prefill_tps, 2));
        json_object_set_new(j, "prefill_gflops", kc_json_real(prefill_gflops, 1));
        json_object_set_new(j, "gemm_gflops", kc_json_real(gemm_gflops, 1));
        json_object_set_new(j, "prefill_vs_gemm", kc_json_real(prefill_gflops / gemm_gflops, 3));
        json_object_set_new(j, "decode_tokens_per_s", kc_json_real(decode_tps, 2));
        json_object_set_new(j, "decode_gbs", kc_json_real(decode_gbs, 2));
        json_object_set_new(j, "triad_gbs", kc_json_real(triad_gbs, 2));
        json_object_set_new(j, "decode_vs_triad", kc_json_real(decode_ratio, 3));
        json_object_set_new(j, "decode_vs_best_triad", kc_json_real(decode_gbs / triad_gbs, 3));
        if (kc_json_print("kvcast bench engine", j) != 0) {
            goto done;
        }
    } else {
        printf("config %s, %d threads, prompt %d, gen %d, %s KV cache\n", config,
               eng_dnn_threads(dnn), T, G, kvw);
        printf("prefill (%s weights): %8.1f tokens/s  %7.1f GFLOP/s   single GEMM %dx%dx%d: %7.1f "
               "GFLOP/s  ratio %.2f\n",
               pw, prefill_tps, prefill_gflops, gemm_m, cfg.intermediate_size, cfg.hidden_size,
               gemm_gflops, prefill_gflops / gemm_gflops);
        printf("decode  (%s weights%s): %8.2f tokens/s  %7.2f GB/s      stream triad: %7.2f GB/s  "
               "ratio %.2f (median of %d windows against the triad beside each; whole run "
               "against the best triad: %.2f)\n",
               dw, batch_note, decode_tps, decode_gbs, triad_gbs, decode_ratio, n_win,
               decode_gbs / triad_gbs);
    }
    if (profile) {
        eng_seq_release(&pool, &seq);
        const struct kc_bench_profile_in pin = {.ctx = ctx,
                                                .m = m,
                                                .pool = &pool,
                                                .seq = &seq,
                                                .tokens = tokens,
                                                .n_tokens = T,
                                                .logits = logits,
                                                .repeat = (int)repeat,
                                                .flops = prefill_flops(&cfg, T),
                                                .dnn = dnn,
                                                .wt = mp.prefill_wtype,
                                                .gemm_m = gemm_m,
                                                .gemm_n = cfg.intermediate_size,
                                                .gemm_k = cfg.hidden_size,
                                                .wtype = pw,
                                                .json = json};
        if (kc_bench_profile_run(&pin) != 0) {
            goto done;
        }
        /* The decode profile continues the same prompt for as many steps as the timed decode. */
        if (prefill_prompt(ctx, m, &pool, &seq, tokens, T, logits, &err) != KC_OK) {
            goto done;
        }
        const struct kc_bench_decode_profile_in dpin = {
            .ctx = ctx,
            .m = m,
            .pool = &pool,
            .seq = &seq,
            .first_token = tokens[T - 1],
            .vocab = cfg.vocab_size,
            .context = T,
            .logits = logits,
            .steps = G,
            .weight_elem_bytes = mp.decode_wtype == ENG_WTYPE_INT8   ? 1.0
                                 : mp.decode_wtype == ENG_WTYPE_BF16 ? 2.0
                                                                     : 4.0,
            .triad = triad,
            .wtype = dw,
            .json = json};
        if (kc_bench_profile_decode(&dpin) != 0) {
            goto done;
        }
    }
    if (n_attn > 0) {
        const struct attn_bench ab = {.cfg = &cfg,
                                      .lens = attn_lens,
                                      .n_lens = n_attn,
                                      .chunk = (int)attn_chunk,
                                      .old = attn_old,
                                      .json = json,
                                      .threads = eng_dnn_threads(dnn),
                                      .dnn = dnn,
                                      .gemm_m = gemm_m,
                                      .gemm_n = cfg.intermediate_size,
                                      .gemm_k = cfg.hidden_size,
                                      .kv_bf16 = kv_dtype == ENG_DTYPE_BF16};
        if (bench_attention(&ab) != 0) {
            goto done;
        }
    }
    exit_code = 0;
    if (kvp) {
        struct eng_model_config aux_cfg = cfg;
        if (aux_config != NULL) {
            if (eng_model_config_preset(aux_config, &aux_cfg) != KC_OK &&
                eng_model_config_load(aux_config, &aux_cfg, &err) != KC_OK) {
                fprintf(stderr, "kvcast bench: bad --aux-config '%s': %s\n", aux_config, err.msg);
                exit_code = 2;
                goto done;
            }
        } else {
            aux_cfg.n_layers =
                aux_layers > 0 ? (int)aux_layers : (cfg.n_layers / 4 > 0 ? cfg.n_layers / 4 : 1);
        }
        eng_seq_release(&pool, &seq);
        exit_code = bench_kvp(m, &aux_cfg, &mp, T, (int)threads, (int)repeat, json);
    }
done:
    free(tokens);
    free(logits);
    eng_triad_free(triad);
    eng_seq_release(&pool, &seq); /* an empty sequence never touches the pool */
    for (int i = 1; more != NULL && i < B; i++) {
        eng_seq_release(&pool, &more[i]);
    }
    free(more);
    eng_kv_pool_free(&pool);
    eng_dnn_free(dnn);
    eng_ctx_free(ctx);
    eng_model_free(m);
    return exit_code;
}

/* The --dtypes summary: one row per weight type, each ratio against its own ceiling, and
 * decode tokens/s against bf16's when bf16 ran. */
static void engine_summary(const struct engine_row *rows, int n) {
    double bf16_tps = 0.0;
    for (int i = 0; i < n; i++) {
        if (rows[i].decode_wt == ENG_WTYPE_BF16) {
            bf16_tps = rows[i].decode_tps;
        }
    }
    printf("\nsummary: each prefill against the single GEMM of its type, each decode against the "
           "stream triad\n");
    printf("%-7s %13s %11s %8s %12s %10s %14s %8s %9s\n", "weights", "prefill tok/s",
           "GEMM G(OP)/s", "ratio", "decode tok/s", "MB/token", "triad allows", "ratio", "x bf16");
    for (int i = 0; i < n; i++) {
        const struct engine_row *r = &rows[i];
        const double allows = r->triad_gbs * 1e9 / r->decode_bytes_per_token;
        printf("%-7s %13.1f %11.1f %8.2f %12.2f %10.1f %14.2f %8.2f", eng_wtype_name(r->decode_wt),
               r->prefill_tps, r->gemm_gflops, r->prefill_vs_gemm, r->decode_tps,
               r->decode_bytes_per_token * 1e-6, allows, r->decode_vs_triad);
        if (bf16_tps > 0.0) {
            printf(" %9.2f", r->decode_tps / bf16_tps);
        }
        printf("\n");
    }
    printf(
        "(triad allows: tokens/s of the best triad over the bytes a decode step reads; the decode "
        "ratio is the median over windows against the triad beside each)\n");
}

/* `kvcast bench engine`: with --dtypes LIST, one bench_engine_one pass per weight type and a
 * summary; without it, one pass with --prefill-dtype/--decode-dtype. */
static int bench_engine(int argc, char **argv) {
    const char *list = NULL;
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    int n_rest = 0;
    if (rest == NULL) {
        return 1;
    }
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dtypes") == 0 && i + 1 < argc) {
            list = argv[++i];
        } else if (strncmp(argv[i], "--dtypes=", 9) == 0) {
            list = argv[i] + 9;
        } else {
            rest[n_rest++] = argv[i];
        }
    }
    if (list == NULL) {
        free(rest);
        return bench_engine_one(argc, argv, NULL, NULL);
    }
    enum { MAX_TYPES = 3 };
    struct engine_pass passes[MAX_TYPES];
    struct engine_row rows[MAX_TYPES];
    int n = 0;
    for (const char *p = list;;) {
        const char *end = strchr(p, ',');
        const size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char name[8];
        if (len == 0 || len >= sizeof(name) || n == MAX_TYPES) {
            break;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        if (eng_wtype_parse(name, &passes[n].wt) != KC_OK) {
            break;
        }
        passes[n].extras = n == 0;
        n++;
        if (end == NULL) {
            list = NULL; /* parsed to the end */
            break;
        }
        p = end + 1;
    }
    if (list != NULL || n == 0) {
        fprintf(stderr, "kvcast bench engine: --dtypes wants up to 3 of f32, bf16, int8, "
                        "comma-separated\n");
        free(rest);
        return 2;
    }
    bool json = false;
    for (int i = 0; i < n_rest; i++) {
        json = json || strcmp(rest[i], "--json") == 0;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = bench_engine_one(n_rest, rest, &passes[i], &rows[i]);
    }
    if (rc == 0 && !json) {
        engine_summary(rows, n);
    }
    free(rest);
    return rc;
}

/*
 * `kvcast bench gemv`: one decode step's bf16 (or --dtype int8/f32) weights of a configuration
 * (q|k|v, o, gate|up and down of every layer) streamed through oneDNN primitives of --rows rows,
 * packed and plain (int8: the inner product on its one-row layout), round after round with a
 * stream triad in each round: the measurement behind the engine's one-row copies
 * (engine/ops_dnnl.c, invariants 6 and 8).
 */
static int bench_gemv(int argc, char **argv) {
    const char *config = "tinyllama-1.1b";
    long rows = 1, rounds = 8, threads = 0;
    enum eng_wtype wt = ENG_WTYPE_BF16;
    struct kc_args a;
    kc_args_init(&a, "kvcast bench gemv", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            printf("usage: kvcast bench gemv [--config NAME|config.json] [--rows N (1)] "
                   "[--rounds N (8)] [--threads N] [--dtype f32|bf16|int8 (bf16)]\n");
            return 0;
        } else if (kc_args_str(&a, "--dtype", &v)) {
            if (eng_wtype_parse(v, &wt) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
        } else if (kc_args_str(&a, "--config", &config) ||
                   kc_args_long(&a, "--rows", 1, ENG_DECODE_MAX_M, &rows) ||
                   kc_args_long(&a, "--rounds", 1, 1000, &rounds) ||
                   kc_args_long(&a, "--threads", 1, 1024, &threads)) {
        } else {
            return kc_args_fail(&a);
        }
    }
    struct kc_error err = {0};
    struct eng_model_config c;
    if (eng_model_config_preset(config, &c) != KC_OK &&
        eng_model_config_load(config, &c, &err) != KC_OK) {
        fprintf(stderr, "kvcast bench gemv: bad --config '%s': %s\n", config, err.msg);
        return 2;
    }
    const int n_mats = 4 * c.n_layers;
    const int qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
    int *k = calloc((size_t)n_mats, sizeof(int)), *n = calloc((size_t)n_mats, sizeof(int));
    struct eng_dnn *dnn = NULL;
    struct eng_weights_probe *probe[3] = {NULL, NULL, NULL};
    struct eng_triad *triad = NULL;
    int rc = 1;
    if (k == NULL || n == NULL) {
        goto done;
    }
    for (int l = 0; l < c.n_layers; l++) {
        const int sk[4] = {c.hidden_size, qd, c.hidden_size, c.intermediate_size};
        const int sn[4] = {qd + 2 * kvd, c.hidden_size, 2 * c.intermediate_size, c.hidden_size};
        for (int j = 0; j < 4; j++) {
            k[4 * l + j] = sk[j];
            n[4 * l + j] = sn[j];
        }
    }
    /* probe[0]: packed for --rows; [1]: the prefill copy's layout (absent where oneDNN refuses
     * it for --rows); [2]: plain, for int8 the inner product. */
    if (eng_dnn_create((int)threads, &dnn, &err) != KC_OK ||
        eng_weights_probe_create(dnn, wt, (int)rows, (int)rows, k, n, n_mats, &probe[0], &err) !=
            KC_OK ||
        eng_weights_probe_create(dnn, wt, (int)rows, 0, k, n, n_mats, &probe[2], &err) != KC_OK) {
        fprintf(stderr, "kvcast bench gemv: %s\n", err.msg);
        goto done;
    }
    (void)eng_weights_probe_create(dnn, wt, (int)rows, ENG_LINEAR_CHUNK, k, n, n_mats, &probe[1],
                                   NULL);
    eng_dnn_enter(dnn);
    triad = eng_triad_create((size_t)256 << 20);
    if (triad == NULL) {
        fprintf(stderr, "kvcast bench gemv: out of memory\n");
        goto done;
    }
    printf("config %s, %d threads, %ld rows: GB/s of %s decode weights per round\n", config,
           eng_dnn_threads(dnn), rows, eng_wtype_name(wt));
    printf("round   packed   prefill layout   %s   triad    read   read+prefetch\n",
           wt == ENG_WTYPE_INT8 ? "inner product"
           : rows == 1          ? " plain (gemv)"
                                : "        plain");
    /* Round -1 warms up page mappings and primitives. */
    for (long r = -1; r < rounds; r++) {
        double gbs[3] = {0.0, 0.0, 0.0};
        for (int i = 0; i < 3; i++) {
            gbs[i] = probe[i] != NULL ? eng_weights_probe_run(probe[i]) : 0.0;
        }
        const double tri = eng_triad_run(triad, 1);
        const double rd = eng_triad_read(triad, false), rdpf = eng_triad_read(triad, true);
        char pre[16] = "     -";
        if (probe[1] != NULL) {
            snprintf(pre, sizeof(pre), "%6.1f", gbs[1]);
        }
        if (r < 0) {
            continue;
        }
        printf("%5ld   %6.1f   %14s   %13.1f   %5.1f   %5.1f   %13.1f\n", r, gbs[0], pre, gbs[2],
               tri, rd, rdpf);
    }
    rc = 0;
done:
    eng_triad_free(triad);
    for (int i = 0; i < 3; i++) {
        eng_weights_probe_free(probe[i]);
    }
    eng_dnn_free(dnn);
    free(k);
    free(n);
    return rc;
}

int kc_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) {
        return kc_bench_serve(argc - 1, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "engine") == 0) {
        return bench_engine(argc - 1, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "gemv") == 0) {
        return bench_gemv(argc - 1, argv + 1);
    }
    const bool help = argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
    if (argc >= 2 && !help) {
        fprintf(stderr, "kvcast bench: unknown benchmark '%s'\n", argv[1]);
    }
    fprintf(help ? stdout : stderr,
            "usage: kvcast bench engine|serve|gemv [options]\n"
            "  engine   the forward pass on a synthetic model beside the machine's GEMM and "
            "bandwidth\n"
            "  serve    an open-loop HTTP load test of a running `kvcast serve`\n"
            "  gemv     one decode step's weights streamed through oneDNN, packed and plain\n"
            "`kvcast bench <benchmark> --help` describes each one's options.\n");
    return help ? 0 : 2;
}
