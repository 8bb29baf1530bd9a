"""A list of arrays on the CUDA backend is one launch per step (the segment table of
optimizer_step_kernel), run by the emulator of the CUDA execution model, against the CPU backend
stepping the same list: bit for bit. Sizes cross the launch's chunks (cuda.CHUNK elements per
block), one array is misaligned, two param groups ride in the same launch, an array is frozen."""
import numpy as np
import pytest

import fastopt
import fastopt.cuda as cuda
from fastopt.cuda import _nvrtc

import cuda_emulator as emu
from conftest import random_arrays
from test_cuda_emulated import COMBO_IDS, COMBOS, NUMPY_TYPES, _assert_same_state, _bits, _options, _placed
from test_ema_cuda_emulated import _names as ema_names
from test_optimizers import CASES, CASE_IDS

SIZES = [1, 7, 1031, cuda.CHUNK + 5, 33, 2 * cuda.CHUNK]
MISALIGNED = 2  # this array starts one element into its buffer
STEPS = 3


@pytest.fixture(scope="module")
def library():
    return emu.build(emu.shipped_sources())


@pytest.fixture(scope="module")
def ema_library():
    return emu.build({cuda.SOURCE: (_nvrtc.read_source(cuda.SOURCE), ema_names())})


def _on(library):
    dev = emu.EmulatedDevice(library)
    return dev, emu.emulated_backend(dev)


def _lists(param_type, grad_type, seed):
    params, grads = [], []
    for j, n in enumerate(SIZES):
        p, gs = random_arrays(n, np.float64, seed + j, STEPS)
        offset = 1 if j == MISALIGNED else 0
        params.append(_placed(p.astype(param_type), offset))
        grads.append([_placed(g.astype(grad_type), offset) for g in gs])
    return params, grads


def _step_lists(device, cls, kwargs, param_type, grad_type, options, frozen_step=1):
    """The same list steps on the CPU and on the emulated GPU; returns the launches per step."""
    params, grads = _lists(param_type, grad_type, 3)
    lr = cls(np.zeros(1, np.float64), **kwargs).defaults["lr"]
    results, launches = [], []
    for backend in ("cpu", "cuda_emulated"):
        mine = [_placed(p, 1 if j == MISALIGNED else 0) for j, p in enumerate(params)]
        groups = [{"params": mine[:3]}, {"params": mine[3:], "lr": lr * 0.5}]
        opt = cls(groups, backend=backend, **kwargs, **options)
        for step in range(STEPS):
            before = len(device.launched)
            frozen = 4 if step == frozen_step else None
            opt.step([None if j == frozen else g[step] for j, g in enumerate(grads)])
            if backend == "cuda_emulated":
                launches.append([name for name, _, _ in device.launched[before:]])
        results.append((mine, opt))
    (cpu_params, cpu), (gpu_params, gpu) = results
    for j, (a, b) in enumerate(zip(gpu_params, cpu_params)):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"param {j} (size {SIZES[j]})")
        _assert_same_state(cpu.state[j], gpu.state[j])
        if options.get("ema_decay"):
            np.testing.assert_array_equal(_bits(gpu.ema[j]), _bits(cpu.ema[j]), err_msg=f"EMA {j}")
    return launches


def _one_step_launch_each(launches):
    return all(sum(name.startswith("optimizer_step") for name in step) == 1 for step in launches)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_list_is_one_launch_and_equals_cpu(library, case):
    _, cls, kwargs = CASES[case]
    device, backend = _on(library)
    with backend:
        launches = _step_lists(device, cls, kwargs, np.float32, np.float32, {})
    assert _one_step_launch_each(launches), launches


@pytest.mark.parametrize("combo", range(len(COMBOS)), ids=COMBO_IDS)
def test_list_every_type_combination(library, combo):
    codes, stochastic = COMBOS[combo]
    device, backend = _on(library)
    options = _options(codes, stochastic)
    with backend:
        for cls, kwargs in [(fastopt.AdamW, dict(lr=0.01, amsgrad=True)), (fastopt.RMSprop, dict(lr=0.01, centered=True))]:
            launches = _step_lists(device, cls, kwargs, NUMPY_TYPES[codes[0]], NUMPY_TYPES[codes[1]], options)
            assert _one_step_launch_each(launches), launches


@pytest.mark.parametrize("combo", range(len(COMBOS)), ids=COMBO_IDS)
def test_list_with_the_ema_of_the_weights(ema_library, combo):
    codes, stochastic = COMBOS[combo]
    device, backend = _on(ema_library)
    with backend:
        launches = _step_lists(device, fastopt.Adam, dict(lr=0.01), NUMPY_TYPES[codes[0]], NUMPY_TYPES[codes[1]],
                               dict(_options(codes, stochastic), ema_decay=0.9))
    assert all(sum(name.startswith("optimizer_step_ema_kernel") for name in step) == 1 for step in launches)
