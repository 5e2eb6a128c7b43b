/*
 * tokenizer_decode.c — ids -> text, batch and streaming, with one implementation: the batch
 * decode is the stream run to the end, so the two cannot disagree.
 *
 * Every id decodes (precomputed at load, tokenizer.c parse_decoder) either to raw bytes that
 * join their neighbours (byte-level pieces, SentencePiece <0xNN> byte-fallback tokens) or to
 * text that ends such a run (added tokens under the ByteLevel decoder, SentencePiece pieces with
 * "▁" already replaced by " "). Runs of bytes go through a streaming WHATWG UTF-8 decoder — the
 * decoder HF's JS library uses (TextDecoder), which replaces each maximal invalid subpart with
 * one U+FFFD — so complete characters come out as soon as their last byte arrives and an
 * incomplete one is held back until it completes, turns out invalid, or the run ends.
 *
 * The decoder's Strip step (SentencePiece: drop the first leading space of the whole text) is
 * applied to the first characters the stream emits; the no-decoder case joins pieces with " ".
 *
 * Thread rules: reads the tokenizer only; a stream is owned by one thread at a time.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

struct out {
    char *p;
    size_t n, cap;
};

static void put(struct out *o, const void *s, size_t len) {
    KC_ASSERT(o->n + len <= o->cap); /* guaranteed by eng_tok_stream_bound */
    memcpy(o->p + o->n, s, len);
    o->n += len;
}

/* Emits complete characters, applying the decoder's leading Strip while it is active. */
static void emit_text(struct eng_tok_stream *s, struct out *o, const char *t, size_t len) {
    const struct eng_tok *tok = s->tok;
    if (s->strip_left > 0) {
        const char *sc = tok->pool + tok->strip_char.off;
        const size_t sl = tok->strip_char.len;
        while (s->strip_left > 0 && len > 0) {
            if (len >= sl && memcmp(t, sc, sl) == 0) {
                t += sl;
                len -= sl;
                s->strip_left--;
            } else {
                s->strip_left = 0;
            }
        }
    }
    if (len > 0) {
        put(o, t, len);
    }
}

static void reset_utf8(struct eng_tok_stream *s) {
    s->npend = 0;
    s->need = 0;
    s->lower = 0x80;
    s->upper = 0xBF;
}

/* Ends a byte run: an incomplete character becomes one U+FFFD. */
static void end_run(struct eng_tok_stream *s, struct out *o) {
    if (s->need > 0) {
        emit_text(s, o, replacement, 3);
    }
    reset_utf8(s);
}

static void feed_byte(struct eng_tok_stream *s, struct out *o, uint8_t b) {
    for (;;) {
        if (s->need == 0) {
            if (b < 0x80) {
                const char c = (char)b;
                emit_text(s, o, &c, 1);
                return;
            }
            if (b >= 0xC2 && b <= 0xDF) {
                s->need = 1;
            } else if (b >= 0xE0 && b <= 0xEF) {
                s->need = 2;
                if (b == 0xE0) {
                    s->lower = 0xA0;
                } else if (b == 0xED) {
                    s->upper = 0x9F;
                }
            } else if (b >= 0xF0 && b <= 0xF4) {
                s->need = 3;
                if (b == 0xF0) {
                    s->lower = 0x90;
                } else if (b == 0xF4) {
                    s->upper = 0x8F;
                }
            } else {
                emit_text(s, o, replacement, 3);
                return;
            }
            s->pend[0] = b;
            s->npend = 1;
            return;
        }
        if (b < s->lower || b > s->upper) {
            /* The pending bytes are a maximal invalid subpart; b starts afresh. */
            reset_utf8(s);
            emit_text(s, o, replacement, 3);
            continue;
        }
        s->lower = 0x80;
        s->upper = 0xBF;
        s->pend[s->npend++] = b;
        if (--s->need == 0) {
            emit_text(s, o, (const char *)s->pend, s->npend);
            s->npend = 0;
        }
        return;
    }
}

size_t eng_tok_stream_bound(const struct eng_tok *tok) {
    return 3 * (tok->max_dec_len + 4) + 8;
}

void eng_tok_stream_init(struct eng_tok_stream *s, const struct eng_tok *tok, unsigned flags) {
    memset(s, 0, sizeof(*s));
    s->tok = tok;
    s->flags = flags;
    s->strip_left = tok->dec_kind == ENG__TOK_DEC_CHAIN ? tok->strip_start : 0;
    reset_utf8(s);
}

static int check_id(const struct eng_tok *tok, int32_t id, struct kc_error *err) {
    if (id < 0 || id >= tok->n_ids) {
        return kc_error_set(err, KC_ERANGE, "id %d is outside [0, %d)", (int)id, (int)tok->n_ids);
    }
    if (!(tok->id_flags[id] & ENG__TOK_ID_PIECE)) {
        return kc_error_set(err, KC_ERANGE, "id %d is not a token of this vocabulary", (int)id);
    }
    return 0;
}

int eng_tok_stream_push(struct eng_tok_stream *s, int32_t id, char *out, size_t cap,
                        size_t *out_len, struct kc_error *err) {
    const struct eng_tok *tok = s->tok;
    int rc = check_id(tok, id, err);
    if (rc < 0) {
        return rc;
    }
    if (cap < eng_tok_stream_bound(tok)) {
        return kc_error_set(err, KC_EINVAL, "stream buffer of %zu bytes < bound %zu", cap,
                            eng_tok_stream_bound(tok));
    }
    struct out o = {out, 0, cap};
    const uint8_t f = tok->id_flags[id];
    if ((s->flags & ENG_TOK_SKIP_SPECIAL) && (f & ENG__TOK_ID_SPECIAL)) {
        *out_len = 0;
        return 0;
    }
    const char *d = tok->pool + tok->dec[id].off;
    const size_t dl = tok->dec[id].len;
    if (tok->dec_kind == ENG__TOK_DEC_NONE && s->started) {
        emit_text(s, &o, " ", 1);
    }
    s->started = true;
    if (f & ENG__TOK_ID_BYTES) {
        for (size_t i = 0; i < dl; i++) {
            feed_byte(s, &o, (uint8_t)d[i]);
        }
    } else {
        end_run(s, &o);
        emit_text(s, &o, d, dl); /* pool text is valid UTF-8 (JSON strings) */
    }
    *out_len = o.n;
    return 0;
}

int eng_tok_stream_flush(struct eng_tok_stream *s, char *out, size_t cap, size_t *out_len) {
    if (cap < 3) {
        return KC_EINVAL;
    }
    struct out o = {out, 0, cap};
    end_run(s, &o);
    *out_len = o.n;
    return 0;
}

/* transformers' clean_up_tokenization: fixed replacements applied in this order. */
static size_t clean_up(char *t, size_t len) {
    static const char *const from[] = {" .",   " ?",  " !",  " ,",   " ' ",
                                       " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t k = 0; k < sizeof(from) / sizeof(from[0]); k++) {
        const size_t fl = strlen(from[k]), tl = strlen(to[k]);
        size_t w = 0;
        for (size_t r = 0; r < len;) {
            if (len - r >= fl && memcmp(t + r, from[k], fl) == 0) {
                memmove(t + w, to[k], tl);
                w += tl;
                r += fl;
            } else {
                t[w++] = t[r++];
            }
        }
        len = w;
    }
    t[len] = '\0';
    return len;
}

int eng_tok_decode(const struct eng_tok *tok, const int32_t *ids, size_t n, unsigned flags,
                   char **text_out, size_t *len_out, struct kc_error *err) {
    const size_t bound = eng_tok_stream_bound(tok);
    char *buf = NULL, *chunk = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    struct eng_tok_stream s;
    eng_tok_stream_init(&s, tok, flags);
    chunk = malloc(bound);
    if (chunk == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i <= n; i++) {
        size_t got = 0;
        if (i < n) {
            rc = eng_tok_stream_push(&s, ids[i], chunk, bound, &got, err);
            if (rc < 0) {
                kc_error_prefix(err, "position %zu", i);
                goto fail;
            }
        } else {
            (void)eng_tok_stream_flush(&s, chunk, bound, &got);
        }
        if (len + got + 1 > cap) {
            size_t nc = cap ? cap : 256;
            while (nc < len + got + 1) {
                nc *= 2;
            }
            char *nb = realloc(buf, nc);
            if (nb == NULL) {
                rc = kc_error_set(err, KC_ENOMEM, "out of memory");
                goto fail;
            }
            buf = nb;
            cap = nc;
        }
        memcpy(buf + len, chunk, got);
        len += got;
    }
    if (buf == NULL) {
        buf = malloc(1);
        if (buf == NULL) {
            rc = kc_error_set(err, KC_ENOMEM, "out of memory");
            goto fail;
        }
    }
    buf[len] = '\0';
    if (flags & ENG_TOK_CLEAN_UP_SPACES) {
        len = clean_up(buf, len);
    }
    free(chunk);
    *text_out = buf;
    *len_out = len;
    return 0;
fail:
    free(chunk);
    free(buf);
    return rc;
}
