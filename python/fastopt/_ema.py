"""The EMA of the weights (Polyak averaging) fused into every optimizer's step (docs/algorithms.md,
"EMA of the weights"): the options, the weight of a step, the EMA arrays, and the swap of
parameters and averages for evaluation.

After each applied step t: ema <- ema + w_t * (p_t - ema), with w_t = 1 - decay_t and
decay_t = decay, or min(decay, (1 + t) / (10 + t)) with warm-up; p_t is the new parameter (the
float32 master copy of a half param that has one). The kernels compute it right after the step
of each element (or of each piece of a few thousand elements, on the CPU), in float32 (float64
for a float64 EMA), rounded to nearest even into a bfloat16 EMA."""
import contextlib
import operator

import numpy as np

from . import _backend, _checks
from ._dtypes import (BFLOAT16, CODE_BFLOAT16, CODE_FLOAT32, CODE_FLOAT64, FLOAT32, FLOAT64, NAMES, UINT16,
                      bfloat16_bits, dtype_code)

_NAMES = ("float32", "bfloat16", "float64")


def checked_decay(value):
    """ema_decay: None (no EMA) or 0 <= decay < 1."""
    if value is None:
        return None
    return _checks.unit_interval("ema_decay", value)


def checked_dtype(value):
    """ema_dtype's name: None (float32; float64 for float64 params), 'float32' or 'bfloat16'."""
    if value is None:
        return None
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if name is None:
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
    if name not in _NAMES:
        raise TypeError(f"ema_dtype must be None, 'float32' or 'bfloat16' (float64 params keep a float64 "
                        f"EMA), got {value!r}")
    return name


def storage_dtype(name, param_code, kind, where="param"):
    """The EMA's dtype for a param of `param_code`: float64 params keep float64, others float32
    or bfloat16 (as its uint16 bits where the array module has no bfloat16)."""
    if param_code == CODE_FLOAT64:
        if name not in (None, "float64"):
            raise TypeError(f"ema_dtype={name!r}: float64 params keep a float64 EMA ({where})")
        return FLOAT64
    if name == "float64":
        raise TypeError(f"ema_dtype='float64' is for float64 params; a {NAMES[param_code]} param's EMA is "
                        f"float32 or bfloat16 ({where})")
    if name == "bfloat16":
        return BFLOAT16 if kind == "numpy" and BFLOAT16 is not None else UINT16
    return FLOAT32


def code_of(dtype):
    return CODE_BFLOAT16 if dtype in (BFLOAT16, UINT16) else dtype_code(dtype)


def weight(decay, warmup, step):
    """w_t = 1 - decay_t of the 1-based step t (a Python float; the kernels round it to the EMA's
    compute type)."""
    if warmup:
        decay = min(decay, (1.0 + step) / (10.0 + step))
    return 1.0 - decay


def _values(array, code, xp):
    """A flat array's values as float32 (float64 for float64), halves (or their bits) widened."""
    flat = array.reshape(-1)
    if code == CODE_FLOAT64:
        return flat.astype(xp.float64)
    if flat.dtype == UINT16 and code == CODE_BFLOAT16 or flat.dtype == BFLOAT16:
        return (flat.view(xp.uint16).astype(xp.uint32) << 16).view(xp.float32)
    if flat.dtype == UINT16:  # float16 bits
        return flat.view(xp.float16).astype(xp.float32)
    return flat.astype(xp.float32)


def _store(values, dtype, xp):
    """float32 / float64 values in `dtype`, rounded to nearest even (bfloat16 as in common.h)."""
    if dtype in (BFLOAT16, UINT16):
        bits = bfloat16_bits(values, xp)
        return bits.view(BFLOAT16) if dtype == BFLOAT16 else bits
    return values.astype(dtype)


def initial(source, code, dtype, xp):
    """A new EMA holding the parameter's values (`source`: the master copy, or the param)."""
    return _store(_values(source, code, xp), dtype, xp)


def checked_array(ema, param, param_code, kind, expected, others, name="ema"):
    """An EMA array for the kernels (flat; bfloat16 as its uint16 bits) and its dtype code, checked
    against the param: same kind, size, contiguous, writable, the expected dtype (None: float32 or
    bfloat16, float64 for a float64 param), sharing memory with none of `others` ((name, array))."""
    if _backend.array_kind(ema) != kind:
        raise TypeError(f"{name} must be a {kind} array like param, got {type(ema).__name__}")
    _checks._check_layout(name, ema, writable=True)
    if ema.size != param.size:
        raise ValueError(f"{name} has {ema.size} elements but param has {param.size}")
    if expected is not None:
        ok = ema.dtype == expected
        allowed = str(expected)
    else:
        allowed_codes = (CODE_FLOAT64,) if param_code == CODE_FLOAT64 else (CODE_FLOAT32, CODE_BFLOAT16)
        ok = code_of(ema.dtype) in allowed_codes and (ema.dtype != UINT16 or param_code != CODE_FLOAT64)
        allowed = " or ".join(NAMES[c] for c in allowed_codes)
    if not ok:
        raise TypeError(f"{name} must be {allowed} for a {NAMES[param_code]} param, got {ema.dtype}")
    named = list(others) + [(name, ema)]
    if kind == "cupy":
        _checks.check_same_device(named)
    _checks.check_disjoint(named)
    flat = ema.reshape(-1)
    code = code_of(ema.dtype)
    return (flat.view(UINT16) if code == CODE_BFLOAT16 else flat), code


class Averaging:
    """An optimizer's EMA settings and its per-parameter arrays (state["ema"])."""

    __slots__ = ("decay", "warmup", "dtype_name", "checked")

    def __init__(self, decay, warmup, dtype_name):
        self.decay, self.warmup, self.dtype_name = decay, warmup, dtype_name
        self.checked = {}  # param -> (ema, step arrays, result) of its last full check

    def __getstate__(self):
        return self.decay, self.warmup, self.dtype_name

    def __setstate__(self, state):
        self.decay, self.warmup, self.dtype_name = state
        self.checked = {}

    def new_state(self, opt, p, code):
        """state["ema"] of a new param: its initial value (the master copy where there is one)."""
        dtype = storage_dtype(self.dtype_name, code, p.kind)
        master = p.state.get("master_weights")
        if master is not None:
            return initial(master, CODE_FLOAT32, dtype, p.xp)
        return initial(p.array, code, dtype, p.xp)

    def arrays(self, opt, p, arrays):
        """(ema, ema_code) of p for this step's kernel call, checked (state["ema"] may have been
        replaced); `arrays` are the step's checked arrays."""
        ema = p.state.get("ema")
        if ema is None:
            raise ValueError("the optimizer averages the weights (ema_decay) but this parameter's state "
                             "has no 'ema'")
        cached = self.checked.get(p)
        if cached is not None and cached[0] is ema:
            if cached[1] is arrays:  # the same arrays as the last step: checked then
                return cached[2]
            old = cached[1]
            if old.param is arrays.param and old.master is arrays.master and len(old.states) == len(
                    arrays.states) and all(map(operator.is_, old.states, arrays.states)):
                # Only the gradient is new: it must not overlap the EMA.
                _checks.check_disjoint([("grad", arrays.grad), ("state['ema']", ema)])
                self.checked[p] = (ema, arrays, cached[2])
                return cached[2]
        expected = storage_dtype(self.dtype_name, arrays.param_code, p.kind)
        others = [("param", arrays.param), ("grad", arrays.grad)] + written_states(
            (f"state {i}", s) for i, s in enumerate(arrays.states))
        if arrays.master is not None:
            others.append(("master_weights", arrays.master))
        result = checked_array(ema, arrays.param, arrays.param_code, p.kind, expected, others, "state['ema']")
        self.checked[p] = (ema, arrays, result)
        return result

    def weight(self, step):
        return weight(self.decay, self.warmup, step)


def written_states(states):
    """(name, array) of the state arrays a step writes, from (name, state) pairs: a quantized
    state's codes and block scales (a QuantizedState, or the kernel's (codes, absmax, tables) tuple)."""
    out = []
    for name, s in states:
        if isinstance(s, tuple):
            out += [(f"{name} codes", s[0]), (f"{name} absmax", s[1])]
        elif hasattr(s, "codes") and hasattr(s, "absmax"):
            out += [(f"{name} codes", s.codes), (f"{name} absmax", s.absmax)]
        else:
            out.append((name, s))
    return out


def of(opt):
    """The optimizer's Averaging, or None."""
    return opt.__dict__.get("_ema")


def views(opt):
    """opt.ema: the averaged weights shaped as the params (one array, or a list in param order)."""
    if of(opt) is None:
        raise AttributeError("this optimizer keeps no EMA of the weights: construct it with ema_decay=...")
    shaped = [p.state["ema"].reshape(p.array.shape) for p in opt._params]
    return shaped[0] if opt._single else shaped


def _param_values(p, opt, ema):
    """The EMA written in the param's own storage (rounded to nearest even)."""
    code = dtype_code(p.array.dtype, opt.param_dtype)
    xp = p.xp
    values = _values(ema, code_of(ema.dtype), xp)
    if code == CODE_FLOAT64:
        out = values.astype(xp.float64)
    elif code == CODE_FLOAT32:
        out = values.astype(xp.float32)
    elif code == CODE_BFLOAT16:
        out = bfloat16_bits(values, xp)
        out = out if p.array.dtype == UINT16 else out.view(p.array.dtype)
    else:
        out = values.astype(xp.float16)
        out = out.view(UINT16) if p.array.dtype == UINT16 else out
    return out.reshape(p.array.shape)


@contextlib.contextmanager
def swapped(opt):
    """opt.swap_ema(): the params hold the EMA inside the block; restored bit for bit after."""
    averaging = of(opt)
    if averaging is None:
        raise AttributeError("this optimizer keeps no EMA of the weights: construct it with ema_decay=...")
    if opt.__dict__.get("_ema_swapped"):
        raise RuntimeError("swap_ema() is already active on this optimizer")
    params = list(opt._params)
    saved = [p.array.copy() for p in params]
    replaced = [_param_values(p, opt, p.state["ema"]) for p in params]  # all computed before any write
    opt.__dict__["_ema_swapped"] = True
    try:
        for p, values in zip(params, replaced):
            p.array[...] = values
        yield opt
    finally:
        for p, values in zip(params, saved):
            p.array[...] = values
        opt.__dict__["_ema_swapped"] = False


def refuse_step_while_swapped(opt):
    if opt.__dict__.get("_ema_swapped"):
        raise RuntimeError("step() inside swap_ema(): the params hold the EMA; leave the block first")


__all__ = ["Averaging", "checked_decay", "checked_dtype", "weight", "views", "swapped"]
