"""fastopt.lr_scheduler: torch's learning rates step by step, state_dict round trips, the formulas
(without torch), ReduceLROnPlateau's rules, errors, and fastopt's attribute optimizers."""
import copy
import math
import pathlib
import pickle
import re
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import lr_scheduler as F

LRS = [0.1, 0.03, 0.5]
# torch warns when a scheduler inside SequentialLR or ChainedScheduler steps at construction.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")


class StandIn:
    """The optimizer interface the schedulers drive: torch-style param_groups and defaults."""

    def __init__(self, kind="sgd", lrs=LRS):
        hyper = {"momentum": 0.9} if kind == "sgd" else {"betas": (0.9, 0.999)}
        self.defaults = {"lr": 1e-3, **hyper}
        self.param_groups = [{"params": [i], "lr": lr, **copy.deepcopy(hyper)} for i, lr in enumerate(lrs)]


def decay(epoch):
    return 0.9 ** epoch


def shrink(epoch):
    return 0.95 if epoch % 2 else 0.99


class Warmup:
    """A callable object: torch saves its __dict__ (a plain function is not saved)."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, epoch):
        return min(1.0, (epoch + 1) / self.steps)


# name -> builder(module, optimizer); every builder works with torch's module and fastopt's.
SCHEDULERS = {
    "LambdaLR": lambda M, o: M.LambdaLR(o, decay),
    "LambdaLR-per-group": lambda M, o: M.LambdaLR(o, [decay, Warmup(4), lambda e: 1.0 / (1 + e)]),
    "MultiplicativeLR": lambda M, o: M.MultiplicativeLR(o, shrink),
    "StepLR": lambda M, o: M.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda M, o: M.MultiStepLR(o, milestones=[2, 5, 5, 11], gamma=0.3),
    "ConstantLR": lambda M, o: M.ConstantLR(o, factor=0.25, total_iters=4),
    "LinearLR": lambda M, o: M.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6),
    "ExponentialLR": lambda M, o: M.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda M, o: M.PolynomialLR(o, total_iters=7, power=2.0),
    "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
    "CosineAnnealingWarmRestarts": lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3),
    "CyclicLR": lambda M, o: M.CyclicLR(o, 0.01, [0.1, 0.2, 0.3], step_size_up=3, step_size_down=2),
    "CyclicLR-triangular2": lambda M, o: M.CyclicLR(o, [0.01, 0.02, 0.03], 0.4, step_size_up=4,
                                                    mode="triangular2", base_momentum=0.7),
    "CyclicLR-exp_range": lambda M, o: M.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.9,
                                                  cycle_momentum=False),
    "OneCycleLR": lambda M, o: M.OneCycleLR(o, max_lr=[0.1, 0.3, 1.0], total_steps=41),
    "OneCycleLR-3phase-linear": lambda M, o: M.OneCycleLR(o, 0.2, epochs=5, steps_per_epoch=9, pct_start=0.25,
                                                          anneal_strategy="linear", three_phase=True),
    "SequentialLR": lambda M, o: M.SequentialLR(
        o, [M.LinearLR(o, 0.1, 1.0, 3), M.CosineAnnealingLR(o, 8), M.StepLR(o, 2, 0.5)], milestones=[4, 15]),
    "ChainedScheduler": lambda M, o: M.ChainedScheduler([M.ExponentialLR(o, 0.9), M.StepLR(o, 3, 0.5)]),
    "Chained-in-Sequential": lambda M, o: M.SequentialLR(
        o, [M.ChainedScheduler([M.ExponentialLR(o, 0.95), M.MultiStepLR(o, [3], 0.5)]), M.ConstantLR(o, 0.5, 2)],
        milestones=[5]),
}
STEPS = 40


def momentum_of(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


def trajectory(scheduler, opt, steps, reference=None):
    """(last lrs, group lrs, momenta) before each step; the reference optimizer steps too (torch warns else)."""
    rows = []
    for _ in range(steps):
        rows.append((list(scheduler.get_last_lr()), [g["lr"] for g in opt.param_groups],
                     [momentum_of(g) for g in opt.param_groups]))
        if reference is not None:
            reference.step()
        scheduler.step()
    return rows


def torch_optimizer(torch, kind, lrs=LRS):
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    return torch.optim.SGD(groups, momentum=0.9) if kind == "sgd" else torch.optim.Adam(groups)


def assert_rows_equal(ours, theirs):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-15), f"step {step}"


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_learning_rates_match_torch(name, kind):
    torch = pytest.importorskip("torch")
    reference = torch_optimizer(torch, kind)
    theirs = SCHEDULERS[name](torch.optim.lr_scheduler, reference)
    opt = StandIn(kind)
    ours = SCHEDULERS[name](F, opt)
    assert_rows_equal(trajectory(ours, opt, STEPS), trajectory(theirs, reference, STEPS, reference))


@pytest.mark.parametrize("name", ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
                                  "PolynomialLR", "ConstantLR", "CosineAnnealingWarmRestarts"])
def test_step_with_epoch_matches_torch(name):
    torch = pytest.importorskip("torch")
    reference = torch_optimizer(torch, "sgd")
    theirs = SCHEDULERS[name](torch.optim.lr_scheduler, reference)
    opt = StandIn()
    ours = SCHEDULERS[name](F, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in [3, 1, 7, 4, 12, 2, 0, 9]:
            reference.step()
            theirs.step(epoch)
            ours.step(epoch)
            assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR", "LambdaLR"])
def test_resuming_with_last_epoch_matches_torch(name):
    """last_epoch >= 0 resumes from the groups' initial_lr, as torch does."""
    torch = pytest.importorskip("torch")
    reference, opt = torch_optimizer(torch, "sgd"), StandIn()
    SCHEDULERS[name](torch.optim.lr_scheduler, reference)
    SCHEDULERS[name](F, opt)
    builders = {"StepLR": lambda M, o: M.StepLR(o, 3, 0.5, last_epoch=4),
                "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, 6, last_epoch=4),
                "OneCycleLR": lambda M, o: M.OneCycleLR(o, [0.1, 0.3, 1.0], total_steps=41, last_epoch=4),
                "CyclicLR": lambda M, o: M.CyclicLR(o, 0.01, 0.1, step_size_up=3, last_epoch=4),
                "LambdaLR": lambda M, o: M.LambdaLR(o, decay, last_epoch=4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = builders[name](torch.optim.lr_scheduler, reference)
        ours = builders[name](F, opt)
        assert_rows_equal(trajectory(ours, opt, 20), trajectory(theirs, reference, 20, reference))


def test_resuming_needs_initial_lr():
    opt = StandIn()
    with pytest.raises(ValueError, match="initial_lr"):
        F.StepLR(opt, 3, last_epoch=5)
    assert all("initial_lr" not in g for g in opt.param_groups)


# ---- the formulas, without torch ----
def closed_forms(t, base):
    cos = lambda n, low=0.0: low + (base - low) * (1 + math.cos(math.pi * t / n)) / 2  # noqa: E731
    return {
        "LambdaLR": base * 0.9 ** t,
        "StepLR": base * 0.5 ** (t // 3),
        "MultiStepLR": base * 0.3 ** sum(m <= t for m in [2, 5, 5, 11]),
        "ConstantLR": base * (0.25 if t < 4 else 1.0),
        "LinearLR": base * (0.2 + 0.7 * min(t, 6) / 6),
        "ExponentialLR": base * 0.9 ** t,
        "PolynomialLR": base * (1 - min(t, 7) / 7) ** 2,
        "CosineAnnealingLR": cos(6, 1e-3),
        "ChainedScheduler": base * 0.9 ** t * 0.5 ** (t // 3),
    }


@pytest.mark.parametrize("name", sorted(closed_forms(0, 1.0)))
def test_learning_rates_follow_the_formula(name):
    opt = StandIn()
    scheduler = SCHEDULERS[name](F, opt)
    for t in range(STEPS):
        expected = [closed_forms(t, base)[name] for base in LRS]
        assert scheduler.get_last_lr() == pytest.approx(expected, rel=1e-10, abs=1e-15), t
        assert [g["lr"] for g in opt.param_groups] == scheduler.get_last_lr()
        scheduler.step()


def test_restart_and_cycle_shapes():
    opt = StandIn(lrs=[1.0])
    sgdr = F.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2)
    lrs = [row[0][0] for row in trajectory(sgdr, opt, 9)]
    half = lambda x: 0.5 * (1 + math.cos(math.pi * x))  # noqa: E731
    # Periods of 2, 4 then 8 steps: restarts to the initial lr at steps 2 and 6.
    assert lrs == pytest.approx([1.0, 0.5, 1.0, half(1 / 4), 0.5, half(3 / 4), 1.0, half(1 / 8), half(2 / 8)])
    opt = StandIn("adam", lrs=[1.0])
    one = F.OneCycleLR(opt, max_lr=2.0, total_steps=10, pct_start=0.5, div_factor=4.0, final_div_factor=10.0)
    rows = trajectory(one, opt, 10)
    assert rows[0][0] == [0.5] and rows[0][2] == [0.95]              # max_lr / div_factor, max_momentum
    assert rows[4][0] == [2.0] and rows[4][2] == [0.85]              # the peak at pct_start, base_momentum
    assert rows[2][0] == pytest.approx([0.5 + 1.5 * half(1 - 2 / 4)])  # cosine rise
    assert rows[9][0] == pytest.approx([0.05]) and rows[9][2] == pytest.approx([0.95])
    assert opt.param_groups[0]["betas"][1] == 0.999                  # beta2 untouched
    with pytest.raises(ValueError, match="total_steps"):
        one.step()
    opt = StandIn(lrs=[1.0])
    cyclic = F.CyclicLR(opt, 0.0, 1.0, step_size_up=2, mode="triangular2", base_momentum=0.8, max_momentum=0.9)
    rows = trajectory(cyclic, opt, 9)
    # Up over 2 steps, down over 2; the second cycle at half the height; momentum the other way.
    assert [r[0][0] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5, 0.25, 0.0])
    assert [r[2][0] for r in rows] == pytest.approx([0.9, 0.85, 0.8, 0.85, 0.9, 0.875, 0.85, 0.875, 0.9])


# ---- state_dict ----
def contains_callable(value):
    if isinstance(value, dict):
        return any(contains_callable(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_callable(v) for v in value)
    return callable(value)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_state_dict_round_trip_mid_schedule(name):
    opt = StandIn("adam")
    scheduler = SCHEDULERS[name](F, opt)
    for _ in range(13):
        scheduler.step()
    state = scheduler.state_dict()
    assert not contains_callable(state)
    state = pickle.loads(pickle.dumps(state))
    groups = copy.deepcopy(opt.param_groups)
    expected = trajectory(scheduler, opt, 25)
    # As with torch: a fresh optimizer and scheduler, then the optimizer's and the scheduler's states.
    fresh = StandIn("adam")
    resumed = SCHEDULERS[name](F, fresh)
    fresh.param_groups = groups
    resumed.load_state_dict(state)
    assert trajectory(resumed, fresh, 25) == expected


def test_callable_objects_state_is_saved_functions_are_not():
    opt = StandIn(lrs=[0.1, 0.2])
    warm = Warmup(4)
    scheduler = F.LambdaLR(opt, [decay, warm])
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None, {"steps": 4}]
    warm.steps = 99
    scheduler.load_state_dict(state)
    assert warm.steps == 4


def test_torch_state_dict_loads_and_continues_as_torch():
    torch = pytest.importorskip("torch")
    for name in ["OneCycleLR", "CosineAnnealingLR", "MultiStepLR", "SequentialLR", "CyclicLR"]:
        reference = torch_optimizer(torch, "adam")
        theirs = SCHEDULERS[name](torch.optim.lr_scheduler, reference)
        trajectory(theirs, reference, 9, reference)
        opt = StandIn("adam")
        ours = SCHEDULERS[name](F, opt)
        opt.param_groups = [{k: v for k, v in g.items() if k != "params"} for g in reference.param_groups]
        ours.load_state_dict(theirs.state_dict())
        assert_rows_equal(trajectory(ours, opt, 20), trajectory(theirs, reference, 20, reference))


def test_bad_state_dict_changes_nothing():
    opt = StandIn()
    scheduler = F.StepLR(opt, 3)
    scheduler.step()
    before = scheduler.state_dict()
    bad = [dict(before, gamma=0.5, extra=1), {k: v for k, v in before.items() if k != "last_epoch"},
           dict(before, last_epoch=1.5), dict(before, base_lrs=[0.1])]
    for state in bad:
        with pytest.raises((ValueError, TypeError)):
            scheduler.load_state_dict(state)
        assert scheduler.state_dict() == before
    with pytest.raises(TypeError):
        scheduler.load_state_dict([("last_epoch", 3)])


# ---- ReduceLROnPlateau ----
METRICS = [5.0, 4.0, 4.0, 3.9999, 4.1, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.99, 3.5, 3.5, 3.5, float("nan"),
           3.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("options", [
    {}, {"patience": 2}, {"mode": "max", "patience": 1}, {"threshold_mode": "abs", "threshold": 0.05, "patience": 1},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.5, "patience": 0, "factor": 0.5},
    {"patience": 1, "cooldown": 2, "factor": 0.5}, {"patience": 0, "min_lr": [0.05, 0.01, 0.2], "factor": 0.3},
    {"patience": 0, "factor": 0.5, "eps": 0.02}, {"patience": 0, "threshold": 0.0, "min_lr": 0.02}])
def test_reduce_on_plateau_matches_torch(options):
    torch = pytest.importorskip("torch")
    reference, opt = torch_optimizer(torch, "sgd"), StandIn()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, **options)
    ours = F.ReduceLROnPlateau(opt, **options)
    for metric in METRICS + [-m for m in METRICS]:
        theirs.step(metric)
        ours.step(metric)
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in reference.param_groups]
        assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter) == pytest.approx(
            (theirs.best, theirs.num_bad_epochs, theirs.cooldown_counter), nan_ok=True)


def test_reduce_on_plateau_rules():
    opt = StandIn(lrs=[1.0, 0.1])
    plateau = F.ReduceLROnPlateau(opt, patience=2, factor=0.5, min_lr=[0.0, 0.08], cooldown=1)
    lrs = []
    for metric in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]:
        plateau.step(metric)
        lrs.append(plateau.get_last_lr())
    # Three bad epochs in a row (more than patience=2) halve the lr; one cooldown epoch does not count.
    assert lrs == [[1.0, 0.1]] * 3 + [[0.5, 0.08]] + [[0.5, 0.08]] * 3 + [[0.25, 0.08]] * 2
    rel = F.ReduceLROnPlateau(StandIn(), threshold=0.1, patience=0)
    rel.step(1.0)
    rel.step(0.95)   # not 10% better than 1.0
    assert rel.get_last_lr() == pytest.approx([lr * 0.1 for lr in LRS])
    plain = F.ReduceLROnPlateau(StandIn(), mode="max", threshold_mode="abs", threshold=1.0, patience=0)
    plain.step(1.0)
    plain.step(2.5)  # better than 1.0 + 1.0
    assert plain.get_last_lr() == LRS and plain.best == 2.5
    state = plain.state_dict()
    copy_ = F.ReduceLROnPlateau(StandIn())
    copy_.load_state_dict(state)
    assert (copy_.mode, copy_.threshold, copy_.best) == ("max", 1.0, 2.5)


# ---- errors: they name the argument and change nothing ----
@pytest.mark.parametrize("build, error, word", [
    (lambda o: F.StepLR(o, 0), ValueError, "step_size"),
    (lambda o: F.StepLR(o, 2.5), TypeError, "step_size"),
    (lambda o: F.StepLR(o, 2, gamma=-1), ValueError, "gamma"),
    (lambda o: F.MultiStepLR(o, [1, "x"]), TypeError, "milestones"),
    (lambda o: F.ConstantLR(o, factor=1.5), ValueError, "factor"),
    (lambda o: F.LinearLR(o, start_factor=0), ValueError, "start_factor"),
    (lambda o: F.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    (lambda o: F.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0), ValueError, "T_mult"),
    (lambda o: F.LambdaLR(o, [decay]), ValueError, "lr_lambda"),
    (lambda o: F.LambdaLR(o, 3), TypeError, "lr_lambda"),
    (lambda o: F.CyclicLR(o, 0.1, [1.0, 1.0]), ValueError, "max_lr"),
    (lambda o: F.CyclicLR(o, 0.1, 1.0, mode="sine"), ValueError, "mode"),
    (lambda o: F.OneCycleLR(o, 1.0), ValueError, "total_steps"),
    (lambda o: F.OneCycleLR(o, 1.0, 10, pct_start=1.5), ValueError, "pct_start"),
    (lambda o: F.OneCycleLR(o, 1.0, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda o: F.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
    (lambda o: F.ReduceLROnPlateau(o, mode="up"), ValueError, "mode"),
    (lambda o: F.ReduceLROnPlateau(o, min_lr=[0, 0]), ValueError, "min_lr"),
    (lambda o: F.SequentialLR(o, [], []), ValueError, "at least one"),
    (lambda o: F.StepLR(o, 2, last_epoch=-3), ValueError, "last_epoch"),
])
def test_bad_arguments_raise_and_change_nothing(build, error, word):
    opt = StandIn()
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(error, match=word):
        build(opt)
    assert opt.param_groups == before


def test_cycle_momentum_needs_momentum():
    class NoMomentum:
        defaults = {"lr": 0.1}
        param_groups = [{"lr": 0.1}]
    with pytest.raises(ValueError, match="cycle_momentum"):
        F.OneCycleLR(NoMomentum(), 1.0, 10)
    F.OneCycleLR(NoMomentum(), 1.0, 10, cycle_momentum=False)
    with pytest.raises(TypeError, match="param_groups"):
        F.StepLR(object(), 2)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        opt = StandIn()
        F.ChainedScheduler([F.StepLR(opt, 2), F.ReduceLROnPlateau(opt)])


# ---- fastopt's optimizers, which keep hyper-parameters as attributes ----
def test_attribute_optimizers_are_driven():
    p = np.zeros(4)
    opt = fastopt.Adam(p, lr=0.01)
    one = F.OneCycleLR(opt, max_lr=0.1, total_steps=10, div_factor=10.0)
    assert opt.lr == pytest.approx(0.01) and opt.betas == (0.95, 0.999)
    for _ in range(3):
        opt.step(np.ones(4))
        one.step()
    assert opt.lr == one.get_last_lr()[0] and opt.betas[0] < 0.95 and opt.betas[1] == 0.999
    sgd = fastopt.SGD(np.zeros(4), lr=1.0)
    seq = F.SequentialLR(sgd, [F.ConstantLR(sgd, 0.5, 2), F.ExponentialLR(sgd, 0.5)], milestones=[3])
    lrs = [sgd.lr for _ in range(6) if seq.step() or True]
    assert lrs == [0.5, 1.0, 1.0, 0.5, 0.25, 0.125]
    # What a scheduler writes passes the optimizer's own checks.
    with pytest.raises(ValueError, match="lr"):
        F.LambdaLR(fastopt.SGD(np.zeros(2), lr=0.1), lambda e: -1.0)
    with pytest.raises(ValueError, match="cycle_momentum"):
        F.OneCycleLR(fastopt.Adagrad(np.zeros(2)), 0.1, 10)


def test_attribute_optimizer_steps_like_torch_with_its_scheduler():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x0, grads = rng.standard_normal(6), [rng.standard_normal(6) for _ in range(15)]
    w = torch.nn.Parameter(torch.tensor(x0))
    reference = torch.optim.SGD([w], lr=0.2, momentum=0.9)
    theirs = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.5, total_steps=15)
    p = x0.copy()
    opt = fastopt.SGD(p, lr=0.2, momentum=0.9)
    ours = F.OneCycleLR(opt, max_lr=0.5, total_steps=15)
    for g in grads[:-1]:
        w.grad = torch.tensor(g)
        reference.step()
        theirs.step()
        opt.step(g)
        ours.step()
    np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert opt.momentum == reference.param_groups[0]["momentum"]


def test_docs_example_runs():
    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "schedulers.md").read_text()
    namespace = {}
    exec(compile(re.findall(r"```python\n(.*?)```", text, flags=re.S)[0], "schedulers.md", "exec"), namespace)
    opt, sched = namespace["opt"], namespace["sched"]
    assert sched.last_epoch == 100 and opt.state["step"] == 100
    assert opt.lr == sched.get_last_lr()[0] < 1e-5 and opt.betas[0] == pytest.approx(0.95, abs=1e-3)


def test_pure_schedules_are_the_closed_forms():
    """fastopt.schedules' functions give the lrs of the matching classes (cosine up to T_max)."""
    from fastopt import schedules
    opt = StandIn(lrs=[0.2])
    step, cos = F.StepLR(opt, 4, 0.5), F.CosineAnnealingLR(StandIn(lrs=[0.2]), 10, eta_min=0.01)
    for t in range(11):
        assert step.get_last_lr()[0] == pytest.approx(schedules.step_decay(t, 0.2, 4, 0.5), rel=1e-12)
        assert cos.get_last_lr()[0] == pytest.approx(schedules.cosine(t, 0.2, 10, 0.01), rel=1e-12)
        step.step()
        cos.step()
    sgd = fastopt.SGD(np.zeros(2), lr=1.0)
    old = schedules.Scheduler(sgd, lambda t: schedules.warmup(t, 0.4, 4))
    assert [sgd.lr] + [old.step() for _ in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
