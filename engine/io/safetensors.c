/*
 * safetensors.c — the safetensors reader (header validation, mmap, sharded sets) and the
 * single-file writer declared in safetensors.h.
 *
 * Place in the data flow: the only code that opens weight files. engine/model.c and the KV
 * predictor loader ask a set for tensors by name and read them through `data` views.
 *
 * DESIGN (invariants the rest of the engine relies on):
 *  1. Nothing from a file is trusted before it is checked: the length prefix against the
 *     file size (before any allocation), every offset against the data region, every
 *     shape product for overflow. A set that opened successfully has only tensors whose
 *     [data, data + nbytes) lies inside a live mapping or an owned aligned copy.
 *  2. Tensor byte ranges tile the data region exactly (sorted, no gap, no overlap), so no
 *     byte of a file is unaccounted for and no two tensors alias.
 *  3. Names are unique within a file (JSON_REJECT_DUPLICATES) and across shards (checked
 *     on the sorted name table, which is also the lookup structure).
 *  4. Mappings are MAP_PRIVATE + PROT_READ: the process never writes weights, and a later
 *     write to the file by another process cannot corrupt validated headers in place.
 *
 * Ownership and threads: see safetensors.h. Opening and freeing are single-threaded; all
 * lookups are read-only.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Names from files can be huge; messages show at most this many bytes of one. */
#define ST_NAME "%.128s"
/* An index is a small JSON file; real ones are well under 1 MB. */
#define ST_MAX_INDEX_BYTES (64u * 1024u * 1024u)
#define ST_PATH_MAX 4096

/* ------------------------------------------------------------------------------------ */
/* Header parsing                                                                        */
/* ------------------------------------------------------------------------------------ */

static int st_dtype_parse(const char *s, enum eng_dtype *out) {
    for (int i = 0; i < ENG_DTYPE_COUNT; i++) {
        if (strcmp(s, eng_dtype_name((enum eng_dtype)i)) == 0) {
            *out = (enum eng_dtype)i;
            return KC_OK;
        }
    }
    return KC_EUNSUPPORTED;
}

/* Reads a non-negative JSON integer into *out; KC_EFORMAT with a message otherwise. */
static int st_json_size(const json_t *v, const char *name, const char *what, size_t idx,
                        size_t *out, struct kc_error *err) {
    if (!json_is_integer(v)) {
        return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': %s[%zu] is not an integer",
                            name, what, idx);
    }
    json_int_t x = json_integer_value(v);
    if (x < 0) {
        return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': %s[%zu] is negative (%lld)",
                            name, what, idx, (long long)x);
    }
    if ((unsigned long long)x > (unsigned long long)SIZE_MAX) {
        return kc_error_set(err, KC_ERANGE, "tensor '" ST_NAME "': %s[%zu] is too large", name,
                            what, idx);
    }
    *out = (size_t)x;
    return KC_OK;
}

/* Validates one tensor entry and fills *t (name included) on success. */
static int st_tensor_parse(const char *name, json_t *v, size_t data_len, struct eng_st_tensor *t,
                           struct kc_error *err) {
    if (!json_is_object(v)) {
        return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': entry is not an object", name);
    }
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0) {
            return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': unexpected key '%.64s'",
                                name, key);
        }
    }

    struct eng_st_tensor r;
    memset(&r, 0, sizeof(r));

    const json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt)) {
        return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': missing or non-string dtype",
                            name);
    }
    if (st_dtype_parse(json_string_value(dt), &r.dtype) != KC_OK) {
        return kc_error_set(err, KC_EUNSUPPORTED, "tensor '" ST_NAME "': unsupported dtype '%.32s'",
                            name, json_string_value(dt));
    }

    const json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape)) {
        return kc_error_set(err, KC_EFORMAT, "tensor '" ST_NAME "': missing or non-array shape",
                            name);
    }
    const size_t ndim = json_array_size(shape);
    if (ndim > ENG_ST_MAX_DIMS) {
        return kc_error_set(err, KC_EUNSUPPORTED,
                            "tensor '" ST_NAME "': shape has %zu dims, at most %d are supported",
                            name, ndim, ENG_ST_MAX_DIMS);
    }
    size_t elems = 1;
    for (size_t i = 0; i < ndim; i++) {
        size_t d = 0;
        int rc = st_json_size(json_array_get(shape, i), name, "shape", i, &d, err);
        if (rc != KC_OK) {
            return rc;
        }
        if (!kc_size_mul(elems, d, &elems) || d > (size_t)INT64_MAX) {
            return kc_error_set(err, KC_ERANGE,
                                "tensor '" ST_NAME "': shape element count overflows", name);
        }
        r.shape[i] = (int64_t)d;
    }
    r.ndim = (int)ndim;
    size_t need;
    if (!kc_size_mul(elems, eng_dtype_size(r.dtype), &need)) {
        return kc_error_set(err, KC_ERANGE, "tensor '" ST_NAME "': shape byte size overflows",
                            name);
    }

    const json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs)) {
        return kc_error_set(err, KC_EFORMAT,
                            "tensor '" ST_NAME "': missing or non-array data_offsets", name);
    }
    if (json_array_size(offs) != 2) {
        return kc_error_set(err, KC_EFORMAT,
                            "tensor '" ST_NAME "': data_offsets must have 2 elements, has %zu",
                            name, json_array_size(offs));
    }
    size_t b, e;
    int rc = st_json_size(json_array_get(offs, 0), name, "data_offsets", 0, &b, err);
    if (rc == KC_OK) {
        rc = st_json_size(json_array_get(offs, 1), name, "data_offsets", 1, &e, err);
    }
    if (rc != KC_OK) {
        return rc;
    }
    if (b > e) {
        return kc_error_set(err, KC_EFORMAT,
                            "tensor '" ST_NAME "': data_offsets [%zu, %zu] are reversed", name, b,
                            e);
    }
    if (e > data_len) {
        return kc_error_set(err, KC_EFORMAT,
                            "tensor '" ST_NAME
                            "': ends at byte %zu, past the end of the %zu-byte data region",
                            name, e, data_len);
    }
    if (e - b != need) {
        return kc_error_set(err, KC_EFORMAT,
                            "tensor '" ST_NAME "': data_offsets span %zu bytes but shape and "
                            "dtype %s need %zu",
                            name, e - b, eng_dtype_name(r.dtype), need);
    }
    r.offset_begin = b;
    r.offset_end = e;
    r.nbytes = need;
    r.name = strdup(name);
    if (r.name == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    *t = r;
    return KC_OK;
}

static int st_cmp_offset(const void *pa, const void *pb) {
    const struct eng_st_tensor *a = pa, *b = pb;
    if (a->offset_begin != b->offset_begin) {
        return a->offset_begin < b->offset_begin ? -1 : 1;
    }
    if (a->offset_end != b->offset_end) {
        return a->offset_end < b->offset_end ? -1 : 1;
    }
    return strcmp(a->name, b->name);
}

static void st_header_clear(struct eng_st_tensor *ts, size_t nt, struct eng_st_meta *ms,
                            size_t nm) {
    for (size_t i = 0; i < nt; i++) {
        free(ts[i].name);
    }
    for (size_t i = 0; i < nm; i++) {
        free(ms[i].key);
        free(ms[i].value);
    }
    free(ts);
    free(ms);
}

static int st_meta_parse(json_t *v, struct eng_st_meta **out, size_t *n_out, struct kc_error *err) {
    if (!json_is_object(v)) {
        return kc_error_set(err, KC_EFORMAT, "__metadata__ is not an object");
    }
    const size_t n = json_object_size(v);
    struct eng_st_meta *ms = kc_calloc(n, sizeof(*ms));
    if (ms == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    size_t i = 0;
    const char *key;
    json_t *val;
    int rc = KC_OK;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val)) {
            rc = kc_error_set(err, KC_EFORMAT, "__metadata__ value for key '%.64s' is not a string",
                              key);
            goto fail;
        }
        ms[i].key = strdup(key);
        ms[i].value = strdup(json_string_value(val));
        i++;
        if (ms[i - 1].key == NULL || ms[i - 1].value == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = ms;
    *n_out = i;
    return KC_OK;
fail:
    st_header_clear(NULL, 0, ms, i);
    return rc;
}

int eng_st_parse_header(const char *json, size_t json_len, size_t data_len,
                        struct eng_st_header *out, struct kc_error *err) {
    KC_ASSERT(out != NULL);
    KC_ASSERT(json != NULL || json_len == 0);
    if (json_len < 2) {
        return kc_error_set(err, KC_EFORMAT,
                            "header length %zu is too small (the smallest header is \"{}\")",
                            json_len);
    }
    if (json_len > ENG_ST_MAX_HEADER) {
        return kc_error_set(err, KC_ERANGE, "header length %zu exceeds the %u-byte limit", json_len,
                            ENG_ST_MAX_HEADER);
    }

    json_error_t jerr;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        switch (json_error_code(&jerr)) {
        case json_error_out_of_memory:
            return kc_error_set(err, KC_ENOMEM, "out of memory parsing the header");
        case json_error_duplicate_key:
            return kc_error_set(err, KC_EFORMAT,
                                "header has a duplicate key (tensor names must be unique): %s "
                                "at byte %d",
                                jerr.text, jerr.position);
        case json_error_invalid_utf8:
            return kc_error_set(err, KC_EFORMAT, "header is not valid UTF-8: %s at byte %d",
                                jerr.text, jerr.position);
        default:
            return kc_error_set(err, KC_EFORMAT, "header is not valid JSON: %s at byte %d",
                                jerr.text, jerr.position);
        }
    }

    int rc = KC_OK;
    struct eng_st_tensor *ts = NULL;
    struct eng_st_meta *ms = NULL;
    size_t nt = 0, nm = 0;
    if (!json_is_object(root)) {
        rc = kc_error_set(err, KC_EFORMAT, "header is not a JSON object");
        goto fail;
    }
    ts = kc_calloc(json_object_size(root), sizeof(*ts));
    if (ts == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory");
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = st_meta_parse(val, &ms, &nm, err);
        } else {
            rc = st_tensor_parse(key, val, data_len, &ts[nt], err);
            if (rc == KC_OK) {
                nt++;
            }
        }
        if (rc != KC_OK) {
            goto fail;
        }
    }

    /* Invariant 2: sorted by offset, the ranges must tile [0, data_len). */
    if (nt > 1) {
        qsort(ts, nt, sizeof(*ts), st_cmp_offset);
    }
    size_t expect = 0;
    for (size_t i = 0; i < nt; i++) {
        if (ts[i].offset_begin < expect) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "tensors '" ST_NAME "' [%zu, %zu) and '" ST_NAME
                              "' [%zu, %zu) overlap",
                              ts[i - 1].name, ts[i - 1].offset_begin, ts[i - 1].offset_end,
                              ts[i].name, ts[i].offset_begin, ts[i].offset_end);
            goto fail;
        }
        if (ts[i].offset_begin > expect) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "gap in the data region: bytes [%zu, %zu) before tensor '" ST_NAME
                              "' belong to no tensor",
                              expect, ts[i].offset_begin, ts[i].name);
            goto fail;
        }
        expect = ts[i].offset_end;
    }
    if (expect != data_len) {
        rc = kc_error_set(err, KC_EFORMAT,
                          "tensors end at byte %zu but the data region has %zu bytes (trailing "
                          "bytes belong to no tensor)",
                          expect, data_len);
        goto fail;
    }

    json_decref(root);
    out->tensors = ts;
    out->n_tensors = nt;
    out->meta = ms;
    out->n_meta = nm;
    return KC_OK;
fail:
    st_header_clear(ts, nt, ms, nm);
    json_decref(root);
    return rc;
}

void eng_st_header_free(struct eng_st_header *h) {
    if (h == NULL) {
        return;
    }
    st_header_clear(h->tensors, h->n_tensors, h->meta, h->n_meta);
    memset(h, 0, sizeof(*h));
}

/* ------------------------------------------------------------------------------------ */
/* Files and sets                                                                        */
/* ------------------------------------------------------------------------------------ */

/* One mapped file. */
struct st_file {
    char *path;
    int fd; /* kept open for the life of the mapping */
    unsigned char *map;
    size_t map_len;
    struct eng_st_header hdr;
};

/* A tensor and the file it lives in (index into set->files). */
struct st_entry {
    struct eng_st_tensor *t;
    size_t file;
    size_t idx; /* position in iteration order (eng_st_set_get) */
};

struct eng_st_set {
    char *path;
    struct st_file *files;
    size_t n_files;
    struct st_entry *order;   /* iteration order: file by file, by offset */
    struct st_entry *by_name; /* sorted by name; bsearch for lookups */
    size_t n_tensors;
    void **copies; /* [n_tensors] aligned copies of misaligned tensors, else NULL */
};

static void st_file_close(struct st_file *f) {
    eng_st_header_free(&f->hdr);
    if (f->map != NULL) {
        munmap(f->map, f->map_len);
    }
    if (f->fd >= 0) {
        close(f->fd);
    }
    free(f->path);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

/* Opens, size-checks, maps and validates one .safetensors file into *f. */
static int st_file_open(const char *path, struct st_file *f, struct kc_error *err) {
    struct st_file r;
    memset(&r, 0, sizeof(r));
    r.fd = -1;
    int rc = KC_OK;

    r.path = strdup(path);
    if (r.path == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    r.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r.fd < 0) {
        rc = kc_error_set(err, errno == ENOENT ? KC_ENOTFOUND : KC_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(r.fd, &st) != 0) {
        rc = kc_error_set(err, KC_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = kc_error_set(err, KC_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        rc = kc_error_set(err, KC_EFORMAT,
                          "%s: file is %lld bytes, too short for the 8-byte header length", path,
                          (long long)st.st_size);
        goto fail;
    }
    if ((unsigned long long)st.st_size > (unsigned long long)SIZE_MAX) {
        rc = kc_error_set(err, KC_ERANGE, "%s: file too large to map", path);
        goto fail;
    }
    const size_t size = (size_t)st.st_size;

    /* Read the length prefix with pread so the checks come before the mapping exists. */
    unsigned char lenbuf[8];
    ssize_t got = pread(r.fd, lenbuf, sizeof(lenbuf), 0);
    if (got != (ssize_t)sizeof(lenbuf)) {
        rc = kc_error_set(err, KC_EIO, "%s: cannot read the header length", path);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) {
        n = (n << 8) | lenbuf[i];
    }
    if (n > ENG_ST_MAX_HEADER) {
        rc = kc_error_set(err, KC_ERANGE, "%s: header length %llu exceeds the %u-byte limit", path,
                          (unsigned long long)n, ENG_ST_MAX_HEADER);
        goto fail;
    }
    /* Written as a subtraction (size >= 8 here) so that n + 8 can never wrap. */
    if (n > (uint64_t)(size - 8)) {
        rc = kc_error_set(err, KC_EFORMAT,
                          "%s: header length %llu exceeds the %zu bytes after the length prefix "
                          "(truncated file?)",
                          path, (unsigned long long)n, size - 8);
        goto fail;
    }

    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, r.fd, 0);
    if (map == MAP_FAILED) {
        rc = kc_error_set(err, KC_EIO, "%s: mmap of %zu bytes failed: %s", path, size,
                          strerror(errno));
        goto fail;
    }
    r.map = map;
    r.map_len = size;

    const size_t hlen = (size_t)n;
    rc = eng_st_parse_header((const char *)r.map + 8, hlen, size - 8 - hlen, &r.hdr, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
        goto fail;
    }
    const unsigned char *base = r.map + 8 + hlen;
    for (size_t i = 0; i < r.hdr.n_tensors; i++) {
        r.hdr.tensors[i].data = base + r.hdr.tensors[i].offset_begin;
    }
    *f = r;
    return KC_OK;
fail:
    st_file_close(&r);
    return rc;
}

static int st_cmp_entry_name(const void *pa, const void *pb) {
    const struct st_entry *a = pa, *b = pb;
    return strcmp(a->t->name, b->t->name);
}

void eng_st_set_free(struct eng_st_set *set) {
    if (set == NULL) {
        return;
    }
    if (set->copies != NULL) {
        for (size_t i = 0; i < set->n_tensors; i++) {
            kc_aligned_free(set->copies[i]);
        }
    }
    for (size_t i = 0; i < set->n_files; i++) {
        st_file_close(&set->files[i]);
    }
    free(set->copies);
    free(set->order);
    free(set->by_name);
    free(set->files);
    free(set->path);
    free(set);
}

/* Builds the iteration and name tables over set->files, rejects names that repeat across
 * files, and gives misaligned tensors an aligned copy. */
static int st_set_index(struct eng_st_set *set, struct kc_error *err) {
    size_t n = 0;
    for (size_t f = 0; f < set->n_files; f++) {
        n += set->files[f].hdr.n_tensors; /* bounded by the mapped file sizes */
    }
    set->order = kc_calloc(n, sizeof(*set->order));
    set->by_name = kc_calloc(n, sizeof(*set->by_name));
    set->copies = kc_calloc(n, sizeof(*set->copies));
    if (set->order == NULL || set->by_name == NULL || set->copies == NULL) {
        return kc_error_set(err, KC_ENOMEM, "%s: out of memory", set->path);
    }
    set->n_tensors = n;
    size_t k = 0;
    for (size_t f = 0; f < set->n_files; f++) {
        for (size_t i = 0; i < set->files[f].hdr.n_tensors; i++) {
            struct eng_st_tensor *t = &set->files[f].hdr.tensors[i];
            const size_t align = eng_dtype_size(t->dtype);
            if (t->nbytes > 0 && (uintptr_t)t->data % align != 0) {
                void *copy = kc_aligned_alloc(t->nbytes);
                if (copy == NULL) {
                    return kc_error_set(err, KC_ENOMEM,
                                        "%s: out of memory copying tensor '" ST_NAME "'",
                                        set->files[f].path, t->name);
                }
                memcpy(copy, t->data, t->nbytes);
                t->data = copy;
                set->copies[k] = copy;
            }
            set->order[k].t = t;
            set->order[k].file = f;
            set->order[k].idx = k;
            k++;
        }
    }
    if (n > 0) {
        memcpy(set->by_name, set->order, n * sizeof(*set->by_name));
        qsort(set->by_name, n, sizeof(*set->by_name), st_cmp_entry_name);
    }
    for (size_t i = 1; i < n; i++) {
        if (strcmp(set->by_name[i - 1].t->name, set->by_name[i].t->name) == 0) {
            return kc_error_set(err, KC_EFORMAT, "%s: duplicate tensor '" ST_NAME "' in %s and %s",
                                set->path, set->by_name[i].t->name,
                                set->files[set->by_name[i - 1].file].path,
                                set->files[set->by_name[i].file].path);
        }
    }
    return KC_OK;
}

static const struct st_entry *st_set_lookup(const struct eng_st_set *set, const char *name) {
    if (set->n_tensors == 0) {
        return NULL;
    }
    struct eng_st_tensor probe;
    probe.name = (char *)(uintptr_t)name; /* only read by the comparator */
    struct st_entry key = {&probe, 0, 0};
    return bsearch(&key, set->by_name, set->n_tensors, sizeof(*set->by_name), st_cmp_entry_name);
}

/* A shard name must be a plain file name in the index's directory. */
static bool st_plain_name(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strchr(s, '\\') == NULL &&
           strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Opens a model.safetensors.index.json and every shard it names. set->path is the index. */
static int st_set_open_index(struct eng_st_set *set, struct kc_error *err) {
    const char *path = set->path;
    char *buf = NULL;
    size_t len = 0;
    json_t *root = NULL, *shard_ids = NULL;
    int rc = kc_file_read(path, ST_MAX_INDEX_BYTES, &buf, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    json_error_t jerr;
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: not valid JSON: %s at line %d column %d", path,
                          jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: missing or non-object 'weight_map'", path);
        goto fail;
    }
    if (json_object_size(wm) == 0) {
        rc = kc_error_set(err, KC_EFORMAT, "%s: 'weight_map' is empty", path);
        goto fail;
    }

    /* Distinct shard names, in first-seen order; shard_ids maps name -> index. */
    shard_ids = json_object();
    if (shard_ids == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    const char *tname;
    json_t *sv;
    size_t n_shards = 0;
    json_object_foreach(wm, tname, sv) {
        if (!json_is_string(sv)) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "%s: weight_map entry for tensor '" ST_NAME "' is not a string", path,
                              tname);
            goto fail;
        }
        const char *shard = json_string_value(sv);
        if (!st_plain_name(shard)) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "%s: weight_map puts tensor '" ST_NAME
                              "' in shard '%.200s', which is not a plain file name",
                              path, tname, shard);
            goto fail;
        }
        if (json_object_get(shard_ids, shard) == NULL) {
            if (json_object_set_new(shard_ids, shard, json_integer((json_int_t)n_shards)) != 0) {
                rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
                goto fail;
            }
            n_shards++;
        }
    }

    set->files = kc_calloc(n_shards, sizeof(*set->files));
    if (set->files == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    char dir[ST_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof(dir), ".");
    } else if ((size_t)(slash - path) >= sizeof(dir)) {
        rc = kc_error_set(err, KC_ERANGE, "%s: path too long", path);
        goto fail;
    } else {
        snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
    }
    const char *sname;
    json_t *sid;
    json_object_foreach(shard_ids, sname, sid) {
        char spath[ST_PATH_MAX];
        if (kc_path_join(spath, sizeof(spath), dir, sname) != KC_OK) {
            rc = kc_error_set(err, KC_ERANGE, "%s: shard path too long for '%.200s'", path, sname);
            goto fail;
        }
        rc = st_file_open(spath, &set->files[set->n_files], err);
        if (rc != KC_OK) {
            kc_error_prefix(err, "%s: shard '%.200s'", path, sname);
            goto fail;
        }
        set->n_files++;
    }

    rc = st_set_index(set, err);
    if (rc != KC_OK) {
        goto fail;
    }
    /* Every weight_map entry must be in the shard it names (names are unique by now). */
    json_object_foreach(wm, tname, sv) {
        const size_t want =
            (size_t)json_integer_value(json_object_get(shard_ids, json_string_value(sv)));
        const struct st_entry *e = st_set_lookup(set, tname);
        if (e == NULL || e->file != want) {
            rc = kc_error_set(err, KC_EFORMAT,
                              "%s: weight_map puts tensor '" ST_NAME
                              "' in shard '%.200s', which does not contain it",
                              path, tname, json_string_value(sv));
            goto fail;
        }
    }
    json_decref(shard_ids);
    json_decref(root);
    free(buf);
    return KC_OK;
fail:
    json_decref(shard_ids);
    json_decref(root);
    free(buf);
    return rc;
}

static bool st_ends_with(const char *s, const char *suffix) {
    const size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

int eng_st_set_open(const char *path, struct eng_st_set **out, struct kc_error *err) {
    KC_ASSERT(path != NULL && out != NULL);
    int rc = KC_OK;
    struct eng_st_set *set = calloc(1, sizeof(*set));
    if (set == NULL) {
        return kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
    }

    char resolved[ST_PATH_MAX];
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = kc_error_set(err, errno == ENOENT ? KC_ENOTFOUND : KC_EIO, "%s: %s", path,
                          strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        if (kc_path_join(resolved, sizeof(resolved), path, "model.safetensors") != KC_OK) {
            rc = kc_error_set(err, KC_ERANGE, "%s: path too long", path);
            goto fail;
        }
        if (stat(resolved, &st) != 0) {
            if (kc_path_join(resolved, sizeof(resolved), path, "model.safetensors.index.json") !=
                KC_OK) {
                rc = kc_error_set(err, KC_ERANGE, "%s: path too long", path);
                goto fail;
            }
            if (stat(resolved, &st) != 0) {
                rc = kc_error_set(err, KC_ENOTFOUND,
                                  "%s: directory has neither model.safetensors nor "
                                  "model.safetensors.index.json",
                                  path);
                goto fail;
            }
        }
    } else if (snprintf(resolved, sizeof(resolved), "%s", path) >= (int)sizeof(resolved)) {
        rc = kc_error_set(err, KC_ERANGE, "%.200s...: path too long", path);
        goto fail;
    }
    set->path = strdup(resolved);
    if (set->path == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }

    if (st_ends_with(resolved, ".json")) {
        rc = st_set_open_index(set, err);
    } else {
        set->files = calloc(1, sizeof(*set->files));
        if (set->files == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        rc = st_file_open(resolved, &set->files[0], err);
        if (rc == KC_OK) {
            set->n_files = 1;
            rc = st_set_index(set, err);
        }
    }
    if (rc != KC_OK) {
        goto fail;
    }
    *out = set;
    return KC_OK;
fail:
    eng_st_set_free(set);
    return rc;
}

const struct eng_st_tensor *eng_st_set_find(const struct eng_st_set *set, const char *name) {
    KC_ASSERT(set != NULL && name != NULL);
    const struct st_entry *e = st_set_lookup(set, name);
    return e == NULL ? NULL : e->t;
}

long eng_st_set_index_of(const struct eng_st_set *set, const char *name) {
    KC_ASSERT(set != NULL && name != NULL);
    const struct st_entry *e = st_set_lookup(set, name);
    return e == NULL ? -1 : (long)e->idx;
}

size_t eng_st_set_count(const struct eng_st_set *set) {
    KC_ASSERT(set != NULL);
    return set->n_tensors;
}

const struct eng_st_tensor *eng_st_set_get(const struct eng_st_set *set, size_t i) {
    KC_ASSERT(set != NULL && i < set->n_tensors);
    return set->order[i].t;
}

const char *eng_st_set_meta(const struct eng_st_set *set, const char *key) {
    KC_ASSERT(set != NULL && key != NULL);
    for (size_t f = 0; f < set->n_files; f++) {
        const struct eng_st_header *h = &set->files[f].hdr;
        for (size_t i = 0; i < h->n_meta; i++) {
            if (strcmp(h->meta[i].key, key) == 0) {
                return h->meta[i].value;
            }
        }
    }
    return NULL;
}

const char *eng_st_set_path(const struct eng_st_set *set) {
    KC_ASSERT(set != NULL);
    return set->path;
}

/* ------------------------------------------------------------------------------------ */
/* Writer                                                                                */
/* ------------------------------------------------------------------------------------ */

/* Builds the header JSON for eng_st_write, checking every tensor against its shape. */
static int st_header_build(const struct eng_st_tensor *tensors, size_t n_tensors,
                           const struct eng_st_meta *meta, size_t n_meta, json_t **out,
                           struct kc_error *err) {
    int rc = KC_OK;
    json_t *root = json_object();
    if (root == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    if (n_meta > 0) {
        json_t *m = json_object();
        if (m == NULL || json_object_set_new(root, "__metadata__", m) != 0) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < n_meta; i++) {
            if (meta[i].key == NULL || meta[i].value == NULL) {
                rc = kc_error_set(err, KC_EINVAL, "metadata entry %zu has a NULL key or value", i);
                goto fail;
            }
            if (json_object_get(m, meta[i].key) != NULL) {
                rc = kc_error_set(err, KC_EINVAL, "duplicate metadata key '%.64s'", meta[i].key);
                goto fail;
            }
            json_t *s = json_string(meta[i].value);
            if (s == NULL || json_object_set_new(m, meta[i].key, s) != 0) {
                rc = kc_error_set(err, KC_EINVAL, "metadata '%.64s' is not valid UTF-8",
                                  meta[i].key);
                goto fail;
            }
        }
    }
    size_t offset = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        const struct eng_st_tensor *t = &tensors[i];
        if (t->name == NULL || strcmp(t->name, "__metadata__") == 0) {
            rc = kc_error_set(err, KC_EINVAL, "tensor %zu has a NULL or reserved name", i);
            goto fail;
        }
        if (json_object_get(root, t->name) != NULL) {
            rc = kc_error_set(err, KC_EINVAL, "duplicate tensor name '" ST_NAME "'", t->name);
            goto fail;
        }
        if ((int)t->dtype < 0 || t->dtype >= ENG_DTYPE_COUNT || t->ndim < 0 ||
            t->ndim > ENG_ST_MAX_DIMS) {
            rc = kc_error_set(err, KC_EINVAL, "tensor '" ST_NAME "': bad dtype or ndim", t->name);
            goto fail;
        }
        /* json_object_set_new takes ownership of the value even when it fails. */
        json_t *obj = json_object();
        if (obj == NULL || json_object_set_new(root, t->name, obj) != 0) {
            rc = kc_error_set(err, obj == NULL ? KC_ENOMEM : KC_EINVAL,
                              "tensor %zu: out of memory or name not valid UTF-8", i);
            goto fail;
        }
        json_t *shape = json_array();
        json_t *offs = json_array();
        int bad = json_object_set_new(obj, "dtype", json_string(eng_dtype_name(t->dtype)));
        bad |= json_object_set_new(obj, "shape", shape);
        bad |= json_object_set_new(obj, "data_offsets", offs);
        if (bad != 0) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto fail;
        }
        size_t elems = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || !kc_size_mul(elems, (size_t)t->shape[d], &elems) ||
                json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0) {
                rc = kc_error_set(err, KC_EINVAL, "tensor '" ST_NAME "': bad shape", t->name);
                goto fail;
            }
        }
        size_t need, end;
        if (!kc_size_mul(elems, eng_dtype_size(t->dtype), &need) || need != t->nbytes ||
            (t->nbytes > 0 && t->data == NULL)) {
            rc = kc_error_set(err, KC_EINVAL,
                              "tensor '" ST_NAME "': nbytes %zu does not match shape and dtype",
                              t->name, t->nbytes);
            goto fail;
        }
        if (!kc_size_add(offset, need, &end) || end > (size_t)INT64_MAX) {
            rc = kc_error_set(err, KC_ERANGE, "tensor '" ST_NAME "': file too large", t->name);
            goto fail;
        }
        if (json_array_append_new(offs, json_integer((json_int_t)offset)) != 0 ||
            json_array_append_new(offs, json_integer((json_int_t)end)) != 0) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto fail;
        }
        offset = end;
    }
    *out = root;
    return KC_OK;
fail:
    json_decref(root);
    return rc;
}

int eng_st_write(const char *path, const struct eng_st_tensor *tensors, size_t n_tensors,
                 const struct eng_st_meta *meta, size_t n_meta, struct kc_error *err) {
    KC_ASSERT(path != NULL && (tensors != NULL || n_tensors == 0) && (meta != NULL || n_meta == 0));
    int rc = KC_OK;
    json_t *root = NULL;
    char *text = NULL;
    FILE *fp = NULL;
    char tmp[ST_PATH_MAX];
    bool tmp_made = false;

    rc = st_header_build(tensors, n_tensors, meta, n_meta, &root, err);
    if (rc != KC_OK) {
        kc_error_prefix(err, "%s", path);
        return rc;
    }
    text = json_dumps(root, JSON_COMPACT);
    if (text == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: cannot serialise the header", path);
        goto fail;
    }
    /* Pad with spaces so the data region starts 8-byte aligned, as the reference does. */
    const size_t hlen = strlen(text);
    const size_t padded = (hlen + 7) & ~(size_t)7;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        rc = kc_error_set(err, KC_ERANGE, "%.200s...: path too long", path);
        goto fail;
    }
    fp = fopen(tmp, "wb");
    if (fp == NULL) {
        rc = kc_error_set(err, KC_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto fail;
    }
    tmp_made = true;
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) {
        lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    }
    bool ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(text, 1, hlen, fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) {
        ok = fputc(' ', fp) != EOF;
    }
    for (size_t i = 0; ok && i < n_tensors; i++) {
        ok = tensors[i].nbytes == 0 ||
             fwrite(tensors[i].data, 1, tensors[i].nbytes, fp) == tensors[i].nbytes;
    }
    ok = fflush(fp) == 0 && ok;
    int close_rc = fclose(fp);
    fp = NULL;
    if (!ok || close_rc != 0) {
        rc = kc_error_set(err, KC_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = kc_error_set(err, KC_EIO, "%s: cannot rename from %s: %s", path, tmp, strerror(errno));
        goto fail;
    }
    free(text);
    json_decref(root);
    return KC_OK;
fail:
    if (fp != NULL) {
        fclose(fp);
    }
    if (tmp_made) {
        remove(tmp);
    }
    free(text);
    json_decref(root);
    return rc;
}
