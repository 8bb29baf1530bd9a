"""Every instantiation of the BatchNorm CUDA kernels compiles with NVRTC for each target
architecture, with the loader's own options. Needs the NVRTC library (nvidia-cuda-nvrtc-cu12
wheel), not a GPU."""
import ctypes
import glob
import os
import pathlib

import pytest

from fastopt.cuda import _nvrtc
from fastopt.cuda.batchnorm import SOURCE, name_expressions

REPO = pathlib.Path(__file__).resolve().parent.parent


def _find_nvrtc():
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    for root in list(nvidia.cuda_nvrtc.__path__):
        found = sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so.12")))
        if found:
            return found[0]
    return None


NVRTC_PATH = _find_nvrtc()
pytestmark = pytest.mark.skipif(NVRTC_PATH is None, reason="libnvrtc.so.12 not found (pip install nvidia-cuda-nvrtc-cu12)")


def _library():
    lib = ctypes.CDLL(NVRTC_PATH)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def _options(arch):
    options = list(_nvrtc.nvrtc_options(arch))
    # The loader reads the math headers installed next to the package; a source checkout that was
    # not built in place has them only under csrc.
    if not os.path.isdir(os.path.join(_nvrtc.include_dir(), "fastopt", "math")):
        options.append("-I" + str(REPO / "csrc"))
    return options


def compile_source(source, names, arch):
    """(result code, log, {name: lowered name})."""
    lib = _library()
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), SOURCE.encode(), 0, None, None)
    assert rc == 0, lib.nvrtcGetErrorString(rc)
    try:
        for name in names:
            assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
        options = [o.encode() for o in _options(arch)]
        argv = (ctypes.c_char_p * len(options))(*options)
        rc = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lowered = {}
        if rc == 0:
            for name in names:
                out = ctypes.c_char_p()
                assert lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(out)) == 0, name
                lowered[name] = out.value.decode()
        return rc, log.value.decode(errors="replace"), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", _nvrtc.TARGET_ARCHS)
def test_every_batchnorm_kernel_compiles(arch):
    names = name_expressions()
    assert len(names) == 4 * 7 + 2 * 2
    rc, log, lowered = compile_source(_nvrtc.read_source(SOURCE), names, arch)
    assert rc == 0, log
    assert sorted(lowered) == sorted(names)
    assert "warning" not in log.lower(), log


def test_a_broken_source_fails_to_compile():
    """The check can fail: a kernel with a type error does not compile."""
    source = _nvrtc.read_source(SOURCE) + "\n__global__ void broken(float* p) { p = 1.5; }\n"
    rc, log, _ = compile_source(source, name_expressions()[:1], _nvrtc.TARGET_ARCHS[0])
    assert rc != 0 and "error" in log


def test_kernels_do_not_spill_registers():
    """Compiled to sm_80 machine code, ptxas reports no spills for any instantiation."""
    import re

    names = name_expressions()
    lib = _library()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), _nvrtc.read_source(SOURCE).encode(), SOURCE.encode(), 0,
                                  None, None) == 0
    try:
        for name in names:
            assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
        options = [o.encode() for o in _options(None) + ["--gpu-architecture=sm_80", "--ptxas-options=-v"]]
        rc = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(names), log
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log
