/*
 * fuzz_jinja.c — libFuzzer target for the Jinja chat-template engine (tokenizer/jinja.h):
 * parse any template, then render it. Input: template bytes, optionally followed by a NUL byte
 * and a JSON context; without one, a fixed chat context (messages with string and list-of-parts
 * content, tools, add_generation_prompt, special tokens) is used. The only outcomes allowed are
 * the documented ones (0, KC_EFORMAT from parsing, KC_EINVAL/KC_ERANGE/KC_ENOMEM from
 * rendering) with a message on failure and a NUL-terminated output of the stated length on
 * success; ASan/UBSan/LeakSanitizer catch the rest. Limits are small so each input runs fast.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char DEFAULT_CTX[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"Hi \\u4f60\\u597d \\ud83c\\udf89\"}, {\"role\": \"assistant\", \"content\": "
    "null, \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", "
    "\"arguments\": {\"x\": 1.5, \"y\": [true, null]}}}]}, {\"role\": \"tool\", \"content\": "
    "\"42\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \" parts \"}]}], "
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": "
    "\"d\", \"parameters\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": "
    "\"number\"}}}}}], \"documents\": null, \"add_generation_prompt\": true, \"bos_token\": "
    "\"<s>\", \"eos_token\": \"</s>\", \"n\": 3, \"s\": \"str\", \"d\": {\"a\": 1}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *src = (const char *)data;
    size_t len = size;
    const char *ctx = DEFAULT_CTX;
    size_t ctx_len = sizeof(DEFAULT_CTX) - 1;
    const char *nul = memchr(data, 0, size);
    if (nul != NULL) {
        len = (size_t)(nul - src);
        ctx = nul + 1;
        ctx_len = size - len - 1;
    }
    struct eng_jinja *t = NULL;
    struct kc_error err = {0};
    int rc = eng_jinja_parse(src, len, &t, &err);
    if (rc != 0) {
        if ((rc != KC_EFORMAT && rc != KC_ENOMEM) || err.msg[0] == 0) {
            abort();
        }
        return 0;
    }
    struct eng_jinja_opts opts = {
        .max_output = 1 << 16, .max_steps = 20000, .max_depth = 16, .now_unix = 1733494567};
    char *out = NULL;
    size_t out_len = 0;
    rc = eng_jinja_render(t, ctx, ctx_len, &opts, &out, &out_len, &err);
    if (rc == 0) {
        if (out == NULL || strlen(out) > out_len || out[out_len] != 0 || out_len > (1 << 16)) {
            abort();
        }
        free(out);
    } else if ((rc != KC_EINVAL && rc != KC_ERANGE && rc != KC_ENOMEM) || err.msg[0] == 0) {
        abort();
    }
    eng_jinja_free(t);
    return 0;
}
