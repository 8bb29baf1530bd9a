"""Numba BatchNorm kernels: the same blocks, summation order and per-element formulas as the C++
backend (csrc/cpu/isa_batchnorm.cpp, csrc/fastopt/math/batchnorm.h), so results match it bit for
bit. Entry points have the signatures of the extension's (csrc/bind_batchnorm.cpp).

As in C++, the forward and the backward are one driver (_make_kernel) over a pass: its reduction,
its per-channel constants and its element-wise output. A kernel is compiled for each dtype code,
layout (channels-first or channels-last), pass and its options, parallel or serial, these given to
Numba as constants: no branch on them is left inside the loops, and LLVM vectorises them. One call
runs a whole forward or backward: Python between its passes would cost more than the work on
small inputs.
"""
import numba
import numpy as np
from numba import njit, prange

from .bn_constants import (CHANNELWISE_GROUP_BYTES, CHUNK_BYTES, CONTIGUOUS_RUN_BYTES, FUSED_GROUP_BYTES,
                           SWEEP_MIN_INNER)
from .bn_sums import channel_sums, make_sums
from .math import relu_passed, storage as _storage, store, widen
from .optim import runs_parallel


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


# The outputs: one element, or a run of one channel's values (channels-first layouts).

@njit
def _normalize_at(x, y, k, mean, scale, bias, code, z, res, relu, mask, with_mask):
    """y[k] = bn(x[k]) (+ z[k]) (ReLU), in the compute type, rounded once; mask[k] = whether the
    stored y[k] is > 0 when with_mask."""
    v = _bn_normalize(widen(x[k], code), mean, scale, bias)
    if res:
        v = v + widen(z[k], code)
    if relu:
        store(y, k, _bn_relu(v), code)
        if with_mask:
            mask[k] = 1 if relu_passed(y, k, code) else 0
    else:
        store(y, k, v, code)


@njit
def _normalize_run(x, y, start, stop, mean, scale, bias, code, z, res, relu, mask, with_mask):
    for j in range(start, stop):
        _normalize_at(x, y, np.uint64(j), mean, scale, bias, code, z, res, relu, mask, with_mask)


@njit(inline="always")
def _input_grad_at(dy, x, dx, k, mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres, zero):
    """dx[k]; dres[k] = the dy used (dy * (y > 0) when masked). zero: 0 in the compute type, so
    that the arithmetic stays in it."""
    g = widen(dy[k], code)
    if masked and not relu_passed(y, k, code):
        g = zero
    if with_dres:
        store(dres, k, g, code)
    store(dx, k, _bn_input_grad(g, widen(x[k], code), mean, dy_coef, x_coef, offset), code)


@njit
def _input_grad_run(dy, x, dx, start, stop, mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres, zero):
    for j in range(start, stop):
        _input_grad_at(dy, x, dx, np.uint64(j), mean, dy_coef, x_coef, offset, code, y, masked, dres, with_dres,
                       zero)


@njit
def _write_task(t, c0, c1, outer, groups):
    """Channels [g0, g1) and rows [o0, o1) of write task t over channels [c0, c1): fused, group t
    and all its rows (reduced first); in two passes, one row of one channel."""
    if groups > 0:
        return c0 + t * (c1 - c0) // groups, c0 + (t + 1) * (c1 - c0) // groups, 0, outer
    o = t // (c1 - c0)
    c = c0 + t - o * (c1 - c0)
    return c, c + 1, o, o + 1


# ---- the driver ---------------------------------------------------------------------------------
# Channels-first layouts make their two passes (sums, then the write) a chunk of channels at a
# time, so that the write reads the chunk back from cache; or, fused (groups > 0), each thread
# reduces and writes whole groups of channels in turn, the second read from its own L2 (see _plan).
# Channels-last layouts reduce all channels, then write row by row.

def _make_kernel(channels_last, sums, code, with_dy, masked, p):
    """kernel(arrays, k, outer, channels, inner, needs_sums, groups, chunk) for the pass p, whose
    jitted functions take the pass's arrays (a tuple) and scalars k: p.start(arrays, k, channels,
    inner, needs_sums) -> state, (center, sum1, sum2, ...) and the pass's own per-channel arrays;
    p.reads(arrays) -> (x, dy, y), what the sums read; p.channel(c, count, arrays, k, state): the
    constants of channel c from sum1[c], sum2[c]; p.element(i, c, arrays, state) and
    p.run(start, stop, c, arrays, state): the output at element i, over [start, stop) of channel c."""
    start, reads, channel, element, run = p

    def kernel(arrays, k, outer, channels, inner, needs_sums, groups, chunk):
        count = outer * inner
        state = start(arrays, k, channels, inner, needs_sums)
        center, sum1, sum2 = state[0], state[1], state[2]
        x, dy, y = reads(arrays)
        fused = needs_sums and groups > 0
        for c0 in range(0, channels, chunk):
            c1 = min(channels, c0 + chunk)
            if not fused:
                if needs_sums:
                    sums(x, dy, y, center, outer, channels, inner, c0, c1, sum1, sum2)
                for c in range(c0, c1):
                    channel(c, count, arrays, k, state)
            if channels_last:
                for r in prange(outer):
                    for c in range(channels):
                        element(np.uint64(r * channels + c), c, arrays, state)
            else:
                tasks = groups if fused else outer * (c1 - c0)
                for t in prange(tasks):
                    g0, g1, o0, o1 = _write_task(t, c0, c1, outer, groups if fused else 0)
                    if fused:
                        for c in range(g0, g1):
                            sum1[c], sum2[c] = channel_sums(x, dy, center[c], channels, inner, count, c, code,
                                                            with_dy, y, masked)
                            channel(c, count, arrays, k, state)
                    for o in range(o0, o1):
                        for c in range(g0, g1):
                            i = (o * channels + c) * inner
                            run(i, i + inner, c, arrays, state)

    return kernel


# ---- the two passes -----------------------------------------------------------------------------

def _forward_pass(code, res, relu, with_mask):
    """arrays: (x, y, weight, bias, running_mean, running_var, save_mean, save_invstd, z, mask);
    absent weight, bias and running statistics are empty, z (the residual) is x when not res, mask
    (the ReLU's, uint8) is empty when not with_mask. k: (momentum, eps, training)."""

    def start(arrays, k, channels, inner, training):
        x, running_mean, running_var, save_mean, save_invstd = arrays[0], arrays[4], arrays[5], arrays[6], arrays[7]
        shift = np.empty(channels, np.float64)
        if training:
            for c in range(channels):
                shift[c] = np.float64(widen(x[c * inner], code))  # exact for every dtype
        else:
            for c in range(channels):
                save_mean[c] = running_mean[c]
                save_invstd[c] = _bn_invstd(np.float64(running_var[c]), k[1])
        return (shift, np.empty(channels, np.float64), np.empty(channels, np.float64), np.empty_like(save_invstd),
                np.empty_like(save_invstd))

    def reads(arrays):
        return arrays[0], arrays[0], arrays[0]

    def channel(c, count, arrays, k, state):
        if k[2]:
            _finalize_training(c, count, state[0], state[1], state[2], k[0], k[1], arrays[4], arrays[5], arrays[6],
                               arrays[7])
        _normalize_constants(c, arrays[2], arrays[3], arrays[7], state[3], state[4])

    def element(i, c, arrays, state):
        _normalize_at(arrays[0], arrays[1], i, arrays[6][c], state[3][c], state[4][c], code, arrays[8], res, relu,
                      arrays[9], with_mask)

    def run(start, stop, c, arrays, state):
        _normalize_run(arrays[0], arrays[1], start, stop, arrays[6][c], state[3][c], state[4][c], code, arrays[8],
                       res, relu, arrays[9], with_mask)

    return start, reads, channel, element, run


def _backward_pass(code, masked, with_dres):
    """arrays: (dy, x, dx, weight, save_mean, save_invstd, dweight, dbias, y, dres); an absent
    weight (and then dweight, dbias) is empty; y (a ReLU's output, or its uint8 mask) and dres are
    dy when not masked, not with_dres. k: (training,)."""

    def start(arrays, k, channels, inner, needs_sums):
        save_mean = arrays[4]
        mean_wide = np.empty(channels, np.float64)
        for c in range(channels):
            mean_wide[c] = save_mean[c]
        # sum(dy), sum(dy * (x - mean)): read only where computed (training or dweight); dx's
        # coefficients in the compute type; zero: 0 in the compute type.
        return (mean_wide, np.empty(channels, np.float64), np.empty(channels, np.float64), np.empty_like(save_mean),
                np.empty_like(save_mean), np.empty_like(save_mean), np.zeros_like(save_mean[:1])[0])

    def reads(arrays):
        return arrays[1], arrays[0], arrays[8]

    def channel(c, count, arrays, k, state):
        _grad_coefs(c, count, k[0], arrays[3], arrays[5], state[1], state[2], state[3], state[4], state[5],
                    arrays[6], arrays[7])

    def element(i, c, arrays, state):
        _input_grad_at(arrays[0], arrays[1], arrays[2], i, arrays[4][c], state[3][c], state[4][c], state[5][c], code,
                       arrays[8], masked, arrays[9], with_dres, state[6])

    def run(start, stop, c, arrays, state):
        _input_grad_run(arrays[0], arrays[1], arrays[2], start, stop, arrays[4][c], state[3][c], state[4][c],
                        state[5][c], code, arrays[8], masked, arrays[9], with_dres, state[6])

    return start, reads, channel, element, run


_KERNELS = {}


def _kernel(backward, code, channels_last, parallel, options):
    """The forward or backward of (code, layout), parallel or serial, compiled on first use.
    options: (residual, relu, mask written) of a forward, (masked by a ReLU, dresidual) of a
    backward (the ReLU's output or its mask: the jitted kernel specializes on the array's type)."""
    key = (backward, code, channels_last, parallel, options)
    kernel = _KERNELS.get(key)
    if kernel is None:
        jit = njit(parallel=parallel, error_model="numpy")
        masked = backward and options[0]
        sums = jit(make_sums(code, channels_last, backward, masked))
        make_pass = _backward_pass if backward else _forward_pass
        functions = tuple(njit(f) for f in make_pass(code, *options))
        kernel = _KERNELS[key] = jit(_make_kernel(channels_last, sums, code, backward, masked, functions))
    return kernel


# Absent optional arrays are passed empty, of the compute type: one compiled kernel serves every
# combination.
_EMPTY = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}
_NO_MASK = np.empty(0, np.uint8)


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
                       save_mean, save_invstd, momentum, eps, training, residual=None, relu=False, relu_mask=None):
    parallel = runs_parallel(x.size)
    with_mask = bool(relu) and relu_mask is not None
    kernel = _kernel(False, code, inner == 1, parallel, (residual is not None, bool(relu), with_mask))
    empty = _EMPTY[save_mean.dtype]
    groups, chunk = _plan(outer, channels, inner, x.itemsize, 1, parallel, training)
    arrays = (_storage(x, code), _storage(y, code), _or(weight, empty), _or(bias, empty), _or(running_mean, empty),
              _or(running_var, empty), save_mean, save_invstd, _storage(x if residual is None else residual, code),
              relu_mask.reshape(-1) if with_mask else _NO_MASK)
    kernel(arrays, (float(momentum), float(eps), bool(training)), outer, channels, inner, bool(training), groups,
           chunk)


def batch_norm_backward(code, dy, x, dx, outer, channels, inner, weight, save_mean, save_invstd, dweight, dbias,
                        training, y=None, dresidual=None, relu_mask=None):
    """relu_mask: a ReLU forward's uint8 mask, read instead of its output y."""
    parallel = runs_parallel(x.size)
    relu_source = _storage(y, code) if relu_mask is None and y is not None else relu_mask
    masked = relu_source is not None
    kernel = _kernel(True, code, inner == 1, parallel, (masked, dresidual is not None))
    empty = _EMPTY[save_mean.dtype]
    inputs = 3 if masked else 2  # as the C++ plan: what recovers the mask is read in both passes
    needs_sums = bool(training) or dweight is not None
    groups, chunk = _plan(outer, channels, inner, x.itemsize, inputs, parallel, needs_sums)
    arrays = (_storage(dy, code), _storage(x, code), _storage(dx, code), _or(weight, empty), save_mean, save_invstd,
              _or(dweight, empty), _or(dbias, empty),
              _storage(dy, code) if relu_source is None else relu_source.reshape(-1),
              _storage(dx if dresidual is None else dresidual, code))
    kernel(arrays, (bool(training),), outer, channels, inner, needs_sums, groups, chunk)
