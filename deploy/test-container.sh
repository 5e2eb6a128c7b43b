#!/usr/bin/env bash
# The slow container test: builds deploy/Dockerfile with podman and runs the image for real.
#
#   1. base image: no registry is reachable, so `debian:bookworm-slim` is made here: debootstrap
#      a minimal bookworm root from the Debian mirror this machine's apt already uses (read
#      from /etc/apt/sources.list{,.d/}), slim it like the official image, `podman import` it.
#      Skipped when the image exists (--rebuild-base forces it).
#   2. `podman build` of deploy/Dockerfile (runc, cgroupfs, low ulimits, host network: what
#      works on this kind of machine), docker format so the HEALTHCHECK is kept.
#   3. image checks: runs as non-root, no compilers or build tools inside; reports the size.
#   4. `podman run --read-only` with an API key: waits for /health, runs the image's
#      HEALTHCHECK, one completion (and a 401 without the key), then `podman stop` (SIGTERM,
#      the image's STOPSIGNAL) while a completion is in flight: /health must turn 503, the
#      running completion must finish in full, new ones get 503, and the container must exit 0
#      well before podman's kill timeout.
# Models: the baked-in default bundle when models/tiny/kvcast-bundle.json is in the checkout;
# otherwise the golden test model and tokenizer mounted under /models/user (which also
# exercises the user-model mount).
#
# Needs root and deploy/install-container-deps.sh. Takes minutes (the first run downloads the
# base system and the -dev packages). Options: --rebuild-base, --no-cache, --keep (leave the
# container and images for inspection; images are always kept as a build cache otherwise;
# `podman rmi kvcast:test debian:bookworm-slim` frees them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${KC_CONTAINER_IMAGE:-localhost/kvcast:test}"
BASE="debian:bookworm-slim"
WORK="${KC_CONTAINER_WORK:-/var/tmp/kvcast-container}"
NAME="kvcast-test-$$"
REBUILD_BASE=0
NO_CACHE=()
KEEP=0
for a in "$@"; do
  case "$a" in
    --rebuild-base) REBUILD_BASE=1 ;;
    --no-cache) NO_CACHE=(--no-cache) ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--rebuild-base] [--no-cache] [--keep]" >&2; exit 2 ;;
  esac
done

# What runs containers on this machine: crun fails on its hybrid cgroup layout, the default
# ulimits cannot be raised here, and there is no bridge network.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network=host)

T_START=$(date +%s)
phase() { echo "== [$(($(date +%s) - T_START)) s] $*"; }
# podman run/stop log errors about health-check timers when there is no systemd (harmless:
# the timers are only for periodic checks); keep every other message.
no_systemd_noise() { grep -v 'unable to get systemd connection' >&2 || true; }
fail() { echo "FAIL: $*" >&2; exit 1; }

for c in podman runc debootstrap curl tar; do
  command -v "$c" >/dev/null 2>&1 || fail "$c missing: run deploy/install-container-deps.sh"
done
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, podman storage)"

# ---- 1. base image ----

# Prints "URI SUITE" for every enabled `deb` source in the host's apt configuration, both the
# one-line (.list) and the deb822 (.sources) formats.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2
                       if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                       print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush(  n, m, a, b, U, S) {
           if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
             n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
             for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) if (U[a] != "" && S[b] != "") print U[a], S[b]
           }
           types = uris = suites = enabled = ""
         }
         /^[ \t]*#/ { next }
         /^[ \t]*$/ { flush(); next }
         { k = tolower($1); sub(/:$/, "", k); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
           if (k == "types") types = v; else if (k == "uris") uris = v
           else if (k == "suites") suites = v; else if (k == "enabled") enabled = tolower(v) }
         END { flush() }' "$f"
  done
}

build_base() {
  local mirror security rootfs
  mirror="$(apt_sources | awk '$2 == "bookworm" { print $1; exit }')"
  security="$(apt_sources | awk '$2 == "bookworm-security" { print $1; exit }')"
  [ -n "$mirror" ] || fail "no 'bookworm' deb source in /etc/apt/sources.list{,.d/}"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  phase "debootstrap --variant=minbase bookworm (mirror from the host's apt configuration)"
  if ! debootstrap --variant=minbase --arch=amd64 bookworm "$rootfs" "$mirror" \
       >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    fail "debootstrap failed (log: $WORK/debootstrap.log)"
  fi
  # The image's apt uses the same mirrors as the host (written into the image only).
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  # Slim it the way the official -slim image is: no docs, man pages or locales, now or later.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
  # Like the official image: apt keeps no package caches or downloaded .debs in layers.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "$rootfs"/tmp/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
       -exec rm -rf {} +
  phase "podman import as $BASE ($(du -sh "$rootfs" | cut -f1) root)"
  tar -C "$rootfs" --numeric-owner -cf - . |
    "${PODMAN[@]}" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
}

mkdir -p "$WORK"
if [ "$REBUILD_BASE" -eq 1 ] || ! "${PODMAN[@]}" image exists "$BASE"; then
  build_base
else
  phase "base image $BASE present (--rebuild-base to remake it)"
fi

# ---- 2. build ----
phase "podman build -f deploy/Dockerfile -t $IMAGE"
t0=$(date +%s)
if ! (cd "$ROOT" && "${PODMAN[@]}" build --pull=never --format docker "${LIMITS[@]}" \
        "${NO_CACHE[@]}" --ignorefile deploy/Dockerfile.dockerignore \
        -f deploy/Dockerfile -t "$IMAGE" .) >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  fail "podman build failed (log: $WORK/build.log)"
fi
BUILD_S=$(($(date +%s) - t0))

# ---- 3. image checks ----
phase "image checks"
SIZE=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
BASE_SIZE=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE")
uid=$("${PODMAN[@]}" run --rm --no-healthcheck "${LIMITS[@]}" --entrypoint id "$IMAGE" -u)
[ "$uid" = 10001 ] || fail "image runs as uid '$uid', want 10001"
# shellcheck disable=SC2016 # the script runs in the container's bash
"${PODMAN[@]}" run --rm --no-healthcheck "${LIMITS[@]}" --entrypoint bash "$IMAGE" -c \
  'for t in cc gcc g++ cmake make ld as pkg-config; do
     if command -v "$t" >/dev/null; then echo "build tool in runtime image: $t"; exit 1; fi
   done
   ! ls /usr/include/oneapi /usr/include/jansson.h 2>/dev/null' ||
  fail "runtime image carries build tools or headers"
hc=$("${PODMAN[@]}" image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")
case "$hc" in *health*) ;; *) fail "image has no HEALTHCHECK ($hc)" ;; esac
sig=$("${PODMAN[@]}" image inspect --format '{{.Config.StopSignal}}' "$IMAGE")
[ "$sig" = SIGTERM ] || fail "STOPSIGNAL is '$sig'"

# ---- 4. run ----
PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
URL="http://127.0.0.1:$PORT"
# --health-interval=disable: podman schedules periodic checks with systemd timers, and there is
# no systemd here; the image's check is run once by hand below instead.
RUN_ARGS=(-d --name "$NAME" --read-only --health-interval=disable "${LIMITS[@]}"
          -e "KVCAST_PORT=$PORT" -e "KVCAST_API_KEY=$KEY"
          -e KVCAST_DEBUG_STEP_DELAY_MS=100 -e KVCAST_LOG_LEVEL=info
          -v "$WORK/kvcast.json:/etc/kvcast/kvcast.json:ro" -e KVCAST_CONFIG=/etc/kvcast/kvcast.json)
# A mounted config file, as the k8s ConfigMap provides one; its model name must show up.
printf '{"served_model_name": "kvcast-container-test", "max_running": 4}\n' >"$WORK/kvcast.json"
chmod 644 "$WORK/kvcast.json"
BAKED=""
if [ -f "$ROOT/models/tiny/kvcast-bundle.json" ]; then
  BAKED=1
  MODEL_DESC="baked-in default bundle /models/tiny"
else
  MODEL_DESC="golden llama_gqa mounted at /models/user (models/tiny not in this checkout)"
  RUN_ARGS+=(-v "$ROOT/tests/golden/llama_gqa:/models/user/base:ro"
             -v "$ROOT/tests/fixtures/tiny_tokenizer:/models/user/tokenizer:ro"
             -e KVCAST_MODEL=/models/user/base -e KVCAST_TOKENIZER=/models/user/tokenizer)
fi

BG_PID=""
cleanup() {
  if [ -n "$BG_PID" ]; then kill "$BG_PID" 2>/dev/null || true; fi
  if [ "$KEEP" -eq 0 ]; then "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

phase "podman run ($MODEL_DESC) on port $PORT"
t0=$(date +%s)
"${PODMAN[@]}" run "${RUN_ARGS[@]}" "$IMAGE" 2> >(no_systemd_noise) >/dev/null
ready=0
for _ in $(seq 1 240); do
  if [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    "${PODMAN[@]}" logs "$NAME" >&2 || true
    fail "container exited before becoming healthy"
  fi
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health")" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.5
done
[ "$ready" -eq 1 ] || { "${PODMAN[@]}" logs "$NAME" >&2; fail "/health not 200 within 120 s"; }
READY_S=$(($(date +%s) - t0))
"${PODMAN[@]}" healthcheck run "$NAME" >/dev/null || fail "the image's HEALTHCHECK reports unhealthy"

completion() { # max_tokens -> prints "HTTP_CODE BODY"
  curl -s --max-time 60 -w '\n%{http_code}' -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "{\"prompt\":[1,2,3],\"max_tokens\":$1,\"ignore_eos\":true}" \
    "$URL/v1/completions"
}
phase "one completion"
out=$(completion 4 || true)
code=${out##*$'\n'}
body=${out%$'\n'*}
[ "$code" = 200 ] || fail "completion: HTTP $code: $body"
echo "$body" | grep -q '"completion_tokens":4' || fail "completion: unexpected body: $body"
echo "$body" | grep -q '"model":"kvcast-container-test"' ||
  fail "completion: the mounted config file was not applied: $body"
echo "   $body" | cut -c1-200
if [ -n "$BAKED" ]; then
  # The baked-in bundle carries the aux model and predictor: KV Prediction must work.
  out=$(curl -s --max-time 60 -w '\n%{http_code}' -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' \
        -d '{"prompt":[1,2,3,4,5,6,7,8],"max_tokens":2,"ignore_eos":true,"prefill_mode":"predict"}' \
        "$URL/v1/completions" || true)
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  [ "$code" = 200 ] || fail "predict-mode completion: HTTP $code: $body"
  echo "$body" | grep -q '"prefill_mode":"predict"' ||
    fail "predict-mode completion did not use KV Prediction: $body"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
       -d '{"prompt":[1,2,3],"max_tokens":1}' "$URL/v1/completions")
[ "$code" = 401 ] || fail "completion without the API key: HTTP $code, want 401"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$URL/metrics")
[ "$code" = 401 ] || fail "/metrics without the API key: HTTP $code, want 401"
code=$(curl -s -o "$WORK/metrics.txt" -w '%{http_code}' --max-time 10 \
       -H "Authorization: Bearer $KEY" "$URL/metrics")
[ "$code" = 200 ] || fail "/metrics with the API key: HTTP $code"
grep -q '^kvcast_time_to_first_token_seconds_count' "$WORK/metrics.txt" ||
  fail "/metrics lacks kvcast_time_to_first_token_seconds (the image sets KVCAST_METRIC_NAMES=prometheus)"
if command -v promtool >/dev/null 2>&1; then
  promtool check metrics <"$WORK/metrics.txt" >"$WORK/lint" 2>&1 && [ ! -s "$WORK/lint" ] ||
    fail "promtool check metrics on the container's /metrics: $(cat "$WORK/lint")"
  echo "promtool check metrics: no problems in the container's /metrics"
fi

phase "SIGTERM (podman stop) with a completion in flight"
N=30 # 30 decode steps x 100 ms debug delay: ~3 s of work left when the signal lands
completion "$N" >"$WORK/inflight.out" &
BG_PID=$!
sleep 0.8
t0=$(date +%s.%N)
"${PODMAN[@]}" stop -t 60 "$NAME" 2> >(no_systemd_noise) >/dev/null &
STOP_PID=$!
saw503=0
new503=0
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health" || true)
  if [ "$code" = 503 ]; then
    saw503=1
    c2=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $KEY" \
         -H 'Content-Type: application/json' -d '{"prompt":[1],"max_tokens":1}' \
         "$URL/v1/completions" || true)
    [ "$c2" = 503 ] && new503=1
    break
  fi
  sleep 0.1
done
wait "$BG_PID" || true
BG_PID=""
wait "$STOP_PID" || true
STOP_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
out=$(cat "$WORK/inflight.out")
code=${out##*$'\n'}
body=${out%$'\n'*}
exit_code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
"${PODMAN[@]}" logs "$NAME" >"$WORK/container.log" 2>&1 || true
[ "$saw503" -eq 1 ] || fail "/health never answered 503 while draining"
[ "$new503" -eq 1 ] || fail "a new completion during the drain was not refused with 503"
[ "$code" = 200 ] || fail "in-flight completion: HTTP $code: $body"
echo "$body" | grep -q "\"completion_tokens\":$N" ||
  fail "in-flight completion was cut short by the drain: $body"
[ "$exit_code" = 0 ] || { tail -n 20 "$WORK/container.log" >&2; fail "container exit code $exit_code"; }
grep -q "draining" "$WORK/container.log" || fail "no drain message in the container log"
grep -q "stopped" "$WORK/container.log" || fail "no 'stopped' message in the container log"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo
echo "container test passed in $(($(date +%s) - T_START)) s"
echo "  build:            ${BUILD_S} s"
echo "  model:            $MODEL_DESC"
echo "  healthy after:    ${READY_S} s"
echo "  SIGTERM to exit:  ${STOP_S} s (in-flight completion finished: $N tokens, exit code 0)"
echo "  runtime image:    $(mib "$SIZE") ($IMAGE; base $BASE $(mib "$BASE_SIZE"), kvcast layers $(mib $((SIZE - BASE_SIZE))))"
echo "  logs:             $WORK/build.log $WORK/container.log"
