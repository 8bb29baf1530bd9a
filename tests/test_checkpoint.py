"""Checkpoints that cannot corrupt: torch's layout, torch's own state_dicts loaded and continued,
every bad checkpoint refused with nothing changed, and bit-for-bit round trips through pickle,
deepcopy and fastopt.save / fastopt.load."""
import copy
import pickle

import numpy as np
import pytest

import fastopt
import rule_table
from test_param_groups import CASES, IDS, _frozen, _setup

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("torch_float64")


LAYOUT = [slice(0, 2), slice(2, 4), slice(4, 5)]


def _groups(params, case):
    _, _, _, second, third = CASES[case]
    return [{"params": params[s], **e} for s, e in zip(LAYOUT, [{}, second, third])]


def _torch_steps(topt, theirs, grads, steps):
    for step in steps:
        for j, (t, g) in enumerate(zip(theirs, grads[step])):
            t.grad = None if _frozen(step, j) else torch.from_numpy(g.copy())
        topt.step()


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_torch_state_dict_loads_and_continues_as_torch(case):
    ours_cls, torch_cls, defaults = CASES[case][:3]
    start, grads = _setup(1)
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    topt = torch_cls(_groups(theirs, case), **defaults)
    _torch_steps(topt, theirs, grads, range(6))
    saved = topt.state_dict()
    ours = [t.detach().numpy().copy() for t in theirs]
    # Built with other options: the checkpoint's options replace them, as in torch.
    opt = ours_cls(_groups(ours, case), lr=0.5)
    opt.load_state_dict(saved)
    _torch_steps(topt, theirs, grads, range(6, 12))
    for step in range(6, 12):
        opt.step([None if _frozen(step, j) else g for j, g in enumerate(grads[step])])
    for j, (a, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"param {j}")
    assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]


def _trained(cls=fastopt.Adam, steps=3, **kwargs):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(5), rng.standard_normal((2, 3))]
    opt = cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.05}], **kwargs)
    for _ in range(steps):
        opt.step([rng.standard_normal(5), rng.standard_normal((2, 3))])
    return opt


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict()), [p.copy() for p in opt.params]


def _assert_same(opt, snapshot):
    sd, params = snapshot
    now = opt.state_dict()
    assert [{k: v for k, v in g.items()} for g in now["param_groups"]] == sd["param_groups"]
    assert now["state"].keys() == sd["state"].keys()
    for i, entry in sd["state"].items():
        assert now["state"][i].keys() == entry.keys()
        for name, value in entry.items():
            if hasattr(value, "shape"):
                np.testing.assert_array_equal(now["state"][i][name].view(np.uint8), value.view(np.uint8))
            else:
                assert now["state"][i][name] == value, name
    for a, b in zip(opt.params, params):
        np.testing.assert_array_equal(a, b)


def _del(path):
    def edit(sd):
        *head, last = path
        target = sd
        for key in head:
            target = target[key]
        del target[last]
    return edit


def _set(path, value):
    def edit(sd):
        *head, last = path
        target = sd
        for key in head:
            target = target[key]
        target[last] = value(target[last]) if callable(value) else value
    return edit


# (id, edit of a good Adam state_dict, error type, message pattern)
BAD = [
    ("no-state", _del(["state"]), ValueError, "state_dict must have"),
    ("no-groups", _del(["param_groups"]), ValueError, "state_dict must have"),
    ("empty-group", lambda sd: sd.update(state={}, param_groups=[{}]), ValueError, "param groups|params"),
    ("extra-group", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "3 param groups"),
    ("missing-group", lambda sd: sd["param_groups"].pop(), ValueError, "1 param groups"),
    ("group-size", _set(["param_groups", 1, "params"], [1, 2]), ValueError, "2 parameters in the state_dict"),
    ("duplicate-index", _set(["param_groups", 1, "params"], [0]), ValueError, "more than once"),
    ("stray-state", _set(["state", 7], {"step": 1}), ValueError, "7"),
    ("unknown-top-key", _set(["extra"], 1), ValueError, "unknown key"),
    ("missing-option", _del(["param_groups", 0, "betas"]), ValueError, "lacks option 'betas'"),
    ("bad-lr", _set(["param_groups", 1, "lr"], -1.0), ValueError, r"param_groups\[1\].*lr"),
    ("bad-betas", _set(["param_groups", 0, "betas"], (1.0, 0.9)), ValueError, "betas"),
    ("foreign-option", _set(["param_groups", 0, "momentum"], 0.9), ValueError, "'momentum'.*another optimizer"),
    ("array-size", _set(["state", 1, "exp_avg"], np.zeros(5)), ValueError, "exp_avg' has 5 elements"),
    ("array-dtype", _set(["state", 0, "exp_avg_sq"], lambda a: a.astype(np.float32)), ValueError, "float32"),
    ("array-not-array", _set(["state", 0, "exp_avg"], [0.0] * 5), TypeError, "exp_avg' must be an array"),
    ("unknown-state", _set(["state", 0, "momentum_buffer"], np.zeros(5)), ValueError, "momentum_buffer"),
    ("step-float", _set(["state", 0, "step"], 3.5), TypeError, "step must be"),
    ("step-negative", _set(["state", 0, "step"], -2), ValueError, "step must be"),
    ("step-string", _set(["state", 0, "step"], "3"), TypeError, "step must be"),
    ("step-array", _set(["state", 0, "step"], np.array([3, 3])), ValueError, "step must be a scalar"),
    ("step-without-arrays", _del(["state", 1, "exp_avg"]), ValueError, "lacks 'exp_avg'"),
    ("arrays-without-step", _del(["state", 1, "step"]), ValueError, "no 'step'"),
    ("amsgrad-without-max", _set(["param_groups", 0, "amsgrad"], True), ValueError, "max_exp_avg_sq"),
    ("master-for-float", _set(["state", 0, "master_weights"], np.zeros(5, np.float32)), ValueError, "master_weights"),
]


@pytest.mark.parametrize("edit, error, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_checkpoint_is_refused_and_changes_nothing(edit, error, match):
    opt = _trained()
    before = _snapshot(opt)
    bad = copy.deepcopy(opt.state_dict())
    edit(bad)
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    _assert_same(opt, before)


@pytest.mark.parametrize("source, target", [
    (fastopt.Adam, fastopt.SGD), (fastopt.SGD, fastopt.Adam), (fastopt.Adam, fastopt.RAdam),
    (fastopt.RAdam, fastopt.Adam), (fastopt.Adamax, fastopt.Adam), (fastopt.Adam, fastopt.AdamW),
    (fastopt.NAdam, fastopt.Adam), (fastopt.Adagrad, fastopt.RMSprop),
] + [(cls, rule_table.cls(target)) for cls, target in rule_table.rows("foreign_checkpoint")])
def test_another_optimizers_checkpoint_is_refused(source, target):
    sd = _trained(source).state_dict()
    opt = _trained(target)
    before = _snapshot(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same(opt, before)


@pytest.mark.parametrize("step", [np.int64(3), np.array(3), np.float32(3.0), np.array(3.0, np.float32)],
                         ids=["int64", "0-d-int", "float32-scalar", "0-d-float32"])
def test_step_as_numpy_scalar_or_0d_array(step):
    opt = _trained()
    sd = opt.state_dict()
    sd["state"][0]["step"] = step
    opt.load_state_dict(sd)
    assert opt.state[0]["step"] == 3 and type(opt.state[0]["step"]) is int


def test_structural_flags_and_extra_keys_round_trip():
    opt = _trained(fastopt.Adam, amsgrad=True)
    opt.param_groups[0]["initial_lr"] = 0.001
    sd = opt.state_dict()
    assert sd["param_groups"][0]["amsgrad"] is True and sd["param_groups"][0]["initial_lr"] == 0.001
    fresh = fastopt.Adam([{"params": [np.zeros(5)]}, {"params": [np.zeros((2, 3))]}])
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["amsgrad"] and fresh.param_groups[0]["initial_lr"] == 0.001
    assert fresh.param_groups[1]["lr"] == 0.05 and "max_exp_avg_sq" in fresh.state[1]


def _continue(opt, steps=3):
    rng = np.random.default_rng(9)
    for _ in range(steps):
        opt.step([rng.standard_normal(a.shape) for a in opt.params])


def _bits_equal(a, b):
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
    for i in range(len(a.params)):
        for name, value in a.state[i].items():
            other = b.state[i][name]
            if hasattr(value, "shape"):
                np.testing.assert_array_equal(value.view(np.uint8), other.view(np.uint8))
            else:
                assert value == other


@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.NAdam, fastopt.SGD, fastopt.RMSprop],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_round_trip_bit_for_bit(cls, how):
    kwargs = dict(momentum=0.9) if cls in (fastopt.SGD, fastopt.RMSprop) else {}
    opt = _trained(cls, **kwargs)
    twin = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    assert not np.shares_memory(twin.params[0], opt.params[0])
    _continue(opt)
    _continue(twin)
    _bits_equal(opt, twin)
    with pytest.raises(AttributeError):
        twin.learning_rate = 1.0


def test_pickled_torch_parameters_stay_one_memory():
    t = torch.nn.Parameter(torch.ones(4))
    opt = pickle.loads(pickle.dumps(fastopt.SGD([t], lr=0.5)))
    twin = opt.param_groups[0]["params"][0]
    opt.step([np.ones(4)])
    assert torch.equal(twin.detach(), torch.full((4,), 0.5))


def test_save_and_load_round_trip_bit_for_bit(tmp_path):
    opt = _trained(fastopt.NAdam)
    opt.param_groups[1]["initial_lr"] = 0.05
    path = tmp_path / "opt.npz"
    fastopt.save(opt, path)
    with np.load(path, allow_pickle=False) as data:  # readable without pickle
        assert "manifest" in data
    params = [p.copy() for p in opt.params]
    twin = fastopt.NAdam([{"params": [params[0]]}, {"params": [params[1]]}])
    fastopt.load(twin, path)
    assert twin.param_groups[1]["initial_lr"] == 0.05 and twin.param_groups[1]["lr"] == 0.05
    _bits_equal(opt, twin)
    _continue(opt)
    _continue(twin)
    _bits_equal(opt, twin)


def test_save_and_load_bfloat16_state(tmp_path):
    pytest.importorskip("ml_dtypes")
    p = np.linspace(-1, 1, 33).astype(np.float32)
    opt = fastopt.Adam(p, lr=0.01, state_dtype="bfloat16")
    opt.step(np.ones(33, np.float32))
    fastopt.save(opt, tmp_path / "bf16.npz")
    twin = fastopt.Adam(p.copy(), lr=0.01, state_dtype="bfloat16")
    fastopt.load(twin, tmp_path / "bf16.npz")
    assert twin.state["exp_avg"].dtype == opt.state["exp_avg"].dtype
    np.testing.assert_array_equal(twin.state["exp_avg"].view(np.uint16), opt.state["exp_avg"].view(np.uint16))


def test_bad_files_are_refused_and_change_nothing(tmp_path):
    opt = _trained()
    before = _snapshot(opt)
    other = _trained(fastopt.SGD)
    fastopt.save(other, tmp_path / "sgd.npz")
    with pytest.raises(ValueError, match="SGD checkpoint"):
        fastopt.load(opt, tmp_path / "sgd.npz")
    np.savez(tmp_path / "plain.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="not a fastopt checkpoint"):
        fastopt.load(opt, tmp_path / "plain.npz")
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        fastopt.load(opt, tmp_path / "obj.npy")
    _assert_same(opt, before)
    opt.param_groups[0]["schedule"] = object()
    with pytest.raises(TypeError, match="cannot store"):
        fastopt.save(opt, tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_one_array_state_dict_keeps_string_keys_to_state_zero():
    p = np.ones(6, np.float32)
    opt = fastopt.Adam(p, lr=0.1)
    opt.step(np.ones(6, np.float32))
    sd = opt.state_dict()
    assert list(sd["state"]) == [0] and sd["param_groups"][0]["params"] == [0]
    assert sd["state"]["step"] == sd["state"][0]["step"] == 1
    legacy = {"state": dict(sd["state"][0]), "param_groups": sd["param_groups"]}
    twin = fastopt.Adam(p.copy(), lr=0.1)
    twin.load_state_dict(legacy)
    assert twin.state["step"] == 1


def test_one_array_legacy_layout_without_params_indices_loads():
    p = np.ones(6, np.float32)
    opt = fastopt.Adam(p, lr=0.1)
    opt.step(np.ones(6, np.float32))
    sd = opt.state_dict()
    group = {k: v for k, v in sd["param_groups"][0].items() if k != "params"}
    twin = fastopt.Adam(p.copy(), lr=0.5)
    twin.load_state_dict({"state": dict(sd["state"][0]), "param_groups": [group]})
    assert twin.state["step"] == 1 and twin.lr == 0.1
    multi = fastopt.Adam([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="params"):
        multi.load_state_dict({"state": {}, "param_groups": [group]})
