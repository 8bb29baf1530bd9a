"""Numba loops over the rules of fastopt.numba.math: the same element step as
csrc/fastopt/math/step.h, parallel over the flat buffer with prange.

A loop is compiled for each combination of rule, variant, number of state arrays, dtypes, master
copy and rounding mode, given to Numba as constants: like the C++ templates, each loop then has
no branch on them left inside, and LLVM vectorises it (a loop that tested them per element ran
at a third of the bandwidth limit)."""
import numba
import numpy as np
from numba import njit, prange

from ..rules import RULES
from .math import element_random, float_to_bf16_stochastic, store, update_for, widen

_CACHE = {}
PARALLEL_THRESHOLD = 1 << 15  # csrc/cpu/kernels.h kParallelThreshold


def make_element_step(update, variant, has_master, param_code, grad_code, stochastic, ema_code):
    """Element i's step from its states (a, b, c), as step.h: the prologue, the rule's update, the
    param (and master) stored, then the EMA's lerp (ema_code: its dtype code, or -1 for none)
    from the new param as stored. Returns the new states; the caller stores them. Inlined into
    the loops (Numba IR), so it costs nothing."""
    @njit(inline="always")
    def step_element(i, param, grad, master, a, b, c, k, pro, rounding_seed, ema, ema_weight):
        p = master[i] if has_master else widen(param[i], param_code)
        p = p * pro[2]
        g = widen(grad[i], grad_code) * pro[0]
        if pro[1] != pro[3]:  # coupled L2 decay (zero in decoupled mode)
            g = g + pro[1] * p
        p, a, b, c = update(variant, p, g, a, b, c, k, pro[3:])
        if has_master:
            master[i] = p
        if stochastic:
            param[i] = float_to_bf16_stochastic(np.float32(p), element_random(rounding_seed, i))
        else:
            store(param, i, p, param_code)
        if ema_code >= 0:
            v = master[i] if has_master else widen(param[i], param_code)
            e = widen(ema[i], ema_code)
            store(ema, i, e + ema_weight * (v - e), ema_code)
        return a, b, c

    return step_element


def make_indexed_step(update, variant, num_states, has_master, param_code, grad_code, state_code, stochastic,
                      ema_code=-1):
    """Element i's whole step: its states loaded, make_element_step's step, its states stored.
    Inlined into the loops (this one and numba/multi.py's)."""
    step_element = make_element_step(update, variant, has_master, param_code, grad_code, stochastic, ema_code)

    @njit(inline="always")
    def step_at(i, param, grad, master, s0, s1, s2, k, pro, rounding_seed, ema, ema_weight):
        zero = pro[3]
        a = widen(s0[i], state_code) if num_states > 0 else zero
        b = widen(s1[i], state_code) if num_states > 1 else zero
        c = widen(s2[i], state_code) if num_states > 2 else zero
        a, b, c = step_element(i, param, grad, master, a, b, c, k, pro, rounding_seed, ema, ema_weight)
        if num_states > 0:
            store(s0, i, a, state_code)
        if num_states > 1:
            store(s1, i, b, state_code)
        if num_states > 2:
            store(s2, i, c, state_code)

    return step_at


def _make_loop(update, *constants):
    step_at = make_indexed_step(update, *constants)

    def kernel(param, grad, master, s0, s1, s2, k, pro, rounding_seed, ema, ema_weight):
        for i in prange(param.size):
            step_at(i, param, grad, master, s0, s1, s2, k, pro, rounding_seed, ema, ema_weight)

    return kernel


def runs_parallel(size):
    """Whether a loop over `size` elements is spread over threads: not below PARALLEL_THRESHOLD,
    where waking them costs more than the work (as in C++)."""
    return size >= PARALLEL_THRESHOLD and numba.get_num_threads() > 1


def prologue_rows(triples, dtype):
    """The prologue scalars the element step reads (`pro`), a row per (grad_scale, weight_decay,
    decay_factor) of `triples`: those three, then the constants 0 and 1 the rules read after them,
    in the compute type."""
    triples = np.asarray(triples, dtype=np.float64).reshape(-1, 3)
    rows = np.zeros((len(triples), 5), dtype)
    rows[:, :3] = triples
    rows[:, 4] = 1.0
    return rows


def compiled(key, parallel, make_loop):
    """The loop `make_loop()` builds, compiled on first use per `key` (its rule, constants and
    parallelism). IEEE division, as in C++ (and in parallel loops, whatever the model): Python's
    error model tests every divisor for zero, which kept the serial loops scalar, 4-9x slower."""
    kernel = _CACHE.get(key)
    if kernel is None:
        kernel = _CACHE[key] = njit(parallel=parallel, error_model="numpy")(make_loop())
    return kernel


def kernel_for(rule, size, *constants):
    """The loop of `rule` for (variant, num_states, has_master, param_code, grad_code, state_code,
    stochastic[, ema_code]), compiled on first use, parallel or not as runs_parallel(size) says."""
    parallel = runs_parallel(size)
    return compiled(("step", RULES[rule], parallel) + constants, parallel,
                    lambda: _make_loop(update_for(RULES[rule]), *constants))
