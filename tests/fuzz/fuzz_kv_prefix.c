/*
 * fuzz_kv_prefix.c — libFuzzer target for the KV pool's prefix cache (engine/kv_cache.h;
 * issue 17 item 3): arbitrary interleavings of requests (attach with the n - 1 cap, reserve,
 * compute, publish), decode steps that grow a sequence, releases, re-publishes with shorter
 * lengths, on tiny pools where eviction is constant, optionally under a 4-bit hash so that
 * collisions are the rule.
 *
 * Input: byte 0 picks the pool (1..16 blocks), byte 1 the block size (1..4) and the hash
 * (default or 4-bit), then a stream of operations: one byte (op, sequence), then the op's
 * arguments (lengths, tokens from an alphabet of 4 so that prefixes repeat).
 *
 * Properties checked (abort on violation): "computing" position p of a sequence writes a value
 * that depends on its tokens [0, p] into K; every attached position holds exactly the value of
 * the attaching sequence's tokens (no wrong K/V is ever reused, whatever the hash); attach
 * returns a block-aligned count <= the cap and leaves seq empty on 0; eng_kv_pool_check
 * passes after every operation with the references the sequences hold; stats add up.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/io/model_config.h"
#include "engine/kv_cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_kv_prefix: %s:%d: %s\n", __FILE__, __LINE__, #c);                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { N_SEQ = 4, MAX_T = 40 };

static uint64_t hash_4bit(uint64_t parent, const int32_t *tokens, int n) {
    uint64_t h = parent * 31;
    for (int i = 0; i < n; i++) {
        h = h * 7 + (uint64_t)(uint32_t)tokens[i];
    }
    return h & 0xf;
}

static float prefix_value(const int32_t *t, int p) {
    uint32_t h = 2166136261u;
    for (int i = 0; i <= p; i++) {
        h = (h ^ (uint32_t)t[i]) * 16777619u;
    }
    return (float)(h >> 8);
}

struct input {
    const uint8_t *p;
    size_t left;
};

static int next_byte(struct input *in) {
    if (in->left == 0) {
        return -1;
    }
    in->left--;
    return *in->p++;
}

/* Computes positions [from, to) of seq: the exact K/V of its tokens. */
static void compute(struct eng_kv_pool *pool, struct eng_seq *seq, const int32_t *t, int from,
                    int to) {
    for (int p = from; p < to; p++) {
        eng_kv_k_at(pool, seq, 0, p)[0] = prefix_value(t, p);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) {
        return 0;
    }
    const int n_blocks = 1 + data[0] % 16;
    const int bs = 1 + data[1] % 4;
    const bool weak_hash = (data[1] & 0x80) != 0;
    struct input in = {data + 2, size - 2};

    struct eng_model_config cfg = {0};
    cfg.n_layers = 1;
    cfg.n_kv_heads = 1;
    cfg.head_dim = 1;
    struct eng_kv_pool pool;
    CHECK(eng_kv_pool_init(&pool, &cfg, bs, n_blocks, NULL) == KC_OK);
    CHECK(eng_kv_prefix_enable(&pool, NULL) == KC_OK);
    if (weak_hash) {
        eng_kv_prefix_set_hash_for_test(&pool, hash_4bit);
    }
    struct eng_seq seq[N_SEQ];
    memset(seq, 0, sizeof(seq));
    int32_t tok[N_SEQ][MAX_T];

    int b;
    while ((b = next_byte(&in)) >= 0) {
        const int i = b % N_SEQ;
        struct eng_seq *s = &seq[i];
        switch ((b / N_SEQ) % 4) {
        case 0: { /* a request: attach (n - 1 cap), reserve, compute the rest, publish */
            if (s->n_blocks > 0) {
                eng_seq_release(&pool, s);
            }
            int len = next_byte(&in);
            const int n = 1 + (len < 0 ? 0 : len) % MAX_T;
            for (int p = 0; p < n; p++) {
                const int t = next_byte(&in);
                tok[i][p] = t < 0 ? 0 : t % 4;
            }
            const int got = eng_kv_prefix_attach(&pool, s, tok[i], n - 1);
            CHECK(got >= 0 && got <= n - 1 && got % bs == 0);
            CHECK(s->n_tokens == got && s->n_blocks == got / bs);
            for (int p = 0; p < got; p++) {
                CHECK(eng_kv_k_at(&pool, s, 0, p)[0] == prefix_value(tok[i], p));
            }
            if (eng_seq_reserve(&pool, s, n) != KC_OK) {
                CHECK(s->n_blocks == got / bs); /* all or nothing */
                eng_seq_release(&pool, s);
                break;
            }
            compute(&pool, s, tok[i], got, n);
            s->n_tokens = n;
            eng_kv_prefix_publish(&pool, s, tok[i], n);
            break;
        }
        case 1: /* the request ends */
            eng_seq_release(&pool, s);
            break;
        case 2: { /* a decode step: one more token, computed, then published */
            const int t = next_byte(&in);
            if (s->n_blocks == 0 || s->n_tokens >= MAX_T) {
                break;
            }
            const int n = s->n_tokens + 1;
            tok[i][n - 1] = t < 0 ? 0 : t % 4;
            if (eng_seq_reserve(&pool, s, n) != KC_OK) {
                break;
            }
            compute(&pool, s, tok[i], n - 1, n);
            s->n_tokens = n;
            eng_kv_prefix_publish(&pool, s, tok[i], n);
            break;
        }
        default: { /* a re-publish of a prefix (repeats must be harmless) */
            const int k = next_byte(&in);
            if (s->n_blocks > 0) {
                eng_kv_prefix_publish(&pool, s, tok[i], (k < 0 ? 0 : k) % (s->n_tokens + 1));
            }
            break;
        }
        }
        int refs = 0;
        for (int k = 0; k < N_SEQ; k++) {
            refs += seq[k].n_blocks;
        }
        struct kc_error err = {0};
        if (eng_kv_pool_check(&pool, refs, &err) != KC_OK) {
            fprintf(stderr, "fuzz_kv_prefix: %s\n", err.msg);
            abort();
        }
        struct eng_kv_pool_stats st;
        eng_kv_pool_stats_get(&pool, &st);
        CHECK(st.n_free + st.n_cached_idle + st.n_in_use == n_blocks);
        CHECK(st.n_cached_idle <= st.n_cached && st.n_cached <= n_blocks);
        CHECK(eng_kv_pool_n_free(&pool) == st.n_free + st.n_cached_idle);
    }
    for (int k = 0; k < N_SEQ; k++) {
        eng_seq_release(&pool, &seq[k]);
    }
    struct kc_error err = {0};
    CHECK(eng_kv_pool_check(&pool, 0, &err) == KC_OK);
    eng_kv_pool_free(&pool);
    return 0;
}
