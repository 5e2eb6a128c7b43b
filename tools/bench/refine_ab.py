#!/usr/bin/python3
"""refine_ab.py — refinement's cost, A/B: the same open-loop load (`kvcast bench serve`, same
seeds, same prompts) against `kvcast serve --refine` and `--no-refine`, interleaved round by
round so that a noisy host hurts both alike. Per prefill mode and request rate it prints the
median TTFT, median TPOT and request goodput of both settings and the TTFT ratio (on / off),
and how many refinements swapped in (/metrics). Issue 17's bar: predict-mode TTFT with
refinement on within noise of off at light load, and goodput that does not drop.

  /usr/bin/python3 tools/bench/refine_ab.py --bundle build/bench/p110/pair/kvcast-bundle.json \\
      --rates 0.5 2 --modes predict auto --rounds 2

Standard library only.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_ready import start_port  # noqa: E402


def swapped(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if re.match(r'kvcast:kv_refine_total\{.*result="swapped"', l))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kvcast", default="build/release/tools/kvcast")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--rates", nargs="+", default=["0.5", "2"])
    ap.add_argument("--modes", nargs="+", default=["predict", "auto"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--prompt-len", default="1024:256")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--goodput", nargs="+", default=["ttft:500", "tpot:50"])
    ap.add_argument("--out", default="build/bench/refine_ab")
    ap.add_argument("server_args", nargs="*", help="after --: more kvcast serve arguments")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res, swaps = {}, {"refine": 0.0, "no-refine": 0.0}
    for rnd in range(1, a.rounds + 1):
        for setting in ("refine", "no-refine"):
            log = open(os.path.join(a.out, "server-%s.log" % setting), "w")
            proc = subprocess.Popen([a.kvcast, "serve", "--bundle", a.bundle, "--host",
                                     "127.0.0.1", "--port", "0", "--no-access-log",
                                     "--" + setting] + a.server_args,
                                    stdout=subprocess.PIPE, stderr=log)
            port = start_port(proc, 300)
            if port is None:
                raise SystemExit("the server did not start (see %s)" % log.name)
            try:
                for mode in a.modes:
                    for rate in a.rates:
                        path = os.path.join(a.out, "%s-%s-%s-%d.json" % (mode, rate, setting, rnd))
                        subprocess.run([a.kvcast, "bench", "serve", "--url",
                                        "http://127.0.0.1:%d" % port, "--dataset", "synthetic",
                                        "--num-prompts", str(a.prompts), "--request-rate", rate,
                                        "--prompt-len", a.prompt_len, "--vocab-size",
                                        str(a.vocab), "--max-tokens", str(a.max_tokens),
                                        "--prefill-mode", mode, "--goodput"] + a.goodput +
                                       ["--seed", str(rnd), "--logprobs", "0", "--no-progress", "--json", path],
                                       check=True, stdout=subprocess.DEVNULL)
                        res.setdefault((mode, rate, setting), []).append(json.load(open(path)))
                swaps[setting] += swapped(port)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    print("| mode | rate (req/s) | TTFT p50 on / off (ms) | on/off | TPOT p50 on / off (ms) | "
          "goodput on / off (req/s) |")
    print("|---|---|---|---|---|---|")
    for mode in a.modes:
        for rate in a.rates:
            v = {s: [statistics.median(r[k] for r in res[(mode, rate, s)])
                     for k in ("median_ttft_ms", "median_tpot_ms", "request_goodput")]
                 for s in ("refine", "no-refine")}
            on, off = v["refine"], v["no-refine"]
            print("| %s | %s | %.1f / %.1f | %.2f | %.1f / %.1f | %.2f / %.2f |" % (
                mode, rate, on[0], off[0], on[0] / off[0], on[1], off[1], on[2], off[2]))
    print("refinements swapped in: %d with --refine, %d with --no-refine" %
          (swaps["refine"], swaps["no-refine"]))


if __name__ == "__main__":
    main()
