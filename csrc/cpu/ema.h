// The EMA of the weights in the CPU drivers: a thread steps a piece of kEmaPiece elements of its
// range with the rule's own loop, then averages the same piece while it is still in L1, so
// memory traffic is that of a per-element fusion, and the rule loops are compiled once, not
// once per EMA dtype. Included by the per-ISA translation units only.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastopt::cpu {

// Elements per piece (isa_ema.cpp): the piece's new params are still in L1 or L2 when averaged.

// One array's averaging: `source` holds the new param (the float32 master of a half param).
struct EmaRange {
    const void* source;
    DType source_dtype;
    void* ema;  // null: no averaging
    DType ema_dtype;
    double weight;  // 1 - decay
};

inline EmaRange ema_range(const void* param, DType param_dtype, const float* master, void* ema,
                          DType ema_dtype, double weight) {
    if (master != nullptr) return {master, kFloat32, ema, ema_dtype, weight};
    return {param, param_dtype, ema, ema_dtype, weight};
}

namespace FASTOPT_ISA_NS {
int64_t ema_piece();

// The loop length of a driver's inner loop: a piece with averaging, else the whole range.
inline int64_t ema_step(const EmaRange& r, int64_t range) { return r.ema != nullptr ? ema_piece() : range; }

// Averages [lo, hi) of one array (isa_ema.cpp); does nothing when r.ema is null.
void ema_lerp(const EmaRange& r, int64_t lo, int64_t hi);
}  // namespace FASTOPT_ISA_NS

}  // namespace fastopt::cpu
