#!/usr/bin/env bash
# Builds the C++ extension with AddressSanitizer and UndefinedBehaviorSanitizer and runs the tests
# that exercise it. Any sanitizer report aborts the run (halt_on_error, -fno-sanitize-recover),
# so this script fails on the first one. Needs the test dependencies in the active Python.
#   .ci/sanitize.sh [--build-only] [pytest options]    SANITIZE_JOBS: compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=false
if [ "${1:-}" = "--build-only" ]; then build_only=true; shift; fi
py=${PYTHON:-python}
build=build/sanitize
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# The kernels' own -O3 (the code that ships), with line tables only (-g1: reports name the
# function and line; full -g made the build 1.7x slower).
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-g1 -DFASTOPT_SANITIZE=ON \
  -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $py)" >/dev/null
cmake --build "$build" --parallel "${SANITIZE_JOBS:-2}" >/dev/null
if $build_only; then exit 0; fi
# A copy of the package with the sanitized extension, so the installed one is left alone.
cp -r python/fastopt "$stage/fastopt"
rm -f "$stage"/fastopt/_cpu*.so
cp "$build"/_cpu*.so "$stage/fastopt/"
mkdir -p "$stage/fastopt/include/fastopt" && cp -r csrc/fastopt/math "$stage/fastopt/include/fastopt/"

asan=$(${CXX:-c++} -print-file-name=libasan.so)
ubsan=$(${CXX:-c++} -print-file-name=libubsan.so)
# CPython and NumPy are not instrumented: their allocations are not ours to check for leaks.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:verify_asan_link_order=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export FASTOPT_BACKEND=cpu

# The sanitizers must be live, or a clean run proves nothing: an out-of-bounds read has to be
# reported: the norm kernel is handed a view twice as long as its buffer (as_strided misused).
if (LD_PRELOAD="$asan $ubsan" PYTHONPATH="$stage" $py - <<'PY'
import numpy as np
from numpy.lib.stride_tricks import as_strided
from fastopt import _cpu

buffer = np.ones(4096, np.float32)
_cpu.sum_of_squares(0, as_strided(buffer, shape=(8192,)))
PY
status=$?; exit $status) 2>"$stage/canary.log"; then
  echo "sanitizers inactive: an out-of-bounds kernel call went unreported" >&2
  exit 1
fi
grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$stage/canary.log" || {
  echo "the out-of-bounds canary failed without an AddressSanitizer report:" >&2
  cat "$stage/canary.log" >&2
  exit 1
}
# pytest captures stderr, and a report aborts the process before the capture is shown: reports
# go to files (one per process, subprocesses included), printed here.
status=0
LD_PRELOAD="$asan $ubsan" PYTHONPATH="$stage" ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$stage/report" \
  UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$stage/report" $py -m pytest -q -p no:cacheprovider \
  tests/test_optimizers.py tests/test_mixed_precision.py tests/test_validation.py \
  tests/test_concurrency.py tests/test_large_index.py tests/test_nan_inf.py tests/test_properties.py \
  tests/test_threads.py \
  tests/test_batchnorm.py tests/test_batchnorm_fused.py tests/test_blockwise.py tests/test_ema.py \
  tests/test_segment_table.py \
  -k "not numba" "$@" || status=$?
if compgen -G "$stage/report.*" >/dev/null; then
  cat "$stage"/report.* >&2
  echo "sanitizers: reports above" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
echo "sanitizers: no reports"
