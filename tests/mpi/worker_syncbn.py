"""Run under mpiexec: SyncBatchNorm on uneven per-rank batches (rank 1 holds none) against
fastopt's BatchNorm on the concatenated batch, every layout and dtype. Prints 'OK <n> checks'."""
import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import SyncBatchNorm, sync_batch_norm_backward, sync_batch_norm_forward

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

comm = MPI.COMM_WORLD
N, RANK = comm.size, comm.rank
SIZES = [5, 0, 3, 7][:N] if N > 1 else [6]  # uneven batches; rank 1 has no sample
CHECKS = 0
SHAPES = [((4,), 1), ((4, 6), 1), ((3, 5, 2), 1), ((5, 2, 3), -1)]  # per-sample shapes, axis
DTYPES = [np.float32, np.float64, np.float16] + ([bfloat16] if bfloat16 is not None else [])


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        raise AssertionError(f"rank {RANK} of {N}: {what}")


def close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b).max() if a.size else 0.0
    check(a.shape == b.shape and err <= tol * (1 + np.abs(b).max() if b.size else 1), f"{what}: off by {err}")


def mine(a):
    start = sum(SIZES[:RANK])
    return a[start:start + SIZES[RANK]]


for shape, axis in SHAPES:
    for dtype in DTYPES:
        name = f"{shape} axis={axis} {np.dtype(dtype).name}"
        stat = np.float64 if dtype == np.float64 else np.float32
        tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}.get(np.dtype(dtype), 2e-2)
        rng = np.random.default_rng(3)
        total = sum(SIZES)
        x = (rng.standard_normal((total,) + shape) * 2 + 5).astype(np.float32).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(np.float32).astype(dtype)
        channels = shape[0] if axis == 1 else shape[-1]
        w = rng.uniform(0.5, 1.5, channels).astype(stat)
        b = rng.standard_normal(channels).astype(stat)
        rm, rv = np.zeros(channels, stat), np.ones(channels, stat)
        ref_rm, ref_rv = rm.copy(), rv.copy()
        y_ref, mean_ref, invstd_ref = fastopt.batch_norm_forward(x, w, b, ref_rm, ref_rv, axis=axis, momentum=0.3)
        dx_ref, dw_ref, db_ref = fastopt.batch_norm_backward(dy, x, w, mean_ref, invstd_ref, axis=axis)
        xl = np.ascontiguousarray(mine(x))
        y, mean, invstd = sync_batch_norm_forward(xl, w, b, rm, rv, comm=comm, axis=axis, momentum=0.3)
        close(y, mine(y_ref), tol, f"{name}: y")
        close(mean, mean_ref, tol, f"{name}: mean")
        close(invstd, invstd_ref, tol, f"{name}: invstd")
        close(rm, ref_rm, tol, f"{name}: running_mean")
        close(rv, ref_rv, tol, f"{name}: running_var (unbiased with the global count)")
        dx, dw, db = sync_batch_norm_backward(np.ascontiguousarray(mine(dy)), xl, w, mean, invstd, comm=comm, axis=axis)
        close(dx, mine(dx_ref), 4 * tol, f"{name}: dx")
        close(comm.allreduce(dw.astype(np.float64)), dw_ref, 4 * tol, f"{name}: dweight summed over ranks")
        close(comm.allreduce(db.astype(np.float64)), db_ref, 4 * tol, f"{name}: dbias summed over ranks")
        digests = comm.allgather((mean.tobytes(), invstd.tobytes(), rm.tobytes(), rv.tobytes()))
        check(all(d == digests[0] for d in digests), f"{name}: statistics differ between ranks")

# The layer: two training steps and evaluation, as fastopt.BatchNorm on the whole batch.
rng = np.random.default_rng(4)
x = rng.standard_normal((sum(SIZES), 3, 4)).astype(np.float32)
dy = rng.standard_normal(x.shape).astype(np.float32)
layer, ref = SyncBatchNorm(3, momentum=None, comm=comm), fastopt.BatchNorm(3, momentum=None)
for _ in range(2):
    close(layer.forward(np.ascontiguousarray(mine(x))), mine(ref.forward(x)), 2e-5, "SyncBatchNorm forward")
    close(layer.backward(np.ascontiguousarray(mine(dy))), mine(ref.backward(dy)), 1e-4, "SyncBatchNorm backward")
    close(comm.allreduce(layer.dweight.astype(np.float64)), ref.dweight, 1e-4, "SyncBatchNorm dweight")
close(layer.running_var, ref.running_var, 2e-5, "cumulative running_var")
check(layer.num_batches_tracked == 2, "num_batches_tracked")
close(layer.forward(x, training=False), ref.forward(x, training=False), 2e-5, "evaluation")
# Bad input: every rank raises, none hangs.
for make, words in [
        (lambda: SyncBatchNorm(3 + (RANK == N - 1), comm=comm), "disagree"),
        (lambda: sync_batch_norm_forward(np.ones((2, 3 + (RANK == N - 1)), np.float32), comm=comm), "channels"),
        (lambda: sync_batch_norm_forward(np.ones((2, 3), np.float32), np.ones(3, np.float64 if RANK == N - 1 else np.float32),
                                         comm=comm), "weight" if RANK == N - 1 else "failed on ranks"),
        (lambda: sync_batch_norm_forward(np.ones((1 if RANK == 0 else 0, 3), np.float32), comm=comm), "more than one value"),
        (lambda: sync_batch_norm_forward(np.ones((4, 6), np.float32)[:, ::2] if RANK == N - 1 else np.ones((4, 3), np.float32),
                                         comm=comm), "contiguous" if RANK == N - 1 else "failed on ranks"),
        (lambda: sync_batch_norm_backward(np.ones((4, 3), np.float64 if RANK == N - 1 else np.float32),
                                          np.ones((4, 3), np.float32), None, np.zeros(3, np.float32),
                                          np.ones(3, np.float32), comm=comm), "dy" if RANK == N - 1 else "failed on ranks")]:
    try:
        make()
    except (TypeError, ValueError) as exc:
        check(words in str(exc) or N == 1, f"{words!r} not in {exc}")
    else:
        check(N == 1 and words in ("disagree", "channels", "failed on ranks"), f"no error for {words}")
    comm.Barrier()
print(f"OK {CHECKS} checks", flush=True)
