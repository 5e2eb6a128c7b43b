#!/usr/bin/python3
"""test_checks.py — the soak's pass/fail logic on synthetic data (no server; < 1 s).

Proves each judgement can fail: RSS growth after warm-up, counter reconciliation (exact for
complete requests, bounded for cancelled ones, the abort share of cancelled streams), and the
/metrics parser for both metric-name styles. Run: /usr/bin/python3 tools/soak/test_checks.py
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak  # noqa: E402


def series(minutes, f, step_s=10.0, seed=1):
    rng = random.Random(seed)
    rows = []
    t = 0.0
    while t <= minutes * 60.0:
        rows.append({"t_s": t, "phase": "load", "rss_mib": f(t, rng)})
        t += step_s
    return rows


class RssCheck(unittest.TestCase):
    def judge(self, rows, minutes=30.0):
        warm = max(60.0, 0.2 * minutes * 60.0)
        return soak.rss_check(rows, 0.0, minutes * 60.0, warm, 8.0, 0.02)

    def test_flat_noisy_passes(self):
        # 400 MiB with a +-6 MiB allocator saw-tooth and a one-off step during warm-up.
        r = self.judge(series(30, lambda t, g: 400 + (20 if t > 100 else 0) + g.uniform(-6, 6)))
        self.assertTrue(r["judged"])
        self.assertTrue(r["ok"], r)

    def test_leak_fails(self):
        # 0.6 MiB a minute (36 MiB/h): ~10 MiB between the thirds' maxima over the judged
        # 24 minutes, above the 8 MiB threshold despite +-3 MiB of noise.
        r = self.judge(series(30, lambda t, g: 400 + t / 60.0 * 0.6 + g.uniform(-3, 3)))
        self.assertFalse(r["ok"], r)
        self.assertGreater(r["slope_mib_per_h"], 25)

    def test_late_step_fails(self):
        r = self.judge(series(30, lambda t, g: 400 + (40 if t > 1500 else 0)))
        self.assertFalse(r["ok"], r)

    def test_short_run_not_judged(self):
        r = self.judge(series(1, lambda t, g: 400 + t), minutes=1.0)
        self.assertFalse(r["judged"])
        self.assertTrue(r["ok"])


def completion(outcome, lens, max_tokens, finishes=None, gen=0, status=200, modes=()):
    rec = {"cls": "stream", "kind": "completion", "status": status, "outcome": outcome,
           "choice_lens": lens, "max_tokens": max_tokens, "modes_known": list(modes)}
    if finishes is not None:
        rec["finishes"] = finishes
        rec["gen"] = gen
    return rec


def metrics(stop=0, length=0, abort=0, gen=0, prompt=0, errors=0, full=0, predict=0):
    fin = stop + length + abort
    return {
        "request_success_total{finished_reason=stop}": stop,
        "request_success_total{finished_reason=length}": length,
        "request_success_total{finished_reason=abort}": abort,
        "generation_tokens_total": gen,
        "prompt_tokens_total": prompt,
        "http_error_responses_total": errors,
        "prefill_mode_total{mode=full}": full,
        "prefill_mode_total{mode=predict}": predict,
        "e2e_request_latency_seconds_count": fin,
        "time_to_first_token_seconds_count": full + predict,
    }


class Reconcile(unittest.TestCase):
    def ledger(self):
        led = soak.Ledger(os.devnull)
        self.addCleanup(led.f.close)
        # Two complete requests (one with n=2), one cancelled stream (admitted, 1 choice),
        # one non-stream cancel (maybe), one 503 with n=2 (the first choice may be counted),
        # one 400.
        led.record(completion("complete", [10], 8, ["length"], 8, modes=[("full", "full")]))
        led.record(completion("complete", [5, 5], 4, ["stop", "length"], 5,
                              modes=[(None, "predict")]))
        led.record(completion("admitted_cancel", [7], 256))
        led.record(completion("maybe", [9], 256, status=None))
        led.record(completion("rejected", [6, 6], 16, status=503))
        led.record({"cls": "invalid", "status": 400, "outcome": "ok"})
        return led

    def failing(self, m1):
        rows, _ = soak.reconcile(self.ledger(), metrics(), m1)
        return [r[0].strip() for r in rows if not r[4]]

    def test_consistent(self):
        # The cancelled stream aborted, the non-stream cancel was admitted and aborted, the
        # 503 admitted nothing: 6 finished, prompts 10 + 5 + 5 + 7 + 9.
        m1 = metrics(stop=1, length=2, abort=2, gen=13 + 3 + 40, prompt=36, errors=2, full=2,
                     predict=2)
        self.assertEqual(self.failing(m1), [])
        # Without the non-stream cancel admitted: still consistent.
        m1 = metrics(stop=1, length=2, abort=1, gen=13 + 3, prompt=27, errors=2, full=2,
                     predict=1)
        self.assertEqual(self.failing(m1), [])

    def test_lost_tokens_fail(self):
        m1 = metrics(stop=1, length=2, abort=1, gen=12, prompt=27, errors=2, full=2, predict=1)
        self.assertIn("generation_tokens_total", self.failing(m1))

    def test_prompt_tokens_must_match_the_counted_choices(self):
        # 4 finished = the complete 3 + the cancelled stream: prompts must be exactly 27.
        m1 = metrics(stop=1, length=2, abort=1, gen=16, prompt=28, errors=2, full=2, predict=1)
        self.assertIn("prompt_tokens_total", self.failing(m1))

    def test_missing_request_fails(self):
        m1 = metrics(stop=1, length=1, abort=1, gen=16, prompt=22, errors=2, full=2, predict=1)
        self.assertIn("finished requests (all reasons)", self.failing(m1))

    def test_unseen_errors_bounded(self):
        m1 = metrics(stop=1, length=2, abort=1, gen=16, prompt=27, errors=9, full=2, predict=1)
        self.assertIn("http_error_responses_total", self.failing(m1))

    def test_cancelled_stream_running_to_length_fails(self):
        # The cancelled stream was not noticed and ran its 256 tokens: the counters still fit
        # their bounds, but the abort share of cancelled streams does not.
        m1 = metrics(stop=1, length=3, abort=0, gen=16 + 256, prompt=27, errors=2, full=2,
                     predict=2)
        self.assertEqual(self.failing(m1), ["aborts from cancelled streams (>= 80%)"])

    def test_refused_multi_prompt_counts_its_first_choices(self):
        # A 503 for prompts [3, 50] may follow the admission of the first choice only (they
        # are submitted in order): 3 prompt tokens may be counted, 50 may not.
        led = soak.Ledger(os.devnull)
        self.addCleanup(led.f.close)
        led.record(completion("complete", [10], 8, ["length"], 8, modes=[("full", "full")]))
        led.record(completion("rejected", [3, 50], 16, status=503))
        ok = metrics(length=1, abort=1, gen=8, prompt=13, errors=1, full=1)
        rows, _ = soak.reconcile(led, metrics(), ok)
        self.assertTrue(all(r[4] for r in rows), rows)
        bad = metrics(length=1, abort=1, gen=8, prompt=60, errors=1, full=1)
        rows, _ = soak.reconcile(led, metrics(), bad)
        self.assertEqual([r[0] for r in rows if not r[4]], ["prompt_tokens_total"])

    def test_histogram_counts_must_agree(self):
        m1 = metrics(stop=1, length=2, abort=1, gen=16, prompt=27, errors=2, full=2, predict=1)
        m1["e2e_request_latency_seconds_count"] += 1
        self.assertIn("e2e_request_latency_seconds_count", self.failing(m1))


class Metrics(unittest.TestCase):
    TEXT = """# HELP kvcast:num_requests_running Requests prefilling or decoding.
# TYPE kvcast:num_requests_running gauge
kvcast:num_requests_running{model_name="base"} 3
kvcast:kv_cache_usage_perc{model_name="base",pool="aux"} 0.25
kvcast_request_success_total{finished_reason="abort",model_name="x"} 7
kvcast:time_to_first_token_seconds_bucket{model_name="base",le="0.001"} 0
kvcast:time_to_first_token_seconds_count{model_name="base"} 5
"""

    def test_parse(self):
        m = soak.parse_metrics(self.TEXT)
        self.assertEqual(m["num_requests_running"], 3)
        self.assertEqual(m["kv_cache_usage_perc{pool=aux}"], 0.25)
        self.assertEqual(m["request_success_total{finished_reason=abort}"], 7)
        self.assertEqual(m["time_to_first_token_seconds_count"], 5)
        self.assertFalse(any("bucket" in k for k in m))
        self.assertEqual(soak.m_gauges(m)["kv_aux"], 0.25)


if __name__ == "__main__":
    unittest.main(verbosity=1)
