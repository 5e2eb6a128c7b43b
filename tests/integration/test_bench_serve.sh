#!/usr/bin/env bash
# Integration test of `kvcast bench serve` against the real `kvcast serve`: the golden model
# tests/golden/llama_gqa paired with itself through an identity predictor (so predict mode
# runs), the fixture tokenizer, --port 0 on 127.0.0.1. Checks that the summary and the JSON
# fields exist and are sane (counts, orderings, prefill modes, error classes); never asserts
# speed. Bounded: every command has a timeout, the whole test takes a few seconds.
# Usage: test_bench_serve.sh KVCAST_BINARY   (run from the source root; ctest does)
set -euo pipefail
KVCAST=${1:?usage: test_bench_serve.sh KVCAST_BINARY}
. "$(dirname "$0")/serve_lib.sh"
pass() { echo "ok - $*"; }
kc_start_pair_server --base-kv-mib 4 --aux-kv-mib 4
BENCH=(timeout 60 "$KVCAST" bench serve --url "$URL" --timeout-s 20 --no-progress)

# 1. Synthetic token-id prompts, predict mode, Poisson arrivals, goodput targets.
"${BENCH[@]}" --dataset synthetic --num-prompts 6 --request-rate 50 --prompt-len 16:4 \
    --max-tokens 8 --prefill-mode predict --goodput ttft:60000 tpot:60000 \
    --metric-percentiles 90,99 --json "$TMP/predict.json" >"$TMP/predict.txt" ||
    fail "bench serve (predict) exited $?"
for line in "Serving Benchmark Result" "Successful requests:" "Benchmark duration (s):" \
    "Request goodput (req/s):" "Mean TTFT (ms):" "P99 TPOT (ms):" "P90 ITL (ms):" \
    "Median E2EL (ms):" "Requests prefilled predict:"; do
    grep -q "$line" "$TMP/predict.txt" || fail "summary lacks '$line'"
done
$PY - "$TMP/predict.json" <<'EOF' || fail "predict JSON"
import json, sys
j = json.load(open(sys.argv[1]))
for k in ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
          "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
          "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "p90_ttft_ms",
          "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms",
          "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms", "prefill_mode_counts",
          "error_counts", "input_lens", "output_lens", "ttfts", "itls", "errors",
          "prefill_modes", "model_id", "request_rate", "date"]:
    assert k in j, "missing " + k
assert j["model_id"] == "tiny", j["model_id"]
assert j["completed"] == 6 and j["failed"] == 0, (j["completed"], j["failed"], j["errors"])
assert j["total_output_tokens"] == 48, j["total_output_tokens"]
assert j["output_lens"] == [8] * 6, j["output_lens"]
assert all(12 <= n <= 20 for n in j["input_lens"]), j["input_lens"]
assert j["total_input_tokens"] == sum(j["input_lens"])
assert j["prefill_mode_counts"]["predict"] == 6, j["prefill_mode_counts"]
assert j["prefill_modes"] == ["predict"] * 6
assert j["error_counts"] == {"connect": 0, "transport": 0, "http": 0, "stream": 0}
assert j["duration"] > 0 and j["request_throughput"] > 0
assert 0 < j["request_goodput"] <= j["request_throughput"] + 1e-9
assert abs(j["request_throughput"] * j["duration"] - 6) < 1e-6
assert abs(j["output_throughput"] * j["duration"] - 48) < 1e-6
for m in ["ttft", "tpot", "itl", "e2el"]:
    assert 0 <= j["median_%s_ms" % m] <= j["p99_%s_ms" % m] + 1e-9, m
    assert j["p90_%s_ms" % m] <= j["p99_%s_ms" % m] + 1e-9, m
assert j["mean_ttft_ms"] > 0 and j["mean_e2el_ms"] >= j["mean_ttft_ms"]
assert len(j["ttfts"]) == 6 and all(t > 0 for t in j["ttfts"])
# Up to 8 token chunks per request: 7 gaps at most (the tokenizer may hold text back).
assert len(j["itls"]) == 6 and all(len(x) <= 7 for x in j["itls"])
assert j["errors"] == [""] * 6
EOF
pass "synthetic prompts, predict mode, goodput"

# 2. A dataset file: JSONL with ids and text, plain text lines; full mode, closed loop.
cat >"$TMP/data.jsonl" <<'EOF'
{"prompt": [5, 6, 7, 8, 9, 10], "max_tokens": 4}
hello world
{"prompt": "the quick brown fox"}
EOF
"${BENCH[@]}" --dataset "$TMP/data.jsonl" --num-prompts 5 --max-concurrency 2 --max-tokens 6 \
    --prefill-mode full --json "$TMP/file.json" >"$TMP/file.txt" || fail "bench serve (file)"
$PY - "$TMP/file.json" <<'EOF' || fail "file JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["completed"] == 5 and j["failed"] == 0, j["errors"]
assert j["prefill_mode_counts"]["full"] == 5, j["prefill_mode_counts"]
assert j["output_lens"][0] == 4 and j["output_lens"][3] == 4, j["output_lens"]
assert j["output_lens"][1] == 6, j["output_lens"]
assert j["input_lens"][0] == 6 and all(n > 0 for n in j["input_lens"])
assert j["max_concurrency"] == 2 and j["request_goodput"] is None
EOF
pass "dataset file (JSONL ids, JSONL text, text lines), full mode"

# 3. HTTP errors are counted apart: an out-of-vocabulary id is a 400 from the server.
printf '%s\n' '{"prompt": [1, 2, 3]}' '{"prompt": [999999]}' >"$TMP/bad.jsonl"
"${BENCH[@]}" --dataset "$TMP/bad.jsonl" --num-prompts 4 --max-tokens 2 --warmup 0 \
    --json "$TMP/bad.json" >"$TMP/bad.txt" || fail "bench serve (bad) exited $?"
grep -q "HTTP errors:" "$TMP/bad.txt" || fail "summary lacks the error lines"
$PY - "$TMP/bad.json" <<'EOF' || fail "bad JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["completed"] == 2 and j["failed"] == 2, (j["completed"], j["errors"])
assert j["error_counts"]["http"] == 2, j["error_counts"]
assert j["errors"][1].startswith("http: HTTP 400"), j["errors"][1]
EOF
pass "HTTP errors counted"

# 4. Nothing listening: exit 1 with a message, no crash.
set +e
"${BENCH[@]}" --url http://127.0.0.1:1 --num-prompts 1 >"$TMP/none.txt" 2>"$TMP/none.err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "unreachable server: exit $rc, want 1"
grep -q "is a server listening" "$TMP/none.err" || fail "unreachable server: no message"
pass "unreachable server"

# 5. Bad command lines exit 2.
for args in "--request-rate -1" "--prompt-len 8:8" "--goodput ttft" "--prefill-mode fast" \
    "--dataset $TMP/missing.txt"; do
    set +e
    # shellcheck disable=SC2086
    "${BENCH[@]}" $args >/dev/null 2>&1
    rc=$?
    set -e
    [ $rc -eq 2 ] || fail "'$args': exit $rc, want 2"
done
pass "bad options"
echo "5 passed, 0 failed"
