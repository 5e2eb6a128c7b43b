#!/usr/bin/python3
"""Trains the KV predictor the paper's way (Horton et al., arXiv 2410.08391; apple/corenet
kv_prediction.py and cross_entropy_for_kv_prediction.py): the base model is frozen; the auxiliary
model and the predictor are trained jointly, starting from the ridge predictor (kvp_ridge.py).

A training sample is [BOS] + T-1 tokens from a random offset of <dir>/train.bin (the training
split only), T = p + cont, with the split point p drawn per step from [--min-prefix, --max-prefix]:
  aux over the whole sample -> aux logits and pre-RoPE K/V per aux layer;
  predictor on the aux K/V of positions < p -> predicted base K/V (pre-RoPE) for those positions;
  base (frozen, gradients flow through it) over positions p..T-1, attending to the predicted K/V
      (rotated with the base RoPE at their positions) for positions < p and to its own K/V from p
      on, causally: exactly kvcast's predict mode, whose prompt is t[0..p] (the base computes
      t[p] and the continuation itself);
  base (no grad) over the whole sample with its own K/V -> the true K/V of positions < p (and,
      for the log, the base's own cross-entropy on positions >= p: the ceiling).
  loss = w_base * CE(base over the predicted cache, positions >= p)
       + w_aux  * CE(aux, all positions)
       + w_kv   * sum over base layers of (mean |K_pred - K_true| + mean |V_pred - V_true|)
as in corenet (L1 per layer, summed over layers). AdamW, cosine schedule with warm-up, gradient
clipping; separate learning rates for the aux model and the predictor. Deterministic for a seed:
the batch of step s comes from an RNG seeded with (seed, s); a run resumed from <out>/ckpt.pt
continues exactly. Runs with OpenBLAS like train.py (kvp_common sets the environment).

Outputs in --out: predictor.safetensors (kvcast format, F32), aux/ (the fine-tuned auxiliary model
in HF layout, BF16, written by export.py's writer, with the tokenizer files), predictor-ridge.
safetensors (the initial fit, when computed here), train.log, summary.json (held-out NLL of full /
aux / predict and the gap closed, for the ridge start and for the result, measured like
`kvcast eval` on Persuasion, prompt 128, continuation 32 - with the BF16 aux as shipped),
predictor-ridge-tuned-aux.safetensors (a closing ridge fit against the fine-tuned aux: what
`kvcast calibrate` alone gives for the shipped pair), ckpt.pt (resume state).
--install models/tiny copies predictor.safetensors and aux/ into the models folder and
regenerates its reference/generations.json (the aux changed). --freeze-aux trains the predictor
alone. --max-minutes stops early (then the schedule is cut short and the run is not reproducible
step for step; use --steps for that).
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvp_common as K  # noqa: E402  (sets up the OpenBLAS environment first)
import kvp_eval as E  # noqa: E402
import kvp_ridge as R  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import export as X  # noqa: E402


def lr_scale(step, args):
    if step < args.warmup:
        return (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr_frac + 0.5 * (1 - args.min_lr_frac) * (1 + math.cos(math.pi * min(1.0, p)))


def batch_at(train, step, args, eot):
    rng = np.random.default_rng([args.seed, step])
    p = int(rng.integers(args.min_prefix, args.max_prefix + 1))
    t = p + args.cont
    offs = rng.integers(0, len(train) - t, size=args.batch)
    y = np.stack([train[o:o + t] for o in offs]).astype(np.int64)
    x = np.concatenate([np.full((args.batch, 1), eot, dtype=np.int64), y[:, :-1]], axis=1)
    return p, torch.from_numpy(x), torch.from_numpy(y)


def step_losses(base, aux, pred, p, x, y):
    logits_a, akv = K.capture_kv(aux, x)
    aux_ce = F.cross_entropy(logits_a.reshape(-1, logits_a.shape[-1]), y.reshape(-1))
    pk, pv = pred([(k[:, :p], v[:, :p]) for k, v in akv])
    with torch.no_grad():
        logits_full, bkv = K.capture_kv(base, x)
        full_ce = F.cross_entropy(logits_full[:, p:].reshape(-1, logits_full.shape[-1]), y[:, p:].reshape(-1))
    kv_l1 = sum(F.l1_loss(pk[l], bkv[l][0][:, :p]) + F.l1_loss(pv[l], bkv[l][1][:, :p]) for l in range(len(pk)))
    logits_b = K.base_forward_prefix(base, x[:, p:], p, pk, pv)
    base_ce = F.cross_entropy(logits_b.reshape(-1, logits_b.shape[-1]), y[:, p:].reshape(-1))
    return base_ce, aux_ce, kv_l1, full_ce


def export_aux(aux, step, tokdir, outdir, eot):
    """The fine-tuned aux in HF layout (BF16) through export.py's writer."""
    os.makedirs(outdir, exist_ok=True)
    tmp = os.path.join(outdir, "kvp-aux-ckpt.pt.tmp")
    torch.save({"model": aux.state_dict(), "config": aux.cfg.to_dict(), "step": step}, tmp)
    try:
        X.export_one("aux", tmp, tokdir, outdir, eot)
    finally:
        os.remove(tmp)


def install(args, eot, log):
    """Copies the trained predictor and the fine-tuned aux into the models folder and regenerates
    <models>/reference/generations.json (export.py's reference(), which covers the aux too)."""
    import shutil
    import bpe
    dst_aux = os.path.join(args.install, "aux")
    for name in sorted(os.listdir(os.path.join(args.out, "aux"))):
        shutil.copyfile(os.path.join(args.out, "aux", name), os.path.join(dst_aux, name))
    shutil.copyfile(os.path.join(args.out, "predictor.safetensors"), os.path.join(args.install, "predictor.safetensors"))
    X.reference(args.install, bpe.Tokenizer(os.path.join(args.install, "base", "tokenizer.json")))
    log("installed predictor.safetensors and aux/ into %s; regenerated reference/generations.json" % args.install)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="base model dir (HF layout), frozen")
    ap.add_argument("--aux", required=True, help="aux model dir (HF layout), fine-tuned")
    ap.add_argument("--dir", default=K.train_dir_default(), help="training work dir (train.bin, eval.bin, tokens.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default=None, help="initial predictor (default: fit ridge here)")
    ap.add_argument("--layer-map", default="0,0,1,1,2,2,3,3")
    ap.add_argument("--ridge-tokens", type=int, default=65536)
    ap.add_argument("--ridge-ctx", type=int, default=512)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--max-minutes", type=float, default=0, help="stop early after this long (0: never)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-prefix", type=int, default=16)
    ap.add_argument("--max-prefix", type=int, default=224)
    ap.add_argument("--cont", type=int, default=48, help="tokens after the split scored by the base")
    ap.add_argument("--pred-lr", type=float, default=1e-3)
    ap.add_argument("--aux-lr", type=float, default=3e-4)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--w-base", type=float, default=1.0)
    ap.add_argument("--w-aux", type=float, default=1.0)
    ap.add_argument("--w-kv", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--freeze-aux", action="store_true", help="train the predictor only")
    ap.add_argument("--no-refit-ridge", dest="refit_ridge", action="store_false",
                    help="skip the closing ridge fit on the fine-tuned aux")
    ap.add_argument("--install", default=None, metavar="MODELS_DIR",
                    help="copy predictor.safetensors and aux/ into MODELS_DIR (e.g. models/tiny) and "
                         "regenerate MODELS_DIR/reference/generations.json")
    ap.add_argument("--eval-greedy", action="store_true", help="also greedy agreement in the final eval (slow)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = K.Logger(os.path.join(args.out, "train.log"))
    libs = K.setup_torch(args.threads)
    log("kvp_train: args %s; blas %s OPENBLAS_CORETYPE=%s" % (vars(args), libs, os.environ.get("OPENBLAS_CORETYPE")))
    torch.manual_seed(args.seed)
    meta = K.load_tokens_meta(args.dir)
    eot = meta["eot_id"]
    train = np.fromfile(os.path.join(args.dir, "train.bin"), dtype=np.uint16)
    base, aux = K.load_model(args.base), K.load_model(args.aux)
    for q in base.parameters():
        q.requires_grad_(False)
    lmap = K.parse_layer_map(args.layer_map, base.cfg.num_hidden_layers, aux.cfg.num_hidden_layers)
    tokdir = args.aux if os.path.isdir(args.aux) else args.dir

    # Held-out evaluation data (Persuasion, prompt 128, continuation 32): measured, never trained on.
    eargs = argparse.Namespace(dir=args.dir, docs="Persuasion", data=None, ids=None, prompt_len=128,
                               cont_len=32, samples=args.eval_samples)
    etoks = E.eval_data(eargs, None)

    summary = {"args": vars(args)}
    if args.init:
        pred = K.load_predictor(args.init)
        log("init predictor %s" % args.init)
    else:
        t0 = time.time()
        stream = R.calib_stream(args.dir, args.ridge_tokens, args.ridge_ctx)
        K.write_ids(os.path.join(args.out, "calib.ids"), stream)
        pred = R.fit(base, aux, stream, args.ridge_ctx, lmap, args.ridge, eot, log=lambda m: None)
        path = os.path.join(args.out, "predictor-ridge.safetensors")
        pred.save(path)
        log("ridge fit (%d tokens, ctx %d, ridge %g) -> %s in %.1f s"
            % (len(stream), args.ridge_ctx, args.ridge, path, time.time() - t0))
    K.check_pair(base, aux, pred)
    if pred.layer_map != lmap:
        log("note: using the init predictor's layer map %s" % pred.layer_map)
    r0 = E.run_eval(base, aux, pred, etoks, eargs, eot, greedy=False)
    summary["ridge"] = r0
    log("held-out (ridge start): full %.4f aux %.4f predict %.4f gap closed %.1f%%"
        % (r0["modes"]["full"]["nll"], r0["modes"]["aux"]["nll"], r0["modes"]["predict"]["nll"], 100 * r0["gap_closed"]))

    aux.train()
    pred.train()
    groups = [{"params": list(pred.parameters()), "lr": args.pred_lr, "base_lr": args.pred_lr}]
    if args.freeze_aux:
        for q in aux.parameters():
            q.requires_grad_(False)
    else:
        groups.append({"params": list(aux.parameters()), "lr": args.aux_lr, "base_lr": args.aux_lr})
    opt = torch.optim.AdamW(groups,
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    step = 0
    ckpt = os.path.join(args.out, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt)
        aux.load_state_dict(st["aux"])
        pred.load_state_dict(st["pred"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log("resumed %s at step %d" % (ckpt, step))

    def save():
        torch.save({"aux": aux.state_dict(), "pred": pred.state_dict(), "opt": opt.state_dict(), "step": step},
                   ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    t_start = time.time()
    t_last, tok = time.time(), 0
    acc = np.zeros(4)
    nacc = 0
    while step < args.steps:
        if args.max_minutes and time.time() - t_start > 60 * args.max_minutes:
            log("time limit: stopping at step %d" % step)
            break
        p, x, y = batch_at(train, step, args, eot)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_scale(step, args)
        base_ce, aux_ce, kv_l1, full_ce = step_losses(base, aux, pred, p, x, y)
        loss = args.w_base * base_ce + args.w_aux * aux_ce + args.w_kv * kv_l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(pred.parameters()) + list(aux.parameters()), args.clip)
        opt.step()
        step += 1
        acc += [base_ce.item(), full_ce.item(), aux_ce.item(), kv_l1.item()]
        nacc += 1
        tok += x.numel()
        if step % args.log_every == 0 or step == args.steps:
            a = acc / nacc
            dt = time.time() - t_last
            log("step %d/%d base_ce(pred) %.4f base_ce(own) %.4f excess %.4f aux_ce %.4f kv_l1 %.3f "
                "gnorm %.2f lr x%.2f %.0f tok/s" % (step, args.steps, a[0], a[1], a[0] - a[1], a[2], a[3],
                                                   float(gn), lr_scale(step - 1, args), tok / dt))
            acc[:] = 0
            nacc = 0
            t_last, tok = time.time(), 0
        if step % args.ckpt_every == 0:
            save()
    save()
    train_s = time.time() - t_start
    aux.eval()
    pred.eval()
    pred.save(os.path.join(args.out, "predictor.safetensors"))
    export_aux(aux, step, tokdir, os.path.join(args.out, "aux"), eot)
    # Measure what ships: the BF16 aux as written, with the F32 predictor as written.
    aux_bf16 = K.load_model(os.path.join(args.out, "aux"))
    pred_f = K.load_predictor(os.path.join(args.out, "predictor.safetensors"))
    r1 = E.run_eval(base, aux_bf16, pred_f, etoks, eargs, eot, greedy=args.eval_greedy)
    summary["trained"] = r1
    summary["steps"] = step
    summary["train_seconds"] = train_s
    log("held-out (trained, %d steps, %.1f min): full %.4f aux %.4f predict %.4f gap closed %.1f%%"
        % (step, train_s / 60, r1["modes"]["full"]["nll"], r1["modes"]["aux"]["nll"], r1["modes"]["predict"]["nll"],
           100 * r1["gap_closed"]))
    if args.refit_ridge:
        # What `kvcast calibrate` alone gives for the pair as shipped (base + fine-tuned aux).
        t0 = time.time()
        stream = R.calib_stream(args.dir, args.ridge_tokens, args.ridge_ctx)
        rp = R.fit(base, aux_bf16, stream, args.ridge_ctx, pred_f.layer_map, args.ridge, eot, log=lambda m: None)
        rp.save(os.path.join(args.out, "predictor-ridge-tuned-aux.safetensors"))
        r2 = E.run_eval(base, aux_bf16, rp, etoks, eargs, eot, greedy=False)
        summary["ridge_tuned_aux"] = r2
        log("held-out (ridge refit on the fine-tuned aux, %.0f s): predict %.4f gap closed %.1f%%"
            % (time.time() - t0, r2["modes"]["predict"]["nll"], 100 * r2["gap_closed"]))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    log("wrote %s/{predictor.safetensors,aux/,summary.json}" % args.out)
    if args.install:
        install(args, eot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
