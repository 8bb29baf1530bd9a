"""Block-wise quantized optimizer states (``state_dtype="8bit"``; docs/quantized_states.md).

A state array of n elements is kept as n one-byte codes and one float32 scale per block of
BLOCK_SIZE consecutive elements (the last block may be partial). The "8bit" scheme is the
block-wise dynamic quantization of Dettmers et al. (2021), with the same code maps as
bitsandbytes: per block absmax = max |s|, code = the nearest entry of the map to s / absmax, and
s = map[code] * absmax. The map is signed for states that take either sign (first moments,
momentum buffers) and unsigned for those that never go negative (second moments, accumulators).

The nearest-code search is a lookup table indexed by the float's sign, exponent and top
LUT_MANTISSA_BITS mantissa bits, then one comparison with a midpoint: each table bucket holds at
most one midpoint (checked when the table is built), so the search is exact. An entry holds the
code below its bucket (high 16 bits) and the low 16 bits of the bucket's midpoint (its other bits
are the bucket's), so one load and one integer comparison find the code. The midpoints
are the float32 roundings of the means of neighbouring map values; x maps to code c where
mid[c - 1] < x <= mid[c] (a tie goes to the lower code). Every backend runs this search, and
reference() below runs it with np.searchsorted.
"""
import numpy as np

BLOCK_SIZE = 256
# Arrays with fewer elements keep float32 state, as bitsandbytes' min_8bit_size does: their
# state is small, and a block scale per few elements saves little.
MIN_QUANTIZED_SIZE = 4096
SCHEMES = ("8bit", "fp8")
E4M3_MAX = 448.0  # the largest finite float8 E4M3 value: an fp8 block's scale is absmax / E4M3_MAX

# The lookup table's layout, mirrored by csrc/fastopt/math/blockwise.h (a test compares them).
LUT_MANTISSA_BITS = 7
LUT_SHIFT = 23 - LUT_MANTISSA_BITS
LUT_LOW = 104 << LUT_MANTISSA_BITS       # magnitudes below 2^-23 share bucket 0
LUT_BUCKETS = (127 << LUT_MANTISSA_BITS) - LUT_LOW + 1  # the last bucket: 1.0 and above, NaN

# States that never go negative take the unsigned map; every other state the signed one.
UNSIGNED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf"})

_F32 = np.float32


def _linspace(start, end, steps):
    """torch.linspace(start, end, steps, dtype=torch.float32) on the CPU: a float32 step, each
    value start + step * i (the first half) or end - step * (steps - 1 - i), fused multiply-add."""
    start, end = _F32(start), _F32(end)
    step = np.float64(_F32((end - start) / _F32(steps - 1)))
    i = np.arange(steps)
    # The product of a float32 and a small integer is exact in float64: one rounding, as an FMA.
    first = np.float64(start) + step * i
    second = np.float64(end) - step * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(_F32)


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, value for value (float32, sorted)."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        bounds = _linspace(0.1, 1, items)
        means = (bounds[:-1] + bounds[1:]) / _F32(2)
        scale = _F32(10.0 ** (-(max_exponent_bits - 1) + i))
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if additional_items > 0:
        bounds = _linspace(0.1, 1, additional_items + 1)
        means = (bounds[:-1] + bounds[1:]) / _F32(2)
        scale = _F32(10.0 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1))
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return np.array(sorted(data), dtype=_F32)


class CodeMap:
    """A map and its search tables: values (256 float32, ascending), mids (the 255 midpoints and a
    +inf sentinel) and lut (int32, 2 * LUT_BUCKETS, by sign: the code below each bucket << 16 |
    the midpoint's low 16 magnitude bits, 0xFFFF where the bucket has none; negative buckets
    store those bits xor 0xFFFF, so one "greater than" serves both signs). int32, so that the
    kernels' vector loops gather it."""

    def __init__(self, values):
        values = np.asarray(values, dtype=_F32)
        if values.shape != (256,) or not np.all(np.diff(values) > 0):
            raise ValueError("a code map has 256 strictly increasing float32 values")
        self.values = values
        mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(_F32)
        self.mids = np.append(mids, _F32(np.inf))
        self.lut = self._build_lut(mids)

    @staticmethod
    def _build_lut(mids):
        b = np.arange(LUT_BUCKETS, dtype=np.int64)
        low = np.where(b == 0, 0, (b + LUT_LOW) << LUT_SHIFT).astype(np.uint32).view(_F32)
        high_bits = np.minimum((b + LUT_LOW + 1) << LUT_SHIFT, 0x7F800000).astype(np.uint32)
        high = np.where(b == LUT_BUCKETS - 1, _F32(np.inf), high_bits.view(_F32))
        # Positive x in [low, high): the code is the number of midpoints below low, plus one if
        # x is above the one midpoint the bucket may hold. Negative x in (-high, -low]: the
        # midpoints at or below -high, plus one if x is above the next.
        positive = np.searchsorted(mids, low, side="left")
        negative = np.searchsorted(mids, -high, side="right")
        for count, lo, hi in ((positive, low, high), (negative, -high, -low)):
            inside = np.searchsorted(mids, hi, side="right") - np.searchsorted(mids, lo, side="left")
            if inside.max() > 1:
                raise ValueError("a lookup bucket holds two midpoints: the map needs more mantissa bits")
        # The one midpoint a bucket may hold is the next after the code below it: inside when its
        # magnitude has the bucket's key. The clamped end buckets must hold none.
        every = np.append(mids, _F32(np.inf))
        key = b + LUT_LOW
        entries = []
        for count, sign in ((positive, 1), (negative, -1)):
            mid = every[count]
            bits = np.abs(mid).view(np.uint32)
            inside = (mid * sign > 0) & ((bits >> LUT_SHIFT) == key)
            if inside[0] or inside[-1]:
                raise ValueError("a clamped lookup bucket holds a midpoint")
            low16 = (bits & 0xFFFF) ^ (0xFFFF if sign < 0 else 0)
            entries.append((count.astype(np.int64) << 16) | np.where(inside, low16, 0xFFFF))
        return np.concatenate(entries).astype(np.int32)


SIGNED = CodeMap(dynamic_map(signed=True))
UNSIGNED = CodeMap(dynamic_map(signed=False))


def e4m3_values():
    """The float32 value of each float8 E4M3 code (OCP FP8 E4M3FN: bias 7, no infinity, 0x7f and
    0xff are NaN), decoded from the bits."""
    c = np.arange(256, dtype=np.uint32)
    e, m = (c >> 3) & 0xF, c & 7
    magnitude = np.where(e == 0, m.astype(np.float32) * np.float32(2.0 ** -9),
                         ((e + 120) << 23 | m << 20).astype(np.uint32).view(np.float32))
    values = np.where(c & 0x80, -magnitude, magnitude).astype(np.float32)
    values[(c & 0x7F) == 0x7F] = np.nan
    return values


class Fp8Map:
    """The fp8 scheme's table: values decodes a code; encoding is arithmetic (encode_e4m3), so
    mids and lut are placeholders the kernels do not read."""

    fp8 = True

    def __init__(self):
        self.values = e4m3_values()
        self.mids = np.zeros(1, np.float32)
        self.lut = np.zeros(1, np.int32)


CodeMap.fp8 = False
FP8 = Fp8Map()


def map_for(name, scheme="8bit"):
    """The code map of the state array called `name` under `scheme`."""
    if scheme == "fp8":
        return FP8
    return UNSIGNED if name in UNSIGNED_STATES else SIGNED


def encode_e4m3(x):
    """float32 -> E4M3 codes, round to nearest even, saturating at +-448, NaN to 0x7f (with sign):
    the integer algorithm of blockwise.h float_to_e4m3."""
    u = np.asarray(x, dtype=_F32).view(np.uint32)
    a = u & np.uint32(0x7FFFFFFF)
    tiny = (np.abs(np.asarray(x, dtype=_F32)) + _F32(16384.0)).view(np.uint32) - np.uint32(0x46800000)
    normal = ((a + np.uint32(0x7FFFF) + ((a >> 20) & 1)) >> 20) - np.uint32(120 << 3)
    code = np.where(a < 0x3C800000, tiny, normal)
    code = np.where(a >= 0x43E00000, 0x7E, code)
    code = np.where(a > 0x7F800000, 0x7F, code)
    return (code | ((u >> 24) & 0x80)).astype(np.uint8)


def num_blocks(n):
    return -(-n // BLOCK_SIZE)


def encode(normalized, code_map):
    """Codes of values in [-1, 1] (float32 array): the search the kernels run, by np.searchsorted."""
    x = np.asarray(normalized, dtype=_F32)
    return np.searchsorted(code_map.mids[:-1], x, side="left").astype(np.uint8)


def _block_absmax(x):
    n = x.size
    padded = np.zeros(num_blocks(n) * BLOCK_SIZE, dtype=x.dtype)
    padded[:n] = np.abs(x)
    return padded.reshape(-1, BLOCK_SIZE).max(axis=1) if n else np.zeros(0, x.dtype)


def block_scale(absmax, code_map):
    """The factor of a block's codes: absmax, or absmax / 448 (in float32) for fp8."""
    absmax = np.asarray(absmax, dtype=_F32)
    return absmax / _F32(E4M3_MAX) if code_map.fp8 else absmax


def quantize(values, code_map):
    """(codes, absmax) of a float array as the kernels store it: absmax per block in float32,
    codes of float32(values) / scale (a block of zeros keeps absmax 0 and the code of 0)."""
    x = np.asarray(values, dtype=_F32).reshape(-1)
    absmax = _block_absmax(x).astype(_F32)
    scale = np.repeat(block_scale(absmax, code_map), BLOCK_SIZE)[:x.size]
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = (x / np.where(scale > 0, scale, _F32(1))).astype(_F32)
    codes = encode_e4m3(normalized) if code_map.fp8 else encode(normalized, code_map)
    return codes, absmax


def dequantize(codes, absmax, code_map, dtype=np.float32):
    """The float values of (codes, absmax): the code's value times its block's scale, in float32."""
    codes = np.asarray(codes).reshape(-1)
    scale = np.repeat(block_scale(absmax, code_map), BLOCK_SIZE)[:codes.size]
    return (code_map.values[codes] * scale).astype(dtype)


def quantized(size, scheme):
    """Whether an array of `size` elements keeps quantized state under `scheme` (None: never)."""
    return scheme is not None and size >= MIN_QUANTIZED_SIZE


# ---- bitsandbytes' layout -------------------------------------------------------------------------

# bitsandbytes keeps a parameter's states as state1 (and state2), their block scales as absmax1
# (absmax2) and their maps as qmap1 (qmap2); its state_dict nests them under this key.
BNB_NESTED = "__bnb_optimizer_quant_state__"


def _numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def from_bitsandbytes(state, names):
    """One parameter's bitsandbytes state as a fastopt state entry (load it with
    ``opt.load_state_dict``): ``names`` are fastopt's names of state1, state2, the first entries
    of the optimizer's state names (Adam: ("exp_avg", "exp_avg_sq"); SGD: ("momentum_buffer",)).

    Codes are copied when bitsandbytes' map is the one fastopt keeps for that state (a signed
    moving average, or Adam's second moment: lossless); otherwise (bitsandbytes' one-state
    RMSprop and Adagrad use the signed map for a non-negative state) the state is dequantized
    with its map and quantized with fastopt's. 32-bit states (a small parameter) come as float32."""
    state = dict(state)
    state.update(state.pop(BNB_NESTED, {}))
    entry = {"step": int(_numpy(state.get("step", 0)))}
    quantized = False
    for j, name in enumerate(names, 1):
        values = _numpy(state[f"state{j}"]).reshape(-1)
        if values.dtype != np.uint8:
            entry[name] = values.astype(np.float32)
            continue
        quantized = True
        absmax = _numpy(state[f"absmax{j}"]).astype(np.float32).reshape(-1)
        qmap = _numpy(state[f"qmap{j}"]).astype(np.float32)
        ours = map_for(name)
        if qmap.shape == ours.values.shape and np.array_equal(qmap.view(np.uint32), ours.values.view(np.uint32)):
            entry[name], entry[name + "_absmax"] = values.copy(), absmax.copy()
        else:
            scale = np.repeat(absmax, BLOCK_SIZE)[:values.size]
            entry[name], entry[name + "_absmax"] = quantize(qmap[values] * scale, ours)
    if quantized:
        entry["quantization"] = "8bit"
    return entry


def to_bitsandbytes(entry, names):
    """A fastopt state entry (from ``opt.state_dict()["state"][i]``) in bitsandbytes' layout: step,
    state1/absmax1/qmap1 (and state2, ...) as torch tensors; float32 states as state1 (state2)."""
    import torch

    out = {"step": int(entry.get("step", 0))}
    for j, name in enumerate(names, 1):
        codes = _numpy(entry[name])
        out[f"state{j}"] = torch.from_numpy(codes.copy())
        if codes.dtype == np.uint8:
            out[f"absmax{j}"] = torch.from_numpy(_numpy(entry[name + "_absmax"]).astype(np.float32))
            out[f"qmap{j}"] = torch.from_numpy(map_for(name).values.copy())
    return out


# ---- the functional API's state arrays ----------------------------------------------------------

def state_like(param, name, value=0.0, scheme="8bit"):
    """A quantized state array for ``param`` (a QuantizedState), filled with ``value``, with the
    code map of the state called ``name``: pass it where a functional entry point takes that state."""
    from ._blockwise_step import state_like as make

    return make(param, name, value, scheme)


def __getattr__(name):
    if name == "QuantizedState":  # defined beside the step's checks, which import this module
        from ._blockwise_step import QuantizedState

        return QuantizedState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
