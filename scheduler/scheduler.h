/*
 * scheduler.h — the prefill/decode split kvcast is named for: admission control, prefill
 * workers (auxiliary model + KV predictor, or a full base prefill), a hand-off queue that
 * moves block tables (never KV bytes) to decode workers, and continuous batching.
 *
 * Place in the data flow: server -> scheduler -> engine. The server submits requests and
 * cancels them; the scheduler reports everything that happens to a request through ONE
 * event callback, which the server wires to uv_async_send. Workers never touch sockets.
 *
 * Threads: sch_create starts the worker threads; every sch_* function may be called from
 * any thread (the server calls them from its loop thread). The event callback runs on
 * worker threads and must not block: copy the event and return.
 *
 * Request state machine (drawn in scheduler/request.h, one owner per state):
 *   QUEUED -> PREFILLING -> HANDED_OFF -> DECODING -> FINISHED | CANCELLED | FAILED
 * Every request produces exactly one terminal event (SCH_EV_DONE or SCH_EV_ERROR), after
 * which its id is dead and the user data pointer is never used again.
 */
#ifndef SCH_SCHEDULER_H
#define SCH_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/io/dtype.h"
#include "engine/sampler.h"

struct eng_model;
struct eng_kvp; /* engine/kvp.h: a KV predictor */

/* Most alternatives reported per position (vLLM caps logprobs at 20 too). */
#define SCH_MAX_LOGPROBS ENG_MAX_LOGPROBS

enum sch_prefill_mode {
    SCH_MODE_AUTO = 0, /* predict only when full would miss the TTFT target (or long prompt) */
    SCH_MODE_FULL,     /* base model prefill over the whole prompt */
    SCH_MODE_PREDICT,  /* auxiliary prefill + KV predictor + one base step */
};
const char *sch_mode_name(enum sch_prefill_mode m);
/* Parses "auto" | "full" | "predict". */
int sch_mode_parse(const char *s, enum sch_prefill_mode *out);

/* Where this process stands in disaggregated serving (issue 20, docs/disaggregated.md). */
enum sch_role {
    SCH_ROLE_ALL = 0, /* prefill and decode in this process (the default) */
    SCH_ROLE_PREFILL, /* prefill workers serve remote decode hosts over UCX (pd_port) */
    SCH_ROLE_DECODE,  /* no prefill workers: prompts go to prefill_peers, K/V comes back */
};
/* "all" | "prefill" | "decode". */
int sch_role_parse(const char *s, enum sch_role *out);
const char *sch_role_name(enum sch_role r);

/*
 * Threads. With prefill_threads == decode_threads == 0 (the default) and no pinning, teams are
 * elastic: every worker's contexts are sized for all sch_cpu_count() cores and each GEMM runs
 * on the team the scheduler currently gives its worker: every core to a prefill while nothing
 * decodes and to decode while nothing prefills; when both are busy, both keep every core (the
 * kernel time-slices them) until a decode step misses tpot_slo_ms, then decode gets the
 * fewest cores that meet it and the prefills share the rest (sch_team_split in
 * scheduler/teams.c). Explicit thread counts (either one) or pinning fix the
 * teams (a count left 0 then means OpenMP's default, all cores, unless pinned).
 */
struct sch_config {
    int prefill_threads;     /* OpenMP threads of each prefill worker; 0: elastic */
    int decode_threads;      /* OpenMP threads of the decode worker; 0: elastic */
    bool pin_cpus;           /* pin prefill to cores [0, p), decode to [p, p + d): fixed
                              * teams; a count left 0 takes its share of the cores (decode
                              * half, the prefill workers the rest) */
    double tpot_slo_ms;      /* elastic teams: decode step time to protect while a prefill
                              * runs (0: none, both sides keep every core) */
    size_t base_kv_bytes;    /* memory budget of the base model's KV pool */
    size_t aux_kv_bytes;     /* memory budget of the auxiliary model's pool (predict prefills'
                              * transient sequences, then the aux prefix cache); at least one
                              * max_context prompt per prefill worker; 0: that, and at least as
                              * many positions as the base pool */
    int block_size;          /* tokens per KV block */
    enum eng_dtype kv_dtype; /* element type of the base and aux KV pools: ENG_DTYPE_F32 (the
                              * default, zero) or ENG_DTYPE_BF16 (half the bytes per block, so
                              * twice the blocks for the same budget) */
    int max_queue;           /* waiting requests beyond which submit says KC_EBUSY */
    int max_running;         /* sequences decoding at once */
    int prefill_chunk;       /* rows per prefill forward step (chunked prefill) */
    int max_context;         /* prompt + max_tokens limit (<= the model's positions; 0:
                              * the model's positions) */
    double ttft_slo_ms;      /* auto mode: target TTFT */
    int predict_min_prompt;  /* auto mode: prompts at least this long always predict */
    int prefill_workers;     /* prefill worker threads (default 1), each prefill_threads wide
                              * (elastic: they share the prefill cores) */
    bool shed_hopeless;      /* auto mode: submit refuses (KC_EBUSY) a request that no prefill
                              * mode can bring inside ttft_slo_ms behind the work queued ahead
                              * (scheduler/policy.h); default true */
    bool prefix_caching;     /* reuse exact KV blocks across requests by content (base and aux
                              * pools, vLLM's automatic prefix caching); default true */
    bool refine;             /* the default of sch_request_params.refine: a predict-mode
                              * sequence gets its exact base KV computed in the background and
                              * swapped in; default true */
    int debug_step_delay_ms; /* testing only: every worker sleeps this long after each decode
                              * step and prefill chunk, so that tests can disconnect
                              * mid-stream or drain with requests running (0: off) */
    /* Disaggregated serving (docs/disaggregated.md). A prefill host ships each remote
     * request's first token and prompt K/V to its decode host and frees its blocks; a decode
     * host admits requests into its own pool, has them prefilled by a peer and decodes. */
    enum sch_role role;
    const char *pd_host;       /* prefill: UCX listen address (NULL or "": every address) */
    int pd_port;               /* prefill: UCX listen port (0: any) */
    const char *prefill_peers; /* decode: "host:port,..." (names re-resolved, pd_resolve_ms) */
    int pd_max_inflight;       /* decode: remote prefills in flight per prefill host (0: 4) */
    int pd_timeout_ms;         /* decode: a remote prefill silent this long fails (0: 30000) */
    int pd_resolve_ms;         /* decode: prefill_peers re-resolved this often (0: 5000) */
};
/* Bound of prefill_workers. */
#define SCH_MAX_PREFILL_WORKERS 64
/* Defaults: elastic teams over every usable core, one prefill worker. */
struct sch_config sch_default_config(void);

/* Cores this process may run on: the affinity mask's count (a container's cpuset), else the
 * online count; >= 1. */
int sch_cpu_count(void);

/* One logit_bias entry: bias is added to token id's logit before every sampling step. */
struct sch_logit_bias {
    int32_t id;
    float bias;
};

/* Whether a predict-mode request's predicted KV is replaced by exact KV in the background
 * (refinement). DEFAULT: sch_config.refine. */
enum sch_refine { SCH_REFINE_DEFAULT = 0, SCH_REFINE_ON, SCH_REFINE_OFF };

/* How a request's refinement ended (one per request, reported in its terminal event). */
enum sch_refine_result {
    SCH_REFINE_NONE = 0,  /* not asked for, or the request was not prefilled in predict mode */
    SCH_REFINE_SWAPPED,   /* the exact KV was swapped in (refined_at_token says when) */
    SCH_REFINE_SKIPPED,   /* never finished: the request ended first (load kept the prefill
                           * workers busy, or it was short) */
    SCH_REFINE_CANCELLED, /* the request was cancelled while its refinement ran */
    SCH_REFINE_FAILED,    /* the refinement's forward failed (the request went on predicted) */
};
#define SCH_REFINE_RESULT_COUNT (SCH_REFINE_FAILED + 1)
/* "none", "swapped", "skipped", "cancelled", "failed". */
const char *sch_refine_result_name(enum sch_refine_result r);

#define SCH_MAX_STOP_TOKEN_IDS 64
#define SCH_MAX_LOGIT_BIAS 1024

struct sch_request_params {
    const int32_t *prompt; /* copied at submit */
    int n_prompt;          /* >= 1 */
    int max_tokens;        /* >= 1; 0 (prefill only, no token) only with prompt_logprobs */
    struct eng_sampler_params sampling;
    bool ignore_eos;
    int n_logprobs; /* 0..SCH_MAX_LOGPROBS alternatives reported per token; -1 none */
    enum sch_prefill_mode mode;
    /* Also report every prompt token's logprob (SCH_EV_PROMPT_TOKEN, with max(n_logprobs, 0)
     * alternatives): the base model's logits at every prompt position, so the request is
     * prefilled in full mode whatever `mode` says. echo + logprobs, lm-eval loglikelihood. */
    bool prompt_logprobs;
    /* vLLM extras (all optional; arrays are copied at submit). */
    const int32_t *stop_token_ids; /* sampling one of these finishes with STOP */
    int n_stop_token_ids;          /* 0..SCH_MAX_STOP_TOKEN_IDS */
    int min_tokens; /* EOS (unless ignore_eos) and stop_token_ids cannot be sampled as the
                     * first min_tokens tokens; 0..max_tokens */
    const struct sch_logit_bias *logit_bias; /* bias in [-100, 100] per token id */
    int n_logit_bias;                        /* 0..SCH_MAX_LOGIT_BIAS */
    enum sch_refine refine;                  /* predict mode: refine in the background */
};

enum sch_event_type {
    SCH_EV_TOKEN = 0,    /* one generated token */
    SCH_EV_DONE,         /* terminal: finished normally or cancelled */
    SCH_EV_ERROR,        /* terminal: failed (also: the model produced NaN/Inf logits) */
    SCH_EV_PROMPT_TOKEN, /* prompt_logprobs: prompt token `position`, positions 0..n_prompt-1
                          * in order, all before the first SCH_EV_TOKEN; position 0 has no
                          * logprob (has_logprob false, n_top 0) */
};

enum sch_finish { SCH_FINISH_NONE = 0, SCH_FINISH_STOP, SCH_FINISH_LENGTH, SCH_FINISH_ABORT };
#define SCH_FINISH_COUNT (SCH_FINISH_ABORT + 1)
/* The OpenAI finish_reason of f: "stop", "length" or "abort"; NULL for SCH_FINISH_NONE. */
const char *sch_finish_name(enum sch_finish f);

/*
 * Timings of one request, all measured by the scheduler from sch_submit (so server-side work
 * before it, like tokenization, is not included). When at least one token was generated
 * (tested over HTTP in every prefill mode, tests/integration/test_server_request_http.py):
 *   ttft_ms = queue_ms + prefill_ms          (same clock readings; equal up to rounding)
 *   aux_ms + predict_ms + base_first_step_ms <= prefill_ms   (aux/predict are 0 in full mode)
 *   ttft_ms + decode_ms = submit -> last token
 * prefill_ms runs from admission to the first token's event, so it includes sampling the
 * first token. With no token generated (cancelled in the queue or during prefill) ttft_ms,
 * prefill_ms and decode_ms are 0 and only queue_ms may be set.
 */
struct sch_timings {
    double queue_ms;            /* submit -> prefill start */
    double prefill_ms;          /* prefill start -> first token emitted */
    double aux_ms;              /* predict mode: auxiliary forward */
    double predict_ms;          /* predict mode: predictor GEMMs + cache writes */
    double base_first_step_ms;  /* the base step that yields the first token */
    double ttft_ms;             /* submit -> first token */
    double decode_ms;           /* first token -> last token */
    enum sch_prefill_mode mode; /* the mode actually used (never AUTO) */
    int prefill_threads;        /* the widest OpenMP team its prefill ran on */
    /* Prefix cache: prompt tokens whose prefill the cache saved, in the mode used (full: base
     * KV reused; predict: aux KV reused, the aux forward skipped over them) — OpenAI's
     * usage.prompt_tokens_details.cached_tokens. base_cached_tokens: prompt tokens whose
     * exact base KV was reused (predict mode predicts only the positions after them). */
    int cached_tokens;
    int base_cached_tokens;
    /* Refinement (predict mode): the outcome; refined_at_token, the generated tokens emitted
     * before the exact KV was swapped in (-1 unless SWAPPED); refine_ms, first token -> swap. */
    enum sch_refine_result refine_result;
    int refined_at_token;
    double refine_ms;
};

struct sch_event {
    enum sch_event_type type;
    uint64_t id;
    void *user; /* the pointer given at submit */
    /* SCH_EV_TOKEN and SCH_EV_PROMPT_TOKEN: logprobs of the raw distribution (before
     * penalties and temperature), the top n_top best first */
    int32_t token;
    int position;     /* SCH_EV_PROMPT_TOKEN: index in the prompt */
    bool has_logprob; /* false only for prompt position 0 */
    float logprob;
    int n_top;
    int32_t top_ids[SCH_MAX_LOGPROBS];
    float top_logprobs[SCH_MAX_LOGPROBS];
    /* SCH_EV_DONE / SCH_EV_ERROR */
    enum sch_finish finish;
    int n_prompt;
    int n_generated;
    struct sch_timings timings;
    int error; /* KC_E* for SCH_EV_ERROR */
    char message[256];
};

/* Called on worker threads; must copy what it needs and return quickly. */
typedef void (*sch_event_cb)(void *ud, const struct sch_event *ev);

struct sch;

/*
 * Starts the scheduler over a base model and, optionally, an auxiliary model + predictor
 * (both NULL: only full prefill is possible and predict requests fall back to full with
 * the mode reported). Models must outlive the scheduler. Sizes KV pools from the budgets.
 */
int sch_create(const struct sch_config *cfg, const struct eng_model *base,
               const struct eng_model *aux, const struct eng_kvp *predictor, sch_event_cb cb,
               void *cb_ud, struct sch **out, struct kc_error *err);

/*
 * Admits a request or refuses it at once: KC_ECONTEXT (with a message giving the numbers)
 * if prompt + max_tokens can never fit, KC_ERANGE for a token id outside the vocabulary,
 * KC_EINVAL for bad parameters, KC_EBUSY when the wait queue is full or (shed_hopeless, auto
 * mode) when no prefill mode can meet the TTFT target behind the queued work (the server
 * answers 503 + Retry-After), KC_EINVAL on a prefill host (role PREFILL runs no decode
 * worker; it serves decode hosts only). On success *id identifies the request in events.
 * On a decode host the calling thread may send the request's SUBMIT to a prefill host itself
 * (one thread wake-up less on the way to the first token).
 */
int sch_submit(struct sch *s, const struct sch_request_params *p, void *user, uint64_t *id,
               struct kc_error *err);

/* Asks for a request to stop (client gone, stop string seen, shutdown). Idempotent; an
 * unknown or finished id is ignored. The request ends with SCH_EV_DONE, finish ABORT
 * (or the finish given, e.g. STOP for a stop string seen by the server). */
void sch_cancel(struct sch *s, uint64_t id, enum sch_finish finish);

/* Reasons counted in sch_stats.auto_decisions: >= SCH_WHY_COUNT (policy.h; checked at compile
 * time). */
#define SCH_STATS_REASONS 8
struct sch_stats {
    int queued;
    int prefilling;
    int running;
    int base_blocks_free;
    int base_blocks_total;
    int aux_blocks_free;
    int aux_blocks_total;
    double prefill_ms_per_token_full; /* running estimates used by auto mode */
    double prefill_ms_per_token_predict;

    /* Request and token counters live in the server (server/metrics.h), which counts what
     * clients saw; the scheduler keeps only what it alone knows. Auto-mode decisions by
     * [mode == predict][reason] (enum sch_policy_reason in scheduler/policy.h, named by
     * sch_policy_reason_name), and the auto requests refused at submit because no mode could
     * meet the TTFT target (shed_hopeless). */
    uint64_t auto_decisions[2][SCH_STATS_REASONS];
    uint64_t shed;
    /* Prefix cache, vLLM's counters: prompt tokens looked up and found, per pool ([0] base,
     * [1] aux), counted once per prefill; and the cached blocks no sequence uses (evictable,
     * counted in *_blocks_free). */
    uint64_t prefix_queries[2];
    uint64_t prefix_hits[2];
    int base_blocks_cached;
    int aux_blocks_cached;
    /* Refinement jobs waiting for an idle prefill worker, and running. */
    int refine_queued;
    int refine_running;
    /* Prefill cost models of auto mode: ms = a + b*n + c*n^2 for n prompt tokens. */
    double cost_full_abc[3];
    double cost_predict_abc[3];
    /* Disaggregated serving: frame bytes sent and received over UCX; decode hosts: remote
     * prefills completed (K/V all in), their SUBMIT -> last K/V byte seconds, retries on another
     * prefill host, and remote prefills that failed; prefill hosts: remote requests in flight. */
    uint64_t pd_bytes_sent, pd_bytes_received;
    uint64_t pd_transfers;
    double pd_transfer_seconds;
    uint64_t pd_retries, pd_failures;
    int pd_in_flight;
    /* Decode hosts: what the remote path adds to TTFT, per FIRST received (not retried):
     * SUBMIT sent -> FIRST received, less the prefill time the prefill host reports in it
     * (so: transport both ways, the prefill host's receive, queue wait and wake-ups). */
    uint64_t pd_firsts;
    double pd_first_overhead_seconds;
};
void sch_stats_get(struct sch *s, struct sch_stats *out);

/* A decode host's view of one prefill host (one resolved address of --prefill-peers). */
struct sch_pd_peer_info {
    char addr[80]; /* "host:port" as resolved */
    bool up;       /* connected, HELLO accepted */
    int queued;    /* its last load report */
    int free_blocks;
    int in_flight;   /* our requests on it */
    uint64_t errors; /* connection failures, ERROR replies and timeouts */
};
/* Up to max peers into out; returns how many there are (0 unless role decode). */
int sch_pd_peers(struct sch *s, struct sch_pd_peer_info *out, int max);
/* A prefill host's UCX port (the bound one when pd_port was 0); 0 unless role prefill. */
int sch_pd_port(struct sch *s);

/* Cancels everything, joins the workers, frees the pools. Every request still alive gets
 * its terminal event before this returns (requests the workers did not reach get it on the
 * calling thread, after the workers are joined). */
void sch_free(struct sch *s);

#endif /* SCH_SCHEDULER_H */
