"""Adam, AMSGrad and AdamW (docs/algorithms.md, "Adam")."""
import collections
import math

import numpy as np

from . import _base as b

NAME = "Adam"
NUM_VARIANTS = 2
AMSGRAD = 1  # variant
STATES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
Scalars = collections.namedtuple("AdamScalars", "beta1 one_minus_beta1 beta2 one_minus_beta2 step_size "
                                                "bc2_sqrt eps")


def host_scalars(lr, beta1, beta2, eps, amsgrad, step):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return AMSGRAD if amsgrad else 0, Scalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, math.sqrt(bc2), eps)


def numba_update(v, p, g, m, s, vmax, k, c):
    m = k.beta1 * m + k.one_minus_beta1 * g
    s = k.beta2 * s + k.one_minus_beta2 * g * g
    second = s
    if v == AMSGRAD:
        vmax = b.fo_max(vmax, s)
        second = vmax
    denom = np.sqrt(second) / k.bc2_sqrt + k.eps
    p = p - k.step_size * m / denom
    return p, m, s, vmax


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3, beta1=0.9,
         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, **options):
    """Adam (Kingma & Ba 2014), AdamW with ``decoupled_weight_decay`` (Loshchilov & Hutter 2019),
    AMSGrad with ``amsgrad`` (needs ``max_exp_avg_sq``).

    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    lr, beta1, beta2, eps = b.adam_like(lr, beta1, beta2, eps)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if amsgrad:
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    variant, scalars = host_scalars(lr, beta1, beta2, eps, amsgrad, step)
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=decoupled_weight_decay)


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
    """AdamW: :func:`adam` with decoupled weight decay, p *= 1 - lr * weight_decay first."""
    return adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
                beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
                amsgrad=amsgrad, **kwargs)


class Adam(b.Optimizer):
    """torch.optim.Adam (with ``amsgrad``; ``decoupled_weight_decay=True`` is AdamW)."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=b.betas, eps=b.epsilon, weight_decay=b.nonnegative,
                              amsgrad=b.flag, maximize=b.flag, decoupled_weight_decay=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay), **options)

    def _state_names(self, h):
        return STATES if h["amsgrad"] else STATES[:2]

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = host_scalars(h["lr"], beta1, beta2, h["eps"], h["amsgrad"], step)
        return variant, scalars, h["decoupled_weight_decay"], {}


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, **options)

    def _check_combination(self, h):
        if not h["decoupled_weight_decay"]:
            raise ValueError("AdamW decouples weight decay: decoupled_weight_decay must be True "
                             "(use Adam for coupled decay)")


class NumpyAdam(b.NumpyOptimizer):
    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        self.state_names = STATES if amsgrad else STATES[:2]
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps, self.amsgrad = betas, eps, amsgrad

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        b.numpy_moments(m, v, g, self.beta1, self.beta2, tmp)
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


CLASSES = (Adam, AdamW)
FUNCTIONS = (adam, adamw)
NUMPY_BASELINES = {"Adam": NumpyAdam, "AdamW": NumpyAdamW}
BENCH = (("Adam", (("lr", 1e-3),)), ("AdamW", (("lr", 1e-3), ("weight_decay", 1e-2))))
BITSANDBYTES = {"Adam": "Adam8bit", "AdamW": "AdamW8bit"}
