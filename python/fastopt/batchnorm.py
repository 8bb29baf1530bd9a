"""Batch normalization (Ioffe & Szegedy 2015), fused forward and backward kernels.

The rules are docs/algorithms.md's "BatchNorm"; names and defaults follow
``torch.nn.functional.batch_norm``. ``x`` is (N, C), (N, C, L) or (N, C, H, W) with the channel
on ``axis=1``, or channels-last with ``axis=-1``. float32 and float64 data keep statistics and
parameters in their own type; float16 and bfloat16 data are read and written in their own type
with float32 statistics and parameters.

Each call makes at most two passes over the data: the forward reads ``x`` once for the
statistics (training only) and once to write ``y``; the backward reads ``dy`` and ``x`` once for
the channel sums and once more to write ``dx``. ``out=`` takes the buffer for ``y`` or ``dx`` so
that a training loop allocates nothing per step.

BN + add + ReLU (``activation="relu"``, ``residual=z``): ``y = max(0, bn(x) + z)`` is formed in the
forward's write pass, and the backward takes ``dy * (y > 0)`` (gradient 0 at 0, as torch) as
BatchNorm's incoming gradient inside its own two passes, reading the mask from the forward's
output ``y``, or from a byte mask the forward writes (``mask_out=``, then ``mask=``); ``dresidual``
is that same masked ``dy`` (docs/batchnorm.md gives the byte counts and speeds).
"""
import numpy as np

from . import _backend, _checks
from ._dtypes import CODE_FLOAT32, CODE_FLOAT64, NAMES, dtype_code

__all__ = ["batch_norm_forward", "batch_norm_backward", "BatchNorm"]

def _stat_code(code):
    return CODE_FLOAT64 if code == CODE_FLOAT64 else CODE_FLOAT32


class _Layout:
    """x seen as (outer, channels, inner), C-contiguous."""

    __slots__ = ("kind", "code", "stat_code", "outer", "channels", "inner", "count")

    def __init__(self, name, x, axis, x_dtype):
        self.kind = _checks._kind_of(name, x)
        _checks._check_layout(name, x, writable=False)
        self.code = dtype_code(x.dtype, x_dtype)
        if self.code is None:
            raise TypeError(f"{name} has dtype {x.dtype}; expected float32, float64, float16 or bfloat16")
        self.stat_code = _stat_code(self.code)
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"{name} must have 2, 3 or 4 dimensions ((N, C), (N, C, L), (N, C, H, W) "
                             f"or channels-last), got shape {tuple(x.shape)}")
        if isinstance(axis, bool) or axis not in (1, -1, x.ndim - 1):
            raise ValueError(f"axis must be 1 (channels first) or -1 (channels last), got {axis!r}")
        shape = tuple(int(s) for s in x.shape)
        if axis == 1:
            self.outer, self.channels = shape[0], shape[1]
            self.inner = int(np.prod(shape[2:], dtype=np.int64))
        else:
            self.channels = shape[-1]
            self.outer, self.inner = int(np.prod(shape[:-1], dtype=np.int64)), 1
        if x.size == 0:
            raise ValueError(f"{name} is empty (shape {shape}); batch normalization needs at least one value "
                             "per channel")
        self.count = self.outer * self.inner


def _same_kind(name, a, layout, writable):
    kind = _checks._kind_of(name, a)
    if kind != layout.kind:
        raise TypeError(f"{name} is a {kind} array but x is a {layout.kind} array: "
                        "one call cannot mix NumPy and CuPy arrays")
    _checks._check_layout(name, a, writable)


def _channel_array(name, a, layout, writable):
    """A (C,) parameter or statistics array of the layout's statistics dtype, or None."""
    if a is None:
        return None
    _same_kind(name, a, layout, writable)
    if dtype_code(a.dtype) != layout.stat_code:
        raise TypeError(f"{name} must be {NAMES[layout.stat_code]} for {NAMES[layout.code]} data, got {a.dtype}")
    if a.ndim != 1 or a.shape[0] != layout.channels:
        raise ValueError(f"{name} must have shape ({layout.channels},) (one value per channel), "
                         f"got {tuple(a.shape)}")
    return a


def _data_array(name, a, reference, layout, x_dtype, writable):
    """An array shaped and typed like x (dy, or an out= buffer)."""
    _same_kind(name, a, layout, writable)
    if dtype_code(a.dtype, x_dtype) != layout.code or a.dtype != reference.dtype:
        raise TypeError(f"{name} must have x's dtype {reference.dtype}, got {a.dtype}")
    _same_shape(name, a, reference)
    return a


def _same_shape(name, a, reference):
    if tuple(a.shape) != tuple(reference.shape):
        raise ValueError(f"{name} must have x's shape {tuple(reference.shape)}, got {tuple(a.shape)}")


def _mask_array(name, a, x, layout, writable):
    """A ReLU's mask: uint8, x's shape, 1 where the ReLU's output is > 0 and 0 elsewhere."""
    _same_kind(name, a, layout, writable)
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (a byte per element of x), got {a.dtype}")
    _same_shape(name, a, x)
    return a


def _check_written_disjoint(written, read):
    """No written array may overlap any other array of the call (inputs may share memory)."""
    written = [(n, a) for n, a in written if a is not None and a.nbytes]
    others = written + [(n, a) for n, a in read if a is not None and a.nbytes]
    for name_w, w in written:
        start_w, end_w = _checks._extent(w)
        for name_o, o in others:
            if o is w and name_o == name_w:
                continue
            start_o, end_o = _checks._extent(o)
            if start_w < end_o and start_o < end_w:
                raise TypeError(f"{name_w} and {name_o} share memory; each must be its own buffer")


def _pair(name, value):
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of arrays or None, got {type(value).__name__}")
    return value


def _activation(activation):
    if activation is not None and activation != "relu":
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def _kernels(layout, backend):
    chosen = _backend.select(layout.kind, backend)
    if chosen.name == "numba":
        from .numba import batchnorm as kernels
    elif chosen.name == "cuda":
        from .cuda import batchnorm as kernels
    else:
        kernels = chosen.module
    return kernels


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, axis=1, out=None, stats_out=None, x_dtype=None, backend=None,
                       activation=None, residual=None, mask_out=None):
    """Batch normalization forward; returns ``(y, save_mean, save_invstd)``.

    Training: per channel, ``mean`` and biased ``var`` of the batch (float64 shifted sums, exact
    for any offset of the data), ``y = (x - mean) / sqrt(var + eps) * weight + bias``, and, when
    given, ``running_mean``/``running_var`` updated in place with ``momentum`` (the unbiased
    variance enters ``running_var``). Evaluation (``training=False``): the running statistics
    normalize instead and are not changed.

    ``save_mean`` and ``save_invstd`` (float32 for half data) are what :func:`batch_norm_backward`
    needs: the batch statistics in training, the running mean and ``1 / sqrt(running_var + eps)``
    in evaluation. ``out``: buffer for ``y`` (x's shape and dtype); ``stats_out``: a pair of (C,)
    buffers for ``save_mean`` and ``save_invstd``. ``x_dtype``: 'bfloat16' or 'float16' for CuPy
    data stored as uint16.

    ``residual``: an array like x added to the normalized values; ``activation="relu"``: then
    ``y = max(0, ...)``. Both are applied while y is written (no extra pass); the addition is in
    the statistics' type, rounded once to x's dtype. ``mask_out``: with ``activation="relu"``, a
    uint8 array of x's shape that gets, in the same pass, 1 where y > 0 and 0 elsewhere; the
    backward reads it (``mask=``) instead of y: one byte per element instead of y's itemsize, in
    both of its passes.
    """
    layout = _Layout("x", x, axis, x_dtype)
    relu = _activation(activation)
    if residual is not None:
        _data_array("residual", residual, x, layout, x_dtype, writable=False)
    if mask_out is not None:
        if not relu:
            raise ValueError("mask_out is the ReLU's mask: pass it with activation='relu'")
        _mask_array("mask_out", mask_out, x, layout, writable=True)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    training = bool(training)
    eps = _checks.positive("eps", eps)
    if momentum is None:
        raise ValueError("momentum=None (cumulative moving average) needs the count of batches seen: "
                         "use fastopt.BatchNorm, or pass momentum=1/num_batches_tracked")
    momentum = _checks.unit_interval("momentum", momentum, closed=True)
    weight = _channel_array("weight", weight, layout, writable=False)
    bias = _channel_array("bias", bias, layout, writable=False)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    running_mean = _channel_array("running_mean", running_mean, layout, writable=True)
    running_var = _channel_array("running_var", running_var, layout, writable=True)
    if not training and running_mean is None:
        raise ValueError("evaluation (training=False) normalizes with running_mean and running_var; "
                         "pass them, or use training=True for batch statistics")
    if training and layout.count == 1:
        raise ValueError(f"training needs more than one value per channel (x has shape {tuple(x.shape)}): "
                         "the batch variance is undefined")
    save_mean, save_invstd = _pair("stats_out", stats_out)
    save_mean = _channel_array("stats_out[0]", save_mean, layout, writable=True)
    save_invstd = _channel_array("stats_out[1]", save_invstd, layout, writable=True)
    if out is not None:
        _data_array("out", out, x, layout, x_dtype, writable=True)
    _check_written_disjoint([("running_mean", running_mean), ("running_var", running_var),
                             ("stats_out[0]", save_mean), ("stats_out[1]", save_invstd), ("out", out),
                             ("mask_out", mask_out)],
                            [("x", x), ("weight", weight), ("bias", bias), ("residual", residual)])
    kernels = _kernels(layout, backend)

    xp = _backend.array_module(layout.kind)
    stat_dtype = np.float64 if layout.stat_code == CODE_FLOAT64 else np.float32
    y = xp.empty_like(x) if out is None else out
    if save_mean is None:
        save_mean = xp.empty(layout.channels, stat_dtype)
    if save_invstd is None:
        save_invstd = xp.empty(layout.channels, stat_dtype)
    kernels.batch_norm_forward(layout.code, x, y, layout.outer, layout.channels, layout.inner, weight, bias,
                               running_mean, running_var, save_mean, save_invstd, momentum, eps, training,
                               residual, relu, relu_mask=mask_out)
    return y, save_mean, save_invstd


def batch_norm_backward(dy, x, weight, save_mean, save_invstd, *, axis=1, training=True, out=None,
                        grads_out=None, x_dtype=None, backend=None, activation=None, y=None, residual=False,
                        residual_out=None, mask=None):
    """Batch normalization backward; returns ``(dx, dweight, dbias)``, or
    ``(dx, dweight, dbias, dresidual)`` with ``residual=True``.

    ``save_mean`` and ``save_invstd`` come from :func:`batch_norm_forward` with the same
    ``training``. Per channel ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``; training:
    ``dx = weight * invstd / M * (M * dy - dbias - xhat * dweight)`` (M values per channel);
    evaluation: ``dx = dy * weight * invstd``. ``dweight`` and ``dbias`` are None when
    ``weight`` is None. ``out``: buffer for ``dx``; ``grads_out``: a pair of (C,) buffers for
    ``dweight`` and ``dbias``.

    After a forward with ``activation="relu"``: pass the same ``activation`` and that forward's
    output as ``y``, or the mask it wrote (its ``mask_out``) as ``mask``; the incoming gradient is
    then ``dy * (y > 0)``. ``residual=True`` (the forward
    had a residual) also returns ``dresidual``, that gradient, written in the same pass as dx
    (into ``residual_out`` when given).
    """
    layout = _Layout("x", x, axis, x_dtype)
    relu = _activation(activation)
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"residual must be a bool (whether the forward added one), got {type(residual).__name__}")
    residual = bool(residual)
    if relu:
        if (y is None) == (mask is None):
            raise ValueError("activation='relu' needs one of y (the forward's output) and mask (the mask the "
                             "forward wrote into mask_out)" + (", not both" if y is not None else ""))
        if y is not None:
            _data_array("y", y, x, layout, x_dtype, writable=False)
        else:
            _mask_array("mask", mask, x, layout, writable=False)
    elif y is not None or mask is not None:
        raise ValueError(f"{'y' if y is not None else 'mask'} comes from a ReLU forward: pass it with "
                         "activation='relu'")
    if residual_out is not None:
        if not residual:
            raise ValueError("residual_out is the buffer for dresidual, which exists only with residual=True")
        _data_array("residual_out", residual_out, x, layout, x_dtype, writable=True)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    training = bool(training)
    _data_array("dy", dy, x, layout, x_dtype, writable=False)
    weight = _channel_array("weight", weight, layout, writable=False)
    if save_mean is None or save_invstd is None:
        raise TypeError("save_mean and save_invstd are required (as returned by batch_norm_forward)")
    save_mean = _channel_array("save_mean", save_mean, layout, writable=False)
    save_invstd = _channel_array("save_invstd", save_invstd, layout, writable=False)
    dweight, dbias = _pair("grads_out", grads_out)
    if weight is not None:
        dweight = _channel_array("grads_out[0]", dweight, layout, writable=True)
        dbias = _channel_array("grads_out[1]", dbias, layout, writable=True)
    elif dweight is not None:
        raise ValueError("grads_out is for dweight and dbias, which exist only when weight is given")
    if out is not None:
        _data_array("out", out, x, layout, x_dtype, writable=True)
    _check_written_disjoint([("grads_out[0]", dweight), ("grads_out[1]", dbias), ("out", out),
                             ("residual_out", residual_out)],
                            [("dy", dy), ("x", x), ("weight", weight), ("save_mean", save_mean),
                             ("save_invstd", save_invstd), ("y", y), ("mask", mask)])
    kernels = _kernels(layout, backend)

    xp = _backend.array_module(layout.kind)
    stat_dtype = np.float64 if layout.stat_code == CODE_FLOAT64 else np.float32
    dx = xp.empty_like(x) if out is None else out
    if weight is not None:
        if dweight is None:
            dweight = xp.empty(layout.channels, stat_dtype)
        if dbias is None:
            dbias = xp.empty(layout.channels, stat_dtype)
    dresidual = None
    if residual:
        dresidual = xp.empty_like(x) if residual_out is None else residual_out
    kernels.batch_norm_backward(layout.code, dy, x, dx, layout.outer, layout.channels, layout.inner, weight,
                                save_mean, save_invstd, dweight, dbias, training, y if relu else None,
                                dresidual, relu_mask=mask)
    if residual:
        return dx, dweight, dbias, dresidual
    return dx, dweight, dbias


class BatchNorm:
    """A BatchNorm layer for NumPy (or CuPy) training code, like ``torch.nn.BatchNorm1d/2d``.

    Holds ``weight`` (ones) and ``bias`` (zeros) when ``affine``, ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` when ``track_running_stats``, and what the
    backward needs from the last forward. ``momentum=None`` gives the cumulative average
    (momentum ``1 / num_batches_tracked``). Without running statistics, evaluation uses the
    batch's statistics, as torch does. ``dtype`` is the parameters' and statistics' type:
    float32 (for float32, float16 and bfloat16 data) or float64 (for float64 data).

        y = bn.forward(x, training=True)
        dx = bn.backward(dy)            # bn.dweight, bn.dbias hold the parameter gradients

    ``activation="relu"`` gives ``y = max(0, bn(x))``, or ``max(0, bn(x) + residual)`` with
    ``forward(x, residual=z)``; then ``backward`` returns ``(dx, dresidual)``. The backward reads
    the ReLU's mask from the last forward's output: leave that array unchanged until then.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, axis=1,
                 dtype=np.float32, xp=np, backend=None, activation=None):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features must be an integer >= 1, got {num_features!r}")
        if axis not in (1, -1):
            raise ValueError(f"axis must be 1 (channels first) or -1 (channels last), got {axis!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64 (parameters and statistics), got {dtype}")
        _activation(activation)
        self.activation = activation
        self.num_features, self.axis, self.affine = int(num_features), axis, bool(affine)
        self.eps = _checks.positive("eps", eps)
        self.momentum = None if momentum is None else _checks.unit_interval("momentum", momentum, closed=True)
        self.track_running_stats = bool(track_running_stats)
        self.backend = backend
        n = self.num_features
        self.weight = xp.ones(n, dtype) if affine else None
        self.bias = xp.zeros(n, dtype) if affine else None
        self.dweight = xp.zeros(n, dtype) if affine else None
        self.dbias = xp.zeros(n, dtype) if affine else None
        self.running_mean = xp.zeros(n, dtype) if track_running_stats else None
        self.running_var = xp.ones(n, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self._save_mean, self._save_invstd = xp.zeros(n, dtype), xp.zeros(n, dtype)
        self._x, self._batch_stats = None, True
        self._y, self._residual = None, False

    def forward(self, x, training=True, out=None, residual=None):
        batch_stats = bool(training) or not self.track_running_stats
        update = bool(training) and self.track_running_stats
        momentum = 0.0
        if update:
            momentum = self.momentum if self.momentum is not None else 1.0 / (self.num_batches_tracked + 1)
        y, _, _ = batch_norm_forward(
            x, self.weight, self.bias, self.running_mean if update or not batch_stats else None,
            self.running_var if update or not batch_stats else None, training=batch_stats, momentum=momentum,
            eps=self.eps, axis=self.axis, out=out, stats_out=(self._save_mean, self._save_invstd),
            backend=self.backend, activation=self.activation, residual=residual)
        if update:
            self.num_batches_tracked += 1
        self._x, self._batch_stats = x, batch_stats
        self._y = y if self.activation is not None else None
        self._residual = residual is not None
        return y

    __call__ = forward

    def backward(self, dy, out=None, residual_out=None):
        """dx for the last forward's x, or ``(dx, dresidual)`` when that forward had a residual;
        fills ``dweight`` and ``dbias`` when affine."""
        if self._x is None:
            raise RuntimeError("backward() needs a forward() first")
        grads = (self.dweight, self.dbias) if self.affine else None
        result = batch_norm_backward(dy, self._x, self.weight, self._save_mean, self._save_invstd,
                                     axis=self.axis, training=self._batch_stats, out=out, grads_out=grads,
                                     backend=self.backend, activation=self.activation, y=self._y,
                                     residual=self._residual, residual_out=residual_out)
        return (result[0], result[3]) if self._residual else result[0]

    def parameters(self):
        return [p for p in (self.weight, self.bias) if p is not None]
