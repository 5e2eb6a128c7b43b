/*
 * safetensors.h — bounds-checked reader for the safetensors format, single files and
 * Hugging Face sharded sets (`model.safetensors.index.json`).
 *
 * Place in the data flow: model loading (engine/model.c) and the KV predictor loader read
 * weights through this module; nothing else touches weight files.
 *
 * Ownership: a set owns its mmaps and the parsed index; tensors are read-only views into
 * the mapping and live as long as the set. Thread rules: read-only after open, so any
 * number of threads may read tensors concurrently.
 *
 * Format (https://github.com/huggingface/safetensors): u64 little-endian header length N,
 * N bytes of UTF-8 JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * "__metadata__": {"k": "v"}}, then the data region; offsets are relative to its start.
 * Every rule the reader enforces is listed at eng_st_parse_header.
 *
 * Error codes: KC_EFORMAT for anything malformed (bad length prefix, bad JSON, bad offsets,
 * gaps, overlaps, span mismatches, duplicate names, bad index), KC_ERANGE for a header
 * longer than ENG_ST_MAX_HEADER or a shape whose byte size overflows, KC_EUNSUPPORTED for a
 * dtype we do not read or more than ENG_ST_MAX_DIMS dims, KC_ENOTFOUND for a missing file
 * or shard, KC_EIO for an operating-system failure, KC_ENOMEM, KC_EINVAL for bad arguments
 * to eng_st_write.
 *
 * Alignment: tensor data is a view into the mapping when it is aligned to its element size
 * (always so for files written by the reference library, which orders tensors by alignment,
 * and by eng_st_write when callers list wider dtypes first); a misaligned tensor is copied
 * once at open into an aligned buffer the set owns, so `data` is always element-aligned.
 */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "engine/io/dtype.h"

#define ENG_ST_MAX_HEADER (100u * 1024u * 1024u) /* 100 MB, as the reference reader */
#define ENG_ST_MAX_DIMS 8

struct eng_st_tensor {
    char *name;
    enum eng_dtype dtype;
    int ndim;
    int64_t shape[ENG_ST_MAX_DIMS];
    size_t offset_begin; /* relative to the data region */
    size_t offset_end;
    const void *data; /* view into the mapping (NULL after eng_st_parse_header alone) */
    size_t nbytes;    /* offset_end - offset_begin == prod(shape) * dtype size */
};

struct eng_st_meta {
    char *key;
    char *value;
};

/* The parsed header of one file. */
struct eng_st_header {
    struct eng_st_tensor *tensors; /* sorted by offset_begin */
    size_t n_tensors;
    struct eng_st_meta *meta;
    size_t n_meta;
};

/*
 * Parses and validates a header (the JSON bytes, without the 8-byte length prefix) against
 * a data region of data_len bytes. Rules: valid UTF-8 JSON object; no duplicate keys; every
 * tensor has exactly dtype (known), shape (array of <= 8 non-negative integers) and
 * data_offsets (2 non-negative integers, begin <= end <= data_len); prod(shape)*size ==
 * end-begin without overflow; tensor byte ranges do not overlap and together cover
 * [0, data_len) without gaps; `__metadata__`, if present, maps strings to strings.
 * On failure fills err (message without file name) and leaves *out untouched.
 * Pure function of its inputs: the libFuzzer target calls it directly.
 */
int eng_st_parse_header(const char *json, size_t json_len, size_t data_len,
                        struct eng_st_header *out, struct kc_error *err);
void eng_st_header_free(struct eng_st_header *h);

/* A set of one or more mmapped safetensors files seen as one namespace of tensors. */
struct eng_st_set;

/*
 * Opens `path`, which is either a .safetensors file, a model.safetensors.index.json (whose
 * weight_map shards are opened from the same directory; shard names must be plain file
 * names, no '/' or '..'), or a directory holding model.safetensors or the index.
 * Errors name the file and the problem. Tensor names must be unique across shards.
 */
int eng_st_set_open(const char *path, struct eng_st_set **out, struct kc_error *err);
void eng_st_set_free(struct eng_st_set *set);

/* Returns the tensor called name, or NULL. */
const struct eng_st_tensor *eng_st_set_find(const struct eng_st_set *set, const char *name);
/* Returns the iteration index (for eng_st_set_get) of the tensor called name, or -1: lets a
 * loader keep a used/unused flag per tensor. */
long eng_st_set_index_of(const struct eng_st_set *set, const char *name);
/* Number of tensors and the i-th one (0 <= i < count), for iteration. */
size_t eng_st_set_count(const struct eng_st_set *set);
const struct eng_st_tensor *eng_st_set_get(const struct eng_st_set *set, size_t i);
/* Returns the `__metadata__` value for key (first file that has it), or NULL. */
const char *eng_st_set_meta(const struct eng_st_set *set, const char *key);
/* Path of the file (or index) the set was opened from, for error messages. */
const char *eng_st_set_path(const struct eng_st_set *set);

/*
 * Writes a single-file safetensors (used by `kvcast calibrate` and by tests to build
 * fixtures). tensors[i].data/nbytes give the bytes; offsets are computed here.
 * meta may be NULL. Tensors are laid out in the given order.
 */
int eng_st_write(const char *path, const struct eng_st_tensor *tensors, size_t n_tensors,
                 const struct eng_st_meta *meta, size_t n_meta, struct kc_error *err);

#endif /* ENG_SAFETENSORS_H */
