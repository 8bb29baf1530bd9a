"""Benchmark rows of quantized optimizer state (state_dtype="8bit" / "fp8"; docs/quantized_states.md):
one step over n float32 (or bfloat16) elements, CPU.

Rows per workload: fastopt with quantized state; fastopt with float32 state; torch's fused
float32 Adam ("torch-fused", whatever the workload's rule: the reference the speed-up is against,
what a torch user runs today);
bitsandbytes' CPU 8-bit twin where installed (a rule module's BITSANDBYTES names it; the rows
are the BENCH entries that have one, and the first again with bfloat16 parameters and stochastic
rounding). The limit is the streaming time of the
quantized step's own bytes: params read and written, the gradient read, one byte per element per
state read and written (the block scales, 8 bytes per 256 elements a state, are left out).

The "in cache" rows run the same step on CACHE_SIZE elements, one thread: every array fits in
the last-level cache, so the time is the step's computation per core (what bounds it where a core
has more memory bandwidth than it can use) and the limit is that of cache-resident streams.
"""
import numpy as np

from .. import rules
from .bandwidth import Stream
from .timing import measure


def _workloads():
    rows = [(f"8bit {cls}", cls, dict(hp), bnb, "float32") for rule in rules.BUILTIN for cls, hp in rule.BENCH
            if (bnb := getattr(rule, "BITSANDBYTES", {}).get(cls))]
    first = rows[0]
    return tuple(rows) + ((f"{first[0]} bf16-SR", first[1], first[2], None, "bfloat16"),)


# (workload, fastopt class, hyper-parameters, bitsandbytes class, parameter dtype).
WORKLOADS = _workloads()
SIZE = 64_000_000
CACHE_SIZE = 1 << 20  # float32 state: 16 MiB with its gradient, within a server CPU's last-level cache


def step_bytes(states, param_bytes):
    """Bytes per element of a quantized step: param read + written, grad read, each state's code
    read + written."""
    return 3 * param_bytes + 2 * states


def _limit_streams(n, states, param_bytes, threads):
    """Streams moving the step's bytes: float32 passes over n * param_bytes / 4 elements
    (param read-write, grad read-only) and over n / 4 elements per code array (read-write)."""
    wide = Stream("cpu", "float32", n * param_bytes // 4, [(1, 1, 0)], threads)
    codes = Stream("cpu", "float32", n // 4, [(0, states, 0)], threads)
    return wide, codes


class _Fastopt:
    def __init__(self, fastopt, cls, hp, n, dtype, state_dtype):
        rng = np.random.default_rng(0)
        self.label = f"fastopt[cpu] {state_dtype or 'float32'}"
        p = rng.standard_normal(n, dtype=np.float32)
        self.grad = (rng.standard_normal(n, dtype=np.float32) * 1e-2)
        options = {}
        if dtype == "bfloat16":
            from .._dtypes import BFLOAT16

            p, self.grad = p.astype(BFLOAT16), self.grad.astype(BFLOAT16)
            options = dict(stochastic_rounding=True)
        self.param = p
        self.opt = getattr(fastopt, cls)(p, state_dtype=state_dtype, **options, **hp)
        self.opt.step(self.grad)  # creates the state
        self.states = sum(name in self.opt.state for name in self.opt._state_array_names)

    def step(self):
        self.opt.step(self.grad)

    def state_bytes_per_param(self):
        arrays = [v for v in self.opt.state.values() if hasattr(v, "nbytes")]
        return sum(a.nbytes for a in arrays) / self.param.size


class _Torch:
    def __init__(self, torch, cls, hp, n, label, **options):
        gen = torch.Generator().manual_seed(0)
        self.label = label
        self.p = torch.nn.Parameter(torch.randn(n, generator=gen))
        self.p.grad = torch.randn(n, generator=gen) * 1e-2
        self.opt = cls([self.p], **hp, **options)
        self.opt.step()  # creates the state

    def step(self):
        self.opt.step()

    def state_bytes_per_param(self):
        tensors = [v for v in self.opt.state[self.p].values() if hasattr(v, "nbytes")]
        nested = self.opt.state[self.p].get("__bnb_optimizer_quant_state__", {})
        tensors += [v for v in nested.values() if hasattr(v, "nbytes")]
        return sum(t.nbytes for t in tensors) / self.p.numel()


def task(run, threads, n=SIZE, schemes=("8bit",), where=""):
    """Rows for each workload at n elements on `threads` threads; `where` tags the workload's name."""
    import fastopt

    cfg = run.config
    run.set_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    for workload, cls, hp, bnb_cls, dtype in WORKLOADS:
        base = {"kind": "quantized_state", "workload": f"{workload} n={n:.2g}{where}", "dtype": dtype, "threads": threads,
                "size": n}
        if dtype == "bfloat16" and fastopt._dtypes.BFLOAT16 is None:
            run.add(**base, impl="fastopt[cpu] 8bit", skipped="needs ml_dtypes")
            continue
        run.log(f"  {workload}")
        impls = [_Fastopt(fastopt, cls, hp, n, dtype, scheme) for scheme in schemes]
        if dtype == "float32":
            impls.append(_Fastopt(fastopt, cls, hp, n, dtype, None))
        if torch is not None:
            # The reference: torch's fused float32 Adam, whatever the workload's rule.
            # (labelled as the harness's other torch-fused rows, so its speed-up columns find it)
            impls.append(_Torch(torch, torch.optim.Adam, dict(lr=1e-3), n, "torch-fused", fused=True))
            if bnb_cls is not None:
                try:
                    import bitsandbytes

                    impls.append(_Torch(torch, getattr(bitsandbytes.optim, bnb_cls), hp, n,
                                        f"bitsandbytes {bnb_cls}"))
                except Exception as exc:  # not installed, or no CPU kernels
                    run.add(**base, impl=f"bitsandbytes {bnb_cls}", skipped=f"{type(exc).__name__}: {exc}")
        param_bytes = 2 if dtype == "bfloat16" else 4
        states = impls[0].states
        streams = _limit_streams(n, states, param_bytes, threads)
        timed = measure([i.step for i in impls] + list(streams), repeats=max(3, cfg.repeats - 4),
                        target_sample_s=cfg.target_sample_s, max_time_s=cfg.max_time_s)
        limit = timed[-2][0] + timed[-1][0]
        nbytes = step_bytes(states, param_bytes)
        reference = next((s for i, (s, _) in zip(impls, timed) if i.label.startswith("torch-fused")), None)
        for impl, (seconds, samples) in zip(impls, timed):
            record = dict(base, impl=impl.label, backend="cpu", seconds=seconds, samples=samples,
                          elements_per_s=n / seconds, state_bytes_per_param=impl.state_bytes_per_param())
            if impl.label.startswith("fastopt"):
                # The float32-state row moves 4 bytes per state element: its own pattern, no limit.
                own = nbytes if "float32" not in impl.label else 3 * param_bytes + 8 * states
                record.update(bytes_per_element=own, gb_per_s=n * own / seconds / 1e9)
                if "float32" not in impl.label:
                    record.update(limit_seconds=limit, limit_gb_per_s=n * nbytes / limit / 1e9,
                                  fraction_of_limit=limit / seconds)
            if reference is not None:
                record["speedup_vs_torch_fused_adam"] = reference / seconds
            run.add(**record)
        for s in streams:
            s.close()
        del impls
