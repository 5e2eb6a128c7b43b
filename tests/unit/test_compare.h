/*
 * test_compare.h — the numeric comparisons the engine tests share: the largest |a[i]| and
 * |a[i] - b[i]| (a NaN difference counts as infinitely wrong) and the first argmax. Header
 * only (static inline, so a test pays for what it calls).
 */
#ifndef KC_TEST_COMPARE_H
#define KC_TEST_COMPARE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

static inline float max_abs(const float *a, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        m = fabsf(a[i]) > m ? fabsf(a[i]) : m;
    }
    return m;
}

static inline float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        const float d = fabsf(a[i] - b[i]);
        m = d > m || isnan(d) ? d : m;
    }
    return m;
}

/* The index of the first largest x[i]. */
static inline int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

#endif /* KC_TEST_COMPARE_H */
