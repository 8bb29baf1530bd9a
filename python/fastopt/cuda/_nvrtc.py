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


# ---- NVRTC through ctypes: compiling without CuPy or a GPU (the CI compile check) -------------

def _load_nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel (or the system), with its builtins loaded
    first so that NVRTC's own dlopen of them succeeds without LD_LIBRARY_PATH."""
    import ctypes
    import glob
    import importlib.util

    candidates = []
    spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(os.path.join(location, "lib"))
    candidates += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    for folder in candidates:
        libs = sorted(glob.glob(os.path.join(folder, "libnvrtc.so*")))
        libs = [p for p in libs if "builtins" not in p]
        if not libs:
            continue
        for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        return ctypes.CDLL(libs[0])
    raise OSError("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)")


class NvrtcError(RuntimeError):
    pass


def compile_check(source_name, name_expressions, arch, extra_options=(), source=None):
    """Compiles `source_name` with every template instantiation in `name_expressions` for `arch`
    (e.g. "compute_80" for PTX, "sm_90" for SASS) with the production options. Returns the
    compile log (with `extra_options` such as "--ptxas-options=-v" for an sm_ target, it reports
    registers and spills; `source` replaces the file's text, e.g. to show a broken kernel fails);
    raises NvrtcError with the log when compilation fails or a name is missing."""
    import ctypes

    nvrtc = _load_nvrtc()
    prog = ctypes.c_void_p()
    source = (read_source(source_name) if source is None else source).encode()

    def check(status, what):
        if status != 0:
            nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise NvrtcError(f"{what}: {nvrtc.nvrtcGetErrorString(status).decode()}")

    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, source_name.encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"nvrtcAddNameExpression({name})")
        options = [o.encode() for o in nvrtc_options(arch) + tuple(extra_options)]
        status = nvrtc.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        log_text = log.value.decode(errors="replace")
        if status != 0:
            raise NvrtcError(f"compiling {source_name} for {arch} failed:\n{log_text}")
        for name in name_expressions:
            lowered = ctypes.c_char_p()
            check(nvrtc.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)),
                  f"nvrtcGetLoweredName({name})")
        return log_text
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
