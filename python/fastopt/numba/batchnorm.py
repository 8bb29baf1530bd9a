"""Numba BatchNorm kernels: the same blocks, summation order and per-element formulas as
csrc/cpu/isa_batchnorm.cpp and csrc/fastopt/math/batchnorm.h, so results match the C++ backend
bit for bit. Entry points have the signatures of the extension's (csrc/bind_batchnorm.cpp)."""
import numpy as np
from numba import njit, prange

from .._dtypes import CODE_FLOAT64, UINT16, is_half
from .math import store, widen

# csrc/cpu/batchnorm.h: fixed block sizes, so that sums do not depend on the thread count.
BN_BLOCK = 16384
ROW_BLOCK_ELEMS = 262144
CHANNEL_BLOCK = 4096


def _storage(a, code):
    return a.reshape(-1).view(UINT16) if is_half(code) else a.reshape(-1)


LANES = 32  # csrc/cpu/isa_batchnorm.cpp kLanes


@njit(inline="always")
def _lane_total(lane):
    width = LANES // 2
    while width >= 1:
        for j in range(width):
            lane[j] += lane[j + width]
        width //= 2
    return lane[0]


@njit(inline="always")
def _accumulate(x, dy, with_dy, k, center, sums1, sums2, j, code):
    """Forward: shifted sums of x; backward: sum(dy) and sum(dy * (x - mean))."""
    v = np.float64(widen(x[k], code)) - center
    if with_dy:
        g = np.float64(widen(dy[k], code))
        sums1[j] += g
        sums2[j] += g * v
    else:
        sums1[j] += v
        sums2[j] += v * v


@njit(parallel=True)
def _reduce_strided(x, dy, with_dy, center, outer, channels, inner, code, total1, total2):
    count = outer * inner
    num_blocks = (count + BN_BLOCK - 1) // BN_BLOCK
    tasks = channels * num_blocks
    part1 = np.empty(tasks, np.float64)
    part2 = np.empty(tasks, np.float64)
    for t in prange(tasks):
        c = t // num_blocks
        b = t - c * num_blocks
        lane1 = np.zeros(LANES, np.float64)
        lane2 = np.zeros(LANES, np.float64)
        cen = center[c]
        m = b * BN_BLOCK
        end = min(count, m + BN_BLOCK)
        while m < end:
            o = m // inner
            i = m - o * inner
            length = min(end - m, inner - i)
            base = (o * channels + c) * inner + i
            full = length // LANES * LANES
            for k in range(0, full, LANES):
                for j in range(LANES):
                    _accumulate(x, dy, with_dy, base + k + j, cen, lane1, lane2, j, code)
            for k in range(full, length):
                _accumulate(x, dy, with_dy, base + k, cen, lane1, lane2, k - full, code)
            m += length
        part1[t] = _lane_total(lane1)
        part2[t] = _lane_total(lane2)
    for c in range(channels):
        s1 = 0.0
        s2 = 0.0
        for b in range(num_blocks):
            s1 += part1[c * num_blocks + b]
            s2 += part2[c * num_blocks + b]
        total1[c] = s1
        total2[c] = s2


@njit(parallel=True)
def _reduce_rows(x, dy, with_dy, center, rows, channels, code, total1, total2):
    rows_per_block = max(1, ROW_BLOCK_ELEMS // channels)
    row_blocks = (rows + rows_per_block - 1) // rows_per_block
    channel_blocks = (channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    part1 = np.zeros(row_blocks * channels, np.float64)
    part2 = np.zeros(row_blocks * channels, np.float64)
    for t in prange(row_blocks * channel_blocks):
        rb = t // channel_blocks
        cb = t - rb * channel_blocks
        c0 = cb * CHANNEL_BLOCK
        c1 = min(channels, c0 + CHANNEL_BLOCK)
        s1 = part1[rb * channels:(rb + 1) * channels]
        s2 = part2[rb * channels:(rb + 1) * channels]
        for r in range(rb * rows_per_block, min(rows, (rb + 1) * rows_per_block)):
            row = r * channels
            for c in range(c0, c1):
                _accumulate(x, dy, with_dy, row + c, center[c], s1, s2, c, code)
    for c in range(channels):
        total1[c] = 0.0
        total2[c] = 0.0
    for rb in range(row_blocks):
        for c in range(channels):
            total1[c] += part1[rb * channels + c]
            total2[c] += part2[rb * channels + c]


def _reduce(x, dy, with_dy, center, outer, channels, inner, code):
    total1 = np.empty(channels, np.float64)
    total2 = np.empty(channels, np.float64)
    if inner == 1:
        _reduce_rows(x, dy, with_dy, center, outer, channels, code, total1, total2)
    else:
        _reduce_strided(x, dy, with_dy, center, outer, channels, inner, code, total1, total2)
    return total1, total2


@njit
def _finalize_training(count, shift, sum1, sum2, eps, momentum, has_running, running_mean, running_var,
                       save_mean, save_invstd):
    for c in range(shift.size):
        mean_rel = sum1[c] / count
        var = (sum2[c] - sum1[c] * mean_rel) / count
        if var < 0.0:  # rounding; a NaN stays NaN
            var = 0.0
        mean = shift[c] + mean_rel
        save_mean[c] = mean
        save_invstd[c] = 1.0 / np.sqrt(var + eps)
        if has_running:
            running_mean[c] = (1.0 - momentum) * np.float64(running_mean[c]) + momentum * mean
            unbiased = var * (count / (count - 1.0))
            running_var[c] = (1.0 - momentum) * np.float64(running_var[c]) + momentum * unbiased


@njit
def _finalize_eval(eps, running_mean, running_var, save_mean, save_invstd):
    for c in range(running_mean.size):
        save_mean[c] = running_mean[c]
        save_invstd[c] = 1.0 / np.sqrt(np.float64(running_var[c]) + eps)


@njit(parallel=True)
def _normalize(x, y, outer, channels, inner, mean, scale, bias, code):
    if inner == 1:
        for r in prange(outer):
            row = r * channels
            for c in range(channels):
                store(y, row + c, (widen(x[row + c], code) - mean[c]) * scale[c] + bias[c], code)
    else:
        for r in prange(outer * channels):
            c = r % channels
            m, s, b = mean[c], scale[c], bias[c]
            for k in range(r * inner, (r + 1) * inner):
                store(y, k, (widen(x[k], code) - m) * s + b, code)


@njit(parallel=True)
def _input_grad(dy, x, dx, outer, channels, inner, mean, dy_coef, x_coef, offset, code):
    if inner == 1:
        for r in prange(outer):
            row = r * channels
            for c in range(channels):
                k = row + c
                value = dy_coef[c] * widen(dy[k], code) - x_coef[c] * (widen(x[k], code) - mean[c]) - offset[c]
                store(dx, k, value, code)
    else:
        for r in prange(outer * channels):
            c = r % channels
            m, a, b, o = mean[c], dy_coef[c], x_coef[c], offset[c]
            for k in range(r * inner, (r + 1) * inner):
                store(dx, k, a * widen(dy[k], code) - b * (widen(x[k], code) - m) - o, code)


def batch_norm_forward(code, x, y, outer, channels, inner, weight, bias, running_mean, running_var,
                       save_mean, save_invstd, momentum, eps, training):
    compute = np.float64 if code == CODE_FLOAT64 else np.float32
    xs, ys = _storage(x, code), _storage(y, code)
    if training:
        shift = x.reshape(-1)[np.arange(channels) * inner].astype(np.float64)  # exact for every dtype
        sum1, sum2 = _reduce(xs, xs, False, shift, outer, channels, inner, code)
        has_running = running_mean is not None
        dummy = np.empty(0, compute)
        _finalize_training(float(outer * inner), shift, sum1, sum2, float(eps), float(momentum), has_running,
                           running_mean if has_running else dummy, running_var if has_running else dummy,
                           save_mean, save_invstd)
    else:
        _finalize_eval(float(eps), running_mean, running_var, save_mean, save_invstd)
    mean = save_mean.astype(compute)
    scale = (weight.astype(compute) if weight is not None else np.ones(channels, compute)) * save_invstd.astype(compute)
    shift_out = bias.astype(compute) if bias is not None else np.zeros(channels, compute)
    _normalize(xs, ys, outer, channels, inner, mean, scale, shift_out, code)


def batch_norm_backward(code, dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias,
                        training):
    compute = np.float64 if code == CODE_FLOAT64 else np.float32
    dys, xs, dxs = _storage(dy, code), _storage(x, code), _storage(dx, code)
    count = float(outer * inner)
    mean_wide = save_mean.astype(np.float64)
    invstd = save_invstd.astype(np.float64)
    if training or dweight is not None:
        sum_dy, sum_dy_xmu = _reduce(xs, dys, True, mean_wide, outer, channels, inner, code)
    else:
        sum_dy = sum_dy_xmu = np.zeros(channels, np.float64)
    w = weight.astype(np.float64) if weight is not None else np.ones(channels, np.float64)
    dy_coef = w * invstd
    if training:
        x_coef = dy_coef * invstd * invstd * sum_dy_xmu / count
        offset = dy_coef * sum_dy / count
    else:
        x_coef = offset = np.zeros(channels, np.float64)
    if dweight is not None:
        dweight[...] = sum_dy_xmu * invstd
        dbias[...] = sum_dy
    _input_grad(dys, xs, dxs, outer, channels, inner, save_mean.astype(compute), dy_coef.astype(compute),
                x_coef.astype(compute), offset.astype(compute), code)

