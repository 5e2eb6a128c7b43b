/* kvp_data.c — calibration/evaluation token data for the KV Prediction commands. */
#define _POSIX_C_SOURCE 200809L
#include "tools/cli/kvp_data.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

/* Text is tokenized in pieces of at most this many bytes, cut after a line break. */
#define KC_DATA_PIECE ((size_t)1 << 20)

static int push_ids(int32_t **buf, size_t *n, size_t *cap, const int32_t *ids, size_t k) {
    if (*n + k > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (nc < *n + k) {
            nc *= 2;
        }
        int32_t *nb = realloc(*buf, nc * sizeof(int32_t));
        if (nb == NULL) {
            return KC_ENOMEM;
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *n, ids, k * sizeof(int32_t));
    *n += k;
    return KC_OK;
}

static int parse_ids(const char *path, const char *text, size_t max_tokens, int32_t **out,
                     size_t *n_out, struct kc_error *err) {
    int32_t *buf = NULL;
    size_t n = 0, cap = 0;
    const char *p = text;
    for (;;) {
        while (isspace((unsigned char)*p) || *p == ',') {
            p++;
        }
        if (*p == '#') { /* a comment runs to the end of its line */
            while (*p != '\0' && *p != '\n') {
                p++;
            }
            continue;
        }
        if (*p == '\0' || (max_tokens > 0 && n >= max_tokens)) {
            break;
        }
        char *end = NULL;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX ||
            !(isspace((unsigned char)*end) || *end == ',' || *end == '\0')) {
            free(buf);
            return kc_error_set(err, KC_EFORMAT, "%s: byte %zu: expected a token id", path,
                                (size_t)(p - text));
        }
        const int32_t id = (int32_t)v;
        if (push_ids(&buf, &n, &cap, &id, 1) != KC_OK) {
            free(buf);
            return kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        }
        p = end;
    }
    *out = buf;
    *n_out = n;
    return KC_OK;
}

static int tokenize_text(const char *path, const char *text, size_t len, const char *tok_dir,
                         size_t max_tokens, int32_t **out, size_t *n_out, struct kc_error *err) {
    struct eng_tok *tok = NULL;
    int rc = eng_tok_load(tok_dir, &tok, err);
    if (rc != KC_OK) {
        return rc;
    }
    int32_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (size_t pos = 0; pos < len && (max_tokens == 0 || n < max_tokens);) {
        size_t end = len - pos > KC_DATA_PIECE ? pos + KC_DATA_PIECE : len;
        if (end < len) {
            /* Cut after the last line break, else at a UTF-8 character boundary. */
            size_t cut = end;
            while (cut > pos && text[cut - 1] != '\n') {
                cut--;
            }
            if (cut == pos) {
                cut = end;
                while (cut > pos && ((unsigned char)text[cut] & 0xC0) == 0x80) {
                    cut--;
                }
            }
            end = cut;
        }
        int32_t *ids = NULL;
        size_t k = 0;
        rc = eng_tok_encode(tok, text + pos, end - pos, 0, &ids, &k, err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "%s (bytes %zu..%zu)", path, pos, end);
            goto fail;
        }
        if (max_tokens > 0 && n + k > max_tokens) {
            k = max_tokens - n;
        }
        rc = push_ids(&buf, &n, &cap, ids, k);
        free(ids);
        if (rc != KC_OK) {
            rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        pos = end;
    }
    eng_tok_free(tok);
    *out = buf;
    *n_out = n;
    return KC_OK;
fail:
    eng_tok_free(tok);
    free(buf);
    return rc;
}

int kc_data_tokens(const char *path, bool ids, const char *tok_dir, size_t max_tokens,
                   int32_t **out, size_t *n_out, struct kc_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = kc_file_read(path, KC_DATA_MAX_BYTES, &text, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (ids) {
        rc = parse_ids(path, text, max_tokens, out, n_out, err);
    } else {
        rc = tokenize_text(path, text, len, tok_dir, max_tokens, out, n_out, err);
    }
    free(text);
    return rc;
}

int kc_data_windows(const char *path, struct kc_data_windows *w) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return KC_ENOTFOUND;
    }
    char line[256];
    int rc = KC_ENOTFOUND;
    /* Only the leading comment lines can hold the header. */
    while (fgets(line, sizeof(line), f) != NULL && line[0] == '#') {
        long p = 0, c = 0, n = 0;
        if (sscanf(line, "# " KC_DATA_WINDOWS_TAG " prompt_len=%ld cont_len=%ld samples=%ld", &p,
                   &c, &n) == 3 &&
            p > 0 && c > 0 && n > 0) {
            *w = (struct kc_data_windows){.prompt_len = p, .cont_len = c, .samples = n};
            rc = KC_OK;
            break;
        }
    }
    fclose(f);
    return rc;
}
