"""Checkpoints: torch's state_dict layout, loading that validates everything before it writes,
and a file format that never unpickles (``fastopt.save`` / ``fastopt.load``).

Layout (torch's): ``{"state": {index: {"step": int, name: array, ...}}, "param_groups":
[{option: value, ..., "params": [index, ...]}]}``, indices counting parameters over the groups in
order. ``load_state_dict`` also takes a torch optimizer's own state_dict (tensors are converted).
"""
import copy
import json
import math
import numbers
import os
from collections.abc import Mapping

import numpy as np

from . import _backend, _blockwise_step, _checks, _ema, _params
from ._dtypes import BFLOAT16, CODE_FLOAT32 as FLOAT32_CODE, FLOAT32, dtype_code

_FORMAT = "fastopt-checkpoint-1"


class StateOfOne(dict):
    """``state`` of an optimizer built on one array: ``{0: {...}}`` as torch has it, and string
    keys reach state 0 too (``sd["state"]["step"]``, the layout before param groups)."""

    def __missing__(self, key):
        if isinstance(key, str) and dict.__contains__(self, 0):
            return dict.__getitem__(self, 0)[key]
        raise KeyError(key)

    def __setitem__(self, key, value):
        if isinstance(key, str) and dict.__contains__(self, 0):
            dict.__getitem__(self, 0)[key] = value
        else:
            dict.__setitem__(self, key, value)


def state_dict(opt):
    """A deep copy of opt's state and options in torch's layout."""
    state = {i: {k: (v.copy() if hasattr(v, "shape") else v) for k, v in p.state.items()}
             for i, p in enumerate(opt._params)}
    groups, start = [], 0
    for group in opt.param_groups:
        count = len(group["params"])
        saved = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
        saved["params"] = list(range(start, start + count))
        groups.append(saved)
        start += count
    return {"state": StateOfOne(state) if opt._single else state, "param_groups": groups}


# ---- validation -------------------------------------------------------------------------------

def _plain(value, name):
    """A torch tensor as a NumPy array (a copy); anything else as it is."""
    if _params.is_torch_tensor(value):
        t = value.detach().cpu()
        import torch

        if t.dtype == torch.bfloat16:
            if BFLOAT16 is None:
                raise TypeError(f"{name} is a bfloat16 tensor: install ml_dtypes to load it")
            return t.view(torch.int16).numpy().view(BFLOAT16).copy()
        return t.numpy().copy()
    return value


def _step(value, where):
    """A step count: an int, a NumPy integer or integral float scalar, or a 0-d array of one
    (torch keeps steps as float tensors)."""
    if isinstance(value, np.ndarray):
        if value.shape != ():
            raise ValueError(f"{where}: step must be a scalar, got an array of shape {value.shape}")
        value = value[()]
    if isinstance(value, np.floating):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise TypeError(f"{where}: step must be an integer count, got {value!r}")
        value = int(value)
    if type(value) is float or isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: step must be an integer (the count of steps taken), got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{where}: step must be >= 0, got {value}")
    return int(value)


def _host_value(value, where):
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        value = value.reshape(())[()]
    value = _checks._real(where, value)
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value}")
    return value


def _all_option_names():
    from .optim import OPTIMIZERS

    return set().union(*(cls._options for cls in OPTIMIZERS))


def _checked_group(opt, i, saved, ours):
    where = f"param_groups[{i}]"
    if not isinstance(saved, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(saved).__name__}")
    indices = saved.get("params")
    if indices is None and opt._single:  # the layout before param groups: one group, no indices
        indices = [0]
    if not isinstance(indices, (list, tuple)) or not all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in indices):
        raise ValueError(f"{where} must have 'params', a list of parameter indices")
    if len(indices) != len(ours["params"]):
        raise ValueError(f"{where} has {len(indices)} parameters in the state_dict but "
                         f"{len(ours['params'])} in this optimizer")
    foreign = sorted(k for k in saved if k in _all_option_names() and k not in opt._options)
    if foreign:
        raise ValueError(f"{where} has option(s) {', '.join(map(repr, foreign))} that {type(opt).__name__} "
                         "does not have: a state_dict of another optimizer?")
    merged = {}
    for name in opt._options:
        if name in saved:
            merged[name] = saved[name]
        elif name in opt._optional:
            merged[name] = opt.defaults[name]
        else:
            raise ValueError(f"{where} lacks option '{name}' of {type(opt).__name__}: a state_dict of "
                             "another optimizer?")
    try:
        checked = opt._checked_options(merged, where)
    except (ValueError, TypeError) as exc:
        raise type(exc)(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    extras = {k: copy.deepcopy(v) for k, v in saved.items() if k not in opt._options and k != "params"}
    return [int(k) for k in indices], checked, extras


def _checked_state(opt, p, h, entry, where):
    """The new state dict of parameter p from a checkpoint entry (None: no state saved)."""
    entry = {} if entry is None else entry
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
    known = type(opt)._state_array_names
    entry, quantized = _blockwise_step.checkpoint_entry(p, entry, known, where)
    host = opt._host_state(h)
    new, arrays = {}, {}
    for name, value in entry.items():
        value = _plain(value, f"{where}['{name}']")
        if name == "step":
            new["step"] = _step(value, where)
        elif name in host:
            new[name] = _host_value(value, f"{where}: state '{name}'")
        elif name in known or name in ("master_weights", "ema"):
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise TypeError(f"{where}: state '{name}' must be an array, got {type(value).__name__}")
            if name == "master_weights":
                if "master_weights" not in p.state:
                    raise ValueError(f"{where} has master_weights but this parameter keeps none "
                                     f"({p.array.dtype} without master_weights=True)")
                expected = FLOAT32
            elif name == "ema":
                if "ema" not in p.state:
                    raise ValueError(f"{where} has an 'ema' (EMA of the weights) but this optimizer keeps "
                                     "none (construct it with ema_decay=...)")
                expected = p.state["ema"].dtype
                if expected == np.uint16 and BFLOAT16 is not None and value.dtype == BFLOAT16:
                    value = value.view(np.uint16)  # bfloat16 kept as its bits (CuPy)
            else:
                expected = p.state_dtype
            if value.size != p.array.size or value.dtype != expected:
                raise ValueError(f"{where}: state '{name}' has {value.size} elements of {value.dtype}; "
                                 f"expected {p.array.size} of {expected}")
            arrays[name] = value
        else:
            raise ValueError(f"{where} has '{name}', which {type(opt).__name__} does not keep: "
                             "a state_dict of another optimizer?")
    arrays.update(quantized)
    if "step" not in new:
        if arrays and type(opt)._rule_needs_step:
            raise ValueError(f"{where} has state arrays but no 'step'")
        new["step"] = 0
    if new["step"] > 0:
        missing = [n for n in opt._state_names(h) if n not in arrays]
        missing += [n for n in host if n not in new]
        if missing:
            raise ValueError(f"{where} has step {new['step']} but lacks {', '.join(map(repr, missing))}, "
                             "which its group's options use")
    for name, value in host.items():
        new.setdefault(name, value)
    if "ema" in p.state and "ema" not in arrays:
        # A checkpoint without an EMA (saved without ema_decay, or torch's): the EMA restarts from
        # the parameter as loaded (its master copy where there is one), as at construction.
        arrays["ema"] = None
    return new, arrays


def _legacy(opt, state):
    """The layout before param groups ({"step": ..., name: array}) of a one-array optimizer."""
    if len(opt._params) == 1 and any(isinstance(k, str) and not k.isdigit() for k in state):
        return {0: state}
    return state


def load_state_dict(opt, sd):
    """Replaces opt's options and state by sd's after checking all of it; nothing changes when
    anything does not fit, and the error names what."""
    if not isinstance(sd, Mapping) or not isinstance(sd.get("state"), Mapping) or "param_groups" not in sd:
        raise ValueError("state_dict must have 'state' and 'param_groups' as made by state_dict()")
    unknown = sorted(map(str, set(sd) - {"state", "param_groups"}))
    if unknown:
        raise ValueError(f"state_dict has unknown key(s) {', '.join(unknown)}")
    saved_groups = sd["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(opt.param_groups):
        count = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "no list of"
        raise ValueError(f"state_dict has {count} param groups; this optimizer has {len(opt.param_groups)}")
    state = _legacy(opt, dict(sd["state"]))
    entries = {}
    for key, value in state.items():
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
            raise ValueError(f"state_dict['state'] has key {key!r}; expected parameter indices")
        entries[int(key)] = value
    groups, order = [], []
    for i, (saved, ours) in enumerate(zip(saved_groups, opt.param_groups)):
        indices, checked, extras = _checked_group(opt, i, saved, ours)
        groups.append((checked, extras))
        order += indices
    if len(set(order)) != len(order):
        raise ValueError("state_dict's param_groups list a parameter index more than once")
    stray = sorted(set(entries) - set(order))
    if stray:
        raise ValueError(f"state_dict['state'] has entries for parameter(s) {stray} that no group lists")
    new_states = [_checked_state(opt, p, groups[p.group][0], entries.get(k), f"state[{k}]")
                  for p, k in zip(opt._params, order)]
    # Everything fits: write.
    for p, (new, arrays) in zip(opt._params, new_states):
        for name, value in arrays.items():
            if value is None:
                continue  # the EMA restarted below
            if isinstance(value, str):  # the quantization scheme
                new[name] = value
                continue
            own = p.state.get(name)
            if own is None or own.dtype != value.dtype or own.size != value.size:
                own = p.xp.empty(value.size, value.dtype)
            own[...] = p.xp.asarray(value).reshape(-1)
            new[name] = own
        restart_ema = arrays.get("ema", 0) is None
        own_ema = p.state.get("ema")
        p.state.clear()
        p.state.update(new)
        if restart_ema:
            source = new.get("master_weights")
            own_ema[...] = _ema.initial(source if source is not None else p.array, FLOAT32_CODE if source is not None
                                        else dtype_code(p.array.dtype, opt.param_dtype), own_ema.dtype, p.xp)
            p.state["ema"] = own_ema
        p.fresh.clear()
        p.cache = None
    for group, (checked, extras) in zip(opt.param_groups, groups):
        params = group["params"]
        dict.clear(group)  # the values are checked: written as they are
        dict.update(group, params=params, **extras, **checked)
    opt._group_cache[:] = [None] * len(opt._group_cache)
    opt.__dict__["_plan"] = opt.__dict__["_one_step"] = None


# ---- files ------------------------------------------------------------------------------------

def _to_json(value, where):
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{where} holds a {type(value).__name__}, which the checkpoint file cannot store "
                    "(it keeps numbers, strings, bools, None, lists and tuples)")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save(opt, path):
    """Writes opt.state_dict() to `path` as a .npz that loads without pickle (bit for bit).
    The file is written whole or not at all (a temporary file, then a rename)."""
    sd = state_dict(opt)
    arrays, manifest = {}, {"format": _FORMAT, "optimizer": type(opt).__name__, "state": {}}
    for i, entry in sd["state"].items():
        saved = {}
        for name, value in entry.items():
            if hasattr(value, "shape"):
                key = f"a{len(arrays)}"
                host = _backend.array_module(_backend.array_kind(value)).asnumpy(value) \
                    if _backend.array_kind(value) == "cupy" else value
                # bfloat16 (not a NumPy dtype) is stored as its bits.
                arrays[key] = host.view(np.uint16) if host.dtype == BFLOAT16 else host
                saved[name] = {"array": key, "dtype": str(host.dtype)}
            else:
                saved[name] = _to_json(value, f"state[{i}]['{name}']")
        manifest["state"][str(i)] = saved
    manifest["param_groups"] = [_to_json(g, f"param_groups[{j}]") for j, g in enumerate(sd["param_groups"])]
    arrays["manifest"] = np.array(json.dumps(manifest))
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path):
    """The state_dict stored by save(), read without unpickling anything."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        try:
            manifest = json.loads(str(data["manifest"][()]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a fastopt checkpoint ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a fastopt checkpoint (format {manifest.get('format')!r})")
        state = {}
        for i, entry in manifest["state"].items():
            restored = {}
            for name, value in entry.items():
                if isinstance(value, dict) and "array" in value:
                    a = data[value["array"]]
                    if value["dtype"] == "bfloat16":
                        if BFLOAT16 is None:
                            raise TypeError(f"{path} holds bfloat16 state: install ml_dtypes to load it")
                        a = a.view(BFLOAT16)
                    restored[name] = a
                else:
                    restored[name] = _from_json(value)
            state[int(i)] = restored
        groups = [_from_json(g) for g in manifest["param_groups"]]
    return {"state": state, "param_groups": groups}, manifest.get("optimizer")


def load(opt, path):
    """Loads a file written by save() into opt (validated as load_state_dict: all or nothing)."""
    sd, name = read(path)
    if name is not None and name != type(opt).__name__:
        raise ValueError(f"{path} holds a {name} checkpoint; this optimizer is {type(opt).__name__}")
    load_state_dict(opt, sd)
