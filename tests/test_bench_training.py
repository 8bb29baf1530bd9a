"""The end-to-end training benchmark: its NumPy model computes the gradients torch's autograd does,
and its worker and table run (timings are never asserted)."""
import numpy as np
import pytest

from fastopt.bench import cli, training


@pytest.mark.parametrize("batchnorm", [False, True])
def test_numpy_model_gradients_match_torch(batchnorm):
    torch = pytest.importorskip("torch")
    widths = (12, 16, 9, 5)
    model = training.NumpyModel(widths, batchnorm, seed=3)
    x, labels = training._batch(widths, 32, np.random.default_rng(4))
    loss = model.forward_backward(x, labels)

    params = [torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True) for v in model.flat.views]
    it = iter(params)
    h = torch.tensor(x, dtype=torch.float64)
    for k in range(len(widths) - 1):
        w, b = next(it), next(it)
        h = h @ w + b
        if k == len(widths) - 2:
            break
        if batchnorm and k == 0:
            gamma, beta = next(it), next(it)
            h = torch.nn.functional.batch_norm(h, None, None, gamma, beta, training=True, eps=1e-5)
        h = torch.relu(h)
    ref = torch.nn.functional.cross_entropy(h, torch.tensor(labels))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    # float32 forward and backward over a few hundred products: 1e-4 relative, 1e-6 absolute.
    for got, p in zip(model.flat.grad_views, params):
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", training.IMPLS)
def test_worker_reports_step_and_optimizer_times(monkeypatch, impl):
    if impl.startswith("torch"):
        pytest.importorskip("torch")
    monkeypatch.setitem(training.MODELS, "tiny", ((8, 16, 4), 16, True, 3, 1))
    result = training.worker("tiny", impl)
    assert 0 < result["optimizer_ms"] < result["step_ms"]


def test_table_lists_every_condition_and_the_optimizer_share():
    records = [{"model": "m", "impl": "fastopt", "condition": c, "step_ms": s, "optimizer_ms": 0.25}
               for c, s in (("quiet", 1.0), ("2 busy processes", 2.0))]
    table = training.training_table(records)
    assert "| m | fastopt | 1.00 | 2.00 | 25% |" in table
    assert "quiet | 2 busy processes" in table


def test_training_runs_on_its_own(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--only", "training,Adam"])
    assert "--only training runs on its own" in capsys.readouterr().err
