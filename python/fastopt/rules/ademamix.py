"""AdEMAMix: Adam with a slow momentum mixed in (Pagliardini et al. 2024; docs/algorithms.md,
"AdEMAMix"), with the alpha and beta3 warm-ups of bitsandbytes' AdEMAMix."""
import collections
import math

import numpy as np

from . import _base as b

NAME = "AdEMAMix"
NUM_VARIANTS = 1
STATES = ("exp_avg", "exp_avg_sq", "exp_avg_slow")
Scalars = collections.namedtuple("AdEMAMixScalars", "beta1 one_minus_beta1 beta2 one_minus_beta2 beta3 "
                                                    "one_minus_beta3 step_size slow_size bc2_sqrt eps")


def betas3(name, value):
    """(beta1, beta2, beta3), each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be a triple (beta1, beta2, beta3), got {value!r}")
    return tuple(b.unit_interval(f"{name}[{i}]", beta) for i, beta in enumerate(value))


def warmup_length(name, value):
    """None (no warm-up) or a positive number of steps."""
    return None if value is None else b.positive(name, value)


def alpha_at(alpha, t_alpha, step):
    """The slow momentum's weight at `step`: a linear warm-up over t_alpha steps."""
    return alpha if t_alpha is None else min(step * alpha / t_alpha, alpha)


def beta3_at(beta1, beta3, t_beta3, step):
    """beta3 at `step`: the warm-up from beta1 to beta3 over t_beta3 steps that is linear in the
    half-life 1 / log(beta), as bitsandbytes and the paper compute it."""
    if t_beta3 is None:
        return beta3
    ln_beta1, ln_beta3 = math.log(beta1), math.log(beta3)
    s = step / t_beta3
    return min(math.exp(ln_beta1 * ln_beta3 / ((1.0 - s) * ln_beta3 + s * ln_beta1)), beta3)


def _check_warmups(beta1, beta3, t_beta3):
    if t_beta3 is not None and (beta1 == 0.0 or beta3 == 0.0):
        raise ValueError("the beta3 warm-up (t_beta3) interpolates log(beta1) and log(beta3): "
                         "beta1 and beta3 must be > 0")


def host_scalars(lr, beta1, beta2, beta3, alpha, t_alpha, t_beta3, eps, step):
    beta3_t = beta3_at(beta1, beta3, t_beta3, step)
    alpha_t = alpha_at(alpha, t_alpha, step)
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return 0, Scalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, beta3_t, 1.0 - beta3_t, lr / bc1, lr * alpha_t,
                      math.sqrt(bc2), eps)


def numba_update(v, p, g, m1, s, m2, k, c):
    m1 = k.beta1 * m1 + k.one_minus_beta1 * g
    s = k.beta2 * s + k.one_minus_beta2 * g * g
    m2 = k.beta3 * m2 + k.one_minus_beta3 * g
    denom = np.sqrt(s) / k.bc2_sqrt + k.eps
    p = p - (k.step_size * m1 + k.slow_size * m2) / denom
    return p, m1, s, m2


def _resolve_t(t_alpha, t_beta3, t_alpha_beta3):
    """t_alpha_beta3 (pytorch_optimizer's name for one warm-up of both) sets t_alpha and t_beta3."""
    if t_alpha_beta3 is None:
        return t_alpha, t_beta3
    for name, value in (("t_alpha", t_alpha), ("t_beta3", t_beta3)):
        if value is not None and value != t_alpha_beta3:
            raise ValueError(f"t_alpha_beta3={t_alpha_beta3!r} sets both warm-ups, but {name}={value!r} "
                             "differs: give one or the other")
    return t_alpha_beta3, t_alpha_beta3


def ademamix(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
             beta3=0.9999, alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-8, weight_decay=1e-2, **options):
    """AdEMAMix (Pagliardini et al. 2024), decoupled weight decay (p *= 1 - lr * weight_decay first).

    m1 = b1 m1 + (1 - b1) g; m2 = b3_t m2 + (1 - b3_t) g; v = b2 v + (1 - b2) g^2;
    p -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(v) / sqrt(1 - b2^t) + eps), with alpha_t and
    b3_t warmed up over t_alpha and t_beta3 steps (None: no warm-up).
    """
    lr, eps = b.nonnegative("lr", lr), b.epsilon("eps", eps)
    beta1, beta2, beta3 = (b.unit_interval(name, beta) for name, beta in
                           (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)))
    alpha = b.nonnegative("alpha", alpha)
    t_alpha, t_beta3 = warmup_length("t_alpha", t_alpha), warmup_length("t_beta3", t_beta3)
    _check_warmups(beta1, beta3, t_beta3)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    variant, scalars = host_scalars(lr, beta1, beta2, beta3, alpha, t_alpha, t_beta3, eps, step)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("exp_avg_slow", exp_avg_slow)]
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=True)


class AdEMAMix(b.Optimizer):
    """AdEMAMix with bitsandbytes' defaults and argument order; decoupled weight decay.

    ``t_alpha`` / ``t_beta3`` warm alpha and beta3 up (None: none); ``t_alpha_beta3`` (the name
    pytorch_optimizer uses) sets both."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=betas3, alpha=b.nonnegative, t_alpha=warmup_length,
                              t_beta3=warmup_length, eps=b.epsilon, weight_decay=b.nonnegative, maximize=b.flag)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=1e-2, *, t_alpha_beta3=None, maximize=False, **options):
        t_alpha_beta3 = warmup_length("t_alpha_beta3", t_alpha_beta3)
        t_alpha, t_beta3 = _resolve_t(t_alpha, t_beta3, t_alpha_beta3)
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                                      weight_decay=weight_decay, maximize=maximize), **options)

    def add_param_group(self, param_group):
        """A group may give t_alpha_beta3 too: it becomes the group's t_alpha and t_beta3."""
        if isinstance(param_group, dict) and "t_alpha_beta3" in param_group:
            param_group = dict(param_group)
            both = warmup_length("t_alpha_beta3", param_group.pop("t_alpha_beta3"))
            t_alpha, t_beta3 = _resolve_t(param_group.get("t_alpha"), param_group.get("t_beta3"), both)
            param_group.update(t_alpha=t_alpha, t_beta3=t_beta3)
        super().add_param_group(param_group)

    def _check_combination(self, h):
        beta1, _, beta3 = h["betas"]
        _check_warmups(beta1, beta3, h["t_beta3"])

    def _rule_scalars(self, h, step, p):
        beta1, beta2, beta3 = h["betas"]
        variant, scalars = host_scalars(h["lr"], beta1, beta2, beta3, h["alpha"], h["t_alpha"], h["t_beta3"],
                                        h["eps"], step)
        return variant, scalars, True, {}


class NumpyAdEMAMix(b.NumpyOptimizer):
    state_names = STATES
    decoupled = True

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=1e-2):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2, self.beta3), self.alpha, self.eps = betas, alpha, eps
        self.t_alpha, self.t_beta3 = t_alpha, t_beta3

    def _update(self, p, g, tmp, tmp2):
        m1, v, m2 = self.state["exp_avg"], self.state["exp_avg_sq"], self.state["exp_avg_slow"]
        b.numpy_moments(m1, v, g, self.beta1, self.beta2, tmp)
        beta3 = beta3_at(self.beta1, self.beta3, self.t_beta3, self.t)
        m2 *= beta3
        np.multiply(g, 1.0 - beta3, out=tmp)
        m2 += tmp
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(1.0 - self.beta2**self.t)
        tmp += self.eps
        np.multiply(m1, self.lr / (1.0 - self.beta1**self.t), out=tmp2)
        p -= np.divide(tmp2, tmp, out=tmp2)
        np.multiply(m2, self.lr * alpha_at(self.alpha, self.t_alpha, self.t), out=tmp2)
        p -= np.divide(tmp2, tmp, out=tmp2)


CLASSES = (AdEMAMix,)
FUNCTIONS = (ademamix,)
NUMPY_BASELINES = {NAME: NumpyAdEMAMix}
BENCH = ((NAME, (("lr", 1e-3),)),)
