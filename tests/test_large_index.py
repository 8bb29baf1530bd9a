"""64-bit indexing: the thread split for sizes beyond 2**31 (without allocating them), and one
real step of more than 2**31 elements (slow: only where the memory is there)."""
import numpy as np
import pytest

import fastopt

cpu = pytest.importorskip("fastopt._cpu")


@pytest.mark.parametrize("n", [2**31 - 1, 2**31, 2**31 + 17, 2**32 + 5, 3 * 2**33 + 1, 2**40 + 3])
@pytest.mark.parametrize("threads", [2, 3, 16, 64])
def test_thread_ranges_cover_large_sizes(n, threads):
    ranges = cpu.thread_ranges(n, threads)
    # Several pieces per thread, so that a thread whose core is busy leaves its share to the others.
    assert threads < len(ranges) <= threads * cpu.pieces_per_thread
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (lo, hi), (next_lo, _) in zip(ranges, ranges[1:]):
        assert lo <= hi == next_lo
        assert hi % cpu.chunk_align == 0  # no two threads write the same cache line
    assert sum(hi - lo for lo, hi in ranges) == n


def test_small_sizes_run_on_one_thread():
    assert cpu.thread_ranges(cpu.parallel_threshold - 1, 8) == [(0, cpu.parallel_threshold - 1)]
    assert len(cpu.thread_ranges(cpu.parallel_threshold * 8, 8)) > 1


def _available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _zero_pages(n, dtype):
    """n zeros that cost no memory until written: NumPy takes large zeroed buffers from calloc,
    i.e. fresh anonymous pages, which the kernel maps to its shared zero page on read."""
    return np.zeros(n, dtype)


BEYOND_2_31 = 2**31 + 33  # the last element's index does not fit in int32; nor does its byte offset


def _marked(g):
    """Nonzero gradient values at the start, on both sides of 2**31 and at the end; only the
    pages written are backed by memory. Returns {index: value}."""
    marks = {0: 1.0, 2**31 - 1: 2.0, 2**31: 3.0, 2**31 + 1: -4.0, BEYOND_2_31 - 1: 5.0}
    for i, value in marks.items():
        g[i] = value
    return marks


def test_grad_norm_beyond_2_31_elements():
    """The norm's block loop reads every element: a wrapped 32-bit index would miss the marks
    past 2**31 (or read out of bounds). Reads of unwritten pages cost no memory (about 1 s)."""
    if _available_bytes() < 2**30:
        pytest.skip("needs 1 GiB of free memory for the page tables")
    try:
        g = _zero_pages(BEYOND_2_31, np.float32)
    except MemoryError:
        pytest.skip("the system refuses an 8 GiB address-space reservation (overcommit policy)")
    marks = _marked(g)
    expected = np.sqrt(sum(v * v for v in marks.values()))
    assert fastopt.grad_norm(g, backend="cpu") == pytest.approx(expected, rel=1e-15)


@pytest.mark.slow
def test_real_step_beyond_2_31_elements():
    """One SGD step over more than 2**31 float32 elements. param is written everywhere (8 GiB);
    grad is zero except at a few marked elements, so it costs almost no memory. Weight decay makes
    every element's update visible: p = 1 - lr * (g + wd * 1)."""
    n = BEYOND_2_31
    needed = 4 * n + 2**30
    if _available_bytes() < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free memory")
    p = np.ones(n, np.float32)
    g = _zero_pages(n, np.float32)
    marks = _marked(g)
    lr, wd = 0.25, 0.5  # every value below is exact in float32
    fastopt.SGD(p, lr=lr, weight_decay=wd, backend="cpu").step(g)
    for i, value in marks.items():
        assert p[i] == np.float32(1 - lr * (value + wd)), i
        p[i] = 1 - lr * wd
    chunk = 2**26
    for start in range(0, n, chunk):
        assert np.all(p[start:start + chunk] == np.float32(1 - lr * wd)), start
