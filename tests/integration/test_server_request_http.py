#!/usr/bin/python3
"""Integration test of /v1/completions request handling over real HTTP (issue 15, items 4,
11, 15), against `kvcast serve` on the shipped tiny bundle (real BPE tokenizer, 2048-token
context, aux + predictor so all three prefill modes run):

  - /health stays fast while 4 MiB text prompts are tokenized (off the loop thread);
  - a 4 MiB prompt against the context fails fast with 400 context_length_exceeded;
  - clients that go away while their prompt is tokenized, and a shutdown with tokenize jobs
    in flight, leave no crash, leak or hang;
  - the timings relations of scheduler/scheduler.h hold in full, predict and auto mode,
    streaming and not;
  - vLLM fields: stop_token_ids, min_tokens, logit_bias, add_special_tokens,
    truncate_prompt_tokens, return_tokens_as_token_ids; unknown fields ignored with one
    warning per name and a counter; output-contract fields refused with 400.

Usage: test_server_request_http.py KVCAST  (run from the source root). Bounded: every
request has a timeout and the whole test takes well under a minute on 2 cores (ASan).
"""
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
import health_under_tokenize as hut  # noqa: E402
from kc_testlib import FAILS, expect as check, sanitizer_report  # noqa: E402

EPS_MS = 0.01  # JSON carries 9 significant digits


def post(port, obj, timeout=60):
    return hut.post_json(port, obj, timeout)


def sse(port, obj, timeout=60):
    """Streams a completion; returns the parsed chunks (without [DONE])."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/completions", body=json.dumps(obj).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    chunks = []
    for line in data.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return r.status, chunks


def check_timings(t, label, mode=None):
    if not check(isinstance(t, dict), "%s: timings missing" % label):
        return
    q, p, ttft = t["queue_ms"], t["prefill_ms"], t["ttft_ms"]
    check(ttft >= q + p - EPS_MS, "%s: ttft_ms %.4f < queue_ms + prefill_ms = %.4f" %
          (label, ttft, q + p))
    check(abs(ttft - (q + p)) <= 0.05, "%s: ttft_ms %.4f != queue_ms + prefill_ms %.4f" %
          (label, ttft, q + p))
    parts = t["aux_ms"] + t["predict_ms"] + t["base_first_step_ms"]
    check(parts <= p + EPS_MS, "%s: aux+predict+base_first_step %.4f > prefill_ms %.4f" %
          (label, parts, p))
    check(min(q, p, ttft, t["decode_ms"], t["tokenize_ms"]) >= 0, "%s: negative timing %r" %
          (label, t))
    check(p > 0 and ttft > 0, "%s: zero prefill/ttft with tokens generated: %r" % (label, t))
    if t["prefill_mode"] == "full":
        check(t["aux_ms"] == 0 and t["predict_ms"] == 0, "%s: full mode with aux/predict "
              "time %r" % (label, t))
    else:
        check(t["aux_ms"] > 0 and t["base_first_step_ms"] > 0, "%s: predict mode without "
              "aux/base step time %r" % (label, t))
    if mode is not None:
        check(t["prefill_mode"] == mode, "%s: prefill_mode %s, want %s" %
              (label, t["prefill_mode"], mode))


def test_timings(port):
    prompt = "In the beginning God created the heaven and the earth. " * 6
    for mode in ("full", "predict", "auto"):
        for i in range(2):  # the second run of a mode has warm caches / estimates
            st, out, _ = post(port, {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                     "ignore_eos": True, "prefill_mode": mode})
            if check(st == 200, "timings %s: status %d %r" % (mode, st, out)):
                check_timings(out.get("timings"), "non-stream %s #%d" % (mode, i),
                              None if mode == "auto" else mode)
        st, chunks = sse(port, {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                "ignore_eos": True, "prefill_mode": mode, "stream": True})
        final = [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
        if check(st == 200 and len(final) == 1, "stream %s: status %d, %d final chunks" %
                 (mode, st, len(final))):
            check_timings(final[0].get("timings"), "stream %s" % mode,
                          None if mode == "auto" else mode)


def token_ids(out):
    toks = out["choices"][0]["logprobs"]["tokens"]
    ids = []
    for t in toks:
        m = re.fullmatch(r"token_id:(\d+)", t)
        check(m is not None, "return_tokens_as_token_ids: token %r" % t)
        ids.append(int(m.group(1)) if m else -1)
    return ids


def test_fields(port, log_path):
    base = {"prompt": "And God said, Let there be light", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True}
    st, out, _ = post(port, base)
    if not check(st == 200, "greedy: %d %r" % (st, out)):
        return
    ids = token_ids(out)
    for top in out["choices"][0]["logprobs"]["top_logprobs"]:
        check(all(k.startswith("token_id:") for k in top), "top_logprobs keys %r" % top)
    check(len(ids) == 8, "greedy: %d tokens" % len(ids))

    # stop_token_ids: ends at the first occurrence, stop_reason is the id, token counted.
    target = ids[2]
    st, out, _ = post(port, dict(base, stop_token_ids=[target]))
    ch = out["choices"][0] if st == 200 else {}
    check(st == 200 and ch.get("finish_reason") == "stop" and ch.get("stop_reason") == target,
          "stop_token_ids: %d %r" % (st, ch))
    if st == 200:
        check(out["usage"]["completion_tokens"] == ids.index(target) + 1,
              "stop_token_ids: %d tokens, want %d" % (out["usage"]["completion_tokens"],
                                                      ids.index(target) + 1))

    # min_tokens: the stop token cannot come as one of the first min_tokens tokens.
    st, out, _ = post(port, dict(base, stop_token_ids=[ids[0]], min_tokens=3))
    if check(st == 200, "min_tokens: %d %r" % (st, out)):
        got = token_ids(out)
        check(ids[0] not in got[:3], "min_tokens: stop token among the first 3: %r" % got)
        check(out["usage"]["completion_tokens"] > 3, "min_tokens: only %d tokens" %
              out["usage"]["completion_tokens"])
    st, out, _ = post(port, dict(base, stop_token_ids=[ids[0]], min_tokens=8))
    check(st == 200 and out["choices"][0]["finish_reason"] == "length" and
          out["usage"]["completion_tokens"] == 8, "min_tokens = max_tokens: %r" % (out,))

    # logit_bias: -100 removes the greedy first token, +100 forces a token everywhere.
    st, out, _ = post(port, dict(base, logit_bias={str(ids[0]): -100}))
    check(st == 200 and token_ids(out)[0] != ids[0], "logit_bias -100: %r" % (out,))
    st, out, _ = post(port, dict(base, logit_bias={"42": 100}))
    check(st == 200 and token_ids(out) == [42] * 8, "logit_bias +100: %r" % (out,))
    # ... and the reported logprobs stay the model's (not the biased distribution).
    if st == 200:
        check(out["choices"][0]["logprobs"]["token_logprobs"][0] < -0.01,
              "logit_bias: logprob of the forced token is ~0: %r" % out["choices"][0]["logprobs"])

    # add_special_tokens: the tokenizer adds BOS by default.
    p = {"prompt": "hello world", "max_tokens": 1}
    st1, o1, _ = post(port, p)
    st2, o2, _ = post(port, dict(p, add_special_tokens=False))
    check(st1 == 200 and st2 == 200 and
          o1["usage"]["prompt_tokens"] == o2["usage"]["prompt_tokens"] + 1,
          "add_special_tokens: %r / %r" % (o1.get("usage"), o2.get("usage")))
    # /tokenize (also encoded off the loop thread) agrees with the completion's count.
    st, tk, _ = hut.request(port, "POST", "/tokenize",
                            json.dumps({"prompt": "hello world"}).encode())
    check(st == 200 and tk.get("count") == o1["usage"]["prompt_tokens"] and
          len(tk.get("tokens", [])) == tk.get("count") and tk.get("max_model_len") == 2048,
          "/tokenize: %d %r" % (st, tk))
    st, tk, _ = hut.request(port, "POST", "/tokenize", b'{"prompt": 5}')
    check(st == 400, "/tokenize bad body: %d %r" % (st, tk))
    # truncate_prompt_tokens keeps the last k tokens, for text and id prompts.
    st, out, _ = post(port, dict(p, prompt="one two three four five six seven",
                                 truncate_prompt_tokens=3))
    check(st == 200 and out["usage"]["prompt_tokens"] == 3, "truncate text: %r" % (out,))
    st, out, _ = post(port, dict(p, prompt=list(range(5, 3005)), truncate_prompt_tokens=7))
    check(st == 200 and out["usage"]["prompt_tokens"] == 7, "truncate ids: %r" % (out,))

    # Unknown fields: accepted, counted, warned about once per name.
    for _ in range(2):
        st, out, _ = post(port, dict(p, zz_unknown_field=1, priority=0))
        check(st == 200, "unknown field: %d %r" % (st, out))
    st, text, _ = hut.request(port, "GET", "/metrics")
    m = re.search(r"^kvcast:request_unknown_fields_total\{[^}]*\} (\d+)$", text, re.M)
    check(m is not None and int(m.group(1)) == 4, "unknown fields counter: %r" %
          (m.group(0) if m else None))
    log = open(log_path).read()
    check(log.count("'zz_unknown_field'") == 1, "warning once per unknown name: %d lines" %
          log.count("'zz_unknown_field'"))

    # Fields whose omission would change the output contract: 400 naming the field.
    for field, value in (("response_format", {"type": "json_object"}),
                         ("guided_json", {"type": "object"}), ("guided_regex", "a+"),
                         ("guided_choice", ["a", "b"]), ("guided_grammar", "root ::= x"),
                         ("use_beam_search", True), ("best_of", 2)):
        st, out, _ = post(port, dict(p, **{field: value}))
        err = out.get("error", {}) if isinstance(out, dict) else {}
        check(st == 400 and err.get("param") == field and "not supported" in err.get(
            "message", ""), "%s: %d %r" % (field, st, out))
    st, out, _ = post(port, dict(p, response_format={"type": "text"}, use_beam_search=False))
    check(st == 200, "response_format text: %d %r" % (st, out))


def test_tokenize_load(port):
    # A 4 MiB prompt that cannot fit fails fast: encoding stops at the context limit.
    big = hut.prompt_text((4 << 20) - 200)
    st, out, dt = post(port, {"prompt": big, "max_tokens": 1})
    check(st == 400 and out["error"]["code"] == "context_length_exceeded",
          "4 MiB prompt: %d %.200r" % (st, out))
    check(dt < 5.0, "4 MiB prompt took %.2f s to be refused" % dt)
    print("4 MiB over-context prompt refused in %.3f s" % dt, flush=True)

    # /health while 4 MiB prompts are tokenized (truncate_prompt_tokens: the whole text is
    # encoded). Not a speed target (tools/bench/health_under_tokenize.py measures that): a
    # bound that a loop thread blocked by a 4 MiB encode (seconds) breaks, and that an ASan
    # build on 2 cores shared with other work (p99 up to ~300 ms seen) keeps.
    res = hut.measure(port, seconds=3.0, clients=4, prompt_mib=4, probe_ms=10)
    print("health under tokenize:", json.dumps(res), flush=True)
    check(res["n_errors"] == 0 and res["completions"] > 0, "tokenize load: %r" % res)
    check(res["health_p99_ms"] < 1000, "/health p99 %.1f ms >= 1000 ms" % res["health_p99_ms"])
    # Short requests do not queue behind the 4 MiB ones (their prepare jobs skip the cap).
    check(res["small_completions"] > 0 and res["small_completion_max_ms"] < 1500,
          "short completion under tokenize load: %r ms" % res["small_completion_max_ms"])

    # Clients that go away while their prompt waits or is being tokenized.
    body = json.dumps({"prompt": big, "max_tokens": 1, "truncate_prompt_tokens": 8}).encode()
    head = ("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            "application/json\r\nContent-Length: %d\r\n\r\n" % len(body)).encode()
    for delay in (0.0, 0.05, 0.3, 0.3):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(head + body)
        time.sleep(delay)
        s.close()
    st, out, dt = hut.request(port, "GET", "/health", timeout=30)
    check(st == 200, "health after abandoned requests: %d" % st)
    st, out, _ = post(port, {"prompt": "still serving", "max_tokens": 2})
    check(st == 200, "completion after abandoned requests: %d %r" % (st, out))


def test_shutdown_while_tokenizing(kvcast, tmp):
    p, port, _, log_path = hut.start_server(kvcast, [
        "--bundle", "models/tiny/kvcast-bundle.json", "--max-body-bytes", str(8 << 20),
        "--shutdown-timeout-s", "2", "--strict-fields"], tmp)
    # --strict-fields (opt-in): an unknown field is a 400 naming it; known ones still pass.
    st, out, _ = post(port, {"prompt": "hi", "max_tokens": 1, "zz_unknown_field": 1})
    check(st == 400 and out.get("error", {}).get("param") == "zz_unknown_field",
          "strict unknown field: %d %r" % (st, out))
    st, out, _ = post(port, {"prompt": "hi", "max_tokens": 1, "min_tokens": 1,
                             "stop_token_ids": [3], "add_special_tokens": False})
    check(st == 200, "strict known fields: %d %r" % (st, out))
    body = {"prompt": hut.prompt_text((4 << 20) - 200), "max_tokens": 1,
            "truncate_prompt_tokens": 8}
    results = []

    def client():
        try:
            results.append(post(port, body, timeout=60)[0])
        except Exception as e:  # noqa: BLE001 - a closed connection is a fine outcome
            results.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.4)  # bodies sent, jobs queued or running
    t0 = time.time()
    rc = hut.stop_server(p, timeout=60)
    for t in threads:
        t.join(timeout=60)
    check(rc == 0, "shutdown with tokenize jobs in flight: exit status %r" % rc)
    check(time.time() - t0 < 30, "shutdown took %.1f s" % (time.time() - t0))
    log = open(log_path).read()
    check(not sanitizer_report(log), "sanitizer report at shutdown:\n" + log[-3000:])
    print("shutdown with tokenize jobs: exit %r, clients saw %r" % (rc, results), flush=True)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    kvcast = os.path.abspath(sys.argv[1])
    os.chdir(ROOT)
    tmp = tempfile.mkdtemp(prefix="kc_reqhttp_")
    p = None
    try:
        p, port, _, log_path = hut.start_server(kvcast, [
            "--bundle", "models/tiny/kvcast-bundle.json", "--max-body-bytes", str(8 << 20),
            "--max-connections", "64"], tmp)
        test_fields(port, log_path)
        test_timings(port)
        test_tokenize_load(port)
        rc = hut.stop_server(p)
        p = None
        check(rc == 0, "server exit status %r" % rc)
        log = open(log_path).read()
        check(not sanitizer_report(log), "sanitizer report:\n" + log[-3000:])
        os.makedirs(os.path.join(tmp, "2"))
        test_shutdown_while_tokenizing(kvcast, os.path.join(tmp, "2"))
    finally:
        if p is not None:
            hut.stop_server(p)
        if FAILS:
            for name in ("server.log", "2/server.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    print("---- %s (tail) ----\n%s" % (name, open(path).read()[-2000:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d failure(s)" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
