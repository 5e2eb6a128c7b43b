/*
 * cmd_tokenize.c — `kvcast tokenize` (text -> ids) and `kvcast detokenize` (ids -> text) over a
 * Hugging Face tokenizer.json, plus a small throughput benchmark (`tokenize --bench N`).
 *
 * Place in the data flow: a thin shell over tokenizer/tokenizer.h, used by people and by the
 * conformance test (tests/conformance/tokenizer/run.mjs), which reads the --json output.
 * Exit codes: 0 ok, 1 the tokenizer or the input failed, 2 bad command line.
 */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kc.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

static void tokenize_usage(FILE *f) {
    fprintf(f, "usage: kvcast tokenize --tokenizer DIR_OR_FILE [--text T | --file F] [options]\n"
               "  --tokenizer P     a model directory (tokenizer.json + tokenizer_config.json)\n"
               "                    or a tokenizer.json file\n"
               "  --text T          the text to tokenize\n"
               "  --file F          read the text from F ('-' = standard input)\n"
               "  --json            print {\"ids\":[...],\"pieces\":[...]}\n"
               "  --no-special      do not add BOS/EOS and other template tokens\n"
               "  --parse-special   treat special-token text (\"<|im_start|>\") as the token\n"
               "  --bench N         encode N times and print timing instead of ids\n"
               "  --jsonl           the input holds one JSON string per line; print one JSON\n"
               "                    object per line with ids, pieces, text (decoded), text_skip\n"
               "                    (without special tokens), text_clean (with --clean-up's\n"
               "                    rule) and stream_skip (text_skip through the streaming\n"
               "                    decoder); for the conformance test\n");
}

static void detokenize_usage(FILE *f) {
    fprintf(f, "usage: kvcast detokenize --tokenizer DIR_OR_FILE --ids 1,2,3 [options]\n"
               "  --skip-special    drop special tokens (BOS, EOS, ...)\n"
               "  --clean-up        apply clean_up_tokenization_spaces (\" .\" -> \".\")\n"
               "  --json            print {\"text\":...,\"chunks\":[...]} (chunks: what a\n"
               "                    streaming decoder emits after each id, then the flush)\n");
}

static int load(const char *cmd, const char *path, struct eng_tok **tok) {
    struct kc_error err = {0};
    if (eng_tok_load(path, tok, &err) < 0) {
        fprintf(stderr, "kvcast %s: %s\n", cmd, err.msg);
        return 1;
    }
    return 0;
}

static int print_json(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    if (s == NULL) {
        fprintf(stderr, "kvcast: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

static int read_stdin(char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        return KC_ENOMEM;
    }
    for (;;) {
        if (n == cap) {
            if (cap > ENG_TOK_MAX_TEXT) {
                free(buf);
                return KC_ERANGE;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (nb == NULL) {
                free(buf);
                return KC_ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        const size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            break;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int bench(const struct eng_tok *tok, const char *text, size_t len, unsigned flags, long reps,
                 double load_s) {
    double best = 1e30, total = 0;
    size_t n_ids = 0;
    for (long r = 0; r < reps; r++) {
        struct kc_error err = {0};
        int32_t *ids = NULL;
        const double t0 = kc_now_s();
        if (eng_tok_encode(tok, text, len, flags, &ids, &n_ids, &err) < 0) {
            fprintf(stderr, "kvcast tokenize: %s\n", err.msg);
            return 1;
        }
        const double dt = kc_now_s() - t0;
        free(ids);
        total += dt;
        if (dt < best) {
            best = dt;
        }
    }
    printf("load_s=%.3f bytes=%zu tokens=%zu reps=%ld best_s=%.4f mean_s=%.4f tokens_per_s=%.0f "
           "MiB_per_s=%.2f\n",
           load_s, len, n_ids, reps, best, total / (double)reps,
           best > 0 ? (double)n_ids / best : 0.0, best > 0 ? (double)len / best / 1048576.0 : 0.0);
    return 0;
}

static json_t *pieces_json(const struct eng_tok *tok, const int32_t *ids, size_t n) {
    json_t *jp = json_array();
    for (size_t i = 0; i < n; i++) {
        const char *piece = "";
        size_t plen = 0;
        (void)eng_tok_id_to_piece(tok, ids[i], &piece, &plen);
        json_array_append_new(jp, json_stringn(piece, plen));
    }
    return jp;
}

static json_t *ids_json(const int32_t *ids, size_t n) {
    json_t *j = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(j, json_integer(ids[i]));
    }
    return j;
}

/* Streams ids through an eng_tok_stream and returns the concatenated output. */
static json_t *stream_json(const struct eng_tok *tok, const int32_t *ids, size_t n,
                           unsigned flags) {
    const size_t bound = eng_tok_stream_bound(tok);
    char *chunk = malloc(bound), *all = NULL;
    size_t len = 0;
    json_t *res = NULL;
    struct eng_tok_stream s;
    if (chunk == NULL) {
        goto out;
    }
    eng_tok_stream_init(&s, tok, flags);
    for (size_t i = 0; i <= n; i++) {
        size_t got = 0;
        struct kc_error err = {0};
        if (i < n && eng_tok_stream_push(&s, ids[i], chunk, bound, &got, &err) < 0) {
            goto out;
        }
        if (i == n) {
            (void)eng_tok_stream_flush(&s, chunk, bound, &got);
        }
        char *na = realloc(all, len + got + 1);
        if (na == NULL) {
            goto out;
        }
        all = na;
        memcpy(all + len, chunk, got);
        len += got;
    }
    res = json_stringn(all ? all : "", len);
out:
    free(chunk);
    free(all);
    return res ? res : json_null();
}

static json_t *decode_json(const struct eng_tok *tok, const int32_t *ids, size_t n,
                           unsigned flags) {
    char *text = NULL;
    size_t len = 0;
    struct kc_error err = {0};
    if (eng_tok_decode(tok, ids, n, flags, &text, &len, &err) < 0) {
        return json_null();
    }
    json_t *j = json_stringn(text, len);
    free(text);
    return j;
}

/* --jsonl: one JSON string per input line, one JSON object per output line. */
static int tokenize_jsonl(const struct eng_tok *tok, const char *buf, size_t len, unsigned flags) {
    size_t line_no = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        const size_t end = nl ? (size_t)(nl - buf) : len;
        line_no++;
        if (end == pos) {
            pos = end + 1;
            continue;
        }
        json_error_t je;
        json_t *str = json_loadb(buf + pos, end - pos, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        pos = end + 1;
        if (!json_is_string(str)) {
            fprintf(stderr, "kvcast tokenize: --jsonl line %zu is not a JSON string\n", line_no);
            json_decref(str);
            return 1;
        }
        struct kc_error err = {0};
        int32_t *ids = NULL;
        size_t n = 0;
        if (eng_tok_encode(tok, json_string_value(str), json_string_length(str), flags, &ids, &n,
                           &err) < 0) {
            json_t *o = json_pack("{s:s}", "error", err.msg);
            json_decref(str);
            if (print_json(o) != 0) {
                return 1;
            }
            continue;
        }
        json_decref(str);
        json_t *o = json_object();
        json_object_set_new(o, "ids", ids_json(ids, n));
        json_object_set_new(o, "pieces", pieces_json(tok, ids, n));
        json_object_set_new(o, "text", decode_json(tok, ids, n, 0));
        json_object_set_new(o, "text_skip", decode_json(tok, ids, n, ENG_TOK_SKIP_SPECIAL));
        json_object_set_new(o, "text_clean", decode_json(tok, ids, n, ENG_TOK_CLEAN_UP_SPACES));
        json_object_set_new(o, "stream_skip", stream_json(tok, ids, n, ENG_TOK_SKIP_SPECIAL));
        free(ids);
        if (print_json(o) != 0) {
            return 1;
        }
    }
    return 0;
}

int kc_cmd_tokenize(int argc, char **argv) {
    const char *path = NULL, *text = NULL, *file = NULL;
    bool json = false, jsonl = false;
    unsigned flags = ENG_TOK_ADD_SPECIAL;
    long reps = 0;
    struct kc_args a;
    kc_args_init(&a, "kvcast tokenize", argc, argv);
    while (kc_args_next(&a)) {
        if (kc_args_help(&a)) {
            tokenize_usage(stdout);
            return 0;
        } else if (kc_args_str(&a, "--tokenizer", &path) || kc_args_str(&a, "--text", &text) ||
                   kc_args_str(&a, "--file", &file) ||
                   kc_args_long(&a, "--bench", 1, 1000000, &reps)) {
        } else if (kc_args_flag(&a, "--json")) {
            json = true;
        } else if (kc_args_flag(&a, "--jsonl")) {
            jsonl = true;
        } else if (kc_args_flag(&a, "--no-special")) {
            flags &= ~(unsigned)ENG_TOK_ADD_SPECIAL;
        } else if (kc_args_flag(&a, "--parse-special")) {
            flags |= ENG_TOK_PARSE_SPECIAL;
        } else {
            return kc_args_fail(&a);
        }
    }
    if (path == NULL || (text == NULL) == (file == NULL)) {
        fprintf(stderr, "kvcast tokenize: need --tokenizer and exactly one of --text, --file\n");
        tokenize_usage(stderr);
        return 2;
    }
    char *buf = NULL;
    size_t len = 0;
    if (file != NULL) {
        struct kc_error err = {0};
        int rc;
        if (strcmp(file, "-") == 0) {
            rc = read_stdin(&buf, &len);
            if (rc < 0) {
                fprintf(stderr, "kvcast tokenize: standard input: %s\n", kc_strerror(rc));
                return 1;
            }
        } else if ((rc = kc_file_read(file, ENG_TOK_MAX_TEXT, &buf, &len, &err)) < 0) {
            fprintf(stderr, "kvcast tokenize: %s\n", err.msg);
            return 1;
        }
        text = buf;
    } else {
        len = strlen(text);
    }
    struct eng_tok *tok = NULL;
    const double t0 = kc_now_s();
    if (load("tokenize", path, &tok) != 0) {
        free(buf);
        return 1;
    }
    const double load_s = kc_now_s() - t0;
    int ret = 0;
    if (reps > 0) {
        ret = bench(tok, text, len, flags, reps, load_s);
        goto out;
    }
    if (jsonl) {
        ret = tokenize_jsonl(tok, text, len, flags);
        goto out;
    }
    struct kc_error err = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    if (eng_tok_encode(tok, text, len, flags, &ids, &n, &err) < 0) {
        fprintf(stderr, "kvcast tokenize: %s\n", err.msg);
        ret = 1;
        goto out;
    }
    if (json) {
        json_t *root = json_object();
        json_object_set_new(root, "ids", ids_json(ids, n));
        json_object_set_new(root, "pieces", pieces_json(tok, ids, n));
        ret = print_json(root);
    } else {
        for (size_t i = 0; i < n; i++) {
            printf(i ? ",%d" : "%d", (int)ids[i]);
        }
        printf("\n");
    }
    free(ids);
out:
    eng_tok_free(tok);
    free(buf);
    return ret;
}

int kc_cmd_detokenize(int argc, char **argv) {
    const char *path = NULL;
    int32_t *ids = NULL;
    int n = 0;
    bool json = false;
    unsigned flags = 0;
    struct kc_args a;
    kc_args_init(&a, "kvcast detokenize", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            detokenize_usage(stdout);
            free(ids);
            return 0;
        } else if (kc_args_str(&a, "--tokenizer", &path)) {
        } else if (kc_args_str(&a, "--ids", &v)) {
            free(ids);
            ids = NULL;
            if (!kc_arg_ids(v, &ids, &n)) {
                return kc_args_bad(&a, "wants a list like 1,2,3");
            }
        } else if (kc_args_flag(&a, "--skip-special")) {
            flags |= ENG_TOK_SKIP_SPECIAL;
        } else if (kc_args_flag(&a, "--clean-up")) {
            flags |= ENG_TOK_CLEAN_UP_SPACES;
        } else if (kc_args_flag(&a, "--json")) {
            json = true;
        } else {
            free(ids);
            return kc_args_fail(&a);
        }
    }
    if (path == NULL || ids == NULL) {
        fprintf(stderr, "kvcast detokenize: need --tokenizer and --ids\n");
        detokenize_usage(stderr);
        free(ids);
        return 2;
    }
    struct eng_tok *tok = NULL;
    if (load("detokenize", path, &tok) != 0) {
        free(ids);
        return 1;
    }
    int ret = 0;
    struct kc_error err = {0};
    char *text = NULL, *chunk = NULL;
    size_t len = 0;
    if (eng_tok_decode(tok, ids, (size_t)n, flags, &text, &len, &err) < 0) {
        fprintf(stderr, "kvcast detokenize: %s\n", err.msg);
        ret = 1;
        goto out;
    }
    if (!json) {
        fwrite(text, 1, len, stdout);
        printf("\n");
        goto out;
    }
    const size_t bound = eng_tok_stream_bound(tok);
    chunk = malloc(bound);
    json_t *root = json_object(), *chunks = json_array();
    struct eng_tok_stream s;
    eng_tok_stream_init(&s, tok, flags);
    for (int i = 0; chunk != NULL && i <= n; i++) {
        size_t got = 0;
        if (i < n) {
            (void)eng_tok_stream_push(&s, ids[i], chunk, bound, &got, &err); /* ids checked */
        } else {
            (void)eng_tok_stream_flush(&s, chunk, bound, &got);
        }
        json_array_append_new(chunks, json_stringn(chunk, got));
    }
    json_object_set_new(root, "text", json_stringn(text, len));
    json_object_set_new(root, "chunks", chunks);
    ret = print_json(root);
out:
    free(chunk);
    free(text);
    free(ids);
    eng_tok_free(tok);
    return ret;
}
