"""Numba BatchNorm kernels: the same blocks, summation order and per-element formulas as
csrc/cpu/isa_batchnorm.cpp and csrc/fastopt/math/batchnorm.h, so results match the C++ backend
bit for bit. Entry points have the signatures of the extension's (csrc/bind_batchnorm.cpp).

As for the optimizer loops (optim.py), a kernel is compiled for each dtype code, layout (axis 1
or channels-last) and direction, parallel or serial, these given to Numba as constants: no
branch on them is left inside the loops, and LLVM vectorises them. One call runs a whole
forward or backward: Python between its passes would cost more than the work on small inputs.
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import ir

from .math import storage as _storage, store, widen
from .optim import runs_parallel

# csrc/cpu/batchnorm.h: fixed block sizes, so that sums do not depend on the thread count.
BN_BLOCK = 16384
ROW_BLOCK_ELEMS = 262144
CHANNEL_BLOCK = 4096
LANES = 32  # csrc/cpu/bn_reduce.h kLanes
LINE_BYTES = 64
SHORT_ROW_BYTES = 4096  # kBnShortRowBytes
PREFETCH_BYTES = 5120  # kBnPrefetchBytes
# Axis-1 layouts: channel groups fused where their slices fit in cache (see _plan).
FUSED_GROUP_BYTES = 4 << 20  # kBnFusedGroupBytes
CHANNELWISE_GROUP_BYTES = 1 << 20  # kBnChannelwiseGroupBytes: read back from L2
CONTIGUOUS_RUN_BYTES = 64 << 10  # kBnContiguousRunBytes
SWEEP_MIN_INNER = 1024  # kBnGroupMinInner
CHUNK_BYTES = 4 << 20  # of all inputs of a chunk of channels in two passes: read back from L3


# ---- per-channel and per-element maths (csrc/fastopt/math/batchnorm.h) ---------------------------

@njit(inline="always")
def _bn_invstd(var, eps):
    return 1.0 / np.sqrt(var + eps)


@njit(inline="always")
def _bn_running_update(running, batch, momentum):
    return (1.0 - momentum) * running + momentum * batch


@njit(inline="always")
def _bn_batch_stats(count, shift, sum1, sum2, eps):
    """bn_batch_stats: (mean, biased var, invstd) from sums relative to shift."""
    mean_rel = sum1 / count
    var = (sum2 - sum1 * mean_rel) / count
    if var < 0.0:  # rounding; a NaN stays NaN
        var = 0.0
    return shift + mean_rel, var, _bn_invstd(var, eps)


@njit(inline="always")
def _bn_running_var_update(running, batch_var, count, momentum):
    return _bn_running_update(running, batch_var * (np.float64(count) / (np.float64(count) - 1.0)), momentum)


@njit(inline="always")
def _bn_normalize(x, mean, scale, bias):
    return (x - mean) * scale + bias


@njit(inline="always")
def _bn_relu(v):
    return 0.0 if v < 0 else v  # a NaN stays NaN; the float64 0 is exact in every storage type


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


@intrinsic
def _prefetch(typingctx, a, index):
    """Asks for the cache line holding a[index] (llvm.prefetch: read, keep in all levels)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), cgutils.voidptr_t)
        i32 = ir.IntType(32)
        prefetch_type = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        prefetch = cgutils.get_or_insert_function(builder.module, prefetch_type, "llvm.prefetch.p0")
        builder.call(prefetch, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(a, index), codegen


@njit(inline="always")  # so that the stack space is the caller's
def _stack_lanes():
    """LANES sums on the stack: LLVM knows that no input aliases them and keeps them in registers
    (in a heap array they were loaded and stored for every LANES values)."""
    return numba.carray(_stack_float64(LANES), LANES)


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

@njit  # inlined by LLVM; inlined by Numba (inline="always"), it kept the backward sums scalar
def _accumulate(x, dy, k, center, sum1, sum2, code, with_dy, y, masked):
    """Element k into the sums. Forward: shifted sums of x; backward: sum(dy) and
    sum(dy * (x - mean)), with dy * (y > 0) for dy when masked (a ReLU's output y). Returns the
    sums."""
    v = np.float64(widen(x[np.uint64(k)], code)) - center
    if with_dy:
        g = np.float64(widen(dy[np.uint64(k)], code))
        if masked and not widen(y[np.uint64(k)], code) > 0:
            g = 0.0
        return sum1 + g, sum2 + g * v
    return sum1 + v, sum2 + v * v


# Axis-1 layouts (inner > 1). Each channel's M = outer * inner elements, in (o, i) order, are cut
# into blocks of BN_BLOCK, and blocks into segments (the part of one row of `inner` values that
# lies in the block). A segment's element j goes to lane j % LANES (the tail, after the last full
# LANES, to lane j - full). A block's two sums are its lanes' totals; a channel's sums are its
# block sums added in block order.

@njit(inline="always")
def _segment_sums(x, dy, base, length, center, lane1, lane2, code, with_dy, y, masked):
    full = length // LANES * LANES
    for k in range(base, base + full, LANES):
        for j in range(LANES):
            lane1[j], lane2[j] = _accumulate(x, dy, k + j, center, lane1[j], lane2[j], code, with_dy, y, masked)
    for j in range(length - full):
        lane1[j], lane2[j] = _accumulate(x, dy, base + full + j, center, lane1[j], lane2[j], code, with_dy, y, masked)


@njit
def _block_sums(x, dy, center, channels, inner, count, c, b, code, with_dy, y, masked):
    """The two sums of block b of channel c."""
    lane1 = _stack_lanes()
    lane2 = _stack_lanes()
    for j in range(LANES):
        lane1[j] = lane2[j] = 0.0
    m = b * BN_BLOCK
    end = min(count, m + BN_BLOCK)
    # A channel's rows are `channels * inner` values apart: rows too short for the hardware
    # prefetchers to follow are fetched about PREFETCH_BYTES (of all inputs) ahead.
    row_bytes = inner * x.itemsize * (3 if masked else 2 if with_dy else 1)
    short_rows = row_bytes < SHORT_ROW_BYTES
    rows_ahead = max(1, PREFETCH_BYTES // row_bytes)
    outer = (count + inner - 1) // inner
    while m < end:
        o = m // inner
        i = m - o * inner
        length = min(end - m, inner - i)
        base = (o * channels + c) * inner + i
        if short_rows and o + rows_ahead < outer:
            ahead = base + rows_ahead * channels * inner
            for k in range(ahead, ahead + length, LINE_BYTES // x.itemsize):
                _prefetch(x, k)
                if with_dy:
                    _prefetch(dy, k)
                if masked:
                    _prefetch(y, k)
            _prefetch(x, ahead + length - 1)
            if with_dy:
                _prefetch(dy, ahead + length - 1)
            if masked:
                _prefetch(y, ahead + length - 1)
        _segment_sums(x, dy, base, length, center, lane1, lane2, code, with_dy, y, masked)
        m += length
    return _lane_total(lane1), _lane_total(lane2)


def _make_sums(code, channels_last, with_dy, masked):
    """sums(x, dy, y, center, outer, channels, inner, c0, c1, total1, total2): the two sums (see
    _accumulate) of channels [c0, c1), into total1[c] and total2[c]."""

    def strided_sums(x, dy, y, center, outer, channels, inner, c0, c1, total1, total2):
        count = outer * inner
        num_blocks = (count + BN_BLOCK - 1) // BN_BLOCK
        width = c1 - c0
        part1 = np.empty(width * num_blocks, np.float64)
        part2 = np.empty(width * num_blocks, np.float64)
        for t in prange(width * num_blocks):
            # Block-major: consecutive tasks read neighbouring rows, long streams for the prefetchers.
            b = t // width
            c = c0 + t - b * width
            part1[(c - c0) * num_blocks + b], part2[(c - c0) * num_blocks + b] = _block_sums(
                x, dy, center[c], channels, inner, count, c, b, code, with_dy, y, masked)
        for c in range(c0, c1):
            s1 = 0.0
            s2 = 0.0
            for b in range(num_blocks):
                s1 += part1[(c - c0) * num_blocks + b]
                s2 += part2[(c - c0) * num_blocks + b]
            total1[c] = s1
            total2[c] = s2

    def row_sums(x, dy, y, center, rows, channels, inner, c0, c1, total1, total2):
        # Channels-last layouts (inner == 1). Blocks of rows (and of channels) keep one sum per
        # channel, added row by row; block sums are added in row-block order.
        rows_per_block = max(1, ROW_BLOCK_ELEMS // channels)
        row_blocks = (rows + rows_per_block - 1) // rows_per_block
        channel_blocks = (c1 - c0 + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
        part1 = np.empty(row_blocks * channels, np.float64)
        part2 = np.empty(row_blocks * channels, np.float64)
        for t in prange(row_blocks * channel_blocks):
            rb = t // channel_blocks
            b0 = c0 + (t - rb * channel_blocks) * CHANNEL_BLOCK
            b1 = min(c1, b0 + CHANNEL_BLOCK)
            r0 = rb * rows_per_block
            r1 = min(rows, r0 + rows_per_block)
            for c in range(b0, b1):
                q = np.uint64(rb * channels + c)
                part1[q], part2[q] = 0.0, 0.0
            # Four rows per visit of the sums: the same additions in the same order, with a
            # quarter of their loads and stores.
            for r in range(r0, r1 - 3, 4):
                k = r * channels
                for c in range(b0, b1):
                    q = np.uint64(rb * channels + c)
                    cen = center[np.uint64(c)]
                    a, b = _accumulate(x, dy, k + c, cen, part1[q], part2[q], code, with_dy, y, masked)
                    a, b = _accumulate(x, dy, k + channels + c, cen, a, b, code, with_dy, y, masked)
                    a, b = _accumulate(x, dy, k + 2 * channels + c, cen, a, b, code, with_dy, y, masked)
                    part1[q], part2[q] = _accumulate(x, dy, k + 3 * channels + c, cen, a, b, code, with_dy, y, masked)
            for r in range(r1 - (r1 - r0) % 4, r1):
                for c in range(b0, b1):
                    q = np.uint64(rb * channels + c)
                    part1[q], part2[q] = _accumulate(x, dy, r * channels + c, center[np.uint64(c)], part1[q],
                                                     part2[q], code, with_dy, y, masked)
        for c in range(c0, c1):
            total1[c] = 0.0
            total2[c] = 0.0
        for rb in range(row_blocks):
            for c in range(c0, c1):
                total1[c] += part1[rb * channels + c]
                total2[c] += part2[rb * channels + c]

    return row_sums if channels_last else strided_sums


@njit
def _channel_sums(x, dy, center, channels, inner, count, c, code, with_dy, y, masked):
    """One channel's sums on the calling thread: its block sums added in block order."""
    s1 = 0.0
    s2 = 0.0
    for b in range((count + BN_BLOCK - 1) // BN_BLOCK):
        p1, p2 = _block_sums(x, dy, center, channels, inner, count, c, b, code, with_dy, y, masked)
        s1 += p1
        s2 += p2
    return s1, s2


@njit
def _finalize_training(c, count, shift, sum1, sum2, momentum, eps, running_mean, running_var, save_mean,
                       save_invstd):
    """Channel c's statistics and running statistics from its shifted sums."""
    batch_mean, var, invstd = _bn_batch_stats(np.float64(count), shift[c], sum1[c], sum2[c], eps)
    save_mean[c] = batch_mean
    save_invstd[c] = invstd
    if running_mean.size != 0:
        running_mean[c] = _bn_running_update(np.float64(running_mean[c]), batch_mean, momentum)
        running_var[c] = _bn_running_var_update(np.float64(running_var[c]), var, count, momentum)


@njit
def _normalize_constants(c, weight, bias, save_invstd, scale, shift_out):
    """y = (x - mean) * scale + shift_out, in the compute type."""
    scale[c] = weight[c] * save_invstd[c] if weight.size != 0 else save_invstd[c]
    shift_out[c] = bias[c] if bias.size != 0 else 0.0


@njit
def _grad_coefs(c, count, training, weight, save_invstd, sum_dy, sum_dy_xmu, dy_coef, x_coef, offset, dweight,
                dbias):
    """bn_grad_coefs: dx's coefficients in float64, rounded to the compute type; dweight, dbias."""
    invstd = np.float64(save_invstd[c])
    a = (np.float64(weight[c]) if weight.size != 0 else 1.0) * invstd
    dy_coef[c] = a
    x_coef[c] = a * invstd * invstd * sum_dy_xmu[c] / count if training else 0.0
    offset[c] = a * sum_dy[c] / count if training else 0.0
    if dweight.size != 0:
        dweight[c] = sum_dy_xmu[c] * invstd
        dbias[c] = sum_dy[c]


# Element loops over one run of a channel's values (axis-1 layouts).

@njit
def _normalize_at(x, y, k, mean, scale, bias, code, z, res, relu):
    """y[k] = bn(x[k]) (+ z[k]) (ReLU), in the compute type, rounded once."""
    v = _bn_normalize(widen(x[k], code), mean, scale, bias)
    if res:
        v = v + widen(z[k], code)
    if relu:
        store(y, k, _bn_relu(v), code)
    else:
        store(y, k, v, code)


@njit
def _normalize_run(x, y, start, stop, mean, scale, bias, code, z, res, relu):
    for j in range(start, stop):
        _normalize_at(x, y, np.uint64(j), mean, scale, bias, code, z, res, relu)


@njit(inline="always")
def _input_grad_at(dy, x, dx, k, mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres, zero):
    """dx[k]; dres[k] = the dy used (dy * (y > 0) when masked). zero: 0 in the compute type, so
    that the arithmetic stays in it."""
    g = widen(dy[k], code)
    if masked and not widen(y[k], code) > 0:
        g = zero
    if with_dres:
        store(dres, k, g, code)
    store(dx, k, _bn_input_grad(g, widen(x[k], code), mean, dy_coef, x_coef, offset), code)


@njit
def _input_grad_run(dy, x, dx, start, stop, mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres, zero):
    for j in range(start, stop):
        _input_grad_at(dy, x, dx, np.uint64(j), mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres,
                       zero)


# Axis-1 layouts make their two passes (sums, then the write) a chunk of channels at a time, so
# that the write reads the chunk back from cache; or, fused (groups > 0), each thread reduces and
# writes whole groups of channels in turn, the second read from its own L2 (see _plan).

@njit
def _write_task(t, c0, c1, outer, groups):
    """Channels [g0, g1) and rows [o0, o1) of write task t over channels [c0, c1): fused, group t
    and all its rows (reduced first); in two passes, one row of one channel."""
    if groups > 0:
        return c0 + t * (c1 - c0) // groups, c0 + (t + 1) * (c1 - c0) // groups, 0, outer
    o = t // (c1 - c0)
    c = c0 + t - o * (c1 - c0)
    return c, c + 1, o, o + 1


def _make_forward(code, channels_last, sums, res, relu):
    def forward(x, y, outer, channels, inner, weight, bias, running_mean, running_var, save_mean, save_invstd,
                momentum, eps, training, groups, chunk, z):
        """Absent weight, bias and running statistics come as empty arrays, z (the residual) as x
        when not res. groups, chunk: see _plan."""
        count = outer * inner
        shift = np.empty(channels, np.float64)
        sum1 = np.empty(channels, np.float64)
        sum2 = np.empty(channels, np.float64)
        scale = np.empty_like(save_invstd)
        shift_out = np.empty_like(save_invstd)
        if training:
            for c in range(channels):
                shift[c] = np.float64(widen(x[c * inner], code))  # exact for every dtype
        else:
            for c in range(channels):
                save_mean[c] = running_mean[c]
                save_invstd[c] = _bn_invstd(np.float64(running_var[c]), eps)
        fused = training and groups > 0
        for c0 in range(0, channels, chunk):
            c1 = min(channels, c0 + chunk)
            if not fused:
                if training:
                    sums(x, x, x, shift, outer, channels, inner, c0, c1, sum1, sum2)
                for c in range(c0, c1):
                    if training:
                        _finalize_training(c, count, shift, sum1, sum2, momentum, eps, running_mean, running_var,
                                           save_mean, save_invstd)
                    _normalize_constants(c, weight, bias, save_invstd, scale, shift_out)
            if channels_last:
                for r in prange(outer):
                    for c in range(channels):
                        k = np.uint64(r * channels + c)
                        _normalize_at(x, y, k, save_mean[c], scale[c], shift_out[c], code, z, res, relu)
            else:
                tasks = groups if fused else outer * (c1 - c0)
                for t in prange(tasks):
                    g0, g1, o0, o1 = _write_task(t, c0, c1, outer, groups if fused else 0)
                    if fused:
                        for c in range(g0, g1):
                            sum1[c], sum2[c] = _channel_sums(x, x, shift[c], channels, inner, count, c, code, False,
                                                             x, False)
                            _finalize_training(c, count, shift, sum1, sum2, momentum, eps, running_mean, running_var,
                                               save_mean, save_invstd)
                            _normalize_constants(c, weight, bias, save_invstd, scale, shift_out)
                    for o in range(o0, o1):
                        for c in range(g0, g1):
                            k = (o * channels + c) * inner
                            _normalize_run(x, y, k, k + inner, save_mean[c], scale[c], shift_out[c], code, z, res,
                                           relu)

    return forward


def _make_backward(code, channels_last, sums, masked, with_dres):
    def backward(dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias, training, groups,
                 chunk, y, dres):
        """An absent weight (and then dweight, dbias) comes as an empty array; y (a ReLU's output)
        and dres as dy when not masked, not with_dres. groups, chunk: see _plan."""
        count = outer * inner
        zero = np.zeros_like(save_mean[:1])[0]
        needs_sums = training or dweight.size != 0
        mean_wide = np.empty(channels, np.float64)
        for c in range(channels):
            mean_wide[c] = save_mean[c]
        sum_dy = np.empty(channels, np.float64)  # read only where computed (training or dweight)
        sum_dy_xmu = np.empty(channels, np.float64)
        dy_coef = np.empty_like(save_mean)  # dx's coefficients, in the compute type
        x_coef = np.empty_like(save_mean)
        offset = np.empty_like(save_mean)
        fused = needs_sums and groups > 0
        for c0 in range(0, channels, chunk):
            c1 = min(channels, c0 + chunk)
            if not fused:
                if needs_sums:
                    sums(x, dy, y, mean_wide, outer, channels, inner, c0, c1, sum_dy, sum_dy_xmu)
                for c in range(c0, c1):
                    _grad_coefs(c, count, training, weight, save_invstd, sum_dy, sum_dy_xmu, dy_coef, x_coef, offset,
                                dweight, dbias)
            if channels_last:
                for r in prange(outer):
                    for c in range(channels):
                        k = np.uint64(r * channels + c)
                        _input_grad_at(dy, x, dx, k, save_mean[c], dy_coef[c], x_coef[c], offset[c], code, y,
                                       masked, dres, with_dres, zero)
            else:
                tasks = groups if fused else outer * (c1 - c0)
                for t in prange(tasks):
                    g0, g1, o0, o1 = _write_task(t, c0, c1, outer, groups if fused else 0)
                    if fused:
                        for c in range(g0, g1):
                            sum_dy[c], sum_dy_xmu[c] = _channel_sums(x, dy, mean_wide[c], channels, inner, count, c,
                                                                     code, True, y, masked)
                            _grad_coefs(c, count, training, weight, save_invstd, sum_dy, sum_dy_xmu, dy_coef, x_coef,
                                        offset, dweight, dbias)
                    for o in range(o0, o1):
                        for c in range(g0, g1):
                            k = (o * channels + c) * inner
                            _input_grad_run(dy, x, dx, k, k + inner, save_mean[c], dy_coef[c], x_coef[c], offset[c],
                                            code, y, masked, dres, with_dres, zero)

    return backward


_KERNELS = {}


def _kernel(backward, code, channels_last, parallel, options=(False, False)):
    """The forward or backward of (code, layout), parallel or serial, compiled on first use.
    options: (residual, relu) of a forward, (masked by a ReLU's output, dresidual) of a backward."""
    key = (backward, code, channels_last, parallel, options)
    kernel = _KERNELS.get(key)
    if kernel is None:
        jit = njit(parallel=parallel, error_model="numpy")
        sums = jit(_make_sums(code, channels_last, backward, backward and options[0]))
        make = _make_backward if backward else _make_forward
        kernel = _KERNELS[key] = jit(make(code, channels_last, sums, *options))
    return kernel


# Absent optional arrays are passed empty, of the compute type: one compiled kernel serves every
# combination.
_EMPTY = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def _or(a, empty):
    return empty if a is None else a


def _plan(outer, channels, inner, itemsize, inputs, parallel, needs_sums):
    """(groups, chunk) for a kernel over `inputs` arrays of `itemsize`-byte values. groups > 0:
    the two passes fused in that many groups of channels, as csrc/cpu/batchnorm.h fused_groups
    for groups summed channel by channel; otherwise two passes in chunks of `chunk` channels (all
    of them for channels-last layouts and for passes without sums)."""
    slice_bytes = outer * inner * itemsize * inputs
    if inner == 1 or not needs_sums:
        return 0, channels
    nthreads = numba.get_num_threads() if parallel else 1
    # Long rows of 4- and 8-byte values (which C++ sweeps group by group) do as well in chunks;
    # fewer channels than twice the threads would leave threads idle in groups.
    if (inner >= SWEEP_MIN_INNER and itemsize >= 4) or slice_bytes > FUSED_GROUP_BYTES or (
            nthreads > 1 and channels < 2 * nthreads):
        return 0, max(1, CHUNK_BYTES // slice_bytes)
    fit = CHANNELWISE_GROUP_BYTES // slice_bytes
    long_run = -(-CONTIGUOUS_RUN_BYTES // (inner * itemsize * inputs))
    size = max(1, min(fit, long_run, -(-channels // nthreads)))
    count = -(-channels // size)
    return min(channels, -(-count // nthreads) * nthreads), channels  # a multiple of the threads


def batch_norm_forward(code, x, y, outer, channels, inner, weight, bias, running_mean, running_var,
                       save_mean, save_invstd, momentum, eps, training, residual=None, relu=False):
    parallel = runs_parallel(x.size)
    kernel = _kernel(False, code, inner == 1, parallel, (residual is not None, bool(relu)))
    empty = _EMPTY[save_mean.dtype]
    groups, chunk = _plan(outer, channels, inner, x.itemsize, 1, parallel, training)
    kernel(_storage(x, code), _storage(y, code), outer, channels, inner, _or(weight, empty), _or(bias, empty),
           _or(running_mean, empty), _or(running_var, empty), save_mean, save_invstd, float(momentum), float(eps),
           bool(training), groups, chunk, _storage(x if residual is None else residual, code))


def batch_norm_backward(code, dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias,
                        training, y=None, dresidual=None):
    parallel = runs_parallel(x.size)
    kernel = _kernel(True, code, inner == 1, parallel, (y is not None, dresidual is not None))
    empty = _EMPTY[save_mean.dtype]
    inputs = 2 if y is None else 3  # as the C++ plan: y is read in both passes
    groups, chunk = _plan(outer, channels, inner, x.itemsize, inputs, parallel, training or dweight is not None)
    kernel(_storage(dy, code), _storage(x, code), _storage(dx, code), outer, channels, inner, _or(weight, empty),
           save_mean, save_invstd, _or(dweight, empty), _or(dbias, empty), bool(training), groups, chunk,
           _storage(dy if y is None else y, code), _storage(dx if dresidual is None else dresidual, code))
