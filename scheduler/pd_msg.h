/*
 * pd_msg.h — the wire protocol between a decode host and a prefill host (disaggregated
 * serving, issue 20; docs/disaggregated.md): versioned, length-prefixed messages, encoded
 * little-endian field by field, and a decoder that checks every field before it trusts it.
 *
 * Place in the data flow: a decode host sends SUBMIT (prompt + what the first token's
 * sampling needs) to a prefill host; the prefill host answers FIRST (first token, its
 * logprobs, the sampler's PRNG state, a description of the K/V to come), then the prompt's
 * K/V in KV chunks, or ERROR. CANCEL goes from decode to prefill; LOAD reports (queue,
 * in-flight, free blocks) ride on FIRST and ERROR and may be sent alone. HELLO opens every
 * connection in both directions and carries the model shape: a peer serving a model of another
 * shape is refused before any request (the K/V would not fit).
 *
 * Frame: a 24-byte header, then payload_len bytes:
 *   u32 magic "KCPD" | u16 version | u16 type | u32 payload_len | u32 flags (0) | u64 req_id
 * The header alone tells a stream reader how many bytes follow; sch_pd_header_decode refuses a
 * payload_len above what the type can need for the local model (sch_pd_max_payload) before
 * anything is allocated, so a peer cannot make us allocate what it likes.
 *
 * DESIGN invariants:
 *  1. A peer is never trusted for a length: every count is checked against the local model's
 *     shape (struct sch_pd_shape) and against the bytes actually present, and a message must
 *     be consumed exactly (no trailing bytes).
 *  2. Decoding never asserts and never reads past len; it fails with KC_EFORMAT (malformed),
 *     KC_ERANGE (a value out of its range) or KC_EUNSUPPORTED (another protocol version or
 *     model shape), with a message naming the field. On failure *out is zeroed and owns nothing.
 *  3. A decoded message owns its arrays (one allocation, sch_pd_msg_free) except a KV
 *     chunk's data, which points into the decoded buffer (it is bulk and copied once, into
 *     the KV pool).
 *  4. encode(decode(x)) == x for every x decode accepts (the fuzz target checks it).
 */
#ifndef SCH_PD_MSG_H
#define SCH_PD_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/sampler.h"
#include "scheduler/scheduler.h"

#define SCH_PD_MAGIC 0x4450434bu /* "KCPD" as bytes on the wire */
#define SCH_PD_VERSION 1
#define SCH_PD_HEADER_BYTES 24
/* Bulk bound of one KV chunk's data; a sender splits a prompt's K/V into chunks below it. */
#define SCH_PD_MAX_KV_CHUNK_BYTES ((size_t)16 << 20)
/* Longest error text carried by ERROR. */
#define SCH_PD_MAX_ERROR_TEXT 255
/* Absolute bounds of a model shape on the wire (a HELLO outside them is malformed, whatever
 * the local model). */
#define SCH_PD_MAX_LAYERS 1024
#define SCH_PD_MAX_KV_HEADS 1024
#define SCH_PD_MAX_HEAD_DIM 1024
#define SCH_PD_MAX_VOCAB (1 << 24)
#define SCH_PD_MAX_CONTEXT (1 << 22)

enum sch_pd_type {
    SCH_PD_HELLO = 1,
    SCH_PD_SUBMIT,
    SCH_PD_FIRST,
    SCH_PD_KV,
    SCH_PD_CANCEL,
    SCH_PD_LOAD,
    SCH_PD_ERROR,
};
#define SCH_PD_TYPE_MAX SCH_PD_ERROR
/* "hello", "submit", ...; "?" for anything else. */
const char *sch_pd_type_name(int type);

/* Element type of K/V on the wire (bf16 halves the bytes; a f32 pool rounds to nearest even,
 * a bf16 pool sends its elements as they are). */
enum sch_pd_dtype { SCH_PD_DTYPE_F32 = 0, SCH_PD_DTYPE_BF16 = 1 };
size_t sch_pd_dtype_size(enum sch_pd_dtype d);

enum sch_pd_role { SCH_PD_ROLE_PREFILL = 1, SCH_PD_ROLE_DECODE = 2 };

/* The facts both hosts must agree on: the base model's K/V geometry, vocabulary and context
 * limit. The local shape bounds every decoded length. */
struct sch_pd_shape {
    int32_t n_layers;   /* L */
    int32_t n_kv_heads; /* Hkv */
    int32_t head_dim;   /* D */
    int32_t vocab_size; /* V */
    int32_t max_context;
};

/* Load report, piggy-backed on FIRST and ERROR (and LOAD alone). */
struct sch_pd_load {
    uint32_t queued;    /* requests waiting for a prefill worker */
    uint32_t in_flight; /* remote requests admitted and not yet answered */
    uint32_t free_blocks;
    uint32_t total_blocks;
};

struct sch_pd_header {
    uint16_t version;
    uint16_t type;
    uint32_t payload_len;
    uint64_t req_id;
};

struct sch_pd_hello {
    enum sch_pd_role role;
    struct sch_pd_shape shape;
};

struct sch_pd_submit {
    enum sch_prefill_mode mode; /* AUTO lets the prefill host choose */
    enum sch_pd_dtype wire_dtype;
    bool ignore_eos;
    int n_logprobs; /* -1..SCH_MAX_LOGPROBS */
    int max_tokens; /* >= 1; n_prompt + max_tokens <= max_context */
    int min_tokens; /* 0..max_tokens */
    struct eng_sampler_params sampling;
    int n_prompt; /* 1..max_context - 1 */
    int32_t *prompt;
    int n_stop_token_ids; /* 0..SCH_MAX_STOP_TOKEN_IDS */
    int32_t *stop_token_ids;
    int n_logit_bias; /* 0..SCH_MAX_LOGIT_BIAS */
    struct sch_logit_bias *logit_bias;
};

struct sch_pd_first {
    struct sch_pd_load load;
    int32_t token;
    enum sch_finish finish; /* NONE: decoding goes on; else the first token ended it */
    enum sch_prefill_mode mode_used;
    bool has_logprob;
    float logprob;
    int n_top; /* 0..SCH_MAX_LOGPROBS */
    int32_t top_ids[SCH_MAX_LOGPROBS];
    float top_logprobs[SCH_MAX_LOGPROBS];
    int n_prompt;
    int cached_tokens;
    float aux_ms, predict_ms, base_first_step_ms, prefill_ms;
    uint64_t rng[2]; /* the sampler's PRNG state after the first token */
    /* The K/V that follows: positions [0, n_kv_tokens) of every layer, in n_chunks KV
     * messages of kv_bytes in all. The shape must equal the local one. */
    enum sch_pd_dtype wire_dtype;
    struct sch_pd_shape kv_shape; /* n_layers, n_kv_heads, head_dim checked; others 0 */
    int n_kv_tokens;              /* <= n_prompt */
    uint32_t n_chunks;
    uint64_t kv_bytes;
};

/* One chunk of K/V: layers [layer_first, +n_layers), positions [tok_first, +n_tok); data holds,
 * per layer, K [n_tok, Hkv, D] then V [n_tok, Hkv, D] elements of dtype. */
struct sch_pd_kv {
    int layer_first, n_layers;
    int tok_first, n_tok;
    enum sch_pd_dtype dtype;
    const void *data; /* decode: points into the decoded buffer; encode: NULL sends no data */
    size_t data_bytes;
};

struct sch_pd_cancel {
    enum sch_finish finish;
};

struct sch_pd_error {
    struct sch_pd_load load;
    int code;       /* a KC_E* code */
    bool retryable; /* the decode host may try another prefill host */
    char text[SCH_PD_MAX_ERROR_TEXT + 1];
};

struct sch_pd_msg {
    enum sch_pd_type type;
    uint64_t req_id;
    union {
        struct sch_pd_hello hello;
        struct sch_pd_submit submit;
        struct sch_pd_first first;
        struct sch_pd_kv kv;
        struct sch_pd_cancel cancel;
        struct sch_pd_load load;
        struct sch_pd_error error;
    } u;
    void *owned; /* the arrays of a decoded SUBMIT */
};

/* A growable byte buffer the encoder appends to. */
struct sch_pd_buf {
    uint8_t *p;
    size_t len, cap;
};
void sch_pd_buf_free(struct sch_pd_buf *b);

/* The shape of a model config's K/V (max_context: the scheduler's limit). */
struct sch_pd_shape sch_pd_shape_of(int n_layers, int n_kv_heads, int head_dim, int vocab_size,
                                    int max_context);

/* Whether a peer's shape equals ours; KC_EUNSUPPORTED with both shapes in err if not. */
int sch_pd_shape_check(const struct sch_pd_shape *local, const struct sch_pd_shape *peer,
                       struct kc_error *err);

/* Bytes of K/V for n_tok positions of n_layers layers of this shape in dtype (0 on overflow of
 * the bounds above). */
uint64_t sch_pd_kv_bytes(const struct sch_pd_shape *s, int n_layers, int n_tok,
                         enum sch_pd_dtype d);

/* The largest payload a message of `type` can need with this local shape: what the header
 * decoder allows (0 for an unknown type). */
size_t sch_pd_max_payload(int type, const struct sch_pd_shape *local);

/* Decodes and checks the 24-byte frame header (len >= SCH_PD_HEADER_BYTES): magic, version,
 * known type, flags 0, and payload_len <= sch_pd_max_payload(type). */
int sch_pd_header_decode(const uint8_t *buf, size_t len, const struct sch_pd_shape *local,
                         struct sch_pd_header *out, struct kc_error *err);

/* Decodes one whole message (header + exactly payload_len bytes, len must match) against the
 * local shape into *out (invariants 1-3). Free with sch_pd_msg_free, also after a failure. */
int sch_pd_msg_decode(const uint8_t *buf, size_t len, const struct sch_pd_shape *local,
                      struct sch_pd_msg *out, struct kc_error *err);
void sch_pd_msg_free(struct sch_pd_msg *m);

/* Appends m's frame to out. A KV message with data NULL is framed with its data_bytes in
 * payload_len but the data is not appended (the transport sends it from where it lies).
 * KC_EINVAL for a message that the decoder would refuse in its counts (a programmer error
 * surfaced as a code), KC_ENOMEM. */
int sch_pd_msg_encode(const struct sch_pd_msg *m, struct sch_pd_buf *out);

#endif /* SCH_PD_MSG_H */
