"""Schedule-Free SGD and AdamW (Defazio et al. 2024; docs/algorithms.md, "Schedule-Free SGD /
AdamW"), with the semantics and defaults of the ``schedulefree`` package.

The parameter buffer holds y; state z starts as a copy of p. Each param group keeps, on the host,
the step count ``k``, the running ``lr_max`` and ``weight_sum``, and ``train_mode`` (the
package's names, so they travel in the state_dict's param_groups). ``opt.eval()`` moves the
buffer to x, where the model is evaluated, and ``opt.train()`` back to y, each one fused pass.
"""
import collections
import numbers

import numpy as np

from .. import _backend, _blockwise_step, _checks, _kernel_call, _scalars
from .._dtypes import CODE_BFLOAT16, CODE_FLOAT32, CODE_FLOAT64, UINT16, bfloat16_bits, dtype_code
from .._kernel_call import KernelCall
from . import _base as b

NAME = "ScheduleFree"
NUM_VARIANTS = 3
SGD, ADAMW, SWITCH = 0, 1, 2  # variants
GRADLESS_VARIANTS = (SWITCH,)  # the header's reads_grad(v) is false: param fills the gradient slot
STATES = ("z", "exp_avg_sq")
Scalars = collections.namedtuple("ScheduleFreeScalars", "c one_minus_c lr y_coef weight_decay beta2 "
                                                        "one_minus_beta2 bc2 eps")
# A group's host state, as the schedulefree package names it, with its starting values.
GROUP_STATE = (("k", 0), ("lr_max", -1.0), ("weight_sum", 0.0), ("scheduled_lr", 0.0), ("train_mode", True))


def schedule(lr, warmup_steps, r, weight_lr_power, k, lr_max, weight_sum):
    """Step k's (0-based) (lr_t, lr_max, weight_sum, c), in float64 as the package computes them."""
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr_t = lr * sched
    lr_max = max(lr_t, lr_max)
    weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
    weight_sum = weight_sum + weight
    c = weight / weight_sum if weight_sum != 0 else 0.0
    return lr_t, lr_max, weight_sum, c


def host_scalars(variant, lr_t, c, beta1, weight_decay, beta2=0.0, eps=1.0, step=1):
    """A step's scalars; `step` (1-based) only enters AdamW's bias correction."""
    bc2 = 1.0 - beta2**step if variant == ADAMW else 1.0
    return variant, Scalars(c, 1.0 - c, lr_t, lr_t * (beta1 * (1.0 - c) - 1.0), weight_decay, beta2, 1.0 - beta2,
                            bc2, eps)


def switch_scalars(beta1, to_train):
    """The move's scalars: y -> x is lerp(y, z, 1 - 1/beta1), x -> y is lerp(x, z, 1 - beta1)."""
    weight = 1.0 - beta1 if to_train else 1.0 - 1.0 / beta1
    return Scalars(weight, 1.0 - weight, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0)


def numba_update(v, p, g, z, s, s2, k, c):
    u = g
    if v != SWITCH:
        if v == ADAMW:
            s = k.beta2 * s + k.one_minus_beta2 * g * g
            u = g / (np.sqrt(s / k.bc2) + k.eps)
        if k.weight_decay != c[0]:
            u = u + k.weight_decay * p
    d = z - p  # torch.lerp's two-sided form; 2c < 1 is c < 0.5 exactly, without a literal
    low = p + k.c * d
    high = z - d * k.one_minus_c
    p = low if k.c + k.c < c[1] else high
    if v != SWITCH:
        p = p + k.y_coef * u
        z = z - k.lr * u
    return p, z, s, s2


# ---- checks -----------------------------------------------------------------------------------

def warmup_steps_check(name, value):
    """A number of steps: an integer >= 0 (an integral float is taken)."""
    if not isinstance(value, numbers.Integral):
        value = _checks._real(name, value)
    if isinstance(value, bool) or value < 0 or not float(value).is_integer():
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer number of steps >= 0)")
    return int(value)


def finite(name, value):
    value = _checks._real(name, value)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"Invalid {name}: {value} (expected a finite value)")
    return value


def open_unit(name, value):
    """0 < value < 1: eval() divides by beta1."""
    value = b.unit_interval(name, value)
    if value == 0.0:
        raise ValueError(f"Invalid {name}: 0.0 (expected 0 < {name} < 1: the move to x divides by it)")
    return value


def schedule_free_betas(name, value):
    beta1, beta2 = b.betas(name, value)
    return open_unit(name + "[0]", beta1), beta2


def _schedule_options(lr, warmup_steps, r, weight_lr_power, weight_decay):
    return (b.nonnegative("lr", lr), warmup_steps_check("warmup_steps", warmup_steps), finite("r", r),
            b.nonnegative("weight_lr_power", weight_lr_power), b.nonnegative("weight_decay", weight_decay))


def _schedule_array(schedule_state):
    if not (_backend.array_kind(schedule_state) == "numpy" and schedule_state.shape == (2,)
            and schedule_state.dtype == "float64" and schedule_state.flags.writeable):
        raise TypeError("schedule_state must be a writable float64 NumPy array [lr_max, weight_sum] "
                        "(start from [-1.0, 0.0])")
    return float(schedule_state[0]), float(schedule_state[1])


# ---- the functional layer ---------------------------------------------------------------------

def _refuse_quantized(state_dtype, states=()):
    """z is an iterate of the weights, not a moving average: quantizing it would move the weights."""
    if state_dtype in _blockwise_step.SCHEME_CODES or any(
            isinstance(s, _blockwise_step.QuantizedState) for _, s in states):
        raise ValueError("Schedule-Free's state z is an iterate of the weights, not a moving average: it "
                         "stays float32 (state_dtype='8bit' and 'fp8' are for moving-average state)")


def _functional_step(variant, param, grad, states, schedule_state, step, lr, beta1, weight_decay, warmup_steps,
                     r, weight_lr_power, beta2, eps, options):
    lr, warmup_steps, r, weight_lr_power, weight_decay = _schedule_options(lr, warmup_steps, r, weight_lr_power,
                                                                           weight_decay)
    o = b.step_options(0.0, options)  # the rule's own decay: the prologue's stays off
    _refuse_quantized(o.state_dtype, states)
    step = b.step_count(step)
    lr_max, weight_sum = _schedule_array(schedule_state)
    lr_t, lr_max, weight_sum, c = schedule(lr, warmup_steps, r, weight_lr_power, step - 1, lr_max, weight_sum)
    variant, scalars = host_scalars(variant, lr_t, c, beta1, weight_decay, beta2, eps, step)

    def schedule_is_apart(arrays):  # written after the kernel: it must not alias an array of it
        if arrays.kind == "numpy":
            _checks.check_disjoint([("schedule_state", schedule_state), ("param", param), ("grad", grad)] + states)

    result = b.fused_step(ID, variant, scalars, param, grad, states, o, lr=lr, decoupled=None,
                          check=schedule_is_apart)
    if not result.skipped:
        schedule_state[0], schedule_state[1] = lr_max, weight_sum
    return result


def sgd_schedule_free(param, grad, z, schedule_state, *, step, lr=1.0, momentum=0.9, weight_decay=0.0,
                      warmup_steps=0, r=0.0, weight_lr_power=2.0, **options):
    """Schedule-Free SGD's step k = step - 1 on y (param), z the base sequence.

    ``schedule_state`` is a float64 NumPy array [lr_max, weight_sum] (start: [-1.0, 0.0]),
    advanced in place unless the step is skipped. u = g + weight_decay * y;
    y = lerp(y, z, c) + lr_t (momentum (1 - c) - 1) u; z -= lr_t u.
    """
    momentum = open_unit("momentum", momentum)
    return _functional_step(SGD, param, grad, [("z", z)], schedule_state, step, lr, momentum, weight_decay,
                            warmup_steps, r, weight_lr_power, 0.0, 1.0, options)


def adamw_schedule_free(param, grad, z, exp_avg_sq, schedule_state, *, step, lr=0.0025, beta1=0.9, beta2=0.999,
                        eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0, **options):
    """Schedule-Free AdamW: :func:`sgd_schedule_free` with u = g / (sqrt(v / (1 - beta2^step)) + eps)
    + weight_decay * y, v = beta2 v + (1 - beta2) g^2."""
    beta1, eps = open_unit("beta1", beta1), b.epsilon("eps", eps)
    beta2 = b.unit_interval("beta2", beta2)
    return _functional_step(ADAMW, param, grad, [("z", z), ("exp_avg_sq", exp_avg_sq)], schedule_state, step,
                            lr, beta1, weight_decay, warmup_steps, r, weight_lr_power, beta2, eps, options)


def _switch_arrays(param, z, master_weights, param_dtype, state_dtype, rounding_seed):
    """The move's arrays, checked; (kind, param_code, state_code)."""
    kind, param_code, _ = _checks.param_and_grad(param, param, master_weights, param_dtype, None, rounding_seed)
    if _backend.array_kind(z) != kind:
        raise TypeError(f"z must be a {kind} array like param, got {_backend.array_kind(z)}")
    _checks._check_layout("z", z, writable=True)
    if z.size != param.size:
        raise ValueError(f"z has {z.size} elements but param has {param.size}")
    state_code = dtype_code(z.dtype, state_dtype)
    allowed = (CODE_FLOAT64,) if param_code == CODE_FLOAT64 else (CODE_FLOAT32, CODE_BFLOAT16)
    if state_code not in allowed:
        raise TypeError(f"z has dtype {z.dtype}, which the kernels do not take for a {param.dtype} param")
    named = [("param", param), ("z", z)] + ([("master_weights", master_weights)] if master_weights is not None else [])
    _checks.check_disjoint(named)
    return kind, param_code, state_code


def _move(param, z, beta1, to_train, master_weights=None, param_dtype=None, state_dtype=None, rounding_seed=None,
          backend=None):
    kind, param_code, state_code = _switch_arrays(param, z, master_weights, param_dtype, state_dtype, rounding_seed)
    module = _backend.select(kind, backend).module
    seed = 0 if rounding_seed is None else _checks.checked_seed(rounding_seed)
    # The gradient slot gets param: the move's variant never reads it.
    _kernel_call.step(module, KernelCall(ID, SWITCH, param_code, param_code, state_code, param, param, master_weights,
                                         (z,), switch_scalars(beta1, to_train), 1.0, 0.0, 1.0, seed))


def schedule_free_eval(param, z, *, beta1, **options):
    """Moves param from y to x = y + (1 - 1/beta1) (z - y), where the model is evaluated
    (beta1: AdamW's beta1 or SGD's momentum). ``options``: master_weights, param_dtype,
    state_dtype, rounding_seed, backend."""
    _move(param, z, open_unit("beta1", beta1), False, **options)


def schedule_free_train(param, z, *, beta1, **options):
    """Moves param from x back to y = x + (1 - beta1) (z - x): :func:`schedule_free_eval`'s inverse."""
    _move(param, z, open_unit("beta1", beta1), True, **options)


# ---- the classes ------------------------------------------------------------------------------

class _ScheduleFree(b.Optimizer):
    """The two classes' shared machinery: the group host state, z's start, train() / eval()."""

    _state_array_names = STATES
    _variant = None
    _rule_needs_step = False  # the package keeps no per-parameter step: its k is the group's
    _optional = frozenset(b.TORCH_NOOPS + ("maximize",))  # fastopt's addition: the package's checkpoints lack it

    def __init__(self, params, defaults, **options):
        _refuse_quantized(options.get("state_dtype"))
        super().__init__(params, defaults, **options)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key, value in GROUP_STATE:
            group.setdefault(key, value)

    def _beta1(self, h):
        raise NotImplementedError

    def _group_state(self, i):
        """Group i's (k, lr_max, weight_sum), checked: they are plain entries a user may write."""
        group = self.param_groups[i]
        k = group.get("k")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"param_groups[{i}]['k'] must be an integer >= 0 (the group's step count), got {k!r}")
        return int(k), finite(f"param_groups[{i}]['lr_max']", group.get("lr_max")), \
            b.nonnegative(f"param_groups[{i}]['weight_sum']", group.get("weight_sum"))

    def _schedule(self, h, i):
        k, lr_max, weight_sum = self._group_state(i)
        return (k,) + schedule(h["lr"], h["warmup_steps"], h["r"], h["weight_lr_power"], k, lr_max, weight_sum)

    def _rule_scalars(self, h, step, p):
        k, lr_t, _, _, c = self._schedule(h, p.group)
        variant, scalars = host_scalars(self._variant, lr_t, c, self._beta1(h), h["weight_decay"],
                                        *self._adam_scalars(h), step=k + 1)
        return variant, scalars, None, {}  # None: the rule's own weight decay, the prologue's is off

    def _adam_scalars(self, h):
        return 0.0, 1.0

    def _ensure_state(self, p, names, h):
        if "z" in names and "z" not in p.state:
            p.state["z"] = self._copy_of_param(p)
            p.fresh.add("z")
            p.cache = None
        super()._ensure_state(p, names, h)

    def _copy_of_param(self, p):
        """z's start: the value stepped (the master copy of a half param), in the state dtype."""
        master = p.state.get("master_weights")
        code = dtype_code(p.array.dtype, self.param_dtype)
        if master is not None:
            value = master
        elif code in (CODE_FLOAT32, CODE_FLOAT64):
            value = p.array.reshape(-1)
        else:  # a bfloat16 param stepped with stochastic rounding
            value = self._widen_half(p, code)
        if p.state_dtype == UINT16:
            return bfloat16_bits(value, p.xp)
        return value.astype(p.state_dtype, copy=True)

    def step(self, grads=None, **kwargs):
        """One fused step of every parameter with a gradient (OptimizerCore.step), in train mode
        only; then every group's k, lr_max and weight_sum advance, as in the package."""
        for i, group in enumerate(self.param_groups):
            if not group.get("train_mode", True):
                raise RuntimeError(f"{type(self).__name__}.step() in eval mode (param_groups[{i}]): the "
                                   "parameters hold x, not y; call opt.train() before stepping")
        pending = [self._schedule(self._group_options(i), i) for i in range(len(self.param_groups))]
        result = super().step(grads, **kwargs)
        if not self.last_step_skipped:
            for group, (k, lr_t, lr_max, weight_sum, _) in zip(self.param_groups, pending):
                dict.update(group, k=k + 1, lr_max=lr_max, weight_sum=weight_sum, scheduled_lr=lr_t)
        return result

    def eval(self):
        """Moves every group in train mode to x, the point to evaluate at (one fused pass)."""
        self._move_all(False)

    def train(self):
        """Moves every group in eval mode back to y, where the gradient is taken."""
        self._move_all(True)

    def _move_all(self, to_train):
        moves = []
        for i, group in enumerate(self.param_groups):
            if bool(group.get("train_mode", True)) == to_train:
                continue  # already there: idempotent, as the package
            beta1 = self._beta1(self._group_options(i))
            for j, p in enumerate(self._params):
                if p.group == i and "z" in p.state:
                    moves.append((j, p, beta1))
        calls = []
        for j, p, beta1 in moves:  # every check first: a refused move changes nothing
            try:
                seed = (_scalars.step_seed((self.seed + j) & 0xFFFFFFFF, p.state["step"]) ^ 0x5BD1E995
                        if self.stochastic_rounding else None)
                master = p.state.get("master_weights")
                state_dtype = "bfloat16" if p.state_dtype == UINT16 else None
                kind, param_code, state_code = _switch_arrays(p.array, p.state["z"], master, self.param_dtype,
                                                              state_dtype, seed)
            except (ValueError, TypeError) as exc:
                raise self._where(j, exc) from None
            calls.append((_backend.select(kind, self.backend).module,
                          KernelCall(self._rule, SWITCH, param_code, param_code, state_code, p.array, p.array, master,
                                     (p.state["z"],), switch_scalars(beta1, to_train), 1.0, 0.0, 1.0,
                                     0 if seed is None else seed)))
        for module, call in calls:
            _kernel_call.step(module, call)
        for group in self.param_groups:
            group["train_mode"] = to_train


class SGDScheduleFree(_ScheduleFree):
    """schedulefree.SGDScheduleFree (Defazio et al. 2024): the package's defaults and argument
    order. Starts in train mode (the package needs train() first; calling it is harmless)."""

    _variant = SGD
    _options = b.option_table(lr=b.nonnegative, momentum=open_unit, weight_decay=b.nonnegative,
                              warmup_steps=warmup_steps_check, r=finite, weight_lr_power=b.nonnegative,
                              maximize=b.flag)

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                 *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power, maximize=maximize), **options)

    def _state_names(self, h):
        return STATES[:1]

    def _beta1(self, h):
        return h["momentum"]


class AdamWScheduleFree(_ScheduleFree):
    """schedulefree.AdamWScheduleFree (Defazio et al. 2024): the package's defaults and argument
    order; weight decay at y after the normalisation. Starts in train mode."""

    _variant = ADAMW
    _options = b.option_table(lr=b.nonnegative, betas=schedule_free_betas, eps=b.epsilon, weight_decay=b.nonnegative,
                              warmup_steps=warmup_steps_check, r=finite, weight_lr_power=b.nonnegative,
                              maximize=b.flag)

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                                      maximize=maximize), **options)

    def _beta1(self, h):
        return h["betas"][0]

    def _adam_scalars(self, h):
        return h["betas"][1], h["eps"]


# ---- the NumPy baselines (float64 references of the benchmark) -------------------------------

class NumpySGDScheduleFree(b.NumpyOptimizer):
    state_names = STATES[:1]

    def __init__(self, param, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0):
        super().__init__(param, lr, 0.0)  # the rule's own decay, below
        self.beta1, self.decay = momentum, weight_decay
        self.warmup_steps, self.r, self.weight_lr_power = warmup_steps, r, weight_lr_power
        self.lr_max, self.weight_sum = -1.0, 0.0

    def _direction(self, g, tmp):
        np.copyto(tmp, g)
        return tmp

    def _update(self, p, g, tmp, tmp2):
        z = self.state["z"]
        if self.t == 1:
            np.copyto(z, p)
        lr_t, self.lr_max, self.weight_sum, c = schedule(self.lr, self.warmup_steps, self.r, self.weight_lr_power,
                                                         self.t - 1, self.lr_max, self.weight_sum)
        u = self._direction(g, tmp)
        if self.decay:
            u += np.multiply(p, self.decay, out=tmp2)
        np.subtract(z, p, out=tmp2)
        tmp2 *= c
        p += tmp2  # lerp(y, z, c)
        p += np.multiply(u, lr_t * (self.beta1 * (1.0 - c) - 1.0), out=tmp2)
        z -= np.multiply(u, lr_t, out=tmp2)


class NumpyAdamWScheduleFree(NumpySGDScheduleFree):
    state_names = STATES

    def __init__(self, param, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0):
        super().__init__(param, lr, betas[0], weight_decay, warmup_steps, r, weight_lr_power)
        self.beta2, self.eps = betas[1], eps

    def _direction(self, g, tmp):
        v = self.state["exp_avg_sq"]
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp
        np.divide(v, 1.0 - self.beta2**self.t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps
        return np.divide(g, tmp, out=tmp)


CLASSES = (SGDScheduleFree, AdamWScheduleFree)
FUNCTIONS = (sgd_schedule_free, adamw_schedule_free, schedule_free_eval, schedule_free_train)
NUMPY_BASELINES = {"SGDScheduleFree": NumpySGDScheduleFree, "AdamWScheduleFree": NumpyAdamWScheduleFree}
BENCH = (("SGDScheduleFree", (("lr", 1.0),)), ("AdamWScheduleFree", (("lr", 0.0025),)))
TORCH_REFERENCES = {name: f"schedulefree.{name}" for name in NUMPY_BASELINES}  # timed as torch-foreach
