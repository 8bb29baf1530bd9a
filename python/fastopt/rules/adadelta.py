"""AdaDelta (Zeiler 2012; docs/algorithms.md, "Adadelta")."""
import collections

import numpy as np

from . import _base as b

NAME = "Adadelta"
NUM_VARIANTS = 1
STATES = ("square_avg", "acc_delta")
Scalars = collections.namedtuple("AdadeltaScalars", "lr rho one_minus_rho eps")


def host_scalars(lr, rho, eps):
    return 0, Scalars(lr, rho, 1.0 - rho, eps)


def numba_update(v, p, g, square_avg, acc_delta, s2, k, c):
    square_avg = k.rho * square_avg + k.one_minus_rho * g * g
    delta = np.sqrt(acc_delta + k.eps) / np.sqrt(square_avg + k.eps) * g
    acc_delta = k.rho * acc_delta + k.one_minus_rho * delta * delta
    p = p - k.lr * delta
    return p, square_avg, acc_delta, s2


def adadelta(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, **options):
    """AdaDelta (Zeiler 2012): delta = sqrt(acc + eps) / sqrt(sq + eps) * g; p -= lr * delta."""
    lr = b.nonnegative("lr", lr)
    rho = b.closed_unit("rho", rho)
    eps = b.epsilon("eps", eps)
    o = b.step_options(weight_decay, options)
    variant, scalars = host_scalars(lr, rho, eps)
    states = [("square_avg", square_avg), ("acc_delta", acc_delta)]
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=False)


class Adadelta(b.Optimizer):
    """torch.optim.Adadelta (lr=1 is Zeiler's original)."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, rho=b.closed_unit, eps=b.epsilon, weight_decay=b.nonnegative,
                              maximize=b.flag)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         **options)

    def _rule_scalars(self, h, step, p):
        variant, scalars = host_scalars(h["lr"], h["rho"], h["eps"])
        return variant, scalars, False, {}


class NumpyAdadelta(b.NumpyOptimizer):
    state_names = STATES

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


CLASSES = (Adadelta,)
FUNCTIONS = (adadelta,)
NUMPY_BASELINES = {NAME: NumpyAdadelta}
BENCH = ((NAME, (("lr", 1.0),)),)
