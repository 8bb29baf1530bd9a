"""Many separate arrays in one kernel call per step: the segment table.

The arrays of a step that share the rule's variant and their dtypes form one call; each array
(a segment) points at a row of scalars (its group's hyper-parameters and its own step count), so
groups and per-array bias corrections ride in the same call. The cpu backend walks the table in
one parallel loop (csrc/cpu/optim_kernels.cpp), the cuda backend in one launch (each block a
chunk of one array: cuda/kernels.cu), the numba backend in one jitted loop over chunks
(numba/multi.py). The bits are those of one call per array, which quantized states still make."""
import numpy as np

from . import _blockwise_step, _kernel_call, rules
from ._kernel_call import KernelCall


class Call:
    """The arrays of one kernel call, built array by array."""

    __slots__ = ("params", "grads", "masters", "states", "row_of", "seeds", "rows", "emas", "ema_code",
                 "ema_weights", "ema_groups")

    def __init__(self):
        self.params, self.grads, self.masters, self.states = [], [], [], []
        self.row_of, self.seeds, self.rows = [], [], {}
        self.emas, self.ema_code, self.ema_weights, self.ema_groups = None, 0, None, None

    def add_ema(self, ema, code, weight, group):
        """The EMA of the array last added (every array of a call has one, or none has); `group`:
        its param group, whose step count sets the weight when a step plan is reused."""
        if self.emas is None:
            self.emas, self.ema_code, self.ema_weights, self.ema_groups = [], code, [], []
        self.emas.append(ema)
        self.ema_weights.append(weight)
        self.ema_groups.append(group)

    def add(self, arrays, row, seed):
        """`row`: the rule's scalars followed by (grad_scale, weight_decay, decay_factor)."""
        self.params.append(arrays.param)
        self.grads.append(arrays.grad)
        self.masters.append(arrays.master)
        self.states.append(arrays.states)
        rows = self.rows
        index = rows.get(row)
        if index is None:
            index = rows[row] = len(rows)
        self.row_of.append(index)
        self.seeds.append(seed)


def run(module, rule, calls):
    """Makes the calls: one segment-table call each where the backend has one, else one call per array."""
    multi = getattr(module, "multi_step", None)
    for (variant, param_code, grad_code, state_code, has_master), call in calls.items():
        if multi is None or len(call.params) == 1 or state_code in _blockwise_step.QUANTIZED_CODES:
            rows = list(call.rows)
            count = len(call.params)
            emas, weights = (call.emas, call.ema_weights) if call.emas is not None else ([None] * count, [0.0] * count)
            for param, grad, master, states, r, seed, ema, weight in zip(
                    call.params, call.grads, call.masters, call.states, call.row_of, call.seeds, emas, weights):
                row = rows[r]
                _kernel_call.step(module, KernelCall(rule, variant, param_code, grad_code, state_code, param, grad,
                                                     master, states, row[:-3], row[-3], row[-2], row[-1], seed,
                                                     ema, call.ema_code, weight))
            continue
        # A row: the rule scalars (as many as the widest rule's: the extension's rule_scalars),
        # then grad_scale, weight_decay, decay_factor.
        width = rules.MAX_SCALARS
        table = np.zeros((len(call.rows), width + 3))
        for row, r in call.rows.items():
            table[r, :len(row) - 3] = row[:-3]
            table[r, width:] = row[-3:]
        multi(rule, variant, param_code, grad_code, state_code, call.params, call.grads,
              call.masters if has_master else None, call.states, table, call.row_of, call.seeds,
              call.emas, call.ema_code, call.ema_weights)
