"""A host emulator of the CUDA execution model, for tests: the shipped .cu sources, compiled by g++
against cuda_emu/cuda_shim.h, launched by the CUDA backend's own launchers (fastopt.cuda and
fastopt.cuda.batchnorm, given an EmulatedDevice) on NumPy arrays.

Every launch copies the arrays it is passed into "device" buffers with guard bytes on both sides
and the same address modulo 256 (so that the launcher's alignment choices are the ones it makes
for the host arrays), runs the grid block after block, checks the guards, and copies back.
Kernel arguments are checked against the kernel's parameter types (kind and size).
"""
import contextlib
import ctypes
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import numpy as np

from fastopt import _backend
from fastopt.cuda import _nvrtc

HERE = pathlib.Path(__file__).resolve().parent / "cuda_emu"
BUILD = pathlib.Path(os.environ.get("FASTOPT_EMU_BUILD", HERE.parent.parent / "build" / "cuda-emulator"))
CXX = os.environ.get("CXX") or ("g++" if shutil.which("g++") else "c++")
# -ffp-contract=off is --fmad=false; sqrt and division are IEEE in both; -O1 keeps compiles short;
# no _FORTIFY_SOURCE, whose longjmp check refuses jumps between fiber stacks.
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-fno-math-errno",
         "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", "-Wall", "-Wno-unknown-pragmas", "-Werror"]
GUARD = 256  # bytes on each side of every buffer
GUARD_BYTE = 0xA5
# The emulated device's size; the launchers size grids from it. Small, because every thread costs.
MULTIPROCESSORS = 2


class EmulatorError(RuntimeError):
    """The emulated kernel did what a GPU would fault or misbehave on."""


def _launch_bounds(source):
    """{kernel name: max threads per block} from the source's __launch_bounds__ (a GPU refuses more)."""
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"__launch_bounds__\((\d+)\)\s+(\w+)\s*\(", source)}


def _headers():
    root = pathlib.Path(_nvrtc.include_dir())
    return sorted(root.rglob("*.h"))


def instrument_shared(text):
    """The source with FO_EMU_SHARED(name) after each function-scope __shared__ declaration."""
    def mark(m):
        names = [re.match(r"\s*(\w+)", d).group(1) for d in m.group(2).split(",")]
        return m.group(0) + "".join(f" FO_EMU_SHARED({n});" for n in names)

    marked, count = re.subn(r"__shared__\s+(\w+)\s+([^;]+);", mark, text)
    if count != len(re.findall(r"__shared__", text)):
        raise EmulatorError("a __shared__ declaration of a form the emulator does not know")
    return marked


def _translation_unit(source_file, names):
    entries = "\n".join(f'    {{"{n}", &fo_emu::invoke<&{n}>}},' for n in names)
    return (f'#include "{source_file}"\n#include "registry.h"\n\nnamespace {{\n'
            f"const fo_emu::Entry entries[] = {{\n{entries}\n}};\n"
            "const fo_emu::Registrar registrar(entries, sizeof entries / sizeof entries[0]);\n}\n")


def build(sources, chunks=4):
    """A shared library with the instantiations `sources` maps each source's text to:
    {file name: (text, [name expression, ...])}. Cached under BUILD by a hash of everything that
    goes into it; returns its path."""
    key = hashlib.sha256()
    for part in [CXX, *FLAGS, str(chunks)]:
        key.update(part.encode() + b"\0")
    for path in [pathlib.Path(__file__), *sorted(HERE.glob("*")), *_headers()]:
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    for name in sorted(sources):
        text, names = sources[name]
        key.update(name.encode() + b"\0" + text.encode() + b"\0" + "\n".join(names).encode())
    folder = BUILD / key.hexdigest()[:16]
    lib = folder / "libcuda_emu.so"
    if lib.exists():
        return lib
    BUILD.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(dir=BUILD))
    try:
        units = [HERE / "runtime.cpp"]
        for name, (text, names) in sorted(sources.items()):
            (work / name).write_text(instrument_shared(text))
            per = -(-len(names) // chunks)
            for i in range(0, len(names), per):
                unit = work / f"{name}.{i // per}.cpp"
                unit.write_text(_translation_unit(name, names[i:i + per]))
                units.append(unit)
        common = [CXX, *FLAGS, "-I", str(HERE), "-I", _nvrtc.include_dir(), "-include", str(HERE / "cuda_shim.h")]
        objects, running = [], []
        for unit in units:  # two at a time: CI machines have two cores
            obj = work / (unit.name + ".o")
            running.append((subprocess.Popen([*common, "-c", str(unit), "-o", str(obj)], stderr=subprocess.PIPE,
                                             text=True), unit))
            objects.append(str(obj))
            if len(running) == 2 or unit is units[-1]:
                for proc, what in running:
                    _, err = proc.communicate()
                    if proc.returncode:
                        raise EmulatorError(f"compiling {what.name} failed:\n{err}")
                running = []
        subprocess.run([CXX, "-shared", "-o", str(work / lib.name), *objects], check=True)
        folder.mkdir(exist_ok=True)
        os.replace(work / lib.name, lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def shipped_sources():
    """The installed kernels and every instantiation the launchers can name."""
    import fastopt.cuda as cuda
    from fastopt.cuda import batchnorm, blockwise

    return {cuda.SOURCE: (_nvrtc.read_source(cuda.SOURCE), list(cuda.all_kernel_names())),
            batchnorm.SOURCE: (_nvrtc.read_source(batchnorm.SOURCE), list(batchnorm.all_name_expressions())),
            blockwise.SOURCE: (_nvrtc.read_source(blockwise.SOURCE), list(blockwise.all_kernel_names()))}


def _arg(value):
    """(kind, size, bits) of one launch argument, as CuPy would pack it."""
    if isinstance(value, np.ndarray):
        raise TypeError("arrays are staged before packing")
    if isinstance(value, (bool, np.bool_)):
        return "b", 1, int(bool(value))
    if isinstance(value, int):  # CuPy passes a Python int as int64 and a float as double
        value = np.int64(value)
    elif isinstance(value, float):
        value = np.float64(value)
    if not isinstance(value, np.generic) or value.dtype.kind not in "iuf":
        raise TypeError(f"launch argument of type {type(value).__name__}")
    return value.dtype.kind, value.itemsize, int.from_bytes(value.tobytes().ljust(8, b"\0"), "little")


def _host_bytes(address, size):
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))


class _Staged:
    """Host arrays copied into guarded buffers; overlapping arrays share one buffer."""

    def __init__(self, arrays):
        spans = sorted({(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays})
        self.regions = []  # [start, end, buffer, offset of start in buffer]
        for start, end in spans:
            if self.regions and start < self.regions[-1][1]:
                self.regions[-1][1] = max(self.regions[-1][1], end)
            else:
                self.regions.append([start, end, None, 0])
        for region in self.regions:
            start, end = region[0], region[1]
            raw = np.full(end - start + 3 * GUARD, GUARD_BYTE, np.uint8)
            offset = GUARD + (start - raw.ctypes.data - GUARD) % 256  # same address mod 256
            raw[offset:offset + end - start] = _host_bytes(start, end - start)
            region[2], region[3] = raw, offset

    def address(self, a):
        start = a.ctypes.data
        for lo, hi, raw, offset in self.regions:
            if lo <= start and start + a.nbytes <= hi:
                return raw.ctypes.data + offset + (start - lo)
        raise AssertionError("array was not staged")

    def finish(self, name):
        for lo, hi, raw, offset in self.regions:
            size = hi - lo
            before, after = raw[:offset], raw[offset + size:]
            if (before != GUARD_BYTE).any() or (after != GUARD_BYTE).any():
                bad = np.flatnonzero(np.concatenate([before, after]) != GUARD_BYTE)
                raise EmulatorError(f"{name} wrote outside a buffer of {size} bytes ({bad.size} guard bytes changed)")
            _host_bytes(lo, size)[...] = raw[offset:offset + size]


class _PointerTable:
    """A kernel argument holding the device addresses of `arrays` (staged with the launch)."""

    def __init__(self, arrays):
        self.arrays = list(arrays)


class EmulatedDevice:
    """The device protocol of fastopt.cuda._loader.CupyDevice, on the emulator."""

    def __init__(self, lib_path, multiprocessors=MULTIPROCESSORS, sources=None, launch_hook=None):
        self.lib = ctypes.CDLL(str(lib_path))
        uints = ctypes.POINTER(ctypes.c_uint)
        self.lib.fo_emu_launch.argtypes = [ctypes.c_char_p, uints, uints, ctypes.c_size_t, ctypes.c_int,
                                           ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(ctypes.c_uint64)]
        self.lib.fo_emu_last_error.restype = ctypes.c_char_p
        self._multiprocessors = multiprocessors
        self.bounds = {}
        for text, _ in (sources or shipped_sources()).values():
            self.bounds.update(_launch_bounds(text))
        self.launch_hook = launch_hook  # (name, grid, block) -> (grid, block): to break a launch on purpose
        self.launched = []  # (name, grid, block) of every launch, in order

    def multiprocessors(self):
        return self._multiprocessors

    def address(self, a):
        return a.ctypes.data

    def empty(self, n, dtype):
        out = np.empty(n, dtype)
        out.view(np.uint8)[...] = 0xFF  # what is never written reads as NaN
        return out

    def zeros(self, n, dtype):
        return np.zeros(n, dtype)

    def to_float(self, a):
        return float(a[0])

    def upload(self, host):
        return np.array(host)

    def pointer_table(self, arrays):
        return _PointerTable(arrays)

    def launch(self, source_name, name_expressions, name, grid, block, args):
        if name not in name_expressions:
            raise EmulatorError(f"{name} is not among the instantiations compiled with it")
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        if self.launch_hook is not None:
            grid, block = self.launch_hook(name, grid, block)
        kernel = name.split("<")[0]
        threads = block[0] * block[1] * block[2]
        if threads > self.bounds.get(kernel, 1024):
            raise EmulatorError(f"{name}: {threads} threads per block, over its __launch_bounds__")
        tables = [a for a in args if isinstance(a, _PointerTable)]
        arrays = [a for a in args if isinstance(a, np.ndarray)] + [a for t in tables for a in t.arrays]
        for a in arrays:
            if not a.flags.c_contiguous:
                raise EmulatorError(f"{name}: a kernel argument is not contiguous")
        staged = _Staged(arrays)
        # A pointer table holds the staged (guarded) addresses, and is itself a staged buffer.
        addresses = {id(t): np.array([staged.address(a) for a in t.arrays], np.uint64) for t in tables}
        staged_tables = _Staged(list(addresses.values()))

        def pack(a):
            if isinstance(a, _PointerTable):
                return "p", 8, staged_tables.address(addresses[id(a)])
            return ("p", 8, staged.address(a)) if isinstance(a, np.ndarray) else _arg(a)
        packed = [pack(a) for a in args]
        self.launched.append((name, grid, block))
        n = len(packed)
        status = self.lib.fo_emu_launch(
            name.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), 0, n,
            "".join(k for k, _, _ in packed).encode(), (ctypes.c_int * n)(*[s for _, s, _ in packed]),
            (ctypes.c_uint64 * n)(*[b for _, _, b in packed]))
        if status:
            raise EmulatorError(self.lib.fo_emu_last_error().decode())
        staged_tables.finish(name)
        staged.finish(name)


class _Kernels:
    """The CUDA backend's entry points (the signatures of the CPU extension's), on `device`."""

    def __init__(self, device):
        import fastopt.cuda as cuda
        from fastopt.cuda import batchnorm

        self.optimizer_step = lambda *a: cuda.optimizer_step(*a, device=device)
        self.multi_step = lambda *a: cuda.multi_step(*a, device=device)
        self.sum_of_squares = lambda *a: cuda.sum_of_squares(*a, device=device)
        self.blockwise_step = lambda *a: cuda.blockwise_step(*a, device=device)
        self.batch_norm_forward = lambda *a, **k: batchnorm.batch_norm_forward(*a, **k, device=device)
        self.batch_norm_backward = lambda *a, **k: batchnorm.batch_norm_backward(*a, **k, device=device)


class _EmulatedBackend(_backend._Backend):
    name = "cuda_emulated"

    def __init__(self, device):
        super().__init__()
        self._module = _Kernels(device)


@contextlib.contextmanager
def emulated_backend(device):
    """Registers backend="cuda_emulated" (NumPy arrays, CUDA kernels on `device`) for the public API."""
    backend = _EmulatedBackend(device)
    previous = _backend.BACKENDS.get(backend.name)  # nested: an outer device comes back after
    _backend.BACKENDS[backend.name] = backend
    try:
        yield backend
    finally:
        if previous is None:
            del _backend.BACKENDS[backend.name]
        else:
            _backend.BACKENDS[backend.name] = previous
