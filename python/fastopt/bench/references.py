"""What a user would otherwise run: NumPy with in-place ufuncs, and torch when it is installed.

The NumPy optimizers follow docs/algorithms.md line by line, in the dtype of the arrays they are given:
in float32 they are the NumPy baseline the benchmark times; in float64 they are the reference
every timed implementation is checked against. They take the constructor keywords of
fastopt.optim / torch.optim, so one dict of hyper-parameters configures all three.
"""
import math

import numpy as np

from ..rules import BUILTIN as _RULES
from ..rules._base import NumpyOptimizer  # noqa: F401  (the base of each rule's baseline)

# Each rule's NumPy baseline lives in its module (fastopt.rules), by class name.
NUMPY_OPTIMIZERS = {name: cls for rule in _RULES for name, cls in rule.NUMPY_BASELINES.items()}
# Torch optimizers outside torch.optim that users run for a rule torch lacks (a rule module's
# optional TORCH_REFERENCES: class name -> "package.Class").
TORCH_REFERENCES = {name: path for rule in _RULES for name, path in getattr(rule, "TORCH_REFERENCES", {}).items()}


def clip_factor(norm, max_norm):
    """docs/algorithms.md's clip factor (torch.nn.utils.clip_grad_norm_)."""
    return max_norm / (norm + 1e-6) if norm > max_norm else 1.0


# ---- BatchNorm -----------------------------------------------------------------------------------

def _channels_last_2d(x, axis):
    """x as (M, C) when channels are last, else None (channels-first is reduced per channel)."""
    return x.reshape(-1, x.shape[-1]) if axis in (-1, x.ndim - 1) else None


def _reduce_axes(x, axis):
    axis = axis % x.ndim
    return tuple(i for i in range(x.ndim) if i != axis), axis


def _bshape(x, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = x.shape[axis % x.ndim]
    return shape


class NumpyBatchNorm:
    """Training-mode BatchNorm in NumPy, outputs and scratch allocated once (a careful user's code).

    Two-pass statistics (mean, then the centred sum of squares), in the dtype of x; float64 input
    makes it the reference the fastopt kernels are checked against.
    """

    def __init__(self, x, axis=1, eps=1e-5, momentum=0.1):
        self.axis, self.eps, self.momentum = axis, eps, momentum
        self.reduce, axis_index = _reduce_axes(x, axis)
        self.count = x.size // x.shape[axis_index]
        self.bshape = _bshape(x, axis)
        self.centred = np.empty_like(x)
        self.y = np.empty_like(x)
        self.dx = np.empty_like(x)

    def forward(self, x, weight, bias, running_mean, running_var):
        mean = x.mean(axis=self.reduce)
        np.subtract(x, mean.reshape(self.bshape), out=self.centred)
        np.multiply(self.centred, self.centred, out=self.y)
        var = self.y.mean(axis=self.reduce)
        invstd = 1.0 / np.sqrt(var + self.eps)
        scale = (weight * invstd).astype(x.dtype)
        np.multiply(self.centred, scale.reshape(self.bshape), out=self.y)
        self.y += bias.reshape(self.bshape).astype(x.dtype)
        if running_mean is not None:
            m = self.momentum
            running_mean *= 1.0 - m
            running_mean += m * mean
            running_var *= 1.0 - m
            running_var += m * var * self.count / (self.count - 1)
        return self.y, mean, invstd

    def backward(self, dy, x, weight, mean, invstd):
        dbias = dy.sum(axis=self.reduce)
        np.subtract(x, mean.reshape(self.bshape).astype(x.dtype), out=self.centred)
        np.multiply(self.centred, dy, out=self.dx)
        dweight = self.dx.sum(axis=self.reduce) * invstd
        # dx = w * invstd / M * (M dy - dbias - xhat * dweight)
        k = (invstd * dweight / self.count).astype(x.dtype)  # xhat * dweight / M = centred * k
        np.multiply(self.centred, k.reshape(self.bshape), out=self.dx)
        np.subtract(dy, self.dx, out=self.dx)
        self.dx -= (dbias / self.count).reshape(self.bshape).astype(x.dtype)
        self.dx *= (weight * invstd).reshape(self.bshape).astype(x.dtype)
        return self.dx, dweight, dbias


def torch_optimizer_class(name):
    """torch.optim's class of that name, or None (torch absent, or a rule torch lacks)."""
    try:
        import torch
    except ImportError:
        return None
    return getattr(torch.optim, name, None)


def torch_reference_class(name):
    """(class, "package.Class") of the torch optimizer outside torch.optim users run for `name`,
    or None when there is none or its package is not installed."""
    path = TORCH_REFERENCES.get(name)
    if path is None:
        return None
    import importlib

    module, _, cls = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls), path
    except ImportError:
        return None
