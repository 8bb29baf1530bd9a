"""Compiles the .cu sources of this folder through CuPy (NVRTC) on first use, and caches them
(in memory here, and on disk by CuPy's kernel cache)."""
import functools

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
