"""BatchNorm's per-channel sums for the Numba backend: the blocks, lanes and order of
csrc/cpu/bn_reduce.h, so that the sums (and so the results) match the C++ backend bit for bit."""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import ir

from .bn_constants import BN_BLOCK, CHANNEL_BLOCK, LANES, LINE_BYTES, PREFETCH_BYTES, ROW_BLOCK_ELEMS, SHORT_ROW_BYTES
from .math import relu_passed, widen


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
        if masked and not relu_passed(y, np.uint64(k), code):
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


def make_sums(code, channels_last, with_dy, masked):
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
def channel_sums(x, dy, center, channels, inner, count, c, code, with_dy, y, masked):
    """One channel's sums on the calling thread: its block sums added in block order."""
    s1 = 0.0
    s2 = 0.0
    for b in range((count + BN_BLOCK - 1) // BN_BLOCK):
        p1, p2 = _block_sums(x, dy, center, channels, inner, count, c, b, code, with_dy, y, masked)
        s1 += p1
        s2 += p2
    return s1, s2
