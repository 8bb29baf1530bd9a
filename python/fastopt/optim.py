"""Stateful optimizers with torch.optim's constructors, param groups, state names and defaults.

``params`` is one array, a list of arrays, or a list of group dicts (torch's forms); every
option is a group option (``opt.param_groups[i]["lr"]``), and ``opt.lr = x`` sets it in every
group. The machinery is in _optimizer.py; each rule's module in fastopt.rules gives its class:
options, state arrays and the host scalars of a step.
"""
import numpy as np

from ._dtypes import BFLOAT16, FLOAT32, UINT16, dtype_code
from .rules import classes as _classes
from .rules._base import Optimizer


def resolve_state_dtype(state_dtype, param_code, kind):
    """The dtype of a parameter's state arrays."""
    if param_code == dtype_code(np.dtype(np.float64)):
        if state_dtype not in (None, "float64", np.float64):
            raise TypeError("float64 params keep float64 state")
        return np.dtype(np.float64)
    if state_dtype in (None, "float32", np.float32):
        return FLOAT32
    if str(state_dtype) == "bfloat16":
        # CuPy (and NumPy without ml_dtypes) has no bfloat16 dtype: its bits are kept as uint16.
        return BFLOAT16 if kind == "numpy" and BFLOAT16 is not None else UINT16
    raise TypeError(f"state_dtype must be 'float32', 'bfloat16' or '8bit', got {state_dtype!r}")


OPTIMIZERS = _classes()
for _cls in (Optimizer,) + OPTIMIZERS:
    _cls.__module__ = __name__
globals().update({cls.__name__: cls for cls in OPTIMIZERS})

__all__ = ["Optimizer", "OPTIMIZERS"] + [cls.__name__ for cls in OPTIMIZERS]
