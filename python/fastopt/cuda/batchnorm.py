"""CuPy launchers of the BatchNorm kernels in batchnorm.cu, with the signatures of the C++
extension's entry points (csrc/bind_batchnorm.cpp)."""
import os

import numpy as np

from .. import _headers
from .._dtypes import CODE_BFLOAT16, CODE_FLOAT16, CODE_FLOAT32, CODE_FLOAT64
from ._loader import CupyDevice

SOURCE = "batchnorm.cu"
_LAUNCH = _headers.constants(os.path.join(os.path.dirname(os.path.abspath(__file__)), SOURCE))
THREADS = _LAUNCH["kBnThreads"]  # the block sizes the kernels are written for
ROW_THREADS = _LAUNCH["kBnRowThreads"]
# (data type, statistics type) per dtype code, as the kernels name them.
TYPES = {CODE_FLOAT32: ("float", "float"), CODE_FLOAT64: ("double", "double"),
         CODE_FLOAT16: ("fastopt::f16_t", "float"), CODE_BFLOAT16: ("fastopt::bf16_t", "float")}


def name_expressions():
    """Every template instantiation the launchers use: compiled together, and in the CI check."""
    names = []
    for x, s in TYPES.values():
        for grad in ("false", "true"):
            names.append(f"fastopt_bn_reduce_strided<{x}, {s}, {grad}>")
            names.append(f"fastopt_bn_reduce_rows<{x}, {s}, {grad}>")
        names += [f"fastopt_bn_finalize_forward<{x}, {s}>", f"fastopt_bn_normalize<{x}, {s}>",
                  f"fastopt_bn_input_grad<{x}, {s}>"]
    for s in ("float", "double"):
        names += [f"fastopt_bn_finalize_eval<{s}>", f"fastopt_bn_finalize_backward<{s}>"]
    return tuple(names)


def fused_name_expressions():
    """The instantiations of BN + add + ReLU (residual, ReLU; the backward through the ReLU)."""
    names = []
    for x, s in TYPES.values():
        names += [f"fastopt_bn_reduce_strided_relu<{x}, {s}>", f"fastopt_bn_reduce_rows_relu<{x}, {s}>",
                  f"fastopt_bn_normalize_fused<{x}, {s}>", f"fastopt_bn_input_grad_fused<{x}, {s}>"]
    return tuple(names)


def all_name_expressions():
    """What the launchers compile: one module for plain and fused BatchNorm."""
    return name_expressions() + fused_name_expressions()


def _launch(device, name, grid, block, args):
    device.launch(SOURCE, all_name_expressions(), name, grid, block, args)


_NULL = np.uint64(0)  # a null pointer argument


def _ptr(a):
    return _NULL if a is None else a


def _ceil_div(a, b):
    return -(-a // b)


def _reduce(device, code, x, dy, mean, outer, channels, inner, grad, ym=None, mask=None):
    """Stage 1: float64 partial sums; returns (part1, part2, num_parts, c_stride, p_stride). ym: a
    ReLU's output, or mask: the mask its forward wrote; either masks dy."""
    xt, st = TYPES[code]
    flag = "true" if grad else "false"

    def kernel(kind):
        if ym is None and mask is None:
            return f"fastopt_bn_reduce_{kind}<{xt}, {st}, {flag}>", ()
        return f"fastopt_bn_reduce_{kind}_relu<{xt}, {st}>", (_ptr(ym), _ptr(mask))
    count = outer * inner
    if inner > 1:
        # Enough blocks to fill the device, chunks of at least 8 values per thread; fixed by the shape.
        chunks = max(1, min(_ceil_div(1024, channels), _ceil_div(count, THREADS * 8), 65535))
        chunk = _ceil_div(count, chunks)
        chunks = _ceil_div(count, chunk)
        part1 = device.empty(channels * chunks, np.float64)
        part2 = device.empty(channels * chunks, np.float64)
        name, masks = kernel("strided")
        _launch(device, name, (channels, chunks), (THREADS,),
                (x, _ptr(dy), *masks, _ptr(mean), np.int64(outer), np.int64(channels), np.int64(inner), np.int64(chunk),
                 part1, part2))
        return part1, part2, chunks, chunks, 1
    column_blocks = _ceil_div(channels, 32)
    row_blocks = max(1, min(_ceil_div(2048, column_blocks), _ceil_div(outer, ROW_THREADS * 4), 65535))
    rows_per_block = _ceil_div(outer, row_blocks)
    row_blocks = _ceil_div(outer, rows_per_block)
    part1 = device.empty(row_blocks * channels, np.float64)
    part2 = device.empty(row_blocks * channels, np.float64)
    name, masks = kernel("rows")
    _launch(device, name, (column_blocks, row_blocks), (32, ROW_THREADS),
            (x, _ptr(dy), *masks, _ptr(mean), np.int64(outer), np.int64(channels), np.int64(rows_per_block), part1, part2))
    return part1, part2, row_blocks, 1, channels


def _elementwise_grid(n):
    return (max(1, min(_ceil_div(n, THREADS), 65535)),), (THREADS,)


def batch_norm_forward(code, x, y, outer, channels, inner, weight, bias, running_mean, running_var,
                       save_mean, save_invstd, momentum, eps, training, residual=None, relu=False, relu_mask=None,
                       device=None):
    """`device`: where the kernels run (default: CuPy on x's GPU; the emulator passes its own).
    relu_mask: with relu, gets 1 where y > 0 (uint8)."""
    device = CupyDevice(x) if device is None else device
    xt, st = TYPES[code]
    per_channel = ((_ceil_div(channels, 128),), (128,))
    if training:
        part1, part2, parts, c_stride, p_stride = _reduce(device, code, x, None, None, outer, channels, inner,
                                                          False)
        _launch(device, f"fastopt_bn_finalize_forward<{xt}, {st}>", *per_channel,
                (x, part1, part2, np.int64(parts), np.int64(c_stride), np.int64(p_stride), np.int64(channels),
                 np.int64(inner), np.int64(outer * inner), np.float64(eps), np.float64(momentum),
                 _ptr(running_mean), _ptr(running_var), save_mean, save_invstd))
    else:
        _launch(device, f"fastopt_bn_finalize_eval<{st}>", *per_channel,
                (np.int64(channels), np.float64(eps), running_mean, running_var, save_mean, save_invstd))
    n = outer * channels * inner
    args = (x, y, np.int64(n), np.int64(channels), np.int64(inner), save_mean, save_invstd, _ptr(weight),
            _ptr(bias))
    if residual is None and not relu:
        _launch(device, f"fastopt_bn_normalize<{xt}, {st}>", *_elementwise_grid(n), args)
    else:
        _launch(device, f"fastopt_bn_normalize_fused<{xt}, {st}>", *_elementwise_grid(n),
                args + (_ptr(residual), np.int32(bool(relu)), _ptr(relu_mask if relu else None)))


def batch_norm_backward(code, dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias,
                        training, y=None, dresidual=None, relu_mask=None, device=None):
    """y: a ReLU forward's output (dy counts where y > 0), or relu_mask: its mask (read instead of
    y); dresidual: gets the dy used."""
    if relu_mask is not None:
        y = None
    device = CupyDevice(x) if device is None else device
    xt, st = TYPES[code]
    stat_dtype = np.float64 if code == CODE_FLOAT64 else np.float32
    if training or dweight is not None:
        part1, part2, parts, c_stride, p_stride = _reduce(device, code, x, dy, save_mean, outer, channels, inner,
                                                          True, y, relu_mask)
    else:
        part1 = part2 = device.zeros(1, np.float64)
        parts, c_stride, p_stride = 0, 0, 0
    coefs = device.empty(3 * channels, stat_dtype)
    _launch(device, f"fastopt_bn_finalize_backward<{st}>", (_ceil_div(channels, 128),), (128,),
            (part1, part2, np.int64(parts), np.int64(c_stride), np.int64(p_stride), np.int64(channels),
             np.int64(outer * inner), _ptr(weight), save_invstd, _ptr(dweight), _ptr(dbias), np.int32(bool(training)),
             coefs))
    n = outer * channels * inner
    args = (dy, x, dx, np.int64(n), np.int64(channels), np.int64(inner), save_mean, coefs)
    if y is None and relu_mask is None and dresidual is None:
        _launch(device, f"fastopt_bn_input_grad<{xt}, {st}>", *_elementwise_grid(n), args)
    else:
        _launch(device, f"fastopt_bn_input_grad_fused<{xt}, {st}>", *_elementwise_grid(n),
                args + (_ptr(y), _ptr(dresidual), _ptr(relu_mask)))
