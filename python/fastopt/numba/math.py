"""Numba mirror of csrc/fastopt/math: the same rules, names and scalar orders, for the backend
used where the compiled extension is missing. Arithmetic stays in the compute type (float32 for
float32 and half data, float64 for float64): every scalar comes in an array of that type and no
Python float literal enters the maths, so results match the C++ kernels bit for bit."""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._dtypes import CODE_BFLOAT16, UINT16, is_half

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


@njit(inline="always")
def fo_max(a, b):
    return a if (a != a or a > b) else b


@njit(inline="always")
def fo_sign(a, one, zero):
    return one if a > zero else (-one if a < zero else a * zero)


# ---- the rules (same variants and scalar orders as the headers) -------------------------------
# Each returns (p, s0, s1, s2). k holds the rule's scalars, c the constants (0, 1) in the compute type.

SGD_PLAIN, SGD_MOMENTUM, SGD_NESTEROV, SGD_VELOCITY, SGD_VELOCITY_NESTEROV = range(5)


@njit(inline="always")
def sgd_update(v, p, g, buf, s1, s2, k, c):
    lr, momentum, one_minus_dampening, first_step = k[0], k[1], k[2], k[3] != c[0]
    if v == SGD_PLAIN:
        p = p - lr * g
    elif v == SGD_MOMENTUM or v == SGD_NESTEROV:
        buf = g if first_step else momentum * buf + one_minus_dampening * g
        direction = g + momentum * buf if v == SGD_NESTEROV else buf
        p = p - lr * direction
    else:
        step = lr * g
        buf = -step if first_step else momentum * buf - step
        p = p + (momentum * buf - step if v == SGD_VELOCITY_NESTEROV else buf)
    return p, buf, s1, s2


@njit(inline="always")
def adagrad_update(v, p, g, total, s1, s2, k, c):
    total = total + g * g
    p = p - k[0] * g / (np.sqrt(total + k[1]) + k[2])
    return p, total, s1, s2


RMSPROP_CENTERED, RMSPROP_MOMENTUM, RMSPROP_NESTEROV = 1, 2, 4


@njit(inline="always")
def rmsprop_update(v, p, g, square_avg, s1, s2, k, c):
    lr, alpha, one_minus_alpha, eps_in, eps_out, momentum = k[0], k[1], k[2], k[3], k[4], k[5]
    centered = (v & RMSPROP_CENTERED) != 0
    has_momentum = (v & (RMSPROP_MOMENTUM | RMSPROP_NESTEROV)) != 0
    square_avg = alpha * square_avg + one_minus_alpha * g * g
    variance = square_avg
    if centered:
        s1 = alpha * s1 + one_minus_alpha * g
        variance = square_avg - s1 * s1
    scaled = g / (np.sqrt(variance + eps_in) + eps_out)
    if has_momentum:
        buf = s2 if centered else s1
        buf = momentum * buf + scaled
        p = p - lr * (scaled + momentum * buf if (v & RMSPROP_NESTEROV) != 0 else buf)
        if centered:
            s2 = buf
        else:
            s1 = buf
    else:
        p = p - lr * scaled
    return p, square_avg, s1, s2


@njit(inline="always")
def adadelta_update(v, p, g, square_avg, acc_delta, s2, k, c):
    lr, rho, one_minus_rho, eps = k[0], k[1], k[2], k[3]
    square_avg = rho * square_avg + one_minus_rho * g * g
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + one_minus_rho * delta * delta
    p = p - lr * delta
    return p, square_avg, acc_delta, s2


ADAM_AMSGRAD = 1


@njit(inline="always")
def adam_update(v, p, g, m, s, vmax, k, c):
    m = k[0] * m + k[1] * g
    s = k[2] * s + k[3] * g * g
    second = s
    if v == ADAM_AMSGRAD:
        vmax = fo_max(vmax, s)
        second = vmax
    denom = np.sqrt(second) / k[5] + k[6]
    p = p - k[4] * m / denom
    return p, m, s, vmax


@njit(inline="always")
def adamax_update(v, p, g, m, u, s2, k, c):
    m = k[0] * m + k[1] * g
    u = fo_max(k[2] * u, np.abs(g) + k[4])
    p = p - k[3] * m / u
    return p, m, u, s2


@njit(inline="always")
def nadam_update(v, p, g, m, s, s2, k, c):
    m = k[0] * m + k[1] * g
    s = k[2] * s + k[3] * g * g
    denom = np.sqrt(s / k[4]) + k[5]
    p = p - k[6] * g / denom - k[7] * m / denom
    return p, m, s, s2


@njit(inline="always")
def radam_update(v, p, g, m, s, s2, k, c):
    m = k[0] * m + k[1] * g
    s = k[2] * s + k[3] * g * g
    if k[4] != c[0]:
        step = k[5] * m / (np.sqrt(s) + k[7])
    else:
        step = k[6] * m
    p = p - step
    return p, m, s, s2


@njit(inline="always")
def lion_update(v, p, g, m, s1, s2, k, c):
    interp = k[1] * m + k[2] * g
    p = p - k[0] * fo_sign(interp, c[1], c[0])
    m = k[3] * m + k[4] * g
    return p, m, s1, s2


# Indexed by rule id (fastopt._scalars).
UPDATES = (sgd_update, adagrad_update, rmsprop_update, adadelta_update, adam_update, adamax_update,
           nadam_update, radam_update, lion_update)
