"""Every CUDA kernel instantiation the CUDA backend can request compiles with NVRTC, for every
target architecture, with the production options; no GPU is needed.

compute_90 is covered by the spill checks, which compile the same names to Hopper SASS (PTX
first) and also refuse warnings. The EMA-fused kernels are the plain step's device body with
the EMA's lerp after it: besides Hopper they compile for compute_75, where bfloat16 arithmetic is
emulated (cuda_bf16.h's other code path); compute_80 takes Hopper's path and is checked on the
plain kernels, which share that body."""
import re

import pytest

import fastopt.cuda as cuda_backend
from fastopt import _scalars
from fastopt.cuda import _nvrtc

try:
    _nvrtc._load_nvrtc()
except OSError as exc:  # pragma: no cover - the test extras install NVRTC
    pytest.skip(f"NVRTC not available: {exc}", allow_module_level=True)


SPILL_CHECKED = "compute_90"  # the architecture of the sm_90 spill checks


def _assert_no_spills(log, count):
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == count
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log
    assert "warning" not in log.lower(), log


@pytest.mark.parametrize("arch", [a for a in _nvrtc.TARGET_ARCHS if a != SPILL_CHECKED])
def test_every_optimizer_kernel_compiles(arch):
    log = _nvrtc.compile_check("kernels.cu", cuda_backend.all_kernel_names(), arch)
    assert "warning" not in log.lower(), log


def test_kernels_do_not_spill_on_hopper():
    """SASS for sm_90: ptxas reports registers and spills of every kernel; none may spill."""
    log = _nvrtc.compile_check("kernels.cu", cuda_backend.all_kernel_names(), "sm_90",
                               ["--ptxas-options=-v"])
    _assert_no_spills(log, len(cuda_backend.all_kernel_names()))


def test_compile_failure_is_reported_with_the_log():
    with pytest.raises(_nvrtc.NvrtcError, match="optimizer_step_kernel|no instance|error"):
        _nvrtc.compile_check("kernels.cu", ["optimizer_step_kernel<fastopt::Adam, 0, float, int, int, int>"],
                             "compute_80")


def test_variant_counts_match_the_headers():
    cpu = pytest.importorskip("fastopt._cpu")
    assert tuple(cpu.num_variants()) == _scalars.NUM_VARIANTS


def test_every_ema_kernel_compiles_with_emulated_bfloat16():
    """The steps fused with the EMA of the weights: every rule, variant, type combination and EMA dtype."""
    log = _nvrtc.compile_check("kernels.cu", cuda_backend.all_ema_kernel_names(), _nvrtc.TARGET_ARCHS[0])
    assert "warning" not in log.lower(), log


def test_ema_kernels_do_not_spill_on_hopper():
    names = cuda_backend.all_ema_kernel_names()
    log = _nvrtc.compile_check("kernels.cu", names, "sm_90", ["--ptxas-options=-v"])
    _assert_no_spills(log, len(names) + 1)  # sum_partials_kernel, not a template, is always compiled
