"""Learning-rate schedulers with torch.optim.lr_scheduler's names, arguments and semantics.

They drive any optimizer with torch-style ``param_groups`` (a list of dicts holding ``"lr"`` and
the other options), per group, and fastopt's optimizers. ``last_epoch`` counts ``step()`` calls:
construction takes step 0. The formulas are in docs/schedulers.md.
"""
import bisect
import copy
import math
from collections import Counter
from collections.abc import Mapping

from ._lr_base import LRScheduler, callables, function_state, in_range, integer, positive, real
from ._lr_compose import ChainedScheduler, ReduceLROnPlateau, SequentialLR
from ._lr_cyclic import CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR
from ._param_groups import param_groups

__all__ = [
    "LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR",
    "ExponentialLR", "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
    "OneCycleLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau",
]


class _LambdaScheduler(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: one function of the epoch per group."""

    _not_saved = LRScheduler._not_saved + ("lr_lambdas",)

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        self.lr_lambdas = callables("lr_lambda", lr_lambda, param_groups(optimizer))
        super().__init__(optimizer, last_epoch)

    def state_dict(self):
        """As torch: a plain function or lambda is not saved (None), a callable object's __dict__ is."""
        state = super().state_dict()
        state["lr_lambdas"] = [function_state(fn) for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        saved = state_dict.get("lr_lambdas") if isinstance(state_dict, Mapping) else None
        if (not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas)
                or not all(s is None or isinstance(s, Mapping) for s in saved)):
            raise ValueError(f"state_dict['lr_lambdas'] must be a list of {len(self.lr_lambdas)} entries, "
                             "each None or a dict")
        state = self._checked_state(state_dict)
        del state["lr_lambdas"]
        vars(self).update(copy.deepcopy(state))
        for fn, fn_state in zip(self.lr_lambdas, saved):
            if fn_state is not None:
                vars(fn).update(copy.deepcopy(fn_state))


class LambdaLR(_LambdaScheduler):
    """lr = initial_lr * lr_lambda(last_epoch)."""

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaScheduler):
    """lr *= lr_lambda(last_epoch) at every step after the first."""

    def get_lr(self):
        if self._is_initial:
            return self._current_lrs()
        return [lr * fn(self.last_epoch) for fn, lr in zip(self.lr_lambdas, self._current_lrs())]


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (last_epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = integer("step_size", step_size, 1)
        self.gamma = positive("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= last_epoch); a repeated milestone counts twice."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        try:
            milestones = list(milestones)
        except TypeError:
            raise TypeError(f"milestones must be a list of integers, got {type(milestones).__name__}") from None
        self.milestones = Counter(integer(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones))
        self.gamma = positive("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        hits = self.milestones.get(self.last_epoch, 0)
        if not hits:
            return self._current_lrs()
        return [lr * self.gamma ** hits for lr in self._current_lrs()]

    def _closed_form(self):
        passed = bisect.bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma ** passed for base in self.base_lrs]

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.milestones = Counter(self.milestones)


class ConstantLR(LRScheduler):
    """lr = initial_lr * factor until last_epoch reaches total_iters, then initial_lr."""

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        # factor 0 could never be undone at total_iters (torch divides by it there).
        self.factor = in_range("factor", factor, 0.0, 1.0, low_open=True)
        self.total_iters = integer("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = self._current_lrs()
        if self.last_epoch == 0:
            return [lr * self.factor for lr in lrs]
        if self.last_epoch != self.total_iters:
            return lrs
        return [lr * (1.0 / self.factor) for lr in lrs]

    def _closed_form(self):
        factor = 1.0 if self.last_epoch >= self.total_iters else self.factor
        return [base * factor for base in self.base_lrs]


class LinearLR(LRScheduler):
    """The factor goes linearly from start_factor to end_factor over total_iters steps:
    lr = initial_lr * (start + (end - start) * min(last_epoch, total_iters) / total_iters)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        self.start_factor = in_range("start_factor", start_factor, 0.0, 1.0, low_open=True)
        self.end_factor = in_range("end_factor", end_factor, 0.0, 1.0)
        self.total_iters = integer("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = self._current_lrs()
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        # The ratio of this step's factor to the previous one's.
        delta = self.end_factor - self.start_factor
        ratio = 1.0 + delta / (self.total_iters * self.start_factor + (self.last_epoch - 1) * delta)
        return [lr * ratio for lr in lrs]

    def _closed_form(self):
        done = min(self.total_iters, self.last_epoch) / self.total_iters
        factor = self.start_factor + (self.end_factor - self.start_factor) * done
        return [base * factor for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr = initial_lr * gamma ** last_epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = positive("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form(self):
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    """lr = initial_lr * (1 - min(last_epoch, total_iters) / total_iters) ** power."""

    def __init__(self, optimizer, total_iters=5, power=1.0, last_epoch=-1):
        self.total_iters = integer("total_iters", total_iters, 1)
        self.power = positive("power", power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = self._current_lrs()
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        t, n = self.last_epoch, self.total_iters
        ratio = ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power
        return [lr * ratio for lr in lrs]

    def _closed_form(self):
        left = 1.0 - min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * left ** self.power for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * last_epoch / T_max)) / 2, continued
    past T_max as the same cosine (it rises back over the next T_max steps), as torch does."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        positive("T_max", T_max)
        self.T_max = T_max
        self.eta_min = real("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lrs = self._current_lrs()
        if self._is_initial:
            return lrs
        t, n, low = self.last_epoch, self.T_max, self.eta_min
        if (t - 1 - n) % (2 * n) == 0:
            # At the trough the ratio below is 0/0: step up by the cosine's first increment.
            return [lr + (base - low) * (1.0 - math.cos(math.pi / n)) / 2
                    for lr, base in zip(lrs, self.base_lrs)]
        ratio = (1.0 + math.cos(math.pi * t / n)) / (1.0 + math.cos(math.pi * (t - 1) / n))
        return [ratio * (lr - low) + low for lr in lrs]

    def _closed_form(self):
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base - self.eta_min) * (1.0 + cos) / 2 for base in self.base_lrs]


# The classes defined in the private modules present themselves as this module's.
for _cls in (LRScheduler, SequentialLR, ChainedScheduler, ReduceLROnPlateau, CosineAnnealingWarmRestarts,
             CyclicLR, OneCycleLR):
    _cls.__module__ = __name__
del _cls
