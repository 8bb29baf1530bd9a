"""The CUDA step fused with the EMA of the weights (optimizer_step_ema_kernel), run by the emulator
of the CUDA execution model through the CUDA backend's launcher, against the CPU backend: bit for
bit. Its own emulator library holds the EMA instantiations of Adam for every type combination and
of every rule for float32 (the EMA code does not depend on the rule; the step it follows is the
one test_cuda_emulated.py checks for every rule and combination)."""
import numpy as np
import pytest

import fastopt
import fastopt.cuda as cuda
from fastopt import _dtypes
from fastopt.cuda import _nvrtc
from fastopt.rules import RULE_NAMES

import cuda_emulator as emu
from conftest import random_arrays
from test_cuda_emulated import COMBO_IDS, COMBOS, NUMPY_TYPES, _assert_same_state, _bits, _options, _placed
from test_optimizers import CASES

ADAM = RULE_NAMES.index("Adam")
F32 = (_dtypes.CODE_FLOAT32,) * 3


def _names():
    names = cuda.all_ema_kernel_names([ADAM])
    names += [n for n in cuda.all_ema_kernel_names() if ", float, float, float, float, false, float>" in n]
    names += [cuda.norm_kernel_name(c) for c in cuda._CXX_TYPES] + ["sum_partials_kernel"]
    return sorted(set(names))


@pytest.fixture(scope="module")
def library():
    return emu.build({cuda.SOURCE: (_nvrtc.read_source(cuda.SOURCE), _names())})


@pytest.fixture
def device(library):
    dev = emu.EmulatedDevice(library)
    with emu.emulated_backend(dev):
        yield dev


def _run_both(cls, kwargs, param, grads, offset, step_options=None, **options):
    results = []
    for backend in ("cpu", "cuda_emulated"):
        p = _placed(param, offset)
        opt = cls(p, backend=backend, **kwargs, **options)
        for g in grads:
            opt.step(_placed(g, offset), **(step_options or {}))
        results.append((p, opt))
    (p_cpu, cpu), (p_gpu, gpu) = results
    np.testing.assert_array_equal(_bits(p_gpu), _bits(p_cpu))
    _assert_same_state(cpu.state, gpu.state)
    return cpu, gpu


# float64 params keep a float64 EMA: no bfloat16 EMA for them.
EMA_COMBOS = [pytest.param(combo, ema_dtype, id=f"{COMBO_IDS[combo]}-{ema_dtype}") for combo in range(len(COMBOS))
              for ema_dtype in (None, "bfloat16") if not (COMBOS[combo][0][0] == _dtypes.CODE_FLOAT64 and ema_dtype)]


@pytest.mark.parametrize("combo, ema_dtype", EMA_COMBOS)
def test_adam_with_ema_matches_cpu_bitwise(device, combo, ema_dtype):
    codes, stochastic = COMBOS[combo]
    param, grads = random_arrays(1031, np.float64, combo, 4)
    param = param.astype(NUMPY_TYPES[codes[0]])
    grads = [g.astype(NUMPY_TYPES[codes[1]]) for g in grads]
    for offset in (0, 1):  # vector packs, then element by element
        for kwargs in (dict(lr=0.01), dict(lr=0.01, amsgrad=True)):
            _run_both(fastopt.Adam, kwargs, param, grads, offset, ema_decay=0.9, ema_warmup=True,
                      ema_dtype=ema_dtype, **_options(codes, stochastic))
    launched = {name for name, _, _ in device.launched}
    assert any(name.startswith("optimizer_step_ema_kernel<fastopt::Adam") for name in launched)


@pytest.mark.parametrize("n", [1, 3, 5, 1031])
def test_every_rule_with_ema_matches_cpu_bitwise(device, n):
    for case, (_, cls, kwargs) in enumerate(CASES):
        param, grads = random_arrays(n, np.float32, case, 3)
        _run_both(cls, kwargs, param, grads, case % 2, ema_decay=0.99)
    expected = {cuda.ema_kernel_name(rule, v, *F32, False, _dtypes.CODE_FLOAT32)
                for rule in range(len(fastopt._scalars.NUM_VARIANTS)) for v in cuda.ema_variants(rule)}
    assert expected <= {name for name, _, _ in device.launched}


def test_skipped_steps_and_clipping(device):
    param, grads = random_arrays(1031, np.float32, 9, 4)
    grads[2][7] = np.nan
    cpu, gpu = _run_both(fastopt.Adam, dict(lr=0.01), param, grads, 0,
                         dict(grad_scale=8.0, max_grad_norm=0.5, skip_nonfinite=True), ema_decay=0.9)
    assert gpu.state["step"] == cpu.state["step"] == 3
