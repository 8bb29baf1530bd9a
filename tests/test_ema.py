"""The EMA of the weights fused into the step (ema_decay=...): on the NumPy backends, every dtype
combination, against a separate lerp pass bit for bit and against float64 references; skipped
steps, checkpoints, the swap for evaluation, the functional form and bad input."""
import numpy as np
import pytest

import fastopt
from fastopt import _ema

import rule_table
from conftest import CPU_BACKENDS, random_arrays
from test_optimizers import cpu_module, supported_isas

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = ml_dtypes.bfloat16
SIZES = [1, 7, 1031, 4099]  # 4099: two CPU EMA pieces and a ragged third
STEPS = 60

# (param dtype, optimizer options): every combination the rules take.
COMBOS = {
    "f32": (np.float32, {}),
    "f64": (np.float64, {}),
    "f32-bf16state": (np.float32, dict(state_dtype="bfloat16")),
    "f16-master": (np.float16, dict(master_weights=True)),
    "bf16-master": (BF16, dict(master_weights=True)),
    "bf16-stochastic": (BF16, dict(stochastic_rounding=True, seed=3)),
}
RULES = [(fastopt.Adam, dict(lr=0.01)), (fastopt.AdamW, dict(lr=0.01, amsgrad=True)),
         (fastopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True))]


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _new_values(opt, p):
    """The value the EMA averages: the float32 master of a half param, else the param."""
    master = opt.state.get("master_weights") if opt._single else None
    return master if master is not None else p


def _lerp_pass(ema, new, weight):
    """The separate pass the fused EMA must equal: ema + w * (new - ema) in float32 (float64 for
    float64), rounded to nearest even into a bfloat16 EMA."""
    compute = np.float64 if ema.dtype == np.float64 else np.float32
    e = ema.astype(compute)
    out = e + compute(weight) * (np.asarray(new).astype(compute) - e)
    return out.astype(ema.dtype)


def _run(cls, kwargs, dtype, options, n, backend, steps=STEPS, ema_dtype=None, decay=0.9, warmup=False,
         seed=0, **step_options):
    param, grads = random_arrays(n, np.float64, seed, steps)
    p = param.astype(dtype)
    opt = cls(p, backend=backend, ema_decay=decay, ema_dtype=ema_dtype, ema_warmup=warmup, **kwargs, **options)
    return p, opt, [g.astype(dtype if dtype != np.float64 else np.float64) for g in grads]


def check_ema_against_lerp_passes(cls, kwargs, p, opt, grads, backend, **options):
    """Steps opt and a twin without EMA: after every step the EMA is exactly the lerp of the
    previous EMA toward the new param, and the params equal the twin's bit for bit."""
    plain_p = p.copy()
    plain = cls(plain_p, backend=backend, **kwargs, **options)
    expected = opt.ema.copy()
    for t, g in enumerate(grads, 1):
        opt.step(g)
        plain.step(g)
        expected = _lerp_pass(expected, _new_values(opt, p), _ema.weight(0.9, True, t))
        np.testing.assert_array_equal(_bits(opt.ema), _bits(expected), err_msg=f"{cls.__name__} step {t}")
    np.testing.assert_array_equal(_bits(p), _bits(plain_p))


# float64 params keep a float64 EMA: no bfloat16 EMA for them.
EMA_COMBOS = [(combo, ema_dtype) for combo in COMBOS for ema_dtype in (None, "bfloat16")
              if not (COMBOS[combo][0] == np.float64 and ema_dtype is not None)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("combo, ema_dtype", EMA_COMBOS)
def test_fused_ema_equals_a_separate_lerp_pass_bitwise(backend, combo, ema_dtype, n):
    """After every step the EMA is exactly the lerp of the previous EMA toward the new param;
    the params are those of the same optimizer without EMA, bit for bit."""
    dtype, options = COMBOS[combo]
    for cls, kwargs in RULES:
        p, opt, grads = _run(cls, kwargs, dtype, options, n, backend, ema_dtype=ema_dtype, warmup=True)
        wide = np.float64 if dtype == np.float64 else np.float32
        assert np.array_equal(_bits(opt.ema.astype(wide)),
                              _bits(_new_values(opt, p).astype(opt.ema.dtype).astype(wide)))
        check_ema_against_lerp_passes(cls, kwargs, p, opt, grads, backend, **options)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_ema_against_a_float64_reference(backend, combo):
    """The EMA of the float64 trajectory of the params (the rules themselves are checked against
    float64 references elsewhere). Tolerances: a float32 EMA keeps 60 lerps each within 2 ulp of
    float32 (relative 1e-6 of the largest |value|); a float64 EMA 1e-13; the rounding errors of
    each step decay by `decay`, so they add up to at most 1 / (1 - decay) = 10 steps' worth."""
    dtype, options = COMBOS[combo]
    n = 1031
    p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), dtype, options, n, backend, decay=0.9)
    ref = _new_values(opt, p).astype(np.float64).copy()
    for g in grads:
        opt.step(g)
        ref = ref + 0.1 * (_new_values(opt, p).astype(np.float64) - ref)
    scale = np.abs(ref).max()
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(opt.ema.astype(np.float64), ref, rtol=0, atol=rtol * 10 * scale)


def test_bfloat16_ema_against_a_float64_reference(backend):
    """A bfloat16 EMA rounds each step to 8 bits (relative 2**-9); those errors decay by `decay`,
    so they stay within 2**-9 / (1 - decay) = 10 * 2**-9 of the largest value."""
    p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), np.float32, {}, 1031, backend, ema_dtype="bfloat16")
    ref = p.astype(np.float64).copy()
    for g in grads:
        opt.step(g)
        ref = ref + 0.1 * (p.astype(np.float64) - ref)
    assert opt.ema.dtype == BF16
    np.testing.assert_allclose(opt.ema.astype(np.float64), ref, rtol=0, atol=10 * 2.0**-9 * np.abs(ref).max())


def test_backends_isa_levels_and_threads_agree_bitwise():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the compiled extension is the reference")
    n = 100003  # over the parallel threshold: several threads, several pieces each
    results = []
    cpu = cpu_module()
    active, threads = cpu.isa(), fastopt.get_num_threads()
    try:
        for backend in CPU_BACKENDS:
            for isa in supported_isas() if backend == "cpu" else [None]:
                for count in (1, 3):
                    if isa is not None:
                        cpu.select_isa(isa)
                    fastopt.set_num_threads(count)
                    for dtype, options, ema_dtype in ((np.float32, {}, None), (BF16, dict(master_weights=True),
                                                                                 "bfloat16")):
                        p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), dtype, options, n, backend, steps=4,
                                             ema_dtype=ema_dtype)
                        for g in grads:
                            opt.step(g)
                        results.append((f"{backend}-{isa}-{count}-{ema_dtype}", _bits(opt.ema).copy()))
    finally:
        cpu.select_isa(active)
        fastopt.set_num_threads(threads)
    for kind in (None, "bfloat16"):
        same = [(name, r) for name, r in results if name.endswith(f"-{kind}")]
        for name, r in same[1:]:
            np.testing.assert_array_equal(r, same[0][1], err_msg=f"{name} vs {same[0][0]}")


@pytest.mark.parametrize("combo", ["f32", "bf16-master", "bf16-stochastic"])
def test_grad_scale_clipping_and_skipped_steps(backend, combo):
    """grad_scale and max_grad_norm change the params the EMA follows, not its formula; a step
    skipped for a non-finite gradient leaves the EMA untouched, bit for bit."""
    dtype, options = COMBOS[combo]
    p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), dtype, options, 1031, backend, steps=8, decay=0.99)
    expected = opt.ema.copy()
    for t, g in enumerate(grads, 1):
        if t == 4:
            bad = g.copy()
            bad[5] = np.inf
            before = (_bits(p).copy(), _bits(opt.ema).copy())
            opt.step(bad * 1024, grad_scale=1024.0, max_grad_norm=1.0, skip_nonfinite=True)
            assert opt.last_step_skipped
            np.testing.assert_array_equal(_bits(p), before[0])
            np.testing.assert_array_equal(_bits(opt.ema), before[1])
            continue
        opt.step((g.astype(np.float32) * 1024).astype(g.dtype), grad_scale=1024.0, max_grad_norm=1.0,
                 skip_nonfinite=True)
        assert not opt.last_step_skipped
        expected = _lerp_pass(expected, _new_values(opt, p), 0.01)
        np.testing.assert_array_equal(_bits(opt.ema), _bits(expected))
    assert opt.state["step"] == len(grads) - 1


def test_float32_matches_torch_foreach_lerp():
    """torch.lerp with weight < 0.5 is self + weight * (end - self) in its scalar form, our formula;
    its vectorised CPU kernel fuses it into one FMA (Vectorized fmadd), which rounds once where we
    round twice: the results agree within one float32 ulp of the EMA, most elements bit for bit."""
    torch = pytest.importorskip("torch")
    p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), np.float32, {}, 1031, "cpu" if "cpu" in CPU_BACKENDS
                         else CPU_BACKENDS[0], decay=0.999)
    ema_t = torch.from_numpy(p.copy())
    for g in grads:
        opt.step(g)
        torch._foreach_lerp_([ema_t], [torch.from_numpy(p.copy())], 1 - 0.999)
    ours, theirs = opt.ema, ema_t.numpy()
    ulp = np.spacing(np.abs(ours).astype(np.float32))
    assert np.all(np.abs(ours - theirs) <= 2 * ulp)


@pytest.mark.parametrize("persistent", [False, True], ids=["new-grads", "same-grad-buffers"])
def test_param_lists_groups_and_views(backend, persistent):
    """A list of params (the segment table on the cpu backend): opt.ema holds one array per param,
    shaped as it, equal bit for bit to one optimizer per param. The same gradient buffers at every
    step reuse the step plan, whose warm-up weights follow the step count."""
    shapes = [(3, 5), (7,), (1,), (31, 33)]
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    groups = [dict(params=params[:2]), dict(params=params[2:], lr=0.003)]
    opt = fastopt.Adam(groups, lr=0.01, backend=backend, ema_decay=0.95, ema_warmup=True)
    singles = [fastopt.Adam(q, lr=lr, backend=backend, ema_decay=0.95, ema_warmup=True)
               for q, lr in zip([q.copy() for q in params], [0.01, 0.01, 0.003, 0.003])]
    buffers = [np.zeros(s, np.float32) for s in shapes]
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if persistent:
            for b, g in zip(buffers, grads):
                b[...] = g
        opt.step(buffers if persistent else grads)
        for single, g in zip(singles, grads):
            single.step(g)
    assert (opt._plan is not None) == persistent
    assert [e.shape for e in opt.ema] == shapes
    for e, single in zip(opt.ema, singles):
        np.testing.assert_array_equal(_bits(e), _bits(single.ema))


def test_flat_params_views():
    flat = fastopt.FlatParams([(4, 3), (5,)])
    flat.data[...] = np.arange(flat.size, dtype=np.float32)
    start = flat.views[0].copy()
    opt = fastopt.SGD(flat.data, lr=0.1, ema_decay=0.5)
    flat.grad[...] = 1.0
    opt.step(flat.grad)
    w, b = flat.views_of(opt.ema)
    assert w.shape == (4, 3) and b.shape == (5,)
    np.testing.assert_array_equal(_bits(w), _bits(_lerp_pass(start, flat.views[0], 0.5)))


def test_swap_for_evaluation(backend):
    p, opt, grads = _run(fastopt.Adam, dict(lr=0.01), BF16, dict(master_weights=True), 1031, backend, steps=5)
    for g in grads:
        opt.step(g)
    before, master = p.copy(), opt.state["master_weights"].copy()
    with opt.swap_ema():
        np.testing.assert_array_equal(_bits(p), _bits(opt.ema.astype(BF16)))
        with pytest.raises(RuntimeError, match="swap_ema"):
            opt.step(grads[0])
    np.testing.assert_array_equal(_bits(p), _bits(before))
    np.testing.assert_array_equal(opt.state["master_weights"], master)
    opt.step(grads[0])  # allowed again


def test_state_dict_and_file_round_trip(tmp_path, backend):
    p, opt, grads = _run(fastopt.AdamW, dict(lr=0.01), np.float32, {}, 1031, backend, steps=6,
                         ema_dtype="bfloat16")
    for g in grads[:3]:
        opt.step(g)
    sd = opt.state_dict()
    assert sd["state"][0]["ema"].dtype == BF16
    fastopt.save(opt, tmp_path / "ckpt.npz")
    copies = []
    for load in (lambda o: o.load_state_dict(sd), lambda o: fastopt.load(o, tmp_path / "ckpt.npz")):
        q = p.copy()
        other = fastopt.AdamW(q, lr=0.01, backend=backend, ema_decay=0.9, ema_dtype="bfloat16")
        load(other)
        copies.append((q, other))
    for g in grads[3:]:
        opt.step(g)
        for q, other in copies:
            other.step(g)
    for q, other in copies:
        np.testing.assert_array_equal(_bits(other.ema), _bits(opt.ema))


def test_checkpoints_with_and_without_an_ema():
    p = np.ones(7, np.float32)
    plain = fastopt.Adam(p.copy(), lr=0.1)
    plain.step(np.ones(7, np.float32))
    averaged = fastopt.Adam(p.copy(), lr=0.1, ema_decay=0.9)
    averaged.ema[...] = 5.0
    averaged.load_state_dict(plain.state_dict())  # no EMA saved: it restarts from the param
    np.testing.assert_array_equal(averaged.ema, averaged.param)
    with pytest.raises(ValueError, match="ema"):
        plain.load_state_dict(averaged.state_dict())
    sd = averaged.state_dict()
    sd["state"][0]["ema"] = np.zeros(7, np.float64)
    before = averaged.ema.copy()
    with pytest.raises(ValueError, match="ema"):
        averaged.load_state_dict(sd)
    np.testing.assert_array_equal(averaged.ema, before)


@pytest.mark.parametrize("bad, error, match", [
    (dict(ema_decay=1.0), ValueError, "ema_decay"), (dict(ema_decay=-0.1), ValueError, "ema_decay"),
    (dict(ema_decay=float("nan")), ValueError, "ema_decay"), (dict(ema_decay="0.9"), TypeError, "ema_decay"),
    (dict(ema_decay=0.9, ema_dtype="float16"), TypeError, "ema_dtype"),
    (dict(ema_decay=0.9, ema_dtype=np.int32), TypeError, "ema_dtype"),
    (dict(ema_warmup=True), ValueError, "ema_decay"), (dict(ema_dtype="bfloat16"), ValueError, "ema_decay"),
])
def test_bad_options_are_refused(bad, error, match):
    p = np.ones(5, np.float32)
    with pytest.raises(error, match=match):
        fastopt.Adam(p, **bad)
    np.testing.assert_array_equal(p, 1.0)


def test_float64_params_keep_a_float64_ema():
    with pytest.raises(TypeError, match="float64"):
        fastopt.Adam(np.ones(5), ema_decay=0.9, ema_dtype="bfloat16")
    assert fastopt.Adam(np.ones(5), ema_decay=0.9).ema.dtype == np.float64


def test_a_replaced_ema_of_the_wrong_kind_is_refused_before_any_write(backend):
    p = np.ones(9, np.float32)
    opt = fastopt.Adam(p, lr=0.1, backend=backend, ema_decay=0.9)
    for bad, error in ((np.zeros(9, np.float64), TypeError), (np.zeros(8, np.float32), ValueError),
                       (p, TypeError)):
        opt.state["ema"] = bad
        with pytest.raises(error, match="ema"):
            opt.step(np.ones(9, np.float32))
        np.testing.assert_array_equal(p, 1.0)
        assert opt.state["step"] == 0


def test_functional_form(backend):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(1031).astype(np.float32)
    m, v, ema = np.zeros_like(p), np.zeros_like(p), p.copy()
    opt = fastopt.Adam(p.copy(), lr=0.01, backend=backend, ema_decay=0.99)
    for t in range(1, 8):
        g = rng.standard_normal(1031).astype(np.float32)
        fastopt.functional.adam(p, g, m, v, step=t, lr=0.01, ema=ema, ema_decay=0.99, backend=backend)
        opt.step(g)
    np.testing.assert_array_equal(_bits(ema), _bits(opt.ema))
    with pytest.raises(ValueError, match="ema"):
        fastopt.functional.adam(p, g, m, v, step=9, ema=ema)  # ema without ema_decay
    with pytest.raises(TypeError, match="ema"):
        fastopt.functional.adam(p, g, m, v, step=9, ema=ema.astype(np.float64), ema_decay=0.9)
    with pytest.raises(TypeError, match="ema"):
        fastopt.functional.adam(p, g, m, v, step=9, ema=m, ema_decay=0.9)  # shares memory with a state


def test_warmup_formula():
    assert _ema.weight(0.999, True, 1) == 1.0 - 2.0 / 11.0
    assert _ema.weight(0.999, True, 10**6) == 1.0 - 0.999
    assert _ema.weight(0.999, False, 1) == 1.0 - 0.999


def test_sharded_optimizer_refuses_an_ema():
    from fastopt.distributed import ShardedOptimizer

    with pytest.raises(TypeError, match="ema_decay"):
        ShardedOptimizer(fastopt.Adam, np.ones(8, np.float32), None, ema_decay=0.9)


QUANTIZED_COMBOS = {k: COMBOS[k] for k in ("f32", "bf16-master", "bf16-stochastic")}


@pytest.mark.parametrize("scheme", ["8bit", "fp8"])
@pytest.mark.parametrize("ema_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("combo", list(QUANTIZED_COMBOS))
def test_fused_ema_with_quantized_state_equals_a_separate_lerp_pass(backend, combo, ema_dtype, scheme):
    """With 8-bit or fp8 state (whose driver steps block by block) the EMA is still exactly the
    lerp toward the new param after every step, and the params are those without the EMA."""
    dtype, options = QUANTIZED_COMBOS[combo]
    n = 3 * 4096 + 77  # quantized (over the 4096-element threshold), a partial last block
    for cls, kwargs in rule_table.rows("quantized_ema"):
        p, opt, grads = _run(cls, kwargs, dtype, dict(options, state_dtype=scheme), n, backend, steps=12,
                             ema_dtype=ema_dtype, warmup=True)
        check_ema_against_lerp_passes(cls, kwargs, p, opt, grads, backend, state_dtype=scheme, **options)
        assert opt.state["quantization"] == scheme  # the quantized driver ran
