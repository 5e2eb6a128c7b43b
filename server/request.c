/*
 * request.c — the /v1/completions, /tokenize and /detokenize body validators. See request.h.
 *
 * DESIGN
 *   1. Validate before allocate: every count is checked against its cap before an array of
 *      that size is made.
 *   2. Range checks are written `!(lo <= x && x <= hi)` so NaN fails them (jansson never
 *      yields NaN from text, but the same checks guard values injected by tests/fuzzers).
 *   3. Every error names the field in `param` and in the message.
 */
#define _POSIX_C_SOURCE 200809L
#include "server/request.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

/* Parses a JSON body with the server's rules (duplicates rejected, root must be an object);
 * returns a new reference or NULL with e filled (400). */
static json_t *json_parse_object(const char *body, size_t len, struct srv_error *e) {
    if (len == 0) {
        srv_error_kc(e, KC_EINVAL, NULL, "request body is empty; expected a JSON object");
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        srv_error_kc(e, KC_EINVAL, NULL, "invalid JSON at line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        srv_error_kc(e, KC_EINVAL, NULL, "request body must be a JSON object");
        return NULL;
    }
    return root;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

/* Optional integer field in [lo, hi]; absent or null keeps *out. */
static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out,
                   struct srv_error *e) {
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_integer(v)) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be an integer, got %s", key,
                            type_name(v));
    }
    json_int_t x = json_integer_value(v);
    if (!(lo <= x && x <= hi)) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be in [%lld, %lld], got %lld", key, lo,
                            hi, (long long)x);
    }
    *out = x;
    return KC_OK;
}

/* Optional number (integer or real) in [lo, hi] (lo_open: lo excluded). */
static int get_num(json_t *root, const char *key, double lo, bool lo_open, double hi, float *out,
                   struct srv_error *e) {
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_number(v)) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be a number, got %s", key, type_name(v));
    }
    double x = json_number_value(v);
    /* The open bound is checked on the float the sampler gets: 1e-50 rounds to 0. */
    bool ok = isfinite(x) && (lo_open ? lo < (double)(float)x : lo <= x) && x <= hi;
    if (!ok) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be in %c%g, %g], got %g", key,
                            lo_open ? '(' : '[', lo, hi, x);
    }
    *out = (float)x;
    return KC_OK;
}

static int get_bool(json_t *root, const char *key, bool *out, struct srv_error *e) {
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_boolean(v)) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be a boolean, got %s", key, type_name(v));
    }
    *out = json_is_true(v);
    return KC_OK;
}

static int check_model(json_t *root, const struct srv_limits *lim, struct srv_error *e) {
    json_t *v = json_object_get(root, "model");
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_string(v)) {
        return srv_error_kc(e, KC_EINVAL, "model", "'model' must be a string, got %s",
                            type_name(v));
    }
    if (lim->model_id != NULL && strcmp(json_string_value(v), lim->model_id) != 0) {
        return srv_error_kc(e, KC_ENOTFOUND, "model", "The model `%.200s` does not exist.",
                            json_string_value(v));
    }
    return KC_OK;
}

/* Unknown fields: a 400 in strict mode; otherwise ignored, and counted (with the first
 * names) in r when r is given, for the server's warning and counter. */
static bool listed(const char *key, const char *const *names, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (strcmp(key, names[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* known and more (more may be NULL) list the accepted names. */
static int check_unknown(json_t *root, const char *const *known, size_t n_known,
                         const char *const *more, size_t n_more, const struct srv_limits *lim,
                         struct srv_completion_req *r, struct srv_error *e) {
    if (!lim->strict && r == NULL) {
        return KC_OK;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (listed(key, known, n_known) || listed(key, more, n_more)) {
            continue;
        }
        if (lim->strict) {
            return srv_error_kc(e, KC_EINVAL, key, "unknown field '%.100s' (--strict-fields)", key);
        }
        if (r->n_unknown < SRV_UNKNOWN_REPORT) {
            snprintf(r->unknown[r->n_unknown], SRV_UNKNOWN_NAME_MAX, "%s", key);
        }
        r->n_unknown++;
    }
    return KC_OK;
}

/* truncating: truncate_prompt_tokens will cut the prompt, so it may exceed the context here
 * (the body size bounds it). */
static int ids_from_array(json_t *arr, int index, const struct srv_limits *lim, bool truncating,
                          struct srv_prompt *p, struct srv_error *e) {
    size_t n = json_array_size(arr);
    if (n == 0) {
        return srv_error_kc(e, KC_EINVAL, "prompt", "prompt %d is empty", index);
    }
    if (!truncating && n > (size_t)lim->max_context) {
        return srv_error_kc(e, KC_ECONTEXT, "prompt",
                            "This model's maximum context length is %d tokens. However, your "
                            "prompt %d has %zu tokens.",
                            lim->max_context, index, n);
    }
    int32_t *ids = malloc(n * sizeof(int32_t));
    if (ids == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        if (!json_is_integer(t)) {
            free(ids);
            return srv_error_kc(e, KC_EINVAL, "prompt",
                                "prompt %d: token %zu must be an integer, got %s", index, i,
                                type_name(t));
        }
        json_int_t x = json_integer_value(t);
        if (!(0 <= x && x < lim->vocab_size)) {
            free(ids);
            return srv_error_kc(e, KC_ERANGE, "prompt",
                                "prompt %d: token id %lld at position %zu is outside the "
                                "vocabulary [0, %d)",
                                index, (long long)x, i, lim->vocab_size);
        }
        ids[i] = (int32_t)x;
    }
    p->ids = ids;
    p->n_ids = (int)n;
    return KC_OK;
}

static int text_prompt(json_t *s, int index, struct srv_prompt *p, struct srv_error *e) {
    size_t len = json_string_length(s);
    if (len == 0) {
        return srv_error_kc(e, KC_EINVAL, "prompt", "prompt %d is empty", index);
    }
    if (len > SRV_MAX_PROMPT_BYTES) {
        return srv_error_kc(e, KC_EINVAL, "prompt", "prompt %d is longer than %zu bytes", index,
                            SRV_MAX_PROMPT_BYTES);
    }
    p->text = malloc(len + 1);
    if (p->text == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    memcpy(p->text, json_string_value(s), len + 1);
    p->text_len = len;
    return KC_OK;
}

static void prompts_free(struct srv_prompt *ps, int n) {
    for (int i = 0; ps != NULL && i < n; i++) {
        free(ps[i].text);
        free(ps[i].ids);
    }
    free(ps);
}

/* prompt: string | [string] | [int] | [[int]]. */
static int parse_prompts(json_t *root, const struct srv_limits *lim, bool truncating,
                         struct srv_prompt **out, int *n_out, struct srv_error *e) {
    json_t *v = json_object_get(root, "prompt");
    if (v == NULL || json_is_null(v)) {
        return srv_error_kc(e, KC_EINVAL, "prompt", "'prompt' is required");
    }
    struct srv_prompt *ps = NULL;
    int n = 0;
    int rc;
    if (json_is_string(v)) {
        ps = calloc(1, sizeof(*ps));
        if (ps == NULL) {
            return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
        }
        n = 1;
        if ((rc = text_prompt(v, 0, &ps[0], e)) != KC_OK) {
            goto fail;
        }
    } else if (json_is_array(v)) {
        size_t len = json_array_size(v);
        if (len == 0) {
            return srv_error_kc(e, KC_EINVAL, "prompt", "'prompt' must not be empty");
        }
        json_t *first = json_array_get(v, 0);
        if (json_is_integer(first)) {
            ps = calloc(1, sizeof(*ps));
            if (ps == NULL) {
                return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
            }
            n = 1;
            if ((rc = ids_from_array(v, 0, lim, truncating, &ps[0], e)) != KC_OK) {
                goto fail;
            }
        } else {
            if (len > (size_t)lim->max_choices) {
                return srv_error_kc(e, KC_EINVAL, "prompt",
                                    "'prompt' has %zu prompts; at most %d are allowed", len,
                                    lim->max_choices);
            }
            ps = calloc(len, sizeof(*ps));
            if (ps == NULL) {
                return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
            }
            n = (int)len;
            for (size_t i = 0; i < len; i++) {
                json_t *item = json_array_get(v, i);
                if (json_is_string(item) && json_is_string(first)) {
                    rc = text_prompt(item, (int)i, &ps[i], e);
                } else if (json_is_array(item) && json_is_array(first)) {
                    rc = ids_from_array(item, (int)i, lim, truncating, &ps[i], e);
                } else {
                    rc = srv_error_kc(e, KC_EINVAL, "prompt",
                                      "'prompt' must be a string, an array of strings, an "
                                      "array of token ids or an array of token id arrays "
                                      "(item %zu is %s)",
                                      i, type_name(item));
                }
                if (rc != KC_OK) {
                    goto fail;
                }
            }
        }
    } else {
        return srv_error_kc(e, KC_EINVAL, "prompt", "'prompt' must be a string or an array, got %s",
                            type_name(v));
    }
    *out = ps;
    *n_out = n;
    return KC_OK;
fail:
    prompts_free(ps, n);
    return rc;
}

static int parse_stop(json_t *root, const struct srv_limits *lim, char ***out, int *n_out,
                      struct srv_error *e) {
    json_t *v = json_object_get(root, "stop");
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n == 0) {
            return KC_OK;
        }
    } else if (!json_is_string(v)) {
        return srv_error_kc(e, KC_EINVAL, "stop",
                            "'stop' must be a string or an array of strings, got %s", type_name(v));
    }
    if (n > (size_t)lim->max_stop) {
        return srv_error_kc(e, KC_EINVAL, "stop", "'stop' has %zu strings; at most %d allowed", n,
                            lim->max_stop);
    }
    char **stop = calloc(n, sizeof(char *));
    if (stop == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    int rc = KC_OK;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : items[0];
        if (!json_is_string(s)) {
            rc = srv_error_kc(e, KC_EINVAL, "stop", "stop[%zu] must be a string, got %s", i,
                              type_name(s));
            goto fail;
        }
        size_t len = json_string_length(s);
        if (len == 0 || len > (size_t)lim->max_stop_bytes) {
            rc = srv_error_kc(e, KC_EINVAL, "stop", "stop[%zu] must be 1..%d bytes long, got %zu",
                              i, lim->max_stop_bytes, len);
            goto fail;
        }
        stop[i] = strdup(json_string_value(s));
        if (stop[i] == NULL) {
            rc = srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
            goto fail;
        }
    }
    *out = stop;
    *n_out = (int)n;
    return KC_OK;
fail:
    for (size_t i = 0; i < n; i++) {
        free(stop[i]);
    }
    free(stop);
    return rc;
}

/* True when v asks for nothing: absent, null, an empty array, or the string `none`. */
static bool asks_nothing(json_t *v, const char *none) {
    return v == NULL || json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0) ||
           (none != NULL && json_is_string(v) && strcmp(json_string_value(v), none) == 0);
}

/* Chat fields kvcast does not serve yet (tool calling, per-request templates, continuing the
 * last message, echo): a 400 naming the field unless they ask for nothing. */
static int check_unsupported_chat(json_t *root, struct srv_error *e) {
    static const struct {
        const char *name;
        const char *none; /* the string value that asks for nothing, or NULL */
        const char *why;
    } rows[] = {
        {"tools", NULL, "tool calling is not supported yet; leave 'tools' out"},
        {"tool_choice", "none", "tool calling is not supported yet; leave 'tool_choice' out"},
        {"functions", NULL, "function calling is not supported yet; leave 'functions' out"},
        {"function_call", "none",
         "function calling is not supported yet; leave 'function_call' out"},
        {"chat_template", NULL,
         "a per-request 'chat_template' is not supported; the server renders the model's own "
         "template (or the one given with --chat-template FILE)"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *v = json_object_get(root, rows[i].name);
        if (!asks_nothing(v, rows[i].none)) {
            return srv_error_kc(e, KC_EUNSUPPORTED, rows[i].name, "%s", rows[i].why);
        }
    }
    static const char *const flags[] = {"continue_final_message", "echo"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        json_t *v = json_object_get(root, flags[i]);
        if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
            return srv_error_kc(e, KC_EINVAL, flags[i], "'%s' must be a boolean, got %s", flags[i],
                                type_name(v));
        }
        if (json_is_true(v)) {
            return srv_error_kc(e, KC_EUNSUPPORTED, flags[i],
                                "'%s' is not supported on /v1/chat/completions", flags[i]);
        }
    }
    return KC_OK;
}

/* Fields that change the shape or the meaning of the output: ignoring them would hand the
 * client something it did not ask for, so they are refused unless they ask for nothing. */
static int check_unsupported(json_t *root, bool chat, struct srv_error *e) {
    json_t *v;
    if (chat) {
        int rc = check_unsupported_chat(root, e);
        if (rc != KC_OK) {
            return rc;
        }
    }
    v = json_object_get(root, "response_format");
    if (v != NULL && !json_is_null(v)) {
        json_t *type = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!(json_is_string(type) && strcmp(json_string_value(type), "text") == 0)) {
            return srv_error_kc(e, KC_EUNSUPPORTED, "response_format",
                                "'response_format' other than {\"type\": \"text\"} is not "
                                "supported");
        }
    }
    static const char *const guided[] = {"guided_json", "guided_regex", "guided_choice",
                                         "guided_grammar"};
    for (size_t i = 0; i < sizeof(guided) / sizeof(guided[0]); i++) {
        v = json_object_get(root, guided[i]);
        if (v != NULL && !json_is_null(v)) {
            return srv_error_kc(e, KC_EUNSUPPORTED, guided[i],
                                "'%s' is not supported (no guided decoding)", guided[i]);
        }
    }
    v = json_object_get(root, "use_beam_search");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            return srv_error_kc(e, KC_EINVAL, "use_beam_search",
                                "'use_beam_search' must be a boolean, got %s", type_name(v));
        }
        if (json_is_true(v)) {
            return srv_error_kc(e, KC_EUNSUPPORTED, "use_beam_search",
                                "'use_beam_search' is not supported");
        }
    }
    return KC_OK;
}

/* Parses a whole JSON string as a decimal token id in [0, vocab); -1 when it is not one. */
static long long token_id_key(const char *k, int vocab) {
    if (*k < '0' || *k > '9') {
        return -1; /* no sign, no space */
    }
    errno = 0;
    char *end = NULL;
    long long x = strtoll(k, &end, 10);
    if (errno != 0 || *end != '\0' || x >= vocab) {
        return -1;
    }
    return x;
}

/* logit_bias: {"<token id>": bias in [-100, 100]} (OpenAI's range; vLLM clamps to it). */
static int parse_logit_bias(json_t *root, const struct srv_limits *lim,
                            struct srv_completion_req *r, struct srv_error *e) {
    json_t *v = json_object_get(root, "logit_bias");
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_object(v)) {
        return srv_error_kc(e, KC_EINVAL, "logit_bias",
                            "'logit_bias' must be an object mapping token ids to biases, got %s",
                            type_name(v));
    }
    size_t n = json_object_size(v);
    if (n == 0) {
        return KC_OK;
    }
    if (n > SRV_MAX_LOGIT_BIAS) {
        return srv_error_kc(e, KC_EINVAL, "logit_bias",
                            "'logit_bias' has %zu entries; at most %d are allowed", n,
                            SRV_MAX_LOGIT_BIAS);
    }
    struct srv_logit_bias *b = calloc(n, sizeof(*b));
    if (b == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    const char *key;
    json_t *x;
    int i = 0;
    json_object_foreach(v, key, x) {
        long long id = token_id_key(key, lim->vocab_size);
        if (id < 0) {
            free(b);
            return srv_error_kc(e, KC_ERANGE, "logit_bias",
                                "logit_bias key '%.40s' is not a token id in [0, %d)", key,
                                lim->vocab_size);
        }
        double bias = json_is_number(x) ? json_number_value(x) : NAN;
        if (!(-100.0 <= bias && bias <= 100.0)) {
            free(b);
            return srv_error_kc(e, KC_EINVAL, "logit_bias",
                                "logit_bias[\"%lld\"] must be a number in [-100, 100]", id);
        }
        b[i].id = (int32_t)id;
        b[i].bias = (float)bias;
        i++;
    }
    r->logit_bias = b;
    r->n_logit_bias = i;
    return KC_OK;
}

static int parse_stop_token_ids(json_t *root, const struct srv_limits *lim,
                                struct srv_completion_req *r, struct srv_error *e) {
    json_t *v = json_object_get(root, "stop_token_ids");
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (!json_is_array(v)) {
        return srv_error_kc(e, KC_EINVAL, "stop_token_ids",
                            "'stop_token_ids' must be an array of token ids, got %s", type_name(v));
    }
    size_t n = json_array_size(v);
    if (n == 0) {
        return KC_OK;
    }
    if (n > SRV_MAX_STOP_TOKEN_IDS) {
        return srv_error_kc(e, KC_EINVAL, "stop_token_ids",
                            "'stop_token_ids' has %zu ids; at most %d are allowed", n,
                            SRV_MAX_STOP_TOKEN_IDS);
    }
    int32_t *ids = malloc(n * sizeof(int32_t));
    if (ids == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(v, i);
        if (!json_is_integer(t) ||
            !(0 <= json_integer_value(t) && json_integer_value(t) < lim->vocab_size)) {
            free(ids);
            return srv_error_kc(e, KC_ERANGE, "stop_token_ids",
                                "stop_token_ids[%zu] must be a token id in [0, %d)", i,
                                lim->vocab_size);
        }
        ids[i] = (int32_t)json_integer_value(t);
    }
    r->stop_token_ids = ids;
    r->n_stop_token_ids = (int)n;
    return KC_OK;
}

/* Fields both routes take; the last ones are refused (400 not supported) unless they ask
 * for nothing (echo: chat only refuses it). */
static const char *const shared_fields[] = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "user",
    "prefill_mode",
    "refine",
    "logit_bias",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "stop_token_ids",
    "add_special_tokens",
    "truncate_prompt_tokens",
    "return_tokens_as_token_ids",
    "echo",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "use_beam_search",
};

static const char *const completion_fields[] = {"prompt", "suffix"};

/* The last six are refused unless they ask for nothing (check_unsupported_chat). */
static const char *const chat_fields[] = {
    "messages",  "max_completion_tokens", "top_logprobs",  "add_generation_prompt",
    "documents", "parallel_tool_calls",   "tools",         "tool_choice",
    "functions", "function_call",         "chat_template", "continue_final_message",
};

/* max_tokens of /v1/completions (default 16; 0 only with echo), or of chat:
 * max_completion_tokens, else max_tokens (both >= 1), else the rest of the context. */
static int parse_max_tokens(json_t *root, const struct srv_limits *lim,
                            struct srv_completion_req *r, struct srv_error *e) {
    int rc;
    long long x = r->chat ? -1 : SRV_DEFAULT_MAX_TOKENS;
    if ((rc = get_int(root, "max_tokens", r->chat ? 1 : 0, lim->max_context, &x, e)) != KC_OK ||
        (r->chat &&
         (rc = get_int(root, "max_completion_tokens", 1, lim->max_context, &x, e)) != KC_OK)) {
        return rc;
    }
    r->max_tokens_auto = x < 0;
    /* A placeholder until srv_prompt_fill_max_tokens knows the prompt's length. */
    r->max_tokens = x < 0 ? 1 : (int)x;
    return KC_OK;
}

/* logprobs: /v1/completions' integer (alternatives), or chat's boolean + top_logprobs. */
static int parse_logprobs(json_t *root, struct srv_completion_req *r, struct srv_error *e) {
    int rc;
    long long x = -1;
    if (!r->chat) {
        rc = get_int(root, "logprobs", 0, SRV_MAX_LOGPROBS, &x, e);
        r->logprobs = (int)x;
        return rc;
    }
    bool on = false;
    if ((rc = get_bool(root, "logprobs", &on, e)) != KC_OK ||
        (rc = get_int(root, "top_logprobs", 0, SRV_MAX_LOGPROBS, &x, e)) != KC_OK) {
        return rc;
    }
    if (x >= 0 && !on) {
        return srv_error_kc(e, KC_EINVAL, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    }
    r->logprobs = on ? (x < 0 ? 0 : (int)x) : -1;
    return KC_OK;
}

static int parse_fields(json_t *root, const struct srv_limits *lim, struct srv_completion_req *r,
                        struct srv_error *e) {
    int rc;
    long long x;
    const char *const *own = r->chat ? chat_fields : completion_fields;
    const size_t n_own = r->chat ? sizeof(chat_fields) / sizeof(chat_fields[0])
                                 : sizeof(completion_fields) / sizeof(completion_fields[0]);
    if ((rc = check_unknown(root, own, n_own, shared_fields,
                            sizeof(shared_fields) / sizeof(shared_fields[0]), lim, r, e)) !=
            KC_OK ||
        (rc = check_unsupported(root, r->chat, e)) != KC_OK ||
        (rc = check_model(root, lim, e)) != KC_OK ||
        (rc = parse_max_tokens(root, lim, r, e)) != KC_OK) {
        return rc;
    }
    x = 1;
    if ((rc = get_int(root, "n", 1, lim->max_choices, &x, e)) != KC_OK) {
        return rc;
    }
    r->n = (int)x;
    x = r->n;
    if ((rc = get_int(root, "best_of", 1, lim->max_choices, &x, e)) != KC_OK) {
        return rc;
    }
    if (x < r->n) {
        return srv_error_kc(e, KC_EINVAL, "best_of", "'best_of' (%lld) must be at least n (%d)", x,
                            r->n);
    }
    if (x > r->n) {
        return srv_error_kc(e, KC_EUNSUPPORTED, "best_of",
                            "'best_of' > n is not supported (ranking several samples per "
                            "choice); send best_of = n (%d) or leave it out",
                            r->n);
    }
    struct eng_sampler_params *sp = &r->sampling;
    *sp = eng_sampler_default_params();
    if ((rc = get_num(root, "temperature", 0, false, 100, &sp->temperature, e)) != KC_OK ||
        (rc = get_num(root, "top_p", 0, true, 1, &sp->top_p, e)) != KC_OK ||
        (rc = get_num(root, "min_p", 0, false, 1, &sp->min_p, e)) != KC_OK ||
        (rc = get_num(root, "presence_penalty", -2, false, 2, &sp->presence_penalty, e)) != KC_OK ||
        (rc = get_num(root, "frequency_penalty", -2, false, 2, &sp->frequency_penalty, e)) !=
            KC_OK ||
        (rc = get_num(root, "repetition_penalty", 0, true, 10, &sp->repetition_penalty, e)) !=
            KC_OK) {
        return rc;
    }
    /* Below vLLM's sampling epsilon a temperature only produces overflowing logits. */
    if (sp->temperature < 1e-5f) {
        sp->temperature = 0.0f;
    }
    x = 0;
    if ((rc = get_int(root, "top_k", -1, INT32_MAX, &x, e)) != KC_OK) {
        return rc;
    }
    sp->top_k = x <= 0 ? 0 : (int)x;
    json_t *seed = json_object_get(root, "seed");
    if (seed != NULL && !json_is_null(seed)) {
        if (!json_is_integer(seed)) {
            return srv_error_kc(e, KC_EINVAL, "seed", "'seed' must be an integer, got %s",
                                type_name(seed));
        }
        sp->seed = (uint64_t)json_integer_value(seed);
        r->seed_given = true;
    }
    if ((rc = parse_logprobs(root, r, e)) != KC_OK) {
        return rc;
    }
    r->skip_special_tokens = true;
    if ((rc = get_bool(root, "stream", &r->stream, e)) != KC_OK ||
        (!r->chat && (rc = get_bool(root, "echo", &r->echo, e)) != KC_OK) ||
        (rc = get_bool(root, "ignore_eos", &r->ignore_eos, e)) != KC_OK ||
        (rc = get_bool(root, "skip_special_tokens", &r->skip_special_tokens, e)) != KC_OK ||
        (rc = get_bool(root, "include_stop_str_in_output", &r->include_stop_str_in_output, e)) !=
            KC_OK) {
        return rc;
    }
    bool spaces = true;
    if ((rc = get_bool(root, "spaces_between_special_tokens", &spaces, e)) != KC_OK) {
        return rc;
    }
    /* max_tokens 0 scores the prompt (echo, usually with logprobs: lm-eval loglikelihood). */
    if (r->max_tokens == 0 && !r->echo && !r->chat) {
        return srv_error_kc(e, KC_EINVAL, "max_tokens",
                            "'max_tokens' must be at least 1 (0 only with 'echo': score the "
                            "prompt)");
    }
    json_t *so = json_object_get(root, "stream_options");
    if (so != NULL && !json_is_null(so)) {
        if (!json_is_object(so)) {
            return srv_error_kc(e, KC_EINVAL, "stream_options",
                                "'stream_options' must be an object, got %s", type_name(so));
        }
        if (!r->stream) {
            return srv_error_kc(e, KC_EINVAL, "stream_options",
                                "'stream_options' is only allowed when 'stream' is true");
        }
        static const char *const so_fields[] = {"include_usage", "continuous_usage_stats"};
        bool cont = false;
        if ((rc = check_unknown(so, so_fields, 2, NULL, 0, lim, NULL, e)) != KC_OK ||
            (rc = get_bool(so, "include_usage", &r->include_usage, e)) != KC_OK ||
            (rc = get_bool(so, "continuous_usage_stats", &cont, e)) != KC_OK) {
            e->param[0] = '\0';
            snprintf(e->param, sizeof(e->param), "stream_options");
            return rc;
        }
    }
    json_t *user = json_object_get(root, "user");
    if (user != NULL && !json_is_null(user) && !json_is_string(user)) {
        return srv_error_kc(e, KC_EINVAL, "user", "'user' must be a string, got %s",
                            type_name(user));
    }
    json_t *suffix = json_object_get(root, "suffix");
    if (suffix != NULL && !json_is_null(suffix)) {
        return srv_error_kc(e, KC_EUNSUPPORTED, "suffix", "'suffix' is not supported");
    }
    if ((rc = parse_logit_bias(root, lim, r, e)) != KC_OK ||
        (rc = parse_stop_token_ids(root, lim, r, e)) != KC_OK) {
        return rc;
    }
    r->add_special_tokens = !r->chat; /* chat templates write their own BOS */
    if ((rc = get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) != KC_OK ||
        (rc = get_bool(root, "return_tokens_as_token_ids", &r->return_tokens_as_token_ids, e)) !=
            KC_OK) {
        return rc;
    }
    /* vLLM: k >= 1 keeps the last k prompt tokens, -1 keeps the last max_model_len. */
    x = 0;
    if ((rc = get_int(root, "truncate_prompt_tokens", -1, INT32_MAX, &x, e)) != KC_OK) {
        return rc;
    }
    if (x == 0 && json_is_integer(json_object_get(root, "truncate_prompt_tokens"))) {
        return srv_error_kc(e, KC_EINVAL, "truncate_prompt_tokens",
                            "'truncate_prompt_tokens' must be -1 or at least 1, got 0");
    }
    r->truncate_prompt_tokens = x < 0 || x > lim->max_context ? lim->max_context : (int)x;
    r->mode = lim->default_mode;
    json_t *mode = json_object_get(root, "prefill_mode");
    if (mode != NULL && !json_is_null(mode)) {
        if (sch_mode_parse(json_string_value(mode), &r->mode) != KC_OK) {
            return srv_error_kc(e, KC_EINVAL, "prefill_mode",
                                "'prefill_mode' must be \"predict\", \"full\" or \"auto\"");
        }
    }
    /* kvcast extra: predict mode's background refinement; absent or null: the server's
     * --refine. */
    json_t *refine = json_object_get(root, "refine");
    r->refine = SCH_REFINE_DEFAULT;
    if (refine != NULL && !json_is_null(refine)) {
        if (!json_is_boolean(refine)) {
            return srv_error_kc(e, KC_EINVAL, "refine", "'refine' must be a boolean, got %s",
                                type_name(refine));
        }
        r->refine = json_is_true(refine) ? SCH_REFINE_ON : SCH_REFINE_OFF;
    }
    return KC_OK;
}

/* What /v1/completions and chat share: every field but the prompt / the messages. */
static int parse_common(json_t *root, const struct srv_limits *lim, struct srv_completion_req *r,
                        struct srv_error *e) {
    int rc;
    if ((rc = parse_fields(root, lim, r, e)) != KC_OK) {
        return rc;
    }
    long long min_tokens = 0;
    const int most = r->max_tokens_auto ? lim->max_context : r->max_tokens;
    if ((rc = get_int(root, "min_tokens", 0, most, &min_tokens, e)) != KC_OK) {
        return rc;
    }
    r->min_tokens = (int)min_tokens;
    return parse_stop(root, lim, &r->stop, &r->n_stop, e);
}

int srv_completion_parse(const char *body, size_t len, const struct srv_limits *lim,
                         struct srv_completion_req *out, struct srv_error *e) {
    struct srv_completion_req r;
    memset(&r, 0, sizeof(r));
    int rc;
    json_t *root = json_parse_object(body, len, e);
    if (root == NULL) {
        return KC_EINVAL;
    }
    if ((rc = parse_common(root, lim, &r, e)) != KC_OK) {
        goto fail;
    }
    if ((rc = parse_prompts(root, lim, r.truncate_prompt_tokens > 0, &r.prompts, &r.n_prompts,
                            e)) != KC_OK) {
        goto fail;
    }
    if ((long long)r.n_prompts * r.n > lim->max_choices) {
        rc = srv_error_kc(e, KC_EINVAL, "n",
                          "%d prompts x n=%d = %lld choices; at most %d are allowed", r.n_prompts,
                          r.n, (long long)r.n_prompts * r.n, lim->max_choices);
        goto fail;
    }
    for (int i = 0; i < r.n_prompts; i++) {
        if (r.prompts[i].text != NULL) {
            continue; /* checked after tokenization */
        }
        srv_prompt_truncate(&r.prompts[i], r.truncate_prompt_tokens);
        if ((rc = srv_prompt_check(&r.prompts[i], i, r.max_tokens, lim, e)) != KC_OK) {
            goto fail;
        }
    }
    json_decref(root);
    *out = r;
    return KC_OK;
fail:
    json_decref(root);
    srv_completion_req_free(&r);
    return rc;
}

/* A JSON array field kept as compact text (messages, documents); absent or null: *out NULL
 * unless required. */
static int array_text(json_t *root, const char *key, bool required, char **out, size_t *len,
                      struct srv_error *e) {
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return required ? srv_error_kc(e, KC_EINVAL, key, "'%s' is required", key) : KC_OK;
    }
    if (!json_is_array(v)) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must be an array, got %s", key, type_name(v));
    }
    if (required && json_array_size(v) == 0) {
        return srv_error_kc(e, KC_EINVAL, key, "'%s' must not be empty", key);
    }
    char *t = json_dumps(v, JSON_COMPACT);
    if (t == NULL) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    *out = t;
    *len = strlen(t);
    return KC_OK;
}

int srv_chat_parse(const char *body, size_t len, const struct srv_limits *lim,
                   struct srv_completion_req *out, struct srv_error *e) {
    struct srv_completion_req r;
    memset(&r, 0, sizeof(r));
    r.chat = true;
    int rc;
    json_t *root = json_parse_object(body, len, e);
    if (root == NULL) {
        return KC_EINVAL;
    }
    r.add_generation_prompt = true;
    if ((rc = parse_common(root, lim, &r, e)) != KC_OK ||
        (rc = array_text(root, "messages", true, &r.messages, &r.messages_len, e)) != KC_OK ||
        (rc = array_text(root, "documents", false, &r.documents, &r.documents_len, e)) != KC_OK ||
        (rc = get_bool(root, "add_generation_prompt", &r.add_generation_prompt, e)) != KC_OK) {
        goto fail;
    }
    /* One prompt, the rendered conversation: server/chat.c fills its text. */
    r.prompts = calloc(1, sizeof(*r.prompts));
    if (r.prompts == NULL) {
        rc = srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    r.n_prompts = 1;
    json_decref(root);
    *out = r;
    return KC_OK;
fail:
    json_decref(root);
    srv_completion_req_free(&r);
    return rc;
}

void srv_completion_req_free(struct srv_completion_req *r) {
    free(r->messages);
    free(r->documents);
    prompts_free(r->prompts, r->n_prompts);
    for (int i = 0; i < r->n_stop; i++) {
        free(r->stop[i]);
    }
    free(r->stop);
    free(r->stop_token_ids);
    free(r->logit_bias);
    memset(r, 0, sizeof(*r));
}

size_t srv_prompt_max_ids(const struct srv_completion_req *r, const struct srv_limits *lim) {
    if (r->truncate_prompt_tokens > 0) {
        return 0;
    }
    const int room = lim->max_context - (r->max_tokens_auto ? 1 : r->max_tokens);
    return room > 0 ? (size_t)room : 1; /* room <= 0 is refused by srv_prompt_check anyway */
}

void srv_prompt_fill_max_tokens(struct srv_completion_req *r, const struct srv_prompt *p,
                                const struct srv_limits *lim) {
    if (r->max_tokens_auto) {
        const int room = lim->max_context - p->n_ids;
        r->max_tokens = room > 0 ? room : 1;
    }
}

void srv_prompt_truncate(struct srv_prompt *p, int k) {
    if (k > 0 && p->n_ids > k) {
        memmove(p->ids, p->ids + (p->n_ids - k), (size_t)k * sizeof(int32_t));
        p->n_ids = k;
    }
}

int srv_prompt_check(const struct srv_prompt *p, int index, int max_tokens,
                     const struct srv_limits *lim, struct srv_error *e) {
    if (p->n_ids <= 0) {
        return srv_error_kc(e, KC_EINVAL, "prompt", "prompt %d has no tokens", index);
    }
    for (int i = 0; i < p->n_ids; i++) {
        if (!(0 <= p->ids[i] && p->ids[i] < lim->vocab_size)) {
            return srv_error_kc(e, KC_ERANGE, "prompt",
                                "prompt %d: token id %d at position %d is outside the "
                                "vocabulary [0, %d)",
                                index, p->ids[i], i, lim->vocab_size);
        }
    }
    long long total = (long long)p->n_ids + max_tokens;
    if (total > lim->max_context) {
        return srv_error_kc(e, KC_ECONTEXT, "prompt",
                            "This model's maximum context length is %d tokens. However, you "
                            "requested %lld tokens (%d in the prompt, %d in the completion). "
                            "Please reduce the length of the prompt or completion.",
                            lim->max_context, total, p->n_ids, max_tokens);
    }
    return KC_OK;
}

int srv_tokenize_parse(const char *body, size_t len, const struct srv_limits *lim, char **text,
                       size_t *text_len, bool *add_special, struct srv_error *e) {
    static const char *const known[] = {"model", "prompt", "add_special_tokens"};
    json_t *root = json_parse_object(body, len, e);
    int rc;
    if (root == NULL) {
        return KC_EINVAL;
    }
    bool special = true;
    if ((rc = check_unknown(root, known, 3, NULL, 0, lim, NULL, e)) != KC_OK ||
        (rc = check_model(root, lim, e)) != KC_OK ||
        (rc = get_bool(root, "add_special_tokens", &special, e)) != KC_OK) {
        goto fail;
    }
    json_t *p = json_object_get(root, "prompt");
    if (!json_is_string(p)) {
        rc = srv_error_kc(e, KC_EINVAL, "prompt", "'prompt' must be a string");
        goto fail;
    }
    size_t n = json_string_length(p);
    if (n > SRV_MAX_PROMPT_BYTES) {
        rc = srv_error_kc(e, KC_EINVAL, "prompt", "'prompt' is longer than %zu bytes",
                          SRV_MAX_PROMPT_BYTES);
        goto fail;
    }
    char *t = malloc(n + 1);
    if (t == NULL) {
        rc = srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    memcpy(t, json_string_value(p), n + 1);
    *text = t;
    *text_len = n;
    *add_special = special;
    rc = KC_OK;
fail:
    json_decref(root);
    return rc;
}

int srv_detokenize_parse(const char *body, size_t len, const struct srv_limits *lim, int32_t **ids,
                         int *n_ids, struct srv_error *e) {
    static const char *const known[] = {"model", "tokens"};
    json_t *root = json_parse_object(body, len, e);
    int rc;
    if (root == NULL) {
        return KC_EINVAL;
    }
    if ((rc = check_unknown(root, known, 2, NULL, 0, lim, NULL, e)) != KC_OK ||
        (rc = check_model(root, lim, e)) != KC_OK) {
        goto fail;
    }
    json_t *t = json_object_get(root, "tokens");
    if (!json_is_array(t)) {
        rc = srv_error_kc(e, KC_EINVAL, "tokens", "'tokens' must be an array of token ids");
        goto fail;
    }
    size_t n = json_array_size(t);
    int32_t *out = malloc((n ? n : 1) * sizeof(int32_t));
    if (out == NULL) {
        rc = srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(t, i);
        if (!json_is_integer(x) ||
            !(0 <= json_integer_value(x) && json_integer_value(x) < lim->vocab_size)) {
            free(out);
            rc = srv_error_kc(e, KC_ERANGE, "tokens", "tokens[%zu] must be a token id in [0, %d)",
                              i, lim->vocab_size);
            goto fail;
        }
        out[i] = (int32_t)json_integer_value(x);
    }
    *ids = out;
    *n_ids = (int)n;
    rc = KC_OK;
fail:
    json_decref(root);
    return rc;
}
