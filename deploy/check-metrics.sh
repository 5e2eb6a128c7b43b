#!/usr/bin/env bash
# Lints a live /metrics scrape with `promtool check metrics` (Debian's prometheus package,
# installed by deploy/install-container-deps.sh): starts `kvcast serve --port 0` on the golden
# test model, sends one completion so every histogram has samples, scrapes /metrics, and fails
# on any problem promtool reports. Fails (never skips) when promtool is missing.
#   usage: deploy/check-metrics.sh path/to/kvcast
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KVCAST="${1:?usage: $0 path/to/kvcast}"
command -v promtool >/dev/null 2>&1 ||
  { echo "FAIL: promtool missing: run deploy/install-container-deps.sh" >&2; exit 1; }

TMP="$(mktemp -d)"
SRV_PID=""
cleanup() {
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

"$KVCAST" serve --host 127.0.0.1 --port 0 --model "$ROOT/tests/golden/llama_gqa" \
  --tokenizer "$ROOT/tests/fixtures/tiny_tokenizer" --log-level warn \
  >"$TMP/out" 2>"$TMP/err" &
SRV_PID=$!
URL=""
for _ in $(seq 1 300); do
  URL="$(sed -n 's/^kvcast: listening on \(http:[^ ]*\)$/\1/p' "$TMP/out")"
  [ -n "$URL" ] && break
  kill -0 "$SRV_PID" 2>/dev/null || { cat "$TMP/err" >&2; echo "FAIL: server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$TMP/err" >&2; echo "FAIL: server not listening after 30 s" >&2; exit 1; }

curl -sf --max-time 30 -H 'Content-Type: application/json' \
  -d '{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}' "$URL/v1/completions" >/dev/null
curl -sf --max-time 10 "$URL/metrics" >"$TMP/metrics.txt"
echo "scraped $(grep -c '^# TYPE' "$TMP/metrics.txt") metric families from $URL/metrics"
# kvcast keeps vLLM's metric names with its own prefix (`kvcast:time_to_first_token_seconds`
# for `vllm:time_to_first_token_seconds`) so dashboards and alerts written for vLLM carry
# over with a rename. promtool's linter flags every such name ("should not contain ':'",
# colons being meant for recording rules), exactly as it flags vLLM's own. That one lint is
# reported and accepted; any other problem fails the check.
promtool check metrics <"$TMP/metrics.txt" >"$TMP/lint" 2>&1 || true
colon=$(grep -c "metric names should not contain ':'" "$TMP/lint" || true)
grep -v "metric names should not contain ':'" "$TMP/lint" | grep -v '^\s*$' >"$TMP/other" || true
if [ -s "$TMP/other" ]; then
  echo "FAIL: promtool check metrics reports problems:" >&2
  cat "$TMP/other" >&2
  exit 1
fi
echo "promtool check metrics: no problems besides the vLLM-style ':' in $colon metric names"
