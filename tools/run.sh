#!/usr/bin/env bash
# The run command: installs what is missing, builds the release preset, and serves the
# embedded default model pair (models/tiny/kvcast-bundle.json) on http://127.0.0.1:8080.
# Extra arguments go to `kvcast serve` (e.g. --port 9000, --host 0.0.0.0 --api-key KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
exec build/release/tools/kvcast serve "$@"
