#!/usr/bin/env bash
# `kvcast eval` with no data option reproduces the README's and the model card's KV-prediction
# quality figures on the shipped held-out ids (models/tiny/heldout.ids: 64 windows of held-out
# Persuasion, prompt 128 + continuation 32): full 4.1502, aux 4.3510, predict 4.1658 nats/token,
# gap closed 92.2%, first-token agreement 0.61; and the predict_refine@1/4/16 rows of
# docs/kv-prediction.md (predict with the exact KV swapped in after k tokens): 4.1552, 4.1579,
# 4.1669. The tolerance allows f32 rounding differences between builds (sanitizers,
# -march=native), not a changed model or file. --no-greedy skips the greedy continuations
# (first-token agreement is still measured): ~20 s of CPU under ASan. A second run on 8 windows
# checks the greedy agreements of the refine rows, a third the rows' presence rules.
#   usage: test_eval_heldout.sh path/to/kvcast   (run from the repository root)
set -euo pipefail
KVCAST="${1:?usage: $0 path/to/kvcast}"
cd "$(dirname "$0")/../.."
out=$("$KVCAST" eval --no-greedy --threads 1 --json)
/usr/bin/python3 - "$out" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
m = o["modes"]
want = {"full": 4.1502, "aux": 4.3510, "predict": 4.1658, "predict_refine@1": 4.1552,
        "predict_refine@4": 4.1579, "predict_refine@16": 4.1669}
got = {k: m[k]["nll"] for k in want}
print("kvcast eval on models/tiny/heldout.ids:", got, "gap closed", o["gap_closed"])
assert (o["samples"], o["prompt_len"], o["cont_len"]) == (64, 128, 32), o
for k, v in want.items():
    assert abs(got[k] - v) < 5e-4, "%s NLL %.4f, docs say %.4f" % (k, got[k], v)
assert abs(o["gap_closed"] - 0.922) < 0.003 and o["gap_closed_meaningful"], o["gap_closed"]
assert abs(m["predict"]["first_token_agreement"] - 0.61) < 0.02, m["predict"]
assert o["warnings"] == [], o["warnings"]
assert m["full"]["greedy_agreement"] is None, m["full"]  # --no-greedy: not measured
# predict_refine@k: the first token is predict's own (same prefill), the later ones move toward
# full's NLL as the swap comes earlier; refine@16 may sit a hair above predict (predict's late
# tokens happen to score slightly better than full's on these windows: noise of 64 samples).
f, p = got["full"], got["predict"]
r = [got["predict_refine@%d" % k] for k in (1, 4, 16)]
for k in (1, 4, 16):
    row = m["predict_refine@%d" % k]
    assert row["refine_at_token"] == k, row
    assert row["first_token_agreement"] == m["predict"]["first_token_agreement"], row
    assert row["greedy_agreement_after_refine_same_prefix"] is None, row
assert f < r[0] <= r[1] <= r[2] <= p + 2e-3, (f, r, p)
assert r[0] < p and r[1] < p, (r, p)
assert r[1] <= 1.01 * f, "issue 17 bar: predict_refine@4 NLL %.4f not within 1%% of full %.4f" % (r[1], f)
PY
# Greedy agreements after the refine point, on 8 windows. Same-prefix (full's greedy tokens fed,
# the swapped-in cache decides positions >= k) must reproduce full's argmax almost everywhere:
# the issue's >= 95% bar, and the check that the refined cache is full's. Free-running (the
# text a predict_refine request writes) agrees less, more so the later the swap.
out=$("$KVCAST" eval --samples 8 --threads 1 --json 2>/dev/null)
/usr/bin/python3 - "$out" <<'PY'
import json, sys
m = json.loads(sys.argv[1])["modes"]
rows = [m["predict_refine@%d" % k] for k in (1, 4, 16)]
print("greedy after refine (same-prefix, free-running, before 1st divergence):",
      [(x["greedy_agreement_after_refine_same_prefix"],
        x["greedy_agreement_after_refine_free_running"], x["greedy_agreement"]) for x in rows])
for x in rows:
    assert x["greedy_agreement_after_refine_same_prefix"] >= 0.95, x
    assert 0.0 <= x["greedy_agreement_after_refine_free_running"] <= 1.0, x
    # The first k tokens are predict's own; after the swap the text follows full's while its
    # prefix still does: never earlier off full's text than predict (f32 ties aside).
    assert x["greedy_agreement"] >= m["predict"]["greedy_agreement"] - 0.01, (x, m["predict"])
# Before the first divergence: predict's own tokens up to k, full's after, so an earlier swap
# can only keep more (the positional free-running share after a divergence is noise on 8
# windows and not compared).
g = [x["greedy_agreement"] for x in rows]
assert g[0] >= g[1] >= g[2], g
assert rows[0]["greedy_agreement"] > m["predict"]["greedy_agreement"], (rows[0], m["predict"])
PY
# The rows exist only when the swap falls inside the scored continuation (k < cont-len), and
# --no-refine drops them all.
out=$("$KVCAST" eval --samples 2 --prompt-len 32 --cont-len 8 --no-greedy --threads 1 --json 2>/dev/null)
/usr/bin/python3 -c 'import json,sys; m=json.loads(sys.argv[1])["modes"]
assert "predict_refine@1" in m and "predict_refine@4" in m and "predict_refine@16" not in m, list(m)' "$out"
out=$("$KVCAST" eval --samples 2 --prompt-len 32 --cont-len 8 --no-greedy --no-refine --threads 1 \
  --json 2>/dev/null)
/usr/bin/python3 -c 'import json,sys; m=json.loads(sys.argv[1])["modes"]
assert sorted(m) == ["aux", "full", "predict"], list(m)' "$out"
echo "4 passed, 0 failed"
