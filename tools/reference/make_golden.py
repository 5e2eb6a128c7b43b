"""Writes the golden fixtures tests/golden/<case>/ used by the C engine's golden tests.

Each case is a tiny random Llama-family model in HF layout (config.json, model.safetensors) plus
reference.safetensors with the float64 reference outputs of tools/reference/llama_ref.py stored
as float32.  See tests/golden/README.md for the exact format.  Deterministic: rerunning rewrites
identical files.

    /usr/bin/python3 tools/reference/make_golden.py [--out tests/golden] [case ...]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref as ref  # noqa: E402

T_PROMPT = 24  # prompt length
N_GREEDY = 32  # greedy continuation length
MIN_MARGIN = 1e-3  # smallest accepted top1 - top2 logit gap along the greedy path
MIN_DISTINCT = 6  # random tied models like to repeat one token; ask for a varied continuation

BASE_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
              "initializer_range": 0.02, "rope_scaling": None, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "max_position_embeddings": 128}

CASES = [
    {"name": "llama_gqa", "dtype": "F32", "seed": 1000,
     "description": "Llama, tied embeddings, GQA H=4 Hkv=2 (D=16), default RoPE theta 1e4, F32",
     "config": dict(BASE_LLAMA, vocab_size=128, hidden_size=64, intermediate_size=176,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    tie_word_embeddings=True, torch_dtype="float32")},
    {"name": "llama_untied_bf16", "dtype": "BF16", "seed": 2000,
     "description": "Llama, untied lm_head, GQA H=6 Hkv=2 (D=16), 3 layers, BF16 weights on disk",
     "config": dict(BASE_LLAMA, vocab_size=256, hidden_size=96, intermediate_size=256,
                    num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, torch_dtype="bfloat16")},
    {"name": "qwen2_bias", "dtype": "F16", "seed": 3000,
     "description": "Qwen2, q/k/v bias, H=4 Hkv=1 (D=16), tied, theta 1e6, F16 weights on disk",
     "config": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
                "vocab_size": 200, "hidden_size": 64, "intermediate_size": 176,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "rope_scaling": None, "tie_word_embeddings": True, "use_sliding_window": False,
                "sliding_window": 512, "max_window_layers": 2, "bos_token_id": 1,
                "eos_token_id": 2, "initializer_range": 0.02, "torch_dtype": "float16"}},
    {"name": "llama3_scaling", "dtype": "F32", "seed": 4000,
     "description": "Llama 3 rope_scaling llama3 (factor 8, low 1, high 4, original 64), "
                    "theta 5e5, head_dim 32 != hidden/heads 16, H=4 Hkv=2, tied, F32",
     "config": dict(BASE_LLAMA, vocab_size=160, hidden_size=64, intermediate_size=176,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, rope_theta=500000.0, max_position_embeddings=256,
                    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64, "rope_type": "llama3"},
                    tie_word_embeddings=True, torch_dtype="float32")},
    {"name": "llama_linear_scaling", "dtype": "F32", "seed": 5000,
     "description": "Llama, rope_scaling linear factor 4 (legacy 'type' key), MHA H=Hkv=4, "
                    "untied, 2 layers, F32",
     "config": dict(BASE_LLAMA, vocab_size=97, hidden_size=64, intermediate_size=176,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    rope_scaling={"type": "linear", "factor": 4.0},
                    tie_word_embeddings=False, torch_dtype="float32")},
]


def round_to(dtype, a):
    """The float32 values a tensor has after being stored as `dtype`."""
    if dtype == "BF16":
        return ref.bf16_to_f32(ref.bf16_bits(a))
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    return a.astype(np.float32)


def random_weights(cfg, rng):
    """HF-named weights [out, in]: matrices N(0, 0.1^2), norms 1 +- 0.1, biases N(0, 0.2^2)."""
    C, F, V, H, Hkv, D = cfg.C, cfg.F, cfg.V, cfg.H, cfg.Hkv, cfg.D
    normal = lambda std, *shape: rng.normal(0.0, std, shape).astype(np.float32)  # noqa: E731
    norm_w = lambda: (1.0 + rng.uniform(-0.1, 0.1, C)).astype(np.float32)  # noqa: E731
    w = {"model.embed_tokens.weight": normal(0.1, V, C), "model.norm.weight": norm_w()}
    if not cfg.tied:
        w["lm_head.weight"] = normal(0.1, V, C)
    for l in range(cfg.L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm_w()
        w[p + "post_attention_layernorm.weight"] = norm_w()
        w[p + "self_attn.q_proj.weight"] = normal(0.1, H * D, C)
        w[p + "self_attn.k_proj.weight"] = normal(0.1, Hkv * D, C)
        w[p + "self_attn.v_proj.weight"] = normal(0.1, Hkv * D, C)
        w[p + "self_attn.o_proj.weight"] = normal(0.1, C, H * D)
        w[p + "mlp.gate_proj.weight"] = normal(0.1, F, C)
        w[p + "mlp.up_proj.weight"] = normal(0.1, F, C)
        w[p + "mlp.down_proj.weight"] = normal(0.1, C, F)
        if cfg.qkv_bias:
            w[p + "self_attn.q_proj.bias"] = normal(0.2, H * D)
            w[p + "self_attn.k_proj.bias"] = normal(0.2, Hkv * D)
            w[p + "self_attn.v_proj.bias"] = normal(0.2, Hkv * D)
    return w


def attempt(case, seed):
    """Builds one candidate; returns (weights, reference tensors, stats) or None if rejected."""
    cfg = ref.Config(case["config"])
    rng = np.random.default_rng(seed)
    w = {k: round_to(case["dtype"], v) for k, v in random_weights(cfg, rng).items()}
    tokens = rng.integers(0, cfg.V, T_PROMPT).astype(np.int32)

    w64 = ref.to_torch(w, torch.float64)
    tr = {}
    logits = ref.forward(cfg, w64, tokens, trace=tr)
    g_tok, g_logits, margins = ref.greedy(cfg, w64, tokens, N_GREEDY)
    # Keep EOS out of the continuation so a test that stops at EOS still sees all N_GREEDY tokens.
    if (min(margins) <= MIN_MARGIN or len(set(g_tok)) < MIN_DISTINCT
            or case["config"]["eos_token_id"] in g_tok):
        return None
    # Cross-checks: float32 greedy must agree; one causal pass over prompt + greedy must give
    # the same per-step logits as the step-by-step recompute.
    g32, _, _ = ref.greedy(cfg, ref.to_torch(w, torch.float32), tokens, N_GREEDY)
    if g32 != g_tok:
        return None
    full = ref.forward(cfg, w64, list(tokens) + g_tok[:-1])[T_PROMPT - 1:]
    assert torch.allclose(full, g_logits, rtol=0, atol=1e-10), "causal pass != recompute"

    f32 = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    out = {
        "tokens": ("I32", tokens),
        "logits": ("F32", f32(logits)),
        "k_pre": ("F32", f32(torch.stack(tr["k_pre"]))),
        "k_post": ("F32", f32(torch.stack(tr["k_post"]))),
        "v": ("F32", f32(torch.stack(tr["v"]))),
        "hidden": ("F32", f32(torch.stack(tr["hidden"]))),
        "greedy": ("I32", np.array(g_tok, dtype=np.int32)),
        "greedy_logits": ("F32", f32(g_logits)),
    }
    stats = {"seed": seed, "min_margin": min(margins),
             "max_abs_logit": float(max(logits.abs().max(), g_logits.abs().max())),
             "distinct_greedy": len(set(g_tok))}
    return w, out, stats


def write_case(case, out_dir):
    for seed in range(case["seed"], case["seed"] + 100):
        got = attempt(case, seed)
        if got is not None:
            break
    else:
        raise RuntimeError(f"{case['name']}: no seed gave clear greedy margins")
    w, out, stats = got
    d = os.path.join(out_dir, case["name"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(case["config"], f, indent=2)
        f.write("\n")
    ref.save_safetensors(os.path.join(d, "model.safetensors"),
                         {k: (case["dtype"], v) for k, v in w.items()}, {"format": "pt"})
    meta = {"format": "kvcast-golden-v1", "case": case["name"],
            "description": case["description"], "weights_dtype": case["dtype"],
            "seed": stats["seed"], "prompt_len": T_PROMPT, "greedy_len": N_GREEDY,
            "min_greedy_margin": f"{stats['min_margin']:.6g}",
            "generator": "tools/reference/make_golden.py (float64 compute, stored as float32)"}
    ref.save_safetensors(os.path.join(d, "reference.safetensors"), out, meta)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{case['name']:22s} seed={stats['seed']} max|logit|={stats['max_abs_logit']:.3f} "
          f"min_margin={stats['min_margin']:.4f} distinct_greedy={stats['distinct_greedy']} "
          f"bytes={size}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "golden"))
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for case in CASES:
        if not args.cases or case["name"] in args.cases:
            write_case(case, os.path.normpath(args.out))


if __name__ == "__main__":
    main()
