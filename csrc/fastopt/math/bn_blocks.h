// BatchNorm's block sizes and cache thresholds: the fixed blocks that make the sums independent
// of the thread count, and the sizes that choose between the fused and the two-pass plans. The
// CPU kernels include this file; the Numba backend reads its values from it (fastopt/_headers.py),
// so the two backends share their blocks, and so their bits, from one place.
// Keep each value a plain integer expression (literals, <<, *): the Python reader evaluates them.
#pragma once

#if !defined(__CUDACC_RTC__)
#include <cstdint>
#endif

namespace fastopt {

// A channel's elements are reduced in blocks of this many (channels-first layouts); channels-last
// rows in blocks of kBnRowBlockElems / channels rows, and kBnChannelBlock channels. Row blocks are
// large so that their partial sums (one per channel per block) stay small: scratch of a megabyte
// or more is mapped and unmapped by malloc on every call, and unmapping memory that two threads
// touched costs a TLB shootdown (an interrupt to the other core; costly in a VM).
constexpr int64_t kBnBlock = 16384;
constexpr int64_t kBnRowBlockElems = 262144;
constexpr int64_t kBnChannelBlock = 4096;
// Channels-first reductions keep kLanes independent float64 sums (enough independent additions to
// hide their latency; fewer lanes ran 3-5x slower), added in a fixed tree at the end: the same
// bits whatever vector width the compiler picks.
constexpr int kLanes = 32;
constexpr int64_t kLineBytes = 64;
// Channels-first layouts whose channel slices fit this many bytes per thread (x, plus dy in the
// backward) are reduced and written one group of channels at a time, the second read hitting L2
// or the core's share of L3; groups span at least kBnContiguousRunBytes per row where they can.
constexpr int64_t kBnFusedGroupBytes = 4 << 20;
// Groups whose channels are summed one at a time (short rows, half types) are read back from L2,
// where they fit this many bytes: from L3 the backward ran 10% slower.
constexpr int64_t kBnChannelwiseGroupBytes = 1 << 20;
constexpr int64_t kBnContiguousRunBytes = 64 << 10;
constexpr int64_t kBnGroupMinInner = 1024;
// Outputs (y, dx) of at least this many bytes are written with streaming stores: too big to be
// read back from cache by the next layer, they would only cost a read of the old contents.
constexpr int64_t kBnStreamingStoreBytes = 16 << 20;
// Reductions over a channel's rows shorter than this (all inputs together) prefetch the row
// about kBnPrefetchBytes ahead.
constexpr int64_t kBnShortRowBytes = 4096;
constexpr int64_t kBnPrefetchBytes = 5120;

}  // namespace fastopt
