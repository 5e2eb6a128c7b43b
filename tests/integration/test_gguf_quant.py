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

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from gguf_read import deq, read_gguf  # noqa: E402


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
