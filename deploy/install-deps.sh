#!/usr/bin/env bash
# Installs every Debian package that kvcast's build, tests and tools need.
# Idempotent: packages already present are skipped; safe to run as often as you like.
# Works on a fresh Debian bookworm as root (or with sudo available).
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config git ca-certificates
  # libraries the product links
  libdnnl-dev ocl-icd-opencl-dev libmicrohttpd-dev libjansson-dev libuv1-dev libpcre2-dev
  libcurl4-openssl-dev
  # tests and tools
  libcmocka-dev clang-14 libclang-rt-14-dev clang-format-14 curl
  # promtool (`promtool check metrics` on a live /metrics scrape, tests/deploy.cmake)
  prometheus
  # benchmark plots (tools/bench/compare.sh, pareto.sh)
  gnuplot-nox
  # model tooling (PyTorch reference + training recipe, run with /usr/bin/python3)
  python3 python3-numpy python3-torch libopenblas0-pthread
  # chat templates: the reference Jinja the renderer is checked against byte for byte
  python3-jinja2
  # disaggregated serving: KV and control messages between prefill and decode hosts
  libucx-dev
  # multi-host tests in network namespaces (ip netns, veth, bridge)
  iproute2
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# Node.js (for the tokenizer conformance test's real Hugging Face peer): a machine may already
# carry a Node.js that bundles npm (and conflicts with Debian's npm package); use it if present.
if ! command -v npm >/dev/null 2>&1; then
  for p in nodejs npm; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
