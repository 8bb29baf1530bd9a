"""Global gradient norm and clipping (torch.nn.utils.clip_grad_norm_ semantics)."""
import math

from . import _backend, _checks, _scalars


def grad_norm(grad, *, grad_dtype=None, backend=None):
    """The global L2 norm of a flat gradient, accumulated in float64 in a fixed order (the same
    bits for any thread count). inf or NaN anywhere gives a non-finite norm."""
    kind, code = _checks.gradient("grad", grad, grad_dtype)
    chosen = _backend.select(kind, backend)
    return math.sqrt(chosen.module.sum_of_squares(code, grad))


def clip_grad_norm_(grad, max_norm, *, backend=None):
    """Scales ``grad`` in place by max_norm / (norm + 1e-6) when its norm exceeds max_norm;
    returns the norm before clipping. Prefer ``max_grad_norm=`` on a step, which folds the factor
    into the update and never writes the gradient."""
    max_norm = _checks.positive("max_norm", max_norm)
    kind, code = _checks.gradient("grad", grad)
    if _backend.array_kind(grad) == "numpy" and not grad.flags.writeable:
        raise TypeError("grad is read-only; clip_grad_norm_ scales it in place")
    norm = grad_norm(grad, backend=backend)
    factor = _scalars.clip_factor(norm, max_norm)
    if factor != 1.0:
        grad *= grad.dtype.type(factor)
    return norm
