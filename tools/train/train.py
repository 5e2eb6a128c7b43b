#!/usr/bin/python3
"""Trains one of the kvcast default models (preset base or aux) on <dir>/train.bin.

Deterministic for a given seed and thread count: weights are initialised from --seed, and the
batch and the dropout masks of step s are drawn from RNGs seeded with (seed, s), so a run resumed
from its checkpoint continues exactly as an uninterrupted one would. Each training sample is
<|endoftext|> (the BOS) followed by ctx-1 tokens taken from a random offset of the token stream
(documents are separated by <|endoftext|> in the stream); the loss covers all ctx next-token
predictions. --dropout regularises the multi-epoch run; --bf16 runs the matmuls in bf16 autocast
(oneDNN's AMX kernels, ~1.5-2x faster here) while weights, optimiser state and loss stay f32.

Held-out loss: the evaluation split (Persuasion, Ruth, Esther, Revelation), cut per document into
non-overlapping windows scored the same way ([BOS] + 511 tokens -> 512 predictions). Periodic
evaluations use every 4th window; the final one uses all of them and is written to
<out>/final.json. Logs go to stdout and <out>/train.log; samples are printed every --sample-every
steps. The checkpoint <out>/ckpt.pt (model, optimiser, step) is written every --ckpt-every steps
and at the end; an existing checkpoint is resumed.

Run with OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=1 (see run.sh, blascheck.py).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import model as M  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged, that",
    "In the beginning God created",
    "Emma was",
    "And the LORD said unto Moses,",
]


def eval_windows(data, meta, ctx, eot):
    """[(source, doc name, x, y)] covering every eval document in non-overlapping windows."""
    wins = []
    for name, source, start, end in meta["splits"]["eval"]["documents"]:
        toks = data[start:end]
        for i in range(0, len(toks), ctx):
            c = toks[i:i + ctx]
            if len(c) < 16:
                continue
            x = np.concatenate([[eot], c[:-1]]).astype(np.int64)
            wins.append((source, name, x, c.astype(np.int64)))
    return wins


@torch.no_grad()
def evaluate(net, wins, batch=8):
    net.eval()
    tot = {}
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        groups = {}
        for w in chunk:
            groups.setdefault(len(w[2]), []).append(w)
        for _, ws in groups.items():
            x = torch.from_numpy(np.stack([w[2] for w in ws]))
            y = torch.from_numpy(np.stack([w[3] for w in ws]))
            logits = net(x)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            nll = nll.view(len(ws), -1).sum(1)
            for w, s in zip(ws, nll.tolist()):
                for key in ("all", w[0], w[1]):
                    a = tot.setdefault(key, [0.0, 0])
                    a[0] += s
                    a[1] += len(w[3])
    net.train()
    return {k: v[0] / v[1] for k, v in tot.items()}


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(M.PRESETS), required=True)
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--out", default=None, help="default <dir>/<preset>")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="attention and residual dropout")
    ap.add_argument("--austen-share", type=float, default=0.0,
                    help="draw this share of samples from Austen's novels (0: uniform over the stream)")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast for the matmuls (f32 weights, optimiser and loss)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="save the checkpoint and exit at this step (resume later, e.g. with more threads)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--sample-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=int, default=50)
    args = ap.parse_args()
    out = args.out or os.path.join(args.dir, args.preset)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(args.threads)
    logf = open(os.path.join(out, "train.log"), "a")

    def log(msg):
        line = "[%s] %s" % (time.strftime("%H:%M:%S"), msg)
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    with open(os.path.join(args.dir, "tokens.json")) as f:
        meta = json.load(f)
    eot = meta["eot_id"]
    train = np.fromfile(os.path.join(args.dir, "train.bin"), dtype=np.uint16)
    evald = np.fromfile(os.path.join(args.dir, "eval.bin"), dtype=np.uint16)
    wins = eval_windows(evald, meta, args.ctx, eot)
    tok = bpe.Tokenizer(os.path.join(args.dir, "tokenizer.json"))

    cfg = M.PRESETS[args.preset]
    torch.manual_seed(args.seed)
    net = M.LlamaForCausalLM(cfg)
    net.set_dropout(args.dropout)
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in net.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    step = 0
    ckpt = os.path.join(out, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log("resumed %s at step %d" % (ckpt, step))
    else:
        log("start preset=%s params=%d flops/token(ctx %d)=%.2fM args=%s"
            % (args.preset, M.n_params(cfg), args.ctx, M.flops_per_token(cfg, args.ctx) / 1e6, vars(args)))
        log("train tokens %d, eval windows %d (%d tokens)"
            % (len(train), len(wins), sum(len(w[3]) for w in wins)))

    def save():
        tmp = ckpt + ".tmp"
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                    "config": cfg.to_dict(), "args": vars(args)}, tmp)
        os.replace(tmp, ckpt)

    def samples():
        g = torch.Generator().manual_seed(args.seed)
        net.eval()
        for p in PROMPTS[:2]:
            ids = tok.encode(p, add_bos=True)
            txt = tok.decode(net.greedy(ids, 40))
            log("sample greedy %r -> %r" % (p, txt))
        ids = tok.encode(PROMPTS[2], add_bos=True)
        log("sample t=0.8 %r -> %r" % (PROMPTS[2], tok.decode(net.sample(ids, 40, generator=g))))
        net.train()

    sub = wins[::4]
    n = len(train) - args.ctx
    if args.austen_share > 0:  # sample start offsets per source: Austen with this probability
        src = np.zeros(n, dtype=bool)
        for _, source, start, end in meta["splits"]["train"]["documents"]:
            if source == "austen":
                src[start:min(end, n)] = True
        austen_offs, other_offs = np.flatnonzero(src), np.flatnonzero(~src)
    t_last = time.time()
    tok_since = 0
    loss_acc, loss_n = 0.0, 0
    net.train()
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])
        if args.austen_share > 0:
            pick = rng.random(args.batch) < args.austen_share
            offs = np.where(pick, austen_offs[rng.integers(0, len(austen_offs), size=args.batch)],
                            other_offs[rng.integers(0, len(other_offs), size=args.batch)])
        else:
            offs = rng.integers(0, n, size=args.batch)
        y = np.stack([train[o:o + args.ctx] for o in offs]).astype(np.int64)
        x = np.concatenate([np.full((args.batch, 1), eot, dtype=np.int64), y[:, :-1]], axis=1)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        torch.manual_seed(args.seed * 1000003 + step)  # dropout masks: a resumed run draws the same
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = net(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        loss_acc += loss.item()
        loss_n += 1
        tok_since += x.numel()
        if step % args.log_every == 0 or step == args.steps:
            dt = time.time() - t_last
            log("step %d/%d loss %.4f lr %.2e gnorm %.2f %.0f tok/s"
                % (step, args.steps, loss_acc / loss_n, lr_at(step - 1, args), float(gnorm), tok_since / dt))
            loss_acc, loss_n, tok_since, t_last = 0.0, 0, 0, time.time()
        if step == args.stop_at:
            save()
            log("stopped at step %d (--stop-at); resume to continue" % step)
            return 0
        if step % args.ckpt_every == 0:
            save()
        if step % args.eval_every == 0 and step < args.steps:
            t0 = time.time()
            r = evaluate(net, sub)
            log("eval step %d held-out(1/4 subset) loss %.4f austen %.4f kjv %.4f (%.1fs)"
                % (step, r["all"], r["austen"], r["kjv"], time.time() - t0))
            t_last = time.time()
        if step % args.sample_every == 0 and step < args.steps:
            samples()
            t_last = time.time()
    save()
    t0 = time.time()
    r = evaluate(net, wins)
    log("final step %d held-out loss %.4f (ppl %.1f) persuasion %.4f ruth %.4f esther %.4f revelation %.4f (%.1fs)"
        % (step, r["all"], math.exp(r["all"]), r["Persuasion"], r["Ruth"], r["Esther"], r["Revelation"],
           time.time() - t0))
    ntr = min(len(wins), 64)
    rng = np.random.default_rng([args.seed, 999999])
    tw = []
    for o in rng.integers(0, n, size=ntr):
        c = train[o:o + args.ctx].astype(np.int64)
        tw.append(("train", "train", np.concatenate([[eot], c[:-1]]).astype(np.int64), c))
    rt = evaluate(net, tw)
    log("final train loss (64 random windows, eval mode) %.4f" % rt["all"])
    samples()
    with open(os.path.join(out, "final.json"), "w") as f:
        json.dump({"step": step, "heldout": r, "train": rt["all"], "config": cfg.to_dict(),
                   "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
