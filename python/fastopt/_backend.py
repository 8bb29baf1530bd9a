"""The one registry of compute backends: which exist, which is used for a call, and why not.

NumPy arrays go to "cpu" (the compiled C++ extension), or to "numba" when the extension
cannot be imported; CuPy arrays go to "cuda". A `backend=` keyword, `use_backend()` and the
FASTOPT_BACKEND environment variable (read when fastopt is imported) override the choice for
NumPy arrays.
"""
import contextlib
import contextvars
import os

import numpy as np

from . import _threads


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


CPU_ISA_LEVELS = {"baseline": "baseline", "v3": "x86-64-v3", "v4": "x86-64-v4"}


class _Backend:
    name = ""
    array_kind = "numpy"  # "numpy" or "cupy": the arrays this backend computes on

    def __init__(self):
        self._module = None
        self._reason = None

    def _load(self):
        raise NotImplementedError

    @property
    def module(self):
        """The backend's kernel module, imported on first use; raises if unavailable."""
        if self._module is None:
            if self._reason is None:
                try:
                    self._module = self._load()
                except BackendUnavailableError as exc:
                    self._reason = str(exc)
                except Exception as exc:  # an import that fails for any reason makes it unavailable
                    self._reason = f"{type(exc).__name__}: {exc}"
            if self._module is None:
                raise BackendUnavailableError(f"backend '{self.name}' is unavailable: {self._reason}")
        return self._module

    @property
    def available(self):
        try:
            self.module
        except BackendUnavailableError:
            return False
        return True

    def info(self):
        if not self.available:
            return {"available": False, "reason": self._reason}
        return {"available": True, **self._details()}

    def _details(self):
        return {}


class _CpuBackend(_Backend):
    name = "cpu"

    def _load(self):
        try:
            from . import _cpu
        except ImportError as exc:
            raise BackendUnavailableError(f"extension not built or not importable ({exc})") from None
        forced = os.environ.get("FASTOPT_CPU_ISA")
        if forced:
            if forced not in CPU_ISA_LEVELS:
                raise ValueError(f"FASTOPT_CPU_ISA must be one of {sorted(CPU_ISA_LEVELS)}, got {forced!r}")
            _cpu.select_isa(CPU_ISA_LEVELS[forced])
        _cpu.set_num_threads(_thread_choice()[0])
        return _cpu

    def _details(self):
        m = self.module
        return {"isa": m.isa(), "best_isa": m.best_isa(), "num_threads": m.num_threads(),
                "threads_from": _thread_choice()[1]}


class _NumbaBackend(_Backend):
    name = "numba"

    def _load(self):
        try:
            import numba  # noqa: F401
        except ImportError:
            raise BackendUnavailableError("Numba not installed (pip install numba; from a clone: pip install '.[numba]')") from None
        from . import numba as numba_kernels

        _start_numba_threads()
        numba.set_num_threads(min(_thread_choice()[0], numba.config.NUMBA_NUM_THREADS))
        return numba_kernels

    def _details(self):
        import numba

        return {"version": numba.__version__, "num_threads": numba.get_num_threads(),
                "threads_from": _thread_choice()[1]}


# Iterations an idle OpenMP thread of Numba's runtime spins before it sleeps. libgomp's default
# (300000) kept idle threads spinning for milliseconds: on a loaded machine a 1e6-element step
# then took 8-16 ms instead of 0.1-0.3 ms, while back-to-back steps lose nothing at 1000.
NUMBA_GOMP_SPINCOUNT = "1000"


def _start_numba_threads():
    """Starts Numba's threads with a short spin when its layer is libgomp and nobody chose one.

    libgomp reads its settings once, when it is loaded: the variable is set only for that
    moment, so it reaches neither other libraries nor child processes. A libgomp loaded earlier
    by another library keeps its own settings.
    """
    from numba.np.ufunc import parallel

    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        parallel._launch_threads()
        return
    os.environ["GOMP_SPINCOUNT"] = NUMBA_GOMP_SPINCOUNT
    try:
        parallel._launch_threads()
    finally:
        del os.environ["GOMP_SPINCOUNT"]


class _CudaBackend(_Backend):
    name = "cuda"
    array_kind = "cupy"

    def _load(self):
        try:
            import cupy
        except ImportError:
            raise BackendUnavailableError("CuPy not installed (pip install cupy-cuda12x or cupy-cuda13x; from a clone: pip install '.[cuda12]')") from None
        if not cupy.is_available():
            raise BackendUnavailableError("no CUDA device (cupy.is_available() is False)")
        from . import cuda

        return cuda

    def _details(self):
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        return {"device": props["name"].decode(), "compute_capability": dev.compute_capability,
                "cupy": cupy.__version__}


_threads_chosen = []  # [(num_threads, why)] once decided


def _thread_choice():
    """(threads, why) for the CPU backends: set_num_threads(), else the environment's default."""
    if not _threads_chosen:
        _threads_chosen.append(_threads.default_threads())
    return _threads_chosen[0]


BACKENDS = {b.name: b for b in (_CpuBackend(), _NumbaBackend(), _CudaBackend())}
# Read once, when fastopt is imported (reading os.environ costs more than a small step).
_ENV_BACKEND = os.environ.get("FASTOPT_BACKEND") or None
_override = contextvars.ContextVar("fastopt_backend", default=None)


def backends():
    """{"cpu": info, "numba": info, "cuda": info}: availability and details, or why not; and
    "in_use": whether a call on its kind of arrays (NumPy, or CuPy for cuda) would run there now,
    honouring use_backend() and FASTOPT_BACKEND."""
    out = {}
    for name, b in BACKENDS.items():
        info = b.info()
        try:
            info["in_use"] = select(b.array_kind).name == name
        except (BackendUnavailableError, TypeError):
            info["in_use"] = False
        out[name] = info
    return out


def _named(name, source):
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"{source} must be one of {sorted(BACKENDS)}, got {name!r}") from None


@contextlib.contextmanager
def use_backend(name):
    """Run the enclosed calls on backend `name` (for NumPy arrays: "cpu" or "numba")."""
    _named(name, "use_backend(name)")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def array_module(kind):
    """The module of arrays of `kind`: numpy, or cupy."""
    if kind == "numpy":
        return np
    import cupy

    return cupy


def array_kind(a):
    """"numpy", "cupy", or None for anything else."""
    if isinstance(a, np.ndarray):
        return "numpy"
    module = type(a).__module__
    if module.startswith("cupy"):
        return "cupy"
    return None


_defaults = {}  # array kind -> its default backend, once found available (that does not change)


def _default(kind):
    chosen = _defaults.get(kind)
    if chosen is None:
        if kind == "cupy":
            chosen = BACKENDS["cuda"]
            chosen.module  # raises BackendUnavailableError with the reason
        else:
            cpu = BACKENDS["cpu"]
            chosen = cpu if cpu.available else BACKENDS["numba"]
            if not chosen.available:
                raise BackendUnavailableError(
                    f"no CPU backend: cpu: {cpu._reason}; numba: {BACKENDS['numba']._reason}")
        _defaults[kind] = chosen
    return chosen


def select(kind, backend=None):
    """The backend object for arrays of `kind`, honouring the overrides; raises if unavailable."""
    if backend is not None:
        chosen = _named(backend, "backend")
        source = "backend="
    else:
        name = _override.get() or _ENV_BACKEND
        if not name:
            return _default(kind)
        chosen = _named(name, "FASTOPT_BACKEND / use_backend")
        source = "FASTOPT_BACKEND / use_backend "
        if chosen.array_kind != kind and kind == "cupy":  # a CPU override does not apply to CuPy arrays
            return _default(kind)
    if chosen.array_kind != kind:
        raise TypeError(f"{source}{chosen.name!r} computes on {chosen.array_kind} arrays, got {kind} arrays")
    chosen.module  # raises BackendUnavailableError with the reason
    return chosen


def set_num_threads(n):
    """Threads used by the CPU backends (C++ and Numba), the calling thread included."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_threads must be an integer >= 1, got {n!r}")
    n = int(n)
    _threads_chosen[:] = [(n, "set_num_threads()")]
    cpu, nb = BACKENDS["cpu"], BACKENDS["numba"]
    if cpu.available:
        cpu.module.set_num_threads(n)
    if nb.available:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    cpu = BACKENDS["cpu"]
    if cpu.available:
        return cpu.module.num_threads()
    import numba

    return numba.get_num_threads()
