/* Unit tests for eng_tok_encode_max (the server's early context check, issue 15 item 4) and
 * for encoding one shared tokenizer from several threads at once (the server now tokenizes
 * prompts on libuv's threadpool). Model: the shipped tiny bundle's BPE tokenizer. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tokenizer/tokenizer.h"

static struct eng_tok *tok;
static char *text;
static size_t text_len;
static int32_t *full;
static size_t n_full;

static int setup(void **state) {
    (void)state;
    struct kc_error err = {0};
    if (eng_tok_load("models/tiny/base", &tok, &err) != KC_OK) {
        return -1;
    }
    static const char piece[] = "And the LORD spake unto Moses, saying 12345; Aaron's sons. ";
    const size_t reps = 400;
    text_len = reps * (sizeof(piece) - 1);
    text = malloc(text_len + 1);
    for (size_t i = 0; i < reps; i++) {
        memcpy(text + i * (sizeof(piece) - 1), piece, sizeof(piece) - 1);
    }
    text[text_len] = '\0';
    return eng_tok_encode(tok, text, text_len, ENG_TOK_ADD_SPECIAL, &full, &n_full, &err);
}

static int teardown(void **state) {
    (void)state;
    free(full);
    free(text);
    eng_tok_free(tok);
    return 0;
}

static void test_limit_at_the_count_is_identical(void **state) {
    (void)state;
    assert_true(n_full > 1000);
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err = {0};
    assert_int_equal(
        eng_tok_encode_max(tok, text, text_len, ENG_TOK_ADD_SPECIAL, n_full, &ids, &n, &err),
        KC_OK);
    assert_int_equal(n, n_full);
    assert_memory_equal(ids, full, n * sizeof(int32_t));
    free(ids);
    /* 0 means no limit. */
    assert_int_equal(
        eng_tok_encode_max(tok, text, text_len, ENG_TOK_ADD_SPECIAL, 0, &ids, &n, &err), KC_OK);
    assert_int_equal(n, n_full);
    free(ids);
}

static void test_one_over_the_limit_fails_with_econtext(void **state) {
    (void)state;
    const size_t limits[] = {n_full - 1, 100, 1};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        int32_t *ids = (int32_t *)(uintptr_t)0x1;
        size_t n = 12345;
        struct kc_error err = {0};
        assert_int_equal(
            eng_tok_encode_max(tok, text, text_len, ENG_TOK_ADD_SPECIAL, limits[i], &ids, &n, &err),
            KC_ECONTEXT);
        /* outputs untouched on failure */
        assert_true(ids == (int32_t *)(uintptr_t)0x1);
        assert_int_equal(n, 12345);
        assert_non_null(strstr(err.msg, "more than"));
    }
    /* The BOS counts: a one-word text with limit 1 fails with it, passes without it. */
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error err = {0};
    assert_int_equal(eng_tok_encode_max(tok, "the", 3, ENG_TOK_ADD_SPECIAL, 1, &ids, &n, &err),
                     KC_ECONTEXT);
    assert_int_equal(eng_tok_encode_max(tok, "the", 3, 0, 1, &ids, &n, &err), KC_OK);
    assert_int_equal(n, 1);
    free(ids);
}

static void *encode_thread(void *arg) {
    int *ok = arg;
    *ok = 1;
    for (int r = 0; r < 5; r++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (eng_tok_encode(tok, text, text_len, ENG_TOK_ADD_SPECIAL, &ids, &n, NULL) != KC_OK ||
            n != n_full || memcmp(ids, full, n * sizeof(int32_t)) != 0) {
            *ok = 0;
        }
        free(ids);
    }
    return NULL;
}

/* The tokenizer is shared, read-only; every call keeps its scratch (and BPE cache) to
 * itself, so concurrent encodes give the single-threaded answer. */
static void test_concurrent_encodes_agree(void **state) {
    (void)state;
    pthread_t th[4];
    int ok[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &ok[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ok[i], 1);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_at_the_count_is_identical),
        cmocka_unit_test(test_one_over_the_limit_fails_with_econtext),
        cmocka_unit_test(test_concurrent_encodes_agree),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
