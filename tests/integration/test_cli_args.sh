#!/usr/bin/env bash
# The kvcast command line, every subcommand through the one parser (tools/cli/args.h):
#   --help prints a usage to stdout and exits 0; an unknown option, a flag given a value, a
#   missing or malformed value exit 2 with a message naming the option; --x=v equals --x v;
#   `kvcast --version` / `kvcast version [--json]` name the build and the libraries;
#   `kvcast eval` flags an aux model that beats full (warning + JSON) and, without --data, reads
#   the bundle's held-out ids with the windows' own prompt/continuation lengths.
# Bounded: tiny models, a few samples (~10 s under ASan).
#   usage: test_cli_args.sh path/to/kvcast   (run from the repository root)
set -uo pipefail
KVCAST="${1:?usage: $0 path/to/kvcast}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT" || exit 1
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/kc_cli_args.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

# run NAME ARGS...: runs kvcast, leaving $TMP/out, $TMP/err and $rc.
run() { "$KVCAST" "$@" >"$TMP/out" 2>"$TMP/err"; rc=$?; }

# --help: exit 0, usage on stdout, nothing on stderr.
subcommands=("generate" "calibrate" "eval" "tokenize" "detokenize" "chat-template" "serve" "version" "bench"
             "bench engine" "bench serve" "bench gemv")
for c in "${subcommands[@]}"; do
  # shellcheck disable=SC2086
  run $c --help
  if [ "$rc" -eq 0 ] && grep -qi "usage" "$TMP/out" && [ ! -s "$TMP/err" ]; then ok; else
    bad "'kvcast $c --help': exit $rc, stdout $(wc -c <"$TMP/out") bytes, stderr: $(head -c 200 "$TMP/err")"
  fi
  # shellcheck disable=SC2086
  run $c -h
  [ "$rc" -eq 0 ] && ok || bad "'kvcast $c -h': exit $rc"
  # An unknown option: exit 2, named on stderr, nothing on stdout.
  # shellcheck disable=SC2086
  run $c --no-such-option=1
  if [ "$rc" -eq 2 ] && grep -q -- "--no-such-option" "$TMP/err" && [ ! -s "$TMP/out" ]; then ok; else
    bad "'kvcast $c --no-such-option=1': exit $rc, stderr: $(head -c 200 "$TMP/err")"
  fi
done
run --help
[ "$rc" -eq 0 ] && grep -q "version" "$TMP/out" && ok || bad "'kvcast --help': exit $rc"
run no-such-command
[ "$rc" -eq 2 ] && ok || bad "'kvcast no-such-command': exit $rc, want 2"

# expect_2 PATTERN ARGS...: exit 2 with PATTERN in the message.
expect_2() {
  local pat="$1"; shift
  run "$@"
  if [ "$rc" -eq 2 ] && grep -q -- "$pat" "$TMP/err"; then ok; else
    bad "'kvcast $*': exit $rc (want 2), stderr: $(head -c 200 "$TMP/err") (want '$pat')"
  fi
}
G=tests/golden/llama_gqa
expect_2 "--json takes no value" generate --model "$G" --prompt-ids 1,2 --json=yes
expect_2 "--model needs a value" generate --model
expect_2 "--max-tokens must be" generate --model "$G" --prompt-ids 1 --max-tokens=0
expect_2 "--prompt-ids" generate --model="$G" --prompt-ids=1,x
expect_2 "unexpected argument 'stray'" generate --model "$G" --prompt-ids 1 stray
expect_2 "--samples must be" eval --samples=x
expect_2 "--prompt-len must be" eval --prompt-len=0
expect_2 "--dtype must be f32, bf16 or int8" eval --dtype=f16
expect_2 "--data is required" eval --base models/tiny/base --aux models/tiny/aux
expect_2 "--ridge must be" calibrate --ridge=-1
expect_2 "--tokens must be" calibrate --tokens=1
expect_2 "--bench must be" tokenize --tokenizer=models/tiny/base --text=x --bench=0
expect_2 "--ids wants a list" detokenize --tokenizer=models/tiny/base --ids=1,,2
expect_2 "--prompt-len must be" bench engine --config=kvcast-aux --prompt-len=0
expect_2 "--rows must be" bench gemv --rows=0
expect_2 "--num-prompts must be" bench serve --num-prompts=0
expect_2 "--goodput items" bench serve --goodput=ttft:x
expect_2 "--goodput items" bench serve --goodput ttft:450 tpot:x
expect_2 "--prefill-mode must be" bench serve --prefill-mode=fast
expect_2 "--port" serve --port=x

# --x=v is --x v: the same greedy ids and the same token ids.
a=$("$KVCAST" generate --model "$G" --prompt-ids 5,6,7 --max-tokens 6 --dtype f32 --threads 1 \
     --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
b=$("$KVCAST" generate --model="$G" --prompt-ids=5,6,7 --max-tokens=6 --dtype=f32 --threads=1 \
     --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "generate --x=v gave '$b', --x v gave '$a'"
a=$("$KVCAST" tokenize --tokenizer models/tiny/base --text "Anne=Elliot" --json)
b=$("$KVCAST" tokenize --tokenizer=models/tiny/base --text=Anne=Elliot --json)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "tokenize --x=v gave '$b', --x v gave '$a'"

# generate --json is one JSON object built by jansson: a prompt with quotes and control
# characters round-trips through a real JSON parser.
"$KVCAST" generate --model models/tiny/base --prompt $'"Quote"\tand\\ back' --max-tokens 4 \
  --threads 1 --json >"$TMP/gen.json" 2>"$TMP/err"
$PY - "$TMP/gen.json" <<'EOF' && ok || bad "generate --json: $(cat "$TMP/gen.json")"
import json, sys
o = json.load(open(sys.argv[1]))
assert isinstance(o["text"], str) and len(o["ids"]) == 4, o
assert o["finish_reason"] in ("length", "stop") and o["prompt_tokens"] > 0, o
EOF

# --version: the build's git describe and each library's version.
run --version
v1=$(head -n1 "$TMP/out")
if [ "$rc" -eq 0 ] && [[ "$v1" =~ ^kvcast\ [0-9A-Za-z] ]] &&
   grep -qE "oneDNN +[0-9]+\.[0-9]+" "$TMP/out" && grep -qE "libmicrohttpd +[0-9]+\." "$TMP/out" &&
   grep -qE "libuv +[0-9]+\." "$TMP/out" && grep -qE "jansson +[0-9]+\." "$TMP/out" &&
   grep -qE "PCRE2 +[0-9]+\." "$TMP/out"; then ok; else
  bad "kvcast --version: exit $rc: $(cat "$TMP/out" "$TMP/err")"
fi
run version
[ "$rc" -eq 0 ] && [ "$(head -n1 "$TMP/out")" = "$v1" ] && ok || bad "'kvcast version' differs from --version"
"$KVCAST" version --json >"$TMP/v.json"
$PY - "$TMP/v.json" "$v1" <<'EOF' && ok || bad "version --json: $(cat "$TMP/v.json")"
import json, sys
o = json.load(open(sys.argv[1]))
assert "kvcast " + o["version"] == sys.argv[2].split(" (")[0], (o["version"], sys.argv[2])
for k in ("onednn", "libmicrohttpd", "libuv", "jansson", "pcre2", "libcurl"):
    assert o["dependencies"][k][0].isdigit(), k
EOF
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  # Built from this checkout: the describe names the checkout's commit.
  head=$(git -C "$ROOT" rev-parse --short=7 HEAD)
  $PY -c 'import json,sys; o=json.load(open(sys.argv[1])); assert o["from_git"]' "$TMP/v.json" &&
    ok || bad "version --json: from_git false in a git checkout"
  grep -q "$head" <<<"$v1" || echo "note: '$v1' does not name HEAD $head (built before the last commit?)"
fi

# eval: the pair swapped (the 1.25M-parameter aux as "base", the base as "aux") makes the aux
# beat full: a warning on stderr and in the JSON, gap closed flagged as meaningless.
run eval --base models/tiny/aux --aux models/tiny/base --data models/tiny/heldout.ids --ids \
  --samples 4 --prompt-len 32 --cont-len 8 --threads 1 --json
grep -q "warning: aux_beats_full" "$TMP/err" && ok || bad "eval swapped pair: no warning on stderr"
$PY - "$TMP/out" <<'EOF' && ok || bad "eval swapped pair JSON: $(cat "$TMP/out")"
import json, sys
o = json.load(open(sys.argv[1]))
assert o["modes"]["aux"]["nll"] < o["modes"]["full"]["nll"], o["modes"]
assert o["gap_closed_meaningful"] is False, o
assert any(w.startswith("aux_beats_full") for w in o["warnings"]), o["warnings"]
EOF
# The table says so too.
run eval --base models/tiny/aux --aux models/tiny/base --data=models/tiny/heldout.ids --ids \
  --samples=4 --prompt-len=32 --cont-len=8 --threads=1
grep -q "warning: aux_beats_full" "$TMP/out" && ok || bad "eval table: no warning line: $(cat "$TMP/out")"

# eval without --data: the bundle's held-out ids, with its windows' prompt and continuation
# lengths; the shipped pair gives no warning and a meaningful gap.
run eval --samples 3 --threads 1 --json
$PY - "$TMP/out" <<'EOF' && ok || bad "eval default data: exit $rc: $(cat "$TMP/out" "$TMP/err")"
import json, sys
o = json.load(open(sys.argv[1]))
assert o["data"] == "models/tiny/heldout.ids" and o["ids"] is True, o
assert (o["prompt_len"], o["cont_len"], o["samples"]) == (128, 32, 3), o
assert o["warnings"] == [] and o["gap_closed_meaningful"] is True, o
m = o["modes"]
assert m["full"]["nll"] < m["predict"]["nll"] < m["aux"]["nll"], m
EOF

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
