/* Unit tests for config/: layering (defaults < file < env < flags), validation of every
 * numeric setting with garbage / -1 / huge / wrong-type values, help text, secrets. */
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

#include "config/config.h"

static char *write_tmp(const char *text) {
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/kc_cfg_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* cfg_settings_load over a NULL-terminated argv, for the tests that do not ask for --help. */
static int load(char **argv, char **envp, struct cfg_settings *s, struct kc_error *err) {
    int argc = 0;
    while (argv[argc] != NULL) {
        argc++;
    }
    bool help = false;
    return cfg_settings_load(argc, argv, envp, s, &help, err);
}

static void test_defaults_are_loopback_port_8080_and_valid(void **state) {
    (void)state;
    struct cfg_settings s;
    cfg_settings_default(&s);
    assert_string_equal(s.host, "127.0.0.1");
    assert_int_equal(s.port, 8080);
    assert_string_equal(s.api_key, "");
    assert_string_equal(s.cors_allow_origins, "");
    struct kc_error err = {0};
    assert_int_equal(cfg_settings_validate(&s, &err), KC_OK);
}

static void test_layers_apply_in_order_file_env_flags(void **state) {
    (void)state;
    char *path = write_tmp("{\"port\": 9000, \"max_queue\": 5, \"log-level\": \"debug\", "
                           "\"ttft_slo_ms\": 250}");
    char cfgarg[80];
    snprintf(cfgarg, sizeof(cfgarg), "--config=%s", path);
    char *argv[] = {"serve", cfgarg, "--port", "9002", "--no-access-log", NULL};
    char *envp[] = {"KVCAST_PORT=9001", "KVCAST_MAX_RUNNING=3", "HOME=/root", NULL};
    struct cfg_settings s;
    bool help = true;
    struct kc_error err = {0};
    assert_int_equal(cfg_settings_load(5, argv, envp, &s, &help, &err), KC_OK);
    assert_false(help);
    assert_int_equal(s.port, 9002);     /* flag beats env beats file */
    assert_int_equal(s.max_running, 3); /* env */
    assert_int_equal(s.max_queue, 5);   /* file */
    assert_string_equal(s.log_level, "debug");
    assert_true(s.ttft_slo_ms == 250.0);
    assert_false(s.access_log);
    unlink(path);
}

static void test_config_file_from_env_and_errors_name_file_and_key(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"port\": \"80\"}",         /* wrong type */
        "{\"port\": 80.0}",           /* real for an integer */
        "{\"port\": 1, \"port\": 2}", /* duplicate */
        "{\"prot\": 1}",              /* unknown */
        "[1]",                        /* not an object */
        "{\"port\": 70000}",          /* out of range */
        "{\"pin_cpus\": 1}",          /* bool as int */
        "{\"host\": 5}",              /* int as string */
        "{\"port\": ",                /* truncated */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *path = write_tmp(bad[i]);
        char env[96];
        snprintf(env, sizeof(env), "KVCAST_CONFIG=%s", path);
        char *envp[] = {env, NULL};
        char *argv[] = {"serve", NULL};
        struct cfg_settings s;
        struct kc_error err = {0};
        int rc = load(argv, envp, &s, &err);
        if (rc == KC_OK) {
            fail_msg("accepted bad config %s", bad[i]);
        }
        assert_non_null(strstr(err.msg, path));
        unlink(path);
    }
}

struct bad_value {
    const char *name;
    const char *value;
};

static void test_every_numeric_setting_rejects_garbage_negative_huge(void **state) {
    (void)state;
    static const char *const numeric[] = {"port",
                                          "max-connections",
                                          "max-connections-per-ip",
                                          "connection-memory-kib",
                                          "connection-timeout-s",
                                          "header-timeout-s",
                                          "body-timeout-s",
                                          "max-body-bytes",
                                          "request-timeout-s",
                                          "heartbeat-ms",
                                          "disconnect-check-ms",
                                          "shutdown-timeout-s",
                                          "retry-after-s",
                                          "prefill-threads",
                                          "decode-threads",
                                          "base-kv-mib",
                                          "aux-kv-mib",
                                          "block-size",
                                          "max-queue",
                                          "max-running",
                                          "prefill-chunk",
                                          "max-context",
                                          "ttft-slo-ms",
                                          "predict-min-prompt",
                                          "max-choices",
                                          "max-stop",
                                          "max-stop-bytes"};
    static const char *const values[] = {"",     "abc",    "-1",  "1e999", "nan",
                                         "NaN",  "inf",    "12x", " 5",    "99999999999999999999",
                                         "0x10", "1.5e300"};
    for (size_t i = 0; i < sizeof(numeric) / sizeof(numeric[0]); i++) {
        for (size_t j = 0; j < sizeof(values) / sizeof(values[0]); j++) {
            struct cfg_settings s;
            cfg_settings_default(&s);
            struct cfg_settings before = s;
            struct kc_error err = {0};
            int rc = cfg_set(&s, numeric[i], values[j], numeric[i], &err);
            /* " 5": strtol skips leading space; accept only if in range. */
            if (rc == KC_OK && strcmp(values[j], " 5") == 0) {
                continue;
            }
            if (rc != KC_EINVAL) {
                fail_msg("%s accepted '%s'", numeric[i], values[j]);
            }
            assert_non_null(strstr(err.msg, numeric[i]));
            assert_memory_equal(&s, &before, sizeof(s));
        }
    }
}

static void test_flags_reject_unknown_missing_and_bad_bool(void **state) {
    (void)state;
    const char *const cases[][3] = {
        {"--prot", "1", "unknown option --prot"},
        {"--port", NULL, "--port: missing value"},
        {"--pin-cpus=maybe", NULL, "--pin-cpus: must be true or false"},
        {"--no-port", NULL, "unknown option --no-port"},
        {"positional", NULL, "unexpected argument"},
        {"--prefill-mode", "fast", "must be one of auto|full|predict"},
        {"--log-level", "loud", "must be one of"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char a1[64];
        char a2[64];
        snprintf(a1, sizeof(a1), "%s", cases[i][0]);
        snprintf(a2, sizeof(a2), "%s", cases[i][1] ? cases[i][1] : "");
        char *argv[4] = {"serve", a1, a2, NULL};
        int argc = cases[i][1] ? 3 : 2;
        struct cfg_settings s;
        cfg_settings_default(&s);
        struct kc_error err = {0};
        bool help = false;
        assert_int_not_equal(cfg_apply_args(&s, argc, argv, &help, &err), KC_OK);
        if (strstr(err.msg, cases[i][2]) == NULL) {
            fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, cases[i][2]);
        }
    }
}

static void test_env_unknown_variable_is_an_error(void **state) {
    (void)state;
    struct cfg_settings s;
    cfg_settings_default(&s);
    struct kc_error err = {0};
    char *envp[] = {"KVCAST_MAX_QUEUEE=3", NULL};
    assert_int_equal(cfg_apply_env(&s, envp, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "KVCAST_MAX_QUEUEE"));
    char *envp2[] = {"KVCAST_PORT=-1", NULL};
    assert_int_equal(cfg_apply_env(&s, envp2, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "KVCAST_PORT"));
}

static void test_public_host_needs_a_key(void **state) {
    (void)state;
    char *argv[] = {"serve", "--host", "0.0.0.0", NULL};
    char *envp[] = {NULL};
    struct cfg_settings s;
    struct kc_error err = {0};
    assert_int_equal(load(argv, envp, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "--api-key"));
    char *envk[] = {"KVCAST_API_KEY=sekrit-123", NULL};
    assert_int_equal(load(argv, envk, &s, &err), KC_OK);
    assert_string_equal(s.api_key, "sekrit-123");
    char desc[8192];
    cfg_settings_describe(&s, desc, sizeof(desc));
    assert_null(strstr(desc, "sekrit"));
    assert_non_null(strstr(desc, "api-key=<set>"));
}

static void test_api_key_file_reads_first_line(void **state) {
    (void)state;
    char *path = write_tmp("file-key-42  \nsecond line\n");
    char *argv[] = {"serve", "--api-key-file", path, NULL};
    char *envp[] = {NULL};
    struct cfg_settings s;
    struct kc_error err = {0};
    assert_int_equal(load(argv, envp, &s, &err), KC_OK);
    assert_string_equal(s.api_key, "file-key-42");
    unlink(path);
    path = write_tmp("\n");
    argv[2] = path;
    assert_int_equal(load(argv, envp, &s, &err), KC_EINVAL);
    assert_null(strstr(err.msg, "file-key"));
    unlink(path);
}

/* With --model the bundle is not read, so --aux needs --predictor; without --model each one
 * alone replaces the bundle's (not silently ignored: serve.c uses them). */
static void test_aux_needs_predictor_only_with_model(void **state) {
    (void)state;
    char *envp[] = {NULL};
    struct cfg_settings s;
    struct kc_error err = {0};
    char *argv[] = {"serve", "--model", "models/base", "--aux", "models/aux", NULL};
    assert_int_equal(load(argv, envp, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "--predictor"));
    char *argv2[] = {"serve", "--model", "models/base", "--predictor", "p.safetensors", NULL};
    assert_int_equal(load(argv2, envp, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "--aux"));
    char *argv3[] = {"serve", "--aux", "models/aux", NULL};
    assert_int_equal(load(argv3, envp, &s, &err), KC_OK);
    assert_string_equal(s.aux, "models/aux");
    char *argv4[] = {"serve", "--predictor", "p.safetensors", NULL};
    assert_int_equal(load(argv4, envp, &s, &err), KC_OK);
    char *argv5[] = {"serve", "--bundle", "", "--aux", "models/aux", NULL};
    assert_int_equal(load(argv5, envp, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "no model"));
}

/* Loopback is decided by the resolved addresses, not by the text. */
static void test_host_is_loopback_resolves_the_address(void **state) {
    (void)state;
    static const char *const yes[] = {"127.0.0.1", "127.1.2.3",       "127.1",           "::1",
                                      "localhost", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"};
    static const char *const no[] = {
        "0.0.0.0",          "::", "10.0.0.1",       "128.0.0.1", "127.0.0.1.invalid",
        "127.evil.invalid", "",   "::ffff:10.0.0.1"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!cfg_host_is_loopback(yes[i])) {
            fail_msg("'%s' should count as loopback", yes[i]);
        }
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (cfg_host_is_loopback(no[i])) {
            fail_msg("'%s' should not count as loopback", no[i]);
        }
    }
    /* A name that merely starts with 127. exposes the server: it needs a key like 0.0.0.0. */
    char *argv[] = {"serve", "--host", "127.0.0.1.invalid", NULL};
    char *envp[] = {NULL};
    struct cfg_settings s;
    struct kc_error err = {0};
    assert_int_equal(load(argv, envp, &s, &err), KC_EINVAL);
    assert_non_null(strstr(err.msg, "--api-key"));
}

static void test_help_lists_every_setting_with_default(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cfg_print_help(f);
    fclose(f);
    static const char *const want[] = {
        "--host TEXT",          "default: 127.0.0.1", "--port N",
        "default: 8080",        "KVCAST_API_KEY",     "--shutdown-timeout-s",
        "--cors-allow-origins", "--max-body-bytes",   "--prefill-mode CHOICE",
        "--config FILE"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(buf, want[i]) == NULL) {
            fail_msg("help lacks '%s'", want[i]);
        }
    }
    char *argv[] = {"serve", "--help", NULL};
    char *envp[] = {NULL};
    struct cfg_settings s;
    bool help = false;
    struct kc_error err = {0};
    assert_int_equal(cfg_settings_load(2, argv, envp, &s, &help, &err), KC_OK);
    assert_true(help);
    free(buf);
}

/* Issue 15: the per-address limit must not break a local load test (one address), the slow
 * client deadlines have sane defaults, /metrics is private when a key is set. */
static void test_connection_defaults_and_new_settings(void **state) {
    (void)state;
    struct cfg_settings s;
    cfg_settings_default(&s);
    assert_int_equal(s.max_connections_per_ip, 0); /* unlimited */
    assert_true(s.header_timeout_s > 0 && s.header_timeout_s <= 30);
    assert_true(s.body_timeout_s >= s.header_timeout_s);
    assert_false(s.metrics_public);
    assert_string_equal(s.log_format, "text");
    assert_string_equal(s.allowed_hosts, "");
    assert_string_equal(s.cors_allow_headers, "");
    struct kc_error err = {0};
    assert_int_equal(cfg_set(&s, "log-format", "json", "--log-format", &err), KC_OK);
    assert_string_equal(s.log_format, "json");
    assert_int_equal(cfg_set(&s, "log-format", "xml", "--log-format", &err), KC_EINVAL);
    assert_int_equal(cfg_set(&s, "header-timeout-s", "0", "--header-timeout-s", &err), KC_EINVAL);
    assert_int_equal(cfg_set(&s, "allowed-hosts", "a.example,b.example", "x", &err), KC_OK);
    assert_int_equal(cfg_set(&s, "metrics-public", "true", "x", &err), KC_OK);
    assert_true(s.metrics_public);
}

/* --api-key on the command line is visible in ps: the server warns about it, so config must
 * say where the key came from; env and file keys are not flagged. */
static void test_api_key_on_cmdline_is_flagged(void **state) {
    (void)state;
    char *argv[] = {"serve", "--api-key", "k1", NULL};
    char *envp[] = {NULL};
    struct cfg_settings s;
    struct kc_error err = {0};
    assert_int_equal(load(argv, envp, &s, &err), KC_OK);
    assert_true(s.api_key_on_cmdline);
    char *argv2[] = {"serve", NULL};
    char *envp2[] = {"KVCAST_API_KEY=k2", NULL};
    assert_int_equal(load(argv2, envp2, &s, &err), KC_OK);
    assert_false(s.api_key_on_cmdline);
    assert_string_equal(s.api_key, "k2");
}

/* Issue 17's switches: on by default; --no-<name>, KVCAST_<NAME> and the JSON file's
 * snake_case key turn them off, like every other boolean. */
static void test_prefix_caching_and_refine_switches(void **state) {
    (void)state;
    struct cfg_settings s;
    cfg_settings_default(&s);
    assert_true(s.enable_prefix_caching);
    assert_true(s.refine);
    char *path = write_tmp("{\"enable_prefix_caching\": false}");
    char cfgarg[80];
    snprintf(cfgarg, sizeof(cfgarg), "--config=%s", path);
    char *argv[] = {"serve", cfgarg, "--no-refine", NULL};
    char *envp[] = {"KVCAST_ENABLE_PREFIX_CACHING=true", NULL};
    struct kc_error err = {0};
    assert_int_equal(load(argv, envp, &s, &err), KC_OK);
    assert_true(s.enable_prefix_caching); /* env beats the file */
    assert_false(s.refine);
    char *argv2[] = {"serve", "--no-enable-prefix-caching", "--refine=true", NULL};
    assert_int_equal(load(argv2, NULL, &s, &err), KC_OK);
    assert_false(s.enable_prefix_caching);
    assert_true(s.refine);
    assert_int_equal(cfg_set(&s, "refine", "maybe", "--refine", &err), KC_EINVAL);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_loopback_port_8080_and_valid),
        cmocka_unit_test(test_layers_apply_in_order_file_env_flags),
        cmocka_unit_test(test_config_file_from_env_and_errors_name_file_and_key),
        cmocka_unit_test(test_every_numeric_setting_rejects_garbage_negative_huge),
        cmocka_unit_test(test_flags_reject_unknown_missing_and_bad_bool),
        cmocka_unit_test(test_env_unknown_variable_is_an_error),
        cmocka_unit_test(test_public_host_needs_a_key),
        cmocka_unit_test(test_api_key_file_reads_first_line),
        cmocka_unit_test(test_aux_needs_predictor_only_with_model),
        cmocka_unit_test(test_host_is_loopback_resolves_the_address),
        cmocka_unit_test(test_help_lists_every_setting_with_default),
        cmocka_unit_test(test_connection_defaults_and_new_settings),
        cmocka_unit_test(test_api_key_on_cmdline_is_flagged),
        cmocka_unit_test(test_prefix_caching_and_refine_switches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
