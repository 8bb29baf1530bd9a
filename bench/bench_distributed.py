"""fastopt.distributed: bytes, optimizer-state memory and step time per rank, at N = 1, 2, 4.

    python bench/bench_distributed.py                 # launches mpiexec -n 1, 2, 4 and prints a table
    mpiexec -n 2 python -m mpi4py bench/bench_distributed.py --worker   # one rank count, JSON lines

Bytes are counted from the buffers each rank hands to MPI for other ranks (the payload), against
the formula 2 (N - 1) / N x P_padded x bytes per element. On a 2-core machine the ranks share the
cores, so the times show the overhead of sharding and of the deterministic sums, not scaling.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def worker(size, steps):
    from mpi4py import MPI

    import fastopt
    from fastopt.distributed import ShardedOptimizer

    comm = MPI.COMM_WORLD
    n, rank = comm.size, comm.rank
    rng = np.random.default_rng(rank)
    grad = rng.standard_normal(size).astype(np.float32)
    rows = []
    for mode in ("fast", "deterministic"):
        param = np.zeros(size, np.float32)
        opt = ShardedOptimizer(fastopt.AdamW, param, comm, deterministic=mode == "deterministic", lr=1e-4)
        opt.step(grad, max_grad_norm=1.0)  # creates the state
        before, times = opt.bytes_sent, []
        for _ in range(steps):
            comm.Barrier()
            start = time.perf_counter()
            opt.step(grad, max_grad_norm=1.0)
            comm.Barrier()
            times.append(time.perf_counter() - start)
        per_step = (opt.bytes_sent - before) / steps
        state = sum(v.nbytes for v in opt.state.values() if hasattr(v, "nbytes"))
        formula = 2 * (n - 1) / n * size * 4  # the average over ranks; the norm block sums come on top
        rows.append(dict(ranks=n, mode=mode, elements=size, bytes_per_step=comm.allreduce(per_step) / n,
                         bytes_per_step_max=comm.allreduce(per_step, op=MPI.MAX), formula=formula,
                         state_bytes_max=comm.allreduce(state, op=MPI.MAX), state_bytes_unsharded=8 * size,
                         step_ms=1e3 * float(np.median(times))))
    if n == 1:  # the plain optimizer, for the overhead of the wrapper itself
        param = np.zeros(size, np.float32)
        opt = fastopt.AdamW(param, lr=1e-4)
        opt.step(grad, max_grad_norm=1.0)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            opt.step(grad, max_grad_norm=1.0)
            times.append(time.perf_counter() - start)
        rows.append(dict(ranks=1, mode="plain fastopt.AdamW", elements=size, bytes_per_step=0, bytes_per_step_max=0,
                         formula=0, state_bytes_max=8 * size, state_bytes_unsharded=8 * size,
                         step_ms=1e3 * float(np.median(times))))
    if rank == 0:
        for row in rows:
            print(json.dumps(row), flush=True)


def driver(ranks, size, steps, out):
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    rows = []
    for n in ranks:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if n > (os.cpu_count() or 1):  # oversubscribed: waiting ranks must give the core away
            env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py", os.path.abspath(__file__), "--worker",
               "--size", str(size), "--steps", str(steps)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
        rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    lines = [f"AdamW, {size} float32 parameters (P b = {size * 4 / 2**20:.0f} MiB), median of {steps} steps "
             f"with max_grad_norm, one thread per rank, on {os.cpu_count()} cores shared with other work "
             "(ranks beyond the core count wait with MPIR_CVAR_ENABLE_HEAVY_YIELD=1): the times show "
             "overhead, not scaling.", "", f"Load average at the end: {os.getloadavg()[0]:.1f}.", "",
             "| ranks | mode | bytes sent / rank / step (counted) | formula 2(N-1)/N P b | "
             "optimizer state / rank | step (ms) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ranks']} | {r['mode']} | {r['bytes_per_step'] / 2**20:.2f} MiB "
                     f"(max {r['bytes_per_step_max'] / 2**20:.2f}) | {r['formula'] / 2**20:.2f} MiB | "
                     f"{r['state_bytes_max'] / 2**20:.1f} MiB of {r['state_bytes_unsharded'] / 2**20:.1f} | "
                     f"{r['step_ms']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run one rank count (under mpiexec)")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--size", type=int, default=1 << 22)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", help="write the table here (Markdown) and the rows beside it (.json)")
    args = parser.parse_args()
    if args.worker:
        worker(args.size, args.steps)
    else:
        driver([int(n) for n in args.ranks.split(",")], args.size, args.steps, args.out)


if __name__ == "__main__":
    main()
