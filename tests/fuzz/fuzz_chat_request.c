/*
 * libFuzzer target for the /v1/chat/completions path up to the prompt text: the request
 * validator (srv_chat_parse) and, for a body it accepts, the message checks and the rendering
 * of the embedded tiny pair's chat template (eng_chat_render). Any body must give a verdict
 * (a prompt, or an error naming the field), never a crash, leak or hang.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/errors.h"
#include "server/request.h"
#include "tokenizer/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* models/tiny/base/chat_template.jinja, plus a loop over content parts (the list path). */
static const char tmpl[] =
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}System"
    "{% elif message['role'] == 'user' %}User{% elif message['role'] == 'assistant' %}Assistant"
    "{% else %}Tool{% endif %}: {% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    "{% if documents is defined %}{{ documents | tojson }}{% endif %}";
static const char config[] = "{\"bos_token\": \"<|endoftext|>\", \"eos_token\": "
                             "{\"content\": \"<|endoftext|>\"}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static struct eng_chat *chat;
    if (chat == NULL && eng_chat_load_buffer("fuzz", tmpl, strlen(tmpl), config, strlen(config),
                                             &chat, NULL) != 0) {
        abort(); /* a fixed template that must parse */
    }
    const struct srv_limits lim = {
        .model_id = "tiny",
        .vocab_size = 4096,
        .max_context = 2048,
        .max_choices = 4,
        .max_stop = 4,
        .max_stop_bytes = 64,
        .strict = (size & 1) != 0,
        .default_mode = 0,
    };
    struct srv_completion_req req;
    struct srv_error e;
    if (srv_chat_parse((const char *)data, size, &lim, &req, &e) != 0) {
        return 0;
    }
    const struct eng_chat_input in = {
        .messages = req.messages,
        .messages_len = req.messages_len,
        .documents = req.documents,
        .documents_len = req.documents_len,
        .add_generation_prompt = req.add_generation_prompt,
    };
    char *out = NULL;
    size_t len = 0;
    struct kc_error err;
    if (eng_chat_render(chat, &in, &out, &len, &err) == 0) {
        free(out);
    }
    srv_completion_req_free(&req);
    return 0;
}
