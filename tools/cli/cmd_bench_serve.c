/*
 * cmd_bench_serve.c — `kvcast bench serve`: an open-loop load generator for an OpenAI-style
 * /v1/completions server (kvcast's own, or any other). It streams every request (SSE) and
 * measures, client-side, per request: time to first token (TTFT), time per output token after
 * the first (TPOT), inter-token latencies (ITL) and end-to-end latency (E2EL). It prints
 * vLLM `benchmark_serving`-style summary lines and writes a JSON file with vLLM's field names,
 * plus the prefill mode each kvcast response reports in its `timings` object.
 *
 * Place in the data flow: a client only. It talks HTTP through libcurl's multi interface and
 * parses JSON with jansson; it links nothing of the engine. Exit codes: 0 the benchmark ran and
 * at least one request completed, 1 nothing completed (or the server is unreachable), 2 bad
 * command line or dataset.
 *
 * Thread rules: one thread. libcurl's multi handle drives every transfer; its write callbacks
 * run inside curl_multi_perform on this thread.
 *
 * DESIGN
 *   1. Open loop: arrival times are drawn before the run (seeded exponential gaps, i.e. a
 *      Poisson process of rate R; all at 0 for `inf`) and each request is sent at its time
 *      whether or not earlier ones have finished. Only --max-concurrency holds a request back;
 *      its clock then starts when it is sent, as in vLLM (which starts it inside the
 *      semaphore).
 *   1a. Prompts and arrivals come from separate splitmix64 streams (lengths, ids, arrivals,
 *      warm-up) whose start states are the seed and the stream's number put through the
 *      finalizer, so two seeds share no prompt (see rng_stream). Warm-up requests use prompts
 *      of their own: re-sending measured prompts would warm a prompt cache. --dump-prompts
 *      writes both sets without a server, which is how the test checks that.
 *   2. Timestamps come from the monotonic clock when a write callback delivers bytes; SSE
 *      events that arrive in one read share that timestamp. An event is dispatched at its
 *      blank line; comment lines (heartbeats) are ignored.
 *   3. A chunk counts as a token arrival when it carries text or logprobs: the first one sets
 *      TTFT, each later one appends an ITL. Output tokens are usage.completion_tokens (asked
 *      for with stream_options.include_usage), else the number of token chunks. A server
 *      without a tokenizer streams no text: --logprobs 0 makes it send one chunk per token.
 *   4. Metrics follow vLLM's calculate_metrics: TPOT = (E2EL - TTFT) / (output_tokens - 1)
 *      over requests with more than one output token; a request is "good" when each goodput
 *      target it names holds (a one-token request has TPOT 0); throughputs divide by the
 *      wall time from the first send to the last completion; percentiles interpolate linearly
 *      (numpy's default); an empty list reports 0.
 *   5. Every failure is counted once, in the first class that applies: connect (the server was
 *      never reached), transport (reset, timeout, read error), HTTP (status != 200), stream
 *      (an error event, no `[DONE]`, or no token at all).
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "common/kc.h"
#include "server/util.h" /* srv_buf: the growable byte buffer */
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

#define BS_MAX_PERCENTILES 8
#define BS_MAX_EVENT_BYTES (16u << 20) /* one SSE line or event; more is a broken stream */
#define BS_MAX_ERRBODY 1024            /* bytes of a non-200 body kept for the message */
#define BS_MAX_DATASET_BYTES ((size_t)1 << 30)

/* ---- small containers ---- */

struct bs_vec {
    double *v;
    size_t n, cap;
};

static int vec_push(struct bs_vec *a, double x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        double *v = realloc(a->v, cap * sizeof(double));
        if (v == NULL) {
            return KC_ENOMEM;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return KC_OK;
}

static void vec_free(struct bs_vec *a) {
    free(a->v);
    memset(a, 0, sizeof(*a));
}

/* ---- options ---- */

struct bs_opts {
    const char *url;       /* base URL, e.g. http://127.0.0.1:8080 */
    const char *endpoint;  /* /v1/completions */
    const char *model;     /* NULL: the first of GET /v1/models */
    const char *dataset;   /* "synthetic" or a file */
    const char *json_path; /* NULL: no JSON file */
    const char *mode;      /* NULL: the server's default */
    const char *api_key;   /* NULL: none */
    const char *dump_path; /* --dump-prompts: write the prompts there, send nothing */
    long num_prompts;
    double rate; /* requests/s; INFINITY: all at once */
    long prompt_len, prompt_spread;
    long max_tokens;
    long vocab;           /* synthetic ids are drawn from [0, vocab) */
    long max_concurrency; /* 0: unlimited */
    long logprobs;        /* -1: not sent */
    long warmup;
    long seed;
    double timeout_s;
    bool ignore_eos;
    bool progress;
    bool have_goodput;
    double slo_ttft_ms, slo_tpot_ms, slo_e2el_ms; /* <= 0: not a target */
    double pct[BS_MAX_PERCENTILES];
    int n_pct;
};

static void bs_usage(FILE *f) {
    fprintf(f,
            "usage: kvcast bench serve [--url URL] [options]\n"
            "Open-loop (Poisson) load test of an OpenAI-style /v1/completions server; streams\n"
            "every request and reports TTFT, TPOT, ITL, E2EL, throughput and goodput the way\n"
            "vLLM's benchmark_serving does, plus the prefill mode kvcast reports per request.\n"
            "  --url URL               server (default http://127.0.0.1:8080)\n"
            "  --endpoint PATH         default /v1/completions\n"
            "  --model NAME            model id to send (default: the first of GET /v1/models)\n"
            "  --dataset synthetic|FILE  synthetic: random token-id prompts (no tokenizer\n"
            "                          needed); FILE: one prompt per line, plain text or a JSON\n"
            "                          object {\"prompt\": TEXT|[ids], \"max_tokens\": N}\n"
            "                          (default synthetic)\n"
            "  --num-prompts N         requests to send (default 50)\n"
            "  --request-rate R|inf    mean arrivals per second, Poisson (default inf)\n"
            "  --max-concurrency N     requests in flight at most (default: unlimited)\n"
            "  --prompt-len P[:S]      synthetic prompt length, uniform in [P-S, P+S]\n"
            "                          (default 256)\n"
            "  --vocab-size N          synthetic ids are drawn from [0, N) (default 128)\n"
            "  --max-tokens M          tokens to generate per request (default 64)\n"
            "  --prefill-mode MODE     predict|full|auto, sent as prefill_mode (default: the\n"
            "                          server's)\n"
            "  --goodput K:MS ...      targets for request_goodput: ttft:MS tpot:MS e2el:MS\n"
            "  --metric-percentiles L  comma list (default 99)\n"
            "  --logprobs N            send logprobs N (0..5); 0 makes a server without a\n"
            "                          tokenizer stream one chunk per token\n"
            "  --no-ignore-eos         stop at EOS (default: ignore_eos, exactly M tokens)\n"
            "  --warmup N              unmeasured requests sent first, one at a time, with\n"
            "                          prompts of their own (synthetic ids, --prompt-len)\n"
            "                          (default 1)\n"
            "  --seed N                seed of prompts and arrival times (default 0); two seeds\n"
            "                          share no prompt\n"
            "  --dump-prompts FILE     write the warm-up and measured prompts and arrival times\n"
            "                          as JSON lines to FILE and exit; no server is contacted\n"
            "  --timeout-s X           per-request limit (default 600)\n"
            "  --api-key KEY           sent as 'Authorization: Bearer KEY' (or OPENAI_API_KEY)\n"
            "  --json FILE             write the results as JSON (vLLM field names)\n"
            "  --no-progress           no progress bar on stderr\n");
}

static bool parse_goodput_item(const char *s, struct bs_opts *o) {
    const char *colon = strchr(s, ':');
    if (colon == NULL) {
        return false;
    }
    double ms;
    if (!kc_arg_float(colon + 1, 0.0, 1e9, &ms) || !(ms > 0.0)) {
        return false;
    }
    const size_t k = (size_t)(colon - s);
    if (k == 4 && strncmp(s, "ttft", 4) == 0) {
        o->slo_ttft_ms = ms;
    } else if (k == 4 && strncmp(s, "tpot", 4) == 0) {
        o->slo_tpot_ms = ms;
    } else if (k == 4 && strncmp(s, "e2el", 4) == 0) {
        o->slo_e2el_ms = ms;
    } else {
        return false;
    }
    o->have_goodput = true;
    return true;
}

static bool parse_percentiles(const char *s, struct bs_opts *o) {
    char tmp[256];
    if (strlen(s) >= sizeof(tmp)) {
        return false;
    }
    snprintf(tmp, sizeof(tmp), "%s", s);
    o->n_pct = 0;
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        double p;
        if (o->n_pct == BS_MAX_PERCENTILES || !kc_arg_float(t, 0.0, 100.0, &p)) {
            return false;
        }
        o->pct[o->n_pct++] = p;
    }
    return o->n_pct > 0;
}

static bool parse_prompt_len(const char *s, struct bs_opts *o) {
    char tmp[64];
    if (strlen(s) >= sizeof(tmp)) {
        return false;
    }
    snprintf(tmp, sizeof(tmp), "%s", s);
    char *colon = strchr(tmp, ':');
    long spread = 0;
    if (colon != NULL) {
        *colon = '\0';
        if (!kc_arg_int(colon + 1, 0, 1 << 24, &spread)) {
            return false;
        }
    }
    long p;
    if (!kc_arg_int(tmp, 1, 1 << 24, &p) || spread >= p) {
        return false;
    }
    o->prompt_len = p;
    o->prompt_spread = spread;
    return true;
}

/* Returns 0 to go on, or the exit code (0 after --help). *done says to stop. */
static int parse_opts(int argc, char **argv, struct bs_opts *o, bool *done) {
    *done = false;
    memset(o, 0, sizeof(*o));
    o->url = "http://127.0.0.1:8080";
    o->endpoint = "/v1/completions";
    o->dataset = "synthetic";
    o->num_prompts = 50;
    o->rate = INFINITY;
    o->prompt_len = 256;
    o->max_tokens = 64;
    o->vocab = 128;
    o->logprobs = -1;
    o->warmup = 1;
    o->timeout_s = 600.0;
    o->ignore_eos = true;
    o->progress = true;
    o->pct[0] = 99.0;
    o->n_pct = 1;
    o->api_key = getenv("OPENAI_API_KEY");
    struct kc_args a;
    kc_args_init(&a, "kvcast bench serve", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            bs_usage(stdout);
            *done = true;
            return 0;
        } else if (kc_args_str(&a, "--url", &o->url) ||
                   kc_args_str(&a, "--endpoint", &o->endpoint) ||
                   kc_args_str(&a, "--model", &o->model) ||
                   kc_args_str(&a, "--dataset", &o->dataset) ||
                   kc_args_str(&a, "--json", &o->json_path) ||
                   kc_args_str(&a, "--api-key", &o->api_key) ||
                   kc_args_str(&a, "--dump-prompts", &o->dump_path) ||
                   kc_args_long(&a, "--num-prompts", 1, 10000000, &o->num_prompts) ||
                   kc_args_long(&a, "--max-concurrency", 1, 100000, &o->max_concurrency) ||
                   kc_args_long(&a, "--vocab-size", 1, INT32_MAX, &o->vocab) ||
                   kc_args_long(&a, "--max-tokens", 1, 1 << 24, &o->max_tokens) ||
                   kc_args_long(&a, "--logprobs", 0, 5, &o->logprobs) ||
                   kc_args_long(&a, "--warmup", 0, 1000, &o->warmup) ||
                   kc_args_long(&a, "--seed", 0, INT32_MAX, &o->seed) ||
                   kc_args_double(&a, "--timeout-s", 0.001, 86400.0, &o->timeout_s)) {
        } else if (kc_args_str(&a, "--request-rate", &v)) {
            if (strcmp(v, "inf") == 0) {
                o->rate = INFINITY;
            } else if (!kc_arg_float(v, 1e-6, 1e9, &o->rate)) {
                return kc_args_bad(&a, "must be a rate in [1e-6, 1e9] requests/s or inf");
            }
        } else if (kc_args_str(&a, "--prompt-len", &v)) {
            if (!parse_prompt_len(v, o)) {
                return kc_args_bad(&a, "must be P or P:S with 0 <= S < P");
            }
        } else if (kc_args_str(&a, "--prefill-mode", &o->mode)) {
            if (strcmp(o->mode, "predict") != 0 && strcmp(o->mode, "full") != 0 &&
                strcmp(o->mode, "auto") != 0) {
                return kc_args_bad(&a, "must be predict, full or auto");
            }
        } else if (kc_args_str(&a, "--goodput", &v)) {
            /* One or more items: --goodput ttft:450 tpot:10 (or --goodput=ttft:450). */
            do {
                if (!parse_goodput_item(v, o)) {
                    return kc_args_bad(&a, "items are ttft:MS tpot:MS e2el:MS");
                }
            } while (kc_args_more(&a, &v));
        } else if (kc_args_str(&a, "--metric-percentiles", &v)) {
            if (!parse_percentiles(v, o)) {
                return kc_args_bad(&a, "must be a list like 50,90,99");
            }
        } else if (kc_args_flag(&a, "--no-ignore-eos")) {
            o->ignore_eos = false;
        } else if (kc_args_flag(&a, "--no-progress")) {
            o->progress = false;
        } else {
            return kc_args_fail(&a);
        }
    }
    return 0;
}

/* ---- prompts ---- */

struct bs_prompt {
    char *text;   /* text prompt, or NULL */
    int32_t *ids; /* token-id prompt, or NULL */
    int n_ids;
    long max_tokens; /* 0: --max-tokens */
};

struct bs_dataset {
    struct bs_prompt *p;
    size_t n;
};

static void dataset_free(struct bs_dataset *d) {
    for (size_t i = 0; i < d->n; i++) {
        free(d->p[i].text);
        free(d->p[i].ids);
    }
    free(d->p);
    memset(d, 0, sizeof(*d));
}

/* splitmix64: small, seedable, good enough for prompt ids and arrival gaps. */
static uint64_t rng_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rng_next(uint64_t *s) {
    return rng_mix(*s += 0x9E3779B97F4A7C15ull);
}

/* Uniform in (0, 1]. */
static double rng_unit(uint64_t *s) {
    return ((double)(rng_next(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Independent streams of one seed: what each is for. */
enum bs_stream {
    BS_STREAM_LENGTHS = 1, /* measured prompts' lengths */
    BS_STREAM_IDS,         /* measured prompts' token ids */
    BS_STREAM_ARRIVALS,    /* Poisson gaps */
    BS_STREAM_WARM_LENGTHS,
    BS_STREAM_WARM_IDS,
};

/* The start state of stream `stream` of seed `seed`. Every splitmix64 state lies on one
 * Weyl sequence (each draw adds G), so a state derived linearly from the seed (seed*G + 1)
 * makes seed k+1's stream seed k's shifted by one draw, and after a few prompts two seeds send
 * the same prompts (a prompt cache then answers the "different" run). The seed and the stream
 * go through the bijective finalizer instead: the starting points are unrelated, 2^64 apart
 * on average, so no two (seed, stream) pairs overlap in any run of practical length. */
static uint64_t rng_stream(long seed, enum bs_stream stream) {
    return rng_mix(rng_mix((uint64_t)seed ^ 0x5851F42D4C957F2Dull) +
                   (uint64_t)stream * 0x632BE59BD9B4E019ull);
}

/* n synthetic token-id prompts: lengths uniform in [P-S, P+S] from one stream, ids uniform in
 * [0, vocab) from another. */
static int dataset_synthetic(const struct bs_opts *o, long n, enum bs_stream lengths,
                             enum bs_stream ids, struct bs_dataset *out) {
    struct bs_dataset d = {0};
    uint64_t sl = rng_stream(o->seed, lengths);
    uint64_t si = rng_stream(o->seed, ids);
    d.p = calloc((size_t)(n > 0 ? n : 1), sizeof(*d.p));
    if (d.p == NULL) {
        return KC_ENOMEM;
    }
    for (long i = 0; i < n; i++) {
        const long span = 2 * o->prompt_spread + 1;
        const long len = o->prompt_len - o->prompt_spread + (long)(rng_next(&sl) % (uint64_t)span);
        struct bs_prompt *p = &d.p[d.n++];
        p->ids = malloc((size_t)len * sizeof(int32_t));
        if (p->ids == NULL) {
            dataset_free(&d);
            return KC_ENOMEM;
        }
        p->n_ids = (int)len;
        for (long t = 0; t < len; t++) {
            p->ids[t] = (int32_t)(rng_next(&si) % (uint64_t)o->vocab);
        }
    }
    *out = d;
    return KC_OK;
}

/* One line of a dataset file: a JSON object with "prompt" (and maybe "max_tokens"), else the
 * line itself as text. */
static int dataset_line(const char *line, size_t len, size_t lineno, const char *path,
                        struct bs_prompt *p) {
    memset(p, 0, sizeof(*p));
    if (len > 0 && line[0] == '{') {
        json_error_t jerr;
        json_t *root = json_loadb(line, len, 0, &jerr);
        json_t *pr = root ? json_object_get(root, "prompt") : NULL;
        json_t *mt = root ? json_object_get(root, "max_tokens") : NULL;
        int rc = KC_EFORMAT;
        if (json_is_string(pr) && json_string_length(pr) > 0) {
            p->text = strdup(json_string_value(pr));
            rc = p->text ? KC_OK : KC_ENOMEM;
        } else if (json_is_array(pr) && json_array_size(pr) > 0) {
            const size_t n = json_array_size(pr);
            p->ids = malloc(n * sizeof(int32_t));
            p->n_ids = (int)n;
            rc = p->ids ? KC_OK : KC_ENOMEM;
            for (size_t i = 0; rc == KC_OK && i < n; i++) {
                json_t *x = json_array_get(pr, i);
                if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                    json_integer_value(x) > INT32_MAX) {
                    rc = KC_EFORMAT;
                } else {
                    p->ids[i] = (int32_t)json_integer_value(x);
                }
            }
        }
        if (rc == KC_OK && mt != NULL) {
            if (json_is_integer(mt) && json_integer_value(mt) >= 1 &&
                json_integer_value(mt) <= (1 << 24)) {
                p->max_tokens = (long)json_integer_value(mt);
            } else {
                rc = KC_EFORMAT;
            }
        }
        json_decref(root);
        if (rc != KC_OK) {
            free(p->text);
            free(p->ids);
            memset(p, 0, sizeof(*p));
            if (rc == KC_EFORMAT) {
                fprintf(stderr,
                        "kvcast bench serve: %s:%zu: a JSON line needs \"prompt\" (non-empty "
                        "text or token ids) and at most an integer \"max_tokens\" >= 1\n",
                        path, lineno);
            }
        }
        return rc;
    }
    p->text = malloc(len + 1);
    if (p->text == NULL) {
        return KC_ENOMEM;
    }
    memcpy(p->text, line, len);
    p->text[len] = '\0';
    return KC_OK;
}

/* Reads FILE's non-empty lines and takes num_prompts of them in order, wrapping around. */
static int dataset_file(const struct bs_opts *o, struct bs_dataset *out) {
    struct kc_error err = {0};
    char *data = NULL;
    size_t len = 0;
    struct bs_dataset all = {0}, d = {0};
    size_t cap = 0;
    int rc = kc_file_read(o->dataset, BS_MAX_DATASET_BYTES, &data, &len, &err);
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast bench serve: %s\n", err.msg);
        return rc;
    }
    size_t lineno = 0;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && data[j] != '\n') {
            j++;
        }
        lineno++;
        size_t e = j;
        while (e > i && (data[e - 1] == '\r' || isspace((unsigned char)data[e - 1]))) {
            e--;
        }
        if (e > i) {
            if (all.n == cap) {
                cap = cap ? cap * 2 : 64;
                struct bs_prompt *np = realloc(all.p, cap * sizeof(*np));
                if (np == NULL) {
                    rc = KC_ENOMEM;
                    goto fail;
                }
                all.p = np;
            }
            if ((rc = dataset_line(data + i, e - i, lineno, o->dataset, &all.p[all.n])) != KC_OK) {
                goto fail;
            }
            all.n++;
        }
        i = j + 1;
    }
    if (all.n == 0) {
        fprintf(stderr, "kvcast bench serve: %s has no prompts\n", o->dataset);
        rc = KC_EFORMAT;
        goto fail;
    }
    d.p = calloc((size_t)o->num_prompts, sizeof(*d.p));
    if (d.p == NULL) {
        rc = KC_ENOMEM;
        goto fail;
    }
    for (long k = 0; k < o->num_prompts; k++) {
        const struct bs_prompt *src = &all.p[(size_t)k % all.n];
        struct bs_prompt *dst = &d.p[d.n++];
        dst->max_tokens = src->max_tokens;
        if (src->text != NULL) {
            dst->text = strdup(src->text);
        } else {
            dst->ids = malloc((size_t)src->n_ids * sizeof(int32_t));
            if (dst->ids != NULL) {
                memcpy(dst->ids, src->ids, (size_t)src->n_ids * sizeof(int32_t));
                dst->n_ids = src->n_ids;
            }
        }
        if (dst->text == NULL && dst->ids == NULL) {
            rc = KC_ENOMEM;
            goto fail;
        }
    }
    dataset_free(&all);
    free(data);
    *out = d;
    return KC_OK;
fail:
    if (rc == KC_ENOMEM) {
        fprintf(stderr, "kvcast bench serve: out of memory reading %s\n", o->dataset);
    }
    dataset_free(&all);
    dataset_free(&d);
    free(data);
    return rc;
}

/* ---- one request ---- */

enum bs_fail { BS_OK = 0, BS_FAIL_CONNECT, BS_FAIL_TRANSPORT, BS_FAIL_HTTP, BS_FAIL_STREAM };

struct bs_req {
    const struct bs_opts *o;
    const struct bs_prompt *prompt;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    /* SSE parser state (DESIGN 2) */
    struct srv_buf line;
    struct srv_buf data;
    struct srv_buf errbody;
    long status; /* 0 until the headers are in */
    /* measurements, seconds on the monotonic clock */
    double t_start, t_last, t_end;
    double ttft; /* < 0: no token yet */
    struct bs_vec itl;
    int n_chunks;
    long prompt_tokens, completion_tokens; /* -1: not reported */
    bool got_done;
    bool stream_error;
    bool finished;
    enum bs_fail fail;
    long http_status;
    char err[256];
    char mode[16]; /* timings.prefill_mode, "" when not reported */
    double srv_ttft_ms, srv_queue_ms, srv_prefill_ms;
    bool have_timings;
};

static void req_set_err(struct bs_req *r, enum bs_fail f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void req_set_err(struct bs_req *r, enum bs_fail f, const char *fmt, ...) {
    if (r->fail != BS_OK) {
        return; /* the first cause wins */
    }
    r->fail = f;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
}

static void req_free(struct bs_req *r) {
    if (r->easy != NULL) {
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    free(r->body);
    srv_buf_free(&r->line);
    srv_buf_free(&r->data);
    srv_buf_free(&r->errbody);
    vec_free(&r->itl);
    r->easy = NULL;
    r->headers = NULL;
    r->body = NULL;
}

static double json_num_or(json_t *o, const char *key, double dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* One complete SSE event's data (DESIGN 3). */
static void req_on_event(struct bs_req *r, const char *data, size_t len, double now) {
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->got_done = true;
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(data, len, 0, &jerr);
    if (!json_is_object(root)) {
        r->stream_error = true;
        req_set_err(r, BS_FAIL_STREAM, "unparsable SSE event: %s", jerr.text);
        json_decref(root);
        return;
    }
    json_t *error = json_object_get(root, "error");
    if (error != NULL && !json_is_null(error)) {
        json_t *msg = json_is_object(error) ? json_object_get(error, "message") : NULL;
        r->stream_error = true;
        req_set_err(r, BS_FAIL_STREAM, "error event: %.200s",
                    json_is_string(msg) ? json_string_value(msg) : "(no message)");
    }
    json_t *choices = json_object_get(root, "choices");
    json_t *c0 = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
    if (json_is_object(c0)) {
        json_t *text = json_object_get(c0, "text");
        json_t *lp = json_object_get(c0, "logprobs");
        json_t *lpt = json_is_object(lp) ? json_object_get(lp, "tokens") : NULL;
        const bool has_text = json_is_string(text) && json_string_length(text) > 0;
        const bool has_lp = json_is_array(lpt) && json_array_size(lpt) > 0;
        if (has_text || has_lp) {
            if (r->ttft < 0.0) {
                r->ttft = now - r->t_start;
            } else if (vec_push(&r->itl, now - r->t_last) != KC_OK) {
                req_set_err(r, BS_FAIL_STREAM, "out of memory");
            }
            r->t_last = now;
            r->n_chunks++;
        }
    }
    json_t *usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        json_t *pt = json_object_get(usage, "prompt_tokens");
        json_t *ct = json_object_get(usage, "completion_tokens");
        if (json_is_integer(pt)) {
            r->prompt_tokens = (long)json_integer_value(pt);
        }
        if (json_is_integer(ct)) {
            r->completion_tokens = (long)json_integer_value(ct);
        }
    }
    json_t *t = json_object_get(root, "timings");
    if (json_is_object(t)) {
        json_t *m = json_object_get(t, "prefill_mode");
        if (json_is_string(m)) {
            snprintf(r->mode, sizeof(r->mode), "%s", json_string_value(m));
        }
        r->srv_ttft_ms = json_num_or(t, "ttft_ms", NAN);
        r->srv_queue_ms = json_num_or(t, "queue_ms", NAN);
        r->srv_prefill_ms = json_num_or(t, "prefill_ms", NAN);
        r->have_timings = true;
    }
    json_decref(root);
}

/* One SSE line without its terminator (DESIGN 2). */
static void req_on_line(struct bs_req *r, const char *s, size_t n, double now) {
    if (n == 0) {
        if (r->data.len > 0) {
            req_on_event(r, r->data.p, r->data.len, now);
            r->data.len = 0;
        }
        return;
    }
    if (s[0] == ':') {
        return; /* comment: heartbeat */
    }
    if (n >= 5 && memcmp(s, "data:", 5) == 0) {
        size_t k = 5;
        if (k < n && s[k] == ' ') {
            k++;
        }
        if (r->data.len > 0) {
            srv_buf_append(&r->data, "\n", 1);
        }
        if (r->data.len + (n - k) > BS_MAX_EVENT_BYTES ||
            srv_buf_append(&r->data, s + k, n - k) != KC_OK) {
            req_set_err(r, BS_FAIL_STREAM, "SSE event too large or out of memory");
        }
    }
    /* event:, id:, retry: carry nothing the benchmark needs. */
}

static size_t req_write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
    struct bs_req *r = ud;
    const size_t n = size * nmemb;
    const double now = kc_now_s();
    if (r->status == 0) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    }
    if (r->status != 200) {
        size_t keep = r->errbody.len < BS_MAX_ERRBODY ? BS_MAX_ERRBODY - r->errbody.len : 0;
        srv_buf_append(&r->errbody, ptr, n < keep ? n : keep);
        return n;
    }
    for (size_t i = 0; i < n; i++) {
        if (ptr[i] == '\n') {
            size_t len = r->line.len;
            if (len > 0 && r->line.p[len - 1] == '\r') {
                len--;
            }
            req_on_line(r, r->line.p ? r->line.p : "", len, now);
            r->line.len = 0;
            continue;
        }
        /* Copy the run up to the next newline in one go. */
        size_t j = i;
        while (j < n && ptr[j] != '\n') {
            j++;
        }
        if (r->line.len + (j - i) > BS_MAX_EVENT_BYTES ||
            srv_buf_append(&r->line, ptr + i, j - i) != KC_OK) {
            req_set_err(r, BS_FAIL_STREAM, "SSE line too large or out of memory");
            return 0; /* abort the transfer */
        }
        i = j - 1;
    }
    return n;
}

static char *req_body(const struct bs_opts *o, const char *model, const struct bs_prompt *p) {
    json_t *b = json_object();
    json_object_set_new(b, "model", json_string(model));
    if (p->text != NULL) {
        json_object_set_new(b, "prompt", json_string(p->text));
    } else {
        json_t *ids = json_array();
        for (int i = 0; i < p->n_ids; i++) {
            json_array_append_new(ids, json_integer(p->ids[i]));
        }
        json_object_set_new(b, "prompt", ids);
    }
    json_object_set_new(b, "max_tokens",
                        json_integer(p->max_tokens ? p->max_tokens : o->max_tokens));
    json_object_set_new(b, "temperature", json_real(0.0));
    json_object_set_new(b, "stream", json_true());
    json_t *so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(b, "stream_options", so);
    if (o->ignore_eos) {
        json_object_set_new(b, "ignore_eos", json_true());
    }
    if (o->logprobs >= 0) {
        json_object_set_new(b, "logprobs", json_integer(o->logprobs));
    }
    if (o->mode != NULL) {
        json_object_set_new(b, "prefill_mode", json_string(o->mode));
    }
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

static struct curl_slist *auth_headers(const struct bs_opts *o, struct curl_slist *h) {
    if (o->api_key != NULL && o->api_key[0] != '\0') {
        char auth[512];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->api_key);
        h = curl_slist_append(h, auth);
    }
    return h;
}

/* Builds the easy handle of r; the body is sent as is (CURLOPT_POSTFIELDS keeps a pointer). */
static int req_prepare(struct bs_req *r, const char *url, const char *model) {
    const struct bs_opts *o = r->o;
    r->ttft = -1.0;
    r->prompt_tokens = -1;
    r->completion_tokens = -1;
    r->srv_ttft_ms = r->srv_queue_ms = r->srv_prefill_ms = NAN;
    r->body = req_body(o, model, r->prompt);
    r->easy = curl_easy_init();
    r->headers = curl_slist_append(NULL, "Content-Type: application/json");
    r->headers = curl_slist_append(r->headers, "Accept: text/event-stream");
    r->headers = auth_headers(o, r->headers);
    if (r->body == NULL || r->easy == NULL || r->headers == NULL) {
        return KC_ENOMEM;
    }
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(r->body));
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, req_write_cb);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long)(o->timeout_s * 1000.0));
    curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    return KC_OK;
}

static bool is_connect_error(CURLcode c) {
    return c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
           c == CURLE_COULDNT_RESOLVE_PROXY || c == CURLE_URL_MALFORMAT ||
           c == CURLE_UNSUPPORTED_PROTOCOL;
}

/* Classifies a finished transfer (DESIGN 5). */
static void req_finish(struct bs_req *r, CURLcode code, double now) {
    r->finished = true;
    r->t_end = now;
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    r->http_status = status;
    if (code != CURLE_OK && r->fail == BS_OK) {
        long connected = 0;
        curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connected);
        const bool connect = is_connect_error(code) ||
                             (code == CURLE_OPERATION_TIMEDOUT && status == 0 && connected == 0);
        req_set_err(r, connect ? BS_FAIL_CONNECT : BS_FAIL_TRANSPORT, "%s",
                    curl_easy_strerror(code));
    }
    if (status != 200 && status != 0) {
        json_error_t jerr;
        json_t *eb = r->errbody.len ? json_loadb(r->errbody.p, r->errbody.len, 0, &jerr) : NULL;
        json_t *e = json_object_get(eb, "error");
        json_t *msg = json_is_object(e) ? json_object_get(e, "message") : NULL;
        req_set_err(r, BS_FAIL_HTTP, "HTTP %ld: %.200s", status,
                    json_is_string(msg) ? json_string_value(msg) : "(no error message)");
        json_decref(eb);
    }
    if (r->line.len > 0 || r->data.len > 0) {
        req_on_line(r, r->line.p ? r->line.p : "", r->line.len, now);
        req_on_line(r, "", 0, now);
    }
    if (!r->got_done) {
        req_set_err(r, BS_FAIL_STREAM, "the stream ended without [DONE]");
    }
    if (r->ttft < 0.0) {
        req_set_err(r, BS_FAIL_STREAM,
                    "no token chunk arrived (a server without a tokenizer streams no text: "
                    "try --logprobs 0)");
    }
}

/* ---- the run ---- */

struct bs_run {
    const struct bs_opts *o;
    CURLM *multi;
    struct bs_req *reqs;
    size_t n;
    double *arrival; /* seconds after t0 */
    double t0, t_done;
    size_t next, in_flight, n_done, n_failed;
    double last_draw;
    int last_quarter;
    bool tty;
    bool show;
};

static void progress_draw(struct bs_run *run, bool final) {
    if (!run->show) {
        return;
    }
    const double now = kc_now_s();
    if (run->tty) {
        if (!final && now - run->last_draw < 0.1) {
            return;
        }
        const int width = 30;
        const int fill = (int)((double)width * (double)run->n_done / (double)run->n);
        char bar[64];
        for (int i = 0; i < width; i++) {
            bar[i] = i < fill ? '#' : '.';
        }
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] %zu/%zu done, %zu in flight, %zu failed, %.1f s  ", bar,
                run->n_done, run->n, run->in_flight, run->n_failed, now - run->t0);
        if (final) {
            fprintf(stderr, "\n");
        }
        run->last_draw = now;
    } else {
        /* Not a terminal: a line at each quarter keeps logs short. */
        const int q = (int)(4 * run->n_done / run->n);
        if (q > run->last_quarter) {
            run->last_quarter = q;
            fprintf(stderr, "bench serve: %zu/%zu done, %zu failed, %.1f s\n", run->n_done, run->n,
                    run->n_failed, now - run->t0);
        }
    }
}

static int run_launch(struct bs_run *run, size_t i) {
    struct bs_req *r = &run->reqs[i];
    r->t_start = kc_now_s();
    r->t_last = r->t_start;
    if (curl_multi_add_handle(run->multi, r->easy) != CURLM_OK) {
        return KC_EBACKEND;
    }
    run->in_flight++;
    return KC_OK;
}

static void run_drain(struct bs_run *run) {
    int left = 0;
    CURLMsg *m;
    while ((m = curl_multi_info_read(run->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *e = m->easy_handle;
        const CURLcode code = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        struct bs_req *r = (struct bs_req *)(void *)priv;
        req_finish(r, code, kc_now_s());
        curl_multi_remove_handle(run->multi, e);
        /* The transfer is over: free its buffers now, keep the measurements. */
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
        curl_slist_free_all(r->headers);
        r->headers = NULL;
        free(r->body);
        r->body = NULL;
        srv_buf_free(&r->line);
        srv_buf_free(&r->data);
        run->in_flight--;
        run->n_done++;
        if (r->fail != BS_OK) {
            run->n_failed++;
        }
        run->t_done = kc_now_s();
    }
}

/* Sends every request at its arrival time (DESIGN 1) and waits for all of them. */
static int run_all(struct bs_run *run) {
    const long maxc = run->o->max_concurrency;
    run->t0 = kc_now_s();
    run->t_done = run->t0;
    run->last_quarter = 0;
    while (run->n_done < run->n) {
        const double now = kc_now_s();
        while (run->next < run->n && run->arrival[run->next] <= now - run->t0 &&
               (maxc == 0 || run->in_flight < (size_t)maxc)) {
            if (run_launch(run, run->next) != KC_OK) {
                return KC_EBACKEND;
            }
            run->next++;
        }
        int running = 0;
        if (curl_multi_perform(run->multi, &running) != CURLM_OK) {
            return KC_EBACKEND;
        }
        run_drain(run);
        progress_draw(run, false);
        if (run->n_done == run->n) {
            break;
        }
        int wait_ms = 100;
        if (run->next < run->n && (maxc == 0 || run->in_flight < (size_t)maxc)) {
            const double dt = run->arrival[run->next] - (kc_now_s() - run->t0);
            wait_ms = dt <= 0.0 ? 0 : dt < 0.1 ? (int)ceil(dt * 1000.0) : 100;
        }
        if (wait_ms > 0 && curl_multi_poll(run->multi, NULL, 0, wait_ms, NULL) != CURLM_OK) {
            return KC_EBACKEND;
        }
    }
    progress_draw(run, true);
    return KC_OK;
}

/* ---- metrics ---- */

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct bs_stat {
    double mean, median, std;
    double pct[BS_MAX_PERCENTILES];
};

/* Sorts v in place; values in seconds, results in ms. Empty: all 0 (as vLLM). */
static struct bs_stat stat_of(struct bs_vec *v, const struct bs_opts *o) {
    struct bs_stat s;
    memset(&s, 0, sizeof(s));
    if (v->n == 0) {
        return s;
    }
    qsort(v->v, v->n, sizeof(double), cmp_double);
    double sum = 0.0;
    for (size_t i = 0; i < v->n; i++) {
        sum += v->v[i];
    }
    s.mean = sum / (double)v->n;
    double ss = 0.0;
    for (size_t i = 0; i < v->n; i++) {
        ss += (v->v[i] - s.mean) * (v->v[i] - s.mean);
    }
    s.std = sqrt(ss / (double)v->n);
    for (int k = -1; k < o->n_pct; k++) {
        const double p = k < 0 ? 50.0 : o->pct[k];
        const double rank = p / 100.0 * (double)(v->n - 1);
        const size_t lo = (size_t)floor(rank), hi = (size_t)ceil(rank);
        const double x = v->v[lo] + (v->v[hi] - v->v[lo]) * (rank - (double)lo);
        if (k < 0) {
            s.median = x;
        } else {
            s.pct[k] = x;
        }
    }
    s.mean *= 1e3;
    s.median *= 1e3;
    s.std *= 1e3;
    for (int k = 0; k < o->n_pct; k++) {
        s.pct[k] *= 1e3;
    }
    return s;
}

static void pct_word(double p, char *out, size_t cap) {
    if (p == floor(p)) {
        snprintf(out, cap, "%d", (int)p);
    } else {
        snprintf(out, cap, "%g", p);
    }
}

struct bs_metrics {
    size_t completed, failed, by_fail[5];
    long total_input, total_output;
    size_t good;
    double duration;
    double request_throughput, request_goodput, output_throughput, total_token_throughput;
    struct bs_vec ttft, tpot, itl, e2el, srv_ttft, srv_queue;
    struct bs_stat s_ttft, s_tpot, s_itl, s_e2el, s_srv_ttft, s_srv_queue;
    size_t n_full, n_predict, n_other, n_unreported;
};

static long req_output_tokens(const struct bs_req *r) {
    return r->completion_tokens >= 0 ? r->completion_tokens : r->n_chunks;
}

static long req_input_tokens(const struct bs_req *r) {
    return r->prompt_tokens >= 0 ? r->prompt_tokens : r->prompt->ids ? r->prompt->n_ids : 0;
}

static double req_tpot(const struct bs_req *r) {
    const long out = req_output_tokens(r);
    return out > 1 ? (r->t_end - r->t_start - r->ttft) / (double)(out - 1) : 0.0;
}

static int metrics_compute(struct bs_run *run, struct bs_metrics *m) {
    const struct bs_opts *o = run->o;
    memset(m, 0, sizeof(*m));
    int rc = KC_OK;
    for (size_t i = 0; i < run->n && rc == KC_OK; i++) {
        const struct bs_req *r = &run->reqs[i];
        m->by_fail[r->fail]++;
        if (r->fail != BS_OK) {
            m->failed++;
            continue;
        }
        m->completed++;
        const long out = req_output_tokens(r);
        m->total_input += req_input_tokens(r);
        m->total_output += out;
        const double e2el = r->t_end - r->t_start;
        rc |= vec_push(&m->ttft, r->ttft);
        rc |= vec_push(&m->e2el, e2el);
        if (out > 1) {
            rc |= vec_push(&m->tpot, req_tpot(r));
        }
        for (size_t k = 0; k < r->itl.n; k++) {
            rc |= vec_push(&m->itl, r->itl.v[k]);
        }
        if (r->have_timings && isfinite(r->srv_ttft_ms)) {
            rc |= vec_push(&m->srv_ttft, r->srv_ttft_ms * 1e-3);
        }
        if (r->have_timings && isfinite(r->srv_queue_ms)) {
            rc |= vec_push(&m->srv_queue, r->srv_queue_ms * 1e-3);
        }
        if (r->mode[0] == '\0') {
            m->n_unreported++;
        } else if (strcmp(r->mode, "full") == 0) {
            m->n_full++;
        } else if (strcmp(r->mode, "predict") == 0) {
            m->n_predict++;
        } else {
            m->n_other++;
        }
        if (o->have_goodput) {
            const bool good = (o->slo_ttft_ms <= 0.0 || r->ttft * 1e3 <= o->slo_ttft_ms) &&
                              (o->slo_tpot_ms <= 0.0 || req_tpot(r) * 1e3 <= o->slo_tpot_ms) &&
                              (o->slo_e2el_ms <= 0.0 || e2el * 1e3 <= o->slo_e2el_ms);
            m->good += good;
        }
    }
    if (rc != KC_OK) {
        return KC_ENOMEM;
    }
    m->duration = run->t_done - run->t0;
    const double d = m->duration > 0.0 ? m->duration : 1e-9;
    m->request_throughput = (double)m->completed / d;
    m->request_goodput = (double)m->good / d;
    m->output_throughput = (double)m->total_output / d;
    m->total_token_throughput = (double)(m->total_input + m->total_output) / d;
    m->s_ttft = stat_of(&m->ttft, o);
    m->s_tpot = stat_of(&m->tpot, o);
    m->s_itl = stat_of(&m->itl, o);
    m->s_e2el = stat_of(&m->e2el, o);
    m->s_srv_ttft = stat_of(&m->srv_ttft, o);
    m->s_srv_queue = stat_of(&m->srv_queue, o);
    return KC_OK;
}

static void metrics_free(struct bs_metrics *m) {
    vec_free(&m->ttft);
    vec_free(&m->tpot);
    vec_free(&m->itl);
    vec_free(&m->e2el);
    vec_free(&m->srv_ttft);
    vec_free(&m->srv_queue);
}

/* ---- output ---- */

/* Python's "{s:{c}^{n}}".format(...): centred, the odd pad character on the right. */
static void print_header(const char *s, char c) {
    const int n = 50, len = (int)strlen(s);
    const int left = len < n ? (n - len) / 2 : 0, right = len < n ? n - len - left : 0;
    for (int i = 0; i < left; i++) {
        putchar(c);
    }
    fputs(s, stdout);
    for (int i = 0; i < right; i++) {
        putchar(c);
    }
    putchar('\n');
}

static void print_int(const char *label, long v) {
    printf("%-40s %-10ld\n", label, v);
}

static void print_float(const char *label, double v) {
    printf("%-40s %-10.2f\n", label, v);
}

static void print_stat(const struct bs_opts *o, const char *header, const char *name,
                       const struct bs_stat *s) {
    char label[64], w[16];
    print_header(header, '-');
    snprintf(label, sizeof(label), "Mean %s (ms):", name);
    print_float(label, s->mean);
    snprintf(label, sizeof(label), "Median %s (ms):", name);
    print_float(label, s->median);
    for (int k = 0; k < o->n_pct; k++) {
        pct_word(o->pct[k], w, sizeof(w));
        snprintf(label, sizeof(label), "P%s %s (ms):", w, name);
        print_float(label, s->pct[k]);
    }
}

static void print_summary(const struct bs_run *run, const struct bs_metrics *m) {
    const struct bs_opts *o = run->o;
    print_header(" Serving Benchmark Result ", '=');
    print_int("Successful requests:", (long)m->completed);
    print_int("Failed requests:", (long)m->failed);
    if (o->max_concurrency > 0) {
        print_int("Maximum request concurrency:", o->max_concurrency);
    }
    print_float("Benchmark duration (s):", m->duration);
    print_int("Total input tokens:", m->total_input);
    print_int("Total generated tokens:", m->total_output);
    print_float("Request throughput (req/s):", m->request_throughput);
    if (o->have_goodput) {
        print_float("Request goodput (req/s):", m->request_goodput);
    }
    print_float("Output token throughput (tok/s):", m->output_throughput);
    print_float("Total Token throughput (tok/s):", m->total_token_throughput);
    print_stat(o, "Time to First Token", "TTFT", &m->s_ttft);
    print_stat(o, "Time per Output Token (excl. 1st token)", "TPOT", &m->s_tpot);
    print_stat(o, "Inter-token Latency", "ITL", &m->s_itl);
    print_stat(o, "End-to-end Latency", "E2EL", &m->s_e2el);
    print_header("Prefill Mode (server-reported)", '-');
    print_int("Requests prefilled full:", (long)m->n_full);
    print_int("Requests prefilled predict:", (long)m->n_predict);
    if (m->n_other > 0) {
        print_int("Requests prefilled other:", (long)m->n_other);
    }
    if (m->n_unreported > 0) {
        print_int("Requests without timings:", (long)m->n_unreported);
    }
    if (m->srv_ttft.n > 0) {
        print_float("Mean server TTFT (ms):", m->s_srv_ttft.mean);
        print_float("Median server TTFT (ms):", m->s_srv_ttft.median);
        print_float("Mean server queue time (ms):", m->s_srv_queue.mean);
    }
    if (m->failed > 0) {
        print_header("Errors", '-');
        print_int("Connect errors:", (long)m->by_fail[BS_FAIL_CONNECT]);
        print_int("Transport errors:", (long)m->by_fail[BS_FAIL_TRANSPORT]);
        print_int("HTTP errors:", (long)m->by_fail[BS_FAIL_HTTP]);
        print_int("Stream errors:", (long)m->by_fail[BS_FAIL_STREAM]);
        for (size_t i = 0; i < run->n; i++) {
            if (run->reqs[i].fail != BS_OK) {
                printf("first error (request %zu): %s\n", i, run->reqs[i].err);
                break;
            }
        }
    }
    print_header("", '=');
}

static void json_stat(json_t *o, const struct bs_opts *opts, const char *name,
                      const struct bs_stat *s) {
    char key[64], w[16];
    snprintf(key, sizeof(key), "mean_%s_ms", name);
    json_object_set_new(o, key, json_real(s->mean));
    snprintf(key, sizeof(key), "median_%s_ms", name);
    json_object_set_new(o, key, json_real(s->median));
    snprintf(key, sizeof(key), "std_%s_ms", name);
    json_object_set_new(o, key, json_real(s->std));
    for (int k = 0; k < opts->n_pct; k++) {
        pct_word(opts->pct[k], w, sizeof(w));
        snprintf(key, sizeof(key), "p%s_%s_ms", w, name);
        json_object_set_new(o, key, json_real(s->pct[k]));
    }
}

static const char *fail_name(enum bs_fail f) {
    switch (f) {
    case BS_FAIL_CONNECT:
        return "connect";
    case BS_FAIL_TRANSPORT:
        return "transport";
    case BS_FAIL_HTTP:
        return "http";
    case BS_FAIL_STREAM:
        return "stream";
    default:
        return "";
    }
}

static int write_json(const struct bs_run *run, const struct bs_metrics *m, const char *model,
                      const char *path) {
    const struct bs_opts *o = run->o;
    json_t *j = json_object();
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof(date), "%Y%m%d-%H%M%S", localtime_r(&now, &tm));
    json_object_set_new(j, "date", json_string(date));
    json_object_set_new(j, "backend", json_string("kvcast"));
    json_object_set_new(j, "model_id", json_string(model));
    json_object_set_new(j, "tokenizer_id", json_null());
    json_object_set_new(j, "url", json_string(o->url));
    json_object_set_new(j, "dataset", json_string(o->dataset));
    json_object_set_new(j, "num_prompts", json_integer(o->num_prompts));
    json_object_set_new(j, "request_rate",
                        isinf(o->rate) ? json_string("inf") : json_real(o->rate));
    json_object_set_new(j, "burstiness", json_real(1.0));
    json_object_set_new(j, "max_concurrency",
                        o->max_concurrency > 0 ? json_integer(o->max_concurrency) : json_null());
    json_object_set_new(j, "prompt_len", json_integer(o->prompt_len));
    json_object_set_new(j, "prompt_len_spread", json_integer(o->prompt_spread));
    json_object_set_new(j, "max_tokens", json_integer(o->max_tokens));
    json_object_set_new(j, "prefill_mode", o->mode ? json_string(o->mode) : json_null());
    json_object_set_new(j, "seed", json_integer(o->seed));
    json_t *gp = json_object();
    if (o->slo_ttft_ms > 0.0) {
        json_object_set_new(gp, "ttft", json_real(o->slo_ttft_ms));
    }
    if (o->slo_tpot_ms > 0.0) {
        json_object_set_new(gp, "tpot", json_real(o->slo_tpot_ms));
    }
    if (o->slo_e2el_ms > 0.0) {
        json_object_set_new(gp, "e2el", json_real(o->slo_e2el_ms));
    }
    json_object_set_new(j, "goodput_config", o->have_goodput ? gp : json_null());
    if (!o->have_goodput) {
        json_decref(gp);
    }

    json_object_set_new(j, "duration", json_real(m->duration));
    json_object_set_new(j, "completed", json_integer((json_int_t)m->completed));
    json_object_set_new(j, "failed", json_integer((json_int_t)m->failed));
    json_object_set_new(j, "total_input_tokens", json_integer(m->total_input));
    json_object_set_new(j, "total_output_tokens", json_integer(m->total_output));
    json_object_set_new(j, "request_throughput", json_real(m->request_throughput));
    json_object_set_new(j, "request_goodput",
                        o->have_goodput ? json_real(m->request_goodput) : json_null());
    json_object_set_new(j, "output_throughput", json_real(m->output_throughput));
    json_object_set_new(j, "total_token_throughput", json_real(m->total_token_throughput));
    json_stat(j, o, "ttft", &m->s_ttft);
    json_stat(j, o, "tpot", &m->s_tpot);
    json_stat(j, o, "itl", &m->s_itl);
    json_stat(j, o, "e2el", &m->s_e2el);
    json_object_set_new(j, "mean_server_ttft_ms", json_real(m->s_srv_ttft.mean));
    json_object_set_new(j, "median_server_ttft_ms", json_real(m->s_srv_ttft.median));
    json_object_set_new(j, "mean_server_queue_ms", json_real(m->s_srv_queue.mean));

    json_t *modes = json_object();
    json_object_set_new(modes, "full", json_integer((json_int_t)m->n_full));
    json_object_set_new(modes, "predict", json_integer((json_int_t)m->n_predict));
    if (m->n_other > 0) {
        json_object_set_new(modes, "other", json_integer((json_int_t)m->n_other));
    }
    json_object_set_new(modes, "unreported", json_integer((json_int_t)m->n_unreported));
    json_object_set_new(j, "prefill_mode_counts", modes);
    json_t *errs = json_object();
    for (int f = BS_FAIL_CONNECT; f <= BS_FAIL_STREAM; f++) {
        json_object_set_new(errs, fail_name((enum bs_fail)f),
                            json_integer((json_int_t)m->by_fail[f]));
    }
    json_object_set_new(j, "error_counts", errs);

    /* Per-request arrays, as vLLM saves them (ttfts and itls in seconds). */
    json_t *in = json_array(), *outl = json_array(), *ttfts = json_array(), *itls = json_array(),
           *e2els = json_array(), *errors = json_array(), *rmodes = json_array(),
           *sttft = json_array();
    for (size_t i = 0; i < run->n; i++) {
        const struct bs_req *r = &run->reqs[i];
        const bool ok = r->fail == BS_OK;
        json_array_append_new(in, json_integer(req_input_tokens(r)));
        json_array_append_new(outl, json_integer(ok ? req_output_tokens(r) : 0));
        json_array_append_new(ttfts, json_real(ok ? r->ttft : 0.0));
        json_t *il = json_array();
        for (size_t k = 0; ok && k < r->itl.n; k++) {
            json_array_append_new(il, json_real(r->itl.v[k]));
        }
        json_array_append_new(itls, il);
        json_array_append_new(e2els, json_real(ok ? r->t_end - r->t_start : 0.0));
        char e[300];
        snprintf(e, sizeof(e), "%s%s%s", fail_name(r->fail), ok ? "" : ": ", r->err);
        json_array_append_new(errors, json_string(e));
        json_array_append_new(rmodes, r->mode[0] ? json_string(r->mode) : json_null());
        json_array_append_new(sttft, r->have_timings && isfinite(r->srv_ttft_ms)
                                         ? json_real(r->srv_ttft_ms)
                                         : json_null());
    }
    json_object_set_new(j, "input_lens", in);
    json_object_set_new(j, "output_lens", outl);
    json_object_set_new(j, "ttfts", ttfts);
    json_object_set_new(j, "itls", itls);
    json_object_set_new(j, "e2els", e2els);
    json_object_set_new(j, "errors", errors);
    json_object_set_new(j, "prefill_modes", rmodes);
    json_object_set_new(j, "server_ttfts_ms", sttft);
    const int rc = json_dump_file(j, path, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
    json_decref(j);
    if (rc != 0) {
        fprintf(stderr, "kvcast bench serve: cannot write %s\n", path);
        return KC_EIO;
    }
    return KC_OK;
}

/* ---- GET /v1/models ---- */

static size_t buf_write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
    struct srv_buf *b = ud;
    const size_t n = size * nmemb;
    if (b->len + n > (1u << 20) || srv_buf_append(b, ptr, n) != KC_OK) {
        return 0;
    }
    return n;
}

/* Reads the first model id and its max_model_len (0 when absent). */
static int fetch_model(const struct bs_opts *o, char *model, size_t cap, long *max_len) {
    char url[2048];
    snprintf(url, sizeof(url), "%s/v1/models", o->url);
    struct srv_buf b = {0};
    struct curl_slist *h = auth_headers(o, NULL);
    CURL *e = curl_easy_init();
    int rc = KC_ENOMEM;
    json_t *root = NULL;
    if (e == NULL) {
        goto fail;
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, buf_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    const CURLcode c = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (c != CURLE_OK) {
        fprintf(stderr, "kvcast bench serve: GET %s: %s\n", url, curl_easy_strerror(c));
        rc = KC_EIO;
        goto fail;
    }
    json_error_t jerr;
    root = status == 200 && b.len ? json_loadb(b.p, b.len, 0, &jerr) : NULL;
    json_t *m0 = json_array_get(json_object_get(root, "data"), 0);
    json_t *id = json_object_get(m0, "id");
    if (!json_is_string(id)) {
        fprintf(stderr, "kvcast bench serve: GET %s: HTTP %ld, no model id in the answer\n", url,
                status);
        rc = KC_EFORMAT;
        goto fail;
    }
    json_t *ml = json_object_get(m0, "max_model_len");
    *max_len = json_is_integer(ml) ? (long)json_integer_value(ml) : 0;
    if (model[0] == '\0') {
        snprintf(model, cap, "%s", json_string_value(id));
    }
    rc = KC_OK;
fail:
    json_decref(root);
    if (e != NULL) {
        curl_easy_cleanup(e);
    }
    curl_slist_free_all(h);
    srv_buf_free(&b);
    return rc;
}

/* ---- entry ---- */

static int run_requests(struct bs_run *run, const struct bs_opts *o, const char *url,
                        const char *model, const struct bs_dataset *d, size_t n,
                        const double *arrival) {
    memset(run, 0, sizeof(*run));
    run->o = o;
    run->n = n;
    run->tty = isatty(fileno(stderr));
    run->show = o->progress;
    run->reqs = calloc(n, sizeof(*run->reqs));
    run->arrival = calloc(n, sizeof(double));
    run->multi = curl_multi_init();
    if (run->reqs == NULL || run->arrival == NULL || run->multi == NULL) {
        return KC_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        struct bs_req *r = &run->reqs[i];
        r->o = o;
        r->prompt = &d->p[i % d->n];
        if (req_prepare(r, url, model) != KC_OK) {
            return KC_ENOMEM;
        }
        run->arrival[i] = arrival != NULL ? arrival[i] : 0.0;
    }
    return run_all(run);
}

static void run_free(struct bs_run *run) {
    for (size_t i = 0; run->reqs != NULL && i < run->n; i++) {
        if (run->reqs[i].easy != NULL && run->multi != NULL) {
            curl_multi_remove_handle(run->multi, run->reqs[i].easy);
        }
        req_free(&run->reqs[i]);
    }
    free(run->reqs);
    free(run->arrival);
    if (run->multi != NULL) {
        curl_multi_cleanup(run->multi);
    }
    memset(run, 0, sizeof(*run));
}

/* Open-loop send times (s from the start): exponential gaps of mean 1/rate from the arrivals
 * stream, or all 0 for rate inf. NULL when out of memory. */
static double *arrivals_draw(const struct bs_opts *o, size_t n) {
    double *a = calloc(n ? n : 1, sizeof(double));
    uint64_t s = rng_stream(o->seed, BS_STREAM_ARRIVALS);
    double t = 0.0;
    for (size_t i = 0; a != NULL && i < n; i++) {
        if (!isinf(o->rate)) {
            t += -log(rng_unit(&s)) / o->rate;
        }
        a[i] = t;
    }
    return a;
}

static json_t *prompt_json(const struct bs_prompt *p) {
    json_t *j = json_object();
    if (p->text != NULL) {
        json_object_set_new(j, "prompt", json_string(p->text));
    } else {
        json_t *ids = json_array();
        for (int i = 0; i < p->n_ids; i++) {
            json_array_append_new(ids, json_integer(p->ids[i]));
        }
        json_object_set_new(j, "prompt", ids);
    }
    if (p->max_tokens > 0) {
        json_object_set_new(j, "max_tokens", json_integer(p->max_tokens));
    }
    return j;
}

/* --dump-prompts: one JSON line per prompt, the warm-up ones first ("warmup": true), the
 * measured ones with their send time ("arrival_s"). A line without "warmup" is a valid
 * --dataset line. */
static int dump_prompts(const char *path, const struct bs_dataset *warm, const struct bs_dataset *d,
                        const double *arrival) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "kvcast bench serve: cannot write %s: %s\n", path, strerror(errno));
        return KC_EIO;
    }
    int rc = KC_OK;
    for (size_t k = 0; k < warm->n + d->n && rc == KC_OK; k++) {
        const bool w = k < warm->n;
        json_t *j = prompt_json(w ? &warm->p[k] : &d->p[k - warm->n]);
        if (w) {
            json_object_set_new(j, "warmup", json_true());
        } else {
            json_object_set_new(j, "arrival_s", json_real(arrival[k - warm->n]));
        }
        char *line = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (line == NULL || fprintf(f, "%s\n", line) < 0) {
            rc = line == NULL ? KC_ENOMEM : KC_EIO;
        }
        free(line);
    }
    if (fclose(f) != 0 && rc == KC_OK) {
        rc = KC_EIO;
    }
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast bench serve: writing %s failed\n", path);
    }
    return rc;
}

int kc_bench_serve(int argc, char **argv) {
    struct bs_opts o;
    bool done = false;
    int code = parse_opts(argc, argv, &o, &done);
    if (code != 0 || done) {
        return code;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "kvcast bench serve: libcurl failed to initialise\n");
        return 1;
    }
    int exit_code = 1;
    struct bs_dataset d = {0}, wd = {0};
    struct bs_run run = {0}, warm = {0};
    struct bs_metrics m;
    memset(&m, 0, sizeof(m));
    double *arrival = NULL;
    char model[256] = {0};
    char url[2048];
    snprintf(url, sizeof(url), "%s%s", o.url, o.endpoint);
    if (o.model != NULL) {
        snprintf(model, sizeof(model), "%s", o.model);
    }
    long max_len = 0;
    if (o.dump_path == NULL && fetch_model(&o, model, sizeof(model), &max_len) != KC_OK) {
        fprintf(stderr, "kvcast bench serve: is a server listening at %s?\n", o.url);
        goto done;
    }
    const bool synthetic = strcmp(o.dataset, "synthetic") == 0;
    if ((synthetic ? dataset_synthetic(&o, o.num_prompts, BS_STREAM_LENGTHS, BS_STREAM_IDS, &d)
                   : dataset_file(&o, &d)) != KC_OK) {
        exit_code = 2;
        goto done;
    }
    /* Warm-up prompts of their own, from streams of their own: re-sending measured prompts
     * would fill a server's prompt cache and make the measured TTFTs cache hits. */
    struct bs_opts wgen = o;
    if (!synthetic && max_len > 0 && o.prompt_len + o.prompt_spread + o.max_tokens > max_len) {
        /* A file's prompts have their own lengths: keep the warm-up inside the context. */
        wgen.prompt_len = o.max_tokens + 1 < max_len ? max_len - o.max_tokens : 1;
        wgen.prompt_spread = 0;
    }
    if (dataset_synthetic(&wgen, o.warmup, BS_STREAM_WARM_LENGTHS, BS_STREAM_WARM_IDS, &wd) !=
            KC_OK ||
        (arrival = arrivals_draw(&o, (size_t)o.num_prompts)) == NULL) {
        fprintf(stderr, "kvcast bench serve: out of memory\n");
        goto done;
    }
    if (o.dump_path != NULL) {
        exit_code = dump_prompts(o.dump_path, &wd, &d, arrival) == KC_OK ? 0 : 1;
        goto done;
    }
    if (synthetic && max_len > 0 && o.prompt_len + o.prompt_spread + o.max_tokens > max_len) {
        fprintf(stderr,
                "kvcast bench serve: prompts up to %ld tokens + %ld new tokens exceed the "
                "server's max_model_len %ld\n",
                o.prompt_len + o.prompt_spread, o.max_tokens, max_len);
        exit_code = 2;
        goto done;
    }
    if (isinf(o.rate)) {
        printf("Traffic request rate: inf\n");
    } else {
        printf("Traffic request rate: %g\n", o.rate);
    }
    printf("Burstiness factor: 1.0 (Poisson process)\n");
    if (o.max_concurrency > 0) {
        printf("Maximum request concurrency: %ld\n", o.max_concurrency);
    } else {
        printf("Maximum request concurrency: None\n");
    }
    fflush(stdout);
    if (o.warmup > 0) {
        /* Warm-up: one at a time, not measured (the first request of a fresh server pays for
         * page faults and first-touch allocations). */
        struct bs_opts wo = o;
        wo.max_concurrency = 1;
        wo.progress = false;
        if (run_requests(&warm, &wo, url, model, &wd, (size_t)o.warmup, NULL) != KC_OK) {
            fprintf(stderr, "kvcast bench serve: libcurl failed during the warm-up\n");
            goto done;
        }
        for (size_t i = 0; i < warm.n; i++) {
            if (warm.reqs[i].fail != BS_OK) {
                fprintf(stderr, "kvcast bench serve: warm-up request failed: %s\n",
                        warm.reqs[i].err);
                goto done;
            }
        }
    }
    fprintf(stderr, "bench serve: %ld requests to %s (model %s)\n", o.num_prompts, url, model);
    if (run_requests(&run, &o, url, model, &d, (size_t)o.num_prompts, arrival) != KC_OK) {
        fprintf(stderr, "kvcast bench serve: libcurl failed\n");
        goto done;
    }
    if (metrics_compute(&run, &m) != KC_OK) {
        fprintf(stderr, "kvcast bench serve: out of memory\n");
        goto done;
    }
    print_summary(&run, &m);
    if (m.completed > 0 && m.n_unreported == m.completed && o.mode != NULL) {
        fprintf(stderr, "bench serve: note: no response reported timings.prefill_mode\n");
    }
    if (o.json_path != NULL && write_json(&run, &m, model, o.json_path) != KC_OK) {
        goto done;
    }
    exit_code = m.completed > 0 ? 0 : 1;
done:
    metrics_free(&m);
    run_free(&warm);
    run_free(&run);
    dataset_free(&wd);
    dataset_free(&d);
    free(arrival);
    curl_global_cleanup();
    return exit_code;
}
