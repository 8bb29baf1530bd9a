"""Bad input raises ValueError or TypeError naming the argument, before anything is written:
every array passed to a failing call is bit-identical afterwards."""
import itertools
import math
import types

import numpy as np
import pytest

import fastopt
import rule_table
from fastopt import functional as F
from conftest import CPU_BACKENDS

N = 37


def fresh(n=N, dtype=np.float32, count=4):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


class FakeCupyArray:
    """Stands for a CuPy array (array_kind looks at the type's module) in a machine without CuPy:
    float32, C-contiguous, on GPU `device`, at a fake device address of its own."""

    __module__ = "cupy._core.core"
    _next_address = 1 << 40

    def __init__(self, n, device=0):
        self.size, self.dtype, self.nbytes = n, np.dtype(np.float32), 4 * n
        self.shape, self.itemsize = (n,), 4
        self.flags = types.SimpleNamespace(c_contiguous=True)
        self.device = types.SimpleNamespace(id=device)
        self.data = types.SimpleNamespace(ptr=FakeCupyArray._next_address)
        FakeCupyArray._next_address += 4 * n + 256


def adam_call(p, g, m, v, vmax=None, **overrides):
    kwargs = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    kwargs.update(overrides)
    return lambda: F.adam(p, g, m, v, vmax, **kwargs)


def _cases():
    """(id, builder) pairs; a builder returns (call, arrays the call must leave untouched, error, match)."""
    cases = []

    def case(name, error, match):
        def register(builder):
            cases.append(pytest.param(builder, error, match, id=name))
            return builder
        return register

    @case("param-not-an-array", TypeError, "param must be a NumPy or CuPy array")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(list(p), g, m, v, backend=backend), [g, m, v]

    @case("grad-size", ValueError, "grad has 36 elements but param has 37")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g[:-1], m, v, backend=backend), [p, g, m, v]

    @case("grad-dtype", TypeError, "grad must have param's dtype float32")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g.astype(np.float64), m, v, backend=backend), [p, m, v]

    @case("param-int", TypeError, "param has dtype int32")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p.astype(np.int32), g, m, v, backend=backend), [g, m, v]

    @case("param-strided", TypeError, "param must be C-contiguous")
    def _(backend):
        big, g, m, v = fresh(2 * N)
        return adam_call(big[::2], g[:N], m[:N], v[:N], backend=backend), [big, g, m, v]

    @case("param-read-only", TypeError, "param is read-only")
    def _(backend):
        p, g, m, v = fresh()
        p.flags.writeable = False
        return adam_call(p, g, m, v, backend=backend), [p, g, m, v]

    @case("state-read-only", TypeError, "exp_avg is read-only")
    def _(backend):
        p, g, m, v = fresh()
        m.flags.writeable = False
        return adam_call(p, g, m, v, backend=backend), [p, g, m, v]

    @case("state-size", ValueError, "exp_avg_sq has 36 elements but param has 37")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m, v[:-1], backend=backend), [p, g, m, v]

    @case("state-dtype", TypeError, "exp_avg must be float32 or bfloat16")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m.astype(np.float64), v, backend=backend), [p, g, v]

    @case("state-dtypes-differ", TypeError, "all state arrays share one dtype")
    def _(backend):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        p, g, m, v = fresh()
        return adam_call(p, g, m, v.astype(ml_dtypes.bfloat16), backend=backend), [p, g, m]

    @case("param-is-state", TypeError, "share memory")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, p, v, backend=backend), [p, g, v]

    @case("states-overlap", TypeError, "share memory")
    def _(backend):
        buf, g, p, _ = fresh(2 * N)
        return adam_call(p[:N], g[:N], buf[:N], buf[N // 2:N // 2 + N], backend=backend), [buf, g, p]

    @case("grad-is-state", TypeError, "share memory")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, m, m, v, backend=backend), [p, m, v]

    @case("grad-misaligned", TypeError, "grad is not aligned")
    def _(backend):
        p, g, m, v = fresh()
        raw = np.zeros(4 * N + 1, np.uint8)
        g_odd = raw[1:].view(np.float32)  # a float32 view at an odd byte offset
        g_odd[...] = g
        return adam_call(p, g_odd, m, v, backend=backend), [p, raw, m, v]

    @case("state-misaligned", TypeError, "exp_avg is not aligned")
    def _(backend):
        p, g, m, v = fresh()
        raw = np.zeros(4 * N + 2, np.uint8)
        m_odd = raw[2:].view(np.float32)
        return adam_call(p, g, m_odd, v, backend=backend), [p, g, raw, v]

    @case("param-byte-swapped", TypeError, "param has dtype >f4")
    def _(backend):
        p, g, m, v = fresh()
        p_be = p.astype(">f4")
        return adam_call(p_be, g.astype(">f4"), m, v, backend=backend), [p_be, m, v]

    @case("master-size", ValueError, "master_weights has 36 elements but param has 37")
    def _(backend):
        p, g, m, v = fresh()
        p16, g16, master = p.astype(np.float16), g.astype(np.float16), p[:-1].copy()
        return adam_call(p16, g16, m, v, master_weights=master, backend=backend), [p16, g16, m, v, master]

    @case("master-overlaps-state", TypeError, "share memory")
    def _(backend):
        p, g, m, v = fresh()
        p16, g16 = p.astype(np.float16), g.astype(np.float16)
        return adam_call(p16, g16, m, v, master_weights=m, backend=backend), [p16, g16, m, v]

    @case("nadam-mu-product-aliases-param", TypeError, "param and mu_product share memory")
    def _(backend):
        p, g, m, v = (a.astype(np.float64) for a in fresh())
        p[5] = 1.0  # a valid mu_product value, so only the aliasing is wrong
        return (lambda: F.nadam(p, g, m, v, p[5:6], step=1, backend=backend)), [p, g, m, v]

    @case("amsgrad-without-buffer", TypeError, "max_exp_avg_sq is required")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m, v, amsgrad=True, backend=backend), [p, g, m, v]

    for value, error, match in [(-1.0, ValueError, "Invalid lr: -1.0"), (math.nan, ValueError, "lr must not be NaN"),
                                (math.inf, ValueError, "Invalid lr: inf"), ("0.1", TypeError, "lr must be a real number")]:
        @case(f"lr-{value}", error, match)
        def _(backend, value=value):
            p, g, m, v = fresh()
            return adam_call(p, g, m, v, lr=value, backend=backend), [p, g, m, v]

    for name, value, match in [("beta1", 1.0, "Invalid beta1: 1.0"), ("beta1", -0.1, "Invalid beta1"),
                               ("beta2", math.nan, "beta2 must not be NaN"),
                               ("eps", -1e-8, "Invalid eps"), ("eps", math.inf, "Invalid eps"),
                               ("weight_decay", -0.1, "Invalid weight_decay"), ("weight_decay", math.nan, "weight_decay"),
                               ("grad_scale", 0.0, "Invalid grad_scale"), ("grad_scale", math.inf, "Invalid grad_scale"),
                               ("max_grad_norm", 0.0, "Invalid max_grad_norm")]:
        @case(f"{name}-{value}", ValueError, match)
        def _(backend, name=name, value=value):
            p, g, m, v = fresh()
            return adam_call(p, g, m, v, backend=backend, **{name: value}), [p, g, m, v]

    for step, error in [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]:
        @case(f"step-{step}", error, "step must be")
        def _(backend, step=step):
            p, g, m, v = fresh()
            return adam_call(p, g, m, v, step=step, backend=backend), [p, g, m, v]

    @case("sgd-negative-momentum", ValueError, "Invalid momentum")
    def _(backend):
        p, g, buf, _ = fresh()
        return (lambda: F.sgd(p, g, buf, lr=0.1, momentum=-0.5, step=1, backend=backend)), [p, g, buf]

    @case("sgd-nesterov-without-momentum", ValueError, "Nesterov momentum requires a momentum")
    def _(backend):
        p, g, buf, _ = fresh()
        return (lambda: F.sgd(p, g, buf, lr=0.1, nesterov=True, backend=backend)), [p, g, buf]

    @case("sgd-momentum-without-step", TypeError, "step is required with momentum")
    def _(backend):
        p, g, buf, _ = fresh()
        return (lambda: F.sgd(p, g, buf, lr=0.1, momentum=0.9, backend=backend)), [p, g, buf]

    @case("rmsprop-centered-without-grad-avg", TypeError, "grad_avg is required")
    def _(backend):
        p, g, sq, _ = fresh()
        return (lambda: F.rmsprop(p, g, sq, centered=True, backend=backend)), [p, g, sq]

    @case("rmsprop-alpha", ValueError, "Invalid alpha")
    def _(backend):
        p, g, sq, _ = fresh()
        return (lambda: F.rmsprop(p, g, sq, alpha=1.5, backend=backend)), [p, g, sq]

    @case("half-without-master", TypeError, "needs float32 master weights")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p.astype(np.float16), g.astype(np.float16), m, v, backend=backend), [g, m, v]

    @case("master-dtype", TypeError, "master_weights must be float32")
    def _(backend):
        p, g, m, v = fresh()
        p16, g16 = p.astype(np.float16), g.astype(np.float16)
        return adam_call(p16, g16, m, v, master_weights=p.astype(np.float64), backend=backend), [p16, g16, m, v]

    @case("master-for-float32", TypeError, "master_weights is only for float16")
    def _(backend):
        p, g, m, v = fresh()
        master = p.copy()
        return adam_call(p, g, m, v, master_weights=master, backend=backend), [p, g, m, v, master]

    @case("numpy-and-cupy-mixed", TypeError, "cannot mix NumPy and CuPy")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, FakeCupyArray(N), m, v, backend=backend), [p, m, v]

    @case("cupy-state-for-numpy-param", TypeError, "exp_avg_sq must be a numpy array like param, got cupy")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m, FakeCupyArray(N), backend=backend), [p, g, m]

    @case("cupy-master-for-numpy-param", TypeError, "master_weights must be the same kind of array")
    def _(backend):
        p, g, m, v = fresh()
        p16, g16 = p.astype(np.float16), g.astype(np.float16)
        return adam_call(p16, g16, m, v, master_weights=FakeCupyArray(N), backend=backend), [p16, g16, m, v]

    @case("cupy-arrays-on-two-gpus", ValueError, "exp_avg_sq is on GPU 1 but param is on GPU 0")
    def _(backend):
        return adam_call(*(FakeCupyArray(N) for _ in range(3)), FakeCupyArray(N, device=1)), []

    @case("cupy-master-on-another-gpu", ValueError, "master_weights is on GPU 1 but param is on GPU 0")
    def _(backend):
        p16, g16 = FakeCupyArray(N), FakeCupyArray(N)
        p16.dtype = g16.dtype = np.dtype(np.float16)
        return adam_call(p16, g16, FakeCupyArray(N), FakeCupyArray(N),
                         master_weights=FakeCupyArray(N, device=1)), []

    for label, make_param, extra, match in [
            ("float32", lambda p: p, {}, "rounding_seed is only for bfloat16"),
            ("float16", lambda p: p.astype(np.float16), {}, "rounding_seed\\) is for bfloat16 params"),
            ("with-master", lambda p: p.astype(np.float16), "master", "rounding_seed is for bfloat16 params without"),
            ("not-an-int", lambda p: p, {"rounding_seed": "7"}, "rounding_seed must be an integer")]:
        @case(f"rounding-seed-{label}", TypeError, match)
        def _(backend, make_param=make_param, extra=extra):
            p, g, m, v = fresh()
            param = make_param(p)
            grad = g.astype(param.dtype)
            options = {"rounding_seed": 7}
            arrays = [param, grad, m, v]
            if extra == "master":
                options["master_weights"] = p.copy()
                arrays.append(options["master_weights"])
            elif extra:
                options.update(extra)
            return adam_call(param, grad, m, v, backend=backend, **options), arrays

    @case("nadam-mu-product", TypeError, "mu_product must be")
    def _(backend):
        p, g, m, v = fresh()
        return (lambda: F.nadam(p, g, m, v, 1.0, step=1, backend=backend)), [p, g, m, v]

    @case("backend-name", ValueError, "backend must be one of")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m, v, backend="gpu"), [p, g, m, v]

    @case("cuda-for-numpy", TypeError, "computes on cupy arrays")
    def _(backend):
        p, g, m, v = fresh()
        return adam_call(p, g, m, v, backend="cuda"), [p, g, m, v]

    return cases


@pytest.mark.parametrize("builder, error, match", _cases())
def test_bad_input_raises_and_writes_nothing(backend, builder, error, match):
    call, arrays = builder(backend)
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        call()
    for old, new in zip(before, arrays):
        np.testing.assert_array_equal(old.view(np.uint8), new.view(np.uint8))


# ---- the stateful classes ---------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, match", [(cls, kw, match) for cls, bad in rule_table.rows("bad")
                                               for kw, match in bad])
def test_constructor_rejects_bad_hyperparameters(cls, kwargs, match):
    p = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=match):
        cls(p, **kwargs)
    assert np.all(p == 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(master_weights=True), "master_weights"), (dict(state_dtype="float16"), "state_dtype"),
])
def test_constructor_rejects_bad_options(kwargs, match):
    with pytest.raises(TypeError, match=match):
        fastopt.Adam(np.ones(8, np.float32), **kwargs)


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("cls", [cls for cls, _ in rule_table.rows("sample")])
@pytest.mark.parametrize("param, match", [
    ([1.0, 2.0], "param must be a NumPy or CuPy array"), (np.ones(8, np.int32), "param has dtype int32"),
    (np.ones(16, np.float32)[::2], "param must be C-contiguous"), (np.ones((4, 4), np.float32).T, "C-contiguous"),
    (_read_only(np.ones(8, np.float32)), "param is read-only"),
    (np.ones(8, np.float16), "need master_weights=True"),
])
def test_constructor_rejects_bad_param(cls, param, match):
    with pytest.raises(TypeError, match=match):
        cls(param, lr=0.1)


def test_class_step_rejects_bad_grad_and_writes_nothing(backend):
    p = np.ones(16, np.float32)
    opt = fastopt.Adam(p, lr=0.1, backend=backend)
    opt.step(np.ones(16, np.float32))
    snapshot = opt.state_dict()
    p_before = p.copy()
    for bad, error in [(np.ones(15, np.float32), ValueError), (np.ones(16, np.float64), TypeError),
                       (opt.state["exp_avg"], TypeError), (np.ones(32, np.float32)[::2], TypeError)]:
        with pytest.raises(error):
            opt.step(bad)
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.step(np.ones(16, np.float32), max_grad_norm=-1.0)
    np.testing.assert_array_equal(p, p_before)
    assert opt.state["step"] == snapshot["state"]["step"] == 1
    np.testing.assert_array_equal(opt.state["exp_avg"], snapshot["state"]["exp_avg"])


def test_bad_attribute_assignment_keeps_the_old_value():
    opt = fastopt.RMSprop(np.ones(4, np.float32), lr=0.01)
    for name, value in [("lr", math.nan), ("alpha", 2.0), ("eps", -1.0), ("momentum", -0.1)]:
        old = getattr(opt, name)
        with pytest.raises(ValueError):
            setattr(opt, name, value)
        assert getattr(opt, name) == old


def test_load_state_dict_that_does_not_fit_changes_nothing():
    p = np.ones(8, np.float32)
    opt = fastopt.Adam(p, lr=0.1)
    opt.step(np.ones(8, np.float32))
    good = opt.state_dict()
    bad = opt.state_dict()
    bad["state"]["exp_avg"] = np.zeros(9, np.float32)
    bad["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    assert opt.lr == 0.1
    np.testing.assert_array_equal(opt.state["exp_avg"], good["state"]["exp_avg"])
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="state_dict"):
        opt.load_state_dict({"state": {}})


def test_utilities_validate():
    with pytest.raises(ValueError, match="num_threads"):
        fastopt.set_num_threads(0)
    with pytest.raises(ValueError, match="use_backend"):
        with fastopt.use_backend("tpu"):
            pass
    with pytest.raises(ValueError, match="max_norm"):
        fastopt.clip_grad_norm_(np.ones(4, np.float32), -1.0)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        fastopt.clip_grad_norm_(ro, 1.0)
    with pytest.raises(TypeError, match="grad has dtype int64"):
        fastopt.grad_norm(np.ones(4, np.int64))
    with pytest.raises(ValueError, match="negative dimension"):
        fastopt.FlatParams([(3, -1)])


def test_replaced_state_array_is_validated_and_used(backend):
    """The step caches validation per grad object; assigning a new state array must not bypass it."""
    p = np.ones(16, np.float32)
    g = np.ones(16, np.float32)
    opt = fastopt.Adam(p, lr=0.1, backend=backend)
    opt.step(g)
    replacement = opt.state["exp_avg"].copy()
    opt.state["exp_avg"] = replacement
    opt.step(g)
    assert opt.state["step"] == 2 and replacement[0] == np.float32(0.9 * 0.1 + 0.1)  # the new array was stepped
    p_before, m_before = p.copy(), replacement.copy()
    opt.state["exp_avg"] = np.zeros(15, np.float32)
    with pytest.raises(ValueError, match="exp_avg has 15 elements"):
        opt.step(g)
    opt.state["exp_avg"] = p  # aliasing the parameter
    with pytest.raises(TypeError, match="share memory"):
        opt.step(g)
    np.testing.assert_array_equal(p, p_before)
    np.testing.assert_array_equal(replacement, m_before)
    assert opt.state["step"] == 2


def test_none_grad_is_refused_even_after_a_cached_step(backend):
    p = np.ones(8, np.float32)
    opt = fastopt.SGD(p, lr=0.1, backend=backend)
    opt.step(np.ones(8, np.float32))
    opt.load_state_dict(opt.state_dict())  # drops the cached validation
    before = p.copy()
    with pytest.raises(TypeError, match="grad must be a NumPy or CuPy array"):
        opt.step(None)
    np.testing.assert_array_equal(p, before)


def test_same_grad_with_another_declared_dtype_is_revalidated(backend):
    p = np.ones(8, np.float32)
    g = np.ones(8, np.float32)
    opt = fastopt.SGD(p, lr=0.1, backend=backend)
    opt.step(g)
    with pytest.raises(TypeError, match="grad has dtype float32 \\(declared bfloat16\\)"):
        opt.step(g, grad_dtype="bfloat16")
    assert np.all(p == np.float32(0.9))


@pytest.mark.parametrize("step, error", [(0.0, TypeError), (-1, ValueError), (2.5, TypeError)])
def test_load_state_dict_checks_the_step_count(step, error):
    opt = fastopt.Adam(np.ones(4, np.float32), lr=0.1)
    sd = opt.state_dict()
    sd["state"]["step"] = step
    with pytest.raises(error, match="step must be"):
        opt.load_state_dict(sd)
    assert opt.state["step"] == 0


@pytest.mark.parametrize("value, error", [("x", TypeError), (math.nan, ValueError), (math.inf, ValueError)])
def test_load_state_dict_checks_scalar_state(value, error):
    opt = fastopt.NAdam(np.ones(4, np.float32), lr=0.1)
    opt.step(np.ones(4, np.float32))
    sd = opt.state_dict()
    good = sd["state"]["mu_product"]
    sd["state"]["mu_product"] = value
    sd["param_groups"][0]["lr"] = 0.5
    with pytest.raises(error, match="mu_product"):
        opt.load_state_dict(sd)
    assert opt.state["mu_product"] == good and opt.lr == 0.1


def _functional_calls():
    """Every functional optimizer of the rule table with valid arrays (states for their richest
    options)."""
    calls = {}
    for cls, (count, options, *scalar_states) in rule_table.rows("functional"):
        name = cls.__name__.lower()
        states = [np.zeros(N, np.float32) for _ in range(count)] + [np.ones(1) for _ in range(sum(scalar_states))]
        calls[name] = (getattr(F, name), states, options)
    return calls


def _real_hyperparameters(fn):
    import inspect
    return [name for name, prm in inspect.signature(fn).parameters.items()
            if prm.kind is prm.KEYWORD_ONLY and isinstance(prm.default, float)]


@pytest.mark.parametrize("rule", sorted(_functional_calls()))
def test_every_real_hyperparameter_rejects_nan_and_writes_nothing(backend, rule):
    fn, state_arrays, options = _functional_calls()[rule]
    names = _real_hyperparameters(fn)
    assert "lr" in names and len(names) >= 2  # the signature lookup found the hyper-parameters
    p, g = fresh(count=2)
    arrays = [p, g] + state_arrays
    before = [a.copy() for a in arrays]
    for name in names:
        with pytest.raises(ValueError, match=f"{name} must not be NaN"):
            fn(*arrays, **{**options, name: math.nan}, backend=backend)
        with pytest.raises(ValueError, match=f"Invalid {name}: -1.0"):
            fn(*arrays, **{**options, name: -1.0}, backend=backend)
    for old, new in zip(before, arrays):
        np.testing.assert_array_equal(old.view(np.uint8), new.view(np.uint8))
    fn(*arrays, **options, backend=backend)  # and the same call with valid values does step
    assert not np.array_equal(p, before[0])


def test_param_made_read_only_after_a_cached_step_is_refused_by_name(backend):
    p = np.ones(8, np.float32)
    g = np.ones(8, np.float32)
    opt = fastopt.Adam(p, lr=0.1, backend=backend)
    opt.step(g)
    before, m_before = p.copy(), opt.state["exp_avg"].copy()
    p.flags.writeable = False
    with pytest.raises(TypeError, match="param is read-only"):
        opt.step(g)
    np.testing.assert_array_equal(p, before)
    np.testing.assert_array_equal(opt.state["exp_avg"], m_before)
    assert opt.state["step"] == 1
    p.flags.writeable = True
    opt.step(g)
    assert opt.state["step"] == 2 and not np.array_equal(p, before)


# ---- the compiled fast path of the array checks -----------------------------------------------

def _array_variants(dtype, n=N):
    """(label, array) of `dtype`: valid, and each way an array can be refused or tricky."""
    base = np.zeros(n, dtype)
    strided = np.zeros(2 * n, dtype)[::2]
    read_only = np.zeros(n, dtype)
    read_only.flags.writeable = False
    raw = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    misaligned = raw[1:].view(dtype) if np.dtype(dtype).itemsize > 1 else None
    variants = [("ok", base), ("short", np.zeros(n - 1, dtype)), ("strided", strided),
                ("read-only", read_only), ("empty", np.zeros(0, dtype)), ("2d", np.zeros((1, n), dtype))]
    if misaligned is not None:
        variants.append(("misaligned", misaligned))
    return variants


def _step_array_cases():
    """(param, grad, master, states, seeded) combinations over every dtype, option and fault."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtypes = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int32, np.dtype(">f4"), np.uint16]
    fresh_of = {np.dtype(d): np.zeros(N, d) for d in dtypes}
    cases = []
    # Every dtype combination of param, grad, master and two states, valid layouts.
    for p_dt, g_dt in itertools.product(dtypes, dtypes):
        for m_dt in (None, np.float32, np.float64, np.float16):
            for state_dts in ((), (np.float32,), (np.float64,), (ml_dtypes.bfloat16,), (np.float16,),
                              (np.float32, np.float32), (np.float32, ml_dtypes.bfloat16),
                              (np.float64, np.float64), (ml_dtypes.bfloat16, ml_dtypes.bfloat16)):
                for seeded in (False, True):
                    param = np.zeros(N, p_dt)
                    grad = np.zeros(N, g_dt)
                    master = None if m_dt is None else np.zeros(N, m_dt)
                    states = tuple(np.zeros(N, d) for d in state_dts)
                    cases.append((param, grad, master, states, seeded))
    # Each layout fault (and the empty edge) in each position of valid float32 and half steps.
    for p_dt, g_dt, m_dt, s_dt in [(np.float32, np.float32, None, np.float32),
                                   (np.float16, np.float32, np.float32, np.float32),
                                   (ml_dtypes.bfloat16, ml_dtypes.bfloat16, np.float32, ml_dtypes.bfloat16)]:
        def valid():
            return [np.zeros(N, p_dt), np.zeros(N, g_dt), None if m_dt is None else np.zeros(N, m_dt),
                    (np.zeros(N, s_dt), np.zeros(N, s_dt))]
        for position in range(5):
            dtype = [p_dt, g_dt, m_dt, s_dt, s_dt][position]
            if dtype is None:
                continue
            for _, variant in _array_variants(dtype):
                param, grad, master, (s0, s1) = valid()
                slots = [param, grad, master, s0, s1]
                slots[position] = variant
                cases.append((slots[0], slots[1], slots[2], (slots[3], slots[4]), False))
        # Aliasing: every pair of arrays sharing memory, and empty arrays (which share none).
        param, grad, master, (s0, s1) = valid()
        cases.append((param, param.view(g_dt) if np.dtype(g_dt) == np.dtype(p_dt) else grad, master, (s0, s1), False))
        cases.append((param, grad, master, (s0, s0), False))
        cases.append((param, grad, master, (s0, s0[::-1].copy()), False))
        cases.append((param, s0.view(g_dt) if np.dtype(g_dt) == np.dtype(s_dt) else grad, master, (s0, s1), False))
        if master is not None:
            cases.append((param, grad, master, (master.view(s_dt) if np.dtype(s_dt) == np.float32 else s0, s1), False))
        buf = np.zeros(2 * N, s_dt)
        cases.append((param, grad, master, (buf[:N], buf[N // 2:N // 2 + N]), False))
        cases.append((param, grad, master, (buf[:N], buf[N:]), False))  # adjacent, not overlapping
        cases.append((param[:0], grad[:0], None if master is None else master[:0], (s0[:0], s0[:0]), False))
    cases.append((fresh_of[np.dtype(np.float32)], [0.0] * N, None, (), False))
    cases.append((fresh_of[np.dtype(np.float32)], fresh_of[np.dtype(np.float32)].copy(), None, (None,), False))
    return cases


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="compiled extension not available")
def test_compiled_array_checks_accept_exactly_what_the_python_checks_accept():
    """step_arrays' fast path (csrc/bind_checks.cpp) must refuse whatever python_step_arrays
    refuses (its error message comes from there) and give the same dtype codes otherwise."""
    from fastopt import _checks

    fast = _checks._fast_step_codes()
    accepted = refused = 0
    for param, grad, master, states, seeded in _step_array_cases():
        named = [(f"state{i}", s) for i, s in enumerate(states)]
        try:
            arrays = _checks.python_step_arrays(param, grad, named, master, None, None, 7 if seeded else None)
        except (TypeError, ValueError):
            expected = None
            refused += 1
        else:
            expected = (arrays.param_code, arrays.grad_code, arrays.state_code)
            accepted += 1
        got = fast(param, grad, master, states, seeded)
        assert got == expected, (param.dtype, getattr(grad, "dtype", None), getattr(master, "dtype", None),
                                 [getattr(s, "dtype", None) for s in states], seeded)
    assert accepted > 50 and refused > 1000, (accepted, refused)  # the cases reach both outcomes
