#!/usr/bin/env bash
# compare.sh — serving benchmark of KV Prediction through the whole HTTP stack: starts
# `kvcast serve` on a free loopback port with the given pair, runs the same workloads with
# prefill_mode full, predict and auto (`kvcast bench serve`), and writes docs/bench/serving.md
# (date, machine, exact commands, tables with predict/full and auto/full ratios),
# docs/bench/serving.json (every run's summary) and two gnuplot plots:
#   ttft_vs_prompt_len.png  median TTFT vs prompt length, one request at a time
#   goodput_vs_rate.png     goodput (TTFT and TPOT targets) vs Poisson request rate
#
# Usage (see tools/bench/README.md):
#   bash tools/bench/compare.sh --bundle models/tiny/kvcast-bundle.json
#   bash tools/bench/compare.sh --model BASE --aux AUX --predictor P [--tokenizer T]
# Options:
#   --kvcast BIN        kvcast binary (default $KVCAST or build/release/tools/kvcast)
#   --lens "L ..."      prompt lengths of the TTFT sweep (default "128 256 512 1024")
#   --len-prompts N     requests per (length, mode) (default 8)
#   --rates "R ..."     request rates of the goodput sweep (default "0.5 1 2 4")
#   --rate-len P[:S]    prompt length of the goodput sweep, uniform in [P-S, P+S]
#                       (default 768:256)
#   --rate-prompts N    requests per (rate, mode) (default 40)
#   --max-tokens M      tokens generated per request (default 32)
#   --ttft-slo MS|auto  goodput TTFT target, also the server's --ttft-slo-ms (auto's target);
#                       auto (default): 2x the unloaded full-prefill TTFT of a P-token prompt,
#                       measured first
#   --tpot-slo MS|auto  goodput TPOT target; auto (default): 3x the unloaded TPOT, >= 10 ms
#   --vocab-size N      synthetic prompt ids in [0, N) (default: the base's vocab_size)
#   --server-arg ARG    one more `kvcast serve` argument (repeatable)
#   --out DIR           where serving.md, serving.json and the PNGs go (default docs/bench)
#   --work DIR          raw per-run JSON and logs (default build/bench/compare-<time>)
#   --quick             a smoke run: lens "128 512", rates "1 4", 4 and 12 requests
# Needs gnuplot (Debian gnuplot-nox) and /usr/bin/python3. Every run is bounded: the server is
# stopped on exit, and each bench run has a per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."

KVCAST=${KVCAST:-build/release/tools/kvcast}
LENS="128 256 512 1024"
LEN_PROMPTS=8
RATES="0.5 1 2 4"
RATE_LEN="768:256"
RATE_PROMPTS=40
MAX_TOKENS=32
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

ORIG_ARGS=("$@")
# Prints its arguments as one shell-quoted command line.
quote_args() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ [^A-Za-z0-9_./:=@,+-] ]]; then out+="'${a//\'/\'\\\'\'}' "; else out+="$a "; fi
    done
    echo "${out% }"
}
die() { echo "compare.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }

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
    --rates) need "$@"; RATES=$2; shift 2 ;;
    --rate-len) need "$@"; RATE_LEN=$2; shift 2 ;;
    --rate-prompts) need "$@"; RATE_PROMPTS=$2; shift 2 ;;
    --max-tokens) need "$@"; MAX_TOKENS=$2; shift 2 ;;
    --ttft-slo) need "$@"; TTFT_SLO=$2; shift 2 ;;
    --tpot-slo) need "$@"; TPOT_SLO=$2; shift 2 ;;
    --vocab-size) need "$@"; VOCAB=$2; shift 2 ;;
    --server-arg) need "$@"; SERVER_ARGS+=("$2"); shift 2 ;;
    --out) need "$@"; OUT=$2; shift 2 ;;
    --work) need "$@"; WORK=$2; shift 2 ;;
    --quick) LENS="128 512"; RATES="1 4"; LEN_PROMPTS=4; RATE_PROMPTS=12; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (--help)" ;;
    esac
done
[ ${#MODEL_ARGS[@]} -gt 0 ] || die "give --bundle B, or --model BASE --aux AUX --predictor P"
[ -x "$KVCAST" ] || die "no kvcast binary at $KVCAST (cmake --preset release && cmake --build --preset release, or --kvcast BIN)"
command -v gnuplot >/dev/null || die "gnuplot is missing (apt-get install gnuplot-nox, or bash deploy/install-deps.sh)"
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

# ---- server ----
SRV=""
PORT=""
SERVE_CMD=()
stop_server() {
    if [ -n "$SRV" ] && kill -0 "$SRV" 2>/dev/null; then
        kill "$SRV" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SRV" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SRV" 2>/dev/null || true
    fi
    [ -z "$SRV" ] || wait "$SRV" 2>/dev/null || true
    SRV=""
}
trap stop_server EXIT
start_server() { # ttft_slo_ms
    # Every load-generator connection comes from 127.0.0.1: the default per-address limit (32)
    # would refuse connections at high rates and count them as failed requests.
    SERVE_CMD=("$KVCAST" serve "${MODEL_ARGS[@]}" --host 127.0.0.1 --port 0 --no-access-log
               --log-level warn --ttft-slo-ms "$1" --max-connections-per-ip 0 "${SERVER_ARGS[@]}")
    "${SERVE_CMD[@]}" >"$WORK/server.out" 2>>"$WORK/server.log" &
    SRV=$!
    PORT=""
    for _ in $(seq 1200); do
        PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.out" | head -n1)
        [ -n "$PORT" ] && break
        kill -0 "$SRV" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited"; }
        sleep 0.1
    done
    [ -n "$PORT" ] || die "the server did not print its port within 120 s (see $WORK/server.log)"
    # The port is bound before the models load: /health is 503 "loading" until they are in.
    local code=""
    for _ in $(seq 1200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/health" || true)
        [ "$code" = 200 ] && break
        kill -0 "$SRV" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited"; }
        sleep 0.1
    done
    [ "$code" = 200 ] || die "/health not 200 within 120 s (see $WORK/server.log)"
    BENCH=("$KVCAST" bench serve --url "http://127.0.0.1:$PORT" --dataset synthetic
           --vocab-size "$VOCAB" --max-tokens "$MAX_TOKENS" --no-progress --timeout-s 300
           "${EXTRA[@]}")
    echo "compare.sh: server on http://127.0.0.1:$PORT (ttft-slo-ms $1; log $WORK/server.log)"
}

# A model without a tokenizer streams no text: ask for logprobs so every token is a chunk.
HAS_TOK=0
[ -e "$BASE_DIR/tokenizer.json" ] && HAS_TOK=1
for a in "${MODEL_ARGS[@]}"; do [ "$a" = --tokenizer ] && HAS_TOK=1; done
EXTRA=()
[ $HAS_TOK = 1 ] || EXTRA=(--logprobs 0)

: >"$WORK/commands.txt"
run_bench() { # name args...
    local name=$1
    shift
    echo "${BENCH[*]} $* --json $name.json" >>"$WORK/commands.txt"
    echo "--- $name"
    "${BENCH[@]}" "$@" --json "$WORK/$name.json" >"$WORK/$name.txt" 2>"$WORK/$name.err" || {
        cat "$WORK/$name.err" >&2
        echo "compare.sh: $name failed (no request completed)" >&2
    }
    grep -E "^(Successful|Failed|Request goodput|Median TTFT|Median TPOT|Requests prefilled)" "$WORK/$name.txt" | sed 's/^/    /' || true
}
json_field() { # file key
    $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# Calibration: the unloaded full-prefill TTFT and TPOT of a mean-length prompt of the rate
# sweep set the default targets: TTFT 2x (full meets it when idle, misses it once requests
# queue), TPOT 3x (decode is not what KV Prediction changes; the target only catches
# starvation).
c_ttft=""
c_tpot=""
start_server "${TTFT_SLO/auto/1000}"
if [ "$TTFT_SLO" = auto ] || [ "$TPOT_SLO" = auto ]; then
    run_bench calib-full --prefill-mode full --prompt-len "${RATE_LEN%%:*}" --num-prompts 6 \
        --request-rate inf --max-concurrency 1 --warmup 2 --seed 3
    [ -e "$WORK/calib-full.json" ] || die "calibration failed"
    c_ttft=$(json_field "$WORK/calib-full.json" median_ttft_ms)
    c_tpot=$(json_field "$WORK/calib-full.json" median_tpot_ms)
    if [ "$TTFT_SLO" = auto ]; then
        TTFT_SLO=$($PY -c 'import math,sys; print(int(math.ceil(2 * float(sys.argv[1]) / 10) * 10))' "$c_ttft")
        stop_server
        start_server "$TTFT_SLO"
    fi
    if [ "$TPOT_SLO" = auto ]; then
        TPOT_SLO=$($PY -c 'import math,sys; print(max(10, int(math.ceil(3 * float(sys.argv[1])))))' "$c_tpot")
    fi
    echo "compare.sh: targets TTFT <= $TTFT_SLO ms (full alone: $c_ttft ms), TPOT <= $TPOT_SLO ms (full alone: $c_tpot ms)"
fi

MODES="full predict auto"
# Sweep 1: TTFT vs prompt length, one request at a time (no queueing: the prefill itself).
for L in $LENS; do
    for M in $MODES; do
        run_bench "len-$L-$M" --prefill-mode "$M" --prompt-len "$L" --num-prompts "$LEN_PROMPTS" \
            --request-rate inf --max-concurrency 1 --warmup 2 --seed 1
    done
done
# Sweep 2: goodput vs request rate, open loop (Poisson), the same prompts for every mode.
for R in $RATES; do
    for M in $MODES; do
        run_bench "rate-$R-$M" --prefill-mode "$M" --prompt-len "$RATE_LEN" \
            --num-prompts "$RATE_PROMPTS" --request-rate "$R" --warmup 1 --seed 2 \
            --goodput "ttft:$TTFT_SLO" "tpot:$TPOT_SLO"
    done
done
stop_server
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
    echo "lens=$LENS"
    echo "rates=$RATES"
    echo "rate_len=$RATE_LEN"
    echo "len_prompts=$LEN_PROMPTS"
    echo "rate_prompts=$RATE_PROMPTS"
    echo "max_tokens=$MAX_TOKENS"
    echo "ttft_slo=$TTFT_SLO"
    echo "tpot_slo=$TPOT_SLO"
    echo "calib_ttft=$c_ttft"
    echo "calib_tpot=$c_tpot"
    echo "models=$MODEL_DESC"
    echo "base_dir=$BASE_DIR"
    echo "aux_dir=$AUX_DIR"
} >"$WORK/env.txt"
$PY tools/bench/report.py --work "$WORK" --out "$OUT"
(cd "$OUT" && gnuplot serving.gp)
echo "compare.sh: wrote $OUT/serving.md, $OUT/serving.json, $OUT/ttft_vs_prompt_len.png, $OUT/goodput_vs_rate.png"
