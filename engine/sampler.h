/*
 * sampler.h — turns one row of logits into the next token: repetition / presence /
 * frequency penalties, temperature, top-k, top-p, min-p, and a seeded PRNG per sequence;
 * and the raw-distribution logprobs (the sampled token's and the top n) that the OpenAI API
 * reports.
 *
 * Place in the data flow: the prefill and decode workers call eng_sampler_sample once per
 * sequence per step, then eng_logprobs_top on the same row when the request asked for
 * logprobs. Ownership: a sampler owns its scratch (sized for the vocabulary at init) and its
 * PRNG state; one sampler per sequence, used by one thread at a time. Sampling allocates
 * nothing and never writes the logits row.
 *
 * Totality: every finite input gives a token. Penalties saturate at +-FLT_MAX instead of
 * overflowing, so no parameter in range can turn finite logits into Inf or NaN. A row that
 * already holds NaN or +Inf (a model fault), or holds no finite logit at all, is an error
 * (KC_EBACKEND) naming the first bad index; -Inf is a legal "never this token".
 */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdint.h>

#include "common/kc.h"

/* Most alternatives eng_logprobs_top reports per position (vLLM's default cap). */
#define ENG_MAX_LOGPROBS 20

struct eng_sampler_params {
    float temperature;        /* 0: greedy (argmax) */
    int top_k;                /* <= 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; HF semantics (divide positive logits, multiply negative) */
    float presence_penalty;   /* 0: off; OpenAI semantics */
    float frequency_penalty;  /* 0: off */
    uint64_t seed;
};

/* temperature 1, everything else off, seed 0. */
struct eng_sampler_params eng_sampler_default_params(void);

/* Checks ranges (NaN-safe): temperature in [0, 100], top_p in (0, 1], min_p in [0, 1],
 * repetition_penalty in (0, 10], presence/frequency in [-2, 2]. Names the bad field. */
int eng_sampler_params_validate(const struct eng_sampler_params *p, struct kc_error *err);

/*
 * The seed of PRNG stream `index` of a request seeded with `seed` (choice i of an n > 1
 * request): both go through splitmix64, so that neighbouring seeds and indices give unrelated
 * streams. (seed + index would make seed 1's choice 1 replay seed 2's choice 0.) Pure.
 */
uint64_t eng_sampler_stream_seed(uint64_t seed, uint64_t index);

struct eng_cand {
    float p;
    int32_t id;
};

struct eng_sampler {
    struct eng_sampler_params params;
    uint64_t rng[2];
    int vocab_size;
    float *probs;          /* [V] penalized logits, then their tempered exp */
    struct eng_cand *cand; /* [V] candidates of the current step */
    uint32_t *count;       /* [V] occurrences of each token in the history seen so far */
};

int eng_sampler_init(struct eng_sampler *s, const struct eng_sampler_params *p, int vocab_size,
                     struct kc_error *err);
void eng_sampler_free(struct eng_sampler *s);

/* Records a token as part of the history the penalties look at (prompt and output). */
void eng_sampler_observe(struct eng_sampler *s, int32_t token);

/*
 * Samples a token from logits[V] (read only: the penalties and the temperature are applied to
 * a copy in the sampler's scratch) into *token, and writes its log-probability under the
 * final (penalized, tempered, truncated) distribution to *logprob when non-NULL. Greedy when
 * temperature is 0 (ties: the lowest id). Fails with KC_EBACKEND, err naming the index, when
 * the row holds NaN or +Inf or nothing above -Inf; the PRNG and *token are then untouched.
 */
int eng_sampler_sample(struct eng_sampler *s, const float *logits, int32_t *token, float *logprob,
                       struct kc_error *err);

/* KC_OK when logits[V] holds no NaN and no +Inf and at least one value above -Inf (what
 * eng_sampler_sample accepts); else KC_EBACKEND, err naming the first bad index. */
int eng_logits_check(const float *logits, int vocab_size, struct kc_error *err);

/* The raw distribution's view of one position, as OpenAI-style logprobs report it. */
struct eng_logprobs {
    float logprob;                     /* log-softmax of the raw logits at the token asked about */
    int n_top;                         /* entries below, <= the n asked for */
    int32_t top_ids[ENG_MAX_LOGPROBS]; /* best first; ties: the lower id first */
    float top_logprobs[ENG_MAX_LOGPROBS]; /* their log-softmax */
};

/*
 * Log-softmax of the raw logits[V] (computed stably in double) at token, and the n_top
 * (clamped to [0, ENG_MAX_LOGPROBS]) highest entries. One pass for the maximum and the top
 * list, one for the normaliser; allocates nothing. Meant for rows eng_sampler_sample accepted
 * (no NaN, no +Inf): on other rows the values are unspecified but ids stay in [0, V).
 */
void eng_logprobs_top(const float *logits, int vocab_size, int32_t token, int n_top,
                      struct eng_logprobs *out);

/* log-softmax of logits[V] at token, computed stably (for eval and logprobs). */
float eng_log_softmax_at(const float *logits, int vocab_size, int32_t token);

#endif /* ENG_SAMPLER_H */
