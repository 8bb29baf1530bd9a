"""Every CUDA kernel, run by the emulator of the CUDA execution model (cuda_emulator.py) through
the CUDA backend's own launchers, against the CPU backend through the public API: bit for bit.

The one exception is the gradient norm: the GPU adds the float64 squares in another order than
the CPU (a shuffle tree over a grid-stride split, fixed by n), so its result is checked bit for bit
against a NumPy model of that order, and against the CPU within the rounding bound of two float64
sums of the same non-negative terms."""
import shutil

import numpy as np
import pytest

import fastopt
import fastopt.cuda as cuda
from fastopt import _dtypes, _scalars
from fastopt.cuda import batchnorm as cuda_bn

import cuda_emulator as emu
from conftest import random_arrays
from test_optimizers import CASES, CASE_IDS

ml_dtypes = pytest.importorskip("ml_dtypes")
if shutil.which(emu.CXX) is None:
    pytest.skip(f"no C++ compiler ({emu.CXX}) to build the CUDA emulator", allow_module_level=True)
if not fastopt.backends()["cpu"]["available"]:
    pytest.skip("the compiled CPU backend is the reference here", allow_module_level=True)

BF16 = ml_dtypes.bfloat16
NUMPY_TYPES = {_dtypes.CODE_FLOAT32: np.float32, _dtypes.CODE_FLOAT64: np.float64,
               _dtypes.CODE_FLOAT16: np.float16, _dtypes.CODE_BFLOAT16: BF16}
SIZES = [0, 1, 3, 4, 5, 1031, 65537]
STEPS = 3


@pytest.fixture(scope="module")
def library():
    return emu.build(emu.shipped_sources())


@pytest.fixture
def device(library):
    dev = emu.EmulatedDevice(library)
    with emu.emulated_backend(dev):
        yield dev


def _placed(values, offset):
    """A copy of `values` starting `offset` elements into a larger array (misaligned if 1)."""
    buf = np.zeros(values.size + offset, values.dtype)
    view = buf[offset:]
    view[...] = values
    return view


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _assert_same_state(cpu, gpu):
    assert cpu.keys() == gpu.keys()
    for key, value in cpu.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(_bits(gpu[key]), _bits(value), err_msg=key)
        else:
            assert gpu[key] == value, key


def _run_both(cls, kwargs, param, grads, offset, **options):
    """The same steps on the CPU backend and on the emulated CUDA kernels; both must agree bitwise."""
    opts = []
    for backend in ("cpu", "cuda_emulated"):
        p = _placed(param, offset)
        opt = cls(p, backend=backend, **kwargs, **options)
        for g in grads:
            opt.step(_placed(g, offset))
        if hasattr(type(opt), "eval"):  # Schedule-Free: the train <-> eval moves, y -> x -> y
            opt.eval()
            x = p.copy()
            opt.train()
            opts.append((p, opt, x))
        else:
            opts.append((p, opt, None))
    (p_cpu, cpu, x_cpu), (p_gpu, gpu, x_gpu) = opts
    np.testing.assert_array_equal(_bits(p_gpu), _bits(p_cpu))
    if x_cpu is not None:
        np.testing.assert_array_equal(_bits(x_gpu), _bits(x_cpu))
    _assert_same_state(cpu.state, gpu.state)


def _combinations():
    for codes in cuda.supported_type_combinations():
        for stochastic in ((False, True) if codes[0] == _dtypes.CODE_BFLOAT16 else (False,)):
            yield codes, stochastic


COMBOS = list(_combinations())
COMBO_IDS = ["-".join(cuda._CXX_TYPES[c].replace("fastopt::", "") for c in codes) + ("-stochastic" if s else "")
             for codes, s in COMBOS]


def _options(codes, stochastic):
    param_code, _, state_code = codes
    options = {}
    if state_code == _dtypes.CODE_BFLOAT16:
        options["state_dtype"] = "bfloat16"
    if param_code in (_dtypes.CODE_FLOAT16, _dtypes.CODE_BFLOAT16):
        options.update(dict(stochastic_rounding=True, seed=7) if stochastic else dict(master_weights=True))
    return options


@pytest.mark.parametrize("combo", range(len(COMBOS)), ids=COMBO_IDS)
def test_every_optimizer_kernel_matches_cpu_bitwise(device, combo):
    """Each rule and variant for one (param, grad, state) type combination, aligned and not: every
    instantiation the launcher can name for it runs."""
    codes, stochastic = COMBOS[combo]
    for case, (_, cls, kwargs) in enumerate(CASES):
        param, grads = random_arrays(1031, np.float64, case, STEPS)
        param = param.astype(NUMPY_TYPES[codes[0]])
        grads = [g.astype(NUMPY_TYPES[codes[1]]) for g in grads]
        for offset in (0, 1):
            _run_both(cls, kwargs, param, grads, offset, **_options(codes, stochastic))
    # Plain SGD keeps no state, so the public API names it with float32 state whatever state_dtype
    # says; the launcher can still be asked for the bfloat16-state name: run it at the entry point.
    stateless = cuda.step_kernel_name(0, 0, *codes, stochastic)
    if stateless not in {name for name, _, _ in device.launched}:
        _stateless_sgd_entry_point(device, codes, stochastic)
    expected = {cuda.step_kernel_name(rule, v, *cuda.launched_codes(rule, v, codes), stochastic)
                for rule, variants in enumerate(_scalars.NUM_VARIANTS) for v in range(variants)}
    launched = {name for name, _, _ in device.launched}
    assert expected <= launched
    assert launched - expected <= {cuda.step_kernel_name(0, 0, *codes[:2], _dtypes.CODE_FLOAT32, stochastic)}


def _stateless_sgd_entry_point(device, codes, stochastic):
    param, (grad,) = random_arrays(1031, np.float64, 5, 1)
    results = []
    for run in (fastopt._cpu.optimizer_step, lambda *a: cuda.optimizer_step(*a, device=device)):
        p = param.astype(NUMPY_TYPES[codes[0]])
        master = param.astype(np.float32) if codes[0] in _dtypes.HALF_CODES and not stochastic else None
        run(0, 0, *codes, p, grad.astype(NUMPY_TYPES[codes[1]]), master, (), (0.05, 0.0, 1.0, 0.0), 1.0, 0.0, 1.0,
            12345)
        results.append((p, master))
    (p_cpu, m_cpu), (p_gpu, m_gpu) = results
    np.testing.assert_array_equal(_bits(p_gpu), _bits(p_cpu))
    if m_cpu is not None:
        np.testing.assert_array_equal(m_gpu, m_cpu)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [1, 18, 28], ids=[CASE_IDS[1], CASE_IDS[18], CASE_IDS[28]])
def test_sizes_and_offsets_match_cpu_bitwise(device, case, dtype, offset, n):
    """Grid-stride loops, vector packs and scalar tails at every size class; the norm runs too
    (skip_nonfinite computes it; it does not change a finite step)."""
    _, cls, kwargs = CASES[case]
    param, grads = random_arrays(n, dtype, n, STEPS)
    _run_both(cls, kwargs, param, grads, offset)
    p_cpu, p_gpu = _placed(param, offset), _placed(param, offset)
    for backend, p in (("cpu", p_cpu), ("cuda_emulated", p_gpu)):
        opt = cls(p, backend=backend, **kwargs)
        for g in grads:
            opt.step(_placed(g, offset), skip_nonfinite=True)
            assert not opt.last_step_skipped
    np.testing.assert_array_equal(_bits(p_gpu), _bits(p_cpu))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("half", ["float16", "bfloat16", "bfloat16-stochastic"])
def test_half_params_at_every_size_match_cpu_bitwise(device, half, n):
    codes = (_dtypes.CODE_FLOAT16 if half == "float16" else _dtypes.CODE_BFLOAT16,) * 2 + (_dtypes.CODE_FLOAT32,)
    param, grads = random_arrays(n, np.float64, n + 1, STEPS)
    param = param.astype(NUMPY_TYPES[codes[0]])
    grads = [g.astype(NUMPY_TYPES[codes[0]]) for g in grads]
    for offset in (0, 1):
        _run_both(fastopt.AdamW, dict(lr=0.01), param, grads, offset, **_options(codes, half.endswith("stochastic")))


def _norm_model(x, n):
    """The float64 sum of squares in the CUDA kernels' order: grid-stride per-thread sums, a
    shuffle-down tree per warp, warp sums in one warp's tree, then sum_partials_kernel."""
    threads = cuda.THREADS
    blocks = cuda._norm_blocks(n)
    stride = blocks * threads
    squares = np.zeros(-(-n // stride) * stride)
    v = x.astype(np.float64)
    squares[:n] = v * v
    acc = np.zeros(stride)
    for row in squares.reshape(-1, stride):
        acc = acc + row

    def tree(lanes):  # __shfl_down_sync: a source past lane 31 returns the lane's own value
        for offset in (16, 8, 4, 2, 1):
            src = np.arange(32) + offset
            lanes = lanes + np.where(src < 32, lanes[..., np.minimum(src, 31)], lanes)
        return lanes[..., 0]

    warp_sums = tree(acc.reshape(blocks, threads // 32, 32))
    partial = tree(np.concatenate([warp_sums, np.zeros((blocks, 32 - threads // 32))], axis=1))
    lanes = np.zeros(32)
    for i in range(blocks):
        lanes[i % 32] = lanes[i % 32] + partial[i]
    return float(tree(lanes))


@pytest.mark.parametrize("n", SIZES + [300001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16], ids=["f32", "f64", "f16", "bf16"])
def test_grad_norm_kernel_order(device, dtype, n):
    x = (np.random.default_rng(n).standard_normal(n) * 3).astype(dtype)
    got = fastopt.grad_norm(x, backend="cuda_emulated") ** 2
    squares = fastopt.grad_norm(x, backend="cpu") ** 2
    model = _norm_model(x, n)
    assert np.sqrt(model) ** 2 == got  # the kernel's order, bit for bit (both through the same sqrt)
    # Against the CPU's order: two float64 sums of the same n non-negative terms (squares of
    # float32 or narrower values are exact in float64) differ by at most 2 (n - 1) 2^-53 of the sum.
    assert abs(model - squares) <= 2 * max(n - 1, 0) * 2.0 ** -53 * max(model, squares) * 1.0001


# BatchNorm: every layout, training and evaluation, affine or not, with running statistics.
# (4, 130): two blocks of the per-channel kernels; (100, 40) and (2, 4, 9, 37): several row blocks
# and a partial column block; (3, 2, 1031): several chunks per channel.
SHAPES = [((5, 3), 1), ((4, 130), 1), ((100, 40), 1), ((4, 3, 7), 1), ((3, 2, 1031), 1), ((2, 3, 5, 7), 1),
          ((2, 5, 7, 3), -1), ((2, 4, 9, 37), -1)]


def _bn_data(shape, dtype, exact, seed=0, axis=1):
    """exact: multiples of 1/8, whose float64 sums and sums of squares are exact in any order, so
    the GPU's reduction order and the CPU's give the same bits. For float32 and float64 each
    channel also sums to zero, so that its mean is exact and so are the backward's sums of
    dy * (x - mean) (narrower data stores float32 statistics, which hide the order anyway)."""
    rng = np.random.default_rng(seed)
    if not exact:
        return (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    x = rng.integers(-128, 128, shape) / 8
    if dtype in (np.float32, np.float64) and len(shape) > 1:
        per_channel = np.moveaxis(x, axis, 0).reshape(shape[axis], -1)
        per_channel[:, -1] = -per_channel[:, :-1].sum(axis=1)
        x = np.moveaxis(per_channel.reshape(np.moveaxis(x, axis, 0).shape), 0, axis)
    return np.ascontiguousarray(x).astype(dtype)


def _bn_case(x, dy, axis, affine, training, backend):
    channels = x.shape[axis]
    rng = np.random.default_rng(channels)
    stat = np.float64 if x.dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 1.5, channels).astype(stat) if affine else None
    bias = rng.standard_normal(channels).astype(stat) if affine else None
    # A running mean in eighths keeps evaluation's sums of dy * (x - running_mean) exact too.
    running = ((rng.integers(-16, 16, channels) / 8).astype(stat), rng.uniform(0.5, 2, channels).astype(stat))
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, *running, training=training, axis=axis,
                                                 backend=backend)
    dx, dweight, dbias = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, training=training,
                                                     backend=backend)
    return [y, mean, invstd, *running, dx] + ([dweight, dbias] if affine else [])


def _bn_all(dtype, exact, compare):
    for shape, axis in SHAPES:
        x = _bn_data(shape, dtype, exact, len(shape), axis)
        dy = _bn_data(shape, dtype, exact, 99, axis)
        for affine in (True, False):
            for training in (True, False):
                cpu = _bn_case(x, dy, axis, affine, training, "cpu")
                gpu = _bn_case(x, dy, axis, affine, training, "cuda_emulated")
                for i, (a, b) in enumerate(zip(cpu, gpu)):
                    compare(b, a, f"{shape} affine={affine} training={training} output #{i}")


DTYPES = [np.float32, np.float64, np.float16, BF16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_batchnorm_kernel_matches_cpu_bitwise(device, dtype):
    def same_bits(got, want, what):
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)

    _bn_all(dtype, True, same_bits)
    code = _dtypes.dtype_code(np.dtype(dtype))
    xt, st = cuda_bn.TYPES[code]
    expected = {n for n in cuda_bn.name_expressions()
                if n.split("<")[1].startswith(f"{xt}, {st}") or n.endswith(f"<{st}>")}
    assert {name for name, _, _ in device.launched} == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batchnorm_on_general_data(device, dtype):
    """Data whose float64 sums round: the GPU adds the partial sums in another order than the CPU.
    float32 and narrower data: their float64 statistics round to the same stored values (checked
    bitwise on this data). float64: the statistics differ in their last bits, which the outputs
    carry: bounded by 2^-40 relative (a few thousand float64 units; rounding sums of up to 10^4
    terms in two orders moves them by well under that)."""
    def compare(got, want, what):
        if dtype == np.float64:
            np.testing.assert_allclose(got, want, rtol=2.0 ** -40, atol=2.0 ** -40 * np.abs(want).max(), err_msg=what)
        else:
            np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)

    _bn_all(dtype, False, compare)


def test_unaligned_batchnorm_buffers(device):
    """x and dy as offset views (the kernels read them element by element)."""
    shape = (2, 3, 5, 7)
    x = _placed(_bn_data(shape, np.float32, True).ravel(), 1).reshape(shape)
    cpu = _bn_case(x, x, 1, True, True, "cpu")
    gpu = _bn_case(x, x, 1, True, True, "cuda_emulated")
    for a, b in zip(cpu, gpu):
        np.testing.assert_array_equal(_bits(b), _bits(a))


def _bn_fused_case(x, z, dy, axis, affine, training, backend, with_mask=False):
    """BN + add + ReLU (z None: BN + ReLU) forward and backward; with_mask: the forward writes the
    ReLU's mask, which the backward reads instead of y (the mask is the last output)."""
    channels = x.shape[axis]
    rng = np.random.default_rng(channels)
    stat = np.float64 if x.dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 1.5, channels).astype(stat) if affine else None
    bias = rng.standard_normal(channels).astype(stat) if affine else None
    running = ((rng.integers(-16, 16, channels) / 8).astype(stat), rng.uniform(0.5, 2, channels).astype(stat))
    mask = np.full(x.shape, 7, np.uint8) if with_mask else None
    y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, *running, training=training, axis=axis,
                                                 backend=backend, activation="relu", residual=z, mask_out=mask)
    grads = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, training=training, backend=backend,
                                        activation="relu", y=None if with_mask else y, mask=mask,
                                        residual=z is not None)
    return [y, mean, invstd, *running, *(g for g in grads if g is not None)] + ([mask] if with_mask else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_fused_batchnorm_kernel_matches_cpu_bitwise(device, dtype):
    """Every BN + add + ReLU instantiation, bit for bit against the CPU backend on exact data (as
    above); about a third of the values are at or below 0 before the ReLU."""
    for shape, axis in SHAPES:
        x = _bn_data(shape, dtype, True, len(shape), axis)
        z = _bn_data(shape, dtype, True, 7, axis)
        dy = _bn_data(shape, dtype, True, 99, axis)
        for residual in (z, None):
            for affine in (True, False):
                for training in (True, False):
                    cpu = _bn_fused_case(x, residual, dy, axis, affine, training, "cpu")
                    gpu = _bn_fused_case(x, residual, dy, axis, affine, training, "cuda_emulated")
                    assert 0 < np.count_nonzero(cpu[0].astype(np.float64) == 0) < x.size
                    for i, (a, b) in enumerate(zip(cpu, gpu)):
                        np.testing.assert_array_equal(_bits(b), _bits(a), err_msg=f"{shape} {affine} {training} #{i}")
                    if affine and training:  # the mask written and read: the same outputs; the mask is y > 0
                        masked = _bn_fused_case(x, residual, dy, axis, affine, training, "cuda_emulated", True)
                        np.testing.assert_array_equal(masked[-1], (cpu[0].astype(np.float64) > 0).astype(np.uint8))
                        for i, (a, b) in enumerate(zip(cpu, masked[:-1])):
                            np.testing.assert_array_equal(_bits(b), _bits(a), err_msg=f"mask {shape} #{i}")
    code = _dtypes.dtype_code(np.dtype(dtype))
    xt, st = cuda_bn.TYPES[code]
    fused = {n for n in cuda_bn.fused_name_expressions() if n.split("<")[1].startswith(f"{xt}, {st}")}
    assert fused <= {name for name, _, _ in device.launched}
