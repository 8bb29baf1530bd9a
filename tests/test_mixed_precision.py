"""Half precision with float32 master weights, bfloat16 state, loss scaling, non-finite skipping
and fused clipping, on every available NumPy backend."""
import math

import numpy as np
import pytest

import fastopt
import rule_table
from fastopt import functional as F
from conftest import CPU_BACKENDS, random_arrays
from reference import Reference

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
HALVES = [np.dtype(np.float16), BF16]
STEPS = 60

HALF_CASES = [(cls.__name__.lower(), cls, kw) for cls, kw in rule_table.rows("half")]


def reference(name, kwargs, start, grads, round_state=None):
    hyper = dict(kwargs)
    if name == "adamw":
        hyper.setdefault("weight_decay", 1e-2)
        hyper["decoupled_weight_decay"] = True
    ref = Reference(name, start, round_state=round_state, **hyper)
    for g in grads:
        ref.step(g)
    return ref


def relative_error(result, ref_p, start):
    travelled = max(float(np.max(np.abs(ref_p - start), initial=0.0)), 1e-30)
    return float(np.max(np.abs(result.astype(np.float64) - ref_p), initial=0.0)) / travelled


@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("grad_is_float32", [False, True], ids=["half-grad", "f32-grad"])
@pytest.mark.parametrize("case", range(len(HALF_CASES)), ids=[c[0] for c in HALF_CASES])
@pytest.mark.parametrize("n", [1, 7, 1031, 40009])
def test_master_weights_track_float64(backend, half, grad_is_float32, case, n):
    name, cls, kwargs = HALF_CASES[case]
    param32, grads32 = random_arrays(n, np.float32, 11, STEPS)
    param = param32.astype(half)
    grads = [g if grad_is_float32 else g.astype(half) for g in grads32]
    opt = cls(param, master_weights=True, backend=backend, **kwargs)
    master = opt.state["master_weights"]
    np.testing.assert_array_equal(master, param.astype(np.float32))
    for g in grads:
        opt.step(g)
    start = param32.astype(half).astype(np.float64)  # the reference starts where the half param did
    ref = reference(name, kwargs, start, [g.astype(np.float64) for g in grads])
    # The master copy is stepped in float32, so it meets the float32 tolerance of
    # test_optimizers.py (2e-4 of the distance travelled).
    assert relative_error(master, ref.p, start) <= 2e-4
    # The half copy is the master rounded to nearest even, bit for bit (ml_dtypes and NumPy round
    # to nearest even too).
    np.testing.assert_array_equal(param.view(np.uint16), master.astype(half).view(np.uint16))


def _round_to_bf16(x):
    return x.astype(BF16).astype(np.float64)


@pytest.mark.parametrize("case", range(len(HALF_CASES)), ids=[c[0] for c in HALF_CASES])
def test_bfloat16_state(backend, case):
    name, cls, kwargs = HALF_CASES[case]
    param, grads = random_arrays(1031, np.float32, 12, STEPS)
    start = param.astype(np.float64)
    opt = cls(param, state_dtype="bfloat16", backend=backend, **kwargs)
    for g in grads:
        opt.step(g)
    for key in opt.state:
        if key not in ("step", "mu_product"):
            assert opt.state[key].dtype == BF16, key
    # Against a float64 reference that rounds its state to bfloat16 after every step. The two round
    # from slightly different values (float32 vs float64 arithmetic), so a state element can differ
    # by one bfloat16 ulp (2^-8 relative) on a step; through 60 steps that stays within 2% of the
    # distance travelled, while float32 state would differ from this reference by far less and a
    # state not rounded at all would not be bfloat16.
    ref = reference(name, kwargs, start, grads, round_state=_round_to_bf16)
    assert relative_error(param, ref.p, start) <= 2e-2


@pytest.mark.parametrize("case", range(len(HALF_CASES)), ids=[c[0] for c in HALF_CASES])
def test_bfloat16_state_stored_as_uint16_is_the_same_step(backend, case, monkeypatch):
    """CuPy (or NumPy without ml_dtypes) has no bfloat16 dtype: the class then keeps bfloat16
    state as uint16, declared state_dtype='bfloat16' to the kernels; the steps are the same, bit
    for bit."""
    name, cls, kwargs = HALF_CASES[case]
    param, grads = random_arrays(1031, np.float32, 14, 5)
    kwargs = dict(kwargs, initial_accumulator_value=0.1) if name == "adagrad" else kwargs
    typed = cls(param.copy(), state_dtype="bfloat16", backend=backend, **kwargs)
    monkeypatch.setattr(fastopt.optim, "BFLOAT16", None)  # as without ml_dtypes
    as_bits = cls(param.copy(), state_dtype="bfloat16", backend=backend, **kwargs)
    for g in grads:
        typed.step(g)
        as_bits.step(g)
    np.testing.assert_array_equal(typed.param, as_bits.param)
    for key, value in typed.state.items():
        if hasattr(value, "dtype"):
            assert as_bits.state[key].dtype == np.uint16, key
            np.testing.assert_array_equal(value.view(np.uint16), as_bits.state[key])


def test_state_stored_as_uint16_must_be_declared_bfloat16(backend):
    p, (g, m, v) = random_arrays(37, np.float32, 15, 3)
    v = np.abs(v)
    m16, v16 = m.astype(BF16).view(np.uint16), v.astype(BF16).view(np.uint16)
    call = dict(step=1, backend=backend)
    before = [a.copy() for a in (p, m16, v16)]
    with pytest.raises(TypeError, match="exp_avg must be float32 or bfloat16 for a float32 param, got uint16"):
        F.adam(p, g, m16, v16, **call)
    with pytest.raises(TypeError, match="exp_avg must be float32 or bfloat16 for a float32 param, got uint16"):
        F.adam(p, g, m16, v16, state_dtype="float16", **call)
    for old, new in zip(before, (p, m16, v16)):
        np.testing.assert_array_equal(old, new)
    F.adam(p, g, m16, v16, state_dtype="bfloat16", **call)
    assert not np.array_equal(before[0], p)


def test_bfloat16_state_half_param_combination(backend):
    param32, grads = random_arrays(1031, np.float32, 13, 20)
    param = param32.astype(BF16)
    opt = fastopt.Adam(param, lr=0.01, master_weights=True, state_dtype="bfloat16", backend=backend)
    for g in grads:
        opt.step(g.astype(BF16))
    start = param32.astype(BF16).astype(np.float64)
    ref = reference("adam", dict(lr=0.01), start, [g.astype(BF16).astype(np.float64) for g in grads],
                    round_state=_round_to_bf16)
    assert relative_error(opt.state["master_weights"], ref.p, start) <= 2e-2


def _sgd_identity(backend, half, master_values, grad_bits):
    """Rounds `master_values` to `half` through a step with lr = 0, then widens the half gradient
    `grad_bits` through a maximizing step with lr = 1 from a zero master (master = 0 + g, exact)."""
    n = master_values.size
    param = master_values.astype(half)
    opt = fastopt.SGD(param, lr=0.0, master_weights=True, backend=backend)
    opt.state["master_weights"][...] = master_values
    grad = grad_bits.view(half)
    opt.step(np.zeros(n, half))  # lr = 0: the master is unchanged and the half copy is rewritten from it
    rounded = param.copy()
    opt.state["master_weights"][...] = 0
    opt.lr = 1.0
    opt.maximize = True  # p = 0 + g
    opt.step(grad)
    assert n == grad.size
    return rounded, opt.state["master_weights"].copy()


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_half_conversions_are_exact_for_every_bit_pattern(backend, half):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    widened_expected = bits.view(half).astype(np.float32)
    # float32 values hitting every rounding case: every half value, the midpoints between
    # neighbours (ties to even), values just off the midpoints, overflow, underflow, inf, NaN.
    rng = np.random.default_rng(0)
    specials = np.array([np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 1e38, 3.4e38, 1e-8, 2.98e-8,
                         2.99e-8, 5.96e-8, 6e-8, 1e-45, -0.0, 0.0], np.float32)
    finite = widened_expected[np.isfinite(widened_expected)]
    ordered = np.unique(finite)
    midpoints = ((ordered[:-1].astype(np.float64) + ordered[1:]) / 2).astype(np.float32)
    values = np.concatenate([specials, finite, midpoints, np.nextafter(midpoints, np.float32(np.inf)),
                             np.nextafter(midpoints, np.float32(-np.inf)),
                             rng.standard_normal(4096).astype(np.float32) * 1e4])
    grad_bits = np.resize(bits, values.size)
    with np.errstate(over="ignore"):  # float16 overflow to inf is one of the cases
        rounded, widened = _sgd_identity(backend, half, values, grad_bits)
        expected = values.astype(half)
    nan = np.isnan(values)
    np.testing.assert_array_equal(rounded.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])
    assert np.all(np.isnan(rounded[nan].astype(np.float32)))
    # Widening is exact; compared as values since the step itself turns -0.0 into +0.0 (0 - 0).
    np.testing.assert_array_equal(widened, grad_bits.view(half).astype(np.float32))


def test_grad_scale_by_power_of_two_is_exact(backend):
    param, grads = random_arrays(1031, np.float32, 14, 5)
    plain, scaled = param.copy(), param.copy()
    a = fastopt.Adam(plain, lr=0.01, backend=backend)
    b = fastopt.Adam(scaled, lr=0.01, backend=backend)
    for g in grads:
        a.step(g)
        b.step(g * np.float32(1024), grad_scale=1024.0)
    np.testing.assert_array_equal(plain, scaled)


def test_grad_scale_matches_reference(backend):
    param, grads = random_arrays(1031, np.float64, 15, 30)
    start = param.copy()
    opt = fastopt.SGD(param, lr=0.05, momentum=0.9, backend=backend)
    ref = Reference("sgd", start, lr=0.05, momentum=0.9)
    for g in grads:
        opt.step(g * 3.0, grad_scale=3.0)
        ref.step(g * 3.0, grad_scale=3.0)
    np.testing.assert_allclose(param, ref.p, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_changes_nothing(backend, bad):
    param, grads = random_arrays(1031, np.float32, 16, 3)
    opt = fastopt.Adam(param, lr=0.01, backend=backend)
    opt.step(grads[0])
    before = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in opt.state.items()}
    p_before = param.copy()
    bad_grad = grads[1].copy()
    bad_grad[517] = bad
    norm = opt.step(bad_grad, skip_nonfinite=True)
    assert opt.last_step_skipped and not math.isfinite(norm)
    np.testing.assert_array_equal(param, p_before)
    assert opt.state["step"] == before["step"] == 1
    for k in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(opt.state[k], before[k])
    norm = opt.step(grads[2], skip_nonfinite=True)
    assert not opt.last_step_skipped and math.isfinite(norm) and opt.state["step"] == 2


def test_skip_nonfinite_half_master(backend):
    param32, grads = random_arrays(100, np.float32, 17, 1)
    param = param32.astype(np.float16)
    opt = fastopt.Adam(param, lr=0.01, master_weights=True, backend=backend)
    g = grads[0].astype(np.float16)
    g[3] = np.float16(np.inf)
    before, master_before = param.copy(), opt.state["master_weights"].copy()
    opt.step(g, skip_nonfinite=True)
    assert opt.last_step_skipped
    np.testing.assert_array_equal(param.view(np.uint16), before.view(np.uint16))
    np.testing.assert_array_equal(opt.state["master_weights"], master_before)


def test_nonfinite_gradient_without_skip_propagates(backend):
    param = np.ones(16, np.float32)
    g = np.ones(16, np.float32)
    g[4] = np.nan
    fastopt.SGD(param, lr=0.1, backend=backend).step(g)
    assert np.isnan(param[4]) and np.all(param[np.arange(16) != 4] == np.float32(0.9))


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_fused_clip_equals_clip_then_step(backend, max_norm):
    param, grads = random_arrays(40009, np.float32, 18, 4)
    fused, two_calls = param.copy(), param.copy()
    a = fastopt.Adam(fused, lr=0.01, backend=backend)
    b = fastopt.Adam(two_calls, lr=0.01, backend=backend)
    for g in grads:
        g_copy = g.copy()
        norm_fused = a.step(g, max_grad_norm=max_norm)
        np.testing.assert_array_equal(g, g_copy)  # the fused path never writes the gradient
        norm_two = fastopt.clip_grad_norm_(g_copy, max_norm, backend=backend)
        b.step(g_copy)
        assert norm_fused == norm_two
    np.testing.assert_array_equal(fused, two_calls)


def test_clip_with_grad_scale_and_maximize_matches_reference(backend):
    param, grads = random_arrays(1031, np.float64, 19, 20)
    start = param.copy()
    opt = fastopt.SGD(param, lr=0.05, momentum=0.9, maximize=True, backend=backend)
    ref = Reference("sgd", start, lr=0.05, momentum=0.9, maximize=True)
    for g in grads:
        norm = opt.step(g * 8.0, grad_scale=8.0, max_grad_norm=5.0)
        assert norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
        ref.step(g * 8.0, grad_scale=8.0, clip=5.0)
    np.testing.assert_allclose(param, ref.p, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16], ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 8193, 100003])
def test_grad_norm(backend, dtype, n):
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n).astype(dtype)
    expected = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    # float64 accumulation of exactly representable squares: only summation rounding remains.
    assert fastopt.grad_norm(g, backend=backend) == pytest.approx(expected, rel=1e-12, abs=0)


def test_clip_grad_norm_(backend):
    g = np.full(100, 3.0, np.float32)
    norm = fastopt.clip_grad_norm_(g, 1.0, backend=backend)
    assert norm == pytest.approx(30.0)
    np.testing.assert_allclose(np.linalg.norm(g.astype(np.float64)), 1.0, rtol=1e-6)
    g2 = np.full(100, 0.01, np.float32)
    fastopt.clip_grad_norm_(g2, 1.0, backend=backend)
    assert np.all(g2 == np.float32(0.01))


@pytest.mark.parametrize("stored,declared", [(np.float16, None), (BF16, None), (np.uint16, "float16"),
                                             (np.uint16, "bfloat16")], ids=str)
def test_clip_grad_norm_scales_half_types_in_float32(backend, stored, declared):
    """Half-precision gradients, also uint16 declared with grad_dtype, are scaled in float32 and
    rounded once to their type, as torch does (not by a factor first rounded to half precision)."""
    half = {"float16": np.float16, "bfloat16": BF16}.get(declared, stored)
    values = (np.random.default_rng(21).standard_normal(1031) * 4).astype(half)
    g = values.view(np.uint16).copy() if declared else values.copy()
    norm = fastopt.clip_grad_norm_(g, 1.0, grad_dtype=declared, backend=backend)
    assert norm == pytest.approx(math.sqrt(float(np.sum(values.astype(np.float64) ** 2))), rel=1e-12)
    expected = (values.astype(np.float32) * np.float32(1.0 / (norm + 1e-6))).astype(half)
    assert np.array_equal(g.view(np.uint16), expected.view(np.uint16))


def test_stochastic_rounding_is_unbiased(backend):
    """Updates of 1e-4 are far below bfloat16's spacing at 1.0 (2^-7): rounding to nearest would
    never move the parameter, stochastic rounding moves it by the right amount on average."""
    n, steps, lr = 20000, 100, 1e-4
    p = np.ones(n, BF16)
    opt = fastopt.SGD(p, lr=lr, stochastic_rounding=True, seed=7, backend=backend)
    g = np.ones(n, BF16)
    for _ in range(steps):
        opt.step(g)
    mean = float(p.astype(np.float64).mean())
    # Each element is a sum of independent rounding errors, each at most one spacing (2^-8 below
    # 1.0): the mean over 20000 elements has a standard deviation below 2^-8 * 10 / sqrt(20000).
    assert abs(mean - (1 - steps * lr)) < 5 * 2**-8 * np.sqrt(steps) / np.sqrt(n)
    assert len(np.unique(p.astype(np.float32))) > 1


def test_stochastic_rounding_picks_a_neighbour_and_is_reproducible(backend):
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(4099).astype(BF16)
    g = rng.standard_normal(4099).astype(np.float32)
    exact = p0.astype(np.float32) - np.float32(0.01) * g  # one SGD step in float32
    runs = []
    for seed in (1, 1, 2):
        p = p0.copy()
        fastopt.SGD(p, lr=0.01, stochastic_rounding=True, seed=seed, backend=backend).step(g)
        runs.append(p.view(np.uint16).copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.any(runs[0] != runs[2])
    got = runs[0].view(BF16).astype(np.float32)
    down = exact.view(np.uint32) & np.uint32(0xFFFF0000)  # truncation: the neighbour towards zero
    up_bits = (exact.view(np.uint32) >> 16) + 1
    up = (up_bits << 16).astype(np.uint32)
    on_grid = (exact.view(np.uint32) & 0xFFFF) == 0
    ok = (got.view(np.uint32) == down) | ((got.view(np.uint32) == up) & ~on_grid)
    assert np.all(ok)


def _lowbias32(seed, i):
    """common.h element_random in Python integers: the hash of index i (64-bit) and the seed."""
    m = 0xFFFFFFFF
    x = ((i & m) ^ seed) + (i >> 32) * 0x9E3779B9 & m
    x ^= x >> 16
    x = x * 0x7FEB352D & m
    x ^= x >> 15
    x = x * 0x846CA68B & m
    return x ^ x >> 16


def test_numba_element_random_wraps_as_uint32():
    """The Numba hash runs in 32-bit arithmetic of its own: it must wrap exactly as C++'s uint32,
    also for indices past 2**32 (whose high half enters the hash)."""
    numba = pytest.importorskip("numba")
    from fastopt.numba.math import element_random

    hash_all = numba.njit(lambda seed, idx: [element_random(seed, i) for i in idx])
    idx = np.array([0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 3 * 2**40 + 12345, 2**62 + 99],
                   dtype=np.int64)
    for seed in (0, 1, 0x9E3779B9, 0xFFFFFFFF):
        got = hash_all(np.uint32(seed), idx)
        assert [int(v) for v in got] == [_lowbias32(seed, int(i)) for i in idx]


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the compiled and the Numba backend")
def test_stochastic_rounding_agrees_across_backends():
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal(70001).astype(BF16)
    grads = [rng.standard_normal(70001).astype(BF16) for _ in range(3)]
    results = []
    for backend in ("cpu", "numba"):
        p = p0.copy()
        opt = fastopt.Adam(p, lr=1e-3, stochastic_rounding=True, seed=3, backend=backend)
        for g in grads:
            opt.step(g)
        results.append(p.view(np.uint16))
    np.testing.assert_array_equal(results[0], results[1])


def test_stochastic_rounding_options_are_checked():
    with pytest.raises(TypeError, match="bfloat16"):
        fastopt.SGD(np.ones(4, np.float16), lr=0.1, stochastic_rounding=True)
    with pytest.raises(TypeError, match="master_weights"):
        fastopt.SGD(np.ones(4, BF16), lr=0.1)
    p = np.ones(4, BF16)
    with pytest.raises(TypeError, match="rounding_seed"):
        fastopt.functional.sgd(p, np.ones(4, BF16), lr=0.1, master_weights=np.ones(4, np.float32), rounding_seed=1)
    with pytest.raises(TypeError, match="rounding_seed must be an integer"):
        fastopt.functional.sgd(p, np.ones(4, BF16), lr=0.1, rounding_seed=1.5)
    assert np.all(p == 1)


def test_bfloat16_bits_round_like_ml_dtypes():
    """Ties to even, carries into the exponent and into infinity, NaN kept NaN, on arrays and floats."""
    u = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001,
                  0xFFFFFFFF, 0x00000001, 0x80008000], np.uint32)
    f = u.view(np.float32)
    got = fastopt._dtypes.bfloat16_bits(f)
    expected = f.astype(BF16).view(np.uint16)
    nan = np.isnan(f)
    assert np.array_equal(got[~nan], expected[~nan])
    assert np.all(np.isnan(got[nan].view(BF16).astype(np.float32)))
    assert np.array_equal(np.signbit(got[nan].view(BF16).astype(np.float32)), np.signbit(f[nan]))
    assert fastopt._dtypes.bfloat16_bits(1.00390625) == np.uint16(0x3F80)  # a tie: to even
