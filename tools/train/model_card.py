#!/usr/bin/python3
"""Writes models/tiny/README.md (the model card) from the recipe's own outputs, so every number
and sample in it is real: corpus_manifest.json, tokens.json, <preset>/train.log and final.json,
export_summary.json (held-out losses of the exported BF16 weights) and reference/generations.json,
plus a few seeded temperature samples drawn here from the exported BF16 weights.
"""
import argparse
import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import export as E  # noqa: E402
import model as M  # noqa: E402

SAMPLE_PROMPTS = [
    "It is a truth universally acknowledged, that",
    "And the LORD spake unto Moses, saying,",
    "Elizabeth could not help",
]


# The embedded pair's chat template (models/tiny/{base,aux}/chat_template.jinja) is written by
# hand, not by the recipe; the card says what it does and what it does not make of the models.
CHAT_SECTION = '## Chat template\n\nThese models are **not instruction-tuned**: they were trained only to continue Austen and the King James Bible. So that `/v1/chat/completions` works end to end, `base/` and `aux/` carry a minimal `chat_template.jinja` (HF\'s file name; `kvcast serve` and `kvcast chat-template` read it beside the tokenizer). It writes `<|endoftext|>` (the BOS), then one `Role: content` line per message (`System`, `User`, `Assistant` or `Tool`), and `Assistant:` at the end when a generation prompt is asked for:\n\n```\n<|endoftext|>System: Be brief.\nUser: Who is Anne Elliot?\nAssistant:\n```\n\n**Chat answers from this pair are continuations of that transcript, not assistant replies.** The models have never seen a dialogue in this format: they do not follow instructions or answer questions, and they often write more `User:` lines or drift into Austen- or scripture-flavoured prose. A stop string such as `"stop": ["\\nUser:"]` keeps an answer to one turn. The template exists to exercise the chat API (and KV Prediction on chat requests), not to make the pair a chatbot.\n'


def kvp_card(w, d):
    """The KV Prediction table from <dir>/kvp/eval.json (tools/train/kvp_report.py)."""
    path = os.path.join(d, "kvp", "eval.json")
    w("### Base with predicted KV (`kvcast eval`, 64 Persuasion windows, prompt 128, continuation 32)\n")
    if not os.path.exists(path):
        w("Not measured yet: run the recipe's `kvp` stage (tools/train/kvp_report.py).\n")
        return
    rep = json.load(open(path))
    summ_path = os.path.join(d, "kvp", "joint", "summary.json")
    steps = json.load(open(summ_path))["args"]["steps"] if os.path.exists(summ_path) else "?"
    w("Measured by the C engine on the ids written by `tools/train/kvp_eval.py --write-ids` "
      "(the same windows for every row), e.g. `%s`:\n" % rep["joint"]["command"])
    w("| pair | full NLL | aux NLL | predict NLL | gap closed | first-token agreement "
      "| predict/full TTFT (measured, analytic) |\n|---|---|---|---|---|---|---|")
    labels = {"calibration": "aux as first trained + ridge predictor (calibration only: the maths "
                             "of `kvcast calibrate`)",
              "joint": "shipped: aux + predictor trained jointly (%s steps, from the ridge fit)" % steps}
    for key in ("calibration", "joint"):
        r = rep[key]
        m = r["modes"]
        w("| %s | %.4f | %.4f | %.4f | %.1f%% | %.2f | %.2f, %.2f |"
          % (labels[key], m["full"]["nll"], m["aux"]["nll"], m["predict"]["nll"],
             100 * r["gap_closed"], m["predict"]["first_token_agreement"],
             m["predict"]["ttft_ms_median"] / m["full"]["ttft_ms_median"],
             m["predict"]["ttft_flops"] / m["full"]["ttft_flops"]))
    w("\nGap closed = (aux NLL - predict NLL) / (aux NLL - full NLL): the share of the quality "
      "lost by answering with the auxiliary model alone that KV Prediction wins back, while the "
      "base model still produces every token.\n")


def log_timing(path):
    """(training seconds, steps, mean tok/s) from a train.log; gaps over 30 min are not counted."""
    secs, prev, steps, tok_rates = 0, None, 0, []
    with open(path) as f:
        for line in f:
            m = re.match(r"\[(\d\d):(\d\d):(\d\d)\] (.*)", line)
            if not m:
                continue
            t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
            if prev is not None:
                d = (t - prev) % 86400
                if d < 1800:
                    secs += d
            prev = t
            s = re.match(r"step (\d+)/\d+ .* (\d+) tok/s", m.group(4))
            if s:
                steps = int(s.group(1))
                tok_rates.append(int(s.group(2)))
    return secs, steps, tok_rates


def fmt_loss(x):
    return "%.3f (ppl %.1f)" % (x, math.exp(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--models", default="models/tiny")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = args.dir
    man = json.load(open(os.path.join(d, "corpus_manifest.json")))
    toks = json.load(open(os.path.join(d, "tokens.json")))
    summ = json.load(open(os.path.join(d, "export_summary.json")))
    ref = json.load(open(os.path.join(args.models, "reference", "generations.json")))
    tok = bpe.Tokenizer(os.path.join(d, "tokenizer.json"))

    L = []
    w = L.append
    w("# kvcast tiny default model pair (base + auxiliary)\n")
    w("Two small Llama-architecture language models sharing one tokenizer, trained from scratch by "
      "the recipe in `tools/train/` (`bash tools/train/run.sh`) on public-domain text shipped by "
      "Debian. They are kvcast's embedded default pair: `base/` is the model that answers, `aux/` "
      "the cheap auxiliary model whose KV cache feeds KV Prediction. They write Austen- and "
      "King-James-flavoured English; they know nothing else and are not useful assistants.\n")
    w("Every number and sample below was produced by the recipe (this file is generated by "
      "`tools/train/model_card.py`).\n")

    w("## Architecture\n")
    w("HF `LlamaForCausalLM` layout (RMSNorm eps 1e-5, RoPE theta 10000 without scaling, GQA, "
      "SwiGLU, no biases, tied input/output embeddings), vocabulary 4096, trained at context 512, "
      "`max_position_embeddings` 2048. Weights stored as BF16 safetensors.\n")
    w("| | base | aux |\n|---|---|---|")
    cb, ca = M.PRESETS["base"], M.PRESETS["aux"]
    rows = [("hidden size", "hidden_size"), ("layers", "num_hidden_layers"),
            ("query heads", "num_attention_heads"), ("KV heads", "num_key_value_heads"),
            ("head dim", "head_dim"), ("FFN (SwiGLU) size", "intermediate_size")]
    for label, k in rows:
        w("| %s | %d | %d |" % (label, getattr(cb, k), getattr(ca, k)))
    w("| parameters | %s | %s |" % (format(M.n_params(cb), ","), format(M.n_params(ca), ",")))
    for ctx in (128, 512):
        fb, fa = M.flops_per_token(cb, ctx), M.flops_per_token(ca, ctx)
        w("| forward FLOPs/token at context %d | %.2f M | %.2f M (%.3f x base) |" % (ctx, fb / 1e6, fa / 1e6, fa / fb))
    sizes = {p: os.path.getsize(os.path.join(args.models, p, "model.safetensors")) for p in ("base", "aux")}
    w("| model.safetensors | %.1f MB | %.1f MB |" % (sizes["base"] / 1e6, sizes["aux"] / 1e6))
    w("\nFLOPs count 2 per multiply-add over all weight matmuls (LM head included) plus QK^T and PV "
      "for one token attending to `context` positions.\n")

    w("## Tokenizer\n")
    w("Byte-level BPE, 4096 tokens (256 byte tokens, 3839 merges, `<|endoftext|>` = id %d used as "
      "both BOS and EOS; `add_bos_token` true). Pre-tokenizer: GPT-2's regex as a `Split` followed by "
      "`ByteLevel` (use_regex false). Trained by `tools/train/bpe.py` on the training split only; "
      "tokenizers.js (`@huggingface/tokenizers`) reproduces the trainer's ids exactly "
      "(`tools/train/verify_tokenizer.py`).\n" % toks["eot_id"])

    w("## Data and held-out split\n")
    w("Only two sources, both from Debian packages:\n")
    w("- Jane Austen's six novels, from `r-cran-janeaustenr` (Project Gutenberg texts packaged for R). "
      "The novels (1811-1818) are in the public domain.")
    w("- The King James Bible, from `bible-kjv-text` (read with `bible` from `bible-kjv`). The KJV "
      "text (1611) is in the public domain (Debian's copyright file: 'The copyright for the King "
      "James Version text of the Bible is expired').\n")
    w("**Held out entirely** (never used for tokenizer training, model training or calibration): the "
      "novel *Persuasion* and the books of *Ruth*, *Esther* and *Revelation*. They are the evaluation "
      "set.\n")
    tr, ev = toks["splits"]["train"], toks["splits"]["eval"]
    w("| split | documents | bytes | tokens | bytes/token |\n|---|---|---|---|---|")
    w("| train | 5 novels + 63 books | %s | %s | %.2f |" % (format(tr["bytes"], ","), format(tr["tokens"], ","), tr["bytes"] / tr["tokens"]))
    w("| held-out | Persuasion, Ruth, Esther, Revelation | %s | %s | %.2f |\n"
      % (format(ev["bytes"], ","), format(ev["tokens"], ","), ev["bytes"] / ev["tokens"]))
    w("Normalisation: Austen's hard-wrapped lines are joined into one line per paragraph; KJV chapters "
      "are a `Book N` line followed by one verse per line (verse numbers dropped). Documents are "
      "separated by `<|endoftext|>`. Corpus SHA-256: train `%s`, held-out `%s`.\n"
      % (man["train"]["sha256"][:16], man["eval"]["sha256"][:16]))

    w("## Training\n")
    w("AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay to 10% "
      "of the peak LR, gradient clipping 1.0, f32, batch 8 x 512 tokens, each sample `<|endoftext|>` "
      "+ 511 tokens from a random offset, fixed seeds, one thread per model by default, OpenBLAS "
      "(`OPENBLAS_CORETYPE=SkylakeX`). The two models trained concurrently on a 2-core machine "
      "shared with other work, so wall times include contention.\n")
    w("| | base | aux |\n|---|---|---|")
    info = {}
    for p in ("base", "aux"):
        secs, steps, rates = log_timing(os.path.join(d, p, "train.log"))
        a = summ[p]["final"]["args"]
        info[p] = (secs, steps, a, rates)
    w("| steps | %d | %d |" % (info["base"][1], info["aux"][1]))
    w("| peak LR | %g | %g |" % (info["base"][2]["lr"], info["aux"][2]["lr"]))
    w("| tokens seen | %.2f M | %.2f M |" % tuple(info[p][1] * info[p][2]["batch"] * info[p][2]["ctx"] / 1e6 for p in ("base", "aux")))
    w("| epochs over the training split | %.2f | %.2f |" % tuple(info[p][1] * info[p][2]["batch"] * info[p][2]["ctx"] / tr["tokens"] for p in ("base", "aux")))
    w("| training wall time | %.0f min | %.0f min |" % (info["base"][0] / 60, info["aux"][0] / 60))
    w("| mean throughput | %.0f tokens/s | %.0f tokens/s |" % tuple(
        info[p][1] * info[p][2]["batch"] * info[p][2]["ctx"] / max(1, info[p][0]) for p in ("base", "aux")))
    w("| threads (last invocation) | %d | %d |" % (info["base"][2]["threads"], info["aux"][2]["threads"]))
    w("| resumed from checkpoint | %d x | %d x |" % tuple(
        sum("] resumed " in l for l in open(os.path.join(d, p, "train.log"))) for p in ("base", "aux")))
    w("| best logged throughput | %d tokens/s | %d tokens/s |\n" % (max(info["base"][3]), max(info["aux"][3])))
    w("A run resumed from its checkpoint continues with the same batches; resuming with a different "
      "thread count changes only floating-point rounding.\n")

    w("## Held-out loss\n")
    w("Mean next-token cross-entropy (nats/token) over the whole held-out split, cut per document "
      "into non-overlapping windows of `<|endoftext|>` + 511 tokens (512 predictions each, the first "
      "one after BOS included). The prompt-128/continuation-32 row scores only the 32 tokens that "
      "follow 128 tokens of context, in consecutive 160-token windows of Persuasion, as the "
      "KV-prediction evaluation does.\n")
    w("| | base | aux |\n|---|---|---|")
    for key, label in (("all", "all held-out text"), ("Persuasion", "Persuasion"), ("Ruth", "Ruth"),
                       ("Esther", "Esther"), ("Revelation", "Revelation")):
        w("| %s (BF16 export) | %s | %s |" % (label, fmt_loss(summ["base"]["exported_bf16_heldout"][key]),
                                             fmt_loss(summ["aux"]["exported_bf16_heldout"][key])))
    w("| Persuasion, prompt 128 -> continuation 32 (BF16 export) | %s | %s |"
      % (fmt_loss(summ["base"]["persuasion_p128_c32_nll"]), fmt_loss(summ["aux"]["persuasion_p128_c32_nll"])))
    w("| all held-out, f32 checkpoint | %s | %s |" % (fmt_loss(summ["base"]["final"]["heldout"]["all"]),
                                                   fmt_loss(summ["aux"]["final"]["heldout"]["all"])))
    w("| training text (64 random windows), f32 | %s | %s |\n" % (fmt_loss(summ["base"]["final"]["train"]),
                                                               fmt_loss(summ["aux"]["final"]["train"])))
    w("The aux column is the auxiliary model as first trained. The shipped `aux/` was then trained "
      "jointly with the KV predictor against the frozen base (next table), which also lowered its own "
      "loss. The base was trained in two cosine cycles (steps 0-1100, then resumed to step 2400; see "
      "`tools/train/run.sh`).\n")
    kvp_card(w, d)

    w("## Sample generations\n")
    w("Greedy (32 tokens, f32 compute on the BF16 weights; pinned in `reference/generations.json`):\n")
    for p in ("base", "aux"):
        for c in ref["models"][p][:3]:
            w("- **%s** `%s` -> `%s`" % (p, c["prompt"].replace("`", "'"), c["greedy_text"].replace("\n", "\\n").replace("`", "'")))
    w("\nSampled (temperature 0.8, top-k 40, torch seed 7, 60 tokens, base model):\n")
    net = E.load_exported(os.path.join(args.models, "base"))
    g = torch.Generator().manual_seed(7)
    for p in SAMPLE_PROMPTS:
        out = tok.decode(net.sample(tok.encode(p, add_bos=True), 60, generator=g))
        w("> **%s**%s\n" % (p.replace("\n", " "), out.replace("\n", " / ")))
    w(CHAT_SECTION)
    w("## Files\n")
    w("- `base/`, `aux/`: `config.json`, `model.safetensors` (BF16), `tokenizer.json`, "
      "`tokenizer_config.json`, `generation_config.json` (HF layout), and `chat_template.jinja` "
      "(hand-written, not produced by the recipe; see Chat template above).")
    w("- `reference/generations.json`: prompt ids, greedy ids, top-10 last-position logits and "
      "prompt NLL from the PyTorch recipe (f32), for the engine's golden tests.")
    w("- `heldout.ids`: the held-out token ids the KV-prediction table above was measured on: the "
      "64 windows of *Persuasion* (159 ids each, no BOS, one window per line, `#` comment lines "
      "first; the header `# kvcast-windows prompt_len=128 cont_len=32 samples=64` gives "
      "`kvcast eval` its defaults). `kvcast eval` with no `--data` reads it, so "
      "`kvcast eval --threads 1` reproduces the shipped row without the training work dir. "
      "Written by `tools/train/heldout_ids.py` from the corpus (`corpus.py`) and the shipped "
      "tokenizer.\n")
    w("Rebuild: see `tools/train/README.md`.")
    with open(os.path.join(args.models, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    print("model_card: wrote %s" % os.path.join(args.models, "README.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
