#!/usr/bin/python3
"""hf_to_gguf.py — writes a Hugging Face Llama checkpoint (config.json + model.safetensors, as
make_pair.py or the training recipe write them) as a GGUF file that llama.cpp loads, so that a
llama.cpp-based peer (tools/bench/peer/) serves the very same weights as `kvcast serve`.

    /usr/bin/python3 tools/bench/hf_to_gguf.py MODEL_DIR OUT.gguf [--name NAME] [--f32]

What it writes (GGUF v3, the names of llama.cpp's convert_hf_to_gguf.py):
- Metadata of arch "llama": context length (max_position_embeddings), widths, layer count,
  heads, KV heads (GQA), head size, RMSNorm epsilon, rope base, file type.
- Tensors: 2-D weights as F16 (--f32: F32), norms as F32. token_embd/output; a model with
  tie_word_embeddings gets no output tensor (llama.cpp then reuses token_embd).
- Q and K rows permuted the way convert_hf_to_gguf.py's `permute` does: HF checkpoints rotate
  the halves of each head (rotate_half), llama.cpp's "llama" rope rotates adjacent pairs, so
  the rows are reordered to make both compute the same function.
- A placeholder SentencePiece-style vocabulary of exactly vocab_size tokens (<unk>, BOS/EOS
  from config.json or 1/2, the 256 byte tokens llama.cpp looks up, then "tokN"): benchmarks
  send token ids, so no real tokenizer is needed; text in and out is meaningless. Needs
  vocab_size >= 259.

Only /usr/bin/python3 and numpy (Debian python3-numpy); no PyPI.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

GGUF_MAGIC = 0x46554747  # "GGUF"
ALIGN = 32
# GGUF metadata value types.
T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
# ggml tensor types.
GGML_F32, GGML_F16 = 0, 1
# llama.cpp token types.
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_BYTE = 1, 2, 3, 6


def read_safetensors(path):
    """name -> float32 array, for F32, F16 and BF16 tensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            dt, shape = info["dtype"], info["shape"]
            if dt == "F32":
                x = np.frombuffer(raw, "<f4")
            elif dt == "F16":
                x = np.frombuffer(raw, "<f2").astype(np.float32)
            elif dt == "BF16":
                x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                sys.exit("hf_to_gguf.py: %s: tensor %s has dtype %s (F32/F16/BF16 only)"
                         % (path, name, dt))
            out[name] = x.reshape(shape)
    return out


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, rows [0..d/2) and [d/2..d)
    (rotate_half pairs) become interleaved pairs (llama.cpp's rope)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, array, ggml type)

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, typ, value):
        self.kv.append((key, typ, value))

    def _value(self, typ, v):
        if typ == T_U32:
            return struct.pack("<I", v)
        if typ == T_I32:
            return struct.pack("<i", v)
        if typ == T_F32:
            return struct.pack("<f", v)
        if typ == T_BOOL:
            return struct.pack("<B", 1 if v else 0)
        if typ == T_STRING:
            return self._str(v)
        raise ValueError(typ)

    def write(self, path):
        parts = [struct.pack("<IIQQ", GGUF_MAGIC, 3, len(self.tensors), len(self.kv))]
        for key, typ, v in self.kv:
            parts.append(self._str(key))
            if typ == T_ARRAY:
                etyp, items = v
                parts.append(struct.pack("<IIQ", T_ARRAY, etyp, len(items)))
                if etyp == T_F32:
                    parts.append(np.asarray(items, "<f4").tobytes())
                elif etyp == T_I32:
                    parts.append(np.asarray(items, "<i4").tobytes())
                else:
                    parts.extend(self._value(etyp, x) for x in items)
            else:
                parts.append(struct.pack("<I", typ) + self._value(typ, v))
        blobs, off = [], 0
        for name, a, gt in self.tensors:
            b = np.ascontiguousarray(a, "<f2" if gt == GGML_F16 else "<f4").tobytes()
            parts.append(self._str(name))
            # GGUF dims run innermost first: the reverse of numpy's row-major shape.
            parts.append(struct.pack("<I", a.ndim) + b"".join(struct.pack("<Q", d)
                                                                for d in reversed(a.shape)))
            parts.append(struct.pack("<IQ", gt, off))
            pad = (-len(b)) % ALIGN
            blobs.append(b + b"\0" * pad)
            off += len(b) + pad
        head = b"".join(parts)
        head += b"\0" * ((-len(head)) % ALIGN)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(head)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)


def vocab(cfg):
    V = cfg["vocab_size"]
    if V < 259:
        sys.exit("hf_to_gguf.py: vocab_size %d < 259: the placeholder vocabulary needs <unk>, "
                 "BOS/EOS and the 256 byte tokens" % V)
    bos, eos = cfg.get("bos_token_id", 1), cfg.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    toks = ["tok%d" % i for i in range(V)]
    types = [TOK_NORMAL] * V
    reserved = {0, bos, eos}
    byte_ids = [i for i in range(V) if i not in reserved][:256]
    for b, i in enumerate(byte_ids):
        toks[i], types[i] = "<0x%02X>" % b, TOK_BYTE
    toks[0], types[0] = "<unk>", TOK_UNKNOWN
    # One id for both (the embedded pair): call it </s> so that llama.cpp counts it as
    # end-of-generation.
    toks[bos], types[bos] = "<s>" if eos != bos else "</s>", TOK_CONTROL
    toks[eos], types[eos] = "</s>", TOK_CONTROL
    scores = [0.0 if t != TOK_NORMAL else -float(i) for i, t in enumerate(types)]
    return toks, scores, types, bos, eos


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--name", default=None, help="general.name (default: the folder's name)")
    ap.add_argument("--f32", action="store_true", help="2-D weights as F32 instead of F16")
    a = ap.parse_args()
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type", "llama") not in ("llama", "mistral"):
        sys.exit("hf_to_gguf.py: model_type %s: only Llama-shaped models" % cfg.get("model_type"))
    if cfg.get("rope_scaling"):
        sys.exit("hf_to_gguf.py: rope_scaling is not supported (plain rope only)")
    t = read_safetensors(os.path.join(a.model_dir, "model.safetensors"))
    C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or C // H
    wt = GGML_F32 if a.f32 else GGML_F16

    w = Writer()
    w.add("general.architecture", T_STRING, "llama")
    w.add("general.name", T_STRING, a.name or os.path.basename(os.path.normpath(a.model_dir)))
    w.add("general.file_type", T_U32, 0 if a.f32 else 1)
    w.add("general.alignment", T_U32, ALIGN)
    w.add("llama.vocab_size", T_U32, cfg["vocab_size"])
    w.add("llama.context_length", T_U32, cfg.get("max_position_embeddings", 2048))
    w.add("llama.embedding_length", T_U32, C)
    w.add("llama.block_count", T_U32, L)
    w.add("llama.feed_forward_length", T_U32, cfg["intermediate_size"])
    w.add("llama.attention.head_count", T_U32, H)
    w.add("llama.attention.head_count_kv", T_U32, Hkv)
    w.add("llama.attention.key_length", T_U32, D)
    w.add("llama.attention.value_length", T_U32, D)
    w.add("llama.rope.dimension_count", T_U32, D)
    w.add("llama.rope.freq_base", T_F32, float(cfg.get("rope_theta", 10000.0)))
    w.add("llama.attention.layer_norm_rms_epsilon", T_F32, float(cfg.get("rms_norm_eps", 1e-5)))
    toks, scores, types, bos, eos = vocab(cfg)
    w.add("tokenizer.ggml.model", T_STRING, "llama")
    w.add("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, toks))
    w.add("tokenizer.ggml.scores", T_ARRAY, (T_F32, scores))
    w.add("tokenizer.ggml.token_type", T_ARRAY, (T_I32, types))
    w.add("tokenizer.ggml.bos_token_id", T_U32, bos)
    w.add("tokenizer.ggml.eos_token_id", T_U32, eos)
    w.add("tokenizer.ggml.unknown_token_id", T_U32, 0)
    # kvcast does not prepend BOS to a token-id prompt; neither should the peer.
    w.add("tokenizer.ggml.add_bos_token", T_BOOL, False)
    w.add("tokenizer.ggml.add_eos_token", T_BOOL, False)

    def get(name):
        if name not in t:
            sys.exit("hf_to_gguf.py: %s lacks tensor %s" % (a.model_dir, name))
        return t.pop(name)

    w.tensors.append(("token_embd.weight", get("model.embed_tokens.weight"), wt))
    for i in range(L):
        p, q = "model.layers.%d." % i, "blk.%d." % i
        w.tensors += [
            (q + "attn_norm.weight", get(p + "input_layernorm.weight"), GGML_F32),
            (q + "attn_q.weight", permute(get(p + "self_attn.q_proj.weight"), H), wt),
            (q + "attn_k.weight", permute(get(p + "self_attn.k_proj.weight"), Hkv), wt),
            (q + "attn_v.weight", get(p + "self_attn.v_proj.weight"), wt),
            (q + "attn_output.weight", get(p + "self_attn.o_proj.weight"), wt),
            (q + "ffn_norm.weight", get(p + "post_attention_layernorm.weight"), GGML_F32),
            (q + "ffn_gate.weight", get(p + "mlp.gate_proj.weight"), wt),
            (q + "ffn_up.weight", get(p + "mlp.up_proj.weight"), wt),
            (q + "ffn_down.weight", get(p + "mlp.down_proj.weight"), wt),
        ]
    w.tensors.append(("output_norm.weight", get("model.norm.weight"), GGML_F32))
    if "lm_head.weight" in t and not cfg.get("tie_word_embeddings", False):
        w.tensors.append(("output.weight", get("lm_head.weight"), wt))
    t.pop("lm_head.weight", None)
    extra = [k for k in t if not k.endswith("rotary_emb.inv_freq")]
    if extra:
        sys.exit("hf_to_gguf.py: tensors not converted: %s" % ", ".join(sorted(extra)[:5]))
    w.write(a.out)
    print("hf_to_gguf.py: wrote %s (%d tensors, vocab %d, %s)"
          % (a.out, len(w.tensors), cfg["vocab_size"], "F32" if a.f32 else "F16"))


if __name__ == "__main__":
    main()
