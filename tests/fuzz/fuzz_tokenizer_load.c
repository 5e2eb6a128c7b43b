/*
 * fuzz_tokenizer_load.c — libFuzzer target for the tokenizer.json / tokenizer_config.json
 * loader (RELIABILITY.md A7). Input: tokenizer.json bytes, optionally followed by a NUL byte
 * and tokenizer_config.json bytes. A loaded tokenizer must then encode and decode a fixed text
 * without error other than the documented ones, with every id in range.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *json = (const char *)data;
    size_t len = size;
    const char *config = NULL;
    size_t config_len = 0;
    const char *nul = memchr(data, 0, size);
    if (nul != NULL) {
        len = (size_t)(nul - json);
        config = nul + 1;
        config_len = size - len - 1;
    }
    struct eng_tok *tok = NULL;
    struct kc_error err;
    if (eng_tok_load_buffer("fuzz.json", json, len, config, config_len, &tok, &err) != 0) {
        return 0;
    }
    static const char text[] = "Hello, world! <s> 123 caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD "
                               "e\xCC\x81 \xF0\x9F\x98\x80  \n\t<|x|>'s";
    int32_t *ids = NULL;
    size_t n = 0;
    const int rc = eng_tok_encode(tok, text, sizeof(text) - 1,
                                  ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL, &ids, &n, &err);
    /* KC_ERANGE: a hostile regex hit PCRE2's match limit; KC_ENOMEM: allocator_may_return_null */
    if (rc != 0 && rc != KC_ERANGE && rc != KC_ENOMEM) {
        abort();
    }
    const int32_t nv = eng_tok_vocab_size(tok);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= nv) {
            abort();
        }
    }
    char *out = NULL;
    size_t out_len = 0;
    if (rc == 0 && eng_tok_decode(tok, ids, n, 0, &out, &out_len, &err) != 0) {
        abort();
    }
    free(out);
    free(ids);
    eng_tok_free(tok);
    return 0;
}
