"""NVRTC compile options: the one function used both by the runtime loader (through CuPy) and
by the compile check that runs in CI without a GPU, so that the two cannot drift."""
import os

# Architectures every kernel must compile for (CUDA 13 dropped sm_70; 75 is the oldest kept).
TARGET_ARCHS = ("compute_75", "compute_80", "compute_90")
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


def include_dir():
    """The installed math headers (csrc/fastopt/math in the source tree)."""
    return os.path.join(os.path.dirname(SOURCE_DIR), "include")


def nvrtc_options(arch=None):
    """Options for every kernel source: no FMA contraction (bitwise agreement with the CPU
    backends), IEEE sqrt and division, C++17, the math headers on the include path."""
    options = ["--std=c++17", "--fmad=false", "--prec-sqrt=true", "--prec-div=true", "--ftz=false",
               "-I" + include_dir()]
    if arch is not None:
        options.append("--gpu-architecture=" + arch)
    return tuple(options)


def read_source(name):
    with open(os.path.join(SOURCE_DIR, name)) as f:
        return f.read()
