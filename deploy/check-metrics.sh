#!/usr/bin/env bash
# Lints live /metrics scrapes with `promtool check metrics` (Debian's prometheus package,
# installed by deploy/install-deps.sh): starts `kvcast serve --port 0` on the golden test model
# once per metric spelling, sends one completion so every histogram has samples, scrapes
# /metrics and fails on any problem promtool reports. Fails (never skips) when promtool is
# missing.
#   usage: deploy/check-metrics.sh path/to/kvcast
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KVCAST="${1:?usage: $0 path/to/kvcast}"
command -v promtool >/dev/null 2>&1 ||
  { echo "FAIL: promtool missing: run deploy/install-deps.sh" >&2; exit 1; }

TMP="$(mktemp -d)"
SRV_PID=""
stop_server() {
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
cleanup() {
  stop_server
  rm -rf "$TMP"
}
trap cleanup EXIT

# scrape STYLE OUT: serves the golden test model with --metric-names STYLE, sends one
# completion so every histogram has samples, and writes the /metrics exposition to OUT.
scrape() {
  : >"$TMP/out"
  "$KVCAST" serve --host 127.0.0.1 --port 0 --model "$ROOT/tests/golden/llama_gqa" \
    --tokenizer "$ROOT/tests/fixtures/tiny_tokenizer" --log-level warn --metric-names "$1" \
    >"$TMP/out" 2>"$TMP/err" &
  SRV_PID=$!
  local url=""
  for _ in $(seq 1 300); do
    url="$(sed -n 's/^kvcast: listening on \(http:[^ ]*\)$/\1/p' "$TMP/out")"
    [ -n "$url" ] && break
    kill -0 "$SRV_PID" 2>/dev/null || { cat "$TMP/err" >&2; echo "FAIL: server exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$TMP/err" >&2; echo "FAIL: server not listening after 30 s" >&2; exit 1; }
  # The port is bound before the model loads: wait for /health 200 (503 "loading" until then).
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/health")" = 200 ] && break
    sleep 0.1
  done
  curl -sf --max-time 30 -H 'Content-Type: application/json' \
    -d '{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}' "$url/v1/completions" >/dev/null
  curl -sf --max-time 10 "$url/metrics" >"$2"
  stop_server
  echo "scraped $(grep -c '^# TYPE' "$2") metric families (--metric-names $1)"
}

# --metric-names prometheus (what deploy/ runs): promtool must report nothing at all.
scrape prometheus "$TMP/prometheus.txt"
if ! promtool check metrics <"$TMP/prometheus.txt" >"$TMP/lint" 2>&1 || [ -s "$TMP/lint" ]; then
  echo "FAIL: promtool check metrics reports problems (--metric-names prometheus):" >&2
  cat "$TMP/lint" >&2
  exit 1
fi
echo "promtool check metrics: no problems (--metric-names prometheus)"

# --metric-names vllm (the default, vLLM's names with a `kvcast:` prefix so vLLM dashboards
# carry over): promtool flags every ':' (reserved for recording rules), exactly as it flags
# vLLM's own names. That one lint is expected; any other problem fails the check, and the
# two spellings must carry the same families.
scrape vllm "$TMP/vllm.txt"
promtool check metrics <"$TMP/vllm.txt" >"$TMP/lint" 2>&1 || true
colon=$(grep -c "metric names should not contain ':'" "$TMP/lint" || true)
grep -v "metric names should not contain ':'" "$TMP/lint" | grep -v '^\s*$' >"$TMP/other" || true
if [ -s "$TMP/other" ]; then
  echo "FAIL: promtool check metrics reports problems (--metric-names vllm):" >&2
  cat "$TMP/other" >&2
  exit 1
fi
families() { sed -n 's/^# TYPE kvcast[:_]\([a-z_]*\) .*/\1/p' "$1" | sort; }
if ! diff <(families "$TMP/prometheus.txt") <(families "$TMP/vllm.txt") >"$TMP/diff"; then
  echo "FAIL: the two spellings expose different families:" >&2
  cat "$TMP/diff" >&2
  exit 1
fi
echo "promtool check metrics: only the expected ':' lint on $colon names (--metric-names vllm)"
