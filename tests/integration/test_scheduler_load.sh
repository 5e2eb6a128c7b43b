#!/usr/bin/env bash
# Scheduler bars over real HTTP (issue 7): 16 concurrent clients with mixed prompt lengths
# against `kvcast serve` (golden llama_gqa paired with itself through an identity predictor,
# prefill mode auto with --predict-min-prompt 48): every request completes, no KV block
# stays in use, the server's kvcast: metrics reconcile with the client-side counts of
# `kvcast bench serve`, and auto sends exactly the long prompts (>= 48 tokens) to predict
# and the short ones to full — per response and in kvcast:prefill_mode_total.
#   usage: test_scheduler_load.sh path/to/kvcast   (run from the source root; ctest does)
set -euo pipefail
KVCAST=${1:?usage: test_scheduler_load.sh KVCAST_BINARY}
. "$(dirname "$0")/serve_lib.sh"
kc_start_pair_server --max-running 8 --predict-min-prompt 48 --ttft-slo-ms 3600000

timeout 240 "$KVCAST" bench serve --url "$URL" --timeout-s 120 --no-progress --warmup 0 \
    --dataset synthetic --num-prompts 48 --request-rate inf --max-concurrency 16 \
    --prompt-len 48:40 --max-tokens 8 --seed 3 --json "$TMP/load.json" >"$TMP/load.txt" ||
    fail "bench serve exited $?"
# The last terminal events may still be in flight to the metrics: wait for the gauges to settle.
for _ in $(seq 100); do
    curl -sf --max-time 5 "$URL/metrics" >"$TMP/metrics.txt" || fail "scraping /metrics"
    grep -q '^kvcast:num_requests_running{[^}]*} 0$' "$TMP/metrics.txt" && break
    sleep 0.1
done
$PY - "$TMP/load.json" "$TMP/metrics.txt" <<'EOF' || fail "reconciliation"
import json, sys
sys.path.insert(0, "tests/integration")
import kc_testlib as kc
j = json.load(open(sys.argv[1]))
metrics = kc.parse_metrics(open(sys.argv[2]).read())
def total(name, **labels):
    return kc.total(metrics, name, **labels)
n = 48
assert j["completed"] == n and j["failed"] == 0, (j["completed"], j["failed"], j["errors"])
assert total("kvcast:request_success_total") == n, metrics
assert total("kvcast:request_success_total", finished_reason="length") == n
assert total("kvcast:prompt_tokens_total") == j["total_input_tokens"], (total("kvcast:prompt_tokens_total"), j["total_input_tokens"])
assert total("kvcast:generation_tokens_total") == j["total_output_tokens"] == 8 * n
assert total("kvcast:num_requests_running") == 0 and total("kvcast:num_requests_waiting") == 0
assert total("kvcast:kv_cache_usage_perc", pool="base") == 0, "KV blocks still in use"
long_ = [l >= 48 for l in j["input_lens"]]
assert 0 < sum(long_) < n, "the workload must mix short and long prompts"
for l, mode in zip(j["input_lens"], j["prefill_modes"]):
    assert mode == ("predict" if l >= 48 else "full"), (l, mode)
assert total("kvcast:prefill_mode_total", mode="predict") == sum(long_)
assert total("kvcast:prefill_mode_total", mode="full") == n - sum(long_)
print("reconciled: %d requests, %d prompt tokens, %d generated, %d predict / %d full"
      % (n, j["total_input_tokens"], j["total_output_tokens"], sum(long_), n - sum(long_)))
EOF
echo "1 passed, 0 failed"
