"""The benchmark run: plan the measurements, check each implementation, time it, report.

Every result is a dict (a "record"); the list of them, with the machine description, is what
`--json` writes and what the table, the headline figures and the plot are made from.
"""
import ctypes
import datetime
import gc
import math
import os
import platform
import sys
import time

import numpy as np

from . import bn_fused, ema, impls, lists, quantized, workloads
from .bandwidth import Stream, pattern_bytes
from .timing import measure



def batchnorm_passes(shape, axis, direction, threads, backend="cpu"):
    """The memory passes of a BatchNorm training step with the fewest reads of its inputs (x; x
    and dy backward) that the CPU kernel manages for this layout: one where a group of channels'
    values stays cached from the statistics to the output (channels-first, small enough slices),
    two elsewhere (channels-last and (N, C), whose channels spread over the whole tensor; slices
    too big to cache). The output is written once: by the streaming loop with plain stores, by
    the kernels with streaming stores from 16 MiB on."""
    inputs = 1 if direction == "forward" else 2
    reads = 1
    if backend == "cuda":  # the CUDA kernels read the inputs twice: statistics, then the output
        return [(inputs, 0, 0), (inputs, 0, 1)]
    try:
        from .. import _cpu
    except ImportError:  # no extension: no limit is measured; the compulsory traffic is reported
        _cpu = None
    if _cpu is not None:
        if axis == 1:
            outer, channels, inner = shape[0], shape[1], math.prod(shape[2:])
        else:
            outer, channels, inner = math.prod(shape[:-1]), shape[-1], 1
        reads = _cpu.batch_norm_input_reads(outer, channels, inner, 4, direction == "backward", threads)
    return [(inputs, 0, 0)] * (reads - 1) + [(inputs, 0, 1)]

class Config:
    def __init__(self, quick=False, only=None, threads=None, backends=None, sizes=None, repeats=None,
                 stream=sys.stderr):
        import fastopt

        self.quick = quick
        self.only = [s.strip().lower() for s in only.split(",")] if isinstance(only, str) else only
        all_threads = fastopt.get_num_threads()
        self.threads = list(threads) if threads else ([all_threads] if quick else sorted({1, all_threads}))
        available = [name for name, info in fastopt.backends().items() if info["available"]]
        self.backends = [b for b in (backends or available) if b in available]
        # A CUDA-only run (the GPU rows): its references run on the GPU (torch fused Adam, cuDNN
        # batch norm); the CPU ones, which take minutes at these sizes, are left out.
        self.cuda_only = self.backends == ["cuda"]
        self.unavailable = {name: info.get("reason") for name, info in fastopt.backends().items()
                            if not info["available"]}
        self.sizes = tuple(sizes) if sizes else (workloads.SIZES_QUICK if quick else workloads.SIZES_FULL)
        self.repeats = repeats or (5 if quick else 9)
        self.target_sample_s = 0.002 if quick else 0.005
        self.max_time_s = 0.2 if quick else 3.0  # of sampling per measurement, once 3 rounds are done
        self.out = stream

    def wants(self, *names):
        """--only matching: a requested word equals one of the names (optimizer, model, group),
        case-insensitively, or is the part before a dash ("gpt2" for "gpt2-small")."""
        if not self.only:
            return True
        names = [n.lower() for n in names]
        return any(word == n or n.startswith(word + "-") for word in self.only for n in names)

    def as_dict(self):
        return {"quick": self.quick, "only": self.only, "threads": self.threads, "backends": self.backends,
                "unavailable_backends": self.unavailable, "sizes": list(self.sizes), "repeats": self.repeats}


def keep_freed_memory():
    """Makes glibc keep freed memory for reuse instead of handing it back to the system; returns
    what the allocator does, for the record.

    torch allocates each BatchNorm output afresh; with glibc's defaults a block that large is
    mapped anew on every call and page-faulted in, which tripled torch's time on this machine
    (NHWC forward 21 ms, against 6.8 ms with freed memory kept). References are timed at their
    best, so the command-line harness runs with this; fastopt writes preallocated outputs either way.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "system default (not glibc)"
    m_trim_threshold, m_mmap_max = -1, -4
    if libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1:
        return "glibc, freed memory kept for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
    return "glibc defaults (mallopt refused)"


def machine_description():
    import fastopt

    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "fastopt": fastopt.__version__, "logical_cpus": os.cpu_count(),
            "fastopt_threads": fastopt.get_num_threads(), "backends": fastopt.backends()}
    # Threading settings change the timings (OMP_WAIT_POLICY decides whether idle workers spin).
    info["environment"] = {k: v for k, v in os.environ.items()
                           if k.startswith(("OMP_", "GOMP_", "KMP_", "FASTOPT_", "NUMBA_NUM", "MKL_NUM"))}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        caches = {}
        base = "/sys/devices/system/cpu/cpu0/cache"
        for entry in sorted(os.listdir(base)):
            if entry.startswith("index"):
                with open(f"{base}/{entry}/level") as f:
                    level = f.read().strip()
                with open(f"{base}/{entry}/type") as f:
                    kind = f.read().strip()
                with open(f"{base}/{entry}/size") as f:
                    caches[f"L{level} {kind}"] = f.read().strip()
        info["caches_per_cpu0"] = caches
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


class Run:
    def __init__(self, config):
        self.config = config
        self.records = []
        self.tasks = []
        self._started = None
        self._data_cache = (None, None)

    # ---- output ----
    def log(self, message):
        if self.config.out is not None:
            print(message, file=self.config.out, flush=True)

    def add(self, **record):
        if "samples" in record:
            record["best_seconds"] = min(record["samples"])  # the least disturbed sample, for noisy machines
            # Samples that spread this much were disturbed by other work on the machine.
            record["noisy"] = record["seconds"] > 1.5 * record["best_seconds"]
        self.records.append(record)
        if "skipped" in record:
            self.log(f"    {record['impl']:<24} {'' if 'CHECK FAILED' in record['skipped'] else 'skipped: '}"
                     f"{record['skipped']}")
            return
        name = record["impl"] + (" " + record["workload"].split()[1] if record["kind"] == "batchnorm" else "")
        line = f"    {name:<24} {_fmt_time(record['seconds'])}{'*' if record['noisy'] else ' '}"
        if record.get("elements_per_s"):
            line += f"  {record['elements_per_s'] / 1e9:7.3f} Gelem/s"
        if record.get("gb_per_s"):
            line += f"  {record['gb_per_s']:6.1f} GB/s"
        if record.get("fraction_of_limit") is not None:
            line += f"  {100 * record['fraction_of_limit']:5.1f}% of {record['limit_gb_per_s']:.1f} GB/s"
        self.log(line)

    # ---- threads ----
    def set_threads(self, n):
        import fastopt

        fastopt.set_num_threads(n)
        try:
            import torch

            torch.set_num_threads(n)
        except ImportError:
            pass

    # ---- planning ----
    def plan(self):
        cfg = self.config
        for threads in cfg.threads:
            for spec in workloads.OPTIMIZERS:
                if cfg.wants(spec.name, "optimizers"):
                    for n in cfg.sizes:
                        self.tasks.append((f"{spec.name} n={n:.2g} threads={threads}",
                                           lambda s=spec, n=n, t=threads: self.optimizer_task(s, [(n,)], "optimizer", s.name, t)))
            for model in workloads.MODELS:
                if cfg.quick and model.name not in workloads.MODELS_QUICK:
                    continue
                for opt_name in model.optimizers:
                    if cfg.wants(model.name, opt_name, "models"):
                        spec = workloads.OPTIMIZER_BY_NAME[opt_name]
                        self.tasks.append((f"{model.name} {opt_name} threads={threads}",
                                           lambda s=spec, m=model, t=threads: self.optimizer_task(
                                               s, m.shapes_fn(), "model", f"{m.name} {s.name}", t)))
            for model in workloads.MODELS:
                if cfg.wants("lists") and (model.name in workloads.MODELS_QUICK or not cfg.quick):
                    spec = workloads.OPTIMIZER_BY_NAME[model.optimizers[-1]]
                    self.tasks.append((f"{model.name} {spec.name} list threads={threads}",
                                       lambda s=spec, m=model, t=threads: lists.list_task(self, s, m, t)))
            if cfg.wants("clip", "Adam"):
                n = min(max(cfg.sizes), 10_000_000)
                spec = workloads.OPTIMIZER_BY_NAME["Adam"]
                self.tasks.append((f"clip+Adam n={n:.2g} threads={threads}",
                                   lambda s=spec, n=n, t=threads: self.optimizer_task(
                                       s, [(n,)], "clip_step", "clip+Adam", t, max_grad_norm=workloads.MAX_GRAD_NORM)))
                if not cfg.quick:
                    shapes = workloads.gpt2_small_shapes
                    self.tasks.append((f"clip+Adam gpt2-small threads={threads}",
                                       lambda s=spec, t=threads: self.optimizer_task(
                                           s, shapes(), "clip_step", "gpt2-small clip+Adam", t,
                                           max_grad_norm=workloads.MAX_GRAD_NORM)))
            if cfg.wants("ema"):
                n = max(cfg.sizes)
                self.tasks.append((f"Adam with fused EMA n={n:.2g} threads={threads}",
                                   lambda n=n, t=threads: ema.task(self, n, t)))
            for bn in workloads.BATCHNORM:
                if cfg.quick and bn.name not in workloads.BATCHNORM_QUICK:
                    continue
                if cfg.wants("batchnorm", "bn"):
                    self.tasks.append((f"BatchNorm {bn.name} threads={threads}",
                                       lambda b=bn, t=threads: self.batchnorm_task(b, t)))
                if cfg.wants("batchnorm", "bn", "bnfused"):
                    self.tasks.append((f"BN+ReLU, BN+add+ReLU {bn.name} threads={threads}",
                                       lambda b=bn, t=threads: bn_fused.task(self, b, t)))
            if cfg.wants("quantized", "8bit") and "cpu" in cfg.backends and not cfg.cuda_only:
                n = 1_000_000 if cfg.quick else quantized.SIZE
                self.tasks.append((f"quantized state n={n:.2g} threads={threads}",
                                   lambda t=threads, n=n: quantized.task(self, t, n=n, schemes=("8bit", "fp8"))))
                if threads == cfg.threads[0] and not cfg.quick:
                    self.tasks.append(("quantized state in cache, one thread",
                                       lambda: quantized.task(self, 1, n=quantized.CACHE_SIZE,
                                                              schemes=("8bit", "fp8"), where=" in cache")))
            if cfg.wants("overhead"):
                self.tasks.append((f"call overhead n={workloads.OVERHEAD_SIZE} threads={threads}",
                                   lambda t=threads: self.overhead_task(t)))

    def execute(self):
        self.plan()
        self._started = time.perf_counter()
        total = len(self.tasks)
        for k, (label, task) in enumerate(self.tasks, 1):
            self.log(f"[{k}/{total}] {label}  ({time.perf_counter() - self._started:.0f} s)")
            task()
            gc.collect()
        self.add_speedups()
        return self.records

    # ---- optimizer steps ----
    def _data(self, shapes):
        key = tuple(tuple(s) for s in shapes)
        if self._data_cache[0] != key:
            self._data_cache = (None, None)
            gc.collect()
            self._data_cache = (key, impls.StepData(shapes))
        return self._data_cache[1]

    def optimizer_task(self, spec, shapes, kind, workload, threads, max_grad_norm=None):
        cfg = self.config
        self.set_threads(threads)
        data = self._data(shapes)
        base = {"kind": kind, "workload": workload, "optimizer": spec.name, "hyper_parameters": spec.kwargs,
                "size": data.n, "tensors": len(data.shapes), "dtype": data.dtype.name, "threads": threads}
        if max_grad_norm is not None:
            base["max_grad_norm"] = max_grad_norm
        # torch's fused kernel, the strongest reference, is timed interleaved with fastopt (like
        # the stream), so that their ratio holds on a noisy machine; the others are timed after.
        device = "cuda" if cfg.cuda_only else "cpu"
        partner = self._reference(spec, data, "torch-fused", base, max_grad_norm, device)
        partner_timed = None
        for backend in cfg.backends:
            try:
                impl = impls.FastoptOptimizer(spec, data, backend, max_grad_norm)
                # On the GPU a prefix of each tensor (the float64 reference of 2.56e8 elements
                # takes longer than the run; tests/test_cuda.py checks the GPU bit for bit).
                check = impls.check_optimizer(impl, spec, data, max_grad_norm=max_grad_norm,
                                              limit=impls.GPU_CHECK_ELEMENTS if backend == "cuda" else None)
            except impls.BACKEND_GAPS as exc:
                self.add(**base, impl=f"fastopt[{backend}]", backend=backend, skipped=impls.gap_reason(backend, exc))
                continue
            try:  # the CPU stream lives in the extension: no limit when only Numba is there
                stream = Stream(backend, data.dtype if data.dtype.itemsize >= 4 else "float32",
                                impl.n_kernel, impl.passes(), threads)
            except ImportError:
                stream = None
            fns = [impl.step] + ([stream] if stream else [])
            with_partner = partner is not None and partner_timed is None and (backend == "cuda") == cfg.cuda_only
            if with_partner:
                fns.append(partner[0].step)
            timed = measure(fns, repeats=cfg.repeats, target_sample_s=cfg.target_sample_s,
                            max_time_s=cfg.max_time_s, sync=impl.sync)
            if with_partner:
                partner_timed = timed.pop()
            seconds, samples = timed[0]
            record = dict(base, impl=impl.label, backend=backend, seconds=seconds, samples=samples,
                          elements_per_s=data.n / seconds, bytes_per_element=impl.bytes_per_element(),
                          passes=impl.passes(), elements_stepped=impl.n_kernel, check=check)
            record["gb_per_s"] = impl.n_kernel * record["bytes_per_element"] / seconds / 1e9
            if stream:
                stream_seconds = timed[1][0]
                record["limit_gb_per_s"] = impl.n_kernel * stream.bytes_per_element / stream_seconds / 1e9
                record["limit_seconds"] = stream_seconds
                record["fraction_of_limit"] = record["gb_per_s"] / record["limit_gb_per_s"]
                stream.close()
            self.add(**record)
            impl.close()
            del impl, stream
            gc.collect()
        if partner is not None:
            impl, check = partner
            if partner_timed is None:  # no fastopt backend ran: time it alone
                partner_timed = self._measure_reference(impl, data)
            seconds, samples = partner_timed
            self.add(**base, impl="torch-fused", backend=device, seconds=seconds, samples=samples,
                     elements_per_s=data.n / seconds, check=check, interleaved_with_fastopt=True)
            impl.close()
            del impl, partner
            gc.collect()
        for label in () if cfg.cuda_only else ("numpy", "torch-foreach"):
            made = self._reference(spec, data, label, base, max_grad_norm)
            if made is None:
                continue
            impl, check = made
            seconds, samples = self._measure_reference(impl, data)
            extra = {"reference": impl.reference} if getattr(impl, "reference", None) else {}
            self.add(**base, impl=label, backend="cpu", seconds=seconds, samples=samples,
                     elements_per_s=data.n / seconds, check=check, **extra)
            impl.close()
            del impl, made
            gc.collect()

    def _reference(self, spec, data, label, base, max_grad_norm, device="cpu"):
        """(implementation, check) of a reference that runs here and agrees with the float64
        reference; else None, with a record saying why."""
        try:
            if label == "numpy":
                impl = impls.NumpyOptimizer(spec, data, max_grad_norm)
            else:
                impl = impls.TorchOptimizer(spec, data, label[len("torch-"):], max_grad_norm, device)
        except impls.Skipped as exc:
            self.add(**base, impl=label, skipped=str(exc))
            return None
        # The reference kernels do not depend on the size: check a prefix of each tensor.
        tolerances = impls.REFERENCE_CLIP_TOLERANCES[data.dtype.name] if max_grad_norm else None
        try:
            check = impls.check_optimizer(impl, spec, data, max_grad_norm=max_grad_norm, limit=4096,
                                          tolerances=tolerances)
        except impls.CheckFailed as exc:
            self.add(**base, impl=label, skipped=f"CHECK FAILED, not timed: {exc}")
            return None
        return impl, check

    def _measure_reference(self, impl, data):
        cfg = self.config
        repeats = max(3, cfg.repeats - 4) if data.n >= 10**7 else cfg.repeats
        return measure([impl.step], repeats=repeats, target_sample_s=cfg.target_sample_s,
                       max_time_s=cfg.max_time_s, sync=impl.sync)[0]

    # ---- BatchNorm ----
    def batchnorm_task(self, bn, threads):
        cfg = self.config
        self.set_threads(threads)
        base = {"kind": "batchnorm", "shape": list(bn.shape), "axis": bn.axis, "dtype": "float32",
                "threads": threads, "size": math.prod(bn.shape)}
        import fastopt

        if not hasattr(fastopt, "batch_norm_forward"):
            reason = "fastopt.batch_norm_forward does not exist in this build: BatchNorm not measured"
            for direction in ("forward", "backward"):
                self.add(**base, workload=f"BN {direction} {bn.name}", impl="fastopt", skipped=reason)
            return
        data = impls.BatchNormData(bn.shape, bn.axis)
        n = data.x.size
        makers = [(f"fastopt[{b}]", lambda b=b: impls.FastoptBatchNorm(data, b)) for b in cfg.backends]
        if cfg.cuda_only:
            makers.append(("torch-cudnn", lambda: impls.TorchBatchNorm(data, "cuda")))
        else:
            makers += [("numpy", lambda: impls.NumpyBatchNormImpl(data)), ("torch", lambda: impls.TorchBatchNorm(data))]
        for label, make in makers:
            try:
                impl = make()
            except impls.Skipped as exc:
                for direction in ("forward", "backward"):
                    self.add(**base, workload=f"BN {direction} {bn.name}", impl=label, skipped=str(exc))
                continue
            is_fastopt = label.startswith("fastopt")
            backend = label[8:-1] if is_fastopt else ("cuda" if label == "torch-cudnn" else "cpu")
            try:
                check = impls.check_batchnorm(impl, data)
            except impls.BACKEND_GAPS as exc:
                if not is_fastopt:
                    raise
                for direction in ("forward", "backward"):
                    self.add(**base, workload=f"BN {direction} {bn.name}", impl=label,
                             skipped=impls.gap_reason(label[8:-1], exc))
                continue
            except impls.CheckFailed as exc:
                if is_fastopt:
                    raise
                for direction in ("forward", "backward"):
                    self.add(**base, workload=f"BN {direction} {bn.name}", impl=label,
                             skipped=f"CHECK FAILED, not timed: {exc}")
                continue
            for direction in ("forward", "backward"):
                passes = batchnorm_passes(bn.shape, bn.axis, direction, threads, backend)
                fn = impl.forward if direction == "forward" else impl.backward
                if direction == "forward" and label.startswith("torch"):
                    fn = impl.forward_only
                stream = Stream(backend, "float32", n, passes, threads) if is_fastopt else None
                timed = measure([fn] + ([stream] if stream else []), repeats=cfg.repeats,
                                target_sample_s=cfg.target_sample_s, max_time_s=cfg.max_time_s, sync=impl.sync)
                seconds, samples = timed[0]
                nbytes = pattern_bytes(passes, 4)
                record = dict(base, workload=f"BN {direction} {bn.name}", impl=label,
                              backend=backend, seconds=seconds, samples=samples,
                              elements_per_s=n / seconds, bytes_per_element=nbytes, passes=passes,
                              gb_per_s=n * nbytes / seconds / 1e9, check=check)
                if stream:
                    record["limit_seconds"] = timed[1][0]
                    record["limit_gb_per_s"] = n * nbytes / timed[1][0] / 1e9
                    record["fraction_of_limit"] = record["gb_per_s"] / record["limit_gb_per_s"]
                    stream.close()
                self.add(**record)
            del impl
            gc.collect()

    # ---- call overhead ----
    def overhead_task(self, threads):
        import fastopt

        cfg = self.config
        self.set_threads(threads)
        n = workloads.OVERHEAD_SIZE
        spec = workloads.OPTIMIZER_BY_NAME["Adam"]
        data = impls.StepData([(n,)])
        base = {"kind": "overhead", "workload": f"Adam n={n}", "optimizer": "Adam", "size": n,
                "dtype": "float32", "threads": threads}
        repeats = max(cfg.repeats, 15)
        for backend in cfg.backends:
            if backend == "cuda":
                continue
            try:
                klass = impls.FastoptOptimizer(spec, data, backend)
                check = impls.check_optimizer(klass, spec, data)
            except impls.BACKEND_GAPS as exc:
                self.add(**base, impl=f"fastopt[{backend}]", backend=backend, skipped=impls.gap_reason(backend, exc))
                continue
            p, g = data.p0.copy(), data.g
            m, v = np.zeros_like(p), np.zeros_like(p)
            step_count = [0]

            def functional_step():
                step_count[0] += 1
                fastopt.functional.adam(p, g, m, v, step=step_count[0], lr=1e-3, backend=backend)

            timed = measure([functional_step, klass.step], repeats=repeats, target_sample_s=0.01,
                                max_time_s=4 * cfg.max_time_s)
            for api, (seconds, samples) in zip(("functional", "class"), timed):
                self.add(**base, impl=f"fastopt[{backend}] {api}", backend=backend, api=api, seconds=seconds,
                         samples=samples, microseconds=seconds * 1e6, check=check)
        references = [("numpy", lambda: impls.NumpyOptimizer(spec, data))]
        references += [(f"torch-{mode}", lambda mode=mode: impls.TorchOptimizer(spec, data, mode))
                       for mode in ("foreach", "fused")]
        for label, make in references:
            try:
                impl = make()
            except impls.Skipped as exc:
                self.add(**base, impl=label, skipped=str(exc))
                continue
            try:
                check = impls.check_optimizer(impl, spec, data)
            except impls.CheckFailed as exc:
                self.add(**base, impl=label, skipped=f"CHECK FAILED, not timed: {exc}")
                continue
            seconds, samples = measure([impl.step], repeats=repeats, target_sample_s=0.01,
                                max_time_s=4 * cfg.max_time_s)[0]
            self.add(**base, impl=label, backend="cpu", seconds=seconds, samples=samples,
                     microseconds=seconds * 1e6, check=check)

    # ---- derived figures ----
    def add_speedups(self):
        """For each fastopt record: the reference's time over fastopt's, same workload and threads."""
        timed = {}
        for r in self.records:
            if "seconds" in r:
                timed[(r["workload"], r.get("size"), r["threads"], r["impl"])] = r["seconds"]
        for r in self.records:
            if "seconds" not in r or not r["impl"].startswith("fastopt"):
                continue
            speedups = {}
            for ref in ("numpy", "torch-foreach", "torch-fused", "torch"):
                t = timed.get((r["workload"], r.get("size"), r["threads"], ref))
                if t:
                    speedups[ref] = t / r["seconds"]
            r["speedup"] = speedups


def headline(records):
    """The figures fastopt is judged on, each with its target, from the records of one run."""
    ok = [r for r in records if "seconds" in r]
    max_threads = max((r["threads"] for r in ok), default=None)
    top = [r for r in ok if r["threads"] == max_threads]
    rows = []

    def fastopt_cpu(r):
        return r["impl"] == "fastopt[cpu]"

    # The bandwidth targets are set for out-of-cache buffers: a run without them (--quick) has none.
    largest = max((x["size"] for x in top if x["kind"] == "optimizer"), default=0)
    big = [r for r in top if r["kind"] == "optimizer" and fastopt_cpu(r) and r["dtype"] == "float32"
           and r["size"] == largest >= workloads.SIZES_FULL[-1] and r.get("fraction_of_limit") is not None]
    if big:
        worst = min(big, key=lambda r: r["fraction_of_limit"])
        rows.append((f"every fp32 optimizer at n={big[0]['size']:.1e}: lowest fraction of the bandwidth limit "
                     f"({worst['workload']})", worst["fraction_of_limit"], ">= 0.90", worst["fraction_of_limit"] >= 0.9))
        adam = [r for r in big if r["workload"] == "Adam" and "torch-fused" in r.get("speedup", {})]
        if adam:
            s = adam[0]["speedup"]["torch-fused"]
            rows.append((f"Adam n={adam[0]['size']:.1e} vs torch fused (speed-up)", s, ">= 1.0", s >= 1.0))
    for workload, target in (("gpt2-small Adam", 1.2), ("resnet50 Adam", 1.2), ("100x10k Adam", 3.0)):
        for r in top:
            if r["workload"] == workload and fastopt_cpu(r) and "torch-fused" in r.get("speedup", {}):
                s = r["speedup"]["torch-fused"]
                rows.append((f"{workload} vs torch fused over the tensor list (speed-up)", s, f">= {target}", s >= target))
    for r in top:
        if r["kind"] == "list" and "speed_vs_flat" in r:
            rows.append((f"{r['workload']}: speed vs one FlatParams buffer", r["speed_vs_flat"], ">= 0.95",
                         r["speed_vs_flat"] >= 0.95))
            if "speed_vs_torch_fused" in r:
                s = r["speed_vs_torch_fused"]
                rows.append((f"{r['workload']}: speed-up over torch fused on the same list", s, ">= 1.05", s >= 1.05))
    for r in top:
        if r["kind"] == "ema" and "speed_vs_torch_fused_plus_lerp" in r and r["size"] >= workloads.SIZES_FULL[-1]:
            s = r["speed_vs_torch_fused_plus_lerp"]
            rows.append((f"Adam with fused EMA n={r['size']:.1e} vs torch fused Adam + _foreach_lerp_ (speed-up)",
                         s, ">= 1.08", s >= 1.08))
    for r in top:
        if r["kind"] == "overhead" and r["impl"].startswith("fastopt[cpu]"):
            us = r["microseconds"]
            rows.append((f"{r['workload']} step, {r['api']} API (microseconds per call)", us, "<= 5", us <= 5))
    for direction in ("forward", "backward"):
        bn = [r for r in top if r["kind"] == "batchnorm" and fastopt_cpu(r) and r["workload"].startswith(f"BN {direction}")
              and "torch" in r.get("speedup", {})]
        if bn:
            worst = min(bn, key=lambda r: r["speedup"]["torch"])
            s = worst["speedup"]["torch"]
            rows.append((f"BatchNorm {direction} vs torch, lowest over shapes ({worst['workload'][len('BN ' + direction) + 1:]})",
                         s, ">= 3.0", s >= 3.0))
    bn = [r for r in top if r["kind"] == "batchnorm" and fastopt_cpu(r) and r.get("fraction_of_limit") is not None]
    if bn:
        worst = min(bn, key=lambda r: r["fraction_of_limit"])
        f = worst["fraction_of_limit"]
        rows.append((f"BatchNorm: lowest fraction of the limit of its minimal passes ({worst['workload']})",
                     f, ">= 0.70", f >= 0.7))
    return rows


def _fmt_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.3f} s "


def markdown_table(records):
    """One row per fastopt measurement, with the references' speed-ups; then the overheads."""
    lines = ["| workload | elements | threads | impl | time | Gelem/s | GB/s | of limit | vs NumPy | vs torch foreach | vs torch fused/BN |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    skipped = []
    for r in records:
        if "skipped" in r:
            if r["impl"].startswith("fastopt") or "CHECK FAILED" in r["skipped"]:
                skipped.append(f"{r['workload']} {r['impl']}: {r['skipped']}")
            continue
        if not r["impl"].startswith("fastopt") or r["kind"] == "overhead":
            continue
        s = r.get("speedup", {})

        def x(key):
            return f"{s[key]:.2f}x" if key in s else "-"

        frac = r.get("fraction_of_limit")
        noisy = "*" if r.get("noisy") else ""
        lines.append(f"| {r['workload']} | {r['size']:.3g} | {r['threads']} | {r['impl']} | {_fmt_time(r['seconds']).strip()}{noisy} "
                     f"| {r['elements_per_s'] / 1e9:.2f} | {r['gb_per_s']:.1f} | {'-' if frac is None else f'{100 * frac:.0f}%'} "
                     f"| {x('numpy')} | {x('torch-foreach')} | {x('torch-fused') if 'torch-fused' in s else x('torch')} |")
    over = [r for r in records if r["kind"] == "overhead" and "seconds" in r]
    if over:
        lines += ["", "| 1e3-element Adam step | threads | microseconds per call |", "|---|---:|---:|"]
        lines += [f"| {r['impl']} | {r['threads']} | {r['microseconds']:.2f}{'*' if r.get('noisy') else ''} |"
                  for r in over]
    if any(r.get("noisy") for r in records):
        lines.append("\n\\* the median sample took over 1.5x the best one: other work disturbed this measurement.")
    if skipped:
        lines.append("\nNot measured:")
        lines += [f"- {note}" for note in dict.fromkeys(skipped)]
    return "\n".join(lines)


def headline_text(rows):
    lines = ["| headline figure | measured | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {value:.3g} | {target} | {'yes' if met else 'NO'} |" for name, value, target, met in rows]
    return "\n".join(lines)


def _load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run(config, allocator="glibc defaults"):
    """Runs the benchmark; returns {"machine", "config", "records", "headline"}. `allocator` says
    how memory is allocated in this process (see keep_freed_memory), for the record."""
    import fastopt

    previous = fastopt.get_num_threads()
    try:
        torch_threads = __import__("torch").get_num_threads()
    except ImportError:
        torch_threads = None
    run_ = Run(config)
    machine = machine_description()
    machine["allocator"] = allocator
    machine["load_average_at_start"] = _load_average()
    busy = machine["load_average_at_start"]
    if busy is not None and busy > 0.5:
        run_.log(f"warning: the machine is busy (1-minute load average {busy:.2f} before the run, "
                 f"{machine.get('usable_cpus', machine['logical_cpus'])} CPUs): timings with threads that "
                 "compete with other processes are unreliable")
    try:
        records = run_.execute()
    finally:
        fastopt.set_num_threads(previous)
        if torch_threads is not None:
            __import__("torch").set_num_threads(torch_threads)
    machine["load_average_at_end"] = _load_average()
    rows = headline(records)
    return {"machine": machine, "config": config.as_dict(), "records": records,
            "headline": [{"figure": n, "measured": v, "target": t, "met": m} for n, v, t, m in rows],
            "elapsed_s": time.perf_counter() - run_._started}
