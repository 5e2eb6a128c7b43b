#!/usr/bin/python3
"""tools/bench/hf_to_gguf.py --type q8_0|q4_0|f32: the vectorised Q8_0/Q4_0 quantizers byte for
byte against a scalar port of ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (including
roundf's ties away from zero, the signed max of Q4_0 and its clamp at 15), the dequantized
round trip within the formats' error bounds, and a converted model read back by a reader of
this file's own: file type, every 2-D weight in the type (token_embd and output too), norms in
F32, the F16 fallback for rows not a multiple of 32, offsets and sizes. numpy only, no
llama.cpp, well under 10 s. Usage: test_gguf_quant.py (from the source root; ctest does)."""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.getcwd()
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
from hf_to_gguf import quantize_q4_0, quantize_q8_0, read_safetensors  # noqa: E402


# --- ggml-quants.c, one block at a time, in the C's float32 arithmetic ---------------------
def ref_q8_0(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        amax = np.float32(0)
        for v in blk:
            amax = max(amax, abs(v))
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        out += struct.pack("<e", float(d))
        for v in blk:
            x0 = float(v * inv)
            out += struct.pack("<b", int(math.copysign(math.floor(abs(x0) + 0.5), x0)))  # roundf
    return bytes(out)


def ref_q4_0(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        amax, mx = np.float32(0), np.float32(0)
        for v in blk:
            if amax < abs(v):
                amax, mx = abs(v), v
        d = mx / np.float32(-8)
        inv = np.float32(1) / d if d else np.float32(0)
        out += struct.pack("<e", float(d))
        for j in range(16):
            x0, x1 = blk[j] * inv, blk[16 + j] * inv
            q0 = min(15, int(x0 + np.float32(8.5)))  # (int8_t) truncates
            q1 = min(15, int(x1 + np.float32(8.5)))
            out.append(q0 | (q1 << 4))
    return bytes(out)


def deq(raw, gtype, n):
    """This test's own dequantizer (ggml's dequantize_row_*), not hf_to_gguf's."""
    if gtype == 0:
        return np.frombuffer(raw, "<f4", n).copy()
    if gtype == 1:
        return np.frombuffer(raw, "<f2", n).astype(np.float32)
    out = np.empty(n, np.float32)
    bs = 34 if gtype == 8 else 18
    for i in range(n // 32):
        blk = raw[i * bs:(i + 1) * bs]
        d = np.float32(struct.unpack("<e", blk[:2])[0])
        if gtype == 8:
            q = np.frombuffer(blk[2:], np.int8).astype(np.float32)
        else:
            b = np.frombuffer(blk[2:], np.uint8)
            q = np.concatenate([b & 15, b >> 4]).astype(np.float32) - 8
        out[i * 32:(i + 1) * 32] = d * q
    return out


def check_quantizers():
    rng = np.random.default_rng(3)
    blocks = [rng.standard_normal(32 * 40).astype(np.float32) * 0.02,
              np.zeros(32, np.float32),
              # Ties: d = 1 exactly, so x/d = k + 0.5 and roundf rounds away from zero
              # (numpy's round would give 0, 2, -2, ...).
              np.array([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] + [0] * 24, np.float32),
              # Q4_0: the signed max is negative (d > 0), then positive with -max present (the
              # x/d + 8.5 = 16.5 case clamps to 15); equal magnitudes: the first one wins.
              np.array([-8, 1, 2, 3, 8] + list(range(-7, 8)) + [0] * 12, np.float32),
              np.array([8, -8, 1, -1] + [0.5] * 28, np.float32),
              np.array([-4, 4] + [2.0] * 30, np.float32)]
    x = np.concatenate(blocks)
    assert quantize_q8_0(x).tobytes() == ref_q8_0(x), "Q8_0 differs from ggml's reference"
    assert quantize_q4_0(x).tobytes() == ref_q4_0(x), "Q4_0 differs from ggml's reference"
    assert ref_q8_0(np.array([127, 0.5, 1.5] + [0] * 29, np.float32))[2:5] == bytes([127, 1, 2])
    # Round trip: Q8_0 within half a step (plus the fp16 rounding of d: 127 * 2^-11 d), Q4_0
    # within one step (the clamp at 15 costs a whole step at -max).
    n = x.size
    for gtype, f, bound in ((8, quantize_q8_0, 0.57), (2, quantize_q4_0, 1.01)):
        y = deq(f(x).tobytes(), gtype, n)
        d = np.abs(np.frombuffer(f(x)[:, :2].tobytes(), "<f2").astype(np.float32))
        err = np.abs(y - x).reshape(-1, 32).max(axis=1)
        assert np.all(err <= bound * d + 1e-12), (gtype, (err / np.maximum(d, 1e-30)).max())
        print("  %s round trip: max error %.3f steps" % ("Q8_0" if gtype == 8 else "Q4_0",
                                                        (err / np.maximum(d, 1e-30)).max()))


def read_gguf(path):
    b = open(path, "rb").read()
    o = [0]

    def take(fmt):
        v = struct.unpack_from("<" + fmt, b, o[0])
        o[0] += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        n = take("Q")
        o[0] += n
        return b[o[0] - n:o[0]].decode()

    scal = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scal[t])

    assert take("I") == 0x46554747 and take("I") == 3
    nt, nkv = take("Q"), take("Q")
    kv = {}
    for _ in range(nkv):
        k = string()
        kv[k] = value(take("I"))
    infos = []
    for _ in range(nt):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    base = (o[0] + 31) // 32 * 32
    sizes = {0: 4, 1: 2, 8: 34 / 32, 2: 18 / 32}
    tensors, end = {}, 0
    for name, dims, t, off in infos:
        assert off % 32 == 0 and off >= end, (name, off, end)
        n = int(np.prod(dims))
        nbytes = int(n * sizes[t])
        end = off + nbytes
        tensors[name] = (deq(b[base + off:base + end], t, n).reshape(list(reversed(dims))), t)
    assert len(b) == base + end + (-end) % 32, (len(b), base + end)
    return kv, tensors


def check_model(tmp):
    # intermediate 80: ffn_down's rows (80 long) are not whole blocks and fall back to F16.
    shape = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
    cfgp = os.path.join(tmp, "shape.json")
    json.dump(shape, open(cfgp, "w"))
    py = sys.executable
    subprocess.run([py, "tools/bench/make_pair.py", "--out", os.path.join(tmp, "pair"), "--base", cfgp,
                    "--dtype", "f32", "--seed", "7", "--base-only"], check=True, stdout=subprocess.DEVNULL)
    mdir = os.path.join(tmp, "pair", "base")
    assert sorted(os.listdir(os.path.join(tmp, "pair"))) == ["base"], "--base-only wrote more"
    hf = read_safetensors(os.path.join(mdir, "model.safetensors"))
    for args, ftype, gt, tol in ((["--type", "q8_0"], 7, 8, 0.6 / 127), (["--type", "q4_0"], 2, 2, 1.1 / 8),
                                 (["--f32"], 0, 0, 0.0)):
        out = os.path.join(tmp, "m.gguf")
        subprocess.run([py, "tools/bench/hf_to_gguf.py", mdir, out] + args, check=True,
                       stdout=subprocess.DEVNULL)
        kv, t = read_gguf(out)
        assert kv["general.file_type"] == ftype, (args, kv["general.file_type"])
        assert (kv.get("general.quantization_version") == 2) == (gt in (2, 8)), args
        assert len(t) == 3 + 2 * 9 and "output.weight" in t, sorted(t)
        for name, (a, ty) in t.items():
            want = 0 if a.ndim == 1 else (1 if name.endswith("ffn_down.weight") and gt else gt)
            assert ty == want, (args, name, ty, want)
        for gg, hh in (("token_embd.weight", "model.embed_tokens.weight"), ("output.weight", "lm_head.weight"),
                       ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
                       ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
                       ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")):
            a, w = t[gg][0], hf[hh]
            assert a.shape == w.shape, (gg, a.shape, w.shape)
            amax = np.abs(w.reshape(-1, 32) if w.shape[-1] % 32 == 0 else w).max(axis=-1, keepdims=True)
            err = np.abs(a - w).reshape(amax.shape[0], -1)
            lim = tol * amax + (2e-3 if gg.endswith("ffn_down.weight") and gt else 1e-7)
            assert np.all(err <= lim), (args, gg, (err - lim).max())
    print("  model: Q8_0, Q4_0, F32 (--f32): types, file_type, fallback, offsets, values")


def main():
    check_quantizers()
    tmp = tempfile.mkdtemp()
    try:
        check_model(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok - hf_to_gguf Q8_0/Q4_0: ggml's reference bytes, round trip, converted model")


if __name__ == "__main__":
    main()
