/* Unit tests for the paged KV cache: block accounting, all-or-nothing reservation, views. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "engine/io/model_config.h"
#include "engine/kv_cache.h"
#include "tests/unit/test_models.h"

static struct eng_model_config small_config(void) {
    return test_kv_config(3, 2, 4); /* layers, KV heads, head size */
}

static void test_reserve_is_all_or_nothing_and_release_returns_blocks(void **state) {
    (void)state;
    struct eng_model_config c = small_config();
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, &c, 8, 5, NULL), KC_OK);
    struct eng_seq a = {0}, b = {0};
    assert_int_equal(eng_seq_reserve(&pool, &a, 17), KC_OK); /* 3 blocks */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(eng_kv_pool_n_free(&pool), 2);
    assert_int_equal(eng_seq_reserve(&pool, &b, 24), KC_EBUSY); /* needs 3, 2 free */
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(eng_kv_pool_n_free(&pool), 2);
    assert_int_equal(eng_seq_reserve(&pool, &a, 10), KC_OK); /* already has room */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(eng_seq_reserve(&pool, &b, 16), KC_OK);
    assert_int_equal(eng_kv_pool_n_free(&pool), 0);
    eng_seq_release(&pool, &a);
    eng_seq_release(&pool, &b);
    assert_int_equal(eng_kv_pool_n_free(&pool), 5);
    assert_int_equal(eng_seq_reserve(&pool, &a, -1), KC_EINVAL);
    eng_seq_release(&pool, &a);
    eng_kv_pool_free(&pool);
}

static void test_view_and_accessors_address_the_same_floats(void **state) {
    (void)state;
    struct eng_model_config c = small_config();
    struct eng_kv_pool pool;
    assert_int_equal(eng_kv_pool_init(&pool, &c, 4, 6, NULL), KC_OK);
    struct eng_seq filler = {0}, s = {0};
    /* Interleave two sequences so s gets non-contiguous blocks. */
    assert_int_equal(eng_seq_reserve(&pool, &filler, 4), KC_OK);
    assert_int_equal(eng_seq_reserve(&pool, &s, 4), KC_OK);
    assert_int_equal(eng_seq_reserve(&pool, &filler, 8), KC_OK);
    assert_int_equal(eng_seq_reserve(&pool, &s, 10), KC_OK);
    const int kvd = c.n_kv_heads * c.head_dim;
    for (int l = 0; l < c.n_layers; l++) {
        for (int t = 0; t < 10; t++) {
            float *k = eng_kv_k_at(&pool, &s, l, t), *v = eng_kv_v_at(&pool, &s, l, t);
            for (int i = 0; i < kvd; i++) {
                k[i] = (float)(l * 1000 + t * 10 + i);
                v[i] = -(float)(l * 1000 + t * 10 + i);
            }
        }
    }
    for (int l = 0; l < c.n_layers; l++) {
        struct eng_kv_view view = eng_kv_view_of(&pool, &s, l);
        for (int t = 0; t < 10; t++) {
            const float *k = view.base +
                             (size_t)view.block_table[t / view.block_size] * view.block_stride +
                             (size_t)(t % view.block_size) * kvd;
            assert_true(k[1] == (float)(l * 1000 + t * 10 + 1));
            assert_true(k[view.v_offset + 1] == -(float)(l * 1000 + t * 10 + 1));
        }
    }
    eng_seq_release(&pool, &s);
    eng_seq_release(&pool, &filler);
    assert_int_equal(eng_kv_pool_n_free(&pool), 6);
    eng_kv_pool_free(&pool);
}

static void test_pool_init_rejects_bad_sizes(void **state) {
    (void)state;
    struct eng_model_config c = small_config();
    struct eng_kv_pool pool;
    struct kc_error err = {0};
    assert_int_equal(eng_kv_pool_init(&pool, &c, 0, 5, &err), KC_EINVAL);
    assert_int_equal(eng_kv_pool_init(&pool, &c, 16, 0, &err), KC_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_is_all_or_nothing_and_release_returns_blocks),
        cmocka_unit_test(test_view_and_accessors_address_the_same_floats),
        cmocka_unit_test(test_pool_init_rejects_bad_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
