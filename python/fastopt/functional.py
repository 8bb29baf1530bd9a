"""One fused, in-place function per optimizer (ALGORITHMS.md gives the exact rules).

Each function validates its arguments, computes the step's host scalars once (fastopt._scalars)
and makes a single kernel call that reads and writes every array once. All take these keywords
besides the rule's own hyper-parameters:

- ``maximize``: ascend instead of descend.
- ``grad_scale``: the loss scale the gradient was multiplied by; the kernel divides by it.
- ``max_grad_norm``: clip by global L2 norm (torch's clip_grad_norm_ semantics), folded into the
  step: one read of ``grad`` for the norm, none written.
- ``skip_nonfinite``: if ``grad`` holds inf or NaN, write nothing and report the skip.
- ``master_weights``: float32 master copy for a float16/bfloat16 ``param``; the copy is stepped
  and ``param`` rewritten from it (round to nearest even) in the same pass.
- ``rounding_seed``: for a bfloat16 ``param`` without master weights: step it in place and store
  it with stochastic rounding drawn from this seed (an int; use a different one every step).
- ``param_dtype`` / ``grad_dtype`` / ``state_dtype``: 'bfloat16' or 'float16' for arrays stored as
  uint16 (CuPy has no bfloat16; state may be float32 or bfloat16).
- ``backend``: 'cpu', 'numba' or 'cuda' (default: by array type, see fastopt.backends()).

Every function returns ``StepResult(grad_norm, skipped)``: the unscaled gradient norm when one
was computed (clipping or skip_nonfinite), else None, and whether the step was skipped.
"""
import collections
import math

from . import _backend, _checks, _scalars

StepResult = collections.namedtuple("StepResult", ["grad_norm", "skipped"])
_NOT_SKIPPED = StepResult(None, False)


def _global_norm(backend, grad, code):
    return math.sqrt(backend.module.sum_of_squares(code, grad))


def _fused_step(rule, variant, scalars, arrays, *, lr, weight_decay, decoupled, maximize, grad_scale,
                max_grad_norm, skip_nonfinite, backend, rounding_seed=None):
    """Folds unscaling and clipping into one gradient factor, then makes the one kernel call."""
    chosen = _backend.select(arrays.kind, backend)
    inv_scale = 1.0 if grad_scale is None else _checks.grad_scale(grad_scale)
    result = _NOT_SKIPPED
    if max_grad_norm is not None or skip_nonfinite:
        norm = _global_norm(chosen, arrays.grad, arrays.grad_code) * abs(inv_scale)
        if skip_nonfinite and not math.isfinite(norm):
            return StepResult(norm, True)
        if max_grad_norm is not None:
            inv_scale *= _scalars.clip_factor(norm, max_grad_norm)
        result = StepResult(norm, False)
    scale, wd, decay_factor = _scalars.prologue(lr, weight_decay, decoupled, maximize, inv_scale)
    chosen.module.optimizer_step(rule, variant, arrays.param_code, arrays.grad_code, arrays.state_code,
                                 arrays.param, arrays.grad, arrays.master, arrays.states, scalars,
                                 scale, wd, decay_factor,
                                 0 if rounding_seed is None else _checks.checked_seed(rounding_seed))
    return result


def _common(weight_decay, max_grad_norm):
    return _checks.nonnegative("weight_decay", weight_decay), _checks.optional_positive("max_grad_norm", max_grad_norm)


def sgd(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
        weight_decay=0.0, maximize=False, velocity_form=False, step=None, grad_scale=None,
        max_grad_norm=None, skip_nonfinite=False, master_weights=None, param_dtype=None,
        grad_dtype=None, state_dtype=None, rounding_seed=None, backend=None):
    """SGD, with heavy-ball or Nesterov momentum (torch.optim.SGD's rule).

    buf = g on step 1, else momentum * buf + (1 - dampening) * g; p -= lr * (g + momentum * buf if
    nesterov else buf). ``velocity_form=True`` keeps the textbook velocity v = momentum * v - lr * g
    in ``momentum_buffer`` (Deep Learning, Alg. 8.2/8.3), which differs only when lr changes.
    ``step`` (1-based) is required with momentum: step 1 starts the buffer from the gradient.
    """
    lr = _checks.nonnegative("lr", lr)
    momentum = _checks.nonnegative("momentum", momentum)
    dampening = _checks.unit_interval("dampening", dampening, closed=True)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")
    if velocity_form and dampening != 0:
        raise ValueError("velocity_form has no dampening; pass dampening=0")
    states = []
    if momentum != 0:
        if step is None:
            raise TypeError("step is required with momentum (step 1 starts the buffer from the gradient)")
        step = _checks.step_count(step)
        states = [("momentum_buffer", momentum_buffer)]
    variant, scalars = _scalars.sgd(lr, momentum, dampening, nesterov, velocity_form, step)
    arrays = _checks.step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed,
                                 state_dtype)
    return _fused_step(_scalars.SGD, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=False, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def adagrad(param, grad, sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            eps_inside_sqrt=False, maximize=False, grad_scale=None, max_grad_norm=None,
            skip_nonfinite=False, master_weights=None, param_dtype=None, grad_dtype=None,
            state_dtype=None, rounding_seed=None, backend=None):
    """AdaGrad (Duchi et al. 2011): sum += g^2; p -= clr * g / (sqrt(sum) + eps),
    clr = lr / (1 + (step - 1) lr_decay). ``eps_inside_sqrt``: sqrt(sum + eps)."""
    lr = _checks.nonnegative("lr", lr)
    lr_decay = _checks.nonnegative("lr_decay", lr_decay)
    eps = _checks.positive("eps", eps)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    step = _checks.step_count(step)
    variant, scalars = _scalars.adagrad(lr, lr_decay, eps, eps_inside_sqrt, step)
    arrays = _checks.step_arrays(param, grad, [("sum", sum)], master_weights, param_dtype, grad_dtype, rounding_seed,
                                 state_dtype)
    return _fused_step(_scalars.ADAGRAD, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=False, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def rmsprop(param, grad, square_avg, grad_avg=None, momentum_buffer=None, *, lr=1e-2, alpha=0.99,
            eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, nesterov=False,
            eps_inside_sqrt=False, maximize=False, grad_scale=None, max_grad_norm=None,
            skip_nonfinite=False, master_weights=None, param_dtype=None, grad_dtype=None,
            state_dtype=None, rounding_seed=None, backend=None):
    """RMSProp: sq = alpha sq + (1 - alpha) g^2; avg = sqrt(sq [- gavg^2 if centered]) + eps;
    p -= lr * g / avg, or through a momentum buffer (Nesterov: Deep Learning Alg. 8.6).
    ``grad_avg`` is needed when centered, ``momentum_buffer`` when momentum > 0."""
    lr = _checks.nonnegative("lr", lr)
    alpha = _checks.unit_interval("alpha", alpha, closed=True)
    eps = _checks.positive("eps", eps)
    momentum = _checks.nonnegative("momentum", momentum)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    if nesterov and momentum <= 0:
        raise ValueError("nesterov requires momentum > 0")
    states = [("square_avg", square_avg)]
    if centered:
        states.append(("grad_avg", grad_avg))
    if momentum > 0:
        states.append(("momentum_buffer", momentum_buffer))
    variant, scalars = _scalars.rmsprop(lr, alpha, eps, momentum, centered, nesterov, eps_inside_sqrt)
    arrays = _checks.step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed,
                                 state_dtype)
    return _fused_step(_scalars.RMSPROP, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=False, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def adadelta(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
             master_weights=None, param_dtype=None, grad_dtype=None,
             state_dtype=None, rounding_seed=None, backend=None):
    """AdaDelta (Zeiler 2012): delta = sqrt(acc + eps) / sqrt(sq + eps) * g; p -= lr * delta."""
    lr = _checks.nonnegative("lr", lr)
    rho = _checks.unit_interval("rho", rho, closed=True)
    eps = _checks.positive("eps", eps)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    variant, scalars = _scalars.adadelta(lr, rho, eps)
    arrays = _checks.step_arrays(param, grad, [("square_avg", square_avg), ("acc_delta", acc_delta)],
                                 master_weights, param_dtype, grad_dtype, rounding_seed, state_dtype)
    return _fused_step(_scalars.ADADELTA, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=False, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3, beta1=0.9,
         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
         maximize=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
         master_weights=None, param_dtype=None, grad_dtype=None,
         state_dtype=None, rounding_seed=None, backend=None):
    """Adam (Kingma & Ba 2014), AdamW with ``decoupled_weight_decay`` (Loshchilov & Hutter 2019),
    AMSGrad with ``amsgrad`` (needs ``max_exp_avg_sq``).

    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    lr = _checks.nonnegative("lr", lr)
    beta1, beta2 = _checks.unit_interval("beta1", beta1), _checks.unit_interval("beta2", beta2)
    eps = _checks.positive("eps", eps)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    step = _checks.step_count(step)
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if amsgrad:
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    variant, scalars = _scalars.adam(lr, beta1, beta2, eps, amsgrad, step)
    arrays = _checks.step_arrays(param, grad, states, master_weights, param_dtype, grad_dtype, rounding_seed,
                                 state_dtype)
    return _fused_step(_scalars.ADAM, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=decoupled_weight_decay, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
    """AdamW: :func:`adam` with decoupled weight decay, p *= 1 - lr * weight_decay first."""
    return adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
                beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
                amsgrad=amsgrad, **kwargs)


def adamax(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
           master_weights=None, param_dtype=None, grad_dtype=None,
           state_dtype=None, rounding_seed=None, backend=None):
    """Adamax (Kingma & Ba 2014, sec. 7): u = max(b2 u, |g| + eps); p -= lr / (1 - b1^t) * m / u."""
    lr = _checks.nonnegative("lr", lr)
    beta1, beta2 = _checks.unit_interval("beta1", beta1), _checks.unit_interval("beta2", beta2)
    eps = _checks.positive("eps", eps)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    step = _checks.step_count(step)
    variant, scalars = _scalars.adamax(lr, beta1, beta2, eps, step)
    arrays = _checks.step_arrays(param, grad, [("exp_avg", exp_avg), ("exp_inf", exp_inf)],
                                 master_weights, param_dtype, grad_dtype, rounding_seed, state_dtype)
    return _fused_step(_scalars.ADAMAX, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=False, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def nadam(param, grad, exp_avg, exp_avg_sq, mu_product, *, step, lr=2e-3, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
          maximize=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
          master_weights=None, param_dtype=None, grad_dtype=None,
          state_dtype=None, rounding_seed=None, backend=None):
    """NAdam (Dozat 2016) with torch's momentum-decay schedule.

    ``mu_product`` is a one-element float64 NumPy array holding prod_{i<t} mu_i (1.0 before the
    first step); it is advanced in place, like every other state, unless the step is skipped.
    """
    lr = _checks.nonnegative("lr", lr)
    beta1, beta2 = _checks.unit_interval("beta1", beta1), _checks.unit_interval("beta2", beta2)
    eps = _checks.positive("eps", eps)
    momentum_decay = _checks.nonnegative("momentum_decay", momentum_decay)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    step = _checks.step_count(step)
    if not (_backend.array_kind(mu_product) == "numpy" and mu_product.shape == (1,)
            and mu_product.dtype == "float64" and mu_product.flags.writeable):
        raise TypeError("mu_product must be a writable one-element float64 NumPy array")
    variant, scalars, new_mu_product = _scalars.nadam(lr, beta1, beta2, eps, momentum_decay, step,
                                                      float(mu_product[0]))
    arrays = _checks.step_arrays(param, grad, [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
                                 master_weights, param_dtype, grad_dtype, rounding_seed, state_dtype)
    if arrays.kind == "numpy":  # mu_product is written after the kernel: it must not alias an array of it
        _checks.check_disjoint([("mu_product", mu_product), ("param", param), ("grad", grad),
                                ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
                               + ([("master_weights", master_weights)] if master_weights is not None else []))
    result = _fused_step(_scalars.NADAM, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                         decoupled=decoupled_weight_decay, maximize=maximize, grad_scale=grad_scale,
                         max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)
    if not result.skipped:
        mu_product[0] = new_mu_product
    return result


def radam(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False, grad_scale=None,
          max_grad_norm=None, skip_nonfinite=False, master_weights=None, param_dtype=None,
          grad_dtype=None, state_dtype=None, rounding_seed=None, backend=None):
    """RAdam (Liu et al. 2020): Adam's step times the rectification r_t once rho_t > 5, a plain
    momentum step before."""
    lr = _checks.nonnegative("lr", lr)
    beta1, beta2 = _checks.unit_interval("beta1", beta1), _checks.unit_interval("beta2", beta2)
    eps = _checks.positive("eps", eps)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    step = _checks.step_count(step)
    variant, scalars = _scalars.radam(lr, beta1, beta2, eps, step)
    arrays = _checks.step_arrays(param, grad, [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
                                 master_weights, param_dtype, grad_dtype, rounding_seed, state_dtype)
    return _fused_step(_scalars.RADAM, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=decoupled_weight_decay, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)


def lion(param, grad, exp_avg, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False,
         grad_scale=None, max_grad_norm=None, skip_nonfinite=False, master_weights=None,
         param_dtype=None, grad_dtype=None, state_dtype=None, rounding_seed=None, backend=None):
    """Lion (Chen et al. 2023): p -= lr * sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g.
    Weight decay is decoupled."""
    lr = _checks.nonnegative("lr", lr)
    beta1, beta2 = _checks.unit_interval("beta1", beta1), _checks.unit_interval("beta2", beta2)
    weight_decay, max_grad_norm = _common(weight_decay, max_grad_norm)
    variant, scalars = _scalars.lion(lr, beta1, beta2)
    arrays = _checks.step_arrays(param, grad, [("exp_avg", exp_avg)], master_weights, param_dtype, grad_dtype, rounding_seed,
                                 state_dtype)
    return _fused_step(_scalars.LION, variant, scalars, arrays, lr=lr, weight_decay=weight_decay,
                       decoupled=True, maximize=maximize, grad_scale=grad_scale,
                       max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite, backend=backend,
                       rounding_seed=rounding_seed)
