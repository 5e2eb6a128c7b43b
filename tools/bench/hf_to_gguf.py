#!/usr/bin/python3
"""hf_to_gguf.py — writes a Hugging Face Llama checkpoint (config.json + model.safetensors, as
make_pair.py or the training recipe write them) as a GGUF file that llama.cpp loads, so that a
llama.cpp-based peer (tools/bench/peer/) serves the very same weights as `kvcast serve`.

    /usr/bin/python3 tools/bench/hf_to_gguf.py MODEL_DIR OUT.gguf [--name NAME]
        [--type f32|f16|q8_0|q4_0] [--f32 (= --type f32)]

What it writes (GGUF v3, the names of llama.cpp's convert_hf_to_gguf.py):
- Metadata of arch "llama": context length (max_position_embeddings), widths, layer count,
  heads, KV heads (GQA), head size, RMSNorm epsilon, rope base, file type.
- Tensors: every 2-D weight (token_embd and output included) in the --type (default F16),
  norms as F32, general.file_type to match. token_embd/output; a model with
  tie_word_embeddings gets no output tensor (llama.cpp then reuses token_embd).
- Q8_0 and Q4_0 are ggml's block formats, written from their definition (ggml-quants.c,
  quantize_row_q8_0_ref / quantize_row_q4_0_ref) with numpy: blocks of 32 along a row, each
  an fp16 scale d then the quants. Q8_0: d = amax/127, q = roundf(x/d) as int8 (34 bytes).
  Q4_0: d = max/-8 where max is the signed value of largest magnitude, q = min(15,
  trunc(x/d + 8.5)), 16 bytes with elements 0..15 in the low nibbles and 16..31 in the high
  ones (18 bytes). Every matrix gets the type, like `llama-quantize --pure` (llama.cpp's own
  Q4_0 mix keeps output.weight at Q6_K); a row whose length is not a multiple of 32 falls back
  to F16. tests/integration/test_gguf_quant.py checks them against a scalar port of the C.
  Tensors are read, converted and written one at a time (a 1.1B model needs about 1.5 GB of
  memory, not the whole model).
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
# ggml tensor types (ggml.h enum ggml_type).
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0 = 0, 1, 2, 8
QK = 32  # elements per Q4_0 / Q8_0 block
# --type -> (ggml type of the 2-D weights, llama.cpp's LLAMA_FTYPE for general.file_type).
TYPES = {"f32": (GGML_F32, 0), "f16": (GGML_F16, 1), "q4_0": (GGML_Q4_0, 2),
         "q8_0": (GGML_Q8_0, 7)}
# llama.cpp token types.
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_BYTE = 1, 2, 3, 6


class SafeTensors:
    """The header of a safetensors file; get(name) reads one tensor as float32 (F32, F16 and
    BF16), so that a converter holds one tensor at a time, not the model."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        self.base = 8 + n
        self.info = {k: v for k, v in header.items() if k != "__metadata__"}
        for name, info in self.info.items():
            if info["dtype"] not in ("F32", "F16", "BF16"):
                sys.exit("hf_to_gguf.py: %s: tensor %s has dtype %s (F32/F16/BF16 only)"
                         % (path, name, info["dtype"]))

    def shape(self, name):
        return tuple(self.info[name]["shape"])

    def get(self, name):
        info = self.info[name]
        a, b = info["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.base + a)
            raw = f.read(b - a)
        dt = info["dtype"]
        if dt == "F32":
            x = np.frombuffer(raw, "<f4").copy()
        elif dt == "F16":
            x = np.frombuffer(raw, "<f2").astype(np.float32)
        else:
            x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        return x.reshape(info["shape"])


def read_safetensors(path):
    """name -> float32 array, for F32, F16 and BF16 tensors (the whole file)."""
    st = SafeTensors(path)
    return {name: st.get(name) for name in st.info}


def round_half_away(v):
    """C's roundf (ties away from zero), exactly: numpy's round breaks ties to even."""
    r = np.round(v)
    tie = np.abs(v - np.trunc(v)) == 0.5
    return np.where(tie, np.trunc(v) + np.sign(v), r)


def quantize_q8_0(x):
    """float32 [..., K] (K % 32 == 0) -> Q8_0 blocks, uint8 [n_blocks, 34]: fp16 d, 32 int8."""
    b = np.ascontiguousarray(x, np.float32).reshape(-1, QK)
    d = np.abs(b).max(axis=1) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = round_half_away(b * inv[:, None])
    out = np.empty((b.shape[0], 2 + QK), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out


def quantize_q4_0(x):
    """float32 [..., K] (K % 32 == 0) -> Q4_0 blocks, uint8 [n_blocks, 18]: fp16 d, 16 bytes
    of nibbles (low: elements 0..15, high: 16..31)."""
    b = np.ascontiguousarray(x, np.float32).reshape(-1, QK)
    # The first element of largest magnitude, with its sign (the C loop's strict '<').
    mx = b[np.arange(b.shape[0]), np.abs(b).argmax(axis=1)]
    d = mx / np.float32(-8)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    # (int8_t)(x*id + 8.5f): x*id lies in [-8, 8], so the sum is positive and the cast floors.
    q = np.minimum(15, (b * inv[:, None] + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
    out = np.empty((b.shape[0], 2 + QK // 2), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :QK // 2] | (q[:, QK // 2:] << 4)
    return out


def dequantize(raw, gtype, shape):
    """GGUF tensor bytes -> float32 array of numpy shape `shape` (the tests' reader)."""
    n = int(np.prod(shape))
    if gtype == GGML_F32:
        return np.frombuffer(raw, "<f4", n).reshape(shape).copy()
    if gtype == GGML_F16:
        return np.frombuffer(raw, "<f2", n).astype(np.float32).reshape(shape)
    bs = 2 + QK if gtype == GGML_Q8_0 else 2 + QK // 2
    blk = np.frombuffer(raw, np.uint8, n // QK * bs).reshape(-1, bs)
    d = blk[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    if gtype == GGML_Q8_0:
        q = blk[:, 2:].view(np.int8).astype(np.float32)
    else:
        q = np.concatenate([blk[:, 2:] & 15, blk[:, 2:] >> 4], axis=1).astype(np.float32) - 8
    return (d * q).reshape(shape)


def tensor_nbytes(shape, gtype):
    n = int(np.prod(shape))
    return {GGML_F32: 4 * n, GGML_F16: 2 * n, GGML_Q8_0: n // QK * (2 + QK),
            GGML_Q4_0: n // QK * (2 + QK // 2)}[gtype]


def encode(a, gtype):
    """float32 array -> the bytes of one GGUF tensor of ggml type gtype (row-major)."""
    if gtype == GGML_F32:
        return np.ascontiguousarray(a, "<f4").tobytes()
    if gtype == GGML_F16:
        return np.ascontiguousarray(a, "<f2").tobytes()
    # Chunks of rows keep the temporaries of a 32000 x 2048 embedding small.
    rows = a.reshape(-1, a.shape[-1])
    step = max(1, (1 << 20) // a.shape[-1])
    f = quantize_q8_0 if gtype == GGML_Q8_0 else quantize_q4_0
    return b"".join(f(rows[i:i + step]).tobytes() for i in range(0, rows.shape[0], step))


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, rows [0..d/2) and [d/2..d)
    (rotate_half pairs) become interleaved pairs (llama.cpp's rope)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, numpy shape, ggml type, function returning the f32 array)

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
        off = 0
        for name, shape, gt, _ in self.tensors:
            parts.append(self._str(name))
            # GGUF dims run innermost first: the reverse of numpy's row-major shape.
            parts.append(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d)
                                                                   for d in reversed(shape)))
            parts.append(struct.pack("<IQ", gt, off))
            n = tensor_nbytes(shape, gt)
            off += n + (-n) % ALIGN
        head = b"".join(parts)
        head += b"\0" * ((-len(head)) % ALIGN)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(head)
            for name, shape, gt, load in self.tensors:
                a = load()
                assert tuple(a.shape) == tuple(shape), (name, a.shape, shape)
                b = encode(a, gt)
                assert len(b) == tensor_nbytes(shape, gt), name
                f.write(b + b"\0" * ((-len(b)) % ALIGN))
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
    ap.add_argument("--type", choices=sorted(TYPES), default=None,
                    help="type of every 2-D weight (default f16); norms stay F32")
    ap.add_argument("--f32", action="store_true", help="the same as --type f32")
    a = ap.parse_args()
    if a.f32 and a.type not in (None, "f32"):
        ap.error("--f32 and --type %s disagree" % a.type)
    a.type = "f32" if a.f32 else (a.type or "f16")
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type", "llama") not in ("llama", "mistral"):
        sys.exit("hf_to_gguf.py: model_type %s: only Llama-shaped models" % cfg.get("model_type"))
    if cfg.get("rope_scaling"):
        sys.exit("hf_to_gguf.py: rope_scaling is not supported (plain rope only)")
    st = SafeTensors(os.path.join(a.model_dir, "model.safetensors"))
    C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or C // H
    wt, ftype = TYPES[a.type]

    w = Writer()
    w.add("general.architecture", T_STRING, "llama")
    w.add("general.name", T_STRING, a.name or os.path.basename(os.path.normpath(a.model_dir)))
    w.add("general.file_type", T_U32, ftype)
    if wt in (GGML_Q4_0, GGML_Q8_0):
        w.add("general.quantization_version", T_U32, 2)  # GGML_QNT_VERSION
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

    left = set(st.info)
    fallback = []

    def add(gguf_name, hf_name, gtype, heads=0):
        """Queues one tensor; it is read (and Q/K permuted) only when written."""
        if hf_name not in left:
            sys.exit("hf_to_gguf.py: %s lacks tensor %s" % (a.model_dir, hf_name))
        left.discard(hf_name)
        shape = st.shape(hf_name)
        if gtype in (GGML_Q4_0, GGML_Q8_0) and shape[-1] % QK:
            gtype = GGML_F16  # ggml blocks need whole blocks of 32 along a row
            fallback.append(gguf_name)
        load = (lambda: permute(st.get(hf_name), heads)) if heads else (lambda: st.get(hf_name))
        w.tensors.append((gguf_name, shape, gtype, load))

    add("token_embd.weight", "model.embed_tokens.weight", wt)
    for i in range(L):
        p, q = "model.layers.%d." % i, "blk.%d." % i
        add(q + "attn_norm.weight", p + "input_layernorm.weight", GGML_F32)
        add(q + "attn_q.weight", p + "self_attn.q_proj.weight", wt, heads=H)
        add(q + "attn_k.weight", p + "self_attn.k_proj.weight", wt, heads=Hkv)
        add(q + "attn_v.weight", p + "self_attn.v_proj.weight", wt)
        add(q + "attn_output.weight", p + "self_attn.o_proj.weight", wt)
        add(q + "ffn_norm.weight", p + "post_attention_layernorm.weight", GGML_F32)
        add(q + "ffn_gate.weight", p + "mlp.gate_proj.weight", wt)
        add(q + "ffn_up.weight", p + "mlp.up_proj.weight", wt)
        add(q + "ffn_down.weight", p + "mlp.down_proj.weight", wt)
    add("output_norm.weight", "model.norm.weight", GGML_F32)
    if "lm_head.weight" in left and not cfg.get("tie_word_embeddings", False):
        add("output.weight", "lm_head.weight", wt)
    left.discard("lm_head.weight")
    extra = [k for k in left if not k.endswith("rotary_emb.inv_freq")]
    if extra:
        sys.exit("hf_to_gguf.py: tensors not converted: %s" % ", ".join(sorted(extra)[:5]))
    w.write(a.out)
    nbytes = sum(tensor_nbytes(shape, gt) for _, shape, gt, _ in w.tensors)
    print("hf_to_gguf.py: wrote %s (%d tensors, %.1f MB of tensor data, vocab %d, %s%s)"
          % (a.out, len(w.tensors), nbytes / 1e6, cfg["vocab_size"], a.type.upper(),
             "; F16 for rows not a multiple of 32: " + ", ".join(fallback) if fallback else ""))


if __name__ == "__main__":
    main()
