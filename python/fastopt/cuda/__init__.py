"""The CUDA backend: the optimizer kernels of fastopt/math driven over CuPy arrays.

Kernels come from kernels.cu, compiled by NVRTC through CuPy at first use (one template
instantiation per rule, variant and dtype combination) and cached by CuPy on disk. The entry
points have the signatures of the compiled CPU extension's (csrc/bindings.cpp).

What is verified without a GPU: every instantiation this module can request compiles with NVRTC
for compute_75, compute_80 and compute_90 with the production options
(tests/test_nvrtc_compile.py), and runs, launched by the functions below, in an emulator of the
CUDA execution model against the CPU backend (tests/test_cuda_emulated.py), both in CI. What needs
a GPU: speed, and the kernels on the hardware (tests/test_cuda.py, wherever cupy.is_available();
tools/gpu_check.sh).
"""
import numpy as np

from .._dtypes import CODE_BFLOAT16, CODE_FLOAT16, CODE_FLOAT32, CODE_FLOAT64, STEP_COMBINATIONS
from ..rules import MAX_SCALARS, NUM_VARIANTS, RULE_NAMES
from .._kernel_call import KernelCall
from ._loader import CupyDevice

SOURCE = "kernels.cu"
NUM_RULE_SCALARS = 8  # the kernel's k0..k7
assert MAX_SCALARS <= NUM_RULE_SCALARS, "a rule has more scalars than kernels.cu passes"
THREADS = 256
VEC = 4  # kVec in kernels.cu

_CXX_TYPES = {CODE_FLOAT32: "float", CODE_FLOAT64: "double", CODE_FLOAT16: "fastopt::f16_t",
              CODE_BFLOAT16: "fastopt::bf16_t"}


def step_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic=False):
    """The name expression of one instantiation of optimizer_step_kernel."""
    compute = "double" if param_code == CODE_FLOAT64 else "float"
    types = ", ".join(_CXX_TYPES[c] for c in (param_code, grad_code, state_code))
    flag = "true" if stochastic else "false"
    return f"optimizer_step_kernel<fastopt::{RULE_NAMES[rule]}, {variant}, {compute}, {types}, {flag}>"


def norm_kernel_name(code):
    return f"sum_of_squares_kernel<{_CXX_TYPES[code]}>"


def supported_type_combinations():
    """(param, grad, state) codes the kernels are instantiated for: fastopt._dtypes.STEP_COMBINATIONS."""
    return list(STEP_COMBINATIONS)


def all_kernel_names():
    """Every name expression this module can request (the NVRTC compile check builds them all)."""
    names = [step_kernel_name(rule, v, *codes, stochastic)
             for rule in range(len(RULE_NAMES)) for v in range(NUM_VARIANTS[rule])
             for codes in supported_type_combinations()
             for stochastic in ((False, True) if codes[0] == CODE_BFLOAT16 else (False,))]
    names += [norm_kernel_name(c) for c in _CXX_TYPES]
    names.append("sum_partials_kernel")
    return names


def _max_blocks(device):
    return device.multiprocessors() * 8


def _aligned(arrays, device):
    return all(device.address(a) % (a.itemsize * VEC) == 0 for a in arrays)


def optimizer_step(*fields, device=None):
    """One KernelCall (fastopt._kernel_call), given positionally. `device`: where the kernel runs
    (default: CuPy on param's GPU; the emulator passes its own)."""
    c = KernelCall(*fields)
    n = c.param.size
    if n == 0:
        return
    device = CupyDevice(c.param) if device is None else device
    stochastic = c.param_code == CODE_BFLOAT16 and c.master is None
    name = step_kernel_name(c.rule, c.variant, c.param_code, c.grad_code, c.state_code, stochastic)
    used = [c.param, c.grad] + list(c.states) + ([c.master] if c.master is not None else [])
    # Unused pointer slots get param's pointer: the kernel never dereferences them.
    slots = list(c.states) + [c.param] * (3 - len(c.states))
    k = list(c.scalars) + [0.0] * (NUM_RULE_SCALARS - len(c.scalars))
    blocks = int(min(_max_blocks(device), -(-n // (THREADS * VEC))))
    device.launch(SOURCE, (name,), name, (blocks,), (THREADS,),
                  (c.param, c.grad, c.master if c.master is not None else c.param, *slots, np.int64(n),
                   np.bool_(_aligned(used, device)), np.float64(c.grad_scale), np.float64(c.weight_decay),
                   np.float64(c.decay_factor), np.uint32(c.rounding_seed), *map(np.float64, k)))


def _norm_blocks(n):
    """A function of n alone, so the summation order, and the result, depend on n only."""
    return int(max(1, min(1024, -(-n // (THREADS * 16)))))


def sum_of_squares(code, x, device=None):
    n = x.size
    if n == 0:
        return 0.0
    device = CupyDevice(x) if device is None else device
    blocks = _norm_blocks(n)
    partial = device.empty(blocks, np.float64)
    out = device.empty(1, np.float64)
    name = norm_kernel_name(code)
    device.launch(SOURCE, (name,), name, (blocks,), (THREADS,), (x, np.int64(n), partial))
    device.launch(SOURCE, ("sum_partials_kernel",), "sum_partials_kernel", (1,), (32,),
                  (partial, np.int32(blocks), out))
    return device.to_float(out)


from .blockwise import blockwise_step  # noqa: E402  (quantized states: blockwise.cu)

__all__ = ["optimizer_step", "sum_of_squares", "blockwise_step", "all_kernel_names", "step_kernel_name"]
