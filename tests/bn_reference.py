"""Float64 NumPy reference of docs/algorithms.md's BatchNorm, written from the formulas
(two passes: mean, then centred squares) with nothing shared with the kernels."""
import numpy as np


def channels_last(a, axis):
    """a as float64 (M, C): every value of a channel in one column."""
    a = np.asarray(a).astype(np.float64)
    if axis != -1 and axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    return a.reshape(-1, a.shape[-1])


def from_channels_last(a2, shape, axis):
    shape = tuple(shape)
    if axis == -1 or axis == len(shape) - 1:
        return a2.reshape(shape)
    moved = shape[:axis] + shape[axis + 1:] + (shape[axis],)
    return np.moveaxis(a2.reshape(moved), -1, axis)


def forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True, momentum=0.1,
            eps=1e-5, axis=1):
    """(y, mean, invstd, new_running_mean, new_running_var), all float64."""
    x2 = channels_last(x, axis)
    m, c = x2.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    new_rm = None if running_mean is None else np.asarray(running_mean, np.float64).copy()
    new_rv = None if running_var is None else np.asarray(running_var, np.float64).copy()
    if training:
        mean = x2.mean(axis=0)
        mean = mean + (x2 - mean).mean(axis=0)  # one correction pass: exact to rounding for any offset
        var = ((x2 - mean) ** 2).mean(axis=0)
        if new_rm is not None:
            new_rm = (1 - momentum) * new_rm + momentum * mean
            new_rv = (1 - momentum) * new_rv + momentum * var * m / (m - 1)
    else:
        mean, var = new_rm, new_rv
    invstd = 1 / np.sqrt(var + eps)
    y2 = (x2 - mean) * invstd * w + b
    return from_channels_last(y2, np.shape(x), axis), mean, invstd, new_rm, new_rv


def backward(dy, x, weight, mean, invstd, *, training=True, axis=1):
    """(dx, dweight, dbias) in float64, from the given statistics."""
    x2, dy2 = channels_last(x, axis), channels_last(dy, axis)
    m, c = x2.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    mean, invstd = np.asarray(mean, np.float64), np.asarray(invstd, np.float64)
    xhat = (x2 - mean) * invstd
    dbias = dy2.sum(axis=0)
    dweight = (dy2 * xhat).sum(axis=0)
    if training:
        dx2 = w * invstd / m * (m * dy2 - dbias - xhat * dweight)
    else:
        dx2 = dy2 * w * invstd
    return from_channels_last(dx2, np.shape(x), axis), dweight, dbias
