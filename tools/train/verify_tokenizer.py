#!/usr/bin/python3
"""Writes tokenizer test cases (text + ids from this recipe's Python encoder, BOS included) and runs
verify_tokenizer.mjs with tokenizers.js on them. Cases: every paragraph/verse line of a
deterministic sample of both splits, whole documents, and hand-written edge cases (contractions,
digits, runs of spaces and newlines, punctuation, non-ASCII)."""
import argparse
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402

EDGE = [
    "", " ", "  ", "\n", "\n\n\n", "a\n\nb", "Hello world", " leading space", "trailing space ",
    "I'm sure you'll say it's theirs; we've they'd I'll", "DON'T SHOUT'S", "1818, 1760 and 12345678",
    "her \u00a320,000 a year", "caf\u00e9 na\u00efve \u00e6on \u4e2d\u6587 \U0001F600",
    "tabs\tand  double  spaces   end   ", "--\"Oh!\" said she;--'_Mr._ Darcy'...", "x  \n  y",
    "In the beginning God created the heaven and the earth.",
    "<|endoftext|> is just text here",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--tokenizers-js", required=True, help="path of @huggingface/tokenizers dist/tokenizers.mjs")
    ap.add_argument("--lines", type=int, default=3000)
    args = ap.parse_args()
    tok = bpe.Tokenizer(os.path.join(args.dir, "tokenizer.json"))
    rng = random.Random(1234)
    texts = list(EDGE)
    for split in ("train", "eval"):
        docs = bpe.read_docs(os.path.join(args.dir, split + ".jsonl"))
        lines = [l for d in docs for l in d["text"].split("\n")]
        texts += rng.sample(lines, min(args.lines, len(lines)))
        texts += [d["text"] for d in docs if d["name"] in ("Ruth", "Esther", "Northanger Abbey")]
    cases = [{"text": t, "ids": tok.encode(t, add_bos=True)} for t in texts]
    path = os.path.join(args.dir, "tokenizer_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)
    # Python round trip first
    for c in cases:
        if tok.decode(c["ids"][1:]) != c["text"]:  # decode keeps special tokens as text
            print("verify_tokenizer: python decode mismatch on %r" % c["text"][:60])
            return 1
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run(["node", os.path.join(here, "verify_tokenizer.mjs"), args.tokenizers_js,
                           args.dir, path]).returncode


if __name__ == "__main__":
    sys.exit(main())
