"""AdEMAMix against the implementations users run (pytorch_optimizer, bitsandbytes' reference
AdEMAMix; torch CPU, float64), step for step with both warm-ups; its options and checks."""
import numpy as np
import pytest

import fastopt
from fastopt import functional as F
from conftest import GROUP_SHAPES, random_arrays, two_group_twins

STEPS = 64
# float64: the kernels fold lr / bc1 and lr * alpha into two scalars, the packages do not: a few
# roundings per step (~1e-16 each); 1e-12 of the distance travelled bounds 64 steps of it.
RTOL64 = 1e-12
CASES = [dict(lr=0.01, weight_decay=0.0), dict(lr=0.01, weight_decay=0.1),
         dict(lr=0.02, betas=(0.8, 0.99, 0.999), alpha=2.0, weight_decay=0.05, t_alpha_beta3=30),
         dict(lr=0.01, alpha=8.0, t_alpha_beta3=200, weight_decay=1e-2)]  # pytorch_optimizer: 0 by default


def _compare(ours_cls_kwargs, make_theirs, n, case):
    torch = pytest.importorskip("torch")
    start, grads = random_arrays(n, np.float64, case, STEPS)
    ours = start.copy()
    opt, t = fastopt.AdEMAMix(ours, **ours_cls_kwargs), torch.tensor(start.copy())
    ref = make_theirs([t])
    for g in grads:
        opt.step(g)
        t.grad = torch.tensor(g.copy())
        ref.step()
    travelled = float(np.max(np.abs(t.numpy() - start)))
    assert float(np.max(np.abs(ours - t.numpy()))) <= RTOL64 * travelled
    return opt, ref, t


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("n", [1, 7, 1031])
def test_matches_pytorch_optimizer(backend, case, n):
    """pytorch_optimizer's default weight decay is coupled (added to the gradient); with
    weight_decouple=True it is AdamW's, which is fastopt's (and bitsandbytes')."""
    po = pytest.importorskip("pytorch_optimizer")
    kwargs = CASES[case]
    opt, ref, t = _compare(dict(kwargs, backend=backend),
                           lambda params: po.AdEMAMix(params, weight_decouple=True, foreach=False, **kwargs), n, case)
    state = ref.state[t]
    for name in ("exp_avg", "exp_avg_sq", "exp_avg_slow"):
        theirs = state[name].numpy()
        assert float(np.max(np.abs(opt.state[name] - theirs))) <= 1e-12 * float(np.max(np.abs(theirs))), name


@pytest.mark.parametrize("t_alpha, t_beta3", [(None, None), (30, None), (None, 40), (25, 50)])
def test_matches_bitsandbytes_reference(backend, t_alpha, t_beta3):
    bnb = pytest.importorskip("bitsandbytes.optim.ademamix")
    kwargs = dict(lr=0.01, weight_decay=0.02, alpha=4.0, t_alpha=t_alpha, t_beta3=t_beta3)
    _compare(dict(kwargs, backend=backend), lambda params: bnb._ReferenceAdEMAMix(params, **kwargs), 1031, 5)


def test_defaults_are_bitsandbytes():
    opt = fastopt.AdEMAMix(np.ones(3))
    h = opt.param_groups[0]
    assert (h["lr"], h["betas"], h["alpha"], h["t_alpha"], h["t_beta3"], h["eps"], h["weight_decay"]) == \
        (1e-3, (0.9, 0.999, 0.9999), 5.0, None, None, 1e-8, 1e-2)


def test_t_alpha_beta3_sets_both_warmups():
    opt = fastopt.AdEMAMix(np.ones(3), t_alpha_beta3=100)
    assert opt.param_groups[0]["t_alpha"] == opt.param_groups[0]["t_beta3"] == 100
    fastopt.AdEMAMix(np.ones(3), t_alpha=100, t_alpha_beta3=100)  # the same length: unambiguous
    with pytest.raises(ValueError, match="t_alpha_beta3"):
        fastopt.AdEMAMix(np.ones(3), t_beta3=50, t_alpha_beta3=100)


def test_functional_form_is_the_class_step_bitwise(backend):
    start, grads = random_arrays(1031, np.float32, 2, 20)
    p, m1, v, m2 = start.copy(), *(np.zeros_like(start) for _ in range(3))
    opt = fastopt.AdEMAMix(start.copy(), lr=0.01, t_alpha=10, t_beta3=15, backend=backend)
    for t, g in enumerate(grads, 1):
        F.ademamix(p, g, m1, v, m2, step=t, lr=0.01, t_alpha=10, t_beta3=15, backend=backend)
        opt.step(g)
    np.testing.assert_array_equal(p, opt.param)
    np.testing.assert_array_equal(m2, opt.state["exp_avg_slow"])


@pytest.mark.parametrize("kwargs, match", [(dict(beta3=1.0), "beta3"), (dict(t_beta3=0), "t_beta3"),
                                           (dict(alpha=float("nan")), "alpha"),
                                           (dict(beta1=0.0, t_beta3=5), "beta1")])
def test_functional_checks_change_nothing(kwargs, match):
    p, m1, v, m2 = (np.ones(5, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match=match):
        F.ademamix(p, np.ones(5, np.float32), m1, v, m2, step=1, **kwargs)
    assert all(np.all(a == 1) for a in (p, m1, v, m2))


def test_grad_scale_clipping_and_skipping_match_the_reference(backend):
    from reference import Reference
    start, grads = random_arrays(1031, np.float64, 6, 30)
    p = start.copy()
    kwargs = dict(lr=0.01, weight_decay=0.05, t_alpha=10, t_beta3=20)
    opt = fastopt.AdEMAMix(p, backend=backend, **kwargs)
    ref = Reference("ademamix", start, **kwargs)
    for i, g in enumerate(grads):
        opt.step(g * 4.0, grad_scale=4.0, max_grad_norm=20.0)
        ref.step(g * 4.0, grad_scale=4.0, clip=20.0)
        if i == 7:
            before = p.copy()
            opt.step(np.full_like(g, np.nan), skip_nonfinite=True)
            assert opt.last_step_skipped and opt.state["step"] == 8
            np.testing.assert_array_equal(p, before)
    assert float(np.max(np.abs(p - ref.p))) <= RTOL64 * float(np.max(np.abs(ref.p - start)))


def test_groups_match_pytorch_optimizer():
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    rng = np.random.default_rng(4)
    groups = [dict(lr=0.02, weight_decay=0.1), dict(lr=0.01, weight_decay=0.0, alpha=2.0, t_alpha_beta3=8)]
    ours, theirs, opt, ref = two_group_twins(torch, rng, groups, fastopt.AdEMAMix, po.AdEMAMix,
                                             theirs_options=dict(weight_decouple=True, foreach=False))
    for _ in range(15):
        gs = [rng.standard_normal(s) for s in GROUP_SHAPES]
        for t, g in zip(theirs, gs):
            t.grad = torch.tensor(g.copy())
        opt.step(gs)
        ref.step()
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-12, atol=1e-14)


def test_state_dict_round_trip_continues_bit_for_bit():
    import copy
    start, grads = random_arrays(1031, np.float32, 8, 30)
    whole = fastopt.AdEMAMix(start.copy(), lr=0.01, t_alpha=20, t_beta3=20)
    first = fastopt.AdEMAMix(start.copy(), lr=0.01, t_alpha=20, t_beta3=20)
    for g in grads[:10]:
        whole.step(g)
        first.step(g)
    resumed = fastopt.AdEMAMix(first.param.copy(), lr=0.01, t_alpha=20, t_beta3=20)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for g in grads[10:]:
        whole.step(g)
        resumed.step(g)
    np.testing.assert_array_equal(resumed.param, whole.param)
    np.testing.assert_array_equal(resumed.state["exp_avg_slow"], whole.state["exp_avg_slow"])
