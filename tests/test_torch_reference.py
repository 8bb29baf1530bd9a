"""Step-for-step agreement with torch.optim, where torch is installed (it is never a dependency).

Both sides run in float64 on the same gradients; the only differences are the order of a few
roundings per step (torch uses lerp/addcdiv, fastopt folds scalars), so 1e-10 relative is ample,
while a different rule or default would differ by far more."""
import inspect

import numpy as np
import pytest

import fastopt
import rule_table
from conftest import random_arrays

torch = pytest.importorskip("torch")

CASES = [(cls, getattr(torch.optim, cls.__name__), kw) for cls, kws in rule_table.rows("torch_cases") for kw in kws]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0].__name__ for c in CASES])
def test_matches_torch_optim(backend, case, torch_float64):
    ours_cls, torch_cls, kwargs = CASES[case]
    param, grads = random_arrays(1031, np.float64, 20, 40)
    run_both(ours_cls, torch_cls, kwargs, param, grads, backend)


EPS_CLASSES = [name for name in rule_table.names("torch") if "eps" in
               inspect.signature(getattr(torch.optim, name).__init__).parameters]


@pytest.mark.parametrize("name", EPS_CLASSES)
def test_eps_zero_is_accepted_as_torch_accepts_it(name, torch_float64):
    # Gradients without zeros keep every denominator nonzero, so both sides stay finite.
    param, grads = random_arrays(257, np.float64, 21, 10)
    grads = [np.where(g == 0, 0.5, g) for g in grads]
    run_both(rule_table.cls(name), getattr(torch.optim, name), dict(eps=0.0), param, grads, "cpu")
    assert np.all(np.isfinite(param))


def run_both(ours_cls, torch_cls, kwargs, param, grads, backend):
    tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
    topt = torch_cls([tp], **kwargs)
    opt = ours_cls(param, backend=backend, **kwargs)
    for g in grads:
        opt.step(g)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(param, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
    tstate = topt.state[tp]
    for key, value in tstate.items():
        if key in opt.state and hasattr(opt.state[key], "shape"):
            np.testing.assert_allclose(opt.state[key], value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key)


def test_defaults_match_torch():
    """Constructor defaults are torch.optim's, so code can switch between the two."""
    for ours in map(rule_table.cls, rule_table.names("torch")):
        theirs = getattr(torch.optim, ours.__name__)
        ours_sig, their_sig = inspect.signature(ours.__init__), inspect.signature(theirs.__init__)
        for name, p in their_sig.parameters.items():
            if name in ours_sig.parameters and p.default is not inspect.Parameter.empty:
                mine = ours_sig.parameters[name].default
                assert mine == p.default or (mine is None and p.default is None), (ours.__name__, name, mine, p.default)
