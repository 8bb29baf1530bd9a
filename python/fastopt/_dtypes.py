"""Element types fastopt kernels accept, and their codes in the compiled kernels."""
import numpy as np

try:  # NumPy has no bfloat16; ml_dtypes provides the standard one (also used by JAX).
    from ml_dtypes import bfloat16 as _bfloat16

    BFLOAT16 = np.dtype(_bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    BFLOAT16 = None

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)
UINT16 = np.dtype(np.uint16)

# Codes shared with csrc/cpu/kernels.h (enum DType) and the CUDA and Numba backends.
CODE_FLOAT32, CODE_FLOAT64, CODE_FLOAT16, CODE_BFLOAT16 = 0, 1, 2, 3
_CODES = {FLOAT32: CODE_FLOAT32, FLOAT64: CODE_FLOAT64, FLOAT16: CODE_FLOAT16}
if BFLOAT16 is not None:
    _CODES[BFLOAT16] = CODE_BFLOAT16
NAMES = {CODE_FLOAT32: "float32", CODE_FLOAT64: "float64", CODE_FLOAT16: "float16", CODE_BFLOAT16: "bfloat16"}
HALF_CODES = (CODE_FLOAT16, CODE_BFLOAT16)

# The one table of (param, grad, state) codes an optimizer step takes; every backend is built for
# exactly these (the C++ checks and instantiations, the CUDA instantiations; tests/test_registry.py
# holds the C++ side to it). A half param also needs a float32 master copy, or, for bfloat16
# only, stochastic rounding instead.
STEP_COMBINATIONS = (
    (CODE_FLOAT64, CODE_FLOAT64, CODE_FLOAT64),
    (CODE_FLOAT32, CODE_FLOAT32, CODE_FLOAT32),
    (CODE_FLOAT32, CODE_FLOAT32, CODE_BFLOAT16),
) + tuple((half, grad, state) for half in HALF_CODES for grad in (half, CODE_FLOAT32)
          for state in (CODE_FLOAT32, CODE_BFLOAT16))


_NAME_TO_CODE = {name: code for code, name in NAMES.items()}


def dtype_code(dtype, explicit=None):
    """The kernel code of `dtype`, or None if fastopt does not take it.

    `explicit` names the element type ('bfloat16', 'float16') of an array stored as uint16: the
    only way to pass bfloat16 data from CuPy, which has no such dtype.
    """
    code = _CODES.get(dtype)
    if explicit is None:
        return code
    wanted = _NAME_TO_CODE.get(str(explicit))
    if wanted is not None and (code == wanted or (dtype == UINT16 and wanted in HALF_CODES)):
        return wanted
    return None


def is_half(code):
    return code in HALF_CODES


def bfloat16_bits(values, xp=np):
    """The bits of float32 `values` rounded to bfloat16 (nearest even), as uint16: a float, or an
    array of the module xp (numpy or cupy). A NaN stays a quiet NaN with its sign, as in
    float_to_bf16 (csrc/fastopt/math/common.h)."""
    u = xp.asarray(values, dtype=xp.float32).view(xp.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u >> 16) | 0x0040
    return xp.where((u & 0x7FFFFFFF) > 0x7F800000, nan, rounded).astype(xp.uint16)
