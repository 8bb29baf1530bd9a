"""The NCCL transport for CuPy arrays (cupy.cuda.nccl): the same collectives as MpiTransport,
enqueued on the current CuPy stream, so they are ordered with fastopt's kernels without host
synchronisation. MPI still carries the small things: the NCCL unique id, the set-up descriptor,
the norm's block sums (host floats) and the agreement on errors.

    transport = NcclTransport(MPI.COMM_WORLD)      # one GPU per rank: cupy.cuda.Device(local_rank).use()
    opt = ShardedOptimizer(fastopt.AdamW, params.data, None, transport=transport, lr=1e-3)

NCCL's reduceScatter and allGather take equal blocks: when the shards are not all the same
length (the buffer is not a multiple of ranks x 8192 elements) the blocks go through a padded
staging buffer, one extra copy; size FlatParams to that multiple to avoid it.
"""
import numpy as np

from ._mpi import MpiTransport, check_comm


def _nccl():
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:  # pragma: no cover - exercised only without CuPy
        raise ImportError("the NCCL transport needs CuPy built with NCCL (pip install cupy-cuda12x)") from exc
    return cupy, nccl


class NcclTransport:
    kind = "cupy"

    def __init__(self, comm, stream=None):
        cupy, nccl = _nccl()
        self.comm = check_comm(comm)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._mpi = MpiTransport(comm)  # the host-side small collectives
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = comm.bcast(uid, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._stream = stream
        self.bytes_sent = 0
        self._staging = {}

    @property
    def stream(self):
        cupy, _ = _nccl()
        return (self._stream or cupy.cuda.get_current_stream()).ptr

    def _nccl_type(self, a):
        _, nccl = _nccl()
        return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(a.dtype)]

    def _buffer(self, key, shape, dtype):
        cupy, _ = _nccl()
        buf = self._staging.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._staging[key] = cupy.zeros(shape, dtype)
        return buf

    def ireduce_scatter_sum(self, send, out, counts):
        _, nccl = _nccl()
        self.bytes_sent += (int(sum(counts)) - counts[self.rank]) * send.itemsize
        m = max(counts)
        if m == 0:
            return None
        if all(c == m for c in counts):
            self.nccl.reduceScatter(send.data.ptr, out.data.ptr, m, self._nccl_type(send), nccl.NCCL_SUM, self.stream)
            return None
        staged = self._buffer("rs", (self.size, m), send.dtype)
        staged[...] = 0
        start = 0
        for r, c in enumerate(counts):
            staged[r, :c] = send[start:start + c]
            start += c
        got = self._buffer("rs_out", (m,), send.dtype)
        self.nccl.reduceScatter(staged.data.ptr, got.data.ptr, m, self._nccl_type(send), nccl.NCCL_SUM, self.stream)
        out[...] = got[:counts[self.rank]]
        return None

    def iexchange(self, grad, recv, counts, offsets, lo, hi):
        """recv[k, lo:hi] = rank k's block for this rank: grouped point-to-point, as bytes."""
        _, nccl = _nccl()
        b = grad.itemsize
        self.bytes_sent += (int(sum(counts)) - counts[self.rank]) * b
        row = recv.shape[1]
        nccl.groupStart()
        for k in range(self.size):
            if k == self.rank:
                continue
            if counts[k]:
                self.nccl.send(grad.data.ptr + offsets[k] * b, counts[k] * b, nccl.NCCL_UINT8, k, self.stream)
            if hi > lo:
                self.nccl.recv(recv.data.ptr + (k * row + lo) * b, (hi - lo) * b, nccl.NCCL_UINT8, k, self.stream)
        nccl.groupEnd()
        o = offsets[self.rank]
        recv[self.rank, lo:hi] = grad[o:o + counts[self.rank]]
        return None

    def wait(self, requests):
        """Nothing to wait for: later kernels on the stream run after the collectives."""

    def allgather_in_place(self, param, counts, offsets):
        _, nccl = _nccl()
        b = param.itemsize
        self.bytes_sent += (self.size - 1) * counts[self.rank] * b
        m = max(counts)
        if m == 0:
            return
        flat = param.reshape(-1)
        if all(c == m for c in counts) and flat.size == m * self.size:
            own = flat.data.ptr + offsets[self.rank] * b
            self.nccl.allGather(own, flat.data.ptr, m * b, nccl.NCCL_UINT8, self.stream)
            return
        staged = self._buffer("ag", (self.size, m * b), np.uint8)
        mine = counts[self.rank]
        staged[self.rank, :mine * b] = flat[offsets[self.rank]:offsets[self.rank] + mine].view(np.uint8)
        row = staged[self.rank]
        self.nccl.allGather(row.data.ptr, staged.data.ptr, m * b, nccl.NCCL_UINT8, self.stream)
        for r, (o, c) in enumerate(zip(offsets, counts)):
            if r != self.rank and c:
                flat[o:o + c] = staged[r, :c * b].view(param.dtype)

    def block_sums(self, shard_grad, bounds):
        """float64 sums of squares of the norm blocks (one reduction kernel, then to the host)."""
        cupy, _ = _nccl()
        if not bounds:
            return np.zeros(0)
        o = bounds[0][0]
        return cupy.asnumpy(cupy.stack([cupy.sum(cupy.square(shard_grad[a - o:b - o].astype(cupy.float64)))
                                        for a, b in bounds]))

    def allgather_float64(self, local, counts):
        return self._mpi.allgather_float64(local, counts)

    def to_host(self, a):
        cupy, _ = _nccl()
        return cupy.asnumpy(a)

    def from_host(self, a):
        cupy, _ = _nccl()
        return cupy.asarray(a)
