"""Many separate arrays in one kernel call per step: the segment table.

The arrays of a step that share the rule's variant and their dtypes form one call; each array
(a segment) points at a row of scalars (its group's hyper-parameters and its own step count), so
groups and per-array bias corrections ride in the same call. The cpu backend walks the table in
one OpenMP region (csrc/cpu/optim_kernels.cpp); the numba and cuda backends make one call per
array, the same bits."""
import numpy as np

ROW_SCALARS = 12  # csrc/cpu/kernels.h kRowScalars


class Batch:
    """The kernel calls of one step, built array by array."""

    __slots__ = ("rule", "calls")

    def __init__(self, rule):
        self.rule = rule
        self.calls = {}  # (variant, param, grad, state codes, master?) -> [(arrays, row, seed)]

    def add(self, variant, arrays, row, seed):
        """`row`: the rule's scalars followed by (grad_scale, weight_decay, decay_factor)."""
        key = (variant, arrays.param_code, arrays.grad_code, arrays.state_code, arrays.master is not None)
        self.calls.setdefault(key, []).append((arrays, row, seed))

    def run(self, module):
        multi = getattr(module, "multi_step", None) if len(self.calls) > 1 or any(
            len(segments) > 1 for segments in self.calls.values()) else None
        for (variant, param_code, grad_code, state_code, has_master), segments in self.calls.items():
            if multi is None or len(segments) == 1:
                for arrays, row, seed in segments:
                    module.optimizer_step(self.rule, variant, param_code, grad_code, state_code,
                                          arrays.param, arrays.grad, arrays.master, arrays.states,
                                          row[:-3], row[-3], row[-2], row[-1], seed)
                continue
            rows, row_of = {}, []
            for _, row, _ in segments:
                row_of.append(rows.setdefault(row, len(rows)))
            table = np.zeros((len(rows), ROW_SCALARS + 3))
            for row, r in rows.items():
                table[r, :len(row) - 3] = row[:-3]
                table[r, ROW_SCALARS:] = row[-3:]
            multi(self.rule, variant, param_code, grad_code, state_code,
                  [a.param for a, _, _ in segments], [a.grad for a, _, _ in segments],
                  [a.master for a, _, _ in segments] if has_master else None,
                  [a.states for a, _, _ in segments], table, row_of, [s for _, _, s in segments])
