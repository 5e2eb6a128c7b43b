#!/usr/bin/python3
"""DNS re-resolution of --prefill-peers with names that really change (issue 20: "DNS names
re-resolved periodically, so that a Kubernetes headless Service works"; docs/disaggregated.md).

The test builds its own network and removes it on exit, whatever happens: a bridge kcb<pid>
(198.18.<k>.254/24 in the root namespace, so that the test reaches the hosts) and three
namespaces joined to it by veth pairs: prefill hosts A (kqa<pid>, 198.18.<k>.1) and B
(kqb<pid>, .3), and the decode host (kqd<pid>, .2). The decode host is started with
`--prefill-peers prefill-pool.test:8081 --pd-resolve-ms 200`; `ip netns exec` bind-mounts
/etc/netns/kqd<pid>/hosts over its /etc/hosts, and the test rewrites that file in place (the
bind mount follows the inode) to move the name, as a headless Service's records move with its
ready pods:

  1. prefill-pool.test -> A: requests are prefilled by A (A's UCX bytes grow, B's do not).
  2. -> B, under a steady load: A is dropped from /health once B is up, no request fails,
     new requests go to B.
  3. -> A and B (a Service with 2 pods): both are listed and up, and concurrent requests use
     both.
  4. no record at all, and the namespace's DNS server (its /etc/resolv.conf, bind-mounted the
     same way) does not answer: a DNS outage, each lookup blocking for its 3 s timeout. Both
     peers stay listed and keep serving, and lone requests take no longer than usual (the
     lookups block the resolver thread, not the dispatcher).
  5. -> B again, under load: A is dropped, no request fails.
Every lone completion (greedy, with logprobs) equals a `--role all` reference bit for bit, and
every one under load has its text (same_under_load); at the
end KV usage is back to 0 on every host, each exits 0 on SIGTERM, and no log has a sanitizer
report.

Needs root and iproute2 (`ip netns`); exits 77 (ctest: skipped) without them.
usage: test_pd_dns.py path/to/kvcast   (from the source root)
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kc_testlib as kc  # noqa: E402

KVCAST = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast")
PID = os.getpid()
K = PID % 200 + 20  # third octet (test_pd_netns uses pid % 200; a clash only needs both at once)
NET = "198.18.%d." % (K % 256)
NS_A, NS_B, NS_D, BR = "kqa%d" % PID, "kqb%d" % PID, "kqd%d" % PID, "kqbr%d" % PID
HOSTS_DIR = "/etc/netns/" + NS_D
NAME = "prefill-pool.test"
ADDR_A, ADDR_B, ADDR_D = NET + "1", NET + "3", NET + "2"
PEER_A, PEER_B = ADDR_A + ":8081", ADDR_B + ":8081"
COMMON = ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log", "--base-kv-mib", "8",
          "--aux-kv-mib", "8", "--no-enable-prefix-caching", "--no-refine"]
PROMPTS = ["The quick brown fox jumps over the lazy dog because",
           "Once upon a time, in a land far away, there lived a"]
NETWORK = kc.NetnsBridge(NET, BR)
sh = kc.sh


def cleanup():
    """Removes everything this test created (servers, namespaces, veths, bridge, hosts file)."""
    NETWORK.cleanup()
    shutil.rmtree(HOSTS_DIR, ignore_errors=True)


def build_network():
    NETWORK.up()
    for ns, last in ((NS_A, 1), (NS_D, 2), (NS_B, 3)):
        NETWORK.add(ns, "v" + ns, last)


def set_resolver():
    """The decode namespace's DNS server: an address on the bridge that nobody holds, so that a
    lookup /etc/hosts cannot answer waits out its timeout (3 s, one try)."""
    with open(HOSTS_DIR + "/resolv.conf", "w") as f:
        f.write("nameserver %s99\noptions timeout:3 attempts:1\n" % NET)


def set_hosts(*addrs):
    """The decode namespace's /etc/hosts: NAME -> addrs (none: the name does not resolve).
    Rewritten in place: `ip netns exec` bind-mounted this very inode."""
    with open(HOSTS_DIR + "/hosts", "w") as f:
        f.write("127.0.0.1 localhost\n")
        for a in addrs:
            f.write("%s %s\n" % (a, NAME))


def start(ns, args, log):
    return NETWORK.spawn(ns, [KVCAST, "serve"] + args, log)


def call(host, port, method, path, body=None, timeout=60):
    """(status, text) of one request to host:port."""
    return kc.http_request(host, port, method, path, body, timeout)[:2]


def health(host, port):
    try:
        st, text = call(host, port, "GET", "/health", timeout=5)
        return json.loads(text) if st == 200 else {}
    except (OSError, ValueError):
        return {}


def peers(D):
    """{addr: up} of the decode host's /health."""
    return {p["addr"]: p["up"] for p in health(*D).get("prefill_peers", [])}


def wait_peers(D, want, what, timeout=30):
    """Until the decode host lists exactly the peers `want`, all up."""
    return kc.wait_for(lambda: peers(D) == {a: True for a in want}, what, timeout)


def complete(host, port, prompt, mode="full", max_tokens=12):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "prefill_mode": mode,
            "logprobs": 1, "ignore_eos": True}
    st, raw = call(host, port, "POST", "/v1/completions", body, timeout=120)
    if st != 200:
        return st, raw[:300]
    ch = json.loads(raw)["choices"][0]
    return st, (ch["text"], ch["logprobs"]["token_logprobs"])


def metric(host, port, name, **labels):
    st, text = call(host, port, "GET", "/metrics", timeout=10)
    kc.check(st == 200, "%s:%d /metrics: %d" % (host, port, st))
    return kc.total(kc.parse_metrics(text), name, **labels)


def served(P):
    """Bytes a prefill host sent over UCX (FIRST + K/V of every request it prefilled)."""
    return metric(*P, "kvcast:pd_transfer_bytes_total", direction="sent")


def same_under_load(got, ref):
    """Concurrent requests decode in one batch, whose kernels round differently from a lone
    request's (logprobs move by up to ~5e-3 here; --role all does the same): the greedy text
    must be equal."""
    return isinstance(got, tuple) and got[0] == ref[0]


class Load:
    """Clients sending greedy requests to the decode host until stopped; every answer must be
    a 200 with the reference's text (same_under_load)."""

    def __init__(self, D, ref, clients=2):
        self.D, self.ref = D, ref
        self.n, self.bad = 0, []
        self.lock = threading.Lock()
        self.stopping = False
        # Daemons: a failed check ends the test (sys.exit) with the clients still running.
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, i):
        k = i
        while not self.stopping:
            prompt = PROMPTS[k % len(PROMPTS)]
            k += 1
            try:
                st, got = complete(*self.D, prompt)
            except OSError as e:
                st, got = None, repr(e)
            with self.lock:
                self.n += 1
                if st != 200 or not same_under_load(got, self.ref[prompt]):
                    self.bad.append((st, prompt[:20], str(got)[:160]))

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join()
        return self.n, self.bad


def check_all(D, ref, what, n=2):
    for prompt in PROMPTS[:n]:
        st, got = complete(*D, prompt)
        kc.check(st == 200 and got == ref[prompt],
                 "%s: %r -> %s %r, reference %r" % (what, prompt, st, got, ref[prompt]))


def main():
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL).returncode != 0:
        print("pd dns: needs root and iproute2; skipped")
        sys.exit(77)
    kc.cleanup_on_signals(cleanup)
    logs = ["/tmp/kc_pddns_%d_%s.log" % (PID, n) for n in ("a", "b", "d", "all")]
    t_start = time.time()
    try:
        build_network()
        os.makedirs(HOSTS_DIR, exist_ok=True)
        set_hosts(ADDR_A)
        set_resolver()
        pub = ["--insecure-public", "--port", "8080", "--role", "prefill", "--pd-port", "8081"]
        pa = start(NS_A, COMMON + pub + ["--host", ADDR_A], logs[0])
        pb = start(NS_B, COMMON + pub + ["--host", ADDR_B], logs[1])
        d = start(NS_D, ["--bundle", "models/tiny/kvcast-bundle.json", "--no-access-log",
                         "--base-kv-mib", "8", "--insecure-public", "--port", "8080", "--host",
                         ADDR_D, "--role", "decode", "--prefill-peers", NAME + ":8081",
                         "--pd-resolve-ms", "200"], logs[2])
        a = kc.Server(KVCAST, COMMON, log=logs[3], name="all")
        NETWORK.track(a.proc)
        A, B, D = (ADDR_A, 8080), (ADDR_B, 8080), (ADDR_D, 8080)
        ref = {}
        for prompt in PROMPTS:
            st, ref[prompt] = complete("127.0.0.1", a.port, prompt)
            kc.check(st == 200, "reference: %s %s" % (st, ref[prompt]))
        for P in (A, B):
            kc.wait_for(lambda: health(*P).get("role") == "prefill", "prefill host %s" % (P,),
                        60)

        # 1. The name -> A.
        wait_peers(D, [PEER_A], "the decode host's peer A", 60)
        a0, b0 = served(A), served(B)
        check_all(D, ref, "name -> A")
        a1, b1 = served(A), served(B)
        kc.check(a1 > a0 and b1 == b0, "name -> A: A sent %d bytes, B %d" % (a1 - a0, b1 - b0))
        print("pd dns: %s -> A: served by A (%d bytes), B untouched" % (NAME, a1 - a0))

        # 2. The name -> B, under load: A dropped once B is up, nothing fails.
        load = Load(D, ref)
        time.sleep(0.3)
        t0 = time.time()
        set_hosts(ADDR_B)
        wait_peers(D, [PEER_B], "A replaced by B")
        t_switch = time.time() - t0
        time.sleep(0.3)
        n, bad = load.stop()
        kc.check(not bad, "name -> B: %d of %d requests failed or differed: %s"
                 % (len(bad), n, bad[:3]))
        a2, b2 = served(A), served(B)
        check_all(D, ref, "name -> B")
        a3, b3 = served(A), served(B)
        kc.check(a3 == a2 and b3 > b2, "name -> B: A sent %d bytes, B %d" % (a3 - a2, b3 - b2))
        print("pd dns: %s -> B under load: A dropped after %.2f s, %d requests, 0 failed; then "
              "served by B only" % (NAME, t_switch, n))

        # 3. The name -> A and B (a headless Service with two pods): both used.
        set_hosts(ADDR_A, ADDR_B)
        wait_peers(D, [PEER_A, PEER_B], "both peers up")
        a4, b4 = served(A), served(B)
        load = Load(D, ref, clients=4)
        kc.wait_for(lambda: served(A) > a4 and served(B) > b4, "both peers to serve requests")
        n, bad = load.stop()
        kc.check(not bad, "name -> A+B: %d of %d failed or differed: %s" % (len(bad), n, bad[:3]))
        print("pd dns: %s -> A+B: both listed and up, %d concurrent requests used both"
              % (NAME, n))

        # 4. No record at all and a DNS server that does not answer: the peers stay and serve,
        # as fast as before.
        lone = []
        for prompt in PROMPTS * 2:
            t = time.time()
            st, got = complete(*D, prompt)
            lone.append(time.time() - t)
            kc.check(st == 200 and got == ref[prompt], "before the outage: %s %r" % (st, got))
        set_hosts()
        t0, slow = time.time(), []
        while time.time() - t0 < 7.0:  # two 3 s lookups at least
            for prompt in PROMPTS:
                t = time.time()
                st, got = complete(*D, prompt)
                slow.append(time.time() - t)
                kc.check(st == 200 and got == ref[prompt],
                         "during the outage: %r -> %s %r" % (prompt, st, got))
        kc.check(peers(D) == {PEER_A: True, PEER_B: True},
                 "the name stopped resolving: peers %s" % peers(D))
        kc.check(max(slow) < max(lone) + 1.5,
                 "requests waited for DNS: up to %.2f s during the outage, %.2f s before"
                 % (max(slow), max(lone)))
        print("pd dns: %s unresolvable, DNS silent for 7 s: both peers kept and serving, %d "
              "lone requests in %.2f s at most (%.2f s before)"
              % (NAME, len(slow), max(slow), max(lone)))

        # 5. -> B only again, under load.
        load = Load(D, ref)
        time.sleep(0.3)
        set_hosts(ADDR_B)
        wait_peers(D, [PEER_B], "A dropped again")
        time.sleep(0.3)
        n, bad = load.stop()
        kc.check(not bad, "A+B -> B: %d of %d failed or differed: %s" % (len(bad), n, bad[:3]))
        h = health(*D)["prefill_peers"][0]
        kc.check(h["errors"] == 0, "peer B counted errors: %s" % h)
        print("pd dns: A+B -> B under load: A dropped, %d requests, 0 failed" % n)

        kc.check(metric(*D, "kvcast:pd_failures_total") == 0, "decode host counted failures")
        kc.check(metric(*D, "kvcast:pd_retries_total") == 0, "decode host counted retries")
        for P in (D, A, B):
            kc.wait_for(lambda: metric(*P, "kvcast:kv_cache_usage_perc", pool="base") == 0,
                        "KV usage back to 0 on %s" % (P,), 10)
        for i, proc in enumerate((d, pa, pb, a.proc)):
            proc.send_signal(signal.SIGTERM)
            kc.check(proc.wait(timeout=30) == 0, "server %d exit status %s" % (i, proc.returncode))
        for log in logs:
            with open(log, errors="replace") as f:
                kc.check(not kc.sanitizer_report(f.read()), "sanitizer report in " + log)
        with open(logs[2], errors="replace") as f:
            text = f.read()
        # One line per change of the peer set, not one per resolution (every 200 ms here).
        n_lines = sum(text.count(w) for w in ("added", "is back in", "no longer in", "dropped"))
        kc.check(n_lines <= 12, "%d peer-change log lines on the decode host" % n_lines)
        print("pd dns: ok (%.1f s)" % (time.time() - t_start))
    finally:
        cleanup()
        if not os.environ.get("KC_KEEP_LOGS"):
            for log in logs:
                if os.path.exists(log):
                    os.unlink(log)


if __name__ == "__main__":
    main()
