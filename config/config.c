/*
 * config.c — the settings table and the four layers that fill a cfg_settings
 * (defaults < JSON file < KVCAST_* env < flags). See config.h.
 *
 * DESIGN
 *   1. Every setting is one row of `fields`; all parsers go through cfg_set(), so a value is
 *      validated by the same code whichever layer it came from.
 *   2. A layer either applies completely or leaves the settings untouched (work on a copy).
 *   3. Secrets (api-key) are never echoed back in error messages, help or descriptions.
 */
#define _POSIX_C_SOURCE 200809L
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>

enum cfg_type { T_STR, T_SECRET, T_ENUM, T_INT, T_LONG, T_DOUBLE, T_BOOL };

struct cfg_field {
    const char *name; /* kebab-case */
    enum cfg_type type;
    size_t off;
    size_t size;         /* strings: buffer size */
    double lo, hi;       /* numbers: inclusive range */
    const char *choices; /* T_ENUM: "a|b|c" */
    const char *def;     /* the built-in default, as a flag's text (parsed like one) */
    const char *help;
};

#define FLD_SIZE(m) sizeof(((struct cfg_settings *)0)->m)
#define F_STR(n, m, d, h)                                                                          \
    { n, T_STR, offsetof(struct cfg_settings, m), FLD_SIZE(m), 0, 0, NULL, d, h }
#define F_SECRET(n, m, d, h)                                                                       \
    { n, T_SECRET, offsetof(struct cfg_settings, m), FLD_SIZE(m), 0, 0, NULL, d, h }
#define F_ENUM(n, m, c, d, h)                                                                      \
    { n, T_ENUM, offsetof(struct cfg_settings, m), FLD_SIZE(m), 0, 0, c, d, h }
#define F_INT(n, m, lo, hi, d, h)                                                                  \
    { n, T_INT, offsetof(struct cfg_settings, m), 0, lo, hi, NULL, d, h }
#define F_LONG(n, m, lo, hi, d, h)                                                                 \
    { n, T_LONG, offsetof(struct cfg_settings, m), 0, lo, hi, NULL, d, h }
#define F_DBL(n, m, lo, hi, d, h)                                                                  \
    { n, T_DOUBLE, offsetof(struct cfg_settings, m), 0, lo, hi, NULL, d, h }
#define F_BOOL(n, m, d, h)                                                                         \
    { n, T_BOOL, offsetof(struct cfg_settings, m), 0, 0, 1, NULL, d, h }

static const struct cfg_field fields[] = {
    F_STR("host", host, "127.0.0.1",
          "address to listen on (0.0.0.0 exposes the server: needs --api-key)"),
    F_INT("port", port, 0, 65535, "8080", "TCP port; 0 picks a free one and prints it"),
    F_SECRET("api-key", api_key, "",
             "require 'Authorization: Bearer KEY' on /v1/* (prefer the env or file form)"),
    F_STR("api-key-file", api_key_file, "", "read the API key from the first line of this file"),
    F_BOOL("insecure-public", insecure_public, "false",
           "allow a non-loopback --host without an API key"),
    F_STR("cors-allow-origins", cors_allow_origins, "",
          "comma-separated origins allowed by CORS; empty sends no CORS headers"),
    F_STR("cors-allow-headers", cors_allow_headers, "",
          "request headers a CORS preflight allows (comma list); empty: reflect the headers the "
          "preflight asks for (allowed origins only)"),
    F_STR("allowed-hosts", allowed_hosts, "",
          "Host header names answered (comma list, '*' any; DNS-rebinding defence); empty: "
          "localhost/127.x/[::1] when bound to loopback, any otherwise"),
    F_BOOL("metrics-public", metrics_public, "false", "serve /metrics without the API key"),
    F_INT("max-connections", max_connections, 1, 65536, "256",
          "open HTTP connections; over it the oldest connection still sending its request "
          "(or idle) is closed, or the new one gets 503"),
    F_INT("max-connections-per-ip", max_connections_per_ip, 0, 65536, "0",
          "open connections per client address; more get 503 (0: unlimited; proxies and load "
          "generators share one address)"),
    F_INT("connection-memory-kib", connection_memory_kib, 16, 1024, "64",
          "per-connection memory for headers and buffers (KiB)"),
    F_INT("connection-timeout-s", connection_timeout_s, 1, 86400, "30",
          "close connections idle this long (seconds)"),
    F_INT("header-timeout-s", header_timeout_s, 1, 3600, "10",
          "close a connection that has not sent a whole request head this long after it opened "
          "or its previous response ended (slow clients, idle keep-alive)"),
    F_INT("body-timeout-s", body_timeout_s, 1, 86400, "30",
          "close a connection whose request body (chunked too) is not complete this long after "
          "its head"),
    F_LONG("max-body-bytes", max_body_bytes, 1024, 1073741824.0, "4194304",
           "largest request body (bytes)"),
    F_INT("request-timeout-s", request_timeout_s, 0, 86400, "600",
          "abort a completion running longer than this (0: never)"),
    F_INT("heartbeat-ms", heartbeat_ms, 50, 600000, "2000",
          "SSE keep-alive comment interval on idle streams (ms)"),
    F_INT("disconnect-check-ms", disconnect_check_ms, 10, 60000, "200",
          "how often waiting connections are checked for a gone client (ms)"),
    F_INT("shutdown-timeout-s", shutdown_timeout_s, 0, 86400, "30",
          "on SIGTERM, let running requests finish this long before cancelling them"),
    F_INT("retry-after-s", retry_after_s, 0, 3600, "1", "Retry-After sent with 503 when busy"),
    F_STR("bundle", bundle, "models/tiny/kvcast-bundle.json",
          "KV Prediction bundle (base + aux + predictor) JSON file"),
    F_STR("model", model, "", "base model directory (Hugging Face layout); overrides the bundle"),
    F_STR("aux", aux, "",
          "auxiliary model directory: with --model, pairs with --predictor; else replaces the "
          "bundle's"),
    F_STR("predictor", predictor, "",
          "predictor.safetensors mapping aux KV to base KV; without --model, replaces the "
          "bundle's"),
    F_STR("tokenizer", tokenizer, "",
          "tokenizer.json (or its directory); default: the base model's"),
    F_STR("chat-template", chat_template, "",
          "Jinja chat template file for /v1/chat/completions; default: tokenizer_config.json's "
          "chat_template, else chat_template.jinja beside the tokenizer"),
    F_STR("served-model-name", served_model_name, "",
          "model id clients send and /v1/models lists; default: the bundle's \"name\", else the "
          "base dir's name"),
    F_ENUM("prefill-dtype", prefill_dtype, "auto|f32|bf16|int8", "auto",
           "weight format of prefill steps (auto: bf16 where the CPU has native bf16 dot products, "
           "avx512_bf16 or AMX, as oneDNN sees it; else f32)"),
    F_ENUM("decode-dtype", decode_dtype, "auto|f32|bf16|int8", "auto",
           "weight format of decode steps (auto: bf16 where oneDNN has bf16 products, AVX-512 "
           "or newer, else f32; int8: per-channel s8 weights, per-token s8 activations)"),
    F_INT("prefill-threads", prefill_threads, 0, 1024, "0",
          "OpenMP threads of each prefill worker (0: elastic, every core when decode is idle)"),
    F_INT("decode-threads", decode_threads, 0, 1024, "0",
          "OpenMP threads of the decode worker (0: elastic, every core when nothing prefills)"),
    F_INT("prefill-workers", prefill_workers, 1, 64, "1", "prefill worker threads"),
    F_DBL("tpot-slo-ms", tpot_slo_ms, 0.0, 3600000.0, "50",
          "elastic threads: decode step time kept while a prompt prefills (0: no target)"),
    F_BOOL("pin-cpus", pin_cpus, "false",
           "pin prefill and decode workers to separate cores (needs both thread counts)"),
    F_INT("base-kv-mib", base_kv_mib, 1, 1048576, "256", "KV cache budget of the base model (MiB)"),
    F_INT("aux-kv-mib", aux_kv_mib, 1, 1048576, "64",
          "KV cache budget of the auxiliary model (MiB)"),
    F_INT("block-size", block_size, 1, 4096, "16", "tokens per KV block"),
    F_ENUM("kv-dtype", kv_dtype, "f32|bf16", "f32",
           "element type of the KV caches (bf16: half the memory per token, attention reads "
           "half the bytes; K/V rounded to bf16)"),
    F_INT("max-queue", max_queue, 1, 1000000, "64",
          "waiting requests beyond which new ones get 503"),
    F_INT("max-running", max_running, 1, 4096, "8", "sequences decoding at once"),
    F_INT("prefill-chunk", prefill_chunk, 1, 65536, "256", "prompt rows per prefill step"),
    F_INT("max-context", max_context, 0, 16777216, "0",
          "prompt + max_tokens limit (0: the model's positions)"),
    F_DBL("ttft-slo-ms", ttft_slo_ms, 0.0, 3600000.0, "500",
          "auto mode: predict when a full prefill would miss this TTFT"),
    F_INT("predict-min-prompt", predict_min_prompt, 0, 16777216, "0",
          "auto mode: prompts at least this long always predict (0: off)"),
    F_BOOL("shed-hopeless", shed_hopeless, "true",
           "auto mode: answer 503 + Retry-After at once to a request that even predict cannot "
           "bring inside --ttft-slo-ms behind the queued work"),
    F_BOOL("enable-prefix-caching", enable_prefix_caching, "true",
           "reuse the exact KV of prompt prefixes seen before (vLLM's automatic prefix caching, "
           "base and aux pools); --no-enable-prefix-caching prefills every prompt whole"),
    F_BOOL("refine", refine, "true",
           "predict mode: compute the prompt's exact base KV in the background after the first "
           "token and swap it in (a request's \"refine\" field overrides)"),
    F_ENUM("prefill-mode", prefill_mode, "auto|full|predict", "auto",
           "prefill mode of requests that do not name one"),
    F_ENUM("role", role, "all|prefill|decode", "all",
           "disaggregated serving: prefill = serve decode hosts' prompts over UCX on --pd-port; "
           "decode = the HTTP front, prompts prefilled by --prefill-peers"),
    F_STR("prefill-peers", prefill_peers, "",
          "--role decode: prefill hosts as host:port,... (their --pd-port; names re-resolved "
          "every --pd-resolve-ms, e.g. a headless Service)"),
    F_INT("pd-port", pd_port, 0, 65535, "8081",
          "--role prefill: UCX listen port for decode hosts (on --host; 0 picks one)"),
    F_INT("pd-timeout-ms", pd_timeout_ms, 100, 3600000, "30000",
          "--role decode: a prefill host silent this long on a request is given up (CANCEL; "
          "retried once elsewhere, else 503)"),
    F_INT("pd-resolve-ms", pd_resolve_ms, 100, 3600000, "5000",
          "--role decode: re-resolve the names of --prefill-peers this often (an address that "
          "appears is connected, one that disappears gets no new requests and is dropped once "
          "its requests are done)"),
    F_INT("max-choices", max_choices, 1, 128, "8", "prompts x n in one request at most"),
    F_INT("max-stop", max_stop, 0, 64, "4", "stop strings per request at most"),
    F_INT("max-stop-bytes", max_stop_bytes, 1, 4096, "240", "bytes per stop string at most"),
    F_BOOL("strict-fields", strict_fields, "false",
           "reject requests with unknown fields (default: ignore them, warn once per name)"),
    F_ENUM("log-level", log_level, "error|warn|info|debug", "info", "log verbosity"),
    F_ENUM("log-format", log_format, "text|json", "text",
           "log lines as text or one JSON object each"),
    F_BOOL("access-log", access_log, "true", "one log line per request"),
    F_ENUM("metric-names", metric_names, "vllm|prometheus", "vllm",
           "/metrics names: vllm = kvcast:<vLLM name>, prometheus = kvcast_<vLLM name>"),
    F_INT("debug-step-delay-ms", debug_step_delay_ms, 0, 10000, "0",
          "testing only: sleep after every decode step and prefill chunk"),
    F_INT("debug-load-delay-ms", debug_load_delay_ms, 0, 600000, "0",
          "testing only: wait this long before loading models (/health answers 'loading')"),
};
#define N_FIELDS (sizeof(fields) / sizeof(fields[0]))

static const struct cfg_field *field_find(const char *name, size_t len) {
    for (size_t i = 0; i < N_FIELDS; i++) {
        const char *f = fields[i].name;
        if (strlen(f) != len) {
            continue;
        }
        /* '-' and '_' are interchangeable so JSON files may use snake_case. */
        size_t j = 0;
        for (; j < len; j++) {
            char c = name[j] == '_' ? '-' : name[j];
            if (c != f[j]) {
                break;
            }
        }
        if (j == len) {
            return &fields[i];
        }
    }
    return NULL;
}

static bool parse_bool(const char *v, bool *out) {
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(v, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static bool choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) {
            return true;
        }
        p += len + (bar ? 1 : 0);
    }
    return false;
}

static int field_set(struct cfg_settings *s, const struct cfg_field *f, const char *v,
                     const char *src, struct kc_error *err) {
    char *base = (char *)s + f->off;
    switch (f->type) {
    case T_STR:
    case T_SECRET:
    case T_ENUM: {
        size_t n = strlen(v);
        if (n >= f->size) {
            return kc_error_set(err, KC_EINVAL, "%s: value too long (%zu bytes, at most %zu)", src,
                                n, f->size - 1);
        }
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
                return kc_error_set(err, KC_EINVAL, "%s: control character in value", src);
            }
        }
        if (f->type == T_ENUM && !choice_ok(f->choices, v)) {
            return kc_error_set(err, KC_EINVAL, "%s: must be one of %s, got '%s'", src, f->choices,
                                v);
        }
        memcpy(base, v, n + 1);
        return KC_OK;
    }
    case T_INT:
    case T_LONG: {
        char *end = NULL;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (*v == '\0' || errno != 0 || *end != '\0' || !((double)x >= f->lo) ||
            !((double)x <= f->hi)) {
            return kc_error_set(err, KC_EINVAL, "%s: must be an integer in [%.0f, %.0f], got '%s'",
                                src, f->lo, f->hi, v);
        }
        if (f->type == T_INT) {
            *(int *)(void *)base = (int)x;
        } else {
            *(long *)(void *)base = (long)x;
        }
        return KC_OK;
    }
    case T_DOUBLE: {
        char *end = NULL;
        errno = 0;
        /* Plain decimal only: strtod would also take hex floats, "inf" and "nan". */
        bool plain = strspn(v, "0123456789.eE+-") == strlen(v);
        double x = plain ? strtod(v, &end) : 0.0;
        if (!plain || *v == '\0' || errno != 0 || *end != '\0' || !isfinite(x) || !(x >= f->lo) ||
            !(x <= f->hi)) {
            return kc_error_set(err, KC_EINVAL, "%s: must be a number in [%g, %g], got '%s'", src,
                                f->lo, f->hi, v);
        }
        *(double *)(void *)base = x;
        return KC_OK;
    }
    case T_BOOL: {
        bool b;
        if (!parse_bool(v, &b)) {
            return kc_error_set(err, KC_EINVAL, "%s: must be true or false, got '%s'", src, v);
        }
        *(bool *)(void *)base = b;
        return KC_OK;
    }
    }
    return kc_error_set(err, KC_EINVAL, "%s: bad setting type", src);
}

/* The defaults are the table's `def` texts, parsed by field_set like any other layer's, so a
 * default outside its own row's range or choices cannot ship (the KC_ASSERT fails at once). */
void cfg_settings_default(struct cfg_settings *s) {
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < N_FIELDS; i++) {
        struct kc_error err = {0};
        const int rc = field_set(s, &fields[i], fields[i].def, fields[i].name, &err);
        KC_ASSERT(rc == KC_OK);
        (void)rc;
    }
}

int cfg_set(struct cfg_settings *s, const char *name, const char *value, const char *source,
            struct kc_error *err) {
    const struct cfg_field *f = field_find(name, strlen(name));
    if (f == NULL) {
        return kc_error_set(err, KC_ENOTFOUND, "%s: unknown setting '%s'", source, name);
    }
    if (value == NULL) {
        return kc_error_set(err, KC_EINVAL, "%s: missing value", source);
    }
    return field_set(s, f, value, source, err);
}

int cfg_load_file(struct cfg_settings *s, const char *path, struct kc_error *err) {
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    int rc = kc_file_read(path, 1 << 20, &text, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    struct cfg_settings tmp = *s;
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        rc = kc_error_set(err, KC_EFORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: the top level must be a JSON object", path);
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        char src[CFG_PATH_MAX + 64];
        snprintf(src, sizeof(src), "%s: \"%s\"", path, key);
        const struct cfg_field *f = field_find(key, strlen(key));
        if (f == NULL) {
            rc = kc_error_set(err, KC_EINVAL, "%s: unknown setting", src);
            goto fail;
        }
        char buf[64];
        const char *v = buf;
        switch (f->type) {
        case T_STR:
        case T_SECRET:
        case T_ENUM:
            if (!json_is_string(val) || strlen(json_string_value(val)) != json_string_length(val)) {
                rc = kc_error_set(err, KC_EINVAL, "%s: must be a string", src);
                goto fail;
            }
            v = json_string_value(val);
            break;
        case T_INT:
        case T_LONG:
            if (!json_is_integer(val)) {
                rc = kc_error_set(err, KC_EINVAL, "%s: must be an integer", src);
                goto fail;
            }
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(val));
            break;
        case T_DOUBLE:
            if (!json_is_number(val)) {
                rc = kc_error_set(err, KC_EINVAL, "%s: must be a number", src);
                goto fail;
            }
            snprintf(buf, sizeof(buf), "%.17g", json_number_value(val));
            break;
        case T_BOOL:
            if (!json_is_boolean(val)) {
                rc = kc_error_set(err, KC_EINVAL, "%s: must be true or false", src);
                goto fail;
            }
            snprintf(buf, sizeof(buf), "%s", json_is_true(val) ? "true" : "false");
            break;
        }
        rc = field_set(&tmp, f, v, src, err);
        if (rc != KC_OK) {
            goto fail;
        }
    }
    *s = tmp;
    rc = KC_OK;
fail:
    json_decref(root);
    free(text);
    return rc;
}

int cfg_apply_env(struct cfg_settings *s, char *const *envp, struct kc_error *err) {
    static const char prefix[] = "KVCAST_";
    const size_t plen = sizeof(prefix) - 1;
    struct cfg_settings tmp = *s;
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
        const char *e = envp[i];
        const char *eq = strchr(e, '=');
        if (strncmp(e, prefix, plen) != 0 || eq == NULL) {
            continue;
        }
        size_t nlen = (size_t)(eq - e) - plen;
        if (nlen == 6 && strncmp(e + plen, "CONFIG", 6) == 0) {
            continue;
        }
        char name[64];
        char src[96];
        if (nlen >= sizeof(name)) {
            return kc_error_set(err, KC_EINVAL, "environment: unknown variable %.64s...", e);
        }
        for (size_t j = 0; j < nlen; j++) {
            name[j] = (char)tolower((unsigned char)e[plen + j]);
        }
        name[nlen] = '\0';
        snprintf(src, sizeof(src), "%.*s", (int)(nlen + plen), e);
        const struct cfg_field *f = field_find(name, nlen);
        if (f == NULL) {
            return kc_error_set(err, KC_EINVAL, "environment: unknown variable %s", src);
        }
        int rc = field_set(&tmp, f, eq + 1, src, err);
        if (rc != KC_OK) {
            return rc;
        }
    }
    *s = tmp;
    return KC_OK;
}

int cfg_apply_args(struct cfg_settings *s, int argc, char **argv, bool *help,
                   struct kc_error *err) {
    struct cfg_settings tmp = *s;
    bool want_help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            want_help = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            return kc_error_set(err, KC_EINVAL, "unexpected argument '%s'", a);
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        char src[96];
        snprintf(src, sizeof(src), "--%.*s", (int)(nlen < 64 ? nlen : 64), name);
        if (nlen == 6 && strncmp(name, "config", 6) == 0) {
            if (value == NULL) {
                i++;
            }
            continue; /* read by cfg_settings_load before the other layers */
        }
        const struct cfg_field *f = field_find(name, nlen);
        bool negated = false;
        if (f == NULL && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            f = field_find(name + 3, nlen - 3);
            if (f != NULL && f->type != T_BOOL) {
                f = NULL;
            }
            negated = f != NULL;
        }
        if (f == NULL) {
            return kc_error_set(err, KC_EINVAL, "unknown option %s (see --help)", src);
        }
        if (f->type == T_BOOL) {
            if (negated && value != NULL) {
                return kc_error_set(err, KC_EINVAL, "%s takes no value", src);
            }
            if (value == NULL) {
                value = negated ? "false" : "true";
            }
        } else if (value == NULL) {
            if (i + 1 >= argc) {
                return kc_error_set(err, KC_EINVAL, "%s: missing value", src);
            }
            value = argv[++i];
        }
        int rc = field_set(&tmp, f, value, src, err);
        if (rc != KC_OK) {
            return rc;
        }
        if (f->type == T_SECRET) {
            tmp.api_key_on_cmdline = true; /* other users can read argv (ps, /proc) */
        }
    }
    *s = tmp;
    if (help != NULL) {
        *help = want_help;
    }
    return KC_OK;
}

static bool addr_is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

bool cfg_host_is_loopback(const char *host) {
    /* Resolve rather than match the text: "127.0.0.1.evil.example" is a name that can point
     * anywhere, and a name may resolve to several addresses. Numeric forms first, so a literal
     * address never waits on the resolver. Every address must be loopback; a host that does
     * not resolve is not (the caller then asks for a key, and binding fails anyway). */
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    struct addrinfo *res = NULL;
    if (host[0] == '\0') {
        return false;
    }
    if (getaddrinfo(host, NULL, &hints, &res) != 0) {
        hints.ai_flags = 0;
        if (getaddrinfo(host, NULL, &hints, &res) != 0) {
            return false;
        }
    }
    bool all = res != NULL;
    for (const struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        all = all && addr_is_loopback(a->ai_addr);
    }
    freeaddrinfo(res);
    return all;
}

int cfg_settings_validate(const struct cfg_settings *s, struct kc_error *err) {
    if (s->host[0] == '\0') {
        return kc_error_set(err, KC_EINVAL, "--host: must not be empty");
    }
    if (!cfg_host_is_loopback(s->host) && s->api_key[0] == '\0' && !s->insecure_public) {
        return kc_error_set(err, KC_EINVAL,
                            "--host %s exposes the server beyond this machine: set --api-key "
                            "(or KVCAST_API_KEY / --api-key-file), or pass --insecure-public",
                            s->host);
    }
    /* With --model the bundle is not read, so a lone --aux or --predictor has no partner;
     * without it they replace the bundle's own (serve.c). */
    if (s->model[0] != '\0' && (s->aux[0] != '\0') != (s->predictor[0] != '\0')) {
        return kc_error_set(err, KC_EINVAL,
                            "--model with --%s needs --%s too (without --model, --aux and "
                            "--predictor each replace the bundle's)",
                            s->aux[0] != '\0' ? "aux" : "predictor",
                            s->aux[0] != '\0' ? "predictor" : "aux");
    }
    if (s->model[0] == '\0' && s->bundle[0] == '\0') {
        return kc_error_set(err, KC_EINVAL, "no model: give --model DIR or --bundle FILE");
    }
    if (s->max_connections_per_ip > s->max_connections) {
        return kc_error_set(err, KC_EINVAL,
                            "--max-connections-per-ip (%d) exceeds --max-connections (%d)",
                            s->max_connections_per_ip, s->max_connections);
    }
    if (s->heartbeat_ms > s->connection_timeout_s * 1000) {
        return kc_error_set(err, KC_EINVAL,
                            "--heartbeat-ms (%d) must not exceed --connection-timeout-s (%d s)",
                            s->heartbeat_ms, s->connection_timeout_s);
    }
    return KC_OK;
}

static int read_key_file(struct cfg_settings *s, struct kc_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = kc_file_read(s->api_key_file, 64 << 10, &text, &len, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "--api-key-file");
        return rc;
    }
    size_t n = strcspn(text, "\r\n");
    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t')) {
        n--;
    }
    if (n == 0 || n >= sizeof(s->api_key) || memchr(text, '\0', n) != NULL) {
        free(text);
        return kc_error_set(err, KC_EINVAL,
                            "--api-key-file %s: the first line must hold a key of 1..%zu bytes",
                            s->api_key_file, sizeof(s->api_key) - 1);
    }
    memcpy(s->api_key, text, n);
    s->api_key[n] = '\0';
    free(text);
    return KC_OK;
}

int cfg_settings_load(int argc, char **argv, char *const *envp, struct cfg_settings *out,
                      bool *help, struct kc_error *err) {
    struct cfg_settings s;
    cfg_settings_default(&s);
    const char *file = NULL;
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
        if (strncmp(envp[i], "KVCAST_CONFIG=", 14) == 0) {
            file = envp[i] + 14;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                return kc_error_set(err, KC_EINVAL, "--config: missing value");
            }
            file = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            file = argv[i] + 9;
        }
    }
    int rc;
    if (file != NULL && file[0] != '\0' && (rc = cfg_load_file(&s, file, err)) != KC_OK) {
        return rc;
    }
    if ((rc = cfg_apply_env(&s, envp, err)) != KC_OK) {
        return rc;
    }
    bool want_help = false;
    if ((rc = cfg_apply_args(&s, argc, argv, &want_help, err)) != KC_OK) {
        return rc;
    }
    if (want_help) {
        *help = true;
        return KC_OK;
    }
    if (s.api_key_file[0] != '\0' && s.api_key[0] == '\0' &&
        (rc = read_key_file(&s, err)) != KC_OK) {
        return rc;
    }
    if ((rc = cfg_settings_validate(&s, err)) != KC_OK) {
        return rc;
    }
    *out = s;
    *help = false;
    return KC_OK;
}

static void value_text(const struct cfg_settings *s, const struct cfg_field *f, char *out,
                       size_t cap) {
    const char *base = (const char *)s + f->off;
    switch (f->type) {
    case T_SECRET:
        snprintf(out, cap, "%s", base[0] ? "<set>" : "");
        break;
    case T_STR:
    case T_ENUM:
        snprintf(out, cap, "%s", base);
        break;
    case T_INT:
        snprintf(out, cap, "%d", *(const int *)(const void *)base);
        break;
    case T_LONG:
        snprintf(out, cap, "%ld", *(const long *)(const void *)base);
        break;
    case T_DOUBLE:
        snprintf(out, cap, "%g", *(const double *)(const void *)base);
        break;
    case T_BOOL:
        snprintf(out, cap, "%s", *(const bool *)(const void *)base ? "true" : "false");
        break;
    }
}

void cfg_print_help(FILE *f) {
    struct cfg_settings d;
    cfg_settings_default(&d);
    fprintf(f, "usage: kvcast serve [--config FILE] [options]\n\n"
               "Serves an OpenAI-compatible API (/v1/completions, /v1/models, /tokenize,\n"
               "/detokenize, /health, /metrics). Settings apply in this order, later wins:\n"
               "defaults < JSON file (--config FILE or KVCAST_CONFIG; keys as below with '_')\n"
               "< environment KVCAST_<NAME> < flags. Booleans: --name, --no-name, "
               "--name=true|false.\n\n");
    fprintf(f, "  %-28s %s\n", "--config FILE", "JSON settings file [env KVCAST_CONFIG]");
    for (size_t i = 0; i < N_FIELDS; i++) {
        const struct cfg_field *fl = &fields[i];
        char def[CFG_PATH_MAX];
        char flag[80];
        char env[80];
        value_text(&d, fl, def, sizeof(def));
        const char *meta = fl->type == T_BOOL     ? ""
                           : fl->type == T_INT    ? " N"
                           : fl->type == T_LONG   ? " N"
                           : fl->type == T_DOUBLE ? " X"
                           : fl->type == T_ENUM   ? " CHOICE"
                                                  : " TEXT";
        snprintf(flag, sizeof(flag), "--%s%s", fl->name, meta);
        size_t j = 0;
        for (; fl->name[j] != '\0' && j < sizeof(env) - 8; j++) {
            env[j] = fl->name[j] == '-' ? '_' : (char)toupper((unsigned char)fl->name[j]);
        }
        env[j] = '\0';
        fprintf(f, "  %-28s %s\n  %-28s ", flag, fl->help, "");
        if (fl->type == T_ENUM) {
            fprintf(f, "one of %s; ", fl->choices);
        } else if (fl->type == T_INT || fl->type == T_LONG) {
            fprintf(f, "range [%.0f, %.0f]; ", fl->lo, fl->hi);
        } else if (fl->type == T_DOUBLE) {
            fprintf(f, "range [%g, %g]; ", fl->lo, fl->hi);
        }
        fprintf(f, "default: %s [env KVCAST_%s]\n", def[0] ? def : "(none)", env);
    }
}

void cfg_settings_describe(const struct cfg_settings *s, char *out, size_t cap) {
    size_t used = 0;
    if (cap == 0) {
        return;
    }
    out[0] = '\0';
    for (size_t i = 0; i < N_FIELDS && used + 1 < cap; i++) {
        char v[CFG_PATH_MAX];
        value_text(s, &fields[i], v, sizeof(v));
        int n = snprintf(out + used, cap - used, "%s%s=%s", i ? " " : "", fields[i].name, v);
        if (n < 0) {
            break;
        }
        used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
    }
}
