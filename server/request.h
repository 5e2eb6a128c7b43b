/*
 * request.h — parse and validate the JSON body of POST /v1/completions and POST
 * /v1/chat/completions (vLLM's field sets) into a plain struct, before anything is allocated
 * for generation.
 *
 * Place in the data flow: HTTP body -> srv_completion_parse -> (tokenize string prompts) ->
 * sch_submit per choice; for chat, srv_chat_parse -> (render the messages with the chat
 * template, server/chat.c) -> tokenize -> the same. Nothing here touches sockets, the tokenizer or
 * a running scheduler (it only shares the scheduler's prefill-mode enum and its names), so the
 * whole validator is unit-testable and fuzzable on its own.
 *
 * Rules (RELIABILITY section C): jansson json_loadb with JSON_REJECT_DUPLICATES (bodies are
 * not NUL-terminated; duplicate keys are a 400); integers must be JSON integers (1.0 is not);
 * every number range check is NaN-safe; fan-out (prompts x n, stop strings, logprobs) is
 * bounded. Unknown fields are ignored and reported back in the parsed request (the server
 * warns once per name and counts them); in strict mode (--strict-fields) they are a 400
 * naming the field. Fields whose silent omission would change what the client gets
 * (response_format other than text, guided_*, use_beam_search, best_of > n) are a 400
 * "not supported" naming the field, in either mode.
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
#include "scheduler/scheduler.h"
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
    enum sch_prefill_mode default_mode; /* used when prefill_mode is absent */
};

/* One logit_bias entry: bias added to the logit of token id before sampling. Same layout as
 * struct sch_logit_bias (scheduler/scheduler.h); kept separate so the validator links
 * without the scheduler. */
struct srv_logit_bias {
    int32_t id;
    float bias;
};

#define SRV_DEFAULT_MAX_TOKENS 16
#define SRV_MAX_LOGPROBS 20
#define SRV_MAX_PROMPT_BYTES ((size_t)8 << 20)
#define SRV_MAX_STOP_TOKEN_IDS 64 /* stop_token_ids entries at most */
#define SRV_MAX_LOGIT_BIAS 1024   /* logit_bias entries at most */
#define SRV_UNKNOWN_REPORT 8      /* unknown field names a parsed request reports */
#define SRV_UNKNOWN_NAME_MAX 64   /* bytes of a reported name, NUL included */

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
    enum sch_prefill_mode mode;
    enum sch_refine refine; /* "refine": true|false; absent: SCH_REFINE_DEFAULT (--refine) */
    /* vLLM extras */
    int32_t *stop_token_ids; /* generating one of these ends the choice (finish "stop") */
    int n_stop_token_ids;
    int min_tokens; /* EOS, stop_token_ids and stop strings are ignored before this many */
    struct srv_logit_bias *logit_bias;
    int n_logit_bias;
    bool add_special_tokens;         /* text prompts get the tokenizer's BOS etc. (default) */
    int truncate_prompt_tokens;      /* 0: off; k > 0: keep the last k prompt tokens */
    bool return_tokens_as_token_ids; /* logprobs tokens as "token_id:N" */
    /* POST /v1/chat/completions (srv_chat_parse): the conversation that server/chat.c renders
     * with the model's chat template into prompts[0].text (prompts[0] starts empty). */
    bool chat;
    char *messages; /* JSON text of "messages" (checked in full when rendered) */
    size_t messages_len;
    char *documents; /* JSON text of "documents", NULL when absent */
    size_t documents_len;
    bool add_generation_prompt;
    bool max_tokens_auto; /* chat without max_tokens: the rest of the context (vLLM, OpenAI) */
    /* Unknown top-level fields (ignored): their count and the first names. */
    int n_unknown;
    char unknown[SRV_UNKNOWN_REPORT][SRV_UNKNOWN_NAME_MAX];
};

/* Parses and validates a body of len bytes. On success *out owns everything (free with
 * srv_completion_req_free); on failure *out is untouched and e names the field and problem
 * (status 400, or 404 for an unknown model). Returns 0 or a KC_E* code. */
int srv_completion_parse(const char *body, size_t len, const struct srv_limits *lim,
                         struct srv_completion_req *out, struct srv_error *e);

void srv_completion_req_free(struct srv_completion_req *r);

/* Parses and validates a POST /v1/chat/completions body: the fields of /v1/completions that
 * apply to chat (sampling, stop, n, seed, stream, stream_options, prefill_mode, refine and
 * vLLM's extras), plus messages (kept as JSON text, req.chat set; its shape is checked when it
 * is rendered), max_completion_tokens (wins over max_tokens; neither: max_tokens_auto),
 * logprobs (a boolean) with top_logprobs (0..20), add_generation_prompt (default true),
 * documents, and add_special_tokens (default false: templates write their own BOS). tools,
 * tool_choice, functions, function_call, response_format other than text, a per-request
 * chat_template and continue_final_message are a 400 "not supported" naming the field. Same
 * contract as srv_completion_parse. */
int srv_chat_parse(const char *body, size_t len, const struct srv_limits *lim,
                   struct srv_completion_req *out, struct srv_error *e);

/* The most prompt tokens text prompt `p` of r may have: prompt + max_tokens must fit the
 * context, unless truncate_prompt_tokens will cut the prompt afterwards (then 0: no limit).
 * The tokenizer stops as soon as this many are exceeded, so a huge prompt fails fast. */
size_t srv_prompt_max_ids(const struct srv_completion_req *r, const struct srv_limits *lim);

/* For a chat request without max_tokens (max_tokens_auto), once its prompt is tokenized: the
 * rest of the context (at least 1; srv_prompt_check then refuses a prompt that fills it). */
void srv_prompt_fill_max_tokens(struct srv_completion_req *r, const struct srv_prompt *p,
                                const struct srv_limits *lim);

/* Applies truncate_prompt_tokens to p (keeps the last k ids). */
void srv_prompt_truncate(struct srv_prompt *p, int k);

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

#endif /* SRV_REQUEST_H */
