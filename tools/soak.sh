#!/usr/bin/env bash
# soak.sh — soak-and-fault run of `kvcast serve` (docs/reliability.md).
#
#   bash tools/soak.sh 30                 # build the release preset, 30 minutes of load
#   bash tools/soak.sh --smoke            # ~45 s, a quick check (ctest: soak_smoke, label slow)
#   bash tools/soak.sh 10 --asan          # build the ci preset (ASan + UBSan) and soak that
#   bash tools/soak.sh 5 --bin PATH       # soak an existing binary, no build
#   bash tools/soak.sh 5 -- --workers 24 --server-arg=--max-running=16
#                                         # anything after -- goes to tools/soak/soak.py
#
# Output: build/soak/<UTC time>/ (or --out DIR): samples.csv, requests.jsonl, summary.json,
# server.log. Exit status 0 pass, 1 a check failed, 2 usage/build/start-up error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

minutes=""
bin=""
preset="release"
smoke=0
out=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --smoke) smoke=1 ;;
    --asan) preset="ci" ;;
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --bin=*) bin="${1#--bin=}" ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --out=*) out="${1#--out=}" ;;
    --) shift; extra=("$@"); break ;;
    [0-9]*) minutes="$1" ;;
    *) echo "soak.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$minutes" ] && [ "$smoke" = 0 ]; then
    echo "soak.sh: give MINUTES (e.g. 30) or --smoke" >&2
    usage >&2
    exit 2
fi

if [ -z "$bin" ]; then
    echo "soak.sh: building the $preset preset" >&2
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset" -j "${KC_SOAK_JOBS:-$(nproc)}" --target kvcast >/dev/null
    bin="build/$preset/tools/kvcast"
fi
[ -x "$bin" ] || { echo "soak.sh: $bin is not an executable" >&2; exit 2; }

args=(--bin "$bin")
[ "$smoke" = 1 ] && args+=(--smoke)
[ -n "$minutes" ] && args+=(--minutes "$minutes")
[ -n "$out" ] && args+=(--out "$out")
exec /usr/bin/python3 tools/soak/soak.py "${args[@]}" "${extra[@]}"
