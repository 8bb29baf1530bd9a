"""Every instantiation of the BatchNorm CUDA kernels compiles with NVRTC for each target
architecture, with the loader's own options. Needs the NVRTC library (nvidia-cuda-nvrtc-cu12
wheel), not a GPU."""
import re

import pytest

from fastopt.cuda import _nvrtc
from fastopt.cuda.batchnorm import SOURCE, name_expressions

try:
    _nvrtc._load_nvrtc()
except OSError as exc:  # pragma: no cover - the test extras install NVRTC
    pytest.skip(f"NVRTC not available: {exc}", allow_module_level=True)


@pytest.mark.parametrize("arch", _nvrtc.TARGET_ARCHS)
def test_every_batchnorm_kernel_compiles(arch):
    names = name_expressions()
    assert len(names) == 4 * 7 + 2 * 2
    log = _nvrtc.compile_check(SOURCE, names, arch)  # also checks every name was instantiated
    assert "warning" not in log.lower(), log


def test_a_broken_source_fails_to_compile():
    """The check can fail: a kernel with a type error does not compile."""
    source = _nvrtc.read_source(SOURCE) + "\n__global__ void broken(float* p) { p = 1.5; }\n"
    with pytest.raises(_nvrtc.NvrtcError, match="error"):
        _nvrtc.compile_check(SOURCE, name_expressions()[:1], _nvrtc.TARGET_ARCHS[0], source=source)


def test_kernels_do_not_spill_registers():
    """Compiled to sm_80 machine code, ptxas reports no spills for any instantiation."""
    names = name_expressions()
    log = _nvrtc.compile_check(SOURCE, names, "sm_80", ["--ptxas-options=-v"])
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(names), log
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log


@pytest.mark.parametrize("arch", _nvrtc.TARGET_ARCHS)
def test_every_fused_batchnorm_kernel_compiles_without_spills(arch):
    """BN + add + ReLU: compiled in the launchers' module (all_name_expressions); no spills on sm_80."""
    from fastopt.cuda.batchnorm import all_name_expressions, fused_name_expressions

    names = fused_name_expressions()
    assert len(names) == 4 * 4 and set(names) <= set(all_name_expressions())
    log = _nvrtc.compile_check(SOURCE, all_name_expressions(), arch)
    assert "warning" not in log.lower(), log
    log = _nvrtc.compile_check(SOURCE, names, "sm_80", ["--ptxas-options=-v"])
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(names), log
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log
