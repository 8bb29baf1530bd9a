// The interface between the BatchNorm bindings and the per-ISA kernels (isa_batchnorm.cpp).
// Nothing here depends on the ISA.
#pragma once
#include <algorithm>
#include <cstdint>

#include "fastopt/math/bn_blocks.h"
#include "kernels.h"

namespace fastopt::cpu {

// x is viewed as (outer, channels, inner), C-contiguous: axis=1 gives outer = N and inner = the
// product of the spatial sizes; axis=-1 (channels-last) and (N, C) give inner = 1.
// Parameters and statistics are float64 for float64 data and float32 otherwise. Pointers are
// validated by the Python layer; weight and bias may be null (not affine), as may the running
// statistics in training.
struct BnForwardCall {
    DType dtype;
    const void* x;
    void* y;
    int64_t outer, channels, inner;
    const void* weight;
    const void* bias;
    void* running_mean;
    void* running_var;
    void* save_mean;    // out: batch mean (training) or running mean (evaluation)
    void* save_invstd;  // out: 1 / sqrt(var + eps) of the statistics used
    double momentum, eps;
    bool training;
    int num_threads;
    const void* residual;  // may be null; else y = bn(x) + residual (before the ReLU)
    bool relu;             // y = max(0, ...)
    uint8_t* relu_mask;    // may be null; else, with relu, gets 1 where y > 0 and 0 elsewhere
};

struct BnBackwardCall {
    DType dtype;
    const void* dy;
    const void* x;
    void* dx;
    int64_t outer, channels, inner;
    const void* weight;       // may be null: weight 1
    const void* save_mean;
    const void* save_invstd;
    void* dweight;            // may be null (not affine)
    void* dbias;              // may be null (not affine)
    bool training;
    int num_threads;
    const void* y;            // may be null; else the output of a ReLU forward: dy counts where y > 0
    const uint8_t* relu_mask;  // may be null; else a ReLU forward's mask, read instead of y
    void* dresidual;          // may be null; else gets dy * (y > 0) (dy where y is null)
};

// The two layouts the kernels tell apart. Channels-first: each channel's values come in rows of
// `inner` consecutive elements (axis=1 with spatial dimensions). Channels-last: consecutive
// elements are consecutive channels (inner == 1: axis=-1, and (N, C)).
enum class BnLayout { kChannelsFirst, kChannelsLast };
static inline BnLayout bn_layout(int64_t inner) { return inner == 1 ? BnLayout::kChannelsLast : BnLayout::kChannelsFirst; }

// The block sizes and thresholds: fastopt/math/bn_blocks.h.

// Channels-first layouts whose channel slices fit in cache run fused, one group of channels at a time per
// thread: reduce the group, then write its output while its slices are still cached (in L2 or
// the core's share of L3), so memory sees one read of the inputs instead of two. The group is
// wide enough that its rows form long contiguous runs, and small enough that its slices fit
// kBnFusedGroupBytes. Same sums in the same order as the two-pass path: the same bits either way.
struct ChannelGroups {
    int64_t count = 0, channels = 0;  // count 0: not fused
    // Group g is channels [begin(g), begin(g + 1)): sizes differ by one channel at most.
    int64_t begin(int64_t g) const { return g * channels / count; }
};

// Whether a group's rows are summed in one sweep over the group (group_sums), or channel by
// channel. Switching channels costs a reload of the lane sums per row, so short rows are summed
// one channel at a time, whose lane sums stay in registers (block_sums, with prefetching). So are
// half types, whose conversions vectorise only in that form.
static inline bool sweeps_rows(int64_t inner, int64_t value_bytes) {
    return inner >= kBnGroupMinInner && value_bytes >= 4;
}

// bytes_per_value: of all inputs together (x; x and dy in the backward); sweeps: see sweeps_rows;
// nthreads: the threads the kernel runs on.
static inline ChannelGroups fused_groups(int64_t outer, int64_t channels, int64_t inner, int64_t bytes_per_value,
                                  bool sweeps, int nthreads) {
    ChannelGroups g;
    const int64_t slice_bytes = outer * inner * bytes_per_value;
    // Fewer channels than twice the threads would leave threads idle: the two-pass path splits
    // channels into blocks instead.
    if (bn_layout(inner) == BnLayout::kChannelsLast || slice_bytes > kBnFusedGroupBytes || (nthreads > 1 && channels < 2 * nthreads)) return g;
    const int64_t fit = (sweeps ? kBnFusedGroupBytes : kBnChannelwiseGroupBytes) / slice_bytes;
    const int64_t long_run = (kBnContiguousRunBytes + inner * bytes_per_value - 1) / (inner * bytes_per_value);
    const int64_t per_thread = (channels + nthreads - 1) / nthreads;
    const int64_t size = std::max<int64_t>(1, std::min(std::min(fit, long_run), per_thread));
    // A multiple of the thread count, so that every thread gets as many groups.
    const int64_t count = (channels + size - 1) / size;
    g.count = std::min(channels, (count + nthreads - 1) / nthreads * nthreads);
    g.channels = channels;
    return g;
}

// Both return false, having written nothing, when scratch memory cannot be allocated.
bool batch_norm_forward(const BnForwardCall& call);
bool batch_norm_backward(const BnBackwardCall& call);

}  // namespace fastopt::cpu

#define FASTOPT_DECLARE_BN_ISA(ns)                             \
    namespace fastopt::cpu::ns {                               \
    bool batch_norm_forward(const BnForwardCall& call);        \
    bool batch_norm_backward(const BnBackwardCall& call);      \
    }
FASTOPT_DECLARE_BN_ISA(isa_baseline)
FASTOPT_DECLARE_BN_ISA(isa_v3)
FASTOPT_DECLARE_BN_ISA(isa_v4)
#undef FASTOPT_DECLARE_BN_ISA
