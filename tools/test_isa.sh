#!/usr/bin/env bash
# The engine's tests on the other kind of machine (issue 18): built for x86-64-v4 (AVX-512 as
# every Xeon since Skylake-SP and every Zen 4 has it, without avx512_bf16, so the kernels'
# non-bf16 paths are compiled) and run with oneDNN capped at AVX512_CORE (no VNNI, no bf16, no
# AMX: int8 on 7-bit weights, bf16 on oneDNN's emulation). The CI build (-march=native) covers
# the machine it runs on; this covers the portable image (deploy/Dockerfile) and the older
# Xeons. The same build then runs the tests of the kernels picked at run time
# (eng_bf16_dot: the avx512_bf16 attention of the bf16 prefill, compiled in every AVX-512 build)
# without the cap, as the image does on a CPU with avx512_bf16 (on one without, this repeats
# the capped run). Called by tools/test.sh; usable alone after deploy/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(test_engine_ops test_engine_int8 test_engine_model test_engine_bf16_prefill
       test_engine_kv_bf16 test_engine_kvp test_attention)
cmake --preset ci -B build/ci-v4 -DKC_MARCH=x86-64-v4 > /dev/null
cmake --build build/ci-v4 -j "$(nproc)" --target "${tests[@]}"
for t in "${tests[@]}"; do
    if ! ONEDNN_MAX_CPU_ISA=AVX512_CORE KC_SOURCE_DIR="$PWD" KC_BUILD_DIR="$PWD/build/ci-v4" \
        "build/ci-v4/tests/$t" > "build/ci-v4/$t.log" 2>&1; then
        cat "build/ci-v4/$t.log"
        echo "tools/test_isa.sh: $t failed (x86-64-v4 build, ONEDNN_MAX_CPU_ISA=AVX512_CORE)" >&2
        exit 1
    fi
    echo "tools/test_isa.sh: $t passed (x86-64-v4, ONEDNN_MAX_CPU_ISA=AVX512_CORE)"
done
for t in test_engine_bf16_prefill test_attention test_engine_kv_bf16; do
    if ! KC_SOURCE_DIR="$PWD" KC_BUILD_DIR="$PWD/build/ci-v4" \
        "build/ci-v4/tests/$t" > "build/ci-v4/$t.uncapped.log" 2>&1; then
        cat "build/ci-v4/$t.uncapped.log"
        echo "tools/test_isa.sh: $t failed (x86-64-v4 build, oneDNN uncapped)" >&2
        exit 1
    fi
    echo "tools/test_isa.sh: $t passed (x86-64-v4, oneDNN uncapped)"
done
