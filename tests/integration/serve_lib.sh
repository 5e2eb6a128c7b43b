# serve_lib.sh — shared by the shell integration tests that need a running `kvcast serve`:
# a temp folder, cleanup on exit, failure with the server's log, and a server on the golden
# llama_gqa model paired with itself through an identity predictor (so predict mode runs),
# started on 127.0.0.1 --port 0. Source it, then call kc_start_pair_server EXTRA_ARGS...;
# it sets SRV (pid) and URL once /health answers 200 (kc_wait_ready URL does that alone). Needs $KVCAST and the source root as the working directory.
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/kc_it_XXXXXX)
SRV=""
kc_cleanup() {
    if [ -n "$SRV" ] && kill -0 "$SRV" 2>/dev/null; then
        kill "$SRV" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SRV" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SRV" 2>/dev/null || true
    fi
    [ -z "$SRV" ] || wait "$SRV" 2>/dev/null || true
    rm -rf "$TMP"
}
trap kc_cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    [ -e "$TMP/server.log" ] && tail -n 20 "$TMP/server.log" >&2
    exit 1
}
kc_start_pair_server() {
    $PY tools/bench/make_pair.py --predictor-only --identity --base-dir tests/golden/llama_gqa \
        --aux-dir tests/golden/llama_gqa --out "$TMP/predictor.safetensors" >/dev/null ||
        fail "make_pair.py could not write the predictor"
    timeout 300 "$KVCAST" serve --model tests/golden/llama_gqa --aux tests/golden/llama_gqa \
        --predictor "$TMP/predictor.safetensors" --tokenizer tests/fixtures/tiny_tokenizer \
        --host 127.0.0.1 --port 0 --no-access-log --served-model-name tiny "$@" \
        >"$TMP/server.out" 2>"$TMP/server.log" &
    SRV=$!
    local port=""
    for _ in $(seq 300); do
        port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/server.out" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$SRV" 2>/dev/null || fail "the server exited"
        sleep 0.1
    done
    [ -n "$port" ] || fail "the server did not print its port"
    URL=http://127.0.0.1:$port
    kc_wait_ready "$URL"
}
# kc_wait_ready URL: the port is bound before the models load; /health answers 503
# {"status":"loading"} until they are in. Waits up to 60 s for 200.
kc_wait_ready() {
    $PY - "$1" <<'PYEOF' || fail "/health did not turn 200 within 60 s"
import sys, time, urllib.request, urllib.error
t0 = time.time()
while time.time() - t0 < 60:
    try:
        if urllib.request.urlopen(sys.argv[1] + "/health", timeout=5).status == 200:
            sys.exit(0)
    except urllib.error.HTTPError as e:
        if e.code != 503:
            sys.exit(1)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(1)
PYEOF
}
