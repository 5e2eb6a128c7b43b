/*
 * jinja_eval.c — the Jinja engine's renderer: runs a parsed template's statements and
 * expressions against a JSON context, with jinja2's semantics (scopes, undefined values,
 * attribute lookup order) and hard limits on output, steps, call depth and memory.
 *
 * Place in the data flow: eng_jinja_render() is called once per chat request with the request's
 * messages and the tokenizer's special tokens; the string it returns is the prompt.
 *
 * DESIGN
 *  1. One render = one struct jj_rc and one pool (jinja_internal.h). Every error path returns a
 *     negative code up the C stack; the pool is freed once at the end, whatever happened.
 *  2. Scopes follow jinja2: a for iteration, a macro call and a with block open a frame; if and
 *     set do not. `set` writes the innermost frame, so a set inside a loop does not leak out of
 *     it (jinja2's rule); namespaces are how templates carry state out of loops.
 *  3. Limits: max_steps counts loop iterations and calls; max_depth counts nested calls;
 *     JJ_MAX_EVAL_DEPTH bounds the evaluator's recursion (tree depth times calls); the pool's
 *     cap bounds memory; the output buffer is capped at max_output. Each gives KC_ERANGE.
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/jinja_internal.h"

#define JJ_DEFAULT_MAX_OUTPUT ((size_t)1 << 20)
#define JJ_DEFAULT_MAX_STEPS 1000000u
#define JJ_DEFAULT_MAX_DEPTH 64
/* Nested evaluations (expressions inside statements inside macro calls ...). */
#define JJ_MAX_EVAL_DEPTH 3000

struct jj_frame {
    struct jj_dict *vars;
    struct jj_frame *parent;
    bool captured; /* a macro closes over it: do not free it when its scope ends */
};

struct jj_macro {
    const struct jj_node *node; /* JN_MACRO or JN_CALLBLOCK */
    struct jj_frame *closure;
};

struct jj_loop {
    const struct jj_list *items;
    size_t i;
    int depth;
};

struct jj_rc {
    struct jj_pool pool;
    struct kc_error *err;
    struct jj_dict *ctx;
    uint64_t steps, max_steps;
    int calls, max_depth;
    int edepth;
    size_t max_output;
    int64_t now;
    int ctl;                 /* 1 = break, 2 = continue pending */
    struct jj_val block_val; /* what a filter chain of a block applies to */
    int loop_depth;
    bool raised;
    const struct jj_str *s_loop, *s_varargs, *s_kwargs, *s_caller; /* fixed names */
};

struct jj_pool *jj_rc_pool(struct jj_rc *rc) {
    return &rc->pool;
}

int64_t jj_rc_now(struct jj_rc *rc) {
    return rc->now;
}

int jj_fail(struct jj_rc *rc, const struct jj_node *n, int code, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n) {
        return kc_error_set(rc->err, code, "template:%d:%d: %s", n->line, n->col, msg);
    }
    return kc_error_set(rc->err, code, "template: %s", msg);
}

int jj_oom(struct jj_rc *rc, const struct jj_node *n) {
    return jj_fail(rc, n, KC_ERANGE, "template uses more than %zu bytes of memory", rc->pool.cap);
}

int jj_step(struct jj_rc *rc, const struct jj_node *n) {
    if (++rc->steps > rc->max_steps) {
        return jj_fail(rc, n, KC_ERANGE, "template exceeds %llu steps (loop iterations + calls)",
                       (unsigned long long)rc->max_steps);
    }
    return 0;
}

int jj_raise(struct jj_rc *rc, const struct jj_str *msg) {
    rc->raised = true;
    return kc_error_set(rc->err, KC_EINVAL, "%s", msg->s);
}

/* Failure of a buffer: output cap, or pool memory. */
static int buf_fail(struct jj_rc *rc, const struct jj_node *n, const struct jj_buf *b) {
    if (b->over) {
        if (b->max == rc->max_output) {
            return jj_fail(rc, n, KC_ERANGE, "output exceeds %zu bytes", rc->max_output);
        }
        return jj_fail(rc, n, KC_ERANGE, "value nested too deeply or too large");
    }
    return jj_oom(rc, n);
}

/* ---- scopes --------------------------------------------------------------------------- */

static struct jj_frame *frame_new(struct jj_rc *rc, struct jj_frame *parent) {
    struct jj_frame *f = jj_alloc(&rc->pool, sizeof(*f));
    if (!f) {
        return NULL;
    }
    f->parent = parent;
    f->vars = jj_dict_new(&rc->pool);
    return f->vars ? f : NULL;
}

static void frame_free(struct jj_rc *rc, struct jj_frame *f) {
    if (!f || f->captured) {
        return;
    }
    jj_free(&rc->pool, f->vars->k);
    jj_free(&rc->pool, f->vars->v);
    jj_free(&rc->pool, f->vars->ht);
    jj_free(&rc->pool, f->vars);
    jj_free(&rc->pool, f);
}

static int frame_set(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f,
                     const struct jj_str *name, struct jj_val v) {
    if (jj_dict_set(&rc->pool, f->vars, jj_strv(name), v) < 0) {
        return jj_oom(rc, n);
    }
    return 0;
}

static struct jj_val lookup(struct jj_rc *rc, struct jj_frame *f, const struct jj_str *name) {
    for (; f; f = f->parent) {
        struct jj_val *v = jj_dict_get_str(f->vars, name->s, name->len);
        if (v) {
            return *v;
        }
    }
    struct jj_val *v = jj_dict_get_str(rc->ctx, name->s, name->len);
    if (v) {
        return *v;
    }
    struct jj_val g;
    if (jj_global_lookup(name->s, name->len, &g)) {
        return g;
    }
    return jj_undef(name);
}

/* ---- conversions ---------------------------------------------------------------------- */

int jj_to_str(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
              const struct jj_str **out) {
    if (v.t == JJ_STR) {
        *out = v.u.s;
        return 0;
    }
    struct jj_buf b;
    jj_buf_init(&b, &rc->pool, 0);
    if (!jj_val_str(&b, v, 0)) {
        return buf_fail(rc, n, &b);
    }
    const struct jj_str *s = jj_buf_str(&b);
    if (!s) {
        return jj_oom(rc, n);
    }
    *out = s;
    return 0;
}

static int undefined_error(struct jj_rc *rc, const struct jj_node *n, struct jj_val u) {
    if (u.u.s) {
        return jj_fail(rc, n, KC_EINVAL, "'%s' is undefined", u.u.s->s);
    }
    return jj_fail(rc, n, KC_EINVAL, "undefined value used");
}

int jj_iterate(struct jj_rc *rc, const struct jj_node *n, struct jj_val v, struct jj_list **out) {
    struct jj_list *l;
    switch (v.t) {
    case JJ_UNDEF:
        l = jj_list_new(&rc->pool, 0);
        break;
    case JJ_LIST:
    case JJ_TUPLE:
        *out = v.u.l;
        return 0;
    case JJ_DICT:
    case JJ_NS:
        l = jj_list_new(&rc->pool, v.u.d->n);
        if (l) {
            for (size_t i = 0; i < v.u.d->n; i++) {
                l->v[l->n++] = v.u.d->k[i];
            }
        }
        break;
    case JJ_STR: {
        const struct jj_str *s = v.u.s;
        l = jj_list_new(&rc->pool, jj_utf8_len(s->s, s->len));
        size_t i = 0;
        while (l && i < s->len) {
            size_t st = i;
            jj_utf8_next(s->s, s->len, &i);
            const struct jj_str *c = jj_str_new(&rc->pool, s->s + st, i - st);
            if (!c) {
                return jj_oom(rc, n);
            }
            l->v[l->n++] = jj_strv(c);
        }
        break;
    }
    default:
        return jj_fail(rc, n, KC_EINVAL, "'%s' object is not iterable", jj_type_name(v));
    }
    if (!l) {
        return jj_oom(rc, n);
    }
    *out = l;
    return 0;
}

/* ---- attribute and item access --------------------------------------------------------- */

static int loop_attr(struct jj_rc *rc, const struct jj_node *n, struct jj_loop *lp,
                     const struct jj_str *name, struct jj_val *out) {
    size_t len = lp->items->n, i = lp->i;
    const char *a = name->s;
    (void)rc;
    (void)n;
    if (!strcmp(a, "index")) {
        *out = jj_int((int64_t)i + 1);
    } else if (!strcmp(a, "index0")) {
        *out = jj_int((int64_t)i);
    } else if (!strcmp(a, "revindex")) {
        *out = jj_int((int64_t)(len - i));
    } else if (!strcmp(a, "revindex0")) {
        *out = jj_int((int64_t)(len - i - 1));
    } else if (!strcmp(a, "first")) {
        *out = jj_bool(i == 0);
    } else if (!strcmp(a, "last")) {
        *out = jj_bool(i + 1 == len);
    } else if (!strcmp(a, "length")) {
        *out = jj_int((int64_t)len);
    } else if (!strcmp(a, "depth")) {
        *out = jj_int(lp->depth);
    } else if (!strcmp(a, "depth0")) {
        *out = jj_int(lp->depth - 1);
    } else if (!strcmp(a, "previtem")) {
        *out = i > 0 ? lp->items->v[i - 1] : jj_undef(name);
    } else if (!strcmp(a, "nextitem")) {
        *out = i + 1 < len ? lp->items->v[i + 1] : jj_undef(name);
    } else if (!strcmp(a, "cycle")) {
        struct jj_val self = {.t = JJ_LOOP};
        self.u.loop = lp;
        if (!jj_method_lookup(&rc->pool, self, name, out)) {
            *out = jj_undef(name);
        }
    } else {
        *out = jj_undef(name);
    }
    return 0;
}

int jj_getattr(struct jj_rc *rc, const struct jj_node *n, struct jj_val obj,
               const struct jj_str *name, struct jj_val *out) {
    switch (obj.t) {
    case JJ_UNDEF:
        if (obj.u.s) {
            return jj_fail(rc, n, KC_EINVAL, "'%s' is undefined", obj.u.s->s);
        }
        return jj_fail(rc, n, KC_EINVAL, "cannot read attribute '%s' of an undefined value",
                       name->s);
    case JJ_LOOP:
        return loop_attr(rc, n, obj.u.loop, name, out);
    case JJ_NS: {
        struct jj_val *v = jj_dict_get_str(obj.u.d, name->s, name->len);
        *out = v ? *v : jj_undef(name);
        return 0;
    }
    case JJ_DICT: {
        if (jj_method_lookup(&rc->pool, obj, name, out)) {
            return 0;
        }
        struct jj_val *v = jj_dict_get_str(obj.u.d, name->s, name->len);
        *out = v ? *v : jj_undef(name);
        return 0;
    }
    default:
        if (!jj_method_lookup(&rc->pool, obj, name, out)) {
            *out = jj_undef(name);
        }
        return 0;
    }
}

static bool int_of(struct jj_val v, int64_t *out) {
    if (v.t == JJ_INT) {
        *out = v.u.i;
        return true;
    }
    if (v.t == JJ_BOOL) {
        *out = v.u.b;
        return true;
    }
    return false;
}

int jj_getitem(struct jj_rc *rc, const struct jj_node *n, struct jj_val obj, struct jj_val key,
               struct jj_val *out) {
    int64_t idx;
    switch (obj.t) {
    case JJ_UNDEF:
        return undefined_error(rc, n, obj);
    case JJ_DICT: {
        struct jj_val *v = jj_dict_get(obj.u.d, key);
        if (v) {
            *out = *v;
            return 0;
        }
        break;
    }
    case JJ_LIST:
    case JJ_TUPLE:
        if (int_of(key, &idx)) {
            int64_t len = (int64_t)obj.u.l->n;
            if (idx < 0) {
                idx += len;
            }
            *out = idx >= 0 && idx < len ? obj.u.l->v[idx] : jj_undef(NULL);
            return 0;
        }
        break;
    case JJ_STR:
        if (int_of(key, &idx)) {
            const struct jj_str *s = obj.u.s;
            int64_t len = (int64_t)jj_utf8_len(s->s, s->len);
            if (idx < 0) {
                idx += len;
            }
            if (idx < 0 || idx >= len) {
                *out = jj_undef(NULL);
                return 0;
            }
            size_t a = jj_utf8_offset(s->s, s->len, (size_t)idx);
            size_t b = a;
            jj_utf8_next(s->s, s->len, &b);
            const struct jj_str *c = jj_str_new(&rc->pool, s->s + a, b - a);
            if (!c) {
                return jj_oom(rc, n);
            }
            *out = jj_strv(c);
            return 0;
        }
        break;
    default:
        break;
    }
    if (key.t == JJ_STR) {
        return jj_getattr(rc, n, obj, key.u.s, out);
    }
    *out = jj_undef(NULL);
    return 0;
}

/* Python's slice index adjustment (PySlice_AdjustIndices). */
static int64_t slice_len(int64_t len, int64_t *start, int64_t *stop, int64_t step, bool has_start,
                         bool has_stop) {
    if (!has_start) {
        *start = step < 0 ? len - 1 : 0;
    } else {
        if (*start < 0) {
            *start += len;
            if (*start < 0) {
                *start = step < 0 ? -1 : 0;
            }
        } else if (*start >= len) {
            *start = step < 0 ? len - 1 : len;
        }
    }
    if (!has_stop) {
        *stop = step < 0 ? -1 : len;
    } else {
        if (*stop < 0) {
            *stop += len;
            if (*stop < 0) {
                *stop = step < 0 ? -1 : 0;
            }
        } else if (*stop >= len) {
            *stop = step < 0 ? len - 1 : len;
        }
    }
    if (step < 0) {
        return *stop < *start ? (*start - *stop - 1) / (-step) + 1 : 0;
    }
    return *start < *stop ? (*stop - *start - 1) / step + 1 : 0;
}

static int do_slice(struct jj_rc *rc, const struct jj_node *n, struct jj_val obj,
                    const struct jj_val parts[3], const bool has[3], struct jj_val *out) {
    int64_t v[3] = {0, 0, 1};
    for (int i = 0; i < 3; i++) {
        if (has[i] && !int_of(parts[i], &v[i])) {
            *out = jj_undef(NULL);
            return 0;
        }
    }
    if (v[2] == 0) {
        return jj_fail(rc, n, KC_EINVAL, "slice step cannot be zero");
    }
    if (v[2] == INT64_MIN) {
        v[2] = -INT64_MAX;
    }
    if (obj.t == JJ_LIST || obj.t == JJ_TUPLE) {
        int64_t start = v[0], stop = v[1];
        int64_t cnt = slice_len((int64_t)obj.u.l->n, &start, &stop, v[2], has[0], has[1]);
        struct jj_list *l = jj_list_new(&rc->pool, (size_t)cnt);
        if (!l) {
            return jj_oom(rc, n);
        }
        for (int64_t k = 0, i = start; k < cnt; k++, i += v[2]) {
            l->v[l->n++] = obj.u.l->v[i];
        }
        out->t = obj.t;
        out->u.l = l;
        return 0;
    }
    if (obj.t == JJ_STR) {
        const struct jj_str *s = obj.u.s;
        /* Byte offsets of every code point, for any step. */
        size_t ncp = jj_utf8_len(s->s, s->len);
        size_t *offs = jj_alloc(&rc->pool, (ncp + 1) * sizeof(size_t));
        if (!offs) {
            return jj_oom(rc, n);
        }
        size_t bi = 0;
        for (size_t k = 0; k < ncp; k++) {
            offs[k] = bi;
            jj_utf8_next(s->s, s->len, &bi);
        }
        offs[ncp] = s->len;
        int64_t start = v[0], stop = v[1];
        int64_t cnt = slice_len((int64_t)ncp, &start, &stop, v[2], has[0], has[1]);
        struct jj_buf b;
        jj_buf_init(&b, &rc->pool, 0);
        if (v[2] == 1 && cnt > 0) {
            jj_buf_add(&b, s->s + offs[start], offs[start + cnt] - offs[start]);
        } else {
            for (int64_t k = 0, i = start; k < cnt; k++, i += v[2]) {
                jj_buf_add(&b, s->s + offs[i], offs[i + 1] - offs[i]);
            }
        }
        jj_free(&rc->pool, offs);
        const struct jj_str *r = jj_buf_str(&b);
        if (!r) {
            return jj_oom(rc, n);
        }
        *out = jj_strv(r);
        return 0;
    }
    if (obj.t == JJ_UNDEF) {
        return undefined_error(rc, n, obj);
    }
    *out = jj_undef(NULL);
    return 0;
}

/* ---- expressions ---------------------------------------------------------------------- */

static int eval(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f, struct jj_val *out);
static int exec_body(struct jj_rc *rc, const struct jj_node *body, struct jj_frame *f,
                     struct jj_buf *out);

static int num_of(struct jj_val v, bool *is_float, int64_t *i, double *d) {
    if (v.t == JJ_INT || v.t == JJ_BOOL) {
        *is_float = false;
        *i = v.t == JJ_INT ? v.u.i : v.u.b;
        *d = (double)*i;
        return 0;
    }
    if (v.t == JJ_FLOAT) {
        *is_float = true;
        *d = v.u.f;
        return 0;
    }
    return -1;
}

static int type_error(struct jj_rc *rc, const struct jj_node *n, const char *op, struct jj_val a,
                      struct jj_val b) {
    if (a.t == JJ_UNDEF) {
        return undefined_error(rc, n, a);
    }
    if (b.t == JJ_UNDEF) {
        return undefined_error(rc, n, b);
    }
    return jj_fail(rc, n, KC_EINVAL, "unsupported operand type(s) for %s: '%s' and '%s'", op,
                   jj_type_name(a), jj_type_name(b));
}

static int concat_seq(struct jj_rc *rc, const struct jj_node *n, struct jj_val a, struct jj_val b,
                      struct jj_val *out) {
    struct jj_list *l = jj_list_new(&rc->pool, a.u.l->n + b.u.l->n);
    if (!l) {
        return jj_oom(rc, n);
    }
    jj_copy_vals(l->v, a.u.l->v, a.u.l->n);
    if (b.u.l->n > 0) { /* NULL + 0 is undefined behaviour */
        jj_copy_vals(l->v + a.u.l->n, b.u.l->v, b.u.l->n);
    }
    l->n = a.u.l->n + b.u.l->n;
    out->t = a.t;
    out->u.l = l;
    return 0;
}

static int repeat(struct jj_rc *rc, const struct jj_node *n, struct jj_val seq, int64_t times,
                  struct jj_val *out) {
    if (times < 0 || (seq.t == JJ_STR ? seq.u.s->len : seq.u.l->n) == 0) {
        times = 0; /* also keeps '' * 10**18 from looping */
    }
    if (seq.t == JJ_STR) {
        size_t total;
        if (!kc_size_mul(seq.u.s->len, (size_t)times, &total) || total > rc->pool.cap) {
            return jj_oom(rc, n);
        }
        struct jj_buf b;
        jj_buf_init(&b, &rc->pool, 0);
        for (int64_t i = 0; i < times; i++) {
            jj_buf_add(&b, seq.u.s->s, seq.u.s->len);
        }
        const struct jj_str *s = jj_buf_str(&b);
        if (!s) {
            return jj_oom(rc, n);
        }
        *out = jj_strv(s);
        return 0;
    }
    size_t total;
    if (!kc_size_mul(seq.u.l->n, (size_t)times, &total) ||
        total > rc->pool.cap / sizeof(struct jj_val)) {
        return jj_oom(rc, n);
    }
    struct jj_list *l = jj_list_new(&rc->pool, total);
    if (!l) {
        return jj_oom(rc, n);
    }
    for (int64_t i = 0; i < times; i++) {
        if (seq.u.l->n > 0) { /* NULL + 0 is undefined behaviour */
            jj_copy_vals(l->v + l->n, seq.u.l->v, seq.u.l->n);
        }
        l->n += seq.u.l->n;
    }
    out->t = seq.t;
    out->u.l = l;
    return 0;
}

/* Python's float floor division and modulo. */
static double py_fmod(double a, double b) {
    double m = fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0))) {
        m += b;
    } else if (m == 0) {
        m = copysign(0.0, b);
    }
    return m;
}

static double py_floordiv(double a, double b) {
    double m = fmod(a, b);
    double div = (a - m) / b;
    if (m != 0 && ((b < 0) != (m < 0))) {
        div -= 1.0;
    }
    if (div != 0) {
        double fl = floor(div);
        if (div - fl > 0.5) {
            fl += 1.0;
        }
        div = fl;
    } else {
        div = copysign(0.0, a / b);
    }
    return div;
}

int jj_str_format_percent(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *fmt,
                          struct jj_val args, struct jj_val *out);

static int binop(struct jj_rc *rc, const struct jj_node *n, int op, struct jj_val a,
                 struct jj_val b, struct jj_val *out) {
    bool fa, fb;
    int64_t ia, ib;
    double da, db;
    bool na = num_of(a, &fa, &ia, &da) == 0, nb = num_of(b, &fb, &ib, &db) == 0;
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    if (op == JJ_OP_CONCAT) {
        const struct jj_str *sa, *sb;
        int rc2;
        if ((rc2 = jj_to_str(rc, n, a, &sa)) < 0 || (rc2 = jj_to_str(rc, n, b, &sb)) < 0) {
            return rc2;
        }
        struct jj_buf buf;
        jj_buf_init(&buf, &rc->pool, 0);
        jj_buf_add(&buf, sa->s, sa->len);
        jj_buf_add(&buf, sb->s, sb->len);
        const struct jj_str *s = jj_buf_str(&buf);
        if (!s) {
            return jj_oom(rc, n);
        }
        *out = jj_strv(s);
        return 0;
    }
    if (na && nb) {
        bool flt = fa || fb;
        switch (op) {
        case JJ_OP_ADD:
            if (!flt) {
                int64_t r;
                if (__builtin_add_overflow(ia, ib, &r)) {
                    return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                }
                *out = jj_int(r);
            } else {
                *out = jj_float(da + db);
            }
            return 0;
        case JJ_OP_SUB:
            if (!flt) {
                int64_t r;
                if (__builtin_sub_overflow(ia, ib, &r)) {
                    return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                }
                *out = jj_int(r);
            } else {
                *out = jj_float(da - db);
            }
            return 0;
        case JJ_OP_MUL:
            if (!flt) {
                int64_t r;
                if (__builtin_mul_overflow(ia, ib, &r)) {
                    return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                }
                *out = jj_int(r);
            } else {
                *out = jj_float(da * db);
            }
            return 0;
        case JJ_OP_DIV:
            if (db == 0) {
                return jj_fail(rc, n, KC_EINVAL, "division by zero");
            }
            *out = jj_float(da / db);
            return 0;
        case JJ_OP_FLOORDIV:
        case JJ_OP_MOD:
            if ((!flt && ib == 0) || (flt && db == 0)) {
                return jj_fail(rc, n, KC_EINVAL, "integer division or modulo by zero");
            }
            if (!flt) {
                if (ia == INT64_MIN && ib == -1) {
                    return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                }
                int64_t q = ia / ib, m = ia % ib;
                if (m != 0 && ((m < 0) != (ib < 0))) {
                    q -= 1;
                    m += ib;
                }
                *out = jj_int(op == JJ_OP_MOD ? m : q);
            } else {
                *out = jj_float(op == JJ_OP_MOD ? py_fmod(da, db) : py_floordiv(da, db));
            }
            return 0;
        case JJ_OP_POW:
            if (!flt && ib >= 0) {
                int64_t r = 1, base = ia;
                int64_t e = ib;
                while (e > 0) {
                    if (e & 1) {
                        if (__builtin_mul_overflow(r, base, &r)) {
                            return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                        }
                    }
                    e >>= 1;
                    if (e && __builtin_mul_overflow(base, base, &base)) {
                        return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                    }
                }
                *out = jj_int(r);
                return 0;
            }
            if (da == 0 && db < 0) {
                return jj_fail(rc, n, KC_EINVAL, "0.0 cannot be raised to a negative power");
            }
            *out = jj_float(pow(da, db));
            return 0;
        default:
            break;
        }
    }
    if (op == JJ_OP_ADD) {
        if (a.t == JJ_STR && b.t == JJ_STR) {
            struct jj_buf buf;
            jj_buf_init(&buf, &rc->pool, 0);
            jj_buf_add(&buf, a.u.s->s, a.u.s->len);
            jj_buf_add(&buf, b.u.s->s, b.u.s->len);
            const struct jj_str *s = jj_buf_str(&buf);
            if (!s) {
                return jj_oom(rc, n);
            }
            *out = jj_strv(s);
            return 0;
        }
        if ((a.t == JJ_LIST && b.t == JJ_LIST) || (a.t == JJ_TUPLE && b.t == JJ_TUPLE)) {
            return concat_seq(rc, n, a, b, out);
        }
    }
    if (op == JJ_OP_MUL) {
        bool sa = a.t == JJ_STR || a.t == JJ_LIST || a.t == JJ_TUPLE;
        bool sb = b.t == JJ_STR || b.t == JJ_LIST || b.t == JJ_TUPLE;
        if (sa && nb && !fb) {
            return repeat(rc, n, a, ib, out);
        }
        if (sb && na && !fa) {
            return repeat(rc, n, b, ia, out);
        }
    }
    if (op == JJ_OP_MOD && a.t == JJ_STR) {
        return jj_str_format_percent(rc, n, a.u.s, b, out);
    }
    return type_error(rc, n, names[op <= JJ_OP_POW ? op : 0], a, b);
}

static int contains(struct jj_rc *rc, const struct jj_node *n, struct jj_val item,
                    struct jj_val container, bool *out) {
    switch (container.t) {
    case JJ_STR:
        if (item.t != JJ_STR) {
            return jj_fail(rc, n, KC_EINVAL,
                           "'in <string>' requires string as left operand, not %s",
                           jj_type_name(item));
        }
        if (item.u.s->len == 0) {
            *out = true;
            return 0;
        }
        *out = false;
        if (item.u.s->len <= container.u.s->len) {
            const char *h = container.u.s->s;
            size_t hn = container.u.s->len, nn = item.u.s->len;
            for (size_t i = 0; i + nn <= hn; i++) {
                if (h[i] == item.u.s->s[0] && memcmp(h + i, item.u.s->s, nn) == 0) {
                    *out = true;
                    break;
                }
            }
        }
        return 0;
    case JJ_LIST:
    case JJ_TUPLE:
        *out = false;
        for (size_t i = 0; i < container.u.l->n; i++) {
            if (jj_equal(container.u.l->v[i], item)) {
                *out = true;
                break;
            }
        }
        return 0;
    case JJ_DICT:
        if (!jj_hashable(item)) {
            return jj_fail(rc, n, KC_EINVAL, "unhashable type: '%s'", jj_type_name(item));
        }
        *out = jj_dict_get(container.u.d, item) != NULL;
        return 0;
    case JJ_UNDEF:
        *out = false;
        return 0;
    default:
        return jj_fail(rc, n, KC_EINVAL, "argument of type '%s' is not iterable",
                       jj_type_name(container));
    }
}

static int compare_op(struct jj_rc *rc, const struct jj_node *n, int op, struct jj_val a,
                      struct jj_val b, bool *out) {
    int c = 0, r;
    switch (op) {
    case JJ_OP_EQ:
        *out = jj_equal(a, b);
        return 0;
    case JJ_OP_NE:
        *out = !jj_equal(a, b);
        return 0;
    case JJ_OP_IN:
        return contains(rc, n, a, b, out);
    case JJ_OP_NOTIN:
        r = contains(rc, n, a, b, out);
        *out = !*out;
        return r;
    default:
        break;
    }
    if ((r = jj_compare(a, b, &c)) < 0) {
        if (a.t == JJ_UNDEF) {
            return undefined_error(rc, n, a);
        }
        if (b.t == JJ_UNDEF) {
            return undefined_error(rc, n, b);
        }
        if (r == KC_ERANGE) {
            return jj_fail(rc, n, KC_ERANGE, "values nested too deeply to compare");
        }
        static const char *const sym[] = {"<", "<=", ">", ">="};
        return jj_fail(rc, n, KC_EINVAL, "'%s' not supported between instances of '%s' and '%s'",
                       sym[op - JJ_OP_LT], jj_type_name(a), jj_type_name(b));
    }
    /* NaN compares false everywhere. */
    bool nan = (a.t == JJ_FLOAT && isnan(a.u.f)) || (b.t == JJ_FLOAT && isnan(b.u.f));
    switch (op) {
    case JJ_OP_LT:
        *out = !nan && c < 0;
        break;
    case JJ_OP_LE:
        *out = !nan && c <= 0;
        break;
    case JJ_OP_GT:
        *out = !nan && c > 0;
        break;
    default:
        *out = !nan && c >= 0;
        break;
    }
    return 0;
}

static int eval_args(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f,
                     struct jj_args *args, int extra) {
    args->n = n->nkids;
    args->names = n->names;
    args->v = NULL;
    if (n->nkids + extra == 0) {
        return 0;
    }
    args->v = jj_alloc(&rc->pool, (size_t)(n->nkids + extra) * sizeof(struct jj_val));
    if (!args->v) {
        return jj_oom(rc, n);
    }
    for (int i = 0; i < n->nkids; i++) {
        int r = eval(rc, n->kids[i], f, &args->v[i]);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static int call_macro(struct jj_rc *rc, const struct jj_node *n, struct jj_macro *m,
                      const struct jj_args *args, struct jj_val *out) {
    const struct jj_node *def = m->node;
    int r;
    if (rc->calls >= rc->max_depth) {
        return jj_fail(rc, n, KC_ERANGE, "calls nested more than %d deep", rc->max_depth);
    }
    struct jj_frame *f = frame_new(rc, m->closure);
    if (!f) {
        return jj_oom(rc, n);
    }
    struct jj_list *varargs = jj_list_new(&rc->pool, 0);
    struct jj_dict *kwargs = jj_dict_new(&rc->pool);
    if (!varargs || !kwargs) {
        return jj_oom(rc, n);
    }
    bool *set = jj_alloc(&rc->pool, (size_t)def->nkids + 1);
    if (!set) {
        return jj_oom(rc, n);
    }
    int pos = 0;
    for (int i = 0; i < args->n; i++) {
        if (args->names && args->names[i]) {
            const struct jj_str *kw = args->names[i];
            int k;
            for (k = 0; k < def->nkids; k++) {
                if (def->names[k]->len == kw->len && !memcmp(def->names[k]->s, kw->s, kw->len)) {
                    break;
                }
            }
            if (k < def->nkids) {
                if (set[k]) {
                    return jj_fail(rc, n, KC_EINVAL, "macro got multiple values for argument '%s'",
                                   kw->s);
                }
                set[k] = true;
                if ((r = frame_set(rc, n, f, kw, args->v[i])) < 0) {
                    return r;
                }
            } else if (kw->len == 6 && !memcmp(kw->s, "caller", 6) && (def->op & 4)) {
                if ((r = frame_set(rc, n, f, kw, args->v[i])) < 0) {
                    return r;
                }
            } else if (!(def->op & 2)) {
                return jj_fail(rc, n, KC_EINVAL, "macro takes no keyword argument '%s'", kw->s);
            } else if (jj_dict_set(&rc->pool, kwargs, jj_strv(kw), args->v[i]) < 0) {
                return jj_oom(rc, n);
            }
        } else if (pos < def->nkids) {
            set[pos] = true;
            if ((r = frame_set(rc, n, f, def->names[pos], args->v[i])) < 0) {
                return r;
            }
            pos++;
        } else if (!(def->op & 1)) {
            return jj_fail(rc, n, KC_EINVAL, "macro takes not more than %d argument(s)",
                           def->nkids);
        } else if (!jj_list_push(&rc->pool, varargs, args->v[i])) {
            return jj_oom(rc, n);
        }
    }
    for (int k = 0; k < def->nkids; k++) {
        if (set[k]) {
            continue;
        }
        struct jj_val v = jj_undef(def->names[k]);
        if (def->kids[k] && (r = eval(rc, def->kids[k], f, &v)) < 0) {
            return r;
        }
        if ((r = frame_set(rc, n, f, def->names[k], v)) < 0) {
            return r;
        }
    }
    struct jj_val vv = {.t = JJ_TUPLE};
    vv.u.l = varargs;
    struct jj_val kv = {.t = JJ_DICT};
    kv.u.d = kwargs;
    if ((r = frame_set(rc, n, f, rc->s_varargs, vv)) < 0 ||
        (r = frame_set(rc, n, f, rc->s_kwargs, kv)) < 0) {
        return r;
    }
    struct jj_buf b;
    jj_buf_init(&b, &rc->pool, 0);
    rc->calls++;
    int saved_ctl = rc->ctl;
    rc->ctl = 0;
    r = exec_body(rc, def->body, f, &b);
    rc->ctl = saved_ctl;
    rc->calls--;
    if (r < 0) {
        return r;
    }
    const struct jj_str *s = jj_buf_str(&b);
    if (!s) {
        return jj_oom(rc, n);
    }
    *out = jj_strv(s);
    return 0;
}

int jj_call_value(struct jj_rc *rc, const struct jj_node *n, struct jj_val fn,
                  const struct jj_args *args, struct jj_val *out) {
    int r = jj_step(rc, n);
    if (r < 0) {
        return r;
    }
    switch (fn.t) {
    case JJ_MACRO:
        return call_macro(rc, n, fn.u.mac, args, out);
    case JJ_FUNC:
        return jj_global_call(rc, n, (int)fn.u.i, args, out);
    case JJ_METHOD:
        return jj_method_call(rc, n, fn.u.m, args, out);
    case JJ_UNDEF:
        return undefined_error(rc, n, fn);
    default:
        return jj_fail(rc, n, KC_EINVAL, "'%s' object is not callable", jj_type_name(fn));
    }
}

static int eval_inner(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f,
                      struct jj_val *out) {
    struct jj_val a, b;
    int r;
    switch (n->kind) {
    case JN_CONST:
        *out = n->val;
        return 0;
    case JN_NAME:
        *out = lookup(rc, f, n->name);
        return 0;
    case JN_LIST:
    case JN_TUPLE: {
        struct jj_list *l = jj_list_new(&rc->pool, (size_t)n->nkids);
        if (!l) {
            return jj_oom(rc, n);
        }
        for (int i = 0; i < n->nkids; i++) {
            if ((r = eval(rc, n->kids[i], f, &l->v[i])) < 0) {
                return r;
            }
        }
        l->n = (size_t)n->nkids;
        out->t = n->kind == JN_LIST ? JJ_LIST : JJ_TUPLE;
        out->u.l = l;
        return 0;
    }
    case JN_DICT: {
        struct jj_dict *d = jj_dict_new(&rc->pool);
        if (!d) {
            return jj_oom(rc, n);
        }
        for (int i = 0; i + 1 < n->nkids; i += 2) {
            if ((r = eval(rc, n->kids[i], f, &a)) < 0 ||
                (r = eval(rc, n->kids[i + 1], f, &b)) < 0) {
                return r;
            }
            r = jj_dict_set(&rc->pool, d, a, b);
            if (r == KC_EINVAL) {
                return jj_fail(rc, n, KC_EINVAL, "unhashable type: '%s'", jj_type_name(a));
            }
            if (r < 0) {
                return jj_oom(rc, n);
            }
        }
        out->t = JJ_DICT;
        out->u.d = d;
        return 0;
    }
    case JN_GETATTR:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        return jj_getattr(rc, n, a, n->name, out);
    case JN_GETITEM:
        if ((r = eval(rc, n->a, f, &a)) < 0 || (r = eval(rc, n->b, f, &b)) < 0) {
            return r;
        }
        return jj_getitem(rc, n, a, b, out);
    case JN_SLICE: {
        struct jj_val parts[3];
        bool has[3];
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        for (int i = 0; i < 3; i++) {
            has[i] = n->kids[i] != NULL;
            if (has[i] && (r = eval(rc, n->kids[i], f, &parts[i])) < 0) {
                return r;
            }
            if (has[i] && parts[i].t == JJ_NONE) {
                has[i] = false;
            }
        }
        return do_slice(rc, n, a, parts, has, out);
    }
    case JN_CALL: {
        struct jj_args args;
        if ((r = eval(rc, n->a, f, &a)) < 0 || (r = eval_args(rc, n, f, &args, 0)) < 0) {
            return r;
        }
        return jj_call_value(rc, n, a, &args, out);
    }
    case JN_FILTER: {
        struct jj_args args;
        if (n->a) {
            if ((r = eval(rc, n->a, f, &a)) < 0) {
                return r;
            }
        } else {
            a = rc->block_val;
        }
        if ((r = eval_args(rc, n, f, &args, 0)) < 0) {
            return r;
        }
        return jj_filter_apply(rc, n, n->name, a, &args, out);
    }
    case JN_TEST: {
        struct jj_args args;
        bool res;
        if ((r = eval(rc, n->a, f, &a)) < 0 || (r = eval_args(rc, n, f, &args, 0)) < 0 ||
            (r = jj_test_apply(rc, n, n->name, a, &args, &res)) < 0) {
            return r;
        }
        *out = jj_bool(n->op ? !res : res);
        return 0;
    }
    case JN_BINOP:
        if ((r = eval(rc, n->a, f, &a)) < 0 || (r = eval(rc, n->b, f, &b)) < 0) {
            return r;
        }
        return binop(rc, n, n->op, a, b, out);
    case JN_NEG:
    case JN_POS:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        if (a.t == JJ_INT || a.t == JJ_BOOL) {
            int64_t i = a.t == JJ_INT ? a.u.i : a.u.b;
            if (n->kind == JN_NEG && i == INT64_MIN) {
                return jj_fail(rc, n, KC_ERANGE, "integer overflow");
            }
            *out = jj_int(n->kind == JN_NEG ? -i : i);
            return 0;
        }
        if (a.t == JJ_FLOAT) {
            *out = jj_float(n->kind == JN_NEG ? -a.u.f : a.u.f);
            return 0;
        }
        if (a.t == JJ_UNDEF) {
            return undefined_error(rc, n, a);
        }
        return jj_fail(rc, n, KC_EINVAL, "bad operand type for unary %s: '%s'",
                       n->kind == JN_NEG ? "-" : "+", jj_type_name(a));
    case JN_NOT:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        *out = jj_bool(!jj_truthy(a));
        return 0;
    case JN_AND:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        if (!jj_truthy(a)) {
            *out = a;
            return 0;
        }
        return eval(rc, n->b, f, out);
    case JN_OR:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        if (jj_truthy(a)) {
            *out = a;
            return 0;
        }
        return eval(rc, n->b, f, out);
    case JN_COMPARE: {
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        bool res = true;
        for (int i = 0; i < n->nkids && res; i++) {
            if ((r = eval(rc, n->kids[i], f, &b)) < 0 ||
                (r = compare_op(rc, n, n->ops[i], a, b, &res)) < 0) {
                return r;
            }
            a = b;
        }
        *out = jj_bool(res);
        return 0;
    }
    case JN_COND:
        if ((r = eval(rc, n->a, f, &a)) < 0) {
            return r;
        }
        if (jj_truthy(a)) {
            return eval(rc, n->b, f, out);
        }
        if (n->c) {
            return eval(rc, n->c, f, out);
        }
        *out = jj_undef(NULL);
        return 0;
    default:
        return jj_fail(rc, n, KC_EINVAL, "internal: not an expression");
    }
}

static int eval(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f, struct jj_val *out) {
    if (++rc->edepth > JJ_MAX_EVAL_DEPTH) {
        rc->edepth--;
        return jj_fail(rc, n, KC_ERANGE, "template nests too deeply while rendering");
    }
    int r = eval_inner(rc, n, f, out);
    rc->edepth--;
    return r;
}

/* ---- statements ----------------------------------------------------------------------- */

static int assign(struct jj_rc *rc, const struct jj_node *target, struct jj_frame *f,
                  struct jj_val v) {
    int r;
    if (target->kind == JN_NAME) {
        return frame_set(rc, target, f, target->name, v);
    }
    if (target->kind == JN_GETATTR) {
        struct jj_val ns = lookup(rc, f, target->a->name);
        if (ns.t != JJ_NS) {
            return jj_fail(rc, target, KC_EINVAL,
                           "cannot assign attribute on non-namespace object");
        }
        if (jj_dict_set(&rc->pool, ns.u.d, jj_strv(target->name), v) < 0) {
            return jj_oom(rc, target);
        }
        return 0;
    }
    /* Tuple unpacking. */
    struct jj_list *items;
    if (v.t == JJ_UNDEF) {
        return undefined_error(rc, target, v);
    }
    if ((r = jj_iterate(rc, target, v, &items)) < 0) {
        return jj_fail(rc, target, KC_EINVAL, "cannot unpack non-iterable %s object",
                       jj_type_name(v));
    }
    if (items->n != (size_t)target->nkids) {
        return jj_fail(rc, target, KC_EINVAL, "cannot unpack %zu values into %d names", items->n,
                       target->nkids);
    }
    for (int i = 0; i < target->nkids; i++) {
        if ((r = assign(rc, target->kids[i], f, items->v[i])) < 0) {
            return r;
        }
    }
    return 0;
}

static void mark_captured(struct jj_frame *f) {
    for (; f; f = f->parent) {
        f->captured = true;
    }
}

static int exec_for(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f,
                    struct jj_buf *out) {
    struct jj_val it;
    struct jj_list *items;
    int r;
    if ((r = eval(rc, n->b, f, &it)) < 0 || (r = jj_iterate(rc, n->b, it, &items)) < 0) {
        return r;
    }
    if (n->c) {
        /* Loop filter: evaluated with the target bound, before loop.* exists. */
        struct jj_list *kept = jj_list_new(&rc->pool, items->n);
        if (!kept) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < items->n; i++) {
            if ((r = jj_step(rc, n)) < 0) {
                return r;
            }
            struct jj_frame *tf = frame_new(rc, f);
            struct jj_val c;
            if (!tf) {
                return jj_oom(rc, n);
            }
            if ((r = assign(rc, n->a, tf, items->v[i])) < 0 || (r = eval(rc, n->c, tf, &c)) < 0) {
                return r;
            }
            if (jj_truthy(c)) {
                kept->v[kept->n++] = items->v[i];
            }
            frame_free(rc, tf);
        }
        items = kept;
    }
    if (items->n == 0) {
        return n->els ? exec_body(rc, n->els, f, out) : 0;
    }
    struct jj_loop *lp = jj_alloc(&rc->pool, sizeof(*lp));
    if (!lp) {
        return jj_oom(rc, n);
    }
    lp->items = items;
    lp->depth = 1; /* depth counts recursive loops only (not supported): always 1 */
    r = 0;
    for (size_t i = 0; i < items->n; i++) {
        if ((r = jj_step(rc, n)) < 0) {
            break;
        }
        lp->i = i;
        struct jj_frame *itf = frame_new(rc, f);
        if (!itf) {
            r = jj_oom(rc, n);
            break;
        }
        struct jj_val lv = {.t = JJ_LOOP};
        lv.u.loop = lp;
        if ((r = frame_set(rc, n, itf, rc->s_loop, lv)) < 0 ||
            (r = assign(rc, n->a, itf, items->v[i])) < 0) {
            break;
        }
        r = exec_body(rc, n->body, itf, out);
        frame_free(rc, itf);
        if (r < 0) {
            break;
        }
        if (rc->ctl == 1) {
            rc->ctl = 0;
            break;
        }
        rc->ctl = 0;
    }
    return r;
}

static int capture(struct jj_rc *rc, const struct jj_node *body, struct jj_frame *f,
                   const struct jj_str **out) {
    struct jj_buf b;
    jj_buf_init(&b, &rc->pool, 0);
    int r = exec_body(rc, body, f, &b);
    if (r < 0) {
        return r;
    }
    const struct jj_str *s = jj_buf_str(&b);
    if (!s) {
        return jj_oom(rc, body);
    }
    *out = s;
    return 0;
}

static int apply_block_filters(struct jj_rc *rc, const struct jj_node *chain,
                               const struct jj_str *s, struct jj_frame *f, struct jj_val *out) {
    struct jj_val saved = rc->block_val;
    rc->block_val = jj_strv(s);
    int r = eval(rc, chain, f, out);
    rc->block_val = saved;
    return r;
}

static int emit(struct jj_rc *rc, const struct jj_node *n, struct jj_buf *out, struct jj_val v) {
    if (!jj_val_str(out, v, 0)) {
        return buf_fail(rc, n, out);
    }
    return 0;
}

static int exec_stmt(struct jj_rc *rc, const struct jj_node *n, struct jj_frame *f,
                     struct jj_buf *out) {
    struct jj_val v;
    int r;
    switch (n->kind) {
    case JN_TEXT:
        if (!jj_buf_add(out, n->val.u.s->s, n->val.u.s->len)) {
            return buf_fail(rc, n, out);
        }
        return 0;
    case JN_OUTPUT:
        if ((r = eval(rc, n->a, f, &v)) < 0) {
            return r;
        }
        return emit(rc, n, out, v);
    case JN_BODY:
        return exec_body(rc, n, f, out);
    case JN_IF:
        if ((r = eval(rc, n->a, f, &v)) < 0) {
            return r;
        }
        if (jj_truthy(v)) {
            return exec_body(rc, n->body, f, out);
        }
        return n->els ? exec_body(rc, n->els, f, out) : 0;
    case JN_FOR:
        return exec_for(rc, n, f, out);
    case JN_SET:
        if ((r = eval(rc, n->b, f, &v)) < 0) {
            return r;
        }
        return assign(rc, n->a, f, v);
    case JN_SETBLOCK: {
        const struct jj_str *s;
        if ((r = capture(rc, n->body, f, &s)) < 0) {
            return r;
        }
        v = jj_strv(s);
        if (n->c && (r = apply_block_filters(rc, n->c, s, f, &v)) < 0) {
            return r;
        }
        return assign(rc, n->a, f, v);
    }
    case JN_FILTERBLOCK: {
        const struct jj_str *s;
        if ((r = capture(rc, n->body, f, &s)) < 0 ||
            (r = apply_block_filters(rc, n->c, s, f, &v)) < 0) {
            return r;
        }
        return emit(rc, n, out, v);
    }
    case JN_MACRO: {
        struct jj_macro *m = jj_alloc(&rc->pool, sizeof(*m));
        if (!m) {
            return jj_oom(rc, n);
        }
        m->node = n;
        m->closure = f;
        mark_captured(f);
        v.t = JJ_MACRO;
        v.u.mac = m;
        return frame_set(rc, n, f, n->name, v);
    }
    case JN_CALLBLOCK: {
        struct jj_macro *m = jj_alloc(&rc->pool, sizeof(*m));
        if (!m) {
            return jj_oom(rc, n);
        }
        m->node = n;
        m->closure = f;
        mark_captured(f);
        const struct jj_node *call = n->a;
        struct jj_val fn;
        struct jj_args args;
        if ((r = eval(rc, call->a, f, &fn)) < 0 || (r = eval_args(rc, call, f, &args, 1)) < 0) {
            return r;
        }
        const struct jj_str **names =
            jj_alloc(&rc->pool, (size_t)(call->nkids + 1) * sizeof(*names));
        if (!names) {
            return jj_oom(rc, n);
        }
        for (int i = 0; i < call->nkids; i++) {
            names[i] = call->names[i];
        }
        names[call->nkids] = rc->s_caller;
        args.names = names;
        args.v[call->nkids].t = JJ_MACRO;
        args.v[call->nkids].u.mac = m;
        args.n = call->nkids + 1;
        if ((r = jj_call_value(rc, call, fn, &args, &v)) < 0) {
            return r;
        }
        return emit(rc, n, out, v);
    }
    case JN_WITH: {
        struct jj_frame *wf = frame_new(rc, f);
        if (!wf) {
            return jj_oom(rc, n);
        }
        for (int i = 0; i < n->nkids; i++) {
            /* jinja2 evaluates each value in the outer scope. */
            if ((r = eval(rc, n->kids[i], f, &v)) < 0 ||
                (r = frame_set(rc, n, wf, n->names[i], v)) < 0) {
                return r;
            }
        }
        r = exec_body(rc, n->body, wf, out);
        frame_free(rc, wf);
        return r;
    }
    case JN_BREAK:
        rc->ctl = 1;
        return 0;
    case JN_CONTINUE:
        rc->ctl = 2;
        return 0;
    default:
        return jj_fail(rc, n, KC_EINVAL, "internal: not a statement");
    }
}

static int exec_body(struct jj_rc *rc, const struct jj_node *body, struct jj_frame *f,
                     struct jj_buf *out) {
    if (++rc->edepth > JJ_MAX_EVAL_DEPTH) {
        rc->edepth--;
        return jj_fail(rc, body, KC_ERANGE, "template nests too deeply while rendering");
    }
    int r = 0;
    if (body->kind != JN_BODY) {
        r = exec_stmt(rc, body, f, out);
    } else {
        for (int i = 0; i < body->nkids && r == 0 && rc->ctl == 0; i++) {
            r = exec_stmt(rc, body->kids[i], f, out);
        }
    }
    rc->edepth--;
    return r;
}

/* ---- JSON context --------------------------------------------------------------------- */

static int from_json(struct jj_rc *rc, json_t *j, struct jj_val *out, int depth) {
    if (depth > JJ_MAX_VALUE_DEPTH) {
        return kc_error_set(rc->err, KC_EINVAL, "template context: JSON nested too deeply");
    }
    switch (json_typeof(j)) {
    case JSON_NULL:
        *out = jj_none();
        return 0;
    case JSON_TRUE:
        *out = jj_bool(true);
        return 0;
    case JSON_FALSE:
        *out = jj_bool(false);
        return 0;
    case JSON_INTEGER:
        *out = jj_int((int64_t)json_integer_value(j));
        return 0;
    case JSON_REAL:
        *out = jj_float(json_real_value(j));
        return 0;
    case JSON_STRING: {
        const struct jj_str *s = jj_str_new(&rc->pool, json_string_value(j), json_string_length(j));
        if (!s) {
            return jj_oom(rc, NULL);
        }
        *out = jj_strv(s);
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        struct jj_list *l = jj_list_new(&rc->pool, n);
        if (!l) {
            return jj_oom(rc, NULL);
        }
        for (size_t i = 0; i < n; i++) {
            int r = from_json(rc, json_array_get(j, i), &l->v[i], depth + 1);
            if (r < 0) {
                return r;
            }
        }
        l->n = n;
        out->t = JJ_LIST;
        out->u.l = l;
        return 0;
    }
    case JSON_OBJECT: {
        struct jj_dict *d = jj_dict_new(&rc->pool);
        if (!d) {
            return jj_oom(rc, NULL);
        }
        const char *key;
        size_t klen;
        json_t *val;
        json_object_keylen_foreach(j, key, klen, val) {
            struct jj_val v;
            int r = from_json(rc, val, &v, depth + 1);
            if (r < 0) {
                return r;
            }
            const struct jj_str *k = jj_str_new(&rc->pool, key, klen);
            if (!k || jj_dict_set(&rc->pool, d, jj_strv(k), v) < 0) {
                return jj_oom(rc, NULL);
            }
        }
        out->t = JJ_DICT;
        out->u.d = d;
        return 0;
    }
    }
    return kc_error_set(rc->err, KC_EINVAL, "template context: unknown JSON value");
}

int eng_jinja_render(const struct eng_jinja *t, const char *ctx_json, size_t ctx_len,
                     const struct eng_jinja_opts *opts, char **out, size_t *out_len,
                     struct kc_error *err) {
    struct jj_rc rc;
    memset(&rc, 0, sizeof(rc));
    rc.err = err;
    rc.max_output = opts && opts->max_output ? opts->max_output : JJ_DEFAULT_MAX_OUTPUT;
    rc.max_steps = opts && opts->max_steps ? opts->max_steps : JJ_DEFAULT_MAX_STEPS;
    rc.max_depth = opts && opts->max_depth > 0 ? opts->max_depth : JJ_DEFAULT_MAX_DEPTH;
    rc.now = opts && opts->now_unix ? opts->now_unix : (int64_t)time(NULL);
    /* Memory: the context, the output and what the template builds along the way. */
    size_t cap = (size_t)64 << 20;
    if (rc.max_output <= ((size_t)1 << 30) / 64 && rc.max_output * 64 > cap) {
        cap = rc.max_output * 64;
    } else if (rc.max_output > ((size_t)1 << 30) / 64) {
        cap = (size_t)1 << 30;
    }
    size_t ctx_cap;
    if (kc_size_mul(ctx_len, 8, &ctx_cap) && kc_size_add(cap, ctx_cap, &ctx_cap)) {
        cap = ctx_cap;
    }
    jj_pool_init(&rc.pool, cap);
    rc.s_loop = jj_str_new(&rc.pool, "loop", 4);
    rc.s_varargs = jj_str_new(&rc.pool, "varargs", 7);
    rc.s_kwargs = jj_str_new(&rc.pool, "kwargs", 6);
    rc.s_caller = jj_str_new(&rc.pool, "caller", 6);
    if (!rc.s_loop || !rc.s_varargs || !rc.s_kwargs || !rc.s_caller) {
        jj_pool_free(&rc.pool);
        return kc_error_set(err, KC_ENOMEM, "template: out of memory");
    }
    if (!t || !t->root || (!ctx_json && ctx_len)) {
        jj_pool_free(&rc.pool);
        return kc_error_set(err, KC_EINVAL, "template: bad arguments");
    }
    json_error_t jerr;
    json_t *root = json_loadb(ctx_json ? ctx_json : "", ctx_len, JSON_ALLOW_NUL, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        jj_pool_free(&rc.pool);
        return kc_error_set(err, KC_EINVAL, "template context is not a JSON object%s%s",
                            root ? "" : ": ", root ? "" : jerr.text);
    }
    struct jj_val ctx;
    int r = from_json(&rc, root, &ctx, 0);
    json_decref(root);
    struct jj_buf b;
    jj_buf_init(&b, &rc.pool, rc.max_output);
    if (r == 0) {
        rc.ctx = ctx.u.d;
        struct jj_frame *top = frame_new(&rc, NULL);
        r = top ? exec_body(&rc, t->root, top, &b) : jj_oom(&rc, NULL);
    }
    if (r == 0) {
        char *s = malloc(b.len + 1);
        if (!s) {
            r = kc_error_set(err, KC_ENOMEM, "template: out of memory");
        } else {
            if (b.len) {
                memcpy(s, b.p, b.len);
            }
            s[b.len] = 0;
            *out = s;
            *out_len = b.len;
        }
    }
    jj_pool_free(&rc.pool);
    return r;
}
