#!/usr/bin/env bash
# The run command: installs what is missing, builds the release preset, and runs kvcast on
# the embedded default model. Until the HTTP server lands this runs `kvcast generate` on the
# embedded base model (or, before that model is trained, on a small golden test model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
bin=build/release/tools/kvcast
if [ -f models/tiny/base/config.json ]; then
  model=models/tiny/base
  if [ -f "$model/tokenizer.json" ] && "$bin" generate --help 2>/dev/null | grep -q -- '--prompt '; then
    exec "$bin" generate --model "$model" --prompt "${KVCAST_PROMPT:-It is a truth universally acknowledged}" \
      --max-tokens "${KVCAST_MAX_TOKENS:-48}" --temperature "${KVCAST_TEMPERATURE:-0.8}" --seed 1 "$@"
  fi
else
  model=tests/golden/llama_gqa
fi
exec "$bin" generate --model "$model" --prompt-ids 1,2,3,4,5 --max-tokens 16 "$@"
