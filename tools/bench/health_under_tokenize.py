#!/usr/bin/python3
"""health_under_tokenize.py — /health latency while huge text prompts are being tokenized.

Starts `kvcast serve` (or uses --url), keeps --clients connections busy posting
--prompt-mib MiB text prompts to /v1/completions (truncate_prompt_tokens makes the server
encode the whole text, max_tokens 1 keeps generation out of the picture), and meanwhile
probes GET /health every --probe-ms (and every 20th probe times a short completion).
Prints one JSON object: /health p50/p99/max in ms, the number of probes, the slowest short
completion, the number of big completions, and any errors. Exit status 1 when the p99 is
over --max-p99-ms (0: no limit) or when a probe or a completion failed.

  /usr/bin/python3 tools/bench/health_under_tokenize.py --kvcast build/release/tools/kvcast

The helpers (start_server, post_json, ...) are also used by
tests/integration/test_server_request_http.py.
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_ready import wait_ready  # noqa: E402

WORDS = "the LORD spake unto Moses saying 12345 , and ; Aaron's sons' 1999 -- "


def prompt_text(n_bytes):
    return (WORDS * (n_bytes // len(WORDS) + 1))[:n_bytes]


def start_server(kvcast, args, log_dir):
    """Starts kvcast serve on 127.0.0.1:0; returns (Popen, port, out_path, log_path)."""
    out_path = os.path.join(log_dir, "server.out")
    log_path = os.path.join(log_dir, "server.log")
    out = open(out_path, "w")
    log = open(log_path, "w")
    p = subprocess.Popen([kvcast, "serve", "--host", "127.0.0.1", "--port", "0"] + args,
                         stdout=out, stderr=log)
    out.close()
    log.close()
    deadline = time.time() + 120
    while time.time() < deadline:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(out_path).read())
        if m and wait_ready(int(m.group(1)), p):
            return p, int(m.group(1)), out_path, log_path
        if p.poll() is not None:
            break
        time.sleep(0.1)
    p.kill()
    p.wait()
    raise RuntimeError("the server did not start:\n" + open(log_path).read()[-3000:])


def stop_server(p, timeout=60):
    """SIGTERM (the server drains, then stops); returns the exit status, or None after
    killing a server that did not stop within timeout seconds."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def request(port, method, path, body=None, timeout=120):
    """Returns (status, parsed JSON or text, seconds)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        dt = time.perf_counter() - t0
        try:
            return r.status, json.loads(data), dt
        except ValueError:
            return r.status, data.decode("utf-8", "replace"), dt
    finally:
        c.close()


def post_json(port, obj, timeout=120):
    return request(port, "POST", "/v1/completions", json.dumps(obj).encode(), timeout)


def percentile(xs, q):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(port, seconds, clients, prompt_mib, probe_ms, truncate=32):
    body = json.dumps({"prompt": prompt_text(int(prompt_mib * (1 << 20)) - 200),
                       "max_tokens": 1, "temperature": 0,
                       "truncate_prompt_tokens": truncate}).encode()
    stop = threading.Event()
    done = []
    errors = []
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                st, out, dt = request(port, "POST", "/v1/completions", body)
                with lock:
                    if st == 200:
                        done.append((dt, out.get("timings", {}).get("tokenize_ms", 0.0)))
                    else:
                        errors.append("completion %d: %.200s" % (st, out))
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append("completion: %r" % e)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let the first bodies arrive and the jobs start
    lat = []
    small = []  # a short completion now and then: it must not queue behind the big ones
    small_body = json.dumps({"prompt": "Hello there", "max_tokens": 1}).encode()
    t_end = time.time() + seconds
    i = 0
    while time.time() < t_end:
        try:
            st, out, dt = request(port, "GET", "/health", timeout=10)
            if st != 200:
                errors.append("health %d" % st)
            lat.append(dt * 1000.0)
            i += 1
            if i % 20 == 0:
                st, out, dt = request(port, "POST", "/v1/completions", small_body, timeout=30)
                if st != 200:
                    errors.append("small completion %d: %.200s" % (st, out))
                small.append(dt * 1000.0)
        except Exception as e:  # noqa: BLE001
            errors.append("health: %r" % e)
        time.sleep(probe_ms / 1000.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return {
        "health_p50_ms": round(percentile(lat, 0.50), 2),
        "health_p99_ms": round(percentile(lat, 0.99), 2),
        "health_max_ms": round(max(lat) if lat else float("nan"), 2),
        "probes": len(lat),
        "small_completion_max_ms": round(max(small), 1) if small else None,
        "small_completions": len(small),
        "completions": len(done),
        "completion_mean_s": round(sum(d for d, _ in done) / len(done), 3) if done else None,
        "tokenize_ms_mean": round(sum(t for _, t in done) / len(done), 1) if done else None,
        "clients": clients,
        "prompt_mib": prompt_mib,
        "errors": errors[:5],
        "n_errors": len(errors),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvcast", help="kvcast binary to start (default: use --url)")
    ap.add_argument("--url", help="a running server, http://127.0.0.1:PORT")
    ap.add_argument("--bundle", default="models/tiny/kvcast-bundle.json")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--prompt-mib", type=float, default=4.0)
    ap.add_argument("--probe-ms", type=float, default=10.0)
    ap.add_argument("--max-p99-ms", type=float, default=0.0)
    ap.add_argument("--server-args", default="",
                    help="extra serve flags, e.g. '--no-strict-fields' for an older build")
    a = ap.parse_args()
    p = None
    tmp = tempfile.mkdtemp(prefix="kc_health_")
    try:
        if a.kvcast:
            p, port, _, _ = start_server(a.kvcast, [
                "--bundle", a.bundle, "--no-access-log",
                "--max-body-bytes", str(int(a.prompt_mib * (1 << 20)) + 4096),
                "--max-connections", "64"] + a.server_args.split(), tmp)
        else:
            port = int(a.url.rsplit(":", 1)[1].strip("/"))
        res = measure(port, a.seconds, a.clients, a.prompt_mib, a.probe_ms)
    finally:
        if p is not None:
            stop_server(p)
    print(json.dumps(res))
    bad = res["n_errors"] > 0 or res["completions"] == 0
    if a.max_p99_ms > 0 and not res["health_p99_ms"] <= a.max_p99_ms:
        bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
