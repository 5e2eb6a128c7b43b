#!/usr/bin/python3
"""A prefill host runs no decode worker, and still frees everything on cancels and on a lost
decode host (issue 20; docs/disaggregated.md), over real HTTP and UCX on loopback (UCX_TLS=tcp),
embedded tiny pair. P: --role prefill made slow (--debug-step-delay-ms: it sleeps after each
prefill chunk, so a request holds its prefill worker for seconds); D: --role decode.
  1. Workers by thread name (/proc/PID/task/*/comm): P runs kc-prefill0 and no kc-decode; D
     runs kc-decode and no kc-prefill0 (the control that the names are there to be seen).
  2. Client cancel of a request queued at P behind one P is prefilling: P ends it at once (its
     pd_remote_in_flight drops 2 -> 1 well before the prefill in flight ends), which the
     decode worker used to do; then the other client leaves too: P ships nothing (no K/V),
     and KV usage and in-flight return to 0 on both hosts.
  3. kill -9 of D with one request prefilling at P and one queued there: P ends the queued one
     at once, the other within its chunk; KV usage and in-flight return to 0 on P; a new decode
     host is then served (200), and its pd_first_overhead_seconds counts that first token with
     an overhead that leaves out P's own (slept) prefill.
Bounded: every HTTP call has a timeout; servers are stopped in finally.
usage: test_pd_prefill_host.py path/to/kvcast   (run from the source root)
"""
import glob
import http.client
import json
import os
import sys
import time

import kc_testlib as kc
from kc_testlib import fail, health, wait_for

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
ENV = {"UCX_TLS": "tcp"}
BASE = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8"]
DELAY_MS = 4000  # P's sleep after each prefill chunk: a short prompt holds P this long
BODY = {"prompt": "The quick brown fox jumps over the lazy dog because", "max_tokens": 32,
        "temperature": 0, "prefill_mode": "full", "ignore_eos": True, "stream": True}


def threads(srv):
    names = []
    for path in glob.glob("/proc/%d/task/*/comm" % srv.proc.pid):
        try:
            with open(path) as f:
                names.append(f.read().strip())
        except OSError:
            pass  # a thread that ended meanwhile
    return names


def in_flight(srv):
    return kc.total(srv.metrics(timeout=10), "kvcast:pd_remote_in_flight")


def kv_used(srv):
    return kc.total(srv.metrics(timeout=10), "kvcast:kv_cache_usage_perc", pool="base")


def stream_open(d):
    """Starts a streamed completion on D; returns the connection (close it to cancel)."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    c.request("POST", "/v1/completions", body=json.dumps(BODY),
              headers={"Content-Type": "application/json"})
    return c


def leave(c):
    c.sock.close()  # the client goes away without reading
    c.close()


def start_decode(servers, port, name):
    d = kc.Server(KVCAST, BASE + ["--role", "decode", "--prefill-peers", "127.0.0.1:%d" % port],
                  env=ENV, name=name)
    servers.append(d)
    wait_for(lambda: health(d)[1].get("prefill_peers_up") == 1, name + "'s prefill peer up")
    return d


def one_prefilling_one_queued(p, d):
    """Request A prefilling at P, request B queued behind it; returns (A, B, A's start)."""
    a = stream_open(d)
    t_a = time.monotonic()
    wait_for(lambda: in_flight(p) == 1, "A at P", timeout=10)
    b = stream_open(d)
    wait_for(lambda: in_flight(p) == 2, "B queued at P behind A", timeout=10)
    return a, b, t_a


def main():
    servers = []
    try:
        p = kc.Server(KVCAST, BASE + ["--aux-kv-mib", "8", "--role", "prefill", "--pd-port", "0",
                                     "--debug-step-delay-ms", str(DELAY_MS)], env=ENV, name="P")
        servers.append(p)
        port = wait_for(lambda: (lambda r: r[1].get("pd_port") if r[0] == 200 else None)(
            health(p)), "P's pd_port")
        d = start_decode(servers, port, "D")

        # 1. Which workers each host runs.
        tp, td = threads(p), threads(d)
        kc.check("kc-prefill0" in tp and "kc-decode" not in tp,
                 "prefill host threads %s: want kc-prefill0 and no kc-decode" % sorted(set(tp)))
        kc.check("kc-decode" in td and "kc-prefill0" not in td,
                 "decode host threads %s: want kc-decode and no kc-prefill0" % sorted(set(td)))
        print("pd prefill host: no decode worker (%d threads; decode host %d)"
              % (len(tp), len(td)))

        # 2. Client cancels reach P and free everything there, with no decode worker to reap.
        sent0 = kc.total(p.metrics(), "kvcast:pd_transfer_bytes_total", direction="sent")
        a, b, t_a = one_prefilling_one_queued(p, d)
        leave(b)
        wait_for(lambda: in_flight(p) == 1, "P to end the cancelled queued request",
                 timeout=DELAY_MS / 1000.0)
        took = time.monotonic() - t_a
        kc.check(took < 0.8 * DELAY_MS / 1000.0,
                 "the queued request ended %.1f s after A began: it waited for A's prefill" % took)
        print("pd prefill host: a cancelled queued request ended while another prefilled "
              "(%.1f s into a %.1f s prefill)" % (took, DELAY_MS / 1000.0))
        leave(a)
        wait_for(lambda: in_flight(p) == 0 and kv_used(p) == 0 and kv_used(d) == 0
                 and in_flight(d) == 0, "in-flight and KV back to 0 after the cancels",
                 timeout=3 * DELAY_MS / 1000.0)
        sent = kc.total(p.metrics(), "kvcast:pd_transfer_bytes_total", direction="sent") - sent0
        if sent > 400:  # two ERROR frames (~120 bytes each) at most; FIRST alone is ~300
            fail("P sent %d bytes after both clients left: it shipped a FIRST or K/V" % sent)
        print("pd prefill host: both cancels freed everything (%d bytes sent, no K/V)" % sent)

        # 3. A decode host dies with a request prefilling and one queued at P.
        a, b, t_a = one_prefilling_one_queued(p, d)
        d.proc.kill()
        d.proc.wait()
        servers.remove(d)
        d.finish(clean_exit=False)
        wait_for(lambda: in_flight(p) <= 1, "P to end the queued request of the lost host",
                 timeout=DELAY_MS / 1000.0)
        took = time.monotonic() - t_a
        kc.check(took < 0.8 * DELAY_MS / 1000.0,
                 "the lost host's queued request ended %.1f s after A began" % took)
        wait_for(lambda: in_flight(p) == 0 and kv_used(p) == 0,
                 "P's in-flight and KV back to 0 after its decode host died",
                 timeout=3 * DELAY_MS / 1000.0)
        for c in (a, b):
            c.close()
        print("pd prefill host: a lost decode host's requests freed (queued one %.1f s into the "
              "prefill)" % took)
        d2 = start_decode(servers, port, "D2")
        st, raw = d2.post(dict(BODY, stream=False, max_tokens=4), timeout=60)
        kc.check(st == 200, "a new decode host through P: %d %s" % (st, raw[:300]))
        kc.check(in_flight(p) == 0 and kv_used(p) == 0, "P not idle after serving D2")
        # D2's view of what the remote path added to that request's TTFT: one FIRST, and an
        # overhead that excludes P's own prefill (which slept DELAY_MS after its chunk).
        md = d2.metrics()
        n_first = kc.total(md, "kvcast:pd_first_overhead_seconds_count")
        ov = kc.total(md, "kvcast:pd_first_overhead_seconds_sum")
        kc.check(n_first == 1 and 0 < ov < 0.5 * DELAY_MS / 1000.0,
                 "pd_first_overhead_seconds: count %s, sum %s s (want 1, and well below P's "
                 "%.1f s prefill)" % (n_first, ov, DELAY_MS / 1000.0))
        print("pd prefill host: D2's remote-path overhead on its first token: %.2f ms" % (1000 * ov))
        for srv in list(reversed(servers)):
            servers.remove(srv)
            srv.finish()
        print("pd prefill host: ok")
    finally:
        for srv in servers:
            srv.stop()


if __name__ == "__main__":
    if not os.path.exists(KVCAST):
        fail("no kvcast at " + KVCAST)
    main()
