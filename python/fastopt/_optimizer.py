"""The stateful optimizers' base: torch.optim's param groups over fastopt's fused steps.

Hyper-parameters live in ``param_groups`` (list of dicts, as in torch); they are validated when a
step reads them, so a scheduler may write ``group["lr"]`` between steps. Each parameter has its
own state dict and step count (a frozen parameter, ``grad=None``, does not advance). The arrays
of one step that share rule variant and dtypes go to the kernels in one call (_stepping.py).
"""
import operator

from . import _backend, _blockwise_step, _checks, _ema, _params, _stepping, checkpoint
from ._dtypes import CODE_BFLOAT16, UINT16, bfloat16_bits, dtype_code, is_half
from ._groups import TORCH_NOOPS, ParamGroup, _StateByParam

_MISSING = object()
# Attributes a user may set besides the hyper-parameters.
_SETTABLE = frozenset({"backend", "seed"})


class _Param:
    """One parameter: the array stepped in place, its group, its state and validation cache."""

    __slots__ = ("array", "source", "grad_source", "group", "state", "state_dtype", "kind", "fresh", "cache")

    def __getstate__(self):
        # A torch tensor's NumPy view is rebuilt from the tensor, so the two stay one memory.
        array = None if _params.is_torch_tensor(self.source) else self.array
        return (array, self.source, self.grad_source, self.group, self.state, self.state_dtype, self.kind,
                set(self.fresh))

    def __setstate__(self, saved):
        (array, self.source, self.grad_source, self.group, self.state, self.state_dtype, self.kind,
         self.fresh) = saved
        self.array = array if array is not None else _params.as_array(self.source, "param", writable=True)
        self.cache = None

    @property
    def xp(self):
        return _backend.array_module(self.kind)


class OptimizerCore:
    """Param groups, per-parameter state and the step; subclasses give the rule (optim.py)."""

    _rule = None
    _options = {}        # name -> check(name, value) -> value, for every group option
    _optional = frozenset(TORCH_NOOPS)  # options a checkpoint may lack (defaults are used)
    _eager_states = False  # create the state arrays at construction (Adagrad, as torch)
    _state_array_names = ()  # every state array the rule keeps under some options
    _rule_needs_step = True  # torch's SGD keeps no step: its checkpoints may lack one

    def __init__(self, params, defaults, *, master_weights=False, stochastic_rounding=False, seed=0,
                 state_dtype=None, param_dtype=None, backend=None, foreach=None, capturable=False,
                 differentiable=False, fused=None, ema_decay=None, ema_warmup=False, ema_dtype=None):
        defaults = dict(defaults, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused)
        if backend is not None:
            _backend._named(backend, "backend")
        # The EMA of the weights (_ema.py): checked before anything is built.
        ema_decay = _ema.checked_decay(ema_decay)
        ema_dtype = _ema.checked_dtype(ema_dtype)
        if ema_decay is None and (ema_warmup or ema_dtype is not None):
            raise ValueError("ema_warmup and ema_dtype need ema_decay (the EMA is off without it)")
        groups, single = _params.group_list(params)
        put = self.__dict__.__setitem__
        put("_ema", None if ema_decay is None else _ema.Averaging(ema_decay, bool(ema_warmup), ema_dtype))
        put("_ema_swapped", False)
        put("_single", single)
        put("param_dtype", param_dtype)
        put("backend", backend)
        put("master_weights", bool(master_weights))
        put("stochastic_rounding", bool(stochastic_rounding))
        put("seed", _checks.checked_seed(seed))
        put("_state_dtype_option", state_dtype)
        put("last_step_skipped", False)
        put("last_grad_norm", None)
        put("_params", [])
        put("param_groups", [])
        put("_group_cache", [])
        put("_last_grads", None)
        put("_plan", None)  # a list step's reusable work (_stepping._Plan)
        put("_one_step", None)  # the same for one array (_stepping.step_one)
        put("defaults", self._checked_options(defaults, "defaults"))
        for group in groups:
            self.add_param_group(group)

    # ---- options ------------------------------------------------------------------------------
    def _checked_options(self, group, where):
        """The validated values of every option of `group` (missing ones are an error)."""
        checked = {}
        for name, check in self._options.items():
            value = group.get(name, _MISSING)
            if value is _MISSING:
                raise ValueError(f"{where} has no '{name}'")
            checked[name] = check(name, value)
        self._check_combination(checked)
        return checked

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A group's option values in one C call, to tell an untouched group at each step.
        cls._option_values = staticmethod(operator.itemgetter(*cls._options)) if cls._options else None

    def _check_combination(self, h):
        """Checks between options of one group (subclasses)."""

    def _group_options(self, i):
        """Group i's validated options, re-validated whenever a value was replaced."""
        group = self.param_groups[i]
        cached = self._group_cache[i]
        if cached is not None:
            values, checked = cached
            try:
                # Tuple equality tests identity first: an untouched group costs one itemgetter.
                if self._option_values(group) == values:
                    return checked
            except (KeyError, ValueError, TypeError):  # a key deleted, an array-valued option
                pass
        where = f"param_groups[{i}]"
        try:
            checked = self._checked_options(group, where)
        except (ValueError, TypeError) as exc:
            if len(self.param_groups) == 1 or str(exc).startswith(where):
                raise
            raise type(exc)(f"{where}: {exc}") from None
        self._group_cache[i] = (self._option_values(group), checked)
        return checked



    def __getattr__(self, name):
        # Only reached for names that are not ordinary attributes: the group options.
        if name.startswith("_") or name not in type(self)._options:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        values = [g.get(name, _MISSING) for g in self.__dict__["param_groups"]]
        if any(v is _MISSING for v in values):
            raise AttributeError(f"a param group has no '{name}'")
        first = values[0]
        if any(v != first for v in values[1:]):
            raise ValueError(f"the param groups have different values of {name}: read "
                             f"opt.param_groups[i][{name!r}]")
        return first

    def __setattr__(self, name, value):
        options = type(self)._options
        if name in options:
            # opt.lr = x sets every group, validated now (a scheduler may also write the groups).
            value = options[name](name, value)
            for group in self.param_groups:
                group[name] = value
        elif name == "backend":
            if value is not None:
                _backend._named(value, "backend")
            self.__dict__[name] = value
        elif name == "seed":  # stochastic rounding's seed (a sharded step sets it per piece)
            self.__dict__[name] = _checks.checked_seed(value)
        elif name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"{type(self).__name__} has no option {name!r}; its options are "
                                 f"{', '.join(options)} (see opt.param_groups)")

    # ---- parameters ---------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Adds a group (a dict with "params"); options it lacks take the defaults (torch)."""
        where = f"param_groups[{len(self.param_groups)}]"
        group = _params.normalized_group(param_group, where)
        for name, value in self.defaults.items():
            group.setdefault(name, value)
        checked = self._checked_options(group, where)
        group = ParamGroup(type(self), {**group, **checked})
        start = len(self._params)
        new = [self._new_param(source, len(self.param_groups), f"params[{start + j}]")
               for j, source in enumerate(group["params"])]
        every = self._params + new
        kinds = {p.kind for p in every}
        if len(kinds) > 1:
            raise TypeError("the parameters mix NumPy and CuPy arrays: one optimizer steps one kind")
        if self.backend is not None and _backend.BACKENDS[self.backend].array_kind not in kinds:
            raise TypeError(f"backend={self.backend!r} does not compute on {kinds.pop()} arrays")
        if self.master_weights + self.stochastic_rounding and not any(
                is_half(dtype_code(p.array.dtype, self.param_dtype)) for p in every):
            raise TypeError("master_weights / stochastic_rounding are for float16 / bfloat16 params, "
                            "and only they take either")
        named = [(f"params[{j}]", p.array) for j, p in enumerate(every)]
        try:
            _checks.check_disjoint(named)
        except TypeError as exc:
            raise ValueError(f"some parameters appear more than once or overlap ({exc})") from None
        for p in new:
            self._init_param_state(p, checked)
        self.param_groups.append(group)
        self._group_cache.append(None)
        self.__dict__["_plan"] = self.__dict__["_one_step"] = None
        self._params.extend(new)

    def _new_param(self, source, group_index, where):
        array, grad_source = _params.param_arrays(source, "param" if self._single else where)
        kind = _backend.array_kind(array)
        code = dtype_code(array.dtype, self.param_dtype)
        if code is None:
            raise TypeError(f"param has dtype {array.dtype}; expected float32, float64, or float16 / "
                            "bfloat16 with master_weights=True" + ("" if self._single else f" ({where})"))
        if not array.flags.c_contiguous:
            raise TypeError("param must be C-contiguous (use a FlatParams buffer)"
                            + ("" if self._single else f" ({where})"))
        if kind == "numpy" and not array.flags.writeable:
            raise TypeError("param is read-only; fastopt updates it in place")
        half = is_half(code)
        if half and not (self.master_weights or self.stochastic_rounding) or (
                self._single and self.master_weights + self.stochastic_rounding != half):
            raise TypeError("float16 / bfloat16 params need master_weights=True (or, for bfloat16, "
                            "stochastic_rounding=True), and only they take either")
        if half and self.master_weights and self.stochastic_rounding:
            raise TypeError("choose master_weights=True or stochastic_rounding=True, not both")
        if half and self.stochastic_rounding and code != CODE_BFLOAT16:
            raise TypeError("stochastic_rounding is for bfloat16 params; float16 needs master_weights=True")
        p = _Param()
        p.array, p.source, p.grad_source, p.group, p.kind = array, source, grad_source, group_index, kind
        option = self._state_dtype_option
        quantized = isinstance(option, str) and option in _blockwise_step.SCHEME_CODES
        # A quantized scheme's name, or (arrays too small to quantize, other options) a dtype.
        p.state_dtype = _blockwise_step.resolve(option, code, array.size) if quantized else None
        if p.state_dtype is None:
            p.state_dtype = self._resolve_state_dtype("float32" if quantized else option, code, kind)
        p.state, p.fresh, p.cache = _stepping.ParamState(step=0), set(), None
        if half and self.master_weights:
            p.state["master_weights"] = self._widen_half(p, code)
        averaging = _ema.of(self)
        if averaging is not None:
            p.state["ema"] = averaging.new_state(self, p, code)
        return p

    def _resolve_state_dtype(self, state_dtype, param_code, kind):
        raise NotImplementedError

    def _widen_half(self, p, code):
        """A float32 copy of a half param (uint16 storage included: CuPy has no bfloat16)."""
        xp, param = p.xp, p.array
        if param.dtype == xp.uint16:
            if code == dtype_code(xp.dtype(xp.float16)):
                return param.view(xp.float16).astype(xp.float32).reshape(-1)
            return (param.astype(xp.uint32) << 16).view(xp.float32).reshape(-1)
        return param.astype(xp.float32).reshape(-1)

    def refresh_master_weights(self):
        """Re-reads every float16 / bfloat16 param into its float32 master copy.

        With master_weights=True the master copy is what is stepped, and the half param is
        rewritten from it; an edit of the half param (loading weights into it, say) is therefore
        lost at the next step unless this is called after the edit."""
        for p in self._params:
            master = p.state.get("master_weights")
            if master is not None:
                master[...] = self._widen_half(p, dtype_code(p.array.dtype, self.param_dtype))

    # ---- the EMA of the weights (_ema.py) -------------------------------------------------------
    @property
    def ema_decay(self):
        """The EMA's decay (None: the optimizer keeps no EMA of the weights)."""
        averaging = _ema.of(self)
        return None if averaging is None else averaging.decay

    @property
    def ema(self):
        """The averaged weights, shaped as the params: one array, or a list in parameter order
        (views of each parameter's state["ema"]; a FlatParams' views: ``flat.views_of(opt.ema)``)."""
        return _ema.views(self)

    def swap_ema(self):
        """A context manager: inside ``with opt.swap_ema():`` the params hold the EMA (rounded to
        their dtype), for evaluation; on exit they get back their own values, bit for bit (master
        copies and states are never touched). step() inside the block raises."""
        return _ema.swapped(self)

    @property
    def params(self):
        """Every parameter array, groups flattened in order (the order step() takes grads in)."""
        return [p.array for p in self._params]

    @property
    def param(self):
        """The parameter array of an optimizer built on one array."""
        if len(self._params) != 1:
            raise AttributeError("this optimizer has several parameters: use opt.params")
        return self._params[0].array

    @property
    def state(self):
        """One array's state dict ("step" and arrays) when built on one array; else a dict of
        them keyed by parameter index (NumPy arrays cannot be dict keys as torch tensors are)."""
        if self._single:
            return self._params[0].state
        return _StateByParam((i, p.state) for i, p in enumerate(self._params)).attach(self._params)

    # ---- subclass interface -------------------------------------------------------------------
    def _state_names(self, h):
        """Names of the state arrays group options `h` use, in kernel order."""
        raise NotImplementedError

    def _rule_scalars(self, h, step, p):
        """(variant, scalars, decoupled, host_updates) for param p's 1-based step under options h;
        host_updates is a dict of scalar state written once the step is applied."""
        raise NotImplementedError

    # A method p -> what, beyond group and step, p's scalars depend on (SGD's first step,
    # NAdam's product), for the rules where something does.
    _scalar_token = None

    def _init_value(self, h, name):
        return 0.0

    def _host_state(self, h):
        """Scalar state a parameter starts with (NAdam's mu_product)."""
        return {}

    def _init_param_state(self, p, h):
        p.state.update(self._host_state(h))
        if self._eager_states:
            self._ensure_state(p, self._state_names(h), h)

    def _ensure_state(self, p, names, h):
        for name in names:
            if name not in p.state:
                value = self._init_value(h, name)
                if _blockwise_step.is_quantized(p):
                    _blockwise_step.init_state(p, name, value)
                    p.fresh.add(name)
                    p.cache = None
                    continue
                fill = bfloat16_bits(value) if p.state_dtype == UINT16 else value
                p.state[name] = p.xp.full(p.array.size, fill, dtype=p.state_dtype)
                p.fresh.add(name)
                p.cache = None

    # ---- stepping -----------------------------------------------------------------------------
    def _grad_list(self, grads):
        count = len(self._params)
        if grads is None:
            sources = [p.grad_source for p in self._params]
            if any(s is None for s in sources):
                if self._single:
                    raise TypeError("grad must be a NumPy or CuPy array, got NoneType")
                raise TypeError("step() needs the gradients: a list of them in parameter order "
                                "(None for a frozen parameter)")
            grads = [_params.default_grad(s) for s in sources]
        elif isinstance(grads, (list, tuple)):
            if len(grads) != count:
                raise ValueError(f"step() got {len(grads)} gradients for {count} parameters "
                                 "(give one per parameter, None for a frozen one)")
        elif count == 1:
            grads = [grads]
        else:
            raise TypeError(f"this optimizer has {count} parameters: give step() a list of {count} "
                            "gradients in parameter order (None for a frozen one)")
        if count == 1 and _backend.array_kind(grads[0]) is not None:
            return grads
        out = []
        for j, g in enumerate(grads):
            if g is not None and _backend.array_kind(g) is None:
                where = "grad" if count == 1 else f"grads[{j}]"
                try:
                    g = _params.as_array(g, where, writable=False)
                except TypeError:
                    raise TypeError(f"grad must be a NumPy or CuPy array (or a torch CPU tensor, DLPack "
                                    f"or buffer-protocol object), got {type(g).__name__} ({where})") from None
            out.append(g)
        return out

    def _arrays(self, p, grad, names, grad_dtype):
        """The step's arrays of p, fully validated the first time a grad object is seen."""
        state = p.state
        cached = p.cache
        if cached is not None and cached[0] is grad and cached[1] == names and cached[2] == grad_dtype:
            arrays = cached[3]
            # A state array replaced by assignment (opt.state[name] = ...) is validated and used.
            if state.get("master_weights") is arrays.master and all(
                    map(operator.is_, map(state.__getitem__, names), arrays.states)):
                return arrays
        param = p.array
        if grad.ndim > 1 and param.ndim > 1 and grad.shape != param.shape:
            raise ValueError(f"grad has shape {grad.shape} but param has shape {param.shape}")
        if _blockwise_step.is_quantized(p):
            return _blockwise_step.step_arrays(param, grad, _blockwise_step.param_states(p, names),
                                               state.get("master_weights"), self.param_dtype, grad_dtype,
                                               self.seed if self.stochastic_rounding else None)
        arrays = _checks.step_arrays(param, grad, [(n, state[n]) for n in names], state.get("master_weights"),
                                     self.param_dtype, grad_dtype, self.seed if self.stochastic_rounding else None,
                                     "bfloat16" if p.state_dtype == UINT16 else None)
        p.cache = (grad, names, grad_dtype, arrays)
        return arrays

    def _where(self, j, exc):
        if len(self._params) == 1:
            return exc
        return type(exc)(f"params[{j}]: {exc}")

    def step(self, grads=None, *, closure=None, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
             grad_dtype=None):
        """One fused update of every parameter that has a gradient.

        ``grads``: one array, or a list in parameter order (None skips that parameter, as torch
        skips ``p.grad is None``); omitted, the gradients are read from a FlatParams' ``grad`` or
        torch tensors' ``.grad``. ``closure`` is called first and its loss returned (torch).
        Without a closure, returns the unscaled global gradient norm when one was computed
        (max_grad_norm or skip_nonfinite), else None. ``max_grad_norm``, ``grad_scale`` and
        ``skip_nonfinite`` act on all parameters together; a skipped step changes nothing.
        """
        if closure is None and callable(grads) and _backend.array_kind(grads) is None \
                and not _params.is_torch_tensor(grads):
            closure, grads = grads, None
        _ema.refuse_step_while_swapped(self)
        loss = closure() if closure is not None else None
        if max_grad_norm is not None:
            max_grad_norm = _checks.positive("max_grad_norm", max_grad_norm)
        inv_scale = 1.0 if grad_scale is None else _checks.grad_scale(grad_scale)
        if len(self._params) == 1 and _backend.array_kind(grads) is not None:
            norm = _stepping.step_one(self, grads, inv_scale, max_grad_norm, skip_nonfinite, grad_dtype)
            return loss if closure is not None else norm
        plan = self._plan
        if plan is None or not (isinstance(grads, (list, tuple)) and plan.same_grads(grads)):
            grads = self._grad_list(grads)  # else: the arrays the plan checked
        return _stepping.step_list(self, grads, inv_scale, max_grad_norm, skip_nonfinite,
                                   grad_dtype, closure is not None, loss)

    def zero_grad(self, set_to_none=True):
        """Zeroes the gradients: FlatParams' ``grad``; torch tensors' ``.grad`` (set to None by
        default, as torch); else the gradient arrays given to the last step()."""
        sources = [p.grad_source for p in self._params]
        if all(s is not None for s in sources):
            for s in sources:
                _params.zero_grad(s, set_to_none)
            return
        for g in self._last_grads or ():
            if g is not None:
                g[...] = 0

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        """A deep copy in torch's layout: {"state": {index: {"step": int, name: array}},
        "param_groups": [{options..., "params": [indices]}]} (see fastopt.checkpoint)."""
        return checkpoint.state_dict(self)

    def load_state_dict(self, state_dict):
        """Loads a state_dict of this optimizer's kind (fastopt's or torch's own), copying arrays
        into this optimizer's buffers. Everything is validated first: one that does not fit
        changes nothing, and the error says what did not fit."""
        checkpoint.load_state_dict(self, state_dict)

    # ---- pickling -----------------------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_group_cache"] = [None] * len(state["_group_cache"])
        state["_last_grads"] = None
        state["_plan"] = state["_one_step"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        sizes = sum(p.array.size for p in self._params)
        groups = "; ".join(", ".join(f"{n}={g.get(n)!r}" for n in self._options if n not in TORCH_NOOPS)
                           for g in self.param_groups)
        return f"{type(self).__name__}({len(self._params)} params, {sizes} elements; {groups})"
