"""The scheduler base class and the argument checks the schedulers share.

A scheduler reads and writes ``optimizer.param_groups`` only (see ``_param_groups`` for
optimizers that keep their hyper-parameters as attributes). Semantics follow
torch.optim.lr_scheduler: construction takes the first step (``last_epoch`` -1 -> 0), each
``step()`` advances ``last_epoch`` by one and writes every group's ``"lr"``; most schedules are
chainable (each step multiplies the group's current lr), so several can act on one optimizer.
"""
import copy
import functools
import math
import numbers
import types
import warnings
from collections.abc import Mapping

from . import _param_groups

# Bookkeeping torch keeps in its state_dicts that has no meaning here; ignored when loading one.
_TORCH_ONLY_KEYS = frozenset({"_get_lr_called_within_step", "_is_initial", "verbose", "_scale_fn_ref"})


# ---- argument checks (each names the argument; they run before anything is written) ----

def real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def in_range(name, value, low, high, *, low_open=False, high_open=False):
    value = real(name, value)
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {name}: {value} (expected a value in {interval})")
    return value


def positive(name, value):
    return in_range(name, value, 0.0, math.inf, low_open=True, high_open=True)


def integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (expected an integer >= {minimum})")
    return int(value)


def per_group(name, value, groups, check):
    """One checked value per group: a scalar is repeated, a list must have one value per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"{name} has {len(value)} values; the optimizer has {len(groups)} param_groups")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * len(groups)


def callables(name, value, groups):
    """One function per group (torch's lr_lambda convention)."""
    fns = list(value) if isinstance(value, (list, tuple)) else [value] * len(groups)
    if len(fns) != len(groups):
        raise ValueError(f"{name} has {len(fns)} functions; the optimizer has {len(groups)} param_groups")
    for i, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"{name}[{i}] must be callable, got {type(fn).__name__}")
    return fns


def momentum_key(optimizer, name):
    """'betas' (beta1 is cycled) or 'momentum', as torch decides from the optimizer's defaults."""
    found = _param_groups.defaults(optimizer)
    if "betas" in found:
        return "betas"
    if "momentum" in found:
        return "momentum"
    raise ValueError(f"{name}=True needs an optimizer with momentum or betas")


def set_momentum(group, key, value):
    if key == "betas":
        group["betas"] = (value, *tuple(group["betas"])[1:])
    else:
        group["momentum"] = value


def function_state(fn):
    """What torch saves of a schedule function: nothing for a function, a callable object's __dict__."""
    if isinstance(fn, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
        return None
    try:
        return copy.deepcopy(vars(fn))
    except TypeError:
        return None


class LRScheduler:
    """Base class: subclasses give ``get_lr()`` (the lrs of the step just taken), and optionally
    ``_closed_form()`` (the lrs at ``last_epoch`` from ``base_lrs``, used by ``step(epoch)``).

    ``last_epoch=-1`` starts a schedule and records each group's lr as ``"initial_lr"``; any other
    value resumes one and needs ``"initial_lr"`` in every group (from the optimizer's checkpoint).
    """

    _is_initial = False
    _not_saved = ("optimizer", "_is_initial")

    def __init__(self, optimizer, last_epoch=-1):
        groups = _param_groups.param_groups(optimizer)
        last_epoch = integer("last_epoch", last_epoch, -1)
        if last_epoch != -1:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise ValueError(f"param_groups[{i}] has no 'initial_lr': resuming with last_epoch="
                                     f"{last_epoch} needs the optimizer's state loaded first")
        else:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    @property
    def _groups(self):
        return _param_groups.param_groups(self.optimizer)

    def _current_lrs(self):
        return [group["lr"] for group in self._groups]

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):
        raise NotImplementedError

    def get_last_lr(self):
        """The lrs the last step wrote, one per group."""
        return list(self._last_lr)

    def step(self, epoch=None):
        """Advance the schedule by one (call after ``optimizer.step``). ``epoch`` (deprecated in
        torch, kept for its users) jumps to that epoch, by the closed form where there is one."""
        self._step_count += 1
        if epoch is not None:
            warnings.warn("step(epoch) is deprecated, as in torch: call step() once per step",
                          DeprecationWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            lrs = self.get_lr()
        else:
            self.last_epoch = integer("epoch", epoch, 0)
            lrs = self._closed_form() if hasattr(self, "_closed_form") else self.get_lr()
        groups = self._groups
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    # ---- (de)serialisation: plain values only, never a function ----
    def state_dict(self):
        """The schedule's state (everything but the optimizer and functions), as a deep copy."""
        return {key: copy.deepcopy(value) for key, value in vars(self).items() if key not in self._not_saved}

    def load_state_dict(self, state_dict):
        """Restores a state from ``state_dict()`` (or torch's for the same scheduler class);
        checks every key first, so a state that does not fit changes nothing."""
        state = self._checked_state(state_dict)
        vars(self).update(copy.deepcopy(state))

    def _checked_state(self, state_dict):
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = set(self.state_dict())
        given = set(state_dict) - _TORCH_ONLY_KEYS
        if expected - given:
            raise ValueError(f"state_dict lacks {sorted(expected - given)} for {type(self).__name__}")
        if given - expected:
            raise ValueError(f"state_dict has unknown keys {sorted(given - expected)} for {type(self).__name__}")
        if "last_epoch" in expected:
            integer("state_dict['last_epoch']", state_dict["last_epoch"], -1)
        for key in ("base_lrs", "_last_lr"):
            if key in state_dict and len(state_dict[key]) != len(self._groups):
                raise ValueError(f"state_dict['{key}'] has {len(state_dict[key])} values; "
                                 f"the optimizer has {len(self._groups)} param_groups")
        return {key: state_dict[key] for key in expected}
