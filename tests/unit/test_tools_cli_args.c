/* Unit tests for tools/cli/args (the subcommands' one command-line parser) and
 * tools/cli/json_out (rounded, NaN-safe JSON numbers). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tools/cli/args.h"
#include "tools/cli/json_out.h"

/* The options of a small subcommand, parsed like cmd_eval.c does. */
struct opts {
    const char *bundle;
    long samples;
    double ratio;
    bool json;
    int goodput_items;
    bool help;
};

/* Returns 0, -1 after --help, or the parser's exit code. argv[0] is the subcommand. */
static int parse(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof(*o));
    struct kc_args a;
    kc_args_init(&a, "kvcast test", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            o->help = true;
            return -1;
        } else if (kc_args_str(&a, "--bundle", &o->bundle) ||
                   kc_args_long(&a, "--samples", 1, 100, &o->samples) ||
                   kc_args_double(&a, "--ratio", 0.0, 1.0, &o->ratio)) {
        } else if (kc_args_str(&a, "--goodput", &v)) {
            do {
                o->goodput_items++;
            } while (kc_args_more(&a, &v));
        } else if (kc_args_flag(&a, "--json")) {
            o->json = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    return 0;
}

#define PARSE(o, ...)                                                                              \
    parse((int)(sizeof((char *[]){"test", __VA_ARGS__}) / sizeof(char *)),                         \
          (char *[]){"test", __VA_ARGS__}, (o))

static void test_equals_form_is_the_spaced_form(void **state) {
    (void)state;
    struct opts a, b;
    assert_int_equal(PARSE(&a, "--bundle", "b.json", "--samples", "7", "--ratio", "0.5", "--json"),
                     0);
    assert_int_equal(PARSE(&b, "--bundle=b.json", "--samples=7", "--ratio=0.5", "--json"), 0);
    assert_string_equal(a.bundle, "b.json");
    assert_string_equal(b.bundle, "b.json");
    assert_int_equal(a.samples, 7);
    assert_int_equal(b.samples, 7);
    assert_true(a.ratio == 0.5 && b.ratio == 0.5 && a.json && b.json);
    /* Only the first '=' splits: the value keeps the rest. */
    assert_int_equal(PARSE(&a, "--bundle=a=b"), 0);
    assert_string_equal(a.bundle, "a=b");
    /* An empty inline value is a value (a string option takes it; a number rejects it). */
    assert_int_equal(PARSE(&a, "--bundle="), 0);
    assert_string_equal(a.bundle, "");
    assert_int_equal(PARSE(&a, "--samples="), 2);
}

static void test_help_stops_parsing(void **state) {
    (void)state;
    struct opts o;
    assert_int_equal(PARSE(&o, "--samples", "3", "--help", "--bogus"), -1);
    assert_true(o.help);
    assert_int_equal(PARSE(&o, "-h"), -1);
    /* --help=x is not the help flag. */
    assert_int_equal(PARSE(&o, "--help=x"), 2);
}

static void test_errors_exit_2(void **state) {
    (void)state;
    struct opts o;
    assert_int_equal(PARSE(&o, "--bogus"), 2);
    assert_int_equal(PARSE(&o, "stray"), 2);
    assert_int_equal(PARSE(&o, "--json=1"), 2);        /* a flag given a value */
    assert_int_equal(PARSE(&o, "--bundle"), 2);        /* missing value */
    assert_int_equal(PARSE(&o, "--samples", "0"), 2);  /* out of range */
    assert_int_equal(PARSE(&o, "--samples", "7x"), 2); /* trailing garbage */
    assert_int_equal(PARSE(&o, "--ratio", "nan"), 2);  /* not finite */
    assert_int_equal(PARSE(&o, "--bundlex", "b"), 2);  /* a longer name is another option */
    assert_int_equal(PARSE(&o, "--bund", "b"), 2);     /* no prefix matching */
    assert_int_equal(PARSE(&o, "--samples", "3", "--samples=x", "--json"), 2);
    /* A name longer than any option buffer, with a value: unknown, not truncated to a match. */
    char longname[200];
    memset(longname, 'x', sizeof(longname));
    memcpy(longname, "--bundle", 8);
    memcpy(longname + sizeof(longname) - 4, "=v", 3);
    assert_int_equal(PARSE(&o, longname), 2);
}

static void test_values_may_look_like_options(void **state) {
    (void)state;
    struct opts o;
    /* The next argument is the value whatever it looks like (a prompt may start with '-'). */
    assert_int_equal(PARSE(&o, "--bundle", "--json"), 0);
    assert_string_equal(o.bundle, "--json");
    assert_false(o.json);
}

static void test_more_takes_a_list_until_an_option(void **state) {
    (void)state;
    struct opts o;
    assert_int_equal(PARSE(&o, "--goodput", "ttft:1", "tpot:2", "e2el:3", "--json"), 0);
    assert_int_equal(o.goodput_items, 3);
    assert_true(o.json);
    assert_int_equal(PARSE(&o, "--goodput=ttft:1", "tpot:2"), 0);
    assert_int_equal(o.goodput_items, 2);
    assert_int_equal(PARSE(&o, "--goodput"), 2);
}

static void test_json_numbers(void **state) {
    (void)state;
    json_t *j = kc_json_real(4.150172, 4);
    assert_true(json_is_real(j) && json_real_value(j) == 4.1502);
    json_decref(j);
    j = kc_json_real(NAN, 4);
    assert_true(json_is_null(j));
    json_decref(j);
    j = kc_json_real(INFINITY, 2);
    assert_true(json_is_null(j));
    json_decref(j);
    j = kc_json_sig(1554509876.0, 6);
    assert_true(json_is_real(j) && json_real_value(j) == 1554510000.0);
    json_decref(j);
    j = kc_json_str(NULL);
    assert_true(json_is_null(j));
    json_decref(j);
    j = kc_json_strn("a\"b\n\xff", 5); /* invalid UTF-8: null, never broken JSON */
    assert_true(json_is_null(j));
    json_decref(j);
    j = kc_json_strn("a\"b\n", 4);
    char *s = json_dumps(j, JSON_ENCODE_ANY);
    assert_string_equal(s, "\"a\\\"b\\n\"");
    free(s);
    json_decref(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equals_form_is_the_spaced_form),
        cmocka_unit_test(test_help_stops_parsing),
        cmocka_unit_test(test_errors_exit_2),
        cmocka_unit_test(test_values_may_look_like_options),
        cmocka_unit_test(test_more_takes_a_list_until_an_option),
        cmocka_unit_test(test_json_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
