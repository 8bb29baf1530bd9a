"""Property-based tests of the functional API: over random sizes, dtypes, strides, overlaps,
options and hyper-parameters (valid or not), a call either matches the float64 reference or raises
ValueError/TypeError having written nothing.

Example counts: 150 for the optimizer property, 100 for the clipping property (each run is a
single fast step, so the module stays well under a minute on 2 cores)."""
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

import fastopt  # noqa: E402
from fastopt import functional as F  # noqa: E402
from conftest import CPU_BACKENDS  # noqa: E402
from reference import Reference  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# Each example has at most one fault: a bad layout or one bad hyper-parameter (about half the
# examples have none, so both outcomes are well covered).
LAYOUT_FAULTS = ["strided-param", "strided-grad", "state-overlaps-param", "grad-size", "state-dtype"]
HYPER_FAULTS = {"lr": [-0.1, math.nan, math.inf], "beta1": [1.0, -0.5, math.nan], "beta2": [1.0, math.nan],
                "eps": [0.0, -1e-8, math.nan], "wd": [-0.01, math.nan], "step": [0, -1]}
FAULTS = ["none"] * 12 + LAYOUT_FAULTS + [f"{k}={v}" for k, vs in HYPER_FAULTS.items() for v in vs]


def build(n, dtype, fault, seed):
    rng = np.random.default_rng(seed)
    p, g, s0, s1 = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    s1 = np.abs(s1)  # a second moment is never negative
    if fault == "strided-param":
        p = np.repeat(p, 2)[::2]
    elif fault == "strided-grad":
        g = np.repeat(g, 2)[::2]
    elif fault == "state-overlaps-param":
        s0 = p
    elif fault == "grad-size":
        g = g[:-1] if n else np.zeros(1, dtype)
    elif fault == "state-dtype":
        s0 = s0.astype(np.float64 if dtype == np.float32 else np.float32)
    return [p, g, s0, s1]


def fault_applies(fault, rule, n, momentum):
    """Whether the call must be refused: a fault on something the call does not use is no fault."""
    uses_state = rule != "sgd" or momentum != 0
    if fault == "none":
        return False
    if fault in ("strided-param", "strided-grad"):
        return n > 1  # arrays of at most one element are contiguous
    if fault == "state-overlaps-param":
        return uses_state and n > 0
    if fault == "state-dtype":
        return uses_state
    name, value = fault.split("=")
    if name == "beta1" and rule == "sgd":
        return not float(value) >= 0  # momentum >= 0 is valid, any size
    if name == "beta2" or name == "beta1":
        return rule != "sgd"
    if name == "eps":
        return rule == "adam"
    if name == "step":
        return rule == "adam" or (rule == "sgd" and momentum != 0)
    return True  # grad-size, lr, wd


def snapshot(arrays):
    return [a.copy() for a in arrays]


def unchanged(before, arrays):
    return all(np.array_equal(b.view(np.uint8), np.ascontiguousarray(a).view(np.uint8)) for b, a in zip(before, arrays))


@settings(max_examples=150, **SETTINGS)
@given(n=st.integers(0, 300), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31),
       fault=st.sampled_from(FAULTS), rule=st.sampled_from(["adam", "sgd", "lion"]),
       lr=st.floats(1e-4, 0.5), beta1=st.floats(0.0, 0.999), beta2=st.floats(0.0, 0.999),
       eps=st.floats(1e-10, 1e-3), wd=st.floats(0.0, 0.1), maximize=st.booleans(), step=st.integers(1, 5),
       backend=st.sampled_from(CPU_BACKENDS))
def test_step_matches_reference_or_raises_cleanly(n, dtype, seed, fault, rule, lr, beta1, beta2, eps, wd,
                                                  maximize, step, backend):
    hyper_values = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, wd=wd, step=step)
    if "=" in fault:
        name, value = fault.split("=")
        hyper_values[name] = int(value) if name == "step" else float(value)
    lr, beta1, beta2, eps, wd, step = (hyper_values[k] for k in ("lr", "beta1", "beta2", "eps", "wd", "step"))
    arrays = build(n, dtype, fault, seed)
    p, g, s0, s1 = arrays
    before = snapshot(arrays)
    if rule == "adam":
        call = lambda: F.adam(p, g, s0, s1, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,  # noqa: E731
                              weight_decay=wd, maximize=maximize, backend=backend)
        hyper = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, maximize=maximize)
        states = {"exp_avg": 2, "exp_avg_sq": 3}
    elif rule == "sgd":
        call = lambda: F.sgd(p, g, s0, lr=lr, momentum=beta1, weight_decay=wd, maximize=maximize,  # noqa: E731
                             step=step, backend=backend)
        hyper = dict(lr=lr, momentum=beta1, weight_decay=wd, maximize=maximize)
        states = {"momentum_buffer": 2} if beta1 != 0 else {}
    else:
        call = lambda: F.lion(p, g, s0, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,  # noqa: E731
                              maximize=maximize, backend=backend)
        hyper = dict(lr=lr, betas=(beta1, beta2), weight_decay=wd, maximize=maximize)
        states = {"exp_avg": 2}
    try:
        call()
    except (ValueError, TypeError) as exc:
        event("rejected")
        assert fault_applies(fault, rule, n, beta1), f"a valid call was refused: {exc}"
        assert str(exc), "errors must say what is wrong"
        assert unchanged(before, arrays), f"a failed call wrote data: {exc}"
        return
    event("accepted")
    assert not fault_applies(fault, rule, n, beta1), f"{fault} was accepted"
    ref = Reference(rule, before[0], **hyper)
    for name, index in states.items():
        ref.s[name] = before[index].astype(np.float64)
    ref.t = 0 if rule == "lion" else step - 1
    ref.step(before[1])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p.astype(np.float64), ref.p, rtol=tol,
                               atol=tol * (1 + float(np.max(np.abs(ref.p), initial=0))))


@settings(max_examples=100, **SETTINGS)
@given(n=st.integers(1, 5000), scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-3, 1e3),
       grad_scale=st.sampled_from([None, 1.0, 128.0, 3.0]), backend=st.sampled_from(CPU_BACKENDS))
def test_fused_clip_matches_reference(n, scale, max_norm, grad_scale, backend):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n)
    g = rng.standard_normal(n) * scale
    ref = Reference("sgd", p, lr=0.1)
    ref.step(g, grad_scale=grad_scale, clip=max_norm)
    result = F.sgd(p, g, lr=0.1, max_grad_norm=max_norm, grad_scale=grad_scale, backend=backend)
    unscaled = g / (grad_scale or 1.0)
    assert result.grad_norm == pytest.approx(np.linalg.norm(unscaled), rel=1e-12)
    np.testing.assert_allclose(p, ref.p, rtol=1e-12, atol=1e-12)
