/*
 * ops_dnnl_internal.h — what engine/ops_dnnl.c shares with engine/probe.c, the measurement
 * probes of `kvcast bench`: the weight-type helpers, the team setter, the matmul and int8
 * inner-product primitive-desc builders and the oneDNN engine/stream of an eng_dnn;
 * engine/ops_gram.c takes the team setter from it too. Private to those three files (it includes
 * dnnl.h; tests/check_layering.sh keeps dnnl.h inside the engine's oneDNN files).
 */
#ifndef ENG_OPS_DNNL_INTERNAL_H
#define ENG_OPS_DNNL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <oneapi/dnnl/dnnl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/kc.h"
#include "engine/ops.h"

/* Checks a oneDNN status inside a kernel, where failures are programmer errors. */
#define DNN_ASSERT(call)                                                                           \
    do {                                                                                           \
        dnnl_status_t st_ = (call);                                                                \
        KC_ASSERT(st_ == dnnl_success);                                                            \
    } while (0)

/* Element type of the weights AND of the activations a matmul of weight type wt reads (int8:
 * s8 weights times s8 activations, see ops_dnnl.c invariant 7). */
static inline dnnl_data_type_t wt_dnnl(enum eng_wtype wt) {
    return wt == ENG_WTYPE_BF16 ? dnnl_bf16 : wt == ENG_WTYPE_INT8 ? dnnl_s8 : dnnl_f32;
}

static inline size_t wt_size(enum eng_wtype wt) {
    return wt == ENG_WTYPE_BF16 ? 2 : wt == ENG_WTYPE_INT8 ? 1 : 4;
}

static inline const char *wt_name(enum eng_wtype wt) {
    return wt == ENG_WTYPE_BF16 ? "bf16" : wt == ENG_WTYPE_INT8 ? "int8" : "f32";
}

/* Sets the calling thread's OpenMP team size (<= 0: unchanged). */
static inline void set_team(int n_threads) {
#ifdef _OPENMP
    if (n_threads > 0) {
        omp_set_num_threads(n_threads);
    }
#else
    (void)n_threads;
#endif
}

/* The oneDNN CPU engine and stream of a context (owned by it). */
dnnl_engine_t eng__dnn_engine(const struct eng_dnn *dnn);
dnnl_stream_t eng__dnn_stream(const struct eng_dnn *dnn);

/* A matmul primitive desc for rows x k @ k x n with weights md w (NULL: format `any`),
 * optional f32 bias, f32 dst and a user-mode scratchpad; int8 (bias must be false) takes
 * per-column output scales at execution (DNNL_ARG_ATTR_OUTPUT_SCALES, n f32); with gemv, oneDNN's
 * "gemm:jit" implementation when offered (ops_dnnl.c invariant 6). */
dnnl_status_t eng__dnn_matmul_pd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt,
                                 const dnnl_memory_desc_t *w, bool bias, bool gemv,
                                 dnnl_primitive_desc_t *pd);
/* An int8 inner-product primitive desc for rows x k s8 source and [n, k] s8 weights of md w
 * (NULL: format `any`), f32 dst, runtime per-column output scales: the path int8 decode rows
 * take (ops_dnnl.c invariant 8). */
dnnl_status_t eng__dnn_ip_pd_s8(dnnl_engine_t engine, int rows, int n, int k,
                                const dnnl_memory_desc_t *w, dnnl_primitive_desc_t *pd);
/* Weights md of the layout the int8 inner product picks for one row of [n, k]. */
int eng__dnn_ip_wmd(dnnl_engine_t engine, int n, int k, dnnl_memory_desc_t *out,
                    struct kc_error *err);
/* Weights md of the layout oneDNN prefers for rows x k @ k x n. */
int eng__dnn_preferred_wmd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt,
                           bool bias, dnnl_memory_desc_t *out, struct kc_error *err);

#endif /* ENG_OPS_DNNL_INTERNAL_H */
