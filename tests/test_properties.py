"""Property-based tests of the functional API: over random sizes, dtypes, strides, overlaps,
options and hyper-parameters (valid or not), a call either matches the float64 reference or raises
ValueError/TypeError having written nothing.

Example counts: 120 valid calls, 10 for each of the 23 faults (every fault is drawn: a sampled
fault list left most of them out), 100 for the clipping property. Each example is one fast step;
the module runs in about 30 s on 2 shared cores."""
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

# Each example has at most one fault: a bad layout or one bad hyper-parameter.
LAYOUT_FAULTS = ["strided-param", "strided-grad", "state-overlaps-param", "grad-size", "state-dtype",
                 "read-only-state", "misaligned-grad", "missing-buffer"]
HYPER_FAULTS = {"lr": [-0.1, math.nan, math.inf], "beta1": [1.0, -0.5, math.nan], "beta2": [1.0, math.nan],
                "eps": [-1e-8, math.inf, math.nan], "wd": [-0.01, math.nan], "step": [0, -1]}
FAULTS = LAYOUT_FAULTS + [f"{k}={v}" for k, vs in HYPER_FAULTS.items() for v in vs]


def _misaligned_copy(a):
    """A copy of `a` whose data starts one byte past an element boundary."""
    raw = np.empty(a.nbytes + 1, np.uint8)
    out = raw[1:].view(a.dtype)
    out[...] = a
    return out


def build(n, dtype, fault, seed, rule):
    """[p, g, s0, s1, s2]: s1 and s2 are second moments (never negative); s2 is AMSGrad's maximum."""
    rng = np.random.default_rng(seed)
    p, g, s0, s1 = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    s1 = np.abs(s1)
    s2 = s1 + np.abs(rng.standard_normal(n)).astype(dtype) * (rng.random(n) < 0.5)
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
    elif fault == "read-only-state":
        s0.flags.writeable = False
    elif fault == "misaligned-grad":
        g = _misaligned_copy(g)
    elif fault == "missing-buffer":  # Adam: no AMSGrad maximum; SGD, Lion: no momentum buffer
        if rule == "adam":
            s2 = None
        else:
            s0 = None
    return [p, g, s0, s1, s2]


def fault_applies(fault, rule, n, momentum, amsgrad):
    """Whether the call must be refused: a fault on something the call does not use is no fault."""
    uses_state = rule != "sgd" or momentum != 0
    if fault == "none":
        return False
    if fault == "read-only-state":
        return uses_state
    if fault == "misaligned-grad":
        return n > 0  # an empty array has no element to misalign
    if fault == "missing-buffer":
        return (rule == "sgd" and momentum != 0) or (rule == "adam" and amsgrad) or rule == "lion"
    if fault == "grad-size":
        return True
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
    return True  # lr, wd


def snapshot(arrays):
    return [None if a is None else a.copy() for a in arrays]


def unchanged(before, arrays):
    return all(a is None or np.array_equal(b.view(np.uint8), np.ascontiguousarray(a).view(np.uint8))
               for b, a in zip(before, arrays))


CALLS = dict(n=st.integers(0, 300), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31),
             rule=st.sampled_from(["adam", "sgd", "lion"]), lr=st.floats(1e-4, 0.5), beta1=st.floats(0.0, 0.999),
             beta2=st.floats(0.0, 0.999), eps=st.floats(1e-10, 1e-3), wd=st.floats(0.0, 0.1),
             maximize=st.booleans(), step=st.integers(1, 5), option=st.booleans(), rows=st.sampled_from([1, 2, 3]),
             backend=st.sampled_from(CPU_BACKENDS))


@settings(max_examples=120, **SETTINGS)
@given(**CALLS)
def test_valid_step_matches_reference(**call):
    check_step(fault="none", **call)


@pytest.mark.parametrize("fault", FAULTS)
@settings(max_examples=10, **SETTINGS)
@given(**CALLS)
def test_faulty_step_raises_cleanly_or_is_harmless(fault, **call):
    """A fault on something the call does not use (a strided one-element array, a bad beta for SGD)
    must be accepted and give the reference result; any other must raise having written nothing."""
    check_step(fault=fault, **call)


def check_step(n, dtype, seed, fault, rule, lr, beta1, beta2, eps, wd, maximize, step, option, rows, backend):
    """`option` is AMSGrad for Adam and Nesterov for SGD (unused by Lion). `rows` > 1 shapes param
    as a 2-D array, which is stepped as flat."""
    hyper_values = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, wd=wd, step=step)
    if "=" in fault:
        name, value = fault.split("=")
        hyper_values[name] = int(value) if name == "step" else float(value)
    lr, beta1, beta2, eps, wd, step = (hyper_values[k] for k in ("lr", "beta1", "beta2", "eps", "wd", "step"))
    arrays = build(n, dtype, fault, seed, rule)
    p, g, s0, s1, s2 = arrays
    if rows > 1 and n % rows == 0 and p.flags.c_contiguous:
        p = p.reshape(rows, -1)  # a view: the same memory, as the checks below expect
    before = snapshot(arrays)
    amsgrad = rule == "adam" and option
    nesterov = rule == "sgd" and option and beta1 > 0  # Nesterov needs momentum: not a fault tested here
    if rule == "adam":
        call = lambda: F.adam(p, g, s0, s1, s2, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,  # noqa: E731
                              weight_decay=wd, amsgrad=amsgrad, maximize=maximize, backend=backend)
        hyper = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, maximize=maximize, amsgrad=amsgrad)
        states = {"exp_avg": 2, "exp_avg_sq": 3, **({"max_exp_avg_sq": 4} if amsgrad else {})}
    elif rule == "sgd":
        call = lambda: F.sgd(p, g, s0, lr=lr, momentum=beta1, nesterov=nesterov, weight_decay=wd,  # noqa: E731
                             maximize=maximize, step=step, backend=backend)
        hyper = dict(lr=lr, momentum=beta1, nesterov=nesterov, weight_decay=wd, maximize=maximize)
        states = {"momentum_buffer": 2} if beta1 != 0 else {}
    else:
        call = lambda: F.lion(p, g, s0, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,  # noqa: E731
                              maximize=maximize, backend=backend)
        hyper = dict(lr=lr, betas=(beta1, beta2), weight_decay=wd, maximize=maximize)
        states = {"exp_avg": 2}
    try:
        call()
    except (ValueError, TypeError) as exc:
        event(f"rejected: {fault}")
        assert fault_applies(fault, rule, n, beta1, amsgrad), f"a valid call was refused: {exc}"
        assert str(exc), "errors must say what is wrong"
        assert unchanged(before, arrays), f"a failed call wrote data: {exc}"
        return
    event(f"accepted: {fault}")
    assert not fault_applies(fault, rule, n, beta1, amsgrad), f"{fault} was accepted"
    ref = Reference(rule, before[0], **hyper)
    for name, index in states.items():
        ref.s[name] = before[index].astype(np.float64)
    ref.t = 0 if rule == "lion" else step - 1
    ref.step(before[1])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p.reshape(-1).astype(np.float64), ref.p, rtol=tol,
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
