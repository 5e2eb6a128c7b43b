#!/usr/bin/env bash
# test_server_startup.sh — how `kvcast serve` starts (issue 15, items 7, 9, 10, 14):
#   1. a busy port fails at once (before any model is read) with the errno text, exit != 0;
#   2. the port is bound before the models load: /health answers 503 {"status":"loading"},
#      other routes 503 + Retry-After with an OpenAI error body, then /health turns 200;
#   3. SIGTERM while loading exits 0 promptly;
#   4. a config.json with fewer layers than the weights is refused, naming an unused tensor;
#   5. a predictor that does not fit the pair is refused, naming the file and a tensor, also
#      when given as --predictor over a bundle (the override is used, not ignored);
#   6. --aux without --model replaces the bundle's aux; the bundle's "name" is the model id;
#   7. a tokenizer with ids the model cannot embed is refused at start-up.
# Models: the golden llama_gqa (2 layers, vocab 128) paired with itself through an identity
# predictor. Usage: test_server_startup.sh KVCAST (run from the source root).
set -u
KVCAST=$1
. tests/integration/serve_lib.sh

GQA=$PWD/tests/golden/llama_gqa
TOK=$PWD/tests/fixtures/tiny_tokenizer
$PY tools/bench/make_pair.py --predictor-only --identity --base-dir "$GQA" --aux-dir "$GQA" \
    --out "$TMP/pred.safetensors" >/dev/null || fail "make_pair.py (identity predictor)"
# A predictor for a 3-layer base: does not fit the 2-layer llama_gqa pair.
UNTIED=$PWD/tests/golden/llama_untied_bf16
$PY tools/bench/make_pair.py --predictor-only --identity --base-dir "$UNTIED" \
    --aux-dir "$UNTIED" --out "$TMP/wrong.safetensors" >/dev/null || fail "make_pair.py (wrong)"

# start_bg OUT_PREFIX ARGS...: starts the server in the background (SRV = pid).
start_bg() {
    local pre=$1
    shift
    timeout 120 "$KVCAST" serve --host 127.0.0.1 --no-access-log "$@" >"$pre.out" 2>"$pre.err" &
    SRV=$!
}
# wait_port OUT_PREFIX: prints the port once the "listening on" line is out.
wait_port() {
    local port=""
    for _ in $(seq 300); do
        port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1.out" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$SRV" 2>/dev/null || break
        sleep 0.02
    done
    echo "$port"
}
# wait_exit SECONDS: waits for $SRV to exit and sets RC to its exit status (124 on timeout).
# Not in a $(...) subshell: only the shell that started the server can wait for it.
wait_exit() {
    local deadline=$(($(date +%s%N) / 1000000 + $1 * 1000))
    while kill -0 "$SRV" 2>/dev/null; do
        if [ $(($(date +%s%N) / 1000000)) -gt "$deadline" ]; then
            kill -9 "$SRV" 2>/dev/null
            wait "$SRV" 2>/dev/null
            SRV=""
            RC=124
            return
        fi
        sleep 0.02
    done
    wait "$SRV"
    RC=$?
    SRV=""
}
# http METHOD URL [BODY]: prints "STATUS|RETRY-AFTER|BODY".
http() {
    $PY - "$@" <<'PYEOF'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method,
                             headers={"Content-Type": "application/json"} if data else {})
try:
    r = urllib.request.urlopen(req, timeout=10)
    print(f"{r.status}|{r.headers.get('Retry-After', '')}|{r.read().decode()}")
except urllib.error.HTTPError as e:
    print(f"{e.code}|{e.headers.get('Retry-After', '')}|{e.read().decode()}")
PYEOF
}
# refuse NAME WANT ARGS...: the server must exit 1 and its stderr hold every |-separated WANT.
refuse() {
    local name=$1 want=$2
    shift 2
    start_bg "$TMP/$name" "$@" --port 0
    local rc
    wait_exit 60
    rc=$RC
    [ "$rc" = 1 ] || fail "$name: exit $rc, want 1 ($(tail -n 3 "$TMP/$name.err"))"
    local IFS='|'
    for w in $want; do
        grep -qF -- "$w" "$TMP/$name.err" || fail "$name: stderr lacks '$w': $(tail -n 2 "$TMP/$name.err")"
    done
    echo "ok: $name refused: $(grep 'kvcast serve:' "$TMP/$name.err" | cut -c1-200)"
}

PAIR=(--model "$GQA" --aux "$GQA" --predictor "$TMP/pred.safetensors" --tokenizer "$TOK")

# 1. Busy port: fails within a second although loading would take 10 s, with the errno text.
$PY -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1], flush=True)
time.sleep(30)' >"$TMP/busy.port" &
BUSY=$!
for _ in $(seq 100); do [ -s "$TMP/busy.port" ] && break; sleep 0.05; done
BPORT=$(cat "$TMP/busy.port")
t0=$(date +%s%N)
start_bg "$TMP/busy" "${PAIR[@]}" --port "$BPORT" --debug-load-delay-ms 10000
wait_exit 5
rc=$RC
ms=$((($(date +%s%N) - t0) / 1000000))
kill "$BUSY" 2>/dev/null
wait "$BUSY" 2>/dev/null
[ "$rc" = 1 ] || fail "busy port: exit $rc, want 1"
grep -q "Address already in use" "$TMP/busy.err" || fail "busy port: no errno text: $(cat "$TMP/busy.err")"
grep -q "models:" "$TMP/busy.err" && fail "busy port: models were loaded before the bind failed"
[ "$ms" -lt 3000 ] || fail "busy port: took $ms ms"
echo "ok: busy port $BPORT refused in $ms ms: $(grep 'kvcast serve:' "$TMP/busy.err")"

# 2. LOADING: 503s while a slow load runs, then 200.
start_bg "$TMP/load" "${PAIR[@]}" --port 0 --debug-load-delay-ms 1500 --served-model-name tiny
PORT=$(wait_port "$TMP/load")
[ -n "$PORT" ] || fail "loading: no port printed"
URL=http://127.0.0.1:$PORT
r=$(http GET "$URL/health")
[ "$r" = '503|1|{"status":"loading"}' ] || fail "loading: /health gave '$r'"
r=$(http POST "$URL/v1/completions" '{"prompt":[1,2],"max_tokens":2}')
case "$r" in 503\|1\|*'"error"'*'loading'*) ;; *) fail "loading: completions gave '$r'" ;; esac
r=$(http GET "$URL/v1/models")
case "$r" in 503\|1\|*'"error"'*) ;; *) fail "loading: /v1/models gave '$r'" ;; esac
echo "ok: while loading /health and the API answer 503 (Retry-After 1)"
kc_wait_ready "$URL"
r=$(http GET "$URL/v1/models")
case "$r" in 200\|*'"id":"tiny"'*) ;; *) fail "after loading: /v1/models gave '$r'" ;; esac
r=$(http POST "$URL/v1/completions" '{"model":"tiny","prompt":[1,2],"max_tokens":2}')
case "$r" in 200\|*) ;; *) fail "after loading: completion gave '$r'" ;; esac
grep -q "models: --model: base $GQA, aux $GQA, predictor $TMP/pred.safetensors" "$TMP/load.err" ||
    fail "the resolved model paths are not logged: $(grep models: "$TMP/load.err")"
grep -q "serving on http://127.0.0.1:$PORT" "$TMP/load.err" || fail "no ready line with the URL"
kill -TERM "$SRV"
wait_exit 30
rc=$RC
[ "$rc" = 0 ] || fail "after loading: SIGTERM exit $rc"
echo "ok: ready after loading, /v1/models and a completion answer 200"

# 3. SIGTERM while loading: exit 0 at once.
start_bg "$TMP/term" "${PAIR[@]}" --port 0 --debug-load-delay-ms 20000
[ -n "$(wait_port "$TMP/term")" ] || fail "term: no port printed"
t0=$(date +%s%N)
kill -TERM "$SRV"
wait_exit 5
rc=$RC
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$rc" = 0 ] || fail "SIGTERM while loading: exit $rc ($(tail -n 2 "$TMP/term.err"))"
echo "ok: SIGTERM while loading exits 0 in $ms ms"

# 4. config.json with fewer layers than the weights: the unused layer is named.
mkdir -p "$TMP/short"
cp "$GQA/model.safetensors" "$TMP/short/"
$PY -c 'import json,sys; c=json.load(open(sys.argv[1])); c["num_hidden_layers"]=1
json.dump(c, open(sys.argv[2], "w"))' "$GQA/config.json" "$TMP/short/config.json"
refuse short_config "model.layers.1.|is not used|num_hidden_layers = 1" \
    --model "$TMP/short" --tokenizer "$TOK"

# 5. A predictor for a 3-layer base: refused naming the file and a tensor; as --model pair...
refuse wrong_pred "$TMP/wrong.safetensors|'k.2.weight'|3 base layers" \
    --model "$GQA" --aux "$GQA" --predictor "$TMP/wrong.safetensors" --tokenizer "$TOK"
# ... and as --predictor over a bundle (the override is applied, not ignored).
printf '{"name": "gqa-pair", "base": "%s", "aux": "%s", "predictor": "%s"}\n' \
    "$GQA" "$GQA" "$TMP/pred.safetensors" >"$TMP/bundle.json"
refuse bundle_wrong_pred "$TMP/wrong.safetensors|'k.2.weight'" \
    --bundle "$TMP/bundle.json" --predictor "$TMP/wrong.safetensors" --tokenizer "$TOK"

# 6. --aux over a bundle: used (logged as the override), model id from the bundle's name.
cp -r "$GQA" "$TMP/aux_copy"
start_bg "$TMP/aux" --bundle "$TMP/bundle.json" --aux "$TMP/aux_copy" --tokenizer "$TOK" --port 0
PORT=$(wait_port "$TMP/aux")
[ -n "$PORT" ] || fail "aux override: no port printed ($(tail -n 2 "$TMP/aux.err"))"
kc_wait_ready "http://127.0.0.1:$PORT"
grep -q "aux $TMP/aux_copy (--aux)" "$TMP/aux.err" || fail "aux override not used: $(grep models: "$TMP/aux.err")"
r=$(http GET "http://127.0.0.1:$PORT/v1/models")
case "$r" in 200\|*'"id":"gqa-pair"'*) ;; *) fail "bundle name: /v1/models gave '$r'" ;; esac
kill -TERM "$SRV"
wait_exit 30
rc=$RC
[ "$rc" = 0 ] || fail "aux override: SIGTERM exit $rc"
echo "ok: --aux replaces the bundle's aux; the model id is the bundle's name (gqa-pair)"

# 7. A tokenizer with 4096 ids for a model of 128: refused at start-up.
refuse big_tokenizer "does not fit model|outside the model's vocabulary of 128" \
    --model "$GQA" --tokenizer models/tiny/base
echo "PASS"
