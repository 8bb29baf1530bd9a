"""Run under mpiexec: `save DIR` takes 2 steps and saves; `load DIR` (any rank count) loads, takes
2 more steps and checks the bits against one process that never stopped (deterministic mode:
the rank-order sums of each phase's per-rank gradients). Prints 'OK <n> checks' per rank."""
import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer
from fastopt.distributed._layout import NORM_BLOCK

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

comm = MPI.COMM_WORLD
N, RANK = comm.size, comm.rank
P = 3 * NORM_BLOCK + 777
SAVE_RANKS = 3
CHECKS = 0
CONFIGS = {
    "adamw_f32": (fastopt.AdamW, np.float32, dict(lr=1e-2)),
    "nadam_f64": (fastopt.NAdam, np.float64, dict(lr=1e-2)),
    "sgd_momentum": (fastopt.SGD, np.float32, dict(lr=0.1, momentum=0.9)),
    "adam_f16_master": (fastopt.Adam, np.float16, dict(lr=1e-2, master_weights=True)),
}
if bfloat16 is not None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import rule_table  # tests/rule_table.py: the optimizers to run

    for cls, (key, kwargs) in rule_table.rows("mpi_checkpoint"):
        CONFIGS[key] = (cls, bfloat16, kwargs)


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        raise AssertionError(f"rank {RANK} of {N}: {what}")


def initial(dtype):
    return np.random.default_rng(0).standard_normal(P).astype(np.float32).astype(dtype)


def grads(step, ranks, dtype):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(P).astype(np.float32).astype(dtype) for _ in range(ranks)]


def total(parts):
    out = parts[0].copy()
    for g in parts[1:]:
        np.add(out, g, out=out)
    return out


def reference(cls, dtype, options):
    """One process, four steps: two with the save run's ranks, two with this run's."""
    p = initial(dtype)
    opt = cls(p, **options)
    for step in range(4):
        ranks = SAVE_RANKS if step < 2 else N
        opt.step(total(grads(step, ranks, dtype)), grad_scale=float(ranks))
    return p


def main(phase, root):
    for name, (cls, dtype, options) in CONFIGS.items():
        path = os.path.join(root, name)
        param = initial(dtype)
        opt = ShardedOptimizer(cls, param, comm, deterministic=True, **options)
        if phase == "save":
            for step in range(2):
                opt.step(grads(step, N, dtype)[RANK])
            opt.save(path)
            check(os.path.exists(os.path.join(path, "meta.json")), "meta.json written")
            continue
        param[...] = 0  # the checkpoint brings the parameters
        opt.load(path)
        check(opt.state["step"] == 2, "step restored")
        for step in (2, 3):
            opt.step(grads(step, N, dtype)[RANK])
        want = reference(cls, dtype, options)
        check(np.array_equal(param.view(np.uint8), want.view(np.uint8)), f"{name}: after resharding "
              f"{SAVE_RANKS} -> {N} ranks, the bits differ from a run that never stopped")
    if phase == "load":
        # A checkpoint loaded into a different model, optimizer or dtype: an error on every rank.
        path = os.path.join(root, "adamw_f32")
        for make, words in [
                (lambda: ShardedOptimizer(fastopt.AdamW, np.zeros(P + 64, np.float32), comm), "different model"),
                (lambda: ShardedOptimizer(fastopt.Adam, np.zeros(P, np.float32), comm), "AdamW optimizer"),
                (lambda: ShardedOptimizer(fastopt.AdamW, np.zeros(P, np.float64), comm), "dtypes"),
                (lambda: ShardedOptimizer(fastopt.AdamW, np.zeros(P, np.float32), comm, deterministic=True),
                 "missing-dir")]:
            opt = make()
            before = opt.param.copy()
            try:
                opt.load(path if words != "missing-dir" else os.path.join(root, "nothing here"))
            except ValueError as exc:
                check(words in str(exc) or (words == "missing-dir" and "cannot read" in str(exc)),
                      f"{words!r} not in {exc}")
            else:
                check(False, f"no error for {words}")
            check(np.array_equal(opt.param, before) and opt.state["step"] == 0, "a failed load changes nothing")
            comm.Barrier()
    print(f"OK {CHECKS} checks", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
