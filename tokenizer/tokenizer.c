/*
 * tokenizer.c — loads a Hugging Face tokenizer.json (+ tokenizer_config.json) into an immutable
 * struct eng_tok, validating everything the encoder and decoder will later trust.
 *
 * Place in the data flow: called once per model at start-up (server, CLI); encode lives in
 * tokenizer_encode.c, decode in tokenizer_decode.c. Invariants are listed in
 * tokenizer_internal.h.
 *
 * Every failure names the file, the JSON location and the problem. Validation before
 * allocation: ids are bounded by ENG__TOK_MAX_IDS before per-id arrays are sized, the file by
 * ENG__TOK_MAX_FILE before it is read, Sequence nesting by ENG__TOK_MAX_NEST (jansson itself
 * stops at depth 2048).
 *
 * Thread rules: loading touches only the new object; the result is read-only.
 */
#define _POSIX_C_SOURCE 200809L

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer/tokenizer_internal.h"

/* GPT-2's pattern, used by the ByteLevel pre-tokenizer when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct load_ctx {
    const char *name; /* file name for messages */
    struct kc_error *err;
    struct eng_tok *tok;
    json_t *config; /* tokenizer_config.json root or NULL */
};

/* ---- hashing and maps ---- */

uint64_t eng__tok_hash(const void *p, size_t len) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        len -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, len);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) {
        c <<= 1;
    }
    return c;
}

static int map_init(struct eng__tok_map *m, size_t n, const struct eng__tok_str *keys) {
    const size_t cap = pow2_at_least(n + n / 2 + 1); /* load factor <= 2/3 */
    m->slots = kc_calloc(cap, sizeof(*m->slots));
    if (m->slots == NULL) {
        return KC_ENOMEM;
    }
    m->mask = cap - 1;
    m->keys = keys;
    return 0;
}

int32_t eng__tok_map_get(const struct eng_tok *tok, const struct eng__tok_map *m, const char *key,
                         size_t len) {
    if (m->slots == NULL) {
        return -1;
    }
    const uint64_t h = eng__tok_hash(key, len);
    const uint64_t tag = h >> 32;
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        const uint64_t s = m->slots[i];
        if (s == 0) {
            return -1;
        }
        if ((s >> 32) == tag) {
            const int32_t id = (int32_t)(uint32_t)(s & 0xFFFFFFFFu) - 1;
            const struct eng__tok_str *k = &m->keys[id];
            if (k->len == len && memcmp(tok->pool + k->off, key, len) == 0) {
                return id;
            }
        }
    }
}

/* Inserts id under its key; returns the id already there for an equal key, or -1. */
static int32_t map_put(const struct eng_tok *tok, struct eng__tok_map *m, int32_t id) {
    const struct eng__tok_str *k = &m->keys[id];
    const char *key = tok->pool + k->off;
    const uint64_t h = eng__tok_hash(key, k->len);
    const uint64_t tag = h >> 32;
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        const uint64_t s = m->slots[i];
        if (s == 0) {
            m->slots[i] = (tag << 32) | (uint64_t)(uint32_t)(id + 1);
            return -1;
        }
        if ((s >> 32) == tag) {
            const int32_t other = (int32_t)(uint32_t)(s & 0xFFFFFFFFu) - 1;
            const struct eng__tok_str *o = &m->keys[other];
            if (o->len == k->len && memcmp(tok->pool + o->off, key, k->len) == 0) {
                return other;
            }
        }
    }
}

/* Points an existing key at a new id (added tokens win over vocab entries for the same text). */
static void map_replace(const struct eng_tok *tok, struct eng__tok_map *m, int32_t old_id,
                        int32_t new_id) {
    const struct eng__tok_str *k = &m->keys[old_id];
    const uint64_t h = eng__tok_hash(tok->pool + k->off, k->len);
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        if (m->slots[i] == 0) {
            return;
        }
        if ((int32_t)(uint32_t)(m->slots[i] & 0xFFFFFFFFu) - 1 == old_id) {
            m->slots[i] = (m->slots[i] & ~(uint64_t)0xFFFFFFFFu) | (uint64_t)(uint32_t)(new_id + 1);
            return;
        }
    }
}

static uint64_t merge_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static size_t merge_slot(uint64_t key, size_t mask) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    return (size_t)h & mask;
}

bool eng__tok_merge_get(const struct eng__tok_merges *m, int32_t a, int32_t b, uint32_t *rank,
                        int32_t *result) {
    if (m->slots == NULL) {
        return false;
    }
    const uint64_t key = merge_key(a, b);
    for (size_t i = merge_slot(key, m->mask);; i = (i + 1) & m->mask) {
        const struct eng__tok_merge_slot *s = &m->slots[i];
        if (s->key == 0) {
            return false;
        }
        if (s->key == key) {
            *rank = s->rank;
            *result = s->result;
            return true;
        }
    }
}

/* Later duplicates overwrite earlier ones, as in HF's Rust and JS libraries. */
static void merge_put(struct eng__tok_merges *m, int32_t a, int32_t b, uint32_t rank,
                      int32_t result) {
    const uint64_t key = merge_key(a, b);
    for (size_t i = merge_slot(key, m->mask);; i = (i + 1) & m->mask) {
        struct eng__tok_merge_slot *s = &m->slots[i];
        if (s->key == 0 || s->key == key) {
            s->key = key;
            s->rank = rank;
            s->result = result;
            return;
        }
    }
}

/* ---- string pool ---- */

static int pool_add(struct load_ctx *c, const void *p, size_t len, struct eng__tok_str *out) {
    struct eng_tok *tok = c->tok;
    if (len > ENG__TOK_MAX_POOL || tok->pool_len > ENG__TOK_MAX_POOL - len - 1) {
        return kc_error_set(c->err, KC_ERANGE, "%s: the tokenizer's strings exceed %zu MiB",
                            c->name, ENG__TOK_MAX_POOL >> 20);
    }
    if (tok->pool_len + len + 1 > tok->pool_cap) {
        size_t cap = tok->pool_cap ? tok->pool_cap : 4096;
        while (cap < tok->pool_len + len + 1) {
            cap *= 2;
        }
        char *np = realloc(tok->pool, cap);
        if (np == NULL) {
            return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
        }
        tok->pool = np;
        tok->pool_cap = cap;
    }
    if (len > 0) {
        memcpy(tok->pool + tok->pool_len, p, len);
    }
    tok->pool[tok->pool_len + len] = '\0';
    out->off = (uint32_t)tok->pool_len;
    out->len = (uint32_t)len;
    tok->pool_len += len + 1;
    return 0;
}

/* ---- GPT-2 byte <-> unicode table ---- */

/* Maps code point -> byte for the byte-level alphabet; -1 for code points outside it. */
static void byte_level_table(int16_t cp_to_byte[324]) {
    for (int i = 0; i < 324; i++) {
        cp_to_byte[i] = -1;
    }
    int n = 0;
    for (int b = 0; b < 256; b++) {
        const bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (direct) {
            cp_to_byte[b] = (int16_t)b;
        } else {
            cp_to_byte[256 + n] = (int16_t)b;
            n++;
        }
    }
}

/* Converts a byte-level piece to raw bytes in buf (at most len bytes: every char is >= 1 byte
 * of input and yields exactly one byte). Returns the length or -1 if a char is not in the
 * alphabet. */
static long byte_level_unmap(const int16_t cp_to_byte[324], const char *piece, size_t len,
                             uint8_t *buf) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k;
        const uint32_t cp = eng__utf8_decode((const uint8_t *)piece + i, len - i, &k);
        i += k;
        if (cp >= 324 || cp_to_byte[cp] < 0) {
            return -1;
        }
        buf[o++] = (uint8_t)cp_to_byte[cp];
    }
    return (long)o;
}

/* ---- JSON helpers ---- */

static const char *json_type_name(const json_t *j) {
    if (j == NULL) {
        return "missing";
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

/* Optional boolean member: absent or null -> def. */
static int get_bool(struct load_ctx *c, const json_t *obj, const char *where, const char *key,
                    bool def, bool *out) {
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.%s must be a boolean, not %s", c->name,
                            where, key, json_type_name(v));
    }
    *out = json_is_true(v);
    return 0;
}

/* Optional string member: absent or null -> *out = NULL. */
static int get_str(struct load_ctx *c, const json_t *obj, const char *where, const char *key,
                   const json_t **out) {
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.%s must be a string, not %s", c->name,
                            where, key, json_type_name(v));
    }
    *out = v;
    return 0;
}

static int get_type(struct load_ctx *c, const json_t *obj, const char *where, const char **out) {
    if (!json_is_object(obj)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s must be an object or null, not %s", c->name,
                            where, json_type_name(obj));
    }
    const json_t *t = json_object_get(obj, "type");
    if (!json_is_string(t)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.type must be a string", c->name, where);
    }
    *out = json_string_value(t);
    return 0;
}

/* The type of a normalizer / pre-tokenizer / post-processor object nested `depth` Sequences
 * deep; the depth bound keeps hostile files from recursing without limit. */
static int get_component_type(struct load_ctx *c, const json_t *obj, const char *where, int depth,
                              const char **out) {
    if (depth > ENG__TOK_MAX_NEST) {
        return kc_error_set(c->err, KC_ERANGE, "%s: %s: Sequence nested deeper than %d", c->name,
                            where, ENG__TOK_MAX_NEST);
    }
    return get_type(c, obj, where, out);
}

/* Rewrites \s and \S (outside and inside classes) to the White_Space property, which is what
 * Oniguruma means by them; PCRE2's UCP \s leaves out U+0085. */
static char *rewrite_regex(const char *src, size_t len) {
    size_t cap;
    if (!kc_size_mul(len, 8, &cap) || !kc_size_add(cap, 1, &cap)) {
        return NULL;
    }
    char *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\\' && i + 1 < len) {
            if (src[i + 1] == 's' || src[i + 1] == 'S') {
                const char *rep = src[i + 1] == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
                memcpy(out + o, rep, strlen(rep));
                o += strlen(rep);
            } else {
                out[o++] = src[i];
                out[o++] = src[i + 1];
            }
            i++;
            continue;
        }
        out[o++] = src[i];
    }
    out[o] = '\0';
    return out;
}

static int compile_regex(struct load_ctx *c, const char *where, const char *pat, size_t len,
                         pcre2_code **out) {
    if (len > 65536) {
        return kc_error_set(c->err, KC_ERANGE, "%s: %s: regex longer than 64 KiB", c->name, where);
    }
    char *rw = rewrite_regex(pat, len);
    if (rw == NULL) {
        return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
    }
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)rw, strlen(rw), PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C,
                      &ecode, &eoff, NULL);
    free(rw);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof(msg));
        return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: %s: regex /%.*s/ does not compile: %s",
                            c->name, where, (int)(len > 200 ? 200 : len), pat, (char *)msg);
    }
    /* JIT is an optimisation: on failure the interpreter runs the same pattern. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return 0;
}

/* Reads {"String": s} or {"Regex": r} into step->lit or step->re. */
static int parse_pattern(struct load_ctx *c, const json_t *obj, const char *where,
                         struct eng__tok_step *st) {
    const json_t *p = json_object_get(obj, "pattern");
    if (!json_is_object(p)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.pattern must be an object", c->name, where);
    }
    const json_t *s = json_object_get(p, "String");
    const json_t *r = json_object_get(p, "Regex");
    if (json_is_string(s)) {
        if (json_string_length(s) == 0) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s.pattern.String is empty", c->name,
                                where);
        }
        return pool_add(c, json_string_value(s), json_string_length(s), &st->lit);
    }
    if (json_is_string(r)) {
        return compile_regex(c, where, json_string_value(r), json_string_length(r), &st->re);
    }
    return kc_error_set(c->err, KC_EFORMAT, "%s: %s.pattern needs a String or Regex string",
                        c->name, where);
}

static int add_step(struct load_ctx *c, struct eng__tok_step *steps, int *n, const char *where,
                    struct eng__tok_step **out) {
    if (*n >= ENG__TOK_MAX_STEPS) {
        return kc_error_set(c->err, KC_ERANGE, "%s: %s: more than %d steps", c->name, where,
                            ENG__TOK_MAX_STEPS);
    }
    *out = &steps[(*n)++];
    memset(*out, 0, sizeof(**out));
    return 0;
}

/* A normalizer, pre-tokenizer or post-processor parser: the component j at `where`, nested
 * `depth` Sequences deep. */
typedef int (*component_parser)(struct load_ctx *c, const json_t *j, const char *where, int depth);

/* A {"type": "Sequence", key: [...]} component: each item of j[key] through parse, one level
 * deeper (get_component_type bounds the depth). */
static int parse_sequence(struct load_ctx *c, const json_t *j, const char *where, int depth,
                          const char *key, component_parser parse) {
    const json_t *arr = json_object_get(j, key);
    if (!json_is_array(arr)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.%s must be an array", c->name, where, key);
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char sub[128];
        snprintf(sub, sizeof(sub), "%s.%s[%zu]", where, key, i);
        int rc = parse(c, json_array_get(arr, i), sub, depth + 1);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

/* Opens the normalizer / pre-tokenizer / post-processor j: absent or null is nothing to do, a
 * Sequence is parsed here (its items under seq_key, each through parse). Returns < 0 on
 * error, 1 when nothing is left for the caller, 0 when *type names a component the caller
 * parses itself. */
static int component_open(struct load_ctx *c, const json_t *j, const char *where, int depth,
                          const char *seq_key, component_parser parse, const char **type) {
    if (j == NULL || json_is_null(j)) {
        return 1;
    }
    int rc = get_component_type(c, j, where, depth, type);
    if (rc < 0) {
        return rc;
    }
    if (strcmp(*type, "Sequence") == 0) {
        rc = parse_sequence(c, j, where, depth, seq_key, parse);
        return rc < 0 ? rc : 1;
    }
    return 0;
}

static int parse_normalizer(struct load_ctx *c, const json_t *j, const char *where, int depth) {
    struct eng_tok *tok = c->tok;
    const char *type = "";
    int rc = component_open(c, j, where, depth, "normalizers", parse_normalizer, &type);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    struct eng__tok_step *st = NULL;
    if (strcmp(type, "Prepend") == 0) {
        const json_t *s;
        if ((rc = get_str(c, j, where, "prepend", &s)) < 0) {
            return rc;
        }
        if (s == NULL) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s.prepend is missing", c->name, where);
        }
        if ((rc = add_step(c, tok->norm, &tok->n_norm, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_N_PREPEND;
        return pool_add(c, json_string_value(s), json_string_length(s), &st->lit);
    }
    if (strcmp(type, "Replace") == 0) {
        const json_t *s;
        if ((rc = get_str(c, j, where, "content", &s)) < 0) {
            return rc;
        }
        if ((rc = add_step(c, tok->norm, &tok->n_norm, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_N_REPLACE;
        if ((rc = parse_pattern(c, j, where, st)) < 0) {
            return rc;
        }
        return pool_add(c, s ? json_string_value(s) : "", s ? json_string_length(s) : 0, &st->with);
    }
    if (strcmp(type, "NFC") == 0) {
        if ((rc = add_step(c, tok->norm, &tok->n_norm, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_N_NFC;
        return 0;
    }
    if (strcmp(type, "Strip") == 0) {
        bool l, r;
        if ((rc = get_bool(c, j, where, "strip_left", true, &l)) < 0 ||
            (rc = get_bool(c, j, where, "strip_right", true, &r)) < 0) {
            return rc;
        }
        if ((rc = add_step(c, tok->norm, &tok->n_norm, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_N_STRIP;
        st->strip_left = l;
        st->strip_right = r;
        return 0;
    }
    return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: %s: normalizer type '%s' is not supported",
                        c->name, where, type);
}

static int parse_pre_tokenizer(struct load_ctx *c, const json_t *j, const char *where, int depth) {
    struct eng_tok *tok = c->tok;
    const char *type = "";
    int rc = component_open(c, j, where, depth, "pretokenizers", parse_pre_tokenizer, &type);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    struct eng__tok_step *st = NULL;
    if (tok->n_pre > 0 && tok->pre[tok->n_pre - 1].kind == ENG__TOK_P_BYTELEVEL) {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: %s: a pre-tokenizer after ByteLevel is not supported", c->name,
                            where);
    }
    if (strcmp(type, "Split") == 0) {
        const json_t *b;
        if ((rc = get_str(c, j, where, "behavior", &b)) < 0) {
            return rc;
        }
        bool invert;
        if ((rc = get_bool(c, j, where, "invert", false, &invert)) < 0) {
            return rc;
        }
        const char *beh = b ? json_string_value(b) : "Isolated";
        if (strcmp(beh, "Isolated") != 0 && strcmp(beh, "Removed") != 0) {
            return kc_error_set(c->err, KC_EUNSUPPORTED,
                                "%s: %s: Split behavior '%s' is not supported (Isolated, Removed)",
                                c->name, where, beh);
        }
        if ((rc = add_step(c, tok->pre, &tok->n_pre, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_P_SPLIT;
        st->removed = strcmp(beh, "Removed") == 0;
        st->invert = invert;
        return parse_pattern(c, j, where, st);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool aps, use_regex;
        if ((rc = get_bool(c, j, where, "add_prefix_space", false, &aps)) < 0 ||
            (rc = get_bool(c, j, where, "use_regex", true, &use_regex)) < 0) {
            return rc;
        }
        if ((rc = add_step(c, tok->pre, &tok->n_pre, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_P_BYTELEVEL;
        st->prefix_space = aps;
        if (use_regex) {
            return compile_regex(c, where, gpt2_pattern, strlen(gpt2_pattern), &st->re);
        }
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        const json_t *rep, *scheme;
        bool split, aps;
        if ((rc = get_str(c, j, where, "replacement", &rep)) < 0 ||
            (rc = get_str(c, j, where, "prepend_scheme", &scheme)) < 0 ||
            (rc = get_bool(c, j, where, "split", true, &split)) < 0 ||
            (rc = get_bool(c, j, where, "add_prefix_space", true, &aps)) < 0) {
            return rc;
        }
        const char *r = rep ? json_string_value(rep) : "\xE2\x96\x81";
        const size_t rl = rep ? json_string_length(rep) : 3;
        if (rl == 0 || eng__utf8_len((uint8_t)r[0]) != rl) {
            return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: %s.replacement must be one character",
                                c->name, where);
        }
        if ((rc = add_step(c, tok->pre, &tok->n_pre, where, &st)) < 0) {
            return rc;
        }
        st->kind = ENG__TOK_P_METASPACE;
        st->split = split;
        /* Older files have add_prefix_space instead of prepend_scheme. */
        st->prepend = aps ? ENG__TOK_PREPEND_ALWAYS : ENG__TOK_PREPEND_NEVER;
        if (scheme != NULL) {
            const char *sc = json_string_value(scheme);
            if (strcmp(sc, "always") == 0) {
                st->prepend = ENG__TOK_PREPEND_ALWAYS;
            } else if (strcmp(sc, "first") == 0) {
                st->prepend = ENG__TOK_PREPEND_FIRST;
            } else if (strcmp(sc, "never") == 0) {
                st->prepend = ENG__TOK_PREPEND_NEVER;
            } else {
                return kc_error_set(c->err, KC_EFORMAT,
                                    "%s: %s.prepend_scheme '%.20s' is not always|first|never",
                                    c->name, where, sc);
            }
        }
        return pool_add(c, r, rl, &st->lit);
    }
    return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: %s: pre-tokenizer type '%s' is not supported",
                        c->name, where, type);
}

/* ---- model ---- */

static int check_id(struct load_ctx *c, const json_t *v, const char *what, int32_t *out) {
    if (!json_is_integer(v)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s: id must be an integer, not %s", c->name,
                            what, json_type_name(v));
    }
    const json_int_t id = json_integer_value(v);
    if (id < 0 || id >= ENG__TOK_MAX_IDS) {
        return kc_error_set(c->err, KC_ERANGE, "%s: %s: id %lld is outside [0, %d)", c->name, what,
                            (long long)id, (int)ENG__TOK_MAX_IDS);
    }
    *out = (int32_t)id;
    return 0;
}

static int parse_model_flags(struct load_ctx *c, const json_t *model) {
    struct eng_tok *tok = c->tok;
    int rc;
    const json_t *t = json_object_get(model, "type");
    if (t != NULL && !json_is_string(t)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: model.type must be a string", c->name);
    }
    if (t != NULL && strcmp(json_string_value(t), "BPE") != 0) {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: model.type '%s' is not supported (only BPE)", c->name,
                            json_string_value(t));
    }
    const json_t *d = json_object_get(model, "dropout");
    if (d != NULL && !json_is_null(d) && !(json_is_number(d) && json_number_value(d) == 0.0)) {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: model.dropout must be null or 0 (BPE dropout is random)", c->name);
    }
    static const char *const empty_only[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *s;
        if ((rc = get_str(c, model, "model", empty_only[i], &s)) < 0) {
            return rc;
        }
        if (s != NULL && json_string_length(s) != 0) {
            return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: model.%s '%s' is not supported",
                                c->name, empty_only[i], json_string_value(s));
        }
    }
    if ((rc = get_bool(c, model, "model", "byte_fallback", false, &tok->byte_fallback)) < 0 ||
        (rc = get_bool(c, model, "model", "ignore_merges", false, &tok->ignore_merges)) < 0 ||
        (rc = get_bool(c, model, "model", "fuse_unk", false, &tok->fuse_unk)) < 0) {
        return rc;
    }
    return 0;
}

/* Pass 1 over vocab and added_tokens: the size of the id space. */
static int count_ids(struct load_ctx *c, json_t *vocab, const json_t *added, int32_t *n_ids) {
    int32_t max_id = -1;
    for (void *it = json_object_iter(vocab); it != NULL; it = json_object_iter_next(vocab, it)) {
        const char *key = json_object_iter_key(it);
        const size_t klen = json_object_iter_key_len(it);
        const json_t *v = json_object_iter_value(it);
        int32_t id = -1;
        char what[96];
        snprintf(what, sizeof(what), "model.vocab['%.40s']", key);
        int rc = check_id(c, v, what, &id);
        if (rc < 0) {
            return rc;
        }
        if (klen > ENG__TOK_MAX_PIECE) {
            return kc_error_set(c->err, KC_ERANGE, "%s: model.vocab: piece of %zu bytes (max %u)",
                                c->name, klen, ENG__TOK_MAX_PIECE);
        }
        if (id > max_id) {
            max_id = id;
        }
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i);
        char what[64];
        snprintf(what, sizeof(what), "added_tokens[%zu]", i);
        if (!json_is_object(a)) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s must be an object", c->name, what);
        }
        int32_t id;
        int rc = check_id(c, json_object_get(a, "id"), what, &id);
        if (rc < 0) {
            return rc;
        }
        if (id > max_id) {
            max_id = id;
        }
    }
    if (max_id < 0) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: model.vocab is empty", c->name);
    }
    *n_ids = max_id + 1;
    return 0;
}

static int load_vocab(struct load_ctx *c, json_t *vocab) {
    struct eng_tok *tok = c->tok;
    int16_t cp_to_byte[324];
    uint8_t buf[ENG__TOK_MAX_PIECE];
    byte_level_table(cp_to_byte);
    int rc;
    for (void *it = json_object_iter(vocab); it != NULL; it = json_object_iter_next(vocab, it)) {
        const char *key = json_object_iter_key(it);
        const size_t klen = json_object_iter_key_len(it);
        const json_t *v = json_object_iter_value(it);
        const int32_t id = (int32_t)json_integer_value(v); /* checked by count_ids */
        if (tok->id_flags[id] & ENG__TOK_ID_PIECE) {
            return kc_error_set(c->err, KC_EFORMAT,
                                "%s: model.vocab: id %d is used by both '%.40s' and '%.40s'",
                                c->name, (int)id, tok->pool + tok->piece[id].off, key);
        }
        if ((rc = pool_add(c, key, klen, &tok->piece[id])) < 0) {
            return rc;
        }
        tok->id_flags[id] |= ENG__TOK_ID_PIECE | ENG__TOK_ID_MODEL;
        if (tok->byte_level) {
            const long n = byte_level_unmap(cp_to_byte, key, klen, buf);
            if (n < 0) {
                /* Not in the byte alphabet: the model can never produce it; it still decodes. */
                tok->id_flags[id] &= (uint8_t)~ENG__TOK_ID_MODEL;
                continue;
            }
            if ((rc = pool_add(c, buf, (size_t)n, &tok->mkey[id])) < 0) {
                return rc;
            }
        } else {
            tok->mkey[id] = tok->piece[id];
        }
    }
    if ((rc = map_init(&tok->model_map, (size_t)tok->n_ids, tok->mkey)) < 0 ||
        (rc = map_init(&tok->piece_map, (size_t)tok->n_ids, tok->piece)) < 0) {
        return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
    }
    for (int32_t id = 0; id < tok->n_ids; id++) {
        if (tok->id_flags[id] & ENG__TOK_ID_MODEL) {
            if (map_put(tok, &tok->model_map, id) >= 0) {
                return kc_error_set(c->err, KC_EFORMAT,
                                    "%s: model.vocab: two pieces decode to the same bytes (id %d)",
                                    c->name, (int)id);
            }
        }
        if (tok->id_flags[id] & ENG__TOK_ID_PIECE) {
            (void)map_put(tok, &tok->piece_map, id); /* JSON keys are unique */
        }
    }
    return 0;
}

static int merge_part_id(struct load_ctx *c, size_t i, const char *s, size_t len, int32_t *out) {
    const int32_t id = eng__tok_map_get(c->tok, &c->tok->piece_map, s, len);
    if (id < 0 || !(c->tok->id_flags[id] & ENG__TOK_ID_PIECE)) {
        return kc_error_set(c->err, KC_EFORMAT,
                            "%s: model.merges[%zu]: '%.*s' is not in the vocabulary", c->name, i,
                            (int)(len > 60 ? 60 : len), s);
    }
    *out = id;
    return 0;
}

static int load_merges(struct load_ctx *c, const json_t *merges) {
    struct eng_tok *tok = c->tok;
    const size_t n = json_array_size(merges);
    char *cat = NULL;
    int rc = 0;
    if (n > (size_t)ENG__TOK_MAX_IDS) {
        return kc_error_set(c->err, KC_ERANGE, "%s: model.merges has %zu entries (max %d)", c->name,
                            n, (int)ENG__TOK_MAX_IDS);
    }
    const size_t cap = pow2_at_least(n + n / 2 + 1); /* load factor <= 2/3 */
    tok->merges.slots = kc_calloc(cap, sizeof(*tok->merges.slots));
    cat = malloc(2 * ENG__TOK_MAX_PIECE + 1);
    if (tok->merges.slots == NULL || cat == NULL) {
        rc = kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
        goto out;
    }
    tok->merges.mask = cap - 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            const size_t len = json_string_length(m);
            const char *sp = memchr(s, ' ', len);
            if (sp == NULL || memchr(sp + 1, ' ', len - (size_t)(sp - s) - 1) != NULL) {
                rc = kc_error_set(c->err, KC_EFORMAT,
                                  "%s: model.merges[%zu]: '%.60s' is not two pieces separated by "
                                  "one space",
                                  c->name, i, s);
                goto out;
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = len - al - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            rc =
                kc_error_set(c->err, KC_EFORMAT,
                             "%s: model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", c->name, i);
            goto out;
        }
        int32_t ia = -1, ib = -1;
        if ((rc = merge_part_id(c, i, a, al, &ia)) < 0 ||
            (rc = merge_part_id(c, i, b, bl, &ib)) < 0) {
            goto out;
        }
        memcpy(cat, a, al);
        memcpy(cat + al, b, bl);
        const int32_t ir = eng__tok_map_get(tok, &tok->piece_map, cat, al + bl);
        if (ir < 0) {
            rc = kc_error_set(c->err, KC_EFORMAT,
                              "%s: model.merges[%zu]: result '%.*s' is not in the vocabulary",
                              c->name, i, (int)(al + bl > 60 ? 60 : al + bl), cat);
            goto out;
        }
        const uint8_t need = ENG__TOK_ID_MODEL;
        if ((tok->id_flags[ia] & need) && (tok->id_flags[ib] & need) &&
            (tok->id_flags[ir] & need)) {
            merge_put(&tok->merges, ia, ib, (uint32_t)i, ir);
        }
    }
out:
    free(cat);
    return rc;
}

/* ---- added tokens ---- */

static int trie_insert(struct load_ctx *c, struct eng__tok_trie *t, const uint8_t *s, size_t len,
                       int32_t token) {
    int32_t *link = &t->root[s[0]];
    int32_t node = -1;
    for (size_t i = 0; i < len; i++) {
        int32_t cur = *link;
        while (cur >= 0 && t->nodes[cur].byte != s[i]) {
            cur = t->nodes[cur].sibling;
        }
        if (cur < 0) {
            if (t->n == t->cap) {
                const size_t cap = t->cap ? t->cap * 2 : 256;
                struct eng__tok_trie_node *nn = realloc(t->nodes, cap * sizeof(*nn));
                if (nn == NULL) {
                    return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
                }
                t->nodes = nn;
                t->cap = cap;
                /* link may point into the old array; recompute it below */
            }
            cur = (int32_t)t->n++;
            t->nodes[cur].byte = s[i];
            t->nodes[cur].child = -1;
            t->nodes[cur].token = -1;
            if (i == 0) {
                t->nodes[cur].sibling = -1;
                t->root[s[0]] = cur;
            } else {
                t->nodes[cur].sibling = t->nodes[node].child;
                t->nodes[node].child = cur;
            }
        }
        node = cur;
        link = &t->nodes[node].child;
    }
    t->nodes[node].token = token; /* a later duplicate wins, as in HF */
    return 0;
}

static int load_added(struct load_ctx *c, const json_t *added) {
    struct eng_tok *tok = c->tok;
    const size_t n = json_array_size(added);
    int rc;
    for (int i = 0; i < 256; i++) {
        tok->trie_raw.root[i] = -1;
        tok->trie_norm.root[i] = -1;
    }
    if (n == 0) {
        return 0;
    }
    size_t added_bytes = 0;
    tok->added = kc_calloc(n, sizeof(*tok->added));
    if (tok->added == NULL) {
        return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(added, i);
        char where[64];
        snprintf(where, sizeof(where), "added_tokens[%zu]", i);
        struct eng__tok_added *t = &tok->added[i];
        t->id = (int32_t)json_integer_value(json_object_get(a, "id")); /* checked */
        const json_t *content;
        if ((rc = get_str(c, a, where, "content", &content)) < 0) {
            return rc;
        }
        if (content == NULL || json_string_length(content) == 0) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s.content must be a non-empty string",
                                c->name, where);
        }
        const size_t clen = json_string_length(content);
        if (clen > ENG__TOK_MAX_ADDED_LEN) {
            return kc_error_set(c->err, KC_ERANGE, "%s: %s.content is %zu bytes (max %u)", c->name,
                                where, clen, ENG__TOK_MAX_ADDED_LEN);
        }
        /* The tries cost ~16 bytes per content byte: bound the total. */
        added_bytes += clen;
        if (added_bytes > ENG__TOK_MAX_ADDED_TOTAL) {
            return kc_error_set(c->err, KC_ERANGE, "%s: added_tokens hold more than %zu MiB",
                                c->name, ENG__TOK_MAX_ADDED_TOTAL >> 20);
        }
        if ((rc = get_bool(c, a, where, "special", false, &t->special)) < 0 ||
            (rc = get_bool(c, a, where, "lstrip", false, &t->lstrip)) < 0 ||
            (rc = get_bool(c, a, where, "rstrip", false, &t->rstrip)) < 0 ||
            (rc = get_bool(c, a, where, "single_word", false, &t->single_word)) < 0 ||
            (rc = get_bool(c, a, where, "normalized", !t->special, &t->normalized)) < 0) {
            return rc;
        }
        const char *cs = json_string_value(content);
        const int32_t id = t->id;
        if (tok->id_flags[id] & ENG__TOK_ID_PIECE) {
            const struct eng__tok_str *p = &tok->piece[id];
            if (p->len != clen || memcmp(tok->pool + p->off, cs, clen) != 0) {
                return kc_error_set(c->err, KC_EFORMAT,
                                    "%s: %s: id %d is '%.40s' in the vocabulary but '%.40s' here",
                                    c->name, where, (int)id, tok->pool + p->off, cs);
            }
        } else {
            if ((rc = pool_add(c, cs, clen, &tok->piece[id])) < 0) {
                return rc;
            }
        }
        t->content = tok->piece[id];
        tok->id_flags[id] |= ENG__TOK_ID_PIECE | ENG__TOK_ID_ADDED;
        if (t->special) {
            tok->id_flags[id] |= ENG__TOK_ID_SPECIAL;
        }
        const int32_t other = map_put(tok, &tok->piece_map, id);
        if (other >= 0 && other != id) {
            map_replace(tok, &tok->piece_map, other, id);
        }
        if (t->lstrip || t->rstrip) {
            tok->has_lstrip_rstrip = true;
        }
        if (t->normalized && tok->n_norm > 0) {
            char *norm = NULL;
            size_t nlen = 0;
            rc = eng__tok_normalize(tok, cs, clen, &norm, &nlen, c->err);
            if (rc < 0) {
                kc_error_prefix(c->err, "%s: %s", c->name, where);
                return rc;
            }
            if (nlen > 0) {
                rc = trie_insert(c, &tok->trie_norm, (const uint8_t *)norm, nlen, (int32_t)i);
            }
            free(norm);
            if (rc < 0) {
                return rc;
            }
        } else {
            if ((rc = trie_insert(c, &tok->trie_raw, (const uint8_t *)cs, clen, (int32_t)i)) < 0) {
                return rc;
            }
        }
    }
    tok->n_added = n;
    return 0;
}

/* ---- post-processor ---- */

static int template_ids(struct load_ctx *c, const json_t *pp, const char *where, bool *seen_a,
                        int32_t *prefix, int *n_prefix, int32_t *suffix, int *n_suffix) {
    const json_t *single = json_object_get(pp, "single");
    const json_t *specials = json_object_get(pp, "special_tokens");
    if (!json_is_array(single)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: %s.single must be an array", c->name, where);
    }
    for (size_t i = 0; i < json_array_size(single); i++) {
        const json_t *item = json_array_get(single, i);
        const json_t *sp = json_object_get(item, "SpecialToken");
        const json_t *sq = json_object_get(item, "Sequence");
        if (json_is_object(sq)) {
            const json_t *sid = json_object_get(sq, "id");
            if (!json_is_string(sid) || strcmp(json_string_value(sid), "A") != 0 || *seen_a) {
                return kc_error_set(c->err, KC_EUNSUPPORTED,
                                    "%s: %s.single[%zu]: only one Sequence 'A' is supported",
                                    c->name, where, i);
            }
            *seen_a = true;
            continue;
        }
        if (!json_is_object(sp) || !json_is_string(json_object_get(sp, "id"))) {
            return kc_error_set(c->err, KC_EFORMAT,
                                "%s: %s.single[%zu] must be a SpecialToken or Sequence", c->name,
                                where, i);
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        const json_t *st = json_is_object(specials) ? json_object_get(specials, name) : NULL;
        const json_t *ids = st ? json_object_get(st, "ids") : NULL;
        if (!json_is_array(ids)) {
            return kc_error_set(c->err, KC_EFORMAT,
                                "%s: %s: special token '%.40s' has no ids in special_tokens",
                                c->name, where, name);
        }
        for (size_t k = 0; k < json_array_size(ids); k++) {
            int32_t id;
            int rc = check_id(c, json_array_get(ids, k), where, &id);
            if (rc < 0) {
                return rc;
            }
            if (id >= c->tok->n_ids || !(c->tok->id_flags[id] & ENG__TOK_ID_PIECE)) {
                return kc_error_set(c->err, KC_ERANGE,
                                    "%s: %s: special token '%.40s' id %d is not a token", c->name,
                                    where, name, (int)id);
            }
            int32_t *dst = *seen_a ? suffix : prefix;
            int *nd = *seen_a ? n_suffix : n_prefix;
            if (*nd >= ENG__TOK_MAX_TEMPLATE) {
                return kc_error_set(c->err, KC_ERANGE, "%s: %s: template too long", c->name, where);
            }
            dst[(*nd)++] = id;
        }
    }
    return 0;
}

static int parse_post(struct load_ctx *c, const json_t *pp, const char *where, int depth) {
    struct eng_tok *tok = c->tok;
    const char *type = "";
    int rc = component_open(c, pp, where, depth, "processors", parse_post, &type);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        return 0; /* offsets only */
    }
    if (tok->n_prefix > 0 || tok->n_suffix > 0) {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: %s: more than one post-processor adds tokens", c->name, where);
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        bool seen_a = false;
        rc = template_ids(c, pp, where, &seen_a, tok->prefix, &tok->n_prefix, tok->suffix,
                          &tok->n_suffix);
        if (rc == 0 && !seen_a) {
            rc = kc_error_set(c->err, KC_EFORMAT, "%s: %s.single has no Sequence 'A'", c->name,
                              where);
        }
        return rc;
    }
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        const json_t *cls = json_object_get(pp, "cls");
        const json_t *sep = json_object_get(pp, "sep");
        if (!json_is_array(cls) || json_array_size(cls) != 2 || !json_is_array(sep) ||
            json_array_size(sep) != 2) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s: cls and sep must be [token, id]",
                                c->name, where);
        }
        int32_t a, b;
        if ((rc = check_id(c, json_array_get(cls, 1), where, &a)) < 0 ||
            (rc = check_id(c, json_array_get(sep, 1), where, &b)) < 0) {
            return rc;
        }
        if (a >= tok->n_ids || b >= tok->n_ids) {
            return kc_error_set(c->err, KC_ERANGE, "%s: %s: cls/sep id is not a token", c->name,
                                where);
        }
        tok->prefix[tok->n_prefix++] = a;
        tok->suffix[tok->n_suffix++] = b;
        return 0;
    }
    return kc_error_set(c->err, KC_EUNSUPPORTED,
                        "%s: %s: post-processor type '%s' is not supported", c->name, where, type);
}

/* ---- decoder ---- */

struct dec_plan {
    struct eng__tok_str from[ENG__TOK_MAX_STEPS], to[ENG__TOK_MAX_STEPS];
    int n_replace;
    bool byte_fallback, fuse;
};

static int parse_decoder_step(struct load_ctx *c, const json_t *d, const char *where,
                              struct dec_plan *plan, int stage_in, int *stage_out) {
    struct eng_tok *tok = c->tok;
    const char *type = "";
    int rc = get_type(c, d, where, &type);
    if (rc < 0) {
        return rc;
    }
    /* Stages enforce the order Replace* < ByteFallback < Fuse < Strip. */
    int stage;
    if (strcmp(type, "Replace") == 0) {
        stage = 0;
    } else if (strcmp(type, "ByteFallback") == 0) {
        stage = 1;
    } else if (strcmp(type, "Fuse") == 0) {
        stage = 2;
    } else if (strcmp(type, "Strip") == 0) {
        stage = 3;
    } else {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: %s: decoder type '%s' is not supported in a Sequence", c->name,
                            where, type);
    }
    if (stage < stage_in || (stage == stage_in && stage != 0)) {
        return kc_error_set(c->err, KC_EUNSUPPORTED,
                            "%s: %s: decoder order Replace, ByteFallback, Fuse, Strip is required",
                            c->name, where);
    }
    *stage_out = stage;
    if (stage == 0) {
        const json_t *p = json_object_get(d, "pattern");
        const json_t *s = json_is_object(p) ? json_object_get(p, "String") : NULL;
        const json_t *to;
        if (!json_is_string(s) || json_string_length(s) == 0) {
            return kc_error_set(c->err, KC_EUNSUPPORTED,
                                "%s: %s: only Replace with a non-empty String pattern is supported",
                                c->name, where);
        }
        if ((rc = get_str(c, d, where, "content", &to)) < 0) {
            return rc;
        }
        if (plan->n_replace >= ENG__TOK_MAX_STEPS) {
            return kc_error_set(c->err, KC_ERANGE, "%s: %s: too many Replace steps", c->name,
                                where);
        }
        const int k = plan->n_replace++;
        if ((rc = pool_add(c, json_string_value(s), json_string_length(s), &plan->from[k])) < 0 ||
            (rc = pool_add(c, to ? json_string_value(to) : "", to ? json_string_length(to) : 0,
                           &plan->to[k])) < 0) {
            return rc;
        }
    } else if (stage == 1) {
        plan->byte_fallback = true;
    } else if (stage == 2) {
        plan->fuse = true;
    } else {
        const json_t *content;
        if ((rc = get_str(c, d, where, "content", &content)) < 0) {
            return rc;
        }
        const json_t *start = json_object_get(d, "start");
        const json_t *stop = json_object_get(d, "stop");
        if (content == NULL || !json_is_integer(start) || !json_is_integer(stop)) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: %s: Strip needs content, start and stop",
                                c->name, where);
        }
        const char *cs = json_string_value(content);
        const size_t cl = json_string_length(content);
        if (cl == 0 || eng__utf8_len((uint8_t)cs[0]) != cl) {
            return kc_error_set(c->err, KC_EUNSUPPORTED,
                                "%s: %s: Strip content must be one character", c->name, where);
        }
        if (json_integer_value(stop) != 0 || json_integer_value(start) < 0 ||
            json_integer_value(start) > 64) {
            return kc_error_set(c->err, KC_EUNSUPPORTED,
                                "%s: %s: Strip supports start in [0, 64] and stop 0 (streaming "
                                "cannot strip the end)",
                                c->name, where);
        }
        if (!plan->fuse && json_integer_value(start) > 0) {
            return kc_error_set(c->err, KC_EUNSUPPORTED,
                                "%s: %s: Strip without a Fuse before it is not supported", c->name,
                                where);
        }
        if ((rc = pool_add(c, cs, cl, &tok->strip_char)) < 0) {
            return rc;
        }
        tok->strip_start = (uint32_t)json_integer_value(start);
    }
    return 0;
}

/* Applies the plan's Replace steps to one piece, writing the result into the pool. */
static int replace_piece(struct load_ctx *c, const struct dec_plan *plan, const char *s, size_t len,
                         struct eng__tok_str *out) {
    struct eng_tok *tok = c->tok;
    char *cur = malloc(len + 1), *next = NULL;
    size_t cur_len = len;
    int rc = 0;
    if (cur == NULL) {
        return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
    }
    memcpy(cur, s, len);
    for (int k = 0; k < plan->n_replace; k++) {
        const char *from = tok->pool + plan->from[k].off;
        const size_t fl = plan->from[k].len;
        const char *to = tok->pool + plan->to[k].off;
        const size_t tl = plan->to[k].len;
        /* at most cur_len / fl replacements; chained Replace steps could grow a piece
         * exponentially, so a decoded piece is capped */
        size_t cap = cur_len / fl * (tl > fl ? tl : fl) + cur_len + 1;
        if (cap > 4 * ENG__TOK_MAX_PIECE) {
            rc = kc_error_set(c->err, KC_ERANGE,
                              "%s: decoder: Replace makes piece '%.40s' longer than %u bytes",
                              c->name, s, 4 * ENG__TOK_MAX_PIECE);
            goto out;
        }
        next = malloc(cap);
        if (next == NULL) {
            rc = kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
            goto out;
        }
        size_t o = 0;
        for (size_t i = 0; i < cur_len;) {
            if (cur_len - i >= fl && memcmp(cur + i, from, fl) == 0) {
                memcpy(next + o, to, tl);
                o += tl;
                i += fl;
            } else {
                next[o++] = cur[i++];
            }
        }
        free(cur);
        cur = next;
        next = NULL;
        cur_len = o;
    }
    rc = pool_add(c, cur, cur_len, out);
out:
    free(cur);
    free(next);
    return rc;
}

static bool parse_byte_token(const char *p, size_t len, uint8_t *b) {
    if (len != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') {
        return false;
    }
    int v = 0;
    for (int i = 3; i < 5; i++) {
        const char ch = p[i];
        int d;
        if (ch >= '0' && ch <= '9') {
            d = ch - '0';
        } else if (ch >= 'A' && ch <= 'F') {
            d = ch - 'A' + 10;
        } else if (ch >= 'a' && ch <= 'f') {
            d = ch - 'a' + 10;
        } else {
            return false;
        }
        v = v * 16 + d;
    }
    *b = (uint8_t)v;
    return true;
}

static int parse_decoder(struct load_ctx *c, const json_t *d) {
    struct eng_tok *tok = c->tok;
    struct dec_plan plan;
    int rc;
    memset(&plan, 0, sizeof(plan));
    int16_t cp_to_byte[324];
    byte_level_table(cp_to_byte);

    if (d == NULL || json_is_null(d)) {
        tok->dec_kind = ENG__TOK_DEC_NONE;
    } else {
        const char *type = "";
        if ((rc = get_type(c, d, "decoder", &type)) < 0) {
            return rc;
        }
        if (strcmp(type, "ByteLevel") == 0) {
            tok->dec_kind = ENG__TOK_DEC_BYTELEVEL;
        } else if (strcmp(type, "Sequence") == 0) {
            const json_t *arr = json_object_get(d, "decoders");
            if (!json_is_array(arr)) {
                return kc_error_set(c->err, KC_EFORMAT, "%s: decoder.decoders must be an array",
                                    c->name);
            }
            const json_t *first = json_array_get(arr, 0);
            const json_t *ft = json_is_object(first) ? json_object_get(first, "type") : NULL;
            if (json_array_size(arr) == 1 && json_is_string(ft) &&
                strcmp(json_string_value(ft), "ByteLevel") == 0) {
                tok->dec_kind = ENG__TOK_DEC_BYTELEVEL;
            } else {
                tok->dec_kind = ENG__TOK_DEC_CHAIN;
                int stage = 0;
                for (size_t i = 0; i < json_array_size(arr); i++) {
                    char sub[64];
                    snprintf(sub, sizeof(sub), "decoder.decoders[%zu]", i);
                    if ((rc = parse_decoder_step(c, json_array_get(arr, i), sub, &plan, stage,
                                                 &stage)) < 0) {
                        return rc;
                    }
                }
            }
        } else if (strcmp(type, "Replace") == 0 || strcmp(type, "ByteFallback") == 0 ||
                   strcmp(type, "Fuse") == 0 || strcmp(type, "Strip") == 0) {
            tok->dec_kind = ENG__TOK_DEC_CHAIN;
            int stage = 0;
            if ((rc = parse_decoder_step(c, d, "decoder", &plan, 0, &stage)) < 0) {
                return rc;
            }
        } else {
            return kc_error_set(c->err, KC_EUNSUPPORTED, "%s: decoder type '%s' is not supported",
                                c->name, type);
        }
    }

    uint8_t buf[ENG__TOK_MAX_PIECE];
    for (int32_t id = 0; id < tok->n_ids; id++) {
        const uint8_t f = tok->id_flags[id];
        if (!(f & ENG__TOK_ID_PIECE)) {
            continue;
        }
        const char *p = tok->pool + tok->piece[id].off;
        const size_t len = tok->piece[id].len;
        switch (tok->dec_kind) {
        case ENG__TOK_DEC_NONE:
            tok->dec[id] = tok->piece[id];
            break;
        case ENG__TOK_DEC_BYTELEVEL:
            if (f & ENG__TOK_ID_ADDED) {
                tok->dec[id] = tok->piece[id]; /* added tokens are text (HF's JS decoder) */
            } else {
                const long n = byte_level_unmap(cp_to_byte, p, len, buf);
                tok->id_flags[id] |= ENG__TOK_ID_BYTES;
                if (n < 0) {
                    tok->dec[id] = tok->piece[id]; /* HF's Rust: such a piece is its own bytes */
                } else if ((f & ENG__TOK_ID_MODEL) && tok->byte_level) {
                    tok->dec[id] = tok->mkey[id];
                } else if ((rc = pool_add(c, buf, (size_t)n, &tok->dec[id])) < 0) {
                    return rc;
                }
            }
            break;
        case ENG__TOK_DEC_CHAIN: {
            uint8_t b;
            if (plan.byte_fallback && parse_byte_token(p, len, &b)) {
                tok->id_flags[id] |= ENG__TOK_ID_BYTES;
                if ((rc = pool_add(c, &b, 1, &tok->dec[id])) < 0) {
                    return rc;
                }
            } else if ((rc = replace_piece(c, &plan, p, len, &tok->dec[id])) < 0) {
                return rc;
            }
            break;
        }
        }
        if (tok->dec[id].len > tok->max_dec_len) {
            tok->max_dec_len = tok->dec[id].len;
        }
    }
    return 0;
}

/* ---- tokenizer_config.json ---- */

/* bos_token / eos_token: a string, an AddedToken object {"content": ...}, or null. */
static int config_token(struct load_ctx *c, const char *key, int32_t *out) {
    const json_t *v = json_object_get(c->config, key);
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (json_is_object(v)) {
        v = json_object_get(v, "content");
    }
    if (!json_is_string(v)) {
        return kc_error_set(c->err, KC_EFORMAT,
                            "%s: tokenizer_config.json: %s must be a string or {\"content\": ...}",
                            c->name, key);
    }
    const int32_t id =
        eng__tok_map_get(c->tok, &c->tok->piece_map, json_string_value(v), json_string_length(v));
    if (id < 0) {
        return kc_error_set(c->err, KC_EFORMAT,
                            "%s: tokenizer_config.json: %s '%.60s' is not a token", c->name, key,
                            json_string_value(v));
    }
    *out = id;
    return 0;
}

static int apply_config(struct load_ctx *c) {
    struct eng_tok *tok = c->tok;
    int rc;
    tok->bos_id = tok->n_prefix > 0 ? tok->prefix[0] : -1;
    tok->eos_id = -1;
    if (c->config == NULL) {
        return 0;
    }
    if (!json_is_object(c->config)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: tokenizer_config.json must be an object",
                            c->name);
    }
    int32_t bos = -1, eos = -1;
    if ((rc = config_token(c, "bos_token", &bos)) < 0 ||
        (rc = config_token(c, "eos_token", &eos)) < 0) {
        return rc;
    }
    if (bos >= 0) {
        tok->bos_id = bos;
    }
    tok->eos_id = eos;
    const json_t *ab = json_object_get(c->config, "add_bos_token");
    const json_t *ae = json_object_get(c->config, "add_eos_token");
    /* transformers' Llama tokenizers rebuild the template from these flags. */
    if (json_is_boolean(ab)) {
        if (json_is_true(ab) && bos < 0) {
            return kc_error_set(c->err, KC_EFORMAT,
                                "%s: tokenizer_config.json: add_bos_token without a bos_token",
                                c->name);
        }
        tok->n_prefix = 0;
        if (json_is_true(ab)) {
            tok->prefix[tok->n_prefix++] = bos;
        }
    }
    if (json_is_boolean(ae)) {
        if (json_is_true(ae) && eos < 0) {
            return kc_error_set(c->err, KC_EFORMAT,
                                "%s: tokenizer_config.json: add_eos_token without an eos_token",
                                c->name);
        }
        tok->n_suffix = 0;
        if (json_is_true(ae)) {
            tok->suffix[tok->n_suffix++] = eos;
        }
    }
    const json_t *cu = json_object_get(c->config, "clean_up_tokenization_spaces");
    tok->clean_up = json_is_true(cu);
    const json_t *extra = json_object_get(c->config, "additional_special_tokens");
    for (size_t i = 0; json_is_array(extra) && i < json_array_size(extra); i++) {
        const json_t *e = json_array_get(extra, i);
        if (json_is_object(e)) {
            e = json_object_get(e, "content");
        }
        if (!json_is_string(e)) {
            continue;
        }
        const int32_t id =
            eng__tok_map_get(tok, &tok->piece_map, json_string_value(e), json_string_length(e));
        if (id >= 0) {
            tok->id_flags[id] |= ENG__TOK_ID_SPECIAL;
        }
    }
    return 0;
}

/* ---- load ---- */

static int load_json(struct load_ctx *c, const json_t *root) {
    struct eng_tok *tok = c->tok;
    int rc;
    if (!json_is_object(root)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: the top level must be a JSON object", c->name);
    }
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: 'model' is missing or not an object", c->name);
    }
    json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: model.vocab is missing or not an object",
                            c->name);
    }
    if (merges != NULL && !json_is_array(merges)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: model.merges must be an array", c->name);
    }
    const json_t *added = json_object_get(root, "added_tokens");
    if (added != NULL && !json_is_null(added) && !json_is_array(added)) {
        return kc_error_set(c->err, KC_EFORMAT, "%s: added_tokens must be an array", c->name);
    }
    if ((rc = parse_model_flags(c, model)) < 0) {
        return rc;
    }
    if ((rc = parse_normalizer(c, json_object_get(root, "normalizer"), "normalizer", 0)) < 0 ||
        (rc = parse_pre_tokenizer(c, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", 0)) <
            0) {
        return rc;
    }
    tok->byte_level = tok->n_pre > 0 && tok->pre[tok->n_pre - 1].kind == ENG__TOK_P_BYTELEVEL;

    if ((rc = count_ids(c, vocab, added, &tok->n_ids)) < 0) {
        return rc;
    }
    const size_t n = (size_t)tok->n_ids;
    tok->id_flags = kc_calloc(n, 1);
    tok->piece = kc_calloc(n, sizeof(*tok->piece));
    tok->mkey = kc_calloc(n, sizeof(*tok->mkey));
    tok->dec = kc_calloc(n, sizeof(*tok->dec));
    if (tok->id_flags == NULL || tok->piece == NULL || tok->mkey == NULL || tok->dec == NULL) {
        return kc_error_set(c->err, KC_ENOMEM, "%s: out of memory", c->name);
    }
    if ((rc = load_vocab(c, vocab)) < 0) {
        return rc;
    }
    if (merges != NULL && (rc = load_merges(c, merges)) < 0) {
        return rc;
    }
    if ((rc = load_added(c, added)) < 0) {
        return rc;
    }

    const json_t *unk;
    if ((rc = get_str(c, model, "model", "unk_token", &unk)) < 0) {
        return rc;
    }
    tok->unk_id = -1;
    if (unk != NULL) {
        tok->unk_id =
            eng__tok_map_get(tok, &tok->piece_map, json_string_value(unk), json_string_length(unk));
        if (tok->unk_id < 0) {
            return kc_error_set(c->err, KC_EFORMAT, "%s: model.unk_token '%.60s' is not a token",
                                c->name, json_string_value(unk));
        }
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        tok->byte_fallback_id[b] = eng__tok_map_get(tok, &tok->model_map, name, 6);
        const char ch = (char)b;
        tok->byte_sym[b] = tok->byte_level ? eng__tok_map_get(tok, &tok->model_map, &ch, 1) : -1;
    }
    tok->split_at_metaspace = !tok->byte_level && !tok->ignore_merges;
    for (int32_t id = 0; tok->split_at_metaspace && id < tok->n_ids; id++) {
        if (!(tok->id_flags[id] & ENG__TOK_ID_MODEL)) {
            continue;
        }
        const char *p = tok->pool + tok->mkey[id].off;
        const size_t len = tok->mkey[id].len;
        for (size_t i = 1; i + 3 <= len; i++) {
            if (memcmp(p + i, "\xE2\x96\x81", 3) == 0 &&
                (i < 3 || memcmp(p + i - 3, "\xE2\x96\x81", 3) != 0)) {
                tok->split_at_metaspace = false;
                break;
            }
        }
    }
    if ((rc = parse_post(c, json_object_get(root, "post_processor"), "post_processor", 0)) < 0) {
        return rc;
    }
    if ((rc = apply_config(c)) < 0) {
        return rc;
    }
    return parse_decoder(c, json_object_get(root, "decoder"));
}

void eng_tok_free(struct eng_tok *tok) {
    if (tok == NULL) {
        return;
    }
    for (int i = 0; i < tok->n_norm; i++) {
        pcre2_code_free(tok->norm[i].re);
    }
    for (int i = 0; i < tok->n_pre; i++) {
        pcre2_code_free(tok->pre[i].re);
    }
    free(tok->id_flags);
    free(tok->piece);
    free(tok->mkey);
    free(tok->dec);
    free(tok->pool);
    free(tok->model_map.slots);
    free(tok->piece_map.slots);
    free(tok->merges.slots);
    free(tok->added);
    free(tok->trie_raw.nodes);
    free(tok->trie_norm.nodes);
    free(tok);
}

static int parse_json_text(const char *name, const char *text, size_t len, size_t flags,
                           json_t **out, struct kc_error *err) {
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | flags, &je);
    if (root == NULL) {
        return kc_error_set(err, KC_EFORMAT, "%s: invalid JSON at line %d column %d: %s", name,
                            je.line, je.column, je.text);
    }
    *out = root;
    return 0;
}

int eng_tok_load_buffer(const char *name, const char *json, size_t len, const char *config_json,
                        size_t config_len, struct eng_tok **out, struct kc_error *err) {
    json_t *root = NULL, *config = NULL;
    struct eng_tok *tok = NULL;
    int rc;
    if (len > ENG__TOK_MAX_FILE) {
        rc = kc_error_set(err, KC_ERANGE, "%s: %zu bytes is larger than the %zu MiB limit", name,
                          len, ENG__TOK_MAX_FILE >> 20);
        goto fail;
    }
    /* jansson spends ~50-100 bytes per value: bound the values before parsing so a hostile
     * file of tiny values cannot take gigabytes (real files: Qwen3's 11 MB has ~0.8 M). */
    size_t values = 0;
    for (size_t i = 0; i < len; i++) {
        const char ch = json[i];
        values += ch == ',' || ch == '[' || ch == '{' || ch == ':';
    }
    if (values > ENG__TOK_MAX_JSON_VALUES) {
        rc = kc_error_set(err, KC_ERANGE, "%s: more than %d JSON values (%zu separators)", name,
                          ENG__TOK_MAX_JSON_VALUES, values);
        goto fail;
    }
    if ((rc = parse_json_text(name, json, len, 0, &root, err)) < 0) {
        goto fail;
    }
    if (config_json != NULL) {
        char cname[300];
        snprintf(cname, sizeof(cname), "%s (tokenizer_config.json)", name);
        /* model_max_length is often 1e30 written as an integer; only booleans and strings
         * are read from this file, so numbers may as well be reals. */
        if ((rc = parse_json_text(cname, config_json, config_len, JSON_DECODE_INT_AS_REAL, &config,
                                  err)) < 0) {
            goto fail;
        }
    }
    tok = kc_calloc(1, sizeof(*tok));
    if (tok == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    struct load_ctx c = {.name = name, .err = err, .tok = tok, .config = config};
    if ((rc = load_json(&c, root)) < 0) {
        goto fail;
    }
    json_decref(root);
    json_decref(config);
    *out = tok;
    return 0;
fail:
    json_decref(root);
    json_decref(config);
    eng_tok_free(tok);
    return rc;
}

int eng_tok_load(const char *path, struct eng_tok **out, struct kc_error *err) {
    char json_path[4096], config_path[4096];
    char *text = NULL, *config = NULL;
    size_t len = 0, config_len = 0;
    int rc;
    struct stat st;
    if (path == NULL || *path == '\0') {
        return kc_error_set(err, KC_EINVAL, "tokenizer path is empty");
    }
    if (stat(path, &st) != 0) {
        return kc_error_set(err, KC_ENOTFOUND, "%s: no such file or directory", path);
    }
    if (S_ISDIR(st.st_mode)) {
        if ((rc = kc_path_join(json_path, sizeof(json_path), path, "tokenizer.json")) < 0 ||
            (rc = kc_path_join(config_path, sizeof(config_path), path, "tokenizer_config.json")) <
                0) {
            return kc_error_set(err, rc, "%s: path too long", path);
        }
    } else {
        const size_t pl = strlen(path);
        if (pl >= sizeof(json_path)) {
            return kc_error_set(err, KC_ERANGE, "%s: path too long", path);
        }
        memcpy(json_path, path, pl + 1);
        const char *slash = strrchr(path, '/');
        char dir[4096];
        if (slash == NULL) {
            strcpy(dir, ".");
        } else {
            const size_t dl = (size_t)(slash - path);
            memcpy(dir, path, dl);
            dir[dl] = '\0';
            if (dl == 0) {
                strcpy(dir, "/");
            }
        }
        if ((rc = kc_path_join(config_path, sizeof(config_path), dir, "tokenizer_config.json")) <
            0) {
            return kc_error_set(err, rc, "%s: path too long", path);
        }
    }
    if ((rc = kc_file_read(json_path, ENG__TOK_MAX_FILE, &text, &len, err)) < 0) {
        goto out;
    }
    if (stat(config_path, &st) == 0 &&
        (rc = kc_file_read(config_path, ENG__TOK_MAX_CONFIG, &config, &config_len, err)) < 0) {
        goto out;
    }
    rc = eng_tok_load_buffer(json_path, text, len, config, config_len, out, err);
out:
    free(text);
    free(config);
    return rc;
}

/* ---- accessors ---- */

int32_t eng_tok_vocab_size(const struct eng_tok *tok) {
    return tok->n_ids;
}

int32_t eng_tok_bos(const struct eng_tok *tok) {
    return tok->bos_id;
}

int32_t eng_tok_eos(const struct eng_tok *tok) {
    return tok->eos_id;
}

int eng_tok_check_vocab(const struct eng_tok *tok, int32_t model_vocab, struct kc_error *err) {
    const struct {
        const char *what;
        int32_t id;
    } special[2] = {{"bos_token", tok->bos_id}, {"eos_token", tok->eos_id}};
    for (int i = 0; i < 2; i++) {
        if (special[i].id >= model_vocab) {
            return kc_error_set(err, KC_ERANGE,
                                "%s is id %d, outside the model's vocabulary of %d tokens",
                                special[i].what, (int)special[i].id, (int)model_vocab);
        }
    }
    if (tok->n_ids <= model_vocab) {
        return KC_OK; /* a model may pad its vocabulary beyond the tokenizer's ids */
    }
    /* Name the first id the model cannot embed (holes have no piece and never occur). */
    for (int32_t id = model_vocab; id < tok->n_ids; id++) {
        const char *piece = NULL;
        size_t len = 0;
        if (eng_tok_id_to_piece(tok, id, &piece, &len) == KC_OK) {
            return kc_error_set(err, KC_ERANGE,
                                "the tokenizer has %d ids but the model's vocab_size is %d: "
                                "token %d ('%.*s') and above cannot be embedded",
                                (int)tok->n_ids, (int)model_vocab, (int)id,
                                (int)(len < 32 ? len : 32), piece);
        }
    }
    return KC_OK;
}

bool eng_tok_clean_up_default(const struct eng_tok *tok) {
    return tok->clean_up;
}

bool eng_tok_is_special(const struct eng_tok *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && (tok->id_flags[id] & ENG__TOK_ID_SPECIAL);
}

int32_t eng_tok_piece_to_id(const struct eng_tok *tok, const char *piece, size_t len) {
    return eng__tok_map_get(tok, &tok->piece_map, piece, len);
}

int eng_tok_id_to_piece(const struct eng_tok *tok, int32_t id, const char **piece, size_t *len) {
    if (id < 0 || id >= tok->n_ids || !(tok->id_flags[id] & ENG__TOK_ID_PIECE)) {
        return KC_ERANGE;
    }
    *piece = tok->pool + tok->piece[id].off;
    *len = tok->piece[id].len;
    return 0;
}

void eng_tok_pcre2_version(char *out, size_t cap) {
    char v[64] = "unknown";
    if (pcre2_config(PCRE2_CONFIG_VERSION, v) < 0) {
        snprintf(v, sizeof(v), "unknown");
    }
    snprintf(out, cap, "%s", v);
}
