/* kv_cache.c — paged KV blocks and block tables (see kv_cache.h for the invariants). */
#include "engine/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model_config.h"

size_t eng_kv_block_bytes(const struct eng_model_config *cfg, int block_size) {
    return (size_t)cfg->n_layers * 2 * (size_t)block_size * (size_t)cfg->n_kv_heads *
           (size_t)cfg->head_dim * sizeof(float);
}

int eng_kv_pool_init(struct eng_kv_pool *pool, const struct eng_model_config *cfg, int block_size,
                     int n_blocks, struct kc_error *err) {
    if (block_size <= 0 || block_size > 4096 || n_blocks <= 0) {
        return kc_error_set(err, KC_EINVAL, "kv pool: block_size %d / n_blocks %d out of range",
                            block_size, n_blocks);
    }
    size_t block_floats = (size_t)cfg->n_layers * 2 * (size_t)block_size * (size_t)cfg->n_kv_heads *
                          (size_t)cfg->head_dim;
    size_t slab_bytes;
    if (!kc_size_mul(block_floats * sizeof(float), (size_t)n_blocks, &slab_bytes)) {
        return kc_error_set(err, KC_ERANGE, "kv pool: size overflows");
    }
    struct eng_kv_pool p = {
        .n_layers = cfg->n_layers,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .block_size = block_size,
        .n_blocks = n_blocks,
        .block_floats = block_floats,
    };
    p.slab = kc_aligned_alloc(slab_bytes);
    p.free_stack = kc_calloc((size_t)n_blocks, sizeof(int32_t));
    if (p.slab == NULL || p.free_stack == NULL) {
        kc_aligned_free(p.slab);
        free(p.free_stack);
        return kc_error_set(err, KC_ENOMEM, "kv pool: cannot allocate %zu bytes", slab_bytes);
    }
    /* Highest ids at the bottom so the first allocations get blocks 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) {
        p.free_stack[i] = n_blocks - 1 - i;
    }
    p.n_free = n_blocks;
    pthread_mutex_init(&p.lock, NULL);
    *pool = p;
    return KC_OK;
}

void eng_kv_pool_free(struct eng_kv_pool *pool) {
    if (pool == NULL || pool->slab == NULL) {
        return;
    }
    pthread_mutex_destroy(&pool->lock);
    kc_aligned_free(pool->slab);
    free(pool->free_stack);
    memset(pool, 0, sizeof(*pool));
}

int eng_kv_pool_n_free(struct eng_kv_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    int n = pool->n_free;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int eng_kv_blocks_for(const struct eng_kv_pool *pool, int n_tokens) {
    return (n_tokens + pool->block_size - 1) / pool->block_size;
}

int eng_seq_reserve(struct eng_kv_pool *pool, struct eng_seq *seq, int n_tokens) {
    if (n_tokens < 0) {
        return KC_EINVAL;
    }
    const int need = eng_kv_blocks_for(pool, n_tokens);
    if (need <= seq->n_blocks) {
        return KC_OK;
    }
    if (need > seq->cap_blocks) {
        int32_t *grown = realloc(seq->blocks, (size_t)need * sizeof(int32_t));
        if (grown == NULL) {
            return KC_ENOMEM;
        }
        seq->blocks = grown;
        seq->cap_blocks = need;
    }
    const int extra = need - seq->n_blocks;
    pthread_mutex_lock(&pool->lock);
    if (pool->n_free < extra) {
        pthread_mutex_unlock(&pool->lock);
        return KC_EBUSY;
    }
    for (int i = 0; i < extra; i++) {
        seq->blocks[seq->n_blocks + i] = pool->free_stack[--pool->n_free];
    }
    pthread_mutex_unlock(&pool->lock);
    seq->n_blocks = need;
    return KC_OK;
}

void eng_seq_release(struct eng_kv_pool *pool, struct eng_seq *seq) {
    if (seq->n_blocks > 0) {
        pthread_mutex_lock(&pool->lock);
        for (int i = 0; i < seq->n_blocks; i++) {
            KC_ASSERT(pool->n_free < pool->n_blocks);
            pool->free_stack[pool->n_free++] = seq->blocks[i];
        }
        pthread_mutex_unlock(&pool->lock);
    }
    free(seq->blocks);
    memset(seq, 0, sizeof(*seq));
}

struct eng_kv_view eng_kv_view_of(const struct eng_kv_pool *pool, const struct eng_seq *seq,
                                  int layer) {
    const size_t plane = (size_t)pool->block_size * (size_t)pool->n_kv_heads * pool->head_dim;
    struct eng_kv_view v = {
        .base = pool->slab + (size_t)layer * 2 * plane,
        .block_stride = pool->block_floats,
        .v_offset = plane,
        .block_size = pool->block_size,
        .block_table = seq->blocks,
    };
    return v;
}

float *eng_kv_k_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    KC_ASSERT(pos >= 0 && pos < seq->n_blocks * pool->block_size);
    const size_t row = (size_t)pool->n_kv_heads * pool->head_dim;
    const size_t plane = (size_t)pool->block_size * row;
    const int32_t b = seq->blocks[pos / pool->block_size];
    return pool->slab + (size_t)b * pool->block_floats + (size_t)layer * 2 * plane +
           (size_t)(pos % pool->block_size) * row;
}

float *eng_kv_v_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    const size_t plane = (size_t)pool->block_size * pool->n_kv_heads * pool->head_dim;
    return eng_kv_k_at(pool, seq, layer, pos) + plane;
}
