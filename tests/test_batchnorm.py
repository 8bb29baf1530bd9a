"""BatchNorm forward and backward against the float64 reference (tests/bn_reference.py), finite
differences, torch, across backends, thread counts and ISA levels, and input validation."""
import numpy as np
import pytest

import bn_reference as ref
import fastopt
from conftest import CPU_BACKENDS, backends_by_layout
from fastopt._dtypes import BFLOAT16

DTYPES = [np.float32, np.float64, np.float16] + ([BFLOAT16] if BFLOAT16 is not None else [])

# Tolerance on each output, relative to the largest term it is made of (see _check):
# float64 computes in float64 (the reference differs only by rounding order);
# float32 rounds the statistics and the per-channel scale to float32 and computes in float32
# (a few roundings of 2^-24);
# float16 and bfloat16 round the output to 11 and 8 significant bits (half an ulp: 2^-11, 2^-8,
# of a value up to a few times the scale).
TOL = {np.dtype(np.float64): 1e-11, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}
if BFLOAT16 is not None:
    TOL[BFLOAT16] = 1.6e-2
# Statistics and parameter gradients are float64 sums rounded once to the statistics type.
STAT_TOL = {np.dtype(np.float64): 1e-12}

# (shape, axis): every layout, odd sizes, C = 1 and 3, M not a multiple of any vector width,
# and sizes that span several reduction blocks (16384 values per channel; 262144 per row block:
# (4099, 77) in PATHS and (40000, 8), (9, 50, 50, 16) in LARGE below).
LAYOUTS = [
    ((7, 3), 1), ((5, 1), 1), ((9, 13), -1), ((4, 3, 7), 1), ((3, 5, 4), -1), ((2, 3, 5, 7), 1),
    ((2, 5, 7, 3), -1), ((3, 1, 9, 11), 1), ((3, 2, 101, 70), 1), ((30011, 3), 1), ((2, 3, 1031), 1),
    ((3, 1031), 1), ((5, 43, 37, 7), -1),
]


def _stat_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _data(shape, dtype, seed, loc=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


def _params(channels, dtype, seed):
    rng = np.random.default_rng(seed + 100)
    st = _stat_dtype(dtype)
    return rng.uniform(0.5, 1.5, channels).astype(st), rng.uniform(-1, 1, channels).astype(st)


def _check(name, actual, expected, tol, scale=None):
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    if scale is None:
        scale = max(float(np.max(np.abs(expected))), 1e-300)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


def _channels_of(shape, axis):
    return shape[axis]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend, shape, axis", backends_by_layout(LAYOUTS), indirect=["backend"])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_training(backend, dtype, shape, axis, affine):
    x = _data(shape, dtype, 1)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    weight, bias = _params(c, dtype, 1) if affine else (None, None)
    running_mean = np.random.default_rng(2).standard_normal(c).astype(st)
    running_var = np.random.default_rng(3).uniform(0.5, 2, c).astype(st)
    rm0, rv0 = running_mean.copy(), running_var.copy()
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, running_mean, running_var, training=True,
                                                 momentum=0.2, eps=1e-4, axis=axis, backend=backend)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = ref.forward(x, weight, bias, rm0, rv0, training=True,
                                                             momentum=0.2, eps=1e-4, axis=axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == st and invstd.dtype == st and mean.shape == (c,)
    stat_tol = STAT_TOL.get(np.dtype(dtype), 1e-6)
    _check("save_mean", mean, mean_ref, stat_tol, scale=float(np.max(np.abs(mean_ref)) + 1 / np.min(invstd_ref)))
    _check("save_invstd", invstd, invstd_ref, stat_tol)
    _check("running_mean", running_mean, rm_ref, stat_tol)
    _check("running_var", running_var, rv_ref, stat_tol)
    _check("y", y, y_ref, TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((1, 3), 1), ((1, 1), 1), ((2, 3, 5, 7), 1), ((2, 5, 7, 3), -1),
                                        ((1, 4, 1, 1), 1), ((3, 1031), 1)])
def test_forward_eval(backend, dtype, shape, axis):
    """Evaluation uses the running statistics and leaves them unchanged (M == 1 is fine here)."""
    x = _data(shape, dtype, 4)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    weight, bias = _params(c, dtype, 4)
    running_mean = np.random.default_rng(5).standard_normal(c).astype(st)
    running_var = np.random.default_rng(6).uniform(0.5, 2, c).astype(st)
    rm0, rv0 = running_mean.copy(), running_var.copy()
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, running_mean, running_var, training=False,
                                                 axis=axis, backend=backend)
    y_ref, _, invstd_ref, _, _ = ref.forward(x, weight, bias, rm0, rv0, training=False, axis=axis)
    assert np.array_equal(running_mean, rm0) and np.array_equal(running_var, rv0)
    assert np.array_equal(mean, rm0)
    _check("save_invstd", invstd, invstd_ref, STAT_TOL.get(np.dtype(dtype), 1e-6))
    _check("y", y, y_ref, TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend, shape, axis", backends_by_layout(LAYOUTS), indirect=["backend"])
@pytest.mark.parametrize("training", [True, False])
def test_backward(backend, dtype, shape, axis, training):
    x = _data(shape, dtype, 7)
    dy = _data(shape, dtype, 8, loc=0.1, scale=1.0)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    weight, bias = _params(c, dtype, 7)
    rm = np.random.default_rng(9).standard_normal(c).astype(st)
    rv = np.random.default_rng(10).uniform(0.5, 2, c).astype(st)
    _, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, training=training, axis=axis,
                                                 backend=backend)
    dx, dweight, dbias = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, training=training,
                                                     backend=backend)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, weight, mean, invstd, training=training, axis=axis)
    assert dx.dtype == x.dtype and dweight.dtype == st and dbias.dtype == st
    # dx is a difference of terms of the size of weight * invstd * dy: errors scale with that.
    term = float(np.max(np.abs(ref.channels_last(dy, axis)) * weight * invstd))
    _check("dx", dx, dx_ref, TOL[np.dtype(dtype)], scale=term)
    xhat = (ref.channels_last(x, axis) - mean.astype(np.float64)) * invstd.astype(np.float64)
    dy2 = ref.channels_last(dy, axis)
    stat_tol = STAT_TOL.get(np.dtype(dtype), 1e-6)
    _check("dweight", dweight, dw_ref, stat_tol, scale=float(np.abs(dy2 * xhat).sum(axis=0).max()))
    _check("dbias", dbias, db_ref, stat_tol, scale=float(np.abs(dy2).sum(axis=0).max()))
    # Not affine: the same dx with weight 1, and no parameter gradients.
    dx1, dw1, db1 = fastopt.batch_norm_backward(dy, x, None, mean, invstd, axis=axis, training=training,
                                                backend=backend)
    assert dw1 is None and db1 is None
    dx1_ref, _, _ = ref.backward(dy, x, None, mean, invstd, training=training, axis=axis)
    _check("dx (not affine)", dx1, dx1_ref, TOL[np.dtype(dtype)],
           scale=float(np.max(np.abs(dy2) * invstd)))


@pytest.mark.parametrize("shape,axis", [((6, 3), 1), ((3, 2, 3, 5), 1), ((2, 3, 5, 3), -1), ((4, 1, 7), 1)])
@pytest.mark.parametrize("training", [True, False])
def test_backward_finite_differences(backend, shape, axis, training):
    """The gradient of L = sum(y * r) by central differences, in float64."""
    x = _data(shape, np.float64, 11)
    r = _data(shape, np.float64, 12, loc=0.0, scale=1.0)
    c = _channels_of(shape, axis)
    weight, bias = _params(c, np.float64, 11)
    rm = np.random.default_rng(13).standard_normal(c)
    rv = np.random.default_rng(14).uniform(0.5, 2, c)

    def loss(x_, w_, b_):
        y, _, _ = fastopt.batch_norm_forward(x_, w_, b_, rm.copy(), rv.copy(), training=training, axis=axis,
                                             backend=backend)
        return float((y * r).sum())

    _, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm.copy(), rv.copy(), training=training,
                                                 axis=axis, backend=backend)
    dx, dweight, dbias = fastopt.batch_norm_backward(r, x, weight, mean, invstd, axis=axis, training=training,
                                                     backend=backend)
    h = 1e-6
    for i in np.random.default_rng(15).choice(x.size, size=min(12, x.size), replace=False):
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += h
        xm.flat[i] -= h
        numeric = (loss(xp, weight, bias) - loss(xm, weight, bias)) / (2 * h)
        assert abs(dx.flat[i] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (i, dx.flat[i], numeric)
    for k in range(c):
        e = np.zeros(c)
        e[k] = h
        numeric_w = (loss(x, weight + e, bias) - loss(x, weight - e, bias)) / (2 * h)
        numeric_b = (loss(x, weight, bias + e) - loss(x, weight, bias - e)) / (2 * h)
        assert abs(dweight[k] - numeric_w) <= 1e-6 * max(1.0, abs(numeric_w))
        assert abs(dbias[k] - numeric_b) <= 1e-6 * max(1.0, abs(numeric_b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((64, 3, 9, 9), 1), ((300, 5), -1), ((2, 2, 160, 160), 1)])
def test_statistics_robust_to_large_mean(backend, dtype, shape, axis):
    """Mean 1e4 times the standard deviation: E[x^2] - E[x]^2 in float32 would lose every digit."""
    x = _data(shape, dtype, 16, loc=1e4, scale=1.0)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    rm, rv = np.zeros(c, st), np.ones(c, st)
    y, mean, invstd = fastopt.batch_norm_forward(x, None, None, rm, rv, axis=axis, backend=backend)
    _, mean_ref, invstd_ref, _, rv_ref = ref.forward(x, None, None, np.zeros(c), np.ones(c), axis=axis)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    if dtype == np.float32:  # the check has teeth: E[x^2] - E[x]^2 in float32 misses it by far
        x2 = ref.channels_last(x, axis).astype(np.float32)
        naive_var = (x2 * x2).mean(axis=0, dtype=np.float32) - x2.mean(axis=0, dtype=np.float32) ** 2
        naive_invstd = 1 / np.sqrt(np.maximum(naive_var, 0) + np.float32(1e-5))
        assert np.max(np.abs(naive_invstd - invstd_ref) / invstd_ref) > 100 * tol
    _check("save_mean", mean, mean_ref, tol)
    _check("save_invstd", invstd, invstd_ref, tol)
    _check("running_var", rv, rv_ref, tol)
    # y: x - mean is exact up to the rounding of the mean itself (of both sides), 1e4 times
    # larger than the spread: 2^-24 * 1e4 in float32, ~1e-12 in float64 with summation margin.
    y_ref, _, _, _, _ = ref.forward(x, None, None, axis=axis)
    y_tol = (1e-10 if dtype == np.float64 else 2e-7 * 1e4) * float(invstd_ref.max())
    _check("y", y, y_ref, y_tol, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((5, 3, 4, 4), 1), ((6, 4), -1), ((3, 2, 30000), 1)])
def test_constant_channel(backend, dtype, shape, axis):
    """A constant channel has variance 0: y is exactly the bias, and nothing is NaN."""
    x = _data(shape, dtype, 17)
    c = _channels_of(shape, axis)
    idx = [slice(None)] * x.ndim
    idx[axis] = 1 % c
    x[tuple(idx)] = np.asarray(3.25, dtype)
    weight, bias = _params(c, dtype, 17)
    rm, rv = np.zeros(c, weight.dtype), np.ones(c, weight.dtype)
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, eps=1e-5, axis=axis, backend=backend)
    assert mean[1 % c] == 3.25
    assert invstd[1 % c] == np.asarray(1 / np.sqrt(1e-5), weight.dtype)
    assert np.all(y[tuple(idx)].astype(np.float64) == bias[1 % c].astype(x.dtype).astype(np.float64))
    assert rv[1 % c] == np.asarray(0.9, weight.dtype)
    dy = _data(shape, dtype, 18)
    dx, dweight, dbias = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, backend=backend)
    assert np.all(np.isfinite(dx.astype(np.float64))) and dweight[1 % c] == 0


def test_training_needs_two_values_per_channel(backend):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    x = np.ones((1, 3), np.float32)
    y = np.full_like(x, 7)
    with pytest.raises(ValueError, match="more than one value per channel"):
        fastopt.batch_norm_forward(x, None, None, rm, rv, out=y, backend=backend)
    with pytest.raises(ValueError, match="more than one value per channel"):
        fastopt.batch_norm_forward(np.ones((1, 3, 1, 1), np.float32), backend=backend)
    assert np.all(rm == 0) and np.all(rv == 1) and np.all(y == 7)


LARGE = [((4, 6, 60, 70), 1), ((3, 2, 150, 150), 1), ((40000, 8), 1), ((9, 50, 50, 16), -1), ((3, 5000), 1)]


@pytest.mark.parametrize("shape,axis", LARGE)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_deterministic_across_thread_counts(backend, shape, axis, dtype):
    """Bitwise the same for 1, 2, 3 and 5 threads. On the cpu backend the first two shapes also
    switch between the fused (channel groups) path and the two-pass path: (4, 6, 60, 70) at 5
    threads, (3, 2, 150, 150) from 2 threads on."""
    x = _data(shape, dtype, 19)
    dy = _data(shape, dtype, 20)
    c = _channels_of(shape, axis)
    weight, bias = _params(c, dtype, 19)
    _same_bits_at_thread_counts(backend, x, dy, weight, bias, np.zeros(c, np.float32), np.ones(c, np.float32),
                                axis, (1, 2, 3, 5))


def _same_bits_at_thread_counts(backend, x, dy, weight, bias, rm0, rv0, axis, thread_counts):
    """Forward then backward at each thread count; asserts every output is bitwise the same and
    returns them: y, mean, invstd, running mean and var, dx, dweight, dbias."""
    before = fastopt.get_num_threads()
    results = []
    try:
        for n in thread_counts:
            fastopt.set_num_threads(n)
            rm, rv = rm0.copy(), rv0.copy()
            y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, axis=axis, backend=backend)
            dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, backend=backend)
            results.append((y, mean, invstd, rm, rv, dx, dw, db))
    finally:
        fastopt.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    return results[-1]


# Shapes that take each path of the CPU kernels (csrc/cpu/isa_batchnorm.cpp): channel groups
# swept row by row (rows of at least 1024 values, with a reduction block boundary inside a row;
# at 3 threads too few channels, so two passes), channel groups of short rows summed channel by
# channel, a channel slice too big to stay cached (two passes at any thread count), and
# channels-last row blocks of four rows with a tail of 3 and of 2 rows.
PATHS = [((11, 5, 37, 41), 1), ((10, 40, 9, 11), 1), ((2, 2, 1024, 520), 1), ((4099, 77), 1),
         ((3, 50, 7, 130), -1)]


# Outputs of 16 MiB and more are written with streaming stores (csrc/cpu/batchnorm.h): the
# grouped, two-pass and channels-last paths at that size, each also with rows whose length is
# not a whole number of cache lines (a line a row leaves unfinished is completed by the next).
STREAMED = [((64, 8, 96, 96), 1), ((2, 2, 1024, 1040), 1), ((4200, 1000), 1),
            ((256, 128, 13, 13), 1), ((2, 3, 1500007), 1), ((65537, 67), -1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", PATHS)
def test_kernel_paths_match_reference_at_every_thread_count(backend, dtype, shape, axis):
    _check_at_thread_counts(backend, dtype, shape, axis, (1, 2, 3))


@pytest.mark.parametrize("shape,axis", STREAMED)
def test_streamed_outputs_match_reference(backend, shape, axis):
    _check_at_thread_counts(backend, np.float32, shape, axis, (1, 2))


def _check_at_thread_counts(backend, dtype, shape, axis, thread_counts):
    """Forward and backward bitwise the same at each thread count, and close to the reference."""
    x = _data(shape, dtype, 31, loc=3.0)
    dy = _data(shape, dtype, 32, loc=0.1, scale=1.0)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    weight, bias = _params(c, dtype, 31)
    rm0, rv0 = np.zeros(c, st), np.ones(c, st)
    y, mean, invstd, rm, rv, dx, dw, db = _same_bits_at_thread_counts(backend, x, dy, weight, bias, rm0, rv0,
                                                                      axis, thread_counts)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = ref.forward(x, weight, bias, rm0, rv0, axis=axis)
    stat_tol = STAT_TOL.get(np.dtype(dtype), 1e-6)
    _check("save_mean", mean, mean_ref, stat_tol, scale=float(np.max(np.abs(mean_ref)) + 1 / np.min(invstd_ref)))
    _check("save_invstd", invstd, invstd_ref, stat_tol)
    _check("running_var", rv, rv_ref, stat_tol)
    _check("y", y, y_ref, TOL[np.dtype(dtype)])
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, weight, mean, invstd, axis=axis)
    dy2 = ref.channels_last(dy, axis)
    _check("dx", dx, dx_ref, TOL[np.dtype(dtype)], scale=float(np.max(np.abs(dy2) * weight * invstd)))
    xhat = (ref.channels_last(x, axis) - mean.astype(np.float64)) * invstd.astype(np.float64)
    _check("dweight", dw, dw_ref, stat_tol, scale=float(np.abs(dy2 * xhat).sum(axis=0).max()))
    _check("dbias", db, db_ref, stat_tol, scale=float(np.abs(dy2).sum(axis=0).max()))


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the cpu and numba backends")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", LAYOUTS[:9] + LARGE[:3] + PATHS)
@pytest.mark.parametrize("training", [True, False])
def test_cpu_and_numba_agree_bitwise(dtype, shape, axis, training):
    x = _data(shape, dtype, 21)
    dy = _data(shape, dtype, 22)
    c = _channels_of(shape, axis)
    weight, bias = _params(c, dtype, 21)
    st = _stat_dtype(dtype)
    outputs = []
    for backend in ("cpu", "numba"):
        rm, rv = np.full(c, 0.5, st), np.full(c, 1.5, st)
        y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, training=training, axis=axis,
                                                     backend=backend)
        dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, training=training, axis=axis,
                                                 backend=backend)
        outputs.append([a.view(np.uint8) for a in (y, mean, invstd, rm, rv, dx, dw, db)])
    for a, b in zip(*outputs):
        assert np.array_equal(a, b)


# Each path of the Numba kernels (python/fastopt/numba/batchnorm.py), forced on small shapes:
# serial and parallel loops and, for axis-1 layouts, the two passes in chunks of channels or
# fused in channel groups. The shapes have segments with tails of fewer than 32 lanes, reduction
# blocks that end inside a row ((5, 4, 4099)), several channels-last row blocks, channel blocks
# and a tail of rows that is not a multiple of 4 ((70, 4100)), and a single channel.
NUMBA_PATH_SHAPES = [((3, 5, 7, 3), 1), ((2, 1, 9), 1), ((5, 4, 4099), 1), ((7, 3), 1), ((70, 4100), -1),
                     ((3, 5, 7, 13), -1)]
# (groups, chunk) for `channels` channels: see _plan.
NUMBA_PLANS = {"chunks of 1": lambda c: (0, 1), "chunks of 2": lambda c: (0, 2), "one chunk": lambda c: (0, c),
               "groups of 1": lambda c: (c, c), "2 groups": lambda c: (min(2, c), c), "1 group": lambda c: (1, c)}


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the cpu and numba backends")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", NUMBA_PATH_SHAPES)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_numba_kernel_paths_agree_with_cpu_bitwise(monkeypatch, dtype, shape, axis, parallel):
    from fastopt.numba import batchnorm as numba_bn

    x = _data(shape, dtype, 35, loc=3.0)
    dy = _data(shape, dtype, 36)
    c = _channels_of(shape, axis)
    weight, bias = _params(c, dtype, 35)
    st = _stat_dtype(dtype)

    def run(backend, training, affine):
        rm, rv = np.full(c, 0.5, st), np.full(c, 1.5, st)
        w, b = (weight, bias) if affine else (None, None)
        y, mean, invstd = fastopt.batch_norm_forward(x, w, b, rm, rv, training=training, axis=axis, backend=backend)
        dx, dw, db = fastopt.batch_norm_backward(dy, x, w, mean, invstd, training=training, axis=axis,
                                                 backend=backend)
        return [a.view(np.uint8) for a in (y, mean, invstd, rm, rv, dx) + ((dw, db) if affine else ())]

    monkeypatch.setattr(numba_bn, "runs_parallel", lambda size: parallel)
    inner = int(np.prod(shape[2:])) if axis == 1 else 1
    plans = NUMBA_PLANS if inner > 1 else {"channels-last": lambda c: (0, c)}  # (N, C) is channels-last
    before = fastopt.get_num_threads()
    try:
        for training in (True, False):
            for affine in (True, False):
                expected = run("cpu", training, affine)
                for name, plan in plans.items():
                    monkeypatch.setattr(numba_bn, "_plan", lambda *args, plan=plan: plan(c))
                    for threads in (1, 2):
                        fastopt.set_num_threads(threads)
                        for a, b in zip(expected, run("numba", training, affine)):
                            assert np.array_equal(a, b), (name, threads, training, affine)
    finally:
        fastopt.set_num_threads(before)


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the compiled extension")
@pytest.mark.parametrize("shape,axis", [((4, 6, 60, 70), 1), ((40000, 8), 1), ((2, 5, 7, 3), -1)] + STREAMED[::2])
def test_every_isa_level_gives_the_same_bits(shape, axis):
    cpu = fastopt._backend.BACKENDS["cpu"].module
    levels = ["baseline", "x86-64-v3", "x86-64-v4"]
    levels = levels[:levels.index(cpu.best_isa()) + 1] if cpu.best_isa() in levels else ["baseline"]
    active = cpu.isa()
    x, dy = _data(shape, np.float32, 23), _data(shape, np.float32, 24)
    c = _channels_of(shape, axis)
    weight, bias = _params(c, np.float32, 23)
    outputs = []
    try:
        for level in levels:
            cpu.select_isa(level)
            y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, axis=axis, backend="cpu")
            dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, backend="cpu")
            outputs.append([a.view(np.uint8).copy() for a in (y, mean, invstd, dx, dw, db)])
    finally:
        cpu.select_isa(active)
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert np.array_equal(a, b)


def test_out_buffers_are_used(backend):
    """A training loop can run without allocating: y, dx, the statistics and the gradients."""
    shape, c = (4, 3, 5, 5), 3
    x, dy = _data(shape, np.float32, 25), _data(shape, np.float32, 26)
    weight, bias = _params(c, np.float32, 25)
    y, dx = np.empty_like(x), np.empty_like(x)
    stats = (np.empty(c, np.float32), np.empty(c, np.float32))
    grads = (np.empty(c, np.float32), np.empty(c, np.float32))
    y1, m1, s1 = fastopt.batch_norm_forward(x, weight, bias, out=y, stats_out=stats, backend=backend)
    dx1, dw1, db1 = fastopt.batch_norm_backward(dy, x, weight, m1, s1, out=dx, grads_out=grads, backend=backend)
    assert y1 is y and m1 is stats[0] and s1 is stats[1] and dx1 is dx and dw1 is grads[0] and db1 is grads[1]
    y2, m2, s2 = fastopt.batch_norm_forward(x, weight, bias, backend=backend)
    dx2, dw2, db2 = fastopt.batch_norm_backward(dy, x, weight, m2, s2, backend=backend)
    for a, b in ((y, y2), (stats[0], m2), (stats[1], s2), (dx, dx2), (grads[0], dw2), (grads[1], db2)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape,axis", STREAMED[3:])
def test_streamed_outputs_not_aligned_to_a_line(shape, axis):
    """y and dx written at an offset of one value from a cache line hold the same bits."""
    x = _data(shape, np.float32, 33, loc=3.0)
    dy = _data(shape, np.float32, 34)
    weight, bias = _params(_channels_of(shape, axis), np.float32, 33)
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, axis=axis)
    dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis)

    def one_past_a_line():
        storage = np.empty(x.size + 32, np.float32)
        start = (-storage.ctypes.data) % 64 // 4 + 1
        return storage[start:start + x.size].reshape(shape)

    y_off, dx_off = one_past_a_line(), one_past_a_line()
    assert y_off.ctypes.data % 64 == 4 and dx_off.ctypes.data % 64 == 4
    fastopt.batch_norm_forward(x, weight, bias, axis=axis, out=y_off)
    fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, out=dx_off)
    assert np.array_equal(y_off.view(np.uint32), y.view(np.uint32))
    assert np.array_equal(dx_off.view(np.uint32), dx.view(np.uint32))


def _bad_calls():
    x = _data((4, 3, 5), np.float32, 27)
    w, b = _params(3, np.float32, 27)
    return x, w, b


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(x=a["x"][:, :, ::2]), TypeError, "x must be C-contiguous"),
    (lambda a: a.update(x=a["x"].astype(np.int32)), TypeError, "x has dtype int32"),
    (lambda a: a.update(x=a["x"].reshape(60)), ValueError, "x must have 2, 3 or 4 dimensions"),
    (lambda a: a.update(x=a["x"].tolist()), TypeError, "x must be a NumPy or CuPy array"),
    (lambda a: a.update(axis=0), ValueError, "axis must be 1"),
    (lambda a: a.update(weight=a["weight"][:2]), ValueError, r"weight must have shape \(3,\)"),
    (lambda a: a.update(weight=a["weight"].astype(np.float64)), TypeError, "weight must be float32"),
    (lambda a: a.update(bias=np.zeros((3, 1), np.float32)), ValueError, "bias must have shape"),
    (lambda a: a.update(running_var=None), ValueError, "running_mean and running_var must be given together"),
    (lambda a: a.update(running_mean=np.zeros(3, np.float64)), TypeError, "running_mean must be float32"),
    (lambda a: a.update(eps=0.0), ValueError, "eps"),
    (lambda a: a.update(momentum=1.5), ValueError, "momentum"),
    (lambda a: a.update(momentum=None), ValueError, "momentum=None"),
    (lambda a: a.update(training=1), TypeError, "training must be a bool"),
    (lambda a: a.update(out=np.empty((4, 3, 4), np.float32)), ValueError, "out must have x's shape"),
    (lambda a: a.update(out=np.empty((4, 3, 5), np.float64)), TypeError, "out must have x's dtype"),
    (lambda a: a.update(out=a["x"]), TypeError, "share memory"),
    (lambda a: a.update(stats_out=(a["running_mean"], np.empty(3, np.float32))), TypeError, "share memory"),
    (lambda a: a.update(stats_out=np.empty(3, np.float32)), TypeError, "stats_out must be a pair"),
    (lambda a: a.update(backend="cuda"), TypeError, "computes on cupy arrays"),
])
def test_forward_rejects_bad_input_before_writing(backend, mutate, exc, match):
    x, w, b = _bad_calls()
    rm, rv = np.full(3, 0.25, np.float32), np.full(3, 2.0, np.float32)
    args = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv, training=True, momentum=0.1, eps=1e-5,
                axis=1, out=None, stats_out=None, backend=backend)
    mutate(args)
    rm_args = args["running_mean"]
    saved = [a.copy() for a in (rm, rv)]
    with pytest.raises(exc, match=match):
        fastopt.batch_norm_forward(**args)
    assert np.array_equal(rm, saved[0]) and np.array_equal(rv, saved[1])
    if rm_args is not None and rm_args is not rm:
        assert np.all(rm_args == 0)


def test_forward_rejects_read_only_running_stats_and_eval_without_them(backend):
    x, w, b = _bad_calls()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm.flags.writeable = False
    with pytest.raises(TypeError, match="running_mean is read-only"):
        fastopt.batch_norm_forward(x, w, b, rm, rv, backend=backend)
    assert np.all(rv == 1)
    with pytest.raises(ValueError, match="evaluation"):
        fastopt.batch_norm_forward(x, w, b, training=False, backend=backend)
    with pytest.raises(ValueError, match="x is empty"):
        fastopt.batch_norm_forward(np.zeros((0, 3), np.float32), backend=backend)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(dy=a["dy"][:3]), ValueError, "dy must have x's shape"),
    (lambda a: a.update(dy=a["dy"].astype(np.float64)), TypeError, "dy must have x's dtype"),
    (lambda a: a.update(save_mean=None), TypeError, "save_mean and save_invstd are required"),
    (lambda a: a.update(save_invstd=a["save_invstd"][:2]), ValueError, "save_invstd must have shape"),
    (lambda a: a.update(weight=a["weight"].astype(np.float16)), TypeError, "weight must be float32"),
    (lambda a: a.update(out=a["dy"]), TypeError, "share memory"),
    (lambda a: a.update(grads_out=(np.empty(2, np.float32), np.empty(3, np.float32))), ValueError,
     r"grads_out\[0\] must have shape"),
    (lambda a: a.update(weight=None, grads_out=(np.empty(3, np.float32), np.empty(3, np.float32))),
     ValueError, "grads_out is for dweight"),
    (lambda a: a.update(axis=0), ValueError, "axis must be 1"),
])
def test_backward_rejects_bad_input_before_writing(backend, mutate, exc, match):
    x, w, b = _bad_calls()
    dy = _data(x.shape, np.float32, 28)
    _, mean, invstd = fastopt.batch_norm_forward(x, w, b, backend=backend)
    out = np.full_like(x, 5)
    args = dict(dy=dy, x=x, weight=w, save_mean=mean, save_invstd=invstd, axis=1, training=True, out=out,
                grads_out=None, backend=backend)
    mutate(args)
    with pytest.raises(exc, match=match):
        fastopt.batch_norm_backward(**args)
    assert np.all(out == 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape,axis", [((6, 4, 5, 3), 1), ((7, 4), 1), ((6, 5, 3, 4), -1)])
def test_layer_matches_reference_over_steps(backend, dtype, momentum, shape, axis):
    c = _channels_of(shape, axis)
    bn = fastopt.BatchNorm(c, momentum=momentum, axis=axis, dtype=dtype, backend=backend)
    bn.weight[...] = np.linspace(0.5, 1.5, c)
    bn.bias[...] = np.linspace(-1, 1, c)
    rm, rv = np.zeros(c), np.ones(c)
    for step in range(1, 4):
        x = _data(shape, dtype, 30 + step, loc=step)
        dy = _data(shape, dtype, 40 + step)
        y = bn.forward(x, training=True)
        dx = bn.backward(dy)
        mom = momentum if momentum is not None else 1.0 / step
        y_ref, mean, invstd, rm, rv = ref.forward(x, bn.weight, bn.bias, rm, rv, momentum=mom, axis=axis)
        dx_ref, dw_ref, db_ref = ref.backward(dy, x, bn.weight, mean, invstd, axis=axis)
        tol = TOL[np.dtype(dtype)] * 10
        _check("y", y, y_ref, tol)
        _check("dx", dx, dx_ref, tol, scale=float(np.abs(dy).max() * np.max(invstd * bn.weight)))
        _check("dweight", bn.dweight, dw_ref, tol, scale=float(np.abs(dw_ref).max() + np.abs(db_ref).max()))
        _check("dbias", bn.dbias, db_ref, tol, scale=float(np.abs(db_ref).sum()))
        _check("running_mean", bn.running_mean, rm, tol, scale=1.0)
        _check("running_var", bn.running_var, rv, tol, scale=1.0)
        assert bn.num_batches_tracked == step
    x = _data(shape, dtype, 50)
    y = bn.forward(x, training=False)
    _check("y (eval)", y, ref.forward(x, bn.weight, bn.bias, rm, rv, training=False, axis=axis)[0],
           TOL[np.dtype(dtype)] * 10)
    dy = _data(shape, dtype, 51)
    dx = bn.backward(dy)
    _check("dx (eval)", dx, dy * (bn.weight / np.sqrt(rv + 1e-5)).reshape((1, c) + (1,) * (x.ndim - 2))
           if axis == 1 else dy * bn.weight / np.sqrt(rv + 1e-5), TOL[np.dtype(dtype)] * 10)
    assert bn.num_batches_tracked == 3


def test_layer_without_running_stats_uses_batch_statistics(backend):
    bn = fastopt.BatchNorm(3, affine=False, track_running_stats=False, backend=backend)
    x = _data((5, 3, 4), np.float32, 52)
    y = bn.forward(x, training=False)
    _check("y", y, ref.forward(x, training=True)[0], 1e-5)
    assert bn.running_mean is None and bn.weight is None and bn.num_batches_tracked == 0
    dx = bn.backward(_data((5, 3, 4), np.float32, 53))
    assert dx.shape == x.shape and bn.dweight is None


# ---- torch.nn.functional.batch_norm, the anchor the API follows ----------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 7), (2, 3, 5, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch(backend, dtype, shape, training):
    torch = pytest.importorskip("torch")
    x = _data(shape, dtype, 60)
    dy = _data(shape, dtype, 61)
    c = shape[1]
    weight, bias = _params(c, dtype, 60)
    rm, rv = np.full(c, 0.3, dtype), np.full(c, 1.7, dtype)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=training, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(dy))
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, training=training, backend=backend)
    dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, training=training, backend=backend)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    _check("y", y, yt.detach().numpy(), tol)
    _check("running_mean", rm, rm_t.numpy(), tol)
    _check("running_var", rv, rv_t.numpy(), tol)
    _check("dx", dx, xt.grad.numpy(), tol)
    _check("dweight", dw, wt.grad.numpy(), tol)
    _check("dbias", db, bt.grad.numpy(), tol)


def test_inputs_may_share_memory_but_outputs_may_not(backend):
    x = _data((4, 3, 5), np.float32, 70)
    _, mean, invstd = fastopt.batch_norm_forward(x, backend=backend)
    dx, _, _ = fastopt.batch_norm_backward(x, x, None, mean, invstd, backend=backend)  # dy is x: read only
    _check("dx", dx, ref.backward(x, x, None, mean, invstd)[0], 1e-5, scale=float(np.abs(x).max() * invstd.max()))
    rm = np.zeros(6, np.float32)
    with pytest.raises(TypeError, match="running_mean and running_var share memory"):
        fastopt.batch_norm_forward(x, None, None, rm[:3], rm[1:4], backend=backend)
    assert np.all(rm == 0)


# ---- CUDA (CuPy), where a device is present ------------------------------------------------------

def _cupy_or_skip():
    cupy = pytest.importorskip("cupy")
    if not fastopt.backends()["cuda"]["available"]:
        pytest.skip(fastopt.backends()["cuda"]["reason"])
    return cupy


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_cuda_matches_reference(dtype, shape, axis, training):
    cupy = _cupy_or_skip()
    x, dy = _data(shape, dtype, 80), _data(shape, dtype, 81)
    c = _channels_of(shape, axis)
    st = _stat_dtype(dtype)
    weight, bias = _params(c, dtype, 80)
    rm = np.random.default_rng(82).standard_normal(c).astype(st)
    rv = np.random.default_rng(83).uniform(0.5, 2, c).astype(st)
    rm_d, rv_d = cupy.asarray(rm), cupy.asarray(rv)
    y, mean, invstd = fastopt.batch_norm_forward(cupy.asarray(x), cupy.asarray(weight), cupy.asarray(bias), rm_d,
                                                 rv_d, training=training, momentum=0.2, axis=axis)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = ref.forward(x, weight, bias, rm, rv, training=training,
                                                             momentum=0.2, axis=axis)
    stat_tol = STAT_TOL.get(np.dtype(dtype), 1e-6)
    _check("save_invstd", cupy.asnumpy(invstd), invstd_ref, stat_tol)
    _check("running_var", cupy.asnumpy(rv_d), rv_ref, stat_tol)
    _check("y", cupy.asnumpy(y), y_ref, TOL[np.dtype(dtype)])
    dx, dw, db = fastopt.batch_norm_backward(cupy.asarray(dy), cupy.asarray(x), cupy.asarray(weight), mean, invstd,
                                             training=training, axis=axis)
    mean_h, invstd_h = cupy.asnumpy(mean), cupy.asnumpy(invstd)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, weight, mean_h, invstd_h, training=training, axis=axis)
    term = float(np.max(np.abs(ref.channels_last(dy, axis)) * weight * invstd_h))
    _check("dx", cupy.asnumpy(dx), dx_ref, TOL[np.dtype(dtype)], scale=term)
    _check("dbias", cupy.asnumpy(db), db_ref, stat_tol, scale=float(np.abs(dy.astype(np.float64)).sum()))


@pytest.mark.cuda
def test_cuda_is_deterministic_and_bfloat16_as_uint16():
    cupy = _cupy_or_skip()
    shape = (8, 16, 64, 65)
    x = cupy.asarray(_data(shape, np.float32, 84))
    runs = [cupy.asnumpy(fastopt.batch_norm_forward(x)[0]) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    if BFLOAT16 is not None:
        xb = _data(shape, BFLOAT16, 85)
        y, _, _ = fastopt.batch_norm_forward(cupy.asarray(xb.view(np.uint16)), x_dtype="bfloat16")
        _check("y", cupy.asnumpy(y).view(BFLOAT16), ref.forward(xb)[0], TOL[BFLOAT16])
