"""Many parameter tensors in one contiguous buffer, so a whole model is one kernel call."""
import math

import numpy as np


class FlatParams:
    """One contiguous buffer ``data`` and a view into it per shape (``views``), and a gradient
    twin ``grad`` with views ``grad_views``. Each view starts on a 64-byte boundary so that
    per-tensor work on the views stays vector-aligned; the padding is zero and stays zero under
    every optimizer, since its gradient is zero.

    >>> fp = FlatParams([(784, 128), (128,)], "float32")
    >>> w, b = fp.views
    >>> opt = fastopt.Adam(fp.data); opt.step(fp.grad)
    """

    ALIGN_BYTES = 64

    def __init__(self, shapes, dtype="float32", xp=np, *, grad_dtype=None):
        self.dtype = np.dtype(dtype)
        self.shapes = [tuple(int(d) for d in (s if isinstance(s, (tuple, list)) else (s,))) for s in shapes]
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise ValueError(f"negative dimension in shape {shape}")
        align = max(1, self.ALIGN_BYTES // self.dtype.itemsize)
        self.offsets = []
        total = 0
        for shape in self.shapes:
            total = (total + align - 1) // align * align
            self.offsets.append(total)
            total += math.prod(shape)
        self.size = total
        self.data = xp.zeros(total, dtype=self.dtype)
        self.grad = xp.zeros(total, dtype=np.dtype(grad_dtype) if grad_dtype is not None else self.dtype)
        self.views = self._views(self.data)
        self.grad_views = self._views(self.grad)

    @classmethod
    def from_arrays(cls, arrays, *, grad_dtype=None):
        """A FlatParams holding copies of `arrays` (one dtype, NumPy or CuPy, or torch CPU
        tensors): its ``views`` replace the arrays, which stay as they were."""
        from ._backend import array_kind, array_module
        from ._params import as_array

        arrays = [as_array(a, f"arrays[{i}]", writable=False) for i, a in enumerate(arrays)]
        if not arrays:
            raise ValueError("from_arrays needs at least one array")
        dtypes = {a.dtype for a in arrays}
        kinds = {array_kind(a) for a in arrays}
        if len(dtypes) != 1 or len(kinds) != 1:
            raise TypeError(f"from_arrays needs arrays of one dtype and kind, got {sorted(map(str, dtypes))}")
        flat = cls([a.shape for a in arrays], dtypes.pop(), array_module(kinds.pop()), grad_dtype=grad_dtype)
        for view, a in zip(flat.views, arrays):
            view[...] = a
        return flat

    def _views(self, buffer):
        return [buffer[o:o + math.prod(s)].reshape(s) for o, s in zip(self.offsets, self.shapes)]

    def views_of(self, buffer):
        """Views of another buffer of this layout, one per shape: an optimizer's state array of
        ``data``, or its EMA of the weights (``flat.views_of(opt.ema)``)."""
        if buffer.ndim != 1 or buffer.size != self.size:
            raise ValueError(f"views_of needs a flat buffer of {self.size} elements, got shape {buffer.shape}")
        return self._views(buffer)

    def __len__(self):
        return len(self.shapes)

    def __repr__(self):
        return f"FlatParams({len(self.shapes)} tensors, {self.size} elements of {self.dtype})"
