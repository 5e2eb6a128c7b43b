/* sampler.c — penalties, temperature, top-k/top-p/min-p, seeded sampling and raw logprobs
 * (contracts and the totality rule in sampler.h). */
#include "engine/sampler.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct eng_sampler_params eng_sampler_default_params(void) {
    struct eng_sampler_params p = {
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repetition_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .seed = 0,
    };
    return p;
}

int eng_sampler_params_validate(const struct eng_sampler_params *p, struct kc_error *err) {
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f)) {
        return kc_error_set(err, KC_ERANGE, "temperature must be in [0, 100]");
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        return kc_error_set(err, KC_ERANGE, "top_p must be in (0, 1]");
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        return kc_error_set(err, KC_ERANGE, "min_p must be in [0, 1]");
    }
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f)) {
        return kc_error_set(err, KC_ERANGE, "repetition_penalty must be in (0, 10]");
    }
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) {
        return kc_error_set(err, KC_ERANGE, "presence_penalty must be in [-2, 2]");
    }
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f)) {
        return kc_error_set(err, KC_ERANGE, "frequency_penalty must be in [-2, 2]");
    }
    if (p->top_k < 0) {
        return kc_error_set(err, KC_ERANGE, "top_k must be >= 0");
    }
    return KC_OK;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t eng_sampler_stream_seed(uint64_t seed, uint64_t index) {
    uint64_t a = seed;
    uint64_t b = splitmix64(&a) ^ (index * 0xd1b54a32d192ed03ull);
    return splitmix64(&b);
}

/* xoroshiro128+ : small state, good enough statistical quality for sampling. */
static uint64_t rng_next(uint64_t s[2]) {
    const uint64_t s0 = s[0];
    uint64_t s1 = s[1];
    const uint64_t result = s0 + s1;
    s1 ^= s0;
    s[0] = ((s0 << 24) | (s0 >> 40)) ^ s1 ^ (s1 << 16);
    s[1] = (s1 << 37) | (s1 >> 27);
    return result;
}

static double rng_uniform(uint64_t s[2]) {
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

int eng_sampler_init(struct eng_sampler *s, const struct eng_sampler_params *p, int vocab_size,
                     struct kc_error *err) {
    int rc = eng_sampler_params_validate(p, err);
    if (rc != KC_OK) {
        return rc;
    }
    if (vocab_size < 1) {
        return kc_error_set(err, KC_EINVAL, "sampler: vocab_size %d", vocab_size);
    }
    struct eng_sampler t = {.params = *p, .vocab_size = vocab_size};
    uint64_t seed = p->seed;
    t.rng[0] = splitmix64(&seed);
    t.rng[1] = splitmix64(&seed);
    t.probs = kc_calloc((size_t)vocab_size, sizeof(float));
    t.cand = kc_calloc((size_t)vocab_size, sizeof(struct eng_cand));
    t.count = kc_calloc((size_t)vocab_size, sizeof(uint32_t));
    if (t.probs == NULL || t.cand == NULL || t.count == NULL) {
        eng_sampler_free(&t);
        return kc_error_set(err, KC_ENOMEM, "sampler: out of memory");
    }
    *s = t;
    return KC_OK;
}

void eng_sampler_free(struct eng_sampler *s) {
    free(s->probs);
    free(s->cand);
    free(s->count);
    memset(s, 0, sizeof(*s));
}

void eng_sampler_observe(struct eng_sampler *s, int32_t token) {
    if (token >= 0 && token < s->vocab_size && s->count[token] < UINT32_MAX) {
        s->count[token]++;
    }
}

float eng_log_softmax_at(const float *logits, int vocab_size, int32_t token) {
    float mx = -INFINITY;
    for (int i = 0; i < vocab_size; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    double sum = 0.0;
    for (int i = 0; i < vocab_size; i++) {
        sum += exp((double)(logits[i] - mx));
    }
    return (float)((double)(logits[token] - mx) - log(sum));
}

static int bad_logit(struct kc_error *err, float x, int i) {
    return kc_error_set(err, KC_EBACKEND, "the model produced a non-finite logit (%s) for token %d",
                        isnan(x) ? "NaN" : "+Inf", i);
}

int eng_logits_check(const float *logits, int vocab_size, struct kc_error *err) {
    bool any = false;
    for (int i = 0; i < vocab_size; i++) {
        const float x = logits[i];
        if (isnan(x) || x == INFINITY) {
            return bad_logit(err, x, i);
        }
        any |= x > -INFINITY;
    }
    return any ? KC_OK
               : kc_error_set(err, KC_EBACKEND, "every one of the %d logits is -Inf", vocab_size);
}

static bool has_penalties(const struct eng_sampler_params *p) {
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

/*
 * Logit x of a token seen n times, penalized: HF repetition penalty, then OpenAI presence and
 * frequency penalties. Computed in double and saturated at +-FLT_MAX: a repetition penalty of
 * 1e-40 would otherwise turn 0.5 into +Inf, and the softmax then computes Inf - Inf = NaN.
 * -Inf (a banned token) stays -Inf.
 */
static float penalize(const struct eng_sampler_params *p, float x, uint32_t n) {
    if (n == 0 || x == -INFINITY) {
        return x;
    }
    double y = x;
    if (p->repetition_penalty != 1.0f) {
        y = y > 0.0 ? y / (double)p->repetition_penalty : y * (double)p->repetition_penalty;
    }
    y -= (double)p->presence_penalty + (double)p->frequency_penalty * (double)n;
    if (y > (double)FLT_MAX) {
        y = (double)FLT_MAX;
    } else if (y < -(double)FLT_MAX) {
        y = -(double)FLT_MAX;
    }
    return (float)y;
}

/* Candidate order: higher probability first, ties broken by the lower id (deterministic). */
static bool cand_before(const struct eng_cand *x, const struct eng_cand *y) {
    return x->p > y->p || (x->p == y->p && x->id < y->id);
}

static void sift_down(struct eng_cand *h, int n, int i) {
    for (;;) {
        int best = i;
        const int l = 2 * i + 1, r = l + 1;
        if (l < n && cand_before(&h[l], &h[best])) {
            best = l;
        }
        if (r < n && cand_before(&h[r], &h[best])) {
            best = r;
        }
        if (best == i) {
            return;
        }
        const struct eng_cand t = h[i];
        h[i] = h[best];
        h[best] = t;
        i = best;
    }
}

/*
 * Partial heap sort in place (no allocation, unlike qsort): extracts candidates best-first
 * until `want` are taken or their mass reaches mass_stop. The taken ones end up, best
 * first, in c[n - k .. n - 1] after a final reversal; returns k (>= 1 when n, want >= 1).
 * Cost O(n + k log n), so top-p over a 128k vocabulary touches only the head of the
 * distribution.
 */
static int take_best(struct eng_cand *c, int n, int want, double mass_stop) {
    for (int i = n / 2 - 1; i >= 0; i--) {
        sift_down(c, n, i);
    }
    int k = 0;
    double mass = 0.0;
    while (k < want && k < n) {
        const int last = n - 1 - k;
        const struct eng_cand top = c[0];
        c[0] = c[last];
        c[last] = top;
        sift_down(c, last, 0);
        k++;
        mass += top.p;
        if (mass >= mass_stop) {
            break;
        }
    }
    for (int i = 0; i < k / 2; i++) {
        const struct eng_cand t = c[n - k + i];
        c[n - k + i] = c[n - 1 - i];
        c[n - 1 - i] = t;
    }
    return k;
}

int eng_sampler_sample(struct eng_sampler *s, const float *logits, int32_t *token, float *logprob,
                       struct kc_error *err) {
    const struct eng_sampler_params *p = &s->params;
    const int V = s->vocab_size;
    const bool pen = has_penalties(p);
    /* Pass 1: check the row, penalize into scratch, find the best. Every later value is
     * derived from finite numbers or -Inf, so no NaN can appear below. */
    float *z = s->probs;
    int32_t best = -1;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        float x = logits[i];
        if (isnan(x) || x == INFINITY) {
            return bad_logit(err, x, i);
        }
        if (pen) {
            x = penalize(p, x, s->count[i]);
        }
        z[i] = x;
        if (x > mx) {
            mx = x;
            best = i;
        }
    }
    if (best < 0) {
        return kc_error_set(err, KC_EBACKEND, "every one of the %d logits is -Inf", V);
    }
    if (p->temperature == 0.0f) {
        if (logprob != NULL) {
            *logprob = eng_log_softmax_at(z, V, best);
        }
        *token = best;
        return KC_OK;
    }
    /* Pass 2: tempered exp relative to the best, whose weight is exactly 1. d <= 0 (or -Inf)
     * and the temperature is > 0, so d / T is never NaN, even for a subnormal T. */
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        const float d = z[i] - mx;
        const float e = d == 0.0f ? 1.0f : expf(d / p->temperature);
        z[i] = e;
        sum += e;
    }
    /* Candidates: tokens of non-zero weight clearing min_p * p_max (p_max's weight is 1). The
     * best always qualifies (min_p <= 1), so n >= 1. */
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (z[i] > 0.0f && z[i] >= p->min_p) {
            s->cand[n].p = z[i];
            s->cand[n++].id = i;
        }
    }
    struct eng_cand *cand = s->cand;
    if (p->top_k > 0 || p->top_p < 1.0f) {
        const int want = p->top_k > 0 && p->top_k < n ? p->top_k : n;
        const double stop = p->top_p < 1.0f ? (double)p->top_p * sum : INFINITY;
        const int k = take_best(s->cand, n, want, stop);
        cand = s->cand + (n - k);
        n = k;
    }
    KC_ASSERT(n >= 1);
    double mass = 0.0;
    for (int i = 0; i < n; i++) {
        mass += cand[i].p;
    }
    /* r in [0, mass): the first candidate whose cumulative weight passes r; rounding can leave
     * r >= the total, which falls back to the last candidate (weight > 0 too). */
    double r = rng_uniform(s->rng) * mass;
    struct eng_cand pick = cand[n - 1];
    for (int i = 0; i < n; i++) {
        if (r < (double)cand[i].p) {
            pick = cand[i];
            break;
        }
        r -= cand[i].p;
    }
    if (logprob != NULL) {
        *logprob = (float)log((double)pick.p / mass);
    }
    *token = pick.id;
    return KC_OK;
}

void eng_logprobs_top(const float *logits, int vocab_size, int32_t token, int n_top,
                      struct eng_logprobs *out) {
    const int V = vocab_size;
    n_top = n_top < 0 ? 0 : n_top > ENG_MAX_LOGPROBS ? ENG_MAX_LOGPROBS : n_top;
    /* One pass: the maximum, and the top n by insertion into a sorted list (the lower id
     * stays first on ties: a later equal value does not pass it). */
    float mx = -INFINITY;
    int n = 0;
    for (int i = 0; i < V; i++) {
        const float x = logits[i];
        mx = x > mx ? x : mx;
        if (n_top == 0 || (n == n_top && !(x > logits[out->top_ids[n - 1]]))) {
            continue;
        }
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && logits[out->top_ids[j - 1]] < x) {
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_ids[j] = i;
    }
    /* (x - max) - log(sum), never x - (max + log(sum)): near FLT_MAX the max would absorb
     * log(sum) and two tied top tokens would each get logprob 0 (found by fuzz_sampler). */
    double log_sum = 0.0;
    if (mx > -INFINITY) {
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            sum += exp((double)logits[i] - (double)mx);
        }
        log_sum = log(sum);
    }
    out->n_top = n;
    for (int j = 0; j < n; j++) {
        out->top_logprobs[j] = (float)(((double)logits[out->top_ids[j]] - (double)mx) - log_sum);
    }
    out->logprob = token >= 0 && token < V ? (float)(((double)logits[token] - (double)mx) - log_sum)
                                           : -INFINITY;
}
