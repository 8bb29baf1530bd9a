"""The step of the stateful optimizers: validate every array first, then the global norm, then
the kernel calls, then the host-side state; a step that raises or is skipped changes nothing.

A list of arrays goes to the kernels as few calls as possible: the arrays that share the rule's
variant and their dtypes form one call (_multi.py: one segment-table call on the cpu backend).
Arrays of one group at one step share their row of scalars, computed once."""
import math
import operator

from . import _backend, _ema, _kernel_call, _multi, _scalars
from ._kernel_call import KernelCall


class ParamState(dict):
    """A parameter's state dict. A write through it (a replaced array, an edited step count, a
    loaded checkpoint) counts in ``writes``, which tells a reused step plan that it is stale;
    the step itself writes around the count."""

    writes = 0

    def _wrote(self):
        ParamState.writes += 1

    def __setitem__(self, key, value):
        self._wrote()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self._wrote()
        dict.__delitem__(self, key)

    def __ior__(self, other):
        self._wrote()
        return dict.__ior__(self, other)

    def clear(self):
        self._wrote()
        dict.clear(self)

    def pop(self, *args):
        self._wrote()
        return dict.pop(self, *args)

    def popitem(self):
        self._wrote()
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        self._wrote()
        return dict.setdefault(self, key, default)

    def update(self, *args, **kwargs):
        self._wrote()
        dict.update(self, *args, **kwargs)

    def __reduce__(self):
        return (ParamState, (dict(self),))


def _begin(opt, grads):
    put = opt.__dict__.__setitem__
    put("_last_grads", grads)
    put("last_step_skipped", False)
    put("last_grad_norm", None)


def _clip(opt, module, pairs, inv_scale, max_grad_norm, skip_nonfinite):
    """(inv_scale with the clip factor, skipped) after the global norm over (code, grad) pairs."""
    if max_grad_norm is None and not skip_nonfinite:
        return inv_scale, False
    total = 0.0
    for code, grad in pairs:
        total += module.sum_of_squares(code, grad)
    norm = math.sqrt(total) * abs(inv_scale)
    opt.__dict__["last_grad_norm"] = norm
    if skip_nonfinite and not math.isfinite(norm):
        opt.__dict__["last_step_skipped"] = True
        return inv_scale, True
    if max_grad_norm is not None:
        inv_scale *= _scalars.clip_factor(norm, max_grad_norm)
    return inv_scale, False


def step_one(opt, grad, inv_scale, max_grad_norm, skip_nonfinite, grad_dtype):
    """An optimizer of one array (fastopt's own form, FlatParams): the same checks and kernel,
    without the list's bookkeeping, so a small step keeps a small overhead. The checked arrays are
    reused while the grad object, the group's options and every state dict are untouched (the
    step writes its count around ParamState.writes for that)."""
    p = opt._params[0]
    h = opt._group_options(0)
    reuse = opt._one_step
    if reuse is not None and reuse[0] is grad and reuse[1] is h and reuse[2] == ParamState.writes \
            and reuse[3] == grad_dtype:
        arrays = reuse[4]
    else:
        names = opt._state_names(h)
        opt._ensure_state(p, names, h)
        arrays = opt._arrays(p, grad, names, grad_dtype)
        opt.__dict__["_one_step"] = (grad, h, ParamState.writes, grad_dtype, arrays)
    averaging = _ema.of(opt)
    ema, ema_code = averaging.arrays(opt, p, arrays) if averaging is not None else (None, 0)
    _begin(opt, [grad])
    module = _backend.select(arrays.kind, opt.backend).module
    inv_scale, skipped = _clip(opt, module, ((arrays.grad_code, arrays.grad),), inv_scale, max_grad_norm,
                               skip_nonfinite)
    if skipped:
        return opt.last_grad_norm
    state = p.state
    step = state["step"] + 1
    variant, scalars, decoupled, host = opt._rule_scalars(h, step, p)
    scale, wd, decay = _scalars.prologue(h["lr"], h["weight_decay"], decoupled, h["maximize"], inv_scale)
    seed = _scalars.step_seed(opt.seed, step) if opt.stochastic_rounding else 0
    try:
        _kernel_call.step(module, KernelCall(opt._rule, variant, arrays.param_code, arrays.grad_code,
                                             arrays.state_code, arrays.param, arrays.grad, arrays.master,
                                             arrays.states, scalars, scale, wd, decay, seed, ema, ema_code,
                                             averaging.weight(step) if ema is not None else 0.0))
    except Exception:
        opt.__dict__["_one_step"] = None
        _recheck(opt, [(p, grad, opt._state_names(h))], grad_dtype)
        raise
    dict.__setitem__(state, "step", step)
    if host:
        dict.update(state, host)
    p.fresh.clear()
    return opt.last_grad_norm


def _recheck(opt, entries, grad_dtype):
    # The cached checks may be stale (an array made read-only since): the full checks, which
    # raise naming the argument, replace the backend's own error when they fail.
    for p, grad, names in entries:
        p.cache = None
        opt._arrays(p, grad, names, grad_dtype)


def step_list(opt, grads, inv_scale, max_grad_norm, skip_nonfinite, grad_dtype, has_closure, loss):
    plan = opt._plan
    if plan is not None:
        done = plan.step(opt, grads, inv_scale, max_grad_norm, skip_nonfinite, grad_dtype)
        if done:
            return loss if has_closure else opt.last_grad_norm
        opt.__dict__["_plan"] = None
    previous = opt._last_grads
    params = opt._params
    options = [opt._group_options(i) for i in range(len(opt.param_groups))]
    names_of = [opt._state_names(h) for h in options]
    arrays_of, ensure = opt._arrays, opt._ensure_state
    averaging = _ema.of(opt)
    emas = {}  # j -> (ema, ema_code), checked with the step's other arrays
    stepped = []
    for j, grad in enumerate(grads):
        if grad is None:
            continue
        p = params[j]
        names = names_of[p.group]
        try:
            state = p.state
            for name in names:
                if name not in state:
                    ensure(p, names, options[p.group])
                    break
            stepped.append((j, p, arrays_of(p, grad, names, grad_dtype)))
            if averaging is not None:
                emas[j] = averaging.arrays(opt, p, stepped[-1][2])
        except (ValueError, TypeError) as exc:
            raise opt._where(j, exc) from None
    _begin(opt, grads)
    if not stepped:
        return loss
    module = _backend.select(stepped[0][2].kind, opt.backend).module
    inv_scale, skipped = _clip(opt, module, [(a.grad_code, a.grad) for _, _, a in stepped], inv_scale,
                               max_grad_norm, skip_nonfinite)
    if skipped:
        return loss if has_closure else opt.last_grad_norm
    rows, calls, updates = {}, {}, []
    token = opt._scalar_token
    seeded = opt.stochastic_rounding
    for j, p, a in stepped:
        step = p.state["step"] + 1
        key = (p.group, step, token(p) if token else None)
        found = rows.get(key)
        if found is None:
            h = options[p.group]
            variant, scalars, decoupled, host = opt._rule_scalars(h, step, p)
            pro = _scalars.prologue(h["lr"], h["weight_decay"], decoupled, h["maximize"], inv_scale)
            found = rows[key] = (variant, scalars + pro, host)
        variant, row, host = found
        call_key = (variant, a.param_code, a.grad_code, a.state_code, a.master is not None)
        call = calls.get(call_key)
        if call is None:
            call = calls[call_key] = _multi.Call()
        call.add(a, row, _scalars.step_seed((opt.seed + j) & 0xFFFFFFFF, step) if seeded else 0)
        if averaging is not None:
            call.add_ema(*emas[j], averaging.weight(step), p.group)
        updates.append((p, step, host))
    try:
        _multi.run(module, opt._rule, calls)
    except Exception:
        _recheck(opt, [(p, a.grad, names_of[p.group]) for _, p, a in stepped], grad_dtype)
        raise
    for p, step, host in updates:
        state = p.state
        state["step"] = step
        if host:
            state.update(host)
        if p.fresh:
            p.fresh.clear()
    # The same gradient arrays twice in a row (persistent buffers): keep this step's plan, so
    # the next steps skip the per-array work while nothing it relied on changes.
    if previous is not None and len(previous) == len(grads) and all(map(operator.is_, previous, grads)) \
            and not seeded and len(rows) == len({key[0] for key in rows}):
        opt.__dict__["_plan"] = _Plan(opt, grads, options, grad_dtype, module, stepped, names_of, calls, rows)
    return loss if has_closure else opt.last_grad_norm


class _Plan:
    """A list step's arrays, checks and kernel calls, reused while every input is the same object.

    Valid while: the gradient list holds the same arrays, every group's options are untouched
    (the same validated dict), the backend is the same, and no parameter state was written
    since (ParamState.writes). Each group's stepped arrays
    share one step count, so each step computes one row of scalars per group."""

    __slots__ = ("grads", "options", "grad_dtype", "module", "writes", "members", "reps", "variants",
                 "calls", "pairs", "recheck")

    def __init__(self, opt, grads, options, grad_dtype, module, stepped, names_of, calls, rows):
        self.grads, self.options, self.grad_dtype, self.module = list(grads), list(options), grad_dtype, module
        self.members, self.reps = [], {}
        for _, p, a in stepped:
            self.members.append((p.state, p.group))
            self.reps.setdefault(p.group, p)
        self.writes = ParamState.writes
        self.variants = {key[0]: found[0] for key, found in rows.items()}
        # Per call: its arrays as the kernels take them, and the group of each row.
        self.calls = []
        for key, call in calls.items():
            groups = [None] * len(call.rows)
            for (group, _, _), (_, row, _) in rows.items():
                r = call.rows.get(row)
                if r is not None and groups[r] is None:
                    groups[r] = group
            self.calls.append((key, call, groups))
        self.pairs = [(a.grad_code, a.grad) for _, _, a in stepped]
        self.recheck = [(p, a.grad, names_of[p.group]) for _, p, a in stepped]

    def same_grads(self, grads):
        return len(grads) == len(self.grads) and all(map(operator.is_, grads, self.grads))

    def valid(self, opt, grads, grad_dtype):
        if grad_dtype is not self.grad_dtype or not self.same_grads(grads):
            return False
        if ParamState.writes != self.writes:  # some state was written since (a replaced array ...)
            return False
        count = len(opt.param_groups)
        try:
            return all(map(operator.is_, [opt._group_options(i) for i in range(count)], self.options))
        except (KeyError, ValueError, TypeError):  # an option made invalid: the full step says so
            return False

    def step(self, opt, grads, inv_scale, max_grad_norm, skip_nonfinite, grad_dtype):
        """Runs the step and returns True, or returns False (having changed nothing) when the plan
        no longer holds."""
        if not self.valid(opt, grads, grad_dtype):
            return False
        module = _backend.select(opt._params[0].kind, opt.backend).module
        if module is not self.module:
            return False
        rows = {}
        for group, p in self.reps.items():
            h = self.options[group]
            step = p.state["step"] + 1
            variant, scalars, decoupled, host = opt._rule_scalars(h, step, p)
            if variant != self.variants[group]:
                return False
            rows[group] = (step, host, scalars, decoupled, h)
        _begin(opt, grads)
        inv_scale, skipped = _clip(opt, module, self.pairs, inv_scale, max_grad_norm, skip_nonfinite)
        if skipped:
            return True
        for group, (step, host, scalars, decoupled, h) in rows.items():
            rows[group] = (step, host, scalars + _scalars.prologue(h["lr"], h["weight_decay"], decoupled,
                                                                    h["maximize"], inv_scale))
        calls = {}
        averaging = _ema.of(opt)
        weights = {g: averaging.weight(r[0]) for g, r in rows.items()} if averaging is not None else None
        for key, call, groups in self.calls:
            call.rows = {rows[g][2]: r for r, g in enumerate(groups)}
            if len(call.rows) != len(groups):  # two groups with equal rows: rebuild the plan
                return False
            if call.emas is not None:  # this step's EMA weights (they follow the step count)
                call.ema_weights = [weights[g] for g in call.ema_groups]
            calls[key] = call
        try:
            _multi.run(module, opt._rule, calls)
        except Exception:
            _recheck(opt, self.recheck, grad_dtype)
            raise
        put, update = dict.__setitem__, dict.update  # the step's own writes: not counted
        for state, group in self.members:
            step, host, _ = rows[group]
            put(state, "step", step)
            if host:
                update(state, host)
        return True
