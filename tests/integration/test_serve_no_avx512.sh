#!/usr/bin/env bash
# A CPU without AVX-512 (oneDNN capped at AVX2 with ONEDNN_MAX_CPU_ISA): oneDNN 2.6 has no bf16
# products there, so the default decode weights (--decode-dtype auto) must be f32 and the
# defaults must load and serve. `kvcast generate` with its defaults must keep the golden
# model's greedy ids of an uncapped run, and `kvcast serve` must log f32 weights for both
# steps (auto prefill is bf16 only with native bf16 dot products) and answer a completion;
# an explicit bf16 must fail at load with oneDNN's reason, not crash.
#   usage: test_serve_no_avx512.sh path/to/kvcast
set -euo pipefail
KVCAST="${1:?usage: $0 path/to/kvcast}"
cd "$(dirname "$0")/../.."
source tests/integration/serve_lib.sh

gen() { "$KVCAST" generate --model tests/golden/llama_gqa --tokenizer tests/fixtures/tiny_tokenizer \
    --prompt "the quick brown fox" --max-tokens 12 --prefill-dtype f32 --json "$@" 2>>"$TMP/gen.log"; }
want=$(gen --decode-dtype f32 | $PY -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
got=$(ONEDNN_MAX_CPU_ISA=AVX2 gen | $PY -c 'import json,sys; print(json.load(sys.stdin)["ids"])') ||
    fail "generate with default dtypes failed under ONEDNN_MAX_CPU_ISA=AVX2: $(tail -n 3 "$TMP/gen.log")"
[ "$want" = "$got" ] || fail "greedy ids differ: f32 $want, AVX2 defaults $got"
: >"$TMP/gen.log"
if ONEDNN_MAX_CPU_ISA=AVX2 gen --decode-dtype bf16 >/dev/null; then
    fail "--decode-dtype bf16 loaded without bf16 products"
fi
grep -q "no bf16 matmul" "$TMP/gen.log" || fail "bf16 without AVX-512: $(tail -n 2 "$TMP/gen.log")"

export ONEDNN_MAX_CPU_ISA=AVX2
kc_start_pair_server
grep -q "prefill f32 (auto) decode f32" "$TMP/server.log" ||
    fail "the server did not pick f32 weights for both steps: $(grep weights "$TMP/server.log")"
out=$(curl -sS -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 8, "temperature": 0}')
echo "$out" | $PY -c 'import json,sys; o=json.load(sys.stdin); assert o["usage"]["completion_tokens"] == 8, o' ||
    fail "completion under AVX2: $out"
echo "test_serve_no_avx512: ok (greedy ids $got)"
