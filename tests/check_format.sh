#!/usr/bin/env bash
# Fails when a tracked C file differs from clang-format-14's output (.clang-format at the
# root; generated tables opt out with `clang-format off`). Fix with:
#   git ls-files '*.c' '*.h' | xargs clang-format-14 -i
# Usage: check_format.sh [repo-root]
set -u
cd "${1:-.}" || exit 2
cf=$(command -v clang-format-14 || true)
if [ -z "$cf" ]; then echo "check_format: clang-format-14 is missing (deploy/install-deps.sh installs it)"; exit 1; fi
mapfile -t files < <(git ls-files '*.c' '*.h' 2>/dev/null || find common tokenizer engine scheduler server config tools tests -name '*.[ch]')
if [ ${#files[@]} -eq 0 ]; then echo "check_format: no C files found"; exit 2; fi
if ! out=$("$cf" --dry-run -Werror "${files[@]}" 2>&1); then
    echo "check_format: files that differ from clang-format-14:"
    echo "$out" | grep -oE '^[^: ]+\.[ch]:' | sort -u | sed 's/:$//; s/^/  /'
    exit 1
fi
echo "check_format: ${#files[@]} files clean"
