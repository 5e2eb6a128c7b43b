#!/usr/bin/env bash
# Fails when an include crosses a layer (STYLE.md "Layers and includes"):
#  - a third-party header outside the module that owns it (dnnl.h only in the engine's oneDNN files,
#    microhttpd.h only in server/http.c (and version.c, for its version string), uv.h only in
#    server/, pcre2.h only in tokenizer/, libcurl only in tools/, UCX (ucp/ucs/uct) only in
#    scheduler/pd_ucx.c, the prefill/decode transport);
#  - CORS headers added outside server/http.c (the HTTP seam adds them to every response);
#  - jansson.h outside its allow-list (the files that read or write JSON today);
#  - common/ including any other module, tokenizer/ including anything but common/ and itself,
#    engine/ including config/, server/ or scheduler/, scheduler/ including server/ or config/;
#  - scheduler/sched_internal.h outside scheduler/ and tests/.
# Usage: check_layering.sh [repo-root]. Prints every violation, exits 1 if there is any.
set -u
cd "${1:-.}" || exit 2
if [ ! -d common ] || [ ! -d scheduler ]; then echo "layering: $PWD is not a kvcast tree"; exit 2; fi
SRC_DIRS="common tokenizer engine scheduler server config tools"
bad=0
fail() { # description hits
  echo "layering: $1:"
  while IFS= read -r line; do echo "  $line"; done <<<"$2"
  bad=1
}
# Files under $SRC_DIRS whose includes match the extended regex $1 (one path a line).
including() {
  # shellcheck disable=SC2086 # word splitting of SRC_DIRS is intended
  grep -rlE "#[[:space:]]*include[[:space:]]*[<\"]$1" --include='*.[ch]' $SRC_DIRS 2>/dev/null |
    sort || true
}
check() { # pattern allowed-path-regex description
  local hits
  hits=$(including "$1" | grep -vE "$2" || true)
  if [ -n "$hits" ]; then fail "$3 included outside its module" "$hits"; fi
}
check '(oneapi/dnnl/)?dnnl' '^engine/(ops_dnnl\.c|ops_dnnl_internal\.h|ops_gram\.c|probe\.c)$' 'oneDNN'
# The sealed HTTP seam (issue 21 item 6): only http.c speaks libmicrohttpd; the routes and
# completions.c answer through its API (server_internal.h), so without the header no other
# file can call an MHD_ function or use its types and codes (the -Werror build refuses an
# undeclared function).
check 'microhttpd\.h' '^server/(http|version)\.c$' 'libmicrohttpd (only server/http.c, the HTTP seam)'
check 'uv\.h' '^server/' 'libuv'
check 'cmocka\.h' '^$' 'cmocka'
check 'curl/curl\.h' '^tools/' 'libcurl'
check 'pcre2\.h' '^tokenizer/' 'PCRE2'
# UCX moves K/V between prefill and decode hosts (issue 20): one transport file speaks it; the
# protocol (pd_msg.c) and the scheduler see plain bytes and callbacks.
check 'uc[pst]/api/' '^scheduler/pd_ucx\.c$' 'UCX (only scheduler/pd_ucx.c, the prefill/decode transport)'

# jansson.h: only the code that parses or writes JSON, never a header below tools/ (no json_t
# in a library's API). Derived from the code: config.c (JSON config file), the model-file
# loaders in engine/ (safetensors header, config.json, the KV-predictor bundle and its
# I/O: kvp*.c so a split of kvp.c stays inside the rule), the tokenizer's tokenizer.json
# loader (tokenizer/*.c), the HTTP layer (server/*.c) and the CLI (tools/).
JANSSON_ALLOW='^(config/config\.c|engine/(kvp[a-z0-9_]*|io/model_config|io/safetensors)\.c|tokenizer/[a-z0-9_]+\.c|server/[a-z0-9_]+\.c|tools/.*)$'
check 'jansson\.h' "$JANSSON_ALLOW" 'jansson (allow-list in check_layering.sh)'

# CORS: http.c adds the Access-Control-* headers to every response (and answers preflights);
# a route that added its own would send them twice or to an origin that is not allowed.
# shellcheck disable=SC2086 # word splitting of SRC_DIRS is intended
hits=$(grep -rl 'Access-Control-' --include='*.[ch]' $SRC_DIRS 2>/dev/null | grep -vxF server/http.c |
  sort || true)
if [ -n "$hits" ]; then fail 'CORS headers added outside server/http.c' "$hits"; fi

# Project includes between modules: "<module>/..." paths. $1 = folder, $2 = regex of the
# module prefixes it must not include.
forbid() { # dir forbidden-prefix-regex description
  local hits
  hits=$(grep -rlE "#[[:space:]]*include[[:space:]]*\"$2/" --include='*.[ch]' "$1" 2>/dev/null |
    sort || true)
  if [ -n "$hits" ]; then fail "$3" "$hits"; fi
}
forbid common '(tokenizer|engine|scheduler|config|server|tools)' 'common/ includes another module'
forbid tokenizer '(engine|scheduler|config|server|tools)' 'tokenizer/ includes more than common/'
# The engine never sees config, sockets or HTTP.
forbid engine '(config|server|scheduler)' 'engine/ includes upper layers'
# The scheduler is driven through scheduler.h; it never sees HTTP or the settings table.
forbid scheduler '(server|config)' 'scheduler/ includes server/ or config/'

# scheduler/sched_internal.h: the scheduler's private structs, for scheduler/*.c and white-box
# tests only (tests/ is outside SRC_DIRS).
hits=$(including '([a-z]+/)?sched_internal\.h' | grep -vE '^scheduler/' || true)
if [ -n "$hits" ]; then fail 'sched_internal.h included outside scheduler/ and tests/' "$hits"; fi

[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
