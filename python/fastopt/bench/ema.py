"""The "Adam with fused EMA" row: fastopt's Adam with ema_decay (the EMA of the weights updated
inside the step), timed interleaved with torch's fused Adam followed by torch._foreach_lerp_ of
an EMA buffer toward the parameter (what a torch user runs: AveragedModel's EMA update), and with
the streaming loop of the fused byte pattern (grad read; param, m, v and the EMA read and
written: 36 bytes per element in float32)."""
import numpy as np

from . import workloads
from .bandwidth import Stream
from .timing import measure

DECAY = 0.999
CHECK_ELEMENTS = 4096


class FastoptAdamEma:
    def __init__(self, spec, data):
        import fastopt

        self.label = "fastopt[cpu] Adam+EMA"
        self.param, self.grad = data.p0.copy(), data.g
        self.opt = fastopt.Adam(self.param, backend="cpu", ema_decay=DECAY, **spec.kwargs)

    def step(self):
        self.opt.step(self.grad)


class TorchAdamLerp:
    def __init__(self, spec, data):
        import torch

        self.torch = torch
        self.param = torch.from_numpy(data.p0.copy())
        self.param.grad = torch.from_numpy(data.g.copy())
        self.ema = self.param.detach().clone()
        self.opt = torch.optim.Adam([self.param], fused=True, **spec.kwargs)

    def step(self):
        self.opt.step()
        with self.torch.no_grad():
            self.torch._foreach_lerp_([self.ema], [self.param], 1.0 - DECAY)


def _check(fast):
    """One step of a prefix: the fused EMA equals the separate lerp pass bit for bit."""
    import fastopt

    before = fast.param[:CHECK_ELEMENTS].copy()
    p = before.copy()
    opt = fastopt.Adam(p, backend="cpu", ema_decay=DECAY, **{k: v for k, v in fast.opt.defaults.items()
                                                             if k in ("lr", "betas", "eps")})
    opt.step(fast.grad[:CHECK_ELEMENTS].copy())
    expected = before + np.float32(1.0 - DECAY) * (p - before)
    if not np.array_equal(opt.ema.view(np.uint32), expected.view(np.uint32)):
        raise AssertionError("the fused EMA differs from a separate lerp pass")
    return {"ema_equals_lerp_pass": True, "elements": CHECK_ELEMENTS}


def task(runner, n, threads):
    cfg = runner.config
    runner.set_threads(threads)
    data = runner._data([(n,)])
    spec = workloads.OPTIMIZER_BY_NAME["Adam"]
    base = {"kind": "ema", "workload": "Adam with fused EMA", "optimizer": "Adam", "hyper_parameters":
            dict(spec.kwargs, ema_decay=DECAY), "size": data.n, "tensors": 1, "dtype": data.dtype.name,
            "threads": threads}
    if "cpu" not in cfg.backends or data.dtype != np.float32:
        runner.add(**base, impl="fastopt[cpu] Adam+EMA", skipped="needs the cpu backend and float32")
        return
    fast = FastoptAdamEma(spec, data)
    check = _check(fast)
    fns = [fast.step, Stream("cpu", "float32", data.n, [(1, 4, 0)], threads)]
    try:
        reference = TorchAdamLerp(spec, data)
        fns.append(reference.step)
    except ImportError:
        reference = None
    timed = measure(fns, repeats=cfg.repeats, target_sample_s=cfg.target_sample_s, max_time_s=cfg.max_time_s)
    bpe = fns[1].bytes_per_element
    seconds, samples = timed[0]
    record = dict(base, impl=fast.label, backend="cpu", seconds=seconds, samples=samples,
                  elements_per_s=data.n / seconds, bytes_per_element=bpe, gb_per_s=data.n * bpe / seconds / 1e9,
                  limit_gb_per_s=data.n * bpe / timed[1][0] / 1e9, limit_seconds=timed[1][0], check=check)
    record["fraction_of_limit"] = record["gb_per_s"] / record["limit_gb_per_s"]
    if reference is not None:
        record["torch_seconds"] = timed[2][0]
        record["speed_vs_torch_fused_plus_lerp"] = timed[2][0] / seconds
    runner.add(**record)
    if reference is not None:
        runner.add(**base, impl="torch-fused Adam + _foreach_lerp_", backend="cpu", seconds=timed[2][0],
                   samples=timed[2][1], elements_per_s=data.n / timed[2][0], interleaved_with_fastopt=True)
    fns[1].close()
