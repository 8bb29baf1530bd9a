"""The memory-bandwidth limit of an access pattern, measured by a streaming loop that moves the
same bytes as the kernel and does no other work.

A pattern is a list of passes over n elements, each pass (read_only, read_write, write_only):
an optimizer step is one pass (grad read only; param and each state read and written in place),
clipping adds a read-only pass over the gradient, a BatchNorm forward is (1, 0, 1).
"""
import numpy as np


def pattern_bytes(passes, itemsize):
    """Bytes per element the passes move (a read-write array counts twice)."""
    return sum((ro + 2 * rw + wo) * itemsize for ro, rw, wo in passes)


class Stream:
    """Callable running the passes once on arrays of its own; `limit` tells where it can run."""

    def __init__(self, backend, dtype, n, passes, threads):
        self.dtype = np.dtype(dtype)
        self.n, self.passes, self.threads = n, list(passes), threads
        width = max(ro + rw + wo for ro, rw, wo in self.passes)
        if backend == "cuda":
            import cupy

            self._arrays = [cupy.ones(n, self.dtype) for _ in range(width)]
            self._kernels = {p: _cupy_stream_kernel(*p) for p in set(self.passes)}
            self._run = self._run_cuda
        else:
            from .. import _cpu

            self._module = _cpu
            self._arrays = [np.ones(n, self.dtype) for _ in range(width)]
            self._run = self._run_cpu
        self._per_pass = [self._arrays[:ro + rw + wo] for ro, rw, wo in self.passes]

    @property
    def bytes_per_element(self):
        return pattern_bytes(self.passes, self.dtype.itemsize)

    def __call__(self):
        self._run()

    def _run_cpu(self):
        stream, threads = self._module.stream, self.threads
        for arrays, (ro, rw, wo) in zip(self._per_pass, self.passes):
            stream(arrays, ro, rw, wo, threads)

    def _run_cuda(self):
        for arrays, p in zip(self._per_pass, self.passes):
            self._kernels[p](*arrays)

    def close(self):
        self._arrays = self._per_pass = []


def _cupy_stream_kernel(ro, rw, wo):
    """The CPU stream's loop as a CuPy elementwise kernel (outputs are read as well as written)."""
    import cupy

    read = [f"r{k}" for k in range(ro)] + [f"w{k}" for k in range(rw)]
    outs = [f"w{k}" for k in range(rw)] + [f"o{k}" for k in range(wo)]
    body = "T s = " + (" + ".join(read) if read else "T(0)") + f"; s = s / T({max(1, ro + rw)});"
    body += "".join(f" {name} = s;" for name in outs)
    in_params = ", ".join(f"T {name}" for name in read[:ro]) or ""
    out_params = ", ".join(f"T {name}" for name in outs)
    if not out_params:  # a read-only pass: reduce, so the loads are kept
        return cupy.ReductionKernel(in_params, "T total", " + ".join(read), "a + b", "total = a", "0",
                                    f"fastopt_stream_{ro}_{rw}_{wo}")
    return cupy.ElementwiseKernel(in_params, out_params, body, f"fastopt_stream_{ro}_{rw}_{wo}")
