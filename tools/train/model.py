#!/usr/bin/python3
"""Llama decoder in plain PyTorch, numerically the same computation as Hugging Face
LlamaForCausalLM (no biases, RMSNorm with the weight applied after normalising in f32, rotary
embeddings with rotate_half on [cos(f), cos(f)] halves, grouped-query attention by repeating each
KV head for n_heads / n_kv_heads consecutive query heads, SwiGLU MLP, optional tied embeddings).

The parameter names are HF's (model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight,
...), so state_dict() is the export layout. forward() can also hand back every layer's
pre-RoPE keys and values (merged heads, [B, T, n_kv_heads * head_dim]) for KV-prediction work.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    def to_dict(self):
        return asdict(self)


PRESETS = {
    "base": Config(),
    "aux": Config(hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=64),
}


def n_params(cfg):
    c, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = c * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + 3 * c * f + 2 * c
    emb = cfg.vocab_size * c * (1 if cfg.tie_word_embeddings else 2)
    return emb + cfg.num_hidden_layers * per_layer + c


def flops_per_token(cfg, ctx):
    """Forward FLOPs (2 per multiply-add) for one token attending to ctx positions: all weight
    matmuls incl. the LM head, plus QK^T and PV."""
    c, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    lin = c * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + 3 * c * f
    attn = 2 * cfg.num_attention_heads * d * ctx
    return 2.0 * (cfg.num_hidden_layers * (lin + attn) + cfg.vocab_size * c)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rope_cos_sin(cfg, positions, dtype=torch.float32):
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(c, cfg.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(c, cfg.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(c, cfg.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * d, c, bias=False)
        self.p_drop = 0.0  # training-time dropout on attention weights (set_dropout)

    def forward(self, x, cos, sin, mask, kv_out=None):
        b, t, _ = x.shape
        cfg = self.cfg
        h, hk, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        if kv_out is not None:
            kv_out.append((k, v))  # pre-RoPE, merged heads
        q = q.view(b, t, h, d).transpose(1, 2)
        k = k.view(b, t, hk, d).transpose(1, 2)
        v = v.view(b, t, hk, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if hk != h:
            k = k.repeat_interleave(h // hk, dim=1)
            v = v.repeat_interleave(h // hk, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        att = att + mask
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        att = F.dropout(att, self.p_drop, self.training)
        y = (att @ v).transpose(1, 2).reshape(b, t, h * d)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.p_drop = 0.0  # training-time dropout on each branch before the residual add

    def forward(self, x, cos, sin, mask, kv_out=None):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_out)
        x = x + F.dropout(h, self.p_drop, self.training)
        h = self.mlp(self.post_attention_layernorm(x))
        return x + F.dropout(h, self.p_drop, self.training)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def set_dropout(self, p):
        """Dropout p on attention weights and on every residual branch, in training mode only
        (eval() and the exported model are unaffected). A regulariser for multi-epoch runs over the
        ~2M-token corpus; what it measured is in tools/train/README.md."""
        for m in self.modules():
            if hasattr(m, "p_drop"):
                m.p_drop = p

    def head_weight(self):
        return self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def forward(self, ids, kv_out=None, last_only=False):
        """ids [B, T] (positions 0..T-1, causal) -> logits [B, T, V] (or [B, 1, V])."""
        b, t = ids.shape
        x = self.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(self.cfg, torch.arange(t), x.dtype)
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, kv_out)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        return x @ self.head_weight().t()

    @torch.no_grad()
    def greedy(self, ids, n):
        """Greedy continuation by full recomputation (reference, no cache): returns n new ids."""
        seq = list(ids)
        out = []
        for _ in range(n):
            logits = self.forward(torch.tensor([seq]), last_only=True)[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            seq.append(nxt)
        return out

    @torch.no_grad()
    def sample(self, ids, n, temperature=0.8, top_k=40, generator=None):
        seq = list(ids)
        out = []
        for _ in range(n):
            logits = self.forward(torch.tensor([seq[-2048:]]), last_only=True)[0, -1] / temperature
            v, ix = torch.topk(logits, top_k)
            p = F.softmax(v, dim=-1)
            nxt = int(ix[torch.multinomial(p, 1, generator=generator)])
            out.append(nxt)
            seq.append(nxt)
        return out
