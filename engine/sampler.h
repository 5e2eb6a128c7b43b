/*
 * sampler.h — turns one row of logits into the next token: repetition / presence /
 * frequency penalties, temperature, top-k, top-p, min-p, and a seeded PRNG per sequence.
 *
 * Place in the data flow: the decode side calls eng_sampler_sample once per sequence per
 * step. Ownership: a sampler owns its scratch (sized for the vocabulary at init) and its
 * PRNG state; one sampler per sequence, used by one thread at a time. Sampling allocates
 * nothing.
 */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdint.h>

#include "common/kc.h"

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

struct eng_cand {
    float p;
    int32_t id;
};

struct eng_sampler {
    struct eng_sampler_params params;
    uint64_t rng[2];
    int vocab_size;
    float *probs;    /* [V] */
    struct eng_cand *cand; /* [V] candidates of the current step */
    uint32_t *count; /* [V] occurrences of each token in the history seen so far */
};

int eng_sampler_init(struct eng_sampler *s, const struct eng_sampler_params *p, int vocab_size,
                     struct kc_error *err);
void eng_sampler_free(struct eng_sampler *s);

/* Records a token as part of the history the penalties look at (prompt and output). */
void eng_sampler_observe(struct eng_sampler *s, int32_t token);

/* Samples a token from logits[V] (modified in place by the penalties), and writes its
 * log-probability under the final (tempered, truncated) distribution to *logprob when
 * non-NULL. Greedy when temperature is 0. */
int32_t eng_sampler_sample(struct eng_sampler *s, float *logits, float *logprob);

/* log-softmax of logits[V] at token, computed stably (for eval and logprobs). */
float eng_log_softmax_at(const float *logits, int vocab_size, int32_t token);

#endif /* ENG_SAMPLER_H */
