#!/usr/bin/python3
"""Closed-form (ridge) calibration of a KV predictor: the maths of `kvcast calibrate`
(engine/kvp_calibrate.c) in PyTorch, on the TRAINING split only.

Data: --tokens N tokens of <dir>/train.bin, taken as ceil(N / (ctx-1)) stretches of ctx-1 tokens
at evenly spaced offsets (so both Austen and the KJV are covered), concatenated into one stream.
Like the C command, the stream is cut into windows of [BOS] + ctx-1 tokens (the last one may be
shorter). --write-ids FILE writes the stream as a token-id file, so that
`kvcast calibrate --ids --data FILE --tokens N --ctx L --ridge R` sees exactly the same windows.

Per window both models run over the tokens (positions 0..n-1) and hand back their pre-RoPE K and
V per layer (merged heads). With X1 = [X, 1] (aux rows plus a bias column, d = Na + 1):
  G[a] += X1^T X1  per aux layer a in the map (keys and values separately),
  R[l] += X1^T Y   per base layer l (Y: the base layer's K or V rows),
accumulated in f64. Solve (G + ridge * s * diag(1, .., 1, 0)) W = R by Cholesky, with s the mean
of G's feature diagonal (scale-free ridge, bias not shrunk); weight = W[:Na]^T ([Nb, Na]),
bias = W[Na]. The C code forms each window's products in f32 (oneDNN) and sums them in f64; here
they are formed in f64, which is why the two fits agree to rounding, not bit for bit.

--compare C.safetensors prints the largest absolute difference against another predictor (e.g.
the one `kvcast calibrate` wrote from the --write-ids file); --kvcast BIN runs that C command
itself on the same windows (ids file next to --out) and compares. Either way the exit status is 1
when max |W_py - W_c| / max |W_py| over all tensors exceeds --tolerance (default 1e-3; measured:
~1.3e-4 on the tiny pair with 65536 tokens; the gap is f32-vs-f64 rounding of the per-window
products and of the two forward passes, amplified by the conditioning of X^T X).
--diff A B just compares two predictor files.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvp_common as K  # noqa: E402  (sets up the OpenBLAS environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def calib_stream(train_dir, n_tokens, ctx):
    """The calibration token stream: evenly spaced stretches of ctx-1 training tokens."""
    data = np.fromfile(os.path.join(train_dir, "train.bin"), dtype=np.uint16)
    per = ctx - 1
    n_win = max(1, -(-n_tokens // per))
    span = len(data) - per
    offs = [i * span // (n_win - 1) if n_win > 1 else 0 for i in range(n_win)]
    stream = np.concatenate([data[o:o + per] for o in offs]).astype(np.int64)
    return stream[:n_tokens]


def windows(stream, ctx, bos):
    per = ctx - (1 if bos is not None else 0)
    out = []
    for i in range(0, len(stream), per):
        seg = stream[i:i + per]
        w = np.concatenate([[bos], seg]) if bos is not None else seg
        if len(w) >= 2:
            out.append(w)
    return out


class RidgeAccumulator:
    def __init__(self, shape, layer_map):
        self.lb, self.la, self.nb, self.na = shape
        self.map = list(layer_map)
        d = self.na + 1
        used = sorted(set(self.map))
        self.g = {(w, a): torch.zeros(d, d, dtype=torch.float64) for w in "kv" for a in used}
        self.r = {(w, l): torch.zeros(d, self.nb, dtype=torch.float64) for w in "kv" for l in range(self.lb)}
        self.rows = 0

    def add(self, aux_kv, base_kv):
        """aux_kv / base_kv: [(k, v)] per layer, [rows, N] f32 (any leading dims are flattened)."""
        rows = None
        for a in sorted(set(self.map)):
            for wi, w in enumerate("kv"):
                x = aux_kv[a][wi].reshape(-1, self.na).double()
                rows = x.shape[0]
                x1 = torch.cat([x, torch.ones(rows, 1, dtype=torch.float64)], dim=1)
                self.g[(w, a)] += x1.t() @ x1
                for l in range(self.lb):
                    if self.map[l] == a:
                        y = base_kv[l][wi].reshape(-1, self.nb).double()
                        self.r[(w, l)] += x1.t() @ y
        self.rows += rows

    def solve(self, ridge):
        if self.rows < 1:
            raise SystemExit("ridge: no data")
        na = self.na
        pred = K.Predictor(self.lb, self.la, self.nb, self.na, self.map)
        t = {}
        for (w, a), g in self.g.items():
            s = torch.diagonal(g)[:na].mean()
            A = g.clone()
            A[range(na), range(na)] += ridge * s
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise SystemExit("ridge: the %s system of aux layer %d is not positive definite after %d rows; "
                                 "add data or raise --ridge" % ("key" if w == "k" else "value", a, self.rows))
            for l in range(self.lb):
                if self.map[l] != a:
                    continue
                W = torch.cholesky_solve(self.r[(w, l)], L)  # [d, Nb]
                t["%s.%d.weight" % (w, l)] = W[:na].t().float().contiguous()
                t["%s.%d.bias" % (w, l)] = W[na].float().contiguous()
        pred.set_tensors(t)
        return pred


@torch.no_grad()
def fit(base, aux, stream, ctx, layer_map, ridge, bos, batch=8, log=print):
    K.check_pair(base, aux, K.Predictor.for_pair(base, aux, layer_map))
    shape = (base.cfg.num_hidden_layers, aux.cfg.num_hidden_layers, K.kv_dim(base.cfg), K.kv_dim(aux.cfg))
    acc = RidgeAccumulator(shape, layer_map)
    wins = windows(stream, ctx, bos)
    t0 = time.time()
    done = 0
    i = 0
    while i < len(wins):
        j = i
        while j < len(wins) and j - i < batch and len(wins[j]) == len(wins[i]):
            j += 1
        ids = torch.from_numpy(np.stack(wins[i:j]))
        _, bkv = K.capture_kv(base, ids)
        _, akv = K.capture_kv(aux, ids)
        acc.add(akv, bkv)
        done += ids.numel()
        i = j
        el = time.time() - t0
        log("ridge: %d/%d windows, %d rows, %.0f tok/s" % (i, len(wins), acc.rows, done / max(el, 1e-9)))
    t1 = time.time()
    pred = acc.solve(ridge)
    log("ridge: %d rows, forward+accumulate %.1f s, solve %.2f s" % (acc.rows, t1 - t0, time.time() - t1))
    return pred


def compare(a, b):
    """{tensor: max abs diff} and the overall max abs diff / max abs value of a."""
    ta, tb = a.tensors(), b.tensors()
    diffs = {n: float((ta[n] - tb[n]).abs().max()) for n in sorted(ta)}
    scale = max(float(t.abs().max()) for t in ta.values())
    return diffs, max(diffs.values()), scale


def check(a_path, b_path, tol):
    diffs, mx, scale = compare(K.load_predictor(a_path), K.load_predictor(b_path))
    worst = max(diffs, key=diffs.get)
    ok = mx / scale <= tol
    print("compare %s vs %s: max abs diff %.3e (%s), max |w| %.3e, relative %.3e: %s (tolerance %g)"
          % (a_path, b_path, mx, worst, scale, mx / scale, "OK" if ok else "FAIL", tol))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diff", nargs=2, metavar=("A", "B"), help="only compare two predictor files")
    ap.add_argument("--base", help="base model dir (HF layout) or ckpt.pt")
    ap.add_argument("--aux", help="aux model dir (HF layout) or ckpt.pt")
    ap.add_argument("--dir", default=K.train_dir_default(), help="training work dir (train.bin, tokens.json)")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--layer-map", default="0,0,1,1,2,2,3,3")
    ap.add_argument("--ids", default=None, help="read the calibration stream from this id file instead")
    ap.add_argument("--write-ids", default=None, help="write the calibration stream here (for kvcast --ids)")
    ap.add_argument("--out")
    ap.add_argument("--compare", default=None, help="another predictor.safetensors to diff against")
    ap.add_argument("--kvcast", default=None, help="run BIN calibrate on the same windows and compare")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    K.setup_torch(args.threads)
    if args.diff:
        return 0 if check(args.diff[0], args.diff[1], args.tolerance) else 1
    if not (args.base and args.aux and args.out):
        ap.error("--base, --aux and --out are required")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.kvcast and not args.write_ids:
        args.write_ids = os.path.splitext(args.out)[0] + ".calib.ids"
    base, aux = K.load_model(args.base), K.load_model(args.aux)
    lmap = K.parse_layer_map(args.layer_map, base.cfg.num_hidden_layers, aux.cfg.num_hidden_layers)
    eot = K.load_tokens_meta(args.dir)["eot_id"]
    stream = K.read_ids(args.ids)[:args.tokens] if args.ids else calib_stream(args.dir, args.tokens, args.ctx)
    if args.write_ids:
        K.write_ids(args.write_ids, stream)
    print("ridge: %d calibration tokens, windows of %d, ridge %g, layer map %s" % (len(stream), args.ctx, args.ridge, lmap))
    pred = fit(base, aux, stream, args.ctx, lmap, args.ridge, eot)
    pred.save(args.out)
    print("ridge: wrote %s" % args.out)
    ok = True
    if args.kvcast:
        if not (os.path.isdir(args.base) and os.path.isdir(args.aux)):
            raise SystemExit("--kvcast needs model directories (HF layout) for --base and --aux")
        c_out = os.path.splitext(args.out)[0] + ".kvcast.safetensors"
        cmd = [args.kvcast, "calibrate", "--base", args.base, "--aux", args.aux, "--ids", "--data",
               args.write_ids, "--tokens", str(len(stream)), "--ctx", str(args.ctx), "--ridge", repr(args.ridge),
               "--layer-map", ",".join(str(a) for a in lmap), "--threads", str(args.threads), "--quiet",
               "--out", c_out]
        print("ridge: running %s" % " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print("ridge: kvcast calibrate took %.1f s" % (time.time() - t0))
        ok = check(args.out, c_out, args.tolerance) and ok
    if args.compare:
        ok = check(args.out, args.compare, args.tolerance) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
