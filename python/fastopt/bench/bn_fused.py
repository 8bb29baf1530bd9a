"""Benchmark rows of BatchNorm fused with ReLU (BN+ReLU) and with the residual add and ReLU
(BN+add+ReLU): one training step, forward and backward, float32, CPU.

Ways to compute relu(bn(x) [+ z]) and its gradients, each checked against the others first:
- fastopt[cpu] fused: ``activation="relu"``, ``residual=z``; the backward reads the mask from y;
- fastopt[cpu] fused, byte mask: the same, the forward also writing the ReLU's mask (a byte per
  value, ``mask_out``), which the backward reads instead of y;
- fastopt[cpu] unfused: fastopt's BatchNorm, then NumPy passes for the add, the ReLU, the mask
  and dy * mask, into buffers allocated once (the best a NumPy user can do with it);
- torch: ``relu(batch_norm(x) + z)`` with autograd (allocating, as torch code runs).
The limit is the streaming time of the fused step's minimal passes (fused_passes), for each
fused row of its own byte pattern.
"""
import inspect
import math

import numpy as np

from .bandwidth import Stream, pattern_bytes
from .timing import measure

VARIANTS = (("BN+ReLU", False), ("BN+add+ReLU", True))


def fused_passes(shape, axis, residual, threads, mask=False):
    """The passes of a fused step with the fewest reads the CPU kernels manage, as (passes over
    float32 arrays, passes over byte arrays): the forward reads x (once where a channel group
    stays cached, else twice) and z once, writes y (and the mask); the backward reads dy, x and
    the mask, or y (once or twice, likewise), writes dx and dresidual."""
    try:
        from .. import _cpu
    except ImportError:
        _cpu = None
    if axis == 1:
        outer, channels, inner = shape[0], shape[1], math.prod(shape[2:])
    else:
        outer, channels, inner = math.prod(shape[:-1]), shape[-1], 1
    fwd_reads = bwd_reads = 2
    if _cpu is not None:
        fwd_reads = _cpu.batch_norm_input_reads(outer, channels, inner, 4, False, threads)
        # Three float32 inputs in the backward: 12 bytes a value, asked as two of 6 bytes.
        bwd_reads = _cpu.batch_norm_input_reads(outer, channels, inner, 6, True, threads)
    res = 1 if residual else 0
    forward = [(1, 0, 0)] * (fwd_reads - 1) + [(1 + res, 0, 1)]
    if mask:
        backward = [(2, 0, 0)] * (bwd_reads - 1) + [(2, 0, 1 + res)]
        return forward + backward, [(0, 0, 1)] + [(1, 0, 0)] * bwd_reads
    # The stream reads at most two arrays a pass: three reads go as a pass of two and one of one,
    # the same bytes.
    backward = [(2, 0, 0), (1, 0, 0)] * (bwd_reads - 1) + [(2, 0, 1 + res), (1, 0, 0)]
    return forward + backward, []


def fused_bytes(passes, mask_passes):
    """Bytes per value of fused_passes' pattern."""
    return pattern_bytes(passes, 4) + pattern_bytes(mask_passes, 1)


class _Data:
    def __init__(self, shape, axis, seed=0):
        rng = np.random.default_rng(seed)
        c = shape[axis]
        self.shape, self.axis = tuple(shape), axis
        self.x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5)
        self.z = rng.standard_normal(shape, dtype=np.float32)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        self.weight = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        self.bias = (0.1 * rng.standard_normal(c)).astype(np.float32)


class FusedImpl:
    def __init__(self, fo, d, residual, with_mask=False):
        self.fo, self.d, self.residual = fo, d, residual
        self.label = "fastopt[cpu] fused" + (", byte mask" if with_mask else "")
        self.mask = np.empty(d.x.shape, np.uint8) if with_mask else None
        c = d.weight.size
        self.rm, self.rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        self.y, self.dx = np.empty_like(d.x), np.empty_like(d.x)
        self.dres = np.empty_like(d.x) if residual else None
        self.stats = (np.empty(c, np.float32), np.empty(c, np.float32))
        self.grads = (np.empty(c, np.float32), np.empty(c, np.float32))

    def step(self):
        d = self.d
        y, mean, invstd = self.fo.batch_norm_forward(
            d.x, d.weight, d.bias, self.rm, self.rv, axis=d.axis, out=self.y, stats_out=self.stats,
            activation="relu", residual=d.z if self.residual else None, mask_out=self.mask, backend="cpu")
        dx, dw, db, *dres = self.fo.batch_norm_backward(
            d.dy, d.x, d.weight, mean, invstd, axis=d.axis, out=self.dx, grads_out=self.grads, activation="relu",
            y=None if self.mask is not None else y, mask=self.mask, residual=self.residual, residual_out=self.dres,
            backend="cpu")
        return y, dx, dw, db, (dres[0] if dres else None)


class UnfusedImpl:
    label = "fastopt[cpu] + numpy"

    def __init__(self, fo, d, residual):
        self.fo, self.d, self.residual = fo, d, residual
        c = d.weight.size
        self.rm, self.rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        self.bn, self.y, self.dx, self.dz = (np.empty_like(d.x) for _ in range(4))
        self.mask = np.empty(d.x.shape, bool)
        self.stats = (np.empty(c, np.float32), np.empty(c, np.float32))
        self.grads = (np.empty(c, np.float32), np.empty(c, np.float32))

    def step(self):
        d = self.d
        bn, mean, invstd = self.fo.batch_norm_forward(d.x, d.weight, d.bias, self.rm, self.rv, axis=d.axis,
                                                      out=self.bn, stats_out=self.stats, backend="cpu")
        if self.residual:
            np.add(bn, d.z, out=bn)
        np.maximum(bn, 0, out=self.y)
        np.greater(self.y, 0, out=self.mask)
        np.multiply(d.dy, self.mask, out=self.dz)
        dx, dw, db = self.fo.batch_norm_backward(self.dz, d.x, d.weight, mean, invstd, axis=d.axis, out=self.dx,
                                                 grads_out=self.grads, backend="cpu")
        return self.y, dx, dw, db, (self.dz if self.residual else None)


class TorchImpl:
    label = "torch"

    def __init__(self, d, residual):
        import torch

        self.torch, self.d, self.residual = torch, d, residual

        def nchw(a, grad=False):  # channels-last data as torch's channels_last tensor (no copy)
            t = torch.from_numpy(a)
            t = t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if d.axis == -1 else t
            return t.requires_grad_(grad)

        self.x, self.z, self.dy = nchw(d.x, True), nchw(d.z, True), nchw(d.dy)
        self.w = torch.from_numpy(d.weight.copy()).requires_grad_(True)
        self.b = torch.from_numpy(d.bias.copy()).requires_grad_(True)
        self.rm, self.rv = torch.zeros(d.weight.size), torch.ones(d.weight.size)

    def _host(self, t):
        if self.d.axis == -1 and t.dim() > 2:
            t = t.permute(0, *range(2, t.dim()), 1)
        return t.detach().contiguous().numpy()

    def step(self):
        torch = self.torch
        for t in (self.x, self.z, self.w, self.b):
            t.grad = None
        out = torch.nn.functional.batch_norm(self.x, self.rm, self.rv, self.w, self.b, True, 0.1, 1e-5)
        if self.residual:
            out = out + self.z
        out = torch.relu(out)
        out.backward(self.dy)
        return out, self.x.grad, self.w.grad, self.b.grad, self.z.grad if self.residual else None

    def host(self, results):
        y, dx, dw, db, dres = results
        return (self._host(y), self._host(dx), dw.numpy(), db.numpy(), None if dres is None else self._host(dres))


def _check(results, expected, label):
    """Near the fused result: per value within float32 rounding, but for the rare values where
    bn(x) + z is within rounding of 0 (the ReLU's mask may differ there); the channel sums
    (dweight, dbias) gather such values, so they are held to 1% only (tests/ checks them tightly)."""
    for name, got, want in zip(("y", "dx", "dweight", "dbias", "dresidual"), results, expected):
        if want is None:
            continue
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        scale = float(np.abs(want).max()) or 1.0
        sums = name in ("dweight", "dbias")
        bad = np.abs(got - want) > (1e-2 if sums else 1e-4) * scale
        if bad.mean() > (0 if sums else 1e-4):
            raise AssertionError(f"{label} {name} differs from fastopt's fused result at {bad.sum()} values")


def task(run, bn, threads):
    """Rows for one BatchNorm shape: each variant, each implementation, and the limit."""
    import fastopt

    cfg = run.config
    run.set_threads(threads)
    base = {"kind": "batchnorm_fused", "shape": list(bn.shape), "axis": bn.axis, "dtype": "float32",
            "threads": threads, "size": math.prod(bn.shape)}
    forward = getattr(fastopt, "batch_norm_forward", None)
    if forward is None or "activation" not in inspect.signature(forward).parameters or "cpu" not in cfg.backends:
        for variant, _ in VARIANTS:
            run.add(**base, workload=f"{variant} fwd+bwd {bn.name}", impl="fastopt[cpu] fused",
                    skipped="needs batch_norm_forward(activation=...) and the cpu backend")
        return
    data = _Data(bn.shape, bn.axis)
    n = data.x.size
    for variant, residual in VARIANTS:
        workload = f"{variant} fwd+bwd {bn.name}"
        run.log(f"  {variant} forward + backward")
        fused = FusedImpl(fastopt, data, residual)
        expected = fused.step()
        impls = [fused, FusedImpl(fastopt, data, residual, with_mask=True), UnfusedImpl(fastopt, data, residual)]
        try:
            impls.append(TorchImpl(data, residual))
        except ImportError:
            run.add(**base, workload=workload, impl="torch", skipped="torch is not installed")
        for impl in impls[1:]:
            got = impl.step()
            _check(impl.host(got) if hasattr(impl, "host") else got, expected, impl.label)
        patterns = [fused_passes(bn.shape, bn.axis, residual, threads, mask) for mask in (False, True)]
        # The byte mask streamed as float32 arrays of a quarter as many values: the same bytes.
        streams = [Stream("cpu", "float32", n, patterns[0][0], threads), Stream("cpu", "float32", n, patterns[1][0], threads),
                   Stream("cpu", "float32", max(1, n // 4), patterns[1][1], threads)]
        timed = measure([i.step for i in impls] + streams, repeats=cfg.repeats, target_sample_s=cfg.target_sample_s,
                        max_time_s=cfg.max_time_s)
        limits = [timed[-3][0], timed[-2][0] + timed[-1][0]]
        fused_seconds = timed[0][0]
        for impl, (seconds, samples) in zip(impls, timed):
            mask = impl.label.endswith("byte mask")  # its own pattern; the others are held to the fused one's
            (passes, mask_passes), limit = patterns[mask], limits[mask]
            nbytes = fused_bytes(passes, mask_passes)
            record = dict(base, workload=workload, impl=impl.label, backend="cpu", seconds=seconds, samples=samples,
                          elements_per_s=n / seconds, bytes_per_element=nbytes, passes=passes,
                          mask_passes=mask_passes,
                          gb_per_s=n * nbytes / seconds / 1e9, limit_seconds=limit,
                          limit_gb_per_s=n * nbytes / limit / 1e9, fraction_of_limit=limit / seconds,
                          time_over_fused=seconds / fused_seconds)
            run.add(**record)
        for stream in streams:
            stream.close()
        del impls, fused
