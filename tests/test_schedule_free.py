"""Schedule-Free SGD and AdamW: step for step against the schedulefree package (torch CPU,
float64) with warm-up, r, weight_lr_power, weight decay, groups and the train/eval moves; the
moves on every dtype against float64; the host schedule state in checkpoints; the functional form."""
import copy

import numpy as np
import pytest

import fastopt
from fastopt import functional as F
from conftest import GROUP_SHAPES, random_arrays, two_group_twins
from reference import Reference

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
STEPS = 64
# float64 against the package: the same operations in the same order up to the kernels' folded
# y coefficient and torch's own fused loops, a few roundings per step (~1e-16 each); 1e-12 of the
# distance travelled bounds 64 steps of it, far below any wrong constant (percents).
RTOL64 = 1e-12

CASES = [
    ("SGDScheduleFree", dict(lr=0.5)),
    ("SGDScheduleFree", dict(lr=0.5, momentum=0.8, weight_decay=0.05, warmup_steps=10, r=1.0)),
    ("SGDScheduleFree", dict(lr=0.3, warmup_steps=70, weight_lr_power=0.0)),
    ("AdamWScheduleFree", dict(lr=0.02)),
    ("AdamWScheduleFree", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=20)),
    ("AdamWScheduleFree", dict(lr=0.02, eps=1e-6, r=0.5, weight_lr_power=1.0, warmup_steps=5)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _beta1(kwargs):
    return kwargs.get("momentum", kwargs.get("betas", (0.9,))[0])


def _distance(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0))


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
@pytest.mark.parametrize("n", [1, 7, 1031])
def test_matches_the_schedulefree_package(backend, case, n):
    """Steps with eval() / train() moves at several points (evaluating at x, as training loops
    do), k, lr_max and weight_sum as the package keeps them."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    name, kwargs = CASES[case]
    start, grads = random_arrays(n, np.float64, case, STEPS)
    ours = start.copy()
    opt = getattr(fastopt, name)(ours, backend=backend, **kwargs)
    t = torch.tensor(start.copy())
    ref = getattr(schedulefree, name)([t], foreach=False, **kwargs)
    ref.train()
    travelled = 0.0
    for i, g in enumerate(grads):
        opt.step(g)
        t.grad = torch.tensor(g.copy())
        ref.step()
        travelled = max(travelled, _distance(t.numpy(), start))
        if i % 13 == 5:
            opt.eval()
            ref.eval()
            assert _distance(ours, t.numpy()) <= RTOL64 * travelled, f"x after step {i}"
            opt.eval()  # idempotent, as the package
            opt.train()
            ref.train()
    assert _distance(ours, t.numpy()) <= RTOL64 * travelled
    assert _distance(opt.state["z"], ref.state[t]["z"].numpy()) <= RTOL64 * travelled
    if name.startswith("AdamW"):
        v = ref.state[t]["exp_avg_sq"].numpy()
        assert _distance(opt.state["exp_avg_sq"], v) <= 1e-12 * float(np.max(v))
    ours_group, their_group = opt.param_groups[0], ref.param_groups[0]
    for key in ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode"):
        assert ours_group[key] == pytest.approx(their_group[key], rel=1e-14), key


def test_groups_and_frozen_parameters_match_the_package(backend):
    """Two groups with their own hyper-parameters and schedule state; a parameter without a
    gradient is not moved (its z is made at its first gradient) while its group's k advances."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    rng = np.random.default_rng(3)
    groups = [dict(lr=0.03, warmup_steps=6), dict(lr=0.01, weight_decay=0.1, betas=(0.7, 0.99))]
    ours, theirs, opt, ref = two_group_twins(torch, rng, groups, fastopt.AdamWScheduleFree,
                                             schedulefree.AdamWScheduleFree, dict(backend=backend),
                                             dict(foreach=False))
    ref.train()
    for step in range(20):
        gs = [None if (j == 1 and step < 4) or (j == 0 and step % 5 == 2) else rng.standard_normal(s)
              for j, s in enumerate(GROUP_SHAPES)]
        for t, g in zip(theirs, gs):
            t.grad = None if g is None else torch.tensor(g.copy())
        opt.step(gs)
        ref.step()
    opt.eval()
    ref.eval()
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-12, atol=1e-14)
    for ours_group, their_group in zip(opt.param_groups, ref.param_groups):
        assert ours_group["k"] == their_group["k"] == 20
        assert ours_group["weight_sum"] == pytest.approx(their_group["weight_sum"], rel=1e-14)


def test_step_in_eval_mode_is_refused_and_changes_nothing():
    p = np.ones(5)
    opt = fastopt.SGDScheduleFree(p, lr=0.1)
    opt.step(np.full(5, 0.5))
    opt.eval()
    before, z = p.copy(), opt.state["z"].copy()
    with pytest.raises(RuntimeError, match="eval mode.*opt.train"):
        opt.step(np.full(5, 0.5))
    np.testing.assert_array_equal(p, before)
    np.testing.assert_array_equal(opt.state["z"], z)
    assert opt.param_groups[0]["k"] == 1 and opt.state["step"] == 1


def test_move_before_any_step_changes_nothing_and_the_moves_invert():
    p = np.linspace(-1, 1, 9)
    opt = fastopt.AdamWScheduleFree(p)
    opt.eval()
    opt.train()  # no z yet: nothing to move, as the package
    np.testing.assert_array_equal(p, np.linspace(-1, 1, 9))
    for g in random_arrays(9, np.float64, 1, 5)[1]:
        opt.step(g)
    y = p.copy()
    opt.eval()
    assert not np.allclose(p, y)
    opt.train()
    np.testing.assert_allclose(p, y, rtol=1e-14, atol=1e-15)  # x -> y inverts y -> x up to rounding


def _run_with(options, n, to_eval=True):
    """Steps Schedule-Free AdamW on a float32-valued start under `options`; returns (opt, param,
    the float64 reference)."""
    start32, grads = random_arrays(n, np.float32, 21, 60)
    dtype = options.pop("dtype", np.float32)
    param = start32.astype(dtype)
    kwargs = dict(lr=0.02, warmup_steps=5, weight_decay=0.1)
    opt = fastopt.AdamWScheduleFree(param, **kwargs, **options)
    ref = Reference("adamwschedulefree", param.astype(np.float64),
                    round_state=(lambda s: s.astype(BF16).astype(np.float64)) if options.get("state_dtype") else None,
                    **kwargs)
    for g in grads:
        g = g.astype(np.float64) if dtype == np.float64 else g  # halves take float32 gradients
        opt.step(g)
        ref.step(g.astype(np.float64))
    if to_eval:
        opt.eval()
    return opt, param, ref


# The trajectory: float32 (and halves through their float32 master) within the float32 tolerance of
# test_optimizers.py (2e-4 of the distance travelled); bfloat16 state rounds every step to 2^-8, as
# in test_mixed_precision.py (2e-2). The move itself: x is lerp(y, z, 1 - 1/beta1) of the values
# before it, computed in float32 (a few float32 ulps) and rounded once into the stored type; the
# half copies are the master rounded, bit for bit.
@pytest.mark.parametrize("options, tol", [
    (dict(), 2e-4), (dict(dtype=np.float64), 1e-12), (dict(state_dtype="bfloat16"), 2e-2),
    (dict(dtype=np.float16, master_weights=True), 2e-4), (dict(dtype=BF16, master_weights=True), 2e-4),
    (dict(dtype=BF16, stochastic_rounding=True, seed=5), None),
], ids=["f32", "f64", "bf16-state", "f16-master", "bf16-master", "bf16-stochastic"])
@pytest.mark.parametrize("n", [1, 7, 1031, 40009])
def test_eval_point_on_every_dtype(backend, options, tol, n):
    opt, param, ref = _run_with(dict(options, backend=backend), n, to_eval=False)
    stepped = opt.state.get("master_weights", param)
    y = stepped.astype(np.float64)
    z = np.asarray(opt.state["z"]).astype(np.float64)
    opt.eval()
    x = stepped.astype(np.float64)
    expected = y + (1 - 1 / 0.9) * (z - y)
    # One rounding into the stored type (bfloat16 stochastic: either neighbour, < 1 ulp = 2^-7
    # relative at worst), plus float32 arithmetic (8 float32 ulps of the operands bounds it).
    unit = 2.0**-7 if stepped.dtype == BF16 else (2.0**-52 if stepped.dtype == np.float64 else 2.0**-23)
    bound = unit * np.abs(expected) + 8 * 2.0**-23 * (np.abs(y) + np.abs(z)) * (stepped.dtype != np.float64) \
        + 4 * 2.0**-52 * (np.abs(y) + np.abs(z))
    assert np.all(np.abs(x - expected) <= bound)
    if "master_weights" in opt.state:
        rounded = opt.state["master_weights"].astype(param.dtype)
        np.testing.assert_array_equal(param.view(np.uint16), rounded.view(np.uint16))
    if tol is not None:
        x_ref = ref.to_x(0.9)
        start = random_arrays(n, np.float32, 21, 0)[0].astype(param.dtype).astype(np.float64)
        assert _distance(x, x_ref) <= tol * max(_distance(x_ref, start), 1e-30)
    else:  # stochastic rounding: reproducible for a seed, and unbiased about the float64 path
        _, param2, _ = _run_with(dict(options, backend=backend), n)
        np.testing.assert_array_equal(param.view(np.uint16), param2.view(np.uint16))
        if n >= 1031:
            x_ref = ref.to_x(0.9)
            assert abs(float(np.mean(x - x_ref))) <= 2.0**-10 * float(np.mean(np.abs(x_ref)))


def test_moves_agree_across_cpu_backends_bitwise():
    from conftest import CPU_BACKENDS
    if len(CPU_BACKENDS) < 2:
        pytest.skip("needs both the compiled and the Numba backend")
    results = []
    for backend in ("cpu", "numba"):
        opt, param, _ = _run_with(dict(backend=backend, state_dtype="bfloat16"), 1031)
        results.append((param.copy(), opt.state["z"].copy()))
        opt.train()
        results.append((param.copy(), opt.state["exp_avg_sq"].copy()))
    for a, b in zip(results[0] + results[1], results[2] + results[3]):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_grad_scale_clipping_and_skipping_match_the_reference(backend):
    start, grads = random_arrays(1031, np.float64, 4, 30)
    p = start.copy()
    opt = fastopt.SGDScheduleFree(p, lr=0.3, weight_decay=0.01, warmup_steps=4, backend=backend)
    ref = Reference("sgdschedulefree", start, lr=0.3, weight_decay=0.01, warmup_steps=4)
    for i, g in enumerate(grads):
        opt.step(g * 8.0, grad_scale=8.0, max_grad_norm=20.0)
        ref.step(g * 8.0, grad_scale=8.0, clip=20.0)
        if i == 10:  # a skipped step changes nothing, k included
            before = (p.copy(), opt.state["z"].copy(), dict(opt.param_groups[0]))
            bad = g.copy()
            bad[3] = np.inf
            opt.step(bad, skip_nonfinite=True)
            assert opt.last_step_skipped
            np.testing.assert_array_equal(p, before[0])
            np.testing.assert_array_equal(opt.state["z"], before[1])
            assert opt.param_groups[0]["k"] == before[2]["k"]
    travelled = _distance(ref.p, start)
    assert _distance(p, ref.p) <= RTOL64 * travelled


def test_the_prologue_decay_is_off():
    """The class's weight_decay is the rule's (at y, after normalisation): with a zero gradient
    AdamW's u is wd * y alone; a prologue decay would also have decayed p or entered v."""
    p = np.full(3, 2.0)
    opt = fastopt.AdamWScheduleFree(p, lr=0.1, weight_decay=0.5)
    opt.step(np.zeros(3))
    np.testing.assert_array_equal(opt.state["exp_avg_sq"], 0.0)
    # c = 1 at the first step: y = z + 0.1 (0.9 * 0 - 1) u with u = 0.5 * 2; z = 2 - 0.1 u.
    np.testing.assert_allclose(p, 2.0 - 0.1 * 1.0)
    np.testing.assert_allclose(opt.state["z"], 2.0 - 0.1 * 1.0)


@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree"])
def test_state_dict_round_trip_continues_bit_for_bit(name):
    start, grads = random_arrays(1031, np.float32, 8, 40)
    kwargs = dict(lr=0.02, warmup_steps=10)
    whole = getattr(fastopt, name)(start.copy(), **kwargs)
    for g in grads:
        whole.step(g)
    first = getattr(fastopt, name)(start.copy(), **kwargs)
    for g in grads[:15]:
        first.step(g)
    first.eval()  # the package's advice: save in eval mode
    saved = copy.deepcopy(first.state_dict())
    resumed = getattr(fastopt, name)(np.asarray(first.param).copy(), **kwargs)
    resumed.load_state_dict(saved)
    for key in ("k", "lr_max", "weight_sum", "train_mode"):
        assert resumed.param_groups[0][key] == first.param_groups[0][key]
    resumed.train()
    for g in grads[15:]:
        resumed.step(g)
    first.train()
    for g in grads[15:]:
        first.step(g)
    np.testing.assert_array_equal(resumed.param, first.param)
    np.testing.assert_array_equal(resumed.state["z"], first.state["z"])
    # The move to x and back rounds in float32: the interrupted run is close to the whole one.
    np.testing.assert_allclose(resumed.param, whole.param, rtol=1e-5, atol=1e-6)


def test_the_packages_checkpoint_loads_and_continues():
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    start, grads = random_arrays(1031, np.float64, 12, 30)
    t = torch.tensor(start.copy())
    theirs = schedulefree.AdamWScheduleFree([t], lr=0.02, warmup_steps=5, foreach=False)
    theirs.train()
    for g in grads[:12]:
        t.grad = torch.tensor(g.copy())
        theirs.step()
    ours = fastopt.AdamWScheduleFree(t.numpy().copy(), lr=0.02, warmup_steps=5)
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["k"] == 12
    for g in grads[12:]:
        t.grad = torch.tensor(g.copy())
        theirs.step()
        ours.step(g)
    travelled = _distance(t.numpy(), start)
    assert _distance(ours.param, t.numpy()) <= RTOL64 * travelled


@pytest.mark.parametrize("key, value, match", [("k", -1, "k"), ("k", 1.5, "k"), ("weight_sum", -1.0, "weight_sum"),
                                               ("lr_max", float("nan"), "lr_max")])
def test_bad_group_schedule_state_is_refused(key, value, match):
    p = np.ones(4)
    opt = fastopt.SGDScheduleFree(p)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=match):
        opt.step(np.ones(4))
    np.testing.assert_array_equal(p, 1.0)


def test_functional_form_is_the_class_step_bitwise(backend):
    start, grads = random_arrays(1031, np.float32, 9, 20)
    kwargs = dict(lr=0.02, beta1=0.85, weight_decay=0.1, warmup_steps=5, r=0.5)
    p, z, v = start.copy(), start.copy(), np.zeros_like(start)
    schedule_state = np.array([-1.0, 0.0])
    opt = fastopt.AdamWScheduleFree(start.copy(), lr=0.02, betas=(0.85, 0.999), weight_decay=0.1, warmup_steps=5,
                                    r=0.5, backend=backend)
    for t, g in enumerate(grads, 1):
        F.adamw_schedule_free(p, g, z, v, schedule_state, step=t, backend=backend, **kwargs)
        opt.step(g)
    assert schedule_state[1] == opt.param_groups[0]["weight_sum"]
    F.schedule_free_eval(p, z, beta1=0.85, backend=backend)
    opt.eval()
    np.testing.assert_array_equal(p, opt.param)
    np.testing.assert_array_equal(z, opt.state["z"])
    F.schedule_free_train(p, z, beta1=0.85, backend=backend)
    opt.train()
    np.testing.assert_array_equal(p, opt.param)


def test_functional_checks():
    p, z = np.ones(4, np.float32), np.ones(4, np.float32)
    state = np.array([-1.0, 0.0])
    with pytest.raises(TypeError, match="schedule_state"):
        F.sgd_schedule_free(p, p.copy(), z, [-1.0, 0.0], step=1)
    with pytest.raises(ValueError, match="momentum"):
        F.sgd_schedule_free(p, p.copy(), z, state, step=1, momentum=1.0)
    with pytest.raises(ValueError, match="z has 3 elements"):
        F.schedule_free_eval(p, np.ones(3, np.float32), beta1=0.9)
    with pytest.raises(TypeError, match="z has dtype float64"):
        F.schedule_free_eval(p, np.ones(4), beta1=0.9)
    with pytest.raises(ValueError, match="beta1"):
        F.schedule_free_train(p, z, beta1=0.0)
    r = F.sgd_schedule_free(p, np.full(4, np.nan, np.float32), z, state, step=1, skip_nonfinite=True)
    assert r.skipped and list(state) == [-1.0, 0.0] and np.all(p == 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_bits(backend, threads):
    """Steps and moves are element-wise: the same bits for any thread count (the parallel path
    needs sizes above the parallel threshold)."""
    before = fastopt.get_num_threads()
    results = []
    try:
        for count in (1, threads):
            fastopt.set_num_threads(count)
            start, grads = random_arrays(300007, np.float32, 13, 3)
            opt = fastopt.AdamWScheduleFree(start, lr=0.02, backend=backend)
            for g in grads:
                opt.step(g)
            opt.eval()
            results.append((start.copy(), opt.state["z"].copy()))
    finally:
        fastopt.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
