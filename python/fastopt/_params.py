"""Parameters and gradients as torch.optim takes them: one array, a list, or a list of group
dicts; arrays of other libraries (torch CPU tensors, DLPack, the buffer protocol) viewed without
a copy."""
import numpy as np

from . import _backend
from ._dtypes import BFLOAT16
from .flat import FlatParams

_ACCEPTED = "a NumPy or CuPy array, a torch CPU tensor, or an object with DLPack or the buffer protocol"


def is_torch_tensor(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "data_ptr")


def _from_torch(t, name, writable):
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        raise TypeError(f"{name} is a torch tensor on {t.device}; fastopt steps CPU tensors "
                        "(use CuPy arrays for a GPU)")
    if not t.is_contiguous():
        raise TypeError(f"{name} must be contiguous (torch's .contiguous() makes a copy fastopt could not update)")
    if t.dtype == torch.bfloat16:
        if BFLOAT16 is None:
            raise TypeError(f"{name} is a bfloat16 tensor: install ml_dtypes to step it")
        return t.view(torch.int16).numpy().view(BFLOAT16)
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:
        raise TypeError(f"{name}: this torch tensor has no NumPy view ({exc})") from None


def as_array(obj, name, *, writable):
    """`obj` itself when it is a NumPy or CuPy array, else a NumPy view of its memory."""
    if _backend.array_kind(obj) is not None:
        return obj
    if is_torch_tensor(obj):
        a = _from_torch(obj, name, writable)
    elif hasattr(obj, "__dlpack__"):
        try:
            a = np.from_dlpack(obj)
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TypeError(f"{name}: its DLPack export cannot be read as a NumPy array ({exc})") from None
    else:
        try:
            view = memoryview(obj)
        except TypeError:
            raise TypeError(f"param must be {_ACCEPTED}, got {type(obj).__name__} ({name})") from None
        a = np.asarray(view)
    if writable and not a.flags.writeable:
        raise TypeError(f"{name} is read-only; fastopt updates it in place")
    return a


def _single(params):
    """Whether `params` is one parameter rather than a collection of them."""
    return (isinstance(params, FlatParams) or _backend.array_kind(params) is not None
            or is_torch_tensor(params) or hasattr(params, "__dlpack__")
            or isinstance(params, (bytes, bytearray, memoryview)))


def group_list(params):
    """torch's param_groups before defaults: a list of dicts, each with a "params" list.
    Also returns whether `params` was one parameter (fastopt's single-array form)."""
    if _single(params):
        return [{"params": [params]}], True
    if isinstance(params, (set, frozenset)):
        raise TypeError("params must be an ordered collection (a set has no order); use a list")
    if isinstance(params, dict):
        raise TypeError("params must be a list of group dicts, not one dict: wrap it in a list")
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"param must be {_ACCEPTED}, a list of them, or a list of group dicts; "
                        f"got {type(params).__name__}") from None
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    dicts = [isinstance(item, dict) for item in items]
    if all(dicts):
        return [normalized_group(g, f"param_groups[{i}]") for i, g in enumerate(items)], False
    if any(dicts):
        raise TypeError("params mixes group dicts and parameters: give a list of one kind")
    return [normalized_group({"params": items}, "params")], False


def normalized_group(group, where):
    if not isinstance(group, dict):
        raise TypeError(f"{where} must be a dict, got {type(group).__name__}")
    if "params" not in group:
        raise ValueError(f"{where} has no 'params'")
    params = group["params"]
    if _single(params):
        params = [params]
    elif isinstance(params, (set, frozenset)):
        raise TypeError(f"{where}['params'] must be ordered (a set has no order); use a list")
    else:
        params = list(params)
    if not params:
        raise ValueError(f"{where} has an empty 'params' list")
    named = [isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in params]
    if all(named):  # model.named_parameters(): torch keeps the names as "param_names"
        return {**group, "params": [item[1] for item in params], "param_names": [item[0] for item in params]}
    if any(named):
        raise TypeError(f"{where} mixes (name, parameter) pairs and parameters")
    return {**group, "params": params}


def param_arrays(source, where):
    """(array, grad_source) of one entry of a group's params: the array stepped in place, and where
    step() finds its gradient when none is given (a FlatParams buffer, a torch tensor), or None."""
    if isinstance(source, FlatParams):
        return source.data, source
    array = as_array(source, where, writable=True)
    if isinstance(source, bytes):
        raise TypeError(f"{where} is read-only; fastopt updates it in place")
    return array, source if is_torch_tensor(source) else None


def default_grad(grad_source):
    """The gradient step() reads when none is given: FlatParams' grad, a tensor's .grad."""
    if isinstance(grad_source, FlatParams):
        return grad_source.grad
    return grad_source.grad  # a torch tensor: None until a backward pass wrote it


def zero_grad(grad_source, set_to_none):
    if isinstance(grad_source, FlatParams):
        grad_source.grad[...] = 0
    elif grad_source.grad is not None:
        if set_to_none:
            grad_source.grad = None
        else:
            grad_source.grad.detach_()
            grad_source.grad.zero_()
