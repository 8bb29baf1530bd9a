"""Numba BatchNorm kernels: the same blocks, summation order and per-element formulas as
csrc/cpu/isa_batchnorm.cpp and csrc/fastopt/math/batchnorm.h, so results match the C++ backend
bit for bit. Entry points have the signatures of the extension's (csrc/bind_batchnorm.cpp).

As for the optimizer loops (optim.py), each kernel is compiled per dtype code, layout (axis 1 or
channels-last) and parallel or serial, given to Numba as constants, so that no branch on them is
left inside the loops and LLVM vectorises them. One call runs a whole forward or backward: the
per-channel work in between is a few microseconds of Python, and more than the work on small
inputs."""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._dtypes import UINT16, is_half
from .math import store, widen
from .optim import runs_parallel

# csrc/cpu/batchnorm.h: fixed block sizes, so that sums do not depend on the thread count.
BN_BLOCK = 16384
ROW_BLOCK_ELEMS = 262144
CHANNEL_BLOCK = 4096
LANES = 32  # csrc/cpu/isa_batchnorm.cpp kLanes


def _storage(a, code):
    return a.reshape(-1).view(UINT16) if is_half(code) else a.reshape(-1)


# ---- per-channel and per-element maths (csrc/fastopt/math/batchnorm.h) ---------------------------

@njit(inline="always")
def _bn_invstd(var, eps):
    return 1.0 / np.sqrt(var + eps)


@njit(inline="always")
def _bn_running_update(running, batch, momentum):
    return (1.0 - momentum) * running + momentum * batch


@njit(inline="always")
def _bn_normalize(x, mean, scale, bias):
    return (x - mean) * scale + bias


@njit(inline="always")
def _bn_input_grad(dy, x, mean, dy_coef, x_coef, offset):
    return dy_coef * dy - x_coef * (x - mean) - offset


# ---- lane sums ------------------------------------------------------------------------------------

@intrinsic
def _stack_float64(typingctx, count):
    """A pointer to `count` (a constant) float64 on the stack."""
    if not isinstance(count, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float64), size=count.literal_value)

    return types.CPointer(types.float64)(count), codegen


@njit(inline="always")
def _zeroed_lanes():
    """LANES zeroed sums on the stack: LLVM knows that no input aliases them and keeps them in
    registers (in a heap array they were loaded and stored for every LANES values)."""
    lane = numba.carray(_stack_float64(LANES), LANES)
    for j in range(LANES):
        lane[j] = 0.0
    return lane


@njit(inline="always")
def _lane_total(lane):
    width = LANES // 2
    while width >= 1:
        for j in range(width):
            lane[j] += lane[j + width]
        width //= 2
    return lane[0]


# The hot loops index the flat arrays with np.uint64: NumPy's wraparound test of a signed index
# (negative counts from the end) turned loads into gathers or kept LLVM from vectorising at all.

@njit  # inlined by LLVM; inlined by Numba (inline="always"), the backward sums stayed scalar
def _accumulate(x, dy, k, center, sum1, sum2, code, with_dy):
    """Element k into the sums. Forward: shifted sums of x; backward: sum(dy) and
    sum(dy * (x - mean)). Returns the sums."""
    v = np.float64(widen(x[np.uint64(k)], code)) - center
    if with_dy:
        g = np.float64(widen(dy[np.uint64(k)], code))
        return sum1 + g, sum2 + g * v
    return sum1 + v, sum2 + v * v


@njit(inline="always")
def _block_sums(x, dy, center, channels, inner, count, c, b, code, with_dy):
    """The sums of block b of channel c (axis-1 layouts): a segment's element j goes to lane
    j % LANES, the tail after the last full LANES to lane j - full; lanes add in a fixed tree."""
    lane1 = _zeroed_lanes()
    lane2 = _zeroed_lanes()
    m = b * BN_BLOCK
    end = min(count, m + BN_BLOCK)
    while m < end:
        o = m // inner
        i = m - o * inner
        length = min(end - m, inner - i)
        base = (o * channels + c) * inner + i
        full = length // LANES * LANES
        for k in range(base, base + full, LANES):
            for j in range(LANES):
                lane1[j], lane2[j] = _accumulate(x, dy, k + j, center, lane1[j], lane2[j], code, with_dy)
        for j in range(length - full):
            k = base + full + j
            lane1[j], lane2[j] = _accumulate(x, dy, k, center, lane1[j], lane2[j], code, with_dy)
        m += length
    return _lane_total(lane1), _lane_total(lane2)


def _make_sums(code, channels_last, with_dy):
    """total1, total2 = the two sums of every channel (see _accumulate)."""

    def strided_sums(x, dy, center, outer, channels, inner, total1, total2):
        count = outer * inner
        num_blocks = (count + BN_BLOCK - 1) // BN_BLOCK
        part1 = np.empty(channels * num_blocks, np.float64)
        part2 = np.empty(channels * num_blocks, np.float64)
        for t in prange(channels * num_blocks):
            # Block-major: consecutive tasks read neighbouring rows, long streams for the prefetchers.
            b = t // channels
            c = t - b * channels
            part1[c * num_blocks + b], part2[c * num_blocks + b] = _block_sums(
                x, dy, center[c], channels, inner, count, c, b, code, with_dy)
        for c in range(channels):
            s1 = 0.0
            s2 = 0.0
            for b in range(num_blocks):
                s1 += part1[c * num_blocks + b]
                s2 += part2[c * num_blocks + b]
            total1[c] = s1
            total2[c] = s2

    def row_sums(x, dy, center, rows, channels, inner, total1, total2):
        # Blocks of rows (and of channels) keep one sum per channel, added row by row; block sums
        # are added in row-block order.
        rows_per_block = max(1, ROW_BLOCK_ELEMS // channels)
        row_blocks = (rows + rows_per_block - 1) // rows_per_block
        channel_blocks = (channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
        part1 = np.empty(row_blocks * channels, np.float64)
        part2 = np.empty(row_blocks * channels, np.float64)
        for t in prange(row_blocks * channel_blocks):
            rb = t // channel_blocks
            c0 = (t - rb * channel_blocks) * CHANNEL_BLOCK
            c1 = min(channels, c0 + CHANNEL_BLOCK)
            r0 = rb * rows_per_block
            r1 = min(rows, r0 + rows_per_block)
            for c in range(c0, c1):
                q = np.uint64(rb * channels + c)
                part1[q], part2[q] = 0.0, 0.0
            # Four rows per visit of the sums: the same additions in the same order, with a
            # quarter of their loads and stores.
            for r in range(r0, r1 - 3, 4):
                k = r * channels
                for c in range(c0, c1):
                    q = np.uint64(rb * channels + c)
                    cen = center[np.uint64(c)]
                    a, b = _accumulate(x, dy, k + c, cen, part1[q], part2[q], code, with_dy)
                    a, b = _accumulate(x, dy, k + channels + c, cen, a, b, code, with_dy)
                    a, b = _accumulate(x, dy, k + 2 * channels + c, cen, a, b, code, with_dy)
                    part1[q], part2[q] = _accumulate(x, dy, k + 3 * channels + c, cen, a, b, code, with_dy)
            for r in range(r1 - (r1 - r0) % 4, r1):
                for c in range(c0, c1):
                    q = np.uint64(rb * channels + c)
                    part1[q], part2[q] = _accumulate(x, dy, r * channels + c, center[np.uint64(c)], part1[q],
                                                     part2[q], code, with_dy)
        for c in range(channels):
            total1[c] = 0.0
            total2[c] = 0.0
        for rb in range(row_blocks):
            for c in range(channels):
                total1[c] += part1[rb * channels + c]
                total2[c] += part2[rb * channels + c]

    return row_sums if channels_last else strided_sums


def _make_forward(code, channels_last, sums):
    def forward(x, y, outer, channels, inner, weight, bias, running_mean, running_var, save_mean, save_invstd,
                momentum, eps, training):
        """Absent weight, bias and running statistics come as empty arrays."""
        count = outer * inner
        if training:
            shift = np.empty(channels, np.float64)
            for c in range(channels):
                shift[c] = np.float64(widen(x[c * inner], code))  # exact for every dtype
            sum1 = np.empty(channels, np.float64)
            sum2 = np.empty(channels, np.float64)
            sums(x, x, shift, outer, channels, inner, sum1, sum2)
            for c in range(channels):
                mean_rel = sum1[c] / count
                var = (sum2[c] - sum1[c] * mean_rel) / count
                if var < 0.0:  # rounding; a NaN stays NaN
                    var = 0.0
                batch_mean = shift[c] + mean_rel
                save_mean[c] = batch_mean
                save_invstd[c] = _bn_invstd(var, eps)
                if running_mean.size != 0:
                    running_mean[c] = _bn_running_update(np.float64(running_mean[c]), batch_mean, momentum)
                    unbiased = var * (np.float64(count) / np.float64(count - 1))
                    running_var[c] = _bn_running_update(np.float64(running_var[c]), unbiased, momentum)
        else:
            for c in range(channels):
                save_mean[c] = running_mean[c]
                save_invstd[c] = _bn_invstd(np.float64(running_var[c]), eps)
        scale = np.empty_like(save_invstd)  # the normalization's constants, in the compute type
        shift_out = np.empty_like(save_invstd)
        for c in range(channels):
            scale[c] = weight[c] * save_invstd[c] if weight.size != 0 else save_invstd[c]
            shift_out[c] = bias[c] if bias.size != 0 else 0.0
        if channels_last:
            for r in prange(outer):
                for c in range(channels):
                    k = np.uint64(r * channels + c)
                    store(y, k, _bn_normalize(widen(x[k], code), save_mean[c], scale[c], shift_out[c]), code)
        else:
            for r in prange(outer * channels):
                c = r % channels
                m, s, b = save_mean[c], scale[c], shift_out[c]
                for j in range(r * inner, (r + 1) * inner):
                    k = np.uint64(j)
                    store(y, k, _bn_normalize(widen(x[k], code), m, s, b), code)

    return forward


def _make_backward(code, channels_last, sums):
    def backward(dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias, training):
        """An absent weight (and then dweight, dbias) comes as an empty array."""
        count = np.float64(outer * inner)
        sum_dy = np.empty(channels, np.float64)  # read only where computed (training or dweight)
        sum_dy_xmu = np.empty(channels, np.float64)
        dy_coef = np.empty_like(save_mean)  # dx's constants, in the compute type
        x_coef = np.empty_like(save_mean)
        offset = np.empty_like(save_mean)
        if training or dweight.size != 0:
            mean_wide = np.empty(channels, np.float64)
            for c in range(channels):
                mean_wide[c] = save_mean[c]
            sums(x, dy, mean_wide, outer, channels, inner, sum_dy, sum_dy_xmu)
        for c in range(channels):  # bn_grad_coefs, in float64, rounded to the compute type
            invstd = np.float64(save_invstd[c])
            a = (np.float64(weight[c]) if weight.size != 0 else 1.0) * invstd
            dy_coef[c] = a
            x_coef[c] = a * invstd * invstd * sum_dy_xmu[c] / count if training else 0.0
            offset[c] = a * sum_dy[c] / count if training else 0.0
            if dweight.size != 0:
                dweight[c] = sum_dy_xmu[c] * invstd
                dbias[c] = sum_dy[c]
        if channels_last:
            for r in prange(outer):
                for c in range(channels):
                    k = np.uint64(r * channels + c)
                    value = _bn_input_grad(widen(dy[k], code), widen(x[k], code), save_mean[c], dy_coef[c], x_coef[c],
                                           offset[c])
                    store(dx, k, value, code)
        else:
            for r in prange(outer * channels):
                c = r % channels
                m, a, b, o = save_mean[c], dy_coef[c], x_coef[c], offset[c]
                for j in range(r * inner, (r + 1) * inner):
                    k = np.uint64(j)
                    store(dx, k, _bn_input_grad(widen(dy[k], code), widen(x[k], code), m, a, b, o), code)

    return backward


_KERNELS = {}


def _kernel(backward, code, channels_last, parallel):
    """The forward or backward of (code, layout), parallel or serial, compiled on first use."""
    key = (backward, code, channels_last, parallel)
    kernel = _KERNELS.get(key)
    if kernel is None:
        jit = njit(parallel=parallel, error_model="numpy")
        sums = jit(_make_sums(code, channels_last, backward))
        make = _make_backward if backward else _make_forward
        kernel = _KERNELS[key] = jit(make(code, channels_last, sums))
    return kernel


# Absent optional arrays are passed empty, of the compute type: one compiled kernel serves every
# combination.
_EMPTY = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def _or(a, empty):
    return empty if a is None else a


def batch_norm_forward(code, x, y, outer, channels, inner, weight, bias, running_mean, running_var,
                       save_mean, save_invstd, momentum, eps, training):
    kernel = _kernel(False, code, inner == 1, runs_parallel(x.size))
    empty = _EMPTY[save_mean.dtype]
    kernel(_storage(x, code), _storage(y, code), outer, channels, inner, _or(weight, empty), _or(bias, empty),
           _or(running_mean, empty), _or(running_var, empty), save_mean, save_invstd, float(momentum), float(eps),
           bool(training))


def batch_norm_backward(code, dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias,
                        training):
    kernel = _kernel(True, code, inner == 1, runs_parallel(x.size))
    empty = _EMPTY[save_mean.dtype]
    kernel(_storage(dy, code), _storage(x, code), _storage(dx, code), outer, channels, inner, _or(weight, empty),
           save_mean, save_invstd, _or(dweight, empty), _or(dbias, empty), bool(training))
