#!/usr/bin/python3
"""threads_bench.py — side-by-side benchmark of thread placement (issue 16 item 2).

For each server configuration, in interleaved rounds: lone-request TTFT (streaming client,
median of `reps`) in full and predict mode at the given prompt lengths, then "contention":
3 decode streams (16-token prompts) run while one long prompt prefills; reports the long
prompt's TTFT and the streams' mean/p90/max inter-token gap before and during that prefill.
Prompts are random token ids (vocab 32000), so the bundle needs no tokenizer.

usage: BUNDLE=pair/kvcast-bundle.json threads_bench.py CONFIGS [all|lone|cont] [LENS] [REPS]
       [ROUNDS] [CONT]
  CONFIGS  JSON [[label, kvcast binary, [extra serve flags], {env}], ...]
  LENS     512,1024,2048    REPS 3    ROUNDS 1    CONT full:1024,predict:2048
"""
import http.client, json, random, re, statistics, subprocess, sys, threading, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_ready import wait_ready

BUNDLE = os.environ.get("BUNDLE", "kvcast-bundle.json")

def start(binary, extra, env=None):
    e = dict(os.environ)
    if env: e.update(env)
    p = subprocess.Popen([binary, "serve", "--bundle", BUNDLE, "--port", "0", "--host", "127.0.0.1",
                          "--log-level", "warn", "--no-access-log"] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=e)
    port = None
    for line in p.stdout:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m: port = int(m.group(1)); break
    assert port and wait_ready(port, p, 300), "server did not start"
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    return p, port

def stream(port, ids, max_tokens, mode, times, stop=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"prompt": ids, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                       "prefill_mode": mode, "temperature": 0, "logprobs": 0})
    t0 = time.time()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.status
    timings = None
    for line in r:
        if stop is not None and stop.is_set():
            break
        line = line.strip()
        if not line.startswith(b"data:"): continue
        d = line[5:].strip()
        if d == b"[DONE]": break
        o = json.loads(d)
        if o.get("choices") and (o["choices"][0].get("text") is not None):
            times.append(time.time())
        if "timings" in o: timings = o["timings"]
    c.close()
    return t0, timings

rng = random.Random(1)
def ids(n): return [rng.randrange(32000) for _ in range(n)]

def lone(port, P, mode, reps):
    out = []
    for _ in range(reps):
        ts = []
        t0, tim = stream(port, ids(P), 4, mode, ts)
        out.append(((ts[0] - t0) * 1000, tim))
    return statistics.median(x for x, _ in out), out[-1][1]

def contention(port, n_streams, P, mode):
    times = [[] for _ in range(n_streams)]
    stop = threading.Event()
    th = [threading.Thread(target=stream, args=(port, ids(16), 1200, "full", times[i], stop)) for i in range(n_streams)]
    for t in th: t.start()
    time.sleep(2.0)
    lt = []
    t0, tim = stream(port, ids(P), 1, mode, lt)
    t1 = lt[0]
    time.sleep(0.5)
    stop.set()
    for t in th: t.join()
    time.sleep(0.5)
    def gaps(a, b):
        g = []
        for ts in times:
            w = [x for x in ts if a <= x <= b]
            g += [(w[i+1]-w[i])*1000 for i in range(len(w)-1)]
        return g
    before = gaps(t0 - 1.5, t0)
    during = gaps(t0, t1)
    q = lambda g, p: sorted(g)[min(len(g)-1, int(p*len(g)))] if g else float('nan')
    return dict(long_ttft=(t1-t0)*1000, itl_before=statistics.mean(before), itl_during=statistics.mean(during),
                itl_during_p90=q(during, 0.9), itl_during_max=max(during), threads=(tim or {}).get("prefill_threads"))

if __name__ == "__main__":
    cfgs = json.loads(sys.argv[1])  # [[label, binary, [flags], {env}], ...]
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    lens = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "512,1024,2048").split(",")]
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    cont = [(m, int(x)) for m, x in (y.split(":") for y in (sys.argv[6] if len(sys.argv) > 6 else "full:1024,predict:2048").split(","))]
    for rnd in range(rounds):
     for label, binary, flags, env in cfgs:
        p, port = start(binary, flags, env)
        try:
            stream(port, ids(64), 4, "full", [])   # warm-up
            stream(port, ids(64), 4, "predict", [])
            if what in ("all", "lone"):
                for P in lens:
                    for mode in ("full", "predict"):
                        med, tim = lone(port, P, mode, reps)
                        print(f"{label}\tlone\t{mode}\t{P}\tttft_ms={med:.0f}\tthreads={(tim or {}).get('prefill_threads')}", flush=True)
            if what in ("all", "cont"):
                for mode, P in cont:
                    r = contention(port, 3, P, mode)
                    print(f"{label}\tcont3\t{mode}\t{P}\t" + "\t".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
        finally:
            p.terminate(); p.wait()
