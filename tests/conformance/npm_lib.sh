# npm_lib.sh — shared by the conformance runners (tests/conformance/*/run.sh), which run a
# Node script against kvcast with npm packages pinned in their package-lock.json. Source it,
# then call kc_npm_ready NAME DIR WANT...: fails loudly (never skips) when node or npm is
# missing, and installs the pinned packages into DIR (offline from the npm cache first, then
# from the registry) unless every path WANT (relative to DIR) already exists.
kc_npm_ready() {
    local name="$1" dir="$2" want missing=0
    shift 2
    for tool in node npm; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "$name: '$tool' is not installed (apt-get install nodejs npm)" >&2
            exit 1
        fi
    done
    for want in "$@"; do
        [ -e "$dir/$want" ] || missing=1
    done
    if [ "$missing" = 1 ]; then
        echo "$name: installing pinned npm packages" >&2
        (cd "$dir" && { npm ci --offline --no-audit --no-fund >&2 || npm ci --no-audit --no-fund >&2; })
    fi
}
