"""Block-wise 8-bit optimizer state (state_dtype="8bit"): the code maps against bitsandbytes, the
nearest-code search against an exhaustive scan, every rule against a float64 reference of the
quantized rule, bit-for-bit agreement across backends, thread counts and ISA levels, the
dtype combinations, skipped steps and checkpoints."""
import numpy as np
import pytest

import fastopt
import rule_table
from conftest import CPU_BACKENDS, random_arrays
from fastopt import _blockwise_step, blockwise
from reference import Reference

STEPS = 60
CASES = [(cls.__name__.lower(), cls, kw) for cls, kws in rule_table.rows("cases") for kw in kws
         if cls.__name__ not in rule_table.names("quantized", False)]
CASE_IDS = [f"{cls.__name__}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for _, cls, kw in CASES]
# Partial last blocks (1, 7, 255, 257, 1031), a whole block, and several blocks and threads.
SIZES = [1, 7, 255, 256, 257, 1031, 70001]


@pytest.fixture
def quantize_small(monkeypatch):
    """Classes quantize arrays of any size (the threshold exists for memory, not correctness)."""
    monkeypatch.setattr(blockwise, "MIN_QUANTIZED_SIZE", 1)


# ---- the maps and the search ------------------------------------------------------------------

def test_maps_equal_bitsandbytes():
    F = pytest.importorskip("bitsandbytes.functional")
    for signed in (True, False):
        np.testing.assert_array_equal(blockwise.dynamic_map(signed).view(np.uint32),
                                      F.create_dynamic_map(signed=signed).numpy().view(np.uint32))


@pytest.mark.parametrize("code_map", [blockwise.SIGNED, blockwise.UNSIGNED], ids=["signed", "unsigned"])
def test_lookup_search_is_the_nearest_code(code_map):
    """The table search (numba mirror of blockwise.h) against np.searchsorted on every midpoint
    and its float32 neighbours, every map value, and a dense sample of [-1, 1]."""
    numba_bw = pytest.importorskip("fastopt.numba.blockwise")
    from numba import njit

    mids = code_map.mids[:-1]
    probes = [mids, np.nextafter(mids, np.float32(-2)), np.nextafter(mids, np.float32(2)), code_map.values,
              -code_map.values, np.linspace(-1, 1, 2_000_001, dtype=np.float32),
              np.float32([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 2.0 ** -23, -(2.0 ** -23)])]
    x = np.concatenate(probes).astype(np.float32)

    @njit
    def search_all(x, mids, lut):
        out = np.empty(x.size, np.uint8)
        for i in range(x.size):
            out[i] = numba_bw.encode_nearest(x[i], lut)
        return out

    np.testing.assert_array_equal(search_all(x, code_map.mids, code_map.lut), blockwise.encode(x, code_map))
    # Every float32 of [-1, 1] whose top 16 bits hold a midpoint (the buckets where the comparison
    # decides), in full: 2^16 values per such bucket.
    keys = np.unique(np.abs(mids).view(np.uint32) >> blockwise.LUT_SHIFT)
    low = np.arange(1 << 16, dtype=np.uint32)
    dense = ((keys[:, None] << blockwise.LUT_SHIFT) | low[None, :]).reshape(-1).view(np.float32)
    dense = np.concatenate([dense, -dense])
    np.testing.assert_array_equal(search_all(dense, code_map.mids, code_map.lut), blockwise.encode(dense, code_map))
    # Nearest: the distance to the chosen value is never above the distance to a neighbour.
    codes = blockwise.encode(x, code_map).astype(np.int64)
    chosen = np.abs(code_map.values[codes].astype(np.float64) - x)
    for step in (-1, 1):
        other = np.clip(codes + step, 0, 255)
        worse = np.abs(code_map.values[other].astype(np.float64) - x)
        # Not worse than a neighbour, up to the float32 rounding of the midpoint (a tie within
        # one ulp of x goes to the lower code).
        assert np.all(chosen <= worse + np.spacing(np.abs(x)).astype(np.float64))


def test_state_names_take_the_right_map():
    """Every state a rule keeps is classified: unsigned for the non-negative ones."""
    for rule in fastopt.rules.BUILTIN:
        for name in rule.STATES:
            expected = name in ("exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf")
            assert (blockwise.map_for(name) is blockwise.UNSIGNED) == expected, (rule.NAME, name)


# ---- against the float64 reference of the quantized rule --------------------------------------

def _reference_codes(values, code_map):
    """Quantize in float64: absmax, scale and normalized values in float64, then the nearest code
    (fp8: ml_dtypes' float8_e4m3fn rounding of the float64 value, saturated at 448). Returns the
    codes' ranks in the map's value order (what "one code apart" means for fp8's sign and
    magnitude codes), absmax, normalized values and the sorted values."""
    v = values.reshape(-1)
    blocks = blockwise.num_blocks(v.size)
    padded = np.zeros(blocks * blockwise.BLOCK_SIZE)
    padded[:v.size] = np.abs(v)
    absmax = padded.reshape(blocks, -1).max(axis=1)
    scale = absmax / blockwise.E4M3_MAX if code_map.fp8 else absmax
    normalized = v / np.repeat(np.where(scale == 0, 1.0, scale), blockwise.BLOCK_SIZE)[:v.size]
    if code_map.fp8:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        codes = np.clip(normalized, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    else:
        codes = np.searchsorted(code_map.mids[:-1].astype(np.float64), normalized, side="left")
    return _ranks(codes, code_map), absmax, normalized


def _sorted_values(code_map):
    values = code_map.values[np.isfinite(code_map.values)].astype(np.float64)
    return np.unique(values)  # -0 and +0 are one value


def _ranks(codes, code_map):
    return np.searchsorted(_sorted_values(code_map), code_map.values[codes].astype(np.float64))


def _block_max(x):
    x = np.broadcast_to(x, x.shape).reshape(-1)
    padded = np.zeros(blockwise.num_blocks(x.size) * blockwise.BLOCK_SIZE)
    padded[:x.size] = x
    return padded.reshape(-1, blockwise.BLOCK_SIZE).max(axis=1)


def _hyper(name, kwargs):
    hyper = dict(kwargs)
    if name == "adamw":
        hyper.setdefault("weight_decay", 1e-2)
        hyper["decoupled_weight_decay"] = True
    return hyper


def check_against_quantized_reference(opt, param, grads, name, kwargs, stats, scheme="8bit"):
    """Each step starts the float64 reference from fastopt's state (its codes dequantized) and
    parameters, then compares: parameters to float32 rounding, block scales to float32
    rounding, codes equal or (where the float64 value lies within float32 rounding of a
    midpoint) one apart."""
    ref = Reference(name, param, **_hyper(name, kwargs))
    sign_terms = rule_table.ROWS[type(opt).__name__].get("sign_terms")
    for g in grads:
        ref.p = param.astype(np.float64)
        for key in ref.s:
            ref.s[key] = blockwise.dequantize(opt.state[key], opt.state[key + "_absmax"],
                                              blockwise.map_for(key, scheme)).astype(np.float64)
        before = ref.p.copy()
        old = {key: value.copy() for key, value in ref.s.items()}
        opt.step(g)
        ref.step(g)
        # Parameters: one float32 step; its error is a few roundings of p (before and after: a
        # p that crosses zero cancels) and of the rule's terms, which can cancel too (momentum
        # against gradient): 2e-5 of the array's largest update bounds those, far below the
        # percents a wrong rule would move it.
        err = np.abs(param.astype(np.float64) - ref.p)
        size = np.maximum(np.abs(before), np.abs(ref.p)).astype(np.float32)
        tol = 4 * np.spacing(size).astype(np.float64) + 2e-5 * np.max(np.abs(ref.p - before))
        bad = err > tol
        if sign_terms is not None and old:
            # A rule stepping by lr * sign(a + b): where a + b is within float32 rounding of zero
            # the sign may differ (counted; it needs |a + b| below 1e-6 of its terms).
            a, b = sign_terms(old, g, kwargs)
            tie = np.abs(a + b) <= 1e-6 * (np.abs(a) + np.abs(b))
            stats["sign_ties"] = stats.get("sign_ties", 0) + int(np.sum(bad & tie))
            bad &= ~tie
        assert not np.any(bad), f"param off by {np.max(err - tol):.3g} beyond tolerance"
        for key, value in ref.s.items():
            code_map = blockwise.map_for(key, scheme)
            codes, absmax, normalized = _reference_codes(value, code_map)
            ours = _ranks(opt.state[key], code_map)
            # The float32 state's error: a few roundings of the rule's terms, which can cancel
            # (momentum against a new term): terms are at most |old| + |new| per element, so
            # 1e-6 (8 float32 ulps) of the block's largest such sum bounds it.
            terms = _block_max(np.abs(old.get(key, 0.0)) + np.abs(value))
            np.testing.assert_array_less(np.abs(opt.state[key + "_absmax"] - absmax), 1e-5 * absmax + 1e-6 * terms
                                         + 1e-38)
            diff = ours - codes
            assert np.all(np.abs(diff) <= 1), key
            off = np.nonzero(diff)[0]
            table = _sorted_values(code_map)
            low = np.minimum(ours[off], codes[off])
            mid = (table[low] + table[low + 1]) / 2
            # Within that rounding of a midpoint, in units of the block's scale.
            block = off // blockwise.BLOCK_SIZE
            unit = absmax[block] / blockwise.E4M3_MAX if code_map.fp8 else absmax[block]
            tol = 1e-5 * np.abs(mid) + 1e-6 * terms[block] / np.where(unit == 0, 1, unit)
            assert np.all(np.abs(normalized[off] - mid) <= tol), key
            stats["codes"] += ours.size
            stats["off_by_one"] += off.size


def _reference_params():
    """(case, scheme, n): every case at every size with 8-bit state; fp8 (E4M3 codes of
    s / (absmax / 448)) on fewer sizes, its driver being the 8-bit one. The size that runs on
    several threads (and compiles Numba's parallel loops) runs by default for each class's first
    case; the others are marked slow (their bits are the 1-thread ones: test_threads_and_isa...)."""
    first = {}
    for i, (_, cls, _) in enumerate(CASES):
        first.setdefault(cls, i)
    params = []
    for case, (_, cls, _) in enumerate(CASES):
        for scheme, sizes in (("8bit", SIZES), ("fp8", (7, 257, 1031))):
            for n in sizes:
                slow = n == SIZES[-1] and first[cls] != case
                params.append(pytest.param(case, scheme, n, id=f"{CASE_IDS[case]}-{scheme}-{n}",
                                           marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.mark.parametrize("case, scheme, n", _reference_params())
def test_matches_quantized_reference(backend, quantize_small, case, scheme, n):
    name, cls, kwargs = CASES[case]
    param, grads = random_arrays(n, np.float32, 0, STEPS)
    opt = cls(param, backend=backend, state_dtype=scheme, **kwargs)
    stats = dict(codes=0, off_by_one=0)
    check_against_quantized_reference(opt, param, grads, name, kwargs, stats, scheme=scheme)
    assert opt.state.get("quantization") == (scheme if stats["codes"] else None)  # plain SGD keeps none
    # Codes one apart are rare: the float32 update must land within rounding of a midpoint.
    assert stats["off_by_one"] <= 1e-3 * stats["codes"] + 2, stats


def test_e4m3_table_and_rounding_match_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(blockwise.e4m3_values(), codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32))
    finite = blockwise.FP8.values[np.isfinite(blockwise.FP8.values)]
    x = np.concatenate([np.linspace(-500, 500, 1_000_001, dtype=np.float32), finite,
                        np.nextafter(finite, np.float32(1e9)), np.nextafter(finite, np.float32(-1e9))])
    expected = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(blockwise.encode_e4m3(x), expected)


def test_functional_api_partial_blocks(backend, quantize_small):
    """The functional entry points take QuantizedState arrays of any size, and give the bits of
    the class (which the test above holds to the reference)."""
    for n in (1, 7, 255, 257, 1031):
        param, grads = random_arrays(n, np.float32, 1, STEPS)
        other = param.copy()
        m = _blockwise_step.state_like(param, "exp_avg")
        v = _blockwise_step.state_like(param, "exp_avg_sq")
        opt = fastopt.AdamW(other, lr=0.01, backend=backend, state_dtype="8bit")
        for t, g in enumerate(grads, 1):
            fastopt.functional.adamw(param, g, m, v, step=t, lr=0.01, backend=backend)
            opt.step(g)
        assert m.codes.dtype == np.uint8 and m.absmax.size == blockwise.num_blocks(n)
        np.testing.assert_array_equal(param, other)
        np.testing.assert_array_equal(m.codes, opt.state["exp_avg"])
        np.testing.assert_array_equal(v.absmax, opt.state["exp_avg_sq_absmax"])


# ---- bit for bit ----------------------------------------------------------------------------

def _run(backend, cls, kwargs, n, steps=12, dtype=np.float32, scheme="8bit", **options):
    param, grads = random_arrays(n, dtype, 3, steps)
    opt = cls(param, backend=backend, state_dtype=scheme, **kwargs, **options)
    for g in grads:
        opt.step(g)
    return param, opt


def _assert_same(a, b):
    pa, oa = a
    pb, ob = b
    np.testing.assert_array_equal(pa.view(np.uint8), pb.view(np.uint8))
    for key, value in oa.state.items():
        if hasattr(value, "dtype"):
            np.testing.assert_array_equal(value.view(np.uint8), ob.state[key].view(np.uint8), err_msg=key)


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs both the compiled and the Numba backend")
@pytest.mark.parametrize("scheme", blockwise.SCHEMES)
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_backends_agree_bitwise(quantize_small, case, scheme):
    _, cls, kwargs = CASES[case]
    _assert_same(*[_run(b, cls, kwargs, 1031, scheme=scheme) for b in ("cpu", "numba")])


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="compiled extension not available")
@pytest.mark.parametrize("scheme", blockwise.SCHEMES)
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_threads_and_isa_levels_agree_bitwise(case, scheme):
    _, cls, kwargs = CASES[case]
    cpu = fastopt._backend.BACKENDS["cpu"].module
    order = ["baseline", "x86-64-v3", "x86-64-v4"]
    isas = order[: order.index(cpu.best_isa()) + 1]
    before, active = fastopt.get_num_threads(), cpu.isa()
    results = []
    try:
        for isa in isas:
            cpu.select_isa(isa)
            for threads in (1, 3):
                fastopt.set_num_threads(threads)
                results.append(_run("cpu", cls, kwargs, 200003, steps=3, scheme=scheme))
    finally:
        cpu.select_isa(active)
        fastopt.set_num_threads(before)
    for r in results[1:]:
        _assert_same(results[0], r)


# ---- dtypes, skipped steps, clipping -------------------------------------------------------------

HALF_CASES = [(cls.__name__, kwargs) for cls, kwargs in rule_table.rows("quantized_half")]


@pytest.mark.parametrize("name, kwargs", HALF_CASES)
@pytest.mark.parametrize("mode", ["float16-master", "bfloat16-master", "bfloat16-stochastic"])
def test_half_params(backend, quantize_small, name, kwargs, mode):
    """Half params step their float32 master copy (or, bfloat16, stochastic rounding) with 8-bit
    state: the master copy follows the float32-param run with the same quantized state bit for
    bit; stochastic rounding stays within one bfloat16 ulp of it, and agrees across backends."""
    dtype = fastopt._dtypes.BFLOAT16 if mode.startswith("bfloat16") else np.dtype(np.float16)
    if dtype is None:
        pytest.skip("needs ml_dtypes")
    cls = getattr(fastopt, name)
    start, grads = random_arrays(1031, np.float32, 5, 20)
    half = start.astype(dtype)
    full = half.astype(np.float32)
    options = dict(stochastic_rounding=True, seed=7) if mode.endswith("stochastic") else dict(master_weights=True)
    opt_half = cls(half, backend=backend, state_dtype="8bit", **kwargs, **options)
    opt_full = cls(full, backend=backend, state_dtype="8bit", **kwargs)
    for g in grads:
        opt_half.step(g.astype(dtype))
        opt_full.step(g.astype(dtype).astype(np.float32))
    if "master_weights" in options:
        np.testing.assert_array_equal(opt_half.state["master_weights"].view(np.uint32), full.view(np.uint32))
        np.testing.assert_array_equal(half, full.astype(dtype))
    else:
        # Stochastic rounding perturbs p by < one bfloat16 ulp per step, and the states follow.
        assert np.all(np.abs(half.astype(np.float64) - full) <= 0.05 * np.abs(full) + 0.05)


def test_grad_scale_skip_and_clip(backend, quantize_small):
    start, grads = random_arrays(1031, np.float32, 2, 4)
    a, b = start.copy(), start.copy()
    oa = fastopt.Adam(a, lr=0.01, backend=backend, state_dtype="8bit")
    ob = fastopt.Adam(b, lr=0.01, backend=backend, state_dtype="8bit")
    for g in grads:
        oa.step(g * 256, grad_scale=256.0, max_grad_norm=5.0)
        ob.step(g, max_grad_norm=5.0)
    np.testing.assert_array_equal(a, b)
    saved = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in oa.state.items()}
    before = a.copy()
    bad = grads[0].copy()
    bad[3] = np.inf
    oa.step(bad, skip_nonfinite=True)
    assert oa.last_step_skipped
    np.testing.assert_array_equal(a, before)
    for k, v in saved.items():
        np.testing.assert_array_equal(oa.state[k], v)


def test_bad_input_changes_nothing(quantize_small):
    p = np.ones(300, np.float32)
    with pytest.raises(TypeError, match="float64"):
        fastopt.Adam(np.ones(300), state_dtype="8bit")
    m = _blockwise_step.state_like(p, "exp_avg")
    short = _blockwise_step.QuantizedState(np.zeros(300, np.uint8), np.zeros(1, np.float32), blockwise.UNSIGNED)
    with pytest.raises(ValueError, match="exp_avg_sq_absmax"):
        fastopt.functional.adam(p, p.copy(), m, short, step=1)
    with pytest.raises(TypeError, match="QuantizedState"):
        fastopt.functional.adam(p, p.copy(), m, np.zeros(300, np.float32), step=1)
    assert np.all(p == 1) and np.all(m.codes == blockwise.encode(np.float32([0]), blockwise.SIGNED)[0])


def test_small_arrays_keep_float32_state():
    """Below MIN_QUANTIZED_SIZE elements an array keeps float32 state, as bitsandbytes does."""
    small, large = np.zeros(100, np.float32), np.zeros(5000, np.float32)
    opt = fastopt.Adam([small, large], state_dtype="8bit")
    opt.step([np.ones(100, np.float32), np.ones(5000, np.float32)])
    assert opt.state[0]["exp_avg"].dtype == np.float32 and "quantization" not in opt.state[0]
    assert opt.state[1]["exp_avg"].dtype == np.uint8 and opt.state[1]["quantization"] == "8bit"


@pytest.mark.parametrize("name", rule_table.names("quantized", False))
@pytest.mark.parametrize("scheme", ["8bit", "fp8"])
def test_rules_without_moving_average_state_refuse_quantized_state(name, scheme):
    with pytest.raises(ValueError, match="iterate of the weights"):
        rule_table.cls(name)(np.ones(8192, np.float32), state_dtype=scheme)
