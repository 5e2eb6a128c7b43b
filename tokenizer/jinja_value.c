/*
 * jinja_value.c — the Jinja engine's memory pool and values: strings (UTF-8 helpers), lists,
 * dicts, Python's truthiness, ==, ordering, str(), repr() and json.dumps().
 *
 * Place in the data flow: used by the parser (constants) and the renderer (everything it
 * computes). See jinja_internal.h for the DESIGN invariants.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja_internal.h"

/* ---- pool ----------------------------------------------------------------------------- */

struct jj_block {
    struct jj_block *prev, *next;
    size_t size;
    max_align_t align[]; /* the caller's bytes follow */
};

void jj_pool_init(struct jj_pool *p, size_t cap) {
    p->head = NULL;
    p->used = 0;
    p->cap = cap;
}

void jj_pool_free(struct jj_pool *p) {
    struct jj_block *b = p->head;
    while (b) {
        struct jj_block *next = b->next;
        free(b);
        b = next;
    }
    p->head = NULL;
    p->used = 0;
}

void *jj_alloc(struct jj_pool *p, size_t n) {
    if (n > p->cap || p->used > p->cap - n) {
        return NULL;
    }
    struct jj_block *b = calloc(1, sizeof(*b) + n);
    if (!b) {
        return NULL;
    }
    b->size = n;
    b->next = p->head;
    if (p->head) {
        p->head->prev = b;
    }
    p->head = b;
    p->used += n;
    return b->align;
}

static struct jj_block *block_of(void *ptr) {
    return (struct jj_block *)((char *)ptr - offsetof(struct jj_block, align));
}

void *jj_realloc(struct jj_pool *p, void *ptr, size_t n) {
    if (!ptr) {
        return jj_alloc(p, n);
    }
    struct jj_block *b = block_of(ptr);
    size_t old = b->size;
    if (n > old && (n - old > p->cap || p->used > p->cap - (n - old))) {
        return NULL;
    }
    struct jj_block *prev = b->prev, *next = b->next;
    struct jj_block *nb = realloc(b, sizeof(*nb) + n);
    if (!nb) {
        return NULL;
    }
    if (n > old) {
        memset((char *)nb->align + old, 0, n - old);
    }
    p->used = p->used - old + n;
    nb->size = n;
    if (prev) {
        prev->next = nb;
    } else {
        p->head = nb;
    }
    if (next) {
        next->prev = nb;
    }
    return nb->align;
}

void jj_free(struct jj_pool *p, void *ptr) {
    if (!ptr) {
        return;
    }
    struct jj_block *b = block_of(ptr);
    if (b->prev) {
        b->prev->next = b->next;
    } else {
        p->head = b->next;
    }
    if (b->next) {
        b->next->prev = b->prev;
    }
    p->used -= b->size;
    free(b);
}

/* ---- strings and buffers --------------------------------------------------------------- */

struct jj_str *jj_str_new(struct jj_pool *p, const char *s, size_t len) {
    if (len > SIZE_MAX / 2) {
        return NULL;
    }
    struct jj_str *r = jj_alloc(p, sizeof(*r) + len + 1);
    if (!r) {
        return NULL;
    }
    r->len = len;
    if (len) {
        memcpy(r->s, s, len);
    }
    r->s[len] = 0;
    return r;
}

void jj_buf_init(struct jj_buf *b, struct jj_pool *p, size_t max) {
    memset(b, 0, sizeof(*b));
    b->pool = p;
    b->max = max;
}

bool jj_buf_add(struct jj_buf *b, const char *s, size_t n) {
    if (b->over || b->oom) {
        return false;
    }
    if (b->max && (n > b->max || b->len > b->max - n)) {
        b->over = true;
        return false;
    }
    if (n > SIZE_MAX / 4 || b->len + n + 1 > SIZE_MAX / 4) {
        b->oom = true;
        return false;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *np = jj_realloc(b->pool, b->p, cap);
        if (!np) {
            b->oom = true;
            return false;
        }
        b->p = np;
        b->cap = cap;
    }
    if (n) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = 0;
    return true;
}

bool jj_buf_addc(struct jj_buf *b, char c) {
    return jj_buf_add(b, &c, 1);
}

bool jj_buf_addf(struct jj_buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return false;
    }
    return jj_buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

struct jj_str *jj_buf_str(struct jj_buf *b) {
    if (b->oom || b->over) {
        return NULL;
    }
    struct jj_str *s = jj_str_new(b->pool, b->p ? b->p : "", b->len);
    jj_free(b->pool, b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    if (!s) {
        b->oom = true;
    }
    return s;
}

/* ---- UTF-8 ---------------------------------------------------------------------------- */

uint32_t jj_utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    size_t k = *i;
    unsigned c = u[k];
    int extra;
    uint32_t cp;
    if (c < 0x80) {
        *i = k + 1;
        return c;
    } else if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
        extra = 1;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        extra = 2;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
        extra = 3;
        cp = c & 0x07;
    } else {
        *i = k + 1;
        return c; /* invalid lead byte: itself */
    }
    if ((size_t)extra >= n - k) {
        *i = k + 1;
        return c;
    }
    for (int j = 1; j <= extra; j++) {
        if ((u[k + j] & 0xC0) != 0x80) {
            *i = k + 1;
            return c;
        }
        cp = (cp << 6) | (u[k + j] & 0x3F);
    }
    *i = k + 1 + (size_t)extra;
    return cp;
}

size_t jj_utf8_len(const char *s, size_t n) {
    size_t i = 0, count = 0;
    while (i < n) {
        jj_utf8_next(s, n, &i);
        count++;
    }
    return count;
}

size_t jj_utf8_offset(const char *s, size_t n, size_t cp) {
    size_t i = 0;
    while (cp > 0 && i < n) {
        jj_utf8_next(s, n, &i);
        cp--;
    }
    return i;
}

size_t jj_utf8_put(char *out, uint32_t cp) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    } else if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | ((cp >> 18) & 0x07));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool jj_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Simple case mapping for ASCII, Latin-1, Greek and Cyrillic (documented in jinja.h). */
uint32_t jj_to_upper(uint32_t c) {
    if (c >= 'a' && c <= 'z') {
        return c - 32;
    }
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) {
        return c - 32;
    }
    if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) {
        return c - 32;
    }
    if (c >= 0x430 && c <= 0x44F) {
        return c - 32;
    }
    if (c >= 0x450 && c <= 0x45F) {
        return c - 80;
    }
    return c;
}

uint32_t jj_to_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') {
        return c + 32;
    }
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) {
        return c + 32;
    }
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) {
        return c + 32;
    }
    if (c >= 0x410 && c <= 0x42F) {
        return c + 32;
    }
    if (c >= 0x400 && c <= 0x40F) {
        return c + 80;
    }
    return c;
}

bool jj_is_alpha(uint32_t c) {
    return jj_to_upper(c) != c || jj_to_lower(c) != c || c == 0xDF || c == 0xFF ||
           (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3040 && c <= 0x30FF) ||
           (c >= 0xAC00 && c <= 0xD7A3);
}

/* ---- lists and dicts ------------------------------------------------------------------ */

struct jj_list *jj_list_new(struct jj_pool *p, size_t cap) {
    struct jj_list *l = jj_alloc(p, sizeof(*l));
    if (!l) {
        return NULL;
    }
    if (cap) {
        size_t bytes;
        if (!kc_size_mul(cap, sizeof(struct jj_val), &bytes) || !(l->v = jj_alloc(p, bytes))) {
            return NULL;
        }
        l->cap = cap;
    }
    return l;
}

bool jj_list_push(struct jj_pool *p, struct jj_list *l, struct jj_val v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4, bytes;
        if (!kc_size_mul(cap, sizeof(struct jj_val), &bytes)) {
            return false;
        }
        struct jj_val *nv = jj_realloc(p, l->v, bytes);
        if (!nv) {
            return false;
        }
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return true;
}

struct jj_dict *jj_dict_new(struct jj_pool *p) {
    return jj_alloc(p, sizeof(struct jj_dict));
}

bool jj_hashable(struct jj_val k) {
    switch (k.t) {
    case JJ_UNDEF: /* jinja2's Undefined defines __hash__ */
    case JJ_NONE:
    case JJ_BOOL:
    case JJ_INT:
    case JJ_FLOAT:
    case JJ_STR:
        return true;
    case JJ_TUPLE:
        for (size_t i = 0; i < k.u.l->n; i++) {
            if (!jj_hashable(k.u.l->v[i])) {
                return false;
            }
        }
        return true;
    default:
        return false;
    }
}

static uint64_t hash_val(struct jj_val k, int depth) {
    switch (k.t) {
    case JJ_BOOL:
        return (uint64_t)k.u.b * 0x9E3779B97F4A7C15ull;
    case JJ_INT:
        return (uint64_t)k.u.i * 0x9E3779B97F4A7C15ull;
    case JJ_FLOAT:
        if (k.u.f == floor(k.u.f) && fabs(k.u.f) < 9e18) {
            return (uint64_t)(int64_t)k.u.f * 0x9E3779B97F4A7C15ull;
        }
        return 7;
    case JJ_STR: {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < k.u.s->len; i++) {
            h = (h ^ (unsigned char)k.u.s->s[i]) * 1099511628211ull;
        }
        return h;
    }
    case JJ_TUPLE: {
        uint64_t h = 99;
        if (depth > 8) {
            return h;
        }
        for (size_t i = 0; i < k.u.l->n; i++) {
            h = h * 31 + hash_val(k.u.l->v[i], depth + 1);
        }
        return h;
    }
    default:
        return 3;
    }
}

static bool dict_reindex(struct jj_pool *p, struct jj_dict *d, size_t htcap) {
    uint32_t *ht = jj_alloc(p, htcap * sizeof(uint32_t));
    if (!ht) {
        return false;
    }
    for (size_t i = 0; i < d->n; i++) {
        size_t h = (size_t)hash_val(d->k[i], 0) & (htcap - 1);
        while (ht[h]) {
            h = (h + 1) & (htcap - 1);
        }
        ht[h] = (uint32_t)(i + 1);
    }
    jj_free(p, d->ht);
    d->ht = ht;
    d->htcap = htcap;
    return true;
}

static struct jj_val *dict_find(const struct jj_dict *d, struct jj_val k, uint64_t h) {
    if (d->ht) {
        size_t i = (size_t)h & (d->htcap - 1);
        while (d->ht[i]) {
            size_t e = d->ht[i] - 1;
            if (jj_equal(d->k[e], k)) {
                return &d->v[e];
            }
            i = (i + 1) & (d->htcap - 1);
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (jj_equal(d->k[i], k)) {
            return &d->v[i];
        }
    }
    return NULL;
}

struct jj_val *jj_dict_get(const struct jj_dict *d, struct jj_val k) {
    if (!jj_hashable(k)) {
        return NULL;
    }
    return dict_find(d, k, hash_val(k, 0));
}

struct jj_val *jj_dict_get_str(const struct jj_dict *d, const char *key, size_t len) {
    /* A stack string header would need a flexible array; compare directly instead. */
    if (d->ht) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < len; i++) {
            h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
        }
        size_t i = (size_t)h & (d->htcap - 1);
        while (d->ht[i]) {
            size_t e = d->ht[i] - 1;
            if (d->k[e].t == JJ_STR && d->k[e].u.s->len == len &&
                memcmp(d->k[e].u.s->s, key, len) == 0) {
                return &d->v[e];
            }
            i = (i + 1) & (d->htcap - 1);
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (d->k[i].t == JJ_STR && d->k[i].u.s->len == len &&
            memcmp(d->k[i].u.s->s, key, len) == 0) {
            return &d->v[i];
        }
    }
    return NULL;
}

int jj_dict_set(struct jj_pool *p, struct jj_dict *d, struct jj_val k, struct jj_val v) {
    if (!jj_hashable(k)) {
        return KC_EINVAL;
    }
    uint64_t h = hash_val(k, 0);
    struct jj_val *have = dict_find(d, k, h);
    if (have) {
        *have = v;
        return 0;
    }
    if (d->n >= UINT32_MAX - 1) {
        return KC_ENOMEM;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4, bytes;
        if (!kc_size_mul(cap, sizeof(struct jj_val), &bytes)) {
            return KC_ENOMEM;
        }
        struct jj_val *nk = jj_realloc(p, d->k, bytes);
        if (!nk) {
            return KC_ENOMEM;
        }
        d->k = nk;
        struct jj_val *nv = jj_realloc(p, d->v, bytes);
        if (!nv) {
            return KC_ENOMEM;
        }
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    if (d->n > 8) {
        if (!d->ht || d->n * 2 > d->htcap) {
            size_t htcap = 32;
            while (htcap < d->n * 4) {
                htcap *= 2;
            }
            if (!dict_reindex(p, d, htcap)) {
                return KC_ENOMEM;
            }
        } else {
            size_t i = (size_t)h & (d->htcap - 1);
            while (d->ht[i]) {
                i = (i + 1) & (d->htcap - 1);
            }
            d->ht[i] = (uint32_t)d->n;
        }
    }
    return 0;
}

/* ---- truthiness, equality, ordering ---------------------------------------------------- */

bool jj_truthy(struct jj_val v) {
    switch (v.t) {
    case JJ_UNDEF:
    case JJ_NONE:
        return false;
    case JJ_BOOL:
        return v.u.b;
    case JJ_INT:
        return v.u.i != 0;
    case JJ_FLOAT:
        return v.u.f != 0.0;
    case JJ_STR:
        return v.u.s->len != 0;
    case JJ_LIST:
    case JJ_TUPLE:
        return v.u.l->n != 0;
    case JJ_DICT:
        return v.u.d->n != 0;
    default:
        return true;
    }
}

static bool is_num(struct jj_val v) {
    return v.t == JJ_BOOL || v.t == JJ_INT || v.t == JJ_FLOAT;
}

static int num_cmp(struct jj_val a, struct jj_val b) {
    if (a.t == JJ_FLOAT || b.t == JJ_FLOAT) {
        double x = a.t == JJ_FLOAT ? a.u.f : (double)(a.t == JJ_BOOL ? a.u.b : a.u.i);
        double y = b.t == JJ_FLOAT ? b.u.f : (double)(b.t == JJ_BOOL ? b.u.b : b.u.i);
        if (x < y) {
            return -1;
        }
        if (x > y) {
            return 1;
        }
        return x == y ? 0 : 2; /* 2: unordered (NaN) */
    }
    int64_t x = a.t == JJ_BOOL ? a.u.b : a.u.i;
    int64_t y = b.t == JJ_BOOL ? b.u.b : b.u.i;
    return x < y ? -1 : x > y;
}

static bool equal_depth(struct jj_val a, struct jj_val b, int depth) {
    if (depth > JJ_MAX_VALUE_DEPTH) {
        return false;
    }
    if (is_num(a) && is_num(b)) {
        return num_cmp(a, b) == 0;
    }
    if (a.t != b.t) {
        return false;
    }
    switch (a.t) {
    case JJ_UNDEF:
    case JJ_NONE:
        return true;
    case JJ_STR:
        return a.u.s->len == b.u.s->len && memcmp(a.u.s->s, b.u.s->s, a.u.s->len) == 0;
    case JJ_LIST:
    case JJ_TUPLE:
        if (a.u.l == b.u.l) {
            return true;
        }
        if (a.u.l->n != b.u.l->n) {
            return false;
        }
        for (size_t i = 0; i < a.u.l->n; i++) {
            if (!equal_depth(a.u.l->v[i], b.u.l->v[i], depth + 1)) {
                return false;
            }
        }
        return true;
    case JJ_DICT:
        if (a.u.d == b.u.d) {
            return true;
        }
        if (a.u.d->n != b.u.d->n) {
            return false;
        }
        for (size_t i = 0; i < a.u.d->n; i++) {
            struct jj_val *o = jj_dict_get(b.u.d, a.u.d->k[i]);
            if (!o || !equal_depth(a.u.d->v[i], *o, depth + 1)) {
                return false;
            }
        }
        return true;
    case JJ_NS:
        return a.u.d == b.u.d;
    case JJ_MACRO:
        return a.u.mac == b.u.mac;
    case JJ_FUNC:
        return a.u.i == b.u.i;
    case JJ_METHOD:
        return a.u.m == b.u.m;
    case JJ_LOOP:
        return a.u.loop == b.u.loop;
    default:
        return false;
    }
}

bool jj_equal(struct jj_val a, struct jj_val b) {
    return equal_depth(a, b, 0);
}

static int compare_depth(struct jj_val a, struct jj_val b, int *cmp, int depth) {
    if (depth > JJ_MAX_VALUE_DEPTH) {
        return KC_ERANGE;
    }
    if (is_num(a) && is_num(b)) {
        int c = num_cmp(a, b);
        *cmp = c == 2 ? 0 : c;
        return 0;
    }
    if (a.t == JJ_STR && b.t == JJ_STR) {
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int c = memcmp(a.u.s->s, b.u.s->s, n);
        if (c == 0) {
            c = a.u.s->len < b.u.s->len ? -1 : a.u.s->len > b.u.s->len;
        }
        *cmp = c < 0 ? -1 : c > 0;
        return 0;
    }
    if ((a.t == JJ_LIST && b.t == JJ_LIST) || (a.t == JJ_TUPLE && b.t == JJ_TUPLE)) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (equal_depth(a.u.l->v[i], b.u.l->v[i], depth + 1)) {
                continue;
            }
            return compare_depth(a.u.l->v[i], b.u.l->v[i], cmp, depth + 1);
        }
        *cmp = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
        return 0;
    }
    return KC_EINVAL;
}

int jj_compare(struct jj_val a, struct jj_val b, int *cmp) {
    return compare_depth(a, b, cmp, 0);
}

const char *jj_type_name(struct jj_val v) {
    switch (v.t) {
    case JJ_UNDEF:
        return "Undefined";
    case JJ_NONE:
        return "NoneType";
    case JJ_BOOL:
        return "bool";
    case JJ_INT:
        return "int";
    case JJ_FLOAT:
        return "float";
    case JJ_STR:
        return "str";
    case JJ_LIST:
        return "list";
    case JJ_TUPLE:
        return "tuple";
    case JJ_DICT:
        return "dict";
    case JJ_NS:
        return "Namespace";
    case JJ_MACRO:
        return "Macro";
    case JJ_FUNC:
        return "function";
    case JJ_METHOD:
        return "builtin_function_or_method";
    case JJ_LOOP:
        return "LoopContext";
    }
    return "object";
}

/* ---- printing ------------------------------------------------------------------------- */

void jj_float_repr(char out[40], double f) {
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0) {
        strcpy(out, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest digits that round-trip, as Python's repr (David Gay's "shortest" mode). */
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) {
            break;
        }
    }
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[32];
    int nd = 0;
    const char *p = tmp;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    while (*p && *p != 'e') {
        if (*p >= '0' && *p <= '9') {
            digits[nd++] = *p;
        }
        p++;
    }
    int exp10 = atoi(p + 1); /* value = 0.d1d2... * 10^(exp10+1) */
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    digits[nd] = 0;
    int decpt = exp10 + 1; /* position of the decimal point after digit decpt */
    char *o = out;
    if (neg) {
        *o++ = '-';
    }
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -decpt; i++) {
                *o++ = '0';
            }
            memcpy(o, digits, (size_t)nd);
            o += nd;
        } else if (decpt >= nd) {
            memcpy(o, digits, (size_t)nd);
            o += nd;
            for (int i = nd; i < decpt; i++) {
                *o++ = '0';
            }
            *o++ = '.';
            *o++ = '0';
        } else {
            memcpy(o, digits, (size_t)decpt);
            o += decpt;
            *o++ = '.';
            memcpy(o, digits + decpt, (size_t)(nd - decpt));
            o += nd - decpt;
        }
        *o = 0;
        return;
    }
    *o++ = digits[0];
    if (nd > 1) {
        *o++ = '.';
        memcpy(o, digits + 1, (size_t)(nd - 1));
        o += nd - 1;
    }
    int e = decpt - 1;
    sprintf(o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
}

/* Whether Python's str.isprintable() holds for cp (approximate: controls, separators other than
 * the space, format characters, private use and non-characters are not). */
static bool py_printable(uint32_t c) {
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && c <= 0xA0) || c == 0xAD) {
        return false;
    }
    if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
        (c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF ||
        (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xD800 && c <= 0xF8FF) || c == 0xFFFE ||
        c == 0xFFFF || c >= 0xE0000 || c == 0x61C || c == 0x180E) {
        return false;
    }
    return true;
}

static bool str_repr(struct jj_buf *b, const struct jj_str *s) {
    bool has_sq = memchr(s->s, '\'', s->len) != NULL;
    bool has_dq = memchr(s->s, '"', s->len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    jj_buf_addc(b, q);
    size_t i = 0;
    while (i < s->len) {
        size_t start = i;
        uint32_t c = jj_utf8_next(s->s, s->len, &i);
        if (c == (uint32_t)q || c == '\\') {
            jj_buf_addc(b, '\\');
            jj_buf_addc(b, (char)c);
        } else if (c == '\n') {
            jj_buf_add(b, "\\n", 2);
        } else if (c == '\r') {
            jj_buf_add(b, "\\r", 2);
        } else if (c == '\t') {
            jj_buf_add(b, "\\t", 2);
        } else if (!py_printable(c)) {
            if (c < 0x100) {
                jj_buf_addf(b, "\\x%02x", c);
            } else if (c < 0x10000) {
                jj_buf_addf(b, "\\u%04x", c);
            } else {
                jj_buf_addf(b, "\\U%08x", c);
            }
        } else {
            jj_buf_add(b, s->s + start, i - start);
        }
    }
    return jj_buf_addc(b, q);
}

static bool seq_repr(struct jj_buf *b, struct jj_val v, int depth) {
    bool tuple = v.t == JJ_TUPLE;
    jj_buf_addc(b, tuple ? '(' : '[');
    for (size_t i = 0; i < v.u.l->n; i++) {
        if (i) {
            jj_buf_add(b, ", ", 2);
        }
        if (!jj_val_repr(b, v.u.l->v[i], depth + 1)) {
            return false;
        }
    }
    if (tuple && v.u.l->n == 1) {
        jj_buf_addc(b, ',');
    }
    return jj_buf_addc(b, tuple ? ')' : ']');
}

static bool dict_repr(struct jj_buf *b, const struct jj_dict *d, int depth) {
    jj_buf_addc(b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) {
            jj_buf_add(b, ", ", 2);
        }
        if (!jj_val_repr(b, d->k[i], depth + 1)) {
            return false;
        }
        jj_buf_add(b, ": ", 2);
        if (!jj_val_repr(b, d->v[i], depth + 1)) {
            return false;
        }
    }
    return jj_buf_addc(b, '}');
}

bool jj_val_repr(struct jj_buf *b, struct jj_val v, int depth) {
    if (depth > JJ_MAX_VALUE_DEPTH) {
        b->over = true;
        return false;
    }
    char tmp[48];
    switch (v.t) {
    case JJ_UNDEF:
        return jj_buf_add(b, "Undefined", 9);
    case JJ_NONE:
        return jj_buf_add(b, "None", 4);
    case JJ_BOOL:
        return v.u.b ? jj_buf_add(b, "True", 4) : jj_buf_add(b, "False", 5);
    case JJ_INT:
        return jj_buf_addf(b, "%lld", (long long)v.u.i);
    case JJ_FLOAT:
        jj_float_repr(tmp, v.u.f);
        return jj_buf_add(b, tmp, strlen(tmp));
    case JJ_STR:
        return str_repr(b, v.u.s);
    case JJ_LIST:
    case JJ_TUPLE:
        return seq_repr(b, v, depth);
    case JJ_DICT:
        return dict_repr(b, v.u.d, depth);
    case JJ_NS:
        jj_buf_add(b, "<Namespace ", 11);
        if (!dict_repr(b, v.u.d, depth)) {
            return false;
        }
        return jj_buf_addc(b, '>');
    case JJ_MACRO:
        return jj_buf_add(b, "<Macro>", 7);
    case JJ_FUNC:
    case JJ_METHOD:
        return jj_buf_add(b, "<built-in function>", 19);
    case JJ_LOOP:
        return jj_buf_add(b, "<LoopContext>", 13);
    }
    return false;
}

bool jj_val_str(struct jj_buf *b, struct jj_val v, int depth) {
    switch (v.t) {
    case JJ_UNDEF:
        return true;
    case JJ_STR:
        return jj_buf_add(b, v.u.s->s, v.u.s->len);
    default:
        return jj_val_repr(b, v, depth);
    }
}

/* ---- json.dumps ----------------------------------------------------------------------- */

static void json_str(struct jj_buf *b, const char *s, size_t n, bool ascii) {
    jj_buf_addc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            i++;
            switch (c) {
            case '"':
                jj_buf_add(b, "\\\"", 2);
                break;
            case '\\':
                jj_buf_add(b, "\\\\", 2);
                break;
            case '\n':
                jj_buf_add(b, "\\n", 2);
                break;
            case '\r':
                jj_buf_add(b, "\\r", 2);
                break;
            case '\t':
                jj_buf_add(b, "\\t", 2);
                break;
            case '\b':
                jj_buf_add(b, "\\b", 2);
                break;
            case '\f':
                jj_buf_add(b, "\\f", 2);
                break;
            default:
                if (c < 0x20 || (ascii && c == 0x7F)) {
                    jj_buf_addf(b, "\\u%04x", c);
                } else {
                    jj_buf_addc(b, (char)c);
                }
            }
            continue;
        }
        uint32_t cp = jj_utf8_next(s, n, &i);
        if (!ascii) {
            jj_buf_add(b, s + start, i - start);
        } else if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            jj_buf_addf(b, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
        } else {
            jj_buf_addf(b, "\\u%04x", cp);
        }
    }
    jj_buf_addc(b, '"');
}

static void json_newline(struct jj_buf *b, const struct jj_json_opts *o, int level) {
    jj_buf_addc(b, '\n');
    for (int i = 0; i < level; i++) {
        jj_buf_add(b, o->indent, o->indent_len);
    }
}

/* The JSON text of a dict key, as json.dumps converts keys (str as is, others to strings). */
static int json_key(struct jj_buf *b, struct jj_val k, bool ascii, const char **what) {
    char tmp[48];
    switch (k.t) {
    case JJ_STR:
        json_str(b, k.u.s->s, k.u.s->len, ascii);
        return 0;
    case JJ_BOOL:
        jj_buf_add(b, k.u.b ? "\"true\"" : "\"false\"", k.u.b ? 6 : 7);
        return 0;
    case JJ_NONE:
        jj_buf_add(b, "\"null\"", 6);
        return 0;
    case JJ_INT:
        jj_buf_addf(b, "\"%lld\"", (long long)k.u.i);
        return 0;
    case JJ_FLOAT:
        if (isnan(k.u.f)) {
            strcpy(tmp, "NaN");
        } else if (isinf(k.u.f)) {
            strcpy(tmp, k.u.f < 0 ? "-Infinity" : "Infinity");
        } else {
            jj_float_repr(tmp, k.u.f);
        }
        jj_buf_addf(b, "\"%s\"", tmp);
        return 0;
    default:
        *what = "keys must be str, int, float, bool or None, not tuple";
        return KC_EINVAL;
    }
}

static int json_sort_order(struct jj_val a, struct jj_val b) {
    int c = 0;
    if (jj_compare(a, b, &c) < 0) {
        return 0;
    }
    return c;
}

int jj_val_json(struct jj_buf *b, struct jj_val v, const struct jj_json_opts *o, int depth,
                const char **what) {
    if (depth > JJ_MAX_VALUE_DEPTH) {
        *what = "nesting too deep";
        return KC_ERANGE;
    }
    char tmp[48];
    int rc;
    switch (v.t) {
    case JJ_NONE:
        jj_buf_add(b, "null", 4);
        break;
    case JJ_BOOL:
        jj_buf_add(b, v.u.b ? "true" : "false", v.u.b ? 4 : 5);
        break;
    case JJ_INT:
        jj_buf_addf(b, "%lld", (long long)v.u.i);
        break;
    case JJ_FLOAT:
        if (isnan(v.u.f)) {
            jj_buf_add(b, "NaN", 3);
        } else if (isinf(v.u.f)) {
            jj_buf_add(b, v.u.f < 0 ? "-Infinity" : "Infinity", v.u.f < 0 ? 9 : 8);
        } else {
            jj_float_repr(tmp, v.u.f);
            jj_buf_add(b, tmp, strlen(tmp));
        }
        break;
    case JJ_STR:
        json_str(b, v.u.s->s, v.u.s->len, o->ensure_ascii);
        break;
    case JJ_LIST:
    case JJ_TUPLE:
        if (v.u.l->n == 0) {
            jj_buf_add(b, "[]", 2);
            break;
        }
        jj_buf_addc(b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) {
                jj_buf_add(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent) {
                json_newline(b, o, depth + 1);
            }
            if ((rc = jj_val_json(b, v.u.l->v[i], o, depth + 1, what)) < 0) {
                return rc;
            }
        }
        if (o->indent) {
            json_newline(b, o, depth);
        }
        jj_buf_addc(b, ']');
        break;
    case JJ_DICT: {
        const struct jj_dict *d = v.u.d;
        if (d->n == 0) {
            jj_buf_add(b, "{}", 2);
            break;
        }
        size_t *order = NULL;
        if (o->sort_keys) {
            order = jj_alloc(b->pool, d->n * sizeof(size_t));
            if (!order) {
                b->oom = true;
                return KC_ENOMEM;
            }
            for (size_t i = 0; i < d->n; i++) {
                order[i] = i;
            }
            /* Insertion sort keeps it stable and simple; key sets are small. */
            for (size_t i = 1; i < d->n; i++) {
                size_t x = order[i], j = i;
                while (j > 0 && json_sort_order(d->k[order[j - 1]], d->k[x]) > 0) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
            }
        }
        jj_buf_addc(b, '{');
        for (size_t j = 0; j < d->n; j++) {
            size_t i = order ? order[j] : j;
            if (j) {
                jj_buf_add(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent) {
                json_newline(b, o, depth + 1);
            }
            if ((rc = json_key(b, d->k[i], o->ensure_ascii, what)) < 0) {
                return rc;
            }
            jj_buf_add(b, o->key_sep, o->key_sep_len);
            if ((rc = jj_val_json(b, d->v[i], o, depth + 1, what)) < 0) {
                return rc;
            }
        }
        if (o->indent) {
            json_newline(b, o, depth);
        }
        jj_buf_addc(b, '}');
        jj_free(b->pool, order);
        break;
    }
    default:
        *what = jj_type_name(v);
        return KC_EINVAL;
    }
    if (b->oom) {
        return KC_ENOMEM;
    }
    if (b->over) {
        return KC_ERANGE;
    }
    return 0;
}
