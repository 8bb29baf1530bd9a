"""Global gradient norm and clipping (torch.nn.utils.clip_grad_norm_ semantics)."""
import math

from . import _backend, _checks, _dtypes, _scalars


def grad_norm(grad, *, grad_dtype=None, backend=None):
    """The global L2 norm of a flat gradient, accumulated in float64 in a fixed order (the same
    bits for any thread count). inf or NaN anywhere gives a non-finite norm."""
    kind, code = _checks.gradient("grad", grad, grad_dtype)
    chosen = _backend.select(kind, backend)
    return math.sqrt(chosen.module.sum_of_squares(code, grad))


def clip_grad_norm_(grad, max_norm, *, grad_dtype=None, backend=None):
    """Scales ``grad`` in place by max_norm / (norm + 1e-6) when its norm exceeds max_norm;
    returns the norm before clipping. Prefer ``max_grad_norm=`` on a step, which folds the factor
    into the update and never writes the gradient.

    Half-precision gradients (float16, bfloat16, or uint16 declared with ``grad_dtype``) are
    scaled in float32 and rounded once to their own type (nearest even), as torch does; the
    factor is not rounded to half precision first.
    """
    max_norm = _checks.positive("max_norm", max_norm)
    kind, code = _checks.gradient("grad", grad, grad_dtype)
    if _backend.array_kind(grad) == "numpy" and not grad.flags.writeable:
        raise TypeError("grad is read-only; clip_grad_norm_ scales it in place")
    norm = grad_norm(grad, grad_dtype=grad_dtype, backend=backend)
    factor = _scalars.clip_factor(norm, max_norm)
    if factor != 1.0:
        _scale_in_place(grad, code, factor)
    return norm


def _scale_in_place(grad, code, factor):
    if not _dtypes.is_half(code):
        grad *= grad.dtype.type(factor)
        return
    xp = _backend.array_module(_backend.array_kind(grad))
    f32 = xp.float32
    if grad.dtype == xp.uint16 and code == _dtypes.CODE_FLOAT16:
        grad = grad.view(xp.float16)
    if grad.dtype != xp.uint16:  # float16, or ml_dtypes' bfloat16: their casts round to nearest even
        grad[...] = (grad.astype(f32) * f32(factor)).astype(grad.dtype)
    else:  # bfloat16 bits
        widened = (grad.astype(xp.uint32) << 16).view(f32)
        grad[...] = _dtypes.bfloat16_bits(widened * f32(factor), xp)
