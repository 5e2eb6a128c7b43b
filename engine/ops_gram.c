/*
 * ops_gram.c — A^T B on oneDNN 2.6 matmul (see ops_gram.h). One of the engine's oneDNN files
 * (ops_dnnl.c, probe.c, this one: the only ones that include dnnl.h); it takes the team setter
 * from ops_dnnl_internal.h.
 *
 * DESIGN invariants:
 *  1. A^T is never materialised: the matmul's source is A viewed as a p x n matrix with
 *     strides {1, p} (format `ba`), which oneDNN's GEMM-based matmul runs as a transposed
 *     operand.
 *  2. Primitives are cached per (n, p, q) in a small table; when it is full the oldest entry
 *     is replaced. Calibration uses two or three shapes per window length, so the table never
 *     churns in practice.
 *  3. Every creation and execution runs after omp_set_num_threads(n_threads): oneDNN bakes the
 *     team size into a primitive at creation.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/ops_gram.h"

#include <stdint.h>
#include <stdlib.h>

#include <oneapi/dnnl/dnnl.h>

#include "engine/ops_dnnl_internal.h" /* set_team */

#define GRAM_CACHE 8

struct gram_prim {
    int n, p, q;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c; /* handles set per call */
};

struct eng_gram {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int n_threads;
    struct gram_prim slot[GRAM_CACHE];
    int next; /* slot replaced next when the table is full */
};

static void prim_clear(struct gram_prim *s) {
    dnnl_memory_destroy(s->a);
    dnnl_memory_destroy(s->b);
    dnnl_memory_destroy(s->c);
    dnnl_primitive_destroy(s->prim);
    *s = (struct gram_prim){0};
}

int eng_gram_create(int n_threads, struct eng_gram **out, struct kc_error *err) {
    int rc;
    struct eng_gram *g = kc_calloc(1, sizeof(*g));
    if (g == NULL) {
        return kc_error_set(err, KC_ENOMEM, "gram: out of memory");
    }
    g->n_threads = n_threads;
    dnnl_status_t st = dnnl_engine_create(&g->engine, dnnl_cpu, 0);
    if (st == dnnl_success) {
        st = dnnl_stream_create(&g->stream, g->engine, dnnl_stream_default_flags);
    }
    if (st != dnnl_success) {
        rc = kc_error_set(err, KC_EBACKEND, "gram: oneDNN engine/stream (status %d)", (int)st);
        goto fail;
    }
    *out = g;
    return 0;
fail:
    eng_gram_free(g);
    return rc;
}

void eng_gram_free(struct eng_gram *g) {
    if (g == NULL) {
        return;
    }
    for (int i = 0; i < GRAM_CACHE; i++) {
        prim_clear(&g->slot[i]);
    }
    if (g->stream != NULL) {
        dnnl_stream_destroy(g->stream);
    }
    if (g->engine != NULL) {
        dnnl_engine_destroy(g->engine);
    }
    free(g);
}

/* Creates the primitive c[p, q] = (a viewed as [p, n], strides {1, p}) @ b[n, q] in s. */
static int prim_make(struct eng_gram *g, struct gram_prim *s, int n, int p, int q,
                     struct kc_error *err) {
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_matmul_desc_t desc;
    const dnnl_dims_t a_dims = {p, n}, a_strides = {1, p};
    const dnnl_dims_t b_dims = {n, q}, c_dims = {p, q};
    set_team(g->n_threads);
    dnnl_status_t st = dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, dnnl_f32, a_strides);
    if (st == dnnl_success) {
        st = dnnl_memory_desc_init_by_tag(&b_md, 2, b_dims, dnnl_f32, dnnl_ab);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_desc_init_by_tag(&c_md, 2, c_dims, dnnl_f32, dnnl_ab);
    }
    if (st == dnnl_success) {
        st = dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md);
    }
    if (st == dnnl_success) {
        st = dnnl_primitive_desc_create(&pd, &desc, NULL, g->engine, NULL);
    }
    if (st == dnnl_success) {
        st = dnnl_primitive_create(&s->prim, pd);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_create(&s->a, &a_md, g->engine, DNNL_MEMORY_NONE);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_create(&s->b, &b_md, g->engine, DNNL_MEMORY_NONE);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_create(&s->c, &c_md, g->engine, DNNL_MEMORY_NONE);
    }
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        prim_clear(s);
        return kc_error_set(err, KC_EBACKEND,
                            "gram: no oneDNN matmul for A^T B, %d x %d x %d "
                            "(status %d)",
                            p, n, q, (int)st);
    }
    s->n = n;
    s->p = p;
    s->q = q;
    return 0;
}

int eng_gram_atb(struct eng_gram *g, const float *a, const float *b, int n, int p, int q, float *c,
                 struct kc_error *err) {
    if (n <= 0 || p <= 0 || q <= 0 || a == NULL || b == NULL || c == NULL) {
        return kc_error_set(err, KC_EINVAL, "gram: bad arguments (n %d, p %d, q %d)", n, p, q);
    }
    struct gram_prim *s = NULL;
    for (int i = 0; i < GRAM_CACHE; i++) {
        if (g->slot[i].prim != NULL && g->slot[i].n == n && g->slot[i].p == p &&
            g->slot[i].q == q) {
            s = &g->slot[i];
            break;
        }
    }
    if (s == NULL) {
        for (int i = 0; i < GRAM_CACHE && s == NULL; i++) {
            if (g->slot[i].prim == NULL) {
                s = &g->slot[i];
            }
        }
        if (s == NULL) {
            s = &g->slot[g->next];
            g->next = (g->next + 1) % GRAM_CACHE;
            prim_clear(s);
        }
        const int rc = prim_make(g, s, n, p, q, err);
        if (rc != 0) {
            return rc;
        }
    }
    set_team(g->n_threads);
    dnnl_status_t st = dnnl_memory_set_data_handle_v2(s->a, (void *)(uintptr_t)a, g->stream);
    if (st == dnnl_success) {
        st = dnnl_memory_set_data_handle_v2(s->b, (void *)(uintptr_t)b, g->stream);
    }
    if (st == dnnl_success) {
        st = dnnl_memory_set_data_handle_v2(s->c, c, g->stream);
    }
    if (st == dnnl_success) {
        const dnnl_exec_arg_t args[3] = {
            {DNNL_ARG_SRC, s->a}, {DNNL_ARG_WEIGHTS, s->b}, {DNNL_ARG_DST, s->c}};
        st = dnnl_primitive_execute(s->prim, g->stream, 3, args);
    }
    if (st == dnnl_success) {
        st = dnnl_stream_wait(g->stream);
    }
    if (st != dnnl_success) {
        return kc_error_set(err, KC_EBACKEND, "gram: oneDNN execution failed (status %d)", (int)st);
    }
    return 0;
}

void eng__gram_atb_ref(const float *a, const float *b, int n, int p, int q, float *c) {
    for (int i = 0; i < p; i++) {
        for (int j = 0; j < q; j++) {
            double s = 0.0;
            for (int r = 0; r < n; r++) {
                s += (double)a[(size_t)r * p + i] * (double)b[(size_t)r * q + j];
            }
            c[(size_t)i * q + j] = (float)s;
        }
    }
}
