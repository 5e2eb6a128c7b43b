#!/usr/bin/env bash
# The shipped model pair (models/tiny/): kvcast's greedy f32 output equals the PyTorch
# recipe's (models/tiny/reference/generations.json, written by tools/train/export.py from the
# same BF16 files) for every recorded prompt of both models; kvcast's tokenizer gives the
# recorded prompt ids; the bundle loads and `kvcast eval` runs all three modes on it.
#   usage: test_models_tiny.sh path/to/kvcast
set -euo pipefail
KVCAST="${1:?usage: $0 path/to/kvcast}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/models/tiny"
REF="$TINY/reference/generations.json"
[ -f "$REF" ] || { echo "FAIL: $REF missing (models/tiny is part of the repository)"; exit 1; }

# One line per case: model<TAB>prompt text<TAB>prompt ids<TAB>greedy ids
node -e '
const d = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const [m, cases] of Object.entries(d.models))
  for (const c of cases)
    console.log([m, JSON.stringify(c.prompt), c.prompt_ids.join(","), c.greedy_ids.join(",")].join("\t"));
' "$REF" > /tmp/kc_tiny_cases.$$
n=0
while IFS=$'\t' read -r model prompt_json ids want; do
  prompt=$(node -e 'process.stdout.write(JSON.parse(process.argv[1]))' "$prompt_json")
  got_ids=$("$KVCAST" tokenize --tokenizer "$TINY/$model" --text "$prompt" --json |
            node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).ids.join(",")))')
  # The recipe's ids include the BOS the tokenizer config adds.
  if [ "$got_ids" != "$ids" ]; then
    echo "FAIL: $model: tokenize($prompt_json)"; echo " got:  $got_ids"; echo " want: $ids"; exit 1
  fi
  n_want=$(echo "$want" | tr ',' '\n' | wc -l)
  got=$("$KVCAST" generate --model "$TINY/$model" --prompt-ids "$ids" --max-tokens "$n_want" \
        --dtype f32 --ignore-eos --threads 1 --json |
        node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).ids.join(",")))')
  if [ "$got" != "$want" ]; then
    echo "FAIL: $model: greedy continuation of $prompt_json differs from PyTorch"
    echo " got:  $got"; echo " want: $want"; exit 1
  fi
  n=$((n + 1))
done < /tmp/kc_tiny_cases.$$
rm -f /tmp/kc_tiny_cases.$$
[ "$n" -ge 2 ] || { echo "FAIL: only $n reference cases"; exit 1; }

# The default bundle loads (tokenizers identical, shapes fit) and evaluates in every mode.
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters.\n' > /tmp/kc_tiny_eval.$$
out=$("$KVCAST" eval --bundle "$TINY/kvcast-bundle.json" --data /tmp/kc_tiny_eval.$$ \
      --prompt-len 32 --cont-len 8 --samples 2 --threads 1 --json)
rm -f /tmp/kc_tiny_eval.$$
printf '%s' "$out" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{
  const o = JSON.parse(s);
  for (const m of ["full","aux","predict"]) {
    const r = o.modes[m];
    if (!r || !(r.nll > 0 && isFinite(r.nll))) throw new Error("eval mode " + m + " missing or bad");
  }})'
echo "$n passed, 0 failed"
