"""RAdam, Adam with a rectified adaptive step (Liu et al. 2020; docs/algorithms.md, "RAdam")."""
import collections
import math

import numpy as np

from . import _base as b

NAME = "RAdam"
NUM_VARIANTS = 1
STATES = ("exp_avg", "exp_avg_sq")
Scalars = collections.namedtuple("RAdamScalars", "beta1 one_minus_beta1 beta2 one_minus_beta2 rectified "
                                                 "adaptive_step plain_step eps")


def _rectification(beta2, step):
    """rho_t > 5 and r_t (docs/algorithms.md)."""
    bc2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bc2
    if not rho_t > 5.0:
        return False, 0.0
    return True, math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def host_scalars(lr, beta1, beta2, eps, step):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    rectified, r = _rectification(beta2, step)
    adaptive_step = lr * r * math.sqrt(bc2) / bc1 if rectified else 0.0
    return 0, Scalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 if rectified else 0.0, adaptive_step,
                      lr / bc1, eps)


def numba_update(v, p, g, m, s, s2, k, c):
    m = k.beta1 * m + k.one_minus_beta1 * g
    s = k.beta2 * s + k.one_minus_beta2 * g * g
    if k.rectified != c[0]:
        step = k.adaptive_step * m / (np.sqrt(s) + k.eps)
    else:
        step = k.plain_step * m
    p = p - step
    return p, m, s, s2


def radam(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, **options):
    """RAdam (Liu et al. 2020): Adam's step times the rectification r_t once rho_t > 5, a plain
    momentum step before."""
    lr, beta1, beta2, eps = b.adam_like(lr, beta1, beta2, eps)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    variant, scalars = host_scalars(lr, beta1, beta2, eps, step)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=decoupled_weight_decay)


class RAdam(b.Optimizer):
    """torch.optim.RAdam (``decoupled_weight_decay`` supported)."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=b.betas, eps=b.epsilon, weight_decay=b.nonnegative,
                              decoupled_weight_decay=b.flag, maximize=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize), **options)

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = host_scalars(h["lr"], beta1, beta2, h["eps"], step)
        return variant, scalars, h["decoupled_weight_decay"], {}


class NumpyRAdam(b.NumpyOptimizer):
    state_names = STATES

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps = betas, eps

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        b.numpy_moments(m, v, g, self.beta1, self.beta2, tmp)
        t = self.t
        bc1, bc2 = 1.0 - self.beta1**t, 1.0 - self.beta2**t
        rectified, r = _rectification(self.beta2, t)
        if rectified:
            np.sqrt(v, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= self.lr * r * math.sqrt(bc2) / bc1
        else:
            np.multiply(m, self.lr / bc1, out=tmp)
        p -= tmp


CLASSES = (RAdam,)
FUNCTIONS = (radam,)
NUMPY_BASELINES = {NAME: NumpyRAdam}
BENCH = ((NAME, (("lr", 1e-3),)),)
