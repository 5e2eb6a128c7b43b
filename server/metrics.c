/*
 * metrics.c — Prometheus text rendering of the server's registry. See metrics.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "server/metrics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* vLLM's bucket bounds (vllm/engine/metrics.py), so histograms line up with vLLM's. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                     20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                    5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

#define NB(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void hist_init(struct srv_hist *h, const double *bounds, int n) {
    KC_ASSERT(n <= SRV_HIST_MAX_BUCKETS);
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n_bounds = n;
}

void srv_metrics_init(struct srv_metrics *m, const char *model_name) {
    memset(m, 0, sizeof(*m));
    snprintf(m->model_name, sizeof(m->model_name), "%s", model_name);
    /* Label values may not carry quotes, backslashes or newlines unescaped: keep it simple. */
    for (char *p = m->model_name; *p; p++) {
        if (*p == '"' || *p == '\\' || *p == '\n') {
            *p = '_';
        }
    }
    hist_init(&m->ttft, ttft_bounds, NB(ttft_bounds));
    hist_init(&m->itl, itl_bounds, NB(itl_bounds));
    hist_init(&m->e2e, e2e_bounds, NB(e2e_bounds));
    hist_init(&m->queue, e2e_bounds, NB(e2e_bounds));
}

void srv_hist_observe(struct srv_hist *h, double v) {
    if (!(v >= 0.0)) {
        v = 0.0;
    }
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) {
        i++;
    }
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

static int render_hist(struct srv_buf *o, const char *name, const char *help,
                       const struct srv_hist *h, const char *model) {
    int rc = srv_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; rc == KC_OK && i <= h->n_bounds; i++) {
        cum += h->counts[i];
        if (i < h->n_bounds) {
            rc = srv_buf_printf(o, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model,
                                h->bounds[i], (unsigned long long)cum);
        } else {
            rc = srv_buf_printf(o, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model,
                                (unsigned long long)cum);
        }
    }
    if (rc == KC_OK) {
        rc = srv_buf_printf(o, "%s_sum{model_name=\"%s\"} %.9g\n%s_count{model_name=\"%s\"} %llu\n",
                            name, model, h->sum, name, model, (unsigned long long)h->count);
    }
    return rc;
}

int srv_metrics_render(const struct srv_metrics *m, const struct srv_gauges *g, struct srv_buf *o) {
    const char *mn = m->model_name;
    static const char *const fin[SRV_FIN_COUNT] = {"stop", "length", "abort"};
    int rc = KC_OK;
    rc |= srv_buf_printf(o,
                         "# HELP kvcast:num_requests_running Requests prefilling or decoding.\n"
                         "# TYPE kvcast:num_requests_running gauge\n"
                         "kvcast:num_requests_running{model_name=\"%s\"} %d\n"
                         "# HELP kvcast:num_requests_waiting Requests waiting to be scheduled.\n"
                         "# TYPE kvcast:num_requests_waiting gauge\n"
                         "kvcast:num_requests_waiting{model_name=\"%s\"} %d\n",
                         mn, g->running, mn, g->waiting);
    rc |= srv_buf_printf(o,
                         "# HELP kvcast:kv_cache_usage_perc KV cache usage (1 means 100%%).\n"
                         "# TYPE kvcast:kv_cache_usage_perc gauge\n"
                         "kvcast:kv_cache_usage_perc{model_name=\"%s\",pool=\"base\"} %.6g\n",
                         mn, g->kv_base);
    if (g->has_aux) {
        rc |= srv_buf_printf(o, "kvcast:kv_cache_usage_perc{model_name=\"%s\",pool=\"aux\"} %.6g\n",
                             mn, g->kv_aux);
    }
    rc |= srv_buf_printf(o,
                         "# HELP kvcast:prompt_tokens_total Prefill tokens processed.\n"
                         "# TYPE kvcast:prompt_tokens_total counter\n"
                         "kvcast:prompt_tokens_total{model_name=\"%s\"} %llu\n"
                         "# HELP kvcast:generation_tokens_total Generated tokens.\n"
                         "# TYPE kvcast:generation_tokens_total counter\n"
                         "kvcast:generation_tokens_total{model_name=\"%s\"} %llu\n",
                         mn, (unsigned long long)m->prompt_tokens, mn,
                         (unsigned long long)m->generation_tokens);
    rc |= srv_buf_printf(o, "# HELP kvcast:request_success_total Finished requests.\n"
                            "# TYPE kvcast:request_success_total counter\n");
    for (int i = 0; i < SRV_FIN_COUNT; i++) {
        rc |= srv_buf_printf(o,
                             "kvcast:request_success_total{model_name=\"%s\",finished_reason="
                             "\"%s\"} %llu\n",
                             mn, fin[i], (unsigned long long)m->success[i]);
    }
    rc |= srv_buf_printf(o,
                         "# HELP kvcast:prefill_mode_total Requests by the prefill mode used.\n"
                         "# TYPE kvcast:prefill_mode_total counter\n"
                         "kvcast:prefill_mode_total{model_name=\"%s\",mode=\"full\"} %llu\n"
                         "kvcast:prefill_mode_total{model_name=\"%s\",mode=\"predict\"} %llu\n",
                         mn, (unsigned long long)m->mode_full, mn,
                         (unsigned long long)m->mode_predict);
    rc |= srv_buf_printf(o,
                         "# HELP kvcast:http_error_responses_total Requests answered with an "
                         "error status.\n"
                         "# TYPE kvcast:http_error_responses_total counter\n"
                         "kvcast:http_error_responses_total{model_name=\"%s\"} %llu\n",
                         mn, (unsigned long long)m->http_errors);
    rc |= render_hist(o, "kvcast:time_to_first_token_seconds", "Time to first token in seconds.",
                      &m->ttft, mn);
    rc |= render_hist(o, "kvcast:inter_token_latency_seconds",
                      "Time between consecutive output tokens in seconds.", &m->itl, mn);
    rc |= render_hist(o, "kvcast:e2e_request_latency_seconds",
                      "End-to-end request latency in seconds.", &m->e2e, mn);
    rc |= render_hist(o, "kvcast:request_queue_time_seconds",
                      "Time requests spent waiting to be scheduled in seconds.", &m->queue, mn);
    return rc == KC_OK ? KC_OK : KC_ENOMEM;
}
