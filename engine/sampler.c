/* sampler.c — penalties, temperature, top-k/top-p/min-p and seeded sampling. */
#include "engine/sampler.h"

#include <math.h>
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

static void apply_penalties(const struct eng_sampler *s, float *logits) {
    const struct eng_sampler_params *p = &s->params;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f) {
        return;
    }
    for (int i = 0; i < s->vocab_size; i++) {
        const uint32_t n = s->count[i];
        if (n == 0) {
            continue;
        }
        float x = logits[i];
        if (p->repetition_penalty != 1.0f) {
            x = x > 0.0f ? x / p->repetition_penalty : x * p->repetition_penalty;
        }
        x -= p->presence_penalty + p->frequency_penalty * (float)n;
        logits[i] = x;
    }
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
 * first, in c[n - k .. n - 1] after a final reversal; returns k. Cost O(n + k log n), so
 * top-p over a 128k vocabulary touches only the head of the distribution.
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

int32_t eng_sampler_sample(struct eng_sampler *s, float *logits, float *logprob) {
    const struct eng_sampler_params *p = &s->params;
    const int V = s->vocab_size;
    apply_penalties(s, logits);
    int32_t best = 0;
    for (int i = 1; i < V; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    if (p->temperature == 0.0f) {
        if (logprob != NULL) {
            *logprob = eng_log_softmax_at(logits, V, best);
        }
        return best;
    }
    /* Tempered softmax. */
    const float mx = logits[best];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        const float e = expf((logits[i] - mx) / p->temperature);
        s->probs[i] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < V; i++) {
        s->probs[i] *= inv;
    }
    /* Candidates: every token whose probability clears min_p * p_max. */
    const float floor_p = p->min_p * s->probs[best];
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (s->probs[i] >= floor_p) {
            s->cand[n].p = s->probs[i];
            s->cand[n++].id = i;
        }
    }
    struct eng_cand *cand = s->cand;
    if (p->top_k > 0 || p->top_p < 1.0f) {
        const int want = p->top_k > 0 ? p->top_k : n;
        const int k = take_best(s->cand, n, want, p->top_p < 1.0f ? (double)p->top_p : 2.0);
        cand = s->cand + (n - k);
        n = k;
    }
    double mass = 0.0;
    for (int i = 0; i < n; i++) {
        mass += cand[i].p;
    }
    double r = rng_uniform(s->rng) * mass;
    int32_t tok = cand[n - 1].id;
    for (int i = 0; i < n; i++) {
        r -= cand[i].p;
        if (r <= 0.0) {
            tok = cand[i].id;
            break;
        }
    }
    if (logprob != NULL) {
        *logprob = (float)log((double)s->probs[tok] / mass);
    }
    return tok;
}
