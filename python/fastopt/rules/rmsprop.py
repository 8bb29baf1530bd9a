"""RMSProp, centered and with (Nesterov) momentum (docs/algorithms.md, "RMSprop")."""
import collections

import numpy as np

from . import _base as b

NAME = "RMSprop"
NUM_VARIANTS = 6
CENTERED, MOMENTUM, NESTEROV = 1, 2, 4  # variant bits
STATES = ("square_avg", "grad_avg", "momentum_buffer")
Scalars = collections.namedtuple("RMSpropScalars", "lr alpha one_minus_alpha eps_inside eps_outside momentum")


def host_scalars(lr, alpha, eps, momentum, centered, nesterov, eps_inside_sqrt):
    variant = CENTERED if centered else 0
    if momentum > 0:
        variant |= NESTEROV if nesterov else MOMENTUM
    eps_in, eps_out = (eps, 0.0) if eps_inside_sqrt else (0.0, eps)
    return variant, Scalars(lr, alpha, 1.0 - alpha, eps_in, eps_out, momentum)


def state_names(centered, momentum):
    return ("square_avg",) + (("grad_avg",) if centered else ()) + (("momentum_buffer",) if momentum > 0 else ())


def numba_update(v, p, g, square_avg, s1, s2, k, c):
    centered = (v & CENTERED) != 0
    has_momentum = (v & (MOMENTUM | NESTEROV)) != 0
    square_avg = k.alpha * square_avg + k.one_minus_alpha * g * g
    variance = square_avg
    if centered:
        s1 = k.alpha * s1 + k.one_minus_alpha * g
        variance = square_avg - s1 * s1
    scaled = g / (np.sqrt(variance + k.eps_inside) + k.eps_outside)
    if has_momentum:
        buf = s2 if centered else s1
        buf = k.momentum * buf + scaled
        p = p - k.lr * (scaled + k.momentum * buf if (v & NESTEROV) != 0 else buf)
        if centered:
            s2 = buf
        else:
            s1 = buf
    else:
        p = p - k.lr * scaled
    return p, square_avg, s1, s2


def rmsprop(param, grad, square_avg, grad_avg=None, momentum_buffer=None, *, lr=1e-2, alpha=0.99,
            eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, nesterov=False,
            eps_inside_sqrt=False, **options):
    """RMSProp: sq = alpha sq + (1 - alpha) g^2; avg = sqrt(sq [- gavg^2 if centered]) + eps;
    p -= lr * g / avg, or through a momentum buffer (Nesterov: Deep Learning Alg. 8.6).
    ``grad_avg`` is needed when centered, ``momentum_buffer`` when momentum > 0."""
    lr = b.nonnegative("lr", lr)
    alpha = b.closed_unit("alpha", alpha)
    eps = b.epsilon("eps", eps)
    momentum = b.nonnegative("momentum", momentum)
    o = b.step_options(weight_decay, options)
    if nesterov and momentum <= 0:
        raise ValueError("nesterov requires momentum > 0")
    given = {"square_avg": square_avg, "grad_avg": grad_avg, "momentum_buffer": momentum_buffer}
    states = [(name, given[name]) for name in state_names(centered, momentum)]
    variant, scalars = host_scalars(lr, alpha, eps, momentum, centered, nesterov, eps_inside_sqrt)
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=False)


class RMSprop(b.Optimizer):
    """torch.optim.RMSprop, plus ``nesterov`` momentum (Deep Learning, Alg. 8.6) and ``eps_inside_sqrt``."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, alpha=b.closed_unit, eps=b.epsilon, weight_decay=b.nonnegative,
                              momentum=b.nonnegative, centered=b.flag, maximize=b.flag, nesterov=b.flag,
                              eps_inside_sqrt=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("nesterov", "eps_inside_sqrt"))

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 *, maximize=False, nesterov=False, eps_inside_sqrt=False, **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize, nesterov=nesterov,
                                      eps_inside_sqrt=eps_inside_sqrt), **options)

    def _check_combination(self, h):
        if h["nesterov"] and h["momentum"] <= 0:
            raise ValueError("nesterov requires momentum > 0")

    def _state_names(self, h):
        return state_names(h["centered"], h["momentum"])

    def _rule_scalars(self, h, step, p):
        variant, scalars = host_scalars(h["lr"], h["alpha"], h["eps"], h["momentum"], h["centered"],
                                        h["nesterov"], h["eps_inside_sqrt"])
        return variant, scalars, False, {}


class NumpyRMSprop(b.NumpyOptimizer):
    def __init__(self, param, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self.state_names = state_names(centered, momentum)
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


CLASSES = (RMSprop,)
FUNCTIONS = (rmsprop,)
NUMPY_BASELINES = {NAME: NumpyRMSprop}
BENCH = ((NAME, (("lr", 1e-2),)),)
