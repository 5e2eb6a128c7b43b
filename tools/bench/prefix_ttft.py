#!/usr/bin/python3
"""prefix_ttft.py — the prefix cache's TTFT over real HTTP (issue 17's bar): for each of
--pairs fresh shared prefixes of --prefix tokens, a cold request (prefix + suffix A) and then a
warm one (prefix + suffix B), both streamed, one at a time. TTFT is measured by the client: from
sending the request to the first streamed token. Prints one line per pair and the medians, and
the ratio warm / cold; --json FILE writes them.

Starts `kvcast serve` itself (on a free loopback port) with the given server arguments, so the
same command measures any model pair or setting side by side:

  /usr/bin/python3 tools/bench/prefix_ttft.py --kvcast build/release/tools/kvcast \\
      --prefix 1000 --suffix 24 --mode full -- --bundle models/tiny/kvcast-bundle.json

Standard library only.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_ready import start_port  # noqa: E402


def stream_ttft(port, prompt, mode, max_tokens):
    """Client-side TTFT (ms) of one streamed completion, and its final usage."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "prefill_mode": mode}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit("HTTP %d: %s" % (r.status, r.read()[:300]))
    ttft, usage = None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ttft is None and ev.get("choices") and ev["choices"][0].get("text") is not None:
            ttft = (time.perf_counter() - t0) * 1e3
        if ev.get("usage"):
            usage = ev["usage"]
    c.close()
    return ttft, usage


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kvcast", default="build/release/tools/kvcast")
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--suffix", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--mode", default="full", help="prefill_mode of both requests")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000, help="token ids are drawn below this")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("server_args", nargs="*", help="after --: arguments of kvcast serve")
    a = ap.parse_args()
    proc = subprocess.Popen([a.kvcast, "serve", "--host", "127.0.0.1", "--port", "0",
                             "--no-access-log"] + a.server_args,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    port = start_port(proc, timeout=300)
    if port is None:
        raise SystemExit("the server did not start")
    rows = []
    try:
        def ids(seed, n):
            return [(seed * 7919 + 31 * i + (i * i) % 97) % (a.vocab - 1) + 1 for i in range(n)]

        stream_ttft(port, ids(999, 64), a.mode, 1)  # warm-up: first-use costs out of the way
        for k in range(a.pairs):
            prefix = ids(1000 + k, a.prefix)
            cold, cu = stream_ttft(port, prefix + ids(5000 + k, a.suffix), a.mode, a.max_tokens)
            warm, wu = stream_ttft(port, prefix + ids(9000 + k, a.suffix), a.mode, a.max_tokens)
            cached = (wu or {}).get("prompt_tokens_details", {}).get("cached_tokens")
            rows.append({"cold_ms": cold, "warm_ms": warm, "cached_tokens": cached,
                         "prompt_tokens": (wu or {}).get("prompt_tokens")})
            print("pair %d: cold %.1f ms, warm %.1f ms (ratio %.3f), cached %s of %s" %
                  (k, cold, warm, warm / cold, cached, rows[-1]["prompt_tokens"]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    cold = statistics.median(r["cold_ms"] for r in rows)
    warm = statistics.median(r["warm_ms"] for r in rows)
    print("median: cold %.1f ms, warm %.1f ms, warm/cold %.3f" % (cold, warm, warm / cold))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"prefix": a.prefix, "suffix": a.suffix, "mode": a.mode, "pairs": rows,
                       "median_cold_ms": cold, "median_warm_ms": warm,
                       "ratio": warm / cold}, f, indent=1)


if __name__ == "__main__":
    main()
