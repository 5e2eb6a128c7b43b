/* Unit tests for server/request: the /v1/completions validator against RELIABILITY's C-rows
 * (C4-C16), every numeric field with garbage / NaN-ish / -1 / huge / wrong-type values, and
 * the OpenAI error body shape. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "server/request.h"

static const struct srv_limits lim = {
    .model_id = "tiny",
    .vocab_size = 128,
    .max_context = 128,
    .max_choices = 4,
    .max_stop = 4,
    .max_stop_bytes = 240,
    .strict = true,
    .default_mode = 0,
};

static int parse(const char *body, struct srv_completion_req *r, struct srv_error *e) {
    return srv_completion_parse(body, strlen(body), &lim, r, e);
}

static void test_minimal_token_prompt_gets_vllm_defaults(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    assert_int_equal(parse("{\"prompt\": [1, 2, 3]}", &r, &e), KC_OK);
    assert_int_equal(r.n_prompts, 1);
    assert_int_equal(r.prompts[0].n_ids, 3);
    assert_null(r.prompts[0].text);
    assert_int_equal(r.max_tokens, 16);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.logprobs, -1);
    assert_false(r.stream);
    assert_true(r.skip_special_tokens);
    assert_true(r.sampling.temperature == 1.0f);
    srv_completion_req_free(&r);
}

static void test_all_prompt_shapes_and_fields_parse(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    const char *body =
        "{\"model\":\"tiny\",\"prompt\":[\"hello\",\"world\"],\"max_tokens\":5,"
        "\"temperature\":0,\"top_p\":0.5,\"top_k\":-1,\"min_p\":0.1,\"stop\":[\"\\n\",\"x\"],"
        "\"seed\":-7,\"n\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"logprobs\":2,\"echo\":false,\"presence_penalty\":1.5,\"frequency_penalty\":-2,"
        "\"repetition_penalty\":1.1,\"ignore_eos\":true,\"user\":\"u\","
        "\"prefill_mode\":\"predict\",\"best_of\":2,\"logit_bias\":{},\"suffix\":null}";
    assert_int_equal(parse(body, &r, &e), KC_OK);
    assert_int_equal(r.n_prompts, 2);
    assert_string_equal(r.prompts[1].text, "world");
    assert_int_equal(r.n, 2);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n");
    assert_true(r.stream && r.include_usage && r.ignore_eos);
    assert_int_equal(r.logprobs, 2);
    assert_int_equal(r.mode, 2);
    assert_true(r.seed_given);
    assert_int_equal(r.sampling.top_k, 0);
    srv_completion_req_free(&r);
    assert_int_equal(parse("{\"prompt\":[[1,2],[3]],\"stop\":\"END\"}", &r, &e), KC_OK);
    assert_int_equal(r.n_prompts, 2);
    assert_int_equal(r.prompts[1].ids[0], 3);
    assert_int_equal(r.n_stop, 1);
    srv_completion_req_free(&r);
}

struct bad_case {
    const char *body;
    int status;
    const char *param; /* NULL: no param expected */
    const char *code;  /* NULL: none expected */
};

/* Every row must be refused with the stated status, param and code. */
static const struct bad_case bad[] = {
    /* C4 malformed JSON, trailing garbage, empty body, root not object */
    {"{", 400, NULL, NULL},
    {"{\"prompt\":[1]} x", 400, NULL, NULL},
    {"", 400, NULL, NULL},
    {"[1,2]", 400, NULL, NULL},
    {"\"str\"", 400, NULL, NULL},
    {"null", 400, NULL, NULL},
    /* C5 invalid UTF-8 escapes, NUL */
    {"{\"prompt\":\"\\ud800\"}", 400, NULL, NULL},
    {"{\"prompt\":\"a\\u0000b\"}", 400, NULL, NULL},
    /* C6 duplicate keys */
    {"{\"prompt\":[1],\"prompt\":[2]}", 400, NULL, NULL},
    /* C8 max_tokens */
    {"{\"prompt\":[1],\"max_tokens\":0}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":-1}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":1.5}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":1.0}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":\"10\"}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":1e999}", 400, NULL, NULL},
    {"{\"prompt\":[1],\"max_tokens\":9223372036854775807}", 400, "max_tokens", NULL},
    {"{\"prompt\":[1],\"max_tokens\":9223372036854775808}", 400, NULL, NULL},
    {"{\"prompt\":[1],\"max_tokens\":true}", 400, "max_tokens", NULL},
    /* C9 sampling ranges, NaN literal */
    {"{\"prompt\":[1],\"temperature\":-0.1}", 400, "temperature", NULL},
    {"{\"prompt\":[1],\"temperature\":101}", 400, "temperature", NULL},
    {"{\"prompt\":[1],\"temperature\":NaN}", 400, NULL, NULL},
    {"{\"prompt\":[1],\"temperature\":\"hot\"}", 400, "temperature", NULL},
    {"{\"prompt\":[1],\"top_p\":0}", 400, "top_p", NULL},
    {"{\"prompt\":[1],\"top_p\":1.01}", 400, "top_p", NULL},
    {"{\"prompt\":[1],\"top_p\":1e-400}", 400, "top_p", NULL},
    {"{\"prompt\":[1],\"min_p\":-1}", 400, "min_p", NULL},
    {"{\"prompt\":[1],\"top_k\":-2}", 400, "top_k", NULL},
    {"{\"prompt\":[1],\"top_k\":1.5}", 400, "top_k", NULL},
    {"{\"prompt\":[1],\"top_k\":4294967296}", 400, "top_k", NULL},
    {"{\"prompt\":[1],\"presence_penalty\":2.5}", 400, "presence_penalty", NULL},
    {"{\"prompt\":[1],\"frequency_penalty\":-3}", 400, "frequency_penalty", NULL},
    {"{\"prompt\":[1],\"repetition_penalty\":0}", 400, "repetition_penalty", NULL},
    {"{\"prompt\":[1],\"repetition_penalty\":1e300}", 400, "repetition_penalty", NULL},
    {"{\"prompt\":[1],\"seed\":1.5}", 400, "seed", NULL},
    {"{\"prompt\":[1],\"seed\":\"1\"}", 400, "seed", NULL},
    /* C10 n, best_of */
    {"{\"prompt\":[1],\"n\":0}", 400, "n", NULL},
    {"{\"prompt\":[1],\"n\":1000000}", 400, "n", NULL},
    {"{\"prompt\":[1],\"n\":5}", 400, "n", NULL},
    {"{\"prompt\":[[1],[2],[3]],\"n\":2}", 400, "n", NULL},
    {"{\"prompt\":[1],\"n\":2,\"best_of\":1}", 400, "best_of", NULL},
    {"{\"prompt\":[1],\"best_of\":3}", 400, "best_of", NULL},
    /* C11 logprobs */
    {"{\"prompt\":[1],\"logprobs\":21}", 400, "logprobs", NULL},
    {"{\"prompt\":[1],\"logprobs\":-1}", 400, "logprobs", NULL},
    {"{\"prompt\":[1],\"logprobs\":1000000}", 400, "logprobs", NULL},
    {"{\"prompt\":[1],\"logprobs\":true}", 400, "logprobs", NULL},
    {"{\"prompt\":[1],\"repetition_penalty\":1e-50}", 400, "repetition_penalty", NULL},
    /* C12 stop */
    {"{\"prompt\":[1],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop", NULL},
    {"{\"prompt\":[1],\"stop\":\"\"}", 400, "stop", NULL},
    {"{\"prompt\":[1],\"stop\":[1]}", 400, "stop", NULL},
    {"{\"prompt\":[1],\"stop\":5}", 400, "stop", NULL},
    /* C13 token ids */
    {"{\"prompt\":[-1]}", 400, "prompt", NULL},
    {"{\"prompt\":[128]}", 400, "prompt", NULL},
    {"{\"prompt\":[2147483648]}", 400, "prompt", NULL},
    {"{\"prompt\":[1, 2.0]}", 400, "prompt", NULL},
    {"{\"prompt\":[1, \"a\"]}", 400, "prompt", NULL},
    {"{\"prompt\":[[1],[200]]}", 400, "prompt", NULL},
    /* logit_bias: token id keys in the vocabulary, biases in [-100, 100] */
    {"{\"prompt\":[1],\"logit_bias\":{\"128\":1}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\"-1\":1}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\" 5\":1}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\"5x\":1}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\"99999999999999999999\":1}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\"5\":100.5}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":{\"5\":\"1\"}}", 400, "logit_bias", NULL},
    {"{\"prompt\":[1],\"logit_bias\":[1]}", 400, "logit_bias", NULL},
    /* stop_token_ids */
    {"{\"prompt\":[1],\"stop_token_ids\":[128]}", 400, "stop_token_ids", NULL},
    {"{\"prompt\":[1],\"stop_token_ids\":[-1]}", 400, "stop_token_ids", NULL},
    {"{\"prompt\":[1],\"stop_token_ids\":[1.5]}", 400, "stop_token_ids", NULL},
    {"{\"prompt\":[1],\"stop_token_ids\":5}", 400, "stop_token_ids", NULL},
    /* min_tokens <= max_tokens */
    {"{\"prompt\":[1],\"min_tokens\":17}", 400, "min_tokens", NULL},
    {"{\"prompt\":[1],\"min_tokens\":-1}", 400, "min_tokens", NULL},
    /* truncate_prompt_tokens: -1 or >= 1 */
    {"{\"prompt\":[1],\"truncate_prompt_tokens\":0}", 400, "truncate_prompt_tokens", NULL},
    {"{\"prompt\":[1],\"truncate_prompt_tokens\":-2}", 400, "truncate_prompt_tokens", NULL},
    {"{\"prompt\":[1],\"add_special_tokens\":1}", 400, "add_special_tokens", NULL},
    {"{\"prompt\":[1],\"return_tokens_as_token_ids\":\"y\"}", 400, "return_tokens_as_token_ids",
     NULL},
    /* output-contract fields that cannot be honoured: 400 naming the param */
    {"{\"prompt\":[1],\"response_format\":{\"type\":\"json_object\"}}", 400, "response_format",
     NULL},
    {"{\"prompt\":[1],\"response_format\":\"text\"}", 400, "response_format", NULL},
    {"{\"prompt\":[1],\"guided_json\":{}}", 400, "guided_json", NULL},
    {"{\"prompt\":[1],\"guided_regex\":\"a+\"}", 400, "guided_regex", NULL},
    {"{\"prompt\":[1],\"guided_choice\":[\"a\"]}", 400, "guided_choice", NULL},
    {"{\"prompt\":[1],\"guided_grammar\":\"g\"}", 400, "guided_grammar", NULL},
    {"{\"prompt\":[1],\"use_beam_search\":true}", 400, "use_beam_search", NULL},
    {"{\"prompt\":[1],\"use_beam_search\":1}", 400, "use_beam_search", NULL},
    /* C14 context */
    {"{\"prompt\":[1,2,3],\"max_tokens\":126}", 400, "prompt", "context_length_exceeded"},
    {"{\"prompt\":[1],\"max_tokens\":129}", 400, "max_tokens", NULL},
    /* C15 empty prompt, [], too many prompts */
    {"{\"prompt\":\"\"}", 400, "prompt", NULL},
    {"{\"prompt\":[]}", 400, "prompt", NULL},
    {"{\"prompt\":[[]]}", 400, "prompt", NULL},
    {"{\"prompt\":[\"a\",\"\"]}", 400, "prompt", NULL},
    {"{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "prompt", NULL},
    {"{\"prompt\":[\"a\",[1]]}", 400, "prompt", NULL},
    {"{\"prompt\":{}}", 400, "prompt", NULL},
    {"{\"prompt\":null}", 400, "prompt", NULL},
    {"{}", 400, "prompt", NULL},
    /* C16 unknown / misspelt field */
    {"{\"prompt\":[1],\"max_token\":3}", 400, NULL, NULL},
    /* model */
    {"{\"prompt\":[1],\"model\":\"gpt-4\"}", 404, "model", "model_not_found"},
    {"{\"prompt\":[1],\"model\":5}", 400, "model", NULL},
    /* other wrong types */
    {"{\"prompt\":[1],\"stream\":\"yes\"}", 400, "stream", NULL},
    {"{\"prompt\":[1],\"stream\":1}", 400, "stream", NULL},
    {"{\"prompt\":[1],\"echo\":0}", 400, "echo", NULL},
    {"{\"prompt\":[1],\"ignore_eos\":\"true\"}", 400, "ignore_eos", NULL},
    {"{\"prompt\":[1],\"user\":5}", 400, "user", NULL},
    {"{\"prompt\":[1],\"prefill_mode\":\"fast\"}", 400, "prefill_mode", NULL},
    {"{\"prompt\":[1],\"prefill_mode\":1}", 400, "prefill_mode", NULL},
    {"{\"prompt\":[1],\"stream_options\":{\"include_usage\":true}}", 400, "stream_options", NULL},
    {"{\"prompt\":[1],\"stream\":true,\"stream_options\":[]}", 400, "stream_options", NULL},
    {"{\"prompt\":[1],\"stream\":true,\"stream_options\":{\"x\":1}}", 400, "stream_options", NULL},
    {"{\"prompt\":[1],\"suffix\":\"s\"}", 400, "suffix", NULL},
};

static void test_bad_requests_get_400_with_param(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct srv_completion_req r;
        struct srv_error e;
        memset(&e, 0, sizeof(e));
        int rc = parse(bad[i].body, &r, &e);
        if (rc == KC_OK) {
            srv_completion_req_free(&r);
            fail_msg("accepted: %s", bad[i].body);
        }
        if (e.status != bad[i].status) {
            fail_msg("%s: status %d, want %d (%s)", bad[i].body, e.status, bad[i].status,
                     e.message);
        }
        if (bad[i].param != NULL && strcmp(e.param, bad[i].param) != 0) {
            fail_msg("%s: param '%s', want '%s' (%s)", bad[i].body, e.param, bad[i].param,
                     e.message);
        }
        if (bad[i].code != NULL && (e.code == NULL || strcmp(e.code, bad[i].code) != 0)) {
            fail_msg("%s: code %s, want %s", bad[i].body, e.code ? e.code : "null", bad[i].code);
        }
        assert_true(strlen(e.message) > 0);
        /* The body always has the OpenAI shape and parses as JSON. */
        size_t len = 0;
        char *body = srv_error_body(&e, &len);
        assert_non_null(body);
        json_error_t jerr;
        json_t *j = json_loads(body, 0, &jerr);
        assert_non_null(j);
        json_t *err = json_object_get(j, "error");
        assert_true(json_is_object(err));
        assert_true(json_is_string(json_object_get(err, "message")));
        assert_true(json_is_string(json_object_get(err, "type")));
        assert_non_null(json_object_get(err, "param"));
        assert_non_null(json_object_get(err, "code"));
        json_decref(j);
        free(body);
    }
}

static void test_every_numeric_field_rejects_wrong_types_and_extremes(void **state) {
    (void)state;
    static const char *const fields[] = {"max_tokens",
                                         "temperature",
                                         "top_p",
                                         "top_k",
                                         "min_p",
                                         "n",
                                         "logprobs",
                                         "presence_penalty",
                                         "frequency_penalty",
                                         "repetition_penalty",
                                         "best_of",
                                         "seed"};
    static const char *const values[] = {"\"1\"",
                                         "[1]",
                                         "{}",
                                         "true",
                                         "-1e308",
                                         "1e308",
                                         "-9223372036854775808",
                                         "9223372036854775807",
                                         "1e999",
                                         "-1e999",
                                         "NaN",
                                         "Infinity",
                                         "\"NaN\""};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        for (size_t j = 0; j < sizeof(values) / sizeof(values[0]); j++) {
            char body[256];
            snprintf(body, sizeof(body), "{\"prompt\":[1],\"%s\":%s}", fields[i], values[j]);
            struct srv_completion_req r;
            struct srv_error e;
            memset(&e, 0, sizeof(e));
            int rc = parse(body, &r, &e);
            /* seed takes any 64-bit integer. */
            if (rc == KC_OK && strcmp(fields[i], "seed") == 0 && values[j][0] != '"' &&
                strchr(values[j], 'e') == NULL) {
                srv_completion_req_free(&r);
                continue;
            }
            if (rc == KC_OK) {
                srv_completion_req_free(&r);
                fail_msg("accepted %s", body);
            }
            assert_int_equal(e.status, 400);
        }
    }
}

static void test_non_strict_mode_ignores_unknown_fields(void **state) {
    (void)state;
    struct srv_limits l = lim;
    l.strict = false;
    struct srv_completion_req r;
    struct srv_error e;
    const char *body = "{\"prompt\":[1],\"use_beam_search\":false}";
    assert_int_equal(srv_completion_parse(body, strlen(body), &l, &r, &e), KC_OK);
    assert_int_equal(r.n_unknown, 0);
    srv_completion_req_free(&r);
    /* Unknown fields are reported (count + first names) for the server's warning/counter. */
    body = "{\"prompt\":[1],\"priority\":3,\"zz_custom\":{\"a\":1},\"length_penalty\":1}";
    assert_int_equal(srv_completion_parse(body, strlen(body), &l, &r, &e), KC_OK);
    assert_int_equal(r.n_unknown, 3);
    bool saw = false;
    for (int i = 0; i < r.n_unknown; i++) {
        saw = saw || strcmp(r.unknown[i], "zz_custom") == 0;
    }
    assert_true(saw);
    srv_completion_req_free(&r);
    /* More names than reported: all counted, names bounded; a long name is cut. */
    char big[2048];
    size_t n = (size_t)snprintf(big, sizeof(big), "{\"prompt\":[1]");
    for (int i = 0; i < 20; i++) {
        n += (size_t)snprintf(
            big + n, sizeof(big) - n,
            ",\"u%02d_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            "aaaaaaaaaaa\":1",
            i);
    }
    snprintf(big + n, sizeof(big) - n, "}");
    assert_int_equal(srv_completion_parse(big, strlen(big), &l, &r, &e), KC_OK);
    assert_int_equal(r.n_unknown, 20);
    assert_int_equal(strlen(r.unknown[SRV_UNKNOWN_REPORT - 1]), SRV_UNKNOWN_NAME_MAX - 1);
    srv_completion_req_free(&r);
    /* The same body in strict mode is a 400 naming the field. */
    memset(&e, 0, sizeof(e));
    body = "{\"prompt\":[1],\"priority\":3}";
    assert_int_not_equal(srv_completion_parse(body, strlen(body), &lim, &r, &e), KC_OK);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "priority");
}

static void test_vllm_extra_fields_parse(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    const char *body =
        "{\"prompt\":[1,2,3,4],\"max_tokens\":8,\"stop_token_ids\":[5,127],\"min_tokens\":8,"
        "\"logit_bias\":{\"7\":-100,\"0\":100,\"12\":0.5},\"add_special_tokens\":false,"
        "\"truncate_prompt_tokens\":2,\"return_tokens_as_token_ids\":true,"
        "\"response_format\":{\"type\":\"text\"},\"guided_json\":null,\"use_beam_search\":false,"
        "\"best_of\":1}";
    assert_int_equal(parse(body, &r, &e), KC_OK);
    assert_int_equal(r.n_stop_token_ids, 2);
    assert_int_equal(r.stop_token_ids[1], 127);
    assert_int_equal(r.min_tokens, 8);
    assert_int_equal(r.n_logit_bias, 3);
    float sum = 0;
    for (int i = 0; i < r.n_logit_bias; i++) {
        sum += r.logit_bias[i].bias * (float)(r.logit_bias[i].id + 1);
    }
    assert_true(fabsf(sum - (-800.0f + 100.0f + 6.5f)) < 1e-3f);
    assert_false(r.add_special_tokens);
    assert_true(r.return_tokens_as_token_ids);
    /* truncate_prompt_tokens keeps the last k ids of an id prompt */
    assert_int_equal(r.prompts[0].n_ids, 2);
    assert_int_equal(r.prompts[0].ids[0], 3);
    assert_int_equal(r.prompts[0].ids[1], 4);
    assert_int_equal(srv_prompt_max_ids(&r, &lim), 0); /* truncating: encode all */
    srv_completion_req_free(&r);

    /* Defaults: BOS added, no truncation; the encode limit is what the context leaves. */
    assert_int_equal(parse("{\"prompt\":\"hi\",\"max_tokens\":28}", &r, &e), KC_OK);
    assert_true(r.add_special_tokens);
    assert_int_equal(r.truncate_prompt_tokens, 0);
    assert_int_equal(srv_prompt_max_ids(&r, &lim), 100);
    srv_completion_req_free(&r);

    /* An id prompt longer than the context is fine when it will be truncated; -1 keeps the
     * last max_context ids, which then fail the prompt + max_tokens check. */
    char big[1200];
    size_t n = (size_t)snprintf(big, sizeof(big), "{\"prompt\":[");
    for (int i = 0; i < 200; i++) {
        n += (size_t)snprintf(big + n, sizeof(big) - n, "%s%d", i ? "," : "", i % 100);
    }
    snprintf(big + n, sizeof(big) - n, "],\"truncate_prompt_tokens\":100,\"max_tokens\":28}");
    assert_int_equal(parse(big, &r, &e), KC_OK);
    assert_int_equal(r.prompts[0].n_ids, 100);
    assert_int_equal(r.prompts[0].ids[0], 0); /* position 100 of 0..99,0..99 */
    srv_completion_req_free(&r);
    snprintf(big + n, sizeof(big) - n, "],\"truncate_prompt_tokens\":-1,\"max_tokens\":1}");
    memset(&e, 0, sizeof(e));
    assert_int_not_equal(parse(big, &r, &e), KC_OK);
    assert_string_equal(e.code, "context_length_exceeded");
    snprintf(big + n, sizeof(big) - n, "]}");
    memset(&e, 0, sizeof(e));
    assert_int_not_equal(parse(big, &r, &e), KC_OK);
    assert_string_equal(e.code, "context_length_exceeded");

    /* best_of > n: not supported; best_of < n: invalid. Both name best_of. */
    memset(&e, 0, sizeof(e));
    assert_int_not_equal(parse("{\"prompt\":[1],\"n\":2,\"best_of\":3}", &r, &e), KC_OK);
    assert_string_equal(e.param, "best_of");
    assert_non_null(strstr(e.message, "not supported"));
}

/* "refine" (issue 17): a boolean or null; absent and null leave the server's --refine. */
static void test_refine_field_is_a_boolean(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    static const struct {
        const char *body;
        enum sch_refine want;
    } ok[] = {
        {"{\"prompt\":[1]}", SCH_REFINE_DEFAULT},
        {"{\"prompt\":[1],\"refine\":null}", SCH_REFINE_DEFAULT},
        {"{\"prompt\":[1],\"refine\":true}", SCH_REFINE_ON},
        {"{\"prompt\":[1],\"refine\":false}", SCH_REFINE_OFF},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(parse(ok[i].body, &r, &e), KC_OK);
        assert_int_equal(r.refine, ok[i].want);
        assert_int_equal(r.n_unknown, 0); /* a known field, never "ignored" */
        srv_completion_req_free(&r);
    }
    static const char *const wrong[] = {"\"yes\"", "1", "0", "[]", "{}", "\"true\""};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        char body[64];
        snprintf(body, sizeof(body), "{\"prompt\":[1],\"refine\":%s}", wrong[i]);
        memset(&e, 0, sizeof(e));
        assert_int_equal(parse(body, &r, &e), KC_EINVAL);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, "refine");
        assert_non_null(strstr(e.message, "must be a boolean"));
    }
}

static void test_deep_nesting_is_refused_quickly(void **state) {
    (void)state;
    const size_t depth = 100000;
    char *body = malloc(depth + 16);
    memset(body, '[', depth);
    struct srv_completion_req r;
    struct srv_error e;
    assert_int_not_equal(srv_completion_parse(body, depth, &lim, &r, &e), KC_OK);
    assert_int_equal(e.status, 400);
    /* Embedded NUL does not end the body early (json_loadb, not json_loads). */
    const char nul[] = "{\"prompt\":[1]}\0garbage";
    assert_int_not_equal(srv_completion_parse(nul, sizeof(nul) - 1, &lim, &r, &e), KC_OK);
    free(body);
}

static void test_context_check_after_tokenizing_gives_numbers(void **state) {
    (void)state;
    int32_t ids[100];
    for (int i = 0; i < 100; i++) {
        ids[i] = i;
    }
    struct srv_prompt p = {.ids = ids, .n_ids = 100};
    struct srv_error e;
    assert_int_equal(srv_prompt_check(&p, 0, 28, &lim, &e), KC_OK);
    assert_int_equal(srv_prompt_check(&p, 0, 29, &lim, &e), KC_ECONTEXT);
    assert_non_null(strstr(e.message, "maximum context length is 128 tokens"));
    assert_non_null(strstr(e.message, "129 tokens (100 in the prompt, 29 in the completion)"));
    assert_string_equal(e.code, "context_length_exceeded");
}

static void test_tokenize_and_detokenize_bodies(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    bool special = false;
    struct srv_error e;
    const char *b1 = "{\"model\":\"tiny\",\"prompt\":\"hi\",\"add_special_tokens\":true}";
    assert_int_equal(srv_tokenize_parse(b1, strlen(b1), &lim, &text, &len, &special, &e), KC_OK);
    assert_string_equal(text, "hi");
    assert_true(special);
    free(text);
    const char *b2 = "{\"prompt\":5}";
    assert_int_not_equal(srv_tokenize_parse(b2, strlen(b2), &lim, &text, &len, &special, &e),
                         KC_OK);
    int32_t *ids = NULL;
    int n = 0;
    const char *b3 = "{\"tokens\":[1,2,127]}";
    assert_int_equal(srv_detokenize_parse(b3, strlen(b3), &lim, &ids, &n, &e), KC_OK);
    assert_int_equal(n, 3);
    free(ids);
    const char *b4 = "{\"tokens\":[1,128]}";
    assert_int_not_equal(srv_detokenize_parse(b4, strlen(b4), &lim, &ids, &n, &e), KC_OK);
    assert_int_equal(e.status, 400);
}

static void test_error_mapping_is_one_table(void **state) {
    (void)state;
    struct srv_error e;
    srv_error_kc(&e, KC_EBUSY, NULL, "busy");
    assert_int_equal(e.status, 503);
    srv_error_kc(&e, KC_ENOMEM, NULL, "oom");
    assert_int_equal(e.status, 500);
    srv_error_kc(&e, KC_ECONTEXT, "prompt", "long");
    assert_int_equal(e.status, 400);
    assert_string_equal(e.code, "context_length_exceeded");
    srv_error_http(&e, 413, "too big");
    assert_int_equal(e.status, 413);
    assert_string_equal(e.code, "request_too_large");
    /* Invalid UTF-8 in a message still yields a JSON body. */
    srv_error_kc(&e, KC_EINVAL, NULL, "bad \xff byte");
    char *body = srv_error_body(&e, NULL);
    assert_non_null(body);
    free(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_token_prompt_gets_vllm_defaults),
        cmocka_unit_test(test_all_prompt_shapes_and_fields_parse),
        cmocka_unit_test(test_bad_requests_get_400_with_param),
        cmocka_unit_test(test_every_numeric_field_rejects_wrong_types_and_extremes),
        cmocka_unit_test(test_non_strict_mode_ignores_unknown_fields),
        cmocka_unit_test(test_vllm_extra_fields_parse),
        cmocka_unit_test(test_refine_field_is_a_boolean),
        cmocka_unit_test(test_deep_nesting_is_refused_quickly),
        cmocka_unit_test(test_context_check_after_tokenizing_gives_numbers),
        cmocka_unit_test(test_tokenize_and_detokenize_bodies),
        cmocka_unit_test(test_error_mapping_is_one_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
