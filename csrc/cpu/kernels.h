// The interface between the bindings and the per-ISA kernel translation units.
//
// Each *_kernels.cpp file is compiled once per ISA level (baseline x86-64, x86-64-v3, x86-64-v4)
// with FASTOPT_ISA_NS naming the namespace its symbols go into; dispatch.cpp picks one level at
// import from the CPU's features. Nothing in this header may depend on the ISA.
#pragma once
#include <cstdint>

#include "fastopt/math/all.h"

namespace fastopt::cpu {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One optimizer step over a flat buffer. Pointers are already validated by the Python layer:
// contiguous, of the stated dtypes, n elements each, not overlapping.
struct StepCall {
    int optimizer;       // id from FASTOPT_FOR_EACH_OPTIMIZER
    int variant;         // the rule's compile-time variant
    DType param_dtype, grad_dtype, state_dtype;
    void* param;
    const void* grad;
    float* master;       // float32 master weights, for half params; null for stochastic rounding
    void* states[kStateSlots];
    int64_t n;
    double scalars[kMaxRuleScalars];  // the rule's per-step scalars, in its documented order
    double grad_scale, weight_decay, decay_factor;  // docs/algorithms.md's prologue (fastopt/math/step.h)
    uint32_t rounding_seed;  // stochastic rounding of bfloat16 params without master weights
    int num_threads;
    // The EMA of the weights (cpu/ema.h): after the step, ema += ema_weight * (new param - ema).
    void* ema;  // null: no averaging
    DType ema_dtype;
    double ema_weight;  // 1 - decay of this step
};

// One step over many separate arrays in one call (apex's multi_tensor_apply, a segment table):
// segment j covers [offset, offset + n) of one index range, offsets ascending and multiples of
// kChunkAlign (so thread chunks start on cache-line multiples inside each array). Every segment
// reads its scalars from rows[row * kRowWidth]: the rule's scalars, then grad_scale,
// weight_decay and decay_factor, so per-group hyper-parameters and per-array step counts share
// the call. All segments share the rule, variant and dtypes; element indices (and so the random
// bits of stochastic rounding) are local to each array.
constexpr int kRowScalars = kMaxRuleScalars;
constexpr int kRowWidth = kRowScalars + 3;
struct Segment {
    void* param;
    const void* grad;
    float* master;
    void* states[kStateSlots];
    int64_t n, offset;
    int64_t row;
    uint32_t rounding_seed;
    void* ema;  // the EMA of the weights, as StepCall's (null: none)
    double ema_weight;
};
struct MultiStepCall {
    int optimizer, variant;
    DType param_dtype, grad_dtype, state_dtype;
    bool has_master;  // half params: master copies, else (bfloat16) stochastic rounding
    const Segment* segments;
    int64_t num_segments;
    const double* rows;
    int64_t total;  // end of the last segment
    int num_threads;
    DType ema_dtype;  // of every segment's EMA
};

// Sum of squares of a gradient, in float64 with a fixed summation order: blocks of
// kNormBlock elements, each summed over 8 interleaved lanes, the block sums added in order.
// The result is therefore the same for any thread count and ISA.
constexpr int64_t kNormBlock = 8192;
struct NormCall {
    DType dtype;
    const void* data;
    int64_t n;
    int num_threads;
};

enum class Isa : int { kBaseline = 0, kV3 = 1, kV4 = 2 };
const char* isa_name(Isa isa);

// Below this many elements a kernel runs on the calling thread: waking a team costs more.
constexpr int64_t kParallelThreshold = 1 << 15;

using StepFn = void (*)(const StepCall&);
using NormFn = double (*)(const NormCall&);

}  // namespace fastopt::cpu

// Declarations of the per-ISA entry points.
#define FASTOPT_DECLARE_ISA(ns)                                          \
    namespace fastopt::cpu::ns {                                         \
    void optimizer_step(const StepCall& call);                           \
    void multi_step(const MultiStepCall& call);                          \
    double sum_of_squares(const NormCall& call);                         \
    }
FASTOPT_DECLARE_ISA(isa_baseline)
FASTOPT_DECLARE_ISA(isa_v3)
FASTOPT_DECLARE_ISA(isa_v4)
#undef FASTOPT_DECLARE_ISA
