/*
 * metrics.c — Prometheus text rendering of the server's registry. See metrics.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "server/metrics.h"

#include "scheduler/policy.h"

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

void srv_metrics_init(struct srv_metrics *m, const char *model_name, bool prometheus_names) {
    memset(m, 0, sizeof(*m));
    snprintf(m->prefix, sizeof(m->prefix), "%s", prometheus_names ? "kvcast_" : "kvcast:");
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
    hist_init(&m->refine_latency, ttft_bounds, NB(ttft_bounds));
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

static int render_hist(struct srv_buf *o, const char *prefix, const char *base, const char *help,
                       const struct srv_hist *h, const char *model) {
    char name[96];
    snprintf(name, sizeof(name), "%s%s", prefix, base);
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

/* "# HELP" and "# TYPE" lines of one family named prefix + base. */
static int family(struct srv_buf *o, const char *prefix, const char *base, const char *type,
                  const char *help) {
    return srv_buf_printf(o, "# HELP %s%s %s\n# TYPE %s%s %s\n", prefix, base, help, prefix, base,
                          type);
}

/* Disaggregated serving (docs/disaggregated.md): UCX traffic, remote prefills, and a decode
 * host's view of each prefill peer. */
static int render_pd(struct srv_buf *o, const char *p, const char *mn, const struct srv_gauges *g) {
    const struct sch_stats *st = &g->sch;
    int rc = family(o, p, "pd_transfer_bytes_total", "counter",
                    "Bytes of prefill/decode frames (control and K/V) sent and received over UCX.");
    rc |=
        srv_buf_printf(o, "%spd_transfer_bytes_total{model_name=\"%s\",direction=\"sent\"} %llu\n",
                       p, mn, (unsigned long long)st->pd_bytes_sent);
    rc |= srv_buf_printf(
        o, "%spd_transfer_bytes_total{model_name=\"%s\",direction=\"received\"} %llu\n", p, mn,
        (unsigned long long)st->pd_bytes_received);
    rc |= family(o, p, "pd_transfer_seconds", "summary",
                 "Decode host: SUBMIT to the last K/V byte of each completed remote prefill.");
    rc |= srv_buf_printf(o, "%spd_transfer_seconds_sum{model_name=\"%s\"} %.6f\n", p, mn,
                         st->pd_transfer_seconds);
    rc |= srv_buf_printf(o, "%spd_transfer_seconds_count{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)st->pd_transfers);
    rc |= family(o, p, "pd_first_overhead_seconds", "summary",
                 "Decode host: SUBMIT sent to FIRST received, less the prefill host's own prefill "
                 "time (transport, its queue wait and wake-ups), per first token not retried.");
    rc |= srv_buf_printf(o, "%spd_first_overhead_seconds_sum{model_name=\"%s\"} %.6f\n", p, mn,
                         st->pd_first_overhead_seconds);
    rc |= srv_buf_printf(o, "%spd_first_overhead_seconds_count{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)st->pd_firsts);
    rc |= family(o, p, "pd_retries_total", "counter",
                 "Decode host: remote prefills retried on another prefill host.");
    rc |= srv_buf_printf(o, "%spd_retries_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)st->pd_retries);
    rc |= family(o, p, "pd_failures_total", "counter",
                 "Decode host: remote prefills that failed (503 or an error event).");
    rc |= srv_buf_printf(o, "%spd_failures_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)st->pd_failures);
    rc |= family(o, p, "pd_remote_in_flight", "gauge",
                 "Remote prefills in flight (decode host: sent; prefill host: being served).");
    rc |=
        srv_buf_printf(o, "%spd_remote_in_flight{model_name=\"%s\"} %d\n", p, mn, st->pd_in_flight);
    if (g->n_peers > 0) {
        rc |=
            family(o, p, "pd_peer_up", "gauge", "Decode host: prefill peer connected (1) or not.");
        for (int i = 0; i < g->n_peers; i++) {
            rc |= srv_buf_printf(o, "%spd_peer_up{model_name=\"%s\",peer=\"%s\"} %d\n", p, mn,
                                 g->peers[i].addr, g->peers[i].up ? 1 : 0);
        }
        rc |= family(
            o, p, "pd_peer_errors_total", "counter",
            "Decode host: connection failures, ERROR replies and timeouts per prefill peer.");
        for (int i = 0; i < g->n_peers; i++) {
            rc |= srv_buf_printf(o, "%spd_peer_errors_total{model_name=\"%s\",peer=\"%s\"} %llu\n",
                                 p, mn, g->peers[i].addr, (unsigned long long)g->peers[i].errors);
        }
        rc |= family(o, p, "pd_peer_queued", "gauge",
                     "Decode host: a prefill peer's queue length from its last load report.");
        for (int i = 0; i < g->n_peers; i++) {
            rc |= srv_buf_printf(o, "%spd_peer_queued{model_name=\"%s\",peer=\"%s\"} %d\n", p, mn,
                                 g->peers[i].addr, g->peers[i].queued);
        }
    }
    return rc;
}

int srv_metrics_render(const struct srv_metrics *m, const struct srv_gauges *g, struct srv_buf *o) {
    const char *mn = m->model_name;
    const char *p = m->prefix;
    int rc = KC_OK;
    rc |= family(o, p, "num_requests_running", "gauge", "Requests prefilling or decoding.");
    rc |= srv_buf_printf(o, "%snum_requests_running{model_name=\"%s\"} %d\n", p, mn, g->running);
    rc |= family(o, p, "num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
    rc |= srv_buf_printf(o, "%snum_requests_waiting{model_name=\"%s\"} %d\n", p, mn, g->waiting);
    rc |= family(o, p, "kv_cache_usage_perc", "gauge", "KV cache usage (1 means 100%).");
    rc |= srv_buf_printf(o, "%skv_cache_usage_perc{model_name=\"%s\",pool=\"base\"} %.6g\n", p, mn,
                         g->kv_base);
    if (g->has_aux) {
        rc |= srv_buf_printf(o, "%skv_cache_usage_perc{model_name=\"%s\",pool=\"aux\"} %.6g\n", p,
                             mn, g->kv_aux);
    }
    rc |= family(o, p, "kv_cache_cached_blocks", "gauge",
                 "Idle KV blocks the prefix cache keeps (evictable; counted as free in "
                 "kv_cache_usage_perc).");
    rc |= srv_buf_printf(o, "%skv_cache_cached_blocks{model_name=\"%s\",pool=\"base\"} %d\n", p, mn,
                         g->sch.base_blocks_cached);
    if (g->has_aux) {
        rc |= srv_buf_printf(o, "%skv_cache_cached_blocks{model_name=\"%s\",pool=\"aux\"} %d\n", p,
                             mn, g->sch.aux_blocks_cached);
    }
    rc |= family(o, p, "kv_refine_jobs", "gauge",
                 "Refinement jobs (exact base prefill of predict-mode requests) by state.");
    rc |= srv_buf_printf(o, "%skv_refine_jobs{model_name=\"%s\",state=\"queued\"} %d\n", p, mn,
                         g->sch.refine_queued);
    rc |= srv_buf_printf(o, "%skv_refine_jobs{model_name=\"%s\",state=\"running\"} %d\n", p, mn,
                         g->sch.refine_running);
    /* vLLM's prefix-cache counters, in prompt tokens: hits / queries is the hit rate. The aux
     * pool's only with an aux model, like its usage gauge. */
    static const char *const pools[2] = {"base", "aux"};
    rc |= family(o, p, "prefix_cache_queries_total", "counter",
                 "Prompt tokens looked up in the prefix cache.");
    for (int i = 0; i < 1 + (g->has_aux != 0); i++) {
        rc |=
            srv_buf_printf(o, "%sprefix_cache_queries_total{model_name=\"%s\",pool=\"%s\"} %llu\n",
                           p, mn, pools[i], (unsigned long long)g->sch.prefix_queries[i]);
    }
    rc |= family(o, p, "prefix_cache_hits_total", "counter",
                 "Prompt tokens found in the prefix cache.");
    for (int i = 0; i < 1 + (g->has_aux != 0); i++) {
        rc |= srv_buf_printf(o, "%sprefix_cache_hits_total{model_name=\"%s\",pool=\"%s\"} %llu\n",
                             p, mn, pools[i], (unsigned long long)g->sch.prefix_hits[i]);
    }
    rc |= family(o, p, "prompt_tokens_total", "counter", "Prefill tokens processed.");
    rc |= srv_buf_printf(o, "%sprompt_tokens_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)m->prompt_tokens);
    rc |= family(o, p, "generation_tokens_total", "counter", "Generated tokens.");
    rc |= srv_buf_printf(o, "%sgeneration_tokens_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)m->generation_tokens);
    rc |= family(o, p, "request_success_total", "counter", "Finished requests.");
    for (int f = SCH_FINISH_STOP; f < SCH_FINISH_COUNT; f++) {
        rc |= srv_buf_printf(o,
                             "%srequest_success_total{model_name=\"%s\",finished_reason=\"%s\"} "
                             "%llu\n",
                             p, mn, sch_finish_name((enum sch_finish)f),
                             (unsigned long long)m->success[f]);
    }
    rc |= family(o, p, "prefill_mode_total", "counter", "Requests by the prefill mode used.");
    static const enum sch_prefill_mode used[] = {SCH_MODE_FULL, SCH_MODE_PREDICT}; /* never AUTO */
    for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
        rc |= srv_buf_printf(o, "%sprefill_mode_total{model_name=\"%s\",mode=\"%s\"} %llu\n", p, mn,
                             sch_mode_name(used[i]), (unsigned long long)m->prefill_mode[used[i]]);
    }
    /* Auto mode's decisions: only the (mode, reason) pairs the policy can produce. */
    static const struct {
        int predict;
        enum sch_policy_reason why;
    } decisions[] = {
        {0, SCH_WHY_FITS_SLO},     {0, SCH_WHY_SLO},   {0, SCH_WHY_NO_SLO},
        {0, SCH_WHY_NO_PREDICTOR}, {1, SCH_WHY_QUEUE}, {1, SCH_WHY_SLO},
        {1, SCH_WHY_LONG_PROMPT},
    };
    rc |= family(o, p, "auto_decisions_total", "counter",
                 "Prefill modes chosen for prefill_mode auto, by mode and reason.");
    for (size_t i = 0; i < sizeof(decisions) / sizeof(decisions[0]); i++) {
        rc |= srv_buf_printf(
            o, "%sauto_decisions_total{model_name=\"%s\",mode=\"%s\",reason=\"%s\"} %llu\n", p, mn,
            decisions[i].predict ? "predict" : "full", sch_policy_reason_name(decisions[i].why),
            (unsigned long long)g->sch.auto_decisions[decisions[i].predict][decisions[i].why]);
    }
    rc |= family(
        o, p, "requests_shed_total", "counter",
        "Auto requests answered 503 at once because no prefill mode could meet the TTFT target "
        "behind the queued work (--shed-hopeless).");
    rc |= srv_buf_printf(o, "%srequests_shed_total{model_name=\"%s\",reason=\"hopeless\"} %llu\n",
                         p, mn, (unsigned long long)g->sch.shed);
    rc |= family(o, p, "http_error_responses_total", "counter",
                 "Requests answered with an error status.");
    rc |= srv_buf_printf(o, "%shttp_error_responses_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)m->http_errors);
    static const char *const why[SRV_CLOSE_COUNT] = {"header_timeout", "body_timeout", "evicted",
                                                     "per_ip_limit", "capacity"};
    rc |= family(o, p, "http_connections", "gauge",
                 "Open HTTP connections, waiting (idle or sending a request) or dispatched.");
    rc |= srv_buf_printf(o, "%shttp_connections{model_name=\"%s\",state=\"waiting\"} %d\n", p, mn,
                         g->conns_waiting);
    rc |= srv_buf_printf(o, "%shttp_connections{model_name=\"%s\",state=\"dispatched\"} %d\n", p,
                         mn, g->conns_dispatched);
    rc |= family(o, p, "http_connections_closed_total", "counter",
                 "Connections closed or refused (503) by the slow-client and capacity defences.");
    for (int i = 0; i < SRV_CLOSE_COUNT; i++) {
        rc |= srv_buf_printf(
            o, "%shttp_connections_closed_total{model_name=\"%s\",reason=\"%s\"} %llu\n", p, mn,
            why[i], (unsigned long long)m->conn_closed[i]);
    }
    rc |= family(o, p, "request_unknown_fields_total", "counter",
                 "Unknown request fields ignored (--strict-fields refuses them instead).");
    rc |= srv_buf_printf(o, "%srequest_unknown_fields_total{model_name=\"%s\"} %llu\n", p, mn,
                         (unsigned long long)m->request_unknown_fields);
    rc |= family(o, p, "kv_refine_total", "counter",
                 "Predict-mode refinements (exact base KV swapped in) by how they ended.");
    for (int r = SCH_REFINE_SWAPPED; r < SCH_REFINE_RESULT_COUNT; r++) {
        rc |= srv_buf_printf(o, "%skv_refine_total{model_name=\"%s\",result=\"%s\"} %llu\n", p, mn,
                             sch_refine_result_name((enum sch_refine_result)r),
                             (unsigned long long)m->refine[r]);
    }
    if (g->pd_role != SCH_ROLE_ALL) {
        rc |= render_pd(o, p, mn, g);
    }
    rc |= render_hist(o, p, "kv_refine_seconds",
                      "First token to the exact KV swapped in, of refined requests, in seconds.",
                      &m->refine_latency, mn);
    rc |= render_hist(o, p, "time_to_first_token_seconds", "Time to first token in seconds.",
                      &m->ttft, mn);
    rc |= render_hist(o, p, "inter_token_latency_seconds",
                      "Time between consecutive output tokens in seconds.", &m->itl, mn);
    rc |= render_hist(o, p, "e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                      &m->e2e, mn);
    rc |= render_hist(o, p, "request_queue_time_seconds",
                      "Time requests spent waiting to be scheduled in seconds.", &m->queue, mn);
    return rc == KC_OK ? KC_OK : KC_ENOMEM;
}
