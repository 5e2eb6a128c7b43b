#!/usr/bin/env bash
# Installs the Debian packages the slow container test (deploy/test-container.sh) needs:
# podman with runc, debootstrap to create the base image without a registry, buildah as a
# fallback builder, and prometheus for promtool (also in deploy/install-deps.sh, for the
# metrics lint in the default test suite). Kept apart from deploy/install-deps.sh because
# these are only for the `slow` container test.
# Idempotent: packages already present are skipped. Debian bookworm, as root or with sudo.
set -euo pipefail

PKGS=(
  podman runc conmon golang-github-containers-common buildah uidmap
  debootstrap debian-archive-keyring
  prometheus
  curl ca-certificates
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-container-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-container-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps crun, slirp4netns and the Prometheus node exporter out; the
# test runs podman with --runtime runc and --network=host.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
