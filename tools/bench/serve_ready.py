"""serve_ready.py — wait until a freshly started `kvcast serve` is ready.

The server prints "listening on http://HOST:PORT" when it binds, before its models load; until
they are in, /health answers 503 {"status": "loading"}. Scripts that start a server (the
benchmarks here, the integration tests under tests/integration/) call wait_ready after reading
the port. Standard library only.
"""
import http.client
import os
import re
import select
import time

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def read_port(proc, timeout=60.0):
    """The port from the "listening on http://127.0.0.1:PORT" line of proc's stdout (a pipe,
    text or binary); None when proc exits or timeout seconds pass first."""
    fd, buf, deadline = proc.stdout.fileno(), b"", time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            if proc.poll() is not None:
                return None
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
        m = _LISTENING.search(buf)
        if m:
            return int(m.group(1))
    return None


def start_port(proc, timeout=60.0):
    """read_port, then wait_ready: the port of a server that is serving, or None."""
    port = read_port(proc, timeout)
    return port if port is not None and wait_ready(port, proc) else None


def wait_ready(port, proc, timeout=120.0):
    """Polls /health (Host: localhost) until it answers something other than 503; False when
    proc exits or timeout seconds pass first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health", headers={"Host": "localhost"})
            status = c.getresponse().status
            c.close()
            if status != 503:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
