/*
 * fuzz_sampler.c — libFuzzer target for the sampler (engine/sampler.h; issue 15 items 1, 21):
 * arbitrary logits, NaN, +-Inf, subnormals and +-FLT_MAX included, every sampling parameter
 * (temperature, top_k, top_p, min_p, the three penalties, seed), a token history, several
 * steps, and eng_logprobs_top with any count.
 *
 * Input: a header of 24 bytes (vocabulary size, one selector per parameter, seed, logprobs
 * count, history length, logits encoding, steps), then the history ids, then the logits. A
 * parameter selector below 224 maps into the parameter's valid range (its end points and a
 * subnormal included); above, it reads a raw float (NaN, Inf, anything) that init must refuse
 * exactly when eng_sampler_params_validate does.
 *
 * Properties checked (abort on violation): init agrees with validate; sample succeeds exactly
 * when eng_logits_check accepts the row, and then gives a token in [0, V) that is not -Inf,
 * a finite logprob <= 0, the argmax for a greedy sampler without penalties, and leaves the
 * logits bit-for-bit untouched; a failed sample leaves the token untouched; eng_logprobs_top
 * gives n_top = min(count, 20) distinct ids in range, best first (ties: lower id), and on an
 * accepted row logprobs <= 0 that match eng_log_softmax_at.
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_V 512

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_sampler: %s:%d: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct reader {
    const uint8_t *p;
    size_t n;
};

static uint8_t rd_u8(struct reader *r) {
    if (r->n == 0) {
        return 0;
    }
    r->n--;
    return *r->p++;
}

static uint32_t rd_u32(struct reader *r) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        x |= (uint32_t)rd_u8(r) << (8 * i);
    }
    return x;
}

static float bits_float(uint32_t x) {
    float f;
    memcpy(&f, &x, sizeof(f));
    return f;
}

/* A parameter in [lo, hi] from a selector byte: 0 -> lo, 1 -> the smallest subnormal above lo
 * (for open bounds), 2..221 evenly spaced, 222 -> hi, 223 -> 1; 224+ -> a raw float. */
static float param(struct reader *r, float lo, float hi) {
    const uint8_t sel = rd_u8(r);
    if (sel >= 224) {
        return bits_float(rd_u32(r));
    }
    if (sel == 0) {
        return lo;
    }
    if (sel == 1) {
        return nextafterf(lo, hi);
    }
    if (sel == 222) {
        return hi;
    }
    if (sel == 223) {
        return 1.0f;
    }
    return lo + (hi - lo) * (float)(sel - 2) / 219.0f;
}

static const float specials[16] = {0.0f,   -0.0f,   1.0f,     -1.0f,  INFINITY, -INFINITY,
                                   NAN,    FLT_MAX, -FLT_MAX, 1e-45f, -1e-45f,  1e30f,
                                   -1e30f, 88.7f,   -103.9f,  FLT_MIN};

/* One logit; enc picks the encoding of the whole row. */
static float logit(struct reader *r, uint8_t enc) {
    switch (enc % 4) {
    case 0: /* raw bits: NaN and Inf land often */
        return bits_float(rd_u32(r));
    case 1: /* small quantized values: ties everywhere */
        return ((float)rd_u8(r) - 128.0f) * 0.25f;
    case 2: { /* mostly finite, some specials */
        const uint8_t b = rd_u8(r);
        return b >= 240 ? specials[b & 15] : ((float)b - 120.0f) * 0.1f;
    }
    default: { /* finite only, wide range */
        const int8_t e = (int8_t)rd_u8(r);
        return ldexpf((float)((int)rd_u8(r) - 128), e % 120);
    }
    }
}

static void check_top(const float *logits, int V, int32_t tok, int count, bool accepted) {
    struct eng_logprobs lp;
    memset(&lp, 0xa5, sizeof(lp));
    eng_logprobs_top(logits, V, tok, count, &lp);
    const int want = count < 0 ? 0 : count > ENG_MAX_LOGPROBS ? ENG_MAX_LOGPROBS : count;
    CHECK(lp.n_top == (want < V ? want : V));
    for (int j = 0; j < lp.n_top; j++) {
        CHECK(lp.top_ids[j] >= 0 && lp.top_ids[j] < V);
        for (int k = 0; k < j; k++) {
            CHECK(lp.top_ids[k] != lp.top_ids[j]);
        }
    }
    if (!accepted) {
        return; /* values unspecified, ids in range */
    }
    for (int j = 0; j < lp.n_top; j++) {
        CHECK(!isnan(lp.top_logprobs[j]) && lp.top_logprobs[j] <= 1e-5f);
        if (j > 0) {
            const float a = logits[lp.top_ids[j - 1]], b = logits[lp.top_ids[j]];
            CHECK(a > b || (a == b && lp.top_ids[j - 1] < lp.top_ids[j]));
        }
    }
    /* Nothing outside the list beats its last entry. */
    if (lp.n_top > 0 && lp.n_top < V) {
        const float last = logits[lp.top_ids[lp.n_top - 1]];
        for (int i = 0; i < V; i++) {
            bool in = false;
            for (int j = 0; j < lp.n_top; j++) {
                in |= lp.top_ids[j] == i;
            }
            CHECK(in || !(logits[i] > last));
        }
    }
    CHECK(!isnan(lp.logprob) && lp.logprob <= 1e-5f);
    const float ref = eng_log_softmax_at(logits, V, tok);
    if (isfinite(ref) && isfinite(lp.logprob)) {
        CHECK(fabsf(lp.logprob - ref) <= 1e-3f * (1.0f + fabsf(ref)));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct reader r = {data, size};
    const int V = 1 + (int)((rd_u8(&r) | (rd_u8(&r) << 8)) % MAX_V);
    struct eng_sampler_params p = eng_sampler_default_params();
    p.temperature = param(&r, 0.0f, 100.0f);
    p.top_p = param(&r, 0.0f, 1.0f);
    p.min_p = param(&r, 0.0f, 1.0f);
    p.repetition_penalty = param(&r, 0.0f, 10.0f);
    p.presence_penalty = param(&r, -2.0f, 2.0f);
    p.frequency_penalty = param(&r, -2.0f, 2.0f);
    p.top_k = (int)(int16_t)(rd_u8(&r) | (rd_u8(&r) << 8));
    p.seed = (uint64_t)rd_u32(&r) | (uint64_t)rd_u32(&r) << 32;
    const int n_logprobs = (int)rd_u8(&r) % 26 - 2;
    const int n_hist = rd_u8(&r);
    const uint8_t enc = rd_u8(&r);
    const int steps = 1 + rd_u8(&r) % 3;

    struct eng_sampler s;
    const int vrc = eng_sampler_params_validate(&p, NULL);
    const int rc = eng_sampler_init(&s, &p, V, NULL);
    CHECK(rc == vrc);
    if (rc != KC_OK) {
        CHECK(rc == KC_ERANGE);
        return 0;
    }
    for (int i = 0; i < n_hist; i++) {
        /* Ids outside [0, V) must be ignored, not counted out of bounds. */
        eng_sampler_observe(&s, (int32_t)(int8_t)rd_u8(&r) + (i % 3) * V / 2);
    }
    static float logits[MAX_V], copy[MAX_V];
    for (int i = 0; i < V; i++) {
        logits[i] = logit(&r, enc);
    }
    const bool plain =
        p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f;
    for (int step = 0; step < steps; step++) {
        memcpy(copy, logits, (size_t)V * sizeof(float));
        const bool ok = eng_logits_check(logits, V, NULL) == KC_OK;
        int32_t tok = -77;
        float lp = NAN;
        struct kc_error err = {0};
        const int src = eng_sampler_sample(&s, logits, &tok, &lp, &err);
        CHECK(memcmp(copy, logits, (size_t)V * sizeof(float)) == 0);
        CHECK((src == KC_OK) == ok);
        if (src != KC_OK) {
            CHECK(src == KC_EBACKEND && tok == -77 && err.msg[0] != '\0');
            check_top(logits, V, 0, n_logprobs, false);
            break;
        }
        CHECK(tok >= 0 && tok < V);
        CHECK(logits[tok] > -INFINITY);
        CHECK(isfinite(lp) && lp <= 1e-5f);
        if (p.temperature == 0.0f && plain) {
            for (int i = 0; i < V; i++) {
                CHECK(logits[i] < logits[tok] || (logits[i] == logits[tok] && i >= tok));
            }
        }
        check_top(logits, V, tok, n_logprobs, true);
        eng_sampler_observe(&s, tok);
        /* Next step: the same row shifted, so penalties of the new history apply. */
        for (int i = 0; i + 1 < V; i++) {
            logits[i] = logits[i + 1];
        }
    }
    eng_sampler_free(&s);
    return 0;
}
