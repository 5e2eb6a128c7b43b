/*
 * probe.h — machine measurements for `kvcast bench` (engine, gemv): the GEMM rate, the GB/s
 * of weights streamed as decode reads them, and a stream triad for the memory bandwidth
 * beside them. Implemented in engine/probe.c on the same oneDNN primitives the forward uses;
 * the serving path never calls them.
 *
 * Thread rules: a probe or triad belongs to the thread that created it and runs on that
 * thread's OpenMP team (the eng_dnn's n_threads for the matmul probes).
 */
#ifndef ENG_PROBE_H
#define ENG_PROBE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/kc.h"
#include "engine/ops.h"

/* GFLOP/s of one large oneDNN matmul (m x n x k, weights packed in wt), best of iters;
 * 0 when a buffer or primitive cannot be created. */
double eng_dnn_gemm_gflops(struct eng_dnn *dnn, enum eng_wtype wt, int m, int n, int k, int iters);

/* Streams weight matrices of type wt (k[i] x n[i], i < n_mats) through primitives of `rows`
 * rows, as decode does: matmuls over weights packed in the layout oneDNN picks for
 * `layout_rows` rows (ENG_LINEAR_CHUNK: the prefill copy's, which 2..ENG_DECODE_MAX_M-row steps
 * read where prefill and decode share a weight type), or, with layout_rows 0, the engine's plain
 * one-row copy: the HF [n, k] matrix (one row then runs the "gemm:jit" GEMV), for int8 an inner
 * product on its one-row layout (invariant 8), the copy int8 decode runs for 1..ENG_DECODE_MAX_M
 * rows. run: GB/s of weights read by one pass over all matrices. For `kvcast bench gemv`. */
struct eng_weights_probe;
int eng_weights_probe_create(struct eng_dnn *dnn, enum eng_wtype wt, int rows, int layout_rows,
                             const int *k, const int *n, int n_mats, struct eng_weights_probe **out,
                             struct kc_error *err);
double eng_weights_probe_run(struct eng_weights_probe *p);
void eng_weights_probe_free(struct eng_weights_probe *p);

/* Stream-triad bandwidth (a[i] = b[i] + s*c[i], GB/s, best of iters) with the calling thread's
 * OpenMP team, on arrays kept between runs, so a benchmark can sample the machine's
 * bandwidth right beside each window of its own work (this host's bandwidth swings with
 * its neighbours' load from second to second). create: NULL when out of memory. */
struct eng_triad;
struct eng_triad *eng_triad_create(size_t bytes_per_array);
double eng_triad_run(struct eng_triad *t, int iters); /* GB/s, best of iters */
/* GB/s of one pass that only reads the triad's two source arrays: each thread its share in one
 * sequential stream, or, with `prefetch`, in two streams that ask for lines 2 KiB ahead. The
 * ceiling of a kernel that reads the way oneDNN's one-row products do, and of one that
 * prefetches; a machine's triad sits between them or above. */
double eng_triad_read(struct eng_triad *t, bool prefetch);
void eng_triad_free(struct eng_triad *t);

#endif /* ENG_PROBE_H */
