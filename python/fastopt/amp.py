"""Dynamic loss scaling with torch.amp.GradScaler's semantics, driving fastopt's fused unscale.

Multiply the loss by ``scaler.scale(loss)`` before the backward pass; ``scaler.step(opt, grads)``
then steps with ``grad_scale=scale`` and ``skip_nonfinite=True`` (the kernel divides by the scale
and skips a gradient holding inf or NaN: parameters and state stay untouched), and
``scaler.update()`` adapts the scale: times ``backoff_factor`` after a skipped step, times
``growth_factor`` after ``growth_interval`` steps in a row without one.

The scale is kept as a float32 value, as torch keeps it, so the two give the same sequence; it
never becomes infinite (as in torch, a growth that would overflow float32 is not made) nor zero
(unlike torch, a backoff stops at float32's smallest normal number, 2**-126).
"""
import math
import numbers

import numpy as np

from . import _checks

_MAX = float(np.finfo(np.float32).max)
_TINY = float(np.finfo(np.float32).tiny)
_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def _float32(value):
    """value rounded to float32, as torch stores its scale (inf past float32's range)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _scale_value(name, value):
    value = _checks._real(name, value)
    if not _TINY <= value <= _MAX:
        raise ValueError(f"Invalid {name}: {value} (expected a positive scale that float32 holds, "
                         f"between {_TINY:.3g} and {_MAX:.3g})")
    return _float32(value)


def _growth_factor(value):
    value = _checks._real("growth_factor", value)
    if not 1.0 < value < math.inf:
        raise ValueError(f"Invalid growth_factor: {value} (expected a finite value > 1)")
    return value


def _backoff_factor(value):
    value = _checks._real("backoff_factor", value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"Invalid backoff_factor: {value} (expected a value in (0, 1))")
    return value


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (expected an integer >= {minimum})")
    return int(value)


class GradScaler:
    """torch.amp.GradScaler for fastopt optimizers (``device`` is not needed: the arrays say)."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if isinstance(init_scale, str):
            raise TypeError("init_scale must be a number; fastopt's GradScaler takes no device argument "
                            "(the arrays' type picks it)")
        self._enabled = bool(enabled)
        self._scale = _scale_value("init_scale", init_scale)
        self._growth_factor = _growth_factor(growth_factor)
        self._backoff_factor = _backoff_factor(backoff_factor)
        self._growth_interval = _count("growth_interval", growth_interval, 1)
        self._growth_tracker = 0
        self._found_inf = {}  # id(optimizer) -> whether its step since the last update() was skipped

    # ---- the loop ----
    def scale(self, outputs):
        """outputs * scale: an array, a number, or (recursively) a list or tuple of them."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if isinstance(outputs, bool) or not (isinstance(outputs, numbers.Number) or hasattr(outputs, "__array__")
                                             or hasattr(outputs, "__cuda_array_interface__")):
            raise TypeError(f"outputs must be an array, a number, or a list of them, got {type(outputs).__name__}")
        return outputs * self._scale

    def unscale_(self, optimizer):
        raise NotImplementedError(
            "fastopt unscales inside the step: pass max_grad_norm= to scaler.step(opt, grads, ...) "
            "to clip the unscaled gradient (fastopt.clip_grad_norm_ would see the scaled one)")

    def step(self, optimizer, grads, **kwargs):
        """``optimizer.step(grads, grad_scale=scale, skip_nonfinite=True, **kwargs)``; returns its
        result (the unscaled gradient norm), or None when the step was skipped (as torch)."""
        if not self._enabled:
            return optimizer.step(grads, **kwargs)
        taken = {"grad_scale", "skip_nonfinite"} & set(kwargs)
        if taken:
            raise TypeError(f"GradScaler.step sets {sorted(taken)} itself; do not pass them")
        if not hasattr(optimizer, "last_step_skipped"):
            raise TypeError(f"optimizer must report last_step_skipped (a fastopt optimizer), got "
                            f"{type(optimizer).__name__}")
        if id(optimizer) in self._found_inf:
            raise RuntimeError("step() has already been called on this optimizer since the last update()")
        result = optimizer.step(grads, grad_scale=self._scale, skip_nonfinite=True, **kwargs)
        skipped = bool(optimizer.last_step_skipped)
        self._found_inf[id(optimizer)] = skipped
        return None if skipped else result

    def update(self, new_scale=None):
        """Adapts the scale to the steps taken since the last update (any skipped one backs off),
        or sets it to ``new_scale``."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = _scale_value("new_scale", new_scale)
        else:
            if not self._found_inf:
                raise RuntimeError("update() needs a scaler.step(...) since the last update()")
            if any(self._found_inf.values()):
                self._scale = max(_float32(self._scale * self._backoff_factor), _TINY)
                self._growth_tracker = 0
            elif self._growth_tracker + 1 == self._growth_interval:
                grown = _float32(self._scale * self._growth_factor)
                if grown != math.inf:  # as torch: a growth that overflows float32 is not made
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
        self._found_inf = {}

    # ---- accessors, as torch ----
    def get_scale(self):
        return self._scale if self._enabled else 1.0

    def is_enabled(self):
        return self._enabled

    def get_growth_factor(self):
        return self._growth_factor

    def set_growth_factor(self, new_factor):
        self._growth_factor = _growth_factor(new_factor)

    def get_backoff_factor(self):
        return self._backoff_factor

    def set_backoff_factor(self, new_factor):
        self._backoff_factor = _backoff_factor(new_factor)

    def get_growth_interval(self):
        return self._growth_interval

    def set_growth_interval(self, new_interval):
        self._growth_interval = _count("growth_interval", new_interval, 1)

    def _get_growth_tracker(self):
        return self._growth_tracker if self._enabled else 0

    def __getstate__(self):
        # The record of this iteration's steps names optimizers by id: meaningless elsewhere.
        if self._found_inf:
            raise RuntimeError("a GradScaler can be pickled or copied only between update() and the next step()")
        return vars(self).copy()

    # ---- (de)serialisation: torch's keys, so either loads the other's ----
    def state_dict(self):
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict):
        """Checks every value first: a state that does not fit changes nothing."""
        if not self._enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if not state_dict:
            raise RuntimeError("the state_dict is empty: it was saved from a disabled GradScaler")
        missing = [k for k in _KEYS if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}")
        scale = _scale_value("state_dict['scale']", state_dict["scale"])
        growth = _growth_factor(state_dict["growth_factor"])
        backoff = _backoff_factor(state_dict["backoff_factor"])
        interval = _count("state_dict['growth_interval']", state_dict["growth_interval"], 1)
        tracker = _count("state_dict['_growth_tracker']", state_dict["_growth_tracker"], 0)
        if tracker >= interval:
            raise ValueError(f"state_dict['_growth_tracker'] is {tracker}; expected less than growth_interval {interval}")
        self._scale, self._growth_factor, self._backoff_factor = scale, growth, backoff
        self._growth_interval, self._growth_tracker = interval, tracker
