"""Every CUDA kernel instantiation the CUDA backend can request compiles with NVRTC, for every
target architecture, with the production options; no GPU is needed.

The spill checks compile every name to Hopper SASS (PTX first) and refuse warnings too: they
stand for compute_80 and compute_90, where cuda_bf16.h takes the same native bfloat16 path (the
kernels have no other architecture-dependent code). compute_75, where bfloat16 arithmetic is
emulated (cuda_bf16.h's other path), is compiled on its own."""
import re

import pytest

import fastopt.cuda as cuda_backend
from fastopt import _scalars
from fastopt.cuda import _nvrtc

try:
    _nvrtc._load_nvrtc()
except OSError as exc:  # pragma: no cover - the test extras install NVRTC
    pytest.skip(f"NVRTC not available: {exc}", allow_module_level=True)


EMULATED_BF16_ARCH = _nvrtc.TARGET_ARCHS[0]  # compute_75


def _assert_no_spills(log, count):
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == count
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log
    assert "warning" not in log.lower(), log


def test_every_optimizer_kernel_compiles_with_emulated_bfloat16():
    log = _nvrtc.compile_check("kernels.cu", cuda_backend.all_kernel_names(), EMULATED_BF16_ARCH)
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
    log = _nvrtc.compile_check("kernels.cu", cuda_backend.all_ema_kernel_names(), EMULATED_BF16_ARCH)
    assert "warning" not in log.lower(), log


def test_ema_kernels_do_not_spill_on_hopper():
    names = cuda_backend.all_ema_kernel_names()
    log = _nvrtc.compile_check("kernels.cu", names, "sm_90", ["--ptxas-options=-v"])
    _assert_no_spills(log, len(names) + 1)  # sum_partials_kernel, not a template, is always compiled
