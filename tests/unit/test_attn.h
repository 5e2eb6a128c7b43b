/*
 * test_attn.h — the rig of the attention tests (test_attention.c, test_engine_ops.c): a random
 * paged KV cache (per block K then V, then a gap) behind an identity or shuffled block table,
 * random queries, an output for the kernel and one for the reference, and their scratch, sized
 * as the engine sizes it. Include after test_rand.h and engine/ops.h: the inputs come from the
 * including test's random stream, always in the same order (cache, table shuffle, queries).
 */
#ifndef KC_TEST_ATTN_H
#define KC_TEST_ATTN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* The threads eng_attention may use (its scratch is per thread). */
static inline int team_size(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

struct test_attn {
    float *cache;   /* n_blocks blocks of block_stride floats */
    int32_t *table; /* logical block b lives in physical block table[b] */
    struct eng_kv_view kv;
    size_t qn; /* floats of q, out and outr: n * heads * d */
    float *q, *out, *outr;
    size_t scratch_floats; /* of scratch, eng_attention's */
    float *scratch, *scratch_r;
};

/* n queries from position pos0 against a cache of pos0 + n positions in blocks of bs (and a
 * few spare blocks); queries scaled by q_scale; scratch for a context of scratch_ctx. */
static inline void test_attn_create(struct test_attn *a, int n, int pos0, int heads, int kv_heads,
                                    int d, int bs, float q_scale, bool shuffled, int scratch_ctx) {
    const int n_ctx = pos0 + n;
    const int n_blocks = (n_ctx + bs - 1) / bs + 3; /* a few spare blocks */
    const size_t tok = (size_t)kv_heads * (size_t)d;
    const size_t block_stride = 2 * (size_t)bs * tok + 8; /* K then V, then a gap */
    a->cache = rand_floats((size_t)n_blocks * block_stride, 1.0f);
    a->table = malloc((size_t)n_blocks * sizeof(int32_t));
    assert_non_null(a->table);
    for (int b = 0; b < n_blocks; b++) {
        a->table[b] = b;
    }
    for (int b = n_blocks - 1; shuffled && b > 0; b--) {
        const int j = (int)((frand() + 1.0f) * 0.5f * (float)(b + 1)) % (b + 1);
        const int32_t t = a->table[b];
        a->table[b] = a->table[j];
        a->table[j] = t;
    }
    a->kv = (struct eng_kv_view){.base = a->cache,
                                 .block_stride = block_stride,
                                 .v_offset = (size_t)bs * tok,
                                 .block_size = bs,
                                 .block_table = a->table};
    a->qn = (size_t)n * (size_t)heads * (size_t)d;
    a->q = rand_floats(a->qn, q_scale);
    a->out = malloc(a->qn * sizeof(float));
    a->outr = malloc(a->qn * sizeof(float));
    a->scratch_floats = eng_attention_scratch_floats(scratch_ctx, heads, kv_heads, d, team_size());
    a->scratch = malloc(a->scratch_floats * sizeof(float));
    a->scratch_r = malloc((size_t)n_ctx * sizeof(float));
    assert_true(a->out != NULL && a->outr != NULL && a->scratch != NULL && a->scratch_r != NULL);
}

static inline void test_attn_free(struct test_attn *a) {
    free(a->cache);
    free(a->table);
    free(a->q);
    free(a->out);
    free(a->outr);
    free(a->scratch);
    free(a->scratch_r);
}

#endif /* KC_TEST_ATTN_H */
