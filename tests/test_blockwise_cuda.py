"""The CUDA kernel of quantized optimizer state (fastopt/cuda/blockwise.cu): every instantiation
compiles with NVRTC for every target architecture, and runs in the emulator of the CUDA execution
model (cuda_emulator.py) through the CUDA launcher, bit for bit against the CPU backend."""
import shutil

import numpy as np
import pytest

import fastopt
from fastopt import _dtypes, blockwise
from fastopt.cuda import _nvrtc
from fastopt.cuda import blockwise as cuda_blockwise

import cuda_emulator as emu
import rule_table
from conftest import random_arrays
from test_blockwise import CASES, CASE_IDS, HALF_CASES


def _have_nvrtc():
    try:
        _nvrtc._load_nvrtc()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_nvrtc(), reason="NVRTC not available")
@pytest.mark.parametrize("arch", _nvrtc.TARGET_ARCHS)
def test_every_blockwise_kernel_compiles(arch):
    log = _nvrtc.compile_check(cuda_blockwise.SOURCE, cuda_blockwise.all_kernel_names(), arch)
    assert "warning" not in log.lower(), log


needs_emulator = pytest.mark.skipif(shutil.which(emu.CXX) is None or not fastopt.backends()["cpu"]["available"],
                                    reason="needs a C++ compiler and the compiled CPU backend")


@pytest.fixture(scope="module")
def device():
    sources = {cuda_blockwise.SOURCE: (_nvrtc.read_source(cuda_blockwise.SOURCE), cuda_blockwise.all_kernel_names())}
    dev = emu.EmulatedDevice(emu.build(sources), sources=sources)
    with emu.emulated_backend(dev):
        yield dev


@pytest.fixture(autouse=True)
def quantize_small(monkeypatch):
    monkeypatch.setattr(blockwise, "MIN_QUANTIZED_SIZE", 1)


def _run(backend, cls, kwargs, n, steps, dtype=np.float32, scheme="8bit", **options):
    start, grads = random_arrays(n, np.float32, 11, steps)
    param = start.astype(dtype)
    opt = cls(param, backend=backend, state_dtype=scheme, **kwargs, **options)
    for g in grads:
        opt.step(g.astype(dtype))
    return param, opt


def _assert_same(a, b):
    np.testing.assert_array_equal(np.ascontiguousarray(a[0]).view(np.uint8), np.ascontiguousarray(b[0]).view(np.uint8))
    for key, value in a[1].state.items():
        if hasattr(value, "dtype"):
            np.testing.assert_array_equal(value.view(np.uint8), b[1].state[key].view(np.uint8), err_msg=key)
        else:
            assert value == b[1].state[key]


@needs_emulator
@pytest.mark.parametrize("scheme", blockwise.SCHEMES)
@pytest.mark.parametrize("n", [1, 257, 1031])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_emulated_kernel_matches_cpu(device, case, n, scheme):
    """Several grid-stride rounds (2 emulated multiprocessors: 16 thread blocks) and partial last blocks."""
    _, cls, kwargs = CASES[case]
    _assert_same(_run("cpu", cls, kwargs, n, 3, scheme=scheme), _run("cuda_emulated", cls, kwargs, n, 3, scheme=scheme))


@needs_emulator
@pytest.mark.parametrize("name, kwargs", HALF_CASES)
@pytest.mark.parametrize("mode", ["float16-master", "bfloat16-master", "bfloat16-stochastic"])
def test_emulated_half_params_match_cpu(device, name, kwargs, mode):
    dtype = _dtypes.BFLOAT16 if mode.startswith("bfloat16") else np.dtype(np.float16)
    if dtype is None:
        pytest.skip("needs ml_dtypes")
    options = dict(stochastic_rounding=True, seed=5) if mode.endswith("stochastic") else dict(master_weights=True)
    cls = getattr(fastopt, name)
    _assert_same(_run("cpu", cls, kwargs, 5000, 3, dtype, **options),
                 _run("cuda_emulated", cls, kwargs, 5000, 3, dtype, **options))


# ---- the emulated tests can fail ---------------------------------------------------------------

ADAM_NAMES = [cuda_blockwise.kernel_name(fastopt.rules.BY_NAME["Adam"].ID, 0, _dtypes.CODE_FLOAT32,
                                         _dtypes.CODE_FLOAT32, False, fp8) for fp8 in (False, True)]
MUTATIONS = [
    # A warp's max over half its lanes: some blocks get a smaller absmax.
    ("for (int offset = 16; offset > 0; offset /= 2) {", "for (int offset = 8; offset > 0; offset /= 2) {", 0,
     "8bit"),
    # No barrier between the warps' partial maxima and their reduction.
    ("        __syncthreads();\n#pragma unroll", "\n#pragma unroll", 0, "8bit"),
    # fp8 codes read back with absmax instead of absmax / 448.
    ("* block_scale<kFp8>(absmax[j][b])", "* absmax[j][b]", 0, "fp8"),
]


@needs_emulator
@pytest.mark.parametrize("old, new, occurrence, scheme", MUTATIONS, ids=["half-warp-max", "no-barrier", "fp8-scale"])
def test_a_broken_kernel_disagrees_with_the_cpu(old, new, occurrence, scheme):
    text = _nvrtc.read_source(cuda_blockwise.SOURCE)
    at = -1
    for _ in range(occurrence + 1):
        at = text.index(old, at + 1)  # a mutation that no longer applies fails here
    sources = {cuda_blockwise.SOURCE: (text[:at] + new + text[at + len(old):], ADAM_NAMES)}
    dev = emu.EmulatedDevice(emu.build(sources, chunks=1), sources=sources)
    shipped = fastopt._backend.BACKENDS.get("cuda_emulated")  # the module's device, if set up
    try:
        with emu.emulated_backend(dev):
            cpu = _run("cpu", fastopt.Adam, dict(lr=0.01), 1031, 2, scheme=scheme)
            gpu = _run("cuda_emulated", fastopt.Adam, dict(lr=0.01), 1031, 2, scheme=scheme)
    finally:
        if shipped is not None:
            fastopt._backend.BACKENDS["cuda_emulated"] = shipped
    with pytest.raises(AssertionError):
        _assert_same(cpu, gpu)


# class: its rule
EMA_RULES = {cls.__name__: fastopt.rules.RULES[cls._rule].NAME for cls, _ in rule_table.rows("quantized_ema")}


@pytest.fixture(scope="module")
def ema_device():
    """The EMA-fused instantiations of EMA_RULES for float32 params (and their plain steps)."""
    ids = [fastopt.rules.BY_NAME[rule].ID for rule in EMA_RULES.values()]
    names = [cuda_blockwise.kernel_name(rule, v, _dtypes.CODE_FLOAT32, _dtypes.CODE_FLOAT32, False, fp8, e)
             for rule in ids for v in range(fastopt.rules.NUM_VARIANTS[rule]) for fp8 in (False, True)
             for e in (None, _dtypes.CODE_FLOAT32, _dtypes.CODE_BFLOAT16)]
    sources = {cuda_blockwise.SOURCE: (_nvrtc.read_source(cuda_blockwise.SOURCE), names)}
    dev = emu.EmulatedDevice(emu.build(sources), sources=sources)
    with emu.emulated_backend(dev):
        yield dev


@needs_emulator
@pytest.mark.parametrize("scheme", blockwise.SCHEMES)
@pytest.mark.parametrize("ema_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("name", list(EMA_RULES))
def test_emulated_kernel_with_ema_matches_cpu(ema_device, name, ema_dtype, scheme):
    cls = getattr(fastopt, name)
    ema = dict(ema_decay=0.9, ema_warmup=True, ema_dtype=ema_dtype)
    cpu, gpu = (_run(backend, cls, dict(lr=1e-2), 1031, 3, scheme=scheme, **ema) for backend in ("cpu", "cuda_emulated"))
    _assert_same(cpu, gpu)
    assert not np.array_equal(cpu[1].ema, cpu[0])  # the EMA lags the params: it was averaged
    assert any("fastopt::NoEma" not in launched for launched, _, _ in ema_device.launched)
