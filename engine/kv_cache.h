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
 * slab + (b * L + l) * 2 * block_size * Hkv * D. Keys are stored after RoPE.
 *
 * DESIGN invariants:
 *  1. A block is either on the free stack or in exactly one sequence's block table.
 *  2. seq->n_tokens <= seq->n_blocks * block_size: positions below n_tokens hold valid K/V.
 *  3. The pool's lock guards only the free stack; block contents are touched without it by
 *     the single stage that owns the sequence.
 */
#ifndef ENG_KV_CACHE_H
#define ENG_KV_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/ops.h"

struct eng_model_config;

struct eng_kv_pool {
    int n_layers;   /* L */
    int n_kv_heads; /* Hkv */
    int head_dim;   /* D */
    int block_size; /* tokens per block */
    int n_blocks;
    size_t block_floats;  /* L * 2 * block_size * Hkv * D */
    float *slab;          /* [n_blocks, L, 2, block_size, Hkv, D] */
    pthread_mutex_t lock; /* guards free_stack and n_free */
    int32_t *free_stack;  /* [n_blocks] */
    int n_free;
};

/* A sequence's block table and how many positions of it hold K/V. */
struct eng_seq {
    int32_t *blocks; /* [cap_blocks] block ids; first n_blocks valid */
    int n_blocks;
    int cap_blocks;
    int n_tokens;
};

/* Bytes of slab one block takes for this model shape. */
size_t eng_kv_block_bytes(const struct eng_model_config *cfg, int block_size);

/* Allocates a pool of n_blocks blocks of block_size tokens for a model of this shape. */
int eng_kv_pool_init(struct eng_kv_pool *pool, const struct eng_model_config *cfg, int block_size,
                     int n_blocks, struct kc_error *err);
void eng_kv_pool_free(struct eng_kv_pool *pool);
/* Number of free blocks (a snapshot). */
int eng_kv_pool_n_free(struct eng_kv_pool *pool);

/* Blocks needed to hold n_tokens positions. */
int eng_kv_blocks_for(const struct eng_kv_pool *pool, int n_tokens);

/* Makes seq able to hold n_tokens positions, taking blocks from the pool. All or nothing:
 * KC_EBUSY (seq unchanged) when the pool has too few free blocks. */
int eng_seq_reserve(struct eng_kv_pool *pool, struct eng_seq *seq, int n_tokens);
/* Returns every block of seq to the pool and resets it to empty (keeps nothing). An empty
 * sequence never touches the pool, so releasing it is safe before the pool exists. */
void eng_seq_release(struct eng_kv_pool *pool, struct eng_seq *seq);

/* The view eng_attention needs for layer l of seq. */
struct eng_kv_view eng_kv_view_of(const struct eng_kv_pool *pool, const struct eng_seq *seq,
                                  int layer);
/* Pointers to the K and V vectors ([Hkv * D] each) of position pos of layer l. */
float *eng_kv_k_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);
float *eng_kv_v_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos);

#endif /* ENG_KV_CACHE_H */
