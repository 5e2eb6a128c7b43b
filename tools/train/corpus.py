#!/usr/bin/python3
"""Extract the kvcast training/evaluation corpus from Debian-packaged public-domain text.

Sources (and nothing else):
  * Jane Austen's six novels from r-cran-janeaustenr (R data, dumped with Rscript);
  * the King James Bible from bible-kjv-text, read with the `bible` program of bible-kjv.

Held out entirely (never used for training, calibration or tokenizer training): the novel
Persuasion and the books of Ruth, Esther and Revelation. They form the evaluation split.

Normalisation (deterministic): Austen's hard-wrapped lines are joined into one line per
paragraph, runs of spaces collapse to one; KJV chapters become a header line "Book N" followed
by one verse per line (verse numbers dropped). Documents (one novel or one Bible book) are
separated by a NUL-free marker line in the JSON-lines output, so the tokenizer/model scripts
can insert the <|endoftext|> token between documents.

Outputs in the work dir: train.jsonl, eval.jsonl (one {"name", "source", "text"} per document),
train.txt / eval.txt (plain text, documents separated by blank lines; for inspection) and
corpus_manifest.json (document names, byte counts, SHA-256 of the outputs).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

AUSTEN = [
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]
HELD_OUT_NOVELS = {"persuasion"}
HELD_OUT_BOOKS = {"Ruth", "Esther", "Revelation"}


def dump_austen(tmpdir):
    """Writes each novel's line vector to tmpdir/<name>.txt via Rscript; returns {name: lines}."""
    names = ",".join('"%s"' % n for n, _ in AUSTEN)
    script = (
        "library(janeaustenr); for (n in c(%s)) { x <- get(n); "
        'writeLines(enc2utf8(x), file.path("%s", paste0(n, ".txt")), useBytes=TRUE) }'
        % (names, tmpdir)
    )
    subprocess.run(["Rscript", "--vanilla", "-e", script], check=True)
    out = {}
    for n, _ in AUSTEN:
        with open(os.path.join(tmpdir, n + ".txt"), encoding="utf-8") as f:
            out[n] = f.read().split("\n")
    return out


def austen_text(lines):
    paras, cur = [], []
    for line in lines:
        s = line.strip()
        if s:
            cur.append(s)
        elif cur:
            paras.append(re.sub(r"[ \t]+", " ", " ".join(cur)))
            cur = []
    if cur:
        paras.append(re.sub(r"[ \t]+", " ", " ".join(cur)))
    return "\n".join(paras) + "\n"


def kjv_books():
    """Returns [(book, text)] in canonical order, from `bible` (bible-kjv)."""
    res = subprocess.run(
        ["bible", "-l9999", "Genesis 1:1-Revelation 22:21"],
        check=True, stdout=subprocess.PIPE,
    )
    raw = res.stdout.decode("ascii")
    books, order = {}, []
    book = None
    verse_re = re.compile(r"^  (\d+) (.*)$")
    head_re = re.compile(r"^(.+) (\d+)$")
    n_verses = 0
    for line in raw.split("\n"):
        if not line.strip():
            continue
        m = verse_re.match(line)
        if m:
            books[book].append(re.sub(r"\s+", " ", m.group(2).strip()))
            n_verses += 1
            continue
        m = head_re.match(line)
        if not m:
            raise SystemExit("corpus: unexpected line from bible: %r" % line)
        book = m.group(1)
        if book not in books:
            books[book] = []
            order.append(book)
        books[book].append(line.strip())
    if n_verses != 31102 or len(order) != 66:
        raise SystemExit("corpus: expected 66 books / 31102 verses, got %d / %d" % (len(order), n_verses))
    return [(b, "\n".join(books[b]) + "\n") for b in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    docs_train, docs_eval = [], []
    with tempfile.TemporaryDirectory() as td:
        novels = dump_austen(td)
    for key, title in AUSTEN:
        d = {"name": title, "source": "austen", "text": austen_text(novels[key])}
        (docs_eval if key in HELD_OUT_NOVELS else docs_train).append(d)
    for book, text in kjv_books():
        d = {"name": book, "source": "kjv", "text": text}
        (docs_eval if book in HELD_OUT_BOOKS else docs_train).append(d)
    if len(docs_eval) != 4:
        raise SystemExit("corpus: held-out split incomplete")

    manifest = {}
    for split, docs in (("train", docs_train), ("eval", docs_eval)):
        with open(os.path.join(args.out, split + ".jsonl"), "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        with open(os.path.join(args.out, split + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(d["text"] for d in docs))
        blob = "".join(d["text"] for d in docs).encode("utf-8")
        manifest[split] = {
            "documents": [[d["name"], len(d["text"].encode("utf-8"))] for d in docs],
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        print("corpus: %-5s %3d documents %9d bytes sha256 %s"
              % (split, len(docs), len(blob), manifest[split]["sha256"][:16]))
    with open(os.path.join(args.out, "corpus_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
