"""The benchmark harness: its streaming kernel, its correctness check, its outputs.

Timings are never asserted: only that a run completes, that its records say what was measured,
and that a wrong kernel stops it.
"""
import json

import numpy as np
import pytest

import fastopt
import rule_table
from fastopt import _backend
from fastopt.bench import CheckFailed, Config, impls, references, run, workloads
from fastopt.bench import runner as bench_runner
from fastopt.bench.bandwidth import pattern_bytes
from fastopt.bench.runner import batchnorm_passes
from fastopt.bench.cli import main as bench_main

cpu = pytest.importorskip("fastopt._cpu")

try:
    import torch
except ImportError:  # the harness runs without torch; the torch comparisons are then skipped
    torch = None


def tiny_config(**overrides):
    options = dict(quick=True, only="Adam", sizes=(1031,), threads=[1], repeats=1, backends=["cpu"], stream=None)
    options.update(overrides)
    config = Config(**options)
    # Timings are not what these tests check: sample briefly (the harness still repeats each).
    config.target_sample_s, config.max_time_s = 5e-4, 0.02
    return config


# ---- the streaming kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 1031, 70_001])
@pytest.mark.parametrize("pattern", [(1, 3, 0), (0, 2, 0), (2, 0, 1), (1, 5, 2), (1, 0, 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_stream_writes_the_mean_of_what_it_reads(dtype, n, pattern, threads):
    for level in LEVELS:  # every compiled ISA level this CPU can run
        if LEVELS.index(level) > LEVELS.index(cpu.best_isa()):
            continue
        active = cpu.isa()
        cpu.select_isa(level)
        try:
            check_stream(dtype, n, pattern, threads)
        finally:
            cpu.select_isa(active)


LEVELS = ("baseline", "x86-64-v3", "x86-64-v4")


def check_stream(dtype, n, pattern, threads):
    ro, rw, wo = pattern
    rng = np.random.default_rng(n)
    arrays = [rng.standard_normal(n).astype(dtype) for _ in range(ro + rw + wo)]
    before = [a.copy() for a in arrays]
    checksum = cpu.stream(arrays, ro, rw, wo, threads)
    # The same operations in the same order, in the array's type: bit-exact (no FMA contraction).
    total = before[0].copy()
    for a in before[1:ro + rw]:
        total += a
    total *= np.dtype(dtype).type(1) / np.dtype(dtype).type(ro + rw)
    for k in range(ro):
        np.testing.assert_array_equal(arrays[k], before[k], err_msg=f"read-only array {k} was written")
    for k in range(ro, ro + rw + wo):
        np.testing.assert_array_equal(arrays[k], total, err_msg=f"array {k}")
    assert checksum == pytest.approx(float(total.astype(np.float64).sum()), rel=1e-4, abs=1e-3 * n)


def test_stream_rejects_bad_arguments():
    a, b = np.ones(10, np.float32), np.ones(11, np.float32)
    with pytest.raises(ValueError, match="one size"):
        cpu.stream([a, b], 1, 1, 0, 1)
    with pytest.raises(ValueError, match="one dtype"):
        cpu.stream([a, np.ones(10)], 1, 1, 0, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu.stream([np.ones(10, np.int32)], 1, 0, 0, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.stream([np.ones(20, np.float32)[::2]], 1, 0, 0, 1)
    with pytest.raises(ValueError, match="expected read_only"):
        cpu.stream([a], 1, 1, 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        cpu.stream([a] * 7, 0, 7, 0, 1)
    with pytest.raises(ValueError, match="num_threads"):
        cpu.stream([a], 1, 0, 0, 0)


# ---- bytes per element from the optimizer's state ------------------------------------------------

@pytest.mark.parametrize("name, kwargs, expected", [
    ("Adam", {}, 28),                     # read p g m v, write p m v
    ("Adam", {"amsgrad": True}, 36),      # + max_exp_avg_sq
    ("SGD", {"lr": 0.1}, 12),             # no momentum: no state
    ("SGD", {"momentum": 0.9}, 20),
    ("RMSprop", {"centered": True, "momentum": 0.9}, 36),
] + [(cls.__name__, kw, n) for cls, (kw, n) in rule_table.rows("bench_bytes")])
def test_bytes_per_element_follow_the_state(name, kwargs, expected):
    spec = workloads.OptimizerSpec(name, tuple(kwargs.items()))
    data = impls.StepData([(1031,)])
    impl = impls.FastoptOptimizer(spec, data, "cpu")
    impl.step()
    assert impl.bytes_per_element() == expected
    ro, rw, wo = impl.passes()[0]
    assert (ro + 2 * rw + wo) * 4 == expected


def test_bytes_per_element_float64_and_clipping():
    spec = workloads.OptimizerSpec("Adam", ())
    data = impls.StepData([(100,)], dtype="float64")
    impl = impls.FastoptOptimizer(spec, data, "cpu", max_grad_norm=1.0)
    impl.step()
    assert impl.bytes_per_element() == 56 + 8
    assert impl.passes() == [(1, 0, 0), (1, 3, 0)]


# ---- a run ------------------------------------------------------------------------------------------

def test_tiny_run_of_every_optimizer_completes_and_checks():
    # An odd size that fills no SIMD vector; the split over threads is the stream tests' and the
    # kernels' own tests' concern.
    result = run(tiny_config(only="optimizers", sizes=(1031,), threads=[1]))
    measured = [r for r in result["records"] if "seconds" in r]
    fast = [r for r in measured if r["impl"] == "fastopt[cpu]"]
    assert {r["workload"] for r in fast} == {s.name for s in workloads.OPTIMIZERS}
    assert len(fast) == len(workloads.OPTIMIZERS)
    for r in fast:
        assert r["check"]["passed"] and r["check"]["elements"] == r["size"]
        assert r["seconds"] > 0 and r["limit_gb_per_s"] > 0 and r["fraction_of_limit"] > 0
        assert r["gb_per_s"] == pytest.approx(r["size"] * r["bytes_per_element"] / r["seconds"] / 1e9)
        assert "numpy" in r["speedup"]
    numpy_runs = [r for r in measured if r["impl"] == "numpy"]
    assert len(numpy_runs) == len(fast)  # the NumPy references passed their check too
    if torch is not None:
        torch_runs = {r["workload"] for r in measured if r["impl"] == "torch-foreach"}
        # Rules torch.optim lacks, but for those whose reference package (schedulefree) is here.
        without_torch = {name for name in rule_table.names("torch", False)
                         if references.torch_reference_class(name) is None}
        assert torch_runs == {s.name for s in workloads.OPTIMIZERS} - without_torch
        skipped = {r["workload"]: r["skipped"] for r in result["records"] if "skipped" in r}
        assert without_torch <= set(skipped)
        fused = [r for r in measured if r["impl"] == "torch-fused"]
        assert {r["workload"] for r in fused} >= {"Adam", "AdamW", "SGD"}
        assert all(r["interleaved_with_fastopt"] and r["check"]["passed"] for r in fused)


def test_run_models_clip_and_overhead(monkeypatch):
    monkeypatch.setattr(workloads, "MODELS", (workloads.ModelSpec("three", lambda: [(3, 5), (7,), (1000,)], ("Adam",)),))
    monkeypatch.setattr(workloads, "MODELS_QUICK", ("three",))
    result = run(tiny_config(only="three,clip,overhead"))
    by_workload = {(r["workload"], r["impl"]): r for r in result["records"] if "seconds" in r}
    model = by_workload[("three Adam", "fastopt[cpu]")]
    assert model["tensors"] == 3 and model["size"] == 1022
    assert model["elements_stepped"] >= 1022  # the FlatParams buffer holds alignment padding
    clip = by_workload[("clip+Adam", "fastopt[cpu]")]
    assert clip["max_grad_norm"] == workloads.MAX_GRAD_NORM and clip["bytes_per_element"] == 32
    for api in ("functional", "class"):
        assert by_workload[(f"Adam n={workloads.OVERHEAD_SIZE}", f"fastopt[cpu] {api}")]["microseconds"] > 0
    assert any("step" in row["figure"] for row in result["headline"])


def test_check_catches_a_wrong_kernel(monkeypatch):
    real = _backend.BACKENDS["cpu"].module

    class WrongKernel:
        """The real extension, except that the optimizer step gets one element wrong."""

        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def optimizer_step(*args):
            real.optimizer_step(*args)
            param = args[5]
            param[param.size // 2] += 1e-3

    monkeypatch.setattr(_backend.BACKENDS["cpu"], "_module", WrongKernel())
    with pytest.raises(CheckFailed, match=r"fastopt\[cpu\]: Adam param of tensor 0\[515\]"):
        run(tiny_config())


def test_cli_fails_loudly_on_a_wrong_kernel(monkeypatch, capsys):
    real = _backend.BACKENDS["cpu"].module

    class ForgetsTheState:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def optimizer_step(*args):
            saved = [s.copy() for s in args[8]]
            real.optimizer_step(*args)
            for s, old in zip(args[8], saved):
                s[...] = old

    monkeypatch.setattr(_backend.BACKENDS["cpu"], "_module", ForgetsTheState())
    status = bench_main(["--quick", "--only", "SGD", "--sizes", "7", "--threads", "1", "--repeats", "1"])
    assert status == 1
    err = capsys.readouterr().err
    assert "CORRECTNESS CHECK FAILED" in err and "SGD param" in err and "elements wrong" in err


def test_json_has_the_machine_description(tmp_path, capsys):
    path = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    status = bench_main(["--quick", "--only", "Adam", "--sizes", "1031", "--threads", "1", "--repeats", "1",
                         "--json", str(path), "--plot", str(png), "--markdown", str(tmp_path / "bench.md")])
    assert status == 0
    result = json.loads(path.read_text())
    machine = result["machine"]
    for key in ("cpu", "logical_cpus", "memory_gib", "python", "numpy", "fastopt", "backends", "platform",
                "date_utc", "load_average_at_start", "environment"):
        assert key in machine, key
    assert machine["backends"]["cpu"]["available"]
    assert result["config"]["sizes"] == [1031]
    assert any(r["impl"] == "fastopt[cpu]" and r["workload"] == "Adam" for r in result["records"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| Adam | 1.03e+03 | 1 | fastopt[cpu] |" in table


def test_cli_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--threads", "0"])
    from fastopt.__main__ import main

    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


# ---- BatchNorm ----------------------------------------------------------------------------------------

def small_batchnorm(monkeypatch):
    shapes = (workloads.BatchNormSpec("(6,3,5,7) NCHW", (6, 3, 5, 7), 1),
              workloads.BatchNormSpec("(6,5,7,3) NHWC", (6, 5, 7, 3), -1),
              workloads.BatchNormSpec("(33,4)", (33, 4), 1))
    monkeypatch.setattr(workloads, "BATCHNORM", shapes)
    monkeypatch.setattr(workloads, "BATCHNORM_QUICK", tuple(s.name for s in shapes))


def numpy_batch_norm(error=0.0):
    """A stand-in for fastopt's BatchNorm kernels with the API.md signature (float32 NumPy)."""

    def forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
                momentum=0.1, eps=1e-5, axis=1, backend=None):
        bn = references.NumpyBatchNorm(x, axis, eps, momentum)
        y, mean, invstd = bn.forward(x, weight, bias, running_mean, running_var)
        return y + np.float32(error), mean.astype(np.float32), invstd.astype(np.float32)

    def backward(dy, x, weight, save_mean, save_invstd, *, axis=1, training=True, backend=None):
        bn = references.NumpyBatchNorm(x, axis)
        return bn.backward(dy, x, weight, save_mean, save_invstd)

    return forward, backward


def test_batchnorm_is_skipped_with_a_message_when_absent(monkeypatch):
    small_batchnorm(monkeypatch)
    monkeypatch.delattr(fastopt, "batch_norm_forward", raising=False)
    result = run(tiny_config(only="batchnorm"))
    skipped = [r for r in result["records"] if r["kind"] == "batchnorm"]
    assert len(skipped) == 6 and all("batch_norm_forward does not exist" in r["skipped"] for r in skipped)


def test_batchnorm_workloads_check_and_time(monkeypatch):
    small_batchnorm(monkeypatch)
    forward, backward = numpy_batch_norm()
    monkeypatch.setattr(fastopt, "batch_norm_forward", forward, raising=False)
    monkeypatch.setattr(fastopt, "batch_norm_backward", backward, raising=False)
    result = run(tiny_config(only="batchnorm"))
    fast = [r for r in result["records"] if r["kind"] == "batchnorm" and r["impl"] == "fastopt[cpu]"]
    assert len(fast) == 6
    for r in fast:
        assert r["check"]["passed"] and r["fraction_of_limit"] > 0
        direction = "forward" if "forward" in r["workload"] else "backward"
        passes = batchnorm_passes(tuple(r["shape"]), r["axis"], direction, r["threads"])
        assert r["passes"] == passes
        assert r["bytes_per_element"] == pattern_bytes(passes, 4)
        if torch is not None:
            assert "torch" in r["speedup"]  # torch's batch_norm agreed with the reference too


def test_batchnorm_limit_counts_the_reads_the_layout_needs():
    """One read of the inputs where a group of channels stays cached between the statistics and
    the output (channels-first, small slices), two where channels spread over the whole tensor
    (channels-last, (N, C)) or a channel's slice is too big to cache; one write either way."""
    pytest.importorskip("fastopt._cpu")
    assert batchnorm_passes((64, 64, 56, 56), 1, "forward", 2) == [(1, 0, 1)]
    assert batchnorm_passes((64, 64, 56, 56), 1, "backward", 2) == [(2, 0, 1)]
    assert batchnorm_passes((64, 56, 56, 64), -1, "forward", 2) == [(1, 0, 0), (1, 0, 1)]
    assert batchnorm_passes((8192, 1024), 1, "backward", 2) == [(2, 0, 0), (2, 0, 1)]
    assert batchnorm_passes((4, 2, 1024, 1024), 1, "forward", 1) == [(1, 0, 0), (1, 0, 1)]


def test_batchnorm_check_catches_a_wrong_kernel(monkeypatch):
    small_batchnorm(monkeypatch)
    forward, backward = numpy_batch_norm(error=1e-2)
    monkeypatch.setattr(fastopt, "batch_norm_forward", forward, raising=False)
    monkeypatch.setattr(fastopt, "batch_norm_backward", backward, raising=False)
    with pytest.raises(CheckFailed, match="BatchNorm y"):
        run(tiny_config(only="batchnorm"))


# ---- the workloads ------------------------------------------------------------------------------------

def test_model_shapes_have_the_published_parameter_counts():
    count = lambda shapes: sum(int(np.prod(s)) for s in shapes)  # noqa: E731
    assert count(workloads.resnet50_shapes()) == 25_557_032 and len(workloads.resnet50_shapes()) == 161
    assert count(workloads.gpt2_small_shapes()) == 124_439_808 and len(workloads.gpt2_small_shapes()) == 148
    assert count(workloads.many_small_shapes()) == 1_000_000 and len(workloads.many_small_shapes()) == 100


def test_headline_reads_the_records():
    records = [
        {"kind": "optimizer", "workload": "Adam", "impl": "fastopt[cpu]", "threads": 2, "size": 64_000_000,
         "dtype": "float32", "seconds": 1.0, "fraction_of_limit": 0.95, "speedup": {"torch-fused": 1.1}},
        {"kind": "optimizer", "workload": "SGD", "impl": "fastopt[cpu]", "threads": 2, "size": 64_000_000,
         "dtype": "float32", "seconds": 1.0, "fraction_of_limit": 0.85, "speedup": {}},
        {"kind": "model", "workload": "gpt2-small Adam", "impl": "fastopt[cpu]", "threads": 2, "size": 5,
         "dtype": "float32", "seconds": 1.0, "speedup": {"torch-fused": 1.3}},
        {"kind": "batchnorm", "workload": "BN forward (8,8)", "impl": "fastopt[cpu]", "threads": 2, "size": 64,
         "dtype": "float32", "seconds": 1.0, "fraction_of_limit": 0.82, "speedup": {"torch": 3.5}},
        {"kind": "batchnorm", "workload": "BN backward (8,8)", "impl": "fastopt[cpu]", "threads": 2, "size": 64,
         "dtype": "float32", "seconds": 1.0, "fraction_of_limit": 0.68, "speedup": {"torch": 1.5}},
    ]
    rows = {name.split(":")[0].split(" (")[0]: (value, met) for name, value, _, met in bench_runner.headline(records)}
    assert rows["BatchNorm"] == (0.68, False)
    assert rows["BatchNorm forward vs torch, lowest over shapes"] == (3.5, True)
    assert rows["BatchNorm backward vs torch, lowest over shapes"] == (1.5, False)
    assert rows["every fp32 optimizer at n=6.4e+07"] == (0.85, False)
    assert rows["Adam n=6.4e+07 vs torch fused"] == (1.1, True)
    assert rows["gpt2-small Adam vs torch fused over the tensor list"] == (1.3, True)


def test_headline_has_no_bandwidth_target_for_in_cache_sizes():
    """The 90% and torch-fused targets are for 6.4e7 elements: a --quick run stops at 1e6."""
    records = [{"kind": "optimizer", "workload": "Adam", "impl": "fastopt[cpu]", "threads": 2, "size": 1_000_000,
                "dtype": "float32", "seconds": 1.0, "fraction_of_limit": 0.5, "speedup": {"torch-fused": 0.9}}]
    assert not any("optimizer at" in row[0] or "Adam n=" in row[0] for row in bench_runner.headline(records))


def test_a_reference_that_disagrees_is_reported_not_timed(monkeypatch):
    right_step = impls.NumpyOptimizer.step

    def wrong_step(self):
        right_step(self)
        self.opts[0].param[0] += 1.0

    monkeypatch.setattr(impls.NumpyOptimizer, "step", wrong_step)
    result = run(tiny_config(only="Adam", sizes=(7,), threads=[1]))
    numpy_adam = [r for r in result["records"] if r["workload"] == "Adam" and r["impl"] == "numpy"]
    assert len(numpy_adam) == 1 and numpy_adam[0]["skipped"].startswith("CHECK FAILED")
    assert "not timed" in bench_runner.markdown_table(result["records"])


def test_only_selects_by_whole_names():
    cfg = tiny_config(only="Adam,gpt2")
    assert cfg.wants("Adam", "optimizers") and not cfg.wants("AdamW", "optimizers")
    assert not cfg.wants("NAdam", "optimizers") and not cfg.wants("Adamax", "optimizers")
    assert cfg.wants("gpt2-small", "AdamW", "models") and not cfg.wants("resnet50", "SGD", "models")
    assert tiny_config(only=None).wants("anything")


def test_module_entry_point_runs():
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-m", "fastopt", "bench", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout and "--json" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fastopt"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "bench" in out.stderr


def test_measure_interleaves_and_caps_its_time():
    import time

    from fastopt.bench.timing import measure

    order = []
    fast = lambda: order.append("a")  # noqa: E731
    slow = lambda: (order.append("b"), time.sleep(0.01))  # noqa: E731
    (_, s_fast), (t_slow, s_slow) = measure([fast, slow], repeats=100, target_sample_s=0.001,
                                                 warmup=1, max_time_s=0.05)
    assert 3 <= len(s_slow) < 100 and len(s_fast) == len(s_slow)
    assert t_slow >= 0.01  # a sample never reads less than the sleep it timed
    timed = order[order.index("b") + 2:]  # after the warm-up and calibration calls
    assert "a" in timed[timed.index("b"):]  # the callables take turns


def test_a_backend_without_the_kernel_is_listed_not_fatal(monkeypatch):
    real = _backend.BACKENDS["cpu"].module

    class NoOptimizers:
        def __getattr__(self, name):
            if name == "optimizer_step":
                raise AttributeError("module has no attribute 'optimizer_step'")
            return getattr(real, name)

    monkeypatch.setattr(_backend.BACKENDS["cpu"], "_module", NoOptimizers())
    result = run(tiny_config(only="SGD", sizes=(7,)))
    fast = [r for r in result["records"] if r["impl"] == "fastopt[cpu]"]
    assert fast and all("cannot run this workload: AttributeError" in r["skipped"] for r in fast)
    assert any(r["impl"] == "numpy" and "seconds" in r for r in result["records"])
    assert "Not measured:" in bench_runner.markdown_table(result["records"])


def test_gpu_references_and_passes_without_a_gpu():
    """What the CUDA rows add that runs here: the CUDA kernels' passes (two reads of the inputs),
    and torch's GPU references reporting why they cannot run (no CUDA device)."""
    assert batchnorm_passes((8, 4, 5, 5), 1, "forward", 1, "cuda") == [(1, 0, 0), (1, 0, 1)]
    assert batchnorm_passes((8, 4, 5, 5), 1, "backward", 1, "cuda") == [(2, 0, 0), (2, 0, 1)]
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch has a CUDA device here")
    spec = workloads.OPTIMIZER_BY_NAME["Adam"]
    with pytest.raises(impls.Skipped, match="no CUDA device"):
        impls.TorchOptimizer(spec, impls.StepData([(16,)]), "fused", device="cuda")
    with pytest.raises(impls.Skipped, match="no CUDA device"):
        impls.TorchBatchNorm(impls.BatchNormData((4, 3, 2), 1), "cuda")
    assert not Config(backends=["cuda"]).cuda_only  # cuda unavailable here: nothing left to run on it



# ---- the many-tensors row and the command line's refusals -------------------------------------

def test_list_row_checks_and_times_against_flat_and_torch(monkeypatch):
    monkeypatch.setattr(workloads, "MODELS", (workloads.ModelSpec("three", lambda: [(3, 5), (7,), (1000,)], ("AdamW",)),))
    monkeypatch.setattr(workloads, "MODELS_QUICK", ("three",))
    result = run(tiny_config(only="lists"))
    by_impl = {r["impl"]: r for r in result["records"] if r.get("kind") == "list"}
    listed = by_impl["fastopt[cpu] list"]
    assert listed["tensors"] == 3 and listed["check"]["passed"] and listed["speed_vs_flat"] > 0
    assert by_impl["fastopt[cpu] flat"]["interleaved_with_list"]
    if torch is not None:
        assert listed["speed_vs_torch_fused"] > 0
    assert any("FlatParams" in row["figure"] for row in result["headline"])


def test_list_row_catches_a_wrong_segment_table(monkeypatch):
    monkeypatch.setattr(workloads, "MODELS", (workloads.ModelSpec("three", lambda: [(3, 5), (7,), (1000,)], ("Adam",)),))
    monkeypatch.setattr(workloads, "MODELS_QUICK", ("three",))
    real = _backend.BACKENDS["cpu"].module

    class SkipsLastArray:
        def __getattr__(self, name):
            return getattr(real, name)

        def multi_step(self, *args):
            args = list(args)
            for k in (5, 6, 8, 10, 11):  # params, grads, states, row_of, seeds lists
                args[k] = args[k][:-1]
            return real.multi_step(*args)

    monkeypatch.setattr(_backend.BACKENDS["cpu"], "_module", SkipsLastArray())
    with pytest.raises(CheckFailed):
        run(tiny_config(only="lists"))


def test_cli_refuses_unknown_names_and_unavailable_backends(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["--only", "Adamm"])
    assert exc.value.code != 0 and "unknown name(s) adamm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["--backends", "tpu"])
    if not fastopt.backends()["cuda"]["available"]:
        assert bench_main(["--backends", "cuda"]) != 0
        assert "cuda is unavailable" in capsys.readouterr().err


def test_fused_batchnorm_rows_check_and_time(monkeypatch):
    """BN+ReLU and BN+add+ReLU rows: fused, unfused (fastopt + NumPy passes) and torch, each with
    the fused minimal passes' limit; the unfused and torch results are checked against the fused."""
    pytest.importorskip("fastopt._cpu")
    from fastopt.bench.bn_fused import fused_bytes, fused_passes

    small_batchnorm(monkeypatch)
    result = run(tiny_config(only="bnfused"))
    rows = [r for r in result["records"] if r["kind"] == "batchnorm_fused"]
    impls_per_row = 4 if torch is not None else 3
    assert len([r for r in rows if "seconds" in r]) == 3 * 2 * impls_per_row
    assert {r["impl"] for r in rows} >= {"fastopt[cpu] fused", "fastopt[cpu] fused, byte mask"}
    for r in rows:
        if "seconds" not in r:
            continue
        residual = r["workload"].startswith("BN+add+ReLU")
        passes, mask_passes = fused_passes(tuple(r["shape"]), r["axis"], residual, r["threads"],
                                           mask=r["impl"].endswith("byte mask"))
        assert r["passes"] == passes and r["mask_passes"] == mask_passes
        assert r["bytes_per_element"] == fused_bytes(passes, mask_passes)
        assert 0 < r["fraction_of_limit"] and r["limit_seconds"] > 0
    # Forward: x (+ z) read, y written; backward: dy, x, y read, dx (+ dresidual) written. With the
    # byte mask: the forward writes it, the backward reads it instead of y (1 byte for 4).
    assert fused_bytes(*fused_passes((64, 64, 56, 56), 1, True, 2)) == 4 * (2 + 1 + 3 + 2)
    assert fused_bytes(*fused_passes((64, 56, 56, 64), -1, False, 2)) == 4 * (1 + 1 + 1 + 3 + 3 + 1)
    assert fused_bytes(*fused_passes((64, 64, 56, 56), 1, True, 2, mask=True)) == 4 * (2 + 1 + 2 + 2) + 1 + 1
    assert fused_bytes(*fused_passes((64, 56, 56, 64), -1, False, 2, mask=True)) == 4 * (1 + 1 + 1 + 2 + 2 + 1) + 1 + 2


def test_ema_row_checks_and_times_against_torch_and_the_limit():
    result = run(tiny_config(only="ema", sizes=(10_000,)))
    rows = [r for r in result["records"] if r.get("kind") == "ema"]
    fused = next(r for r in rows if r["impl"] == "fastopt[cpu] Adam+EMA")
    assert fused["bytes_per_element"] == 36 and fused["check"]["ema_equals_lerp_pass"]
    assert 0 < fused["fraction_of_limit"] and fused["seconds"] > 0
    if torch is not None:
        assert fused["speed_vs_torch_fused_plus_lerp"] > 0
        assert any(r["impl"].startswith("torch-fused Adam") for r in rows)
