#!/usr/bin/python3
"""Integration test of the prefix cache and refinement over real HTTP (issue 17), against the
embedded tiny pair (models/tiny):
  1. A request that shares a 1,000-token prefix with an earlier one reports
     usage.prompt_tokens_details.cached_tokens (the whole blocks of the prefix) and a TTFT far
     below the cold one; the cold request reports 0. Printed: both TTFTs and their ratio.
  2. A load of concurrent requests over a few shared system prompts, in full and predict mode
     with refinement: all succeed, the hit rate from kvcast:prefix_cache_{queries,hits}_total
     is printed and high, and every refinement ends with a counted result.
  3. The blocks reconcile: once idle, no KV block of either pool is in use.
  4. --no-enable-prefix-caching: the same warm request reports cached_tokens 0.
Bounded: two servers, a few dozen requests, every HTTP call has a timeout.
usage: test_server_prefix_cache.py path/to/kvcast   (run from the source root)
"""
import json
import os
import sys
import tempfile
import threading
import time

import kc_testlib as kc
from kc_testlib import fail, total

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BUNDLE = "models/tiny/kvcast-bundle.json"
BLOCK = 16  # --kv-block-size default


class Server(kc.Server):
    def __init__(self, tmp, name, extra):
        super().__init__(KVCAST, ["--bundle", BUNDLE, "--no-access-log",
                                  "--max-connections-per-ip", "0"] + extra,
                         os.path.join(tmp, name + ".log"))

    def complete(self, prompt, mode, max_tokens=2, refine=None, ignore_eos=False):
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "prefill_mode": mode, "ignore_eos": ignore_eos}
        if refine is not None:
            body["refine"] = refine
        status, raw = self.post(body, timeout=120)
        if status != 200:
            fail("%s request got %d: %s" % (mode, status, raw[:400]))
        return json.loads(raw)


def ids(seed, n):
    return [(seed * 131 + 7 * i + (i * i) % 13) % 4000 + 1 for i in range(n)]


def cached(resp):
    details = resp["usage"].get("prompt_tokens_details")
    if not isinstance(details, dict) or not isinstance(details.get("cached_tokens"), int):
        fail("usage.prompt_tokens_details.cached_tokens missing: %s" % json.dumps(resp["usage"]))
    return details["cached_tokens"]


def wait_idle(srv):
    """Polls /metrics until no request runs or waits and no refinement is left (20 s)."""
    for _ in range(200):
        m = srv.metrics()
        busy = (total(m, "kvcast:num_requests_running") + total(m, "kvcast:num_requests_waiting")
                + total(m, "kvcast:kv_refine_jobs"))
        if busy == 0:
            return m
        time.sleep(0.1)
    fail("the server did not become idle")


def main():
    tmp = tempfile.mkdtemp(prefix="kc_prefix_")
    srv = Server(tmp, "cache", [])
    try:
        # 1. A 1,000-token shared prefix: cold, then warm with another suffix.
        prefix = ids(1, 1000)
        cold = srv.complete(prefix + ids(2, 24), "full")
        warm = srv.complete(prefix + ids(3, 24), "full")
        want = 1000 // BLOCK * BLOCK
        if cached(cold) != 0 or cached(warm) != want:
            fail("cached_tokens cold %d warm %d (want 0 and %d)" % (cached(cold), cached(warm),
                                                                   want))
        t_cold, t_warm = cold["timings"]["ttft_ms"], warm["timings"]["ttft_ms"]
        print("ttft cold %.1f ms, warm %.1f ms, ratio %.3f (cached %d of %d prompt tokens)"
              % (t_cold, t_warm, t_warm / t_cold, cached(warm), warm["usage"]["prompt_tokens"]))
        if not t_warm < 0.5 * t_cold:
            fail("a 1,000-token prefix hit should cut TTFT well below half (%.1f vs %.1f ms)"
                 % (t_warm, t_cold))
        if warm["timings"].get("cached_tokens") != want:
            fail("timings.cached_tokens %r" % warm["timings"].get("cached_tokens"))

        # A lone predict request with room to decode is refined: the exact KV swapped in. The
        # scheduler starts a job only when twice its full-prefill estimate fits in the decode
        # time left (refine_next_worth): a short prompt and a long answer keep that margin wide
        # (~7x) whatever the machine's load does to both estimates.
        lone = srv.complete(ids(4, 64), "predict", max_tokens=300, refine=True, ignore_eos=True)
        tm = lone["timings"]
        print("lone predict: refine %s at token %s after %.1f ms" % (
            tm.get("refine"), tm.get("refined_at_token"), tm.get("refine_ms") or 0))
        if tm.get("refine") != "swapped" or not isinstance(tm.get("refined_at_token"), int) \
                or not 1 <= tm["refined_at_token"] < 300:
            fail("a lone predict request was not refined: %s" % json.dumps(tm))

        # 2. Load: 4 system prompts x 6 users, full and predict (refined), 6 at a time.
        before = srv.metrics()
        systems = [ids(10 + k, 300) for k in range(4)]
        # Each system prompt is first served in full mode (its exact base KV is cached), then
        # in both modes: predict requests reuse the exact base prefix and the aux prefix.
        jobs = [(systems[i % 4] + ids(100 + i, 20 + i % 7), "predict" if (i // 4) % 2 else "full")
                for i in range(24)]
        results = [None] * len(jobs)

        def worker(w):
            for i in range(w, len(jobs), 6):
                results[i] = srv.complete(jobs[i][0], jobs[i][1], max_tokens=12, refine=True)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        if any(r is None for r in results):
            fail("a request of the load did not finish")
        after = wait_idle(srv)
        q = total(after, "kvcast:prefix_cache_queries_total", pool="base") - \
            total(before, "kvcast:prefix_cache_queries_total", pool="base")
        h = total(after, "kvcast:prefix_cache_hits_total", pool="base") - \
            total(before, "kvcast:prefix_cache_hits_total", pool="base")
        qa = total(after, "kvcast:prefix_cache_queries_total", pool="aux") - \
            total(before, "kvcast:prefix_cache_queries_total", pool="aux")
        ha = total(after, "kvcast:prefix_cache_hits_total", pool="aux") - \
            total(before, "kvcast:prefix_cache_hits_total", pool="aux")
        refined = {res: total(after, "kvcast:kv_refine_total", result=res)
                   for res in ("swapped", "skipped", "cancelled", "failed")}
        print("load: base hit rate %.2f (%d of %d tokens), aux hit rate %.2f (%d of %d), "
              "refinements %s" % (h / max(q, 1), h, q, ha / max(qa, 1), ha, qa, refined))
        if q <= 0 or h / q < 0.5:
            fail("base prefix cache hit rate %.2f under a load of shared system prompts" %
                 (h / max(q, 1)))
        n_predict = sum(1 for r in results if r["timings"]["prefill_mode"] == "predict")
        if sum(refined.values()) < n_predict or refined["failed"] != 0:
            fail("%d predict requests, refinement results %s" % (n_predict, refined))
        if sum(cached(r) for r in results) <= 0:
            fail("no request of the load reported cached tokens")

        # 3. The blocks reconcile: idle means no block in use, cached ones are free to evict.
        for pool in ("base", "aux"):
            usage = total(after, "kvcast:kv_cache_usage_perc", pool=pool)
            if usage != 0:
                fail("idle server: kv_cache_usage_perc{pool=%s} = %g" % (pool, usage))
        if total(after, "kvcast:kv_cache_cached_blocks", pool="base") <= 0:
            fail("no cached blocks reported after the load")
    finally:
        srv.stop()

    # 4. Off: nothing reused.
    off = Server(tmp, "off", ["--no-enable-prefix-caching"])
    try:
        off.complete(prefix + ids(2, 24), "full")
        again = off.complete(prefix + ids(3, 24), "full")
        if cached(again) != 0:
            fail("--no-enable-prefix-caching: cached_tokens %d" % cached(again))
    finally:
        off.stop()
    print("PASS")


if __name__ == "__main__":
    main()
