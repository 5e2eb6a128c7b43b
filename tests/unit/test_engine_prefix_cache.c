/* Unit tests for the KV pool's prefix cache: content-addressed blocks, refcounts, LRU
 * eviction and the pool's accounting check. Every test ends with every sequence released,
 * no block in use and eng_kv_pool_check passing with zero references. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/io/model_config.h"
#include "engine/kv_cache.h"
#include "tests/unit/test_models.h"

enum { BS = 4 }; /* tokens per block in every test */

static struct eng_model_config small_config(void) {
    return test_kv_config(2, 1, 2); /* layers, KV heads, head size */
}

static void pool_open(struct eng_kv_pool *pool, int n_blocks, bool enable) {
    struct eng_model_config c = small_config();
    assert_int_equal(eng_kv_pool_init(pool, &c, BS, n_blocks, NULL), KC_OK);
    if (enable) {
        assert_int_equal(eng_kv_prefix_enable(pool, NULL), KC_OK);
        assert_true(eng_kv_prefix_enabled(pool));
    }
}

/* Asserts the pool's accounting with expected_refs references held. */
static void check_refs(struct eng_kv_pool *pool, int expected_refs) {
    struct kc_error err = {0};
    int rc = eng_kv_pool_check(pool, expected_refs, &err);
    if (rc != KC_OK) {
        fprintf(stderr, "pool check: %s\n", err.msg);
    }
    assert_int_equal(rc, KC_OK);
}

static struct eng_kv_pool_stats stats_of(struct eng_kv_pool *pool) {
    struct eng_kv_pool_stats s;
    eng_kv_pool_stats_get(pool, &s);
    assert_int_equal(s.n_free + s.n_cached_idle + s.n_in_use, s.n_blocks);
    return s;
}

/* The end of every test: nothing in use, accounting sound with no references. */
static void pool_close(struct eng_kv_pool *pool) {
    struct eng_kv_pool_stats s = stats_of(pool);
    assert_int_equal(s.n_in_use, 0);
    check_refs(pool, 0);
    eng_kv_pool_free(pool);
}

/* What a request does: attach the cached prefix (n - 1 rule), reserve the rest, "compute"
 * positions [attached, n), publish. Returns the tokens attached. */
static int run_prompt(struct eng_kv_pool *pool, struct eng_seq *seq, const int32_t *tokens, int n) {
    int got = eng_kv_prefix_attach(pool, seq, tokens, n - 1);
    assert_true(got >= 0);
    assert_int_equal(got % BS, 0);
    assert_int_equal(seq->n_tokens, got);
    assert_int_equal(eng_seq_reserve(pool, seq, n), KC_OK);
    seq->n_tokens = n;
    eng_kv_prefix_publish(pool, seq, tokens, n);
    return got;
}

static void fill(int32_t *t, int n, int32_t base) {
    for (int i = 0; i < n; i++) {
        t[i] = base + i;
    }
}

static void test_attach_after_publish_reuses_the_same_blocks(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 10, true);
    int32_t t[12];
    fill(t, 12, 100);
    struct eng_seq a = {0}, b = {0};
    assert_int_equal(run_prompt(&pool, &a, t, 12), 0);
    check_refs(&pool, 3);
    /* Mark the K/V a computed, to see that b reads the very same floats. */
    for (int p = 0; p < 12; p++) {
        eng_kv_k_at(&pool, &a, 1, p)[0] = (float)(p + 1);
    }
    struct eng_kv_pool_stats s = stats_of(&pool);
    assert_int_equal(s.n_cached, 3);
    assert_int_equal(s.n_in_use, 3);

    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 12), 12);
    assert_int_equal(b.n_blocks, 3);
    assert_int_equal(b.n_tokens, 12);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b.blocks[i], a.blocks[i]);
    }
    for (int p = 0; p < 12; p++) {
        assert_true(eng_kv_k_at(&pool, &b, 1, p)[0] == (float)(p + 1));
    }
    check_refs(&pool, 6);
    assert_int_equal(stats_of(&pool).n_in_use, 3);

    eng_seq_release(&pool, &a);
    check_refs(&pool, 3);
    eng_seq_release(&pool, &b);
    check_refs(&pool, 0);
    s = stats_of(&pool);
    assert_int_equal(s.n_cached_idle, 3);
    assert_int_equal(s.n_free, 7);
    assert_int_equal(eng_kv_pool_n_free(&pool), 10); /* idle cached blocks are reservable */

    /* Idle cached blocks are still attachable; attaching takes them off the LRU list. */
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 11), 8);
    s = stats_of(&pool);
    assert_int_equal(s.n_cached_idle, 1);
    assert_int_equal(s.n_in_use, 2);
    check_refs(&pool, 2);
    /* attach wants an empty sequence */
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 11), KC_EINVAL);
    eng_seq_release(&pool, &b);
    pool_close(&pool);
}

static void test_partial_block_tails_never_match(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 8, true);
    int32_t t[16];
    fill(t, 16, 7);
    struct eng_seq a = {0}, b = {0}, c = {0};
    run_prompt(&pool, &a, t, 10); /* 2 full blocks + 2 tokens */
    check_refs(&pool, 3);
    assert_int_equal(stats_of(&pool).n_cached, 2);
    /* Even with room for more, only the 2 whole blocks match. */
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 16), 8);
    /* A prompt shorter than a block attaches nothing. */
    assert_int_equal(eng_kv_prefix_attach(&pool, &c, t, 3), 0);
    assert_int_equal(c.n_blocks, 0);
    /* Publishing fewer tokens than a block registers nothing new. */
    eng_kv_prefix_publish(&pool, &a, t, 3);
    assert_int_equal(stats_of(&pool).n_cached, 2);
    check_refs(&pool, 5);
    eng_seq_release(&pool, &a);
    eng_seq_release(&pool, &b);
    eng_seq_release(&pool, &c);
    pool_close(&pool);
}

static void test_max_tokens_caps_the_attach(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 8, true);
    int32_t t[8];
    fill(t, 8, 50);
    struct eng_seq a = {0}, b = {0};
    run_prompt(&pool, &a, t, 8); /* exactly 2 blocks */
    eng_seq_release(&pool, &a);
    /* The same prompt again: n - 1 = 7 allows one block, so the last token is computed. */
    assert_int_equal(run_prompt(&pool, &b, t, 8), 4);
    check_refs(&pool, 2);
    eng_seq_release(&pool, &b);
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 8), 8);
    eng_seq_release(&pool, &b);
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 3), 0);
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 0), 0);
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, -5), 0);
    eng_seq_release(&pool, &b);
    pool_close(&pool);
}

static void test_chained_hash_needs_the_same_parent(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 10, true);
    int32_t ab[8], cb[8], db[8];
    fill(ab, 4, 1);
    fill(cb, 4, 20);
    fill(db, 4, 40);
    fill(ab + 4, 4, 300); /* the same second block after three different first blocks */
    fill(cb + 4, 4, 300);
    fill(db + 4, 4, 300);
    struct eng_seq a = {0}, c = {0}, x = {0};
    run_prompt(&pool, &a, ab, 8);
    run_prompt(&pool, &c, cb, 8);
    /* Same second-block tokens, different parents: two different cache entries. */
    assert_int_equal(stats_of(&pool).n_cached, 4);
    assert_int_equal(eng_kv_prefix_attach(&pool, &x, cb, 8), 8);
    assert_int_equal(x.blocks[1], c.blocks[1]);
    eng_seq_release(&pool, &x);
    assert_int_equal(eng_kv_prefix_attach(&pool, &x, ab, 8), 8);
    assert_int_equal(x.blocks[1], a.blocks[1]);
    eng_seq_release(&pool, &x);
    assert_int_equal(eng_kv_prefix_attach(&pool, &x, db, 8), 0);
    check_refs(&pool, 4);
    eng_seq_release(&pool, &x);
    eng_seq_release(&pool, &a);
    eng_seq_release(&pool, &c);
    pool_close(&pool);
}

static uint64_t hash_constant(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent;
    (void)tokens;
    (void)n;
    return 42;
}

/* Ignores the parent: block content alone decides the hash. */
static uint64_t hash_without_parent(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent;
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) {
        h = (h ^ (uint32_t)tokens[i]) * 1099511628211ULL;
    }
    return h;
}

static void test_forged_hash_collisions_never_reuse_wrong_kv(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 10, true);
    int32_t ab[8], xb[8];
    fill(ab, 8, 1);
    fill(xb, 4, 900);
    fill(xb + 4, 4, 5); /* xb's second block has ab's second-block tokens */
    struct eng_seq a = {0}, x = {0};

    /* Every block collides: the first one is cached, the second finds its hash taken by
     * different content and stays out, and a lookup with other tokens misses. */
    eng_kv_prefix_set_hash_for_test(&pool, hash_constant);
    run_prompt(&pool, &a, ab, 8);
    assert_int_equal(stats_of(&pool).n_cached, 1);
    assert_int_equal(eng_kv_prefix_attach(&pool, &x, xb, 8), 0);
    assert_int_equal(eng_kv_prefix_attach(&pool, &x, ab, 8), 4);
    eng_seq_release(&pool, &x);
    eng_seq_release(&pool, &a);
    check_refs(&pool, 0);

    /* A hash blind to the parent: ab's second block and xb's second block collide with equal
     * tokens; only the parent comparison keeps xb from getting KV computed after ab[0..4). */
    struct eng_kv_pool p2;
    pool_open(&p2, 10, true);
    eng_kv_prefix_set_hash_for_test(&p2, hash_without_parent);
    struct eng_seq b = {0}, y = {0};
    run_prompt(&p2, &b, ab, 8);
    assert_int_equal(stats_of(&p2).n_cached, 2);
    assert_int_equal(run_prompt(&p2, &y, xb, 8), 0);
    assert_int_equal(stats_of(&p2).n_cached, 3); /* xb's first block; its second collides */
    eng_seq_release(&p2, &y);
    assert_int_equal(eng_kv_prefix_attach(&p2, &y, xb, 8), 4);
    assert_int_not_equal(y.blocks[0], b.blocks[0]);
    check_refs(&p2, 3);
    eng_seq_release(&p2, &y);
    eng_seq_release(&p2, &b);
    eng_kv_prefix_set_hash_for_test(&p2, NULL);
    pool_close(&p2);
    pool_close(&pool);
}

/* Sees only the low byte of each token and ignores the parent: [1, ...] and [257, ...] collide. */
static uint64_t hash_low_bytes(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent;
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) {
        h = (h ^ (uint32_t)(tokens[i] & 0xff)) * 1099511628211ULL;
    }
    return h;
}

/* A cached block whose parent was evicted and replaced by colliding content (same hash, same
 * parent hash, same block id, different tokens) must not match: the parent's generation
 * differs. */
static void test_child_of_an_evicted_parent_never_matches_a_colliding_one(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 4, true);
    eng_kv_prefix_set_hash_for_test(&pool, hash_low_bytes);
    int32_t ab[8], a2b[8];
    fill(ab, 8, 1);
    fill(a2b, 8, 1);
    a2b[0] = 257; /* a different first block with the same hash */
    struct eng_seq x = {0}, y = {0}, v = {0}, w = {0}, z = {0}, q = {0};
    /* x caches A alone; y computes A, B itself: its A is a twin, its B is cached under x's A. */
    assert_int_equal(eng_seq_reserve(&pool, &x, 4), KC_OK);
    x.n_tokens = 4;
    eng_kv_prefix_publish(&pool, &x, ab, 4);
    assert_int_equal(eng_seq_reserve(&pool, &y, 8), KC_OK);
    y.n_tokens = 8;
    eng_kv_prefix_publish(&pool, &y, ab, 8);
    assert_int_equal(stats_of(&pool).n_cached, 2);
    /* x goes; its A is evicted while y still holds B (v takes the last free block first). */
    const int32_t a_id = x.blocks[0];
    eng_seq_release(&pool, &x);
    assert_int_equal(eng_seq_reserve(&pool, &v, 4), KC_OK);
    assert_int_equal(eng_seq_reserve(&pool, &w, 4), KC_OK);
    assert_int_equal(w.blocks[0], a_id);
    assert_int_equal(stats_of(&pool).evictions, 1);
    eng_seq_release(&pool, &w);
    check_refs(&pool, 3);
    /* z caches the colliding A' in the very block A had. A lookup of A', B finds A' and then
     * B with an equal parent hash, parent id and tokens, but B's K/V was computed after A. */
    assert_int_equal(eng_seq_reserve(&pool, &z, 4), KC_OK);
    assert_int_equal(z.blocks[0], a_id);
    z.n_tokens = 4;
    eng_kv_prefix_publish(&pool, &z, a2b, 4);
    assert_int_equal(eng_kv_prefix_attach(&pool, &q, a2b, 8), 4);
    check_refs(&pool, 5);
    eng_seq_release(&pool, &q);
    eng_seq_release(&pool, &v);
    eng_seq_release(&pool, &z);
    eng_seq_release(&pool, &y);
    pool_close(&pool);
}

static void test_two_sequences_share_blocks_with_refcounts(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 10, true);
    int32_t t[16];
    fill(t, 16, 3);
    struct eng_seq a = {0}, b = {0};
    run_prompt(&pool, &a, t, 12); /* 3 blocks, all cached */
    /* b shares a's first two blocks (n - 1 = 11 caps it there), then computes its own. */
    assert_int_equal(run_prompt(&pool, &b, t, 12), 8);
    assert_int_equal(b.n_blocks, 3);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    assert_int_not_equal(b.blocks[2], a.blocks[2]); /* a duplicate, left unregistered */
    check_refs(&pool, a.n_blocks + b.n_blocks);
    struct eng_kv_pool_stats s = stats_of(&pool);
    assert_int_equal(s.n_in_use, 4);
    assert_int_equal(s.n_cached, 3);

    eng_seq_release(&pool, &a); /* blocks 0, 1 still held by b; a's block 2 goes idle */
    check_refs(&pool, 3);
    s = stats_of(&pool);
    assert_int_equal(s.n_in_use, 3);
    assert_int_equal(s.n_cached_idle, 1);
    eng_seq_release(&pool, &b); /* b's own block was never cached: back to the free stack */
    s = stats_of(&pool);
    assert_int_equal(s.n_cached_idle, 3);
    assert_int_equal(s.n_free, 7);
    pool_close(&pool);
}

static void test_lru_evicts_tails_and_least_recently_used_first(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 6, true);
    int32_t ta[8], tb[8];
    fill(ta, 8, 10);
    fill(tb, 8, 80);
    struct eng_seq a = {0}, b = {0}, c = {0}, d = {0};
    run_prompt(&pool, &a, ta, 8);
    run_prompt(&pool, &b, tb, 8);
    const int32_t a0 = a.blocks[0], a1 = a.blocks[1], b0 = b.blocks[0], b1 = b.blocks[1];
    eng_seq_release(&pool, &a);
    eng_seq_release(&pool, &b);
    /* Touch a again: b is now the least recently used prefix. */
    assert_int_equal(eng_kv_prefix_attach(&pool, &d, ta, 8), 8);
    eng_seq_release(&pool, &d);
    check_refs(&pool, 0);
    /* LRU now: b1, b0, a1, a0. 2 free blocks go first, then b's tail, then b's head. */
    assert_int_equal(eng_seq_reserve(&pool, &c, 8), KC_OK);
    assert_int_equal(stats_of(&pool).evictions, 0);
    assert_int_equal(eng_seq_reserve(&pool, &c, 12), KC_OK);
    assert_int_equal(c.blocks[2], b1);
    assert_int_equal(stats_of(&pool).evictions, 1);
    check_refs(&pool, 3);
    /* b's head is still cached and attachable, its tail is gone. */
    assert_int_equal(eng_kv_prefix_attach(&pool, &d, tb, 8), 4);
    eng_seq_release(&pool, &d); /* b0 back to the LRU tail: LRU a1, a0, b0 */
    assert_int_equal(eng_seq_reserve(&pool, &c, 16), KC_OK);
    assert_int_equal(c.blocks[3], a1);
    assert_int_equal(eng_seq_reserve(&pool, &c, 20), KC_OK);
    assert_int_equal(c.blocks[4], a0);
    assert_int_equal(eng_kv_prefix_attach(&pool, &d, ta, 8), 0);
    assert_int_equal(eng_seq_reserve(&pool, &c, 24), KC_OK);
    assert_int_equal(c.blocks[5], b0);
    struct eng_kv_pool_stats s = stats_of(&pool);
    assert_int_equal(s.evictions, 4);
    assert_int_equal(s.n_cached, 0);
    assert_int_equal(s.n_in_use, 6);
    check_refs(&pool, 6);
    eng_seq_release(&pool, &c);
    eng_seq_release(&pool, &d);
    pool_close(&pool);
}

static void test_reserve_evicts_yet_stays_all_or_nothing(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 4, true);
    int32_t t[8];
    fill(t, 8, 9);
    struct eng_seq a = {0}, x = {0}, y = {0};
    run_prompt(&pool, &a, t, 8);
    eng_seq_release(&pool, &a); /* 2 idle cached */
    assert_int_equal(eng_seq_reserve(&pool, &x, 1), KC_OK);
    assert_int_equal(eng_kv_pool_n_free(&pool), 3);
    assert_int_equal(eng_seq_reserve(&pool, &y, 16), KC_EBUSY);
    assert_int_equal(y.n_blocks, 0);
    assert_int_equal(y.n_tokens, 0);
    struct eng_kv_pool_stats s = stats_of(&pool);
    assert_int_equal(s.evictions, 0);
    assert_int_equal(s.n_cached, 2);
    assert_int_equal(s.n_cached_idle, 2);
    check_refs(&pool, 1);
    assert_int_equal(eng_seq_reserve(&pool, &y, 12), KC_OK);
    s = stats_of(&pool);
    assert_int_equal(s.evictions, 2);
    assert_int_equal(s.n_cached, 0);
    assert_int_equal(eng_kv_pool_n_free(&pool), 0);
    check_refs(&pool, 4);
    eng_seq_release(&pool, &y);
    eng_seq_release(&pool, &x);
    pool_close(&pool);
}

static void test_disabled_pool_behaves_as_before(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 5, false);
    assert_false(eng_kv_prefix_enabled(&pool));
    int32_t t[12];
    fill(t, 12, 1);
    struct eng_seq a = {0}, b = {0};
    assert_int_equal(run_prompt(&pool, &a, t, 12), 0);
    assert_int_equal(eng_kv_prefix_attach(&pool, &b, t, 12), 0);
    assert_int_equal(b.n_blocks, 0);
    struct eng_kv_pool_stats s = stats_of(&pool);
    assert_int_equal(s.n_cached, 0);
    assert_int_equal(s.n_in_use, 3);
    assert_int_equal(eng_kv_pool_n_free(&pool), 2);
    assert_int_equal(eng_seq_reserve(&pool, &b, 12), KC_EBUSY);
    check_refs(&pool, 3);
    eng_seq_release(&pool, &a);
    assert_int_equal(eng_kv_pool_n_free(&pool), 5);
    /* The free stack is a stack as before: a's blocks 0, 1, 2 went back in order. */
    assert_int_equal(eng_seq_reserve(&pool, &b, 8), KC_OK);
    assert_int_equal(b.blocks[0], 2);
    assert_int_equal(b.blocks[1], 1);
    eng_seq_release(&pool, &b);
    pool_close(&pool);
}

static void test_enable_after_reserve_counts_held_blocks(void **state) {
    (void)state;
    struct eng_kv_pool pool;
    pool_open(&pool, 6, false);
    struct eng_seq a = {0};
    assert_int_equal(eng_seq_reserve(&pool, &a, 9), KC_OK);
    assert_int_equal(eng_kv_prefix_enable(&pool, NULL), KC_OK);
    assert_int_equal(eng_kv_prefix_enable(&pool, NULL), KC_OK); /* idempotent */
    check_refs(&pool, 3);
    eng_seq_release(&pool, &a);
    pool_close(&pool);
}

static void expect_broken(struct eng_kv_pool *pool, int expected_refs, const char *needle) {
    struct kc_error err = {0};
    assert_int_equal(eng_kv_pool_check(pool, expected_refs, &err), KC_EINVAL);
    if (strstr(err.msg, needle) == NULL) {
        fprintf(stderr, "check said '%s', expected it to mention '%s'\n", err.msg, needle);
        fail();
    }
}

static void test_check_detects_corrupted_state(void **state) {
    (void)state;
    for (int enabled = 0; enabled <= 1; enabled++) {
        struct eng_kv_pool pool;
        pool_open(&pool, 6, enabled);
        int32_t t[8];
        fill(t, 8, 4);
        struct eng_seq a = {0};
        run_prompt(&pool, &a, t, 8);
        check_refs(&pool, 2);
        expect_broken(&pool, 3, "references"); /* the caller's count disagrees */
        /* A free block pushed twice. */
        pool.free_stack[pool.n_free] = pool.free_stack[pool.n_free - 1];
        pool.n_free++;
        expect_broken(&pool, -1, "twice");
        pool.n_free--;
        if (enabled) {
            /* A block in use pushed onto the free stack. */
            pool.free_stack[pool.n_free++] = a.blocks[0];
            expect_broken(&pool, -1, "refcount");
            pool.n_free--;
        }
        check_refs(&pool, 2);
        eng_seq_release(&pool, &a);
        pool_close(&pool);
    }
}

/* Random traffic over prompts with shared prefixes. "Computing" position p writes a value that
 * depends on all tokens [0, p] into K; an attached position must hold exactly that value. */
static float prefix_value(const int32_t *t, int p) {
    uint32_t h = 2166136261u;
    for (int i = 0; i <= p; i++) {
        h = (h ^ (uint32_t)t[i]) * 16777619u;
    }
    return (float)(h >> 8);
}

static uint64_t rng_next(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void test_random_traffic_keeps_kv_exact_and_books_balanced(void **state) {
    (void)state;
    enum { N_SEQ = 4, MAX_T = 24, N_BLOCKS = 14 };
    struct eng_kv_pool pool;
    pool_open(&pool, N_BLOCKS, true);
    struct eng_seq seq[N_SEQ] = {{0}};
    int32_t tok[N_SEQ][MAX_T];
    uint64_t rng = 12345;
    int hits = 0;
    for (int step = 0; step < 3000; step++) {
        const int i = (int)(rng_next(&rng) % N_SEQ);
        if (seq[i].n_blocks > 0) {
            eng_seq_release(&pool, &seq[i]);
        } else {
            /* Few templates and a tiny alphabet: prefixes repeat, blocks collide in content. */
            const int n = 2 + (int)(rng_next(&rng) % (MAX_T - 1));
            const int32_t tmpl = (int32_t)(rng_next(&rng) % 3);
            const int shared = (int)(rng_next(&rng) % (n + 1));
            for (int p = 0; p < n; p++) {
                tok[i][p] = p < shared ? tmpl * 7 + p % 3 : (int32_t)(rng_next(&rng) % 3);
            }
            const int got = eng_kv_prefix_attach(&pool, &seq[i], tok[i], n - 1);
            assert_true(got >= 0 && got <= n - 1);
            hits += got > 0;
            for (int p = 0; p < got; p++) {
                assert_true(eng_kv_k_at(&pool, &seq[i], 0, p)[0] == prefix_value(tok[i], p));
            }
            if (eng_seq_reserve(&pool, &seq[i], n) != KC_OK) {
                eng_seq_release(&pool, &seq[i]);
            } else {
                for (int p = got; p < n; p++) {
                    eng_kv_k_at(&pool, &seq[i], 0, p)[0] = prefix_value(tok[i], p);
                }
                seq[i].n_tokens = n;
                eng_kv_prefix_publish(&pool, &seq[i], tok[i], n);
            }
        }
        int refs = 0;
        for (int k = 0; k < N_SEQ; k++) {
            refs += seq[k].n_blocks;
        }
        check_refs(&pool, refs);
    }
    for (int k = 0; k < N_SEQ; k++) {
        eng_seq_release(&pool, &seq[k]);
    }
    assert_true(hits > 100);
    assert_true(stats_of(&pool).evictions > 0);
    pool_close(&pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attach_after_publish_reuses_the_same_blocks),
        cmocka_unit_test(test_partial_block_tails_never_match),
        cmocka_unit_test(test_max_tokens_caps_the_attach),
        cmocka_unit_test(test_chained_hash_needs_the_same_parent),
        cmocka_unit_test(test_forged_hash_collisions_never_reuse_wrong_kv),
        cmocka_unit_test(test_child_of_an_evicted_parent_never_matches_a_colliding_one),
        cmocka_unit_test(test_two_sequences_share_blocks_with_refcounts),
        cmocka_unit_test(test_lru_evicts_tails_and_least_recently_used_first),
        cmocka_unit_test(test_reserve_evicts_yet_stays_all_or_nothing),
        cmocka_unit_test(test_disabled_pool_behaves_as_before),
        cmocka_unit_test(test_enable_after_reserve_counts_held_blocks),
        cmocka_unit_test(test_check_detects_corrupted_state),
        cmocka_unit_test(test_random_traffic_keeps_kv_exact_and_books_balanced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
