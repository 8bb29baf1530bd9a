"""Stateful optimizers with torch.optim's constructors, state names and defaults.

Each class owns the state arrays of one flat parameter buffer (use FlatParams for a whole model)
and steps it with one fused kernel call per ``step(grad)``. Hyper-parameters are attributes,
validated when assigned, so a scheduler can change them between steps.
"""

import math
import numbers
import operator

import numpy as np

from . import _backend, _checks, _scalars
from ._dtypes import BFLOAT16, CODE_BFLOAT16, FLOAT32, UINT16, bfloat16_bits, dtype_code, is_half
from .functional import _fused_step


class _Hyper:
    """A hyper-parameter attribute, validated on assignment (so step() need not re-check)."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = "_" + name
        self.public = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.name)

    def __set__(self, obj, value):
        setattr(obj, self.name, self.check(self.public, value))


def _flag(name, value):
    return bool(value)


def _betas(name, value):
    return _checks.betas(value, name)


class Optimizer:
    """Base class: state handling, the fused step and (de)serialisation."""

    _rule = None

    lr = _Hyper(_checks.nonnegative)
    weight_decay = _Hyper(_checks.nonnegative)
    maximize = _Hyper(_flag)

    def __init__(self, param, *, master_weights=False, stochastic_rounding=False, seed=0, state_dtype=None,
                 param_dtype=None, backend=None):
        kind = _backend.array_kind(param)
        if kind is None:
            raise TypeError(f"param must be a NumPy or CuPy array, got {type(param).__name__}")
        self.param = param
        self.param_dtype = param_dtype
        self.backend = backend
        self._xp = np if kind == "numpy" else __import__("cupy")
        code = dtype_code(param.dtype, param_dtype)
        if code is None:
            raise TypeError(f"param has dtype {param.dtype}; expected float32, float64, or float16 / "
                            "bfloat16 with master_weights=True")
        if not param.flags.c_contiguous:
            raise TypeError("param must be C-contiguous (use a FlatParams buffer)")
        if kind == "numpy" and not param.flags.writeable:
            raise TypeError("param is read-only; fastopt updates it in place")
        if bool(master_weights) + bool(stochastic_rounding) != is_half(code):
            raise TypeError("float16 / bfloat16 params need master_weights=True (or, for bfloat16, "
                            "stochastic_rounding=True), and only they take either")
        if stochastic_rounding and code != CODE_BFLOAT16:
            raise TypeError("stochastic_rounding is for bfloat16 params; float16 needs master_weights=True")
        self.stochastic_rounding = bool(stochastic_rounding)
        self.seed = _checks.checked_seed(seed)
        self._state_dtype = self._resolve_state_dtype(state_dtype, code, kind)
        self.state = {"step": 0}
        if master_weights:
            self.state["master_weights"] = self._widen_half(param, code)
        self.last_step_skipped = False
        self._checked_grad = self._checked_names = self._checked_grad_dtype = None
        self._fresh = set()  # state arrays created since the last applied step

    @staticmethod
    def _resolve_state_dtype(state_dtype, param_code, kind):
        if param_code == dtype_code(np.dtype(np.float64)):
            if state_dtype not in (None, "float64", np.float64):
                raise TypeError("float64 params keep float64 state")
            return np.dtype(np.float64)
        if state_dtype in (None, "float32", np.float32):
            return FLOAT32
        if str(state_dtype) == "bfloat16":
            # CuPy (and NumPy without ml_dtypes) has no bfloat16 dtype: its bits are kept as uint16.
            return BFLOAT16 if kind == "numpy" and BFLOAT16 is not None else UINT16
        raise TypeError(f"state_dtype must be 'float32' or 'bfloat16', got {state_dtype!r}")

    def _widen_half(self, param, code):
        """A float32 copy of a half param (uint16 storage included: CuPy has no bfloat16)."""
        xp = self._xp
        if param.dtype == xp.uint16:
            if code == dtype_code(xp.dtype(xp.float16)):
                return param.view(xp.float16).astype(xp.float32)
            return (param.astype(xp.uint32) << 16).view(xp.float32)
        return param.astype(xp.float32)

    # ---- subclass interface ----
    def _state_names(self):
        """Names of the state arrays the current options use, in kernel order."""
        raise NotImplementedError

    def _rule_scalars(self, step):
        """(variant, scalars, decoupled) for the 1-based step about to be taken."""
        raise NotImplementedError

    def _init_state(self, name):
        return self._full_state(0.0)

    def _full_state(self, value):
        """A state array holding `value` (bfloat16 kept as uint16 holds value's bfloat16 bits)."""
        fill = bfloat16_bits(value) if self._state_dtype == UINT16 else value
        return self._xp.full(self.param.size, fill, dtype=self._state_dtype)

    def _after_step(self, step):
        """Host-side state to advance once a step was applied."""

    # ---- stepping ----
    def _ensure_state(self):
        for name in self._state_names():
            if name not in self.state:
                self.state[name] = self._init_state(name)
                self._fresh.add(name)
                self._checked_grad = None

    def _arrays(self, grad, grad_dtype):
        """The step's arrays, fully validated the first time a grad object is seen."""
        names = self._state_names()
        state = self.state
        if (grad is self._checked_grad and grad is not None and self._checked_names == names
                and grad_dtype == self._checked_grad_dtype):
            arrays = self._checked_arrays
            # A state array replaced by assignment (opt.state[name] = ...) is validated and used.
            if state.get("master_weights") is arrays.master and all(
                    map(operator.is_, map(state.__getitem__, names), arrays.states)):
                return arrays
        arrays = _checks.step_arrays(self.param, grad, [(n, state[n]) for n in names],
                                     state.get("master_weights"), self.param_dtype, grad_dtype,
                                     self.seed if self.stochastic_rounding else None,
                                     "bfloat16" if self._state_dtype == UINT16 else None)
        self._checked_grad, self._checked_names, self._checked_arrays = grad, names, arrays
        self._checked_grad_dtype = grad_dtype
        return arrays

    def step(self, grad, *, grad_scale=None, max_grad_norm=None, skip_nonfinite=False, grad_dtype=None):
        """One fused update of param from grad (read only).

        Returns the unscaled global gradient norm when it was computed (max_grad_norm or
        skip_nonfinite), else None. With skip_nonfinite, an inf/NaN gradient changes nothing
        (the step count included) and sets ``last_step_skipped``.
        """
        max_grad_norm = _checks.optional_positive("max_grad_norm", max_grad_norm)
        self._ensure_state()
        arrays = self._arrays(grad, grad_dtype)
        step = self.state["step"] + 1
        variant, scalars, decoupled = self._rule_scalars(step)
        try:
            result = _fused_step(self._rule, variant, scalars, arrays, lr=self._lr,
                                 weight_decay=self._weight_decay, decoupled=decoupled,
                                 maximize=self._maximize, grad_scale=grad_scale,
                                 max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                                 backend=self.backend,
                                 rounding_seed=_scalars.step_seed(self.seed, step) if self.stochastic_rounding else None)
        except Exception:
            # The cached checks may be stale (an array made read-only since): the full checks,
            # which raise naming the argument, replace the backend's own error when they fail.
            self._checked_grad = None
            self._arrays(grad, grad_dtype)
            raise
        self.last_step_skipped = result.skipped
        if not result.skipped:
            self.state["step"] = step
            self._after_step(step)
            self._fresh.clear()
        return result.grad_norm

    # ---- (de)serialisation ----
    @classmethod
    def _hypers(cls):
        """{name: descriptor} of every hyper-parameter attribute."""
        return {name: d for klass in reversed(cls.__mro__) for name, d in vars(klass).items()
                if isinstance(d, _Hyper)}

    def state_dict(self):
        """A deep copy: {"state": {"step": int, name: array, ...}, "param_groups": [{hyper...}]}."""
        state = {k: (v.copy() if hasattr(v, "shape") else v) for k, v in self.state.items()}
        group = {name: getattr(self, name) for name in self._hypers()}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict):
        """Restores hyper-parameters and state, copying arrays into this optimizer's own buffers.

        Everything is validated first: a state_dict that does not fit changes nothing.
        """
        try:
            state, group = state_dict["state"], state_dict["param_groups"][0]
        except (KeyError, IndexError, TypeError):
            raise ValueError("state_dict must have 'state' and 'param_groups' as made by state_dict()") from None
        step = state.get("step", 0)
        # 0: no step taken yet; else a 1-based count.
        if not (isinstance(step, numbers.Integral) and not isinstance(step, bool) and step == 0):
            step = _checks.step_count(step)
        hypers = self._hypers()
        checked = {name: hypers[name].check(name, value) for name, value in group.items() if name in hypers}
        targets = {}
        for name, value in state.items():
            if not hasattr(value, "shape"):
                if name != "step" and isinstance(self.state.get(name), float):  # scalar state (NAdam's mu_product)
                    value = _checks._real(f"state '{name}'", value)
                    if not math.isfinite(value):
                        raise ValueError(f"state '{name}' must be finite, got {value}")
                continue
            expected = FLOAT32 if name == "master_weights" else self._state_dtype
            if value.size != self.param.size or value.dtype != expected:
                raise ValueError(f"state '{name}' has {value.size} elements of {value.dtype}; "
                                 f"expected {self.param.size} of {expected}")
            own = self.state.get(name)
            targets[name] = own if own is not None else self._xp.empty(self.param.size, expected)
        for name, value in checked.items():
            setattr(self, name, value)
        for name, value in state.items():
            if name in targets:
                targets[name][...] = self._xp.asarray(value).reshape(-1)
                self.state[name] = targets[name]
            elif name != "step":
                self.state[name] = value
        self.state["step"] = step
        self._fresh.clear()
        self._checked_grad = None

    def __repr__(self):
        hyper = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._hypers())
        return f"{type(self).__name__}({self.param.size} elements of {self.param.dtype}, {hyper})"


class SGD(Optimizer):
    """torch.optim.SGD: plain, heavy-ball or Nesterov momentum; ``velocity_form`` keeps the
    textbook velocity instead (Deep Learning, Alg. 8.2)."""

    _rule = _scalars.SGD
    momentum = _Hyper(_checks.nonnegative)
    dampening = _Hyper(lambda n, v: _checks.unit_interval(n, v, closed=True))
    nesterov = _Hyper(_flag)
    velocity_form = _Hyper(_flag)

    def __init__(self, param, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, velocity_form=False, **options):
        super().__init__(param, **options)
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize
        self.velocity_form = velocity_form
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if velocity_form and self.dampening != 0:
            raise ValueError("velocity_form has no dampening; pass dampening=0")

    def _state_names(self):
        return ("momentum_buffer",) if self._momentum != 0 else ()

    def _rule_scalars(self, step):
        if self._nesterov and (self._momentum <= 0 or self._dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        # The buffer starts from the gradient on the step it is created (torch semantics).
        first = "momentum_buffer" in self._fresh
        variant, scalars = _scalars.sgd(self._lr, self._momentum, self._dampening, self._nesterov,
                                        self._velocity_form, 1 if first else 2)
        return variant, scalars, False


class Adagrad(Optimizer):
    """torch.optim.Adagrad; ``eps_inside_sqrt`` puts eps under the square root."""

    _rule = _scalars.ADAGRAD
    lr_decay = _Hyper(_checks.nonnegative)
    eps = _Hyper(_checks.positive)
    eps_inside_sqrt = _Hyper(_flag)

    def __init__(self, param, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 *, maximize=False, eps_inside_sqrt=False, **options):
        super().__init__(param, **options)
        self.lr, self.lr_decay, self.weight_decay, self.eps = lr, lr_decay, weight_decay, eps
        self.maximize, self.eps_inside_sqrt = maximize, eps_inside_sqrt
        self.initial_accumulator_value = _checks.nonnegative("initial_accumulator_value",
                                                             initial_accumulator_value)
        self._ensure_state()

    def _state_names(self):
        return ("sum",)

    def _init_state(self, name):
        return self._full_state(self.initial_accumulator_value)

    def _rule_scalars(self, step):
        variant, scalars = _scalars.adagrad(self._lr, self._lr_decay, self._eps, self._eps_inside_sqrt, step)
        return variant, scalars, False


class RMSprop(Optimizer):
    """torch.optim.RMSprop, plus ``nesterov`` momentum (Deep Learning, Alg. 8.6) and ``eps_inside_sqrt``."""

    _rule = _scalars.RMSPROP
    alpha = _Hyper(lambda n, v: _checks.unit_interval(n, v, closed=True))
    eps = _Hyper(_checks.positive)
    momentum = _Hyper(_checks.nonnegative)
    nesterov = _Hyper(_flag)
    eps_inside_sqrt = _Hyper(_flag)

    def __init__(self, param, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 *, maximize=False, nesterov=False, eps_inside_sqrt=False, **options):
        super().__init__(param, **options)
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.maximize, self.nesterov = momentum, maximize, nesterov
        self.eps_inside_sqrt = eps_inside_sqrt
        self.centered = bool(centered)
        if nesterov and self.momentum <= 0:
            raise ValueError("nesterov requires momentum > 0")

    def _state_names(self):
        names = ("square_avg",) + (("grad_avg",) if self.centered else ())
        return names + (("momentum_buffer",) if self._momentum > 0 else ())

    def _rule_scalars(self, step):
        if self._nesterov and self._momentum <= 0:
            raise ValueError("nesterov requires momentum > 0")
        variant, scalars = _scalars.rmsprop(self._lr, self._alpha, self._eps, self._momentum,
                                            self.centered, self._nesterov, self._eps_inside_sqrt)
        return variant, scalars, False


class Adadelta(Optimizer):
    """torch.optim.Adadelta (lr=1 is Zeiler's original)."""

    _rule = _scalars.ADADELTA
    rho = _Hyper(lambda n, v: _checks.unit_interval(n, v, closed=True))
    eps = _Hyper(_checks.positive)

    def __init__(self, param, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False, **options):
        super().__init__(param, **options)
        self.lr, self.rho, self.eps, self.weight_decay, self.maximize = lr, rho, eps, weight_decay, maximize

    def _state_names(self):
        return ("square_avg", "acc_delta")

    def _rule_scalars(self, step):
        variant, scalars = _scalars.adadelta(self._lr, self._rho, self._eps)
        return variant, scalars, False


class _AdamFamily(Optimizer):
    betas = _Hyper(_betas)
    eps = _Hyper(_checks.positive)

    def _state_names(self):
        return ("exp_avg", "exp_avg_sq")


class Adam(_AdamFamily):
    """torch.optim.Adam (with ``amsgrad``; ``decoupled_weight_decay=True`` is AdamW)."""

    _rule = _scalars.ADAM
    decoupled_weight_decay = _Hyper(_flag)

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, **options):
        super().__init__(param, **options)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.maximize, self.amsgrad = maximize, bool(amsgrad)
        self.decoupled_weight_decay = decoupled_weight_decay

    def _state_names(self):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def _rule_scalars(self, step):
        beta1, beta2 = self._betas
        variant, scalars = _scalars.adam(self._lr, beta1, beta2, self._eps, self.amsgrad, step)
        return variant, scalars, self._decoupled_weight_decay


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, **options):
        super().__init__(param, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, **options)


class Adamax(_AdamFamily):
    """torch.optim.Adamax."""

    _rule = _scalars.ADAMAX

    def __init__(self, param, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *, maximize=False,
                 **options):
        super().__init__(param, **options)
        self.lr, self.betas, self.eps, self.weight_decay, self.maximize = lr, betas, eps, weight_decay, maximize

    def _state_names(self):
        return ("exp_avg", "exp_inf")

    def _rule_scalars(self, step):
        beta1, beta2 = self._betas
        variant, scalars = _scalars.adamax(self._lr, beta1, beta2, self._eps, step)
        return variant, scalars, False


class NAdam(_AdamFamily):
    """torch.optim.NAdam; ``state["mu_product"]`` is the running product of the momentum schedule."""

    _rule = _scalars.NADAM
    momentum_decay = _Hyper(_checks.nonnegative)
    decoupled_weight_decay = _Hyper(_flag)

    def __init__(self, param, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(param, **options)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.momentum_decay, self.decoupled_weight_decay, self.maximize = momentum_decay, decoupled_weight_decay, maximize
        self.state["mu_product"] = 1.0

    def _rule_scalars(self, step):
        beta1, beta2 = self._betas
        variant, scalars, self._next_mu_product = _scalars.nadam(
            self._lr, beta1, beta2, self._eps, self._momentum_decay, step, self.state["mu_product"])
        return variant, scalars, self._decoupled_weight_decay

    def _after_step(self, step):
        self.state["mu_product"] = self._next_mu_product


class RAdam(_AdamFamily):
    """torch.optim.RAdam (``decoupled_weight_decay`` supported)."""

    _rule = _scalars.RADAM
    decoupled_weight_decay = _Hyper(_flag)

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(param, **options)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.decoupled_weight_decay, self.maximize = decoupled_weight_decay, maximize

    def _rule_scalars(self, step):
        beta1, beta2 = self._betas
        variant, scalars = _scalars.radam(self._lr, beta1, beta2, self._eps, step)
        return variant, scalars, self._decoupled_weight_decay


class Lion(Optimizer):
    """Lion (Chen et al. 2023), with the defaults of the paper's reference code; decoupled decay."""

    _rule = _scalars.LION
    betas = _Hyper(_betas)

    def __init__(self, param, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, *, maximize=False, **options):
        super().__init__(param, **options)
        self.lr, self.betas, self.weight_decay, self.maximize = lr, betas, weight_decay, maximize

    def _state_names(self):
        return ("exp_avg",)

    def _rule_scalars(self, step):
        beta1, beta2 = self._betas
        variant, scalars = _scalars.lion(self._lr, beta1, beta2)
        return variant, scalars, True


OPTIMIZERS = (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Lion)
