/*
 * test_rand.h — the kernel tests' random inputs and comparison: a xorshift64 stream (seeded by
 * TEST_RAND_SEED, defined before the include, so each test keeps its own inputs), with the
 * comparisons of test_compare.h. Include after <cmocka.h>.
 */
#ifndef KC_TEST_RAND_H
#define KC_TEST_RAND_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "tests/unit/test_compare.h"

#ifndef TEST_RAND_SEED
#define TEST_RAND_SEED 0x9e3779b97f4a7c15ull
#endif

static uint64_t rng_state = TEST_RAND_SEED;

/* Uniform in [-1, 1). */
static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *rand_floats(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = frand() * scale;
    }
    return p;
}

#endif /* KC_TEST_RAND_H */
