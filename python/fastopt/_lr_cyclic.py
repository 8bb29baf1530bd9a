"""Cyclic schedules: CosineAnnealingWarmRestarts, CyclicLR and OneCycleLR (the last two also cycle
momentum, written to each group's ``"momentum"`` or ``"betas"[0]``)."""
import copy
import math
import numbers
from collections.abc import Mapping

from ._lr_base import (LRScheduler, function_state, in_range, integer, momentum_key, per_group, positive,
                       real, set_momentum)
from ._param_groups import param_groups


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter 2017): a cosine from initial_lr to eta_min over T_i steps, then a
    restart; T_0 steps for the first period, each next one T_mult times longer.
    lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2."""

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, last_epoch=-1):
        self.T_0 = self.T_i = integer("T_0", T_0, 1)
        self.T_mult = integer("T_mult", T_mult, 1)
        self.eta_min = real("eta_min", eta_min)
        self.T_cur = integer("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        cos = math.cos(math.pi * self.T_cur / self.T_i)
        return [self.eta_min + (base - self.eta_min) * (1.0 + cos) / 2 for base in self.base_lrs]

    def step(self, epoch=None):
        """One step, or (a float allowed, as in torch) the position ``epoch`` in the restarts."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur += 1
            if self.T_cur >= self.T_i:
                self.T_cur %= self.T_i
                self.T_i *= self.T_mult
        else:
            epoch = epoch if isinstance(epoch, numbers.Integral) else real("epoch", epoch)
            if epoch < 0:
                raise ValueError(f"epoch must be >= 0, got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    # Restarts so far: the largest n with T_0 (T_mult^n - 1) / (T_mult - 1) <= epoch.
                    n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** n
            else:
                self.T_i, self.T_cur = self.T_0, epoch
        self.last_epoch = math.floor(epoch)
        groups = self._groups
        for group, lr in zip(groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]


class _MomentumCycle:
    """Shared by CyclicLR and OneCycleLR: per-group momentum bounds, checked, then written."""

    def _momenta(self, optimizer, cycle_momentum, base_momentum, max_momentum, groups):
        self.cycle_momentum = bool(cycle_momentum)
        if not self.cycle_momentum:
            return None
        key = momentum_key(optimizer, "cycle_momentum")
        check = lambda name, v: in_range(name, v, 0.0, 1.0)  # noqa: E731
        return key, per_group("base_momentum", base_momentum, groups, check), \
            per_group("max_momentum", max_momentum, groups, check)

    def _start_momenta(self, groups, key, base, top):
        self.use_beta1 = key == "betas"
        for group, b, m in zip(groups, base, top):
            set_momentum(group, key, m)
            group["max_momentum"], group["base_momentum"] = m, b

    def _write_momenta(self, momenta):
        key = "betas" if self.use_beta1 else "momentum"
        for group, m in zip(self._groups, momenta):
            set_momentum(group, key, m)


class CyclicLR(_MomentumCycle, LRScheduler):
    """Cyclical learning rates (Smith 2017): lr goes from base_lr up to max_lr over step_size_up
    steps and back over step_size_down, its amplitude scaled per cycle ('triangular': 1,
    'triangular2': halved each cycle) or per step ('exp_range': gamma ** step), or by scale_fn.
    With cycle_momentum, momentum moves the opposite way between max_momentum and base_momentum."""

    _not_saved = LRScheduler._not_saved + ("_scale_fn_custom",)

    def __init__(self, optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None, mode="triangular",
                 gamma=1.0, scale_fn=None, scale_mode="cycle", cycle_momentum=True, base_momentum=0.8,
                 max_momentum=0.9, last_epoch=-1):
        groups = param_groups(optimizer)
        nonnegative = lambda name, v: in_range(name, v, 0.0, math.inf, high_open=True)  # noqa: E731
        base_lrs = per_group("base_lr", base_lr, groups, nonnegative)
        self.max_lrs = per_group("max_lr", max_lr, groups, nonnegative)
        up = positive("step_size_up", step_size_up)
        down = up if step_size_down is None else positive("step_size_down", step_size_down)
        if scale_fn is None and mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(f"mode must be 'triangular', 'triangular2' or 'exp_range' (or give scale_fn), got {mode!r}")
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        gamma = positive("gamma", gamma)
        momenta = self._momenta(optimizer, cycle_momentum, base_momentum, max_momentum, groups)
        last_epoch = integer("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode, self.gamma = mode, gamma
        self._scale_fn_custom = scale_fn
        # The built-in modes fix their scale_mode, as in torch.
        self.scale_mode = scale_mode if scale_fn is not None else ("iterations" if mode == "exp_range" else "cycle")
        if last_epoch == -1:
            for group, lr in zip(groups, base_lrs):
                group["lr"] = lr
            if momenta:
                self._start_momenta(groups, *momenta)
        elif momenta:
            self.use_beta1 = momenta[0] == "betas"
        if momenta:
            self.base_momentums, self.max_momentums = momenta[1], momenta[2]
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x):
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1.0 / 2.0 ** (x - 1)
        return self.gamma ** x

    def get_lr(self):
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle  # position in the cycle, [0, 1)
        height = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)
        lrs = [base + (top - base) * height * scale for base, top in zip(self.base_lrs, self.max_lrs)]
        if self.cycle_momentum:
            self._write_momenta([top - (top - base) * height * scale
                                 for base, top in zip(self.base_momentums, self.max_momentums)])
        return lrs

    def state_dict(self):
        """As torch: a scale_fn that is a plain function is not saved, a callable object's __dict__ is."""
        state = super().state_dict()
        state["_scale_fn_custom"] = function_state(self._scale_fn_custom) if self._scale_fn_custom else None
        return state

    def load_state_dict(self, state_dict):
        state = self._checked_state(state_dict)
        fn_state = state.pop("_scale_fn_custom")
        if fn_state is not None and not isinstance(fn_state, Mapping):
            raise ValueError("state_dict['_scale_fn_custom'] must be None or a dict")
        vars(self).update(copy.deepcopy(state))
        if fn_state is not None and self._scale_fn_custom is not None:
            vars(self._scale_fn_custom).update(copy.deepcopy(fn_state))


class OneCycleLR(_MomentumCycle, LRScheduler):
    """The 1cycle policy (Smith & Topin 2018): lr rises from max_lr / div_factor to max_lr over the
    first pct_start of total_steps, then anneals to initial_lr / final_div_factor ('cos' or
    'linear'); three_phase comes back to the initial lr before the final anneal. Momentum moves
    the other way between max_momentum and base_momentum."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, last_epoch=-1):
        groups = param_groups(optimizer)
        if total_steps is not None:
            total = integer("total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            total = integer("epochs", epochs, 1) * integer("steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError("give total_steps, or epochs and steps_per_epoch")
        pct_start = in_range("pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        max_lrs = per_group("max_lr", max_lr, groups,
                            lambda name, v: in_range(name, v, 0.0, math.inf, high_open=True))
        div_factor = positive("div_factor", div_factor)
        final_div_factor = positive("final_div_factor", final_div_factor)
        momenta = self._momenta(optimizer, cycle_momentum, base_momentum, max_momentum, groups)
        last_epoch = integer("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        self.total_steps = total
        self._anneal_func_type = anneal_strategy
        # Each phase runs from the previous end_step to its own, between two group keys.
        warm = float(pct_start * total) - 1
        if three_phase:
            self._schedule_phases = [
                _phase(warm, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(float(2 * pct_start * total) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                _phase(total - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self._schedule_phases = [
                _phase(warm, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(total - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        if last_epoch == -1:
            for group, top in zip(groups, max_lrs):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
            if momenta:
                self._start_momenta(groups, *momenta)
        elif momenta:
            self.use_beta1 = momenta[0] == "betas"
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start, end, pct):
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR was stepped {t} times; total_steps is {self.total_steps}")
        lrs, momenta = [], []
        for group in self._groups:
            start = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if t <= end or i == len(self._schedule_phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        momenta.append(self._anneal(group[phase["start_momentum"]],
                                                    group[phase["end_momentum"]], pct))
                    break
                start = end
        if self.cycle_momentum:
            self._write_momenta(momenta)
        return lrs


def _phase(end_step, start_lr, end_lr, start_momentum, end_momentum):
    return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr,
            "start_momentum": start_momentum, "end_momentum": end_momentum}
