/*
 * cmd_eval.c — `kvcast eval`: measures what KV Prediction costs in quality and saves in time.
 * Takes N (prompt, continuation) windows of held-out text and, for the modes full (base with
 * its own KV: the ceiling), aux (the auxiliary model alone: the floor) and predict (base with
 * the predicted KV), reports the continuation's mean NLL and perplexity given the prompt
 * (teacher forcing: after the prefill the model of the mode runs the continuation, appending
 * its own exact K/V), first-token and greedy-continuation agreement with full, analytic TTFT
 * FLOPs and the measured median TTFT; and the share of the aux -> full NLL gap that predict
 * closes, with a warning when that share means nothing (the aux model alone is not worse than
 * full). With a predictor it adds the rows predict_refine@1/4/16: predict mode with the
 * exact KV swapped in after k generated tokens, as background refinement does (see
 * refine_sample). Without --data it reads the bundle's held-out ids (models/tiny/heldout.ids:
 * the windows the README's quality figure was measured on).
 *
 * Exit codes: 0 ok, 1 a model, the data or a forward failed, 2 bad command line.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
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
#include "tools/cli/json_out.h"
#include "tools/cli/kvp_data.h"

#define EVAL_DEFAULT_BUNDLE "models/tiny/kvcast-bundle.json"

#define EVAL_HELDOUT_FILE "heldout.ids"

/* Weight types one --dtype list may name (each at most once). */
#define EVAL_MAX_DTYPES 3

static void eval_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvcast eval [--data FILE] [--bundle B | --base DIR --aux DIR [--predictor F]]\n"
        "                   [options]\n"
        "  --bundle B          KVP bundle JSON (default " EVAL_DEFAULT_BUNDLE ")\n"
        "  --base/--aux DIR    a pair without a bundle; --predictor F adds the predict mode\n"
        "  --data FILE         held-out text (default: the bundle's " EVAL_HELDOUT_FILE
        ", token ids\n"
        "                      of the windows its quality figures were measured on)\n"
        "  --ids               FILE holds token ids (whitespace/comma separated, '#' comments),\n"
        "                      not text; a '# " KC_DATA_WINDOWS_TAG
        " ...' header sets the defaults of the\n"
        "                      next three options\n"
        "  --prompt-len P      prompt tokens per sample (default 256)\n"
        "  --cont-len C        continuation tokens scored per sample (default 32)\n"
        "  --samples N         samples, spread evenly over the data (default 16)\n"
        "  --no-bos            no BOS token before each sample\n"
        "  --no-greedy         NLL and first-token agreement only: no greedy continuation\n"
        "                      (half the time; greedy agreement is then null)\n"
        "  --no-refine         no predict_refine@1/4/16 rows (predict with the exact KV\n"
        "                      swapped in after k generated tokens)\n"
        "  --dtype T[,T...]    weights for every step, f32|bf16|int8 (default: f32 prefill,\n"
        "                      bf16 decode); a list (e.g. f32,int8) runs the evaluation once\n"
        "                      per type and prints them in one table: the rows of a later\n"
        "                      type are named mode/type (full/int8, ...) and their agreements\n"
        "                      are against the FIRST type's full mode\n"
        "  --kv-dtype f32|bf16 element type of the KV caches (default f32), as serve's\n"
        "  --threads N         OpenMP threads (default: all cores)\n"
        "  --json              print one JSON object instead of a table\n"
        "Warnings (stderr, and \"warnings\" in the JSON) flag results to read with care: when the\n"
        "aux model alone scores at least as well as the base, \"gap closed\" means nothing.\n");
}

struct eval_opts {
    const char *bundle, *base, *aux, *predictor, *data;
    char *data_owned;                   /* the default data path, when --data is absent */
    long prompt_len, cont_len, samples; /* 0: not given */
    bool ids, json, no_bos, no_greedy, no_refine;
    int threads;
    struct eng_model_params mparams;
    enum eng_wtype dtypes[EVAL_MAX_DTYPES]; /* --dtype list; n_dtypes 0: the defaults */
    int n_dtypes;
    enum eng_dtype kv_dtype;
};

/* Parses a --dtype list ("int8", "f32,int8") into o->dtypes; KC_EINVAL on an unknown or a
 * repeated type. */
static int parse_dtype_list(const char *v, struct eval_opts *o) {
    o->n_dtypes = 0;
    const char *p = v;
    for (;;) {
        const char *end = strchr(p, ',');
        const size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char name[8];
        enum eng_wtype wt;
        if (len == 0 || len >= sizeof(name) || o->n_dtypes == EVAL_MAX_DTYPES) {
            return KC_EINVAL;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        if (eng_wtype_parse(name, &wt) != KC_OK) {
            return KC_EINVAL;
        }
        for (int i = 0; i < o->n_dtypes; i++) {
            if (o->dtypes[i] == wt) {
                return KC_EINVAL;
            }
        }
        o->dtypes[o->n_dtypes++] = wt;
        if (end == NULL) {
            return KC_OK;
        }
        p = end + 1;
    }
}

/* Returns 0 to go on, -1 after --help (exit 0), 2 on a bad command line. */
static int parse_eval(int argc, char **argv, struct eval_opts *o) {
    o->mparams = eng_model_default_params();
    o->kv_dtype = ENG_DTYPE_F32;
    struct kc_args a;
    kc_args_init(&a, "kvcast eval", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            eval_usage(stdout);
            return -1;
        } else if (kc_args_str(&a, "--bundle", &o->bundle) || kc_args_str(&a, "--base", &o->base) ||
                   kc_args_str(&a, "--aux", &o->aux) ||
                   kc_args_str(&a, "--predictor", &o->predictor) ||
                   kc_args_str(&a, "--data", &o->data) ||
                   kc_args_long(&a, "--prompt-len", 1, 1 << 20, &o->prompt_len) ||
                   kc_args_long(&a, "--cont-len", 1, 1 << 16, &o->cont_len) ||
                   kc_args_long(&a, "--samples", 1, 1 << 20, &o->samples) ||
                   kc_args_int(&a, "--threads", 1, 1024, &o->threads)) {
        } else if (kc_args_str(&a, "--dtype", &v)) {
            if (parse_dtype_list(v, o) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8, or a comma-separated list of "
                                       "them without repeats");
            }
        } else if (kc_args_str(&a, "--kv-dtype", &v)) {
            if (eng_kv_dtype_parse(v, &o->kv_dtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32 or bf16");
            }
        } else if (kc_args_flag(&a, "--ids")) {
            o->ids = true;
        } else if (kc_args_flag(&a, "--no-bos")) {
            o->no_bos = true;
        } else if (kc_args_flag(&a, "--no-greedy")) {
            o->no_greedy = true;
        } else if (kc_args_flag(&a, "--no-refine")) {
            o->no_refine = true;
        } else if (kc_args_flag(&a, "--json")) {
            o->json = true;
        } else {
            return kc_args_fail(&a);
        }
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
    if (o->data == NULL) {
        /* The bundle's own held-out ids: what its quality figures were measured on. */
        const char *slash = o->bundle != NULL ? strrchr(o->bundle, '/') : NULL;
        const size_t dir_len = slash != NULL ? (size_t)(slash - o->bundle) + 1 : 0;
        struct kc_data_windows w;
        if (o->bundle != NULL &&
            (o->data_owned = malloc(dir_len + sizeof(EVAL_HELDOUT_FILE))) != NULL) {
            memcpy(o->data_owned, o->bundle, dir_len);
            memcpy(o->data_owned + dir_len, EVAL_HELDOUT_FILE, sizeof(EVAL_HELDOUT_FILE));
        }
        if (o->data_owned == NULL || kc_data_windows(o->data_owned, &w) != KC_OK) {
            fprintf(stderr,
                    "kvcast eval: --data is required (%s%s has no held-out ids file with a "
                    "'# " KC_DATA_WINDOWS_TAG "' header)\n",
                    o->bundle != NULL ? "the bundle " : "a pair without a bundle",
                    o->bundle != NULL ? o->bundle : "");
            if (o->bundle != NULL && strcmp(o->bundle, EVAL_DEFAULT_BUNDLE) == 0) {
                fprintf(stderr, "kvcast eval: (the default bundle is looked up from the current "
                                "directory; run from the repository root or pass --bundle)\n");
            }
            eval_usage(stderr);
            return 2;
        }
        o->data = o->data_owned;
        o->ids = true;
    }
    struct kc_data_windows w = {256, 32, 16};
    if (o->ids && (o->prompt_len == 0 || o->cont_len == 0 || o->samples == 0) &&
        kc_data_windows(o->data, &w) == KC_OK) {
        fprintf(stderr,
                "kvcast eval: %s holds %ld windows for prompt %ld + continuation %ld: the "
                "defaults\n",
                o->data, w.samples, w.prompt_len, w.cont_len);
    }
    o->prompt_len = o->prompt_len > 0 ? o->prompt_len : w.prompt_len;
    o->cont_len = o->cont_len > 0 ? o->cont_len : w.cont_len;
    o->samples = o->samples > 0 ? o->samples : w.samples;
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
    struct eng_ctx *base_ctx; /* base forwards of FULL and PREDICT */
    struct eng_kv_pool *pool[ENG_KVP_N_MODES];
    struct eng_seq aux_seq; /* PREDICT's aux side, released after each prefill */
    int V, P, C;
    bool greedy;      /* run the greedy continuation (not --no-greedy) */
    float *logits;    /* [V] */
    float *tf_logits; /* [C - 1, V] */
};

/* Where mode reads and writes: seq is the base sequence (FULL, PREDICT) or the aux one (AUX). */
static struct eng_kvp_seqs run_seqs(struct eval_run *r, enum eng_kvp_mode mode,
                                    struct eng_seq *seq) {
    const bool aux = mode == ENG_KVP_AUX;
    const struct eng_kvp_seqs io = {.base_ctx = r->base_ctx,
                                    .base_pool = r->pool[ENG_KVP_FULL],
                                    .base = aux ? NULL : seq,
                                    .aux_pool = r->pool[ENG_KVP_AUX],
                                    .aux = aux ? seq : &r->aux_seq};
    return io;
}

/* One forward appended to seq with the model of mode. */
static int run_forward(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq,
                       const int32_t *tokens, int n, enum eng_logits_mode lm, float *logits,
                       struct kc_error *err) {
    const struct eng_kvp_seqs io = run_seqs(r, mode, seq);
    return eng_kvp_forward(r->kc, mode, &io, tokens, n, lm, logits, err);
}

/* Prefills prompt in mode into the empty seq, timing it; seq is empty again on failure. */
static int run_prefill(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq,
                       const int32_t *prompt, struct mode_stats *st, struct kc_error *err) {
    struct eng_kvp_timings t = {0};
    const struct eng_kvp_seqs io = run_seqs(r, mode, seq);
    int rc = eng_kvp_prefill(r->kc, mode, &io, prompt, r->P, r->logits, &t, err);
    eng_seq_release(r->pool[ENG_KVP_AUX], &r->aux_seq);
    if (rc != KC_OK) {
        eng_seq_release(r->pool[mode], seq);
    }
    if (rc == KC_OK && st != NULL) {
        st->ttft_ms[st->n_ttft++] = t.total_ms;
        st->split_sum.aux_ms += t.aux_ms;
        st->split_sum.predict_ms += t.predict_ms;
        st->split_sum.base_first_step_ms += t.base_first_step_ms;
        st->split_sum.total_ms += t.total_ms;
    }
    return rc;
}

static int32_t argmax(const float *logits, int V) {
    int32_t best = 0;
    for (int v = 1; v < V; v++) {
        best = logits[v] > logits[best] ? v : best;
    }
    return best;
}

/* One sample in one mode: NLL of cont given prompt (teacher forcing) and the greedy
 * continuation greedy[C] (only greedy[0] with --no-greedy). */
static int run_sample(struct eval_run *r, enum eng_kvp_mode mode, const int32_t *prompt,
                      const int32_t *cont, struct mode_stats *st, int32_t *greedy,
                      struct kc_error *err) {
    struct eng_kv_pool *pool = r->pool[mode];
    struct eng_seq seq = {0};
    int rc = run_prefill(r, mode, &seq, prompt, st, err);
    if (rc != KC_OK) {
        return rc;
    }
    greedy[0] = argmax(r->logits, r->V);
    double nll = -(double)eng_log_softmax_at(r->logits, r->V, cont[0]);
    if (r->C > 1) {
        rc = run_forward(r, mode, &seq, cont, r->C - 1, ENG_LOGITS_ALL, r->tf_logits, err);
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
    if (!r->greedy) {
        return KC_OK;
    }
    /* Greedy continuation from a second prefill (also a TTFT sample). */
    rc = run_prefill(r, mode, &seq, prompt, st, err);
    for (int i = 0; rc == KC_OK && i < r->C; i++) {
        greedy[i] = argmax(r->logits, r->V);
        if (i + 1 < r->C) {
            rc = run_forward(r, mode, &seq, &greedy[i], 1, ENG_LOGITS_LAST, r->logits, err);
        }
    }
    eng_seq_release(pool, &seq);
    return rc;
}

/*
 * predict_refine@k: what a predict-mode request with background refinement sees when the
 * exact KV is swapped in after k generated tokens. Each pass is run for real: a predict
 * prefill of the prompt and k - 1 decode steps on the predicted cache, then the swap (a base
 * prefill of prompt + the k tokens, chunked as full mode's; the predicted sequence is
 * released first, as the swap frees its blocks), then decoding on the exact cache. Three
 * passes per k and sample:
 *   NLL:          teacher-forced on the continuation; tokens j < k are scored on the
 *                 predicted cache, tokens j >= k on the refined one.
 *   same-prefix:  full's greedy tokens are fed; counted: positions j >= k whose argmax is
 *                 full's greedy token. The tokens are forced, so positions >= k depend only on
 *                 the refined cache (prompt + full's first k tokens) and the predicted phase,
 *                 whose outputs are not counted, is not run. This measures how exactly the
 *                 swapped-in cache reproduces full mode (chunked prefill vs full's decode
 *                 steps), not how far predict's own text strays.
 *   free-running: the greedy text a user gets: predict greedy for k tokens, swap over prompt
 *                 + those tokens, greedy on; counted: positions j >= k whose token equals
 *                 full's greedy token at j (positionally, also after an earlier divergence),
 *                 and, as the other modes' greedy agreement, the tokens before the first
 *                 divergence.
 * The engine is called only through eval_engine_prefill and eval_engine_forward.
 */
#define EVAL_N_REFINE 3
static const int eval_refine_k[EVAL_N_REFINE] = {1, 4, 16};

struct refine_stats {
    bool on;            /* k < C: the swap happens inside the scored window */
    int k;              /* tokens generated on the predicted cache before the swap */
    double nll_sum;     /* over samples * C tokens */
    long first_agree;   /* samples whose first token (on the predicted cache) equals full's */
    long same_prefix;   /* same-prefix positions >= k agreeing with full's greedy token */
    long free_running;  /* free-running positions >= k agreeing with full's greedy token */
    long greedy_tokens; /* free-running tokens before the first divergence from full's */
};

/* The engine calls of the predict_refine passes, in one place. The logits of a prefill go to
 * r->logits. */
static int eval_engine_prefill(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq,
                               const int32_t *tokens, int n, struct kc_error *err) {
    const struct eng_kvp_seqs io = run_seqs(r, mode, seq);
    const int rc = eng_kvp_prefill(r->kc, mode, &io, tokens, n, r->logits, NULL, err);
    eng_seq_release(r->pool[ENG_KVP_AUX], &r->aux_seq);
    return rc;
}

static int eval_engine_forward(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq,
                               const int32_t *tokens, int n, enum eng_logits_mode logits_mode,
                               float *logits, struct kc_error *err) {
    return run_forward(r, mode, seq, tokens, n, logits_mode, logits, err);
}

static void eval_engine_release(struct eval_run *r, enum eng_kvp_mode mode, struct eng_seq *seq) {
    eng_seq_release(r->pool[mode], seq);
}

/* The refine point: releases the predicted sequence *pseq and prefills *fseq with the base
 * over toks[0..P+k-1] (prompt + the k tokens generated before the swap). The logits of
 * token P + k go to r->logits. */
static int refine_swap(struct eval_run *r, struct eng_seq *pseq, struct eng_seq *fseq,
                       const int32_t *toks, int k, struct kc_error *err) {
    eval_engine_release(r, ENG_KVP_PREDICT, pseq);
    return eval_engine_prefill(r, ENG_KVP_FULL, fseq, toks, r->P + k, err);
}

/* NLL pass: window = prompt + continuation [P + C]; adds to st->nll_sum and first_agree. */
static int refine_nll(struct eval_run *r, struct refine_stats *st, const int32_t *window,
                      const int32_t *ref, struct kc_error *err) {
    const int P = r->P, C = r->C, k = st->k, V = r->V;
    const int32_t *cont = window + P;
    struct eng_seq pseq = {0}, fseq = {0};
    int rc = eval_engine_prefill(r, ENG_KVP_PREDICT, &pseq, window, P, err);
    if (rc != KC_OK) {
        return rc;
    }
    st->first_agree += argmax(r->logits, V) == ref[0];
    double nll = -(double)eng_log_softmax_at(r->logits, V, cont[0]);
    if (k > 1) {
        rc = eval_engine_forward(r, ENG_KVP_PREDICT, &pseq, cont, k - 1, ENG_LOGITS_ALL,
                                 r->tf_logits, err);
        for (int j = 1; rc == KC_OK && j < k; j++) {
            nll -= (double)eng_log_softmax_at(r->tf_logits + (size_t)(j - 1) * V, V, cont[j]);
        }
    }
    if (rc == KC_OK) {
        rc = refine_swap(r, &pseq, &fseq, window, k, err);
    }
    if (rc == KC_OK) {
        nll -= (double)eng_log_softmax_at(r->logits, V, cont[k]);
    }
    if (rc == KC_OK && k + 1 < C) {
        rc = eval_engine_forward(r, ENG_KVP_FULL, &fseq, cont + k, C - 1 - k, ENG_LOGITS_ALL,
                                 r->tf_logits, err);
        for (int j = k + 1; rc == KC_OK && j < C; j++) {
            nll -= (double)eng_log_softmax_at(r->tf_logits + (size_t)(j - k - 1) * V, V, cont[j]);
        }
    }
    eval_engine_release(r, ENG_KVP_PREDICT, &pseq);
    eval_engine_release(r, ENG_KVP_FULL, &fseq);
    if (rc == KC_OK) {
        st->nll_sum += nll;
    }
    return rc;
}

/* Same-prefix pass: buf[P + C] = prompt + full's greedy tokens ref[C]. */
static int refine_same_prefix(struct eval_run *r, struct refine_stats *st, const int32_t *buf,
                              const int32_t *ref, struct kc_error *err) {
    const int P = r->P, C = r->C, k = st->k, V = r->V;
    struct eng_seq pseq = {0}, fseq = {0};
    int rc = refine_swap(r, &pseq, &fseq, buf, k, err);
    if (rc == KC_OK) {
        st->same_prefix += argmax(r->logits, V) == ref[k];
    }
    if (rc == KC_OK && k + 1 < C) {
        rc = eval_engine_forward(r, ENG_KVP_FULL, &fseq, buf + P + k, C - 1 - k, ENG_LOGITS_ALL,
                                 r->tf_logits, err);
        for (int j = k + 1; rc == KC_OK && j < C; j++) {
            st->same_prefix += argmax(r->tf_logits + (size_t)(j - k - 1) * V, V) == ref[j];
        }
    }
    eval_engine_release(r, ENG_KVP_FULL, &fseq);
    return rc;
}

/* Free-running pass: buf[P + C] holds the prompt; its continuation part is overwritten with
 * the tokens generated. */
static int refine_free_running(struct eval_run *r, struct refine_stats *st, int32_t *buf,
                               const int32_t *ref, struct kc_error *err) {
    const int P = r->P, C = r->C, k = st->k, V = r->V;
    int32_t *g = buf + P;
    struct eng_seq pseq = {0}, fseq = {0};
    int rc = eval_engine_prefill(r, ENG_KVP_PREDICT, &pseq, buf, P, err);
    for (int i = 0; rc == KC_OK && i < k; i++) {
        g[i] = argmax(r->logits, V);
        if (i + 1 < k) {
            rc = eval_engine_forward(r, ENG_KVP_PREDICT, &pseq, &g[i], 1, ENG_LOGITS_LAST,
                                     r->logits, err);
        }
    }
    if (rc == KC_OK) {
        rc = refine_swap(r, &pseq, &fseq, buf, k, err);
    }
    for (int i = k; rc == KC_OK && i < C; i++) {
        g[i] = argmax(r->logits, V);
        if (i + 1 < C) {
            rc = eval_engine_forward(r, ENG_KVP_FULL, &fseq, &g[i], 1, ENG_LOGITS_LAST, r->logits,
                                     err);
        }
    }
    eval_engine_release(r, ENG_KVP_PREDICT, &pseq);
    eval_engine_release(r, ENG_KVP_FULL, &fseq);
    if (rc != KC_OK) {
        return rc;
    }
    int agree = 0;
    while (agree < C && g[agree] == ref[agree]) {
        agree++;
    }
    st->greedy_tokens += agree;
    for (int j = k; j < C; j++) {
        st->free_running += g[j] == ref[j];
    }
    return KC_OK;
}

/* All predict_refine passes of one sample. window[P + C]: the sample; ref[C]: full's greedy
 * continuation (only ref[0] without the greedy runs); buf[P + C]: scratch. */
static int refine_sample(struct eval_run *r, struct refine_stats *rs, const int32_t *window,
                         const int32_t *ref, int32_t *buf, struct kc_error *err) {
    for (int i = 0; i < EVAL_N_REFINE; i++) {
        struct refine_stats *st = &rs[i];
        if (!st->on) {
            continue;
        }
        int rc = refine_nll(r, st, window, ref, err);
        if (rc == KC_OK && r->greedy) {
            memcpy(buf, window, (size_t)r->P * sizeof(int32_t));
            memcpy(buf + r->P, ref, (size_t)r->C * sizeof(int32_t));
            rc = refine_same_prefix(r, st, buf, ref, err);
        }
        if (rc == KC_OK && r->greedy) {
            rc = refine_free_running(r, st, buf, ref, err);
        }
        if (rc != KC_OK) {
            return rc;
        }
    }
    return KC_OK;
}

/* Results to read with care: each one printed to stderr and listed in the JSON. */
struct eval_warnings {
    int n;
    char msg[6][320];
};

static void eval_warn(struct eval_warnings *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void eval_warn(struct eval_warnings *w, const char *fmt, ...) {
    if (w->n >= (int)(sizeof(w->msg) / sizeof(w->msg[0]))) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg[w->n], sizeof(w->msg[0]), fmt, ap);
    va_end(ap);
    fprintf(stderr, "kvcast eval: warning: %s\n", w->msg[w->n]);
    w->n++;
}

/* What the run measured, for both printers. gap: NaN when undefined; meaningful: the aux
 * model alone is worse than full, so the gap between them is one to close. */
struct eval_result {
    const struct eval_opts *o;
    struct mode_stats *ms;
    long n;
    double gap;
    bool gap_meaningful;
    const struct eval_warnings *warn;
    const struct refine_stats *rs; /* [EVAL_N_REFINE] */
    const char *dtype;             /* the weight type's name ("default": no --dtype) */
    const char *suffix; /* appended to the row names: "" for the first type, "/int8" ... */
};

static void refine_name(const struct refine_stats *st, const char *suffix, char *buf, size_t size) {
    snprintf(buf, size, "predict_refine@%d%s", st->k, suffix);
}

static void mode_name(enum eng_kvp_mode m, const char *suffix, char *buf, size_t size) {
    snprintf(buf, size, "%s%s", eng_kvp_mode_name(m), suffix);
}

/* The predict_refine rows of the JSON "modes". */
static void refine_json(const struct eval_result *r, json_t *modes) {
    const double no = r->o->no_greedy ? NAN : 1.0; /* null without the greedy runs */
    const double dn = (double)r->n, C = (double)r->o->cont_len;
    for (int i = 0; i < EVAL_N_REFINE; i++) {
        const struct refine_stats *st = &r->rs[i];
        if (!st->on) {
            continue;
        }
        const double nll = st->nll_sum / (dn * C), after = dn * (C - st->k);
        json_t *j = json_object();
        json_object_set_new(j, "nll", kc_json_real(nll, 6));
        json_object_set_new(j, "ppl", kc_json_real(exp(nll), 4));
        json_object_set_new(j, "first_token_agreement", kc_json_real(st->first_agree / dn, 4));
        json_object_set_new(j, "refine_at_token", json_integer(st->k));
        json_object_set_new(j, "greedy_agreement",
                            kc_json_real(no * (double)st->greedy_tokens / (dn * C), 4));
        json_object_set_new(j, "greedy_agreement_tokens",
                            kc_json_real(no * (double)st->greedy_tokens / dn, 3));
        json_object_set_new(j, "greedy_agreement_after_refine_same_prefix",
                            kc_json_real(no * (double)st->same_prefix / after, 4));
        json_object_set_new(j, "greedy_agreement_after_refine_free_running",
                            kc_json_real(no * (double)st->free_running / after, 4));
        char name[40];
        refine_name(st, r->suffix, name, sizeof(name));
        json_object_set_new(modes, name, j);
    }
}

/* The predict_refine rows of the table. */
static void refine_table(const struct eval_result *r) {
    const double no = r->o->no_greedy ? NAN : 1.0; /* nan without the greedy runs */
    const double dn = (double)r->n, C = (double)r->o->cont_len;
    bool any = false;
    for (int i = 0; i < EVAL_N_REFINE; i++) {
        const struct refine_stats *st = &r->rs[i];
        if (!st->on) {
            continue;
        }
        if (!any) {
            printf("\npredict_refine@k: predict, the exact KV swapped in after k generated tokens "
                   "(TTFT as predict)\n");
            printf("%-23s %9s %10s %9s %14s %12s %12s\n", "mode", "NLL", "ppl", "1st-tok",
                   "greedy-agree", "same-pfx>=k", "free-run>=k");
            any = true;
        }
        const double nll = st->nll_sum / (dn * C), after = dn * (C - st->k);
        char name[40];
        refine_name(st, r->suffix, name, sizeof(name));
        printf("%-23s %9.4f %10.3f %9.3f %8.3f (%4.1f) %12.4f %12.4f\n", name, nll, exp(nll),
               (double)st->first_agree / dn, no * (double)st->greedy_tokens / (dn * C),
               no * (double)st->greedy_tokens / dn, no * (double)st->same_prefix / after,
               no * (double)st->free_running / after);
    }
    if (any) {
        printf("(same-pfx>=k, free-run>=k: share of the tokens after the refine point "
               "(positions >= k) equal to full's\n greedy token at the same position; same-pfx "
               "feeds full's greedy tokens, free-run is the row's own greedy\n text; "
               "greedy-agree: free-run's tokens before the first divergence, as above)\n");
    }
}

static int print_json(const struct eval_result *res, int n_res) {
    const struct eval_opts *o = res[0].o;
    json_t *root = json_object(), *modes = json_object(), *dtypes = json_array();
    for (int ri = 0; ri < n_res; ri++) {
        const struct eval_result *r = &res[ri];
        for (int m = 0; m < ENG_KVP_N_MODES; m++) {
            struct mode_stats *s = &r->ms[m];
            if (!s->on) {
                continue;
            }
            const double dn = (double)r->n;
            const double nll = s->nll_sum / (dn * (double)o->cont_len);
            json_t *j = json_object();
            json_object_set_new(j, "nll", kc_json_real(nll, 6));
            json_object_set_new(j, "ppl", kc_json_real(exp(nll), 4));
            json_object_set_new(j, "first_token_agreement", kc_json_real(s->first_agree / dn, 4));
            const double no = o->no_greedy ? NAN : 1.0; /* null without the greedy runs */
            json_object_set_new(
                j, "greedy_agreement",
                kc_json_real(no * s->greedy_tokens / (dn * (double)o->cont_len), 4));
            json_object_set_new(j, "greedy_agreement_tokens",
                                kc_json_real(no * s->greedy_tokens / dn, 3));
            json_object_set_new(j, "ttft_flops", kc_json_sig(s->flops, 6));
            json_object_set_new(j, "ttft_ms_median",
                                kc_json_real(median(s->ttft_ms, s->n_ttft), 3));
            json_object_set_new(j, "aux_ms_mean", kc_json_real(s->split_sum.aux_ms / s->n_ttft, 3));
            json_object_set_new(j, "predict_ms_mean",
                                kc_json_real(s->split_sum.predict_ms / s->n_ttft, 3));
            json_object_set_new(j, "base_first_step_ms_mean",
                                kc_json_real(s->split_sum.base_first_step_ms / s->n_ttft, 3));
            json_object_set_new(j, "dtype", kc_json_str(r->dtype));
            char name[40];
            mode_name((enum eng_kvp_mode)m, r->suffix, name, sizeof(name));
            json_object_set_new(modes, name, j);
        }
        refine_json(r, modes);
        json_t *d = json_object();
        json_object_set_new(d, "dtype", kc_json_str(r->dtype));
        json_object_set_new(d, "suffix", kc_json_str(r->suffix));
        json_object_set_new(d, "gap_closed", kc_json_real(r->gap, 4));
        json_object_set_new(d, "gap_closed_meaningful", json_boolean(r->gap_meaningful));
        json_array_append_new(dtypes, d);
    }
    json_object_set_new(root, "modes", modes);
    json_object_set_new(root, "dtypes", dtypes);
    json_object_set_new(root, "gap_closed", kc_json_real(res[0].gap, 4));
    json_object_set_new(root, "gap_closed_meaningful", json_boolean(res[0].gap_meaningful));
    json_t *warnings = json_array();
    for (int i = 0; i < res[0].warn->n; i++) {
        json_array_append_new(warnings, kc_json_str(res[0].warn->msg[i]));
    }
    json_object_set_new(root, "warnings", warnings);
    json_object_set_new(root, "samples", json_integer(res[0].n));
    json_object_set_new(root, "prompt_len", json_integer(o->prompt_len));
    json_object_set_new(root, "cont_len", json_integer(o->cont_len));
    json_object_set_new(root, "kv_dtype",
                        json_string(o->kv_dtype == ENG_DTYPE_BF16 ? "bf16" : "f32"));
    json_object_set_new(root, "data", kc_json_str(o->data));
    json_object_set_new(root, "ids", json_boolean(o->ids));
    json_object_set_new(root, "kvcast_version", kc_json_str(kc_cli_version()));
    return kc_json_print("kvcast eval", root);
}

/* The rows of one weight type in the main table; "x full" compares with that type's full. */
static void table_rows(const struct eval_result *r) {
    const struct eval_opts *o = r->o;
    struct mode_stats *ms = r->ms;
    const long n = r->n;
    const double full_flops = ms[ENG_KVP_FULL].flops;
    double full_ms = 0.0;
    const double no = o->no_greedy ? NAN : 1.0; /* nan without the greedy runs */
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
        char name[40];
        mode_name((enum eng_kvp_mode)m, r->suffix, name, sizeof(name));
        printf("%-13s %9.4f %10.3f %9.3f %8.3f (%4.1f) %12.4f %9.3f %12.2f %9.3f\n", name, nll,
               exp(nll), (double)s->first_agree / (double)n,
               no * (double)s->greedy_tokens / ((double)n * (double)o->cont_len),
               no * (double)s->greedy_tokens / (double)n, s->flops / 1e9, s->flops / full_flops,
               med, full_ms > 0 ? med / full_ms : 0.0);
    }
}

static void print_table(const struct eval_result *res, int n_res) {
    const struct eval_opts *o = res[0].o;
    printf("kvcast eval: %ld samples, prompt %ld tokens, continuation %ld tokens, %s KV cache\n",
           res[0].n, o->prompt_len, o->cont_len, o->kv_dtype == ENG_DTYPE_BF16 ? "bf16" : "f32");
    if (n_res > 1) {
        printf("weights: %s (rows without a suffix)", res[0].dtype);
        for (int i = 1; i < n_res; i++) {
            printf(", %s (rows %s)", res[i].dtype, res[i].suffix);
        }
        printf("; agreements are against the %s full mode\n", res[0].dtype);
    }
    printf("\n%-13s %9s %10s %9s %14s %12s %9s %12s %9s\n", "mode", "NLL", "ppl", "1st-tok",
           "greedy-agree", "TTFT GFLOP", "x full", "TTFT ms med", "x full");
    for (int i = 0; i < n_res; i++) {
        table_rows(&res[i]);
    }
    for (int i = 0; i < n_res; i++) {
        const struct eval_result *r = &res[i];
        const struct mode_stats *p = &r->ms[ENG_KVP_PREDICT];
        if (!p->on) {
            continue;
        }
        printf("\npredict%s TTFT split (mean): aux %.2f ms, predictor %.2f ms, base first step "
               "%.2f ms\n",
               r->suffix, p->split_sum.aux_ms / p->n_ttft, p->split_sum.predict_ms / p->n_ttft,
               p->split_sum.base_first_step_ms / p->n_ttft);
        if (r->gap_meaningful) {
            printf("gap closed%s: %.1f%% of the aux -> full NLL gap\n", r->suffix, 100.0 * r->gap);
        } else {
            printf("gap closed%s: meaningless here (the aux model alone is not worse than full; "
                   "see the warnings)\n",
                   r->suffix);
        }
    }
    printf("(greedy-agree: share of continuation tokens matching full's greedy output before "
           "the first divergence; mean tokens in parentheses; nan with --no-greedy)\n");
    for (int i = 0; i < n_res; i++) {
        refine_table(&res[i]);
    }
    for (int i = 0; i < res[0].warn->n; i++) {
        printf("warning: %s\n", res[0].warn->msg[i]);
    }
}

/* What one weight type's pass measured; ms[m].ttft_ms is owned (eval_pass_free). */
struct eval_pass {
    struct mode_stats ms[ENG_KVP_N_MODES];
    struct refine_stats rs[EVAL_N_REFINE];
    double gap;
    bool gap_meaningful;
    char suffix[16];
};

static void eval_pass_free(struct eval_pass *ps) {
    for (int m = 0; m < ENG_KVP_N_MODES; m++) {
        free(ps->ms[m].ttft_ms);
        ps->ms[m].ttft_ms = NULL;
    }
}

/*
 * One evaluation of every mode with the weights of o->mparams. ref_all[samples * C]: the
 * greedy continuation of full mode per sample; the first pass (first) writes it and every
 * pass measures its agreements against it, so a later weight type's rows compare with the
 * first type's full mode. Returns the exit code (0 ok, 1 failed).
 */
static int eval_pass_run(const struct eval_opts *po, bool first, int32_t *ref_all,
                         struct eval_warnings *warn, struct eval_pass *pass) {
    const struct eval_opts o = *po;
    int rc;
    struct kc_error err = {0};
    struct eng_kvp_bundle *b = NULL;
    struct eng_kvp_ctx *kc = NULL;
    struct eng_ctx *bctx = NULL;
    struct eng_kv_pool bpool = {0}, apool = {0};
    int32_t *tokens = NULL, *greedy = NULL, *sample = NULL, *refine_buf = NULL;
    size_t n_tokens = 0;
    struct mode_stats *ms = pass->ms;
    struct refine_stats *rs = pass->rs;
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
        eval_warn(warn,
                  "overlapping_samples: %ld samples of %d tokens overlap in %zu tokens of "
                  "data, so they are not independent",
                  o.samples, W, n_tokens);
    }
    const int block = 16, blocks = (W + block - 1) / block;
    if (eng_kvp_ctx_create(b->base, b->aux, b->pred, W < 256 ? W : 256, W, o.threads, &kc, &err) !=
            KC_OK ||
        eng_ctx_create(b->base, W < 256 ? W : 256, W, o.threads, &bctx, &err) != KC_OK ||
        eng_kv_pool_init_dtype(&bpool, bc, block, blocks, o.kv_dtype, &err) != KC_OK ||
        eng_kv_pool_init_dtype(&apool, ac, block, blocks, o.kv_dtype, &err) != KC_OK) {
        fprintf(stderr, "kvcast eval: %s\n", err.msg);
        goto done;
    }
    r.kc = kc;
    r.base_ctx = bctx;
    r.pool[ENG_KVP_FULL] = &bpool;
    r.pool[ENG_KVP_PREDICT] = &bpool;
    r.pool[ENG_KVP_AUX] = &apool;
    r.V = bc->vocab_size;
    r.P = P;
    r.C = C;
    r.greedy = !o.no_greedy;
    r.logits = calloc((size_t)r.V, sizeof(float));
    r.tf_logits = calloc((size_t)(C > 1 ? C - 1 : 1) * (size_t)r.V, sizeof(float));
    greedy = calloc((size_t)ENG_KVP_N_MODES * (size_t)C, sizeof(int32_t));
    sample = calloc((size_t)W, sizeof(int32_t));
    refine_buf = calloc((size_t)W, sizeof(int32_t));
    if (r.logits == NULL || r.tf_logits == NULL || greedy == NULL || sample == NULL ||
        refine_buf == NULL) {
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
    for (int i = 0; i < EVAL_N_REFINE; i++) {
        rs[i].k = eval_refine_k[i];
        rs[i].on = b->pred != NULL && !o.no_refine && rs[i].k < C;
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
        int32_t *ref = ref_all + (size_t)s * (size_t)C;
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
            if (first && m == ENG_KVP_FULL) {
                memcpy(ref, g, (size_t)C * sizeof(int32_t));
            }
            int agree = 0;
            while (r.greedy && agree < C && g[agree] == ref[agree]) {
                agree++;
            }
            ms[m].first_agree += g[0] == ref[0];
            ms[m].greedy_tokens += agree;
        }
        if (refine_sample(&r, rs, sample, ref, refine_buf, &err) != KC_OK) {
            fprintf(stderr, "kvcast eval: sample %ld, predict_refine: %s\n", s, err.msg);
            goto done;
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
    const bool pred_on = ms[ENG_KVP_PREDICT].on;
    const double gap = pred_on && na != nf ? (na - np) / (na - nf) : NAN;
    /* "Gap closed" scales predict between aux (0) and full (1): it means something only when
     * the aux model alone is worse than full. */
    if (na <= nf) {
        eval_warn(warn,
                  "aux_beats_full%s: the aux model alone (NLL %.4f) scores %s the full base (NLL "
                  "%.4f) on this data, so \"gap closed\" is meaningless; check the pair and "
                  "that the data is held out",
                  pass->suffix, na, na < nf ? "better than" : "the same as", nf);
    }
    pass->gap = gap;
    pass->gap_meaningful = pred_on && na > nf;
    exit_code = 0;
done:
    free(r.logits);
    free(r.tf_logits);
    free(greedy);
    free(sample);
    free(refine_buf);
    free(tokens);
    eng_kv_pool_free(&bpool);
    eng_kv_pool_free(&apool);
    eng_ctx_free(bctx);
    eng_kvp_ctx_free(kc);
    eng_kvp_bundle_free(b);
    return exit_code;
}

int kc_cmd_eval(int argc, char **argv) {
    struct eval_opts o = {0};
    const int rc = parse_eval(argc, argv, &o);
    if (rc != 0) {
        free(o.data_owned);
        return rc < 0 ? 0 : rc;
    }
    const int n_pass = o.n_dtypes > 0 ? o.n_dtypes : 1;
    struct eval_pass pass[EVAL_MAX_DTYPES];
    memset(pass, 0, sizeof(pass));
    struct eval_result res[EVAL_MAX_DTYPES];
    struct eval_warnings warn = {0};
    int exit_code = 1;
    int32_t *ref = calloc((size_t)o.samples * (size_t)o.cont_len, sizeof(int32_t));
    if (ref == NULL) {
        fprintf(stderr, "kvcast eval: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n_pass; i++) {
        const char *dt = "default";
        if (o.n_dtypes > 0) {
            o.mparams.prefill_wtype = o.dtypes[i];
            o.mparams.decode_wtype = o.dtypes[i];
            dt = eng_wtype_name(o.dtypes[i]);
        }
        if (i > 0) {
            snprintf(pass[i].suffix, sizeof(pass[i].suffix), "/%s", dt);
        }
        if (eval_pass_run(&o, i == 0, ref, &warn, &pass[i]) != 0) {
            goto done;
        }
        res[i] = (struct eval_result){.o = &o,
                                      .ms = pass[i].ms,
                                      .n = o.samples,
                                      .gap = pass[i].gap,
                                      .gap_meaningful = pass[i].gap_meaningful,
                                      .warn = &warn,
                                      .rs = pass[i].rs,
                                      .dtype = dt,
                                      .suffix = pass[i].suffix};
    }
    if (o.json) {
        if (print_json(res, n_pass) != 0) {
            goto done;
        }
    } else {
        print_table(res, n_pass);
    }
    exit_code = 0;
done:
    for (int i = 0; i < n_pass; i++) {
        eval_pass_free(&pass[i]);
    }
    free(ref);
    free(o.data_owned);
    return exit_code;
}
