"""The option side of the optimizers: torch's no-op switches, the checks of a class's option
table, and the two dicts users see, ``opt.param_groups[i]`` (ParamGroup) and ``opt.state``
(_StateByParam)."""
import numpy as np

from . import _checks

# torch's implementation switches: stored in the groups (so torch checkpoints load) and ignored.
TORCH_NOOPS = ("foreach", "capturable", "differentiable", "fused")


def _flag(name, value):
    return bool(value)


def _noop(name, value):
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be None or a bool (it has no effect in fastopt), got {value!r}")
    return None if value is None else bool(value)


def _betas(name, value):
    return _checks.betas(value, name)


def option_table(**checks):
    """A class's option table: its own options, then torch's no-op switches."""
    return {**checks, **{name: _noop for name in TORCH_NOOPS}}


class ParamGroup(dict):
    """One of ``opt.param_groups``: a dict (torch's), whose options are checked when written, so
    a scheduler that writes a bad value fails where it writes; the step checks them again, with
    the checks between options. Other keys (a scheduler's ``initial_lr``) are stored as given."""

    def __init__(self, owner, items=()):
        dict.__init__(self, items)
        self._owner = owner  # the optimizer class, whose option table checks the values

    def _checked(self, key, value):
        check = self._owner._options.get(key)
        return value if check is None else check(key, value)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, self._checked(key, value))

    def update(self, *args, **kwargs):
        items = dict(*args, **kwargs)
        dict.update(self, {k: self._checked(k, v) for k, v in items.items()})

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        return (ParamGroup, (self._owner, dict(self)))

    def __deepcopy__(self, memo):
        import copy

        return ParamGroup(self._owner, copy.deepcopy(dict(self), memo))


class _StateByParam(dict):
    """opt.state of several parameters: keyed by index; the parameter itself (the array or tensor
    given) also finds its state, as torch's opt.state[p] does."""

    def attach(self, params):
        self._params = params
        return self

    def __getitem__(self, key):
        if isinstance(key, int):
            return dict.__getitem__(self, key)
        for i, p in enumerate(self._params):  # arrays are not hashable: found by identity
            if key is p.source or key is p.array:
                return dict.__getitem__(self, i)
        raise KeyError(f"no such parameter ({type(key).__name__}) in this optimizer")
