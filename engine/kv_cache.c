/* kv_cache.c — paged KV blocks and block tables (see kv_cache.h for the invariants). */
#include "engine/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "engine/io/model_config.h"

/* The prefix-cache index: per-block state in flat arrays indexed by block id, a chained
 * hash table (bucket heads + per-block next links) and a doubly linked LRU list. Everything
 * here is guarded by the pool lock. */
struct eng_kv_prefix {
    int32_t *ref;          /* [n_blocks] number of block tables holding the block */
    uint8_t *cached;       /* [n_blocks] 1 when the block is in the index */
    uint64_t *hash;        /* [n_blocks] chained hash of the block (valid when cached) */
    uint64_t *parent_hash; /* [n_blocks] chained hash of the block before it (seed for block 0) */
    int32_t *parent_id;    /* [n_blocks] the cached block before it (-1 for block 0) ... */
    uint32_t *parent_gen;  /* [n_blocks] ... and that block's generation when this one was
                              registered: a parent evicted and reused no longer matches */
    uint32_t *gen;         /* [n_blocks] bumped each time the block enters or leaves the index */
    int32_t *tokens;       /* [n_blocks * block_size] the block's tokens (valid when cached) */
    int32_t *lru_prev;     /* [n_blocks] LRU links (valid on the LRU list) */
    int32_t *lru_next;
    int32_t lru_head; /* least recently used idle cached block, -1 when empty */
    int32_t lru_tail; /* most recently used */
    int n_idle;       /* on the LRU list */
    int n_cached;     /* in the index */
    int32_t *bucket;  /* [n_buckets] first block of each chain, -1 when empty */
    int32_t *ht_next; /* [n_blocks] next block in the same chain */
    uint64_t bucket_mask;
    uint64_t evictions;
    eng_kv_prefix_hash_fn hash_fn;
};

/* h_{-1}: the parent hash of block 0. */
#define KV_HASH_SEED 0x6b76636173742d31ULL

/* splitmix64's finaliser: a fast, well-mixed 64-bit permutation. */
static uint64_t kv_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* H(parent, tokens): a non-cryptographic chained hash. It only has to spread blocks over the
 * table and make collisions rare: a hit is verified by comparing the block's tokens and its
 * parent (hash and block), so a collision, accidental or forged by a client's prompt, costs a
 * miss, never wrong K/V. A cryptographic hash would only add latency under the pool lock. */
static uint64_t kv_hash_default(uint64_t parent, const int32_t *tokens, int n) {
    uint64_t h = kv_mix64(parent ^ 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < n; i++) {
        h = kv_mix64(h + (uint64_t)(uint32_t)tokens[i] * 0x9e3779b97f4a7c15ULL + (uint64_t)i);
    }
    return h;
}

static uint64_t kv_hash(const struct eng_kv_prefix *px, uint64_t parent, const int32_t *tokens,
                        int n) {
    return px->hash_fn != NULL ? px->hash_fn(parent, tokens, n)
                               : kv_hash_default(parent, tokens, n);
}

static int32_t *kv_bucket_of(struct eng_kv_prefix *px, uint64_t h) {
    return &px->bucket[kv_mix64(h) & px->bucket_mask];
}

/* The cached block with chained hash h, or -1. */
static int32_t kv_index_find(struct eng_kv_prefix *px, uint64_t h) {
    for (int32_t b = *kv_bucket_of(px, h); b >= 0; b = px->ht_next[b]) {
        if (px->hash[b] == h) {
            return b;
        }
    }
    return -1;
}

static void kv_index_remove(struct eng_kv_prefix *px, int32_t b) {
    int32_t *link = kv_bucket_of(px, px->hash[b]);
    while (*link != b) {
        KC_ASSERT(*link >= 0);
        link = &px->ht_next[*link];
    }
    *link = px->ht_next[b];
    px->ht_next[b] = -1;
    px->cached[b] = 0;
    px->gen[b]++;
    px->n_cached--;
}

static void kv_lru_unlink(struct eng_kv_prefix *px, int32_t b) {
    const int32_t p = px->lru_prev[b], n = px->lru_next[b];
    if (p >= 0) {
        px->lru_next[p] = n;
    } else {
        px->lru_head = n;
    }
    if (n >= 0) {
        px->lru_prev[n] = p;
    } else {
        px->lru_tail = p;
    }
    px->lru_prev[b] = px->lru_next[b] = -1;
    px->n_idle--;
}

static void kv_lru_push_tail(struct eng_kv_prefix *px, int32_t b) {
    px->lru_prev[b] = px->lru_tail;
    px->lru_next[b] = -1;
    if (px->lru_tail >= 0) {
        px->lru_next[px->lru_tail] = b;
    } else {
        px->lru_head = b;
    }
    px->lru_tail = b;
    px->n_idle++;
}

static void kv_prefix_destroy(struct eng_kv_prefix *px) {
    if (px == NULL) {
        return;
    }
    free(px->ref);
    free(px->cached);
    free(px->hash);
    free(px->parent_hash);
    free(px->parent_id);
    free(px->parent_gen);
    free(px->gen);
    free(px->tokens);
    free(px->lru_prev);
    free(px->lru_next);
    free(px->bucket);
    free(px->ht_next);
    free(px);
}

static size_t kv_elem_size(enum eng_dtype dtype) {
    return dtype == ENG_DTYPE_BF16 ? sizeof(uint16_t) : sizeof(float);
}

size_t eng_kv_block_bytes_of(const struct eng_model_config *cfg, int block_size,
                             enum eng_dtype dtype) {
    return (size_t)cfg->n_layers * 2 * (size_t)block_size * (size_t)cfg->n_kv_heads *
           (size_t)cfg->head_dim * kv_elem_size(dtype);
}

size_t eng_kv_block_bytes(const struct eng_model_config *cfg, int block_size) {
    return eng_kv_block_bytes_of(cfg, block_size, ENG_DTYPE_F32);
}

int eng_kv_dtype_parse(const char *s, enum eng_dtype *out) {
    if (s != NULL && strcmp(s, "f32") == 0) {
        *out = ENG_DTYPE_F32;
        return KC_OK;
    }
    if (s != NULL && strcmp(s, "bf16") == 0) {
        *out = ENG_DTYPE_BF16;
        return KC_OK;
    }
    return KC_EINVAL;
}

int eng_kv_pool_init(struct eng_kv_pool *pool, const struct eng_model_config *cfg, int block_size,
                     int n_blocks, struct kc_error *err) {
    return eng_kv_pool_init_dtype(pool, cfg, block_size, n_blocks, ENG_DTYPE_F32, err);
}

int eng_kv_pool_init_dtype(struct eng_kv_pool *pool, const struct eng_model_config *cfg,
                           int block_size, int n_blocks, enum eng_dtype dtype,
                           struct kc_error *err) {
    if (block_size <= 0 || block_size > 4096 || n_blocks <= 0) {
        return kc_error_set(err, KC_EINVAL, "kv pool: block_size %d / n_blocks %d out of range",
                            block_size, n_blocks);
    }
    if (dtype != ENG_DTYPE_F32 && dtype != ENG_DTYPE_BF16) {
        return kc_error_set(err, KC_EINVAL, "kv pool: element type %s is not f32 or bf16",
                            eng_dtype_name(dtype));
    }
    size_t block_elems = (size_t)cfg->n_layers * 2 * (size_t)block_size * (size_t)cfg->n_kv_heads *
                         (size_t)cfg->head_dim;
    size_t slab_bytes;
    if (!kc_size_mul(block_elems * kv_elem_size(dtype), (size_t)n_blocks, &slab_bytes)) {
        return kc_error_set(err, KC_ERANGE, "kv pool: size overflows");
    }
    struct eng_kv_pool p = {
        .n_layers = cfg->n_layers,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .block_size = block_size,
        .n_blocks = n_blocks,
        .dtype = dtype,
        .elem_size = kv_elem_size(dtype),
        .block_elems = block_elems,
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
    kv_prefix_destroy(pool->prefix);
    kc_aligned_free(pool->slab);
    free(pool->free_stack);
    memset(pool, 0, sizeof(*pool));
}

int eng_kv_pool_n_free(struct eng_kv_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    int n = pool->n_free + (pool->prefix != NULL ? pool->prefix->n_idle : 0);
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
    struct eng_kv_prefix *px = pool->prefix;
    if (px == NULL) {
        if (pool->n_free < extra) {
            pthread_mutex_unlock(&pool->lock);
            return KC_EBUSY;
        }
        for (int i = 0; i < extra; i++) {
            seq->blocks[seq->n_blocks + i] = pool->free_stack[--pool->n_free];
        }
    } else {
        if (pool->n_free + px->n_idle < extra) {
            pthread_mutex_unlock(&pool->lock);
            return KC_EBUSY;
        }
        for (int i = 0; i < extra; i++) {
            int32_t b;
            if (pool->n_free > 0) {
                b = pool->free_stack[--pool->n_free];
            } else {
                /* Evict the least recently used idle cached block. */
                b = px->lru_head;
                KC_ASSERT(b >= 0 && px->ref[b] == 0 && px->cached[b]);
                kv_lru_unlink(px, b);
                kv_index_remove(px, b);
                px->evictions++;
            }
            px->ref[b] = 1;
            seq->blocks[seq->n_blocks + i] = b;
        }
    }
    pthread_mutex_unlock(&pool->lock);
    seq->n_blocks = need;
    return KC_OK;
}

void eng_seq_release(struct eng_kv_pool *pool, struct eng_seq *seq) {
    if (seq->n_blocks > 0) {
        pthread_mutex_lock(&pool->lock);
        struct eng_kv_prefix *px = pool->prefix;
        if (px == NULL) {
            for (int i = 0; i < seq->n_blocks; i++) {
                KC_ASSERT(pool->n_free < pool->n_blocks);
                pool->free_stack[pool->n_free++] = seq->blocks[i];
            }
        } else {
            /* Last block first: the LRU then holds a prefix's tail before its head, so
             * eviction takes tails first and a shorter prefix stays reusable longer. */
            for (int i = seq->n_blocks - 1; i >= 0; i--) {
                const int32_t b = seq->blocks[i];
                KC_ASSERT(b >= 0 && b < pool->n_blocks && px->ref[b] > 0);
                if (--px->ref[b] > 0) {
                    continue;
                }
                if (px->cached[b]) {
                    kv_lru_push_tail(px, b);
                } else {
                    KC_ASSERT(pool->n_free < pool->n_blocks);
                    pool->free_stack[pool->n_free++] = b;
                }
            }
        }
        pthread_mutex_unlock(&pool->lock);
    }
    free(seq->blocks);
    memset(seq, 0, sizeof(*seq));
}

struct eng_kv_view eng_kv_view_of(const struct eng_kv_pool *pool, const struct eng_seq *seq,
                                  int layer) {
    const size_t plane = (size_t)pool->block_size * (size_t)pool->n_kv_heads * pool->head_dim;
    const size_t off = (size_t)layer * 2 * plane; /* elements */
    struct eng_kv_view v = {
        .block_stride = pool->block_elems,
        .v_offset = plane,
        .block_size = pool->block_size,
        .block_table = seq->blocks,
        .dtype = pool->dtype,
    };
    if (pool->dtype == ENG_DTYPE_BF16) {
        v.base16 = (const uint16_t *)pool->slab + off;
    } else {
        v.base = (const float *)pool->slab + off;
    }
    return v;
}

void *eng_kv_k_ptr(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    KC_ASSERT(pos >= 0 && pos < seq->n_blocks * pool->block_size);
    const size_t row = (size_t)pool->n_kv_heads * pool->head_dim;
    const size_t plane = (size_t)pool->block_size * row;
    const int32_t b = seq->blocks[pos / pool->block_size];
    const size_t elem = (size_t)b * pool->block_elems + (size_t)layer * 2 * plane +
                        (size_t)(pos % pool->block_size) * row;
    return (char *)pool->slab + elem * pool->elem_size;
}

void *eng_kv_v_ptr(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    const size_t plane = (size_t)pool->block_size * pool->n_kv_heads * pool->head_dim;
    return (char *)eng_kv_k_ptr(pool, seq, layer, pos) + plane * pool->elem_size;
}

float *eng_kv_k_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    KC_ASSERT(pool->dtype == ENG_DTYPE_F32);
    return eng_kv_k_ptr(pool, seq, layer, pos);
}

float *eng_kv_v_at(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos) {
    KC_ASSERT(pool->dtype == ENG_DTYPE_F32);
    return eng_kv_v_ptr(pool, seq, layer, pos);
}

void eng_kv_store_f32(const struct eng_kv_pool *pool, void *dst, const float *src, size_t n) {
    if (pool->dtype == ENG_DTYPE_BF16) {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) {
            d[i] = eng_f32_to_bf16(src[i]);
        }
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

void eng_kv_load_f32(const struct eng_kv_pool *pool, float *dst, const void *src, size_t n) {
    if (pool->dtype == ENG_DTYPE_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            dst[i] = eng_bf16_to_f32(s[i]);
        }
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

void eng_kv_row_put(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos,
                    const float *k, const float *v) {
    const size_t kvd = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    if (k != NULL) {
        eng_kv_store_f32(pool, eng_kv_k_ptr(pool, seq, layer, pos), k, kvd);
    }
    if (v != NULL) {
        eng_kv_store_f32(pool, eng_kv_v_ptr(pool, seq, layer, pos), v, kvd);
    }
}

void eng_kv_row_get(const struct eng_kv_pool *pool, const struct eng_seq *seq, int layer, int pos,
                    float *k, float *v) {
    const size_t kvd = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    if (k != NULL) {
        eng_kv_load_f32(pool, k, eng_kv_k_ptr(pool, seq, layer, pos), kvd);
    }
    if (v != NULL) {
        eng_kv_load_f32(pool, v, eng_kv_v_ptr(pool, seq, layer, pos), kvd);
    }
}

int eng_kv_prefix_enable(struct eng_kv_pool *pool, struct kc_error *err) {
    if (pool->prefix != NULL) {
        return KC_OK;
    }
    const size_t nb = (size_t)pool->n_blocks;
    size_t n_buckets = 1;
    while (n_buckets < 2 * nb) {
        n_buckets <<= 1;
    }
    struct eng_kv_prefix *px = kc_calloc(1, sizeof(*px));
    if (px != NULL) {
        px->ref = kc_calloc(nb, sizeof(int32_t));
        px->cached = kc_calloc(nb, sizeof(uint8_t));
        px->hash = kc_calloc(nb, sizeof(uint64_t));
        px->parent_hash = kc_calloc(nb, sizeof(uint64_t));
        px->parent_id = kc_calloc(nb, sizeof(int32_t));
        px->parent_gen = kc_calloc(nb, sizeof(uint32_t));
        px->gen = kc_calloc(nb, sizeof(uint32_t));
        px->tokens = kc_calloc(nb * (size_t)pool->block_size, sizeof(int32_t));
        px->lru_prev = kc_calloc(nb, sizeof(int32_t));
        px->lru_next = kc_calloc(nb, sizeof(int32_t));
        px->bucket = kc_calloc(n_buckets, sizeof(int32_t));
        px->ht_next = kc_calloc(nb, sizeof(int32_t));
    }
    if (px == NULL || px->ref == NULL || px->cached == NULL || px->hash == NULL ||
        px->parent_hash == NULL || px->parent_id == NULL || px->parent_gen == NULL ||
        px->gen == NULL || px->tokens == NULL || px->lru_prev == NULL || px->lru_next == NULL ||
        px->bucket == NULL || px->ht_next == NULL) {
        kv_prefix_destroy(px);
        return kc_error_set(err, KC_ENOMEM, "kv pool: cannot allocate the prefix-cache index");
    }
    for (size_t i = 0; i < n_buckets; i++) {
        px->bucket[i] = -1;
    }
    for (size_t b = 0; b < nb; b++) {
        px->lru_prev[b] = px->lru_next[b] = px->ht_next[b] = px->parent_id[b] = -1;
    }
    px->bucket_mask = n_buckets - 1;
    px->lru_head = px->lru_tail = -1;

    pthread_mutex_lock(&pool->lock);
    /* Blocks reserved before enabling are held by exactly one sequence. */
    for (size_t b = 0; b < nb; b++) {
        px->ref[b] = 1;
    }
    for (int i = 0; i < pool->n_free; i++) {
        px->ref[pool->free_stack[i]] = 0;
    }
    pool->prefix = px;
    pthread_mutex_unlock(&pool->lock);
    return KC_OK;
}

bool eng_kv_prefix_enabled(const struct eng_kv_pool *pool) {
    return pool->prefix != NULL;
}

void eng_kv_prefix_set_hash_for_test(struct eng_kv_pool *pool, eng_kv_prefix_hash_fn fn) {
    pthread_mutex_lock(&pool->lock);
    if (pool->prefix != NULL) {
        pool->prefix->hash_fn = fn;
    }
    pthread_mutex_unlock(&pool->lock);
}

/* Does cached block b hold exactly tokens t, after the parent (parent_hash, pid, pgen)? */
static bool kv_block_matches(const struct eng_kv_pool *pool, int32_t b, const int32_t *t,
                             uint64_t parent_hash, int32_t pid, uint32_t pgen) {
    const struct eng_kv_prefix *px = pool->prefix;
    return px->parent_hash[b] == parent_hash && px->parent_id[b] == pid &&
           px->parent_gen[b] == pgen &&
           memcmp(&px->tokens[(size_t)b * (size_t)pool->block_size], t,
                  (size_t)pool->block_size * sizeof(int32_t)) == 0;
}

int eng_kv_prefix_attach(struct eng_kv_pool *pool, struct eng_seq *seq, const int32_t *tokens,
                         int max_tokens) {
    if (seq->n_blocks != 0 || seq->n_tokens != 0) {
        return KC_EINVAL;
    }
    if (pool->prefix == NULL || max_tokens < pool->block_size || tokens == NULL) {
        return 0;
    }
    const int bs = pool->block_size;
    const int max_blocks = max_tokens / bs;
    pthread_mutex_lock(&pool->lock);
    struct eng_kv_prefix *px = pool->prefix;
    /* First pass: find the matching run and write its ids into the block table (beyond
     * n_blocks, so seq is unchanged until the references are taken). */
    uint64_t h = KV_HASH_SEED;
    int32_t pid = -1;
    uint32_t pgen = 0;
    int m = 0;
    while (m < max_blocks) {
        const int32_t *t = tokens + (size_t)m * (size_t)bs;
        const uint64_t hm = kv_hash(px, h, t, bs);
        const int32_t b = kv_index_find(px, hm);
        if (b < 0 || !kv_block_matches(pool, b, t, h, pid, pgen)) {
            break;
        }
        if (m >= seq->cap_blocks) {
            int cap = seq->cap_blocks < 4 ? 4 : 2 * seq->cap_blocks;
            cap = cap > max_blocks ? max_blocks : cap;
            int32_t *grown = realloc(seq->blocks, (size_t)cap * sizeof(int32_t));
            if (grown == NULL) {
                pthread_mutex_unlock(&pool->lock);
                return KC_ENOMEM;
            }
            seq->blocks = grown;
            seq->cap_blocks = cap;
        }
        seq->blocks[m++] = b;
        h = hm;
        pid = b;
        pgen = px->gen[b];
    }
    for (int i = 0; i < m; i++) {
        const int32_t b = seq->blocks[i];
        if (px->ref[b]++ == 0) {
            kv_lru_unlink(px, b);
        }
    }
    pthread_mutex_unlock(&pool->lock);
    seq->n_blocks = m;
    seq->n_tokens = m * bs;
    return m * bs;
}

void eng_kv_prefix_publish(struct eng_kv_pool *pool, const struct eng_seq *seq,
                           const int32_t *tokens, int n) {
    if (pool->prefix == NULL || tokens == NULL) {
        return;
    }
    const int bs = pool->block_size;
    KC_ASSERT(n <= seq->n_tokens);
    const int n_full = n / bs;
    pthread_mutex_lock(&pool->lock);
    struct eng_kv_prefix *px = pool->prefix;
    uint64_t h = KV_HASH_SEED;
    int32_t pid = -1; /* the indexed block that stands for the prefix so far */
    uint32_t pgen = 0;
    for (int i = 0; i < n_full; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)bs;
        const uint64_t hi = kv_hash(px, h, t, bs);
        const int32_t mine = seq->blocks[i];
        const int32_t found = kv_index_find(px, hi);
        int32_t rep; /* the indexed block that now stands for prefix [0, (i+1)*bs) */
        if (found >= 0) {
            if (!kv_block_matches(pool, found, t, h, pid, pgen)) {
                break; /* hash taken by other content: nothing below it can be reached */
            }
            rep = found; /* already cached: mine (attached or published before) or a twin */
        } else if (px->cached[mine]) {
            break; /* mine is cached under another hash: the caller's tokens disagree */
        } else {
            KC_ASSERT(px->ref[mine] > 0);
            px->cached[mine] = 1;
            px->gen[mine]++;
            px->hash[mine] = hi;
            px->parent_hash[mine] = h;
            px->parent_id[mine] = pid;
            px->parent_gen[mine] = pgen;
            memcpy(&px->tokens[(size_t)mine * (size_t)bs], t, (size_t)bs * sizeof(int32_t));
            int32_t *head = kv_bucket_of(px, hi);
            px->ht_next[mine] = *head;
            *head = mine;
            px->n_cached++;
            rep = mine;
        }
        h = hi;
        pid = rep;
        pgen = px->gen[rep];
    }
    pthread_mutex_unlock(&pool->lock);
}

void eng_kv_pool_stats_get(struct eng_kv_pool *pool, struct eng_kv_pool_stats *out) {
    pthread_mutex_lock(&pool->lock);
    const struct eng_kv_prefix *px = pool->prefix;
    out->n_blocks = pool->n_blocks;
    out->n_free = pool->n_free;
    out->n_cached_idle = px != NULL ? px->n_idle : 0;
    out->n_in_use = pool->n_blocks - pool->n_free - out->n_cached_idle;
    out->n_cached = px != NULL ? px->n_cached : 0;
    out->evictions = px != NULL ? px->evictions : 0;
    pthread_mutex_unlock(&pool->lock);
}

/* The body of eng_kv_pool_check, under the lock; seen is [n_blocks] zeroed scratch. */
static int kv_pool_check_locked(struct eng_kv_pool *pool, int expected_refs, uint8_t *seen,
                                struct kc_error *err) {
    const int nb = pool->n_blocks;
    const struct eng_kv_prefix *px = pool->prefix;
    enum { ON_FREE = 1, ON_LRU = 2, IN_INDEX = 4 };
    if (pool->n_free < 0 || pool->n_free > nb) {
        return kc_error_set(err, KC_EINVAL, "kv check: n_free %d out of [0, %d]", pool->n_free, nb);
    }
    for (int i = 0; i < pool->n_free; i++) {
        const int32_t b = pool->free_stack[i];
        if (b < 0 || b >= nb) {
            return kc_error_set(err, KC_EINVAL, "kv check: free stack slot %d holds bad id %d", i,
                                b);
        }
        if (seen[b] & ON_FREE) {
            return kc_error_set(err, KC_EINVAL, "kv check: block %d is on the free stack twice", b);
        }
        seen[b] |= ON_FREE;
        if (px != NULL && px->ref[b] != 0) {
            return kc_error_set(err, KC_EINVAL,
                                "kv check: block %d is on the free stack with refcount %d", b,
                                px->ref[b]);
        }
        if (px != NULL && px->cached[b]) {
            return kc_error_set(err, KC_EINVAL,
                                "kv check: block %d is on the free stack and cached", b);
        }
    }
    if (px == NULL) {
        if (expected_refs >= 0 && expected_refs != nb - pool->n_free) {
            return kc_error_set(err, KC_EINVAL,
                                "kv check: %d blocks in use, the caller holds %d references",
                                nb - pool->n_free, expected_refs);
        }
        return KC_OK;
    }
    /* The LRU list: linked both ways, idle cached blocks only, n_idle long. */
    int n_lru = 0;
    int32_t prev = -1;
    for (int32_t b = px->lru_head; b >= 0; b = px->lru_next[b]) {
        if (b >= nb || n_lru >= nb) {
            return kc_error_set(err, KC_EINVAL, "kv check: LRU list is corrupt (id %d, length %d)",
                                b, n_lru);
        }
        if (seen[b] & (ON_FREE | ON_LRU)) {
            return kc_error_set(err, KC_EINVAL, "kv check: block %d is on the LRU list and %s", b,
                                (seen[b] & ON_FREE) ? "the free stack" : "on it twice");
        }
        seen[b] |= ON_LRU;
        if (px->lru_prev[b] != prev) {
            return kc_error_set(err, KC_EINVAL, "kv check: LRU block %d has prev %d, not %d", b,
                                px->lru_prev[b], prev);
        }
        if (px->ref[b] != 0 || !px->cached[b]) {
            return kc_error_set(err, KC_EINVAL,
                                "kv check: LRU block %d has refcount %d, cached %d (want 0, 1)", b,
                                px->ref[b], px->cached[b]);
        }
        prev = b;
        n_lru++;
    }
    if (px->lru_tail != prev || n_lru != px->n_idle) {
        return kc_error_set(err, KC_EINVAL,
                            "kv check: LRU list has %d blocks ending at %d, counters say %d at %d",
                            n_lru, prev, px->n_idle, px->lru_tail);
    }
    /* Everything else is referenced. */
    int64_t refs = 0;
    int n_in_use = 0;
    for (int b = 0; b < nb; b++) {
        if (px->ref[b] < 0) {
            return kc_error_set(err, KC_EINVAL, "kv check: block %d has refcount %d", b,
                                px->ref[b]);
        }
        if (seen[b] == 0 && px->ref[b] == 0) {
            return kc_error_set(err, KC_EINVAL,
                                "kv check: block %d is lost (not free, not idle, refcount 0)", b);
        }
        refs += px->ref[b];
        n_in_use += px->ref[b] > 0;
    }
    if (pool->n_free + px->n_idle + n_in_use != nb) {
        return kc_error_set(err, KC_EINVAL, "kv check: free %d + idle %d + in use %d != %d blocks",
                            pool->n_free, px->n_idle, n_in_use, nb);
    }
    if (expected_refs >= 0 && refs != expected_refs) {
        return kc_error_set(err, KC_EINVAL,
                            "kv check: refcounts sum to %lld, the caller holds %d references",
                            (long long)refs, expected_refs);
    }
    /* The index: exactly the cached blocks, each once, in the right chain, hashes unique. */
    int n_index = 0;
    for (uint64_t k = 0; k <= px->bucket_mask; k++) {
        for (int32_t b = px->bucket[k]; b >= 0; b = px->ht_next[b]) {
            if (b >= nb || n_index >= nb) {
                return kc_error_set(err, KC_EINVAL, "kv check: hash chain %llu is corrupt",
                                    (unsigned long long)k);
            }
            if (seen[b] & IN_INDEX) {
                return kc_error_set(err, KC_EINVAL, "kv check: block %d is in the index twice", b);
            }
            seen[b] |= IN_INDEX;
            if (!px->cached[b]) {
                return kc_error_set(err, KC_EINVAL,
                                    "kv check: block %d is in the index, not cached", b);
            }
            if ((kv_mix64(px->hash[b]) & px->bucket_mask) != k) {
                return kc_error_set(err, KC_EINVAL, "kv check: block %d is in the wrong chain", b);
            }
            for (int32_t o = px->ht_next[b]; o >= 0 && o < nb; o = px->ht_next[o]) {
                if (px->hash[o] == px->hash[b]) {
                    return kc_error_set(err, KC_EINVAL, "kv check: blocks %d and %d share one hash",
                                        b, o);
                }
            }
            n_index++;
        }
    }
    int n_flagged = 0;
    for (int b = 0; b < nb; b++) {
        n_flagged += px->cached[b] != 0;
    }
    if (n_index != n_flagged || n_index != px->n_cached) {
        return kc_error_set(err, KC_EINVAL,
                            "kv check: index holds %d blocks, %d are flagged cached, n_cached %d",
                            n_index, n_flagged, px->n_cached);
    }
    return KC_OK;
}

int eng_kv_pool_check(struct eng_kv_pool *pool, int expected_refs, struct kc_error *err) {
    uint8_t *seen = kc_calloc((size_t)pool->n_blocks, 1);
    if (seen == NULL) {
        return kc_error_set(err, KC_ENOMEM, "kv check: out of memory");
    }
    pthread_mutex_lock(&pool->lock);
    const int rc = kv_pool_check_locked(pool, expected_refs, seen, err);
    pthread_mutex_unlock(&pool->lock);
    free(seen);
    return rc;
}
