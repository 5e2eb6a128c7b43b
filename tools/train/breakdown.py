#!/usr/bin/python3
"""Splits a model's loss on held-out and training documents into name tokens and the rest.

Why: the held-out loss of the base is dominated by how well it generalises to a novel it has
never seen (*Persuasion*). Comparing that novel with training novels scored the same way separates
what a recipe change buys on unseen text from what it buys by memorising the training text; the
name columns show how much of the gap is the unseen cast.

Each document is cut into consecutive windows of <|endoftext|> + 511 tokens (as train.py's
evaluation), at most --windows of them. A "name token" is one whose text starts with a capital
letter and does not follow the end of a sentence or a line (a heuristic: it also counts titles
such as "Mr"); "seen" means the same token already occurred earlier in the window, so a model that
copies from its context could predict it.

  /usr/bin/python3 tools/train/breakdown.py models/tiny/base build/train/base/ckpt.pt
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import kvp_common as K  # noqa: E402

SENTENCE_END = (".", "!", "?", '"', ":", ";")


def document(data_dir, meta, name):
    for split in ("eval", "train"):
        for doc, _source, start, end in meta["splits"][split]["documents"]:
            if doc == name:
                return np.fromfile(os.path.join(data_dir, split + ".bin"), dtype=np.uint16)[start:end], split
    raise SystemExit("no document named %r" % name)


@torch.no_grad()
def score(net, toks, eot, ctx, windows):
    """(per-token NLL, targets, seen-before-in-window flags) over up to `windows` full windows."""
    nll, ys, seen = [], [], []
    for i in range(0, min(len(toks) - ctx + 1, windows * ctx), ctx):
        y = toks[i:i + ctx].astype(np.int64)
        x = torch.from_numpy(np.concatenate([[eot], y[:-1]]))[None]
        nll.append(F.cross_entropy(net(x)[0], torch.from_numpy(y), reduction="none").numpy())
        ys.append(y)
        earlier = set()
        for t in y:
            seen.append(int(t) in earlier)
            earlier.add(int(t))
    return np.concatenate(nll), np.concatenate(ys), np.array(seen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="exported model directories or train.py ckpt.pt files")
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--docs", default="Persuasion,Emma,Northanger Abbey")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    meta = K.load_tokens_meta(args.dir)
    eot = meta["eot_id"]
    tok = bpe.Tokenizer(os.path.join(args.dir, "tokenizer.json"))
    text = [tok.decode([i]) for i in range(eot)] + [""]
    capital = np.array([t.lstrip()[:1].isupper() for t in text])
    ends = np.array([t.rstrip().endswith(SENTENCE_END) or t.endswith("\n") or i == eot
                     for i, t in enumerate(text)])
    print("| model | document | split | tokens | loss | name tokens | their loss | seen names' loss | "
          "other tokens' loss |\n|---|---|---|---|---|---|---|---|---|")
    for path in args.models:
        net = K.load_model(path)
        for name in args.docs.split(","):
            toks, split = document(args.dir, meta, name)
            nll, y, seen = score(net, toks, eot, args.ctx, args.windows)
            prev = np.concatenate([[eot], y[:-1]])
            prev[::args.ctx] = eot  # each window starts after BOS
            is_name = capital[y] & ~ends[prev]
            print("| %s | %s | %s | %d | %.3f | %.1f%% | %.2f | %.2f | %.3f |"
                  % (path, name, split, len(y), nll.mean(), 100 * is_name.mean(), nll[is_name].mean(),
                     nll[is_name & seen].mean(), nll[~is_name].mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
