"""Compiles the .cu sources of this folder through CuPy (NVRTC) on first use, and caches them
(in memory here, and on disk by CuPy's kernel cache)."""
import functools

import numpy as np

from ._nvrtc import nvrtc_options, read_source


@functools.lru_cache(maxsize=None)
def raw_module(source_name, name_expressions):
    """The cupy.RawModule of `source_name` with the given template instantiations (a tuple)."""
    import cupy

    return cupy.RawModule(code=read_source(source_name), options=nvrtc_options(),
                          name_expressions=list(name_expressions))


def kernel(source_name, name_expression):
    """One __global__ function (a template instantiation) of a source, compiled on first use."""
    return raw_module(source_name, (name_expression,)).get_function(name_expression)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id):
    import cupy

    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]


class CupyDevice:
    """Where the launchers run their kernels: CuPy, on the GPU that holds `array`. The launchers
    own every launch decision (names, grids, blocks, arguments); the test emulator of the CUDA
    execution model passes its own device to the same functions."""

    def __init__(self, array):
        self._device = array.device

    def multiprocessors(self):
        return _multiprocessors(self._device.id)

    def address(self, a):
        return a.data.ptr

    def empty(self, n, dtype):
        import cupy

        with self._device:
            return cupy.empty(n, dtype)

    def zeros(self, n, dtype):
        import cupy

        with self._device:
            return cupy.zeros(n, dtype)

    def upload(self, host):
        """A device copy of the NumPy array `host`."""
        import cupy

        with self._device:
            return cupy.asarray(host)

    def pointer_table(self, arrays):
        """A device array of the addresses of `arrays` (uint64), for a kernel argument; the arrays
        must stay alive until the launch that reads it has run."""
        return self.upload(np.array([a.data.ptr for a in arrays], np.uint64))

    def launch(self, source_name, name_expressions, name, grid, block, args):
        """Runs `name`, one of the instantiations `name_expressions` compiled together."""
        with self._device:
            raw_module(source_name, tuple(name_expressions)).get_function(name)(grid, block, args)

    def to_float(self, a):
        """a[0] on the host."""
        return float(a.get()[0])
