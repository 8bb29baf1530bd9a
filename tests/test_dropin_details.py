"""The small things a torch user runs into first: which backend runs, the master-weights rule,
shaped gradients, refused typos and backends."""
import numpy as np
import pytest

import fastopt


def test_backends_say_which_one_is_in_use():
    info = fastopt.backends()
    numpy_backends = [name for name in ("cpu", "numba") if info[name]["in_use"]]
    assert len(numpy_backends) == 1
    if info["numba"]["available"]:
        with fastopt.use_backend("numba"):
            now = fastopt.backends()
            assert now["numba"]["in_use"] and not now["cpu"]["in_use"]


def test_use_backend_cuda_with_numpy_arrays_raises_and_writes_nothing():
    p = np.ones(8, np.float32)
    opt = fastopt.Adam(p, lr=0.1)
    with fastopt.use_backend("cuda"):
        with pytest.raises((TypeError, fastopt.BackendUnavailableError), match="cuda"):
            opt.step(np.ones(8, np.float32))
    assert np.all(p == 1) and opt.state["step"] == 0


def test_master_weights_rule_and_refresh():
    """With master_weights the float32 copy is what is stepped: an edit of the half param is
    overwritten at the next step unless refresh_master_weights() re-reads it."""
    p = np.ones(4, np.float16)
    opt = fastopt.SGD(p, lr=0.5, master_weights=True)
    p[...] = 3.0
    opt.step(np.ones(4, np.float16))
    assert np.all(p == 0.5)  # stepped from the master copy (1.0), the edit lost
    p[...] = 3.0
    opt.refresh_master_weights()
    opt.step(np.ones(4, np.float16))
    assert np.all(p == 2.5) and np.all(opt.state["master_weights"] == 2.5)


def test_shaped_grad_must_have_the_params_shape():
    p = np.ones((3, 4), np.float32)
    opt = fastopt.Adam(p, lr=0.1)
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        opt.step(np.ones((4, 3), np.float32))
    opt.step(np.ones(12, np.float32))  # flat, as the functional API takes it
    opt.step(np.ones((3, 4), np.float32))
    assert opt.state["step"] == 2


def test_unknown_attribute_is_refused_and_known_ones_still_work():
    opt = fastopt.Adam(np.ones(4, np.float32), lr=0.1)
    with pytest.raises(AttributeError, match="learning_rate"):
        opt.learning_rate = 0.5
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5 and opt.lr == 0.5
    assert opt.param.shape == (4,) and opt.state["step"] == 0


def test_numba_backend_steps_lists_with_the_same_bits():
    if not fastopt.backends()["numba"]["available"] or not fastopt.backends()["cpu"]["available"]:
        pytest.skip("needs both CPU backends")
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(n).astype(np.float32) for n in (1, 7, 1031, 40000)]
    grads = [rng.standard_normal(a.size).astype(np.float32) for a in start]
    results = []
    for backend in ("cpu", "numba"):
        params = [a.copy() for a in start]
        opt = fastopt.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.01,
                            backend=backend)
        for _ in range(3):
            opt.step(grads)
        results.append(params)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
