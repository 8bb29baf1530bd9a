"""Data-parallel training over MPI (mpi4py, NumPy arrays) or NCCL (CuPy arrays).

- :class:`ShardedOptimizer`: any fastopt optimizer stepped on this rank's shard of the flat
  parameter buffer (ZeRO-1; ZeRO-2 buckets with ``reduce_bucket``), ``deterministic=True`` for
  rank-order sums.
- :func:`sync_batch_norm_forward`, :func:`sync_batch_norm_backward`, :class:`SyncBatchNorm`:
  batch statistics over the batches of every rank.
- :func:`save`, :func:`load` (also ``opt.save(path)``, ``opt.load(path)``): checkpoints that
  load at any rank count.

CuPy arrays: pass ``transport=NcclTransport(comm)`` (NCCL through cupy.cuda.nccl).
See docs/distributed.md. Install with ``pip install 'fastopt[mpi]'``; launch with
``mpiexec -n 4 python -m mpi4py train.py`` (an exception on one rank then aborts every rank).
"""
from .checkpoint import load, save
from .sharded import ShardedOptimizer, predivided
from .syncbn import SyncBatchNorm, sync_batch_norm_backward, sync_batch_norm_forward

__all__ = ["ShardedOptimizer", "predivided", "SyncBatchNorm", "sync_batch_norm_forward", "sync_batch_norm_backward",
           "save", "load", "NcclTransport"]


def __getattr__(name):
    if name == "NcclTransport":  # imports CuPy only when asked for
        from ._nccl import NcclTransport
        return NcclTransport
    raise AttributeError(f"module 'fastopt.distributed' has no attribute {name!r}")
