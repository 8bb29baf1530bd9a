#!/usr/bin/env bash
# The per-ISA kernel objects must not define weak (COMDAT) symbols: the linker keeps one copy of
# each, possibly the AVX-512 one, and baseline code calling it would fault on older CPUs.
# Usage: tools/check_isa_objects.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR}
objects=$(find "$build" -path '*fastopt_kernels_*' -name '*.o')
[ -n "$objects" ] || { echo "no per-ISA objects under $build"; exit 1; }
# DW.ref.__gxx_personality_v0 is a pointer to the C++ unwinder, the same data in every object.
weak=$(nm -C --defined-only $objects | grep -E ' [WVu] ' | grep -v 'DW.ref.__gxx_personality_v0' || true)
if [ -n "$weak" ]; then
  echo "weak symbols in per-ISA objects (move them into the ISA namespace or inline them):"
  echo "$weak"
  exit 1
fi
echo "per-ISA objects: $(echo "$objects" | wc -l) files, no weak symbols"
