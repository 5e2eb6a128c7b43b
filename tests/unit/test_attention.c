/*
 * Unit tests for engine/attention.c: eng_attention and both of its paths forced
 * (eng__attention_tiles, eng__attention_rows) against eng__attention_ref on random caches,
 * printing maxdiff. The cases aim at the tile path's edges: query chunks that start
 * mid-sequence (pos0 > 0) with n not a multiple of the tile, key chunks that cross KV
 * blocks whose size is not a multiple of the chunk, shuffled (non-contiguous) and identity
 * block tables, GQA groups of 1, 3, 4, 12 and 128, head_dim 64 and others that are not a
 * multiple of 16, large logits, and long contexts.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kc.h"
#include "engine/ops.h"

#define TEST_RAND_SEED 0x2545f4914f6cdd1dull
#include "tests/unit/test_rand.h"

#include "tests/unit/test_attn.h"

struct attn_case {
    int n, pos0, heads, kv_heads, d, block_size;
    float q_scale;
    bool shuffled; /* shuffled block table, else identity */
};

typedef void (*attn_fn)(const float *, int, int, const struct eng_kv_view *, int, int, int, float,
                        float *, float *);

/* Largest |fast - ref| over the three entry points for one case; asserts each is finite. */
static float run_case(const struct attn_case *ac) {
    const int bs = ac->block_size, n_ctx = ac->pos0 + ac->n;
    struct test_attn a;
    /* Scratch sized for a longer context than used, as the engine sizes it. */
    test_attn_create(&a, ac->n, ac->pos0, ac->heads, ac->kv_heads, ac->d, bs, ac->q_scale,
                     ac->shuffled, n_ctx + 100);
    const float *q = a.q;
    float *out = a.out, *outr = a.outr;
    const size_t qn = a.qn;
    const float scale = 1.0f / sqrtf((float)ac->d);
    eng__attention_ref(q, ac->n, ac->pos0, &a.kv, ac->heads, ac->kv_heads, ac->d, scale, outr,
                       a.scratch_r);
    const attn_fn fns[3] = {eng_attention, eng__attention_tiles, eng__attention_rows};
    const char *names[3] = {"auto", "tiles", "rows"};
    float worst = 0.0f;
    for (int f = 0; f < 3; f++) {
        memset(out, 0xff, qn * sizeof(float)); /* NaN: every output must be written */
        fns[f](q, ac->n, ac->pos0, &a.kv, ac->heads, ac->kv_heads, ac->d, scale, out, a.scratch);
        const float diff = max_abs_diff(out, outr, qn);
        printf("  attention %-5s n=%4d pos0=%4d H=%3d Hkv=%2d D=%3d bs=%2d %s qscale=%g "
               "maxdiff=%.3g\n",
               names[f], ac->n, ac->pos0, ac->heads, ac->kv_heads, ac->d, bs,
               ac->shuffled ? "shuffled" : "identity", (double)ac->q_scale, (double)diff);
        for (size_t i = 0; i < qn; i++) {
            assert_true(isfinite(out[i]));
        }
        worst = diff > worst || isnan(diff) ? diff : worst;
    }
    test_attn_free(&a);
    return worst;
}

static void run_cases(const struct attn_case *cases, size_t n_cases) {
    for (size_t i = 0; i < n_cases; i++) {
        const float diff = run_case(&cases[i]);
        assert_true(diff <= 2e-5f);
    }
}

static void test_prefill_chunks_at_block_and_tile_boundaries(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        /* n pos0 H Hkv D bs qscale shuffled */
        {100, 0, 12, 4, 64, 16, 1.0f, true},  /* the 110M shape, grp 3, from position 0 */
        {77, 45, 4, 4, 64, 20, 1.0f, true},   /* grp 1, chunk mid-sequence, bs 20 */
        {50, 130, 8, 2, 40, 24, 1.0f, false}, /* grp 4, D 40, identity table */
        {33, 64, 12, 4, 72, 7, 30.0f, true},  /* bs 7, D 72, large logits */
        {64, 64, 12, 4, 64, 64, 1.0f, true},  /* everything aligned to the tile */
        {4, 61, 12, 4, 64, 16, 1.0f, true},   /* the smallest n of the tile path */
        {9, 0, 2, 1, 2, 5, 1.0f, true},       /* D 2 */
        {40, 100, 4, 2, 136, 16, 4.0f, true}, /* D 136: 64 + 64 + 16 columns of O */
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_gqa_groups_wide_and_narrow(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        {20, 10, 12, 1, 32, 16, 1.0f, true}, /* MQA, grp 12 */
        {5, 3, 128, 1, 16, 16, 1.0f, true},  /* grp 128: a tile of one query row */
        {31, 17, 6, 2, 24, 9, 1.0f, true},   /* grp 3, D 24 */
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_long_context_and_decode(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        {100, 2000, 6, 2, 64, 16, 1.0f, true}, /* prefill chunk ending at 2100 */
        {1, 2099, 12, 4, 64, 16, 1.0f, true},  /* decode at 2100, grp 3: the decode path */
        {1, 900, 4, 2, 64, 16, 1.0f, true},    /* decode, grp 2: the row path */
        {3, 700, 8, 2, 64, 32, 1.0f, true},    /* a few rows */
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

/* One query row of groups of 3..8 heads with D a multiple of 8 takes the decode path
 * (invariant 9), groups of 1 and 2 heads with D a multiple of 16 up to 128 its MHA kernel
 * (invariant 10): contexts from 1 key to several splits, splits that end mid-block and
 * mid-chunk, every group size and head size it takes, and the shapes just outside it (grp 9,
 * D 36, MHA with D 72). */
static void test_decode_path_groups_and_splits(void **state) {
    (void)state;
    const struct attn_case cases[] = {
        {1, 0, 32, 4, 64, 16, 1.0f, true},      /* TinyLlama's grp 8, the first token */
        {1, 5, 32, 4, 64, 16, 1.0f, true},      /* a few keys: one split */
        {1, 63, 32, 4, 64, 16, 1.0f, false},    /* one full key chunk */
        {1, 64, 32, 4, 64, 16, 1.0f, true},     /* one chunk and one key */
        {1, 543, 32, 4, 64, 16, 1.0f, true},    /* the bench's decode context */
        {1, 1500, 32, 8, 128, 16, 30.0f, true}, /* Llama-3 8B's grp 4, D 128, large logits */
        {1, 777, 21, 3, 40, 7, 1.0f, true},     /* grp 7, D 40, bs 7 */
        {1, 300, 15, 3, 16, 5, 1.0f, true},     /* grp 5, D 16, bs 5 */
        {1, 300, 9, 3, 8, 16, 1.0f, true},      /* grp 3, D 8: pairs (D not a multiple of 16) */
        {1, 700, 32, 8, 64, 16, 1.0f, true},    /* Llama-3.2 1B's grp 4, D 64: quad layout */
        {1, 650, 24, 8, 128, 7, 1.0f, true},    /* Llama-3.2 3B's grp 3, D 128, bs 7 */
        {1, 260, 8, 2, 80, 16, 1.0f, true},     /* grp 4, D 80: a block of 16 groups and one of 4 */
        {1, 99, 9, 3, 48, 5, 30.0f, true},      /* grp 3, D 48: three blocks of 4, large logits */
        {1, 3, 4, 1, 16, 16, 1.0f, true},       /* grp 4, D 16, a few keys */
        {1, 400, 18, 2, 64, 16, 1.0f, true},    /* grp 9: past the decode path, the tiles */
        {1, 400, 24, 4, 36, 16, 1.0f, true},    /* D 36: not a multiple of 8, the tiles */
        {1, 0, 4, 4, 64, 16, 1.0f, true},       /* MHA, the first token */
        {1, 17, 8, 8, 128, 5, 1.0f, true},      /* MHA, D 128, bs 5, a few keys */
        {1, 64, 4, 4, 64, 16, 1.0f, false},     /* MHA, one chunk and one key */
        {1, 1000, 6, 3, 128, 16, 30.0f, true},  /* grp 2, D 128, large logits */
        {1, 333, 2, 1, 64, 7, 1.0f, true},      /* grp 2, one kv head, bs 7 */
        {1, 2100, 32, 32, 64, 16, 1.0f, true},  /* MHA at 32 heads (Llama 2's), long */
        {1, 200, 4, 4, 80, 16, 1.0f, true},     /* MHA, D 80 (Phi-2's) */
        {1, 90, 6, 3, 16, 16, 1.0f, true},      /* grp 2, D 16: one register */
        {1, 500, 2, 2, 96, 9, 1.0f, true},      /* MHA, D 96, bs 9 */
        {1, 200, 4, 4, 72, 16, 1.0f, true},     /* MHA, D 72: past the MHA kernel, the rows */
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_chunks_at_block_and_tile_boundaries),
        cmocka_unit_test(test_gqa_groups_wide_and_narrow),
        cmocka_unit_test(test_long_context_and_decode),
        cmocka_unit_test(test_decode_path_groups_and_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
