#!/usr/bin/python3
"""soak.py — soak-and-fault run against a real `kvcast serve` (docs/reliability.md).

Starts `kvcast serve --host 127.0.0.1 --port 0` on the embedded pair (run from the source root),
drives saturating mixed load over loopback for a fixed time, then drains and checks:

  1. no crash: the server is alive throughout, exits 0 on SIGTERM, and its stderr holds no
     sanitizer report or failed assertion;
  2. RSS does not grow after warm-up (see rss_check);
  3. num_requests_running / num_requests_waiting / kv_cache_usage_perc return to 0 once the
     load stops, and the server's open fds return to their pre-load count;
  4. the server's counters reconcile with the client's own ledger (see reconcile);
  5. no protocol violation: every valid request gets 200 (or 503 when the queue is full),
     every invalid one its documented 4xx, every complete response is well formed, uses the
     requested prefill mode and reports the prompt tokens /tokenize counts; no valid request
     is dropped without an answer; /health always answers within 10 s.

Stdlib only; bounded in time (a watchdog kills everything at the deadline) and count.
Writes OUT/samples.csv, OUT/requests.jsonl, OUT/summary.json, OUT/server.log, and prints a
summary table. Exit 0: pass; 1: a check failed; 2: usage or start-up error.
"""

import argparse
import collections
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpc  # noqa: E402
import workload  # noqa: E402
from httpc import Closed, Conn, ProtocolError, request_bytes  # noqa: E402

MIB = 1024.0 * 1024.0

# Statuses libmicrohttpd produces by itself (kvcast's handler never sees the request), so
# http_error_responses_total does not count them.
MHD_STATUSES = {414, 431}
# Statuses that may or may not come from kvcast's handler depending on the server version
# (e.g. a future request-head deadline): they widen the reconciliation bounds, no more.
AMBIGUOUS_STATUSES = {408}
# Sanitizer and assertion markers in the server's stderr.
CRASH_PATTERNS = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
    r"SUMMARY: UndefinedBehaviorSanitizer|WARNING: ThreadSanitizer|"
    r"kvcast: assertion failed|Segmentation fault|AddressSanitizer:DEADLYSIGNAL"
)

# The load mix (weights). halfclose: a request (half of them streaming) followed by
# shutdown(SHUT_WR), like `nc -N`; it must get its whole answer (issue 15 item 5).
DEFAULT_WEIGHTS = {
    "stream": 26,
    "nonstream": 22,
    "cancel_stream": 10,
    "cancel_nonstream": 10,
    "invalid": 10,
    "oversize": 5,
    "tokenize": 4,
    "info": 4,
    "halfclose": 5,
}


def now():
    return time.monotonic()


def pct(values, q):
    """q-th percentile (nearest rank) of a list; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def fmt_ms(x):
    return "-" if x is None else "%.0f" % (x * 1000.0)


# ---------------------------------------------------------------- server process


def is_asan_binary(path):
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def serve_help(binary):
    try:
        r = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def server_args(args, help_text):
    """The serve flags for the soak. Flags the binary does not know are left out (and said),
    so the same script runs against older and newer servers."""
    wanted = [
        # The soak's clients share a handful of loopback addresses: no per-address cap.
        ("--max-connections-per-ip", "0"),
        # A short queue, so that a share of the load meets the 503 + Retry-After path.
        ("--max-queue", str(args.max_queue)),
        ("--max-body-bytes", str(args.max_body_bytes)),
        ("--log-level", "info"),
    ]
    out = ["serve", "--host", "127.0.0.1", "--port", "0"]
    skipped = []
    for flag, value in wanted:
        if not help_text or re.search(r"(^|\s)%s(\s|=|$)" % re.escape(flag), help_text, re.M):
            out += [flag, value]
        else:
            skipped.append(flag)
    for extra in args.server_arg:
        out += extra.split(" ", 1) if extra.startswith("--") and " " in extra else [extra]
    return out, skipped


class Server:
    def __init__(self, args, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        self.binary = args.bin
        self.asan = is_asan_binary(args.bin)
        self.out_path = os.path.join(out_dir, "server.out")
        self.log_path = os.path.join(out_dir, "server.log")
        help_text = serve_help(args.bin)
        self.argv, self.skipped = server_args(args, help_text)
        self.proc = None
        self.port = None
        self._log_pos = 0
        self.crash_lines = []

    def start(self, timeout):
        env = dict(os.environ)
        if self.asan:
            # A small quarantine, so ASan's own memory reaches its plateau during warm-up;
            # halt on the first UBSan report so that it is seen as a crash.
            env.setdefault("ASAN_OPTIONS", "detect_leaks=1:quarantine_size_mb=16:"
                           "malloc_context_size=10")
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen(
            [self.binary] + self.argv,
            stdout=open(self.out_path, "wb"),
            stderr=open(self.log_path, "wb"),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = now() + timeout
        # The URL line: on stdout today; stderr is searched too in case it moves to the log.
        pat = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
        while now() < deadline and self.port is None:
            for path in (self.out_path, self.log_path):
                with open(path, "r", errors="replace") as f:
                    m = pat.search(f.read())
                if m:
                    self.port = int(m.group(1))
                    break
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up (code %d); see %s"
                                   % (self.proc.returncode, self.log_path))
            if self.port is None:
                time.sleep(0.1)
        if self.port is None:
            raise RuntimeError("the server did not print its port within %.0f s" % timeout)
        # A server may bind before it loads its models (/health 503 "loading"): wait for 200.
        last = None
        while now() < deadline:
            try:
                last, _ = httpc.simple(self.port, "GET", "/health", timeout=5.0)
                if last == 200:
                    return
            except (OSError, Closed, ProtocolError) as e:
                last = repr(e)
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up (code %d); see %s"
                                   % (self.proc.returncode, self.log_path))
            time.sleep(0.2)
        raise RuntimeError("/health did not answer 200 within %.0f s (last: %s)"
                           % (timeout, last))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def scan_log(self):
        """New crash markers in stderr since the last scan (also kept in crash_lines)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return []
        # Keep a partial last line for the next scan.
        cut = data.rfind(b"\n") + 1
        self._log_pos += cut
        found = []
        for line in data[:cut].decode("utf-8", "replace").splitlines():
            if CRASH_PATTERNS.search(line):
                found.append(line.strip())
        self.crash_lines += found
        return found

    def proc_status(self):
        """(VmRSS MiB, VmHWM MiB, threads, open fds) or None when the process is gone."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                st = f.read()
            fds = len(os.listdir("/proc/%d/fd" % self.proc.pid))
        except OSError:
            return None

        def kb(name):
            m = re.search(r"^%s:\s+(\d+) kB" % name, st, re.M)
            return int(m.group(1)) / 1024.0 if m else 0.0

        m = re.search(r"^Threads:\s+(\d+)", st, re.M)
        return kb("VmRSS"), kb("VmHWM"), int(m.group(1)) if m else 0, fds

    def stop(self, timeout):
        """SIGTERM, wait; returns the exit code (None: had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------- metrics

LINE_RE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text):
    """{name{label=v,...}: value} without the kvcast prefix, the model_name label and
    histogram buckets."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = LINE_RE.match(line)
        if not m:
            continue
        name = m.group(1)
        if name.endswith("_bucket"):
            continue
        for p in ("kvcast:", "kvcast_"):
            if name.startswith(p):
                name = name[len(p):]
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        labels.pop("model_name", None)
        key = name
        if labels:
            key += "{" + ",".join("%s=%s" % kv for kv in sorted(labels.items())) + "}"
        try:
            out[key] = float(m.group(3))
        except ValueError:
            pass
    return out


def scrape(port, timeout=10.0):
    status, body = httpc.simple(port, "GET", "/metrics", timeout=timeout)
    if status != 200:
        raise ProtocolError("/metrics answered %d" % status)
    return parse_metrics(body.decode("utf-8", "replace"))


FIN = ("stop", "length", "abort")


def m_finished(m):
    return sum(m.get("request_success_total{finished_reason=%s}" % f, 0.0) for f in FIN)


def m_gauges(m):
    return {
        "running": m.get("num_requests_running", 0.0),
        "waiting": m.get("num_requests_waiting", 0.0),
        "kv_base": m.get("kv_cache_usage_perc{pool=base}", 0.0),
        "kv_aux": m.get("kv_cache_usage_perc{pool=aux}", 0.0),
    }


COUNTERS = [
    "request_success_total{finished_reason=stop}",
    "request_success_total{finished_reason=length}",
    "request_success_total{finished_reason=abort}",
    "generation_tokens_total",
    "prompt_tokens_total",
    "http_error_responses_total",
    "prefill_mode_total{mode=full}",
    "prefill_mode_total{mode=predict}",
    "e2e_request_latency_seconds_count",
    "time_to_first_token_seconds_count",
]


# ---------------------------------------------------------------- the client's ledger


class Ledger:
    """Everything the client did, in the terms the server's counters use.

    Outcomes of a completion request (per request; its choices = prompts x n):
      complete         A full 200 response: finish reasons and usage are known exactly.
      admitted_cancel  A stream the client closed after its 200 head: all choices were
                       submitted, so each is counted once, finish reason any, full prompt
                       tokens, 0..max_tokens generated tokens.
      maybe            The request was sent but no answer read (client cancel of a
                       non-stream request, timeout, keep-alive race): counted 0 or once per
                       choice; any error answer it got is unseen.
      rejected         A non-200 answer: 400 and 503 count no choice for n = 1; with n > 1 a
                       503 can follow the admission of the first choices, which are then
                       aborted and counted (n - 1 at most); a 500 after admission counts n.
      none             Never reached the server's handler (connect or send failed).
    """

    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "w")
        self.by_class = collections.defaultdict(collections.Counter)
        self.statuses = collections.Counter()
        self.anomalies = collections.Counter()
        self.anomaly_examples = {}
        self.ttft_client = []
        self.ttft_server = []
        self.modes = collections.Counter()  # (requested, used)
        # Reconciliation sums.
        self.a = collections.Counter()  # complete
        self.b = collections.Counter()  # admitted_cancel
        self.c = collections.Counter()  # maybe
        self.d = collections.Counter()  # rejected (slack)
        self.maybe_lens = []  # per-choice prompt tokens of maybe/rejected-slack choices
        self.err_seen = 0  # error answers seen that kvcast's handler produced
        self.err_slack = 0
        self.n_requests = 0

    def anomaly(self, kind, detail):
        with self.lock:
            self.anomalies[kind] += 1
            self.anomaly_examples.setdefault(kind, detail[:300])

    def seen_status(self, status):
        """Counts an answer's status towards http_error_responses_total (lock held)."""
        if status is None or status < 400 or status in MHD_STATUSES:
            return
        if status in AMBIGUOUS_STATUSES:
            self.err_slack += 1
        else:
            self.err_seen += 1

    def record(self, rec):
        with self.lock:
            self.n_requests += 1
            cls = rec["cls"]
            label = str(rec["status"]) if rec.get("status") is not None else rec["outcome"]
            if rec["outcome"] in ("admitted_cancel", "maybe") and rec.get("status") == 200:
                label = "200+cancel"
            self.by_class[cls][label] += 1
            self.by_class[cls]["_total"] += 1
            if rec.get("status") is not None:
                self.statuses[rec["status"]] += 1
            self.seen_status(rec.get("status"))
            if rec.get("kind") == "completion":
                self._completion(rec)
            elif rec["outcome"] == "maybe":
                self.err_slack += 1
            if rec.get("ttft_client") is not None:
                self.ttft_client.append(rec["ttft_client"])
            if rec.get("ttft_server") is not None:
                self.ttft_server.append(rec["ttft_server"])
            self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def _completion(self, rec):
        lens = rec["choice_lens"]
        nch = len(lens)
        gen_max = nch * rec["max_tokens"]
        o = rec["outcome"]
        if o == "complete":
            a = self.a
            a["requests"] += 1
            a["choices"] += nch
            for f in rec["finishes"]:
                a[f] += 1
            a["gen"] += rec["gen"]
            a["prompt"] += sum(lens)
            for req, used in rec.get("modes_known", []):
                a["mode_" + used] += 1
            for req, used in rec.get("modes_seen", []):
                self.modes[(req or "default", used)] += 1
        elif o == "admitted_cancel":
            b = self.b
            b["requests"] += 1
            b["choices"] += nch
            b["prompt"] += sum(lens)
            b["gen_max"] += gen_max
        elif o == "maybe":
            c = self.c
            c["requests"] += 1
            c["choices"] += nch
            c["prompt"] += sum(lens)
            c["gen_max"] += gen_max
            self.maybe_lens += lens
            self.err_slack += 1
        elif o == "rejected":
            st = rec.get("status") or 0
            slack = nch if (st >= 500 and st != 503) else nch - 1
            if slack > 0:
                # Choices are submitted in order, so the ones that may have been admitted
                # before the refusal are the first `slack`.
                d = self.d
                d["choices"] += slack
                d["prompt"] += sum(lens[:slack])
                d["gen_max"] += slack * rec["max_tokens"]
                self.maybe_lens += lens[:slack]


# ---------------------------------------------------------------- shared run state


class Ctx:
    def __init__(self, args, server):
        self.args = args
        self.server = server
        self.port = server.port
        self.stop = threading.Event()  # load phase over
        self.abort = threading.Event()  # a fatal problem: stop everything now
        self.abort_reason = []
        self.load_end = 0.0
        self.prompts = []  # (text, tokens)
        self.token_pool = []
        self.max_model_len = 0
        self.long_prompt = ""
        self.cancel_max_tokens = args.cancel_max_tokens
        slow = 3.0 if server.asan else 1.0
        self.resp_timeout = args.response_timeout_s * slow
        self.ledger = None
        self.probe_lat = []
        self.probe_fail = 0
        self.trickle = collections.Counter()
        self.trickle_life = []
        self.idle = collections.Counter()
        self.idle_life = []

    def fatal(self, why):
        if not self.abort.is_set():
            self.abort_reason.append(why)
            self.abort.set()
            self.stop.set()

    def running(self):
        return not self.stop.is_set() and now() < self.load_end


def setup_prompts(ctx, rng):
    words = [3, 5, 8, 12, 20, 30, 45, 60, 90, 120, 160, 220, 300, 380, 450]
    texts = workload.prompt_texts(rng, words + words[::2])
    pool = []
    for t in texts:
        r = httpc.get_json(ctx.port, "/tokenize", {"prompt": t}, timeout=30)
        ctx.prompts.append((t, int(r["count"])))
        ctx.max_model_len = int(r.get("max_model_len", 2048))
        pool += r["tokens"]
    ctx.token_pool = pool
    # A prompt longer than the model's context: 400 expected.
    long = []
    while True:
        long.append(rng.choice(texts))
        text = "\n".join(long)
        r = httpc.get_json(ctx.port, "/tokenize", {"prompt": text}, timeout=30)
        if int(r["count"]) > ctx.max_model_len + 16:
            ctx.long_prompt = text
            break
        if len(long) > 400:
            raise RuntimeError("cannot build a prompt longer than the context")
    longest = max(n for _, n in ctx.prompts)
    if longest + ctx.cancel_max_tokens > ctx.max_model_len:
        raise RuntimeError("prompts do not fit max_model_len %d" % ctx.max_model_len)


# ---------------------------------------------------------------- load: one worker


class Worker(threading.Thread):
    def __init__(self, ctx, idx, weights):
        super().__init__(name="worker-%d" % idx, daemon=True)
        self.ctx = ctx
        self.rng = random.Random(ctx.args.seed * 1000 + idx)
        self.conn = None
        self.classes = [k for k, v in weights.items() if v > 0]
        self.weights = [weights[k] for k in self.classes]
        srcs = ["127.0.0.1"] + ["127.0.0.%d" % (30 + i) for i in range(4)]
        self.src = srcs[idx % len(srcs)]
        self.count = 0

    def run(self):
        try:
            while self.ctx.running() and self.count < self.ctx.args.max_requests_per_worker:
                cls = self.rng.choices(self.classes, self.weights)[0]
                self.count += 1
                getattr(self, "do_" + ("completion" if cls in (
                    "stream", "nonstream", "cancel_stream", "cancel_nonstream", "halfclose")
                    else cls))(cls)
        except Exception as e:  # a bug in the soak itself: stop, do not hide it
            self.ctx.ledger.anomaly("client_bug", "%s: %r" % (self.name, e))
            self.ctx.fatal("client bug in %s: %r" % (self.name, e))
            raise
        finally:
            self.drop_conn()

    def drop_conn(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def fresh_conn(self):
        self.drop_conn()
        try:
            return Conn(self.ctx.port, src=self.src, timeout=self.ctx.resp_timeout)
        except OSError as e:
            if not self.ctx.server.alive():
                self.ctx.fatal("the server exited during the run (code %s)"
                               % self.ctx.server.proc.poll())
            else:
                self.ctx.ledger.anomaly("connect_failed", repr(e))
            return None

    # ---- completions

    def do_completion(self, cls):
        ctx, rng = self.ctx, self.rng
        stream = cls in ("stream", "cancel_stream") or (cls == "halfclose" and
                                                         rng.random() < 0.5)
        cancel = cls.startswith("cancel")
        spec = workload.make_spec(ctx, rng, stream, cancel)
        rec = {
            "cls": cls, "kind": "completion", "status": None, "outcome": "none",
            "choice_lens": spec.choice_lens, "max_tokens": spec.max_tokens, "mode": spec.mode,
        }
        reused = False
        if not cancel and cls != "halfclose" and self.conn is not None and \
                self.conn.reusable and rng.random() < 0.6:
            conn, reused = self.conn, True
        else:
            conn = self.fresh_conn()
        self.conn = None
        if conn is None:
            ctx.ledger.record(rec)
            return
        rec["reused"] = reused
        keep = False
        t0 = now()
        try:
            try:
                conn.send(request_bytes("POST", "/v1/completions", spec.payload(),
                                        keepalive=not cancel and cls != "halfclose"))
            except OSError as e:
                if not reused:
                    ctx.ledger.anomaly("send_failed", "%s: %r" % (cls, e))
                rec["note"] = "send failed: %r" % e
                return
            rec["outcome"] = "maybe"  # from here on the server may have seen it
            if cls == "halfclose":
                conn.sock.shutdown(socket.SHUT_WR)
            if cls == "cancel_nonstream":
                delay = rng.uniform(ctx.args.cancel_min_s, ctx.args.cancel_max_s)
                r, _, _ = select.select([conn.sock], [], [], delay)
                if not r:
                    conn.close(reset=rng.random() < 0.5)
                    rec["note"] = "cancelled after %.2f s" % delay
                    return
                rec["note"] = "answered before the cancel"
            status, headers = conn.read_head()
            rec["status"] = status
            if status != 200:
                body = conn.read_body(headers)
                rec["outcome"] = "rejected"
                self.check_error_body(cls, status, headers, body)
                keep = conn.reusable
                if status == 503:
                    # Back off as a real client would (within Retry-After), so that the mix
                    # stays mostly real work rather than a 503 spin.
                    ctx.stop.wait(rng.uniform(0.1, 0.6))
                return
            if stream:
                keep = self.read_stream(conn, headers, spec, rec, t0, cancel)
            else:
                keep = self.read_json(conn, headers, spec, rec)
        except socket.timeout:
            ctx.ledger.anomaly("timeout", "%s: no answer within %.0f s" % (cls, ctx.resp_timeout))
            rec["note"] = "timeout"
        except Closed as e:
            if rec["status"] is None:
                if reused:
                    rec["note"] = "keep-alive connection closed before the answer"
                elif cls == "halfclose":
                    ctx.ledger.anomaly("halfclose_unanswered", "shutdown(SHUT_WR) client: %s" % e)
                else:
                    ctx.ledger.anomaly("closed_without_response", "%s: %s" % (cls, e))
            else:
                ctx.ledger.anomaly("response_truncated", "%s: %s" % (cls, e))
                rec["outcome"] = "admitted_cancel" if stream else "maybe"
        except (ProtocolError, ValueError, KeyError, TypeError) as e:
            ctx.ledger.anomaly("protocol", "%s: %r" % (cls, e))
            if rec["outcome"] == "complete":
                rec["outcome"] = "maybe"
        except OSError as e:
            ctx.ledger.anomaly("socket_error", "%s: %r" % (cls, e))
        finally:
            rec["elapsed"] = round(now() - t0, 4)
            if keep and conn.reusable and rng.random() < 0.5:
                conn.uses += 1
                self.conn = conn
            else:
                conn.close()
            ctx.ledger.record(rec)

    def check_error_body(self, cls, status, headers, body):
        ledger = self.ctx.ledger
        if status not in (503,):
            ledger.anomaly("valid_request_refused", "%s got %d: %r" % (cls, status, body[:200]))
        if status == 503 and "retry-after" not in headers:
            ledger.anomaly("503_without_retry_after", cls)
        try:
            err = json.loads(body)["error"]
            if not isinstance(err.get("message"), str):
                raise ValueError("no message")
        except (ValueError, KeyError, TypeError):
            ledger.anomaly("bad_error_body", "%d: %r" % (status, body[:200]))

    def validate(self, spec, rec, finishes, usage, modes):
        """Checks of a complete answer; fills rec's finishes/gen/modes."""
        ledger = self.ctx.ledger
        nch = len(spec.choice_lens)
        bad = []
        if any(f not in ("stop", "length", "abort") for f in finishes):
            bad.append("finish reasons %r" % finishes)
        if "abort" in finishes:
            ledger.anomaly("abort_in_complete_response",
                           "%s: finishes %r (a request no one cancelled)" % (rec["cls"], finishes))
        if usage is None:
            bad.append("no usage")
        else:
            if usage.get("prompt_tokens") != sum(spec.prompt_lens):
                ledger.anomaly("prompt_tokens_mismatch", "usage.prompt_tokens %r, /tokenize "
                               "counted %d" % (usage.get("prompt_tokens"), sum(spec.prompt_lens)))
            ct = usage.get("completion_tokens")
            if not isinstance(ct, int) or ct < 0 or ct > nch * spec.max_tokens:
                bad.append("completion_tokens %r over %d x %d" % (ct, nch, spec.max_tokens))
            elif usage.get("total_tokens") != usage.get("prompt_tokens", 0) + ct:
                bad.append("total_tokens %r" % usage.get("total_tokens"))
        for used in modes.values():
            if spec.mode in ("full", "predict") and used != spec.mode:
                ledger.anomaly("prefill_mode_ignored", "asked %s, got %s" % (spec.mode, used))
            if used not in ("full", "predict"):
                bad.append("prefill_mode %r" % used)
        if bad:
            raise ProtocolError("; ".join(bad))
        rec["outcome"] = "complete"
        rec["finishes"] = finishes
        rec["gen"] = usage["completion_tokens"]

    def read_json(self, conn, headers, spec, rec):
        body = conn.read_body(headers)
        obj = json.loads(body)
        choices = obj["choices"]
        nch = len(spec.choice_lens)
        if sorted(c["index"] for c in choices) != list(range(nch)):
            raise ProtocolError("choice indices %r" % [c["index"] for c in choices])
        finishes = [c["finish_reason"] for c in sorted(choices, key=lambda c: c["index"])]
        usage = obj.get("usage")
        modes = {}
        t = obj.get("timings")
        if t is not None:
            modes[0] = t.get("prefill_mode")
            rec["ttft_server"] = t.get("ttft_ms", 0.0) / 1000.0
        self.validate(spec, rec, finishes, usage, modes)
        rec["modes_seen"] = [(spec.mode, m) for m in modes.values()]
        # A mode is counted by the server for a choice that generated a token; with one
        # choice that is completion_tokens > 0.
        if nch == 1 and rec["gen"] > 0 and 0 in modes:
            rec["modes_known"] = [(spec.mode, modes[0])]
        return True

    def read_stream(self, conn, headers, spec, rec, t0, cancel):
        if not headers.get("content-type", "").startswith("text/event-stream"):
            raise ProtocolError("stream content-type %r" % headers.get("content-type"))
        nch = len(spec.choice_lens)
        finishes = [None] * nch
        got_token = [False] * nch
        modes = {}
        usage = None
        done = False
        events = 0
        cancel_after = self.rng.randint(0, 4) if cancel else -1
        if cancel_after == 0:
            conn.close(reset=self.rng.random() < 0.5)
            rec["outcome"] = "admitted_cancel"
            return False
        for data in httpc.sse_events(conn.body_pieces(headers)):
            if done:
                raise ProtocolError("event after [DONE]")
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                self.ctx.ledger.anomaly("stream_error_event", repr(obj)[:300])
                continue
            if obj.get("usage"):
                usage = obj["usage"]
            for c in obj.get("choices") or ():
                i = c["index"]
                if c.get("text") or c.get("logprobs"):
                    got_token[i] = True
                    if rec.get("ttft_client") is None and not spec.echo:
                        rec["ttft_client"] = round(now() - t0, 5)
                if c.get("finish_reason") is not None:
                    if finishes[i] is not None:
                        raise ProtocolError("two finish reasons for choice %d" % i)
                    finishes[i] = c["finish_reason"]
                    t = obj.get("timings")
                    if t is not None:
                        modes[i] = t.get("prefill_mode")
                        if i == 0:
                            rec["ttft_server"] = t.get("ttft_ms", 0.0) / 1000.0
            events += 1
            if cancel and events >= cancel_after:
                conn.close(reset=self.rng.random() < 0.5)
                rec["outcome"] = "admitted_cancel"
                rec["note"] = "closed after %d events" % events
                return False
        if not done:
            raise ProtocolError("stream ended without [DONE]")
        if None in finishes:
            raise ProtocolError("choices without a finish reason: %r" % finishes)
        self.validate(spec, rec, finishes, usage, modes)
        rec["modes_seen"] = [(spec.mode, m) for m in modes.values()]
        rec["modes_known"] = [(spec.mode, m) for i, m in modes.items() if got_token[i]]
        return True

    # ---- other classes

    def plain(self, cls, name, method, path, body, ctype, accept, extra=()):
        """One request on a fresh connection; the status must be in `accept`."""
        rec = {"cls": cls, "case": name, "status": None, "outcome": "none"}
        conn = self.fresh_conn()
        if conn is None:
            self.ctx.ledger.record(rec)
            return None, None
        t0 = now()
        try:
            conn.send(request_bytes(method, path, body, ctype=ctype, keepalive=False,
                                    extra=extra))
            rec["outcome"] = "maybe"
            status, headers = conn.read_head()
            rec["status"] = status
            data = conn.read_body(headers)
            rec["outcome"] = "ok" if status in accept else "bad"
            if status not in accept:
                self.ctx.ledger.anomaly("unexpected_status", "%s %s: got %d, expected %s: %r"
                                        % (cls, name, status, sorted(accept), data[:200]))
            return status, data
        except socket.timeout:
            self.ctx.ledger.anomaly("timeout", "%s %s" % (cls, name))
        except (Closed, OSError, ProtocolError) as e:
            self.ctx.ledger.anomaly("closed_without_response", "%s %s: %r" % (cls, name, e))
        finally:
            rec["elapsed"] = round(now() - t0, 4)
            conn.close()
            self.ctx.ledger.record(rec)
        return None, None

    def do_invalid(self, cls):
        name, method, path, body, ctype, accept = self.rng.choice(self.ctx.invalid)
        self.plain(cls, name, method, path, body, ctype, accept)

    def do_tokenize(self, cls):
        text, n = self.rng.choice(self.ctx.prompts)
        st, data = self.plain(cls, "tokenize", "POST", "/tokenize",
                              json.dumps({"prompt": text}).encode(), "application/json", {200})
        if st == 200 and json.loads(data).get("count") != n:
            self.ctx.ledger.anomaly("tokenize_unstable", "count changed for a prompt")

    def do_info(self, cls):
        path = self.rng.choice(("/health", "/v1/models", "/metrics"))
        self.plain(cls, path, "GET", path, None, None, {200})

    def do_oversize(self, cls):
        kind = self.rng.choice(("content_length", "chunked", "header", "context"))
        limit = self.ctx.args.max_body_bytes
        if kind == "context":
            body = json.dumps({"prompt": self.ctx.long_prompt, "max_tokens": 4}).encode()
            self.plain(cls, kind, "POST", "/v1/completions", body, "application/json", {400})
        elif kind == "header":
            pad = "X-Pad: " + "a" * (self.ctx.args.header_pad_kib * 1024)
            self.oversize_raw(cls, kind, request_bytes(
                "POST", "/v1/completions", b'{"prompt": "x"}', keepalive=False, extra=(pad,)),
                None, {431, 413, 400})
        elif kind == "content_length":
            head = request_bytes("POST", "/v1/completions", None, keepalive=False,
                                 extra=("Content-Type: application/json",
                                        "Content-Length: %d" % (limit + 1)))
            self.oversize_raw(cls, kind, head + b'{"prompt": "' + b"a" * 4096, None, {413})
        else:
            head = request_bytes("POST", "/v1/completions", None, keepalive=False,
                                 extra=("Content-Type: application/json",
                                        "Transfer-Encoding: chunked"))
            chunk = b"a" * 65536
            chunks = [b'{"prompt": "'] + [chunk] * (limit // len(chunk) + 2)
            # Today kvcast closes an over-limit chunked body without an answer; issue 15
            # item 8 asks for 413. Both are accepted here; "closed" is counted apart.
            self.oversize_raw(cls, kind, head, chunks, {413}, closed_ok=True)

    def oversize_raw(self, cls, name, first, chunks, accept, closed_ok=False):
        rec = {"cls": cls, "case": name, "status": None, "outcome": "none"}
        conn = self.fresh_conn()
        if conn is None:
            self.ctx.ledger.record(rec)
            return
        t0 = now()
        try:
            try:
                conn.send(first)
                for c in chunks or ():
                    conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                if chunks:
                    conn.send(b"0\r\n\r\n")
            except OSError:
                pass  # the server may stop reading and answer (or close) early
            try:
                status, headers = conn.read_head()
                rec["status"] = status
                conn.read_body(headers)
                rec["outcome"] = "ok" if status in accept else "bad"
                if status not in accept:
                    self.ctx.ledger.anomaly("unexpected_status", "%s %s: got %d, expected %s"
                                            % (cls, name, status, sorted(accept)))
            except (Closed, ConnectionResetError, BrokenPipeError):
                rec["outcome"] = "closed"
                if not closed_ok and name != "header":
                    self.ctx.ledger.anomaly("closed_without_response", "%s %s" % (cls, name))
        except socket.timeout:
            self.ctx.ledger.anomaly("timeout", "%s %s" % (cls, name))
        except (OSError, ProtocolError) as e:
            self.ctx.ledger.anomaly("protocol", "%s %s: %r" % (cls, name, e))
        finally:
            rec["elapsed"] = round(now() - t0, 4)
            conn.close()
            self.ctx.ledger.record(rec)


# ---------------------------------------------------------------- trickling and idle clients


class Slow:
    """One trickling or idle connection."""

    def __init__(self, conn, payload, pos, kind, lens=None):
        self.conn = conn
        self.payload = payload
        self.pos = pos
        self.kind = kind
        self.t_open = now()
        self.next_send = now()
        self.lens = lens
        self.head_len = payload.find(b"\r\n\r\n") + 4 if payload else 0
        self.result = None  # a complete answer's ledger fields


def trickle_loop(ctx):
    """--tricklers connections from 127.0.0.2.. that send a valid completion request one byte
    every --trickle-interval-s: half trickle the head (slow headers), half send the head at
    once and trickle the body (slow body). A request that completes is a real request and
    enters the ledger; a connection the server closes is counted by the phase it was in."""
    args, ledger = ctx.args, ctx.ledger
    rng = random.Random(args.seed + 7)
    text, ntok = min(ctx.prompts, key=lambda p: p[1])
    body = json.dumps({"prompt": text, "max_tokens": 2, "temperature": 0}).encode()
    payload = request_bytes("POST", "/v1/completions", body, keepalive=False)
    slots = [None] * args.tricklers
    n_addr = max(1, args.trickle_addresses)
    deadline_end = None

    def finish(i, sl, how, status=None):
        life = now() - sl.t_open
        ctx.trickle[how] += 1
        ctx.trickle_life.append(life)
        if how.startswith("closed_in_"):
            # A server with request deadlines may answer (408/400) before closing; an answer
            # lost in the close still counts on its side.
            with ledger.lock:
                ledger.err_slack += 1
        if how in ("completed", "answered_early") or sl.pos >= len(sl.payload):
            # The whole request was sent: a real request (complete, or maybe-counted).
            rec = {"cls": "trickle", "kind": "completion", "status": status,
                   "outcome": "maybe", "choice_lens": [ntok], "max_tokens": 2, "mode": None}
            if status == 200 and sl.result is not None:
                rec.update(sl.result)
            elif status is not None:
                rec["outcome"] = "rejected"
            ledger.record(rec)
        elif status is not None:
            ledger.record({"cls": "trickle", "status": status, "outcome": "ok"})
        sl.conn.close()
        slots[i] = None

    while not ctx.abort.is_set():
        t = now()
        if not ctx.running():
            if deadline_end is None:
                deadline_end = t
            # Load is over: abandon what is still open (client-side close).
            for i, sl in enumerate(slots):
                if sl is not None:
                    finish(i, sl, "abandoned")
            break
        for i in range(len(slots)):
            sl = slots[i]
            if sl is None:
                src = "127.0.0.%d" % (2 + i % n_addr)
                try:
                    conn = Conn(ctx.port, src=src, timeout=5.0)
                except OSError as e:
                    ledger.anomaly("connect_failed", "trickler: %r" % e)
                    continue
                slow_body = i % 2 == 1
                sl = Slow(conn, payload, 0, "body" if slow_body else "header")
                if slow_body:
                    try:
                        conn.send(payload[: sl.head_len])
                        sl.pos = sl.head_len
                    except OSError:
                        pass
                slots[i] = sl
                ctx.trickle["opened_" + sl.kind] += 1
                continue
            if sl.pos < len(sl.payload) and t >= sl.next_send:
                try:
                    sl.conn.send(sl.payload[sl.pos : sl.pos + 1])
                    sl.pos += 1
                    sl.next_send = t + args.trickle_interval_s * rng.uniform(0.8, 1.2)
                except OSError:
                    finish(i, sl, "closed_in_" + ("header" if sl.pos < sl.head_len else "body"))
        socks = {sl.conn.sock: i for i, sl in enumerate(slots) if sl is not None}
        if not socks:
            time.sleep(0.2)
            continue
        try:
            readable, _, _ = select.select(list(socks), [], [], 0.2)
        except (OSError, ValueError):
            readable = []
        for s in readable:
            i = socks[s]
            sl = slots[i]
            if sl is None:
                continue
            try:
                sl.conn.settimeout(ctx.resp_timeout)
                status, headers = sl.conn.read_head()
                data = sl.conn.read_body(headers)
                if status == 200 and sl.pos >= len(sl.payload):
                    obj = json.loads(data)
                    u = obj["usage"]
                    sl.result = {"outcome": "complete",
                                 "finishes": [c["finish_reason"] for c in obj["choices"]],
                                 "gen": u["completion_tokens"]}
                    if u["prompt_tokens"] != ntok:
                        ledger.anomaly("prompt_tokens_mismatch", "trickler: %r" % u)
                finish(i, sl, "completed" if sl.pos >= len(sl.payload) else "answered_early",
                       status)
            except (Closed, OSError, ProtocolError, ValueError, KeyError):
                phase = "header" if sl.pos < sl.head_len else (
                    "body" if sl.pos < len(sl.payload) else "response")
                if phase == "response":
                    ledger.anomaly("closed_without_response", "trickler after its full request")
                finish(i, sl, "closed_in_" + phase)


def idle_loop(ctx):
    """--idlers connections from 127.0.0.20.. that stay idle: half connect and send nothing,
    half make one keep-alive /health request and then idle. Reopened when the server closes
    them (its idle timeout); all closed by the client when the load ends."""
    args = ctx.args
    slots = [None] * args.idlers
    while not ctx.abort.is_set() and ctx.running():
        for i in range(len(slots)):
            if slots[i] is not None:
                continue
            try:
                conn = Conn(ctx.port, src="127.0.0.%d" % (20 + i % 8), timeout=10.0)
                if i % 2 == 1:
                    conn.send(request_bytes("GET", "/health"))
                    st, h = conn.read_head()
                    conn.read_body(h)
                    if st != 200:
                        ctx.ledger.anomaly("unexpected_status", "idle /health %d" % st)
                slots[i] = Slow(conn, b"", 0, "after_request" if i % 2 else "bare")
                ctx.idle["opened_" + slots[i].kind] += 1
            except (OSError, Closed, ProtocolError) as e:
                ctx.ledger.anomaly("connect_failed", "idler: %r" % e)
        socks = {sl.conn.sock: i for i, sl in enumerate(slots) if sl is not None}
        try:
            readable, _, _ = select.select(list(socks), [], [], 0.5)
        except (OSError, ValueError):
            readable = []
        for s in readable:
            i = socks[s]
            sl = slots[i]
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if d.startswith(b"HTTP/1."):
                # An answer to an idle connection (e.g. a server reclaiming it with 408/503):
                # allowed; it may count as an error response on the server's side.
                st = d.split(b" ", 2)[1].decode("latin-1", "replace") if b" " in d else "?"
                ctx.idle["answered_" + st] += 1
                with ctx.ledger.lock:
                    ctx.ledger.err_slack += 1
            elif d:
                ctx.ledger.anomaly("idle_got_data", repr(d[:100]))
            ctx.idle["closed_by_server_" + sl.kind] += 1
            ctx.idle_life.append(now() - sl.t_open)
            sl.conn.close()
            slots[i] = None
    for sl in slots:
        if sl is not None:
            ctx.idle["abandoned"] += 1
            sl.conn.close()


# ---------------------------------------------------------------- probes and samples


def probe_loop(ctx):
    """GET /health once a second on a fresh connection: the server's responsiveness under load.
    No answer within 10 s is a failure."""
    while not ctx.abort.is_set() and ctx.running():
        t0 = now()
        try:
            st, _ = httpc.simple(ctx.port, "GET", "/health", timeout=10.0)
            if st != 200:
                raise ProtocolError("status %d" % st)
            ctx.probe_lat.append(now() - t0)
        except (OSError, Closed, ProtocolError) as e:
            if not ctx.server.alive():
                ctx.fatal("the server exited during the run (code %s)" % ctx.server.proc.poll())
                return
            ctx.probe_fail += 1
            ctx.ledger.anomaly("health_probe_failed", repr(e))
        ctx.stop.wait(max(0.0, 1.0 - (now() - t0)))


class Sampler(threading.Thread):
    """RSS, threads, fds (/proc) and /metrics every --sample-s; one CSV row each."""

    FIELDS = ["t_s", "phase", "rss_mib", "hwm_mib", "threads", "fds", "metrics_ms", "running",
              "waiting", "kv_base", "kv_aux", "finished", "generation_tokens", "prompt_tokens",
              "http_errors"]

    def __init__(self, ctx, path, t0):
        super().__init__(name="sampler", daemon=True)
        self.ctx = ctx
        self.t0 = t0
        self.rows = []
        self.f = open(path, "w")
        self.f.write(",".join(self.FIELDS) + "\n")
        self.halt = threading.Event()
        self.phase = "load"

    def sample(self):
        ctx = self.ctx
        row = {"t_s": round(now() - self.t0, 1), "phase": self.phase}
        ps = ctx.server.proc_status()
        if ps is not None:
            row.update(rss_mib=round(ps[0], 1), hwm_mib=round(ps[1], 1), threads=ps[2],
                       fds=ps[3])
        t = now()
        try:
            m = scrape(ctx.port, timeout=10.0)
            row["metrics_ms"] = round((now() - t) * 1000.0, 1)
            g = m_gauges(m)
            row.update(running=g["running"], waiting=g["waiting"], kv_base=g["kv_base"],
                       kv_aux=g["kv_aux"], finished=m_finished(m),
                       generation_tokens=m.get("generation_tokens_total"),
                       prompt_tokens=m.get("prompt_tokens_total"),
                       http_errors=m.get("http_error_responses_total"))
        except (OSError, Closed, ProtocolError) as e:
            ctx.ledger.anomaly("metrics_failed", repr(e))
        self.rows.append(row)
        self.f.write(",".join(str(row.get(k, "")) for k in self.FIELDS) + "\n")
        self.f.flush()
        return row

    def run(self):
        ctx = self.ctx
        # main() took the sample at t=0; the thread starts one period later.
        while not self.halt.wait(ctx.args.sample_s):
            if not ctx.server.alive():
                ctx.fatal("the server exited during the run (code %s)" % ctx.server.proc.poll())
                return
            found = ctx.server.scan_log()
            if found:
                ctx.fatal("sanitizer/assertion report in the server's stderr: %s" % found[0])
            self.sample()


# ---------------------------------------------------------------- checks


def rss_check(rows, load_t0, load_t1, warmup_s, abs_mib, rel):
    """RSS growth after warm-up. Samples of the load phase with t >= warm-up are split into
    thirds; growth = max(RSS over the last third) - max(RSS over the first third). Comparing
    maxima makes the allocator's saw-tooth irrelevant; a leak moves the whole band up. Fails
    when growth > max(abs_mib, rel x first-third max). The least-squares slope of the same
    samples is reported (MiB/h), not judged. Needs >= 6 samples after warm-up."""
    pts = [(r["t_s"], r["rss_mib"]) for r in rows
           if r["phase"] == "load" and "rss_mib" in r and load_t0 + warmup_s <= r["t_s"] <= load_t1]
    res = {"samples": len(pts), "warmup_s": warmup_s, "threshold_mib": None, "growth_mib": None,
           "slope_mib_per_h": None, "ok": True, "judged": False}
    if len(pts) < 6:
        res["note"] = "too few samples after warm-up to judge (run longer)"
        return res
    k = len(pts) // 3
    first = max(v for _, v in pts[:k])
    last = max(v for _, v in pts[-k:])
    thr = max(abs_mib, rel * first)
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / den * 3600.0 if den > 0 else 0.0
    res.update(threshold_mib=round(thr, 1), growth_mib=round(last - first, 1),
               first_third_max_mib=first, last_third_max_mib=last,
               slope_mib_per_h=round(slope, 1), judged=True, ok=(last - first) <= thr)
    return res


def reconcile(ledger, m0, m1):
    """The server's counter deltas against the client's ledger (see Ledger's outcomes).
    Returns rows (name, server, lo, hi, ok)."""
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in COUNTERS}
    a, b, c, dd = ledger.a, ledger.b, ledger.c, ledger.d
    fin = sum(d["request_success_total{finished_reason=%s}" % f] for f in FIN)
    unsure = c["choices"] + dd["choices"]
    rows = []

    def row(name, server, lo, hi):
        rows.append((name, int(server), int(lo), int(hi), lo <= server <= hi))

    row("finished requests (all reasons)", fin, a["choices"] + b["choices"],
        a["choices"] + b["choices"] + unsure)
    d["uncertain_choices"] = unsure
    d["uncertain_choices_counted"] = fin - a["choices"] - b["choices"]
    cancelled_hi = b["choices"] + c["choices"]
    row("  finished_reason=stop", d["request_success_total{finished_reason=stop}"], a["stop"],
        a["stop"] + cancelled_hi)
    row("  finished_reason=length", d["request_success_total{finished_reason=length}"],
        a["length"], a["length"] + cancelled_hi)
    row("  finished_reason=abort", d["request_success_total{finished_reason=abort}"],
        a["abort"], a["abort"] + cancelled_hi + dd["choices"])
    # The server counted k choices of uncertain requests: their prompt tokens must be the sum
    # of k of the uncertain choices' prompt lengths, so between the k smallest and k largest.
    k = int(fin - a["choices"] - b["choices"])
    lens = sorted(ledger.maybe_lens)
    k = max(0, min(k, len(lens)))
    p_lo = a["prompt"] + b["prompt"] + sum(lens[:k])
    p_hi = a["prompt"] + b["prompt"] + (sum(lens[-k:]) if k else 0)
    row("prompt_tokens_total", d["prompt_tokens_total"], p_lo, p_hi)
    row("generation_tokens_total", d["generation_tokens_total"], a["gen"],
        a["gen"] + b["gen_max"] + c["gen_max"] + dd["gen_max"])
    row("http_error_responses_total", d["http_error_responses_total"], ledger.err_seen,
        ledger.err_seen + ledger.err_slack)
    row("prefill_mode_total{mode=full}", d["prefill_mode_total{mode=full}"], a["mode_full"],
        fin - a["mode_predict"])
    row("prefill_mode_total{mode=predict}", d["prefill_mode_total{mode=predict}"],
        a["mode_predict"], fin - a["mode_full"])
    # Internal consistency: one e2e observation per finished choice, one TTFT per mode count.
    e2e = d["e2e_request_latency_seconds_count"]
    row("e2e_request_latency_seconds_count", e2e, fin, fin)
    modes = d["prefill_mode_total{mode=full}"] + d["prefill_mode_total{mode=predict}"]
    row("time_to_first_token_seconds_count", d["time_to_first_token_seconds_count"], modes, modes)
    # Disconnect detection: a cancelled stream asked for cancel_max_tokens with ignore_eos,
    # so nearly all of them must end as abort rather than run to their length.
    cancel_aborts = d["request_success_total{finished_reason=abort}"] - a["abort"]
    need = -(-4 * b["choices"] // 5)  # ceil(0.8 x)
    row("aborts from cancelled streams (>= 80%)", cancel_aborts, need,
        cancelled_hi + dd["choices"])
    return rows, d


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the kvcast binary")
    p.add_argument("--minutes", type=float, default=30.0, help="load duration")
    p.add_argument("--smoke", action="store_true",
                   help="a ~45 s run with a smaller mix (tests, quick checks)")
    p.add_argument("--out", default=None, help="output folder (default build/soak/<time>)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=14, help="closed-loop load threads")
    p.add_argument("--tricklers", type=int, default=24)
    p.add_argument("--trickle-addresses", type=int, default=12)
    p.add_argument("--trickle-interval-s", type=float, default=3.0)
    p.add_argument("--idlers", type=int, default=24)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=None,
                   help="RSS warm-up (default max(60, 20%% of the run))")
    p.add_argument("--rss-abs-mib", type=float, default=8.0)
    p.add_argument("--rss-rel", type=float, default=0.02)
    p.add_argument("--settle-s", type=float, default=60.0,
                   help="how long gauges may take to return to 0 after the load")
    p.add_argument("--max-queue", type=int, default=12)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--header-pad-kib", type=int, default=100)
    p.add_argument("--cancel-max-tokens", type=int, default=256)
    p.add_argument("--cancel-min-s", type=float, default=0.05)
    p.add_argument("--cancel-max-s", type=float, default=1.5)
    p.add_argument("--response-timeout-s", type=float, default=120.0)
    p.add_argument("--max-requests-per-worker", type=int, default=1000000)
    p.add_argument("--weight", action="append", default=[],
                   help="CLASS=W to change the mix (classes: %s)" % ", ".join(DEFAULT_WEIGHTS))
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `kvcast serve` argument (repeat; '--flag value' is split)")
    args = p.parse_args(argv)
    if args.smoke:
        args.minutes = min(args.minutes, 0.75)
        args.sample_s = min(args.sample_s, 5.0)
        args.workers = min(args.workers, 10)
        args.tricklers = min(args.tricklers, 8)
        args.idlers = min(args.idlers, 8)
        args.trickle_interval_s = min(args.trickle_interval_s, 1.0)
    args.weights = dict(DEFAULT_WEIGHTS)
    for w in args.weight:
        k, _, v = w.partition("=")
        if k not in args.weights:
            p.error("unknown class %r" % k)
        args.weights[k] = float(v)
    if args.warmup_s is None:
        args.warmup_s = max(60.0, 0.2 * args.minutes * 60.0)
    return args


def prime(ctx):
    """Warm-up burst: max_running + a few concurrent long requests (longest prompt, the
    cancel length, ignore_eos), so the KV cache's touched pages reach their high-water mark
    before RSS is judged. These are ordinary complete requests in the ledger."""
    text, ntok = max(ctx.prompts, key=lambda p: p[1])
    mt = ctx.cancel_max_tokens

    def one(i):
        spec = workload.Spec()
        spec.body = {"prompt": text, "max_tokens": mt, "ignore_eos": True,
                     "prefill_mode": ("full", "predict")[i % 2]}
        spec.mode = spec.body["prefill_mode"]
        spec.max_tokens, spec.prompt_lens, spec.choice_lens = mt, [ntok], [ntok]
        rec = {"cls": "prime", "kind": "completion", "status": None, "outcome": "maybe",
               "choice_lens": [ntok], "max_tokens": mt, "mode": spec.mode}
        w = Worker(ctx, 900 + i, {"stream": 1})
        try:
            c = Conn(ctx.port, timeout=ctx.resp_timeout * 2)
            c.send(request_bytes("POST", "/v1/completions", spec.payload(), keepalive=False))
            st, h = c.read_head()
            rec["status"] = st
            if st == 200:
                w.read_json(c, h, spec, rec)
            else:
                c.read_body(h)
                rec["outcome"] = "rejected"
            c.close()
        except (OSError, Closed, ProtocolError, ValueError) as e:
            ctx.ledger.anomaly("prime_failed", repr(e))
        ctx.ledger.record(rec)

    n = 8 + ctx.args.max_queue // 2  # max_running (default 8) + part of the queue
    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(ctx.resp_timeout * 2)


def wait_drained(ctx, settle_s):
    """Polls /metrics until the gauges are 0 and the counters stop moving. Returns
    (ok, seconds, last metrics, gauges)."""
    t0 = now()
    last = None
    g = None
    while now() - t0 < settle_s:
        try:
            m = scrape(ctx.port)
        except (OSError, Closed, ProtocolError):
            time.sleep(0.5)
            continue
        g = m_gauges(m)
        if all(v == 0 for v in g.values()):
            same = last is not None and all(m.get(k) == last.get(k) for k in COUNTERS)
            if same:
                return True, now() - t0, m, g
            last = m
            time.sleep(1.0)
            continue
        last = None
        time.sleep(0.5)
    return False, now() - t0, last or {}, g


def main(argv):
    args = parse_args(argv)
    server = Server(args, args.out or os.path.join(
        "build", "soak", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
    try:
        return run(args, server)
    finally:
        server.kill()  # whatever happened, no server is left behind


def run(args, server):
    out = server.out_dir
    duration = args.minutes * 60.0
    failures = []
    # Watchdog: whatever hangs, the run ends (load + 10 min for start, drain and stop).
    budget = duration + 600.0 * (3 if server.asan else 1)

    def watchdog():
        print("soak: FAIL: watchdog: the run exceeded %.0f s; killing the server" % budget,
              flush=True)
        server.kill()
        os._exit(3)

    wd = threading.Timer(budget, watchdog)
    wd.daemon = True
    wd.start()
    print("soak: %s build %s, %.1f min, output in %s" % (
        "ASan" if server.asan else "plain", args.bin, args.minutes, out), flush=True)
    if server.skipped:
        print("soak: note: this server has no %s; not passed" % ", ".join(server.skipped))
    try:
        server.start(timeout=300.0 if server.asan else 120.0)
    except (RuntimeError, OSError) as e:
        print("soak: FAIL: %s" % e)
        server.kill()
        return 2
    print("soak: server pid %d on port %d: %s" % (server.proc.pid, server.port,
                                                  " ".join(server.argv)), flush=True)
    ctx = Ctx(args, server)
    ctx.ledger = Ledger(os.path.join(out, "requests.jsonl"))
    rng = random.Random(args.seed)
    try:
        setup_prompts(ctx, rng)
        ctx.invalid = workload.invalid_cases(ctx.max_model_len)
        m0 = scrape(ctx.port)
    except (OSError, Closed, ProtocolError, RuntimeError, ValueError) as e:
        print("soak: FAIL: setting up: %r" % e)
        server.kill()
        return 2
    ps0 = server.proc_status()
    t_origin = now()
    sampler = Sampler(ctx, os.path.join(out, "samples.csv"), t_origin)
    first = sampler.sample()
    fds0 = ps0[3] if ps0 else None
    ctx.load_end = now() + duration
    sampler.start()
    threads = [threading.Thread(target=f, args=(ctx,), name=f.__name__, daemon=True)
               for f in (probe_loop, trickle_loop, idle_loop)]
    for t in threads:
        t.start()
    print("soak: priming the KV cache, then %d workers for %.0f s" % (args.workers, duration),
          flush=True)
    prime(ctx)
    workers = [Worker(ctx, i, args.weights) for i in range(args.workers)]
    for w in workers:
        w.start()
    # Progress once a minute (and the abort path).
    next_note = now() + 60.0
    while now() < ctx.load_end and not ctx.abort.is_set():
        ctx.abort.wait(min(1.0, max(0.0, ctx.load_end - now())))
        if now() >= next_note:
            r = sampler.rows[-1] if sampler.rows else {}
            print("soak: t=%4.0fs requests=%d rss=%s MiB running=%s waiting=%s anomalies=%d" % (
                now() - t_origin, ctx.ledger.n_requests, r.get("rss_mib"), r.get("running"),
                r.get("waiting"), sum(ctx.ledger.anomalies.values())), flush=True)
            next_note += 60.0
    load_t1 = now() - t_origin
    ctx.stop.set()
    for w in workers:
        w.join(ctx.resp_timeout + 30.0)
        if w.is_alive():
            failures.append("worker %s did not stop" % w.name)
    for t in threads:
        t.join(30.0)
    sampler.phase = "drain"
    drained, drain_s, m1, g1 = (False, 0.0, {}, None)
    if server.alive():
        drained, drain_s, m1, g1 = wait_drained(ctx, args.settle_s * (2 if server.asan else 1))
    # fds back to their pre-load count (connections closed by clients get reaped).
    fds_end = None
    t_fd = now()
    while server.alive() and now() - t_fd < 40.0:
        ps = server.proc_status()
        fds_end = ps[3] if ps else None
        if fds0 is None or fds_end is None or fds_end <= fds0 + 2:
            break
        time.sleep(1.0)
    sampler.halt.set()
    sampler.join(30.0)
    last = sampler.sample()
    alive_at_end = server.alive()
    code = server.stop(timeout=90.0 if server.asan else 45.0)
    server.scan_log()
    wd.cancel()

    # ---- judge
    led = ctx.ledger
    if ctx.abort_reason:
        failures += ctx.abort_reason
    if not alive_at_end and not any("exited" in r for r in ctx.abort_reason):
        failures.append("the server was not alive at the end of the run (code %s)" % code)
    elif code != 0:
        failures.append("the server exited with %s on SIGTERM (want 0)" % code)
    if server.crash_lines:
        failures.append("%d sanitizer/assertion line(s) in %s, first: %s" % (
            len(server.crash_lines), server.log_path, server.crash_lines[0]))
    if not drained:
        failures.append("gauges did not return to 0 within %.0f s after the load: %r"
                        % (drain_s, g1))
    if fds0 is not None and fds_end is not None and fds_end > fds0 + 2:
        failures.append("open fds %d after the load, %d before" % (fds_end, fds0))
    rss = rss_check(sampler.rows, first["t_s"], load_t1, args.warmup_s, args.rss_abs_mib,
                    args.rss_rel)
    if not rss["ok"]:
        failures.append("RSS grew %.1f MiB after warm-up (max of the last third vs the first; "
                        "threshold %.1f MiB)" % (rss["growth_mib"], rss["threshold_mib"]))
    rec_rows, deltas = ([], {})
    if drained:
        rec_rows, deltas = reconcile(led, m0, m1)
        for name, srv, lo, hi, ok in rec_rows:
            if not ok:
                failures.append("counter %s: server %d, client expects [%d, %d]"
                                % (name.strip(), srv, lo, hi))
    else:
        failures.append("counters not reconciled (the server did not drain)")
    for kind, n in sorted(led.anomalies.items()):
        failures.append("%d x %s (e.g. %s)" % (n, kind, led.anomaly_examples.get(kind, "")))
    if led.a["requests"] == 0:
        failures.append("no request completed")

    summary = summarize(args, ctx, server, sampler, first, last, rss, rec_rows, deltas,
                        drained, drain_s, fds0, fds_end, code, failures, load_t1)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(results_md(summary))
    print_summary(summary)
    if failures:
        print("\nsoak: FAIL (%d):" % len(failures))
        for x in failures:
            print("  - " + x)
        print("soak: logs: %s" % out)
        return 1
    print("\nsoak: PASS (%.1f min, %d requests); logs: %s" % (
        load_t1 / 60.0, led.n_requests, out))
    return 0


def summarize(args, ctx, server, sampler, first, last, rss, rec_rows, deltas, drained, drain_s,
              fds0, fds_end, code, failures, load_t1):
    led = ctx.ledger
    load_rows = [r for r in sampler.rows if r["phase"] == "load" and "running" in r]
    rss_vals = [r["rss_mib"] for r in sampler.rows if "rss_mib" in r]
    busy = [r["running"] + r["waiting"] for r in load_rows]
    return {
        "commit": git_commit(),
        "binary": args.bin,
        "asan": server.asan,
        "server_argv": server.argv,
        "minutes": round(load_t1 / 60.0, 2),
        "workers": args.workers,
        "tricklers": args.tricklers,
        "idlers": args.idlers,
        "requests": led.n_requests,
        "by_class": {k: dict(v) for k, v in sorted(led.by_class.items())},
        "statuses": {str(k): v for k, v in sorted(led.statuses.items())},
        "ttft_client_s": {"n": len(led.ttft_client), "p50": pct(led.ttft_client, 50),
                          "p99": pct(led.ttft_client, 99)},
        "ttft_server_s": {"n": len(led.ttft_server), "p50": pct(led.ttft_server, 50),
                          "p99": pct(led.ttft_server, 99)},
        "health_probe_s": {"n": len(ctx.probe_lat), "failed": ctx.probe_fail,
                           "p50": pct(ctx.probe_lat, 50), "p99": pct(ctx.probe_lat, 99),
                           "max": max(ctx.probe_lat) if ctx.probe_lat else None},
        "mean_running_plus_waiting": round(sum(busy) / len(busy), 2) if busy else None,
        "modes": {"%s->%s" % k: v for k, v in sorted(led.modes.items())},
        "trickle": dict(ctx.trickle),
        "trickle_life_s": {"p50": pct(ctx.trickle_life, 50), "max": max(ctx.trickle_life)
                           if ctx.trickle_life else None},
        "idle": dict(ctx.idle),
        "idle_life_s": {"p50": pct(ctx.idle_life, 50), "max": max(ctx.idle_life)
                        if ctx.idle_life else None},
        "rss_mib": {"start": first.get("rss_mib"), "peak": max(rss_vals) if rss_vals else None,
                    "end": last.get("rss_mib"), "hwm": last.get("hwm_mib")},
        "rss_check": rss,
        "fds": {"before": fds0, "after": fds_end},
        "drained": drained,
        "drain_s": round(drain_s, 2),
        "reconcile": [{"counter": n, "server": s, "lo": lo, "hi": hi, "ok": ok}
                      for n, s, lo, hi, ok in rec_rows],
        "ledger": {"complete": dict(led.a), "admitted_cancel": dict(led.b),
                   "maybe": dict(led.c), "rejected_slack": dict(led.d),
                   "errors_seen": led.err_seen, "errors_slack": led.err_slack},
        "server_deltas": deltas,
        "anomalies": dict(led.anomalies),
        "exit_code": code,
        "failures": failures,
        "pass": not failures,
    }


def print_summary(s):
    print("\n== soak summary: %.1f min, %d requests, %s build ==" % (
        s["minutes"], s["requests"], "ASan" if s["asan"] else "plain"))
    classes = s["by_class"]
    labels = sorted({k for v in classes.values() for k in v if k != "_total"},
                    key=lambda x: (not x[0].isdigit(), x))
    print("%-17s %7s  %s" % ("class", "total", "  ".join("%9s" % x for x in labels)))
    for cls, v in classes.items():
        print("%-17s %7d  %s" % (cls, v["_total"], "  ".join("%9s" % v.get(x, "")
                                                             for x in labels)))
    print("status codes: %s" % ", ".join("%s x%d" % kv for kv in s["statuses"].items()))
    tc, ts, hp = s["ttft_client_s"], s["ttft_server_s"], s["health_probe_s"]
    print("TTFT (ms)        client stream p50 %s p99 %s (n=%d); server timings p50 %s p99 %s "
          "(n=%d)" % (fmt_ms(tc["p50"]), fmt_ms(tc["p99"]), tc["n"], fmt_ms(ts["p50"]),
                      fmt_ms(ts["p99"]), ts["n"]))
    print("/health probe    p50 %s ms p99 %s ms max %s ms, failed %d (n=%d)" % (
        fmt_ms(hp["p50"]), fmt_ms(hp["p99"]), fmt_ms(hp["max"]), hp["failed"], hp["n"]))
    print("load             mean running+waiting %s; prefill modes %s" % (
        s["mean_running_plus_waiting"], s["modes"]))
    print("tricklers        %s; life p50 %s s" % (s["trickle"], s["trickle_life_s"]["p50"]
                                                   and round(s["trickle_life_s"]["p50"], 1)))
    print("idle conns       %s; life p50 %s s" % (s["idle"], s["idle_life_s"]["p50"]
                                                  and round(s["idle_life_s"]["p50"], 1)))
    r, rc = s["rss_mib"], s["rss_check"]
    print("RSS (MiB)        start %s peak %s end %s; after warm-up: growth %s (threshold %s), "
          "slope %s MiB/h, %s" % (r["start"], r["peak"], r["end"], rc["growth_mib"],
                                  rc["threshold_mib"], rc["slope_mib_per_h"],
                                  "ok" if rc["ok"] and rc["judged"] else
                                  ("not judged: " + rc.get("note", "")) if rc["ok"] else "GREW"))
    print("fds              before %s after %s; drained to 0 in %.1f s: %s" % (
        s["fds"]["before"], s["fds"]["after"], s["drain_s"], "yes" if s["drained"] else "NO"))
    if s["reconcile"]:
        print("%-42s %10s %10s %10s  %s" % ("counter (delta over the run)", "server", "client lo",
                                             "client hi", "ok"))
        for x in s["reconcile"]:
            print("%-42s %10d %10d %10d  %s" % (x["counter"], x["server"], x["lo"], x["hi"],
                                                "yes" if x["ok"] else "NO"))
    ok = bool(s["reconcile"]) and all(x["ok"] for x in s["reconcile"])
    dl = s["server_deltas"]
    print("counters reconciled: %s (the server counted %s of %s choices whose count the client "
          "cannot know: non-stream cancels, n > 1 refusals)" % (
              "yes" if ok else "NO", int(dl.get("uncertain_choices_counted", 0)),
              int(dl.get("uncertain_choices", 0))))


def git_commit():
    try:
        c = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                           text=True, timeout=10).stdout.strip()
        return c or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def results_md(s):
    """One row for docs/reliability.md's results table."""
    cls = s["by_class"]

    def n(c, label):
        return cls.get(c, {}).get(label, 0)

    done = sum(n(c, "200") for c in cls if c not in ("info", "tokenize"))
    cancelled = sum(n(c, "200+cancel") + n(c, "maybe") for c in ("cancel_stream",
                                                                  "cancel_nonstream"))
    tc, hp, r, rc = s["ttft_client_s"], s["health_probe_s"], s["rss_mib"], s["rss_check"]
    ok = bool(s["reconcile"]) and all(x["ok"] for x in s["reconcile"])
    head = ("| date (UTC) | commit | build | minutes | requests | 200 / cancelled / 503 | "
            "TTFT p50 / p99 (ms) | /health p99 (ms) | RSS start / peak / end (MiB) | "
            "RSS growth after warm-up (MiB) | drained | counters | result |")
    row = "| %s | %s | %s | %.1f | %d | %d / %d / %d | %s / %s | %s | %s / %s / %s | %s | %s | %s | %s |" % (
        time.strftime("%Y-%m-%d", time.gmtime()), s["commit"], "ASan" if s["asan"] else "release",
        s["minutes"], s["requests"], done, cancelled, s["statuses"].get("503", 0),
        fmt_ms(tc["p50"]), fmt_ms(tc["p99"]), fmt_ms(hp["p99"]), r["start"], r["peak"], r["end"],
        rc["growth_mib"] if rc["judged"] else "not judged",
        "yes" if s["drained"] else "NO", "reconciled" if ok else "NOT reconciled",
        "PASS" if s["pass"] else "FAIL")
    return "\n".join([head, "|" + "---|" * 13, row]) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
