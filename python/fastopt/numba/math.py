"""Numba mirror of csrc/fastopt/math's helpers: the conversions, rounding and the compiled form of
each rule's mirror (in its module in fastopt.rules), for the backend used where the compiled
extension is missing. Arithmetic stays in the compute type (float32 for float32 and half data,
float64 for float64): every scalar comes in that type and no
Python float literal enters the maths, so results match the C++ kernels bit for bit."""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._dtypes import CODE_BFLOAT16, UINT16, is_half
from ..rules._base import fo_max, fo_sign

# ---- bit-exact half conversions (common.h) ----------------------------------------------------


@intrinsic
def _bits_to_float(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _float_to_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


_U = np.uint32


def _uint32_op(name):
    """The IR builder's `name` on two uint32: Numba's operators widen uint32 to 64 bits, which
    halved the lanes of the vectorised conversions (2.6x slower float16 loops)."""

    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, signature, args):
            return getattr(builder, name)(args[0], args[1])

        return types.uint32(types.uint32, types.uint32), codegen

    return op


# uint32 arithmetic that wraps modulo 2**32, as in C++.
_and, _or, _xor, _shl, _shr, _add, _sub, _mul = (
    _uint32_op(name) for name in ("and_", "or_", "xor", "shl", "lshr", "add", "sub", "mul"))


@njit(inline="always")
def bf16_to_float(h):
    return _bits_to_float(_shl(_U(h), _U(16)))


@njit(inline="always")
def float_to_bf16(f):
    u = _float_to_bits(f)
    if _and(u, _U(0x7FFFFFFF)) > _U(0x7F800000):
        return np.uint16(_or(_shr(u, _U(16)), _U(0x0040)))
    return np.uint16(_shr(_add(_add(u, _U(0x7FFF)), _and(_shr(u, _U(16)), _U(1))), _U(16)))


@njit(inline="always")
def f16_to_float(h):
    sign = _shl(_and(_U(h), _U(0x8000)), _U(16))
    magnitude = _and(_U(h), _U(0x7FFF))
    if magnitude >= _U(0x7C00):
        body = _or(_shl(magnitude, _U(13)), _U(0x7F800000))
    else:
        body = _float_to_bits(_bits_to_float(_shl(magnitude, _U(13))) * np.float32(5.192296858534828e33))
    return _bits_to_float(_or(sign, body))


@njit(inline="always")
def float_to_f16(f):
    u = _float_to_bits(f)
    sign = _and(_shr(u, _U(16)), _U(0x8000))
    a = _and(u, _U(0x7FFFFFFF))
    if a >= _U(0x477FF000):
        body = _U(0x7E00) if a > _U(0x7F800000) else _U(0x7C00)
    elif a < _U(0x38800000):
        body = _sub(_float_to_bits(_bits_to_float(a) + np.float32(0.5)), _U(0x3F000000))
    else:
        body = _shr(_add(_add(a, _U(0xC8000FFF)), _and(_shr(a, _U(13)), _U(1))), _U(13))
    return np.uint16(_or(sign, body))


@njit(inline="always")
def element_random(seed, i):
    """common.h element_random: lowbias32 of the index and the step's seed (uint32 arithmetic)."""
    x = _xor(_U(i), _U(seed))  # the low 32 bits of i
    x = _add(x, _mul(_U(np.uint64(i) >> np.uint64(32)), _U(0x9E3779B9)))
    x = _xor(x, _shr(x, _U(16)))
    x = _mul(x, _U(0x7FEB352D))
    x = _xor(x, _shr(x, _U(15)))
    x = _mul(x, _U(0x846CA68B))
    return _xor(x, _shr(x, _U(16)))


@njit(inline="always")
def float_to_bf16_stochastic(f, random):
    u = _float_to_bits(f)
    if _and(u, _U(0x7FFFFFFF)) > _U(0x7F800000):
        return np.uint16(_or(_shr(u, _U(16)), _U(0x0040)))
    return np.uint16(_shr(_add(u, _and(random, _U(0xFFFF))), _U(16)))


def storage(a, code):
    """`a` flat, as the kernels take it: half arrays as their uint16 bits (widen and store)."""
    return a.reshape(-1).view(UINT16) if is_half(code) else a.reshape(-1)


def widen(x, code):
    """A stored value in its compute type (float32 for halves)."""


@overload(widen)
def _widen(x, code):
    if isinstance(x, types.Integer):  # half stored as uint16

        def impl(x, code):
            return bf16_to_float(x) if code == CODE_BFLOAT16 else f16_to_float(x)

        return impl
    return lambda x, code: x


def relu_passed(y, k, code):
    """Whether a ReLU passed element k, from its output y (y[k] > 0) or the uint8 mask a forward
    wrote (1 where y > 0)."""


@overload(relu_passed)
def _relu_passed(y, k, code):
    if y.dtype == types.uint8:
        return lambda y, k, code: y[k] != 0
    return lambda y, k, code: widen(y[k], code) > 0


def store(a, i, value, code):
    """a[i] = value, rounded to nearest even into a's storage type."""


@overload(store)
def _store(a, i, value, code):
    if isinstance(a.dtype, types.Integer):

        def impl(a, i, value, code):
            if code == CODE_BFLOAT16:
                a[i] = float_to_bf16(np.float32(value))
            else:
                a[i] = float_to_f16(np.float32(value))

        return impl

    def impl(a, i, value, code):
        a[i] = value

    return impl


# ---- the rules --------------------------------------------------------------------------------
# Each rule's mirror is plain Python in its module (fastopt.rules): it returns (p, s0, s1, s2),
# reads its scalars by name from a named tuple in the compute type, and c holds the constants
# (0, 1). The helpers it calls compile here, as common.h writes them.


@overload(fo_max)
def _fo_max(a, b):
    return lambda a, b: a if (a != a or a > b) else b


@overload(fo_sign)
def _fo_sign(a, one, zero):
    return lambda a, one, zero: one if a > zero else (-one if a < zero else a * zero)


_UPDATES = {}


def update_for(rule):
    """The jitted per-element mirror of `rule` (a registered rule module)."""
    update = _UPDATES.get(rule)
    if update is None:
        update = _UPDATES[rule] = njit(inline="always")(rule.numba_update)
    return update
