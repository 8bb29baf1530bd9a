"""Lion, the sign of an interpolated momentum (Chen et al. 2023; docs/algorithms.md, "Lion")."""
import collections

import numpy as np

from . import _base as b

NAME = "Lion"
NUM_VARIANTS = 1
STATES = ("exp_avg",)
Scalars = collections.namedtuple("LionScalars", "lr beta1 one_minus_beta1 beta2 one_minus_beta2")


def host_scalars(lr, beta1, beta2):
    return 0, Scalars(lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2)


def numba_update(v, p, g, m, s1, s2, k, c):
    interp = k.beta1 * m + k.one_minus_beta1 * g
    p = p - k.lr * b.fo_sign(interp, c[1], c[0])
    m = k.beta2 * m + k.one_minus_beta2 * g
    return p, m, s1, s2


def lion(param, grad, exp_avg, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, **options):
    """Lion (Chen et al. 2023): p -= lr * sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g.
    Weight decay is decoupled."""
    lr = b.nonnegative("lr", lr)
    beta1, beta2 = b.unit_interval("beta1", beta1), b.unit_interval("beta2", beta2)
    o = b.step_options(weight_decay, options)
    variant, scalars = host_scalars(lr, beta1, beta2)
    return b.fused_step(ID, variant, scalars, param, grad, [("exp_avg", exp_avg)], o, lr=lr, decoupled=True)


class Lion(b.Optimizer):
    """Lion (Chen et al. 2023), with the defaults of the paper's reference code; decoupled decay."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=b.betas, weight_decay=b.nonnegative, maximize=b.flag)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize), **options)

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = host_scalars(h["lr"], beta1, beta2)
        return variant, scalars, True, {}


class NumpyLion(b.NumpyOptimizer):
    state_names = STATES
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


CLASSES = (Lion,)
FUNCTIONS = (lion,)
NUMPY_BASELINES = {NAME: NumpyLion}
BENCH = ((NAME, (("lr", 1e-4), ("weight_decay", 1e-2))),)
BITSANDBYTES = {NAME: "Lion8bit"}
