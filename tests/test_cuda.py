"""The CUDA backend against the CPU backend, on a CUDA device (skipped elsewhere, with the reason).

Both backends compile the same per-element code (fastopt/math) in the same compute type, without
FMA contraction (-ffp-contract=off / --fmad=false) and with correctly rounded sqrt and division
(NVRTC's defaults --prec-sqrt/--prec-div), so each element goes through the same IEEE operations
in the same order: the results must agree bit for bit."""
import numpy as np
import pytest

import fastopt
from conftest import random_arrays

cuda_info = fastopt.backends()["cuda"]
if not cuda_info["available"]:
    pytest.skip(f"CUDA backend unavailable: {cuda_info['reason']}", allow_module_level=True)
if not fastopt.backends()["cpu"]["available"]:
    pytest.skip("the compiled CPU backend is the reference here", allow_module_level=True)

import cupy  # noqa: E402

from test_optimizers import CASES, CASE_IDS  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")


def _on_device(host, offset):
    """A device copy of `host`, starting `offset` elements into a larger buffer (misaligned if 1)."""
    buf = cupy.zeros(host.size + offset, dtype=host.dtype if host.dtype != ml_dtypes.bfloat16 else np.uint16)
    view = buf[offset:]
    view[...] = cupy.asarray(host.view(np.uint16) if host.dtype == ml_dtypes.bfloat16 else host)
    return view


def _steps(cls, kwargs, param, grads, backend, xp_param=None, **options):
    target = param if xp_param is None else xp_param
    opt = cls(target, backend=backend, **kwargs, **options)
    for g in grads:
        opt.step(g)
    return opt


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 1031, 100003])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_matches_cpu_bitwise(case, dtype, n, offset):
    _, cls, kwargs = CASES[case]
    param, grads = random_arrays(n, dtype, 30, 12)
    d_param = _on_device(param, offset)
    d_grads = [_on_device(g, offset) for g in grads]
    _steps(cls, kwargs, param, grads, "cpu")
    _steps(cls, kwargs, d_param, d_grads, "cuda")
    np.testing.assert_array_equal(cupy.asnumpy(d_param).view(np.uint8), param.view(np.uint8))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_half_master_weights_match_cpu_bitwise(half, offset):
    host_dtype = np.float16 if half == "float16" else ml_dtypes.bfloat16
    param32, grads32 = random_arrays(1031, np.float32, 31, 12)
    param = param32.astype(host_dtype)
    grads = [g.astype(host_dtype) for g in grads32]
    d_param = _on_device(param, offset)
    d_grads = [_on_device(g, offset) for g in grads]
    cpu = fastopt.Adam(param, lr=0.01, master_weights=True, backend="cpu")
    gpu = fastopt.Adam(d_param, lr=0.01, master_weights=True, param_dtype=half, backend="cuda")
    for g, dg in zip(grads, d_grads):
        cpu.step(g)
        gpu.step(dg, grad_dtype=half)
    np.testing.assert_array_equal(cupy.asnumpy(d_param).view(np.uint16), param.view(np.uint16))
    np.testing.assert_array_equal(cupy.asnumpy(gpu.state["master_weights"]), cpu.state["master_weights"])


@pytest.mark.parametrize("n", [0, 1, 7, 8193, 1000003])
def test_grad_norm_matches_cpu(n):
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    expected = fastopt.grad_norm(g, backend="cpu")
    got = fastopt.grad_norm(cupy.asarray(g))
    # float64 sums of exact float32 squares in a different order: summation rounding only.
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert got == fastopt.grad_norm(cupy.asarray(g))  # the order depends on n alone


def test_fused_clip_and_skip_on_device():
    param, grads = random_arrays(4099, np.float32, 32, 3)
    d_param = cupy.asarray(param)
    cpu = fastopt.Adam(param, lr=0.01, backend="cpu")
    gpu = fastopt.Adam(d_param, lr=0.01)
    for g in grads:
        assert gpu.step(cupy.asarray(g), max_grad_norm=1.0) == pytest.approx(cpu.step(g, max_grad_norm=1.0), rel=1e-12)
    bad = cupy.asarray(grads[0]).copy()
    bad[5] = np.nan
    before = d_param.copy()
    gpu.step(bad, skip_nonfinite=True)
    assert gpu.last_step_skipped
    assert bool((d_param == before).all())


def test_mixing_numpy_and_cupy_is_a_type_error():
    with pytest.raises(TypeError, match="mix"):
        fastopt.functional.sgd(cupy.zeros(4, np.float32), np.zeros(4, np.float32), lr=0.1)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_bfloat16_state_matches_cpu_bitwise(case):
    """CuPy has no bfloat16 dtype: the class keeps bfloat16 state as uint16 on the device."""
    _, cls, kwargs = CASES[case]
    param, grads = random_arrays(1031, np.float32, 32, 12)
    d_param = cupy.asarray(param)
    d_opt = _steps(cls, kwargs, param, [cupy.asarray(g) for g in grads], "cuda", xp_param=d_param,
                   state_dtype="bfloat16")
    opt = _steps(cls, kwargs, param, grads, "cpu", state_dtype="bfloat16")
    np.testing.assert_array_equal(cupy.asnumpy(d_param), param)
    for key, value in opt.state.items():
        if hasattr(value, "dtype"):
            np.testing.assert_array_equal(cupy.asnumpy(d_opt.state[key]), value.view(np.uint16))


def test_arrays_on_two_gpus_are_refused():
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cupy.cuda.Device(0):
        p, g, m = (cupy.zeros(1031, cupy.float32) for _ in range(3))
    with cupy.cuda.Device(1):
        v = cupy.zeros(1031, cupy.float32)
    with pytest.raises(ValueError, match="exp_avg_sq is on GPU 1 but param is on GPU 0"):
        fastopt.functional.adam(p, g, m, v, step=1)


@pytest.mark.parametrize("ema_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("half", [None, "bfloat16"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_fused_ema_matches_cpu_bitwise(ema_dtype, half, offset):
    """The step fused with the EMA of the weights (optimizer_step_ema_kernel), with warm-up."""
    param, grads = random_arrays(100003, np.float32, 32, 12)
    options = dict(lr=0.01, ema_decay=0.99, ema_warmup=True, ema_dtype=ema_dtype)
    if half is not None:
        param, grads = param.astype(ml_dtypes.bfloat16), [g.astype(ml_dtypes.bfloat16) for g in grads]
        options["master_weights"] = True
    d_param = _on_device(param, offset)
    d_grads = [_on_device(g, offset) for g in grads]
    cpu = fastopt.Adam(param, backend="cpu", **options)
    gpu = fastopt.Adam(d_param, backend="cuda", param_dtype=half, **options)
    for g, dg in zip(grads, d_grads):
        cpu.step(g)
        gpu.step(dg, grad_dtype=half)
    np.testing.assert_array_equal(cupy.asnumpy(d_param).view(np.uint16), param.view(np.uint16))
    cpu_ema = cpu.ema.view(np.uint16) if cpu.ema.dtype == ml_dtypes.bfloat16 else cpu.ema
    np.testing.assert_array_equal(cupy.asnumpy(gpu.ema), cpu_ema)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_list_of_arrays_matches_cpu_bitwise(case):
    """A list in two param groups, one array misaligned, sizes across the launch's chunks: one
    segment-table launch per step, the bits of the CPU list step."""
    import fastopt.cuda as cuda

    _, cls, kwargs = CASES[case]
    sizes = [1, 7, 1031, cuda.CHUNK + 5, 2 * cuda.CHUNK, 100003]
    host = [random_arrays(n, np.float32, 40 + j, 6) for j, n in enumerate(sizes)]
    params = [p for p, _ in host]
    device = [_on_device(p, 1 if j == 2 else 0) for j, p in enumerate(params)]
    lr = cls(np.zeros(1), **kwargs).defaults["lr"]
    opts = [cls([{"params": ps[:3]}, {"params": ps[3:], "lr": lr * 0.5}], backend=b, **kwargs)
            for ps, b in ((params, "cpu"), (device, "cuda"))]
    for step in range(6):
        for opt, on_device in zip(opts, (False, True)):
            grads = [_on_device(gs[step], 1 if j == 2 else 0) if on_device else gs[step]
                     for j, (_, gs) in enumerate(host)]
            opt.step([None if (step == 2 and j == 4) else g for j, g in enumerate(grads)])
    for j, (a, b) in enumerate(zip(params, device)):
        np.testing.assert_array_equal(cupy.asnumpy(b).view(np.uint8), a.view(np.uint8), err_msg=f"param {j}")
