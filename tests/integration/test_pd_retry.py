#!/usr/bin/python3
"""Disaggregated serving, a prefill host dying with a request in flight (issue 20 item 3): two
prefill hosts on 127.0.0.1, P1 made slow (--debug-step-delay-ms: it sleeps after each prefill
chunk) and listed first, P2 normal; one decode host D with --prefill-peers P1,P2.
  1. A request through D lands on P1 (both idle: the first peer); P1 is killed (-9) while it
     holds it. D retries it once on P2: the client gets 200 with the same greedy text as a
     request served by P2 alone, D counts one retry, and D's KV usage returns to 0.
  2. D's /health then lists P1 down and P2 up; per-peer errors count P1's loss.
  3. Client cancel reaches the prefill host: P3 (slow like P1) replaces it; a streaming client
     whose request P3 holds disconnects; D sends CANCEL and P3 drops the request before its
     first token: P3 never ships its FIRST and K/V (it sends at most an ERROR frame), and
     both hosts' KV usage returns to 0.
  4. A stalled prefill host times out: with --pd-timeout-ms 1000 on the decode host and P3
     sleeping 3 s in its prefill, a request fails cleanly (503) after ~1 s, not 3.
Bounded: every HTTP call has a timeout; servers are stopped in finally.
usage: test_pd_retry.py path/to/kvcast   (run from the source root)
"""
import json
import signal
import sys
import threading
import time

import kc_testlib as kc
from kc_testlib import fail, health, wait_for

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
COMMON = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8",
          "--aux-kv-mib", "8", "--no-enable-prefix-caching", "--no-refine"]
BODY = {"prompt": "The quick brown fox jumps over the lazy dog because", "max_tokens": 12,
        "temperature": 0, "prefill_mode": "full", "ignore_eos": True}




def pd_port(srv):
    return wait_for(lambda: (lambda r: r[1].get("pd_port") if r[0] == 200 else None)(health(srv)),
                    "a prefill host's /health")


def client_cancel_reaches_prefill(servers):
    p3 = kc.Server(KVCAST, COMMON + ["--role", "prefill", "--pd-port", "0",
                                     "--debug-step-delay-ms", "3000"], name="P3")
    servers.append(p3)
    port3 = pd_port(p3)
    d = kc.Server(KVCAST, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                           "--base-kv-mib", "8", "--role", "decode", "--prefill-peers",
                           "127.0.0.1:%d" % port3], name="decode2")
    servers.append(d)
    wait_for(lambda: health(d)[1].get("prefill_peers_up") == 1, "P3 up")
    sent0 = kc.total(p3.metrics(), "kvcast:pd_transfer_bytes_total", direction="sent")
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    body = dict(BODY, stream=True, max_tokens=64)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    wait_for(lambda: any(p["in_flight"] == 1 for p in health(d)[1].get("prefill_peers", [])),
             "the request on P3")
    c.sock.close()  # the client goes away while P3 prefills
    c.close()
    wait_for(lambda: all(p["in_flight"] == 0 for p in health(d)[1]["prefill_peers"]),
             "D to drop the request")
    # P3's prefill chunk ends after its 3 s delay; the request must then end there unshipped.
    time.sleep(4.0)
    mp = p3.metrics()
    sent = kc.total(mp, "kvcast:pd_transfer_bytes_total", direction="sent") - sent0
    if sent > 200:  # an ERROR frame (~120 bytes) at most; FIRST alone is ~300
        fail("P3 sent %d bytes after the client left: the K/V was shipped, CANCEL did not arrive"
             % sent)
    wait_for(lambda: kc.total(p3.metrics(), "kvcast:kv_cache_usage_perc", pool="base") == 0
             and kc.total(d.metrics(), "kvcast:kv_cache_usage_perc", pool="base") == 0,
             "KV usage back to 0 after the cancel")
    print("pd cancel: client disconnect reached the prefill host (%d bytes sent after it, no "
          "K/V), KV back to 0 on both" % sent)
    d.stop()
    servers.remove(d)
    d.finish()
    d = kc.Server(KVCAST, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                           "--base-kv-mib", "8", "--role", "decode", "--prefill-peers",
                           "127.0.0.1:%d" % port3, "--pd-timeout-ms", "1000"], name="decode3")
    servers.append(d)
    wait_for(lambda: health(d)[1].get("prefill_peers_up") == 1, "P3 up for decode3")
    time.sleep(3.5)  # P3's worker done with the cancelled request's sleep
    t0 = time.time()
    status, raw = d.post(BODY, timeout=30)
    dt = time.time() - t0
    if status != 503 or not 0.9 <= dt < 2.9:
        fail("stalled prefill host: %d after %.2f s (want 503 after ~1 s): %s" % (status, dt,
                                                                               raw[:200]))
    print("pd stall: a stalled prefill host timed out: 503 after %.2f s" % dt)
    wait_for(lambda: kc.total(d.metrics(), "kvcast:kv_cache_usage_perc", pool="base") == 0,
             "decode KV usage back to 0 after the timeout")
    for srv in (d, p3):
        servers.remove(srv)
        srv.finish()


def main():
    servers = []
    try:
        p1 = kc.Server(KVCAST, COMMON + ["--role", "prefill", "--pd-port", "0",
                                         "--debug-step-delay-ms", "4000"], name="P1")
        servers.append(p1)
        p2 = kc.Server(KVCAST, COMMON + ["--role", "prefill", "--pd-port", "0"], name="P2")
        servers.append(p2)
        port1, port2 = pd_port(p1), pd_port(p2)
        d = kc.Server(KVCAST, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                               "--base-kv-mib", "8", "--role", "decode", "--prefill-peers",
                               "127.0.0.1:%d,127.0.0.1:%d" % (port1, port2)], name="decode")
        servers.append(d)
        wait_for(lambda: health(d)[1].get("prefill_peers_up") == 2, "both peers up")

        result = {}

        def client():
            result["r"] = d.post(BODY, timeout=60)

        t = threading.Thread(target=client)
        t.start()
        # P1 holds it once its prefill started (its queue/in-flight shows in D's /health).
        wait_for(lambda: any(p["in_flight"] == 1 and p["addr"].endswith(":%d" % port1)
                             for p in health(d)[1].get("prefill_peers", [])),
                 "the request on P1")
        time.sleep(0.3)
        p1.proc.send_signal(signal.SIGKILL)
        p1.proc.wait()
        t.join(60)
        status, raw = result.get("r", (0, ""))
        if status != 200:
            fail("request in flight on the killed prefill host: %d %s" % (status, raw[:300]))
        text = json.loads(raw)["choices"][0]["text"]
        m = d.metrics()
        retries = kc.total(m, "kvcast:pd_retries_total")
        if retries != 1:
            fail("pd_retries_total %s, want 1" % retries)
        # The same request served by P2 alone gives the same greedy text.
        status, raw2 = d.post(BODY, timeout=60)
        if status != 200 or json.loads(raw2)["choices"][0]["text"] != text:
            fail("retried output %r differs from P2's %r" % (text, raw2[:200]))
        h = health(d)[1]
        peers = {p["addr"]: p for p in h["prefill_peers"]}
        a1, a2 = "127.0.0.1:%d" % port1, "127.0.0.1:%d" % port2
        if peers[a1]["up"] or not peers[a2]["up"] or peers[a1]["errors"] < 1:
            fail("decode /health after the kill: %s" % h)
        errs = kc.total(m, "kvcast:pd_peer_errors_total", peer=a1)
        if errs < 1:
            fail("pd_peer_errors_total for P1: %s" % errs)
        wait_for(lambda: kc.total(d.metrics(), "kvcast:kv_cache_usage_perc", pool="base") == 0,
                 "decode KV usage back to 0")
        print("pd retry: request retried on the surviving prefill host (200, %r), 1 retry "
              "counted, KV back to 0" % text)
        client_cancel_reaches_prefill(servers)
        servers.remove(p1)
        p1.finish(clean_exit=False)
        for srv in (d, p2):
            servers.remove(srv)
            srv.finish()
    finally:
        for srv in servers:
            srv.stop()


if __name__ == "__main__":
    main()
