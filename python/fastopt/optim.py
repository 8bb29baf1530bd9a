"""Stateful optimizers with torch.optim's constructors, param groups, state names and defaults.

``params`` is one array, a list of arrays, or a list of group dicts (torch's forms); every
option is a group option (``opt.param_groups[i]["lr"]``), and ``opt.lr = x`` sets it in every
group. The machinery is in _optimizer.py; each class here gives its rule: options, state arrays
and the host scalars of a step.
"""
import numpy as np

from . import _checks, _scalars
from ._dtypes import BFLOAT16, FLOAT32, UINT16, dtype_code
from ._optimizer import OptimizerCore, TORCH_NOOPS, _betas, _flag, option_table

_nonneg = _checks.nonnegative
_positive = _checks.positive


def _closed_unit(name, value):
    return _checks.unit_interval(name, value, closed=True)


class Optimizer(OptimizerCore):
    """Base class of fastopt's optimizers (torch.optim.Optimizer's interface)."""

    def _resolve_state_dtype(self, state_dtype, param_code, kind):
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


class SGD(Optimizer):
    """torch.optim.SGD: plain, heavy-ball or Nesterov momentum; ``velocity_form`` keeps the
    textbook velocity instead (Deep Learning, Alg. 8.2)."""

    _rule = _scalars.SGD
    _state_array_names = ("momentum_buffer",)
    _rule_needs_step = False
    _options = option_table(lr=_nonneg, momentum=_nonneg, dampening=_closed_unit, weight_decay=_nonneg,
                       nesterov=_flag, maximize=_flag, velocity_form=_flag)
    _optional = frozenset(TORCH_NOOPS + ("velocity_form",))

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, velocity_form=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, velocity_form=velocity_form), **options)

    def _check_combination(self, h):
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if h["velocity_form"] and h["dampening"] != 0:
            raise ValueError("velocity_form has no dampening; pass dampening=0")

    def _state_names(self, h):
        return ("momentum_buffer",) if h["momentum"] != 0 else ()

    def _scalar_token(self, p):
        return "momentum_buffer" in p.fresh

    def _rule_scalars(self, h, step, p):
        # The buffer starts from the gradient on the step it is created (torch semantics).
        first = "momentum_buffer" in p.fresh
        variant, scalars = _scalars.sgd(h["lr"], h["momentum"], h["dampening"], h["nesterov"],
                                        h["velocity_form"], 1 if first else 2)
        return variant, scalars, False, {}


class Adagrad(Optimizer):
    """torch.optim.Adagrad; ``eps_inside_sqrt`` puts eps under the square root."""

    _rule = _scalars.ADAGRAD
    _state_array_names = ("sum",)
    _options = option_table(lr=_nonneg, lr_decay=_nonneg, weight_decay=_nonneg, initial_accumulator_value=_nonneg,
                       eps=_positive, maximize=_flag, eps_inside_sqrt=_flag)
    _optional = frozenset(TORCH_NOOPS + ("eps_inside_sqrt",))
    _eager_states = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 *, maximize=False, eps_inside_sqrt=False, **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize, eps_inside_sqrt=eps_inside_sqrt), **options)

    def _state_names(self, h):
        return ("sum",)

    def _init_value(self, h, name):
        return h["initial_accumulator_value"]

    def _rule_scalars(self, h, step, p):
        variant, scalars = _scalars.adagrad(h["lr"], h["lr_decay"], h["eps"], h["eps_inside_sqrt"], step)
        return variant, scalars, False, {}


class RMSprop(Optimizer):
    """torch.optim.RMSprop, plus ``nesterov`` momentum (Deep Learning, Alg. 8.6) and ``eps_inside_sqrt``."""

    _rule = _scalars.RMSPROP
    _state_array_names = ("square_avg", "grad_avg", "momentum_buffer")
    _options = option_table(lr=_nonneg, alpha=_closed_unit, eps=_positive, weight_decay=_nonneg, momentum=_nonneg,
                       centered=_flag, maximize=_flag, nesterov=_flag, eps_inside_sqrt=_flag)
    _optional = frozenset(TORCH_NOOPS + ("nesterov", "eps_inside_sqrt"))

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 *, maximize=False, nesterov=False, eps_inside_sqrt=False, **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize, nesterov=nesterov,
                                      eps_inside_sqrt=eps_inside_sqrt), **options)

    def _check_combination(self, h):
        if h["nesterov"] and h["momentum"] <= 0:
            raise ValueError("nesterov requires momentum > 0")

    def _state_names(self, h):
        names = ("square_avg",) + (("grad_avg",) if h["centered"] else ())
        return names + (("momentum_buffer",) if h["momentum"] > 0 else ())

    def _rule_scalars(self, h, step, p):
        variant, scalars = _scalars.rmsprop(h["lr"], h["alpha"], h["eps"], h["momentum"], h["centered"],
                                            h["nesterov"], h["eps_inside_sqrt"])
        return variant, scalars, False, {}


class Adadelta(Optimizer):
    """torch.optim.Adadelta (lr=1 is Zeiler's original)."""

    _rule = _scalars.ADADELTA
    _state_array_names = ("square_avg", "acc_delta")
    _options = option_table(lr=_nonneg, rho=_closed_unit, eps=_positive, weight_decay=_nonneg, maximize=_flag)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         **options)

    def _state_names(self, h):
        return ("square_avg", "acc_delta")

    def _rule_scalars(self, h, step, p):
        variant, scalars = _scalars.adadelta(h["lr"], h["rho"], h["eps"])
        return variant, scalars, False, {}


class Adam(Optimizer):
    """torch.optim.Adam (with ``amsgrad``; ``decoupled_weight_decay=True`` is AdamW)."""

    _rule = _scalars.ADAM
    _state_array_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _options = option_table(lr=_nonneg, betas=_betas, eps=_positive, weight_decay=_nonneg, amsgrad=_flag,
                       maximize=_flag, decoupled_weight_decay=_flag)
    _optional = frozenset(TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay), **options)

    def _state_names(self, h):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if h["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = _scalars.adam(h["lr"], beta1, beta2, h["eps"], h["amsgrad"], step)
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


class Adamax(Optimizer):
    """torch.optim.Adamax."""

    _rule = _scalars.ADAMAX
    _state_array_names = ("exp_avg", "exp_inf")
    _options = option_table(lr=_nonneg, betas=_betas, eps=_positive, weight_decay=_nonneg, maximize=_flag)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         **options)

    def _state_names(self, h):
        return ("exp_avg", "exp_inf")

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = _scalars.adamax(h["lr"], beta1, beta2, h["eps"], step)
        return variant, scalars, False, {}


class NAdam(Optimizer):
    """torch.optim.NAdam; ``state["mu_product"]`` is the running product of the momentum schedule."""

    _rule = _scalars.NADAM
    _state_array_names = ("exp_avg", "exp_avg_sq")
    _options = option_table(lr=_nonneg, betas=_betas, eps=_positive, weight_decay=_nonneg, momentum_decay=_nonneg,
                       decoupled_weight_decay=_flag, maximize=_flag)
    _optional = frozenset(TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)

    def _state_names(self, h):
        return ("exp_avg", "exp_avg_sq")

    def _host_state(self, h):
        return {"mu_product": 1.0}

    def _scalar_token(self, p):
        return p.state["mu_product"]

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars, mu_product = _scalars.nadam(h["lr"], beta1, beta2, h["eps"], h["momentum_decay"], step,
                                                      p.state["mu_product"])
        return variant, scalars, h["decoupled_weight_decay"], {"mu_product": mu_product}


class RAdam(Optimizer):
    """torch.optim.RAdam (``decoupled_weight_decay`` supported)."""

    _rule = _scalars.RADAM
    _state_array_names = ("exp_avg", "exp_avg_sq")
    _options = option_table(lr=_nonneg, betas=_betas, eps=_positive, weight_decay=_nonneg,
                       decoupled_weight_decay=_flag, maximize=_flag)
    _optional = frozenset(TORCH_NOOPS + ("decoupled_weight_decay",))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *,
                 decoupled_weight_decay=False, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize), **options)

    def _state_names(self, h):
        return ("exp_avg", "exp_avg_sq")

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = _scalars.radam(h["lr"], beta1, beta2, h["eps"], step)
        return variant, scalars, h["decoupled_weight_decay"], {}


class Lion(Optimizer):
    """Lion (Chen et al. 2023), with the defaults of the paper's reference code; decoupled decay."""

    _rule = _scalars.LION
    _state_array_names = ("exp_avg",)
    _options = option_table(lr=_nonneg, betas=_betas, weight_decay=_nonneg, maximize=_flag)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize), **options)

    def _state_names(self, h):
        return ("exp_avg",)

    def _rule_scalars(self, h, step, p):
        beta1, beta2 = h["betas"]
        variant, scalars = _scalars.lion(h["lr"], beta1, beta2)
        return variant, scalars, True, {}


OPTIMIZERS = (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Lion)
