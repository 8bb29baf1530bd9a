"""fastopt: fused, in-place optimizer and BatchNorm kernels for NumPy and CuPy training code."""
from ._backend import BackendUnavailableError, backends, get_num_threads, set_num_threads, use_backend
from . import functional, lr_scheduler, schedules
from .amp import GradScaler
from .checkpoint import load, save
from .batchnorm import BatchNorm, batch_norm_backward, batch_norm_forward
from .flat import FlatParams
from .functional import StepResult
from .grad_utils import clip_grad_norm_, grad_norm
from .optim import OPTIMIZERS as _OPTIMIZERS, Optimizer

globals().update({cls.__name__: cls for cls in _OPTIMIZERS})

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "backends", "get_num_threads", "set_num_threads", "use_backend",
    "functional", "lr_scheduler", "schedules", "GradScaler", "FlatParams", "StepResult",
    "clip_grad_norm_", "grad_norm",
    "Optimizer", *(cls.__name__ for cls in _OPTIMIZERS),
    "batch_norm_forward", "batch_norm_backward", "BatchNorm", "save", "load",
]
