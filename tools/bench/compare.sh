#!/usr/bin/env bash
# compare.sh — serving benchmark of KV Prediction through the whole HTTP stack. Starts
# `kvcast serve` on a free loopback port with the given pair and drives it with `kvcast bench
# serve` in prefill_mode full, predict and auto; optionally drives a peer (any OpenAI-style
# /v1/completions server: llama-server, vLLM, tools/bench/peer/llama_peer.mjs) with the very
# same prompts. For every system:
#   1. TTFT vs prompt length, one request at a time (128 .. 8192 tokens; fewer requests per
#      length as prompts grow; lengths beyond a server's context are skipped with a note);
#   2. capacity: closed loop, --cap-concurrency requests in flight, throughput in req/s;
#   3. open-loop (Poisson) rates of --rate-factors x that system's capacity (0.25x .. 1.5x),
#      with SLO attainment and goodput; "sustainable goodput" = the highest rate at which
#      >= 90% of requests meet both the TTFT and the TPOT target (DistServe).
# Writes OUT/serving.md, OUT/serving.json and the plots ttft_vs_prompt_len.png,
# goodput_vs_rate.png, attainment_vs_rate.png (gnuplot), raw runs under --work.
#
# Usage (see tools/bench/README.md):
#   bash tools/bench/compare.sh --bundle models/tiny/kvcast-bundle.json [--out DIR]
#   bash tools/bench/compare.sh --model BASE --aux AUX --predictor P [--tokenizer T]
#        [--peer-url URL [--peer-name NAME] | --peer-gguf FILE.gguf]
# Options:
#   --kvcast BIN        kvcast binary (default $KVCAST or build/release/tools/kvcast)
#   --lens "L ..."      prompt lengths of the TTFT sweep
#                       (default "128 256 512 1024 2048 4096 8192")
#   --len-prompts N     requests per (length, system) up to 1024 tokens; longer prompts get
#                       N*1024/L, at least --len-min (defaults 8 and 2)
#   --len-min N
#   --rate-len P[:S]    prompt length of capacity and rate runs, uniform in [P-S, P+S]
#                       (default 1024:256)
#   --cap-concurrency C requests in flight in the capacity run (default 4)
#   --cap-prompts N     requests of the capacity run (default 12)
#   --rate-factors "F ..."  rates as multiples of each system's capacity
#                       (default "0.25 0.5 0.75 1 1.25 1.5")
#   --rate-seconds T    requests per rate point = rate x T, clamped to
#   --rate-min N, --rate-max N   [N, M] (defaults 60 s, 10, 40)
#   --max-tokens M      tokens generated per request (default 64)
#   --ttft-slo MS|auto  TTFT target, also the server's --ttft-slo-ms (auto's target).
#                       auto (default): 2x the reference's idle TTFT at the rate-sweep mean
#                       prompt length (reference: the peer when there is one, else kvcast full)
#   --tpot-slo MS|auto  TPOT target; auto (default): 3x the reference's idle TPOT, >= 10 ms
#   --peer-url URL      an OpenAI-compatible server to compare against (already running)
#   --peer-name NAME    its name in tables and plots (default "peer")
#   --peer-gguf FILE    start tools/bench/peer/llama_peer.mjs (node-llama-cpp) on FILE instead
#                       (needs bash tools/bench/peer/setup.sh); name "node-llama-cpp"
#   --peer-threads N    its threads (default 2); --peer-arg ARG: one more peer argument
#   --vocab-size N      synthetic prompt ids in [0, N) (default: the base's vocab_size)
#   --server-arg ARG    one more `kvcast serve` argument (repeatable)
#   --modes "M ..."     kvcast modes to run (default "full predict auto")
#   --out DIR           serving.md, serving.json and the PNGs (default docs/bench)
#   --work DIR          raw per-run JSON and logs (default build/bench/compare-<time>)
#   --quick             a smoke run: lens "128 512", 4 requests per length, rate-len 512:128,
#                       32 tokens, 6 capacity requests, factors "0.5 1.5", 6..8 requests per
#                       rate (options after --quick override it)
# Needs gnuplot (Debian gnuplot-nox), curl and /usr/bin/python3. Every run is bounded: the
# servers are stopped on exit, and each request has a timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."

KVCAST=${KVCAST:-build/release/tools/kvcast}
LENS="128 256 512 1024 2048 4096 8192"
LEN_PROMPTS=8
LEN_MIN=2
RATE_LEN="1024:256"
CAP_CONC=4
CAP_PROMPTS=12
FACTORS="0.25 0.5 0.75 1 1.25 1.5"
RATE_SECONDS=60
RATE_MIN=10
RATE_MAX=40
MAX_TOKENS=64
TTFT_SLO=auto
TPOT_SLO=auto
VOCAB=""
OUT=docs/bench
WORK=""
MODEL_ARGS=()
SERVER_ARGS=()
MODEL_DESC=""
BASE_DIR=""
AUX_DIR=""
PEER_URL=""
PEER_NAME=""
PEER_GGUF=""
PEER_THREADS=2
PEER_ARGS=()
MODES="full predict auto"

ORIG_ARGS=("$@")
# shellcheck source=tools/bench/lib.sh
. tools/bench/lib.sh # quote_args, die, need

while [ $# -gt 0 ]; do
    case $1 in
    --bundle) need "$@"; MODEL_ARGS+=(--bundle "$2"); MODEL_DESC="${MODEL_DESC:+$MODEL_DESC, }bundle $2"; shift 2 ;;
    --model) need "$@"; MODEL_ARGS+=(--model "$2"); BASE_DIR=$2; MODEL_DESC="${MODEL_DESC:+$MODEL_DESC, }base $2"; shift 2 ;;
    --aux) need "$@"; MODEL_ARGS+=(--aux "$2"); AUX_DIR=$2; MODEL_DESC="${MODEL_DESC:+$MODEL_DESC, }aux $2"; shift 2 ;;
    --predictor) need "$@"; MODEL_ARGS+=(--predictor "$2"); MODEL_DESC="${MODEL_DESC:+$MODEL_DESC, }predictor $2"; shift 2 ;;
    --tokenizer) need "$@"; MODEL_ARGS+=(--tokenizer "$2"); shift 2 ;;
    --kvcast) need "$@"; KVCAST=$2; shift 2 ;;
    --lens) need "$@"; LENS=$2; shift 2 ;;
    --len-prompts) need "$@"; LEN_PROMPTS=$2; shift 2 ;;
    --len-min) need "$@"; LEN_MIN=$2; shift 2 ;;
    --rate-len) need "$@"; RATE_LEN=$2; shift 2 ;;
    --cap-concurrency) need "$@"; CAP_CONC=$2; shift 2 ;;
    --cap-prompts) need "$@"; CAP_PROMPTS=$2; shift 2 ;;
    --rate-factors) need "$@"; FACTORS=$2; shift 2 ;;
    --rate-seconds) need "$@"; RATE_SECONDS=$2; shift 2 ;;
    --rate-min) need "$@"; RATE_MIN=$2; shift 2 ;;
    --rate-max) need "$@"; RATE_MAX=$2; shift 2 ;;
    --max-tokens) need "$@"; MAX_TOKENS=$2; shift 2 ;;
    --ttft-slo) need "$@"; TTFT_SLO=$2; shift 2 ;;
    --tpot-slo) need "$@"; TPOT_SLO=$2; shift 2 ;;
    --peer-url) need "$@"; PEER_URL=${2%/}; shift 2 ;;
    --peer-name) need "$@"; PEER_NAME=$2; shift 2 ;;
    --peer-gguf) need "$@"; PEER_GGUF=$2; shift 2 ;;
    --peer-threads) need "$@"; PEER_THREADS=$2; shift 2 ;;
    --peer-arg) need "$@"; PEER_ARGS+=("$2"); shift 2 ;;
    --vocab-size) need "$@"; VOCAB=$2; shift 2 ;;
    --server-arg) need "$@"; SERVER_ARGS+=("$2"); shift 2 ;;
    --modes) need "$@"; MODES=$2; shift 2 ;;
    --out) need "$@"; OUT=$2; shift 2 ;;
    --work) need "$@"; WORK=$2; shift 2 ;;
    --quick) LENS="128 512"; LEN_PROMPTS=4; CAP_PROMPTS=6; FACTORS="0.5 1.5"; RATE_MIN=6
             RATE_MAX=8; RATE_SECONDS=10; RATE_LEN="512:128"; MAX_TOKENS=32; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (--help)" ;;
    esac
done
[ ${#MODEL_ARGS[@]} -gt 0 ] || die "give --bundle B, or --model BASE --aux AUX --predictor P"
[ -x "$KVCAST" ] || die "no kvcast binary at $KVCAST (cmake --preset release && cmake --build --preset release, or --kvcast BIN)"
command -v gnuplot >/dev/null || die "gnuplot is missing (apt-get install gnuplot-nox, or bash deploy/install-deps.sh)"
command -v curl >/dev/null || die "curl is missing"
[ -z "$PEER_URL" ] || [ -z "$PEER_GGUF" ] || die "give --peer-url or --peer-gguf, not both"
if [ -n "$PEER_GGUF" ]; then
    [ -e "$PEER_GGUF" ] || die "no GGUF at $PEER_GGUF (tools/bench/hf_to_gguf.py writes one)"
    command -v node >/dev/null || die "--peer-gguf needs node (>= 20)"
    [ -d tools/bench/peer/node_modules/node-llama-cpp ] || die "node-llama-cpp is not installed: bash tools/bench/peer/setup.sh"
    PEER_NAME=${PEER_NAME:-node-llama-cpp}
fi
PEER_NAME=${PEER_NAME:-peer}
[[ $PEER_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--peer-name: letters, digits, . _ - only"
case $PEER_NAME in full|predict|auto|calib*) die "--peer-name must differ from kvcast's modes" ;; esac
for M in $MODES; do
    case $M in full|predict|auto) ;; *) die "--modes: full, predict, auto" ;; esac
done
PY=/usr/bin/python3

# The models' folders (for the vocabulary and the report): --model/--aux, or the bundle's.
bundle_path() { # bundle key
    $PY -c 'import json,os,sys; b=sys.argv[1]; d=json.load(open(b))[sys.argv[2]]; print(d if os.path.isabs(d) else os.path.join(os.path.dirname(b), d))' "$1" "$2"
}
for ((i = 0; i < ${#MODEL_ARGS[@]}; i++)); do
    if [ "${MODEL_ARGS[$i]}" = --bundle ]; then
        b=${MODEL_ARGS[$((i + 1))]}
        [ -e "$b" ] || die "no bundle at $b"
        [ -n "$BASE_DIR" ] || BASE_DIR=$(bundle_path "$b" base)
        [ -n "$AUX_DIR" ] || AUX_DIR=$(bundle_path "$b" aux)
    fi
done
if [ -z "$VOCAB" ]; then
    VOCAB=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$BASE_DIR/config.json")
fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=${WORK:-build/bench/compare-$STAMP}
mkdir -p "$WORK" "$OUT"

# ---- servers ----
SRV=""
PORT=""
PEER_PID=""
SERVE_CMD=()
PEER_CMD=()
stop_pid() { # pid
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$1" 2>/dev/null || true
    fi
    [ -z "$1" ] || wait "$1" 2>/dev/null || true
}
stop_server() { stop_pid "$SRV"; SRV=""; }
stop_peer() { stop_pid "$PEER_PID"; PEER_PID=""; }
trap 'stop_server; stop_peer' EXIT
wait_port() { # pid out_file log_file what -> PORT
    PORT=""
    for _ in $(seq 1200); do
        PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$2" | head -n1)
        [ -n "$PORT" ] && break
        kill -0 "$1" 2>/dev/null || { cat "$3" >&2; die "$4 exited"; }
        sleep 0.1
    done
    [ -n "$PORT" ] || die "$4 did not print its port within 120 s (see $3)"
}
wait_health() { # url pid log what
    local code=""
    for _ in $(seq 1200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/health" || true)
        [ "$code" = 200 ] && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "$4 exited"; }
        sleep 0.1
    done
    die "$4: /health not 200 within 120 s (see $3)"
}
start_server() { # ttft_slo_ms
    # Every load-generator connection comes from 127.0.0.1: the default per-address limit (32)
    # would refuse connections at high rates and count them as failed requests.
    SERVE_CMD=("$KVCAST" serve "${MODEL_ARGS[@]}" --host 127.0.0.1 --port 0 --no-access-log
               --log-level warn --ttft-slo-ms "$1" --max-connections-per-ip 0 "${SERVER_ARGS[@]}")
    "${SERVE_CMD[@]}" >"$WORK/server.out" 2>>"$WORK/server.log" &
    SRV=$!
    wait_port "$SRV" "$WORK/server.out" "$WORK/server.log" "kvcast serve"
    # The port is bound before the models load: /health is 503 "loading" until they are in.
    wait_health "http://127.0.0.1:$PORT" "$SRV" "$WORK/server.log" "kvcast serve"
    KV_URL="http://127.0.0.1:$PORT"
    echo "compare.sh: kvcast on $KV_URL (ttft-slo-ms $1; log $WORK/server.log)"
}
start_peer() {
    PEER_CMD=(node tools/bench/peer/llama_peer.mjs --model "$PEER_GGUF" --host 127.0.0.1 --port 0
              --threads "$PEER_THREADS" "${PEER_ARGS[@]}")
    "${PEER_CMD[@]}" >"$WORK/peer.out" 2>>"$WORK/peer.log" &
    PEER_PID=$!
    wait_port "$PEER_PID" "$WORK/peer.out" "$WORK/peer.log" "the peer"
    PEER_URL="http://127.0.0.1:$PORT"
    wait_health "$PEER_URL" "$PEER_PID" "$WORK/peer.log" "the peer"
    echo "compare.sh: peer $PEER_NAME on $PEER_URL ($(head -n1 "$WORK/peer.out"))"
}
# The server's context (max_model_len of GET /v1/models; 0 when not reported).
max_len_of() { # url
    curl -s --max-time 10 "$1/v1/models" | $PY -c 'import json,sys
try: print(int(json.load(sys.stdin)["data"][0].get("max_model_len") or 0))
except Exception: print(0)'
}

# A model without a tokenizer streams no text: ask for logprobs so every token is a chunk.
HAS_TOK=0
[ -e "$BASE_DIR/tokenizer.json" ] && HAS_TOK=1
for a in "${MODEL_ARGS[@]}"; do [ "$a" = --tokenizer ] && HAS_TOK=1; done
EXTRA=()
[ $HAS_TOK = 1 ] || EXTRA=(--logprobs 0)

# Systems: kvcast's modes, then the peer. Each is (url, extra bench args).
SYSTEMS=$MODES
[ -z "$PEER_URL$PEER_GGUF" ] || SYSTEMS="$SYSTEMS $PEER_NAME"
[ -z "$PEER_GGUF" ] || start_peer
bench_of() { # system -> BENCH array
    local url=$KV_URL extra=(--prefill-mode "$1" "${EXTRA[@]}")
    if [ "$1" = "$PEER_NAME" ] && [ -n "$PEER_URL" ] && ! [[ " $MODES " == *" $1 "* ]]; then
        # The peer's token text may be empty (byte tokens): logprobs make every token a chunk.
        url=$PEER_URL
        extra=(--logprobs 0)
    fi
    BENCH=("$KVCAST" bench serve --url "$url" --dataset synthetic --vocab-size "$VOCAB"
           --max-tokens "$MAX_TOKENS" --no-progress --timeout-s 900 "${extra[@]}")
}

: >"$WORK/commands.txt"
: >"$WORK/notes.txt"
run_bench() { # name system args...
    local name=$1 sys=$2
    shift 2
    bench_of "$sys"
    echo "${BENCH[*]} $* --json $name.json" >>"$WORK/commands.txt"
    echo "--- $name"
    "${BENCH[@]}" "$@" --json "$WORK/$name.json" >"$WORK/$name.txt" 2>"$WORK/$name.err" || {
        cat "$WORK/$name.err" >&2
        echo "compare.sh: $name failed (no request completed)" >&2
        echo "$name: failed (no request completed; see $WORK/$name.err)" >>"$WORK/notes.txt"
    }
    grep -E "^(Successful|Failed|Request (throughput|goodput)|Median TTFT|Median TPOT)" "$WORK/$name.txt" | sed 's/^/    /' || true
}
json_field() { # file key
    $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

start_server "${TTFT_SLO/auto/1000}"
# Calibration: the idle TTFT and TPOT of the reference system (the peer, as the issue's SLOs
# are defined against llama-server; else kvcast full) at the rate sweep's mean prompt length
# set the targets: TTFT 2x (met when idle, missed once requests queue), TPOT 3x (decode is not
# what KV Prediction changes; the target only catches starvation).
c_ttft=""
c_tpot=""
REF=full
[ -z "$PEER_URL" ] || REF=$PEER_NAME
if [ "$TTFT_SLO" = auto ] || [ "$TPOT_SLO" = auto ]; then
    run_bench "calib-$REF" "$REF" --prompt-len "${RATE_LEN%%:*}" --num-prompts 4 \
        --request-rate inf --max-concurrency 1 --warmup 1 --seed 3
    [ -e "$WORK/calib-$REF.json" ] || die "calibration failed"
    c_ttft=$(json_field "$WORK/calib-$REF.json" median_ttft_ms)
    c_tpot=$(json_field "$WORK/calib-$REF.json" median_tpot_ms)
    if [ "$TTFT_SLO" = auto ]; then
        TTFT_SLO=$($PY -c 'import math,sys; print(int(math.ceil(2 * float(sys.argv[1]) / 10) * 10))' "$c_ttft")
        stop_server
        start_server "$TTFT_SLO"
    fi
    if [ "$TPOT_SLO" = auto ]; then
        TPOT_SLO=$($PY -c 'import math,sys; print(max(10, int(math.ceil(3 * float(sys.argv[1])))))' "$c_tpot")
    fi
    echo "compare.sh: targets TTFT <= $TTFT_SLO ms, TPOT <= $TPOT_SLO ms ($REF idle: $c_ttft ms, $c_tpot ms)"
fi

KV_MAX=$(max_len_of "$KV_URL")
PEER_MAX=0
[ -z "$PEER_URL" ] || PEER_MAX=$(max_len_of "$PEER_URL")
max_of() { if [ "$1" = "$PEER_NAME" ] && [ -n "$PEER_URL" ]; then echo "$PEER_MAX"; else echo "$KV_MAX"; fi; }

# Sweep 1: TTFT vs prompt length, one request at a time (no queueing: the prefill itself). The
# same prompts for every system (same seed); fewer requests for long prompts; one warm-up (its
# own prompt) at the first length only.
for S in $SYSTEMS; do
    first=1
    for L in $LENS; do
        mx=$(max_of "$S")
        if [ "$mx" -gt 0 ] && [ $((L + MAX_TOKENS)) -gt "$mx" ]; then
            echo "len-$L-$S: skipped: $L + $MAX_TOKENS tokens exceed the context ($mx)" | tee -a "$WORK/notes.txt"
            continue
        fi
        n=$(( LEN_PROMPTS * 1024 / L ))
        [ $n -le "$LEN_PROMPTS" ] || n=$LEN_PROMPTS
        [ $n -ge "$LEN_MIN" ] || n=$LEN_MIN
        run_bench "len-$L-$S" "$S" --prompt-len "$L" --num-prompts "$n" --request-rate inf \
            --max-concurrency 1 --warmup "$first" --seed 1
        first=0
    done
done

# Sweep 2: capacity (closed loop), then open-loop rates around it, per system.
RL=${RATE_LEN%%:*}
RS=0
[[ $RATE_LEN == *:* ]] && RS=${RATE_LEN#*:}
for S in $SYSTEMS; do
    mx=$(max_of "$S")
    if [ "$mx" -gt 0 ] && [ $((RL + RS + MAX_TOKENS)) -gt "$mx" ]; then
        echo "rate sweep of $S: skipped: prompts up to $((RL + RS)) + $MAX_TOKENS tokens exceed the context ($mx)" | tee -a "$WORK/notes.txt"
        continue
    fi
    run_bench "cap-$S" "$S" --prompt-len "$RATE_LEN" --num-prompts "$CAP_PROMPTS" \
        --request-rate inf --max-concurrency "$CAP_CONC" --warmup 1 --seed 4
    [ -e "$WORK/cap-$S.json" ] || continue
    cap=$(json_field "$WORK/cap-$S.json" request_throughput)
    echo "compare.sh: capacity of $S: $cap req/s (closed loop, $CAP_CONC in flight)"
    for F in $FACTORS; do
        read -r R N < <($PY -c 'import sys
c, f, t, lo, hi = map(float, sys.argv[1:6])
r = float("%.3g" % (c * f))
print(r, int(max(lo, min(hi, round(r * t)))))' "$cap" "$F" "$RATE_SECONDS" "$RATE_MIN" "$RATE_MAX")
        # Seed 2 for every system and factor: the same prompts; arrivals scale with the rate.
        run_bench "rate-$F-$S" "$S" --prompt-len "$RATE_LEN" --num-prompts "$N" \
            --request-rate "$R" --warmup 0 --seed 2 --goodput "ttft:$TTFT_SLO" "tpot:$TPOT_SLO"
    done
done
stop_server
stop_peer
trap - EXIT

# ---- report ----
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
    echo "cpus=$(nproc) online ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core)"
    echo "flags=$(grep -o -w -E 'avx512f|avx512_bf16|amx_bf16|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "mem=$(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel=$(uname -sr)"
    echo "invocation=$(quote_args bash tools/bench/compare.sh "${ORIG_ARGS[@]}")"
    echo "serve=${SERVE_CMD[*]}"
    echo "peer_cmd=${PEER_CMD[*]}"
    echo "peer_url=$PEER_URL"
    echo "peer_name=$PEER_NAME"
    echo "peer_banner=$( [ -e "$WORK/peer.out" ] && head -n1 "$WORK/peer.out" || true)"
    echo "systems=$SYSTEMS"
    echo "modes=$MODES"
    echo "lens=$LENS"
    echo "rate_len=$RATE_LEN"
    echo "len_prompts=$LEN_PROMPTS"
    echo "len_min=$LEN_MIN"
    echo "cap_concurrency=$CAP_CONC"
    echo "cap_prompts=$CAP_PROMPTS"
    echo "factors=$FACTORS"
    echo "rate_seconds=$RATE_SECONDS"
    echo "rate_min=$RATE_MIN"
    echo "rate_max=$RATE_MAX"
    echo "max_tokens=$MAX_TOKENS"
    echo "ttft_slo=$TTFT_SLO"
    echo "tpot_slo=$TPOT_SLO"
    echo "calib_ref=$REF"
    echo "calib_ttft=$c_ttft"
    echo "calib_tpot=$c_tpot"
    echo "kv_max_len=$KV_MAX"
    echo "peer_max_len=$PEER_MAX"
    echo "models=$MODEL_DESC"
    echo "base_dir=$BASE_DIR"
    echo "aux_dir=$AUX_DIR"
} >"$WORK/env.txt"
$PY tools/bench/report.py --work "$WORK" --out "$OUT"
(cd "$OUT" && gnuplot serving.gp)
echo "compare.sh: wrote $OUT/serving.md, $OUT/serving.json, $OUT/ttft_vs_prompt_len.png, $OUT/goodput_vs_rate.png, $OUT/attainment_vs_rate.png"
