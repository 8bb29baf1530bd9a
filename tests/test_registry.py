"""The rule registry (fastopt.rules) against the C++ side, the backends against the kernel
interface, and docs/contributing.md followed on a toy rule defined here."""
import collections
import pathlib
import re
import types

import numpy as np
import pytest

import fastopt
from fastopt import rules
from fastopt.cuda import _nvrtc
from fastopt.rules import _base as b

ROOT = pathlib.Path(__file__).resolve().parents[1]
MATH = ROOT / "csrc" / "fastopt" / "math"


def _header_scalars(text):
    """The names of a header's Scalars<T>, in the order its constructor reads k[i]."""
    found = re.findall(r"(\w+)\(T\(k\[(\d+)\]\)\)", text)
    assert [int(i) for _, i in found] == list(range(len(found)))
    return tuple(name for name, _ in found)


@pytest.mark.parametrize("rule", rules.BUILTIN, ids=rules.RULE_NAMES)
def test_each_module_matches_its_header(rule):
    text = (MATH / f"{rules.RULE_MODULES[rule.ID]}.h").read_text()
    assert re.findall(r"^struct (\w+) \{", text, re.M) == [rule.NAME]
    assert f"kNumVariants = {rule.NUM_VARIANTS};" in text
    assert rule.Scalars._fields == _header_scalars(text)
    assert {cls.__name__ for cls in rule.CLASSES} == set(rule.NUMPY_BASELINES) == {n for n, _ in rule.BENCH}


def test_generated_rule_list_numbers_the_rules_as_the_registry():
    generated = pathlib.Path(_nvrtc.include_dir()) / "fastopt" / "math" / "rule_list.h"
    if not generated.exists():
        pytest.skip("rule_list.h not generated (run tools/build_inplace.sh)")
    listed = re.findall(r"X\((\w+), (\d+)\)", generated.read_text())
    assert listed == [(name, str(i)) for i, name in enumerate(rules.RULE_NAMES)]
    cpu = pytest.importorskip("fastopt._cpu")
    assert tuple(cpu.num_variants()) == rules.NUM_VARIANTS


def test_limits_fit_the_kernels():
    """The extension sizes its calls from the rule headers (fastopt/math/all.h): the same numbers
    the registry counts from the rule modules."""
    cpu = pytest.importorskip("fastopt._cpu")
    assert cpu.rule_scalars == rules.MAX_SCALARS
    assert rules.MAX_STATES <= cpu.state_slots
    import fastopt.cuda
    assert rules.MAX_SCALARS <= fastopt.cuda.NUM_RULE_SCALARS


def test_public_names_come_from_the_registry():
    classes = [cls.__name__ for cls in rules.classes()]
    assert [c.__name__ for c in fastopt.optim.OPTIMIZERS] == classes
    assert all(name in fastopt.__all__ and getattr(fastopt, name) is getattr(fastopt.optim, name) for name in classes)
    assert [fn.__name__ for fn in rules.functions()] == fastopt.functional.__all__[1:]


def test_every_backend_implements_every_kernel_family():
    import fastopt.cuda
    import fastopt.numba
    from fastopt._kernel_call import FAMILIES
    modules = [fastopt.numba, fastopt.cuda]
    try:
        from fastopt import _cpu
        modules.append(_cpu)
    except ImportError:  # pragma: no cover - the extension is built in CI
        pass
    for module in modules:
        missing = [family for family in FAMILIES if not callable(getattr(module, family, None))]
        assert not missing, (module.__name__, missing)


# ---- docs/contributing.md, on a toy rule: s = s + g; p = p - lr * s (Numba only) -------------

def _toy_rule():
    toy = types.ModuleType("toy")
    toy.NAME = "Toy"
    toy.NUM_VARIANTS = 1
    toy.STATES = ("total",)
    toy.Scalars = collections.namedtuple("ToyScalars", "lr")

    def host_scalars(lr):
        return 0, toy.Scalars(lr)

    def numba_update(v, p, g, total, s1, s2, k, c):
        total = total + g
        return p - k.lr * total, total, s1, s2

    def toy_step(param, grad, total, *, lr=0.1, weight_decay=0.0, **options):
        lr = b.nonnegative("lr", lr)
        o = b.step_options(weight_decay, options)
        variant, scalars = host_scalars(lr)
        return b.fused_step(toy.ID, variant, scalars, param, grad, [("total", total)], o, lr=lr, decoupled=False)

    class Toy(b.Optimizer):
        _state_array_names = toy.STATES
        _options = b.option_table(lr=b.nonnegative, weight_decay=b.nonnegative, maximize=b.flag)

        def __init__(self, params, lr=0.1, weight_decay=0, *, maximize=False, **options):
            super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize), **options)

        def _state_names(self, h):
            return toy.STATES

        def _rule_scalars(self, h, step, p):
            variant, scalars = host_scalars(h["lr"])
            return variant, scalars, False, {}

    toy.host_scalars, toy.numba_update, toy.toy_step = host_scalars, numba_update, toy_step
    toy.CLASSES, toy.FUNCTIONS, toy.NUMPY_BASELINES, toy.BENCH = (Toy,), (toy_step,), {}, ()
    return toy


@pytest.fixture
def toy():
    pytest.importorskip("numba")
    rule = rules.register(_toy_rule())
    yield rule
    rules.unregister(rule)


def _numpy_toy(p, grads, lr):
    p, total = p.copy(), np.zeros_like(p)
    for g in grads:
        total = total + g
        p = p - np.float32(lr) * total
    return p


def test_a_toy_rule_registered_at_run_time_runs_on_numba(toy):
    rng = np.random.default_rng(5)
    start = rng.standard_normal(1031).astype(np.float32)
    grads = [rng.standard_normal(1031).astype(np.float32) for _ in range(4)]
    expected = _numpy_toy(start, grads, 0.1)

    p, total = start.copy(), np.zeros_like(start)
    for g in grads:
        result = toy.toy_step(p, g, total, lr=0.1, backend="numba")
        assert not result.skipped
    np.testing.assert_array_equal(p, expected)

    (cls,) = toy.CLASSES
    p = start.copy()
    opt = cls(p, lr=0.1, backend="numba")
    for g in grads:
        opt.step(g)
    np.testing.assert_array_equal(p, expected)
    assert opt.state_dict()["state"][0]["step"] == 4
    with pytest.raises(ValueError, match="lr"):
        toy.toy_step(p, grads[0], total, lr=-1.0, backend="numba")
    with pytest.raises(TypeError, match="unexpected keyword"):
        toy.toy_step(p, grads[0], total, lr=0.1, bakend="numba")


def test_compiled_checks_accept_exactly_the_dtype_table():
    """The extension's step_codes (the C++ side of the dtype rules) against _dtypes.STEP_COMBINATIONS."""
    from fastopt import _backend, _dtypes
    if not _backend.BACKENDS["cpu"].available or _dtypes.BFLOAT16 is None:
        pytest.skip("needs the extension and ml_dtypes")
    step_codes = _backend.BACKENDS["cpu"].module.step_codes
    dtypes = {_dtypes.CODE_FLOAT32: np.float32, _dtypes.CODE_FLOAT64: np.float64,
              _dtypes.CODE_FLOAT16: np.float16, _dtypes.CODE_BFLOAT16: _dtypes.BFLOAT16}
    accepted = set()
    for p, g, s in ((p, g, s) for p in dtypes for g in dtypes for s in dtypes):
        for mode in ("plain", "master", "seeded"):
            master = np.zeros(8, np.float32) if mode == "master" else None
            arrays = [np.zeros(8, dtypes[c]) for c in (p, g, s)]
            codes = step_codes(arrays[0], arrays[1], master, (arrays[2],), mode == "seeded")
            if codes is not None:
                assert codes == (p, g, s)
                accepted.add((p, g, s, mode))
    half_modes = {_dtypes.CODE_FLOAT16: ("master",), _dtypes.CODE_BFLOAT16: ("master", "seeded")}
    expected = {(p, g, s, mode) for p, g, s in _dtypes.STEP_COMBINATIONS for mode in half_modes.get(p, ("plain",))}
    assert accepted == expected
