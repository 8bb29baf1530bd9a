import numpy as np
import pytest

import fastopt


def available_cpu_backends():
    """The NumPy backends usable here: 'cpu' (compiled extension) and 'numba'."""
    info = fastopt.backends()
    return [name for name in ("cpu", "numba") if info[name]["available"]]


CPU_BACKENDS = available_cpu_backends()


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param


def backends_by_layout(layouts):
    """(backend, shape, axis) over CPU_BACKENDS x layouts, for a test that parametrizes `backend`
    indirectly: the Numba cases of layouts big enough for its parallel loops are marked slow
    (those loops are checked against the float64 reference on the thread-count tests' shapes,
    and bit for bit against the CPU backend)."""
    if "numba" in CPU_BACKENDS:
        from fastopt.numba.optim import runs_parallel  # parallel loops take seconds to compile each
    params = []
    for backend in CPU_BACKENDS:
        for shape, axis in layouts:
            slow = backend == "numba" and runs_parallel(int(np.prod(shape)))
            params.append(pytest.param(backend, shape, axis, id=f"{backend}-{shape}-{axis}",
                                       marks=[pytest.mark.slow] if slow else []))
    return params


def random_arrays(n, dtype, seed, steps):
    """An initial parameter and one gradient per step, reproducible."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n).astype(dtype)
    grads = [(rng.standard_normal(n) * rng.uniform(0.1, 2.0)).astype(dtype) for _ in range(steps)]
    return param, grads


# Three arrays of odd shapes in two param groups (the first two, the last).
GROUP_SHAPES = [(7,), (3, 5), (1,)]


def two_group_twins(torch, rng, groups, ours, theirs, ours_options=None, theirs_options=None):
    """fastopt's `ours` and the reference package's `theirs` (a torch optimizer class) over the
    same float64 start in GROUP_SHAPES, split into two groups with hyper-parameters `groups`.
    Returns (fastopt arrays, torch tensors, fastopt optimizer, reference optimizer)."""
    start = [rng.standard_normal(s) for s in GROUP_SHAPES]
    arrays = [a.copy() for a in start]
    tensors = [torch.tensor(a.copy()) for a in start]

    def split(params):
        return [dict(params=params[:2], **groups[0]), dict(params=params[2:], **groups[1])]
    return (arrays, tensors, ours(split(arrays), **(ours_options or {})),
            theirs(split(tensors), **(theirs_options or {})))


@pytest.fixture
def torch_float64():
    """torch's default dtype set to float64 for the test (torch keeps scalar state such as NAdam's
    mu_product in it), restored after."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
