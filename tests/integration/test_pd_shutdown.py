#!/usr/bin/python3
"""Shutdown of disaggregated hosts with K/V transfers in flight (issue 20; docs/disaggregated.md):
a prefill host once crashed inside ucp_worker_destroy on shutdown. Each iteration starts a
prefill host and a decode host on loopback (embedded tiny pair; the decode host re-resolves its
peer every 100 ms, so that it keeps reconnecting to a prefill host that is going away), puts 4
streaming clients on the decode host, and after a random 0.2-1.0 s stops the hosts one of
five ways (iteration i uses way i % 5; UCX_TLS=tcp on even rounds of five, UCX's default
transports on odd ones):
  0. SIGTERM of the prefill host; the decode host SIGTERMed once it exited;
  1. SIGTERM of both at the same moment;
  2. SIGTERM of the decode host, then of the prefill host 0-50 ms later;
  3. kill -9 of the decode host, then SIGTERM of the prefill host 0-200 ms later (its
     endpoints fail while it closes them);
  4. SIGTERM of the prefill host while a second decode host connects to it over and over.
Every SIGTERMed host must exit 0 within 30 s with no sanitizer report, no UCX "Caught signal"
and no assertion in its log; every client request ends (a stream, a clean error, or a cut
connection when its decode host was killed).

usage: test_pd_shutdown.py path/to/kvcast [--iterations N] [--seed S] [--ways 0,4]
(from the source root; --ways: only these ways, in turn)
ctest runs 10 iterations (label slow); the soak is --iterations 50.
"""
import http.client
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kc_testlib as kc  # noqa: E402

KVCAST = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast")
ITERATIONS = (int(sys.argv[sys.argv.index("--iterations") + 1])
              if "--iterations" in sys.argv else 5)
SEED = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else os.getpid()
WAYS = ([int(w) for w in sys.argv[sys.argv.index("--ways") + 1].split(",")]
        if "--ways" in sys.argv else [0, 1, 2, 3, 4])
BASE = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8"]
PREFILL = BASE + ["--aux-kv-mib", "8", "--role", "prefill", "--pd-port", "0",
                  "--no-enable-prefix-caching"]
PROMPT = "The history of the city begins with a small settlement on the river, where " * 8
problems_counts = {}  # across iterations: see stop_checked
BAD = ("Sanitizer", "runtime error", "Caught signal", "Segmentation", "Assertion", "assertion failed",
       "ucs_fatal")


def bad_log(text):
    return [b for b in BAD if b in text]


def load(d, stop, counts, lock):
    """One client: streamed completions on the decode host until stop is set."""
    while not stop.is_set():
        body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
        try:
            st, raw = d.post(body, timeout=30)
            key = "ok" if st == 200 and '"error"' not in raw else "error"
        except (OSError, http.client.HTTPException):  # refused, reset, a stream cut short
            key = "cut"
        if key != "ok":
            time.sleep(0.02)  # errors come back at once: do not spin
        with lock:
            counts[key] = counts.get(key, 0) + 1


def stop_checked(srv, what, problems, sig=signal.SIGTERM):
    """Sends sig unless srv exited; waits up to 30 s; records a bad exit or log."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(sig)
    try:
        rc = srv.proc.wait(timeout=30)
    except Exception:  # noqa: BLE001 (subprocess.TimeoutExpired)
        srv.proc.kill()
        rc = srv.proc.wait()
        problems.append("%s did not exit within 30 s" % what)
    text = srv.log_text()
    if sig == signal.SIGTERM and rc != 0:
        problems.append("%s exit status %s; log tail:\n%s" % (what, rc, text[-3000:]))
    if bad_log(text):
        problems.append("%s log has %s:\n%s" % (what, bad_log(text), text[-4000:]))
    if what == "prefill":
        # Connections that arrived while its transport was being freed (pd_ucx.c conn_req_cb).
        counts = problems_counts.setdefault("closed_while_stopping", [0])
        counts[0] += text.count("closed at once: this host is stopping")
    return rc


def peer_up(d, p, problems, timeout=30):
    """Waits for decode host d's prefill peer to be up; records both logs if it is not."""
    t0 = time.time()
    while kc.health(d)[1].get("prefill_peers_up") != 1:
        if time.time() - t0 > timeout:
            problems.append("a decode host's peer not up after %d s; decode log tail:\n%s\n"
                            "prefill log tail:\n%s"
                            % (timeout, d.log_text()[-2500:], p.log_text()[-2500:]))
            return False
        time.sleep(0.05)
    return True


def iteration(i, rng):
    way = WAYS[i % len(WAYS)]
    env = {"UCX_TLS": "tcp"} if (i // len(WAYS)) % 2 == 0 else {}
    servers, problems = [], []
    try:
        p = kc.Server(KVCAST, PREFILL, env=env, name="prefill")
        servers.append(p)
        h = kc.wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(kc.health(p)),
                        "prefill up")
        peer = "127.0.0.1:%d" % h["pd_port"]
        dargs = BASE + ["--role", "decode", "--prefill-peers", peer, "--pd-resolve-ms", "100"]
        d = kc.Server(KVCAST, dargs, env=env, name="decode")
        servers.append(d)
        if not peer_up(d, p, problems):
            return way, env, {}, problems
        d2 = None
        if way == 4:
            # A second decode host whose peer entry names the prefill host twice: it connects
            # again every 100 ms whenever its connections are down.
            d2 = kc.Server(KVCAST, dargs, env=env, name="decode2")
            servers.append(d2)
            if not peer_up(d2, p, problems):
                return way, env, {}, problems
        stop, lock, counts = threading.Event(), threading.Lock(), {}
        threads = [threading.Thread(target=load, args=(d, stop, counts, lock), daemon=True)
                   for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.0))
        if way == 0:
            stop_checked(p, "prefill", problems)
            stop_checked(d, "decode", problems)
        elif way == 1:
            p.proc.send_signal(signal.SIGTERM)
            d.proc.send_signal(signal.SIGTERM)
            stop_checked(p, "prefill", problems)
            stop_checked(d, "decode", problems)
        elif way == 2:
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0, 0.05))
            stop_checked(p, "prefill", problems)
            stop_checked(d, "decode", problems)
        elif way == 3:
            d.proc.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.2))
            stop_checked(p, "prefill", problems)
            stop_checked(d, "decode", problems, sig=signal.SIGKILL)
        else:
            stop_checked(p, "prefill", problems)
            stop_checked(d, "decode", problems)
            stop_checked(d2, "decode2", problems)
        stop.set()
        for t in threads:
            t.join(timeout=40)
            if t.is_alive():
                problems.append("a client did not end")
        return way, env, counts, problems
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
            if s.temp_log and os.path.exists(s.log):
                os.unlink(s.log)


def main():
    rng = random.Random(SEED)
    t0 = time.time()
    failed = 0
    for i in range(ITERATIONS):
        way, env, counts, problems = iteration(i, rng)
        print("pd shutdown %d/%d: way %d, %s, requests %s%s" % (
            i + 1, ITERATIONS, way, "UCX_TLS=tcp" if env else "UCX default", counts,
            "" if not problems else ": FAILED"), flush=True)
        for pr in problems:
            print("  " + pr, flush=True)
        failed += bool(problems)
    print("pd shutdown: %d iterations (seed %d), %d failed, %.0f s; %d connections accepted and "
          "closed while a prefill host was stopping"
          % (ITERATIONS, SEED, failed, time.time() - t0,
             problems_counts.get("closed_while_stopping", [0])[0]))
    kc.check(failed == 0, "%d of %d iterations failed" % (failed, ITERATIONS))


if __name__ == "__main__":
    main()
