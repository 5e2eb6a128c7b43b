"""Self-check of the golden fixtures in tests/golden/ (see tests/golden/README.md).

For every case it
  1. checks the files' structure: safetensors header alignment and offsets, tensor names, shapes
     and dtypes, q/k/v bias present exactly when the config asks for it;
  2. reloads the model with llama_ref's reader and recomputes in float32 torch: prefill logits,
     k_pre/k_post/v, hidden states and the greedy continuation, printing the largest difference
     (maxdiff) against the stored float64-derived values;
  3. recomputes the whole model a second, independent way: numpy float64 with attention written as
     explicit loops over tokens, heads and keys, RoPE as explicit 2-D rotations of the pairs
     (i, i + D/2) with the rope-scaling formulas re-derived per frequency, and GQA as an explicit
     head index h // (H / Hkv).  It runs over prompt + greedy[:-1] so the decode positions are
     covered too.

    /usr/bin/python3 tools/reference/check_golden.py [--dir tests/golden] [case ...]
Exit status 0 when every difference is within tolerance.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref as ref  # noqa: E402

TOL_F32 = 1e-4  # float32 torch vs stored float64 results (logits are O(1..4))
TOL_NP = 1e-5  # numpy float64 loops vs stored float64 results rounded to float32


def check_file_structure(path):
    """Header length, 8-byte alignment and contiguous, in-bounds data offsets."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    assert (8 + n) % 8 == 0, f"{path}: data section not 8-byte aligned"
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    spans = sorted(h["data_offsets"] for h in header.values())
    end = 0
    for b, e in spans:
        assert b == end and e >= b, f"{path}: offsets not contiguous"
        end = e
    assert 8 + n + end == len(buf), f"{path}: data size mismatch"
    return {k: (h["dtype"], tuple(h["shape"])) for k, h in header.items()}


def expected_model_tensors(cfg):
    C, F, V, H, Hkv, D = cfg.C, cfg.F, cfg.V, cfg.H, cfg.Hkv, cfg.D
    t = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not cfg.tied:
        t["lm_head.weight"] = (V, C)
    for l in range(cfg.L):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                  p + "self_attn.q_proj.weight": (H * D, C),
                  p + "self_attn.k_proj.weight": (Hkv * D, C),
                  p + "self_attn.v_proj.weight": (Hkv * D, C),
                  p + "self_attn.o_proj.weight": (C, H * D), p + "mlp.gate_proj.weight": (F, C),
                  p + "mlp.up_proj.weight": (F, C), p + "mlp.down_proj.weight": (C, F)})
        if cfg.qkv_bias:
            for n, rows in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D)):
                t[p + f"self_attn.{n}_proj.bias"] = (rows,)
    return t


# ---------------------------------------------------------------------------------------------
# Independent numpy float64 implementation with explicit loops.

def np_inv_freq(cfg):
    """Per-frequency rope scaling, written from the formulas rather than vectorised."""
    rs = cfg.raw.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    out = []
    for i in range(cfg.D // 2):
        f = cfg.theta ** (-2.0 * i / cfg.D)
        if kind == "linear":
            f = f / rs["factor"]
        elif kind == "llama3":
            old, factor = rs["original_max_position_embeddings"], rs["factor"]
            wavelen = 2 * math.pi / f
            if wavelen < old / rs["high_freq_factor"]:
                pass  # high frequency: unchanged
            elif wavelen > old / rs["low_freq_factor"]:
                f = f / factor  # low frequency: interpolated by factor
            else:  # in between: blend of the two
                s = (old / wavelen - rs["low_freq_factor"]) / (
                    rs["high_freq_factor"] - rs["low_freq_factor"])
                f = (1 - s) * f / factor + s * f
        else:
            assert kind == "default", kind
        out.append(f)
    return out


def np_rope(vec, pos, inv_freq):
    """Rotates each pair (vec[i], vec[i + D/2]) by angle pos * inv_freq[i]."""
    half, out = len(vec) // 2, vec.copy()
    for i, f in enumerate(inv_freq):
        c, s = math.cos(pos * f), math.sin(pos * f)
        a, b = vec[i], vec[i + half]
        out[i], out[i + half] = a * c - b * s, a * s + b * c
    return out


def np_rmsnorm(x, w, eps):
    return np.stack([r / math.sqrt(float(np.dot(r, r)) / len(r) + eps) for r in x]) * w


def np_forward(cfg, w, tokens):
    """Returns (logits [T, V], k_pre, k_post, v as [L, T, Hkv*D], hidden [L+1, T, C])."""
    T, H, Hkv, D = len(tokens), cfg.H, cfg.Hkv, cfg.D
    group, inv_freq = H // Hkv, np_inv_freq(cfg)
    x = np.stack([w["model.embed_tokens.weight"][t] for t in tokens])
    ks_pre, ks_post, vs, hidden = [], [], [], [x]
    for l in range(cfg.L):
        p = f"model.layers.{l}.self_attn."
        lp = f"model.layers.{l}."
        h = np_rmsnorm(x, w[lp + "input_layernorm.weight"], cfg.eps)
        proj = {n: h @ w[p + f"{n}_proj.weight"].T + (w[p + f"{n}_proj.bias"] if cfg.qkv_bias
                                                         else 0.0) for n in "qkv"}
        q = np.zeros((T, H, D))
        k = np.zeros((T, Hkv, D))
        for t in range(T):
            for hh in range(H):
                q[t, hh] = np_rope(proj["q"][t, hh * D:(hh + 1) * D], t, inv_freq)
            for g in range(Hkv):
                k[t, g] = np_rope(proj["k"][t, g * D:(g + 1) * D], t, inv_freq)
        v = proj["v"].reshape(T, Hkv, D)
        att = np.zeros((T, H * D))
        for t in range(T):
            for hh in range(H):
                g = hh // group  # the kv head this query head reads
                scores = [float(np.dot(q[t, hh], k[s, g])) / math.sqrt(D) for s in range(t + 1)]
                m = max(scores)
                e = [math.exp(sc - m) for sc in scores]
                z = sum(e)
                att[t, hh * D:(hh + 1) * D] = sum(e[s] / z * v[s, g] for s in range(t + 1))
        x = x + att @ w[p + "o_proj.weight"].T
        h = np_rmsnorm(x, w[lp + "post_attention_layernorm.weight"], cfg.eps)
        gate = h @ w[lp + "mlp.gate_proj.weight"].T
        up = h @ w[lp + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[lp + "mlp.down_proj.weight"].T
        ks_pre.append(proj["k"])
        ks_post.append(k.reshape(T, Hkv * D))
        vs.append(proj["v"])
        hidden.append(x)
    x = np_rmsnorm(x, w["model.norm.weight"], cfg.eps)
    head = w["model.embed_tokens.weight" if cfg.tied else "lm_head.weight"]
    return x @ head.T, np.stack(ks_pre), np.stack(ks_post), np.stack(vs), np.stack(hidden)


# ---------------------------------------------------------------------------------------------

def maxdiff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def check_case(d):
    name = os.path.basename(d)
    cfg, w32 = ref.load_model(d, torch.float32)
    model_hdr = check_file_structure(os.path.join(d, "model.safetensors"))
    expect = expected_model_tensors(cfg)
    assert set(model_hdr) == set(expect), f"{name}: tensor names {set(model_hdr) ^ set(expect)}"
    for k, (dt, shape) in model_hdr.items():
        assert shape == expect[k], f"{name}: {k} shape {shape} != {expect[k]}"
    ref_hdr = check_file_structure(os.path.join(d, "reference.safetensors"))
    r, meta = ref.load_safetensors(os.path.join(d, "reference.safetensors"))
    T, N, L, KV = len(r["tokens"]), len(r["greedy"]), cfg.L, cfg.Hkv * cfg.D
    want = {"tokens": ("I32", (T,)), "logits": ("F32", (T, cfg.V)),
            "k_pre": ("F32", (L, T, KV)), "k_post": ("F32", (L, T, KV)), "v": ("F32", (L, T, KV)),
            "hidden": ("F32", (L + 1, T, cfg.C)), "greedy": ("I32", (N,)),
            "greedy_logits": ("F32", (N, cfg.V))}
    assert ref_hdr == want, f"{name}: reference tensors {ref_hdr} != {want}"

    tokens, g_ref = [int(t) for t in r["tokens"]], [int(t) for t in r["greedy"]]
    diffs = {}
    # float32 torch recompute.
    tr = {}
    logits = ref.forward(cfg, w32, tokens, trace=tr)
    diffs["f32.logits"] = maxdiff(logits, r["logits"])
    for k in ("k_pre", "k_post", "v", "hidden"):
        diffs[f"f32.{k}"] = maxdiff(torch.stack(tr[k]), r[k])
    g32, gl32, margins = ref.greedy(cfg, w32, tokens, N)
    assert g32 == g_ref, f"{name}: float32 greedy {g32} != stored {g_ref}"
    diffs["f32.greedy_logits"] = maxdiff(gl32, r["greedy_logits"])
    # Independent numpy float64 loops over prompt + greedy[:-1].
    w64 = {k: v.numpy().astype(np.float64) for k, v in w32.items()}
    lg, k_pre, k_post, v, hidden = np_forward(cfg, w64, tokens + g_ref[:-1])
    assert [int(i) for i in np.argmax(lg[T - 1:], axis=1)] == g_ref, f"{name}: numpy greedy"
    diffs["np.logits"] = maxdiff(lg[:T], r["logits"])
    diffs["np.greedy_logits"] = maxdiff(lg[T - 1:], r["greedy_logits"])
    for k, a in (("k_pre", k_pre), ("k_post", k_post), ("v", v), ("hidden", hidden)):
        diffs[f"np.{k}"] = maxdiff(a[:, :T], r[k])

    ok = all(v <= (TOL_NP if k.startswith("np.") else TOL_F32) for k, v in diffs.items())
    print(f"{name}: {meta.get('description', '')}")
    print(f"  max|logit| prefill={np.abs(r['logits']).max():.3f} "
          f"greedy={np.abs(r['greedy_logits']).max():.3f}  "
          f"min greedy margin={min(margins):.4f}  greedy={g_ref}")
    print("  " + "  ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    print(f"  {'OK' if ok else 'FAIL'}")
    return ok


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(here, "..", "..", "tests", "golden"))
    ap.add_argument("cases", nargs="*", help="case names (default: every folder in --dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = os.path.normpath(args.dir)
    names = args.cases or sorted(n for n in os.listdir(root)
                                 if os.path.isfile(os.path.join(root, n, "config.json")))
    ok = all([check_case(os.path.join(root, n)) for n in names])
    print("all OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
