/*
 * render.c — the C side of the chat-template render-equivalence test (run.py): renders each
 * case of a JSONL file with kvcast's Jinja engine (tokenizer/jinja.h).
 *
 * usage: jinja_render CASES.jsonl NOW_UNIX
 *   each input line: {"template": "...", "context": {...}}
 *   each output line: {"out": "..."} or {"error": "...", "code": "EINVAL"}
 *   (an output that is not valid UTF-8 comes as {"out_hex": "..."}).
 */
#define _POSIX_C_SOURCE 200809L /* getline */

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja.h"

static void print_obj(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    puts(s ? s : "{\"error\":\"json_dumps failed\",\"code\":\"driver\"}");
    free(s);
    json_decref(o);
}

static void render_case(const char *line, size_t len, long long now) {
    json_error_t jerr;
    json_t *c = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    json_t *tpl = c ? json_object_get(c, "template") : NULL;
    json_t *ctx = c ? json_object_get(c, "context") : NULL;
    if (!json_is_string(tpl) || !ctx) {
        print_obj(json_pack("{s:s,s:s}", "error", "bad case line", "code", "driver"));
        json_decref(c);
        return;
    }
    char *ctx_s = json_dumps(ctx, JSON_COMPACT | JSON_ENCODE_ANY);
    struct kc_error err = {0};
    struct eng_jinja *t = NULL;
    int rc = eng_jinja_parse(json_string_value(tpl), json_string_length(tpl), &t, &err);
    if (rc == 0) {
        struct eng_jinja_opts opts = {.now_unix = now};
        char *out = NULL;
        size_t out_len = 0;
        rc = eng_jinja_render(t, ctx_s, strlen(ctx_s), &opts, &out, &out_len, &err);
        if (rc == 0) {
            json_t *js = json_stringn(out, out_len);
            if (js) {
                print_obj(json_pack("{s:o}", "out", js));
            } else {
                char *hex = malloc(out_len * 2 + 1);
                for (size_t i = 0; i < out_len; i++) {
                    snprintf(hex + 2 * i, 3, "%02x", (unsigned char)out[i]);
                }
                hex[out_len * 2] = 0;
                print_obj(json_pack("{s:s}", "out_hex", hex));
                free(hex);
            }
            free(out);
        }
        eng_jinja_free(t);
    }
    if (rc != 0) {
        json_t *msg = json_stringn(err.msg, strlen(err.msg));
        if (!msg) {
            msg = json_string("(message not UTF-8)");
        }
        print_obj(json_pack("{s:o,s:s}", "error", msg, "code", kc_strerror(rc)));
    }
    free(ctx_s);
    json_decref(c);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CASES.jsonl NOW_UNIX\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    long long now = atoll(argv[2]);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n') {
            n--;
        }
        if (n > 0) {
            render_case(line, (size_t)n, now);
        }
    }
    free(line);
    fclose(f);
    return 0;
}
