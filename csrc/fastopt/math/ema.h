// Weight averaging fused into a step (docs/algorithms.md, "EMA of the weights"): after the rule
// has written the new parameter, ema <- ema + w * (new - ema), w = 1 - decay of this step, in the
// compute type T (double for a float64 EMA, else float), rounded to nearest even into bfloat16.
#pragma once
#include "common.h"

namespace fastopt {

// The compute type of an EMA stored as E.
template <class E> struct EmaCompute { using type = float; };
template <> struct EmaCompute<double> { using type = double; };

// A kernel's EMA template argument when it has none (the CUDA drivers are templated on E).
struct NoEma {};
template <class E> struct EmaOf {
    static constexpr bool present = true;
    using compute = typename EmaCompute<E>::type;
};
template <> struct EmaOf<NoEma> {
    static constexpr bool present = false;
    using compute = float;
};

// `value` is the new parameter: the float32 master of a half param, else the stored param widened.
template <class E, class T>
FASTOPT_HD void ema_element(E* __restrict__ ema, int64_t i, T value, T w) {
    const T e = load_as<T>(ema[i]);
    ema[i] = store_as<E>(e + w * (value - e));
}

// The new parameter at i in T: the float32 master copy (kMaster), else the stored param.
template <class T, bool kMaster, class P>
FASTOPT_HD T ema_source(const float* __restrict__ master, const P* __restrict__ param, int64_t i) {
    if constexpr (kMaster) return T(master[i]);
    else return load_as<T>(param[i]);
}

}  // namespace fastopt
