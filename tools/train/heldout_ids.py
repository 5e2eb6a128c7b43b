#!/usr/bin/python3
"""Writes models/tiny/heldout.ids: the held-out token ids that the model card's and the README's
KV-prediction figures (`kvcast eval`, Persuasion, prompt 128 + continuation 32, 64 windows) were
measured on, so `kvcast eval` reproduces them without the training work dir.

Input: the corpus (corpus.py's eval.jsonl in --dir) and the shipped tokenizer
(models/tiny/base/tokenizer.json). The evaluation split is tokenized as `bpe.py tokenize` does
(<|endoftext|> before each document) and checked against the model card's token count; the
Persuasion tokens are cut into the windows `kvcast eval` takes (cmd_eval.c, kvp_common.eval_samples:
N starts spread evenly, each window P + C - 1 text tokens after the BOS that eval adds).

Output format (what `kvcast eval --ids` reads): one window per line, its P + C - 1 = 159 token ids
separated by spaces, no BOS; comment lines start with '#', the first one
("# kvcast-windows prompt_len=128 cont_len=32 samples=64") tells `kvcast eval` which options take
exactly these windows (tools/cli/kvp_data.h). The 64 windows back to back are N
windows spread evenly over 64 * 159 tokens, so `kvcast eval --ids --data heldout.ids --prompt-len
128 --cont-len 32 --samples 64` takes exactly these windows.

Usage: python3 tools/train/corpus.py --out DIR && python3 tools/train/heldout_ids.py --dir DIR
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpe  # noqa: E402

EVAL_SPLIT_TOKENS = 150658  # models/tiny/README.md, "Data and held-out split"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True, help="corpus.py output dir (eval.jsonl)")
    ap.add_argument("--models", default="models/tiny")
    ap.add_argument("--doc", default="Persuasion")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--cont-len", type=int, default=32)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--out", default=None, help="default: <models>/heldout.ids")
    args = ap.parse_args()
    tok = bpe.Tokenizer(os.path.join(args.models, "base", "tokenizer.json"))
    total, doc_ids = 0, None
    with open(os.path.join(args.dir, "eval.jsonl"), encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            ids = tok.encode(d["text"])
            total += 1 + len(ids)
            if d["name"] == args.doc:
                doc_ids = ids
    if total != EVAL_SPLIT_TOKENS:
        raise SystemExit("heldout_ids: evaluation split has %d tokens, the model card says %d"
                         % (total, EVAL_SPLIT_TOKENS))
    if doc_ids is None:
        raise SystemExit("heldout_ids: no document named %s" % args.doc)
    wt = args.prompt_len + args.cont_len - 1
    n = len(doc_ids)
    rows = []
    for s in range(args.samples):
        start = s * (n - wt) // (args.samples - 1) if args.samples > 1 else 0
        rows.append(doc_ids[start:start + wt])
    out = args.out or os.path.join(args.models, "heldout.ids")
    with open(out, "w") as f:
        f.write("# kvcast-windows prompt_len=%d cont_len=%d samples=%d\n"
                % (args.prompt_len, args.cont_len, args.samples))
        f.write("# held-out token ids: %d windows of %s (%d tokens), %d ids each, no BOS; written by\n"
                "# tools/train/heldout_ids.py, read by `kvcast eval` (its default data)\n"
                % (args.samples, args.doc, n, wt))
        for r in rows:
            f.write(" ".join(str(int(x)) for x in r) + "\n")
    print("heldout_ids: %s tokens %d, %s: %d tokens -> %d windows of %d in %s"
          % ("eval split", total, args.doc, n, args.samples, wt, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
