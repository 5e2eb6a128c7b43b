#!/usr/bin/python3
"""Integration test of `--kv-dtype bf16` (issue 18 item 4) over real HTTP, against the embedded
tiny pair (models/tiny):
  1. The same --base-kv-mib buys twice the base KV blocks of half the bytes (the scheduler's
     start-up log line names the dtype).
  2. Greedy completions in full and predict mode (KV Prediction writes the predicted K/V into
     the bf16 base cache) succeed with the same number of tokens as on the f32 server; how many
     of the completions agree word for word is printed.
  3. A bad value (f16) is refused at start-up.
Bounded: two servers, a few requests, every HTTP call has a timeout.
usage: test_server_kv_bf16.py path/to/kvcast   (run from the source root)
"""
import json
import re
import subprocess
import sys

import kc_testlib as kc
from kc_testlib import fail

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BUNDLE = "models/tiny/kvcast-bundle.json"
ARGS = ["--bundle", BUNDLE, "--no-access-log", "--base-kv-mib", "8", "--aux-kv-mib", "8"]


def blocks(log):
    """(blocks, bytes per block, dtype) from the scheduler's start-up line."""
    m = re.search(r"scheduler: (\d+) base KV blocks of \d+ tokens \((\d+) bytes each, (\w+)\)",
                  log)
    if m is None:
        fail("no scheduler start-up line in the log:\n" + log[-2000:])
    return int(m.group(1)), int(m.group(2)), m.group(3)


def complete(srv, prompt, mode):
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "prefill_mode": mode}
    status, raw = srv.post(body, timeout=120)
    if status != 200:
        fail("%s request got %d: %s" % (mode, status, raw[:400]))
    resp = json.loads(raw)
    return resp["choices"][0]["text"], resp["usage"]["completion_tokens"]


def ids(seed, n):
    return [(seed * 131 + 7 * i + (i * i) % 13) % 4000 + 1 for i in range(n)]


def main():
    prompts = [ids(s, 200 + 50 * s) for s in range(1, 4)]
    results = {}
    info = {}
    for dtype in ("f32", "bf16"):
        srv = kc.Server(KVCAST, ARGS + ["--kv-dtype", dtype])
        try:
            out = []
            for p in prompts:
                for mode in ("full", "predict"):
                    out.append(complete(srv, p, mode))
            results[dtype] = out
        finally:
            log = srv.finish()
        info[dtype] = blocks(log)
    (nf, bf, df), (nb, bb, db) = info["f32"], info["bf16"]
    print("f32: %d blocks of %d bytes; bf16: %d blocks of %d bytes" % (nf, bf, nb, bb))
    if df != "f32" or db != "bf16":
        fail("the start-up lines name %s and %s" % (df, db))
    if bb * 2 != bf or nb < 2 * nf - 1:
        fail("bf16 blocks are not half the bytes / twice the count")
    same = 0
    for (tf, cf), (tb, cb) in zip(results["f32"], results["bf16"]):
        if cf != cb:
            fail("completion token counts differ: f32 %d, bf16 %d" % (cf, cb))
        same += tf == tb
    print("greedy completions equal on f32 and bf16 KV: %d/%d" % (same, len(results["f32"])))
    # A bad value is refused before anything starts.
    r = subprocess.run([KVCAST, "serve", "--port", "0", "--kv-dtype", "f16"] + ARGS,
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 0 or "kv-dtype" not in r.stderr:
        fail("--kv-dtype f16 was not refused (status %d): %s" % (r.returncode, r.stderr[-500:]))
    print("ok")


if __name__ == "__main__":
    main()
