"""Schedulers that combine others (SequentialLR, ChainedScheduler) and ReduceLROnPlateau."""
import bisect
import copy
import math
from collections.abc import Mapping

from ._lr_base import LRScheduler, in_range, integer, per_group, real
from ._param_groups import param_groups


def _checked_children(owner, schedulers, optimizer):
    try:
        schedulers = list(schedulers)
    except TypeError:
        raise TypeError(f"{owner} takes a list of schedulers, got {type(schedulers).__name__}") from None
    if not schedulers:
        raise ValueError(f"{owner} needs at least one scheduler")
    optimizer = schedulers[0].optimizer if optimizer is None and hasattr(schedulers[0], "optimizer") else optimizer
    for i, scheduler in enumerate(schedulers):
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"schedulers[{i}] must be a scheduler, got {type(scheduler).__name__}")
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(f"schedulers[{i}] is a ReduceLROnPlateau, whose step() needs a metric; "
                             f"{owner} cannot step it")
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"schedulers[{i}] drives another optimizer than the one {owner} was given")
    return schedulers, optimizer


class _Composite(LRScheduler):
    """Saves its children's states nested, in order."""

    _not_saved = LRScheduler._not_saved + ("_schedulers",)

    def state_dict(self):
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        children = state_dict.get("_schedulers") if isinstance(state_dict, Mapping) else None
        if not isinstance(children, (list, tuple)) or len(children) != len(self._schedulers):
            raise ValueError(f"state_dict['_schedulers'] must hold {len(self._schedulers)} scheduler states")
        state = self._checked_state(state_dict)
        del state["_schedulers"]
        # Each child checks its own state before any is changed.
        for scheduler, child in zip(self._schedulers, children):
            scheduler._checked_state(child)
        vars(self).update(copy.deepcopy(state))
        for scheduler, child in zip(self._schedulers, children):
            scheduler.load_state_dict(child)


class SequentialLR(_Composite):
    """Runs schedulers[0] until milestones[0], then schedulers[1] (restarted at its epoch 0), ..."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        schedulers, _ = _checked_children("SequentialLR", schedulers, optimizer)
        milestones = [integer(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedulers: got {len(milestones)} "
                             f"milestones for {len(schedulers)} schedulers")
        last_epoch = integer("last_epoch", last_epoch, -1)
        groups = param_groups(optimizer)
        for i, group in enumerate(groups):
            if "initial_lr" not in group:
                raise ValueError(f"param_groups[{i}] has no 'initial_lr' (construct the schedulers first)")
        self._schedulers, self._milestones = schedulers, milestones
        self.optimizer = optimizer
        self.last_epoch = last_epoch + 1
        # The children each took their construction step; undo those, then start the first.
        for group in groups:
            group["lr"] = group["initial_lr"]
        self._undo_step(self)
        first = self._schedulers[bisect.bisect_right(milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _undo_step(self, scheduler):
        if hasattr(scheduler, "_schedulers"):
            for child in scheduler._schedulers:
                self._undo_step(child)
        elif hasattr(scheduler, "last_epoch"):
            scheduler.last_epoch -= 1

    def step(self):
        self.last_epoch += 1
        idx = bisect.bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)  # a milestone restarts the next scheduler at its epoch 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_Composite):
    """Steps every scheduler in turn at each step: their (chainable) factors multiply."""

    def __init__(self, schedulers, optimizer=None):
        self._schedulers, self.optimizer = _checked_children("ChainedScheduler", schedulers, optimizer)
        self._last_lr = [group["lr"] for group in self._groups]

    def step(self):
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = [group["lr"] for group in self._groups]


class ReduceLROnPlateau(LRScheduler):
    """Multiplies lr by factor (not below min_lr) once the metric passed to step() has not improved
    for more than ``patience`` steps; then waits ``cooldown`` steps before counting again.

    Improvement, with threshold t: mode 'min', 'rel': a < best * (1 - t); 'min', 'abs': a < best - t;
    'max', 'rel': a > best * (1 + t); 'max', 'abs': a > best + t. A change smaller than eps is not made.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        groups = param_groups(optimizer)
        self.factor = in_range("factor", factor, 0.0, 1.0, high_open=True)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.threshold = in_range("threshold", threshold, 0.0, math.inf, high_open=True)
        self.patience = integer("patience", patience, 0)
        self.cooldown = integer("cooldown", cooldown, 0)
        self.eps = in_range("eps", eps, 0.0, math.inf, high_open=True)
        nonnegative = lambda name, v: in_range(name, v, 0.0, math.inf, high_open=True)  # noqa: E731
        self.min_lrs = per_group("min_lr", min_lr, groups, nonnegative)
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else self.min_lrs[0]
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in groups]
        self._reset()

    def _reset(self):
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def is_better(self, a, best):
        rel, t = self.threshold_mode == "rel", self.threshold
        if self.mode == "min":
            return a < best * (1.0 - t) if rel else a < best - t
        return a > best * (1.0 + t) if rel else a > best + t

    def step(self, metrics, epoch=None):
        """Takes the epoch's metric (a NaN one counts as no improvement)."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a number, got {type(metrics).__name__}") from None
        self.last_epoch = self.last_epoch + 1 if epoch is None else integer("epoch", epoch, 0)
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self._groups]

    def _reduce_lr(self):
        groups = self._groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"the optimizer has {len(groups)} param_groups but min_lr had "
                                   f"{len(self.min_lrs)} values: set min_lrs to one per group")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    def _checked_state(self, state_dict):
        state = super()._checked_state(state_dict)
        if state["mode"] not in ("min", "max") or state["threshold_mode"] not in ("rel", "abs"):
            raise ValueError("state_dict has an unknown mode or threshold_mode")
        real("state_dict['factor']", state["factor"])
        return state
