/*
 * test_engine_safetensors.c — the safetensors reader refuses every malformed file with its
 * specific code and a message naming the file and the problem (RELIABILITY.md A1-A3), and
 * valid single and sharded files round-trip byte for byte.
 *
 * Fixtures are written programmatically into a private mkdtemp directory that the group
 * teardown removes.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/io/safetensors.h"

static char g_dir[64];

static const char *fixture_path(const char *name) {
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", g_dir, name);
    return buf;
}

static void write_bytes(const char *name, const void *a, size_t na, const void *b, size_t nb) {
    FILE *f = fopen(fixture_path(name), "wb");
    assert_non_null(f);
    if (na > 0) {
        assert_int_equal(fwrite(a, 1, na, f), na);
    }
    if (nb > 0) {
        assert_int_equal(fwrite(b, 1, nb, f), nb);
    }
    assert_int_equal(fclose(f), 0);
}

/* Writes u64le(hlen) + header bytes + data_len bytes of a counting pattern. */
static void write_st_raw(const char *name, uint64_t hlen, const char *header, size_t header_len,
                         size_t data_len) {
    size_t total = 8 + header_len + data_len;
    unsigned char *buf = malloc(total);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) {
        buf[i] = (unsigned char)(hlen >> (8 * i));
    }
    memcpy(buf + 8, header, header_len);
    for (size_t i = 0; i < data_len; i++) {
        buf[8 + header_len + i] = (unsigned char)(i * 7 + 1);
    }
    write_bytes(name, buf, total, NULL, 0);
    free(buf);
}

/* A well-formed prefix for the given header text. */
static void write_st(const char *name, const char *header, size_t data_len) {
    write_st_raw(name, strlen(header), header, strlen(header), data_len);
}

/* Opens name and checks it fails with code and a message naming the file and `what`. */
static void expect_open_fails(const char *name, int code, const char *what) {
    struct kc_error err;
    memset(&err, 0, sizeof(err));
    struct eng_st_set *set = NULL;
    const char *path = fixture_path(name);
    int rc = eng_st_set_open(path, &set, &err);
    if (rc != code || strstr(err.msg, what) == NULL || strstr(err.msg, name) == NULL) {
        print_error("%s: rc=%d (%s) want %d, msg='%s' want '%s'\n", name, rc, kc_strerror(rc), code,
                    err.msg, what);
    }
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    assert_null(set);
    assert_non_null(strstr(err.msg, what));
    assert_non_null(strstr(err.msg, name));
}

static void expect_header_fails(const char *name, const char *header, size_t data_len, int code,
                                const char *what) {
    write_st(name, header, data_len);
    expect_open_fails(name, code, what);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/kc_test_st_XXXXXX");
    return mkdtemp(g_dir) == NULL ? -1 : 0;
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        char p[512];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (unlink(p) != 0) {
            rm_tree(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

static int group_teardown(void **state) {
    (void)state;
    rm_tree(g_dir);
    return 0;
}

/* ---- A1: the length prefix ---------------------------------------------------------- */

static void test_header_length_zero_is_refused(void **state) {
    (void)state;
    write_st_raw("len0.safetensors", 0, "", 0, 0);
    expect_open_fails("len0.safetensors", KC_EFORMAT, "too small");
}

static void test_header_length_one_is_refused(void **state) {
    (void)state;
    write_st_raw("len1.safetensors", 1, "{", 1, 0);
    expect_open_fails("len1.safetensors", KC_EFORMAT, "too small");
}

static void test_header_length_over_100mb_is_refused(void **state) {
    (void)state;
    write_st_raw("len_big.safetensors", (uint64_t)ENG_ST_MAX_HEADER + 1, "{}", 2, 0);
    expect_open_fails("len_big.safetensors", KC_ERANGE, "limit");
}

static void test_header_length_past_file_size_is_refused(void **state) {
    (void)state;
    write_st_raw("len_past.safetensors", 1000, "{}      ", 8, 0);
    expect_open_fails("len_past.safetensors", KC_EFORMAT, "exceeds the 8 bytes");
}

static void test_header_length_all_ones_does_not_wrap(void **state) {
    (void)state;
    write_st_raw("len_ff.safetensors", UINT64_MAX, "{}", 2, 0);
    expect_open_fails("len_ff.safetensors", KC_ERANGE, "limit");
    /* The pure parser with the same data_len never sees the length; check n+8 logic via a
     * length that passes the limit but not the size. */
    write_st_raw("len_max.safetensors", ENG_ST_MAX_HEADER, "{}", 2, 0);
    expect_open_fails("len_max.safetensors", KC_EFORMAT, "exceeds");
}

static void test_file_shorter_than_length_prefix_is_refused(void **state) {
    (void)state;
    write_bytes("short.safetensors", "\x02\x00\x00", 3, NULL, 0);
    expect_open_fails("short.safetensors", KC_EFORMAT, "too short");
    write_bytes("empty.safetensors", NULL, 0, NULL, 0);
    expect_open_fails("empty.safetensors", KC_EFORMAT, "too short");
}

static void test_truncated_data_region_is_refused(void **state) {
    (void)state;
    expect_header_fails("trunc.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                        KC_EFORMAT, "past the end");
}

/* ---- A2: offsets --------------------------------------------------------------------- */

static void test_reversed_offsets_are_refused(void **state) {
    (void)state;
    expect_header_fails("rev.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                        KC_EFORMAT, "reversed");
}

static void test_overlapping_tensors_are_refused(void **state) {
    (void)state;
    expect_header_fails("overlap.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        12, KC_EFORMAT, "overlap");
}

static void test_gap_between_tensors_is_refused(void **state) {
    (void)state;
    expect_header_fails("gap.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                        20, KC_EFORMAT, "gap");
    expect_header_fails("gap0.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                        KC_EFORMAT, "gap");
}

static void test_end_past_data_region_is_refused(void **state) {
    (void)state;
    expect_header_fails("past.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                        KC_EFORMAT, "past the end");
}

static void test_last_end_short_of_data_size_is_refused(void **state) {
    (void)state;
    expect_header_fails("trail.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
                        KC_EFORMAT, "trailing");
    expect_header_fails("notensors.safetensors", "{}", 4, KC_EFORMAT, "trailing");
}

static void test_three_element_offsets_are_refused(void **state) {
    (void)state;
    expect_header_fails("off3.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
                        KC_EFORMAT, "2 elements");
}

static void test_negative_and_float_offsets_are_refused(void **state) {
    (void)state;
    expect_header_fails("offneg.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
                        KC_EFORMAT, "negative");
    expect_header_fails("offflt.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8,
                        KC_EFORMAT, "not an integer");
    expect_header_fails("offstr.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":\"0,8\"}}", 8,
                        KC_EFORMAT, "data_offsets");
}

/* ---- A3: dtype, shape, names, header shape ---------------------------------------------- */

static void test_unknown_dtype_is_refused(void **state) {
    (void)state;
    expect_header_fails("dt.safetensors",
                        "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                        KC_EUNSUPPORTED, "unsupported dtype 'Q4_K'");
    expect_header_fails("dtnum.safetensors",
                        "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, KC_EFORMAT,
                        "dtype");
}

static void test_shape_product_overflow_is_refused(void **state) {
    (void)state;
    expect_header_fails("ovf.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                        "\"data_offsets\":[0,8]}}",
                        8, KC_ERANGE, "overflows");
    /* Element count fits but the byte size does not. */
    expect_header_fails("ovf2.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                        "\"data_offsets\":[0,8]}}",
                        8, KC_ERANGE, "overflows");
}

static void test_shape_span_mismatch_is_refused(void **state) {
    (void)state;
    expect_header_fails("span.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                        KC_EFORMAT, "need 12");
}

static void test_bad_shapes_are_refused(void **state) {
    (void)state;
    expect_header_fails("shneg.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                        KC_EFORMAT, "shape[0] is negative");
    expect_header_fails("shflt.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
                        KC_EFORMAT, "shape[0] is not an integer");
    expect_header_fails("sh9.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
                        "\"data_offsets\":[0,8]}}",
                        8, KC_EUNSUPPORTED, "9 dims");
    expect_header_fails("shmissing.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, KC_EFORMAT,
                        "shape");
    expect_header_fails("extra.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],"
                        "\"x\":1}}",
                        8, KC_EFORMAT, "unexpected key 'x'");
    expect_header_fails("notobj.safetensors", "{\"a\":[1,2]}", 0, KC_EFORMAT, "not an object");
}

static void test_duplicate_tensor_name_is_refused(void **state) {
    (void)state;
    expect_header_fails("dup.safetensors",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                        16, KC_EFORMAT, "duplicate");
}

static void test_non_object_and_non_json_headers_are_refused(void **state) {
    (void)state;
    expect_header_fails("arr.safetensors", "[1,2]   ", 0, KC_EFORMAT, "not a JSON object");
    expect_header_fails("str.safetensors", "\"abc\"   ", 0, KC_EFORMAT, "not valid JSON");
    expect_header_fails("junk.safetensors", "{\"a\":}  ", 0, KC_EFORMAT, "not valid JSON");
    expect_header_fails("trailing.safetensors", "{} {}   ", 0, KC_EFORMAT, "not valid JSON");
    /* An embedded NUL ends nothing early: the whole header must parse. */
    write_st_raw("nul.safetensors", 4, "{}\0 ", 4, 0);
    expect_open_fails("nul.safetensors", KC_EFORMAT, "not valid JSON");
}

static void test_non_utf8_header_is_refused(void **state) {
    (void)state;
    expect_header_fails("utf8.safetensors",
                        "{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                        8, KC_EFORMAT, "UTF-8");
}

static void test_metadata_must_map_strings_to_strings(void **state) {
    (void)state;
    expect_header_fails("meta1.safetensors", "{\"__metadata__\":{\"k\":1}}", 0, KC_EFORMAT,
                        "__metadata__ value for key 'k'");
    expect_header_fails("meta2.safetensors", "{\"__metadata__\":[\"k\"]}", 0, KC_EFORMAT,
                        "__metadata__ is not an object");
    expect_header_fails("meta3.safetensors", "{\"__metadata__\":{\"k\":{\"a\":\"b\"}}}", 0,
                        KC_EFORMAT, "__metadata__");
}

static void test_missing_file_is_not_found(void **state) {
    (void)state;
    expect_open_fails("nope.safetensors", KC_ENOTFOUND, "No such file");
}

static void test_parse_header_leaves_out_untouched_on_failure(void **state) {
    (void)state;
    struct eng_st_header h;
    memset(&h, 0xab, sizeof(h));
    struct eng_st_header before = h;
    struct kc_error err;
    const char *bad = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    assert_int_equal(eng_st_parse_header(bad, strlen(bad), 4, &h, &err), KC_EFORMAT);
    assert_memory_equal(&h, &before, sizeof(h));
    /* With NULL err it still fails cleanly. */
    assert_int_equal(eng_st_parse_header(bad, strlen(bad), 4, &h, NULL), KC_EFORMAT);
    /* And succeeds on the right data length. */
    assert_int_equal(eng_st_parse_header(bad, strlen(bad), 8, &h, &err), KC_OK);
    assert_int_equal(h.n_tensors, 1);
    assert_string_equal(h.tensors[0].name, "a");
    assert_null(h.tensors[0].data);
    assert_int_equal(h.tensors[0].nbytes, 8);
    eng_st_header_free(&h);
}

/* ---- valid files ---------------------------------------------------------------------- */

static void test_zero_sized_and_empty_files_load(void **state) {
    (void)state;
    write_st("empty_ok.safetensors", "{}", 0);
    struct eng_st_set *set = NULL;
    struct kc_error err;
    assert_int_equal(eng_st_set_open(fixture_path("empty_ok.safetensors"), &set, &err), KC_OK);
    assert_int_equal(eng_st_set_count(set), 0);
    assert_null(eng_st_set_find(set, "a"));
    eng_st_set_free(set);

    write_st("zero_ok.safetensors",
             "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
             "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
             4);
    assert_int_equal(eng_st_set_open(fixture_path("zero_ok.safetensors"), &set, &err), KC_OK);
    assert_int_equal(eng_st_set_count(set), 2);
    const struct eng_st_tensor *z = eng_st_set_find(set, "z");
    assert_non_null(z);
    assert_int_equal(z->nbytes, 0);
    assert_int_equal(z->ndim, 2);
    assert_int_equal(z->shape[0], 0);
    assert_int_equal(z->shape[1], 3);
    eng_st_set_free(set);
}

/* Fills n bytes with a pattern seeded by s. */
static void fill(void *p, size_t n, unsigned s) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        b[i] = (unsigned char)(s >> 16);
    }
}

static void test_write_then_open_round_trips_bytes(void **state) {
    (void)state;
    float f32[6];
    uint16_t bf16[10], f16[4];
    int64_t i64[3] = {-1, 0, INT64_MAX};
    fill(f32, sizeof(f32), 1);
    fill(bf16, sizeof(bf16), 2);
    fill(f16, sizeof(f16), 3);
    struct eng_st_tensor ts[4];
    memset(ts, 0, sizeof(ts));
    ts[0] = (struct eng_st_tensor){.name = "model.layers.0.w",
                                   .dtype = ENG_DTYPE_F32,
                                   .ndim = 2,
                                   .shape = {2, 3},
                                   .data = f32,
                                   .nbytes = sizeof(f32)};
    ts[1] = (struct eng_st_tensor){.name = "ids",
                                   .dtype = ENG_DTYPE_I64,
                                   .ndim = 1,
                                   .shape = {3},
                                   .data = i64,
                                   .nbytes = sizeof(i64)};
    ts[2] = (struct eng_st_tensor){.name = "emb",
                                   .dtype = ENG_DTYPE_BF16,
                                   .ndim = 2,
                                   .shape = {5, 2},
                                   .data = bf16,
                                   .nbytes = sizeof(bf16)};
    ts[3] = (struct eng_st_tensor){.name = "h",
                                   .dtype = ENG_DTYPE_F16,
                                   .ndim = 1,
                                   .shape = {4},
                                   .data = f16,
                                   .nbytes = sizeof(f16)};
    struct eng_st_meta meta[2] = {{"format", "pt"}, {"note", "caf\xc3\xa9 \"quoted\""}};
    struct kc_error err;
    const char *path = fixture_path("rt.safetensors");
    assert_int_equal(eng_st_write(path, ts, 4, meta, 2, &err), KC_OK);

    /* The header length is a multiple of 8 and padded with spaces. */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char lb[8];
    assert_int_equal(fread(lb, 1, 8, f), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) {
        n = (n << 8) | lb[i];
    }
    assert_int_equal(n % 8, 0);
    char *hdr = malloc(n);
    assert_non_null(hdr);
    assert_int_equal(fread(hdr, 1, n, f), n);
    assert_true(hdr[0] == '{');
    assert_true(hdr[n - 1] == '}' || hdr[n - 1] == ' ');
    free(hdr);
    fclose(f);

    struct eng_st_set *set = NULL;
    assert_int_equal(eng_st_set_open(path, &set, &err), KC_OK);
    assert_int_equal(eng_st_set_count(set), 4);
    for (int i = 0; i < 4; i++) {
        const struct eng_st_tensor *t = eng_st_set_find(set, ts[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], ts[i].shape[d]);
        }
        assert_int_equal(t->nbytes, ts[i].nbytes);
        assert_memory_equal(t->data, ts[i].data, ts[i].nbytes);
        assert_int_equal((uintptr_t)t->data % eng_dtype_size(t->dtype), 0);
        /* Iteration order is file order: the order written. */
        assert_string_equal(eng_st_set_get(set, (size_t)i)->name, ts[i].name);
    }
    assert_string_equal(eng_st_set_meta(set, "format"), "pt");
    assert_string_equal(eng_st_set_meta(set, "note"), meta[1].value);
    assert_null(eng_st_set_meta(set, "missing"));
    assert_null(eng_st_set_find(set, "nope"));
    assert_string_equal(eng_st_set_path(set), path);
    eng_st_set_free(set);
}

static void test_misaligned_tensor_is_copied_aligned(void **state) {
    (void)state;
    uint16_t h[1] = {0x3c00};
    float f[3] = {1.0f, -2.5f, 3.25f};
    struct eng_st_tensor ts[2] = {
        {.name = "h", .dtype = ENG_DTYPE_F16, .ndim = 1, .shape = {1}, .data = h, .nbytes = 2},
        {.name = "f", .dtype = ENG_DTYPE_F32, .ndim = 1, .shape = {3}, .data = f, .nbytes = 12},
    };
    struct kc_error err;
    const char *path = fixture_path("misaligned.safetensors");
    assert_int_equal(eng_st_write(path, ts, 2, NULL, 0, &err), KC_OK);
    struct eng_st_set *set = NULL;
    assert_int_equal(eng_st_set_open(path, &set, &err), KC_OK);
    const struct eng_st_tensor *t = eng_st_set_find(set, "f");
    assert_non_null(t);
    assert_int_equal(t->offset_begin, 2);
    assert_int_equal((uintptr_t)t->data % 4, 0);
    const float *fd = t->data;
    assert_true(fd[0] == 1.0f && fd[1] == -2.5f && fd[2] == 3.25f);
    eng_st_set_free(set);
}

static void test_write_rejects_bad_tensors(void **state) {
    (void)state;
    float f[2] = {0};
    struct eng_st_tensor ts[2] = {
        {.name = "a", .dtype = ENG_DTYPE_F32, .ndim = 1, .shape = {2}, .data = f, .nbytes = 8},
        {.name = "a", .dtype = ENG_DTYPE_F32, .ndim = 1, .shape = {2}, .data = f, .nbytes = 8},
    };
    struct kc_error err;
    assert_int_equal(eng_st_write(fixture_path("bad_w.safetensors"), ts, 2, NULL, 0, &err),
                     KC_EINVAL);
    assert_non_null(strstr(err.msg, "duplicate"));
    ts[1].name = "b";
    ts[1].nbytes = 4;
    assert_int_equal(eng_st_write(fixture_path("bad_w.safetensors"), ts, 2, NULL, 0, &err),
                     KC_EINVAL);
    assert_non_null(strstr(err.msg, "nbytes"));
    ts[1].nbytes = 8;
    ts[1].name = "__metadata__";
    assert_int_equal(eng_st_write(fixture_path("bad_w.safetensors"), ts, 2, NULL, 0, &err),
                     KC_EINVAL);
    /* Nothing was left behind. */
    assert_int_equal(access(fixture_path("bad_w.safetensors"), F_OK), -1);
    assert_int_equal(access(fixture_path("bad_w.safetensors.tmp"), F_OK), -1);
}

/* ---- sharded sets and directories --------------------------------------------------------- */

static void write_text(const char *name, const char *text) {
    write_bytes(name, text, strlen(text), NULL, 0);
}

static void write_two_shards(const char *dir) {
    char p1[256], p2[256];
    snprintf(p1, sizeof(p1), "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof(p2), "%s/model-00002-of-00002.safetensors", dir);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    uint16_t c[3] = {7, 8, 9};
    struct eng_st_tensor s1[2] = {
        {.name = "a", .dtype = ENG_DTYPE_F32, .ndim = 2, .shape = {2, 2}, .data = a, .nbytes = 16},
        {.name = "b", .dtype = ENG_DTYPE_F32, .ndim = 1, .shape = {2}, .data = b, .nbytes = 8},
    };
    struct eng_st_tensor s2[1] = {
        {.name = "c", .dtype = ENG_DTYPE_BF16, .ndim = 1, .shape = {3}, .data = c, .nbytes = 6},
    };
    struct eng_st_meta m = {"format", "pt"};
    struct kc_error err;
    assert_int_equal(eng_st_write(p1, s1, 2, &m, 1, &err), KC_OK);
    assert_int_equal(eng_st_write(p2, s2, 1, NULL, 0, &err), KC_OK);
}

static const char *const k_index_ok = "{\"metadata\":{\"total_size\":30},\"weight_map\":{"
                                      "\"a\":\"model-00001-of-00002.safetensors\","
                                      "\"b\":\"model-00001-of-00002.safetensors\","
                                      "\"c\":\"model-00002-of-00002.safetensors\"}}";

static void test_two_shard_set_opens_and_finds_every_tensor(void **state) {
    (void)state;
    write_two_shards(g_dir);
    write_text("model.safetensors.index.json", k_index_ok);
    struct eng_st_set *set = NULL;
    struct kc_error err;
    memset(&err, 0, sizeof(err));
    int rc = eng_st_set_open(fixture_path("model.safetensors.index.json"), &set, &err);
    if (rc != KC_OK) {
        print_error("%s\n", err.msg);
    }
    assert_int_equal(rc, KC_OK);
    assert_int_equal(eng_st_set_count(set), 3);
    const struct eng_st_tensor *a = eng_st_set_find(set, "a");
    const struct eng_st_tensor *c = eng_st_set_find(set, "c");
    assert_non_null(a);
    assert_non_null(c);
    assert_true(((const float *)a->data)[3] == 4.0f);
    assert_int_equal(((const uint16_t *)c->data)[2], 9);
    assert_string_equal(eng_st_set_meta(set, "format"), "pt");
    eng_st_set_free(set);

    /* The directory itself opens through the index (no model.safetensors there). */
    assert_int_equal(eng_st_set_open(g_dir, &set, &err), KC_OK);
    assert_int_equal(eng_st_set_count(set), 3);
    assert_non_null(strstr(eng_st_set_path(set), "model.safetensors.index.json"));
    eng_st_set_free(set);
}

static void test_index_with_path_traversal_is_refused(void **state) {
    (void)state;
    write_two_shards(g_dir);
    write_text("trav.index.json",
               "{\"weight_map\":{\"a\":\"../model-00001-of-00002.safetensors\"}}");
    expect_open_fails("trav.index.json", KC_EFORMAT, "not a plain file name");
    write_text("dotdot.index.json", "{\"weight_map\":{\"a\":\"..\"}}");
    expect_open_fails("dotdot.index.json", KC_EFORMAT, "not a plain file name");
    write_text("abs.index.json", "{\"weight_map\":{\"a\":\"/etc/passwd\"}}");
    expect_open_fails("abs.index.json", KC_EFORMAT, "not a plain file name");
}

static void test_index_with_missing_shard_is_refused(void **state) {
    (void)state;
    write_text("miss.index.json", "{\"weight_map\":{\"a\":\"model-00009-of-00009.safetensors\"}}");
    expect_open_fails("miss.index.json", KC_ENOTFOUND, "model-00009-of-00009.safetensors");
}

static void test_index_naming_wrong_shard_is_refused(void **state) {
    (void)state;
    write_two_shards(g_dir);
    write_text("wrong.index.json", "{\"weight_map\":{"
                                   "\"a\":\"model-00002-of-00002.safetensors\","
                                   "\"c\":\"model-00002-of-00002.safetensors\"}}");
    expect_open_fails("wrong.index.json", KC_EFORMAT, "does not contain it");
    write_text("ghost.index.json", "{\"weight_map\":{"
                                   "\"a\":\"model-00001-of-00002.safetensors\","
                                   "\"zz\":\"model-00001-of-00002.safetensors\"}}");
    expect_open_fails("ghost.index.json", KC_EFORMAT, "tensor 'zz'");
}

static void test_tensor_in_two_shards_is_refused(void **state) {
    (void)state;
    write_two_shards(g_dir);
    /* A third shard that repeats tensor "c". */
    uint16_t c[3] = {1, 2, 3};
    struct eng_st_tensor t = {
        .name = "c", .dtype = ENG_DTYPE_BF16, .ndim = 1, .shape = {3}, .data = c, .nbytes = 6};
    struct kc_error err;
    assert_int_equal(eng_st_write(fixture_path("extra.safetensors"), &t, 1, NULL, 0, &err), KC_OK);
    write_text("dupshard.index.json", "{\"weight_map\":{"
                                      "\"a\":\"model-00001-of-00002.safetensors\","
                                      "\"c\":\"model-00002-of-00002.safetensors\","
                                      "\"c2\":\"extra.safetensors\"}}");
    expect_open_fails("dupshard.index.json", KC_EFORMAT, "duplicate tensor 'c'");
}

static void test_malformed_index_is_refused(void **state) {
    (void)state;
    write_text("badjson.index.json", "{\"weight_map\":");
    expect_open_fails("badjson.index.json", KC_EFORMAT, "not valid JSON");
    write_text("nowm.index.json", "{\"metadata\":{}}");
    expect_open_fails("nowm.index.json", KC_EFORMAT, "weight_map");
    write_text("emptywm.index.json", "{\"weight_map\":{}}");
    expect_open_fails("emptywm.index.json", KC_EFORMAT, "empty");
    write_text("numwm.index.json", "{\"weight_map\":{\"a\":3}}");
    expect_open_fails("numwm.index.json", KC_EFORMAT, "not a string");
    write_text("dupkey.index.json", "{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}");
    expect_open_fails("dupkey.index.json", KC_EFORMAT, "duplicate");
}

static void test_directory_prefers_model_safetensors(void **state) {
    (void)state;
    char sub[128], file[192];
    snprintf(sub, sizeof(sub), "%s/single", g_dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    struct kc_error err;
    memset(&err, 0, sizeof(err));
    struct eng_st_set *set = NULL;
    assert_int_equal(eng_st_set_open(sub, &set, &err), KC_ENOTFOUND);
    assert_null(set);
    assert_non_null(strstr(err.msg, "neither"));

    float x[2] = {1, 2};
    struct eng_st_tensor t = {
        .name = "x", .dtype = ENG_DTYPE_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8};
    snprintf(file, sizeof(file), "%s/model.safetensors", sub);
    assert_int_equal(eng_st_write(file, &t, 1, NULL, 0, &err), KC_OK);
    /* An index that would fail is ignored when model.safetensors exists. */
    snprintf(file, sizeof(file), "%s/model.safetensors.index.json", sub);
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    fputs("{\"weight_map\":{\"x\":\"missing.safetensors\"}}", f);
    fclose(f);
    assert_int_equal(eng_st_set_open(sub, &set, &err), KC_OK);
    assert_non_null(eng_st_set_find(set, "x"));
    eng_st_set_free(set);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_length_zero_is_refused),
        cmocka_unit_test(test_header_length_one_is_refused),
        cmocka_unit_test(test_header_length_over_100mb_is_refused),
        cmocka_unit_test(test_header_length_past_file_size_is_refused),
        cmocka_unit_test(test_header_length_all_ones_does_not_wrap),
        cmocka_unit_test(test_file_shorter_than_length_prefix_is_refused),
        cmocka_unit_test(test_truncated_data_region_is_refused),
        cmocka_unit_test(test_reversed_offsets_are_refused),
        cmocka_unit_test(test_overlapping_tensors_are_refused),
        cmocka_unit_test(test_gap_between_tensors_is_refused),
        cmocka_unit_test(test_end_past_data_region_is_refused),
        cmocka_unit_test(test_last_end_short_of_data_size_is_refused),
        cmocka_unit_test(test_three_element_offsets_are_refused),
        cmocka_unit_test(test_negative_and_float_offsets_are_refused),
        cmocka_unit_test(test_unknown_dtype_is_refused),
        cmocka_unit_test(test_shape_product_overflow_is_refused),
        cmocka_unit_test(test_shape_span_mismatch_is_refused),
        cmocka_unit_test(test_bad_shapes_are_refused),
        cmocka_unit_test(test_duplicate_tensor_name_is_refused),
        cmocka_unit_test(test_non_object_and_non_json_headers_are_refused),
        cmocka_unit_test(test_non_utf8_header_is_refused),
        cmocka_unit_test(test_metadata_must_map_strings_to_strings),
        cmocka_unit_test(test_missing_file_is_not_found),
        cmocka_unit_test(test_parse_header_leaves_out_untouched_on_failure),
        cmocka_unit_test(test_zero_sized_and_empty_files_load),
        cmocka_unit_test(test_write_then_open_round_trips_bytes),
        cmocka_unit_test(test_misaligned_tensor_is_copied_aligned),
        cmocka_unit_test(test_write_rejects_bad_tensors),
        cmocka_unit_test(test_two_shard_set_opens_and_finds_every_tensor),
        cmocka_unit_test(test_index_with_path_traversal_is_refused),
        cmocka_unit_test(test_index_with_missing_shard_is_refused),
        cmocka_unit_test(test_index_naming_wrong_shard_is_refused),
        cmocka_unit_test(test_tensor_in_two_shards_is_refused),
        cmocka_unit_test(test_malformed_index_is_refused),
        cmocka_unit_test(test_directory_prefers_model_safetensors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
