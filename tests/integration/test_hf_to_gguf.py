#!/usr/bin/python3
"""tools/bench/hf_to_gguf.py on a small make_pair.py model, read back with an independent GGUF
reader: header, llama metadata, tensor names/shapes/types, the placeholder vocabulary, and the
rope check that matters: llama.cpp's rope (adjacent pairs) on the converted Q/K weights gives
the same attention scores as the HF rope (rotate_half) on the original weights. No llama.cpp
needed. Usage: test_hf_to_gguf.py (from the source root; ctest does)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.getcwd()
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
from hf_to_gguf import read_safetensors  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from gguf_read import read_gguf  # noqa: E402


def rope_hf(x, pos, theta):  # x [n_head, d], rotate_half
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def rope_llama_cpp(x, pos, theta):  # adjacent pairs (ggml rope mode 0)
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


def main():
    tmp = tempfile.mkdtemp()
    try:
        check(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(tmp):
    shape = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
    cfgp = os.path.join(tmp, "shape.json")
    json.dump(shape, open(cfgp, "w"))
    py = sys.executable
    subprocess.run([py, "tools/bench/make_pair.py", "--out", os.path.join(tmp, "pair"), "--base",
                    cfgp, "--aux", cfgp, "--dtype", "f32", "--seed", "5"], check=True,
                   stdout=subprocess.DEVNULL)
    mdir = os.path.join(tmp, "pair", "base")
    out = os.path.join(tmp, "m.gguf")
    subprocess.run([py, "tools/bench/hf_to_gguf.py", mdir, out], check=True, stdout=subprocess.DEVNULL)
    kv, t = read_gguf(out)
    hf = read_safetensors(os.path.join(mdir, "model.safetensors"))
    want = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
            "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.context_length": 256,
            "llama.rope.dimension_count": 16, "llama.vocab_size": 300, "general.file_type": 1}
    for k, v in want.items():
        assert kv.get(k) == v, (k, kv.get(k), v)
    assert abs(kv["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-9
    toks, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(toks) == 300 == len(set(toks)) == len(types) == len(kv["tokenizer.ggml.scores"])
    assert sum(1 for x in types if x == 6) == 256 and "<0x0A>" in toks
    assert len(t) == 2 + 2 * 9, sorted(t)  # token_embd, output_norm, 9 per layer; tied: no output
    assert "output.weight" not in t
    assert t["token_embd.weight"][0].shape == (300, 64) and t["token_embd.weight"][1] == 1
    assert t["blk.0.attn_norm.weight"][1] == 0 and t["blk.1.ffn_down.weight"][0].shape == (64, 96)
    tol = 2e-3  # f16 storage of N(0, 0.02) weights
    assert np.abs(t["blk.1.ffn_gate.weight"][0] - hf["model.layers.1.mlp.gate_proj.weight"]).max() < tol
    assert np.abs(t["blk.0.attn_v.weight"][0] - hf["model.layers.0.self_attn.v_proj.weight"]).max() < tol
    # Rope equivalence: scores q.k at positions (7, 3) with each side's weights and rope.
    rng = np.random.default_rng(0)
    x_q, x_k = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    for layer in range(2):
        p = "model.layers.%d.self_attn." % layer
        qh = (hf[p + "q_proj.weight"] @ x_q).reshape(4, 16)
        kh = (hf[p + "k_proj.weight"] @ x_k).reshape(2, 16)
        qg = (t["blk.%d.attn_q.weight" % layer][0] @ x_q).reshape(4, 16)
        kg = (t["blk.%d.attn_k.weight" % layer][0] @ x_k).reshape(2, 16)
        sh = np.einsum("hd,hd->h", rope_hf(qh, 7, 1e4), np.repeat(rope_hf(kh, 3, 1e4), 2, 0))
        sg = np.einsum("hd,hd->h", rope_llama_cpp(qg, 7, 1e4), np.repeat(rope_llama_cpp(kg, 3, 1e4), 2, 0))
        assert np.abs(sh - sg).max() < 1e-2 * max(1.0, np.abs(sh).max()), (layer, sh, sg)
        # Without the permutation the scores differ: the check can fail.
        su = np.einsum("hd,hd->h", rope_llama_cpp(qh, 7, 1e4), np.repeat(rope_llama_cpp(kh, 3, 1e4), 2, 0))
        assert np.abs(sh - su).max() > 10 * np.abs(sh - sg).max(), (layer, sh, su)
    print("ok - hf_to_gguf: metadata, vocabulary, tensors, rope equivalence")


if __name__ == "__main__":
    main()
