"""The segment table on the Numba backend: a list of arrays of one rule, variant and dtype
combination in one jitted call (fastopt/_multi.py builds the table). The arrays reach the loop
as addresses, each becomes an array again inside it (numba.carray), and a parallel loop runs over
fixed chunks of the arrays, each element through the same element step as one call per array:
the same bits."""
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .._dtypes import CODE_BFLOAT16, CODE_FLOAT64
from ..rules import RULES
from .math import storage, update_for
from .optim import compiled, make_indexed_step, prologue_rows, runs_parallel

CHUNK = 8192  # elements of one array a parallel iteration steps
POINTERS = 7  # per array: param, grad, master, s0, s1, s2, EMA (unused ones repeat param's)


@intrinsic
def _pointer_like(typingctx, address, like):
    """A pointer to `like`'s dtype at `address` (an integer), for numba.carray."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


def _scalars_maker(rule):
    """A jitted row -> the rule's Scalars named tuple in the row's dtype (the compute type)."""
    scalars = RULES[rule].Scalars
    fields = ", ".join(f"row[{i}]" for i in range(len(scalars._fields)))
    namespace = {"Scalars": scalars}
    exec(f"def make(row):\n    return Scalars({fields})\n", namespace)  # noqa: S102 (fixed source)
    return njit(inline="always")(namespace["make"])


def _make_loop(rule, variant, num_states, has_master, param_code, grad_code, state_code, stochastic, ema_code):
    step_at = make_indexed_step(update_for(RULES[rule]), variant, num_states, has_master, param_code, grad_code,
                                state_code, stochastic, ema_code)
    make_scalars = _scalars_maker(rule)
    carray = numba.carray

    def kernel(pointers, sizes, row_of, seeds, chunk_array, chunk_start, rows, prologues, ema_weights,
               like_param, like_grad, like_master, like_state, like_ema):
        for q in prange(chunk_array.size):
            s = chunk_array[q]
            n = sizes[s]
            at = pointers[s]
            param = carray(_pointer_like(at[0], like_param), n)
            grad = carray(_pointer_like(at[1], like_grad), n)
            master = carray(_pointer_like(at[2], like_master), n if has_master else 0)
            s0 = carray(_pointer_like(at[3], like_state), n if num_states > 0 else 0)
            s1 = carray(_pointer_like(at[4], like_state), n if num_states > 1 else 0)
            s2 = carray(_pointer_like(at[5], like_state), n if num_states > 2 else 0)
            ema = carray(_pointer_like(at[6], like_ema), n if ema_code >= 0 else 0)
            k = make_scalars(rows[row_of[s]])
            pro = prologues[row_of[s]]
            seed = np.uint32(seeds[s])
            weight = ema_weights[s]
            for i in range(chunk_start[q], min(chunk_start[q] + CHUNK, n)):
                step_at(i, param, grad, master, s0, s1, s2, k, pro, seed, ema, weight)

    return kernel


def _address(a):
    return a.__array_interface__["data"][0]


def multi_step(rule, variant, param_code, grad_code, state_code, params, grads, masters, states, table, row_of,
               seeds, emas, ema_code, ema_weights):
    """The CPU extension's multi_step: `table` holds a row per hyper-parameter set (the rule's
    scalars, then grad_scale, weight_decay and decay_factor), `row_of` and `seeds` each array's."""
    live = [j for j, p in enumerate(params) if p.size]
    if not live:
        return
    compute = np.float64 if param_code == CODE_FLOAT64 else np.float32
    has_master = masters is not None
    num_states = len(states[live[0]])
    flat = [(storage(params[j], param_code), storage(grads[j], grad_code),
             [storage(s, state_code) for s in states[j]]) for j in live]
    pointers = np.empty((len(live), POINTERS), np.uint64)
    for row, (j, (param, grad, state)) in enumerate(zip(live, flat)):
        here = _address(param)
        slots = [here, _address(grad), _address(masters[j]) if has_master else here]
        slots += [_address(s) for s in state] + [here] * (3 - len(state))
        slots.append(_address(emas[j]) if emas is not None else here)
        pointers[row] = slots
    sizes = np.array([params[j].size for j in live], np.int64)
    chunks = -(-sizes // CHUNK)
    chunk_array = np.repeat(np.arange(len(live), dtype=np.int64), chunks)
    chunk_start = (np.arange(chunk_array.size, dtype=np.int64) - np.repeat(np.cumsum(chunks) - chunks, chunks)) * CHUNK
    rows = table[:, :-3].astype(compute)
    prologues = prologue_rows(table[:, -3:], compute)
    ema_weight_type = np.float64 if ema_code == CODE_FLOAT64 else np.float32
    weights = np.array([ema_weights[j] for j in live] if emas is not None else [0.0] * len(live), ema_weight_type)
    like_param, like_grad = flat[0][0][:0], flat[0][1][:0]
    like_state = flat[0][2][0][:0] if num_states else np.empty(0, compute)
    like_ema = storage(emas[live[0]], ema_code)[:0] if emas is not None else np.empty(0, np.float32)
    stochastic = param_code == CODE_BFLOAT16 and not has_master
    parallel = runs_parallel(int(sizes.sum()))
    constants = (rule, variant, num_states, has_master, param_code, grad_code, state_code, stochastic,
                 -1 if emas is None else ema_code)
    kernel = compiled(("segment table", parallel) + constants, parallel, lambda: _make_loop(*constants))
    kernel(pointers, sizes, np.array([row_of[j] for j in live], np.int64),
           np.array([seeds[j] for j in live], np.uint32), chunk_array, chunk_start, rows, prologues, weights,
           like_param, like_grad, np.empty(0, np.float32), like_state, like_ema)
