"""The many-tensors row: a model's tensors as separate arrays, stepped by one optimizer over the
list (one segment-table kernel call per step), timed interleaved with the same model in one
FlatParams buffer and with torch's fused kernel over the same list of tensors."""
import numpy as np

from . import impls
from .timing import measure


class FastoptList:
    """fastopt over a list of separately allocated arrays, as torch users hold a model."""

    sync = None

    def __init__(self, spec, data, backend):
        import fastopt

        self.label = f"fastopt[{backend}] list"
        self.params = [p.reshape(s).copy() for p, s in zip(data.pieces(data.p0), data.shapes)]
        self.grads = [g.reshape(s).copy() for g, s in zip(data.pieces(data.g), data.shapes)]
        self.opt = getattr(fastopt, spec.name)(self.params, backend=backend, **spec.kwargs)

    def step(self):
        self.opt.step(self.grads)

    def arrays(self):
        out = {"param": [p.reshape(-1) for p in self.params]}
        for name, value in self.opt.state[0].items():
            if hasattr(value, "shape"):
                out[name] = [self.opt.state[i][name].reshape(-1) for i in range(len(self.params))]
        return out

    def close(self):
        self.opt = self.params = self.grads = None


def _same_bits(listed, flat):
    got, want = listed.arrays(), flat.arrays()
    for name, pieces in want.items():
        for t, (a, b) in enumerate(zip(got[name], pieces)):
            if not np.array_equal(a.view(np.uint8), np.ascontiguousarray(b).view(np.uint8)):
                raise impls.CheckFailed(f"{listed.label}: {name} of tensor {t} differs from the FlatParams step")


def list_task(runner, spec, model, threads):
    """Records fastopt's list step with its time relative to FlatParams and to torch fused."""
    cfg = runner.config
    runner.set_threads(threads)
    data = runner._data(model.shapes_fn())
    base = {"kind": "list", "workload": f"{model.name} {spec.name} list", "optimizer": spec.name,
            "hyper_parameters": spec.kwargs, "size": data.n, "tensors": len(data.shapes),
            "dtype": data.dtype.name, "threads": threads}
    if "cpu" not in cfg.backends:
        runner.add(**base, impl="fastopt[cpu] list", skipped="the cpu backend is not available")
        return
    listed, flat = FastoptList(spec, data, "cpu"), impls.FastoptOptimizer(spec, data, "cpu")
    try:
        # The reference kernels do not depend on the size: check a prefix of each tensor, then
        # that the list steps to the very bits of the FlatParams step (checked in full elsewhere).
        check = impls.check_optimizer(listed, spec, data, limit=4096)
        for _ in range(check["steps"]):
            flat.step()
        _same_bits(listed, flat)
    except impls.CheckFailed as exc:
        runner.add(**base, impl=listed.label, skipped=f"CHECK FAILED, not timed: {exc}")
        raise
    fns = [listed.step, flat.step]
    try:
        torch = impls.TorchOptimizer(spec, data, "fused")
        fns.append(torch.step)
    except impls.Skipped as exc:
        torch = None
        runner.add(**base, impl="torch-fused", skipped=str(exc))
    bpe = flat.bytes_per_element()
    timed = measure(fns, repeats=cfg.repeats, target_sample_s=cfg.target_sample_s, max_time_s=cfg.max_time_s)
    (list_s, samples), (flat_s, flat_samples) = timed[0], timed[1]
    record = dict(base, impl=listed.label, backend="cpu", seconds=list_s, samples=samples,
                  elements_per_s=data.n / list_s, gb_per_s=data.n * bpe / list_s / 1e9,
                  bytes_per_element=bpe, check=check, flat_seconds=flat_s,
                  speed_vs_flat=flat_s / list_s)
    if torch is not None:
        record["torch_fused_seconds"] = timed[2][0]
        record["speed_vs_torch_fused"] = timed[2][0] / list_s
    runner.add(**record)
    runner.add(**base, impl="fastopt[cpu] flat", backend="cpu", seconds=flat_s, samples=flat_samples,
               elements_per_s=data.n / flat_s, gb_per_s=data.n * bpe / flat_s / 1e9, interleaved_with_list=True)
    if torch is not None:
        runner.add(**base, impl="torch-fused", backend="cpu", seconds=timed[2][0], samples=timed[2][1],
                   elements_per_s=data.n / timed[2][0], interleaved_with_list=True)
        torch.close()
    listed.close()
    flat.close()
