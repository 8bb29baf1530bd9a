"""One fused, in-place function per optimizer (docs/algorithms.md gives the exact rules).

Each function validates its arguments, computes the step's host scalars once (its rule's module
in fastopt.rules) and makes a single kernel call that reads and writes every array once. All take
these keywords (fastopt.rules._base.STEP_KEYWORDS) besides the rule's own hyper-parameters:

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
  uint16 (CuPy has no bfloat16; state may be float32 or bfloat16). Quantized state
  (``state_dtype="8bit"`` or ``"fp8"``): pass ``fastopt.blockwise.state_like(param, name)``
  arrays for the states (docs/quantized_states.md).
- ``backend``: 'cpu', 'numba' or 'cuda' (default: by array type, see fastopt.backends()).
- ``ema`` and ``ema_decay``: the EMA of the weights, updated in the same pass after the step:
  ``ema += (1 - ema_decay) * (new param - ema)`` (the new param being the master copy where one is
  given); ``ema`` is float32 or bfloat16 (float64 for a float64 param), of param's size. A skipped
  step leaves it untouched. Warm-up is the caller's: pass this step's decay.

Every function returns ``StepResult(grad_norm, skipped)``: the unscaled gradient norm when one
was computed (clipping or skip_nonfinite), else None, and whether the step was skipped. The
Schedule-Free moves ``schedule_free_eval`` / ``schedule_free_train`` are not steps: they take
``master_weights``, ``param_dtype``, ``state_dtype``, ``rounding_seed`` and ``backend`` only, and
return None.
"""
from .rules import functions as _functions
from .rules._base import StepResult

# One function per rule, from the registry (fastopt.rules).
globals().update({fn.__name__: fn for fn in _functions()})
for _fn in _functions():
    _fn.__module__ = __name__

__all__ = ["StepResult"] + [fn.__name__ for fn in _functions()]
