/*
 * ops_simd.h — inline helpers shared by the engine's C kernels (engine/ops.c,
 * engine/attention.c, engine/ops_dnnl.c): `omp simd` pragmas that vanish without OpenMP, the
 * team-or-alone loops of their parallel work (ENG_FOR_ROWS, ENG_ON_TEAM), the Cephes expf
 * polynomial (scalar expf_fast and 16-lane exp512) and the AVX-512 tail mask. Internal to
 * the engine: include it only from kernel .c files, after <immintrin.h> where __AVX512F__.
 * See engine/ops.c invariant 2 for why the fast kernels use their own exp. Also the f32 ->
 * bf16 rounding of the bf16 prefill's activations (bf16_store16, cvt_row_bf16), the same
 * rounding as engine/ops_dnnl.c's per-call conversion: vcvtneps2bf16's (round to nearest even,
 * denormals to zero), by that instruction where avx512_bf16 is compiled in, by integer AVX-512
 * elsewhere; eng_f32_to_bf16 without AVX-512.
 */
#ifndef ENG_OPS_SIMD_H
#define ENG_OPS_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include "engine/io/dtype.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define ENG_PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#define ENG_SIMD ENG_PRAGMA(omp simd)
#define ENG_SIMD_SUM(v) ENG_PRAGMA(omp simd reduction(+ : v))
#define ENG_SIMD_MAX(v) ENG_PRAGMA(omp simd reduction(max : v))
#else
#define ENG_SIMD
#define ENG_SIMD_SUM(v)
#define ENG_SIMD_MAX(v)
#endif

/* Work for the calling thread's OpenMP team, or for the calling thread alone when `par` is
 * false: never a `parallel if (false)` region, for which libgomp still builds a team (engine/ops.c
 * invariant 6). ENG_FOR_ROWS runs `for (int r = 0; r < n; r++) { body }`, split statically over
 * the team when par; ENG_ON_TEAM runs `call` on every thread of one parallel region when par, else
 * once on the calling thread, where the orphaned `omp for` loops inside it have a team of one. */
#ifdef _OPENMP
#define ENG_FOR_ROWS(par, r, n, ...)                                                               \
    do {                                                                                           \
        if (par) {                                                                                 \
            ENG_PRAGMA(omp parallel for schedule(static))                                          \
            for (int r = 0; r < (n); r++) {                                                        \
                __VA_ARGS__;                                                                       \
            }                                                                                      \
        } else {                                                                                   \
            for (int r = 0; r < (n); r++) {                                                        \
                __VA_ARGS__;                                                                       \
            }                                                                                      \
        }                                                                                          \
    } while (0)
#define ENG_ON_TEAM(par, call)                                                                     \
    do {                                                                                           \
        if (par) {                                                                                 \
            ENG_PRAGMA(omp parallel)                                                               \
            call;                                                                                  \
        } else {                                                                                   \
            call;                                                                                  \
        }                                                                                          \
    } while (0)
#else
#define ENG_FOR_ROWS(par, r, n, ...)                                                               \
    do {                                                                                           \
        (void)(par);                                                                               \
        for (int r = 0; r < (n); r++) {                                                            \
            __VA_ARGS__;                                                                           \
        }                                                                                          \
    } while (0)
#define ENG_ON_TEAM(par, call)                                                                     \
    do {                                                                                           \
        (void)(par);                                                                               \
        call;                                                                                      \
    } while (0)
#endif

/* This thread's index in the calling OpenMP team (0 without OpenMP). */
static inline int team_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* exp(x) for the fast kernels: Cephes expf polynomial after reduction by ln 2; vectorises
 * inside `omp simd` loops. Inputs are clamped to [-87.3, 88.7] (the result stays a normal
 * float); NaN propagates through the polynomial. */
static inline float expf_fast(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    /* n = round(x / ln 2) via truncation of a positive number (vectorises without SSE4.1
     * rounding or -fno-trapping-math); x / ln 2 lies in [-126, 128]. */
    const int32_t ni = (int32_t)(x * 1.44269504088896341f + 128.5f) - 128;
    const float n = (float)ni;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n built in the exponent field; n + 127 is in [1, 255). */
    union {
        uint32_t u;
        float f;
    } scale;
    scale.u = (uint32_t)(ni + 127) << 23;
    return p * scale.f;
}

#if defined(__AVX512F__)
/* expf_fast on 16 lanes: the same polynomial, with exact 2^n by vscalefps. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 tail_mask(int left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* v rounded to bf16 as vcvtneps2bf16 does it: to nearest even, denormals to signed zero, NaN
 * kept quiet. Integer AVX-512F where avx512_bf16 is not compiled in (x86-64-v4 builds), so
 * every build rounds alike. */
static inline __m256i bf16_round16(__m512 v) {
#if defined(__AVX512BF16__)
    return (__m256i)_mm512_cvtneps_pbh(v);
#else
    const __m512i u = _mm512_castps_si512(v);
    const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    const __mmask16 tiny = _mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(0x00800000));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
    r = _mm512_mask_and_epi32(r, tiny, u, _mm512_set1_epi32((int)0x80000000u));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
#endif
}

/* The first lanes of v that k selects, rounded to bf16 and stored at y. */
static inline void bf16_store16(uint16_t *y, __m512 v, __mmask16 k) {
    _mm256_mask_storeu_epi16(y, k, bf16_round16(v));
}
#endif

/* y[0..n) = x[0..n) rounded to bf16 (see the file comment). */
static inline void cvt_row_bf16(const float *restrict x, size_t n, uint16_t *restrict y) {
#if defined(__AVX512F__)
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i < 16 ? (int)(n - i) : 16);
        bf16_store16(y + i, _mm512_maskz_loadu_ps(k, x + i), k);
    }
#else
    for (size_t i = 0; i < n; i++) {
        y[i] = eng_f32_to_bf16(x[i]);
    }
#endif
}

#endif /* ENG_OPS_SIMD_H */
