"""Run under mpiexec (N >= 2): inputs on which the ranks disagree raise a clear error on every
rank, and no rank hangs. Prints 'OK <n> checks' per rank."""
import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer

comm = MPI.COMM_WORLD
N, RANK = comm.size, comm.rank
LAST = RANK == N - 1
P = 20000
CHECKS = 0


def raises(kind, words, make):
    """make() must raise `kind` on this rank with every word of `words` in the message."""
    global CHECKS
    try:
        make()
    except kind as exc:
        message = str(exc)
        missing = [w for w in words if w not in message]
        assert not missing, f"rank {RANK}: {missing} not in {message!r}"
    else:
        raise AssertionError(f"rank {RANK}: no {kind.__name__} for {words}")
    CHECKS += 1
    comm.Barrier()  # every rank is past the failed construction, none is stuck in it


def sharded(cls=fastopt.Adam, size=P, dtype=np.float32, the_comm=comm, **options):
    return ShardedOptimizer(cls, np.zeros(size, dtype), the_comm, **options)


raises(ValueError, ["disagree", "size", f"rank {N - 1} has {P + 16}"], lambda: sharded(size=P + 16 * LAST))
raises(ValueError, ["disagree", "param_dtype", "float64"],
       lambda: sharded(dtype=np.float64 if LAST else np.float32))
raises(ValueError, ["disagree", "lr"], lambda: sharded(lr=2e-3 if LAST else 1e-3))
raises(ValueError, ["disagree", "betas"], lambda: sharded(betas=(0.9, 0.99) if LAST else (0.9, 0.999)))
raises(ValueError, ["disagree", "optimizer", "AdamW"], lambda: sharded(cls=fastopt.AdamW if LAST else fastopt.Adam))
raises(ValueError, ["disagree", "deterministic"], lambda: sharded(deterministic=LAST))
raises(ValueError, ["disagree", "average"], lambda: sharded(average=not LAST))
raises(ValueError, ["disagree", "grad_dtype"], lambda: sharded(grad_dtype=np.float64 if LAST else None))
# An error on one rank only (a bad hyper-parameter) is raised on every rank, naming that rank.
raises(ValueError, ["lr", f"on rank {N - 1}"], lambda: sharded(lr=-1.0 if LAST else 1e-3))
raises(TypeError, ["master_weights", f"on rank {N - 1}"],
       lambda: sharded(dtype=np.float16 if LAST else np.float32))
raises(TypeError, ["optimizer_class"], lambda: sharded(cls=np.add))
# Communicators of the wrong kind: every rank passes them, every rank raises at once.
raises(TypeError, ["mpi4py communicator"], lambda: sharded(the_comm="COMM_WORLD"))
raises(TypeError, ["COMM_NULL"], lambda: sharded(the_comm=MPI.COMM_NULL))
group = comm.Split(RANK % 2, RANK)
if N >= 2:
    inter = group.Create_intercomm(0, comm, 1 - RANK % 2, tag=7)
    raises(TypeError, ["inter-communicator"], lambda: sharded(the_comm=inter))
    inter.Free()
group.Free()
# A gradient that does not fit is refused before any collective (every rank passes it here).
opt = sharded()
raises(ValueError, ["grad", f"{P} elements"], lambda: opt.step(np.zeros(P + 1, np.float32)))
raises(ValueError, ["grad", "float32"], lambda: opt.step(np.zeros(P, np.float64)))
raises(ValueError, ["max_grad_norm"], lambda: opt.step(np.zeros(P, np.float32), max_grad_norm=-1))
opt.step(np.zeros(P, np.float32))  # still usable: nothing was half done
# Per step: one rank's grad that does not fit, or arguments that differ, fail on every rank.
good = np.zeros(P, np.float32)
raises(ValueError, ["grad", f"on rank {N - 1}"] if N > 1 else ["grad"],
       lambda: opt.step(np.zeros(P + LAST, np.float32)))
if N > 1:
    raises(ValueError, ["different arguments", f"ranks [{N - 1}]"], lambda: opt.step(good, max_grad_norm=1.0 if LAST else None))
    raises(ValueError, ["different arguments"], lambda: opt.step(good, grad_scale=2.0 if LAST else 1.0))
    opt.lr = 0.5 if LAST else 1e-3
    raises(ValueError, ["different arguments"], lambda: opt.step(good))
    opt.lr = 1e-3
opt.step(good)
# state_dict() is this rank's shard; it loads back at the same layout only.
sd = opt.state_dict()
opt.step(np.ones(P, np.float32))
opt.load_state_dict(sd)
assert opt.state["step"] == sd["state"]["step"] and np.array_equal(opt.state["exp_avg"], sd["state"]["exp_avg"]), "state_dict"
CHECKS += 1
other = sharded(size=P + 16 * 8192)
raises(ValueError, ["shard", "save() / load()"], lambda: other.load_state_dict(sd))
raises(AttributeError, ["no attribute"], lambda: opt.no_such_thing)
print(f"OK {CHECKS} checks", flush=True)
