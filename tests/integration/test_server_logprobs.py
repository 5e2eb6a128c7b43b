#!/usr/bin/python3
"""Integration test of `kvcast serve` for issue 15 items 1, 12 and 13, over real HTTP.

  1. Non-finite logits: the request that used to read before the sampler's candidate buffer
     ({"prompt":"the LORD spake","temperature":1,"repetition_penalty":1e-40}) is answered and
     the server lives on; models whose logits turn NaN (at the first token, on the prefill
     worker, or at the second, in a decode step) fail each request with a clear 500 (an SSE
     error event when streaming) and the server keeps serving.
 12. Logprobs parity with vLLM: the sampled token is always in top_logprobs (N + 1 entries at
     most), logprobs goes to 20, logprobs 0 gives the sampled token's; echo + logprobs gives
     prompt logprobs (the first null), max_tokens 0 + echo scores the prompt, and its NLL equals
     `kvcast eval`'s full-mode NLL on the same tokens.
 13. n > 1 with a seed: seeds 1 and 2 share no choice, and a seed replays its choices.

Model: tests/golden/llama_gqa (vocab 128, 128 positions), tokenizer tests/fixtures/tiny_tokenizer.
usage: test_server_logprobs.py path/to/kvcast   (run from the source root)
"""
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import kc_testlib as kc
from kc_testlib import check, fail

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
MODEL = "tests/golden/llama_gqa"
TOKENIZER = "tests/fixtures/tiny_tokenizer"
DTYPE = ["--prefill-dtype", "f32", "--decode-dtype", "f32"]


class Server(kc.Server):
    def __init__(self, model, tmp, name):
        super().__init__(KVCAST, ["--model", model, "--tokenizer", TOKENIZER, "--base-kv-mib",
                                  "2", "--served-model-name", "tiny", "--no-access-log"] + DTYPE,
                         os.path.join(tmp, name + ".log"), name="server on " + model)

    def complete(self, body):
        status, raw = self.post(body)
        try:
            return status, json.loads(raw)
        except ValueError:
            fail("non-JSON answer %d: %r" % (status, raw[:500]))

    def stream(self, body):
        """Returns (status, [parsed data events], saw [DONE])."""
        status, raw = self.post(dict(body, stream=True))
        events, done = [], False
        for block in raw.split("\n\n"):
            if not block.startswith("data: "):
                continue
            payload = block[len("data: "):]
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
        return status, events, done

    def alive(self):
        if self.proc.poll() is not None:
            fail("server exited with %s; log:\n%s" % (self.proc.returncode,
                                                     self.log_text()[-3000:]))
        status, _, _ = self.request("GET", "/health")
        check(status == 200, "/health answers %d" % status)

    def stop(self):
        """Stops the server and fails on a sanitizer report in its log."""
        self.finish(clean_exit=False)


# ---- item 1: non-finite logits ----

def test_example_request_is_answered_and_server_lives(srv):
    body = {"prompt": "the LORD spake", "temperature": 1, "repetition_penalty": 1e-40,
            "max_tokens": 8, "seed": 5}
    status, o = srv.complete(body)
    check(status == 200, "example request: %d %s" % (status, o))
    ch = o["choices"][0]
    check(isinstance(ch["text"], str) and ch["finish_reason"] in ("length", "stop"),
          "example request: bad choice %s" % ch)
    status, events, done = srv.stream(dict(body, logprobs=3))
    check(status == 200 and done and events, "example stream: %d, %d events" % (status,
                                                                              len(events)))
    for ev in events:
        check("error" not in ev, "example stream: error event %s" % ev)
        lp = ev["choices"][0]["logprobs"] if ev["choices"] else None
        for x in (lp or {}).get("token_logprobs", []):
            check(x is not None and math.isfinite(x) and x <= 0, "logprob %r" % x)
    # A penalty that rounds to 0 in float is refused up front, naming the field.
    status, o = srv.complete(dict(body, repetition_penalty=1e-50))
    check(status == 400 and o["error"]["param"] == "repetition_penalty",
          "repetition_penalty 1e-50: %d %s" % (status, o))
    srv.alive()
    status, o = srv.complete({"prompt": [5, 6, 7], "max_tokens": 3, "ignore_eos": True})
    check(status == 200 and o["usage"]["completion_tokens"] == 3, "normal request after: %s" % o)


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    tensors = {}
    for name, t in hdr.items():
        a, b = t["data_offsets"]
        tensors[name] = [t["dtype"], t["shape"], bytearray(blob[8 + n + a:8 + n + b])]
    return meta, tensors


def write_model(dst, tensors, meta, config):
    os.makedirs(dst)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    hdr, off = {}, 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, data in tensors.values():
            f.write(data)


def nan_f32(n):
    return bytearray(struct.pack("<f", float("nan")) * n)


def test_nan_model_fails_requests_cleanly(tmp):
    """Two broken models. nan_model: the final norm weight is NaN, so every logit is NaN and
    the first sample (on the prefill worker) fails. nan_decode: untied, an all-zero lm head
    (every logit 0: greedy picks token 0) and a NaN embedding for token 0, so the prefill
    samples token 0 fine and the decode step that feeds it fails."""
    meta, tensors = read_safetensors(os.path.join(MODEL, "model.safetensors"))
    config = json.load(open(os.path.join(MODEL, "config.json")))
    norm = tensors["model.norm.weight"]
    check(norm[0] == "F32", "norm weight dtype %s" % norm[0])
    bad = dict(tensors)
    bad["model.norm.weight"] = [norm[0], norm[1], nan_f32(len(norm[2]) // 4)]
    write_model(os.path.join(tmp, "nan_model"), bad, meta, config)
    emb = tensors["model.embed_tokens.weight"]
    V, C = emb[1]
    row0 = nan_f32(C) + emb[2][4 * C:]
    dec = dict(tensors)
    dec["model.embed_tokens.weight"] = [emb[0], emb[1], row0]
    dec["lm_head.weight"] = ["F32", [V, C], bytearray(4 * V * C)]
    write_model(os.path.join(tmp, "nan_decode"), dec, meta,
                dict(config, tie_word_embeddings=False))

    srv = Server(os.path.join(tmp, "nan_decode"), tmp, "nan_decode")
    try:
        body = {"prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0}
        status, o = srv.complete(dict(body, max_tokens=1, logprobs=1))
        check(status == 200 and o["choices"][0]["logprobs"]["token_logprobs"][0] is not None,
              "nan_decode, one token (prefill only): %d %s" % (status, o))
        status, o = srv.complete(body)
        msg = o.get("error", {}).get("message", "")
        check(status == 500 and "non-finite" in msg and "generated token 1" in msg,
              "nan_decode: %d %s" % (status, o))
        status, events, done = srv.stream(dict(body, n=2))
        errs = [e for e in events if "error" in e]
        check(status == 200 and done and len(errs) == 2, "nan_decode stream: %s" % events)
        srv.alive()
    finally:
        srv.stop()
    srv = Server(os.path.join(tmp, "nan_model"), tmp, "nan")
    try:
        for body in ({"prompt": [5, 6, 7], "max_tokens": 4},
                     {"prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0},
                     {"prompt": [5, 6, 7], "max_tokens": 0, "echo": True, "logprobs": 1},
                     {"prompt": "the LORD spake", "n": 2, "logprobs": 2}):
            status, o = srv.complete(body)
            check(status == 500 and "non-finite" in o.get("error", {}).get("message", ""),
                  "NaN model %s: %d %s" % (body, status, o))
            status, events, done = srv.stream(body)
            errs = [e for e in events if "error" in e]
            check(status == 200 and done and errs and "non-finite" in errs[0]["error"]["message"],
                  "NaN model stream %s: %d %s" % (body, status, events))
            srv.alive()
        status, raw, _ = srv.request("GET", "/metrics")
        check(status == 200, "/metrics after NaN requests: %d" % status)
    finally:
        srv.stop()


# ---- item 12: logprobs ----

def tops_contain_token(lp, n):
    for tok, x, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        check(top is not None and tok in top, "sampled token %r not in top_logprobs %s" % (tok, top))
        check(abs(top[tok] - x) < 1e-6, "top_logprobs[%r] = %r, token_logprob %r" % (tok, top[tok], x))
        check(len(top) <= n + 1, "%d entries for logprobs=%d" % (len(top), n))
        check(all(v <= 1e-6 for v in top.values()), "positive logprob in %s" % top)


def test_logprobs_include_sampled_token_and_reach_20(srv):
    base = {"prompt": [9, 10, 11, 12], "max_tokens": 6, "ignore_eos": True, "seed": 3,
            "temperature": 1.5}
    status, o = srv.complete(dict(base, logprobs=0))
    check(status == 200, "logprobs 0: %d %s" % (status, o))
    lp = o["choices"][0]["logprobs"]
    check(len(lp["tokens"]) == 6 and all(len(t) == 1 for t in lp["top_logprobs"]),
          "logprobs 0 must give exactly the sampled token: %s" % lp["top_logprobs"])
    tops_contain_token(lp, 0)
    status, o = srv.complete(dict(base, logprobs=20))
    check(status == 200, "logprobs 20: %d %s" % (status, o))
    lp = o["choices"][0]["logprobs"]
    tops_contain_token(lp, 20)
    check(all(len(t) >= 20 for t in lp["top_logprobs"]), "logprobs 20 gave fewer entries")
    status, o = srv.complete(dict(base, logprobs=21))
    check(status == 400 and o["error"]["param"] == "logprobs", "logprobs 21: %d" % status)
    # Greedy: the token is the top entry.
    status, o = srv.complete(dict(base, temperature=0, logprobs=5))
    lp = o["choices"][0]["logprobs"]
    for tok, top in zip(lp["tokens"], lp["top_logprobs"]):
        check(max(top, key=top.get) == tok, "greedy token %r is not the top of %s" % (tok, top))
    # Streaming chunks carry the same shape.
    status, events, done = srv.stream(dict(base, logprobs=2))
    n = 0
    for ev in events:
        lp = ev["choices"][0]["logprobs"] if ev["choices"] else None
        if lp:
            tops_contain_token(lp, 2)
            n += len(lp["tokens"])
    check(done and n == 6, "stream logprobs: %d tokens" % n)


def kvcast_eval_nll(tmp, ids, p):
    path = os.path.join(tmp, "ids.txt")
    with open(path, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    out = subprocess.run([KVCAST, "eval", "--base", MODEL, "--aux", MODEL, "--data", path, "--ids",
                          "--no-bos", "--prompt-len", str(p), "--cont-len", str(len(ids) - p),
                          "--samples", "1", "--dtype", "f32", "--threads", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    check(out.returncode == 0, "kvcast eval failed: %s" % out.stderr)
    return json.loads(out.stdout)["modes"]["full"]["nll"]


def test_prompt_nll_matches_kvcast_eval_full_mode(srv, tmp):
    rng = random.Random(15)
    P, C = 40, 24
    ids = [rng.randrange(3, 128) for _ in range(P + C)]
    # lm-eval-harness loglikelihood: echo, logprobs, max_tokens 0.
    status, o = srv.complete({"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1,
                              "temperature": 0})
    check(status == 200, "score prompt: %d %s" % (status, o))
    ch = o["choices"][0]
    lp = ch["logprobs"]
    check(len(lp["tokens"]) == P + C, "%d prompt positions, want %d" % (len(lp["tokens"]), P + C))
    check(lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None,
          "the first prompt position must be null")
    check(all(x is not None and x <= 0 for x in lp["token_logprobs"][1:]), "bad prompt logprobs")
    check(o["usage"]["completion_tokens"] == 0 and ch["finish_reason"] == "length",
          "max_tokens 0 generated: %s" % o["usage"])
    offs = lp["text_offset"]
    check(all(a <= b for a, b in zip(offs, offs[1:])), "text_offset not monotonic: %s" % offs)
    tops_contain_token({k: v[1:] for k, v in lp.items()}, 1)
    nll_http = -sum(lp["token_logprobs"][P:]) / C
    nll_eval = kvcast_eval_nll(tmp, ids, P)
    diff = abs(nll_http - nll_eval)
    print("prompt NLL over HTTP %.6f, kvcast eval full %.6f, diff %.2e" % (nll_http, nll_eval, diff))
    check(diff < 1e-4, "prompt NLL %.6f differs from kvcast eval's %.6f" % (nll_http, nll_eval))
    # Prompt logprobs with generation after them, forced full prefill even when predict asked.
    status, o = srv.complete({"prompt": ids[:10], "max_tokens": 3, "echo": True, "logprobs": 2,
                              "ignore_eos": True, "prefill_mode": "predict"})
    check(status == 200, "echo + logprobs + generation: %d %s" % (status, o))
    lp = o["choices"][0]["logprobs"]
    check(len(lp["tokens"]) == 13 and lp["token_logprobs"][0] is None and
          all(x is not None for x in lp["token_logprobs"][1:]), "echo + generation: %s" % lp)
    check(o["timings"]["prefill_mode"] == "full", "prompt logprobs ran %s" % o["timings"])
    for i in range(1, 10):
        check(abs(lp["token_logprobs"][i] - o2_prompt_lp(srv, ids, i)) < 1e-5,
              "prompt logprob %d depends on the request" % i)
    # Stream: the echo chunk carries the prompt's logprobs, then one chunk per token.
    status, events, done = srv.stream({"prompt": ids[:10], "max_tokens": 2, "echo": True,
                                       "logprobs": 1, "ignore_eos": True})
    first = events[0]["choices"][0]
    check(done and first["logprobs"] and len(first["logprobs"]["tokens"]) == 10 and
          first["logprobs"]["token_logprobs"][0] is None and first["text"] != "",
          "stream echo chunk: %s" % first)
    # Text prompt: echo text comes back, offsets count characters of the token texts.
    status, o = srv.complete({"prompt": "the LORD spake", "max_tokens": 0, "echo": True,
                              "logprobs": 0})
    ch = o["choices"][0]
    check(status == 200 and ch["text"] == "the LORD spake" and
          ch["logprobs"]["token_logprobs"][0] is None, "text prompt echo: %s" % o)
    # max_tokens 0 needs echo.
    status, o = srv.complete({"prompt": [1, 2], "max_tokens": 0})
    check(status == 400 and o["error"]["param"] == "max_tokens", "max_tokens 0: %d" % status)


_lp_cache = {}


def o2_prompt_lp(srv, ids, i):
    key = tuple(ids[:10])
    if key not in _lp_cache:
        status, o = srv.complete({"prompt": ids[:10], "max_tokens": 0, "echo": True,
                                  "logprobs": 0})
        _lp_cache[key] = o["choices"][0]["logprobs"]["token_logprobs"]
    return _lp_cache[key][i]


# ---- item 13: n > 1 with a seed ----

def test_seeded_choices_do_not_overlap_across_seeds(srv):
    def run(seed):
        status, o = srv.complete({"prompt": [20, 21, 22], "n": 8, "seed": seed, "max_tokens": 8,
                                  "temperature": 1, "ignore_eos": True, "logprobs": 0})
        check(status == 200, "n=8 seed=%d: %d %s" % (seed, status, o))
        return [tuple(c["logprobs"]["tokens"]) for c in sorted(o["choices"],
                                                                key=lambda c: c["index"])]
    a, b, a2 = run(1), run(2), run(1)
    check(a == a2, "seed 1 does not replay its choices")
    shared = len(set(a) & set(b))
    print("n=8: seed 1 and seed 2 share %d of 8 choices" % shared)
    check(shared == 0, "seed 1 and seed 2 share %d of 8 choices" % shared)
    check(len(set(a)) == 8, "choices of one seeded request repeat: %s" % a)


def main():
    tmp = tempfile.mkdtemp(prefix="kc_lp_")
    srv = None
    passed = 0
    try:
        srv = Server(MODEL, tmp, "serve")
        for t in (test_example_request_is_answered_and_server_lives,
                  test_logprobs_include_sampled_token_and_reach_20,
                  lambda s: test_prompt_nll_matches_kvcast_eval_full_mode(s, tmp),
                  test_seeded_choices_do_not_overlap_across_seeds):
            t(srv)
            passed += 1
        srv.alive()
        srv.stop()
        srv = None
        test_nan_model_fails_requests_cleanly(tmp)
        passed += 1
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, 0 failed" % passed)


if __name__ == "__main__":
    main()
