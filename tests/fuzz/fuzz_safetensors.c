/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors header validator
 * (RELIABILITY.md A1-A3). Input: u64 little-endian data_len, then the header JSON bytes.
 * Besides sanitizer findings, an accepted header that breaks a documented invariant (tensors
 * sorted, tiling [0, data_len), nbytes == prod(shape) * dtype size) aborts.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_invariants(const struct eng_st_header *h, size_t data_len) {
    size_t expect = 0;
    for (size_t i = 0; i < h->n_tensors; i++) {
        const struct eng_st_tensor *t = &h->tensors[i];
        if (t->name == NULL || t->offset_begin != expect || t->offset_end < t->offset_begin ||
            t->nbytes != t->offset_end - t->offset_begin || t->ndim < 0 ||
            t->ndim > ENG_ST_MAX_DIMS || (int)t->dtype < 0 || t->dtype >= ENG_DTYPE_COUNT) {
            abort();
        }
        size_t n = eng_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || !kc_size_mul(n, (size_t)t->shape[d], &n)) {
                abort();
            }
        }
        if (n != t->nbytes) {
            abort();
        }
        expect = t->offset_end;
    }
    if (expect != data_len) {
        abort();
    }
    for (size_t i = 0; i < h->n_meta; i++) {
        if (h->meta[i].key == NULL || h->meta[i].value == NULL) {
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) {
        return 0;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) {
        n = (n << 8) | data[i];
    }
    const size_t data_len = n > SIZE_MAX ? SIZE_MAX : (size_t)n;
    struct eng_st_header h;
    struct kc_error err;
    if (eng_st_parse_header((const char *)data + 8, size - 8, data_len, &h, &err) == KC_OK) {
        check_invariants(&h, data_len);
        eng_st_header_free(&h);
    }
    return 0;
}
