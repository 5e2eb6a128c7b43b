"""serve_ready.py — wait until a freshly started `kvcast serve` is ready.

The server prints "listening on http://HOST:PORT" when it binds, before its models load; until
they are in, /health answers 503 {"status": "loading"}. Scripts that start a server (the
benchmarks here, the integration tests under tests/integration/) call wait_ready after reading
the port. Standard library only.
"""
import http.client
import time


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
