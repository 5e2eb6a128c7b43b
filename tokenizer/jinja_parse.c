/*
 * jinja_parse.c — the Jinja engine's front end: template source -> tokens -> syntax tree.
 *
 * Place in the data flow: eng_jinja_parse() runs once per template (at model load or for a
 * --chat-template file); the tree it builds is what jinja_eval.c renders for every request.
 *
 * The lexer follows jinja2's (3.1) rules for the environment transformers uses: newlines are
 * normalized to "\n" and one trailing newline dropped (keep_trailing_newline=False);
 * trim_blocks removes the newline right after a block or comment tag; lstrip_blocks removes
 * spaces and tabs between the start of a line and a block or comment tag; "-" strips all
 * whitespace, "+" keeps it. End tags inside open brackets are not end tags (jinja2's
 * balancing), so `{{ {'a': {'b': 1}} }}` works.
 *
 * DESIGN
 *  1. Recursion is bounded: every recursive parse function counts its depth and the tree
 *     records node depths; both stop at ENG_JINJA_MAX_NESTING with a KC_EFORMAT error.
 *  2. Errors carry the line and column of the token where the problem is found.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja_internal.h"

enum tk {
    TK_EOF = 0,
    TK_TEXT,
    TK_VBEGIN,
    TK_VEND,
    TK_BBEGIN,
    TK_BEND,
    TK_NAME,
    TK_STR,
    TK_INT,
    TK_FLOAT,
    TK_OP,
};

struct tok {
    enum tk t;
    int line, col;
    const char *p; /* source text of the token (names, operators) */
    size_t n;
    struct jj_str *s; /* TK_TEXT, TK_STR */
    int64_t i;
    double f;
};

struct parser {
    struct jj_pool *pool;
    struct kc_error *err;
    const char *src; /* normalized source */
    size_t len;
    struct tok *toks;
    size_t ntok, captok;
    size_t pos; /* current token */
    int depth;  /* recursion depth */
    int loops;  /* enclosing for loops (for break/continue) */
    int rc;
};

static int perr_at(struct parser *p, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int perr_at(struct parser *p, int line, int col, const char *fmt, ...) {
    if (p->rc < 0) {
        return p->rc;
    }
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    p->rc = kc_error_set(p->err, KC_EFORMAT, "template:%d:%d: %s", line, col, msg);
    return p->rc;
}

static int poom(struct parser *p) {
    if (p->rc < 0) {
        return p->rc;
    }
    p->rc = kc_error_set(p->err, KC_ENOMEM, "template: out of memory while parsing");
    return p->rc;
}

/* ---- lexer ---------------------------------------------------------------------------- */

static void pos_of(const struct parser *p, size_t off, int *line, int *col) {
    int l = 1;
    size_t ls = 0;
    for (size_t i = 0; i < off && i < p->len; i++) {
        if (p->src[i] == '\n') {
            l++;
            ls = i + 1;
        }
    }
    *line = l;
    *col = (int)(off - ls) + 1;
}

/* Incremental position tracking: the lexer moves forward only. */
struct lexpos {
    size_t off;
    int line;
    size_t ls;
};

static void lex_advance(const struct parser *p, struct lexpos *lp, size_t to) {
    for (size_t i = lp->off; i < to && i < p->len; i++) {
        if (p->src[i] == '\n') {
            lp->line++;
            lp->ls = i + 1;
        }
    }
    lp->off = to;
}

static struct tok *push_tok(struct parser *p, enum tk t, const struct lexpos *lp) {
    if (p->ntok == p->captok) {
        size_t cap = p->captok ? p->captok * 2 : 256;
        struct tok *nt = jj_realloc(p->pool, p->toks, cap * sizeof(*nt));
        if (!nt) {
            poom(p);
            return NULL;
        }
        p->toks = nt;
        p->captok = cap;
    }
    struct tok *k = &p->toks[p->ntok++];
    memset(k, 0, sizeof(*k));
    k->t = t;
    k->line = lp->line;
    k->col = (int)(lp->off - lp->ls) + 1;
    k->p = p->src + lp->off;
    return k;
}

/* Python's str.isspace() on the code point at s[i]; *n gets its byte length. */
static bool space_at(const char *s, size_t len, size_t i, size_t *n) {
    size_t j = i;
    uint32_t c = jj_utf8_next(s, len, &j);
    *n = j - i;
    return jj_is_space(c);
}

static size_t skip_space(const char *s, size_t len, size_t i) {
    size_t n;
    while (i < len && space_at(s, len, i, &n)) {
        i += n;
    }
    return i;
}

/* Length of text after Python's str.rstrip(). */
static size_t rstrip_len(const char *s, size_t n) {
    /* Walk forward remembering the end of the last non-space code point. */
    size_t i = 0, end = 0, k;
    while (i < n) {
        bool sp = space_at(s, n, i, &k);
        i += k;
        if (!sp) {
            end = i;
        }
    }
    return end;
}

static bool all_space(const char *s, size_t n) {
    size_t i = 0, k;
    while (i < n) {
        if (!space_at(s, n, i, &k)) {
            return false;
        }
        i += k;
    }
    return true;
}

/* Emits the text before a tag, applying "-" (strip all) or lstrip_blocks. */
static int emit_text(struct parser *p, struct lexpos *lp, size_t start, size_t end, char sign,
                     bool lstrip, bool line_starting) {
    size_t n = end - start;
    const char *t = p->src + start;
    if (sign == '-') {
        n = rstrip_len(t, n);
    } else if (sign != '+' && lstrip) {
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--) {
            if (t[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        }
        if ((l_pos > 0 || line_starting) && l_pos < n && all_space(t + l_pos, n - l_pos)) {
            n = l_pos;
        }
    }
    if (n > 0) {
        struct lexpos at = *lp;
        lex_advance(p, &at, start);
        struct tok *k = push_tok(p, TK_TEXT, &at);
        if (!k) {
            return p->rc;
        }
        k->s = jj_str_new(p->pool, t, n);
        if (!k->s) {
            return poom(p);
        }
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Decodes a string literal's body with Python's unicode-escape rules. */
static struct jj_str *unescape(struct parser *p, const char *s, size_t n, int line, int col) {
    struct jj_buf b;
    jj_buf_init(&b, p->pool, 0);
    size_t i = 0;
    while (i < n) {
        if (s[i] != '\\' || i + 1 >= n) {
            jj_buf_addc(&b, s[i++]);
            continue;
        }
        char c = s[i + 1];
        i += 2;
        uint32_t cp = 0;
        int digits = 0;
        switch (c) {
        case '\n':
            continue;
        case '\\':
        case '\'':
        case '"':
            jj_buf_addc(&b, c);
            continue;
        case 'a':
            jj_buf_addc(&b, '\a');
            continue;
        case 'b':
            jj_buf_addc(&b, '\b');
            continue;
        case 'f':
            jj_buf_addc(&b, '\f');
            continue;
        case 'n':
            jj_buf_addc(&b, '\n');
            continue;
        case 'r':
            jj_buf_addc(&b, '\r');
            continue;
        case 't':
            jj_buf_addc(&b, '\t');
            continue;
        case 'v':
            jj_buf_addc(&b, '\v');
            continue;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        default:
            if (c >= '0' && c <= '7') {
                cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++) {
                    cp = cp * 8 + (uint32_t)(s[i++] - '0');
                }
                char u[4];
                jj_buf_add(&b, u, jj_utf8_put(u, cp));
                continue;
            }
            jj_buf_addc(&b, '\\');
            jj_buf_addc(&b, c);
            continue;
        }
        for (int k = 0; k < digits; k++) {
            int h = i < n ? hexval(s[i]) : -1;
            if (h < 0) {
                perr_at(p, line, col, "invalid \\%c escape in a string", c);
                return NULL;
            }
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10FFFF) {
            perr_at(p, line, col, "invalid \\%c escape in a string", c);
            return NULL;
        }
        char u[4];
        jj_buf_add(&b, u, jj_utf8_put(u, cp));
    }
    struct jj_str *r = jj_buf_str(&b);
    if (!r) {
        poom(p);
    }
    return r;
}

static bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

static bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_name_char(char c) {
    return is_name_start(c) || is_digit(c);
}

/* Digits with single '_' separators; returns the end (start when none). */
static size_t scan_digits(const char *s, size_t len, size_t i, int base) {
    size_t start = i;
    while (i < len) {
        char c = s[i];
        int v = hexval(c);
        if (v >= 0 && v < base && !(base <= 10 && !is_digit(c))) {
            i++;
        } else if (c == '_' && i > start && i + 1 < len && hexval(s[i + 1]) >= 0 &&
                   hexval(s[i + 1]) < base) {
            i++;
        } else {
            break;
        }
    }
    return i;
}

static int lex_number(struct parser *p, struct lexpos *lp, size_t *ip) {
    const char *s = p->src;
    size_t i = *ip, len = p->len;
    struct tok *k;
    /* Float: digits ( (.digits)? e[+-]digits | .digits ) */
    size_t d = scan_digits(s, len, i, 10);
    size_t j = d;
    bool is_float = false;
    if (j + 1 < len && s[j] == '.' && is_digit(s[j + 1])) {
        j = scan_digits(s, len, j + 1, 10);
        is_float = true;
    }
    if (j < len && (s[j] == 'e' || s[j] == 'E')) {
        size_t e = j + 1;
        if (e < len && (s[e] == '+' || s[e] == '-')) {
            e++;
        }
        if (e < len && is_digit(s[e])) {
            j = scan_digits(s, len, e, 10);
            is_float = true;
        }
    }
    if (is_float) {
        char tmp[128];
        size_t m = 0;
        for (size_t x = i; x < j && m + 1 < sizeof(tmp); x++) {
            if (s[x] != '_') {
                tmp[m++] = s[x];
            }
        }
        tmp[m] = 0;
        if (!(k = push_tok(p, TK_FLOAT, lp))) {
            return p->rc;
        }
        k->f = strtod(tmp, NULL);
        k->n = j - i;
        *ip = j;
        return 0;
    }
    int base = 10;
    size_t start = i;
    if (s[i] == '0' && i + 1 < len) {
        char c = s[i + 1];
        if (c == 'x' || c == 'X') {
            base = 16;
        } else if (c == 'o' || c == 'O') {
            base = 8;
        } else if (c == 'b' || c == 'B') {
            base = 2;
        }
    }
    if (base != 10) {
        size_t x = i + 2;
        if (x < len && s[x] == '_') {
            x++;
        }
        j = scan_digits(s, len, x, base);
        if (j == x) {
            base = 10; /* "0x" without digits: the integer 0 then a name */
            j = i + 1;
        } else {
            start = x;
        }
    } else {
        j = d;
    }
    int64_t v = 0;
    for (size_t x = start; x < j; x++) {
        if (s[x] == '_') {
            continue;
        }
        int h = hexval(s[x]);
        if (v > (INT64_MAX - h) / base) {
            return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1,
                           "integer literal too large (kvcast's Jinja ints are 64-bit)");
        }
        v = v * base + h;
    }
    if (!(k = push_tok(p, TK_INT, lp))) {
        return p->rc;
    }
    k->i = v;
    k->n = j - i;
    *ip = j;
    return 0;
}

static const char *const OPS2[] = {"//", "**", "==", "!=", "<=", ">="};
static const char OPS1[] = "+-/*%~[](){}<>=.:|,;";

/* Lexes the inside of a tag starting at *ip, up to and including its end. */
static int lex_tag(struct parser *p, struct lexpos *lp, size_t *ip, bool block,
                   bool *line_starting) {
    const char *s = p->src;
    size_t len = p->len, i = *ip;
    char stack[ENG_JINJA_MAX_NESTING];
    int nstack = 0;
    for (;;) {
        i = skip_space(s, len, i);
        lex_advance(p, lp, i);
        if (i >= len) {
            return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1,
                           "unexpected end of template (missing '%s')", block ? "%}" : "}}");
        }
        if (nstack == 0) {
            size_t end = 0;
            bool strip = false, trim = false;
            char c1 = block ? '%' : '}';
            if (s[i] == '-' && i + 2 < len && s[i + 1] == c1 && s[i + 2] == '}') {
                end = i + 3;
                strip = true;
            } else if (block && s[i] == '+' && i + 2 < len && s[i + 1] == '%' && s[i + 2] == '}') {
                end = i + 3;
            } else if (s[i] == c1 && i + 1 < len && s[i + 1] == '}') {
                end = i + 2;
                trim = block;
            }
            if (end) {
                if (!push_tok(p, block ? TK_BEND : TK_VEND, lp)) {
                    return p->rc;
                }
                if (strip) {
                    end = skip_space(s, len, end);
                } else if (trim && end < len && s[end] == '\n') {
                    end++;
                }
                *line_starting = s[end - 1] == '\n';
                lex_advance(p, lp, end);
                *ip = end;
                return 0;
            }
        }
        char c = s[i];
        struct tok *k;
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < len && s[j] != c) {
                j += s[j] == '\\' ? 2 : 1;
            }
            if (j >= len) {
                return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1,
                               "unterminated string literal");
            }
            if (!(k = push_tok(p, TK_STR, lp))) {
                return p->rc;
            }
            k->s = unescape(p, s + i + 1, j - i - 1, k->line, k->col);
            if (!k->s) {
                return p->rc;
            }
            k->n = j + 1 - i;
            i = j + 1;
        } else if (is_digit(c)) {
            int rc = lex_number(p, lp, &i);
            if (rc < 0) {
                return rc;
            }
        } else if (is_name_start(c)) {
            size_t j = i;
            while (j < len && is_name_char(s[j])) {
                j++;
            }
            if (!(k = push_tok(p, TK_NAME, lp))) {
                return p->rc;
            }
            k->n = j - i;
            i = j;
        } else {
            size_t n = 0;
            for (size_t x = 0; x < sizeof(OPS2) / sizeof(OPS2[0]); x++) {
                if (i + 1 < len && s[i] == OPS2[x][0] && s[i + 1] == OPS2[x][1]) {
                    n = 2;
                    break;
                }
            }
            if (!n && c && strchr(OPS1, c)) {
                n = 1;
            }
            if (!n) {
                size_t cl = i;
                uint32_t cp = jj_utf8_next(s, len, &cl);
                return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1,
                               "unexpected character U+%04X", cp);
            }
            if (n == 1 && (c == '(' || c == '[' || c == '{')) {
                if (nstack >= ENG_JINJA_MAX_NESTING) {
                    return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1,
                                   "brackets nested too deeply (limit %d)", ENG_JINJA_MAX_NESTING);
                }
                stack[nstack++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (n == 1 && (c == ')' || c == ']' || c == '}')) {
                if (nstack == 0 || stack[nstack - 1] != c) {
                    return perr_at(p, lp->line, (int)(lp->off - lp->ls) + 1, "unexpected '%c'", c);
                }
                nstack--;
            }
            if (!(k = push_tok(p, TK_OP, lp))) {
                return p->rc;
            }
            k->n = n;
            i += n;
        }
        lex_advance(p, lp, i);
    }
}

/* Finds the next "{{", "{%" or "{#" at or after i; returns len when none. */
static size_t find_tag(const char *s, size_t len, size_t i) {
    while (i + 1 < len) {
        const char *q = memchr(s + i, '{', len - i - 1);
        if (!q) {
            return len;
        }
        i = (size_t)(q - s);
        char c = s[i + 1];
        if (c == '{' || c == '%' || c == '#') {
            return i;
        }
        i++;
    }
    return len;
}

/* Matches `raw` / `endraw` tag bodies: after "{%" and an optional sign, \s* WORD \s* then
 * "-%}" / "+%}" (endraw only) / "%}". Returns the offset after "%}" (0 = no match); *strip and
 * *plus tell which end was used. */
static size_t match_word_tag(const char *s, size_t len, size_t i, const char *word, bool allow_plus,
                             bool *strip, bool *plus) {
    size_t wl = strlen(word);
    i = skip_space(s, len, i);
    if (i + wl > len || memcmp(s + i, word, wl) != 0) {
        return 0;
    }
    i = skip_space(s, len, i + wl);
    *strip = *plus = false;
    if (i + 2 < len && s[i] == '-' && s[i + 1] == '%' && s[i + 2] == '}') {
        *strip = true;
        return i + 3;
    }
    if (allow_plus && i + 2 < len && s[i] == '+' && s[i + 1] == '%' && s[i + 2] == '}') {
        *plus = true;
        return i + 3;
    }
    if (i + 1 < len && s[i] == '%' && s[i + 1] == '}') {
        return i + 2;
    }
    return 0;
}

static int lex(struct parser *p) {
    const char *s = p->src;
    size_t len = p->len, i = 0;
    struct lexpos lp = {0, 1, 0};
    bool line_starting = true;
    int rc;
    while (i < len) {
        size_t k = find_tag(s, len, i);
        if (k >= len) {
            if ((rc = emit_text(p, &lp, i, len, 0, false, false)) < 0) {
                return rc;
            }
            break;
        }
        char kind = s[k + 1];
        char sign = k + 2 < len && (s[k + 2] == '-' || s[k + 2] == '+') ? s[k + 2] : 0;
        size_t after = k + 2 + (sign ? 1 : 0);
        bool strip = false, plus = false;
        size_t raw_end = 0;
        if (kind == '%') {
            raw_end = match_word_tag(s, len, after, "raw", false, &strip, &plus);
        }
        if ((rc = emit_text(p, &lp, i, k, sign, kind != '{', line_starting)) < 0) {
            return rc;
        }
        lex_advance(p, &lp, k);
        if (raw_end) {
            size_t body = strip ? skip_space(s, len, raw_end) : raw_end;
            bool raw_line_starting = s[body - 1] == '\n';
            /* Find "{%" [-+]? \s* endraw \s* end. */
            size_t j = body, e = 0;
            char esign = 0;
            for (;;) {
                j = find_tag(s, len, j);
                if (j >= len) {
                    return perr_at(p, lp.line, (int)(lp.off - lp.ls) + 1,
                                   "missing end of raw directive");
                }
                if (s[j + 1] == '%') {
                    esign = j + 2 < len && (s[j + 2] == '-' || s[j + 2] == '+') ? s[j + 2] : 0;
                    e = match_word_tag(s, len, j + 2 + (esign ? 1 : 0), "endraw", true, &strip,
                                       &plus);
                    if (e) {
                        break;
                    }
                }
                j++;
            }
            if ((rc = emit_text(p, &lp, body, j, esign, true, raw_line_starting)) < 0) {
                return rc;
            }
            if (strip) {
                e = skip_space(s, len, e);
            } else if (!plus && e < len && s[e] == '\n') {
                e++;
            }
            line_starting = s[e - 1] == '\n';
            lex_advance(p, &lp, e);
            i = e;
            continue;
        }
        if (kind == '#') {
            size_t j = after, e = 0;
            for (;;) {
                const char *q = j + 1 < len ? memchr(s + j, '#', len - j - 1) : NULL;
                while (q && q[1] != '}') {
                    size_t o = (size_t)(q - s) + 1;
                    q = o + 1 < len ? memchr(s + o, '#', len - o - 1) : NULL;
                }
                if (!q) {
                    return perr_at(p, lp.line, (int)(lp.off - lp.ls) + 1,
                                   "missing end of comment tag");
                }
                size_t h = (size_t)(q - s);
                e = h + 2;
                if (h > after && s[h - 1] == '-') {
                    e = skip_space(s, len, e);
                } else if (h > after && s[h - 1] == '+') {
                    /* keep */
                } else if (e < len && s[e] == '\n') {
                    e++;
                }
                break;
            }
            line_starting = s[e - 1] == '\n';
            lex_advance(p, &lp, e);
            i = e;
            continue;
        }
        if (!push_tok(p, kind == '{' ? TK_VBEGIN : TK_BBEGIN, &lp)) {
            return p->rc;
        }
        i = after;
        if ((rc = lex_tag(p, &lp, &i, kind == '%', &line_starting)) < 0) {
            return rc;
        }
    }
    if (!push_tok(p, TK_EOF, &lp)) {
        return p->rc;
    }
    return 0;
}

/* ---- parser helpers ------------------------------------------------------------------- */

static struct tok *cur(struct parser *p) {
    return &p->toks[p->pos];
}

static struct tok *peek(struct parser *p, size_t k) {
    size_t i = p->pos + k;
    return &p->toks[i < p->ntok ? i : p->ntok - 1];
}

static void next(struct parser *p) {
    if (p->pos + 1 < p->ntok) {
        p->pos++;
    }
}

static bool is_op(const struct tok *k, const char *op) {
    return k->t == TK_OP && k->n == strlen(op) && memcmp(k->p, op, k->n) == 0;
}

static bool is_name(const struct tok *k, const char *name) {
    return k->t == TK_NAME && k->n == strlen(name) && memcmp(k->p, name, k->n) == 0;
}

static const char *tok_desc(const struct tok *k, char *buf, size_t cap) {
    switch (k->t) {
    case TK_EOF:
        return "end of template";
    case TK_TEXT:
        return "template text";
    case TK_VBEGIN:
        return "'{{'";
    case TK_VEND:
        return "'}}'";
    case TK_BBEGIN:
        return "'{%'";
    case TK_BEND:
        return "'%}'";
    case TK_STR:
        return "string literal";
    case TK_INT:
    case TK_FLOAT:
        return "number";
    default:
        snprintf(buf, cap, "'%.*s'", (int)(k->n > 40 ? 40 : k->n), k->p);
        return buf;
    }
}

static int unexpected(struct parser *p, const char *want) {
    char buf[64];
    struct tok *k = cur(p);
    if (want) {
        return perr_at(p, k->line, k->col, "expected %s, got %s", want,
                       tok_desc(k, buf, sizeof(buf)));
    }
    return perr_at(p, k->line, k->col, "unexpected %s", tok_desc(k, buf, sizeof(buf)));
}

static bool expect_op(struct parser *p, const char *op) {
    if (!is_op(cur(p), op)) {
        char want[16];
        snprintf(want, sizeof(want), "'%s'", op);
        unexpected(p, want);
        return false;
    }
    next(p);
    return true;
}

static bool expect_t(struct parser *p, enum tk t, const char *what) {
    if (cur(p)->t != t) {
        unexpected(p, what);
        return false;
    }
    next(p);
    return true;
}

static struct jj_node *mk(struct parser *p, enum jj_nk kind, const struct tok *at) {
    struct jj_node *n = jj_alloc(p->pool, sizeof(*n));
    if (!n) {
        poom(p);
        return NULL;
    }
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    n->depth = 1;
    return n;
}

/* Records a child's depth in its parent; false (with an error) past the nesting limit. */
static bool adopt(struct parser *p, struct jj_node *parent, const struct jj_node *child) {
    if (child && child->depth + 1 > parent->depth) {
        parent->depth = child->depth + 1;
        if (parent->depth > ENG_JINJA_MAX_NESTING) {
            perr_at(p, parent->line, parent->col, "template nested too deeply (limit %d)",
                    ENG_JINJA_MAX_NESTING);
            return false;
        }
    }
    return true;
}

static bool add_kid(struct parser *p, struct jj_node *n, struct jj_node *kid,
                    const struct jj_str *name) {
    if ((n->nkids & (n->nkids - 1)) == 0 || n->nkids == 0) {
        size_t cap = n->nkids ? (size_t)n->nkids * 2 : 1;
        struct jj_node **nk = jj_realloc(p->pool, n->kids, cap * sizeof(*nk));
        const struct jj_str **nn = jj_realloc(p->pool, n->names, cap * sizeof(*nn));
        if (nk) {
            n->kids = nk;
        }
        if (nn) {
            n->names = nn;
        }
        if (!nk || !nn) {
            poom(p);
            return false;
        }
        int *no = NULL;
        if (n->kind == JN_COMPARE) {
            no = jj_realloc(p->pool, n->ops, cap * sizeof(*no));
            if (!no) {
                poom(p);
                return false;
            }
            n->ops = no;
        }
    }
    n->kids[n->nkids] = kid;
    n->names[n->nkids] = name;
    n->nkids++;
    return adopt(p, n, kid);
}

static struct jj_str *tok_str(struct parser *p, const struct tok *k) {
    struct jj_str *s = jj_str_new(p->pool, k->p, k->n);
    if (!s) {
        poom(p);
    }
    return s;
}

static bool enter(struct parser *p) {
    if (++p->depth > ENG_JINJA_MAX_NESTING) {
        struct tok *k = cur(p);
        perr_at(p, k->line, k->col, "template nested too deeply (limit %d)", ENG_JINJA_MAX_NESTING);
        return false;
    }
    return true;
}

static void leave(struct parser *p) {
    p->depth--;
}

/* ---- expressions ---------------------------------------------------------------------- */

static struct jj_node *parse_expr(struct parser *p, bool condexpr);
static struct jj_node *parse_or(struct parser *p);
static struct jj_node *parse_unary(struct parser *p, bool with_filter);
static struct jj_node *parse_primary(struct parser *p);
static struct jj_node *parse_postfix(struct parser *p, struct jj_node *n);
static struct jj_node *parse_filter_expr(struct parser *p, struct jj_node *n);

static struct jj_node *binop(struct parser *p, enum jj_nk kind, int op, const struct tok *at,
                             struct jj_node *a, struct jj_node *b) {
    struct jj_node *n = mk(p, kind, at);
    if (!n) {
        return NULL;
    }
    n->op = op;
    n->a = a;
    n->b = b;
    if (!adopt(p, n, a) || !adopt(p, n, b)) {
        return NULL;
    }
    return n;
}

/* A tuple or a single expression, up to an end token (jinja2's parse_tuple). */
static bool tuple_end(struct parser *p, const char *extra_end) {
    struct tok *k = cur(p);
    return k->t == TK_VEND || k->t == TK_BEND || is_op(k, ")") || k->t == TK_EOF ||
           (extra_end && is_name(k, extra_end));
}

static struct jj_node *parse_tuple(struct parser *p, bool condexpr, bool explicit_parens,
                                   const char *extra_end) {
    struct tok *at = cur(p);
    struct jj_node *first = NULL, *t = NULL;
    bool is_tuple = false;
    int count = 0;
    for (;;) {
        if (count) {
            if (!expect_op(p, ",")) {
                return NULL;
            }
        }
        if (tuple_end(p, extra_end)) {
            break;
        }
        struct jj_node *e = parse_expr(p, condexpr);
        if (!e) {
            return NULL;
        }
        if (count == 0) {
            first = e;
        } else {
            if (!t) {
                if (!(t = mk(p, JN_TUPLE, at)) || !add_kid(p, t, first, NULL)) {
                    return NULL;
                }
            }
            if (!add_kid(p, t, e, NULL)) {
                return NULL;
            }
        }
        count++;
        if (is_op(cur(p), ",")) {
            is_tuple = true;
        } else {
            break;
        }
    }
    if (!is_tuple) {
        if (first) {
            return first;
        }
        if (!explicit_parens) {
            unexpected(p, "an expression");
            return NULL;
        }
    }
    if (!t) {
        if (!(t = mk(p, JN_TUPLE, at))) {
            return NULL;
        }
        if (first && !add_kid(p, t, first, NULL)) {
            return NULL;
        }
    }
    return t;
}

static struct jj_node *parse_expr(struct parser *p, bool condexpr) {
    if (!enter(p)) {
        return NULL;
    }
    struct jj_node *n = parse_or(p);
    while (n && condexpr && is_name(cur(p), "if")) {
        struct tok *at = cur(p);
        next(p);
        struct jj_node *c = mk(p, JN_COND, at);
        if (!c) {
            n = NULL;
            break;
        }
        c->b = n;
        if (!(c->a = parse_or(p))) {
            n = NULL;
            break;
        }
        if (is_name(cur(p), "else")) {
            next(p);
            if (!(c->c = parse_expr(p, true))) {
                n = NULL;
                break;
            }
        }
        if (!adopt(p, c, c->a) || !adopt(p, c, c->b) || !adopt(p, c, c->c)) {
            n = NULL;
            break;
        }
        n = c;
    }
    leave(p);
    return n;
}

static struct jj_node *parse_not(struct parser *p);

static struct jj_node *parse_and(struct parser *p) {
    struct jj_node *n = parse_not(p);
    while (n && is_name(cur(p), "and")) {
        struct tok *at = cur(p);
        next(p);
        struct jj_node *b = parse_not(p);
        n = b ? binop(p, JN_AND, 0, at, n, b) : NULL;
    }
    return n;
}

static struct jj_node *parse_or(struct parser *p) {
    struct jj_node *n = parse_and(p);
    while (n && is_name(cur(p), "or")) {
        struct tok *at = cur(p);
        next(p);
        struct jj_node *b = parse_and(p);
        n = b ? binop(p, JN_OR, 0, at, n, b) : NULL;
    }
    return n;
}

static struct jj_node *parse_math1(struct parser *p);

static struct jj_node *parse_compare(struct parser *p) {
    struct tok *at = cur(p);
    struct jj_node *first = parse_math1(p);
    if (!first) {
        return NULL;
    }
    struct jj_node *c = NULL;
    for (;;) {
        struct tok *k = cur(p);
        int op = 0;
        if (is_op(k, "==")) {
            op = JJ_OP_EQ;
        } else if (is_op(k, "!=")) {
            op = JJ_OP_NE;
        } else if (is_op(k, "<")) {
            op = JJ_OP_LT;
        } else if (is_op(k, "<=")) {
            op = JJ_OP_LE;
        } else if (is_op(k, ">")) {
            op = JJ_OP_GT;
        } else if (is_op(k, ">=")) {
            op = JJ_OP_GE;
        } else if (is_name(k, "in")) {
            op = JJ_OP_IN;
        } else if (is_name(k, "not") && is_name(peek(p, 1), "in")) {
            op = JJ_OP_NOTIN;
            next(p);
        } else {
            break;
        }
        next(p);
        struct jj_node *e = parse_math1(p);
        if (!e) {
            return NULL;
        }
        if (!c) {
            if (!(c = mk(p, JN_COMPARE, at))) {
                return NULL;
            }
            c->a = first;
            if (!adopt(p, c, first)) {
                return NULL;
            }
        }
        if (!add_kid(p, c, e, NULL)) {
            return NULL;
        }
        c->ops[c->nkids - 1] = op;
    }
    return c ? c : first;
}

static struct jj_node *parse_not(struct parser *p) {
    if (is_name(cur(p), "not")) {
        struct tok *at = cur(p);
        next(p);
        if (!enter(p)) {
            return NULL;
        }
        struct jj_node *a = parse_not(p);
        leave(p);
        return a ? binop(p, JN_NOT, 0, at, a, NULL) : NULL;
    }
    return parse_compare(p);
}

static struct jj_node *parse_math2(struct parser *p);

static struct jj_node *parse_concat(struct parser *p) {
    struct jj_node *n = parse_math2(p);
    while (n && is_op(cur(p), "~")) {
        struct tok *at = cur(p);
        next(p);
        struct jj_node *b = parse_math2(p);
        n = b ? binop(p, JN_BINOP, JJ_OP_CONCAT, at, n, b) : NULL;
    }
    return n;
}

static struct jj_node *parse_math1(struct parser *p) {
    struct jj_node *n = parse_concat(p);
    for (;;) {
        struct tok *at = cur(p);
        int op = is_op(at, "+") ? JJ_OP_ADD : is_op(at, "-") ? JJ_OP_SUB : 0;
        if (!n || !op) {
            return n;
        }
        next(p);
        struct jj_node *b = parse_concat(p);
        n = b ? binop(p, JN_BINOP, op, at, n, b) : NULL;
    }
}

static struct jj_node *parse_pow(struct parser *p) {
    struct jj_node *n = parse_unary(p, true);
    while (n && is_op(cur(p), "**")) {
        struct tok *at = cur(p);
        next(p);
        struct jj_node *b = parse_unary(p, true);
        n = b ? binop(p, JN_BINOP, JJ_OP_POW, at, n, b) : NULL;
    }
    return n;
}

static struct jj_node *parse_math2(struct parser *p) {
    struct jj_node *n = parse_pow(p);
    for (;;) {
        struct tok *at = cur(p);
        int op = is_op(at, "*")    ? JJ_OP_MUL
                 : is_op(at, "/")  ? JJ_OP_DIV
                 : is_op(at, "//") ? JJ_OP_FLOORDIV
                 : is_op(at, "%")  ? JJ_OP_MOD
                                   : 0;
        if (!n || !op) {
            return n;
        }
        next(p);
        struct jj_node *b = parse_pow(p);
        n = b ? binop(p, JN_BINOP, op, at, n, b) : NULL;
    }
}

static struct jj_node *parse_unary(struct parser *p, bool with_filter) {
    struct tok *at = cur(p);
    struct jj_node *n;
    if (!enter(p)) {
        return NULL;
    }
    if (is_op(at, "-") || is_op(at, "+")) {
        next(p);
        struct jj_node *a = parse_unary(p, false);
        n = a ? binop(p, is_op(at, "-") ? JN_NEG : JN_POS, 0, at, a, NULL) : NULL;
    } else {
        n = parse_primary(p);
    }
    if (n) {
        n = parse_postfix(p, n);
    }
    if (n && with_filter) {
        n = parse_filter_expr(p, n);
    }
    leave(p);
    return n;
}

static struct jj_node *parse_list_or_dict(struct parser *p, bool dict) {
    struct tok *at = cur(p);
    next(p);
    struct jj_node *n = mk(p, dict ? JN_DICT : JN_LIST, at);
    if (!n) {
        return NULL;
    }
    const char *close = dict ? "}" : "]";
    while (!is_op(cur(p), close)) {
        if (n->nkids) {
            if (!expect_op(p, ",")) {
                return NULL;
            }
            if (is_op(cur(p), close)) {
                break;
            }
        }
        struct jj_node *e = parse_expr(p, true);
        if (!e || !add_kid(p, n, e, NULL)) {
            return NULL;
        }
        if (dict) {
            if (!expect_op(p, ":")) {
                return NULL;
            }
            struct jj_node *v = parse_expr(p, true);
            if (!v || !add_kid(p, n, v, NULL)) {
                return NULL;
            }
        }
    }
    next(p);
    return n;
}

static struct jj_node *parse_primary(struct parser *p) {
    struct tok *k = cur(p);
    struct jj_node *n;
    switch (k->t) {
    case TK_NAME:
        if (!(n = mk(p, JN_CONST, k))) {
            return NULL;
        }
        if (is_name(k, "true") || is_name(k, "True")) {
            n->val = jj_bool(true);
        } else if (is_name(k, "false") || is_name(k, "False")) {
            n->val = jj_bool(false);
        } else if (is_name(k, "none") || is_name(k, "None")) {
            n->val = jj_none();
        } else {
            n->kind = JN_NAME;
            if (!(n->name = tok_str(p, k))) {
                return NULL;
            }
        }
        next(p);
        return n;
    case TK_STR: {
        if (!(n = mk(p, JN_CONST, k))) {
            return NULL;
        }
        const struct jj_str *s = k->s;
        next(p);
        if (cur(p)->t == TK_STR) {
            /* Adjacent literals concatenate. */
            struct jj_buf b;
            jj_buf_init(&b, p->pool, 0);
            jj_buf_add(&b, s->s, s->len);
            while (cur(p)->t == TK_STR) {
                jj_buf_add(&b, cur(p)->s->s, cur(p)->s->len);
                next(p);
            }
            if (!(s = jj_buf_str(&b))) {
                poom(p);
                return NULL;
            }
        }
        n->val = jj_strv(s);
        return n;
    }
    case TK_INT:
    case TK_FLOAT:
        if (!(n = mk(p, JN_CONST, k))) {
            return NULL;
        }
        n->val = k->t == TK_INT ? jj_int(k->i) : jj_float(k->f);
        next(p);
        return n;
    case TK_OP:
        if (is_op(k, "(")) {
            next(p);
            n = parse_tuple(p, true, true, NULL);
            if (!n || !expect_op(p, ")")) {
                return NULL;
            }
            return n;
        }
        if (is_op(k, "[")) {
            return parse_list_or_dict(p, false);
        }
        if (is_op(k, "{")) {
            return parse_list_or_dict(p, true);
        }
        break;
    default:
        break;
    }
    unexpected(p, NULL);
    return NULL;
}

/* Call arguments after '(' into n's kids/names. */
static bool parse_call_args(struct parser *p, struct jj_node *n) {
    if (!expect_op(p, "(")) {
        return false;
    }
    bool seen_kw = false;
    int count = 0;
    while (!is_op(cur(p), ")")) {
        if (count) {
            if (!expect_op(p, ",")) {
                return false;
            }
            if (is_op(cur(p), ")")) {
                break;
            }
        }
        if (is_op(cur(p), "*") || is_op(cur(p), "**")) {
            struct tok *k = cur(p);
            perr_at(p, k->line, k->col, "*args and **kwargs in calls are not supported");
            return false;
        }
        const struct jj_str *kw = NULL;
        if (cur(p)->t == TK_NAME && is_op(peek(p, 1), "=")) {
            if (!(kw = tok_str(p, cur(p)))) {
                return false;
            }
            next(p);
            next(p);
            seen_kw = true;
        } else if (seen_kw) {
            struct tok *k = cur(p);
            perr_at(p, k->line, k->col, "positional argument after keyword argument");
            return false;
        }
        struct jj_node *e = parse_expr(p, true);
        if (!e || !add_kid(p, n, e, kw)) {
            return false;
        }
        count++;
    }
    next(p);
    return true;
}

static struct jj_node *parse_call(struct parser *p, struct jj_node *callee) {
    struct jj_node *n = mk(p, JN_CALL, cur(p));
    if (!n) {
        return NULL;
    }
    n->line = callee->line;
    n->col = callee->col;
    n->a = callee;
    if (!adopt(p, n, callee) || !parse_call_args(p, n)) {
        return NULL;
    }
    return n;
}

static struct jj_node *parse_subscript(struct parser *p, struct jj_node *obj) {
    struct tok *at = cur(p);
    if (is_op(at, ".")) {
        next(p);
        struct tok *k = cur(p);
        struct jj_node *n;
        if (k->t == TK_NAME) {
            if (!(n = mk(p, JN_GETATTR, at)) || !(n->name = tok_str(p, k))) {
                return NULL;
            }
        } else if (k->t == TK_INT) {
            struct jj_node *idx = mk(p, JN_CONST, k);
            if (!idx || !(n = mk(p, JN_GETITEM, at))) {
                return NULL;
            }
            idx->val = jj_int(k->i);
            n->b = idx;
        } else {
            unexpected(p, "an attribute name");
            return NULL;
        }
        next(p);
        n->a = obj;
        return adopt(p, n, obj) && adopt(p, n, n->b) ? n : NULL;
    }
    /* '[' subscript {',' subscript} ']' */
    next(p);
    struct jj_node *items[16];
    int nitems = 0;
    bool any_tuple = false;
    while (!is_op(cur(p), "]")) {
        if (nitems) {
            if (!expect_op(p, ",")) {
                return NULL;
            }
            any_tuple = true;
            if (is_op(cur(p), "]")) {
                break;
            }
        }
        if (nitems == 16) {
            unexpected(p, "']'");
            return NULL;
        }
        struct tok *sat = cur(p);
        struct jj_node *parts[3] = {NULL, NULL, NULL};
        bool is_slice = false;
        if (!is_op(cur(p), ":")) {
            if (!(parts[0] = parse_expr(p, true))) {
                return NULL;
            }
        }
        if (is_op(cur(p), ":")) {
            is_slice = true;
            next(p);
            if (!is_op(cur(p), "]") && !is_op(cur(p), ",") && !is_op(cur(p), ":")) {
                if (!(parts[1] = parse_expr(p, true))) {
                    return NULL;
                }
            }
            if (is_op(cur(p), ":")) {
                next(p);
                if (!is_op(cur(p), "]") && !is_op(cur(p), ",")) {
                    if (!(parts[2] = parse_expr(p, true))) {
                        return NULL;
                    }
                }
            }
        }
        if (is_slice) {
            struct jj_node *s = mk(p, JN_SLICE, sat);
            if (!s) {
                return NULL;
            }
            for (int i = 0; i < 3; i++) {
                if (!add_kid(p, s, parts[i], NULL)) {
                    return NULL;
                }
            }
            items[nitems++] = s;
        } else {
            items[nitems++] = parts[0];
        }
    }
    next(p);
    struct jj_node *key = nitems ? items[0] : NULL;
    if (nitems != 1 || any_tuple) {
        /* x[] is x[()] in jinja2. */
        if (!(key = mk(p, JN_TUPLE, at))) {
            return NULL;
        }
        for (int i = 0; i < nitems; i++) {
            if (items[i]->kind == JN_SLICE) {
                perr_at(p, at->line, at->col, "slices inside tuple subscripts are not supported");
                return NULL;
            }
            if (!add_kid(p, key, items[i], NULL)) {
                return NULL;
            }
        }
    }
    if (key->kind == JN_SLICE) {
        key->a = obj;
        key->line = at->line;
        key->col = at->col;
        return adopt(p, key, obj) ? key : NULL;
    }
    struct jj_node *n = mk(p, JN_GETITEM, at);
    if (!n) {
        return NULL;
    }
    n->a = obj;
    n->b = key;
    return adopt(p, n, obj) && adopt(p, n, key) ? n : NULL;
}

static struct jj_node *parse_postfix(struct parser *p, struct jj_node *n) {
    while (n) {
        struct tok *k = cur(p);
        if (is_op(k, ".") || is_op(k, "[")) {
            n = parse_subscript(p, n);
        } else if (is_op(k, "(")) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

/* Dotted filter/test name. */
static struct jj_str *parse_dotted(struct parser *p) {
    struct tok *k = cur(p);
    if (k->t != TK_NAME) {
        unexpected(p, "a name");
        return NULL;
    }
    const char *start = k->p;
    const char *end = k->p + k->n;
    next(p);
    while (is_op(cur(p), ".") && peek(p, 1)->t == TK_NAME) {
        next(p);
        end = cur(p)->p + cur(p)->n;
        next(p);
    }
    struct jj_str *s = jj_str_new(p->pool, start, (size_t)(end - start));
    if (!s) {
        poom(p);
    }
    return s;
}

static struct jj_node *parse_filter(struct parser *p, struct jj_node *operand, bool start_pipe) {
    if (start_pipe) {
        next(p); /* '|' */
    }
    struct tok *at = cur(p);
    struct jj_node *n = mk(p, JN_FILTER, at);
    if (!n || !(n->name = parse_dotted(p))) {
        return NULL;
    }
    if (!jj_filter_exists(n->name->s, n->name->len)) {
        perr_at(p, at->line, at->col, "no filter named '%s'", n->name->s);
        return NULL;
    }
    n->a = operand;
    if (!adopt(p, n, operand)) {
        return NULL;
    }
    if (is_op(cur(p), "(") && !parse_call_args(p, n)) {
        return NULL;
    }
    return n;
}

static struct jj_node *parse_test(struct parser *p, struct jj_node *operand) {
    next(p); /* 'is' */
    int negate = 0;
    if (is_name(cur(p), "not")) {
        negate = 1;
        next(p);
    }
    struct tok *at = cur(p);
    struct jj_node *n = mk(p, JN_TEST, at);
    if (!n || !(n->name = parse_dotted(p))) {
        return NULL;
    }
    if (!jj_test_exists(n->name->s, n->name->len)) {
        perr_at(p, at->line, at->col, "no test named '%s'", n->name->s);
        return NULL;
    }
    n->op = negate;
    n->a = operand;
    if (!adopt(p, n, operand)) {
        return NULL;
    }
    struct tok *k = cur(p);
    if (is_op(k, "(")) {
        if (!parse_call_args(p, n)) {
            return NULL;
        }
    } else if ((k->t == TK_NAME || k->t == TK_STR || k->t == TK_INT || k->t == TK_FLOAT ||
                is_op(k, "[") || is_op(k, "{")) &&
               !is_name(k, "else") && !is_name(k, "or") && !is_name(k, "and")) {
        if (is_name(k, "is")) {
            perr_at(p, k->line, k->col, "you cannot chain multiple tests with is");
            return NULL;
        }
        struct jj_node *arg = parse_primary(p);
        if (arg) {
            arg = parse_postfix(p, arg);
        }
        if (!arg || !add_kid(p, n, arg, NULL)) {
            return NULL;
        }
    }
    return n;
}

static struct jj_node *parse_filter_expr(struct parser *p, struct jj_node *n) {
    while (n) {
        struct tok *k = cur(p);
        if (is_op(k, "|")) {
            n = parse_filter(p, n, true);
        } else if (is_name(k, "is")) {
            n = parse_test(p, n);
        } else if (is_op(k, "(")) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

/* ---- statements ----------------------------------------------------------------------- */

static struct jj_node *parse_body(struct parser *p, const char *const *ends);

/* An assignment target: NAME, NAME.attr (namespace), or a tuple of names. */
static struct jj_node *parse_target(struct parser *p, bool allow_ns, const char *extra_end) {
    struct tok *at = cur(p);
    if (allow_ns && at->t == TK_NAME && is_op(peek(p, 1), ".") && peek(p, 2)->t == TK_NAME) {
        struct jj_node *obj = mk(p, JN_NAME, at);
        if (!obj || !(obj->name = tok_str(p, at))) {
            return NULL;
        }
        next(p);
        next(p);
        struct jj_node *n = mk(p, JN_GETATTR, at);
        if (!n || !(n->name = tok_str(p, cur(p)))) {
            return NULL;
        }
        n->a = obj;
        next(p);
        return adopt(p, n, obj) ? n : NULL;
    }
    struct jj_node *t = NULL, *first = NULL;
    bool parens = false;
    if (is_op(at, "(")) {
        parens = true;
        next(p);
    }
    for (;;) {
        struct tok *k = cur(p);
        struct jj_node *nm;
        if (is_op(k, "(")) {
            if (!enter(p)) {
                return NULL;
            }
            nm = parse_target(p, false, NULL);
            leave(p);
            if (!nm) {
                return NULL;
            }
        } else {
            if (k->t != TK_NAME) {
                unexpected(p, "a variable name");
                return NULL;
            }
            nm = mk(p, JN_NAME, k);
            if (!nm || !(nm->name = tok_str(p, k))) {
                return NULL;
            }
            next(p);
        }
        if (!first) {
            first = nm;
        } else {
            if (!t) {
                if (!(t = mk(p, JN_TUPLE, at)) || !add_kid(p, t, first, NULL)) {
                    return NULL;
                }
            }
            if (!add_kid(p, t, nm, NULL)) {
                return NULL;
            }
        }
        if (!is_op(cur(p), ",")) {
            break;
        }
        next(p);
        if (!t && !(t = mk(p, JN_TUPLE, at))) {
            return NULL;
        }
        if (t->nkids == 0 && !add_kid(p, t, first, NULL)) {
            return NULL;
        }
        if ((parens && is_op(cur(p), ")")) || (extra_end && is_name(cur(p), extra_end)) ||
            is_op(cur(p), "=")) {
            break;
        }
    }
    if (parens && !expect_op(p, ")")) {
        return NULL;
    }
    return t ? t : first;
}

static bool end_tag(struct parser *p, const char *name) {
    /* cur is the end tag's name (parse_body stopped there). */
    if (!is_name(cur(p), name)) {
        char want[32];
        snprintf(want, sizeof(want), "'%s'", name);
        unexpected(p, want);
        return false;
    }
    next(p);
    return expect_t(p, TK_BEND, "'%}'");
}

static struct jj_node *parse_for(struct parser *p, struct tok *at) {
    struct jj_node *n = mk(p, JN_FOR, at);
    if (!n || !(n->a = parse_target(p, false, "in"))) {
        return NULL;
    }
    if (!is_name(cur(p), "in")) {
        unexpected(p, "'in'");
        return NULL;
    }
    next(p);
    if (!(n->b = parse_tuple(p, false, false, "recursive"))) {
        return NULL;
    }
    if (is_name(cur(p), "if")) {
        next(p);
        if (!(n->c = parse_expr(p, true))) {
            return NULL;
        }
    }
    if (is_name(cur(p), "recursive")) {
        struct tok *k = cur(p);
        perr_at(p, k->line, k->col, "recursive for loops are not supported");
        return NULL;
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    static const char *const ends1[] = {"endfor", "else", NULL};
    static const char *const ends2[] = {"endfor", NULL};
    p->loops++;
    n->body = parse_body(p, ends1);
    p->loops--;
    if (!n->body) {
        return NULL;
    }
    if (is_name(cur(p), "else")) {
        next(p);
        if (!expect_t(p, TK_BEND, "'%}'") || !(n->els = parse_body(p, ends2))) {
            return NULL;
        }
    }
    if (!end_tag(p, "endfor")) {
        return NULL;
    }
    if (!adopt(p, n, n->a) || !adopt(p, n, n->b) || !adopt(p, n, n->c) || !adopt(p, n, n->body) ||
        !adopt(p, n, n->els)) {
        return NULL;
    }
    return n;
}

static struct jj_node *parse_if(struct parser *p, struct tok *at) {
    struct jj_node *n = mk(p, JN_IF, at);
    if (!n || !(n->a = parse_tuple(p, false, false, NULL))) {
        return NULL;
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const ends2[] = {"endif", NULL};
    if (!(n->body = parse_body(p, ends))) {
        return NULL;
    }
    struct tok *k = cur(p);
    if (is_name(k, "elif")) {
        next(p);
        if (!enter(p)) {
            return NULL;
        }
        struct jj_node *e = parse_if(p, k); /* consumes through endif */
        leave(p);
        if (!e) {
            return NULL;
        }
        if (!(n->els = mk(p, JN_BODY, k)) || !add_kid(p, n->els, e, NULL)) {
            return NULL;
        }
        return adopt(p, n, n->a) && adopt(p, n, n->body) && adopt(p, n, n->els) ? n : NULL;
    }
    if (is_name(k, "else")) {
        next(p);
        if (!expect_t(p, TK_BEND, "'%}'") || !(n->els = parse_body(p, ends2))) {
            return NULL;
        }
    }
    if (!end_tag(p, "endif")) {
        return NULL;
    }
    return adopt(p, n, n->a) && adopt(p, n, n->body) && adopt(p, n, n->els) ? n : NULL;
}

/* A chain of filters applied to a captured body: "f1(args) | f2 ..." (no leading '|'). */
static struct jj_node *parse_filter_chain(struct parser *p) {
    struct jj_node *n = parse_filter(p, NULL, false);
    while (n && is_op(cur(p), "|")) {
        n = parse_filter(p, n, true);
    }
    return n;
}

static struct jj_node *parse_set(struct parser *p, struct tok *at) {
    struct jj_node *target = parse_target(p, true, NULL);
    if (!target) {
        return NULL;
    }
    if (is_op(cur(p), "=")) {
        next(p);
        struct jj_node *n = mk(p, JN_SET, at);
        if (!n) {
            return NULL;
        }
        n->a = target;
        if (!(n->b = parse_tuple(p, true, false, NULL)) || !expect_t(p, TK_BEND, "'%}'")) {
            return NULL;
        }
        return adopt(p, n, n->a) && adopt(p, n, n->b) ? n : NULL;
    }
    if (target->kind != JN_NAME && target->kind != JN_GETATTR) {
        unexpected(p, "'='");
        return NULL;
    }
    struct jj_node *n = mk(p, JN_SETBLOCK, at);
    if (!n) {
        return NULL;
    }
    n->a = target;
    if (is_op(cur(p), "|")) {
        next(p);
        if (!(n->c = parse_filter_chain(p))) {
            return NULL;
        }
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    static const char *const ends[] = {"endset", NULL};
    if (!(n->body = parse_body(p, ends)) || !end_tag(p, "endset")) {
        return NULL;
    }
    return adopt(p, n, n->a) && adopt(p, n, n->c) && adopt(p, n, n->body) ? n : NULL;
}

/* "(a, b=default, ...)" into n's names/kids (kid NULL = no default). */
static bool parse_params(struct parser *p, struct jj_node *n) {
    if (!expect_op(p, "(")) {
        return false;
    }
    while (!is_op(cur(p), ")")) {
        if (n->nkids) {
            if (!expect_op(p, ",")) {
                return false;
            }
            if (is_op(cur(p), ")")) {
                break;
            }
        }
        struct tok *k = cur(p);
        if (k->t != TK_NAME) {
            unexpected(p, "a parameter name");
            return false;
        }
        const struct jj_str *name = tok_str(p, k);
        if (!name) {
            return false;
        }
        next(p);
        struct jj_node *def = NULL;
        if (is_op(cur(p), "=")) {
            next(p);
            if (!(def = parse_expr(p, true))) {
                return false;
            }
        }
        if (!add_kid(p, n, def, name)) {
            return false;
        }
    }
    next(p);
    return true;
}

/* Which of varargs (1), kwargs (2) and caller (4) a macro body mentions: like jinja2, a macro
 * that never names varargs/kwargs refuses extra positional/keyword arguments. */
static int names_used(const struct jj_node *n) {
    if (!n) {
        return 0;
    }
    int f = 0;
    if (n->kind == JN_NAME) {
        if (n->name->len == 7 && !memcmp(n->name->s, "varargs", 7)) {
            f |= 1;
        } else if (n->name->len == 6 && !memcmp(n->name->s, "kwargs", 6)) {
            f |= 2;
        } else if (n->name->len == 6 && !memcmp(n->name->s, "caller", 6)) {
            f |= 4;
        }
    }
    f |= names_used(n->a) | names_used(n->b) | names_used(n->c) | names_used(n->body) |
         names_used(n->els);
    for (int i = 0; i < n->nkids; i++) {
        f |= names_used(n->kids[i]);
    }
    return f;
}

static struct jj_node *parse_macro(struct parser *p, struct tok *at) {
    struct jj_node *n = mk(p, JN_MACRO, at);
    struct tok *k = cur(p);
    if (!n) {
        return NULL;
    }
    if (k->t != TK_NAME) {
        unexpected(p, "a macro name");
        return NULL;
    }
    if (!(n->name = tok_str(p, k))) {
        return NULL;
    }
    next(p);
    if (!parse_params(p, n) || !expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    static const char *const ends[] = {"endmacro", NULL};
    int loops = p->loops;
    p->loops = 0;
    n->body = parse_body(p, ends);
    p->loops = loops;
    if (!n->body || !end_tag(p, "endmacro")) {
        return NULL;
    }
    n->op = names_used(n->body);
    return adopt(p, n, n->body) ? n : NULL;
}

static struct jj_node *parse_callblock(struct parser *p, struct tok *at) {
    struct jj_node *n = mk(p, JN_CALLBLOCK, at);
    if (!n) {
        return NULL;
    }
    if (is_op(cur(p), "(") && !parse_params(p, n)) {
        return NULL;
    }
    struct tok *ck = cur(p);
    if (!(n->a = parse_expr(p, true))) {
        return NULL;
    }
    if (n->a->kind != JN_CALL) {
        perr_at(p, ck->line, ck->col, "expected a call after 'call'");
        return NULL;
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    static const char *const ends[] = {"endcall", NULL};
    int loops = p->loops;
    p->loops = 0;
    n->body = parse_body(p, ends);
    p->loops = loops;
    if (!n->body || !end_tag(p, "endcall")) {
        return NULL;
    }
    n->op = names_used(n->body);
    return adopt(p, n, n->a) && adopt(p, n, n->body) ? n : NULL;
}

static struct jj_node *parse_with(struct parser *p, struct tok *at) {
    struct jj_node *n = mk(p, JN_WITH, at);
    if (!n) {
        return NULL;
    }
    while (cur(p)->t != TK_BEND) {
        if (n->nkids && !expect_op(p, ",")) {
            return NULL;
        }
        struct tok *k = cur(p);
        if (k->t != TK_NAME) {
            unexpected(p, "a variable name");
            return NULL;
        }
        const struct jj_str *name = tok_str(p, k);
        if (!name) {
            return NULL;
        }
        next(p);
        if (!expect_op(p, "=")) {
            return NULL;
        }
        struct jj_node *e = parse_expr(p, true);
        if (!e || !add_kid(p, n, e, name)) {
            return NULL;
        }
    }
    next(p);
    static const char *const ends[] = {"endwith", NULL};
    if (!(n->body = parse_body(p, ends)) || !end_tag(p, "endwith")) {
        return NULL;
    }
    return adopt(p, n, n->body) ? n : NULL;
}

/* Statements whose body simply renders in place: generation (transformers' extension) and
 * block (without extends, a block renders where it stands). */
static struct jj_node *parse_passthrough(struct parser *p, const char *end, bool named) {
    if (named) {
        if (cur(p)->t != TK_NAME) {
            unexpected(p, "a block name");
            return NULL;
        }
        next(p);
        if (is_name(cur(p), "scoped") || is_name(cur(p), "required")) {
            next(p);
        }
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    const char *ends[] = {end, NULL};
    struct jj_node *body = parse_body(p, ends);
    if (!body) {
        return NULL;
    }
    next(p); /* end name */
    if (named && cur(p)->t == TK_NAME) {
        next(p);
    }
    if (!expect_t(p, TK_BEND, "'%}'")) {
        return NULL;
    }
    return body;
}

static struct jj_node *parse_statement(struct parser *p) {
    struct tok *at = cur(p); /* the tag name */
    if (at->t != TK_NAME) {
        unexpected(p, "a tag name");
        return NULL;
    }
    if (!enter(p)) {
        return NULL;
    }
    struct jj_node *n = NULL;
    next(p);
    if (is_name(at, "for")) {
        n = parse_for(p, at);
    } else if (is_name(at, "if")) {
        n = parse_if(p, at);
    } else if (is_name(at, "set")) {
        n = parse_set(p, at);
    } else if (is_name(at, "macro")) {
        n = parse_macro(p, at);
    } else if (is_name(at, "call")) {
        n = parse_callblock(p, at);
    } else if (is_name(at, "filter")) {
        n = mk(p, JN_FILTERBLOCK, at);
        static const char *const ends[] = {"endfilter", NULL};
        if (n && (n->c = parse_filter_chain(p)) && expect_t(p, TK_BEND, "'%}'") &&
            (n->body = parse_body(p, ends)) && end_tag(p, "endfilter")) {
            if (!adopt(p, n, n->c) || !adopt(p, n, n->body)) {
                n = NULL;
            }
        } else {
            n = NULL;
        }
    } else if (is_name(at, "with")) {
        n = parse_with(p, at);
    } else if (is_name(at, "generation")) {
        n = parse_passthrough(p, "endgeneration", false);
    } else if (is_name(at, "block")) {
        n = parse_passthrough(p, "endblock", true);
    } else if (is_name(at, "break") || is_name(at, "continue")) {
        if (p->loops == 0) {
            perr_at(p, at->line, at->col, "'%.*s' outside of a loop", (int)at->n, at->p);
        } else if ((n = mk(p, is_name(at, "break") ? JN_BREAK : JN_CONTINUE, at))) {
            if (!expect_t(p, TK_BEND, "'%}'")) {
                n = NULL;
            }
        }
    } else {
        perr_at(p, at->line, at->col, "unknown or unsupported tag '%.*s'",
                (int)(at->n > 40 ? 40 : at->n), at->p);
    }
    leave(p);
    return n;
}

static bool in_ends(const struct tok *k, const char *const *ends) {
    for (int i = 0; ends && ends[i]; i++) {
        if (is_name(k, ends[i])) {
            return true;
        }
    }
    return false;
}

/* Parses statements until EOF (ends NULL) or a block tag whose name is in ends; stops with the
 * current token on that name. */
static struct jj_node *parse_body(struct parser *p, const char *const *ends) {
    struct jj_node *body = mk(p, JN_BODY, cur(p));
    if (!body) {
        return NULL;
    }
    for (;;) {
        struct tok *k = cur(p);
        struct jj_node *n = NULL;
        switch (k->t) {
        case TK_EOF:
            if (ends) {
                perr_at(p, k->line, k->col, "unexpected end of template, expected '%s'", ends[0]);
                return NULL;
            }
            return body;
        case TK_TEXT:
            if (!(n = mk(p, JN_TEXT, k))) {
                return NULL;
            }
            n->val = jj_strv(k->s);
            next(p);
            break;
        case TK_VBEGIN:
            next(p);
            if (!(n = mk(p, JN_OUTPUT, k))) {
                return NULL;
            }
            if (!(n->a = parse_tuple(p, true, false, NULL)) || !adopt(p, n, n->a) ||
                !expect_t(p, TK_VEND, "'}}'")) {
                return NULL;
            }
            break;
        case TK_BBEGIN:
            next(p);
            if (in_ends(cur(p), ends)) {
                return body;
            }
            if (!(n = parse_statement(p))) {
                if (p->rc == 0) {
                    unexpected(p, NULL);
                }
                return NULL;
            }
            break;
        default:
            unexpected(p, NULL);
            return NULL;
        }
        if (!add_kid(p, body, n, NULL)) {
            return NULL;
        }
    }
}

int eng_jinja_parse(const char *src, size_t len, struct eng_jinja **out, struct kc_error *err) {
    if (!src && len) {
        return kc_error_set(err, KC_EINVAL, "template: no source");
    }
    struct eng_jinja *t = calloc(1, sizeof(*t));
    if (!t) {
        return kc_error_set(err, KC_ENOMEM, "template: out of memory");
    }
    /* The tree of a template is small next to its source; the cap only stops runaway input. */
    jj_pool_init(&t->pool, (size_t)1 << 30);
    struct parser p = {.pool = &t->pool, .err = err};
    /* Normalize newlines ("\r\n" and "\r" -> "\n") and drop one trailing newline. */
    char *norm = jj_alloc(&t->pool, len + 1);
    if (!norm) {
        free(t);
        return kc_error_set(err, KC_ENOMEM, "template: out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            norm[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') {
                i++;
            }
        } else {
            norm[n++] = src[i];
        }
    }
    if (n > 0 && norm[n - 1] == '\n') {
        n--;
    }
    norm[n] = 0;
    p.src = norm;
    p.len = n;
    int rc = lex(&p);
    if (rc == 0) {
        t->root = parse_body(&p, NULL);
        rc = t->root ? 0 : p.rc;
        if (rc == 0 && cur(&p)->t != TK_EOF) {
            rc = unexpected(&p, NULL);
        }
    }
    if (rc < 0) {
        if (p.rc == 0) {
            int line, col;
            pos_of(&p, 0, &line, &col);
            rc = perr_at(&p, line, col, "invalid template");
        }
        jj_pool_free(&t->pool);
        free(t);
        return rc;
    }
    jj_free(&t->pool, p.toks);
    *out = t;
    return 0;
}

void eng_jinja_free(struct eng_jinja *t) {
    if (!t) {
        return;
    }
    jj_pool_free(&t->pool);
    free(t);
}
