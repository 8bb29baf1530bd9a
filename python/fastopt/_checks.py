"""Argument validation shared by every entry point: everything is checked before anything is
written, so a call that raises leaves every array as it was."""
import math
import numbers

import numpy as np

from . import _backend
from ._dtypes import BFLOAT16, CODE_FLOAT32, CODE_FLOAT64, CODE_BFLOAT16, NAMES, dtype_code, is_half


# ---- hyper-parameters -------------------------------------------------------------------------

def _real(name, value):
    if type(value) is not float:  # a float skips the (slow) abstract-class checks
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def nonnegative(name, value):
    value = _real(name, value)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"Invalid {name}: {value} (expected a finite value >= 0)")
    return value


def positive(name, value):
    value = _real(name, value)
    if not (0.0 < value < math.inf):
        raise ValueError(f"Invalid {name}: {value} (expected a finite value > 0)")
    return value


def unit_interval(name, value, *, closed=False):
    """0 <= value < 1, or <= 1 with closed=True."""
    value = _real(name, value)
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"Invalid {name}: {value} (expected 0 <= {name} {'<=' if closed else '<'} 1)")
    return value


def betas(value, name="betas"):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    beta1, beta2 = value
    return unit_interval(name + "[0]", beta1), unit_interval(name + "[1]", beta2)


def step_count(step):
    if type(step) is not int and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
        raise TypeError(f"step must be an integer (1-based), got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based count of this update), got {step}")
    return int(step)


def grad_scale(value):
    """1 / loss_scale as a float; the scale must be finite and nonzero."""
    if value is None:
        return 1.0
    value = _real("grad_scale", value)
    # A negative scale would silently flip the update's direction (maximize=True is the way to).
    if not (0.0 < value < math.inf):
        raise ValueError(f"Invalid grad_scale: {value} (expected a finite loss scale > 0)")
    return 1.0 / value


def checked_seed(value):
    """The 32-bit seed of a stochastically rounded step (0 when not rounding stochastically)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"rounding_seed must be an integer, got {type(value).__name__}")
    return int(value) & 0xFFFFFFFF


def optional_positive(name, value):
    return None if value is None else positive(name, value)


# ---- arrays -----------------------------------------------------------------------------------

def _kind_of(name, a):
    kind = _backend.array_kind(a)
    if kind is None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    return kind


def _extent(a):
    """(start, end) byte addresses of the memory an array spans."""
    if isinstance(a, np.ndarray):
        start = a.__array_interface__["data"][0]
    else:
        start = a.data.ptr
    return start, start + a.nbytes


def _check_layout(name, a, writable):
    if not a.flags.c_contiguous:
        raise TypeError(f"{name} must be C-contiguous (use numpy.ascontiguousarray or a FlatParams buffer)")
    if isinstance(a, np.ndarray):
        if writable and not a.flags.writeable:
            raise TypeError(f"{name} is read-only; fastopt updates it in place")
        # A misaligned element pointer (a view at an odd byte offset) is undefined behaviour in the kernels.
        if not a.flags.aligned:
            raise TypeError(f"{name} is not aligned to its element size (a view at an odd byte offset?)")


def check_same_device(named_arrays):
    """CuPy arrays of one call must live on one GPU: a kernel runs on one device."""
    (first_name, first), *rest = named_arrays
    device = first.device.id
    for name, a in rest:
        if a.device.id != device:
            raise ValueError(f"{name} is on GPU {a.device.id} but {first_name} is on GPU {device}; "
                             "move them to one device")


def check_disjoint(named_arrays):
    """No written array may overlap another array of the call."""
    spans = [(name, _extent(a)) for name, a in named_arrays if a.nbytes]
    spans.sort(key=lambda item: item[1][0])
    for (name_a, (_, end_a)), (name_b, (start_b, _)) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise TypeError(f"{name_a} and {name_b} share memory; each must be its own buffer")


class StepArrays:
    """The validated arrays of one optimizer step, and what the kernels need to know of them."""

    __slots__ = ("kind", "param", "grad", "master", "states", "param_code", "grad_code", "state_code", "size")

    def __init__(self, kind, param, grad, master, states, param_code, grad_code, state_code):
        self.kind, self.param, self.grad, self.master, self.states = kind, param, grad, master, states
        self.param_code, self.grad_code, self.state_code = param_code, grad_code, state_code
        self.size = param.size


def _code(name, a, explicit):
    code = dtype_code(a.dtype, explicit)
    if code is None:
        hint = f" (declared {explicit})" if explicit is not None else ""
        raise TypeError(f"{name} has dtype {a.dtype}{hint}; expected float32, float64, float16 or bfloat16")
    return code


def param_and_grad(param, grad, master_weights=None, param_dtype=None, grad_dtype=None, rounding_seed=None):
    """Checks param, grad and the master copy; returns (kind, param_code, grad_code)."""
    kind = _kind_of("param", param)
    if _kind_of("grad", grad) != kind:
        raise TypeError(f"param is a {kind} array but grad is a {_backend.array_kind(grad)} array: "
                        "one call cannot mix NumPy and CuPy arrays")
    _check_layout("param", param, writable=True)
    _check_layout("grad", grad, writable=False)
    param_code = _code("param", param, param_dtype)
    grad_code = _code("grad", grad, grad_dtype)
    if grad.size != param.size:
        raise ValueError(f"grad has {grad.size} elements but param has {param.size}")
    if is_half(param_code):
        if grad_code not in (param_code, CODE_FLOAT32):
            raise TypeError(f"grad must be {NAMES[param_code]} or float32 for a {NAMES[param_code]} param, "
                            f"got {NAMES[grad_code]}")
        if master_weights is None:
            if rounding_seed is None:
                raise TypeError(f"a {NAMES[param_code]} param needs float32 master weights "
                                "(master_weights=..., or master_weights=True on the optimizer class)"
                                + (", or stochastic rounding (rounding_seed=...)" if param_code == CODE_BFLOAT16 else ""))
            if param_code != CODE_BFLOAT16:
                raise TypeError("stochastic rounding (rounding_seed) is for bfloat16 params; "
                                "float16 params need master weights")
        else:
            if rounding_seed is not None:
                raise TypeError("rounding_seed is for bfloat16 params without master weights; with "
                                "master_weights the half copy is rounded to nearest even")
            if _kind_of("master_weights", master_weights) != kind:
                raise TypeError("master_weights must be the same kind of array (NumPy or CuPy) as param")
            _check_layout("master_weights", master_weights, writable=True)
            if dtype_code(master_weights.dtype) != CODE_FLOAT32:
                raise TypeError(f"master_weights must be float32, got {master_weights.dtype}")
            if master_weights.size != param.size:
                raise ValueError(f"master_weights has {master_weights.size} elements but param has {param.size}")
    else:
        if grad_code != param_code:
            raise TypeError(f"grad must have param's dtype {NAMES[param_code]}, got {NAMES[grad_code]}")
        if master_weights is not None:
            raise TypeError("master_weights is only for float16 / bfloat16 params")
        if rounding_seed is not None:
            raise TypeError("rounding_seed is only for bfloat16 params without master weights")
    return kind, param_code, grad_code


_compiled_step_codes = None  # the extension's fast path of step_arrays, once looked up


def _fast_step_codes():
    """The extension's step_codes (None without the extension): python_step_arrays' checks, for
    NumPy arrays, in a fraction of the time; it returns None for anything they would refuse."""
    global _compiled_step_codes
    if _compiled_step_codes is None:
        cpu = _backend.BACKENDS["cpu"]
        if not cpu.available:
            return None
        if BFLOAT16 is not None:
            cpu.module.set_bfloat16_type_num(BFLOAT16.num)
        _compiled_step_codes = cpu.module.step_codes
    return _compiled_step_codes


def step_arrays(param, grad, states, master_weights=None, param_dtype=None, grad_dtype=None, rounding_seed=None,
                state_dtype=None):
    """Validates one step's arrays. `states` is a list of (name, array) in kernel order; the
    *_dtype names declare uint16 arrays as 'bfloat16' or 'float16' data."""
    if rounding_seed is not None:
        checked_seed(rounding_seed)
    if isinstance(param, np.ndarray) and param_dtype is None and grad_dtype is None and state_dtype is None:
        fast = _fast_step_codes()
        if fast is not None:
            arrays = tuple([s for _, s in states])
            codes = fast(param, grad, master_weights, arrays, rounding_seed is not None)
            if codes is not None:
                return StepArrays("numpy", param, grad, master_weights, arrays, *codes)
    return python_step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed,
                              state_dtype)


def python_step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed,
                       state_dtype=None):
    """step_arrays' checks in Python, for every kind of array: they raise naming the problem."""
    kind, param_code, grad_code = param_and_grad(param, grad, master_weights, param_dtype, grad_dtype,
                                                 rounding_seed)
    state_code = CODE_FLOAT64 if param_code == CODE_FLOAT64 else CODE_FLOAT32
    arrays = []
    for i, (name, s) in enumerate(states):
        if s is None:
            raise TypeError(f"{name} is required for these options")
        if _kind_of(name, s) != kind:
            raise TypeError(f"{name} must be a {kind} array like param, got {_backend.array_kind(s)}")
        _check_layout(name, s, writable=True)
        if s.size != param.size:
            raise ValueError(f"{name} has {s.size} elements but param has {param.size}")
        code = dtype_code(s.dtype, state_dtype)
        allowed = (CODE_FLOAT64,) if param_code == CODE_FLOAT64 else (CODE_FLOAT32, CODE_BFLOAT16)
        if code not in allowed:
            raise TypeError(f"{name} must be {' or '.join(NAMES[c] for c in allowed)} for a "
                            f"{NAMES[param_code]} param, got {s.dtype}")
        if i == 0:
            state_code = code
        elif code != state_code:
            raise TypeError(f"{name} is {NAMES[code]} but {states[0][0]} is {NAMES[state_code]}: "
                            "all state arrays share one dtype")
        arrays.append(s)
    named = [("param", param), ("grad", grad)] + list(states)
    if master_weights is not None:
        named.append(("master_weights", master_weights))
    if kind == "cupy":
        check_same_device(named)
    check_disjoint(named)
    return StepArrays(kind, param, grad, master_weights, tuple(arrays), param_code, grad_code, state_code)


def gradient(name, grad, explicit=None):
    """A gradient (or any array) to reduce: kind and dtype code."""
    kind = _kind_of(name, grad)
    _check_layout(name, grad, writable=False)
    return kind, _code(name, grad, explicit)
