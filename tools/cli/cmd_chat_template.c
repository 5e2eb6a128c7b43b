/*
 * cmd_chat_template.c — `kvcast chat-template`: renders a conversation with a model's chat
 * template and prints the prompt (or its token ids), exactly as `kvcast serve` would build it
 * for POST /v1/chat/completions. For debugging templates and for tests.
 *
 * Place in the data flow: a thin shell over tokenizer/chat_template.h (the server's chat path
 * calls the same eng_chat_render and eng_chat_encode).
 * Exit codes: 0 ok, 1 the template, the messages or the tokenizer failed, 2 bad command line.
 */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kc.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: kvcast chat-template --tokenizer DIR --messages FILE.json [options]\n"
        "  --tokenizer P            a model directory (tokenizer_config.json, and\n"
        "                           chat_template.jinja when the config has no template)\n"
        "                           or a tokenizer.json file\n"
        "  --messages F             the conversation: a JSON array of messages, or an object\n"
        "                           {\"messages\": [...], \"tools\": [...], \"documents\": [...],\n"
        "                           \"add_generation_prompt\": bool}\n"
        "  --add-generation-prompt  end with the template's assistant prompt\n"
        "  --template F             a Jinja chat template file instead of the model's\n"
        "  --ids                    print the prompt's token ids (comma-separated) instead\n"
        "                           of its text: special-token text as special tokens, no\n"
        "                           BOS added (what the server generates from)\n"
        "  --json                   print {\"prompt\": ..., \"ids\": [...], \"template\": ...}\n"
        "Without --ids or --json the prompt is printed as is, with no newline added.\n");
}

/* The parts of the --messages file, as JSON texts (borrowed from a parsed root). */
struct conv {
    char *messages;
    char *tools;
    char *documents;
    bool add_generation_prompt;
};

static void conv_free(struct conv *c) {
    free(c->messages);
    free(c->tools);
    free(c->documents);
}

static int dump_member(json_t *root, const char *key, char **out) {
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    *out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return *out != NULL ? KC_OK : KC_ENOMEM;
}

static int read_conv(const char *path, struct conv *c) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        fprintf(stderr, "kvcast chat-template: %s:%d:%d: %s\n", path, jerr.line, jerr.column,
                jerr.text);
        return 1;
    }
    int rc = KC_OK;
    if (json_is_array(root)) {
        c->messages = json_dumps(root, JSON_COMPACT);
        rc = c->messages != NULL ? KC_OK : KC_ENOMEM;
    } else if (json_is_object(root)) {
        json_t *agp = json_object_get(root, "add_generation_prompt");
        if (json_is_true(agp)) {
            c->add_generation_prompt = true;
        }
        if (json_object_get(root, "messages") == NULL) {
            fprintf(stderr, "kvcast chat-template: %s: the object has no \"messages\"\n", path);
            json_decref(root);
            return 1;
        }
        if ((rc = dump_member(root, "messages", &c->messages)) == KC_OK &&
            (rc = dump_member(root, "tools", &c->tools)) == KC_OK) {
            rc = dump_member(root, "documents", &c->documents);
        }
    } else {
        fprintf(stderr,
                "kvcast chat-template: %s: expected a JSON array of messages or an object with "
                "\"messages\"\n",
                path);
        json_decref(root);
        return 1;
    }
    json_decref(root);
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast chat-template: out of memory\n");
        return 1;
    }
    return 0;
}

static int print_ids(const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        printf(i ? ",%d" : "%d", ids[i]);
    }
    printf("\n");
    return 0;
}

static int print_json(const char *prompt, size_t len, const int32_t *ids, size_t n,
                      const char *origin) {
    json_t *o = json_object();
    json_t *jids = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(jids, json_integer(ids[i]));
    }
    json_t *p = json_stringn(prompt, len);
    json_object_set_new(o, "prompt", p != NULL ? p : json_null());
    json_object_set_new(o, "ids", jids);
    json_object_set_new(o, "template", json_string(origin));
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (s == NULL) {
        fprintf(stderr, "kvcast chat-template: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

int kc_cmd_chat_template(int argc, char **argv) {
    const char *tok_path = NULL, *messages = NULL, *tmpl = NULL;
    bool agp = false, ids_out = false, json = false;
    struct kc_args a;
    kc_args_init(&a, "kvcast chat-template", argc, argv);
    while (kc_args_next(&a)) {
        if (kc_args_help(&a)) {
            usage(stdout);
            return 0;
        } else if (kc_args_str(&a, "--tokenizer", &tok_path) ||
                   kc_args_str(&a, "--messages", &messages) ||
                   kc_args_str(&a, "--template", &tmpl)) {
        } else if (kc_args_flag(&a, "--add-generation-prompt")) {
            agp = true;
        } else if (kc_args_flag(&a, "--ids")) {
            ids_out = true;
        } else if (kc_args_flag(&a, "--json")) {
            json = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    if (tok_path == NULL || messages == NULL) {
        fprintf(stderr, "kvcast chat-template: --tokenizer and --messages are required\n");
        usage(stderr);
        return 2;
    }
    struct conv conv = {0};
    if (read_conv(messages, &conv) != 0) {
        conv_free(&conv);
        return 1;
    }
    int ret = 1;
    struct kc_error err = {0};
    struct eng_chat *chat = NULL;
    struct eng_tok *tok = NULL;
    char *prompt = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if (eng_chat_load(tok_path, tmpl, &chat, &err) != KC_OK) {
        fprintf(stderr, "kvcast chat-template: %s\n", err.msg);
        goto out;
    }
    const struct eng_chat_input in = {
        .messages = conv.messages,
        .messages_len = strlen(conv.messages),
        .tools = conv.tools,
        .tools_len = conv.tools ? strlen(conv.tools) : 0,
        .documents = conv.documents,
        .documents_len = conv.documents ? strlen(conv.documents) : 0,
        .add_generation_prompt = agp || conv.add_generation_prompt,
    };
    if (eng_chat_render(chat, &in, &prompt, &len, &err) != KC_OK) {
        fprintf(stderr, "kvcast chat-template: %s\n", err.msg);
        goto out;
    }
    if (ids_out || json) {
        if (eng_tok_load(tok_path, &tok, &err) != KC_OK ||
            eng_chat_encode(tok, prompt, len, false, 0, &ids, &n, &err) != KC_OK) {
            fprintf(stderr, "kvcast chat-template: %s\n", err.msg);
            goto out;
        }
    }
    if (json) {
        ret = print_json(prompt, len, ids, n, eng_chat_origin(chat));
    } else if (ids_out) {
        ret = print_ids(ids, n);
    } else {
        ret = fwrite(prompt, 1, len, stdout) == len ? 0 : 1;
    }
out:
    free(ids);
    free(prompt);
    eng_tok_free(tok);
    eng_chat_free(chat);
    conv_free(&conv);
    return ret;
}
