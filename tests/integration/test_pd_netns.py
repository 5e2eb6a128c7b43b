#!/usr/bin/python3
"""Disaggregated serving across two network namespaces (issue 20 item 5; docs/disaggregated.md):
the test builds its own little network and removes it on exit, whatever happens:
  bridge kcb<pid> (198.18.<k>.254/24 in the root namespace, so that the test can reach the
  hosts), namespaces kcp<pid> (prefill, 198.18.<k>.1) and kcd<pid> (decode, 198.18.<k>.2),
  each joined to the bridge by a veth pair; 198.18.0.0/15 is the benchmarking range (RFC 2544).
One kvcast per namespace with the embedded tiny pair (f32): `--role prefill` in kcp, `--role
decode --prefill-peers 198.18.<k>.1:8081` in kcd, and a `--role all` reference on 127.0.0.1.

  --smoke (default suite, ~20 s): one prompt per prefill mode through the decode host equals the
          reference bit for bit (text + logprobs); streamed too; KV back to 0 on both hosts.
  --full  (label slow): more prompts, then TTFT over HTTP (streamed, time to the first token's
          chunk) of predict and full mode across the two hosts vs --role all, interleaved in one
          run, medians and ratios printed (bars: predict <= 1.15x, full <= 1.1x; reported, and
          asserted only with --assert-bars); then a kill -9 of the prefill host under load:
          every request ends in a token stream or a clean error, KV usage returns to 0.

Needs root and iproute2 (`ip netns`); exits 77 (ctest: skipped) without them.
usage: test_pd_netns.py path/to/kvcast [--smoke|--full] [--assert-bars] [--kill-seconds N]
(from the source root; --kill-seconds: length of the load around the kill, default 20; the
issue's bar asks for 120)
"""
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kc_testlib as kc  # noqa: E402

KVCAST = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast")
FULL = "--full" in sys.argv
ASSERT_BARS = "--assert-bars" in sys.argv
KILL_SECONDS = (int(sys.argv[sys.argv.index("--kill-seconds") + 1])
                if "--kill-seconds" in sys.argv else 20)
PID = os.getpid()
K = PID % 200  # third octet: parallel runs do not collide
NET = "198.18.%d." % K
NS_P, NS_D, BR = "kcp%d" % PID, "kcd%d" % PID, "kcb%d" % PID
VETHS = ["kvp%d" % PID, "kvd%d" % PID]  # root-side ends; the peers are <name>n
COMMON = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8",
          "--aux-kv-mib", "8", "--no-enable-prefix-caching", "--no-refine"]
PROMPTS = ["The quick brown fox jumps over the lazy dog because",
           "Once upon a time, in a land far away, there lived a"]
if FULL:
    PROMPTS += ["A B C D E F G H I J K L M N O P Q R S T U V W X Y Z " * 4,
                "In the beginning the universe was created. This has made a lot of people " * 3]
NETWORK = kc.NetnsBridge(NET, BR)  # cleanup() removes everything this test created
sh = kc.sh


def build_network():
    NETWORK.up()
    for ns, veth, last in ((NS_P, VETHS[0], 1), (NS_D, VETHS[1], 2)):
        NETWORK.add(ns, veth, last)


def start(ns, args, log):
    return NETWORK.spawn(ns, [KVCAST, "serve"] + args, log)


def call(host, port, method, path, body=None, timeout=60):
    """(status, text) of one request to host:port."""
    return kc.http_request(host, port, method, path, body, timeout)[:2]


def wait_health(host, port, pred, what, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            st, text = call(host, port, "GET", "/health", timeout=5)
            if st == 200 and pred(json.loads(text)):
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    kc.fail("timed out waiting for " + what)


def complete(host, port, prompt, mode, max_tokens=24):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "prefill_mode": mode,
            "logprobs": 1, "ignore_eos": True}
    st, raw = call(host, port, "POST", "/v1/completions", body, timeout=120)
    kc.check(st == 200, "%s:%d %s: %d %s" % (host, port, mode, st, raw[:300]))
    ch = json.loads(raw)["choices"][0]
    return ch["text"], ch["logprobs"]["token_logprobs"]


def ttft_stream(host, port, prompt, mode, max_tokens=8):
    """(seconds to the first streamed token chunk, full text) of one streamed request."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "prefill_mode": mode,
            "stream": True, "ignore_eos": True}
    c = http.client.HTTPConnection(host, port, timeout=120)
    try:
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json", "Connection": "close"})
        r = c.getresponse()
        kc.check(r.status == 200, "stream %s: %d" % (mode, r.status))
        first, text = None, ""
        while True:
            line = r.fp.readline()
            if not line:
                break
            line = line.decode().strip()
            if line == "data: [DONE]":
                break
            if not line.startswith("data: "):
                continue
            for ch in json.loads(line[6:]).get("choices", []):
                if ch.get("text") and first is None:
                    first = time.perf_counter() - t0
                text += ch.get("text", "")
        return first, text
    finally:
        c.close()


def kv_usage(host, port):
    st, text = call(host, port, "GET", "/metrics", timeout=10)
    return kc.total(kc.parse_metrics(text), "kvcast:kv_cache_usage_perc", pool="base")


def main():
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL).returncode != 0:
        print("pd netns: needs root and iproute2; skipped")
        sys.exit(77)
    kc.cleanup_on_signals(NETWORK.cleanup)
    logs = ["/tmp/kc_pd_%d_%s.log" % (PID, n) for n in ("p", "d", "a")]
    try:
        build_network()
        pub = ["--insecure-public", "--port", "8080"]
        p = start(NS_P, COMMON + pub + ["--host", NET + "1", "--role", "prefill",
                                        "--pd-port", "8081"], logs[0])
        d = start(NS_D, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                         "--base-kv-mib", "8"] + pub +
                  ["--host", NET + "2", "--role", "decode", "--prefill-peers", NET + "1:8081"],
                  logs[1])
        a = kc.Server(KVCAST, COMMON, log=logs[2], name="all")
        NETWORK.track(a.proc)
        D = (NET + "2", 8080)
        P = (NET + "1", 8080)
        wait_health(*P, lambda h: h.get("role") == "prefill", "the prefill host")
        wait_health(*D, lambda h: h.get("prefill_peers_up") == 1, "the decode host's peer")
        for mode in ("full", "predict"):
            for prompt in PROMPTS:
                ra = complete("127.0.0.1", a.port, prompt, mode)
                rd = complete(*D, prompt, mode)
                kc.check(ra == rd, "%s %r: across hosts %r != all %r" % (mode, prompt, rd, ra))
                _, ts = ttft_stream(*D, prompt, mode, max_tokens=24)
                kc.check(ts == ra[0], "%s %r streamed across hosts: %r != %r" % (mode, prompt, ts,
                                                                                 ra[0]))
        print("pd netns: %d prompts x 2 modes identical across namespaces (text + logprobs)"
              % len(PROMPTS))
        t0 = time.time()
        while time.time() - t0 < 10 and (kv_usage(*D) != 0 or kv_usage(*P) != 0):
            time.sleep(0.1)
        kc.check(kv_usage(*D) == 0 and kv_usage(*P) == 0, "KV usage not back to 0")
        if FULL:
            measure_ttft(a.port, D)
            kill_under_load(p, D, seconds=KILL_SECONDS)
        for i, proc in enumerate((d, a.proc)):
            proc.send_signal(signal.SIGTERM)
            kc.check(proc.wait(timeout=30) == 0, "server %d exit status %s" % (i, proc.returncode))
        for log in logs:
            with open(log, errors="replace") as f:
                kc.check(not kc.sanitizer_report(f.read()), "sanitizer report in " + log)
        print("pd netns: ok")
    finally:
        NETWORK.cleanup()
        for log in logs:
            if os.path.exists(log):
                os.unlink(log)


def measure_ttft(all_port, D, rounds=4, block=6):
    """TTFT of the same request on --role all and across the namespaces, side by side in one
    run: alternating blocks of `block` requests per side, the first of each block dropped. (An
    OpenMP team keeps spinning for a while after its last parallel region (libgomp); on these 2
    shared cores the other server's spinning team slows the first request after a switch.)"""
    prompt = "The history of the city begins with a small settlement on the river, where " * 6
    for mode in ("predict", "full"):
        ta, td = [], []
        for _ in range(rounds):
            for host, port, out in (("127.0.0.1", all_port, ta), (D[0], D[1], td)):
                for i in range(block):
                    f, _ = ttft_stream(host, port, prompt, mode)
                    if i > 0:
                        out.append(f)
        ma, md = statistics.median(ta), statistics.median(td)
        bar = 1.15 if mode == "predict" else 1.1
        print("pd netns TTFT %s: all %.2f ms, across hosts %.2f ms, ratio %.2f (bar %.2f), "
              "median of %d" % (mode, 1000 * ma, 1000 * md, md / ma, bar, len(ta)))
        if ASSERT_BARS:
            kc.check(md / ma <= bar, "%s TTFT ratio %.2f above %.2f" % (mode, md / ma, bar))


def kill_under_load(p, D, seconds=20, clients=4):
    """kill -9 of the prefill host while clients stream: every request ends in a token stream
    or a clean error: a 503, or (streams, whose 200 went out at admission) an error event
    before [DONE]; no hang, no stream cut without one."""
    outcomes = {"ok": 0, "503": 0, "error_event": 0, "other": 0}
    others = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def client():
        while time.time() < stop:
            body = {"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0, "stream": True}
            try:
                st, raw = call(*D, "POST", "/v1/completions", body, timeout=60)
            except OSError as e:
                key, what = "other", repr(e)
            else:
                what = "%s %s" % (st, raw[-200:])
                if st == 503:
                    key = "503"
                elif st == 200 and raw.rstrip().endswith("data: [DONE]") and '"error"' in raw:
                    key = "error_event"
                elif st == 200 and raw.rstrip().endswith("data: [DONE]"):
                    key = "ok"
                else:
                    key = "other"
            with lock:
                outcomes[key] += 1
                if key == "other" and len(others) < 3:
                    others.append(what)
            if key in ("503", "error_event"):
                # Errors come back at once: without a pause 4 clients open ~1000 connections a
                # second and run the client's ephemeral ports out (EADDRNOTAVAIL).
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    p.kill()
    p.wait()
    for t in threads:
        t.join()
    print("pd netns: kill -9 of the prefill host under load (%d s): %s %s"
          % (seconds, outcomes, others))
    kc.check(outcomes["other"] == 0, "requests ended neither in a stream nor a clean error")
    kc.check(outcomes["ok"] > 0 and outcomes["503"] + outcomes["error_event"] > 0,
             "expected streams before the kill and clean errors after it")
    t0 = time.time()
    while time.time() - t0 < 10 and kv_usage(*D) != 0:
        time.sleep(0.1)
    kc.check(kv_usage(*D) == 0, "decode KV usage not back to 0 after the kill")


if __name__ == "__main__":
    main()
