/*
 * dtype.h — element types the engine reads from disk and computes in, and conversions
 * between them. bf16/f16 are stored as raw uint16_t bit patterns.
 */
#ifndef ENG_DTYPE_H
#define ENG_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum eng_dtype {
    ENG_DTYPE_F32 = 0,
    ENG_DTYPE_BF16,
    ENG_DTYPE_F16,
    ENG_DTYPE_I64, /* safetensors files may carry integer tensors; the model never uses them */
    ENG_DTYPE_I32,
    ENG_DTYPE_COUNT
};

/* Bytes per element. */
size_t eng_dtype_size(enum eng_dtype t);
/* Safetensors spelling ("F32", "BF16", ...). */
const char *eng_dtype_name(enum eng_dtype t);

static inline float eng_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round-to-nearest-even, NaN kept quiet: the same rounding PyTorch uses. */
static inline uint16_t eng_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_f16(float f);

/* Converts n elements of src (of type t) to f32 in dst. */
void eng_dtype_to_f32(enum eng_dtype t, const void *src, float *dst, size_t n);

#endif /* ENG_DTYPE_H */
