// The EMA lerp of the CPU drivers (ema.h), compiled once per ISA level. The same expression as
// fastopt/math/ema.h in the same type (no contraction: the build passes -ffp-contract=off), so
// every ISA, thread count and backend gives the same bits.
#include "ema.h"

#include "fastopt/math/ema.h"

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

template <class S, class E>
void lerp(const EmaRange& r, int64_t lo, int64_t hi) {
    using T = typename EmaCompute<E>::type;
    const S* __restrict__ source = static_cast<const S*>(r.source);
    E* __restrict__ ema = static_cast<E*>(r.ema);
    const T w = T(r.weight);
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) ema_element<E, T>(ema, i, load_as<T>(source[i]), w);
}

template <class S>
void lerp_into(const EmaRange& r, int64_t lo, int64_t hi) {
    if (r.ema_dtype == kBFloat16) lerp<S, bf16_t>(r, lo, hi);
    else lerp<S, float>(r, lo, hi);
}

}  // namespace

// 2048 elements: the piece's new params (8 KiB in float32) are in L1 or L2 when the lerp reads
// them. Pieces of 1024 to 131072 elements measured alike within this machine's noise.
int64_t ema_piece() { return 2048; }

void ema_lerp(const EmaRange& r, int64_t lo, int64_t hi) {
    if (r.ema == nullptr) return;
    switch (r.source_dtype) {
        case kFloat64: lerp<double, double>(r, lo, hi); break;  // float64 params keep a float64 EMA
        case kFloat32: lerp_into<float>(r, lo, hi); break;
        case kBFloat16: lerp_into<bf16_t>(r, lo, hi); break;  // stochastic rounding: the stored param
        case kFloat16: break;  // float16 params always have a float32 master (the source)
    }
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
