"""Where each rank's shard lies in the flat buffer, and the arithmetic that keeps sharded results
equal to one process's."""
from .._scalars import step_seed

# The block of fastopt's float64 norm kernel (csrc/cpu/kernels.h kNormBlock). Shard boundaries fall
# on multiples of it, so each block's partial sum is computed whole by one rank, with the kernel's
# own lane order, and the global norm has the bits of the single-process kernel for any rank count.
NORM_BLOCK = 8192


class ShardLayout:
    """Rank r owns elements [offsets[r], offsets[r] + counts[r]) of a flat buffer of `size`.

    Shards are `shard_size` long (a multiple of NORM_BLOCK elements, hence of 64 bytes); the
    buffer is padded, logically, to ranks x shard_size: the last ranks' shards are shorter or
    empty, and nothing is allocated for the padding.
    """

    def __init__(self, size, ranks):
        self.size, self.ranks = int(size), int(ranks)
        blocks = -(-self.size // NORM_BLOCK)
        self.shard_size = -(-blocks // self.ranks) * NORM_BLOCK
        self.padded_size = self.shard_size * self.ranks
        self.offsets = [min(r * self.shard_size, self.size) for r in range(self.ranks)]
        self.counts = [min(self.shard_size, self.size - o) for o in self.offsets]

    def blocks(self, rank):
        """(start, stop) of the norm blocks inside rank's shard, global indices."""
        o, c = self.offsets[rank], self.counts[rank]
        return [(s, min(s + NORM_BLOCK, o + c)) for s in range(o, o + c, NORM_BLOCK)]

    def block_counts(self):
        return [-(-c // NORM_BLOCK) for c in self.counts]


def dyadic_pieces(start, stop):
    """[start, stop) cut into pieces [a, a + 2**k) with a a multiple of 2**k (at most 2 log2 pieces).

    Inside such a piece global index a + l equals a XOR l, which lets a kernel that hashes its
    local index l draw the random bits of global index a (see rounding_seed_for).
    """
    pieces, a = [], start
    while a < stop:
        k = (a & -a).bit_length() - 1 if a else 62
        while (1 << k) > stop - a:
            k -= 1
        pieces.append((a, a + (1 << k)))
        a += 1 << k
    return pieces


_MASK = 0xFFFFFFFF


def _unxorshift(y, k):
    x = y
    for _ in range(32 // k + 1):
        x = y ^ (x >> k)
    return x


def inverse_step_seed(target, step):
    """The optimizer seed s with step_seed(s, step) == target (step_seed is a bijection of 32 bits)."""
    x = _unxorshift(target & _MASK, 12)
    x = (x * pow(0x2C1B3C6D, -1, 1 << 32)) & _MASK
    x = _unxorshift(x, 15)
    x = (x - step * 0x85EBCA77 - 0x165667B1) & _MASK
    return (x * pow(0x9E3779B1, -1, 1 << 32)) & _MASK


def rounding_seed_for(seed, step, piece_start):
    """The seed a piece's own optimizer needs so that the kernel's hash of (its step seed, local
    index l) equals the single-process hash of (step_seed(seed, step), piece_start + l).

    The kernel XORs the low 32 bits of the index into the step seed; piece_start + l ==
    piece_start ^ l inside a dyadic piece, so the step seed to give is step_seed(seed) ^ piece_start.
    Valid for global indices below 2**32 (the kernel adds the high word separately).
    """
    wanted = step_seed(seed, step) ^ (piece_start & _MASK)
    s = inverse_step_seed(wanted, step)
    assert step_seed(s, step) == wanted
    return s
