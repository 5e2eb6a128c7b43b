/*
 * ops_dnnl.c — linear layers on oneDNN 2.6 matmul primitives (C API) and the per-thread
 * oneDNN context. The `kvcast bench` measurements built on the same primitives are in
 * probe.c, the A^T B of the KV predictor's fit in ops_gram.c; those three files (and
 * ops_dnnl_internal.h) are the only ones in kvcast that include dnnl.h.
 *
 * Place in the data flow: engine/model.c creates one eng_linear per projection at load and
 * calls eng_linear_forward for every layer of every step, through the eng_dnn of the worker
 * thread running the step.
 *
 * Ownership and thread rules: an eng_linear owns its packed weights, its bias and a private
 * oneDNN engine that the weight/bias memory objects live on; it is immutable after creation,
 * and every thread may use it at once (executing a primitive only reads these objects). An
 * eng_dnn owns an engine, a stream, a primitive cache and the scratch buffers the primitives
 * run in (user-mode scratchpad), and belongs to the thread that created it.
 *
 * DESIGN — invariants:
 *  1. The prefill copy of the weights is packed once, at creation, into the blocked layout
 *     oneDNN picks for ENG_LINEAR_CHUNK rows: a reference primitive is created with weights
 *     in format_tag `any`, its weights md is read back, and the plain [N, K] source (viewed
 *     as a K x N matrix with format `ba`, since HF stores [out, in]) is reordered into it.
 *     The decode copy (2..ENG_DECODE_MAX_M rows; only when the decode weight type differs,
 *     otherwise the prefill copy serves those rows) is packed the same way for ONE row. The
 *     gemv copy (one row) is the plain [N, K] matrix itself, in the decode weight type. int8
 *     decode has no decode copy where its gemv copy serves those rows too (invariant 8).
 *  2. Every cached primitive is created with the packed md given explicitly (not `any`), and
 *     its weights md is checked equal to the packed one (dnnl_memory_desc_equal). If oneDNN
 *     refuses the explicit layout for some row count, that bucket runs the representative
 *     row count's primitive instead, with the rows padded (which always accepts the layout:
 *     the layout came from it).
 *  3. Row buckets bound the number of primitives: m <= ENG_DECODE_MAX_M runs an exact-m
 *     primitive on the decode copy; larger m runs in chunks of ENG_LINEAR_CHUNK rows on the
 *     prefill copy (short int8 chunks: invariant 8), the last partial chunk padded up to a
 *     multiple of 32 (<= 128) or 64. copy_for_rows picks the copy of a bucket. So
 *     a shape has at most 16 + 11 primitives per weight type.
 *  4. Primitives and scratch buffers are created on the first forward of a bucket (or by
 *     eng_linear_prepare); a warmed-up step loop only looks up, sets data handles and
 *     executes. Padding rows in the activation scratch keep stale values: their output rows
 *     are never copied out.
 *  5. oneDNN bakes the OpenMP team size into a primitive at creation (oneDNN's OpenMP
 *     runtime reads the max thread count when the primitive desc is made and forces that
 *     team at execution), so the team size is part of a cached primitive's key, and every
 *     creation and execution runs after omp_set_num_threads(team). The team is the
 *     context's n_threads, or, when the calling thread installed a team source
 *     (eng_dnn_team_source: the scheduler's elastic teams), that source's current value
 *     clamped to [1, n_threads], re-read before every GEMM: a long forward follows a resize
 *     within one linear layer. Attention and the other OpenMP loops between GEMMs run on the
 *     team the last GEMM set.
 *  6. Why the decode copy is plain: a one-row step over the plain copy runs oneDNN's
 *     "gemm:jit" matmul implementation (taken from the primitive-desc iterator), whose GEMV
 *     kernel streams several weight rows at once. The default brgemm kernel over a packed
 *     layout streams one 64-column block per thread and, on 2 threads of this shared host,
 *     swings between 13 and 26 GB/s from one second to the next while a stream triad holds
 *     18-24; the gemm:jit GEMV held 21-25 GB/s in the same rounds (TinyLlama shapes, bf16,
 *     `kvcast bench gemv`). At 8 rows the plain copy is 15-30% slower than a packed one
 *     (`--rows 8`), hence two decode copies: memory traded for both. int8 one-row steps
 *     leave the matmul altogether (invariant 8). Re-measured on a Zen 5 (AVX-512 bf16, no
 *     AMX): one bf16 row over the prefill copy's layout (`bench gemv`'s "prefill layout"
 *     column, brg:avx512_core_bf16) read 1.1-1.5x the plain GEMV's GB/s in that probe, and would
 *     have saved the plain copy (half the bf16 weight memory); but in the engine, 24 alternating
 *     pairs of `bench engine --dtypes bf16` decode runs gave it 0.59-1.24x the plain copy's
 *     tokens/s, median 0.93, in runs of several minutes where one or the other led as the
 *     neighbours' load changed: the swings seen on the Xeon, so the plain copy stays.
 *  7. int8 (ENG_WTYPE_INT8): every copy holds s8 weights quantized symmetrically per output
 *     channel (scale_j = max|W_j| / 127) and the n scales (wscale, as a oneDNN memory).
 *     Activations are quantized per row to s8, symmetric (scale_r = max|x_r| / 127, into the
 *     activation scratch): symmetric s8 needs no zero point, so the s32 products are exact
 *     and one multiply per output restores them; u8 with a zero point would gain one bit for
 *     one-sided rows, but the rows here (norm outputs, attention, SwiGLU) are two-sided, and
 *     oneDNN's s8 x s8 path handles VNNI's u8 x s8 instruction with a weight compensation
 *     it computes itself at packing. The matmul applies scale_j as runtime per-column output
 *     scales (mask 1 << 1; runtime because primitives are cached per shape and shared by
 *     linears of equal shape); scale_r and the bias are applied in f32 after it, in the same
 *     pass that copies padded rows out (oneDNN 2.6 has no per-row output scale, and its
 *     int8 bias would be added before the output scale).
 *  8. One-row int8 runs an inner product, not a matmul: the gemv copy of an int8 linear is
 *     packed in the layout oneDNN's s8 inner product picks for one row (weights `any`, [n, k];
 *     on AVX512-VNNI that is "brgemm:avx512_core_vnni", with the s8-source compensation
 *     stored after the weights), and eng_prim.ip marks its primitive. The same copy runs
 *     2..ENG_DECODE_MAX_M rows (a batched decode step) on inner products too, wherever oneDNN
 *     takes the one-row layout for ENG_DECODE_MAX_M rows (checked at creation, rep_rows; a
 *     row count that refuses it runs padded to ENG_DECODE_MAX_M); elsewhere a packed decode
 *     copy runs them on the matmul. int8 prefill chunks of up to ENG_IP_PREFILL_MAX (64) rows
 *     run the inner product on the same copy too (short_copy), where oneDNN's effective ISA is
 *     AVX-512 VNNI without AMX and it takes the layout for 32 and 64 rows; longer chunks keep the
 *     matmul. A standalone probe of the 22 layers' products (2 threads, Zen 5, GB/s of weights,
 *     best of 4, two runs): inner product / packed matmul 18.0-18.3 / 12.4-12.6 at 32 rows,
 *     10.8-11.0 / 8.5-8.6 at 64, 5.3 / 5.1-5.2 at 128, equal at 256 and 512. With AMX the matmul
 *     runs AMX tiles, and that was not measured, so those machines keep it. Measured side by
 *     side in one session on the 2-core AMD EPYC (Zen 4, VNNI, no AMX), the 22 layers' products of
 *     TinyLlama-1.1B, 2 threads, GB/s of weights, best of 4 passes of a standalone oneDNN
 *     probe (`kvcast bench gemv --dtype int8 --rows M` now runs both paths):
 *
 *       rows                         1     2     4     8    16
 *       VNNI    inner product       51    51    43    36    25   brgemm:avx512_core_vnni
 *               matmul (decode copy) 16    15    14    16    13   gemm:jit
 *       AVX512_CORE  inner product  45    17    16    13    10   x64:gemm_s8s8s32:jit
 *               matmul              22    20    15    15    12
 *       AVX2    inner product      5.4   5.3   5.0   4.6   3.8
 *               matmul             2.0   2.0   1.9   1.9   1.7
 *
 *     (ONEDNN_MAX_CPU_ISA caps the rows below VNNI.) At 16 rows VNNI's 25 GB/s is its
 *     multiply rate, not memory. Without VNNI the matmul is up to 1.2x faster at 2..16 rows;
 *     one copy (a quarter of the f32 weights less memory) is kept anyway. The one-row
 *     measurement that chose the inner product, in one run, 2 threads, all s8 weights of
 *     a TinyLlama-1.1B decode step (22 layers of q|k|v 2560x2048, o 2048x2048, gate|up
 *     11264x2048, down 2048x5632, plus the 32000x2048 lm_head: 1.03 GB), 21 rounds, each
 *     pass divided by the mean of a stream triad run just before and just after it (a
 *     standalone oneDNN probe; the table is its output):
 *
 *       s8 x s8 -> f32, one row                     oneDNN impl             median  best GB/s
 *       matmul, plain [n,k] (`ba`)   (the old path)  gemm:jit                  0.73       38.6
 *       inner product, weights `any` (this path)     brgemm:avx512_core_vnni   1.04       57.4
 *       matmul `ba`, N split in 2, 1 prim/thread     gemm:jit                  0.74       38.2
 *       inner product `any`, N split in 2            brgemm:avx512_core_vnni   1.02       53.7
 *
 *     The other candidates ran in another run, 9 rounds, under heavy load from other jobs
 *     (load average 6 on the 2 cores: every ratio is low, only their order means something):
 *     matmul `ba` gemm:jit (old path) 0.16, inner product `any` 0.27, matmul `any` (packed
 *     for one row; oneDNN still picks gemm:jit) 0.10, matmul `ab` 0.10, inner product with
 *     plain `oi` weights (x64:gemm_s8s8s32:jit) 0.16, u8 source with a runtime zero point
 *     (matmul gemm:jit) 0.06: none beats the inner product. oneDNN's own threading of one
 *     row is as good as splitting N by hand, so one primitive runs on the team. (The triad
 *     counts 3 arrays of 8-byte doubles and no write-allocate, so a kernel can read > 1.0 of
 *     it.) q|k|v and gate|up are already one fused linear each (engine/model.c).
 *     What limits it (Zen 5, 2026-12-07): each thread reads its share of the weights as one
 *     sequential stream, and one stream per core reads no faster than `bench gemv`'s `read`
 *     column (0.8-1.0 of the triad) while two streams that prefetch 2 KiB ahead read 0.9-1.05
 *     of it. A standalone hand-written VNNI GEMV over the same 22 layers (two 64-output blocks
 *     streamed at once, prefetching 1 KiB ahead) read 1.11-1.17x the inner product's GB/s in
 *     eight alternating rounds. No oneDNN variant measured did better than this one (the table
 *     above; at 8 and 16 rows also the inner product over the layout picked for that many rows,
 *     within 5%, and matmuls over the 512-row layout, gemm:jit at 14-18 GB/s), and the linear
 *     layers stay on oneDNN (DESIGN.md), so that kernel is not in the tree.
 *  9. Machines without VNNI. oneDNN runs s8 x s8 products as u8 x s8 (the source shifted by
 *     128, invariant 7), and without VNNI (AVX2, AVX-512 before Cascade Lake) it multiplies
 *     with vpmaddubsw, which adds each pair of u8 x s8 products into a saturating s16: with
 *     weights up to 127 a pair reaches 2 * 255 * 127 = 64770 and clips (oneDNN's "Nuances of
 *     int8 computations"). Run with ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE, the one-row
 *     product was 57-74% off the exact s32 emulation and 3.6-8.7% off f32
 *     (tests/unit/test_engine_int8.c). So where oneDNN's effective ISA has no VNNI or AMX,
 *     weights are quantized to 7 bits, [-63, 63] (eng_int8_weight_levels): a pair is at most
 *     2 * 255 * 63 = 32130 and the sums are exact again, for one bit of weight precision.
 *     The ISA is read when a linear is created (the weights are quantized then), so a
 *     process keeps one choice; ONEDNN_MAX_CPU_ISA set before start-up moves it.
 * 10. The passes around a product (the int8 activation quantization and output scaling) go
 *     to the OpenMP team only for ENG_QUANT_PAR_ROWS rows or more; fewer rows run on the
 *     calling thread outside OpenMP, never in a `parallel if (false)` region, which libgomp
 *     still builds a team for (engine/ops.c invariant 6). Two such regions per int8 product
 *     cost more than the product's own overhead: one decode row through an int8 linear,
 *     2 threads, this Zen 5, against the bare primitive on the same shape: 128 x 128
 *     3.9-4.3 -> 0.48-0.50 us (primitive 0.45), 2048 x 2048 in cache 41.4-42.6 -> 35.0-35.2
 *     us (primitive 31.8-35.2).
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/kc.h"
#include "engine/io/dtype.h"
#include "engine/ops.h"
#include "engine/ops_dnnl_internal.h"
#include "engine/ops_simd.h"

/* int8 prefill chunks of up to this many rows run the one-row inner-product copy where the
 * CPU has VNNI and no AMX (invariant 8). */
#define ENG_IP_PREFILL_MAX 64
/* eng_linear_prepare prepares every elastic team size up to this many threads. */
#define ENG_PREPARE_TEAMS_MAX 8
/* Converting activations to bf16 goes parallel from this many elements on. */
#define ENG_CVT_PAR_MIN 65536
/* Quantizing activations to s8 goes parallel from this many rows on. */
#define ENG_QUANT_PAR_ROWS 32

/* ---- per-thread context ---- */

/* One cached primitive: y[rows, n] = x[rows, k] @ W + b, executed as exec_rows rows. */
struct eng_prim {
    int n, k, rows, exec_rows;
    int team; /* OpenMP team size it was created for (invariant 5) */
    enum eng_wtype wt;
    bool bias;
    bool ip;                /* an inner product (invariant 8), else a matmul */
    dnnl_memory_desc_t wmd; /* the packed layout this primitive reads */
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst, pad; /* handles set per call */
};

struct eng_dnn {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int n_threads;
    /* Primitive cache: open addressing over cap (power of two) slots, grown at creation. */
    struct eng_prim **slots;
    size_t cap, count;
    /* Scratch, grown only when a primitive is created. */
    void *act; /* padded or bf16-converted activations */
    size_t act_bytes;
    float *out; /* padded destination rows */
    size_t out_bytes;
    void *pad; /* oneDNN user-mode scratchpad */
    size_t pad_bytes;
    float xscale[ENG_LINEAR_CHUNK]; /* int8: per-row activation scales of the running block */
};

/* One copy of a linear's weights: packed, or plain (the HF [n, k] row-major matrix). */
struct eng_wcopy {
    enum eng_wtype wt;
    bool plain;
    bool ip; /* the int8 one-row copy: an inner product's layout [n, k] (invariant 8) */
    /* Row count whose preferred layout this is (1 when plain). The int8 inner-product copy:
     * the most rows it runs, ENG_DECODE_MAX_M where oneDNN takes its one-row layout for that
     * many rows, else 1 (invariant 8). A row count whose primitive refuses the layout runs
     * padded to rep_rows (invariant 2). */
    int rep_rows;
    dnnl_memory_desc_t md;
    void *data;
    size_t bytes;
    dnnl_memory_t mem;
    float *wscale; /* int8: [n] per-output-channel weight scales (invariant 7), else NULL */
    dnnl_memory_t wscale_mem;
};

struct eng_linear {
    int n_out, n_in;
    enum eng_wtype prefill_wt, decode_wt;
    dnnl_engine_t engine; /* owns the memory objects below */
    int n_copies;
    struct eng_wcopy copy[3];
    /* Indices into copy[] for rows > 16, 2..16 and 1; gemv_copy is plain (invariant 6), for
     * int8 an inner product's layout (invariant 8). short_copy runs prefill chunks of up to
     * ENG_IP_PREFILL_MAX rows: the int8 inner-product copy where invariant 8 says so, else
     * prefill_copy. copy_for_rows picks. */
    int prefill_copy, decode_copy, gemv_copy, short_copy;
    float *bias; /* [N] or NULL */
    dnnl_memory_t bias_mem;
};

/* The calling thread's team source (invariant 5); NULL: the context's n_threads. */
static _Thread_local const atomic_int *tl_team_source;

void eng_dnn_team_source(const atomic_int *team) {
    tl_team_source = team;
}

/* The team the next GEMM of dnn runs on (invariant 5). */
static int dnn_team(const struct eng_dnn *dnn) {
    if (tl_team_source == NULL) {
        return dnn->n_threads;
    }
    const int t = atomic_load_explicit(tl_team_source, memory_order_relaxed);
    return t < 1 ? 1 : t > dnn->n_threads ? dnn->n_threads : t;
}

int eng_dnn_create(int n_threads, struct eng_dnn **out, struct kc_error *err) {
    int rc;
    struct eng_dnn *d = kc_calloc(1, sizeof(*d));
    if (d == NULL) {
        return kc_error_set(err, KC_ENOMEM, "oneDNN context: out of memory");
    }
#ifdef _OPENMP
    d->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    d->n_threads = 1;
#endif
    dnnl_status_t st = dnnl_engine_create(&d->engine, dnnl_cpu, 0);
    if (st != dnnl_success) {
        rc =
            kc_error_set(err, KC_EBACKEND, "oneDNN: cannot create CPU engine (status %d)", (int)st);
        goto fail;
    }
    st = dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND, "oneDNN: cannot create stream (status %d)", (int)st);
        goto fail;
    }
    d->cap = 64;
    d->slots = kc_calloc(d->cap, sizeof(*d->slots));
    if (d->slots == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "oneDNN context: out of memory");
        goto fail;
    }
    *out = d;
    return 0;
fail:
    eng_dnn_free(d);
    return rc;
}

static void prim_free(struct eng_prim *p) {
    if (p == NULL) {
        return;
    }
    dnnl_memory_destroy(p->src);
    dnnl_memory_destroy(p->dst);
    dnnl_memory_destroy(p->pad);
    dnnl_primitive_destroy(p->prim);
    free(p);
}

void eng_dnn_free(struct eng_dnn *dnn) {
    if (dnn == NULL) {
        return;
    }
    for (size_t i = 0; i < dnn->cap && dnn->slots != NULL; i++) {
        prim_free(dnn->slots[i]);
    }
    free(dnn->slots);
    kc_aligned_free(dnn->act);
    kc_aligned_free(dnn->out);
    kc_aligned_free(dnn->pad);
    if (dnn->stream != NULL) {
        dnnl_stream_destroy(dnn->stream);
    }
    if (dnn->engine != NULL) {
        dnnl_engine_destroy(dnn->engine);
    }
    free(dnn);
}

void eng_dnn_enter(struct eng_dnn *dnn) {
    set_team(dnn_team(dnn));
}

int eng_dnn_threads(const struct eng_dnn *dnn) {
    return dnn->n_threads;
}

/* Grows a 64-byte aligned scratch buffer to at least need bytes (contents not kept). */
static int scratch_grow(void **buf, size_t *have, size_t need) {
    if (need <= *have) {
        return 0;
    }
    void *p = kc_aligned_alloc(need);
    if (p == NULL) {
        return KC_ENOMEM;
    }
    kc_aligned_free(*buf);
    *buf = p;
    *have = need;
    return 0;
}

/* ---- matmul primitive descriptors ---- */

/* The "gemm:jit" implementation of desc, or NULL when oneDNN offers none. */
static dnnl_primitive_desc_t gemv_pd(const dnnl_matmul_desc_t *desc,
                                     const_dnnl_primitive_attr_t attr, dnnl_engine_t engine) {
    dnnl_primitive_desc_iterator_t it = NULL;
    dnnl_primitive_desc_t found = NULL;
    if (dnnl_primitive_desc_iterator_create(&it, desc, attr, engine, NULL) != dnnl_success) {
        return NULL;
    }
    do {
        dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch(it);
        const char *impl = NULL;
        if (pd != NULL &&
            dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
            impl != NULL && strstr(impl, "gemm:jit") != NULL) {
            found = pd;
            break;
        }
        dnnl_primitive_desc_destroy(pd);
    } while (dnnl_primitive_desc_iterator_next(it) == dnnl_success);
    dnnl_primitive_desc_iterator_destroy(it);
    return found;
}

/* The attributes of every cached primitive: a user-mode scratchpad (the context's buffer),
 * and for int8 per-output-channel weight scales given at execution (invariants 7 and 8). */
static dnnl_status_t attr_create(bool int8_scales, dnnl_primitive_attr_t *out) {
    dnnl_status_t st = dnnl_primitive_attr_create(out);
    if (st != dnnl_success) {
        return st;
    }
    st = dnnl_primitive_attr_set_scratchpad_mode(*out, dnnl_scratchpad_mode_user);
    if (st == dnnl_success && int8_scales) {
        const float runtime = DNNL_RUNTIME_F32_VAL;
        st = dnnl_primitive_attr_set_output_scales(*out, 1, 1 << 1, &runtime);
    }
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(*out);
        *out = NULL;
    }
    return st;
}

/* Creates a matmul primitive desc for rows x k @ k x n with weights md w (NULL: format
 * `any`), optional f32 bias, f32 dst and a user-mode scratchpad. With `gemv`, the first
 * implementation named "gemm:jit" is taken when oneDNN offers one (invariant 6). */
static dnnl_status_t matmul_pd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt,
                               const dnnl_memory_desc_t *w, bool bias, bool gemv,
                               dnnl_primitive_desc_t *pd) {
    *pd = NULL;
    dnnl_memory_desc_t src_md, w_md, b_md, dst_md;
    const dnnl_dims_t src_dims = {rows, k}, w_dims = {k, n}, dst_dims = {rows, n};
    const dnnl_dims_t b_dims = {1, n};
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(&src_md, 2, src_dims, wt_dnnl(wt), dnnl_ab);
    if (st != dnnl_success) {
        return st;
    }
    if (w != NULL) {
        w_md = *w;
    } else {
        st = dnnl_memory_desc_init_by_tag(&w_md, 2, w_dims, wt_dnnl(wt), dnnl_format_tag_any);
        if (st != dnnl_success) {
            return st;
        }
    }
    st = dnnl_memory_desc_init_by_tag(&dst_md, 2, dst_dims, dnnl_f32, dnnl_ab);
    if (st != dnnl_success) {
        return st;
    }
    if (bias) {
        st = dnnl_memory_desc_init_by_tag(&b_md, 2, b_dims, dnnl_f32, dnnl_ab);
        if (st != dnnl_success) {
            return st;
        }
    }
    dnnl_matmul_desc_t desc;
    st = dnnl_matmul_desc_init(&desc, &src_md, &w_md, bias ? &b_md : NULL, &dst_md);
    if (st != dnnl_success) {
        return st;
    }
    dnnl_primitive_attr_t attr = NULL;
    st = attr_create(wt == ENG_WTYPE_INT8, &attr);
    if (st != dnnl_success) {
        return st;
    }
    if (gemv) {
        *pd = gemv_pd(&desc, attr, engine);
    }
    if (*pd == NULL) {
        st = dnnl_primitive_desc_create(pd, &desc, attr, engine, NULL);
    }
    dnnl_primitive_attr_destroy(attr);
    return st;
}

/* Creates an int8 inner-product primitive desc (forward inference) for rows x k s8 source,
 * [n, k] s8 weights of md w (NULL: format `any`), no bias, f32 dst, a user-mode scratchpad and
 * runtime per-output-channel output scales (invariant 8). */
static dnnl_status_t ip_pd_s8(dnnl_engine_t engine, int rows, int n, int k,
                              const dnnl_memory_desc_t *w, dnnl_primitive_desc_t *pd) {
    *pd = NULL;
    dnnl_memory_desc_t src_md, w_md, dst_md;
    const dnnl_dims_t src_dims = {rows, k}, w_dims = {n, k}, dst_dims = {rows, n};
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(&src_md, 2, src_dims, dnnl_s8, dnnl_nc);
    if (st == dnnl_success) {
        st = dnnl_memory_desc_init_by_tag(&dst_md, 2, dst_dims, dnnl_f32, dnnl_nc);
    }
    if (st == dnnl_success && w != NULL) {
        w_md = *w;
    } else if (st == dnnl_success) {
        st = dnnl_memory_desc_init_by_tag(&w_md, 2, w_dims, dnnl_s8, dnnl_format_tag_any);
    }
    dnnl_inner_product_desc_t desc;
    if (st == dnnl_success) {
        st = dnnl_inner_product_forward_desc_init(&desc, dnnl_forward_inference, &src_md, &w_md,
                                                  NULL, &dst_md);
    }
    if (st != dnnl_success) {
        return st;
    }
    dnnl_primitive_attr_t attr = NULL;
    st = attr_create(true, &attr);
    if (st != dnnl_success) {
        return st;
    }
    st = dnnl_primitive_desc_create(pd, &desc, attr, engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    return st;
}

/* Weights md of the layout oneDNN prefers for rows x k @ k x n. */
static int preferred_wmd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt, bool bias,
                         dnnl_memory_desc_t *out, struct kc_error *err) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = matmul_pd(engine, rows, n, k, wt, NULL, bias, false, &pd);
    if (st != dnnl_success) {
        return kc_error_set(err, KC_EBACKEND, "oneDNN: no %s matmul for %d x %d x %d (status %d)",
                            wt_name(wt), rows, n, k, (int)st);
    }
    *out = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    return 0;
}

/* Weights md of the layout oneDNN's s8 inner product picks for one row of [n, k] (invariant 8). */
static int ip_wmd(dnnl_engine_t engine, int n, int k, dnnl_memory_desc_t *out,
                  struct kc_error *err) {
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_status_t st = ip_pd_s8(engine, 1, n, k, NULL, &pd);
    if (st != dnnl_success) {
        return kc_error_set(err, KC_EBACKEND,
                            "oneDNN: no int8 inner product for 1 x %d x %d (status %d)", n, k,
                            (int)st);
    }
    *out = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    return 0;
}

/* Reorders plain [n, k] weights (element type wt, row-major) into a new buffer in layout md.
 * On success *data is a kc_aligned_alloc buffer of *bytes bytes. */
static int pack_weights(dnnl_engine_t engine, const void *plain, int n, int k, enum eng_wtype wt,
                        bool ip, const dnnl_memory_desc_t *md, void **data, size_t *bytes,
                        struct kc_error *err) {
    dnnl_memory_desc_t src_md;
    /* A matmul's weights are k x n: the W^T view of [n, k] row-major, format `ba`; an inner
     * product's are [n, k] itself (format `oi`). */
    const dnnl_dims_t dims = {ip ? n : k, ip ? k : n};
    const dnnl_dims_t strides = {ip ? k : 1, ip ? 1 : k};
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t src = NULL, dst = NULL;
    dnnl_stream_t stream = NULL;
    const size_t size = dnnl_memory_desc_get_size(md);
    void *buf = kc_aligned_alloc(size); /* zeroed: padding stays zero */
    int rc = KC_EBACKEND;
    if (buf == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "packing %d x %d weights: out of memory", n, k);
        goto fail;
    }
    dnnl_status_t st = dnnl_memory_desc_init_by_strides(&src_md, 2, dims, wt_dnnl(wt), strides);
    if (st == dnnl_success) {
        st = dnnl_memory_create(&src, &src_md, engine, (void *)(uintptr_t)plain);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_create(&dst, md, engine, buf);
    }
    if (st == dnnl_success) {
        st = dnnl_reorder_primitive_desc_create(&pd, &src_md, engine, md, engine, NULL);
    }
    if (st == dnnl_success) {
        st = dnnl_primitive_create(&prim, pd);
    }
    if (st == dnnl_success) {
        st = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    }
    if (st == dnnl_success) {
        const dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
        st = dnnl_primitive_execute(prim, stream, 2, args);
    }
    if (st == dnnl_success) {
        st = dnnl_stream_wait(stream);
    }
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND, "oneDNN: packing %d x %d %s weights failed (status %d)",
                          n, k, wt_name(wt), (int)st);
        goto fail;
    }
    rc = 0;
    *data = buf;
    *bytes = size;
    buf = NULL;
fail:
    if (stream != NULL) {
        dnnl_stream_destroy(stream);
    }
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_destroy(src);
    dnnl_memory_destroy(dst);
    kc_aligned_free(buf);
    return rc;
}

/* ---- linear creation ---- */

static bool dtype_ok(enum eng_dtype t) {
    return t == ENG_DTYPE_F32 || t == ENG_DTYPE_BF16 || t == ENG_DTYPE_F16;
}

int eng_int8_weight_levels(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_vnni:
    case dnnl_cpu_isa_avx512_core_bf16:
    case dnnl_cpu_isa_avx512_core_amx:
    case dnnl_cpu_isa_avx2_vnni:
        return 127;
    default:
        return 63;
    }
}

bool eng_bf16_products(void) {
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & (unsigned)dnnl_cpu_isa_avx512_core) == (unsigned)dnnl_cpu_isa_avx512_core;
}

bool eng_bf16_dot(void) {
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    const unsigned bf16 = (unsigned)dnnl_cpu_isa_avx512_core_bf16;
    return (isa & bf16) == bf16;
}

/* Quantizes one f32 row of k values to s8, symmetric, to [-levels, levels]; returns its scale
 * (0 for a zero row). */
static float quant_row_s8(const float *w, int k, int levels, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < k; i++) {
        amax = fmaxf(amax, fabsf(w[i]));
    }
    const float lv = (float)levels;
    const float scale = amax / lv;
    const float inv = amax > 0.0f ? lv / amax : 0.0f;
    for (int i = 0; i < k; i++) {
        const float v = nearbyintf(w[i] * inv);
        q[i] = (int8_t)(v > lv ? lv : v < -lv ? -lv : v);
    }
    return scale;
}

/* Stacks the parts into a plain [N, K] matrix of element type wt; int8 also writes the
 * per-row scales to wscale[N]. */
static void stack_parts(const struct eng_weight_part *parts, int n_parts, int k, enum eng_wtype wt,
                        void *dst, float *wscale, float *row_tmp) {
    const int levels = wt == ENG_WTYPE_INT8 ? eng_int8_weight_levels() : 0;
    size_t row0 = 0;
    for (int p = 0; p < n_parts; p++) {
        for (int r = 0; r < parts[p].rows; r++) {
            const size_t esz = eng_dtype_size(parts[p].dtype);
            const char *src = (const char *)parts[p].data + (size_t)r * (size_t)k * esz;
            const size_t out_row = row0 + (size_t)r;
            if (wt == ENG_WTYPE_BF16 && parts[p].dtype == ENG_DTYPE_BF16) {
                memcpy((uint16_t *)dst + out_row * (size_t)k, src, (size_t)k * 2);
                continue;
            }
            if (wt == ENG_WTYPE_F32) {
                eng_dtype_to_f32(parts[p].dtype, src, (float *)dst + out_row * (size_t)k,
                                 (size_t)k);
                continue;
            }
            eng_dtype_to_f32(parts[p].dtype, src, row_tmp, (size_t)k);
            if (wt == ENG_WTYPE_INT8) {
                wscale[out_row] =
                    quant_row_s8(row_tmp, k, levels, (int8_t *)dst + out_row * (size_t)k);
                continue;
            }
            uint16_t *o = (uint16_t *)dst + out_row * (size_t)k;
            for (int i = 0; i < k; i++) {
                o[i] = eng_f32_to_bf16(row_tmp[i]);
            }
        }
        row0 += (size_t)parts[p].rows;
    }
}

void eng_linear_free(struct eng_linear *l) {
    if (l == NULL) {
        return;
    }
    for (int i = 0; i < 3; i++) {
        dnnl_memory_destroy(l->copy[i].mem);
        kc_aligned_free(l->copy[i].data);
        dnnl_memory_destroy(l->copy[i].wscale_mem);
        kc_aligned_free(l->copy[i].wscale);
    }
    dnnl_memory_destroy(l->bias_mem);
    kc_aligned_free(l->bias);
    if (l->engine != NULL) {
        dnnl_engine_destroy(l->engine);
    }
    free(l);
}

/* Whether oneDNN adds l's bias for weight type wt (int8 adds it after, invariant 7). */
static bool prim_bias(const struct eng_linear *l, enum eng_wtype wt) {
    return l->bias != NULL && wt != ENG_WTYPE_INT8;
}

/* The primitive desc running `rows` rows of copy c (an inner product for the int8 one-row
 * copy, else a matmul) with c's weights md given explicitly; dnnl_unimplemented when oneDNN
 * would want another layout for that many rows (invariant 2). */
static dnnl_status_t copy_pd(dnnl_engine_t engine, const struct eng_wcopy *c, int rows, int n,
                             int k, bool bias, dnnl_primitive_desc_t *pd) {
    dnnl_status_t st =
        c->ip ? ip_pd_s8(engine, rows, n, k, &c->md, pd)
              : matmul_pd(engine, rows, n, k, c->wt, &c->md, bias, c->plain && rows == 1, pd);
    if (st == dnnl_success &&
        !dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(*pd, dnnl_query_weights_md, 0),
                                &c->md)) {
        st = dnnl_unimplemented;
    }
    return st;
}

/* Layout of a weight copy: packed for a matmul of rep_rows rows, plain, or packed for a
 * one-row int8 inner product (invariant 8). */
enum copy_layout { COPY_PACKED, COPY_PLAIN, COPY_IP };

/* Builds copy c of l in weight type wt from the stacked parts. */
static int linear_make_copy(struct eng_linear *l, struct eng_wcopy *c, enum eng_wtype wt,
                            int rep_rows, enum copy_layout layout,
                            const struct eng_weight_part *parts, int n_parts,
                            struct kc_error *err) {
    const bool plain_layout = layout == COPY_PLAIN;
    const int n = l->n_out, k = l->n_in;
    size_t plain_bytes;
    void *plain = NULL;
    float *row_tmp = NULL;
    int rc;
    if (!kc_size_mul((size_t)n, (size_t)k, &plain_bytes) ||
        !kc_size_mul(plain_bytes, wt_size(wt), &plain_bytes)) {
        return kc_error_set(err, KC_ERANGE, "linear %d x %d: size overflows", n, k);
    }
    plain = kc_aligned_alloc(plain_bytes);
    row_tmp = kc_calloc((size_t)k, sizeof(float));
    if (plain == NULL || row_tmp == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "linear %d x %d: out of memory", n, k);
        goto fail;
    }
    if (wt == ENG_WTYPE_INT8) {
        c->wscale = kc_aligned_alloc((size_t)n * sizeof(float));
        dnnl_memory_desc_t s_md;
        const dnnl_dims_t s_dims = {n};
        if (c->wscale == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "linear %d x %d: out of memory", n, k);
            goto fail;
        }
        if (dnnl_memory_desc_init_by_tag(&s_md, 1, s_dims, dnnl_f32, dnnl_a) != dnnl_success ||
            dnnl_memory_create(&c->wscale_mem, &s_md, l->engine, c->wscale) != dnnl_success) {
            rc = kc_error_set(err, KC_EBACKEND, "oneDNN: int8 scales memory of %d x %d", n, k);
            goto fail;
        }
    }
    stack_parts(parts, n_parts, k, wt, plain, c->wscale, row_tmp);
    c->wt = wt;
    c->plain = plain_layout;
    c->ip = layout == COPY_IP;
    c->rep_rows = layout == COPY_PACKED ? rep_rows : 1;
    if (plain_layout) {
        const dnnl_dims_t dims = {k, n};
        const dnnl_dims_t strides = {1, k}; /* W^T view of [n, k] row-major: format `ba` */
        if (dnnl_memory_desc_init_by_strides(&c->md, 2, dims, wt_dnnl(wt), strides) !=
            dnnl_success) {
            rc = kc_error_set(err, KC_EBACKEND, "oneDNN: plain %d x %d weights md", n, k);
            goto fail;
        }
        c->data = plain;
        c->bytes = plain_bytes;
        plain = NULL;
    } else if (c->ip) {
        KC_ASSERT(wt == ENG_WTYPE_INT8);
        rc = ip_wmd(l->engine, n, k, &c->md, err);
        if (rc != 0) {
            goto fail;
        }
        dnnl_primitive_desc_t pd = NULL;
        if (copy_pd(l->engine, c, ENG_DECODE_MAX_M, n, k, false, &pd) == dnnl_success) {
            c->rep_rows = ENG_DECODE_MAX_M;
        }
        dnnl_primitive_desc_destroy(pd);
        rc = pack_weights(l->engine, plain, n, k, wt, true, &c->md, &c->data, &c->bytes, err);
        if (rc != 0) {
            goto fail;
        }
    } else {
        rc = preferred_wmd(l->engine, rep_rows, n, k, wt, prim_bias(l, wt), &c->md, err);
        if (rc != 0) {
            goto fail;
        }
        rc = pack_weights(l->engine, plain, n, k, wt, false, &c->md, &c->data, &c->bytes, err);
        if (rc != 0) {
            goto fail;
        }
    }
    dnnl_status_t st = dnnl_memory_create(&c->mem, &c->md, l->engine, c->data);
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND, "oneDNN: weights memory (status %d)", (int)st);
        goto fail;
    }
    rc = 0;
fail:
    kc_aligned_free(plain);
    free(row_tmp);
    return rc;
}

/* Whether int8 prefill chunks of up to ENG_IP_PREFILL_MAX rows run on the one-row
 * inner-product copy c (invariant 8): only where it was measured faster, oneDNN's effective ISA
 * being AVX-512 VNNI without AMX, and where oneDNN takes c's layout for every such bucket. */
static bool short_chunks_on_ip(const struct eng_linear *l, const struct eng_wcopy *c) {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if (!c->ip || (isa != dnnl_cpu_isa_avx512_core_vnni && isa != dnnl_cpu_isa_avx512_core_bf16)) {
        return false;
    }
    for (int rows = 32; rows <= ENG_IP_PREFILL_MAX; rows += 32) {
        dnnl_primitive_desc_t pd = NULL;
        const dnnl_status_t st = copy_pd(l->engine, c, rows, l->n_out, l->n_in, false, &pd);
        dnnl_primitive_desc_destroy(pd);
        if (st != dnnl_success) {
            return false;
        }
    }
    return true;
}

int eng_linear_create(const struct eng_weight_part *parts, int n_parts, int n_in,
                      enum eng_wtype prefill_wt, enum eng_wtype decode_wt, struct eng_linear **out,
                      struct kc_error *err) {
    if (parts == NULL || n_parts <= 0 || n_in <= 0) {
        return kc_error_set(err, KC_EINVAL, "linear: %d parts of %d inputs", n_parts, n_in);
    }
    if ((unsigned)prefill_wt > ENG_WTYPE_INT8 || (unsigned)decode_wt > ENG_WTYPE_INT8) {
        return kc_error_set(err, KC_EINVAL, "linear: bad weight type");
    }
    long long n_out = 0;
    bool any_bias = false;
    for (int p = 0; p < n_parts; p++) {
        if (parts[p].data == NULL || parts[p].rows <= 0 || !dtype_ok(parts[p].dtype)) {
            return kc_error_set(err, KC_EINVAL, "linear: part %d has no data, no rows or dtype %d",
                                p, (int)parts[p].dtype);
        }
        n_out += parts[p].rows;
        any_bias = any_bias || parts[p].bias != NULL;
    }
    if (n_out > INT_MAX / 2) {
        return kc_error_set(err, KC_ERANGE, "linear: %lld outputs is too many", n_out);
    }
    struct eng_linear *l = kc_calloc(1, sizeof(*l));
    int rc;
    if (l == NULL) {
        return kc_error_set(err, KC_ENOMEM, "linear: out of memory");
    }
    l->n_out = (int)n_out;
    l->n_in = n_in;
    l->prefill_wt = prefill_wt;
    l->decode_wt = decode_wt;
    dnnl_status_t st = dnnl_engine_create(&l->engine, dnnl_cpu, 0);
    if (st != dnnl_success) {
        rc =
            kc_error_set(err, KC_EBACKEND, "oneDNN: cannot create CPU engine (status %d)", (int)st);
        goto fail;
    }
    if (any_bias) {
        l->bias = kc_aligned_alloc((size_t)l->n_out * sizeof(float));
        if (l->bias == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "linear: out of memory");
            goto fail;
        }
        int row0 = 0;
        for (int p = 0; p < n_parts; p++) {
            if (parts[p].bias != NULL) {
                eng_dtype_to_f32(parts[p].dtype, parts[p].bias, l->bias + row0,
                                 (size_t)parts[p].rows);
            }
            row0 += parts[p].rows;
        }
        dnnl_memory_desc_t b_md;
        const dnnl_dims_t b_dims = {1, l->n_out};
        st = dnnl_memory_desc_init_by_tag(&b_md, 2, b_dims, dnnl_f32, dnnl_ab);
        if (st == dnnl_success) {
            st = dnnl_memory_create(&l->bias_mem, &b_md, l->engine, l->bias);
        }
        if (st != dnnl_success) {
            rc = kc_error_set(err, KC_EBACKEND, "oneDNN: bias memory (status %d)", (int)st);
            goto fail;
        }
    }
    rc = linear_make_copy(l, &l->copy[0], prefill_wt, ENG_LINEAR_CHUNK, COPY_PACKED, parts, n_parts,
                          err);
    if (rc != 0) {
        goto fail;
    }
    l->n_copies = 1;
    l->prefill_copy = 0;
    /* One-row steps run over the plain matrix (invariant 6), int8 over an inner product's
     * packed layout, which also serves 2..ENG_DECODE_MAX_M rows where oneDNN takes it for
     * them (invariant 8). */
    rc = linear_make_copy(l, &l->copy[1], decode_wt, 1,
                          decode_wt == ENG_WTYPE_INT8 ? COPY_IP : COPY_PLAIN, parts, n_parts, err);
    if (rc != 0) {
        goto fail;
    }
    l->gemv_copy = l->n_copies++;
    if (l->copy[l->gemv_copy].ip && l->copy[l->gemv_copy].rep_rows == ENG_DECODE_MAX_M) {
        l->decode_copy = l->gemv_copy;
    } else if (decode_wt != prefill_wt) {
        /* Packed for one row: the layout oneDNN picks for 16 rows read weights at 0.67 of
         * stream bandwidth against 0.90 with this one (TinyLlama shapes, one thread). */
        rc = linear_make_copy(l, &l->copy[2], decode_wt, 1, COPY_PACKED, parts, n_parts, err);
        if (rc != 0) {
            goto fail;
        }
        l->decode_copy = l->n_copies++;
    } else {
        l->decode_copy = l->prefill_copy;
    }
    l->short_copy = prefill_wt == ENG_WTYPE_INT8 && short_chunks_on_ip(l, &l->copy[l->gemv_copy])
                        ? l->gemv_copy
                        : l->prefill_copy;
    *out = l;
    return 0;
fail:
    eng_linear_free(l);
    return rc;
}

int eng_linear_n_out(const struct eng_linear *l) {
    return l->n_out;
}

int eng_linear_n_in(const struct eng_linear *l) {
    return l->n_in;
}

size_t eng_linear_bytes(const struct eng_linear *l) {
    size_t total = 0;
    for (int i = 0; i < l->n_copies; i++) {
        total += l->copy[i].bytes;
    }
    return total;
}

/* Row count of the primitive that runs a prefill chunk of r rows (invariant 3). */
static int chunk_bucket(int r) {
    if (r >= ENG_LINEAR_CHUNK) {
        return ENG_LINEAR_CHUNK;
    }
    if (r <= 128) {
        return (r + 31) / 32 * 32;
    }
    const int b = (r + 63) / 64 * 64;
    return b < ENG_LINEAR_CHUNK ? b : ENG_LINEAR_CHUNK;
}

/* The copy a primitive of `rows` rows reads: a decode step's exact row count, or a prefill
 * chunk's bucket. */
static int copy_for_rows(const struct eng_linear *l, int rows) {
    return rows == 1                    ? l->gemv_copy
           : rows <= ENG_DECODE_MAX_M   ? l->decode_copy
           : rows <= ENG_IP_PREFILL_MAX ? l->short_copy
                                        : l->prefill_copy;
}

/* The copy the first block of an m-row forward reads. */
static int copy_for_forward(const struct eng_linear *l, int m) {
    return copy_for_rows(l, m <= ENG_DECODE_MAX_M ? m : chunk_bucket(m));
}

size_t eng_linear_bytes_read(const struct eng_linear *l, int m) {
    return l->copy[copy_for_forward(l, m)].bytes;
}

int eng__linear_copy_for_rows(const struct eng_linear *l, int m) {
    return copy_for_forward(l, m);
}

/* ---- primitive cache ---- */

static size_t prim_hash(int n, int k, int rows, enum eng_wtype wt, bool bias, int team) {
    uint64_t h = 1469598103934665603ull;
    const uint64_t v[6] = {(uint64_t)n,  (uint64_t)k,    (uint64_t)rows,
                           (uint64_t)wt, (uint64_t)bias, (uint64_t)team};
    for (int i = 0; i < 6; i++) {
        h = (h ^ v[i]) * 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 29));
}

static struct eng_prim *prim_lookup(const struct eng_dnn *dnn, const struct eng_linear *l,
                                    const struct eng_wcopy *c, int rows, int team) {
    const bool bias = prim_bias(l, c->wt);
    size_t i = prim_hash(l->n_out, l->n_in, rows, c->wt, bias, team) & (dnn->cap - 1);
    for (;;) {
        const struct eng_prim *p = dnn->slots[i];
        if (p == NULL) {
            return NULL;
        }
        if (p->n == l->n_out && p->k == l->n_in && p->rows == rows && p->wt == c->wt &&
            p->bias == bias && p->team == team && p->ip == c->ip &&
            dnnl_memory_desc_equal(&p->wmd, &c->md)) {
            return dnn->slots[i];
        }
        i = (i + 1) & (dnn->cap - 1);
    }
}

static int prim_insert(struct eng_dnn *dnn, struct eng_prim *p) {
    if ((dnn->count + 1) * 2 > dnn->cap) {
        const size_t cap = dnn->cap * 2;
        struct eng_prim **slots = kc_calloc(cap, sizeof(*slots));
        if (slots == NULL) {
            return KC_ENOMEM;
        }
        for (size_t i = 0; i < dnn->cap; i++) {
            struct eng_prim *q = dnn->slots[i];
            if (q != NULL) {
                size_t j = prim_hash(q->n, q->k, q->rows, q->wt, q->bias, q->team) & (cap - 1);
                while (slots[j] != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                slots[j] = q;
            }
        }
        free(dnn->slots);
        dnn->slots = slots;
        dnn->cap = cap;
    }
    size_t j = prim_hash(p->n, p->k, p->rows, p->wt, p->bias, p->team) & (dnn->cap - 1);
    while (dnn->slots[j] != NULL) {
        j = (j + 1) & (dnn->cap - 1);
    }
    dnn->slots[j] = p;
    dnn->count++;
    return 0;
}

/* Creates the primitive for `rows` rows of copy c on a team of `team` threads (invariants 2
 * and 5) and grows the scratch. */
static int prim_create(struct eng_dnn *dnn, const struct eng_linear *l, const struct eng_wcopy *c,
                       int rows, int team, struct eng_prim **out, struct kc_error *err) {
    const bool bias = prim_bias(l, c->wt);
    const int n = l->n_out, k = l->n_in;
    dnnl_primitive_desc_t pd = NULL;
    int rc = KC_EBACKEND;
    struct eng_prim *p = kc_calloc(1, sizeof(*p));
    if (p == NULL) {
        return kc_error_set(err, KC_ENOMEM, "oneDNN primitive: out of memory");
    }
    p->n = n;
    p->k = k;
    p->rows = rows;
    p->wt = c->wt;
    p->bias = bias;
    p->wmd = c->md;
    p->exec_rows = rows;
    p->team = team;
    p->ip = c->ip;
    set_team(team);
    dnnl_status_t st = copy_pd(dnn->engine, c, rows, n, k, bias, &pd);
    if (st != dnnl_success && c->rep_rows > rows) {
        /* oneDNN refuses the packed layout for this row count: run the row count the
         * layout was chosen (or checked) for, padding rows (invariant 2). */
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        p->exec_rows = c->rep_rows;
        st = copy_pd(dnn->engine, c, p->exec_rows, n, k, bias, &pd);
    }
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND,
                          "oneDNN: no %s matmul for %d x %d x %d with packed weights (status %d)",
                          wt_name(c->wt), rows, n, k, (int)st);
        goto fail;
    }
    st = dnnl_primitive_create(&p->prim, pd);
    if (st == dnnl_success) {
        st = dnnl_memory_create(&p->src, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                dnn->engine, DNNL_MEMORY_NONE);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_create(&p->dst, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                dnn->engine, DNNL_MEMORY_NONE);
    }
    const dnnl_memory_desc_t *pad_md =
        dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (st == dnnl_success) {
        st = dnnl_memory_create(&p->pad, pad_md, dnn->engine, DNNL_MEMORY_NONE);
    }
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND, "oneDNN: creating %s matmul %d x %d x %d (status %d)",
                          wt_name(c->wt), rows, n, k, (int)st);
        goto fail;
    }
    /* Scratch: activations for the padded/converted rows, padded dst, scratchpad. */
    const size_t er = (size_t)p->exec_rows;
    KC_ASSERT(er <= ENG_LINEAR_CHUNK); /* dnn->xscale */
    if (scratch_grow(&dnn->act, &dnn->act_bytes, er * (size_t)k * sizeof(float)) != 0 ||
        scratch_grow((void **)&dnn->out, &dnn->out_bytes, er * (size_t)n * sizeof(float)) != 0 ||
        scratch_grow(&dnn->pad, &dnn->pad_bytes, dnnl_memory_desc_get_size(pad_md) + 64) != 0) {
        rc = kc_error_set(err, KC_ENOMEM, "oneDNN scratch for %d x %d x %d: out of memory",
                          p->exec_rows, n, k);
        goto fail;
    }
    if (prim_insert(dnn, p) != 0) {
        rc = kc_error_set(err, KC_ENOMEM, "oneDNN primitive cache: out of memory");
        goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    *out = p;
    return 0;
fail:
    dnnl_primitive_desc_destroy(pd);
    prim_free(p);
    return rc;
}

/* ---- forward ---- */

static void cvt_bf16_par(const float *x, size_t n, uint16_t *y) {
    if (n < ENG_CVT_PAR_MIN) {
        cvt_row_bf16(x, n, y);
        return;
    }
    const size_t block = 4096;
    const long n_blocks = (long)((n + block - 1) / block);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long b = 0; b < n_blocks; b++) {
        const size_t i0 = (size_t)b * block;
        const size_t len = n - i0 < block ? n - i0 : block;
        cvt_row_bf16(x + i0, len, y + i0);
    }
}

/* Quantizes one row of k f32 to s8, symmetric (invariant 7); returns its scale. */
static float quant_act_row(const float *restrict xr, int k, int8_t *restrict qr) {
#if defined(__AVX512F__)
    __m512 vmax = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xr + i)));
    }
    float amax = _mm512_reduce_max_ps(vmax);
    for (; i < k; i++) {
        amax = fmaxf(amax, fabsf(xr[i]));
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= k; i += 16) {
        /* cvtps rounds to nearest even; |x * inv| <= 127 (+ rounding) saturates. */
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + i), vinv));
        _mm_storeu_si128((__m128i *)(void *)(qr + i), _mm512_cvtsepi32_epi8(v));
    }
    for (; i < k; i++) {
        const float v = nearbyintf(xr[i] * inv);
        qr[i] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
    return amax / 127.0f;
#else
    return quant_row_s8(xr, k, 127, qr);
#endif
}

/* Quantizes rows x k f32 (row stride k) to s8 per row; writes each row's scale to scale[].
 * Few rows stay out of OpenMP (invariant 10). */
static void quant_act_rows(const float *restrict x, int rows, int k, int8_t *restrict q,
                           float *restrict scale) {
    ENG_FOR_ROWS(rows >= ENG_QUANT_PAR_ROWS, r, rows,
                 scale[r] = quant_act_row(x + (size_t)r * (size_t)k, k, q + (size_t)r * (size_t)k));
}

/* Row i of an int8 product's s32-exact output d[., n]: y_i = d_i * s (+ b). */
static void scale_row(const float *restrict d, int i, int n, float s, const float *restrict b,
                      float *restrict y) {
    const float *restrict di = d + (size_t)i * (size_t)n;
    float *restrict yi = y + (size_t)i * (size_t)n;
    if (b != NULL) {
        for (int j = 0; j < n; j++) {
            yi[j] = di[j] * s + b[j];
        }
    } else {
        for (int j = 0; j < n; j++) {
            yi[j] = di[j] * s;
        }
    }
}

/* Runs rows r (<= bucket's rows) of x through the cached primitive for `rows`. */
static void run_block(struct eng_dnn *dnn, const struct eng_linear *l, const struct eng_wcopy *c,
                      int rows, const float *x, int r, float *y) {
    const int n = l->n_out, k = l->n_in;
    const int team = dnn_team(dnn);
    set_team(team);
    struct eng_prim *p = prim_lookup(dnn, l, c, rows, team);
    if (p == NULL) {
        struct kc_error err = {0};
        const int rc = prim_create(dnn, l, c, rows, team, &p, &err);
        /* Creation failing here means eng_linear_prepare was skipped and the machine cannot
         * run this shape: a programmer error for a kernel. */
        if (rc != 0) {
            kc__assert_fail(err.msg, __FILE__, __LINE__, __func__);
        }
    }
    const bool padded = p->exec_rows > r;
    const bool int8 = c->wt == ENG_WTYPE_INT8;
    const void *src = x;
    if (int8) {
        quant_act_rows(x, r, k, dnn->act, dnn->xscale);
        src = dnn->act;
    } else if (c->wt == ENG_WTYPE_BF16) {
        cvt_bf16_par(x, (size_t)r * (size_t)k, dnn->act);
        src = dnn->act;
    } else if (padded) {
        memcpy(dnn->act, x, (size_t)r * (size_t)k * sizeof(float));
        src = dnn->act;
    }
    float *dst = padded ? dnn->out : y;
    DNN_ASSERT(dnnl_memory_set_data_handle(p->src, (void *)(uintptr_t)src));
    DNN_ASSERT(dnnl_memory_set_data_handle(p->dst, dst));
    DNN_ASSERT(dnnl_memory_set_data_handle(p->pad, dnn->pad));
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->src},
                               {DNNL_ARG_WEIGHTS, c->mem},
                               {DNNL_ARG_DST, p->dst},
                               {DNNL_ARG_SCRATCHPAD, p->pad},
                               {DNNL_ARG_BIAS, l->bias_mem}};
    if (int8) {
        args[4] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_OUTPUT_SCALES, c->wscale_mem};
    }
    DNN_ASSERT(
        dnnl_primitive_execute(p->prim, dnn->stream, int8 || l->bias_mem != NULL ? 5 : 4, args));
    DNN_ASSERT(dnnl_stream_wait(dnn->stream));
    if (int8) {
        /* Row scales and bias (invariant 7), copying padded rows out on the way. */
        ENG_FOR_ROWS(r >= ENG_QUANT_PAR_ROWS, i, r,
                     scale_row(dst, i, n, dnn->xscale[i], l->bias, y));
    } else if (padded) {
        memcpy(y, dnn->out, (size_t)r * (size_t)n * sizeof(float));
    }
}

void eng_linear_forward(struct eng_dnn *dnn, const struct eng_linear *l, const float *x, int m,
                        float *y) {
    KC_ASSERT(dnn != NULL && l != NULL && x != NULL && y != NULL && m > 0);
    const size_t k = (size_t)l->n_in, n = (size_t)l->n_out;
    if (m <= ENG_DECODE_MAX_M) {
        run_block(dnn, l, &l->copy[copy_for_rows(l, m)], m, x, m, y);
        return;
    }
    for (int off = 0; off < m; off += ENG_LINEAR_CHUNK) {
        const int r = m - off < ENG_LINEAR_CHUNK ? m - off : ENG_LINEAR_CHUNK;
        const int b = chunk_bucket(r);
        run_block(dnn, l, &l->copy[copy_for_rows(l, b)], b, x + (size_t)off * k, r,
                  y + (size_t)off * n);
    }
}

/* run_block for rows already in bf16 (eng_linear_forward_bf16): the same primitive, no
 * conversion; only a padded block copies its rows into the activation scratch. */
static void run_block_bf16(struct eng_dnn *dnn, const struct eng_linear *l,
                           const struct eng_wcopy *c, int rows, const uint16_t *x, int r,
                           float *y) {
    const int n = l->n_out, k = l->n_in;
    const int team = dnn_team(dnn);
    set_team(team);
    struct eng_prim *p = prim_lookup(dnn, l, c, rows, team);
    if (p == NULL) {
        struct kc_error err = {0};
        if (prim_create(dnn, l, c, rows, team, &p, &err) != 0) {
            kc__assert_fail(err.msg, __FILE__, __LINE__, __func__);
        }
    }
    const bool padded = p->exec_rows > r;
    const void *src = x;
    if (padded) {
        memcpy(dnn->act, x, (size_t)r * (size_t)k * sizeof(uint16_t));
        src = dnn->act;
    }
    float *dst = padded ? dnn->out : y;
    DNN_ASSERT(dnnl_memory_set_data_handle(p->src, (void *)(uintptr_t)src));
    DNN_ASSERT(dnnl_memory_set_data_handle(p->dst, dst));
    DNN_ASSERT(dnnl_memory_set_data_handle(p->pad, dnn->pad));
    const dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->src},
                                     {DNNL_ARG_WEIGHTS, c->mem},
                                     {DNNL_ARG_DST, p->dst},
                                     {DNNL_ARG_SCRATCHPAD, p->pad},
                                     {DNNL_ARG_BIAS, l->bias_mem}};
    DNN_ASSERT(dnnl_primitive_execute(p->prim, dnn->stream, l->bias_mem != NULL ? 5 : 4, args));
    DNN_ASSERT(dnnl_stream_wait(dnn->stream));
    if (padded) {
        memcpy(y, dnn->out, (size_t)r * (size_t)n * sizeof(float));
    }
}

void eng_linear_forward_bf16(struct eng_dnn *dnn, const struct eng_linear *l, const uint16_t *x,
                             int m, float *y) {
    KC_ASSERT(dnn != NULL && l != NULL && x != NULL && y != NULL && m > ENG_DECODE_MAX_M);
    const struct eng_wcopy *c = &l->copy[l->prefill_copy];
    KC_ASSERT(c->wt == ENG_WTYPE_BF16);
    const size_t k = (size_t)l->n_in, n = (size_t)l->n_out;
    for (int off = 0; off < m; off += ENG_LINEAR_CHUNK) {
        const int r = m - off < ENG_LINEAR_CHUNK ? m - off : ENG_LINEAR_CHUNK;
        run_block_bf16(dnn, l, c, chunk_bucket(r), x + (size_t)off * k, r, y + (size_t)off * n);
    }
}

enum eng_wtype eng_linear_prefill_wtype(const struct eng_linear *l) {
    return l->copy[l->prefill_copy].wt;
}

/* Creates every primitive of l for up to max_m rows on a team of `team` threads. */
static int prepare_team(struct eng_dnn *dnn, const struct eng_linear *l, int max_m, int team,
                        struct kc_error *err) {
    struct eng_prim *p;
    for (int m = 1; m <= max_m && m <= ENG_DECODE_MAX_M; m++) {
        const struct eng_wcopy *c = &l->copy[copy_for_rows(l, m)];
        if (prim_lookup(dnn, l, c, m, team) == NULL) {
            const int rc = prim_create(dnn, l, c, m, team, &p, err);
            if (rc != 0) {
                return rc;
            }
        }
    }
    /* Up to one chunk, the rows themselves pick the bucket; beyond, the last partial chunk
     * can have any size. */
    const int r0 = max_m > ENG_LINEAR_CHUNK ? 1 : ENG_DECODE_MAX_M + 1;
    const int r1 = max_m > ENG_LINEAR_CHUNK ? ENG_LINEAR_CHUNK : max_m;
    for (int r = r0; r <= r1; r++) {
        const int b = chunk_bucket(r);
        const struct eng_wcopy *c = &l->copy[copy_for_rows(l, b)];
        if (prim_lookup(dnn, l, c, b, team) == NULL) {
            const int rc = prim_create(dnn, l, c, b, team, &p, err);
            if (rc != 0) {
                return rc;
            }
        }
    }
    return 0;
}

int eng_linear_prepare(struct eng_dnn *dnn, const struct eng_linear *l, int max_m,
                       struct kc_error *err) {
    KC_ASSERT(dnn != NULL && l != NULL);
    /* With a team source (elastic teams) every team 1..n_threads can be handed out, so all
     * are prepared and a step never creates a primitive (invariant 4). Capped at
     * ENG_PREPARE_TEAMS_MAX threads: the primitive count grows linearly with the teams, and
     * beyond it start-up and memory would grow for sizes the split rarely hands out; those
     * are still created lazily on first use. */
    if (tl_team_source != NULL && dnn->n_threads <= ENG_PREPARE_TEAMS_MAX) {
        for (int t = 1; t <= dnn->n_threads; t++) {
            const int rc = prepare_team(dnn, l, max_m, t, err);
            if (rc != 0) {
                return rc;
            }
        }
        set_team(dnn_team(dnn));
        return 0;
    }
    return prepare_team(dnn, l, max_m, dnn_team(dnn), err);
}

void eng__linear_ref(const struct eng_weight_part *parts, int n_parts, int n_in, const float *x,
                     int m, float *y) {
    int n_out = 0;
    for (int p = 0; p < n_parts; p++) {
        n_out += parts[p].rows;
    }
    for (int i = 0; i < m; i++) {
        int o = 0;
        for (int p = 0; p < n_parts; p++) {
            const size_t esz = eng_dtype_size(parts[p].dtype);
            for (int r = 0; r < parts[p].rows; r++, o++) {
                const char *w = (const char *)parts[p].data + (size_t)r * (size_t)n_in * esz;
                float acc = 0.0f;
                for (int j = 0; j < n_in; j++) {
                    float wj;
                    eng_dtype_to_f32(parts[p].dtype, w + (size_t)j * esz, &wj, 1);
                    acc += x[(size_t)i * (size_t)n_in + (size_t)j] * wj;
                }
                if (parts[p].bias != NULL) {
                    float b;
                    eng_dtype_to_f32(parts[p].dtype, (const char *)parts[p].bias + (size_t)r * esz,
                                     &b, 1);
                    acc += b;
                }
                y[(size_t)i * (size_t)n_out + (size_t)o] = acc;
            }
        }
    }
}

/* ---- for engine/probe.c (ops_dnnl_internal.h) ---- */

dnnl_engine_t eng__dnn_engine(const struct eng_dnn *dnn) {
    return dnn->engine;
}

dnnl_stream_t eng__dnn_stream(const struct eng_dnn *dnn) {
    return dnn->stream;
}

dnnl_status_t eng__dnn_matmul_pd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt,
                                 const dnnl_memory_desc_t *w, bool bias, bool gemv,
                                 dnnl_primitive_desc_t *pd) {
    return matmul_pd(engine, rows, n, k, wt, w, bias, gemv, pd);
}

int eng__dnn_ip_wmd(dnnl_engine_t engine, int n, int k, dnnl_memory_desc_t *out,
                    struct kc_error *err) {
    return ip_wmd(engine, n, k, out, err);
}

dnnl_status_t eng__dnn_ip_pd_s8(dnnl_engine_t engine, int rows, int n, int k,
                                const dnnl_memory_desc_t *w, dnnl_primitive_desc_t *pd) {
    return ip_pd_s8(engine, rows, n, k, w, pd);
}

int eng__dnn_preferred_wmd(dnnl_engine_t engine, int rows, int n, int k, enum eng_wtype wt,
                           bool bias, dnnl_memory_desc_t *out, struct kc_error *err) {
    return preferred_wmd(engine, rows, n, k, wt, bias, out, err);
}

void eng_dnnl_version(char *out, size_t cap) {
    const dnnl_version_t *v = dnnl_version();
    snprintf(out, cap, "%d.%d.%d (commit %s)", v->major, v->minor, v->patch,
             v->hash != NULL ? v->hash : "unknown");
}
