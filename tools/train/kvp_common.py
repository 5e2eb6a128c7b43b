#!/usr/bin/python3
"""Shared pieces of the KV-prediction recipe (kvp_ridge.py, kvp_train.py, kvp_eval.py).

  * environment: OpenBLAS set up like run.sh (the process re-executes itself with
    OPENBLAS_CORETYPE=SkylakeX and one BLAS thread when they are missing) and torch on one thread;
  * models: a Hugging Face model directory (config.json + model.safetensors, read by export.py, so
    BF16 weights become exactly the f32 values kvcast computes with) or a train.py checkpoint;
  * the predictor: one affine map per base layer for K and one for V (torch.nn.Linear, [out, in]
    weights: y = W x + b), read and written as predictor.safetensors in the format of
    engine/kvp.h (F32, metadata format / key_space / layer_map / base_layers / aux_layers /
    base_kv_dim / aux_kv_dim, all strings, as eng_kvp_save writes them);
  * base_forward_prefix: the base model over tokens at positions pos0.., attending to externally
    supplied pre-RoPE keys and values for positions 0..pos0-1 (rotated here with the base RoPE at
    their positions), exactly as kvcast's predict mode fills the base KV cache;
  * the evaluation of `kvcast eval` (tools/cli/cmd_eval.c): N samples spread evenly over held-out
    tokens, each [BOS] + P-1 prompt tokens + C continuation tokens; modes full, aux, predict;
    mean NLL of the continuation, first-token and greedy agreement with full, gap closed.

Everything runs on the CPU in f32, single-threaded unless told otherwise; results are
deterministic for fixed seeds.
"""
import json
import math
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

KVP_FORMAT = "kvcast-kvp-v1"
KEY_SPACE = "pre_rope"
BLAS_ENV = {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def ensure_blas_env():
    """Re-executes the running script with run.sh's OpenBLAS settings when they are missing (they
    must be in the environment before libblas is loaded, i.e. before torch is imported)."""
    if all(os.environ.get(k) == v for k, v in BLAS_ENV.items()) or os.environ.get("KC_KVP_NO_REEXEC"):
        return
    if not sys.argv or not os.path.isfile(sys.argv[0]):
        return  # imported from an interactive/-c session: the caller sets the environment
    env = dict(os.environ)
    env.update(BLAS_ENV)
    env["KC_KVP_NO_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


ensure_blas_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import export as X  # noqa: E402
import model as M  # noqa: E402


def setup_torch(threads=1):
    torch.set_num_threads(threads)
    libs = []
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in p:
                libs.append(os.path.realpath(p))
    libs = sorted(set(libs))
    if not any("openblas" in p for p in libs):
        print("kvp: warning: torch is not using OpenBLAS (%s): install libopenblas0-pthread "
              "(tools/train/install-deps.sh); this will be ~20x slower" % libs, file=sys.stderr)
    return libs


class Logger:
    """Prints timestamped lines and appends them to a file (when given)."""

    def __init__(self, path=None):
        self.f = open(path, "a") if path else None

    def __call__(self, msg):
        import time
        line = "[%s] %s" % (time.strftime("%H:%M:%S"), msg)
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


# ---------------------------------------------------------------------------- models

def load_model(path):
    """A model directory (HF layout, as export.py writes) or a train.py ckpt.pt; f32, eval mode."""
    if os.path.isdir(path):
        net = X.load_exported(path)
    else:
        st = torch.load(path)
        net = M.LlamaForCausalLM(M.Config(**st["config"]))
        net.load_state_dict(st["model"])
    net.eval()
    return net


def kv_dim(cfg):
    return cfg.num_key_value_heads * cfg.head_dim


def auto_layer_map(base_layers, aux_layers):
    """engine/kvp.c eng_kvp_layer_map_auto: round(l * (La - 1) / (Lb - 1)), half away from 0."""
    if base_layers == 1:
        return [0]
    return [int(math.floor(l * (aux_layers - 1) / (base_layers - 1) + 0.5)) for l in range(base_layers)]


def parse_layer_map(s, base_layers, aux_layers):
    if s == "auto":
        return auto_layer_map(base_layers, aux_layers)
    m = [int(x) for x in s.strip().strip("[]").replace(" ", "").split(",") if x != ""]
    if len(m) != base_layers or any(a < 0 or a >= aux_layers for a in m):
        raise SystemExit("layer map %r: need %d entries in [0, %d)" % (s, base_layers, aux_layers))
    return m


def capture_kv(net, ids):
    """Runs net over ids [B, T] (positions 0..T-1) -> (logits [B, T, V], [(k, v)] per layer,
    pre-RoPE merged heads [B, T, Hkv * D])."""
    kv = []
    logits = net(ids, kv_out=kv)
    return logits, kv


def base_forward_prefix(net, ids, pos0=0, pk=None, pv=None):
    """The model over ids [B, T] at positions pos0..pos0+T-1, attending causally to the given
    pre-RoPE keys pk[l] and values pv[l] ([B, pos0, Hkv * D], one per layer) for positions
    0..pos0-1 and to its own keys/values from pos0 on. Keys of both kinds are rotated with the
    model's RoPE at their absolute positions. Returns logits [B, T, V]. Same arithmetic as
    model.py's forward (which it equals for pos0 == 0)."""
    cfg = net.cfg
    b, t = ids.shape
    h, hk, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    s = pos0 + t
    x = net.model.embed_tokens(ids)
    cos, sin = M.rope_cos_sin(cfg, torch.arange(s), x.dtype)
    cq, sq = cos[pos0:], sin[pos0:]
    # query i (absolute pos0 + i) sees keys 0..pos0 + i
    mask = torch.full((t, s), float("-inf"), dtype=x.dtype).triu(pos0 + 1)
    for li, layer in enumerate(net.model.layers):
        a = layer.self_attn
        hn = layer.input_layernorm(x)
        q = a.q_proj(hn)
        k = a.k_proj(hn)
        v = a.v_proj(hn)
        if pos0 > 0:
            k = torch.cat([pk[li], k], dim=1)
            v = torch.cat([pv[li], v], dim=1)
        q = q.view(b, t, h, d).transpose(1, 2)
        k = k.view(b, s, hk, d).transpose(1, 2)
        v = v.view(b, s, hk, d).transpose(1, 2)
        q = q * cq + M.rotate_half(q) * sq
        k = k * cos + M.rotate_half(k) * sin
        if hk != h:
            k = k.repeat_interleave(h // hk, dim=1)
            v = v.repeat_interleave(h // hk, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d)) + mask
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        y = (att @ v).transpose(1, 2).reshape(b, t, h * d)
        x = x + a.o_proj(y)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    x = net.model.norm(x)
    return x @ net.head_weight().t()


# ---------------------------------------------------------------------------- the predictor

class Predictor(nn.Module):
    """Per base layer l: K[l] = Ka[map[l]] Wk[l]^T + bk[l], V[l] likewise (nn.Linear)."""

    def __init__(self, base_layers, aux_layers, base_kv_dim, aux_kv_dim, layer_map):
        super().__init__()
        if len(layer_map) != base_layers or any(a < 0 or a >= aux_layers for a in layer_map):
            raise ValueError("bad layer map %s for %d base / %d aux layers" % (layer_map, base_layers, aux_layers))
        self.shape = (base_layers, aux_layers, base_kv_dim, aux_kv_dim)
        self.layer_map = list(layer_map)
        self.k = nn.ModuleList([nn.Linear(aux_kv_dim, base_kv_dim) for _ in range(base_layers)])
        self.v = nn.ModuleList([nn.Linear(aux_kv_dim, base_kv_dim) for _ in range(base_layers)])

    @classmethod
    def for_pair(cls, base, aux, layer_map):
        return cls(base.cfg.num_hidden_layers, aux.cfg.num_hidden_layers, kv_dim(base.cfg),
                   kv_dim(aux.cfg), layer_map)

    def forward(self, aux_kv):
        """aux_kv: [(k, v)] per aux layer ([B, T, Na]) -> (pk, pv): lists per base layer [B, T, Nb]."""
        pk = [self.k[l](aux_kv[a][0]) for l, a in enumerate(self.layer_map)]
        pv = [self.v[l](aux_kv[a][1]) for l, a in enumerate(self.layer_map)]
        return pk, pv

    def tensors(self):
        out = {}
        for l in range(self.shape[0]):
            for which, mods in (("k", self.k), ("v", self.v)):
                out["%s.%d.weight" % (which, l)] = mods[l].weight.detach().float().contiguous().clone()
                out["%s.%d.bias" % (which, l)] = mods[l].bias.detach().float().contiguous().clone()
        return out

    def set_tensors(self, t):
        with torch.no_grad():
            for l in range(self.shape[0]):
                for which, mods in (("k", self.k), ("v", self.v)):
                    mods[l].weight.copy_(t["%s.%d.weight" % (which, l)])
                    mods[l].bias.copy_(t["%s.%d.bias" % (which, l)])

    def metadata(self):
        lb, la, nb, na = self.shape
        return {"format": KVP_FORMAT, "key_space": KEY_SPACE,
                "layer_map": "[" + ", ".join(str(a) for a in self.layer_map) + "]",
                "base_layers": str(lb), "aux_layers": str(la),
                "base_kv_dim": str(nb), "aux_kv_dim": str(na)}

    def save(self, path):
        X.write_safetensors(path, self.tensors(), self.metadata())


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def load_predictor(path):
    meta = read_safetensors_header(path).get("__metadata__", {})
    if meta.get("key_space") != KEY_SPACE:
        raise SystemExit("%s: key_space %r is not %r" % (path, meta.get("key_space"), KEY_SPACE))
    lb, la = int(meta["base_layers"]), int(meta["aux_layers"])
    nb, na = int(meta["base_kv_dim"]), int(meta["aux_kv_dim"])
    p = Predictor(lb, la, nb, na, parse_layer_map(meta["layer_map"], lb, la))
    p.set_tensors(X.read_safetensors(path))
    return p


def check_pair(base, aux, pred):
    want = (base.cfg.num_hidden_layers, aux.cfg.num_hidden_layers, kv_dim(base.cfg), kv_dim(aux.cfg))
    if tuple(pred.shape) != want:
        raise SystemExit("predictor shape %s does not fit the pair %s" % (pred.shape, want))
    if base.cfg.vocab_size != aux.cfg.vocab_size:
        raise SystemExit("vocabulary sizes differ: %d vs %d" % (base.cfg.vocab_size, aux.cfg.vocab_size))


# ---------------------------------------------------------------------------- data

def train_dir_default():
    return os.environ.get("KC_TRAIN_DIR", "build/train")


def load_tokens_meta(train_dir):
    with open(os.path.join(train_dir, "tokens.json")) as f:
        return json.load(f)


def eval_tokens(train_dir, docs):
    """Concatenated tokens of the named evaluation documents (e.g. ["Persuasion"]) from
    <train_dir>/eval.bin; docs None: the whole evaluation split."""
    meta = load_tokens_meta(train_dir)
    data = np.fromfile(os.path.join(train_dir, "eval.bin"), dtype=np.uint16)
    parts = []
    for name, _source, start, end in meta["splits"]["eval"]["documents"]:
        if docs is None or name in docs:
            parts.append(data[start:end])
    if not parts:
        raise SystemExit("no evaluation documents named %s" % docs)
    return np.concatenate(parts).astype(np.int64)


def text_tokens(path, tokenizer_json):
    """Tokenizes a UTF-8 text file as tools/cli/kvp_data.c does (pieces of at most 1 MiB cut after
    a line break, no special tokens added)."""
    import bpe
    tok = bpe.Tokenizer(tokenizer_json)
    with open(path, "rb") as f:
        raw = f.read()
    out, pos, piece = [], 0, 1 << 20
    while pos < len(raw):
        end = min(len(raw), pos + piece)
        if end < len(raw):
            cut = raw.rfind(b"\n", pos, end)
            end = cut + 1 if cut >= pos else end
        out.extend(tok.encode(raw[pos:end].decode("utf-8")))
        pos = end
    return np.array(out, dtype=np.int64)


def read_ids(path):
    """Token ids separated by whitespace or commas; '#' starts a comment to the end of its line
    (as tools/cli/kvp_data.c reads them; models/tiny/heldout.ids has a comment header)."""
    with open(path) as f:
        text = " ".join(line.split("#", 1)[0] for line in f)
    return np.array([int(x) for x in text.replace(",", " ").split()], dtype=np.int64)


def write_ids(path, ids):
    with open(path, "w") as f:
        for i in range(0, len(ids), 32):
            f.write(" ".join(str(int(x)) for x in ids[i:i + 32]) + "\n")


# ---------------------------------------------------------------------------- evaluation

def eval_samples(tokens, prompt_len, cont_len, samples, bos):
    """cmd_eval.c's samples: [N, P + C] arrays of [BOS] + P + C - 1 text tokens, the N starts
    spread evenly over the tokens."""
    w = prompt_len + cont_len
    wt = w - (1 if bos is not None else 0)
    n = len(tokens)
    if n < wt:
        raise SystemExit("evaluation data: %d tokens, one sample needs %d" % (n, wt))
    rows = []
    for s in range(samples):
        start = s * (n - wt) // (samples - 1) if samples > 1 else 0
        seg = tokens[start:start + wt]
        rows.append(np.concatenate([[bos], seg]) if bos is not None else seg)
    return torch.from_numpy(np.stack(rows).astype(np.int64))


@torch.no_grad()
def predict_prefix(aux, pred, prompt_ids):
    """Aux over prompt_ids [B, n] -> the predicted base pre-RoPE K/V for those n positions."""
    _, akv = capture_kv(aux, prompt_ids)
    return pred(akv)


@torch.no_grad()
def evaluate(base, aux, pred, samples, prompt_len, cont_len, batch=16, greedy=True):
    """Mirror of `kvcast eval` on sample rows [N, P + C]: per mode mean continuation NLL (teacher
    forcing), first-token and greedy agreement with full; and the gap closed. pred None: only
    full and aux."""
    P, C = prompt_len, cont_len
    modes = ["full", "aux"] + (["predict"] if pred is not None else [])
    nll = {m: 0.0 for m in modes}
    first = {m: 0 for m in modes}
    gagree = {m: 0 for m in modes}
    n = samples.shape[0]
    for i in range(0, n, batch):
        x = samples[i:i + batch]
        inp, tgt = x[:, :-1], x[:, P:]
        runs = {}
        lg = base(inp)[:, P - 1:]
        runs["full"] = lg
        runs["aux"] = aux(inp)[:, P - 1:]
        if pred is not None:
            pk, pv = predict_prefix(aux, pred, x[:, :P - 1])
            runs["predict"] = base_forward_prefix(base, x[:, P - 1:-1], P - 1, pk, pv)
        for m, lg in runs.items():
            nll[m] += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="sum").item()
        if not greedy:
            continue
        outs = {}
        for m in modes:
            outs[m] = greedy_continue(base, aux, pred, m, x[:, :P], C,
                                      pk=pk if m == "predict" else None, pv=pv if m == "predict" else None)
        ref = outs["full"]
        for m in modes:
            eq = outs[m] == ref
            first[m] += int(eq[:, 0].sum())
            run = torch.cumprod(eq.long(), dim=1).sum(1)
            gagree[m] += int(run.sum())
    den = n * C
    res = {"modes": {}, "samples": n, "prompt_len": P, "cont_len": C}
    for m in modes:
        res["modes"][m] = {"nll": nll[m] / den, "ppl": math.exp(nll[m] / den)}
        if greedy:
            res["modes"][m]["first_token_agreement"] = first[m] / n
            res["modes"][m]["greedy_agreement"] = gagree[m] / den
    if pred is not None:
        na, nf, npd = (res["modes"][m]["nll"] for m in ("aux", "full", "predict"))
        res["gap_closed"] = (na - npd) / (na - nf) if na != nf else float("nan")
    return res


def greedy_continue(base, aux, pred, mode, prompt, n, pk=None, pv=None):
    """Greedy n tokens after prompt [B, P] in a mode (full recomputation of the mode's model over
    the tokens it computes itself; predict keeps the predicted prefix for positions 0..P-2)."""
    P = prompt.shape[1]
    seq = prompt
    out = []
    for _ in range(n):
        if mode == "full":
            lg = base(seq, last_only=True)[:, -1]
        elif mode == "aux":
            lg = aux(seq, last_only=True)[:, -1]
        else:
            lg = base_forward_prefix(base, seq[:, P - 1:], P - 1, pk, pv)[:, -1]
        nxt = lg.argmax(-1, keepdim=True)
        out.append(nxt)
        seq = torch.cat([seq, nxt], dim=1)
    return torch.cat(out, dim=1)


def format_eval(res):
    lines = ["%d samples, prompt %d tokens, continuation %d tokens"
             % (res["samples"], res["prompt_len"], res["cont_len"]),
             "%-8s %8s %9s %8s %8s" % ("mode", "nll", "ppl", "first", "greedy")]
    for m, r in res["modes"].items():
        lines.append("%-8s %8.4f %9.2f %8.3f %8.3f" % (m, r["nll"], r["ppl"], r.get("first_token_agreement", float("nan")),
                                                        r.get("greedy_agreement", float("nan"))))
    if "gap_closed" in res:
        lines.append("gap closed: %.1f%%" % (100.0 * res["gap_closed"]))
    return "\n".join(lines)
