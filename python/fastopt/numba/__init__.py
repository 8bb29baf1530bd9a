"""The Numba backend: the same kernels as the C++ extension, compiled at first use.

It serves NumPy arrays when the compiled extension cannot be imported, or when asked for
(backend="numba", fastopt.use_backend("numba"), FASTOPT_BACKEND=numba). Its entry points have the
signatures of the extension's (csrc/bindings.cpp).
"""
import numpy as np
from numba import njit, prange

from .._dtypes import CODE_BFLOAT16, CODE_FLOAT64
from .._kernel_call import KernelCall
from ..rules import RULES
from .math import storage as _storage
from .multi import multi_step  # noqa: F401  (the segment table: a list of arrays in one call)
from .optim import kernel_for, prologue_rows, runs_parallel

NORM_BLOCK = 8192  # csrc/cpu/kernels.h kNormBlock: the same summation order gives the same bits


def optimizer_step(*fields):
    """One KernelCall (fastopt._kernel_call), given positionally."""
    c = KernelCall(*fields)
    compute = np.float64 if c.param_code == CODE_FLOAT64 else np.float32
    # The rule's scalars in the compute type, as its named tuple: the mirror reads them by name.
    k = RULES[c.rule].Scalars._make(compute(x) for x in c.scalars)
    pro = prologue_rows((c.grad_scale, c.weight_decay, c.decay_factor), compute)[0]
    state_arrays = [_storage(s, c.state_code) for s in c.states]
    empty_state = np.empty(0, dtype=state_arrays[0].dtype if state_arrays else compute)
    while len(state_arrays) < 3:
        state_arrays.append(empty_state)
    master_flat = c.master.reshape(-1) if c.master is not None else np.empty(0, np.float32)
    stochastic = c.param_code == CODE_BFLOAT16 and c.master is None
    ema_code = -1 if c.ema is None else c.ema_code
    kernel = kernel_for(c.rule, c.param.size, c.variant, len(c.states), c.master is not None, c.param_code,
                        c.grad_code, c.state_code, stochastic, ema_code)
    ema = _storage(c.ema, c.ema_code) if c.ema is not None else np.empty(0, np.float32)
    # The EMA's weight in its compute type (float64 for a float64 EMA, else float32), as in C++.
    weight = (np.float64 if ema_code == CODE_FLOAT64 else np.float32)(c.ema_weight)
    kernel(_storage(c.param, c.param_code), _storage(c.grad, c.grad_code), master_flat, *state_arrays, k, pro,
           np.uint32(c.rounding_seed), ema, weight)


def blockwise_step(*fields):
    """One KernelCall with quantized states (fastopt._blockwise_step), given positionally."""
    from .. import _blockwise_step
    from . import blockwise

    c = KernelCall(*fields)
    k = RULES[c.rule].Scalars._make(np.float32(x) for x in c.scalars)
    pro = prologue_rows((c.grad_scale, c.weight_decay, c.decay_factor), np.float32)[0]
    slots = [tuple(slot) for slot in c.states]
    empty = (np.empty(0, np.uint8), np.empty(0, np.float32), np.empty(0, np.float32), np.empty(0, np.float32),
             np.empty(0, np.int32))
    while len(slots) < 3:
        slots.append(empty)
    master_flat = c.master.reshape(-1) if c.master is not None else np.empty(0, np.float32)
    stochastic = c.param_code == CODE_BFLOAT16 and c.master is None
    ema_code = -1 if c.ema is None else c.ema_code
    kernel = blockwise.kernel_for(c.rule, c.param.size, c.variant, len(c.states), c.master is not None,
                                  c.param_code, c.grad_code, stochastic, c.state_code == _blockwise_step.CODE_FP8,
                                  ema_code)
    ema = _storage(c.ema, ema_code) if c.ema is not None else np.empty(0, np.float32)
    kernel(_storage(c.param, c.param_code), _storage(c.grad, c.grad_code), master_flat,
           *[a for slot in slots for a in slot], k, pro, np.uint32(c.rounding_seed), ema,
           np.float32(c.ema_weight))  # quantized state is for float32 and half params: a float32 EMA or bfloat16


@njit(inline="always")
def _block_sum_of_squares(x, start, stop, code):
    lane = np.zeros(8, np.float64)
    full = start + (stop - start) // 8 * 8
    for i in range(start, full, 8):
        for j in range(8):
            v = np.float64(_widen(x[i + j], code))
            lane[j] += v * v
    for i in range(full, stop):
        v = np.float64(_widen(x[i], code))
        lane[i - full] += v * v
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))


@njit(parallel=True)
def _sum_of_squares(x, code):
    n = x.size
    num_blocks = (n + NORM_BLOCK - 1) // NORM_BLOCK
    partial = np.zeros(num_blocks, np.float64)
    for b in prange(num_blocks):
        partial[b] = _block_sum_of_squares(x, b * NORM_BLOCK, min(n, (b + 1) * NORM_BLOCK), code)
    total = 0.0
    for b in range(num_blocks):
        total += partial[b]
    return total


from .math import widen as _widen  # noqa: E402  (used inside the jitted functions above)


_sum_of_squares_serial = njit(_sum_of_squares.py_func)  # the same sums in the same order


def sum_of_squares(code, x):
    loop = _sum_of_squares if runs_parallel(x.size) else _sum_of_squares_serial
    return float(loop(_storage(x, code), code))
