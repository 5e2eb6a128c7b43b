/*
 * tokenizer.h — Hugging Face `tokenizer.json` BPE tokenizers in C: text -> token ids -> text,
 * producing exactly the ids that Hugging Face's own tokenizer produces.
 *
 * Place in the data flow: the server tokenizes a request's prompt with eng_tok_encode() before
 * it submits it to the scheduler (server/completions.c), and turns sampled ids back into text
 * with an eng_tok_stream (one per sequence) for SSE chunks, or eng_tok_decode() for a whole
 * completion. The CLI's
 * `kvcast tokenize|detokenize` is a thin shell around the same calls.
 *
 * Supported (everything else is refused at load with KC_EUNSUPPORTED naming the component):
 *   model         BPE: merges as "a b" or ["a","b"], ignore_merges, byte_fallback (<0xNN>),
 *                 unk_token, fuse_unk (dropout must be null/0, subword prefix/suffix empty).
 *   normalizer    null, Sequence, Prepend, Replace (String or Regex), NFC, Strip.
 *   pre_tokenizer null, Sequence, Split (Regex or String; Isolated or Removed), ByteLevel
 *                 (add_prefix_space, use_regex with the GPT-2 pattern), Metaspace
 *                 (replacement, prepend_scheme always|first|never, split).
 *   post_processor null, ByteLevel, TemplateProcessing, Sequence of those.
 *   decoder       null, ByteLevel, Sequence of Replace(String), ByteFallback, Fuse, Strip.
 *   added_tokens  matched before the model, leftmost-longest, with lstrip/rstrip/single_word/
 *                 normalized honoured; special ones only when ENG_TOK_PARSE_SPECIAL is given.
 * tokenizer_config.json (read when it sits next to tokenizer.json): add_bos_token and
 * add_eos_token, when present, override the post-processor's template (that is what
 * transformers' Llama tokenizers do); bos_token/eos_token name the BOS/EOS ids;
 * additional_special_tokens count as special for skipping; clean_up_tokenization_spaces is
 * reported by eng_tok_clean_up_default().
 *
 * Regexes from the file run through PCRE2 (UTF + UCP) after one rewrite: `\s`/`\S` become
 * `\p{White_Space}`/`\P{White_Space}`, which is what Oniguruma (used by HF's Rust library) and
 * HF's JS library mean by them. Unicode tables (NFC, regex classes) are Unicode 14.
 *
 * Ownership: eng_tok_load() returns a tokenizer owned by the caller, freed with eng_tok_free().
 * Encode returns a malloc'd id array, decode a malloc'd NUL-terminated string; the caller frees
 * both with free(). An eng_tok_stream is a plain struct owned by its user; it borrows the
 * tokenizer, which must outlive it.
 *
 * Thread rules: a loaded tokenizer is immutable and may be shared by any number of threads;
 * eng_tok_encode/decode keep all scratch state (including the per-word BPE cache) in the call, so
 * they are thread-safe without locks. One eng_tok_stream belongs to one thread at a time.
 *
 * Limits (no input makes the tokenizer use more than ~1 GiB): tokenizer.json up to 64 MiB and
 * 8 M JSON values (measured worst case ~750 MB while parsing), ids below 2^22, encode input up
 * to ENG_TOK_MAX_TEXT bytes (KC_ERANGE beyond; 8 MiB of one letter peaks at ~330 MB).
 */
#ifndef ENG_TOKENIZER_H
#define ENG_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"

/* Largest text eng_tok_encode() accepts, in bytes. */
#define ENG_TOK_MAX_TEXT ((size_t)8 << 20)

struct eng_tok;

/* Encode flags. */
enum {
    /* Add the post-processor's special tokens (e.g. BOS), as HF's add_special_tokens=True. */
    ENG_TOK_ADD_SPECIAL = 1u << 0,
    /* Treat special-token text in the input ("<|im_start|>") as the special token. Without it
     * such text is tokenized as plain text (HF's split_special_tokens=True); added tokens that
     * are not special are matched either way. HF's own default is to parse them. */
    ENG_TOK_PARSE_SPECIAL = 1u << 1,
};

/* Decode flags. */
enum {
    /* Drop special tokens (special added tokens and config additional_special_tokens). */
    ENG_TOK_SKIP_SPECIAL = 1u << 0,
    /* Apply transformers' clean_up_tokenization (" ." -> "." etc.); eng_tok_decode only. */
    ENG_TOK_CLEAN_UP_SPACES = 1u << 1,
};

/* Loads a tokenizer from a model directory (reads DIR/tokenizer.json and, if present,
 * DIR/tokenizer_config.json) or from a tokenizer.json path (the config is looked for in the same
 * directory). On success *out owns a new tokenizer; on failure *out is untouched and err names
 * the file, the JSON location and the problem (KC_ENOTFOUND, KC_EIO, KC_EFORMAT, KC_ERANGE,
 * KC_EUNSUPPORTED, KC_ENOMEM). */
int eng_tok_load(const char *path, struct eng_tok **out, struct kc_error *err);

/* Like eng_tok_load but from memory: json (len bytes, need not be NUL-terminated) holds the
 * tokenizer.json text, config_json (may be NULL) the tokenizer_config.json text. name is used in
 * error messages only. */
int eng_tok_load_buffer(const char *name, const char *json, size_t len, const char *config_json,
                        size_t config_len, struct eng_tok **out, struct kc_error *err);

/* Frees a tokenizer; NULL is a no-op. No stream may still use it. */
void eng_tok_free(struct eng_tok *tok);

/* Size of the id space: largest id + 1 (ids without a piece in between are "holes"). */
int32_t eng_tok_vocab_size(const struct eng_tok *tok);

/* BOS / EOS ids from tokenizer_config.json (or the post-processor template for BOS); -1 when
 * the tokenizer has none. */
int32_t eng_tok_bos(const struct eng_tok *tok);
int32_t eng_tok_eos(const struct eng_tok *tok);

/* Checks that every id the tokenizer can produce (its pieces, added tokens, BOS and EOS) is
 * below model_vocab, the model's embedding rows: a mismatched tokenizer must fail at start-up,
 * not at the first request. A tokenizer with fewer ids than the model is fine (padded
 * vocabularies). KC_ERANGE with a message naming the first bad id otherwise. */
int eng_tok_check_vocab(const struct eng_tok *tok, int32_t model_vocab, struct kc_error *err);

/* Whether tokenizer_config.json sets clean_up_tokenization_spaces to true (false when absent;
 * HF's JS library would default to true). The clean-up is lossy and cannot be streamed, so
 * decode applies it only when the caller passes ENG_TOK_CLEAN_UP_SPACES. */
bool eng_tok_clean_up_default(const struct eng_tok *tok);

/* True when id is a special token (skipped by ENG_TOK_SKIP_SPECIAL). */
bool eng_tok_is_special(const struct eng_tok *tok, int32_t id);

/* Returns the id of a token given its exact piece text (vocab or added token), or -1. */
int32_t eng_tok_piece_to_id(const struct eng_tok *tok, const char *piece, size_t len);

/* The token's piece as written in tokenizer.json (e.g. "Ġthe", "▁the", "<0x0A>", "<s>"), not
 * NUL-terminated, valid while tok lives. Returns KC_ERANGE for an id outside [0, vocab_size) or a
 * hole. */
int eng_tok_id_to_piece(const struct eng_tok *tok, int32_t id, const char **piece, size_t *len);

/* Tokenizes len bytes of UTF-8 text. On success *ids_out is a malloc'd array of *n_out ids (NULL
 * when *n_out is 0) that the caller frees. Fails with KC_EINVAL for invalid UTF-8 (err gives the
 * byte offset), KC_ERANGE for text longer than ENG_TOK_MAX_TEXT, KC_ENOMEM. */
int eng_tok_encode(const struct eng_tok *tok, const char *text, size_t len, unsigned flags,
                   int32_t **ids_out, size_t *n_out, struct kc_error *err);

/* Like eng_tok_encode, but gives up with KC_ECONTEXT as soon as the text makes more than
 * max_ids ids (0: no limit), so a caller with a context limit does not pay for encoding a
 * huge text it will refuse anyway. */
int eng_tok_encode_max(const struct eng_tok *tok, const char *text, size_t len, unsigned flags,
                       size_t max_ids, int32_t **ids_out, size_t *n_out, struct kc_error *err);

/* Turns ids into text as HF's decode does. On success *text_out is a malloc'd NUL-terminated
 * string of *len_out bytes, always valid UTF-8 (incomplete or invalid byte sequences become
 * U+FFFD). Fails with KC_ERANGE (err names the position and id) for an id outside
 * [0, vocab_size) or a hole. */
int eng_tok_decode(const struct eng_tok *tok, const int32_t *ids, size_t n, unsigned flags,
                   char **text_out, size_t *len_out, struct kc_error *err);

/* Streaming detokenizer: push ids one at a time, get back only complete UTF-8 characters; bytes
 * of a character split across tokens are held back until it completes. Concatenating every push
 * and the final flush gives exactly eng_tok_decode() of the same ids (without clean-up). */
struct eng_tok_stream {
    const struct eng_tok *tok;
    unsigned flags;
    uint32_t strip_left; /* leading decoder-Strip characters still to drop */
    bool started;        /* a token has been emitted (for the no-decoder " " join) */
    uint8_t pend[4];     /* bytes of an incomplete character */
    uint8_t npend;
    uint8_t need;  /* bytes the pending character still needs */
    uint8_t lower; /* bounds for the next continuation byte (WHATWG UTF-8 decoder) */
    uint8_t upper;
};

/* Bytes a caller's buffer needs for one eng_tok_stream_push/flush, whatever the id. */
size_t eng_tok_stream_bound(const struct eng_tok *tok);

/* Starts a stream over tok with decode flags (ENG_TOK_SKIP_SPECIAL; clean-up is ignored). */
void eng_tok_stream_init(struct eng_tok_stream *s, const struct eng_tok *tok, unsigned flags);

/* Decodes one id, writing the newly complete text to out (cap bytes, at least
 * eng_tok_stream_bound()) and its length to *out_len (possibly 0). Fails with KC_ERANGE for a bad
 * id (stream state unchanged) or KC_EINVAL when cap is too small. */
int eng_tok_stream_push(struct eng_tok_stream *s, int32_t id, char *out, size_t cap,
                        size_t *out_len, struct kc_error *err);

/* Ends the stream: writes U+FFFD for a still-incomplete character (as batch decode does) and
 * resets the pending state. Returns 0 or KC_EINVAL when cap is too small. */
int eng_tok_stream_flush(struct eng_tok_stream *s, char *out, size_t cap, size_t *out_len);

/* Writes the linked PCRE2's version ("10.42 2022-12-11") to out (cap bytes, truncated,
 * NUL-terminated), for `kvcast --version`. */
void eng_tok_pcre2_version(char *out, size_t cap);

#endif /* ENG_TOKENIZER_H */
