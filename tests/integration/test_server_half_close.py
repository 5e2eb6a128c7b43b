#!/usr/bin/python3
"""Integration test: half-closed clients under load, and real disconnects (issue 15 item 5).

A client may send its whole request and then shutdown(SHUT_WR) (`nc -N`, some proxies, HTTP
tools that signal "request done"). That is not a gone client: it must get its whole answer.
A client that really went away (close() sends the same FIN; or RST) must still be cancelled
promptly, with its KV blocks back in the pool.

  load        8 closed-loop keep-alive clients (stream and non-stream) run for the whole
              phase, while 48 half-closed clients (completions, stream and non-stream, a few
              /tokenize and one HTTP/1.0) arrive from 12 threads and 12 source addresses: every
              one must get a complete 200 (usage / [DONE] / tokens), and no access-log line
              may say status=0. Before the fix most of these got nothing (libmicrohttpd read
              the FIN at the resume after the prepare job and closed: server/http.c DESIGN 5).
  gone        mid-generation: a non-stream client that close()s (FIN only), one that resets
              (RST), a stream client that close()s after its first token, and a client that
              half-closed, read the "100 Continue" probe, then closed: each is cancelled well
              before its generation would end (abort counter +1) and KV usage and running
              requests return to 0.

Usage: test_server_half_close.py KVCAST_BINARY (run from the source root). Every wait is
bounded; the whole run takes about 15 s.
"""
import json
import socket
import struct
import sys
import threading
import time

import kc_testlib as kc
from kc_testlib import FAILS, expect as check

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
STEP_MS = 25  # --debug-step-delay-ms: a decode step takes at least this long
ABORTS = 'kvcast:request_success_total{model_name="tiny",finished_reason="abort"}'
KV = 'kvcast:kv_cache_usage_perc{model_name="tiny",pool="base"}'
RUNNING = 'kvcast:num_requests_running{model_name="tiny"}'


class Server(kc.Server):
    def __init__(self):
        super().__init__(KVCAST, ["--model", "tests/golden/llama_gqa", "--tokenizer",
                                  "tests/fixtures/tiny_tokenizer", "--base-kv-mib", "1",
                                  "--served-model-name", "tiny", "--access-log",
                                  "--debug-step-delay-ms", str(STEP_MS),
                                  "--disconnect-check-ms", "20", "--heartbeat-ms", "100"])

    def stop(self):
        """Stops the server, checks its exit status and log; returns the log."""
        return self.finish(check)


def dial(port, src="127.0.0.1", timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def post_bytes(path, obj, version="HTTP/1.1", keepalive=False):
    body = json.dumps(obj).encode()
    head = "POST %s %s\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" \
           "Content-Length: %d\r\n" % (path, version, len(body))
    if not keepalive:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n", body


def parse_response(data, eof=False):
    """(status, headers, body) of the final response in data (1xx skipped), or None. eof: data
    ends where the server closed (a body without length or chunks ends there)."""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            data = rest
            continue
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        break
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return None
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        return status, hdrs, out
    n = int(hdrs.get("content-length", "-1"))
    if n < 0 and eof:
        return status, hdrs, rest
    if n < 0 or len(rest) < n:
        return None
    return status, hdrs, rest[:n]


def read_until_eof(s, timeout=20.0):
    s.settimeout(timeout)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d


def answer_ok(kind, max_tokens, r):
    """Is r a complete 200 answer to a request of this kind? (reason text when not)"""
    if r is None:
        return "incomplete or no response"
    st, _, body = r
    if st != 200:
        return "status %d %r" % (st, body[:200])
    if kind == "tokenize":
        return None if json.loads(body).get("count", 0) > 0 else "no tokens %r" % body[:200]
    if kind == "stream":
        events = [ln[6:] for ln in body.decode().split("\n") if ln.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "stream without [DONE]: %r" % body[-200:]
        finals = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        return None if finals and finals[-1] == "length" else "finish %r" % finals[-1:]
    o = json.loads(body)
    if o["usage"]["completion_tokens"] != max_tokens:
        return "usage %r" % o["usage"]
    return None if o["choices"][0]["finish_reason"] == "length" else "finish %r" % o


# ---- load phase ----

def normal_client(port, k, stop, stats):
    """Closed loop on keep-alive connections, alternating stream and non-stream."""
    s = None
    i = 0
    while not stop.is_set():
        kind = "stream" if (i + k) % 2 else "nonstream"
        i += 1
        mt = 6
        head, body = post_bytes("/v1/completions", {
            "prompt": [1, 2, 3, 4 + k], "max_tokens": mt, "ignore_eos": True,
            "stream": kind == "stream"}, keepalive=True)
        try:
            if s is None:
                s = dial(port, "127.0.0.%d" % (100 + k))
            s.sendall(head + body)
            data = b""
            r = None
            s.settimeout(20.0)
            while r is None:
                d = s.recv(65536)
                if not d:
                    break
                data += d
                r = parse_response(data)
            why = answer_ok(kind, mt, r)
            stats["normal"] += 1
            if why is not None:
                stats["normal_bad"].append("%s: %s" % (kind, why))
                s.close()
                s = None
        except OSError as e:
            stats["normal_bad"].append("%s: %r" % (kind, e))
            if s is not None:
                s.close()
            s = None
    if s is not None:
        s.close()


def half_closed_client(port, k, n, results):
    """n half-closed requests in a row from 127.0.0.(2+k)."""
    for j in range(n):
        idx = k * n + j
        mt = 5 + idx % 4
        if idx % 16 == 5:
            kind, path, obj = "tokenize", "/tokenize", {"prompt": "the LORD spake %d" % idx}
        else:
            kind = "stream" if idx % 2 else "nonstream"
            path = "/v1/completions"
            obj = {"prompt": [1, 2, 3, idx % 50], "max_tokens": mt, "ignore_eos": True,
                   "stream": kind == "stream"}
        version = "HTTP/1.0" if idx == 7 else "HTTP/1.1"
        head, body = post_bytes(path, obj, version)
        try:
            s = dial(port, "127.0.0.%d" % (2 + k))
            if idx % 3 == 0:  # head and body in separate segments, then the FIN
                s.sendall(head)
                time.sleep(0.002)
                s.sendall(body)
            else:
                s.sendall(head + body)
            s.shutdown(socket.SHUT_WR)  # like `nc -N`
            data = read_until_eof(s)
            s.close()
            results.append((kind, version, answer_ok(kind, mt, parse_response(data, eof=True)), data[:120]))
        except OSError as e:
            results.append((kind, version, repr(e), b""))


def test_load(srv):
    port = srv.port
    stop = threading.Event()
    stats = {"normal": 0, "normal_bad": []}
    normals = [threading.Thread(target=normal_client, args=(port, k, stop, stats))
               for k in range(8)]
    for t in normals:
        t.start()
    time.sleep(0.5)  # the normal load is running
    results = []
    halves = [threading.Thread(target=half_closed_client, args=(port, k, 4, results))
              for k in range(12)]
    t0 = time.time()
    for t in halves:
        t.start()
    for t in halves:
        t.join(60)
    dt = time.time() - t0
    stop.set()
    for t in normals:
        t.join(30)
    bad = [r for r in results if r[2] is not None]
    check(len(results) == 48, "half-closed clients finished: %d of 48" % len(results))
    check(not bad, "%d of %d half-closed clients without a complete answer, e.g. %r"
          % (len(bad), len(results), bad[:3]))
    kinds = {}
    for r in results:
        kinds[r[0]] = kinds.get(r[0], 0) + 1
    check(kinds.get("stream", 0) >= 16 and kinds.get("nonstream", 0) >= 16 and
          kinds.get("tokenize", 0) >= 2, "mix of half-closed requests: %r" % kinds)
    check(stats["normal"] >= 16 and not stats["normal_bad"],
          "normal clients: %d requests, failures %r" % (stats["normal"], stats["normal_bad"][:3]))
    print("load: %d half-closed answered in %.1f s beside %d normal requests (%r)"
          % (len(results) - len(bad), dt, stats["normal"], kinds), flush=True)


# ---- real disconnects ----

def metric(port, name):
    s = dial(port)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        r = parse_response(read_until_eof(s, 5.0), eof=True)
    finally:
        s.close()
    return kc.parse_metrics(r[2].decode()).get(name)


def wait_idle(port, timeout):
    """Seconds until KV usage and running requests are both 0 (None: not within timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metric(port, KV) == 0.0 and metric(port, RUNNING) == 0.0:
            return time.time() - t0
        time.sleep(0.03)
    return None


def recv_until(s, marker, timeout=5.0):
    """Reads from s until marker has come (or the server closed); returns what was read."""
    s.settimeout(timeout)
    got = b""
    while marker not in got:
        d = s.recv(4096)
        if not d:
            break
        got += d
    return got


def test_gone(srv):
    port = srv.port
    check(wait_idle(port, 10.0) is not None, "server idle before the disconnect cases")
    mt = 120  # 120 tokens x 25 ms = 3 s if nothing cancelled (the model holds 128)
    for case in ("close", "reset", "stream_close", "halfclose_then_close"):
        aborts = metric(port, ABORTS) or 0.0
        stream = case == "stream_close"
        head, body = post_bytes("/v1/completions", {
            "prompt": [1, 2, 3], "max_tokens": mt, "ignore_eos": True, "stream": stream})
        s = dial(port)
        s.sendall(head + body)
        if case == "halfclose_then_close":
            s.shutdown(socket.SHUT_WR)
            # The server writes "100 Continue" when it sees the FIN; read it, so that the
            # later close() sends nothing (no RST for unread data): only a later probe finds
            # the client gone.
            got = recv_until(s, b"\r\n\r\n")
            check(got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"),
                  "%s: the half-close probe, got %r" % (case, got[:80]))
        if stream:
            recv_until(s, b"data: {")
        t1 = time.time()
        while metric(port, RUNNING) < 1 and time.time() - t1 < 5.0:
            time.sleep(0.02)
        time.sleep(0.2)
        check((metric(port, KV) or 0.0) > 0.0, "%s: KV in use while running" % case)
        if case == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t_close = time.time()
        s.close()
        idle = wait_idle(port, 3.0)
        took = time.time() - t_close
        check(idle is not None, "%s: KV usage / running requests did not return to 0" % case)
        check(took < 1.5, "%s: cancelled %.2f s after the close (generation: %.1f s)"
              % (case, took, mt * STEP_MS / 1000.0))
        check((metric(port, ABORTS) or 0.0) >= aborts + 1, "%s: abort not counted" % case)
        print("gone/%s: idle %.2f s after the close" % (case, took), flush=True)


def main():
    t0 = time.time()
    srv = Server()
    try:
        test_load(srv)
        test_gone(srv)
    finally:
        log = srv.stop()
    zero = [ln for ln in log.splitlines() if "status=0 " in ln and "/v1/completions" in ln
            and "gen_tokens=0 " in ln and "completion_id=- " in ln]
    check(not zero, "access log: requests closed before any answer: %r" % zero[:3])
    print("total %.1f s, %d failure(s)" % (time.time() - t0, len(FAILS)))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
