#!/usr/bin/python3
"""Disaggregated serving over loopback (issue 20 stages C-E; docs/disaggregated.md): three real
`kvcast serve` processes on 127.0.0.1 with the embedded tiny pair (f32 weights):
  - P: --role prefill (UCX on a free --pd-port, read back from its /health),
  - D: --role decode --prefill-peers 127.0.0.1:<P's pd port> (the HTTP front),
  - A: --role all (today's single process), the reference.
Checks:
  1. D's /health lists P up; /metrics carries the pd_* families.
  2. Greedy completions in full and predict mode through D equal A's bit for bit: the text and
     every token's logprob (the first token's comes from P, the rest from D's decode).
  3. Streaming through D gives the same text as A's non-streamed completion.
  4. Transfer metrics moved; KV usage is back to 0 on D and P afterwards.
  5. kill -9 of P: D answers the next request with a clean 503 at once, /health shows the peer
     down, D's KV usage is 0; D exits cleanly.
Refinement and prefix caching are off on A and P (a predicted cache would otherwise be swapped
for the exact one mid-request on A only, and a cached prefix changes nothing but timing).
Bounded: every HTTP call has a timeout; servers are stopped in finally.
usage: test_pd_loopback.py path/to/kvcast   (run from the source root)
"""
import json
import signal
import sys
import time

import kc_testlib as kc
from kc_testlib import fail, health, wait_for

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
COMMON = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8",
          "--aux-kv-mib", "8", "--no-enable-prefix-caching", "--no-refine"]
PROMPTS = [
    "The quick brown fox jumps over the lazy dog because",
    "Once upon a time, in a land far away, there lived a",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z " * 3,
]




def complete(srv, prompt, mode, stream=False, status_ok=200):
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "prefill_mode": mode,
            "logprobs": 1, "ignore_eos": True}
    if stream:
        body["stream"] = True
    status, raw = srv.post(body, timeout=120)
    if status != status_ok:
        fail("%s request got %d (want %d): %s" % (mode, status, status_ok, raw[:400]))
    if stream:
        text = ""
        for line in raw.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                for c in chunk.get("choices", []):
                    text += c.get("text", "")
        return text, None
    resp = json.loads(raw)
    ch = resp["choices"][0]
    return ch["text"], ch["logprobs"]["token_logprobs"]


def kv_usage(srv):
    return kc.total(srv.metrics(), "kvcast:kv_cache_usage_perc", pool="base")


def main():
    servers = []
    try:
        p = kc.Server(KVCAST, COMMON + ["--role", "prefill", "--pd-port", "0"], name="prefill")
        servers.append(p)
        st, h = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(health(p)), "P ready")
        if h.get("role") != "prefill" or not h.get("pd_port"):
            fail("prefill /health: %s" % h)
        pd_port = h["pd_port"]
        d = kc.Server(KVCAST, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                               "--base-kv-mib", "8", "--role", "decode", "--prefill-peers",
                               "127.0.0.1:%d" % pd_port], name="decode")
        servers.append(d)
        a = kc.Server(KVCAST, COMMON, name="all")
        servers.append(a)

        def d_up():
            st, h = health(d)
            return h if st == 200 and h.get("prefill_peers_up") == 1 else None

        h = wait_for(d_up, "the decode host's peer up")
        peer = h["prefill_peers"][0]
        if peer["addr"] != "127.0.0.1:%d" % pd_port or not peer["up"]:
            fail("decode /health peers: %s" % h)
        wait_for(lambda: health(a)[0] == 200, "A ready")

        # 2 and 3: bit-identical greedy outputs, both modes, and streaming.
        n = 0
        for mode in ("full", "predict"):
            for prompt in PROMPTS:
                ta, la = complete(a, prompt, mode)
                td, ld = complete(d, prompt, mode)
                if ta != td or la != ld:
                    fail("%s %r: decode host %r / %s != all %r / %s" % (mode, prompt, td, ld, ta,
                                                                        la))
                ts, _ = complete(d, prompt, mode, stream=True)
                if ts != ta:
                    fail("%s %r streamed: %r != %r" % (mode, prompt, ts, ta))
                n += 1
        print("pd: %d prompts x 2 modes identical across hosts (text + logprobs), streamed too"
              % len(PROMPTS))

        # 4: metrics and KV accounting.
        md = d.metrics()
        transfers = kc.total(md, "kvcast:pd_transfer_seconds_count")
        received = kc.total(md, "kvcast:pd_transfer_bytes_total", direction="received")
        if transfers != 2 * n or received <= 0:
            fail("decode metrics: transfers %s received %s" % (transfers, received))
        mean_ms = 1000 * kc.total(md, "kvcast:pd_transfer_seconds_sum") / transfers
        print("pd: %d remote prefills, %.0f bytes received, mean SUBMIT->K/V %.1f ms"
              % (transfers, received, mean_ms))
        mp = p.metrics()
        if kc.total(mp, "kvcast:pd_transfer_bytes_total", direction="sent") < received:
            fail("prefill host sent fewer bytes than the decode host received")
        wait_for(lambda: kv_usage(d) == 0 and kv_usage(p) == 0, "KV usage back to 0")

        # 5: the prefill host dies.
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        t0 = time.time()
        body = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0}
        status, raw = d.post(body, timeout=60)
        dt = time.time() - t0
        if status != 503:
            fail("with the prefill host gone: %d %s" % (status, raw[:300]))
        print("pd: prefill host killed: 503 in %.0f ms" % (1000 * dt))
        h = wait_for(lambda: (lambda r: r[1] if r[1].get("prefill_peers_up") == 0 else None)(
            health(d)), "the peer reported down")
        if kv_usage(d) != 0:
            fail("decode KV usage %s after the failure" % kv_usage(d))
        servers.remove(p)
        p.finish(clean_exit=False)
        for srv in (d, a):
            servers.remove(srv)
            srv.finish()
        print("pd loopback: ok")
    finally:
        for srv in servers:
            srv.stop()


if __name__ == "__main__":
    main()
