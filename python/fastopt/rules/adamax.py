"""Adamax, Adam's infinity-norm form (Kingma & Ba 2014, sec. 7; docs/algorithms.md, "Adamax")."""
import collections

import numpy as np

from . import _base as b

NAME = "Adamax"
NUM_VARIANTS = 1
STATES = ("exp_avg", "exp_inf")
Scalars = collections.namedtuple("AdamaxScalars", "beta1 one_minus_beta1 beta2 clr eps")


def host_scalars(lr, beta1, beta2, eps, step):
    return 0, Scalars(beta1, 1.0 - beta1, beta2, lr / (1.0 - beta1**step), eps)


def numba_update(v, p, g, m, u, s2, k, c):
    m = k.beta1 * m + k.one_minus_beta1 * g
    u = b.fo_max(k.beta2 * u, np.abs(g) + k.eps)
    p = p - k.clr * m / u
    return p, m, u, s2


def adamax(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, **options):
    """Adamax (Kingma & Ba 2014, sec. 7): u = max(b2 u, |g| + eps); p -= lr / (1 - b1^t) * m / u."""
    lr, beta1, beta2, eps = b.adam_like(lr, beta1, beta2, eps)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    variant, scalars = host_scalars(lr, beta1, beta2, eps, step)
    states = [("exp_avg", exp_avg), ("exp_inf", exp_inf)]
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=False)


class Adamax(b.Optimizer):
    """torch.optim.Adamax."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=b.betas, eps=b.epsilon, weight_decay=b.nonnegative,
                              maximize=b.flag)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         **options)

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = host_scalars(h["lr"], beta1, beta2, h["eps"], step)
        return variant, scalars, False, {}


class NumpyAdamax(b.NumpyOptimizer):
    state_names = STATES

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


CLASSES = (Adamax,)
FUNCTIONS = (adamax,)
NUMPY_BASELINES = {NAME: NumpyAdamax}
BENCH = ((NAME, (("lr", 2e-3),)),)
