"""Quantized optimizer states in the step: the state container of the functional API, the checks
of a step's arrays, the optimizers' state arrays, and checkpoint conversion (fastopt.blockwise
holds the scheme itself).

An optimizer keeps a quantized state `name` as two arrays of its state dict: `name` (uint8
codes, one per element) and `name + "_absmax"` (float32, one per block), and the entry
"quantization" naming the scheme."""
import numpy as np

from . import _backend, _checks, blockwise
from ._checks import StepArrays
from ._dtypes import CODE_FLOAT64, FLOAT32, UINT16, bfloat16_bits

CODE_8BIT = 16  # KernelCall.state_code of block-wise 8-bit states (apart from the dtype codes)
CODE_FP8 = 17    # and of float8 E4M3 states (csrc/bind_blockwise.cpp kStateCodeFp8)
SCHEME_CODES = {"8bit": CODE_8BIT, "fp8": CODE_FP8}
QUANTIZED_CODES = frozenset(SCHEME_CODES.values())
ABSMAX_SUFFIX = "_absmax"
SCHEME_KEY = "quantization"


class QuantizedState:
    """One quantized state array for the functional API: ``codes`` (uint8, one per element),
    ``absmax`` (float32, one per block of BLOCK_SIZE) and ``code_map`` (blockwise.SIGNED or
    blockwise.UNSIGNED). Make one with :func:`state_like`."""

    __slots__ = ("codes", "absmax", "code_map", "scheme")

    def __init__(self, codes, absmax, code_map, scheme="8bit"):
        if scheme not in SCHEME_CODES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEME_CODES)}, got {scheme!r}")
        self.codes, self.absmax, self.code_map, self.scheme = codes, absmax, code_map, scheme

    @property
    def size(self):
        return self.codes.size

    def dequantize(self):
        """The state's values as a float32 NumPy array."""
        return blockwise.dequantize(_host(self.codes), _host(self.absmax), self.code_map)


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def state_like(param, name, value=0.0, scheme="8bit"):
    """A quantized state for `param` filled with `value`, with the code map of the state called
    `name` (unsigned for the non-negative states, blockwise.UNSIGNED_STATES)."""
    xp = _backend.array_module(_backend.array_kind(param) or "numpy")
    code_map = blockwise.map_for(name, scheme)
    codes, absmax = blockwise.quantize(np.full(param.size, value, dtype=np.float32), code_map)
    return QuantizedState(xp.asarray(codes), xp.asarray(absmax), code_map, scheme)


def step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed):
    """The checked arrays of a step whose states (name, QuantizedState) are quantized."""
    if rounding_seed is not None:
        _checks.checked_seed(rounding_seed)
    kind, param_code, grad_code = _checks.param_and_grad(param, grad, master_weights, param_dtype, grad_dtype,
                                                         rounding_seed)
    if param_code == CODE_FLOAT64:
        raise TypeError("quantized state is for float32, float16 and bfloat16 params; float64 params keep "
                        "float64 state")
    schemes = {s.scheme for _, s in states if isinstance(s, QuantizedState)}
    named = [("param", param), ("grad", grad)]
    slots = []
    for name, s in states:
        if not isinstance(s, QuantizedState):
            raise TypeError(f"{name} must be a fastopt.blockwise QuantizedState (state_like) when "
                            f"state_dtype is quantized, got {type(s).__name__}")
        codes, absmax = s.codes, s.absmax
        for part, a, dtype, size in ((name, codes, np.uint8, param.size),
                                     (name + ABSMAX_SUFFIX, absmax, np.float32, blockwise.num_blocks(param.size))):
            if _checks._kind_of(part, a) != kind:
                raise TypeError(f"{part} must be a {kind} array like param, got {_backend.array_kind(a)}")
            _checks._check_layout(part, a, writable=True)
            if a.dtype != dtype:
                raise TypeError(f"{part} must be {np.dtype(dtype)}, got {a.dtype}")
            if a.size != size:
                raise ValueError(f"{part} has {a.size} elements; expected {size} for a param of {param.size}")
            named.append((part, a))
        m = s.code_map
        slots.append((codes, absmax, m.values, m.mids, m.lut) if kind == "numpy" else
                     (codes, absmax) + device_tables(m))
    if len(schemes) > 1:
        raise TypeError("all quantized states of a call share one scheme")
    if master_weights is not None:
        named.append(("master_weights", master_weights))
    if kind == "cupy":
        _checks.check_same_device(named)
    _checks.check_disjoint(named)
    code = SCHEME_CODES[schemes.pop()] if schemes else CODE_8BIT
    return StepArrays(kind, param, grad, master_weights, tuple(slots), param_code, grad_code, code)


_device_tables = {}


def device_tables(code_map):
    """The map's tables as CuPy arrays on the current device, made once."""
    import cupy

    key = (id(code_map), cupy.cuda.Device().id)
    found = _device_tables.get(key)
    if found is None:
        found = _device_tables[key] = (cupy.asarray(code_map.values), cupy.asarray(code_map.mids),
                                       cupy.asarray(code_map.lut))
    return found


def run(module, call):
    """One KernelCall with quantized states on a backend module."""
    fn = getattr(module, "blockwise_step", None)
    if fn is None:
        raise TypeError("quantized optimizer state runs on the cpu backend (this backend has no kernel for it)")
    fn(*call)


# ---- the optimizer classes' state ---------------------------------------------------------------

def resolve(state_dtype, param_code, size):
    """The scheme of a parameter's state (a name of SCHEME_CODES), or None when state_dtype is not
    a quantized scheme or the array is below blockwise.MIN_QUANTIZED_SIZE (float32 state)."""
    if state_dtype not in SCHEME_CODES:
        return None
    if param_code == CODE_FLOAT64:
        raise TypeError("float64 params keep float64 state")
    return state_dtype if size >= blockwise.MIN_QUANTIZED_SIZE else None


def init_state(p, name, value):
    code_map = blockwise.map_for(name, p.state_dtype)
    codes, absmax = blockwise.quantize(np.full(p.array.size, value, dtype=np.float32), code_map)
    p.state[name] = p.xp.asarray(codes)
    p.state[name + ABSMAX_SUFFIX] = p.xp.asarray(absmax)
    p.state[SCHEME_KEY] = p.state_dtype


def param_states(p, names):
    """(name, QuantizedState) of parameter p's states `names`."""
    state = p.state
    return [(n, QuantizedState(state[n], state[n + ABSMAX_SUFFIX], blockwise.map_for(n, p.state_dtype),
                               p.state_dtype)) for n in names]


def is_quantized(p):
    return isinstance(p.state_dtype, str)


# ---- checkpoints ----------------------------------------------------------------------------------

def checkpoint_entry(p, entry, known, where):
    """Splits a checkpoint entry for parameter p: (the rest of the entry, the quantized arrays of
    p's state to load). The rule: a saved state is converted to p's representation. Saved codes
    (name, name_absmax, 'quantization') load as they are into a quantized p of the same scheme,
    are dequantized to float32 for a float state (and requantized for the other scheme), and
    saved float arrays are quantized (the kernel's rounding, blockwise.quantize) for a quantized p."""
    from .checkpoint import _plain

    entry = dict(entry)
    saved_scheme = entry.pop(SCHEME_KEY, None)
    if saved_scheme is not None and saved_scheme not in SCHEME_CODES:
        raise ValueError(f"{where}: unknown quantization scheme {saved_scheme!r}")
    quantized = {}
    target = p.state_dtype if is_quantized(p) else None
    n = p.array.size
    for name in known:
        if name not in entry:
            continue
        value = _plain(entry[name], f"{where}['{name}']")
        absmax = entry.pop(name + ABSMAX_SUFFIX, None)
        m = blockwise.map_for(name, saved_scheme or "8bit")
        if absmax is not None or saved_scheme is not None:
            if absmax is None:
                raise ValueError(f"{where}: quantized state '{name}' has no '{name}{ABSMAX_SUFFIX}'")
            absmax = _plain(absmax, f"{where}['{name}{ABSMAX_SUFFIX}']")
            codes = _host(value)
            absmax = _host(absmax)
            if codes.dtype != np.uint8 or codes.size != n or absmax.dtype != FLOAT32 or \
                    absmax.size != blockwise.num_blocks(n):
                raise ValueError(f"{where}: quantized state '{name}' must be {n} uint8 codes and "
                                 f"{blockwise.num_blocks(n)} float32 block scales")
            if target == (saved_scheme or "8bit"):
                quantized[name] = codes.reshape(-1)
                quantized[name + ABSMAX_SUFFIX] = absmax.reshape(-1)
                del entry[name]
            elif target is not None:
                values = blockwise.dequantize(codes, absmax, m)
                quantized[name], quantized[name + ABSMAX_SUFFIX] = blockwise.quantize(
                    values, blockwise.map_for(name, target))
                del entry[name]
            else:
                values = blockwise.dequantize(codes, absmax, m)
                # bfloat16 state kept as its bits (CuPy) is rounded as the kernels round it.
                entry[name] = bfloat16_bits(values) if p.state_dtype == UINT16 else values.astype(p.state_dtype)
        elif target is not None:
            values = _host(value).astype(np.float32).reshape(-1)
            if values.size != n:
                raise ValueError(f"{where}: state '{name}' has {values.size} elements; expected {n}")
            codes, absmax = blockwise.quantize(values, blockwise.map_for(name, target))
            quantized[name], quantized[name + ABSMAX_SUFFIX] = codes, absmax
            del entry[name]
    if target is not None:
        quantized[SCHEME_KEY] = target
    return entry, quantized
