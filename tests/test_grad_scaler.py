"""fastopt.GradScaler: torch.amp.GradScaler's scale sequence, skipped steps with real optimizers,
the bounds of the scale, state_dict, and errors."""
import copy
import pickle

import numpy as np
import pytest

import fastopt

# A scripted run: which steps get an inf or NaN gradient.
PATTERN = ["ok"] * 7 + ["inf", "ok", "nan", "ok", "ok", "ok", "ok", "inf", "inf"] + ["ok"] * 9 + ["nan"] + ["ok"] * 5
CONFIGS = [
    {"init_scale": 2.0 ** 16, "growth_interval": 3},
    {"init_scale": 1000.0, "growth_factor": 3.0, "backoff_factor": 0.3, "growth_interval": 2},
    {"init_scale": 2.0 ** 120, "growth_factor": 4.0, "growth_interval": 1},  # growth stops at float32's limit
    {"init_scale": 1e-34, "backoff_factor": 0.01, "growth_interval": 4},     # backoff stops at its smallest normal
]


def gradient(kind, rng, n=8):
    g = rng.standard_normal(n)
    if kind != "ok":
        g[n // 2] = np.inf if kind == "inf" else np.nan
    return g


def our_run(config, pattern=PATTERN):
    scaler = fastopt.GradScaler(**config)
    opt = fastopt.SGD(np.zeros(8), lr=0.1)
    rng = np.random.default_rng(0)
    seen = []
    for kind in pattern:
        scaler.step(opt, gradient(kind, rng) * scaler.get_scale())
        scaler.update()
        seen.append((scaler.get_scale(), scaler._get_growth_tracker()))
    return seen


@pytest.mark.parametrize("config", CONFIGS)
def test_scale_sequence_matches_torch(config):
    torch = pytest.importorskip("torch")
    scaler = torch.amp.GradScaler("cpu", **config)
    w = torch.nn.Parameter(torch.zeros(8))
    opt = torch.optim.SGD([w], lr=0.1)
    rng = np.random.default_rng(0)
    expected = []
    for kind in PATTERN:
        scaler.scale(torch.ones(()))
        w.grad = torch.tensor(gradient(kind, rng), dtype=torch.float32)
        scaler.step(opt)
        scaler.update()
        expected.append((scaler.get_scale(), scaler._get_growth_tracker()))
    ours = our_run(config)
    tiny = float(np.finfo(np.float32).tiny)
    if config["init_scale"] < 1e-30:
        # torch's scale goes below float32's normal range (on to 0); ours stops at its smallest normal.
        below = next(i for i, (s, _) in enumerate(expected) if s < tiny)
        assert below > 5 and ours[below][0] == tiny and all(s >= tiny for s, _ in ours)
        expected, ours = expected[:below], ours[:below]
    assert ours == expected


def test_scale_sequence_by_hand():
    seen = [s for s, _ in our_run({"init_scale": 8.0, "growth_interval": 2}, ["ok", "ok", "inf", "ok", "nan", "ok",
                                                                               "ok", "ok"])]
    assert seen == [8.0, 16.0, 8.0, 8.0, 4.0, 4.0, 8.0, 8.0]


def test_scale_stays_finite_and_positive():
    big = our_run({"init_scale": 2.0 ** 126, "growth_interval": 1}, ["ok"] * 5)
    assert [s for s, _ in big] == [2.0 ** 127] * 5
    small = our_run({"init_scale": 2.0 ** -120, "growth_interval": 1}, ["inf"] * 10)
    assert small[-1][0] == float(np.finfo(np.float32).tiny) == 2.0 ** -126
    assert all(0 < s < np.inf for s, _ in big + small)


@pytest.mark.parametrize("make", [
    lambda p: fastopt.Adam(p, lr=0.01), lambda p: fastopt.SGD(p, lr=0.1, momentum=0.9),
    lambda p: fastopt.AdamW(p, lr=0.01, weight_decay=0.1)])
def test_skipped_steps_leave_params_and_state_unchanged(make):
    p = np.linspace(-1.0, 1.0, 16)
    opt = make(p)
    scaler = fastopt.GradScaler(init_scale=1024.0, growth_interval=2)
    rng = np.random.default_rng(1)
    for kind in ["ok", "inf", "ok", "nan", "nan", "ok"]:
        before, state = p.copy(), copy.deepcopy(opt.state_dict())
        result = scaler.step(opt, gradient(kind, rng, 16) * scaler.get_scale())
        scaler.update()
        if kind == "ok":
            assert not opt.last_step_skipped and result is not None and not np.array_equal(p, before)
            assert opt.state["step"] == state["state"]["step"] + 1
        else:
            assert opt.last_step_skipped and result is None
            np.testing.assert_array_equal(p, before)
            assert opt.state["step"] == state["state"]["step"]
            for name, value in state["state"][0].items():  # the one parameter's state, torch's layout
                np.testing.assert_array_equal(opt.state[name], value)


def test_mixed_precision_run_matches_torch():
    """Adam under dynamic loss scaling, float64: the same parameters as torch with its GradScaler."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal(32)
    grads = [gradient(kind, rng, 32) for kind in PATTERN]
    w = torch.nn.Parameter(torch.tensor(x0))
    reference = torch.optim.Adam([w], lr=0.01)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    p = x0.copy()
    opt = fastopt.Adam(p, lr=0.01)
    ours = fastopt.GradScaler(init_scale=2.0 ** 10, growth_interval=3)
    for g in grads:
        theirs.scale(torch.ones((), dtype=torch.float64))
        w.grad = torch.tensor(g * theirs.get_scale())
        theirs.step(reference)
        theirs.update()
        ours.step(opt, g * ours.get_scale(), max_grad_norm=100.0)
        ours.update()
        assert ours.get_scale() == theirs.get_scale()
    np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert opt.state["step"] == reference.state[w]["step"].item() == PATTERN.count("ok")


def test_several_optimizers_back_off_when_any_skipped():
    a, b = fastopt.SGD(np.zeros(4), lr=0.1), fastopt.Adam(np.zeros(4), lr=0.1)
    scaler = fastopt.GradScaler(init_scale=64.0, growth_interval=1)
    scaler.step(a, np.ones(4))
    scaler.step(b, np.full(4, np.inf))
    scaler.update()
    assert scaler.get_scale() == 32.0
    scaler.step(a, np.ones(4))
    scaler.step(b, np.ones(4))
    scaler.update()
    assert scaler.get_scale() == 64.0


def test_scale_outputs():
    scaler = fastopt.GradScaler(init_scale=4.0)
    x = np.ones(3, np.float32)
    assert scaler.scale(2.5) == 10.0
    y = scaler.scale(x)
    assert y.dtype == np.float32 and np.all(y == 4.0) and np.all(x == 1.0)
    pair = scaler.scale((x, [1.0, x]))
    assert isinstance(pair, tuple) and isinstance(pair[1], list) and pair[1][0] == 4.0
    with pytest.raises(TypeError, match="outputs"):
        scaler.scale("loss")


def test_disabled_scaler_passes_through():
    class Recorder:
        def step(self, grad, **kwargs):
            self.kwargs = kwargs
            return 1.5
    scaler = fastopt.GradScaler(enabled=False)
    opt = Recorder()
    x = np.ones(2)
    assert scaler.scale(x) is x and scaler.get_scale() == 1.0 and not scaler.is_enabled()
    assert scaler.step(opt, x, max_grad_norm=1.0) == 1.5 and opt.kwargs == {"max_grad_norm": 1.0}
    scaler.update()
    assert scaler.state_dict() == {}


def test_state_dict_round_trip_continues_identically():
    scaler = fastopt.GradScaler(init_scale=256.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=4)
    opt = fastopt.SGD(np.zeros(8), lr=0.1)
    for kind in ["ok", "ok", "inf", "ok", "ok"]:
        scaler.step(opt, gradient(kind, np.random.default_rng(0)))
        scaler.update()
    state = pickle.loads(pickle.dumps(scaler.state_dict()))
    assert state == {"scale": 64.0, "growth_factor": 3.0, "backoff_factor": 0.25, "growth_interval": 4,
                     "_growth_tracker": 2}
    resumed = fastopt.GradScaler()
    resumed.load_state_dict(state)
    tail = ["ok", "ok", "ok", "nan", "ok"]
    assert our_run(state_config(resumed), tail) == our_run(state_config(scaler), tail)
    with pytest.raises(RuntimeError, match="disabled"):
        resumed.load_state_dict({})


def state_config(scaler):
    s = scaler.state_dict()
    return {"init_scale": s["scale"], "growth_factor": s["growth_factor"], "backoff_factor": s["backoff_factor"],
            "growth_interval": s["growth_interval"]}


def test_torch_state_dict_loads():
    torch = pytest.importorskip("torch")
    theirs = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=5)
    theirs.scale(torch.ones(()))
    ours = fastopt.GradScaler()
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict() == theirs.state_dict()


@pytest.mark.parametrize("change", [
    {"scale": 0.0}, {"scale": float("inf")}, {"scale": float("nan")}, {"growth_factor": 1.0},
    {"backoff_factor": 0.0}, {"growth_interval": 0}, {"growth_interval": 2.5}, {"_growth_tracker": 7},
    {"_growth_tracker": -1}])
def test_bad_state_dict_changes_nothing(change):
    scaler = fastopt.GradScaler(init_scale=8.0, growth_interval=4)
    before = scaler.state_dict()
    with pytest.raises((ValueError, TypeError)):
        scaler.load_state_dict({**before, **change})
    assert scaler.state_dict() == before


@pytest.mark.parametrize("options, word", [
    ({"init_scale": 0.0}, "init_scale"), ({"init_scale": 1e39}, "init_scale"), ({"init_scale": "cuda"}, "device"),
    ({"growth_factor": 0.5}, "growth_factor"), ({"backoff_factor": 1.0}, "backoff_factor"),
    ({"backoff_factor": 0.0}, "backoff_factor"), ({"growth_interval": 0}, "growth_interval")])
def test_bad_arguments(options, word):
    with pytest.raises((ValueError, TypeError), match=word):
        fastopt.GradScaler(**options)


def test_misuse_raises():
    scaler = fastopt.GradScaler()
    opt = fastopt.SGD(np.zeros(4), lr=0.1)
    with pytest.raises(RuntimeError, match="update"):
        scaler.update()
    with pytest.raises(TypeError, match="grad_scale"):
        scaler.step(opt, np.ones(4), grad_scale=2.0)
    with pytest.raises(TypeError, match="last_step_skipped"):
        scaler.step(object(), np.ones(4))
    scaler.step(opt, np.ones(4))
    with pytest.raises(RuntimeError, match="already"):
        scaler.step(opt, np.ones(4))
    with pytest.raises(RuntimeError, match="pickled"):
        pickle.dumps(scaler)
    with pytest.raises(NotImplementedError, match="max_grad_norm"):
        scaler.unscale_(opt)
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(new_scale=-1.0)
    scaler.update(new_scale=3.0)
    assert scaler.get_scale() == 3.0
    clone = copy.deepcopy(scaler)
    assert clone.state_dict() == scaler.state_dict()
