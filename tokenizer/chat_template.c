/*
 * chat_template.c — finds a model's chat template, checks a conversation, renders it with the
 * Jinja engine (tokenizer/jinja.h) and tokenizes the result. See chat_template.h.
 *
 * DESIGN
 *   1. The template is parsed once, at load; a render only builds the context JSON and runs
 *      the engine, so a request never pays for parsing and a template that does not parse
 *      fails at start-up, not at the first request.
 *   2. The context is built as JSON text: the messages after their checks (re-serialized only
 *      when content parts were joined), then tools/documents spliced in byte for byte as the
 *      caller gave them (a re-serialization could reformat their numbers, which `tojson`
 *      would then print differently from Python), or null when not given: transformers'
 *      apply_chat_template always passes tools=None, documents=None, so `tools is defined`
 *      is true and `tools is none` tells them apart.
 *   3. Special-token strings are read from tokenizer_config.json once, at load, and kept as a
 *      JSON text fragment that every render appends to its context.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokenizer/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer_internal.h"

#define CHAT_MAX_TEMPLATE ((size_t)1 << 20)

struct eng_chat {
    struct eng_jinja *tmpl;
    char *specials; /* ,"bos_token":"..." ... : appended to every context (DESIGN 3) */
    char *origin;
    bool wants_parts;
};

/* ---- loading ---- */

/* A template that iterates over a message's content (`{% for x in message['content'] %}` or
 * `message.content`) renders content parts itself; vLLM's content-format detection asks the
 * same question of the template's syntax tree. */
static bool loops_over_content(const char *src, size_t len) {
    static const char pattern[] = "\\bfor\\s+\\w+(?:\\s*,\\s*\\w+)?\\s+in\\s+\\w+"
                                  "(?:\\.content\\b|\\[\\s*['\"]content['\"]\\s*\\])";
    int ecode = 0;
    PCRE2_SIZE eoff = 0;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &ecode, &eoff, NULL);
    if (re == NULL) {
        return false; /* cannot happen: a fixed pattern */
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool found = md != NULL && pcre2_match(re, (PCRE2_SPTR)src, len, 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return found;
}

/* A special token of tokenizer_config.json as a string: "text", {"content": "text"}, or
 * absent/null (NULL). KC_EFORMAT for anything else. */
static int config_token_text(const char *origin, json_t *config, const char *key, const char **out,
                             struct kc_error *err) {
    json_t *v = json_object_get(config, key);
    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        return KC_OK;
    }
    if (json_is_object(v)) {
        v = json_object_get(v, "content");
    }
    if (!json_is_string(v)) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: tokenizer_config.json: %s must be a string or {\"content\": ...}",
                            origin, key);
    }
    *out = json_string_value(v);
    return KC_OK;
}

/* Builds the `,"bos_token":"<s>",...` fragment of every render's context (DESIGN 3). */
static int specials_fragment(const char *origin, json_t *config, char **out, struct kc_error *err) {
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "pad_token",
                                       "sep_token", "cls_token", "mask_token"};
    json_t *o = json_object();
    int rc = KC_OK;
    if (o == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    for (size_t i = 0; config != NULL && i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *t = NULL;
        if ((rc = config_token_text(origin, config, keys[i], &t, err)) != KC_OK) {
            goto out;
        }
        if (t != NULL) {
            json_object_set_new(o, keys[i], json_string(t));
        }
    }
    json_t *add = config != NULL ? json_object_get(config, "additional_special_tokens") : NULL;
    if (json_is_array(add)) {
        json_t *list = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(add, i, v) {
            json_t *s = json_is_object(v) ? json_object_get(v, "content") : v;
            if (json_is_string(s)) {
                json_array_append(list, s);
            }
        }
        json_object_set_new(o, "additional_special_tokens", list);
    }
    char *txt = json_dumps(o, JSON_COMPACT);
    if (txt == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory");
        goto out;
    }
    /* "{...}" -> ",..." (or "" for an empty object) */
    const size_t n = strlen(txt);
    if (n <= 2) {
        txt[0] = '\0';
    } else {
        txt[0] = ',';
        txt[n - 1] = '\0';
    }
    *out = txt;
out:
    json_decref(o);
    return rc;
}

static int chat_new(const char *origin, const char *src, size_t len, json_t *config,
                    struct eng_chat **out, struct kc_error *err) {
    int rc;
    if (len > CHAT_MAX_TEMPLATE) {
        return kc_error_set(err, KC_ERANGE, "%s: the chat template is larger than %zu bytes",
                            origin, CHAT_MAX_TEMPLATE);
    }
    struct eng_chat *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->origin = strdup(origin)) == NULL) {
        free(c);
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    if ((rc = eng_jinja_parse(src, len, &c->tmpl, err)) != KC_OK) {
        kc_error_prefix(err, "%s", origin);
        goto fail;
    }
    if ((rc = specials_fragment(origin, config, &c->specials, err)) != KC_OK) {
        goto fail;
    }
    c->wants_parts = loops_over_content(src, len);
    *out = c;
    return KC_OK;
fail:
    eng_chat_free(c);
    return rc;
}

int eng_chat_load_buffer(const char *origin, const char *src, size_t len, const char *config_json,
                         size_t config_len, struct eng_chat **out, struct kc_error *err) {
    json_t *config = NULL;
    if (config_json != NULL) {
        json_error_t jerr;
        config = json_loadb(config_json, config_len, JSON_DECODE_INT_AS_REAL, &jerr);
        if (!json_is_object(config)) {
            json_decref(config);
            return kc_error_set(err, KC_EFORMAT, "%s: tokenizer_config.json: %s", origin,
                                config == NULL ? jerr.text : "not a JSON object");
        }
    }
    int rc = chat_new(origin, src, len, config, out, err);
    json_decref(config);
    return rc;
}

void eng_chat_free(struct eng_chat *c) {
    if (c == NULL) {
        return;
    }
    eng_jinja_free(c->tmpl);
    free(c->specials);
    free(c->origin);
    free(c);
}

const char *eng_chat_origin(const struct eng_chat *c) {
    return c->origin;
}

bool eng_chat_wants_parts(const struct eng_chat *c) {
    return c->wants_parts;
}

/* The directory of a tokenizer path (a directory itself, or a file's parent). */
static int tokenizer_dir(const char *tok_path, char *dir, size_t cap, struct kc_error *err) {
    struct stat st;
    if (tok_path == NULL || *tok_path == '\0') {
        return kc_error_set(err, KC_EINVAL, "tokenizer path is empty");
    }
    if (stat(tok_path, &st) != 0) {
        return kc_error_set(err, KC_ENOTFOUND, "%s: no such file or directory", tok_path);
    }
    const char *from = tok_path;
    size_t n = strlen(tok_path);
    if (!S_ISDIR(st.st_mode)) {
        const char *slash = strrchr(tok_path, '/');
        if (slash == NULL) {
            from = ".";
            n = 1;
        } else {
            n = slash == tok_path ? 1 : (size_t)(slash - tok_path); /* "/tokenizer.json" */
        }
    }
    if (n >= cap) {
        return kc_error_set(err, KC_ERANGE, "%s: path too long", tok_path);
    }
    memcpy(dir, from, n);
    dir[n] = '\0';
    return KC_OK;
}

/* tokenizer_config.json's chat_template: a string, or the "default" of a named list. Sets *src
 * to NULL when the config has none. */
static int config_template(const char *path, json_t *config, const char **src, size_t *len,
                           struct kc_error *err) {
    json_t *t = json_object_get(config, "chat_template");
    *src = NULL;
    if (t == NULL || json_is_null(t)) {
        return KC_OK;
    }
    if (json_is_array(t)) {
        size_t i;
        json_t *v;
        char names[256] = "";
        json_array_foreach(t, i, v) {
            json_t *name = json_object_get(v, "name");
            json_t *tmpl = json_object_get(v, "template");
            if (!json_is_string(name) || !json_is_string(tmpl)) {
                return kc_error_set(err, KC_EFORMAT,
                                    "%s: chat_template[%zu] must be {\"name\": string, "
                                    "\"template\": string}",
                                    path, i);
            }
            if (strcmp(json_string_value(name), "default") == 0) {
                t = tmpl;
                break;
            }
            const size_t used = strlen(names);
            snprintf(names + used, sizeof(names) - used, "%s\"%.40s\"", used ? ", " : "",
                     json_string_value(name));
        }
        if (json_is_array(t)) {
            return kc_error_set(err, KC_EFORMAT,
                                "%s: chat_template lists the templates %s but none named "
                                "\"default\"; pick one and give it with --chat-template FILE",
                                path, names);
        }
    }
    if (!json_is_string(t)) {
        return kc_error_set(err, KC_EFORMAT,
                            "%s: chat_template must be a string or a list of {\"name\", "
                            "\"template\"}",
                            path);
    }
    *src = json_string_value(t);
    *len = json_string_length(t);
    return KC_OK;
}

int eng_chat_load(const char *tok_path, const char *template_path, struct eng_chat **out,
                  struct kc_error *err) {
    char dir[4096], cpath[4200], jpath[4200];
    char *ctext = NULL, *ftext = NULL;
    size_t clen = 0, flen = 0;
    json_t *config = NULL;
    int rc;
    if ((rc = tokenizer_dir(tok_path, dir, sizeof(dir), err)) != KC_OK ||
        (rc = kc_path_join(cpath, sizeof(cpath), dir, "tokenizer_config.json")) != KC_OK ||
        (rc = kc_path_join(jpath, sizeof(jpath), dir, "chat_template.jinja")) != KC_OK) {
        return rc == KC_ERANGE ? kc_error_set(err, rc, "%s: path too long", tok_path) : rc;
    }
    struct stat st;
    /* INT_AS_REAL: Llama 3's model_max_length (1e30 as an integer) overflows json_int_t. */
    if (stat(cpath, &st) == 0) {
        if ((rc = kc_file_read(cpath, ENG__TOK_MAX_CONFIG, &ctext, &clen, err)) != KC_OK) {
            goto out;
        }
        json_error_t jerr;
        config = json_loadb(ctext, clen, JSON_DECODE_INT_AS_REAL, &jerr);
        if (!json_is_object(config)) {
            rc = kc_error_set(err, KC_EFORMAT, "%s: %s", cpath,
                              config == NULL ? jerr.text : "not a JSON object");
            goto out;
        }
    }
    if (template_path != NULL && *template_path != '\0') {
        if ((rc = kc_file_read(template_path, CHAT_MAX_TEMPLATE, &ftext, &flen, err)) != KC_OK) {
            goto out;
        }
        rc = chat_new(template_path, ftext, flen, config, out, err);
        goto out;
    }
    const char *src = NULL;
    size_t len = 0;
    if (config != NULL && (rc = config_template(cpath, config, &src, &len, err)) != KC_OK) {
        goto out;
    }
    if (src != NULL) {
        char origin[4300];
        snprintf(origin, sizeof(origin), "%s (chat_template)", cpath);
        rc = chat_new(origin, src, len, config, out, err);
        goto out;
    }
    if (stat(jpath, &st) == 0) {
        if ((rc = kc_file_read(jpath, CHAT_MAX_TEMPLATE, &ftext, &flen, err)) == KC_OK) {
            rc = chat_new(jpath, ftext, flen, config, out, err);
        }
        goto out;
    }
    if (config != NULL) {
        rc = kc_error_set(err, KC_ENOTFOUND,
                          "no chat template: %s has no \"chat_template\" and there is no %s", cpath,
                          jpath);
    } else {
        rc = kc_error_set(err, KC_ENOTFOUND, "no chat template: neither %s nor %s exists", cpath,
                          jpath);
    }
out:
    json_decref(config);
    free(ctext);
    free(ftext);
    return rc;
}

/* ---- rendering ---- */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

/* Checks a list of content parts; when join, replaces msg's content with the text parts
 * joined by "\n" and sets *changed. */
static int check_parts(json_t *msg, json_t *parts, size_t i, bool join, bool *changed,
                       struct kc_error *err) {
    size_t j;
    json_t *p;
    size_t total = 0;
    json_array_foreach(parts, j, p) {
        json_t *type = json_is_object(p) ? json_object_get(p, "type") : NULL;
        if (!json_is_string(type)) {
            return kc_error_set(err, KC_EINVAL,
                                "messages[%zu].content[%zu] must be an object with a string "
                                "\"type\"",
                                i, j);
        }
        if (strcmp(json_string_value(type), "text") != 0) {
            return kc_error_set(err, KC_EINVAL,
                                "messages[%zu].content[%zu].type '%.40s' is not supported: this "
                                "server runs text-only models (content parts must be "
                                "{\"type\": \"text\", \"text\": ...})",
                                i, j, json_string_value(type));
        }
        json_t *text = json_object_get(p, "text");
        if (!json_is_string(text)) {
            return kc_error_set(err, KC_EINVAL, "messages[%zu].content[%zu].text must be a string",
                                i, j);
        }
        total += json_string_length(text) + 1;
    }
    if (!join) {
        return KC_OK;
    }
    char *buf = malloc(total + 1);
    if (buf == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    size_t n = 0;
    json_array_foreach(parts, j, p) {
        json_t *text = json_object_get(p, "text");
        if (j > 0) {
            buf[n++] = '\n';
        }
        memcpy(buf + n, json_string_value(text), json_string_length(text));
        n += json_string_length(text);
    }
    json_t *s = json_stringn_nocheck(buf, n);
    free(buf);
    if (s == NULL || json_object_set_new(msg, "content", s) != 0) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    *changed = true;
    return KC_OK;
}

/* Checks the messages (chat_template.h) and joins content parts for string-only templates. */
static int check_messages(json_t *msgs, bool join, bool *changed, struct kc_error *err) {
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    if (!json_is_array(msgs)) {
        return kc_error_set(err, KC_EINVAL, "messages must be an array of messages, got %s",
                            type_name(msgs));
    }
    if (json_array_size(msgs) == 0) {
        return kc_error_set(err, KC_EINVAL, "messages must not be empty");
    }
    size_t i;
    json_t *m;
    int rc;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) {
            return kc_error_set(err, KC_EINVAL, "messages[%zu] must be an object, got %s", i,
                                type_name(m));
        }
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            return kc_error_set(err, KC_EINVAL, "messages[%zu].role must be a string, got %s", i,
                                role ? type_name(role) : "nothing");
        }
        bool known = false;
        for (size_t r = 0; r < sizeof(roles) / sizeof(roles[0]) && !known; r++) {
            known = strcmp(json_string_value(role), roles[r]) == 0;
        }
        if (!known) {
            return kc_error_set(err, KC_EINVAL,
                                "messages[%zu].role must be \"system\", \"user\", \"assistant\" "
                                "or \"tool\", got '%.40s'",
                                i, json_string_value(role));
        }
        const bool assistant = strcmp(json_string_value(role), "assistant") == 0;
        json_t *content = json_object_get(m, "content");
        if (content == NULL || json_is_null(content)) {
            if (!assistant) {
                return kc_error_set(err, KC_EINVAL,
                                    "messages[%zu].content is required for role '%s' (a string "
                                    "or a list of text parts)",
                                    i, json_string_value(role));
            }
        } else if (json_is_array(content)) {
            if ((rc = check_parts(m, content, i, join, changed, err)) != KC_OK) {
                return rc;
            }
        } else if (!json_is_string(content)) {
            return kc_error_set(err, KC_EINVAL,
                                "messages[%zu].content must be a string or a list of text "
                                "parts, got %s",
                                i, type_name(content));
        }
    }
    return KC_OK;
}

/* Checks that text is a JSON array (tools, documents) without keeping the parsed value. */
static int check_array(const char *name, const char *text, size_t len, struct kc_error *err) {
    json_error_t jerr;
    json_t *v = json_loadb(text, len, 0, &jerr);
    int rc = KC_OK;
    if (!json_is_array(v)) {
        rc = kc_error_set(err, KC_EINVAL, "%s must be a JSON array%s%s", name, v ? "" : ": ",
                          v ? "" : jerr.text);
    }
    json_decref(v);
    return rc;
}

/* Growable byte buffer for the context text. */
struct cbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
};

static void cb_add(struct cbuf *b, const char *s, size_t n) {
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void cb_str(struct cbuf *b, const char *s) {
    cb_add(b, s, strlen(s));
}

int eng_chat_render(const struct eng_chat *c, const struct eng_chat_input *in, char **out,
                    size_t *out_len, struct kc_error *err) {
    int rc;
    struct cbuf ctx = {0};
    char *msgs_text = NULL;
    if (in->messages_len > ENG_TOK_MAX_TEXT || in->tools_len > ENG_TOK_MAX_TEXT ||
        in->documents_len > ENG_TOK_MAX_TEXT) {
        return kc_error_set(err, KC_ERANGE, "the conversation is larger than %zu bytes",
                            (size_t)ENG_TOK_MAX_TEXT);
    }
    json_error_t jerr;
    json_t *msgs = json_loadb(in->messages, in->messages_len, 0, &jerr);
    if (msgs == NULL) {
        return kc_error_set(err, KC_EINVAL, "messages: invalid JSON at line %d column %d: %s",
                            jerr.line, jerr.column, jerr.text);
    }
    bool changed = false;
    if ((rc = check_messages(msgs, !c->wants_parts, &changed, err)) != KC_OK ||
        (in->tools != NULL &&
         (rc = check_array("tools", in->tools, in->tools_len, err)) != KC_OK) ||
        (in->documents != NULL &&
         (rc = check_array("documents", in->documents, in->documents_len, err)) != KC_OK)) {
        goto out;
    }
    cb_str(&ctx, "{\"messages\":");
    if (changed) {
        msgs_text = json_dumps(msgs, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (msgs_text == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto out;
        }
        cb_str(&ctx, msgs_text);
    } else {
        cb_add(&ctx, in->messages, in->messages_len); /* DESIGN 2 */
    }
    cb_str(&ctx, in->add_generation_prompt ? ",\"add_generation_prompt\":true"
                                           : ",\"add_generation_prompt\":false");
    /* transformers always passes both, None when absent (DESIGN 2). */
    cb_str(&ctx, ",\"tools\":");
    if (in->tools != NULL) {
        cb_add(&ctx, in->tools, in->tools_len);
    } else {
        cb_str(&ctx, "null");
    }
    cb_str(&ctx, ",\"documents\":");
    if (in->documents != NULL) {
        cb_add(&ctx, in->documents, in->documents_len);
    } else {
        cb_str(&ctx, "null");
    }
    cb_str(&ctx, c->specials);
    cb_str(&ctx, "}");
    if (ctx.oom) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory");
        goto out;
    }
    const struct eng_jinja_opts opts = {.max_output = ENG_TOK_MAX_TEXT};
    rc = eng_jinja_render(c->tmpl, ctx.p, ctx.len, &opts, out, out_len, err);
out:
    json_decref(msgs);
    free(msgs_text);
    free(ctx.p);
    return rc;
}

/* ---- tokenizing ---- */

int eng_chat_encode(const struct eng_tok *tok, const char *text, size_t len, bool add_special,
                    size_t max_ids, int32_t **ids_out, size_t *n_out, struct kc_error *err) {
    unsigned flags = ENG_TOK_PARSE_SPECIAL;
    if (add_special) {
        flags |= ENG_TOK_ADD_SPECIAL;
        const char *bos = NULL;
        size_t bos_len = 0;
        const int32_t bos_id = eng_tok_bos(tok);
        if (bos_id >= 0 && eng_tok_id_to_piece(tok, bos_id, &bos, &bos_len) == KC_OK &&
            bos_len > 0 && len >= bos_len && memcmp(text, bos, bos_len) == 0) {
            flags &= ~(unsigned)ENG_TOK_ADD_SPECIAL; /* the template wrote the BOS */
        }
    }
    return eng_tok_encode_max(tok, text, len, flags, max_ids, ids_out, n_out, err);
}
