"""SyncBatchNorm: batch normalization with the statistics of the batches of every rank.

Forward: each rank's per-channel (count, mean, M2) in float64 is all-gathered and merged in rank
order with Chan et al.'s pairwise formula, so every rank normalizes with the same statistics,
those of the concatenated batch; the normalization itself is fastopt's fused kernel, given those
statistics (its evaluation path normalizes with a given mean and variance). Backward: the two
per-channel sums, sum(dy) and sum(dy * xhat), are all-gathered and added in rank order.
A rank may hold zero samples. Without ``training`` nothing is communicated.
"""
import numpy as np

from .. import _checks
from ..batchnorm import BatchNorm, batch_norm_backward, batch_norm_forward
from ._mpi import agree_descriptor, check_comm, mpi


_UNIT_EPS = 2.0 ** -10  # (1 - eps) + eps == 1 exactly in float32 and float64


def _layout(x, axis):
    """(outer, channels, inner) view of x, and the stats dtype; raises before any collective."""
    if not hasattr(x, "ndim") or x.ndim not in (2, 3, 4):
        raise ValueError("x must have 2, 3 or 4 dimensions ((N, C), (N, C, L), (N, C, H, W) or channels-last)")
    if isinstance(axis, bool) or axis not in (1, -1, x.ndim - 1):
        raise ValueError(f"axis must be 1 (channels first) or -1 (channels last), got {axis!r}")
    if axis == 1:
        view = x.reshape(x.shape[0], x.shape[1], -1) if x.size else np.zeros((0, x.shape[1], 1), x.dtype)
    else:
        view = x.reshape(-1, x.shape[-1], 1)
    stat = np.float64 if x.dtype == np.float64 else np.float32
    return view, stat


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


def _local_moments(x, view, stat, eps, axis, scratch, backend):
    """This rank's per-channel mean (a float64 sum) and M2 (from the fused kernel's variance,
    which it computes from shifted float64 sums, exact for any offset of the data)."""
    count = view.shape[0] * view.shape[2]
    channels = view.shape[1]
    if count == 0:
        return np.zeros(channels), np.zeros(channels)
    mean = view.sum(axis=(0, 2), dtype=np.float64) / count
    if count == 1:
        return mean, np.zeros(channels)
    # momentum=1 leaves the batch's unbiased variance in the running variance; y goes to scratch.
    running_mean, running_var = np.zeros(channels, stat), np.zeros(channels, stat)
    batch_norm_forward(x, None, None, running_mean, running_var, training=True, momentum=1.0, eps=eps,
                       axis=axis, out=scratch, backend=backend)
    return mean, running_var.astype(np.float64) * (count - 1)


def sync_batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, comm,
                            training=True, momentum=0.1, eps=1e-5, axis=1, out=None, backend=None):
    """Batch norm over the union of every rank's batch; returns ``(y, save_mean, save_invstd)``.

    Arguments as :func:`fastopt.batch_norm_forward`, plus ``comm``. ``x`` may have zero samples on
    some ranks. Running statistics are updated as one process over the concatenated batch would
    (unbiased variance with the global count). Every rank of ``comm`` must call it together.
    """
    if not training:
        return batch_norm_forward(x, weight, bias, running_mean, running_var, training=False, momentum=momentum,
                                  eps=eps, axis=axis, out=out, backend=backend)
    comm = check_comm(comm)

    def check():
        view, stat = _layout(x, axis)
        for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
            if a is not None and (getattr(a, "shape", None) != (view.shape[1],) or a.dtype != stat):
                raise TypeError(f"{name} must be a ({view.shape[1]},) array of {np.dtype(stat)} for {x.dtype} data")
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must be given together")
        return view, stat, _checks.positive("eps", eps), _checks.unit_interval("momentum", momentum, closed=True)
    view, stat, eps_, momentum_ = _checked(comm, check)
    count = view.shape[0] * view.shape[2]
    y = np.empty_like(x) if out is None else out
    mean, m2 = _local_moments(x, view, stat, eps_, axis, y, backend)
    counts, rows = _gather(comm, [view.shape[1], count, 0], np.stack([mean, m2]))
    total, mean, m2 = merge_moments(counts.tolist(), rows[:, 0], rows[:, 1])
    if total < 2:
        raise ValueError(f"training needs more than one value per channel over all ranks (got {total}): "
                         "the batch variance is undefined")
    var = m2 / total
    save_mean, save_var = mean.astype(stat), var.astype(stat)
    if count:  # the fused kernel, normalizing with the given (global) statistics
        y, save_mean, save_invstd = batch_norm_forward(x, weight, bias, save_mean, save_var, training=False,
                                                       eps=eps_, axis=axis, out=y, backend=backend)
    else:  # nothing to normalize here; the statistics as the kernel would give them
        save_invstd = (1.0 / np.sqrt(save_var.astype(np.float64) + eps_)).astype(stat)
    if running_mean is not None:
        running_mean[...] = ((1.0 - momentum_) * running_mean.astype(np.float64) + momentum_ * mean).astype(stat)
        unbiased = var * (total / (total - 1))
        running_var[...] = ((1.0 - momentum_) * running_var.astype(np.float64) + momentum_ * unbiased).astype(stat)
    return y, save_mean, save_invstd


def sync_batch_norm_backward(dy, x, weight, save_mean, save_invstd, *, comm, axis=1, training=True, out=None,
                             backend=None):
    """Backward of :func:`sync_batch_norm_forward`; returns ``(dx, dweight, dbias)``.

    ``dx`` uses the sums over every rank; ``dweight`` and ``dbias`` are this rank's own sums (its
    contribution: the sharded optimizer, or any gradient sum over ranks, adds them up).
    """
    if not training:
        return batch_norm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, training=False, out=out,
                                   backend=backend)
    comm = check_comm(comm)

    def check():
        view, stat = _layout(x, axis)
        if getattr(dy, "shape", None) != x.shape or dy.dtype != x.dtype:
            raise ValueError(f"dy must have x's shape {x.shape} and dtype {x.dtype}")
        if save_mean is None or save_invstd is None:
            raise TypeError("save_mean and save_invstd are required (as returned by sync_batch_norm_forward)")
        return view, stat
    view, stat = _checked(comm, check)
    count, channels = view.shape[0] * view.shape[2], view.shape[1]
    dx_out = np.empty_like(x) if out is None else out
    sum_dy, sum_dy_xhat = np.zeros(channels), np.zeros(channels)
    if count:
        # The kernel's evaluation backward: dx = weight invstd dy, and this rank's sum(dy * xhat)
        # and sum(dy) (float64 sums about the given mean), in one pass.
        w = np.ones(channels, stat) if weight is None else weight
        _, local_dw, local_db = batch_norm_backward(dy, x, w, save_mean, save_invstd, axis=axis, training=False,
                                                    out=dx_out, backend=backend)
        sum_dy, sum_dy_xhat = local_db.astype(np.float64), local_dw.astype(np.float64)
    counts, rows = _gather(comm, [channels, count, 0], np.stack([sum_dy, sum_dy_xhat]))
    total = float(counts.sum())
    global_dy, global_dy_xhat = rows[0, 0].copy(), rows[0, 1].copy()
    for k in range(1, comm.size):  # rank order
        global_dy += rows[k, 0]
        global_dy_xhat += rows[k, 1]
    if count:
        # dx = w invstd dy - [w invstd^2 sum_dy_xhat / M (x - mean) + w invstd sum_dy / M]. The
        # bracket is a per-channel affine map of x, which the evaluation forward kernel computes
        # (x - mean) first, with variance 1 - eps so that it scales by the given weight.
        invstd = np.asarray(save_invstd, np.float64)
        w64 = np.asarray(w, np.float64)
        x_coef = (w64 * invstd * invstd * global_dy_xhat / total).astype(stat)
        offset = (w64 * invstd * global_dy / total).astype(stat)
        unit = np.full(channels, 1.0 - _UNIT_EPS, stat)
        correction, _, _ = batch_norm_forward(x, x_coef, offset, np.asarray(save_mean, stat), unit, training=False,
                                              eps=_UNIT_EPS, axis=axis, backend=backend)
        dx_out -= correction
    if weight is None:
        return dx_out, None, None
    return dx_out, sum_dy_xhat.astype(stat), sum_dy.astype(stat)


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
