"""A list of separate arrays is stepped by one kernel call (the segment table) and gives the bits
of stepping each array on its own: every rule and variant, every dtype combination, odd sizes and
sizes past the parallel threshold, so threads split the range across arrays."""
import numpy as np
import pytest

import fastopt
import rule_table
from conftest import random_arrays
from test_optimizers import CASES, CASE_IDS

pytestmark = pytest.mark.skipif(not fastopt.backends()["cpu"]["available"], reason="needs the compiled extension")

BF16 = pytest.importorskip("ml_dtypes").bfloat16
# Odd sizes, and sizes past the parallel threshold (32768): with 2 threads, chunk boundaries then
# fall inside arrays and a chunk spans several arrays.
SIZES = [1, 7, 1031, 40000, 64, 70001, 33]


def _arrays(dtype, grad_dtype, seed):
    params, grads = [], []
    for j, n in enumerate(SIZES):
        p, gs = random_arrays(n, np.float32, seed + j, 3)
        params.append(p.astype(dtype))
        grads.append([g.astype(grad_dtype) for g in gs])
    return params, grads


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _step_both(cls, kwargs, dtype, grad_dtype, options, monkeypatch):
    params, grads = _arrays(dtype, grad_dtype, 5)
    together = [p.copy() for p in params]
    separate = [p.copy() for p in params]
    # Two groups with different hyper-parameters ride in the same call.
    split = 3
    lr = cls(np.zeros(1, np.float64), **kwargs).defaults["lr"]
    groups = [{"params": together[:split]}, {"params": together[split:], "lr": lr * 0.5}]
    opt = cls(groups, **kwargs, **options)
    singles = []
    for j, p in enumerate(separate):
        kw = dict(kwargs, lr=lr * (0.5 if j >= split else 1.0))
        extra = dict(options, seed=options["seed"] + j) if "seed" in options else options
        singles.append(cls(p, **kw, **extra))
    module = fastopt._backend.BACKENDS["cpu"].module
    calls = {"multi": 0, "single": 0}
    real_multi, real_single = module.multi_step, module.optimizer_step

    class Counting:
        def __getattr__(self, name):
            return getattr(module, name)

        def multi_step(self, *args):
            calls["multi"] += 1
            return real_multi(*args)

        def optimizer_step(self, *args):
            calls["single"] += 1
            return real_single(*args)

    fastopt.set_num_threads(2)
    freezes = cls.__name__ not in rule_table.names("group_schedule")
    for step in range(3):
        monkeypatch.setattr(fastopt._backend.BACKENDS["cpu"], "_module", Counting())
        # A frozen array on the second step: it is left out of the table and does not advance
        # (not for a rule whose schedule advances per group whatever is frozen: no single-array twin).
        frozen = 4 if step == 1 and freezes else None
        # The global norm is computed over the list (a bound above it keeps the factor 1 exactly).
        opt.step([None if j == frozen else g[step] for j, g in enumerate(grads)], max_grad_norm=1e9)
        monkeypatch.setattr(fastopt._backend.BACKENDS["cpu"], "_module", module)
        assert calls == {"multi": step + 1, "single": 0}
        for j, (single, g) in enumerate(zip(singles, grads)):
            if j != frozen:
                single.step(g[step])
    for j, (a, b) in enumerate(zip(together, separate)):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"param {j} (size {SIZES[j]})")
        state, ref = opt.state[j], singles[j].state
        assert state["step"] == ref["step"] == (2 if j == 4 and freezes else 3)
        for name, value in ref.items():
            if hasattr(value, "shape"):
                np.testing.assert_array_equal(_bits(state[name]), _bits(value), err_msg=f"{name} of param {j}")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_segment_table_equals_stepping_each_array(case, monkeypatch):
    _, cls, kwargs = CASES[case]
    _step_both(cls, kwargs, np.float32, np.float32, {}, monkeypatch)


DTYPE_COMBOS = [
    ("f64", np.float64, np.float64, {}),
    ("f32-bf16-state", np.float32, np.float32, dict(state_dtype="bfloat16")),
    ("f16-master", np.float16, np.float16, dict(master_weights=True)),
    ("f16-master-f32-grad", np.float16, np.float32, dict(master_weights=True)),
    ("bf16-master-bf16-state", BF16, BF16, dict(master_weights=True, state_dtype="bfloat16")),
    ("bf16-master-f32-grad", BF16, np.float32, dict(master_weights=True)),
    ("bf16-stochastic", BF16, BF16, dict(stochastic_rounding=True, seed=11)),
    ("bf16-stochastic-f32-grad-bf16-state", BF16, np.float32,
     dict(stochastic_rounding=True, seed=3, state_dtype="bfloat16")),
]
RULES = [(fastopt.AdamW, dict(lr=0.01, amsgrad=True)), (fastopt.SGD, dict(lr=0.05, momentum=0.9)),
         (fastopt.NAdam, dict(lr=0.01)), (fastopt.RMSprop, dict(lr=0.01, centered=True, momentum=0.5))]


@pytest.mark.parametrize("combo", DTYPE_COMBOS, ids=[c[0] for c in DTYPE_COMBOS])
@pytest.mark.parametrize("rule", RULES, ids=[r[0].__name__ for r in RULES])
def test_segment_table_every_dtype_combination(combo, rule, monkeypatch):
    _, dtype, grad_dtype, options = combo
    cls, kwargs = rule
    if dtype == np.float64 and options.get("state_dtype"):
        pytest.skip("float64 params keep float64 state")
    _step_both(cls, kwargs, dtype, grad_dtype, options, monkeypatch)


def test_mixed_dtypes_make_one_call_per_dtype_combination(monkeypatch):
    params = [np.ones(100, np.float32), np.ones(50, np.float64), np.ones(70, np.float32), np.ones(9, np.float64)]
    opt = fastopt.Adam(params, lr=0.1)
    module = fastopt._backend.BACKENDS["cpu"].module
    seen = []
    real = module.multi_step

    class Spy:
        def __getattr__(self, name):
            return getattr(module, name)

        def multi_step(self, *args):
            seen.append(len(args[5]))
            return real(*args)

    monkeypatch.setattr(fastopt._backend.BACKENDS["cpu"], "_module", Spy())
    opt.step([np.ones_like(p) for p in params])
    assert sorted(seen) == [2, 2]
    for p in params:
        assert np.allclose(p, 0.9)


def test_reused_plan_with_persistent_gradients_and_everything_that_invalidates_it():
    """With the same gradient arrays every step (refilled in place), a list step reuses its plan;
    each change it relied on (an option, a replaced state array, a frozen array, a loaded
    checkpoint, another backend) falls back to the full step: the bits stay those of stepping
    each array alone."""
    rng = np.random.default_rng(1)
    start = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = [np.zeros(n, np.float32) for n in SIZES]
    together = [a.copy() for a in start]
    separate = [a.copy() for a in start]
    opt = fastopt.NAdam([{"params": together[:3]}, {"params": together[3:], "lr": 0.02}], lr=0.01)
    singles = [fastopt.NAdam(a, lr=0.01 if j < 3 else 0.02) for j, a in enumerate(separate)]
    saved = None
    for step in range(12):
        for g in grads:
            g[...] = rng.standard_normal(g.size)
        frozen = 2 if step == 6 else None
        if step == 4:
            opt.param_groups[1]["lr"] = 0.03
            for s in singles[3:]:
                s.lr = 0.03
        if step == 5:
            opt.state[4]["exp_avg"] = opt.state[4]["exp_avg"].copy()
        if step == 7:
            saved = opt.state_dict()
        if step == 9:
            opt.load_state_dict(saved)
            for j, s in enumerate(singles):
                s.load_state_dict({"state": saved["state"][j], "param_groups": [
                    dict(saved["param_groups"][0 if j < 3 else 1], params=[0])]})
                together[j][...] = separate[j]
        backend = "numba" if step == 10 and "numba" in fastopt.backends() and \
            fastopt.backends()["numba"]["available"] else None
        opt.backend = backend
        opt.step([None if j == frozen else g for j, g in enumerate(grads)])
        for j, (s, g) in enumerate(zip(singles, grads)):
            if j != frozen:
                s.step(g)
        if step == 3:
            assert opt._plan is not None  # reused while nothing changed
        if step == 8:
            # The array frozen at step 6 is a step behind the rest of its group: no plan.
            assert opt._plan is None
        for j, (a, b) in enumerate(zip(together, separate)):
            np.testing.assert_array_equal(a, b, err_msg=f"param {j} after step {step}")
    for j, s in enumerate(singles):
        assert opt.state[j]["step"] == s.state["step"]
        np.testing.assert_array_equal(opt.state[j]["exp_avg_sq"], s.state["exp_avg_sq"])
