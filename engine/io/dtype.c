/* dtype.c — element type names, sizes and conversions. */
#include "engine/io/dtype.h"

#include <math.h>

#include "common/kc.h"

size_t eng_dtype_size(enum eng_dtype t) {
    switch (t) {
    case ENG_DTYPE_F32:
    case ENG_DTYPE_I32:
        return 4;
    case ENG_DTYPE_BF16:
    case ENG_DTYPE_F16:
        return 2;
    case ENG_DTYPE_I64:
        return 8;
    default:
        KC_ASSERT(!"bad dtype");
    }
    return 0;
}

const char *eng_dtype_name(enum eng_dtype t) {
    static const char *const names[ENG_DTYPE_COUNT] = {"F32", "BF16", "F16", "I64", "I32"};
    KC_ASSERT((int)t >= 0 && t < ENG_DTYPE_COUNT);
    return names[t];
}

float eng_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {
            /* Subnormal: value = mant * 2^-24. */
            float f = ldexpf((float)mant, -24);
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

uint16_t eng_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const float a = fabsf(f);
    if (isnan(f)) {
        return sign | 0x7e00u;
    }
    if (a >= 65520.0f) {
        return sign | 0x7c00u;
    }
    if (a < 6.103515625e-05f) {
        /* Subnormal range: round a / 2^-24 to nearest even. */
        float m = nearbyintf(a * 16777216.0f);
        return sign | (uint16_t)m;
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    uint32_t mant = (uint32_t)nearbyintf((m * 2.0f - 1.0f) * 1024.0f);
    uint32_t exp = (uint32_t)(e - 1 + 15);
    if (mant == 1024) {
        mant = 0;
        exp++;
    }
    return sign | (uint16_t)(exp << 10) | (uint16_t)mant;
}

void eng_dtype_to_f32(enum eng_dtype t, const void *src, float *dst, size_t n) {
    switch (t) {
    case ENG_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case ENG_DTYPE_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            dst[i] = eng_bf16_to_f32(s[i]);
        }
        break;
    }
    case ENG_DTYPE_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            dst[i] = eng_f16_to_f32(s[i]);
        }
        break;
    }
    default:
        KC_ASSERT(!"dtype has no float conversion");
    }
}
