"""ZeRO-1/2 sharded optimizer step: each rank keeps the optimizer state (and the float32 master
copy of half parameters) of one contiguous shard of the flat parameter buffer.

Per step: the gradient is reduced onto the shards (reduce-scatter, or an exchange summed in rank
order with ``deterministic=True``), the global norm is formed from float64 block sums in block
order, each rank steps its shard with a plain fastopt optimizer, and the parameters are
all-gathered in place. The plain optimizers are used only through their public API.
"""
import math
import zlib

import numpy as np

from .. import _backend, _checks, _dtypes, _stepping
from .._scalars import clip_factor
from . import _layout
from ._mpi import MpiTransport, agree, agree_descriptor, agree_step


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # repr keeps every bit: ranks must agree exactly
    return repr(value)


def predivided(grad, ranks, out=None):
    """grad * (1 / ranks) rounded once to grad's dtype (half gradients: computed in float32), the
    contribution each rank sends with ``predivide=True``."""
    xp = _backend.array_module(_backend.array_kind(grad))
    out = xp.empty_like(grad) if out is None else out
    if grad.dtype in (np.float32, np.float64):
        xp.multiply(grad, grad.dtype.type(1.0 / ranks), out=out)
    else:
        out[...] = (grad.astype(np.float32) * np.float32(1.0 / ranks)).astype(grad.dtype)
    return out


class ShardedOptimizer:
    """A fastopt optimizer class, stepped on this rank's shard of ``param`` (ZeRO stage 1).

        opt = ShardedOptimizer(fastopt.AdamW, params.data, MPI.COMM_WORLD, lr=1e-3)
        opt.step(params.grad)          # this rank's gradient; param is updated on every rank

    ``param``: the whole flat parameter buffer, the same on every rank (made so at construction:
    each rank's shard is authoritative). ``options`` go to ``optimizer_class`` (hyper-parameters,
    ``master_weights``, ``stochastic_rounding``, ``seed``...). ``average``: the gradient is the
    mean over ranks (else the sum). ``predivide``: each rank scales its gradient by 1/N before the
    sum (for half gradients that could overflow; costs one pass and a scratch buffer).
    ``deterministic``: sums rank contributions in rank order, so parameters are bitwise those of
    one process summing the gradients in rank order. ``grad_dtype``: the gradient's dtype
    (default: param's). ``check_steps``: each step starts with an Allgather of 16 bytes per rank
    (a fingerprint of the step's arguments, hyper-parameters and step count, and a failure flag),
    so that a rank that differs, or fails its checks, raises on every rank instead of leaving
    the others in a collective it never enters.
    """

    def __init__(self, optimizer_class, param, comm, *, deterministic=False, average=True, predivide=False,
                 grad_dtype=None, transport=None, check_steps=True, **options):
        if options.get("ema_decay") is not None:  # each shard would average only its own piece
            raise TypeError("ShardedOptimizer does not take ema_decay: each rank's optimizer steps only its "
                            "shard, so no rank would hold the EMA of the whole parameter")
        self.check_steps = bool(check_steps)
        self._transport = transport if transport is not None else MpiTransport(comm)
        t = self._transport
        self.rank, self.ranks = t.rank, t.size
        error, hypers = None, {}
        try:
            self._setup(optimizer_class, param, grad_dtype, deterministic, average, predivide, options)
            hypers = {k: _jsonable(v) for k, v in self._opts[0][2].state_dict()["param_groups"][0].items()
                      if k != "params"}
        except (TypeError, ValueError) as exc:
            error = exc
        agree(t.comm, error)
        agree_descriptor(t.comm, {
            "optimizer": f"{optimizer_class.__module__}.{optimizer_class.__qualname__}",
            "size": self.size, "param_dtype": str(self.param.dtype), "grad_dtype": str(self.grad_dtype),
            **hypers, **{k: _jsonable(v) for k, v in options.items() if k not in hypers},
            "deterministic": self.deterministic, "average": self.average, "predivide": self.predivide,
            "ranks": self.ranks, "transport": t.kind}, "optimizer set-up")
        self._hyper_names = tuple(hypers)
        self.last_step_skipped = False
        self._pending = []  # ZeRO-2 buckets started and not yet waited for: (start, stop, request)
        layout = self.layout
        t.allgather_in_place(self._flat, layout.counts, layout.offsets)

    def _setup(self, optimizer_class, param, grad_dtype, deterministic, average, predivide, options):
        if not (isinstance(optimizer_class, type) and hasattr(optimizer_class, "step")
                and hasattr(optimizer_class, "state_dict")):
            raise TypeError(f"optimizer_class must be a fastopt optimizer class such as fastopt.AdamW, "
                            f"got {optimizer_class!r}")
        if _backend.array_kind(param) != self._transport.kind:
            raise TypeError(f"param must be a {self._transport.kind} array for this transport, "
                            f"got {type(param).__name__}")
        if not param.flags.c_contiguous:
            raise TypeError("param must be C-contiguous (one flat buffer, e.g. FlatParams.data)")
        self.optimizer_class, self.param, self.options = optimizer_class, param, dict(options)
        self._flat = param.reshape(-1)
        self.size = self._flat.size
        self.grad_dtype = np.dtype(grad_dtype) if grad_dtype is not None else param.dtype
        self.deterministic, self.average, self.predivide = bool(deterministic), bool(average), bool(predivide)
        self.layout = layout = _layout.ShardLayout(self.size, self.ranks)
        o, c = layout.offsets[self.rank], layout.counts[self.rank]
        self.shard = (o, c)
        self.stochastic_rounding = bool(options.get("stochastic_rounding", False))
        if self.stochastic_rounding and self.size > 2 ** 32:
            raise ValueError("sharded stochastic rounding draws the single-process random bits only for "
                             "buffers of at most 2**32 elements")
        # Stochastic rounding hashes the kernel's local index: one optimizer per dyadic piece of the
        # shard, each given the seed that makes its bits those of the global index.
        pieces = _layout.dyadic_pieces(o, o + c) if self.stochastic_rounding else [(o, o + c)]
        pieces = pieces or [(o, o)]
        self.seed = _checks.checked_seed(options.get("seed", 0))
        self._opts = [(a, b, optimizer_class(self._flat[a:b], **options)) for a, b in pieces]
        self._xp = xp = _backend.array_module(self._transport.kind)
        exact_sum = self.deterministic or self.grad_dtype not in (np.float32, np.float64)
        self._exact_sum = exact_sum and self.ranks > 1
        self._recv = xp.empty((self.ranks, c), self.grad_dtype) if self._exact_sum else None
        self._reduced = xp.empty(c, self.grad_dtype) if self.ranks > 1 else None
        self._scratch = None

    # ---- hyper-parameters: read from, and set on, the shard's optimizers ----
    def __getattr__(self, name):
        if name in self.__dict__.get("_hyper_names", ()):
            return getattr(self._opts[0][2], name)
        raise AttributeError(f"'ShardedOptimizer' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_hyper_names", ()):
            for _, _, opt in self._opts:
                setattr(opt, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def optimizers(self):
        """The plain optimizers stepping this rank's shard: [(start, stop, optimizer)], global indices."""
        return list(self._opts)

    @property
    def bytes_sent(self):
        """Bytes this rank has handed to the communicator for other ranks since construction."""
        return self._transport.bytes_sent

    @property
    def state(self):
        """This rank's shard of the state: {"step": int, scalars..., name: array of the shard}."""
        first = self._opts[0][2].state
        if len(self._opts) == 1:
            return first
        xp = _backend.array_module(self._transport.kind)
        out = {k: v for k, v in first.items() if not hasattr(v, "shape")}
        for name, value in first.items():
            if hasattr(value, "shape"):
                out[name] = xp.concatenate([opt.state[name] for _, _, opt in self._opts])
        return out

    def state_dict(self):
        """This rank's shard: {"state": copies of the shard's state, "param_groups": [hyper-parameters],
        "shard": {"offset", "count", "size", "ranks"}}. For checkpoints that load at another rank
        count, use save() / load()."""
        state = {k: (v.copy() if hasattr(v, "shape") else v) for k, v in self.state.items()}
        o, c = self.shard
        return {"state": state, "param_groups": self._opts[0][2].state_dict()["param_groups"],
                "shard": {"offset": o, "count": c, "size": self.size, "ranks": self.ranks}}

    def load_state_dict(self, state_dict):
        """Loads what state_dict() gave on this rank, with the same rank count and model."""
        shard = state_dict.get("shard", {})
        o, c = self.shard
        if shard != {"offset": o, "count": c, "size": self.size, "ranks": self.ranks}:
            raise ValueError(f"the state_dict holds shard {shard}, this rank owns [{o}, {o + c}) of {self.size} "
                             f"at {self.ranks} ranks; use save() / load() to change the rank count")
        state = state_dict["state"]
        for a, b, opt in self._opts:
            piece = {k: (v[a - o:b - o] if hasattr(v, "shape") else v) for k, v in state.items()}
            opt.load_state_dict({"state": piece, "param_groups": state_dict["param_groups"]})

    # ---- the gradient reduction ----
    def _check_grad(self, grad):
        if _backend.array_kind(grad) != self._transport.kind:
            raise TypeError(f"grad must be a {self._transport.kind} array, got {type(grad).__name__}")
        if grad.size != self.size or grad.dtype != self.grad_dtype or not grad.flags.c_contiguous:
            raise ValueError(f"grad must be a contiguous array of {self.size} elements of {self.grad_dtype} "
                             f"(as at construction), got {grad.size} of {grad.dtype}")
        return grad.reshape(-1)

    def _source(self, grad):
        if not self.predivide:
            return grad
        if self._scratch is None:
            self._scratch = self._xp.empty_like(grad)
        return predivided(grad, self.ranks, out=self._scratch)

    def _start(self, grad, start, stop):
        """Starts the reduction of grad[start:stop] onto the shards (non-blocking)."""
        layout, t = self.layout, self._transport
        o, c = self.shard
        counts = [max(0, min(stop, lo + n) - max(start, lo)) for lo, n in zip(layout.offsets, layout.counts)]
        lo = min(max(start - o, 0), c)
        hi = min(max(stop - o, lo), c)
        if self._exact_sum:
            offsets = [max(start, off) for off in layout.offsets]
            req = t.iexchange(grad, self._recv, counts, offsets, lo, hi)
        else:
            req = t.ireduce_scatter_sum(grad[start:stop], self._reduced[lo:hi], counts)
        self._pending.append((start, stop, req))

    def reduce_bucket(self, grad, start, stop):
        """ZeRO-2: starts reducing grad[start:stop] (e.g. one layer, as soon as its gradient is
        ready) while the backward pass goes on; ``step`` waits for it. Every rank must start the
        same buckets in the same order; buckets must not overlap."""
        grad = self._check_grad(grad)
        if not (0 <= start <= stop <= self.size):
            raise ValueError(f"bucket [{start}, {stop}) is outside the buffer of {self.size} elements")
        if any(s < stop and start < e for s, e, _ in self._pending):
            raise ValueError(f"bucket [{start}, {stop}) overlaps a bucket already started")
        if self.ranks > 1:
            self._start(self._source_once(grad), start, stop)

    def _source_once(self, grad):
        # predivide writes the whole scratch buffer once per step, before the first bucket.
        if self.predivide and not self._pending:
            return self._source(grad)
        return self._scratch if self.predivide else grad

    def _reduce(self, grad):
        """This rank's shard of the summed gradient (rank order when exact)."""
        o, c = self.shard
        if self.ranks == 1:
            self._pending.clear()
            return self._source(grad)[o:o + c]
        source = self._source_once(grad)
        covered = sorted((s, e) for s, e, _ in self._pending)
        cursor = 0
        for s, e in covered + [(self.size, self.size)]:
            if cursor < s:
                self._start(source, cursor, s)
            cursor = max(cursor, e)
        self._transport.wait([req for _, _, req in self._pending])
        self._pending.clear()
        if self._exact_sum:
            recv, out = self._recv, self._reduced
            self._xp.add(recv[0], recv[1], out=out)
            for k in range(2, self.ranks):
                self._xp.add(out, recv[k], out=out)
        return self._reduced

    def _norm_sum(self, shard_grad):
        """The float64 sum of squares of the whole reduced gradient, with the single-process bits."""
        o, _ = self.shard
        blocks, t = self.layout.blocks(self.rank), self._transport
        if hasattr(t, "block_sums"):  # CuPy: one reduction for every block, not the norm kernel's bits
            partial = t.block_sums(shard_grad, blocks)
            counts = self.layout.block_counts()
        else:
            module = _backend.select(t.kind, self._opts[0][2].backend).module
            code = _dtypes.dtype_code(self.grad_dtype)
            counts = self.layout.block_counts()
            if counts[0]:
                # The kernel folds its block sums in order from 0: on rank 0's shard that fold is
                # the prefix of the global one, so one call replaces its per-block sums.
                counts[0] = 1
            if self.rank == 0 and blocks:
                partial = [module.sum_of_squares(code, shard_grad)]
            else:
                partial = [module.sum_of_squares(code, shard_grad[a - o:b - o]) for a, b in blocks]
        sums = t.allgather_float64(np.array(partial, np.float64), counts)
        return float(np.cumsum(sums)[-1]) if sums.size else 0.0

    # ---- the step ----
    def step(self, grad, *, grad_scale=None, max_grad_norm=None, skip_nonfinite=False):
        """One step from this rank's gradient; returns the global gradient norm when computed.

        The same as ``optimizer_class.step(sum of the ranks' gradients, grad_scale=grad_scale * N
        if average else grad_scale, ...)`` on one process. With ``skip_nonfinite`` every rank
        skips, or none does.
        """
        error = None
        try:
            max_grad_norm = _checks.optional_positive("max_grad_norm", max_grad_norm)
            _checks.grad_scale(grad_scale)  # raises on a zero or non-finite scale
            scale = 1.0 if grad_scale is None else float(grad_scale)
            if self.average and not self.predivide:
                scale *= self.ranks
            inv_scale = _checks.grad_scale(scale)
            grad = self._check_grad(grad)
        except (TypeError, ValueError) as exc:
            error = exc
        if self.ranks > 1 and self.check_steps:
            # Ranks that disagree would enter different collectives: raise on every rank instead.
            try:
                self._transport.bytes_sent += 16 * (self.ranks - 1)
                agree_step(self._transport.comm, self._fingerprint(grad_scale, max_grad_norm, skip_nonfinite), error)
            except (TypeError, ValueError):
                self._transport.wait([req for _, _, req in self._pending])
                self._pending.clear()
                raise
        elif error is not None:
            raise error
        shard_grad = self._reduce(grad)
        norm = None
        if max_grad_norm is not None or skip_nonfinite:
            norm = math.sqrt(self._norm_sum(shard_grad)) * abs(inv_scale)
            if skip_nonfinite and not math.isfinite(norm):
                self.last_step_skipped = True
                return norm
            if max_grad_norm is not None:
                inv_scale *= clip_factor(norm, max_grad_norm)
        o, _ = self.shard
        for a, b, opt in self._opts:
            if self.stochastic_rounding:
                opt.seed = _layout.rounding_seed_for(self.seed, opt.state["step"] + 1, a)
            # The folded factor itself, as one process computes it (a grad_scale would be inverted).
            _stepping.step_one(opt, shard_grad[a - o:b - o], inv_scale, None, False, None)
        self.last_step_skipped = False
        self._transport.allgather_in_place(self._flat, self.layout.counts, self.layout.offsets)
        return norm

    def _fingerprint(self, grad_scale, max_grad_norm, skip_nonfinite):
        """What every rank must pass to step() alike, hashed to 63 bits."""
        opt = self._opts[0][2]
        text = repr((grad_scale, max_grad_norm, bool(skip_nonfinite), opt.state["step"], len(self._pending),
                     [getattr(opt, name) for name in self._hyper_names]))
        return zlib.crc32(text.encode()) | (len(text) << 32)

    # ---- checkpoints ----
    def save(self, path):
        """Writes a rank-count-independent checkpoint directory (see fastopt.distributed.save)."""
        from .checkpoint import save
        save(self, path)

    def load(self, path):
        from .checkpoint import load
        load(self, path)

    def __repr__(self):
        o, c = self.shard
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank {self.rank} of {self.ranks}, "
                f"shard [{o}, {o + c}) of {self.size} elements of {self.param.dtype})")
