"""Whole training steps, as users run them: forward and backward in NumPy (its BLAS threads), then
the optimizer; the same model in torch with torch.optim's fused Adam. Timed on a quiet machine,
beside one and two busy processes, and as two training processes at once (at their defaults, and
each told half the cores through the thread-count variables of BLAS, OpenMP and fastopt).

`python -m fastopt bench --only training` runs it. Each measurement is a fresh worker process
(`python -m fastopt.bench.training MODEL IMPL`) printing one JSON line, so that the conditions
(busy neighbours, a second trainer, an affinity mask) apply to the whole process, as they do to
a user's, and every implementation starts with the settings it has by default.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# (layer widths, batch, BatchNorm after the first layer, timed steps, warm-up steps)
MODELS = {
    "digits-mlp-bn": ((64, 128, 10), 64, True, 400, 40),
    "mlp-784-2048-2048-10": ((784, 2048, 2048, 10), 256, False, 12, 3),
}
# "torch+fastopt": the torch model and autograd, its parameters stepped by fastopt (torch's own
# OpenMP threads and fastopt's in one process). "no optimizer": the NumPy model's forward and
# backward alone, what the NumPy loops cost without any optimizer.
IMPLS = ("fastopt", "numpy", "torch", "torch+fastopt", "no optimizer")
PAIR_START_S = 6.0  # from spawning two trainers to their first timed step: after imports and warm-up
# What sets the thread counts of NumPy's BLAS (OpenBLAS, MKL), of torch (OpenMP) and of fastopt.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LR = 1e-3


def _shapes(widths, batchnorm):
    shapes = []
    for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        shapes += [(fan_in, fan_out), (fan_out,)]
        if batchnorm and k == 0:
            shapes += [(fan_out,), (fan_out,)]  # BatchNorm's weight and bias
    return shapes


def _batch(widths, batch, rng):
    x = rng.standard_normal((batch, widths[0])).astype(np.float32)
    return x, rng.integers(0, widths[-1], batch)


class NumpyModel:
    """Linear layers with ReLU (BatchNorm after the first, through fastopt's kernels), softmax
    cross-entropy; parameters and gradients in one fastopt.FlatParams buffer."""

    def __init__(self, widths, batchnorm, seed=0):
        import fastopt

        self.fastopt, self.batchnorm, self.layers = fastopt, batchnorm, len(widths) - 1
        self.flat = fastopt.FlatParams(_shapes(widths, batchnorm), "float32")
        rng = np.random.default_rng(seed)
        views = iter(self.flat.views)
        self.weights, self.biases = [], []
        for k, fan_in in enumerate(widths[:-1]):
            w, b = next(views), next(views)
            w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)
            self.weights.append(w)
            self.biases.append(b)
            if batchnorm and k == 0:
                self.gamma, self.beta = next(views), next(views)
                self.gamma[...] = 1.0
        grads = iter(self.flat.grad_views)
        self.dweights, self.dbiases = [], []
        for k in range(self.layers):
            self.dweights.append(next(grads))
            self.dbiases.append(next(grads))
            if batchnorm and k == 0:
                self.dgamma, self.dbeta = next(grads), next(grads)
        if batchnorm:
            self.running_mean = np.zeros(widths[1], np.float32)
            self.running_var = np.ones(widths[1], np.float32)

    def forward_backward(self, x, labels):
        fo = self.fastopt
        inputs, masks, h = [], [], x
        for k in range(self.layers):
            inputs.append(h)
            z = h @ self.weights[k] + self.biases[k]
            if k == self.layers - 1:
                break
            if self.batchnorm and k == 0:
                pre_bn = z
                z, save_mean, save_invstd = fo.batch_norm_forward(
                    pre_bn, self.gamma, self.beta, self.running_mean, self.running_var, training=True)
            masks.append(z > 0)
            h = np.maximum(z, 0.0)
        z -= z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean()
        dz = probs
        dz[np.arange(len(labels)), labels] -= 1.0
        dz /= len(labels)
        for k in range(self.layers - 1, -1, -1):
            np.matmul(inputs[k].T, dz, out=self.dweights[k])
            np.sum(dz, axis=0, out=self.dbiases[k])
            if k == 0:
                break
            dz = (dz @ self.weights[k].T) * masks[k - 1]
            if self.batchnorm and k == 1:
                dz, dgamma, dbeta = fo.batch_norm_backward(dz, pre_bn, self.gamma, save_mean, save_invstd)
                self.dgamma[...], self.dbeta[...] = dgamma, dbeta
        return float(loss)


def _numpy_trainer(widths, batchnorm, impl):
    from .references import NUMPY_OPTIMIZERS

    NumpyAdam = NUMPY_OPTIMIZERS["Adam"]

    model = NumpyModel(widths, batchnorm)
    if impl == "fastopt":
        import fastopt

        opt = fastopt.Adam(model.flat.data, lr=LR)
        return model.forward_backward, lambda: opt.step(model.flat.grad)
    if impl == "no optimizer":
        return model.forward_backward, lambda: None
    # One NumPy optimizer per tensor, as NumPy training code is written.
    opts = [NumpyAdam(p, lr=LR) for p in model.flat.views]
    grads = model.flat.grad_views

    def step():
        for o, g in zip(opts, grads):
            o.step(g)
    return model.forward_backward, step


def _torch_trainer(widths, batchnorm, optimizer="torch"):
    import torch

    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if k < len(widths) - 2:
            if batchnorm and k == 0:
                layers.append(torch.nn.BatchNorm1d(fan_out))
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    step = opt.step
    if optimizer == "fastopt":
        import fastopt

        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # kept (zero_grad below does not drop it): its view stays valid
        # NumPy views of torch's parameters and gradients, stepped in place.
        pairs = [(fastopt.Adam(p.detach().numpy(), lr=LR), p.grad.numpy()) for p in model.parameters()]

        def step():
            for o, g in pairs:
                o.step(g)

    def forward_backward(x, labels):
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        return loss.item()

    def batch(x, labels):
        return torch.from_numpy(x), torch.from_numpy(labels)
    return forward_backward, step, batch


def worker(model_name, impl, start_at=None):
    """Trains for the model's step count; returns the median step and optimizer times (ms).
    `start_at` (a time.time() value): the timed steps wait for it, after the warm-up, so that two
    trainers started together time their steps side by side, not one's steps beside the other's
    start-up."""
    widths, batch, batchnorm, steps, warmup = MODELS[model_name]
    rng = np.random.default_rng(1)
    batches = [_batch(widths, batch, rng) for _ in range(8)]
    if impl.startswith("torch"):
        forward_backward, step, convert = _torch_trainer(widths, batchnorm, impl.partition("+")[2] or "torch")
        batches = [convert(*b) for b in batches]
    else:
        forward_backward, step = _numpy_trainer(widths, batchnorm, impl)
    totals, optimizer = [], []
    for i in range(warmup + steps):
        if i == warmup and start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        x, labels = batches[i % len(batches)]
        t0 = time.perf_counter()
        forward_backward(x, labels)
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        if i >= warmup:
            totals.append(t2 - t0)
            optimizer.append(t2 - t1)
    return {"step_ms": 1e3 * statistics.median(totals), "optimizer_ms": 1e3 * statistics.median(optimizer),
            "wall_s": sum(totals)}


def _spawn(model_name, impl, cpus=None, threads=None, start_at=None):
    """A worker process; `cpus`: its affinity mask; `threads`: the thread count every runtime in it
    is told (BLAS, OpenMP, fastopt), as one gives each of several processes its share of the cores."""
    code = ("import json, os, sys\n"
            + (f"os.sched_setaffinity(0, {sorted(cpus)!r})\n" if cpus else "")
            + "from fastopt.bench.training import worker\n"
            + f"print(json.dumps(worker({model_name!r}, {impl!r}, {start_at!r})))\n")
    env = None
    if threads is not None:
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def _collect(proc):
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"training worker failed with exit status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


class BusyProcesses:
    """`count` processes that each keep one core busy (pure Python loops), for the duration."""

    def __init__(self, count):
        self.count, self.procs = count, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def run_training(models=None, impls=IMPLS, out=sys.stderr):
    """Records of every (model, implementation, condition); conditions as in the module docstring."""
    try:
        import torch  # noqa: F401
    except ImportError:
        impls = [i for i in impls if not i.startswith("torch")]
    cpus = sorted(os.sched_getaffinity(0))
    half = cpus[: max(1, len(cpus) // 2)]
    records = []
    for model_name in models or MODELS:
        for impl in impls:
            def record(condition, result, **extra):
                records.append({"kind": "training", "model": model_name, "impl": impl,
                                "condition": condition, **result, **extra})
                print(f"  {model_name:22s} {impl:8s} {condition:28s} {result['step_ms']:8.2f} ms/step "
                      f"(optimizer {result['optimizer_ms']:.2f} ms)", file=out, flush=True)
            record("quiet", _collect(_spawn(model_name, impl)))
            for busy in (1, 2):
                with BusyProcesses(busy):
                    record(f"{busy} busy process" + ("es" if busy > 1 else ""), _collect(_spawn(model_name, impl)))
            record(f"alone on {len(half)} of {len(cpus)} CPUs", _collect(_spawn(model_name, impl, half)))
            # Two trainers at once: at their defaults (each runtime takes every core), and each
            # process told half the cores.
            for condition, threads in (("two trainers at once", None),
                                       ("two at once, half the cores each", len(half))):
                start_at = time.time() + PAIR_START_S
                pair = [_spawn(model_name, impl, threads=threads, start_at=start_at) for _ in range(2)]
                results = [_collect(p) for p in pair]
                slowest = max(results, key=lambda r: r["step_ms"])
                record(condition, slowest, both_step_ms=[r["step_ms"] for r in results])
    return records


def training_table(records, key="step_ms"):
    """Markdown: median ms per step (or, with key="optimizer_ms", of its optimizer step) by
    condition, and the optimizer's share of the quiet step."""
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    by = {(r["model"], r["impl"], r["condition"]): r for r in records}
    what = "whole step, ms" if key == "step_ms" else "optimizer step, ms"
    lines = [f"| model ({what}) | implementation | " + " | ".join(conditions) + " | optimizer share (quiet) |",
             "|---|---|" + "---:|" * (len(conditions) + 1)]
    for model, impl in dict.fromkeys((r["model"], r["impl"]) for r in records):
        cells = [f"{by[model, impl, c][key]:.2f}" if (model, impl, c) in by else "" for c in conditions]
        quiet = by.get((model, impl, "quiet"))
        share = f"{quiet['optimizer_ms'] / quiet['step_ms']:.0%}" if quiet else ""
        lines.append(f"| {model} | {impl} | " + " | ".join(cells) + f" | {share} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2])))
