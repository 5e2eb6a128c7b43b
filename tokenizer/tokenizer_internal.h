/*
 * tokenizer_internal.h — the tokenizer's private structures, shared by tokenizer/tokenizer*.c only
 * (load in tokenizer.c, encode in tokenizer_encode.c, decode in tokenizer_decode.c, Unicode
 * helpers in tokenizer_unicode.c, NFC tables in tokenizer_nfc_data.c).
 *
 * DESIGN (invariants every file relies on):
 *  1. Every id in [0, n_ids) has an entry in the per-id arrays; ids without a piece ("holes")
 *     have ENG__TOK_ID_PIECE clear and are rejected by decode.
 *  2. The model map keys are in the model's alphabet: raw bytes for byte-level models (pieces run
 *     back through the GPT-2 byte<->unicode table at load), the piece text otherwise. Added tokens
 *     are not in the model map (as in HF's Rust library: the model never produces them).
 *  3. Every merge (a, b) -> r names ids in the model map, and r's key is a's key + b's key.
 *  4. All strings live in one pool of at most ENG__TOK_MAX_POOL bytes; offsets and lengths are
 *     uint32.
 *  5. After load nothing is written: encode/decode keep their scratch state per call.
 */
#ifndef ENG_TOKENIZER_INTERNAL_H
#define ENG_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"
#include "tokenizer/tokenizer.h"

#define ENG__TOK_MAX_FILE ((size_t)64 << 20)
#define ENG__TOK_MAX_CONFIG ((size_t)8 << 20)
#define ENG__TOK_MAX_JSON_VALUES (8 << 20) /* keeps jansson's tree well under 1 GiB */
#define ENG__TOK_MAX_IDS ((int32_t)1 << 22)
#define ENG__TOK_MAX_PIECE 4096u
#define ENG__TOK_MAX_POOL ((size_t)256 << 20) /* all strings: pieces, keys, decoded forms */
#define ENG__TOK_MAX_ADDED_LEN 1024u
#define ENG__TOK_MAX_ADDED_TOTAL ((size_t)8 << 20) /* sum of added-token contents */
#define ENG__TOK_MAX_STEPS 64 /* normalizer / pre-tokenizer / decoder steps after flattening */
#define ENG__TOK_MAX_NEST 8   /* Sequence nesting depth */
#define ENG__TOK_MAX_TEMPLATE 16

/* Per-id flags. */
enum {
    ENG__TOK_ID_PIECE = 1u << 0,   /* the id exists */
    ENG__TOK_ID_ADDED = 1u << 1,   /* an added token */
    ENG__TOK_ID_SPECIAL = 1u << 2, /* skipped by ENG_TOK_SKIP_SPECIAL */
    ENG__TOK_ID_BYTES = 1u << 3,   /* decodes to raw bytes that join neighbours (else text) */
    ENG__TOK_ID_MODEL = 1u << 4,   /* in the model vocabulary (has a model-alphabet key) */
};

struct eng__tok_str {
    uint32_t off;
    uint32_t len;
};

/* Open-addressing map from a key string to an id (keys are per-id strings in the pool). */
struct eng__tok_map {
    uint64_t *slots; /* (hash >> 32) << 32 | (id + 1); 0 = empty */
    size_t mask;
    const struct eng__tok_str *keys; /* per-id key, indexed by id */
};

struct eng__tok_merge_slot {
    uint64_t key; /* ((uint64_t)a << 32 | b) + 1; 0 = empty */
    uint32_t rank;
    int32_t result;
};

struct eng__tok_merges {
    struct eng__tok_merge_slot *slots;
    size_t mask;
};

/* A byte trie over added-token contents; children as sibling lists, the root as a table. */
struct eng__tok_trie_node {
    int32_t child;   /* first child node or -1 */
    int32_t sibling; /* next sibling or -1 */
    int32_t token;   /* index into added[] ending here or -1 */
    uint8_t byte;
};

struct eng__tok_trie {
    struct eng__tok_trie_node *nodes;
    size_t n, cap;
    int32_t root[256]; /* first-level node per byte or -1 */
};

struct eng__tok_added {
    int32_t id;
    struct eng__tok_str content; /* as written */
    bool special, lstrip, rstrip, single_word, normalized;
};

enum eng__tok_step_kind {
    /* normalizers */
    ENG__TOK_N_PREPEND,
    ENG__TOK_N_REPLACE, /* literal or regex */
    ENG__TOK_N_NFC,
    ENG__TOK_N_STRIP,
    /* pre-tokenizers */
    ENG__TOK_P_SPLIT,     /* literal or regex; Isolated or Removed, invert */
    ENG__TOK_P_BYTELEVEL, /* add_prefix_space; use_regex (regex set) */
    ENG__TOK_P_METASPACE, /* ' ' -> lit; prepend lit per prepend scheme; split before lit */
};

enum { ENG__TOK_PREPEND_ALWAYS, ENG__TOK_PREPEND_FIRST, ENG__TOK_PREPEND_NEVER };

struct eng__tok_step {
    enum eng__tok_step_kind kind;
    pcre2_code *re;           /* regex pattern, or NULL for a literal */
    struct eng__tok_str lit;  /* literal pattern (Replace/Split String) or Prepend text */
    struct eng__tok_str with; /* Replace content */
    bool removed;             /* Split behavior Removed (else Isolated) */
    bool invert;              /* Split invert */
    bool prefix_space;        /* ByteLevel add_prefix_space */
    bool strip_left, strip_right;
    int prepend; /* Metaspace: ENG__TOK_PREPEND_* */
    bool split;  /* Metaspace split */
};

enum eng__tok_decoder_kind {
    ENG__TOK_DEC_NONE,      /* no decoder: pieces joined with " " */
    ENG__TOK_DEC_BYTELEVEL, /* GPT-2 byte-level */
    ENG__TOK_DEC_CHAIN,     /* Replace* ByteFallback? Fuse? Strip? (SentencePiece style) */
};

struct eng_tok {
    int32_t n_ids;
    uint8_t *id_flags;          /* [n_ids] ENG__TOK_ID_* */
    struct eng__tok_str *piece; /* [n_ids] piece as written in the file */
    struct eng__tok_str *mkey;  /* [n_ids] model-alphabet key (len 0: not in the model) */
    struct eng__tok_str *dec;   /* [n_ids] decoded text or bytes */
    char *pool;
    size_t pool_len, pool_cap;
    size_t max_dec_len; /* longest dec entry (stream bound) */

    struct eng__tok_map model_map; /* model-alphabet key -> id (vocab only) */
    struct eng__tok_map piece_map; /* piece -> id (vocab and added tokens) */
    struct eng__tok_merges merges;

    /* model */
    bool byte_level; /* pre-tokenizer ends with ByteLevel: BPE runs over raw bytes */
    bool byte_fallback, ignore_merges, fuse_unk;
    /* Not byte-level, no ignore_merges, and no model piece has "▁" (U+2581) right after
     * another character: no merge can cross the start of a "▁" run, so encode may run BPE on
     * each "▁word" alone (same ids, but words get cached and a long text is not one word). */
    bool split_at_metaspace;
    int32_t unk_id;                /* -1 when none */
    int32_t byte_sym[256];         /* byte-level: id of the single-byte symbol, or -1 */
    int32_t byte_fallback_id[256]; /* id of "<0xNN>", or -1 */

    /* added tokens */
    struct eng__tok_added *added;
    size_t n_added;
    struct eng__tok_trie trie_raw;  /* normalized == false: matched on the raw text */
    struct eng__tok_trie trie_norm; /* normalized == true: matched after normalization */
    bool has_lstrip_rstrip;

    /* pipeline */
    struct eng__tok_step norm[ENG__TOK_MAX_STEPS];
    int n_norm;
    struct eng__tok_step pre[ENG__TOK_MAX_STEPS];
    int n_pre;

    /* post-processing (single sequence) */
    int32_t prefix[ENG__TOK_MAX_TEMPLATE];
    int n_prefix;
    int32_t suffix[ENG__TOK_MAX_TEMPLATE];
    int n_suffix;

    /* decoder */
    enum eng__tok_decoder_kind dec_kind;
    struct eng__tok_str strip_char; /* Strip decoder content (one character) */
    uint32_t strip_start;

    int32_t bos_id, eos_id;
    bool clean_up;
};

/* tokenizer.c */
int32_t eng__tok_map_get(const struct eng_tok *tok, const struct eng__tok_map *m, const char *key,
                         size_t len);
bool eng__tok_merge_get(const struct eng__tok_merges *m, int32_t a, int32_t b, uint32_t *rank,
                        int32_t *result);
uint64_t eng__tok_hash(const void *p, size_t len);

/* tokenizer_encode.c: runs the normalizer over valid UTF-8 text; *out is malloc'd. */
int eng__tok_normalize(const struct eng_tok *tok, const char *s, size_t len, char **out,
                       size_t *out_len, struct kc_error *err);

/* tokenizer_unicode.c */
/* Returns the number of leading bytes of s that are valid UTF-8 (== len when all are). */
size_t eng__utf8_valid_prefix(const uint8_t *s, size_t len);
/* Length of the UTF-8 sequence starting with lead byte b (1 for invalid leads). */
size_t eng__utf8_len(uint8_t b);
/* Decodes one code point at s (valid UTF-8 assumed); stores its length in *n. */
uint32_t eng__utf8_decode(const uint8_t *s, size_t len, size_t *n);
/* Encodes cp into out (4 bytes room); returns the length. */
size_t eng__utf8_encode(uint32_t cp, uint8_t *out);
/* Unicode White_Space property. */
bool eng__uni_is_space(uint32_t cp);
/* NFC of valid UTF-8 text: on success *out is malloc'd (*out_len bytes). */
int eng__tok_nfc(const char *s, size_t len, char **out, size_t *out_len);

/* tokenizer_nfc_data.c (generated) */
struct eng__tok_ccc_range {
    uint32_t lo, hi;
    uint8_t ccc;
};
struct eng__tok_decomp {
    uint32_t cp;
    uint16_t off, len;
};
struct eng__tok_comp {
    uint32_t first, second, composite;
};
extern const char eng__tok_nfc_unicode_version[];
extern const struct eng__tok_ccc_range eng__tok_ccc_ranges[];
extern const size_t eng__tok_ccc_ranges_n;
extern const struct eng__tok_decomp eng__tok_decomps[];
extern const size_t eng__tok_decomps_n;
extern const uint32_t eng__tok_decomp_pool[];
extern const struct eng__tok_comp eng__tok_comps[];
extern const size_t eng__tok_comps_n;

#endif /* ENG_TOKENIZER_INTERNAL_H */
