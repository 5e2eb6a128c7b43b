#!/usr/bin/python3
"""Integration test of issue 16 item 2 over real HTTP: every core on the work at hand.

  - Defaults (no thread flag): a lone request's prefill runs on every core the process may
    use (timings.prefill_threads == the affinity mask's count), and the log says the teams
    are elastic.
  - Under `taskset -c 0` (a container's cpuset, in small) the same defaults use one core.
  - Explicit --prefill-threads 1 --decode-threads 1 fixes the teams: prefill_threads is 1.
  - Elastic teams under concurrency: 6 requests at once all complete with the same greedy
    tokens as a lone request (teams resized mid-prefill and mid-decode change no result).

Model: tests/golden/llama_gqa (vocab 128, 128 positions), tokenizer tests/fixtures/tiny_tokenizer.
usage: test_server_threads.py path/to/kvcast   (run from the source root)
"""
import json
import os
import shutil
import sys
import tempfile
import threading

import kc_testlib as kc
from kc_testlib import fail

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
MODEL = "tests/golden/llama_gqa"
TOKENIZER = "tests/fixtures/tiny_tokenizer"


class Server(kc.Server):
    def __init__(self, tmp, name, extra, prefix=()):
        super().__init__(KVCAST, ["--model", MODEL, "--tokenizer", TOKENIZER, "--base-kv-mib",
                                  "2", "--no-access-log", "--prefill-dtype", "f32",
                                  "--decode-dtype", "f32"] + extra,
                         os.path.join(tmp, name + ".log"), prefix=prefix, name="server " + name)

    def complete(self, body):
        status, raw = self.post(body)
        if status != 200:
            fail("status %d: %s" % (status, raw[:500]))
        return json.loads(raw)


BODY = {"model": "llama_gqa", "prompt": "the lord spake unto moses saying", "max_tokens": 8,
        "temperature": 0, "ignore_eos": True, "prefill_mode": "full"}


def prefill_threads(srv):
    out = srv.complete(BODY)
    t = out.get("timings")
    if not isinstance(t, dict) or not isinstance(t.get("prefill_threads"), int):
        fail("no integer timings.prefill_threads in %s" % json.dumps(out)[:500])
    return t["prefill_threads"], out["choices"][0]["text"]


def one_thread(tmp, name, extra, what, prefix=()):
    """A server started with extra (under prefix) runs a lone prefill on one thread."""
    srv = Server(tmp, name, extra, prefix=prefix)
    try:
        got, _ = prefill_threads(srv)
        if got != 1:
            fail("%s ran on %d threads" % (what, got))
    finally:
        srv.stop()


def main():
    cores = len(os.sched_getaffinity(0))
    tmp = tempfile.mkdtemp(prefix="kc_threads_")
    try:
        srv = Server(tmp, "default", [])
        try:
            got, text = prefill_threads(srv)
            if got != cores:
                fail("lone prefill ran on %d threads, want all %d cores" % (got, cores))
            log = open(srv.log).read()
            if "elastic over %d cores" % cores not in log:
                fail("log does not say 'elastic over %d cores':\n%s" % (cores, log[-1500:]))
            # Six at once: teams are resized while prefills and decode steps run; greedy
            # outputs must not change.
            results = [None] * 6

            def one(i):
                results[i] = srv.complete(BODY)["choices"][0]["text"]
            th = [threading.Thread(target=one, args=(i,)) for i in range(6)]
            for t in th:
                t.start()
            for t in th:
                t.join()
            for i, r in enumerate(results):
                if r != text:
                    fail("concurrent request %d answered %r, alone %r" % (i, r, text))
        finally:
            srv.stop()
        print("ok: lone prefill on %d/%d cores, 6 concurrent requests agree" % (cores, cores))

        taskset = shutil.which("taskset")
        if taskset is not None:
            first = str(sorted(os.sched_getaffinity(0))[0])
            one_thread(tmp, "cpuset", [], "under taskset -c (1 core) the prefill",
                       prefix=(taskset, "-c", first))
            print("ok: a 1-core cpuset gives 1 thread")
        else:
            print("note: no taskset here; cpuset case not run")

        one_thread(tmp, "fixed", ["--prefill-threads", "1", "--decode-threads", "1"],
                   "with --prefill-threads 1 the prefill")
        print("ok: --prefill-threads 1 is an explicit override")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
