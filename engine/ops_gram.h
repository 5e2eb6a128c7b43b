/*
 * ops_gram.h — cross products A^T B of tall row-major f32 matrices on oneDNN matmul, for the
 * closed-form calibration of KV predictors (engine/kvp_calibrate.c accumulates X^T X and
 * X^T Y over windows of tokens).
 *
 * Place in the data flow: `kvcast calibrate` -> eng_kvp_calib_window -> eng_gram_atb once per
 * window and aux/base layer. Not on any request path.
 *
 * Shape legend: n rows (tokens of a window), p columns of A, q columns of B.
 *
 * Ownership and thread rules: a `struct eng_gram` owns a oneDNN engine, stream and a small
 * cache of matmul primitives (one per (n, p, q)); it belongs to the thread that created it.
 * This header keeps oneDNN types out of its API.
 */
#ifndef ENG_OPS_GRAM_H
#define ENG_OPS_GRAM_H

#include "common/kc.h"

struct eng_gram;

/* Creates a context whose primitives run on an OpenMP team of n_threads (<= 0: OpenMP's
 * default). Fails with KC_ENOMEM or KC_EBACKEND and a message. */
int eng_gram_create(int n_threads, struct eng_gram **out, struct kc_error *err);
/* Frees the context and every cached primitive; NULL is a no-op. */
void eng_gram_free(struct eng_gram *g);

/* c[p, q] = a[n, p]^T @ b[n, q], all row-major f32 with f32 accumulation; a may equal b.
 * Creates (and caches) the primitive for (n, p, q) on first use; fails with KC_EINVAL for
 * non-positive sizes, KC_EBACKEND when oneDNN refuses the shape, KC_ENOMEM. */
int eng_gram_atb(struct eng_gram *g, const float *a, const float *b, int n, int p, int q, float *c,
                 struct kc_error *err);

/* Reference twin: plain loops, f64 accumulation, rounded to f32. */
void eng__gram_atb_ref(const float *a, const float *b, int n, int p, int q, float *c);

#endif /* ENG_OPS_GRAM_H */
