"""SyncBatchNorm: batch normalization with the statistics of the batches of every rank.

Forward: each rank's per-channel (count, mean, M2) in float64 is all-gathered and merged in rank
order with Chan et al.'s pairwise formula, so every rank normalizes with the same statistics,
those of the concatenated batch; the normalization itself is fastopt's fused kernel, given those
statistics (its evaluation path normalizes with a given mean and variance). Backward: the two
per-channel sums, sum(dy) and sum(dy * xhat), are all-gathered and added in rank order.
A rank may hold zero samples. Without ``training`` nothing is communicated.
"""
import numpy as np

from .. import _backend, _checks
from .._dtypes import CODE_FLOAT64, bfloat16_bits, dtype_code
from ..batchnorm import BatchNorm, batch_norm_backward, batch_norm_forward
from ._mpi import agree_descriptor, check_comm, mpi


_UNIT_EPS = 2.0 ** -10  # (1 - eps) + eps == 1 exactly in float32 and float64


def _host(a):
    """A NumPy copy of a small per-channel array (CuPy arrays come to the host)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _layout(x, axis, x_dtype):
    """(outer, channels, inner) view of x, its array module and the statistics dtype; every check
    that the kernels would make later is made here, before any collective."""
    kind = _backend.array_kind(x)
    if kind is None:
        raise TypeError(f"x must be a NumPy or CuPy array, got {type(x).__name__}")
    if not hasattr(x, "ndim") or x.ndim not in (2, 3, 4):
        raise ValueError("x must have 2, 3 or 4 dimensions ((N, C), (N, C, L), (N, C, H, W) or channels-last)")
    if isinstance(axis, bool) or axis not in (1, -1, x.ndim - 1):
        raise ValueError(f"axis must be 1 (channels first) or -1 (channels last), got {axis!r}")
    code = dtype_code(x.dtype, x_dtype)
    if code is None:
        raise TypeError(f"x has dtype {x.dtype}; expected float32, float64, float16 or bfloat16")
    if not x.flags.c_contiguous:
        raise TypeError("x must be C-contiguous")
    xp = _backend.array_module(kind)
    channels = x.shape[1] if axis == 1 else x.shape[-1]
    if axis == 1:
        view = x.reshape(x.shape[0], channels, -1) if x.size else xp.zeros((0, channels, 1), x.dtype)
    else:
        view = x.reshape(-1, channels, 1)
    stat = np.dtype(np.float64 if code == CODE_FLOAT64 else np.float32)
    return view, xp, stat


def _check_like(name, a, x, writable=False):
    if _backend.array_kind(a) != _backend.array_kind(x) or a.shape != x.shape or a.dtype != x.dtype:
        raise ValueError(f"{name} must be an array of x's kind, shape {tuple(x.shape)} and dtype {x.dtype}")
    if not a.flags.c_contiguous or (writable and not a.flags.writeable):
        raise TypeError(f"{name} must be C-contiguous{' and writable' if writable else ''}")


def _check_channels(named, x, channels, stat):
    for name, a in named:
        if a is None:
            continue
        if (_backend.array_kind(a) != _backend.array_kind(x) or getattr(a, "shape", None) != (channels,)
                or a.dtype != stat or not a.flags.c_contiguous):
            raise TypeError(f"{name} must be a contiguous ({channels},) array of {stat} for {x.dtype} data, "
                            f"of x's array kind")


def _gather(comm, header, rows):
    """Every rank's int64 header (3 values) and float64 rows (k x C), in rank order; the header
    goes first, so that ranks that disagree on C fail on every rank instead of in MPI."""
    MPI = mpi()
    headers = np.empty((comm.size, 3), np.int64)
    comm.Allgather([np.asarray(header, np.int64), MPI.INT64_T], [headers, MPI.INT64_T])
    bad = [r for r in range(comm.size) if headers[r, 2]]
    if bad:
        raise ValueError(f"fastopt.distributed: sync batch norm failed on ranks {bad} (see their errors)")
    channels = headers[:, 0]
    if (channels != channels[0]).any():
        raise ValueError(f"fastopt.distributed: the ranks disagree on the number of channels: {channels.tolist()}")
    rows = np.ascontiguousarray(rows, np.float64)
    out = np.empty((comm.size,) + rows.shape, np.float64)
    comm.Allgather([rows, MPI.DOUBLE], [out, MPI.DOUBLE])
    return headers[:, 1], out


def _checked(comm, check):
    """Runs the local checks; on failure tells the other ranks (header flag) before raising."""
    try:
        return check()
    except (TypeError, ValueError):
        _gather_failed(comm)
        raise


def _gather_failed(comm):
    MPI = mpi()
    headers = np.empty((comm.size, 3), np.int64)
    comm.Allgather([np.array([0, 0, 1], np.int64), MPI.INT64_T], [headers, MPI.INT64_T])


def merge_moments(counts, means, m2s):
    """Chan et al.'s pairwise merge, in the order given: (count, mean, M2) of the union."""
    n = 0.0
    mean = np.zeros_like(means[0])
    m2 = np.zeros_like(m2s[0])
    for nb, mb, m2b in zip(counts, means, m2s):
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    return int(n), mean, m2


def _widened(a, x_dtype):
    """float64 values of a host array (half bits stored as uint16 included)."""
    if x_dtype is None:
        return a.astype(np.float64)
    if str(x_dtype) == "float16":
        return a.view(np.float16).astype(np.float64)
    return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _local_moments(x, view, xp, stat, eps, axis, scratch, x_dtype, backend):
    """This rank's per-channel mean (a float64 sum) and M2 (from the fused kernel's variance,
    which it computes from shifted float64 sums, exact for any offset of the data)."""
    count, channels = view.shape[0] * view.shape[2], view.shape[1]
    if count == 0:
        return np.zeros(channels), np.zeros(channels)
    if count == 1:
        return _widened(_host(view.reshape(channels)), x_dtype), np.zeros(channels)
    # momentum=1 leaves the batch's mean and unbiased variance in the running statistics; y goes to scratch.
    running_mean, running_var = xp.zeros(channels, stat), xp.zeros(channels, stat)
    batch_norm_forward(x, None, None, running_mean, running_var, training=True, momentum=1.0, eps=eps,
                       axis=axis, out=scratch, x_dtype=x_dtype, backend=backend)
    if x_dtype is None:
        mean = _host(view.sum(axis=(0, 2), dtype=np.float64)) / count
    else:  # half bits stored as uint16 (CuPy): the kernel's mean, rounded to float32
        mean = _host(running_mean).astype(np.float64)
    return mean, _host(running_var).astype(np.float64) * (count - 1)


def sync_batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, comm,
                            training=True, momentum=0.1, eps=1e-5, axis=1, out=None, x_dtype=None, backend=None):
    """Batch norm over the union of every rank's batch; returns ``(y, save_mean, save_invstd)``.

    Arguments as :func:`fastopt.batch_norm_forward`, plus ``comm`` (an mpi4py communicator; CuPy
    arrays work too, their per-channel statistics travel through the host). ``x`` may have zero
    samples on some ranks. Running statistics are updated as one process over the concatenated
    batch would (unbiased variance with the global count). Every rank of ``comm`` calls it together.
    """
    if not training:
        return batch_norm_forward(x, weight, bias, running_mean, running_var, training=False, momentum=momentum,
                                  eps=eps, axis=axis, out=out, x_dtype=x_dtype, backend=backend)
    comm = check_comm(comm)

    def check():
        view, xp, stat = _layout(x, axis, x_dtype)
        _check_channels([("weight", weight), ("bias", bias), ("running_mean", running_mean),
                         ("running_var", running_var)], x, view.shape[1], stat)
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must be given together")
        if out is not None:
            _check_like("out", out, x, writable=True)
        return view, xp, stat, _checks.positive("eps", eps), _checks.unit_interval("momentum", momentum, closed=True)
    view, xp, stat, eps_, momentum_ = _checked(comm, check)
    count = view.shape[0] * view.shape[2]
    y = xp.empty_like(x) if out is None else out
    mean, m2 = _local_moments(x, view, xp, stat, eps_, axis, y, x_dtype, backend)
    counts, rows = _gather(comm, [view.shape[1], count, 0], np.stack([mean, m2]))
    total, mean, m2 = merge_moments(counts.tolist(), rows[:, 0], rows[:, 1])
    if total < 2:
        raise ValueError(f"training needs more than one value per channel over all ranks (got {total}): "
                         "the batch variance is undefined")
    var = m2 / total
    save_mean, save_var = xp.asarray(mean.astype(stat)), xp.asarray(var.astype(stat))
    if count:  # the fused kernel, normalizing with the given (global) statistics
        y, save_mean, save_invstd = batch_norm_forward(x, weight, bias, save_mean, save_var, training=False,
                                                       eps=eps_, axis=axis, out=y, x_dtype=x_dtype, backend=backend)
    else:  # nothing to normalize here; the statistics as the kernel would give them
        save_invstd = xp.asarray((1.0 / np.sqrt(var.astype(stat).astype(np.float64) + eps_)).astype(stat))
    if running_mean is not None:
        new_mean = (1.0 - momentum_) * _host(running_mean).astype(np.float64) + momentum_ * mean
        unbiased = var * (total / (total - 1))
        new_var = (1.0 - momentum_) * _host(running_var).astype(np.float64) + momentum_ * unbiased
        running_mean[...] = xp.asarray(new_mean.astype(stat))
        running_var[...] = xp.asarray(new_var.astype(stat))
    return y, save_mean, save_invstd


def sync_batch_norm_backward(dy, x, weight, save_mean, save_invstd, *, comm, axis=1, training=True, out=None,
                             x_dtype=None, backend=None):
    """Backward of :func:`sync_batch_norm_forward`; returns ``(dx, dweight, dbias)``.

    ``dx`` uses the sums over every rank; ``dweight`` and ``dbias`` are this rank's own sums (its
    contribution: the sharded optimizer, or any gradient sum over ranks, adds them up).
    """
    if not training:
        return batch_norm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, training=False, out=out,
                                   x_dtype=x_dtype, backend=backend)
    comm = check_comm(comm)

    def check():
        view, xp, stat = _layout(x, axis, x_dtype)
        _check_like("dy", dy, x)
        if out is not None:
            _check_like("out", out, x, writable=True)
        if save_mean is None or save_invstd is None:
            raise TypeError("save_mean and save_invstd are required (as returned by sync_batch_norm_forward)")
        _check_channels([("weight", weight), ("save_mean", save_mean), ("save_invstd", save_invstd)], x,
                        view.shape[1], stat)
        return view, xp, stat
    view, xp, stat = _checked(comm, check)
    count, channels = view.shape[0] * view.shape[2], view.shape[1]
    dx_out = xp.empty_like(x) if out is None else out
    sum_dy, sum_dy_xhat = np.zeros(channels), np.zeros(channels)
    w = xp.ones(channels, stat) if weight is None else weight
    if count:
        # The kernel's evaluation backward: dx = weight invstd dy, and this rank's sum(dy * xhat)
        # and sum(dy) (float64 sums about the given mean), in one pass.
        _, local_dw, local_db = batch_norm_backward(dy, x, w, save_mean, save_invstd, axis=axis, training=False,
                                                    out=dx_out, x_dtype=x_dtype, backend=backend)
        sum_dy, sum_dy_xhat = _host(local_db).astype(np.float64), _host(local_dw).astype(np.float64)
    counts, rows = _gather(comm, [channels, count, 0], np.stack([sum_dy, sum_dy_xhat]))
    total = float(counts.sum())
    global_dy, global_dy_xhat = rows[0, 0].copy(), rows[0, 1].copy()
    for k in range(1, comm.size):  # rank order
        global_dy += rows[k, 0]
        global_dy_xhat += rows[k, 1]
    if count:
        # dx = w invstd dy - [w invstd^2 sum_dy_xhat / M (x - mean) + w invstd sum_dy / M]. The
        # bracket is a per-channel affine map of x, which the evaluation forward kernel computes
        # (x - mean first), given variance 1 - eps so that it scales by exactly the given weight.
        invstd, w64 = _host(save_invstd).astype(np.float64), _host(w).astype(np.float64)
        x_coef = xp.asarray((w64 * invstd * invstd * global_dy_xhat / total).astype(stat))
        offset = xp.asarray((w64 * invstd * global_dy / total).astype(stat))
        unit = xp.full(channels, 1.0 - _UNIT_EPS, stat)
        correction, _, _ = batch_norm_forward(x, x_coef, offset, save_mean.copy(), unit, training=False,
                                              eps=_UNIT_EPS, axis=axis, x_dtype=x_dtype, backend=backend)
        _subtract(dx_out, correction, x_dtype, xp)
    if weight is None:
        return dx_out, None, None
    return dx_out, xp.asarray(sum_dy_xhat.astype(stat)), xp.asarray(sum_dy.astype(stat))


def _subtract(dx, correction, x_dtype, xp):
    if x_dtype is None:
        dx -= correction
        return
    # half bits stored as uint16 (CuPy): widen, subtract in float32, round to nearest even
    widen = (lambda a: a.view(xp.float16).astype(xp.float32)) if str(x_dtype) == "float16" else (
        lambda a: (a.astype(xp.uint32) << 16).view(xp.float32))
    result = widen(dx) - widen(correction)
    if str(x_dtype) == "float16":
        dx[...] = result.astype(xp.float16).view(xp.uint16)
    else:
        dx[...] = bfloat16_bits(result, xp)


class SyncBatchNorm(BatchNorm):
    """:class:`fastopt.BatchNorm` whose training statistics are those of every rank's batch.

        bn = SyncBatchNorm(128, comm=MPI.COMM_WORLD)
        y = bn.forward(x); dx = bn.backward(dy)   # bn.dweight, bn.dbias: this rank's contribution

    The ranks must agree on the layer's set-up (checked at construction, on every rank).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, axis=1,
                 dtype=np.float32, *, comm, backend=None):
        self.comm = check_comm(comm)
        agree_descriptor(self.comm, dict(num_features=int(num_features), eps=repr(float(eps)),
                                         momentum=None if momentum is None else repr(float(momentum)),
                                         affine=bool(affine), track=bool(track_running_stats), axis=axis,
                                         dtype=str(np.dtype(dtype))), "SyncBatchNorm set-up")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype, backend=backend)

    def forward(self, x, training=True, out=None):
        track = self.track_running_stats
        if not training and track:
            return super().forward(x, training=False, out=out)
        update = bool(training) and track
        momentum = self.momentum if self.momentum is not None else 1.0 / (self.num_batches_tracked + 1)
        y, mean, invstd = sync_batch_norm_forward(
            x, self.weight, self.bias, self.running_mean if update else None, self.running_var if update else None,
            comm=self.comm, momentum=momentum, eps=self.eps, axis=self.axis, out=out, backend=self.backend)
        if update:
            self.num_batches_tracked += 1
        self._save_mean[...], self._save_invstd[...] = mean, invstd
        self._x, self._batch_stats = x, True
        return y

    __call__ = forward

    def backward(self, dy, out=None):
        if self._x is None:
            raise RuntimeError("backward() needs a forward() first")
        if not self._batch_stats:
            return super().backward(dy, out=out)
        dx, dweight, dbias = sync_batch_norm_backward(dy, self._x, self.weight, self._save_mean, self._save_invstd,
                                                      comm=self.comm, axis=self.axis, out=out, backend=self.backend)
        if self.affine:
            self.dweight[...], self.dbias[...] = dweight, dbias
        return dx
