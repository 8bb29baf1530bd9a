"""Checkpoints of a ShardedOptimizer that load at any rank count.

A checkpoint is a directory: ``meta.json`` (format, optimizer class, size, dtypes, step and the
other scalar state, hyper-parameters) and one ``.npy`` file per array (``param``, then each state
array, e.g. ``exp_avg``) holding the whole buffer in its global, unpadded order. Each rank writes
and reads only its shard's slice, through a memory map; nothing is unpickled. bfloat16 arrays
are stored as their uint16 bits (``.npy`` has no bfloat16), their type named in meta.json.
"""
import json
import os

import numpy as np

from .._dtypes import BFLOAT16
from ._mpi import agree

FORMAT = "fastopt.distributed.checkpoint/1"


def _stored(a):
    """(array as written, dtype name): bfloat16 travels as its bits."""
    name = a.dtype.name
    return (a.view(np.uint16), name) if name == "bfloat16" else (a, name)


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(opt, path):
    """Writes ``opt`` (every rank calls it, with the same path on a file system they share).

    meta.json is written last: a directory without it is an unfinished checkpoint.
    """
    t, comm = opt._transport, opt._transport.comm
    o, c = opt.shard
    state = opt.state
    arrays = {"param": opt._flat[o:o + c]}
    arrays.update((k, v) for k, v in state.items() if hasattr(v, "shape"))
    arrays = {k: (t.to_host(v) if hasattr(t, "to_host") else v) for k, v in arrays.items()}
    scalars = {k: _plain(v) for k, v in state.items() if not hasattr(v, "shape")}
    hypers = {k: _plain(v) for k, v in opt._opts[0][2].state_dict()["param_groups"][0].items() if k != "params"}
    meta = {"format": FORMAT, "optimizer": _class_name(opt.optimizer_class), "size": opt.size,
            "dtypes": {k: _stored(v)[1] for k, v in arrays.items()}, "scalars": scalars,
            "hyper_parameters": hypers, "ranks_at_save": opt.ranks}
    error = None
    if opt.rank == 0:
        try:
            os.makedirs(path, exist_ok=True)
            for name, value in arrays.items():
                stored, _ = _stored(value)
                np.lib.format.open_memmap(os.path.join(path, name + ".npy"), mode="w+", dtype=stored.dtype,
                                          shape=(opt.size,)).flush()
        except OSError as exc:
            error = exc
    agree(comm, error)
    for name, value in arrays.items():
        stored, _ = _stored(value)
        out = np.lib.format.open_memmap(os.path.join(path, name + ".npy"), mode="r+")
        out[o:o + c] = stored
        out.flush()
        del out
    comm.Barrier()
    if opt.rank == 0:
        with open(os.path.join(path, "meta.json.tmp"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.replace(os.path.join(path, "meta.json.tmp"), os.path.join(path, "meta.json"))
    comm.Barrier()


def _read(opt, path):
    """This rank's slices and the metadata, every check done before anything is changed."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastopt.distributed checkpoint (format {meta.get('format')!r})")
    if meta["optimizer"] != _class_name(opt.optimizer_class):
        raise ValueError(f"the checkpoint is of a {meta['optimizer']} optimizer, this one is "
                         f"{_class_name(opt.optimizer_class)}")
    if meta["size"] != opt.size:
        raise ValueError(f"the checkpoint holds {meta['size']} parameters, this model has {opt.size}: "
                         "it was saved from a different model")
    state = opt.state
    want = {"param": opt.param.dtype.name}
    want.update((k, v.dtype.name) for k, v in state.items() if hasattr(v, "shape"))
    have = meta["dtypes"]
    # States created at the first step (momentum, moments) may be absent from a fresh optimizer.
    missing = [k for k in want if k not in have and k in ("param", "master_weights")]
    wrong = [f"{k}: {have[k]} saved, {v} here" for k, v in want.items() if k in have and have[k] != v]
    if missing or wrong:
        raise ValueError(f"the checkpoint does not fit this optimizer: missing {missing}, dtypes {wrong}")
    o, c = opt.shard
    slices = {}
    for name, dtype in have.items():
        stored = np.load(os.path.join(path, name + ".npy"), mmap_mode="r", allow_pickle=False)
        if stored.shape != (opt.size,):
            raise ValueError(f"{name}.npy has shape {stored.shape}, expected ({opt.size},)")
        part = np.array(stored[o:o + c])
        slices[name] = part.view(BFLOAT16) if dtype == "bfloat16" and BFLOAT16 is not None else part
        if slices[name].dtype.name != dtype:
            raise ValueError(f"{name}.npy holds {slices[name].dtype}, meta.json says {dtype}")
    return meta, slices


def load(opt, path):
    """Loads a checkpoint saved at any rank count into ``opt`` (every rank calls it): parameters,
    state and hyper-parameters; continuing gives the bits of a run that never stopped."""
    t = opt._transport
    meta = slices = None
    try:
        meta, slices = _read(opt, path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        error = exc if isinstance(exc, (ValueError, TypeError)) else ValueError(f"cannot read checkpoint {path}: {exc}")
    else:
        error = None
    agree(t.comm, error)
    o, _ = opt.shard
    current = opt._opts[0][2].state_dict()["param_groups"][0]
    hypers = {k: (tuple(v) if isinstance(current.get(k), tuple) else v)
              for k, v in meta["hyper_parameters"].items()}
    param = slices.pop("param")
    from_host = getattr(t, "from_host", lambda a: a)
    for a, b, inner in opt._opts:
        state = dict(meta["scalars"])
        state.update((k, from_host(v[a - o:b - o])) for k, v in slices.items())
        inner.load_state_dict({"state": state, "param_groups": [hypers]})
    opt._flat[o:o + param.size] = from_host(param)
    t.allgather_in_place(opt._flat, opt.layout.counts, opt.layout.offsets)
