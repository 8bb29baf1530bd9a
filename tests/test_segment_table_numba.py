"""A list of arrays on the Numba backend is one jitted call per step (fastopt/numba/multi.py), with
the bits of the CPU backend's list step (itself those of stepping each array alone): every rule,
dtype combinations, an EMA of the weights, a frozen array, two param groups, sizes on both sides
of the parallel threshold. Each call compiles a loop (seconds): the cases after each optimizer
class's first are marked slow."""
import numpy as np
import pytest

import fastopt
from conftest import random_arrays
from test_optimizers import CASES, CASE_IDS

if not all(fastopt.backends()[b]["available"] for b in ("cpu", "numba")):
    pytest.skip("needs the compiled extension (the reference) and Numba", allow_module_level=True)

BF16 = pytest.importorskip("ml_dtypes").bfloat16
SMALL = [1, 7, 1031, 33]  # serial loop
LARGE = [1, 7, 1031, 40000, 70001]  # past the parallel threshold: chunks of several arrays per thread


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _compare(cls, kwargs, sizes, dtype=np.float32, grad_dtype=np.float32, **options):
    start, grads = [], []
    for j, n in enumerate(sizes):
        p, gs = random_arrays(n, np.float32, 20 + j, 3)
        start.append(p.astype(dtype))
        grads.append([g.astype(grad_dtype) for g in gs])
    lr = cls(np.zeros(1, np.float64), **kwargs).defaults["lr"]
    module = fastopt._backend.BACKENDS["numba"].module
    runs = {}
    for backend in ("cpu", "numba"):
        params = [p.copy() for p in start]
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": lr * 0.5}], backend=backend, **kwargs,
                  **options)
        for step in range(3):
            frozen = 2 if step == 1 else None
            opt.step([None if j == frozen else g[step] for j, g in enumerate(grads)])
        runs[backend] = (params, opt)
    (cpu_params, cpu), (numba_params, numba_opt) = runs["cpu"], runs["numba"]
    for j, (a, b) in enumerate(zip(numba_params, cpu_params)):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"param {j} (size {sizes[j]})")
        for name, value in cpu.state[j].items():
            if hasattr(value, "shape"):
                np.testing.assert_array_equal(_bits(numba_opt.state[j][name]), _bits(value), err_msg=name)
        if options.get("ema_decay"):
            np.testing.assert_array_equal(_bits(numba_opt.ema[j]), _bits(cpu.ema[j]), err_msg=f"EMA {j}")
    return module


def _cases():
    first = {}
    for case, (_, cls, _) in enumerate(CASES):
        first.setdefault(cls, case)
        yield pytest.param(case, id=CASE_IDS[case], marks=[] if first[cls] == case else [pytest.mark.slow])


@pytest.mark.parametrize("case", list(_cases()))
def test_numba_list_equals_cpu(case, monkeypatch):
    _, cls, kwargs = CASES[case]
    module = fastopt._backend.BACKENDS["numba"].module
    calls = []
    real_multi, real_single = module.multi_step, module.optimizer_step
    monkeypatch.setattr(module, "multi_step", lambda *a: calls.append("multi") or real_multi(*a))
    monkeypatch.setattr(module, "optimizer_step", lambda *a: calls.append("single") or real_single(*a))
    _compare(cls, kwargs, SMALL)
    assert calls == ["multi"] * 3, calls


DTYPES = [
    pytest.param(np.float64, np.float64, {}, id="f64"),
    pytest.param(np.float32, np.float32, dict(state_dtype="bfloat16"), id="f32-bf16-state"),
    pytest.param(np.float16, np.float32, dict(master_weights=True), id="f16-master-f32-grad"),
    pytest.param(BF16, BF16, dict(stochastic_rounding=True, seed=5, state_dtype="bfloat16"), id="bf16-stochastic"),
    pytest.param(np.float32, np.float32, dict(ema_decay=0.9), id="f32-ema"),
    pytest.param(BF16, BF16, dict(master_weights=True, ema_decay=0.9, ema_dtype="bfloat16"), id="bf16-master-ema"),
]


@pytest.mark.parametrize("dtype, grad_dtype, options", DTYPES)
def test_numba_list_dtypes(dtype, grad_dtype, options):
    _compare(fastopt.AdamW, dict(lr=0.01, amsgrad=True), SMALL, dtype, grad_dtype, **options)


def test_numba_list_parallel():
    _compare(fastopt.NAdam, dict(lr=0.01), LARGE)
    _compare(fastopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), LARGE, BF16, np.float32,
             stochastic_rounding=True, seed=9)
