/*
 * kv_cache.h — the paged KV cache: one slab per model split into fixed-size blocks, and
 * per-sequence block tables.
 *
 * Place in the data flow: the scheduler reserves blocks for a request at admission
 * (eng_seq_reserve), the forward pass (engine/model.c) appends keys/values of the tokens it
 * computes, KV Prediction writes predicted keys/values through eng_kv_inject, and the stage
 * that owns the sequence releases its blocks at the end (eng_seq_release).
 *
 * Layout: block b, layer l holds K [block_size, Hkv, D] then V [block_size, Hkv, D] at
 * element (b * L + l) * 2 * block_size * Hkv * D of the slab. Keys are stored after RoPE.
 *
 * Element type (the pool's dtype, fixed at init): f32 (the default), or bf16 (`--kv-dtype
 * bf16`), which halves the slab per block and the bytes attention streams per key. Writers
 * round f32 to bf16 (round to nearest even, eng_f32_to_bf16) as they store, readers widen
 * exactly; all arithmetic stays f32. Nothing but the block byte size and the accessors
 * depends on the dtype (the prefix cache only moves block ids).
 *
 * Prefix caching (off by default, eng_kv_prefix_enable turns it on): full blocks of exact K/V
 * are content-addressed by a chained hash of their tokens (vLLM's automatic prefix caching).
 * A sequence publishes its exact full blocks (eng_kv_prefix_publish); a later sequence whose
 * tokens start the same way attaches them (eng_kv_prefix_attach) instead of computing them.
 * Blocks carry reference counts; a cached block that no sequence references sits on an LRU
 * list, still reusable, and eng_seq_reserve evicts it (least recently used first) only when
 * the free stack is empty.
 *
 * DESIGN invariants:
 *  1. A block is either on the free stack, or on the LRU list (cached, referenced by no
 *     sequence), or referenced by >= 1 sequence (refcount = number of block tables holding it).
 *     With prefix caching off, refcounts are never above 1 and the LRU list is always empty.
 *  2. seq->n_tokens <= seq->n_blocks * block_size: positions below n_tokens hold valid K/V.
 *  3. The pool's lock guards the free stack, the refcounts, the LRU list and the index; it is
 *     a leaf lock (nothing else is taken while it is held). Block contents are touched without
 *     it by the single stage that owns the sequence.
 *  4. Shared blocks are read-only: a sequence only ever writes positions >= seq->n_tokens, and
 *     eng_kv_prefix_attach leaves n_tokens block-aligned, so new writes go to blocks the
 *     sequence owns alone. Consequently a caller must never lower seq->n_tokens below a
 *     position it attached or published (it would then rewrite shared/cached K/V).
 *  5. The index holds only blocks whose positions hold EXACT K/V of their tokens (never
 *     predicted K/V), and at most one block per chained hash. A hit is verified by comparing
 *     the block's tokens, its parent hash and its parent block (id and generation), so a hash
 *     collision can never reuse wrong K/V.
 */
#ifndef ENG_KV_CACHE_H
#define ENG_KV_CACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/io/dtype.h"
#include "engine/ops.h"

struct eng_model_config;
struct eng_kv_prefix; /* the prefix-cache index (kv_cache.c); NULL while prefix caching is off */

struct eng_kv_pool {
    int n_layers;   /* L */
    int n_kv_heads; /* Hkv */
    int head_dim;   /* D */
    int block_size; /* tokens per block */
    int n_blocks;
    enum eng_dtype dtype; /* ENG_DTYPE_F32 or ENG_DTYPE_BF16 */
    size_t elem_size;     /* bytes per element: 4 or 2 */
    size_t block_elems;   /* elements per block: L * 2 * block_size * Hkv * D */
    void *slab;           /* [n_blocks, L, 2, block_size, Hkv, D] elements of dtype */
    pthread_mutex_t lock; /* guards free_stack, n_free and everything in prefix */
    int32_t *free_stack;  /* [n_blocks] */
    int n_free;           /* blocks on the free stack (not counting idle cached blocks) */
    struct eng_kv_prefix *prefix;
};

/* A sequence's block table and how many positions of it hold K/V. */
struct eng_seq {
    int32_t *blocks; /* [cap_blocks] block ids; first n_blocks valid */
    int n_blocks;
    int cap_blocks;
    int n_tokens;
};

/* Bytes of slab one block takes for this model shape, f32 elements. */
size_t eng_kv_block_bytes(const struct eng_model_config *cfg, int block_size);
/* The same for elements of dtype (ENG_DTYPE_F32 or ENG_DTYPE_BF16). */
size_t eng_kv_block_bytes_of(const struct eng_model_config *cfg, int block_size,
                             enum eng_dtype dtype);

/* Allocates a pool of n_blocks blocks of block_size tokens for a model of this shape, f32. */
int eng_kv_pool_init(struct eng_kv_pool *pool, const struct eng_model_config *cfg, int block_size,
                     int n_blocks, struct kc_error *err);
/* The same with elements of dtype: ENG_DTYPE_F32 or ENG_DTYPE_BF16 (else KC_EINVAL). */
int eng_kv_pool_init_dtype(struct eng_kv_pool *pool, const struct eng_model_config *cfg,
                           int block_size, int n_blocks, enum eng_dtype dtype,
                           struct kc_error *err);
/* Parses "f32" / "bf16" into ENG_DTYPE_F32 / ENG_DTYPE_BF16; KC_EINVAL otherwise. */
int eng_kv_dtype_parse(const char *s, enum eng_dtype *out);
/* Frees the pool; a no-op on NULL, on a zeroed (never initialised) pool and on a freed one. */
void eng_kv_pool_free(struct eng_kv_pool *pool);
/* Number of reservable blocks (a snapshot): the free stack, plus the idle cached blocks when
 * prefix caching is on. */
int eng_kv_pool_n_free(struct eng_kv_pool *pool);

/* Blocks needed to hold n_tokens positions. */
int eng_kv_blocks_for(const struct eng_kv_pool *pool, int n_tokens);

/* Makes seq able to hold n_tokens positions, taking blocks from the pool: from the free stack
 * first, then (prefix caching on) by evicting the least recently used idle cached blocks from
 * the index. All or nothing: KC_EBUSY (seq unchanged) when the pool has too few reservable
 * blocks; KC_ENOMEM when the block table cannot grow. */
int eng_seq_reserve(struct eng_kv_pool *pool, struct eng_seq *seq, int n_tokens);
/* Returns every block of seq to the pool and resets it to empty (keeps nothing). An empty
 * sequence never touches the pool, so releasing it is safe before the pool exists. With prefix
 * caching on it drops one reference per block, last block first; a block reaching 0 goes to
 * the LRU tail when it is cached (so a prefix's tail is evicted before its head), else to the
 * free stack. */
void eng_seq_release(struct eng_kv_pool *pool, struct eng_seq *seq);

/* Turns prefix caching on for this pool (allocates its index: per-block refcount, hash,
 * parent hash and parent block, the block's tokens, LRU links; a hash table keyed by the
 * chained hash; O(n_blocks * block_size) ints, allocated once here). Off (the default after
 * eng_kv_pool_init) the pool behaves exactly as without it. Calling it again is a no-op.
 * Blocks already reserved count as referenced once. KC_ENOMEM (pool unchanged) on failure. */
int eng_kv_prefix_enable(struct eng_kv_pool *pool, struct kc_error *err);
bool eng_kv_prefix_enabled(const struct eng_kv_pool *pool);

/* Attaches to the EMPTY seq (n_blocks == 0, n_tokens == 0; else KC_EINVAL) the longest run of
 * cached blocks whose content matches tokens[0..) (at least max_tokens of them are readable;
 * NULL attaches nothing): block i matches when its chained hash
 * h_i = H(h_{i-1}, tokens[i*bs .. (i+1)*bs)) (h_{-1} a fixed seed) is in the index AND its
 * stored tokens, parent hash and parent block compare equal. Only whole blocks, and at most
 * max_tokens positions (callers pass n - 1 so that the last prompt token is always computed).
 * Takes a reference on each block (a cached block nobody referenced leaves the LRU list).
 * Sets seq->n_blocks and seq->n_tokens to what it attached and returns the number of tokens
 * attached (0 when disabled or nothing matched). Grows the block table as eng_seq_reserve
 * does; KC_ENOMEM (negative) if that fails (seq unchanged: no block attached). */
int eng_kv_prefix_attach(struct eng_kv_pool *pool, struct eng_seq *seq, const int32_t *tokens,
                         int max_tokens);

/* Registers the full blocks of seq that cover positions [0, n) (n <= seq->n_tokens; tokens[0..n)
 * are their tokens) as cached content. The caller promises those positions hold EXACT K/V of
 * those tokens (never predicted KV). Blocks already in the index are skipped; a block whose
 * hash is already taken by another block is left unregistered (duplicate content), and so is
 * everything after a block whose hash is taken by different content (its children could never
 * be reached). No-op when disabled. Never changes seq. */
void eng_kv_prefix_publish(struct eng_kv_pool *pool, const struct eng_seq *seq,
                           const int32_t *tokens, int n);

struct eng_kv_pool_stats {
    int n_blocks;
    int n_free;        /* on the free stack (never cached, or evicted) */
    int n_cached_idle; /* cached, referenced by no sequence: reusable, evictable (LRU) */
    int n_in_use;      /* referenced by at least one sequence */
    int n_cached;      /* in the index, in use or idle */
    uint64_t evictions;
};
/* A consistent snapshot (taken under the pool lock). */
void eng_kv_pool_stats_get(struct eng_kv_pool *pool, struct eng_kv_pool_stats *out);

/* Checks the pool's accounting (tests): every block is in exactly one of {free stack, LRU
 * list with refcount 0, refcount > 0}; the index holds exactly the cached blocks, each once;
 * n_free/n_cached_idle/n_in_use add up to n_blocks; the sum of refcounts equals
 * expected_refs when expected_refs >= 0 (the number of (sequence, block) pairs the caller
 * holds). KC_EINVAL with a message naming the first broken rule (KC_ENOMEM if its scratch
 * cannot be allocated). Takes the pool lock. */
int eng_kv_pool_check(struct eng_kv_pool *pool, int expected_refs, struct kc_error *err);

/* Test-only hook: replaces the block hash of this (enabled) pool, e.g. by a constant to force
 * collisions; NULL restores the default. Never used outside tests. */
typedef uint64_t (*eng_kv_prefix_hash_fn)(uint64_t parent, const int32_t *tokens, int n);
void eng_kv_prefix_set_hash_for_test(struct eng_kv_pool *pool, eng_kv_prefix_hash_fn fn);

/* The view eng_attention needs for layer l of seq (its dtype is the pool's). */
struct eng_kv_view eng_kv_view_of(const struct eng_kv_pool *pool, const struct eng_seq *seq,
                                  int layer);
/* Pointers to the K and V vectors ([Hkv * D] each) of position pos of layer l of an f32 pool
 * (asserts the dtype). */
float *eng_kv_k_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);
float *eng_kv_v_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);
/* The same for any dtype: pointers to the first element (float or uint16_t bf16 bits). */
void *eng_kv_k_ptr(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);
void *eng_kv_v_ptr(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);
/* Element conversion between f32 rows and the pool's dtype: n elements from src (f32) into dst
 * (pool elements; bf16 rounds to nearest even), and back (exact). Memcpy for f32 pools. */
void eng_kv_store_f32(const struct eng_kv_pool *pool, void *dst, const float *src, size_t n);
void eng_kv_load_f32(const struct eng_kv_pool *pool, float *dst, const void *src, size_t n);
/* Stores / loads the K and V vectors ([Hkv * D] f32 each) of position pos of layer l in the
 * pool's dtype (k or v NULL: skipped). */
void eng_kv_row_put(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos,
                    const float *k, const float *v);
void eng_kv_row_get(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos,
                    float *k, float *v);

#endif /* ENG_KV_CACHE_H */
