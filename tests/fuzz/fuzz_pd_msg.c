/*
 * fuzz_pd_msg.c — libFuzzer target for the prefill/decode wire protocol decoder
 * (scheduler/pd_msg.h; issue 20, RELIABILITY.md E13): arbitrary bytes as a frame from a
 * hostile or broken peer.
 *
 * Input: byte 0 picks one of four local model shapes (bits 0-1: the bounds the decoder checks
 * against); with bit 2 set, the header's payload_len is overwritten with the frame's real
 * payload length before decoding, so that mutations that grow or shrink a body reach its
 * field checks instead of stopping at the length check (a 10-minute run without it accepted
 * only frames of the seeds' lengths). The rest is the frame.
 *
 * Properties checked (abort on violation): decoding never crashes or leaks (ASan/LSan); the
 * header decoder and the whole-message decoder agree on the header; an accepted message obeys
 * the local bounds (token ids in the vocabulary, K/V chunks inside the cache, sizes exact);
 * and re-encoding an accepted message gives back exactly the input bytes (pd_msg.h invariant
 * 4: no field is silently dropped or normalised).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/pd_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_pd_msg: %s:%d: %s\n", __FILE__, __LINE__, #c);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const struct sch_pd_shape SHAPES[4] = {
    {4, 2, 8, 100, 64},
    {1, 1, 1, 2, 2},
    {22, 4, 64, 32000, 2048},
    {2, 1, 4, 16, 16},
};

static void check_accepted(const struct sch_pd_msg *m, const struct sch_pd_shape *s) {
    switch (m->type) {
    case SCH_PD_SUBMIT: {
        const struct sch_pd_submit *p = &m->u.submit;
        CHECK(p->n_prompt >= 1 && p->n_prompt < s->max_context);
        CHECK(p->max_tokens >= 1 && p->n_prompt + p->max_tokens <= s->max_context);
        for (int i = 0; i < p->n_prompt; i++) {
            CHECK(p->prompt[i] >= 0 && p->prompt[i] < s->vocab_size);
        }
        for (int i = 0; i < p->n_logit_bias; i++) {
            CHECK(p->logit_bias[i].id >= 0 && p->logit_bias[i].id < s->vocab_size);
        }
        break;
    }
    case SCH_PD_FIRST:
        CHECK(m->u.first.token >= 0 && m->u.first.token < s->vocab_size);
        CHECK(m->u.first.n_kv_tokens <= m->u.first.n_prompt);
        CHECK(m->u.first.kv_bytes ==
              sch_pd_kv_bytes(s, s->n_layers, m->u.first.n_kv_tokens, m->u.first.wire_dtype));
        break;
    case SCH_PD_KV: {
        const struct sch_pd_kv *k = &m->u.kv;
        CHECK(k->layer_first >= 0 && k->layer_first + k->n_layers <= s->n_layers);
        CHECK(k->tok_first >= 0 && k->tok_first + k->n_tok <= s->max_context);
        CHECK(k->data_bytes == sch_pd_kv_bytes(s, k->n_layers, k->n_tok, k->dtype));
        CHECK(k->data_bytes <= SCH_PD_MAX_KV_CHUNK_BYTES);
        break;
    }
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const struct sch_pd_shape *shape = &SHAPES[data[0] & 3];
    const bool fix_len = (data[0] & 4) != 0 && size > 1 + 12;
    data++;
    size--;
    uint8_t *copy = NULL;
    if (fix_len) {
        copy = malloc(size);
        CHECK(copy != NULL);
        memcpy(copy, data, size);
        const uint32_t plen =
            size >= SCH_PD_HEADER_BYTES ? (uint32_t)(size - SCH_PD_HEADER_BYTES) : 0;
        for (int i = 0; i < 4; i++) {
            copy[8 + i] = (uint8_t)(plen >> (8 * i)); /* payload_len: u32 LE at offset 8 */
        }
        data = copy;
    }
    struct sch_pd_header h;
    struct kc_error err = {0};
    const int hrc = sch_pd_header_decode(data, size, shape, &h, &err);
    struct sch_pd_msg m;
    const int rc = sch_pd_msg_decode(data, size, shape, &m, &err);
    if (hrc != KC_OK) {
        CHECK(rc != KC_OK);
    }
    if (rc != KC_OK) {
        CHECK(m.owned == NULL);
        free(copy);
        return 0;
    }
    CHECK(h.type == m.type && h.req_id == m.req_id);
    CHECK((size_t)h.payload_len + SCH_PD_HEADER_BYTES == size);
    check_accepted(&m, shape);
    struct sch_pd_buf b = {0};
    CHECK(sch_pd_msg_encode(&m, &b) == KC_OK);
    CHECK(b.len == size && memcmp(b.p, data, size) == 0);
    sch_pd_buf_free(&b);
    sch_pd_msg_free(&m);
    free(copy);
    return 0;
}
