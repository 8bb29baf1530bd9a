#!/usr/bin/env bash
# Development build: compiles the _cpu extension into build/dev and copies it next to the Python
# sources, so that `PYTHONPATH=python python -m pytest` runs against the working tree.
# Usage: tools/build_inplace.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
build=${FASTOPT_BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $py)" "$@" >/dev/null
ninja -C "$build"
cp "$build"/_cpu*.so python/fastopt/
mkdir -p python/fastopt/include/fastopt
rm -rf python/fastopt/include/fastopt/math && cp -r csrc/fastopt/math python/fastopt/include/fastopt/math
cp "$build"/generated/fastopt/math/rule_list.h python/fastopt/include/fastopt/math/
