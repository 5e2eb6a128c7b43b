/*
 * tokenizer_encode.c — text -> ids, the way Hugging Face's tokenizers do it:
 *
 *   validate UTF-8 -> split on added tokens matched in the raw text (leftmost-longest)
 *   -> per section: normalizer -> split on added tokens matched after normalization
 *   -> pre-tokenizer (Split regexes, ByteLevel) -> BPE per word -> ids; post-processor
 *   template (BOS/EOS) around the whole.
 *
 * BPE: symbols in a doubly linked list over one array, candidate merges in a binary heap
 * ordered by (merge rank, position of the left symbol) — the order HF uses — with stale
 * entries detected lazily (a symbol's length only grows, so a changed pair no longer sums to
 * the recorded length). n symbols cost O(n log n) whatever the text; a 1 MiB word is fine.
 * Words shorter than 256 bytes go through a per-call cache (no locks: the cache lives in the
 * call's struct enc, so encode stays thread-safe on a shared tokenizer).
 *
 * Thread rules: reads the tokenizer only; all scratch state is in struct enc on the stack.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

#define CACHE_MAX_WORD 256
#define CACHE_SLOTS 32768
#define CACHE_MAX_ENTRIES 16384

struct sym {
    int32_t id;          /* -1: not in the vocabulary */
    uint32_t start, len; /* bytes in the word; len 0 = merged away */
    int32_t prev, next;
};

/* A candidate merge: (rank << 32) | left symbol index, so one integer compare orders by rank
 * and then by position (HF's tie break). The right symbol and the result are looked up again
 * when the entry is popped; an entry whose pair no longer has that rank is stale. */
typedef uint64_t heap_ent;

struct cache_ent {
    uint32_t key_off, key_len, ids_off, ids_n;
};

struct enc {
    const struct eng_tok *tok;
    unsigned flags;
    struct kc_error *err;
    int rc;

    int32_t *ids;
    size_t n, cap;
    /* 0: no limit; else more ids than this fail with KC_ECONTEXT */
    size_t max_ids;
    bool last_unk; /* fuse_unk state within one model call */
    bool at_start; /* the current section starts at offset 0 of the input (Metaspace "first") */

    pcre2_match_data *md;
    struct sym *syms;
    size_t syms_cap;
    heap_ent *heap;
    size_t heap_n, heap_cap;
    int32_t *word_ids;
    size_t word_n, word_cap;
    char *blbuf; /* ByteLevel add_prefix_space copy */
    size_t blbuf_cap;

    uint64_t *cslots; /* tag << 32 | (entry + 1) */
    struct cache_ent *cents;
    size_t cn;
    char *ckeys;
    size_t ckeys_len, ckeys_cap;
    int32_t *cids;
    size_t cids_len, cids_cap;
};

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) {
        return true;
    }
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) {
            return false;
        }
        c *= 2;
    }
    size_t bytes;
    if (!kc_size_mul(c, elem, &bytes)) {
        return false;
    }
    void *np = realloc(*p, bytes);
    if (np == NULL) {
        return false;
    }
    *p = np;
    *cap = c;
    return true;
}

static int oom(struct enc *e) {
    if (e->rc == 0) {
        e->rc = kc_error_set(e->err, KC_ENOMEM, "out of memory");
    }
    return e->rc;
}

static int emit(struct enc *e, int32_t id) {
    if (e->max_ids > 0 && e->n >= e->max_ids) {
        if (e->rc == 0) {
            e->rc =
                kc_error_set(e->err, KC_ECONTEXT, "the text has more than %zu tokens", e->max_ids);
        }
        return e->rc;
    }
    if (!grow((void **)&e->ids, &e->cap, e->n + 1, sizeof(*e->ids))) {
        return oom(e);
    }
    e->ids[e->n++] = id;
    return 0;
}

/* Emits an id from the model, fusing runs of unk when the model asks for it. */
static int emit_model(struct enc *e, int32_t id) {
    const bool unk = id == e->tok->unk_id;
    if (unk && e->tok->fuse_unk && e->last_unk) {
        return 0;
    }
    e->last_unk = unk;
    return emit(e, id);
}

static int word_push(struct enc *e, int32_t id) {
    if (!grow((void **)&e->word_ids, &e->word_cap, e->word_n + 1, sizeof(*e->word_ids))) {
        return oom(e);
    }
    e->word_ids[e->word_n++] = id;
    return 0;
}

/* ---- heap ---- */

static int heap_push(struct enc *e, heap_ent ent) {
    if (!grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof(*e->heap))) {
        return oom(e);
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        const size_t p = (i - 1) / 2;
        if (e->heap[p] <= ent) {
            break;
        }
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = ent;
    return 0;
}

/* Floyd's pop: walk the hole down to a leaf along smaller children, then sift the last
 * element up from there — about half the comparisons of the textbook sift-down. */
static heap_ent heap_pop(struct enc *e) {
    heap_ent *h = e->heap;
    const heap_ent top = h[0];
    const size_t n = --e->heap_n;
    if (n == 0) {
        return top;
    }
    const heap_ent last = h[n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && h[c + 1] < h[c]) {
            c++;
        }
        h[i] = h[c];
        i = c;
    }
    while (i > 0) {
        const size_t p = (i - 1) / 2;
        if (h[p] <= last) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = last;
    return top;
}

static int try_pair(struct enc *e, int32_t l, int32_t r) {
    if (l < 0 || r < 0) {
        return 0;
    }
    const struct sym *a = &e->syms[l], *b = &e->syms[r];
    if (a->id < 0 || b->id < 0) {
        return 0;
    }
    uint32_t rank;
    int32_t result;
    if (!eng__tok_merge_get(&e->tok->merges, a->id, b->id, &rank, &result)) {
        return 0;
    }
    return heap_push(e, ((uint64_t)rank << 32) | (uint32_t)l);
}

/* ---- per-call word cache ---- */

static bool cache_get(struct enc *e, const char *w, size_t len, uint64_t h, size_t *pos) {
    const uint64_t tag = h >> 32;
    for (size_t i = (size_t)h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const uint64_t s = e->cslots[i];
        if (s == 0) {
            *pos = i;
            return false;
        }
        if ((s >> 32) == tag) {
            const struct cache_ent *ce = &e->cents[(s & 0xFFFFFFFFu) - 1];
            if (ce->key_len == len && memcmp(e->ckeys + ce->key_off, w, len) == 0) {
                *pos = i;
                return true;
            }
        }
    }
}

static void cache_put(struct enc *e, size_t pos, uint64_t h, const char *w, size_t len) {
    /* Best effort: a failed allocation only means no caching. */
    if (e->cn >= CACHE_MAX_ENTRIES) {
        return;
    }
    if (!grow((void **)&e->ckeys, &e->ckeys_cap, e->ckeys_len + len, 1) ||
        !grow((void **)&e->cids, &e->cids_cap, e->cids_len + e->word_n, sizeof(*e->cids))) {
        return;
    }
    memcpy(e->ckeys + e->ckeys_len, w, len);
    if (e->word_n > 0) { /* a word can yield no ids (unknown chars without unk) */
        memcpy(e->cids + e->cids_len, e->word_ids, e->word_n * sizeof(*e->cids));
    }
    struct cache_ent *ce = &e->cents[e->cn];
    ce->key_off = (uint32_t)e->ckeys_len;
    ce->key_len = (uint32_t)len;
    ce->ids_off = (uint32_t)e->cids_len;
    ce->ids_n = (uint32_t)e->word_n;
    e->ckeys_len += len;
    e->cids_len += e->word_n;
    e->cn++;
    e->cslots[pos] = ((h >> 32) << 32) | (uint64_t)e->cn;
}

/* ---- BPE ---- */

/* Appends the ids for a symbol the vocabulary lacks: byte fallback, unk, or nothing. */
static int unknown_symbol(struct enc *e, const uint8_t *b, size_t len) {
    const struct eng_tok *tok = e->tok;
    if (tok->byte_fallback) {
        bool all = true;
        for (size_t i = 0; i < len; i++) {
            all = all && tok->byte_fallback_id[b[i]] >= 0;
        }
        if (all) {
            for (size_t i = 0; i < len; i++) {
                if (word_push(e, tok->byte_fallback_id[b[i]]) < 0) {
                    return e->rc;
                }
            }
            return 0;
        }
    }
    if (tok->unk_id >= 0) {
        return word_push(e, tok->unk_id);
    }
    return 0; /* HF drops it when there is no unk token */
}

/* Runs BPE over one word into e->word_ids. */
static int bpe(struct enc *e, const char *w, size_t len) {
    const struct eng_tok *tok = e->tok;
    const uint8_t *s = (const uint8_t *)w;
    if (!grow((void **)&e->syms, &e->syms_cap, len, sizeof(*e->syms))) {
        return oom(e);
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t k = tok->byte_level ? 1 : eng__utf8_len(s[i]);
        if (k > len - i) {
            k = len - i;
        }
        struct sym *y = &e->syms[n];
        y->id = tok->byte_level ? tok->byte_sym[s[i]]
                                : eng__tok_map_get(tok, &tok->model_map, w + i, k);
        y->start = (uint32_t)i;
        y->len = (uint32_t)k;
        y->prev = (int32_t)n - 1;
        y->next = (int32_t)n + 1;
        n++;
        i += k;
    }
    e->syms[n - 1].next = -1;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (try_pair(e, (int32_t)i, (int32_t)i + 1) < 0) {
            return e->rc;
        }
    }
    while (e->heap_n > 0) {
        const heap_ent m = heap_pop(e);
        const int32_t li = (int32_t)(uint32_t)m;
        struct sym *l = &e->syms[li];
        if (l->len == 0 || l->next < 0) {
            continue; /* stale: merged away, or nothing to its right any more */
        }
        struct sym *r = &e->syms[l->next];
        uint32_t rank;
        int32_t result;
        if (r->id < 0 || l->id < 0 ||
            !eng__tok_merge_get(&tok->merges, l->id, r->id, &rank, &result) ||
            rank != (uint32_t)(m >> 32)) {
            continue; /* stale: the pair changed (ranks are unique per pair) */
        }
        l->id = result;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) {
            e->syms[r->next].prev = li;
        }
        r->len = 0;
        if (try_pair(e, l->prev, li) < 0 || try_pair(e, li, l->next) < 0) {
            return e->rc;
        }
    }
    e->word_n = 0;
    for (int32_t i = 0; i >= 0; i = e->syms[i].next) {
        const struct sym *y = &e->syms[i];
        const int rc = y->id >= 0 ? word_push(e, y->id) : unknown_symbol(e, s + y->start, y->len);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int model_word(struct enc *e, const char *w, size_t len) {
    const struct eng_tok *tok = e->tok;
    if (len == 0) {
        return 0;
    }
    if (tok->ignore_merges) {
        const int32_t id = eng__tok_map_get(tok, &tok->model_map, w, len);
        if (id >= 0) {
            return emit_model(e, id);
        }
    }
    uint64_t h = 0;
    size_t pos = 0;
    bool cacheable = len < CACHE_MAX_WORD;
    if (cacheable && e->cslots == NULL) {
        e->cslots = kc_calloc(CACHE_SLOTS, sizeof(*e->cslots));
        e->cents = kc_calloc(CACHE_MAX_ENTRIES, sizeof(*e->cents));
        if (e->cslots == NULL || e->cents == NULL) {
            return oom(e);
        }
    }
    if (cacheable) {
        h = eng__tok_hash(w, len);
        if (cache_get(e, w, len, h, &pos)) {
            const struct cache_ent *ce = &e->cents[(e->cslots[pos] & 0xFFFFFFFFu) - 1];
            for (uint32_t i = 0; i < ce->ids_n; i++) {
                if (emit_model(e, e->cids[ce->ids_off + i]) < 0) {
                    return e->rc;
                }
            }
            return 0;
        }
    }
    if (bpe(e, w, len) < 0) {
        return e->rc;
    }
    if (cacheable) {
        cache_put(e, pos, h, w, len);
    }
    for (size_t i = 0; i < e->word_n; i++) {
        if (emit_model(e, e->word_ids[i]) < 0) {
            return e->rc;
        }
    }
    return 0;
}

/* ---- regex and literal matching ---- */

/* Finds the next non-empty match of step's pattern in s[from..len). Returns 1 with [*ms, *me),
 * 0 when there is none, or a negative error. Empty matches are skipped by advancing one
 * character, as HF's JS library does. */
static int next_match(struct enc *e, const struct eng__tok_step *st, const char *s, size_t len,
                      size_t from, size_t *ms, size_t *me) {
    if (st->re == NULL) {
        const char *lit = e->tok->pool + st->lit.off;
        const size_t ll = st->lit.len;
        for (size_t i = from; i + ll <= len; i++) {
            if (s[i] == lit[0] && memcmp(s + i, lit, ll) == 0) {
                *ms = i;
                *me = i + ll;
                return 1;
            }
        }
        return 0;
    }
    if (e->md == NULL) {
        e->md = pcre2_match_data_create(32, NULL);
        if (e->md == NULL) {
            return oom(e);
        }
    }
    uint32_t opts = PCRE2_NO_UTF_CHECK;
    while (from <= len) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)s, len, from, opts, e->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !(opts & PCRE2_NO_JIT)) {
            opts |= PCRE2_NO_JIT; /* the interpreter keeps its backtracking on the heap */
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) {
            return 0;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[200];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            e->rc = kc_error_set(e->err, KC_ERANGE, "regex match failed: %s", (char *)msg);
            return e->rc;
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        if (ov[0] >= len) {
            return 0;
        }
        from = ov[0] + eng__utf8_len((uint8_t)s[ov[0]]);
    }
    return 0;
}

static int pretok(struct enc *e, int step, const char *s, size_t len);

/* Where split_pieces sends each piece: pretok (the next pre-tokenizer step) or model_piece. */
typedef int (*piece_sink)(struct enc *e, int next_step, const char *s, size_t len);

/* Cuts s at the matches of st's pattern and hands the non-empty gaps (keep_gaps) and the
 * matches (keep_matches) in order to sink; a negative return is the error (e->rc or
 * next_match's). */
static int split_pieces(struct enc *e, const struct eng__tok_step *st, const char *s, size_t len,
                        bool keep_gaps, bool keep_matches, piece_sink sink, int next_step) {
    size_t pos = 0, ms, me;
    for (;;) {
        const int m = next_match(e, st, s, len, pos, &ms, &me);
        if (m < 0) {
            return m;
        }
        if (m == 0) {
            break;
        }
        if (keep_gaps && ms > pos && sink(e, next_step, s + pos, ms - pos) < 0) {
            return e->rc;
        }
        if (keep_matches && sink(e, next_step, s + ms, me - ms) < 0) {
            return e->rc;
        }
        pos = me;
    }
    if (keep_gaps && pos < len && sink(e, next_step, s + pos, len - pos) < 0) {
        return e->rc;
    }
    return 0;
}

/* Splits s by st's pattern; Isolated keeps both gaps and matches as pieces, Removed keeps
 * the gaps (or, inverted, the matches). */
static int split_step(struct enc *e, const struct eng__tok_step *st, int next_step, const char *s,
                      size_t len) {
    const bool keep_gaps = !st->removed || !st->invert;
    const bool keep_matches = !st->removed || st->invert;
    return split_pieces(e, st, s, len, keep_gaps, keep_matches, pretok, next_step);
}

static const char metaspace[] = "\xE2\x96\x81"; /* U+2581 */

/* Runs the model over a pre-token, cut before each run of "▁" that follows another character
 * when that cannot change the result (see split_at_metaspace). */
static int model_words(struct enc *e, const char *s, size_t len) {
    if (!e->tok->split_at_metaspace) {
        return model_word(e, s, len);
    }
    size_t start = 0;
    for (size_t i = 1; i + 3 <= len; i++) {
        if (memcmp(s + i, metaspace, 3) == 0 && (i < 3 || memcmp(s + i - 3, metaspace, 3) != 0)) {
            if (model_word(e, s + start, i - start) < 0) {
                return e->rc;
            }
            start = i;
        }
    }
    return model_word(e, s + start, len - start);
}

/* Metaspace: spaces become the replacement, which is also prepended per the scheme; with
 * split, each replacement starts a new piece (HF's MergedWithNext). */
static int metaspace_step(struct enc *e, const struct eng__tok_step *st, int next_step,
                          const char *s, size_t len) {
    const char *rep = e->tok->pool + st->lit.off;
    const size_t rl = st->lit.len;
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++) {
        spaces += s[i] == ' ';
    }
    size_t cap;
    if (!kc_size_mul(spaces + 1, rl, &cap) || !kc_size_add(cap, len + 1, &cap)) {
        return oom(e);
    }
    char *buf = malloc(cap);
    if (buf == NULL) {
        return oom(e);
    }
    size_t n = 0;
    /* The check is on the text after replacing spaces, so a leading space counts. */
    const bool starts = s[0] == ' ' || (len >= rl && memcmp(s, rep, rl) == 0);
    if (!starts && (st->prepend == ENG__TOK_PREPEND_ALWAYS ||
                    (st->prepend == ENG__TOK_PREPEND_FIRST && e->at_start))) {
        memcpy(buf, rep, rl);
        n = rl;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(buf + n, rep, rl);
            n += rl;
        } else {
            buf[n++] = s[i];
        }
    }
    int rc = 0;
    if (!st->split) {
        rc = pretok(e, next_step, buf, n);
    } else {
        size_t start = 0;
        for (size_t i = rl; i + rl <= n && rc == 0; i++) {
            if (memcmp(buf + i, rep, rl) == 0) {
                rc = pretok(e, next_step, buf + start, i - start);
                start = i;
            }
        }
        if (rc == 0) {
            rc = pretok(e, next_step, buf + start, n - start);
        }
    }
    free(buf);
    return rc < 0 ? e->rc : 0;
}

/* A piece_sink that runs the model on the piece as one word (ByteLevel's pieces). */
static int model_piece(struct enc *e, int next_step, const char *s, size_t len) {
    (void)next_step;
    return model_word(e, s, len);
}

static int pretok(struct enc *e, int step, const char *s, size_t len) {
    const struct eng_tok *tok = e->tok;
    if (len == 0) {
        return 0;
    }
    if (step == tok->n_pre) {
        return model_words(e, s, len);
    }
    const struct eng__tok_step *st = &tok->pre[step];
    if (st->kind == ENG__TOK_P_SPLIT) {
        return split_step(e, st, step + 1, s, len);
    }
    if (st->kind == ENG__TOK_P_METASPACE) {
        return metaspace_step(e, st, step + 1, s, len);
    }
    /* ByteLevel: always the last step (checked at load), so the copy below lives long enough. */
    if (st->prefix_space && s[0] != ' ') {
        if (!grow((void **)&e->blbuf, &e->blbuf_cap, len + 1, 1)) {
            return oom(e);
        }
        e->blbuf[0] = ' ';
        memcpy(e->blbuf + 1, s, len);
        s = e->blbuf;
        len++;
    }
    if (st->re == NULL) {
        return model_word(e, s, len);
    }
    /* Isolated split by the GPT-2 pattern, then straight to the model. */
    return split_pieces(e, st, s, len, true, true, model_piece, 0);
}

/* ---- normalizer ---- */

/* A normalizer may lengthen the text (" " -> "▁" triples it) but a hostile file could chain
 * Replace steps that grow it exponentially: every step's output is capped. */
static size_t norm_limit(size_t len) {
    return (len < ENG_TOK_MAX_TEXT ? len : ENG_TOK_MAX_TEXT) * 4 + 4096;
}

static int norm_too_long(struct enc *e, size_t len, size_t limit) {
    if (e->rc == 0) {
        e->rc = kc_error_set(e->err, KC_ERANGE,
                             "the normalizer turns %zu bytes into more than %zu bytes", len, limit);
    }
    return e->rc;
}

static int replace_all(struct enc *e, const struct eng__tok_step *st, const char *s, size_t len,
                       size_t limit, char **out, size_t *out_len) {
    const char *with = e->tok->pool + st->with.off;
    const size_t wl = st->with.len;
    char *buf = NULL;
    size_t n = 0, cap = 0, pos = 0, ms, me;
    for (;;) {
        const int m = next_match(e, st, s, len, pos, &ms, &me);
        if (m < 0) {
            free(buf);
            return m;
        }
        const size_t gap_end = m ? ms : len;
        if (n + (gap_end - pos) + wl > limit) {
            free(buf);
            return norm_too_long(e, len, limit);
        }
        if (!grow((void **)&buf, &cap, n + (gap_end - pos) + wl + 1, 1)) {
            free(buf);
            return oom(e);
        }
        memcpy(buf + n, s + pos, gap_end - pos);
        n += gap_end - pos;
        if (m == 0) {
            break;
        }
        memcpy(buf + n, with, wl);
        n += wl;
        pos = me;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

static int normalize_with(struct enc *e, const char *s, size_t len, char **out, size_t *out_len) {
    const struct eng_tok *tok = e->tok;
    const size_t limit = norm_limit(len);
    char *cur = malloc(len + 1);
    size_t cur_len = len;
    if (cur == NULL) {
        return oom(e);
    }
    memcpy(cur, s, len);
    cur[len] = '\0';
    for (int i = 0; i < tok->n_norm; i++) {
        const struct eng__tok_step *st = &tok->norm[i];
        char *next = NULL;
        size_t next_len = 0;
        int rc = 0;
        switch (st->kind) {
        case ENG__TOK_N_PREPEND:
            if (cur_len == 0) {
                continue;
            }
            next = malloc(cur_len + st->lit.len + 1);
            if (next == NULL) {
                rc = oom(e);
                break;
            }
            memcpy(next, tok->pool + st->lit.off, st->lit.len);
            memcpy(next + st->lit.len, cur, cur_len + 1);
            next_len = cur_len + st->lit.len;
            break;
        case ENG__TOK_N_REPLACE:
            rc = replace_all(e, st, cur, cur_len, limit, &next, &next_len);
            break;
        case ENG__TOK_N_NFC:
            rc = eng__tok_nfc(cur, cur_len, &next, &next_len);
            if (rc < 0) {
                rc = oom(e);
            }
            break;
        case ENG__TOK_N_STRIP: {
            size_t a = 0, b = cur_len, k;
            while (st->strip_left && a < b &&
                   eng__uni_is_space(eng__utf8_decode((uint8_t *)cur + a, b - a, &k))) {
                a += k;
            }
            while (st->strip_right && b > a) {
                size_t p = b - 1;
                while (p > a && ((uint8_t)cur[p] & 0xC0) == 0x80) {
                    p--;
                }
                if (!eng__uni_is_space(eng__utf8_decode((uint8_t *)cur + p, b - p, &k))) {
                    break;
                }
                b = p;
            }
            next = malloc(b - a + 1);
            if (next == NULL) {
                rc = oom(e);
                break;
            }
            memcpy(next, cur + a, b - a);
            next[b - a] = '\0';
            next_len = b - a;
            break;
        }
        default:
            KC_ASSERT(!"not a normalizer step");
        }
        if (rc == 0 && next_len > limit) {
            rc = norm_too_long(e, len, limit);
        }
        if (rc < 0) {
            free(next);
            free(cur);
            return rc;
        }
        free(cur);
        cur = next;
        cur_len = next_len;
    }
    *out = cur;
    *out_len = cur_len;
    return 0;
}

static void enc_free(struct enc *e) {
    pcre2_match_data_free(e->md);
    free(e->syms);
    free(e->heap);
    free(e->word_ids);
    free(e->blbuf);
    free(e->cslots);
    free(e->cents);
    free(e->ckeys);
    free(e->cids);
}

int eng__tok_normalize(const struct eng_tok *tok, const char *s, size_t len, char **out,
                       size_t *out_len, struct kc_error *err) {
    struct enc e = {.tok = tok, .err = err};
    const int rc = normalize_with(&e, s, len, out, out_len);
    enc_free(&e);
    return rc;
}

/* ---- added tokens ---- */

static bool word_char_before(const uint8_t *s, size_t pos) {
    if (pos == 0) {
        return false;
    }
    size_t p = pos - 1, k;
    while (p > 0 && (s[p] & 0xC0) == 0x80) {
        p--;
    }
    const uint32_t cp = eng__utf8_decode(s + p, pos - p, &k);
    return cp == '_' ||
           (cp < 0x80 ? ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || (cp >= '0' && cp <= '9')
                      : !eng__uni_is_space(cp));
}

static bool word_char_at(const uint8_t *s, size_t len, size_t pos) {
    if (pos >= len) {
        return false;
    }
    size_t k;
    const uint32_t cp = eng__utf8_decode(s + pos, len - pos, &k);
    return cp == '_' ||
           (cp < 0x80 ? ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || (cp >= '0' && cp <= '9')
                      : !eng__uni_is_space(cp));
}

/* Longest added token of trie t starting at s[i]; -1 if none. Special tokens count only with
 * ENG_TOK_PARSE_SPECIAL. */
static int32_t match_at(const struct enc *e, const struct eng__tok_trie *t, const uint8_t *s,
                        size_t len, size_t i, size_t *mlen) {
    int32_t node = t->root[s[i]], best = -1;
    size_t j = i;
    while (node >= 0) {
        j++;
        const int32_t tk = t->nodes[node].token;
        if (tk >= 0 && (!e->tok->added[tk].special || (e->flags & ENG_TOK_PARSE_SPECIAL))) {
            best = tk;
            *mlen = j - i;
        }
        if (j >= len) {
            break;
        }
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[j]) {
            c = t->nodes[c].sibling;
        }
        node = c;
    }
    return best;
}

static size_t trim_left(const char *s, size_t len) {
    size_t a = 0, k;
    while (a < len && eng__uni_is_space(eng__utf8_decode((const uint8_t *)s + a, len - a, &k))) {
        a += k;
    }
    return a;
}

static size_t trim_right(const char *s, size_t len) {
    size_t b = len, k;
    while (b > 0) {
        size_t p = b - 1;
        while (p > 0 && ((uint8_t)s[p] & 0xC0) == 0x80) {
            p--;
        }
        if (!eng__uni_is_space(eng__utf8_decode((const uint8_t *)s + p, b - p, &k))) {
            break;
        }
        b = p;
    }
    return b;
}

typedef int (*section_fn)(struct enc *e, const char *s, size_t len);

/* Runs fn on a section, which starts the input only if its parent did and it starts it. */
static int call_section(struct enc *e, section_fn fn, const char *s, size_t len, bool first) {
    const bool parent = e->at_start;
    e->at_start = parent && first;
    const int rc = fn(e, s, len);
    e->at_start = parent;
    return rc;
}

/* Splits s on the added tokens of trie t: tokens are emitted, the text between goes to fn. */
static int split_added(struct enc *e, const struct eng__tok_trie *t, const char *s, size_t len,
                       section_fn fn) {
    const uint8_t *u = (const uint8_t *)s;
    size_t start = 0; /* start of the pending text */
    bool rstrip = false;
    for (size_t i = 0; i < len;) {
        size_t mlen = 0;
        const int32_t tk = t->root[u[i]] >= 0 ? match_at(e, t, u, len, i, &mlen) : -1;
        if (tk < 0) {
            i++;
            continue;
        }
        const struct eng__tok_added *a = &e->tok->added[tk];
        if (a->single_word && (word_char_before(u, i) || word_char_at(u, len, i + mlen))) {
            i += mlen; /* HF consumes the rejected match as text */
            continue;
        }
        size_t ts = start, te = i;
        if (rstrip) {
            ts += trim_left(s + ts, te - ts);
        }
        if (a->lstrip) {
            te = ts + trim_right(s + ts, te - ts);
        }
        if (te > ts && call_section(e, fn, s + ts, te - ts, ts == 0) < 0) {
            return e->rc;
        }
        if (emit(e, a->id) < 0) {
            return e->rc;
        }
        rstrip = a->rstrip;
        i += mlen;
        start = i;
    }
    size_t ts = start;
    if (rstrip) {
        ts += trim_left(s + ts, len - ts);
    }
    if (len > ts && call_section(e, fn, s + ts, len - ts, ts == 0) < 0) {
        return e->rc;
    }
    return 0;
}

static int subsection(struct enc *e, const char *s, size_t len) {
    e->last_unk = false;
    return pretok(e, 0, s, len);
}

static int section(struct enc *e, const char *s, size_t len) {
    const struct eng_tok *tok = e->tok;
    if (tok->n_norm == 0) {
        return subsection(e, s, len);
    }
    char *norm = NULL;
    size_t nlen = 0;
    if (normalize_with(e, s, len, &norm, &nlen) < 0) {
        return e->rc;
    }
    int rc = 0;
    if (nlen > 0) {
        rc = tok->trie_norm.n > 0 ? split_added(e, &tok->trie_norm, norm, nlen, subsection)
                                  : subsection(e, norm, nlen);
    }
    free(norm);
    return rc;
}

int eng_tok_encode(const struct eng_tok *tok, const char *text, size_t len, unsigned flags,
                   int32_t **ids_out, size_t *n_out, struct kc_error *err) {
    return eng_tok_encode_max(tok, text, len, flags, 0, ids_out, n_out, err);
}

int eng_tok_encode_max(const struct eng_tok *tok, const char *text, size_t len, unsigned flags,
                       size_t max_ids, int32_t **ids_out, size_t *n_out, struct kc_error *err) {
    struct enc e = {.tok = tok, .flags = flags, .err = err, .at_start = true, .max_ids = max_ids};
    if (text == NULL && len > 0) {
        return kc_error_set(err, KC_EINVAL, "text is NULL");
    }
    if (len > ENG_TOK_MAX_TEXT) {
        return kc_error_set(err, KC_ERANGE, "text of %zu bytes exceeds the %zu limit", len,
                            ENG_TOK_MAX_TEXT);
    }
    const size_t valid = eng__utf8_valid_prefix((const uint8_t *)text, len);
    if (valid != len) {
        return kc_error_set(err, KC_EINVAL, "text is not valid UTF-8 (byte %zu: 0x%02X)", valid,
                            (unsigned)(uint8_t)text[valid]);
    }
    if (flags & ENG_TOK_ADD_SPECIAL) {
        for (int i = 0; i < tok->n_prefix; i++) {
            if (emit(&e, tok->prefix[i]) < 0) {
                goto fail;
            }
        }
    }
    if (len > 0) {
        const int rc = tok->trie_raw.n > 0 ? split_added(&e, &tok->trie_raw, text, len, section)
                                           : section(&e, text, len);
        if (rc < 0) {
            goto fail;
        }
    }
    if (flags & ENG_TOK_ADD_SPECIAL) {
        for (int i = 0; i < tok->n_suffix; i++) {
            if (emit(&e, tok->suffix[i]) < 0) {
                goto fail;
            }
        }
    }
    if (e.rc < 0) {
        goto fail; /* an error some path reported without unwinding (defensive) */
    }
    enc_free(&e);
    if (e.n == 0) {
        free(e.ids);
        e.ids = NULL;
    }
    *ids_out = e.ids;
    *n_out = e.n;
    return 0;
fail:
    enc_free(&e);
    free(e.ids);
    return e.rc < 0 ? e.rc : KC_ENOMEM;
}
