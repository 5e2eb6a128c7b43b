/* Unit tests for the log line formats of common/kc.c (--log-format): kc_json_quote keeps
 * every output valid JSON (quotes, control bytes, invalid UTF-8, truncation), and in json
 * format every line, with or without extra fields, is one JSON object. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/kc.h"

static void expect_roundtrip(const char *in, const char *want_decoded) {
    char out[256];
    size_t n = kc_json_quote(out, sizeof(out), in);
    assert_int_equal(n, strlen(out));
    json_error_t jerr;
    json_t *j = json_loads(out, JSON_DECODE_ANY, &jerr);
    if (j == NULL) {
        fail_msg("not JSON: %s (%s)", out, jerr.text);
    }
    assert_true(json_is_string(j));
    assert_string_equal(json_string_value(j), want_decoded);
    json_decref(j);
}

static void test_json_quote_escapes_and_repairs(void **state) {
    (void)state;
    expect_roundtrip("plain", "plain");
    expect_roundtrip("a\"b\\c\nd\te\r", "a\"b\\c\nd\te\r");
    expect_roundtrip("\x01\x1f\x7f", "\x01\x1f\x7f");
    expect_roundtrip("caf\xc3\xa9 \xe2\x82\xac", "caf\xc3\xa9 \xe2\x82\xac");
    /* invalid UTF-8: a lone continuation byte, a cut sequence, an overlong, a surrogate */
    expect_roundtrip("x\x80y", "x\xef\xbf\xbdy");
    expect_roundtrip("\xe2\x82", "\xef\xbf\xbd\xef\xbf\xbd");
    expect_roundtrip("\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd");
    expect_roundtrip("\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

static void test_json_quote_truncates_to_valid_json(void **state) {
    (void)state;
    char out[12];
    for (size_t cap = 3; cap <= sizeof(out); cap++) {
        kc_json_quote(out, cap,
                      "ab\"cd\xc3\xa9"
                      "efghij");
        assert_true(strlen(out) < cap);
        json_t *j = json_loads(out, JSON_DECODE_ANY, NULL);
        if (j == NULL) {
            fail_msg("cap %zu: not JSON: %s", cap, out);
        }
        json_decref(j);
    }
}

static void test_json_log_lines_are_objects(void **state) {
    (void)state;
    assert_int_equal(kc_log_format_parse("json"), KC_LOG_FMT_JSON);
    assert_int_equal(kc_log_format_parse("text"), KC_LOG_FMT_TEXT);
    assert_int_equal(kc_log_format_parse("xml"), KC_EINVAL);
    char path[] = "/tmp/kc_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    kc_log_format = KC_LOG_FMT_JSON;
    KC_INFO("hello \"%s\"\n", "w\x80rld");
    KC_LOG_FIELDS(KC_LOG_WARN, "\"status\":503,\"path\":\"/x\"", "status=%d", 503);
    kc_log_format = KC_LOG_FMT_TEXT;
    KC_INFO("text line");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[2048];
    assert_non_null(fgets(line, sizeof(line), f));
    json_t *a = json_loads(line, 0, NULL);
    assert_non_null(a);
    assert_string_equal(json_string_value(json_object_get(a, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(a, "msg")),
                        "hello \"w\xef\xbf\xbdrld\"\n");
    assert_non_null(json_object_get(a, "ts"));
    json_decref(a);
    assert_non_null(fgets(line, sizeof(line), f));
    json_t *b = json_loads(line, 0, NULL);
    assert_non_null(b);
    assert_int_equal(json_integer_value(json_object_get(b, "status")), 503);
    assert_string_equal(json_string_value(json_object_get(b, "path")), "/x");
    assert_string_equal(json_string_value(json_object_get(b, "level")), "warn");
    json_decref(b);
    assert_non_null(fgets(line, sizeof(line), f));
    assert_non_null(strstr(line, " info  test_json_log_lines_are_objects: text line"));
    fclose(f);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_quote_escapes_and_repairs),
        cmocka_unit_test(test_json_quote_truncates_to_valid_json),
        cmocka_unit_test(test_json_log_lines_are_objects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
