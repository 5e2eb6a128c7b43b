/*
 * jinja_builtins.c — the Jinja engine's library: filters, tests, methods of str/dict/list and
 * the global functions (range, namespace, dict, raise_exception, strftime_now), each with the
 * semantics of jinja2 3.1 and Python 3 that transformers' chat templates rely on.
 *
 * Place in the data flow: called by the renderer (jinja_eval.c) for `x|f(...)`, `x is t(...)`,
 * `x.method(...)` and `f(...)`. The parser asks jj_filter_exists/jj_test_exists so that an
 * unknown filter or test is a parse error, as in jinja2.
 */
#define _POSIX_C_SOURCE 200809L /* gmtime_r */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/jinja_internal.h"

/* ---- argument helpers ----------------------------------------------------------------- */

/* Binds positional and keyword arguments to a signature: names[i] for slot i; *vals gets the
 * given values (JJ_UNDEF with .u.s == NULL and given[i] false when absent). */
static int bind(struct jj_rc *rc, const struct jj_node *n, const char *fname,
                const struct jj_args *a, const char *const *names, int nslots, struct jj_val *vals,
                bool *given) {
    for (int i = 0; i < nslots; i++) {
        vals[i] = jj_undef(NULL);
        given[i] = false;
    }
    int pos = 0;
    for (int i = 0; i < a->n; i++) {
        const struct jj_str *kw = a->names ? a->names[i] : NULL;
        int slot = -1;
        if (kw) {
            for (int k = 0; k < nslots; k++) {
                if (strlen(names[k]) == kw->len && !memcmp(names[k], kw->s, kw->len)) {
                    slot = k;
                    break;
                }
            }
            if (slot < 0) {
                return jj_fail(rc, n, KC_EINVAL, "%s() got an unexpected keyword argument '%s'",
                               fname, kw->s);
            }
        } else {
            slot = pos++;
            if (slot >= nslots) {
                return jj_fail(rc, n, KC_EINVAL, "%s() takes at most %d argument(s)", fname,
                               nslots);
            }
        }
        if (given[slot]) {
            return jj_fail(rc, n, KC_EINVAL, "%s() got multiple values for argument '%s'", fname,
                           names[slot]);
        }
        vals[slot] = a->v[i];
        given[slot] = true;
    }
    return 0;
}

#define BIND(fname, ...)                                                                           \
    static const char *const names_[] = {__VA_ARGS__};                                             \
    enum { NSLOT_ = sizeof(names_) / sizeof(names_[0]) };                                          \
    struct jj_val av[NSLOT_];                                                                      \
    bool ag[NSLOT_];                                                                               \
    do {                                                                                           \
        int br_ = bind(rc, n, fname, args, names_, NSLOT_, av, ag);                                \
        if (br_ < 0) {                                                                             \
            return br_;                                                                            \
        }                                                                                          \
    } while (0)

#define NOARGS(fname)                                                                              \
    do {                                                                                           \
        if (args->n != 0) {                                                                        \
            return jj_fail(rc, n, KC_EINVAL, "%s() takes no arguments", fname);                    \
        }                                                                                          \
    } while (0)

static int need_str(struct jj_rc *rc, const struct jj_node *n, const char *what, struct jj_val v,
                    const struct jj_str **out) {
    if (v.t != JJ_STR) {
        if (v.t == JJ_UNDEF && v.u.s) {
            return jj_fail(rc, n, KC_EINVAL, "'%s' is undefined", v.u.s->s);
        }
        return jj_fail(rc, n, KC_EINVAL, "%s must be str, not %s", what, jj_type_name(v));
    }
    *out = v.u.s;
    return 0;
}

static bool as_int(struct jj_val v, int64_t *out) {
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

static int need_int(struct jj_rc *rc, const struct jj_node *n, const char *what, struct jj_val v,
                    int64_t *out) {
    if (!as_int(v, out)) {
        return jj_fail(rc, n, KC_EINVAL, "%s must be an integer, not %s", what, jj_type_name(v));
    }
    return 0;
}

static int mkstr(struct jj_rc *rc, const struct jj_node *n, const char *s, size_t len,
                 struct jj_val *out) {
    const struct jj_str *r = jj_str_new(jj_rc_pool(rc), s, len);
    if (!r) {
        return jj_oom(rc, n);
    }
    *out = jj_strv(r);
    return 0;
}

static int buf_done(struct jj_rc *rc, const struct jj_node *n, struct jj_buf *b,
                    struct jj_val *out) {
    if (b->over) {
        return jj_fail(rc, n, KC_ERANGE, "value nested too deeply or too large");
    }
    const struct jj_str *s = jj_buf_str(b);
    if (!s) {
        return jj_oom(rc, n);
    }
    *out = jj_strv(s);
    return 0;
}

static int list_val(struct jj_rc *rc, const struct jj_node *n, struct jj_list *l,
                    struct jj_val *out) {
    if (!l) {
        return jj_oom(rc, n);
    }
    out->t = JJ_LIST;
    out->u.l = l;
    return 0;
}

static struct jj_val tuple2(struct jj_rc *rc, struct jj_val a, struct jj_val b, bool *ok) {
    struct jj_list *l = jj_list_new(jj_rc_pool(rc), 2);
    struct jj_val v = {.t = JJ_TUPLE};
    *ok = l != NULL;
    if (l) {
        l->v[0] = a;
        l->v[1] = b;
        l->n = 2;
    }
    v.u.l = l;
    return v;
}

/* ---- string helpers ------------------------------------------------------------------- */

static bool in_chars(uint32_t c, const struct jj_str *chars) {
    size_t i = 0;
    while (i < chars->len) {
        if (jj_utf8_next(chars->s, chars->len, &i) == c) {
            return true;
        }
    }
    return false;
}

/* str.strip/lstrip/rstrip: which = 1 left, 2 right, 3 both; chars NULL = whitespace. */
static int do_strip(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s,
                    const struct jj_str *chars, int which, struct jj_val *out) {
    size_t a = 0, b = s->len;
    if (which & 1) {
        while (a < b) {
            size_t k = a;
            uint32_t c = jj_utf8_next(s->s, s->len, &k);
            if (chars ? !in_chars(c, chars) : !jj_is_space(c)) {
                break;
            }
            a = k;
        }
    }
    if (which & 2) {
        /* Walk forward, remembering the end of the last kept code point. */
        size_t i = a, end = a;
        while (i < b) {
            uint32_t c = jj_utf8_next(s->s, s->len, &i);
            if (chars ? !in_chars(c, chars) : !jj_is_space(c)) {
                end = i;
            }
        }
        b = end;
    }
    if (a == 0 && b == s->len) {
        *out = jj_strv(s);
        return 0;
    }
    return mkstr(rc, n, s->s + a, b - a, out);
}

enum { CASE_UPPER, CASE_LOWER, CASE_SWAP, CASE_TITLE, CASE_CAPITALIZE };

static int do_case(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s, int mode,
                   struct jj_val *out) {
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    size_t i = 0;
    bool prev_cased = false, first = true;
    while (i < s->len) {
        size_t st = i;
        uint32_t c = jj_utf8_next(s->s, s->len, &i), o = c;
        bool cased = jj_is_alpha(c);
        switch (mode) {
        case CASE_UPPER:
            o = jj_to_upper(c);
            break;
        case CASE_LOWER:
            o = jj_to_lower(c);
            break;
        case CASE_SWAP:
            o = jj_to_upper(c) != c ? jj_to_upper(c) : jj_to_lower(c);
            break;
        case CASE_TITLE:
            o = prev_cased ? jj_to_lower(c) : jj_to_upper(c);
            break;
        case CASE_CAPITALIZE:
            o = first ? jj_to_upper(c) : jj_to_lower(c);
            break;
        }
        prev_cased = cased;
        first = false;
        if (o == c) {
            jj_buf_add(&b, s->s + st, i - st);
        } else {
            char u[4];
            jj_buf_add(&b, u, jj_utf8_put(u, o));
        }
    }
    return buf_done(rc, n, &b, out);
}

/* Byte offset of the first occurrence of needle in h at or after from (SIZE_MAX = none). */
static size_t find_bytes(const char *h, size_t hn, const char *nd, size_t nn, size_t from) {
    if (nn == 0) {
        return from <= hn ? from : SIZE_MAX;
    }
    for (size_t i = from; i + nn <= hn; i++) {
        if (h[i] == nd[0] && memcmp(h + i, nd, nn) == 0) {
            return i;
        }
    }
    return SIZE_MAX;
}

static int do_replace(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s,
                      const struct jj_str *old, const struct jj_str *new_, int64_t count,
                      struct jj_val *out) {
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    if (old->len == 0) {
        /* Python inserts new before every code point and at the end. */
        size_t i = 0;
        int64_t done = 0;
        while (i <= s->len) {
            if (count < 0 || done < count) {
                jj_buf_add(&b, new_->s, new_->len);
                done++;
            }
            if (i == s->len) {
                break;
            }
            size_t st = i;
            jj_utf8_next(s->s, s->len, &i);
            jj_buf_add(&b, s->s + st, i - st);
        }
        return buf_done(rc, n, &b, out);
    }
    size_t pos = 0;
    int64_t done = 0;
    while (count < 0 || done < count) {
        size_t k = find_bytes(s->s, s->len, old->s, old->len, pos);
        if (k == SIZE_MAX) {
            break;
        }
        jj_buf_add(&b, s->s + pos, k - pos);
        jj_buf_add(&b, new_->s, new_->len);
        pos = k + old->len;
        done++;
    }
    jj_buf_add(&b, s->s + pos, s->len - pos);
    return buf_done(rc, n, &b, out);
}

/* str.split / rsplit. */
static int do_split(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s,
                    const struct jj_str *sep, int64_t maxsplit, bool right, struct jj_val *out) {
    struct jj_pool *p = jj_rc_pool(rc);
    struct jj_list *l = jj_list_new(p, 0);
    if (!l) {
        return jj_oom(rc, n);
    }
    if (sep && sep->len == 0) {
        return jj_fail(rc, n, KC_EINVAL, "empty separator");
    }
    /* Collect [start, end) pieces left to right; for rsplit with a limit, split from the right
     * by finding all separators first. */
    size_t cap = 16, np = 0;
    size_t *pieces = jj_alloc(p, cap * 2 * sizeof(size_t));
    if (!pieces) {
        return jj_oom(rc, n);
    }
#define ADD_PIECE(a_, b_)                                                                          \
    do {                                                                                           \
        if (np == cap) {                                                                           \
            cap *= 2;                                                                              \
            size_t *np_ = jj_realloc(p, pieces, cap * 2 * sizeof(size_t));                         \
            if (!np_) {                                                                            \
                return jj_oom(rc, n);                                                              \
            }                                                                                      \
            pieces = np_;                                                                          \
        }                                                                                          \
        pieces[2 * np] = (a_);                                                                     \
        pieces[2 * np + 1] = (b_);                                                                 \
        np++;                                                                                      \
    } while (0)
    if (!sep) {
        /* Whitespace runs; empty pieces dropped. */
        size_t i = 0;
        while (i < s->len) {
            size_t k = i;
            while (k < s->len) {
                size_t t = k;
                if (!jj_is_space(jj_utf8_next(s->s, s->len, &t))) {
                    break;
                }
                k = t;
            }
            if (k >= s->len) {
                break;
            }
            size_t st = k;
            while (k < s->len) {
                size_t t = k;
                if (jj_is_space(jj_utf8_next(s->s, s->len, &t))) {
                    break;
                }
                k = t;
            }
            ADD_PIECE(st, k);
            i = k;
        }
        if (maxsplit >= 0 && np > (size_t)maxsplit) {
            /* Re-join the surplus: the last piece runs to the end (or the first from the start
             * for rsplit), keeping the original text between pieces. */
            if (!right) {
                /* The remainder runs from the next word to the end of the string (its trailing
                 * whitespace kept), as Python's str.split(None, maxsplit). */
                size_t keep = (size_t)maxsplit;
                size_t end = s->len;
                size_t rest_start = pieces[2 * keep];
                np = keep;
                ADD_PIECE(rest_start, end);
            } else {
                size_t keep = (size_t)maxsplit;
                size_t first_start = 0;
                size_t first_end = pieces[2 * (np - keep - 1) + 1];
                size_t *tail = pieces + 2 * (np - keep);
                memmove(pieces + 2, tail, keep * 2 * sizeof(size_t));
                pieces[0] = first_start;
                pieces[1] = first_end;
                np = keep + 1;
            }
        }
    } else {
        size_t pos = 0;
        while (1) {
            size_t k = find_bytes(s->s, s->len, sep->s, sep->len, pos);
            if (k == SIZE_MAX) {
                break;
            }
            ADD_PIECE(pos, k);
            pos = k + sep->len;
        }
        ADD_PIECE(pos, s->len);
        if (maxsplit >= 0 && np > (size_t)maxsplit + 1) {
            size_t keep = (size_t)maxsplit;
            if (!right) {
                size_t rest_start = pieces[2 * keep];
                np = keep;
                ADD_PIECE(rest_start, s->len);
            } else {
                size_t first_end = pieces[2 * (np - keep - 1) + 1];
                size_t *tail = pieces + 2 * (np - keep);
                memmove(pieces + 2, tail, keep * 2 * sizeof(size_t));
                pieces[0] = 0;
                pieces[1] = first_end;
                np = keep + 1;
            }
        }
    }
#undef ADD_PIECE
    for (size_t i = 0; i < np; i++) {
        struct jj_val v;
        int r = mkstr(rc, n, s->s + pieces[2 * i], pieces[2 * i + 1] - pieces[2 * i], &v);
        if (r < 0) {
            return r;
        }
        if (!jj_list_push(p, l, v)) {
            return jj_oom(rc, n);
        }
    }
    jj_free(p, pieces);
    return list_val(rc, n, l, out);
}

/* Python's str.splitlines boundaries. */
static bool line_break(uint32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
           c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
}

static int do_splitlines(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s,
                         bool keepends, struct jj_list **out) {
    struct jj_pool *p = jj_rc_pool(rc);
    struct jj_list *l = jj_list_new(p, 0);
    if (!l) {
        return jj_oom(rc, n);
    }
    size_t i = 0, start = 0;
    while (i < s->len) {
        size_t st = i;
        uint32_t c = jj_utf8_next(s->s, s->len, &i);
        if (!line_break(c)) {
            continue;
        }
        size_t eol = i;
        if (c == '\r' && i < s->len && s->s[i] == '\n') {
            eol = ++i;
        }
        struct jj_val v;
        int r = mkstr(rc, n, s->s + start, (keepends ? eol : st) - start, &v);
        if (r < 0) {
            return r;
        }
        if (!jj_list_push(p, l, v)) {
            return jj_oom(rc, n);
        }
        start = i;
    }
    if (start < s->len) {
        struct jj_val v;
        int r = mkstr(rc, n, s->s + start, s->len - start, &v);
        if (r < 0) {
            return r;
        }
        if (!jj_list_push(p, l, v)) {
            return jj_oom(rc, n);
        }
    }
    *out = l;
    return 0;
}

/* The format strings below are built from a template's conversion spec, checked character by
 * character against the few flags, digits and conversions that are passed on. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"

/* printf-style formatting of one value for `fmt % args` (conversions s r d i f F e E g G x X o
 * c and %%). */
int jj_str_format_percent(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *fmt,
                          struct jj_val args, struct jj_val *out);
int jj_str_format_percent(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *fmt,
                          struct jj_val args, struct jj_val *out) {
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    size_t argi = 0, nargs = 1;
    const struct jj_val *argv = &args;
    bool mapping = args.t == JJ_DICT;
    if (args.t == JJ_TUPLE) {
        argv = args.u.l->v;
        nargs = args.u.l->n;
    }
    const char *s = fmt->s;
    size_t len = fmt->len;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            jj_buf_addc(&b, s[i]);
            continue;
        }
        if (++i >= len) {
            return jj_fail(rc, n, KC_EINVAL, "incomplete format");
        }
        struct jj_val v = jj_undef(NULL);
        bool have_key = false;
        if (s[i] == '(' && mapping) {
            size_t e = i + 1;
            while (e < len && s[e] != ')') {
                e++;
            }
            if (e >= len) {
                return jj_fail(rc, n, KC_EINVAL, "incomplete format key");
            }
            struct jj_val *got = jj_dict_get_str(args.u.d, s + i + 1, e - i - 1);
            if (!got) {
                return jj_fail(rc, n, KC_EINVAL, "format key not found");
            }
            v = *got;
            have_key = true;
            i = e + 1;
        }
        char spec[32];
        size_t sl = 0;
        spec[sl++] = '%';
        while (i < len && strchr("-+ #0", s[i]) && sl < 8) {
            spec[sl++] = s[i++];
        }
        while (i < len && s[i] >= '0' && s[i] <= '9' && sl < 16) {
            spec[sl++] = s[i++];
        }
        if (i < len && s[i] == '.') {
            spec[sl++] = s[i++];
            while (i < len && s[i] >= '0' && s[i] <= '9' && sl < 24) {
                spec[sl++] = s[i++];
            }
        }
        if (i >= len) {
            return jj_fail(rc, n, KC_EINVAL, "incomplete format");
        }
        char conv = s[i];
        if (conv == '%') {
            jj_buf_addc(&b, '%');
            continue;
        }
        if (!have_key) {
            if (mapping) {
                v = args;
            } else {
                if (argi >= nargs) {
                    return jj_fail(rc, n, KC_EINVAL, "not enough arguments for format string");
                }
                v = argv[argi++];
            }
        }
        char tmp[512];
        int64_t iv;
        double dv;
        switch (conv) {
        case 's':
        case 'r': {
            struct jj_buf sb;
            jj_buf_init(&sb, jj_rc_pool(rc), 0);
            if (!(conv == 's' ? jj_val_str(&sb, v, 0) : jj_val_repr(&sb, v, 0))) {
                return jj_oom(rc, n);
            }
            /* Width/precision in code points are rare; apply them in bytes via %s. */
            if (sl == 1) {
                jj_buf_add(&b, sb.p ? sb.p : "", sb.len);
            } else {
                spec[sl++] = 's';
                spec[sl] = 0;
                char *big = jj_alloc(jj_rc_pool(rc), sb.len + 256);
                if (!big) {
                    return jj_oom(rc, n);
                }
                int k = snprintf(big, sb.len + 256, spec, sb.p ? sb.p : "");
                jj_buf_add(&b, big, k < 0 ? 0 : (size_t)k < sb.len + 256 ? (size_t)k : sb.len);
            }
            continue;
        }
        case 'd':
        case 'i':
        case 'x':
        case 'X':
        case 'o':
        case 'c':
            if (!as_int(v, &iv)) {
                if (v.t == JJ_FLOAT && conv != 'c' && isfinite(v.u.f) && fabs(v.u.f) < 9e18) {
                    iv = (int64_t)v.u.f;
                } else {
                    return jj_fail(rc, n, KC_EINVAL, "%%%c format: a number is required, not %s",
                                   conv, jj_type_name(v));
                }
            }
            if (conv == 'c') {
                char u[4];
                if (iv < 0 || iv > 0x10FFFF) {
                    return jj_fail(rc, n, KC_EINVAL, "%%c arg not in range(0x110000)");
                }
                jj_buf_add(&b, u, jj_utf8_put(u, (uint32_t)iv));
                continue;
            }
            spec[sl++] = 'l';
            spec[sl++] = 'l';
            spec[sl++] = conv == 'i' ? 'd' : conv;
            spec[sl] = 0;
            snprintf(tmp, sizeof(tmp), spec, (long long)iv);
            jj_buf_add(&b, tmp, strlen(tmp));
            continue;
        case 'f':
        case 'F':
        case 'e':
        case 'E':
        case 'g':
        case 'G':
            if (v.t == JJ_FLOAT) {
                dv = v.u.f;
            } else if (as_int(v, &iv)) {
                dv = (double)iv;
            } else {
                return jj_fail(rc, n, KC_EINVAL, "must be real number, not %s", jj_type_name(v));
            }
            spec[sl++] = conv;
            spec[sl] = 0;
            snprintf(tmp, sizeof(tmp), spec, dv);
            jj_buf_add(&b, tmp, strlen(tmp));
            continue;
        default:
            return jj_fail(rc, n, KC_EINVAL, "unsupported format character '%c'", conv);
        }
    }
    /* Python only complains about unused arguments when they are not a mapping-like object
     * (a dict or a list: both have __getitem__). */
    if (!mapping && argi < nargs && args.t != JJ_LIST && args.t != JJ_UNDEF) {
        return jj_fail(rc, n, KC_EINVAL, "not all arguments converted during string formatting");
    }
    return buf_done(rc, n, &b, out);
}

#pragma GCC diagnostic pop

/* str.format with {} {0} {name} fields (no format specs). */
static int do_format(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *fmt,
                     const struct jj_args *args, struct jj_val *out) {
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    int auto_idx = 0;
    const char *s = fmt->s;
    size_t len = fmt->len;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '{' && i + 1 < len && s[i + 1] == '{') {
            jj_buf_addc(&b, '{');
            i++;
            continue;
        }
        if (s[i] == '}' && i + 1 < len && s[i + 1] == '}') {
            jj_buf_addc(&b, '}');
            i++;
            continue;
        }
        if (s[i] == '}') {
            return jj_fail(rc, n, KC_EINVAL, "single '}' encountered in format string");
        }
        if (s[i] != '{') {
            jj_buf_addc(&b, s[i]);
            continue;
        }
        size_t e = i + 1;
        while (e < len && s[e] != '}') {
            e++;
        }
        if (e >= len) {
            return jj_fail(rc, n, KC_EINVAL, "single '{' encountered in format string");
        }
        const char *field = s + i + 1;
        size_t fl = e - i - 1;
        if (memchr(field, ':', fl) || memchr(field, '!', fl) || memchr(field, '.', fl) ||
            memchr(field, '[', fl)) {
            return jj_fail(rc, n, KC_EINVAL, "format specs in str.format are not supported");
        }
        struct jj_val v = jj_undef(NULL);
        bool found = false;
        if (fl == 0 || (field[0] >= '0' && field[0] <= '9')) {
            int idx = fl == 0 ? auto_idx++ : atoi(field);
            int pos = 0;
            for (int k = 0; k < args->n; k++) {
                if (args->names && args->names[k]) {
                    continue;
                }
                if (pos++ == idx) {
                    v = args->v[k];
                    found = true;
                    break;
                }
            }
            if (!found) {
                return jj_fail(rc, n, KC_EINVAL, "Replacement index %d out of range", idx);
            }
        } else {
            for (int k = 0; k < args->n; k++) {
                if (args->names && args->names[k] && args->names[k]->len == fl &&
                    !memcmp(args->names[k]->s, field, fl)) {
                    v = args->v[k];
                    found = true;
                }
            }
            if (!found) {
                return jj_fail(rc, n, KC_EINVAL, "format key '%.*s' not given", (int)fl, field);
            }
        }
        if (!jj_val_str(&b, v, 0)) {
            return jj_oom(rc, n);
        }
        i = e;
    }
    return buf_done(rc, n, &b, out);
}

/* ---- methods -------------------------------------------------------------------------- */

enum {
    M_STARTSWITH = 1,
    M_ENDSWITH,
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_SPLIT,
    M_RSPLIT,
    M_SPLITLINES,
    M_UPPER,
    M_LOWER,
    M_TITLE,
    M_CAPITALIZE,
    M_SWAPCASE,
    M_REPLACE,
    M_FIND,
    M_RFIND,
    M_INDEX,
    M_COUNT,
    M_JOIN,
    M_FORMAT,
    M_ISDIGIT,
    M_ISALPHA,
    M_ISALNUM,
    M_ISSPACE,
    M_ISUPPER,
    M_ISLOWER,
    M_CENTER,
    M_ZFILL,
    M_LJUST,
    M_RJUST,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_GET,
    M_LIST_INDEX,
    M_LIST_COUNT,
    M_CYCLE,
    M_REMOVEPREFIX,
    M_REMOVESUFFIX,
    M_PARTITION,
    M_RPARTITION,
    M_RINDEX,
    M_CASEFOLD,
    M_ISNUMERIC,
    M_COPY,
};

struct method_def {
    const char *name;
    int id;
};

static const struct method_def STR_METHODS[] = {
    {"startswith", M_STARTSWITH},
    {"endswith", M_ENDSWITH},
    {"strip", M_STRIP},
    {"lstrip", M_LSTRIP},
    {"rstrip", M_RSTRIP},
    {"split", M_SPLIT},
    {"rsplit", M_RSPLIT},
    {"splitlines", M_SPLITLINES},
    {"upper", M_UPPER},
    {"lower", M_LOWER},
    {"title", M_TITLE},
    {"capitalize", M_CAPITALIZE},
    {"swapcase", M_SWAPCASE},
    {"replace", M_REPLACE},
    {"find", M_FIND},
    {"rfind", M_RFIND},
    {"index", M_INDEX},
    {"count", M_COUNT},
    {"join", M_JOIN},
    {"format", M_FORMAT},
    {"isdigit", M_ISDIGIT},
    {"isalpha", M_ISALPHA},
    {"isalnum", M_ISALNUM},
    {"isspace", M_ISSPACE},
    {"isupper", M_ISUPPER},
    {"islower", M_ISLOWER},
    {"center", M_CENTER},
    {"zfill", M_ZFILL},
    {"ljust", M_LJUST},
    {"rjust", M_RJUST},
    {"removeprefix", M_REMOVEPREFIX},
    {"removesuffix", M_REMOVESUFFIX},
    {"partition", M_PARTITION},
    {"rpartition", M_RPARTITION},
    {"rindex", M_RINDEX},
    {"casefold", M_CASEFOLD},
    {"isnumeric", M_ISNUMERIC},
    {"isdecimal", M_ISNUMERIC},
    {NULL, 0},
};
static const struct method_def DICT_METHODS[] = {
    {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES},
    {"get", M_GET},     {"copy", M_COPY}, {NULL, 0},
};
static const struct method_def LIST_METHODS[] = {
    {"index", M_LIST_INDEX},
    {"copy", M_COPY},
    {"count", M_LIST_COUNT},
    {NULL, 0},
};
static const struct method_def LOOP_METHODS[] = {
    {"cycle", M_CYCLE},
    {NULL, 0},
};

bool jj_method_lookup(struct jj_pool *p, struct jj_val self, const struct jj_str *name,
                      struct jj_val *out) {
    const struct method_def *defs = NULL;
    switch (self.t) {
    case JJ_STR:
        defs = STR_METHODS;
        break;
    case JJ_DICT:
        defs = DICT_METHODS;
        break;
    case JJ_LIST:
    case JJ_TUPLE:
        defs = LIST_METHODS;
        break;
    case JJ_LOOP:
        defs = LOOP_METHODS;
        break;
    default:
        return false;
    }
    for (int i = 0; defs[i].name; i++) {
        if (strlen(defs[i].name) == name->len && !memcmp(defs[i].name, name->s, name->len)) {
            struct jj_method *m = jj_alloc(p, sizeof(*m));
            if (!m) {
                return false;
            }
            m->self = self;
            m->id = defs[i].id;
            out->t = JJ_METHOD;
            out->u.m = m;
            return true;
        }
    }
    return false;
}

/* startswith/endswith with a str or a tuple of str. */
static int affix(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s,
                 struct jj_val what, bool end, bool *out) {
    const struct jj_val *items = &what;
    size_t count = 1;
    if (what.t == JJ_TUPLE) {
        items = what.u.l->v;
        count = what.u.l->n;
    }
    *out = false;
    for (size_t i = 0; i < count; i++) {
        const struct jj_str *a;
        int r = need_str(rc, n, end ? "endswith argument" : "startswith argument", items[i], &a);
        if (r < 0) {
            return r;
        }
        if (a->len <= s->len && memcmp(end ? s->s + s->len - a->len : s->s, a->s, a->len) == 0) {
            *out = true;
        }
    }
    return 0;
}

static int str_pad(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *s, int64_t width,
                   const struct jj_str *fill, int mode, struct jj_val *out) {
    /* mode 0 center, 1 ljust, 2 rjust */
    int64_t len = (int64_t)jj_utf8_len(s->s, s->len);
    if (width <= len) {
        *out = jj_strv(s);
        return 0;
    }
    if (width > (int64_t)(1 << 24)) {
        return jj_oom(rc, n);
    }
    int64_t marg = width - len, left;
    if (mode == 0) {
        left = marg / 2 + (marg & width & 1);
    } else {
        left = mode == 2 ? marg : 0;
    }
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    const char *fc = fill ? fill->s : " ";
    size_t fl = fill ? fill->len : 1;
    for (int64_t i = 0; i < left; i++) {
        jj_buf_add(&b, fc, fl);
    }
    jj_buf_add(&b, s->s, s->len);
    for (int64_t i = 0; i < marg - left; i++) {
        jj_buf_add(&b, fc, fl);
    }
    return buf_done(rc, n, &b, out);
}

static int str_method(struct jj_rc *rc, const struct jj_node *n, int id, const struct jj_str *s,
                      const struct jj_args *args, struct jj_val *out) {
    int r;
    switch (id) {
    case M_STARTSWITH:
    case M_ENDSWITH: {
        BIND(id == M_STARTSWITH ? "startswith" : "endswith", "prefix", "start", "end");
        bool res;
        const struct jj_str *sub = s;
        if (ag[1] || ag[2]) {
            int64_t ncp = (int64_t)jj_utf8_len(s->s, s->len), st = 0, en = ncp;
            if (ag[1] && av[1].t != JJ_NONE && (r = need_int(rc, n, "start", av[1], &st)) < 0) {
                return r;
            }
            if (ag[2] && av[2].t != JJ_NONE && (r = need_int(rc, n, "end", av[2], &en)) < 0) {
                return r;
            }
            if (st < 0) {
                st = st + ncp < 0 ? 0 : st + ncp;
            }
            if (en < 0) {
                en = en + ncp < 0 ? 0 : en + ncp;
            }
            if (en > ncp) {
                en = ncp;
            }
            if (st > ncp) {
                *out = jj_bool(false);
                return 0;
            }
            size_t a = jj_utf8_offset(s->s, s->len, (size_t)st);
            size_t b = en > st ? jj_utf8_offset(s->s, s->len, (size_t)en) : a;
            struct jj_val tmp;
            if ((r = mkstr(rc, n, s->s + a, b - a, &tmp)) < 0) {
                return r;
            }
            sub = tmp.u.s;
        }
        if ((r = affix(rc, n, sub, av[0], id == M_ENDSWITH, &res)) < 0) {
            return r;
        }
        *out = jj_bool(res);
        return 0;
    }
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        BIND("strip", "chars");
        const struct jj_str *chars = NULL;
        if (ag[0] && av[0].t != JJ_NONE && (r = need_str(rc, n, "strip arg", av[0], &chars)) < 0) {
            return r;
        }
        return do_strip(rc, n, s, chars, id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2, out);
    }
    case M_SPLIT:
    case M_RSPLIT: {
        BIND("split", "sep", "maxsplit");
        const struct jj_str *sep = NULL;
        int64_t maxsplit = -1;
        if (ag[0] && av[0].t != JJ_NONE && (r = need_str(rc, n, "separator", av[0], &sep)) < 0) {
            return r;
        }
        if (ag[1] && (r = need_int(rc, n, "maxsplit", av[1], &maxsplit)) < 0) {
            return r;
        }
        return do_split(rc, n, s, sep, maxsplit, id == M_RSPLIT, out);
    }
    case M_SPLITLINES: {
        BIND("splitlines", "keepends");
        struct jj_list *l;
        if ((r = do_splitlines(rc, n, s, ag[0] && jj_truthy(av[0]), &l)) < 0) {
            return r;
        }
        return list_val(rc, n, l, out);
    }
    case M_UPPER:
    case M_LOWER:
    case M_TITLE:
    case M_CAPITALIZE:
    case M_SWAPCASE: {
        NOARGS("upper");
        int mode = id == M_UPPER        ? CASE_UPPER
                   : id == M_LOWER      ? CASE_LOWER
                   : id == M_TITLE      ? CASE_TITLE
                   : id == M_CAPITALIZE ? CASE_CAPITALIZE
                                        : CASE_SWAP;
        return do_case(rc, n, s, mode, out);
    }
    case M_REPLACE: {
        BIND("replace", "old", "new", "count");
        const struct jj_str *o, *nw;
        int64_t count = -1;
        if ((r = need_str(rc, n, "replace() argument 1", av[0], &o)) < 0 ||
            (r = need_str(rc, n, "replace() argument 2", av[1], &nw)) < 0) {
            return r;
        }
        if (ag[2] && (r = need_int(rc, n, "count", av[2], &count)) < 0) {
            return r;
        }
        return do_replace(rc, n, s, o, nw, count, out);
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX:
    case M_COUNT: {
        BIND("find", "sub");
        const struct jj_str *sub;
        if ((r = need_str(rc, n, "substring", av[0], &sub)) < 0) {
            return r;
        }
        if (id == M_COUNT) {
            int64_t c = 0;
            if (sub->len == 0) {
                c = (int64_t)jj_utf8_len(s->s, s->len) + 1;
            } else {
                size_t pos = 0, k;
                while ((k = find_bytes(s->s, s->len, sub->s, sub->len, pos)) != SIZE_MAX) {
                    c++;
                    pos = k + sub->len;
                }
            }
            *out = jj_int(c);
            return 0;
        }
        size_t k = SIZE_MAX;
        if (id == M_RFIND) {
            for (size_t i = s->len + 1; i-- > 0;) {
                if (i + sub->len <= s->len && memcmp(s->s + i, sub->s, sub->len) == 0) {
                    k = i;
                    break;
                }
            }
        } else {
            k = find_bytes(s->s, s->len, sub->s, sub->len, 0);
        }
        if (k == SIZE_MAX) {
            if (id == M_INDEX) {
                return jj_fail(rc, n, KC_EINVAL, "substring not found");
            }
            *out = jj_int(-1);
            return 0;
        }
        *out = jj_int((int64_t)jj_utf8_len(s->s, k));
        return 0;
    }
    case M_JOIN: {
        BIND("join", "iterable");
        struct jj_list *items;
        if ((r = jj_iterate(rc, n, av[0], &items)) < 0) {
            return r;
        }
        struct jj_buf b;
        jj_buf_init(&b, jj_rc_pool(rc), 0);
        for (size_t i = 0; i < items->n; i++) {
            if (items->v[i].t != JJ_STR) {
                return jj_fail(rc, n, KC_EINVAL,
                               "sequence item %zu: expected str instance, %s found", i,
                               jj_type_name(items->v[i]));
            }
            if (i) {
                jj_buf_add(&b, s->s, s->len);
            }
            jj_buf_add(&b, items->v[i].u.s->s, items->v[i].u.s->len);
        }
        return buf_done(rc, n, &b, out);
    }
    case M_FORMAT:
        return do_format(rc, n, s, args, out);
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISALNUM:
    case M_ISSPACE:
    case M_ISUPPER:
    case M_ISLOWER: {
        NOARGS("isdigit");
        bool res = s->len > 0, any_cased = false;
        size_t i = 0;
        while (i < s->len) {
            uint32_t c = jj_utf8_next(s->s, s->len, &i);
            bool digit = c >= '0' && c <= '9';
            switch (id) {
            case M_ISDIGIT:
                res = res && digit;
                break;
            case M_ISALPHA:
                res = res && jj_is_alpha(c);
                break;
            case M_ISALNUM:
                res = res && (digit || jj_is_alpha(c));
                break;
            case M_ISSPACE:
                res = res && jj_is_space(c);
                break;
            case M_ISUPPER:
                if (jj_to_upper(c) != c) {
                    res = false;
                }
                any_cased = any_cased || jj_to_lower(c) != c;
                break;
            default:
                if (jj_to_lower(c) != c) {
                    res = false;
                }
                any_cased = any_cased || jj_to_upper(c) != c;
                break;
            }
        }
        if (id == M_ISUPPER || id == M_ISLOWER) {
            res = res && any_cased;
        }
        *out = jj_bool(res);
        return 0;
    }
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: {
        BIND(id == M_REMOVEPREFIX ? "removeprefix" : "removesuffix", "affix");
        const struct jj_str *a;
        if ((r = need_str(rc, n, "argument", av[0], &a)) < 0) {
            return r;
        }
        if (a->len > s->len) {
            *out = jj_strv(s);
            return 0;
        }
        if (id == M_REMOVEPREFIX && memcmp(s->s, a->s, a->len) == 0) {
            return mkstr(rc, n, s->s + a->len, s->len - a->len, out);
        }
        if (id == M_REMOVESUFFIX && a->len && memcmp(s->s + s->len - a->len, a->s, a->len) == 0) {
            return mkstr(rc, n, s->s, s->len - a->len, out);
        }
        *out = jj_strv(s);
        return 0;
    }
    case M_PARTITION:
    case M_RPARTITION: {
        BIND("partition", "sep");
        const struct jj_str *sep;
        if ((r = need_str(rc, n, "separator", av[0], &sep)) < 0) {
            return r;
        }
        if (sep->len == 0) {
            return jj_fail(rc, n, KC_EINVAL, "empty separator");
        }
        size_t k = SIZE_MAX;
        if (id == M_PARTITION) {
            k = find_bytes(s->s, s->len, sep->s, sep->len, 0);
        } else {
            for (size_t i = s->len - (sep->len <= s->len ? sep->len : s->len) + 1; i-- > 0;) {
                if (i + sep->len <= s->len && memcmp(s->s + i, sep->s, sep->len) == 0) {
                    k = i;
                    break;
                }
            }
        }
        struct jj_list *l = jj_list_new(jj_rc_pool(rc), 3);
        if (!l) {
            return jj_oom(rc, n);
        }
        struct jj_val parts[3];
        if (k == SIZE_MAX) {
            int empty_first = id == M_RPARTITION;
            if ((r = mkstr(rc, n, "", 0, &parts[1])) < 0) {
                return r;
            }
            parts[0] = empty_first ? parts[1] : jj_strv(s);
            parts[2] = empty_first ? jj_strv(s) : parts[1];
        } else if ((r = mkstr(rc, n, s->s, k, &parts[0])) < 0 ||
                   (r = mkstr(rc, n, s->s + k + sep->len, s->len - k - sep->len, &parts[2])) < 0) {
            return r;
        } else {
            parts[1] = jj_strv(sep);
        }
        jj_copy_vals(l->v, parts, 3);
        l->n = 3;
        out->t = JJ_TUPLE;
        out->u.l = l;
        return 0;
    }
    case M_RINDEX: {
        BIND("rindex", "sub");
        const struct jj_str *sub;
        if ((r = need_str(rc, n, "substring", av[0], &sub)) < 0) {
            return r;
        }
        for (size_t i = s->len + 1; i-- > 0;) {
            if (i + sub->len <= s->len && memcmp(s->s + i, sub->s, sub->len) == 0) {
                *out = jj_int((int64_t)jj_utf8_len(s->s, i));
                return 0;
            }
        }
        return jj_fail(rc, n, KC_EINVAL, "substring not found");
    }
    case M_CASEFOLD:
        NOARGS("casefold");
        return do_case(rc, n, s, CASE_LOWER, out);
    case M_ISNUMERIC: {
        NOARGS("isnumeric");
        bool res = s->len > 0;
        for (size_t i = 0; i < s->len; i++) {
            res = res && s->s[i] >= '0' && s->s[i] <= '9';
        }
        *out = jj_bool(res);
        return 0;
    }
    case M_CENTER:
    case M_LJUST:
    case M_RJUST:
    case M_ZFILL: {
        BIND("center", "width", "fillchar");
        int64_t w;
        const struct jj_str *fill = NULL;
        if ((r = need_int(rc, n, "width", av[0], &w)) < 0) {
            return r;
        }
        if (ag[1] && (r = need_str(rc, n, "fillchar", av[1], &fill)) < 0) {
            return r;
        }
        if (id == M_ZFILL) {
            int64_t len = (int64_t)jj_utf8_len(s->s, s->len);
            if (w <= len) {
                *out = jj_strv(s);
                return 0;
            }
            if (w > (1 << 24)) {
                return jj_oom(rc, n);
            }
            struct jj_buf b;
            jj_buf_init(&b, jj_rc_pool(rc), 0);
            size_t skip = s->len && (s->s[0] == '-' || s->s[0] == '+') ? 1 : 0;
            jj_buf_add(&b, s->s, skip);
            for (int64_t i = 0; i < w - len; i++) {
                jj_buf_addc(&b, '0');
            }
            jj_buf_add(&b, s->s + skip, s->len - skip);
            return buf_done(rc, n, &b, out);
        }
        return str_pad(rc, n, s, w, fill, id == M_CENTER ? 0 : id == M_LJUST ? 1 : 2, out);
    }
    default:
        return jj_fail(rc, n, KC_EINVAL, "unknown str method");
    }
}

int jj_method_call(struct jj_rc *rc, const struct jj_node *n, const struct jj_method *m,
                   const struct jj_args *args, struct jj_val *out) {
    struct jj_val self = m->self;
    struct jj_pool *p = jj_rc_pool(rc);
    int r;
    if (self.t == JJ_STR) {
        return str_method(rc, n, m->id, self.u.s, args, out);
    }
    switch (m->id) {
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        NOARGS("items");
        const struct jj_dict *d = self.u.d;
        struct jj_list *l = jj_list_new(p, d->n);
        if (!l) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < d->n; i++) {
            if (m->id == M_ITEMS) {
                bool ok;
                l->v[i] = tuple2(rc, d->k[i], d->v[i], &ok);
                if (!ok) {
                    return jj_oom(rc, n);
                }
            } else {
                l->v[i] = m->id == M_KEYS ? d->k[i] : d->v[i];
            }
        }
        l->n = d->n;
        return list_val(rc, n, l, out);
    }
    case M_GET: {
        BIND("get", "key", "default");
        if (!ag[0]) {
            return jj_fail(rc, n, KC_EINVAL, "get expected at least 1 argument, got 0");
        }
        struct jj_val *v = jj_dict_get(self.u.d, av[0]);
        *out = v ? *v : ag[1] ? av[1] : jj_none();
        return 0;
    }
    case M_COPY:
        NOARGS("copy");
        *out = self; /* containers are immutable once built (jinja_internal.h DESIGN 3) */
        return 0;
    case M_LIST_INDEX:
    case M_LIST_COUNT: {
        BIND("index", "value");
        int64_t c = 0;
        for (size_t i = 0; i < self.u.l->n; i++) {
            if (jj_equal(self.u.l->v[i], av[0])) {
                if (m->id == M_LIST_INDEX) {
                    *out = jj_int((int64_t)i);
                    return 0;
                }
                c++;
            }
        }
        if (m->id == M_LIST_INDEX) {
            return jj_fail(rc, n, KC_EINVAL, "value is not in list");
        }
        *out = jj_int(c);
        return 0;
    }
    case M_CYCLE: {
        if (args->n == 0) {
            return jj_fail(rc, n, KC_EINVAL, "no items for cycling given");
        }
        struct jj_val idx;
        static const struct jj_str *none_name = NULL;
        (void)none_name;
        struct jj_str *nm = jj_str_new(p, "index0", 6);
        if (!nm) {
            return jj_oom(rc, n);
        }
        if ((r = jj_getattr(rc, n, self, nm, &idx)) < 0) {
            return r;
        }
        *out = args->v[idx.u.i % args->n];
        return 0;
    }
    default:
        return jj_fail(rc, n, KC_EINVAL, "unknown method");
    }
}

/* ---- globals -------------------------------------------------------------------------- */

enum { G_RANGE = 1, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME };

static const struct {
    const char *name;
    int id;
} GLOBALS[] = {
    {"range", G_RANGE},           {"namespace", G_NAMESPACE},   {"dict", G_DICT},
    {"raise_exception", G_RAISE}, {"strftime_now", G_STRFTIME}, {NULL, 0},
};

bool jj_global_lookup(const char *name, size_t len, struct jj_val *out) {
    for (int i = 0; GLOBALS[i].name; i++) {
        if (strlen(GLOBALS[i].name) == len && !memcmp(GLOBALS[i].name, name, len)) {
            out->t = JJ_FUNC;
            out->u.i = GLOBALS[i].id;
            return true;
        }
    }
    return false;
}

/* Python's datetime.strftime at a UTC time: %f is microseconds (0), %z and %Z are empty for a
 * naive datetime; everything else is the C library's strftime in the C locale. */
static int do_strftime(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *fmt,
                       struct jj_val *out) {
    time_t t = (time_t)jj_rc_now(rc);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        return jj_fail(rc, n, KC_EINVAL, "strftime_now: time out of range");
    }
    struct jj_buf pre, b;
    jj_buf_init(&pre, jj_rc_pool(rc), 0);
    for (size_t i = 0; i < fmt->len; i++) {
        if (fmt->s[i] == '%' && i + 1 < fmt->len) {
            char c = fmt->s[i + 1];
            if (c == 'f') {
                jj_buf_add(&pre, "000000", 6);
                i++;
                continue;
            }
            if (c == 'z' || c == 'Z') {
                i++;
                continue;
            }
            jj_buf_add(&pre, fmt->s + i, 2);
            i++;
            continue;
        }
        jj_buf_addc(&pre, fmt->s[i]);
    }
    const struct jj_str *f2 = jj_buf_str(&pre);
    if (!f2) {
        return jj_oom(rc, n);
    }
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    /* strftime returns 0 for both "empty" and "too small": format piece by piece instead, so
     * each call's output is bounded by one conversion. */
    for (size_t i = 0; i < f2->len;) {
        size_t j = i;
        if (f2->s[j] == '%' && j + 1 < f2->len) {
            j += 2;
            while (j < f2->len && j - i < 6 && strchr("_-0^#EO", f2->s[j - 1]) &&
                   f2->s[j - 1] != 0) {
                j++;
            }
        } else {
            while (j < f2->len && f2->s[j] != '%') {
                j++;
            }
            if (j == i) {
                j++;
            }
            jj_buf_add(&b, f2->s + i, j - i);
            i = j;
            continue;
        }
        char piece[16], res[256];
        size_t pl = j - i < sizeof(piece) - 1 ? j - i : sizeof(piece) - 1;
        memcpy(piece, f2->s + i, pl);
        piece[pl] = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        size_t k = strftime(res, sizeof(res), piece, &tm);
#pragma GCC diagnostic pop
        jj_buf_add(&b, res, k);
        i = j;
    }
    return buf_done(rc, n, &b, out);
}

static int namespace_from(struct jj_rc *rc, const struct jj_node *n, const struct jj_args *args,
                          struct jj_dict *d) {
    struct jj_pool *p = jj_rc_pool(rc);
    for (int i = 0; i < args->n; i++) {
        const struct jj_str *kw = args->names ? args->names[i] : NULL;
        if (kw) {
            if (jj_dict_set(p, d, jj_strv(kw), args->v[i]) < 0) {
                return jj_oom(rc, n);
            }
            continue;
        }
        if (i > 0) {
            return jj_fail(rc, n, KC_EINVAL, "expected at most 1 positional argument");
        }
        struct jj_val a = args->v[i];
        if (a.t == JJ_DICT || a.t == JJ_NS) {
            for (size_t k = 0; k < a.u.d->n; k++) {
                if (jj_dict_set(p, d, a.u.d->k[k], a.u.d->v[k]) < 0) {
                    return jj_oom(rc, n);
                }
            }
            continue;
        }
        struct jj_list *items;
        int r = jj_iterate(rc, n, a, &items);
        if (r < 0) {
            return r;
        }
        for (size_t k = 0; k < items->n; k++) {
            struct jj_val e = items->v[k];
            if ((e.t != JJ_LIST && e.t != JJ_TUPLE) || e.u.l->n != 2) {
                return jj_fail(rc, n, KC_EINVAL,
                               "dictionary update sequence element has the wrong length");
            }
            r = jj_dict_set(p, d, e.u.l->v[0], e.u.l->v[1]);
            if (r == KC_EINVAL) {
                return jj_fail(rc, n, KC_EINVAL, "unhashable type");
            }
            if (r < 0) {
                return jj_oom(rc, n);
            }
        }
    }
    return 0;
}

int jj_global_call(struct jj_rc *rc, const struct jj_node *n, int id, const struct jj_args *args,
                   struct jj_val *out) {
    struct jj_pool *p = jj_rc_pool(rc);
    int r;
    switch (id) {
    case G_RANGE: {
        BIND("range", "a", "b", "c");
        int64_t a = 0, b = 0, c = 1;
        if (!ag[0]) {
            return jj_fail(rc, n, KC_EINVAL, "range expected at least 1 argument, got 0");
        }
        if ((r = need_int(rc, n, "range() argument", av[0], &a)) < 0) {
            return r;
        }
        if (ag[1]) {
            if ((r = need_int(rc, n, "range() argument", av[1], &b)) < 0) {
                return r;
            }
        } else {
            b = a;
            a = 0;
        }
        if (ag[2] && (r = need_int(rc, n, "range() argument", av[2], &c)) < 0) {
            return r;
        }
        if (c == 0) {
            return jj_fail(rc, n, KC_EINVAL, "range() arg 3 must not be zero");
        }
        double count =
            c > 0 ? ((double)b - (double)a) / (double)c : ((double)a - (double)b) / (double)-c;
        count = count > 0 ? ceil(count) : 0;
        /* The immutable sandbox refuses ranges over MAX_RANGE (100000) items. */
        if (count > 100000) {
            return jj_fail(rc, n, KC_ERANGE,
                           "Range too big. The sandbox blocks ranges larger than MAX_RANGE "
                           "(100000).");
        }
        struct jj_list *l = jj_list_new(p, (size_t)count);
        if (!l) {
            return jj_oom(rc, n);
        }
        for (int64_t i = 0; i < (int64_t)count; i++) {
            l->v[l->n++] = jj_int(a + i * c);
        }
        return list_val(rc, n, l, out);
    }
    case G_NAMESPACE:
    case G_DICT: {
        struct jj_dict *d = jj_dict_new(p);
        if (!d) {
            return jj_oom(rc, n);
        }
        if ((r = namespace_from(rc, n, args, d)) < 0) {
            return r;
        }
        out->t = id == G_NAMESPACE ? JJ_NS : JJ_DICT;
        out->u.d = d;
        return 0;
    }
    case G_RAISE: {
        BIND("raise_exception", "message");
        const struct jj_str *msg;
        if ((r = jj_to_str(rc, n, av[0], &msg)) < 0) {
            return r;
        }
        return jj_raise(rc, msg);
    }
    case G_STRFTIME: {
        BIND("strftime_now", "format");
        const struct jj_str *fmt;
        if ((r = need_str(rc, n, "strftime() argument 1", av[0], &fmt)) < 0) {
            return r;
        }
        return do_strftime(rc, n, fmt, out);
    }
    default:
        return jj_fail(rc, n, KC_EINVAL, "unknown function");
    }
}

/* ---- filters -------------------------------------------------------------------------- */

/* jinja2's soft_str: str(v) (undefined -> ""). */
static int soft_str(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                    const struct jj_str **out) {
    return jj_to_str(rc, n, v, out);
}

static int length_of(struct jj_rc *rc, const struct jj_node *n, struct jj_val v, int64_t *out) {
    switch (v.t) {
    case JJ_STR:
        *out = (int64_t)jj_utf8_len(v.u.s->s, v.u.s->len);
        return 0;
    case JJ_LIST:
    case JJ_TUPLE:
        *out = (int64_t)v.u.l->n;
        return 0;
    case JJ_DICT:
        *out = (int64_t)v.u.d->n;
        return 0;
    case JJ_UNDEF:
        *out = 0;
        return 0;
    default:
        return jj_fail(rc, n, KC_EINVAL, "object of type '%s' has no len()", jj_type_name(v));
    }
}

/* Attribute path "a.b.0" as jinja2's make_attrgetter: each part an item lookup (ints for
 * digits). */
static int attr_path(struct jj_rc *rc, const struct jj_node *n, struct jj_val v, struct jj_val attr,
                     struct jj_val *out) {
    if (attr.t != JJ_STR) {
        return jj_getitem(rc, n, v, attr, out);
    }
    const struct jj_str *a = attr.u.s;
    size_t i = 0;
    while (i <= a->len) {
        size_t e = i;
        while (e < a->len && a->s[e] != '.') {
            e++;
        }
        struct jj_val key;
        bool digits = e > i;
        int64_t iv = 0;
        for (size_t k = i; k < e; k++) {
            if (a->s[k] < '0' || a->s[k] > '9' || iv > 100000000) {
                digits = false;
                break;
            }
            iv = iv * 10 + (a->s[k] - '0');
        }
        if (digits) {
            key = jj_int(iv);
        } else {
            int r = mkstr(rc, n, a->s + i, e - i, &key);
            if (r < 0) {
                return r;
            }
        }
        int r = jj_getitem(rc, n, v, key, &v);
        if (r < 0) {
            return r;
        }
        i = e + 1;
    }
    *out = v;
    return 0;
}

static struct jj_val lower_if_str(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                                  bool case_sensitive) {
    if (case_sensitive || v.t != JJ_STR) {
        return v;
    }
    struct jj_val o;
    if (do_case(rc, n, v.u.s, CASE_LOWER, &o) < 0) {
        return v;
    }
    return o;
}

/* Stable merge sort of vals by keys. */
static int sort_vals(struct jj_rc *rc, const struct jj_node *n, struct jj_val *vals,
                     struct jj_val *keys, size_t cnt, bool reverse) {
    if (cnt < 2) {
        return 0;
    }
    struct jj_pool *p = jj_rc_pool(rc);
    struct jj_val *tv = jj_alloc(p, cnt * sizeof(*tv));
    struct jj_val *tk = jj_alloc(p, cnt * sizeof(*tk));
    if (!tv || !tk) {
        return jj_oom(rc, n);
    }
    for (size_t width = 1; width < cnt; width *= 2) {
        for (size_t lo = 0; lo < cnt; lo += 2 * width) {
            size_t mid = lo + width < cnt ? lo + width : cnt;
            size_t hi = lo + 2 * width < cnt ? lo + 2 * width : cnt;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int c;
                if (jj_compare(keys[j], keys[i], &c) < 0) {
                    return jj_fail(rc, n, KC_EINVAL,
                                   "'<' not supported between instances of '%s' and '%s'",
                                   jj_type_name(keys[j]), jj_type_name(keys[i]));
                }
                bool take_j = reverse ? c > 0 : c < 0;
                if (take_j) {
                    tv[k] = vals[j];
                    tk[k++] = keys[j++];
                } else {
                    tv[k] = vals[i];
                    tk[k++] = keys[i++];
                }
            }
            while (i < mid) {
                tv[k] = vals[i];
                tk[k++] = keys[i++];
            }
            while (j < hi) {
                tv[k] = vals[j];
                tk[k++] = keys[j++];
            }
        }
        memcpy(vals, tv, cnt * sizeof(*tv));
        memcpy(keys, tk, cnt * sizeof(*tk));
    }
    jj_free(p, tv);
    jj_free(p, tk);
    return 0;
}

static int html_escape(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                       struct jj_val *out) {
    const struct jj_str *s;
    int r = soft_str(rc, n, v, &s);
    if (r < 0) {
        return r;
    }
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    for (size_t i = 0; i < s->len; i++) {
        switch (s->s[i]) {
        case '&':
            jj_buf_add(&b, "&amp;", 5);
            break;
        case '<':
            jj_buf_add(&b, "&lt;", 4);
            break;
        case '>':
            jj_buf_add(&b, "&gt;", 4);
            break;
        case '"':
            jj_buf_add(&b, "&#34;", 5);
            break;
        case '\'':
            jj_buf_add(&b, "&#39;", 5);
            break;
        default:
            jj_buf_addc(&b, s->s[i]);
        }
    }
    return buf_done(rc, n, &b, out);
}

/* Python float(str): strips whitespace, accepts inf/nan/underscores between digits. */
static bool parse_float(const struct jj_str *s, double *out) {
    char tmp[128];
    size_t a = 0, b = s->len, m = 0;
    while (a < b && jj_is_space((unsigned char)s->s[a])) {
        a++;
    }
    while (b > a && jj_is_space((unsigned char)s->s[b - 1])) {
        b--;
    }
    if (a == b || b - a >= sizeof(tmp)) {
        return false;
    }
    for (size_t i = a; i < b; i++) {
        char c = s->s[i];
        if (c == '_') {
            if (i == a || i + 1 == b || !(s->s[i - 1] >= '0' && s->s[i - 1] <= '9') ||
                !(s->s[i + 1] >= '0' && s->s[i + 1] <= '9')) {
                return false;
            }
            continue;
        }
        if (!strchr("0123456789+-.eEinfatyINFATY", c)) {
            return false;
        }
        tmp[m++] = c;
    }
    tmp[m] = 0;
    char *end;
    double d = strtod(tmp, &end);
    if (*end || end == tmp) {
        return false;
    }
    /* strtod accepts "infinity"/"nan" forms Python also accepts; it also takes hex, which the
     * character filter above already refused. */
    *out = d;
    return true;
}

static bool parse_int(const struct jj_str *s, int64_t base, int64_t *out) {
    size_t a = 0, b = s->len;
    while (a < b && jj_is_space((unsigned char)s->s[a])) {
        a++;
    }
    while (b > a && jj_is_space((unsigned char)s->s[b - 1])) {
        b--;
    }
    bool neg = false;
    if (a < b && (s->s[a] == '+' || s->s[a] == '-')) {
        neg = s->s[a] == '-';
        a++;
    }
    if (a < b && s->s[a] == '0' && a + 1 < b &&
        (base == 16 || base == 8 || base == 2 || base == 0)) {
        char c = s->s[a + 1] | 0x20;
        int64_t pb = c == 'x' ? 16 : c == 'o' ? 8 : c == 'b' ? 2 : 0;
        if (pb && (base == 0 || base == pb)) {
            base = pb;
            a += 2;
        }
    }
    if (base == 0) {
        base = 10;
    }
    if (a == b) {
        return false;
    }
    int64_t v = 0;
    bool prev_digit = false;
    for (size_t i = a; i < b; i++) {
        char c = s->s[i];
        if (c == '_' && prev_digit && i + 1 < b) {
            prev_digit = false;
            continue;
        }
        int d = c >= '0' && c <= '9'                     ? c - '0'
                : (c | 0x20) >= 'a' && (c | 0x20) <= 'z' ? (c | 0x20) - 'a' + 10
                                                         : 99;
        if (d >= base) {
            return false;
        }
        if (v > (INT64_MAX - d) / base) {
            return false;
        }
        v = v * base + d;
        prev_digit = true;
    }
    if (!prev_digit) {
        return false;
    }
    *out = neg ? -v : v;
    return true;
}

static const char *const FILTERS[] = {
    "abs",      "attr",       "batch",  "capitalize", "center",  "count",       "d",      "default",
    "dictsort", "e",          "escape", "first",      "float",   "forceescape", "format", "indent",
    "int",      "items",      "join",   "last",       "length",  "list",        "lower",  "map",
    "max",      "min",        "reject", "rejectattr", "replace", "reverse",     "round",  "safe",
    "select",   "selectattr", "sort",   "string",     "sum",     "title",       "tojson", "trim",
    "truncate", "unique",     "upper",  "wordcount",  NULL,
};

bool jj_filter_exists(const char *name, size_t len) {
    for (int i = 0; FILTERS[i]; i++) {
        if (strlen(FILTERS[i]) == len && !memcmp(FILTERS[i], name, len)) {
            return true;
        }
    }
    return false;
}

static const char *const TESTS[] = {
    "boolean",     "callable", "defined", "divisibleby", "eq",   "equalto",   "==",     "escaped",
    "even",        "false",    "filter",  "float",       "ge",   ">=",        "gt",     ">",
    "greaterthan", "in",       "integer", "iterable",    "le",   "<=",        "lower",  "lt",
    "<",           "lessthan", "mapping", "ne",          "!=",   "none",      "number", "odd",
    "sameas",      "sequence", "string",  "test",        "true", "undefined", "upper",  NULL,
};

bool jj_test_exists(const char *name, size_t len) {
    for (int i = 0; TESTS[i]; i++) {
        if (strlen(TESTS[i]) == len && !memcmp(TESTS[i], name, len)) {
            return true;
        }
    }
    return false;
}

static bool name_is(const struct jj_str *s, const char *lit) {
    return strlen(lit) == s->len && !memcmp(s->s, lit, s->len);
}

/* select/reject/selectattr/rejectattr/map share the "apply a test or filter by name" step. */
static int select_common(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                         const struct jj_args *args, bool attr, bool select, struct jj_val *out) {
    struct jj_list *items;
    int r;
    if (!jj_truthy(v)) {
        /* jinja2's select/reject/map are generators guarded by `if value:`. */
        return list_val(rc, n, jj_list_new(jj_rc_pool(rc), 0), out);
    }
    if ((r = jj_iterate(rc, n, v, &items)) < 0) {
        return r;
    }
    int first = 0;
    struct jj_val attrname = jj_undef(NULL);
    if (attr) {
        if (args->n < 1) {
            return jj_fail(rc, n, KC_EINVAL, "missing parameter for attribute name");
        }
        attrname = args->v[0];
        first = 1;
    }
    const struct jj_str *test = NULL;
    if (args->n > first) {
        if (args->v[first].t != JJ_STR) {
            return jj_fail(rc, n, KC_EINVAL, "test name must be a string");
        }
        test = args->v[first].u.s;
        if (!jj_test_exists(test->s, test->len)) {
            return jj_fail(rc, n, KC_EINVAL, "no test named '%s'", test->s);
        }
    }
    struct jj_args rest = {0};
    if (args->n > first + 1) {
        rest.n = args->n - first - 1;
        rest.v = args->v + first + 1;
        rest.names = args->names ? args->names + first + 1 : NULL;
    }
    struct jj_list *l = jj_list_new(jj_rc_pool(rc), items->n);
    if (!l) {
        return jj_oom(rc, n);
    }
    for (size_t i = 0; i < items->n; i++) {
        struct jj_val x = items->v[i];
        if (attr && (r = attr_path(rc, n, x, attrname, &x)) < 0) {
            return r;
        }
        bool keep;
        if (test) {
            if ((r = jj_step(rc, n)) < 0 || (r = jj_test_apply(rc, n, test, x, &rest, &keep)) < 0) {
                return r;
            }
        } else {
            keep = jj_truthy(x);
        }
        if (keep == select) {
            l->v[l->n++] = items->v[i];
        }
    }
    return list_val(rc, n, l, out);
}

static int filter_tojson(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                         const struct jj_args *args, struct jj_val *out) {
    BIND("tojson", "ensure_ascii", "indent", "separators", "sort_keys");
    struct jj_json_opts o = {0};
    char spaces[64];
    o.ensure_ascii = ag[0] && jj_truthy(av[0]);
    o.sort_keys = ag[3] && jj_truthy(av[3]);
    int64_t ind;
    if (ag[1] && av[1].t != JJ_NONE) {
        if (av[1].t == JJ_STR) {
            o.indent = av[1].u.s->s;
            o.indent_len = av[1].u.s->len;
        } else if (as_int(av[1], &ind)) {
            if (ind < 0) {
                ind = 0;
            }
            if (ind > (int64_t)sizeof(spaces)) {
                return jj_fail(rc, n, KC_EINVAL, "tojson indent larger than %zu is not supported",
                               sizeof(spaces));
            }
            memset(spaces, ' ', sizeof(spaces));
            o.indent = spaces;
            o.indent_len = (size_t)ind;
        } else {
            return jj_fail(rc, n, KC_EINVAL, "tojson indent must be an int or a str");
        }
    }
    if (o.indent) {
        o.item_sep = ",";
        o.item_sep_len = 1;
    } else {
        o.item_sep = ", ";
        o.item_sep_len = 2;
    }
    o.key_sep = ": ";
    o.key_sep_len = 2;
    if (ag[2] && av[2].t != JJ_NONE) {
        struct jj_val s = av[2];
        if ((s.t != JJ_LIST && s.t != JJ_TUPLE) || s.u.l->n != 2 || s.u.l->v[0].t != JJ_STR ||
            s.u.l->v[1].t != JJ_STR) {
            return jj_fail(rc, n, KC_EINVAL, "tojson separators must be a pair of strings");
        }
        o.item_sep = s.u.l->v[0].u.s->s;
        o.item_sep_len = s.u.l->v[0].u.s->len;
        o.key_sep = s.u.l->v[1].u.s->s;
        o.key_sep_len = s.u.l->v[1].u.s->len;
    }
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    const char *what = NULL;
    int r = jj_val_json(&b, v, &o, 0, &what);
    if (r == KC_EINVAL) {
        return jj_fail(rc, n, KC_EINVAL, "Object of type %s is not JSON serializable",
                       what ? what : "?");
    }
    if (r == KC_ERANGE) {
        return jj_fail(rc, n, KC_ERANGE, "tojson: value nested too deeply");
    }
    if (r < 0) {
        return jj_oom(rc, n);
    }
    return buf_done(rc, n, &b, out);
}

static int filter_indent(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                         const struct jj_args *args, struct jj_val *out) {
    BIND("indent", "width", "first", "blank");
    const struct jj_str *s, *ind = NULL;
    int r;
    /* jinja2 appends "\n" to the value itself: only strings indent. */
    if (v.t != JJ_STR) {
        return jj_fail(rc, n, KC_EINVAL,
                       "indent: unsupported operand type(s) for +=: '%s' and 'str'",
                       jj_type_name(v));
    }
    s = v.u.s;
    char spaces[256];
    struct jj_str *tmp = NULL;
    int64_t w = 4;
    if (ag[0] && av[0].t == JJ_STR) {
        ind = av[0].u.s;
    } else {
        if (ag[0] && (r = need_int(rc, n, "indent width", av[0], &w)) < 0) {
            return r;
        }
        if (w < 0) {
            w = 0;
        }
        if (w > 255) {
            return jj_fail(rc, n, KC_EINVAL, "indent width over 255 is not supported");
        }
        memset(spaces, ' ', (size_t)w);
        tmp = jj_str_new(jj_rc_pool(rc), spaces, (size_t)w);
        if (!tmp) {
            return jj_oom(rc, n);
        }
        ind = tmp;
    }
    bool first = ag[1] && jj_truthy(av[1]);
    bool blank = ag[2] && jj_truthy(av[2]);
    /* s += "\n"; lines = s.splitlines() */
    struct jj_buf sb;
    jj_buf_init(&sb, jj_rc_pool(rc), 0);
    jj_buf_add(&sb, s->s, s->len);
    jj_buf_addc(&sb, '\n');
    const struct jj_str *s2 = jj_buf_str(&sb);
    if (!s2) {
        return jj_oom(rc, n);
    }
    struct jj_list *lines;
    if ((r = do_splitlines(rc, n, s2, false, &lines)) < 0) {
        return r;
    }
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    if (first) {
        jj_buf_add(&b, ind->s, ind->len);
    }
    for (size_t i = 0; i < lines->n; i++) {
        const struct jj_str *ln = lines->v[i].u.s;
        if (i > 0) {
            jj_buf_addc(&b, '\n');
            if (blank || ln->len > 0) {
                jj_buf_add(&b, ind->s, ind->len);
            }
        }
        jj_buf_add(&b, ln->s, ln->len);
    }
    return buf_done(rc, n, &b, out);
}

static int filter_minmax(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                         const struct jj_args *args, bool is_max, struct jj_val *out) {
    BIND(is_max ? "max" : "min", "case_sensitive", "attribute");
    struct jj_list *items;
    int r;
    if ((r = jj_iterate(rc, n, v, &items)) < 0) {
        return r;
    }
    if (items->n == 0) {
        *out = jj_undef(NULL);
        return 0;
    }
    bool cs = ag[0] && jj_truthy(av[0]);
    size_t best = 0;
    struct jj_val bk = items->v[0];
    if (ag[1] && (r = attr_path(rc, n, bk, av[1], &bk)) < 0) {
        return r;
    }
    bk = lower_if_str(rc, n, bk, cs);
    for (size_t i = 1; i < items->n; i++) {
        struct jj_val k = items->v[i];
        int c;
        if (ag[1] && (r = attr_path(rc, n, k, av[1], &k)) < 0) {
            return r;
        }
        k = lower_if_str(rc, n, k, cs);
        if (jj_compare(k, bk, &c) < 0) {
            return jj_fail(rc, n, KC_EINVAL, "values are not comparable");
        }
        if (is_max ? c > 0 : c < 0) {
            best = i;
            bk = k;
        }
    }
    *out = items->v[best];
    return 0;
}

static int filter_round(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                        const struct jj_args *args, struct jj_val *out) {
    BIND("round", "precision", "method");
    int64_t prec = 0;
    int r;
    double d;
    if (ag[0] && (r = need_int(rc, n, "precision", av[0], &prec)) < 0) {
        return r;
    }
    if (v.t == JJ_FLOAT) {
        d = v.u.f;
    } else if (v.t == JJ_INT || v.t == JJ_BOOL) {
        d = (double)(v.t == JJ_INT ? v.u.i : v.u.b);
    } else {
        return jj_fail(rc, n, KC_EINVAL, "round: a number is required, not %s", jj_type_name(v));
    }
    const char *method = "common";
    if (ag[1]) {
        if (av[1].t != JJ_STR) {
            return jj_fail(rc, n, KC_EINVAL, "round method must be a string");
        }
        method = av[1].u.s->s;
    }
    int64_t iv;
    if (as_int(v, &iv) && !strcmp(method, "common")) {
        /* Python's round(int, n) stays an int (half to even for n < 0). */
        if (prec >= 0) {
            *out = jj_int(iv);
            return 0;
        }
        if (prec < -18) {
            *out = jj_int(0);
            return 0;
        }
        int64_t m = 1;
        for (int64_t k = 0; k < -prec; k++) {
            m *= 10;
        }
        int64_t q = iv / m, rem = iv % m;
        if (rem < 0) {
            q -= 1;
            rem += m;
        }
        if (rem * 2 > m || (rem * 2 == m && (q & 1))) {
            q += 1;
        }
        int64_t res;
        if (__builtin_mul_overflow(q, m, &res)) {
            return jj_fail(rc, n, KC_ERANGE, "integer overflow");
        }
        *out = jj_int(res);
        return 0;
    }
    if (prec < -300 || prec > 300) {
        *out = jj_float(d);
        return 0;
    }
    double scale = pow(10.0, (double)prec);
    if (!strcmp(method, "common")) {
        if (!isfinite(d)) {
            *out = jj_float(d);
        } else if (prec >= 0) {
            char tmp[400];
            snprintf(tmp, sizeof(tmp), "%.*f", (int)prec, d);
            *out = jj_float(strtod(tmp, NULL));
        } else {
            *out = jj_float(nearbyint(d / (1 / scale)) * (1 / scale));
        }
    } else if (!strcmp(method, "ceil")) {
        *out = jj_float(ceil(d * scale) / scale);
    } else if (!strcmp(method, "floor")) {
        *out = jj_float(floor(d * scale) / scale);
    } else {
        return jj_fail(rc, n, KC_EINVAL, "method must be common, ceil or floor");
    }
    return 0;
}

static int filter_truncate(struct jj_rc *rc, const struct jj_node *n, struct jj_val v,
                           const struct jj_args *args, struct jj_val *out) {
    BIND("truncate", "length", "killwords", "end", "leeway");
    const struct jj_str *s, *end = NULL;
    int r;
    int64_t length = 255, leeway = 5, vlen;
    if (ag[0] && (r = need_int(rc, n, "length", av[0], &length)) < 0) {
        return r;
    }
    if (ag[2] && (r = need_str(rc, n, "end", av[2], &end)) < 0) {
        return r;
    }
    if (ag[3] && av[3].t != JJ_NONE && (r = need_int(rc, n, "leeway", av[3], &leeway)) < 0) {
        return r;
    }
    /* jinja2 measures len(value) without converting it: a short list or dict comes back as
     * it is. */
    if ((r = length_of(rc, n, v, &vlen)) < 0) {
        return r;
    }
    if (v.t != JJ_STR) {
        if (vlen <= length + leeway) {
            *out = v;
            return 0;
        }
        return jj_fail(rc, n, KC_EINVAL, "truncate: can only concatenate str to str");
    }
    s = v.u.s;
    size_t el = end ? jj_utf8_len(end->s, end->len) : 3;
    const char *es = end ? end->s : "...";
    size_t ebytes = end ? end->len : 3;
    int64_t slen = (int64_t)jj_utf8_len(s->s, s->len);
    if ((int64_t)el > length) {
        return jj_fail(rc, n, KC_EINVAL, "expected length >= %zu, got %lld", el, (long long)length);
    }
    if (leeway < 0) {
        return jj_fail(rc, n, KC_EINVAL, "expected leeway >= 0");
    }
    if (slen <= length + leeway) {
        *out = jj_strv(s);
        return 0;
    }
    size_t cut = jj_utf8_offset(s->s, s->len, (size_t)(length - (int64_t)el));
    struct jj_buf b;
    jj_buf_init(&b, jj_rc_pool(rc), 0);
    if (ag[1] && jj_truthy(av[1])) {
        jj_buf_add(&b, s->s, cut);
    } else {
        /* s[:length-len(end)].rsplit(" ", 1)[0] */
        size_t k = cut;
        while (k > 0 && s->s[k - 1] != ' ') {
            k--;
        }
        jj_buf_add(&b, s->s, k > 0 ? k - 1 : cut);
    }
    jj_buf_add(&b, es, ebytes);
    return buf_done(rc, n, &b, out);
}

int jj_filter_apply(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *name,
                    struct jj_val v, const struct jj_args *args, struct jj_val *out) {
    struct jj_pool *p = jj_rc_pool(rc);
    const struct jj_str *s;
    struct jj_list *items;
    int r;
    if ((r = jj_step(rc, n)) < 0) {
        return r;
    }
    if (name_is(name, "trim")) {
        BIND("trim", "chars");
        const struct jj_str *chars = NULL;
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        if (ag[0] && av[0].t != JJ_NONE && (r = need_str(rc, n, "chars", av[0], &chars)) < 0) {
            return r;
        }
        return do_strip(rc, n, s, chars, 3, out);
    }
    if (name_is(name, "tojson")) {
        return filter_tojson(rc, n, v, args, out);
    }
    if (name_is(name, "length") || name_is(name, "count")) {
        int64_t len;
        if ((r = length_of(rc, n, v, &len)) < 0) {
            return r;
        }
        *out = jj_int(len);
        return 0;
    }
    if (name_is(name, "default") || name_is(name, "d")) {
        BIND("default", "default_value", "boolean");
        bool use = v.t == JJ_UNDEF || (ag[1] && jj_truthy(av[1]) && !jj_truthy(v));
        if (use) {
            if (ag[0]) {
                *out = av[0];
            } else {
                return mkstr(rc, n, "", 0, out);
            }
        } else {
            *out = v;
        }
        return 0;
    }
    if (name_is(name, "safe") || name_is(name, "string")) {
        if (name_is(name, "safe") && v.t == JJ_STR) {
            *out = v;
            return 0;
        }
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        *out = jj_strv(s);
        return 0;
    }
    if (name_is(name, "upper") || name_is(name, "lower") || name_is(name, "capitalize") ||
        name_is(name, "title")) {
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        if (name_is(name, "title")) {
            /* jinja2: words split at runs of [-\s({[<]; each piece: first char upper, rest
             * lower. */
            struct jj_buf b;
            jj_buf_init(&b, p, 0);
            size_t i = 0;
            bool start = true;
            while (i < s->len) {
                size_t st = i;
                uint32_t c = jj_utf8_next(s->s, s->len, &i);
                bool sep =
                    c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || jj_is_space(c);
                uint32_t o;
                if (sep) {
                    o = c;
                    start = true;
                } else {
                    o = start ? jj_to_upper(c) : jj_to_lower(c);
                    start = false;
                }
                if (o == c) {
                    jj_buf_add(&b, s->s + st, i - st);
                } else {
                    char u[4];
                    jj_buf_add(&b, u, jj_utf8_put(u, o));
                }
            }
            return buf_done(rc, n, &b, out);
        }
        int mode = name_is(name, "upper")   ? CASE_UPPER
                   : name_is(name, "lower") ? CASE_LOWER
                                            : CASE_CAPITALIZE;
        return do_case(rc, n, s, mode, out);
    }
    if (name_is(name, "replace")) {
        BIND("replace", "old", "new", "count");
        const struct jj_str *o, *nw;
        int64_t count = -1;
        if ((r = soft_str(rc, n, v, &s)) < 0 || (r = soft_str(rc, n, av[0], &o)) < 0 ||
            (r = soft_str(rc, n, av[1], &nw)) < 0) {
            return r;
        }
        if (ag[2] && av[2].t != JJ_NONE && (r = need_int(rc, n, "count", av[2], &count)) < 0) {
            return r;
        }
        return do_replace(rc, n, s, o, nw, count, out);
    }
    if (name_is(name, "join")) {
        BIND("join", "d", "attribute");
        const struct jj_str *sep = NULL;
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        if (ag[0] && (r = soft_str(rc, n, av[0], &sep)) < 0) {
            return r;
        }
        struct jj_buf b;
        jj_buf_init(&b, p, 0);
        for (size_t i = 0; i < items->n; i++) {
            struct jj_val x = items->v[i];
            if (ag[1] && (r = attr_path(rc, n, x, av[1], &x)) < 0) {
                return r;
            }
            if (i && sep) {
                jj_buf_add(&b, sep->s, sep->len);
            }
            if (!jj_val_str(&b, x, 0)) {
                return jj_oom(rc, n);
            }
        }
        return buf_done(rc, n, &b, out);
    }
    if (name_is(name, "first") || name_is(name, "last")) {
        if (v.t == JJ_UNDEF) {
            *out = jj_undef(NULL);
            return 0;
        }
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        if (items->n == 0) {
            *out = jj_undef(NULL);
            return 0;
        }
        *out = name_is(name, "first") ? items->v[0] : items->v[items->n - 1];
        return 0;
    }
    if (name_is(name, "list")) {
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, items->n);
        if (!l) {
            return jj_oom(rc, n);
        }
        jj_copy_vals(l->v, items->v, items->n);
        l->n = items->n;
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "items")) {
        if (v.t == JJ_UNDEF) {
            return list_val(rc, n, jj_list_new(p, 0), out);
        }
        if (v.t != JJ_DICT) {
            return jj_fail(rc, n, KC_EINVAL, "can only get item pairs from a mapping");
        }
        struct jj_method m = {.self = v, .id = M_ITEMS};
        struct jj_args none = {0};
        return jj_method_call(rc, n, &m, &none, out);
    }
    if (name_is(name, "dictsort")) {
        BIND("dictsort", "case_sensitive", "by", "reverse");
        if (v.t != JJ_DICT) {
            return jj_fail(rc, n, KC_EINVAL, "dictsort needs a mapping");
        }
        bool by_value = false;
        if (ag[1]) {
            if (av[1].t == JJ_STR && name_is(av[1].u.s, "value")) {
                by_value = true;
            } else if (!(av[1].t == JJ_STR && name_is(av[1].u.s, "key"))) {
                return jj_fail(rc, n, KC_EINVAL,
                               "You can only sort by either \"key\" or \"value\"");
            }
        }
        size_t cnt = v.u.d->n;
        struct jj_val *vals = jj_alloc(p, (cnt + 1) * sizeof(*vals));
        struct jj_val *keys = jj_alloc(p, (cnt + 1) * sizeof(*keys));
        if (!vals || !keys) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < cnt; i++) {
            bool ok;
            vals[i] = tuple2(rc, v.u.d->k[i], v.u.d->v[i], &ok);
            if (!ok) {
                return jj_oom(rc, n);
            }
            keys[i] = lower_if_str(rc, n, by_value ? v.u.d->v[i] : v.u.d->k[i],
                                   ag[0] && jj_truthy(av[0]));
        }
        if ((r = sort_vals(rc, n, vals, keys, cnt, ag[2] && jj_truthy(av[2]))) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, 0);
        if (!l) {
            return jj_oom(rc, n);
        }
        l->v = vals;
        l->n = l->cap = cnt;
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "sort")) {
        BIND("sort", "reverse", "case_sensitive", "attribute");
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        size_t cnt = items->n;
        struct jj_val *vals = jj_alloc(p, (cnt + 1) * sizeof(*vals));
        struct jj_val *keys = jj_alloc(p, (cnt + 1) * sizeof(*keys));
        if (!vals || !keys) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < cnt; i++) {
            vals[i] = items->v[i];
            struct jj_val k = items->v[i];
            if (ag[2] && (r = attr_path(rc, n, k, av[2], &k)) < 0) {
                return r;
            }
            keys[i] = lower_if_str(rc, n, k, ag[1] && jj_truthy(av[1]));
        }
        if ((r = sort_vals(rc, n, vals, keys, cnt, ag[0] && jj_truthy(av[0]))) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, 0);
        if (!l) {
            return jj_oom(rc, n);
        }
        l->v = vals;
        l->n = l->cap = cnt;
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "unique")) {
        BIND("unique", "case_sensitive", "attribute");
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, items->n);
        struct jj_list *seen = jj_list_new(p, items->n);
        if (!l || !seen) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < items->n; i++) {
            struct jj_val k = items->v[i];
            if (ag[1] && (r = attr_path(rc, n, k, av[1], &k)) < 0) {
                return r;
            }
            k = lower_if_str(rc, n, k, ag[0] && jj_truthy(av[0]));
            if (!jj_hashable(k)) {
                return jj_fail(rc, n, KC_EINVAL, "unhashable type: '%s'", jj_type_name(k));
            }
            bool dup = false;
            for (size_t j = 0; j < seen->n && !dup; j++) {
                dup = jj_equal(seen->v[j], k);
            }
            if (!dup) {
                seen->v[seen->n++] = k;
                l->v[l->n++] = items->v[i];
            }
        }
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "reverse")) {
        if (v.t == JJ_STR) {
            struct jj_buf b;
            jj_buf_init(&b, p, 0);
            size_t ncp = jj_utf8_len(v.u.s->s, v.u.s->len);
            for (size_t k = ncp; k-- > 0;) {
                size_t a = jj_utf8_offset(v.u.s->s, v.u.s->len, k), e = a;
                jj_utf8_next(v.u.s->s, v.u.s->len, &e);
                jj_buf_add(&b, v.u.s->s + a, e - a);
            }
            return buf_done(rc, n, &b, out);
        }
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, items->n);
        if (!l) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < items->n; i++) {
            l->v[i] = items->v[items->n - 1 - i];
        }
        l->n = items->n;
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "abs")) {
        if (v.t == JJ_INT || v.t == JJ_BOOL) {
            int64_t i = v.t == JJ_INT ? v.u.i : v.u.b;
            if (i == INT64_MIN) {
                return jj_fail(rc, n, KC_ERANGE, "integer overflow");
            }
            *out = jj_int(i < 0 ? -i : i);
            return 0;
        }
        if (v.t == JJ_FLOAT) {
            *out = jj_float(fabs(v.u.f));
            return 0;
        }
        return jj_fail(rc, n, KC_EINVAL, "bad operand type for abs(): '%s'", jj_type_name(v));
    }
    if ((name_is(name, "int") || name_is(name, "float")) && v.t == JJ_UNDEF) {
        return jj_fail(rc, n, KC_EINVAL, "'%s' is undefined", v.u.s ? v.u.s->s : "value");
    }
    if (name_is(name, "int")) {
        BIND("int", "default", "base");
        int64_t base = 10, iv;
        double d;
        struct jj_val def = ag[0] ? av[0] : jj_int(0);
        if (ag[1] && (r = need_int(rc, n, "base", av[1], &base)) < 0) {
            return r;
        }
        if (as_int(v, &iv)) {
            *out = jj_int(iv);
        } else if (v.t == JJ_FLOAT) {
            *out = isfinite(v.u.f) && fabs(v.u.f) < 9.2e18 ? jj_int((int64_t)v.u.f) : def;
        } else if (v.t == JJ_STR && parse_int(v.u.s, base, &iv)) {
            *out = jj_int(iv);
        } else if (v.t == JJ_STR && parse_float(v.u.s, &d) && isfinite(d) && fabs(d) < 9.2e18) {
            *out = jj_int((int64_t)d);
        } else {
            *out = def;
        }
        return 0;
    }
    if (name_is(name, "float")) {
        BIND("float", "default");
        double d;
        int64_t iv;
        if (as_int(v, &iv)) {
            *out = jj_float((double)iv);
        } else if (v.t == JJ_FLOAT) {
            *out = v;
        } else if (v.t == JJ_STR && parse_float(v.u.s, &d)) {
            *out = jj_float(d);
        } else {
            *out = ag[0] ? av[0] : jj_float(0.0);
        }
        return 0;
    }
    if (name_is(name, "round")) {
        return filter_round(rc, n, v, args, out);
    }
    if (name_is(name, "indent")) {
        return filter_indent(rc, n, v, args, out);
    }
    if (name_is(name, "center")) {
        BIND("center", "width");
        int64_t w = 80;
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        if (ag[0] && (r = need_int(rc, n, "width", av[0], &w)) < 0) {
            return r;
        }
        return str_pad(rc, n, s, w, NULL, 0, out);
    }
    if (name_is(name, "e") || name_is(name, "escape") || name_is(name, "forceescape")) {
        return html_escape(rc, n, v, out);
    }
    if (name_is(name, "format")) {
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        bool kw = args->n > 0 && args->names && args->names[0];
        if (kw) {
            struct jj_dict *d = jj_dict_new(p);
            if (!d) {
                return jj_oom(rc, n);
            }
            for (int i = 0; i < args->n; i++) {
                if (args->names[i] && jj_dict_set(p, d, jj_strv(args->names[i]), args->v[i]) < 0) {
                    return jj_oom(rc, n);
                }
            }
            struct jj_val dv = {.t = JJ_DICT};
            dv.u.d = d;
            return jj_str_format_percent(rc, n, s, dv, out);
        }
        struct jj_list *l = jj_list_new(p, (size_t)args->n);
        if (!l) {
            return jj_oom(rc, n);
        }
        jj_copy_vals(l->v, args->v, (size_t)args->n);
        l->n = (size_t)args->n;
        struct jj_val tv = {.t = JJ_TUPLE};
        tv.u.l = l;
        return jj_str_format_percent(rc, n, s, tv, out);
    }
    if (name_is(name, "attr")) {
        BIND("attr", "name");
        const struct jj_str *an;
        if ((r = need_str(rc, n, "attribute name", av[0], &an)) < 0) {
            return r;
        }
        /* Python getattr only: a dict's keys are not attributes. */
        if (v.t == JJ_DICT) {
            if (!jj_method_lookup(p, v, an, out)) {
                *out = jj_undef(an);
            }
            return 0;
        }
        return jj_getattr(rc, n, v, an, out);
    }
    if (name_is(name, "batch")) {
        BIND("batch", "linecount", "fill_with");
        int64_t cnt;
        if ((r = need_int(rc, n, "linecount", av[0], &cnt)) < 0 ||
            (r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        if (cnt <= 0) {
            return jj_fail(rc, n, KC_EINVAL, "batch size must be positive");
        }
        struct jj_list *l = jj_list_new(p, 0), *cur = NULL;
        if (!l) {
            return jj_oom(rc, n);
        }
        for (size_t i = 0; i < items->n; i++) {
            if (!cur || cur->n == (size_t)cnt) {
                cur = jj_list_new(p, (size_t)cnt > items->n ? items->n : (size_t)cnt);
                struct jj_val cv = {.t = JJ_LIST};
                cv.u.l = cur;
                if (!cur || !jj_list_push(p, l, cv)) {
                    return jj_oom(rc, n);
                }
            }
            if (!jj_list_push(p, cur, items->v[i])) {
                return jj_oom(rc, n);
            }
        }
        if (cur && ag[1] && av[1].t != JJ_NONE) {
            while (cur->n < (size_t)cnt) {
                if (!jj_list_push(p, cur, av[1])) {
                    return jj_oom(rc, n);
                }
            }
        }
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "map")) {
        if (!jj_truthy(v)) {
            return list_val(rc, n, jj_list_new(p, 0), out);
        }
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        struct jj_list *l = jj_list_new(p, items->n);
        if (!l) {
            return jj_oom(rc, n);
        }
        bool by_attr = false;
        struct jj_val attr = jj_undef(NULL), def = jj_undef(NULL);
        bool has_def = false;
        for (int i = 0; i < args->n; i++) {
            if (args->names && args->names[i] && name_is(args->names[i], "attribute")) {
                by_attr = true;
                attr = args->v[i];
            } else if (args->names && args->names[i] && name_is(args->names[i], "default")) {
                has_def = true;
                def = args->v[i];
            }
        }
        if (!by_attr &&
            (args->n < 1 || args->v[0].t != JJ_STR || (args->names && args->names[0]))) {
            return jj_fail(rc, n, KC_EINVAL, "map requires a filter name or attribute=");
        }
        const struct jj_str *fname = by_attr ? NULL : args->v[0].u.s;
        if (fname && !jj_filter_exists(fname->s, fname->len)) {
            return jj_fail(rc, n, KC_EINVAL, "no filter named '%s'", fname->s);
        }
        struct jj_args rest = {0};
        if (!by_attr && args->n > 1) {
            rest.n = args->n - 1;
            rest.v = args->v + 1;
            rest.names = args->names ? args->names + 1 : NULL;
        }
        for (size_t i = 0; i < items->n; i++) {
            struct jj_val x = items->v[i];
            if (by_attr) {
                if ((r = attr_path(rc, n, x, attr, &x)) < 0) {
                    return r;
                }
                if (x.t == JJ_UNDEF && has_def) {
                    x = def;
                }
            } else if ((r = jj_filter_apply(rc, n, fname, x, &rest, &x)) < 0) {
                return r;
            }
            l->v[l->n++] = x;
        }
        return list_val(rc, n, l, out);
    }
    if (name_is(name, "select") || name_is(name, "reject")) {
        return select_common(rc, n, v, args, false, name_is(name, "select"), out);
    }
    if (name_is(name, "selectattr") || name_is(name, "rejectattr")) {
        return select_common(rc, n, v, args, true, name_is(name, "selectattr"), out);
    }
    if (name_is(name, "max") || name_is(name, "min")) {
        return filter_minmax(rc, n, v, args, name_is(name, "max"), out);
    }
    if (name_is(name, "sum")) {
        BIND("sum", "attribute", "start");
        struct jj_val acc = ag[1] ? av[1] : jj_int(0);
        if ((r = jj_iterate(rc, n, v, &items)) < 0) {
            return r;
        }
        for (size_t i = 0; i < items->n; i++) {
            struct jj_val x = items->v[i];
            if (ag[0] && (r = attr_path(rc, n, x, av[0], &x)) < 0) {
                return r;
            }
            if ((acc.t == JJ_LIST || acc.t == JJ_TUPLE) && x.t == acc.t) {
                struct jj_list *l = jj_list_new(p, acc.u.l->n + x.u.l->n);
                if (!l) {
                    return jj_oom(rc, n);
                }
                jj_copy_vals(l->v, acc.u.l->v, acc.u.l->n);
                if (x.u.l->n > 0) { /* NULL + 0 is undefined behaviour */
                    jj_copy_vals(l->v + acc.u.l->n, x.u.l->v, x.u.l->n);
                }
                l->n = acc.u.l->n + x.u.l->n;
                acc.u.l = l;
                continue;
            }
            bool fa = acc.t == JJ_FLOAT, fb = x.t == JJ_FLOAT;
            int64_t ia, ib;
            if ((fa || as_int(acc, &ia)) && (fb || as_int(x, &ib))) {
                if (fa || fb) {
                    double da = fa ? acc.u.f : (double)ia, db = fb ? x.u.f : (double)ib;
                    acc = jj_float(da + db);
                } else {
                    int64_t s2;
                    if (__builtin_add_overflow(ia, ib, &s2)) {
                        return jj_fail(rc, n, KC_ERANGE, "integer overflow");
                    }
                    acc = jj_int(s2);
                }
            } else {
                return jj_fail(rc, n, KC_EINVAL, "unsupported operand type(s) for +: '%s' and '%s'",
                               jj_type_name(acc), jj_type_name(x));
            }
        }
        *out = acc;
        return 0;
    }
    if (name_is(name, "truncate")) {
        return filter_truncate(rc, n, v, args, out);
    }
    if (name_is(name, "wordcount")) {
        if ((r = soft_str(rc, n, v, &s)) < 0) {
            return r;
        }
        int64_t words = 0;
        bool in = false;
        size_t i = 0;
        while (i < s->len) {
            uint32_t c = jj_utf8_next(s->s, s->len, &i);
            /* Python's \w: letters and digits of any script; symbols and emoji are not. */
            bool w = c == '_' || (c >= '0' && c <= '9') || jj_is_alpha(c) ||
                     (c >= 0xC0 && c < 0x2000 && c != 0xD7 && c != 0xF7 && !jj_is_space(c));
            if (w && !in) {
                words++;
            }
            in = w;
        }
        *out = jj_int(words);
        return 0;
    }
    return jj_fail(rc, n, KC_EINVAL, "no filter named '%s'", name->s);
}

/* ---- tests ---------------------------------------------------------------------------- */

int jj_test_apply(struct jj_rc *rc, const struct jj_node *n, const struct jj_str *name,
                  struct jj_val v, const struct jj_args *args, bool *out) {
    struct jj_val arg = args->n > 0 ? args->v[0] : jj_undef(NULL);
    int64_t iv, dv;
    int r;
    if (name_is(name, "defined")) {
        *out = v.t != JJ_UNDEF;
    } else if (name_is(name, "undefined")) {
        *out = v.t == JJ_UNDEF;
    } else if (name_is(name, "none")) {
        *out = v.t == JJ_NONE;
    } else if (name_is(name, "boolean")) {
        *out = v.t == JJ_BOOL;
    } else if (name_is(name, "true")) {
        *out = v.t == JJ_BOOL && v.u.b;
    } else if (name_is(name, "false")) {
        *out = v.t == JJ_BOOL && !v.u.b;
    } else if (name_is(name, "integer")) {
        *out = v.t == JJ_INT;
    } else if (name_is(name, "float")) {
        *out = v.t == JJ_FLOAT;
    } else if (name_is(name, "number")) {
        *out = v.t == JJ_INT || v.t == JJ_FLOAT || v.t == JJ_BOOL;
    } else if (name_is(name, "string")) {
        *out = v.t == JJ_STR;
    } else if (name_is(name, "mapping")) {
        *out = v.t == JJ_DICT;
    } else if (name_is(name, "iterable")) {
        *out =
            v.t == JJ_STR || v.t == JJ_LIST || v.t == JJ_TUPLE || v.t == JJ_DICT || v.t == JJ_UNDEF;
    } else if (name_is(name, "sequence")) {
        *out =
            v.t == JJ_STR || v.t == JJ_LIST || v.t == JJ_TUPLE || v.t == JJ_DICT || v.t == JJ_UNDEF;
    } else if (name_is(name, "callable")) {
        /* Python's callable(): jinja2's Undefined and LoopContext define __call__. */
        *out = v.t == JJ_MACRO || v.t == JJ_FUNC || v.t == JJ_METHOD || v.t == JJ_UNDEF ||
               v.t == JJ_LOOP;
    } else if (name_is(name, "escaped")) {
        *out = false;
    } else if (name_is(name, "odd") || name_is(name, "even")) {
        if (!as_int(v, &iv)) {
            if (v.t == JJ_FLOAT) {
                double m = fmod(v.u.f, 2.0);
                *out = name_is(name, "odd") ? (m == 1.0 || m == -1.0) : m == 0.0;
                return 0;
            }
            return jj_fail(rc, n, KC_EINVAL, "unsupported operand type(s) for %%: '%s' and 'int'",
                           jj_type_name(v));
        }
        bool odd = (iv % 2) != 0;
        *out = name_is(name, "odd") ? odd : !odd;
    } else if (name_is(name, "divisibleby")) {
        if (!as_int(v, &iv) || !as_int(arg, &dv)) {
            double a, b;
            if ((v.t != JJ_FLOAT && !as_int(v, &iv)) || (arg.t != JJ_FLOAT && !as_int(arg, &dv))) {
                return jj_fail(rc, n, KC_EINVAL,
                               "unsupported operand type(s) for %%: '%s' and '%s'", jj_type_name(v),
                               jj_type_name(arg));
            }
            a = v.t == JJ_FLOAT ? v.u.f : (double)iv;
            b = arg.t == JJ_FLOAT ? arg.u.f : (double)dv;
            if (b == 0) {
                return jj_fail(rc, n, KC_EINVAL, "float modulo");
            }
            *out = fmod(a, b) == 0;
            return 0;
        }
        if (dv == 0) {
            return jj_fail(rc, n, KC_EINVAL, "integer division or modulo by zero");
        }
        *out = dv == -1 ? true : iv % dv == 0;
    } else if (name_is(name, "eq") || name_is(name, "equalto") || name_is(name, "==")) {
        *out = jj_equal(v, arg);
    } else if (name_is(name, "ne") || name_is(name, "!=")) {
        *out = !jj_equal(v, arg);
    } else if (name_is(name, "sameas")) {
        if (v.t != arg.t) {
            *out = false;
        } else if (v.t == JJ_NONE || v.t == JJ_UNDEF) {
            *out = true;
        } else if (v.t == JJ_BOOL) {
            *out = v.u.b == arg.u.b;
        } else if (v.t == JJ_INT) {
            *out = v.u.i == arg.u.i && v.u.i >= -5 && v.u.i <= 256;
        } else if (v.t == JJ_STR) {
            *out = v.u.s == arg.u.s;
        } else {
            *out = v.u.l == arg.u.l;
        }
    } else if (name_is(name, "lt") || name_is(name, "<") || name_is(name, "lessthan") ||
               name_is(name, "le") || name_is(name, "<=") || name_is(name, "gt") ||
               name_is(name, ">") || name_is(name, "greaterthan") || name_is(name, "ge") ||
               name_is(name, ">=")) {
        int c;
        if ((r = jj_compare(v, arg, &c)) < 0) {
            return jj_fail(rc, n, KC_EINVAL, "'%s' and '%s' are not comparable", jj_type_name(v),
                           jj_type_name(arg));
        }
        if (name_is(name, "lt") || name_is(name, "<") || name_is(name, "lessthan")) {
            *out = c < 0;
        } else if (name_is(name, "le") || name_is(name, "<=")) {
            *out = c <= 0;
        } else if (name_is(name, "gt") || name_is(name, ">") || name_is(name, "greaterthan")) {
            *out = c > 0;
        } else {
            *out = c >= 0;
        }
    } else if (name_is(name, "in")) {
        switch (arg.t) {
        case JJ_STR:
            if (v.t != JJ_STR) {
                return jj_fail(rc, n, KC_EINVAL, "'in <string>' requires string as left operand");
            }
            *out = find_bytes(arg.u.s->s, arg.u.s->len, v.u.s->s, v.u.s->len, 0) != SIZE_MAX;
            break;
        case JJ_LIST:
        case JJ_TUPLE:
            *out = false;
            for (size_t i = 0; i < arg.u.l->n && !*out; i++) {
                *out = jj_equal(arg.u.l->v[i], v);
            }
            break;
        case JJ_DICT:
            if (!jj_hashable(v)) {
                return jj_fail(rc, n, KC_EINVAL, "unhashable type: '%s'", jj_type_name(v));
            }
            *out = jj_dict_get(arg.u.d, v) != NULL;
            break;
        case JJ_UNDEF:
            *out = false;
            break;
        default:
            return jj_fail(rc, n, KC_EINVAL, "argument of type '%s' is not iterable",
                           jj_type_name(arg));
        }
    } else if (name_is(name, "lower") || name_is(name, "upper")) {
        const struct jj_str *s;
        if ((r = jj_to_str(rc, n, v, &s)) < 0) {
            return r;
        }
        /* Python's str.islower/isupper: at least one cased character, none of the other case. */
        bool lower = name_is(name, "lower"), res = true, cased = false;
        size_t i = 0;
        while (i < s->len) {
            uint32_t c = jj_utf8_next(s->s, s->len, &i);
            if (lower ? jj_to_lower(c) != c : jj_to_upper(c) != c) {
                res = false;
            }
            if (jj_to_lower(c) != c || jj_to_upper(c) != c) {
                cased = true;
            }
        }
        *out = res && cased;
    } else if (name_is(name, "filter")) {
        *out = v.t == JJ_STR && jj_filter_exists(v.u.s->s, v.u.s->len);
    } else if (name_is(name, "test")) {
        *out = v.t == JJ_STR && jj_test_exists(v.u.s->s, v.u.s->len);
    } else {
        return jj_fail(rc, n, KC_EINVAL, "no test named '%s'", name->s);
    }
    return 0;
}
