"""The backend interface: what every backend module (the cpu extension, fastopt.numba,
fastopt.cuda) implements, and the one structure an optimizer step hands it.

A backend module has one function per kernel family in FAMILIES (multi_step, the segment table,
is optional: _multi.py steps array by array without it). An optimizer step is built once, as a
KernelCall, by the functional layer, the classes and the list path alike, and passed as
``module.optimizer_step(*call)``: positional, because the compiled extension's binding takes the
fields in this order; the Python backends rebuild the KernelCall and read it by name.
"""
import collections

from . import _blockwise_step

FAMILIES = ("optimizer_step", "sum_of_squares")

KernelCall = collections.namedtuple("KernelCall", [
    "rule",            # the rule's id (fastopt.rules)
    "variant",         # its compile-time variant
    "param_code", "grad_code", "state_code",  # dtype codes (fastopt._dtypes)
    "param", "grad",   # flat, C-contiguous arrays (halves as their uint16 bits)
    "master",          # float32 master copy of a half param, or None
    "states",          # the state arrays, in the rule's slot order
    "scalars",         # the rule's host scalars, in kernel order (its Scalars named tuple)
    "grad_scale", "weight_decay", "decay_factor",  # the prologue (_scalars.prologue)
    "rounding_seed",   # stochastic rounding of a bfloat16 param without master copy; else 0
    # The EMA of the weights (docs/algorithms.md, "EMA of the weights"): after the step,
    # ema += ema_weight * (new param - ema), the new param being the master copy where there is one.
    "ema",             # flat array (bfloat16 as its uint16 bits), or None: no averaging
    "ema_code",        # its dtype code
    "ema_weight",      # 1 - decay of this step
], defaults=(None, 0, 0.0))


def step(module, call):
    """Runs one KernelCall on a backend module."""
    if call.state_code in _blockwise_step.QUANTIZED_CODES:
        _blockwise_step.run(module, call)
    else:
        module.optimizer_step(*call)
