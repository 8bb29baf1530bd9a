#!/usr/bin/env bash
# The GPU check, one command, on a machine with an NVIDIA GPU: installs CuPy for the CUDA version
# found (and fastopt with its test extras if it is not installed), runs every CUDA test (on the GPU
# and emulated) and the benchmark's CUDA rows, and writes the figures to one JSON file.
#
#   tools/gpu_check.sh [OUT.json]        (default: gpu_check.json; PYTHON=... picks the interpreter)
#
# Fails (non-zero, with the reason) when there is no NVIDIA driver, when CuPy finds no device,
# when a test fails or a GPU test is skipped, or when the benchmark's correctness check fails.
# torch with CUDA, when installed, adds torch's fused Adam and cuDNN batch norm to the figures.
# FASTOPT_GPU_CHECK_NO_INSTALL=1 installs nothing (uses what the interpreter has).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check.json}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log() { echo "gpu_check: $* ($((SECONDS - start)) s)" >&2; }
die() { echo "gpu_check: FAILED: $*" >&2; exit 1; }

# The CUDA major version the driver supports (nvidia-smi), else the toolkit's (nvcc).
major=""
if command -v nvidia-smi >/dev/null 2>&1; then
    major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
fi
if [ -z "$major" ] && command -v nvcc >/dev/null 2>&1; then
    major=$(nvcc --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p' | head -n 1)
fi
[ -n "$major" ] || die "no NVIDIA driver (nvidia-smi) or CUDA toolkit (nvcc) found: this check needs a GPU"
case "$major" in
    12 | 13) extra="cuda$major" ;;
    *) die "CUDA $major: fastopt's CuPy extras are for CUDA 12 and 13" ;;
esac

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
if [ "${FASTOPT_GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    log "installing nothing (FASTOPT_GPU_CHECK_NO_INSTALL=1)"
elif "$py" -c "import fastopt._cpu" 2>/dev/null; then
    log "fastopt is installed; installing the test and $extra extras"
    requirements=$("$py" - "$extra" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
print("\n".join(extras["test"] + extras[sys.argv[1]]))
PY
)
    printf '%s\n' "$requirements" > "$work/requirements.txt"
    "$py" -m pip install -q -r "$work/requirements.txt"
else
    log "installing fastopt with the test and $extra extras"
    "$py" -m pip install -q ".[test,$extra]"
fi

"$py" - <<'PY' || die "CuPy finds no CUDA device"
import sys

try:
    import cupy
except ImportError as exc:
    sys.exit(f"gpu_check: CuPy is not importable: {exc}")
if not cupy.is_available():
    sys.exit("gpu_check: cupy.is_available() is False")
print("gpu_check: device 0:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), file=sys.stderr)
PY
log "running every CUDA test (GPU and emulated)"

# A skipped GPU test is a failure here: only the two-GPU test may skip, on a machine with one.
"$py" -m pytest tests -k cuda -q -rs --junitxml="$work/tests.xml" || die "a CUDA test failed"
"$py" - "$work/tests.xml" > "$work/tests.json" <<'PY' || die "CUDA tests were skipped on a machine with a GPU"
import json
import sys
import xml.etree.ElementTree as ET

cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
counts = {"passed": 0, "failed": 0, "skipped": 0}
skipped = []
for case in cases:
    reason = next((c.get("message", "") for c in case if c.tag == "skipped"), None)
    failed = any(c.tag in ("failure", "error") for c in case)
    counts["failed" if failed else "skipped" if reason is not None else "passed"] += 1
    if reason is not None and "two GPUs" not in reason:
        skipped.append(f"{case.get('classname')}.{case.get('name')}: {reason}")
json.dump({**counts, "skipped_tests": skipped}, sys.stdout)
if skipped:
    print("\n".join(skipped), file=sys.stderr)
    sys.exit(1)
PY
tests_done=$SECONDS

log "benchmark: the CUDA rows"
"$py" -m fastopt bench --backends cuda --threads 1 --sizes 64000000,256000000 --repeats 5 \
    --json "$work/bench.json" || die "the benchmark failed (a correctness check, or CUDA unavailable)"

"$py" - "$work/tests.json" "$work/bench.json" "$out" "$((tests_done - start))" "$((SECONDS - start))" <<'PY'
import json
import sys

tests_path, bench_path, out, tests_s, total_s = sys.argv[1:]
with open(tests_path) as f:
    tests = json.load(f)
with open(bench_path) as f:
    bench = json.load(f)
rows = [{k: r.get(k) for k in ("workload", "size", "impl", "backend", "seconds", "gb_per_s", "limit_gb_per_s",
                               "fraction_of_limit", "speedup", "skipped")}
        for r in bench.get("records", [])]
result = {"tests": tests, "figures": rows, "bench": bench,
          "seconds": {"install_and_tests": int(tests_s), "total": int(total_s)},
          "within_4_minutes": int(total_s) < 240}
with open(out, "w") as f:
    json.dump(result, f, indent=1)
PY
log "wrote $out"
