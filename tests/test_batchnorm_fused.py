"""BatchNorm fused with the residual add and ReLU, y = max(0, bn(x) + z): against the float64
reference (tests/bn_reference.py) and torch, against fastopt's own unfused BatchNorm, across
thread counts and between the cpu and numba backends; the BatchNorm layer's options; validation.

Data: each channel of x is symmetric about 0 (x and -x, in eighths, with some zeros), so its batch
mean is exactly 0 in every implementation; with a zero bias the zeros of x are then exactly 0
before the ReLU (z is 0 there too), in training and in evaluation (running mean 0), for fastopt
and for torch alike. Elsewhere z keeps bn(x) + z at least ~0.1 away from 0, so that the ReLU's mask
cannot differ between implementations by rounding."""
import numpy as np
import pytest

import bn_reference as ref
import fastopt
from conftest import CPU_BACKENDS, backends_by_layout
from fastopt._dtypes import BFLOAT16

DTYPES = [np.float32, np.float64, np.float16] + ([BFLOAT16] if BFLOAT16 is not None else [])
# Tolerance relative to the largest value of each output, as tests/test_batchnorm.py: float64
# differs from the reference by rounding order; float32 by a few roundings of 2^-24 (statistics,
# the channel's scale, the add); float16 and bfloat16 round the output once to 11 and 8 bits
# (half an ulp of a value up to the largest) after float32 arithmetic.
TOL = {np.dtype(np.float64): 1e-11, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}
if BFLOAT16 is not None:
    TOL[BFLOAT16] = 1.6e-2

LAYOUTS = [((7, 3), 1), ((9, 13), -1), ((4, 3, 7), 1), ((3, 5, 4), -1), ((2, 3, 5, 7), 1), ((2, 5, 7, 3), -1),
           ((3, 2, 101, 70), 1), ((3, 1031), 1)]
# Shapes big enough to run on several threads and to take the CPU kernels' other paths: channel
# groups swept row by row, groups of short rows, two passes over a slice too big for cache,
# channels-last row blocks.
PATHS = [((11, 5, 37, 41), 1), ((10, 40, 9, 11), 1), ((2, 2, 1024, 520), 1), ((4099, 77), 1),
         ((3, 50, 7, 130), -1)]


def _stat(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _moved(a, axis):
    return np.moveaxis(a, axis, 0)


def _case(shape, axis, dtype, seed, bias="random", affine=True):
    """x, z, dy, weight, bias, running_mean, running_var (see the module docstring)."""
    rng = np.random.default_rng(seed)
    c = shape[axis]
    half = rng.integers(-40, 41, (c, (int(np.prod(shape)) // c) // 2)) / 8
    half[:, ::5] = 0
    per_channel = np.concatenate([half, -half] + ([np.zeros((c, 1))] if (np.prod(shape) // c) % 2 else []), axis=1)
    moved_shape = (c,) + tuple(s for i, s in enumerate(shape) if i != (axis % len(shape)))
    x64 = np.moveaxis(rng.permuted(per_channel, axis=1).reshape(moved_shape), 0, axis)
    st = _stat(dtype)
    weight = rng.uniform(0.5, 1.5, c).astype(st) if affine else None
    b = None
    if affine:
        b = np.zeros(c, st) if bias == "zero" else rng.uniform(-1, 1, c).astype(st)
    rm, rv = np.zeros(c, st), rng.uniform(0.5, 2, c).astype(st)
    z64 = rng.integers(-24, 25, shape) / 8
    z64[x64 == 0] = 0
    # Keep bn(x) + z away from 0 where it is not exactly 0 (training and evaluation statistics).
    zeros = (x64 == 0) & (bias == "zero" or not affine)
    for _ in range(10):
        near = np.zeros(shape, bool)
        for training in (True, False):
            pre = ref.forward(x64, weight, b, rm, rv, training=training, axis=axis)[0] + z64
            near |= (np.abs(pre) < 0.1) & ~zeros
        if not near.any():
            break
        z64[near] += 0.25
    assert not near.any()
    dy = rng.integers(-16, 17, shape) / 8 + 0.0625
    return (np.ascontiguousarray(x64).astype(dtype), z64.astype(dtype), dy.astype(dtype), weight, b, rm, rv)


def _ulp(v, dtype):
    """The spacing of half-precision values at |v| (11 or 8 significant bits)."""
    bits, min_exp = (10, -24) if np.dtype(dtype) == np.float16 else (7, -133)
    _, e = np.frexp(np.abs(np.asarray(v, np.float64)))
    return np.exp2(np.maximum(e - 1 - bits, min_exp))


def _check(name, actual, expected, tol):
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


def _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend, residual=True, with_mask=False):
    """Forward and backward of relu(bn(x) + z) (z left out when not residual). with_mask: the
    forward writes the ReLU's mask and the backward reads it instead of y; it is the last output."""
    rm, rv = rm.copy(), rv.copy()
    mask = np.full(x.shape, 7, np.uint8) if with_mask else None
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm, rv, training=training, axis=axis,
                                                 backend=backend, activation="relu",
                                                 residual=z if residual else None, mask_out=mask)
    grads = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, training=training, backend=backend,
                                        activation="relu", y=None if with_mask else y, mask=mask, residual=residual)
    return (y, mean, invstd, rm, rv) + tuple(grads) + ((mask,) if with_mask else ())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend, shape, axis", backends_by_layout(LAYOUTS), indirect=["backend"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("params", ["weight", "weight, zero bias", "none"])
@pytest.mark.parametrize("residual", [True, False])
def test_matches_float64_reference(backend, dtype, shape, axis, training, params, residual):
    x, z, dy, weight, bias, rm, rv = _case(shape, axis, dtype, len(shape) + shape[0],
                                           bias="zero" if "zero" in params else "random", affine=params != "none")
    if not residual:
        z = np.zeros_like(z)
    y, mean, invstd, _, _, dx, dw, db, *dres = _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend,
                                                      residual)
    tol = TOL[np.dtype(dtype)]
    y_bn, _, _, _, _ = ref.forward(x, weight, bias, rm, rv, training=training, axis=axis)
    pre = y_bn + z.astype(np.float64)
    _check("y", y, np.maximum(pre, 0), tol)
    exact_zeros = pre == 0
    if params != "weight":  # zero bias: the zeros of x give exactly 0 before the ReLU
        assert exact_zeros.sum() >= x.size // 10
    assert np.all(y.astype(np.float64)[exact_zeros] == 0)
    mask = pre > 0  # gradient 0 at 0; the data keeps pre away from 0 elsewhere
    assert np.array_equal(y.astype(np.float64) > 0, mask)
    dz = np.where(mask, dy.astype(np.float64), 0)
    dx_ref, dw_ref, db_ref = ref.backward(dz, x, weight, mean, invstd, training=training, axis=axis)
    _check("dx", dx, dx_ref, tol)
    if weight is not None:
        _check("dweight", dw, dw_ref, tol)
        _check("dbias", db, db_ref, tol)
    else:
        assert dw is None and db is None
    if residual:
        assert np.array_equal(dres[0].astype(np.float64), dz)
    else:
        assert not dres


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((7, 3), 1), ((4, 3, 7), 1), ((2, 3, 5, 7), 1), ((2, 5, 7, 3), -1)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("params", ["weight", "weight, zero bias", "none"])
def test_matches_torch_autograd(dtype, shape, axis, training, params):
    """relu(batch_norm(x) + z) with torch's autograd, in float64 from the same (rounded) inputs."""
    torch = pytest.importorskip("torch")
    x, z, dy, weight, bias, rm, rv = _case(shape, axis, dtype, 7 + shape[-1],
                                           bias="zero" if "zero" in params else "random", affine=params != "none")
    backend = CPU_BACKENDS[0]
    y, _, _, rm_fo, rv_fo, dx, dw, db, dres = _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend)

    def t(a):
        if a is None:
            return None
        a = np.asarray(a).astype(np.float64)
        return torch.tensor(np.moveaxis(a, -1, 1) if axis == -1 and a.ndim > 1 else a, requires_grad=True)

    tx, tz, tw, tb = t(x), t(z), t(weight), t(bias)
    trm, trv = torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64))
    out = torch.relu(torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=0.1,
                                                    eps=1e-5) + tz)
    out.backward(t(dy).detach())

    def back(a):
        a = a.detach().numpy()
        return np.moveaxis(a, 1, -1) if axis == -1 and a.ndim > 1 else a

    tol = TOL[np.dtype(dtype)]
    _check("y", y, back(out), tol)
    _check("dx", dx, back(tx.grad), tol)
    _check("dresidual", dres, back(tz.grad), 0.0)  # a selection of dy: exact
    if weight is not None:
        _check("dweight", dw, tw.grad.numpy(), tol)
        _check("dbias", db, tb.grad.numpy(), tol)
    if training:
        _check("running_mean", rm_fo, trm.numpy(), 1e-6)
        _check("running_var", rv_fo, trv.numpy(), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", LAYOUTS[:6] + PATHS[:2])
@pytest.mark.parametrize("training", [True, False])
def test_equals_unfused_batchnorm_bit_for_bit(backend, dtype, shape, axis, training):
    """The fused forward equals np.maximum(bn(x) + z, 0) from fastopt's own BatchNorm output bit
    for bit for float32 and float64 (the same additions in the same type). For float16 and
    bfloat16 it does not: the fused add is in float32 with one rounding, the unfused one adds two
    rounded halves; they differ by at most one unit in the last place of the result. The fused
    backward equals BatchNorm's backward of dy * (y > 0) bit for bit for every dtype (the mask is a
    selection, exact in any type), and dresidual is that masked dy."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    st = _stat(dtype)
    weight, bias = rng.uniform(0.5, 1.5, c).astype(st), rng.uniform(-1, 1, c).astype(st)
    rm, rv = rng.standard_normal(c).astype(st), rng.uniform(0.5, 2, c).astype(st)
    y_bn, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, rm.copy(), rv.copy(), training=training,
                                                    axis=axis, backend=backend)
    if np.dtype(dtype) in (np.float32, np.float64):
        z[::2] = -y_bn[::2]  # exactly 0 before the ReLU, both ways
    y, mean_f, invstd_f, _, _, dx, dw, db, dres = _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend)
    assert np.array_equal(_bits(mean_f), _bits(mean)) and np.array_equal(_bits(invstd_f), _bits(invstd))
    unfused = np.maximum(y_bn + z, 0).astype(dtype)
    if np.dtype(dtype) in (np.float32, np.float64):
        assert np.array_equal(y, unfused)
        assert np.count_nonzero((y_bn + z) == 0) >= x.size // 3
    else:
        # At most half an ulp of bn(x) (the unfused rounding of it) plus one of the result.
        bound = 0.5 * _ulp(y_bn, dtype) + _ulp(np.maximum(np.abs(y.astype(np.float64)), np.abs(unfused)), dtype)
        diff = np.abs(y.astype(np.float64) - unfused.astype(np.float64))
        assert np.all(diff <= bound)
        assert np.any(diff != 0)  # they do differ: not the same arithmetic
    dz = np.where(y.astype(np.float64) > 0, dy, np.zeros_like(dy))
    dx_u, dw_u, db_u = fastopt.batch_norm_backward(dz, x, weight, mean, invstd, axis=axis, training=training,
                                                   backend=backend)
    for a, b in ((dx, dx_u), (dw, dw_u), (db, db_u), (dres, dz)):
        assert np.array_equal(_bits(a), _bits(b))


def _mask_cases():
    """(backend, dtype, shape, axis): Numba compiles a loop per dtype, layout and option, so its
    float64 and float16 cases (the same code as float32 and bfloat16) and its parallel ones (run by
    test_cpu_and_numba_agree_bitwise on float32) are marked slow."""
    cases = []
    for backend in CPU_BACKENDS:
        if backend == "numba":
            from fastopt.numba.optim import runs_parallel
        for dtype in DTYPES:
            for shape, axis in LAYOUTS[:6] + PATHS[:2]:
                slow = backend == "numba" and (np.dtype(dtype) in (np.float64, np.float16) or
                                               runs_parallel(int(np.prod(shape))))
                cases.append(pytest.param(backend, dtype, shape, axis, marks=[pytest.mark.slow] if slow else [],
                                          id=f"{backend}-{np.dtype(dtype).name}-{shape}-{axis}"))
    return cases


@pytest.mark.parametrize("backend, dtype, shape, axis", _mask_cases())
def test_mask_gives_the_bits_of_y(backend, dtype, shape, axis):
    """mask_out is 1 exactly where the stored y is > 0 (every byte written), and a backward that
    reads it gives the bits of one that reads y: training and evaluation, with and without the
    residual, on data with exact zeros before the ReLU."""
    x, z, dy, weight, bias, rm, rv = _case(shape, axis, dtype, 12, bias="zero")
    for training in (True, False):
        for residual in (True, False):
            from_y = _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend, residual)
            from_mask = _fused(x, z, dy, weight, bias, rm, rv, axis, training, backend, residual, with_mask=True)
            mask = from_mask[-1]
            assert np.array_equal(mask, (from_y[0].astype(np.float64) > 0).astype(np.uint8))
            assert 0 < np.count_nonzero(mask) < mask.size
            for i, (a, b) in enumerate(zip(from_y, from_mask[:-1])):
                assert np.array_equal(_bits(a), _bits(b)), (training, residual, i)


@pytest.mark.parametrize("shape,axis", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bitwise_across_thread_counts(backend, shape, axis, dtype):
    x, z, dy, weight, bias, rm, rv = _case(shape, axis, dtype, 11)
    before = fastopt.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            fastopt.set_num_threads(n)
            results.append(_fused(x, z, dy, weight, bias, rm, rv, axis, True, backend,
                                  with_mask=n == 2 and dtype == np.float32))
    finally:
        fastopt.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):  # the mask (2 threads) is not compared: zip stops before
            assert np.array_equal(_bits(a), _bits(b))


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the cpu and numba backends")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", LAYOUTS[:6] + PATHS)
def test_cpu_and_numba_agree_bitwise(dtype, shape, axis):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    st = _stat(dtype)
    weight, bias = rng.uniform(0.5, 1.5, c).astype(st), rng.uniform(-1, 1, c).astype(st)
    rm, rv = rng.standard_normal(c).astype(st), rng.uniform(0.5, 2, c).astype(st)
    with_mask = np.dtype(dtype) == np.float32  # the mask's other dtypes: test_mask_gives_the_bits_of_y
    for training in (True, False):
        for residual in (True, False):
            cpu = _fused(x, z, dy, weight, bias, rm, rv, axis, training, "cpu", residual, with_mask)
            numba = _fused(x, z, dy, weight, bias, rm, rv, axis, training, "numba", residual, with_mask)
            for i, (a, b) in enumerate(zip(cpu, numba)):
                assert np.array_equal(_bits(a), _bits(b)), (training, residual, i)


def test_residual_without_activation(backend):
    """residual alone: y = bn(x) + z, dresidual = dy."""
    x, z, dy, weight, bias, rm, rv = _case((4, 3, 5), 1, np.float32, 2)
    y_bn, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, backend=backend)
    y, _, _ = fastopt.batch_norm_forward(x, weight, bias, backend=backend, residual=z)
    assert np.array_equal(y, y_bn + z)
    dx, dw, db, dres = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, backend=backend, residual=True)
    dx_u, dw_u, db_u = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, backend=backend)
    assert np.array_equal(dres, dy) and np.array_equal(dx, dx_u) and np.array_equal(dw, dw_u)


def test_out_buffers_are_used(backend):
    x, z, dy, weight, bias, rm, rv = _case((4, 3, 5), 1, np.float32, 4)
    y_out, dx_out, dres_out = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, out=y_out, backend=backend, activation="relu",
                                                 residual=z)
    dx, _, _, dres = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, backend=backend, activation="relu",
                                                 y=y, residual=True, out=dx_out, residual_out=dres_out)
    assert y is y_out and dx is dx_out and dres is dres_out
    assert np.array_equal(dres, np.where(y > 0, dy, 0))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("axis", [1, -1])
def test_layer(backend, residual, axis):
    shape = (6, 4, 5) if axis == 1 else (6, 5, 4)
    x, z, dy, _, _, _, _ = _case(shape, axis, np.float32, 8)
    fused = fastopt.BatchNorm(4, activation="relu", axis=axis, backend=backend)
    plain = fastopt.BatchNorm(4, axis=axis, backend=backend)
    for training in (True, False):
        y = fused.forward(x, training=training, residual=z if residual else None)
        y_bn = plain.forward(x, training=training)
        assert np.array_equal(y, np.maximum(y_bn + z, 0) if residual else np.maximum(y_bn, 0))
        grads = fused.backward(dy)
        dz = np.where(y > 0, dy, 0).astype(np.float32)
        dx = plain.backward(dz)
        if residual:
            assert isinstance(grads, tuple) and np.array_equal(grads[1], dz)
            grads = grads[0]
        assert np.array_equal(grads, dx)
        assert np.array_equal(fused.dweight, plain.dweight) and np.array_equal(fused.dbias, plain.dbias)
    assert np.array_equal(fused.running_mean, plain.running_mean)


def test_rejects_bad_input_before_writing(backend):
    x, z, dy, weight, bias, rm, rv = _case((4, 3, 5), 1, np.float32, 9)
    y = np.full_like(x, 7)
    with pytest.raises(ValueError, match="activation"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, activation="gelu", out=y, backend=backend)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, residual=z[:2], out=y, backend=backend)
    with pytest.raises(TypeError, match="residual must have x's dtype"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, residual=z.astype(np.float64), out=y, backend=backend)
    with pytest.raises(TypeError, match="out and residual share memory"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, residual=y, out=y, backend=backend)
    mask_out = np.full(x.shape, 7, np.uint8)
    with pytest.raises(ValueError, match="mask_out is the ReLU's mask"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, mask_out=mask_out, out=y, backend=backend)
    with pytest.raises(TypeError, match="mask_out must be uint8"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, activation="relu", mask_out=mask_out.view(np.int8), out=y,
                                   backend=backend)
    with pytest.raises(ValueError, match="mask_out must have x's shape"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, activation="relu", mask_out=mask_out[:2], out=y,
                                   backend=backend)
    with pytest.raises(TypeError, match="share memory"):
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, activation="relu", out=y,
                                   mask_out=y.reshape(-1).view(np.uint8)[:x.size].reshape(x.shape), backend=backend)
    assert np.all(y == 7) and np.all(rm == 0) and np.all(mask_out == 7)
    _, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, backend=backend)
    dx = np.full_like(x, 7)
    with pytest.raises(ValueError, match="needs one of y"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, activation="relu", out=dx, backend=backend)
    mask = np.zeros(x.shape, np.uint8)
    with pytest.raises(ValueError, match="not both"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, activation="relu", y=x, mask=mask, out=dx,
                                    backend=backend)
    with pytest.raises(ValueError, match="mask comes from a ReLU forward"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, mask=mask, out=dx, backend=backend)
    with pytest.raises(TypeError, match="mask must be uint8"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, activation="relu", mask=mask.astype(bool), out=dx,
                                    backend=backend)
    with pytest.raises(ValueError, match="mask must have x's shape"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, activation="relu", mask=mask[:2], out=dx,
                                    backend=backend)
    with pytest.raises(ValueError, match="with activation='relu'"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, y=x, out=dx, backend=backend)
    with pytest.raises(ValueError, match="y must have x's shape"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, activation="relu", y=x[:2], out=dx, backend=backend)
    with pytest.raises(TypeError, match="residual must be a bool"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, residual=z, out=dx, backend=backend)
    with pytest.raises(ValueError, match="residual_out"):
        fastopt.batch_norm_backward(dy, x, weight, mean, invstd, residual_out=np.empty_like(x), out=dx,
                                    backend=backend)
    with pytest.raises(ValueError, match="activation"):
        fastopt.BatchNorm(3, activation="tanh")
    assert np.all(dx == 7)


def test_block_constants_are_written_once():
    """BatchNorm's blocks and thresholds fix the summation order, so the backends must share them:
    the C++ kernels include fastopt/math/bn_blocks.h and the Numba backend reads it. No other source
    defines them, and the reader understands every definition in the header."""
    import glob
    import os
    import re

    from fastopt import _headers
    from fastopt.numba import bn_constants

    root = os.path.join(os.path.dirname(__file__), os.pardir)
    header = os.path.join(root, "csrc", "fastopt", "math", "bn_blocks.h")
    with open(header) as f:
        defined = re.findall(r"^constexpr \w+ (k\w+) =", f.read(), re.M)
    values = _headers.constants(header)
    assert sorted(values) == sorted(defined) and len(defined) >= 12
    for path in glob.glob(os.path.join(root, "csrc", "**", "*.[ch]*"), recursive=True):
        if os.path.samefile(path, header):
            continue
        with open(path) as f:
            text = f.read()
        for name in defined:
            assert not re.search(rf"constexpr \w+ {name}\b", text), (path, name)
    assert bn_constants.BN_BLOCK == values["kBnBlock"] and bn_constants.LANES == values["kLanes"]
    assert _headers.constants(_headers.math_header("bn_blocks.h")) == values  # the shipped copy is current


def test_cuda_launch_sizes_are_read_from_the_kernels():
    # Read from batchnorm.cu at import: whole warps, blocks CUDA can launch.
    from fastopt.cuda import batchnorm as cuda_bn

    assert cuda_bn.THREADS % 32 == 0 and 32 <= cuda_bn.THREADS <= 1024
    assert 1 <= cuda_bn.ROW_THREADS and 32 * cuda_bn.ROW_THREADS <= 1024
