/*
 * gemv_probe.c — why kvcast's decode copy of the weights is plain (engine/ops_dnnl.c,
 * invariant 6). Streams the bf16 decode weights of a TinyLlama-1.1B step (22 layers of
 * q|k|v, o, gate|up, down) through oneDNN matmul primitives at M rows, round after round,
 * with a stream triad in every round, so each way is compared under the same host load:
 *   packed  brgemm over the layout oneDNN picks for M rows (format `any`, reordered)
 *   plain   over the HF [n, k] matrix: "gemm:jit" for M = 1 (the GEMV kvcast uses),
 *           oneDNN's first choice otherwise
 * Prints GB/s of weights read per way and round.
 *   usage: gemv_probe [rows (1)] [rounds (8)]   threads: OMP_NUM_THREADS
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "common/kc.h"
#include "engine/ops.h"

#define CHECK(call)                                                                                \
    do {                                                                                           \
        dnnl_status_t st_ = (call);                                                                \
        if (st_ != dnnl_success) {                                                                 \
            fprintf(stderr, "gemv_probe: %s failed (status %d)\n", #call, (int)st_);               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

enum { LAYERS = 22, PER_LAYER = 4 };
static const int shapes[PER_LAYER][2] = {{2048, 2560}, {2048, 2048}, {2048, 11264}, {5632, 2048}};

struct lin {
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst, pad;
    void *w, *pad_buf;
    size_t bytes;
};

/* The first implementation whose name contains want (NULL: any), else oneDNN's first choice. */
static dnnl_primitive_desc_t pick(const dnnl_matmul_desc_t *d, const_dnnl_primitive_attr_t attr,
                                  dnnl_engine_t eng, const char *want) {
    dnnl_primitive_desc_iterator_t it;
    CHECK(dnnl_primitive_desc_iterator_create(&it, d, attr, eng, NULL));
    dnnl_primitive_desc_t first = NULL, found = NULL;
    do {
        dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch(it);
        const char *impl = "";
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        if (want == NULL || strstr(impl, want) != NULL) {
            found = pd;
        } else if (first == NULL) {
            first = pd;
        } else {
            dnnl_primitive_desc_destroy(pd);
        }
    } while (found == NULL && dnnl_primitive_desc_iterator_next(it) == dnnl_success);
    dnnl_primitive_desc_iterator_destroy(it);
    if (found != NULL) {
        dnnl_primitive_desc_destroy(first);
        return found;
    }
    return first;
}

static void make(struct lin *l, dnnl_engine_t eng, int rows, int k, int n, int plain) {
    dnnl_memory_desc_t s, w, d;
    const dnnl_dims_t sd = {rows, k}, wd = {k, n}, dd = {rows, n}, ws = {1, k};
    CHECK(dnnl_memory_desc_init_by_tag(&s, 2, sd, dnnl_bf16, dnnl_ab));
    if (plain) {
        CHECK(dnnl_memory_desc_init_by_strides(&w, 2, wd, dnnl_bf16, ws));
    } else {
        CHECK(dnnl_memory_desc_init_by_tag(&w, 2, wd, dnnl_bf16, dnnl_format_tag_any));
    }
    CHECK(dnnl_memory_desc_init_by_tag(&d, 2, dd, dnnl_f32, dnnl_ab));
    dnnl_matmul_desc_t md;
    CHECK(dnnl_matmul_desc_init(&md, &s, &w, NULL, &d));
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    dnnl_primitive_desc_t pd = pick(&md, attr, eng, plain && rows == 1 ? "gemm:jit" : NULL);
    dnnl_primitive_attr_destroy(attr);
    const dnnl_memory_desc_t *wq = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    CHECK(dnnl_primitive_create(&l->prim, pd));
    l->bytes = dnnl_memory_desc_get_size(wq);
    l->w = kc_aligned_alloc(l->bytes);
    const dnnl_memory_desc_t *pm = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    l->pad_buf = kc_aligned_alloc(dnnl_memory_desc_get_size(pm) + 64);
    if (l->w == NULL || l->pad_buf == NULL) {
        fprintf(stderr, "gemv_probe: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < l->bytes / 2; i++) {
        ((uint16_t *)l->w)[i] = (uint16_t)(0x3c00 + i % 7); /* small positive bf16 values */
    }
    CHECK(dnnl_memory_create(&l->src, &s, eng, DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&l->wei, wq, eng, l->w));
    CHECK(dnnl_memory_create(&l->dst, &d, eng, DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&l->pad, pm, eng, l->pad_buf));
    dnnl_primitive_desc_destroy(pd);
}

/* One decode step's weights through the primitives of one way; GB/s of weights read. */
static double step_gbs(struct lin *ls, dnnl_stream_t st, void *x, float *y) {
    size_t bytes = 0;
    const double t0 = kc_now_s();
    for (int i = 0; i < LAYERS * PER_LAYER; i++) {
        CHECK(dnnl_memory_set_data_handle(ls[i].src, x));
        CHECK(dnnl_memory_set_data_handle(ls[i].dst, y));
        const dnnl_exec_arg_t a[4] = {{DNNL_ARG_SRC, ls[i].src},
                                      {DNNL_ARG_WEIGHTS, ls[i].wei},
                                      {DNNL_ARG_DST, ls[i].dst},
                                      {DNNL_ARG_SCRATCHPAD, ls[i].pad}};
        CHECK(dnnl_primitive_execute(ls[i].prim, st, 4, a));
        bytes += ls[i].bytes;
    }
    CHECK(dnnl_stream_wait(st));
    return (double)bytes / (kc_now_s() - t0) * 1e-9;
}

int main(int argc, char **argv) {
    const int rows = argc > 1 ? atoi(argv[1]) : 1;
    const int rounds = argc > 2 ? atoi(argv[2]) : 8;
    if (rows < 1 || rows > 64 || rounds < 1) {
        fprintf(stderr, "usage: gemv_probe [rows 1..64] [rounds]\n");
        return 2;
    }
    dnnl_engine_t eng;
    dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
    struct lin *ways[2];
    for (int w = 0; w < 2; w++) {
        ways[w] = calloc(LAYERS * PER_LAYER, sizeof(struct lin));
        if (ways[w] == NULL) {
            return 1;
        }
        for (int i = 0; i < LAYERS * PER_LAYER; i++) {
            make(&ways[w][i], eng, rows, shapes[i % PER_LAYER][0], shapes[i % PER_LAYER][1], w);
        }
    }
    void *x = kc_aligned_alloc((size_t)rows * 5632 * 2);
    float *y = kc_aligned_alloc((size_t)rows * 11264 * sizeof(float));
    struct eng_triad *triad = eng_triad_create((size_t)256 << 20); /* beyond the caches */
    if (x == NULL || y == NULL || triad == NULL) {
        fprintf(stderr, "gemv_probe: out of memory\n");
        return 1;
    }
    printf("rows %d, TinyLlama-1.1B decode weights (bf16), GB/s per round\n", rows);
    printf("round  packed   plain%s   triad\n", rows == 1 ? "(gemv)" : "      ");
    for (int r = 0; r < rounds; r++) {
        const double packed = step_gbs(ways[0], st, x, y);
        const double plain = step_gbs(ways[1], st, x, y);
        const double triad_gbs = eng_triad_run(triad, 1);
        printf("%5d  %6.1f  %12.1f  %6.1f\n", r, packed, plain, triad_gbs);
    }
    return 0;
}
