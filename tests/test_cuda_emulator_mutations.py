"""The emulated CUDA tests can fail: deliberate bugs in a copy of the kernel sources (or in a
launch) make the emulated run disagree with the CPU backend, or make the emulator report a fault,
while the shipped sources agree. Each mutation is a bug a GPU run would show and NVRTC would not."""
import shutil

import numpy as np
import pytest

import fastopt
import fastopt.cuda as cuda
from fastopt.cuda import _nvrtc
from fastopt.cuda import batchnorm as cuda_bn

import cuda_emulator as emu

if shutil.which(emu.CXX) is None:
    pytest.skip(f"no C++ compiler ({emu.CXX}) to build the CUDA emulator", allow_module_level=True)
if not fastopt.backends()["cpu"]["available"]:
    pytest.skip("the compiled CPU backend is the reference here", allow_module_level=True)

BN_FLOAT = [n for n in cuda_bn.name_expressions() if "<float, float" in n or n.endswith("<float>")]
NORM = ["sum_of_squares_kernel<float>", "sum_partials_kernel"]
ADAM = ["optimizer_step_kernel<fastopt::Adam, 0, float, float, float, float, false>"]


def _device(source_name, names, old=None, new=None, occurrence=0, launch_hook=None):
    """An emulated device running `names` of `source_name`, with its `occurrence`-th `old` replaced
    by `new` (the shipped text when old is None)."""
    text = _nvrtc.read_source(source_name)
    if old is not None:
        at = -1
        for _ in range(occurrence + 1):
            at = text.index(old, at + 1)  # a mutation that no longer applies fails here
        text = text[:at] + new + text[at + len(old):]
    sources = {source_name: (text, names)}
    return emu.EmulatedDevice(emu.build(sources, chunks=1), sources=sources, launch_hook=launch_hook)


def _batchnorm_agrees(device, shape, axis):
    x = (np.random.default_rng(1).standard_normal(shape) * 2 + 3).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    weight, bias = np.linspace(0.5, 1.5, shape[axis], dtype=np.float32), np.ones(shape[axis], np.float32)
    outputs = []
    with emu.emulated_backend(device):
        for backend in ("cpu", "cuda_emulated"):
            y, mean, invstd = fastopt.batch_norm_forward(x, weight, bias, axis=axis, backend=backend)
            dx, dw, db = fastopt.batch_norm_backward(dy, x, weight, mean, invstd, axis=axis, backend=backend)
            outputs.append([y, mean, invstd, dx, dw, db])
    return all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(*outputs))


def _norm_agrees(device, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    with emu.emulated_backend(device):
        got = fastopt.grad_norm(x, backend="cuda_emulated")
    return got == pytest.approx(fastopt.grad_norm(x, backend="cpu"), rel=1e-12, abs=0)


def _adam_runs(device, n):
    p = np.zeros(n, np.float32)
    with emu.emulated_backend(device):
        fastopt.Adam(p, lr=0.1, backend="cuda_emulated").step(np.ones(n, np.float32))
    return p


# __syncthreads() #0 is bn_reduce_strided's (axis-1 layouts), #1 bn_reduce_rows' (channels-last).
@pytest.mark.parametrize("which, shape, axis", [(0, (4, 3, 7), 1), (1, (100, 40), 1), (1, (2, 5, 7, 3), -1)])
def test_removed_syncthreads_in_a_batchnorm_reduction(which, shape, axis):
    assert _batchnorm_agrees(_device(cuda_bn.SOURCE, BN_FLOAT), shape, axis)
    broken = _device(cuda_bn.SOURCE, BN_FLOAT, "__syncthreads();", "", which)
    assert not _batchnorm_agrees(broken, shape, axis)


# The per-warp tree of sum_of_squares_kernel (#0) and the partials' tree of sum_partials_kernel
# (#2; it matters from 17 partials, n > 16 * 4096). Tree #1 adds the 8 warp sums of a block: from
# offset 8 it still reaches all of them, a mutant that is not a bug (no test can tell it apart).
@pytest.mark.parametrize("which, n", [(0, 1031), (0, 65537), (2, 300001)])
def test_shuffle_offset_8_instead_of_16_in_the_norm_tree(which, n):
    assert _norm_agrees(_device(cuda.SOURCE, NORM), n)
    broken = _device(cuda.SOURCE, NORM, "int offset = 16;", "int offset = 8;", which)
    assert not _norm_agrees(broken, n)


def test_less_equal_in_the_optimizer_grid_stride_tail():
    """One element past the end is read and written: the guard bytes after the buffer catch it."""
    tail = "for (long long i = done + first; i < n; i += stride)"
    assert (_adam_runs(_device(cuda.SOURCE, ADAM), 1031) != 0).all()
    broken = _device(cuda.SOURCE, ADAM, tail, tail.replace("i < n", "i <= n"))
    with pytest.raises(emu.EmulatorError, match="wrote outside a buffer"):
        _adam_runs(broken, 1031)


def test_less_equal_in_the_batchnorm_grid_stride_tail():
    loop = "k < n;"
    assert _batchnorm_agrees(_device(cuda_bn.SOURCE, BN_FLOAT), (4, 3, 7), 1)
    broken = _device(cuda_bn.SOURCE, BN_FLOAT, loop, "k <= n;")  # bn_normalize_all's
    with pytest.raises(emu.EmulatorError, match="wrote outside a buffer"):
        _batchnorm_agrees(broken, (4, 3, 7), 1)


def _one_block_short(kernel):
    """A launch hook: `kernel`'s grid one block smaller in its last dimension of more than one."""
    def hook(name, grid, block):
        if name.startswith(kernel + "<"):
            dims = [i for i, g in enumerate(grid) if g > 1] or [0]
            grid = tuple(g - (i == dims[-1]) for i, g in enumerate(grid))
        return grid, block
    return hook


# The kernels that map blocks to work one to one; (4, 130): 2 blocks of 128 channels to finalize,
# (3, 2, 1031): 2 chunks per channel, (100, 40): 2 column blocks x 4 row blocks.
@pytest.mark.parametrize("kernel, shape, axis", [
    ("fastopt_bn_reduce_strided", (3, 2, 1031), 1), ("fastopt_bn_reduce_rows", (100, 40), 1),
    ("fastopt_bn_finalize_forward", (4, 130), 1), ("fastopt_bn_finalize_backward", (4, 130), 1)])
def test_a_grid_one_block_too_small(kernel, shape, axis):
    assert _batchnorm_agrees(_device(cuda_bn.SOURCE, BN_FLOAT), shape, axis)
    broken = _device(cuda_bn.SOURCE, BN_FLOAT, launch_hook=_one_block_short(kernel))
    assert not _batchnorm_agrees(broken, shape, axis)
    assert any(name.startswith(kernel) for name, _, _ in broken.launched)


def test_grid_stride_kernels_cover_any_grid():
    """Not a mutation: the grid-stride kernels are correct on a smaller grid, by design."""
    for kernel in ("fastopt_bn_normalize", "fastopt_bn_input_grad"):
        assert _batchnorm_agrees(_device(cuda_bn.SOURCE, BN_FLOAT, launch_hook=_one_block_short(kernel)),
                                 (4, 3, 70), 1)


# The emulator's own checks.
def test_a_scalar_of_the_wrong_size_is_refused():
    device = _device(cuda.SOURCE, NORM)
    x, partial = np.ones(8, np.float32), np.empty(1)
    with pytest.raises(emu.EmulatorError, match="argument 1: the kernel takes i8, the launcher passed i4"):
        device.launch(cuda.SOURCE, NORM, NORM[0], (1,), (256,), (x, np.int32(8), partial))
    with pytest.raises(emu.EmulatorError, match="not among the instantiations"):
        device.launch(cuda.SOURCE, NORM[1:], NORM[0], (1,), (256,), (x, np.int64(8), partial))


def test_a_shuffle_after_some_lanes_exited_is_reported():
    early_exit = "if (lane == 0) warp_sums[warp] = acc;"
    device = _device(cuda.SOURCE, NORM, early_exit, "if (lane >= 16) return;\n" + early_exit)
    with pytest.raises(emu.EmulatorError, match="which has exited"):
        device.launch(cuda.SOURCE, NORM, NORM[0], (1,), (256,), (np.ones(8, np.float32), np.int64(8), np.empty(1)))


def test_launch_bounds_are_enforced():
    """A GPU refuses a launch with more threads per block than the kernel's __launch_bounds__."""
    device = _device(cuda_bn.SOURCE, BN_FLOAT, "__launch_bounds__(256)", "__launch_bounds__(128)")
    with pytest.raises(emu.EmulatorError, match="over its __launch_bounds__"):
        _batchnorm_agrees(device, (4, 3, 7), 1)


PROBE = """
__global__ void probe(int* out) {
    const int t = threadIdx.x;
    __shared__ int first[64];
    first[t] = t * 10;
    __syncthreads();
    out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
    out[64 + t] = __shfl_up_sync(0xffffffffu, t, 2);
    out[128 + t] = __shfl_sync(0xffffffffu, t, 5) + __shfl_down_sync(0xffffffffu, 0, 1, 16);
    out[192 + t] = first[63 - t];
    atomicAdd(out + 256, 1);
    atomicMax(out + 257, int(blockIdx.x));
}
"""


def test_the_shim_intrinsics_as_a_gpu_defines_them():
    """Shuffles within each warp (xor, up with the edge lanes keeping their value, an index),
    shared memory across warps after a barrier, atomics across blocks."""
    sources = {"probe.cu": (PROBE, ["probe"])}
    device = emu.EmulatedDevice(emu.build(sources, chunks=1), sources=sources)
    out = np.zeros(258, np.int32)
    device.launch("probe.cu", ["probe"], "probe", (3,), (64,), (out,))
    t = np.arange(64)
    np.testing.assert_array_equal(out[:64], t ^ 1)
    np.testing.assert_array_equal(out[64:128], np.where(t % 32 >= 2, t - 2, t))
    np.testing.assert_array_equal(out[128:192], t - t % 32 + 5)
    np.testing.assert_array_equal(out[192:256], (63 - t) * 10)
    assert out[256] == 3 * 64 and out[257] == 2
