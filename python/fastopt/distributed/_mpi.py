"""The MPI side of fastopt.distributed: communicator checks, agreement, and the collectives of a
sharded step on NumPy arrays (mpi4py buffer interface, no pickling of data)."""
import json

import numpy as np


def mpi():
    """mpi4py's MPI module, or an ImportError that says how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("fastopt.distributed needs mpi4py: pip install 'fastopt[mpi]' "
                          "(mpi4py and the mpich wheel, which ships mpiexec)") from exc
    return MPI


def check_comm(comm):
    """An intra-communicator that includes this process; TypeError otherwise."""
    MPI = mpi()
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise TypeError("comm is MPI.COMM_NULL")
    if comm.Is_inter():
        raise TypeError("comm is an inter-communicator; fastopt.distributed needs an intra-communicator "
                        "(one group of ranks that share the model)")
    return comm


def agree(comm, error):
    """Raises on every rank if any rank has an error (an exception or None); one small allgather.

    Every rank raises the same exception type and message, naming the ranks that failed, so no
    rank is left waiting in a collective that the others never enter.
    """
    mine = None if error is None else (type(error).__name__, str(error))
    errors = comm.allgather(mine)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, (kind, message) = failed[0]
        ranks = ", ".join(str(r) for r, _ in failed)
        cls = TypeError if kind == "TypeError" else ValueError
        raise cls(f"fastopt.distributed: {message} (on rank {rank}; failing ranks: {ranks})")


def agree_step(comm, fingerprint, error):
    """The per-step form of agree(): one Allgather of two int64 per rank, the step's arguments'
    fingerprint and a failure flag; the messages travel only when something is wrong."""
    MPI = mpi()
    mine = np.array([fingerprint, error is not None], np.int64)
    every = np.empty((comm.Get_size(), 2), np.int64)
    comm.Allgather([mine, MPI.INT64_T], [every, MPI.INT64_T])
    if not every[:, 1].any() and (every[:, 0] == every[0, 0]).all():
        return
    agree(comm, error)  # every rank takes this branch together
    differ = [r for r in range(len(every)) if every[r, 0] != every[0, 0]]
    raise ValueError(f"fastopt.distributed: the ranks called step() with different arguments or "
                     f"hyper-parameters (ranks {differ} differ from rank 0)")


def agree_descriptor(comm, descriptor, what):
    """Raises on every rank unless every rank passed the same descriptor (a JSON-able dict)."""
    text = json.dumps(descriptor, sort_keys=True)
    texts = comm.allgather(text)
    if all(t == texts[0] for t in texts):
        return
    mine, theirs = json.loads(texts[0]), None
    for rank, t in enumerate(texts):
        if t != texts[0]:
            theirs = (rank, json.loads(t))
            break
    rank, other = theirs
    keys = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
    diffs = "; ".join(f"{k}: rank 0 has {mine.get(k)!r}, rank {rank} has {other.get(k)!r}" for k in keys)
    raise ValueError(f"fastopt.distributed: the ranks disagree on the {what}: {diffs}")


def _bytes(a):
    """A flat uint8 view: every dtype (float16, bfloat16 included) travels as bytes."""
    return a.reshape(-1).view(np.uint8)


class MpiTransport:
    """The collectives of a sharded step over an mpi4py communicator, counting the bytes each
    rank hands to MPI for other ranks (the payload, independent of MPI's internal algorithm)."""

    kind = "numpy"

    def __init__(self, comm):
        self.comm = check_comm(comm)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.bytes_sent = 0

    def _typed(self, a):
        MPI = mpi()
        if a.dtype == np.float32:
            return MPI.FLOAT
        if a.dtype == np.float64:
            return MPI.DOUBLE
        return None  # no MPI sum for half types

    def ireduce_scatter_sum(self, send, out, counts):
        """Starts out = sum over ranks of this rank's block of send (blocks of counts, in rank
        order), in MPI's order of addition; returns the request."""
        MPI = mpi()
        self.bytes_sent += (int(sum(counts)) - counts[self.rank]) * send.itemsize
        kind = self._typed(send)
        return self.comm.Ireduce_scatter([send, kind], [out, kind], recvcounts=list(counts), op=MPI.SUM)

    def iexchange(self, grad, recv, counts, offsets, lo, hi):
        """Starts recv[k, lo:hi] = rank k's grad[offsets[rank]:+counts[rank]] (an Alltoallv), so
        that the owner can sum the contributions in rank order; returns the request."""
        MPI = mpi()
        b = grad.itemsize
        mine = recv.shape[1]
        self.bytes_sent += (int(sum(counts)) - counts[self.rank]) * b
        send = [_bytes(grad), [c * b for c in counts], [o * b for o in offsets], MPI.BYTE]
        got = [_bytes(recv), [(hi - lo) * b] * self.size, [(k * mine + lo) * b for k in range(self.size)],
               MPI.BYTE]
        return self.comm.Ialltoallv(send, got)

    def wait(self, requests):
        mpi().Request.Waitall(requests)

    def allgather_in_place(self, param, counts, offsets):
        """Every rank's shard param[offsets[r]:+counts[r]] copied to every other rank, in place."""
        MPI = mpi()
        b = param.itemsize
        self.bytes_sent += (self.size - 1) * counts[self.rank] * b
        self.comm.Allgatherv(MPI.IN_PLACE, [_bytes(param), [c * b for c in counts],
                                            [o * b for o in offsets], MPI.BYTE])

    def allgather_float64(self, local, counts):
        """The concatenation, in rank order, of every rank's float64 vector (counts[r] long)."""
        MPI = mpi()
        local = np.ascontiguousarray(local, np.float64)
        out = np.empty(int(sum(counts)), np.float64)
        self.bytes_sent += (self.size - 1) * local.nbytes
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
        self.comm.Allgatherv([local, MPI.DOUBLE], [out, list(counts), offsets, MPI.DOUBLE])
        return out

    def barrier(self):
        self.comm.Barrier()
