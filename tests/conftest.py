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


def random_arrays(n, dtype, seed, steps):
    """An initial parameter and one gradient per step, reproducible."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n).astype(dtype)
    grads = [(rng.standard_normal(n) * rng.uniform(0.1, 2.0)).astype(dtype) for _ in range(steps)]
    return param, grads


@pytest.fixture
def torch_float64():
    """torch's default dtype set to float64 for the test (torch keeps scalar state such as NAdam's
    mu_product in it), restored after."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
