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
from ..rules import MAX_SCALARS, NUM_VARIANTS, RULE_NAMES, RULES
from .._kernel_call import KernelCall
from ._loader import CupyDevice

SOURCE = "kernels.cu"
NUM_RULE_SCALARS = 12  # the kernels' parameters k0..k11: room for a rule of up to 12 host scalars
assert MAX_SCALARS <= NUM_RULE_SCALARS, "a rule has more scalars than kernels.cu passes"
THREADS = 256
VEC = 4  # kVec in kernels.cu
CHUNK = 8192  # kChunk: the elements of a segment one block of a segment-table launch steps

_CXX_TYPES = {CODE_FLOAT32: "float", CODE_FLOAT64: "double", CODE_FLOAT16: "fastopt::f16_t",
              CODE_BFLOAT16: "fastopt::bf16_t"}


def step_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic=False):
    """The name expression of one instantiation of optimizer_step_kernel."""
    compute = "double" if param_code == CODE_FLOAT64 else "float"
    types = ", ".join(_CXX_TYPES[c] for c in (param_code, grad_code, state_code))
    flag = "true" if stochastic else "false"
    return f"optimizer_step_kernel<fastopt::{RULE_NAMES[rule]}, {variant}, {compute}, {types}, {flag}>"


def ema_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic, ema_code):
    """The name expression of one instantiation of optimizer_step_ema_kernel (the step, then the
    EMA of the weights in `ema_code`'s type)."""
    step = step_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic)
    return step.replace("optimizer_step_kernel<", "optimizer_step_ema_kernel<", 1)[:-1] + f", {_CXX_TYPES[ema_code]}>"


def ema_codes(param_code):
    """The EMA dtypes a param of `param_code` takes: float64 for float64, else float32 or bfloat16."""
    return (CODE_FLOAT64,) if param_code == CODE_FLOAT64 else (CODE_FLOAT32, CODE_BFLOAT16)


def norm_kernel_name(code):
    return f"sum_of_squares_kernel<{_CXX_TYPES[code]}>"


def supported_type_combinations():
    """(param, grad, state) codes the kernels are instantiated for: fastopt._dtypes.STEP_COMBINATIONS."""
    return list(STEP_COMBINATIONS)


def launched_codes(rule, variant, codes):
    """The codes a step of `codes` launches `variant` with: a variant that never reads the
    gradient (a rule's GRADLESS_VARIANTS) is given param in the gradient slot, typed as param."""
    if variant in getattr(RULES[rule], "GRADLESS_VARIANTS", ()):
        return codes[0], codes[0], codes[2]
    return codes


def all_kernel_names():
    """Every name expression this module can request (the NVRTC compile check builds them all)."""
    names = list(dict.fromkeys(  # in order, each once (gradless variants repeat)
        step_kernel_name(rule, v, *launched_codes(rule, v, codes), stochastic)
        for rule in range(len(RULE_NAMES)) for v in range(NUM_VARIANTS[rule])
        for codes in supported_type_combinations()
        for stochastic in ((False, True) if codes[0] == CODE_BFLOAT16 else (False,))))
    names += [norm_kernel_name(c) for c in _CXX_TYPES]
    names.append("sum_partials_kernel")
    return names


def ema_variants(rule):
    """The variants of `rule` that step (and so may carry the EMA): not a GRADLESS_VARIANTS move."""
    return [v for v in range(NUM_VARIANTS[rule]) if v not in getattr(RULES[rule], "GRADLESS_VARIANTS", ())]


def all_ema_kernel_names(rules=None):
    """Every name expression of the step fused with the EMA of the weights (of `rules`, ids;
    default all): one per step instantiation and EMA dtype."""
    rules = range(len(RULE_NAMES)) if rules is None else rules
    return [ema_kernel_name(rule, v, *codes, stochastic, e)
            for rule in rules for v in ema_variants(rule)
            for codes in supported_type_combinations()
            for stochastic in ((False, True) if codes[0] == CODE_BFLOAT16 else (False,))
            for e in ema_codes(codes[0])]


def _max_blocks(device):
    return device.multiprocessors() * 8


def _aligned(arrays, device):
    return all(device.address(a) % (a.itemsize * VEC) == 0 for a in arrays)


def _array_slots(param, grad, master, states, ema, device):
    """One array's seven pointer slots as the kernels take them (param, grad, master, three
    states, the EMA; an unused slot gets param's pointer, never dereferenced), and whether the
    arrays it uses are all aligned for the vector path."""
    states = list(states)
    slots = [param, grad, param if master is None else master, *states, *[param] * (3 - len(states)),
             param if ema is None else ema]
    used = [param, grad, *states] + [a for a in (master, ema) if a is not None]
    return slots, _aligned(used, device)


def prepared_call(fields, device):
    """(KernelCall of `fields`, its device, whether its bfloat16 params round stochastically, its
    rule scalars padded to the kernels' k0..k11 as float64), or None for an empty call. `device`:
    where the kernel runs (None: CuPy on param's GPU; the emulator passes its own)."""
    c = KernelCall(*fields)
    if c.param.size == 0:
        return None
    device = CupyDevice(c.param) if device is None else device
    stochastic = c.param_code == CODE_BFLOAT16 and c.master is None
    k = [np.float64(x) for x in c.scalars] + [np.float64(0.0)] * (NUM_RULE_SCALARS - len(c.scalars))
    return c, device, stochastic, k


def optimizer_step(*fields, device=None):
    """One KernelCall (fastopt._kernel_call), given positionally, on `device` (prepared_call)."""
    prepared = prepared_call(fields, device)
    if prepared is None:
        return
    c, device, stochastic, k = prepared
    n = c.param.size
    name = step_kernel_name(c.rule, c.variant, c.param_code, c.grad_code, c.state_code, stochastic)
    slots, aligned = _array_slots(c.param, c.grad, c.master, c.states, c.ema, device)
    extra = ()
    if c.ema is not None:  # the step fused with the EMA of the weights
        name = ema_kernel_name(c.rule, c.variant, c.param_code, c.grad_code, c.state_code, stochastic, c.ema_code)
        extra = (c.ema, np.float64(c.ema_weight))
    blocks = int(min(_max_blocks(device), -(-n // (THREADS * VEC))))
    no_table = (c.param, c.param, np.int32(0), c.param, c.param)  # never dereferenced
    device.launch(SOURCE, (name,), name, (blocks,), (THREADS,),
                  (*slots[:6], np.int64(n), np.bool_(aligned), np.float64(c.grad_scale), np.float64(c.weight_decay),
                   np.float64(c.decay_factor), np.uint32(c.rounding_seed), *k, *no_table, *extra))


def multi_step(rule, variant, param_code, grad_code, state_code, params, grads, masters, states, table, row_of,
               seeds, emas, ema_code, ema_weights, device=None):
    """Many arrays of one rule, variant and dtype combination in one launch: the segment table of
    fastopt._multi (the CPU extension's multi_step signature). `table`: one row per distinct
    hyper-parameter set, the rule's scalars then grad_scale, weight_decay and decay_factor in its
    last three columns; `row_of`, `seeds`: each array's row and rounding seed."""
    live = [j for j, p in enumerate(params) if p.size]
    if not live:
        return
    device = CupyDevice(params[live[0]]) if device is None else device
    stochastic = param_code == CODE_BFLOAT16 and masters is None
    name = step_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic)
    if emas is not None:
        name = ema_kernel_name(rule, variant, param_code, grad_code, state_code, stochastic, ema_code)
    pointed, fields, first_block = [], [], 0
    for j in live:
        param = params[j]
        slots, aligned = _array_slots(param, grads[j], masters[j] if masters is not None else None, states[j],
                                      emas[j] if emas is not None else None, device)
        pointed += slots
        fields += [param.size, row_of[j], seeds[j], int(aligned), first_block]
        first_block += -(-param.size // CHUNK)
    rows = np.zeros((len(table), NUM_RULE_SCALARS + 3))
    rows[:, :table.shape[1] - 3] = table[:, :-3]
    rows[:, NUM_RULE_SCALARS:] = table[:, -3:]
    weights = np.array([ema_weights[j] for j in live] if emas is not None else [0.0])
    # The segments, the rows and the EMA weights travel in one upload (three views of it): a
    # copy to the device costs about the same whatever its size.
    packed = device.upload(np.concatenate([np.array(fields, np.int64), rows.ravel().view(np.int64),
                                           weights.view(np.int64)]))
    rows_at, weights_at = len(fields), len(fields) + rows.size
    segment_table = (device.pointer_table(pointed), packed[:rows_at], np.int32(len(live)),
                     packed[rows_at:weights_at].view(np.float64), packed[weights_at:].view(np.float64))
    first = params[live[0]]  # the single-array arguments are unused with a table
    extra = (first, np.float64(0.0)) if emas is not None else ()
    device.launch(SOURCE, (name,), name, (first_block,), (THREADS,),
                  (first, first, first, first, first, first, np.int64(0), np.bool_(False), np.float64(0.0),
                   np.float64(0.0), np.float64(0.0), np.uint32(0), *[np.float64(0.0)] * NUM_RULE_SCALARS,
                   *segment_table, *extra))


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

__all__ = ["optimizer_step", "multi_step", "sum_of_squares", "blockwise_step", "all_kernel_names",
           "step_kernel_name", "ema_kernel_name", "all_ema_kernel_names"]
