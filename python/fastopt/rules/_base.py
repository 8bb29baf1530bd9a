"""What every rule module builds on: the optimizer base class, the option checks, the functional
step with its shared keywords, and the NumPy baseline's base class (docs/contributing.md)."""
import collections
import math

import numpy as np

from .. import _backend, _blockwise_step, _checks, _ema, _kernel_call, _scalars
from .._kernel_call import KernelCall
from .._groups import TORCH_NOOPS, _betas, _flag, option_table  # noqa: F401
from .._optimizer import OptimizerCore  # noqa: F401

nonnegative = _checks.nonnegative
positive = _checks.positive
unit_interval = _checks.unit_interval
step_count = _checks.step_count
betas = _betas
flag = _flag


def epsilon(name, value):
    """A denominator's eps: >= 0, as torch.optim (0 gives the division by zero torch gives)."""
    return _checks.nonnegative(name, value)


def closed_unit(name, value):
    return _checks.unit_interval(name, value, closed=True)


def adam_like(lr, beta1, beta2, eps):
    """lr, beta1, beta2 and eps of the Adam family, checked."""
    return (nonnegative("lr", lr), unit_interval("beta1", beta1), unit_interval("beta2", beta2),
            epsilon("eps", eps))


class Optimizer(OptimizerCore):
    """Base class of fastopt's optimizers (torch.optim.Optimizer's interface)."""

    def _state_names(self, h):
        """The state arrays a step with options `h` uses: all of them unless the rule says."""
        return self._state_array_names

    def _resolve_state_dtype(self, state_dtype, param_code, kind):
        from .. import optim  # its dtype names: it imports this module
        return optim.resolve_state_dtype(state_dtype, param_code, kind)


# ---- the functional layer --------------------------------------------------------------------

StepResult = collections.namedtuple("StepResult", ["grad_norm", "skipped"])
_NOT_SKIPPED = StepResult(None, False)

# The keywords every functional entry point takes besides its rule's own (fastopt.functional's
# docstring describes them), with their defaults.
STEP_KEYWORDS = dict(maximize=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
                     master_weights=None, param_dtype=None, grad_dtype=None, state_dtype=None,
                     rounding_seed=None, backend=None, ema=None, ema_decay=None)
StepOptions = collections.namedtuple("StepOptions", ("weight_decay",) + tuple(STEP_KEYWORDS))


_STEP_DEFAULTS = tuple(STEP_KEYWORDS.values())


def step_options(weight_decay, keywords):
    """The shared keywords of one functional call, defaults filled in and checked."""
    if not keywords:  # the common call: no dict to merge (_make skips the keyword parsing)
        return StepOptions._make((_checks.nonnegative("weight_decay", weight_decay),) + _STEP_DEFAULTS)
    unknown = keywords.keys() - STEP_KEYWORDS.keys()
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    o = {**STEP_KEYWORDS, **keywords}
    weight_decay = _checks.nonnegative("weight_decay", weight_decay)
    o["max_grad_norm"] = _checks.optional_positive("max_grad_norm", o["max_grad_norm"])
    o["ema_decay"] = _ema.checked_decay(o["ema_decay"])
    if (o["ema"] is None) != (o["ema_decay"] is None):
        raise ValueError("the EMA of the weights needs both ema (the array) and ema_decay")
    return StepOptions(weight_decay, **o)


def step_arrays(param, grad, states, o):
    """The checked arrays of one call; `states` is a list of (name, array), or of (name,
    QuantizedState) for quantized state."""
    if any(isinstance(s, _blockwise_step.QuantizedState) for _, s in states) or \
            (isinstance(o.state_dtype, str) and o.state_dtype in _blockwise_step.SCHEME_CODES):
        return _blockwise_step.step_arrays(param, grad, states, o.master_weights, o.param_dtype, o.grad_dtype,
                                           o.rounding_seed)
    return _checks.step_arrays(param, grad, states, o.master_weights, o.param_dtype, o.grad_dtype,
                               o.rounding_seed, o.state_dtype)


def fused_step(rule_id, variant, scalars, param, grad, states, o, *, lr, decoupled, check=None):
    """Checks the arrays (`states`: (name, array) pairs; `check(arrays)` adds the rule's own checks),
    folds unscaling and clipping into one gradient factor, then makes the one kernel call."""
    arrays = step_arrays(param, grad, states, o)
    if check is not None:
        check(arrays)
    ema, ema_code = None, 0
    if o.ema is not None:  # ema <- ema + (1 - ema_decay) * (new param - ema), after the step
        others = [("param", arrays.param), ("grad", arrays.grad)] + _ema.written_states(states)
        if arrays.master is not None:
            others.append(("master_weights", arrays.master))
        ema, ema_code = _ema.checked_array(o.ema, arrays.param, arrays.param_code, arrays.kind, None, others)
    chosen = _backend.select(arrays.kind, o.backend)
    inv_scale = 1.0 if o.grad_scale is None else _checks.grad_scale(o.grad_scale)
    result = _NOT_SKIPPED
    if o.max_grad_norm is not None or o.skip_nonfinite:
        norm = math.sqrt(chosen.module.sum_of_squares(arrays.grad_code, arrays.grad)) * abs(inv_scale)
        if o.skip_nonfinite and not math.isfinite(norm):
            return StepResult(norm, True)
        if o.max_grad_norm is not None:
            inv_scale *= _scalars.clip_factor(norm, o.max_grad_norm)
        result = StepResult(norm, False)
    scale, wd, decay_factor = _scalars.prologue(lr, o.weight_decay, decoupled, o.maximize, inv_scale)
    seed = 0 if o.rounding_seed is None else _checks.checked_seed(o.rounding_seed)
    _kernel_call.step(chosen.module, KernelCall(rule_id, variant, arrays.param_code, arrays.grad_code,
                                                arrays.state_code, arrays.param, arrays.grad, arrays.master,
                                                arrays.states, scalars, scale, wd, decay_factor, seed,
                                                ema, ema_code, 0.0 if ema is None else 1.0 - o.ema_decay))
    return result


# ---- the NumPy baseline the benchmark times (float64: the reference it checks against) --------

class NumpyOptimizer:
    """Base: one parameter array, state arrays named as in torch.optim, scratch allocated once."""

    state_names = ()
    decoupled = False

    def __init__(self, param, lr, weight_decay=0.0):
        self.param = param
        self.lr = lr
        self.weight_decay = weight_decay
        self.t = 0
        self.state = {name: np.zeros_like(param) for name in self.state_names}
        self._scratch = [np.empty_like(param), np.empty_like(param)]
        self._decayed_grad = np.empty_like(param) if weight_decay and not self.decoupled else None

    def step(self, grad):
        self.t += 1
        p = self.param
        if self.weight_decay:
            if self.decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                np.multiply(p, self.weight_decay, out=self._decayed_grad)
                self._decayed_grad += grad
                grad = self._decayed_grad
        self._update(p, grad, *self._scratch)

    def _update(self, p, g, tmp, tmp2):
        raise NotImplementedError


def numpy_moments(m, v, g, beta1, beta2, tmp):
    """Adam's two moment updates, in place."""
    m *= beta1
    np.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp


# ---- helpers of the per-element mirrors (Numba compiles them: fastopt.numba.math) --------------

def fo_max(a, b):
    """max that keeps a NaN (common.h fo_max)."""
    return a if (a != a or a > b) else b


def fo_sign(a, one, zero):
    """sign that keeps a NaN and the sign of zero (common.h fo_sign)."""
    return one if a > zero else (-one if a < zero else a * zero)
