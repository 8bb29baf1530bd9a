"""NAdam with torch's momentum-decay schedule (Dozat 2016; docs/algorithms.md, "NAdam")."""
import collections

import numpy as np

from .. import _backend, _checks
from . import _base as b

NAME = "NAdam"
NUM_VARIANTS = 1
STATES = ("exp_avg", "exp_avg_sq")
Scalars = collections.namedtuple("NAdamScalars", "beta1 one_minus_beta1 beta2 one_minus_beta2 "
                                                 "bc2 eps grad_coef avg_coef")


def mu(beta1, momentum_decay, step):
    """mu_t of Dozat's momentum schedule."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def host_scalars(lr, beta1, beta2, eps, momentum_decay, step, mu_product_prev):
    """Also returns mu_product_t, the scalar state the caller keeps."""
    mu_t = mu(beta1, momentum_decay, step)
    mu_next = mu(beta1, momentum_decay, step + 1)
    mu_product = mu_product_prev * mu_t
    bc2 = 1.0 - beta2**step
    grad_coef = lr * (1.0 - mu_t) / (1.0 - mu_product)
    avg_coef = lr * mu_next / (1.0 - mu_product * mu_next)
    return 0, Scalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, bc2, eps, grad_coef, avg_coef), mu_product


def numba_update(v, p, g, m, s, s2, k, c):
    m = k.beta1 * m + k.one_minus_beta1 * g
    s = k.beta2 * s + k.one_minus_beta2 * g * g
    denom = np.sqrt(s / k.bc2) + k.eps
    p = p - k.grad_coef * g / denom - k.avg_coef * m / denom
    return p, m, s, s2


def nadam(param, grad, exp_avg, exp_avg_sq, mu_product, *, step, lr=2e-3, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, **options):
    """NAdam (Dozat 2016) with torch's momentum-decay schedule.

    ``mu_product`` is a one-element float64 NumPy array holding prod_{i<t} mu_i (1.0 before the
    first step); it is advanced in place, like every other state, unless the step is skipped.
    """
    lr, beta1, beta2, eps = b.adam_like(lr, beta1, beta2, eps)
    momentum_decay = b.nonnegative("momentum_decay", momentum_decay)
    o = b.step_options(weight_decay, options)
    step = b.step_count(step)
    if not (_backend.array_kind(mu_product) == "numpy" and mu_product.shape == (1,)
            and mu_product.dtype == "float64" and mu_product.flags.writeable):
        raise TypeError("mu_product must be a writable one-element float64 NumPy array")
    variant, scalars, new_mu_product = host_scalars(lr, beta1, beta2, eps, momentum_decay, step,
                                                    float(mu_product[0]))
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]

    def mu_product_is_apart(arrays):  # it is written after the kernel: it must not alias an array of it
        if arrays.kind == "numpy":
            _checks.check_disjoint([("mu_product", mu_product), ("param", param), ("grad", grad)] + states
                                   + ([("master_weights", o.master_weights)] if o.master_weights is not None else []))

    result = b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=decoupled_weight_decay,
                          check=mu_product_is_apart)
    if not result.skipped:
        mu_product[0] = new_mu_product
    return result


class NAdam(b.Optimizer):
    """torch.optim.NAdam; ``state["mu_product"]`` is the running product of the momentum schedule."""

    _state_array_names = STATES
    _options = b.option_table(lr=b.nonnegative, betas=b.betas, eps=b.epsilon, weight_decay=b.nonnegative,
                              momentum_decay=b.nonnegative, decoupled_weight_decay=b.flag, maximize=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)

    def _host_state(self, h):
        return {"mu_product": 1.0}

    def _scalar_token(self, p):
        return p.state["mu_product"]

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars, mu_product = host_scalars(h["lr"], beta1, beta2, h["eps"], h["momentum_decay"], step,
                                                    p.state["mu_product"])
        return variant, scalars, h["decoupled_weight_decay"], {"mu_product": mu_product}


class NumpyNAdam(b.NumpyOptimizer):
    state_names = STATES

    def __init__(self, param, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
        super().__init__(param, lr, weight_decay)
        (self.beta1, self.beta2), self.eps, self.momentum_decay = betas, eps, momentum_decay
        self.mu_product = 1.0

    def _mu(self, t):
        return self.beta1 * (1.0 - 0.5 * 0.96 ** (t * self.momentum_decay))

    def _update(self, p, g, tmp, tmp2):
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        b.numpy_moments(m, v, g, self.beta1, self.beta2, tmp)
        mu_t, mu_next = self._mu(self.t), self._mu(self.t + 1)
        self.mu_product *= mu_t
        np.divide(v, 1.0 - self.beta2**self.t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps  # denom
        np.divide(g, tmp, out=tmp2)
        tmp2 *= self.lr * (1.0 - mu_t) / (1.0 - self.mu_product)
        p -= tmp2
        np.divide(m, tmp, out=tmp2)
        tmp2 *= self.lr * mu_next / (1.0 - self.mu_product * mu_next)
        p -= tmp2


CLASSES = (NAdam,)
FUNCTIONS = (nadam,)
NUMPY_BASELINES = {NAME: NumpyNAdam}
BENCH = ((NAME, (("lr", 2e-3),)),)
