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
    assert len(ranges) == threads
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


@pytest.mark.slow
def test_real_step_beyond_2_31_elements():
    n = 2**31 + 33
    needed = 8 * n + 2**30
    if _available_bytes() < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free memory")
    p = np.ones(n, np.float32)
    g = np.full(n, 2.0, np.float32)
    g[-1] = 4.0
    fastopt.SGD(p, lr=0.25, backend="cpu").step(g)
    assert p[0] == 0.5 and p[2**31] == 0.5 and p[-2] == 0.5 and p[-1] == 0.0
    assert fastopt.grad_norm(g[-1000:]) == pytest.approx(np.sqrt(999 * 4.0 + 16.0))
