#!/usr/bin/python3
"""make_pair.py — writes a synthetic KV Prediction pair for benchmarks: two Hugging Face-layout
Llama models with random weights (config.json + model.safetensors), a predictor.safetensors in
kvcast's format (docs/kv-prediction.md) and a kvcast-bundle.json. No tokenizer is written:
prompts are token ids (`kvcast bench serve --dataset synthetic`).

Random weights give meaningless text but the same FLOPs, memory traffic and TTFT as trained
models of the same shapes, so serving benchmarks can run before (or without) a trained pair.

    /usr/bin/python3 tools/bench/make_pair.py --out build/bench/pair
        [--base kvcast-base|CONFIG.json] [--aux kvcast-aux|CONFIG.json] [--dtype bf16|f32]
        [--seed 0] [--base-only]
    /usr/bin/python3 tools/bench/make_pair.py --predictor-only --base-dir B --aux-dir A \\
        --out predictor.safetensors [--identity]

--base-only writes just OUT/base (a single model for engine benchmarks: no aux, predictor or
bundle). --predictor-only writes just a predictor for two existing model directories: random, or with
--identity the identity map (needs equal K/V widths; with aux = base it reproduces the base's
own cache, which tests use). Needs numpy (Debian python3-numpy).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# The engine's presets (engine/io/model_config.c) that the embedded pair is trained with.
PRESETS = {
    "kvcast-base": dict(vocab_size=4096, hidden_size=256, intermediate_size=688,
                        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64),
    "kvcast-aux": dict(vocab_size=4096, hidden_size=128, intermediate_size=344,
                       num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64),
}


def hf_config(shape, dtype):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
    }
    c.update(shape)
    return c


def load_shape(spec):
    if spec in PRESETS:
        return dict(PRESETS[spec])
    with open(spec) as f:
        c = json.load(f)
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads"]
    shape = {k: c[k] for k in keys}
    shape["head_dim"] = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    for k in ("max_position_embeddings", "tie_word_embeddings"):
        if k in c:
            shape[k] = c[k]
    return shape


def to_bf16_bytes(a):
    """Round-to-nearest-even f32 -> bf16, as little-endian uint16 bytes."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, tensors, dtype, metadata=None):
    """tensors: list of (name, f32 array). Writes the 8-byte header length, the JSON header
    (8-byte aligned, space padded) and the raw little-endian data."""
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        b = to_bf16_bytes(a) if dtype == "bf16" else np.ascontiguousarray(a, "<f4").tobytes()
        header[name] = {"dtype": "BF16" if dtype == "bf16" else "F32",
                        "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def write_model(outdir, shape, dtype, rng):
    os.makedirs(outdir, exist_ok=True)
    C, F = shape["hidden_size"], shape["intermediate_size"]
    H, Hkv, D = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    V, L = shape["vocab_size"], shape["num_hidden_layers"]

    def w(*s):
        return (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float32)

    t = [("model.embed_tokens.weight", w(V, C))]
    for i in range(L):
        p = "model.layers.%d." % i
        t += [(p + "input_layernorm.weight", np.ones(C, np.float32)),
              (p + "self_attn.q_proj.weight", w(H * D, C)),
              (p + "self_attn.k_proj.weight", w(Hkv * D, C)),
              (p + "self_attn.v_proj.weight", w(Hkv * D, C)),
              (p + "self_attn.o_proj.weight", w(C, H * D)),
              (p + "post_attention_layernorm.weight", np.ones(C, np.float32)),
              (p + "mlp.gate_proj.weight", w(F, C)),
              (p + "mlp.up_proj.weight", w(F, C)),
              (p + "mlp.down_proj.weight", w(C, F))]
    t.append(("model.norm.weight", np.ones(C, np.float32)))
    cfg = hf_config(shape, dtype)
    if not cfg["tie_word_embeddings"]:
        t.append(("lm_head.weight", w(V, C)))
    write_safetensors(os.path.join(outdir, "model.safetensors"), t, dtype, {"format": "pt"})
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def auto_map(lb, la):
    # engine/kvp.h eng_kvp_layer_map_auto: round(l * (La - 1) / (Lb - 1)), half away from zero
    if lb == 1:
        return [0]
    return [int(l * (la - 1) / (lb - 1) + 0.5) for l in range(lb)]


def write_predictor(path, base, aux, identity, rng):
    lb, la = base["num_hidden_layers"], aux["num_hidden_layers"]
    nb = base["num_key_value_heads"] * base["head_dim"]
    na = aux["num_key_value_heads"] * aux["head_dim"]
    if identity and nb != na:
        sys.exit("make_pair.py: --identity needs equal K/V widths (base %d, aux %d)" % (nb, na))
    lmap = auto_map(lb, la)
    t = []
    for l in range(lb):
        for which in ("k", "v"):
            if identity:
                wt, b = np.eye(nb, dtype=np.float32), np.zeros(nb, np.float32)
            else:
                wt = rng.uniform(-1, 1, (nb, na)).astype(np.float32) / np.sqrt(na)
                b = rng.uniform(-0.01, 0.01, nb).astype(np.float32)
            t += [("%s.%d.weight" % (which, l), wt), ("%s.%d.bias" % (which, l), b)]
    meta = {"format": "kvcast-kvp-v1", "key_space": "pre_rope",
            "layer_map": json.dumps(lmap), "base_layers": str(lb), "aux_layers": str(la),
            "base_kv_dim": str(nb), "aux_kv_dim": str(na)}
    write_safetensors(path, t, "f32", meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="pair folder, or predictor file")
    ap.add_argument("--base", default="kvcast-base", help="preset name or config.json")
    ap.add_argument("--aux", default="kvcast-aux", help="preset name or config.json")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictor-only", action="store_true")
    ap.add_argument("--base-dir")
    ap.add_argument("--aux-dir")
    ap.add_argument("--identity", action="store_true")
    ap.add_argument("--base-only", action="store_true", help="write only OUT/base")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    if a.predictor_only:
        if not a.base_dir or not a.aux_dir:
            sys.exit("make_pair.py: --predictor-only needs --base-dir and --aux-dir")
        base = load_shape(os.path.join(a.base_dir, "config.json"))
        aux = load_shape(os.path.join(a.aux_dir, "config.json"))
        write_predictor(a.out, base, aux, a.identity, rng)
        print("make_pair.py: wrote %s" % a.out)
        return
    if a.base_only:
        write_model(os.path.join(a.out, "base"), load_shape(a.base), a.dtype, rng)
        print("make_pair.py: wrote %s/base" % a.out)
        return
    base, aux = load_shape(a.base), load_shape(a.aux)
    if base["vocab_size"] != aux["vocab_size"]:
        sys.exit("make_pair.py: base and aux vocabularies differ")
    write_model(os.path.join(a.out, "base"), base, a.dtype, rng)
    write_model(os.path.join(a.out, "aux"), aux, a.dtype, rng)
    write_predictor(os.path.join(a.out, "predictor.safetensors"), base, aux, a.identity, rng)
    with open(os.path.join(a.out, "kvcast-bundle.json"), "w") as f:
        name = os.path.basename(os.path.normpath(a.out))
        json.dump({"name": name, "base": "base", "aux": "aux",
                   "predictor": "predictor.safetensors"}, f)
        f.write("\n")
    print("make_pair.py: wrote %s/{base,aux,predictor.safetensors,kvcast-bundle.json}" % a.out)


if __name__ == "__main__":
    main()
