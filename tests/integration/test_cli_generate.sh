#!/usr/bin/env bash
# `kvcast generate` end to end: greedy f32 output on the golden llama_gqa model equals the
# PyTorch reference's 32 greedy ids (tests/golden/llama_gqa/reference.safetensors), --json
# is one parseable object, and bad arguments exit 2 with a message.
#   usage: test_cli_generate.sh path/to/kvcast
set -euo pipefail
KVCAST="${1:?usage: $0 path/to/kvcast}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL="$ROOT/tests/golden/llama_gqa"
PROMPT=121,127,76,69,0,118,66,50,32,86,28,43,4,46,12,60,70,59,101,63,77,49,127,101
WANT=36,117,20,3,18,18,18,18,18,18,18,18,18,18,32,90,60,9,90,90,90,90,90,90,90,90,90,90,90,90,90,90

out=$("$KVCAST" generate --model "$MODEL" --prompt-ids "$PROMPT" --max-tokens 32 --dtype f32 \
      --ignore-eos --threads 1 --json)
ids=$(printf '%s' "$out" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{
  const o=JSON.parse(s);
  for (const k of ["ids","text","prefill_tokens_per_s","decode_tokens_per_s"]) if (!(k in o)) throw new Error("missing "+k);
  if (!(o.prefill_tokens_per_s>0 && o.decode_tokens_per_s>0)) throw new Error("speeds not positive");
  console.log(o.ids.join(","));})')
if [ "$ids" != "$WANT" ]; then
  echo "FAIL: greedy ids differ from the reference"; echo " got:  $ids"; echo " want: $WANT"; exit 1
fi

set +e
"$KVCAST" generate --model "$MODEL" --prompt-ids 1,x --max-tokens 4 2>/tmp/kc_gen_err.$$; rc=$?
set -e
grep -q -- "--prompt-ids" /tmp/kc_gen_err.$$ || { echo "FAIL: no message for a bad id list"; exit 1; }
rm -f /tmp/kc_gen_err.$$
[ "$rc" -eq 2 ] || { echo "FAIL: bad --prompt-ids exit code $rc, want 2"; exit 1; }
set +e
"$KVCAST" generate --model "$ROOT/tests/golden/does-not-exist" --prompt-ids 1 >/dev/null 2>&1; rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "FAIL: missing model exit code $rc, want 1"; exit 1; }
echo "1 passed, 0 failed"
