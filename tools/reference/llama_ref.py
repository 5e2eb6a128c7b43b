"""Independent PyTorch reference of the Llama-family decoder (Llama 2/3, Qwen2) used to produce
the golden fixtures under tests/golden/ that check the C engine.

It is written from the published architecture, not from the engine's code, and reads/writes the
Hugging Face layout (config.json + model.safetensors with HF tensor names).  Safetensors I/O is a
small self-contained reader/writer on numpy, so nothing beyond Debian's python3-torch and
python3-numpy is needed.  Run with /usr/bin/python3.

Shape legend: T tokens, L layers, H query heads, Hkv kv heads, D head dim, C model dim,
F ffn dim, V vocab.  Matrices follow torch.nn.Linear: weight [out, in], y = x @ W^T + b.
"""

import json
import math
import struct

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length N, N bytes of JSON, then raw little-endian data.

_NP_OF = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32,
          "I64": np.int64, "U8": np.uint8, "BF16": np.uint16}  # BF16 handled as raw bits


def bf16_bits(a):
    """Rounds float32 to bfloat16 (round-to-nearest-even); returns the uint16 bit patterns."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_to_f32(bits):
    """Widens bfloat16 bit patterns (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: (dtype_str, np.ndarray)} in name order; BF16 arrays are given as float32."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dt, arr = tensors[name]
        raw = bf16_bits(arr) if dt == "BF16" else np.ascontiguousarray(arr, dtype=_NP_OF[dt])
        data = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-(8 + len(hj)) % 8)  # pad so the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def load_safetensors(path):
    """Returns ({name: np.ndarray}, metadata); BF16/F16 are widened to float32 exactly."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        dt = np.dtype(_NP_OF[h["dtype"]]).newbyteorder("<")
        a = np.frombuffer(buf[8 + n + b:8 + n + e], dtype=dt).reshape(h["shape"])
        a = bf16_to_f32(a) if h["dtype"] == "BF16" else a
        out[name] = a.astype(np.float32) if h["dtype"] == "F16" else a.copy()
    return out, meta


# ---------------------------------------------------------------------------------------------
# Model configuration (subset of HF LlamaConfig / Qwen2Config the architecture depends on).

class Config:
    def __init__(self, d):
        self.raw = d
        self.model_type = d.get("model_type", "llama")
        self.V, self.C = d["vocab_size"], d["hidden_size"]
        self.F, self.L = d["intermediate_size"], d["num_hidden_layers"]
        self.H = d["num_attention_heads"]
        self.Hkv = d.get("num_key_value_heads") or self.H
        self.D = d.get("head_dim") or self.C // self.H
        self.eps = d["rms_norm_eps"]
        self.theta = d.get("rope_theta", 10000.0)
        self.rope_scaling = d.get("rope_scaling")
        self.tied = d.get("tie_word_embeddings", False)
        # Qwen2 always has q/k/v bias and its config has no attention_bias key.
        self.qkv_bias = d.get("attention_bias", self.model_type == "qwen2")
        assert self.H % self.Hkv == 0 and self.D % 2 == 0


def rope_inv_freq(cfg):
    """inv_freq[i] = theta^(-2i/D), i < D/2, with HF rope scaling applied (float64)."""
    D = cfg.D
    inv = 1.0 / cfg.theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    rs = cfg.rope_scaling
    kind = (rs.get("rope_type") or rs.get("type")) if rs else "default"
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":  # transformers modeling_rope_utils._compute_llama3_parameters
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = torch.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return torch.where(medium, smoothed, out)
    raise NotImplementedError(f"rope type {kind!r}")


def rope_cos_sin(cfg, positions, dtype):
    """cos/sin [T, D] in HF layout: the D/2 frequencies repeated twice (cat(freqs, freqs))."""
    ang = positions.to(torch.float64)[:, None] * rope_inv_freq(cfg)[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last dim (pairs are (i, i + D/2), not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rms_norm(x, w, eps):
    """x * rsqrt(mean(x^2) + eps) * w, computed in at least float32."""
    xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * w).to(x.dtype)


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


# ---------------------------------------------------------------------------------------------
# Forward pass over a whole sequence (no cache: every call recomputes from token 0).

def to_torch(weights, dtype):
    return {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in weights.items()}


def forward(cfg, w, tokens, trace=None):
    """Logits [T, V] for token ids `tokens` at positions 0..T-1; w = to_torch(...) weights.

    If `trace` is a dict it receives per-layer lists: k_pre, k_post, v ([T, Hkv*D] merged heads,
    head-major), attn_out ([T, C], o_proj output) and hidden ([L+1] x [T, C] residual stream).
    """
    T, H, Hkv, D = len(tokens), cfg.H, cfg.Hkv, cfg.D
    dtype = w["model.embed_tokens.weight"].dtype
    tok = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    cos, sin = rope_cos_sin(cfg, torch.arange(T), dtype)  # [T, D]
    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)  # causal: s <= t
    tr = {k: [] for k in ("k_pre", "k_post", "v", "attn_out", "hidden")}

    x = w["model.embed_tokens.weight"][tok]  # [T, C] embedding lookup
    tr["hidden"].append(x)
    for l in range(cfg.L):
        p = f"model.layers.{l}."
        bias = (lambda n: w[p + f"self_attn.{n}_proj.bias"]) if cfg.qkv_bias else (lambda n: None)
        # Attention block: pre-norm, q/k/v projections (optional bias).
        h = rms_norm(x, w[p + "input_layernorm.weight"], cfg.eps)
        q = linear(h, w[p + "self_attn.q_proj.weight"], bias("q"))  # [T, H*D]
        k = linear(h, w[p + "self_attn.k_proj.weight"], bias("k"))  # [T, Hkv*D] pre-RoPE
        v = linear(h, w[p + "self_attn.v_proj.weight"], bias("v"))  # [T, Hkv*D]
        # RoPE on q and k per head, rotate_half layout.
        qh = q.view(T, H, D).transpose(0, 1)  # [H, T, D]
        kh = k.view(T, Hkv, D).transpose(0, 1)  # [Hkv, T, D]
        vh = v.view(T, Hkv, D).transpose(0, 1)
        qh = qh * cos + rotate_half(qh) * sin
        kh = kh * cos + rotate_half(kh) * sin
        tr["k_pre"].append(k)
        tr["k_post"].append(kh.transpose(0, 1).reshape(T, Hkv * D))
        tr["v"].append(v)
        # GQA: query head h reads kv head h // (H / Hkv).
        kh = kh.repeat_interleave(H // Hkv, dim=0)
        vh = vh.repeat_interleave(H // Hkv, dim=0)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(D) + mask  # [H, T, T]
        att = torch.softmax(scores, dim=-1) @ vh  # [H, T, D]
        o = linear(att.transpose(0, 1).reshape(T, H * D), w[p + "self_attn.o_proj.weight"])
        tr["attn_out"].append(o)
        x = x + o
        # MLP block: pre-norm SwiGLU.
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.eps)
        g = torch.nn.functional.silu(linear(h, w[p + "mlp.gate_proj.weight"]))
        x = x + linear(g * linear(h, w[p + "mlp.up_proj.weight"]), w[p + "mlp.down_proj.weight"])
        tr["hidden"].append(x)
    x = rms_norm(x, w["model.norm.weight"], cfg.eps)
    head = w["model.embed_tokens.weight"] if cfg.tied else w["lm_head.weight"]
    if trace is not None:
        trace.update(tr)
    return linear(x, head)  # [T, V]


def greedy(cfg, w, prompt, n):
    """n greedy tokens after `prompt`, recomputing the full sequence each step.

    Returns (tokens [n] int, logits [n, V], margins [n]) where margins are top1 - top2 logits.
    """
    seq, toks, logits, margins = list(prompt), [], [], []
    for _ in range(n):
        lg = forward(cfg, w, seq)[-1]
        top = torch.topk(lg, 2).values
        t = int(torch.argmax(lg))
        toks.append(t)
        logits.append(lg)
        margins.append(float(top[0] - top[1]))
        seq.append(t)
    return toks, torch.stack(logits), margins


def load_model(model_dir, dtype=torch.float32):
    """Reads config.json + model.safetensors from an HF model folder -> (Config, torch weights)."""
    with open(f"{model_dir}/config.json") as f:
        cfg = Config(json.load(f))
    weights, _ = load_safetensors(f"{model_dir}/model.safetensors")
    return cfg, to_torch(weights, dtype)
