/*
 * Unit tests of the prefill/decode wire protocol (scheduler/pd_msg.h): every message type
 * round-trips byte for byte, and the decoder refuses, with a message naming the field, every
 * kind of malformed frame: bad magic, another version, unknown type, reserved bits, lengths
 * above what the local model allows, truncation at every byte, trailing bytes, token ids
 * outside the vocabulary, a peer whose model shape differs, inconsistent K/V sizes.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/pd_msg.h"

static const struct sch_pd_shape LOCAL = {4, 2, 8, 100, 64};

static struct sch_pd_buf encode(const struct sch_pd_msg *m) {
    struct sch_pd_buf b = {0};
    assert_int_equal(sch_pd_msg_encode(m, &b), KC_OK);
    return b;
}

/* Decodes b, re-encodes the result and checks the bytes are the same. */
static void round_trip(const struct sch_pd_buf *b, struct sch_pd_msg *out) {
    struct kc_error err = {0};
    const int rc = sch_pd_msg_decode(b->p, b->len, &LOCAL, out, &err);
    if (rc != KC_OK) {
        fail_msg("decode: %s", err.msg);
    }
    struct sch_pd_buf again = encode(out);
    assert_int_equal(again.len, b->len);
    assert_memory_equal(again.p, b->p, b->len);
    sch_pd_buf_free(&again);
}

static int decode_rc(const uint8_t *p, size_t len, struct kc_error *err) {
    struct sch_pd_msg m;
    const int rc = sch_pd_msg_decode(p, len, &LOCAL, &m, err);
    sch_pd_msg_free(&m);
    return rc;
}

static struct sch_pd_msg submit_msg(int32_t *prompt, int n) {
    struct sch_pd_msg m = {.type = SCH_PD_SUBMIT, .req_id = 42};
    struct sch_pd_submit *s = &m.u.submit;
    s->mode = SCH_MODE_PREDICT;
    s->wire_dtype = SCH_PD_DTYPE_BF16;
    s->ignore_eos = true;
    s->n_logprobs = 3;
    s->max_tokens = 10;
    s->min_tokens = 2;
    s->sampling = eng_sampler_default_params();
    s->sampling.temperature = 0.7f;
    s->sampling.seed = 0x123456789abcdefull;
    s->prompt = prompt;
    s->n_prompt = n;
    return m;
}

static void test_every_type_round_trips(void **state) {
    (void)state;
    int32_t prompt[5] = {1, 2, 3, 99, 0};
    int32_t stops[2] = {7, 8};
    struct sch_logit_bias bias[2] = {{5, -100.0f}, {6, 2.5f}};
    struct sch_pd_msg m = submit_msg(prompt, 5);
    m.u.submit.stop_token_ids = stops;
    m.u.submit.n_stop_token_ids = 2;
    m.u.submit.logit_bias = bias;
    m.u.submit.n_logit_bias = 2;
    struct sch_pd_buf b = encode(&m);
    struct sch_pd_msg d;
    round_trip(&b, &d);
    assert_int_equal(d.type, SCH_PD_SUBMIT);
    assert_int_equal(d.req_id, 42);
    assert_int_equal(d.u.submit.n_prompt, 5);
    assert_memory_equal(d.u.submit.prompt, prompt, sizeof(prompt));
    assert_int_equal(d.u.submit.stop_token_ids[1], 8);
    assert_true(d.u.submit.logit_bias[1].bias == 2.5f);
    assert_true(d.u.submit.ignore_eos);
    assert_int_equal(d.u.submit.wire_dtype, SCH_PD_DTYPE_BF16);
    assert_true(d.u.submit.sampling.seed == 0x123456789abcdefull);
    sch_pd_msg_free(&d);
    sch_pd_buf_free(&b);

    struct sch_pd_msg f = {.type = SCH_PD_FIRST, .req_id = 7};
    f.u.first.load = (struct sch_pd_load){3, 2, 10, 20};
    f.u.first.token = 17;
    f.u.first.mode_used = SCH_MODE_FULL;
    f.u.first.has_logprob = true;
    f.u.first.logprob = -0.25f;
    f.u.first.n_top = 2;
    f.u.first.top_ids[0] = 17;
    f.u.first.top_logprobs[0] = -0.25f;
    f.u.first.top_ids[1] = 3;
    f.u.first.top_logprobs[1] = -INFINITY;
    f.u.first.n_prompt = 5;
    f.u.first.prefill_ms = 12.5f;
    f.u.first.rng[0] = 1;
    f.u.first.rng[1] = UINT64_MAX;
    f.u.first.kv_shape = (struct sch_pd_shape){4, 2, 8, 0, 0};
    f.u.first.n_kv_tokens = 5;
    f.u.first.wire_dtype = SCH_PD_DTYPE_F32;
    f.u.first.kv_bytes = sch_pd_kv_bytes(&LOCAL, 4, 5, SCH_PD_DTYPE_F32);
    f.u.first.n_chunks = 2;
    b = encode(&f);
    round_trip(&b, &d);
    assert_int_equal(d.u.first.token, 17);
    assert_true(d.u.first.rng[1] == UINT64_MAX);
    assert_int_equal(d.u.first.load.free_blocks, 10);
    assert_true(d.u.first.kv_bytes == 4u * 2 * 5 * 2 * 8 * 4);
    sch_pd_msg_free(&d);
    sch_pd_buf_free(&b);

    float data[2 * 2 * 3 * 2 * 8]; /* 2 layers, K+V, 3 positions, Hkv 2, D 8 */
    for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
        data[i] = (float)i * 0.5f;
    }
    struct sch_pd_msg k = {.type = SCH_PD_KV, .req_id = 7};
    k.u.kv = (struct sch_pd_kv){2, 2, 1, 3, SCH_PD_DTYPE_F32, data, sizeof(data)};
    b = encode(&k);
    round_trip(&b, &d);
    assert_int_equal(d.u.kv.data_bytes, sizeof(data));
    assert_memory_equal(d.u.kv.data, data, sizeof(data));
    sch_pd_msg_free(&d);
    /* The same frame without its data: the header still counts the data bytes. */
    k.u.kv.data = NULL;
    struct sch_pd_buf h = encode(&k);
    assert_int_equal(h.len, b.len - sizeof(data));
    assert_memory_equal(h.p, b.p, h.len);
    sch_pd_buf_free(&h);
    sch_pd_buf_free(&b);

    struct sch_pd_msg others[4] = {
        {.type = SCH_PD_HELLO, .u.hello = {SCH_PD_ROLE_DECODE, LOCAL}},
        {.type = SCH_PD_CANCEL, .req_id = 9, .u.cancel = {SCH_FINISH_ABORT}},
        {.type = SCH_PD_LOAD, .u.load = {1, 2, 3, 4}},
        {.type = SCH_PD_ERROR, .req_id = 9},
    };
    others[3].u.error.code = KC_EBUSY;
    others[3].u.error.retryable = true;
    strcpy(others[3].u.error.text, "prefill queue full");
    for (int i = 0; i < 4; i++) {
        b = encode(&others[i]);
        round_trip(&b, &d);
        assert_int_equal(d.type, others[i].type);
        sch_pd_msg_free(&d);
        sch_pd_buf_free(&b);
    }
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void test_header_is_checked_before_any_length_is_trusted(void **state) {
    (void)state;
    struct sch_pd_msg m = {.type = SCH_PD_LOAD, .u.load = {1, 2, 3, 4}};
    struct sch_pd_buf b = encode(&m);
    struct kc_error err = {0};
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_OK);

    b.p[0] ^= 1; /* magic */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    assert_non_null(strstr(err.msg, "magic"));
    b.p[0] ^= 1;
    b.p[4] = 2; /* version 2 */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "version"));
    b.p[4] = 1;
    b.p[6] = 99; /* type */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    b.p[6] = SCH_PD_LOAD;
    b.p[12] = 1; /* reserved flags */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    b.p[12] = 0;

    /* A huge payload_len is refused by the header alone (a stream reader would allocate). */
    struct sch_pd_header h;
    put_u32(b.p + 8, 0xffffffffu);
    assert_int_equal(sch_pd_header_decode(b.p, SCH_PD_HEADER_BYTES, &LOCAL, &h, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "exceeds"));
    put_u32(b.p + 8, 17); /* one more than a LOAD can need */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    put_u32(b.p + 8, 15); /* one less: the frame holds a byte more than the header says */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    put_u32(b.p + 8, 16);

    /* Truncated at every length, and with a trailing byte. */
    for (size_t n = 0; n < b.len; n++) {
        assert_int_not_equal(decode_rc(b.p, n, &err), KC_OK);
    }
    uint8_t longer[64];
    memcpy(longer, b.p, b.len);
    longer[b.len] = 0;
    assert_int_equal(decode_rc(longer, b.len + 1, &err), KC_EFORMAT);
    sch_pd_buf_free(&b);
}

static void test_submit_is_bounded_by_the_local_model(void **state) {
    (void)state;
    struct kc_error err = {0};
    int32_t prompt[70] = {0};
    struct sch_pd_msg m = submit_msg(prompt, 5);
    struct sch_pd_buf b = encode(&m);
    for (size_t n = 0; n < b.len; n++) {
        assert_int_not_equal(decode_rc(b.p, n, &err), KC_OK);
    }
    sch_pd_buf_free(&b);

    prompt[2] = 100; /* vocab is 100 */
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "prompt[2]"));
    sch_pd_buf_free(&b);
    prompt[2] = -1;
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    prompt[2] = 0;

    m.u.submit.n_prompt = 64; /* >= max_context */
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    m.u.submit.n_prompt = 60;
    m.u.submit.max_tokens = 5; /* 60 + 5 > 64 */
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    assert_non_null(strstr(err.msg, "max_tokens"));
    sch_pd_buf_free(&b);
    m.u.submit.max_tokens = 4;
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_OK);
    sch_pd_buf_free(&b);

    m.u.submit.sampling.temperature = NAN;
    b = encode(&m);
    assert_int_not_equal(decode_rc(b.p, b.len, &err), KC_OK);
    assert_non_null(strstr(err.msg, "temperature"));
    sch_pd_buf_free(&b);
    m.u.submit.sampling.temperature = 0.0f;

    struct sch_logit_bias bias = {3, NAN};
    m.u.submit.logit_bias = &bias;
    m.u.submit.n_logit_bias = 1;
    b = encode(&m);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
}

static void test_a_peer_with_another_model_shape_is_refused(void **state) {
    (void)state;
    struct kc_error err = {0};
    struct sch_pd_msg h = {.type = SCH_PD_HELLO, .u.hello = {SCH_PD_ROLE_PREFILL, LOCAL}};
    h.u.hello.shape.n_layers = 5;
    struct sch_pd_buf b = encode(&h);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "peer layers=5"));
    assert_non_null(strstr(err.msg, "local layers=4"));
    sch_pd_buf_free(&b);
    h.u.hello.shape = LOCAL;
    h.u.hello.shape.max_context = 1 << 30; /* outside the absolute bounds */
    b = encode(&h);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);

    struct sch_pd_msg f = {.type = SCH_PD_FIRST, .req_id = 1};
    f.u.first.token = 1;
    f.u.first.mode_used = SCH_MODE_FULL;
    f.u.first.n_prompt = 3;
    f.u.first.kv_shape = (struct sch_pd_shape){4, 2, 16, 0, 0}; /* head_dim 16 != 8 */
    f.u.first.n_kv_tokens = 3;
    f.u.first.kv_bytes = 4u * 2 * 3 * 2 * 16 * 4;
    f.u.first.n_chunks = 1;
    b = encode(&f);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "head_dim=16"));
    sch_pd_buf_free(&b);

    f.u.first.kv_shape.head_dim = 8;
    f.u.first.kv_bytes = 4u * 2 * 3 * 2 * 8 * 4 + 4; /* not what the shape needs */
    b = encode(&f);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    sch_pd_buf_free(&b);
    f.u.first.kv_bytes -= 4;
    f.u.first.n_kv_tokens = 4; /* more K/V than prompt */
    b = encode(&f);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    f.u.first.n_kv_tokens = 3;
    f.u.first.n_top = 1;
    f.u.first.top_ids[0] = 1;
    f.u.first.top_logprobs[0] = 0.5f; /* not a logprob */
    b = encode(&f);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    f.u.first.top_logprobs[0] = -0.5f;
    b = encode(&f);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_OK);
    sch_pd_buf_free(&b);
}

static void test_kv_chunks_must_fit_the_local_cache(void **state) {
    (void)state;
    struct kc_error err = {0};
    static float data[4 * 2 * 4 * 2 * 8];
    struct sch_pd_msg k = {.type = SCH_PD_KV, .req_id = 1};
    k.u.kv = (struct sch_pd_kv){0, 4, 60, 4, SCH_PD_DTYPE_F32, data, sizeof(data)};
    struct sch_pd_buf b = encode(&k);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_OK);
    sch_pd_buf_free(&b);
    k.u.kv.tok_first = 61; /* past max_context 64 */
    b = encode(&k);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    k.u.kv.tok_first = 0;
    k.u.kv.layer_first = 1; /* layers 1..4 of 4 */
    b = encode(&k);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    k.u.kv.layer_first = 0;
    k.u.kv.data_bytes -= 4; /* data shorter than the chunk needs */
    b = encode(&k);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    sch_pd_buf_free(&b);
    k.u.kv.data_bytes = sizeof(data) / 2; /* bf16 of the same chunk */
    k.u.kv.dtype = SCH_PD_DTYPE_BF16;
    b = encode(&k);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_OK);
    b.p[SCH_PD_HEADER_BYTES + 16] = 7; /* dtype 7 */
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    sch_pd_buf_free(&b);
}

static void test_error_text_is_printable_and_bounded(void **state) {
    (void)state;
    struct kc_error err = {0};
    struct sch_pd_msg e = {.type = SCH_PD_ERROR, .req_id = 1};
    e.u.error.code = KC_EBUSY;
    strcpy(e.u.error.text, "busy\x01");
    struct sch_pd_buf b = encode(&e);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_EFORMAT);
    sch_pd_buf_free(&b);
    strcpy(e.u.error.text, "busy");
    e.u.error.code = -1000;
    b = encode(&e);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
    memset(e.u.error.text, 'a', sizeof(e.u.error.text)); /* unterminated: refused to encode */
    e.u.error.code = KC_EBUSY;
    assert_int_equal(sch_pd_msg_encode(&e, &b), KC_EINVAL);
    sch_pd_buf_free(&b);
    /* A load report that claims more free blocks than it has. */
    struct sch_pd_msg l = {.type = SCH_PD_LOAD, .u.load = {0, 0, 5, 4}};
    b = encode(&l);
    assert_int_equal(decode_rc(b.p, b.len, &err), KC_ERANGE);
    sch_pd_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type_round_trips),
        cmocka_unit_test(test_header_is_checked_before_any_length_is_trusted),
        cmocka_unit_test(test_submit_is_bounded_by_the_local_model),
        cmocka_unit_test(test_a_peer_with_another_model_shape_is_refused),
        cmocka_unit_test(test_kv_chunks_must_fit_the_local_cache),
        cmocka_unit_test(test_error_text_is_printable_and_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
