#!/usr/bin/python3
"""Writes <dir>/swap/train.jsonl: the training split plus --copies copies of it in which each
document's proper names are consistently replaced by other names from the same source.

Why: the held-out novel has its own cast. A small model trained on five novels learns their names
as priors ("Emma", "Elinor") instead of copying a name from the context, and pays for it on
*Persuasion*. In a renamed copy the names are arbitrary, so only the context predicts them.

A proper name is a capitalised word seen at least 3 times in the training split whose lower-case
form is rare (under 5% as often), minus a few titles, interjections and words of address (Mr, Lady, Oh, God...). Each
name belongs to the source (austen or kjv) it occurs in most; a document's names are mapped, one to
one, onto a random sample of its source's names. Only the training split is read: the held-out
documents play no part. The copies are named "<document> #k"; the tokenizer files and eval.jsonl
are copied beside them so that `bpe.py tokenize --dir <dir>/swap` and `train.py --dir <dir>/swap`
work unchanged. Deterministic for a given --seed.
"""
import argparse
import collections
import json
import os
import random
import re
import shutil

NAME = re.compile(r"\b[A-Z][a-z]+\b")
LOWER = re.compile(r"\b[a-z]+\b")
# Capitalised words that are rarely lower-case but are titles, interjections or words of address,
# not names: renaming them would teach nothing about names and break common phrases.
NOT_NAMES = set("""Mr Mrs Miss Sir Lady Lord God Captain Colonel Dr Madam Ma Oh Thou Thy Thee Holy
Spirit Ghost Father Son Almighty King Queen Prince Chapter Book Volume End""".split())


def find_names(docs):
    """{name: source} for the proper names of the training documents."""
    cap, low, by_source = collections.Counter(), collections.Counter(), collections.defaultdict(collections.Counter)
    for d in docs:
        low.update(LOWER.findall(d["text"]))
        for w in NAME.findall(d["text"]):
            cap[w] += 1
            by_source[w][d["source"]] += 1
    return {w: by_source[w].most_common(1)[0][0] for w, c in cap.items()
            if c >= 3 and w not in NOT_NAMES and low[w.lower()] < 0.05 * c}


def renamed(doc, names, pools, rng):
    own = sorted({w for w in NAME.findall(doc["text"]) if w in names})
    pool = pools[doc["source"]]
    mapping = dict(zip(own, rng.sample(pool, min(len(own), len(pool)))))
    return NAME.sub(lambda m: mapping.get(m.group(), m.group()), doc["text"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with open(os.path.join(args.dir, "train.jsonl")) as f:
        docs = [json.loads(line) for line in f]
    names = find_names(docs)
    pools = {s: sorted(w for w, src in names.items() if src == s) for s in sorted(set(names.values()))}
    rng = random.Random(args.seed)
    out = os.path.join(args.dir, "swap")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
        for k in range(1, args.copies + 1):
            for d in docs:
                f.write(json.dumps({"name": "%s #%d" % (d["name"], k), "source": d["source"],
                                    "text": renamed(d, names, pools, rng)}) + "\n")
    for fn in ("eval.jsonl", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.dir, fn), os.path.join(out, fn))
    print("nameswap: %s names (%s); wrote %s/train.jsonl with %d renamed copies"
          % (len(names), ", ".join("%s %d" % (s, len(p)) for s, p in pools.items()), out, args.copies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
