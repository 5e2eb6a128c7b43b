/*
 * cmd_eval.c — `kvcast eval`: measures what KV Prediction costs in quality and saves in time.
 * Takes N (prompt, continuation) windows of held-out text and, for the modes full (base with
 * its own KV: the ceiling), aux (the auxiliary model alone: the floor) and predict (base with
 * the predicted KV), reports the continuation's mean NLL and perplexity given the prompt
 * (teacher forcing: after the prefill the model of the mode runs the continuation, appending
 * its own exact K/V), first-token and greedy-continuation agreement with full, analytic TTFT
 * FLOPs and the measured median TTFT; and the share of the aux -> full NLL gap that predict
 * closes.
 *
 * Exit codes: 0 ok, 1 a model, the data or a forward failed, 2 bad command line.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kc.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/cli/kvp_data.h"

#define EVAL_DEFAULT_BUNDLE "models/tiny/kvcast-bundle.json"

static void eval_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvcast eval --data FILE.txt [--bundle B | --base DIR --aux DIR [--predictor F]]\n"
        "                   [options]\n"
        "  --bundle B          KVP bundle JSON (default " EVAL_DEFAULT_BUNDLE ")\n"
        "  --base/--aux DIR    a pair without a bundle; --predictor F adds the predict mode\n"
        "  --prompt-len P      prompt tokens per sample (default 256)\n"
        "  --cont-len C        continuation tokens scored per sample (default 32)\n"
        "  --samples N         samples, spread evenly over the data (default 16)\n"
        "  --ids               FILE holds token ids (whitespace/comma separated), not text\n"
        "  --dtype f32|bf16    weights for every step (default: f32 prefill, bf16 decode)\n"
        "  --threads N         OpenMP threads (default: all cores)\n"
        "  --json              print one JSON object instead of a table\n");
}

struct eval_opts {
    const char *bundle, *base, *aux, *predictor, *data;
    long prompt_len, cont_len, samples;
    bool ids, json, no_bos;
    int threads;
    struct eng_model_params mparams;
};

static int parse_eval(int argc, char **argv, struct eval_opts *o) {
    o->prompt_len = 256;
    o->cont_len = 32;
    o->samples = 16;
    o->mparams = eng_model_default_params();
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        bool missing = false;
        long n;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            eval_usage(stdout);
            return -1;
        } else if (kc_arg_value(argc, argv, &i, "--bundle", &v, &missing)) {
            o->bundle = v;
        } else if (kc_arg_value(argc, argv, &i, "--base", &v, &missing)) {
            o->base = v;
        } else if (kc_arg_value(argc, argv, &i, "--aux", &v, &missing)) {
            o->aux = v;
        } else if (kc_arg_value(argc, argv, &i, "--predictor", &v, &missing)) {
            o->predictor = v;
        } else if (kc_arg_value(argc, argv, &i, "--data", &v, &missing)) {
            o->data = v;
        } else if (kc_arg_value(argc, argv, &i, "--prompt-len", &v, &missing)) {
            if (!kc_arg_int(v, 1, 1 << 20, &o->prompt_len)) {
                fprintf(stderr, "kvcast eval: --prompt-len must be an integer >= 1\n");
                return 2;
            }
        } else if (kc_arg_value(argc, argv, &i, "--cont-len", &v, &missing)) {
            if (!kc_arg_int(v, 1, 1 << 16, &o->cont_len)) {
                fprintf(stderr, "kvcast eval: --cont-len must be an integer in [1, 65536]\n");
                return 2;
            }
        } else if (kc_arg_value(argc, argv, &i, "--samples", &v, &missing)) {
            if (!kc_arg_int(v, 1, 1 << 20, &o->samples)) {
                fprintf(stderr, "kvcast eval: --samples must be an integer >= 1\n");
                return 2;
            }
        } else if (kc_arg_value(argc, argv, &i, "--dtype", &v, &missing)) {
            if (eng_wtype_parse(v, &o->mparams.prefill_wtype) != KC_OK) {
                fprintf(stderr, "kvcast eval: --dtype must be f32 or bf16\n");
                return 2;
            }
            o->mparams.decode_wtype = o->mparams.prefill_wtype;
        } else if (kc_arg_value(argc, argv, &i, "--threads", &v, &missing)) {
            if (!kc_arg_int(v, 1, 1024, &n)) {
                fprintf(stderr, "kvcast eval: --threads must be in [1, 1024]\n");
                return 2;
            }
            o->threads = (int)n;
        } else if (missing) {
            fprintf(stderr, "kvcast eval: %s needs a value\n", argv[i]);
            return 2;
        } else if (strcmp(argv[i], "--ids") == 0) {
            o->ids = true;
        } else if (strcmp(argv[i], "--no-bos") == 0) {
            o->no_bos = true;
        } else if (strcmp(argv[i], "--json") == 0) {
            o->json = true;
        } else {
            fprintf(stderr, "kvcast eval: unknown option '%s'\n", argv[i]);
            eval_usage(stderr);
            return 2;
        }
    }
    if (o->data == NULL) {
        fprintf(stderr, "kvcast eval: --data is required\n");
        eval_usage(stderr);
        return 2;
    }
    if ((o->base == NULL) != (o->aux == NULL) || (o->bundle != NULL && o->base != NULL) ||
        (o->predictor != NULL && o->base == NULL)) {
        fprintf(stderr, "kvcast eval: give either --bundle or --base and --aux (and optionally "
                        "--predictor)\n");
        return 2;
    }
    if (o->bundle == NULL && o->base == NULL) {
        o->bundle = EVAL_DEFAULT_BUNDLE;
    }
    return 0;
}

/* Per-mode results. */
struct mode_stats {
    bool on;
    double nll_sum;     /* over samples * cont_len tokens */
    long first_agree;   /* samples whose first greedy token equals full's */
    long greedy_tokens; /* tokens matching full's greedy continuation before the 1st divergence */
    double *ttft_ms;    /* [2 * samples] */
    int n_ttft;
    double flops;
    struct eng_kvp_timings split_sum;
};

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    if (n == 0) {
        return 0.0;
    }
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Everything one sample of one mode needs. */
struct eval_run {
    struct eng_kvp_ctx *kc;
    struct eng_kv_pool *pool[ENG_KVP_N_MODES];
    int V, P, C;
    float *logits;    /* [V] */
    float *tf_logits; /* [C - 1, V] */
};

/* Prefills prompt in mode, timing it. */
static int run_prefill(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq,
                       const int32_t *prompt, struct mode_stats *st, struct kc_error *err) {
    struct eng_kvp_timings t = {0};
    int rc = eng_kvp_prefill(r->kc, mode, r->pool[mode], seq, prompt, r->P, r->logits, &t, err);
    if (rc == KC_OK && st != NULL) {
        st->ttft_ms[st->n_ttft++] = t.total_ms;
        st->split_sum.aux_ms += t.aux_ms;
        st->split_sum.predict_ms += t.predict_ms;
        st->split_sum.base_first_step_ms += t.base_first_step_ms;
        st->split_sum.total_ms += t.total_ms;
    }
    return rc;
}

/* One sample in one mode: NLL of cont given prompt (teacher forcing) and the greedy
 * continuation greedy[C]. */
static int run_sample(struct eval_run *r, enum eng_kvp_mode mode, const int32_t *prompt,
                      const int32_t *cont, struct mode_stats *st, int32_t *greedy,
                      struct kc_error *err) {
    struct eng_kv_pool *pool = r->pool[mode];
    struct eng_seq seq = {0};
    int rc = run_prefill(r, mode, &seq, prompt, st, err);
    if (rc != KC_OK) {
        return rc;
    }
    double nll = -(double)eng_log_softmax_at(r->logits, r->V, cont[0]);
    if (r->C > 1) {
        rc = eng_kvp_forward(r->kc, mode, pool, &seq, cont, r->C - 1, ENG_LOGITS_ALL, r->tf_logits,
                             err);
        if (rc != KC_OK) {
            eng_seq_release(pool, &seq);
            return rc;
        }
        for (int i = 1; i < r->C; i++) {
            nll -= (double)eng_log_softmax_at(r->tf_logits + (size_t)(i - 1) * r->V, r->V, cont[i]);
        }
    }
    eng_seq_release(pool, &seq);
    st->nll_sum += nll;
    /* Greedy continuation from a second prefill (also a TTFT sample). */
    rc = run_prefill(r, mode, &seq, prompt, st, err);
    for (int i = 0; rc == KC_OK && i < r->C; i++) {
        int32_t best = 0;
        for (int v = 1; v < r->V; v++) {
            best = r->logits[v] > r->logits[best] ? v : best;
        }
        greedy[i] = best;
        if (i + 1 < r->C) {
            rc = eng_kvp_forward(r->kc, mode, pool, &seq, &greedy[i], 1, ENG_LOGITS_LAST, r->logits,
                                 err);
        }
    }
    eng_seq_release(pool, &seq);
    return rc;
}

static void print_json(const struct eval_opts *o, struct mode_stats *ms, long n, double gap) {
    printf("{\"modes\": {");
    bool first = true;
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        struct mode_stats *s = &ms[m];
        if (!s->on) {
            continue;
        }
        const double nll = s->nll_sum / ((double)n * (double)o->cont_len);
        const double dn = (double)n;
        printf("%s\"%s\": {\"nll\": %.6f, \"ppl\": %.4f, \"first_token_agreement\": %.4f, "
               "\"greedy_agreement\": %.4f, \"greedy_agreement_tokens\": %.3f, "
               "\"ttft_flops\": %.6g, \"ttft_ms_median\": %.3f, \"aux_ms_mean\": %.3f, "
               "\"predict_ms_mean\": %.3f, \"base_first_step_ms_mean\": %.3f}",
               first ? "" : ", ", eng_kvp_mode_name((enum eng_kvp_mode)m), nll, exp(nll),
               (double)s->first_agree / dn, (double)s->greedy_tokens / (dn * (double)o->cont_len),
               (double)s->greedy_tokens / dn, s->flops, median(s->ttft_ms, s->n_ttft),
               s->split_sum.aux_ms / s->n_ttft, s->split_sum.predict_ms / s->n_ttft,
               s->split_sum.base_first_step_ms / s->n_ttft);
        first = false;
    }
    printf("}, \"gap_closed\": ");
    if (isfinite(gap)) {
        printf("%.4f", gap);
    } else {
        printf("null");
    }
    printf(", \"samples\": %ld, \"prompt_len\": %ld, \"cont_len\": %ld}\n", n, o->prompt_len,
           o->cont_len);
}

static void print_table(const struct eval_opts *o, struct mode_stats *ms, long n, double gap) {
    const double full_flops = ms[ENG_KVP_FULL].flops;
    printf("kvcast eval: %ld samples, prompt %ld tokens, continuation %ld tokens\n\n", n,
           o->prompt_len, o->cont_len);
    printf("%-8s %9s %10s %9s %14s %12s %9s %12s %9s\n", "mode", "NLL", "ppl", "1st-tok",
           "greedy-agree", "TTFT GFLOP", "x full", "TTFT ms med", "x full");
    double full_ms = 0.0;
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        struct mode_stats *s = &ms[m];
        if (!s->on) {
            continue;
        }
        const double nll = s->nll_sum / ((double)n * (double)o->cont_len);
        const double med = median(s->ttft_ms, s->n_ttft);
        if (m == ENG_KVP_FULL) {
            full_ms = med;
        }
        printf("%-8s %9.4f %10.3f %9.3f %8.3f (%4.1f) %12.4f %9.3f %12.2f %9.3f\n",
               eng_kvp_mode_name((enum eng_kvp_mode)m), nll, exp(nll),
               (double)s->first_agree / (double)n,
               (double)s->greedy_tokens / ((double)n * (double)o->cont_len),
               (double)s->greedy_tokens / (double)n, s->flops / 1e9, s->flops / full_flops, med,
               full_ms > 0 ? med / full_ms : 0.0);
    }
    const struct mode_stats *p = &ms[ENG_KVP_PREDICT];
    if (p->on) {
        printf("\npredict TTFT split (mean): aux %.2f ms, predictor %.2f ms, base first step "
               "%.2f ms\n",
               p->split_sum.aux_ms / p->n_ttft, p->split_sum.predict_ms / p->n_ttft,
               p->split_sum.base_first_step_ms / p->n_ttft);
        if (isfinite(gap)) {
            printf("gap closed: %.1f%% of the aux -> full NLL gap\n", 100.0 * gap);
        } else {
            printf("gap closed: undefined (aux and full have the same NLL)\n");
        }
    }
    printf("(greedy-agree: share of continuation tokens matching full's greedy output before "
           "the first divergence; mean tokens in parentheses)\n");
}

int kc_cmd_eval(int argc, char **argv) {
    struct eval_opts o = {0};
    int rc = parse_eval(argc, argv, &o);
    if (rc != 0) {
        return rc < 0 ? 0 : rc;
    }
    struct kc_error err = {0};
    struct eng_kvp_bundle *b = NULL;
    struct eng_kvp_ctx *kc = NULL;
    struct eng_kv_pool bpool = {0}, apool = {0};
    int32_t *tokens = NULL, *greedy = NULL, *sample = NULL;
    size_t n_tokens = 0;
    struct mode_stats ms[ENG_KVP_N_MODES] = {{0}};
    struct eval_run r = {0};
    int exit_code = 1;

    rc = o.bundle != NULL ? eng_kvp_bundle_load(o.bundle, &o.mparams, &b, &err)
                          : eng_kvp_bundle_open(o.base, o.aux, o.predictor, &o.mparams, &b, &err);
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast eval: %s\n", err.msg);
        if (o.bundle != NULL && rc == KC_ENOTFOUND && strcmp(o.bundle, EVAL_DEFAULT_BUNDLE) == 0) {
            fprintf(stderr, "kvcast eval: (the default bundle is looked up from the current "
                            "directory; run from the repository root or pass --bundle)\n");
        }
        goto done;
    }
    const struct eng_model_config *bc = eng_model_config_of(b->base);
    const struct eng_model_config *ac = eng_model_config_of(b->aux);
    const int P = (int)o.prompt_len, C = (int)o.cont_len, W = P + C;
    const int max_pos = bc->max_position_embeddings < ac->max_position_embeddings
                            ? bc->max_position_embeddings
                            : ac->max_position_embeddings;
    if (W > max_pos) {
        fprintf(stderr, "kvcast eval: prompt + continuation (%d) exceed the models' %d positions\n",
                W, max_pos);
        goto done;
    }
    if (kc_data_tokens(o.data, o.ids, b->base_dir, 0, &tokens, &n_tokens, &err) != KC_OK) {
        fprintf(stderr, "kvcast eval: %s\n", err.msg);
        goto done;
    }
    /* A sample is [BOS] + P-1 prompt tokens + C continuation tokens (no BOS: P + C). */
    const int bos = o.no_bos ? -1 : bc->bos_token_id;
    const size_t Wt = (size_t)W - (bos >= 0 ? 1 : 0);
    if (n_tokens < Wt || Wt <= (size_t)C) {
        fprintf(stderr,
                "kvcast eval: %s has %zu tokens; one sample needs %zu (and a prompt of at "
                "least one text token)\n",
                o.data, n_tokens, Wt + (Wt <= (size_t)C ? 1 : 0));
        goto done;
    }
    if ((size_t)o.samples * Wt > n_tokens) {
        fprintf(stderr,
                "kvcast eval: note: %ld samples of %d tokens overlap in %zu tokens of "
                "data\n",
                o.samples, W, n_tokens);
    }
    const int block = 16, blocks = (W + block - 1) / block;
    if (eng_kvp_ctx_create(b->base, b->aux, b->pred, W < 256 ? W : 256, W, o.threads, &kc, &err) !=
            KC_OK ||
        eng_kv_pool_init(&bpool, bc, block, blocks, &err) != KC_OK ||
        eng_kv_pool_init(&apool, ac, block, blocks, &err) != KC_OK) {
        fprintf(stderr, "kvcast eval: %s\n", err.msg);
        goto done;
    }
    r.kc = kc;
    r.pool[ENG_KVP_FULL] = &bpool;
    r.pool[ENG_KVP_PREDICT] = &bpool;
    r.pool[ENG_KVP_AUX] = &apool;
    r.V = bc->vocab_size;
    r.P = P;
    r.C = C;
    r.logits = calloc((size_t)r.V, sizeof(float));
    r.tf_logits = calloc((size_t)(C > 1 ? C - 1 : 1) * (size_t)r.V, sizeof(float));
    greedy = calloc((size_t)ENG_KVP_N_MODES * (size_t)C, sizeof(int32_t));
    sample = calloc((size_t)W, sizeof(int32_t));
    if (r.logits == NULL || r.tf_logits == NULL || greedy == NULL || sample == NULL) {
        fprintf(stderr, "kvcast eval: out of memory\n");
        goto done;
    }
    const struct eng_kvp_shape *ps = b->pred != NULL ? eng_kvp_shape_of(b->pred) : NULL;
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        ms[m].on = m != ENG_KVP_PREDICT || b->pred != NULL;
        ms[m].ttft_ms = calloc((size_t)o.samples * 2, sizeof(double));
        if (ms[m].ttft_ms == NULL) {
            fprintf(stderr, "kvcast eval: out of memory\n");
            goto done;
        }
        ms[m].flops = eng_kvp_ttft_flops((enum eng_kvp_mode)m, bc, ac, ps, P);
    }
    /* Warm-up: one prefill per mode creates the oneDNN primitives outside the timings. */
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        struct eng_seq seq = {0};
        if (ms[m].on && run_prefill(&r, (enum eng_kvp_mode)m, &seq, tokens, NULL, &err) != KC_OK) {
            fprintf(stderr, "kvcast eval: %s: %s\n", eng_kvp_mode_name((enum eng_kvp_mode)m),
                    err.msg);
            goto done;
        }
        eng_seq_release(r.pool[m], &seq);
    }
    const double t0 = kc_now_s();
    const bool tty = !o.json && isatty(fileno(stderr));
    for (long s = 0; s < o.samples; s++) {
        const size_t start =
            o.samples > 1 ? (size_t)s * (n_tokens - Wt) / (size_t)(o.samples - 1) : 0;
        if (bos >= 0) {
            sample[0] = bos;
        }
        memcpy(sample + (bos >= 0 ? 1 : 0), tokens + start, Wt * sizeof(int32_t));
        const int32_t *prompt = sample, *cont = sample + P;
        for (int m = 0; m < ENG_KVP_N_MODES; m++) {
            if (!ms[m].on) {
                continue;
            }
            int32_t *g = greedy + (size_t)m * C;
            if (run_sample(&r, (enum eng_kvp_mode)m, prompt, cont, &ms[m], g, &err) != KC_OK) {
                fprintf(stderr, "kvcast eval: sample %ld, %s: %s\n", s,
                        eng_kvp_mode_name((enum eng_kvp_mode)m), err.msg);
                goto done;
            }
            const int32_t *ref = greedy + (size_t)ENG_KVP_FULL * C;
            int agree = 0;
            while (agree < C && g[agree] == ref[agree]) {
                agree++;
            }
            ms[m].first_agree += g[0] == ref[0];
            ms[m].greedy_tokens += agree;
        }
        if (tty) {
            fprintf(stderr, "\rsample %ld/%ld (%.1f s)", s + 1, o.samples, kc_now_s() - t0);
            fflush(stderr);
        }
    }
    if (tty) {
        fprintf(stderr, "\n");
    }
    const double den = (double)o.samples * (double)C;
    const double nf = ms[ENG_KVP_FULL].nll_sum / den, na = ms[ENG_KVP_AUX].nll_sum / den;
    const double np = ms[ENG_KVP_PREDICT].nll_sum / den;
    const double gap = ms[ENG_KVP_PREDICT].on && na != nf ? (na - np) / (na - nf) : NAN;
    if (o.json) {
        print_json(&o, ms, o.samples, gap);
    } else {
        print_table(&o, ms, o.samples, gap);
    }
    exit_code = 0;
done:
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        free(ms[m].ttft_ms);
    }
    free(r.logits);
    free(r.tf_logits);
    free(greedy);
    free(sample);
    free(tokens);
    if (bpool.slab != NULL) {
        eng_kv_pool_free(&bpool);
    }
    if (apool.slab != NULL) {
        eng_kv_pool_free(&apool);
    }
    eng_kvp_ctx_free(kc);
    eng_kvp_bundle_free(b);
    return exit_code;
}
