#!/usr/bin/python3
"""Integration test of the HTTP edge of `kvcast serve` against hostile and odd clients
(issue 15, items 2, 3, 5, 6, 8, 16, 17), over raw sockets:

  slowloris  300 connections trickling one byte every 0.5 s from 30 loopback addresses
             (127.0.0.2..31, reconnecting when closed) plus body tricklers: a normal request
             from another address must answer within 1 s throughout; /metrics counts the
             deadlines and evictions.
  idle flood 1000 idle connections from 100 addresses: the same bound for normal requests.
  deadlines  a partial head is closed after --header-timeout-s, a partial body after
             --body-timeout-s.
  per-IP     over --max-connections-per-ip a request gets 503 + Retry-After; other
             addresses are unaffected; the default (0) lets one address open many.
  half-close a client that sends its request and shuts down its write side gets the whole
             answer (non-stream and stream).
  framing    differing Content-Length, two Transfer-Encoding, "Transfer-Encoding :",
             TE + CL, TE gzip: 400 + close; identical repeated CL is fine; a chunked body
             over --max-body-bytes gets 413.
  auth       /metrics needs the key unless --metrics-public; --api-key as a flag warns.
  headers    CORS allow-headers reflected or configured; --allowed-hosts; X-Request-Id.
  logs       --log-format json: every line is a JSON object; the access log has method,
             path, status, client, request id, completion id and the tokens of an aborted
             request.

Usage: test_server_slow_clients.py KVCAST_BINARY  (run from the source root). Every wait is
bounded; the whole run takes about 30 s.
"""
import json
import os
import random
import re
import resource
import socket
import sys
import tempfile
import threading
import time

import kc_testlib as kc
from kc_testlib import FAILS, expect as check

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BASE = ["--model", "tests/golden/llama_gqa", "--tokenizer",
        "tests/fixtures/tiny_tokenizer", "--base-kv-mib", "1",
        "--served-model-name", "tiny"]


class Server(kc.Server):
    def __init__(self, *extra, env=None):
        super().__init__(KVCAST, BASE + list(extra), env=env)

    def stop(self):
        """Stops the server, checks its exit status and log; returns the log."""
        return self.finish(check)


def dial(port, src="127.0.0.1", timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_response(s, timeout=5.0):
    """Reads one response (skipping 1xx); returns (status, headers dict lower-case, body)."""
    s.settimeout(timeout)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            b = s.recv(65536)
            if not b:
                return (0, {}, buf)
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            buf = rest
            continue
        break
    body = rest
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while len(body) < n:
            b = s.recv(65536)
            if not b:
                break
            body += b
        body = body[:n]
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            b = s.recv(65536)
            if not b:
                break
            body += b
        out = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line, 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        body = out
    return (status, hdrs, body)


def request(port, method, path, body=None, headers=(), src="127.0.0.1", timeout=5.0):
    s = dial(port, src, timeout)
    try:
        h = "%s %s HTTP/1.1\r\nConnection: close\r\n" % (method, path)
        if not any(x.lower().startswith("host:") for x in headers):
            h += "Host: 127.0.0.1\r\n"
        for x in headers:
            h += x + "\r\n"
        data = b""
        if body is not None:
            data = body.encode() if isinstance(body, str) else body
            h += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        s.sendall(h.encode() + b"\r\n" + data)
        return read_response(s, timeout)
    finally:
        s.close()


def raw(port, data, timeout=5.0):
    s = dial(port, timeout=timeout)
    try:
        s.sendall(data)
        st, h, b = read_response(s, timeout)
        # After a 400/413 with Connection: close the server must close: EOF next.
        try:
            more = s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            more = b"?"
        return st, h, b, more
    finally:
        s.close()


def metric(port, name, headers=()):
    st, _, body = request(port, "GET", "/metrics", headers=headers)
    assert st == 200, st
    return kc.parse_metrics(body.decode()).get(name)


def closed_count(port, reason):
    return metric(port, 'kvcast:http_connections_closed_total{model_name="tiny",reason="%s"}'
                  % reason)


def probe_loop(port, stop, lat, errors, srcs):
    while not stop.is_set():
        t0 = time.time()
        try:
            st, _, _ = request(port, "GET", "/health", src=random.choice(srcs), timeout=5.0)
            dt = time.time() - t0
            lat.append(dt)
            if st != 200:
                errors.append("status %d" % st)
        except Exception as e:  # noqa: BLE001 - any failure of a normal client counts
            lat.append(time.time() - t0)
            errors.append(repr(e))
        time.sleep(0.2)


def test_slowloris():
    srv = Server("--header-timeout-s", "3", "--body-timeout-s", "3")
    port = srv.port
    addrs = ["127.0.0.%d" % i for i in range(2, 32)]
    stop = threading.Event()
    lat, errors = [], []
    opened = [0]

    def trickle():
        socks = {}

        def fresh(i):
            try:
                s = dial(port, addrs[i % len(addrs)], timeout=2.0)
                s.setblocking(False)
                if i % 30 == 0:  # body trickler: a complete head, then the body byte by byte
                    s.send(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           b"application/json\r\nContent-Length: 100000\r\n\r\n{")
                else:
                    s.send(b"GET /health HTTP/1.1\r\n")
                socks[i] = s
                opened[0] += 1
            except OSError:
                socks.pop(i, None)

        for i in range(300):
            fresh(i)
        while not stop.is_set():
            for i in range(300):
                s = socks.get(i)
                try:
                    if s is None:
                        raise OSError
                    s.send(b" " if i % 30 == 0 else b"X")
                except OSError:
                    if s is not None:
                        s.close()
                    socks.pop(i, None)
                    fresh(i)  # the attacker comes back at once
            stop.wait(0.5)
        for s in socks.values():
            s.close()

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(1.0)  # let the trickle fill every slot
    p = threading.Thread(target=probe_loop,
                         args=(port, stop, lat, errors, ["127.0.0.1", "127.0.0.40", "127.0.0.41"]))
    p.start()
    time.sleep(7.0)  # longer than two header deadlines
    stop.set()
    t.join()
    p.join()
    lat.sort()
    print("slowloris: %d probes, p50 %.3f s, max %.3f s, %d trickler connections opened"
          % (len(lat), lat[len(lat) // 2], lat[-1], opened[0]), flush=True)
    check(len(lat) >= 10, "too few probes: %d" % len(lat))
    check(not errors, "probes failed under slowloris: %s" % errors[:5])
    check(lat[-1] < 1.0, "a normal request waited %.3f s under slowloris" % lat[-1])
    ev = closed_count(port, "evicted")
    ht = closed_count(port, "header_timeout")
    bt = closed_count(port, "body_timeout")
    print("slowloris: evicted %s header_timeout %s body_timeout %s" % (ev, ht, bt), flush=True)
    check(ev is not None and ev > 0, "no evictions counted")
    check(ht is not None and ht + ev >= 300, "tricklers were not closed (%s, %s)" % (ht, ev))
    log = srv.stop()
    # The warning is rate-limited: a few lines, not one per connection.
    n_warn = len(re.findall(r"closed the longest-waiting|sent no whole request head", log))
    check(1 <= n_warn <= 5, "eviction/timeout warnings: %d lines" % n_warn)


def test_idle_flood_and_deadlines():
    srv = Server("--header-timeout-s", "2", "--body-timeout-s", "2")
    port = srv.port
    flood = []
    for i in range(1000):
        try:
            flood.append(dial(port, "127.0.1.%d" % (1 + i % 100), timeout=2.0))
        except OSError as e:
            check(False, "idle flood connect %d failed: %r" % (i, e))
            break
    stop = threading.Event()
    lat, errors = [], []
    p = threading.Thread(target=probe_loop, args=(port, stop, lat, errors, ["127.0.0.1"]))
    p.start()
    time.sleep(2.0)
    stop.set()
    p.join()
    lat.sort()
    print("idle flood: %d probes, max %.3f s" % (len(lat), lat[-1]), flush=True)
    check(not errors, "probes failed under an idle flood: %s" % errors[:5])
    check(lat and lat[-1] < 1.0, "a normal request waited %.3f s under an idle flood" % lat[-1])
    for s in flood:
        s.close()
    # A partial head is closed after the header deadline, a partial body after the body one.
    for data, what in ((b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", "head"),
                       (b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        b"application/json\r\nContent-Length: 100\r\n\r\n{\"pro", "body"),
                       (b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n",
                        "chunked body")):
        s = dial(port, timeout=6.0)
        s.sendall(data)
        t0 = time.time()
        try:
            got = s.recv(100)
        except (ConnectionResetError, socket.timeout) as e:
            got = repr(e).encode()
        dt = time.time() - t0
        s.close()
        check(got == b"" and 1.5 < dt < 3.5,
              "partial %s: closed after %.2f s with %r (want EOF after ~2 s)" % (what, dt, got))
    check(closed_count(port, "header_timeout") >= 1, "header timeout not counted")
    check(closed_count(port, "body_timeout") >= 2, "body timeouts not counted")
    srv.stop()


def test_per_ip_limit():
    srv = Server("--max-connections-per-ip", "2")
    port = srv.port
    hold = [dial(port, "127.0.0.5"), dial(port, "127.0.0.5")]
    time.sleep(0.1)
    st, h, _ = request(port, "GET", "/health", src="127.0.0.5")
    check(st == 503 and "retry-after" in h, "over the per-IP limit: %d %s" % (st, h))
    st, _, _ = request(port, "GET", "/health", src="127.0.0.6")
    check(st == 200, "another address got %d" % st)
    check(closed_count(port, "per_ip_limit") >= 1, "per-IP refusal not counted")
    for s in hold:
        s.close()
    time.sleep(0.3)
    st, _, _ = request(port, "GET", "/health", src="127.0.0.5")
    check(st == 200, "after the others closed: %d" % st)
    log = srv.stop()
    check("max-connections-per-ip" in log, "no warning for the per-IP refusal")
    # Default: unlimited per address (a load generator is one address).
    srv = Server()
    many = [dial(srv.port) for _ in range(60)]
    for s in many:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    ok = sum(1 for s in many if read_response(s)[0] == 200)
    check(ok == 60, "60 connections from one address: %d got 200" % ok)
    for s in many:
        s.close()
    srv.stop()


def test_half_close_and_framing():
    srv = Server("--debug-step-delay-ms", "20", "--disconnect-check-ms", "20",
                 "--heartbeat-ms", "100", "--max-body-bytes", "4096")
    port = srv.port
    for stream in (False, True):
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 30, "ignore_eos": True,
                           "stream": stream}).encode()
        s = dial(port, timeout=10.0)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.shutdown(socket.SHUT_WR)  # like `nc -N`
        st, _, b = read_response(s, 10.0)
        s.close()
        if stream:
            # All 30 tokens streamed: finish_reason "length" (max_tokens reached) and [DONE].
            # Not a count of chunks: the detokenizer may hold a token's bytes back and send two
            # tokens in one chunk (the sampled tokens vary from run to run).
            ok = (st == 200 and b"data: [DONE]" in b and b'"finish_reason":"length"' in b)
        else:
            ok = st == 200 and json.loads(b)["usage"]["completion_tokens"] == 30
        check(ok, "half-closed client (stream=%s): %d %r" % (stream, st, b[:200]))
    hdr = b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    js = b'{"prompt":"ab"}'
    cases = [
        (hdr + b"Content-Length: 15\r\nContent-Length: 14\r\n\r\n" + js, 400, "differing CL"),
        (hdr + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"f\r\n" + js + b"\r\n0\r\n\r\n", 400, "two TE"),
        (hdr + b"Transfer-Encoding : chunked\r\nContent-Length: 15\r\n\r\n" + js, 400,
         "TE with a space before the colon"),
        (hdr + b"Transfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n" + js, 400, "TE + CL"),
        (hdr + b"Transfer-Encoding: gzip\r\n\r\n" + js, 400, "TE gzip"),
        (hdr + b"Content-Length: +15\r\n\r\n" + js, 400, "signed CL"),
        (hdr + b"Host: evil.example\r\nContent-Length: 15\r\n\r\n" + js, 400, "two Host"),
    ]
    for data, want, what in cases:
        st, h, b, more = raw(port, data)
        check(st == want and h.get("connection", "").lower() == "close" and more == b"",
              "%s: %d %s more=%r" % (what, st, h, more))
    st, _, _, _ = raw(port, hdr + b"Content-Length: 15\r\nContent-Length: 15\r\n"
                      b"Connection: close\r\n\r\n" + js)
    check(st == 200, "identical repeated Content-Length: %d" % st)
    # Chunked body over --max-body-bytes 4096: 413, not a silent drop.
    chunks = b"".join(b"%x\r\n" % 1500 + b"a" * 1500 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    st, h, b, _ = raw(port, hdr + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    check(st == 413, "chunked body over the cap: %d %r" % (st, b[:100]))
    srv.stop()


def test_auth_cors_hosts_ids():
    keyfile = tempfile.NamedTemporaryFile("w", prefix="kc_key_", delete=False)
    keyfile.write("k-file-123\n")
    keyfile.close()
    srv = Server("--api-key-file", keyfile.name, "--cors-allow-origins", "http://a.example")
    port = srv.port
    auth = ("Authorization: Bearer k-file-123",)
    st, _, _ = request(port, "GET", "/metrics")
    check(st == 401, "/metrics without the key: %d" % st)
    st, _, _ = request(port, "GET", "/metrics", headers=auth)
    check(st == 200, "/metrics with the key: %d" % st)
    st, _, _ = request(port, "GET", "/health")
    check(st == 200, "/health stays public: %d" % st)
    # CORS: the preflight reflects the requested headers for an allowed origin only.
    pre = ("Origin: http://a.example", "Access-Control-Request-Method: POST",
           "Access-Control-Request-Headers: x-stainless-os, content-type, authorization")
    st, h, _ = request(port, "OPTIONS", "/v1/completions", headers=pre)
    check(st == 204 and h.get("access-control-allow-headers") ==
          "x-stainless-os, content-type, authorization"
          and h.get("access-control-allow-origin") == "http://a.example",
          "preflight: %d %s" % (st, h))
    st, h, _ = request(port, "OPTIONS", "/v1/completions",
                       headers=("Origin: http://evil.example",) + pre[1:])
    check("access-control-allow-origin" not in h and "access-control-allow-headers" not in h,
          "preflight from a foreign origin: %s" % h)
    st, h, _ = request(port, "OPTIONS", "/v1/completions",
                       headers=pre[:2] + ("Access-Control-Request-Headers: a\x01b",))
    check(h.get("access-control-allow-headers") == "Authorization, Content-Type",
          "odd request headers are not reflected: %s" % h)
    # Host check (loopback default) and X-Request-Id.
    st, _, _ = request(port, "GET", "/health", headers=("Host: evil.example",))
    check(st == 403, "foreign Host on loopback: %d" % st)
    st, h, _ = request(port, "GET", "/health", headers=("X-Request-Id: abc-123",))
    check(h.get("x-request-id") == "abc-123", "X-Request-Id echo: %s" % h)
    st, h, _ = request(port, "GET", "/health")
    check(re.fullmatch(r"req-[0-9a-f]{16}", h.get("x-request-id", "")) is not None,
          "generated X-Request-Id: %s" % h)
    st, h, _ = request(port, "GET", "/health", headers=("X-Request-Id: a b\"c",))
    check(h.get("x-request-id", "").startswith("req-"), "unsafe X-Request-Id replaced: %s" % h)
    log = srv.stop()
    check("process list" not in log, "warned about a key that came from a file")
    os.unlink(keyfile.name)
    # A key as a flag warns; --metrics-public opens /metrics; --allowed-hosts.
    srv = Server("--api-key", "k-flag-456", "--metrics-public", "--allowed-hosts",
                 "api.example, localhost", "--cors-allow-origins", "http://a.example",
                 "--cors-allow-headers", "Authorization, X-Custom")
    port = srv.port
    st, _, _ = request(port, "GET", "/metrics", headers=("Host: api.example:8080",))
    check(st == 200, "--metrics-public: %d" % st)
    st, _, _ = request(port, "GET", "/health", headers=("Host: 127.0.0.1",))
    check(st == 403, "--allowed-hosts without 127.0.0.1: %d" % st)
    st, _, _ = request(port, "GET", "/health", headers=("Host: LOCALHOST:1",))
    check(st == 200, "--allowed-hosts localhost: %d" % st)
    st, h, _ = request(port, "OPTIONS", "/v1/completions",
                       headers=("Host: localhost",) + pre)
    check(h.get("access-control-allow-headers") == "Authorization, X-Custom",
          "--cors-allow-headers: %s" % h)
    log = srv.stop()
    check("process list" in log and "KVCAST_API_KEY" in log, "no warning for --api-key")
    check("k-flag-456" not in log, "the key reached the log")


def test_json_log_and_access_log():
    srv = Server("--log-format", "json", "--debug-step-delay-ms", "20",
                 "--disconnect-check-ms", "20", "--heartbeat-ms", "100")
    port = srv.port
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 100, "ignore_eos": True,
                       "stream": True}).encode()
    s = dial(port)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
              b"application/json\r\nX-Request-Id: stream-1\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body)
    got = b""
    while got.count(b"data: {") < 5:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()  # abort mid-stream
    time.sleep(0.5)
    request(port, "GET", "/health", headers=("X-Request-Id: h-1",))
    log = srv.stop()
    access = []
    for line in log.splitlines():
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except ValueError:
            check(False, "not a JSON log line: %r" % line)
            continue
        check({"ts", "level", "func", "msg"} <= set(o), "JSON log line lacks fields: %r" % o)
        if o.get("event") == "access":
            access.append(o)
    st = [a for a in access if a["request_id"] == "stream-1"]
    check(len(st) == 1 and st[0]["method"] == "POST" and st[0]["path"] == "/v1/completions"
          and st[0]["aborted"] is True and st[0]["gen_tokens"] >= 5
          and st[0]["completion_id"].startswith("cmpl-") and st[0]["client"] == "127.0.0.1"
          and st[0]["status"] == 200,
          "access log of the aborted stream: %r" % st)
    h = [a for a in access if a["request_id"] == "h-1"]
    check(len(h) == 1 and h[0]["path"] == "/health" and h[0]["status"] == 200,
          "access log of /health: %r" % h)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    t0 = time.time()
    for t in (test_half_close_and_framing, test_per_ip_limit, test_auth_cors_hosts_ids,
              test_json_log_and_access_log, test_idle_flood_and_deadlines, test_slowloris):
        t1 = time.time()
        t()
        print("%s: %.1f s" % (t.__name__, time.time() - t1), flush=True)
    print("total %.1f s, %d failure(s)" % (time.time() - t0, len(FAILS)))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
