/*
 * jinja_internal.h — shared by the Jinja engine's files (tokenizer/jinja_*.c) and its white-box
 * tests: the memory pool, values, the syntax tree, and the entry points of each part.
 *
 *   jinja_parse.c    source -> tokens -> syntax tree (struct jj_node), owned by struct eng_jinja
 *   jinja_value.c    pools, strings (UTF-8 helpers), lists, dicts, Python-style str()/repr(),
 *                    json.dumps, equality and ordering
 *   jinja_eval.c     the renderer: statements, expressions, scopes, limits, eng_jinja_render()
 *   jinja_builtins.c filters, tests, methods and global functions
 *
 * DESIGN
 *  1. Every allocation of a render goes into its pool (struct jj_pool), which is freed whole at
 *     the end of the render: no value is reference-counted, nothing leaks on an error path, and
 *     the pool's byte cap bounds the memory any template can take.
 *  2. The syntax tree and its constants live in the template's own pool and are never written
 *     after parsing, so renders share them across threads. Render-time values may point into
 *     the tree (constant strings) because strings are immutable.
 *  3. Lists, tuples and dicts made from the JSON context or by the template are never mutated
 *     after construction (the immutable sandbox's rule); only namespaces change (set ns.x).
 *  4. Every node records its depth; the parser refuses depth > ENG_JINJA_MAX_NESTING, so the
 *     evaluator's recursion is bounded by that times the call depth limit.
 */
#ifndef ENG_JINJA_INTERNAL_H
#define ENG_JINJA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "tokenizer/jinja.h"

/* ---- memory pool ---------------------------------------------------------------------- */

struct jj_block;
struct jj_pool {
    struct jj_block *head; /* every live allocation, doubly linked */
    size_t used;           /* bytes handed out and not freed */
    size_t cap;            /* jj_alloc fails beyond this */
};
void jj_pool_init(struct jj_pool *p, size_t cap);
void jj_pool_free(struct jj_pool *p);
/* Zeroed allocation of n bytes; NULL when the cap is reached or malloc fails. */
void *jj_alloc(struct jj_pool *p, size_t n);
/* Resizes an allocation of this pool (ptr NULL = alloc); NULL on failure (ptr stays valid). */
void *jj_realloc(struct jj_pool *p, void *ptr, size_t n);
void jj_free(struct jj_pool *p, void *ptr);

/* ---- values --------------------------------------------------------------------------- */

enum jj_type {
    JJ_UNDEF = 0,
    JJ_NONE,
    JJ_BOOL,
    JJ_INT,
    JJ_FLOAT,
    JJ_STR,
    JJ_LIST,
    JJ_TUPLE,
    JJ_DICT,
    JJ_NS,     /* namespace(): a dict whose attributes may be set */
    JJ_MACRO,  /* a macro or a call block's caller */
    JJ_FUNC,   /* a global function (range, namespace, ...): v.i is its id */
    JJ_METHOD, /* a bound method: v.m */
    JJ_LOOP,   /* the loop variable of a for */
};

struct jj_str {
    size_t len; /* bytes, not counting the NUL */
    char s[];   /* UTF-8 (not validated), NUL-terminated */
};

struct jj_list;
struct jj_dict;
struct jj_macro;
struct jj_method;
struct jj_loop;

struct jj_val {
    enum jj_type t;
    union {
        bool b;
        int64_t i;
        double f;
        const struct jj_str *s; /* JJ_STR; for JJ_UNDEF the name that was missing, or NULL */
        struct jj_list *l;
        struct jj_dict *d;
        struct jj_macro *mac;
        struct jj_method *m;
        struct jj_loop *loop;
    } u;
};

struct jj_list {
    size_t n, cap;
    struct jj_val *v;
};

struct jj_dict {
    size_t n, cap;
    struct jj_val *k, *v;
    uint32_t *ht; /* open-addressing index (entry+1, 0 = empty) once n > 8; NULL before */
    size_t htcap;
};

struct jj_method {
    struct jj_val self;
    int id; /* enum in jinja_builtins.c */
};

/* Value constructors. */
static inline struct jj_val jj_undef(const struct jj_str *name) {
    struct jj_val v = {.t = JJ_UNDEF};
    v.u.s = name;
    return v;
}
static inline struct jj_val jj_none(void) {
    struct jj_val v = {.t = JJ_NONE};
    return v;
}
static inline struct jj_val jj_bool(bool b) {
    struct jj_val v = {.t = JJ_BOOL};
    v.u.b = b;
    return v;
}
static inline struct jj_val jj_int(int64_t i) {
    struct jj_val v = {.t = JJ_INT};
    v.u.i = i;
    return v;
}
static inline struct jj_val jj_float(double f) {
    struct jj_val v = {.t = JJ_FLOAT};
    v.u.f = f;
    return v;
}
static inline struct jj_val jj_strv(const struct jj_str *s) {
    struct jj_val v = {.t = JJ_STR};
    v.u.s = s;
    return v;
}

/* memcpy of n values that accepts NULL pointers when n is 0. */
static inline void jj_copy_vals(struct jj_val *dst, const struct jj_val *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dst[i] = src[i];
    }
}

/* Strings. NULL return = out of pool memory. */
struct jj_str *jj_str_new(struct jj_pool *p, const char *s, size_t len);
/* A growable byte buffer in a pool; max bounds its length (0 = no bound but the pool's). */
struct jj_buf {
    struct jj_pool *pool;
    char *p;
    size_t len, cap, max;
    bool over; /* len would have exceeded max */
    bool oom;  /* the pool refused memory */
};
void jj_buf_init(struct jj_buf *b, struct jj_pool *p, size_t max);
/* Append; false (with over or oom set) on failure. */
bool jj_buf_add(struct jj_buf *b, const char *s, size_t n);
bool jj_buf_addc(struct jj_buf *b, char c);
bool jj_buf_addf(struct jj_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The buffer as a string of the pool (NULL on oom); the buffer is left empty. */
struct jj_str *jj_buf_str(struct jj_buf *b);

/* UTF-8 helpers. Invalid bytes count as one code point each (Python would have refused them
 * at json.loads time; we only need to never crash). */
size_t jj_utf8_len(const char *s, size_t n);
/* Decodes one code point at s[*i] (advancing *i); invalid bytes decode as themselves. */
uint32_t jj_utf8_next(const char *s, size_t n, size_t *i);
/* Byte offset of code point index cp (clamped to n). */
size_t jj_utf8_offset(const char *s, size_t n, size_t cp);
/* Encodes cp into out (4 bytes room); returns the byte count. */
size_t jj_utf8_put(char *out, uint32_t cp);
/* Python's str.isspace() for one code point. */
bool jj_is_space(uint32_t cp);
uint32_t jj_to_upper(uint32_t cp);
uint32_t jj_to_lower(uint32_t cp);
bool jj_is_alpha(uint32_t cp);

/* Lists and dicts (false = out of memory). */
struct jj_list *jj_list_new(struct jj_pool *p, size_t cap);
bool jj_list_push(struct jj_pool *p, struct jj_list *l, struct jj_val v);
struct jj_dict *jj_dict_new(struct jj_pool *p);
/* Inserts or replaces key k. Returns 0, KC_ENOMEM, or KC_EINVAL when k is unhashable. */
int jj_dict_set(struct jj_pool *p, struct jj_dict *d, struct jj_val k, struct jj_val v);
/* Whether k can be a dict key (Python's hashable: scalars and tuples of them). */
bool jj_hashable(struct jj_val k);
/* The value for key k, or NULL. */
struct jj_val *jj_dict_get(const struct jj_dict *d, struct jj_val k);
struct jj_val *jj_dict_get_str(const struct jj_dict *d, const char *key, size_t len);

/* Python truthiness. */
bool jj_truthy(struct jj_val v);
/* Python ==, with depth bound for nested containers (false when too deep). */
bool jj_equal(struct jj_val a, struct jj_val b);
/* Python ordering for <, sort, min, max: sets *cmp to -1/0/1; KC_EINVAL when the two types do
 * not order (e.g. str < int). */
int jj_compare(struct jj_val a, struct jj_val b, int *cmp);
/* The type name Python would give ("str", "int", "dict", ...). */
const char *jj_type_name(struct jj_val v);

/* str(v) appended to b (depth-bounded: false with *too_deep set on a cycle-like depth). */
bool jj_val_str(struct jj_buf *b, struct jj_val v, int depth);
/* repr(v) appended to b. */
bool jj_val_repr(struct jj_buf *b, struct jj_val v, int depth);
/* repr of a float, as Python prints it. */
void jj_float_repr(char out[40], double f);
/* json.dumps options. */
struct jj_json_opts {
    bool ensure_ascii;
    bool sort_keys;
    const char *indent; /* NULL = no indent (else the indent unit) */
    size_t indent_len;
    const char *item_sep, *key_sep; /* as separators=(item, key) */
    size_t item_sep_len, key_sep_len;
};
/* json.dumps(v) appended to b. Returns 0, KC_EINVAL (with *what naming a type that is not
 * JSON serializable), KC_ERANGE (nesting too deep) or KC_ENOMEM. */
int jj_val_json(struct jj_buf *b, struct jj_val v, const struct jj_json_opts *o, int depth,
                const char **what);

/* Deepest nesting of values that str/repr/json/== walk (Python's recursion limit is ~1000). */
#define JJ_MAX_VALUE_DEPTH 512

/* ---- syntax tree ---------------------------------------------------------------------- */

enum jj_nk {
    /* expressions */
    JN_CONST,   /* val */
    JN_NAME,    /* name */
    JN_LIST,    /* kids */
    JN_TUPLE,   /* kids */
    JN_DICT,    /* kids: key, value, key, value, ... */
    JN_GETATTR, /* a.name */
    JN_GETITEM, /* a[b] */
    JN_SLICE,   /* a[kids[0]:kids[1]:kids[2]] (NULL kids = omitted) */
    JN_CALL,    /* a(kids), names[i] = keyword or NULL */
    JN_FILTER,  /* a|name(kids) (a NULL = the captured body of a filter block / block set) */
    JN_TEST,    /* a is [not (op=1)] name(kids) */
    JN_BINOP,   /* a op b; op is a JJ_OP_* */
    JN_NEG,     /* -a */
    JN_POS,     /* +a */
    JN_NOT,     /* not a */
    JN_AND,     /* a and b */
    JN_OR,      /* a or b */
    JN_COMPARE, /* a ops[0] kids[0] ops[1] kids[1] ... */
    JN_COND,    /* b if a else c (c may be NULL) */
    /* statements */
    JN_BODY,        /* kids */
    JN_TEXT,        /* val (a string) */
    JN_OUTPUT,      /* {{ a }} */
    JN_IF,          /* if a: body else: els (els may hold one JN_IF for elif) */
    JN_FOR,         /* for a in b [if c]: body else: els */
    JN_SET,         /* set a = b (a: NAME, TUPLE of NAMEs, or GETATTR of a NAME) */
    JN_SETBLOCK,    /* set a %}body{% endset (c: filter chain or NULL) */
    JN_MACRO,       /* macro name(names = kids defaults): body */
    JN_CALLBLOCK,   /* call(names = kids defaults) a: body */
    JN_FILTERBLOCK, /* filter c: body */
    JN_WITH,        /* with names = kids: body */
    JN_BREAK,
    JN_CONTINUE,
};

enum jj_op {
    JJ_OP_ADD = 1,
    JJ_OP_SUB,
    JJ_OP_MUL,
    JJ_OP_DIV,
    JJ_OP_FLOORDIV,
    JJ_OP_MOD,
    JJ_OP_POW,
    JJ_OP_CONCAT,
    JJ_OP_EQ,
    JJ_OP_NE,
    JJ_OP_LT,
    JJ_OP_LE,
    JJ_OP_GT,
    JJ_OP_GE,
    JJ_OP_IN,
    JJ_OP_NOTIN,
};

struct jj_node {
    enum jj_nk kind;
    int op;
    int line, col;
    int depth; /* 1 + deepest child */
    struct jj_node *a, *b, *c;
    struct jj_node *body, *els;
    struct jj_node **kids;
    int nkids;
    int *ops;                  /* JN_COMPARE */
    const struct jj_str *name; /* names, attributes, filter/test/macro names */
    const struct jj_str **names;
    struct jj_val val;
};

struct eng_jinja {
    struct jj_pool pool; /* the tree and its constants */
    struct jj_node *root;
};

/* ---- the renderer's entry points for builtins ------------------------------------------ */

struct jj_rc; /* one render's state (jinja_eval.c) */

/* Call arguments, already evaluated. */
struct jj_args {
    int n;
    struct jj_val *v;
    const struct jj_str **names; /* per argument: keyword or NULL */
};

struct jj_pool *jj_rc_pool(struct jj_rc *rc);
/* Records a runtime error at node n ("template:L:C: ...") and returns code. */
int jj_fail(struct jj_rc *rc, const struct jj_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int jj_oom(struct jj_rc *rc, const struct jj_node *n);
/* Counts one step (loop iteration or call); KC_ERANGE beyond the limit. */
int jj_step(struct jj_rc *rc, const struct jj_node *n);
/* Calls a callable value (macro, function, method) with arguments. */
int jj_call_value(struct jj_rc *rc, const struct jj_node *n, struct jj_val fn,
                  const struct jj_args *args, struct jj_val *out);
/* raise_exception: err->msg exactly msg. */
int jj_raise(struct jj_rc *rc, const struct jj_str *msg);
int64_t jj_rc_now(struct jj_rc *rc);
/* Attribute lookup in jinja2's order (getattr, then item): undefined when missing. */
int jj_getattr(struct jj_rc *rc, const struct jj_node *n, struct jj_val obj,
               const struct jj_str *name, struct jj_val *out);
/* Item lookup in jinja2's order (item, then getattr for string keys). */
int jj_getitem(struct jj_rc *rc, const struct jj_node *n, struct jj_val obj, struct jj_val key,
               struct jj_val *out);
/* The list of items of an iterable (str: code points, dict: keys, undefined: empty); error when
 * not iterable. */
int jj_iterate(struct jj_rc *rc, const struct jj_node *n, struct jj_val v, struct jj_list **out);
/* str(v) as a string value. */
int jj_to_str(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
              const struct jj_str **out);

/* jinja_builtins.c */
int jj_filter_apply(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *name,
                    struct jj_val v, const struct jj_args *args, struct jj_val *out);
int jj_test_apply(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *name,
                  struct jj_val v, const struct jj_args *args, bool *out);
bool jj_filter_exists(const char *name, size_t len);
bool jj_test_exists(const char *name, size_t len);
/* A method of a value by name (str, dict, list methods): JJ_METHOD or undefined. */
bool jj_method_lookup(struct jj_pool *p, struct jj_val self, const struct jj_str *name,
                      struct jj_val *out);
int jj_method_call(struct jj_rc *rc, const struct jj_node *n, const struct jj_method *m,
                   const struct jj_args *args, struct jj_val *out);
/* Global functions by name (range, namespace, dict, raise_exception, strftime_now, ...). */
bool jj_global_lookup(const char *name, size_t len, struct jj_val *out);
int jj_global_call(struct jj_rc *rc, const struct jj_node *n, int id, const struct jj_args *args,
                   struct jj_val *out);

#endif /* ENG_JINJA_INTERNAL_H */
