/*
 * config.h — every setting of `kvcast serve` in one struct, and the one way to fill it:
 *   built-in defaults < JSON config file (--config FILE or KVCAST_CONFIG)
 *                     < environment (KVCAST_<NAME>) < command-line flags (--<name>).
 *
 * Place in the data flow: a leaf module. tools/cli and server/ read a cfg_settings; nothing
 * here knows about sockets, models or the scheduler. One table (config.c) describes every
 * setting once: its kebab-case flag name, the JSON key (the same name with '_' for '-'), the
 * env name (KVCAST_ + upper-case with '_'), its type, range, default and help line. The help
 * text, the defaults, the file loader, the env reader and the flag parser are all driven by
 * that table. So a new setting is one row and one struct field. (The scheduler's sch_config is
 * built from these settings in one place, srv_sch_config in server/settings.c.)
 *
 * Ownership: cfg_settings is a plain value (fixed-size strings, no heap), copyable.
 * Thread rules: none; fill it on the main thread before anything starts.
 */
#ifndef CFG_CONFIG_H
#define CFG_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

#include "common/kc.h"

#define CFG_PATH_MAX 1024
#define CFG_STR_MAX 256
#define CFG_KEY_MAX 512 /* longest accepted API key, bytes */

struct cfg_settings {
    /* network and security */
    char host[CFG_STR_MAX];                /* listen address; 127.0.0.1 unless told otherwise */
    int port;                              /* 0 picks a free port (printed at start) */
    char api_key[CFG_KEY_MAX];             /* secret: never logged, never printed */
    char api_key_file[CFG_PATH_MAX];       /* file holding the key (first line) */
    bool insecure_public;                  /* allow a non-loopback host without an API key */
    char cors_allow_origins[CFG_PATH_MAX]; /* comma-separated exact origins; empty: no CORS */
    char cors_allow_headers[CFG_PATH_MAX]; /* preflight allow-list; empty: reflect the request's */
    char allowed_hosts[CFG_PATH_MAX];      /* Host names answered; empty: loopback names on a
                                              loopback bind, anything otherwise; "*": anything */
    bool metrics_public;                   /* /metrics without the API key */
    bool api_key_on_cmdline;               /* not a setting: --api-key was a flag (visible in ps) */
    int max_connections;
    int max_connections_per_ip;
    int connection_memory_kib; /* libmicrohttpd per-connection pool (headers, buffers) */
    int connection_timeout_s;  /* inactivity timeout of idle/slow connections */
    int header_timeout_s;      /* whole request head (and keep-alive idle) deadline */
    int body_timeout_s;        /* whole request body deadline, from the end of the head */
    long max_body_bytes;       /* request body cap, checked before the body is read */
    int request_timeout_s;     /* total deadline of one completion (0: none) */
    int heartbeat_ms;          /* SSE comment on idle streams (detects gone clients) */
    int disconnect_check_ms;   /* peek at suspended connections' sockets this often */
    int shutdown_timeout_s;    /* SIGTERM: drain running requests this long */
    int retry_after_s;         /* Retry-After on 503 when the queue is full */
    /* models */
    char bundle[CFG_PATH_MAX];    /* KV Prediction bundle JSON (base + aux + predictor) */
    char model[CFG_PATH_MAX];     /* base model dir; overrides the bundle's base */
    char aux[CFG_PATH_MAX];       /* auxiliary model dir */
    char predictor[CFG_PATH_MAX]; /* predictor.safetensors */
    char tokenizer[CFG_PATH_MAX]; /* tokenizer.json or dir; default: the base model dir */
    /* Jinja chat template file; overrides the tokenizer's (tokenizer/chat_template.h) */
    char chat_template[CFG_PATH_MAX];
    char served_model_name[CFG_STR_MAX];
    char prefill_dtype[8]; /* auto | f32 | bf16 | int8 (auto: eng_prefill_wtype_auto) */
    char decode_dtype[8];  /* auto | f32 | bf16 | int8 (auto: bf16 where oneDNN has bf16) */
    /* scheduler */
    int prefill_threads; /* 0: elastic */
    int decode_threads;  /* 0: elastic */
    int prefill_workers;
    double tpot_slo_ms;
    bool pin_cpus;
    int base_kv_mib;
    int aux_kv_mib;
    int block_size;
    char kv_dtype[8]; /* f32 | bf16: element type of the KV caches */
    int max_queue;
    int max_running;
    int prefill_chunk;
    int max_context; /* 0: the model's max_position_embeddings */
    double ttft_slo_ms;
    int predict_min_prompt;
    bool shed_hopeless;         /* auto: refuse (503) requests no mode can serve within the SLO */
    bool enable_prefix_caching; /* reuse exact KV blocks across requests by content */
    bool refine;           /* predict mode: swap in the exact base KV computed in the background */
    char prefill_mode[16]; /* default for requests: auto | full | predict */
    /* disaggregated serving (docs/disaggregated.md) */
    char role[16];                    /* all | prefill | decode */
    char prefill_peers[CFG_PATH_MAX]; /* decode: host:port,... of the prefill hosts' --pd-port */
    int pd_port;                      /* prefill: UCX listen port (0: any, printed) */
    int pd_timeout_ms;                /* decode: a remote prefill silent this long fails */
    int pd_resolve_ms;                /* decode: --prefill-peers names re-resolved this often */
    /* request limits */
    int max_choices;    /* prompts x n per request */
    int max_stop;       /* stop strings per request */
    int max_stop_bytes; /* bytes per stop string */
    bool strict_fields; /* unknown request fields are a 400 (default false: ignored) */
    /* logging and metrics */
    char log_level[16];    /* error | warn | info | debug */
    char log_format[8];    /* text | json (one JSON object per line) */
    char metric_names[16]; /* vllm (kvcast:ttft...) | prometheus (kvcast_ttft..., promtool-clean) */
    bool access_log;
    /* testing */
    int debug_step_delay_ms; /* sleep after each decode step / prefill chunk (0: off) */
    int debug_load_delay_ms; /* sleep before loading models, to observe LOADING (0: off) */
};

/* Fills s with the built-in defaults: each row's default text, parsed like a flag's. */
void cfg_settings_default(struct cfg_settings *s);

/* Sets one setting from text, by its kebab-case name ("max-queue"); source names where the
 * value came from for the error message ("--max-queue", "KVCAST_MAX_QUEUE", "cfg.json").
 * KC_ENOTFOUND for an unknown name, KC_EINVAL for a bad value; s is unchanged on failure. */
int cfg_set(struct cfg_settings *s, const char *name, const char *value, const char *source,
            struct kc_error *err);

/* Applies a JSON config file: an object whose keys are setting names (snake_case or
 * kebab-case) with values of the setting's JSON type (string, integer, number, boolean).
 * Unknown keys, duplicate keys and wrong types are errors naming the file and key.
 * s is unchanged on failure. */
int cfg_load_file(struct cfg_settings *s, const char *path, struct kc_error *err);

/* Applies every KVCAST_<NAME> variable found in envp (NULL-terminated "K=V" strings). An
 * unknown KVCAST_ variable is an error (a misspelt setting must not be silently ignored),
 * except KVCAST_CONFIG, which names the config file. */
int cfg_apply_env(struct cfg_settings *s, char *const *envp, struct kc_error *err);

/* Applies flags argv[1..argc-1]: --name VALUE, --name=VALUE, and for booleans --name,
 * --no-name, --name=true|false. --config FILE is skipped here (cfg_settings_load reads it
 * first). Sets *help when --help or -h is present. */
int cfg_apply_args(struct cfg_settings *s, int argc, char **argv, bool *help, struct kc_error *err);

/* Cross-field checks after everything is applied (e.g. a non-loopback host without a key,
 * --aux without --predictor). */
int cfg_settings_validate(const struct cfg_settings *s, struct kc_error *err);

/* The whole chain: defaults < file (--config or KVCAST_CONFIG) < env < flags, then reads the
 * API key file if given, then validates. On success *out is the result; *help is set when
 * the user asked for help (the caller prints cfg_print_help and exits 0). */
int cfg_settings_load(int argc, char **argv, char *const *envp, struct cfg_settings *out,
                      bool *help, struct kc_error *err);

/* Prints `kvcast serve --help`: every setting with its type, default and env name. */
void cfg_print_help(FILE *f);

/* Writes every setting as one JSON-ish line for the start-up log, secrets redacted. */
void cfg_settings_describe(const struct cfg_settings *s, char *out, size_t cap);

/* True when every address host resolves to (numeric first, then by name) is loopback
 * (127.0.0.0/8, ::1, ::ffff:127.x). May consult the resolver: call once at start-up. */
bool cfg_host_is_loopback(const char *host);

#endif /* CFG_CONFIG_H */
