#!/usr/bin/python3
"""Where the remote TTFT goes (issue 20; docs/disaggregated.md, "Where the time goes"): the
netns pair of test_pd_netns.py (a prefill host and a decode host in two network namespaces,
UCX over veth + a bridge) with --log-level debug on both, N streamed requests of one prefill
mode through the decode host, then the 'pd trace' debug lines of both logs (CLOCK_MONOTONIC
stamps in microseconds: the namespaces share the clock) matched by request and cut into the
segments of the path, printed as medians and p90 (the first 3 requests dropped).
Not a test: a measuring aid. Needs root and iproute2, like test_pd_netns.py.
usage: sudo UCX_TLS=tcp /usr/bin/python3 tests/integration/pd_trace.py path/to/kvcast [N] [mode]
(from the source root; N default 30, mode predict|full, default predict)"""
import os
import re
import statistics
import sys
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.chdir(SRC)
kv = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 30
MODE = sys.argv[3] if len(sys.argv) > 3 else "predict"
sys.argv = [sys.argv[0], kv]
sys.path.insert(0, SRC + "/tests/integration")
import test_pd_netns as T  # noqa



def main():
    logs = ["/tmp/kc_pd_trace_%d_%s.log" % (os.getpid(), n) for n in ("p", "d")]
    try:
        T.build_network()
        pub = ["--insecure-public", "--port", "8080", "--log-level", "debug"]
        T.start(T.NS_P, T.COMMON + pub + ["--host", T.NET + "1", "--role", "prefill",
                                          "--pd-port", "8081"], logs[0])
        T.start(T.NS_D, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                         "--base-kv-mib", "8"] + pub +
                ["--host", T.NET + "2", "--role", "decode", "--prefill-peers", T.NET + "1:8081"],
                logs[1])
        D = (T.NET + "2", 8080)
        T.wait_health(T.NET + "1", 8080, lambda h: h.get("role") == "prefill", "P")
        T.wait_health(*D, lambda h: h.get("prefill_peers_up") == 1, "D peer")
        prompt = "The history of the city begins with a small settlement on the river, where " * 6
        ttft = []
        for i in range(N):
            f, _ = T.ttft_stream(*D, prompt, MODE)
            if i >= 3:
                ttft.append(f * 1000)
        time.sleep(0.5)
    finally:
        T.cleanup()
    dl = open(logs[1]).read()
    pl = open(logs[0]).read()
    for log in logs:
        os.unlink(log)
    first = {}
    for m in re.finditer(r"pd trace first req=(\d+) queued_us=(\d+) admitted_us=(\d+) "
                         r"sent_us=(\d+) first_us=(\d+) emitted_us=(\d+) prefill_ms=([\d.]+)", dl):
        first[int(m.group(1))] = [int(x) for x in m.groups()[1:6]] + [float(m.group(7))]
    dpost = {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"pd trace post type=2 req=(\d+) len=\d+ queued_us=(\d+) posted_us=(\d+)", dl)}
    prx = {int(m.group(1)): int(m.group(2)) for m in re.finditer(
        r"pd trace rx type=2 req=(\d+) len=\d+ at_us=(\d+)", pl)}
    ship = {int(m.group(2)): (int(m.group(3)), int(m.group(4)), int(m.group(5))) for m in
            re.finditer(r"pd trace ship req=(\d+) peer_req=(\d+) queued_us=(\d+) "
                        r"prefilling_us=(\d+) ship_us=(\d+)", pl)}
    ppost = {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"pd trace post type=3 req=(\d+) len=\d+ queued_us=(\d+) posted_us=(\d+)", pl)}
    drx = {int(m.group(1)): int(m.group(2)) for m in re.finditer(
        r"pd trace rx type=3 req=(\d+) len=\d+ at_us=(\d+)", dl)}
    seg = {k: [] for k in ("D submit->admit", "D admit->SUBMIT queued", "D SUBMIT queued->posted",
                           "net D->P (posted->P rx)", "P rx->queued", "P queued->prefilling",
                           "P prefilling->ship", "P FIRST queued->posted",
                           "net P->D (posted->D rx)", "D rx->FIRST handled", "D FIRST->token to server (*)",
                           "total submit->FIRST handled", "remote overhead (total - P prefill)")}
    for rid, (q, a, s, fst, em, pms) in sorted(first.items())[3:]:
        if rid not in dpost or rid not in prx or rid not in ship or rid not in ppost or \
                rid not in drx:
            continue
        pq, pp, psh = ship[rid]
        seg["D submit->admit"].append(a - q)
        seg["D admit->SUBMIT queued"].append(s - a)
        seg["D SUBMIT queued->posted"].append(dpost[rid][1] - dpost[rid][0])
        seg["net D->P (posted->P rx)"].append(prx[rid] - dpost[rid][1])
        seg["P rx->queued"].append(pq - prx[rid])
        seg["P queued->prefilling"].append(pp - pq)
        seg["P prefilling->ship"].append(psh - pp)
        seg["P FIRST queued->posted"].append(ppost[rid][1] - ppost[rid][0])
        seg["net P->D (posted->D rx)"].append(drx[rid] - ppost[rid][1])
        seg["D rx->FIRST handled"].append(fst - drx[rid])
        seg["D FIRST->token to server (*)"].append(em - fst)
        seg["total submit->FIRST handled"].append(fst - q)
        seg["remote overhead (total - P prefill)"].append(fst - q - (psh - pp))
    for k, v in seg.items():
        if v:
            print("%-40s median %7.0f us  p90 %7.0f us  (n=%d)" % (
                k, statistics.median(v), sorted(v)[int(0.9 * len(v))], len(v)))
    print("(*) ends after the server's wake-up call returns: includes any preemption by the "
          "thread it woke, so it is left out of the total")
    print("HTTP TTFT median %.2f ms (n=%d)" % (statistics.median(ttft), len(ttft)))


main()
