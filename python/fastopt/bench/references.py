"""What a user would otherwise run: NumPy with in-place ufuncs, and torch when it is installed.

The NumPy optimizers follow docs/algorithms.md line by line, in the dtype of the arrays they are given:
in float32 they are the NumPy baseline the benchmark times; in float64 they are the reference
every timed implementation is checked against. They take the constructor keywords of
fastopt.optim / torch.optim, so one dict of hyper-parameters configures all three.
"""
import math

import numpy as np


class NumpyOptimizer:
    """Base: one parameter array, state arrays named as in torch.optim, scratch allocated once."""

    state_names = ()
    decoupled = False

    def __init__(self, param, lr, weight_decay=0.0):
        self.param = param
        self.lr = lr
        self.weight_decay = weight_decay
        self.t = 0
        self.state = {name: np.zeros_like(param) for name in self.state_names}
        self._scratch = [np.empty_like(param), np.empty_like(param)]
        self._decayed_grad = np.empty_like(param) if weight_decay and not self.decoupled else None

    def step(self, grad):
        self.t += 1
        p = self.param
        if self.weight_decay:
            if self.decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                np.multiply(p, self.weight_decay, out=self._decayed_grad)
                self._decayed_grad += grad
                grad = self._decayed_grad
        self._update(p, grad, *self._scratch)

    def _update(self, p, g, tmp, tmp2):
        raise NotImplementedError


class NumpySGD(NumpyOptimizer):
    def __init__(self, param, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.state_names = ("momentum_buffer",) if momentum else ()
        super().__init__(param, lr, weight_decay)
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov

    def _update(self, p, g, tmp, tmp2):
        if not self.momentum:
            np.multiply(g, self.lr, out=tmp)
            p -= tmp
            return
        buf = self.state["momentum_buffer"]
        if self.t == 1:
            buf[...] = g
        else:
            buf *= self.momentum
            np.multiply(g, 1.0 - self.dampening, out=tmp)
            buf += tmp
        direction = buf
        if self.nesterov:
            np.multiply(buf, self.momentum, out=tmp)
            tmp += g
            direction = tmp
        np.multiply(direction, self.lr, out=tmp)
        p -= tmp


class NumpyAdagrad(NumpyOptimizer):
    state_names = ("sum",)

    def __init__(self, param, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10):
        super().__init__(param, lr, weight_decay)
        self.lr_decay, self.eps = lr_decay, eps
        self.state["sum"][...] = initial_accumulator_value

    def _update(self, p, g, tmp, tmp2):
        clr = self.lr / (1.0 + (self.t - 1) * self.lr_decay)
        s = self.state["sum"]
        np.multiply(g, g, out=tmp)
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += self.eps
        np.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp


class NumpyRMSprop(NumpyOptimizer):
    def __init__(self, param, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self.state_names = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum_buffer",) if momentum else ())
        super().__init__(param, lr, weight_decay)
        self.alpha, self.eps, self.momentum, self.centered = alpha, eps, momentum, centered

    def _update(self, p, g, tmp, tmp2):
        sq = self.state["square_avg"]
        sq *= self.alpha
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.alpha
        sq += tmp
        if self.centered:
            gavg = self.state["grad_avg"]
            gavg *= self.alpha
            np.multiply(g, 1.0 - self.alpha, out=tmp)
            gavg += tmp
            np.multiply(gavg, gavg, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += self.eps
        np.divide(g, tmp, out=tmp)
        if self.momentum:
            buf = self.state["momentum_buffer"]
            buf *= self.momentum
            buf += tmp
            np.multiply(buf, self.lr, out=tmp)
        else:
            tmp *= self.lr
        p -= tmp


class NumpyAdadelta(NumpyOptimizer):
    state_names = ("square_avg", "acc_delta")

    def __init__(self, param, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        super().__init__(param, lr, weight_decay)
        self.rho, self.eps = rho, eps

    def _update(self, p, g, tmp, tmp2):
        sq, acc = self.state["square_avg"], self.state["acc_delta"]
        sq *= self.rho
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.rho
        sq += tmp
        np.add(acc, self.eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        np.add(sq, self.eps, out=tmp2)
        np.sqrt(tmp2, out=tmp2)
        tmp /= tmp2
        tmp *= g  # delta
        acc *= self.rho
        np.multiply(tmp, tmp, out=tmp2)
        tmp2 *= 1.0 - self.rho
        acc += tmp2
        tmp *= self.lr
        p -= tmp


def _moments(m, v, g, beta1, beta2, tmp):
    m *= beta1
    np.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp


class NumpyAdam(NumpyOptimizer):
    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps, self.amsgrad = betas, eps, amsgrad

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        _moments(m, v, g, self.beta1, self.beta2, tmp)
        second = v
        if self.amsgrad:
            second = self.state["max_exp_avg_sq"]
            np.maximum(second, v, out=second)
        bc1, bc2 = 1.0 - self.beta1**self.t, 1.0 - self.beta2**self.t
        np.sqrt(second, out=tmp)
        tmp /= math.sqrt(bc2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr / bc1
        p -= tmp


class NumpyAdamW(NumpyAdam):
    decoupled = True

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(param, lr, betas, eps, weight_decay, amsgrad)


class NumpyAdamax(NumpyOptimizer):
    state_names = ("exp_avg", "exp_inf")

    def __init__(self, param, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps = betas, eps

    def _update(self, p, g, tmp, tmp2):
        m, u = self.state["exp_avg"], self.state["exp_inf"]
        m *= self.beta1
        np.multiply(g, 1.0 - self.beta1, out=tmp)
        m += tmp
        u *= self.beta2
        np.abs(g, out=tmp)
        tmp += self.eps
        np.maximum(u, tmp, out=u)
        np.divide(m, u, out=tmp)
        tmp *= self.lr / (1.0 - self.beta1**self.t)
        p -= tmp


class NumpyNAdam(NumpyOptimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, param, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps, self.momentum_decay = betas, eps, momentum_decay
        self.mu_product = 1.0

    def _mu(self, t):
        return self.beta1 * (1.0 - 0.5 * 0.96 ** (t * self.momentum_decay))

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        _moments(m, v, g, self.beta1, self.beta2, tmp)
        mu, mu_next = self._mu(self.t), self._mu(self.t + 1)
        self.mu_product *= mu
        np.divide(v, 1.0 - self.beta2**self.t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps  # denom
        np.divide(g, tmp, out=tmp2)
        tmp2 *= self.lr * (1.0 - mu) / (1.0 - self.mu_product)
        p -= tmp2
        np.divide(m, tmp, out=tmp2)
        tmp2 *= self.lr * mu_next / (1.0 - self.mu_product * mu_next)
        p -= tmp2


class NumpyRAdam(NumpyOptimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps = betas, eps

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        _moments(m, v, g, self.beta1, self.beta2, tmp)
        t = self.t
        bc1, bc2 = 1.0 - self.beta1**t, 1.0 - self.beta2**t
        rho_inf = 2.0 / (1.0 - self.beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * self.beta2**t / bc2
        if rho_t > 5.0:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            np.sqrt(v, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= self.lr * r * math.sqrt(bc2) / bc1
        else:
            np.multiply(m, self.lr / bc1, out=tmp)
        p -= tmp


class NumpyLion(NumpyOptimizer):
    state_names = ("exp_avg",)
    decoupled = True

    def __init__(self, param, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(param, lr, weight_decay)
        self.beta1, self.beta2 = betas

    def _update(self, p, g, tmp, tmp2):
        m = self.state["exp_avg"]
        np.multiply(m, self.beta1, out=tmp)
        np.multiply(g, 1.0 - self.beta1, out=tmp2)
        tmp += tmp2
        np.sign(tmp, out=tmp)
        tmp *= self.lr
        p -= tmp
        m *= self.beta2
        np.multiply(g, 1.0 - self.beta2, out=tmp2)
        m += tmp2


NUMPY_OPTIMIZERS = {
    "SGD": NumpySGD, "Adagrad": NumpyAdagrad, "RMSprop": NumpyRMSprop, "Adadelta": NumpyAdadelta,
    "Adam": NumpyAdam, "AdamW": NumpyAdamW, "Adamax": NumpyAdamax, "NAdam": NumpyNAdam,
    "RAdam": NumpyRAdam, "Lion": NumpyLion,
}


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
    """torch.optim's class of that name, or None (torch absent, or no such optimizer, e.g. Lion)."""
    try:
        import torch
    except ImportError:
        return None
    return getattr(torch.optim, name, None)
