#!/usr/bin/python3
"""What each role of a disaggregated pair does on its own (issue 20; docs/disaggregated.md),
over real HTTP and UCX on loopback (UCX_TLS=tcp, the transport pods use), embedded tiny pair:
  1. A prefill host refuses client completions: POST /v1/completions and /v1/chat/completions
     answer 421 (invalid_request_error, code wrong_role) instead of serving locally.
  2. A decode host loads neither the auxiliary model nor the predictor (/health says what was
     loaded; the prefill host's says both), and is not ready (/ready 503, /health 200) while
     no prefill peer is up; ready (200) once one is.
  3. A lost decode host: kill -9 of it with requests in flight at the prefill host; the prefill
     host frees everything for it (KV usage and running/waiting back to 0) and serves a new
     decode host.
  4. Both hosts stopped at the same moment (SIGTERM to each, after a completion): both exit 0
     with no sanitizer report (a prefill host once crashed in ucp_worker_destroy there); twice.
Bounded: every HTTP call has a timeout; servers are stopped in finally.
usage: test_pd_hosts.py path/to/kvcast   (run from the source root)
"""
import json
import signal
import sys
import threading
import time

import kc_testlib as kc
from kc_testlib import fail, wait_for

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
ENV = {"UCX_TLS": "tcp"}
BASE = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8"]
PREFILL = BASE + ["--aux-kv-mib", "8", "--role", "prefill", "--pd-port", "0"]
BODY = {"prompt": "The quick brown fox jumps over the lazy dog because", "max_tokens": 6,
        "temperature": 0}


def health(srv):
    try:
        status, text, _ = srv.request("GET", "/health", timeout=10)
    except OSError:
        return 0, {}
    return status, (json.loads(text) if text.startswith("{") else {})


def ready(srv):
    return srv.request("GET", "/ready", timeout=10)[0]



def start_prefill(servers, extra=(), name="prefill"):
    p = kc.Server(KVCAST, PREFILL + list(extra), env=ENV, name=name)
    servers.append(p)
    h = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(health(p)), name + " up")
    return p, h


def start_decode(servers, peers, name="decode"):
    d = kc.Server(KVCAST, BASE + ["--role", "decode", "--prefill-peers", peers], env=ENV,
                  name=name)
    servers.append(d)
    return d


def gauge(srv, name, **labels):
    return kc.total(srv.metrics(), name, **labels)


def stop_together(servers, p, d, what):
    """SIGTERM to both at once; both must exit 0 with a clean log."""
    p.proc.send_signal(signal.SIGTERM)
    d.proc.send_signal(signal.SIGTERM)
    for srv in (p, d):
        servers.remove(srv)
        text = srv.finish()  # exit status 0, no sanitizer report
        if "Segmentation" in text or "AddressSanitizer" in text:
            fail("%s: crash report in the log" % what)
    print("pd hosts: %s: both stopped at once, both exit 0, no sanitizer report" % what)


def main():
    servers = []
    try:
        # The prefill host slows its prefill steps so that requests stay in flight there.
        p, hp = start_prefill(servers, ["--debug-step-delay-ms", "1500"])
        if hp.get("role") != "prefill" or not hp.get("aux_loaded") or \
                not hp.get("predictor_loaded"):
            fail("prefill /health: %s" % hp)
        pd = "127.0.0.1:%d" % hp["pd_port"]

        # 1. Client traffic on the prefill host.
        for path, body in (("/v1/completions", BODY),
                           ("/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})):
            status, text, _ = p.request("POST", path, body, timeout=30)
            err = json.loads(text).get("error", {}) if text.startswith("{") else {}
            if status != 421 or err.get("type") != "invalid_request_error" or \
                    err.get("code") != "wrong_role" or "--role prefill" not in err.get("message", ""):
                fail("%s on a prefill host: %d %s" % (path, status, text[:300]))
        if gauge(p, "kvcast:num_requests_running") != 0:
            fail("the prefill host ran a client's request")
        print("pd hosts: a prefill host answers client completions with 421 wrong_role")

        # 2. A decode host with no prefill peer up: alive, not ready; base model only.
        d0 = start_decode(servers, "127.0.0.1:1", name="decode0")
        st, h0 = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(health(d0)), "decode0")
        if h0.get("prefill_peers_up") != 0 or h0.get("aux_loaded") or h0.get("predictor_loaded"):
            fail("decode /health: %s" % h0)
        if ready(d0) != 503:
            fail("/ready of a decode host without a prefill peer: %d" % ready(d0))
        log0 = d0.log_text()
        if "auxiliary model and the predictor are not loaded" not in log0:
            fail("the decode host's log does not say it skipped the auxiliary model:\n" +
                 log0[-1500:])
        servers.remove(d0)
        d0.finish()
        d1 = start_decode(servers, pd, name="decode1")
        wait_for(lambda: health(d1)[1].get("prefill_peers_up") == 1, "decode1's peer up")
        if ready(d1) != 200:
            fail("/ready of a decode host with its peer up: %d" % ready(d1))
        print("pd hosts: decode host loads the base model only (/health aux_loaded false); "
              "/ready 503 with no prefill peer, 200 with one")

        # 3. kill -9 of the decode host with requests in flight at the prefill host.
        def client():
            try:
                d1.post(dict(BODY, max_tokens=32), timeout=30)
            except OSError:
                pass  # the decode host dies under it

        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: gauge(p, "kvcast:num_requests_running") +
                 gauge(p, "kvcast:num_requests_waiting") >= 2, "requests in flight at P", 20)
        d1.proc.send_signal(signal.SIGKILL)
        d1.proc.wait()
        servers.remove(d1)
        d1.finish(clean_exit=False)
        t0 = time.time()
        wait_for(lambda: gauge(p, "kvcast:kv_cache_usage_perc", pool="base") == 0 and
                 gauge(p, "kvcast:num_requests_running") == 0 and
                 gauge(p, "kvcast:num_requests_waiting") == 0,
                 "the prefill host to free the lost decode host's requests", 30)
        print("pd hosts: decode host killed with requests in flight: the prefill host freed "
              "them in %.1f s (KV 0, nothing running or waiting)" % (time.time() - t0))
        d2 = start_decode(servers, pd, name="decode2")
        wait_for(lambda: health(d2)[1].get("prefill_peers_up") == 1, "decode2's peer up")
        status, raw = d2.post(BODY, timeout=60)
        if status != 200:
            fail("a new decode host after the loss: %d %s" % (status, raw[:300]))
        print("pd hosts: the prefill host serves a new decode host afterwards")

        # 4. Stopped at once, right after a completion (twice: a fresh pair the second time).
        stop_together(servers, p, d2, "pair 1")
        p, hp = start_prefill(servers)
        d3 = start_decode(servers, "127.0.0.1:%d" % hp["pd_port"], name="decode3")
        wait_for(lambda: health(d3)[1].get("prefill_peers_up") == 1, "decode3's peer up")
        status, raw = d3.post(BODY, timeout=60)
        if status != 200:
            fail("pair 2: %d %s" % (status, raw[:300]))
        stop_together(servers, p, d3, "pair 2")
        print("pd hosts: ok")
    finally:
        for srv in servers:
            srv.stop()


if __name__ == "__main__":
    main()
