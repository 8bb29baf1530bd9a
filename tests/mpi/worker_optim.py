"""Run under mpiexec: every optimizer and dtype combination sharded against the plain optimizer on
one process (the same per-rank gradients summed in rank order). Prints 'OK <n> checks' per rank."""
import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer, predivided
from fastopt.distributed._layout import NORM_BLOCK

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rule_table  # noqa: E402  (tests/rule_table.py: the optimizers to run)

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

comm = MPI.COMM_WORLD
N, RANK = comm.size, comm.rank
P = 2 * 3 * NORM_BLOCK + 1234  # shards of 2 blocks at N = 3, a short last shard; several at N = 2, 4
STEPS = 3
CHECKS = 0

CONFIGS = rule_table.rows("mpi")

DTYPES = [("float32", {}), ("float64", {}), ("float16", dict(master_weights=True))]
if bfloat16 is not None:
    DTYPES += [("bfloat16", dict(master_weights=True)), ("bfloat16", dict(stochastic_rounding=True, seed=7))]


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        raise AssertionError(f"rank {RANK} of {N}: {what}")


def same_on_every_rank(a, what):
    digests = comm.allgather(np.asarray(a).tobytes())
    check(all(d == digests[0] for d in digests), f"{what}: ranks differ")


def data(dtype, seed):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(P).astype(np.float32).astype(dtype)
    grads = [[(rng.standard_normal(P) * 3).astype(np.float32).astype(dtype) for _ in range(N)]
             for _ in range(STEPS)]
    return p0, grads


def rank_order_sum(parts):
    total = parts[0].copy()
    for g in parts[1:]:
        np.add(total, g, out=total)
    return total


def bits(a):
    return a.view(np.uint8)


def run_pair(cls, options, dtype, *, deterministic, step_kw, average=True, predivide=False, seed=1,
             buckets=None, inf_at=None):
    """(sharded param, reference param, sharded opt, reference opt) after STEPS steps."""
    p0, grads = data(dtype, seed)
    if inf_at is not None:
        grads[inf_at][N - 1][5] = np.inf
    param, ref = p0.copy(), p0.copy()
    opt = ShardedOptimizer(cls, param, comm, deterministic=deterministic, average=average,
                           predivide=predivide, **options)
    plain = cls(ref, **options)
    for t, parts in enumerate(grads):
        if t == 1:  # a hyper-parameter changed between steps reaches every shard
            opt.lr = plain.lr = plain.lr * 0.5
        if predivide:
            parts_ref = [predivided(g, N) for g in parts]
            scale = step_kw.get("grad_scale")
        else:
            parts_ref = parts
            scale = (step_kw.get("grad_scale") or 1.0) * (N if average else 1)
        g = parts[RANK]
        for a, b in buckets or ():
            opt.reduce_bucket(g, a, b)
        norm = opt.step(g, **step_kw)
        norm_ref = plain.step(rank_order_sum(parts_ref), **{**step_kw, "grad_scale": scale})
        check((norm is None) == (norm_ref is None), "a norm is returned when the plain step returns one")
        check(opt.last_step_skipped == plain.last_step_skipped, "skipped on every rank as on one process")
        if norm is not None and deterministic:
            check(norm == norm_ref or (norm != norm and norm_ref != norm_ref), f"norm {norm} != {norm_ref}")
    same_on_every_rank(bits(param), f"{cls.__name__} {dtype}")
    return param, ref, opt, plain


def main():
    for cls, options in CONFIGS:
        for dtype_name, extra in DTYPES:
            dtype = bfloat16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
            kw = {**options, **extra}
            name = f"{cls.__name__} {dtype_name} {extra}"
            # Deterministic: bitwise, with clipping (norms 84-168 for N = 4..1: active at 50) and a loss scale.
            step_kw = dict(max_grad_norm=50.0, grad_scale=4.0)
            param, ref, opt, plain = run_pair(cls, kw, dtype, deterministic=True, step_kw=step_kw)
            check(np.array_equal(bits(param), bits(ref)), f"{name}: deterministic differs from one process")
            o, c = opt.shard
            for key, value in plain.state.items():
                mine = opt.state[key]
                if hasattr(value, "shape"):
                    check(np.array_equal(bits(mine), bits(value[o:o + c])), f"{name}: state {key}")
                else:
                    check(mine == value, f"{name}: state {key} {mine} != {value}")
            # Without clipping too.
            param, ref, _, _ = run_pair(cls, kw, dtype, deterministic=True, step_kw=dict(grad_scale=2.0), seed=2)
            check(np.array_equal(bits(param), bits(ref)), f"{name}: deterministic (no clipping)")
            # Fast mode: MPI's order of addition; within the dtype's rounding.
            param, ref, _, _ = run_pair(cls, kw, dtype, deterministic=False, step_kw=dict(max_grad_norm=100.0))
            tol = {"float64": 1e-10, "float32": 1e-4}.get(dtype_name, 5e-2)
            diff = np.abs(param.astype(np.float64) - ref.astype(np.float64)).max()
            check(diff <= tol * (1 + np.abs(ref.astype(np.float64)).max()), f"{name}: fast mode off by {diff}")

    # Sum instead of mean, pre-division, skipping on every rank, ZeRO-2 buckets.
    for dtype in [np.float32, np.float16]:
        extra = {} if dtype == np.float32 else dict(master_weights=True)
        param, ref, _, _ = run_pair(fastopt.Adam, dict(lr=1e-2, **extra), dtype, deterministic=True,
                                    step_kw={}, average=False)
        check(np.array_equal(bits(param), bits(ref)), f"sum of gradients, {dtype}")
        param, ref, _, _ = run_pair(fastopt.Adam, dict(lr=1e-2, **extra), dtype, deterministic=True,
                                    step_kw={}, predivide=True)
        check(np.array_equal(bits(param), bits(ref)), f"predivide, {dtype}")
    param, ref, opt, plain = run_pair(fastopt.AdamW, dict(lr=1e-2), np.float32, deterministic=True,
                                      step_kw=dict(skip_nonfinite=True), inf_at=1)
    check(np.array_equal(bits(param), bits(ref)) and opt.state["step"] == plain.state["step"] == STEPS - 1,
          "skip_nonfinite skips on every rank")
    buckets = [(P - 5000, P), (20000, P - 5000), (100, 20000)]  # reverse layer order, [0, 100) left to step
    for det in (True, False):
        param, ref, _, _ = run_pair(fastopt.Adam, dict(lr=1e-2), np.float32, deterministic=det, step_kw={},
                                    buckets=buckets)
        if det:
            check(np.array_equal(bits(param), bits(ref)), "ZeRO-2 buckets, deterministic")
        else:
            check(np.allclose(param, ref, rtol=1e-4, atol=1e-5), "ZeRO-2 buckets, fast")
    # Quantized state: shard boundaries fall on multiples of the 256-element state blocks, so a
    # shard's blocks are those of one process; a shard below MIN_QUANTIZED_SIZE (the short last
    # one) keeps float32 state, as any array that small does.
    for cls, lr in ((fastopt.Adam, 1e-2), (fastopt.AdamW, 1e-2), (fastopt.Lion, 1e-3)):
        for scheme in ("8bit", "fp8"):
            param, ref, opt, _ = run_pair(cls, dict(lr=lr, state_dtype=scheme), np.float32, deterministic=True,
                                          step_kw=dict(max_grad_norm=50.0))
            layout = opt.layout
            for r, (o, c) in enumerate(zip(layout.offsets, layout.counts)):
                quantized = c >= fastopt.blockwise.MIN_QUANTIZED_SIZE
                if quantized:
                    check(np.array_equal(bits(param[o:o + c]), bits(ref[o:o + c])), f"{cls.__name__} {scheme}: shard {r}")
                elif c:
                    close = np.allclose(param[o:o + c], ref[o:o + c], rtol=0, atol=50 * lr)
                    check(close, f"{cls.__name__} {scheme}: short shard {r} (float32 state) strays")
                if r == RANK and c:
                    kinds = {v.dtype for v in opt.state.values() if isinstance(v, np.ndarray) and v.ndim}
                    check((np.dtype(np.uint8) in kinds) == quantized, f"{cls.__name__} {scheme}: state of shard {r}")
    # Bytes: reduce-scatter and all-gather payloads, (N-1)/N of the padded buffer each.
    p = np.zeros(N * 4 * NORM_BLOCK, np.float32)
    opt = ShardedOptimizer(fastopt.SGD, p, comm, lr=0.1)
    before = opt.bytes_sent
    opt.step(np.ones_like(p))
    check(opt.bytes_sent - before == 2 * (N - 1) * 4 * NORM_BLOCK * 4 + 16 * (N - 1), "bytes per step = 2 (N-1)/N P b + the step check")
    print(f"OK {CHECKS} checks", flush=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
