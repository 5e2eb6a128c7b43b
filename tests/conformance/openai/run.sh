#!/usr/bin/env bash
# OpenAI SDK conformance: the official `openai` npm package (pinned in package-lock.json)
# against a real `kvcast serve` (see run.mjs).
# usage: tests/conformance/openai/run.sh /path/to/kvcast
# Installs the pinned packages when node_modules is missing: offline from the npm cache first,
# then from the registry. Fails loudly (never skips) when node or npm is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kvcast="${1:?usage: run.sh /path/to/kvcast}"
. "$here/../npm_lib.sh"
kc_npm_ready "openai conformance" "$here" node_modules/openai/package.json
cd "$here"
exec node run.mjs "$kvcast" "$(cd "$here/../../.." && pwd)"
