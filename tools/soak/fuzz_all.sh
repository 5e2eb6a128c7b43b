#!/usr/bin/env bash
# fuzz_all.sh — run every libFuzzer target of the `fuzz` preset for SECONDS each and tabulate
# execs, coverage and findings (docs/reliability.md, "Fuzzing").
#
#   bash tools/soak/fuzz_all.sh 3600              # all targets, 1 h each, 2 at a time
#   bash tools/soak/fuzz_all.sh 60 --jobs 1 fuzz_completion_request
#
# Builds the fuzz preset (clang-14) first. Each target runs with the same options as its ctest
# (tests/fuzz.cmake): its dictionary, its -max_len, the seed corpus tests/fuzz/corpus/<target>
# (read-only) and the working corpus build/fuzz/fuzz-corpus/<target> (grows across runs).
# Logs: build/fuzz/logs/<target>.log; crash reproducers: build/fuzz/fuzz-artifacts/;
# the table: build/fuzz/logs/summary.md. Exit 1 when a target found something.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs="${1:-}"
case "$secs" in '' | *[!0-9]*) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac
shift
jobs=2
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --jobs) jobs="${2:?}"; shift ;;
    *) targets+=("$1") ;;
    esac
    shift
done

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${KC_FUZZ_BUILD_JOBS:-2}" >/dev/null
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^ *kc_add_fuzz_target(\([a-z_0-9]*\) .*/\1/p' tests/fuzz.cmake)
fi
mkdir -p build/fuzz/logs build/fuzz/fuzz-artifacts
touch build/fuzz/logs/.start # artifacts newer than this are this run's findings

run_one() {
    local t="$1" max_len dict=()
    max_len=$(sed -n "s/^ *kc_add_fuzz_target($t \([0-9]*\).*/\1/p" tests/fuzz.cmake)
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    mkdir -p "build/fuzz/fuzz-corpus/$t"
    local seeds=()
    [ -d "tests/fuzz/corpus/$t" ] && seeds=("tests/fuzz/corpus/$t")
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
        "build/fuzz/tests/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len="${max_len:-65536}" -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="build/fuzz/fuzz-artifacts/$t-" \
        "build/fuzz/fuzz-corpus/$t" "${seeds[@]}" >"build/fuzz/logs/$t.log" 2>&1
    echo $? >"build/fuzz/logs/$t.rc"
}

echo "fuzz_all: ${targets[*]}: ${secs} s each, $jobs at a time" >&2
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$t" &
done
wait || true

found=0
{
    echo "| target | seconds | execs | execs/s | cov | ft | corpus | peak RSS MB | findings |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for t in "${targets[@]}"; do
        log="build/fuzz/logs/$t.log"
        stat() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$log" | tail -n1; }
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
        cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
        ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
        corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$done_line")
        rc=$(cat "build/fuzz/logs/$t.rc" 2>/dev/null || echo "?")
        n_art=$(find build/fuzz/fuzz-artifacts -name "$t-*" -newer build/fuzz/logs/.start \
            2>/dev/null | wc -l)
        finding="none"
        if [ "$rc" != 0 ] || [ "$n_art" -gt 0 ]; then
            finding="exit $rc, $n_art artifact(s): see $log"
            found=1
        fi
        echo "| $t | $secs | $(stat number_of_executed_units) | $(stat average_exec_per_sec) |" \
            "${cov:-?} | ${ft:-?} | ${corp:-?} | $(stat peak_rss_mb) | $finding |"
    done
} | tee build/fuzz/logs/summary.md
exit $found
