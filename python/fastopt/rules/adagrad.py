"""AdaGrad (Duchi et al. 2011; docs/algorithms.md, "Adagrad")."""
import collections

import numpy as np

from . import _base as b

NAME = "Adagrad"
NUM_VARIANTS = 1
STATES = ("sum",)
Scalars = collections.namedtuple("AdagradScalars", "clr eps_inside eps_outside")


def host_scalars(lr, lr_decay, eps, eps_inside_sqrt, step):
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return 0, Scalars(clr, eps, 0.0) if eps_inside_sqrt else Scalars(clr, 0.0, eps)


def numba_update(v, p, g, total, s1, s2, k, c):
    total = total + g * g
    p = p - k.clr * g / (np.sqrt(total + k.eps_inside) + k.eps_outside)
    return p, total, s1, s2


def adagrad(param, grad, sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            eps_inside_sqrt=False, **options):
    """AdaGrad (Duchi et al. 2011): sum += g^2; p -= clr * g / (sqrt(sum) + eps),
    clr = lr / (1 + (step - 1) lr_decay). ``eps_inside_sqrt``: sqrt(sum + eps)."""
    lr = b.nonnegative("lr", lr)
    lr_decay = b.nonnegative("lr_decay", lr_decay)
    eps = b.epsilon("eps", eps)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    variant, scalars = host_scalars(lr, lr_decay, eps, eps_inside_sqrt, step)
    return b.fused_step(ID, variant, scalars, param, grad, [("sum", sum)], o, lr=lr, decoupled=False)


class Adagrad(b.Optimizer):
    """torch.optim.Adagrad; ``eps_inside_sqrt`` puts eps under the square root."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, lr_decay=b.nonnegative, weight_decay=b.nonnegative,
                              initial_accumulator_value=b.nonnegative, eps=b.epsilon, maximize=b.flag,
                              eps_inside_sqrt=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("eps_inside_sqrt",))
    _eager_states = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 *, maximize=False, eps_inside_sqrt=False, **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize, eps_inside_sqrt=eps_inside_sqrt), **options)

    def _init_value(self, h, name):
        return h["initial_accumulator_value"]

    def _rule_scalars(self, h, step, p):
        variant, scalars = host_scalars(h["lr"], h["lr_decay"], h["eps"], h["eps_inside_sqrt"], step)
        return variant, scalars, False, {}


class NumpyAdagrad(b.NumpyOptimizer):
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


CLASSES = (Adagrad,)
FUNCTIONS = (adagrad,)
NUMPY_BASELINES = {NAME: NumpyAdagrad}
BENCH = ((NAME, (("lr", 1e-2),)),)
