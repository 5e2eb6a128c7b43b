#!/usr/bin/python3
"""Byte-level BPE tokenizer for the kvcast default models: trainer, encoder, HF exporter.

Subcommands:
  train     learn 4096-token byte-level BPE on <dir>/train.jsonl (the training split only) and
            write <dir>/tokenizer.json + <dir>/tokenizer_config.json (Hugging Face format)
  tokenize  encode train.jsonl / eval.jsonl with that tokenizer into train.bin / eval.bin
            (uint16 token ids; every document preceded by <|endoftext|>) + tokens.json

The pre-tokenizer is GPT-2's regex, used verbatim by this trainer (through the `regex` module,
which knows \\p{L}/\\p{N}) and written verbatim into tokenizer.json as a `Split` pre-tokenizer
followed by `ByteLevel` with use_regex=false, so HF tokenizers (Rust), tokenizers.js and a PCRE2
implementation all split exactly as the trainer did. Bytes map to printable characters with
GPT-2's bytes_to_unicode table. Ids: 0..255 the byte tokens in byte order, 256..4094 the merges
in the order learnt, 4095 `<|endoftext|>` (special; used as both BOS and EOS).
Deterministic: ties between equally frequent pairs go to the pair with the smaller ids.
"""
import argparse
import collections
import json
import os
import sys
import time

import regex

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VOCAB_SIZE = 4096
EOT = "<|endoftext|>"
PAT = regex.compile(PATTERN)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


B2U = bytes_to_unicode()


def pretokenize(text):
    return PAT.findall(text)


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def merge_pair(w, a, b, new):
    """w with every non-overlapping (a, b), left to right, replaced by new: one merge applied
    to one word, in training and in encoding alike."""
    out = []
    j = 0
    while j < len(w):
        if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
            out.append(new)
            j += 2
        else:
            out.append(w[j])
            j += 1
    return out


def train(docs, vocab_size=VOCAB_SIZE, log=print):
    t0 = time.time()
    wc = collections.Counter()
    for d in docs:
        wc.update(pretokenize(d["text"]))
    words = [list(w.encode("utf-8")) for w in wc]
    freqs = [wc[w] for w in wc]
    log("bpe: %d pre-tokens, %d distinct" % (sum(freqs), len(words)))
    pair_counts = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        f = freqs[i]
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += f
            where[(a, b)].add(i)
    tok_bytes = [bytes([i]) for i in range(256)]
    merges = []
    n_merges = vocab_size - 256 - 1
    for m in range(n_merges):
        best = max(pair_counts.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        (a, b), cnt = best
        if cnt <= 0:
            raise SystemExit("bpe: ran out of pairs after %d merges" % m)
        new = len(tok_bytes)
        tok_bytes.append(tok_bytes[a] + tok_bytes[b])
        merges.append((a, b))
        for i in sorted(where.pop((a, b))):
            w = words[i]
            f = freqs[i]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
            out = merge_pair(w, a, b, new)
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(i)
        for p in [p for p, c in pair_counts.items() if c == 0]:
            del pair_counts[p]
            where.pop(p, None)
        if (m + 1) % 500 == 0:
            log("bpe: %d merges (last %r x%d) %.1fs" % (m + 1, tok_bytes[new], cnt, time.time() - t0))
    return merges, tok_bytes


def tok_str(bs):
    return "".join(B2U[b] for b in bs)


def write_hf(outdir, merges, tok_bytes):
    vocab = {tok_str(bs): i for i, bs in enumerate(tok_bytes)}
    if len(vocab) != len(tok_bytes):
        raise SystemExit("bpe: duplicate token strings")
    eot_id = len(tok_bytes)
    vocab[EOT] = eot_id
    special = {"id": eot_id, "content": EOT, "single_word": False, "lstrip": False,
               "rstrip": False, "normalized": False, "special": True}
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": EOT, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": EOT, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": EOT, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {EOT: {"id": EOT, "ids": [eot_id], "tokens": [EOT]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": ["%s %s" % (tok_str(tok_bytes[a]), tok_str(tok_bytes[b])) for a, b in merges],
        },
    }
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    tc = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(eot_id): {k: v for k, v in special.items() if k != "id"}},
        "bos_token": EOT,
        "eos_token": EOT,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=1)
        f.write("\n")


class Tokenizer:
    """Encoder/decoder for a tokenizer.json written by write_hf (standard BPE semantics:
    repeatedly merge the lowest-rank adjacent pair, leftmost first)."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        u2b = {u: b for b, u in B2U.items()}
        self.vocab = tj["model"]["vocab"]
        self.id_to_bytes = {}
        for s, i in self.vocab.items():
            if s == EOT:
                continue
            self.id_to_bytes[i] = bytes(u2b[c] for c in s)
        self.byte_id = {self.id_to_bytes[i][0]: i for i in self.id_to_bytes if len(self.id_to_bytes[i]) == 1}
        self.ranks = {}
        for r, m in enumerate(tj["model"]["merges"]):
            a, b = m.split(" ")
            self.ranks[(self.vocab[a], self.vocab[b])] = (r, self.vocab[a + b])
        self.eot_id = self.vocab[EOT]
        self.bos_id = self.eos_id = self.eot_id
        self.cache = {}

    def _bpe(self, piece):
        ids = self.cache.get(piece)
        if ids is not None:
            return ids
        w = [self.byte_id[b] for b in piece.encode("utf-8")]
        while len(w) > 1:
            best = None
            for j in range(len(w) - 1):
                r = self.ranks.get((w[j], w[j + 1]))
                if r is not None and (best is None or r[0] < best[0]):
                    best = (r[0], r[1], w[j], w[j + 1])
            if best is None:
                break
            _, new, a, b = best
            w = merge_pair(w, a, b, new)
        self.cache[piece] = w
        return w

    def encode(self, text, add_bos=False):
        """Like HF: the literal string <|endoftext|> inside text becomes the special token."""
        ids = [self.bos_id] if add_bos else []
        for k, part in enumerate(text.split(EOT)):
            if k:
                ids.append(self.eot_id)
            for p in pretokenize(part):
                ids.extend(self._bpe(p))
        return ids

    def decode(self, ids):
        return b"".join(self.id_to_bytes.get(i, EOT.encode()) for i in ids).decode("utf-8", errors="replace")


def cmd_train(args):
    docs = read_docs(os.path.join(args.dir, "train.jsonl"))
    merges, tok_bytes = train(docs, args.vocab_size)
    write_hf(args.dir, merges, tok_bytes)
    print("bpe: wrote %s/tokenizer.json (%d tokens)" % (args.dir, len(tok_bytes) + 1))


def cmd_tokenize(args):
    import numpy as np
    tok = Tokenizer(os.path.join(args.dir, "tokenizer.json"))
    meta = {"eot_id": tok.eot_id, "splits": {}}
    for split in ("train", "eval"):
        docs = read_docs(os.path.join(args.dir, split + ".jsonl"))
        ids, spans = [], []
        nbytes = 0
        for d in docs:
            ids.append(tok.eot_id)
            start = len(ids)
            ids.extend(tok.encode(d["text"]))
            spans.append([d["name"], d["source"], start, len(ids)])
            nbytes += len(d["text"].encode("utf-8"))
        arr = np.asarray(ids, dtype=np.uint16)
        arr.tofile(os.path.join(args.dir, split + ".bin"))
        meta["splits"][split] = {"tokens": len(ids), "bytes": nbytes, "documents": spans}
        print("bpe: %-5s %8d tokens, %.2f bytes/token" % (split, len(ids), nbytes / len(ids)))
    with open(os.path.join(args.dir, "tokens.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train", "tokenize"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
        p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args()
    {"train": cmd_train, "tokenize": cmd_tokenize}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
