#!/usr/bin/env bash
# Fails when a third-party header is included outside the module that owns it
# (STYLE.md: dnnl.h only in the engine's oneDNN files, microhttpd.h and uv.h only in server/).
set -u
cd "${1:-.}" || exit 2
bad=0
check() { # pattern allowed-dir-regex description
  local hits
  hits=$(grep -rlE "#include\s*[<\"]$1" --include='*.[ch]' common engine scheduler server config tools 2>/dev/null | grep -vE "$2" || true)
  if [ -n "$hits" ]; then
    echo "layering: $3 included outside its module:"; echo "$hits" | sed 's/^/  /'; bad=1
  fi
}
check '(oneapi/dnnl/)?dnnl' '^engine/(ops_dnnl\.c|ops_dnnl_internal\.h|ops_gram\.c|probe\.c)$' 'oneDNN'
check '(microhttpd|uv)\.h' '^server/' 'libmicrohttpd/libuv'
check 'cmocka\.h' '^$' 'cmocka'
check 'curl/curl\.h' '^tools/' 'libcurl'
# The engine never sees config, sockets or HTTP.
hits=$(grep -rlE '#include\s*"(config|server|scheduler)/' engine common 2>/dev/null || true)
if [ -n "$hits" ]; then echo "layering: engine/common include upper layers:"; echo "$hits"; bad=1; fi
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
