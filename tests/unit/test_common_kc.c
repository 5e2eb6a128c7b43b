/* Unit tests for common/kc: error codes, messages, overflow-checked sizes, file reading. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kc.h"

static void test_strerror_names_every_code(void **state) {
    (void)state;
    assert_string_equal(kc_strerror(KC_OK), "success");
    assert_string_equal(kc_strerror(KC_EFORMAT), "malformed file or data");
    assert_string_equal(kc_strerror(-9999), "unknown error");
}

static void test_error_set_and_prefix_build_one_message(void **state) {
    (void)state;
    struct kc_error err = {0};
    int rc = kc_error_set(&err, KC_ERANGE, "tensor '%s' too big", "w");
    assert_int_equal(rc, KC_ERANGE);
    kc_error_prefix(&err, "%s", "model.safetensors");
    assert_string_equal(err.msg, "model.safetensors: tensor 'w' too big");
    assert_int_equal(kc_error_set(NULL, KC_EIO, "x"), KC_EIO);
}

static void test_size_helpers_detect_overflow(void **state) {
    (void)state;
    size_t out = 7;
    assert_false(kc_size_mul(SIZE_MAX / 2 + 1, 2, &out));
    assert_int_equal(out, 7);
    assert_true(kc_size_mul(3, 5, &out));
    assert_int_equal(out, 15);
    assert_false(kc_size_add(SIZE_MAX, 1, &out));
    assert_null(kc_calloc(SIZE_MAX / 4, 8));
}

static void test_file_read_reports_missing_and_oversize(void **state) {
    (void)state;
    struct kc_error err = {0};
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(kc_file_read("/nonexistent/kvcast", 10, &buf, &len, &err), KC_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/kvcast"));
    char path[] = "/tmp/kc_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("hello world", f);
    fclose(f);
    assert_int_equal(kc_file_read(path, 4, &buf, &len, &err), KC_ERANGE);
    assert_int_equal(kc_file_read(path, 100, &buf, &len, &err), KC_OK);
    assert_int_equal(len, 11);
    assert_string_equal(buf, "hello world");
    free(buf);
    remove(path);
}

static void test_path_join_rejects_truncation(void **state) {
    (void)state;
    char out[16];
    assert_int_equal(kc_path_join(out, sizeof(out), "models/", "x.json"), KC_OK);
    assert_string_equal(out, "models/x.json");
    assert_int_equal(kc_path_join(out, sizeof(out), "models/base", "config.json"), KC_ERANGE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_names_every_code),
        cmocka_unit_test(test_error_set_and_prefix_build_one_message),
        cmocka_unit_test(test_size_helpers_detect_overflow),
        cmocka_unit_test(test_file_read_reports_missing_and_oversize),
        cmocka_unit_test(test_path_join_rejects_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
