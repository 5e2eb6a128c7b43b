"""Shared pieces of the Python integration tests (standard library only).

The tests in this folder import it as `import kc_testlib as kc` (a script's own folder is the
first entry of sys.path); the shell tests' inline Python adds tests/integration to sys.path.
  - Server: `kvcast serve` started on 127.0.0.1 --port 0 (the port read from its start-up
    line by tools/bench/serve_ready.start_port), its log in a file, JSON over HTTP, /metrics,
    and a bounded stop.
  - parse_metrics / total: the Prometheus text of /metrics as {"name{labels}": value}, and
    the sum of one metric over the series whose labels match.
  - wait_for / health: polling a condition with a deadline, and a server's /health.
  - fail / check: the fail-fast reporting most tests use (FAIL: ..., exit status 1);
    expect / FAILS: the reporting of tests that go on after a failure and exit 1 at the end
    when FAILS is not empty.
Each test keeps its own server arguments, requests and assertions; only the plumbing is here.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "bench"))
from serve_ready import start_port  # noqa: E402


def fail(msg):
    """Reports a failure and ends the test with status 1."""
    print("FAIL: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


FAILS = []  # what expect() found wrong


def expect(cond, msg):
    """Records and prints a failure without ending the test; returns cond."""
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg, flush=True)
    return cond


def wait_for(cond, what, timeout=30.0):
    """Polls cond() every 50 ms until it returns something true, which it returns; fails the
    test after timeout seconds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    fail("timed out waiting for " + what)


def health(srv):
    """(status, parsed JSON body or {}) of srv's GET /health."""
    status, text, _ = srv.request("GET", "/health", timeout=10)
    return status, (json.loads(text) if text.startswith("{") else {})


def sanitizer_report(log_text):
    """True when a server log holds a sanitizer report (ASan, LSan, UBSan, ...)."""
    return "Sanitizer" in log_text or "runtime error" in log_text


def parse_metrics(text):
    """/metrics text as {"name{labels}": value}; comments and blank lines skipped, a series
    listed twice summed."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = out.get(k, 0.0) + float(v)
    return out


def total(metrics, name, **labels):
    """Sum of the series of metric `name` whose labels include all of `labels`."""
    s = 0.0
    for k, v in metrics.items():
        m = re.match(r"([^{]+)(\{(.*)\})?$", k)
        if m.group(1) != name:
            continue
        ls = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(ls.get(a) == b for a, b in labels.items()):
            s += v
    return s


def http_request(host, port, method, path, body=None, timeout=60, headers=None):
    """One HTTP request to host:port, body a JSON value or None; returns (status, text,
    headers)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body) if body is not None else None
        hdr = {"Content-Type": "application/json"} if data is not None else {}
        hdr.update(headers or {})
        c.request(method, path, body=data, headers=hdr)
        r = c.getresponse()
        return r.status, r.read().decode(), r.headers
    finally:
        c.close()


class Server:
    """`kvcast serve ARGS --host 127.0.0.1 --port 0`, stdout piped (start_port reads it),
    stderr to `log` (a path; None: a temporary file, removed by finish()). prefix: a command
    to run it under (e.g. taskset); env: variables added to this process's environment.
    Fails the test (with the log's tail) when the server does not start."""

    def __init__(self, kvcast, args, log=None, env=None, prefix=(), name="server"):
        self.temp_log = log is None
        if log is None:
            f = tempfile.NamedTemporaryFile(prefix="kc_serve_", suffix=".log", delete=False)
            f.close()
            log = f.name
        self.log = log
        e = dict(os.environ)
        e.update(env or {})
        argv = list(prefix) + [kvcast, "serve", "--host", "127.0.0.1", "--port", "0"] + list(args)
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=e)
        self.port = start_port(self.proc)
        if self.port is None:
            Server.stop(self)
            fail("%s did not start; log:\n%s" % (name, self.log_text()[-2000:]))

    def request(self, method, path, body=None, timeout=60, headers=None):
        """One HTTP request, body a JSON value or None; returns (status, text, headers)."""
        return http_request("127.0.0.1", self.port, method, path, body, timeout, headers)

    def post(self, body, path="/v1/completions", timeout=60):
        """POSTs a JSON body; returns (status, text)."""
        status, text, _ = self.request("POST", path, body, timeout)
        return status, text

    def metrics_text(self, timeout=30):
        return self.request("GET", "/metrics", timeout=timeout)[1]

    def metrics(self, timeout=30):
        return parse_metrics(self.metrics_text(timeout))

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGTERM, then SIGKILL after 30 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def finish(self, check=check, clean_exit=True):
        """stop(), then check(cond, msg) that it exited 0 (when clean_exit) and that its log has
        no sanitizer report; removes a temporary log; returns the log's text."""
        rc = Server.stop(self)  # not a subclass's stop, which may call finish
        if clean_exit:
            check(rc == 0, "server exit status %s" % rc)
        text = self.log_text()
        if self.temp_log:
            os.unlink(self.log)
        check(not sanitizer_report(text), "sanitizer report in the server log:\n" + text[-3000:])
        return text


def sh(*argv, check=True):
    """Runs a command (no shell); raises with its stderr when check and it fails."""
    r = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))
    return r


class NetnsBridge:
    """Network namespaces joined by veth pairs to one bridge that holds net + "254/24" (net: a
    test range prefix such as "198.18.7."), and the processes run in them. Remembers what it
    created; cleanup() kills the processes and removes the rest, and is safe to call twice,
    after a partial add() or from a signal handler (cleanup_on_signals)."""

    def __init__(self, net, bridge):
        self.net, self.bridge = net, bridge
        self.namespaces, self.links, self.procs = [], [], []

    def spawn(self, ns, argv, log):
        """Starts argv inside namespace ns (None: here), stderr to the file log."""
        prefix = [] if ns is None else ["ip", "netns", "exec", ns]
        p = subprocess.Popen(prefix + list(argv), stdout=subprocess.DEVNULL,
                             stderr=open(log, "w"))
        self.procs.append(p)
        return p

    def track(self, proc):
        """A process started elsewhere (a Server's) that cleanup() must kill too."""
        self.procs.append(proc)

    def up(self):
        """Creates the bridge; keep the object first, so that cleanup() follows a failure."""
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        sh("ip", "addr", "add", self.net + "254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add(self, ns, veth, last):
        """Namespace ns at net + last, through veth (root side) and veth + "n" (inside)."""
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "n")
        self.links.append(veth)
        sh("ip", "link", "set", veth + "n", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", "%s%d/24" % (self.net, last), "dev", veth + "n")
        sh("ip", "-n", ns, "link", "set", veth + "n", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # also deletes the veth ends inside
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        self.namespaces, self.links = [], []


def cleanup_on_signals(cleanup):
    """SIGTERM and SIGINT run cleanup() and exit 1 (ctest's timeout sends SIGTERM)."""
    def handler(signum, frame):
        cleanup()
        sys.exit(1)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
