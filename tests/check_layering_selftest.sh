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

# Only the .c/.h files the check reads, with one violation per rule planted, each in its own
# file, checked in one run (a run per plant is slow on a loaded machine).
(cd "$root" && find common tokenizer engine scheduler server config tools -name '*.[ch]' \
   -exec cp --parents -t "$tmp" {} +)
planted=()
plant() { # FILE LINE
  echo "$2" >>"$tmp/$1"; planted+=("$1")
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
plant common/kc.h '#include "tokenizer/tokenizer.h"'
plant engine/sampler.c '#include <pcre2.h>'
plant engine/ops.c '#include "server/server_internal.h"'
plant scheduler/scheduler.h '#include <dnnl.h>'
plant engine/model.c '#include <uv.h>'
plant server/completions.c '#include <microhttpd.h>'
plant server/routes.c 'static const char *const cors = "Access-Control-Allow-Origin";'
rc=0
out=$(bash "$script" "$tmp") || rc=$?
fails=0
[ "$rc" -eq 1 ] || { echo "selftest: check exited $rc, want 1"; fails=1; }
for f in "${planted[@]}"; do
  grep -qxF "  $f" <<<"$out" || { echo "selftest: the violation planted in $f was not caught"; fails=1; }
done
[ "$fails" -eq 0 ] && echo "selftest: all ${#planted[@]} planted violations caught" || echo "$out"
exit "$fails"
