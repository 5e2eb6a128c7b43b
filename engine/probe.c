/*
 * probe.c — the machine measurements behind `kvcast bench` (see probe.h): single-GEMM
 * GFLOP/s, GB/s of weight matrices streamed through decode-shaped matmul primitives, and a
 * stream triad. Nothing in the serving path calls them. Built on the primitive-desc helpers
 * of ops_dnnl.c (ops_dnnl_internal.h), so a probe runs the same oneDNN kernels a forward does.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/kc.h"
#include "engine/io/dtype.h"
#include "engine/ops.h"
#include "engine/ops_dnnl_internal.h"
#include "engine/probe.h"

/* One weight matrix of eng_weights_probe: its primitive and memory objects. */
struct probe_mat {
    dnnl_primitive_t prim;
    dnnl_memory_t src, w, dst, pad;
    dnnl_memory_t osc; /* int8: the runtime per-column output scales (all 1) */
    void *wbuf, *padbuf;
    float *oscbuf;
    size_t bytes;
};

struct eng_weights_probe {
    struct eng_dnn *dnn;
    int rows, n_mats;
    size_t bytes; /* weights read by one pass */
    struct probe_mat *mats;
    void *x;
    float *y;
};

/* Seconds of one pass of every matrix through its primitive. */
static double probe_pass_s(struct eng_weights_probe *p) {
    set_team(eng_dnn_threads(p->dnn));
    const double t0 = kc_now_s();
    for (int i = 0; i < p->n_mats; i++) {
        const struct probe_mat *q = &p->mats[i];
        const dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, q->src},
                                         {DNNL_ARG_WEIGHTS, q->w},
                                         {DNNL_ARG_DST, q->dst},
                                         {DNNL_ARG_SCRATCHPAD, q->pad},
                                         {DNNL_ARG_ATTR_OUTPUT_SCALES, q->osc}};
        DNN_ASSERT(
            dnnl_primitive_execute(q->prim, eng__dnn_stream(p->dnn), q->osc != NULL ? 5 : 4, args));
    }
    DNN_ASSERT(dnnl_stream_wait(eng__dnn_stream(p->dnn)));
    return kc_now_s() - t0;
}

void eng_weights_probe_free(struct eng_weights_probe *p) {
    if (p == NULL) {
        return;
    }
    for (int i = 0; i < p->n_mats && p->mats != NULL; i++) {
        struct probe_mat *q = &p->mats[i];
        dnnl_memory_destroy(q->src);
        dnnl_memory_destroy(q->w);
        dnnl_memory_destroy(q->dst);
        dnnl_memory_destroy(q->pad);
        dnnl_memory_destroy(q->osc);
        dnnl_primitive_destroy(q->prim);
        kc_aligned_free(q->oscbuf);
        kc_aligned_free(q->wbuf);
        kc_aligned_free(q->padbuf);
    }
    free(p->mats);
    kc_aligned_free(p->x);
    kc_aligned_free(p->y);
    free(p);
}

int eng_weights_probe_create(struct eng_dnn *dnn, enum eng_wtype wt, int rows, int layout_rows,
                             const int *k, const int *n, int n_mats, struct eng_weights_probe **out,
                             struct kc_error *err) {
    KC_ASSERT(dnn != NULL && rows > 0 && layout_rows >= 0 && n_mats > 0);
    const bool plain = layout_rows == 0;
    struct eng_weights_probe *p = kc_calloc(1, sizeof(*p));
    int max_k = 0, max_n = 0;
    for (int i = 0; i < n_mats; i++) {
        max_k = k[i] > max_k ? k[i] : max_k;
        max_n = n[i] > max_n ? n[i] : max_n;
    }
    if (p == NULL || (p->mats = kc_calloc((size_t)n_mats, sizeof(*p->mats))) == NULL ||
        (p->x = kc_aligned_alloc((size_t)rows * (size_t)max_k * wt_size(wt))) == NULL ||
        (p->y = kc_aligned_alloc((size_t)rows * (size_t)max_n * sizeof(float))) == NULL) {
        eng_weights_probe_free(p);
        return kc_error_set(err, KC_ENOMEM, "weights probe: out of memory");
    }
    p->dnn = dnn;
    p->rows = rows;
    p->n_mats = n_mats;
    dnnl_engine_t engine = eng__dnn_engine(dnn);
    set_team(eng_dnn_threads(dnn));
    for (int i = 0; i < n_mats; i++) {
        struct probe_mat *q = &p->mats[i];
        dnnl_memory_desc_t wmd;
        const dnnl_dims_t dims = {k[i], n[i]}, strides = {1, k[i]};
        dnnl_primitive_desc_t pd = NULL;
        dnnl_status_t st = dnnl_success;
        /* int8 decode rows run an inner product on its one-row layout (ops_dnnl.c
         * invariant 8): the `plain` probe of int8 measures that path. */
        const bool ip = plain && wt == ENG_WTYPE_INT8;
        if (ip) {
            if (eng__dnn_ip_wmd(engine, n[i], k[i], &wmd, NULL) != 0) {
                st = dnnl_unimplemented;
            }
        } else if (plain) {
            st = dnnl_memory_desc_init_by_strides(&wmd, 2, dims, wt_dnnl(wt), strides);
        } else if (eng__dnn_preferred_wmd(engine, layout_rows, n[i], k[i], wt, false, &wmd, NULL) !=
                   0) {
            st = dnnl_unimplemented;
        }
        if (st == dnnl_success) {
            st = ip ? eng__dnn_ip_pd_s8(engine, rows, n[i], k[i], &wmd, &pd)
                    : eng__dnn_matmul_pd(engine, rows, n[i], k[i], wt, &wmd, false,
                                         plain && rows == 1, &pd);
        }
        if (st == dnnl_success) {
            st = dnnl_primitive_create(&q->prim, pd);
        }
        const dnnl_memory_desc_t *pad_md =
            st == dnnl_success ? dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)
                               : NULL;
        if (st == dnnl_success) {
            q->bytes = dnnl_memory_desc_get_size(&wmd);
            p->bytes += q->bytes;
            q->wbuf = kc_aligned_alloc(q->bytes);
            q->padbuf = kc_aligned_alloc(dnnl_memory_desc_get_size(pad_md) + 64);
            st = q->wbuf != NULL && q->padbuf != NULL ? dnnl_success : dnnl_out_of_memory;
        }
        if (st == dnnl_success) {
            /* Small positive values: timing must not meet denormals or NaNs. */
            for (size_t j = 0; j < q->bytes / wt_size(wt); j++) {
                const float v = 0.01f * (float)(1 + j % 7);
                if (wt == ENG_WTYPE_BF16) {
                    ((uint16_t *)q->wbuf)[j] = eng_f32_to_bf16(v);
                } else if (wt == ENG_WTYPE_INT8) {
                    ((int8_t *)q->wbuf)[j] = (int8_t)(1 + j % 7);
                } else {
                    ((float *)q->wbuf)[j] = v;
                }
            }
            st = dnnl_memory_create(&q->src, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                    engine, p->x);
        }
        if (st == dnnl_success) {
            st = dnnl_memory_create(&q->w, &wmd, engine, q->wbuf);
        }
        if (st == dnnl_success) {
            st = dnnl_memory_create(&q->dst, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                    engine, p->y);
        }
        if (st == dnnl_success) {
            st = dnnl_memory_create(&q->pad, pad_md, engine, q->padbuf);
        }
        if (st == dnnl_success && wt == ENG_WTYPE_INT8) {
            dnnl_memory_desc_t s_md;
            const dnnl_dims_t s_dims = {n[i]};
            q->oscbuf = kc_aligned_alloc((size_t)n[i] * sizeof(float));
            st = q->oscbuf != NULL
                     ? dnnl_memory_desc_init_by_tag(&s_md, 1, s_dims, dnnl_f32, dnnl_a)
                     : dnnl_out_of_memory;
            for (int j = 0; st == dnnl_success && j < n[i]; j++) {
                q->oscbuf[j] = 1.0f;
            }
            if (st == dnnl_success) {
                st = dnnl_memory_create(&q->osc, &s_md, engine, q->oscbuf);
            }
        }
        dnnl_primitive_desc_destroy(pd);
        if (st != dnnl_success) {
            eng_weights_probe_free(p);
            return kc_error_set(err, KC_EBACKEND, "weights probe: %d x %d x %d %s (status %d)",
                                rows, n[i], k[i], wt_name(wt), (int)st);
        }
    }
    *out = p;
    return KC_OK;
}

double eng_weights_probe_run(struct eng_weights_probe *p) {
    return (double)p->bytes / probe_pass_s(p) * 1e-9;
}

double eng_dnn_gemm_gflops(struct eng_dnn *dnn, enum eng_wtype wt, int m, int n, int k, int iters) {
    KC_ASSERT(dnn != NULL && m > 0 && n > 0 && k > 0);
    struct eng_weights_probe *p = NULL;
    if (eng_weights_probe_create(dnn, wt, m, m, &k, &n, 1, &p, NULL) != KC_OK) {
        return 0.0;
    }
    double best = 0.0;
    for (int it = -1; it < (iters > 0 ? iters : 1); it++) {
        const double g = 2.0 * m * (double)n * k / probe_pass_s(p) / 1e9;
        if (it >= 0 && g > best) {
            best = g; /* iteration -1 warms up caches and page mappings */
        }
    }
    eng_weights_probe_free(p);
    return best;
}

struct eng_triad {
    float *a, *b, *c;
    long n;
};

struct eng_triad *eng_triad_create(size_t bytes_per_array) {
    struct eng_triad *t = kc_calloc(1, sizeof(*t));
    const size_t n = bytes_per_array / sizeof(float);
    if (t == NULL || n == 0 || n > (size_t)LONG_MAX) {
        free(t);
        return NULL;
    }
    t->n = (long)n;
    t->a = kc_aligned_alloc(n * sizeof(float));
    t->b = kc_aligned_alloc(n * sizeof(float));
    t->c = kc_aligned_alloc(n * sizeof(float));
    if (t->a == NULL || t->b == NULL || t->c == NULL) {
        eng_triad_free(t);
        return NULL;
    }
    /* First touch from the team that will run the triad. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long i = 0; i < t->n; i++) {
        t->a[i] = 0.0f;
        t->b[i] = 1.0f;
        t->c[i] = 2.0f;
    }
    return t;
}

double eng_triad_run(struct eng_triad *t, int iters) {
    const float s = 3.0f;
    double best = 0.0;
    for (int it = 0; it < (iters > 0 ? iters : 1); it++) {
        float *restrict a = t->a;
        const float *restrict b = t->b, *restrict c = t->c;
        const double t0 = kc_now_s();
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (long i = 0; i < t->n; i++) {
            a[i] = b[i] + s * c[i];
        }
        const double gbs = 3.0 * (double)t->n * sizeof(float) / (kc_now_s() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    KC_ASSERT(t->a[t->n - 1] == 7.0f);
    return best;
}

/* Sums x[lo, hi) in one sequential stream, or, with `prefetch`, as two half-range streams
 * read in step, each asking for the line READ_PF_FLOATS ahead: the two ways a kernel can read
 * memory, measured by eng_triad_read. GCC vectors: one 64-byte load per line on any target. */
#define READ_PF_FLOATS 512 /* 2 KiB ahead: the best distance of a sweep on Zen 5 */
typedef float read_vec __attribute__((vector_size(64)));
static inline read_vec read_line(const float *p) {
    read_vec v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static float read_range(const float *x, long lo, long hi, bool prefetch) {
    read_vec a0 = {0}, a1 = {0};
    if (!prefetch) {
        for (long i = lo; i + 32 <= hi; i += 32) {
            a0 += read_line(x + i);
            a1 += read_line(x + i + 16);
        }
    } else {
        const long half = (hi - lo) / 2 / 16 * 16;
        const float *s0 = x + lo, *s1 = x + lo + half;
        for (long i = 0; i + 16 <= half; i += 16) {
            __builtin_prefetch(s0 + i + READ_PF_FLOATS, 0, 3);
            __builtin_prefetch(s1 + i + READ_PF_FLOATS, 0, 3);
            a0 += read_line(s0 + i);
            a1 += read_line(s1 + i);
        }
    }
    a0 += a1;
    float sum = 0.0f;
    for (int j = 0; j < 16; j++) {
        sum += a0[j];
    }
    return sum;
}

double eng_triad_read(struct eng_triad *t, bool prefetch) {
    float sum = 0.0f;
    const double t0 = kc_now_s();
#ifdef _OPENMP
#pragma omp parallel reduction(+ : sum)
#endif
    {
        int id = 0, nt = 1;
#ifdef _OPENMP
        id = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        /* The static shares eng_triad_create's first touch gave this thread. */
        const long lo = t->n * id / nt, hi = t->n * (id + 1) / nt;
        sum += read_range(t->b, lo, hi, prefetch) + read_range(t->c, lo, hi, prefetch);
    }
    const double s = kc_now_s() - t0;
    KC_ASSERT(sum > 0.0f); /* b and c hold 1 and 2: the reads cannot be elided */
    return 2.0 * (double)t->n * sizeof(float) / s / 1e9;
}

void eng_triad_free(struct eng_triad *t) {
    if (t != NULL) {
        kc_aligned_free(t->a);
        kc_aligned_free(t->b);
        kc_aligned_free(t->c);
        free(t);
    }
}
