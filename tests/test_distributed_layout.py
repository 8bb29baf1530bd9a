"""fastopt.distributed's layout arithmetic, in one process (no MPI needed)."""
import random

import numpy as np
import pytest

from fastopt._scalars import step_seed
from fastopt.distributed._layout import NORM_BLOCK, ShardLayout, dyadic_pieces, inverse_step_seed, rounding_seed_for


@pytest.mark.parametrize("size", [0, 1, NORM_BLOCK, 3 * NORM_BLOCK + 5, 10 ** 6])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_shards_tile_the_buffer_on_block_boundaries(size, ranks):
    layout = ShardLayout(size, ranks)
    assert sum(layout.counts) == size and layout.shard_size % NORM_BLOCK == 0
    assert all(o % NORM_BLOCK == 0 or o == size for o in layout.offsets)  # empty shards sit at the end
    assert all(layout.offsets[r] + layout.counts[r] == layout.offsets[r + 1] for r in range(ranks - 1))
    assert layout.padded_size == ranks * layout.shard_size >= size
    blocks = [b for r in range(ranks) for b in layout.blocks(r)]
    assert blocks == [(s, min(s + NORM_BLOCK, size)) for s in range(0, size, NORM_BLOCK)]


def test_dyadic_pieces_are_aligned_and_cover_the_interval():
    rng = random.Random(0)
    for _ in range(2000):
        start = rng.randrange(0, 1 << 30)
        stop = start + rng.randrange(0, 1 << 20)
        pieces = dyadic_pieces(start, stop)
        assert sum(b - a for a, b in pieces) == stop - start and len(pieces) <= 2 * 31
        for a, b in pieces:
            n = b - a
            assert n & (n - 1) == 0 and a % n == 0
            assert all(a + i == a ^ i for i in (0, n // 2, n - 1))


def test_inverse_step_seed_inverts_the_per_step_mix():
    rng = random.Random(1)
    for _ in range(2000):
        seed, step = rng.randrange(1 << 32), rng.randrange(1, 10 ** 6)
        assert inverse_step_seed(step_seed(seed, step), step) == seed
        start = rng.randrange(1 << 31)
        assert step_seed(rounding_seed_for(seed, step, start), step) == step_seed(seed, step) ^ start


def test_stochastic_rounding_of_a_piece_draws_the_global_bits():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import fastopt

    rng = np.random.default_rng(0)
    size, seed = 3 * NORM_BLOCK + 77, 11
    p0 = rng.standard_normal(size).astype(ml_dtypes.bfloat16)
    g = rng.standard_normal(size).astype(ml_dtypes.bfloat16)
    whole = p0.copy()
    fastopt.SGD(whole, lr=0.1, stochastic_rounding=True, seed=seed).step(g)
    parts = p0.copy()
    for a, b in dyadic_pieces(NORM_BLOCK, size):
        opt = fastopt.SGD(parts[a:b], lr=0.1, stochastic_rounding=True, seed=rounding_seed_for(seed, 1, a))
        opt.step(g[a:b])
    assert np.array_equal(whole[NORM_BLOCK:].view(np.uint16), parts[NORM_BLOCK:].view(np.uint16))
