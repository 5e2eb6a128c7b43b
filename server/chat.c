/*
 * chat.c — what POST /v1/chat/completions adds to a completion: the model's chat template
 * (found at start-up) and the rendering of a request's messages into its prompt.
 *
 * Place in the data flow: srv_chat_start (completions.c) -> prepare job on the threadpool:
 * srv_chat_parse (request.c) -> srv_chat_render (here: tokenizer/chat_template.h) -> the
 * completion's own tokenize, submit and answer, whose chat shapes live in completions.c
 * (its DESIGN 9).
 *
 * DESIGN
 *   1. The template is loaded once, with the tokenizer, on the loader thread. A model whose
 *      template is missing or does not parse still serves /v1/completions; every chat request
 *      then gets a 400 that says why and how to give one. An explicit --chat-template that
 *      fails stops the start-up: the operator asked for it.
 *   2. Rendering runs on the threadpool (a template over a 4 MiB conversation is not free) and
 *      reads only the immutable template.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"

int srv_chat_load(struct srv *s, const char *tok_path, struct kc_error *err) {
    const char *file = s->cfg.chat_template;
    struct kc_error cerr = {0};
    int rc = eng_chat_load(tok_path, file, &s->models.chat, &cerr);
    if (rc == KC_OK) {
        KC_INFO("chat template %s", eng_chat_origin(s->models.chat));
        return KC_OK;
    }
    if (file[0] != '\0') {
        *err = cerr;
        kc_error_prefix(err, "--chat-template");
        return rc;
    }
    if (rc == KC_ENOTFOUND) {
        /* cerr.msg is "no chat template: <where it looked>": say that part once. */
        static const char lead[] = "no chat template: ";
        const char *where = cerr.msg;
        if (strncmp(where, lead, sizeof(lead) - 1) == 0) {
            where += sizeof(lead) - 1;
        }
        snprintf(s->models.chat_missing, sizeof(s->models.chat_missing),
                 "The model '%.100s' has no chat template (%.220s), so /v1/chat/completions "
                 "cannot render messages. Start the server with --chat-template FILE (a Jinja "
                 "chat template), or send a prompt to /v1/completions.",
                 s->models.id, where);
        KC_INFO("%s: /v1/chat/completions answers 400 (--chat-template FILE gives one)", cerr.msg);
        return KC_OK;
    }
    if (rc == KC_ENOMEM) {
        *err = cerr;
        return rc;
    }
    snprintf(s->models.chat_missing, sizeof(s->models.chat_missing),
             "The model '%.100s' has a chat template that cannot be used: %.220s. Start the "
             "server with --chat-template FILE, or send a prompt to /v1/completions.",
             s->models.id, cerr.msg);
    KC_WARN("chat template unusable, /v1/chat/completions answers 400: %s", cerr.msg);
    return KC_OK;
}

int srv_chat_render(const struct srv *s, struct srv_completion_req *r, struct srv_error *e) {
    if (s->models.tok == NULL) {
        return srv_error_kc(e, KC_EINVAL, "messages",
                            "this model has no tokenizer, so it cannot serve chat; send token "
                            "ids to /v1/completions");
    }
    if (s->models.chat == NULL) {
        return srv_error_kc(e, KC_EINVAL, "messages", "%s", s->models.chat_missing);
    }
    const struct eng_chat_input in = {
        .messages = r->messages,
        .messages_len = r->messages_len,
        .documents = r->documents,
        .documents_len = r->documents_len,
        .add_generation_prompt = r->add_generation_prompt,
    };
    struct kc_error kerr = {0};
    char *text = NULL;
    size_t len = 0;
    int rc = eng_chat_render(s->models.chat, &in, &text, &len, &kerr);
    if (rc == KC_ENOMEM) {
        return srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
    }
    if (rc != KC_OK) {
        /* Bad messages, a template error, raise_exception(msg) (kerr.msg is msg), a limit:
         * all come from what the client sent. */
        return srv_error_kc(e, KC_EINVAL, "messages", "%s", kerr.msg);
    }
    if (len == 0) {
        free(text);
        return srv_error_kc(e, KC_EINVAL, "messages",
                            "the chat template rendered these messages as an empty prompt");
    }
    struct srv_prompt *p = &r->prompts[0];
    free(p->text);
    p->text = text;
    p->text_len = len;
    return KC_OK;
}
