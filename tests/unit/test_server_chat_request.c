/* Unit tests for server/request's POST /v1/chat/completions validator (srv_chat_parse): the
 * chat-only fields (messages kept as JSON text, max_completion_tokens, logprobs as a boolean
 * with top_logprobs, add_generation_prompt, documents, add_special_tokens off by default), the
 * fields refused as not supported unless they ask for nothing, and the shared fields. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/request.h"

static const struct srv_limits lim = {
    .model_id = "tiny",
    .vocab_size = 128,
    .max_context = 128,
    .max_choices = 4,
    .max_stop = 4,
    .max_stop_bytes = 240,
    .strict = false,
    .default_mode = 0,
};

#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static int parse(const char *body, struct srv_completion_req *r, struct srv_error *e) {
    return srv_chat_parse(body, strlen(body), &lim, r, e);
}

/* Parses body, expects a 400 (or status) naming param. */
static void expect_error(const char *body, int status, const char *param) {
    struct srv_completion_req r;
    struct srv_error e;
    memset(&e, 0, sizeof(e));
    int rc = parse(body, &r, &e);
    if (rc == KC_OK) {
        srv_completion_req_free(&r);
        fail_msg("accepted: %s", body);
    }
    if (e.status != status || strcmp(e.param, param) != 0) {
        fail_msg("%s: status %d param '%s' (%s), want %d '%s'", body, e.status, e.param, e.message,
                 status, param);
    }
}

static void test_minimal_chat_gets_chat_defaults(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    assert_int_equal(parse("{" MSGS "}", &r, &e), KC_OK);
    assert_true(r.chat);
    assert_string_equal(r.messages, "[{\"role\":\"user\",\"content\":\"hi\"}]");
    assert_int_equal(r.messages_len, strlen(r.messages));
    assert_null(r.documents);
    assert_true(r.add_generation_prompt);
    assert_false(r.add_special_tokens); /* templates write their own BOS */
    assert_true(r.max_tokens_auto);
    assert_int_equal(r.logprobs, -1);
    assert_int_equal(r.n_prompts, 1);
    assert_null(r.prompts[0].text);
    assert_false(r.echo);
    /* The rest of the context once the prompt is known. */
    struct srv_prompt p = {.n_ids = 100};
    srv_prompt_fill_max_tokens(&r, &p, &lim);
    assert_int_equal(r.max_tokens, 28);
    srv_completion_req_free(&r);
}

static void test_chat_fields_parse(void **state) {
    (void)state;
    struct srv_completion_req r;
    struct srv_error e;
    const char *body = "{" MSGS ",\"model\":\"tiny\",\"max_tokens\":3,\"max_completion_tokens\":9,"
                       "\"logprobs\":true,\"top_logprobs\":5,\"n\":2,\"seed\":1,\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true},\"stop\":[\"\\n\"],"
                       "\"add_generation_prompt\":false,\"documents\":[{\"text\":\"d\"}],"
                       "\"prefill_mode\":\"predict\",\"refine\":false,\"tools\":[],"
                       "\"tool_choice\":\"none\",\"response_format\":{\"type\":\"text\"},"
                       "\"add_special_tokens\":true,\"echo\":false}";
    assert_int_equal(parse(body, &r, &e), KC_OK);
    assert_int_equal(r.max_tokens, 9); /* max_completion_tokens wins */
    assert_false(r.max_tokens_auto);
    assert_int_equal(r.logprobs, 5);
    assert_int_equal(r.n, 2);
    assert_true(r.stream && r.include_usage);
    assert_int_equal(r.n_stop, 1);
    assert_false(r.add_generation_prompt);
    assert_string_equal(r.documents, "[{\"text\":\"d\"}]");
    assert_true(r.add_special_tokens);
    assert_int_equal(r.refine, SCH_REFINE_OFF);
    srv_completion_req_free(&r);
    assert_int_equal(parse("{" MSGS ",\"logprobs\":true}", &r, &e), KC_OK);
    assert_int_equal(r.logprobs, 0); /* the token's own logprob, no alternatives */
    srv_completion_req_free(&r);
    assert_int_equal(parse("{" MSGS ",\"max_tokens\":4,\"min_tokens\":2}", &r, &e), KC_OK);
    assert_int_equal(r.max_tokens, 4);
    assert_int_equal(r.min_tokens, 2);
    srv_completion_req_free(&r);
}

static void test_refused_and_malformed_fields_name_the_field(void **state) {
    (void)state;
    expect_error("{}", 400, "messages");
    expect_error("{\"messages\":null}", 400, "messages");
    expect_error("{\"messages\":[]}", 400, "messages");
    expect_error("{\"messages\":{\"role\":\"user\"}}", 400, "messages");
    expect_error("{\"prompt\":\"hi\"}", 400, "messages");
    expect_error("{" MSGS ",\"documents\":{}}", 400, "documents");
    expect_error("{" MSGS ",\"add_generation_prompt\":1}", 400, "add_generation_prompt");
    expect_error("{" MSGS ",\"tools\":[{\"type\":\"function\"}]}", 400, "tools");
    expect_error("{" MSGS ",\"tool_choice\":\"auto\"}", 400, "tool_choice");
    expect_error("{" MSGS ",\"tool_choice\":{\"type\":\"function\"}}", 400, "tool_choice");
    expect_error("{" MSGS ",\"functions\":[{\"name\":\"f\"}]}", 400, "functions");
    expect_error("{" MSGS ",\"function_call\":\"auto\"}", 400, "function_call");
    expect_error("{" MSGS ",\"response_format\":{\"type\":\"json_object\"}}", 400,
                 "response_format");
    expect_error("{" MSGS ",\"chat_template\":\"x\"}", 400, "chat_template");
    expect_error("{" MSGS ",\"continue_final_message\":true}", 400, "continue_final_message");
    expect_error("{" MSGS ",\"echo\":true}", 400, "echo");
    expect_error("{" MSGS ",\"echo\":1}", 400, "echo");
    expect_error("{" MSGS ",\"logprobs\":2}", 400, "logprobs");
    expect_error("{" MSGS ",\"top_logprobs\":2}", 400, "top_logprobs");
    expect_error("{" MSGS ",\"logprobs\":true,\"top_logprobs\":21}", 400, "top_logprobs");
    expect_error("{" MSGS ",\"max_tokens\":0}", 400, "max_tokens");
    expect_error("{" MSGS ",\"max_completion_tokens\":0}", 400, "max_completion_tokens");
    expect_error("{" MSGS ",\"max_completion_tokens\":129}", 400, "max_completion_tokens");
    expect_error("{" MSGS ",\"n\":5}", 400, "n");
    expect_error("{" MSGS ",\"model\":\"gpt-4\"}", 404, "model");
    expect_error("{" MSGS ",\"temperature\":-1}", 400, "temperature");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_chat_gets_chat_defaults),
        cmocka_unit_test(test_chat_fields_parse),
        cmocka_unit_test(test_refused_and_malformed_fields_name_the_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
