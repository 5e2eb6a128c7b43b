#!/usr/bin/env bash
# pd_costs.sh — measures the costs that size a disaggregated kvcast deployment
# (docs/deploy-pd.md), on this machine, for one model pair:
#   prefill host: a full prefill of L tokens, and predict mode's aux prefill + predictor + one
#                 base step (`kvcast bench engine --kvp`, the pair's shapes, random weights);
#   decode host:  the time per output token with B sequences running, B = each --concurrency
#                 (`kvcast serve` on the pair + `kvcast bench serve`: the median over requests
#                 of TPOT = (E2EL - TTFT) / (tokens - 1), B requests in flight, prompts of L
#                 tokens; the server also prefills, so this overstates a decode-only host's);
#   the wire:     base KV bytes per prompt token (what a prefill host ships per token).
# It only measures; the sizing formulas and a worked example are in docs/deploy-pd.md.
#
# usage: tools/deploy/pd_costs.sh [--kvcast BIN] [--bundle FILE] [--prompt-len L] [--gen O]
#                                 [--threads T] [--concurrency "1 4 8 16"]
# Defaults: build/release/tools/kvcast, the embedded pair, L 1024, O 64, T 1. T is the threads
# of one prefill worker and of the decode worker (2 cores: 1 each, so they do not compete).
# Benchmarks on a shared machine are noisy: run it twice and compare.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kvcast="$root/build/release/tools/kvcast"
bundle="$root/models/tiny/kvcast-bundle.json"
L=1024 O=64 T=1 conc="1 4 8 16"
while [ $# -gt 0 ]; do
    case "$1" in
    --kvcast) kvcast="$2"; shift 2 ;;
    --bundle) bundle="$2"; shift 2 ;;
    --prompt-len) L="$2"; shift 2 ;;
    --gen) O="$2"; shift 2 ;;
    --threads) T="$2"; shift 2 ;;
    --concurrency) conc="$2"; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "pd_costs.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
py=/usr/bin/python3
work="$(mktemp -d)"
serve_pid=""
cleanup() {
    if [ -n "$serve_pid" ]; then
        kill -TERM "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The pair's config.json files, its vocabulary, and the base KV bytes per token (f32 cache).
read -r base_cfg aux_cfg vocab kv_bytes < <("$py" - "$bundle" <<'EOF'
import json, os, sys
b = sys.argv[1]
d = json.load(open(b))
top = os.path.dirname(os.path.abspath(b))
base = os.path.join(top, d["base"], "config.json")
aux = os.path.join(top, d["aux"], "config.json")
c = json.load(open(base))
kvh = c.get("num_key_value_heads", c["num_attention_heads"])
hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
print(base, aux, c["vocab_size"], 2 * c["num_hidden_layers"] * kvh * hd * 4)
EOF
)
echo "pair $bundle: prompt $L tokens, $O output tokens, $T thread(s) per worker, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Prefill host costs.
"$kvcast" bench engine --config "$base_cfg" --aux-config "$aux_cfg" --kvp --prompt-len "$L" \
    --gen 8 --threads "$T" --attn none --repeat 2 --json >"$work/engine.json" 2>"$work/engine.err" ||
    { cat "$work/engine.err" >&2; exit 1; }
"$py" - "$work/engine.json" "$L" <<'EOF'
import json, sys
parts = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
L = int(sys.argv[2])
k = next(p["kvp"] for p in parts if "kvp" in p)
pre = k["aux_ms"] + k["predict_ms"] + k["base_first_step_ms"]
print(f"prefill  full: {k['ttft_full_ms']:.1f} ms  -> {1000 * L / k['ttft_full_ms']:.0f} prompt tokens/s per worker")
print(f"prefill  predict: {k['ttft_predict_ms']:.1f} ms (aux {k['aux_ms']:.1f} + predictor {k['predict_ms']:.1f}"
      f" + base step {k['base_first_step_ms']:.1f})  -> {1000 * L / pre:.0f} prompt tokens/s per worker")
EOF

# Decode host costs: a real server on the pair, B requests in flight at a time.
max_b=1
for b in $conc; do [ "$b" -gt "$max_b" ] && max_b=$b; done
kv_mib=$(( (max_b * (L + O) * kv_bytes) / 1048576 + 64 ))
"$kvcast" serve --bundle "$bundle" --host 127.0.0.1 --port 0 --prefill-threads "$T" \
    --decode-threads "$T" --max-running "$max_b" --max-queue $((4 * max_b)) --base-kv-mib "$kv_mib" \
    --no-refine --max-connections-per-ip 0 --access-log=false --log-level error >"$work/serve.log" 2>&1 &
serve_pid=$!
url=""
for _ in $(seq 1 600); do
    url="$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.log" | head -1 || true)"
    if [ -n "$url" ] && "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$url" 2>/dev/null; then
        break
    fi
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.2
done
for b in $conc; do
    "$kvcast" bench serve --url "$url" --num-prompts $((2 * b)) --request-rate inf --max-concurrency "$b" \
        --prompt-len "$L" --vocab-size "$vocab" --max-tokens "$O" --prefill-mode predict --logprobs 0 \
        --no-progress --seed "$b" --json "$work/b$b.json" >/dev/null 2>"$work/b$b.err" ||
        { cat "$work/b$b.err" >&2; exit 1; }
    "$py" - "$work/b$b.json" "$b" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
b = int(sys.argv[2])
if d["failed"]:
    sys.exit(f"decode B={b}: {d['failed']} requests failed: {d['error_counts']}")
tpot = d["median_tpot_ms"]
print(f"decode   B={b:<3d} median time per output token {tpot:6.1f} ms (p99 {d['p99_tpot_ms']:.1f})"
      f"  -> {1000 * b / tpot:6.0f} output tokens/s per host")
EOF
done
echo "wire     base KV $kv_bytes bytes per prompt token (f32; half with a bf16 KV cache)"
