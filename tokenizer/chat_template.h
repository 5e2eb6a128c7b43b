/*
 * chat_template.h — a model's chat template: where it comes from, rendering a conversation into
 * a prompt with it, and tokenizing that prompt the way Hugging Face's apply_chat_template does.
 *
 * Place in the data flow: `kvcast serve` loads the template once with the tokenizer (serve.c);
 * each POST /v1/chat/completions renders its messages on the threadpool (server/chat.c) and
 * encodes the result with eng_chat_encode before the request goes to the scheduler. The CLI's
 * `kvcast chat-template` is a thin shell around the same calls, so it prints exactly the prompt
 * the server would generate from.
 *
 * Where the template comes from (first found wins):
 *   1. an explicit file (`--chat-template FILE`);
 *   2. tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"}
 *      objects of which the one named "default" is used (none named so: KC_EFORMAT);
 *   3. chat_template.jinja in the tokenizer's directory.
 * None of them: KC_ENOTFOUND, with a message that says where it looked and how to give one.
 *
 * What a template sees (the globals of the Jinja context, as transformers passes them):
 *   messages               the request's messages after the checks below;
 *   add_generation_prompt  bool;
 *   bos_token, eos_token, unk_token, pad_token, sep_token, cls_token, mask_token: strings
 *                          from tokenizer_config.json (a string or {"content": ...}), only
 *                          those it sets; additional_special_tokens the same way, as a list;
 *   tools, documents       as given, else null (transformers passes None: `tools is defined`
 *                          is always true, `tools is not none` says whether they were given);
 *   strftime_now(fmt)      the Jinja engine's (tokenizer/jinja.h).
 * Messages are checked before rendering (KC_EINVAL naming the field, e.g. "messages[2].role"):
 * a non-empty array of objects; role one of system, user, assistant, tool; content a string,
 * a list of {"type": "text", "text": ...} parts (another part type is refused: kvcast serves
 * text-only models), or null / absent for an assistant message. Other message fields (name,
 * tool_calls, tool_call_id) pass through unchanged.
 * Content parts, as vLLM does: a template that loops over a message's content (`for x in
 * message['content']`, Gemma 3 style) gets the parts list; any other template gets the text
 * parts joined with "\n" as one string, which is what string-only templates (Llama 3, Qwen 3)
 * can render.
 *
 * Tokenizing (eng_chat_encode): special-token text in the rendered prompt ("<|eot_id|>") is
 * parsed as the special token, and no special tokens are added (HF: apply_chat_template
 * tokenizes with add_special_tokens=False), since templates write their own BOS. A caller that
 * asks for the post-processor's tokens anyway (vLLM's chat `add_special_tokens: true`) still
 * never gets two BOS: when the rendered text already starts with the BOS text it is encoded
 * without them.
 *
 * Ownership: eng_chat_load returns a template owned by the caller (eng_chat_free). Render
 * returns a malloc'd NUL-terminated prompt, encode a malloc'd id array; the caller frees both.
 * Thread rules: a loaded template is immutable; render and encode may run on any number of
 * threads at once (the server renders on libuv's threadpool).
 * Limits: templates up to 1 MiB, tokenizer_config.json up to 8 MiB, messages/tools/documents
 * JSON up to ENG_TOK_MAX_TEXT bytes; rendering runs under the Jinja engine's step and depth
 * limits with its output capped at ENG_TOK_MAX_TEXT (KC_ERANGE beyond).
 */
#ifndef ENG_CHAT_TEMPLATE_H
#define ENG_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "tokenizer/tokenizer.h"

struct eng_chat;

/* Finds and parses the chat template of the tokenizer at tok_path (a directory holding
 * tokenizer_config.json, or a tokenizer.json path whose directory does), or the file
 * template_path when it is neither NULL nor "" (the config is still read for bos_token and
 * the like). On success *out owns a new template. On failure *out is untouched: KC_ENOTFOUND
 * when no template exists (err says where it looked), KC_EFORMAT for a template that does not
 * parse ("FILE: template:LINE:COL: ...") or a bad tokenizer_config.json, KC_EIO, KC_ERANGE,
 * KC_ENOMEM. */
int eng_chat_load(const char *tok_path, const char *template_path, struct eng_chat **out,
                  struct kc_error *err);

/* Like eng_chat_load from memory: src (len bytes) is the template text, config_json (may be
 * NULL) the tokenizer_config.json text for the special-token strings; origin names the
 * template in messages and in eng_chat_origin. */
int eng_chat_load_buffer(const char *origin, const char *src, size_t len, const char *config_json,
                         size_t config_len, struct eng_chat **out, struct kc_error *err);

/* Frees a template; NULL is a no-op. */
void eng_chat_free(struct eng_chat *c);

/* Where the template came from ("models/x/tokenizer_config.json (chat_template)", a file path),
 * for logs; valid while c lives. */
const char *eng_chat_origin(const struct eng_chat *c);

/* True when the template loops over message content, so it gets content parts as a list. */
bool eng_chat_wants_parts(const struct eng_chat *c);

/* One conversation to render. messages is required; tools and documents may be NULL (absent
 * from the template's context). Lengths are in bytes; the texts need not be NUL-terminated. */
struct eng_chat_input {
    const char *messages; /* JSON array of message objects */
    size_t messages_len;
    const char *tools; /* JSON array, or NULL */
    size_t tools_len;
    const char *documents; /* JSON array, or NULL */
    size_t documents_len;
    bool add_generation_prompt;
};

/* Checks in's messages (see the top of this file) and renders the template over them. On
 * success *out is a malloc'd NUL-terminated prompt of *out_len bytes. Fails with KC_EINVAL for
 * bad messages/tools/documents (the message names the field) and for the template's runtime
 * errors, raise_exception(msg) included (err->msg is then exactly msg), KC_ERANGE when a
 * render limit is hit, KC_ENOMEM. */
int eng_chat_render(const struct eng_chat *c, const struct eng_chat_input *in, char **out,
                    size_t *out_len, struct kc_error *err);

/* Tokenizes a rendered prompt as described at the top of this file: special-token text is
 * parsed as special tokens; add_special adds the post-processor's tokens unless the text
 * already starts with the BOS text. max_ids as eng_tok_encode_max (0: no limit). Same results
 * and errors as eng_tok_encode_max. */
int eng_chat_encode(const struct eng_tok *tok, const char *text, size_t len, bool add_special,
                    size_t max_ids, int32_t **ids_out, size_t *n_out, struct kc_error *err);

#endif /* ENG_CHAT_TEMPLATE_H */
