#!/usr/bin/env bash
# setup.sh — installs the benchmark peer's one dependency, node-llama-cpp 3.21.1 (pinned in
# package-lock.json, with its prebuilt llama.cpp binaries), into tools/bench/peer/node_modules
# (gitignored). Optional: only `compare.sh --peer-gguf` and llama_peer.mjs need it; kvcast's
# build and tests do not. Needs node >= 20 and npm (Debian: apt-get install nodejs npm, or
# NodeSource) and the npm registry. About 730 MB on disk (the package pulls every prebuilt
# variant: CPU, CUDA, Vulkan, arm); nothing is compiled.
#   bash tools/bench/peer/setup.sh
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "setup.sh: node is missing (need >= 20)" >&2; exit 2; }
command -v npm >/dev/null || { echo "setup.sh: npm is missing" >&2; exit 2; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "setup.sh: node $(node --version) is too old (need >= 20)" >&2; exit 2; }
# --ignore-scripts: node-llama-cpp's postinstall would only try to download or build llama.cpp
# when no prebuilt binary fits; the check below says whether one does.
npm ci --ignore-scripts --no-audit --no-fund
node check.mjs
