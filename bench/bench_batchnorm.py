"""BatchNorm forward (training) and backward throughput, fastopt against torch's CPU batch_norm.

    PYTHONPATH=python python bench/bench_batchnorm.py [--repeats 7] [--threads N] [--json out.json]

Bytes model (the minimal passes of DESIGN.md): the training forward reads x twice (statistics,
then normalization) and writes y once: 3 * n * itemsize; the backward reads dy and x twice
(channel sums, then dx) and writes dx once: 5 * n * itemsize. GB/s below is that many bytes over
the median time, for both libraries; the best time is printed too (on a shared machine it is
the closer estimate of what the code can do). The bandwidth limit is measured in the same run: the best of
a NumPy copy and a multi-threaded torch add, counted as 2 and 3 streams. Results are checked
against each other before anything is timed.
"""
import argparse
import json
import statistics
import time

import numpy as np

import fastopt

SHAPES = [("NCHW (64,64,56,56)", (64, 64, 56, 56), 1),
          ("NHWC (64,56,56,64)", (64, 56, 56, 64), -1),
          ("NC (8192,1024)", (8192, 1024), 1)]


def timings(fn, repeats, warmup=2):
    """(median, best) seconds of `repeats` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def median_time(fn, repeats):
    return timings(fn, repeats)[0]


def bandwidth_limit(repeats):
    import torch

    n = 64 * 1024 * 1024 // 4  # 64 MiB per array: far out of cache
    a = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    b = np.empty_like(a)
    copy = 2 * a.nbytes / median_time(lambda: np.copyto(b, a), repeats)
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n)
    add = 3 * a.nbytes / median_time(lambda: torch.add(ta, tb, out=tc), repeats)
    return max(copy, add), {"numpy_copy_GBps": copy / 1e9, "torch_add_GBps": add / 1e9}


def torch_tensor(array, axis):
    import torch

    t = torch.from_numpy(array)
    return t.permute(0, 3, 1, 2) if axis == -1 else t  # NHWC data as a channels-last NCHW tensor


def bench_shape(label, shape, axis, repeats):
    import torch

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
    dy = rng.standard_normal(shape, dtype=np.float32)
    c = shape[axis]
    weight = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.uniform(-1, 1, c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    stats = (np.empty(c, np.float32), np.empty(c, np.float32))
    grads = (np.empty(c, np.float32), np.empty(c, np.float32))

    def fo_forward():
        fastopt.batch_norm_forward(x, weight, bias, rm, rv, training=True, axis=axis, out=y, stats_out=stats)

    def fo_backward():
        fastopt.batch_norm_backward(dy, x, weight, stats[0], stats[1], axis=axis, out=dx, grads_out=grads)

    xt, dyt = torch_tensor(x, axis), torch_tensor(dy, axis)
    wt, bt = torch.from_numpy(weight), torch.from_numpy(bias)
    rmt, rvt = torch.zeros(c), torch.ones(c)
    saved = {}

    def t_forward():
        saved["out"] = torch.ops.aten.native_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)

    def t_backward():
        _, mean_t, invstd_t = saved["out"]
        torch.ops.aten.native_batch_norm_backward(dyt, xt, wt, rmt, rvt, mean_t, invstd_t, True, 1e-5,
                                                  [True, True, True])

    # Correctness first: the two libraries agree.
    fo_forward()
    fo_backward()
    t_forward()
    yt = saved["out"][0]
    dxt, dwt, dbt = torch.ops.aten.native_batch_norm_backward(dyt, xt, wt, rmt, rvt, saved["out"][1],
                                                              saved["out"][2], True, 1e-5, [True, True, True])
    y_ref = yt.permute(0, 2, 3, 1).numpy() if axis == -1 else yt.numpy()
    dx_ref = dxt.permute(0, 2, 3, 1).numpy() if axis == -1 else dxt.numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-4 * float(np.abs(dx_ref).max()))
    np.testing.assert_allclose(grads[0], dwt.numpy(), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(grads[1], dbt.numpy(), rtol=1e-3, atol=1e-2)

    nbytes = x.nbytes
    rows = []
    for phase, fo_fn, t_fn, streams in (("forward", fo_forward, t_forward, 3), ("backward", fo_backward, t_backward, 5)):
        t_fo, best_fo = timings(fo_fn, repeats)
        t_t, best_t = timings(t_fn, repeats)
        rows.append({"shape": label, "phase": phase, "bytes": streams * nbytes,
                     "fastopt_ms": t_fo * 1e3, "torch_ms": t_t * 1e3,
                     "fastopt_best_ms": best_fo * 1e3, "torch_best_ms": best_t * 1e3,
                     "fastopt_GBps": streams * nbytes / t_fo / 1e9, "torch_GBps": streams * nbytes / t_t / 1e9,
                     "speedup": t_t / t_fo})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: all)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    from fastopt.bench.runner import keep_freed_memory

    print(f"allocator: {keep_freed_memory()}")  # torch at its best: no page faults on its outputs
    import torch

    if args.threads:
        fastopt.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    threads = {"fastopt": fastopt.get_num_threads(), "torch": torch.get_num_threads()}
    limit, bw = bandwidth_limit(args.repeats)
    print(f"threads {threads}; bandwidth limit {limit / 1e9:.1f} GB/s "
          f"(numpy copy {bw['numpy_copy_GBps']:.1f}, torch add {bw['torch_add_GBps']:.1f}); "
          f"median of {args.repeats}; cpu isa {fastopt.backends()['cpu'].get('isa')}")
    header = (f"{'shape':22s} {'phase':9s} {'fastopt ms':>10s} {'GB/s':>6s} {'%lim':>5s} {'torch ms':>9s} "
              f"{'GB/s':>6s} {'%lim':>5s} {'speedup':>7s}   best ms: fastopt / torch")
    print(header)
    rows = []
    for label, shape, axis in SHAPES:
        for row in bench_shape(label, shape, axis, args.repeats):
            row["fastopt_fraction_of_limit"] = row["fastopt_GBps"] * 1e9 / limit
            row["torch_fraction_of_limit"] = row["torch_GBps"] * 1e9 / limit
            rows.append(row)
            print(f"{row['shape']:22s} {row['phase']:9s} {row['fastopt_ms']:10.2f} {row['fastopt_GBps']:6.1f} "
                  f"{100 * row['fastopt_fraction_of_limit']:5.0f} {row['torch_ms']:9.2f} {row['torch_GBps']:6.1f} "
                  f"{100 * row['torch_fraction_of_limit']:5.0f} {row['speedup']:6.2f}x   "
                  f"{row['fastopt_best_ms']:.2f} / {row['torch_best_ms']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": threads, "bandwidth_limit_GBps": limit / 1e9, **bw, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
