#!/usr/bin/env bash
# The test command: installs what is missing, builds the CI preset (ASan+UBSan, -Werror)
# and runs every test that is not labelled slow/bench/fuzz, then the engine tests built for
# x86-64-v4 with oneDNN capped at AVX512_CORE (tools/test_isa.sh). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake --preset ci
cmake --build --preset ci -j "$(nproc)"
ctest --preset ci -j "$(nproc)"
bash tools/test_isa.sh
