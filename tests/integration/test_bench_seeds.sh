#!/usr/bin/env bash
# `kvcast bench serve` synthetic dataset seeding (issue 16): two seeds share no prompt, the
# warm-up prompts are not measured prompts, a seed is reproducible, and arrival times differ
# between seeds. Uses --dump-prompts (no server). Short prompts over a small vocabulary make
# coupled streams visible quickly: with the old seeding (state seed*G + 1) seed k+1's stream
# was seed k's shifted by one draw, and these runs shared most of their prompts.
# Usage: test_bench_seeds.sh KVCAST_BINARY
set -euo pipefail
KVCAST=${1:?usage: test_bench_seeds.sh KVCAST_BINARY}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
for s in 0 1 2 7; do
    timeout 20 "$KVCAST" bench serve --dataset synthetic --dump-prompts "$TMP/s$s.jsonl" \
        --seed "$s" --num-prompts 300 --prompt-len 6:3 --vocab-size 40 --warmup 5 \
        --request-rate 4 || fail "dump of seed $s exited $?"
done
timeout 20 "$KVCAST" bench serve --dump-prompts "$TMP/s1b.jsonl" --seed 1 --num-prompts 300 \
    --prompt-len 6:3 --vocab-size 40 --warmup 5 --request-rate 4 || fail "second dump of seed 1"
cmp -s "$TMP/s1.jsonl" "$TMP/s1b.jsonl" || fail "seed 1 is not reproducible"
/usr/bin/python3 - "$TMP" <<'PY' || exit 1
import itertools, json, sys
d = sys.argv[1]
runs = {}
for s in (0, 1, 2, 7):
    rows = [json.loads(l) for l in open(f"{d}/s{s}.jsonl")]
    warm = [tuple(r["prompt"]) for r in rows if r.get("warmup")]
    meas = [tuple(r["prompt"]) for r in rows if not r.get("warmup")]
    arr = [r["arrival_s"] for r in rows if not r.get("warmup")]
    assert len(warm) == 5 and len(meas) == 300, (s, len(warm), len(meas))
    assert all(3 <= len(p) <= 9 and all(0 <= t < 40 for t in p) for p in warm + meas), s
    assert arr == sorted(arr) and arr[0] > 0, s
    shared = set(warm) & set(meas)
    assert not shared, f"seed {s}: warm-up prompts are measured prompts: {sorted(shared)[:3]}"
    runs[s] = (set(meas), arr)
for a, b in itertools.combinations(runs, 2):
    shared = runs[a][0] & runs[b][0]
    assert not shared, f"seeds {a} and {b} share {len(shared)} prompts, e.g. {sorted(shared)[0]}"
    assert runs[a][1][:5] != runs[b][1][:5], f"seeds {a} and {b} share arrival times"
print("ok - 4 seeds x 300 prompts: no prompt shared between seeds or with the warm-up")
PY
