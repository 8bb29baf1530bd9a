"""Run under mpiexec with one GPU per rank: the NCCL transport against the plain CuPy optimizer
(deterministic mode: bitwise; fast mode: close). Prints 'OK <n> checks' per rank."""
import cupy
import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import NcclTransport, ShardedOptimizer
from fastopt.distributed._layout import NORM_BLOCK

comm = MPI.COMM_WORLD
N, RANK = comm.size, comm.rank
cupy.cuda.Device(RANK % cupy.cuda.runtime.getDeviceCount()).use()
transport = NcclTransport(comm)
P = 2 * 3 * NORM_BLOCK + 1234
CHECKS = 0


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        raise AssertionError(f"rank {RANK} of {N}: {what}")


for cls, options in [(fastopt.AdamW, dict(lr=1e-2)), (fastopt.SGD, dict(lr=0.1, momentum=0.9)),
                     (fastopt.Adam, dict(lr=1e-2, master_weights=True))]:
    dtype = np.float16 if options.get("master_weights") else np.float32
    for det in (True, False):
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal(P).astype(dtype)
        grads = [[rng.standard_normal(P).astype(dtype) for _ in range(N)] for _ in range(3)]
        param = cupy.asarray(p0)
        opt = ShardedOptimizer(cls, param, None, transport=transport, deterministic=det, **options)
        ref = cupy.asarray(p0)
        plain = cls(ref, **options)
        for parts in grads:
            opt.step(cupy.asarray(parts[RANK]))
            total = cupy.asarray(parts[0])
            for g in parts[1:]:
                total += cupy.asarray(g)
            plain.step(total, grad_scale=float(N))
        got, want = cupy.asnumpy(param), cupy.asnumpy(ref)
        if det:
            check(np.array_equal(got.view(np.uint8), want.view(np.uint8)), f"{cls.__name__} deterministic")
        else:
            check(np.allclose(got.astype(np.float64), want, rtol=1e-3, atol=1e-3), f"{cls.__name__} fast")
        digests = comm.allgather(got.tobytes())
        check(all(d == digests[0] for d in digests), "the same parameters on every rank")
print(f"OK {CHECKS} checks", flush=True)
