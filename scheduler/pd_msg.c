/*
 * pd_msg.c — encoder and checking decoder of the prefill/decode wire protocol (pd_msg.h).
 * Every field is written and read little-endian one byte at a time, so the format does not
 * depend on the host's byte order or alignment.
 */
#define _POSIX_C_SOURCE 200809L
#include "scheduler/pd_msg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- byte helpers ---- */

struct rd {
    const uint8_t *p;
    size_t len, off;
    bool bad; /* ran past the end */
};

static uint64_t rd_n(struct rd *r, int n) {
    if (r->bad || r->len - r->off < (size_t)n) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v |= (uint64_t)r->p[r->off + (size_t)i] << (8 * i);
    }
    r->off += (size_t)n;
    return v;
}
static uint8_t rd_u8(struct rd *r) {
    return (uint8_t)rd_n(r, 1);
}
static uint16_t rd_u16(struct rd *r) {
    return (uint16_t)rd_n(r, 2);
}
static uint32_t rd_u32(struct rd *r) {
    return (uint32_t)rd_n(r, 4);
}
static int32_t rd_i32(struct rd *r) {
    const uint32_t u = rd_u32(r);
    int32_t v;
    memcpy(&v, &u, sizeof(v));
    return v;
}
static uint64_t rd_u64(struct rd *r) {
    return rd_n(r, 8);
}
static float rd_f32(struct rd *r) {
    const uint32_t u = rd_u32(r);
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static int buf_reserve(struct sch_pd_buf *b, size_t more) {
    if (more > SIZE_MAX - b->len) {
        return KC_ENOMEM;
    }
    if (b->len + more <= b->cap) {
        return KC_OK;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) {
        cap = cap > SIZE_MAX / 2 ? b->len + more : cap * 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL) {
        return KC_ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return KC_OK;
}

/* Writers assume buf_reserve made room (the encoder reserves the whole frame first). */
static void wr_n(struct sch_pd_buf *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) {
        b->p[b->len++] = (uint8_t)(v >> (8 * i));
    }
}
static void wr_i32(struct sch_pd_buf *b, int32_t v) {
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    wr_n(b, u, 4);
}
static void wr_f32(struct sch_pd_buf *b, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    wr_n(b, u, 4);
}

void sch_pd_buf_free(struct sch_pd_buf *b) {
    if (b != NULL) {
        free(b->p);
        b->p = NULL;
        b->len = b->cap = 0;
    }
}

/* ---- names, shapes, sizes ---- */

const char *sch_pd_type_name(int type) {
    switch (type) {
    case SCH_PD_HELLO:
        return "hello";
    case SCH_PD_SUBMIT:
        return "submit";
    case SCH_PD_FIRST:
        return "first";
    case SCH_PD_KV:
        return "kv";
    case SCH_PD_CANCEL:
        return "cancel";
    case SCH_PD_LOAD:
        return "load";
    case SCH_PD_ERROR:
        return "error";
    default:
        return "?";
    }
}

size_t sch_pd_dtype_size(enum sch_pd_dtype d) {
    return d == SCH_PD_DTYPE_BF16 ? 2 : 4;
}

struct sch_pd_shape sch_pd_shape_of(int n_layers, int n_kv_heads, int head_dim, int vocab_size,
                                    int max_context) {
    return (struct sch_pd_shape){n_layers, n_kv_heads, head_dim, vocab_size, max_context};
}

int sch_pd_shape_check(const struct sch_pd_shape *local, const struct sch_pd_shape *peer,
                       struct kc_error *err) {
    if (local->n_layers != peer->n_layers || local->n_kv_heads != peer->n_kv_heads ||
        local->head_dim != peer->head_dim || local->vocab_size != peer->vocab_size ||
        local->max_context != peer->max_context) {
        return kc_error_set(err, KC_EUNSUPPORTED,
                            "peer model differs: peer layers=%d kv_heads=%d head_dim=%d vocab=%d "
                            "max_context=%d, local layers=%d kv_heads=%d head_dim=%d vocab=%d "
                            "max_context=%d (both hosts must serve the same base model and "
                            "--max-context)",
                            peer->n_layers, peer->n_kv_heads, peer->head_dim, peer->vocab_size,
                            peer->max_context, local->n_layers, local->n_kv_heads, local->head_dim,
                            local->vocab_size, local->max_context);
    }
    return KC_OK;
}

uint64_t sch_pd_kv_bytes(const struct sch_pd_shape *s, int n_layers, int n_tok,
                         enum sch_pd_dtype d) {
    if (n_layers < 0 || n_layers > SCH_PD_MAX_LAYERS || n_tok < 0 || n_tok > SCH_PD_MAX_CONTEXT ||
        s->n_kv_heads < 0 || s->n_kv_heads > SCH_PD_MAX_KV_HEADS || s->head_dim < 0 ||
        s->head_dim > SCH_PD_MAX_HEAD_DIM) {
        return 0;
    }
    /* At most 2^10 * 2 * 2^22 * 2^10 * 2^10 * 4 = 2^55: no overflow in 64 bits. */
    return (uint64_t)n_layers * 2u * (uint64_t)n_tok * (uint64_t)s->n_kv_heads *
           (uint64_t)s->head_dim * sch_pd_dtype_size(d);
}

/* Fixed payload sizes. */
#define LOAD_BYTES 16
#define HELLO_BYTES (4 + 5 * 4)
#define SUBMIT_FIXED (4 + 3 * 4 + 7 * 4 + 8 + 3 * 4)
/* load, then token, finish, mode, has_logprob, logprob, n_top; the top list; n_prompt,
 * cached_tokens; four timings; the PRNG state; dtype, the K/V shape (3), n_kv_tokens,
 * n_chunks; kv_bytes. */
#define FIRST_FIXED                                                                                \
    (LOAD_BYTES + 6 * 4 + SCH_MAX_LOGPROBS * 8 + 2 * 4 + 4 * 4 + 16 + 4 + 3 * 4 + 2 * 4 + 8)
#define KV_FIXED (4 * 4 + 4)
#define CANCEL_BYTES 4
#define ERROR_FIXED (LOAD_BYTES + 4 + 2 + 2)

size_t sch_pd_max_payload(int type, const struct sch_pd_shape *local) {
    const size_t ctx = local->max_context > 0 ? (size_t)local->max_context : 0;
    switch (type) {
    case SCH_PD_HELLO:
        return HELLO_BYTES;
    case SCH_PD_SUBMIT:
        return SUBMIT_FIXED + 4 * ctx + 4 * (size_t)SCH_MAX_STOP_TOKEN_IDS +
               8 * (size_t)SCH_MAX_LOGIT_BIAS;
    case SCH_PD_FIRST:
        return FIRST_FIXED;
    case SCH_PD_KV:
        return KV_FIXED + SCH_PD_MAX_KV_CHUNK_BYTES;
    case SCH_PD_CANCEL:
        return CANCEL_BYTES;
    case SCH_PD_LOAD:
        return LOAD_BYTES;
    case SCH_PD_ERROR:
        return ERROR_FIXED + SCH_PD_MAX_ERROR_TEXT;
    default:
        return 0;
    }
}

/* ---- header ---- */

int sch_pd_header_decode(const uint8_t *buf, size_t len, const struct sch_pd_shape *local,
                         struct sch_pd_header *out, struct kc_error *err) {
    if (len < SCH_PD_HEADER_BYTES) {
        return kc_error_set(err, KC_EFORMAT, "pd: frame of %zu bytes is shorter than a header",
                            len);
    }
    struct rd r = {buf, len, 0, false};
    const uint32_t magic = rd_u32(&r);
    const uint16_t version = rd_u16(&r);
    const uint16_t type = rd_u16(&r);
    const uint32_t plen = rd_u32(&r);
    const uint32_t flags = rd_u32(&r);
    const uint64_t id = rd_u64(&r);
    if (magic != SCH_PD_MAGIC) {
        return kc_error_set(err, KC_EFORMAT, "pd: bad magic 0x%08x (not a kvcast peer)", magic);
    }
    if (version != SCH_PD_VERSION) {
        return kc_error_set(err, KC_EUNSUPPORTED,
                            "pd: protocol version %u, this host speaks %d (upgrade both pools "
                            "together)",
                            version, SCH_PD_VERSION);
    }
    if (type < SCH_PD_HELLO || type > SCH_PD_TYPE_MAX) {
        return kc_error_set(err, KC_EFORMAT, "pd: unknown message type %u", type);
    }
    if (flags != 0) {
        return kc_error_set(err, KC_EFORMAT, "pd: %s: reserved flags 0x%x set",
                            sch_pd_type_name(type), flags);
    }
    const size_t max = sch_pd_max_payload(type, local);
    if (plen > max) {
        return kc_error_set(err, KC_ERANGE, "pd: %s payload of %u bytes exceeds %zu",
                            sch_pd_type_name(type), plen, max);
    }
    *out = (struct sch_pd_header){version, type, plen, id};
    return KC_OK;
}

/* ---- payload decoders: each reads its fields, then checks them ---- */

#define BAD(code, ...) kc_error_set(err, code, __VA_ARGS__)

static int rd_load(struct rd *r, struct sch_pd_load *l) {
    l->queued = rd_u32(r);
    l->in_flight = rd_u32(r);
    l->free_blocks = rd_u32(r);
    l->total_blocks = rd_u32(r);
    return KC_OK;
}

static int check_load(const struct sch_pd_load *l, struct kc_error *err) {
    if (l->free_blocks > l->total_blocks) {
        return BAD(KC_ERANGE, "pd: load: free_blocks %u > total_blocks %u", l->free_blocks,
                   l->total_blocks);
    }
    return KC_OK;
}

static int dec_dtype(uint32_t v, enum sch_pd_dtype *out, struct kc_error *err) {
    if (v != SCH_PD_DTYPE_F32 && v != SCH_PD_DTYPE_BF16) {
        return BAD(KC_EFORMAT, "pd: unknown KV dtype %u on the wire", v);
    }
    *out = (enum sch_pd_dtype)v;
    return KC_OK;
}

static int dec_hello(struct rd *r, const struct sch_pd_shape *local, struct sch_pd_hello *h,
                     struct kc_error *err) {
    const uint32_t role = rd_u32(r);
    h->shape.n_layers = rd_i32(r);
    h->shape.n_kv_heads = rd_i32(r);
    h->shape.head_dim = rd_i32(r);
    h->shape.vocab_size = rd_i32(r);
    h->shape.max_context = rd_i32(r);
    if (r->bad) {
        return BAD(KC_EFORMAT, "pd: hello: truncated");
    }
    if (role != SCH_PD_ROLE_PREFILL && role != SCH_PD_ROLE_DECODE) {
        return BAD(KC_EFORMAT, "pd: hello: unknown role %u", role);
    }
    h->role = (enum sch_pd_role)role;
    const struct sch_pd_shape *s = &h->shape;
    if (!(s->n_layers >= 1 && s->n_layers <= SCH_PD_MAX_LAYERS && s->n_kv_heads >= 1 &&
          s->n_kv_heads <= SCH_PD_MAX_KV_HEADS && s->head_dim >= 1 &&
          s->head_dim <= SCH_PD_MAX_HEAD_DIM && s->vocab_size >= 1 &&
          s->vocab_size <= SCH_PD_MAX_VOCAB && s->max_context >= 2 &&
          s->max_context <= SCH_PD_MAX_CONTEXT)) {
        return BAD(KC_ERANGE, "pd: hello: model shape out of range");
    }
    return sch_pd_shape_check(local, s, err);
}

static int check_token(int32_t t, const struct sch_pd_shape *local, const char *what, int i,
                       struct kc_error *err) {
    if (t < 0 || t >= local->vocab_size) {
        return BAD(KC_ERANGE, "pd: %s[%d] = %d is outside the vocabulary (%d)", what, i, t,
                   local->vocab_size);
    }
    return KC_OK;
}

static int dec_submit(struct rd *r, const struct sch_pd_shape *local, struct sch_pd_msg *m,
                      struct kc_error *err) {
    struct sch_pd_submit *s = &m->u.submit;
    const uint8_t mode = rd_u8(r), dtype = rd_u8(r), flags = rd_u8(r);
    const int8_t n_logprobs = (int8_t)rd_u8(r);
    s->max_tokens = rd_i32(r);
    s->min_tokens = rd_i32(r);
    const int32_t reserved = rd_i32(r);
    s->sampling.temperature = rd_f32(r);
    s->sampling.top_k = rd_i32(r);
    s->sampling.top_p = rd_f32(r);
    s->sampling.min_p = rd_f32(r);
    s->sampling.repetition_penalty = rd_f32(r);
    s->sampling.presence_penalty = rd_f32(r);
    s->sampling.frequency_penalty = rd_f32(r);
    s->sampling.seed = rd_u64(r);
    const uint32_t n_prompt = rd_u32(r), n_stop = rd_u32(r), n_bias = rd_u32(r);
    if (r->bad) {
        return BAD(KC_EFORMAT, "pd: submit: truncated");
    }
    if (mode > SCH_MODE_PREDICT) {
        return BAD(KC_EFORMAT, "pd: submit: unknown prefill mode %u", mode);
    }
    s->mode = (enum sch_prefill_mode)mode;
    int rc = dec_dtype(dtype, &s->wire_dtype, err);
    if (rc != KC_OK) {
        return rc;
    }
    if ((flags & ~1u) != 0 || reserved != 0) {
        return BAD(KC_EFORMAT, "pd: submit: reserved bits set");
    }
    s->ignore_eos = flags & 1u;
    s->n_logprobs = n_logprobs;
    if (n_logprobs < -1 || n_logprobs > SCH_MAX_LOGPROBS) {
        return BAD(KC_ERANGE, "pd: submit: n_logprobs %d outside [-1, %d]", n_logprobs,
                   SCH_MAX_LOGPROBS);
    }
    if (n_prompt < 1 || n_prompt >= (uint32_t)local->max_context) {
        return BAD(KC_ERANGE, "pd: submit: prompt of %u tokens outside [1, %d)", n_prompt,
                   local->max_context);
    }
    if (s->max_tokens < 1 || s->max_tokens > local->max_context - (int)n_prompt) {
        return BAD(KC_ERANGE,
                   "pd: submit: max_tokens %d with a %u-token prompt exceeds the "
                   "context (%d)",
                   s->max_tokens, n_prompt, local->max_context);
    }
    if (s->min_tokens < 0 || s->min_tokens > s->max_tokens) {
        return BAD(KC_ERANGE, "pd: submit: min_tokens %d outside [0, max_tokens]", s->min_tokens);
    }
    if (n_stop > SCH_MAX_STOP_TOKEN_IDS || n_bias > SCH_MAX_LOGIT_BIAS) {
        return BAD(KC_ERANGE, "pd: submit: %u stop ids / %u logit biases exceed %d / %d", n_stop,
                   n_bias, SCH_MAX_STOP_TOKEN_IDS, SCH_MAX_LOGIT_BIAS);
    }
    rc = eng_sampler_params_validate(&s->sampling, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "pd: submit");
        return rc;
    }
    /* Counts are bounded: the arrays are at most (2^22 + 64 + 2 * 1024) * 4 bytes. */
    const size_t need = 4 * ((size_t)n_prompt + n_stop) + 8 * (size_t)n_bias;
    if (r->len - r->off != need) {
        return BAD(KC_EFORMAT, "pd: submit: %zu array bytes for %u + %u + %u entries (want %zu)",
                   r->len - r->off, n_prompt, n_stop, n_bias, need);
    }
    const size_t n_i32 = (size_t)n_prompt + n_stop;
    uint8_t *mem = malloc(n_i32 * sizeof(int32_t) + n_bias * sizeof(struct sch_logit_bias) + 1);
    if (mem == NULL) {
        return BAD(KC_ENOMEM, "pd: submit: out of memory");
    }
    m->owned = mem;
    s->prompt = (int32_t *)(void *)mem;
    s->stop_token_ids = n_stop ? s->prompt + n_prompt : NULL;
    s->logit_bias = n_bias ? (struct sch_logit_bias *)(void *)(s->prompt + n_i32) : NULL;
    s->n_prompt = (int)n_prompt;
    s->n_stop_token_ids = (int)n_stop;
    s->n_logit_bias = (int)n_bias;
    for (uint32_t i = 0; i < n_prompt; i++) {
        s->prompt[i] = rd_i32(r);
        if ((rc = check_token(s->prompt[i], local, "prompt", (int)i, err)) != KC_OK) {
            return rc;
        }
    }
    for (uint32_t i = 0; i < n_stop; i++) {
        s->stop_token_ids[i] = rd_i32(r);
        if ((rc = check_token(s->stop_token_ids[i], local, "stop_token_ids", (int)i, err)) !=
            KC_OK) {
            return rc;
        }
    }
    for (uint32_t i = 0; i < n_bias; i++) {
        s->logit_bias[i].id = rd_i32(r);
        s->logit_bias[i].bias = rd_f32(r);
        if ((rc = check_token(s->logit_bias[i].id, local, "logit_bias", (int)i, err)) != KC_OK) {
            return rc;
        }
        const float b = s->logit_bias[i].bias;
        if (!(b >= -100.0f && b <= 100.0f)) {
            return BAD(KC_ERANGE, "pd: submit: logit_bias[%u] = %g outside [-100, 100]", i,
                       (double)b);
        }
    }
    return KC_OK;
}

static bool finite_ms(float v) {
    return isfinite(v) && v >= 0.0f;
}

static int dec_first(struct rd *r, const struct sch_pd_shape *local, struct sch_pd_first *f,
                     struct kc_error *err) {
    rd_load(r, &f->load);
    f->token = rd_i32(r);
    const uint32_t finish = rd_u32(r), mode = rd_u32(r), has_lp = rd_u32(r);
    f->logprob = rd_f32(r);
    const uint32_t n_top = rd_u32(r);
    for (int i = 0; i < SCH_MAX_LOGPROBS; i++) {
        f->top_ids[i] = rd_i32(r);
        f->top_logprobs[i] = rd_f32(r);
    }
    f->n_prompt = rd_i32(r);
    f->cached_tokens = rd_i32(r);
    f->aux_ms = rd_f32(r);
    f->predict_ms = rd_f32(r);
    f->base_first_step_ms = rd_f32(r);
    f->prefill_ms = rd_f32(r);
    f->rng[0] = rd_u64(r);
    f->rng[1] = rd_u64(r);
    const uint32_t dtype = rd_u32(r);
    f->kv_shape.n_layers = rd_i32(r);
    f->kv_shape.n_kv_heads = rd_i32(r);
    f->kv_shape.head_dim = rd_i32(r);
    f->n_kv_tokens = rd_i32(r);
    f->n_chunks = rd_u32(r);
    f->kv_bytes = rd_u64(r);
    if (r->bad || r->off != r->len) {
        return BAD(KC_EFORMAT, "pd: first: payload of %zu bytes, want %d", r->len,
                   (int)FIRST_FIXED);
    }
    int rc = check_load(&f->load, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (finish > SCH_FINISH_ABORT || mode < SCH_MODE_FULL || mode > SCH_MODE_PREDICT ||
        has_lp > 1) {
        return BAD(KC_EFORMAT, "pd: first: finish %u / mode %u / has_logprob %u invalid", finish,
                   mode, has_lp);
    }
    f->finish = (enum sch_finish)finish;
    f->mode_used = (enum sch_prefill_mode)mode;
    f->has_logprob = has_lp;
    if ((rc = dec_dtype(dtype, &f->wire_dtype, err)) != KC_OK) {
        return rc;
    }
    if ((rc = check_token(f->token, local, "first.token", 0, err)) != KC_OK) {
        return rc;
    }
    if (n_top > SCH_MAX_LOGPROBS) {
        return BAD(KC_ERANGE, "pd: first: n_top %u > %d", n_top, SCH_MAX_LOGPROBS);
    }
    f->n_top = (int)n_top;
    for (int i = 0; i < SCH_MAX_LOGPROBS; i++) {
        if (i >= f->n_top) {
            if (f->top_ids[i] != 0 || f->top_logprobs[i] != 0.0f || signbit(f->top_logprobs[i])) {
                return BAD(KC_EFORMAT, "pd: first: unused top[%d] not zero", i);
            }
            continue;
        }
        if ((rc = check_token(f->top_ids[i], local, "first.top", i, err)) != KC_OK) {
            return rc;
        }
        if (!(f->top_logprobs[i] <= 0.0f)) {
            return BAD(KC_ERANGE, "pd: first: top_logprobs[%d] not a logprob", i);
        }
    }
    /* Unused fields are +0 exactly, so that a frame has one encoding (invariant 4). */
    if (f->has_logprob ? !(f->logprob <= 0.0f) : (f->logprob != 0.0f || signbit(f->logprob))) {
        return BAD(KC_ERANGE, "pd: first: logprob %g invalid", (double)f->logprob);
    }
    if (f->n_prompt < 1 || f->n_prompt >= local->max_context || f->cached_tokens < 0 ||
        f->cached_tokens > f->n_prompt) {
        return BAD(KC_ERANGE, "pd: first: n_prompt %d / cached_tokens %d out of range", f->n_prompt,
                   f->cached_tokens);
    }
    if (!finite_ms(f->aux_ms) || !finite_ms(f->predict_ms) || !finite_ms(f->base_first_step_ms) ||
        !finite_ms(f->prefill_ms)) {
        return BAD(KC_ERANGE, "pd: first: a timing is negative or not finite");
    }
    const struct sch_pd_shape *s = &f->kv_shape;
    if (s->n_layers != local->n_layers || s->n_kv_heads != local->n_kv_heads ||
        s->head_dim != local->head_dim) {
        return BAD(KC_EUNSUPPORTED,
                   "pd: first: K/V of layers=%d kv_heads=%d head_dim=%d, local model has "
                   "layers=%d kv_heads=%d head_dim=%d",
                   s->n_layers, s->n_kv_heads, s->head_dim, local->n_layers, local->n_kv_heads,
                   local->head_dim);
    }
    f->kv_shape.vocab_size = f->kv_shape.max_context = 0;
    if (f->n_kv_tokens < 0 || f->n_kv_tokens > f->n_prompt) {
        return BAD(KC_ERANGE, "pd: first: %d K/V positions for a %d-token prompt", f->n_kv_tokens,
                   f->n_prompt);
    }
    const uint64_t want = sch_pd_kv_bytes(local, local->n_layers, f->n_kv_tokens, f->wire_dtype);
    if (f->kv_bytes != want) {
        return BAD(KC_EFORMAT, "pd: first: kv_bytes %llu, the shape needs %llu",
                   (unsigned long long)f->kv_bytes, (unsigned long long)want);
    }
    /* Every chunk carries at least one layer-position row; at most one chunk per row. */
    const uint64_t rows = (uint64_t)local->n_layers * (uint64_t)f->n_kv_tokens;
    if ((want == 0) != (f->n_chunks == 0) || f->n_chunks > rows) {
        return BAD(KC_ERANGE, "pd: first: %u chunks for %llu bytes", f->n_chunks,
                   (unsigned long long)want);
    }
    return KC_OK;
}

static int dec_kv(struct rd *r, const struct sch_pd_shape *local, struct sch_pd_kv *k,
                  struct kc_error *err) {
    const uint32_t lf = rd_u32(r), nl = rd_u32(r), tf = rd_u32(r), nt = rd_u32(r);
    const uint32_t dtype = rd_u32(r);
    if (r->bad) {
        return BAD(KC_EFORMAT, "pd: kv: truncated");
    }
    int rc = dec_dtype(dtype, &k->dtype, err);
    if (rc != KC_OK) {
        return rc;
    }
    const uint32_t L = (uint32_t)local->n_layers, ctx = (uint32_t)local->max_context;
    if (nl < 1 || lf >= L || nl > L - lf || nt < 1 || tf >= ctx || nt > ctx - tf) {
        return BAD(KC_ERANGE, "pd: kv: layers [%u, +%u) / positions [%u, +%u) outside %u x %u", lf,
                   nl, tf, nt, L, ctx);
    }
    const uint64_t want = sch_pd_kv_bytes(local, (int)nl, (int)nt, k->dtype);
    if (want > SCH_PD_MAX_KV_CHUNK_BYTES || r->len - r->off != want) {
        return BAD(KC_EFORMAT, "pd: kv: %zu data bytes, the chunk needs %llu (max %zu)",
                   r->len - r->off, (unsigned long long)want, SCH_PD_MAX_KV_CHUNK_BYTES);
    }
    k->layer_first = (int)lf;
    k->n_layers = (int)nl;
    k->tok_first = (int)tf;
    k->n_tok = (int)nt;
    k->data = r->p + r->off;
    k->data_bytes = (size_t)want;
    r->off = r->len;
    return KC_OK;
}

static int dec_error(struct rd *r, struct sch_pd_error *e, struct kc_error *err) {
    rd_load(r, &e->load);
    e->code = rd_i32(r);
    const uint16_t retry = rd_u16(r), n = rd_u16(r);
    if (r->bad) {
        return BAD(KC_EFORMAT, "pd: error: truncated");
    }
    int rc = check_load(&e->load, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (e->code < KC_EBACKEND || e->code > KC_EINVAL || retry > 1) {
        return BAD(KC_ERANGE, "pd: error: code %d / retryable %u invalid", e->code, retry);
    }
    e->retryable = retry;
    if (n > SCH_PD_MAX_ERROR_TEXT || r->len - r->off != n) {
        return BAD(KC_EFORMAT, "pd: error: text of %u bytes with %zu present", n, r->len - r->off);
    }
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t c = r->p[r->off + i];
        /* Printable ASCII only: the text lands in logs and JSON error bodies. */
        if (c < 0x20 || c > 0x7e) {
            return BAD(KC_EFORMAT, "pd: error: byte 0x%02x in its text", c);
        }
        e->text[i] = (char)c;
    }
    e->text[n] = '\0';
    r->off = r->len;
    return KC_OK;
}

int sch_pd_msg_decode(const uint8_t *buf, size_t len, const struct sch_pd_shape *local,
                      struct sch_pd_msg *out, struct kc_error *err) {
    memset(out, 0, sizeof(*out));
    struct sch_pd_header h;
    int rc = sch_pd_header_decode(buf, len, local, &h, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (len - SCH_PD_HEADER_BYTES != h.payload_len) {
        return BAD(KC_EFORMAT, "pd: %s: frame of %zu bytes, header says %u + %d",
                   sch_pd_type_name(h.type), len, h.payload_len, SCH_PD_HEADER_BYTES);
    }
    struct rd r = {buf + SCH_PD_HEADER_BYTES, h.payload_len, 0, false};
    out->type = (enum sch_pd_type)h.type;
    out->req_id = h.req_id;
    switch (out->type) {
    case SCH_PD_HELLO:
        rc = dec_hello(&r, local, &out->u.hello, err);
        break;
    case SCH_PD_SUBMIT:
        rc = dec_submit(&r, local, out, err);
        break;
    case SCH_PD_FIRST:
        rc = dec_first(&r, local, &out->u.first, err);
        break;
    case SCH_PD_KV:
        rc = dec_kv(&r, local, &out->u.kv, err);
        break;
    case SCH_PD_CANCEL: {
        const uint32_t f = rd_u32(&r);
        if (f > SCH_FINISH_ABORT) {
            rc = BAD(KC_EFORMAT, "pd: cancel: finish %u invalid", f);
        }
        out->u.cancel.finish = (enum sch_finish)f;
        break;
    }
    case SCH_PD_LOAD:
        rd_load(&r, &out->u.load);
        rc = check_load(&out->u.load, err);
        break;
    case SCH_PD_ERROR:
        rc = dec_error(&r, &out->u.error, err);
        break;
    }
    if (rc == KC_OK && (r.bad || r.off != r.len)) {
        rc = BAD(KC_EFORMAT, "pd: %s: payload of %u bytes, %zu consumed", sch_pd_type_name(h.type),
                 h.payload_len, r.off);
    }
    if (rc != KC_OK) {
        sch_pd_msg_free(out);
    }
    return rc;
}

void sch_pd_msg_free(struct sch_pd_msg *m) {
    if (m != NULL) {
        free(m->owned);
        memset(m, 0, sizeof(*m));
    }
}

/* ---- encoder ---- */

static void wr_load(struct sch_pd_buf *b, const struct sch_pd_load *l) {
    wr_n(b, l->queued, 4);
    wr_n(b, l->in_flight, 4);
    wr_n(b, l->free_blocks, 4);
    wr_n(b, l->total_blocks, 4);
}

static size_t payload_len_of(const struct sch_pd_msg *m) {
    switch (m->type) {
    case SCH_PD_HELLO:
        return HELLO_BYTES;
    case SCH_PD_SUBMIT: {
        const struct sch_pd_submit *s = &m->u.submit;
        return SUBMIT_FIXED + 4 * ((size_t)s->n_prompt + (size_t)s->n_stop_token_ids) +
               8 * (size_t)s->n_logit_bias;
    }
    case SCH_PD_FIRST:
        return FIRST_FIXED;
    case SCH_PD_KV:
        return KV_FIXED + m->u.kv.data_bytes;
    case SCH_PD_CANCEL:
        return CANCEL_BYTES;
    case SCH_PD_LOAD:
        return LOAD_BYTES;
    case SCH_PD_ERROR:
        return ERROR_FIXED + strnlen(m->u.error.text, SCH_PD_MAX_ERROR_TEXT + 1);
    }
    return 0;
}

int sch_pd_msg_encode(const struct sch_pd_msg *m, struct sch_pd_buf *out) {
    if (m->type < SCH_PD_HELLO || m->type > SCH_PD_TYPE_MAX) {
        return KC_EINVAL;
    }
    if (m->type == SCH_PD_SUBMIT &&
        (m->u.submit.n_prompt < 1 || m->u.submit.n_stop_token_ids < 0 ||
         m->u.submit.n_stop_token_ids > SCH_MAX_STOP_TOKEN_IDS || m->u.submit.n_logit_bias < 0 ||
         m->u.submit.n_logit_bias > SCH_MAX_LOGIT_BIAS)) {
        return KC_EINVAL;
    }
    if (m->type == SCH_PD_FIRST && (m->u.first.n_top < 0 || m->u.first.n_top > SCH_MAX_LOGPROBS)) {
        return KC_EINVAL;
    }
    if (m->type == SCH_PD_ERROR &&
        strnlen(m->u.error.text, SCH_PD_MAX_ERROR_TEXT + 1) > SCH_PD_MAX_ERROR_TEXT) {
        return KC_EINVAL;
    }
    const size_t plen = payload_len_of(m);
    if (plen > UINT32_MAX) {
        return KC_EINVAL;
    }
    const bool kv_data = m->type == SCH_PD_KV && m->u.kv.data != NULL;
    const size_t body = m->type == SCH_PD_KV && !kv_data ? KV_FIXED : plen;
    if (buf_reserve(out, SCH_PD_HEADER_BYTES + body) != KC_OK) {
        return KC_ENOMEM;
    }
    struct sch_pd_buf *b = out;
    wr_n(b, SCH_PD_MAGIC, 4);
    wr_n(b, SCH_PD_VERSION, 2);
    wr_n(b, (uint64_t)m->type, 2);
    wr_n(b, plen, 4);
    wr_n(b, 0, 4);
    wr_n(b, m->req_id, 8);
    switch (m->type) {
    case SCH_PD_HELLO: {
        const struct sch_pd_hello *h = &m->u.hello;
        wr_n(b, (uint64_t)h->role, 4);
        wr_i32(b, h->shape.n_layers);
        wr_i32(b, h->shape.n_kv_heads);
        wr_i32(b, h->shape.head_dim);
        wr_i32(b, h->shape.vocab_size);
        wr_i32(b, h->shape.max_context);
        break;
    }
    case SCH_PD_SUBMIT: {
        const struct sch_pd_submit *s = &m->u.submit;
        wr_n(b, (uint64_t)s->mode, 1);
        wr_n(b, (uint64_t)s->wire_dtype, 1);
        wr_n(b, s->ignore_eos ? 1 : 0, 1);
        wr_n(b, (uint8_t)(int8_t)s->n_logprobs, 1);
        wr_i32(b, s->max_tokens);
        wr_i32(b, s->min_tokens);
        wr_i32(b, 0);
        wr_f32(b, s->sampling.temperature);
        wr_i32(b, s->sampling.top_k);
        wr_f32(b, s->sampling.top_p);
        wr_f32(b, s->sampling.min_p);
        wr_f32(b, s->sampling.repetition_penalty);
        wr_f32(b, s->sampling.presence_penalty);
        wr_f32(b, s->sampling.frequency_penalty);
        wr_n(b, s->sampling.seed, 8);
        wr_n(b, (uint32_t)s->n_prompt, 4);
        wr_n(b, (uint32_t)s->n_stop_token_ids, 4);
        wr_n(b, (uint32_t)s->n_logit_bias, 4);
        for (int i = 0; i < s->n_prompt; i++) {
            wr_i32(b, s->prompt[i]);
        }
        for (int i = 0; i < s->n_stop_token_ids; i++) {
            wr_i32(b, s->stop_token_ids[i]);
        }
        for (int i = 0; i < s->n_logit_bias; i++) {
            wr_i32(b, s->logit_bias[i].id);
            wr_f32(b, s->logit_bias[i].bias);
        }
        break;
    }
    case SCH_PD_FIRST: {
        const struct sch_pd_first *f = &m->u.first;
        wr_load(b, &f->load);
        wr_i32(b, f->token);
        wr_n(b, (uint64_t)f->finish, 4);
        wr_n(b, (uint64_t)f->mode_used, 4);
        wr_n(b, f->has_logprob ? 1 : 0, 4);
        wr_f32(b, f->has_logprob ? f->logprob : 0.0f);
        wr_n(b, (uint32_t)f->n_top, 4);
        for (int i = 0; i < SCH_MAX_LOGPROBS; i++) {
            wr_i32(b, i < f->n_top ? f->top_ids[i] : 0);
            wr_f32(b, i < f->n_top ? f->top_logprobs[i] : 0.0f);
        }
        wr_i32(b, f->n_prompt);
        wr_i32(b, f->cached_tokens);
        wr_f32(b, f->aux_ms);
        wr_f32(b, f->predict_ms);
        wr_f32(b, f->base_first_step_ms);
        wr_f32(b, f->prefill_ms);
        wr_n(b, f->rng[0], 8);
        wr_n(b, f->rng[1], 8);
        wr_n(b, (uint64_t)f->wire_dtype, 4);
        wr_i32(b, f->kv_shape.n_layers);
        wr_i32(b, f->kv_shape.n_kv_heads);
        wr_i32(b, f->kv_shape.head_dim);
        wr_i32(b, f->n_kv_tokens);
        wr_n(b, f->n_chunks, 4);
        wr_n(b, f->kv_bytes, 8);
        break;
    }
    case SCH_PD_KV: {
        const struct sch_pd_kv *k = &m->u.kv;
        wr_n(b, (uint32_t)k->layer_first, 4);
        wr_n(b, (uint32_t)k->n_layers, 4);
        wr_n(b, (uint32_t)k->tok_first, 4);
        wr_n(b, (uint32_t)k->n_tok, 4);
        wr_n(b, (uint64_t)k->dtype, 4);
        if (kv_data) {
            memcpy(b->p + b->len, k->data, k->data_bytes);
            b->len += k->data_bytes;
        }
        break;
    }
    case SCH_PD_CANCEL:
        wr_n(b, (uint64_t)m->u.cancel.finish, 4);
        break;
    case SCH_PD_LOAD:
        wr_load(b, &m->u.load);
        break;
    case SCH_PD_ERROR: {
        const struct sch_pd_error *e = &m->u.error;
        const size_t n = strlen(e->text);
        wr_load(b, &e->load);
        wr_i32(b, e->code);
        wr_n(b, e->retryable ? 1 : 0, 2);
        wr_n(b, n, 2);
        memcpy(b->p + b->len, e->text, n);
        b->len += n;
        break;
    }
    }
    return KC_OK;
}
