"""The CUDA launcher of the quantized-state optimizer step (blockwise.cu): the signature of the
CPU extension's blockwise_step (fastopt._blockwise_step), on CuPy arrays or an emulated device."""
import numpy as np

from .. import blockwise as _bw
from .._dtypes import CODE_BFLOAT16, CODE_FLOAT16, CODE_FLOAT32
from .._blockwise_step import CODE_FP8
from ..rules import NUM_VARIANTS, RULE_NAMES, RULES
from . import prepared_call

SOURCE = "blockwise.cu"
THREADS = _bw.BLOCK_SIZE  # one thread per element of a quantization block
_TYPES = {CODE_FLOAT32: "float", CODE_FLOAT16: "fastopt::f16_t", CODE_BFLOAT16: "fastopt::bf16_t"}
_EMA_TYPES = {None: "fastopt::NoEma", CODE_FLOAT32: "float", CODE_BFLOAT16: "fastopt::bf16_t"}
# (param, grad) codes: float32 params, half params with a gradient of their type or float32.
COMBINATIONS = ((CODE_FLOAT32, CODE_FLOAT32), (CODE_FLOAT16, CODE_FLOAT16), (CODE_FLOAT16, CODE_FLOAT32),
                (CODE_BFLOAT16, CODE_BFLOAT16), (CODE_BFLOAT16, CODE_FLOAT32))


def kernel_name(rule, variant, param_code, grad_code, stochastic=False, fp8=False, ema_code=None):
    """ema_code: the dtype code of the EMA of the weights the step also averages, or None."""
    flags = ", ".join("true" if f else "false" for f in (stochastic, fp8))
    return (f"blockwise_step_kernel<fastopt::{RULE_NAMES[rule]}, {variant}, {_TYPES[param_code]}, "
            f"{_TYPES[grad_code]}, {flags}, {_EMA_TYPES[ema_code]}>")


def all_kernel_names(ema_codes=(None,)):
    """Every instantiation the launcher can request with the EMA dtypes `ema_codes` (None: no EMA)."""
    return [kernel_name(rule, v, p, g, stochastic, fp8, e)
            for rule in range(len(RULE_NAMES)) for v in range(NUM_VARIANTS[rule])
            if v not in getattr(RULES[rule], "GRADLESS_VARIANTS", ()) for p, g in COMBINATIONS
            for stochastic in ((False, True) if p == CODE_BFLOAT16 else (False,)) for fp8 in (False, True)
            for e in ema_codes]


def all_ema_kernel_names():
    """The instantiations fused with the EMA of the weights (float32 or bfloat16 EMA)."""
    return all_kernel_names((CODE_FLOAT32, CODE_BFLOAT16))


def blockwise_step(*fields, device=None):
    """One KernelCall whose states are (codes, absmax, values, mids, lut) tuples."""
    prepared = prepared_call(fields, device)
    if prepared is None:
        return
    c, device, stochastic, k = prepared
    n = c.param.size
    ema_code = None if c.ema is None else c.ema_code
    name = kernel_name(c.rule, c.variant, c.param_code, c.grad_code, stochastic, c.state_code == CODE_FP8, ema_code)
    # Unused slots get param's pointer: the kernel never dereferences them.
    slots = [tuple(s) for s in c.states] + [(c.param,) * 5] * (3 - len(c.states))
    blocks = int(min(device.multiprocessors() * 8, _bw.num_blocks(n)))
    arrays = [a for s in slots for a in s[:2]] + [a for s in slots for a in s[2:]]
    device.launch(SOURCE, (name,), name, (blocks,), (THREADS,),
                  (c.param, c.grad, c.master if c.master is not None else c.param, *arrays, np.int64(n),
                   np.float64(c.grad_scale), np.float64(c.weight_decay), np.float64(c.decay_factor),
                   np.uint32(c.rounding_seed), *k, c.param if c.ema is None else c.ema,
                   np.float64(c.ema_weight)))
