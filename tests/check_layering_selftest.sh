#!/usr/bin/env bash
# Self-test of check_layering.sh: the real tree passes, and each planted violation (one per
# rule, in a scratch copy of the sources) makes it fail and name the offending file.
# Usage: check_layering_selftest.sh <repo-root>
set -euo pipefail
root=$(cd "${1:-.}" && pwd)
script="$root/tests/check_layering.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bash "$script" "$root" >/dev/null || { echo "selftest: the tree itself fails the layering check"; exit 1; }

# Only the .c/.h files the check reads; each plant edits one file and restores it afterwards.
(cd "$root" && find common tokenizer engine scheduler server config tools -name '*.[ch]' \
   -exec cp --parents -t "$tmp" {} +)
fails=0
# plant FILE LINE: append LINE to FILE in the copy, expect a failure (rc 1) that names FILE.
plant() {
  echo "$2" >>"$tmp/$1"
  local out rc=0
  out=$(bash "$script" "$tmp") || rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qxF "  $1" <<<"$out"; then
    echo "selftest: '$2' in $1 was not caught (rc=$rc):"; echo "$out"; fails=1
  fi
  cp "$root/$1" "$tmp/$1"
}
plant tokenizer/tokenizer_decode.c '#include "engine/model.h"'
plant tokenizer/tokenizer.h '#include "scheduler/scheduler.h"'
plant scheduler/teams.c '#include <jansson.h>'
plant engine/model.h '#include <jansson.h>'
plant common/kc.c '#include <jansson.h>'
plant scheduler/scheduler.c '#include "config/config.h"'
plant scheduler/affinity.c '#include "server/server_internal.h"'
plant server/metrics.c '#include "scheduler/sched_internal.h"'
plant tools/cli/cmd_version.c '#include "scheduler/sched_internal.h"'
plant common/kc.c '#include "tokenizer/tokenizer.h"'
plant engine/sampler.c '#include <pcre2.h>'
plant engine/sampler.c '#include "server/server_internal.h"'
plant scheduler/teams.c '#include <dnnl.h>'
plant engine/sampler.c '#include <uv.h>'
[ "$fails" -eq 0 ] && echo "selftest: every planted violation caught"
exit "$fails"
