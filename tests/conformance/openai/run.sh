#!/usr/bin/env bash
# OpenAI SDK conformance: the official `openai` npm package (pinned in package-lock.json)
# against a real `kvcast serve` (see run.mjs).
# usage: tests/conformance/openai/run.sh /path/to/kvcast
# Installs the pinned packages when node_modules is missing: offline from the npm cache first,
# then from the registry. Fails loudly (never skips) when node or npm is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kvcast="${1:?usage: run.sh /path/to/kvcast}"
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "openai conformance: '$tool' is not installed (apt-get install nodejs npm)" >&2
    exit 1
  fi
done
cd "$here"
if [ ! -f node_modules/openai/package.json ]; then
  echo "openai conformance: installing pinned npm packages" >&2
  npm ci --offline --no-audit --no-fund >&2 || npm ci --no-audit --no-fund >&2
fi
exec node run.mjs "$kvcast" "$(cd "$here/../../.." && pwd)"
