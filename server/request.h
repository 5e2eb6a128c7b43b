/*
 * request.h — parse and validate the JSON body of POST /v1/completions (vLLM's field set)
 * into a plain struct, before anything is allocated for generation.
 *
 * Place in the data flow: HTTP body -> srv_completion_parse -> (tokenize string prompts) ->
 * sch_submit per choice. Nothing here touches sockets, the tokenizer or the scheduler, so the
 * whole validator is unit-testable and fuzzable on its own.
 *
 * Rules (RELIABILITY section C): jansson json_loadb with JSON_REJECT_DUPLICATES (bodies are
 * not NUL-terminated; duplicate keys are a 400); integers must be JSON integers (1.0 is not);
 * every number range check is NaN-safe; fan-out (prompts x n, stop strings, logprobs) is
 * bounded; unknown fields are a 400 naming the field in strict mode.
 *
 * Ownership: a parsed request owns its prompts and stop strings; free with
 * srv_completion_req_free. Thread rules: pure; any thread.
 */
#ifndef SRV_REQUEST_H
#define SRV_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "server/errors.h"

/* One prompt: either text (to be tokenized) or token ids. */
struct srv_prompt {
    char *text; /* NUL-terminated UTF-8, or NULL when ids were given */
    size_t text_len;
    int32_t *ids; /* token ids (given, or filled in by the tokenizer) */
    int n_ids;
};

/* What the validator needs to know about the serving side. */
struct srv_limits {
    const char *model_id; /* the only accepted "model" value (absent/null also accepted) */
    int vocab_size;       /* token ids must be in [0, vocab_size) */
    int max_context;      /* prompt + max_tokens limit */
    int max_choices;      /* prompts x n */
    int max_stop;         /* stop strings */
    int max_stop_bytes;   /* bytes per stop string */
    bool strict;          /* unknown fields are errors */
    int default_mode;     /* enum sch_prefill_mode used when prefill_mode is absent */
};

#define SRV_DEFAULT_MAX_TOKENS 16
#define SRV_MAX_LOGPROBS 20
#define SRV_MAX_PROMPT_BYTES ((size_t)8 << 20)

struct srv_completion_req {
    struct srv_prompt *prompts;
    int n_prompts;
    int n; /* choices per prompt */
    int max_tokens;
    struct eng_sampler_params sampling;
    bool seed_given;
    char **stop;
    int n_stop;
    bool stream;
    bool include_usage;
    int logprobs; /* -1: none; 0..SRV_MAX_LOGPROBS alternatives (+ the token itself) */
    bool echo;    /* with logprobs: prompt logprobs too (the first null) */
    bool ignore_eos;
    bool skip_special_tokens;
    bool include_stop_str_in_output;
    int mode; /* enum sch_prefill_mode */
};

/* Parses and validates a body of len bytes. On success *out owns everything (free with
 * srv_completion_req_free); on failure *out is untouched and e names the field and problem
 * (status 400, or 404 for an unknown model). Returns 0 or a KC_E* code. */
int srv_completion_parse(const char *body, size_t len, const struct srv_limits *lim,
                         struct srv_completion_req *out, struct srv_error *e);

void srv_completion_req_free(struct srv_completion_req *r);

/* Checks ids against the vocabulary and prompt + max_tokens against the context (after
 * string prompts were tokenized): KC_ERANGE / KC_ECONTEXT with vLLM-style messages. */
int srv_prompt_check(const struct srv_prompt *p, int index, int max_tokens,
                     const struct srv_limits *lim, struct srv_error *e);

/* Parses the body of POST /tokenize ({"prompt": str, "add_special_tokens": bool, "model"})
 * or POST /detokenize ({"tokens": [ids], "model"}). Strings/arrays are malloc'd. */
int srv_tokenize_parse(const char *body, size_t len, const struct srv_limits *lim, char **text,
                       size_t *text_len, bool *add_special, struct srv_error *e);
int srv_detokenize_parse(const char *body, size_t len, const struct srv_limits *lim, int32_t **ids,
                         int *n_ids, struct srv_error *e);

/* Parses a JSON body with the server's rules (duplicates rejected, root must be an object);
 * returns a new reference or NULL with e filled (400). Declared here for routes that take
 * JSON; the return type is jansson's json_t. */
struct json_t;
struct json_t *srv_json_parse_object(const char *body, size_t len, struct srv_error *e);

#endif /* SRV_REQUEST_H */
