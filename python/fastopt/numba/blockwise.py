"""Numba loops over block-wise quantized states: the same block step as
csrc/cpu/blockwise_kernels.cpp (dequantize each state of a block, the rule's float32 step on
every element, the new absmax and codes), parallel over blocks with prange, with the search of
csrc/fastopt/math/blockwise.h mirrored in encode_nearest."""
import numpy as np
from numba import njit, prange

from .. import blockwise as _bw
from ..rules import RULES
from .math import _add, _and, _bits_to_float, _float_to_bits, _or, _shr, _sub, _xor, _U, update_for
from .optim import compiled, make_element_step, runs_parallel

BLOCK = _bw.BLOCK_SIZE
LUT_SHIFT, LUT_LOW, LUT_BUCKETS = _bw.LUT_SHIFT, _bw.LUT_LOW, _bw.LUT_BUCKETS


@njit(inline="always")
def encode_nearest(x, lut):
    u = _float_to_bits(x)
    negative = _shr(u, _U(31))
    b = np.int64(_shr(_and(u, _U(0x7FFFFFFF)), _U(LUT_SHIFT))) - LUT_LOW
    b = 0 if b < 0 else (LUT_BUCKETS - 1 if b > LUT_BUCKETS - 1 else b)
    entry = _U(lut[b + np.int64(negative) * LUT_BUCKETS])
    low = _and(_xor(u, _sub(_U(0), negative)), _U(0xFFFF))
    code = _shr(entry, _U(16))
    return np.uint8(code + _U(1) if low > _and(entry, _U(0xFFFF)) else code)


@njit(inline="always")
def float_to_e4m3(x):
    u = _float_to_bits(x)
    a = _and(u, _U(0x7FFFFFFF))
    tiny = _sub(_float_to_bits(_bits_to_float(a) + np.float32(16384.0)), _U(0x46800000))
    normal = _sub(_shr(_add(_add(a, _U(0x7FFFF)), _and(_shr(a, _U(20)), _U(1))), _U(20)), _U(120 << 3))
    code = tiny if a < _U(0x3C800000) else normal
    if a >= _U(0x43E00000):
        code = _U(0x7E)
    if a > _U(0x7F800000):
        code = _U(0x7F)
    return np.uint8(_or(code, _and(_shr(u, _U(24)), _U(0x80))))


@njit(inline="always")
def block_scale(absmax, fp8):
    return absmax / np.float32(_bw.E4M3_MAX) if fp8 else absmax


@njit(inline="always")
def dequantize_block(codes, base, length, absmax, values, out):
    for i in range(length):
        out[i] = values[codes[base + i]] * absmax


@njit(inline="always")
def quantize_block(s, length, codes, base, mids, lut, fp8):
    top = _U(0)
    for i in range(length):
        bits = _and(_float_to_bits(s[i]), _U(0x7FFFFFFF))
        if bits > top:
            top = bits
    absmax = _bits_to_float(top)
    scale = block_scale(absmax, fp8)
    d = scale if scale > np.float32(0) else np.float32(1)
    for i in range(length):
        codes[base + i] = float_to_e4m3(s[i] / d) if fp8 else encode_nearest(s[i] / d, lut)
    return absmax


def _make_loop(update, variant, num_states, has_master, param_code, grad_code, stochastic, fp8, ema_code=-1):
    # The element step (and the EMA's lerp, ema_code >= 0) of the float32-state loop (optim.py).
    step_element = make_element_step(update, variant, has_master, param_code, grad_code, stochastic, ema_code)

    def kernel(param, grad, master, c0, a0, v0, m0, l0, c1, a1, v1, m1, l1, c2, a2, v2, m2, l2, k, pro,
               rounding_seed, ema, ema_weight):
        zero = pro[3]
        n = param.size
        for blk in prange((n + BLOCK - 1) // BLOCK):
            base = blk * BLOCK
            length = min(BLOCK, n - base)
            s = np.empty((3, BLOCK), np.float32)
            if num_states > 0:
                dequantize_block(c0, base, length, block_scale(a0[blk], fp8), v0, s[0])
            if num_states > 1:
                dequantize_block(c1, base, length, block_scale(a1[blk], fp8), v1, s[1])
            if num_states > 2:
                dequantize_block(c2, base, length, block_scale(a2[blk], fp8), v2, s[2])
            for j in range(length):
                a = s[0, j] if num_states > 0 else zero
                b = s[1, j] if num_states > 1 else zero
                c = s[2, j] if num_states > 2 else zero
                s[0, j], s[1, j], s[2, j] = step_element(base + j, param, grad, master, a, b, c, k, pro,
                                                         rounding_seed, ema, ema_weight)
            if num_states > 0:
                a0[blk] = quantize_block(s[0], length, c0, base, m0, l0, fp8)
            if num_states > 1:
                a1[blk] = quantize_block(s[1], length, c1, base, m1, l1, fp8)
            if num_states > 2:
                a2[blk] = quantize_block(s[2], length, c2, base, m2, l2, fp8)

    return kernel


def kernel_for(rule, size, *constants):
    parallel = runs_parallel(size)
    return compiled(("blockwise", RULES[rule], parallel) + constants, parallel,
                    lambda: _make_loop(update_for(RULES[rule]), *constants))
