#!/usr/bin/python3
"""Integration test of auto mode's load shedding (issue 16 item 3), over real HTTP.

With --ttft-slo-ms 1 every auto request that has work ahead of it is hopeless: even predict
cannot answer it within 1 ms. So, against the embedded tiny pair (models/tiny):
  1. A request alone in the server is served (no work ahead: nobody gains from refusing it).
  2. In a burst of concurrent auto requests, those that arrive behind another's prefill get
     503 at once, with Retry-After and an OpenAI-style error body (type server_error, code
     server_overloaded); each is counted in kvcast:requests_shed_total, and every served auto
     request is counted once in kvcast:auto_decisions_total.
  3. Requests that name their mode (prefill_mode full or predict) are never shed.
  4. --no-shed-hopeless turns it off: the same bursts are all served.
Bounded: two servers, a few dozen short requests, every HTTP call has a timeout.
usage: test_server_shed.py path/to/kvcast   (run from the source root)
"""
import json
import os
import sys
import tempfile
import threading

import kc_testlib as kc
from kc_testlib import fail, total

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BUNDLE = "models/tiny/kvcast-bundle.json"
PROMPT_LEN = 256  # long enough that a prefill lasts several ms, even in a release build
BURST = 6


class Server(kc.Server):
    def __init__(self, tmp, name, extra):
        super().__init__(KVCAST, ["--bundle", BUNDLE, "--no-access-log",
                                  "--max-connections-per-ip", "0", "--ttft-slo-ms", "1"] + extra,
                         os.path.join(tmp, name + ".log"))

    def complete(self, mode, seed):
        body = {"prompt": [(seed * 131 + 7 * i) % 4000 + 1 for i in range(PROMPT_LEN)],
                "max_tokens": 2, "temperature": 0}
        if mode is not None:
            body["prefill_mode"] = mode
        status, raw, headers = self.request("POST", "/v1/completions", body)
        return status, raw, headers.get("Retry-After")


def burst(srv, modes, seed0):
    """Sends one request per mode at the same moment; returns [(mode, status, body, retry)]."""
    results = [None] * len(modes)
    go = threading.Event()

    def one(i):
        go.wait()
        results[i] = (modes[i],) + srv.complete(modes[i], seed0 + i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(modes))]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=120)
    if any(r is None for r in results):
        fail("a request of the burst did not finish within 120 s")
    return results


def main():
    tmp = tempfile.mkdtemp(prefix="kc_shed_")
    srv = Server(tmp, "shed", [])
    try:
        # 1. Alone: served. The first (explicit predict) measures predict's cost, which
        # shedding waits for; the second is an auto request with nothing ahead of it.
        for mode in ("predict", "auto"):
            status, raw, _ = srv.complete(mode, 1)
            if status != 200:
                fail("a lone %s request got %d: %s" % (mode, status, raw[:300]))
        # 2 and 3. Bursts of auto requests with explicit ones mixed in, until some were shed
        # (the first of a burst may finish its prefill before the next one is submitted on a
        # fast machine; a few bursts make a 503 certain).
        served_auto = 1
        shed = []
        for rnd in range(5):
            modes = ["auto"] * BURST + ["predict", "full"]
            for mode, status, raw, retry in burst(srv, modes, 100 * (rnd + 1)):
                if mode != "auto":
                    if status != 200:
                        fail("explicit %s request got %d: %s" % (mode, status, raw[:300]))
                    continue
                if status == 200:
                    served_auto += 1
                    continue
                if status != 503:
                    fail("auto request got %d: %s" % (status, raw[:300]))
                err = json.loads(raw).get("error", {})
                if err.get("type") != "server_error" or err.get("code") != "server_overloaded":
                    fail("503 body is not an OpenAI-style overload error: %s" % raw[:300])
                if "TTFT target" not in err.get("message", ""):
                    fail("503 message does not say why: %s" % raw[:300])
                if retry is None or not retry.isdigit():
                    fail("503 without a Retry-After header (%r)" % retry)
                shed.append(raw)
            if shed:
                break
        if not shed:
            fail("no auto request was shed in 5 bursts of %d with a 1 ms TTFT target" % BURST)
        m = srv.metrics()
        n_shed = total(m, "kvcast:requests_shed_total", reason="hopeless")
        if n_shed != len(shed):
            fail("kvcast:requests_shed_total is %g, clients saw %d 503s" % (n_shed, len(shed)))
        n_dec = total(m, "kvcast:auto_decisions_total")
        if n_dec != served_auto:
            fail("kvcast:auto_decisions_total is %g for %d served auto requests"
                 % (n_dec, served_auto))
        print("shedding on: %d auto requests shed (503 + Retry-After), %d served, explicit modes "
              "all served" % (len(shed), served_auto))
    finally:
        srv.stop()

    # 4. Off: the same kind of bursts, nothing shed.
    srv = Server(tmp, "noshed", ["--no-shed-hopeless"])
    try:
        srv.complete("predict", 1)
        for rnd in range(1):
            for mode, status, raw, _ in burst(srv, ["auto"] * BURST, 100 * (rnd + 1)):
                if status != 200:
                    fail("--no-shed-hopeless: %s request got %d: %s" % (mode, status, raw[:300]))
        m = srv.metrics()
        if total(m, "kvcast:requests_shed_total") != 0:
            fail("--no-shed-hopeless still counted shed requests")
        print("shedding off: every request served")
    finally:
        srv.stop()
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
