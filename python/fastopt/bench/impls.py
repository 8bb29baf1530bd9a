"""The implementations timed side by side, and the correctness check each must pass first.

Every optimizer implementation works on the same data (`StepData`: initial parameters and a
gradient, split into tensors) and exposes `step()` and `arrays()`, the parameters and each
state array as a list of flat pieces, one per tensor, so all of them compare to one reference.
"""
import inspect
import math

import numpy as np

from . import references


class CheckFailed(AssertionError):
    """An implementation's result disagrees with the float64 NumPy reference: nothing is timed."""


class Skipped(Exception):
    """An implementation that cannot run here (torch absent, no fused kernel ...); says why."""


def _backend_gaps():
    from .._backend import BackendUnavailableError

    return (BackendUnavailableError, NotImplementedError, AttributeError)


# What a backend that lacks a kernel family raises on its first call: the workload is listed as
# not measured on that backend, with the reason, and the run goes on.
BACKEND_GAPS = _backend_gaps()


def gap_reason(backend, exc):
    return f"backend '{backend}' cannot run this workload: {type(exc).__name__}: {exc}"


# |result - reference| <= rtol * |reference| + atol_fraction * max|reference of the chunk|.
# float32: a step is ~10 roundings of 2^-24, two steps stay under 1e-5 relative; the absolute
# part covers values that cancel to near zero (p - update, sq - gavg^2).
# float64: the same argument with 2^-53.
TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}
# NumPy and torch accumulate the clipping norm in float32 (fastopt in float64): torch's norm of
# 1e7 float32 values was measured 3e-4 relative off, and the clip factor with it (squared in
# exp_avg_sq). 5e-3 allows for 1e8 values and still catches any other difference of settings.
REFERENCE_CLIP_TOLERANCES = {"float32": (5e-3, 1e-5), "float64": (1e-12, 1e-13)}
# BatchNorm reduces over up to 2e5 elements per channel in float32; blocked sums stay within
# ~log2(M) * 2^-24 of exact, so 1e-4 relative leaves a wide margin and still catches any wrong term.
BATCHNORM_TOLERANCES = {"float32": (1e-4, 1e-4), "float64": (1e-10, 1e-10)}
CHECK_STEPS = 2
CHECK_CHUNK = 1 << 20
GPU_CHECK_ELEMENTS = 4 * CHECK_CHUNK  # per tensor, on the GPU


class StepData:
    """Initial parameters and one gradient (float32 N(0, 1) and N(0, 0.1)), per tensor shape."""

    def __init__(self, shapes, dtype="float32", seed=0):
        self.shapes = [tuple(s) for s in shapes]
        self.dtype = np.dtype(dtype)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        rng = np.random.default_rng(seed)
        self.p0 = rng.standard_normal(self.n, dtype=np.float32).astype(self.dtype, copy=False)
        self.g = (rng.standard_normal(self.n, dtype=np.float32) * np.float32(0.1)).astype(self.dtype, copy=False)

    def pieces(self, flat):
        return [flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def grad_norm(self):
        return math.sqrt(sum(float(np.dot(c, c)) for c in _chunks(self.g.astype(np.float64, copy=False))))


def _chunks(x, size=CHECK_CHUNK):
    return [x[i:i + size] for i in range(0, x.size, size)]


def _flat_pieces(flat, offsets, sizes):
    return [flat[o:o + s] for o, s in zip(offsets, sizes)]


# ---- fastopt -------------------------------------------------------------------------------------

class FastoptOptimizer:
    """fastopt's class API: one array for one tensor, one FlatParams buffer for a model."""

    def __init__(self, spec, data, backend, max_grad_norm=None):
        import fastopt

        self.label = f"fastopt[{backend}]"
        self.backend = backend
        if backend == "cuda":
            import cupy

            xp, self.to_host = cupy, cupy.asnumpy
            self.sync = cupy.cuda.runtime.deviceSynchronize
        else:
            xp, self.to_host, self.sync = np, (lambda a: a), None
        if len(data.shapes) == 1:
            self.param = xp.array(data.p0)
            self.grad = xp.asarray(data.g)  # read only: shared with the other implementations on the CPU
            self.offsets, self.sizes = [0], [data.n]
        else:
            flat = fastopt.FlatParams(data.shapes, data.dtype, xp=xp)
            for view, gview, p0, g in zip(flat.views, flat.grad_views, data.pieces(data.p0), data.pieces(data.g)):
                view.reshape(-1)[...] = xp.asarray(p0)
                gview.reshape(-1)[...] = xp.asarray(g)
            self.param, self.grad = flat.data, flat.grad
            self.offsets, self.sizes = flat.offsets, data.sizes
        self.n_kernel = int(self.param.size)  # a FlatParams buffer includes the alignment padding
        self.max_grad_norm = max_grad_norm
        self.opt = getattr(fastopt, spec.name)(self.param, backend=backend, **spec.kwargs)

    def step(self):
        self.opt.step(self.grad, max_grad_norm=self.max_grad_norm)

    def state_arrays(self):
        """{name: array} of the per-element state the optimizer keeps (after its first step)."""
        return {k: v for k, v in self.opt.state.items()
                if hasattr(v, "shape") and v.size == self.param.size and k != "master_weights"}

    def passes(self):
        """The step's memory passes, derived from the state it keeps: grad read; param and each
        state array read and written (half params: the float32 master read and written, the
        half copy written); one more read of grad for the norm when clipping."""
        states = self.state_arrays()
        has_master = "master_weights" in self.opt.state
        passes = [(1, 1 + len(states), 1 if has_master else 0)]
        if self.max_grad_norm is not None:
            passes.insert(0, (1, 0, 0))
        return passes

    def bytes_per_element(self):
        """Bytes moved per element, from the dtypes of the arrays actually stepped."""
        g = self.grad.dtype.itemsize
        total = g + sum(2 * a.dtype.itemsize for a in self.state_arrays().values())
        master = self.opt.state.get("master_weights")
        total += (2 * master.dtype.itemsize + self.param.dtype.itemsize) if master is not None \
            else 2 * self.param.dtype.itemsize
        if self.max_grad_norm is not None:
            total += g
        return total

    def arrays(self):
        out = {"param": _flat_pieces(self.to_host(self.param), self.offsets, self.sizes)}
        for name, a in self.state_arrays().items():
            out[name] = _flat_pieces(self.to_host(a), self.offsets, self.sizes)
        return out

    def close(self):
        self.opt = self.param = self.grad = None


# ---- NumPy ---------------------------------------------------------------------------------------

class NumpyOptimizer:
    """NumPy in-place ufuncs, one optimizer per tensor (how NumPy training code is written)."""

    label = "numpy"
    sync = None

    def __init__(self, spec, data, max_grad_norm=None):
        cls = references.NUMPY_OPTIMIZERS[spec.name]
        self.opts = [cls(p.copy(), **spec.kwargs) for p in data.pieces(data.p0)]
        # Clipping scales the gradient in place, as torch.nn.utils.clip_grad_norm_ does: own copy.
        self.grads = [g.copy() if max_grad_norm else g for g in data.pieces(data.g)]
        self.max_grad_norm = max_grad_norm

    def step(self):
        if self.max_grad_norm is not None:
            norm = math.sqrt(sum(float(np.dot(g, g)) for g in self.grads))
            factor = references.clip_factor(norm, self.max_grad_norm)
            if factor != 1.0:
                for g in self.grads:
                    g *= factor
        for opt, g in zip(self.opts, self.grads):
            opt.step(g)

    def arrays(self):
        out = {"param": [o.param for o in self.opts]}
        for name in self.opts[0].state_names:
            out[name] = [o.state[name] for o in self.opts]
        return out

    def close(self):
        self.opts = self.grads = None


# ---- torch ---------------------------------------------------------------------------------------

class TorchOptimizer:
    """torch.optim over the list of tensors, with its fused or foreach implementation."""

    sync = None

    def __init__(self, spec, data, mode, max_grad_norm=None, device="cpu"):
        torch = _torch_on(device)
        cls = getattr(torch.optim, spec.name, None)
        self.reference = None if cls is None else f"torch.optim.{spec.name}"
        if cls is None:
            found = references.torch_reference_class(spec.name)
            if found is None:
                raise Skipped(f"torch.optim has no {spec.name}" + (
                    f" ({references.TORCH_REFERENCES[spec.name]} is not installed)"
                    if spec.name in references.TORCH_REFERENCES else ""))
            cls, self.reference = found
        self.label = f"torch-{mode}"
        self.torch = torch
        self.params = []
        # schedulefree's AdamW divides p.grad in place: such a reference gets its own gradient,
        # restored before each step (one more read and write of g than the step itself).
        self.grad_source = None if self.reference.startswith("torch.optim.") else []
        for shape, p0, g in zip(data.shapes, data.pieces(data.p0), data.pieces(data.g)):
            p = torch.nn.Parameter(torch.from_numpy(p0.copy()).reshape(shape).to(device))
            p.grad = torch.from_numpy(g.copy() if max_grad_norm or self.grad_source is not None else g) \
                .reshape(shape).to(device)
            if self.grad_source is not None:
                self.grad_source.append(torch.from_numpy(g).reshape(shape).to(device))
            self.params.append(p)
        self.max_grad_norm = max_grad_norm
        try:
            self.opt = cls(self.params, **spec.kwargs, **{mode: True})
            if hasattr(self.opt, "train"):
                self.opt.train()
            self.opt.step()  # a fused kernel missing on this device only shows on the first step
        except (RuntimeError, TypeError, ValueError) as exc:
            raise Skipped(f"torch.optim.{spec.name}({mode}=True): {str(exc).splitlines()[0]}") from None
        self.opt = cls(self.params, **spec.kwargs, **{mode: True})
        if hasattr(self.opt, "train"):  # schedulefree's optimizers step in train mode only
            self.opt.train()
        for p, p0 in zip(self.params, data.pieces(data.p0)):  # undo the probing step
            with torch.no_grad():
                p.copy_(torch.from_numpy(p0).reshape(p.shape).to(device))
        self.foreach = mode == "foreach"
        self.sync = torch.cuda.synchronize if device == "cuda" else None

    def step(self):
        if self.grad_source is not None:
            self.torch._foreach_copy_([p.grad for p in self.params], self.grad_source)
        if self.max_grad_norm is not None:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.opt.step()

    def arrays(self):
        out = {"param": [p.detach().cpu().numpy().reshape(-1) for p in self.params]}
        for name in self.opt.state[self.params[0]]:
            value = self.opt.state[self.params[0]][name]
            if value.numel() == self.params[0].numel():
                out[name] = [self.opt.state[p][name].cpu().numpy().reshape(-1) for p in self.params]
        return out

    def close(self):
        self.opt = self.params = None


def _torch_on(device):
    """torch, when it is installed and can run on `device` ("cpu" or "cuda")."""
    try:
        import torch
    except ImportError:
        raise Skipped("torch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Skipped(f"torch {torch.__version__} has no CUDA device")
    return torch


# ---- the check -----------------------------------------------------------------------------------

def _compare(label, what, got, ref, tolerances, where):
    rtol, atol_fraction = tolerances
    got64 = np.asarray(got, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    allowed = rtol * np.abs(ref) + atol_fraction * scale
    err = np.abs(got64 - ref)
    bad = ~(err <= allowed)  # NaN counts as bad
    if bad.any():
        i = int(np.argmax(bad))
        raise CheckFailed(f"{label}: {what}[{where + i}] = {got64[i]!r}, float64 reference {ref[i]!r} "
                          f"(tolerance {allowed[i]:.3g}); {int(bad.sum())} of {ref.size} elements wrong")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, err / allowed, 0.0)
    return float(ratio.max()) if ratio.size else 0.0


def check_optimizer(impl, spec, data, *, max_grad_norm=None, limit=None, steps=CHECK_STEPS, tolerances=None):
    """Runs `steps` steps of impl (fresh from data) and compares parameters and every state array
    with the float64 NumPy reference, chunk by chunk (bounded memory). `limit` checks only the
    first `limit` elements of each tensor (for the reference implementations, whose kernels do
    not depend on the size: the check there is that they run the same hyper-parameters).
    Raises CheckFailed; returns what was checked."""
    for _ in range(steps):
        impl.step()
    if impl.sync:
        impl.sync()
    got = impl.arrays()
    ref_cls = references.NUMPY_OPTIMIZERS[spec.name]
    factor = references.clip_factor(data.grad_norm(), max_grad_norm) if max_grad_norm else 1.0
    tolerances = tolerances or TOLERANCES[data.dtype.name]
    worst, checked = 0.0, 0
    names = None
    for t, (p0_piece, g_piece) in enumerate(zip(data.pieces(data.p0), data.pieces(data.g))):
        end = p0_piece.size if limit is None else min(limit, p0_piece.size)
        for start in range(0, end, CHECK_CHUNK):
            stop = min(end, start + CHECK_CHUNK)
            ref = ref_cls(p0_piece[start:stop].astype(np.float64), **spec.kwargs)
            g = g_piece[start:stop].astype(np.float64) * factor
            for _ in range(steps):
                ref.step(g)
            names = ("param",) + tuple(ref.state_names)
            for name in names:
                if name not in got:
                    raise CheckFailed(f"{impl.label}: {spec.name} keeps no state '{name}' "
                                      f"(it keeps {sorted(got)})")
                expected = ref.param if name == "param" else ref.state[name]
                worst = max(worst, _compare(impl.label, f"{spec.name} {name} of tensor {t}",
                                            got[name][t][start:stop], expected, tolerances, start))
            checked += stop - start
    return {"passed": True, "steps": steps, "elements": checked, "arrays": list(names or ()),
            "worst_error_over_tolerance": worst}


# ---- BatchNorm -----------------------------------------------------------------------------------

class BatchNormData:
    def __init__(self, shape, axis, dtype="float32", seed=0):
        rng = np.random.default_rng(seed)
        self.shape, self.axis, self.dtype = tuple(shape), axis, np.dtype(dtype)
        channels = shape[axis]
        self.x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5).astype(dtype, copy=False)
        self.dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        self.weight = (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
        self.bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)


class FastoptBatchNorm:
    def __init__(self, data, backend):
        import fastopt

        if not hasattr(fastopt, "batch_norm_forward"):
            raise Skipped("fastopt.batch_norm_forward does not exist in this build")
        self.label = f"fastopt[{backend}]"
        self.fo, self.backend = fastopt, backend
        self.sync = None
        xp = np
        if backend == "cuda":  # the data on the device, once
            import cupy

            xp, self.sync = cupy, cupy.cuda.runtime.deviceSynchronize
            on_device = BatchNormData.__new__(BatchNormData)
            on_device.__dict__.update({k: cupy.asarray(v) if isinstance(v, np.ndarray) else v
                                       for k, v in data.__dict__.items()})
            data = on_device
        self.d = data
        self.running_mean = xp.zeros(data.weight.size, np.float32)
        self.running_var = xp.ones(data.weight.size, np.float32)
        # Outputs allocated once where the API takes them (as the NumPy baseline does): a training
        # loop then allocates nothing per step.
        self.forward_buffers, self.backward_buffers = {}, {}
        forward_params = inspect.signature(fastopt.batch_norm_forward).parameters
        backward_params = inspect.signature(fastopt.batch_norm_backward).parameters
        channels = data.weight.size
        if "out" in forward_params:
            self.forward_buffers["out"] = xp.empty_like(data.x)
        if "save" in forward_params:
            self.forward_buffers["save"] = (xp.empty(channels, np.float32), xp.empty(channels, np.float32))
        if "out" in backward_params:
            self.backward_buffers["out"] = xp.empty_like(data.x)
        if "param_grads" in backward_params:
            self.backward_buffers["param_grads"] = (xp.empty(channels, np.float32), xp.empty(channels, np.float32))

    def forward(self):
        d = self.d
        self.out = self.fo.batch_norm_forward(d.x, d.weight, d.bias, self.running_mean, self.running_var,
                                              training=True, momentum=0.1, eps=1e-5, axis=d.axis,
                                              backend=self.backend, **self.forward_buffers)
        return self.out

    def backward(self):
        d = self.d
        _, mean, invstd = self.out
        return self.fo.batch_norm_backward(d.dy, d.x, d.weight, mean, invstd, axis=d.axis, training=True,
                                           backend=self.backend, **self.backward_buffers)


class NumpyBatchNormImpl:
    label = "numpy"
    sync = None

    def __init__(self, data):
        self.d = data
        self.bn = references.NumpyBatchNorm(data.x, data.axis)
        self.running_mean = np.zeros(data.weight.size, np.float32)
        self.running_var = np.ones(data.weight.size, np.float32)

    def forward(self):
        d = self.d
        self.out = self.bn.forward(d.x, d.weight, d.bias, self.running_mean, self.running_var)
        return self.out

    def backward(self):
        _, mean, invstd = self.out
        return self.bn.backward(self.d.dy, self.d.x, self.d.weight, mean, invstd)


class TorchBatchNorm:
    """torch.nn.functional.batch_norm forward, and the backward kernel autograd calls."""

    label = "torch"
    sync = None

    def __init__(self, data, device="cpu"):
        torch = _torch_on(device)
        self.torch, self.d = torch, data
        self.sync = torch.cuda.synchronize if device == "cuda" else None  # cuDNN's kernels there

        def nchw(a):  # channels-last data as torch's channels_last NCHW tensor (no copy)
            t = torch.from_numpy(a).to(device)
            return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if data.axis == -1 else t

        self.x, self.dy = nchw(data.x), nchw(data.dy)
        self.weight, self.bias = torch.from_numpy(data.weight).to(device), torch.from_numpy(data.bias).to(device)
        self.running_mean = torch.zeros(data.weight.size, device=device)
        self.running_var = torch.ones(data.weight.size, device=device)

    def _host(self, t):
        if self.d.axis == -1 and t.dim() > 2:
            t = t.permute(0, *range(2, t.dim()), 1)
        return t.contiguous().cpu().numpy()

    def forward(self):
        with self.torch.no_grad():
            y, mean, invstd = self.torch.ops.aten.native_batch_norm(
                self.x, self.weight, self.bias, self.running_mean, self.running_var, True, 0.1, 1e-5)
        self.out = (y, mean, invstd)
        return self._host(y), mean.cpu().numpy(), invstd.cpu().numpy()

    def forward_only(self):
        with self.torch.no_grad():
            return self.torch.nn.functional.batch_norm(self.x, self.running_mean, self.running_var,
                                                       self.weight, self.bias, True, 0.1, 1e-5)

    def backward(self):
        _, mean, invstd = self.out
        dx, dw, db = self.torch.ops.aten.native_batch_norm_backward(
            self.dy, self.x, self.weight, self.running_mean, self.running_var, mean, invstd, True, 1e-5,
            [True, True, True])
        return self._host(dx), dw.cpu().numpy(), db.cpu().numpy()


def check_batchnorm(impl, data):
    """One forward and one backward against the float64 reference: y, the saved statistics, the
    running statistics, dx, dweight, dbias."""
    ref = references.NumpyBatchNorm(data.x.astype(np.float64), data.axis)
    rm, rv = np.zeros(data.weight.size), np.ones(data.weight.size)
    y, mean, invstd = ref.forward(data.x.astype(np.float64), data.weight.astype(np.float64),
                                  data.bias.astype(np.float64), rm, rv)
    dx, dw, db = ref.backward(data.dy.astype(np.float64), data.x.astype(np.float64),
                              data.weight.astype(np.float64), mean, invstd)
    tol = BATCHNORM_TOLERANCES[data.dtype.name]
    got_y, got_mean, got_invstd = impl.forward()
    got_dx, got_dw, got_db = impl.backward()
    if impl.sync:
        impl.sync()
    worst = 0.0
    for what, got, expected in (("y", got_y, y), ("save_mean", got_mean, mean),
                                ("save_invstd", got_invstd, invstd), ("running_mean", impl.running_mean, rm),
                                ("running_var", impl.running_var, rv), ("dx", got_dx, dx),
                                ("dweight", got_dw, dw), ("dbias", got_db, db)):
        if hasattr(got, "get"):  # a CuPy array
            got = got.get()
        elif hasattr(got, "numpy"):  # a torch tensor
            got = got.cpu().numpy()
        got = np.asarray(got).reshape(-1)
        worst = max(worst, _compare(impl.label, f"BatchNorm {what}", got, expected.reshape(-1), tol, 0))
    return {"passed": True, "elements": int(data.x.size), "worst_error_over_tolerance": worst}
