/*
 * metrics.h — the Prometheus registry behind GET /metrics (text exposition format 0.0.4),
 * with vLLM's metric names under a `kvcast:` prefix so vLLM dashboards work unchanged:
 *   histograms kvcast:time_to_first_token_seconds, kvcast:inter_token_latency_seconds,
 *              kvcast:e2e_request_latency_seconds, kvcast:request_queue_time_seconds
 *   counters   kvcast:prompt_tokens_total, kvcast:generation_tokens_total,
 *              kvcast:request_success_total{finished_reason}, kvcast:prefill_mode_total{mode},
 *              kvcast:request_unknown_fields_total,
 *              kvcast:prefix_cache_queries_total{pool}, kvcast:prefix_cache_hits_total{pool}
 *              (vLLM's prefix-cache counters, in prompt tokens; pool="base"|"aux")
 *   gauges     kvcast:num_requests_running, kvcast:num_requests_waiting,
 *              kvcast:kv_cache_usage_perc{pool="base"|"aux"} (a fraction in [0, 1], as vLLM's)
 *   kvcast-only: kvcast:auto_decisions_total{mode,reason} (counter: auto-mode prefill-mode
 *              decisions, reasons as in scheduler/policy.h),
 *              kvcast:requests_shed_total{reason="hopeless"} (counter: auto requests answered
 *              503 because no prefill mode could meet --ttft-slo-ms; --shed-hopeless),
 *              kvcast:http_connections{state="waiting"|"dispatched"} (gauge),
 *              kvcast:http_connections_closed_total{reason} (counter; slow-client defence:
 *              header_timeout, body_timeout, evicted, per_ip_limit, capacity),
 *              kvcast:kv_refine_total{result="swapped"|"skipped"|"cancelled"|"failed"}
 *              (counter: how predict-mode refinements ended), kvcast:kv_refine_seconds
 *              (histogram: first token -> exact KV swapped in), kvcast:kv_cache_cached_blocks
 *              {pool} (gauge: idle blocks the prefix cache keeps, evictable),
 *              kvcast:kv_refine_jobs{state="queued"|"running"} (gauge)
 *
 * Naming: vLLM writes `vllm:name`; promtool's linter rejects every ':' in an exported name (colons
 * are reserved for recording rules). The registry therefore renders one of two spellings of the
 * same names, chosen at start-up (--metric-names): `kvcast:` (default, what DESIGN.md and vLLM
 * dashboards expect) or `kvcast_` (Prometheus conventions, lint-clean; the deploy/ manifests).
 *
 * Thread rules: updated and rendered only on the loop thread, so it has no locks. Gauges are
 * sampled from the scheduler at scrape time and passed in.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "scheduler/scheduler.h"
#include "server/util.h"

#define SRV_HIST_MAX_BUCKETS 24

struct srv_hist {
    const double *bounds; /* upper bounds, ascending; +Inf implied */
    int n_bounds;
    uint64_t counts[SRV_HIST_MAX_BUCKETS + 1]; /* non-cumulative; last is +Inf */
    double sum;
    uint64_t count;
};

/* Why the server closed (or refused with 503) a connection that had no request running. */
enum srv_conn_close_reason {
    SRV_CLOSE_HEADER_TIMEOUT = 0, /* no whole request head within --header-timeout-s */
    SRV_CLOSE_BODY_TIMEOUT,       /* body not complete within --body-timeout-s */
    SRV_CLOSE_EVICTED,            /* oldest waiting connection closed to make room */
    SRV_CLOSE_PER_IP,             /* 503: over --max-connections-per-ip */
    SRV_CLOSE_CAPACITY,           /* 503: every connection busy with a running request */
    SRV_CLOSE_COUNT
};

struct srv_metrics {
    char model_name[128];
    char prefix[8]; /* "kvcast:" or "kvcast_" */
    struct srv_hist ttft;
    struct srv_hist itl;
    struct srv_hist e2e;
    struct srv_hist queue;
    uint64_t prompt_tokens;
    uint64_t generation_tokens;
    uint64_t success[SCH_FINISH_COUNT];          /* by enum sch_finish; [SCH_FINISH_NONE] unused */
    uint64_t prefill_mode[SCH_MODE_PREDICT + 1]; /* by enum sch_prefill_mode; [AUTO] unused */
    uint64_t http_errors;                        /* requests answered with a 4xx/5xx status */
    uint64_t conn_closed[SRV_CLOSE_COUNT];
    /* unknown /v1/completions fields ignored */
    uint64_t request_unknown_fields;
    /* refinement outcomes of predict-mode requests, by enum sch_refine_result ([NONE] unused),
     * counted from terminal events; and first token -> swap of the swapped ones */
    uint64_t refine[SCH_REFINE_RESULT_COUNT];
    struct srv_hist refine_latency;
};

struct srv_gauges {
    int running;
    int waiting;
    double kv_base; /* fraction of base KV blocks in use */
    double kv_aux;
    int has_aux;
    int conns_waiting;    /* open connections without a running request (idle, head, body) */
    int conns_dispatched; /* open connections whose request runs */
    /* The scheduler's own counters and gauges, rendered as they are (one source: the
     * scheduler counts, /metrics shows): auto-mode decisions by mode and reason, auto requests
     * shed at submit, the prefix cache's queries/hits and cached blocks per pool, and the
     * refinement jobs queued and running. */
    struct sch_stats sch;
    /* Disaggregated serving (0: role all, nothing rendered): the role, and a decode host's
     * prefill peers. */
    int pd_role;
    struct sch_pd_peer_info peers[16];
    int n_peers;
};

/* Zeroes the registry and sets vLLM's bucket bounds; model_name labels every series.
 * prometheus_names selects the `kvcast_` spelling instead of `kvcast:`. */
void srv_metrics_init(struct srv_metrics *m, const char *model_name, bool prometheus_names);

/* Adds one observation (seconds). Negative or NaN values count as 0. */
void srv_hist_observe(struct srv_hist *h, double v);

/* Renders the whole exposition into out. KC_ENOMEM on allocation failure. */
int srv_metrics_render(const struct srv_metrics *m, const struct srv_gauges *g,
                       struct srv_buf *out);

#endif /* SRV_METRICS_H */
