"""BatchNorm's blocks and thresholds for the Numba backend, read from the header the C++ kernels
use (fastopt/math/bn_blocks.h), so that both backends cut the same blocks."""
from .._headers import constants, math_header

_BLOCKS = constants(math_header("bn_blocks.h"))
BN_BLOCK = _BLOCKS["kBnBlock"]
ROW_BLOCK_ELEMS = _BLOCKS["kBnRowBlockElems"]
CHANNEL_BLOCK = _BLOCKS["kBnChannelBlock"]
LANES = _BLOCKS["kLanes"]
LINE_BYTES = _BLOCKS["kLineBytes"]
SHORT_ROW_BYTES = _BLOCKS["kBnShortRowBytes"]
PREFETCH_BYTES = _BLOCKS["kBnPrefetchBytes"]
FUSED_GROUP_BYTES = _BLOCKS["kBnFusedGroupBytes"]
CHANNELWISE_GROUP_BYTES = _BLOCKS["kBnChannelwiseGroupBytes"]
CONTIGUOUS_RUN_BYTES = _BLOCKS["kBnContiguousRunBytes"]
SWEEP_MIN_INNER = _BLOCKS["kBnGroupMinInner"]
# Numba's own: the chunk of channels whose inputs (all of them, in two passes) are read back from L3.
CHUNK_BYTES = 4 << 20
