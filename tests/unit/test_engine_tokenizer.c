/*
 * Unit tests for tokenizer/: small tokenizer.json files written here, covering both BPE
 * styles (byte-level and SentencePiece with byte fallback), both merge forms, added tokens,
 * the post-processor and tokenizer_config.json, NFC, streaming decode of split UTF-8, hostile
 * tokenizer files and hostile inputs. Conformance with Hugging Face on real tokenizers is
 * tests/conformance/tokenizer/.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/kc.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

/* ---- a tiny string builder ---- */

struct sb {
    char *p;
    size_t n, cap;
};

static void sb_add(struct sb *b, const char *s, size_t len) {
    if (b->n + len + 1 > b->cap) {
        b->cap = (b->n + len + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...) {
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(tmp));
    sb_add(b, tmp, (size_t)n);
}

/* GPT-2's printable stand-in for byte b, as UTF-8 (JSON-safe: never '"' or '\\'). */
static void byte_char(int b, char out[4]) {
    int cp;
    const bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    if (direct) {
        cp = b;
    } else {
        int n = 0;
        for (int x = 0; x < b; x++) {
            const bool d = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
            n += !d;
        }
        cp = 256 + n;
    }
    if (cp == '"' || cp == '\\') {
        snprintf(out, 4, "\\%c", cp);
    } else if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* A byte-level tokenizer: ids 0..255 are the bytes, then the merges' results, then extra. */
static const char *const bl_merges[][2] = {
    {"h", "e"}, {"l", "l"}, {"he", "ll"},       {"hell", "o"},        {"\\u0120", "w"},
    {"o", "r"}, {"l", "d"}, {"\\u0120w", "or"}, {"\\u0120wor", "ld"}, {"a", "a"},
};
static const char *const bl_results[] = {"he", "ll", "hell",       "hello",        "\\u0120w",
                                         "or", "ld", "\\u0120wor", "\\u0120world", "aa"};
#define BL_N_MERGES 10

static char *bytelevel_json(bool array_merges, const char *added, const char *extra_vocab,
                            const char *post, bool ignore_merges) {
    struct sb b = {0};
    sb_printf(&b, "{\"version\":\"1.0\",\"added_tokens\":[%s],\"normalizer\":null,", added);
    sb_printf(&b, "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                  "\"trim_offsets\":true,\"use_regex\":true},");
    sb_printf(&b, "\"post_processor\":%s,", post);
    sb_printf(&b, "\"decoder\":{\"type\":\"ByteLevel\"},");
    sb_printf(&b, "\"model\":{\"type\":\"BPE\",\"ignore_merges\":%s,\"vocab\":{",
              ignore_merges ? "true" : "false");
    for (int i = 0; i < 256; i++) {
        char c[4];
        byte_char(i, c);
        sb_printf(&b, "%s\"%s\":%d", i ? "," : "", c, i);
    }
    for (int i = 0; i < BL_N_MERGES; i++) {
        sb_printf(&b, ",\"%s\":%d", bl_results[i], 256 + i);
    }
    sb_printf(&b, "%s},\"merges\":[", extra_vocab);
    for (int i = 0; i < BL_N_MERGES; i++) {
        if (array_merges) {
            sb_printf(&b, "%s[\"%s\",\"%s\"]", i ? "," : "", bl_merges[i][0], bl_merges[i][1]);
        } else {
            sb_printf(&b, "%s\"%s %s\"", i ? "," : "", bl_merges[i][0], bl_merges[i][1]);
        }
    }
    sb_printf(&b, "]}}");
    return b.p;
}

static struct eng_tok *load_ok(const char *json, const char *config) {
    struct eng_tok *tok = NULL;
    struct kc_error err = {0};
    const int rc = eng_tok_load_buffer("test.json", json, strlen(json), config,
                                       config ? strlen(config) : 0, &tok, &err);
    if (rc != 0) {
        fprintf(stderr, "load failed: %s\n", err.msg);
    }
    assert_int_equal(rc, 0);
    assert_non_null(tok);
    return tok;
}

static void expect_ids(const struct eng_tok *tok, const char *text, unsigned flags,
                       const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err = {0};
    const int rc = eng_tok_encode(tok, text, strlen(text), flags, &ids, &n, &err);
    if (rc != 0) {
        fprintf(stderr, "encode failed: %s\n", err.msg);
    }
    assert_int_equal(rc, 0);
    if (n != n_want || (n > 0 && memcmp(ids, want, n * sizeof(*ids)) != 0)) {
        fprintf(stderr, "text '%s': got", text);
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, " %d", ids[i]);
        }
        fprintf(stderr, ", want");
        for (size_t i = 0; i < n_want; i++) {
            fprintf(stderr, " %d", want[i]);
        }
        fprintf(stderr, "\n");
        fail();
    }
    free(ids);
}

static void expect_text(const struct eng_tok *tok, const int32_t *ids, size_t n, unsigned flags,
                        const char *want) {
    char *text = NULL;
    size_t len = 0;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_decode(tok, ids, n, flags, &text, &len, &err), 0);
    assert_int_equal(len, strlen(want));
    assert_string_equal(text, want);
    free(text);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / 4

/* ---- byte-level BPE ---- */

static void test_bytelevel_merges_in_both_forms_give_same_ids(void **state) {
    (void)state;
    for (int form = 0; form < 2; form++) {
        char *json = bytelevel_json(form == 1, "", "", "null", false);
        struct eng_tok *tok = load_ok(json, NULL);
        expect_ids(tok, "hello world", 0, IDS(259, 264));
        expect_text(tok, IDS(259, 264), 0, "hello world");
        assert_int_equal(eng_tok_vocab_size(tok), 266);
        const char *piece;
        size_t plen;
        assert_int_equal(eng_tok_id_to_piece(tok, 264, &piece, &plen), 0);
        assert_int_equal(plen, strlen("\xC4\xA0world"));
        assert_memory_equal(piece, "\xC4\xA0world", plen);
        assert_int_equal(eng_tok_piece_to_id(tok, "\xC4\xA0world", plen), 264);
        eng_tok_free(tok);
        free(json);
    }
}

static void test_bytelevel_merge_ties_go_leftmost(void **state) {
    (void)state;
    char *json = bytelevel_json(false, "", "", "null", false);
    struct eng_tok *tok = load_ok(json, NULL);
    /* "aaa": the pairs (0,1) and (1,2) have the same rank; HF merges the left one. */
    expect_ids(tok, "aaa", 0, IDS(265, 'a'));
    expect_ids(tok, "aaaa", 0, IDS(265, 265));
    /* The GPT-2 regex splits words, numbers, punctuation and whitespace runs. */
    expect_ids(tok, "he  ll", 0, IDS(256, ' ', ' ', 257));
    eng_tok_free(tok);
    free(json);
}

static void test_ignore_merges_takes_whole_words_from_the_vocab(void **state) {
    (void)state;
    /* "hex" is in the vocab but no merge builds it. */
    char *json = bytelevel_json(false, "", ",\"hex\":266", "null", true);
    struct eng_tok *tok = load_ok(json, NULL);
    expect_ids(tok, "hex", 0, IDS(266));
    eng_tok_free(tok);
    free(json);
    json = bytelevel_json(false, "", ",\"hex\":266", "null", false);
    tok = load_ok(json, NULL);
    expect_ids(tok, "hex", 0, IDS(256, 'x'));
    eng_tok_free(tok);
    free(json);
}

static const char added_tokens[] =
    "{\"id\":300,\"content\":\"<|x|>\",\"special\":true,\"normalized\":false},"
    "{\"id\":301,\"content\":\"<y>\",\"special\":false,\"normalized\":false},"
    "{\"id\":302,\"content\":\"<m>\",\"special\":true,\"lstrip\":true,\"rstrip\":true,"
    "\"normalized\":false},"
    "{\"id\":303,\"content\":\"<|x|>z\",\"special\":true,\"normalized\":false}";

static void test_added_tokens_match_longest_and_respect_parse_special(void **state) {
    (void)state;
    char *json = bytelevel_json(false, added_tokens, "", "null", false);
    struct eng_tok *tok = load_ok(json, NULL);
    assert_int_equal(eng_tok_vocab_size(tok), 304);
    expect_ids(tok, "a<|x|>b<y>", ENG_TOK_PARSE_SPECIAL, IDS('a', 300, 'b', 301));
    /* Longest match wins. */
    expect_ids(tok, "<|x|>z<|x|>", ENG_TOK_PARSE_SPECIAL, IDS(303, 300));
    /* Without parse_special, special text is plain text; non-special added tokens still match. */
    expect_ids(tok, "<|x|><y>", 0, IDS('<', '|', 'x', '|', '>', 301));
    /* lstrip/rstrip swallow the whitespace around the token. */
    expect_ids(tok, "a  <m>  b", ENG_TOK_PARSE_SPECIAL, IDS('a', 302, 'b'));
    /* Decode: special tokens can be skipped, non-special ones stay. */
    expect_text(tok, IDS('a', 300, 'b', 301), 0, "a<|x|>b<y>");
    expect_text(tok, IDS('a', 300, 'b', 301), ENG_TOK_SKIP_SPECIAL, "ab<y>");
    assert_true(eng_tok_is_special(tok, 300));
    assert_false(eng_tok_is_special(tok, 301));
    eng_tok_free(tok);
    free(json);
}

static void test_template_and_config_add_bos_eos(void **state) {
    (void)state;
    const char *post =
        "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|x|>\","
        "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],"
        "\"special_tokens\":{\"<|x|>\":{\"id\":\"<|x|>\",\"ids\":[300],\"tokens\":[\"<|x|>\"]}}}";
    char *json = bytelevel_json(false, added_tokens, "", post, false);
    struct eng_tok *tok = load_ok(json, NULL);
    expect_ids(tok, "a", ENG_TOK_ADD_SPECIAL, IDS(300, 'a'));
    expect_ids(tok, "a", 0, IDS('a'));
    expect_ids(tok, "", ENG_TOK_ADD_SPECIAL, IDS(300));
    assert_int_equal(eng_tok_bos(tok), 300);
    assert_int_equal(eng_tok_eos(tok), -1);
    eng_tok_free(tok);

    /* tokenizer_config.json's flags override the template, as transformers' Llama does. */
    const char *config = "{\"bos_token\":\"<m>\",\"eos_token\":{\"content\":\"<|x|>\"},"
                         "\"add_bos_token\":true,\"add_eos_token\":true,"
                         "\"model_max_length\":1000000000000000019884624838656}";
    tok = load_ok(json, config);
    expect_ids(tok, "a", ENG_TOK_ADD_SPECIAL, IDS(302, 'a', 300));
    assert_int_equal(eng_tok_bos(tok), 302);
    assert_int_equal(eng_tok_eos(tok), 300);
    eng_tok_free(tok);
    tok = load_ok(json, "{\"add_bos_token\":false}");
    expect_ids(tok, "a", ENG_TOK_ADD_SPECIAL, IDS('a'));
    eng_tok_free(tok);
    free(json);
}

/* ---- SentencePiece-style BPE ---- */

static char *spm_json(bool byte_fallback, bool fuse_unk) {
    struct sb b = {0};
    sb_printf(&b,
              "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
              "{\"id\":1,\"content\":\"<s>\",\"special\":true},"
              "{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
              "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":["
              "{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
              "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
              "\"pre_tokenizer\":null,"
              "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":["
              "{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
              "\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],"
              "\"tokens\":[\"<s>\"]}}},"
              "\"decoder\":{\"type\":\"Sequence\",\"decoders\":["
              "{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},\"content\":\" \"},"
              "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
              "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
              "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":%s,"
              "\"byte_fallback\":%s,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2",
              fuse_unk ? "true" : "false", byte_fallback ? "true" : "false");
    for (int i = 0; i < 256; i++) {
        sb_printf(&b, ",\"<0x%02X>\":%d", i, 3 + i);
    }
    /* 259 ▁, 260 a, 261 b, 262 ▁a, 263 ab, 264 ▁ab */
    sb_printf(&b, ",\"\\u2581\":259,\"a\":260,\"b\":261,\"\\u2581a\":262,\"ab\":263,"
                  "\"\\u2581ab\":264},\"merges\":[\"\\u2581 a\",\"a b\",\"\\u2581a b\"]}}");
    return b.p;
}

static void test_spm_prepends_space_marker_and_falls_back_to_bytes(void **state) {
    (void)state;
    char *json = spm_json(true, false);
    struct eng_tok *tok = load_ok(json, NULL);
    /* "ab é" -> <s> ▁ab ▁ <0xC3> <0xA9> */
    expect_ids(tok, "ab \xC3\xA9", ENG_TOK_ADD_SPECIAL, IDS(1, 264, 259, 3 + 0xC3, 3 + 0xA9));
    expect_text(tok, IDS(1, 264, 259, 3 + 0xC3, 3 + 0xA9), ENG_TOK_SKIP_SPECIAL, "ab \xC3\xA9");
    expect_text(tok, IDS(1, 264, 259, 3 + 0xC3, 3 + 0xA9), 0, "<s> ab \xC3\xA9");
    /* Special-token text only parses when allowed; each section gets its own ▁. */
    expect_ids(tok, "a<s>b", ENG_TOK_PARSE_SPECIAL, IDS(262, 1, 259, 261));
    /* A leading space survives the round trip: Strip removes only the prepended one. */
    expect_ids(tok, " a", 0, IDS(259, 262));
    expect_text(tok, IDS(259, 262), 0, " a");
    /* A byte-fallback run that is not valid UTF-8 decodes to U+FFFD, like HF's TextDecoder. */
    expect_text(tok, IDS(260, 3 + 0xE2, 3 + 0x82, 260), 0,
                "a\xEF\xBF\xBD"
                "a");
    eng_tok_free(tok);
    free(json);
}

static void test_metaspace_pre_tokenizer_prepends_per_scheme(void **state) {
    (void)state;
    static const char *const schemes[] = {"always", "first", "never"};
    for (int k = 0; k < 3; k++) {
        char *base = spm_json(true, false);
        struct sb b = {0};
        /* Swap the Prepend/Replace normalizer for a Metaspace pre-tokenizer. */
        char *norm = strstr(base, "\"normalizer\"");
        char *pre = strstr(base, "\"pre_tokenizer\":null,");
        assert_non_null(norm);
        assert_non_null(pre);
        sb_add(&b, base, (size_t)(norm - base));
        sb_printf(&b,
                  "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\","
                  "\"replacement\":\"\\u2581\",\"prepend_scheme\":\"%s\",\"split\":%s},",
                  schemes[k], k == 0 ? "true" : "false");
        sb_add(&b, pre + strlen("\"pre_tokenizer\":null,"),
               strlen(pre + strlen("\"pre_tokenizer\":null,")));
        struct eng_tok *tok = load_ok(b.p, NULL);
        if (k == 2) {
            expect_ids(tok, "ab ab", 0, IDS(263, 264));
        } else {
            expect_ids(tok, "ab ab", 0, IDS(264, 264));
        }
        /* "first": only the section at the start of the input gets the prefix. */
        if (k == 1) {
            expect_ids(tok, "ab<s>ab", ENG_TOK_PARSE_SPECIAL, IDS(264, 1, 263));
        } else if (k == 0) {
            expect_ids(tok, "ab<s>ab", ENG_TOK_PARSE_SPECIAL, IDS(264, 1, 264));
        }
        eng_tok_free(tok);
        free(b.p);
        free(base);
    }
}

static void test_spm_unknown_chars_become_unk_and_fuse(void **state) {
    (void)state;
    char *json = spm_json(false, true);
    struct eng_tok *tok = load_ok(json, NULL);
    expect_ids(tok,
               "a\xC3\xA9\xC3\xA9"
               "b",
               0, IDS(262, 0, 261));
    eng_tok_free(tok);
    free(json);
    json = spm_json(false, false);
    tok = load_ok(json, NULL);
    expect_ids(tok,
               "a\xC3\xA9\xC3\xA9"
               "b",
               0, IDS(262, 0, 0, 261));
    eng_tok_free(tok);
    free(json);
}

static void test_long_single_word_is_not_quadratic(void **state) {
    (void)state;
    /* 256 KiB of one letter: one word for SPM; the heap keeps this O(n log n). Not timed. */
    char *json = spm_json(true, false);
    struct eng_tok *tok = load_ok(json, NULL);
    const size_t n = 256 << 10;
    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, 'a', n);
    text[n] = '\0';
    int32_t *ids = NULL;
    size_t n_ids = 0;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_encode(tok, text, n, 0, &ids, &n_ids, &err), 0);
    assert_int_equal(n_ids, n); /* ▁a then a ... */
    assert_int_equal(ids[0], 262);
    assert_int_equal(ids[n_ids - 1], 260);
    free(ids);
    free(text);
    eng_tok_free(tok);
    free(json);
}

/* ---- NFC ---- */

static void expect_nfc(const char *in, const char *want) {
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(eng__tok_nfc(in, strlen(in), &out, &len), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(out, want, len);
    free(out);
}

static void test_nfc_composes_reorders_and_handles_hangul(void **state) {
    (void)state;
    expect_nfc("e\xCC\x81", "\xC3\xA9");             /* e + acute -> é */
    expect_nfc("o\xCC\x82\xCC\xA3", "\xE1\xBB\x99"); /* o + circumflex + dot below -> ộ */
    expect_nfc("o\xCC\xA3\xCC\x82", "\xE1\xBB\x99"); /* same, other order */
    expect_nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"); /* jamo -> 각 */
    expect_nfc("\xE2\x84\xAB", "\xC3\x85");                             /* Angstrom sign -> Å */
    expect_nfc("\xCD\x84", "\xCC\x88\xCC\x81"); /* U+0344 never recomposes */
    expect_nfc("abc", "abc");
    /* A long run of marks in descending class order must come out sorted (merge sort path). */
    struct sb in = {0}, want = {0};
    sb_add(&in, "x", 1);
    sb_add(&want, "x", 1);
    for (int i = 0; i < 40; i++) {
        sb_add(&in, "\xCC\x81\xCC\x96", 4); /* U+0301 (230), U+0316 (220) */
    }
    for (int i = 0; i < 40; i++) {
        sb_add(&want, "\xCC\x96", 2);
    }
    for (int i = 0; i < 40; i++) {
        sb_add(&want, "\xCC\x81", 2);
    }
    expect_nfc(in.p, want.p);
    free(in.p);
    free(want.p);
}

static void test_nfc_normalizer_applies_before_the_model(void **state) {
    (void)state;
    const char *json = "{\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":null,"
                       "\"decoder\":{\"type\":\"Fuse\"},\"model\":{\"type\":\"BPE\",\"vocab\":"
                       "{\"\\u00e9\":0,\"e\":1,\"\\u0301\":2},\"merges\":[]}}";
    struct eng_tok *tok = load_ok(json, NULL);
    expect_ids(tok, "e\xCC\x81", 0, IDS(0));
    expect_ids(tok,
               "\xC3\xA9"
               "e",
               0, IDS(0, 1));
    eng_tok_free(tok);
}

/* ---- streaming decode ---- */

static void test_stream_holds_back_incomplete_utf8(void **state) {
    (void)state;
    char *json = bytelevel_json(false, added_tokens, "", "null", false);
    struct eng_tok *tok = load_ok(json, NULL);
    const size_t bound = eng_tok_stream_bound(tok);
    char *out = malloc(bound);
    assert_non_null(out);
    struct eng_tok_stream s;
    struct kc_error err = {0};
    size_t got = 99;
    /* "é😀" byte by byte: nothing until a character is complete. */
    const int32_t ids[] = {0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80};
    const size_t want_len[] = {0, 2, 0, 0, 0, 4};
    eng_tok_stream_init(&s, tok, 0);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(eng_tok_stream_push(&s, ids[i], out, bound, &got, &err), 0);
        assert_int_equal(got, want_len[i]);
    }
    assert_memory_equal(out, "\xF0\x9F\x98\x80", 4);
    /* An invalid continuation yields U+FFFD at once and the byte starts afresh. */
    assert_int_equal(eng_tok_stream_push(&s, 0xE2, out, bound, &got, &err), 0);
    assert_int_equal(got, 0);
    assert_int_equal(eng_tok_stream_push(&s, 'a', out, bound, &got, &err), 0);
    assert_int_equal(got, 4);
    assert_memory_equal(out,
                        "\xEF\xBF\xBD"
                        "a",
                        4);
    /* An added token ends a byte run; flush turns a dangling lead byte into U+FFFD. */
    assert_int_equal(eng_tok_stream_push(&s, 0xF0, out, bound, &got, &err), 0);
    assert_int_equal(got, 0);
    assert_int_equal(eng_tok_stream_push(&s, 301, out, bound, &got, &err), 0);
    assert_int_equal(got, 6);
    assert_memory_equal(out, "\xEF\xBF\xBD<y>", 6);
    assert_int_equal(eng_tok_stream_push(&s, 0xE4, out, bound, &got, &err), 0);
    assert_int_equal(eng_tok_stream_flush(&s, out, bound, &got), 0);
    assert_int_equal(got, 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    /* Bad ids leave the stream alone; a small buffer is refused. */
    assert_int_equal(eng_tok_stream_push(&s, 304, out, bound, &got, &err), KC_ERANGE);
    assert_int_equal(eng_tok_stream_push(&s, -1, out, bound, &got, &err), KC_ERANGE);
    assert_int_equal(eng_tok_stream_push(&s, 'a', out, 2, &got, &err), KC_EINVAL);
    free(out);
    eng_tok_free(tok);
    free(json);
}

static void test_stream_equals_batch_decode_on_random_ids(void **state) {
    (void)state;
    char *json = spm_json(true, false);
    struct eng_tok *tok = load_ok(json, NULL);
    const size_t bound = eng_tok_stream_bound(tok);
    char *chunk = malloc(bound);
    assert_non_null(chunk);
    uint32_t seed = 12345;
    for (int round = 0; round < 200; round++) {
        int32_t ids[40];
        const size_t n = 1 + round % 40;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1664525u + 1013904223u;
            ids[i] = (int32_t)((seed >> 8) % 265);
        }
        char *text = NULL;
        size_t len = 0;
        struct kc_error err = {0};
        assert_int_equal(eng_tok_decode(tok, ids, n, 0, &text, &len, &err), 0);
        struct sb all = {0};
        sb_add(&all, "", 0);
        struct eng_tok_stream s;
        eng_tok_stream_init(&s, tok, 0);
        for (size_t i = 0; i <= n; i++) {
            size_t got = 0;
            if (i < n) {
                assert_int_equal(eng_tok_stream_push(&s, ids[i], chunk, bound, &got, &err), 0);
            } else {
                assert_int_equal(eng_tok_stream_flush(&s, chunk, bound, &got), 0);
            }
            /* Every chunk is valid UTF-8 on its own. */
            assert_int_equal(eng__utf8_valid_prefix((const uint8_t *)chunk, got), got);
            sb_add(&all, chunk, got);
        }
        assert_int_equal(all.n, len);
        assert_memory_equal(all.p, text, len);
        free(all.p);
        free(text);
    }
    free(chunk);
    eng_tok_free(tok);
    free(json);
}

/* ---- hostile input ---- */

static void test_invalid_utf8_and_oversized_text_are_rejected(void **state) {
    (void)state;
    char *json = spm_json(true, false);
    struct eng_tok *tok = load_ok(json, NULL);
    static const char *const bad[] = {"ab\xFF",           "\xC3",    "\xE0\x80\x80", "\xED\xA0\x80",
                                      "\xF4\x90\x80\x80", "\xC0\xAF"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        struct kc_error err = {0};
        assert_int_equal(eng_tok_encode(tok, bad[i], strlen(bad[i]), 0, &ids, &n, &err), KC_EINVAL);
        assert_non_null(strstr(err.msg, "not valid UTF-8"));
        assert_null(ids);
    }
    const size_t big = ENG_TOK_MAX_TEXT + 1;
    char *text = calloc(big, 1);
    assert_non_null(text);
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_encode(tok, text, big, 0, &ids, &n, &err), KC_ERANGE);
    free(text);
    eng_tok_free(tok);
    free(json);
}

static void test_exploding_normalizer_is_capped(void **state) {
    (void)state;
    /* Ten Replace steps each turning "a" into ten: 10^10 times longer without the cap. */
    struct sb b = {0};
    sb_printf(&b, "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[");
    for (int i = 0; i < 10; i++) {
        sb_printf(&b,
                  "%s{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},"
                  "\"content\":\"aaaaaaaaaa\"}",
                  i ? "," : "");
    }
    sb_printf(&b, "]},\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}");
    struct eng_tok *tok = load_ok(b.p, NULL);
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_encode(tok, "aaaa", 4, 0, &ids, &n, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "normalizer"));
    assert_int_equal(eng_tok_encode(tok, "b", 1, 0, &ids, &n, &err), 0);
    free(ids);
    eng_tok_free(tok);
    /* The same normalizer on a normalized added token fails the load, naming the token. */
    char *added = strstr(b.p, "\"normalizer\"");
    struct sb c = {0};
    sb_add(&c, "{\"added_tokens\":[{\"id\":1,\"content\":\"aaa\",\"normalized\":true}],",
           strlen("{\"added_tokens\":[{\"id\":1,\"content\":\"aaa\",\"normalized\":true}],"));
    sb_add(&c, added, strlen(added));
    tok = NULL;
    assert_int_equal(eng_tok_load_buffer("x.json", c.p, c.n, NULL, 0, &tok, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "added_tokens[0]"));
    assert_null(tok);
    free(c.p);
    free(b.p);
}

static void test_decode_rejects_out_of_range_ids(void **state) {
    (void)state;
    /* id 3 is a hole: the vocab has 0, 1 and 4. */
    const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":4},"
                       "\"merges\":[]},\"decoder\":null}";
    struct eng_tok *tok = load_ok(json, NULL);
    assert_int_equal(eng_tok_vocab_size(tok), 5);
    const int32_t bad[] = {-1, 5, 3, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *text = NULL;
        size_t len = 0;
        struct kc_error err = {0};
        const int32_t ids[] = {0, bad[i]};
        assert_int_equal(eng_tok_decode(tok, ids, 2, 0, &text, &len, &err), KC_ERANGE);
        assert_non_null(strstr(err.msg, "position 1"));
        assert_null(text);
        const char *piece = NULL;
        size_t plen = 0;
        assert_int_equal(eng_tok_id_to_piece(tok, bad[i], &piece, &plen), KC_ERANGE);
    }
    /* No decoder: pieces joined with spaces, like HF. */
    expect_text(tok, IDS(0, 1, 4), 0, "a b c");
    eng_tok_free(tok);
}

struct bad_file {
    const char *json;
    int code;
    const char *msg; /* substring of the message */
};

#define MODEL_OK "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[]}"

static const struct bad_file bad_files[] = {
    {"", KC_EFORMAT, "invalid JSON"},
    {"{\"model\":", KC_EFORMAT, "invalid JSON"},
    {"[1,2]", KC_EFORMAT, "top level must be a JSON object"},
    {"{}", KC_EFORMAT, "'model' is missing"},
    {"{\"model\":{\"vocab\":[]}}", KC_EFORMAT, "model.vocab is missing or not an object"},
    {"{\"model\":{\"vocab\":{}}}", KC_EFORMAT, "model.vocab is empty"},
    {"{\"model\":{\"vocab\":{\"a\":\"0\"}}}", KC_EFORMAT, "id must be an integer"},
    {"{\"model\":{\"vocab\":{\"a\":1.5}}}", KC_EFORMAT, "id must be an integer"},
    {"{\"model\":{\"vocab\":{\"a\":-1}}}", KC_ERANGE, "outside"},
    {"{\"model\":{\"vocab\":{\"a\":4294967296}}}", KC_ERANGE, "outside"},
    {"{\"model\":{\"vocab\":{\"a\":2000000000}}}", KC_ERANGE, "outside"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":0}}}", KC_EFORMAT, "id 0 is used by both"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"a\":1}}}", KC_EFORMAT, "duplicate object key"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}}", KC_EFORMAT,
     "'c' is not in the vocabulary"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", KC_EFORMAT,
     "result 'ab' is not in the vocabulary"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"ab\"]}}", KC_EFORMAT,
     "two pieces separated"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\"]]}}", KC_EFORMAT,
     "merges[0] must be"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[7]}}", KC_EFORMAT, "merges[0] must be"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":{}}}", KC_EFORMAT, "merges must be an array"},
    {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", KC_EUNSUPPORTED, "only BPE"},
    {"{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{\"a\":0}}}", KC_EUNSUPPORTED,
     "dropout"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"unk_token\":\"<unk>\"}}", KC_EFORMAT,
     "unk_token '<unk>' is not a token"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"byte_fallback\":\"yes\"}}", KC_EFORMAT,
     "must be a boolean"},
    {"{\"normalizer\":{\"type\":\"Lowercase\"}," MODEL_OK "}", KC_EUNSUPPORTED,
     "normalizer type 'Lowercase' is not supported"},
    {"{\"normalizer\":[]," MODEL_OK "}", KC_EFORMAT, "normalizer must be an object"},
    {"{\"normalizer\":{\"type\":7}," MODEL_OK "}", KC_EFORMAT, "normalizer.type must be"},
    {"{\"pre_tokenizer\":{\"type\":\"Metaspace\",\"prepend_scheme\":\"sometimes\"}," MODEL_OK "}",
     KC_EFORMAT, "prepend_scheme 'sometimes'"},
    {"{\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"ab\"}," MODEL_OK "}",
     KC_EUNSUPPORTED, "replacement must be one character"},
    {"{\"pre_tokenizer\":{\"type\":\"Whitespace\"}," MODEL_OK "}", KC_EUNSUPPORTED,
     "pre-tokenizer type 'Whitespace'"},
    {"{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
     "\"behavior\":\"Isolated\"}," MODEL_OK "}",
     KC_EUNSUPPORTED, "does not compile"},
    {"{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
     "\"behavior\":\"MergedWithNext\"}," MODEL_OK "}",
     KC_EUNSUPPORTED, "behavior 'MergedWithNext'"},
    {"{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{}}," MODEL_OK "}", KC_EFORMAT,
     "String or Regex"},
    {"{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Sequence\","
     "\"pretokenizers\":[{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Sequence\","
     "\"pretokenizers\":[{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Sequence\","
     "\"pretokenizers\":[{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Sequence\","
     "\"pretokenizers\":[{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Sequence\","
     "\"pretokenizers\":[]}]}]}]}]}]}]}]}]}]}," MODEL_OK "}",
     KC_ERANGE, "nested deeper"},
    {"{\"decoder\":{\"type\":\"CTC\"}," MODEL_OK "}", KC_EUNSUPPORTED, "decoder type 'CTC'"},
    {"{\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Strip\",\"content\":\" \","
     "\"start\":1,\"stop\":0}]}," MODEL_OK "}",
     KC_EUNSUPPORTED, "without a Fuse"},
    {"{\"decoder\":{\"type\":\"Sequence\",\"decoders\":["
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aaaaaaaaaaaaaaaa\"},"
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aaaaaaaaaaaaaaaa\"},"
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aaaaaaaaaaaaaaaa\"},"
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aaaaaaaaaaaaaaaa\"}"
     "]}," MODEL_OK "}",
     KC_ERANGE, "longer than"},
    {"{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
     "{\"id\":\"<s>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{}}," MODEL_OK "}",
     KC_EFORMAT, "special token '<s>' has no ids"},
    {"{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
     "{\"id\":\"<s>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<s>\":{\"ids\":"
     "[99]}}}," MODEL_OK "}",
     KC_ERANGE, "id 99 is not a token"},
    {"{\"added_tokens\":[{\"id\":0,\"content\":\"zz\"}]," MODEL_OK "}", KC_EFORMAT,
     "id 0 is 'a' in the vocabulary but 'zz' here"},
    {"{\"added_tokens\":[{\"id\":5,\"content\":\"\"}]," MODEL_OK "}", KC_EFORMAT,
     "content must be a non-empty string"},
    {"{\"added_tokens\":[{\"id\":-5,\"content\":\"x\"}]," MODEL_OK "}", KC_ERANGE, "outside"},
    {"{\"added_tokens\":[{\"content\":\"x\"}]," MODEL_OK "}", KC_EFORMAT, "id must be an integer"},
    {"{\"added_tokens\":[7]," MODEL_OK "}", KC_EFORMAT, "added_tokens[0] must be an object"},
    {"{\"added_tokens\":{}," MODEL_OK "}", KC_EFORMAT, "added_tokens must be an array"},
};

static void test_bad_tokenizer_files_fail_with_clear_errors(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
        const struct bad_file *b = &bad_files[i];
        struct eng_tok *tok = NULL;
        struct kc_error err = {0};
        const int rc =
            eng_tok_load_buffer("bad.json", b->json, strlen(b->json), NULL, 0, &tok, &err);
        if (rc != b->code || strstr(err.msg, b->msg) == NULL ||
            strncmp(err.msg, "bad.json", 8) != 0) {
            fprintf(stderr, "case %zu: rc %d (want %d), msg '%s' (want '%s')\n", i, rc, b->code,
                    err.msg, b->msg);
            fail();
        }
        assert_null(tok);
    }
}

static void test_deeply_nested_json_is_rejected(void **state) {
    (void)state;
    const size_t depth = 100000;
    char *json = malloc(depth + 16);
    assert_non_null(json);
    memcpy(json, "{\"model\":", 9);
    memset(json + 9, '[', depth);
    const size_t len = 9 + depth;
    struct eng_tok *tok = NULL;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_load_buffer("deep.json", json, len, NULL, 0, &tok, &err), KC_EFORMAT);
    assert_null(tok);
    free(json);
}

static void test_bad_config_fails_with_clear_errors(void **state) {
    (void)state;
    const char *json = "{" MODEL_OK "}";
    static const char *const configs[] = {"[]", "{\"bos_token\":7}", "{\"bos_token\":\"zz\"}",
                                          "{\"add_bos_token\":true}", "{"};
    for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++) {
        struct eng_tok *tok = NULL;
        struct kc_error err = {0};
        const int rc = eng_tok_load_buffer("t.json", json, strlen(json), configs[i],
                                           strlen(configs[i]), &tok, &err);
        assert_int_equal(rc, KC_EFORMAT);
        assert_non_null(strstr(err.msg, "tokenizer_config.json"));
        assert_null(tok);
    }
}

static void test_load_from_directory_and_file(void **state) {
    (void)state;
    char dir[] = "/tmp/kc_tok_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], cpath[256];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    snprintf(cpath, sizeof(cpath), "%s/tokenizer_config.json", dir);
    char *json = spm_json(true, false);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    f = fopen(cpath, "w");
    assert_non_null(f);
    fputs("{\"add_bos_token\":false,\"eos_token\":\"</s>\",\"clean_up_tokenization_spaces\":true}",
          f);
    fclose(f);
    struct kc_error err = {0};
    struct eng_tok *a = NULL, *b = NULL;
    assert_int_equal(eng_tok_load(dir, &a, &err), 0);
    assert_int_equal(eng_tok_load(path, &b, &err), 0);
    expect_ids(a, "ab", ENG_TOK_ADD_SPECIAL, IDS(264));
    expect_ids(b, "ab", ENG_TOK_ADD_SPECIAL, IDS(264));
    assert_int_equal(eng_tok_eos(a), 2);
    assert_true(eng_tok_clean_up_default(a));
    eng_tok_free(a);
    eng_tok_free(b);
    snprintf(path, sizeof(path), "%s/missing", dir);
    assert_int_equal(eng_tok_load(path, &a, &err), KC_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing"));
    unlink(cpath);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    unlink(path);
    assert_int_equal(eng_tok_load(dir, &a, &err), KC_ENOTFOUND);
    rmdir(dir);
    free(json);
}

static void test_clean_up_spaces_is_opt_in(void **state) {
    (void)state;
    const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\".\":1,\"n't\":2},"
                       "\"merges\":[]},\"decoder\":null}";
    struct eng_tok *tok = load_ok(json, NULL);
    expect_text(tok, IDS(0, 1, 0, 2), 0, "a . a n't");
    expect_text(tok, IDS(0, 1, 0, 2), ENG_TOK_CLEAN_UP_SPACES, "a. an't");
    eng_tok_free(tok);
}

struct thread_arg {
    const struct eng_tok *tok;
    const char *text;
    int32_t *ids;
    size_t n;
    int rc;
};

static void *encode_thread(void *p) {
    struct thread_arg *a = p;
    struct kc_error err;
    for (int i = 0; i < 20 && a->rc == 0; i++) {
        free(a->ids);
        a->ids = NULL;
        a->rc = eng_tok_encode(a->tok, a->text, strlen(a->text), ENG_TOK_PARSE_SPECIAL, &a->ids,
                               &a->n, &err);
    }
    return NULL;
}

static void test_one_tokenizer_encodes_on_many_threads(void **state) {
    (void)state;
    char *json = bytelevel_json(false, added_tokens, "", "null", false);
    struct eng_tok *tok = load_ok(json, NULL);
    const char *text = "hello world <|x|> aaaa the hello  world\n\t 12345 <y> hello";
    struct thread_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){.tok = tok, .text = text};
        assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].rc, 0);
        assert_int_equal(args[i].n, args[0].n);
        assert_memory_equal(args[i].ids, args[0].ids, args[0].n * sizeof(int32_t));
    }
    for (int i = 0; i < 4; i++) {
        free(args[i].ids);
    }
    eng_tok_free(tok);
    free(json);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytelevel_merges_in_both_forms_give_same_ids),
        cmocka_unit_test(test_bytelevel_merge_ties_go_leftmost),
        cmocka_unit_test(test_ignore_merges_takes_whole_words_from_the_vocab),
        cmocka_unit_test(test_added_tokens_match_longest_and_respect_parse_special),
        cmocka_unit_test(test_template_and_config_add_bos_eos),
        cmocka_unit_test(test_spm_prepends_space_marker_and_falls_back_to_bytes),
        cmocka_unit_test(test_spm_unknown_chars_become_unk_and_fuse),
        cmocka_unit_test(test_metaspace_pre_tokenizer_prepends_per_scheme),
        cmocka_unit_test(test_long_single_word_is_not_quadratic),
        cmocka_unit_test(test_nfc_composes_reorders_and_handles_hangul),
        cmocka_unit_test(test_nfc_normalizer_applies_before_the_model),
        cmocka_unit_test(test_stream_holds_back_incomplete_utf8),
        cmocka_unit_test(test_stream_equals_batch_decode_on_random_ids),
        cmocka_unit_test(test_invalid_utf8_and_oversized_text_are_rejected),
        cmocka_unit_test(test_exploding_normalizer_is_capped),
        cmocka_unit_test(test_decode_rejects_out_of_range_ids),
        cmocka_unit_test(test_bad_tokenizer_files_fail_with_clear_errors),
        cmocka_unit_test(test_deeply_nested_json_is_rejected),
        cmocka_unit_test(test_bad_config_fails_with_clear_errors),
        cmocka_unit_test(test_load_from_directory_and_file),
        cmocka_unit_test(test_clean_up_spaces_is_opt_in),
        cmocka_unit_test(test_one_tokenizer_encodes_on_many_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
