"""SGD with heavy-ball or Nesterov momentum, or the textbook velocity (docs/algorithms.md, "SGD")."""
import collections

import numpy as np

from . import _base as b

NAME = "SGD"
NUM_VARIANTS = 5
PLAIN, MOMENTUM, NESTEROV, VELOCITY, VELOCITY_NESTEROV = range(NUM_VARIANTS)
STATES = ("momentum_buffer",)
Scalars = collections.namedtuple("SGDScalars", "lr momentum one_minus_dampening first_step")


def host_scalars(lr, momentum, dampening, nesterov, velocity_form, step):
    if momentum == 0:
        variant = PLAIN
    elif velocity_form:
        variant = VELOCITY_NESTEROV if nesterov else VELOCITY
    else:
        variant = NESTEROV if nesterov else MOMENTUM
    return variant, Scalars(lr, momentum, 1.0 - dampening, 1.0 if step == 1 else 0.0)


def numba_update(v, p, g, buf, s1, s2, k, c):
    if v == PLAIN:
        p = p - k.lr * g
    elif v == MOMENTUM or v == NESTEROV:
        buf = g if k.first_step != c[0] else k.momentum * buf + k.one_minus_dampening * g
        direction = g + k.momentum * buf if v == NESTEROV else buf
        p = p - k.lr * direction
    else:
        step = k.lr * g
        buf = -step if k.first_step != c[0] else k.momentum * buf - step
        p = p + (k.momentum * buf - step if v == VELOCITY_NESTEROV else buf)
    return p, buf, s1, s2


def _check(nesterov, momentum, dampening, velocity_form, functional):
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening" if functional
                         else "Nesterov momentum requires a momentum and zero dampening")
    if velocity_form and dampening != 0:
        raise ValueError("velocity_form has no dampening; pass dampening=0")


def sgd(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
        weight_decay=0.0, velocity_form=False, step=None, **options):
    """SGD, with heavy-ball or Nesterov momentum (torch.optim.SGD's rule).

    buf = g on step 1, else momentum * buf + (1 - dampening) * g; p -= lr * (g + momentum * buf if
    nesterov else buf). ``velocity_form=True`` keeps the textbook velocity v = momentum * v - lr * g
    in ``momentum_buffer`` (Deep Learning, Alg. 8.2/8.3), which differs only when lr changes.
    ``step`` (1-based) is required with momentum: step 1 starts the buffer from the gradient.
    """
    lr = b.nonnegative("lr", lr)
    momentum = b.nonnegative("momentum", momentum)
    dampening = b.closed_unit("dampening", dampening)
    o = b.step_options(weight_decay, options)
    _check(nesterov, momentum, dampening, velocity_form, True)
    states = []
    if momentum != 0:
        if step is None:
            raise TypeError("step is required with momentum (step 1 starts the buffer from the gradient)")
        step = b.step_count(step)
        states = [("momentum_buffer", momentum_buffer)]
    variant, scalars = host_scalars(lr, momentum, dampening, nesterov, velocity_form, step)
    return b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=False)


class SGD(b.Optimizer):
    """torch.optim.SGD: plain, heavy-ball or Nesterov momentum; ``velocity_form`` keeps the
    textbook velocity instead (Deep Learning, Alg. 8.2)."""

    _state_array_names = STATES
    _rule_needs_step = False
    _options = b.option_table(lr=b.nonnegative, momentum=b.nonnegative, dampening=b.closed_unit,
                              weight_decay=b.nonnegative, nesterov=b.flag, maximize=b.flag, velocity_form=b.flag)
    _optional = frozenset(b.TORCH_NOOPS + ("velocity_form",))

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, velocity_form=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, velocity_form=velocity_form), **options)

    def _check_combination(self, h):
        _check(h["nesterov"], h["momentum"], h["dampening"], h["velocity_form"], False)

    def _state_names(self, h):
        return STATES if h["momentum"] != 0 else ()

    def _scalar_token(self, p):
        return "momentum_buffer" in p.fresh

    def _rule_scalars(self, h, step, p):
        # The buffer starts from the gradient on the step it is created (torch semantics).
        first = "momentum_buffer" in p.fresh
        variant, scalars = host_scalars(h["lr"], h["momentum"], h["dampening"], h["nesterov"],
                                        h["velocity_form"], 1 if first else 2)
        return variant, scalars, False, {}


class NumpySGD(b.NumpyOptimizer):
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


CLASSES = (SGD,)
FUNCTIONS = (sgd,)
NUMPY_BASELINES = {NAME: NumpySGD}
BENCH = ((NAME, (("lr", 1e-2), ("momentum", 0.9))),)
