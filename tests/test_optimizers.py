"""Every optimizer and option combination against the float64 reference of docs/algorithms.md, on
every available NumPy backend, float32 and float64, odd sizes, over 50+ steps."""
import numpy as np
import pytest

import fastopt
import rule_table
from conftest import CPU_BACKENDS, random_arrays
from reference import Reference

STEPS = 60

# (reference name, class, constructor keywords). lr values are large enough that the updates
# move the parameters well beyond rounding noise, so a wrong rule cannot pass.
CASES = [(cls.__name__.lower(), cls, kw) for cls, kws in rule_table.rows("cases") for kw in kws]
CASE_IDS = [f"{cls.__name__}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for _, cls, kw in CASES]
SIZES = [0, 1, 7, 15, 16, 17, 1031, 100003]

# Tolerances against the float64 reference after 60 steps, relative to the total distance the
# parameters travelled (so they scale with lr and with the rule):
# - float64: the kernels differ from the reference only in the order of a few roundings per step
#   (folded scalars), ~1e-16 relative each; the worst case seen is 4e-15, 1e-12 leaves room.
# - float32: each step rounds the update and state at ~6e-8 relative; adaptive rules divide by
#   sqrt(v), which amplifies relative error in small v; 2e-4 of the travelled distance bounds
#   60 steps of that with margin, and is still ~100x below the error of any wrong rule
#   (a wrong constant or a dropped term moves the result by percents of the distance).
RTOL = {np.float64: 1e-12, np.float32: 2e-4}


def run_case(backend, cls, kwargs, dtype, n, steps=STEPS, seed=0):
    param, grads = random_arrays(n, dtype, seed, steps)
    start = param.copy()
    opt = cls(param, backend=backend, **kwargs)
    for g in grads:
        opt.step(g)
    return start, grads, param, opt


def reference_run(name, kwargs, start, grads):
    hyper = dict(kwargs)
    if name == "adamw":
        hyper.setdefault("weight_decay", 1e-2)
        hyper["decoupled_weight_decay"] = True
    ref = Reference(name, start, **hyper)
    for g in grads:
        ref.step(g)
    return ref


def assert_close_to_reference(result, start, ref, dtype):
    travelled = np.abs(ref.p - start.astype(np.float64))
    scale = max(float(np.max(travelled, initial=0.0)), 1e-30)
    err = np.abs(result.astype(np.float64) - ref.p)
    assert np.all(np.isfinite(result))
    worst = float(np.max(err, initial=0.0)) / scale
    assert worst <= RTOL[dtype], f"max error {worst:.3g} of the distance travelled (tolerance {RTOL[dtype]})"


# The largest size, which spans several thread chunks, on every third case keeps the suite short.
CASE_SIZES = [(case, n) for case in range(len(CASES)) for n in SIZES if n != 100003 or case % 3 == 0]


@pytest.mark.parametrize("case, n", CASE_SIZES, ids=[f"{CASE_IDS[c]}-n{n}" for c, n in CASE_SIZES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(backend, case, dtype, n):
    name, cls, kwargs = CASES[case]
    start, grads, result, opt = run_case(backend, cls, kwargs, dtype, n)
    ref = reference_run(name, kwargs, start, grads)
    assert opt.state["step"] == STEPS
    assert_close_to_reference(result, start, ref, dtype)
    for key, value in ref.s.items():  # the state, too, follows the reference
        ours = opt.state[key].astype(np.float64)
        scale = max(float(np.max(np.abs(value), initial=0.0)), 1e-30)
        assert float(np.max(np.abs(ours - value), initial=0.0)) / scale <= RTOL[dtype] * 10, key


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the compiled and the Numba backend")
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree_bitwise(case, dtype):
    """C++ and Numba evaluate the same operations in the same order, with no FMA contraction and
    correctly rounded sqrt and division, so they agree bit for bit."""
    _, cls, kwargs = CASES[case]
    results = [run_case(b, cls, kwargs, dtype, 1031, steps=10)[2] for b in ("cpu", "numba")]
    np.testing.assert_array_equal(results[0].view(np.uint8), results[1].view(np.uint8))


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the compiled and the Numba backend")
@pytest.mark.parametrize("n", [7, 40009], ids=["serial", "parallel"])
def test_backends_agree_on_a_zero_divisor(n):
    """An eps that underflows to zero in float32 makes 0 / 0 where gradient and accumulator are
    zero: NaN under IEEE rules in C++, and in Numba's loops, serial and parallel alike (Python's
    error model would raise ZeroDivisionError in the serial one)."""
    results = []
    for backend in ("cpu", "numba"):
        param, accumulator = np.ones(n, np.float32), np.zeros(n, np.float32)
        grad = np.zeros(n, np.float32)
        grad[::2] = 0.5
        fastopt.functional.adagrad(param, grad, accumulator, step=1, lr=0.1, lr_decay=0.0, weight_decay=0.0,
                                   eps=1e-50, backend=backend)
        results.append(param)
    assert np.isnan(results[0][1]) and not np.isnan(results[0][0])
    np.testing.assert_array_equal(results[0].view(np.uint8), results[1].view(np.uint8))


def cpu_module():
    return fastopt._backend.BACKENDS["cpu"].module


def supported_isas():
    order = ["baseline", "x86-64-v3", "x86-64-v4"]
    best = cpu_module().best_isa()
    return order[: order.index(best) + 1]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="compiled extension not available")
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_isa_levels_agree_bitwise(case):
    """-ffp-contract=off and correctly rounded sqrt/div make every vector width give the same bits."""
    _, cls, kwargs = CASES[case]
    cpu = cpu_module()
    active = cpu.isa()
    results = []
    try:
        for isa in supported_isas():
            cpu.select_isa(isa)
            results.append(run_case("cpu", cls, kwargs, np.float32, 1031, steps=10)[2])
    finally:
        cpu.select_isa(active)
    for r in results[1:]:
        np.testing.assert_array_equal(results[0].view(np.uint32), r.view(np.uint32))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_bits(backend, threads):
    """Elementwise updates and the fixed-order norm give the same bits for any thread count."""
    before = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        single = run_case(backend, fastopt.Adam, dict(lr=0.01), np.float32, 300007, steps=3)[2]
        p, g = random_arrays(300007, np.float32, 5, 1)
        norm_single = fastopt.grad_norm(g[0], backend=backend)
        fastopt.set_num_threads(threads)
        multi = run_case(backend, fastopt.Adam, dict(lr=0.01), np.float32, 300007, steps=3)[2]
        norm_multi = fastopt.grad_norm(g[0], backend=backend)
    finally:
        fastopt.set_num_threads(before)
    np.testing.assert_array_equal(single.view(np.uint32), multi.view(np.uint32))
    assert norm_single == norm_multi


def test_adamw_without_decay_is_adam(backend):
    a = run_case(backend, fastopt.AdamW, dict(lr=0.01, weight_decay=0.0), np.float32, 1031)[2]
    b = run_case(backend, fastopt.Adam, dict(lr=0.01), np.float32, 1031)[2]
    np.testing.assert_array_equal(a, b)


def test_velocity_form_equals_momentum_at_constant_lr(backend):
    """Deep Learning's velocity form and torch's buffer form agree while lr is constant."""
    a = run_case(backend, fastopt.SGD, dict(lr=0.05, momentum=0.9, velocity_form=True), np.float64, 1031)[2]
    b = run_case(backend, fastopt.SGD, dict(lr=0.05, momentum=0.9), np.float64, 1031)[2]
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_velocity_form_keeps_old_step_sizes_when_lr_changes(backend):
    param, grads = random_arrays(64, np.float64, 3, 2)
    p1, p2 = param.copy(), param.copy()
    o1 = fastopt.SGD(p1, lr=0.1, momentum=0.9, velocity_form=True, backend=backend)
    o2 = fastopt.SGD(p2, lr=0.1, momentum=0.9, backend=backend)
    for opt in (o1, o2):
        opt.step(grads[0])
        opt.lr = 0.01
        opt.step(grads[1])
    v1 = -0.1 * grads[0]
    expected_velocity = 0.9 * v1 - 0.01 * grads[1]
    np.testing.assert_allclose(p1, param + v1 + expected_velocity, rtol=1e-13)
    assert not np.allclose(p1, p2)


def test_functional_matches_class(backend):
    param, grads = random_arrays(1031, np.float32, 1, 5)
    p_class = param.copy()
    opt = fastopt.Adam(p_class, lr=0.01, amsgrad=True, backend=backend)
    p_fn = param.copy()
    m, v, vmax = (np.zeros_like(param) for _ in range(3))
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        fastopt.functional.adam(p_fn, g, m, v, vmax, step=t, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                                weight_decay=0.0, amsgrad=True, backend=backend)
    np.testing.assert_array_equal(p_class, p_fn)
    np.testing.assert_array_equal(opt.state["max_exp_avg_sq"], vmax)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_state_dict_resume_is_bit_identical(backend, case):
    _, cls, kwargs = CASES[case]
    param, grads = random_arrays(257, np.float32, 2, 20)
    straight = param.copy()
    opt = cls(straight, backend=backend, **kwargs)
    for g in grads:
        opt.step(g)
    resumed = param.copy()
    first = cls(resumed, backend=backend, **kwargs)
    for g in grads[:10]:
        first.step(g)
    saved = first.state_dict()
    for g in grads[10:13]:  # diverge, then restore: the saved copy must be independent
        first.step(g)
    second = cls(resumed, backend=backend, **kwargs)
    second.load_state_dict(saved)
    resumed[...] = 0  # the state_dict carries no parameters: restore them as a user would
    resumed[...] = _replay(param, grads[:10], cls, kwargs, backend)
    for g in grads[10:]:
        second.step(g)
    assert second.state["step"] == 20
    np.testing.assert_array_equal(straight, resumed)


def _replay(param, grads, cls, kwargs, backend):
    p = param.copy()
    opt = cls(p, backend=backend, **kwargs)
    for g in grads:
        opt.step(g)
    return p


def test_hyperparameters_are_attributes_validated_on_assignment():
    opt = fastopt.Adam(np.zeros(4, np.float32))
    opt.lr = 5e-4
    assert opt.lr == 5e-4
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="betas"):
        opt.betas = (0.9, 1.0)
    assert opt.lr == 5e-4


def test_step_counts_are_per_optimizer():
    a = fastopt.Adam(np.zeros(4, np.float32))
    b = fastopt.Adam(np.zeros(4, np.float32))
    a.step(np.ones(4, np.float32))
    a.step(np.ones(4, np.float32))
    b.step(np.ones(4, np.float32))
    assert (a.state["step"], b.state["step"]) == (2, 1)
