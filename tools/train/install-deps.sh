#!/bin/sh
# install-deps.sh — Debian (bookworm) packages the kvcast model-training recipe needs: the corpus
# sources (Jane Austen via r-cran-janeaustenr + Rscript, the KJV via bible-kjv/bible-kjv-text),
# Debian's PyTorch/NumPy/regex for /usr/bin/python3 and OpenBLAS (Debian's torch calls
# libblas.so.3; the reference BLAS is ~20x slower).
# Node.js (any source) is optional: without `node` the tokenizers.js check is skipped.
# Run as root. Idempotent.
set -eu
PKGS="r-base-core r-cran-janeaustenr bible-kjv bible-kjv-text python3 python3-torch python3-numpy
python3-regex libopenblas0-pthread"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing$missing"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
command -v node >/dev/null 2>&1 || {
    echo "install-deps: installing nodejs (for the tokenizers.js check)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs || true
}
# Make libblas.so.3 resolve to OpenBLAS (pthread build) for every program, torch included.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
    lib=$(echo "$alt" | sed 's/-x86_64-linux-gnu//')
    target=/usr/lib/x86_64-linux-gnu/openblas-pthread/$lib
    if [ -e "$target" ]; then
        update-alternatives --set "$alt" "$target" >/dev/null
    fi
done
update-alternatives --query libblas.so.3-x86_64-linux-gnu | sed -n 's/^Value: /install-deps: libblas.so.3 -> /p'
