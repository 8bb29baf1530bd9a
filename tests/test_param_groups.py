"""Parameters as torch.optim takes them: lists, group dicts, frozen parameters, closures, options
written between steps, torch tensors stepped in place; step for step against torch.optim in
float64."""
import math

import numpy as np
import pytest

import fastopt
import rule_table

torch = pytest.importorskip("torch")

SHAPES = [(7,), (3, 5), (1031,), (1,), (4, 4, 2)]
# (fastopt class, torch class, defaults, options of the second and third groups). The third group
# changes a structural flag where the rule has one.
CASES = [(cls, getattr(torch.optim, cls.__name__)) + case
         for cls, cases in rule_table.rows("group_cases") for case in cases]
IDS = [f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]
STEPS = 12
pytestmark = pytest.mark.usefixtures("torch_float64")


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * rng.uniform(0.2, 2) for s in SHAPES] for _ in range(STEPS)]
    return start, grads


def _frozen(step, j):
    """Which parameter has no gradient at which step (torch skips p.grad is None)."""
    return (j == 1 and step % 3 == 0) or (j == 3 and step < 4)


def _run(case, clip=None):
    ours_cls, torch_cls, defaults, second, third = CASES[case]
    start, grads = _setup()
    ours = [a.copy() for a in start]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    layout = [slice(0, 2), slice(2, 4), slice(4, 5)]
    extra = [{}, second, third]
    opt = ours_cls([{"params": ours[s], **e} for s, e in zip(layout, extra)], **defaults)
    topt = torch_cls([{"params": theirs[s], **e} for s, e in zip(layout, extra)], **defaults)
    for step in range(STEPS):
        if step == 5:  # a scheduler writing the groups between steps
            for a, b in zip(opt.param_groups, topt.param_groups):
                a["lr"] *= 0.5
                b["lr"] *= 0.5
        gs = [None if _frozen(step, j) else g for j, g in enumerate(grads[step])]
        for t, g in zip(theirs, gs):
            t.grad = None if g is None else torch.from_numpy(g.copy())

        def closure():
            return torch.tensor(float(step))

        if clip is not None:
            torch.nn.utils.clip_grad_norm_([t for t in theirs if t.grad is not None], clip)
        if step % 2:
            loss = opt.step(gs, closure=closure, max_grad_norm=clip)
            assert float(loss) == step
        else:
            opt.step(gs, max_grad_norm=clip)
        topt.step()
    return opt, topt, ours, theirs


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_groups_frozen_params_and_closures_match_torch(case):
    opt, topt, ours, theirs = _run(case)
    for j, (a, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"param {j}")
        tstate = topt.state[t]
        if "step" in tstate:
            assert opt.state[j]["step"] == int(tstate["step"]), j
        for key, value in tstate.items():
            if key != "step" and value.ndim:
                np.testing.assert_allclose(opt.state[j][key].reshape(value.shape), value.numpy(),
                                           rtol=1e-9, atol=1e-12, err_msg=f"{key} of param {j}")


@pytest.mark.parametrize("case", [5, 6, 0], ids=["Adam", "AdamW", "SGD"])
def test_max_grad_norm_is_global_over_groups_as_clip_grad_norm(case):
    opt, topt, ours, theirs = _run(case, clip=0.5)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_torch_model_parameters_are_stepped_in_place():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    twin.load_state_dict(model.state_dict())
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = fastopt.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01)
    tdecay = [p for n, p in twin.named_parameters() if n.endswith("weight")]
    tno = [p for n, p in twin.named_parameters() if n.endswith("bias")]
    topt = torch.optim.AdamW([{"params": tdecay}, {"params": tno, "weight_decay": 0.0}], lr=0.01)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(10):
        for m, o in ((model, opt), (twin, topt)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()  # fastopt reads each tensor's .grad, as torch does
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert opt.params[0].ctypes.data == decay[0].data_ptr()  # a view, not a copy
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_buffer_protocol_and_dlpack_objects_are_viewed():
    import array

    buf = array.array("d", [1.0, 2.0, 3.0])
    t = torch.ones(4)
    opt = fastopt.SGD([buf, t], lr=0.5)
    opt.step([np.ones(3), torch.ones(4)])
    assert list(buf) == [0.5, 1.5, 2.5]
    assert torch.equal(t, torch.full((4,), 0.5))
    with pytest.raises(TypeError, match="read-only"):
        fastopt.SGD([b"12345678"], lr=0.1)
    with pytest.raises(TypeError, match="contiguous"):
        fastopt.SGD([torch.ones(4, 4).t()], lr=0.1)


def test_group_options_written_between_steps_are_validated_at_the_step():
    a, b = np.ones(4), np.ones(3)
    opt = fastopt.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01)
    with pytest.raises(ValueError, match="lr"):  # checked where it is written
        opt.param_groups[1]["lr"] = -1.0
    assert opt.param_groups[1]["lr"] == 0.1
    # A group dict replaced by a plain one is checked at the step, nothing written before.
    opt.param_groups[1] = {**opt.param_groups[1], "lr": -1.0}
    with pytest.raises(ValueError, match=r"param_groups\[1\].*lr"):
        opt.step([np.ones(4), np.ones(3)])
    assert np.all(a == 1) and np.all(b == 1) and opt.state[0]["step"] == 0
    opt.param_groups[1]["lr"] = 0.5
    opt.param_groups[0]["initial_lr"] = 0.01  # a scheduler's own key is kept
    opt.step([np.ones(4), np.ones(3)])
    assert np.allclose(b, 0.5) and np.allclose(a, 0.99)
    del opt.param_groups[0]["betas"]
    with pytest.raises(ValueError, match="has no 'betas'"):
        opt.step([np.ones(4), np.ones(3)])


def test_option_attributes_map_to_every_group():
    opt = fastopt.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match="param_groups"):
        opt.lr
    opt.lr = 0.2
    assert opt.lr == 0.2 and [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    with pytest.raises(AttributeError, match="learning_rate"):
        opt.learning_rate = 0.5
    with pytest.raises(AttributeError):
        opt.momentun
    assert opt.defaults["lr"] == 0.1 and opt.defaults["foreach"] is None


def test_torch_switches_are_accepted_no_ops():
    p = np.ones(5)
    opt = fastopt.Adam(p, lr=0.1, foreach=True, fused=True, capturable=False, differentiable=False)
    opt.step(np.ones(5))
    assert np.allclose(p, 0.9)
    assert opt.param_groups[0]["fused"] is True
    with pytest.raises(ValueError, match="foreach"):
        fastopt.Adam(p, foreach="yes")


def test_add_param_group_and_duplicates():
    a, b = np.ones(3), np.ones(2)
    opt = fastopt.Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.2})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999) and opt.param_groups[1]["lr"] == 0.2
    opt.step([np.ones(3), np.ones(2)])
    assert np.allclose(a, 0.9) and np.allclose(b, 0.8)
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [a[:2]]})
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [np.ones(2)], "lr": -1})
    assert len(opt.param_groups) == 2
    with pytest.raises(ValueError, match="more than once"):
        fastopt.SGD([a, a])
    with pytest.raises(ValueError, match="empty"):
        fastopt.SGD([])
    with pytest.raises(TypeError, match="set"):
        fastopt.SGD({a.tobytes()})


def test_grad_lists_are_checked():
    opt = fastopt.SGD([np.ones((3, 4)), np.ones(5)], lr=0.1)
    with pytest.raises(ValueError, match="2 gradients|1 gradients"):
        opt.step([np.ones(12)])
    with pytest.raises(TypeError, match="list of 2"):
        opt.step(np.ones(12))
    with pytest.raises(ValueError, match=r"params\[0\].*shape \(4, 3\)"):
        opt.step([np.ones((4, 3)), np.ones(5)])
    opt.step([np.ones(12), None])  # a flat gradient of the right size is fine
    assert opt.state[0]["step"] == 1 and opt.state[1]["step"] == 0


def test_zero_grad_zeroes_the_gradients_given():
    flat = fastopt.FlatParams([(3, 2), (4,)], "float64")
    flat.grad[...] = 1.0
    opt = fastopt.SGD(flat, lr=0.5)
    opt.step()  # reads flat.grad
    assert np.allclose(flat.views[0], -0.5)
    opt.zero_grad()
    assert not flat.grad.any()
    p, g = np.ones(3), np.ones(3)
    opt = fastopt.SGD([p], lr=0.5)
    opt.step([g])
    opt.zero_grad()
    assert not g.any()


def test_flat_params_from_arrays():
    w, b = np.arange(6.0).reshape(2, 3), np.ones(5)
    flat = fastopt.FlatParams.from_arrays([w, torch.ones(2)])
    assert [v.shape for v in flat.views] == [(2, 3), (2,)]
    np.testing.assert_array_equal(flat.views[0], w)
    assert flat.views[0].base is not None and not np.shares_memory(flat.views[0], w)
    with pytest.raises(TypeError, match="one dtype"):
        fastopt.FlatParams.from_arrays([w, b.astype(np.float32)])


def test_closure_alone_returns_its_loss():
    t = torch.ones(3, requires_grad=True)
    opt = fastopt.SGD([t], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (t * t).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert math.isclose(float(loss.detach()), 3.0)
    assert torch.allclose(t.detach(), torch.full((3,), 0.8))


def test_negative_grad_scale_and_unknown_backends_are_refused():
    p = np.ones(4)
    opt = fastopt.Adam(p, lr=0.1)
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(np.ones(4), grad_scale=-2.0)
    assert np.all(p == 1)
    with pytest.raises(ValueError, match="backend"):
        fastopt.Adam(p, backend="gpu")
    with pytest.raises(TypeError, match="cuda"):
        fastopt.Adam(p, backend="cuda")


def test_named_parameters_and_state_by_parameter():
    model = torch.nn.Linear(3, 2)
    opt = fastopt.SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert opt.state[model.bias] is opt.state[1]
    assert "momentum_buffer" in opt.state[model.weight]
    a = np.ones(3)
    opt = fastopt.Adam([a, np.ones(2)])
    assert opt.state[a] is opt.state[0]
    with pytest.raises(KeyError):
        opt.state[np.ones(3)]
    assert opt.state_dict()["param_groups"][0]["params"] == [0, 1]


def test_frozen_tensor_of_a_flat_buffer_stays_put():
    """A FlatParams' views as the parameter list: still one kernel call, and None freezes one
    tensor (stepping flat.data would move it under momentum and decay)."""
    flat = fastopt.FlatParams([(3, 4), (5,), (2, 2)], "float64")
    for v in flat.views:
        v[...] = 1.0
    opt = fastopt.SGD(flat.views, lr=0.1, momentum=0.9, weight_decay=0.1)
    for step in range(3):
        flat.grad[...] = 1.0
        opt.step([g if j != 1 else None for j, g in enumerate(flat.grad_views)])
    assert np.all(flat.views[1] == 1.0) and "momentum_buffer" not in opt.state[1]
    assert np.all(flat.views[0] < 1.0)


def test_skip_nonfinite_and_grad_scale_act_on_every_group():
    a, b = np.ones(4), np.ones(3)
    opt = fastopt.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    bad = np.ones(3)
    bad[1] = np.inf
    norm = opt.step([np.ones(4), bad], skip_nonfinite=True)
    assert math.isinf(norm) and opt.last_step_skipped
    assert np.all(a == 1) and np.all(b == 1) and opt.state[0]["step"] == opt.state[1]["step"] == 0
    twin_a, twin_b = np.ones(4), np.ones(3)
    twin = fastopt.Adam([{"params": [twin_a]}, {"params": [twin_b], "lr": 0.5}], lr=0.1)
    opt.step([np.full(4, 8.0), np.full(3, -4.0)], grad_scale=4.0)
    twin.step([np.full(4, 2.0), np.full(3, -1.0)])
    np.testing.assert_array_equal(a, twin_a)
    np.testing.assert_array_equal(b, twin_b)
