/*
 * fuzz_tokenizer.c — libFuzzer target for encode and decode (RELIABILITY.md B1, B3) over two
 * small tokenizers built at start-up: a byte-level BPE with Llama-3's Split regex and added
 * tokens (lstrip/rstrip/single_word), a SentencePiece-style BPE with NFC, Prepend/Replace,
 * byte fallback, unk and a BOS template, and the same model behind NFC + Strip and a Metaspace
 * pre-tokenizer (prepend "first", split).
 *
 * Input: byte 0 picks the tokenizer (bits 0 and 5) and flags (bits 1-4), the rest is text (also
 * reinterpreted as ids).
 * Properties checked (abort on violation): encode fails only with KC_EINVAL on invalid UTF-8;
 * every id is in range; the byte-level tokenizer round-trips (decode(encode(x)) == x without
 * parse_special); the streaming decoder's chunks are valid UTF-8 and concatenate to the batch
 * decode; decoding arbitrary ids fails only with KC_ERANGE.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct eng_tok *toks[3];

struct buf {
    char *p;
    size_t n, cap;
};

static void add(struct buf *b, const char *s) {
    const size_t len = strlen(s);
    if (b->n + len + 1 > b->cap) {
        b->cap = (b->n + len + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL) {
            abort();
        }
    }
    memcpy(b->p + b->n, s, len + 1);
    b->n += len;
}

/* GPT-2's stand-in for byte b, JSON-escaped. */
static void byte_char(int b, char out[8]) {
    int cp = b, n = 0;
    const bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    if (!direct) {
        for (int x = 0; x < b; x++) {
            n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174);
        }
        cp = 256 + n;
    }
    if (cp == '"' || cp == '\\') {
        snprintf(out, 8, "\\%c", cp);
    } else {
        snprintf(out, 8, "\\u%04x", (unsigned)cp);
    }
}

static struct eng_tok *load(const char *json) {
    struct eng_tok *t = NULL;
    struct kc_error err;
    if (eng_tok_load_buffer("fuzz.json", json, strlen(json), NULL, 0, &t, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: embedded tokenizer does not load: %s\n", err.msg);
        abort();
    }
    return t;
}

static const char *const merges[][2] = {{"t", "h"},
                                        {"th", "e"},
                                        {"\\u0120", "t"},
                                        {"\\u0120", "the"},
                                        {"i", "n"},
                                        {"in", "g"},
                                        {"a", "a"},
                                        {"aa", "aa"},
                                        {"\\u0120", "\\u0120"},
                                        {"\\u010a", "\\u010a"},
                                        {"1", "2"},
                                        {"\\u00c3", "\\u00a9"},
                                        {"e", "r"},
                                        {"\\u0120", "a"}};
static const char *const results[] = {
    "th", "the",     "\\u0120t",       "\\u0120the",     "in", "ing",
    "aa", "aaaa",    "\\u0120\\u0120", "\\u010a\\u010a", "12", "\\u00c3\\u00a9",
    "er", "\\u0120a"};
#define N_MERGES 14

static void init(void) {
    struct buf b = {0};
    char c[8], tmp[256];
    add(&b, "{\"added_tokens\":["
            "{\"id\":300,\"content\":\"<|s|>\",\"special\":true},"
            "{\"id\":301,\"content\":\"<n>\",\"special\":false},"
            "{\"id\":302,\"content\":\"<m>\",\"special\":true,\"lstrip\":true,\"rstrip\":true},"
            "{\"id\":303,\"content\":\"word\",\"special\":false,\"single_word\":true}],"
            "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
            "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|"
            "[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+"
            "[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\","
            "\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
            "\"use_regex\":false}]},\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
            "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{");
    for (int i = 0; i < 256; i++) {
        byte_char(i, c);
        snprintf(tmp, sizeof(tmp), "%s\"%s\":%d", i ? "," : "", c, i);
        add(&b, tmp);
    }
    for (int i = 0; i < N_MERGES; i++) {
        snprintf(tmp, sizeof(tmp), ",\"%s\":%d", results[i], 256 + i);
        add(&b, tmp);
    }
    add(&b, "},\"merges\":[");
    for (int i = 0; i < N_MERGES; i++) {
        snprintf(tmp, sizeof(tmp), "%s[\"%s\",\"%s\"]", i ? "," : "", merges[i][0], merges[i][1]);
        add(&b, tmp);
    }
    add(&b, "]}}");
    toks[0] = load(b.p);
    b.n = 0;
    add(&b, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
            "{\"id\":1,\"content\":\"<s>\",\"special\":true},"
            "{\"id\":2,\"content\":\"</s>\",\"special\":true},"
            "{\"id\":270,\"content\":\"\\u2581hi\",\"special\":false,\"normalized\":true}],"
            "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
            "{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},{\"type\":\"Replace\",\"pattern\":"
            "{\"String\":\" \"},\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,"
            "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
            "{\"id\":\"<s>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<s>\":"
            "{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
            "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
            "{\"String\":\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},"
            "{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
            "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
            "\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2");
    for (int i = 0; i < 250; i++) { /* bytes 0xFA..0xFF have no <0xNN>: they become unk */
        snprintf(tmp, sizeof(tmp), ",\"<0x%02X>\":%d", i, 3 + i);
        add(&b, tmp);
    }
    add(&b, ",\"\\u2581\":259,\"a\":260,\"b\":261,\"\\u2581a\":262,\"ab\":263,\"\\u2581ab\":264,"
            "\"\\u00e9\":265,\"\\u2581\\u2581\":266},\"merges\":[\"\\u2581 a\",\"a b\","
            "\"\\u2581a b\",\"\\u2581 \\u2581\"]}}");
    toks[1] = load(b.p);
    /* The third: the same model behind a Metaspace pre-tokenizer (prepend "first", split). */
    const char *from =
        "{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},{\"type\":\"Replace\","
        "\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,";
    char *at = strstr(b.p, from);
    if (at == NULL) {
        abort();
    }
    struct buf m = {0};
    *at = '\0';
    add(&m, b.p);
    add(&m, "{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true}]},"
            "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
            "\"prepend_scheme\":\"first\",\"split\":true},");
    add(&m, at + strlen(from));
    toks[2] = load(m.p);
    free(m.p);
    free(b.p);
}

static void check_stream(const struct eng_tok *tok, const int32_t *ids, size_t n, unsigned flags,
                         const char *want, size_t want_len) {
    const size_t bound = eng_tok_stream_bound(tok);
    char *chunk = malloc(bound);
    struct eng_tok_stream s;
    struct kc_error err;
    size_t at = 0;
    if (chunk == NULL) {
        abort();
    }
    eng_tok_stream_init(&s, tok, flags);
    for (size_t i = 0; i <= n; i++) {
        size_t got = 0;
        if (i < n) {
            if (eng_tok_stream_push(&s, ids[i], chunk, bound, &got, &err) != 0) {
                abort();
            }
        } else if (eng_tok_stream_flush(&s, chunk, bound, &got) != 0) {
            abort();
        }
        if (eng__utf8_valid_prefix((const uint8_t *)chunk, got) != got || at + got > want_len ||
            memcmp(want + at, chunk, got) != 0) {
            abort();
        }
        at += got;
    }
    if (at != want_len) {
        abort();
    }
    free(chunk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (toks[0] == NULL) {
        init();
    }
    if (size < 1 || size > 8192) {
        return 0;
    }
    const int which = (data[0] & 1) ? 1 + ((data[0] >> 5) & 1) : 0;
    const unsigned eflags =
        ((data[0] & 2) ? ENG_TOK_ADD_SPECIAL : 0) | ((data[0] & 4) ? ENG_TOK_PARSE_SPECIAL : 0);
    const unsigned dflags = (data[0] & 8) ? ENG_TOK_SKIP_SPECIAL : 0;
    const struct eng_tok *tok = toks[which];
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const int32_t nv = eng_tok_vocab_size(tok);

    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err;
    const int rc = eng_tok_encode(tok, text, len, eflags, &ids, &n, &err);
    const bool valid = eng__utf8_valid_prefix((const uint8_t *)text, len) == len;
    if (rc != 0) {
        if (rc != KC_EINVAL || valid) {
            abort();
        }
    } else {
        if (!valid) {
            abort();
        }
        for (size_t i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= nv) {
                abort();
            }
        }
        char *out = NULL;
        size_t out_len = 0;
        if (eng_tok_decode(tok, ids, n, dflags, &out, &out_len, &err) != 0) {
            abort();
        }
        if (which == 0 && !(eflags & ENG_TOK_PARSE_SPECIAL) &&
            (out_len != len || memcmp(out, text, len) != 0)) {
            abort(); /* byte-level BPE is lossless */
        }
        check_stream(tok, ids, n, dflags, out, out_len);
        free(out);
    }
    free(ids);

    /* The same bytes as ids: out-of-range ones must fail cleanly, in-range ones decode. */
    const size_t n_raw = len / 4;
    if (n_raw > 0) {
        int32_t *raw = malloc(n_raw * sizeof(*raw));
        if (raw == NULL) {
            abort();
        }
        bool all_ok = true;
        for (size_t i = 0; i < n_raw; i++) {
            int32_t v;
            memcpy(&v, text + 4 * i, 4);
            if (data[0] & 16) {
                v = (int32_t)((uint32_t)v % (uint32_t)(nv + 2)) - 1; /* mostly in range */
            }
            raw[i] = v;
            const char *piece;
            size_t plen;
            all_ok = all_ok && eng_tok_id_to_piece(tok, v, &piece, &plen) == 0;
        }
        char *out = NULL;
        size_t out_len = 0;
        const int drc = eng_tok_decode(tok, raw, n_raw, dflags, &out, &out_len, &err);
        if ((drc == 0) != all_ok || (drc != 0 && drc != KC_ERANGE)) {
            abort();
        }
        if (drc == 0) {
            if (eng__utf8_valid_prefix((const uint8_t *)out, out_len) != out_len) {
                abort();
            }
            check_stream(tok, raw, n_raw, dflags, out, out_len);
        }
        free(out);
        free(raw);
    }
    return 0;
}
