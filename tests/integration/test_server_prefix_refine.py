#!/usr/bin/python3
"""The HTTP surface of refinement and the prefix cache (issue 17), over real HTTP.

Checks the server side only: what the request accepts, what the responses and /metrics carry,
and that the settings reach a running server. Values (cache hits, swaps) are the scheduler's
and tested there; here they are only checked for type and for relations that hold whatever
the scheduler does (hits <= queries, cached <= prompt tokens, refined_at_token set only when
swapped). Against the embedded tiny pair (models/tiny):
  1. "refine": true | false | null is accepted; "yes", 1 and {} are a 400 naming "refine",
     in OpenAI's error shape.
  2. A non-stream answer has usage.prompt_tokens_details.cached_tokens (an integer) and, in
     `timings`, cached_tokens, base_cached_tokens, refine, refined_at_token, refine_ms.
  3. A streamed answer with include_usage has the same in its final usage chunk and the
     timings in each choice's final chunk.
  4. /metrics lists the prefix-cache counters per pool, kv_refine_total per result, the
     kv_refine_seconds histogram and the cached-block / refine-job gauges, and its refine
     counters add up to no more than the predict requests served.
  5. --no-enable-prefix-caching --no-refine (and KVCAST_REFINE=false) start a server that
     reports them off in its start-up settings line and still serves.
Bounded: two servers, a dozen short requests, every HTTP call has a timeout.
usage: test_server_prefix_refine.py path/to/kvcast   (run from the source root)
"""
import http.client
import json
import re
import os
import subprocess
import sys
import tempfile

import kc_testlib as kc
from kc_testlib import check

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BUNDLE = "models/tiny/kvcast-bundle.json"
RESULTS = ("swapped", "skipped", "cancelled", "failed")


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Server(kc.Server):
    def __init__(self, tmp, name, extra, env=None):
        super().__init__(KVCAST, ["--bundle", BUNDLE, "--no-access-log"] + extra,
                         os.path.join(tmp, name + ".log"), env=env)

    def metrics(self):
        """(text, {series: value}) with the model_name label left out of the series."""
        text = self.metrics_text()
        out = {re.sub(r'model_name="[^"]*",?', "", k).replace("{}", ""): v
               for k, v in kc.parse_metrics(text).items()}
        return text, out


def prompt(seed, n=40):
    return [(seed * 131 + 7 * i) % 4000 + 1 for i in range(n)]


def check_timings(t, where):
    check(isinstance(t, dict), "%s: no timings object: %r" % (where, t))
    for k in ("cached_tokens", "base_cached_tokens"):
        check(is_int(t.get(k)) and t[k] >= 0, "%s: timings.%s not a count: %r" % (where, k, t))
    check(t.get("refine") in ("none",) + RESULTS, "%s: timings.refine: %r" % (where, t))
    check("refined_at_token" in t, "%s: timings.refined_at_token missing: %r" % (where, t))
    rat = t["refined_at_token"]
    if t["refine"] == "swapped":
        check(is_int(rat) and rat >= 0, "%s: swapped without refined_at_token: %r" % (where, t))
    else:
        check(rat is None, "%s: refined_at_token %r but refine %s" % (where, rat, t["refine"]))
    check(is_num(t.get("refine_ms")) and t["refine_ms"] >= 0, "%s: refine_ms: %r" % (where, t))
    if t.get("prefill_mode") == "full":
        check(t["refine"] == "none", "%s: full mode refined: %r" % (where, t))


def check_usage(u, where):
    check(isinstance(u, dict), "%s: no usage: %r" % (where, u))
    d = u.get("prompt_tokens_details")
    check(isinstance(d, dict) and is_int(d.get("cached_tokens")),
          "%s: usage.prompt_tokens_details.cached_tokens not an integer: %r" % (where, u))
    check(0 <= d["cached_tokens"] <= u["prompt_tokens"],
          "%s: cached_tokens outside [0, prompt_tokens]: %r" % (where, u))


def test_request_field(srv):
    for val in (True, False, None):
        st, raw = srv.post({"prompt": prompt(1), "max_tokens": 2, "temperature": 0,
                            "prefill_mode": "predict", "refine": val})
        check(st == 200, "refine %r: status %d %s" % (val, st, raw))
        o = json.loads(raw)
        check_usage(o.get("usage"), "refine %r" % (val,))
        check_timings(o.get("timings"), "refine %r" % (val,))
        if val is False:
            check(o["timings"]["refine"] == "none",
                  "refine false still refined: %r" % (o["timings"],))
    for val in ("yes", 1, 0, {}, [True], "true"):
        st, raw = srv.post({"prompt": prompt(2), "max_tokens": 2, "refine": val})
        check(st == 400, "refine %r: status %d, want 400: %s" % (val, st, raw))
        err = json.loads(raw).get("error", {})
        check(err.get("param") == "refine" and err.get("type") == "invalid_request_error" and
              "boolean" in err.get("message", ""), "refine %r: error body %s" % (val, raw))


def test_full_mode_and_repeat(srv):
    # The same prompt twice in full mode: the second may hit the prefix cache; either way the
    # fields are there and cached_tokens never exceeds the prompt.
    for i in range(2):
        st, raw = srv.post({"prompt": prompt(3, 64), "max_tokens": 1, "temperature": 0,
                            "prefill_mode": "full", "n": 2})
        check(st == 200, "full #%d: status %d %s" % (i, st, raw))
        o = json.loads(raw)
        check(o["usage"]["prompt_tokens"] == 64, "n=2 counts the prompt once: %r" % o["usage"])
        check_usage(o["usage"], "full #%d" % i)
        check_timings(o.get("timings"), "full #%d" % i)


def test_stream(srv):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    body = {"prompt": [prompt(4), prompt(5)], "max_tokens": 3, "temperature": 0, "stream": True,
            "prefill_mode": "predict", "refine": True,
            "stream_options": {"include_usage": True}}
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    check(r.status == 200, "stream: status %d" % r.status)
    text = r.read().decode()
    c.close()
    events = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
    check(events and events[-1] == "[DONE]", "stream: no [DONE]: %r" % text[-300:])
    chunks = [json.loads(e) for e in events[:-1]]
    finals = [ch for ch in chunks for c_ in ch.get("choices", []) if c_.get("finish_reason")]
    check(len(finals) == 2, "stream: %d final chunks, want 2" % len(finals))
    for f in finals:
        check_timings(f.get("timings"), "stream final chunk")
    usage = [ch["usage"] for ch in chunks if ch.get("usage")]
    check(len(usage) == 1, "stream: %d usage chunks, want 1" % len(usage))
    check_usage(usage[0], "stream usage chunk")


def test_metrics(srv, n_predict):
    text, m = srv.metrics()
    for name in ("kvcast:prefix_cache_queries_total", "kvcast:prefix_cache_hits_total"):
        check("# TYPE %s counter" % name in text, "metrics: no counter %s" % name)
        for pool in ("base", "aux"):
            check('%s{pool="%s"}' % (name, pool) in m, "metrics: no %s pool %s" % (name, pool))
    for pool in ("base", "aux"):
        q = m['kvcast:prefix_cache_queries_total{pool="%s"}' % pool]
        h = m['kvcast:prefix_cache_hits_total{pool="%s"}' % pool]
        check(0 <= h <= q, "metrics: pool %s hits %g > queries %g" % (pool, h, q))
        check('kvcast:kv_cache_cached_blocks{pool="%s"}' % pool in m,
              "metrics: no cached-block gauge of pool %s" % pool)
    check("# TYPE kvcast:kv_refine_total counter" in text, "metrics: no kv_refine_total")
    total = 0.0
    for res in RESULTS:
        k = 'kvcast:kv_refine_total{result="%s"}' % res
        check(k in m, "metrics: no %s" % k)
        total += m[k]
    check(total <= n_predict, "metrics: %g refinements from %d predict requests" %
          (total, n_predict))
    check("# TYPE kvcast:kv_refine_seconds histogram" in text, "metrics: no refine histogram")
    check(m.get("kvcast:kv_refine_seconds_count") == m['kvcast:kv_refine_total{result="swapped"}'],
          "metrics: refine histogram count != swapped")
    for state in ("queued", "running"):
        check('kvcast:kv_refine_jobs{state="%s"}' % state in m, "metrics: no refine %s" % state)


def main():
    tmp = tempfile.mkdtemp(prefix="kc_prefix_refine_")
    srv = Server(tmp, "default", [])
    try:
        test_request_field(srv)
        test_full_mode_and_repeat(srv)
        test_stream(srv)
        test_metrics(srv, n_predict=3 + 2)
    finally:
        srv.stop()
    off = Server(tmp, "off", ["--no-enable-prefix-caching", "--log-level", "debug"], env={"KVCAST_REFINE": "false"})
    try:
        log = open(off.log).read()
        check("enable-prefix-caching=false" in log and "refine=false" in log,
              "settings line does not show both off:\n%s" % log[-2000:])
        st, raw = off.post({"prompt": prompt(6), "max_tokens": 2, "prefill_mode": "predict"})
        check(st == 200, "server with both off: %d %s" % (st, raw))
        o = json.loads(raw)
        check_usage(o["usage"], "off")
        check(o["usage"]["prompt_tokens_details"]["cached_tokens"] == 0,
              "prefix caching off, yet cached tokens: %r" % o["usage"])
        check(o["timings"]["refine"] == "none", "--no-refine, yet refined: %r" % o["timings"])
    finally:
        off.stop()
    help_text = subprocess.run([KVCAST, "serve", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    for flag in ("--enable-prefix-caching", "--refine", "KVCAST_ENABLE_PREFIX_CACHING",
                 "KVCAST_REFINE"):
        check(flag in help_text, "--help does not list %s" % flag)
    print("ok: refine field, usage/timings fields, metrics names, settings")


if __name__ == "__main__":
    main()
