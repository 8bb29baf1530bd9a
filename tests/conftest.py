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
